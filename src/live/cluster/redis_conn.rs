//! The connection to the cluster's Redis: `redis://HOST:PORT` or `rediss://…` (TLS: the system's roots, or a CA file for
//! a private CA), a password in the URL (`redis://:PASSWORD@HOST:6379`, or a user too) or given
//! apart (from `${ENV}` in a config). An error names the address and what to fix, never the
//! password.

use std::path::PathBuf;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, TlsCertificates};

/// Where the cluster's Redis is and how to reach it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://`, with or without a password.
    pub url: String,
    /// A CA certificate (PEM) to trust for `rediss://` instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// A password given apart from the URL (it wins over one in the URL).
    pub password: Option<String>,
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// The client for these settings (nothing is connected yet).
pub fn client(s: &RedisSettings) -> Result<Client, String> {
    let shown = redacted(&s.url);
    let mut info = s.url.as_str().into_connection_info().map_err(|e| {
        format!(
            "the Redis URL {shown} is not valid: {e} (use redis://HOST:PORT or rediss://HOST:PORT)"
        )
    })?;
    if let Some(p) = &s.password {
        let redis = info.redis_settings().clone().set_password(p);
        info = info.set_redis_settings(redis);
    }
    let tls = s.url.starts_with("rediss://");
    match (&s.ca, tls) {
        (Some(ca), true) => {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read the Redis CA file {}: {e}", ca.display()))?;
            Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        (Some(_), false) => {
            return Err(format!(
                "a CA file is given for Redis but {shown} is not TLS: use rediss://"
            ))
        }
        (None, _) => Client::open(info),
    }
    .map_err(|e| format!("cannot use Redis at {shown}: {e}"))
}

/// Connects and checks the connection with a PING (so a wrong password or an untrusted
/// certificate is told now, not at the first write). The connection reconnects by itself
/// after Redis restarts or the network drops (the command that met the fault fails); a reply
/// that takes longer than `response_timeout` fails the command.
pub async fn connect_with(
    s: &RedisSettings,
    response_timeout: Duration,
) -> Result<ConnectionManager, String> {
    let shown = redacted(&s.url);
    let client = client(s)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(2);
    let mut con = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| explain(&shown, &e))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .map_err(|e| explain(&shown, &e))?;
    Ok(con)
}

/// [`connect_with`] with a two-second response timeout.
pub async fn connect(s: &RedisSettings) -> Result<ConnectionManager, String> {
    connect_with(s, Duration::from_secs(2)).await
}

/// A blocking connection (for a partition's executor thread, which writes its state in line),
/// its reads and writes bounded by `timeout`.
pub fn connect_blocking(client: &Client, timeout: Duration) -> Result<redis::Connection, String> {
    let con = client
        .get_connection_with_timeout(timeout)
        .map_err(|e| e.to_string())?;
    con.set_read_timeout(Some(timeout))
        .and_then(|()| con.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    Ok(con)
}

/// A connection error, with what to do about it.
pub fn explain(shown: &str, e: &redis::RedisError) -> String {
    let text = e.to_string();
    let hint = if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        "check the password (in the URL as redis://:PASSWORD@HOST:PORT, or from an environment variable)"
    } else if text.contains("certificate") || text.contains("Certificate") {
        "the server's certificate is not trusted: give its CA file, or use a certificate the system trusts"
    } else if e.is_connection_refusal() || e.is_io_error() {
        "is Redis running there, and reachable from this machine?"
    } else {
        "see Redis's own message"
    };
    format!("cannot reach Redis at {shown}: {text}; {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        assert_eq!(
            redacted("rediss://user:p@ss@host:6380/0"),
            "rediss://…@host:6380/0"
        );
        assert_eq!(redacted("redis://:secret@h:6379"), "redis://…@h:6379");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
    }
}
