//! Each alarm's history: every transition with its time and actor (the operator's `by`, or the
//! rule), the operators' comments, and what the channels did with it (sent, held). Bounded:
//! [`PER_ALARM`] entries per alarm (the oldest go) and [`ALARMS`] alarms (the alarm least
//! recently written to goes). Written to a file (`alarm-history.json` in the state dir) by
//! [`History::save`] when something changed: the live engine saves every two seconds and at
//! shutdown, so a crash loses at most the last two seconds of it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Alarm, Severity, Status, Transition};

/// Entries kept per alarm.
pub const PER_ALARM: usize = 200;
/// Alarms whose history is kept.
pub const ALARMS: usize = 5000;
/// A comment's longest text (characters).
pub const MAX_COMMENT: usize = 2000;

/// One thing that happened to an alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When (ms).
    pub ts: i64,
    /// `created`, `severity_changed`, `acknowledged`, `cleared`, `comment`, `notified`,
    /// `held`.
    pub kind: String,
    /// Who: an operator's name, `rule` for a rule's transition, a channel's name for
    /// `notified` and `held`.
    pub by: String,
    /// A comment's text; for a transition, the alarm's message; for `held`, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The alarm's severity after a transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// The alarm's status after a transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Default, Serialize, Deserialize)]
struct Book {
    /// Alarm id → its entries, oldest first.
    entries: HashMap<String, VecDeque<Entry>>,
    /// Alarm ids, least recently written first.
    order: VecDeque<String>,
}

/// Every alarm's history.
#[derive(Default)]
pub struct History {
    book: Mutex<Book>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish()
    }
}

impl History {
    /// A history kept in `file`.
    pub fn new(file: Option<PathBuf>) -> History {
        History {
            file,
            ..Default::default()
        }
    }

    /// Reads the file back (at start); gives how many alarms' histories it held.
    pub fn load(&self) -> Result<usize, String> {
        let Some(f) = &self.file else { return Ok(0) };
        let Some(book) = crate::durable::read_json::<Book>(f, "the alarms' history")? else {
            return Ok(0);
        };
        let n = book.entries.len();
        *self.lock() = book;
        Ok(n)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an entry to an alarm's history.
    pub fn add(&self, id: &str, e: Entry) {
        let mut b = self.lock();
        if let Some(list) = b.entries.get_mut(id) {
            if list.len() >= PER_ALARM {
                list.pop_front();
            }
            list.push_back(e);
            if let Some(i) = b.order.iter().rposition(|k| k == id) {
                // Most alarms written to are recent: the search from the back is short.
                if let Some(k) = b.order.remove(i) {
                    b.order.push_back(k);
                }
            }
        } else {
            while b.entries.len() >= ALARMS {
                let Some(old) = b.order.pop_front() else {
                    break;
                };
                b.entries.remove(&old);
            }
            b.entries.insert(id.to_string(), VecDeque::from([e]));
            b.order.push_back(id.to_string());
        }
        drop(b);
        self.dirty.store(true, Relaxed);
    }

    /// A transition of an alarm, as it leaves its shard.
    pub fn transition(&self, a: &Alarm, t: Transition) {
        let by = match t {
            Transition::Acknowledged => a.acked_by.clone(),
            Transition::Cleared => a.cleared_by.clone(),
            _ => None,
        }
        .unwrap_or_else(|| match t {
            Transition::Acknowledged => "operator".into(),
            _ => "rule".into(),
        });
        self.add(
            &a.id,
            Entry {
                ts: match t {
                    Transition::Cleared => a.end_ts.unwrap_or(a.last_ts),
                    _ => a.last_ts,
                },
                kind: t.as_str().into(),
                by,
                text: (!a.message.is_empty()).then(|| a.message.clone()),
                severity: Some(a.severity),
                status: Some(a.status),
            },
        );
    }

    /// An alarm's history, oldest first (None when none is kept).
    pub fn of(&self, id: &str) -> Option<Vec<Entry>> {
        self.lock()
            .entries
            .get(id)
            .map(|l| l.iter().cloned().collect())
    }

    /// Writes the history to its file if it changed since the last save: a new file renamed
    /// over the old, flushed first.
    pub fn save(&self) -> Result<(), String> {
        crate::durable::save_if_changed(
            self.file.as_deref(),
            &self.dirty,
            || serde_json::to_vec(&*self.lock()).unwrap_or_default(),
            "the alarms' history",
        )
    }
}

/// A comment's text, as given: trimmed, control characters but newlines left out, at most
/// [`MAX_COMMENT`] characters; none when empty.
pub fn comment_text(text: &str) -> Option<String> {
    let t: String = text
        .trim()
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .take(MAX_COMMENT)
        .collect();
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, kind: &str) -> Entry {
        Entry {
            ts,
            kind: kind.into(),
            by: "rule".into(),
            text: None,
            severity: None,
            status: None,
        }
    }

    #[test]
    fn bounded_per_alarm_and_in_total_and_kept_over_a_restart() {
        let dir = std::env::temp_dir().join(format!("rc-history-{}", std::process::id()));
        let file = dir.join("alarm-history.json");
        let h = History::new(Some(file.clone()));
        for i in 0..PER_ALARM as i64 + 5 {
            h.add("a", entry(i, "comment"));
        }
        let a = h.of("a").unwrap();
        assert_eq!(a.len(), PER_ALARM);
        assert_eq!(a[0].ts, 5, "the oldest went");
        for i in 0..ALARMS {
            h.add(&format!("x{i}"), entry(0, "created"));
        }
        assert!(h.of("a").is_none(), "the least recently written alarm went");
        assert!(h.of("x0").is_some());
        h.add("x0", entry(1, "comment"));
        h.add("new", entry(1, "created"));
        assert!(h.of("x0").is_some(), "written to lately, so kept");
        assert!(h.of("x1").is_none());
        h.save().unwrap();
        let again = History::new(Some(file));
        assert_eq!(again.load(), Ok(ALARMS));
        assert_eq!(again.of("x0").unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn comments_are_cleaned_and_bounded() {
        assert_eq!(comment_text("  a\u{7}b\nc  ").as_deref(), Some("ab\nc"));
        assert_eq!(comment_text(" \n "), None);
        assert_eq!(comment_text(&"x".repeat(5000)).unwrap().len(), MAX_COMMENT);
    }
}
