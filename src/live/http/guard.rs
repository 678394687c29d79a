//! What a web page in the operator's browser must not do to the API: the default `run` has no
//! token and listens on loopback, so the browser is the way in, and a page from any site can
//! send it requests.
//!
//! - **Cross-site requests** (`fetch(…, {mode: "no-cors", method: "POST"})` with a `text/plain`
//!   body needs no preflight): a request that changes state is refused when its `Origin` is
//!   another site (`websocket.allowed_origins` lists the ones allowed), and its body, if any,
//!   must be declared with a content type a page can only send after a CORS preflight, which
//!   the API never answers (`application/json`; `text/yaml` for a chain file).
//! - **DNS rebinding** (a page whose own name now resolves to 127.0.0.1 is same-origin with the
//!   API under that name): without a token, a request must name an IP address, `localhost` or
//!   a host listed in `http.allowed_hosts` in its `Host`. With a token the page cannot
//!   authenticate anyway (the token is never in a cookie), so any name is fine.
//!
//! The probes (`/livez`, `/readyz`, `/healthz`) are not checked: orchestrators call them by
//! whatever name or address they know.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Api, ApiError};

pub(super) async fn guard(State(api): State<Api>, req: Request, next: Next) -> Response {
    match check(&api, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check(api: &Api, req: &Request) -> Result<(), ApiError> {
    if matches!(req.uri().path(), "/livez" | "/readyz" | "/healthz") {
        return Ok(());
    }
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST);
    if api.token.is_none() {
        if let Some(host) = host {
            if !host_allowed(host, &api.allowed_hosts) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this server does not answer to the name `{}` without a token: add it to `http.allowed_hosts`, or set `http.token`",
                        host_name(host)
                    ),
                ));
            }
        }
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !changes {
        return Ok(());
    }
    let scheme = h
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    if let Some(origin) = text(header::ORIGIN) {
        if !api.hub.origin_allowed(Some(origin), host, scheme) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "a page from {origin} may not change anything here: list it in `websocket.allowed_origins`"
                ),
            ));
        }
    }
    let has_body = h
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || h.contains_key(header::TRANSFER_ENCODING);
    if has_body && simple_type(text(header::CONTENT_TYPE)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "say what the body is: send `content-type: application/json` (`text/yaml` for a chain file)",
        ));
    }
    Ok(())
}

/// No content type, or one a page may send to another site without asking first (the CORS
/// "simple" types): a body declared so is refused. Every route reads JSON, but for
/// `/api/rules/validate`'s chain text (`text/yaml`).
fn simple_type(content_type: Option<&str>) -> bool {
    let Some(t) = content_type else {
        return true;
    };
    let t = t.split(';').next().unwrap_or("").trim();
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "",
    ]
    .iter()
    .any(|s| s.eq_ignore_ascii_case(t))
}

/// The name in a `Host` header, without its port (`[::1]:8080` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// An IP address, `localhost`, or a listed name (a rebinding attack needs a name of its own).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name) || a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_name_are_refused_unless_listed() {
        let listed = vec!["rulechain.example.com".to_string()];
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "10.1.2.3:80",
            "localhost:8080",
            "LOCALHOST",
            "rulechain.example.com:8080",
            "rulechain.example.com",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
        ] {
            assert!(!host_allowed(bad, &listed), "{bad}");
        }
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("a.b:80"), "a.b");
    }

    #[test]
    fn bodies_a_page_may_send_anywhere_are_refused() {
        for simple in [
            None,
            Some("text/plain"),
            Some("TEXT/PLAIN; charset=utf-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            assert!(simple_type(simple), "{simple:?}");
        }
        for asked in [
            "application/json",
            "application/json; charset=utf-8",
            "text/yaml",
        ] {
            assert!(!simple_type(Some(asked)), "{asked}");
        }
    }
}
