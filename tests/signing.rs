//! Signed messages against the real binary and the embedded broker: devices sign with an
//! independent implementation (Python's `hmac` and `json`, as the docs' device snippet does),
//! the engine refuses what is tampered with, replayed, stale, unsigned or keyless, counts it,
//! never shows the key, and signs its commands the same way.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{embedded_setup, http, Engine, Mqtt};

const KEY: &str = "s3cret-pump-1-key";

const CHAIN: &str = r#"
chain: signed
on: { kind: telemetry }
nodes:
  - id: out
    publish: { topic: "out/${meta.device}", qos: 1 }
  - id: command
    filter: msg.shed == true
  - rpc: { method: setLoad, params: { percent: 80 } }
"#;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Signs a payload as a device would, in Python: sorted keys, no spaces, HMAC-SHA256, hex.
fn python_sign(payload: &serde_json::Value, key: &str) -> Vec<u8> {
    let script = r#"
import hashlib, hmac, json, sys
key, payload = sys.argv[1], json.loads(sys.argv[2])
body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
payload["sig"] = hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
print(json.dumps(payload))
"#;
    let out = Command::new("python3")
        .args(["-c", script, key, &payload.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.trim_ascii_end().to_vec()
}

/// Verifies a command's signature in Python.
fn python_verify(command: &serde_json::Value, key: &str) -> bool {
    let script = r#"
import hashlib, hmac, json, sys
key, cmd = sys.argv[1], json.loads(sys.argv[2])
sig = cmd.pop("sig")
body = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
print(hmac.compare_digest(sig, hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()))
"#;
    let out = Command::new("python3")
        .args(["-c", script, key, &command.to_string()])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

fn rejected(http_port: u16) -> u64 {
    let (_, body) = http(http_port, "GET", "/api/status").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["counters"]["rejected"]["bad_signature"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_replayed_stale_or_unsigned_message_is_refused_and_counted_and_the_key_never_shows(
) {
    let devices = format!(
        "devices:\n  - id: pump-1\n    attributes: {{ signing_key: \"{KEY}\", rated_current: 10.0 }}\n  - id: pump-2\n    attributes: {{ rated_current: 10.0 }}\n"
    );
    let (dir, mqtt, http_port) = embedded_setup("signing", &[("signed.yaml", CHAIN)], &devices);
    let cfg = dir.join("rulechain.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "ingest: {signature: {key_attribute: signing_key, max_skew: 30s, commands: true}}\n";
    std::fs::write(&cfg, text).unwrap();
    let engine = Engine::start(&dir, http_port);
    let mut sub = Mqtt::connect(mqtt, "signing-sub", true, &["out/#", "device/+/command"]).await;
    let device = Mqtt::connect(mqtt, "signing-dev", true, &[]).await;
    let topic = "device/pump-1/telemetry";

    // A good message: processed, without its signature.
    let good = python_sign(
        &serde_json::json!({"ts": now_ms(), "temp": 70, "site": "nord"}),
        KEY,
    );
    device.publish(topic, good.clone()).await;
    let (_, out) = sub
        .expect(Duration::from_secs(10), |t, _| t == "out/pump-1")
        .await
        .expect("the signed message is processed");
    assert_eq!(out["temp"], 70);
    assert!(
        out.get("sig").is_none(),
        "the signature stays out of msg: {out}"
    );
    assert_eq!(rejected(http_port), 0);

    // Tampered after signing, replayed, stale, unsigned, and from a device without a key.
    let tampered = String::from_utf8(good.clone()).unwrap().replace("70", "20");
    let stale = python_sign(
        &serde_json::json!({"ts": now_ms() - 60_000, "temp": 71}),
        KEY,
    );
    let unsigned = serde_json::json!({"ts": now_ms(), "temp": 72}).to_string();
    let keyless = python_sign(&serde_json::json!({"ts": now_ms(), "temp": 73}), KEY);
    device.publish(topic, tampered.into_bytes()).await;
    device.publish(topic, good.clone()).await;
    device.publish(topic, stale).await;
    device.publish(topic, unsigned.into_bytes()).await;
    device.publish("device/pump-2/telemetry", keyless).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rejected(http_port) < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rejected(http_port), 5, "each refusal counted once");
    let leaked = sub.drain(Duration::from_secs(1)).await;
    assert!(
        leaked.iter().all(|(t, _)| !t.starts_with("out/")),
        "a refused message was processed: {leaked:?}"
    );
    let (_, metrics) = http(http_port, "GET", "/metrics").unwrap();
    assert!(
        metrics.contains("rulechain_engine_rejected_total{reason=\"bad_signature\"} 5"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("rejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A command is signed for the device, with the engine's time.
    let shed = python_sign(&serde_json::json!({"ts": now_ms(), "shed": true}), KEY);
    device.publish(topic, shed).await;
    let (_, cmd) = sub
        .expect(Duration::from_secs(10), |t, _| t == "device/pump-1/command")
        .await
        .expect("the command goes out");
    assert_eq!(cmd["method"], "setLoad");
    assert!(
        cmd["ts"]
            .as_i64()
            .is_some_and(|t| (t - now_ms()).abs() < 30_000),
        "{cmd}"
    );
    assert!(
        python_verify(&cmd, KEY),
        "the device verifies the command: {cmd}"
    );
    let mut forged = cmd.clone();
    forged["params"]["percent"] = 0.into();
    assert!(
        !python_verify(&forged, KEY),
        "a changed command does not verify"
    );

    // The key is nowhere to be seen: not in the devices API, not in the log.
    for path in ["/api/devices", "/api/devices/pump-1"] {
        let (code, body) = http(http_port, "GET", path).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        assert!(
            !body.contains(KEY) && !body.contains("signing_key"),
            "{path}: {body}"
        );
        if path.ends_with("pump-1") {
            assert!(body.contains("rated_current"), "{body}");
        }
    }
    assert!(!engine.log().contains(KEY), "the key is logged");
}

#[test]
fn dry_run_checks_signatures_as_run_does() {
    let dir = common::tempdir("signing-dry");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/signed.yaml"), CHAIN).unwrap();
    std::fs::write(
        dir.join("rulechain.yaml"),
        "rules: rules\ningest: {signature: {key: \"${TEST_SIGNING_KEY}\"}}\n",
    )
    .unwrap();
    let good = python_sign(
        &serde_json::json!({"ts": 1_700_000_000_000i64, "temp": 70}),
        KEY,
    );
    let good = String::from_utf8(good).unwrap();
    let tampered = good.replace("70", "20");
    let input = format!(
        "{{\"device\": \"pump-1\", \"data\": {good}}}\n{{\"device\": \"pump-1\", \"data\": {tampered}}}\n{{\"device\": \"pump-1\", \"data\": {good}}}\n"
    );
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args([
            "dry-run",
            "--config",
            "rulechain.yaml",
            "--input",
            "in.jsonl",
        ])
        .env("TEST_SIGNING_KEY", KEY)
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let published: Vec<_> = events.iter().filter(|e| e["event"] == "publish").collect();
    assert_eq!(published.len(), 1, "{out}");
    assert!(published[0]["payload"].get("sig").is_none(), "{out}");
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "dropped")
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 2, "the tampered line and the replay: {out}");
    assert_eq!(refused[0].0, 2);
    assert!(
        refused[0].1.contains("bad_signature: wrong signature"),
        "{refused:?}"
    );
    assert_eq!(refused[1].0, 3);
    assert!(
        refused[1].1.contains("bad_signature: replayed"),
        "{refused:?}"
    );
    assert!(!out.contains(KEY));
}
