//! Health for orchestrators, the status page's JSON, and the Prometheus metrics.
//!
//! - `/livez`: the process answers (200 while the HTTP server runs).
//! - `/readyz`: ready for traffic: subscribed at the broker, rules loaded, every shard's state
//!   writable; 503 and the failing parts otherwise.
//! - `/healthz`: as before `/readyz` existed: subscribed and writable (200/503), plus the
//!   count of held effects. Kept for the scripts and checks that use it.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::Api;
use crate::counters::prometheus::PromReport;
use crate::counters::{Counters, Report};
use crate::engine::effect::Outcome;
use crate::engine::stats::{totals, ChainTotals};

pub(super) async fn livez() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    let subscribed = api.stats.connected.load(Relaxed);
    let writable = api.stats.store_failing.load(Relaxed) == 0;
    let generation = api
        .reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .generation;
    let loaded = generation > 0;
    let mut reasons = Vec::new();
    match &api.cluster {
        // A cluster member needs Redis and a place in the cluster; only the ingest holder reads
        // the broker.
        Some(c) => reasons.extend(c.not_ready(subscribed)),
        None if !subscribed => reasons.push("not subscribed at the MQTT broker".to_string()),
        None => {}
    }
    if !loaded {
        reasons.push("no rules loaded yet".into());
    }
    if !writable {
        reasons.push("a shard cannot write its state (its alarm transitions are held)".into());
    }
    let ready = reasons.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "ready": ready,
            "reasons": reasons,
            "mqtt_subscribed": subscribed,
            "rules_loaded": loaded,
            "rules_generation": generation,
            "state_writable": writable,
        })),
    )
}

/// `GET /api/cluster`: the instances alive, each partition's owner and epoch, the ingest
/// holder, lease ages, and each partition's backlog (asked of Redis now). 404 without
/// `cluster:`.
pub(super) async fn cluster(State(api): State<Api>) -> Result<Json<Value>, super::ApiError> {
    let Some(c) = &api.cluster else {
        return Err(super::ApiError::not_found(
            "this engine is one process (no `cluster:` in its config)",
        ));
    };
    let s = c.status();
    let backlog = c.backlog().await;
    let partitions: Vec<Value> = s
        .owners
        .iter()
        .enumerate()
        .map(|(p, o)| {
            let b = backlog.as_ref().ok().and_then(|b| b.get(p));
            json!({
                "partition": p,
                "owner": o.as_ref().map(|h| &h.instance),
                "epoch": o.as_ref().map(|h| h.epoch),
                "lease_ms_left": o.as_ref().map(|h| h.lease_ms_left),
                "backlog": b.map(|b| b.entries),
                "backlog_more": b.map(|b| b.more),
                "backlog_oldest_ms": b.map(|b| b.oldest_ms),
            })
        })
        .collect();
    Ok(Json(json!({
        "instance": s.instance,
        "partitions": s.partitions,
        "lease_ms": s.lease_ms,
        "redis": {"ok": s.redis_ok, "error": s.redis_error},
        "instances": s.instances,
        "ingest": s.ingest,
        "owned": s.owned,
        "owners": partitions,
        "backlog_error": backlog.err(),
        "counters": crate::counters::to_json(&*c.stats),
    })))
}

/// 200 once ingest is subscribed at the broker and every shard can write its state; 503 while
/// either is not so (a shard that cannot write holds its alarm transitions: not ready).
pub(super) async fn healthz(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    let connected = api.stats.connected.load(Relaxed);
    let failing = api.stats.store_failing.load(Relaxed);
    // A cluster member is healthy once it reaches Redis and joined; only the ingest holder
    // needs the broker's subscription.
    let up = match &api.cluster {
        Some(c) => c.not_ready(connected).is_empty(),
        None => connected,
    };
    let code = if up && failing == 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "mqtt_connected": connected,
            "state_writable": failing == 0,
            "held_effects": api.stats.held_effects.load(Relaxed),
        })),
    )
}

pub(super) async fn status(State(api): State<Api>) -> Json<Value> {
    let reload = api.reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({
        "rules": reload,
        "shards": api.shards.len(),
        "counters": api.stats.to_json(),
        "influx": api.influx.as_ref().map(|i| i.to_json()),
        "websocket": api.hub.to_json(),
        "notify": api.notify.to_json(),
    }))
}

/// Every counter of the engine in Prometheus' text format (OpenMetrics).
pub(super) async fn metrics(State(api): State<Api>) -> Response {
    let mut r = PromReport::default();
    r.add("rulechain_engine_", &*api.stats);
    r.add("rulechain_", &Chains(totals(&api.rule_stats)));
    r.add("rulechain_", &Engine(&api));
    if let Some(i) = &api.influx {
        r.add("rulechain_influx_", &**i);
    }
    r.add("rulechain_websocket_", &*api.hub);
    r.add("rulechain_notify_", &api.notify);
    if let Some(c) = &api.cluster {
        r.add("rulechain_cluster_", &*c.stats);
    }
    r.add("rulechain_shadow_", &*api.shadow);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        r.render(),
    )
        .into_response()
}

/// The chains and their nodes, labelled `chain` and `node` (bounded by the rule files, never
/// by devices).
struct Chains(Vec<ChainTotals>);

struct ChainPart<'a>(&'a ChainTotals);

struct NodePart<'a>(&'a crate::engine::stats::NodeTotals);

impl Counters for Chains {
    fn report(&self, r: &mut dyn Report) {
        let parts: Vec<(&str, ChainPart)> = self
            .0
            .iter()
            .map(|c| (c.name.as_ref(), ChainPart(c)))
            .collect();
        r.parts("chains", "chain", &crate::counters::parts(&parts));
    }
}

impl Counters for ChainPart<'_> {
    fn report(&self, r: &mut dyn Report) {
        r.counter(
            "chain_messages",
            "messages that entered the chain",
            self.0.messages,
        );
        r.histogram(
            "chain_duration_seconds",
            "how long a message took through the chain",
            &self.0.duration,
        );
        let parts: Vec<(&str, NodePart)> = self
            .0
            .nodes
            .iter()
            .map(|n| (n.id.as_ref(), NodePart(n)))
            .collect();
        r.parts("nodes", "node", &crate::counters::parts(&parts));
    }
}

impl Counters for NodePart<'_> {
    fn report(&self, r: &mut dyn Report) {
        let values: Vec<(&str, u64)> = Outcome::ALL
            .iter()
            .map(|o| {
                (
                    o.as_str(),
                    self.0.outcomes.get(o.as_str()).copied().unwrap_or(0),
                )
            })
            .collect();
        r.counters_by(
            "node_messages",
            "messages a node ran on, by what it decided (pass, else, stop, held, suppressed, error)",
            "outcome",
            &values,
        );
    }
}

/// What belongs to no one component: shard queues, open alarms, reloads, the process.
struct Engine<'a>(&'a Api);

impl Counters for Engine<'_> {
    fn report(&self, r: &mut dyn Report) {
        let api = self.0;
        let depths: Vec<(String, u64)> = api
            .shards
            .depths()
            .into_iter()
            .enumerate()
            .map(|(i, depth)| (i.to_string(), depth as u64))
            .collect();
        let depths: Vec<(Vec<&str>, u64)> =
            depths.iter().map(|(i, d)| (vec![i.as_str()], *d)).collect();
        r.gauges_by(
            "shard_queue_depth",
            "messages waiting in each shard's queue",
            &["shard"],
            &depths,
        );
        let mut alarms: std::collections::BTreeMap<(&'static str, &'static str), u64> =
            Default::default();
        for a in api.alarms.open(None) {
            *alarms
                .entry((a.alarm.status.as_str(), a.alarm.severity.as_str()))
                .or_default() += 1;
        }
        let alarms: Vec<(Vec<&str>, u64)> = alarms
            .into_iter()
            .map(|((s, v), n)| (vec![s, v], n))
            .collect();
        r.gauges_by(
            "alarms",
            "open alarms (active, or cleared and not yet acknowledged), by status and severity",
            &["status", "severity"],
            &alarms,
        );
        let reload = api.reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
        r.counters_by(
            "rule_reloads",
            "reloads of the rules directory, by result (swapped: new rules in force; failed: errors found, the last good version of each file kept)",
            "result",
            &[("swapped", reload.reloads), ("failed", reload.failed)],
        );
        r.gauge(
            "rules_generation",
            "the generation of the rules in force (1: those loaded at start)",
            reload.generation,
        );
        r.gauge(
            "rules_chains",
            "chains in force",
            reload.chains.len() as u64,
        );
        r.gauge(
            "process_resident_memory_bytes",
            "resident memory of the process",
            rss_bytes(),
        );
        r.gauge(
            "process_uptime_seconds",
            "seconds since the engine started",
            api.started.elapsed().as_secs(),
        );
    }
}

/// The process's resident memory, from `/proc/self/statm` (0 where there is none).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}
