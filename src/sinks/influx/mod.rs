//! The InfluxDB writer: `influx` nodes' lines, batched by size and time, gzip-compressed and
//! POSTed to `/api/v2/write` (InfluxDB 2.x/3.x/1.8+, VictoriaMetrics) or `/write?db=` (1.x).
//!
//! ```text
//! shards ──chunks of lines (bounded channel)──► writer task ── memory queue (buffer_points)
//!                                                   │            │ overflow: oldest batch → spool
//!                                                   ▼            ▼   (or dropped and counted)
//!                                     one request at a time ◄── spool files (sent first)
//! ```
//!
//! A failed request (connection error, timeout, 5xx, 408, 429) is retried with capped
//! exponential backoff and jitter while new points wait in the queue; a request the server
//! rejects as bad data (other 4xx) is logged with the server's message, which names the line,
//! and not retried. On shutdown the writer sends what it holds until the grace period ends, then
//! spools the rest (or says how many points it lost).
//!
//! The parts: `encoding` (lines → request body), `service` (one write request and what its
//! answer means), `spool` (batches on disk), `worker` (the writer task: queue, batches, retries,
//! shutdown); the settings are `config::settings::InfluxSettings`.

mod encoding;
mod service;
mod spool;
mod worker;

use crate::config::settings::InfluxSettings;
use crate::lineproto::Point;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::counters::{Counters, Report};
pub use encoding::encode;
use service::Service;
use spool::Spool;
use worker::Writer;

/// The writer's counters (in `/api/status` under `influx`).
#[derive(Debug, Default)]
pub struct InfluxStats {
    /// Points the server accepted.
    pub written: AtomicU64,
    /// Requests sent (including retries).
    pub requests: AtomicU64,
    /// Requests retried (connection errors, timeouts, 5xx, 408, 429).
    pub retries: AtomicU64,
    /// Points in requests the server rejected as bad data (4xx).
    pub rejected: AtomicU64,
    /// Points dropped: the writer's input was full, or the buffer (and spool) overflowed, or a
    /// shutdown could not send them.
    pub dropped: AtomicU64,
    /// Points written to the spool.
    pub spooled: AtomicU64,
    /// Points held in memory now.
    pub buffered: AtomicU64,
    /// Points in spool files now.
    pub in_spool: AtomicU64,
    /// The last error, if the last request failed.
    pub last_error: Mutex<Option<String>>,
    /// How long write requests took, answered or failed.
    pub request_duration: crate::counters::Histogram,
}

impl InfluxStats {
    /// The counters as JSON.
    pub fn to_json(&self) -> Value {
        crate::counters::to_json(self)
    }
}

impl Counters for InfluxStats {
    fn report(&self, r: &mut dyn Report) {
        let g = |a: &AtomicU64| a.load(Relaxed);
        r.counter("written", "points the server accepted", g(&self.written));
        r.counter(
            "requests",
            "write requests sent, retries included",
            g(&self.requests),
        );
        r.counter("retries", "write requests retried", g(&self.retries));
        r.counter(
            "rejected",
            "points the server rejected as bad data",
            g(&self.rejected),
        );
        r.counter("dropped", "points dropped", g(&self.dropped));
        r.counter("spooled", "points written to the spool", g(&self.spooled));
        r.gauge("buffered", "points held in memory now", g(&self.buffered));
        r.gauge("in_spool", "points in spool files now", g(&self.in_spool));
        r.histogram(
            "request_duration_seconds",
            "write requests, answered or failed",
            &self.request_duration.snapshot(),
        );
        let e = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        r.text(
            "last_error",
            "the last error, if the last request failed",
            e.as_deref(),
        );
    }
}

/// Chunks of lines queued for the writer before new ones are dropped (each chunk is what one
/// shard produced in one turn of its loop).
pub const INPUT_CHUNKS: usize = 1024;

/// The shards' handle on the writer.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Vec<Point>>,
    /// The counters.
    pub stats: Arc<InfluxStats>,
}

impl Handle {
    /// Queues lines (never waits: a full input drops them and counts).
    pub fn send(&self, lines: Vec<Point>) {
        let n = lines.len() as u64;
        if n == 0 {
            return;
        }
        if self.tx.try_send(lines).is_err() {
            self.stats.dropped.fetch_add(n, Relaxed);
        }
    }

    /// Queues lines, waiting while the input is full (for load tools and tests that must not
    /// lose points to their own speed).
    pub async fn send_wait(&self, lines: Vec<Point>) {
        let _ = self.tx.send(lines).await;
    }
}

/// Starts the writer on the current runtime. It runs until every [`Handle`] is dropped and it
/// has sent (or spooled) what it holds.
pub fn start(
    settings: InfluxSettings,
    stats: Arc<InfluxStats>,
) -> Result<(Handle, tokio::task::JoinHandle<()>), String> {
    let service = Service::new(&settings)?;
    let spool = match &settings.spool {
        Some((dir, max)) => Some(Spool::open(dir, *max, &stats)?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(INPUT_CHUNKS);
    let writer = Writer {
        settings,
        service,
        stats: stats.clone(),
        queue: VecDeque::new(),
        spool,
        logged: None,
    };
    let task = tokio::spawn(writer.run(rx));
    Ok((Handle { tx, stats }, task))
}
