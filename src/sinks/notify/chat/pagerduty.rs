//! PagerDuty, Events API v2: an alarm is one incident, its `dedup_key` the alarm's id. An
//! active unacknowledged alarm triggers it (a severity change triggers again: PagerDuty adds it
//! to the same incident), an acknowledgement acknowledges it and a clear resolves it. A
//! notification that is not an alarm's triggers an incident keyed by the notification.
//!
//! PagerDuty answers 202 when it took the event, 400 for an event it will never take (a bad
//! routing key among them: not retried), 429 when the key sends too fast and 5xx when it is
//! unwell (both retried, after `Retry-After` when given, with the channel's backoff).

use serde_json::{json, Value};

use super::{cut, refused, send_error, Card};
use crate::alarm::{Severity, Status};
use crate::sinks::notify::failure::Failure;

/// PagerDuty's severity of an alarm's.
fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Major => "error",
        Severity::Minor | Severity::Warning => "warning",
        Severity::Indeterminate => "info",
    }
}

/// What a notification does to its incident: an active unacknowledged alarm triggers it, an
/// acknowledged one acknowledges it, a cleared one resolves it; a notification that is not an
/// alarm's triggers one of its own.
pub fn action(c: &Card) -> &'static str {
    match c.alarm.as_ref().map(|a| a.status) {
        None | Some(Status::ActiveUnack) => "trigger",
        Some(Status::ActiveAck) => "acknowledge",
        Some(Status::ClearedUnack | Status::ClearedAck) => "resolve",
    }
}

/// The event of a notification (`key`: its deduplication key when it is not an alarm's).
pub fn event(c: &Card, routing_key: &str, key: &str, ts_ms: i64) -> Value {
    let action = action(c);
    let dedup = c.alarm.as_ref().map_or(key, |a| a.id.as_str());
    let mut e = json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": cut(dedup, 255),
    });
    if action == "trigger" {
        let timestamp = crate::message::format_rfc3339(ts_ms);
        let mut payload = json!({
            "summary": cut(&c.headline, 1024),
            "source": cut(&c.device, 255),
            "severity": c.alarm.as_ref().map_or("warning", |a| severity(a.severity)),
            "timestamp": timestamp,
            "custom_details": {"message": cut(&c.text, 4000)},
        });
        if let Some(a) = &c.alarm {
            payload["class"] = Value::from(cut(&a.type_, 255));
            payload["custom_details"]["status"] = Value::from(a.status_text());
            payload["custom_details"]["count"] = Value::from(a.count);
        }
        e["payload"] = payload;
        e["client"] = Value::from("rulechain");
        if let Some(l) = &c.link {
            e["client_url"] = Value::from(l.as_str());
            e["links"] = json!([{"href": l, "text": "Open in rulechain"}]);
        }
    }
    e
}

/// Sends a notification's event.
pub async fn send(
    client: &reqwest::Client,
    api: &reqwest::Url,
    routing_key: &str,
    c: &Card,
    key: &str,
    ts_ms: i64,
) -> Result<(), Failure> {
    let url = format!("{}/v2/enqueue", api.as_str().trim_end_matches('/'));
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(event(c, routing_key, key, ts_ms).to_string())
        .send()
        .await
        .map_err(|e| send_error("PagerDuty", &e))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(refused("PagerDuty", resp).await)
    }
}
