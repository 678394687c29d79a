//! Several instances as one engine, as real processes: Mosquitto, Redis (append-only, so that a
//! restart keeps its data) and three or four `rulechain run` processes on 127.0.0.1, each with
//! `cluster:` in its config. What a user relies on: every message processed once in steady
//! state and in order per device; nothing lost when the ingest holder or an owner is killed,
//! when an owner is paused past its lease, when Redis restarts, when a fourth instance joins;
//! an alarm raised once and cleared once across a failover; a paused owner that wakes up
//! writes nothing.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, http, http_as, tempdir, wait_for, Engine, Mosquitto, Mqtt, Redis};
use rulechain::live::cluster::placement::partition_of;
use serde_json::Value;

const PARTITIONS: u32 = 32;

const ECHO: &str = r#"
chain: echo
on: { kind: telemetry }
nodes:
  - id: out
    publish: { topic: "out/${meta.device}", qos: 1 }
  - id: show
    websocket: {}
"#;

const HOT: &str = r#"
chain: hot
on: { kind: telemetry }
nodes:
  - id: hot
    filter: msg.v > 10
    for: 5s
    else: cool
  - id: raise
    alarm: { type: Hot, severity: MAJOR }
  - id: tell
    publish: { topic: "alarm/${meta.device}", qos: 1 }
  - id: page
    notify: [hook]
    next: []
  - id: cool
    alarm: { type: Hot, action: clear }
  - id: tell-clear
    publish: { topic: "alarm/${meta.device}", qos: 1 }
  - id: page-clear
    notify: [hook]
"#;

/// A webhook receiver: a real HTTP server on loopback that answers 503 while `failing` and
/// records every request's `Idempotency-Key` and body otherwise.
#[derive(Clone, Default)]
struct Hook {
    failing: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Hook {
    fn start() -> (Hook, u16) {
        let h = Hook::default();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hh = h.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let hh = hh.clone();
                std::thread::spawn(move || hh.handle(s));
            }
        });
        (h, port)
    }

    fn handle(&self, mut s: std::net::TcpStream) {
        use std::io::Write;
        let Some((_, headers, body)) = common::read_request(&mut s) else {
            return;
        };
        let failing = self.failing.load(Ordering::SeqCst);
        if !failing {
            let body = serde_json::from_slice(&body).unwrap_or_default();
            let key = headers.get("idempotency-key").cloned().unwrap_or_default();
            self.got.lock().unwrap().push((key, body));
        }
        let status = if failing { "503 Busy" } else { "200 OK" };
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    fn keys(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The broker, Redis and the instances, each in its own directory with its own HTTP port.
struct Fleet {
    dir: PathBuf,
    broker: Mosquitto,
    redis: Redis,
    engines: Vec<Option<Engine>>,
    /// The webhook every instance's channel `hook` posts to.
    hook: Hook,
    hook_port: u16,
}

impl Fleet {
    fn start(name: &str, n: usize) -> Fleet {
        let dir = tempdir(name);
        let broker = Mosquitto::start(&dir);
        let redis = Redis::start_with(&dir, &["--appendonly", "yes"]);
        let (hook, hook_port) = Hook::start();
        let mut f = Fleet {
            dir,
            broker,
            redis,
            engines: Vec::new(),
            hook,
            hook_port,
        };
        for _ in 0..n {
            f.add();
        }
        f.settled(n);
        f
    }

    /// Starts one more instance (`rc-<n>`), and waits until it is ready.
    fn add(&mut self) -> usize {
        let i = self.engines.len() + 1;
        let dir = self.dir.join(format!("rc-{i}"));
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        std::fs::write(dir.join("rules/echo.yaml"), ECHO).unwrap();
        std::fs::write(dir.join("rules/hot.yaml"), HOT).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("rulechain.yaml"),
            format!(
                "mqtt: {{url: mqtt://127.0.0.1:{}, client_id: fleet}}\n\
                 http: {{listen: 127.0.0.1:{port}}}\nstate_dir: state\nrules: rules\n\
                 engine: {{checkpoint: 200ms}}\n\
                 cluster: {{redis: \"{}\", instance: rc-{i}, partitions: {PARTITIONS}, lease: 2s}}\n\
                 channels: {{hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}, retries: 30, repeat_interval: 2s}}}}\n",
                self.broker.port,
                self.redis.url(),
                self.hook_port,
            ),
        )
        .unwrap();
        let e = Engine::launch(&dir, port);
        wait_for(Duration::from_secs(15), || {
            matches!(http(port, "GET", "/readyz"), Some((200, _))).then_some(())
        })
        .unwrap_or_else(|| panic!("rc-{i} did not become ready:\n{}", e.log()));
        self.engines.push(Some(e));
        i
    }

    fn engine(&self, i: usize) -> &Engine {
        self.engines[i - 1].as_ref().expect("running")
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Engine)> {
        self.engines
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i + 1, e)))
    }

    fn cluster(&self, i: usize) -> Value {
        let (code, body) = http(self.engine(i).http, "GET", "/api/cluster").expect("answer");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `n` instances are alive and the partitions are spread over them as evenly
    /// as they go, each with an owner, as every live instance sees it; gives the first's view.
    fn settled(&self, n: usize) -> Value {
        let balanced = |c: &Value| -> Option<()> {
            let counts: Vec<usize> = c["instances"]
                .as_array()?
                .iter()
                .map(|i| i["partitions"].as_u64().unwrap_or(0) as usize)
                .collect();
            let (low, high) = (PARTITIONS as usize / n, (PARTITIONS as usize).div_ceil(n));
            (counts.len() == n
                && counts.iter().sum::<usize>() == PARTITIONS as usize
                && counts.iter().all(|k| (low..=high).contains(k))
                && c["owners"]
                    .as_array()?
                    .iter()
                    .all(|o| o["owner"].is_string())
                && c["ingest"].is_object())
            .then_some(())
        };
        let (first, _) = self.live().next().expect("an instance");
        wait_for(Duration::from_secs(20), || {
            let views: Vec<Value> = self.live().map(|(i, _)| self.cluster(i)).collect();
            views.iter().try_for_each(balanced)?;
            // The same owners in every view.
            let owners = |v: &Value| -> Vec<Value> {
                v["owners"]
                    .as_array()
                    .map(|o| o.iter().map(|x| x["owner"].clone()).collect())
                    .unwrap_or_default()
            };
            views
                .windows(2)
                .all(|w| owners(&w[0]) == owners(&w[1]))
                .then_some(())?;
            Some(self.cluster(first))
        })
        .unwrap_or_else(|| {
            panic!(
                "the cluster did not settle on {n} instances: {}",
                self.cluster(first)
            )
        })
    }

    /// The instance that owns `device` now (waiting while its partition is between owners).
    fn owner_of(&self, device: &str) -> usize {
        let (first, _) = self.live().next().unwrap();
        let p = partition_of(device, PARTITIONS) as usize;
        wait_for(Duration::from_secs(10), || {
            let c = self.cluster(first);
            let name = c["owners"][p]["owner"].as_str()?.to_string();
            name.trim_start_matches("rc-").parse().ok()
        })
        .expect("the partition has an owner")
    }

    fn ingest_holder(&self) -> usize {
        let (first, _) = self.live().next().unwrap();
        let c = self.cluster(first);
        c["ingest"]["instance"]
            .as_str()
            .unwrap()
            .trim_start_matches("rc-")
            .parse()
            .unwrap()
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut e) = self.engines[i - 1].take() {
            e.kill9();
        }
    }

    fn redis_get(&self, args: &[&str]) -> Option<String> {
        let mut c = redis::Client::open(self.redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let v: Option<Vec<u8>> = cmd.query(&mut c).unwrap();
        v.map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

/// Publishes `{"seq": s, "v": 1}` for `devices` devices, `per_device` each, round-robin, at
/// about `rate` messages a second, at QoS 1.
async fn publish(port: u16, id: &str, devices: usize, range: std::ops::Range<u64>, rate: u64) {
    let client = Mqtt::connect(port, id, true, &[]).await;
    let pause = Duration::from_micros(1_000_000 / rate.max(1));
    for s in range {
        for d in 0..devices {
            client
                .publish(
                    &format!("device/d{d}/telemetry"),
                    format!("{{\"seq\":{s},\"v\":1}}"),
                )
                .await;
            tokio::time::sleep(pause).await;
        }
    }
    // Let the client's last QoS 1 publishes be acknowledged before it goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// What the subscriber saw of `out/d<N>`: every seq in arrival order, per device.
#[derive(Default)]
struct Seen(BTreeMap<String, Vec<u64>>);

impl Seen {
    async fn collect(&mut self, sub: &mut Mqtt, devices: usize, upto: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && !self.complete(devices, upto) {
            for (t, v) in sub.drain(Duration::from_millis(300)).await {
                if let (Some(d), Some(s)) = (t.strip_prefix("out/"), v["seq"].as_u64()) {
                    self.0.entry(d.to_string()).or_default().push(s);
                }
            }
        }
    }

    fn complete(&self, devices: usize, upto: u64) -> bool {
        (0..devices).all(|d| {
            self.0
                .get(&format!("d{d}"))
                .is_some_and(|v| (0..upto).all(|s| v.contains(&s)))
        })
    }

    /// Seqs of 0..upto missing, per device.
    fn missing(&self, devices: usize, upto: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for d in 0..devices {
            let id = format!("d{d}");
            let got = self.0.get(&id).cloned().unwrap_or_default();
            out.extend(
                (0..upto)
                    .filter(|s| !got.contains(s))
                    .map(|s| (id.clone(), s)),
            );
        }
        out
    }

    /// Devices whose first arrivals of each seq are not in order.
    fn out_of_order(&self) -> Vec<(String, Vec<u64>)> {
        self.0
            .iter()
            .filter_map(|(d, v)| {
                let mut firsts = Vec::new();
                for s in v {
                    if !firsts.contains(s) {
                        firsts.push(*s);
                    }
                }
                (!firsts.windows(2).all(|w| w[0] < w[1])).then(|| (d.clone(), v.clone()))
            })
            .collect()
    }

    fn duplicates(&self) -> usize {
        self.0
            .values()
            .map(|v| {
                let mut u = v.clone();
                u.sort_unstable();
                u.dedup();
                v.len() - u.len()
            })
            .sum()
    }
}

/// A WebSocket client of one instance, its frames read by a task of its own.
struct Ws {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Ws {
    fn drop(&mut self) {
        // The reader holds the connection: aborting it closes the connection.
        self.reader.abort();
    }
}

impl Ws {
    /// Connects to `port`, sends `subscribe` (the whole frame) and waits for `subscribed`.
    async fn subscribe(port: u16, subscribe: Value) -> Ws {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .expect("connect /ws");
        ws.send(Message::Text(subscribe.to_string().into()))
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let _ = tx.send(serde_json::from_str::<Value>(&t).unwrap());
                }
            }
        });
        // Frames before `subscribed` are the snapshots (or the missed frames): kept.
        let mut before = Vec::new();
        loop {
            let v = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("subscribed")
                .expect("the connection stays");
            if v["op"] == "subscribed" {
                break;
            }
            before.push(v);
        }
        let (t2, r2) = tokio::sync::mpsc::unbounded_channel();
        for v in before {
            let _ = t2.send(v);
        }
        tokio::spawn(async move {
            while let Some(v) = rx.recv().await {
                if t2.send(v).is_err() {
                    break;
                }
            }
        });
        Ws { rx: r2, reader }
    }

    /// Every frame received within `within`.
    async fn frames(&mut self, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(Some(v)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(v);
        }
        out
    }
}

/// Each room's (seq, the message's own `seq`) in arrival order, of the room frames (not the
/// snapshots and other ops).
fn by_room(frames: &[Value]) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut m: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for f in frames.iter().filter(|f| f["op"].is_null()) {
        m.entry(f["room"].as_str().unwrap().to_string())
            .or_default()
            .push((
                f["seq"].as_u64().unwrap(),
                f["data"]["seq"].as_u64().unwrap_or(u64::MAX),
            ));
    }
    m
}

fn processed(e: &Engine) -> u64 {
    e.status()["counters"]["processed"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_process_every_message_once_in_order_and_lose_nothing_when_the_ingest_holder_is_killed(
) {
    let mut fleet = Fleet::start("cluster-ingest", 3);
    let view = fleet.cluster(3);
    // Every instance owns partitions; the placement spread them evenly.
    for i in view["instances"].as_array().unwrap() {
        let n = i["partitions"].as_u64().unwrap();
        assert!((10..=11).contains(&n), "{view}");
        assert!(i["http"].is_string(), "{view}");
    }
    assert_eq!(view["partitions"], PARTITIONS);
    let mut sub = Mqtt::connect(fleet.broker.port, "watcher", true, &["out/#"]).await;
    // A dashboard on instance 3 follows every device, whichever instance processes it.
    let mut ws = Ws::subscribe(
        fleet.engine(3).http,
        serde_json::json!({"op": "subscribe", "rooms": ["device/*"]}),
    )
    .await;

    // Steady state: 30 devices x 20 messages; each processed exactly once, in order.
    publish(fleet.broker.port, "pub-1", 30, 0..20, 2_000).await;
    let mut seen = Seen::default();
    seen.collect(&mut sub, 30, 20, Duration::from_secs(20))
        .await;
    assert_eq!(seen.missing(30, 20), vec![]);
    assert_eq!(seen.duplicates(), 0, "steady state repeats nothing");
    assert_eq!(seen.out_of_order(), vec![]);
    // Every device's room on instance 3: seq 1..=20, no gap, no repeat, the messages in order.
    let rooms = by_room(&ws.frames(Duration::from_secs(2)).await);
    assert_eq!(rooms.len(), 30, "{:?}", rooms.keys());
    for (room, frames) in &rooms {
        let want: Vec<(u64, u64)> = (0..20).map(|i| (i + 1, i)).collect();
        assert_eq!(frames, &want, "{room}");
    }
    drop(ws);
    // Any instance answers for the fleet: the whole list, and one device through its owner.
    for i in 1..=3 {
        let (code, body) = http(fleet.engine(i).http, "GET", "/api/devices").unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["total"], 30, "rc-{i}: {body}");
        assert_eq!(v["devices"].as_array().unwrap().len(), 30);
        let (code, body) = http(fleet.engine(i).http, "GET", "/api/devices/d7").unwrap();
        assert_eq!(code, 200, "rc-{i}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["id"], "d7", "rc-{i}: {body}");
        assert_eq!(v["latest"]["seq"].as_f64(), Some(19.0), "rc-{i}: {body}");
    }

    // The dashboard comes back on instance 2 after missing 5 messages a device: it gets
    // exactly those, numbered on from where it left.
    publish(fleet.broker.port, "pub-1b", 30, 20..25, 2_000).await;
    seen.collect(&mut sub, 30, 25, Duration::from_secs(20))
        .await;
    let since: serde_json::Map<String, Value> = (0..30)
        .map(|d| (format!("device/d{d}"), Value::from(20)))
        .collect();
    let rooms_list: Vec<String> = (0..30).map(|d| format!("device/d{d}")).collect();
    let mut ws = Ws::subscribe(
        fleet.engine(2).http,
        serde_json::json!({"op": "subscribe", "rooms": rooms_list, "since": since}),
    )
    .await;
    let rooms = by_room(&ws.frames(Duration::from_secs(2)).await);
    assert_eq!(rooms.len(), 30);
    for (room, frames) in &rooms {
        let want: Vec<(u64, u64)> = (20..25).map(|i| (i + 1, i)).collect();
        assert_eq!(frames, &want, "{room}");
    }
    drop(ws);

    // The cluster's metrics: every one the Grafana dashboard queries exists, and every one is
    // documented.
    let (_, metrics) = http(fleet.engine(1).http, "GET", "/metrics").unwrap();
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/rulechain.json"
    ))
    .unwrap();
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.match_indices("rulechain_cluster_")
            .map(|(i, _)| {
                text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    };
    let exposed: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("#"), Some("TYPE"), Some(n), Some("counter")) => Some(format!("{n}_total")),
                (Some("#"), Some("TYPE"), Some(n), Some(_)) => Some(n.to_string()),
                _ => None,
            }
        })
        .filter(|n| n.starts_with("rulechain_cluster_"))
        .collect();
    assert!(exposed.len() >= 10, "{exposed:?}");
    for n in names(&dash) {
        assert!(
            exposed.contains(&n),
            "the dashboard queries {n}: not in /metrics"
        );
    }
    for n in &exposed {
        assert!(
            docs.contains(&format!("`{n}`")),
            "{n} is not in docs/metrics.md"
        );
    }
    // Every instance ran chains: the devices are spread over all three.
    for (i, e) in fleet.live() {
        assert!(processed(e) > 0, "rc-{i} processed nothing");
    }
    let total: u64 = fleet.live().map(|(_, e)| processed(e)).sum();
    // Two chains per message (echo and hot), once each.
    assert_eq!(total, 750, "every message (30 x 25) processed exactly once");

    // A trace started on an instance that does not own the device follows its messages on
    // the owner, and the instance it was started on shows the entries.
    let traced = "trace-1";
    let owner = fleet.owner_of(traced);
    let here = (1..=3).find(|i| *i != owner).unwrap();
    let (code, body) = http_as(
        fleet.engine(here).http,
        "POST",
        "/api/trace",
        &[("Content-Type", "application/json")],
        &format!(r#"{{"device": "{traced}", "limit": 5}}"#),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let probe = Mqtt::connect(fleet.broker.port, "trace-pub", true, &[]).await;
    probe
        .publish(&format!("device/{traced}/telemetry"), r#"{"v":1}"#)
        .await;
    let entries = wait_for(Duration::from_secs(10), || {
        let (_, body) = http(fleet.engine(here).http, "GET", "/api/trace").unwrap();
        let v: Value = serde_json::from_str(&body).ok()?;
        let e = v["entries"].as_array()?.clone();
        (!e.is_empty()).then_some(e)
    })
    .unwrap_or_else(|| panic!("no trace entries on rc-{here} for {traced} owned by rc-{owner}"));
    assert!(entries.iter().all(|e| e["device"] == traced), "{entries:?}");
    let (code, _) = http(fleet.engine(here).http, "DELETE", "/api/trace").unwrap();
    assert_eq!(code, 200);
    drop(probe);

    // Under load, the ingest holder is killed: another takes the broker session over; nothing
    // is lost, every device's order is kept (a message the dead holder had stored but not yet
    // acknowledged may come twice).
    let holder = fleet.ingest_holder();
    let port = fleet.broker.port;
    let load = tokio::spawn(publish(port, "pub-2", 30, 25..60, 600));
    tokio::time::sleep(Duration::from_millis(700)).await;
    fleet.kill9(holder);
    load.await.unwrap();
    seen.collect(&mut sub, 30, 60, Duration::from_secs(30))
        .await;
    assert_eq!(seen.missing(30, 60), vec![], "nothing lost");
    assert_eq!(seen.out_of_order(), vec![], "order kept");
    let after = fleet.settled(2);
    assert_ne!(
        after["ingest"]["instance"],
        format!("rc-{holder}"),
        "{after}"
    );
    eprintln!(
        "ingest holder killed: {} duplicate outputs of 1800",
        seen.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_in_a_hold_raises_the_alarm_once_on_time_and_a_paused_owner_writes_nothing()
{
    let mut fleet = Fleet::start("cluster-owner", 3);
    let mut alarms = Mqtt::connect(fleet.broker.port, "alarms", true, &["alarm/#"]).await;
    let client = Mqtt::connect(fleet.broker.port, "pub", true, &[]).await;
    // Two devices of one instance that does not hold the ingest: `open` has an alarm open
    // already, `held` enters its 5 s hold; then the instance is killed 1 s into the hold.
    let ingest = fleet.ingest_holder();
    let victim = (1..=3).find(|i| *i != ingest).unwrap();
    let mine: Vec<String> = (0..400)
        .map(|n| format!("h{n}"))
        .filter(|d| fleet.owner_of(d) == victim)
        .take(3)
        .collect();
    let (open, held, early) = (&mine[0], &mine[1], &mine[2]);
    // A first alarm is raised and notified (delivered, confirmed): its owner reminds of it
    // every 2 s while it waits for an acknowledgement.
    client
        .publish(&format!("device/{early}/telemetry"), r#"{"v":20}"#)
        .await;
    let first = alarms
        .expect(Duration::from_secs(10), |t, _| t.ends_with(early.as_str()))
        .await
        .expect("the early alarm");
    let early_id = first.1["alarm"]["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(5), || {
        fleet
            .hook
            .keys()
            .contains(&format!("{early_id}/created"))
            .then_some(())
    })
    .expect("the early alarm's notification");
    // The webhook receiver is down when the next alarm is raised: its notification waits,
    // retried by its owner, unconfirmed, when that owner is killed.
    fleet.hook.failing.store(true, Ordering::SeqCst);
    client
        .publish(&format!("device/{open}/telemetry"), r#"{"v":20}"#)
        .await;
    let raised = alarms
        .expect(Duration::from_secs(10), |t, _| t.ends_with(open.as_str()))
        .await
        .expect("the first alarm");
    assert_eq!(raised.1["alarm"]["transition"], "created");
    let sent = Instant::now();
    client
        .publish(&format!("device/{held}/telemetry"), r#"{"v":20}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    fleet.kill9(victim);
    fleet.hook.failing.store(false, Ordering::SeqCst);
    // Its partitions move within the lease and a little; the hold completes on time (5 s
    // after its message, give or take the move), the open alarm is not raised again.
    let got = alarms
        .expect(Duration::from_secs(10), |t, _| t.ends_with(held.as_str()))
        .await
        .expect("the held alarm is raised by the new owner");
    let took = sent.elapsed();
    assert_eq!(got.1["alarm"]["transition"], "created");
    assert!(
        took >= Duration::from_millis(4_900) && took < Duration::from_millis(7_500),
        "the hold took {took:?}"
    );
    fleet.settled(2);
    // An operator acknowledges the held alarm on the instance that does not own it: the owner
    // does it; every instance lists it acknowledged; a second time is refused.
    let held_id = got.1["alarm"]["id"].as_str().unwrap().to_string();
    let owner = fleet.owner_of(held);
    let other = fleet.live().map(|(i, _)| i).find(|i| *i != owner).unwrap();
    let path = format!("/api/alarms/{held_id}/ack");
    let (code, body) = http(fleet.engine(other).http, "POST", &path).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ACTIVE_ACK"), "{body}");
    for (i, e) in fleet.live() {
        wait_for(Duration::from_secs(5), || {
            let (_, body) = http(e.http, "GET", "/api/alarms").unwrap();
            let v: Value = serde_json::from_str(&body).ok()?;
            v["alarms"]
                .as_array()?
                .iter()
                .any(|a| a["id"] == held_id.as_str() && a["status"] == "ACTIVE_ACK")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("rc-{i} does not list {held_id} acknowledged"));
    }
    let (code, body) = http(fleet.engine(other).http, "POST", &path).unwrap();
    assert_eq!(code, 409, "{body}");
    // The owner's refusal, with the alarm's status, comes back through the other instance.
    assert!(body.contains("already acknowledged (ACTIVE_ACK)"), "{body}");
    // A comment and a silence made on one instance are every instance's.
    let ask = |i: usize, method: &str, path: &str, body: &str| {
        let (code, out) = http_as(
            fleet.engine(i).http,
            method,
            path,
            &[("content-type", "application/json")],
            body,
        )
        .unwrap();
        (
            code,
            serde_json::from_str::<Value>(&out).unwrap_or(Value::Null),
        )
    };
    let (code, _) = ask(
        other,
        "POST",
        &format!("/api/alarms/{held_id}/comments"),
        r#"{"text": "on it", "by": "ana"}"#,
    );
    assert_eq!(code, 201);
    let (code, made) = ask(
        other,
        "POST",
        "/api/silences",
        r#"{"matchers": {"device": "zz-*"}, "duration": "1h", "comment": "fleet"}"#,
    );
    assert_eq!(code, 201, "{made}");
    for (i, _) in fleet.live() {
        let (_, h) = ask(i, "GET", &format!("/api/alarms/{held_id}/history"), "");
        assert!(
            h["history"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["kind"] == "comment" && e["by"] == "ana")),
            "rc-{i} has the comment: {h}"
        );
        let (_, s) = ask(
            i,
            "GET",
            &format!("/api/silences/{}", made["id"].as_str().unwrap()),
            "",
        );
        assert_eq!(s["state"], "active", "rc-{i} has the silence: {s}");
    }
    // The alarm notified before the kill, still unacknowledged, is reminded of (every 2 s) by
    // the instance that took its partition over: reminders move with the partition.
    let since_kill = fleet.hook.keys().len();
    wait_for(Duration::from_secs(8), || {
        fleet.hook.keys()[since_kill..]
            .iter()
            .any(|k| k.starts_with(&format!("{early_id}/created/reminder/")))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no reminder of {early_id} after the move: {:?}",
            fleet.hook.keys()
        )
    });
    // Both clear once each, on whichever instance owns them now.
    for d in [open, held] {
        client
            .publish(&format!("device/{d}/telemetry"), r#"{"v":1}"#)
            .await;
    }
    let rest = alarms.drain(Duration::from_secs(3)).await;
    let per: HashMap<String, Vec<String>> = rest.iter().fold(HashMap::new(), |mut m, (t, v)| {
        m.entry(t.clone()).or_default().push(
            v["alarm"]["transition"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        m
    });
    assert_eq!(per[&format!("alarm/{open}")], vec!["cleared"], "{rest:?}");
    assert_eq!(per[&format!("alarm/{held}")], vec!["cleared"], "{rest:?}");
    // The webhook got one notification per transition, the one the dead owner left
    // unconfirmed delivered by the next (each with its key; at most one repeat for the kill).
    let want: std::collections::BTreeSet<String> = [open, held]
        .iter()
        .flat_map(|d| {
            let id = |t: &str| {
                rest.iter()
                    .chain([&raised, &got])
                    .find(|(topic, v)| topic.ends_with(d.as_str()) && v["alarm"]["transition"] == t)
                    .map(|(_, v)| v["alarm"]["id"].as_str().unwrap().to_string())
                    .unwrap()
            };
            [
                format!("{}/created", id("created")),
                format!("{}/cleared", id("cleared")),
            ]
        })
        .collect();
    let transitions = || -> Vec<String> {
        fleet
            .hook
            .keys()
            .into_iter()
            .filter(|k| !k.contains("/reminder/") && !k.starts_with(&early_id))
            .collect()
    };
    let keys = wait_for(Duration::from_secs(10), || {
        let k = transitions();
        let unique: std::collections::BTreeSet<String> = k.iter().cloned().collect();
        (unique == want).then_some(k)
    })
    .unwrap_or_else(|| panic!("webhook keys {:?}, want {want:?}", fleet.hook.keys()));
    assert!(keys.len() <= want.len() + 1, "{keys:?}");

    // An owner paused past its lease: its partitions move; woken, it writes nothing (Redis
    // refuses its epoch) and gives them up.
    let paused = fleet.live().map(|(i, _)| i).find(|i| *i != ingest).unwrap();
    let device = (0..400)
        .map(|n| format!("s{n}"))
        .find(|d| fleet.owner_of(d) == paused)
        .unwrap();
    client
        .publish(&format!("device/{device}/telemetry"), r#"{"v":1}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    fleet.engine(paused).signal("STOP");
    let p = partition_of(&device, PARTITIONS);
    let state_key = format!("rulechain:{{p{p}}}:state");
    // Another takes the partition; its snapshot is the one the paused owner wrote last.
    wait_for(Duration::from_secs(10), || {
        (fleet.owner_of(&device) != paused).then_some(())
    })
    .expect("the paused owner's partition moves");
    let before = fleet.redis_get(&["HGET", &state_key, "s"]);
    fleet.engine(paused).signal("CONT");
    // Woken: it finds its leases gone and stops its partitions; its final snapshots are
    // refused. The state in Redis is what it was.
    let log_has = |text: &str| fleet.engine(paused).log().contains(text);
    wait_for(Duration::from_secs(10), || {
        log_has("partition lost").then_some(())
    })
    .expect("the woken owner gives its partitions up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.redis_get(&["HGET", &state_key, "s"]), before);
    assert!(
        log_has("another instance owns the partition now"),
        "its writes were refused:\n{}",
        fleet.engine(paused).log()
    );
    // And the device goes on, on its new owner.
    client
        .publish(&format!("device/{device}/telemetry"), r#"{"v":20}"#)
        .await;
    let got = alarms
        .expect(Duration::from_secs(12), |t, _| t.ends_with(device.as_str()))
        .await
        .expect("the device's alarm on its new owner");
    assert_eq!(got.1["alarm"]["transition"], "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_past_the_lease_and_a_fourth_instance_under_load_lose_nothing_and_move_a_quarter(
) {
    let mut fleet = Fleet::start("cluster-join", 3);
    let mut sub = Mqtt::connect(fleet.broker.port, "watcher", true, &["out/#"]).await;
    let port = fleet.broker.port;
    // 12 s of load: the join below happens within it, whatever Redis's absence took.
    let load = tokio::spawn(publish(port, "pub", 20, 0..240, 400));
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Redis goes away for longer than the lease (its append-only file keeps the logs, leases
    // and state): every instance says why it is not ready, takes nothing it cannot store, and
    // goes on when Redis is back.
    fleet.redis.stop();
    for (i, e) in fleet.live() {
        let why = wait_for(Duration::from_secs(5), || {
            match http(e.http, "GET", "/readyz") {
                Some((503, body)) if body.contains("Redis") => Some(body),
                _ => None,
            }
        });
        assert!(why.is_some(), "rc-{i} did not say Redis is out of reach");
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    fleet.redis.start_again();
    for (i, e) in fleet.live() {
        wait_for(Duration::from_secs(15), || {
            matches!(http(e.http, "GET", "/readyz"), Some((200, _))).then_some(())
        })
        .unwrap_or_else(|| panic!("rc-{i} not ready again after Redis came back"));
    }
    let before = fleet.settled(3);
    // A fourth instance joins under load: it takes its quarter, and only that moves.
    fleet.add();
    let after = fleet.settled(4);
    assert!(
        !load.is_finished(),
        "the join was meant to happen under load"
    );
    load.await.unwrap();
    let owner = |v: &Value, p: usize| v["owners"][p]["owner"].as_str().unwrap().to_string();
    let moved = (0..PARTITIONS as usize)
        .filter(|p| owner(&before, *p) != owner(&after, *p))
        .count();
    let to_new = (0..PARTITIONS as usize)
        .filter(|p| owner(&after, *p) == "rc-4")
        .count();
    assert_eq!(to_new, (PARTITIONS / 4) as usize, "{after}");
    assert!(
        moved <= (PARTITIONS as usize).div_ceil(4) + 1,
        "{moved} partitions moved: {after}"
    );
    let mut seen = Seen::default();
    seen.collect(&mut sub, 20, 240, Duration::from_secs(30))
        .await;
    assert_eq!(seen.missing(20, 240), vec![], "nothing lost");
    assert_eq!(seen.out_of_order(), vec![], "order kept");
    eprintln!(
        "redis away and a join: {moved} partitions moved, {} duplicate outputs of 4800",
        seen.duplicates()
    );
}

#[test]
fn the_deployment_example_config_is_valid() {
    // deploy/cluster/rulechain.yaml as its compose file mounts it: beside the repository's
    // rules, with its variables set.
    let dir = tempdir("cluster-deploy-config");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster/rulechain.yaml"),
        dir.join("rulechain.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        dir.join("rules"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["validate", "--config", "rulechain.yaml"])
        .current_dir(&dir)
        .env("REDIS_PASSWORD", "secret")
        .env("RULECHAIN_INSTANCE", "rc-1")
        .env("RULECHAIN_TOKEN", "token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
