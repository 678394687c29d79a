//! In-process throughput of the rule core: JSON payload → message → chain → effects, on one
//! core, with no I/O. Run: `cargo bench --bench chain`.
//!
//! - `parse_and_two_exprs`: JSON parse, a filter and a transform: the reference cost (~1 µs).
//! - `five_nodes_two_exprs`: the goal's chain (filter and transform in Rhai, then influx,
//!   websocket, deadband); every message runs all five nodes.
//! - `motor_overload`: the example chain (hold, alarm, notify, rpc with cooldown) on 100 pumps
//!   whose current crosses the limit now and then.

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

fn run(c: &mut Criterion, name: &str, text: &str) {
    const BATCH: usize = 10_000;
    const DEVICES: usize = 100;
    let set = rules(text);
    let names: Vec<Arc<str>> = (0..DEVICES)
        .map(|i| Arc::from(format!("pump-{i}")))
        .collect();
    let wire = payloads(BATCH);
    let mut exec = Executor::new(set, devices(DEVICES), 0);
    let mut sink = Count::default();
    let mut ts = 0i64;
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            for (i, bytes) in wire.iter().enumerate() {
                ts += 100;
                let payload = parse_payload(bytes).expect("bench payloads are objects");
                let m = Message {
                    device: names[i % DEVICES].clone(),
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

fn benches(c: &mut Criterion) {
    run(c, "parse_and_two_exprs", PARSE_TWO_EXPRS);
    run(c, "five_nodes_two_exprs", FIVE_NODES);
    let motor = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/motor-overload.yaml"),
    )
    .unwrap();
    run(c, "motor_overload", &motor);
}

criterion_group! {
    name = chain;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = benches
}
criterion_main!(chain);
