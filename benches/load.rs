//! The load tool: publishes telemetry at set rates through a Mosquitto broker of its own and
//! measures, side by side in one run,
//!
//! - **mosquitto alone**: publisher → Mosquitto → subscriber (what the broker can deliver), and
//! - **through rulechain**: publisher → Mosquitto → `rulechain run` (a filter on an attribute and
//!   an `rpc` node) → Mosquitto → subscriber on the command topics,
//!
//! reporting messages/s received, the engine's processed count, p50/p99/max latency (publish →
//! delivery, publish → RPC command) and CPU % of the engine and the broker (of one core).
//!
//! `cargo bench --bench load` (builds the release binary first: `cargo build --release`).
//! Options: `-- --rates 5000,20000,flood --seconds 5 --qos 0 --devices 100 --shards 2
//! --rounds 1 --engines A,B` (several engine binaries, measured in turn in each round: before
//! and after a change, side by side in one run). `--shadow`: each engine is also measured with
//! a shadow running (a candidate of the same chain with another threshold that every message
//! still passes: both rule sets do the same work, and the shadow pairs every effect).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{AsyncClient, QoS};

struct Opts {
    rates: Vec<Option<u64>>,
    seconds: u64,
    qos: u8,
    devices: usize,
    shards: usize,
    /// Engine binaries to compare (default: this tree's release build).
    engines: Vec<PathBuf>,
    /// The engine's chain only filters (nothing goes out): measures what it takes in.
    ingest_only: bool,
    /// Rounds: each round measures Mosquitto alone and then every engine, at every rate.
    rounds: usize,
    /// Also measure each engine with a shadow running.
    shadow: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        rates: vec![Some(5_000), Some(20_000), None],
        seconds: 5,
        qos: 0,
        devices: 100,
        shards: 2,
        engines: Vec::new(),
        rounds: 1,
        ingest_only: false,
        shadow: false,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--rates" => {
                o.rates = v
                    .split(',')
                    .map(|r| if r == "flood" { None } else { r.parse().ok() })
                    .collect();
                i += 1;
            }
            "--seconds" => {
                o.seconds = v.parse().unwrap_or(5);
                i += 1;
            }
            "--qos" => {
                o.qos = v.parse().unwrap_or(0);
                i += 1;
            }
            "--devices" => {
                o.devices = v.parse().unwrap_or(100);
                i += 1;
            }
            "--engines" => {
                o.engines = v.split(',').map(PathBuf::from).collect();
                i += 1;
            }
            "--shadow" => o.shadow = true,
            "--ingest-only" => {
                o.ingest_only = true;
            }
            "--rounds" => {
                o.rounds = v.parse().unwrap_or(1);
                i += 1;
            }
            "--shards" => {
                o.shards = v.parse().unwrap_or(2);
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    o
}

struct Result {
    sent: u64,
    received: u64,
    /// Publishing time.
    secs: f64,
    /// Publishing plus the wait for the last deliveries: what CPU time is divided by.
    total_secs: f64,
    /// When publishing began.
    start: Instant,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Publishes at `rate` (None: as fast as the client goes) for `seconds`, then waits for the
/// stragglers; counts what `recv` got.
async fn drive(
    pubc: &AsyncClient,
    rate: Option<u64>,
    seconds: u64,
    devices: usize,
    qos: QoS,
    recv: &Recv,
) -> Result {
    recv.count.store(0, Relaxed);
    recv.lat.lock().unwrap().clear();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut sent: u64 = 0;
    let topics: Vec<String> = (0..devices)
        .map(|i| format!("site/a/device/dev-{i}/telemetry"))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while Instant::now() < end {
        let due = match rate {
            Some(r) => (start.elapsed().as_secs_f64() * r as f64) as u64,
            None => sent + 200,
        };
        while sent < due {
            let t = &topics[(sent as usize) % devices];
            let body = format!(
                "{{\"current\":13.1,\"temperature\":61.5,\"t\":{}}}",
                now_us()
            );
            if pubc.publish(t.as_str(), qos, false, body).await.is_err() {
                break;
            }
            sent += 1;
        }
        if rate.is_some() {
            tick.tick().await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Stragglers: until nothing arrives for 1 s (at most 15 s).
    let (_, last_change) = until_quiet(|| recv.count.load(Relaxed), Duration::from_secs(15)).await;
    // CPU is divided by the time until the last delivery (the quiet second after it is idle).
    let total_secs = last_change.duration_since(start).as_secs_f64().max(secs);
    let (p50, p99, max) = percentiles(&mut recv.lat.lock().unwrap().clone());
    Result {
        sent,
        received: recv.count.load(Relaxed),
        secs,
        total_secs,
        start,
        p50,
        p99,
        max,
    }
}

fn report(label: &str, rate: Option<u64>, r: &Result, cpu: &[(&str, f64)], extra: &str) {
    let rate = rate.map_or("flood".to_string(), |r| r.to_string());
    let cpu: Vec<String> = cpu.iter().map(|(n, c)| format!("{n} {c:.0}%")).collect();
    println!(
        "{label:<18} rate {rate:>6}  sent {:>8.0}/s  received {:>8.0}/s ({:>5.1}%, all in {:.1} s)  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  CPU {}{extra}",
        r.sent as f64 / r.secs,
        r.received as f64 / r.secs,
        100.0 * r.received as f64 / r.sent.max(1) as f64,
        r.total_secs,
        r.p50,
        r.p99,
        r.max,
        cpu.join(", ")
    );
}

fn status_processed(http: u16) -> u64 {
    api_status(http)["counters"]["processed"]
        .as_u64()
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a load test has no place in the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: a benchmark; run it with `cargo bench --bench load`");
        return;
    }
    let o = opts();
    let engines = engine_bins(&o.engines);
    let dir = std::env::temp_dir().join(format!("rulechain-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let port = free_port();
    let mosq = start_mosquitto(&dir, port);
    let http = free_port();
    let devices: String = (0..o.devices)
        .map(|i| format!("  - {{id: dev-{i}, attributes: {{rated_current: 10.0}}}}\n"))
        .collect();
    std::fs::write(dir.join("devices.yaml"), format!("devices:\n{devices}")).unwrap();
    std::fs::write(
        dir.join("rules/overload.yaml"),
        if o.ingest_only {
            "chain: overload\non: { kind: telemetry }\nnodes:\n  - filter: msg.current > attr.rated_current * 100.0\n  - rpc: { method: setLoad, params: { percent: 80, t: msg.t }, qos: 0 }\n"
        } else {
            "chain: overload\non: { kind: telemetry }\nnodes:\n  - filter: msg.current > attr.rated_current * 1.2\n  - rpc: { method: setLoad, params: { percent: 80, t: msg.t }, qos: 0 }\n"
        },
    )
    .unwrap();
    // The shadow's candidate: the same chain at 1.25 (13.1 A on a 10 A motor still passes).
    std::fs::create_dir_all(dir.join("shadow")).unwrap();
    let chain = std::fs::read_to_string(dir.join("rules/overload.yaml")).unwrap();
    std::fs::write(
        dir.join("shadow/overload.yaml"),
        chain.replace("* 1.2\n", "* 1.25\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "mqtt: {{url: mqtt://127.0.0.1:{port}, client_id: rc-load, qos: {}, persistent_session: false}}\n\
             http: {{listen: 127.0.0.1:{http}}}\nrules: rules\ndevices: devices.yaml\nstate_dir: state\n\
             engine: {{shards: {}}}\n",
            o.qos, o.shards
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let qos = if o.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let tck = 100.0; // USER_HZ on Linux
    println!(
        "load: {} devices, {} shards, {} s per step, QoS {}, {} round(s), Mosquitto on :{port}; machine: {} CPUs",
        o.devices,
        o.shards,
        o.seconds,
        o.qos,
        o.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    rt.block_on(async {
        let direct = Arc::new(Recv::default());
        let rpc = Arc::new(Recv::default());
        let pubc = client(port, "load-pub", &[], None).await;
        for round in 0..o.rounds {
            {
                let direct_sub = client(
                    port,
                    "load-sub-direct",
                    &["site/a/device/+/telemetry".into()],
                    Some(direct.clone()),
                )
                .await;
                for rate in &o.rates {
                    let m0 = cpu_ticks(mosq.0.id());
                    let r = drive(&pubc, *rate, o.seconds, o.devices, qos, &direct).await;
                    let m1 = cpu_ticks(mosq.0.id());
                    report(
                        "mosquitto alone",
                        *rate,
                        &r,
                        &[("mosquitto", (m1 - m0) as f64 / tck / r.total_secs * 100.0)],
                        "",
                    );
                }
                let _ = direct_sub.disconnect().await;
            }
            let variants: Vec<(usize, bool)> = engines
                .iter()
                .enumerate()
                .flat_map(|(ei, _)| {
                    std::iter::once((ei, false)).chain(o.shadow.then_some((ei, true)))
                })
                .collect();
            for (ei, shadow) in variants {
                let bin = &engines[ei];
                let _ = std::fs::remove_dir_all(dir.join("state"));
                let engine = start_engine(bin, &dir, "warn", http);
                if shadow {
                    let body = format!(r#"{{"dir": "{}"}}"#, dir.join("shadow").display());
                    let code = http_post_json(http, "/api/shadow", &body);
                    assert_eq!(code, 201, "the shadow did not start");
                }
                let rpc_sub = client(
                    port,
                    "load-sub-rpc",
                    &["site/a/device/+/command".into()],
                    Some(rpc.clone()),
                )
                .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let label = format!("rulechain #{ei}{}", if shadow { " +shadow" } else { "" });
                for rate in &o.rates {
                    let p0 = status_processed(http);
                    let (m0, e0) = (cpu_ticks(mosq.0.id()), cpu_ticks(engine.0.id()));
                    let mut r = drive(&pubc, *rate, o.seconds, o.devices, qos, &rpc).await;
                    let mut processed = status_processed(http) - p0;
                    if o.ingest_only {
                        // Nothing comes out: wait until the processed count stops moving.
                        let (n, last_change) =
                            until_quiet(|| status_processed(http) - p0, Duration::MAX).await;
                        processed = n;
                        r.total_secs = last_change
                            .duration_since(r.start)
                            .as_secs_f64()
                            .max(r.secs);
                        r.received = processed;
                    }
                    let (m1, e1) = (cpu_ticks(mosq.0.id()), cpu_ticks(engine.0.id()));
                    report(
                        &label,
                        *rate,
                        &r,
                        &[
                            ("rulechain", (e1 - e0) as f64 / tck / r.total_secs * 100.0),
                            ("mosquitto", (m1 - m0) as f64 / tck / r.total_secs * 100.0),
                        ],
                        &format!("  processed {processed}"),
                    );
                }
                if shadow {
                    let v: serde_json::Value =
                        serde_json::from_str(&http_get(http, "/api/shadow")).unwrap_or_default();
                    println!(
                        "{label}: the shadow saw {} messages; the same as the live rules: {}",
                        v["messages"], v["equal"]
                    );
                }
                let rss = peak_rss_kib(engine.0.id());
                if round + 1 == o.rounds {
                    println!("{label} = {}: peak RSS {rss} KiB", bin.display());
                }
                let _ = rpc_sub.disconnect().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    drop(mosq);
    let _ = std::fs::remove_dir_all(&dir);
}
