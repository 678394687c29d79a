//! The dashboard at `/`: its page, script and style, and the vendored uPlot (MIT, its licence
//! in `web/vendor/uplot/LICENSE`), compiled into the binary from `web/`. No build step and no
//! node for users; the files are served as they are in the repository.
//!
//! The page is open (it holds no data); every request it makes goes through the API and its
//! token. A content security policy allows scripts and styles from this origin only, so a
//! device id that carries markup cannot run even if some code put it in as HTML.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// (name, content type, bytes).
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../../../web/vendor/uplot/LICENSE"),
    ),
];

const INDEX: &str = include_str!("../../../web/index.html");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard.
pub(super) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{file}`.
pub(super) async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, body)| file(ct, body))
        .ok_or_else(|| ApiError::not_found(format!("no dashboard file {name:?}")))
}
