//! Silences: `GET /api/silences`, `POST /api/silences`, `GET`/`DELETE /api/silences/{id}`.
//! See `crate::alarm::silence` for what they match and hold.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::alarm::silence::{NewSilence, Silence, Silences, State as SilenceState};

fn store(api: &Api) -> Result<&std::sync::Arc<Silences>, ApiError> {
    api.alarms.silences().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "silences are not kept here",
        )
    })
}

fn now() -> i64 {
    crate::engine::clock::wall_ms()
}

/// A new silence's id: its creation time and a random part, in hex.
fn new_id(now: i64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::RandomState::default().build_hasher();
    h.write_i64(now);
    format!("{now:x}-{:08x}", h.finish() as u32)
}

#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    /// `active`, `pending` or `expired`.
    state: Option<String>,
}

/// `GET /api/silences?state=`: every silence, newest first (expired ones for a day), each
/// with its `state`.
pub(super) async fn list(
    State(api): State<Api>,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(f) = query?;
    let states = ["active", "pending", "expired"];
    if let Some(s) = f.state.as_deref().filter(|s| !states.contains(s)) {
        return Err(ApiError::bad_request(format!("unknown state {s:?}"))
            .detail(json!({"expected": states})));
    }
    let now = now();
    let list: Vec<Value> = store(&api)?
        .list(now)
        .iter()
        .map(|s| s.to_json(now))
        .filter(|v| f.state.as_deref().is_none_or(|st| v["state"] == st))
        .collect();
    Ok(Json(json!({ "silences": list })))
}

/// `POST /api/silences` `{matchers, duration | ends_at, starts_at?, every?, until?,
/// expire_on_clear?, comment?, by?}`: 201 with the silence; 400 saying what is wrong.
pub(super) async fn add(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(|r| {
        ApiError::new(r.status(), "the body could not be read").detail(r.body_text().into())
    })?;
    let now = now();
    if super::forwarded(&headers) {
        // Another instance of the cluster made it: the same silence, id and all.
        let s: Silence = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("not a silence").detail(e.to_string().into()))?;
        let kept = store(&api)?
            .upsert(s, now)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
        return Ok((StatusCode::CREATED, Json(kept.to_json(now))));
    }
    let req: NewSilence = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("the body is not a silence")
            .detail(json!({"reason": e.to_string(), "example": {"matchers": {"device": "pump-*", "type": "MotorOverload"}, "duration": "2h", "comment": "pump maintenance", "by": "ana"}}))
    })?;
    let silence = req.build(new_id(now), now).map_err(ApiError::bad_request)?;
    let s = store(&api)?;
    let added = s.add(silence, now).map_err(|e| {
        let code = if e.contains("in force already") {
            StatusCode::CONFLICT
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(code, e)
    })?;
    tracing::info!(silence = %added.id, by = ?added.by, matchers = ?added.matchers.0, "silence added");
    if super::asks_fleet(&api, &headers) {
        let token = super::given_token(&headers, &uri);
        super::fleet::broadcast(
            &api,
            reqwest::Method::POST,
            "/api/silences",
            serde_json::to_value(&added).ok(),
            token.as_deref(),
        )
        .await;
    }
    Ok((StatusCode::CREATED, Json(added.to_json(now))))
}

/// `GET /api/silences/{id}`.
pub(super) async fn one(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = store(&api)?
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no silence {id:?}")))?;
    Ok(Json(s.to_json(now())))
}

#[derive(Debug, Deserialize)]
pub(super) struct Who {
    /// Who expires it.
    by: Option<String>,
}

/// `DELETE /api/silences/{id}?by=`: expires it now (kept in the list, `expired`); 404 for an
/// unknown id.
pub(super) async fn expire(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    query: Result<Query<Who>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(who) = query?;
    let by = who.by.as_deref().and_then(crate::alarm::operator_name);
    let now = now();
    let s = store(&api)?
        .expire(&id, by.as_deref(), now)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .ok_or_else(|| ApiError::not_found(format!("no silence {id:?}")))?;
    if s.state(now) == SilenceState::Expired {
        tracing::info!(silence = %id, by = ?by, "silence expired");
    }
    if super::asks_fleet(&api, &headers) {
        let token = super::given_token(&headers, &uri);
        let mut path = format!(
            "/api/silences/{}",
            percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC)
        );
        if let Some(b) = &by {
            path.push_str(&format!(
                "?by={}",
                percent_encoding::utf8_percent_encode(b, percent_encoding::NON_ALPHANUMERIC)
            ));
        }
        super::fleet::broadcast(&api, reqwest::Method::DELETE, &path, None, token.as_deref()).await;
    }
    Ok(Json(s.to_json(now)))
}
