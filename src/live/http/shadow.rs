//! Shadow mode: `GET`/`POST`/`DELETE /api/shadow`, `POST /api/rules/promote`. See
//! `crate::live::shadows`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::live::shadows::{Origin, ShadowError};

fn error(e: ShadowError) -> ApiError {
    let text = e.text();
    match e {
        ShadowError::Bad(_) => ApiError::bad_request(text),
        ShadowError::Invalid(problems) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the candidate's rules have {} error(s)", problems.len()),
        )
        .detail(json!(problems)),
        ShadowError::NotRunning => ApiError::new(StatusCode::CONFLICT, text),
        ShadowError::Unavailable(_) => ApiError::unavailable(text),
    }
}

/// Reads a JSON object body (empty: `{}`).
fn object<T: for<'de> Deserialize<'de> + Default>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        ApiError::new(r.status(), "the body could not be read").detail(r.body_text().into())
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body must be {shape}")).detail(e.to_string().into())
    })
}

/// `GET /api/shadow`: `{shadow: {running, dir, started_at, …}, last_promotion}` and, while a
/// shadow runs, the running diff against the live rules in the shape of `rulechain diff
/// --format json` (the live rules are the base).
pub(super) async fn read(State(api): State<Api>) -> Json<Value> {
    let last = api.shadow.last_promotion();
    let mut v = match api.shadow.report() {
        Some((report, info)) => {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            v["shadow"] = serde_json::to_value(info).unwrap_or_default();
            v
        }
        None => json!({"shadow": {"running": false}}),
    };
    v["last_promotion"] = serde_json::to_value(last).unwrap_or_default();
    Json(v)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Start {
    /// A directory of chain files (on the engine's machine).
    dir: Option<PathBuf>,
    /// Or the chain files themselves: file name → YAML text.
    chains: Option<BTreeMap<String, String>>,
    /// Who starts it.
    by: Option<String>,
}

/// Most uploaded chain files.
const MAX_FILES: usize = 200;

/// `POST /api/shadow` `{dir}` or `{chains: {"name.yaml": "…"}}`, optional `by`: starts a
/// shadow of those rules (replacing one that runs). 201 with its chains; 400 for a bad
/// request, 422 with every problem when the rules have errors.
pub(super) async fn start(
    State(api): State<Api>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let shape = "an object: {\"dir\": \"candidate/\"} or {\"chains\": {\"name.yaml\": \"chain: …\"}}, with an optional \"by\"";
    let s: Start = object(body, shape)?;
    let dir = match (s.dir, s.chains) {
        (Some(dir), None) => dir,
        (None, Some(chains)) => {
            if chains.is_empty() || chains.len() > MAX_FILES {
                return Err(ApiError::bad_request(format!(
                    "`chains` holds 1 to {MAX_FILES} files"
                )));
            }
            for name in chains.keys() {
                let ok = !name.is_empty()
                    && name.len() <= 255
                    && !name.contains(['/', '\\', '\0'])
                    && !name.starts_with('.')
                    && (name.ends_with(".yaml") || name.ends_with(".yml"))
                    && !crate::rules::is_test_file(std::path::Path::new(name));
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "{name:?} is not a chain file name: a plain `name.yaml`"
                    )));
                }
            }
            api.shadow
                .upload(chains)
                .await
                .map_err(ApiError::unavailable)?
        }
        _ => return Err(ApiError::bad_request(format!("the body must be {shape}"))),
    };
    let origin = Origin {
        dir,
        started_at: crate::engine::clock::wall_ms(),
        started_by: s.by.as_deref().and_then(crate::alarm::operator_name),
    };
    let n = api.shadow.start(origin.clone()).await.map_err(error)?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"running": true, "dir": origin.dir, "chains": n, "started_by": origin.started_by}),
        ),
    ))
}

/// `DELETE /api/shadow`: stops it; 404 when none runs.
pub(super) async fn stop(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    if api.shadow.stop().await {
        Ok(Json(json!({"running": false})))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no shadow runs"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Promote {
    /// Who promotes it.
    by: Option<String>,
}

/// `POST /api/rules/promote` (optional `{"by": "ana"}`): the shadow's chain files become the
/// rules (written into the rules directory, reloaded with state carried); 200 with the
/// promotion; 409 when no shadow runs.
pub(super) async fn promote(
    State(api): State<Api>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let p: Promote = object(
        body,
        "an object naming who promotes: {\"by\": \"ana\"}, or empty",
    )?;
    let done = api
        .shadow
        .promote(p.by.as_deref().and_then(crate::alarm::operator_name))
        .await
        .map_err(error)?;
    Ok(Json(serde_json::to_value(done).unwrap_or_default()))
}
