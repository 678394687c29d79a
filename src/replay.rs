//! The virtual-clock harness of `dry-run` and `test`: input lines become messages, the clock
//! jumps to each message's time (firing the timers due on the way), and after the last input the
//! clock drains the pending timers.

use std::collections::HashMap;
use std::sync::Arc;

use rhai::Map;

use crate::engine::clock::{Clock, VirtualClock};
use crate::engine::effect::EffectSink;
use crate::engine::{Device, Executor, Message};
use crate::rules::compile::RuleSet;
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
            messages: 0,
        }
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
            Some(v) => rhai::serde::to_dynamic(&v)
                .ok()
                .and_then(|d| d.try_cast::<Map>())
                .ok_or_else(|| "the payload must be a JSON object".to_string())?,
            None => Map::new(),
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
            kind: Option<crate::rules::model::Kind>,
            #[serde(default)]
            ts: Option<i64>,
            #[serde(default)]
            data: Option<crate::engine::JsonMap>,
            #[serde(default)]
            payload: Option<crate::engine::JsonMap>,
        }
        let w: Wire = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let payload =
            pick_payload(w.device.is_some(), w.data, w.payload)?.map_or_else(Map::new, |m| m.0);
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

    fn resolve(&self, head: Head, payload: Map) -> Result<Message, String> {
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
        let at = match &head.at {
            Some(a) => Some(crate::rules::duration::parse(a)?),
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
    kind: Option<crate::rules::model::Kind>,
    ts: Option<i64>,
    at: Option<String>,
}

/// The payload's own `ts`/`timestamp`: ms since the epoch, or an RFC 3339 time.
pub fn payload_ts(payload: &Map) -> Option<i64> {
    let v = payload.get("ts").or_else(|| payload.get("timestamp"))?;
    if let Ok(i) = v.as_int() {
        return Some(i);
    }
    if let Ok(f) = v.as_float() {
        return f.is_finite().then_some(f as i64);
    }
    v.read_lock::<rhai::ImmutableString>()
        .and_then(|s| parse_rfc3339(&s))
}

/// Parses `2024-12-05T10:30:00Z` / `2024-12-05T10:30:00.250+01:00` into ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        let f = &frac[..digits];
        ms = format!("{:0<3}", &f[..f.len().min(3)])
            .parse::<i64>()
            .ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (r.get(1..3)?.parse::<i64>().ok()? * 60 + r.get(4..6)?.parse::<i64>().ok()?)
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) - offset_min * 60) * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-12-05T10:30:00Z"),
            Some(1_733_394_600_000)
        );
        assert_eq!(
            parse_rfc3339("2024-12-05T11:30:00.25+01:00"),
            Some(1_733_394_600_250)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
