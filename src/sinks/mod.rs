//! Where results leave rulechain besides MQTT: the InfluxDB writer ([`influx`]), the WebSocket
//! hub ([`hub`]) and notification channels ([`notify`]). Each is bounded, retried where the
//! far side can fail, and counted in `/api/status`. The shards hand effects to them without
//! waiting (see `live::egress`).

pub mod hub;
pub mod influx;
pub mod notify;

use std::sync::Arc;

/// The sinks the shards hand effects to (cheap to clone: handles and counters).
#[derive(Clone)]
pub struct Sinks {
    /// The InfluxDB writer, when `influx:` is configured.
    pub influx: Option<influx::Handle>,
    /// The WebSocket hub.
    pub hub: Arc<hub::Hub>,
    /// The notification channels.
    pub notify: notify::Notifier,
}

/// The text of a failed HTTP request, for logs, `/api/status` and `notify-test`: what failed and
/// why (its causes), with no URL path or query. A webhook URL often carries its secret in the
/// path (`/hooks/<token>`) or the query (`?key=`), and reqwest's own text names the whole URL.
pub fn http_error_text(e: &reqwest::Error) -> String {
    let s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_redirect() {
        "too many redirects".to_string()
    } else {
        // Without its URL: "error sending request", "error decoding response body"…
        e.to_string()
            .split(" for url (")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    redact_urls(&with_causes(s, std::error::Error::source(e)))
}

/// `head` followed by each cause's text that it does not already hold (reqwest's and lettre's
/// own texts say only "error sending request"; the reason is in the causes).
pub fn with_causes(mut head: String, mut cause: Option<&dyn std::error::Error>) -> String {
    while let Some(c) = cause {
        let t = c.to_string();
        if !head.contains(&t) {
            head.push_str(": ");
            head.push_str(&t);
        }
        cause = c.source();
    }
    head
}

/// Every URL in `text` cut to its scheme and host (`https://hooks.example.com/…`): error texts
/// from the far side may echo the address they were sent to.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(after.len());
        let url = &after[..end];
        // The authority ends at the first `/ ? #`; credentials before `@` go too.
        let host_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let host = url[..host_end].rsplit('@').next().unwrap_or_default();
        out.push_str(&rest[..i + 3]);
        out.push_str(host);
        if host_end < url.len() || url[..host_end].contains('@') {
            out.push('…');
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_path_query_and_credentials() {
        assert_eq!(
            redact_urls("error sending request for url (http://127.0.0.1:9/hooks/s3cr3t?key=k3y)"),
            "error sending request for url (http://127.0.0.1:9…)"
        );
        assert_eq!(
            redact_urls("see https://user:pw@example.com/x and mqtt://broker:1883"),
            "see https://example.com… and mqtt://broker:1883"
        );
        assert_eq!(redact_urls("no address here"), "no address here");
        let t = redact_urls("a https://h/p?key=zzz, then https://h2/q#frag");
        assert!(
            !t.contains("zzz") && !t.contains("frag") && !t.contains("/p"),
            "{t}"
        );
    }
}
