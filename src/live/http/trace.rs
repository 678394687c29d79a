//! `/api/trace`: start a live trace (`POST`), read it (`GET`), stop it (`DELETE`). The entries
//! also go to the WebSocket room `trace` as they are made.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::engine::clock::wall_ms;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Start {
    /// Only this device's messages.
    device: Option<String>,
    /// Only the steps through this chain.
    chain: Option<String>,
    /// How many messages (default 20, at most 1000).
    limit: Option<u32>,
    /// For how long: `30s`, `5m` (default 60 s, at most 1 h).
    duration: Option<String>,
}

/// `POST /api/trace {device?, chain?, limit?, duration?}`: starts a trace, replacing one in
/// progress; answers it with its bounds filled in.
pub(super) async fn start(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    body: Result<Json<Start>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(s) = body?;
    let asked = json!({
        "device": s.device, "chain": s.chain, "limit": s.limit, "duration": s.duration,
    });
    let duration_ms = match s.duration.as_deref() {
        None | Some("") => None,
        Some(d) => Some(crate::duration::parse(d).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("`duration`: {e}"))
        })?),
    };
    let empty = |o: Option<String>| o.filter(|x| !x.is_empty());
    if let Some(c) = s.chain.as_deref().filter(|c| !c.is_empty()) {
        let known = api
            .reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chains
            .iter()
            .any(|x| x == c);
        if !known {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("no chain {c:?} is in force"),
            ));
        }
    }
    let r = api.tracer.start(
        empty(s.device),
        empty(s.chain),
        s.limit,
        duration_ms,
        wall_ms(),
    );
    if super::asks_fleet(&api, &headers) {
        let token = super::given_token(&headers, &uri);
        super::fleet::broadcast(
            &api,
            reqwest::Method::POST,
            "/api/trace",
            Some(asked),
            token.as_deref(),
        )
        .await;
    }
    Ok(Json(json!({"trace": r})))
}

/// `GET /api/trace`: the trace in progress, if any, and the entries kept (oldest first).
pub(super) async fn read(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Json<Value> {
    let (active, entries) = api.tracer.read(wall_ms());
    let mut entries: Vec<Value> = entries
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect();
    if super::asks_fleet(&api, &headers) {
        // Every instance's entries (each traced the devices it owns), by time.
        let token = super::given_token(&headers, &uri);
        for (_, answer) in super::fleet::broadcast(
            &api,
            reqwest::Method::GET,
            "/api/trace",
            None,
            token.as_deref(),
        )
        .await
        {
            if let Some(more) = answer.as_ref().and_then(|a| a["entries"].as_array()) {
                entries.extend(more.iter().cloned());
            }
        }
        entries.sort_by_key(|e| e["ts"].as_i64().unwrap_or(0));
    }
    Json(json!({"active": active, "entries": entries}))
}

/// `DELETE /api/trace`: stops the trace in progress (the entries stay).
pub(super) async fn stop(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Json<Value> {
    api.tracer.stop();
    if super::asks_fleet(&api, &headers) {
        let token = super::given_token(&headers, &uri);
        super::fleet::broadcast(
            &api,
            reqwest::Method::DELETE,
            "/api/trace",
            None,
            token.as_deref(),
        )
        .await;
    }
    Json(json!({"active": null}))
}
