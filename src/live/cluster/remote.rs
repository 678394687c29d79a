//! An operator's action on an alarm of another instance's device, handed to that instance.

use std::sync::Arc;
use std::time::Duration;

use super::view::View;

/// The header a cluster member sets on a request it hands to the instance that owns the
/// device: that instance answers it itself, never hands it on (two instances that briefly
/// disagree about an owner cannot pass a request back and forth).
pub const FORWARDED: &str = "x-rulechain-forwarded";

/// Hands an operator's action on an alarm of another instance's device to that instance's
/// API (marked forwarded: it answers, never hands on), and gives its answer.
pub(super) fn remote_acks(
    view: View,
    token: Option<Arc<str>>,
) -> Result<crate::live::shards::Remote, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(Box::new(move |op| {
        let (view, client, token) = (view.clone(), client.clone(), token.clone());
        Box::pin(async move {
            use crate::alarm::registry::AlarmAction;
            use crate::alarm::{AckError, Status};
            let Some((owner, http)) = view.owner_http(&op.device) else {
                // Between owners (or the owner has no API): nobody can take it now.
                return Err(AckError::ShuttingDown);
            };
            let verb = match op.action {
                AlarmAction::Ack => "ack",
                AlarmAction::Clear => "clear",
            };
            let mut url = reqwest::Url::parse(&format!("http://{http}/"))
                .map_err(|_| AckError::ShuttingDown)?;
            url.path_segments_mut()
                .map_err(|_| AckError::ShuttingDown)?
                .extend(["api", "alarms", op.id.as_str(), verb]);
            let mut req = client
                .post(url)
                .header(FORWARDED, "1")
                .header("content-type", "application/json")
                .body(serde_json::json!({ "by": op.by }).to_string());
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| {
                tracing::warn!(instance = %owner, "cluster: cannot hand an alarm action to its owner: {}", crate::sinks::http_error_text(&e));
                AckError::ShuttingDown
            })?;
            let code = resp.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap_or_default()).unwrap_or_default();
            match code {
                200 => serde_json::from_value::<Status>(body["status"].clone())
                    .map_err(|_| AckError::ShuttingDown),
                404 => Err(AckError::NotFound(op.id)),
                409 => {
                    // The owner's answer names the alarm's status now.
                    let status = serde_json::from_value::<Status>(body["detail"]["status"].clone())
                        .map_err(|_| AckError::ShuttingDown)?;
                    Err(match op.action {
                        AlarmAction::Ack => AckError::AlreadyAcknowledged(op.id, status),
                        AlarmAction::Clear => AckError::AlreadyCleared(op.id, status),
                    })
                }
                _ => Err(AckError::ShuttingDown),
            }
        })
    }))
}
