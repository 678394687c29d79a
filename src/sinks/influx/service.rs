//! One write request to the server and what its answer means: written, rejected as bad data
//! (4xx but 408 and 429: never retried), or worth another try (connection errors, timeouts, 5xx,
//! 408, 429).

use std::pin::Pin;

use crate::config::settings::InfluxAuth;
use crate::config::settings::InfluxSettings;

pub(super) enum Outcome {
    Written,
    /// Bad data: do not retry. The HTTP status, and what the server said.
    Rejected(u16, String),
    /// Try again later.
    Retry(String),
}

pub(super) type Pending = Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// The HTTP client and where and how it writes.
pub(super) struct Service {
    client: reqwest::Client,
    write_url: reqwest::Url,
    auth: InfluxAuth,
}

impl Service {
    pub(super) fn new(settings: &InfluxSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(2)
            .build()
            .map_err(|e| format!("cannot build the InfluxDB client: {e}"))?;
        Ok(Service {
            client,
            write_url: settings.write_url.clone(),
            auth: settings.auth.clone(),
        })
    }

    pub(super) fn send(&self, body: bytes::Bytes, gzip: bool) -> Pending {
        let mut req = self
            .client
            .post(self.write_url.clone())
            .header("content-type", "text/plain; charset=utf-8")
            .body(body);
        if gzip {
            req = req.header("content-encoding", "gzip");
        }
        req = match &self.auth {
            InfluxAuth::None => req,
            InfluxAuth::Token(t) => req.header("authorization", format!("Token {t}")),
            InfluxAuth::Basic(u, p) => req.basic_auth(u, p.as_ref()),
        };
        Box::pin(async move {
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Outcome::Written;
                    }
                    let text = resp.text().await.unwrap_or_default();
                    let text: String = text.trim().chars().take(1000).collect();
                    let msg = crate::sinks::redact_urls(&format!("HTTP {status}: {text}"));
                    let code = status.as_u16();
                    if crate::retry::retryable_status(code) {
                        Outcome::Retry(msg)
                    } else {
                        Outcome::Rejected(code, msg)
                    }
                }
                Err(e) => Outcome::Retry(crate::sinks::http_error_text(&e)),
            }
        })
    }
}
