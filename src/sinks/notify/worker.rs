//! A channel's task: its queue in order, each delivery retried with backoff, the fallback after
//! `fallback_after` failures, the rate limit, and reminders of alarms still active and
//! unacknowledged.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ChannelHandle, ChannelStats, Notice, Policy, Transport};
use crate::alarm::registry::AlarmRegistry;
use crate::alarm::Status;

/// Reminders kept per channel at most (the oldest active alarms keep theirs).
const MAX_REMINDERS: usize = 10_000;

pub(super) struct Worker {
    pub(super) name: String,
    pub(super) transport: Transport,
    pub(super) policy: Policy,
    pub(super) stats: Arc<ChannelStats>,
    /// The other channels, for the fallback. Weak: the queues close when the engine drops its
    /// notifier, so the workers finish.
    pub(super) others: std::sync::Weak<HashMap<String, ChannelHandle>>,
    /// The open alarms: an alarm's current status.
    pub(super) alarms: Arc<AlarmRegistry>,
    /// Active alarms to remind of: alarm id → (notice, next due).
    pub(super) reminders: HashMap<String, (Notice, Instant)>,
    /// What the channel remembers over a restart (its reminders).
    pub(super) memory: Arc<super::memory::Memory>,
    /// Send times within the rate window.
    pub(super) sent_at: std::collections::VecDeque<Instant>,
}

impl Worker {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Notice>) {
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
            if n.rearm {
                continue;
            }
            if n.follow && !self.transport.knows(&n) {
                // Nothing posted for this alarm here: nothing to edit.
                continue;
            }
            if self.hold(&n) {
                n.settled();
                continue;
            }
            if !self.admit() {
                self.stats.rate_limited.fetch_add(1, Relaxed);
                tracing::warn!(channel = %self.name, device = %n.device, "notification dropped by the channel's rate limit: {}", n.subject);
                n.settled();
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
        let status = a
            .get("status")
            .and_then(|s| <Status as serde::Deserialize>::deserialize(s).ok());
        if status == Some(Status::ActiveUnack) {
            if self.reminders.len() < MAX_REMINDERS || self.reminders.contains_key(id) {
                // A reminder is the channel's own: it settles nothing.
                let mut r = n.clone();
                r.receipt = None;
                self.memory.reminder(
                    &self.name,
                    id,
                    Some((
                        &r,
                        crate::engine::clock::wall_ms() + every.as_millis() as i64,
                    )),
                );
                self.reminders
                    .insert(id.to_string(), (r, Instant::now() + every));
            }
        } else {
            self.reminders.remove(id);
            self.memory.reminder(&self.name, id, None);
        }
    }

    /// Whether a silence or an inhibition holds this notification now (counted and logged).
    fn hold(&self, n: &Notice) -> bool {
        let Some(alarm) = n.data.get("alarm") else {
            return false;
        };
        let Some(why) = self
            .alarms
            .held(alarm, &n.chain, crate::engine::clock::wall_ms())
        else {
            return false;
        };
        self.stats.held.fetch_add(1, Relaxed);
        tracing::info!(channel = %self.name, device = %n.device, reminder = n.reminder, "notification held by {why}: {}", n.subject);
        self.note(n, "held", why.to_string());
        true
    }

    /// Writes what the channel did with an alarm's notification into the alarm's history.
    fn note(&self, n: &Notice, kind: &str, text: String) {
        let (Some(h), Some(id)) = (
            self.alarms.history(),
            n.alarm().and_then(|a| a.get("id")).and_then(Value::as_str),
        ) else {
            return;
        };
        h.add(
            id,
            crate::alarm::history::Entry {
                ts: crate::engine::clock::wall_ms(),
                kind: kind.into(),
                by: self.name.clone(),
                text: Some(text),
                severity: None,
                status: None,
            },
        );
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
            if self.alarms.status_of(&id) != Some(Status::ActiveUnack)
                || !self
                    .reminders
                    .get(&id)
                    .is_some_and(|r| self.alarms.is_local(&r.0.device))
            {
                self.reminders.remove(&id);
                self.memory.reminder(&self.name, &id, None);
                continue;
            }
            let Some(r) = self.reminders.get_mut(&id) else {
                continue;
            };
            r.1 = now + every;
            self.memory.reminder(
                &self.name,
                &id,
                Some((
                    &r.0,
                    crate::engine::clock::wall_ms() + every.as_millis() as i64,
                )),
            );
            let mut n = r.0.clone();
            n.reminder = true;
            n.ts = crate::engine::clock::wall_ms();
            if self.hold(&n) {
                continue;
            }
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
            let (err, permanent, asked) = match attempt {
                Ok(Ok(())) => {
                    self.stats.sent.fetch_add(1, Relaxed);
                    self.stats.set_error(None);
                    tracing::info!(channel = %self.name, device = %n.device, attempts = failures + 1, reminder = n.reminder, "notification sent: {}", n.subject);
                    self.note(
                        &n,
                        "notified",
                        if n.reminder {
                            "reminder".into()
                        } else {
                            n.subject.clone()
                        },
                    );
                    n.settled();
                    return;
                }
                Ok(Err(e)) => (e.text, e.permanent, e.retry_after),
                Err(_) => (
                    format!("no answer within {} ms", self.policy.timeout.as_millis()),
                    false,
                    None,
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
                    copy.receipt = None;
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
                n.settled();
                return;
            }
            // The far side's `Retry-After` wins over a shorter backoff.
            let wait = backoff.next_delay().max(asked.unwrap_or_default());
            tracing::warn!(channel = %self.name, device = %n.device, attempt = failures, retry_in_ms = wait.as_millis() as u64, "notification failed: {err}");
            tokio::time::sleep(wait).await;
        }
    }
}
