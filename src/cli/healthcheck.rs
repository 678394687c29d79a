//! `rulechain healthcheck [--url URL]`: one plain HTTP GET to a running engine (its `/livez` by
//! default), exit 0 on a 200. The container image's HEALTHCHECK uses it: the runtime image has
//! no shell and no HTTP client.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Runs it: 0 when the URL answers 200, 1 when it answers something else or not at all, 2 for
/// a URL or duration it cannot use.
pub fn run(url: &str, timeout: &str) -> i32 {
    let timeout = match crate::duration::parse(timeout) {
        Ok(ms) if ms > 0 => Duration::from_millis(ms as u64),
        _ => {
            eprintln!("error: `{timeout}` is not a duration (`3s`)");
            return super::EXIT_USAGE;
        }
    };
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("error: `{url}`: only http:// URLs (the engine's own port, inside its host)");
        return super::EXIT_USAGE;
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = match (if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    })
    .to_socket_addrs()
    .ok()
    .and_then(|mut a| a.next())
    {
        Some(a) => a,
        None => {
            eprintln!("error: cannot resolve `{host}`");
            return super::EXIT_USAGE;
        }
    };
    match get(addr, host, &path, timeout) {
        Ok(200) => super::EXIT_OK,
        Ok(code) => {
            eprintln!("{url}: HTTP {code}");
            1
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            1
        }
    }
}

fn get(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}
