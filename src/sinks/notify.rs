//! Notification channels: `email` (SMTP through lettre), `webhook` (HTTP POST, optionally signed
//! with HMAC-SHA256) and `log`.
//!
//! Each channel has its own task and bounded queue, so a webhook that hangs never delays an
//! email. A delivery attempt has a timeout; a failed one is retried with capped exponential
//! backoff (notifications of one channel stay in order); after `fallback_after` failures the
//! notification is also handed to the channel's `fallback` (once; a fallback's own fallback is
//! not followed, so fallbacks cannot loop). A rate limit drops what exceeds it, counted. With
//! `repeat_interval`, an alarm that stays active and unacknowledged is sent again as a reminder
//! until it is cleared or acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hmac::{KeyInit, Mac};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::check::SmtpTls;
pub use crate::config::settings::{ChannelSettings, Delivery, Policy};
use crate::engine::alarm::Status;

/// One notification for one channel.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The channel.
    pub channel: String,
    /// The chain and node that sent it.
    pub chain: Arc<str>,
    /// The node.
    pub node: Arc<str>,
    /// The device.
    pub device: Arc<str>,
    /// When (ms).
    pub ts: i64,
    /// Rendered subject.
    pub subject: String,
    /// Rendered body.
    pub body: String,
    /// The message (`msg`) as JSON; an alarm message holds the alarm under `alarm`.
    pub data: Value,
    /// A reminder of an alarm still active (`repeat_interval`).
    pub reminder: bool,
    /// Handed over by this channel as its fallback.
    pub fallback_from: Option<String>,
}

impl Notice {
    fn alarm(&self) -> Option<&serde_json::Map<String, Value>> {
        self.data.get("alarm").and_then(Value::as_object)
    }

    /// The webhook's default JSON body.
    pub fn payload(&self) -> Value {
        let mut v = json!({
            "channel": self.channel,
            "chain": &*self.chain,
            "node": &*self.node,
            "device": &*self.device,
            "ts": self.ts,
            "subject": self.subject,
            "body": self.body,
            "reminder": self.reminder,
        });
        match self.alarm() {
            Some(a) => v["alarm"] = Value::Object(a.clone()),
            None => v["msg"] = self.data.clone(),
        }
        v
    }
}

/// A channel's counters.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Notifications delivered.
    pub sent: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub attempts_failed: AtomicU64,
    /// Notifications given up after every retry.
    pub failed: AtomicU64,
    /// Handed to the fallback channel.
    pub fallbacks: AtomicU64,
    /// Dropped by the rate limit.
    pub rate_limited: AtomicU64,
    /// Dropped because the channel's queue was full.
    pub dropped: AtomicU64,
    /// Reminders sent (`repeat_interval`).
    pub reminders: AtomicU64,
    /// The last error.
    pub last_error: Mutex<Option<String>>,
}

impl ChannelStats {
    fn to_json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Relaxed);
        json!({
            "sent": g(&self.sent),
            "attempts_failed": g(&self.attempts_failed),
            "failed": g(&self.failed),
            "fallbacks": g(&self.fallbacks),
            "rate_limited": g(&self.rate_limited),
            "dropped": g(&self.dropped),
            "reminders": g(&self.reminders),
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// How a channel delivers.
pub enum Transport {
    /// SMTP.
    Email {
        /// The mailer.
        mailer: AsyncSmtpTransport<Tokio1Executor>,
        /// Sender.
        from: Mailbox,
        /// Recipients.
        to: Vec<Mailbox>,
    },
    /// HTTP POST.
    Webhook {
        /// The client.
        client: reqwest::Client,
        /// The URL.
        url: reqwest::Url,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The HMAC key.
        secret: Option<Vec<u8>>,
        /// The signature header.
        signature_header: String,
        /// Post the rendered body instead of the default JSON.
        templated: bool,
    },
    /// The engine's log.
    Log,
}

/// The HMAC-SHA256 signature header value for a body: `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Transport {
    /// Builds a channel's transport from its settings (the CA file, if any, is read now).
    pub fn build(name: &str, ch: &ChannelSettings) -> Result<Self, String> {
        let timeout = ch.policy.timeout;
        match &ch.delivery {
            Delivery::Email(e) => {
                use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
                let params = || -> Result<TlsParameters, String> {
                    let mut b = TlsParameters::builder(e.host.clone());
                    if let Some(path) = &e.ca {
                        let pem = std::fs::read(path).map_err(|err| {
                            format!(
                                "channel `{name}`: cannot read the CA file {}: {err}",
                                path.display()
                            )
                        })?;
                        let cert = Certificate::from_pem(&pem).map_err(|err| {
                            format!(
                                "channel `{name}`: the CA file {} is not a PEM certificate: {err}",
                                path.display()
                            )
                        })?;
                        b = b.add_root_certificate(cert);
                    }
                    b.build_rustls()
                        .map_err(|err| format!("channel `{name}`: TLS setup: {err}"))
                };
                let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host);
                // STARTTLS is required, never opportunistic: a server that does not offer it
                // fails the delivery rather than receiving the mail in clear text.
                let builder = match e.tls {
                    SmtpTls::None => builder,
                    SmtpTls::StartTls => builder.tls(Tls::Required(params()?)),
                    SmtpTls::Tls => builder.tls(Tls::Wrapper(params()?)),
                };
                let mut builder = builder.port(e.port).timeout(Some(timeout));
                if let Some(u) = &e.username {
                    builder = builder.credentials(Credentials::new(
                        u.clone(),
                        e.password.clone().unwrap_or_default(),
                    ));
                }
                Ok(Transport::Email {
                    mailer: builder.build(),
                    from: e.from.clone(),
                    to: e.to.clone(),
                })
            }
            Delivery::Webhook(w) => {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| format!("channel `{name}`: {e}"))?;
                Ok(Transport::Webhook {
                    client,
                    url: w.url.clone(),
                    headers: w.headers.clone(),
                    secret: w.secret.clone(),
                    signature_header: w.signature_header.clone(),
                    templated: w.templated,
                })
            }
            Delivery::Log => Ok(Transport::Log),
        }
    }

    /// What it is, for messages: never a password, a token or a webhook's path (which often
    /// holds a secret).
    pub fn describe(&self) -> String {
        match self {
            Transport::Email { to, .. } => format!(
                "email to {}",
                to.iter()
                    .map(|m| m.email.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Transport::Webhook { url, .. } => format!(
                "webhook to {}://{}",
                url.scheme(),
                url.host_str().unwrap_or("?")
            ),
            Transport::Log => "the log".into(),
        }
    }

    /// One delivery attempt.
    pub async fn deliver(&self, n: &Notice) -> Result<(), Failure> {
        match self {
            Transport::Email { mailer, from, to } => {
                let mut b = lettre::Message::builder()
                    .from(from.clone())
                    .subject(one_line(&reminder_subject(n)))
                    .header(ContentType::TEXT_PLAIN);
                for t in to {
                    b = b.to(t.clone());
                }
                let m = b
                    .body(n.body.clone())
                    .map_err(|e| Failure::permanent(format!("cannot build the email: {e}")))?;
                mailer.send(m).await.map(|_| ()).map_err(|e| Failure {
                    text: super::redact_urls(&format!("SMTP: {}", chain_text(&e))),
                    // A 5xx reply (unknown recipient, refused sender) will not change.
                    permanent: e.is_permanent(),
                })
            }
            Transport::Webhook {
                client,
                url,
                headers,
                secret,
                signature_header,
                templated,
            } => {
                let body = if *templated {
                    n.body.clone().into_bytes()
                } else {
                    n.payload().to_string().into_bytes()
                };
                let mut req = client
                    .post(url.clone())
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(s) = secret {
                    req = req.header(signature_header.as_str(), signature(s, &body));
                }
                let resp = req
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Failure::transient(super::http_error_text(&e)))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    let text: String = resp
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    let code = status.as_u16();
                    Err(Failure {
                        text: super::redact_urls(&format!("HTTP {status}: {}", text.trim())),
                        // The receiver refuses this request (400, 401, 404…): sending it again
                        // changes nothing. 408 and 429 ask to come back later.
                        permanent: !crate::retry::retryable_status(code),
                    })
                }
            }
            Transport::Log => {
                tracing::warn!(channel = %n.channel, device = %n.device, chain = %n.chain, "{}: {}", reminder_subject(n), n.body);
                Ok(())
            }
        }
    }
}

/// A failed delivery attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong.
    pub text: String,
    /// Trying again cannot help (a 4xx from a webhook, a 5xx SMTP reply).
    pub permanent: bool,
}

impl Failure {
    fn permanent(text: String) -> Self {
        Failure {
            text,
            permanent: true,
        }
    }

    fn transient(text: String) -> Self {
        Failure {
            text,
            permanent: false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn reminder_subject(n: &Notice) -> String {
    if n.reminder {
        format!("Reminder: {}", n.subject)
    } else {
        n.subject.clone()
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn chain_text(e: &dyn std::error::Error) -> String {
    super::with_causes(e.to_string(), e.source())
}

struct ChannelHandle {
    tx: mpsc::Sender<Notice>,
    stats: Arc<ChannelStats>,
    describe: String,
}

/// Why a notification was not queued.
#[derive(Debug)]
pub enum Unsent {
    /// The config has no such channel (the embedded default has none): the notification.
    Unknown(Box<Notice>),
    /// The channel's queue is full (counted as `dropped`).
    Full,
}

/// Every channel, by name.
#[derive(Clone, Default)]
pub struct Notifier {
    channels: Arc<HashMap<String, ChannelHandle>>,
    /// Notifications to channels the config does not define (the embedded default has none).
    pub unknown: Arc<AtomicU64>,
}

impl Notifier {
    /// Starts one task per channel on the current runtime. `status` tells an alarm's current
    /// status by id (the hub's view), so reminders stop once an alarm is acknowledged or
    /// cleared even when the channel was not told.
    pub fn start(
        settings: &std::collections::BTreeMap<String, ChannelSettings>,
        status: AlarmStatus,
    ) -> Result<(Notifier, Vec<tokio::task::JoinHandle<()>>), String> {
        let mut built = Vec::new();
        let mut channels = HashMap::new();
        for (name, ch) in settings {
            let policy = ch.policy.clone();
            let transport = Transport::build(name, ch)?;
            let (tx, rx) = mpsc::channel(policy.queue);
            let stats = Arc::new(ChannelStats::default());
            channels.insert(
                name.clone(),
                ChannelHandle {
                    tx,
                    stats: stats.clone(),
                    describe: transport.describe(),
                },
            );
            built.push((name.clone(), transport, policy, rx, stats));
        }
        let notifier = Notifier {
            channels: Arc::new(channels),
            unknown: Arc::default(),
        };
        let mut tasks = Vec::new();
        for (name, transport, policy, rx, stats) in built {
            let worker = Worker {
                name,
                transport,
                policy,
                stats,
                others: Arc::downgrade(&notifier.channels),
                status: status.clone(),
                reminders: HashMap::new(),
                sent_at: std::collections::VecDeque::new(),
            };
            tasks.push(tokio::spawn(worker.run(rx)));
        }
        Ok((notifier, tasks))
    }

    /// Queues a notification (never waits: a full queue drops it, counted). Gives it back
    /// when the config has no such channel.
    pub fn send(&self, n: Notice) -> Result<(), Unsent> {
        let Some(ch) = self.channels.get(&n.channel) else {
            self.unknown.fetch_add(1, Relaxed);
            return Err(Unsent::Unknown(Box::new(n)));
        };
        ch.tx.try_send(n).map_err(|_| {
            ch.stats.dropped.fetch_add(1, Relaxed);
            Unsent::Full
        })
    }

    /// The channels' counters, without their queues (holding a view keeps no queue open).
    pub fn view(&self) -> NotifyView {
        NotifyView {
            channels: Arc::new(
                self.channels
                    .iter()
                    .map(|(k, c)| (k.clone(), (c.stats.clone(), c.describe.clone())))
                    .collect(),
            ),
            unknown: self.unknown.clone(),
        }
    }
}

/// The channels' counters.
#[derive(Clone, Default)]
pub struct NotifyView {
    channels: Arc<std::collections::BTreeMap<String, (Arc<ChannelStats>, String)>>,
    unknown: Arc<AtomicU64>,
}

impl NotifyView {
    /// Every channel's counters, as JSON.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (name, (stats, via)) in self.channels.iter() {
            let mut v = stats.to_json();
            v["via"] = via.clone().into();
            m.insert(name.clone(), v);
        }
        json!({"channels": m, "unknown_channel": self.unknown.load(Relaxed)})
    }
}

/// An alarm's current status by id, as the engine knows it.
pub type AlarmStatus = Arc<dyn Fn(&str) -> Option<Status> + Send + Sync>;

/// Reminders kept per channel at most (the oldest active alarms keep theirs).
const MAX_REMINDERS: usize = 10_000;

struct Worker {
    name: String,
    transport: Transport,
    policy: Policy,
    stats: Arc<ChannelStats>,
    /// The other channels, for the fallback. Weak: the queues close when the engine drops its
    /// notifier, so the workers finish.
    others: std::sync::Weak<HashMap<String, ChannelHandle>>,
    /// An alarm's current status.
    status: AlarmStatus,
    /// Active alarms to remind of: alarm id → (notice, next due).
    reminders: HashMap<String, (Notice, Instant)>,
    /// Send times within the rate window.
    sent_at: std::collections::VecDeque<Instant>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Notice>) {
        loop {
            let next_reminder = self.reminders.values().map(|r| r.1).min();
            let n = tokio::select! {
                m = rx.recv() => match m {
                    Some(n) => n,
                    None => break,
                },
                _ = async {
                    match next_reminder {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.remind().await;
                    continue;
                }
            };
            self.track(&n);
            if !self.admit() {
                self.stats.rate_limited.fetch_add(1, Relaxed);
                tracing::warn!(channel = %self.name, device = %n.device, "notification dropped by the channel's rate limit: {}", n.subject);
                continue;
            }
            self.deliver(n).await;
        }
    }

    /// Keeps the reminder list in step with the alarm's transitions.
    fn track(&mut self, n: &Notice) {
        let Some(every) = self.policy.repeat else {
            return;
        };
        if n.reminder {
            return;
        }
        let Some(a) = n.alarm() else { return };
        let Some(id) = a.get("id").and_then(Value::as_str) else {
            return;
        };
        let status = a.get("status").and_then(Value::as_str).unwrap_or("");
        if status == Status::ActiveUnack.as_str() {
            if self.reminders.len() < MAX_REMINDERS || self.reminders.contains_key(id) {
                self.reminders
                    .insert(id.to_string(), (n.clone(), Instant::now() + every));
            }
        } else {
            self.reminders.remove(id);
        }
    }

    async fn remind(&mut self) {
        let now = Instant::now();
        let Some(every) = self.policy.repeat else {
            return;
        };
        let due: Vec<String> = self
            .reminders
            .iter()
            .filter(|(_, r)| r.1 <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            // The channel may not hear of the acknowledgement or the clear (a chain can notify
            // on raise only): the engine's view decides.
            if (self.status)(&id) != Some(Status::ActiveUnack) {
                self.reminders.remove(&id);
                continue;
            }
            let Some(r) = self.reminders.get_mut(&id) else {
                continue;
            };
            r.1 = now + every;
            let mut n = r.0.clone();
            n.reminder = true;
            n.ts = crate::engine::clock::wall_ms();
            self.stats.reminders.fetch_add(1, Relaxed);
            if self.admit() {
                self.deliver(n).await;
            } else {
                self.stats.rate_limited.fetch_add(1, Relaxed);
            }
        }
    }

    /// The rate limit: at most N sends in any window of the period.
    fn admit(&mut self) -> bool {
        let Some((max, per)) = self.policy.rate else {
            return true;
        };
        let now = Instant::now();
        while self
            .sent_at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= per)
        {
            self.sent_at.pop_front();
        }
        if self.sent_at.len() >= max as usize {
            return false;
        }
        self.sent_at.push_back(now);
        true
    }

    async fn deliver(&mut self, n: Notice) {
        let mut failures = 0u32;
        let mut backoff = crate::retry::Backoff::new(self.policy.backoff, self.policy.max_backoff);
        let mut fell_back = false;
        loop {
            let attempt =
                tokio::time::timeout(self.policy.timeout, self.transport.deliver(&n)).await;
            let (err, permanent) = match attempt {
                Ok(Ok(())) => {
                    self.stats.sent.fetch_add(1, Relaxed);
                    self.stats.set_error(None);
                    tracing::info!(channel = %self.name, device = %n.device, attempts = failures + 1, reminder = n.reminder, "notification sent: {}", n.subject);
                    return;
                }
                Ok(Err(e)) => (e.text, e.permanent),
                Err(_) => (
                    format!("no answer within {} ms", self.policy.timeout.as_millis()),
                    false,
                ),
            };
            failures += 1;
            self.stats.attempts_failed.fetch_add(1, Relaxed);
            self.stats.set_error(Some(err.clone()));
            if !fell_back
                && (failures >= self.policy.fallback_after || permanent)
                && n.fallback_from.is_none()
            {
                if let Some(fb) = &self.policy.fallback {
                    fell_back = true;
                    let mut copy = n.clone();
                    copy.channel = fb.clone();
                    copy.fallback_from = Some(self.name.clone());
                    let handed = self.others.upgrade().and_then(|o| {
                        let ch = o.get(fb)?;
                        ch.tx.try_send(copy).ok()
                    });
                    if handed.is_some() {
                        self.stats.fallbacks.fetch_add(1, Relaxed);
                        tracing::warn!(channel = %self.name, fallback = %fb, "delivery failed {failures} times ({err}); handed to the fallback channel");
                    }
                }
            }
            if failures > self.policy.retries || permanent {
                self.stats.failed.fetch_add(1, Relaxed);
                tracing::error!(channel = %self.name, device = %n.device, attempts = failures, "notification not delivered: {err}");
                return;
            }
            let wait = backoff.next_delay();
            tracing::warn!(channel = %self.name, device = %n.device, attempt = failures, retry_in_ms = wait.as_millis() as u64, "notification failed: {err}");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_default_payload_carries_the_alarm() {
        let n = Notice {
            channel: "ops".into(),
            chain: "c".into(),
            node: "n".into(),
            device: "pump-3".into(),
            ts: 5,
            subject: "s".into(),
            body: "b".into(),
            data: json!({"alarm": {"id": "A:pump-3:1", "status": "ACTIVE_UNACK"}, "current": 13}),
            reminder: false,
            fallback_from: None,
        };
        let p = n.payload();
        assert_eq!(p["alarm"]["id"], "A:pump-3:1");
        assert_eq!(p["device"], "pump-3");
        assert!(p.get("msg").is_none());
        let plain = Notice {
            data: json!({"current": 13}),
            ..n
        };
        assert_eq!(plain.payload()["msg"]["current"], 13);
    }
}
