//! The one road to the shards for everything but ingest's jobs and the reloads: operators'
//! acknowledgements and clears (through the alarm registry's route) and the API's questions.
//!
//! It holds weak senders: only ingest and the reloader keep a shard's queue open, so at
//! shutdown the shards finish once those let go, whatever the API is still asking. A device
//! belongs to the shard [`shard_of`] names, the same for ingest, acknowledgements and questions.
//! The handle exists before the shards do (the alarm registry, which the shards use, needs its
//! route first) and is pointed at them once they start.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::devices::Ask;
use super::shard::{shard_of, AckReq, ShardMsg};
use crate::engine::alarm::AckError;
use crate::engine::registry::AckRoute;

/// Why a shard could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The engine is shutting down (or has not started its shards).
    Gone,
    /// The shard did not take the message, or did not answer, in time.
    Busy,
}

/// The shards' queues, shared (cheap to clone).
#[derive(Clone, Default)]
pub struct Shards {
    tx: Arc<OnceLock<Vec<mpsc::WeakSender<ShardMsg>>>>,
}

impl Shards {
    /// A handle whose shards start later ([`Shards::attach`]).
    pub fn new() -> Shards {
        Shards::default()
    }

    /// Points the handle at the shards' queues (once; later calls are ignored).
    pub fn attach(&self, queues: &[mpsc::Sender<ShardMsg>]) {
        let _ = self
            .tx
            .set(queues.iter().map(mpsc::Sender::downgrade).collect());
    }

    /// How many shards run (0 before they start).
    pub fn len(&self) -> usize {
        self.tx.get().map_or(0, Vec::len)
    }

    /// No shards (before they start).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard that owns `device`.
    pub fn shard_of(&self, device: &str) -> usize {
        shard_of(device, self.len().max(1))
    }

    /// Messages waiting in each shard's queue.
    pub fn depths(&self) -> Vec<usize> {
        self.tx.get().map_or_else(Vec::new, |tx| {
            tx.iter()
                .map(|t| t.upgrade().map_or(0, |t| t.max_capacity() - t.capacity()))
                .collect()
        })
    }

    fn sender(&self, shard: usize) -> Option<mpsc::Sender<ShardMsg>> {
        self.tx.get()?.get(shard)?.upgrade()
    }

    /// Sends `msg` to shard `shard`, waiting for room at most `timeout` (None: as long as the
    /// shard takes).
    async fn send(
        &self,
        shard: usize,
        msg: ShardMsg,
        timeout: Option<Duration>,
    ) -> Result<(), Unreachable> {
        let tx = self.sender(shard).ok_or(Unreachable::Gone)?;
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
