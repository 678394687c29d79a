//! A cluster's notifications: each partition's outbox stream (`{p<N>}:outbox`, appended to with
//! the state that produced them, see `pstore.rs`) is delivered by the partition's owner through
//! its notification channels, read with a consumer group and acknowledged (`XACK`) only once
//! the channel settled the notification (delivered, or given up after its retries). An owner
//! that dies leaves its unacknowledged entries pending; the next owner claims them when it
//! takes the partition and delivers them again, with the same `Idempotency-Key`, so a receiver
//! that deduplicates sees each once (and one that does not sees at most one repeat per
//! failure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::lease::PartitionKeys;
use super::reader::Feeds;
use super::view::View;
use crate::live::RateLimit;
use crate::sinks::notify::{Notice, Notifier, Receipt};

/// The consumer group of every outbox.
const GROUP: &str = "notify";

/// Entries read per request.
const BATCH: usize = 100;

type Raw = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// What the outbox task works with.
pub(super) struct Outboxes {
    pub con: ConnectionManager,
    pub prefix: String,
    /// This instance: its consumer name in the groups.
    pub instance: String,
    /// The partitions it owns.
    pub feeds: Feeds,
    pub notifier: Notifier,
    pub view: View,
    pub limit: Arc<RateLimit>,
    /// The fleet's open alarms (which of them still wait for an acknowledgement).
    pub alarms: Arc<crate::alarm::registry::AlarmRegistry>,
}

/// Delivers the outboxes of the partitions this instance owns, until `stop`.
pub(super) async fn run(o: Outboxes, mut stop: watch::Receiver<bool>) {
    let Outboxes {
        mut con,
        prefix,
        instance,
        feeds,
        notifier,
        view,
        limit,
        alarms,
    } = o;
    // Which run of each partition has had its pending entries claimed.
    let mut claimed: HashMap<u32, u64> = HashMap::new();
    let settled: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    loop {
        if *stop.borrow() {
            break;
        }
        acknowledge(&mut con, &prefix, &settled, &view).await;
        let owned = feeds.runs();
        claimed.retain(|p, run| owned.iter().any(|(q, r)| q == p && r == run));
        let key = |p: u32| PartitionKeys::new(&prefix, p).state("outbox");
        for (p, run) in &owned {
            if claimed.get(p) == Some(run) {
                continue;
            }
            // Taken (again): the group, then what the last owner left unsettled.
            let made: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key(*p))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut con)
                .await;
            if let Err(e) = made {
                if e.code() != Some("BUSYGROUP") {
                    view.redis_failed(&e.to_string());
                    continue;
                }
            }
            rearm(&mut con, &key(*p), &notifier, &alarms).await;
            let r: Result<(String, Raw, Vec<String>), _> = redis::cmd("XAUTOCLAIM")
                .arg(key(*p))
                .arg(GROUP)
                .arg(&instance)
                .arg(0)
                .arg("0-0")
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut con)
                .await;
            match r {
                Ok((_, entries, _)) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            partition = p,
                            notifications = entries.len(),
                            "cluster: delivering the notifications the partition's last owner left unconfirmed"
                        );
                    }
                    deliver(*p, entries, &notifier, &settled, &limit).await;
                    claimed.insert(*p, *run);
                }
                Err(e) => view.redis_failed(&e.to_string()),
            }
        }
        let keys: Vec<u32> = owned
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| claimed.contains_key(p))
            .collect();
        if keys.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => break,
            }
            continue;
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&instance)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS");
        for p in &keys {
            cmd.arg(key(*p));
        }
        for _ in &keys {
            cmd.arg(">");
        }
        let read: Result<Option<Vec<(String, Raw)>>, _> = tokio::select! {
            r = cmd.query_async(&mut con) => r,
            _ = stop.changed() => break,
        };
        match read {
            Ok(streams) => {
                for (k, entries) in streams.unwrap_or_default() {
                    if let Some(p) = keys.iter().copied().find(|p| key(*p) == k) {
                        deliver(p, entries, &notifier, &settled, &limit).await;
                    }
                }
            }
            Err(e) => {
                view.redis_failed(&e.to_string());
                // A partition moved away between the list and the read, or Redis restarted
                // without its groups: made again at the next claim.
                claimed.clear();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    // What was handed over and settled since the last round is acknowledged; the rest stays
    // pending for the partition's next owner.
    acknowledge(&mut con, &prefix, &settled, &view).await;
}

/// Notifications a new owner reads back to take up reminders, at most.
const REARM_READ: usize = 1_000;

/// Takes up the reminders the partition's last owner was sending: the latest notification of
/// each alarm still waiting for an acknowledgement goes to its channel again, marked to be
/// tracked, not sent (a channel with `repeat_interval` reminds of it from now on; one without
/// ignores it).
async fn rearm(
    con: &mut ConnectionManager,
    key: &str,
    notifier: &Notifier,
    alarms: &crate::alarm::registry::AlarmRegistry,
) {
    let recent: Result<Raw, _> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(REARM_READ)
        .query_async(con)
        .await;
    let Ok(recent) = recent else { return };
    let mut seen = std::collections::HashSet::new();
    for (_, fields) in recent {
        let Some(mut n) = fields
            .iter()
            .find(|(k, _)| k == "n")
            .and_then(|(_, v)| serde_json::from_slice::<Notice>(v).ok())
        else {
            continue;
        };
        let Some(id) = n.data["alarm"]["id"].as_str().map(str::to_string) else {
            continue;
        };
        // Newest first: the first of each (channel, alarm) is its latest.
        if !seen.insert((n.channel.clone(), id.clone())) {
            continue;
        }
        if alarms.status_of(&id) == Some(crate::alarm::Status::ActiveUnack) {
            n.rearm = true;
            let _ = notifier.send_wait(n).await;
        }
    }
}

/// Hands each entry to its channel, with a receipt that acknowledges it once settled.
async fn deliver(
    p: u32,
    entries: Raw,
    notifier: &Notifier,
    settled: &Arc<Mutex<Vec<(u32, String)>>>,
    limit: &RateLimit,
) {
    for (id, fields) in entries {
        let notice: Option<Notice> = fields
            .iter()
            .find(|(k, _)| k == "n")
            .and_then(|(_, v)| serde_json::from_slice(v).ok());
        let done = settled.clone();
        let Some(mut n) = notice else {
            tracing::warn!(partition = p, %id, "cluster: an outbox entry that is not a notification; dropped");
            done.lock().unwrap_or_else(|e| e.into_inner()).push((p, id));
            continue;
        };
        let entry = id.clone();
        n.receipt = Some(Receipt(Arc::new(move || {
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((p, entry.clone()));
        })));
        // A channel that stopped (shutdown) leaves it pending for the next owner.
        crate::live::notices::hand_over(notifier, n, limit).await;
    }
}

/// `XACK`s what the channels settled.
async fn acknowledge(
    con: &mut ConnectionManager,
    prefix: &str,
    settled: &Arc<Mutex<Vec<(u32, String)>>>,
    view: &View,
) {
    let done = std::mem::take(&mut *settled.lock().unwrap_or_else(|e| e.into_inner()));
    if done.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for (p, id) in &done {
        pipe.cmd("XACK")
            .arg(PartitionKeys::new(prefix, *p).state("outbox"))
            .arg(GROUP)
            .arg(id)
            .ignore();
    }
    if let Err(e) = pipe.query_async::<()>(con).await {
        view.redis_failed(&e.to_string());
        // Kept for the next round.
        settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(done);
    }
}
