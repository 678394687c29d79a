//! Alarms as a domain of their own, below the engine and the sinks: an alarm (one per device
//! and type, ThingsBoard's four statuses), its severities, statuses and transitions, why an
//! operator's action did not happen, and the registry of open alarms the live engine's parts
//! share (`registry`). The engine's alarm store (`engine::alarm`) makes the transitions; the
//! sinks, the API and the channels read alarms from here without importing the engine.

pub mod history;
pub mod registry;
pub mod silence;

use rhai::{Dynamic, Map};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An operator's name as given (`by`): trimmed, control characters left out, at most 128
/// characters; none when empty.
pub fn operator_name(name: &str) -> Option<String> {
    let n: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect();
    (!n.is_empty()).then_some(n)
}

/// The default subject of an alarm's notification: `[WARNING] MotorOverload created on
/// pump-3`. The `notify` node's default and the edit a channel makes when it follows an alarm
/// share it (a channel compares what it shows to skip an edit that would change nothing).
pub fn default_subject(severity: &str, type_: &str, transition: &str, device: &str) -> String {
    format!("[{severity}] {type_} {transition} on {device}")
}

/// Alarm severities' names, most severe first.
pub const SEVERITIES: [&str; 5] = ["CRITICAL", "MAJOR", "MINOR", "WARNING", "INDETERMINATE"];

/// How severe an alarm is, ThingsBoard's five; ordered by rank, the most severe first
/// (`Critical < Major`), and written as their names (`CRITICAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// `CRITICAL`.
    Critical,
    /// `MAJOR`.
    Major,
    /// `MINOR`.
    Minor,
    /// `WARNING`.
    Warning,
    /// `INDETERMINATE`.
    Indeterminate,
}

impl Severity {
    /// Every severity, most severe first.
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::Major,
        Severity::Minor,
        Severity::Warning,
        Severity::Indeterminate,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        SEVERITIES[self.rank()]
    }

    /// 0 for the most severe.
    pub fn rank(self) -> usize {
        self as usize
    }

    /// The severity of this name, if it is one.
    pub fn parse(name: &str) -> Option<Severity> {
        SEVERITIES
            .iter()
            .position(|s| *s == name)
            .map(|i| Severity::ALL[i])
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Severity {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
        let s = String::deserialize(d)?;
        Severity::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown severity `{s}`")))
    }
}

impl schemars::JsonSchema for Severity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Severity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An alarm's severity, the most severe first.",
            "enum": SEVERITIES,
        })
    }
}

/// An alarm's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Active, not acknowledged.
    ActiveUnack,
    /// Active, acknowledged.
    ActiveAck,
    /// Cleared, not acknowledged.
    ClearedUnack,
    /// Cleared and acknowledged.
    ClearedAck,
}

impl Status {
    /// ThingsBoard's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::ActiveUnack => "ACTIVE_UNACK",
            Status::ActiveAck => "ACTIVE_ACK",
            Status::ClearedUnack => "CLEARED_UNACK",
            Status::ClearedAck => "CLEARED_ACK",
        }
    }

    /// Still active.
    pub fn is_active(self) -> bool {
        matches!(self, Status::ActiveUnack | Status::ActiveAck)
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// A new alarm.
    Created,
    /// The active alarm's severity changed (up or down).
    SeverityChanged,
    /// Acknowledged by an operator (live only).
    Acknowledged,
    /// Cleared: by a rule's `clear`, or by an operator by hand.
    Cleared,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Transition {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Created => "created",
            Transition::SeverityChanged => "severity_changed",
            Transition::Acknowledged => "acknowledged",
            Transition::Cleared => "cleared",
        }
    }
}

/// One alarm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alarm {
    /// Stable id: `{type}:{device}:{start_ts}`.
    pub id: String,
    /// The device.
    pub device: String,
    /// The type.
    #[serde(rename = "type", alias = "type_")]
    pub type_: String,
    /// The current severity.
    pub severity: Severity,
    /// The status.
    pub status: Status,
    /// The latest text.
    pub message: String,
    /// The latest details.
    #[serde(with = "details_serde")]
    pub details: Map,
    /// When it was created (ms).
    pub start_ts: i64,
    /// When it was last raised (ms).
    pub last_ts: i64,
    /// When it was cleared (ms).
    pub end_ts: Option<i64>,
    /// How many raises it has seen.
    pub count: u64,
    /// The chain and alarm node that last raised it: an acknowledgement continues there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<(String, String)>,
    /// Who acknowledged it (the name an operator gave, through the API or a WebSocket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<String>,
    /// Who cleared it by hand (absent when a rule cleared it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<String>,
}

impl Alarm {
    /// The alarm as a Rhai map, as `msg.alarm` holds it.
    pub fn to_map(&self, transition: Transition) -> Map {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("device".into(), self.device.clone().into());
        m.insert("type".into(), self.type_.clone().into());
        m.insert("severity".into(), self.severity.as_str().into());
        m.insert("status".into(), self.status.as_str().into());
        m.insert("transition".into(), transition.as_str().into());
        m.insert("message".into(), self.message.clone().into());
        m.insert("details".into(), Dynamic::from_map(self.details.clone()));
        m.insert("start_ts".into(), self.start_ts.into());
        m.insert("last_ts".into(), self.last_ts.into());
        m.insert(
            "end_ts".into(),
            self.end_ts.map_or(Dynamic::UNIT, Dynamic::from),
        );
        m.insert("count".into(), (self.count as i64).into());
        // Who acknowledged or cleared it by hand, when someone did (as in the API's answers).
        if let Some(by) = &self.acked_by {
            m.insert("acked_by".into(), by.clone().into());
        }
        if let Some(by) = &self.cleared_by {
            m.insert("cleared_by".into(), by.clone().into());
        }
        m
    }
}

/// An alarm as the HTTP API, WebSocket clients and webhooks see it, with the transition that
/// put it in its state: a type of its own, so that the persisted form ([`Alarm`], in the state
/// snapshots and versioned with them) can change without changing what clients read, and the
/// reverse. Where it was raised (`origin`) is the engine's, not theirs.
#[derive(Debug, Serialize)]
pub struct Wire<'a> {
    id: &'a str,
    device: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    severity: Severity,
    status: Status,
    message: &'a str,
    #[serde(serialize_with = "details_serde::serialize")]
    details: &'a Map,
    start_ts: i64,
    last_ts: i64,
    end_ts: Option<i64>,
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cleared_by: Option<&'a str>,
    /// `created`, `severity_changed`, `acknowledged`, `cleared`, or as the caller names the
    /// state (`restored`, `closed`).
    transition: &'a str,
}

impl<'a> Wire<'a> {
    /// `a` on the wire, after `transition`.
    pub fn new(a: &'a Alarm, transition: &'a str) -> Wire<'a> {
        Wire {
            id: &a.id,
            device: &a.device,
            type_: &a.type_,
            severity: a.severity,
            status: a.status,
            message: &a.message,
            details: &a.details,
            start_ts: a.start_ts,
            last_ts: a.last_ts,
            end_ts: a.end_ts,
            count: a.count,
            acked_by: a.acked_by.as_deref(),
            cleared_by: a.cleared_by.as_deref(),
            transition,
        }
    }
}

mod details_serde {
    use rhai::{Dynamic, Map};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(m: &Map, s: S) -> Result<S::Ok, S::Error> {
        Dynamic::from_map(m.clone()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        Ok(Dynamic::deserialize(d)?
            .try_cast::<Map>()
            .unwrap_or_default())
    }
}

/// Why an acknowledgement did not happen. Callers branch on the variant (the HTTP API answers
/// 404, 409 or 503), never on the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    /// No open alarm has this id (none, or it is cleared and acknowledged: done).
    NotFound(String),
    /// The alarm is acknowledged already (its status).
    AlreadyAcknowledged(String, Status),
    /// The alarm is cleared already (a clear by hand of an alarm that is not active).
    AlreadyCleared(String, Status),
    /// The engine is stopping (live only: the shard that owns the alarm is gone).
    ShuttingDown,
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckError::NotFound(id) => write!(f, "no open alarm `{id}`"),
            AckError::AlreadyAcknowledged(id, status) => {
                write!(f, "alarm `{id}` is already acknowledged ({status})")
            }
            AckError::AlreadyCleared(id, status) => {
                write!(f, "alarm `{id}` is already cleared ({status})")
            }
            AckError::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_by_rank_and_keep_their_names() {
        assert!(
            Severity::Critical < Severity::Major && Severity::Warning < Severity::Indeterminate
        );
        let mut v = vec![Severity::Minor, Severity::Critical, Severity::Warning];
        v.sort();
        assert_eq!(v, [Severity::Critical, Severity::Minor, Severity::Warning]);
        for (i, s) in Severity::ALL.iter().enumerate() {
            assert_eq!(s.rank(), i);
            assert_eq!(s.as_str(), SEVERITIES[i]);
            assert_eq!(Severity::parse(SEVERITIES[i]), Some(*s));
            // Written and read as the name, as before it was a type.
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", SEVERITIES[i])
            );
        }
        assert_eq!(Severity::parse("major"), None);
        assert!(serde_json::from_str::<Severity>("\"SEVERE\"").is_err());
    }
}
