//! MQTT ingest: the connection that subscribes, on rulechain's own loop over rumqttc's codec
//! (see [`super::link`]). A read from the socket brings many packets; they become shard jobs by
//! the topic patterns and are handed over together, one wake-up of each shard per read (per
//! `mqtt.batch_window` while messages come densely). QoS 1 messages are acknowledged on this
//! same connection once their chains ran, in receive order:
//! the shards report finished sequence numbers once per turn, and every PUBACK that became due
//! leaves in the next write, so one system call serves a whole turn's acknowledgements.
//!
//! Reconnects use capped exponential backoff with jitter; every connection subscribes again,
//! so a broker that lost the session (restart without persistence) still delivers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Packet, PubAck, PubComp, PubRec, Publish, Subscribe};
use rumqttc::mqttbytes::v4::{SubscribeFilter, SubscribeReasonCode};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::link::{self};
use super::shard::{shard_of, Job, ShardMsg};
use super::{RateLimit, Stats};
use crate::config::settings::MqttConn;
use crate::engine::clock::wall_ms;
use crate::message::MAX_INCOMING_PACKET;
use crate::retry::reconnect_backoff;
use crate::topic::TopicPattern;

/// What the ingest task needs.
pub struct Ingest {
    /// The broker.
    pub conn: MqttConn,
    /// TLS, when the broker's URL is `mqtts://`.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Topic patterns.
    pub patterns: Vec<TopicPattern>,
    /// Shard queues.
    pub shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Finished QoS 1 messages, from the shards.
    pub done: mpsc::Receiver<Vec<u64>>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Log limiter.
    pub limit: Arc<RateLimit>,
}

/// Runs the ingest connection. When `stop` turns true it stops handing messages to the shards
/// (dropping its queues, so they can finish) but keeps the connection, so that the
/// acknowledgements of what the shards still finish reach the broker; once every shard is gone it
/// disconnects. Messages that arrive meanwhile are not acknowledged: the broker delivers them
/// again after a restart.
pub async fn run(ing: Ingest, mut stop: watch::Receiver<bool>) {
    let mut backoff = reconnect_backoff(ing.conn.reconnect_max);
    let mut io = Io {
        subs: crate::topic::mqtt_filters(&ing.patterns),
        batch: Batch::new(ing.shards.len()),
        acks: Acks::default(),
        ing,
        draining: false,
        connected_once: false,
        last_hand_over: None,
    };
    loop {
        // A broker that accepts the connection and never answers holds `connect` for up to its
        // timeouts; a stop meanwhile must still let the shards finish at once.
        let connected = tokio::select! {
            c = link::connect(&io.ing.conn, "in", io.ing.tls.as_ref()) => c,
            _ = stop.changed() => break,
        };
        let mut lasted = None;
        let r = match connected {
            Ok(c) => {
                backoff.reset();
                let began = tokio::time::Instant::now();
                let r = io.session(c, &mut stop).await;
                io.flush().await;
                lasted = Some(began.elapsed());
                r
            }
            Err(e) => Err(e),
        };
        let mut e = match r {
            Ok(()) => break,
            Err(e) => e,
        };
        // A broker drops a connection it accepted moments ago when another client connects with
        // the same client id (the session is taken over): two engines sharing one id throw each
        // other out forever. A session that short says so, whatever its error.
        if lasted.is_some_and(|d| d < Duration::from_secs(10)) {
            e = format!(
                "{e}, {:.1} s after the broker accepted the connection: is another client connected with the client id `{}`? (each engine needs its own `mqtt.client_id`)",
                lasted.unwrap_or_default().as_secs_f64(),
                io.ing.conn.client_id
            );
        }
        io.ing.stats.connected.store(false, Relaxed);
        if io.draining {
            // No acknowledgement can reach the broker now; it delivers again what is left.
            break;
        }
        let wait = backoff.next_delay();
        io.ing.stats.connect_errors.fetch_add(1, Relaxed);
        if io.ing.limit.allow() {
            tracing::warn!("MQTT ingest connection: {e}; retrying in {wait:?}");
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!("ingest stopped");
}

/// The ingest task's state across connections.
struct Io {
    ing: Ingest,
    subs: Vec<String>,
    batch: Batch,
    acks: Acks,
    draining: bool,
    connected_once: bool,
    /// When the last batch went to the shards.
    last_hand_over: Option<tokio::time::Instant>,
}

/// The packet id of the SUBSCRIBE (ingest sends no other packet that takes an id).
const SUBSCRIBE_PKID: u16 = 1;

impl Io {
    /// One connection's life. Ok(()) once draining is over (every shard gone) and the
    /// connection closed cleanly.
    async fn session(
        &mut self,
        c: link::Connected,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let stats = self.ing.stats.clone();
        stats.connects.fetch_add(1, Relaxed);
        if self.connected_once {
            tracing::info!(session_present = c.session_present, "MQTT reconnected");
        } else {
            tracing::info!(filters = ?self.subs, "MQTT connected; subscribing");
        }
        self.connected_once = true;
        self.acks.connected(c.session_present);
        let (mut rd, mut wr) = tokio::io::split(c.stream);
        let mut out = BytesMut::with_capacity(4096);
        // One SUBSCRIBE for every filter; the engine counts as connected (`/readyz` 200) once
        // the broker acknowledged it, so a message published after a healthy probe is never
        // published before the subscription exists.
        if self.subs.is_empty() {
            stats.connected.store(true, Relaxed);
        } else {
            let qos = match self.ing.conn.qos {
                0 => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            };
            let mut s = Subscribe::new_many(
                self.subs
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), qos)),
            );
            s.pkid = SUBSCRIBE_PKID;
            s.write(&mut out)
                .map_err(|e| format!("cannot encode SUBSCRIBE: {e:?}"))?;
        }
        let keep_alive = self.ing.conn.keep_alive.max(Duration::from_secs(1));
        let mut ping = tokio::time::interval(keep_alive);
        ping.reset();
        let mut awaiting_pong = false;
        let mut rbuf = BytesMut::new();
        let mut done = Vec::new();
        let mut shards_gone = false;
        let mut need = 0;
        loop {
            if !out.is_empty() {
                link::write_out(&mut wr, &mut out, keep_alive).await?;
                ping.reset();
            }
            if shards_gone {
                link::disconnect(&mut wr).await;
                return Ok(());
            }
            // Room for a whole packet that is partly read (a large one is not copied at every
            // read), or for many small ones.
            let room = need.max(READ_ROOM / 4);
            if rbuf.capacity() - rbuf.len() < room {
                rbuf.reserve(room.max(READ_ROOM));
            }
            let held = self.held_until();
            tokio::select! {
                biased;
                _ = stop.changed(), if !self.draining => {
                    // Whatever was received goes to the shards first (what waits in the socket
                    // while a batch is held, too); dropping the queues then lets the shards
                    // finish. Draining starts whatever the read found (a closed connection
                    // ends the session, never the stop).
                    let read = self.read_ready(&mut rd, &mut rbuf, &mut out).await;
                    let handed = match self.batch.len {
                        0 => Ok(()),
                        _ => self.hand_over(&mut out).await,
                    };
                    self.draining = true;
                    self.ing.shards.clear();
                    read?;
                    handed?;
                }
                n = self.ing.done.recv_many(&mut done, 64) => {
                    if n == 0 {
                        shards_gone = true;
                        continue;
                    }
                    for seqs in done.drain(..) {
                        self.acks.done(&seqs, &mut out);
                    }
                }
                _ = sleep_until(held), if held.is_some() => {
                    // The socket is not read while a batch of QoS 0 messages is held: what the
                    // broker sent meanwhile is taken now, in one read, and goes with it (this
                    // thread wakes once a window, not once per read).
                    if let Some(read) = self.read_ready(&mut rd, &mut rbuf, &mut out).await? {
                        awaiting_pong &= !read.pong;
                        need = read.need;
                    }
                    if self.batch.len > 0 {
                        self.hand_over(&mut out).await?;
                    }
                }
                r = rd.read_buf(&mut rbuf), if held.is_none() || self.batch.unacked > 0 => {
                    got(r)?;
                    let read = self.read_packets(&mut rbuf, &mut out).await?;
                    awaiting_pong &= !read.pong;
                    need = read.need;
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Err("the broker did not answer a ping".into());
                    }
                    let _ = Packet::PingReq.write(&mut out, 16);
                    awaiting_pong = true;
                }
            }
        }
    }

    /// Takes every whole packet out of `rbuf`; publishes go to the shards, in batches of at
    /// most [`BATCH`]. While messages come densely, hand-overs are at least
    /// `mqtt.batch_window` apart: a read that follows the last hand-over sooner keeps its
    /// messages until the window is over (or until [`BATCH`] are gathered), and the socket is
    /// read again only then, so a shard and this thread wake once for them all instead of once
    /// per read (at 30k msg/s through a broker, reads bring one or two messages each, and every
    /// wake is a context switch that cost more CPU than the messages' chains). A message after
    /// a quiet spell goes at once.
    async fn read_packets(
        &mut self,
        rbuf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Read, String> {
        let received = wall_ms();
        let mut pong = false;
        let need = loop {
            match Packet::read(rbuf, MAX_INCOMING_PACKET) {
                Ok(Packet::Publish(p)) => {
                    if !self.draining {
                        self.publish(p, received, out);
                        if self.batch.len >= BATCH {
                            self.hand_over(out).await?;
                        }
                    }
                }
                Ok(Packet::PubRel(r)) => {
                    let _ = PubComp::new(r.pkid).write(out);
                }
                Ok(Packet::PingResp) => pong = true,
                Ok(Packet::SubAck(ack)) => self.subscribed(&ack.return_codes),
                Ok(_) => {}
                Err(CodecError::InsufficientBytes(n)) => break n,
                Err(e) => return Err(format!("bad packet from the broker: {e:?}")),
            }
        };
        // Dense traffic: the batch waits for more, up to the window after the last hand-over.
        let hold = self.batch.unacked < HOLD_UNACKED
            && self
                .held_until()
                .is_some_and(|due| tokio::time::Instant::now() < due);
        if self.batch.len > 0 && !hold {
            self.hand_over(out).await?;
        }
        Ok(Read { pong, need })
    }

    /// The broker answered the SUBSCRIBE: the engine counts as connected.
    fn subscribed(&self, codes: &[SubscribeReasonCode]) {
        let refused: Vec<&String> = self
            .subs
            .iter()
            .zip(codes)
            .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
            .map(|(f, _)| f)
            .collect();
        if !refused.is_empty() {
            tracing::error!(
                filters = ?refused,
                "the MQTT broker refused these subscriptions; their messages will not arrive (check the broker's ACL for this user)"
            );
        }
        self.ing.stats.connected.store(true, Relaxed);
    }

    /// One message: a job for its device's shard, and for QoS 1 a place in the ack queue
    /// (before its shard can report it done).
    fn publish(&mut self, p: Publish, received: i64, out: &mut BytesMut) {
        self.ing.stats.received.fetch_add(1, Relaxed);
        let ack = match p.qos {
            QoS::AtMostOnce => None,
            q => Some(self.acks.pending(p.pkid, q == QoS::ExactlyOnce)),
        };
        let added = self
            .batch
            .add(&self.ing.patterns, &p.topic, p.payload, received, ack);
        if !added {
            no_pattern(&self.ing.stats, &self.ing.limit, &p.topic);
            if let Some(seq) = ack {
                self.acks.done(&[seq], out);
            }
        }
    }

    /// What waits in the socket, read without waiting for more and gathered (see
    /// [`Io::read_packets`]); None when nothing waits.
    async fn read_ready(
        &mut self,
        rd: &mut (impl tokio::io::AsyncRead + Unpin),
        rbuf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Read>, String> {
        let ready = tokio::select! {
            biased;
            r = rd.read_buf(rbuf) => Some(r),
            _ = std::future::ready(()) => None,
        };
        match ready {
            Some(r) => {
                got(r)?;
                self.read_packets(rbuf, out).await.map(Some)
            }
            None => Ok(None),
        }
    }

    /// When the batch gathered must go: the window after the last hand-over (None without a
    /// batch, or before the first hand-over). Between reads a batch is there only when held:
    /// `read_packets` hands over any other.
    fn held_until(&self) -> Option<tokio::time::Instant> {
        let last = self.last_hand_over.filter(|_| self.batch.len > 0)?;
        Some(last + self.ing.conn.batch_window)
    }

    /// A batch held back when the connection ended goes to the shards: its messages were
    /// received, and a broker with a clean session would not deliver them again. (What finishes
    /// while this waits for room is not acknowledged: a broker that kept the session delivers
    /// it again, at least once.)
    async fn flush(&mut self) {
        if self.batch.len > 0 {
            let mut gone = BytesMut::new();
            if let Err(e) = self.hand_over(&mut gone).await {
                tracing::debug!("messages read before the connection ended: {e}");
            }
        }
    }

    /// Sends what was gathered; finished messages that arrive meanwhile are acknowledged.
    async fn hand_over(&mut self, out: &mut BytesMut) -> Result<(), String> {
        self.last_hand_over = Some(tokio::time::Instant::now());
        let mut finished = Vec::new();
        let r = self
            .batch
            .hand_over(&self.ing.shards, Some(&mut self.ing.done), &mut finished)
            .await;
        for seqs in finished {
            self.acks.done(&seqs, out);
        }
        r
    }
}

/// A message whose topic matches no pattern: counted, logged (rate-limited), ignored.
pub(super) fn no_pattern(stats: &Stats, limit: &RateLimit, topic: &str) {
    stats.no_pattern.fetch_add(1, Relaxed);
    if limit.allow() {
        tracing::warn!(%topic, "topic matches no topic pattern; ignored");
    }
}

/// What a read brought besides messages.
struct Read {
    /// A PINGRESP.
    pong: bool,
    /// Bytes still missing from the packet partly read.
    need: usize,
}

/// A read from the broker that brought bytes; an error when it closed or failed.
fn got(r: std::io::Result<usize>) -> Result<(), String> {
    match r {
        Ok(0) => Err("the broker closed the connection".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Waits until `due`; never, without one.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A held batch goes once it has this many messages the broker waits to have acknowledged:
/// a broker sends a client only so many unacknowledged QoS 1 messages at once (Mosquitto 20 by
/// default, EMQX 32) and keeps the rest, dropping them past its queue (Mosquitto: 1,000), so
/// holding more than a few would cap the rate at the window's pace. For the same reason the
/// socket is read on while such a batch is held.
const HOLD_UNACKED: usize = 8;

/// Room kept free in the read buffer: one read takes in up to this much.
const READ_ROOM: usize = 64 * 1024;

/// Messages handed to a shard at once, at most: a read from the socket brings many, and one
/// hand-over per read wakes each shard once instead of once per message.
pub(super) const BATCH: usize = 256;

/// What one read of the ingest connection (or of a local link to the embedded broker) brought,
/// until it is handed over: each shard's jobs, in receive order.
pub(super) struct Batch {
    jobs: Vec<Vec<Job>>,
    /// Jobs gathered, in all shards.
    pub len: usize,
    /// Of them, messages the broker waits to have acknowledged (QoS 1 and 2).
    pub unacked: usize,
}

impl Batch {
    pub(super) fn new(shards: usize) -> Batch {
        Batch {
            jobs: (0..shards.max(1))
                .map(|_| Vec::with_capacity(BATCH))
                .collect(),
            len: 0,
            unacked: 0,
        }
    }

    /// A job for the device's shard, by the first pattern `topic` matches; false when none does.
    pub(super) fn add(
        &mut self,
        patterns: &[TopicPattern],
        topic: &str,
        payload: Bytes,
        received: i64,
        ack: Option<u64>,
    ) -> bool {
        let Some(m) = patterns.iter().find_map(|pat| pat.matches(topic)) else {
            return false;
        };
        let device: Arc<str> = m.device.into();
        let shard = shard_of(&device, self.jobs.len());
        self.jobs[shard].push(Job {
            device,
            kind: m.kind,
            topic: topic.into(),
            captures: m.captures,
            payload,
            received,
            ack,
            offset: None,
        });
        self.len += 1;
        self.unacked += usize::from(ack.is_some());
        true
    }

    /// Sends what was gathered. The shard queues are bounded in messages: a full one makes
    /// ingest wait (backpressure reaches the broker: the socket or link is not read meanwhile).
    /// Slots are reserved for a shard's whole share at once (in chunks no larger than the
    /// queue), so its messages arrive together. While it waits, finished messages are still
    /// taken from `done` into `finished` (their acknowledgements leave with the next write), so a
    /// shard never waits on ingest.
    pub(super) async fn hand_over(
        &mut self,
        shards: &[mpsc::Sender<ShardMsg>],
        mut done: Option<&mut mpsc::Receiver<Vec<u64>>>,
        finished: &mut Vec<Vec<u64>>,
    ) -> Result<(), String> {
        for (tx, jobs) in shards.iter().zip(&mut self.jobs) {
            while !jobs.is_empty() {
                let n = jobs.len().min(tx.max_capacity());
                let permits = loop {
                    tokio::select! {
                        biased;
                        p = tx.reserve_many(n) => break p.map_err(|_| "a shard stopped".to_string())?,
                        Some(seqs) = next_done(&mut done) => finished.push(seqs),
                    }
                };
                for (permit, job) in permits.zip(jobs.drain(..n)) {
                    permit.send(ShardMsg::Job(job));
                }
            }
        }
        self.len = 0;
        self.unacked = 0;
        Ok(())
    }
}

/// The next finished batch from `done`; never, without one.
async fn next_done(done: &mut Option<&mut mpsc::Receiver<Vec<u64>>>) -> Option<Vec<u64>> {
    match done {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A QoS 1 (or 2) message until it is acknowledged: its packet id on the connection it came
/// from, not its topic or payload (a large payload must not wait in the ack queue).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unacked {
    connection: u32,
    pkid: u16,
    exactly_once: bool,
}

/// The acknowledgements of the ingest connection: messages in receive order until their chains
/// ran, and the sequence numbers the shards report.
#[derive(Default)]
struct Acks {
    queue: AckQueue<Unacked>,
    ready: Vec<Unacked>,
    seq: u64,
    connection: u32,
    /// The broker kept the session: the last connection's packet ids still mean something.
    carried: bool,
}

impl Acks {
    /// A new connection.
    fn connected(&mut self, session_present: bool) {
        self.connection = self.connection.wrapping_add(1);
        self.carried = session_present;
    }

    /// A message to acknowledge later; its sequence number.
    fn pending(&mut self, pkid: u16, exactly_once: bool) -> u64 {
        self.seq += 1;
        self.queue.pending(
            self.seq,
            Unacked {
                connection: self.connection,
                pkid,
                exactly_once,
            },
        );
        self.seq
    }

    /// Messages whose chains ran; the acknowledgements that became due go into `out`, in
    /// receive order. A message of an earlier connection is acknowledged only when the broker
    /// kept the session (it then still waits for that packet id; a clean session has forgotten
    /// it, and the broker sent the message again or dropped it).
    fn done(&mut self, seqs: &[u64], out: &mut BytesMut) {
        for &seq in seqs {
            self.queue.done(seq, &mut self.ready);
        }
        for u in self.ready.drain(..) {
            if u.connection != self.connection && !self.carried {
                continue;
            }
            let _ = if u.exactly_once {
                PubRec::new(u.pkid).write(out)
            } else {
                PubAck::new(u.pkid).write(out)
            };
        }
    }
}

/// QoS 1 messages in receive order, each marked when its chains ran; only the finished prefix
/// may be acknowledged (a later message that finished first waits for the earlier ones).
pub struct AckQueue<T> {
    q: VecDeque<(u64, T, bool)>,
}

impl<T> Default for AckQueue<T> {
    fn default() -> Self {
        AckQueue { q: VecDeque::new() }
    }
}

impl<T> AckQueue<T> {
    /// Message `seq` (one more than the previous one) was handed to a shard.
    pub fn pending(&mut self, seq: u64, p: T) {
        self.q.push_back((seq, p, false));
    }

    /// Message `seq` is done; the messages that may now be acknowledged go to `ready`, in order.
    pub fn done(&mut self, seq: u64, ready: &mut Vec<T>) {
        if let Some(front) = self.q.front().map(|f| f.0) {
            if let Some(e) = seq
                .checked_sub(front)
                .and_then(|i| self.q.get_mut(usize::try_from(i).ok()?))
            {
                e.2 = true;
            }
        }
        while self.q.front().is_some_and(|f| f.2) {
            if let Some((_, p, _)) = self.q.pop_front() {
                ready.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_out_in_receive_order() {
        let mut q = AckQueue::<&str>::default();
        let mut ready = Vec::new();
        for (seq, m) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            q.pending(seq, m);
        }
        // Two shards: 2 and 4 finish before 1.
        q.done(2, &mut ready);
        q.done(4, &mut ready);
        assert!(ready.is_empty(), "nothing may be acked before message 1");
        q.done(1, &mut ready);
        assert_eq!(ready, ["a", "b"]);
        q.done(3, &mut ready);
        assert_eq!(ready, ["a", "b", "c", "d"]);
        // Unknown or repeated numbers change nothing.
        q.done(99, &mut ready);
        q.done(1, &mut ready);
        assert_eq!(ready.len(), 4);
    }

    /// The packets in `out`, as (kind, packet id).
    fn packets(out: &mut BytesMut) -> Vec<(&'static str, u16)> {
        let mut got = Vec::new();
        loop {
            match Packet::read(out, 1024) {
                Ok(Packet::PubAck(a)) => got.push(("puback", a.pkid)),
                Ok(Packet::PubRec(a)) => got.push(("pubrec", a.pkid)),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(CodecError::InsufficientBytes(_)) => return got,
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    #[test]
    fn a_turn_of_finished_messages_is_acknowledged_in_one_buffer_in_receive_order() {
        let mut acks = Acks::default();
        acks.connected(false);
        let a = acks.pending(7, false);
        let b = acks.pending(8, true);
        let c = acks.pending(9, false);
        let mut out = BytesMut::new();
        // The second shard finished b and c first: nothing may leave before a.
        acks.done(&[b, c], &mut out);
        assert!(out.is_empty());
        acks.done(&[a], &mut out);
        assert_eq!(
            packets(&mut out),
            [("puback", 7), ("pubrec", 8), ("puback", 9)]
        );
    }

    #[test]
    fn packet_ids_of_an_earlier_connection_are_acknowledged_only_when_the_session_was_kept() {
        let mut acks = Acks::default();
        acks.connected(false);
        let old = acks.pending(5, false);
        // Reconnected with a clean session: the broker forgot packet id 5 (and may reuse it).
        acks.connected(false);
        let new = acks.pending(5, false);
        let mut out = BytesMut::new();
        acks.done(&[old, new], &mut out);
        assert_eq!(
            packets(&mut out),
            [("puback", 5)],
            "only the new message's ack"
        );

        let mut acks = Acks::default();
        acks.connected(false);
        let old = acks.pending(3, false);
        // The broker kept the session: it still waits for packet id 3.
        acks.connected(true);
        acks.done(&[old], &mut out);
        assert_eq!(packets(&mut out), [("puback", 3)]);
    }

    #[test]
    fn filters_cover_the_patterns() {
        let p = vec![
            TopicPattern::parse("site/{site}/device/{device}/{kind}", None).unwrap(),
            TopicPattern::parse("device/{device}/{kind}", None).unwrap(),
            TopicPattern::parse("device/{device}/{kind}", None).unwrap(),
        ];
        let f = crate::topic::mqtt_filters(&p);
        assert_eq!(f.len(), 8, "{f:?}");
        assert!(f.contains(&"device/+/telemetry".to_string()));
        assert!(f.contains(&"site/+/device/+/rpc_response".to_string()));
        assert!(!f.iter().any(|f| f.ends_with("/+")), "{f:?}");
    }
}
