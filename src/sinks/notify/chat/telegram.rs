//! Telegram, through a bot: `sendMessage` posts one message per alarm (HTML parse mode, every
//! value escaped), `editMessageText` rewrites it on each later transition.
//!
//! The Bot API answers `{"ok": false, "error_code": …, "description": …}`: 429 carries
//! `parameters.retry_after` (waited, then retried), 5xx is retried, 401 (a bad token) and other
//! 4xx are not. An edit that changes nothing ("message is not modified") is a success; an edit
//! of a message that is gone posts a new one.

use serde_json::{json, Value};

use super::{cut, html_escape, send_error, Card, Threads};
use crate::sinks::notify::failure::Failure;

/// The message's HTML.
pub fn text(c: &Card) -> String {
    let mut t = format!("<b>{}</b>", html_escape(&cut(&c.headline, 500)));
    if let Some(a) = &c.alarm {
        let icon = match a.status {
            crate::alarm::Status::ClearedUnack | crate::alarm::Status::ClearedAck => "✅",
            _ => match a.severity {
                crate::alarm::Severity::Critical => "🔴",
                crate::alarm::Severity::Major => "🟠",
                crate::alarm::Severity::Minor => "🟡",
                _ => "🔵",
            },
        };
        t = format!("{icon} {t}");
        t.push_str(&format!(
            "\nDevice: <code>{}</code>\nType: {}\nSeverity: {}\nStatus: {}",
            html_escape(&cut(&a.device, 200)),
            html_escape(&cut(&a.type_, 200)),
            a.severity.as_str(),
            html_escape(&a.status_text()),
        ));
    }
    if !c.text.trim().is_empty() {
        t.push_str("\n\n");
        t.push_str(&html_escape(&cut(&c.text, 3000)));
    }
    if let Some(l) = &c.link {
        t.push_str(&format!(
            "\n\n<a href=\"{}\">Open in rulechain</a>",
            html_escape(l)
        ));
    }
    t
}

/// A bot posting to one chat.
pub struct Bot {
    pub(crate) client: reqwest::Client,
    pub(crate) api: reqwest::Url,
    pub(crate) token: String,
    pub(crate) chat_id: Value,
    pub(crate) threads: Threads,
}

/// What a call came to.
enum Answer {
    Ok(Value),
    NotModified,
    Gone,
}

impl Bot {
    /// One delivery: a new message, or the alarm's message edited.
    pub async fn deliver(&self, c: &Card) -> Result<(), Failure> {
        let html = text(c);
        let Some(alarm) = &c.alarm else {
            self.call("sendMessage", self.message(&html)).await?;
            return Ok(());
        };
        if let Some(id) = self.threads.get(&alarm.id) {
            if c.reminder {
                // A reminder is a reply to the alarm's message, so the chat hears of it.
                let mut m = self.message(&html);
                m["reply_parameters"] =
                    json!({"message_id": id, "allow_sending_without_reply": true});
                self.call("sendMessage", m).await?;
                return Ok(());
            }
            let mut m = self.message(&html);
            m["message_id"] = id;
            match self.call("editMessageText", m).await? {
                // A closed alarm's message is kept too: the chain's own notification of the
                // closing transition may still come, and must edit, not send.
                Answer::Ok(_) | Answer::NotModified => return Ok(()),
                Answer::Gone => self.threads.forget(&alarm.id),
            }
        }
        let Answer::Ok(sent) = self.call("sendMessage", self.message(&html)).await? else {
            return Err(Failure::transient(
                "Telegram sendMessage: no message in the answer".into(),
            ));
        };
        if let Some(id) = sent["message_id"].as_i64() {
            self.threads.put(&alarm.id, Value::from(id));
        }
        Ok(())
    }

    fn message(&self, html: &str) -> Value {
        json!({
            "chat_id": self.chat_id,
            "text": html,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": true},
        })
    }

    async fn call(&self, method: &str, body: Value) -> Result<Answer, Failure> {
        let what = format!("Telegram {method}");
        let url = format!(
            "{}/bot{}/{method}",
            self.api.as_str().trim_end_matches('/'),
            self.token
        );
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| send_error(&what, &e))?;
        let status = resp.status();
        let header_wait = super::retry_after(&resp);
        let bytes = resp.bytes().await.unwrap_or_default();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() && answer["ok"] == Value::Bool(true) {
            return Ok(Answer::Ok(answer["result"].clone()));
        }
        let description = answer["description"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let lower = description.to_lowercase();
        if lower.contains("message is not modified") {
            return Ok(Answer::NotModified);
        }
        if lower.contains("message to edit not found") || lower.contains("message can't be edited")
        {
            return Ok(Answer::Gone);
        }
        let code = answer["error_code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(status.as_u16());
        let wait = answer["parameters"]["retry_after"]
            .as_u64()
            .map(|s| std::time::Duration::from_secs(s.min(600)))
            .or(header_wait);
        Err(Failure {
            // The token is in the URL, never in this text.
            text: format!("{what}: {code} {}", cut(&description, 200))
                .trim_end()
                .to_string(),
            permanent: !crate::retry::retryable_status(code),
            retry_after: wait,
        })
    }
}
