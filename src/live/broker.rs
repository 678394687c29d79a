//! The embedded MQTT broker (rumqttd, behind the default cargo feature `embedded-broker`): what
//! makes `rulechain run` work with nothing installed. It listens on loopback by default, speaks
//! MQTT 3.1.1, and lives as long as the process (rumqttd has no shutdown API). The engine itself
//! is attached to it in process, through rumqttd's local links ([`super::local`]): no socket
//! between the broker and the rules.
//!
//! rumqttd keeps every message in a commit log per subscription filter (and per topic that no
//! filter matches) and frees it only when the log rotates, read or not: the log's size is the
//! broker's memory. Every log is bounded ([`LOG_SEGMENTS`] segments of [`LOG_SEGMENT_BYTES`]; the
//! engine's own filters [`ENGINE_LOG_SEGMENT_BYTES`], the backlog it may fall behind by in a
//! burst); a subscriber that falls further behind than its log skips to the oldest message kept
//! (the engine counts what it skipped: `broker_dropped`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The engine's links to the embedded broker, and the tasks that use them.
#[cfg(feature = "embedded-broker")]
pub use super::local::{
    egress as local_egress, ingest as local_ingest, EgressLink, IngestLinks, Links,
};

#[cfg(not(feature = "embedded-broker"))]
pub use no_links::*;

/// Without the feature there is no embedded broker, and no links to it: these types have no
/// values, so the code that would use them is never reached.
#[cfg(not(feature = "embedded-broker"))]
mod no_links {
    use std::sync::Arc;

    use tokio::sync::{mpsc, watch};
    use tokio::task::JoinHandle;

    use crate::live::shard::ShardMsg;
    use crate::live::{publisher::Queue, RateLimit, Stats};
    use crate::topic::TopicPattern;

    /// No links.
    pub enum Links {}
    /// No ingest links.
    pub enum IngestLinks {}
    /// No egress link.
    pub enum EgressLink {}

    impl Links {
        /// Never called.
        pub fn split(self) -> (IngestLinks, EgressLink) {
            match self {}
        }
    }

    /// Never called.
    pub fn local_ingest(
        links: IngestLinks,
        _: &[TopicPattern],
        _: &[mpsc::Sender<ShardMsg>],
        _: &Arc<Stats>,
        _: &Arc<RateLimit>,
        _: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        match links {}
    }

    /// Never called.
    pub fn local_egress(link: EgressLink, _: Queue, _: Arc<RateLimit>) -> JoinHandle<()> {
        match link {}
    }
}

/// Bytes (topics and payloads, as rumqttd counts them) in one segment of a commit log: 4 such
/// segments hold some 35,000 telemetry-sized messages (~110 bytes counted), for a device's
/// commands, a dashboard's subscription or a topic nobody subscribed to. In memory a message
/// costs ~5 times what is counted (rumqttd's record of it, ~250 bytes, in a vector that doubles
/// as it grows): a full log of 4 MiB counted takes ~20 MiB.
pub const LOG_SEGMENT_BYTES: usize = 1024 * 1024;

/// A segment of the logs of the engine's own subscription filters: 4 hold some 70,000 telemetry
/// messages, the backlog the engine may fall behind by in a burst before the broker skips
/// messages for it. With 4 MiB segments the broker's peak RSS in a 400,000-message flood was
/// 136–143 MiB against 96–98 MiB with these, for 254k against 316k messages skipped (the engine
/// drains ~60k msg/s there, the generator sends several times that; BENCHMARKS.md).
pub const ENGINE_LOG_SEGMENT_BYTES: usize = 2 * 1024 * 1024;

/// Segments a commit log keeps. rumqttd's own default (10 × 100 MiB for every filter) let the
/// broker grow to 0.5–1.3 GiB in a 400,000-message flood.
pub const LOG_SEGMENTS: usize = 4;

/// Starts the broker on `listen`, waits until it accepts connections, and attaches the engine:
/// one local link per subscription filter of `filters` for ingest, one for egress.
#[cfg(feature = "embedded-broker")]
pub fn start(listen: SocketAddr, filters: &[String]) -> Result<super::local::Links, String> {
    use rumqttd::local::LinkBuilder;
    use rumqttd::protocol::v4::V4;
    use rumqttd::{
        ConnectionSettings, LinkType, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
    };

    // Refuse early and clearly when the port is taken (rumqttd would only log it).
    match std::net::TcpListener::bind(listen) {
        Ok(l) => drop(l),
        Err(e) => {
            return Err(format!(
                "the embedded broker cannot listen on {listen}: {e}. Another broker may be running there: \
                 move the embedded one with `rulechain run --mqtt-listen 127.0.0.1:PORT` (or \
                 `embedded_broker: {{listen: 127.0.0.1:PORT}}` in a config), or point rulechain at that \
                 broker with `mqtt: {{url: mqtt://{listen}}}` in a config"
            ))
        }
    }
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: super::link::MAX_OUTGOING_PACKET,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let router = RouterConfig {
        max_connections: 10_010,
        max_outgoing_packet_count: 500,
        max_segment_size: LOG_SEGMENT_BYTES,
        max_segment_count: LOG_SEGMENTS,
        custom_segment: Some(
            filters
                .iter()
                .map(|f| {
                    let c = SegmentConfig {
                        max_segment_size: ENGINE_LOG_SEGMENT_BYTES,
                        max_segment_count: LOG_SEGMENTS,
                    };
                    (f.clone(), c)
                })
                .collect(),
        ),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    // The router and the listener are started here rather than through `rumqttd::Broker`, whose
    // local links cannot publish to a topic no filter matches (the router disconnects them):
    // the engine's egress link is built with dynamic filters, as network clients are.
    let router_tx = Router::new(0, router).spawn();
    let link_tx = router_tx.clone();
    let links = super::local::Links::attach(filters, move |id, dynamic| {
        LinkBuilder::new(id, link_tx.clone())
            .dynamic_filters(dynamic)
            .build()
            .map(|(tx, rx, _connack)| (tx, rx))
            .map_err(|e| format!("cannot attach to the embedded broker: {e}"))
    })?;
    let mut listener = Server::new(server, router_tx, V4);
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(listener.start(LinkType::Remote)) {
                        tracing::error!("embedded broker stopped: {e}");
                    }
                }
                Err(e) => tracing::error!("the embedded broker cannot start its runtime: {e}"),
            }
        })
        .map_err(|e| format!("cannot start the embedded broker: {e}"))?;
    wait_for(listen)?;
    if !nodelay_on_listener(listen) {
        tracing::debug!(%listen, "could not set TCP_NODELAY on the embedded broker's listener");
    }
    Ok(links)
}

/// Sets TCP_NODELAY on the listening socket bound to `listen` in this process (rumqttd's);
/// true when it found it.
///
/// rumqttd 0.20 does not set TCP_NODELAY on the connections it accepts and has no hook to do
/// so: every small write to a device or subscriber then waits behind Nagle's algorithm for the
/// peer's delayed ACK (up to 40 ms on Linux). That was the embedded broker's latency: p50
/// 2–14 ms and p99 up to 40 ms at 10–40k msg/s, where the same path with the option set has
/// sub-millisecond p50 (BENCHMARKS.md). Linux copies TCP_NODELAY from a listening socket to
/// every socket it accepts, so setting it once on the listener (found among the process's file
/// descriptors by its address) covers every later connection.
#[cfg(all(feature = "embedded-broker", target_os = "linux"))]
fn nodelay_on_listener(listen: SocketAddr) -> bool {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    let fds: Vec<i32> = fds
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.into_iter()
        .any(|fd| is_listener_on(fd, listen) && set_nodelay(fd))
}

#[cfg(all(feature = "embedded-broker", not(target_os = "linux")))]
fn nodelay_on_listener(_listen: SocketAddr) -> bool {
    false
}

/// `fd` is a listening socket bound to `addr`.
#[cfg(all(feature = "embedded-broker", target_os = "linux"))]
fn is_listener_on(fd: i32, addr: SocketAddr) -> bool {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`; any fd number is allowed
    // (a non-socket or closed one fails with an error).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || accepting == 0 {
        return false;
    }
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname writes at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    let r = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return false;
    }
    let bound = match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            SocketAddr::from((
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            ))
        }
        _ => return false,
    };
    bound == addr
}

#[cfg(all(feature = "embedded-broker", target_os = "linux"))]
fn set_nodelay(fd: i32) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `on`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Without the feature there is no embedded broker: say how to get one.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(listen: SocketAddr, _filters: &[String]) -> Result<Links, String> {
    Err(format!(
        "no `mqtt:` broker is configured and this build has no embedded broker (feature \
         `embedded-broker`): configure `mqtt: {{url: mqtt://HOST:1883}}`, or rebuild with the \
         default features (it would listen on {listen})"
    ))
}

/// Waits until something accepts TCP connections on `addr` (at most 5 s).
pub fn wait_for(addr: SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the embedded broker did not start listening on {addr}"
    ))
}

#[cfg(all(test, feature = "embedded-broker", target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn connections_accepted_after_the_listener_gets_nodelay_have_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let before = std::net::TcpStream::connect(addr).unwrap();
        let (accepted_before, _) = l.accept().unwrap();
        assert!(
            !accepted_before.nodelay().unwrap(),
            "the default is Nagle's algorithm"
        );
        // Another address is not touched; this one is found by its address.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(nodelay_on_listener(addr));
        let _after = std::net::TcpStream::connect(addr).unwrap();
        let (accepted_after, _) = l.accept().unwrap();
        assert!(accepted_after.nodelay().unwrap());
        let _c = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (accepted_other, _) = other.accept().unwrap();
        assert!(!accepted_other.nodelay().unwrap());
        drop(before);
    }
}
