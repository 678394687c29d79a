//! The engine's counters ([`Stats`]: `/api/status`, `/metrics` and the periodic `flowing` log
//! line) and the limit on noisy log lines ([`RateLimit`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::counters::{Counters, Report};
use crate::engine::clock::wall_ms;
use crate::message::Reject;

/// The engine's counters (shown by `/api/status` and the periodic log line).
#[derive(Debug, Default)]
pub struct Stats {
    /// MQTT messages received.
    pub received: AtomicU64,
    /// Messages whose chains ran.
    pub processed: AtomicU64,
    /// Shard turns that took messages (a wake of a shard; `processed` ÷ this is the messages
    /// a wake ran).
    pub shard_turns: AtomicU64,
    /// Topics that matched no pattern.
    pub no_pattern: AtomicU64,
    /// Rejected payloads, by reason.
    pub rejected: [AtomicU64; 6],
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

const REJECTS: [Reject; 6] = [
    Reject::TooLarge,
    Reject::InvalidUtf8,
    Reject::TooDeep,
    Reject::NotJson,
    Reject::NotObject,
    Reject::BadSignature,
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
            "shard_turns",
            "shard turns that took messages (a shard's wakes)",
            g(&self.shard_turns),
        );
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

/// A log line every 10 s while messages flow: rate, totals, alarms.
pub(super) async fn progress(stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
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
