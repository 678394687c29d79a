//! Silences and maintenance windows, and inhibition: why an alarm's notification is held.
//!
//! A [`Silence`] matches alarms by device, device type, alarm type, chain or severity (each an
//! exact name or a glob: `pump-*`), for a window (`starts_at` to `ends_at`), once or again
//! every period (`every: 7d`, a weekly slot, until `until`), optionally ending when an alarm
//! it matches clears. An alarm it matches is still raised, stored and shown; only its
//! notifications and reminders are held (counted, not sent).
//!
//! An [`Inhibition`] rule (`inhibit:` in the config) holds the notifications of alarms while
//! another open alarm, its source, is active on the same device (or the same device type, or
//! the same value of a devices-file attribute such as `site`).
//!
//! [`Silences`] keeps them, bounded, and writes them to a file (`silences.json` in the state
//! dir) after each change, so they hold over a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Severity, Status};

/// Silences kept at most (expired ones go first).
pub const MAX_SILENCES: usize = 1000;
/// Expired silences listed for this long after they end (ms).
const EXPIRED_KEPT_MS: i64 = 24 * 3_600_000;

/// What a matcher may name.
pub const FIELDS: [&str; 5] = ["device", "device_type", "type", "chain", "severity"];

/// The alarm a notification is about, as matchers see it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The device.
    pub device: &'a str,
    /// Its type in the devices file, if any.
    pub device_type: Option<&'a str>,
    /// The alarm type.
    pub type_: &'a str,
    /// The chain that notified.
    pub chain: &'a str,
    /// The severity.
    pub severity: Severity,
}

impl Target<'_> {
    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "device" => Some(self.device),
            "device_type" => self.device_type,
            "type" => Some(self.type_),
            "chain" => Some(self.chain),
            "severity" => Some(self.severity.as_str()),
            _ => None,
        }
    }
}

/// Field → pattern: every one must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matchers(pub BTreeMap<String, String>);

impl Matchers {
    /// Checks the fields and patterns: what is wrong, for the caller to show.
    pub fn check(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err(format!(
                "`matchers` names no field: give at least one of {}",
                FIELDS.join(", ")
            ));
        }
        for (k, v) in &self.0 {
            if !FIELDS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown matcher `{k}`: a matcher is one of {}",
                    FIELDS.join(", ")
                ));
            }
            if v.trim().is_empty() {
                return Err(format!(
                    "matcher `{k}` is empty: give a name or a glob such as `pump-*`"
                ));
            }
            if v.len() > 256 {
                return Err(format!("matcher `{k}` is longer than 256 characters"));
            }
        }
        Ok(())
    }

    /// Whether every matcher matches the target (a glob: `*` any run, `?` one character).
    pub fn matches(&self, t: &Target) -> bool {
        self.0.iter().all(|(k, pattern)| {
            t.field(k)
                .is_some_and(|v| wildmatch::WildMatch::new(pattern).matches(v))
        })
    }
}

/// A silence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Silence {
    /// Its id.
    pub id: String,
    /// What it matches.
    pub matchers: Matchers,
    /// When its (first) window starts (ms).
    pub starts_at: i64,
    /// When its (first) window ends (ms).
    pub ends_at: i64,
    /// The window comes again every this many ms (a recurring maintenance slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<i64>,
    /// A recurring silence's last window starts before this (ms); none: it recurs until
    /// expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Expires once an alarm it matches clears.
    #[serde(default)]
    pub expire_on_clear: bool,
    /// Why.
    #[serde(default)]
    pub comment: String,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When it was made (ms).
    pub created_at: i64,
    /// When it was expired early (by hand, or by a clear), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<i64>,
    /// Who or what expired it early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
}

/// Where a silence is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not yet in a window (or between two of a recurring silence's).
    Pending,
    /// In a window: holding notifications.
    Active,
    /// Over.
    Expired,
}

impl Silence {
    /// Its state at `now`.
    pub fn state(&self, now: i64) -> State {
        if self.expired_at.is_some_and(|e| e <= now) {
            return State::Expired;
        }
        match self.every {
            None if now >= self.ends_at => State::Expired,
            None if now >= self.starts_at => State::Active,
            None => State::Pending,
            Some(every) => {
                if self.until.is_some_and(|u| now >= u) {
                    return State::Expired;
                }
                if now < self.starts_at {
                    return State::Pending;
                }
                let into = (now - self.starts_at) % every.max(1);
                if into < self.ends_at - self.starts_at {
                    State::Active
                } else {
                    State::Pending
                }
            }
        }
    }

    /// When it stops holding for good (ms), if that is known.
    pub fn over_at(&self) -> Option<i64> {
        let natural = match self.every {
            None => Some(self.ends_at),
            Some(_) => self.until,
        };
        match (natural, self.expired_at) {
            (Some(n), Some(e)) => Some(n.min(e)),
            (n, e) => n.or(e),
        }
    }

    /// As the API shows it: its fields and its state.
    pub fn to_json(&self, now: i64) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["state"] = serde_json::to_value(self.state(now)).unwrap_or_default();
        v["starts_at_text"] = crate::message::format_rfc3339(self.starts_at).into();
        v["ends_at_text"] = crate::message::format_rfc3339(self.ends_at).into();
        v
    }
}

/// A request for a silence, as `POST /api/silences` and `rulechain silence add` send it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// What it matches: `{device: "pump-*", type: "MotorOverload"}`.
    pub matchers: BTreeMap<String, String>,
    /// When it starts: RFC 3339 or ms since the epoch (default now).
    #[serde(default)]
    pub starts_at: Option<Value>,
    /// When it ends: RFC 3339 or ms since the epoch; or `duration`.
    #[serde(default)]
    pub ends_at: Option<Value>,
    /// How long it lasts from its start (`2h`); or `ends_at`.
    #[serde(default)]
    pub duration: Option<String>,
    /// The window comes again every period (`7d` for a weekly slot).
    #[serde(default)]
    pub every: Option<String>,
    /// A recurring silence ends at this time (RFC 3339 or ms).
    #[serde(default)]
    pub until: Option<Value>,
    /// Ends once an alarm it matches clears.
    #[serde(default)]
    pub expire_on_clear: bool,
    /// Why.
    #[serde(default)]
    pub comment: Option<String>,
    /// Who.
    #[serde(default)]
    pub by: Option<String>,
}

/// A time as given: RFC 3339 text or ms since the epoch.
fn time(what: &str, v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("`{what}` is not a whole number of ms")),
        Value::String(s) => crate::message::parse_rfc3339(s).ok_or_else(|| {
            format!("`{what}` `{s}` is not a time: give RFC 3339 (`2026-12-06T18:00:00Z`) or ms since the epoch")
        }),
        _ => Err(format!("`{what}` is a time: RFC 3339 text or ms since the epoch")),
    }
}

impl NewSilence {
    /// The silence it asks for, made at `now` with this id; or what is wrong with it.
    pub fn build(self, id: String, now: i64) -> Result<Silence, String> {
        let matchers = Matchers(self.matchers);
        matchers.check()?;
        let starts_at = match &self.starts_at {
            Some(v) => time("starts_at", v)?,
            None => now,
        };
        let ends_at = match (&self.ends_at, &self.duration) {
            (Some(_), Some(_)) => return Err("give `duration` or `ends_at`, not both".into()),
            (Some(v), None) => time("ends_at", v)?,
            (None, Some(d)) => {
                let ms = crate::duration::parse(d).map_err(|e| format!("`duration`: {e}"))?;
                starts_at.saturating_add(ms)
            }
            (None, None) => {
                return Err("a silence needs an end: `duration` (`2h`) or `ends_at`".into())
            }
        };
        if ends_at <= starts_at {
            return Err(
                "the silence ends before it starts: `ends_at` must be after `starts_at`".into(),
            );
        }
        let every = match &self.every {
            None => None,
            Some(e) => {
                let ms = crate::duration::parse(e).map_err(|e| format!("`every`: {e}"))?;
                if ms < ends_at - starts_at {
                    return Err(format!(
                        "`every` ({e}) is shorter than the window itself: the windows would overlap"
                    ));
                }
                Some(ms)
            }
        };
        let until = match &self.until {
            None => None,
            Some(_) if every.is_none() => {
                return Err(
                    "`until` ends a recurring silence: give `every` too, or use `ends_at`".into(),
                )
            }
            Some(v) => Some(time("until", v)?),
        };
        if every.is_none() && ends_at <= now {
            return Err("the silence would be over already: its end is in the past".into());
        }
        let clean = |s: Option<String>, max: usize| {
            s.map(|s| {
                s.chars()
                    .filter(|c| !c.is_control() || *c == '\n')
                    .take(max)
                    .collect::<String>()
            })
            .filter(|s| !s.trim().is_empty())
        };
        Ok(Silence {
            id,
            matchers,
            starts_at,
            ends_at,
            every,
            until,
            expire_on_clear: self.expire_on_clear,
            comment: clean(self.comment, 1000).unwrap_or_default(),
            by: self.by.as_deref().and_then(super::operator_name),
            created_at: now,
            expired_at: None,
            expired_by: None,
        })
    }
}

/// An inhibition rule: while an open, active alarm matching `source` exists, notifications of
/// alarms matching `target` that agree with it on every `equal` field are held.
#[derive(Debug, Clone)]
pub struct Inhibition {
    /// The inhibiting alarm.
    pub source: Matchers,
    /// The inhibited alarms.
    pub target: Matchers,
    /// What they must share: `device`, `device_type`, or `attr.NAME` (a devices-file
    /// attribute, such as `attr.site`).
    pub equal: Vec<String>,
}

/// Why a notification is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// By a silence (its id).
    Silenced(String),
    /// By another open alarm (its id).
    Inhibited(String),
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Silenced(id) => write!(f, "silence {id}"),
            Held::Inhibited(id) => write!(f, "the open alarm {id} (inhibition)"),
        }
    }
}

/// What a device is, from the devices file: its type and attributes (fixed while running).
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    /// Device → type.
    pub types: HashMap<String, String>,
    /// Device → attribute → value (as text).
    pub attrs: HashMap<String, HashMap<String, String>>,
}

/// The silences and inhibition rules in force.
pub struct Silences {
    list: Mutex<Vec<Silence>>,
    /// One write of the file at a time (an API request and an alarm's clear may race).
    writing: Mutex<()>,
    file: Option<PathBuf>,
    inhibit: Vec<Inhibition>,
    facts: DeviceFacts,
}

impl std::fmt::Debug for Silences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Silences")
            .field("count", &self.lock().len())
            .finish()
    }
}

impl Default for Silences {
    fn default() -> Self {
        Silences::new(None, Vec::new(), DeviceFacts::default())
    }
}

impl Silences {
    /// Silences kept in `file` (read back now when it exists), with these inhibition rules and
    /// what the devices file says of the devices.
    pub fn new(file: Option<PathBuf>, inhibit: Vec<Inhibition>, facts: DeviceFacts) -> Silences {
        Silences {
            list: Mutex::default(),
            writing: Mutex::default(),
            file,
            inhibit,
            facts,
        }
    }

    /// Reads the file back (at start). A file that cannot be read is an error naming it.
    pub fn load(&self) -> Result<usize, String> {
        let Some(f) = &self.file else { return Ok(0) };
        let Some(list) = crate::durable::read_json::<Vec<Silence>>(f, "its silences")? else {
            return Ok(0);
        };
        let n = list.len();
        *self.lock() = list;
        Ok(n)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Silence>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every silence, newest first (expired ones for a day after they end).
    pub fn list(&self, now: i64) -> Vec<Silence> {
        let mut l: Vec<Silence> = self
            .lock()
            .iter()
            .filter(|s| s.over_at().is_none_or(|o| now - o < EXPIRED_KEPT_MS))
            .cloned()
            .collect();
        l.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        l
    }

    /// One silence.
    pub fn get(&self, id: &str) -> Option<Silence> {
        self.lock().iter().find(|s| s.id == id).cloned()
    }

    /// Adds a silence (past [`MAX_SILENCES`], the longest-expired goes; when none has expired,
    /// it is refused).
    pub fn add(&self, s: Silence, now: i64) -> Result<Silence, String> {
        {
            let mut l = self.lock();
            if l.len() >= MAX_SILENCES {
                l.sort_by_key(|s| {
                    (
                        s.state(now) != State::Expired,
                        s.over_at().unwrap_or(i64::MAX),
                    )
                });
                if l.first().is_some_and(|s| s.state(now) == State::Expired) {
                    l.remove(0);
                } else {
                    return Err(format!(
                        "{MAX_SILENCES} silences are in force already: expire some first"
                    ));
                }
            }
            l.push(s.clone());
        }
        if let Err(e) = self.changed() {
            // Not in force unless it is kept.
            self.lock().retain(|o| o.id != s.id);
            return Err(e);
        }
        Ok(s)
    }

    /// Adds a silence made elsewhere (another instance of a cluster), or replaces the one with
    /// its id.
    pub fn upsert(&self, s: Silence, now: i64) -> Result<Silence, String> {
        {
            let mut l = self.lock();
            if let Some(old) = l.iter_mut().find(|o| o.id == s.id) {
                *old = s.clone();
                drop(l);
                self.changed()?;
                return Ok(s);
            }
        }
        self.add(s, now)
    }

    /// Expires a silence now (`by`: who); gives it back, or None when there is no such id.
    pub fn expire(&self, id: &str, by: Option<&str>, now: i64) -> Result<Option<Silence>, String> {
        let out = {
            let mut l = self.lock();
            let Some(s) = l.iter_mut().find(|s| s.id == id) else {
                return Ok(None);
            };
            if s.state(now) != State::Expired {
                s.expired_at = Some(now);
                s.expired_by = by.map(str::to_string);
            }
            s.clone()
        };
        self.changed()?;
        Ok(Some(out))
    }

    fn changed(&self) -> Result<(), String> {
        self.write()
    }

    /// Writes the list to its file: a new file renamed over the old, flushed first, so a crash
    /// leaves the old list or the new one.
    fn write(&self) -> Result<(), String> {
        let Some(f) = &self.file else { return Ok(()) };
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let body = serde_json::to_vec_pretty(&*self.lock()).unwrap_or_default();
        crate::durable::replace(f, &body)
            .map_err(|e| format!("cannot save the silences to {}: {e}", f.display()))
    }

    /// The device's type from the devices file.
    pub fn device_type(&self, device: &str) -> Option<&str> {
        self.facts.types.get(device).map(String::as_str)
    }

    /// The silence holding an alarm's notification now, if one does.
    pub fn silencing(&self, t: &Target, now: i64) -> Option<String> {
        self.lock()
            .iter()
            .find(|s| s.state(now) == State::Active && s.matchers.matches(t))
            .map(|s| s.id.clone())
    }

    /// Why a notification about `t` (alarm `id`) is held, if it is: a silence, or an open
    /// alarm that inhibits it (`open`: the open alarms, as targets with their ids and
    /// statuses).
    pub fn held(
        &self,
        id: &str,
        t: &Target,
        now: i64,
        open: impl Fn(&mut dyn FnMut(&str, &Target<'_>, Status)),
    ) -> Option<Held> {
        if let Some(s) = self.silencing(t, now) {
            return Some(Held::Silenced(s));
        }
        let rules: Vec<&Inhibition> = self
            .inhibit
            .iter()
            .filter(|r| r.target.matches(t))
            .collect();
        if rules.is_empty() {
            return None;
        }
        let mut found = None;
        open(&mut |other_id, other, status| {
            if found.is_some() || other_id == id || !status.is_active() {
                return;
            }
            if rules
                .iter()
                .any(|r| r.source.matches(other) && r.equal.iter().all(|f| self.same(f, t, other)))
            {
                found = Some(other_id.to_string());
            }
        });
        found.map(Held::Inhibited)
    }

    fn same(&self, field: &str, a: &Target, b: &Target) -> bool {
        match field {
            "device" => a.device == b.device,
            "device_type" => a.device_type.is_some() && a.device_type == b.device_type,
            f => match f.strip_prefix("attr.") {
                Some(name) => {
                    let get = |d: &str| self.facts.attrs.get(d).and_then(|m| m.get(name));
                    get(a.device).is_some() && get(a.device) == get(b.device)
                }
                None => false,
            },
        }
    }

    /// An alarm cleared: silences that match it and expire on clear are over.
    pub fn cleared(&self, t: &Target, alarm_id: &str, now: i64) {
        let mut any = false;
        for s in self.lock().iter_mut() {
            if s.expire_on_clear && s.state(now) != State::Expired && s.matchers.matches(t) {
                s.expired_at = Some(now);
                s.expired_by = Some(format!("the clear of {alarm_id}"));
                any = true;
            }
        }
        if any {
            if let Err(e) = self.changed() {
                tracing::warn!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(device: &'a str, type_: &'a str) -> Target<'a> {
        Target {
            device,
            device_type: Some("pump"),
            type_,
            chain: "c",
            severity: Severity::Major,
        }
    }

    fn new(matchers: &[(&str, &str)], duration: &str) -> NewSilence {
        NewSilence {
            matchers: matchers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            duration: Some(duration.into()),
            ..Default::default()
        }
    }

    #[test]
    fn matchers_are_exact_or_glob_and_all_must_match() {
        let m = Matchers(
            [
                ("device".to_string(), "pump-*".to_string()),
                ("type".into(), "MotorOverload".into()),
            ]
            .into(),
        );
        assert!(m.matches(&target("pump-3", "MotorOverload")));
        assert!(!m.matches(&target("fan-3", "MotorOverload")));
        assert!(!m.matches(&target("pump-3", "Hot")));
        let sev = Matchers([("severity".to_string(), "MAJOR".to_string())].into());
        assert!(sev.matches(&target("x", "y")));
        let t = Matchers([("device_type".to_string(), "pu?p".to_string())].into());
        assert!(t.matches(&target("x", "y")));
    }

    #[test]
    fn a_silence_is_pending_active_then_expired_and_recurs_weekly() {
        let s = new(&[("device", "pump-*")], "2h")
            .build("s1".into(), 1000)
            .unwrap();
        assert_eq!(s.state(999), State::Pending);
        assert_eq!(s.state(1000), State::Active);
        assert_eq!(s.state(1000 + 7_200_000), State::Expired);
        let week = 7 * 86_400_000;
        let mut r = new(&[("device", "pump-*")], "2h");
        r.every = Some("7d".into());
        let r = r.build("s2".into(), 1000).unwrap();
        assert_eq!(r.state(1000 + week + 60_000), State::Active);
        assert_eq!(r.state(1000 + week + 7_200_000), State::Pending);
        assert_eq!(r.state(1000 + 3 * week), State::Active);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |n: NewSilence| n.build("x".into(), 1000).unwrap_err();
        assert!(err(new(&[], "2h")).contains("names no field"));
        assert!(err(new(&[("colour", "red")], "2h")).contains("unknown matcher `colour`"));
        assert!(err(new(&[("device", " ")], "2h")).contains("is empty"));
        assert!(err(new(&[("device", "a")], "two hours")).contains("`duration`"));
        let mut both = new(&[("device", "a")], "2h");
        both.ends_at = Some(Value::from(5000));
        assert!(err(both).contains("not both"));
        let mut none = new(&[("device", "a")], "2h");
        none.duration = None;
        assert!(err(none).contains("needs an end"));
        let mut back = new(&[("device", "a")], "2h");
        back.duration = None;
        back.ends_at = Some(Value::from("1969-01-01T00:00:00Z"));
        assert!(err(back).contains("ends before it starts"));
        let mut overlap = new(&[("device", "a")], "2h");
        overlap.every = Some("1h".into());
        assert!(err(overlap).contains("overlap"));
    }

    #[test]
    fn held_by_a_silence_or_by_an_open_source_alarm_on_the_same_site() {
        let mut facts = DeviceFacts::default();
        for (d, site) in [
            ("pump-1", "north"),
            ("pump-2", "north"),
            ("pump-3", "south"),
        ] {
            facts
                .attrs
                .insert(d.into(), [("site".to_string(), site.to_string())].into());
        }
        let rule = Inhibition {
            source: Matchers([("type".to_string(), "PowerLost".to_string())].into()),
            target: Matchers([("type".to_string(), "*".to_string())].into()),
            equal: vec!["attr.site".into()],
        };
        let s = Silences::new(None, vec![rule], facts);
        let power = target("pump-1", "PowerLost");
        let open = |f: &mut dyn FnMut(&str, &Target<'_>, Status)| {
            f("PowerLost:pump-1:1", &power, Status::ActiveUnack);
        };
        assert_eq!(
            s.held("Hot:pump-2:1", &target("pump-2", "Hot"), 0, open),
            Some(Held::Inhibited("PowerLost:pump-1:1".into()))
        );
        assert_eq!(
            s.held("Hot:pump-3:1", &target("pump-3", "Hot"), 0, open),
            None,
            "another site"
        );
        assert_eq!(
            s.held("PowerLost:pump-1:1", &power, 0, open),
            None,
            "an alarm never inhibits itself"
        );
        let sil = new(&[("device", "pump-3")], "1h")
            .build("s".into(), 0)
            .unwrap();
        s.add(sil, 0).unwrap();
        assert_eq!(
            s.held("Hot:pump-3:1", &target("pump-3", "Hot"), 10, open),
            Some(Held::Silenced("s".into()))
        );
    }

    #[test]
    fn silences_expire_on_clear_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("rc-silences-{}", std::process::id()));
        let file = dir.join("silences.json");
        let _ = std::fs::remove_file(&file);
        let s = Silences::new(Some(file.clone()), vec![], DeviceFacts::default());
        let mut n = new(&[("device", "pump-3")], "1h");
        n.expire_on_clear = true;
        s.add(n.build("a".into(), 0).unwrap(), 0).unwrap();
        s.add(
            new(&[("device", "pump-4")], "1h")
                .build("b".into(), 0)
                .unwrap(),
            0,
        )
        .unwrap();
        s.cleared(&target("pump-3", "Hot"), "Hot:pump-3:0", 50);
        let again = Silences::new(Some(file.clone()), vec![], DeviceFacts::default());
        assert_eq!(again.load(), Ok(2));
        assert_eq!(again.get("a").unwrap().state(60), State::Expired);
        assert_eq!(again.get("b").unwrap().state(60), State::Active);
        assert_eq!(
            again
                .expire("b", Some("ana"), 70)
                .unwrap()
                .unwrap()
                .state(70),
            State::Expired
        );
        assert!(again.expire("nope", None, 70).unwrap().is_none());
        std::fs::write(&file, b"{broken").unwrap();
        assert!(again.load().unwrap_err().contains("damaged"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
