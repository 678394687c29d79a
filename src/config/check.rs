//! Parsers of config values that need more than their type: URLs, rates. They are called by
//! [`super::settings::resolve`], the one path from config text to typed settings.

use std::time::Duration;

use crate::duration;

/// `http://host:8086` or `http://host:8086/prefix` → a base URL ending in `/`.
pub fn base_url(text: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(text)
        .map_err(|e| format!("bad InfluxDB URL `{text}`: {e} (e.g. `http://127.0.0.1:8086`)"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "bad InfluxDB URL `{text}`: use http:// or https://"
        ));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text.
    None,
    /// STARTTLS after connecting.
    StartTls,
    /// TLS from the first byte.
    Tls,
}

/// An MQTT broker URL, as `validate` checks it and `run` connects to it: `mqtt://host:port`
/// (`tcp://` too) or `mqtts://host:port` (`ssl://` too) → host, port (default 1883, 8883 for
/// TLS) and whether it is TLS. A bare `host:port` is plain MQTT.
pub fn mqtt_url(url: &str) -> Result<(String, u16, bool), String> {
    let bad =
        || format!("bad MQTT URL `{url}`: use mqtt://host:1883, or mqtts://host:8883 for TLS");
    let (tls, rest) = match url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => (false, rest),
        Some(("mqtts" | "ssl", rest)) => (true, rest),
        Some(_) => return Err(bad()),
        None => (false, url),
    };
    let hostport = rest.trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("bad port in MQTT URL `{url}`"))?,
        ),
        None => (hostport.to_string(), if tls { 8883 } else { 1883 }),
    };
    if host.contains('@') {
        return Err(format!(
            "bad MQTT URL `{url}`: credentials go in `username` and `password`, not the URL"
        ));
    }
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok((host, port, tls))
}

/// A webhook URL as `validate` checks it and the sender posts to: http or https, with a host.
/// (No text in the error: a webhook URL may carry a secret.)
pub fn webhook_url(text: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// `smtp://host:587`, `smtps://host:465` → host, port and TLS mode.
pub fn smtp_url(url: &str, tls: Option<&str>) -> Result<(String, u16, SmtpTls), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("bad SMTP URL `{url}`: use smtp://host:587 or smtps://host:465"))?;
    let default_tls = match scheme {
        "smtp" => SmtpTls::StartTls,
        "smtps" => SmtpTls::Tls,
        _ => {
            return Err(format!(
                "bad SMTP URL `{url}`: use smtp://host:587 or smtps://host:465"
            ))
        }
    };
    let tls = match tls {
        None => default_tls,
        Some("starttls") => SmtpTls::StartTls,
        Some("tls") => SmtpTls::Tls,
        Some("none") => SmtpTls::None,
        Some(o) => return Err(format!("`tls: {o}`: use starttls, tls or none")),
    };
    let hostport = rest.trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("bad port in SMTP URL `{url}`"))?,
        ),
        None => (
            hostport.to_string(),
            if tls == SmtpTls::Tls { 465 } else { 587 },
        ),
    };
    if host.is_empty() || host.contains(['@', '/']) {
        return Err(format!(
            "bad SMTP URL `{url}`: give host and port (credentials go in `username`/`password`)"
        ));
    }
    Ok((host, port, tls))
}

/// `10/1m` → (10, 60 s).
pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let bad = || format!("bad rate limit `{text}`: write COUNT/DURATION, e.g. `10/1m`");
    let (n, per) = text.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let ms = duration::parse(per.trim()).map_err(|e| format!("{}: {e}", bad()))?;
    if n == 0 || ms <= 0 {
        return Err(bad());
    }
    Ok((n, Duration::from_millis(ms as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        let ok = |u: &str| mqtt_url(u).unwrap();
        assert_eq!(ok("mqtt://b:1884"), ("b".into(), 1884, false));
        assert_eq!(ok("mqtts://b"), ("b".into(), 8883, true));
        assert_eq!(
            ok("b:1883"),
            ("b".into(), 1883, false),
            "bare host:port is plain"
        );
        assert_eq!(ok("tcp://[::1]:1883"), ("::1".into(), 1883, false));
        assert!(mqtt_url("http://b:1883").is_err());
        assert!(mqtt_url("mqtt://").is_err());
        assert!(mqtt_url("mqtt://b:x").is_err());
        assert!(mqtt_url("mqtt://u:p@b:1883").is_err());
    }

    #[test]
    fn smtp_urls_and_tls_modes() {
        assert_eq!(
            smtp_url("smtp://mail.example.com:587", None).unwrap(),
            ("mail.example.com".into(), 587, SmtpTls::StartTls)
        );
        assert_eq!(
            smtp_url("smtps://mail.example.com", None).unwrap(),
            ("mail.example.com".into(), 465, SmtpTls::Tls)
        );
        assert_eq!(
            smtp_url("smtp://127.0.0.1:2525", Some("none")).unwrap().2,
            SmtpTls::None
        );
        assert!(smtp_url("mail.example.com", None).is_err());
        assert!(smtp_url("smtp://u:p@mail:25", None)
            .unwrap_err()
            .contains("username"));
        assert!(smtp_url("smtp://mail:25", Some("ssl")).is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10/1m").unwrap(), (10, Duration::from_secs(60)));
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("0/1m").is_err());
        assert!(parse_rate("x/1m").is_err());
    }
}
