//! What the channels remember between runs: each channel's reminders (the alarm's last
//! notification and when the next reminder is due, on the wall clock) and a bot's messages per
//! alarm (which message to edit). Kept in `channels.json` in the state dir, saved every two
//! seconds when it changed and at shutdown (a new file renamed over the old): after a restart
//! the reminders go on on their schedule and a bot edits the same message. A crash loses at
//! most the last two seconds of it (a reminder rescheduled then comes once more; a message
//! posted then is posted anew on the next transition).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Notice;

/// One channel's memory.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ChannelMemory {
    /// Alarm id → its last notification and when its next reminder is due (ms).
    #[serde(default)]
    pub reminders: BTreeMap<String, (Notice, i64)>,
    /// Alarm id → the message a bot posted for it.
    #[serde(default)]
    pub threads: BTreeMap<String, Value>,
    /// Alarm id → its notification, the next escalation step, and when it was notified (ms).
    #[serde(default)]
    pub escalations: BTreeMap<String, (Notice, usize, i64)>,
}

/// Every channel's memory, kept in a file.
#[derive(Debug, Default)]
pub struct Memory {
    file: Option<PathBuf>,
    channels: Mutex<BTreeMap<String, ChannelMemory>>,
    dirty: AtomicBool,
}

impl Memory {
    /// A memory kept in `file` (none: in memory only).
    pub fn new(file: Option<PathBuf>) -> Memory {
        Memory {
            file,
            ..Default::default()
        }
    }

    /// Reads the file back (at start).
    pub fn load(&self) -> Result<usize, String> {
        let Some(f) = &self.file else { return Ok(0) };
        let Some(m) = crate::durable::read_json::<BTreeMap<String, ChannelMemory>>(
            f,
            "the channels' reminders",
        )?
        else {
            return Ok(0);
        };
        let n = m.values().map(|c| c.reminders.len()).sum();
        *self.lock() = m;
        Ok(n)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ChannelMemory>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a channel remembered.
    pub fn channel(&self, name: &str) -> ChannelMemory {
        self.lock().get(name).cloned().unwrap_or_default()
    }

    /// Sets (or with None, forgets) an alarm's reminder: its last notification and when the
    /// next is due (ms).
    pub fn reminder(&self, channel: &str, id: &str, r: Option<(&Notice, i64)>) {
        self.set(
            channel,
            |c| &mut c.reminders,
            id,
            r.map(|(n, due)| (n.clone(), due)),
        );
    }

    /// Sets (or with None, forgets) an alarm's escalation: its notification, next step and
    /// when it was notified (ms).
    pub fn escalation(&self, channel: &str, id: &str, e: Option<(&Notice, usize, i64)>) {
        self.set(
            channel,
            |c| &mut c.escalations,
            id,
            e.map(|(n, step, base)| (n.clone(), step, base)),
        );
    }

    /// Sets (or with None, forgets) the message a bot posted for an alarm.
    pub fn thread(&self, channel: &str, id: &str, at: Option<&Value>) {
        self.set(channel, |c| &mut c.threads, id, at.cloned());
    }

    /// Sets or forgets an alarm's entry in one of a channel's maps; marks the memory changed
    /// when it did.
    fn set<V>(
        &self,
        channel: &str,
        map: impl FnOnce(&mut ChannelMemory) -> &mut BTreeMap<String, V>,
        id: &str,
        value: Option<V>,
    ) {
        let mut g = self.lock();
        let m = map(g.entry(channel.to_string()).or_default());
        let changed = match value {
            Some(v) => {
                m.insert(id.to_string(), v);
                true
            }
            None => m.remove(id).is_some(),
        };
        if changed {
            self.dirty.store(true, Relaxed);
        }
    }

    /// Writes the file if anything changed since the last save.
    pub fn save(&self) -> Result<(), String> {
        crate::durable::save_if_changed(
            self.file.as_deref(),
            &self.dirty,
            || serde_json::to_vec(&*self.lock()).unwrap_or_default(),
            "the channels' reminders",
        )
    }
}
