//! The sinks' load tool. Two parts, each against real servers on loopback:
//!
//! - **influx**: the InfluxDB writer (the engine's own, in this process) sends pre-built points
//!   as fast as it can to a VictoriaMetrics of its own, gzip on and off side by side; reports
//!   points/s (until the server has acknowledged every point), CPU % of the writer and of the
//!   server, and checks the server holds every point.
//! - **websocket**: `rulechain run` (release binary) behind a Mosquitto of its own, with
//!   `--clients` WebSocket clients each subscribed to one device room, telemetry published at
//!   `--rate` msg/s over as many devices; reports delivery and publish → client latency, then
//!   `--alarm-clients` clients on `alarms` while `--alarms` devices raise and clear an alarm:
//!   every one of those clients must receive every transition, in sequence.
//!
//! `cargo build --release && cargo bench --bench sinks -- [influx] [websocket]
//! [--points 2000000] [--clients 10000] [--rate 20000] [--seconds 10] [--alarm-clients 1000]
//! [--alarms 200] [--engines A,B --rounds N]` (`--engines`: several engine binaries measured in
//! turn in each round, before and after a change side by side in one run).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::QoS;
use serde_json::Value;

const TCK: f64 = 100.0; // USER_HZ

struct Opts {
    influx: bool,
    websocket: bool,
    points: usize,
    clients: usize,
    rate: u64,
    seconds: u64,
    alarm_clients: usize,
    alarms: usize,
    engines: Vec<PathBuf>,
    rounds: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        influx: false,
        websocket: false,
        points: 2_000_000,
        clients: 10_000,
        rate: 20_000,
        seconds: 10,
        alarm_clients: 1_000,
        alarms: 200,
        engines: Vec::new(),
        rounds: 1,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = || {
            args.get(i + 1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match args[i].as_str() {
            "influx" => o.influx = true,
            "websocket" => o.websocket = true,
            "--points" => o.points = v() as usize,
            "--clients" => o.clients = v() as usize,
            "--rate" => o.rate = v(),
            "--seconds" => o.seconds = v(),
            "--alarm-clients" => o.alarm_clients = v() as usize,
            "--alarms" => o.alarms = v() as usize,
            "--rounds" => o.rounds = v().max(1) as usize,
            "--engines" => {
                o.engines = args
                    .get(i + 1)
                    .map(|a| a.split(',').map(PathBuf::from).collect())
                    .unwrap_or_default()
            }
            _ => {}
        }
        if args[i].starts_with("--") && args[i] != "--bench" {
            i += 1;
        }
        i += 1;
    }
    if !o.influx && !o.websocket {
        o.influx = true;
        o.websocket = true;
    }
    o
}

fn influx(o: &Opts, dir: &Path) {
    use rulechain::config::settings::InfluxSettings;
    use rulechain::sinks::influx::InfluxStats;
    let devices = 1000usize;
    let now_ms = (now_us() / 1000) as i64;
    // Every series gets distinct millisecond timestamps, so the server keeps every point.
    let build = |round: usize| -> Vec<Vec<rulechain::lineproto::Point>> {
        let base_ms = now_ms - 3_600_000 + round as i64 * 600_000;
        let mut chunks = Vec::new();
        let mut chunk = Vec::with_capacity(256);
        for i in 0..o.points {
            let ts = (base_ms + (i / devices) as i64) * 1_000_000;
            chunk.push(rulechain::lineproto::Point::new(
                format!(
                    "telemetry,device=dev-{},site=a current={},temperature=61.5,vibration=0.42 {ts}",
                    i % devices,
                    13.0 + (i % 97) as f64 / 10.0
                ),
                ts,
            ));
            if chunk.len() == 256 {
                chunks.push(std::mem::replace(&mut chunk, Vec::with_capacity(256)));
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        chunks
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "influx: {} points per run ({devices} series, 3 fields a point), batch 5000, one writer; gzip on and off, twice each",
        o.points
    );
    for (round, gzip) in [true, false, true, false].into_iter().enumerate() {
        let (vm, port) = start_victoria(&dir.join(format!("round-{round}")));
        let spec = rulechain::config::InfluxSpec {
            url: rulechain::yaml::Sp::unplaced(format!("http://127.0.0.1:{port}")),
            // The whole run fits: the tool measures the writer's pace, not its drop policy.
            buffer_points: Some(rulechain::yaml::Sp::unplaced(o.points.max(5000))),
            gzip: Some(gzip),
            ..Default::default()
        };
        let settings = InfluxSettings::from_spec(&spec, dir).unwrap();
        let chunks = build(round);
        let stats = Arc::new(InfluxStats::default());
        let (me, vm_pid) = (std::process::id(), vm.0.id());
        let (c0, v0) = (cpu_ticks(me), cpu_ticks(vm_pid));
        let start = Instant::now();
        rt.block_on(async {
            let (h, task) = rulechain::sinks::influx::start(settings, stats.clone()).unwrap();
            for c in chunks {
                h.send_wait(c).await;
            }
            drop(h);
            let _ = task.await;
        });
        let secs = start.elapsed().as_secs_f64();
        let (c1, v1) = (cpu_ticks(me), cpu_ticks(vm_pid));
        let written = stats.written.load(Relaxed);
        http_get(port, "/internal/force_flush");
        std::thread::sleep(Duration::from_secs(1));
        let q = http_get(
            port,
            "/api/v1/query?query=sum(count_over_time(telemetry_current%5B2h%5D))",
        );
        let stored = serde_json::from_str::<Value>(&q)
            .ok()
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        println!(
            "influx gzip {:<5}  {:>9.0} points/s  written {written}/{}  stored {stored}  dropped {}  retries {}  requests {}  CPU writer {:.0}%, victoria-metrics {:.0}%",
            gzip,
            written as f64 / secs,
            o.points,
            stats.dropped.load(Relaxed),
            stats.retries.load(Relaxed),
            stats.requests.load(Relaxed),
            (c1 - c0) as f64 / TCK / secs * 100.0,
            (v1 - v0) as f64 / TCK / secs * 100.0,
        );
        drop(vm);
    }
    println!(
        "influx: peak RSS of this process {} KiB",
        peak_rss_kib(std::process::id())
    );
}

fn websocket(o: &Opts, dir: &Path, bin: &Path, label: &str) {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let mqtt = free_port();
    let mosq = start_mosquitto(dir, mqtt);
    let http = free_port();
    std::fs::write(
        dir.join("rules/live.yaml"),
        "chain: live\nnodes:\n  - websocket: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rules/over.yaml"),
        "chain: over\nnodes:\n  - filter: msg.current > 100.0\n    else: clear\n  - alarm: { type: Over, severity: MAJOR }\n    next: []\n  - id: clear\n    alarm: { type: Over, action: clear }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "mqtt: {{url: mqtt://127.0.0.1:{mqtt}, client_id: rc-ws, qos: 0, persistent_session: false}}\n\
             http: {{listen: 127.0.0.1:{http}}}\nrules: rules\nstate_dir: state\n\
             websocket: {{max_clients: {}}}\n",
            o.clients + o.alarm_clients + 100
        ),
    )
    .unwrap();
    // Alarm transitions log at WARN: hundreds here.
    let engine = start_engine(bin, dir, "error", http);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let recv = Arc::new(WsRecv::default());
        let t0 = Instant::now();
        let rooms: Vec<String> = (0..o.clients).map(|i| format!("device/dev-{i}")).collect();
        let tasks = connect_all(http, rooms, &recv, &[]).await;
        println!(
            "{label} websocket: {} of {} clients connected and subscribed in {:.1} s",
            recv.connected.load(Relaxed),
            o.clients,
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pubc = client(mqtt, "ws-load-pub", &[], None).await;
        let devices = o.clients.max(1);
        let topics: Vec<String> = (0..devices).map(|i| format!("device/dev-{i}/telemetry")).collect();
        let (e0, m0, b0) = (cpu_ticks(engine.0.id()), cpu_ticks(mosq.0.id()), cpu_ticks(std::process::id()));
        let start = Instant::now();
        let end = start + Duration::from_secs(o.seconds);
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < end {
            let due = (start.elapsed().as_secs_f64() * o.rate as f64) as u64;
            while sent < due {
                let t = &topics[(sent as usize) % devices];
                let body = format!("{{\"current\":13.1,\"t\":{}}}", now_us());
                if pubc.publish(t.as_str(), QoS::AtMostOnce, false, body).await.is_err() {
                    break;
                }
                sent += 1;
            }
            tick.tick().await;
        }
        let secs = start.elapsed().as_secs_f64();
        let (_, quiet) = until_quiet(|| recv.frames.load(Relaxed), Duration::MAX).await;
        let total = quiet.duration_since(start).as_secs_f64().max(secs);
        let (e1, m1, b1) = (cpu_ticks(engine.0.id()), cpu_ticks(mosq.0.id()), cpu_ticks(std::process::id()));
        let (p50, p99, max) = percentiles(&mut recv.lat.lock().unwrap());
        let got = recv.frames.load(Relaxed);
        println!(
            "{label} websocket: {} clients, one device room each: sent {:.0} msg/s, delivered {got} of {sent} ({:.2}%), lagged notices {}, publish → client p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms  CPU rulechain {:.0}%, mosquitto {:.0}%, load tool {:.0}%",
            o.clients,
            sent as f64 / secs,
            100.0 * got as f64 / sent.max(1) as f64,
            recv.lagged.load(Relaxed),
            (e1 - e0) as f64 / TCK / total * 100.0,
            (m1 - m0) as f64 / TCK / total * 100.0,
            (b1 - b0) as f64 / TCK / total * 100.0,
        );
        println!("{label} websocket: rulechain peak RSS {} KiB", peak_rss_kib(engine.0.id()));

        // Alarms: every client on `alarms` gets every transition, in order.
        let arecv = Arc::new(WsRecv::default());
        let seqs: Vec<Arc<Mutex<Vec<u64>>>> = (0..o.alarm_clients).map(|_| Arc::default()).collect();
        let atasks = connect_all(http, vec!["alarms".to_string(); o.alarm_clients], &arecv, &seqs).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let e0 = cpu_ticks(engine.0.id());
        let astart = Instant::now();
        for (i, t) in topics.iter().take(o.alarms).enumerate() {
            let _ = pubc.publish(t.as_str(), QoS::AtMostOnce, false, format!("{{\"current\":150.0,\"t\":{}}}", now_us())).await;
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for t in topics.iter().take(o.alarms) {
            let _ = pubc.publish(t.as_str(), QoS::AtMostOnce, false, format!("{{\"current\":10.0,\"t\":{}}}", now_us())).await;
        }
        let want = 2 * o.alarms as u64 * arecv.connected.load(Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while arecv.frames.load(Relaxed) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = astart.elapsed().as_secs_f64();
        let e1 = cpu_ticks(engine.0.id());
        let complete = seqs
            .iter()
            .filter(|s| {
                let s = s.lock().unwrap();
                s.len() == 2 * o.alarms && s.windows(2).all(|w| w[1] == w[0] + 1)
            })
            .count();
        println!(
            "{label} alarms: {} clients on `alarms`, {} transitions: {complete} clients got every one in sequence; {} of {want} frames in {took:.2} s; CPU rulechain {:.0}%",
            arecv.connected.load(Relaxed),
            2 * o.alarms,
            arecv.frames.load(Relaxed),
            (e1 - e0) as f64 / TCK / took * 100.0,
        );
        for t in tasks.into_iter().chain(atasks) {
            t.abort();
        }
    });
    drop(engine);
    drop(mosq);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sinks: a benchmark; run it with `cargo bench --bench sinks`");
        return;
    }
    let o = opts();
    let dir = std::env::temp_dir().join(format!("rulechain-sinks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "sinks load tool; machine: {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if o.influx {
        influx(&o, &dir.join("influx"));
    }
    if o.websocket {
        let engines = engine_bins(&o.engines);
        for round in 0..o.rounds {
            for (i, e) in engines.iter().enumerate() {
                let label = format!("[round {} engine #{i}]", round + 1);
                websocket(&o, &dir.join(format!("ws-{round}-{i}")), e, &label);
            }
        }
        for (i, e) in engines.iter().enumerate() {
            println!("engine #{i} = {}", e.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
