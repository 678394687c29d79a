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

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use crate::config::settings::{InfluxAuth, InfluxSettings, Precision};

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
}

impl InfluxStats {
    /// The counters as JSON.
    pub fn to_json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Relaxed);
        json!({
            "written": g(&self.written),
            "requests": g(&self.requests),
            "retries": g(&self.retries),
            "rejected": g(&self.rejected),
            "dropped": g(&self.dropped),
            "spooled": g(&self.spooled),
            "buffered": g(&self.buffered),
            "in_spool": g(&self.in_spool),
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

/// Chunks of lines queued for the writer before new ones are dropped (each chunk is what one
/// shard produced in one turn of its loop).
pub const INPUT_CHUNKS: usize = 1024;

/// The shards' handle on the writer.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Vec<String>>,
    /// The counters.
    pub stats: Arc<InfluxStats>,
}

impl Handle {
    /// Queues lines (never waits: a full input drops them and counts).
    pub fn send(&self, lines: Vec<String>) {
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
    pub async fn send_wait(&self, lines: Vec<String>) {
        let _ = self.tx.send(lines).await;
    }
}

/// Starts the writer on the current runtime. It runs until every [`Handle`] is dropped and it
/// has sent (or spooled) what it holds.
pub fn start(
    settings: InfluxSettings,
    stats: Arc<InfluxStats>,
) -> Result<(Handle, tokio::task::JoinHandle<()>), String> {
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(2)
        .build()
        .map_err(|e| format!("cannot build the InfluxDB client: {e}"))?;
    let spool = match &settings.spool {
        Some((dir, max)) => Some(Spool::open(dir, *max, &stats)?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(INPUT_CHUNKS);
    let writer = Writer {
        settings,
        client,
        stats: stats.clone(),
        queue: VecDeque::new(),
        spool,
        logged: None,
    };
    let task = tokio::spawn(writer.run(rx));
    Ok((Handle { tx, stats }, task))
}

/// A request body: one batch.
struct Batch {
    body: bytes::Bytes,
    gzip: bool,
    points: usize,
    /// The spool file it came from (deleted once the batch is done).
    file: Option<PathBuf>,
    /// Its first line (shortened), for the log when the server refuses the batch.
    first: Option<String>,
}

enum Outcome {
    Written,
    /// Bad data: do not retry.
    Rejected(String),
    /// Try again later.
    Retry(String),
}

type Pending = Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

struct Writer {
    settings: InfluxSettings,
    client: reqwest::Client,
    stats: Arc<InfluxStats>,
    queue: VecDeque<String>,
    spool: Option<Spool>,
    /// When the last "cannot write" line was logged (one every 10 s at most).
    logged: Option<Instant>,
}

/// Joins lines into a body at the wanted precision, gzip-compressed if asked.
pub fn encode(lines: &[String], precision: Precision, gzip: bool) -> bytes::Bytes {
    let mut text = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        if precision == Precision::Ns {
            text.extend_from_slice(l.as_bytes());
        } else {
            // The encoder ends every line with its timestamp in ns.
            match l
                .rsplit_once(' ')
                .and_then(|(h, t)| Some((h, t.parse::<i64>().ok()?)))
            {
                Some((head, ns)) => {
                    text.extend_from_slice(head.as_bytes());
                    text.push(b' ');
                    let mut b = itoa::Buffer::new();
                    text.extend_from_slice(b.format(ns.div_euclid(precision.divisor())).as_bytes());
                }
                None => text.extend_from_slice(l.as_bytes()),
            }
        }
        text.push(b'\n');
    }
    if !gzip {
        return text.into();
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&text);
    gz.finish().unwrap_or_default().into()
}

impl Writer {
    fn held(&self) -> usize {
        self.queue.len()
    }

    /// Takes lines in; past the buffer, the oldest batch goes to the spool or is dropped.
    fn accept(&mut self, lines: Vec<String>) {
        self.queue.extend(lines);
        while self.held() > self.settings.buffer_points {
            let n = self.settings.batch_size.min(self.queue.len());
            let batch: Vec<String> = self.queue.drain(..n).collect();
            let spooled = match &mut self.spool {
                Some(sp) => {
                    let body = encode(&batch, self.settings.precision, self.settings.gzip);
                    sp.push(&body, self.settings.gzip, n, &self.stats)
                }
                None => false,
            };
            if !spooled {
                self.stats.dropped.fetch_add(n as u64, Relaxed);
            }
        }
        self.stats.buffered.store(self.held() as u64, Relaxed);
    }

    fn next_batch(&mut self, flush: bool) -> Option<Batch> {
        if let Some(b) = self.spool.as_mut().and_then(|s| s.oldest()) {
            return Some(b);
        }
        if self.queue.len() >= self.settings.batch_size || (flush && !self.queue.is_empty()) {
            let n = self.settings.batch_size.min(self.queue.len());
            let lines: Vec<String> = self.queue.drain(..n).collect();
            self.stats.buffered.store(self.held() as u64, Relaxed);
            return Some(Batch {
                body: encode(&lines, self.settings.precision, self.settings.gzip),
                gzip: self.settings.gzip,
                points: n,
                file: None,
                first: lines.first().map(|l| l.chars().take(300).collect()),
            });
        }
        None
    }

    fn request(&self, body: bytes::Bytes, gzip: bool) -> Pending {
        let mut req = self
            .client
            .post(self.settings.write_url.clone())
            .header("content-type", "text/plain; charset=utf-8")
            .body(body);
        if gzip {
            req = req.header("content-encoding", "gzip");
        }
        req = match &self.settings.auth {
            InfluxAuth::None => req,
            InfluxAuth::Token(t) => req.header("authorization", format!("Token {t}")),
            InfluxAuth::Basic(u, p) => req.basic_auth(u, p.as_ref()),
        };
        Box::pin(async move {
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Outcome::Written;
                    }
                    let text = resp.text().await.unwrap_or_default();
                    let text: String = text.trim().chars().take(1000).collect();
                    let msg = super::redact_urls(&format!("HTTP {status}: {text}"));
                    let code = status.as_u16();
                    if crate::retry::retryable_status(code) {
                        Outcome::Retry(msg)
                    } else {
                        Outcome::Rejected(msg)
                    }
                }
                Err(e) => Outcome::Retry(super::http_error_text(&e)),
            }
        })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Vec<String>>) {
        let mut inflight: Option<(Pending, Batch)> = None;
        let mut retry: Option<Batch> = None;
        let mut retry_at: Option<Instant> = None;
        let mut failures: u32 = 0;
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(250), self.settings.max_backoff);
        let mut closed = false;
        let mut grace_end: Option<Instant> = None;
        let mut next_flush = Instant::now() + self.settings.flush_interval;
        loop {
            let now = Instant::now();
            let flush_due = now >= next_flush || closed;
            if inflight.is_none() && retry_at.is_none_or(|t| now >= t) {
                let batch = retry.take().or_else(|| self.next_batch(flush_due));
                if let Some(b) = batch {
                    if b.file.is_none() && flush_due {
                        next_flush = now + self.settings.flush_interval;
                    }
                    self.stats.requests.fetch_add(1, Relaxed);
                    inflight = Some((self.request(b.body.clone(), b.gzip), b));
                    retry_at = None;
                } else if flush_due {
                    next_flush = now + self.settings.flush_interval;
                }
            }
            if closed && inflight.is_none() && retry.is_none() && self.queue.is_empty() {
                // Spool files left over are sent now; a failure during shutdown breaks out below
                // and leaves them for the next start.
                if self.spool.as_ref().is_none_or(|s| s.is_empty()) {
                    break;
                }
            }
            if grace_end.is_some_and(|e| now >= e) {
                self.give_up(inflight.take().map(|(_, b)| b).or(retry.take()));
                break;
            }
            let wake = [Some(next_flush), retry_at, grace_end]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_flush);
            tokio::select! {
                m = rx.recv(), if !closed => match m {
                    Some(lines) => self.accept(lines),
                    None => {
                        // Shutdown: everything held goes now, without waiting for a backoff.
                        closed = true;
                        retry_at = None;
                        grace_end = Some(Instant::now() + self.settings.shutdown_grace);
                    }
                },
                out = async { inflight.as_mut().map(|(f, _)| f).expect("guarded").await }, if inflight.is_some() => {
                    let Some((_, batch)) = inflight.take() else { continue };
                    match out {
                        Outcome::Written => {
                            failures = 0;
                            backoff.reset();
                            self.stats.written.fetch_add(batch.points as u64, Relaxed);
                            self.done(batch);
                            if self.logged.take().is_some() {
                                tracing::info!("InfluxDB writes succeed again");
                            }
                            *self.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        }
                        Outcome::Rejected(msg) => {
                            failures = 0;
                            backoff.reset();
                            self.stats.rejected.fetch_add(batch.points as u64, Relaxed);
                            let hint = if msg.starts_with("HTTP 413") { " (lower `influx.batch_size`)" } else { "" };
                            tracing::warn!(
                                points = batch.points,
                                first_line = batch.first.as_deref().unwrap_or("(from the spool)"),
                                "InfluxDB refused a batch (not retried): {msg}{hint}"
                            );
                            self.done(batch);
                            *self.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                        }
                        Outcome::Retry(msg) => {
                            failures = failures.saturating_add(1);
                            self.stats.retries.fetch_add(1, Relaxed);
                            let wait = backoff.next_delay();
                            if self.logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                                tracing::warn!(
                                    held = self.held() + batch.points,
                                    retry_in_ms = wait.as_millis() as u64,
                                    "cannot write to InfluxDB ({msg}); holding points and retrying"
                                );
                                self.logged = Some(Instant::now());
                            }
                            *self.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                            if closed {
                                // Shutting down: a server that fails now gets no more time.
                                self.give_up(Some(batch));
                                break;
                            }
                            retry = Some(batch);
                            retry_at = Some(Instant::now() + wait);
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.stats.buffered.store(0, Relaxed);
    }

    fn done(&mut self, batch: Batch) {
        if let (Some(f), Some(sp)) = (batch.file, self.spool.as_mut()) {
            sp.remove(&f, batch.points, &self.stats);
        }
    }

    fn spool_push(&mut self, body: &[u8], gzip: bool, points: usize) -> bool {
        match &mut self.spool {
            Some(sp) => sp.push(body, gzip, points, &self.stats),
            None => false,
        }
    }

    /// Shutdown could not finish: spool what is left, or count it lost.
    fn give_up(&mut self, batch: Option<Batch>) {
        let mut lost = 0usize;
        let mut spooled = 0usize;
        if let Some(b) = batch.filter(|b| b.file.is_none()) {
            if self.spool_push(&b.body, b.gzip, b.points) {
                spooled += b.points;
            } else {
                lost += b.points;
            }
        }
        while !self.queue.is_empty() {
            let n = self.settings.batch_size.min(self.queue.len());
            let lines: Vec<String> = self.queue.drain(..n).collect();
            let body = encode(&lines, self.settings.precision, self.settings.gzip);
            if self.spool_push(&body, self.settings.gzip, n) {
                spooled += n;
            } else {
                lost += n;
            }
        }
        if spooled > 0 {
            tracing::warn!(
                points = spooled,
                "InfluxDB did not take every point before shutdown; the rest is spooled for the next start"
            );
        }
        if lost > 0 {
            self.stats.dropped.fetch_add(lost as u64, Relaxed);
            tracing::error!(
                points = lost,
                "InfluxDB did not take every point before shutdown; these points are lost (set `influx: {{spool: true}}` to keep them)"
            );
        }
    }
}

/// Batches on disk, oldest first: `{seq:016}-{points}.lp[.gz]`.
struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    files: VecDeque<(PathBuf, usize, u64)>,
    bytes: u64,
    next_seq: u64,
    /// The oldest file is in flight (not offered twice).
    taken: bool,
}

impl Spool {
    fn open(dir: &Path, max_bytes: u64, stats: &InfluxStats) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the spool {}: {e}", dir.display()))?;
        let mut files = Vec::new();
        let rd = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read the spool {}: {e}", dir.display()))?;
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let stem = name.split('.').next().unwrap_or("");
            let Some((seq, points)) = stem.split_once('-') else {
                continue;
            };
            let (Ok(seq), Ok(points)) = (seq.parse::<u64>(), points.parse::<usize>()) else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            files.push((seq, path, points, size));
        }
        files.sort_by_key(|f| f.0);
        let next_seq = files.last().map_or(0, |f| f.0 + 1);
        let bytes = files.iter().map(|f| f.3).sum();
        let points: usize = files.iter().map(|f| f.2).sum();
        stats.in_spool.store(points as u64, Relaxed);
        if points > 0 {
            tracing::info!(
                points,
                files = files.len(),
                "InfluxDB spool holds points from before; sending them first"
            );
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            files: files.into_iter().map(|f| (f.1, f.2, f.3)).collect(),
            bytes,
            next_seq,
            taken: false,
        })
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn push(&mut self, body: &[u8], gzip: bool, points: usize, stats: &InfluxStats) -> bool {
        let name = format!(
            "{:016}-{points}.lp{}",
            self.next_seq,
            if gzip { ".gz" } else { "" }
        );
        let path = self.dir.join(name);
        let tmp = path.with_extension("tmp");
        let written = write_durably(&tmp, &path, body);
        if let Err(e) = written {
            tracing::error!("cannot write the InfluxDB spool {}: {e}", path.display());
            return false;
        }
        self.next_seq += 1;
        let size = body.len() as u64;
        self.files.push_back((path, points, size));
        self.bytes += size;
        stats.spooled.fetch_add(points as u64, Relaxed);
        stats.in_spool.fetch_add(points as u64, Relaxed);
        // Over the limit: the oldest batches go (not the one in flight).
        while self.bytes > self.max_bytes && self.files.len() > usize::from(self.taken) + 1 {
            let idx = usize::from(self.taken);
            if let Some((p, n, s)) = self.files.remove(idx) {
                let _ = std::fs::remove_file(&p);
                self.bytes -= s;
                stats.in_spool.fetch_sub(n as u64, Relaxed);
                stats.dropped.fetch_add(n as u64, Relaxed);
            }
        }
        true
    }

    fn oldest(&mut self) -> Option<Batch> {
        if self.taken {
            return None;
        }
        let (path, points, _) = self.files.front()?.clone();
        match std::fs::read(&path) {
            Ok(body) => {
                self.taken = true;
                Some(Batch {
                    body: body.into(),
                    gzip: path.extension().is_some_and(|e| e == "gz"),
                    points,
                    file: Some(path),
                    first: None,
                })
            }
            Err(e) => {
                tracing::error!(
                    "cannot read the InfluxDB spool file {}: {e}; skipping it",
                    path.display()
                );
                self.files.pop_front();
                None
            }
        }
    }

    fn remove(&mut self, path: &Path, points: usize, stats: &InfluxStats) {
        if let Some(i) = self.files.iter().position(|f| f.0 == path) {
            if let Some((p, _, s)) = self.files.remove(i) {
                let _ = std::fs::remove_file(&p);
                self.bytes -= s;
                stats.in_spool.fetch_sub(points as u64, Relaxed);
            }
        }
        self.taken = false;
    }
}

/// Writes `body` to `tmp`, flushes it to disk, renames it to `path` and flushes the directory,
/// so that after a power cut a spool file is either whole or absent, never empty.
fn write_durably(
    tmp: &std::path::Path,
    path: &std::path::Path,
    body: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_rewrites_the_trailing_timestamp() {
        let lines = vec![
            "m,t=a f=1 1700000000123000000".to_string(),
            "m f=\"x y\" -1500000".to_string(),
        ];
        let b = encode(&lines, Precision::Ms, false);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            "m,t=a f=1 1700000000123\nm f=\"x y\" -2\n"
        );
        let b = encode(&lines, Precision::Ns, false);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            format!("{}\n{}\n", lines[0], lines[1])
        );
    }

    #[test]
    fn gzip_bodies_decompress_to_the_lines() {
        use std::io::Read;
        let lines: Vec<String> = (0..100).map(|i| format!("m f={i} {i}")).collect();
        let b = encode(&lines, Precision::Ns, true);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&b[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out.lines().count(), 100);
        assert_eq!(out.lines().nth(7), Some("m f=7 7"));
    }

    #[test]
    fn the_spool_keeps_batches_across_reopen_and_caps_its_size() {
        let dir = std::env::temp_dir().join(format!("rc-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let stats = InfluxStats::default();
        let mut sp = Spool::open(&dir, 100, &stats).unwrap();
        assert!(sp.push(&[b'a'; 40], false, 4, &stats));
        assert!(sp.push(&[b'b'; 40], true, 5, &stats));
        assert_eq!(stats.in_spool.load(Relaxed), 9);
        // A third batch passes the 100-byte cap: the oldest goes, counted as dropped.
        assert!(sp.push(&[b'c'; 40], false, 6, &stats));
        assert_eq!(stats.dropped.load(Relaxed), 4);
        assert_eq!(stats.in_spool.load(Relaxed), 11);
        drop(sp);
        let stats = InfluxStats::default();
        let mut sp = Spool::open(&dir, 100, &stats).unwrap();
        assert_eq!(stats.in_spool.load(Relaxed), 11);
        let b = sp.oldest().unwrap();
        assert_eq!((b.points, b.gzip, &b.body[..2]), (5, true, &b"bb"[..]));
        assert!(
            sp.oldest().is_none(),
            "the batch in flight is not offered twice"
        );
        let f = b.file.clone().unwrap();
        sp.remove(&f, b.points, &stats);
        let b = sp.oldest().unwrap();
        assert_eq!(b.points, 6);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
