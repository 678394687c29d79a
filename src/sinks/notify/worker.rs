//! A channel's task: its queue in order, each delivery retried with backoff, the fallback after
//! `fallback_after` failures, the rate limit, and reminders of alarms still active and
//! unacknowledged.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ChannelHandle, ChannelStats, Notice, Transport};
use crate::alarm::registry::AlarmRegistry;
use crate::alarm::Status;
use crate::config::settings::Policy;

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
    /// Alarms being escalated: alarm id → (notice, next step, when it was notified here).
    pub(super) escalations: HashMap<String, (Notice, usize, Instant)>,
    /// What the channel remembers over a restart (its reminders).
    pub(super) memory: Arc<super::memory::Memory>,
    /// Send times within the rate window.
    pub(super) sent_at: std::collections::VecDeque<Instant>,
}

impl Worker {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Notice>) {
        loop {
            let next_reminder = self
                .reminders
                .values()
                .map(|r| r.1)
                .chain(self.next_escalation())
                .min();
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
                    self.escalate();
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
        if n.reminder || n.escalation.is_some() {
            return;
        }
        let Some(a) = n.alarm() else { return };
        let Some(id) = a.get("id").and_then(Value::as_str) else {
            return;
        };
        let status = a
            .get("status")
            .and_then(|s| <Status as serde::Deserialize>::deserialize(s).ok());
        self.track_escalation(n, id, status);
        let Some(every) = self.policy.repeat else {
            return;
        };
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

    /// Starts an alarm's escalation when it is first notified here active and unacknowledged;
    /// ends it on any other status.
    fn track_escalation(&mut self, n: &Notice, id: &str, status: Option<Status>) {
        if self.policy.escalate.is_empty() {
            return;
        }
        if status != Some(Status::ActiveUnack) {
            if self.escalations.remove(id).is_some() {
                self.memory.escalation(&self.name, id, None);
            }
            return;
        }
        if self.escalations.contains_key(id) || self.escalations.len() >= MAX_REMINDERS {
            return;
        }
        let mut e = n.clone();
        e.receipt = None;
        e.follow = false;
        let base = crate::engine::clock::wall_ms();
        self.memory.escalation(&self.name, id, Some((&e, 0, base)));
        self.escalations
            .insert(id.to_string(), (e, 0, Instant::now()));
    }

    /// When the next escalation step is due.
    fn next_escalation(&self) -> Option<Instant> {
        self.escalations
            .values()
            .filter_map(|(_, step, base)| self.policy.escalate.get(*step).map(|s| *base + s.0))
            .min()
    }

    /// Hands the alarms whose escalation step is due, still active and unacknowledged, to that
    /// step's channels.
    fn escalate(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .escalations
            .iter()
            .filter(|(_, (_, step, base))| {
                self.policy
                    .escalate
                    .get(*step)
                    .is_some_and(|s| *base + s.0 <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            let Some((n, step, base)) = self.escalations.get(&id).cloned() else {
                continue;
            };
            // Acknowledged or cleared meanwhile (whether or not this channel heard of it), or
            // no longer this process's: over.
            if self.alarms.status_of(&id) != Some(Status::ActiveUnack)
                || !self.alarms.is_local(&n.device)
            {
                self.escalations.remove(&id);
                self.memory.escalation(&self.name, &id, None);
                continue;
            }
            let (after, to) = &self.policy.escalate[step];
            let mut handed = Vec::new();
            if let Some(others) = self.others.upgrade() {
                for t in to {
                    let mut copy = n.clone();
                    copy.channel = t.clone();
                    copy.escalation = Some((self.name.clone(), step as u32 + 1));
                    copy.ts = crate::engine::clock::wall_ms();
                    if others.get(t).is_some_and(|ch| ch.tx.try_send(copy).is_ok()) {
                        handed.push(t.as_str());
                    }
                }
            }
            self.stats.escalations.fetch_add(1, Relaxed);
            tracing::warn!(channel = %self.name, device = %n.device, step = step + 1, to = ?handed, "alarm still unacknowledged after {} s: escalated", after.as_secs());
            self.note(
                &n,
                "escalated",
                format!(
                    "step {} after {} s to {}",
                    step + 1,
                    after.as_secs(),
                    handed.join(", ")
                ),
            );
            if step + 1 < self.policy.escalate.len() {
                let base_ms =
                    crate::engine::clock::wall_ms() - now.duration_since(base).as_millis() as i64;
                self.memory
                    .escalation(&self.name, &id, Some((&n, step + 1, base_ms)));
                if let Some(e) = self.escalations.get_mut(&id) {
                    e.1 = step + 1;
                }
            } else {
                self.escalations.remove(&id);
                self.memory.escalation(&self.name, &id, None);
            }
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
