//! Shard workers: each owns the executor for the devices that hash to it (one writer per device:
//! no locks, no duplicate alarms, per-device order), on the wall clock, in its own OS thread so
//! that Rhai never runs on an I/O task.
//!
//! A worker waits for the next message, the next timer, or the next checkpoint, whichever comes
//! first. It parses payloads itself (the CPU work scales with the shards), writes its state
//! through to the store before it passes on an alarm transition (so an alarm never fires twice
//! across a restart), and every `checkpoint` interval otherwise.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::Map;
use tokio::sync::mpsc;

use super::egress::Outbox;
use super::store::StateStore;
use super::Stats;
use crate::alarm::registry::{AlarmAction, AlarmOp};
use crate::alarm::{AckError, Status};
use crate::engine::clock::wall_ms;
use crate::engine::effect::{Effect, EffectSink};
use crate::engine::persist::Snapshot;
use crate::engine::program::RuleSet;
use crate::engine::{Device, Executor};
use crate::message::Message;
use crate::message::{parse, Kind, PayloadLimits};

/// Where the QoS 1 messages whose chains ran and whose output left are reported, one batch of
/// ingest sequence numbers per shard turn: by the egress connection once the turn's publishes
/// are with the broker (`publisher.rs`), or by the shard itself for those the egress queue did
/// not take. The ingest connection is its only reader.
pub type Done = mpsc::Sender<Vec<u64>>;

/// Capacity of the done channel, in batches. Ingest reads it even while it waits for room in
/// a shard's queue, so a shard never waits on it for long; and each batch holds at least one of
/// the (at most 65,535 per session) unacknowledged messages.
pub const DONE_CAPACITY: usize = 65_536;

/// The done channel: the shards' end and ingest's.
pub fn done_channel() -> (Done, mpsc::Receiver<Vec<u64>>) {
    mpsc::channel(DONE_CAPACITY)
}

/// A message for a shard.
pub struct Job {
    /// The device.
    pub device: Arc<str>,
    /// The kind.
    pub kind: Kind,
    /// The source topic.
    pub topic: Arc<str>,
    /// Topic captures.
    pub captures: Vec<(String, String)>,
    /// The raw payload.
    pub payload: bytes::Bytes,
    /// Receive time (ms).
    pub received: i64,
    /// The ingest sequence number to report done (QoS 1), if any.
    pub ack: Option<u64>,
    /// In a cluster: the message's offset in its partition's log (the state saved after it
    /// covers the log up to here).
    pub offset: Option<Box<str>>,
}

/// What a shard is told.
pub enum ShardMsg {
    /// A message.
    Job(Job),
    /// An operator acknowledges an alarm of a device of this shard.
    Ack(AckReq),
    /// New rules (a reload), with their generation.
    Reload(Arc<RuleSet>, u64),
    /// The API asks about this shard's devices.
    Ask(super::devices::Ask),
    /// Start or stop a shadow of candidate rules.
    Shadow(super::shadow::Cmd),
}

/// An operator's action (acknowledge, clear) on an alarm of one of this shard's devices, from
/// the HTTP API or a WebSocket client through the alarm registry.
#[derive(Debug)]
pub struct AckReq {
    /// What to do, to which alarm.
    pub op: AlarmOp,
    /// The result: the alarm's new status, or why not.
    pub reply: tokio::sync::oneshot::Sender<Result<Status, AckError>>,
}

/// Where an operator's action is answered.
type AckReply = tokio::sync::oneshot::Sender<Result<Status, AckError>>;

/// What a shard needs besides its queue.
pub struct ShardCtx {
    /// Its number.
    pub index: usize,
    /// The store.
    pub store: Arc<dyn StateStore>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Where effects go.
    pub outbox: Outbox,
    /// Where finished QoS 1 sequence numbers go.
    pub done: Option<Done>,
    /// Checkpoint interval.
    pub checkpoint: Duration,
    /// Ingest limits.
    pub limits: PayloadLimits,
    /// This shard's bounds on state.
    pub state_limits: crate::config::settings::StateLimits,
    /// Its chains' and nodes' counters (the API reads them).
    pub rule_stats: Arc<crate::engine::stats::RuleStats>,
    /// Recent values: the whole engine's settings, and how many shards share them.
    pub history: (crate::config::settings::HistorySettings, usize),
    /// `engine.offline_after` (ms).
    pub offline_after: i64,
    /// The live trace.
    pub tracer: Arc<super::trace::Tracer>,
    /// Signed messages (`ingest.signature`).
    pub signature: Option<crate::signature::SignatureSettings>,
}

/// The monotonic clock the executor times chains with (ns since the first call).
fn stopwatch() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `meta.ts` (see [`crate::message::message_ts`]), counting a replaced payload time.
fn message_ts(payload: &Map, received: i64, limits: &PayloadLimits, stats: &Stats) -> i64 {
    let (ts, replaced) = crate::message::message_ts(payload, received, limits.max_clock_skew_ms);
    if replaced {
        stats.skew_replaced.fetch_add(1, Relaxed);
    }
    ts
}

/// Collects a step's effects, so that state is on disk before an alarm transition leaves.
#[derive(Default)]
/// The second field is on while a message sampled by a live trace runs.
struct Buffer(Vec<Effect>, bool);

impl EffectSink for Buffer {
    fn emit(&mut self, effect: Effect) {
        self.0.push(effect);
    }
    fn wants_trace(&self) -> bool {
        self.1
    }
    fn wants_trace_messages(&self) -> bool {
        self.1
    }
}

/// Decodes a shard's saved state (read once at start by `live::start`, which refuses to start
/// on bytes it cannot decode). A snapshot of another format version is set aside with a warning:
/// the state of an older build is not guessed at.
pub fn decode_snapshot(
    bytes: &[u8],
    attributes: Option<Vec<u8>>,
) -> Result<Option<Snapshot>, String> {
    let mut s: Snapshot = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match attributes {
        Some(a) => {
            let a: crate::engine::persist::SavedAttributes =
                serde_json::from_slice(&a).map_err(|e| format!("attributes: {e}"))?;
            s.reported = a.reported;
            s.server = a.server;
        }
        // From before attributes had a record of their own: they are in the shard's record.
        None => s.attributes_inline = !(s.reported.is_empty() && s.server.is_empty()),
    }
    if s.version != crate::engine::persist::VERSION {
        tracing::warn!(
            "saved state has format {} (this build reads {}); that shard starts empty",
            s.version,
            crate::engine::persist::VERSION
        );
        return Ok(None);
    }
    Ok(Some(s))
}

fn restore(exec: &mut Executor, index: usize, saved: Snapshot) {
    let alarms = saved.alarms.iter().filter(|a| a.status.is_active()).count();
    let c = exec.restore(saved);
    tracing::info!(
        shard = index,
        active_alarms = alarms,
        node_states = c.nodes,
        timers = c.timers,
        dropped = c.dropped_nodes + c.dropped_timers,
        "state restored"
    );
}

/// Writes the shard's state; the error says why it could not (it is counted, not logged: the
/// caller knows whether it matters).
fn checkpoint(
    exec: &mut Executor,
    ctx: &ShardCtx,
    position: Option<&str>,
    outbox: &[Vec<u8>],
) -> Result<(), String> {
    let started = Instant::now();
    // The devices' attributes only when one changed: a checkpoint costs what changed, not
    // every device's attributes each time.
    let taken = exec.take_attributes();
    let r = (|| {
        let attributes = match &taken {
            Some(a) => Some(
                serde_json::to_vec(a).map_err(|e| format!("cannot serialize attributes: {e}"))?,
            ),
            None => None,
        };
        let bytes = serde_json::to_vec(&exec.snapshot_without_attributes())
            .map_err(|e| format!("cannot serialize state: {e}"))?;
        ctx.store
            .save_at(ctx.index, &bytes, attributes.as_deref(), position, outbox)?;
        tracing::trace!(shard = ctx.index, bytes = bytes.len(), attributes = attributes.as_ref().map_or(0, Vec::len), took = ?started.elapsed(), "checkpoint");
        Ok(())
    })();
    if r.is_err() && taken.is_some() {
        exec.attributes_unsaved();
    }
    match &r {
        Ok(()) => ctx.stats.checkpoints.fetch_add(1, Relaxed),
        Err(_) => ctx.stats.checkpoint_errors.fetch_add(1, Relaxed),
    };
    r
}

/// Most effects a shard holds while its state cannot be written. Past it the shard stops
/// taking messages (its queue fills, ingest waits, the broker keeps the rest) until the state
/// can be written again.
pub const MAX_HELD: usize = 10_000;

/// Output held back because an alarm transition could not be written: it leaves only once the
/// state that produced it is on disk, so a restart never repeats what went out. The QoS 1
/// acknowledgements of the messages behind it wait too: if the engine stops first, the broker
/// delivers those messages again and the transition happens again, once.
#[derive(Default)]
struct Held {
    effects: Vec<Effect>,
    done: Vec<u64>,
    /// Set while holding: when to try writing again.
    retry_at: Option<tokio::time::Instant>,
    failures: u32,
}

impl Held {
    fn active(&self) -> bool {
        self.retry_at.is_some()
    }

    fn full(&self) -> bool {
        self.effects.len() >= MAX_HELD
    }

    /// A write failed: try again after a backoff of 0.5 s doubling to 5 s.
    fn failed(&mut self) {
        let ms = (500u64 << self.failures.min(4)).min(5_000);
        self.failures += 1;
        self.retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(ms));
    }
}

/// Counts what the bounds on state dropped, and the devices this shard learned from messages
/// (`tracked`: its share of the engine-wide gauge). Evictions at a bound are logged (rate-limited): they mean
/// the bound is too low for the fleet, or something floods new keys.
fn count_evictions(exec: &mut Executor, ctx: &ShardCtx, tracked: &mut usize) {
    let s = &ctx.stats;
    let now = exec.learned_devices();
    if now != *tracked {
        if now > *tracked {
            s.devices.fetch_add((now - *tracked) as u64, Relaxed);
        } else {
            s.devices.fetch_sub((*tracked - now) as u64, Relaxed);
        }
        *tracked = now;
    }
    let e = exec.take_evictions();
    if e == crate::engine::Evictions::default() {
        return;
    }
    s.keys_forgotten.fetch_add(e.keys_forgotten, Relaxed);
    s.devices_forgotten.fetch_add(e.devices_forgotten, Relaxed);
    s.keys_evicted.fetch_add(e.keys_evicted, Relaxed);
    s.devices_evicted.fetch_add(e.devices_evicted, Relaxed);
    s.devices_untracked.fetch_add(e.untracked, Relaxed);
    if e.keys_forgotten + e.devices_forgotten > 0 {
        tracing::debug!(
            shard = ctx.index,
            keys = e.keys_forgotten,
            devices = e.devices_forgotten,
            "idle state forgotten"
        );
    }
    if e.keys_evicted + e.devices_evicted + e.untracked > 0 && ctx.outbox.limit.allow() {
        let l = ctx.state_limits;
        tracing::warn!(
            shard = ctx.index,
            keys_evicted = e.keys_evicted,
            devices_evicted = e.devices_evicted,
            devices_untracked = e.untracked,
            "state at its bounds (per shard: {} keys per node, {} devices); the least recently \
             used went. Raise engine.max_keys / engine.max_devices if the fleet is this large",
            l.max_keys,
            l.max_devices
        );
    }
}

/// Runs a shard until its queue closes (shutdown), then drains, checkpoints and returns. Each
/// turn: wait for a message or a timer, take what is queued, count the turn, write the state
/// when due (or when an alarm changed), and send the output on (or hold it while the state
/// cannot be written).
pub fn run(
    rules: Arc<RuleSet>,
    devices: HashMap<Arc<str>, Device>,
    saved: Option<Snapshot>,
    mut rx: mpsc::Receiver<ShardMsg>,
    ctx: ShardCtx,
) {
    let (exec, history) = executor(rules, devices, saved, &ctx);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = ctx.index, "cannot start the shard runtime: {e}");
            return;
        }
    };
    rt.block_on(async {
        let mut shard = Shard::new(exec, history, ctx);
        while let Some(first) = shard.wait(&mut rx).await {
            shard.take_turn(first, &mut rx);
            shard.count_turn();
            shard.save_if_due();
            shard.send_out().await;
            // The candidate's turn, once the live output left.
            if let Some(s) = &mut shard.shadow {
                s.run_turn();
            }
        }
        shard.finish().await;
    });
}

/// The shard's executor, with its saved state restored and its open alarms back in the
/// registry, and its history.
fn executor(
    rules: Arc<RuleSet>,
    devices: HashMap<Arc<str>, Device>,
    saved: Option<Snapshot>,
    ctx: &ShardCtx,
) -> (Executor, super::history::History) {
    let mut exec = Executor::new(rules, devices, wall_ms());
    exec.share_stats(ctx.rule_stats.clone());
    exec.set_stopwatch(stopwatch);
    exec.set_limits(ctx.state_limits);
    let history = super::history::History::new(ctx.history.0, ctx.history.1);
    // RPC ids unique across shards and restarts: start time (base 36) and shard.
    exec.set_id_prefix(format!("{}-{}-", radix36(wall_ms() as u64), ctx.index));
    if let Some(saved) = saved {
        restore(&mut exec, ctx.index, saved);
    }
    for a in exec.alarms().iter() {
        ctx.outbox.alarms.restore(a);
    }
    (exec, history)
}

/// A running shard between turns.
struct Shard {
    exec: Executor,
    history: super::history::History,
    ctx: ShardCtx,
    /// The turn's effects.
    buf: Buffer,
    /// The turn's finished QoS 1 sequence numbers.
    done: Vec<u64>,
    /// State changed since the last checkpoint.
    dirty: bool,
    /// The alarm store's change count at the last checkpoint.
    alarm_changes: u64,
    /// The store's epoch at the last checkpoint (a new file asks for everything again).
    saved_epoch: u64,
    /// Output held while the state cannot be written.
    held: Held,
    /// Operators' actions of the turn, answered once their transitions left.
    replies: Vec<(AckReply, Result<Status, AckError>)>,
    /// Devices tracked at the last count of evictions.
    tracked: usize,
    /// In a cluster: the log offset of the last message taken.
    position: Option<Box<str>>,
    /// In a cluster: the notifications not yet stored with the state (JSON), which the next
    /// write stores in the partition's outbox.
    notices: Vec<Vec<u8>>,
    next_checkpoint: tokio::time::Instant,
    /// A candidate rule set run on the same messages, its effects counted, never sent.
    shadow: Option<super::shadow::Run>,
    /// Checks signed messages, with the replay memory of this shard's devices.
    verifier: Option<crate::signature::Verifier>,
}

impl Shard {
    fn new(exec: Executor, history: super::history::History, ctx: ShardCtx) -> Shard {
        Shard {
            alarm_changes: exec.alarms().changes(),
            saved_epoch: ctx.store.epoch(),
            next_checkpoint: tokio::time::Instant::now() + ctx.checkpoint,
            exec,
            history,
            buf: Buffer(Vec::new(), false),
            done: Vec::new(),
            dirty: false,
            held: Held::default(),
            replies: Vec::new(),
            tracked: 0,
            position: None,
            notices: Vec::new(),
            shadow: None,
            verifier: ctx.signature.clone().map(crate::signature::Verifier::new),
            ctx,
        }
    }

    /// Waits for a message (`Some(Some(_))`) or for a timer, a checkpoint or a retry of the
    /// store (`Some(None)`); None once the queue closed. Timers due by then fire.
    async fn wait(&mut self, rx: &mut mpsc::Receiver<ShardMsg>) -> Option<Option<ShardMsg>> {
        // Holding all it may: take no message and fire no timer until the state is written.
        let stalled = self.held.full();
        let due = match (
            self.exec.next_due(),
            self.shadow.as_ref().and_then(|s| s.next_due()),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = due.filter(|_| !stalled).map(|due| {
            let wait = due.saturating_sub(wall_ms()).clamp(0, 86_400_000) as u64;
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        let mut wake = timer.map_or(self.next_checkpoint, |t| t.min(self.next_checkpoint));
        if let Some(retry) = self.held.retry_at {
            wake = wake.min(retry);
        }
        let first = tokio::select! {
            m = rx.recv(), if !stalled => match m {
                Some(m) => Some(m),
                None => return None,
            },
            _ = tokio::time::sleep_until(wake) => None,
        };
        if !stalled {
            let now = wall_ms();
            self.exec.advance_to(now, &mut self.buf);
            if let Some(s) = &mut self.shadow {
                s.advance_to(now);
            }
        }
        Some(first)
    }

    /// Takes `first` and what is queued now too (up to a batch), so one checkpoint check and
    /// one flush of acks serve many messages.
    fn take_turn(&mut self, first: Option<ShardMsg>, rx: &mut mpsc::Receiver<ShardMsg>) {
        let mut next = first;
        let mut n = 0;
        let mut jobs = false;
        while let Some(m) = next.take() {
            jobs |= matches!(m, ShardMsg::Job(_));
            self.take(m);
            n += 1;
            if n < 256 {
                next = rx.try_recv().ok();
            }
        }
        if jobs {
            self.ctx.stats.shard_turns.fetch_add(1, Relaxed);
        }
    }

    /// One message of the queue.
    fn take(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Job(mut job) => {
                if let Some(o) = job.offset.take() {
                    self.position = Some(o);
                }
                handle(
                    &mut self.exec,
                    &mut self.history,
                    job,
                    &self.ctx,
                    &mut self.buf,
                    &mut self.done,
                    self.shadow.as_mut(),
                    self.verifier.as_mut(),
                );
                self.dirty = true;
            }
            ShardMsg::Ack(req) => {
                let AlarmOp { id, action, by, .. } = &req.op;
                let r = match action {
                    AlarmAction::Ack => self.exec.acknowledge(id, by.as_deref(), &mut self.buf),
                    AlarmAction::Clear => self.exec.clear_alarm(id, by.as_deref(), &mut self.buf),
                };
                if let Some(s) = &mut self.shadow {
                    s.operator(id, by.as_deref(), matches!(action, AlarmAction::Clear));
                }
                // Answered once the transition has left (below): a client that reads the
                // alarms after the answer sees the new status.
                self.replies.push((req.reply, r.map(|a| a.status)));
            }
            ShardMsg::Ask(ask) => {
                if let (
                    Some(s),
                    super::devices::Ask::SetAttributes {
                        device, changes, ..
                    },
                ) = (&mut self.shadow, &ask)
                {
                    s.set_attributes(device, changes.clone());
                }
                let mut a = super::devices::Answerer {
                    exec: &mut self.exec,
                    history: &self.history,
                    now: wall_ms(),
                    offline_after: self.ctx.offline_after,
                };
                self.dirty |= a.answer(ask);
            }
            ShardMsg::Shadow(super::shadow::Cmd::Start(rules, generation, reply)) => {
                let run = super::shadow::Run::start(
                    &self.exec,
                    self.ctx.rule_stats.clone(),
                    rules,
                    self.ctx.index,
                    self.buf.0.len(),
                    generation,
                );
                let _ = reply.send(run.pair());
                self.shadow = Some(run);
            }
            ShardMsg::Shadow(super::shadow::Cmd::Stop(generation)) => {
                if self
                    .shadow
                    .as_ref()
                    .is_some_and(|s| s.generation <= generation)
                {
                    self.shadow = None;
                }
            }
            ShardMsg::Reload(rules, generation) => {
                let c = self.exec.reload(rules);
                self.dirty = true;
                tracing::debug!(
                    shard = self.ctx.index,
                    generation,
                    kept = c.nodes,
                    dropped = c.dropped_nodes,
                    "rules swapped"
                );
            }
        }
    }

    /// Counts what the turn dropped or evicted, and keeps its effects for the shadow's.
    fn count_turn(&mut self) {
        if let Some(s) = &mut self.shadow {
            s.keep_live(&self.buf.0);
        }
        let ctx = &self.ctx;
        self.dirty |= !self.buf.0.is_empty();
        let dropped = self.exec.take_attributes_dropped();
        if dropped > 0 {
            ctx.stats.attributes_dropped.fetch_add(dropped, Relaxed);
            if ctx.outbox.limit.allow() {
                tracing::warn!(
                    shard = ctx.index,
                    dropped,
                    "attribute values dropped: a device keeps at most {} keys and {} KiB, and the engine `engine.max_attribute_bytes`",
                    crate::engine::MAX_REPORTED_ATTRIBUTES,
                    crate::engine::MAX_DEVICE_ATTRIBUTE_BYTES / 1024
                );
            }
        }
        count_evictions(&mut self.exec, ctx, &mut self.tracked);
        let h = self.history.take_dropped();
        ctx.stats
            .history_devices_evicted
            .fetch_add(h.devices, Relaxed);
        ctx.stats
            .history_fields_dropped
            .fetch_add(h.fields, Relaxed);
    }

    /// Writes the state when an alarm changed, when a checkpoint is due, or when the held
    /// output's retry is due.
    fn save_if_due(&mut self) {
        take_notices(&mut self.buf, &self.ctx, &mut self.notices);
        let now = tokio::time::Instant::now();
        // A notification kept in the store's outbox is written through as an alarm is.
        let alarm_changed =
            self.exec.alarms().changes() != self.alarm_changes || !self.notices.is_empty();
        // Alarm transitions reach the world only once they are on disk; while held, the store
        // is retried on its own schedule, not on every turn.
        let attempt = match self.held.retry_at {
            Some(retry) => now >= retry,
            None => {
                alarm_changed
                    || (now >= self.next_checkpoint
                        && (self.dirty || self.ctx.store.epoch() != self.saved_epoch))
            }
        };
        if attempt {
            let epoch = self.ctx.store.epoch();
            if epoch != self.saved_epoch {
                // A new state file: the attributes go into it too.
                self.exec.attributes_unsaved();
            }
            match checkpoint(
                &mut self.exec,
                &self.ctx,
                self.position.as_deref(),
                &self.notices,
            ) {
                Ok(()) => {
                    self.notices.clear();
                    self.alarm_changes = self.exec.alarms().changes();
                    self.dirty = false;
                    self.saved_epoch = epoch;
                    if self.held.active() {
                        release(&mut self.held, &mut self.done, &mut self.ctx);
                    }
                }
                Err(e) if alarm_changed || self.held.active() => {
                    if !self.held.active() {
                        self.ctx.stats.store_failing.fetch_add(1, Relaxed);
                    }
                    self.held.failed();
                    if self.held.failures == 1 || self.ctx.outbox.limit.allow() {
                        tracing::error!(
                            shard = self.ctx.index,
                            held = self.held.effects.len() + self.buf.0.len(),
                            "cannot write state ({e}): alarm transitions, and everything after them, are held until it can be written; retrying"
                        );
                    }
                }
                Err(e) => {
                    if self.ctx.outbox.limit.allow() {
                        tracing::error!(
                            shard = self.ctx.index,
                            "cannot write state: {e}; retrying at the next checkpoint"
                        );
                    }
                }
            }
            self.next_checkpoint = now + self.ctx.checkpoint;
            self.sweep();
        } else if now >= self.next_checkpoint {
            self.next_checkpoint = now + self.ctx.checkpoint;
            self.sweep();
        }
    }

    /// Forgets what only mattered for a while: recent values past their window, signatures
    /// past the replay window.
    fn sweep(&mut self) {
        let now = wall_ms();
        self.history.sweep(now);
        if let Some(v) = &mut self.verifier {
            v.sweep(now);
        }
    }

    /// Sends the turn's output on, or holds it (and its acknowledgements) behind a state that
    /// could not be written; answers the turn's operators either way.
    async fn send_out(&mut self) {
        if self.held.active() {
            self.ctx
                .stats
                .held_effects
                .fetch_add(self.buf.0.len() as u64, Relaxed);
            self.held.effects.append(&mut self.buf.0);
            self.held.done.append(&mut self.done);
            for (tx, r) in self.replies.drain(..) {
                let _ = tx.send(r);
            }
            return;
        }
        for e in self.buf.0.drain(..) {
            self.ctx.outbox.send(e);
        }
        hand_off(&mut self.ctx, std::mem::take(&mut self.done)).await;
        for (tx, r) in self.replies.drain(..) {
            let _ = tx.send(r);
        }
    }

    /// The queue closed: shutdown. Everything queued has been handled; save, then send what
    /// the state covers.
    async fn finish(mut self) {
        let (exec, ctx, buf) = (&mut self.exec, &mut self.ctx, &mut self.buf);
        exec.advance_to(wall_ms(), buf);
        take_notices(buf, ctx, &mut self.notices);
        match checkpoint(exec, ctx, self.position.as_deref(), &self.notices) {
            Ok(()) => {
                let mut done = Vec::new();
                if self.held.active() {
                    release(&mut self.held, &mut done, ctx);
                }
                for e in buf.0.drain(..) {
                    ctx.outbox.send(e);
                }
                hand_off(ctx, done).await;
            }
            Err(e)
                if self.held.active()
                    || exec.alarms().changes() != self.alarm_changes
                    || !self.notices.is_empty() =>
            {
                tracing::error!(
                    shard = ctx.index,
                    unsent = self.held.effects.len() + buf.0.len(),
                    "cannot write state at shutdown ({e}): the held alarm transitions and what follows them were not sent; their QoS 1 messages were not acknowledged, so the broker delivers them again"
                );
            }
            Err(e) => {
                tracing::error!(
                    shard = ctx.index,
                    "cannot write state at shutdown: {e}; the last checkpoint stands"
                );
                for e in buf.0.drain(..) {
                    ctx.outbox.send(e);
                }
                hand_off(ctx, Vec::new()).await;
            }
        }
        let active = exec
            .alarms()
            .iter()
            .filter(|a| a.status.is_active())
            .count();
        tracing::debug!(shard = ctx.index, active_alarms = active, "shard stopped");
    }
}

/// When the store keeps an outbox (a cluster's partition): moves the turn's notifications out
/// of its effects, as JSON for the next state write, which stores them with the state.
fn take_notices(buf: &mut Buffer, ctx: &ShardCtx, notices: &mut Vec<Vec<u8>>) {
    if !ctx.store.keeps_outbox()
        || !buf
            .0
            .iter()
            .any(|e| matches!(e.event, crate::engine::effect::Event::Notify { .. }))
    {
        return;
    }
    let mut kept = Vec::with_capacity(buf.0.len());
    for e in buf.0.drain(..) {
        if matches!(e.event, crate::engine::effect::Event::Notify { .. }) {
            ctx.stats.notifications.fetch_add(1, Relaxed);
            if let Some(n) = super::egress::notice(e) {
                notices.extend(serde_json::to_vec(&n).ok());
            }
        } else {
            kept.push(e);
        }
    }
    buf.0 = kept;
}

/// Hands the turn's output on. Its QoS 1 messages (`done`) are acknowledged (in one write, by
/// ingest) once the egress connection has their output with the broker; those the egress queue
/// did not take are reported to ingest here.
async fn hand_off(ctx: &mut ShardCtx, done: Vec<u64>) {
    let back = ctx.outbox.flush(done).await;
    if let Some(tx) = ctx.done.as_ref().filter(|_| !back.is_empty()) {
        let _ = tx.send(back).await;
    }
}

/// The state is written: what was held goes out, in order, ahead of this turn's output; the
/// held acknowledgements go ahead of this turn's.
fn release(held: &mut Held, done: &mut Vec<u64>, ctx: &mut ShardCtx) {
    let n = held.effects.len();
    ctx.stats.held_effects.fetch_sub(n as u64, Relaxed);
    ctx.stats.store_failing.fetch_sub(1, Relaxed);
    tracing::warn!(
        shard = ctx.index,
        sent = n,
        after_failures = held.failures,
        "state written again; the held output goes out now"
    );
    for e in held.effects.drain(..) {
        ctx.outbox.send(e);
    }
    done.splice(0..0, held.done.drain(..));
    held.retry_at = None;
    held.failures = 0;
}

// The shard's parts a message touches, each borrowed apart (the shard owns them all).
#[allow(clippy::too_many_arguments)]
fn handle(
    exec: &mut Executor,
    history: &mut super::history::History,
    job: Job,
    ctx: &ShardCtx,
    buf: &mut Buffer,
    done: &mut Vec<u64>,
    shadow: Option<&mut super::shadow::Run>,
    verifier: Option<&mut crate::signature::Verifier>,
) {
    let stats = &ctx.stats;
    // A signed message is checked before anything reads it. A status message is not signed:
    // the MQTT last will that says `offline` is published by the broker, as the device left it.
    let checked = match verifier {
        Some(v) if job.kind != crate::message::Kind::Status => {
            match v.check(&job.device, &job.payload, job.received) {
                Ok(()) => Ok(Some(v.settings().field.as_str())),
                Err(why) => {
                    tracing::debug!(device = %job.device, why = why.as_str(), "signed message refused");
                    Err(crate::message::Reject::BadSignature)
                }
            }
        }
        _ => Ok(None),
    };
    match checked.and_then(|sig| {
        let mut payload = parse(job.kind, &job.payload, &ctx.limits)?;
        if let Some(field) = sig {
            // Checked: the signature has done its work and stays out of `msg`.
            payload.remove(field);
        }
        Ok(payload)
    }) {
        Ok(payload) => {
            let ts = message_ts(&payload, job.received, &ctx.limits, stats);
            if job.kind == crate::message::Kind::Telemetry {
                history.record(&job.device, ts, &payload);
            }
            // A sampled message (a live trace) keeps its device id for the entries; any other
            // pays one relaxed load here and nothing more.
            let sampled = ctx
                .tracer
                .sample(&job.device, job.received)
                .map(|chain| (chain, buf.0.len(), job.device.clone()));
            buf.1 = sampled.is_some();
            let m = Message {
                device: job.device,
                kind: job.kind,
                topic: Some(job.topic),
                ts,
                captures: job.captures,
                payload,
            };
            if let Some(s) = shadow {
                s.process(m.clone());
            }
            exec.process(m, buf);
            if let Some((chain, from, device)) = sampled {
                buf.1 = false;
                trace(&ctx.tracer, buf, from, &device, chain.as_deref(), ts);
            }
            stats.processed.fetch_add(1, Relaxed);
        }
        Err(r) => {
            stats.reject(r);
            ctx.outbox.dead_letter(&job.topic, r, &job.payload);
        }
    }
    if let Some(seq) = job.ack {
        done.push(seq);
    }
}

/// Keeps a sampled message's path as trace entries, and pushes each to the room `trace`.
fn trace(
    tracer: &super::trace::Tracer,
    buf: &mut Buffer,
    from: usize,
    device: &Arc<str>,
    chain: Option<&str>,
    ts: i64,
) {
    for entry in tracer.record(&mut buf.0, from, device, chain, ts) {
        let data = rhai::serde::to_dynamic(&entry).unwrap_or(rhai::Dynamic::UNIT);
        buf.0.push(Effect {
            event: crate::engine::effect::Event::Websocket {
                device: device.clone(),
                room: "trace".into(),
                data,
            },
            ts,
            chain: Arc::from(entry.chain.as_str()),
            node: Arc::from(""),
        });
    }
}

fn radix36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A device's shard (FNV-1a: stable across runs and builds, unlike the std hasher).
pub fn shard_of(device: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_payload_time_is_counted() {
        // Which time wins is the decoder's (message.rs); the shard counts the replacements.
        let limits = PayloadLimits {
            max_clock_skew_ms: 1000,
            ..PayloadLimits::default()
        };
        let stats = Stats::default();
        let mut m = Map::new();
        m.insert("ts".into(), 4_500_i64.into());
        assert_eq!(message_ts(&m, 5_000, &limits, &stats), 4_500);
        m.insert("ts".into(), 1_000_i64.into());
        assert_eq!(message_ts(&m, 5_000, &limits, &stats), 5_000);
        assert_eq!(stats.skew_replaced.load(Relaxed), 1);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("pump-3", 4), shard_of("pump-3", 4));
        let used: std::collections::HashSet<usize> =
            (0..100).map(|i| shard_of(&format!("d{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}
