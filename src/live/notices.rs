//! A single process's notification outbox: the shards write each turn's notifications into the
//! state file with the state that produced them (`StateStore::save_at`), and this task hands
//! them to their channels from there, each with a receipt; what the channels settled
//! (delivered, given up, held) is removed from the file in one write per batch. A notification
//! the process did not get delivered before it died (a `kill -9`, a power cut) is still in the
//! file at the next start and delivered then, with the same `Idempotency-Key`.
//!
//! The window for a repeat is the moment between a channel's success and the removal's write
//! (at most [`REMOVAL_LINGER`] and one write: removals are gathered for 50 ms so a burst costs
//! one commit); the window for a loss is none.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::store::StateStore;
use super::RateLimit;
use crate::sinks::notify::{Notice, Notifier, Receipt, Unsent};

/// How long a removal waits for more to settle with it.
const REMOVAL_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// Settled keys waiting for their removal, at most (past it a key stays in the file, and is
/// delivered again after a restart).
const SETTLED_QUEUE: usize = 65_536;

/// Delivers the outbox until `done` says the shards have stopped (their last notifications are
/// in the file by then), then removes what the channels settle until they finish.
pub(super) async fn run(
    store: Arc<dyn StateStore>,
    notifier: Notifier,
    limit: Arc<RateLimit>,
    mut done: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let Some(signal) = store.outbox_signal() else {
        return tokio::spawn(async {});
    };
    let (settled_tx, settled_rx) = mpsc::channel::<u32>(SETTLED_QUEUE);
    let handed: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let remover = tokio::spawn(remove_settled(store.clone(), settled_rx, handed.clone()));
    let mut first = true;
    loop {
        let last = *done.borrow();
        let pending = {
            let skip = handed.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.outbox_pending(&skip))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        };
        match pending {
            Ok(list) => {
                if first && !list.is_empty() {
                    tracing::info!(
                        notifications = list.len(),
                        "delivering the notifications the last run did not"
                    );
                }
                for (key, bytes) in list {
                    let Ok(mut n) = serde_json::from_slice::<Notice>(&bytes) else {
                        tracing::error!(key, "an unreadable notification in the outbox, removed");
                        let _ = settled_tx.try_send(key);
                        continue;
                    };
                    handed.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
                    let tx = settled_tx.clone();
                    n.receipt = Some(Receipt(Arc::new(move || {
                        if tx.try_send(key).is_err() {
                            tracing::warn!(key, "a settled notification stays in the outbox (its removal queue is full): it is sent again after a restart");
                        }
                    })));
                    // A channel that stopped leaves it in the file for the next start.
                    hand_over(&notifier, n, &limit).await;
                }
            }
            Err(e) => {
                if limit.allow() {
                    tracing::error!("cannot read the notification outbox: {e}; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        first = false;
        if last {
            break;
        }
        tokio::select! {
            _ = signal.notified() => {}
            _ = done.changed() => {}
            // A read that failed, or a hand-over that raced a write: looked at again anyway.
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
    drop(settled_tx);
    drop(notifier);
    remover
}

/// Hands a stored notification to its channel, waiting for room in its queue. One to a channel
/// the config does not define is logged and settled; one the channel cannot take (it stopped:
/// shutdown) stays stored, for the next start or the next owner.
pub(super) async fn hand_over(notifier: &Notifier, n: Notice, limit: &RateLimit) {
    match notifier.send_wait(n).await {
        Ok(()) => {}
        Err(Unsent::Unknown(n)) => {
            if limit.allow() {
                tracing::info!(chain = %n.chain, node = %n.node, device = %n.device, channel = %n.channel, "notify (channel not configured, logged only): {}", n.subject);
            }
            n.settled();
        }
        Err(Unsent::Full) => {}
    }
}

/// Removes settled notifications from the file, as many as have come in one write.
async fn remove_settled(
    store: Arc<dyn StateStore>,
    mut rx: mpsc::Receiver<u32>,
    handed: Arc<Mutex<HashSet<u32>>>,
) {
    while let Some(k) = rx.recv().await {
        // What settles within the linger goes in the same write: one commit (and its flush)
        // for a burst instead of one per notification.
        tokio::time::sleep(REMOVAL_LINGER).await;
        let mut keys = vec![k];
        while let Ok(k) = rx.try_recv() {
            keys.push(k);
        }
        let s = store.clone();
        let ks = keys.clone();
        let r = tokio::task::spawn_blocking(move || s.outbox_settle(&ks))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match r {
            Ok(()) => {
                let mut h = handed.lock().unwrap_or_else(|e| e.into_inner());
                for k in keys {
                    h.remove(&k);
                }
            }
            Err(e) => {
                tracing::error!("cannot remove {} delivered notifications from the outbox: {e}; they are sent again after a restart", keys.len());
            }
        }
    }
}
