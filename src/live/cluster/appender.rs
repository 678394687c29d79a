//! The ingest holder's appender: it takes the messages ingest read from the broker (as ingest
//! hands messages to a shard), appends each read batch to the partitions' logs in one
//! pipelined round trip, and only then reports them done, so that ingest acknowledges them to
//! the broker. While Redis cannot take them it retries the same batch and reports nothing:
//! ingest's queue fills, the broker keeps the rest (its in-flight window for QoS 1), nothing is
//! acknowledged that is not stored.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::placement::partition_of;
use super::streams::{AppendError, Entry, PartitionLog, RedisStreams};
use super::view::View;
use crate::live::shard::ShardMsg;
use crate::live::RateLimit;

/// Messages appended in one round trip, at most.
const BATCH: usize = 1024;

/// A batch smaller than this waits `cluster.linger` once for more before it is appended (at
/// 2,000 msg/s, 1 ms cuts the appends' round trips per message from ~0.6 to ~0.2).
pub(super) const LINGER_BELOW: usize = 16;

/// What the appender works with.
pub(super) struct Appender {
    /// The partitions' logs.
    pub log: RedisStreams,
    /// This instance's ingest epoch.
    pub epoch: u64,
    /// Partitions in the cluster.
    pub partitions: u32,
    /// `cluster.linger`.
    pub linger: Duration,
    /// Where stored messages are reported (ingest acknowledges them).
    pub done: mpsc::Sender<Vec<u64>>,
    pub view: View,
    pub limit: Arc<RateLimit>,
}

/// Runs until ingest lets go of its queue (its stop), or until another instance's newer ingest
/// epoch refuses an append (this instance lost the lease: it stops, and what it had not stored
/// is delivered to the new holder by the broker).
pub(super) async fn run(a: Appender, mut rx: mpsc::Receiver<ShardMsg>) {
    let Appender {
        mut log,
        epoch,
        partitions,
        linger,
        done,
        view,
        limit,
    } = a;
    let mut entries = Vec::with_capacity(BATCH);
    let mut acks = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut lingered = false;
        loop {
            let Some(m) = next.take() else {
                // A small batch waits a moment for more: a round trip per read of a slow
                // stream of messages would cost Redis more than the batch's messages.
                if lingered || linger.is_zero() || entries.len() >= LINGER_BELOW {
                    break;
                }
                lingered = true;
                tokio::time::sleep(linger).await;
                next = rx.try_recv().ok();
                continue;
            };
            if let ShardMsg::Job(j) = m {
                entries.push(Entry {
                    partition: partition_of(&j.device, partitions),
                    topic: bytes::Bytes::copy_from_slice(j.topic.as_bytes()),
                    payload: j.payload,
                    received: j.received,
                });
                acks.extend(j.ack);
            }
            if entries.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let mut failures = 0u32;
        loop {
            match log.append(epoch, &entries).await {
                Ok(_) => {
                    view.stats.appended.fetch_add(entries.len() as u64, Relaxed);
                    view.stats.append_batches.fetch_add(1, Relaxed);
                    if failures > 0 {
                        view.redis_ok();
                        tracing::info!("cluster: appending to the partition logs again");
                    }
                    break;
                }
                Err(AppendError::Stale(e)) => {
                    tracing::warn!(
                        "cluster: another instance took the ingest over ({e}); this one stops reading the broker"
                    );
                    view.stats.ingest_fenced.fetch_add(1, Relaxed);
                    // The control loop stops this ingest now, not at its next step.
                    view.wake();
                    return;
                }
                Err(AppendError::Failed(e)) => {
                    view.redis_failed(&e);
                    if failures == 0 || limit.allow() {
                        tracing::warn!(
                            held = entries.len(),
                            "cluster: {e}; the messages are not acknowledged to the broker until they are stored; retrying"
                        );
                    }
                    failures += 1;
                    let wait = Duration::from_millis((100u64 << failures.min(4)).min(1_000));
                    tokio::time::sleep(wait).await;
                }
            }
        }
        entries.clear();
        if !acks.is_empty() && done.send(std::mem::take(&mut acks)).await.is_err() {
            return;
        }
    }
}
