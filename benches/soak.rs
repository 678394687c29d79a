//! The soak run: does the engine stay flat over time? `rulechain run` (release binary) with the
//! example chains in `rules/`, a Mosquitto and a VictoriaMetrics of its own, notification
//! channels that log, and `--ws` WebSocket clients (one device room each) takes telemetry from
//! `--devices` pumps at `--rate` msg/s for `--minutes`. Pumps overload in turn (one in fifty
//! each minute), so holds, alarms, notifications and commands churn all along.
//!
//! Every `--sample` seconds it prints one line: elapsed time, the engine's RSS, the shard queue
//! depth (received − processed), messages in and processed, WebSocket frames and their
//! publish → client p99 over the interval, alarms, InfluxDB points written. At the end: RSS at
//! start and end and the memory slope (least squares over the samples after a warm-up of a
//! third of the run), in MiB a minute.
//!
//! With `--check`, it fails (exit 1) when the slope exceeds `--max-slope` MiB/min, when the
//! engine falls behind (a queue that ends more than one sample's worth of messages deep), or when
//! it sent nothing to the WebSocket clients: the short version in `scripts/test.sh` asserts that
//! memory does not grow, not how fast anything is.
//!
//! `cargo build --release && cargo bench --bench soak -- [--minutes 30] [--rate 10000]
//! [--devices 1000] [--ws 500] [--sample 30] [--check] [--max-slope 1]`

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::QoS;
use serde_json::Value;

struct Opts {
    minutes: f64,
    rate: u64,
    devices: usize,
    ws: usize,
    sample: u64,
    check: bool,
    max_slope: f64,
}

fn opts() -> Opts {
    let mut o = Opts {
        minutes: 30.0,
        rate: 10_000,
        devices: 1_000,
        ws: 500,
        sample: 30,
        check: false,
        max_slope: 1.0,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let flag = args[i].as_str();
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let num = || -> f64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number, not `{v}`"))
        };
        match flag {
            "--minutes" => o.minutes = num(),
            "--rate" => o.rate = num() as u64,
            "--devices" => o.devices = num() as usize,
            "--ws" => o.ws = num() as usize,
            "--sample" => o.sample = (num() as u64).max(1),
            "--max-slope" => o.max_slope = num(),
            "--check" => {
                o.check = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 1;
        i += 1;
    }
    o.ws = o.ws.min(o.devices);
    o
}

/// Least-squares slope of `(x, y)` points.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn write_engine_dir(dir: &Path, o: &Opts, mqtt: u16, http: u16, vm: u16) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for e in std::fs::read_dir(root.join("rules")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".yaml") && !name.ends_with(".test.yaml") {
            std::fs::copy(e.path(), rules.join(&name)).unwrap();
        }
    }
    let devices: String = (0..o.devices)
        .map(|i| format!("  - {{id: pump-{i}, type: pump, attributes: {{rated_current: 10.0, max_temp: 80.0, critical_temp: 95.0}}}}\n"))
        .collect();
    std::fs::write(dir.join("devices.yaml"), format!("devices:\n{devices}")).unwrap();
    // The recent values fill their budget over their window (15 minutes by default), then stay
    // flat; a 20 s window lets a 2-minute soak see them at their plateau, so a slope after the
    // warm-up is a leak, not a window filling.
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "mqtt: {{url: mqtt://127.0.0.1:{mqtt}, client_id: soak, qos: 0}}\n\
             http: {{listen: 127.0.0.1:{http}}}\nstate_dir: state\nrules: rules\ndevices: devices.yaml\n\
             influx: {{url: http://127.0.0.1:{vm}, api: v1, database: soak}}\n\
             history: {{window: 20s}}\n\
             channels:\n  maintenance-email: {{log: {{}}, rate_limit: 60/1m}}\n  ops-webhook: {{log: {{}}, rate_limit: 60/1m}}\n"
        ),
    )
    .unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and the soak run is not a test of seconds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: a benchmark; run it with `cargo bench --bench soak`");
        return;
    }
    let o = opts();
    let bin = release_bin();
    assert!(
        bin.exists(),
        "build the engine first: cargo build --release"
    );
    let dir = std::env::temp_dir().join(format!("rulechain-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let broker = start_mosquitto(&dir, mqtt);
    let (victoria, vm) = start_victoria(&dir);
    write_engine_dir(&dir, &o, mqtt, http, vm);
    let engine = start_engine(&bin, &dir, "error,rumqttd=off", http);
    let pid = engine.0.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(run(&o, mqtt, http, pid));
    // Stopped before their directory goes.
    drop((engine, victoria, broker));
    let _ = std::fs::remove_dir_all(&dir);
    if o.check && !ok {
        std::process::exit(1);
    }
}

async fn run(o: &Opts, mqtt: u16, http: u16, pid: u32) -> bool {
    // Ready: subscribed at the broker.
    let start = Instant::now();
    while api_status(http)["counters"]["mqtt_connected"] != true {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the engine did not connect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recv = Arc::new(WsRecv::default());
    let rooms: Vec<String> = (0..o.ws).map(|i| format!("device/pump-{i}")).collect();
    let _clients = connect_all(http, rooms, &recv, &[]).await;
    println!(
        "soak: {} devices at {} msg/s for {} min, {} WebSocket clients ({} connected), sample every {} s",
        o.devices,
        o.rate,
        o.minutes,
        o.ws,
        recv.connected.load(Relaxed),
        o.sample
    );
    println!(
        "   min  RSS MiB  queue  received  processed  ws frames  ws p99 ms  alarms  influx points"
    );
    let publisher = client(mqtt, "soak-pub", &[], None).await;
    let total = Duration::from_secs_f64(o.minutes * 60.0);
    let began = Instant::now();
    let rss0 = proc_kib(pid, "VmRSS");
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut next_sample = began + Duration::from_secs(o.sample);
    let mut sent: u64 = 0;
    let mut last_queue = 0u64;
    let tick = Duration::from_millis(10);
    let mut next = Instant::now();
    while began.elapsed() < total {
        // Open loop: what is due by now goes out, whatever the engine does.
        let due = (began.elapsed().as_secs_f64() * o.rate as f64) as u64;
        let minute = began.elapsed().as_secs() / 60;
        while sent < due {
            let d = (sent % o.devices as u64) as usize;
            let hot = (minute as usize + d) % 50 == 0;
            let current = if hot {
                14.0
            } else {
                8.0 + (sent % 7) as f64 * 0.1
            };
            let payload = format!(
                "{{\"current\":{current},\"temperature\":{:.1},\"vibration\":{:.2},\"pressure\":{:.2},\"t\":{}}}",
                60.0 + (sent % 10) as f64,
                2.0 + (sent % 5) as f64 * 0.1,
                4.0 + (sent % 3) as f64 * 0.05,
                now_us()
            );
            if publisher
                .try_publish(
                    format!("site/a/device/pump-{d}/telemetry"),
                    QoS::AtMostOnce,
                    false,
                    payload,
                )
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(o.sample);
            let s = api_status(http);
            let c = &s["counters"];
            let n = |v: &Value| v.as_u64().unwrap_or(0);
            let (received, processed) = (n(&c["received"]), n(&c["processed"]));
            let queue = received.saturating_sub(processed);
            last_queue = queue;
            let mut lat = std::mem::take(&mut *recv.lat.lock().unwrap());
            let (_, p99, _) = percentiles(&mut lat);
            let rss = proc_kib(pid, "VmRSS");
            let t = began.elapsed().as_secs_f64() / 60.0;
            samples.push((t, rss as f64 / 1024.0));
            println!(
                "{t:>6.1}  {:>7.1}  {queue:>5}  {received:>8}  {processed:>9}  {:>9}  {p99:>9.1}  {:>6}  {:>13}",
                rss as f64 / 1024.0,
                recv.frames.load(Relaxed),
                n(&c["alarm_events"]),
                n(&s["influx"]["written"]),
            );
        }
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    let rss1 = proc_kib(pid, "VmRSS");
    let warm = samples.len() / 3;
    let m = slope(&samples[warm..]);
    println!(
        "soak: sent {sent}; RSS {:.1} MiB at start, {:.1} MiB at the end, peak {:.1} MiB; slope after warm-up {m:+.2} MiB/min",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        peak_rss_kib(pid) as f64 / 1024.0,
    );
    let mut ok = true;
    if m > o.max_slope {
        println!(
            "soak: FAIL: memory grows {m:.2} MiB/min (at most {} allowed)",
            o.max_slope
        );
        ok = false;
    }
    if last_queue > o.rate * o.sample {
        println!("soak: FAIL: the engine fell behind ({last_queue} messages queued)");
        ok = false;
    }
    if recv.frames.load(Relaxed) == 0 {
        println!("soak: FAIL: no WebSocket frame arrived");
        ok = false;
    }
    ok
}
