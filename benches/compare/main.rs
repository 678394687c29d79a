//! The end-to-end comparison: the same logic through rulechain and through the tools our users
//! would replace with it, side by side in one run on one machine.
//!
//! The logic, in every system: take telemetry from `site/a/device/{device}/telemetry`, keep it
//! when `current > rated_current * 1.2` (the device's attribute), add `overload` (percent over
//! rated), publish it to `out/{device}`. Every message passes, so out = in. The systems:
//!
//! - `mosquitto`: Mosquitto alone, one hop (publisher → broker → subscriber; no engine);
//! - `relay`: a minimal relay of this tool's own that subscribes and republishes to `out/…`
//!   (no logic, batched writes): the two-hop ceiling of the machine, the limit for any engine;
//! - `rulechain`: `rulechain run` against the same Mosquitto;
//! - `embedded`: `rulechain run` on its embedded broker (the generator talks to it directly);
//! - `node-red`: Node-RED 4.1 (mqtt in → function → mqtt out);
//! - `bridge`: a Node.js bridge on the `mqtt` package (`bridge.js`).
//!
//! The load is open loop: at each rate step the publisher sends on schedule whatever the
//! system does, then waits for the last deliveries; a flood sends a fixed count as fast as it
//! can. Each step reports sent, received, lost, duplicated, out of order (per device), latency
//! from the send time in the payload, and the CPU % and peak RSS of every process. Rounds
//! alternate the systems. Output: `results.csv`, `results.md`, `chart.png` in `--out`.
//!
//! Run it with `benches/compare/run.sh` (installs what it needs); options after `--`:
//! `--systems mosquitto,relay,rulechain,embedded,node-red,bridge --rates 5000,10000,…
//! --flood 400000 --seconds 5 --rounds 2 --qos 0 --devices 100 --shards N --engines A,B
//! --out DIR`.
//!
//! Restarts: `--kill9 S` kills the `rulechain` engine with SIGKILL S seconds into every rate
//! step and starts it again `--down S` seconds later (default 0: at once); its session is
//! persistent, so with `--qos 1` nothing may be lost (duplicates may come). `--broker rumqttd` puts the external systems on a broker that is a
//! `rulechain run` with no rules (its embedded rumqttd) instead of Mosquitto, for rates
//! Mosquitto cannot carry at QoS 1 on a small machine.

#[path = "../common/mod.rs"]
mod common;
mod mqtt;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    cpu_ticks, free_port, now_us, percentiles, proc_kib, start_mosquitto, wait_port, Proc,
};
use rumqttc::mqttbytes::v4::Packet;

/// The systems, in the order of the tables.
const SYSTEMS: [&str; 6] = [
    "mosquitto",
    "relay",
    "rulechain",
    "embedded",
    "node-red",
    "bridge",
];
/// Latency at or above which a step does not count as sustained.
const P99_LIMIT_MS: f64 = 50.0;
/// Message numbers at or above this are warm-up messages, not counted.
const WARM: u64 = 1 << 40;
/// Unacknowledged QoS 1 publishes the generator allows itself (brokers cap a client's
/// inflight window; rumqttd's is 500 here).
const WINDOW: u64 = 400;

#[derive(Clone, Debug, PartialEq)]
enum System {
    Mosquitto,
    Relay,
    Rulechain(usize),
    Embedded(usize),
    NodeRed,
    Bridge,
}

impl System {
    fn name(&self, engines: usize) -> String {
        let tag = |base: &str, i: usize| {
            if engines > 1 {
                format!("{base}#{i}")
            } else {
                base.to_string()
            }
        };
        match self {
            System::Mosquitto => "mosquitto".into(),
            System::Relay => "relay".into(),
            System::Rulechain(i) => tag("rulechain", *i),
            System::Embedded(i) => tag("embedded", *i),
            System::NodeRed => "node-red".into(),
            System::Bridge => "bridge".into(),
        }
    }
}

struct Opts {
    systems: Vec<String>,
    rates: Vec<u64>,
    flood: u64,
    seconds: f64,
    rounds: usize,
    qos: u8,
    devices: usize,
    shards: Option<usize>,
    engines: Vec<PathBuf>,
    out: PathBuf,
    /// Kill -9 the rulechain engine this many seconds into each rate step, then restart it.
    kill9: Option<f64>,
    /// How long the killed engine stays down before it is started again.
    down: f64,
    /// The external broker: `mosquitto` or `rumqttd`.
    broker: String,
}

fn opts(args: &[String]) -> Opts {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        systems: SYSTEMS.map(String::from).to_vec(),
        rates: vec![
            5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 120_000,
        ],
        flood: 400_000,
        seconds: 5.0,
        rounds: 2,
        qos: 0,
        devices: 100,
        shards: None,
        engines: Vec::new(),
        out: root.join("target/compare"),
        kill9: None,
        down: 0.0,
        broker: "mosquitto".into(),
    };
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
        let mut took = true;
        match args[i].as_str() {
            "--systems" => o.systems = list(&v),
            "--rates" => o.rates = list(&v).iter().filter_map(|r| r.parse().ok()).collect(),
            "--flood" => o.flood = v.parse().expect("--flood N"),
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--rounds" => o.rounds = v.parse().expect("--rounds N"),
            "--qos" => o.qos = v.parse().expect("--qos 0|1"),
            "--devices" => o.devices = v.parse().expect("--devices N"),
            "--shards" => o.shards = Some(v.parse().expect("--shards N")),
            "--engines" => o.engines = list(&v).into_iter().map(PathBuf::from).collect(),
            "--out" => o.out = PathBuf::from(v),
            "--kill9" => o.kill9 = Some(v.parse().expect("--kill9 SECONDS")),
            "--down" => o.down = v.parse().expect("--down SECONDS"),
            "--broker" => {
                assert!(
                    v == "mosquitto" || v == "rumqttd",
                    "--broker mosquitto|rumqttd"
                );
                o.broker = v;
            }
            _ => took = false,
        }
        i += if took { 2 } else { 1 };
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--relay") {
        let port = args[i + 1].parse().expect("--relay PORT QOS");
        let qos = args[i + 2].parse().expect("--relay PORT QOS");
        relay(port, qos);
        return;
    }
    // `cargo test --all-targets` runs this binary without `--bench`: a benchmark has no place
    // in the test suite.
    if !args.iter().any(|a| a == "--bench") {
        println!("compare: a benchmark; run it with benches/compare/run.sh");
        return;
    }
    let o = opts(&args[1..]);
    let engines = common::engine_bins(&o.engines);
    let mut systems = Vec::new();
    for s in &o.systems {
        match s.as_str() {
            "mosquitto" => systems.push(System::Mosquitto),
            "relay" => systems.push(System::Relay),
            "rulechain" => systems.extend((0..engines.len()).map(System::Rulechain)),
            "embedded" => systems.extend((0..engines.len()).map(System::Embedded)),
            "node-red" => systems.push(System::NodeRed),
            "bridge" => systems.push(System::Bridge),
            other => panic!("unknown system {other}"),
        }
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/compare");
    if systems
        .iter()
        .any(|s| matches!(s, System::NodeRed | System::Bridge))
    {
        assert!(
            here.join("node_modules/node-red").exists() && here.join("node_modules/mqtt").exists(),
            "Node-RED and mqtt are not installed: benches/compare/run.sh installs them (npm ci)"
        );
    }
    std::fs::create_dir_all(&o.out).expect("create the output folder");
    let dir = std::env::temp_dir().join(format!("rulechain-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let machine = machine();
    println!(
        "compare: {} devices, QoS {}, {} s per step, rates {:?} then a flood of {}, {} round(s)\nmachine: {machine}",
        o.devices, o.qos, o.seconds, o.rates, o.flood, o.rounds
    );
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=o.rounds {
        // Alternate the order between rounds, so no system always runs on a warmer machine.
        let order: Vec<&System> = if round % 2 == 1 {
            systems.iter().collect()
        } else {
            systems.iter().rev().collect()
        };
        for sys in order {
            let name = sys.name(engines.len());
            let sdir = dir.join(format!("{name}-{round}"));
            std::fs::create_dir_all(&sdir).unwrap();
            let ctx = Ctx {
                o: &o,
                dir: &sdir,
                here: &here,
                engines: &engines,
            };
            rows.extend(run_system(&ctx, sys, &name, round));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    write_outputs(&o, &machine, &rows);
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |s| s.trim().to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = proc_meminfo_gib();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mosq = Command::new("/usr/sbin/mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpus} vCPU {model}, {mem:.0} GiB, Linux {}, {mosq}, Node {node}",
        kernel.trim()
    )
}

fn proc_meminfo_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0 / 1024.0)
}

struct Ctx<'a> {
    o: &'a Opts,
    dir: &'a Path,
    here: &'a Path,
    engines: &'a [PathBuf],
}

/// One step's measurements.
#[derive(Clone)]
struct Row {
    round: usize,
    system: String,
    qos: u8,
    /// Offered rate; None: the flood.
    rate: Option<u64>,
    sent: u64,
    received: u64,
    lost: u64,
    dup: u64,
    ooo: u64,
    /// Publishing time.
    send_secs: f64,
    /// From the first send to the last delivery.
    drain_secs: f64,
    p50: f64,
    p99: f64,
    max: f64,
    /// CPU % (of one core) and peak RSS (MiB) per process, the system's first.
    procs: Vec<(String, f64, f64)>,
    /// The generator's own CPU %.
    gen_cpu: f64,
}

impl Row {
    fn ok(&self) -> bool {
        self.lost == 0 && self.dup == 0 && self.p99 < P99_LIMIT_MS
    }
    fn delivered_rate(&self) -> f64 {
        self.received as f64 / self.drain_secs.max(1e-9)
    }
    /// CPU µs per delivered message of the system's own processes (not the broker's, unless
    /// the broker is the system).
    fn us_per_msg(&self) -> f64 {
        let cpu = self.procs.first().map_or(0.0, |p| p.1);
        cpu / 100.0 * self.drain_secs / self.received.max(1) as f64 * 1e6
    }
}

/// The processes of one system under test; the system's own first, then the broker's.
struct Running {
    procs: Vec<(String, Proc)>,
    port: u16,
    out_filter: String,
    /// Starts the engine again (the `rulechain` systems): for `--kill9`.
    restart: Option<Restart>,
}

/// How to start an engine again: its binary, directory and HTTP port.
#[derive(Clone)]
struct Restart {
    bin: PathBuf,
    dir: PathBuf,
    http: u16,
}

impl Restart {
    fn start(&self) -> Proc {
        common::start_engine(&self.bin, &self.dir, "warn", self.http)
    }
}

/// Whether a killed process is gone far enough for another to take its ports and state file:
/// every thread exited (the main thread shows as a zombie while the others, holding the shared
/// descriptor table, may still be on their way out).
fn exited(pid: u32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
        st.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
    });
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    zombie && threads <= 1
}

/// The external broker of `--broker`: Mosquitto, or a `rulechain run` with no rules on its
/// embedded broker (in its own directory).
fn start_broker(ctx: &Ctx, port: u16) -> (String, Proc) {
    if ctx.o.broker == "mosquitto" {
        return ("mosquitto".into(), start_mosquitto(ctx.dir, port));
    }
    let dir = ctx.dir.join("broker");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let http = free_port();
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "embedded_broker: {{listen: 127.0.0.1:{port}}}\nhttp: {{listen: 127.0.0.1:{http}}}\nrules: rules\nstate_dir: state\n"
        ),
    )
    .unwrap();
    let p = common::start_engine(&ctx.engines[0], &dir, "warn", http);
    wait_port(port);
    ("rumqttd".into(), p)
}

fn write_devices(ctx: &Ctx) -> BTreeMap<String, f64> {
    let rated: BTreeMap<String, f64> = (0..ctx.o.devices)
        .map(|i| (format!("dev-{i}"), 10.0))
        .collect();
    let yaml: String = rated
        .iter()
        .map(|(d, r)| format!("  - {{id: {d}, attributes: {{rated_current: {r:.1}}}}}\n"))
        .collect();
    std::fs::write(ctx.dir.join("devices.yaml"), format!("devices:\n{yaml}")).unwrap();
    std::fs::write(
        ctx.dir.join("devices.json"),
        serde_json::to_string(&rated).unwrap(),
    )
    .unwrap();
    rated
}

const CHAIN: &str = "chain: compare
on: { kind: telemetry }
nodes:
  - filter: msg.current > attr.rated_current * 1.2
  - transform:
      overload: (msg.current / attr.rated_current - 1.0) * 100.0
  - publish: { topic: \"out/${meta.device}\", qos: QOS }
";

fn start(ctx: &Ctx, sys: &System) -> Running {
    let o = ctx.o;
    let rated = write_devices(ctx);
    let out = "out/+".to_string();
    let engine_cfg = |mqtt: String| {
        std::fs::create_dir_all(ctx.dir.join("rules")).unwrap();
        std::fs::write(
            ctx.dir.join("rules/compare.yaml"),
            CHAIN.replace("QOS", &o.qos.to_string()),
        )
        .unwrap();
        let http = free_port();
        let shards = o
            .shards
            .map_or(String::new(), |n| format!("engine: {{shards: {n}}}\n"));
        std::fs::write(
            ctx.dir.join("rulechain.yaml"),
            format!(
                "{mqtt}\nhttp: {{listen: 127.0.0.1:{http}}}\nrules: rules\ndevices: devices.yaml\nstate_dir: state\n{shards}"
            ),
        )
        .unwrap();
        http
    };
    match sys {
        System::Mosquitto => {
            let port = free_port();
            let m = start_mosquitto(ctx.dir, port);
            Running {
                procs: vec![("mosquitto".into(), m)],
                port,
                out_filter: "site/a/device/+/telemetry".into(),
                restart: None,
            }
        }
        System::Embedded(i) => {
            let port = free_port();
            let http = engine_cfg(format!("embedded_broker: {{listen: 127.0.0.1:{port}}}"));
            let e = common::start_engine(&ctx.engines[*i], ctx.dir, "warn", http);
            wait_port(port);
            Running {
                procs: vec![("rulechain".into(), e)],
                port,
                out_filter: out,
                restart: None,
            }
        }
        _ => {
            let port = free_port();
            let broker = start_broker(ctx, port);
            let mut restart = None;
            let me = std::env::current_exe().unwrap();
            let p = match sys {
                System::Relay => (
                    "relay",
                    spawn(Command::new(me).args([
                        "--relay",
                        &port.to_string(),
                        &o.qos.to_string(),
                    ])),
                ),
                System::Rulechain(i) => {
                    // A restarted engine finds what was sent meanwhile in its session.
                    let http = engine_cfg(format!(
                        "mqtt: {{url: mqtt://127.0.0.1:{port}, client_id: rc-compare, qos: {}, persistent_session: {}}}",
                        o.qos,
                        o.kill9.is_some()
                    ));
                    let r = Restart {
                        bin: ctx.engines[*i].clone(),
                        dir: ctx.dir.to_path_buf(),
                        http,
                    };
                    let p = r.start();
                    restart = Some(r);
                    ("rulechain", p)
                }
                System::NodeRed => ("node-red", node_red(ctx, port, &rated)),
                System::Bridge => (
                    "bridge",
                    spawn(
                        Command::new("node")
                            .arg(ctx.here.join("bridge.js"))
                            .args([&port.to_string(), &o.qos.to_string()])
                            .arg(ctx.dir.join("devices.json")),
                    ),
                ),
                _ => unreachable!(),
            };
            Running {
                procs: vec![(p.0.into(), p.1), broker],
                port,
                out_filter: out,
                restart,
            }
        }
    }
}

fn spawn(c: &mut Command) -> Proc {
    Proc(
        c.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a system under test"),
    )
}

/// Node-RED with one flow: mqtt in → function (the same filter and transform) → mqtt out.
fn node_red(ctx: &Ctx, port: u16, rated: &BTreeMap<String, f64>) -> Proc {
    let user = ctx.dir.join("node-red");
    std::fs::create_dir_all(&user).unwrap();
    let http = free_port();
    std::fs::write(
        user.join("settings.js"),
        format!(
            "module.exports = {{ uiHost: '127.0.0.1', uiPort: {http}, flowFile: 'flows.json', credentialSecret: false,\n\
             logging: {{ console: {{ level: 'warn' }} }}, diagnostics: {{ enabled: false }}, telemetry: {{ enabled: false }},\n\
             editorTheme: {{ tours: false }} }};\n"
        ),
    )
    .unwrap();
    let func = format!(
        "const RATED = {};\nconst device = msg.topic.split('/')[3];\nconst rated = RATED[device];\nconst p = msg.payload;\n\
         if (rated === undefined || !(p.current > rated * 1.2)) return null;\np.overload = (p.current / rated - 1) * 100;\n\
         msg.topic = 'out/' + device;\nreturn msg;",
        serde_json::to_string(rated).unwrap()
    );
    let q = ctx.o.qos.to_string();
    let flows = serde_json::json!([
        {"id": "tab", "type": "tab", "label": "compare"},
        {"id": "broker", "type": "mqtt-broker", "name": "mosquitto", "broker": "127.0.0.1", "port": port.to_string(),
         "clientid": "nr-compare", "autoConnect": true, "usetls": false, "protocolVersion": "4", "keepalive": "60",
         "cleansession": true, "autoUnsubscribe": true},
        {"id": "in", "type": "mqtt in", "z": "tab", "name": "", "topic": "site/+/device/+/telemetry", "qos": q,
         "datatype": "json", "broker": "broker", "nl": false, "rap": false, "rh": 0, "inputs": 0, "x": 100, "y": 100,
         "wires": [["fn"]]},
        {"id": "fn", "type": "function", "z": "tab", "name": "overload", "func": func, "outputs": 1, "timeout": 0,
         "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 300, "y": 100, "wires": [["out"]]},
        {"id": "out", "type": "mqtt out", "z": "tab", "name": "", "topic": "", "qos": q, "retain": "false",
         "broker": "broker", "x": 500, "y": 100, "wires": []}
    ]);
    std::fs::write(user.join("flows.json"), flows.to_string()).unwrap();
    let p = spawn(
        Command::new("node")
            .arg(ctx.here.join("node_modules/node-red/red.js"))
            .arg("--userDir")
            .arg(&user)
            .arg("--settings")
            .arg(user.join("settings.js")),
    );
    wait_port(http);
    p
}

/// What the subscriber counts; reset before each step.
struct Tally {
    base: u64,
    cap: u64,
    seen: Vec<u64>,
    last: Vec<u64>,
    received: u64,
    dup: u64,
    ooo: u64,
    lat: Vec<u32>,
    last_at: Instant,
    warm: u64,
}

impl Tally {
    fn reset(&mut self, base: u64, cap: u64, devices: usize) {
        self.base = base;
        self.cap = cap;
        self.seen = vec![0; cap.div_ceil(64) as usize];
        self.last = vec![u64::MAX; devices];
        self.received = 0;
        self.dup = 0;
        self.ooo = 0;
        self.lat.clear();
        self.last_at = Instant::now();
    }

    fn take(&mut self, payload: &[u8], now: u64, at: Instant) {
        let (Some(n), Some(t)) = (field(payload, b"\"n\":"), field(payload, b"\"t\":")) else {
            return;
        };
        if n >= WARM {
            self.warm += 1;
            return;
        }
        if n < self.base || n >= self.base + self.cap {
            return;
        }
        let i = n - self.base;
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.seen[w] & (1 << b) != 0 {
            self.dup += 1;
            return;
        }
        self.seen[w] |= 1 << b;
        self.received += 1;
        self.last_at = at;
        let d = (n % self.last.len() as u64) as usize;
        if self.last[d] != u64::MAX && n < self.last[d] {
            self.ooo += 1;
        }
        self.last[d] = n;
        self.lat
            .push(now.saturating_sub(t).min(u32::MAX as u64) as u32);
    }
}

/// The unsigned integer after `key` in a JSON payload (every system passes `n` and `t` on).
fn field(p: &[u8], key: &[u8]) -> Option<u64> {
    let i = p.windows(key.len()).position(|w| w == key)? + key.len();
    let mut v: u64 = 0;
    let mut any = false;
    for &c in p[i..].iter().skip_while(|c| **c == b' ') {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + u64::from(c - b'0');
        any = true;
    }
    any.then_some(v)
}

/// A subscriber thread on `filter`; acknowledges QoS 1 in batches.
fn subscriber(port: u16, filter: &str, qos: u8, tally: Arc<Mutex<Tally>>, stop: Arc<AtomicBool>) {
    let mut c = mqtt::Conn::connect(port, "compare-sub").expect("subscriber connects");
    c.subscribe(&[filter], qos).expect("subscribe");
    c.s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut got: Vec<(u16, bytes::Bytes)> = Vec::new();
        while !stop.load(Relaxed) {
            match c.read(|p| {
                if let Packet::Publish(p) = p {
                    got.push((p.pkid, p.payload));
                }
            }) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
            if got.is_empty() {
                continue;
            }
            let (now, at) = (now_us(), Instant::now());
            {
                let mut t = tally.lock().unwrap();
                for (_, p) in &got {
                    t.take(p, now, at);
                }
            }
            if qos > 0 {
                for (pkid, _) in &got {
                    c.puback(*pkid);
                }
                let _ = c.flush();
            }
            got.clear();
        }
    });
}

/// The publishing connection; with QoS 1 a reader thread counts the broker's PUBACKs.
struct Publisher {
    c: mqtt::Conn,
    qos: u8,
    pkid: u16,
    sent: u64,
    acked: Arc<AtomicU64>,
    topics: Vec<String>,
    body: Vec<u8>,
}

impl Publisher {
    fn new(port: u16, qos: u8, devices: usize) -> Publisher {
        let c = mqtt::Conn::connect(port, "compare-pub").expect("publisher connects");
        let acked = Arc::new(AtomicU64::new(0));
        if qos > 0 {
            let mut r = mqtt::reader(&c).unwrap();
            let a = acked.clone();
            std::thread::spawn(move || loop {
                let mut n = 0;
                match r.read(|p| n += u64::from(matches!(p, Packet::PubAck(_)))) {
                    Ok(true) => {
                        a.fetch_add(n, Relaxed);
                    }
                    _ => break,
                }
            });
        }
        Publisher {
            c,
            qos,
            pkid: 0,
            sent: 0,
            acked,
            topics: (0..devices)
                .map(|i| format!("site/a/device/dev-{i}/telemetry"))
                .collect(),
            body: Vec::with_capacity(64),
        }
    }

    /// Encodes message `n` (device `n % devices`).
    fn push(&mut self, n: u64) {
        if self.qos > 0 {
            // Stay inside the broker's inflight window: wait for acknowledgements.
            let _ = self.c.flush();
            while self.sent - self.acked.load(Relaxed) >= WINDOW {
                std::thread::sleep(Duration::from_micros(50));
            }
            self.pkid = if self.pkid == u16::MAX {
                1
            } else {
                self.pkid + 1
            };
        }
        self.body.clear();
        let _ = write!(
            Bytes(&mut self.body),
            "{{\"current\":13.1,\"temperature\":61.5,\"t\":{},\"n\":{n}}}",
            now_us()
        );
        let topic = &self.topics[(n % self.topics.len() as u64) as usize];
        self.c.publish(topic, self.qos, self.pkid, &self.body);
        self.sent += 1;
    }

    /// Sends at `rate` for `secs`, numbering from `base`; returns (count, seconds).
    fn paced(&mut self, base: u64, rate: u64, secs: f64) -> (u64, f64) {
        let start = Instant::now();
        let mut k: u64 = 0;
        loop {
            let el = start.elapsed().as_secs_f64();
            if el >= secs {
                break;
            }
            let due = (el * rate as f64) as u64;
            while k < due {
                self.push(base + k);
                k += 1;
                if self.c.wbuf.len() > 64 * 1024 {
                    self.c.flush().expect("publish");
                }
            }
            self.c.flush().expect("publish");
            std::thread::sleep(Duration::from_micros(200));
        }
        (k, start.elapsed().as_secs_f64())
    }

    /// Sends `count` as fast as the socket takes them.
    fn flood(&mut self, base: u64, count: u64) -> (u64, f64) {
        let start = Instant::now();
        for k in 0..count {
            self.push(base + k);
            if self.c.wbuf.len() > 64 * 1024 {
                self.c.flush().expect("publish");
            }
        }
        self.c.flush().expect("publish");
        (count, start.elapsed().as_secs_f64())
    }
}

struct Bytes<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn run_system(ctx: &Ctx, sys: &System, name: &str, round: usize) -> Vec<Row> {
    let o = ctx.o;
    let running = start(ctx, sys);
    let tally = Arc::new(Mutex::new(Tally {
        base: 0,
        cap: 0,
        seen: Vec::new(),
        last: Vec::new(),
        received: 0,
        dup: 0,
        ooo: 0,
        lat: Vec::new(),
        last_at: Instant::now(),
        warm: 0,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    subscriber(
        running.port,
        &running.out_filter,
        o.qos,
        tally.clone(),
        stop.clone(),
    );
    let mut publisher = Publisher::new(running.port, o.qos, o.devices);
    // Ready when a message makes it through (Node-RED and the engines take a moment to
    // subscribe), then a second of warm-up at a low rate.
    let t0 = Instant::now();
    let mut w = WARM;
    while tally.lock().unwrap().warm == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{name}: nothing came through in 60 s"
        );
        publisher.push(w);
        publisher.c.flush().unwrap();
        w += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = publisher.paced(WARM + 1_000_000, 2_000, 1.0);
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "[round {round}] {name}: ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut fails = 0;
    let mut base: u64 = 0;
    // `--kill9`: the engine's pid now, and the engines started again (kept until the end).
    let engine_pid = Arc::new(std::sync::atomic::AtomicU32::new(
        running.procs.first().map_or(0, |(_, p)| p.0.id()),
    ));
    let restarted: Arc<Mutex<Vec<Proc>>> = Arc::default();
    let steps: Vec<Option<u64>> = o.rates.iter().map(|r| Some(*r)).chain([None]).collect();
    for rate in steps {
        if rate.is_some() && fails >= 2 {
            continue;
        }
        let cap = rate.map_or(o.flood, |r| (r as f64 * o.seconds) as u64 + r);
        tally.lock().unwrap().reset(base, cap, o.devices);
        let mut pids: Vec<u32> = running.procs.iter().map(|(_, p)| p.0.id()).collect();
        if let Some(first) = pids.first_mut() {
            *first = engine_pid.load(Relaxed);
        }
        let me = std::process::id();
        let ticks0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
        let gen0 = cpu_ticks(me);
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (pids, sampling) = (pids.clone(), sampling.clone());
            std::thread::spawn(move || {
                let mut peak = vec![0u64; pids.len()];
                while sampling.load(Relaxed) {
                    for (i, p) in pids.iter().enumerate() {
                        peak[i] = peak[i].max(proc_kib(*p, "VmRSS"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            })
        };
        let start = Instant::now();
        let killer = match (o.kill9, &running.restart, rate) {
            (Some(after), Some(r), Some(_)) => {
                let (r, pid, kept) = (r.clone(), engine_pid.clone(), restarted.clone());
                let down = o.down;
                Some(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs_f64(after));
                    let old = pid.load(Relaxed);
                    let _ = Command::new("kill").args(["-9", &old.to_string()]).status();
                    let killed = Instant::now();
                    while !exited(old) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::thread::sleep(Duration::from_secs_f64(down));
                    let p = r.start();
                    pid.store(p.0.id(), Relaxed);
                    kept.lock().unwrap().push(p);
                    println!(
                        "  (engine pid {old} killed -9 at {after:.1} s; pid {} listening {:.2} s later)",
                        pid.load(Relaxed),
                        killed.elapsed().as_secs_f64()
                    );
                }))
            }
            _ => None,
        };
        let (sent, send_secs) = match rate {
            Some(r) => publisher.paced(base, r, o.seconds),
            None => publisher.flood(base, o.flood),
        };
        if let Some(k) = killer {
            k.join().unwrap();
        }
        // The stragglers: until nothing new arrived for a second (at most 60 s).
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let t = tally.lock().unwrap();
            if t.received >= sent
                || t.last_at.elapsed() > Duration::from_secs(1)
                || start.elapsed().as_secs_f64() > send_secs + 60.0
            {
                break;
            }
        }
        sampling.store(false, Relaxed);
        let peak = sampler.join().unwrap();
        let t = tally.lock().unwrap();
        let drain_secs = t.last_at.duration_since(start).as_secs_f64().max(send_secs);
        let pct = |ticks: u64| ticks as f64 / 100.0 / drain_secs.max(1e-9) * 100.0;
        let mut procs: Vec<(String, f64, f64)> = running
            .procs
            .iter()
            .zip(pids.iter().zip(&ticks0))
            .zip(&peak)
            .map(|(((n, _), (pid, t0)), kib)| {
                // The CPU time of the whole step (the idle tail included: the same work),
                // divided by the time to the last delivery, when the work was done.
                (
                    n.clone(),
                    pct(cpu_ticks(*pid).saturating_sub(*t0)),
                    *kib as f64 / 1024.0,
                )
            })
            .collect();
        // A restarted engine: its CPU counts too (from its start, inside this step).
        let now_pid = engine_pid.load(Relaxed);
        let extra = if pids.first().is_some_and(|p| *p != now_pid) {
            cpu_ticks(now_pid)
        } else {
            0
        };
        if let Some(first) = procs.first_mut() {
            first.1 += pct(extra);
        }
        let (p50, p99, max) = percentiles(&mut t.lat.clone());
        let row = Row {
            round,
            system: name.to_string(),
            qos: o.qos,
            rate,
            sent,
            received: t.received,
            lost: sent.saturating_sub(t.received),
            dup: t.dup,
            ooo: t.ooo,
            send_secs,
            drain_secs,
            p50,
            p99,
            max,
            procs,
            gen_cpu: pct(cpu_ticks(me) - gen0),
        };
        // Where the losses are (a restart's show up around the kill): the first few.
        let missing: Vec<u64> = (0..sent)
            .filter(|i| t.seen[(i / 64) as usize] & (1 << (i % 64)) == 0)
            .take(8)
            .collect();
        drop(t);
        print_row(&row);
        if let (Some(r), Some(_), Some(_)) = (&running.restart, o.kill9, rate) {
            // What the restarted engine itself counted: where a loss happened.
            let c = &common::api_status(r.http)["counters"];
            println!(
                "  (the restarted engine: received {}, published {}, dropped at its egress queue {})",
                c["received"], c["published"], c["egress_dropped"]
            );
        }
        if !missing.is_empty() {
            println!(
                "  (lost, first: {} of {sent}, at {})",
                missing
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                rate.map_or(String::new(), |r| format!(
                    "{:.2} s",
                    missing[0] as f64 / r as f64
                ))
            );
        }
        if rate.is_some() {
            fails = if row.ok() { 0 } else { fails + 1 };
        }
        rows.push(row);
        base += cap;
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Relaxed);
    drop(publisher);
    drop(restarted);
    drop(running);
    std::thread::sleep(Duration::from_millis(300));
    rows
}

fn rate_word(r: Option<u64>) -> String {
    r.map_or("flood".into(), |r| r.to_string())
}

fn print_row(r: &Row) {
    let procs: Vec<String> = r
        .procs
        .iter()
        .map(|(n, c, m)| format!("{n} {c:.0}% {m:.0} MiB"))
        .collect();
    println!(
        "  {:<10} {:>7}  sent {:>8}  recv {:>8} ({:>7.0}/s)  lost {:>6}  dup {:>3}  ooo {:>3}  p50 {:>7.2}  p99 {:>8.2}  max {:>8.2} ms  {}  gen {:.0}%{}",
        r.system,
        rate_word(r.rate),
        r.sent,
        r.received,
        r.delivered_rate(),
        r.lost,
        r.dup,
        r.ooo,
        r.p50,
        r.p99,
        r.max,
        procs.join(", "),
        r.gen_cpu,
        if r.ok() || r.rate.is_none() { "" } else { "  ✗" }
    );
}

/// Per system, over the rounds: what the summary table and the goals use.
#[derive(Default, Clone)]
struct Summary {
    /// Highest step held (no loss, p99 < 50 ms), per round.
    sustained: Vec<u64>,
    /// Flood delivery rate, per round.
    flood: Vec<f64>,
    /// CPU % of the system at the flood, per round.
    flood_cpu: Vec<f64>,
    /// CPU µs per message at 20k msg/s, per round.
    us_at_20k: Vec<f64>,
    /// p99 at the step nearest half the sustained rate, per round.
    p99_half: Vec<f64>,
    /// Peak RSS of the system's process over all steps, MiB.
    rss: f64,
    /// Peak RSS of the broker when it is a separate process.
    broker_rss: f64,
}

fn summarize(rows: &[Row]) -> BTreeMap<String, Summary> {
    let mut out: BTreeMap<String, Summary> = BTreeMap::new();
    let mut keys: Vec<(String, usize)> = rows.iter().map(|r| (r.system.clone(), r.round)).collect();
    keys.dedup();
    for (sys, round) in keys {
        let rs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.system == sys && r.round == round)
            .collect();
        let s = out.entry(sys.clone()).or_default();
        let held = rs
            .iter()
            .filter(|r| r.rate.is_some() && r.ok())
            .filter_map(|r| r.rate)
            .max()
            .unwrap_or(0);
        s.sustained.push(held);
        if let Some(f) = rs.iter().find(|r| r.rate.is_none()) {
            s.flood.push(f.delivered_rate());
            s.flood_cpu.push(f.procs.first().map_or(0.0, |p| p.1));
        }
        if let Some(r) = rs.iter().find(|r| r.rate == Some(20_000)) {
            s.us_at_20k.push(r.us_per_msg());
        }
        if held > 0 {
            let half = held / 2;
            if let Some(r) = rs
                .iter()
                .filter(|r| r.rate.is_some())
                .min_by_key(|r| r.rate.unwrap_or(0).abs_diff(half))
            {
                s.p99_half.push(r.p99);
            }
        }
        for r in &rs {
            if let Some(p) = r.procs.first() {
                s.rss = s.rss.max(p.2);
            }
            if let Some(p) = r.procs.get(1) {
                s.broker_rss = s.broker_rss.max(p.2);
            }
        }
    }
    out
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn range(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if fmt(lo) == fmt(hi) {
        fmt(lo)
    } else {
        format!("{}–{}", fmt(lo), fmt(hi))
    }
}

fn k(v: f64) -> String {
    format!("{:.0}k", v / 1000.0)
}

fn write_outputs(o: &Opts, machine: &str, rows: &[Row]) {
    let stamp = Command::new("date")
        .arg("+%Y-%m-%d %H:%M UTC")
        .env("TZ", "UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // CSV: every step.
    let mut csv = String::from("round,system,qos,rate,sent,received,lost,dup,out_of_order,send_s,drain_s,delivered_per_s,p50_ms,p99_ms,max_ms,cpu_system_pct,rss_system_mib,cpu_broker_pct,rss_broker_mib,cpu_generator_pct,us_per_msg\n");
    for r in rows {
        let p = |i: usize| r.procs.get(i).map_or((f64::NAN, f64::NAN), |p| (p.1, p.2));
        let (c0, m0) = p(0);
        let (c1, m1) = p(1);
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.0},{:.3},{:.3},{:.3},{:.1},{:.1},{:.1},{:.1},{:.1},{:.2}",
            r.round, r.system, r.qos, rate_word(r.rate), r.sent, r.received, r.lost, r.dup, r.ooo,
            r.send_secs, r.drain_secs, r.delivered_rate(), r.p50, r.p99, r.max, c0, m0, c1, m1,
            r.gen_cpu, r.us_per_msg()
        );
    }
    let tag = format!("qos{}", o.qos);
    std::fs::write(o.out.join(format!("results-{tag}.csv")), &csv).unwrap();

    // Markdown: the summary per system, then the goals as ratios.
    let sums = summarize(rows);
    let mut md = format!(
        "End to end, QoS {}, {} devices, {} s steps, a flood of {} messages, {} round(s) alternating ({stamp}).\n\
         Machine: {machine}. Everything (the generator, the brokers, the systems) shares these cores.\n\n\
         | system | sustained (no loss, p99 < 50 ms) | flood delivered | CPU of the system at the flood | CPU µs/msg at 20k/s | p99 at half its sustained rate | peak RSS |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        o.qos, o.devices, o.seconds, o.flood, o.rounds
    );
    let order = SYSTEMS;
    let mut names: Vec<&String> = sums.keys().collect();
    names.sort_by_key(|n| {
        order
            .iter()
            .position(|o| n.starts_with(o))
            .unwrap_or(order.len())
    });
    for n in &names {
        let s = &sums[*n];
        let sustained: Vec<f64> = s.sustained.iter().map(|v| *v as f64).collect();
        let _ = writeln!(
            md,
            "| {n} | {}/s | {}/s | {} | {} | {} | {:.0} MiB{} |",
            range(&sustained, k),
            range(&s.flood, k),
            range(&s.flood_cpu, |v| format!("{v:.0}%")),
            range(&s.us_at_20k, |v| format!("{v:.1}")),
            range(&s.p99_half, |v| format!("{v:.1} ms")),
            s.rss,
            if s.broker_rss > 0.0 {
                format!(" (+ Mosquitto {:.0} MiB)", s.broker_rss)
            } else {
                String::new()
            }
        );
    }
    md.push_str(&goals(&sums));
    std::fs::write(o.out.join(format!("results-{tag}.md")), &md).unwrap();
    println!("\n{md}");
    chart(o, rows, &tag);
    println!(
        "written: {}",
        o.out
            .join(format!("results-{tag}.{{csv,md,png}}"))
            .display()
    );
}

/// The goals as ratios of this run's own numbers.
fn goals(sums: &BTreeMap<String, Summary>) -> String {
    // With several engines (`--engines before,after`) the goals are the last one's.
    let get = |n: &str| {
        sums.get(n).cloned().or_else(|| {
            sums.iter()
                .rfind(|(k, _)| k.starts_with(&format!("{n}#")))
                .map(|(_, v)| v.clone())
        })
    };
    let mut md = String::from("\n| goal | measured | met |\n| --- | --- | --- |\n");
    let mut line = |goal: &str, value: f64, want: f64, above: bool, unit: &str| {
        let met = if value.is_nan() {
            "not measured"
        } else if (above && value >= want) || (!above && value <= want) {
            "yes"
        } else {
            "**no**"
        };
        let _ = writeln!(md, "| {goal} | {value:.2}{unit} | {met} |");
    };
    let sus = |s: &Option<Summary>| {
        s.as_ref().map_or(f64::NAN, |s| {
            mean(&s.sustained.iter().map(|v| *v as f64).collect::<Vec<_>>())
        })
    };
    let flood = |s: &Option<Summary>| s.as_ref().map_or(f64::NAN, |s| mean(&s.flood));
    let us = |s: &Option<Summary>| s.as_ref().map_or(f64::NAN, |s| mean(&s.us_at_20k));
    let rss = |s: &Option<Summary>| s.as_ref().map_or(f64::NAN, |s| s.rss);
    let p99h = |s: &Option<Summary>| s.as_ref().map_or(f64::NAN, |s| mean(&s.p99_half));
    let (rc, emb, nr, br, relay) = (
        get("rulechain"),
        get("embedded"),
        get("node-red"),
        get("bridge"),
        get("relay"),
    );
    line(
        "rulechain sustained ÷ Node-RED's ≥ 2",
        sus(&rc) / sus(&nr),
        2.0,
        true,
        "×",
    );
    line(
        "rulechain sustained ÷ the bridge's ≥ 1.3",
        sus(&rc) / sus(&br),
        1.3,
        true,
        "×",
    );
    line(
        "rulechain flood ÷ the bridge's ≥ 1.1",
        flood(&rc) / flood(&br),
        1.1,
        true,
        "×",
    );
    line(
        "rulechain CPU per message at 20k/s ÷ the bridge's ≤ 0.5",
        us(&rc) / us(&br),
        0.5,
        false,
        "×",
    );
    line(
        "rulechain peak RSS ÷ Node-RED's ≤ 0.1",
        rss(&rc) / rss(&nr),
        0.1,
        false,
        "×",
    );
    line(
        "rulechain p99 at half its sustained rate < 5 ms",
        p99h(&rc),
        5.0,
        false,
        " ms",
    );
    line(
        "rulechain flood ÷ the relay's (the two-hop ceiling) ≥ 0.9",
        flood(&rc) / flood(&relay),
        0.9,
        true,
        "×",
    );
    line(
        "embedded sustained ≥ 100k msg/s",
        sus(&emb) / 1000.0,
        100.0,
        true,
        "k/s",
    );
    line(
        "embedded p99 at half its sustained rate < 5 ms",
        p99h(&emb),
        5.0,
        false,
        " ms",
    );
    line(
        "embedded peak RSS through the flood < 100 MiB",
        rss(&emb),
        100.0,
        false,
        " MiB",
    );
    md
}

/// A PNG chart (gnuplot): delivered rate and p99 against the offered rate, per system, the
/// mean of the rounds.
fn chart(o: &Opts, rows: &[Row], tag: &str) {
    let mut series: BTreeMap<String, BTreeMap<u64, Vec<&Row>>> = BTreeMap::new();
    for r in rows {
        if let Some(rate) = r.rate {
            series
                .entry(r.system.clone())
                .or_default()
                .entry(rate)
                .or_default()
                .push(r);
        }
    }
    let mut data = String::new();
    let mut names = Vec::new();
    for (sys, steps) in &series {
        let _ = writeln!(data, "# {sys}");
        for (rate, rs) in steps {
            let d = mean(&rs.iter().map(|r| r.delivered_rate()).collect::<Vec<_>>());
            let p99 = mean(&rs.iter().map(|r| r.p99).collect::<Vec<_>>());
            let _ = writeln!(data, "{} {:.0} {:.3}", rate, d, p99.max(0.01));
        }
        data.push_str("\n\n");
        names.push(sys.clone());
    }
    let dat = o.out.join(format!("chart-{tag}.dat"));
    std::fs::write(&dat, data).unwrap();
    let png = o.out.join(format!("results-{tag}.png"));
    let plots = |col: usize| {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "'{}' index {i} using ($1/1000):(${col}{}) with linespoints title '{n}'",
                    dat.display(),
                    if col == 2 { "/1000" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let script = format!(
        "set terminal pngcairo size 1400,560 font 'sans,11'\nset output '{}'\nset multiplot layout 1,2 title 'MQTT in → chain → MQTT out, QoS {}'\n\
         set key top left\nset grid\nset xlabel 'offered (k msg/s)'\nset ylabel 'delivered (k msg/s)'\nplot {}\n\
         set logscale y\nset key top left\nset ylabel 'p99 latency (ms, log)'\nplot {}\nunset multiplot\n",
        png.display(),
        o.qos,
        plots(2),
        plots(3)
    );
    let gp = o.out.join(format!("chart-{tag}.gp"));
    std::fs::write(&gp, script).unwrap();
    match Command::new("gnuplot").arg(&gp).status() {
        Ok(s) if s.success() => {}
        _ => {
            eprintln!("gnuplot failed or is missing: no chart (benches/compare/run.sh installs it)")
        }
    }
}

/// The minimal relay: one connection subscribed to the telemetry, every message republished
/// to `out/{device}` unchanged, acknowledgements and publishes written once per read.
fn relay(port: u16, qos: u8) {
    let mut c = mqtt::Conn::connect(port, "compare-relay").expect("relay connects");
    c.subscribe(&["site/+/device/+/telemetry"], qos)
        .expect("relay subscribes");
    let mut pkid: u16 = 0;
    let mut got = Vec::new();
    loop {
        match c.read(|p| {
            if let Packet::Publish(p) = p {
                got.push(p);
            }
        }) {
            Ok(true) => {}
            _ => return,
        }
        for p in got.drain(..) {
            if qos > 0 {
                c.puback(p.pkid);
                pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            }
            let device = p.topic.split('/').nth(3).unwrap_or("");
            let topic = format!("out/{device}");
            c.publish(&topic, qos, pkid, &p.payload);
        }
        if c.flush().is_err() {
            return;
        }
    }
}
