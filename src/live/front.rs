//! The embedded broker's network side: the listener, and one task per MQTT connection between
//! its socket and rumqttd's router (feature `embedded-broker`).
//!
//! rumqttd's own listener reads every client's socket as fast as the client writes, and the
//! router frees its commit logs by size, read or not: in a burst faster than the rules, the
//! engine fell behind its log and the broker skipped most of the burst for it (a 400,000-message
//! flood delivered ~100k). rumqttd has no hook to slow a publisher, so rulechain runs its own
//! listener on rumqttd's public parts (its MQTT 3.1.1 codec, and a link to the router per
//! connection, as rumqttd's listener makes) and applies **backpressure**:
//!
//! - Every publish that enters the router is counted against the engine's subscription filters
//!   it matches ([`Backlog`]); the engine's ingest links count what they took.
//! - When the engine is behind a filter's log by a quarter of what the log holds, the gate
//!   closes: no connection reads its socket until the engine is only an eighth behind. A publisher's
//!   writes then wait in TCP (its socket buffers fill and it blocks), as with any broker that
//!   bounds a client's queue; nothing is skipped and the broker's memory stays bounded.
//! - Deliveries to subscribers go on while the gate is closed, and a connection's keep-alive
//!   does not count the time it was held.
//!
//! The rest is what rumqttd's listener does: a CONNECT within [`CONNECT_TIMEOUT`], then packets
//! to and from the router. Differences: keep-alive 0 is accepted (no timeout, as MQTT
//! allows); client ids starting with `rulechain-engine-` or `rulechain-broker-` are refused
//! (the engine's own links, which a device must not take over); a
//! client's will is kept here and published when its connection ends without a DISCONNECT,
//! or when another connection with its client id took over (rumqttd's router publishes a will
//! only on an event its public interface cannot send).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol, QoS,
};
use rumqttd::Notification;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::RateLimit;

/// How long a new connection has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Packets handed to the router at most in one go, as rumqttd's listener does.
const BATCH: usize = 500;

/// What a socket read asks for at least: one read brings at most this much more than the
/// packet being read needs, so a gate that closes stops intake within one read per connection.
/// It is also what a connection's read buffer costs (the messages decoded from it share it
/// while the broker keeps them): 8 KiB, so 10,000 publishing devices cost ~80 MiB at most, as
/// rumqttd's own listener (10 KiB) did.
const READ_CHUNK: usize = 8 * 1024;

/// Client ids a network client may not use: the engine's links to the router.
const RESERVED_PREFIXES: [&str; 2] = ["rulechain-engine-", "rulechain-broker-"];

/// The link that publishes wills.
const WILLS_ID: &str = "rulechain-broker-wills";

/// Makes a link to the router: (client id, clean session) → its ends and the router's CONNACK.
pub type Connect =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// How far the engine is behind in the router's logs of its subscription filters, and the gate
/// that holds the broker's intake while it is too far.
pub struct Backlog {
    filters: Vec<Filter>,
    logs: Vec<LogCount>,
    /// Bytes behind (estimated) at which the gate closes.
    high: u64,
    /// … and at which it opens again.
    low: u64,
    closed: watch::Sender<bool>,
}

/// One filter's log: messages (and their bytes) that entered it, and messages the engine took
/// from it (or the router skipped for it).
#[derive(Default)]
struct LogCount {
    entered: AtomicU64,
    entered_bytes: AtomicU64,
    taken: AtomicU64,
}

impl Backlog {
    /// For the engine's subscription `filters`, each of whose logs holds `log_bytes`: the gate
    /// closes at a quarter of that behind and opens at an eighth. Lower marks keep less in the
    /// broker's memory and cost nothing in speed: in a 400,000-message flood, a log of 4 × 1 MiB
    /// with these marks peaked at 81–89 MiB of RSS and drained at 301–336k msg/s, where 4 × 2 MiB
    /// closing at a half peaked at 118–121 MiB and drained at 245–302k msg/s (BENCHMARKS.md).
    pub fn new(filters: &[String], log_bytes: usize) -> Backlog {
        let log_bytes = log_bytes as u64;
        Backlog {
            filters: filters.iter().map(|f| Filter::new(f)).collect(),
            logs: filters.iter().map(|_| LogCount::default()).collect(),
            high: log_bytes / 4,
            low: log_bytes / 8,
            closed: watch::channel(false).0,
        }
    }

    /// A publish on `topic` with a payload of `payload` bytes enters the router.
    pub fn entered(&self, topic: &[u8], payload: usize) {
        // rumqttd counts a message's bytes as its topic and payload.
        let bytes = (topic.len() + payload) as u64;
        for (filter, log) in self.filters.iter().zip(&self.logs) {
            if filter.matches(topic) {
                log.entered.fetch_add(1, Relaxed);
                log.entered_bytes.fetch_add(bytes, Relaxed);
            }
        }
    }

    /// After publishes entered: closes the gate if the engine is too far behind.
    pub fn check(&self) {
        if !*self.closed.borrow() && self.behind() >= self.high {
            self.closed.send_replace(true);
        }
    }

    /// The engine took `n` messages of filter `i`'s log (or the router skipped them for it):
    /// opens the gate once it is close enough behind.
    pub fn taken(&self, i: usize, n: u64) {
        if let Some(log) = self.logs.get(i) {
            log.taken.fetch_add(n, Relaxed);
        }
        if *self.closed.borrow() && self.behind() <= self.low {
            self.closed.send_replace(false);
        }
    }

    /// The engine's link to filter `i` starts over (attached again: it reads on from the log's
    /// end) or found nothing more to read: what entered before counts as taken.
    pub fn caught_up(&self, i: usize) {
        if let Some(log) = self.logs.get(i) {
            log.taken.store(log.entered.load(Relaxed), Relaxed);
        }
        self.taken(i, 0);
    }

    /// The gate is closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Bytes the engine is behind (estimated) in the log it is furthest behind in.
    pub fn behind(&self) -> u64 {
        self.logs.iter().map(LogCount::behind).max().unwrap_or(0)
    }

    /// Messages the engine is behind in filter `i`'s log.
    pub fn messages_behind(&self, i: usize) -> u64 {
        self.logs.get(i).map_or(0, |l| {
            l.entered
                .load(Relaxed)
                .saturating_sub(l.taken.load(Relaxed))
        })
    }

    fn watch(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

/// An MQTT filter, split into its levels once: counting a publish against the engine's filters
/// is on the broker's path for every message (matching the filter's text, split on a `char`
/// every time, cost ~9% of the process at 100k msg/s).
struct Filter {
    levels: Vec<FilterLevel>,
}

enum FilterLevel {
    Literal(Vec<u8>),
    /// `+`
    One,
    /// `#` (always the last level)
    Rest,
}

impl Filter {
    fn new(text: &str) -> Filter {
        let levels = text
            .split('/')
            .map(|l| match l {
                "+" => FilterLevel::One,
                "#" => FilterLevel::Rest,
                l => FilterLevel::Literal(l.as_bytes().to_vec()),
            })
            .collect();
        Filter { levels }
    }

    /// As [`crate::topic::filter_matches`], on the topic's bytes.
    fn matches(&self, topic: &[u8]) -> bool {
        // MQTT 3.1.1 §4.7.2: a filter that starts with a wildcard does not match `$` topics.
        if topic.first() == Some(&b'$')
            && matches!(
                self.levels.first(),
                Some(FilterLevel::One | FilterLevel::Rest)
            )
        {
            return false;
        }
        let mut t = topic.split(|&b| b == b'/');
        for f in &self.levels {
            match (f, t.next()) {
                (FilterLevel::Rest, _) => return true,
                (FilterLevel::One, Some(_)) => {}
                (FilterLevel::Literal(f), Some(l)) if f.as_slice() == l => {}
                _ => return false,
            }
        }
        t.next().is_none()
    }
}

impl LogCount {
    /// Messages behind times the average message's bytes.
    fn behind(&self) -> u64 {
        let entered = self.entered.load(Relaxed);
        let behind = entered.saturating_sub(self.taken.load(Relaxed));
        if behind == 0 {
            return 0;
        }
        let avg = self.entered_bytes.load(Relaxed) / entered.max(1);
        behind.saturating_mul(avg.max(1))
    }
}

/// What every connection shares.
struct Shared {
    connect: Arc<Connect>,
    backlog: Arc<Backlog>,
    wills: Wills,
    limit: RateLimit,
    /// Names a client that connected with an empty client id.
    assigned: AtomicU64,
}

/// Accepts MQTT connections on `listener` until the process ends.
pub async fn serve(listener: std::net::TcpListener, connect: Arc<Connect>, backlog: Arc<Backlog>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("the embedded broker cannot listen: {e}");
            return;
        }
    };
    let shared = Arc::new(Shared {
        wills: Wills::new(connect.clone()),
        connect,
        backlog,
        limit: RateLimit::new(5),
        assigned: AtomicU64::new(0),
    });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &shared).await {
                        tracing::debug!(%peer, "embedded broker connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, typically: wait, rather than retry at once.
                if shared.limit.allow() {
                    tracing::warn!("the embedded broker cannot accept a connection: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How a connection ended.
enum End {
    /// The client sent DISCONNECT: no will.
    Graceful,
    /// The socket closed, failed or timed out, or the client broke the protocol.
    Lost(String),
    /// The router dropped the link (another connection took the client id over).
    TakenOver,
}

/// One connection, from its CONNECT to its end.
async fn connection(mut stream: TcpStream, shared: &Shared) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut read = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut stream, &mut read))
        .await
        .map_err(|_| "no CONNECT in time".to_string())??;
    let Packet::Connect(connect, _, will, _, _) = first else {
        return Err("the first packet was not a CONNECT".into());
    };
    let mut client_id = connect.client_id.clone();
    if client_id.is_empty() {
        if !connect.clean_session {
            refuse(&mut stream, ConnectReturnCode::ClientIdentifierNotValid).await;
            return Err("a persistent session needs a client id".into());
        }
        let n = shared.assigned.fetch_add(1, Relaxed);
        client_id = format!("auto-{}-{n}", std::process::id());
    } else if RESERVED_PREFIXES.iter().any(|p| client_id.starts_with(p)) {
        refuse(&mut stream, ConnectReturnCode::ClientIdentifierNotValid).await;
        return Err(format!(
            "client id `{client_id}` refused: ids starting with {RESERVED_PREFIXES:?} are the engine's own"
        ));
    }
    // The router answers at once; this holds the broker's thread only that long.
    let (mut tx, mut rx, ack) = match (shared.connect)(&client_id, connect.clean_session) {
        Ok(l) => l,
        Err(e) => {
            refuse(&mut stream, ConnectReturnCode::ServiceUnavailable).await;
            return Err(format!("the router refused `{client_id}`: {e}"));
        }
    };
    let mut out = BytesMut::new();
    if let Some(ack) = Option::<Packet>::from(ack) {
        V4.write(ack, &mut out).map_err(|e| e.to_string())?;
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
    }
    let keep_alive = match connect.keep_alive {
        0 => None,
        s => Some(Duration::from_secs(s as u64).mul_f32(1.5)),
    };
    let end = run(
        &mut stream,
        &mut read,
        &mut tx,
        &mut rx,
        keep_alive,
        &shared.backlog,
    )
    .await;
    match end {
        End::Graceful => Ok(()),
        End::Lost(e) => {
            // The router forgets the connection (and keeps a persistent session's state).
            let bye = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = tx.send(Packet::Disconnect(bye, None)).await;
            if let Some(w) = will {
                shared.wills.publish(&w, &shared.backlog).await;
            }
            Err(e)
        }
        End::TakenOver => {
            if let Some(w) = will {
                shared.wills.publish(&w, &shared.backlog).await;
            }
            Err(format!(
                "another connection took client id `{client_id}` over"
            ))
        }
    }
}

/// Answers a CONNECT with a refusal.
async fn refuse(stream: &mut TcpStream, code: ConnectReturnCode) {
    let ack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    );
    let mut out = BytesMut::new();
    if V4.write(ack, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
    }
}

/// Reads until one whole packet is decoded (the CONNECT).
async fn read_packet(stream: &mut TcpStream, read: &mut BytesMut) -> Result<Packet, String> {
    loop {
        match V4.read_mut(read, crate::message::MAX_OUTGOING_PACKET) {
            Ok(p) => return Ok(p),
            Err(rumqttd::protocol::Error::InsufficientBytes(n)) => {
                read.reserve(n.max(READ_CHUNK));
                let got = stream.read_buf(read).await.map_err(|e| e.to_string())?;
                if got == 0 {
                    return Err("closed before its CONNECT".into());
                }
            }
            Err(e) => return Err(format!("bad packet: {e}")),
        }
    }
}

/// Moves packets between the socket and the router until the connection ends.
async fn run(
    stream: &mut TcpStream,
    read: &mut BytesMut,
    tx: &mut LinkTx,
    rx: &mut LinkRx,
    keep_alive: Option<Duration>,
    backlog: &Backlog,
) -> End {
    let mut gate = backlog.watch();
    let mut write = BytesMut::with_capacity(4096);
    let mut incoming: Vec<Packet> = Vec::new();
    let mut last_read = Instant::now();
    loop {
        let closed = *gate.borrow_and_update();
        // A connection held by the gate is not idle: its keep-alive counts from the opening.
        let deadline = keep_alive.map(|k| last_read + k);
        tokio::select! {
            biased;
            n = rx.next() => {
                let first = match n {
                    Ok(n) => n,
                    Err(_) => return End::TakenOver,
                };
                match deliver(first, rx, &mut write) {
                    Ok((unscheduled, disconnect)) => {
                        if let Err(e) = stream.write_all(&write).await {
                            return End::Lost(e.to_string());
                        }
                        write.clear();
                        if disconnect {
                            return End::TakenOver;
                        }
                        if unscheduled && rx.wake().await.is_err() {
                            return End::TakenOver;
                        }
                    }
                    Err(End::TakenOver) => return End::TakenOver,
                    Err(e) => return e,
                }
            }
            changed = gate.changed() => {
                if changed.is_err() {
                    return End::Lost("the broker stopped".into());
                }
                last_read = Instant::now();
            }
            got = stream.read_buf(read), if !closed => {
                match got {
                    Ok(0) => return End::Lost("closed by the client".into()),
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => return End::Lost(e.to_string()),
                }
                // Every whole packet read, a batch at a time: no more may come to push the
                // rest out.
                let mut graceful = false;
                loop {
                    let full = match decode(read, &mut incoming, backlog) {
                        Ok(Decoded::Batch) => true,
                        Ok(Decoded::Disconnect) => {
                            graceful = true;
                            false
                        }
                        Ok(Decoded::All) => false,
                        Err(e) => return End::Lost(e),
                    };
                    if !incoming.is_empty() {
                        let last = incoming.pop();
                        tx.buffer().extend(incoming.drain(..));
                        if let Some(last) = last {
                            // Adds the last packet and wakes the router once for the batch.
                            if tx.send(last).await.is_err() {
                                return End::TakenOver;
                            }
                        }
                        backlog.check();
                    }
                    if !full {
                        break;
                    }
                }
                if graceful {
                    return End::Graceful;
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() && !closed => {
                return End::Lost("keep-alive timed out".into());
            }
        }
    }
}

fn sleep_until(deadline: Option<Instant>) -> tokio::time::Sleep {
    tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now))
}

/// What [`decode`] stopped at.
enum Decoded {
    /// A whole batch: more may be in the buffer.
    Batch,
    /// Every whole packet in the buffer.
    All,
    /// The client's DISCONNECT (the last packet decoded).
    Disconnect,
}

/// Decodes the whole packets `read` holds, at most a [`BATCH`], into `incoming`, counting
/// publishes into the backlog.
fn decode(
    read: &mut BytesMut,
    incoming: &mut Vec<Packet>,
    backlog: &Backlog,
) -> Result<Decoded, String> {
    while incoming.len() < BATCH {
        match V4.read_mut(read, crate::message::MAX_OUTGOING_PACKET) {
            Ok(p) => {
                match &p {
                    Packet::Publish(publish, _) => {
                        backlog.entered(&publish.topic, publish.payload.len())
                    }
                    Packet::Disconnect(..) => {
                        incoming.push(p);
                        return Ok(Decoded::Disconnect);
                    }
                    Packet::Connect(..) => return Err("a second CONNECT".into()),
                    _ => {}
                }
                incoming.push(p);
            }
            Err(rumqttd::protocol::Error::InsufficientBytes(n)) => {
                // Room for the rest of the packet being read, and for more.
                if read.capacity() - read.len() < n.max(4096) {
                    read.reserve(n.max(READ_CHUNK));
                }
                return Ok(Decoded::All);
            }
            Err(e) => return Err(format!("bad packet: {e}")),
        }
    }
    Ok(Decoded::Batch)
}

/// Writes into `write` what the router has for the connection, starting with `first`;
/// (unscheduled: the router waits to be woken for more; disconnect: it ended the
/// connection).
fn deliver(
    first: Option<Notification>,
    rx: &mut LinkRx,
    write: &mut BytesMut,
) -> Result<(bool, bool), End> {
    let mut unscheduled = false;
    let mut disconnect = false;
    let mut next = first;
    loop {
        match next {
            Some(Notification::Unschedule) => unscheduled = true,
            Some(n) => {
                match Option::<Packet>::from(n) {
                    // MQTT 3.1.1 has no DISCONNECT from the server: the connection just ends.
                    Some(Packet::Disconnect(..)) => disconnect = true,
                    Some(p) => {
                        if let Err(e) = V4.write(p, write) {
                            return Err(End::Lost(format!("cannot encode a packet: {e}")));
                        }
                    }
                    None => {}
                }
            }
            None => {}
        }
        next = match now(rx.next()) {
            Some(Ok(Some(n))) => Some(n),
            Some(Ok(None)) | None => return Ok((unscheduled, disconnect)),
            Some(Err(_)) => return Err(End::TakenOver),
        };
    }
}

/// The link that publishes the wills of connections that ended without a DISCONNECT.
struct Wills {
    connect: Arc<Connect>,
    /// The link, and whether the router still holds it.
    link: tokio::sync::Mutex<Option<(LinkTx, Arc<AtomicBool>)>>,
    pkid: AtomicU32,
}

impl Wills {
    fn new(connect: Arc<Connect>) -> Wills {
        Wills {
            connect,
            link: tokio::sync::Mutex::new(None),
            pkid: AtomicU32::new(0),
        }
    }

    /// Publishes `will` at its QoS (2 is published as 1: this link takes no part in QoS 2's
    /// handshake).
    async fn publish(&self, will: &LastWill, backlog: &Backlog) {
        let qos = match will.qos {
            QoS::AtMostOnce => 0,
            _ => 1,
        };
        // Packet ids 1..=65535, in turn.
        let pkid = (self.pkid.fetch_add(1, Relaxed) % 65_535) as u16 + 1;
        let Some(packet) = will_packet(will, qos, pkid) else {
            return;
        };
        let mut link = self.link.lock().await;
        if link.as_ref().is_some_and(|(_, alive)| !alive.load(Relaxed)) {
            *link = None;
        }
        if link.is_none() {
            match (self.connect)(WILLS_ID, true) {
                Ok((tx, mut rx, _)) => {
                    let alive = Arc::new(AtomicBool::new(true));
                    let alive_ = alive.clone();
                    // Acknowledgements of QoS 1 wills come back on the link: read and dropped.
                    tokio::spawn(async move {
                        loop {
                            match rx.next().await {
                                Ok(Some(Notification::Unschedule)) => {
                                    if rx.wake().await.is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        alive_.store(false, Relaxed);
                    });
                    *link = Some((tx, alive));
                }
                Err(e) => {
                    tracing::warn!("the embedded broker cannot publish a will: {e}");
                    return;
                }
            }
        }
        if let Some((tx, _)) = link.as_mut() {
            backlog.entered(&will.topic, will.message.len());
            if tx.send(packet).await.is_err() {
                *link = None;
            }
            backlog.check();
        }
    }
}

/// A will as the PUBLISH packet its client would have sent (rumqttd makes a publish of another
/// QoS than 0 only by decoding one).
fn will_packet(will: &LastWill, qos: u8, pkid: u16) -> Option<Packet> {
    let mut bytes = BytesMut::new();
    let len = 2 + will.topic.len() + if qos > 0 { 2 } else { 0 } + will.message.len();
    bytes.put_u8(0x30 | (qos << 1) | u8::from(will.retain));
    rumqttd::protocol::v4::write_remaining_length(&mut bytes, len).ok()?;
    bytes.put_u16(will.topic.len() as u16);
    bytes.put_slice(&will.topic);
    if qos > 0 {
        bytes.put_u16(pkid);
    }
    bytes.put_slice(&will.message);
    V4.read_mut(&mut bytes, crate::message::MAX_OUTGOING_PACKET)
        .ok()
}

/// The future's output if it is ready at once (the notifications the router already buffered),
/// else None; the future is dropped (a link's `next` may be cancelled).
pub(super) fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_a_quarter_of_a_log_behind_and_opens_an_eighth_behind() {
        // Logs of 1,000 bytes; messages of 10 bytes (topic `a/b` and a 7-byte payload).
        let b = Backlog::new(&["a/+".to_string(), "x/#".to_string()], 1000);
        for _ in 0..24 {
            b.entered(b"a/b", 7);
        }
        b.check();
        assert!(!b.is_closed(), "240 bytes behind");
        b.entered(b"a/b", 7);
        // A topic no engine filter matches is not the engine's to wait for.
        for _ in 0..100 {
            b.entered(b"other/b", 7);
        }
        b.check();
        assert!(b.is_closed(), "250 bytes behind");
        assert_eq!(b.messages_behind(0), 25);
        assert_eq!(b.messages_behind(1), 0);
        b.taken(0, 12);
        assert!(b.is_closed(), "130 bytes behind");
        b.taken(0, 1);
        assert!(!b.is_closed(), "120 bytes behind");
        // A link that starts over waits for nothing that entered before.
        b.check();
        b.entered(b"x/y", 7);
        b.caught_up(1);
        assert_eq!(b.messages_behind(1), 0);
    }

    #[test]
    fn filters_match_as_the_text_matcher_does() {
        let filters = ["a/+", "a/#", "#", "+/b/+", "$SYS/#", "a/b/c", "+", "a//c"];
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "x/b/y",
            "$SYS/load",
            "$x/b/y",
            "a//c",
            "/b/",
            "",
            "a/b/c/d",
            "a/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17",
        ];
        for f in filters {
            let compiled = Filter::new(f);
            for t in topics {
                assert_eq!(
                    compiled.matches(t.as_bytes()),
                    crate::topic::filter_matches(f, t),
                    "{f} against {t}"
                );
            }
        }
    }

    #[test]
    fn a_will_becomes_the_publish_its_client_would_have_sent() {
        let will = LastWill {
            topic: "status/dev-1".into(),
            message: vec![b'x'; 300].into(),
            qos: QoS::AtLeastOnce,
            retain: true,
        };
        let Some(Packet::Publish(p, _)) = will_packet(&will, 1, 7) else {
            panic!("not a publish");
        };
        assert_eq!(
            (&p.topic[..], p.payload.len(), p.retain),
            (&b"status/dev-1"[..], 300, true)
        );
        let mut out = BytesMut::new();
        V4.write(Packet::Publish(p, None), &mut out).unwrap();
        // QoS 1 and retain in the fixed header; the packet id after the topic.
        assert_eq!(out[0], 0x33);
        assert_eq!(&out[3 + 2 + 12..3 + 2 + 12 + 2], &[0, 7]);
    }
}
