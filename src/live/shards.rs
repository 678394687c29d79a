//! The one road to the shards for everything but ingest's jobs and the reloads: operators'
//! acknowledgements and clears (through the alarm registry's route) and the API's questions.
//!
//! It holds weak senders: only ingest and the reloader keep a shard's queue open, so at
//! shutdown the shards finish once those let go, whatever the API is still asking. A device
//! belongs to the shard [`shard_of`] names, the same for ingest, acknowledgements and questions.
//! The handle exists before the shards do (the alarm registry, which the shards use, needs its
//! route first) and is pointed at them once they start.
//!
//! In a cluster the handle's slots are the partitions: a device belongs to the partition
//! [`partition_of`] names, and a slot holds the queue of the partition's executor while this
//! instance owns it (another instance's partition is [`Unreachable::Elsewhere`]).

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::cluster::placement::partition_of;
use super::devices::Ask;
use super::shard::{shard_of, AckReq, ShardMsg};
use crate::alarm::registry::{AckFuture, AckRoute, AlarmOp};
use crate::alarm::AckError;

/// Why a shard could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The engine is shutting down (or has not started its shards).
    Gone,
    /// The shard did not take the message, or did not answer, in time.
    Busy,
    /// In a cluster: the device's partition is not this instance's now.
    Elsewhere,
}

/// Where the shards' queues are.
enum Route {
    /// One process: a fixed set of shards.
    Fixed(Vec<mpsc::WeakSender<ShardMsg>>),
    /// A cluster: one slot per partition, filled while this instance owns it.
    Partitions(RwLock<Vec<Option<mpsc::WeakSender<ShardMsg>>>>),
}

/// In a cluster: how an operator's action on another instance's device reaches that
/// instance.
pub type Remote = Box<dyn Fn(AlarmOp) -> AckFuture + Send + Sync>;

/// The shards' queues, shared (cheap to clone).
#[derive(Clone, Default)]
pub struct Shards {
    tx: Arc<OnceLock<Route>>,
    remote: Arc<OnceLock<Remote>>,
}

impl Shards {
    /// A handle whose shards start later ([`Shards::attach`]).
    pub fn new() -> Shards {
        Shards::default()
    }

    /// Points the handle at the shards' queues (once; later calls are ignored).
    pub fn attach(&self, queues: &[mpsc::Sender<ShardMsg>]) {
        let _ = self.tx.set(Route::Fixed(
            queues.iter().map(mpsc::Sender::downgrade).collect(),
        ));
    }

    /// Makes the handle a cluster's, with `partitions` empty slots (once, before any
    /// [`Shards::attach`]).
    pub fn partitioned(&self, partitions: u32) {
        let _ = self.tx.set(Route::Partitions(RwLock::new(vec![
            None;
            partitions as usize
        ])));
    }

    /// In a cluster: points partition `p`'s slot at its executor's queue (None: not ours now).
    pub fn set_partition(&self, p: u32, queue: Option<&mpsc::Sender<ShardMsg>>) {
        if let Some(Route::Partitions(slots)) = self.tx.get() {
            let mut slots = slots.write().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slots.get_mut(p as usize) {
                *slot = queue.map(mpsc::Sender::downgrade);
            }
        }
    }

    /// In a cluster: where actions on devices of other instances go (once).
    pub fn set_remote(&self, remote: Remote) {
        let _ = self.remote.set(remote);
    }

    /// The queues of every shard (every partition this instance owns) now, for the reloads.
    pub fn senders(&self) -> Vec<mpsc::Sender<ShardMsg>> {
        match self.tx.get() {
            None => Vec::new(),
            Some(Route::Fixed(tx)) => tx.iter().filter_map(mpsc::WeakSender::upgrade).collect(),
            Some(Route::Partitions(slots)) => slots
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .flatten()
                .filter_map(mpsc::WeakSender::upgrade)
                .collect(),
        }
    }

    /// How many shards run (0 before they start); in a cluster, how many partitions it has.
    pub fn len(&self) -> usize {
        match self.tx.get() {
            None => 0,
            Some(Route::Fixed(tx)) => tx.len(),
            Some(Route::Partitions(slots)) => slots.read().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    /// No shards (before they start).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard that owns `device`.
    pub fn shard_of(&self, device: &str) -> usize {
        match self.tx.get() {
            Some(Route::Partitions(_)) => partition_of(device, self.len() as u32) as usize,
            _ => shard_of(device, self.len().max(1)),
        }
    }

    /// Whether `device`'s shard runs here (always in one process; in a cluster, while this
    /// instance owns its partition).
    pub fn is_here(&self, device: &str) -> bool {
        self.sender(self.shard_of(device)).is_ok()
    }

    /// Messages waiting in each shard's queue (in a cluster: each partition's, 0 for another
    /// instance's).
    pub fn depths(&self) -> Vec<usize> {
        let depth = |t: &mpsc::WeakSender<ShardMsg>| {
            t.upgrade().map_or(0, |t| t.max_capacity() - t.capacity())
        };
        match self.tx.get() {
            None => Vec::new(),
            Some(Route::Fixed(tx)) => tx.iter().map(depth).collect(),
            Some(Route::Partitions(slots)) => slots
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|t| t.as_ref().map_or(0, depth))
                .collect(),
        }
    }

    fn sender(&self, shard: usize) -> Result<mpsc::Sender<ShardMsg>, Unreachable> {
        match self.tx.get() {
            None => Err(Unreachable::Gone),
            Some(Route::Fixed(tx)) => tx
                .get(shard)
                .and_then(mpsc::WeakSender::upgrade)
                .ok_or(Unreachable::Gone),
            Some(Route::Partitions(slots)) => slots
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(shard)
                .and_then(Option::as_ref)
                .and_then(mpsc::WeakSender::upgrade)
                .ok_or(Unreachable::Elsewhere),
        }
    }

    /// Sends `msg` to shard `shard`, waiting for room at most `timeout` (None: as long as the
    /// shard takes).
    async fn send(
        &self,
        shard: usize,
        msg: ShardMsg,
        timeout: Option<Duration>,
    ) -> Result<(), Unreachable> {
        let tx = self.sender(shard)?;
        let sent = match timeout {
            Some(t) => tokio::time::timeout(t, tx.send(msg))
                .await
                .map_err(|_| Unreachable::Busy)?,
            None => tx.send(msg).await,
        };
        sent.map_err(|_| Unreachable::Gone)
    }

    /// Asks shard `shard` a question and waits for its answer, each step bounded by `timeout`.
    pub async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Ask,
        timeout: Duration,
    ) -> Result<T, Unreachable> {
        let (reply, answer) = oneshot::channel();
        self.send(shard, ShardMsg::Ask(make(reply)), Some(timeout))
            .await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Unreachable::Gone),
            Err(_) => Err(Unreachable::Busy),
        }
    }

    /// The alarm registry's route for operators' actions: each goes to its device's shard,
    /// which answers with the alarm's new status. No timeout: an action waits its turn behind
    /// the shard's messages, as an acknowledgement must follow what came before it.
    pub fn ack_route(&self) -> AckRoute {
        let shards = self.clone();
        Box::new(move |op| {
            let shards = shards.clone();
            Box::pin(async move {
                // Another instance's device (a cluster): handed to it, once.
                if !op.forwarded && !shards.is_here(&op.device) {
                    if let Some(remote) = shards.remote.get() {
                        return remote(op).await;
                    }
                }
                let (reply, answer) = oneshot::channel();
                let shard = shards.shard_of(&op.device);
                shards
                    .send(shard, ShardMsg::Ack(AckReq { op, reply }), None)
                    .await
                    .map_err(|_| AckError::ShuttingDown)?;
                answer.await.map_err(|_| AckError::ShuttingDown)?
            })
        })
    }
}
