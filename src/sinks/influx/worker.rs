//! The writer task: lines in from the shards, a memory queue (`buffer_points`), one request at
//! a time, retries with backoff while new points wait, overflow to the spool, and the shutdown
//! grace.

use crate::lineproto::Point;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::encoding::Batch;
use super::service::{Outcome, Pending, Service};
use super::spool::Spool;
use super::{encode, InfluxStats};
use crate::config::settings::InfluxSettings;

pub(super) struct Writer {
    pub(super) settings: InfluxSettings,
    pub(super) service: Service,
    pub(super) stats: Arc<InfluxStats>,
    pub(super) queue: VecDeque<Point>,
    pub(super) spool: Option<Spool>,
    /// When the last "cannot write" line was logged (one every 10 s at most).
    pub(super) logged: Option<Instant>,
}

impl Writer {
    fn held(&self) -> usize {
        self.queue.len()
    }

    /// Takes lines in; past the buffer, the oldest batch goes to the spool or is dropped.
    fn accept(&mut self, lines: Vec<Point>) {
        self.queue.extend(lines);
        while self.held() > self.settings.buffer_points {
            let n = self.settings.batch_size.min(self.queue.len());
            let batch: Vec<Point> = self.queue.drain(..n).collect();
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
            let lines: Vec<Point> = self.queue.drain(..n).collect();
            self.stats.buffered.store(self.held() as u64, Relaxed);
            return Some(Batch {
                body: encode(&lines, self.settings.precision, self.settings.gzip),
                gzip: self.settings.gzip,
                points: n,
                file: None,
                first: lines.first().map(|l| l.line.chars().take(300).collect()),
            });
        }
        None
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Vec<Point>>) {
        let mut inflight: Option<(Pending, Batch)> = None;
        let mut sent_at = Instant::now();
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
                    sent_at = Instant::now();
                    inflight = Some((self.service.send(b.body.clone(), b.gzip), b));
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
            // Wake only for what can be done then. While a request is in flight its answer
            // wakes the loop, and while a batch waits for its retry nothing else may be sent:
            // a flush time that passed meanwhile must not count as a deadline, or the wait
            // returns at once, again and again, for as long as the server is down.
            let send_at = match (&inflight, retry_at) {
                (Some(_), _) => None,
                (None, Some(t)) => Some(t),
                (None, None) => Some(next_flush),
            };
            let wake = [send_at, grace_end].into_iter().flatten().min();
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
                    self.stats.request_duration.observe(sent_at.elapsed());
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
                        Outcome::Rejected(code, msg) => {
                            failures = 0;
                            backoff.reset();
                            self.stats.rejected.fetch_add(batch.points as u64, Relaxed);
                            let hint = if code == 413 { " (lower `influx.batch_size`)" } else { "" };
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
                _ = async {
                    match wake {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
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
            let lines: Vec<Point> = self.queue.drain(..n).collect();
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
