//! In-process throughput of the rule core: JSON payload → message → chain → effects, on one
//! core, with no I/O. Run: `cargo bench --bench chain`.
//!
//! - `parse_and_two_exprs`: JSON parse, a filter and a transform: the reference cost (~1 µs).
//! - `five_nodes_two_exprs`: the goal's chain (filter and transform in Rhai, then influx,
//!   websocket, deadband); every message runs all five nodes.
//! - `motor_overload`: the example chain (hold, alarm, notify, rpc with cooldown) on 100 pumps
//!   whose current crosses the limit now and then.
//! - `one_filter`, `anomaly`, `sliding_window`: one node on its own, each per message, on
//!   10,000 devices at 10 msg/s each (the anomaly node's and the sliding window's cost is the
//!   difference from `one_filter`).
//! - Before the timed benches, the memory a sliding window (60 s every 10 s, avg, p95, stddev and
//!   a count of the current) keeps for 10,000 devices at 10 msg/s: the process's resident
//!   memory before and after 70 s of their messages.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use rulechain::diag::Diagnostics;
use rulechain::engine::effect::{Effect, EffectSink};
use rulechain::engine::program::RuleSet;
use rulechain::engine::{Device, Executor};
use rulechain::message::Kind;
use rulechain::message::{parse_payload, Message};
use rulechain::rules::compile::{compile, ChainDoc, CompileOptions};

const FIVE_NODES: &str = r#"
chain: five
nodes:
  - filter: msg.current > attr.rated_current * 0.1
  - transform:
      load_pct: msg.current / attr.rated_current * 100.0
  - influx: { tags: [device] }
  - websocket: {}
  - deadband: { field: current, delta: 0.5 }
"#;

const PARSE_TWO_EXPRS: &str = r#"
chain: two
nodes:
  - filter: msg.current > attr.rated_current * 0.1
  - transform:
      load_pct: msg.current / attr.rated_current * 100.0
"#;

/// Counts effects, keeps none (a recorder would measure memory growth, not the engine).
#[derive(Default)]
struct Count(u64);
impl EffectSink for Count {
    fn emit(&mut self, _: Effect) {
        self.0 += 1;
    }
}

fn rules(text: &str) -> Arc<RuleSet> {
    let mut d = Diagnostics::new();
    let (src, root) =
        rulechain::rules::parse_text(Path::new("bench.yaml"), text.to_string(), &mut d).unwrap();
    let set = compile(
        &[ChainDoc { src, root }],
        &CompileOptions { config: None },
        &mut d,
    );
    assert!(!d.has_errors(), "{}", d.render_text());
    Arc::new(set)
}

fn devices(n: usize) -> HashMap<Arc<str>, Device> {
    (0..n)
        .map(|i| {
            let mut attrs = rhai::Map::new();
            attrs.insert("rated_current".into(), 10.0_f64.into());
            (
                Arc::from(format!("pump-{i}")),
                Device::new(Some("pump".into()), attrs),
            )
        })
        .collect()
}

/// Payloads as they arrive on the wire.
fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let current = if i % 97 < 60 {
                9.0 + (i % 7) as f64 * 0.3
            } else {
                12.5 + (i % 5) as f64 * 0.2
            };
            format!("{{\"current\":{current},\"voltage\":230.1,\"temperature\":61.5}}").into_bytes()
        })
        .collect()
}

const ONE_FILTER: &str = r#"
chain: one
nodes:
  - filter: msg.current > 0.0
"#;

const ANOMALY: &str = r#"
chain: anomaly
nodes:
  - anomaly: { field: current, threshold: 4, half_life: 1h, warmup: 30 }
"#;

const SLIDING: &str = r#"
chain: sliding
nodes:
  - aggregate:
      window: 1m
      every: 10s
      fields: { c_avg: avg(current), c_p95: p95(current), c_sd: stddev(current), n: count() }
  - websocket: {}
"#;

fn run(c: &mut Criterion, name: &str, text: &str) {
    run_on(c, name, text, 100, 100_000);
}

/// Runs `text` on `devices` devices, the clock moving `step_us` µs a message.
fn run_on(c: &mut Criterion, name: &str, text: &str, devices_n: usize, step_us: i64) {
    const BATCH: usize = 10_000;
    let set = rules(text);
    let names: Vec<Arc<str>> = (0..devices_n)
        .map(|i| Arc::from(format!("pump-{i}")))
        .collect();
    let wire = payloads(BATCH);
    let mut exec = Executor::new(set, devices(devices_n), 0);
    let mut sink = Count::default();
    let mut us = 0i64;
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            for (i, bytes) in wire.iter().enumerate() {
                us += step_us;
                let ts = us / 1000;
                let payload = parse_payload(bytes).expect("bench payloads are objects");
                let m = Message {
                    device: names[i % devices_n].clone(),
                    kind: Kind::Telemetry,
                    topic: None,
                    ts,
                    captures: Vec::new(),
                    payload,
                };
                exec.advance_to(ts, &mut sink);
                exec.process(m, &mut sink);
            }
        })
    });
    g.finish();
}

/// The resident memory of this process (bytes), from `/proc/self/statm`.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// What a sliding window keeps: 10,000 devices at 10 msg/s for 70 s of engine time.
fn sliding_memory() {
    const DEVICES: usize = 10_000;
    let set = rules(SLIDING);
    let names: Vec<Arc<str>> = (0..DEVICES)
        .map(|i| Arc::from(format!("pump-{i}")))
        .collect();
    let wire = payloads(1000);
    let mut exec = Executor::new(set, devices(DEVICES), 0);
    let mut sink = Count::default();
    let before = rss();
    let started = std::time::Instant::now();
    // 10 msg/s per device: every 100 ms each device sends once.
    let mut n = 0u64;
    for tick in 0..700i64 {
        let ts = tick * 100;
        exec.advance_to(ts, &mut sink);
        for (i, name) in names.iter().enumerate() {
            let payload = parse_payload(&wire[(i + tick as usize) % wire.len()]).expect("object");
            exec.process(
                Message {
                    device: name.clone(),
                    kind: Kind::Telemetry,
                    topic: None,
                    ts,
                    captures: Vec::new(),
                    payload,
                },
                &mut sink,
            );
            n += 1;
        }
    }
    let took = started.elapsed();
    let after = rss();
    println!(
        "sliding window memory: {DEVICES} devices, {n} messages in {:.1} s ({:.0} msg/s); resident {:.1} MiB before, {:.1} MiB after: {:.1} KiB per device; {} windows emitted",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / 1024.0 / DEVICES as f64,
        sink.0
    );
}

fn benches(c: &mut Criterion) {
    // First, while the allocator holds nothing freed that it could hand out again.
    sliding_memory();
    run(c, "parse_and_two_exprs", PARSE_TWO_EXPRS);
    run(c, "five_nodes_two_exprs", FIVE_NODES);
    let motor = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/motor-overload.yaml"),
    )
    .unwrap();
    run(c, "motor_overload", &motor);
    // 10,000 devices at 10 msg/s: 100,000 msg/s, 10 µs of engine time a message.
    run_on(c, "one_filter", ONE_FILTER, 10_000, 10);
    run_on(c, "anomaly", ANOMALY, 10_000, 10);
    run_on(c, "sliding_window", SLIDING, 10_000, 10);
}

criterion_group! {
    name = chain;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = benches
}
criterion_main!(chain);
