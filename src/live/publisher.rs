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
//! again, in order: a publish with the DUP flag, or the PUBREL. The queue is
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

/// The shards' handle: a bounded queue of batches, counted in messages.
#[derive(Clone)]
pub struct Egress {
    tx: mpsc::Sender<Vec<Out>>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl Egress {
    /// A queue of at most `cap` messages, and its receiving end for [`run`].
    pub fn new(cap: usize) -> (Egress, Queue) {
        let (tx, rx) = mpsc::channel(cap.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Egress {
                tx,
                queued: queued.clone(),
                cap,
            },
            Queue { rx, queued },
        )
    }

    /// Queues a batch without waiting; returns how many messages did not fit (dropped).
    pub fn send(&self, mut batch: Vec<Out>) -> usize {
        if batch.is_empty() {
            return 0;
        }
        let room = self.cap.saturating_sub(self.queued.load(Relaxed));
        let dropped = batch.len().saturating_sub(room);
        batch.truncate(room);
        if batch.is_empty() {
            return dropped;
        }
        let n = batch.len();
        self.queued.fetch_add(n, Relaxed);
        match self.tx.try_send(batch) {
            Ok(()) => dropped,
            Err(_) => {
                self.queued.fetch_sub(n, Relaxed);
                dropped + n
            }
        }
    }
}

/// The writer's end of the queue.
pub struct Queue {
    rx: mpsc::Receiver<Vec<Out>>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    /// The next batch, waiting on this (blocking, not runtime) thread; None once every handle is
    /// gone and the queue is empty.
    pub fn blocking_next(&mut self) -> Option<Vec<Out>> {
        let b = self.rx.blocking_recv()?;
        self.queued.fetch_sub(b.len(), Relaxed);
        Some(b)
    }

    /// The next batch if one is queued.
    pub fn try_next(&mut self) -> Option<Vec<Out>> {
        let b = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(b.len(), Relaxed);
        Some(b)
    }
}

/// The egress connection's task. Runs until every [`Egress`] handle is gone and the queue is
/// written (and, for QoS 1, acknowledged, or `linger` passed after the last handle went), then
/// disconnects.
pub async fn run(
    conn: MqttConn,
    tls: Option<tokio_rustls::TlsConnector>,
    mut queue: Queue,
    stats: Arc<Stats>,
    limit: Arc<RateLimit>,
    linger: Duration,
) {
    let mut backoff = crate::retry::reconnect_backoff(conn.reconnect_max);
    let mut w = Writer::default();
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
    packet: BytesMut,
    released: bool,
}

/// What lives across connections: the publishes not yet acknowledged, in send order.
#[derive(Default)]
struct Writer {
    inflight: VecDeque<Flight>,
    next_pkid: u16,
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
        let mut batches: Vec<Vec<Out>> = Vec::new();
        loop {
            if !out.is_empty() {
                link::write_out(&mut wr, &mut out, keep_alive).await?;
                ping.reset();
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
                        taken += batch.len();
                        for o in batch {
                            self.encode(o, &mut out);
                        }
                    }
                    queue.queued.fetch_sub(taken, Relaxed);
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
            self.inflight.push_back(Flight {
                pkid: p.pkid,
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

    #[tokio::test]
    async fn the_queue_is_bounded_in_messages_and_drops_what_does_not_fit() {
        let (egress, mut queue) = Egress::new(5);
        assert_eq!(egress.send(out(3)), 0);
        // Two fit of four: the rest is dropped (counted by the caller), never waited for.
        assert_eq!(egress.send(out(4)), 2);
        assert_eq!(egress.send(out(1)), 1);
        assert_eq!(queue.queued.load(Relaxed), 5);
        let mut got = Vec::new();
        assert_eq!(queue.rx.recv_many(&mut got, 10).await, 2);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(egress.send(Vec::new()), 0);
    }

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let mut w = Writer {
            next_pkid: u16::MAX - 1,
            ..Writer::default()
        };
        w.inflight.push_back(Flight {
            pkid: 1,
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
