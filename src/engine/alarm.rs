//! The engine's alarms: one per (device, type) for the whole engine, with ThingsBoard's four
//! statuses (the types are `crate::alarm`'s).
//!
//! A raise creates the alarm (ACTIVE_UNACK) or updates the active one; a clear ends it. Only
//! transitions are reported, so a `notify` after an `alarm` node fires once per transition, not
//! once per reading.

use std::collections::HashMap;

use rhai::Map;

use crate::alarm::{AckError, Alarm, Severity, Status, Transition};

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
            return Err(AckError::AlreadyCleared(id.into(), a.status));
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
        severity: Severity,
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
            .raise("p", "Hot", Severity::Warning, "m".into(), Map::new(), 1)
            .map(|x| x.0);
        assert_eq!(t, Some(Transition::Created));
        assert!(s
            .raise("p", "Hot", Severity::Warning, "m".into(), Map::new(), 2)
            .is_none());
        let t = s
            .raise("p", "Hot", Severity::Critical, "m".into(), Map::new(), 3)
            .map(|x| x.0);
        assert_eq!(t, Some(Transition::SeverityChanged));
        assert_eq!(s.get("p", "Hot").unwrap().count, 3);
        assert_eq!(s.clear("p", "Hot", 4).unwrap().status, Status::ClearedUnack);
        assert!(
            s.clear("p", "Hot", 5).is_none(),
            "a cleared alarm clears once"
        );
        let t = s
            .raise("p", "Hot", Severity::Warning, "m".into(), Map::new(), 6)
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
        s.raise("p", "Hot", Severity::Major, "m".into(), Map::new(), 1);
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
