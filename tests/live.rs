//! The live engine against real parts: the `rulechain` binary, a Mosquitto broker of the test's
//! own (installed by `scripts/test.sh`) or the embedded broker, and MQTT clients. Each test
//! builds an engine directory (config, devices, chains) and watches what comes out on MQTT.

mod common;

use std::time::{Duration, Instant};

use common::{engine_dir, free_port, tempdir, Engine, Mosquitto, Mqtt};
use serde_json::json;

const DEVICES: &str =
    "devices:\n  - id: pump-3\n    type: pump\n    attributes: { rated_current: 10.0 }\n";

const OVERLOAD: &str = r#"
chain: overload
on: { kind: telemetry }
nodes:
  - id: hot
    filter: msg.current > attr.rated_current * 1.2
    for: 1s
  - id: shed
    rpc: { method: setLoad, params: { percent: 80 }, await: 5s }
    on_error: timeout
  - id: replied
    publish: { topic: "out/${meta.device}/replied", qos: 1 }
    next: []
  - id: timeout
    publish: { topic: "out/${meta.device}/timeout", qos: 1 }
"#;

/// Collects `{"seq": N}` messages until all of 0..n arrived (at most 30 s); returns the missing.
async fn missing_seqs(sub: &mut Mqtt, n: u64) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (seen.len() as u64) < n && Instant::now() < deadline {
        if let Some((_, v)) = sub.expect(Duration::from_secs(2), |_, _| true).await {
            if let Some(s) = v["seq"].as_u64() {
                seen.insert(s);
            }
        }
    }
    (0..n).filter(|i| !seen.contains(i)).collect()
}

/// `rulechain dry-run FLAG PATH --input INPUT`: the events it printed.
fn dry_run_events(
    flag: &str,
    path: &std::path::Path,
    input: &std::path::Path,
) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["dry-run", flag])
        .arg(path)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mqtt_cfg(port: u16, id: &str) -> String {
    format!("mqtt: {{url: mqtt://127.0.0.1:{port}, client_id: {id}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_in_rpc_out_and_the_reply_is_matched_by_id() {
    let dir = tempdir("rpc");
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    engine_dir(
        &dir,
        &mqtt_cfg(broker.port, "rc-rpc"),
        http,
        &[("overload.yaml", OVERLOAD)],
        DEVICES,
    );
    let _engine = Engine::start(&dir, http);
    let mut dev = Mqtt::connect(
        broker.port,
        "pump-3-sim",
        true,
        &["site/a/device/pump-3/command", "out/#"],
    )
    .await;
    // 13 A on a 10 A pump, held for more than 1 s.
    for _ in 0..4 {
        dev.publish("site/a/device/pump-3/telemetry", r#"{"current": 13.0}"#)
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (topic, cmd) = dev
        .expect(Duration::from_secs(10), |t, _| t.ends_with("/command"))
        .await
        .expect("no RPC command arrived on the device's command topic");
    assert_eq!(topic, "site/a/device/pump-3/command");
    assert_eq!(cmd["method"], "setLoad");
    assert_eq!(cmd["params"], json!({"percent": 80}));
    let id = cmd["id"]
        .as_str()
        .expect("the command has a string id")
        .to_string();
    // A reply with another id is not ours; the one with the command's id resumes the message.
    dev.publish(
        "site/a/device/pump-3/rpc_response",
        json!({"id": "someone-else", "result": "x"}).to_string(),
    )
    .await;
    dev.publish(
        "site/a/device/pump-3/rpc_response",
        json!({"id": id, "result": "ok"}).to_string(),
    )
    .await;
    let (topic, reply) = dev
        .expect(Duration::from_secs(10), |t, _| t.starts_with("out/"))
        .await
        .expect("the awaited reply did not pass on");
    assert_eq!(topic, "out/pump-3/replied");
    assert_eq!(reply["id"], json!(id));
    assert_eq!(reply["result"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_command_times_out_to_on_error() {
    let dir = tempdir("rpc-timeout");
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    engine_dir(
        &dir,
        &mqtt_cfg(broker.port, "rc-rpct"),
        http,
        &[("overload.yaml", &OVERLOAD.replace("await: 5s", "await: 1s"))],
        DEVICES,
    );
    let _engine = Engine::start(&dir, http);
    let mut dev = Mqtt::connect(broker.port, "pump-3-mute", true, &["out/#"]).await;
    for _ in 0..4 {
        dev.publish("site/a/device/pump-3/telemetry", r#"{"current": 13.0}"#)
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (topic, _) = dev
        .expect(Duration::from_secs(10), |_, _| true)
        .await
        .expect("the timeout did not go to on_error");
    assert_eq!(topic, "out/pump-3/timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attributes_update_flips_a_filter_decision() {
    let dir = tempdir("attrs");
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    let chain = r#"
chain: limit
on: { kind: telemetry }
nodes:
  - filter: msg.v > (attr.limit ?? 100)
  - publish: { topic: "out/${meta.device}", qos: 1 }
"#;
    engine_dir(
        &dir,
        &mqtt_cfg(broker.port, "rc-attrs"),
        http,
        &[("limit.yaml", chain)],
        "devices: []\n",
    );
    let _engine = Engine::start(&dir, http);
    let mut c = Mqtt::connect(broker.port, "attrs-test", true, &["out/#"]).await;
    c.publish("device/d1/attributes", r#"{"limit": 10}"#).await;
    c.publish("device/d1/telemetry", r#"{"v": 5, "n": 1}"#)
        .await;
    assert!(
        c.drain(Duration::from_millis(800)).await.is_empty(),
        "5 is under the limit 10: nothing passes"
    );
    c.publish("device/d1/attributes", r#"{"limit": 1}"#).await;
    c.publish("device/d1/telemetry", r#"{"v": 5, "n": 2}"#)
        .await;
    let (_, v) = c
        .expect(Duration::from_secs(5), |_, _| true)
        .await
        .expect("after the update to limit 1, v=5 passes");
    assert_eq!(v["n"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_edit_applies_within_2s_and_a_broken_file_keeps_the_old_rules() {
    let dir = tempdir("reload");
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    let chain = |limit: &str| {
        format!("chain: gate\non: {{ kind: telemetry }}\nnodes:\n  - filter: msg.v > {limit}\n  - publish: {{ topic: \"out/gate\", qos: 1 }}\n")
    };
    engine_dir(
        &dir,
        &mqtt_cfg(broker.port, "rc-reload"),
        http,
        &[("gate.yaml", &chain("10"))],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http);
    let mut c = Mqtt::connect(broker.port, "reload-test", true, &["out/#"]).await;
    c.publish("device/d1/telemetry", r#"{"v": 5}"#).await;
    assert!(c.drain(Duration::from_millis(600)).await.is_empty());
    assert_eq!(engine.status()["rules"]["generation"], 1);
    // The edit: from `> 10` to `> 1`.
    let edited = Instant::now();
    std::fs::write(dir.join("rules/gate.yaml"), chain("1")).unwrap();
    loop {
        if engine.status()["rules"]["generation"] == 2 {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(2),
            "the edit was not applied within 2 s:\n{}",
            engine.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.publish("device/d1/telemetry", r#"{"v": 5, "n": 1}"#)
        .await;
    let (_, v) = c
        .expect(Duration::from_secs(5), |_, _| true)
        .await
        .expect("the edited rule lets v=5 pass");
    assert_eq!(v["n"], 1);
    // A broken edit: the last good version keeps running, the errors are queryable.
    std::fs::write(dir.join("rules/gate.yaml"), chain("(1")).unwrap();
    let broken = Instant::now();
    loop {
        let st = engine.status();
        if st["rules"]["failed"].as_u64() >= Some(1) {
            let errors = st["rules"]["errors"].as_array().unwrap().clone();
            assert!(
                errors
                    .iter()
                    .any(|e| e.as_str().unwrap().contains("gate.yaml:4:")),
                "{errors:?}"
            );
            assert_eq!(
                st["rules"]["generation"], 2,
                "a broken file swaps nothing in"
            );
            break;
        }
        assert!(
            broken.elapsed() < Duration::from_secs(5),
            "{}",
            engine.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.publish("device/d1/telemetry", r#"{"v": 5, "n": 2}"#)
        .await;
    let (_, v) = c
        .expect(Duration::from_secs(5), |_, _| true)
        .await
        .expect("the old rules still run");
    assert_eq!(v["n"], 2);
    // SIGHUP reads the directory again (here: finds the same problem, swaps nothing).
    let checks = engine.status()["rules"]["checks"].as_u64().unwrap();
    engine.signal("HUP");
    let hup = Instant::now();
    while engine.status()["rules"]["checks"].as_u64() == Some(checks) {
        assert!(
            hup.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload:\n{}",
            engine.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(engine.status()["rules"]["generation"], 2);
    // POST /api/reload reports the same problem.
    let (code, body) = common::http(http, "POST", "/api/reload").unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("gate.yaml"), "{body}");
}

const HOLD_ALARM: &str = r#"
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
    publish: { topic: "out/alarm", qos: 1 }
    next: []
  - id: cool
    alarm: { type: Hot, action: clear }
  - id: tell-clear
    publish: { topic: "out/alarm", qos: 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keep_holds_and_alarms_on_the_embedded_broker() {
    let dir = tempdir("kill9");
    let port = free_port();
    let http = free_port();
    engine_dir(
        &dir,
        &format!("embedded_broker: {{listen: 127.0.0.1:{port}}}"),
        http,
        &[("hot.yaml", HOLD_ALARM)],
        "devices: []\n",
    );
    let mut engine = Engine::start(&dir, http);
    let c = Mqtt::connect(port, "kill9-test-1", true, &["out/#"]).await;
    let t0 = rulechain::engine::clock::wall_ms();
    c.publish(
        "device/d1/telemetry",
        json!({"v": 20, "ts": t0}).to_string(),
    )
    .await;
    // The hold is running; wait for a checkpoint (100 ms), then kill -9.
    tokio::time::sleep(Duration::from_millis(800)).await;
    engine.kill9();
    drop(c);
    engine.restart();
    let restarted = rulechain::engine::clock::wall_ms();
    let mut c = Mqtt::connect(port, "kill9-test-2", true, &["out/#"]).await;
    let (_, v) = c
        .expect(Duration::from_secs(10), |_, _| true)
        .await
        .expect("the hold that began before the kill raised its alarm");
    assert_eq!(v["alarm"]["transition"], "created");
    let start = v["alarm"]["start_ts"].as_i64().unwrap();
    assert!(
        start >= t0 + 5000 && start < restarted + 5000,
        "the hold kept its start (t0 {t0}, restart {restarted}, alarm at {start})"
    );
    let id = v["alarm"]["id"].as_str().unwrap().to_string();
    // The alarm is on disk before it left: a second kill -9 and more hot readings raise nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.kill9();
    drop(c);
    engine.restart();
    let mut c = Mqtt::connect(port, "kill9-test-3", true, &["out/#"]).await;
    c.publish("device/d1/telemetry", r#"{"v": 20}"#).await;
    c.publish("device/d1/telemetry", r#"{"v": 21}"#).await;
    let got = c.drain(Duration::from_millis(4000)).await;
    assert!(
        got.is_empty(),
        "the active alarm fired again after a restart: {got:?}"
    );
    // And it clears once.
    c.publish("device/d1/telemetry", r#"{"v": 1}"#).await;
    c.publish("device/d1/telemetry", r#"{"v": 2}"#).await;
    let got = c.drain(Duration::from_millis(1500)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1["alarm"]["transition"], "cleared");
    assert_eq!(got[0].1["alarm"]["id"], json!(id));
    // A graceful stop exits 0.
    let status = engine.stop().unwrap();
    assert!(status.success(), "{status}\n{}", engine.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_no_qos1_message() {
    let dir = tempdir("broker-restart");
    let mut broker = Mosquitto::start(&dir);
    let http = free_port();
    let chain = "chain: echo\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/seen\", qos: 1 }\n";
    engine_dir(
        &dir,
        &mqtt_cfg(broker.port, "rc-restart"),
        http,
        &[("echo.yaml", chain)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http);
    // Persistent sessions on both test clients: QoS 1 survives their reconnects too.
    let mut sub = Mqtt::connect(broker.port, "restart-sub", false, &["out/seen"]).await;
    let publ = Mqtt::connect(broker.port, "restart-pub", false, &[]).await;
    const N: u64 = 600;
    let port = broker.port;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            let d = format!("device/d{}/telemetry", i % 7);
            publ.publish(&d, json!({"seq": i}).to_string()).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publ
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    broker.restart();
    assert_eq!(broker.port, port);
    let _publ = publisher.await.unwrap();
    let missing = missing_seqs(&mut sub, N).await;
    assert!(
        missing.is_empty(),
        "{} of {N} lost across the broker restart: {:?}…\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        engine.log()
    );
    assert!(engine.status()["counters"]["mqtt_connects"].as_u64() >= Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_at_qos_0_1_and_2_arrive_once_each_in_order() {
    // The egress connection is rulechain's own (batched writes, QoS 1 and 2 handshakes): every
    // publish of every QoS arrives, once, in the order the chain made it.
    let dir = tempdir("egress-qos");
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    let chain = "chain: fan\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/q0\", qos: 0 }\n  - publish: { topic: \"out/q1\", qos: 1 }\n  - publish: { topic: \"out/q2\", qos: 2 }\n";
    engine_dir(
        &dir,
        &mqtt_cfg(broker.port, "rc-egress"),
        http,
        &[("fan.yaml", chain)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http);
    let mut sub = Mqtt::connect(broker.port, "egress-sub", true, &["out/+"]).await;
    let publ = Mqtt::connect(broker.port, "egress-pub", true, &[]).await;
    // One device, so the chain sees (and publishes) the messages in this order; in bursts, so
    // a turn of the shard hands over several at once.
    const N: u64 = 300;
    for i in 0..N {
        publ.publish("device/d1/telemetry", json!({"seq": i}).to_string())
            .await;
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.values().map(Vec::len).sum::<usize>() < 3 * N as usize && Instant::now() < deadline {
        if let Some((t, v)) = sub.expect(Duration::from_secs(2), |_, _| true).await {
            got.entry(t).or_default().push(v["seq"].as_u64().unwrap());
        }
    }
    // A moment more: a duplicate would arrive now.
    for (t, v) in sub.drain(Duration::from_millis(500)).await {
        got.entry(t).or_default().push(v["seq"].as_u64().unwrap());
    }
    let want: Vec<u64> = (0..N).collect();
    for topic in ["out/q0", "out/q1", "out/q2"] {
        assert_eq!(
            got.get(topic).map(Vec::as_slice),
            Some(want.as_slice()),
            "{topic}: every publish once, in order\n{}",
            engine.log()
        );
    }
    assert_eq!(engine.status()["counters"]["egress_dropped"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_broker_publishes_arrive_in_order_and_retained_ones_stay() {
    // On its embedded broker the engine reads and publishes through in-process links, not a
    // socket: every message still runs once, in order per device, every publish reaches a
    // network subscriber once and in order, and a retained one is kept for later subscribers.
    let dir = tempdir("embedded-links");
    let port = free_port();
    let http = free_port();
    let chain = "chain: fan\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/${meta.device}/q0\", qos: 0 }\n  - publish: { topic: \"out/${meta.device}/q1\", qos: 1 }\n  - publish: { topic: \"last/${meta.device}\", retain: true }\n";
    engine_dir(
        &dir,
        &format!("embedded_broker: {{listen: 127.0.0.1:{port}}}"),
        http,
        &[("fan.yaml", chain)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http);
    let mut sub = Mqtt::connect(port, "links-sub", true, &["out/#"]).await;
    let publ = Mqtt::connect(port, "links-pub", true, &[]).await;
    const N: u64 = 500;
    for i in 0..N {
        for d in ["d1", "d2"] {
            publ.publish(
                &format!("device/{d}/telemetry"),
                json!({"seq": i}).to_string(),
            )
            .await;
        }
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.values().map(Vec::len).sum::<usize>() < 4 * N as usize && Instant::now() < deadline {
        if let Some((t, v)) = sub.expect(Duration::from_secs(2), |_, _| true).await {
            got.entry(t).or_default().push(v["seq"].as_u64().unwrap());
        }
    }
    for (t, v) in sub.drain(Duration::from_millis(500)).await {
        got.entry(t).or_default().push(v["seq"].as_u64().unwrap());
    }
    let want: Vec<u64> = (0..N).collect();
    for topic in ["out/d1/q0", "out/d1/q1", "out/d2/q0", "out/d2/q1"] {
        assert_eq!(
            got.get(topic).map(Vec::as_slice),
            Some(want.as_slice()),
            "{topic}: every publish once, in order\n{}",
            engine.log()
        );
    }
    // A subscriber that comes later gets each device's last retained message.
    let mut late = Mqtt::connect(port, "links-late", true, &["last/+"]).await;
    let mut retained: Vec<(String, u64)> = late
        .drain(Duration::from_secs(2))
        .await
        .into_iter()
        .map(|(t, v)| (t, v["seq"].as_u64().unwrap()))
        .collect();
    retained.sort();
    assert_eq!(
        retained,
        [
            ("last/d1".to_string(), N - 1),
            ("last/d2".to_string(), N - 1)
        ]
    );
    let c = &engine.status()["counters"];
    assert_eq!(c["received"], json!(2 * N), "{c}");
    assert_eq!(c["broker_dropped"], json!(0), "{c}");
    assert_eq!(c["egress_dropped"], json!(0), "{c}");
    assert_eq!(c["mqtt_connected"], json!(true), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_counted_by_reason_and_dead_lettered() {
    let dir = tempdir("bad");
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    let chain = "chain: echo\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/ok\", qos: 1 }\n";
    engine_dir(
        &dir,
        &format!(
            "{}\ningest: {{max_payload_bytes: 100, max_depth: 4, dead_letter: dlq}}",
            mqtt_cfg(broker.port, "rc-bad")
        ),
        http,
        &[("echo.yaml", chain)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http);
    let mut c = Mqtt::connect(broker.port, "bad-test", true, &["out/#", "dlq"]).await;
    let t = "device/d1/telemetry";
    c.publish(t, "not json").await;
    c.publish(t, "[1, 2]").await;
    c.publish(t, vec![0xff, 0xfe, 0x7b]).await;
    c.publish(t, format!("{{\"x\": \"{}\"}}", "a".repeat(200)))
        .await;
    c.publish(t, r#"{"a":[[[[[1]]]]]}"#).await;
    c.publish(t, r#"{"good": true}"#).await;
    let got = c.drain(Duration::from_secs(2)).await;
    let ok: Vec<_> = got.iter().filter(|(t, _)| t == "out/ok").collect();
    assert_eq!(
        ok.len(),
        1,
        "the good message after five bad ones ran: {got:?}"
    );
    let dlq: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t == "dlq")
        .map(|(_, v)| v["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        dlq,
        [
            "not_json",
            "not_object",
            "invalid_utf8",
            "too_large",
            "too_deep"
        ]
    );
    let r = &engine.status()["counters"]["rejected"];
    for k in [
        "not_json",
        "not_object",
        "invalid_utf8",
        "too_large",
        "too_deep",
    ] {
        assert_eq!(r[k], 1, "{k}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_feeds_the_engine_and_record_writes_replayable_lines() {
    let dir = tempdir("simrec");
    let port = free_port();
    let http = free_port();
    let chain = "chain: echo\non: { kind: telemetry }\nnodes:\n  - influx: { measurement: pump }\n";
    engine_dir(
        &dir,
        &format!("embedded_broker: {{listen: 127.0.0.1:{port}}}"),
        http,
        &[("echo.yaml", chain)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http);
    let bin = env!("CARGO_BIN_EXE_rulechain");
    let broker = format!("mqtt://127.0.0.1:{port}");
    let out = dir.join("recorded.jsonl");
    let mut record = std::process::Command::new(bin)
        .args(["record", "--broker", &broker, "--count", "30", "--output"])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `record` says when the broker holds its subscriptions; the simulation starts then.
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let stderr_pipe = record.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let _ = line_tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let ready = common::wait_for(Duration::from_secs(15), || {
        line_rx
            .try_iter()
            .any(|l| l == "record: subscribed; recording")
            .then_some(())
    });
    assert!(ready.is_some(), "record never said it was subscribed");
    let sim = std::process::Command::new(bin)
        .args([
            "simulate",
            "--broker",
            &broker,
            "--devices",
            "3",
            "--rate",
            "200",
            "--count",
            "60",
        ])
        .output()
        .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let status = tokio::task::spawn_blocking(move || record.wait())
        .await
        .unwrap()
        .unwrap();
    let stderr = reader.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("30 lines written"), "{stderr}");
    // The engine saw the telemetry.
    let processed = engine.status()["counters"]["processed"].as_u64().unwrap();
    assert!(processed >= 60, "processed {processed}");
    // Three simulated devices, none in the (empty) registry: three learned.
    assert_eq!(engine.status()["counters"]["learned_devices"], 3);
    // What was recorded replays offline.
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    assert!(lines.iter().all(|l| l["topic"]
        .as_str()
        .unwrap()
        .starts_with("site/a/device/pump-")));
    let dry = std::process::Command::new(bin)
        .args(["dry-run", "--rules"])
        .arg(dir.join("rules"))
        .arg("--input")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let summary = String::from_utf8_lossy(&dry.stdout);
    let last: serde_json::Value = serde_json::from_str(summary.lines().last().unwrap()).unwrap();
    assert_eq!(last["messages"], 30);
    assert!(last["influx_points"].as_u64() >= Some(1), "{last}");
}

/// `record` writes each line as it goes (a `kill -9` loses none), and records a payload the
/// engine would reject as its text, so the dry-run of the recording rejects it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_keeps_every_line_through_a_kill_9_and_records_rejected_payloads() {
    let (dir, port, http) = common::embedded_setup(
        "record-kill",
        &[(
            "echo.yaml",
            "chain: echo\nnodes:\n  - log: { message: \"${msg.x}\" }\n",
        )],
        "devices: []\n",
    );
    let _engine = Engine::start(&dir, http);
    let bin = env!("CARGO_BIN_EXE_rulechain");
    let out = dir.join("recorded.jsonl");
    let log = std::fs::File::create(dir.join("record.err")).unwrap();
    // Killed when the test ends, whatever happened (it records until stopped).
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut record = Killed(
        std::process::Command::new(bin)
            .args([
                "record",
                "--broker",
                &format!("mqtt://127.0.0.1:{port}"),
                "--output",
            ])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let ready = common::wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(dir.join("record.err"))
            .ok()?
            .contains("record: subscribed; recording")
            .then_some(())
    });
    assert!(ready.is_some(), "record never said it was subscribed");
    let publ = Mqtt::connect(port, "record-kill-pub", true, &[]).await;
    publ.publish("device/d1/telemetry", r#"{"x": 1}"#).await;
    publ.publish("device/d1/telemetry", "not json at all").await;
    publ.publish("device/d1/telemetry", r#"{"x": 3}"#).await;
    let lines = common::wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&out).ok()?;
        (text.lines().count() == 3).then_some(text)
    })
    .unwrap_or_else(|| {
        panic!(
            "the lines were not written while record ran: {:?}",
            std::fs::read_to_string(&out)
        )
    });
    // kill -9: no shutdown, no last flush.
    record.0.kill().unwrap();
    let _ = record.0.wait();
    let parsed: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed[1]["payload"], "not json at all", "{lines}");
    let events = dry_run_events("--rules", &dir.join("rules"), &out);
    let logs = events.iter().filter(|e| e["event"] == "log").count();
    assert_eq!(logs, 2, "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "dropped" || e["event"] == "error"),
        "the rejected payload was not rejected again: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restarts_mid_stream_graceful_or_kill_9_lose_no_qos1_message() {
    let dir = tempdir("engine-restart");
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    let chain = "chain: echo\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/seen\", qos: 1 }\n";
    engine_dir(
        &dir,
        &mqtt_cfg(broker.port, "rc-erestart"),
        http,
        &[("echo.yaml", chain)],
        "devices: []\n",
    );
    let mut engine = Engine::start(&dir, http);
    let mut sub = Mqtt::connect(broker.port, "erestart-sub", false, &["out/seen"]).await;
    let publ = Mqtt::connect(broker.port, "erestart-pub", false, &[]).await;
    const N: u64 = 900;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            publ.publish(
                &format!("device/d{}/telemetry", i % 5),
                json!({"seq": i}).to_string(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        publ
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = engine.stop().unwrap();
    assert!(
        status.success(),
        "graceful stop: {status}\n{}",
        engine.log()
    );
    assert!(engine.log().contains("stopped"), "{}", engine.log());
    engine.restart();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    engine.kill9();
    engine.restart();
    let _publ = publisher.await.unwrap();
    let missing = missing_seqs(&mut sub, N).await;
    assert!(
        missing.is_empty(),
        "{} of {N} lost across engine restarts: {:?}…\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        engine.log()
    );
}

/// An engine on a Mosquitto of its own with a 1 s batch window, subscribed at `qos`, its one
/// chain publishing every telemetry message to `out/seen`; a subscriber to that and a
/// publisher, once a first message (`seq` 500) ran.
async fn batch_window_engine(name: &str, qos: u8) -> (Mosquitto, Engine, Mqtt, Mqtt) {
    let dir = tempdir(name);
    let broker = Mosquitto::start(&dir);
    let http = free_port();
    let chain = "chain: echo\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/seen\", qos: 1 }\n";
    engine_dir(
        &dir,
        &format!(
            "mqtt: {{url: mqtt://127.0.0.1:{}, client_id: rc-{name}, batch_window: 1s, qos: {qos}}}",
            broker.port
        ),
        http,
        &[("echo.yaml", chain)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http);
    let mut sub = Mqtt::connect(broker.port, &format!("{name}-sub"), false, &["out/seen"]).await;
    let publ = Mqtt::connect(broker.port, &format!("{name}-pub"), false, &[]).await;
    send(&publ, 500, 1).await;
    sub.expect(Duration::from_secs(10), |_, v| v["seq"] == 500)
        .await
        .expect("the first message did not run");
    (broker, engine, sub, publ)
}

/// `{"seq": i}` for i in `from..from + n` on three devices' telemetry, 2 ms apart.
async fn send(publ: &Mqtt, from: u64, n: u64) {
    for i in from..from + n {
        let d = format!("device/d{}/telemetry", i % 3);
        publ.publish(&d, json!({"seq": i}).to_string()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The shard turns that took messages so far.
fn shard_turns(e: &Engine) -> u64 {
    e.status()["counters"]["shard_turns"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_messages_are_gathered_for_the_batch_window_and_a_stop_runs_what_it_holds() {
    let (_broker, mut engine, mut sub, publ) = batch_window_engine("batch-window", 0).await;
    // After a quiet spell, one message and 100 more at once: the first runs at once, the rest
    // wait for the window (1 s after the first) and run together; without a window, each read
    // from the broker is a turn of its own.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = shard_turns(&engine);
    send(&publ, 0, 101).await;
    let mut arrived = std::collections::BTreeMap::new();
    while arrived.len() < 101 {
        match sub.expect(Duration::from_secs(10), |_, _| true).await {
            Some((_, v)) => {
                arrived
                    .entry(v["seq"].as_u64().unwrap())
                    .or_insert_with(Instant::now);
            }
            None => panic!("{} of 101 arrived\n{}", arrived.len(), engine.log()),
        }
    }
    let held = arrived[&1].duration_since(arrived[&0]);
    assert!(
        held >= Duration::from_millis(500),
        "the message after a quiet spell was held with the next ones ({held:?} between them)"
    );
    let took = shard_turns(&engine) - before;
    assert!(
        took <= 4,
        "101 messages in a burst took {took} shard turns: they were not gathered"
    );
    // A burst held back when the engine is told to stop runs before it stops (at QoS 0 the
    // broker would not deliver it again).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&publ, 1000, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = sub.drain(Duration::from_millis(50)).await.len();
    assert!(
        early < 30,
        "the window held nothing back ({early} of 30 out within 300 ms)"
    );
    let status = engine.stop().unwrap();
    assert!(
        status.success(),
        "graceful stop: {status}\n{}",
        engine.log()
    );
    let late = sub.drain(Duration::from_millis(1000)).await.len();
    assert_eq!(
        early + late,
        30,
        "the messages held for the window were not run at the stop\n{}",
        engine.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_are_not_held_past_a_few_the_broker_waits_on() {
    // A broker sends only so many unacknowledged QoS 1 messages (Mosquitto 20 by default) and
    // drops what its queue cannot hold: a window that held them all would cap the rate.
    let (_broker, engine, mut sub, publ) = batch_window_engine("batch-qos1", 1).await;
    let before = shard_turns(&engine);
    send(&publ, 0, 100).await;
    let missing = missing_seqs(&mut sub, 100).await;
    assert!(missing.is_empty(), "lost: {missing:?}\n{}", engine.log());
    let took = shard_turns(&engine) - before;
    assert!(
        took >= 10,
        "100 QoS 1 messages took {took} shard turns: more than 8 awaiting acknowledgement were held"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_talks_to_a_broker_over_tls_with_its_ca() {
    let dir = tempdir("mqtts");
    let certs = common::certs(&dir);
    let (mosq, tls_port) = Mosquitto::start_tls(&dir, &certs);
    let http = free_port();
    engine_dir(
        &dir,
        &format!(
            "mqtt: {{url: 'mqtts://localhost:{tls_port}', client_id: rc-tls, tls: {{ca: ca.pem}}}}"
        ),
        http,
        &[(
            "echo.yaml",
            "chain: echo\nnodes:\n  - publish: { topic: \"out/${meta.device}\", qos: 1 }\n",
        )],
        DEVICES,
    );
    let engine = Engine::start(&dir, http);
    // The test's client uses the plain listener of the same broker.
    let mut sub = Mqtt::connect(mosq.port, "tls-sub", true, &["out/#"]).await;
    let pubr = Mqtt::connect(mosq.port, "tls-pub", true, &[]).await;
    pubr.publish("device/pump-3/telemetry", r#"{"current": 1.5}"#)
        .await;
    let got = sub
        .expect(Duration::from_secs(10), |t, _| t == "out/pump-3")
        .await
        .unwrap_or_else(|| {
            panic!(
                "nothing came back through the TLS connections\n{}",
                engine.log()
            )
        });
    assert_eq!(got.1["current"], 1.5);
    assert_eq!(engine.status()["counters"]["mqtt_connected"], true);
}

/// A scripted MQTT 3.1.1 peer for one edge of the protocol the real brokers do not show on
/// demand: it accepts every connection and holds each SUBACK until `release` is set, then
/// refuses (0x80) the filters that start with `site/` and grants the rest. It records every
/// SUBSCRIBE's filters.
struct SlowSubAck {
    port: u16,
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
    subscribes: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl SlowSubAck {
    fn start() -> SlowSubAck {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let release = Arc::new(AtomicBool::new(false));
        let subscribes = Arc::new(Mutex::new(Vec::new()));
        let (rel, subs) = (release.clone(), subscribes.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (rel, subs) = (rel.clone(), subs.clone());
                std::thread::spawn(move || {
                    let _ = Self::serve(conn, &rel, &subs);
                });
            }
        });
        SlowSubAck {
            port,
            release,
            subscribes,
        }
    }

    fn serve(
        mut s: std::net::TcpStream,
        release: &std::sync::atomic::AtomicBool,
        subscribes: &std::sync::Mutex<Vec<Vec<String>>>,
    ) -> std::io::Result<()> {
        use std::io::{Read, Write};
        loop {
            let mut head = [0u8; 1];
            s.read_exact(&mut head)?;
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                len |= ((b[0] & 0x7f) as usize) << shift;
                shift += 7;
                if b[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body)?;
            match head[0] >> 4 {
                1 => s.write_all(&[0x20, 0x02, 0x00, 0x00])?,
                8 => {
                    let mut filters = Vec::new();
                    let mut i = 2;
                    while i + 2 <= body.len() {
                        let n = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                        filters.push(String::from_utf8_lossy(&body[i + 2..i + 2 + n]).to_string());
                        i += 2 + n + 1;
                    }
                    subscribes.lock().unwrap().push(filters.clone());
                    while !release.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let mut ack = vec![0x90, (2 + filters.len()) as u8, body[0], body[1]];
                    ack.extend(filters.iter().map(|f| {
                        if f.starts_with("site/") {
                            0x80
                        } else {
                            0x01
                        }
                    }));
                    s.write_all(&ack)?;
                }
                12 => s.write_all(&[0xd0, 0x00])?,
                14 => return Ok(()),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_only_once_the_broker_acknowledged_the_subscriptions() {
    let dir = tempdir("suback");
    let peer = SlowSubAck::start();
    let http = free_port();
    engine_dir(&dir, &mqtt_cfg(peer.port, "rc-suback"), http, &[], DEVICES);
    let engine = Engine::launch(&dir, http);
    let asked = common::wait_for(Duration::from_secs(15), || {
        peer.subscribes.lock().unwrap().first().cloned()
    })
    .unwrap_or_else(|| panic!("the engine never subscribed\n{}", engine.log()));
    assert!(
        asked.contains(&"device/+/telemetry".to_string()),
        "{asked:?}"
    );
    // Connected, but the subscriptions are not acknowledged yet: not healthy.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let code = common::http(http, "GET", "/healthz").map(|r| r.0);
        assert_eq!(code, Some(503), "healthy before the SUBACK");
        std::thread::sleep(Duration::from_millis(100));
    }
    peer.release
        .store(true, std::sync::atomic::Ordering::SeqCst);
    common::wait_for(Duration::from_secs(10), || {
        (common::http(http, "GET", "/healthz").map(|r| r.0) == Some(200)).then_some(())
    })
    .unwrap_or_else(|| panic!("not healthy after the SUBACK\n{}", engine.log()));
    assert_eq!(
        peer.subscribes.lock().unwrap().len(),
        1,
        "one SUBSCRIBE for every filter"
    );
    let log = engine.log();
    let refused = log
        .lines()
        .find(|l| l.contains("refused these subscriptions"))
        .unwrap_or_else(|| panic!("the refused filters were not reported\n{log}"));
    assert!(refused.contains("site/+/device/+/telemetry"), "{refused}");
    assert!(!refused.contains("\"device/+/telemetry"), "{refused}");
}

/// One decoder for both harnesses: the same raw MQTT payloads (a JSON status, a plain `offline`
/// last will, a payload that is no JSON) give the same `publish` events in `dry-run` as on the
/// wire in `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_run_decode_the_same_payloads_alike() {
    let dir = tempdir("onedecoder");
    let port = free_port();
    let http = free_port();
    let chain = "chain: status\non: { kind: status }\nnodes:\n  - publish: { topic: \"out/${meta.device}\" }\n";
    engine_dir(
        &dir,
        &format!("embedded_broker: {{listen: 127.0.0.1:{port}}}"),
        http,
        &[("status.yaml", chain)],
        "devices: []\n",
    );
    let raw: [&[u8]; 4] = [
        br#"{"status": "online"}"#,
        b"offline",
        b"not a word",
        b"\"Online\"",
    ];
    // dry-run: the payloads as text in the topic form.
    let input = dir.join("input.jsonl");
    let lines: Vec<String> = raw
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({
                "topic": "device/gw-1/status",
                "ts": 1_000 * (i as i64 + 1),
                "payload": String::from_utf8_lossy(p),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let events = dry_run_events("--config", &dir.join("rulechain.yaml"), &input);
    let offline: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "publish")
        .map(|e| e["payload"].clone())
        .collect();
    let bad: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["reason"] == "bad-input")
        .collect();
    assert_eq!(bad.len(), 1, "{events:?}");
    assert!(
        bad[0]["detail"].as_str().unwrap().contains("not_json"),
        "{bad:?}"
    );
    // run: the same bytes on the wire.
    let engine = Engine::start(&dir, http);
    let mut sub = common::Mqtt::connect(port, "onedecoder-sub", true, &["out/#"]).await;
    let publisher = common::Mqtt::connect(port, "onedecoder-pub", true, &[]).await;
    for p in raw {
        publisher.publish("device/gw-1/status", p.to_vec()).await;
    }
    let wire: Vec<serde_json::Value> = sub
        .drain(Duration::from_secs(3))
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(wire, offline, "run and dry-run disagree");
    assert_eq!(
        wire,
        vec![
            serde_json::json!({"status": "online", "online": true}),
            serde_json::json!({"status": "offline", "online": false}),
            serde_json::json!({"status": "online", "online": true}),
        ]
    );
    assert_eq!(engine.status()["counters"]["rejected"]["not_json"], 1);
}

#[test]
fn a_broker_that_never_answers_does_not_hold_up_the_shutdown() {
    // A listener that accepts and never sends CONNACK: the ingest connection waits inside its
    // connect. A stop meanwhile must still let the shards finish and save within the shutdown
    // timeout (3 s here; the CONNACK wait alone is 10 s).
    let dir = tempdir("silent-broker");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let http = free_port();
    engine_dir(
        &dir,
        &mqtt_cfg(port, "rc-silent"),
        http,
        &[],
        "devices: []\n",
    );
    let cfg = dir.join("rulechain.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("engine: {", "engine: {shutdown_timeout: 3s, "),
    )
    .unwrap();
    let mut engine = Engine::launch(&dir, http);
    let start = Instant::now();
    while common::http(http, "GET", "/livez").map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{}",
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both connections are now waiting for a CONNACK that never comes.
    std::thread::sleep(Duration::from_millis(500));
    let status = engine.stop().unwrap();
    let log = engine.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        !log.contains("shards did not finish within the shutdown timeout"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
}
