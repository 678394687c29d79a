//! The engine under systemd (`Type=notify`, docs/deploy.md): `READY=1` once it is subscribed at
//! the broker (or, in a cluster, has its place) and has its rules loaded — what `/readyz` calls
//! ready —, `WATCHDOG=1` at half the unit's `WatchdogSec=` while every shard answers a question
//! within that time and ingest runs, and `STOPPING=1` at shutdown. Without `$NOTIFY_SOCKET`
//! (not started by systemd) it does nothing. A shard stuck on one message (a runaway loop, a
//! deadlock) stops the pings, and systemd restarts the service.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::reload::ReloadStatus;
use super::shards::Shards;
use super::Stats;

/// What the notifier watches.
pub struct Watched {
    /// Counters (`connected`).
    pub stats: Arc<Stats>,
    /// The rules' generation (0: none loaded yet).
    pub reload: Arc<Mutex<ReloadStatus>>,
    /// The shards, asked a question each round.
    pub shards: Shards,
    /// Ingest's tasks (one process): ended means not alive.
    pub ingest: Vec<AbortHandle>,
    /// In a cluster readiness is the cluster's (ingest belongs to one member).
    pub cluster: bool,
}

/// Whether systemd waits for our notifications.
pub fn wanted() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Tells systemd the service stops.
pub fn stopping() {
    if wanted() {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: saving state"),
        ]);
    }
}

/// Sends `READY=1` once ready, then pings the watchdog while alive, until `stop`.
pub async fn run(w: Watched, mut stop: watch::Receiver<bool>) {
    if !wanted() {
        return;
    }
    let ready = || {
        let subscribed = w.cluster || w.stats.connected.load(Relaxed);
        let loaded = w
            .reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
            > 0;
        subscribed && loaded
    };
    loop {
        if ready() {
            send(&[NotifyState::Ready, NotifyState::Status("ready")]);
            tracing::info!("told systemd: ready");
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = every / 2;
    loop {
        if alive(&w, half).await {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::error!("a shard or ingest does not answer: no watchdog ping");
        }
        tokio::select! {
            _ = tokio::time::sleep(half) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Every shard answers within `within`, and no ingest task has ended.
async fn alive(w: &Watched, within: Duration) -> bool {
    if w.ingest.iter().any(AbortHandle::is_finished) {
        return false;
    }
    for shard in 0..w.shards.len() {
        let answer = w
            .shards
            .ask(
                shard,
                |reply| super::devices::Ask::Device(String::new(), reply),
                within,
            )
            .await;
        // A cluster partition held elsewhere is not ours to answer for.
        if matches!(
            answer,
            Err(super::shards::Unreachable::Busy | super::shards::Unreachable::Gone)
        ) {
            return false;
        }
    }
    true
}
