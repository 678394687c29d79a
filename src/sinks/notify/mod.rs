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
//!
//! The parts: `encoding` (a notice's default JSON, the webhook signature, reminder subjects),
//! `service` (one delivery attempt per transport: SMTP, HTTP, the log), `worker` (a channel's
//! task: retries, fallback, rate limit, reminders); the settings are
//! `config::settings::ChannelSettings`.

pub mod chat;
mod encoding;
pub(crate) mod failure;
pub mod memory;
mod service;
mod worker;

use crate::config::settings::ChannelSettings;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::alarm::registry::AlarmRegistry;
use crate::counters::{Counters, Report};
pub use encoding::signature;
pub use failure::Failure;
pub use service::{Chat, Transport};
use worker::Worker;

/// Called once a notification is settled: delivered, or given up (after every retry, or by
/// the rate limit). In a cluster it acknowledges the notification's entry in its partition's
/// outbox, so that one not yet settled when its instance dies is delivered by the next owner.
#[derive(Clone)]
pub struct Receipt(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipt")
    }
}

/// One notification for one channel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Told when it is settled (a cluster's outbox entry; None otherwise).
    #[serde(skip)]
    pub receipt: Option<Receipt>,
    /// Not to send: only to take up its alarm's reminders again (a cluster's partition taken
    /// over: its last owner was reminding of it).
    #[serde(skip)]
    pub rearm: bool,
    /// A later transition of an alarm this channel follows (its bot message, its incident),
    /// which the chain did not notify: it edits what the channel posted, and is dropped by a
    /// channel that posted nothing for the alarm.
    #[serde(skip)]
    pub follow: bool,
    /// Handed over by a channel's escalation: (that channel, the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<(String, u32)>,
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
    /// Held by a silence or an inhibition (not sent).
    pub held: AtomicU64,
    /// Escalation steps taken (an alarm handed to more channels).
    pub escalations: AtomicU64,
    /// The last error.
    pub last_error: Mutex<Option<String>>,
}

impl Counters for ChannelStats {
    fn report(&self, r: &mut dyn Report) {
        let g = |a: &AtomicU64| a.load(Relaxed);
        r.counter("sent", "notifications delivered", g(&self.sent));
        r.counter(
            "attempts_failed",
            "delivery attempts that failed",
            g(&self.attempts_failed),
        );
        r.counter(
            "failed",
            "notifications given up after every retry",
            g(&self.failed),
        );
        r.counter(
            "fallbacks",
            "notifications handed to the fallback channel",
            g(&self.fallbacks),
        );
        r.counter(
            "rate_limited",
            "notifications dropped by the rate limit",
            g(&self.rate_limited),
        );
        r.counter(
            "dropped",
            "notifications dropped: the queue was full",
            g(&self.dropped),
        );
        r.counter("reminders", "reminders sent", g(&self.reminders));
        r.counter(
            "escalations",
            "escalation steps taken: alarms still unacknowledged handed to more channels",
            g(&self.escalations),
        );
        r.counter(
            "held",
            "notifications and reminders held by a silence or an inhibition",
            g(&self.held),
        );
        let e = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        r.text("last_error", "the last error", e.as_deref());
    }
}

impl ChannelStats {
    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

struct ChannelHandle {
    tx: mpsc::Sender<Notice>,
    stats: Arc<ChannelStats>,
    describe: String,
    /// Its messages follow an alarm's life ([`Notifier::follow`]).
    follows: bool,
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
    /// Starts one task per channel on the current runtime. `alarms` tells an alarm's current
    /// status, so reminders stop once an alarm is acknowledged or cleared even when the
    /// channel was not told.
    pub fn start(
        settings: &std::collections::BTreeMap<String, ChannelSettings>,
        alarms: Arc<AlarmRegistry>,
        memory: Arc<memory::Memory>,
    ) -> Result<(Notifier, Vec<tokio::task::JoinHandle<()>>), String> {
        let mut built = Vec::new();
        let mut channels = HashMap::new();
        for (name, ch) in settings {
            let policy = ch.policy.clone();
            let transport = Transport::build(name, ch)?;
            let remembered = memory.channel(name);
            transport.remember(name, &remembered, &memory);
            let (tx, rx) = mpsc::channel(policy.queue);
            let stats = Arc::new(ChannelStats::default());
            channels.insert(
                name.clone(),
                ChannelHandle {
                    tx,
                    stats: stats.clone(),
                    describe: transport.describe(),
                    follows: transport.follows_alarms(),
                },
            );
            built.push((name.clone(), transport, policy, rx, stats, remembered));
        }
        let notifier = Notifier {
            channels: Arc::new(channels),
            unknown: Arc::default(),
        };
        let mut tasks = Vec::new();
        for (name, transport, policy, rx, stats, remembered) in built {
            // Reminders due while the engine was away come at once, then on their schedule.
            let now_ms = crate::engine::clock::wall_ms();
            let now = tokio::time::Instant::now();
            let reminders = remembered
                .reminders
                .into_iter()
                .map(|(id, (n, due))| {
                    let wait =
                        std::time::Duration::from_millis(due.saturating_sub(now_ms).max(0) as u64);
                    (id, (n, now + wait))
                })
                .collect();
            // An escalation goes on from when its alarm was notified, on the wall clock.
            let escalations = remembered
                .escalations
                .into_iter()
                .map(|(id, (n, step, base_ms))| {
                    let ago = std::time::Duration::from_millis(
                        now_ms.saturating_sub(base_ms).max(0) as u64,
                    );
                    (id, (n, step, now.checked_sub(ago).unwrap_or(now)))
                })
                .collect();
            let worker = Worker {
                name,
                transport,
                policy,
                stats,
                others: Arc::downgrade(&notifier.channels),
                alarms: alarms.clone(),
                reminders,
                escalations,
                memory: memory.clone(),
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

    /// Queues a notification, waiting for room in the channel's queue (a cluster's outbox
    /// reader: what it has not handed over stays in the outbox). Gives it back when the config
    /// has no such channel, or the channel stopped.
    pub async fn send_wait(&self, n: Notice) -> Result<(), Unsent> {
        let Some(ch) = self.channels.get(&n.channel) else {
            self.unknown.fetch_add(1, Relaxed);
            return Err(Unsent::Unknown(Box::new(n)));
        };
        ch.tx.send(n).await.map_err(|_| Unsent::Full)
    }

    /// Tells the channels that follow alarms (a Slack or Telegram bot, PagerDuty) of an alarm's
    /// later transition, so an acknowledgement or a clear edits their message or updates their
    /// incident whether or not the chain notifies them of it. Never waits; a full queue skips
    /// it (the next transition brings the message up to date).
    pub fn follow(&self, a: &crate::alarm::Alarm, transition: crate::alarm::Transition) {
        // Every alarm transition comes here: nothing is built unless some channel follows.
        if transition == crate::alarm::Transition::Created
            || !self.channels.values().any(|c| c.follows)
        {
            return;
        }
        let data = serde_json::json!({
            "alarm": crate::alarm::registry::alarm_json(a, transition.as_str())
        });
        let (chain, node) = a
            .origin
            .as_ref()
            .map_or(("", ""), |(c, n)| (c.as_str(), n.as_str()));
        for (name, ch) in self.channels.iter().filter(|(_, c)| c.follows) {
            let n = Notice {
                channel: name.clone(),
                chain: chain.into(),
                node: node.into(),
                device: a.device.as_str().into(),
                ts: crate::engine::clock::wall_ms(),
                subject: crate::alarm::default_subject(
                    a.severity.as_str(),
                    &a.type_,
                    transition.as_str(),
                    &a.device,
                ),
                body: a.message.clone(),
                data: data.clone(),
                reminder: false,
                fallback_from: None,
                receipt: None,
                rearm: false,
                follow: true,
                escalation: None,
            };
            let _ = ch.tx.try_send(n);
        }
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
        crate::counters::to_json(self)
    }
}

/// A channel's counters and where it delivers.
struct ChannelPart<'a>(&'a ChannelStats, &'a str);

impl Counters for ChannelPart<'_> {
    fn report(&self, r: &mut dyn Report) {
        self.0.report(r);
        r.text("via", "where the channel delivers", Some(self.1));
    }
}

impl Counters for NotifyView {
    fn report(&self, r: &mut dyn Report) {
        let parts: Vec<(&str, ChannelPart)> = self
            .channels
            .iter()
            .map(|(name, (stats, via))| (name.as_str(), ChannelPart(stats, via)))
            .collect();
        r.parts("channels", "channel", &crate::counters::parts(&parts));
        r.counter(
            "unknown_channel",
            "notifications to channels the config does not define",
            self.unknown.load(Relaxed),
        );
    }
}
