//! What this instance sees of the cluster, shared with the HTTP API (`GET /api/cluster`,
//! `/readyz`, `/metrics`): the members, the leases, this instance's counters, and the backlog
//! of each partition (asked of Redis when the API asks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio::sync::Notify;

use super::lease::{cluster_key, PartitionKeys};
use super::placement::partition_of;
use crate::counters::{Counters, Report};

/// The cluster's counters (`/metrics`, `rulechain_cluster_*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages appended to the partition logs by this instance (as the ingest holder).
    pub appended: AtomicU64,
    /// Round trips those appends took.
    pub append_batches: AtomicU64,
    /// Messages read from the logs for this instance's partitions.
    pub read: AtomicU64,
    /// Partitions this instance took (at start, after a move, after another's failure).
    pub acquired: AtomicU64,
    /// Partitions it handed over (the placement gave them another, or it stopped).
    pub released: AtomicU64,
    /// Partitions it lost: its lease ran out before it could renew it.
    pub lost: AtomicU64,
    /// Times its ingest appends were refused: another instance held the ingest.
    pub ingest_fenced: AtomicU64,
    /// Requests to Redis that failed.
    pub redis_errors: AtomicU64,
    /// Partitions owned now.
    pub owned: AtomicU64,
    /// 1 while this instance holds the ingest lease.
    pub ingest_held: AtomicU64,
    /// Milliseconds the last partition restore took (snapshot read to executor started).
    pub last_restore_ms: AtomicU64,
    /// WebSocket frames and alarm transitions this instance's partitions shared.
    pub frames_shared: AtomicU64,
}

impl Counters for ClusterStats {
    fn report(&self, r: &mut dyn Report) {
        let g = |a: &AtomicU64| a.load(Relaxed);
        r.counter(
            "appended",
            "messages this instance appended to the partition logs (as the ingest holder)",
            g(&self.appended),
        );
        r.counter(
            "append_round_trips",
            "Redis round trips those appends took (one per read batch)",
            g(&self.append_batches),
        );
        r.counter(
            "read",
            "messages read from the logs of this instance's partitions",
            g(&self.read),
        );
        r.counter(
            "partitions_acquired",
            "partitions this instance took",
            g(&self.acquired),
        );
        r.counter(
            "partitions_released",
            "partitions this instance handed over",
            g(&self.released),
        );
        r.counter(
            "partitions_lost",
            "partitions whose lease ran out before this instance renewed it",
            g(&self.lost),
        );
        r.counter(
            "ingest_fenced",
            "appends refused because another instance took the ingest over",
            g(&self.ingest_fenced),
        );
        r.counter(
            "redis_errors",
            "requests to Redis that failed",
            g(&self.redis_errors),
        );
        r.gauge(
            "partitions_owned",
            "partitions this instance owns",
            g(&self.owned),
        );
        r.flag(
            "ingest_held",
            "whether this instance holds the ingest lease (reads the broker)",
            g(&self.ingest_held) == 1,
        );
        r.counter(
            "frames_shared",
            "WebSocket frames and alarm transitions this instance's partitions shared through Redis",
            g(&self.frames_shared),
        );
        r.gauge(
            "last_restore_milliseconds",
            "how long the last partition taken took to restore",
            g(&self.last_restore_ms),
        );
    }
}

/// An instance as the cluster sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its HTTP API, if it serves one.
    pub http: Option<String>,
    /// How long until its heartbeat expires (ms).
    pub lease_ms_left: i64,
    /// Partitions it owns.
    pub partitions: usize,
}

/// A lease holder.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    /// The instance.
    pub instance: String,
    /// Its epoch (fencing token).
    pub epoch: u64,
    /// How long until the lease expires unless renewed (ms).
    pub lease_ms_left: i64,
}

/// The cluster as this instance saw it at its last control step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// This instance.
    pub instance: String,
    /// Partitions in the cluster.
    pub partitions: u32,
    /// The lease (ms).
    pub lease_ms: u64,
    /// Whether Redis answered the last request.
    pub redis_ok: bool,
    /// The last Redis error (no password in it).
    pub redis_error: Option<String>,
    /// The live instances.
    pub instances: Vec<Member>,
    /// The ingest lease's holder.
    pub ingest: Option<Holder>,
    /// Each partition's owner.
    pub owners: Vec<Option<Holder>>,
    /// The partitions this instance owns.
    pub owned: Vec<u32>,
    /// Whether this instance has joined (registered and placed).
    pub joined: bool,
}

/// The shared view of the cluster: the API's `/api/cluster`, `/readyz` and `/metrics` read it.
#[derive(Clone)]
pub struct View {
    pub(super) status: Arc<Mutex<Status>>,
    /// Counters.
    pub stats: Arc<ClusterStats>,
    /// Wakes the control loop (the ingest was refused: act now).
    pub(super) wake: Arc<Notify>,
    /// For the API's backlog query.
    pub(super) con: Arc<Mutex<Option<ConnectionManager>>>,
    prefix: String,
}

impl View {
    pub(super) fn new(instance: &str, partitions: u32, lease: Duration, prefix: &str) -> View {
        View {
            status: Arc::new(Mutex::new(Status {
                instance: instance.to_string(),
                partitions,
                lease_ms: lease.as_millis() as u64,
                ..Status::default()
            })),
            stats: Arc::default(),
            wake: Arc::default(),
            con: Arc::default(),
            prefix: prefix.to_string(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster as last seen.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    pub(crate) fn redis_failed(&self, e: &str) {
        self.stats.redis_errors.fetch_add(1, Relaxed);
        let mut s = self.lock();
        s.redis_ok = false;
        s.redis_error = Some(e.to_string());
    }

    /// Wakes the control loop for a step now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn redis_ok(&self) {
        let mut s = self.lock();
        s.redis_ok = true;
        s.redis_error = None;
    }

    /// The HTTP address of the instance that owns `device`'s partition now, and its name
    /// (None: this instance, or no owner with an API known).
    pub fn owner_http(&self, device: &str) -> Option<(String, String)> {
        let s = self.lock();
        let p = partition_of(device, s.partitions) as usize;
        let owner = s.owners.get(p)?.as_ref()?.instance.clone();
        if owner == s.instance {
            return None;
        }
        let http = s.instances.iter().find(|m| m.name == owner)?.http.clone()?;
        Some((owner, http))
    }

    /// The other live instances with an HTTP API: (name, address).
    pub fn peers(&self) -> Vec<(String, String)> {
        let s = self.lock();
        s.instances
            .iter()
            .filter(|m| m.name != s.instance)
            .filter_map(|m| Some((m.name.clone(), m.http.clone()?)))
            .collect()
    }

    /// Why this instance is not ready, if it is not: each reason a sentence.
    pub fn not_ready(&self, mqtt_subscribed: bool) -> Vec<String> {
        let s = self.lock();
        let mut why = Vec::new();
        if !s.redis_ok {
            why.push(format!(
                "Redis cannot be reached: {}",
                s.redis_error.as_deref().unwrap_or("no answer yet")
            ));
        }
        if !s.joined {
            why.push("not yet joined the cluster".into());
        }
        if s.ingest.as_ref().is_some_and(|h| h.instance == s.instance) && !mqtt_subscribed {
            why.push("holds the ingest lease and is not yet subscribed at the broker".into());
        }
        why
    }

    /// Each partition's backlog: entries in its log after its owner's read position (counted
    /// up to 1000), and the age of the newest entry behind it (ms). Asked of Redis now.
    pub async fn backlog(&self) -> Result<Vec<Backlog>, String> {
        let con = self.con.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(mut con) = con else {
            return Err("not connected to Redis yet".into());
        };
        let partitions = self.lock().partitions;
        let read: HashMap<u32, String> = redis::cmd("HGETALL")
            .arg(cluster_key(&self.prefix, "read"))
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        let mut pipe = redis::pipe();
        for p in 0..partitions {
            let key = PartitionKeys::new(&self.prefix, p).state("log");
            let after = read
                .get(&p)
                .map_or_else(|| "-".to_string(), |o| format!("({o}"));
            // Ids only would be cheaper, but Redis has no such read; 1000 small entries at
            // most, on an operator's request.
            pipe.cmd("XRANGE")
                .arg(key)
                .arg(after)
                .arg("+")
                .arg("COUNT")
                .arg(BACKLOG_COUNTED);
        }
        type Raw = Vec<Vec<(String, Vec<(String, Vec<u8>)>)>>;
        let raw: Raw = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        let now = crate::engine::clock::wall_ms();
        Ok(raw
            .into_iter()
            .enumerate()
            .map(|(p, entries)| Backlog {
                partition: p as u32,
                entries: entries.len(),
                more: entries.len() >= BACKLOG_COUNTED,
                oldest_ms: entries
                    .first()
                    .and_then(|(id, _)| id.split('-').next()?.parse::<i64>().ok())
                    .map_or(0, |ms| (now - ms).max(0)),
            })
            .collect())
    }
}

/// Entries counted per partition for the backlog, at most.
const BACKLOG_COUNTED: usize = 1000;

/// A partition's backlog.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    /// The partition.
    pub partition: u32,
    /// Entries not yet read by its owner (at most 1000 counted).
    pub entries: usize,
    /// More than that.
    pub more: bool,
    /// How long the oldest of them has waited (ms; 0 with none).
    pub oldest_ms: i64,
}
