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
    /// The dashboard's public address (`http.base_url`), for links in messages.
    pub base_url: Option<reqwest::Url>,
}

/// How a channel delivers.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// SMTP.
    Email(EmailSettings),
    /// HTTP POST.
    Webhook(WebhookSettings),
    /// Slack: a bot or an incoming webhook.
    Slack(SlackSettings),
    /// Microsoft Teams Workflows webhook.
    Teams(Secret<reqwest::Url>),
    /// PagerDuty Events API v2.
    PagerDuty(PagerDutySettings),
    /// Telegram Bot API.
    Telegram(TelegramSettings),
    /// The engine's log.
    Log,
}

/// A value never shown by `Debug` (a URL whose path is a credential, a token).
#[derive(Clone)]
pub struct Secret<T>(pub T);

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Slack delivery.
#[derive(Debug, Clone)]
pub enum SlackSettings {
    /// A bot: `chat.postMessage`, `chat.update`.
    Bot {
        /// The Web API's base (`https://slack.com/api`).
        api: reqwest::Url,
        /// The bot token.
        token: Secret<String>,
        /// The channel posted to.
        channel: String,
    },
    /// An incoming webhook.
    Webhook(Secret<reqwest::Url>),
}

/// PagerDuty delivery.
#[derive(Debug, Clone)]
pub struct PagerDutySettings {
    /// The Events API's base (`https://events.pagerduty.com`).
    pub api: reqwest::Url,
    /// The integration key.
    pub routing_key: Secret<String>,
}

/// Telegram delivery.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    /// The Bot API's base (`https://api.telegram.org`).
    pub api: reqwest::Url,
    /// The bot token.
    pub token: Secret<String>,
    /// The chat (an id or `@name`), as the API takes it.
    pub chat_id: serde_json::Value,
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
    /// Escalation steps, by delay: (after, channels).
    pub escalate: Vec<(Duration, Vec<String>)>,
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
            escalate: Vec::new(),
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
    base_url: Option<&reqwest::Url>,
) -> Option<ChannelSettings> {
    let before = p.0.len();
    let at = spec.pos;
    let kinds = usize::from(spec.email.is_some())
        + usize::from(spec.webhook.is_some())
        + usize::from(spec.slack.is_some())
        + usize::from(spec.teams.is_some())
        + usize::from(spec.pagerduty.is_some())
        + usize::from(spec.telegram.is_some())
        + usize::from(spec.log.is_some());
    if kinds != 1 {
        p.add(
            at,
            format!("channel `{name}` needs exactly one of `email`, `webhook`, `slack`, `teams`, `pagerduty`, `telegram`, `log`"),
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
    if let Some(d) = chat(p, name, spec) {
        delivery = d;
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
        escalate: escalation(p, name, spec, known),
        queue: spec.queue.as_ref().map_or(d.queue, |q| q.value).max(1),
        ..d
    };
    (p.0.len() == before).then_some(ChannelSettings {
        delivery,
        policy,
        base_url: base_url.cloned(),
    })
}

/// The escalation steps, checked: each a positive delay, later than the one before, to
/// channels that exist (and not this one).
fn escalation(
    p: &mut Problems,
    name: &str,
    spec: &Sp<ChannelSpec>,
    known: &BTreeMap<String, Sp<ChannelSpec>>,
) -> Vec<(Duration, Vec<String>)> {
    let mut steps = Vec::new();
    let mut last = Duration::ZERO;
    for step in &spec.escalate {
        match crate::duration::parse(&step.after.value) {
            Ok(ms) => {
                let after = Duration::from_millis(ms.max(0) as u64);
                if after.is_zero() || after <= last {
                    p.add(step.after.pos, format!("channel `{name}`: each escalation step comes after the one before it, later than 0"))
                        .hint("e.g. `[{after: 15m, to: [oncall]}, {after: 1h, to: [manager]}]`");
                }
                last = after;
            }
            Err(_) => {
                p.add(
                    step.after.pos,
                    format!(
                        "channel `{name}`: escalation `after` `{}` is not a duration",
                        step.after.value
                    ),
                )
                .hint("e.g. `after: 15m`");
            }
        }
        if step.to.is_empty() {
            p.add(
                step.pos,
                format!("channel `{name}`: an escalation step names no channel in `to`"),
            );
        }
        for t in &step.to {
            if t == name {
                p.add(
                    step.pos,
                    format!("channel `{name}` cannot escalate to itself"),
                );
            } else if !known.contains_key(t) {
                p.add(
                    step.pos,
                    format!("channel `{name}`: escalation to unknown channel `{t}`"),
                )
                .hint(format!(
                    "define it under `channels:` (known: {})",
                    known.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        steps.push((last, step.to.clone()));
    }
    steps
}

/// An API's base address: the default, or `api_url` (an http(s) URL; a trailing `/` is
/// dropped, as the method's path is appended to it).
fn api_base(
    p: &mut Problems,
    name: &str,
    given: &Option<Sp<String>>,
    default: &str,
) -> Option<reqwest::Url> {
    let Some(g) = given else {
        return webhook_url(default);
    };
    match webhook_url(g.value.trim_end_matches('/')) {
        Some(u) => Some(u),
        None => {
            p.add(
                g.pos,
                format!("channel `{name}`: bad `api_url` `{}`", g.value),
            )
            .hint(format!("give an http:// or https:// URL, e.g. `{default}`"));
            None
        }
    }
}

/// A required secret-bearing text: present and not blank.
fn required(
    p: &mut Problems,
    name: &str,
    what: &str,
    v: &Sp<String>,
    hint: &str,
) -> Option<String> {
    if v.value.trim().is_empty() {
        p.add(v.pos, format!("channel `{name}`: `{what}` is empty"))
            .hint(hint.to_string());
        return None;
    }
    Some(v.value.clone())
}

/// The chat and incident channels: Slack, Teams, PagerDuty, Telegram.
fn chat(p: &mut Problems, name: &str, spec: &Sp<ChannelSpec>) -> Option<Delivery> {
    let env_hint =
        "set it from the environment, e.g. `${SLACK_TOKEN}`, and check the variable is set";
    if let Some(s) = &spec.slack {
        return match (&s.token, &s.channel, &s.webhook) {
            (Some(token), Some(channel), None) => {
                let api = api_base(p, name, &s.api_url, "https://slack.com/api");
                let token = required(p, name, "token", token, env_hint);
                let ch = required(
                    p,
                    name,
                    "channel",
                    channel,
                    "e.g. `channel: \"#maintenance\"`",
                );
                Some(Delivery::Slack(SlackSettings::Bot {
                    api: api?,
                    token: Secret(token?),
                    channel: ch?,
                }))
            }
            (None, None, Some(w)) => {
                if let Some(a) = &s.api_url {
                    p.add(a.pos, format!("channel `{name}`: `api_url` is for a bot; an incoming webhook posts to its `webhook` URL"));
                }
                match webhook_url(&w.value) {
                    Some(u) => Some(Delivery::Slack(SlackSettings::Webhook(Secret(u)))),
                    None => {
                        p.add(w.pos, format!("channel `{name}`: bad Slack webhook URL"))
                            .hint("give the incoming webhook's https://hooks.slack.com/services/… URL");
                        None
                    }
                }
            }
            _ => {
                p.add(spec.pos, format!("channel `{name}`: `slack` takes a bot's `token` and `channel`, or an incoming `webhook`"))
                    .hint("a bot edits one message per alarm: `slack: {token: \"${SLACK_TOKEN}\", channel: \"#maintenance\"}`; a webhook posts one message per transition: `slack: {webhook: \"${SLACK_WEBHOOK_URL}\"}`");
                None
            }
        };
    }
    if let Some(t) = &spec.teams {
        return match webhook_url(&t.url.value) {
            Some(u) => Some(Delivery::Teams(Secret(u))),
            None => {
                p.add(t.url.pos, format!("channel `{name}`: bad Teams workflow URL"))
                    .hint("give the URL of the workflow's \"When a Teams webhook request is received\" trigger");
                None
            }
        };
    }
    if let Some(d) = &spec.pagerduty {
        let api = api_base(p, name, &d.api_url, "https://events.pagerduty.com");
        let key = required(
            p,
            name,
            "routing_key",
            &d.routing_key,
            "the service's Events API v2 integration key, e.g. `${PD_ROUTING_KEY}`",
        );
        return Some(Delivery::PagerDuty(PagerDutySettings {
            api: api?,
            routing_key: Secret(key?),
        }));
    }
    if let Some(t) = &spec.telegram {
        let api = api_base(p, name, &t.api_url, "https://api.telegram.org");
        let token = required(
            p,
            name,
            "token",
            &t.token,
            "the bot's token from @BotFather, e.g. `${TG_TOKEN}`",
        );
        let chat_id = match &t.chat_id.value {
            serde_json::Value::Number(n) if n.is_i64() => Some(t.chat_id.value.clone()),
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(t.chat_id.value.clone()),
            _ => {
                p.add(
                    t.chat_id.pos,
                    format!("channel `{name}`: `chat_id` is a chat's id or a channel's `@name`"),
                )
                .hint("e.g. `chat_id: \"-1001234567890\"`");
                None
            }
        };
        return Some(Delivery::Telegram(TelegramSettings {
            api: api?,
            token: Secret(token?),
            chat_id: chat_id?,
        }));
    }
    None
}
