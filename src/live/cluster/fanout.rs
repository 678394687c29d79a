//! A cluster's WebSocket frames and alarm transitions, shared by every instance: the owner of a
//! device writes them to one Redis Stream (`{c}:ws`), each numbered in its room by Redis
//! (`HINCRBY` in the same script), and every instance reads the stream into its own hub and
//! alarm registry. So a dashboard connected to any instance sees every device's frames, with
//! one per-room `seq` that rises by one whichever instance produced the frame, before and after
//! a failover; and any instance lists the fleet's open alarms.
//!
//! An instance that starts reads the fleet's open alarms from the partitions' snapshots and
//! the stream's recent frames (the rooms' latest messages and numbers), then follows the
//! stream from where it stood before those reads.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, watch};

use super::lease::PartitionKeys;
use super::redis_conn::{self, RedisSettings};
use super::view::View;
use crate::alarm::registry::AlarmRegistry;
use crate::alarm::{Alarm, Status, Transition};
use crate::live::egress::Frame;
use crate::live::RateLimit;
use crate::sinks::hub::Hub;

/// Frames written in one round trip, at most.
const BATCH: usize = 1024;

/// Recent frames an instance reads at start (the rooms' latest messages).
const WARM: usize = 10_000;

/// Numbers each frame in its room and appends it. KEYS: seqs, stream. ARGV: frames kept, then
/// room, ts, data, alarm (JSON or empty), transition (or empty) per frame.
const ADD: &str = r"
for i = 2, #ARGV, 5 do
  local s = redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
    'r', ARGV[i], 's', s, 't', ARGV[i + 1], 'd', ARGV[i + 2], 'a', ARGV[i + 3], 'x', ARGV[i + 4])
end
return 1
";

static ADD_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ADD));

/// The stream's keys.
pub(super) struct Keys {
    seqs: String,
    stream: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            seqs: super::lease::cluster_key(prefix, "wsseq"),
            stream: super::lease::cluster_key(prefix, "ws"),
        }
    }
}

/// Connects, retrying until it can or `stop`.
async fn connect(
    redis: &RedisSettings,
    view: &View,
    stop: &mut watch::Receiver<bool>,
) -> Option<ConnectionManager> {
    loop {
        match redis_conn::connect_with(redis, Duration::from_secs(3)).await {
            Ok(c) => return Some(c),
            Err(e) => view.redis_failed(&e),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// Writes the frames this instance's partitions produce, in order, until every partition's
/// sender is gone (the stop).
pub(super) async fn write(
    redis: RedisSettings,
    prefix: String,
    keep: usize,
    mut rx: mpsc::Receiver<Vec<Frame>>,
    view: View,
    limit: Arc<RateLimit>,
) {
    let keys = Keys::new(&prefix);
    let (_never, mut stop) = watch::channel(false);
    let Some(mut con) = connect(&redis, &view, &mut stop).await else {
        return;
    };
    let mut frames: Vec<Frame> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        frames.extend(first);
        while frames.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => frames.extend(more),
                Err(_) => break,
            }
        }
        let mut failures = 0u32;
        loop {
            let mut call = ADD_SCRIPT.key(&keys.seqs);
            call.key(&keys.stream).arg(keep);
            for f in &frames {
                let (alarm, transition) = f
                    .alarm
                    .as_ref()
                    .map_or(("", ""), |(a, t)| (a.as_str(), t.as_str()));
                call.arg(&f.room)
                    .arg(f.ts)
                    .arg(&f.data)
                    .arg(alarm)
                    .arg(transition);
            }
            match call.invoke_async::<u64>(&mut con).await {
                Ok(_) => break,
                Err(e) => {
                    view.redis_failed(&e.to_string());
                    if failures == 0 || limit.allow() {
                        tracing::warn!(
                            frames = frames.len(),
                            "cluster: cannot share WebSocket frames and alarm transitions ({e}); retrying"
                        );
                    }
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(
                        (100u64 << failures.min(4)).min(1_000),
                    ))
                    .await;
                }
            }
        }
        view.stats
            .frames_shared
            .fetch_add(frames.len() as u64, Relaxed);
        frames.clear();
    }
}

/// Stream entries as Redis gives them.
type Raw = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// What every instance's hub and registry need from Redis.
pub(super) struct Follow {
    pub redis: RedisSettings,
    pub prefix: String,
    pub partitions: u32,
    pub hub: Arc<Hub>,
    pub alarms: Arc<AlarmRegistry>,
    pub view: View,
    pub limit: Arc<RateLimit>,
}

/// Follows the stream into this instance's hub and alarm registry until `stop`.
pub(super) async fn follow(f: Follow, mut stop: watch::Receiver<bool>) {
    let keys = Keys::new(&f.prefix);
    let Some(mut con) = connect(&f.redis, &f.view, &mut stop).await else {
        return;
    };
    // Where the stream stands now: followed from here once the past is read.
    let mut after = loop {
        match start(&mut con, &keys, &f).await {
            Ok(a) => break a,
            Err(e) => {
                f.view.redis_failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let mut failures = 0u32;
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS")
            .arg(&keys.stream)
            .arg(&after);
        let read: Result<Option<Vec<(String, Raw)>>, _> = tokio::select! {
            r = cmd.query_async(&mut con) => r,
            _ = stop.changed() => break,
        };
        match read {
            Ok(streams) => {
                failures = 0;
                for (_, entries) in streams.unwrap_or_default() {
                    for (id, fields) in entries {
                        apply(&f, fields, true);
                        after = id;
                    }
                }
            }
            Err(e) => {
                f.view.redis_failed(&e.to_string());
                if failures == 0 || f.limit.allow() {
                    tracing::warn!(
                        "cluster: cannot follow the shared WebSocket frames ({e}); retrying"
                    );
                }
                failures += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis((100u64 << failures.min(4)).min(1_000))) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
}

/// The stream's last id; then the fleet's open alarms (from every partition's snapshot) and
/// the recent frames up to that id.
async fn start(con: &mut ConnectionManager, keys: &Keys, f: &Follow) -> Result<String, String> {
    let last: Raw = redis::cmd("XREVRANGE")
        .arg(&keys.stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await
        .map_err(|e| e.to_string())?;
    let after = last
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_string(), |(id, _)| id);
    let mut pipe = redis::pipe();
    for p in 0..f.partitions {
        pipe.cmd("HGET")
            .arg(PartitionKeys::new(&f.prefix, p).state("state"))
            .arg("s");
    }
    let snapshots: Vec<Option<Vec<u8>>> = pipe.query_async(con).await.map_err(|e| e.to_string())?;
    let mut open = 0;
    for s in snapshots.into_iter().flatten() {
        let Ok(Some(snap)) = crate::live::shard::decode_snapshot(&s, None) else {
            continue;
        };
        for a in snap
            .alarms
            .iter()
            .filter(|a| a.status != Status::ClearedAck)
        {
            f.alarms.restore(a);
            open += 1;
        }
    }
    let recent: Raw = redis::cmd("XREVRANGE")
        .arg(&keys.stream)
        .arg(&after)
        .arg("-")
        .arg("COUNT")
        .arg(WARM)
        .query_async(con)
        .await
        .map_err(|e| e.to_string())?;
    let frames = recent.len();
    for (_, fields) in recent.into_iter().rev() {
        apply(f, fields, false);
    }
    tracing::info!(
        open_alarms = open,
        recent_frames = frames,
        "cluster: following the shared WebSocket frames and alarm transitions"
    );
    Ok(after)
}

/// One frame into the hub (and an alarm transition into the registry first, when `record`: a
/// client that acknowledges what it was just sent finds the alarm).
fn apply(f: &Follow, fields: Vec<(String, Vec<u8>)>, record: bool) {
    let mut room = String::new();
    let (mut seq, mut ts) = (0u64, 0i64);
    let (mut data, mut alarm, mut transition) = (Vec::new(), Vec::new(), Vec::new());
    for (k, v) in fields {
        match k.as_str() {
            "r" => room = String::from_utf8_lossy(&v).into_owned(),
            "s" => {
                seq = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            }
            "t" => {
                ts = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            }
            "d" => data = v,
            "a" => alarm = v,
            "x" => transition = v,
            _ => {}
        }
    }
    if record && !alarm.is_empty() {
        let a: Option<Alarm> = serde_json::from_slice(&alarm).ok();
        let t: Option<Transition> = serde_json::from_value(serde_json::Value::String(
            String::from_utf8_lossy(&transition).into_owned(),
        ))
        .ok();
        if let (Some(a), Some(t)) = (a, t) {
            f.alarms.record(&a, t);
        }
    }
    if seq > 0 {
        f.hub
            .publish_seq(&room, seq, ts, &String::from_utf8_lossy(&data));
    }
}
