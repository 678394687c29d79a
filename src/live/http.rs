//! The HTTP API (axum) on one listener: health, status (counters, rules generation, last reload
//! errors, sinks), reload, alarms (list, acknowledge) and the WebSocket hub at `/ws`. With
//! `http.token` set, everything but `/healthz` wants `Authorization: Bearer TOKEN` or
//! `?token=TOKEN` (browsers cannot set headers on a WebSocket).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::reload::{ReloadReport, ReloadStatus};
use super::Stats;

/// A reload asked for (by the API, SIGHUP or the file watcher).
pub struct ReloadReq {
    /// Where the result goes, if anyone waits for it.
    pub reply: Option<oneshot::Sender<ReloadReport>>,
}

/// What the HTTP server serves.
#[derive(Clone)]
pub struct Api {
    /// Counters.
    pub stats: Arc<Stats>,
    /// The rules' reload status.
    pub reload: Arc<Mutex<ReloadStatus>>,
    /// Reload requests.
    pub reload_tx: mpsc::Sender<ReloadReq>,
    /// Shard count.
    pub shards: usize,
    /// The WebSocket hub.
    pub hub: Arc<crate::sinks::hub::Hub>,
    /// The open alarms.
    pub alarms: Arc<crate::engine::registry::AlarmRegistry>,
    /// The InfluxDB writer's counters (the API holds no sender: the sinks close when the
    /// shards stop).
    pub influx: Option<Arc<crate::sinks::influx::InfluxStats>>,
    /// The notification channels' counters.
    pub notify: crate::sinks::notify::NotifyView,
    /// The bearer token, if one is required.
    pub token: Option<Arc<str>>,
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    let Some(want) = api.token.as_deref() else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // `?token=`, percent-decoded (a token may hold characters a URL escapes).
    let query = req.uri().query().and_then(|q| {
        reqwest::Url::parse(&format!("http://x/?{q}"))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let given = header.map(str::to_string).or(query);
    if given.is_some_and(|g| same(g.as_bytes(), want.as_bytes())) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "a token is required: `Authorization: Bearer TOKEN` or `?token=TOKEN` (see `http.token` in the config)"})),
        )
            .into_response()
    }
}

async fn ws(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    up: WebSocketUpgrade,
) -> Response {
    let hub = api.hub.clone();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let scheme = header("x-forwarded-proto").unwrap_or("http");
    if !hub.origin_allowed(header("origin"), header("host"), scheme) {
        hub.stats
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": format!(
                "a page from {} may not open this WebSocket: list it in `websocket.allowed_origins`",
                header("origin").unwrap_or("?")
            )})),
        )
            .into_response();
    }
    match hub.admit() {
        // Small buffers: tungstenite's defaults (128 KiB to read, 128 KiB to write) cost
        // 1.3 GiB at 10,000 clients. Clients send small commands; frames are written as they
        // come (the hub's queue is the buffer, and it is bounded).
        Some(slot) => up
            .max_message_size(64 * 1024)
            .max_frame_size(64 * 1024)
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20)
            .on_upgrade(move |socket| hub.serve(socket, slot)),
        None => {
            let max = hub.max_clients();
            up.on_upgrade(move |mut socket| async move {
                let reason = format!(
                    "the hub is full ({max} clients; websocket.max_clients): try again later"
                );
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1013,
                        reason: reason.into(),
                    })))
                    .await;
            })
        }
    }
}

async fn alarms(State(api): State<Api>) -> Json<Value> {
    let open: Vec<Value> = api.alarms.open(None).iter().map(|a| a.to_json()).collect();
    Json(json!({ "alarms": open }))
}

async fn ack(State(api): State<Api>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    match api.alarms.ack(&id).await {
        Ok(status) => (StatusCode::OK, Json(json!({"alarm": id, "status": status}))),
        Err(e) => {
            use crate::engine::alarm::AckError;
            let code = match e {
                AckError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                AckError::AlreadyAcknowledged(..) => StatusCode::CONFLICT,
                AckError::NotFound(_) => StatusCode::NOT_FOUND,
            };
            (code, Json(json!({"alarm": id, "error": e.to_string()})))
        }
    }
}

/// 200 once ingest is subscribed at the broker and every shard can write its state; 503 while
/// either is not so (a shard that cannot write holds its alarm transitions: not ready).
async fn healthz(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    use std::sync::atomic::Ordering::Relaxed;
    let connected = api.stats.connected.load(Relaxed);
    let failing = api.stats.store_failing.load(Relaxed);
    let code = if connected && failing == 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "mqtt_connected": connected,
            "state_writable": failing == 0,
            "held_effects": api.stats.held_effects.load(Relaxed),
        })),
    )
}

async fn status(State(api): State<Api>) -> Json<Value> {
    let reload = api.reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({
        "rules": reload,
        "shards": api.shards,
        "counters": api.stats.to_json(),
        "influx": api.influx.as_ref().map(|i| i.to_json()),
        "websocket": api.hub.to_json(),
        "notify": api.notify.to_json(),
    }))
}

async fn reload(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    let (tx, rx) = oneshot::channel();
    if api
        .reload_tx
        .send(ReloadReq { reply: Some(tx) })
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "shutting down"})),
        );
    }
    match rx.await {
        Ok(r) => {
            let code = if r.errors.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (code, Json(serde_json::to_value(r).unwrap_or_default()))
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "shutting down"})),
        ),
    }
}

/// Binds the listener (so a taken port fails at start, clearly).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "the HTTP server cannot listen on {addr}: {e} (set `http: {{listen: ADDR}}`, or `off`)"
        )
    })
}

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
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
    limits: Limits,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use std::sync::atomic::Ordering::Relaxed;
    let stats = api.stats.clone();
    let app = router(api);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.http_refused.fetch_add(1, Relaxed);
            // Best effort and never waiting: the socket buffer of a new connection is empty.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
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

fn router(api: Api) -> Router {
    let guarded = Router::new()
        .route("/api/status", get(status))
        .route("/api/reload", post(reload))
        .route("/api/alarms", get(alarms))
        .route("/api/alarms/{id}/ack", post(ack))
        .route("/ws", get(ws))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .with_state(api)
}
