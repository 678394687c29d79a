//! The open alarms of the whole process, for readers outside the shards: the WebSocket hub's
//! snapshots, the HTTP API, the notification channels' reminders. Each shard's executor owns its
//! alarms; the registry is their shared, read-mostly view, written by the harness as alarm
//! transitions leave a shard (and at start, from the restored state), and the one door through
//! which acknowledgements enter: [`AlarmRegistry::ack`] finds the alarm's device and hands the
//! acknowledgement to the [`AckRoute`] the harness gave it (live: the device's shard).
//!
//! An alarm stays here until it is cleared and acknowledged, as ThingsBoard's alarm list shows
//! it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use serde_json::Value;

use std::sync::Arc;

use super::history::History;
use super::silence::{Held, Silences, Target};
use super::{AckError, Alarm, Severity, Status, Transition};

/// An alarm as matchers see it.
fn target<'a>(a: &'a Alarm, chain: &'a str, s: &'a Silences) -> Target<'a> {
    Target {
        device: &a.device,
        device_type: s.device_type(&a.device),
        type_: &a.type_,
        chain,
        severity: a.severity,
    }
}

/// An alarm in the registry.
#[derive(Debug, Clone)]
pub struct OpenAlarm {
    /// The alarm as its shard last reported it.
    pub alarm: Alarm,
    /// The transition that put it in this state; `None` when it was restored at start.
    pub last: Option<Transition>,
}

impl OpenAlarm {
    /// As clients, the API and webhooks see it (`transition` is `restored` for an alarm read
    /// back at start).
    pub fn to_json(&self) -> Value {
        alarm_json(
            &self.alarm,
            self.last.map_or("restored", Transition::as_str),
        )
    }
}

/// An alarm as clients and webhooks see it: its fields, without where it was raised, and the
/// transition.
pub fn alarm_json(a: &Alarm, transition: &str) -> Value {
    serde_json::to_value(super::Wire::new(a, transition)).unwrap_or_default()
}

/// The result of an acknowledgement, when it is done.
pub type AckFuture = Pin<Box<dyn Future<Output = Result<Status, AckError>> + Send>>;

/// What an operator does to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmAction {
    /// Acknowledges it.
    Ack,
    /// Clears it by hand.
    Clear,
}

/// An operator's action on one alarm, on its way to the shard that owns the alarm's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmOp {
    /// The alarm id.
    pub id: String,
    /// Its device (the shard is chosen by it).
    pub device: String,
    /// What to do.
    pub action: AlarmAction,
    /// Who does it (a name from the request), if given.
    pub by: Option<String>,
    /// Handed over by another instance of a cluster (which took it for this one's): answered
    /// here or refused, never handed on again.
    pub forwarded: bool,
}

/// Where operators' actions go (live: the device's shard).
pub type AckRoute = Box<dyn Fn(AlarmOp) -> AckFuture + Send + Sync>;

/// Tells whether a device is this process's.
pub type Local = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Closed alarms the registry keeps for the API (in memory only).
pub const CLOSED_KEPT: usize = 200;

/// The process's open alarms, by id.
pub struct AlarmRegistry {
    open: Mutex<BTreeMap<String, OpenAlarm>>,
    /// The alarms closed (cleared and acknowledged) since the start, newest last, at most
    /// [`CLOSED_KEPT`]: who acknowledged and cleared them stays visible for a while.
    closed: Mutex<std::collections::VecDeque<Alarm>>,
    route: AckRoute,
    /// Whether a device's state is this process's (in a cluster: its partition is owned here);
    /// None: every device is.
    local: std::sync::OnceLock<Local>,
    /// The silences and inhibition rules (none: nothing is held).
    silences: std::sync::OnceLock<Arc<Silences>>,
    /// Every alarm's history.
    history: std::sync::OnceLock<Arc<History>>,
}

impl std::fmt::Debug for AlarmRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlarmRegistry")
            .field("open", &self.len())
            .finish()
    }
}

impl AlarmRegistry {
    /// A registry whose acknowledgements go to `route`.
    pub fn new(route: AckRoute) -> Self {
        AlarmRegistry {
            open: Mutex::default(),
            closed: Mutex::default(),
            route,
            local: std::sync::OnceLock::new(),
            silences: std::sync::OnceLock::new(),
            history: std::sync::OnceLock::new(),
        }
    }

    /// A registry that refuses acknowledgements (nothing behind it can take them).
    pub fn without_acks() -> Self {
        AlarmRegistry::new(Box::new(|_| {
            Box::pin(async { Err(AckError::ShuttingDown) })
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, OpenAlarm>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An alarm transition, as it leaves its shard.
    pub fn record(&self, a: &Alarm, transition: Transition) {
        self.put(a, Some(transition));
    }

    /// An alarm restored at start.
    pub fn restore(&self, a: &Alarm) {
        self.put(a, None);
    }

    fn put(&self, a: &Alarm, last: Option<Transition>) {
        if let (Some(h), Some(t)) = (self.history.get(), last) {
            h.transition(a, t);
        }
        if last == Some(Transition::Cleared) {
            if let Some(s) = self.silences.get() {
                let chain = a.origin.as_ref().map_or("", |o| o.0.as_str());
                s.cleared(&target(a, chain, s), &a.id, a.end_ts.unwrap_or(a.last_ts));
            }
        }
        let mut open = self.lock();
        if a.status == Status::ClearedAck {
            open.remove(&a.id);
            drop(open);
            let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            if closed.len() >= CLOSED_KEPT {
                closed.pop_front();
            }
            closed.push_back(a.clone());
        } else {
            open.insert(
                a.id.clone(),
                OpenAlarm {
                    alarm: a.clone(),
                    last,
                },
            );
        }
    }

    /// Gives the alarms' history (once).
    pub fn set_history(&self, h: Arc<History>) {
        let _ = self.history.set(h);
    }

    /// The alarms' history, if one is kept.
    pub fn history(&self) -> Option<&Arc<History>> {
        self.history.get()
    }

    /// An alarm, open or closed since the start.
    pub fn find(&self, id: &str) -> Option<Alarm> {
        if let Some(o) = self.lock().get(id) {
            return Some(o.alarm.clone());
        }
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        closed.iter().rev().find(|a| a.id == id).cloned()
    }

    /// Gives the silences and inhibition rules (once).
    pub fn set_silences(&self, s: Arc<Silences>) {
        let _ = self.silences.set(s);
    }

    /// The silences and inhibition rules, if any were given.
    pub fn silences(&self) -> Option<&Arc<Silences>> {
        self.silences.get()
    }

    /// Why a notification about alarm `id` (as `alarm`, the alarm on the wire, from `chain`)
    /// is held now, if it is: a silence that matches it, or another open, active alarm that
    /// inhibits it.
    pub fn held(&self, alarm: &Value, chain: &str, now: i64) -> Option<Held> {
        let s = self.silences.get()?;
        let id = alarm.get("id")?.as_str()?;
        let device = alarm.get("device")?.as_str()?;
        let type_ = alarm.get("type")?.as_str()?;
        let severity = Severity::parse(alarm.get("severity")?.as_str()?)?;
        let t = Target {
            device,
            device_type: s.device_type(device),
            type_,
            chain,
            severity,
        };
        s.held(id, &t, now, |f| {
            for o in self.lock().values() {
                let chain = o.alarm.origin.as_ref().map_or("", |c| c.0.as_str());
                f(&o.alarm.id, &target(&o.alarm, chain, s), o.alarm.status);
            }
        })
    }

    /// Why an open alarm's notifications are held now, if they are (the API marks it).
    pub fn held_open(&self, a: &Alarm, now: i64) -> Option<Held> {
        let chain = a.origin.as_ref().map_or("", |c| c.0.as_str()).to_string();
        self.held(&alarm_json(a, ""), &chain, now)
    }

    /// Tells which devices are this process's (once; a cluster member's are those of the
    /// partitions it owns): reminders of an alarm are sent by the process that owns its
    /// device, not by every one that knows it.
    pub fn set_local(&self, local: Local) {
        let _ = self.local.set(local);
    }

    /// Whether `device` is this process's (see [`AlarmRegistry::set_local`]).
    pub fn is_local(&self, device: &str) -> bool {
        self.local.get().is_none_or(|f| f(device))
    }

    /// Forgets the open alarms of the devices `gone` names (in a cluster: a partition that moved
    /// to another instance takes its alarms along).
    pub fn forget(&self, gone: impl Fn(&str) -> bool) {
        self.lock().retain(|_, o| !gone(&o.alarm.device));
    }

    /// An open alarm's status (`None` once it is cleared and acknowledged, or unknown).
    pub fn status_of(&self, id: &str) -> Option<Status> {
        self.lock().get(id).map(|o| o.alarm.status)
    }

    /// The open alarms, by id; only one device's with `device`.
    pub fn open(&self, device: Option<&str>) -> Vec<OpenAlarm> {
        self.lock()
            .values()
            .filter(|o| device.is_none_or(|d| o.alarm.device == d))
            .cloned()
            .collect()
    }

    /// The alarms closed since the start (at most [`CLOSED_KEPT`]), newest first; only one
    /// device's with `device`.
    pub fn closed(&self, device: Option<&str>) -> Vec<Alarm> {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        closed
            .iter()
            .rev()
            .filter(|a| device.is_none_or(|d| a.device == d))
            .cloned()
            .collect()
    }

    /// How many alarms are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no alarm is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Acknowledges an alarm through the route (live: the device's shard); gives its new
    /// status.
    pub async fn ack(&self, id: &str, by: Option<&str>) -> Result<Status, AckError> {
        self.act(id, AlarmAction::Ack, by, false).await
    }

    /// Clears an active alarm by hand through the route; gives its new status.
    pub async fn clear(&self, id: &str, by: Option<&str>) -> Result<Status, AckError> {
        self.act(id, AlarmAction::Clear, by, false).await
    }

    /// An operator's action through the route; `forwarded` when another instance of a cluster
    /// handed it over (see [`AlarmOp::forwarded`]).
    pub async fn act(
        &self,
        id: &str,
        action: AlarmAction,
        by: Option<&str>,
        forwarded: bool,
    ) -> Result<Status, AckError> {
        let device = self
            .lock()
            .get(id)
            .map(|o| o.alarm.device.clone())
            .ok_or_else(|| AckError::NotFound(id.into()))?;
        (self.route)(AlarmOp {
            id: id.to_string(),
            device,
            action,
            by: by.map(str::to_string),
            forwarded,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(id: &str, device: &str, status: Status) -> Alarm {
        Alarm {
            id: id.into(),
            device: device.into(),
            type_: "Overload".into(),
            severity: crate::alarm::Severity::Major,
            status,
            message: String::new(),
            details: rhai::Map::new(),
            start_ts: 1,
            last_ts: 1,
            end_ts: None,
            count: 1,
            origin: None,
            acked_by: None,
            cleared_by: None,
        }
    }

    #[test]
    fn the_wire_form_is_the_alarm_without_its_origin_with_its_transition() {
        let mut a = alarm("Overload:p1:1", "p1", Status::ActiveAck);
        a.origin = Some(("overload".into(), "raise".into()));
        a.acked_by = Some("ana".into());
        a.details.insert("current".into(), 13.5_f64.into());
        let v = alarm_json(&a, "acknowledged");
        // What clients read: every field of the alarm but where it was raised.
        let mut want = serde_json::to_value(&a).unwrap();
        let o = want.as_object_mut().unwrap();
        o.remove("origin");
        o.insert("transition".into(), "acknowledged".into());
        assert_eq!(v, want);
        assert_eq!(v["severity"], "MAJOR");
        assert_eq!(v["details"]["current"], 13.5);
        assert!(v.get("cleared_by").is_none() && v["end_ts"].is_null());
    }

    #[test]
    fn an_alarm_stays_until_cleared_and_acknowledged() {
        let r = AlarmRegistry::without_acks();
        r.restore(&alarm("a", "p1", Status::ActiveUnack));
        r.record(&alarm("b", "p2", Status::ActiveUnack), Transition::Created);
        assert_eq!(r.open(Some("p1")).len(), 1);
        assert_eq!(r.open(None)[0].to_json()["transition"], "restored");
        r.record(&alarm("b", "p2", Status::ClearedUnack), Transition::Cleared);
        assert_eq!(r.status_of("b"), Some(Status::ClearedUnack));
        r.record(
            &alarm("b", "p2", Status::ClearedAck),
            Transition::Acknowledged,
        );
        assert_eq!((r.status_of("b"), r.len()), (None, 1));
        assert_eq!(r.closed(Some("p2"))[0].id, "b", "kept as closed");
        for i in 0..CLOSED_KEPT + 3 {
            let id = format!("c{i}");
            r.record(
                &alarm(&id, "p3", Status::ClearedAck),
                Transition::Acknowledged,
            );
        }
        let closed = r.closed(None);
        assert_eq!(closed.len(), CLOSED_KEPT, "bounded");
        assert_eq!(
            closed[0].id,
            format!("c{}", CLOSED_KEPT + 2),
            "newest first"
        );
    }

    #[test]
    fn acknowledgements_go_to_the_route_with_the_device() {
        let r = AlarmRegistry::new(Box::new(|op| {
            Box::pin(async move {
                assert_eq!((op.id.as_str(), op.device.as_str()), ("a", "p1"));
                assert_eq!(op.by.as_deref(), Some("ana"));
                Ok(match op.action {
                    AlarmAction::Ack => Status::ActiveAck,
                    AlarmAction::Clear => Status::ClearedUnack,
                })
            })
        }));
        r.record(&alarm("a", "p1", Status::ActiveUnack), Transition::Created);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(r.ack("a", Some("ana"))), Ok(Status::ActiveAck));
        assert_eq!(
            rt.block_on(r.clear("a", Some("ana"))),
            Ok(Status::ClearedUnack)
        );
        assert!(matches!(
            rt.block_on(r.ack("zz", None)),
            Err(AckError::NotFound(_))
        ));
    }
}
