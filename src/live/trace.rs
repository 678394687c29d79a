//! Live trace: an operator asks for a sample of messages (of one device, through one chain,
//! or any), and each sampled message's path through the nodes (each node's decision and the
//! message as it entered it) is kept in a bounded ring, read by `GET /api/trace` and pushed to
//! the WebSocket room `trace`.
//!
//! Off by default. Off, a shard pays one relaxed atomic load per message. A trace ends after
//! `limit` messages or `duration`, whichever comes first; both have defaults and hard caps. It
//! lives beside the shards, not in them, so a rule reload does not end it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::engine::effect::{Effect, Event};

/// Default and most messages one trace samples.
pub const LIMIT: (u32, u32) = (20, 1_000);
/// Default and longest duration of a trace (ms).
pub const DURATION_MS: (i64, i64) = (60_000, 3_600_000);
/// Entries kept (the oldest leave first).
pub const RING: usize = 500;
/// The longest text of one step's message; a longer one is cut, and says so.
pub const MAX_MSG_TEXT: usize = 4_096;

/// What to sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Request {
    /// Only this device's messages.
    pub device: Option<String>,
    /// Only the steps through this chain.
    pub chain: Option<String>,
    /// How many messages (after the defaults and caps).
    pub limit: u32,
    /// For how long (text, as asked: `60s`).
    pub duration: String,
    /// When it ends (ms since the epoch).
    pub until: i64,
    /// Messages sampled so far.
    pub sampled: u32,
}

/// One step: a node and what it decided.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The node's id.
    pub node: String,
    /// `pass`, `else`, `stop`, `held`, `suppressed`, `error`.
    pub outcome: crate::engine::effect::Outcome,
    /// The message as it entered the node.
    pub msg: Value,
}

/// One sampled message through one chain.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Counts entries since the start.
    pub seq: u64,
    /// When (ms since the epoch).
    pub ts: i64,
    /// The device.
    pub device: String,
    /// The chain.
    pub chain: String,
    /// Its steps, in the order the nodes ran.
    pub steps: Vec<Step>,
}

#[derive(Default)]
struct Inner {
    active: Option<Request>,
    ring: VecDeque<Entry>,
    seq: u64,
}

/// The engine's trace: shared by the shards (which sample) and the API (which starts and reads).
#[derive(Default)]
pub struct Tracer {
    on: AtomicBool,
    inner: Mutex<Inner>,
}

impl Tracer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a trace (replacing one in progress); gives it with its bounds filled in.
    pub fn start(
        &self,
        device: Option<String>,
        chain: Option<String>,
        limit: Option<u32>,
        duration_ms: Option<i64>,
        now: i64,
    ) -> Request {
        let limit = limit.unwrap_or(LIMIT.0).clamp(1, LIMIT.1);
        let ms = duration_ms
            .unwrap_or(DURATION_MS.0)
            .clamp(1_000, DURATION_MS.1);
        let r = Request {
            device,
            chain,
            limit,
            duration: format!("{}s", ms / 1000),
            until: now + ms,
            sampled: 0,
        };
        self.lock().active = Some(r.clone());
        self.on.store(true, Relaxed);
        r
    }

    /// Stops the trace in progress, if any.
    pub fn stop(&self) {
        self.lock().active = None;
        self.on.store(false, Relaxed);
    }

    /// Whether this message of `device` is sampled (and counts it); `Some(chain filter)` if so.
    /// The cost when no trace runs: one relaxed load.
    pub fn sample(&self, device: &str, now: i64) -> Option<Option<String>> {
        if !self.on.load(Relaxed) {
            return None;
        }
        let mut inner = self.lock();
        let r = inner.active.as_mut()?;
        if now >= r.until || r.sampled >= r.limit {
            inner.active = None;
            self.on.store(false, Relaxed);
            return None;
        }
        if r.device.as_deref().is_some_and(|d| d != device) {
            return None;
        }
        r.sampled += 1;
        let chain = r.chain.clone();
        if r.sampled >= r.limit {
            inner.active = None;
            self.on.store(false, Relaxed);
        }
        Some(chain)
    }

    /// Takes the node events of one sampled message out of `effects` (they are the trace's,
    /// not the sinks'), and keeps them as entries, one per chain; gives the new entries.
    pub fn record(
        &self,
        effects: &mut Vec<Effect>,
        from: usize,
        device: &str,
        chain: Option<&str>,
        now: i64,
    ) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut kept = Vec::with_capacity(effects.len());
        for e in effects.drain(from..) {
            let Event::Node { result, msg, .. } = &e.event else {
                kept.push(e);
                continue;
            };
            if chain.is_some_and(|c| c != e.chain.as_ref()) {
                continue;
            }
            let step = Step {
                node: e.node.to_string(),
                outcome: *result,
                msg: msg_json(msg.as_ref()),
            };
            match entries.last_mut() {
                Some(last) if last.chain == e.chain.as_ref() => last.steps.push(step),
                _ => entries.push(Entry {
                    seq: 0,
                    ts: now,
                    device: device.to_string(),
                    chain: e.chain.to_string(),
                    steps: vec![step],
                }),
            }
        }
        effects.extend(kept);
        let mut inner = self.lock();
        for e in &mut entries {
            inner.seq += 1;
            e.seq = inner.seq;
            if inner.ring.len() >= RING {
                inner.ring.pop_front();
            }
            inner.ring.push_back(e.clone());
        }
        entries
    }

    /// The trace in progress (if any) and the entries kept, oldest first.
    pub fn read(&self, now: i64) -> (Option<Request>, Vec<Entry>) {
        let inner = self.lock();
        let active = inner.active.clone().filter(|r| now < r.until);
        (active, inner.ring.iter().cloned().collect())
    }
}

/// A step's message as JSON, cut at [`MAX_MSG_TEXT`] (then a string that says so).
fn msg_json(msg: Option<&rhai::Dynamic>) -> Value {
    let v = msg
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or(Value::Null);
    let text = v.to_string();
    if text.len() > MAX_MSG_TEXT {
        let mut cut = MAX_MSG_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        Value::String(format!("{}… ({} bytes, cut)", &text[..cut], text.len()))
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn node(chain: &str, node: &str, result: crate::engine::effect::Outcome) -> Effect {
        Effect {
            event: Event::Node {
                device: "d".into(),
                result,
                msg: Some(rhai::Dynamic::from(7_i64)),
            },
            ts: 0,
            chain: Arc::from(chain),
            node: Arc::from(node),
        }
    }

    #[test]
    fn a_trace_samples_its_device_within_its_bounds() {
        let t = Tracer::default();
        assert_eq!(t.sample("d", 0), None, "off by default");
        let r = t.start(Some("d".into()), None, Some(2), Some(10), 0);
        assert_eq!((r.limit, r.until), (2, 1_000), "at least 1 s");
        assert_eq!(t.sample("other", 1), None);
        assert_eq!(t.sample("d", 1), Some(None));
        assert_eq!(t.sample("d", 2), Some(None));
        assert_eq!(t.sample("d", 3), None, "limit reached: off");
        t.start(None, Some("c".into()), Some(1_000_000), None, 0);
        assert_eq!(t.read(0).0.unwrap().limit, LIMIT.1, "capped");
        assert_eq!(t.sample("x", DURATION_MS.0), None, "past its time");
    }

    #[test]
    fn node_events_become_entries_per_chain_and_leave_the_effects() {
        let t = Tracer::default();
        let other = Effect {
            event: Event::Error {
                device: "d".into(),
                error: "e".into(),
            },
            ts: 0,
            chain: Arc::from("a"),
            node: Arc::from("n"),
        };
        let mut effects = vec![
            node("a", "f", crate::engine::effect::Outcome::Pass),
            other,
            node("a", "g", crate::engine::effect::Outcome::Stop),
            node("b", "h", crate::engine::effect::Outcome::Pass),
        ];
        let entries = t.record(&mut effects, 0, "d", None, 5);
        assert_eq!(effects.len(), 1, "only the error is left for the sinks");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].steps.len(), 2);
        assert_eq!(
            entries[0].steps[1].outcome,
            crate::engine::effect::Outcome::Stop
        );
        assert_eq!(entries[1].chain, "b");
        assert_eq!(entries[0].steps[0].msg, serde_json::json!(7));
        let mut effects = vec![
            node("a", "f", crate::engine::effect::Outcome::Pass),
            node("b", "h", crate::engine::effect::Outcome::Pass),
        ];
        let only_b = t.record(&mut effects, 0, "d", Some("b"), 6);
        assert_eq!((only_b.len(), only_b[0].seq), (1, 3));
        for _ in 0..RING + 5 {
            t.record(
                &mut vec![node("a", "f", crate::engine::effect::Outcome::Pass)],
                0,
                "d",
                None,
                7,
            );
        }
        assert_eq!(t.read(0).1.len(), RING, "the ring is bounded");
    }
}
