//! Slack. A bot (`chat:write`) posts one message per alarm with `chat.postMessage`, edits it in
//! place on each later transition with `chat.update` and adds a thread reply saying what
//! happened, so a channel holds one message per alarm whose colour and status are always
//! current. An incoming webhook cannot edit: it posts one message per transition.
//!
//! The Web API answers HTTP 200 with `{"ok": false, "error": …}` for most refusals: an
//! `invalid_auth`, a `channel_not_found` will not change and are not retried; `ratelimited`
//! (or an HTTP 429 with `Retry-After`) and Slack's own failures are.

use serde_json::{json, Value};

use super::{cut, refused, send_error, slack_escape, Card, Threads};
use crate::sinks::notify::failure::Failure;

/// Slack's errors worth another attempt.
const TRANSIENT: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// The message's blocks, in an attachment for the severity's colour bar.
pub fn attachment(card: &Card) -> Value {
    let headline = slack_escape(&cut(&card.headline, 250));
    let head = match &card.link {
        Some(l) => format!("*<{l}|{headline}>*"),
        None => format!("*{headline}*"),
    };
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": head}})];
    let colour = match &card.alarm {
        Some(a) => {
            let field = |k: &str, v: &str| json!({"type": "mrkdwn", "text": format!("*{k}*\n{}", slack_escape(&cut(v, 500)))});
            blocks.push(json!({"type": "section", "fields": [
                field("Device", &a.device),
                field("Type", &a.type_),
                field("Severity", a.severity.as_str()),
                field("Status", &a.status_text()),
            ]}));
            a.colour()
        }
        None => "#757575",
    };
    if !card.text.trim().is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(&cut(&card.text, 2900))}}));
    }
    json!({"color": colour, "fallback": cut(&card.headline, 250), "blocks": blocks})
}

/// What a card shows, in short (a hash of its headline and text): an edit that would show the
/// same is not sent.
fn shown_as(card: &Card) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&card.headline, &card.text).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The text a notification shows where blocks are not rendered (notifications, search).
fn fallback_text(card: &Card) -> String {
    slack_escape(&cut(&card.headline, 1000))
}

/// A bot.
pub struct Bot {
    pub(crate) client: reqwest::Client,
    pub(crate) api: reqwest::Url,
    pub(crate) token: String,
    pub(crate) channel: String,
    pub(crate) threads: Threads,
}

impl Bot {
    /// One delivery: a new message, or the alarm's message edited and a thread reply.
    pub async fn deliver(&self, card: &Card) -> Result<(), Failure> {
        let Some(alarm) = &card.alarm else {
            self.post(card, None).await?;
            return Ok(());
        };
        let known = self.threads.get(&alarm.id);
        let shown = shown_as(card);
        let at = match known {
            // The same transition, shown with the same text already (the channel followed the
            // alarm, then the chain notified the same transition with the default text): done.
            Some(at)
                if !card.reminder
                    && at["last"].as_str() == Some(alarm.transition.as_str())
                    && at["shown"].as_str() == Some(shown.as_str()) =>
            {
                return Ok(());
            }
            Some(at) => {
                let (ch, ts) = (at["channel"].clone(), at["ts"].clone());
                let edited = if card.reminder {
                    Ok(())
                } else {
                    self.call(
                        "chat.update",
                        json!({
                            "channel": ch, "ts": ts,
                            "text": fallback_text(card),
                            "attachments": [attachment(card)],
                        }),
                    )
                    .await
                    .map(|_| ())
                };
                match edited {
                    Err(e)
                        if e.text.ends_with("message_not_found")
                            || e.text.ends_with("cant_update_message") =>
                    {
                        // Deleted in Slack, or too old to edit: a new message takes its place.
                        self.threads.forget(&alarm.id);
                        let at = self.post(card, None).await?;
                        self.threads.put(&alarm.id, at);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                    Ok(()) => {}
                }
                // The chain's notification of a transition the channel already followed edits
                // the message again (with the chain's text) but replies once.
                let repeat =
                    !card.reminder && at["last"].as_str() == Some(alarm.transition.as_str());
                if repeat {
                    return self.remember(alarm, at, shown);
                }
                let what = if card.reminder {
                    format!("Reminder: still {}", alarm.status_text().to_lowercase())
                } else {
                    let mut t = alarm.transition_text();
                    if let Some(c) = t.get_mut(0..1) {
                        c.make_ascii_uppercase();
                    }
                    t
                };
                self.call(
                    "chat.postMessage",
                    json!({"channel": ch, "thread_ts": ts, "text": slack_escape(&cut(&what, 2000))}),
                )
                .await?;
                at
            }
            None => self.post(card, None).await?,
        };
        self.remember(alarm, at, shown)
    }

    /// Keeps where the alarm's message is and the transition it last showed. A closed alarm's
    /// stays too (among the last 10,000): the chain's own notification of the closing
    /// transition may come after the channel followed it, and must edit, not post.
    fn remember(&self, alarm: &super::Facts, mut at: Value, shown: String) -> Result<(), Failure> {
        at["last"] = Value::from(alarm.transition.as_str());
        at["shown"] = Value::from(shown);
        self.threads.put(&alarm.id, at);
        Ok(())
    }

    /// Posts a new message; gives back where it is (`{channel, ts}`).
    async fn post(&self, card: &Card, thread: Option<&Value>) -> Result<Value, Failure> {
        let mut body = json!({
            "channel": self.channel,
            "text": fallback_text(card),
            "attachments": [attachment(card)],
            "unfurl_links": false,
        });
        if let Some(t) = thread {
            body["thread_ts"] = t.clone();
        }
        let answer = self.call("chat.postMessage", body).await?;
        Ok(json!({"channel": answer["channel"], "ts": answer["ts"]}))
    }

    /// One Web API call; gives back Slack's answer when it says `ok`.
    async fn call(&self, method: &str, body: Value) -> Result<Value, Failure> {
        let what = format!("Slack {method}");
        let url = format!("{}/{method}", self.api.as_str().trim_end_matches('/'));
        let resp = self
            .client
            .post(url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| send_error(&what, &e))?;
        if !resp.status().is_success() {
            return Err(refused(&what, resp).await);
        }
        let bytes = resp.bytes().await.map_err(|e| send_error(&what, &e))?;
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::transient(format!("{what}: an answer that is not JSON: {e}")))?;
        if answer["ok"] == Value::Bool(true) {
            return Ok(answer);
        }
        let error = answer["error"]
            .as_str()
            .unwrap_or("no error named")
            .to_string();
        let transient = TRANSIENT.contains(&error.as_str());
        Err(Failure {
            text: format!("{what}: {}", cut(&error, 200)),
            permanent: !transient,
            retry_after: None,
        })
    }
}

/// An incoming webhook: one message per transition.
pub async fn post_webhook(
    client: &reqwest::Client,
    url: &reqwest::Url,
    card: &Card,
) -> Result<(), Failure> {
    let body = json!({"text": fallback_text(card), "attachments": [attachment(card)]});
    let resp = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| send_error("Slack webhook", &e))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(refused("Slack webhook", resp).await)
    }
}
