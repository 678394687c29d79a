//! What the load tools share: ports, processes and their CPU time, an MQTT client that records
//! delivery latency (the send time rides in the payload as `"t":MICROS`), a Mosquitto of
//! their own.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A free loopback port, never one this process handed out before (the kernel may give a
/// just-released port again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

pub struct Proc(pub Child);

/// Starts `rulechain run --config rulechain.yaml` in `dir` with `RUST_LOG=rust_log` (its log on
/// this terminal) and waits until its HTTP port listens.
pub fn start_engine(
    bin: &std::path::Path,
    dir: &std::path::Path,
    rust_log: &str,
    http: u16,
) -> Proc {
    let engine = Proc(
        std::process::Command::new(bin)
            .args(["run", "--config", "rulechain.yaml"])
            .current_dir(dir)
            .env("RUST_LOG", rust_log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start rulechain"),
    );
    wait_port(http);
    engine
}

/// Waits until `count()` has not moved for a second (at most `cap`): the stragglers of a run.
/// Returns its last value and when it last moved.
pub async fn until_quiet(mut count: impl FnMut() -> u64, cap: Duration) -> (u64, Instant) {
    let start = Instant::now();
    let mut last = count();
    let mut moved = start;
    while moved.elapsed() < Duration::from_secs(1) && start.elapsed() < cap {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = count();
        if n != last {
            last = n;
            moved = Instant::now();
        }
    }
    (last, moved)
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
pub struct Recv {
    pub count: AtomicU64,
    pub lat: Mutex<Vec<u32>>,
}

pub async fn client(port: u16, id: &str, subs: &[String], recv: Option<Arc<Recv>>) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    let (c, mut ev) = AsyncClient::new(o, 100_000);
    let mut net = ev.network_options();
    net.set_tcp_nodelay(true);
    ev.set_network_options(net);
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<()>(1);
    let subs: Vec<String> = subs.to_vec();
    let cc = c.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if subs.is_empty() {
                        let _ = ready_tx.try_send(());
                    }
                    for s in &subs {
                        let _ = cc.try_subscribe(s.clone(), QoS::AtMostOnce);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(r) = &recv {
                        r.count.fetch_add(1, Relaxed);
                        // The send time rides in the payload as `"t":MICROS`.
                        if let Some(t) = find_t(&p.payload) {
                            let l = now_us().saturating_sub(t).min(u32::MAX as u64) as u32;
                            r.lat.lock().unwrap().push(l);
                        }
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("connect");
    c
}

pub fn find_t(p: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(p).ok()?;
    let i = s.find("\"t\":")? + 4;
    let rest = s[i..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

pub fn start_mosquitto(dir: &Path, port: u16) -> Proc {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n"),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed: scripts/services.sh installs it");
    let p = Proc(
        Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto"),
    );
    wait_port(port);
    p
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`: the peak).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Peak RSS of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "VmHWM")
}

/// The body of `GET path` on a loopback port (HTTP/1.0: never chunked); empty when it fails.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut t = String::new();
    let _ = s.read_to_string(&mut t);
    t.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string())
}

/// A POST with a JSON body; gives the status code (0: no answer).
#[allow(dead_code)] // not every bench posts
pub fn http_post_json(port: u16, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut t = String::new();
    let _ = s.read_to_string(&mut t);
    t.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The engine's `/api/status` (`null` when it does not answer).
pub fn api_status(port: u16) -> Value {
    serde_json::from_str(&http_get(port, "/api/status")).unwrap_or(Value::Null)
}

/// Percentiles (ms) of latencies in µs: p50, p99, max.
pub fn percentiles(lat: &mut [u32]) -> (f64, f64, f64) {
    lat.sort_unstable();
    let q = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0
        }
    };
    (q(0.5), q(0.99), q(1.0))
}

/// The release build of the engine (`cargo build --release`), wherever the target dir is.
pub fn release_bin() -> std::path::PathBuf {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| root.join("target"), std::path::PathBuf::from)
        .join("release/rulechain")
}

/// The engine binaries to measure: those given with `--engines`, else the release build. Each
/// must exist.
pub fn engine_bins(given: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let bins = if given.is_empty() {
        vec![release_bin()]
    } else {
        given.to_vec()
    };
    for bin in &bins {
        assert!(
            bin.exists(),
            "build the engine first: cargo build --release ({})",
            bin.display()
        );
    }
    bins
}

/// A VictoriaMetrics of the tool's own (an InfluxDB-compatible write API) on a free port.
pub fn start_victoria(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let p = Proc(
        Command::new("/usr/bin/victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.join("vm").display()))
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("victoria-metrics is not installed: scripts/services.sh installs it"),
    );
    wait_port(port);
    (p, port)
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Default)]
pub struct WsRecv {
    pub frames: AtomicU64,
    pub lat: Mutex<Vec<u32>>,
    pub connected: AtomicU64,
    pub lagged: AtomicU64,
}

/// Connects and subscribes; a task reads every frame, recording the latency of data frames
/// (`"t":MICROS` in the payload) and, for `alarms`, the sequence numbers seen.
pub async fn ws_client(
    port: u16,
    room: String,
    recv: Arc<WsRecv>,
    seqs: Option<Arc<Mutex<Vec<u64>>>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let (mut ws, _): (Ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .ok()?;
    ws.send(Message::Text(
        format!("{{\"op\":\"subscribe\",\"rooms\":[\"{room}\"]}}").into(),
    ))
    .await
    .ok()?;
    recv.connected.fetch_add(1, Relaxed);
    Some(tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            if t.starts_with("{\"op\"") || t.contains("\"op\":\"") {
                if t.contains("lagged") {
                    recv.lagged.fetch_add(1, Relaxed);
                }
                continue;
            }
            recv.frames.fetch_add(1, Relaxed);
            if let Some(s) = &seqs {
                if let Some(seq) = serde_json::from_str::<Value>(&t)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                {
                    s.lock().unwrap().push(seq);
                }
            } else if let Some(sent) = find_t(t.as_bytes()) {
                let l = now_us().saturating_sub(sent).min(u32::MAX as u64) as u32;
                recv.lat.lock().unwrap().push(l);
            }
        }
    }))
}

pub async fn connect_all(
    port: u16,
    rooms: Vec<String>,
    recv: &Arc<WsRecv>,
    seqs: &[Arc<Mutex<Vec<u64>>>],
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (batch_i, batch) in rooms.chunks(250).enumerate() {
        let futs = batch.iter().enumerate().map(|(j, r)| {
            let s = seqs.get(batch_i * 250 + j).cloned();
            ws_client(port, r.clone(), recv.clone(), s)
        });
        for t in futures_util::future::join_all(futs)
            .await
            .into_iter()
            .flatten()
        {
            tasks.push(t);
        }
    }
    tasks
}
