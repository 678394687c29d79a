//! Cost as work grows: the rule core's throughput and memory at 1k, 10k and 100k devices, and at
//! 1, 10 and 100 chains, on one core with no I/O (JSON payload → message → chains → effects, as
//! in `benches/chain.rs`). Run: `cargo bench --bench scale`.
//!
//! Each chain is the comparison's five nodes (filter on an attribute, transform, influx,
//! websocket, deadband: the deadband keeps state per device). Two ways chains grow:
//! - `by type`: chain k runs for device type `type-k`, devices spread evenly over the types, so
//!   every message enters one chain and the rest are looked over. Cost per message should stay
//!   flat as chains are added.
//! - `all`: every chain runs for every message. Cost per message grows with the chains; the cost
//!   per chain run should stay flat.
//!
//! Every configuration runs in a child process of its own (three times; the fastest counts),
//! so each RSS is its own: first one
//! message from every device (state exists for all), then the timed messages round-robin over
//! the devices. Printed as a markdown table; nothing here asserts a time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rulechain::diag::Diagnostics;
use rulechain::engine::effect::{Effect, EffectSink};
use rulechain::engine::program::RuleSet;
use rulechain::engine::{Device, Executor};
use rulechain::message::Kind;
use rulechain::message::{parse_payload, Message};
use rulechain::rules::compile::{compile, ChainDoc, CompileOptions};

/// Counts effects, keeps none.
#[derive(Default)]
struct Count(u64);
impl EffectSink for Count {
    fn emit(&mut self, _: Effect) {
        self.0 += 1;
    }
}

fn chain_text(k: usize, on: &str) -> String {
    format!(
        r#"
chain: c{k}
on: {on}
nodes:
  - filter: msg.current > attr.rated_current * 0.1
  - transform:
      load_pct: msg.current / attr.rated_current * 100.0
  - influx: {{ tags: [device] }}
  - websocket: {{}}
  - deadband: {{ field: current, delta: 0.5 }}
"#
    )
}

fn rules(chains: usize, by_type: bool) -> Arc<RuleSet> {
    let mut d = Diagnostics::new();
    let docs: Vec<ChainDoc> = (0..chains)
        .map(|k| {
            let on = if by_type {
                format!("{{ device_type: type-{k} }}")
            } else {
                "{ kind: telemetry }".to_string()
            };
            let (src, root) = rulechain::rules::parse_text(
                Path::new(&format!("c{k}.yaml")),
                chain_text(k, &on),
                &mut d,
            )
            .expect("bench chains parse");
            ChainDoc { src, root }
        })
        .collect();
    let set = compile(&docs, &CompileOptions { config: None }, &mut d);
    assert!(!d.has_errors(), "{}", d.render_text());
    Arc::new(set)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One configuration, in this process: prints `msgs secs chain_runs rss_before rss_after`.
fn one(devices: usize, chains: usize, by_type: bool, messages: usize) {
    let before = rss_kib();
    let set = rules(chains, by_type);
    let names: Vec<Arc<str>> = (0..devices)
        .map(|i| Arc::from(format!("pump-{i}")))
        .collect();
    let registry: HashMap<Arc<str>, Device> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut attrs = rhai::Map::new();
            attrs.insert("rated_current".into(), 10.0_f64.into());
            let t = if by_type { i % chains } else { 0 };
            (
                n.clone(),
                Device::new(Some(format!("type-{t}").into()), attrs),
            )
        })
        .collect();
    let mut exec = Executor::new(set, registry, 0);
    let mut sink = Count::default();
    let wire: Vec<Vec<u8>> = (0..97)
        .map(|i| {
            let current = 9.0 + (i % 13) as f64 * 0.4;
            format!("{{\"current\":{current},\"voltage\":230.1,\"temperature\":61.5}}").into_bytes()
        })
        .collect();
    let mut ts = 0i64;
    let mut send = |exec: &mut Executor, sink: &mut Count, i: usize| {
        ts += 1;
        let payload = parse_payload(&wire[i % wire.len()]).expect("objects");
        let m = Message {
            device: names[i % devices].clone(),
            kind: Kind::Telemetry,
            topic: None,
            ts,
            captures: Vec::new(),
            payload,
        };
        exec.advance_to(ts, sink);
        exec.process(m, sink);
    };
    for i in 0..devices {
        send(&mut exec, &mut sink, i);
    }
    let t0 = Instant::now();
    for i in 0..messages {
        send(&mut exec, &mut sink, i);
    }
    let secs = t0.elapsed().as_secs_f64();
    let runs = if by_type { messages } else { messages * chains };
    println!("{messages} {secs} {runs} {before} {}", rss_kib());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        let n = |k: usize| args[i + k].parse::<usize>().expect("--one D C BY_TYPE N");
        one(n(1), n(2), n(3) == 1, n(4));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this too: one small configuration, as a check that
        // it still builds and runs.
        one(100, 2, true, 1_000);
        println!("scale: a benchmark; run it with `cargo bench --bench scale`");
        return;
    }
    let me = std::env::current_exe().expect("own path");
    // (devices, chains, by type)
    let configs = [
        (1_000, 1, true),
        (10_000, 1, true),
        (100_000, 1, true),
        (10_000, 10, true),
        (10_000, 100, true),
        (10_000, 10, false),
        (10_000, 100, false),
    ];
    println!("Rule core, one core, no I/O: five-node chains (filter, transform, influx, websocket, deadband).");
    println!();
    println!("| devices | chains | a message enters | msg/s | µs per message | µs per chain run | RSS | RSS per device |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (devices, chains, by_type) in configs {
        // About 1 s of work each, three times; the fastest run counts (the machine is shared).
        let messages = if by_type { 300_000 } else { 300_000 / chains };
        let mut best: Option<Vec<f64>> = None;
        for _ in 0..3 {
            let out = std::process::Command::new(&me)
                .args([
                    "--one",
                    &devices.to_string(),
                    &chains.to_string(),
                    if by_type { "1" } else { "0" },
                    &messages.to_string(),
                ])
                .output()
                .expect("run a configuration");
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<f64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() != 5 {
                eprintln!(
                    "configuration {devices}/{chains} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::process::exit(1);
            }
            if best.as_ref().is_none_or(|b| f[1] < b[1]) {
                best = Some(f);
            }
        }
        let f = best.expect("three runs");
        let (msgs, secs, runs, before, after) = (f[0], f[1], f[2], f[3], f[4]);
        let rss_mib = after / 1024.0;
        let per_device_kib = (after - before) / devices as f64;
        println!(
            "| {} | {chains} | {} | {:.0}k | {:.2} | {:.2} | {:.0} MiB | {:.2} KiB |",
            devices,
            if by_type {
                "one (by device type)"
            } else {
                "every chain"
            },
            msgs / secs / 1000.0,
            secs * 1e6 / msgs,
            secs * 1e6 / runs,
            rss_mib,
            per_device_kib,
        );
    }
}
