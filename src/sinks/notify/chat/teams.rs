//! Microsoft Teams through a Workflows webhook ("When a Teams webhook request is received"):
//! one Adaptive Card per notification. (The Office 365 connectors' incoming webhooks are
//! retired; a workflow posts the card to its channel or chat.) A workflow cannot edit what it
//! posted, so each transition is a card of its own.

use serde_json::{json, Value};

use super::{cut, markdown_escape, refused, send_error, Card};
use crate::alarm::{Severity, Status};
use crate::sinks::notify::failure::Failure;

/// The Adaptive Card (schema 1.4) of a notification.
pub fn card(c: &Card) -> Value {
    let colour = match &c.alarm {
        Some(a) if matches!(a.status, Status::ClearedUnack | Status::ClearedAck) => "Good",
        Some(a) => match a.severity {
            Severity::Critical | Severity::Major => "Attention",
            Severity::Minor | Severity::Warning => "Warning",
            Severity::Indeterminate => "Default",
        },
        None => "Default",
    };
    let mut body = vec![json!({
        "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
        "color": colour, "text": markdown_escape(&cut(&c.headline, 500)),
    })];
    if let Some(a) = &c.alarm {
        let fact = |k: &str, v: &str| json!({"title": k, "value": markdown_escape(&cut(v, 500))});
        body.push(json!({"type": "FactSet", "facts": [
            fact("Device", &a.device),
            fact("Type", &a.type_),
            fact("Severity", a.severity.as_str()),
            fact("Status", &a.status_text()),
        ]}));
    }
    if !c.text.trim().is_empty() {
        body.push(json!({"type": "TextBlock", "wrap": true, "text": markdown_escape(&cut(&c.text, 4000))}));
    }
    let mut content = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if let Some(l) = &c.link {
        content["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "Open in rulechain", "url": l}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": content,
        }],
    })
}

/// Posts a notification's card to the workflow.
pub async fn post(client: &reqwest::Client, url: &reqwest::Url, c: &Card) -> Result<(), Failure> {
    let resp = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(card(c).to_string())
        .send()
        .await
        .map_err(|e| send_error("Teams workflow", &e))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(refused("Teams workflow", resp).await)
    }
}
