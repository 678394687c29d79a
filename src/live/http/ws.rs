//! `/ws`: the WebSocket hub's door (origin check, the client cap, small buffers).

use super::{Api, ApiError};
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub(super) async fn ws(
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
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a page from {} may not open this WebSocket: list it in `websocket.allowed_origins`",
                header("origin").unwrap_or("?")
            ),
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
