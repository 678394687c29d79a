//! The virtual-clock harness of `dry-run` and `test`: input lines become messages, the clock
//! jumps to each message's time (firing the timers due on the way), and after the last input the
//! clock drains the pending timers.

use std::collections::HashMap;
use std::sync::Arc;

use rhai::Map;

use crate::engine::clock::{Clock, VirtualClock};
use crate::engine::effect::EffectSink;
use crate::engine::program::RuleSet;
use crate::engine::{Device, Executor};
use crate::message::Message;
use crate::message::{payload_ts, PayloadLimits, RawPayload};
use crate::rules::model::InputLine;
use crate::topic::TopicPattern;

/// How far `--drain` goes by default: until no timer is pending, but at most this much virtual
/// time after the last input.
pub const DEFAULT_DRAIN_LIMIT_MS: i64 = 86_400_000;

/// Input lines in, effects out, on a virtual clock.
pub struct Replay {
    clock: VirtualClock,
    exec: Executor,
    patterns: Vec<TopicPattern>,
    last_ts: i64,
    limits: PayloadLimits,
    /// Input messages accepted.
    pub messages: u64,
}

impl Replay {
    /// A replay whose clock starts at the first message; `default_ts` is the time of a first
    /// line that names none.
    pub fn new(
        rules: Arc<RuleSet>,
        devices: HashMap<Arc<str>, Device>,
        patterns: Vec<TopicPattern>,
        default_ts: i64,
    ) -> Self {
        let clock = VirtualClock::default();
        Replay {
            exec: Executor::new(rules, devices, clock.now_ms()),
            clock,
            patterns,
            last_ts: default_ts,
            limits: PayloadLimits::default(),
            messages: 0,
        }
    }

    /// Sets the payload limits (the config's `ingest:`; default: `run`'s defaults).
    pub fn set_payload_limits(&mut self, limits: PayloadLimits) {
        self.limits = limits;
    }

    /// The executor (alarms, clock).
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    /// The executor, to restore a snapshot or reload rules.
    pub fn executor_mut(&mut self) -> &mut Executor {
        &mut self.exec
    }

    /// Turns an input line (a test case's, already parsed) into a message.
    pub fn message(&self, line: InputLine) -> Result<Message, String> {
        let payload = match pick_payload(line.device.is_some(), line.data, line.payload)? {
            Some(serde_json::Value::String(text)) => RawPayload::Text(text),
            Some(v) => rhai::serde::to_dynamic(&v)
                .ok()
                .and_then(|d| d.try_cast::<Map>())
                .map(RawPayload::Map)
                .ok_or_else(|| "the payload must be a JSON object, or text".to_string())?,
            None => RawPayload::Map(Map::new()),
        };
        let head = Head {
            device: line.device,
            topic: line.topic,
            kind: line.kind,
            ts: line.ts,
            at: line.at,
        };
        self.resolve(head, payload)
    }

    /// Turns a `dry-run` JSON line into a message; the payload is parsed straight into `msg`, in
    /// the same pass as the envelope.
    pub fn message_json(&self, text: &str) -> Result<Message, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            #[serde(default)]
            device: Option<String>,
            #[serde(default)]
            topic: Option<String>,
            #[serde(default)]
            kind: Option<crate::message::Kind>,
            #[serde(default)]
            ts: Option<i64>,
            #[serde(default)]
            data: Option<RawPayload>,
            #[serde(default)]
            payload: Option<RawPayload>,
        }
        let w: Wire = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let payload = pick_payload(w.device.is_some(), w.data, w.payload)?
            .unwrap_or(RawPayload::Map(Map::new()));
        self.resolve(
            Head {
                device: w.device,
                topic: w.topic,
                kind: w.kind,
                ts: w.ts,
                at: None,
            },
            payload,
        )
    }

    fn resolve(&self, head: Head, payload: RawPayload) -> Result<Message, String> {
        let (device, kind, topic, captures) = match (head.device, head.topic) {
            (Some(_), Some(_)) => return Err("give `device` or `topic`, not both".into()),
            (Some(device), None) => (device, head.kind.unwrap_or_default(), None, Vec::new()),
            (None, Some(topic)) => {
                let m = self
                    .patterns
                    .iter()
                    .find_map(|p| p.matches(&topic))
                    .ok_or_else(|| format!("topic `{topic}` matches no topic pattern"))?;
                (m.device, m.kind, Some(Arc::<str>::from(topic)), m.captures)
            }
            (None, None) => return Err("a line needs `device` or `topic`".into()),
        };
        if device.is_empty() {
            return Err("the device id is empty".into());
        }
        // Decoded as `run` decodes it: a text payload by the same rules, rejects by reason.
        let payload = payload.decode(kind, &self.limits).map_err(|r| {
            format!(
                "the payload is rejected ({}), as `run` would reject it",
                r.as_str()
            )
        })?;
        let at = match &head.at {
            Some(a) => Some(crate::duration::parse(a)?),
            None => None,
        };
        let ts = head
            .ts
            .or(at)
            .or_else(|| payload_ts(&payload))
            .unwrap_or(self.last_ts);
        Ok(Message {
            device: device.as_str().into(),
            kind,
            topic,
            ts,
            captures,
            payload,
        })
    }

    /// Feeds one message: timers due up to its time fire first.
    pub fn feed(&mut self, m: Message, out: &mut dyn EffectSink) {
        self.last_ts = m.ts;
        let now = self.clock.jump_to(m.ts);
        self.exec.advance_to(now, out);
        self.messages += 1;
        self.exec.process(m, out);
    }

    /// After the last input: run timers for `drain` ms, or (`None`) until none is pending, at
    /// most [`DEFAULT_DRAIN_LIMIT_MS`].
    pub fn drain(&mut self, drain: Option<i64>, out: &mut dyn EffectSink) {
        let now = self.clock.now_ms();
        match drain {
            Some(d) => {
                let end = self.clock.jump_to(now.saturating_add(d));
                self.exec.advance_to(end, out);
            }
            None => {
                let limit = now.saturating_add(DEFAULT_DRAIN_LIMIT_MS);
                while let Some(due) = self.exec.next_due() {
                    if due > limit {
                        break;
                    }
                    let t = self.clock.jump_to(due);
                    self.exec.advance_to(t, out);
                }
            }
        }
    }
}

/// The payload of an input line: `data` in the device form, `payload` in the topic form.
fn pick_payload<T>(direct: bool, data: Option<T>, payload: Option<T>) -> Result<Option<T>, String> {
    match (direct, data, payload) {
        (false, Some(_), _) => Err("the topic form takes `payload`, not `data`".into()),
        (true, _, Some(_)) => Err("the device form takes `data`, not `payload`".into()),
        (_, data, payload) => Ok(data.or(payload)),
    }
}

/// The envelope of an input line.
struct Head {
    device: Option<String>,
    topic: Option<String>,
    kind: Option<crate::message::Kind>,
    ts: Option<i64>,
    at: Option<String>,
}
