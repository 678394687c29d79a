//! In a cluster the API of any instance answers for the whole fleet: a request about one
//! device is handed to the instance that owns the device's partition now (and its answer given
//! back as it is); the device list is this instance's devices merged with every other
//! instance's. A request handed over carries the `x-rulechain-forwarded` header and is answered
//! by its receiver alone, never handed on (two instances that briefly disagree about an owner
//! cannot pass a request back and forth).

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Api, ApiError, MAX_BODY};
use crate::live::cluster::FORWARDED;

/// The client for requests to the other instances.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    })
}

/// Middleware of the per-device routes: a device of another instance is that instance's to
/// answer.
pub(super) async fn per_device(
    State(api): State<Api>,
    Path(device): Path<String>,
    req: Request,
    next: Next,
) -> Response {
    let Some(view) = &api.cluster else {
        return next.run(req).await;
    };
    if super::forwarded(req.headers()) {
        return next.run(req).await;
    }
    if api.shards.is_here(&device) {
        return next.run(req).await;
    }
    let Some((owner, http)) = view.owner_http(&device) else {
        return ApiError::unavailable(
            "the device's partition is between owners (a move or a failover): try again in a moment",
        )
        .into_response();
    };
    match proxy(&http, req).await {
        Ok(r) => r,
        Err(e) => ApiError::unavailable(format!(
            "the instance that owns the device ({owner}) did not answer: {e}"
        ))
        .into_response(),
    }
}

/// Sends `req` to the instance at `http` as a forwarded request; its answer as it came.
async fn proxy(http: &str, req: Request) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| e.to_string())?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method =
        reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut r = client()
        .request(method, format!("http://{http}{path}"))
        .header(FORWARDED, "1");
    for name in ["authorization", "content-type"] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            r = r.header(name, v);
        }
    }
    let resp = r
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| crate::sinks::http_error_text(&e))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, [("content-type", ctype)], Body::from(bytes)).into_response())
}

/// The other instances' device lists for the same question (each its own devices), to merge:
/// their totals and rows. An instance that does not answer is named in `unreachable`.
pub(super) async fn peer_lists(
    api: &Api,
    query: &str,
    token: Option<&str>,
) -> (usize, Vec<Value>, Vec<String>) {
    let answers = broadcast(
        api,
        reqwest::Method::GET,
        &format!("/api/devices?{query}"),
        None,
        token,
    )
    .await;
    let mut total = 0;
    let mut rows = Vec::new();
    let mut unreachable = Vec::new();
    for (name, answer) in answers {
        match answer {
            Some(v) => {
                total += v["total"].as_u64().unwrap_or(0) as usize;
                if let Some(r) = v["devices"].as_array() {
                    rows.extend(r.iter().cloned());
                }
            }
            None => unreachable.push(name),
        }
    }
    (total, rows, unreachable)
}

/// Sends the same request to every other instance (forwarded: each answers for itself) and
/// gives each one's JSON answer, or None for one that did not answer.
pub(super) async fn broadcast(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Vec<(String, Option<Value>)> {
    let Some(view) = &api.cluster else {
        return Vec::new();
    };
    let asks = view.peers().into_iter().map(|(name, http)| {
        let mut r = client()
            .request(method.clone(), format!("http://{http}{path}"))
            .header(FORWARDED, "1");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = &body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        async move {
            let answer = async {
                let resp = r.send().await.ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                serde_json::from_slice::<Value>(&resp.bytes().await.ok()?).ok()
            }
            .await;
            (name, answer)
        }
    });
    futures_join(asks).await
}

/// Runs the futures at once, their results in order.
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
