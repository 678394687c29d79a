//! Notification channels' settings (`channels:`), resolved.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;

use super::Problems;
use crate::config::check::{parse_rate, smtp_url, webhook_url, SmtpTls};
use crate::config::ChannelSpec;
use crate::yaml::Sp;

/// A channel: how it delivers and its delivery policy.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// Where notifications go.
    pub delivery: Delivery,
    /// Retries, fallback, rate limit, reminders, queue.
    pub policy: Policy,
}

/// How a channel delivers.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// SMTP.
    Email(EmailSettings),
    /// HTTP POST.
    Webhook(WebhookSettings),
    /// The engine's log.
    Log,
}

/// SMTP delivery.
#[derive(Clone)]
pub struct EmailSettings {
    /// The server's host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How the connection is secured.
    pub tls: SmtpTls,
    /// A CA certificate (PEM) to trust besides the system's.
    pub ca: Option<PathBuf>,
    /// SMTP user name.
    pub username: Option<String>,
    /// SMTP password (never logged).
    pub password: Option<String>,
    /// Sender.
    pub from: Mailbox,
    /// Recipients (at least one).
    pub to: Vec<Mailbox>,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("to", &self.to.len())
            .finish()
    }
}

/// HTTP webhook delivery.
#[derive(Clone)]
pub struct WebhookSettings {
    /// The URL (its path and query may hold a secret: never logged).
    pub url: reqwest::Url,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The HMAC key.
    pub secret: Option<Vec<u8>>,
    /// The signature header.
    pub signature_header: String,
    /// Post the rendered body template instead of the default JSON.
    pub templated: bool,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("scheme", &self.url.scheme())
            .field("host", &self.url.host_str())
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

/// A channel's delivery policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// One attempt's time limit.
    pub timeout: Duration,
    /// The first backoff; it doubles per retry up to `max_backoff`.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// The fallback channel.
    pub fallback: Option<String>,
    /// Failures before the fallback is used.
    pub fallback_after: u32,
    /// At most this many per period.
    pub rate: Option<(u32, Duration)>,
    /// Reminder interval.
    pub repeat: Option<Duration>,
    /// Queue length.
    pub queue: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retries: 5,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            fallback: None,
            fallback_after: 3,
            rate: None,
            repeat: None,
            queue: 1000,
        }
    }
}

/// Resolves one channel; `None` when it has problems (recorded). `known` are all channels (for
/// `fallback`), `rel` makes a config path absolute.
pub(crate) fn resolve(
    p: &mut Problems,
    name: &str,
    spec: &Sp<ChannelSpec>,
    known: &BTreeMap<String, Sp<ChannelSpec>>,
    rel: &dyn Fn(&str) -> PathBuf,
) -> Option<ChannelSettings> {
    let before = p.0.len();
    let at = spec.pos;
    let kinds = usize::from(spec.email.is_some())
        + usize::from(spec.webhook.is_some())
        + usize::from(spec.log.is_some());
    if kinds != 1 {
        p.add(
            at,
            format!("channel `{name}` needs exactly one of `email`, `webhook`, `log`"),
        )
        .hint("e.g. `webhook: {url: https://example.com/hook}`");
    }
    let mut delivery = Delivery::Log;
    if let Some(e) = &spec.email {
        let tls = e.tls.as_ref().map(|t| t.value.as_str());
        let server = smtp_url(&e.smtp.value, tls)
            .map_err(|err| {
                let pos = e
                    .tls
                    .as_ref()
                    .filter(|_| err.starts_with("`tls"))
                    .map_or(e.smtp.pos, |t| t.pos);
                p.add(pos, err);
            })
            .ok();
        let from = e
            .from
            .parse::<Mailbox>()
            .map_err(|err| {
                p.add(
                    at,
                    format!("channel `{name}`: bad `from` address `{}`: {err}", e.from),
                );
            })
            .ok();
        let mut to = Vec::new();
        for t in &e.to {
            match t.parse::<Mailbox>() {
                Ok(m) => to.push(m),
                Err(err) => {
                    p.add(
                        at,
                        format!("channel `{name}`: bad `to` address `{t}`: {err}"),
                    );
                }
            }
        }
        if e.to.is_empty() {
            p.add(at, format!("channel `{name}`: `to` lists no address"));
        }
        if let (Some((host, port, tls)), Some(from)) = (server, from) {
            delivery = Delivery::Email(EmailSettings {
                host,
                port,
                tls,
                ca: e.ca.as_ref().map(|c| rel(&c.value)),
                username: e.username.clone().filter(|u| !u.is_empty()),
                password: e.password.clone(),
                from,
                to,
            });
        }
    }
    if let Some(w) = &spec.webhook {
        match webhook_url(&w.url.value) {
            Some(url) => {
                delivery = Delivery::Webhook(WebhookSettings {
                    url,
                    headers: w
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    secret: w.secret.as_ref().map(|s| s.as_bytes().to_vec()),
                    signature_header: w
                        .signature_header
                        .clone()
                        .unwrap_or_else(|| "X-Rulechain-Signature".into()),
                    templated: spec.body.is_some() || spec.body_json.is_some(),
                })
            }
            None => {
                p.add(w.url.pos, format!("channel `{name}`: bad webhook URL"))
                    .hint("give an http:// or https:// URL");
            }
        }
    }
    if let Some(j) = &spec.body_json {
        if spec.body.is_some() {
            p.add(
                j.pos,
                format!("channel `{name}` has both `body` and `body_json`"),
            )
            .hint("keep one: `body_json` builds the JSON from its templates, `body` is sent as rendered");
        }
        if spec.webhook.is_none() {
            p.add(
                j.pos,
                format!("channel `{name}`: `body_json` is a webhook's body"),
            )
            .hint("use `body` for an email's text");
        }
        if !j.value.is_object() {
            p.add(j.pos, format!("channel `{name}`: `body_json` is a map"))
                .hint("e.g. `body_json: {text: \"${msg.alarm.message}\"}`");
        }
    }
    if let Some(f) = &spec.fallback {
        if f.value == name {
            p.add(
                f.pos,
                format!("channel `{name}` cannot be its own fallback"),
            );
        } else if !known.contains_key(&f.value) {
            p.add(f.pos, format!("unknown fallback channel `{}`", f.value))
                .hint(format!(
                    "define it under `channels:` (known: {})",
                    known.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
        }
    }
    let rate = spec.rate_limit.as_ref().and_then(|r| {
        parse_rate(&r.value)
            .map_err(|e| {
                p.add(r.pos, e);
            })
            .ok()
    });
    let d = Policy::default();
    let policy = Policy {
        retries: spec.retries.unwrap_or(d.retries),
        timeout: p.duration(&spec.timeout, d.timeout.as_millis() as i64, 1),
        fallback: spec.fallback.as_ref().map(|f| f.value.clone()),
        fallback_after: spec
            .fallback_after
            .as_ref()
            .map_or(d.fallback_after, |f| f.value)
            .max(1),
        rate,
        repeat: p.opt_duration(&spec.repeat_interval, 1),
        queue: spec.queue.as_ref().map_or(d.queue, |q| q.value).max(1),
        ..d
    };
    (p.0.len() == before).then_some(ChannelSettings { delivery, policy })
}
