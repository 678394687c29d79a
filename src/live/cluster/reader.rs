//! The owners' reader: one task per instance, on its own Redis connection, reading every
//! partition the instance owns in one blocking request (`XREAD … STREAMS` over their logs) and
//! handing each message to its partition's executor, in log order. A partition starts reading
//! after the offset its snapshot covers: the replay after a move and the live reading are the
//! same loop.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

use super::streams::{PartitionLog, RedisStreams};
use super::view::View;
use crate::live::shard::{Job, ShardMsg};
use crate::live::{RateLimit, Stats};
use crate::topic::TopicPattern;

/// Entries read per partition per request, at most.
const READ_BATCH: usize = 256;

/// How long one request waits for a new entry (the set of partitions read changes between
/// requests, so a partition taken over starts within this).
const WAIT_MS: u64 = 200;

/// A partition being read.
pub(super) struct Feed {
    /// Its executor's queue.
    pub tx: mpsc::Sender<ShardMsg>,
    /// The last offset handed over (or the one its snapshot covers).
    pub after: String,
    /// Tells this partition's run from a later one of the same partition.
    pub run: u64,
}

/// The partitions being read, shared with the control loop that adds and removes them.
#[derive(Clone, Default)]
pub(super) struct Feeds {
    map: Arc<Mutex<BTreeMap<u32, Feed>>>,
    changed: Arc<Notify>,
}

impl Feeds {
    pub(super) fn insert(&self, p: u32, feed: Feed) {
        self.lock().insert(p, feed);
        self.changed.notify_one();
    }

    pub(super) fn remove(&self, p: u32) {
        self.lock().remove(&p);
    }

    /// Each partition read now, with its run.
    pub(super) fn runs(&self) -> Vec<(u32, u64)> {
        self.lock().iter().map(|(p, f)| (*p, f.run)).collect()
    }

    /// Each partition's read position now.
    pub(super) fn positions(&self) -> Vec<(u32, String)> {
        self.lock()
            .iter()
            .map(|(p, f)| (*p, f.after.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Feed>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the reader works with.
pub(super) struct Reader {
    /// The partitions' logs (a connection of the reader's own: its requests block).
    pub log: RedisStreams,
    /// The partitions to read.
    pub feeds: Feeds,
    /// Topic patterns (a log keeps the topic; the device and kind come from it again).
    pub patterns: Vec<TopicPattern>,
    pub stats: Arc<Stats>,
    pub view: View,
    pub limit: Arc<RateLimit>,
    /// `cluster.linger`.
    pub linger: Duration,
}

/// Reads until `stop`.
pub(super) async fn run(r: Reader, mut stop: watch::Receiver<bool>) {
    let Reader {
        mut log,
        feeds,
        patterns,
        stats,
        view,
        limit,
        linger,
    } = r;
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        let from = feeds.positions();
        if from.is_empty() {
            tokio::select! {
                _ = feeds.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(WAIT_MS)) => {}
                _ = stop.changed() => break,
            }
            continue;
        }
        let read = tokio::select! {
            r = log.read_many(&from, READ_BATCH, WAIT_MS) => r,
            _ = stop.changed() => break,
        };
        let parts = match read {
            Ok(p) => {
                failures = 0;
                p
            }
            Err(e) => {
                view.redis_failed(&e);
                if limit.allow() {
                    tracing::warn!("cluster: {e}; retrying");
                }
                failures += 1;
                let wait = Duration::from_millis((100u64 << failures.min(4)).min(1_000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
        };
        let read: usize = parts.iter().map(|(_, e)| e.len()).sum();
        for (p, entries) in parts {
            let Some((tx, run)) = feeds.lock().get(&p).map(|f| (f.tx.clone(), f.run)) else {
                continue;
            };
            let mut last = None;
            for (offset, e) in entries {
                let Ok(topic) = std::str::from_utf8(&e.topic) else {
                    continue;
                };
                // The same patterns as the ingest holder's (one config): a topic no pattern
                // takes now came in under rules since changed.
                let Some(m) = patterns.iter().find_map(|pat| pat.matches(topic)) else {
                    crate::live::ingest::no_pattern(&stats, &limit, topic);
                    last = Some(offset);
                    continue;
                };
                let job = Job {
                    device: m.device.into(),
                    kind: m.kind,
                    topic: topic.into(),
                    captures: m.captures,
                    payload: e.payload,
                    received: e.received,
                    ack: None,
                    offset: Some(offset.clone().into_boxed_str()),
                };
                if tx.send(ShardMsg::Job(job)).await.is_err() {
                    // The partition stopped (moved): its next owner reads from its snapshot.
                    break;
                }
                view.stats.read.fetch_add(1, Relaxed);
                last = Some(offset);
            }
            if let Some(last) = last {
                if let Some(f) = feeds.lock().get_mut(&p).filter(|f| f.run == run) {
                    f.after = last;
                }
            }
        }
        // A small read waits a moment before the next (as the appender's small batches do).
        if read > 0 && read < super::appender::LINGER_BELOW && !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
    }
}
