//! The sinks against real parts: the `rulechain` binary with its embedded broker writing to
//! VictoriaMetrics (Debian's, started per test), sending mail to an SMTP sink (aiosmtpd writing
//! a Maildir), POSTing to an HTTP receiver run by the test, and serving WebSocket clients
//! (tokio-tungstenite).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{engine_dir, free_port, http, tempdir, wait_for, Engine, Mqtt, SmtpSink, Victoria};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The config head for an engine on its embedded broker at `mqtt_port`, plus `extra` config.
fn embedded(mqtt_port: u16, extra: &str) -> String {
    format!("embedded_broker: {{listen: 127.0.0.1:{mqtt_port}}}\n{extra}")
}

/// An engine on its embedded broker in `dir` (config `extra`, these chains and devices; with
/// `token`, `http.token`), and a publisher connected to that broker.
async fn start_engine(
    dir: &std::path::Path,
    extra: &str,
    chains: &[(&str, &str)],
    devices: &str,
    client: &str,
    token: Option<&str>,
) -> (Engine, Mqtt) {
    let (mqtt, http_port) = (free_port(), free_port());
    engine_dir(dir, &embedded(mqtt, extra), http_port, chains, devices);
    if let Some(t) = token {
        let path = dir.join("rulechain.yaml");
        let listen = format!("http: {{listen: 127.0.0.1:{http_port}}}");
        let cfg = std::fs::read_to_string(&path).unwrap();
        assert!(cfg.contains(&listen));
        let with = format!("http: {{listen: 127.0.0.1:{http_port}, token: {t}}}");
        std::fs::write(&path, cfg.replace(&listen, &with)).unwrap();
    }
    let engine = Engine::start(dir, http_port);
    let pubr = Mqtt::connect(mqtt, client, true, &[]).await;
    (engine, pubr)
}

fn counter(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

const STORE: &str = r#"
chain: store
nodes:
  - id: save
    influx: { measurement: "${msg.m}", tags: [device, label], fields: [current, running, seq] }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn points_written_by_a_chain_read_back_from_victoriametrics() {
    let dir = tempdir("influx-roundtrip");
    let vm = Victoria::start(&dir);
    let extra = format!(
        "influx: {{url: 'http://127.0.0.1:{}', bucket: iot, org: acme, token: secret-token, flush_interval: 100ms}}",
        vm.port
    );
    let (engine, pubr) = start_engine(
        &dir,
        &extra,
        &[("store.yaml", STORE)],
        "devices: []\n",
        "roundtrip-pub",
        None,
    )
    .await;
    // Tag values and a measurement that need every kind of escaping.
    let labels = [
        "plain",
        "a b",
        "x,y",
        "k=v",
        "back\\slash",
        "ünï cödé",
        "all of ,= \\",
    ];
    let base = common_now() - 60_000;
    for (i, label) in labels.iter().enumerate() {
        let payload = json!({
            "m": "tele metry,1",
            "label": label,
            "current": 13.1 + i as f64,
            "running": i % 2 == 0,
            "seq": i,
            "ts": base + i as i64 * 1000,
        });
        pubr.publish("device/pump 1/telemetry", payload.to_string())
            .await;
    }
    let series = wait_for(Duration::from_secs(15), || {
        let s = vm.export(r#"{__name__=~"tele metry,1_.*"}"#);
        (s.len() == labels.len() * 3).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "VictoriaMetrics has {:?}\nstatus: {}\n{}",
            vm.export(r#"{__name__=~".+"}"#),
            engine.status()["influx"],
            engine.log()
        )
    });
    for (i, label) in labels.iter().enumerate() {
        // Line protocol cannot end a tag value with a backslash: the encoder leaves it out.
        let label = label.trim_end_matches('\\');
        let pick = |field: &str| {
            series
                .iter()
                .find(|s| {
                    s["metric"]["label"] == label
                        && s["metric"]["__name__"] == format!("tele metry,1_{field}")
                })
                .unwrap_or_else(|| panic!("no {field} series for label {label:?}: {series:?}"))
        };
        let current = pick("current");
        assert_eq!(current["metric"]["device"], "pump 1");
        assert_eq!(current["values"], json!([13.1 + i as f64]));
        assert_eq!(current["timestamps"], json!([base + i as i64 * 1000]));
        assert_eq!(
            pick("running")["values"],
            json!([if i % 2 == 0 { 1 } else { 0 }])
        );
        assert_eq!(pick("seq")["values"], json!([i]));
    }
    let st = engine.status();
    assert_eq!(counter(&st, &["influx", "written"]), labels.len() as u64);
    assert_eq!(counter(&st, &["influx", "dropped"]), 0);
    assert!(
        !engine.log().contains("secret-token"),
        "the token reached the log"
    );
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_10s_outage_of_victoriametrics_loses_no_point() {
    let dir = tempdir("influx-outage");
    let mut vm = Victoria::start(&dir);
    // A small memory buffer, so the outage also goes through the spool on disk.
    let extra = format!(
        "influx: {{url: 'http://127.0.0.1:{}', flush_interval: 100ms, batch_size: 50, buffer_points: 200, spool: true, max_backoff: 1s, timeout: 2s}}",
        vm.port
    );
    let (engine, pubr) = start_engine(
        &dir,
        &extra,
        &[("store.yaml", STORE)],
        "devices: []\n",
        "outage-pub",
        None,
    )
    .await;
    let base = common_now() - 120_000;
    let total = 1000u64;
    let start = Instant::now();
    let mut stopped = false;
    let mut restarted = false;
    for seq in 0..total {
        // 50 messages a second for 20 s; the server is away from 4 s to 14 s.
        let due = Duration::from_millis(seq * 20);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if !stopped && start.elapsed() >= Duration::from_secs(4) {
            vm.stop();
            stopped = true;
        }
        if stopped && !restarted && start.elapsed() >= Duration::from_secs(14) {
            vm.restart();
            restarted = true;
        }
        let payload = json!({"m": "outage", "label": "x", "current": 1.0, "seq": seq, "ts": base + seq as i64 * 10});
        pubr.publish("device/pump-1/telemetry", payload.to_string())
            .await;
    }
    assert!(stopped && restarted);
    let written = wait_for(Duration::from_secs(30), || {
        let st = engine.status();
        (counter(&st, &["influx", "written"]) >= total
            && counter(&st, &["influx", "in_spool"]) == 0)
            .then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every point was written: {}\n{}",
            engine.status(),
            engine.log()
        )
    });
    let series = vm.export(r#"{__name__="outage_seq"}"#);
    let seen: BTreeSet<u64> = series
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_f64().map(|f| f as u64))
        .collect();
    let missing: Vec<u64> = (0..total).filter(|s| !seen.contains(s)).collect();
    assert!(missing.is_empty(), "lost points: {missing:?}");
    let influx = &written["influx"];
    assert!(
        counter(influx, &["retries"]) > 0,
        "the outage caused no retry: {influx}"
    );
    assert!(
        counter(influx, &["spooled"]) > 0,
        "the outage did not reach the spool: {influx}"
    );
    assert_eq!(counter(influx, &["dropped"]), 0, "{influx}");
    assert_eq!(counter(influx, &["rejected"]), 0, "{influx}");
}

/// An HTTP receiver for webhooks: records every request; a path answers with the statuses
/// scripted for it, in turn (then 200).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<BTreeMap<String, Vec<u16>>>>,
}

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Receiver {
    fn start(script: &[(&str, Vec<u16>)]) -> (Receiver, u16) {
        let r = Receiver::default();
        for (p, s) in script {
            r.script.lock().unwrap().insert(p.to_string(), s.clone());
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let rr = r.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                rr.handle(s);
            }
        });
        (r, port)
    }

    fn handle(&self, mut s: std::net::TcpStream) {
        let Some((path, headers, body)) = common::read_request(&mut s) else {
            return;
        };
        let status = {
            let mut sc = self.script.lock().unwrap();
            match sc.get_mut(&path) {
                Some(v) if !v.is_empty() => v.remove(0),
                _ => 200,
            }
        };
        self.got.lock().unwrap().push(Request {
            path,
            headers,
            body,
            status,
        });
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
    }

    fn on(&self, path: &str) -> Vec<Request> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

const HOT: &str = r#"
chain: hot
nodes:
  - id: check
    filter: msg.temp > 50
    else: clear
  - id: raise
    alarm: { type: Hot, severity: MAJOR, message: "${meta.device} at ${msg.temp}" }
  - id: tell
    notify: [mail, signed, flaky, down]
    next: []
  - id: clear
    alarm: { type: Hot, action: clear }
    next: [tell]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn email_and_webhooks_arrive_signed_retried_and_with_fallback() {
    let dir = tempdir("notify");
    let smtp = SmtpSink::start(&dir);
    let (rx, hook) = Receiver::start(&[("/flaky", vec![500, 500, 500])]);
    let closed = free_port();
    let channels = format!(
        r#"channels:
  mail:
    email: {{smtp: "smtp://127.0.0.1:{smtp}", tls: none, from: rulechain@example.com, to: [ops@example.com, oncall@example.com]}}
    subject: "[${{msg.alarm.severity}}] ${{msg.alarm.type}} ${{msg.alarm.transition}} on ${{meta.device}}"
    body: "${{msg.alarm.message}}; rated ${{attr.rated ?? 0}}"
  signed:
    webhook: {{url: "http://127.0.0.1:{hook}/hook", secret: s3cret, headers: {{X-Env: test}}}}
  flaky:
    webhook: {{url: "http://127.0.0.1:{hook}/flaky"}}
    retries: 5
  down:
    webhook: {{url: "http://127.0.0.1:{closed}/nothing"}}
    retries: 3
    fallback: backup
    fallback_after: 2
  backup:
    webhook: {{url: "http://127.0.0.1:{hook}/backup"}}
"#,
        smtp = smtp.port
    );
    let (engine, pubr) = start_engine(
        &dir,
        &channels,
        &[("hot.yaml", HOT)],
        "devices:\n  - id: pump-1\n    attributes: {rated: 10}\n",
        "notify-pub",
        None,
    )
    .await;
    pubr.publish("device/pump-1/telemetry", r#"{"temp": 70}"#)
        .await;

    // The email, rendered, to both recipients.
    let mail = wait_for(Duration::from_secs(10), || smtp.mails().into_iter().next())
        .unwrap_or_else(|| panic!("no mail arrived\n{}", engine.log()));
    assert!(
        mail.contains("Subject: [MAJOR] Hot created on pump-1"),
        "{mail}"
    );
    assert!(mail.contains("pump-1 at 70; rated 10"), "{mail}");
    assert!(
        mail.contains("To: ops@example.com, oncall@example.com"),
        "{mail}"
    );

    // The signed webhook: the default payload, a valid signature, the custom header.
    let signed = wait_for(Duration::from_secs(10), || {
        rx.on("/hook").into_iter().next()
    })
    .expect("the signed webhook did not arrive");
    let body: Value = serde_json::from_slice(&signed.body).unwrap();
    assert_eq!(body["alarm"]["type"], "Hot");
    assert_eq!(body["alarm"]["status"], "ACTIVE_UNACK");
    assert_eq!(body["alarm"]["transition"], "created");
    assert_eq!(body["alarm"]["severity"], "MAJOR");
    assert_eq!(body["device"], "pump-1");
    assert_eq!(body["subject"], "[MAJOR] Hot created on pump-1");
    assert_eq!(signed.headers["x-env"], "test");
    let want = rulechain::sinks::notify::signature(b"s3cret", &signed.body);
    assert_eq!(signed.headers["x-rulechain-signature"], want);
    assert_ne!(
        want,
        rulechain::sinks::notify::signature(b"wrong", &signed.body)
    );

    // Three 500s, then the fourth try is delivered.
    let flaky = wait_for(Duration::from_secs(15), || {
        let f = rx.on("/flaky");
        (f.len() >= 4).then_some(f)
    })
    .unwrap_or_else(|| panic!("the flaky webhook got {:?}", rx.on("/flaky").len()));
    assert_eq!(
        flaky.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 500, 500, 200]
    );
    assert_eq!(
        flaky[0].body, flaky[3].body,
        "a retry sends the same notification"
    );

    // The channel that is down hands the notification to its fallback after two failures.
    let backup = wait_for(Duration::from_secs(10), || {
        rx.on("/backup").into_iter().next()
    })
    .expect("the fallback channel got nothing");
    let b: Value = serde_json::from_slice(&backup.body).unwrap();
    assert_eq!(b["alarm"]["type"], "Hot");

    let st = wait_for(Duration::from_secs(10), || {
        let st = engine.status();
        (counter(&st, &["notify", "channels", "down", "failed"]) == 1).then_some(st)
    })
    .unwrap_or_else(|| panic!("{}", engine.status()["notify"]));
    let ch = &st["notify"]["channels"];
    assert_eq!(counter(ch, &["flaky", "attempts_failed"]), 3);
    assert_eq!(counter(ch, &["flaky", "sent"]), 1);
    assert_eq!(counter(ch, &["down", "fallbacks"]), 1);
    assert_eq!(counter(ch, &["down", "attempts_failed"]), 4, "{ch}");
    assert_eq!(counter(ch, &["backup", "sent"]), 1);
    assert_eq!(counter(ch, &["mail", "sent"]), 1);
    assert_eq!(counter(ch, &["signed", "sent"]), 1);
    // A failing channel never delayed or repeated another one's notification.
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(rx.on("/hook").len(), 1);

    // `notify-test` sends a sample through a channel and says how it went.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["notify-test", "--config", "rulechain.yaml", "signed"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered in"));
    assert_eq!(rx.on("/hook").len(), 2);
    let sample: Value = serde_json::from_slice(&rx.on("/hook")[1].body).unwrap();
    assert_eq!(sample["alarm"]["type"], "TestAlarm");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["notify-test", "--config", "rulechain.yaml", "down"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`down` failed"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["notify-test", "--config", "rulechain.yaml", "nope"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("known: backup, down, flaky, mail, signed")
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(port: u16, token: &str) -> Ws {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?token={token}"))
            .await
            .expect("connect /ws");
    ws
}

/// A WebSocket client whose frames are read all the time by a task of its own (so it answers
/// pings, as a browser does), and queued for the test.
struct WsClient {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for WsClient {
    fn drop(&mut self) {
        // Both halves gone: the connection closes.
        self.reader.abort();
    }
}

impl WsClient {
    async fn connect(port: u16, token: &str) -> WsClient {
        let (sink, mut stream) = ws_connect(port, token).await.split();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    let _ = tx.send(serde_json::from_str::<Value>(&t).unwrap());
                }
            }
        });
        WsClient { sink, rx, reader }
    }

    async fn send(&mut self, v: Value) {
        self.sink
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next frame satisfying `pred`, within 10 s (frames before it are skipped).
    async fn expect(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .expect("no matching WebSocket frame within 10 s")
                .expect("the WebSocket closed");
            if pred(&v) {
                return v;
            }
        }
    }
}

const LIVE: &str = r#"
chain: live
nodes:
  - id: push
    websocket: {}
    next: [check]
  - id: check
    filter: msg.temp > 50
  - id: raise
    alarm: { type: Hot, severity: CRITICAL }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn websocket_clients_get_rooms_in_order_snapshots_alarms_and_can_ack() {
    let dir = tempdir("websocket");
    let (engine, pubr) = start_engine(
        &dir,
        "websocket: {max_clients: 3, ping_interval: 300ms}",
        &[("live.yaml", LIVE)],
        "devices: []\n",
        "ws-pub",
        Some("t0k3n"),
    )
    .await;
    let http_port = engine.http;

    // Without the token: 401, for /ws and the API alike; /healthz stays open.
    match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{http_port}/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a client without the token got in: {:?}", other.map(|_| ())),
    }
    assert_eq!(http(http_port, "GET", "/api/status").unwrap().0, 401);
    // A page from another site is refused, even with the token (a browser would send it).
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://127.0.0.1:{http_port}/ws?token=t0k3n")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!("a foreign page got in: {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(
        http(http_port, "GET", "/api/status?token=t0k3n").unwrap().0,
        200
    );
    // The query is percent-decoded (`%6B` is `k`).
    assert_eq!(
        http(http_port, "GET", "/api/status?token=t0%6B3n")
            .unwrap()
            .0,
        200
    );

    // The latest telemetry is there before anyone subscribes.
    pubr.publish("device/pump-1/telemetry", r#"{"temp": 20}"#)
        .await;
    let status = || {
        let (_, b) = http(http_port, "GET", "/api/status?token=t0k3n").unwrap();
        serde_json::from_str::<Value>(&b).unwrap()
    };
    wait_for(Duration::from_secs(5), || {
        (counter(&status(), &["websocket", "published"]) >= 1).then_some(())
    })
    .expect("the first message was not published");

    let mut a = WsClient::connect(http_port, "t0k3n").await;
    a.send(json!({"op": "subscribe", "rooms": ["device/pump-1", "alarms"]}))
        .await;
    let snap = a
        .expect(|v| v["op"] == "snapshot" && v["room"] == "device/pump-1")
        .await;
    assert_eq!(snap["data"]["temp"], 20);
    assert_eq!(snap["seq"], 1);
    assert_eq!(snap["alarms"], json!([]));
    a.expect(|v| v["op"] == "subscribed").await;

    // A dashboard on every device.
    let mut b = WsClient::connect(http_port, "t0k3n").await;
    b.send(json!({"op": "subscribe", "rooms": ["device/*"]}))
        .await;
    b.expect(|v| v["op"] == "subscribed").await;

    for t in [21, 22, 23] {
        pubr.publish("device/pump-1/telemetry", json!({"temp": t}).to_string())
            .await;
    }
    pubr.publish("device/pump-2/telemetry", r#"{"temp": 5}"#)
        .await;
    for (seq, t) in [(2, 21), (3, 22), (4, 23)] {
        let f = a
            .expect(|v| v["room"] == "device/pump-1" && v.get("op").is_none())
            .await;
        assert_eq!(
            (f["seq"].as_u64(), f["data"]["temp"].as_i64()),
            (Some(seq), Some(t)),
            "{f}"
        );
        assert!(f["ts"].as_i64().unwrap() > 0);
    }
    let f = b.expect(|v| v["room"] == "device/pump-2").await;
    assert_eq!(
        (f["seq"].as_u64(), f["data"]["temp"].as_i64()),
        (Some(1), Some(5))
    );

    // An alarm reaches the `alarms` room; a client acknowledges it.
    pubr.publish("device/pump-1/telemetry", r#"{"temp": 90}"#)
        .await;
    let created = a.expect(|v| v["room"] == "alarms").await;
    assert_eq!(created["data"]["transition"], "created");
    assert_eq!(created["data"]["status"], "ACTIVE_UNACK");
    assert_eq!(created["data"]["severity"], "CRITICAL");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    // A reconnecting dashboard gets the open alarm in its snapshot.
    let mut c = WsClient::connect(http_port, "t0k3n").await;
    c.send(json!({"op": "subscribe", "rooms": ["device/pump-1"]}))
        .await;
    let snap = c.expect(|v| v["op"] == "snapshot").await;
    assert_eq!(snap["data"]["temp"], 90);
    assert_eq!(snap["alarms"][0]["id"], id.as_str());

    a.send(json!({"op": "ack", "alarm": id})).await;
    let acked = a.expect(|v| v["op"] == "acked" || v["op"] == "error").await;
    assert_eq!(
        acked,
        json!({"op": "acked", "alarm": id, "status": "ACTIVE_ACK"})
    );
    let t = a.expect(|v| v["room"] == "alarms").await;
    assert_eq!(t["data"]["transition"], "acknowledged");
    assert_eq!(
        t["seq"].as_u64(),
        Some(created["seq"].as_u64().unwrap() + 1)
    );
    a.send(json!({"op": "ack", "alarm": id})).await;
    let again = a.expect(|v| v["op"] == "acked" || v["op"] == "error").await;
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("already acknowledged"),
        "{again}"
    );
    a.send(json!({"op": "frobnicate"})).await;
    let bad = a.expect(|v| v["op"] == "error").await;
    assert!(
        bad["error"].as_str().unwrap().contains("unknown op"),
        "{bad}"
    );

    // The limit: a fourth client is turned away with a reason.
    let mut d = ws_connect(http_port, "t0k3n").await;
    let closed = tokio::time::timeout(Duration::from_secs(5), d.next())
        .await
        .unwrap();
    match closed {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1013);
            assert!(f.reason.contains("max_clients"), "{}", f.reason);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // A client that stops answering pings (it never reads) is dropped after two.
    drop(c);
    drop(b);
    wait_for(Duration::from_secs(5), || {
        (counter(&status(), &["websocket", "clients"]) == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", status()["websocket"]));
    let silent = ws_connect(http_port, "t0k3n").await;
    let st = wait_for(Duration::from_secs(10), || {
        let st = status();
        (counter(&st, &["websocket", "timed_out"]) >= 1).then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "the silent client was not dropped: {}",
            status()["websocket"]
        )
    });
    assert_eq!(
        counter(&st, &["websocket", "clients"]),
        1,
        "{}",
        st["websocket"]
    );
    drop(silent);
    // The one reading all along is still served.
    pubr.publish("device/pump-1/telemetry", r#"{"temp": 91}"#)
        .await;
    a.expect(|v| v["room"] == "device/pump-1" && v["data"]["temp"] == 91)
        .await;
    drop(engine);
}

#[test]
fn the_http_alarm_api_lists_and_acknowledges() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir("alarm-api");
    let (mqtt, http_port) = (free_port(), free_port());
    engine_dir(
        &dir,
        &embedded(mqtt, ""),
        http_port,
        &[("live.yaml", LIVE)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http_port);
    rt.block_on(async {
        let pubr = Mqtt::connect(mqtt, "api-pub", true, &[]).await;
        pubr.publish("device/pump-7/telemetry", r#"{"temp": 99}"#)
            .await;
    });
    let alarms = wait_for(Duration::from_secs(5), || {
        let (_, b) = http(http_port, "GET", "/api/alarms")?;
        let v: Value = serde_json::from_str(&b).ok()?;
        (v["alarms"].as_array()?.len() == 1).then_some(v)
    })
    .expect("the alarm is not listed");
    let id = alarms["alarms"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(alarms["alarms"][0]["device"], "pump-7");
    let (code, body) = http(http_port, "POST", &format!("/api/alarms/{id}/ack")).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ACTIVE_ACK"), "{body}");
    let (code, _) = http(http_port, "POST", &format!("/api/alarms/{id}/ack")).unwrap();
    assert_eq!(code, 409);
    let (code, _) = http(http_port, "POST", "/api/alarms/nope/ack").unwrap();
    assert_eq!(code, 404);
    // The acknowledgement is state: it survives a restart.
    let mut engine = engine;
    engine.stop();
    engine.restart();
    let (_, b) = http(http_port, "GET", "/api/alarms").unwrap();
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["alarms"][0]["status"], "ACTIVE_ACK", "{v}");
}

const REMIND: &str = r#"
chain: hot
nodes:
  - id: check
    filter: msg.temp > 50
    else: clear
  - id: raise
    alarm: { type: Hot, severity: MAJOR, message: "${meta.device} at ${msg.temp}", pass: [created, acknowledged] }
  - id: tell
    notify: [remind, limited]
    next: []
  - id: clear
    alarm: { type: Hot, action: clear }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn reminders_repeat_until_acknowledged_or_cleared_and_the_rate_limit_holds() {
    let dir = tempdir("remind");
    let (rx, hook) = Receiver::start(&[]);
    let channels = format!(
        r#"channels:
  remind:
    webhook: {{url: "http://127.0.0.1:{hook}/remind"}}
    repeat_interval: 500ms
  limited:
    webhook: {{url: "http://127.0.0.1:{hook}/limited"}}
    rate_limit: 2/1m
"#
    );
    let (engine, pubr) = start_engine(
        &dir,
        &channels,
        &[("hot.yaml", REMIND)],
        "devices: []\n",
        "remind-pub",
        None,
    )
    .await;
    let http_port = engine.http;
    let body = |r: &Request| serde_json::from_slice::<Value>(&r.body).unwrap();
    let of = |device: &str| -> Vec<Value> {
        rx.on("/remind")
            .iter()
            .map(body)
            .filter(|b| b["device"] == device)
            .collect()
    };
    pubr.publish("device/pump-1/telemetry", r#"{"temp": 70}"#)
        .await;
    let first = wait_for(Duration::from_secs(10), || {
        let got = of("pump-1");
        (got.len() >= 3).then_some(got)
    })
    .unwrap_or_else(|| panic!("no reminders: {}", engine.status()["notify"]));
    assert_eq!(first[0]["reminder"], false);
    assert_eq!(first[1]["reminder"], true);
    assert_eq!(first[2]["reminder"], true);
    assert_eq!(first[1]["alarm"]["id"], first[0]["alarm"]["id"]);
    // Acknowledged: the acknowledgement goes out (the alarm node's downstream), reminders stop.
    let id = first[0]["alarm"]["id"].as_str().unwrap().to_string();
    let (code, _) = http(http_port, "POST", &format!("/api/alarms/{id}/ack")).unwrap();
    assert_eq!(code, 200);
    let acked = wait_for(Duration::from_secs(5), || {
        of("pump-1")
            .iter()
            .position(|b| b["alarm"]["transition"] == "acknowledged")
    })
    .expect("the acknowledgement was not sent");
    // Cleared, though this chain tells the channel nothing on a clear: reminders stop too.
    pubr.publish("device/pump-4/telemetry", r#"{"temp": 70}"#)
        .await;
    wait_for(Duration::from_secs(5), || {
        (of("pump-4").len() >= 2).then_some(())
    })
    .expect("no reminder for pump-4");
    pubr.publish("device/pump-4/telemetry", r#"{"temp": 20}"#)
        .await;
    std::thread::sleep(Duration::from_millis(600));
    let cleared_at = of("pump-4").len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        of("pump-1").len(),
        acked + 1,
        "reminders went on after the acknowledgement"
    );
    assert_eq!(
        of("pump-4").len(),
        cleared_at,
        "reminders went on after the clear"
    );

    // The rate-limited channel took two notifications in the minute and dropped the rest.
    let st = wait_for(Duration::from_secs(5), || {
        let st = engine.status();
        (counter(&st, &["notify", "channels", "limited", "rate_limited"]) >= 1).then_some(st)
    })
    .unwrap_or_else(|| panic!("{}", engine.status()["notify"]));
    assert_eq!(counter(&st, &["notify", "channels", "limited", "sent"]), 2);
    assert_eq!(rx.on("/limited").len(), 2);
}

/// The writer alone (the library API): the v1 endpoint against VictoriaMetrics, with the flush
/// when its input closes; then against a receiver of the test's own that answers 400 (bad data:
/// not retried) and 503 (retried).
#[tokio::test(flavor = "multi_thread")]
async fn the_writer_speaks_v1_flushes_on_close_and_retries_only_what_may_succeed() {
    use rulechain::config::settings::InfluxSettings;
    use rulechain::config::InfluxSpec;
    use rulechain::sinks::influx::{start, InfluxStats};
    use rulechain::yaml::Sp;
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempdir("influx-writer");
    let vm = Victoria::start(&dir);
    let spec = InfluxSpec {
        url: Sp::unplaced(format!("http://127.0.0.1:{}", vm.port)),
        api: Some(Sp::unplaced("v1".to_string())),
        database: Some("telemetry".into()),
        precision: Some(Sp::unplaced("ms".to_string())),
        // Nothing leaves before the input closes, unless a batch fills.
        flush_interval: Some(Sp::unplaced("1h".to_string())),
        batch_size: Some(Sp::unplaced(3)),
        max_backoff: Some(Sp::unplaced("300ms".to_string())),
        ..Default::default()
    };
    let settings = InfluxSettings::from_spec(&spec, &dir).unwrap();
    assert!(settings
        .write_url
        .as_str()
        .ends_with("/write?db=telemetry&precision=ms"));
    let stats = Arc::new(InfluxStats::default());
    let (h, task) = start(settings, stats.clone()).unwrap();
    let base = common_now() - 60_000;
    // Two points: less than a batch, and the flush interval is an hour away. Closing the input
    // sends them.
    let point = |v: i64, ms: i64| {
        rulechain::lineproto::Point::new(
            format!("v1test,device=b value={v} {}", ms * 1_000_000),
            ms * 1_000_000,
        )
    };
    h.send(vec![point(3, base), point(4, base + 1)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stats.requests.load(Relaxed),
        0,
        "a partial batch left early"
    );
    drop(h);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the writer did not finish after its input closed")
        .unwrap();
    assert_eq!(stats.written.load(Relaxed), 2, "{}", stats.to_json());
    let series = vm.export(r#"{__name__="v1test_value",device="b"}"#);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["values"], json!([3, 4]));
    assert_eq!(series[0]["timestamps"], json!([base, base + 1]));

    // 400 (bad data): logged and counted, not retried. 503: retried until it goes through.
    let (rx, port) = Receiver::start(&[("/api/v2/write?precision=ns", vec![400, 503])]);
    let spec = InfluxSpec {
        url: Sp::unplaced(format!("http://127.0.0.1:{port}")),
        api: None,
        database: None,
        precision: None,
        ..spec
    };
    let stats = Arc::new(InfluxStats::default());
    let (h, task) = start(
        InfluxSettings::from_spec(&spec, &dir).unwrap(),
        stats.clone(),
    )
    .unwrap();
    h.send(
        (0..3)
            .map(|i| rulechain::lineproto::Point::new(format!("m f={i} {i}"), i))
            .collect(),
    );
    wait_for(Duration::from_secs(5), || {
        (stats.rejected.load(Relaxed) == 3).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", stats.to_json()));
    assert!(stats.to_json()["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("400"));
    h.send(
        (3..6)
            .map(|i| rulechain::lineproto::Point::new(format!("m f={i} {i}"), i))
            .collect(),
    );
    wait_for(Duration::from_secs(5), || {
        (stats.written.load(Relaxed) == 3).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", stats.to_json()));
    assert_eq!(stats.retries.load(Relaxed), 1);
    assert_eq!(stats.requests.load(Relaxed), 3);
    let got = rx.on("/api/v2/write?precision=ns");
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![400, 503, 200]
    );
    assert_eq!(got[1].body, got[2].body, "the retry sends the same batch");
    assert_eq!(got[0].headers["content-encoding"], "gzip");
    drop(h);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_webhook_is_not_retried_and_goes_to_the_fallback_at_once() {
    let dir = tempdir("refused");
    let (rx, hook) = Receiver::start(&[("/gone", vec![404, 404, 404])]);
    let channels = format!(
        r#"channels:
  remind:
    webhook: {{url: "http://127.0.0.1:{hook}/gone"}}
    retries: 5
    fallback: limited
    fallback_after: 3
  limited:
    webhook: {{url: "http://127.0.0.1:{hook}/backup"}}
"#
    );
    let (engine, pubr) = start_engine(
        &dir,
        &channels,
        &[("hot.yaml", REMIND)],
        "devices: []\n",
        "refused-pub",
        None,
    )
    .await;
    pubr.publish("device/pump-1/telemetry", r#"{"temp": 70}"#)
        .await;
    // `remind` hands over at once; `limited` also gets its own copy from the chain.
    wait_for(Duration::from_secs(5), || {
        (rx.on("/backup").len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", engine.status()["notify"]));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rx.on("/gone").len(), 1, "a 404 was retried");
    let ch = &engine.status()["notify"]["channels"]["remind"];
    assert_eq!(counter(ch, &["attempts_failed"]), 1, "{ch}");
    assert_eq!(counter(ch, &["failed"]), 1, "{ch}");
    assert_eq!(counter(ch, &["fallbacks"]), 1, "{ch}");
    assert!(
        ch["last_error"].as_str().unwrap_or("").contains("404"),
        "{ch}"
    );
}

#[test]
fn email_goes_over_starttls_to_a_server_with_a_private_ca() {
    let dir = tempdir("smtp-tls");
    let certs = common::certs(&dir);
    // The sink refuses mail before STARTTLS: a delivery proves the channel used TLS.
    let smtp = SmtpSink::start_tls(&dir, &certs);
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "channels:\n  secure:\n    email: {{smtp: 'smtp://localhost:{p}', ca: ca.pem, from: rc@example.com, to: [ops@example.com]}}\n\
             \x20 untrusted:\n    email: {{smtp: 'smtp://localhost:{p}', from: rc@example.com, to: [ops@example.com]}}\n\
             \x20 clear:\n    email: {{smtp: 'smtp://localhost:{p}', tls: none, from: rc@example.com, to: [ops@example.com]}}\n",
            p = smtp.port
        ),
    )
    .unwrap();
    let notify_test = |channel: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args(["notify-test", "--config", "rulechain.yaml", channel])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let out = notify_test("secure");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mail = wait_for(Duration::from_secs(5), || smtp.mails().into_iter().next())
        .expect("no mail over STARTTLS");
    assert!(
        mail.contains("Subject: [WARNING] TestAlarm created on test-device"),
        "{mail}"
    );
    // The system roots do not know the test CA: the certificate is refused.
    let out = notify_test("untrusted");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    // Without TLS, the server (which requires it) refuses the mail, permanently.
    let out = notify_test("clear");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(smtp.mails().len(), 1);
}

/// The CPU time the calling thread has used so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `work` on a runtime of its own thread, lets it go on for `watch`, and returns the CPU
/// time that thread used while watched (setting up and `work`'s first steps excluded).
fn cpu_while<F, T>(watch: Duration, work: impl FnOnce() -> F + Send + 'static) -> (Duration, T)
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let kept = work().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = thread_cpu();
            tokio::time::sleep(watch).await;
            (thread_cpu() - before, kept)
        })
    })
    .join()
    .unwrap()
}

/// An outage of InfluxDB costs next to no CPU: the writer sleeps until its retry is due, or
/// until the request in flight answers, whichever the outage is. (It once woke again and again
/// for a flush time that had passed while it waited, and used most of a core.)
#[test]
fn an_influxdb_outage_costs_next_to_no_cpu() {
    use rulechain::config::settings::InfluxSettings;
    use rulechain::config::InfluxSpec;
    use rulechain::sinks::influx::{start, InfluxStats};
    use rulechain::yaml::Sp;
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempdir("influx-outage-cpu");
    // Refused: nothing listens on the port. Silent: a listener that takes connections and
    // never answers, so a request stays in flight until its timeout.
    let refused = free_port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (what, port) in [("refused", refused), ("silent", silent_port)] {
        let spec = InfluxSpec {
            url: Sp::unplaced(format!("http://127.0.0.1:{port}")),
            flush_interval: Some(Sp::unplaced("50ms".to_string())),
            max_backoff: Some(Sp::unplaced("1s".to_string())),
            timeout: Some(Sp::unplaced("30s".to_string())),
            ..Default::default()
        };
        let settings = InfluxSettings::from_spec(&spec, &dir).unwrap();
        let stats = Arc::new(InfluxStats::default());
        let s = stats.clone();
        let (cpu, _writer) = cpu_while(Duration::from_secs(2), move || async move {
            let (h, _task) = start(settings, s).unwrap();
            h.send(vec![rulechain::lineproto::Point::new("m f=1 1".into(), 1)]);
            h
        });
        assert!(
            stats.requests.load(Relaxed) >= 1,
            "{what}: no request was made: {}",
            stats.to_json()
        );
        assert_eq!(stats.written.load(Relaxed), 0, "{what}");
        assert!(
            cpu < Duration::from_millis(200),
            "{what}: the writer used {cpu:?} of CPU in 2 s of outage"
        );
    }
    drop(silent);
}

/// With InfluxDB, the SMTP server and the webhook all refusing connections, an engine holding
/// points and notifications to retry stays all but idle.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_every_sink_costs_the_engine_next_to_no_cpu() {
    let dir = tempdir("outage-cpu");
    let (influx, smtp, hook) = (free_port(), free_port(), free_port());
    let extra = format!(
        r#"influx: {{url: 'http://127.0.0.1:{influx}', flush_interval: 50ms, max_backoff: 2s}}
channels:
  mail:
    email: {{smtp: 'smtp://127.0.0.1:{smtp}', from: a@example.com, to: [b@example.com]}}
    retries: 1000
  hook:
    webhook: {{url: 'http://127.0.0.1:{hook}/h'}}
    retries: 1000
"#
    );
    const CHAIN: &str = r#"
chain: all
nodes:
  - id: save
    influx: {}
  - id: tell
    notify: [mail, hook]
"#;
    let (engine, pubr) = start_engine(
        &dir,
        &extra,
        &[("all.yaml", CHAIN)],
        "devices: []\n",
        "cpu-pub",
        None,
    )
    .await;
    for i in 0..20 {
        pubr.publish("device/pump-1/telemetry", format!(r#"{{"current": {i}}}"#))
            .await;
    }
    let failing = wait_for(Duration::from_secs(10), || {
        let st = engine.status();
        let ch = &st["notify"]["channels"];
        (counter(&st, &["influx", "retries"]) > 0
            && counter(&ch["mail"], &["attempts_failed"]) > 0
            && counter(&ch["hook"], &["attempts_failed"]) > 0)
            .then_some(st)
    });
    assert!(
        failing.is_some(),
        "the sinks never failed: {}",
        engine.status()
    );
    let before = engine.cpu_time();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = engine.cpu_time() - before;
    let st = engine.status();
    assert_eq!(counter(&st, &["influx", "written"]), 0, "{st}");
    // An idle engine uses well under 1% of a core; the spin this guards against used 80%.
    assert!(
        used < Duration::from_millis(300),
        "the engine used {used:?} of CPU in 3 s of outage:\n{}",
        st
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_body_json_stays_valid_json_whatever_the_values_hold() {
    // A Slack-style body from templates: a device id and a message with quotes, a backslash
    // and a newline would break a `body` text template; `body_json` builds the JSON itself.
    let dir = tempdir("body-json");
    let (rx, hook) = Receiver::start(&[]);
    let channels = format!(
        r#"channels:
  chat:
    webhook: {{url: "http://127.0.0.1:{hook}/chat"}}
    body_json:
      text: "${{meta.device}} says ${{msg.note}}"
      blocks: [{{type: section, fields: 2, urgent: true}}]
"#
    );
    let chain = "chain: tell\non: { kind: telemetry }\nnodes:\n  - notify: [chat]\n";
    let (_engine, pubr) = start_engine(
        &dir,
        &channels,
        &[("tell.yaml", chain)],
        "devices: []\n",
        "body-json-pub",
        None,
    )
    .await;
    let note = "valve \"B\" is stuck\nsee C:\\manual";
    pubr.publish(
        "device/pump-\"7\"/telemetry",
        serde_json::to_vec(&json!({ "note": note })).unwrap(),
    )
    .await;
    let got =
        wait_for(Duration::from_secs(10), || rx.on("/chat").pop()).expect("the webhook is called");
    let body: Value = serde_json::from_slice(&got.body).expect("valid JSON");
    assert_eq!(body["text"], format!("pump-\"7\" says {note}"));
    assert_eq!(
        body["blocks"],
        json!([{"type": "section", "fields": 2, "urgent": true}])
    );
    assert_eq!(
        got.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}
