//! Alarms: one per (device, type) for the whole engine, with ThingsBoard's four statuses.
//!
//! A raise creates the alarm (ACTIVE_UNACK) or updates the active one; a clear ends it. Only
//! transitions are reported, so a `notify` after an `alarm` node fires once per transition, not
//! once per reading.

use std::collections::HashMap;

use rhai::{Dynamic, Map};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Alarm severities, most severe first.
pub const SEVERITIES: [&str; 5] = ["CRITICAL", "MAJOR", "MINOR", "WARNING", "INDETERMINATE"];

/// How severe a severity is: 0 for the most severe, [`SEVERITIES`]`.len()` for an unknown one.
pub fn severity_rank(name: &str) -> usize {
    SEVERITIES
        .iter()
        .position(|s| *s == name)
        .unwrap_or(SEVERITIES.len())
}

/// The canonical `&'static str` of a severity name, if it is one.
pub fn severity(name: &str) -> Option<&'static str> {
    SEVERITIES.iter().copied().find(|s| *s == name)
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

fn ser_severity<S: Serializer>(s: &&'static str, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

fn de_severity<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let s = String::deserialize(d)?;
    severity(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown severity `{s}`")))
}

/// A severity name (one of [`SEVERITIES`]). An alias, so that serde does not take the field
/// for borrowed text.
pub type Severity = &'static str;

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
    #[serde(serialize_with = "ser_severity", deserialize_with = "de_severity")]
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
        m.insert("severity".into(), self.severity.into());
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
    AlreadyAcknowledged(String, &'static str),
    /// The alarm is cleared already (a clear by hand of an alarm that is not active).
    AlreadyCleared(String, &'static str),
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

/// Every alarm the engine knows, by (device, type).
#[derive(Debug, Default)]
pub struct AlarmStore {
    alarms: HashMap<(String, String), Alarm>,
    changes: u64,
}

impl AlarmStore {
    /// How many transitions the store has seen: the live engine writes its state through to
    /// disk when this moves, so an alarm never fires twice across a restart.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Replaces every alarm (a restore).
    pub fn restore(&mut self, alarms: Vec<Alarm>) {
        self.alarms = alarms
            .into_iter()
            .map(|a| ((a.device.clone(), a.type_.clone()), a))
            .collect();
    }

    /// Acknowledges the alarm with this id: ACTIVE_UNACK → ACTIVE_ACK, CLEARED_UNACK →
    /// CLEARED_ACK. Returns it when its status changed.
    pub fn acknowledge(&mut self, id: &str, by: Option<&str>) -> Option<&Alarm> {
        let a = self.alarms.values_mut().find(|a| a.id == id)?;
        a.status = match a.status {
            Status::ActiveUnack => Status::ActiveAck,
            Status::ClearedUnack => Status::ClearedAck,
            _ => return None,
        };
        a.acked_by = by.map(str::to_string);
        self.changes += 1;
        Some(a)
    }

    /// Clears the alarm with this id by hand (an operator): as a rule's clear, and remembers
    /// who.
    pub fn clear_by_id(
        &mut self,
        id: &str,
        now: i64,
        by: Option<&str>,
    ) -> Result<&Alarm, AckError> {
        let a = self
            .alarms
            .values()
            .find(|a| a.id == id)
            .ok_or_else(|| AckError::NotFound(id.into()))?;
        if !a.status.is_active() {
            return Err(AckError::AlreadyCleared(id.into(), a.status.as_str()));
        }
        let key = (a.device.clone(), a.type_.clone());
        self.clear(&key.0, &key.1, now);
        let a = self
            .alarms
            .get_mut(&key)
            .ok_or_else(|| AckError::NotFound(id.into()))?;
        a.cleared_by = by.map(str::to_string);
        Ok(a)
    }

    /// Raises the alarm; returns the transition, if any.
    pub fn raise(
        &mut self,
        device: &str,
        type_: &str,
        severity: &'static str,
        message: String,
        details: Map,
        now: i64,
    ) -> Option<(Transition, &Alarm)> {
        let key = (device.to_string(), type_.to_string());
        let transition = match self.alarms.get_mut(&key) {
            Some(a) if a.status.is_active() => {
                a.count += 1;
                a.last_ts = now;
                a.message = message;
                a.details = details;
                if a.severity == severity {
                    None
                } else {
                    a.severity = severity;
                    Some(Transition::SeverityChanged)
                }
            }
            _ => {
                self.alarms.insert(
                    key.clone(),
                    Alarm {
                        id: format!("{type_}:{device}:{now}"),
                        device: device.to_string(),
                        type_: type_.to_string(),
                        severity,
                        status: Status::ActiveUnack,
                        message,
                        details,
                        start_ts: now,
                        last_ts: now,
                        end_ts: None,
                        count: 1,
                        origin: None,
                        acked_by: None,
                        cleared_by: None,
                    },
                );
                Some(Transition::Created)
            }
        };
        if transition.is_some() {
            self.changes += 1;
        }
        transition.map(|t| (t, &self.alarms[&key]))
    }

    /// Clears the active alarm; returns it if there was one.
    pub fn clear(&mut self, device: &str, type_: &str, now: i64) -> Option<&Alarm> {
        let a = self
            .alarms
            .get_mut(&(device.to_string(), type_.to_string()))?;
        if !a.status.is_active() {
            return None;
        }
        a.status = match a.status {
            Status::ActiveAck => Status::ClearedAck,
            _ => Status::ClearedUnack,
        };
        a.end_ts = Some(now);
        self.changes += 1;
        Some(a)
    }

    /// Records which chain and node raised the alarm.
    pub fn set_origin(&mut self, device: &str, type_: &str, chain: &str, node: &str) {
        if let Some(a) = self
            .alarms
            .get_mut(&(device.to_string(), type_.to_string()))
        {
            if a.origin
                .as_ref()
                .is_none_or(|(c, n)| c != chain || n != node)
            {
                a.origin = Some((chain.to_string(), node.to_string()));
            }
        }
    }

    /// The alarm with this id.
    pub fn by_id(&self, id: &str) -> Option<&Alarm> {
        self.alarms.values().find(|a| a.id == id)
    }

    /// The alarm of (device, type), active or not.
    pub fn get(&self, device: &str, type_: &str) -> Option<&Alarm> {
        self.alarms.get(&(device.to_string(), type_.to_string()))
    }

    /// Every alarm.
    pub fn iter(&self) -> impl Iterator<Item = &Alarm> {
        self.alarms.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_fires_once_and_clears_once() {
        let mut s = AlarmStore::default();
        let t = s
            .raise("p", "Hot", "WARNING", "m".into(), Map::new(), 1)
            .map(|x| x.0);
        assert_eq!(t, Some(Transition::Created));
        assert!(s
            .raise("p", "Hot", "WARNING", "m".into(), Map::new(), 2)
            .is_none());
        let t = s
            .raise("p", "Hot", "CRITICAL", "m".into(), Map::new(), 3)
            .map(|x| x.0);
        assert_eq!(t, Some(Transition::SeverityChanged));
        assert_eq!(s.get("p", "Hot").unwrap().count, 3);
        assert_eq!(s.clear("p", "Hot", 4).unwrap().status, Status::ClearedUnack);
        assert!(
            s.clear("p", "Hot", 5).is_none(),
            "a cleared alarm clears once"
        );
        let t = s
            .raise("p", "Hot", "WARNING", "m".into(), Map::new(), 6)
            .map(|x| x.0);
        assert_eq!(
            t,
            Some(Transition::Created),
            "a raise after a clear is a new alarm"
        );
        assert_eq!(s.get("p", "Hot").unwrap().id, "Hot:p:6");
    }

    #[test]
    fn acknowledging_moves_to_the_ack_statuses_once() {
        let mut s = AlarmStore::default();
        s.raise("p", "Hot", "MAJOR", "m".into(), Map::new(), 1);
        let before = s.changes();
        let a = s.acknowledge("Hot:p:1", None).map(|a| a.status);
        assert_eq!(a, Some(Status::ActiveAck));
        assert!(
            s.acknowledge("Hot:p:1", None).is_none(),
            "acknowledged once"
        );
        assert!(s.acknowledge("nope", None).is_none());
        assert_eq!(s.changes(), before + 1);
        assert_eq!(s.clear("p", "Hot", 2).unwrap().status, Status::ClearedAck);
    }
}
