//! Alarms: the open ones, filtered, and acknowledgements.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::alarm::registry::AlarmAction;
use crate::alarm::silence::Held;
use crate::alarm::AckError;

#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    /// `ACTIVE_UNACK`, `ACTIVE_ACK`, `CLEARED_UNACK`, `active` for both active ones, or
    /// `CLEARED_ACK` for the alarms closed since the start (the last 200).
    status: Option<String>,
    /// One device's.
    device: Option<String>,
    /// `CRITICAL`, `MAJOR`, `MINOR`, `WARNING`, `INDETERMINATE`.
    severity: Option<String>,
}

/// `GET /api/alarms?status=&device=&severity=`: the open alarms (active, or cleared and not yet
/// acknowledged), most severe first, then newest first; with `status=CLEARED_ACK`, the alarms
/// closed since the start, newest first.
pub(super) async fn list(
    State(api): State<Api>,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(f) = query?;
    let statuses = [
        "ACTIVE_UNACK",
        "ACTIVE_ACK",
        "CLEARED_UNACK",
        "CLEARED_ACK",
        "active",
    ];
    if let Some(s) = f.status.as_deref().filter(|s| !statuses.contains(s)) {
        return Err(ApiError::bad_request(format!("unknown status {s:?}"))
            .detail(json!({"expected": statuses})));
    }
    let severity = match f.severity.as_deref() {
        None => None,
        Some(s) => Some(crate::alarm::Severity::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("unknown severity {s:?}"))
                .detail(json!({"expected": crate::alarm::SEVERITIES}))
        })?),
    };
    if f.status.as_deref() == Some("CLEARED_ACK") {
        let closed: Vec<Value> = api
            .alarms
            .closed(f.device.as_deref())
            .iter()
            .filter(|a| severity.is_none_or(|s| a.severity == s))
            .map(|a| crate::alarm::registry::alarm_json(a, "closed"))
            .collect();
        return Ok(Json(json!({ "alarms": closed })));
    }
    let mut open = api.alarms.open(f.device.as_deref());
    open.retain(|o| {
        let st = o.alarm.status;
        f.status.as_deref().is_none_or(|s| match s {
            "active" => st.is_active(),
            s => st.as_str() == s,
        }) && severity.is_none_or(|s| o.alarm.severity == s)
    });
    open.sort_by(|a, b| {
        (a.alarm.severity, std::cmp::Reverse(a.alarm.start_ts))
            .cmp(&(b.alarm.severity, std::cmp::Reverse(b.alarm.start_ts)))
    });
    let now = crate::engine::clock::wall_ms();
    let open: Vec<Value> = open
        .iter()
        .map(|a| {
            let mut v = a.to_json();
            // Still raised, stored and shown; its notifications are held.
            match api.alarms.held_open(&a.alarm, now) {
                Some(Held::Silenced(id)) => v["silenced_by"] = id.into(),
                Some(Held::Inhibited(id)) => v["inhibited_by"] = id.into(),
                None => {}
            }
            v
        })
        .collect();
    Ok(Json(json!({ "alarms": open })))
}

/// The optional body of an acknowledgement or a clear: `{"by": "who"}`.
fn operator(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("the body is not JSON").detail(e.to_string().into()))?;
    if !v.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body is an object naming the operator, {\"by\": \"ana\"}, or empty",
        ));
    }
    match v.get("by") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(crate::alarm::operator_name(s)),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`by` is the operator's name, a string: {\"by\": \"ana\"}",
        )),
    }
}

/// A body that could not be read (413 past [`super::MAX_BODY`]), as JSON like every error.
fn too_large(r: axum::extract::rejection::BytesRejection) -> ApiError {
    ApiError::new(r.status(), "the body could not be read").detail(r.body_text().into())
}

fn refusal(id: &str, e: AckError) -> ApiError {
    let (code, status) = match &e {
        AckError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, None),
        AckError::AlreadyAcknowledged(_, s) | AckError::AlreadyCleared(_, s) => {
            (StatusCode::CONFLICT, Some(*s))
        }
        AckError::NotFound(_) => (StatusCode::NOT_FOUND, None),
    };
    let mut detail = json!({"alarm": id});
    if let Some(s) = status {
        // The alarm's status now (a cluster member that handed the action over reads it).
        detail["status"] = json!(s);
    }
    ApiError::new(code, e.to_string()).detail(detail)
}

/// `POST /api/alarms/{id}/ack` (optional body `{"by": "who"}`): 200 with the new status; 404
/// unknown, 409 acknowledged already, 503 shutting down.
pub(super) async fn ack(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(too_large)?;
    act(
        &api,
        &id,
        &body,
        AlarmAction::Ack,
        super::forwarded(&headers),
    )
    .await
}

/// `POST /api/alarms/{id}/clear` (optional body `{"by": "who"}`): clears an active alarm by
/// hand, as a rule's clear would (on down the chain where the alarm node's `pass:` lists
/// `cleared`, never into an `rpc` or `publish`); 200 with the new status; 404
/// unknown, 409 cleared already, 503 shutting down.
pub(super) async fn clear(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(too_large)?;
    act(
        &api,
        &id,
        &body,
        AlarmAction::Clear,
        super::forwarded(&headers),
    )
    .await
}

async fn act(
    api: &Api,
    id: &str,
    body: &[u8],
    action: AlarmAction,
    forwarded: bool,
) -> Result<Json<Value>, ApiError> {
    let by = operator(body)?;
    let done = api.alarms.act(id, action, by.as_deref(), forwarded).await;
    match done {
        Ok(status) => Ok(Json(json!({"alarm": id, "status": status, "by": by}))),
        Err(e) => Err(refusal(id, e)),
    }
}

/// `GET /api/alarms/{id}/history`: the alarm (if it is open or was closed lately) and every
/// entry of its history, oldest first: transitions with their actor, comments, what the
/// channels did. 404 when neither is known.
pub(super) async fn history(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let alarm = api.alarms.find(&id);
    let entries = api.alarms.history().and_then(|h| h.of(&id));
    if alarm.is_none() && entries.is_none() {
        return Err(ApiError::not_found(format!("no alarm {id:?}")).detail(json!({"alarm": id})));
    }
    Ok(Json(json!({
        "alarm": alarm.map(|a| {
            let t = if a.status == crate::alarm::Status::ClearedAck { "closed" } else { "" };
            crate::alarm::registry::alarm_json(&a, t)
        }),
        "history": entries.unwrap_or_default(),
    })))
}

/// `POST /api/alarms/{id}/comments` `{"text": "…", "by": "ana"}`: 201 with the entry; 404 for
/// an alarm neither open nor in the history; 422 without a text.
pub(super) async fn comment(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(too_large)?;
    if super::forwarded(&headers) {
        // Another instance of the cluster took it: the same entry here.
        let e: crate::alarm::history::Entry = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("not an entry").detail(e.to_string().into()))?;
        if let Some(h) = api.alarms.history() {
            h.add(&id, e.clone());
        }
        return Ok((StatusCode::CREATED, Json(json!({"alarm": id, "entry": e}))));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Comment {
        text: String,
        #[serde(default)]
        by: Option<String>,
    }
    let c: Comment = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body is a comment: {\"text\": \"…\", \"by\": \"ana\"}",
        )
        .detail(e.to_string().into())
    })?;
    let Some(text) = crate::alarm::history::comment_text(&c.text) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the comment's `text` is empty",
        ));
    };
    let Some(h) = api.alarms.history() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no history is kept here",
        ));
    };
    if api.alarms.find(&id).is_none() && h.of(&id).is_none() {
        return Err(ApiError::not_found(format!("no alarm {id:?}")).detail(json!({"alarm": id})));
    }
    let entry = crate::alarm::history::Entry {
        ts: crate::engine::clock::wall_ms(),
        kind: "comment".into(),
        by: c
            .by
            .as_deref()
            .and_then(crate::alarm::operator_name)
            .unwrap_or_else(|| "operator".into()),
        text: Some(text),
        severity: None,
        status: None,
    };
    h.add(&id, entry.clone());
    if super::asks_fleet(&api, &headers) {
        // Every instance keeps the fleet's history: each hears of the comment.
        let token = super::given_token(&headers, &uri);
        let path = format!(
            "/api/alarms/{}/comments",
            percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC)
        );
        super::fleet::broadcast(
            &api,
            reqwest::Method::POST,
            &path,
            serde_json::to_value(&entry).ok(),
            token.as_deref(),
        )
        .await;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"alarm": id, "entry": entry})),
    ))
}
