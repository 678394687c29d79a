//! Alarm notifications, measured end to end: a release build of `rulechain run` on its
//! embedded broker, a chain that raises and clears an alarm on every other message of a device,
//! and a Slack bot channel pointed at a Slack-shaped server of this program's own (it answers
//! `chat.postMessage` and `chat.update` as Slack does, on 127.0.0.1).
//!
//! - **transitions**: `--rate` alarm transitions per second (half created, half cleared) for
//!   `--seconds`, over `--devices` devices: the time from the publish to the Slack request
//!   that shows it (the message posted for a creation, the edit for a clear), p50/p99/max;
//!   and the shape: one top-level message per alarm, one edit and one thread reply per later
//!   transition, nothing else.
//! - **ack**: `--acks` open alarms, each acknowledged through the API (as the dashboard does):
//!   the time from the request to the edit of its Slack message.
//!
//! `cargo build --release && cargo bench --bench alarms -- [--rate 100] [--seconds 20]
//! [--devices 50] [--acks 50] [--engine PATH]`

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::QoS;
use serde_json::{json, Value};

struct Args {
    /// The engine binary (default: the release build).
    engine: std::path::PathBuf,
    rate: u64,
    seconds: u64,
    devices: usize,
    acks: usize,
}

fn args() -> Args {
    let mut a = Args {
        engine: release_bin(),
        rate: 100,
        seconds: 20,
        devices: 50,
        acks: 50,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--rate" => a.rate = next.parse().expect("--rate N"),
            "--seconds" => a.seconds = next.parse().expect("--seconds N"),
            "--devices" => a.devices = next.parse().expect("--devices N"),
            "--acks" => a.acks = next.parse().expect("--acks N"),
            "--engine" => a.engine = std::path::PathBuf::from(next),
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

/// A request the Slack-shaped server got: when, the method, the body.
struct Call {
    at: Instant,
    method: String,
    body: Value,
}

#[derive(Default)]
struct Slack {
    calls: Mutex<Vec<Call>>,
    posted: Mutex<u64>,
}

impl Slack {
    fn start() -> (Arc<Slack>, u16) {
        let s = Arc::new(Slack::default());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ss = s.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let ss = ss.clone();
                std::thread::spawn(move || ss.serve(c));
            }
        });
        (s, port)
    }

    /// One connection, its requests in turn (reqwest keeps connections alive).
    fn serve(&self, mut s: std::net::TcpStream) {
        use std::io::{BufRead, BufReader, Read};
        let _ = s.set_nodelay(true);
        let mut r = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            let at = Instant::now();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let method = path.rsplit('/').next().unwrap_or("").to_string();
            let answer = match method.as_str() {
                "chat.postMessage" if body["thread_ts"].is_string() => {
                    json!({"ok": true, "channel": "C1", "ts": "reply"})
                }
                "chat.postMessage" => {
                    let mut p = self.posted.lock().unwrap();
                    *p += 1;
                    json!({"ok": true, "channel": "C1", "ts": format!("1.{:06}", *p)})
                }
                _ => json!({"ok": true, "channel": "C1", "ts": body["ts"]}),
            }
            .to_string();
            self.calls.lock().unwrap().push(Call { at, method, body });
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            );
        }
    }
}

/// The device a Slack message is about (the attachment's Device field).
fn device_of(body: &Value) -> Option<String> {
    let blocks = body["attachments"][0]["blocks"].as_array()?;
    blocks.iter().find_map(|b| {
        b["fields"].as_array()?.iter().find_map(|f| {
            f["text"]
                .as_str()?
                .strip_prefix("*Device*\n")
                .map(str::to_string)
        })
    })
}

const CHAIN: &str = r#"
chain: hot
nodes:
  - id: check
    filter: msg.temp > 50
    else: cool
  - id: raise
    alarm: { type: Hot, severity: MAJOR, message: "${meta.device} at ${msg.temp}", pass: [created, acknowledged] }
  - id: tell
    notify: [slack]
    next: []
  - id: cool
    alarm: { type: Hot, action: clear }
    next: [tell]
"#;

/// A latency in µs, as `percentiles` takes it.
fn micros(d: Duration) -> u32 {
    d.as_micros() as u32
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("alarms: a benchmark; run it with `cargo bench --bench alarms`");
        return;
    }
    let a = args();
    let bin = a.engine.clone();
    assert!(
        bin.exists(),
        "build first: cargo build --release ({})",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("rc-bench-alarms-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/hot.yaml"), CHAIN).unwrap();
    let (slack, slack_port) = Slack::start();
    let (mqtt, http) = (free_port(), free_port());
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "embedded_broker: {{listen: 127.0.0.1:{mqtt}}}\nhttp: {{listen: 127.0.0.1:{http}}}\nstate_dir: state\nrules: rules\n\
             channels:\n  slack:\n    slack: {{token: xoxb-bench, channel: \"#bench\", api_url: \"http://127.0.0.1:{slack_port}\"}}\n    queue: 100000\n"
        ),
    )
    .unwrap();
    let engine = start_engine(&bin, &dir, "error", http);
    wait_port(mqtt);
    let c = client(mqtt, "bench-alarms", &[], None).await;
    println!(
        "machine: {} cores; engine {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bin.display()
    );

    // Transitions: each message of a device flips its alarm (created, cleared, created…).
    let total = a.rate * a.seconds;
    let mut open = vec![false; a.devices];
    let mut published: HashMap<(String, bool), Vec<Instant>> = HashMap::new();
    let start = Instant::now();
    let cpu0 = cpu_ticks(engine.0.id());
    for n in 0..total {
        let d = n as usize % a.devices;
        let device = format!("pump-{d}");
        let create = !open[d];
        open[d] = create;
        let temp = if create { 70 } else { 20 };
        published
            .entry((device.clone(), create))
            .or_default()
            .push(Instant::now());
        let _ = c
            .publish(
                format!("device/{device}/telemetry"),
                QoS::AtMostOnce,
                false,
                format!("{{\"temp\":{temp}}}"),
            )
            .await;
        let due = start + Duration::from_micros((n + 1) * 1_000_000 / a.rate.max(1));
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(w).await;
        }
    }
    let sent_for = start.elapsed();
    let expected_calls = {
        let creates: usize = published
            .iter()
            .filter(|(k, _)| k.1)
            .map(|(_, v)| v.len())
            .sum();
        let clears: usize = published
            .iter()
            .filter(|(k, _)| !k.1)
            .map(|(_, v)| v.len())
            .sum();
        creates + 2 * clears
    };
    let (_, _) = until_quiet(
        || slack.calls.lock().unwrap().len() as u64,
        Duration::from_secs(30),
    )
    .await;
    let cpu = cpu_ticks(engine.0.id()) - cpu0;
    // Match each Slack request to its publish: per device, the n-th post to the n-th
    // creation, the n-th edit to the n-th clear.
    let calls = std::mem::take(&mut *slack.calls.lock().unwrap());
    let mut seen: HashMap<(String, bool), usize> = HashMap::new();
    let (mut lat_create, mut lat_clear) = (Vec::new(), Vec::new());
    let (mut posts, mut edits, mut replies, mut other) = (0, 0, 0, 0);
    let mut edits_per_message: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_status: HashMap<String, Value> = HashMap::new();
    for call in &calls {
        let (create, lat) = match call.method.as_str() {
            "chat.postMessage" if call.body["thread_ts"].is_string() => {
                replies += 1;
                continue;
            }
            "chat.postMessage" => {
                posts += 1;
                (true, &mut lat_create)
            }
            "chat.update" => {
                edits += 1;
                *edits_per_message
                    .entry(call.body["ts"].as_str().unwrap_or("").to_string())
                    .or_default() += 1;
                // A second edit showing the same status is not a transition of its own.
                let status = call.body["attachments"][0]["blocks"][1]["fields"][3]["text"].clone();
                let ts = call.body["ts"].as_str().unwrap_or("").to_string();
                if last_status.insert(ts, status.clone()) == Some(status) {
                    continue;
                }
                (false, &mut lat_clear)
            }
            _ => {
                other += 1;
                continue;
            }
        };
        let Some(device) = device_of(&call.body) else {
            other += 1;
            continue;
        };
        let i = seen.entry((device.clone(), create)).or_default();
        if let Some(t) = published.get(&(device, create)).and_then(|v| v.get(*i)) {
            lat.push(micros(call.at.duration_since(*t)));
        }
        *i += 1;
    }
    let (c50, c99, cmax) = percentiles(&mut lat_create);
    let (l50, l99, lmax) = percentiles(&mut lat_clear);
    println!(
        "transitions: {total} in {:.1} s ({:.0}/s) over {} devices; Slack requests {} (expected {expected_calls})",
        sent_for.as_secs_f64(),
        total as f64 / sent_for.as_secs_f64(),
        a.devices,
        calls.len()
    );
    println!(
        "  created → message posted: p50 {c50:.1} ms, p99 {c99:.1} ms, max {cmax:.1} ms ({} matched)",
        lat_create.len()
    );
    println!(
        "  cleared → message edited: p50 {l50:.1} ms, p99 {l99:.1} ms, max {lmax:.1} ms ({} matched)",
        lat_clear.len()
    );
    println!(
        "  shape: {posts} messages, {edits} edits, {replies} thread replies, {other} other; every edit to a message posted: {}; most edits of one message: {}",
        edits_per_message.keys().all(|ts| ts.starts_with("1.")),
        edits_per_message.values().max().unwrap_or(&0)
    );
    println!(
        "  engine CPU: {:.1} ms per transition",
        cpu as f64 * 10.0 / total as f64
    );

    // Acknowledgements: open alarms on `acks` devices, each acknowledged through the API.
    for d in 0..a.acks {
        let device = format!("ack-{d}");
        let _ = c
            .publish(
                format!("device/{device}/telemetry"),
                QoS::AtMostOnce,
                false,
                "{\"temp\":70}",
            )
            .await;
    }
    let ids: Vec<String> = loop {
        let v: Value = serde_json::from_str(&http_get(http, "/api/alarms?status=ACTIVE_UNACK"))
            .unwrap_or(Value::Null);
        let ids: Vec<String> = v["alarms"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|a| a["id"].as_str())
                    .filter(|id| id.contains(":ack-"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() >= a.acks {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    until_quiet(
        || slack.calls.lock().unwrap().len() as u64,
        Duration::from_secs(10),
    )
    .await;
    slack.calls.lock().unwrap().clear();
    let mut asked: HashMap<String, Instant> = HashMap::new();
    for id in &ids {
        let device = id.split(':').nth(1).unwrap_or("").to_string();
        let enc: String = id
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        asked.insert(device, Instant::now());
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        let body = r#"{"by":"bench"}"#;
        let _ = write!(
            s,
            "POST /api/alarms/{enc}/ack HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_quiet(
        || slack.calls.lock().unwrap().len() as u64,
        Duration::from_secs(10),
    )
    .await;
    let mut lat_ack = Vec::new();
    for call in slack.calls.lock().unwrap().iter() {
        if call.method != "chat.update" {
            continue;
        }
        if let Some(t) = device_of(&call.body).and_then(|d| asked.get(&d)) {
            lat_ack.push(micros(call.at.duration_since(*t)));
        }
    }
    let (a50, a99, amax) = percentiles(&mut lat_ack);
    println!(
        "acknowledged through the API → message edited: p50 {a50:.1} ms, p99 {a99:.1} ms, max {amax:.1} ms ({} of {} edited)",
        lat_ack.len(),
        ids.len()
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
