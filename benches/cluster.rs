//! Cluster mode, measured: what Redis costs a message, how long a failover takes, what moves
//! when an instance joins. A Mosquitto and a Redis (append-only) of its own, release builds of
//! `rulechain run` on 127.0.0.1.
//!
//! - **cost**: standalone, then a cluster of one instance, then of three, each taking the same
//!   `--rate` msg/s for `--seconds` from `--devices` devices at QoS 1 (a chain that republishes
//!   each message): CPU µs per message of the engine processes and of redis-server, Redis
//!   commands per message (client commands, and every call including those inside scripts),
//!   the appends' round trips per message, and the end-to-end latency (publish → republished
//!   message received), p50 and p99.
//! - **failover**: three instances (lease `--lease`) under load; `--kills` times, the owner of a
//!   device is killed with SIGKILL, and the time from the kill to that device's next output is
//!   its failover time; each partition's restore time comes from the new owner's counter. The
//!   killed instance is started again after each round. At the end: nothing lost (every seq of
//!   every device came out).
//! - **join**: a fourth instance joins three: partitions moved (the goal is at most ⌈P/4⌉ + 1).
//!
//! `cargo build --release && cargo bench --bench cluster -- [--mode cost|failover|join|all]
//! [--rate 2000] [--seconds 10] [--devices 100] [--kills 10] [--lease 2s]`

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::QoS;
use serde_json::Value;

const PARTITIONS: u32 = 64;

struct Args {
    mode: String,
    rate: u64,
    seconds: u64,
    devices: usize,
    kills: usize,
    lease: String,
    /// The engine binary (default: the release build).
    engine: PathBuf,
    /// `cluster.linger` (None: the default).
    linger: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        mode: "all".into(),
        rate: 2000,
        seconds: 10,
        devices: 100,
        kills: 10,
        lease: "2s".into(),
        engine: release_bin(),
        linger: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--mode" => a.mode = next,
            "--rate" => a.rate = next.parse().expect("--rate N"),
            "--seconds" => a.seconds = next.parse().expect("--seconds N"),
            "--devices" => a.devices = next.parse().expect("--devices N"),
            "--kills" => a.kills = next.parse().expect("--kills N"),
            "--lease" => a.lease = next,
            "--engine" => a.engine = PathBuf::from(next),
            "--linger" => a.linger = Some(next),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

const ECHO: &str = "chain: echo\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/${meta.device}\", qos: 1 }\n";

/// Redis with an append-only file, in `dir`.
fn start_redis(dir: &Path, port: u16) -> Proc {
    let p = Proc(
        Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is not installed: scripts/services.sh installs it"),
    );
    wait_port(port);
    p
}

/// `INFO` of the Redis at `port`.
fn redis_info(port: u16) -> String {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("INFO").arg("all").query(&mut c).unwrap()
}

/// Calls of each Redis command so far (`INFO commandstats`: a script's calls count under
/// their own commands, and the script under `evalsha`).
fn redis_calls(port: u16) -> BTreeMap<String, u64> {
    redis_info(port)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// Requests the engine sent Redis between two `redis_calls`: the commands only a client sends
/// (every request of the engine is a script, `evalsha`, or a read or write of its own); the
/// calls a script makes inside Redis are not requests. A pipeline's commands count each: an
/// upper bound on round trips.
fn client_requests(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    const CLIENT: &[&str] = &[
        "evalsha",
        "eval",
        "xread",
        "xreadgroup",
        "xack",
        "xautoclaim",
        "xgroup|create",
        "hgetall",
        "hget",
        "pttl",
        "ping",
        "xrevrange",
        "xrange",
        "script|load",
        "hello",
        "client|setinfo",
    ];
    CLIENT
        .iter()
        .map(|c| after.get(*c).unwrap_or(&0) - before.get(*c).unwrap_or(&0))
        .sum()
}

fn redis_pid(port: u16) -> u32 {
    redis_info(port)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One instance's directory and process.
struct Instance {
    name: String,
    http: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    bin: PathBuf,
}

impl Instance {
    fn new(
        bin: &Path,
        base: &Path,
        name: &str,
        mqtt: u16,
        cluster: Option<(u16, &str, Option<&str>)>,
    ) -> Instance {
        let dir = base.join(name);
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        std::fs::write(dir.join("rules/echo.yaml"), ECHO).unwrap();
        let http = free_port();
        let cluster = cluster.map_or(String::new(), |(redis, lease, linger)| {
            let linger = linger.map_or(String::new(), |l| format!(", linger: {l}"));
            format!("cluster: {{redis: \"redis://127.0.0.1:{redis}/\", instance: {name}, partitions: {PARTITIONS}, lease: {lease}{linger}}}\n")
        });
        std::fs::write(
            dir.join("rulechain.yaml"),
            format!(
                "mqtt: {{url: mqtt://127.0.0.1:{mqtt}, client_id: bench}}\nhttp: {{listen: 127.0.0.1:{http}}}\nstate_dir: state\nrules: rules\n{cluster}"
            ),
        )
        .unwrap();
        let mut i = Instance {
            name: name.into(),
            http,
            dir,
            proc: None,
            bin: bin.to_path_buf(),
        };
        i.start();
        i
    }

    fn start(&mut self) {
        self.proc = Some(start_engine(&self.bin, &self.dir, "warn", self.http));
        let t = Instant::now();
        while !http_get(self.http, "/readyz").contains("\"ready\":true") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{} not ready",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.0.id())
    }

    fn kill9(&mut self) {
        self.proc = None;
    }

    fn cluster(&self) -> Value {
        serde_json::from_str(&http_get(self.http, "/api/cluster")).unwrap_or(Value::Null)
    }
}

/// Waits until every partition is owned and the owners are spread evenly over `n` instances.
fn settle(i: &Instance, n: usize) -> Value {
    let t = Instant::now();
    loop {
        let c = i.cluster();
        let counts: Vec<u64> = c["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["partitions"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        let (lo, hi) = (
            PARTITIONS as u64 / n as u64,
            (PARTITIONS as u64).div_ceil(n as u64),
        );
        if counts.len() == n
            && counts.iter().sum::<u64>() == PARTITIONS as u64
            && counts.iter().all(|k| (lo..=hi).contains(k))
        {
            return c;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no settle: {c}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the subscriber saw: per device, each seq's first arrival time.
#[derive(Default)]
struct Seen {
    by_device: Mutex<BTreeMap<String, BTreeMap<u64, Instant>>>,
    lat: Mutex<Vec<u32>>,
}

impl Seen {
    /// Outputs seen so far.
    fn count(&self) -> u64 {
        self.by_device
            .lock()
            .unwrap()
            .values()
            .map(|m| m.len() as u64)
            .sum()
    }

    /// Waits until no new output came for a second (30 s at most): the stragglers.
    async fn settle(&self) {
        let _ = until_quiet(|| self.count(), Duration::from_secs(30)).await;
    }
}

async fn subscriber(port: u16, seen: Arc<Seen>) -> rumqttc::AsyncClient {
    let mut o = rumqttc::MqttOptions::new("bench-sub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 100_000);
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<()>(1);
    let cc = c.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = cc.try_subscribe("out/#", QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let v: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let (Some(d), Some(s)) = (p.topic.strip_prefix("out/"), v["seq"].as_u64()) {
                        seen.by_device
                            .lock()
                            .unwrap()
                            .entry(d.to_string())
                            .or_default()
                            .entry(s)
                            .or_insert_with(Instant::now);
                    }
                    if let Some(t) = v["t"].as_u64() {
                        seen.lat
                            .lock()
                            .unwrap()
                            .push(now_us().saturating_sub(t).min(u32::MAX as u64) as u32);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("subscribe");
    c
}

/// Publishes `{"seq":s,"t":µs}` round-robin over `devices` at `rate` msg/s, seqs `from..to`.
async fn load(port: u16, id: &str, devices: usize, from: u64, to: u64, rate: u64) {
    let c = client(port, id, &[], None).await;
    let start = Instant::now();
    let mut n = 0u64;
    for s in from..to {
        for d in 0..devices {
            let payload = format!("{{\"seq\":{s},\"t\":{},\"v\":1}}", now_us());
            let _ = c
                .publish(
                    format!("device/d{d}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await;
            n += 1;
            let due = start + Duration::from_micros(n * 1_000_000 / rate.max(1));
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(w).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Every (device, seq) of `0..to` that never came out.
fn missing(seen: &Seen, devices: usize, to: u64) -> usize {
    let m = seen.by_device.lock().unwrap();
    (0..devices)
        .map(|d| {
            let got = m.get(&format!("d{d}"));
            (0..to)
                .filter(|s| got.is_none_or(|g| !g.contains_key(s)))
                .count()
        })
        .sum()
}

/// A broker, a Redis and `n` instances (clustered or not) in a fresh directory named `name`.
struct Bench {
    mqtt: u16,
    redis: u16,
    instances: Vec<Instance>,
    // Dropped last: the services outlive the instances.
    _services: (Proc, Proc),
}

fn bench(a: &Args, name: &str, n: usize, cluster: bool) -> Bench {
    let dir = std::env::temp_dir().join(format!("rc-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mqtt, redis) = (free_port(), free_port());
    let services = (start_mosquitto(&dir, mqtt), start_redis(&dir, redis));
    let instances = (1..=n)
        .map(|i| {
            Instance::new(
                &a.engine,
                &dir,
                &format!("rc-{i}"),
                mqtt,
                cluster.then_some((redis, a.lease.as_str(), a.linger.as_deref())),
            )
        })
        .collect();
    Bench {
        mqtt,
        redis,
        instances,
        _services: services,
    }
}

async fn cost(a: &Args) {
    println!(
        "## cost: {} msg/s for {} s from {} devices, QoS 1, republished",
        a.rate, a.seconds, a.devices
    );
    println!("setup | msgs | engine CPU µs/msg | redis CPU µs/msg | Redis requests/msg | append round trips/msg | p50 ms | p99 ms | requests by command (per msg)");
    for (label, n, cluster) in [
        ("standalone", 1, false),
        ("cluster x1", 1, true),
        ("cluster x3", 3, true),
    ] {
        let mut b = bench(a, &format!("cost-{}", label.replace(' ', "")), n, cluster);
        let (mport, rport) = (b.mqtt, b.redis);
        let inst = std::mem::take(&mut b.instances);
        if cluster {
            settle(&inst[0], n);
        }
        let seen = Arc::new(Seen::default());
        let _sub = subscriber(mport, seen.clone()).await;
        // Warm up, then measure.
        load(mport, "bench-warm", a.devices, 0, 2, a.rate).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        seen.lat.lock().unwrap().clear();
        let cpu0: u64 = inst.iter().map(|i| cpu_ticks(i.pid())).sum();
        let rpid = redis_pid(rport);
        let rcpu0 = cpu_ticks(rpid);
        let calls0 = redis_calls(rport);
        // The appends' round trips so far, over the instances.
        let round_trips = || -> u64 {
            inst.iter()
                .map(|i| {
                    i.cluster()["counters"]["append_round_trips"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .sum()
        };
        let rt0 = round_trips();
        let per = (a.rate * a.seconds) / a.devices as u64;
        load(mport, "bench-load", a.devices, 2, 2 + per, a.rate).await;
        let want = (2 + per) as usize * a.devices;
        seen.settle().await;
        let got: usize = seen
            .by_device
            .lock()
            .unwrap()
            .values()
            .map(|m| m.len())
            .sum();
        let msgs = per * a.devices as u64;
        let hz = 100.0; // clock ticks a second (Linux's USER_HZ)
        let cpu = (inst.iter().map(|i| cpu_ticks(i.pid())).sum::<u64>() - cpu0) as f64 / hz;
        let rcpu = (cpu_ticks(rpid) - rcpu0) as f64 / hz;
        let calls1 = redis_calls(rport);
        let rt1 = round_trips();
        let mut lat = seen.lat.lock().unwrap().clone();
        let (p50, p99, _) = percentiles(&mut lat);
        let m = msgs as f64;
        let by: Vec<String> = calls1
            .iter()
            .filter_map(|(c, n)| {
                let d = n - calls0.get(c).unwrap_or(&0);
                (d as f64 / m >= 0.005).then(|| format!("{c} {:.2}", d as f64 / m))
            })
            .collect();
        println!(
            "{label} | {msgs} ({got}/{want} out) | {:.1} | {:.1} | {:.2} | {:.3} | {p50:.1} | {p99:.1} | {}",
            cpu * 1e6 / m,
            rcpu * 1e6 / m,
            client_requests(&calls0, &calls1) as f64 / m,
            (rt1 - rt0) as f64 / m,
            by.join(", "),
        );
    }
}

async fn failover(a: &Args) {
    println!(
        "## failover: 3 instances, lease {}, {} kills, {} devices at {} msg/s",
        a.lease, a.kills, a.devices, a.rate
    );
    let mut b = bench(a, "failover", 3, true);
    let mport = b.mqtt;
    let mut inst = std::mem::take(&mut b.instances);
    settle(&inst[0], 3);
    let seen = Arc::new(Seen::default());
    let _sub = subscriber(mport, seen.clone()).await;
    let per_round = 8; // seconds of load per round
    let total = (a.kills as u64 + 1) * per_round * a.rate / a.devices as u64;
    let loader = tokio::spawn(load(mport, "bench-load", a.devices, 0, total, a.rate));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut times = Vec::new();
    let mut restores = Vec::new();
    for k in 0..a.kills {
        // The instance to kill: the ingest holder every other round, else another; a device it
        // owns.
        let view = inst[0].cluster();
        let holder = view["ingest"]["instance"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let victim = (0..3)
            .find(|i| (inst[*i].name == holder) == (k % 2 == 0))
            .unwrap_or(k % 3);
        let victim_name = inst[victim].name.clone();
        let view = inst[(victim + 1) % 3].cluster();
        let device = (0..a.devices)
            .map(|d| format!("d{d}"))
            .find(|d| {
                let p = rulechain::live::cluster::placement::partition_of(d, PARTITIONS) as usize;
                view["owners"][p]["owner"] == victim_name.as_str()
            })
            .expect("a device of the victim");
        let holds_ingest = victim_name == holder;
        let killed = Instant::now();
        inst[victim].kill9();
        // The device's next output after the kill.
        let t = loop {
            let next = seen
                .by_device
                .lock()
                .unwrap()
                .get(&device)
                .and_then(|m| m.values().filter(|t| **t > killed).min().copied());
            if let Some(t) = next {
                break t;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "no output of {device}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = t.duration_since(killed);
        let other = &inst[(victim + 1) % 3];
        let restore = other.cluster()["counters"]["last_restore_milliseconds"]
            .as_u64()
            .unwrap_or(0);
        println!(
            "kill {}: {victim_name}{} → {device} out again after {:.2} s (restore {restore} ms)",
            k + 1,
            if holds_ingest { " (ingest holder)" } else { "" },
            took.as_secs_f64()
        );
        times.push(took.as_secs_f64());
        restores.push(restore);
        inst[victim].start();
        settle(&inst[(victim + 1) % 3], 3);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    loader.await.unwrap();
    seen.settle().await;
    times.sort_by(f64::total_cmp);
    let lost = missing(&seen, a.devices, total);
    println!(
        "failover: min {:.2} s, median {:.2} s, max {:.2} s over {} kills; restore max {} ms; lost {lost} of {}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times.len(),
        restores.iter().max().unwrap_or(&0),
        total * a.devices as u64
    );
}

async fn join(a: &Args) {
    let mut b = bench(a, "join", 3, true);
    let (mport, rport) = (b.mqtt, b.redis);
    let mut inst = std::mem::take(&mut b.instances);
    let dir = std::env::temp_dir().join(format!("rc-bench-join-{}", std::process::id()));
    let before = settle(&inst[0], 3);
    let t = Instant::now();
    inst.push(Instance::new(
        &a.engine,
        &dir,
        "rc-4",
        mport,
        Some((rport, a.lease.as_str(), a.linger.as_deref())),
    ));
    let after = settle(&inst[0], 4);
    let owner = |v: &Value, p: usize| v["owners"][p]["owner"].as_str().unwrap_or("").to_string();
    let moved = (0..PARTITIONS as usize)
        .filter(|p| owner(&before, *p) != owner(&after, *p))
        .count();
    let owners: BTreeSet<String> = (0..PARTITIONS as usize).map(|p| owner(&after, p)).collect();
    println!(
        "## join: a fourth instance of {owners:?}: {moved} of {PARTITIONS} partitions moved (goal ≤ {}), settled {:.1} s after its start",
        (PARTITIONS as usize).div_ceil(4) + 1,
        t.elapsed().as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and minutes of instances being killed have no place in the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster: a benchmark; run it with `cargo bench --bench cluster`");
        return;
    }
    let a = args();
    assert!(
        a.engine.exists(),
        "build first: cargo build --release ({})",
        a.engine.display()
    );
    println!(
        "engine: {} (cluster.linger: {})",
        a.engine.display(),
        a.linger.as_deref().unwrap_or("default")
    );
    if a.mode == "cost" || a.mode == "all" {
        cost(&a).await;
    }
    if a.mode == "failover" || a.mode == "all" {
        failover(&a).await;
    }
    if a.mode == "join" || a.mode == "all" {
        join(&a).await;
    }
}
