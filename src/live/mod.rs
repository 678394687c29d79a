//! The live engine (`rulechain run`): the rule core plugged into real I/O.
//!
//! ```text
//! MQTT ◄─► ingest task (own connection) ──hash(device)──► shard threads (executor, wall clock)
//!   ▲        QoS 1 acks, in receive order ◄──── Done([seq…]) per turn ─┘   │ effects
//!   └──egress conn. (batches) ◄── outbox in each shard (rpc, publish, dead letters)
//!                                          └──► sinks (InfluxDB writer, WebSocket hub, notify
//!                                               channels: see `crate::sinks`), never waiting
//! ```
//!
//! Every queue is bounded. State is checkpointed per shard to the store (see [`store`]); alarm
//! transitions are written through before they leave the shard. Rule reloads swap a new rule set
//! into every shard without touching the MQTT connections.

pub mod broker;
pub mod devices;
pub mod egress;
#[cfg(feature = "embedded-broker")]
pub mod front;
pub mod history;
pub mod http;
pub mod ingest;
pub mod link;
#[cfg(feature = "embedded-broker")]
pub mod local;
pub mod publisher;
pub mod record;
pub mod reload;
mod serve;
pub mod shard;
pub mod sim;
pub mod store;
pub mod trace;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::config::settings::{Broker, Settings};
use crate::counters::{Counters, Report};
use crate::diag::Diagnostics;
use shard::Reject;

pub use crate::engine::clock::wall_ms;

/// The engine's counters (shown by `/api/status` and the periodic log line).
#[derive(Debug, Default)]
pub struct Stats {
    /// MQTT messages received.
    pub received: AtomicU64,
    /// Messages whose chains ran.
    pub processed: AtomicU64,
    /// Topics that matched no pattern.
    pub no_pattern: AtomicU64,
    /// Rejected payloads, by reason.
    pub rejected: [AtomicU64; 5],
    /// Payload timestamps replaced by the receive time (skew guard).
    pub skew_replaced: AtomicU64,
    /// RPC commands sent.
    pub rpc_sent: AtomicU64,
    /// Messages republished.
    pub published: AtomicU64,
    /// Publishes dropped because the egress queue was full (never the output of a QoS 1 message:
    /// that waits for room).
    pub egress_dropped: AtomicU64,
    /// Messages the embedded broker skipped for the engine: it fell behind by more than the
    /// broker's log holds.
    pub broker_dropped: AtomicU64,
    /// Alarm transitions.
    pub alarm_events: AtomicU64,
    /// Notifications.
    pub notifications: AtomicU64,
    /// InfluxDB points.
    pub influx_points: AtomicU64,
    /// WebSocket pushes.
    pub websocket: AtomicU64,
    /// Node errors.
    pub node_errors: AtomicU64,
    /// Messages dropped by nodes (delay overflow…).
    pub dropped: AtomicU64,
    /// Reported attribute keys dropped past the per-device limit.
    pub attributes_dropped: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Checkpoints that failed.
    pub checkpoint_errors: AtomicU64,
    /// Shards holding output because their state cannot be written (not ready while > 0).
    pub store_failing: AtomicU64,
    /// Effects held until the state that produced them is written.
    pub held_effects: AtomicU64,
    /// MQTT ConnAcks on the ingest connection.
    pub connects: AtomicU64,
    /// MQTT connection errors (all connections).
    pub connect_errors: AtomicU64,
    /// Whether ingest is connected.
    pub connected: AtomicBool,
    /// HTTP connections refused at the connection limit.
    pub http_refused: AtomicU64,
    /// Device lists built for `GET /api/devices` (each asks every shard; repeats within a
    /// second are answered from the last one).
    pub device_lists: AtomicU64,
    /// Devices learned from messages, beyond the registry (all shards).
    pub devices: AtomicU64,
    /// Per-key node entries forgotten after `engine.forget_after` idle.
    pub keys_forgotten: AtomicU64,
    /// Devices forgotten after `engine.forget_after` idle.
    pub devices_forgotten: AtomicU64,
    /// Per-key node entries evicted at `engine.max_keys`.
    pub keys_evicted: AtomicU64,
    /// Devices evicted at `engine.max_devices`.
    pub devices_evicted: AtomicU64,
    /// Messages of new devices past `engine.max_devices` that were run without keeping the
    /// device.
    pub devices_untracked: AtomicU64,
    /// Devices whose recent values were evicted at `history.max_devices`.
    pub history_devices_evicted: AtomicU64,
    /// Values of fields past `history.max_fields` not kept.
    pub history_fields_dropped: AtomicU64,
}

const REJECTS: [Reject; 5] = [
    Reject::TooLarge,
    Reject::InvalidUtf8,
    Reject::TooDeep,
    Reject::NotJson,
    Reject::NotObject,
];

impl Stats {
    /// Counts a rejected payload.
    pub fn reject(&self, r: Reject) {
        if let Some(i) = REJECTS.iter().position(|x| *x == r) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    /// Every counter, as JSON.
    pub fn to_json(&self) -> Value {
        crate::counters::to_json(self)
    }
}

impl Counters for Stats {
    fn report(&self, r: &mut dyn Report) {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let rejected: Vec<(&str, u64)> = REJECTS
            .iter()
            .zip(&self.rejected)
            .map(|(x, n)| (x.as_str(), g(n)))
            .collect();
        r.counter("received", "MQTT messages received", g(&self.received));
        r.counter("processed", "messages whose chains ran", g(&self.processed));
        r.counter(
            "no_pattern",
            "topics that matched no pattern",
            g(&self.no_pattern),
        );
        r.counters_by("rejected", "payloads rejected", "reason", &rejected);
        r.counter(
            "skew_replaced",
            "payload times replaced by the receive time",
            g(&self.skew_replaced),
        );
        r.counter("rpc_sent", "RPC commands sent", g(&self.rpc_sent));
        r.counter("published", "messages republished", g(&self.published));
        r.counter(
            "egress_dropped",
            "publishes dropped: the egress queue was full",
            g(&self.egress_dropped),
        );
        r.counter(
            "broker_dropped",
            "messages the embedded broker skipped: the engine fell behind by more than its log",
            g(&self.broker_dropped),
        );
        r.counter("alarm_events", "alarm transitions", g(&self.alarm_events));
        r.counter(
            "notifications",
            "notifications handed to channels",
            g(&self.notifications),
        );
        r.counter(
            "influx_points",
            "points handed to the InfluxDB writer",
            g(&self.influx_points),
        );
        r.counter("websocket", "WebSocket pushes", g(&self.websocket));
        r.counter("node_errors", "node errors", g(&self.node_errors));
        r.counter("dropped", "messages dropped by nodes", g(&self.dropped));
        r.counter(
            "attributes_dropped",
            "reported attribute keys dropped past the limit",
            g(&self.attributes_dropped),
        );
        r.counter("checkpoints", "checkpoints written", g(&self.checkpoints));
        r.counter(
            "checkpoint_errors",
            "checkpoints that failed",
            g(&self.checkpoint_errors),
        );
        r.gauge(
            "store_failing_shards",
            "shards holding output: their state cannot be written",
            g(&self.store_failing),
        );
        r.gauge(
            "held_effects",
            "effects held until their state is written",
            g(&self.held_effects),
        );
        r.counter(
            "mqtt_connects",
            "MQTT ConnAcks on the ingest connection",
            g(&self.connects),
        );
        r.counter(
            "mqtt_connect_errors",
            "MQTT connection errors",
            g(&self.connect_errors),
        );
        r.flag(
            "mqtt_connected",
            "ingest is connected and subscribed",
            self.connected.load(Relaxed),
        );
        r.counter(
            "http_refused",
            "HTTP connections refused at the limit",
            g(&self.http_refused),
        );
        r.counter(
            "device_lists",
            "device lists built for the API, each asking every shard",
            g(&self.device_lists),
        );
        r.gauge(
            "learned_devices",
            "devices learned from messages",
            g(&self.devices),
        );
        r.counter(
            "keys_forgotten",
            "per-key entries forgotten when idle",
            g(&self.keys_forgotten),
        );
        r.counter(
            "keys_evicted",
            "per-key entries evicted at max_keys",
            g(&self.keys_evicted),
        );
        r.counter(
            "devices_forgotten",
            "devices forgotten when idle",
            g(&self.devices_forgotten),
        );
        r.counter(
            "devices_evicted",
            "devices evicted at max_devices",
            g(&self.devices_evicted),
        );
        r.counter(
            "devices_untracked",
            "messages of new devices run without keeping the device",
            g(&self.devices_untracked),
        );
        r.counter(
            "history_devices_evicted",
            "devices whose recent values were evicted at history.max_devices",
            g(&self.history_devices_evicted),
        );
        r.counter(
            "history_fields_dropped",
            "values of fields past history.max_fields not kept",
            g(&self.history_fields_dropped),
        );
    }
}

/// At most `per_sec` log lines a second for a noisy source (bad payloads, node errors); the
/// counters still count every one.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: u64,
    window: AtomicU64,
    used: AtomicU64,
}

impl RateLimit {
    /// A limiter.
    pub fn new(per_sec: u64) -> Self {
        RateLimit {
            per_sec,
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be logged now.
    pub fn allow(&self) -> bool {
        let now = (wall_ms() / 1000) as u64;
        if self.window.swap(now, Relaxed) != now {
            self.used.store(0, Relaxed);
        }
        self.used.fetch_add(1, Relaxed) < self.per_sec
    }
}

/// `run`'s options besides the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Also run the device simulator (`--demo`).
    pub demo: bool,
    /// Move a saved state file aside and start empty (`--reset-state`).
    pub reset_state: bool,
}

/// Why the engine did not start or stopped early, with its exit code: 1 for findings (rules
/// with errors), 2 for usage and I/O (a port taken, a state file damaged, a directory missing).
#[derive(Debug)]
pub struct Fatal {
    /// The exit code.
    pub code: i32,
    /// What went wrong and how to fix it.
    pub message: String,
}

impl From<String> for Fatal {
    fn from(message: String) -> Self {
        Fatal { code: 2, message }
    }
}

impl From<store::StoreError> for Fatal {
    fn from(e: store::StoreError) -> Self {
        Fatal {
            code: 2,
            message: e.to_string(),
        }
    }
}

/// Runs the engine until SIGINT/SIGTERM. Returns the process exit code.
pub fn run(settings: Settings, opts: RunOptions) -> i32 {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match start(settings, opts) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{}", e.message);
            e.code
        }
    }
}

/// Worker threads of the I/O runtime: the cores the shards leave, at least one. Every extra
/// worker is another thread for the ingest and egress tasks to be woken on: on 2 cores with one
/// shard, measured side by side (benches/compare), one worker drained a flood at 21–22k msg/s
/// and 33–35 µs of CPU a message, two at 19–21k and 36–40 µs.
fn io_threads(shards: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cpus.saturating_sub(shards).max(1)
}

/// Opens the state store (first, before any thread runs: a damaged file is reported, not
/// panicked on), moving the old file aside with `--reset-state`.
fn open_store(dir: &std::path::Path, reset: bool) -> Result<store::RedbStore, Fatal> {
    let path = store::RedbStore::path_in(dir);
    if reset && path.exists() {
        let aside = path.with_extension(format!("redb.reset-{}", wall_ms()));
        std::fs::rename(&path, &aside)
            .map_err(|e| format!("--reset-state: cannot move {} aside: {e}", path.display()))?;
        tracing::warn!(
            "--reset-state: moved {} to {}; starting with empty state",
            path.display(),
            aside.display()
        );
    }
    Ok(store::RedbStore::open(dir)?)
}

fn start(settings: Settings, opts: RunOptions) -> Result<(), Fatal> {
    if !settings.rules_dir.is_dir() {
        return Err(format!(
            "the rules directory {} does not exist: create it, give `--rules DIR`, or set `rules:` in the config",
            settings.rules_dir.display()
        )
        .into());
    }
    let redb = open_store(&settings.state_dir, opts.reset_state)?;
    use store::StateStore as _;
    let embedded = match settings.broker {
        Broker::Embedded(addr) => {
            let links = broker::start(addr, &ingest::filters(&settings.patterns))?;
            tracing::info!("embedded MQTT broker listening on {addr}");
            Some(links)
        }
        Broker::External(_) => None,
    };
    // A state dir keeps the shard count it was written with: devices map to shards by hash.
    let shards = match redb.shard_count()? {
        Some(n) if n != settings.shards => {
            tracing::info!(
                "the state in {} was written by {n} shards; running {n} shards (not {})",
                settings.state_dir.display(),
                settings.shards
            );
            n
        }
        Some(n) => n,
        None => {
            redb.set_shard_count(settings.shards)?;
            settings.shards
        }
    };
    // Every shard's saved state is read and decoded now: one that cannot be read stops the
    // start (exit 2) instead of starting that shard empty and overwriting it.
    let saved: Vec<_> = redb
        .check_all(shards, shard::decode_snapshot)?
        .into_iter()
        .map(Option::flatten)
        .collect();
    let store: Arc<dyn store::StateStore> = Arc::new(redb);
    let mut reloader = reload::Reloader::new(
        &settings.rules_dir,
        settings.config_given.then(|| settings.config.clone()),
    );
    let (rules, report) = reloader.load();
    for e in &report.errors {
        if report.has_errors {
            tracing::error!("{e}");
        } else {
            tracing::warn!("{e}");
        }
    }
    // At start there is no last good version to fall back on: refuse, as a reload would.
    let rules = match rules {
        Some(r) if !report.has_errors => r,
        _ => {
            return Err(Fatal {
                code: 1,
                message: format!(
                    "the rules in {} have errors (above); fix them (`rulechain validate {}{}` shows them) and start again",
                    settings.rules_dir.display(),
                    // Under a config (its channels, its command topic) they are checked against it.
                    settings
                        .config_path
                        .as_ref()
                        .map_or_else(String::new, |c| format!("--config {} ", c.display())),
                    settings.rules_dir.display()
                ),
            });
        }
    };
    tracing::info!(
        chains = ?rules.chains.iter().map(|c| c.name.to_string()).collect::<Vec<_>>(),
        dir = %settings.rules_dir.display(),
        "rules loaded"
    );
    let devices = match &settings.devices {
        Some(p) => {
            let mut d = Diagnostics::new();
            let devices = crate::rules::load_devices(p, &mut d);
            if d.has_errors() {
                return Err(Fatal {
                    code: 1,
                    message: format!("the devices file has errors:\n{}", d.render_text()),
                });
            }
            devices.unwrap_or_default()
        }
        None => Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads(shards))
        .enable_all()
        .thread_name("rulechain-io")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let state = SavedState {
        store,
        shards,
        snapshots: saved,
    };
    rt.block_on(serve::serve(
        settings, opts, state, reloader, rules, devices, embedded,
    ))
    .map_err(Fatal::from)
}

/// The state store, opened and read at start.
struct SavedState {
    store: Arc<dyn store::StateStore>,
    /// How many shards the state was written by (the engine runs that many).
    shards: usize,
    /// Each shard's decoded snapshot.
    snapshots: Vec<Option<crate::engine::persist::Snapshot>>,
}

/// Raises the soft open-files limit to the hard one (a process starts with 1,024 on most
/// systems, too few for thousands of WebSocket clients) and returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
        l.rlim_cur
    }
}

/// File descriptors kept back from HTTP and WebSocket clients: broker connections, the state
/// file, the rules watcher, sink connections.
const FD_RESERVE: u64 = 256;

/// How the open-files limit is shared: HTTP connections get at most half of what the reserve
/// leaves, WebSocket clients the rest. Either is lowered from its setting only when the limit
/// cannot hold it (logged), so a flood of connections meets a clear refusal (503, or close
/// 1013) instead of "Too many open files" on the engine's own broker connection.
struct FdBudget {
    http: usize,
    websocket: usize,
}

impl FdBudget {
    fn new(http: usize, websocket: usize) -> FdBudget {
        let limit = raise_fd_limit();
        let usable = limit.saturating_sub(FD_RESERVE).max(32);
        // Never above the setting; never below 16 for the limit's sake.
        let http_cap = (http as u64).min((usable / 2).max(16));
        let ws_cap = (websocket as u64).min(usable.saturating_sub(http_cap).max(16));
        let b = FdBudget {
            http: http_cap as usize,
            websocket: ws_cap as usize,
        };
        if b.http < http || b.websocket < websocket {
            tracing::info!(
                open_files_limit = limit,
                http_max_connections = b.http,
                websocket_max_clients = b.websocket,
                "connection limits lowered to fit the open-files limit (raise `ulimit -n` for more)"
            );
        }
        b
    }
}

/// Watches the rules directory; changes (debounced 300 ms) ask for a reload.
fn watch_rules(
    dir: &std::path::Path,
    tx: mpsc::Sender<http::ReloadReq>,
) -> Option<
    notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
> {
    use notify::RecursiveMode;
    let mut d = notify_debouncer_full::new_debouncer(
        Duration::from_millis(300),
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            if res.is_ok_and(|evs| evs.iter().any(|e| !e.kind.is_access())) {
                // A full queue already holds a reload request: that one will see this change.
                let _ = tx.try_send(http::ReloadReq { reply: None });
            }
        },
    )
    .map_err(|e| {
        tracing::warn!(
            "cannot watch the rules directory ({e}); reload with SIGHUP or POST /api/reload"
        )
    })
    .ok()?;
    if let Err(e) = d.watch(dir, RecursiveMode::Recursive) {
        tracing::warn!(
            "cannot watch {} ({e}); reload with SIGHUP or POST /api/reload",
            dir.display()
        );
        return None;
    }
    Some(d)
}

/// Waits for SIGINT or SIGTERM; SIGHUP asks for a reload meanwhile.
async fn wait_for_signal(reload: mpsc::Sender<http::ReloadReq>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the rules");
                    let _ = reload.try_send(http::ReloadReq { reply: None });
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A log line every 10 s while messages flow: rate, totals, alarms.
async fn progress(stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let n = stats.processed.load(Relaxed);
        if n != last {
            tracing::info!(
                processed = n,
                per_sec = (n - last) / 10,
                rpc_sent = stats.rpc_sent.load(Relaxed),
                alarm_events = stats.alarm_events.load(Relaxed),
                node_errors = stats.node_errors.load(Relaxed),
                "flowing"
            );
            last = n;
        }
    }
}
