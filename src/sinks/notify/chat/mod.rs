//! The chat and incident channels: Slack (a bot that edits one message per alarm, or an
//! incoming webhook), Microsoft Teams (an Adaptive Card to a Workflows webhook), PagerDuty
//! (Events API v2, one incident per alarm) and Telegram (a bot that edits one message per
//! alarm).
//!
//! Each builds its message from a [`Card`]: the notification's rendered subject and body and,
//! for an alarm, its facts (device, type, severity, status, who acted) and a link to it on the
//! dashboard (`http.base_url`). Every value is escaped for where it lands (Slack mrkdwn, Teams
//! markdown, Telegram HTML) and every body is built as JSON by serde, so no device name or
//! message can break a request or inject markup or a mention.
//!
//! A bot remembers, per alarm, the message it posted ([`Threads`]) so that the next transition
//! edits it instead of posting another.

pub mod pagerduty;
pub mod slack;
pub mod teams;
pub mod telegram;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::encoding::reminder_subject;
use super::failure::Failure;
use super::Notice;
use crate::alarm::{Severity, Status};

/// An alarm's facts, as a notification carries them (`msg.alarm`, the alarm on the wire).
#[derive(Debug, Clone, Deserialize)]
pub struct Facts {
    /// The alarm's id.
    pub id: String,
    /// Its device.
    pub device: String,
    /// Its type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Its severity.
    pub severity: Severity,
    /// Its status.
    pub status: Status,
    /// What happened (`created`, `acknowledged`…).
    #[serde(default)]
    pub transition: String,
    /// Who acknowledged it.
    #[serde(default)]
    pub acked_by: Option<String>,
    /// Who cleared it by hand.
    #[serde(default)]
    pub cleared_by: Option<String>,
    /// When it started (ms).
    #[serde(default)]
    pub start_ts: i64,
    /// How many times it was raised.
    #[serde(default)]
    pub count: u64,
}

impl Facts {
    /// The status in words.
    pub fn status_text(&self) -> String {
        let by = |w: &Option<String>| w.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
        match self.status {
            Status::ActiveUnack => "Active, unacknowledged".into(),
            Status::ActiveAck => format!("Active, acknowledged{}", by(&self.acked_by)),
            Status::ClearedUnack => format!("Cleared{}, unacknowledged", by(&self.cleared_by)),
            Status::ClearedAck => format!(
                "Cleared{}, acknowledged{}",
                by(&self.cleared_by),
                by(&self.acked_by)
            ),
        }
    }

    /// What this transition did, in words (`acknowledged by alice`).
    pub fn transition_text(&self) -> String {
        match self.transition.as_str() {
            "acknowledged" => match &self.acked_by {
                Some(b) => format!("acknowledged by {b}"),
                None => "acknowledged".into(),
            },
            "cleared" => match &self.cleared_by {
                Some(b) => format!("cleared by {b}"),
                None => "cleared".into(),
            },
            "severity_changed" => format!("severity changed to {}", self.severity.as_str()),
            "" => "updated".into(),
            t => t.replace('_', " "),
        }
    }

    /// Cleared (green), else the severity's colour, as `#rrggbb`.
    pub fn colour(&self) -> &'static str {
        if matches!(self.status, Status::ClearedUnack | Status::ClearedAck) {
            return "#2e7d32";
        }
        match self.severity {
            Severity::Critical => "#b71c1c",
            Severity::Major => "#e65100",
            Severity::Minor => "#f9a825",
            Severity::Warning => "#1565c0",
            Severity::Indeterminate => "#757575",
        }
    }
}

/// What a chat message shows: built once per delivery from the notification.
pub struct Card {
    /// The headline: the rendered subject (`Reminder: …` for a reminder), one line.
    pub headline: String,
    /// The rendered body.
    pub text: String,
    /// The device.
    pub device: String,
    /// The alarm, for an alarm's notification.
    pub alarm: Option<Facts>,
    /// The alarm on the dashboard, when `http.base_url` is set.
    pub link: Option<String>,
    /// A reminder of an alarm still active.
    pub reminder: bool,
}

impl Card {
    /// The card of a notification.
    pub fn of(n: &Notice, base_url: Option<&reqwest::Url>) -> Card {
        let alarm = n.data.get("alarm").and_then(|a| Facts::deserialize(a).ok());
        let link = match (&alarm, base_url) {
            (Some(a), Some(base)) => Some(alarm_link(base, &a.id)),
            _ => None,
        };
        Card {
            headline: super::encoding::one_line(&reminder_subject(n)),
            text: n.body.clone(),
            device: n.device.to_string(),
            alarm,
            link,
            reminder: n.reminder,
        }
    }
}

/// The dashboard's page of an alarm: `{base}/#/alarm/{id}` (the id percent-encoded).
pub fn alarm_link(base: &reqwest::Url, id: &str) -> String {
    let enc = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    format!("{}/#/alarm/{enc}", base.as_str().trim_end_matches('/'))
}

/// Slack's mrkdwn: `&`, `<` and `>` are its control characters (links, mentions such as
/// `<!channel>`); everything else shows as it is.
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Telegram's HTML parse mode: `&`, `<`, `>` and `"` as entities.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The markdown of Teams' Adaptive Cards: every ASCII punctuation character that markdown
/// gives a meaning to is backslash-escaped (CommonMark's escapes), so `*bold*` in a device
/// name shows as typed.
pub fn markdown_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '[' | ']' | '(' | ')' | '#' | '<' | '>' | '!' | '|'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The messages a bot posted (or the incidents PagerDuty opened), per alarm id, so the next
/// transition edits them. Bounded: past `MAX` alarms the oldest is forgotten (its next
/// transition posts a new message).
#[derive(Default)]
pub struct Threads {
    inner: Mutex<(HashMap<String, Value>, VecDeque<String>)>,
    /// Where changes are mirrored, so a restart edits the same messages: the channel's name
    /// and the memory.
    mirror: std::sync::OnceLock<(String, std::sync::Arc<super::memory::Memory>)>,
}

impl Threads {
    const MAX: usize = 10_000;

    /// Takes up the messages a channel remembered, and mirrors every later change.
    pub fn remember(
        &self,
        channel: &str,
        remembered: &super::memory::ChannelMemory,
        memory: std::sync::Arc<super::memory::Memory>,
    ) {
        for (id, at) in &remembered.threads {
            self.put(id, at.clone());
        }
        let _ = self.mirror.set((channel.to_string(), memory));
    }

    /// The message posted for an alarm.
    pub fn get(&self, id: &str) -> Option<Value> {
        self.lock().0.get(id).cloned()
    }

    /// Remembers the message posted for an alarm.
    pub fn put(&self, id: &str, at: Value) {
        if let Some((ch, m)) = self.mirror.get() {
            m.thread(ch, id, Some(&at));
        }
        let mut g = self.lock();
        if g.0.insert(id.to_string(), at).is_none() {
            g.1.push_back(id.to_string());
        }
        while g.0.len() > Self::MAX {
            let Some(old) = g.1.pop_front() else { break };
            g.0.remove(&old);
            if let Some((ch, m)) = self.mirror.get() {
                m.thread(ch, &old, None);
            }
        }
    }

    /// Forgets an alarm's message.
    pub fn forget(&self, id: &str) {
        if let Some((ch, m)) = self.mirror.get() {
            m.thread(ch, id, None);
        }
        let mut g = self.lock();
        if g.0.remove(id).is_some() {
            g.1.retain(|k| k != id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Value>, VecDeque<String>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long the far side asked to wait (`Retry-After` in seconds), capped at ten minutes.
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(600)))
}

/// A request that got no answer.
pub fn send_error(what: &str, e: &reqwest::Error) -> Failure {
    Failure::transient(format!("{what}: {}", crate::sinks::http_error_text(e)))
}

/// An HTTP answer that is not a success: 408, 429 and 5xx are worth another attempt (after
/// `Retry-After` when given); any other refusal (400, 401, 404…) is not, since sending the
/// same request again changes nothing. `what` names the service (none for a plain webhook).
pub async fn refused(what: &str, resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let wait = retry_after(&resp);
    let text: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let head = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    Failure {
        text: crate::sinks::redact_urls(&format!("{head}HTTP {status}: {}", text.trim())),
        permanent: !crate::retry::retryable_status(status.as_u16()),
        retry_after: wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_keep_markup_and_mentions_as_text() {
        assert_eq!(
            slack_escape("<!channel> a&b <http://x|y>"),
            "&lt;!channel&gt; a&amp;b &lt;http://x|y&gt;"
        );
        assert_eq!(
            html_escape("<b>\"x\" & y</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; y&lt;/b&gt;"
        );
        assert_eq!(
            markdown_escape("*pump* [1](x)"),
            "\\*pump\\* \\[1\\]\\(x\\)"
        );
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }

    #[test]
    fn a_link_encodes_the_alarm_id() {
        let base = reqwest::Url::parse("https://rc.example.com/").unwrap();
        assert_eq!(
            alarm_link(&base, "Hot:pump 1/x:17"),
            "https://rc.example.com/#/alarm/Hot%3Apump%201%2Fx%3A17"
        );
    }

    #[test]
    fn threads_forget_the_oldest_past_their_bound() {
        let t = Threads::default();
        for i in 0..Threads::MAX + 2 {
            t.put(&i.to_string(), Value::from(i));
        }
        assert!(t.get("0").is_none() && t.get("1").is_none());
        assert_eq!(t.get("2"), Some(Value::from(2)));
        t.forget("2");
        assert!(t.get("2").is_none());
    }
}
