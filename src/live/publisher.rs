//! The egress connection: rulechain's own MQTT publisher, on rumqttc's codec.
//!
//! Shards gather a turn's publishes (RPC commands, republished messages, dead letters) and hand
//! them over as one batch; this task writes everything queued with one `write` to the socket.
//! rumqttc's event loop takes one request at a time and flushes each on its own: a wake-up and
//! a system call per message, which made egress the ceiling of the whole MQTT path (see
//! BENCHMARKS.md). Here the cost of a write is shared by all the messages a turn produced.
//!
//! QoS 1 and 2 publishes stay in flight (at most [`INFLIGHT`]) until the broker's PUBACK (QoS 2:
//! PUBREC, then our PUBREL until its PUBCOMP); after a reconnect the unfinished ones are sent
//! again, in order: a publish with the DUP flag, or the PUBREL.
//!
//! A batch carries the ingest messages (QoS 1 in) whose chains produced it, and those are
//! reported done to ingest, which acknowledges them to the broker, only once the batch and
//! everything queued before it have left: written, and for QoS 1 and 2 acknowledged by the
//! broker. So a `kill -9` never loses a message whose output was still on its way: its input
//! was not acknowledged, and the broker delivers it again. The queue is
//! bounded in messages ([`super::egress::EGRESS_QUEUE`]): when the broker is away for long,
//! new publishes are dropped and counted, never waited for. Keep-alive pings, a broker that
//! stops answering them, and reconnects with backoff are handled here too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Packet, PubRel, Publish};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::link::{self, Stream};
use super::{RateLimit, Stats};

/// Ingest's done channel (the shards' `shard::Done`): sequence numbers of QoS 1 messages it may
/// acknowledge. Named here by its type, as the shards (above this file) own it.
type Done = mpsc::Sender<Vec<u64>>;
use crate::config::settings::MqttConn;

/// QoS 1 and 2 publishes sent and not yet acknowledged, at most. Brokers bound a client's window
/// (rumqttd: `max_inflight_count`); beyond this the queue waits.
pub const INFLIGHT: usize = 256;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Out {
    /// Where.
    pub topic: String,
    /// The bytes.
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    /// The broker keeps it for later subscribers.
    pub retain: bool,
}

/// One shard turn's publishes, and the ingest messages (sequence numbers) to report done once
/// they have left.
#[derive(Debug, Default)]
pub struct Batch {
    /// The publishes.
    pub outs: Vec<Out>,
    /// Ingest's sequence numbers of the QoS 1 messages whose chains ran in this turn.
    pub acks: Vec<u64>,
}

/// The shards' handle: a bounded queue of batches, counted in messages.
#[derive(Clone)]
pub struct Egress {
    tx: mpsc::Sender<Batch>,
    queued: Arc<AtomicUsize>,
    /// Signalled when the writer takes batches off the queue.
    room: Arc<tokio::sync::Notify>,
    cap: usize,
    /// Whether the writer reports acknowledgements ([`run`]); if not (the embedded broker's
    /// egress, where nothing is acknowledged), [`Egress::send`] hands them back at once.
    acks: bool,
}

impl Egress {
    /// A queue of at most `cap` messages, and its receiving end for [`run`] (`acks`: it reports
    /// the batches' acknowledgements).
    pub fn new(cap: usize, acks: bool) -> (Egress, Queue) {
        let (tx, rx) = mpsc::channel(cap.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(tokio::sync::Notify::new());
        (
            Egress {
                tx,
                queued: queued.clone(),
                room: room.clone(),
                cap,
                acks,
            },
            Queue { rx, queued, room },
        )
    }

    /// Waits until `n` more publishes fit in the queue (at once if they do, or if the writer
    /// is gone). A batch that carries acknowledgements waits here instead of being dropped: a
    /// QoS 1 message's output is never dropped; meanwhile the broker holds what comes after.
    pub async fn room(&self, n: usize) {
        if !self.acks || n == 0 {
            return;
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let queued = self.queued.load(Relaxed);
            // A batch larger than the whole queue goes once the queue is empty.
            if queued + n <= self.cap || queued == 0 || self.tx.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Queues a batch without waiting; returns how many publishes did not fit (dropped), and
    /// the acknowledgements it could not queue (the queue is full) or does not report (no
    /// writer that reports them): the caller reports those done itself; the output of a
    /// message it could not queue is gone either way (dropped and counted).
    pub fn send(&self, mut batch: Batch) -> (usize, Vec<u64>) {
        let mut back = if self.acks {
            Vec::new()
        } else {
            std::mem::take(&mut batch.acks)
        };
        if batch.outs.is_empty() && batch.acks.is_empty() {
            return (0, back);
        }
        let room = self.cap.saturating_sub(self.queued.load(Relaxed));
        let dropped = batch.outs.len().saturating_sub(room);
        batch.outs.truncate(room);
        let n = batch.outs.len();
        self.queued.fetch_add(n, Relaxed);
        match self.tx.try_send(batch) {
            Ok(()) => (dropped, back),
            Err(e) => {
                self.queued.fetch_sub(n, Relaxed);
                back.extend(e.into_inner().acks);
                (dropped + n, back)
            }
        }
    }
}

/// The writer's end of the queue.
pub struct Queue {
    rx: mpsc::Receiver<Batch>,
    queued: Arc<AtomicUsize>,
    room: Arc<tokio::sync::Notify>,
}

impl Queue {
    /// The next batch, waiting on this (blocking, not runtime) thread; None once every handle is
    /// gone and the queue is empty.
    pub fn blocking_next(&mut self) -> Option<Batch> {
        let b = self.rx.blocking_recv()?;
        self.took(b.outs.len());
        Some(b)
    }

    /// The next batch if one is queued.
    pub fn try_next(&mut self) -> Option<Batch> {
        let b = self.rx.try_recv().ok()?;
        self.took(b.outs.len());
        Some(b)
    }

    /// `n` publishes left the queue: room for those waiting ([`Egress::room`]).
    fn took(&self, n: usize) {
        self.queued.fetch_sub(n, Relaxed);
        self.room.notify_waiters();
    }
}

/// The egress connection's task. Runs until every [`Egress`] handle is gone and the queue is
/// written (and, for QoS 1, acknowledged, or `linger` passed after the last handle went), then
/// disconnects. Batches' acknowledgements are reported on `done` once they have left.
pub async fn run(
    conn: MqttConn,
    tls: Option<tokio_rustls::TlsConnector>,
    mut queue: Queue,
    done: Done,
    stats: Arc<Stats>,
    limit: Arc<RateLimit>,
    linger: Duration,
) {
    let mut backoff = crate::retry::reconnect_backoff(conn.reconnect_max);
    let mut w = Writer {
        done: Some(done),
        ..Writer::default()
    };
    let mut closed_at: Option<tokio::time::Instant> = None;
    loop {
        let r = match link::connect(&conn, "out", tls.as_ref()).await {
            Ok(c) => {
                backoff.reset();
                w.session(c.stream, &conn, &mut queue, &mut closed_at, linger)
                    .await
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => break,
            Err(e) => {
                if closed_at.is_none() && queue.rx.is_closed() && queue.rx.is_empty() {
                    closed_at = Some(tokio::time::Instant::now());
                }
                if closed_at.is_some_and(|t| t.elapsed() >= linger) {
                    if !w.inflight.is_empty() || queue.queued.load(Relaxed) > 0 {
                        tracing::warn!(
                            unsent = w.inflight.len() + queue.queued.load(Relaxed),
                            "the egress connection is down at shutdown; publishes were not delivered"
                        );
                    }
                    break;
                }
                stats.connect_errors.fetch_add(1, Relaxed);
                let wait = backoff.next_delay();
                if limit.allow() {
                    tracing::warn!("MQTT egress connection: {e}; retrying in {wait:?}");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A publish in flight: encoded (the DUP flag is set in place when it is sent again), or for
/// QoS 2 past PUBREC, released (only its PUBREL is sent again).
struct Flight {
    pkid: u16,
    /// Its place among all publishes put in flight (1, 2, …).
    seq: u64,
    packet: BytesMut,
    released: bool,
}

/// What lives across connections: the publishes not yet acknowledged, in send order, and the
/// ingest acknowledgements waiting for them.
#[derive(Default)]
struct Writer {
    inflight: VecDeque<Flight>,
    next_pkid: u16,
    /// Publishes put in flight so far (the last one's `seq`).
    issued: u64,
    /// Acknowledgements to report once every publish in flight up to `.0` is acknowledged and
    /// the batch is written, in queue order.
    waiting: VecDeque<(u64, Vec<u64>)>,
    /// Where they are reported (ingest); `None` in unit tests.
    done: Option<Done>,
}

impl Writer {
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.inflight.iter().any(|f| f.pkid == id) {
                return id;
            }
        }
    }

    /// One connection's life: resend what is in flight, then write batches as they come, read
    /// acknowledgements, ping. Ok(()) when the queue closed and everything left.
    async fn session(
        &mut self,
        stream: Box<dyn Stream>,
        conn: &MqttConn,
        queue: &mut Queue,
        closed_at: &mut Option<tokio::time::Instant>,
        linger: Duration,
    ) -> Result<(), String> {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut out = BytesMut::with_capacity(64 * 1024);
        for f in &mut self.inflight {
            if f.released {
                let _ = PubRel::new(f.pkid).write(&mut out);
            } else {
                f.packet[0] |= 0x08; // DUP
                out.extend_from_slice(&f.packet);
            }
        }
        let mut rbuf = BytesMut::with_capacity(4096);
        let keep_alive = conn.keep_alive.max(Duration::from_secs(1));
        let mut ping = tokio::time::interval(keep_alive);
        ping.reset();
        let mut awaiting_pong = false;
        let mut batches: Vec<Batch> = Vec::new();
        loop {
            if !out.is_empty() {
                link::write_out(&mut wr, &mut out, keep_alive).await?;
                ping.reset();
            }
            // Written, and acknowledged where asked for: ingest may acknowledge their inputs.
            for acks in self.left() {
                if let Some(done) = &self.done {
                    let _ = done.send(acks).await;
                }
            }
            let open = closed_at.is_none();
            if !open && self.inflight.is_empty() {
                link::disconnect(&mut wr).await;
                return Ok(());
            }
            if closed_at.is_some_and(|t| t.elapsed() >= linger) {
                return Err(format!(
                    "{} QoS 1 publishes were not acknowledged before shutdown",
                    self.inflight.len()
                ));
            }
            let room = INFLIGHT.saturating_sub(self.inflight.len());
            tokio::select! {
                n = queue.rx.recv_many(&mut batches, 64), if open && room > 0 => {
                    if n == 0 {
                        *closed_at = Some(tokio::time::Instant::now());
                        continue;
                    }
                    let mut taken = 0;
                    for batch in batches.drain(..) {
                        taken += batch.outs.len();
                        for o in batch.outs {
                            self.encode(o, &mut out);
                        }
                        if !batch.acks.is_empty() {
                            self.waiting.push_back((self.issued, batch.acks));
                        }
                    }
                    queue.took(taken);
                }
                r = rd.read_buf(&mut rbuf) => {
                    match r {
                        Ok(0) => return Err("the broker closed the connection".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read: {e}")),
                    }
                    loop {
                        match Packet::read(&mut rbuf, 1 << 20) {
                            Ok(Packet::PubAck(a)) => self.finish(a.pkid),
                            Ok(Packet::PubComp(a)) => self.finish(a.pkid),
                            Ok(Packet::PubRec(a)) => {
                                if let Some(f) = self.inflight.iter_mut().find(|f| f.pkid == a.pkid) {
                                    f.released = true;
                                    f.packet = BytesMut::new();
                                }
                                let _ = PubRel::new(a.pkid).write(&mut out);
                            }
                            Ok(Packet::PingResp) => awaiting_pong = false,
                            Ok(_) => {}
                            Err(CodecError::InsufficientBytes(_)) => break,
                            Err(e) => return Err(format!("bad packet from the broker: {e:?}")),
                        }
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Err("the broker did not answer a ping".into());
                    }
                    let _ = Packet::PingReq.write(&mut out, 16);
                    awaiting_pong = true;
                }
                _ = tokio::time::sleep(linger), if !open => {}
            }
        }
    }

    /// The acknowledgements whose publishes have all left: everything put in flight up to
    /// theirs is acknowledged (call once what was encoded is written).
    fn left(&mut self) -> Vec<Vec<u64>> {
        let oldest = self.inflight.front().map(|f| f.seq);
        let mut ready = Vec::new();
        while let Some((upto, _)) = self.waiting.front() {
            if oldest.is_some_and(|o| o <= *upto) {
                break;
            }
            if let Some((_, acks)) = self.waiting.pop_front() {
                ready.push(acks);
            }
        }
        ready
    }

    /// The broker has the publish `pkid` for good.
    fn finish(&mut self, pkid: u16) {
        if let Some(i) = self.inflight.iter().position(|f| f.pkid == pkid) {
            self.inflight.remove(i);
        }
    }

    /// Encodes one publish; one of QoS 1 or 2 also goes in flight.
    fn encode(&mut self, o: Out, out: &mut BytesMut) {
        let qos = match o.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let mut p = Publish::from_bytes(o.topic, qos, Bytes::from(o.payload));
        p.retain = o.retain;
        if qos == QoS::AtMostOnce {
            let _ = p.write(out);
            return;
        }
        p.pkid = self.pkid();
        let mut b = BytesMut::with_capacity(p.size());
        if p.write(&mut b).is_ok() {
            out.extend_from_slice(&b);
            self.issued += 1;
            self.inflight.push_back(Flight {
                pkid: p.pkid,
                seq: self.issued,
                packet: b,
                released: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(n: usize) -> Vec<Out> {
        (0..n)
            .map(|i| Out {
                topic: format!("t/{i}"),
                payload: Vec::new(),
                qos: 0,
                retain: false,
            })
            .collect()
    }

    fn batch(n: usize, acks: &[u64]) -> Batch {
        Batch {
            outs: out(n),
            acks: acks.to_vec(),
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_messages_and_drops_what_does_not_fit() {
        let (egress, mut queue) = Egress::new(5, true);
        assert_eq!(egress.send(batch(3, &[])), (0, vec![]));
        // Two fit of four: the rest is dropped (counted by the caller), never waited for; the
        // acknowledgements go on with what fits.
        assert_eq!(egress.send(batch(4, &[7])), (2, vec![]));
        // Nothing fits: the publish is dropped, its acknowledgement still queued (never lost).
        assert_eq!(egress.send(batch(1, &[8])), (1, vec![]));
        assert_eq!(queue.queued.load(Relaxed), 5);
        let mut got = Vec::new();
        assert_eq!(queue.rx.recv_many(&mut got, 10).await, 3);
        assert_eq!(
            got.iter()
                .map(|b| (b.outs.len(), b.acks.clone()))
                .collect::<Vec<_>>(),
            [(3, vec![]), (2, vec![7]), (0, vec![8])]
        );
        assert_eq!(egress.send(batch(0, &[])), (0, vec![]));
        // Without a writer that reports them (the embedded broker), they come back at once.
        let (local, _q) = Egress::new(5, false);
        assert_eq!(local.send(batch(1, &[9])), (0, vec![9]));
    }

    #[tokio::test]
    async fn a_batch_with_acknowledgements_waits_for_room_instead_of_being_dropped() {
        let (egress, mut queue) = Egress::new(5, true);
        assert_eq!(egress.send(batch(4, &[])), (0, vec![]));
        let quick = Duration::from_secs(5);
        assert!(tokio::time::timeout(quick, egress.room(1)).await.is_ok());
        let waiting = tokio::spawn({
            let egress = egress.clone();
            async move {
                egress.room(2).await;
                egress.send(batch(2, &[1]))
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "4 + 2 does not fit in 5");
        assert_eq!(queue.try_next().map(|b| b.outs.len()), Some(4));
        assert_eq!(
            waiting.await.unwrap(),
            (0, vec![]),
            "it fits now, nothing dropped"
        );
        // Larger than the whole queue: it goes once the queue is empty.
        queue.try_next();
        assert!(tokio::time::timeout(quick, egress.room(9)).await.is_ok());
        // The embedded broker's egress reports nothing, so nothing waits.
        let (local, _q) = Egress::new(1, false);
        assert_eq!(local.send(batch(1, &[])), (0, vec![]));
        assert!(tokio::time::timeout(quick, local.room(5)).await.is_ok());
    }

    fn publish(qos: u8) -> Out {
        Out {
            topic: "t".into(),
            payload: b"x".to_vec(),
            qos,
            retain: false,
        }
    }

    /// A batch the writer took: encoded, its acknowledgements waiting behind its publishes.
    fn take(w: &mut Writer, outs: Vec<Out>, acks: &[u64]) -> Vec<u16> {
        let mut buf = BytesMut::new();
        let before = w.inflight.len();
        for o in outs {
            w.encode(o, &mut buf);
        }
        w.waiting.push_back((w.issued, acks.to_vec()));
        w.inflight.iter().skip(before).map(|f| f.pkid).collect()
    }

    #[test]
    fn a_message_is_reported_done_only_once_its_output_and_all_before_it_are_acknowledged() {
        let mut w = Writer::default();
        let a = take(&mut w, vec![publish(1), publish(0)], &[1, 2]);
        let b = take(&mut w, vec![publish(0)], &[3]);
        let c = take(&mut w, vec![publish(1)], &[4]);
        assert_eq!((a.len(), b.len(), c.len()), (1, 0, 1));
        assert!(
            w.left().is_empty(),
            "nothing acknowledged by the broker yet"
        );
        // The later batch's publish is acknowledged first: it still waits for the earlier.
        w.finish(c[0]);
        assert!(w.left().is_empty());
        w.finish(a[0]);
        assert_eq!(w.left(), vec![vec![1, 2], vec![3], vec![4]]);
        // A batch of QoS 0 publishes only: done once written.
        take(&mut w, vec![publish(0)], &[5]);
        assert_eq!(w.left(), vec![vec![5]]);
        // QoS 2: done at PUBCOMP (`finish`), not at PUBREC.
        let d = take(&mut w, vec![publish(2)], &[6]);
        w.inflight[0].released = true;
        assert!(w.left().is_empty());
        w.finish(d[0]);
        assert_eq!(w.left(), vec![vec![6]]);
    }

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let mut w = Writer {
            next_pkid: u16::MAX - 1,
            ..Writer::default()
        };
        w.inflight.push_back(Flight {
            pkid: 1,
            seq: 0,
            packet: BytesMut::new(),
            released: false,
        });
        assert_eq!(w.pkid(), u16::MAX);
        assert_eq!(w.pkid(), 2, "0 is not an id and 1 is in flight");
        let mut buf = BytesMut::new();
        w.encode(
            Out {
                topic: "a".into(),
                payload: b"x".to_vec(),
                qos: 2,
                retain: true,
            },
            &mut buf,
        );
        assert_eq!(w.inflight.back().map(|f| f.pkid), Some(3));
        match Packet::read(&mut buf, 1024) {
            Ok(Packet::Publish(p)) => {
                assert_eq!((p.qos, p.pkid, p.retain), (QoS::ExactlyOnce, 3, true));
            }
            other => panic!("{other:?}"),
        }
        w.finish(3);
        w.finish(1);
        assert!(w.inflight.is_empty());
    }
}
