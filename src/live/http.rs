//! The HTTP API (axum): health, status (counters, rules generation, last reload errors) and
//! reload. The WebSocket hub and `/metrics` join it on the same listener.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
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

#[derive(Clone)]
struct Api {
    stats: Arc<Stats>,
    reload: Arc<Mutex<ReloadStatus>>,
    reload_tx: mpsc::Sender<ReloadReq>,
    shards: usize,
}

async fn healthz(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    let connected = api
        .stats
        .connected
        .load(std::sync::atomic::Ordering::Relaxed);
    let code = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"mqtt_connected": connected})))
}

async fn status(State(api): State<Api>) -> Json<Value> {
    let reload = api.reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({
        "rules": reload,
        "shards": api.shards,
        "counters": api.stats.to_json(),
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

/// Serves until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    stats: Arc<Stats>,
    reload_status: Arc<Mutex<ReloadStatus>>,
    reload_tx: mpsc::Sender<ReloadReq>,
    shards: usize,
    mut stop: watch::Receiver<bool>,
) {
    let api = Api {
        stats,
        reload: reload_status,
        reload_tx,
        shards,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/status", get(status))
        .route("/api/reload", post(reload))
        .with_state(api);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!("HTTP server: {e}");
    }
}
