//! MQTT ingest: the connection that subscribes. Its event loop is polled by this task alone
//! (never `.await` a client request from the task that polls: rumqttc deadlocks), topics become
//! shard jobs by the topic patterns, and QoS 1 messages are acknowledged by a separate task once
//! their chains ran, in receive order.
//!
//! Reconnects use capped exponential backoff with jitter; every ConnAck resubscribes, so a
//! broker that lost the session (restart without persistence) still delivers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode, Transport,
};
use tokio::sync::{mpsc, watch};

use super::publisher::MAX_OUTGOING_PACKET;
use super::shard::{shard_of, AckMsg, Job, ShardMsg};
use super::{wall_ms, RateLimit, Stats};
use crate::config::settings::MqttConn;
use crate::retry::reconnect_backoff;
use crate::topic::TopicPattern;

/// Largest MQTT packet our connections read: the largest the protocol can express (its
/// remaining length is at most 268,435,455 bytes). rumqttc drops the connection on a larger
/// packet, and with a persistent session the broker then delivers the same message at every
/// reconnect, forever: ingest would stall on one message. So nothing the broker may send is
/// refused here; `ingest.max_payload_bytes` then skips the message alone (counted `too_large`,
/// acknowledged, dead-lettered by reference). Such a message costs its size in memory while
/// it is read; a broker's `message_size_limit` keeps them out earlier.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;

/// rumqttc options for one of our connections (`suffix`: `in`, `out`, `sim`, `record`).
pub fn options(conn: &MqttConn, suffix: &str) -> Result<MqttOptions, String> {
    let id = format!("{}-{suffix}", conn.client_id);
    let mut o = MqttOptions::new(id, conn.host.clone(), conn.port);
    o.set_keep_alive(conn.keep_alive);
    o.set_clean_session(!conn.persistent_session);
    o.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    o.set_request_channel_capacity(1024);
    o.set_inflight(100);
    if let Some(u) = &conn.username {
        o.set_credentials(u.clone(), conn.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &conn.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let client_auth = match &tls.client {
            Some((c, k)) => Some((read(c)?, read(k)?)),
            None => None,
        };
        o.set_transport(Transport::tls(read(&tls.ca)?, client_auth, None));
    }
    Ok(o)
}

/// A client and its event loop, with TCP_NODELAY: commands are small packets, and Nagle's
/// algorithm with delayed ACKs would hold them for up to 40 ms.
pub fn client(o: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
    let (c, mut events) = AsyncClient::new(o, cap);
    let mut net = events.network_options();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    (c, events)
}

/// Subscription filters for the topic patterns (duplicates removed).
pub fn filters(patterns: &[TopicPattern]) -> Vec<String> {
    let mut f: Vec<String> = patterns
        .iter()
        .flat_map(TopicPattern::mqtt_filters)
        .collect();
    f.sort();
    f.dedup();
    f
}

/// What the ingest task needs.
pub struct Ingest {
    /// Topic patterns.
    pub patterns: Vec<TopicPattern>,
    /// Subscription QoS.
    pub qos: u8,
    /// Shard queues.
    pub shards: Vec<mpsc::Sender<ShardMsg>>,
    /// The acknowledging task's queue (QoS 1).
    pub acks: mpsc::Sender<AckMsg>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Log limiter.
    pub limit: Arc<RateLimit>,
    /// The longest wait between reconnect attempts.
    pub reconnect_max: Duration,
}

/// Polls the ingest connection. When `stop` turns true it stops handing messages to the shards
/// (dropping its queues, so they can finish) but keeps polling, so that the acknowledgements of
/// what the shards still finish reach the broker, until the client disconnects. Messages that
/// arrive meanwhile are not acknowledged: the broker delivers them again after a restart.
pub async fn run(
    ing: Ingest,
    client: AsyncClient,
    mut events: EventLoop,
    mut stop: watch::Receiver<bool>,
) {
    let Ingest {
        patterns,
        qos: sub_qos,
        shards,
        acks,
        stats,
        limit,
        reconnect_max,
    } = ing;
    let mut shards = shards;
    let mut acks = Some(acks);
    let mut draining = false;
    let subs = filters(&patterns);
    let qos = if sub_qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut backoff = reconnect_backoff(reconnect_max);
    let mut seq: u64 = 0;
    let mut connected_once = false;
    let mut batch = Batch::new(shards.len());
    loop {
        // Hand over what a read brought once rumqttc has none of it left buffered (or a batch
        // is full): one wake-up of each shard per read, not one per message.
        if batch.len > 0 && (events.state.events.is_empty() || batch.len >= BATCH) {
            if let Some(acks) = &acks {
                if batch.hand_over(acks, &shards).await.is_err() {
                    break;
                }
            }
        }
        let ev = tokio::select! {
            _ = stop.changed(), if !draining => {
                // What was read before the stop still reaches the shards.
                if let Some(acks) = &acks {
                    let _ = batch.hand_over(acks, &shards).await;
                }
                draining = true;
                shards.clear();
                acks = None;
                continue;
            }
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(Event::Incoming(Packet::Publish(_))) if draining => {}
            Err(_) if draining => break,
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                stats.connects.fetch_add(1, Relaxed);
                if connected_once {
                    tracing::info!(session_present = ack.session_present, "MQTT reconnected");
                } else {
                    tracing::info!(filters = ?subs, "MQTT connected; subscribing");
                }
                connected_once = true;
                // One SUBSCRIBE for every filter; the engine counts as connected (`/healthz`
                // 200) once the broker acknowledged it, so a message published after a
                // healthy probe is never published before the subscription exists.
                let filters = subs.iter().map(|f| SubscribeFilter::new(f.clone(), qos));
                if subs.is_empty() {
                    stats.connected.store(true, Relaxed);
                } else if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!("cannot subscribe to {subs:?}: {e}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused: Vec<&String> = subs
                    .iter()
                    .zip(&ack.return_codes)
                    .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                    .map(|(f, _)| f)
                    .collect();
                if !refused.is_empty() {
                    tracing::error!(
                        filters = ?refused,
                        "the MQTT broker refused these subscriptions; their messages will not arrive (check the broker's ACL for this user)"
                    );
                }
                stats.connected.store(true, Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if acks.is_none() {
                    continue;
                }
                stats.received.fetch_add(1, Relaxed);
                let received = wall_ms();
                let ack = if p.qos != QoS::AtMostOnce {
                    seq += 1;
                    batch.acks.push(AckMsg::Pending(seq, ack_handle(&p)));
                    Some(seq)
                } else {
                    None
                };
                match patterns.iter().find_map(|pat| pat.matches(&p.topic)) {
                    Some(m) => {
                        let device: Arc<str> = m.device.into();
                        let shard = shard_of(&device, shards.len());
                        batch.jobs[shard].push(Job {
                            device,
                            kind: m.kind,
                            topic: p.topic.as_str().into(),
                            captures: m.captures,
                            payload: p.payload,
                            received,
                            ack,
                        });
                    }
                    None => {
                        stats.no_pattern.fetch_add(1, Relaxed);
                        if limit.allow() {
                            tracing::warn!(topic = %p.topic, "topic matches no topic pattern; ignored");
                        }
                        if let Some(seq) = ack {
                            batch.acks.push(AckMsg::Done(seq));
                        }
                    }
                }
                batch.len += 1;
            }
            Ok(_) => {}
            Err(e) => {
                // What was read before the connection dropped still reaches the shards now.
                if let Some(acks) = acks.as_ref().filter(|_| batch.len > 0) {
                    if batch.hand_over(acks, &shards).await.is_err() {
                        break;
                    }
                }
                stats.connected.store(false, Relaxed);
                let wait = backoff.next_delay();
                stats.connect_errors.fetch_add(1, Relaxed);
                if limit.allow() {
                    tracing::warn!("MQTT ingest connection: {e}; retrying in {wait:?}");
                }
                tokio::select! {
                    _ = stop.changed() => {
                        draining = true;
                        shards.clear();
                        acks = None;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    tracing::debug!("ingest stopped");
}

/// Messages handed to a shard at once, at most: a read from the socket brings many, and one
/// hand-over per read wakes each shard once instead of once per message.
const BATCH: usize = 256;

/// What one read of the ingest connection brought, until it is handed over: the acker's
/// entries first (a message is registered as pending before its shard can report it done),
/// then each shard's jobs, in receive order.
struct Batch {
    acks: Vec<AckMsg>,
    jobs: Vec<Vec<Job>>,
    len: usize,
}

impl Batch {
    fn new(shards: usize) -> Batch {
        Batch {
            acks: Vec::new(),
            jobs: (0..shards).map(|_| Vec::with_capacity(BATCH)).collect(),
            len: 0,
        }
    }

    /// Sends what was gathered. The shard queues are bounded in messages: a full one makes
    /// ingest wait (backpressure reaches the broker). Slots are reserved for a shard's whole
    /// share at once (in chunks no larger than the queue), so its messages arrive together.
    async fn hand_over(
        &mut self,
        acks: &mpsc::Sender<AckMsg>,
        shards: &[mpsc::Sender<ShardMsg>],
    ) -> Result<(), ()> {
        while !self.acks.is_empty() {
            let n = self.acks.len().min(acks.max_capacity());
            let permits = acks.reserve_many(n).await.map_err(|_| ())?;
            for (permit, m) in permits.zip(self.acks.drain(..n)) {
                permit.send(m);
            }
        }
        for (tx, jobs) in shards.iter().zip(&mut self.jobs) {
            while !jobs.is_empty() {
                let n = jobs.len().min(tx.max_capacity());
                let permits = tx.reserve_many(n).await.map_err(|_| ())?;
                for (permit, job) in permits.zip(jobs.drain(..n)) {
                    permit.send(ShardMsg::Job(job));
                }
            }
        }
        self.len = 0;
        Ok(())
    }
}

/// What the acker keeps of a message until it is acknowledged: its packet id and QoS, not its
/// topic or payload (a large payload must not wait in the ack queue).
fn ack_handle(p: &Publish) -> Publish {
    let mut h = Publish::new("", p.qos, Vec::new());
    h.pkid = p.pkid;
    h
}

/// Acknowledges QoS 1 messages in receive order, once each one's chains ran.
pub async fn acker(client: AsyncClient, mut rx: mpsc::Receiver<AckMsg>) {
    let mut q = AckQueue::default();
    let mut ready = Vec::new();
    while let Some(m) = rx.recv().await {
        match m {
            AckMsg::Pending(seq, p) => q.pending(seq, p),
            AckMsg::Done(seq) => q.done(seq, &mut ready),
        }
        for p in ready.drain(..) {
            if client.ack(&p).await.is_err() {
                return;
            }
        }
    }
}

/// QoS 1 messages in receive order, each marked when its chains ran; only the finished prefix
/// may be acknowledged (a later message that finished first waits for the earlier ones).
pub struct AckQueue<T = Publish> {
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

    #[test]
    fn filters_cover_the_patterns() {
        let p = vec![
            TopicPattern::parse("site/{site}/device/{device}/{kind}", None).unwrap(),
            TopicPattern::parse("device/{device}/{kind}", None).unwrap(),
            TopicPattern::parse("device/{device}/{kind}", None).unwrap(),
        ];
        let f = filters(&p);
        assert_eq!(f.len(), 8, "{f:?}");
        assert!(f.contains(&"device/+/telemetry".to_string()));
        assert!(f.contains(&"site/+/device/+/rpc_response".to_string()));
        assert!(!f.iter().any(|f| f.ends_with("/+")), "{f:?}");
    }
}
