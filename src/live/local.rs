//! The engine on its embedded broker: ingest and egress through rumqttd's local links, in
//! process (feature `embedded-broker`). The broker's router hands a subscriber's messages over
//! in a shared buffer and one wake-up; here they become shard jobs without a socket, a codec or
//! a loopback TCP hop in between, and the shards' publishes reach the router the same way.
//!
//! - **Ingest**: one link per subscription filter, each read by a task of its own. A link
//!   subscribes at QoS 0: broker and engine live and die together, so an acknowledgement between
//!   them would protect nothing (a device's QoS 1 PUBACK comes from the broker once the message
//!   is in its log, as with any broker). A link reads what the router buffered (at most a
//!   [`BATCH`] at a time), hands it to the shards, and only then asks the router for more: a
//!   full shard queue holds the router's delivery to the engine, not the broker's intake.
//! - **Skipped messages**: rumqttd frees its commit logs by size, read or not (see
//!   [`super::broker`]); a subscriber that fell further behind than a log holds skips to the
//!   oldest message kept. Every message carries its offset in the filter's log, so a gap is
//!   counted exactly (`broker_dropped`) and logged.
//! - **Egress**: the shards' batches of publishes go into the router's buffer for the egress
//!   link, one wake-up of the router per batch. The router's queue is bounded, so this runs on a
//!   blocking thread, not on the I/O runtime.
//! - A link the router dropped is attached again, with backoff. (A network client cannot take
//!   a link's client id over: the listener refuses the engine's ids, see [`super::front`].)

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use tokio::sync::{mpsc, watch};

use super::front::{now, Backlog};
use super::ingest::{no_pattern, Batch, BATCH};
use super::publisher::Queue;
use super::shard::ShardMsg;
use super::{RateLimit, Stats};
use crate::engine::clock::wall_ms;
use crate::retry::reconnect_backoff;
use crate::topic::TopicPattern;

/// Makes a local link: (client id, dynamic filters) → its two ends.
type Attach = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx), String> + Send + Sync;

/// The engine's links to the embedded broker, made before its listener starts.
pub struct Links {
    ingest: IngestLinks,
    egress: EgressLink,
}

/// The ingest links.
pub struct IngestLinks {
    subs: Vec<Subscription>,
    attach: Arc<Attach>,
    backlog: Arc<Backlog>,
}

/// The egress link.
pub struct EgressLink {
    link: (LinkTx, LinkRx),
    attach: Arc<Attach>,
    backlog: Arc<Backlog>,
}

/// One ingest link, subscribed to one filter.
struct Subscription {
    filter: String,
    client_id: String,
    link: Option<(LinkTx, LinkRx)>,
}

/// How long an ingest link waits for the router, while the broker holds its intake for it,
/// before it takes the backlog's count as wrong (see `Reader::read`).
const IDLE_WITH_GATE_CLOSED: std::time::Duration = std::time::Duration::from_millis(500);

/// The client id of the egress link. Ids of the engine's links are reserved: the listener
/// refuses a network client that connects with one.
const EGRESS_ID: &str = "rulechain-engine-out";

impl Links {
    /// Ingest's links and egress's.
    pub fn split(self) -> (IngestLinks, EgressLink) {
        (self.ingest, self.egress)
    }

    /// Attaches the engine: an ingest link for each filter and the egress link (with dynamic
    /// filters, so that it may publish to a topic nobody subscribed to).
    pub(super) fn attach(
        filters: &[String],
        attach: impl Fn(&str, bool) -> Result<(LinkTx, LinkRx), String> + Send + Sync + 'static,
        backlog: Arc<Backlog>,
    ) -> Result<Links, String> {
        let mut ingest = Vec::new();
        for (i, filter) in filters.iter().enumerate() {
            let client_id = format!("rulechain-engine-in-{i}");
            let link = attach(&client_id, false)?;
            ingest.push(Subscription {
                filter: filter.clone(),
                client_id,
                link: Some(link),
            });
        }
        let egress = attach(EGRESS_ID, true)?;
        let attach: Arc<Attach> = Arc::new(attach);
        Ok(Links {
            ingest: IngestLinks {
                subs: ingest,
                attach: attach.clone(),
                backlog: backlog.clone(),
            },
            egress: EgressLink {
                link: egress,
                attach,
                backlog,
            },
        })
    }
}

/// Starts ingest on the local links: a task per filter. Each stops handing messages to the
/// shards when `stop` turns true, dropping its queues so the shards can finish.
pub fn ingest(
    links: IngestLinks,
    patterns: &[TopicPattern],
    shards: &[mpsc::Sender<ShardMsg>],
    stats: &Arc<Stats>,
    limit: &Arc<RateLimit>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    tracing::info!(
        filters = ?links.subs.iter().map(|s| &s.filter).collect::<Vec<_>>(),
        "attached to the embedded broker in process; subscribing"
    );
    if links.subs.is_empty() {
        stats.connects.fetch_add(1, Relaxed);
        stats.connected.store(true, Relaxed);
    }
    let subscribed = Arc::new(AtomicUsize::new(0));
    let total = links.subs.len();
    links
        .subs
        .into_iter()
        .enumerate()
        .map(|(index, sub)| {
            let reader = Reader {
                index,
                backlog: links.backlog.clone(),
                patterns: patterns.to_vec(),
                shards: shards.to_vec(),
                stats: stats.clone(),
                limit: limit.clone(),
                batch: Batch::new(shards.len()),
                next_offset: None,
                acked: false,
                took: 0,
                subscribed: (subscribed.clone(), total),
            };
            tokio::spawn(reader.run(sub, links.attach.clone(), stop.clone()))
        })
        .collect()
}

/// One ingest link's task.
struct Reader {
    /// Which of the engine's filters (and logs) this link reads.
    index: usize,
    /// What the broker's listener lets in, against what this link took.
    backlog: Arc<Backlog>,
    patterns: Vec<TopicPattern>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    stats: Arc<Stats>,
    limit: Arc<RateLimit>,
    batch: Batch,
    /// The log offset the next message should have (per link: one filter, one log), when known.
    next_offset: Option<u64>,
    /// This link's subscription was acknowledged (since it was last attached).
    acked: bool,
    /// Messages taken from the log (or skipped) since the backlog was last told.
    took: u64,
    /// Links that have their subscription, of how many: the engine is ready with all.
    subscribed: (Arc<AtomicUsize>, usize),
}

impl Reader {
    async fn run(
        mut self,
        mut sub: Subscription,
        attach: Arc<Attach>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = reconnect_backoff(std::time::Duration::from_secs(5));
        let mut first = true;
        loop {
            let (mut tx, mut rx) = match sub.link.take() {
                Some(l) => l,
                // Attaching waits for the router's answer: not on a runtime worker.
                None => match tokio::task::block_in_place(|| attach(&sub.client_id, false)) {
                    Ok(l) => l,
                    Err(e) => {
                        self.warn(&e);
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        }
                    }
                },
            };
            // The engine's links subscribe before the broker listens, so at first each filter's
            // log is new and its first message has offset 0; a link attached again joins a log
            // already written, at an offset it cannot know.
            self.next_offset = first.then_some(0);
            if !first {
                // It reads on from the log's end: what entered before is not waited for.
                self.backlog.caught_up(self.index);
            }
            // The router's queue is nearly empty at start; a full one holds this briefly.
            if let Err(e) = tx.subscribe(sub.filter.clone()) {
                self.warn(&format!("cannot subscribe to {}: {e}", sub.filter));
                // Attach again after a pause, as for every other failure here.
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
            if first {
                tracing::debug!(filter = %sub.filter, "subscribing on the embedded broker");
                first = false;
            } else {
                tracing::info!(filter = %sub.filter, "attached to the embedded broker again");
            }
            match self.read(&mut rx, &mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    // Not ready until this filter is subscribed again (`/readyz`).
                    if std::mem::take(&mut self.acked) {
                        self.subscribed.0.fetch_sub(1, Relaxed);
                    }
                    self.stats.connected.store(false, Relaxed);
                    self.stats.connect_errors.fetch_add(1, Relaxed);
                    self.warn(&e);
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    fn warn(&self, e: &str) {
        if self.limit.allow() {
            tracing::warn!("embedded broker link: {e}");
        }
    }

    /// Reads the link until `stop` (Ok) or until the router drops it (Err).
    async fn read(
        &mut self,
        rx: &mut LinkRx,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let dropped = |e| format!("the broker dropped the engine's link ({e})");
        loop {
            let n = tokio::select! {
                biased;
                _ = stop.changed() => {
                    self.shards.clear();
                    return Ok(());
                }
                n = rx.next() => n.map_err(dropped)?,
                // The broker holds its intake for this link, yet the router has nothing more
                // for it: what was counted as entered never reached its log (a topic counted
                // against the filter that the router routes otherwise). Count it as taken
                // rather than hold the broker for ever.
                _ = tokio::time::sleep(IDLE_WITH_GATE_CLOSED), if self.backlog.is_closed() => {
                    if self.backlog.messages_behind(self.index) > 0 {
                        tracing::debug!(
                            behind = self.backlog.messages_behind(self.index),
                            "embedded broker: the engine's count of a log was off; taken as caught up"
                        );
                        self.backlog.caught_up(self.index);
                    }
                    continue;
                }
            };
            let received = wall_ms();
            let mut unscheduled = false;
            if let Some(n) = n {
                unscheduled |= self.take(n, received);
            }
            // Everything the router buffered (one wake-up brings many), up to a batch.
            while self.batch.len < BATCH {
                match now(rx.next()) {
                    Some(Ok(Some(n))) => unscheduled |= self.take(n, received),
                    Some(Err(e)) => return Err(dropped(e)),
                    Some(Ok(None)) | None => break,
                }
            }
            if self.batch.len > 0 {
                self.batch
                    .hand_over(&self.shards, None, &mut Vec::new())
                    .await?;
            }
            // Out of the broker, in the shards' queues: the broker may let more in.
            let took = std::mem::take(&mut self.took);
            if took > 0 {
                self.backlog.taken(self.index, took);
            }
            // The router stopped filling this link's buffer once it was full: ask for more
            // only now that the shards took what it held.
            if unscheduled {
                rx.wake().await.map_err(dropped)?;
            }
        }
    }

    /// One notification; true when the router paused the link until it is woken.
    fn take(&mut self, n: Notification, received: i64) -> bool {
        match n {
            Notification::Forward(f) => {
                if let Some((_, offset)) = f.cursor {
                    self.count_skipped(offset);
                }
                self.took += 1;
                self.stats.received.fetch_add(1, Relaxed);
                let Ok(topic) = std::str::from_utf8(&f.publish.topic) else {
                    no_pattern(
                        &self.stats,
                        &self.limit,
                        &String::from_utf8_lossy(&f.publish.topic),
                    );
                    return false;
                };
                if !self
                    .batch
                    .add(&self.patterns, topic, f.publish.payload, received, None)
                {
                    no_pattern(&self.stats, &self.limit, topic);
                }
                false
            }
            // An ingest link publishes nothing: its only acknowledgement is the SUBACK.
            Notification::DeviceAck(_) => {
                if !self.acked {
                    self.acked = true;
                    let (n, total) = &self.subscribed;
                    // Every filter is subscribed (again): the engine counts as connected.
                    if n.fetch_add(1, Relaxed) + 1 == *total {
                        self.stats.connects.fetch_add(1, Relaxed);
                        self.stats.connected.store(true, Relaxed);
                    }
                }
                false
            }
            Notification::Unschedule => true,
            _ => false,
        }
    }

    /// Messages the broker skipped for this link: the gap between the offset expected and the
    /// one that came.
    fn count_skipped(&mut self, offset: u64) {
        if let Some(next) = self.next_offset {
            let gap = offset.saturating_sub(next);
            if gap > 0 {
                self.took += gap;
                self.stats.broker_dropped.fetch_add(gap, Relaxed);
                if self.limit.allow() {
                    tracing::warn!(
                        skipped = gap,
                        "the engine fell behind the embedded broker by more than its log holds; the broker skipped messages (counted as broker_dropped)"
                    );
                }
            }
        }
        self.next_offset = Some(offset + 1);
    }
}

/// The egress link's thread: takes the shards' batches and hands them to the router, all that
/// is queued with one wake-up. Ends when every [`super::publisher::Egress`] handle is gone and
/// the queue is empty. Publishes enter the broker at QoS 0 (in process there is nothing to
/// acknowledge); rumqttd delivers each at its subscriber's QoS, and keeps `retain` ones.
pub fn egress(
    link: EgressLink,
    mut queue: Queue,
    limit: Arc<RateLimit>,
) -> tokio::task::JoinHandle<()> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let EgressLink {
            link,
            attach,
            backlog,
        } = link;
        let mut link = Some(link);
        let mut backoff = reconnect_backoff(std::time::Duration::from_secs(5));
        while let Some(first) = queue.blocking_next() {
            let mut publishes: Vec<Packet> = first.outs.into_iter().map(packet).collect();
            while let Some(more) = queue.try_next() {
                publishes.extend(more.outs.into_iter().map(packet));
            }
            // A link the router dropped is attached again; until then, publishes wait here
            // (the shards' queue to egress is bounded, and drops what does not fit).
            let tx = loop {
                if let Some((tx, rx)) = link.as_mut() {
                    if alive(rx) {
                        break tx;
                    }
                }
                link = None;
                match attach(EGRESS_ID, true) {
                    Ok(l) => {
                        tracing::info!("egress attached to the embedded broker again");
                        link = Some(l);
                    }
                    Err(e) => {
                        if limit.allow() {
                            tracing::warn!("embedded broker egress link: {e}");
                        }
                        std::thread::sleep(backoff.next_delay());
                    }
                }
            };
            // A publish to a topic the engine subscribes to enters its log too.
            for p in &publishes {
                if let Packet::Publish(p, _) = p {
                    backlog.entered(&p.topic, p.payload.len());
                }
            }
            let last = publishes.pop();
            tx.buffer().extend(publishes);
            if let Some(last) = last {
                // `send` adds the last packet and wakes the router once for all of them.
                if let Err(e) = rt.block_on(tx.send(last)) {
                    if limit.allow() {
                        tracing::warn!("embedded broker egress link: {e}");
                    }
                }
            }
            backlog.check();
        }
        tracing::debug!("egress stopped");
    })
}

/// A publish for the router.
fn packet(o: super::publisher::Out) -> Packet {
    let topic = bytes::Bytes::from(o.topic);
    let payload = bytes::Bytes::from(o.payload);
    Packet::Publish(Publish::new(topic, payload, o.retain), None)
}

/// The router still holds the link: its end of the wake-up channel is open. What the router
/// sent to the egress link (nothing is expected: it publishes at QoS 0 and subscribes to
/// nothing) is discarded.
fn alive(rx: &mut LinkRx) -> bool {
    loop {
        match rx.recv_deadline(std::time::Instant::now()) {
            Ok(_) => continue,
            Err(rumqttd::local::LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {
                return true
            }
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::local::LinkBuilder;
    use rumqttd::{Router, RouterConfig};
    use std::time::Duration;

    /// A real rumqttd router (no listener) with logs of `segments` × `segment_bytes`; gives
    /// what makes a link to it (client id, dynamic filters).
    fn router_at(
        segment_bytes: usize,
        segments: usize,
    ) -> impl Fn(&str, bool) -> Result<(LinkTx, LinkRx), String> + Clone + Send + Sync + 'static
    {
        let router_tx = Router::new(
            0,
            RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 500,
                max_segment_size: segment_bytes,
                max_segment_count: segments,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
        )
        .spawn();
        move |id: &str, dynamic: bool| {
            LinkBuilder::new(id, router_tx.clone())
                .dynamic_filters(dynamic)
                .build()
                .map(|(tx, rx, _)| (tx, rx))
                .map_err(|e| e.to_string())
        }
    }

    /// The engine's links to such a router for `filters`, and a device's link to publish with.
    fn router(segment_bytes: usize, segments: usize, filters: &[String]) -> (Links, LinkTx) {
        let connect = router_at(segment_bytes, segments);
        let links = Links::attach(filters, connect.clone(), backlog(filters)).unwrap();
        let (device, rx) = connect("device", true).unwrap();
        // The router drops a link whose receiving end is gone.
        std::mem::forget(rx);
        (links, device)
    }

    /// A backlog for `filters` that never holds anything here (no listener is gated).
    fn backlog(filters: &[String]) -> Arc<Backlog> {
        Arc::new(Backlog::new(filters, 1 << 20))
    }

    fn payload(i: usize) -> String {
        format!("{{\"seq\":{i:06},\"pad\":\"{}\"}}", "x".repeat(100))
    }

    /// Ingest on `links` (pattern `site/{device}/{kind}`) into one shard queue of `queue`.
    fn start(
        links: Links,
        queue: usize,
    ) -> (
        Arc<Stats>,
        mpsc::Receiver<ShardMsg>,
        watch::Sender<bool>,
        Vec<tokio::task::JoinHandle<()>>,
    ) {
        let (ingest_links, _egress) = links.split();
        let (shard_tx, shard_rx) = mpsc::channel(queue);
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop) = watch::channel(false);
        let patterns = vec![TopicPattern::parse("site/{device}/{kind}", None).unwrap()];
        let tasks = ingest(
            ingest_links,
            &patterns,
            &[shard_tx],
            &stats,
            &Arc::new(RateLimit::new(5)),
            &stop,
        );
        (stats, shard_rx, stop_tx, tasks)
    }

    /// Ingest on `links` into one shard queue of 16 that nobody reads yet, once subscribed;
    /// then `count` messages published; gives the sequence numbers the shard got, in order, and
    /// the count the broker skipped, once they add up to `count`.
    async fn run(links: Links, mut device: LinkTx, count: usize) -> (Vec<usize>, u64) {
        let (stats, mut shard_rx, stop_tx, tasks) = start(links, 16);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !stats.connected.load(Relaxed) {
            assert!(tokio::time::Instant::now() < deadline, "never subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..count {
            device.publish("site/d1/telemetry", payload(i)).unwrap();
        }
        let mut seqs = Vec::new();
        while (seqs.len() as u64) + stats.broker_dropped.load(Relaxed) < count as u64 {
            let m = tokio::time::timeout_at(deadline, shard_rx.recv())
                .await
                .expect("ingest stalled")
                .expect("ingest stopped");
            if let ShardMsg::Job(j) = m {
                assert!(j.ack.is_none(), "nothing is acknowledged in process");
                assert_eq!((&*j.device, &*j.topic), ("d1", "site/d1/telemetry"));
                let p = String::from_utf8(j.payload.to_vec()).unwrap();
                assert_eq!(p, payload(p[7..13].parse().unwrap()));
                seqs.push(p[7..13].parse().unwrap());
            }
        }
        let _ = stop_tx.send(true);
        for t in tasks {
            t.await.unwrap();
        }
        (seqs, stats.broker_dropped.load(Relaxed))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_reach_the_shard_in_order_through_the_local_link() {
        // 1 MiB logs hold all 5,000: the shard queue (16) fills, the router waits for ingest.
        let (links, device) = router(1 << 20, 4, &["site/+/+".to_string()]);
        let (seqs, skipped) = run(links, device, 5000).await;
        assert_eq!(skipped, 0);
        assert_eq!(seqs, (0..5000).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_the_router_dropped_is_attached_again_and_messages_flow_on() {
        let filters = ["site/+/+".to_string()];
        let connect = router_at(1 << 20, 4);
        let links = Links::attach(&filters, connect.clone(), backlog(&filters)).unwrap();
        let (mut device, device_rx) = connect("device", true).unwrap();
        let (stats, mut shard_rx, stop_tx, tasks) = start(links, 1024);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let ready = |want_errors: u64| {
            stats.connected.load(Relaxed) && stats.connect_errors.load(Relaxed) == want_errors
        };
        let mut seqs: Vec<usize> = Vec::new();
        for (round, errors) in [(0, 0), (1, 1)] {
            while !ready(errors) {
                assert!(tokio::time::Instant::now() < deadline, "not attached");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for i in round * 100..round * 100 + 100 {
                device.publish("site/d1/telemetry", payload(i)).unwrap();
            }
            while seqs.len() < round * 100 + 100 {
                let m = tokio::time::timeout_at(deadline, shard_rx.recv())
                    .await
                    .expect("messages stopped")
                    .unwrap();
                if let ShardMsg::Job(j) = m {
                    let p = String::from_utf8(j.payload.to_vec()).unwrap();
                    seqs.push(p[7..13].parse().unwrap());
                }
            }
            if round == 0 {
                // A client connects with the engine's client id: the router drops the link.
                let thief = connect("rulechain-engine-in-0", false).unwrap();
                std::mem::forget(thief);
                while stats.connect_errors.load(Relaxed) == 0 {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the drop went unnoticed"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
        assert_eq!(stats.connects.load(Relaxed), 2, "subscribed, then again");
        let _ = stop_tx.send(true);
        for t in tasks {
            t.await.unwrap();
        }
        drop(device_rx);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_broker_skips_for_a_lagging_engine_is_counted_exactly() {
        // Logs of 2 × 4 KiB hold ~60 of these messages; 5,000 are published while ingest waits
        // on a full shard queue, so the broker skips most of them for the engine.
        let (links, device) = router(4096, 2, &["site/+/+".to_string()]);
        let (seqs, skipped) = run(links, device, 5000).await;
        assert!(skipped > 0, "the log cannot hold 5,000 messages");
        assert_eq!(seqs.len() as u64 + skipped, 5000);
        // What arrived is in order, and the newest message is among it.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(seqs.last(), Some(&4999));
    }
}
