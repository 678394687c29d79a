//! The rules: the chains in force with their counters and the last reload's problems, a reload,
//! and checking a chain file before it is saved.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{Api, ApiError};
use crate::engine::stats::totals;
use crate::live::reload::ReloadReq;

/// `GET /api/chains`: each chain with its nodes' counters, and the last reload.
pub(super) async fn chains(State(api): State<Api>) -> Json<Value> {
    let reload = api.reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({
        "generation": reload.generation,
        "swapped_at": reload.swapped_at,
        "chains": totals(&api.rule_stats),
        "last_reload": {
            "checks": reload.checks,
            "reloads": reload.reloads,
            "failed": reload.failed,
            "problems": reload.problems,
        },
    }))
}

/// `POST /api/reload`: reads the rules directory again; 422 with the problems when a file has
/// errors (it keeps its last good version).
pub(super) async fn reload(State(api): State<Api>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (tx, rx) = oneshot::channel();
    if api
        .reload_tx
        .send(ReloadReq { reply: Some(tx) })
        .await
        .is_err()
    {
        return Err(ApiError::unavailable("shutting down"));
    }
    let r = rx
        .await
        .map_err(|_| ApiError::unavailable("shutting down"))?;
    let code = if r.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((code, Json(serde_json::to_value(r).unwrap_or_default())))
}

#[derive(Debug, Deserialize)]
pub(super) struct ValidateQuery {
    /// The file name the diagnostics name (default `chain.yaml`).
    name: Option<String>,
}

/// `POST /api/rules/validate`: a chain file in the body (YAML text), checked as `validate` and a
/// reload check it. 200 with its warnings when it would load; 422 with every problem when not.
pub(super) async fn validate(
    State(api): State<Api>,
    query: Result<Query<ValidateQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let text = body.map_err(|r| {
        ApiError::new(
            r.status(),
            "the body must be a chain file (YAML text, UTF-8)",
        )
        .detail(r.body_text().into())
    })?;
    let name = q
        .name
        .filter(|n| !n.is_empty() && n.len() <= 255 && !n.contains(['/', '\\', '\0']))
        .unwrap_or_else(|| "chain.yaml".into());
    let config = api.config.clone();
    // Compiling runs Rhai's compiler: CPU work, off the I/O threads.
    let d = tokio::task::spawn_blocking(move || {
        crate::live::reload::check_chain_text(config.as_deref(), &name, text)
    })
    .await
    .map_err(|_| ApiError::unavailable("the check did not finish"))?;
    let problems = serde_json::to_value(d.sorted()).unwrap_or_default();
    if d.has_errors() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the chain has {} error(s)", d.error_count()),
        )
        .detail(problems));
    }
    Ok(Json(json!({"valid": true, "diagnostics": problems})))
}
