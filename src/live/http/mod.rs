//! The HTTP API (axum) on one listener, one file per concern:
//! - `health.rs`: `/livez`, `/readyz`, `/healthz`, `/api/status`, `/metrics`;
//! - `devices.rs`: `/api/devices…` (list, one device, server-side attributes, recent values);
//! - `rules.rs`: `/api/chains`, `/api/reload`, `/api/rules/validate`;
//! - `trace.rs`: `/api/trace` (start, stop and read a live trace);
//! - `alarms.rs`: `/api/alarms…` (filtered list, acknowledge, clear by hand, by whom);
//! - `ws.rs`: the WebSocket hub at `/ws`;
//! - `guard.rs`: what a web page may not do (cross-site changes, DNS rebinding);
//! - `assets.rs`: the dashboard at `/` (its files compiled in from `web/`).
//!
//! The routes are described in `docs/openapi.yaml` (a test walks every one of them). With
//! `http.token` set, everything but `/livez`, `/readyz`, `/healthz` and the dashboard's files
//! wants `Authorization:
//! Bearer TOKEN` or `?token=TOKEN` (browsers cannot set headers on a WebSocket). Every error is
//! JSON `{error, detail}`.

mod alarms;
mod assets;
mod devices;
mod fleet;
mod guard;
mod health;
mod rules;
mod shadow;
mod silences;
mod trace;
mod ws;

use crate::live::cluster::FORWARDED;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use super::reload::{ReloadReq, ReloadStatus};
use super::shards::{Shards, Unreachable};
use super::Stats;
use crate::engine::stats::RuleStats;

/// What the HTTP server serves.
#[derive(Clone)]
pub struct Api {
    /// Counters.
    pub stats: Arc<Stats>,
    /// The rules' reload status.
    pub reload: Arc<Mutex<ReloadStatus>>,
    /// Reload requests.
    pub reload_tx: mpsc::Sender<ReloadReq>,
    /// The road to the shards, to ask them about their devices.
    pub shards: Shards,
    /// Each shard's chain and node counters.
    pub rule_stats: Vec<Arc<RuleStats>>,
    /// The WebSocket hub.
    pub hub: Arc<crate::sinks::hub::Hub>,
    /// The open alarms.
    pub alarms: Arc<crate::alarm::registry::AlarmRegistry>,
    /// The InfluxDB writer's counters (the API holds no sender: the sinks close when the
    /// shards stop).
    pub influx: Option<Arc<crate::sinks::influx::InfluxStats>>,
    /// The notification channels' counters.
    pub notify: crate::sinks::notify::NotifyView,
    /// The bearer token, if one is required.
    pub token: Option<Arc<str>>,
    /// Host names answered besides IP addresses and `localhost`, without a token.
    pub allowed_hosts: Arc<[String]>,
    /// The config the rules compile with (`/api/rules/validate` checks a chain as a reload
    /// would).
    pub config: Option<Arc<crate::config::Config>>,
    /// When the engine started.
    pub started: std::time::Instant,
    /// The live trace.
    pub tracer: Arc<super::trace::Tracer>,
    /// The last device list answered (`GET /api/devices`, see there).
    pub device_list: devices::ListCache,
    /// In a cluster: the cluster as this instance sees it.
    pub cluster: Option<crate::live::cluster::View>,
    /// Shadow mode.
    pub shadow: Arc<crate::live::shadows::Shadows>,
}

/// Most bytes of a request body (a chain file, attributes); past it, 413 before it is read
/// whole.
pub const MAX_BODY: usize = 1 << 20;

/// How long a shard may take to answer the API (a shard holding its output while its state
/// cannot be written still answers; one stuck in a long Rhai evaluation may not).
pub(super) const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// An error answer: JSON `{error, detail}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    detail: serde_json::Value,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            detail: serde_json::Value::Null,
        }
    }

    /// Adds details (what was wrong, where).
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// 400.
    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }

    /// 404.
    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }

    /// 503: shutting down, or a shard did not answer.
    pub fn unavailable(error: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response()
    }
}

/// A JSON body that failed to read: too large (413), not JSON (400), the wrong shape (422),
/// not declared JSON (415). Its text says what and where.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        let status = r.status();
        let error = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!("the body is larger than {MAX_BODY} bytes"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "the body must be JSON: send `content-type: application/json`".to_string()
            }
            _ => "the body is not what this route takes".to_string(),
        };
        ApiError::new(status, error).detail(r.body_text().into())
    }
}

/// A query string that failed to read (400), saying which parameter.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request("bad query parameters").detail(r.body_text().into())
    }
}

impl Api {
    /// Asks shard `shard`, and waits for its answer (bounded by [`ASK_TIMEOUT`]).
    async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> super::devices::Ask,
    ) -> Result<T, ApiError> {
        self.shards
            .ask(shard, make, ASK_TIMEOUT)
            .await
            .map_err(unreachable)
    }

    /// Asks the shard that owns `device`.
    async fn ask_owner<T>(
        &self,
        device: &str,
        make: impl FnOnce(oneshot::Sender<T>) -> super::devices::Ask,
    ) -> Result<T, ApiError> {
        self.ask(self.shards.shard_of(device), make).await
    }
}

/// Whether another instance of the cluster handed this request over.
pub(crate) fn forwarded(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Whether a request is to be carried on to the other instances of a cluster: in a cluster,
/// and not itself carried on from one.
pub(super) fn asks_fleet(api: &Api, headers: &axum::http::HeaderMap) -> bool {
    api.cluster.is_some() && !forwarded(headers)
}

/// Why a shard did not answer, as the API's error.
fn unreachable(e: Unreachable) -> ApiError {
    match e {
        Unreachable::Gone => ApiError::unavailable("shutting down"),
        Unreachable::Busy => ApiError::unavailable("a shard is busy: try again"),
        Unreachable::Elsewhere => ApiError::unavailable(
            "the device's partition is served by another instance of the cluster now: ask that one (GET /api/cluster names it)",
        ),
    }
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request gives: `Authorization: Bearer`, or `?token=` percent-decoded (a token
/// may hold characters a URL escapes). A cluster member carries it on to the others.
pub(super) fn given_token(
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> Option<String> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    header.or_else(|| {
        uri.query().and_then(|q| {
            reqwest::Url::parse(&format!("http://x/?{q}"))
                .ok()?
                .query_pairs()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
    })
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    let Some(want) = api.token.as_deref() else {
        return next.run(req).await;
    };
    let given = given_token(req.headers(), req.uri());
    if given.is_some_and(|g| same(g.as_bytes(), want.as_bytes())) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a token is required: `Authorization: Bearer TOKEN` or `?token=TOKEN` (see `http.token` in the config)",
        )
        .into_response()
    }
}

/// Binds the listener (so a taken port fails at start, clearly).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "the HTTP server cannot listen on {addr}: {e} (move it with `rulechain run --http-listen 127.0.0.1:PORT`, or `http: {{listen: ADDR}}` in a config, or `off`)"
        )
    })
}

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections at once (a WebSocket leaves this count once upgraded: the hub counts
    /// it against `websocket.max_clients`).
    pub max_connections: usize,
    /// How long a request's headers may take to arrive, and how long an idle keep-alive
    /// connection stays open.
    pub header_timeout: std::time::Duration,
}

/// Serves until `stop` turns true. The accept loop is our own rather than `axum::serve`, for
/// two limits that one has no setting for: a header-read timeout (an idle or slow connection is
/// closed, so idle sockets cannot pile up) and a cap on connections below the open-files limit
/// (past it a new connection is answered 503 and closed at once, so the engine keeps file
/// descriptors for its broker connections, its state file and its sinks).
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use std::sync::atomic::Ordering::Relaxed;
    let stats = api.stats.clone();
    let probes = probe_router(api.clone());
    let app = router(api);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Past `max_connections`, a few more connections are served the probes only: an
    // orchestrator must still see the engine alive while clients hold every slot.
    let reserve = Arc::new(tokio::sync::Semaphore::new(PROBE_RESERVE));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut accept_errors = 0u32;
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: wait, do not spin.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::error!("HTTP accept: {e}");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (slot, app) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, app.clone()),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(slot) => {
                    stats.http_refused.fetch_add(1, Relaxed);
                    (slot, probes.clone())
                }
                Err(_) => {
                    stats.http_refused.fetch_add(1, Relaxed);
                    // Best effort and never waiting: the socket buffer of a new connection is
                    // empty.
                    let _ = stream.try_write(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app);
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    let _ = closing_tx.send(true);
}

/// Connections served past `max_connections`, for the probes only.
const PROBE_RESERVE: usize = 4;

/// What a connection past `max_connections` is served: the probes, and 503 for the rest.
fn probe_router(api: Api) -> Router {
    Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/healthz", get(health::healthz))
        .fallback(|| async {
            ApiError::unavailable(
                "too many connections (`http.max_connections`): only the probes are answered now",
            )
        })
        .with_state(api)
}

fn router(api: Api) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/api/status", get(health::status))
        .route("/api/cluster", get(health::cluster))
        .route("/api/reload", post(rules::reload))
        .route("/api/chains", get(rules::chains))
        .route("/api/rules/validate", post(rules::validate))
        .route("/api/rules/promote", post(shadow::promote))
        .route(
            "/api/shadow",
            get(shadow::read).post(shadow::start).delete(shadow::stop),
        )
        .route("/api/alarms", get(alarms::list))
        .route("/api/alarms/{id}/ack", post(alarms::ack))
        .route("/api/alarms/{id}/clear", post(alarms::clear))
        .route("/api/alarms/{id}/history", get(alarms::history))
        .route("/api/alarms/{id}/comments", post(alarms::comment))
        .route("/api/silences", get(silences::list).post(silences::add))
        .route(
            "/api/silences/{id}",
            get(silences::one).delete(silences::expire),
        )
        .route("/api/devices", get(devices::list))
        .merge(
            Router::new()
                .route("/api/devices/{id}", get(devices::one))
                .route("/api/devices/{id}/attributes", put(devices::set_attributes))
                .route("/api/devices/{id}/history", get(devices::history))
                .route_layer(axum::middleware::from_fn_with_state(
                    api.clone(),
                    fleet::per_device,
                )),
        )
        .route(
            "/api/trace",
            post(trace::start).get(trace::read).delete(trace::stop),
        )
        .route("/ws", get(ws::ws))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/healthz", get(health::healthz))
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            guard::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}: see docs/openapi.yaml", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not a method of {}: see docs/openapi.yaml",
            uri.path()
        ),
    )
}
