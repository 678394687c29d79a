//! The promises under hostile conditions, each against the real binary and real services: an
//! oversized message (Mosquitto), a full disk (a tmpfs: the tests run as root), a damaged state
//! file, a rule that would block its shard, a webhook whose URL holds a secret, and the HTTP
//! listener under a flood of idle connections.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    embedded_setup, engine_dir, free_port, http, tempdir, wait_for, Engine, Mosquitto, Mqtt,
};

fn mqtt_cfg(port: u16, id: &str) -> String {
    format!("mqtt: {{url: mqtt://127.0.0.1:{port}, client_id: {id}, reconnect_max: 1s}}")
}

/// A test's directory, its Mosquitto, and an engine config for both (`extra`: config lines
/// after the `mqtt:` line); the HTTP port is free.
fn setup(
    name: &str,
    extra: &str,
    chains: &[(&str, &str)],
    devices: &str,
) -> (std::path::PathBuf, Mosquitto, u16) {
    let dir = tempdir(name);
    let broker = Mosquitto::start(&dir);
    let http_port = free_port();
    let mqtt = mqtt_cfg(broker.port, &format!("rc-{name}"));
    engine_dir(
        &dir,
        &format!("{mqtt}\n{extra}"),
        http_port,
        chains,
        devices,
    );
    (dir, broker, http_port)
}

const ECHO: &str = "chain: echo\non: { kind: telemetry }\nnodes:\n  - publish: { topic: \"out/${meta.device}\", qos: 1 }\n";

/// One message over 16 MiB at QoS 1 to a persistent session used to break the ingest
/// connection at every reconnect, forever. Now it is skipped: counted, acknowledged,
/// dead-lettered by reference, and the other devices go on (also after a restart: the broker
/// does not deliver it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_skipped_and_the_stream_goes_on() {
    let (dir, broker, http_port) = setup(
        "oversized",
        "ingest: {dead_letter: dlq}",
        &[("echo.yaml", ECHO)],
        "devices: []\n",
    );
    let mut engine = Engine::start(&dir, http_port);
    let mut c = Mqtt::connect(broker.port, "big-test", true, &["out/#", "dlq"]).await;
    let big = dir.join("big.json");
    let body = format!("{{\"x\":\"{}\"}}", "a".repeat(17 * 1024 * 1024));
    std::fs::write(&big, &body).unwrap();
    let sent = Command::new("mosquitto_pub")
        .args(["-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "device/pump-4/telemetry", "-f"])
        .arg(&big)
        .status()
        .unwrap();
    assert!(sent.success());
    for i in 0..5 {
        c.publish("device/pump-5/telemetry", format!("{{\"i\":{i}}}"))
            .await;
    }
    let got = c.drain(Duration::from_secs(4)).await;
    let out: Vec<_> = got.iter().filter(|(t, _)| t == "out/pump-5").collect();
    assert_eq!(
        out.len(),
        5,
        "the stream went on: {got:?}\n{}",
        engine.log()
    );
    let dl: Vec<_> = got.iter().filter(|(t, _)| t == "dlq").collect();
    assert_eq!(dl.len(), 1, "{got:?}");
    let d = &dl[0].1;
    assert_eq!(d["reason"], "too_large");
    assert_eq!(d["topic"], "device/pump-4/telemetry");
    assert_eq!(d["bytes"], body.len());
    assert_eq!(d["sha256"].as_str().map(str::len), Some(64), "{d}");
    assert!(d.get("payload").is_none(), "by reference only: {d}");
    let s = engine.status();
    assert_eq!(s["counters"]["rejected"]["too_large"], 1, "{s}");
    assert_eq!(s["counters"]["mqtt_connects"], 1, "no reconnect: {s}");
    // Acknowledged: a restart on the same persistent session does not see it again.
    engine.stop();
    engine.restart();
    c.publish("device/pump-5/telemetry", "{\"i\":99}").await;
    assert!(c
        .expect(Duration::from_secs(5), |t, v| t == "out/pump-5"
            && v["i"] == 99)
        .await
        .is_some());
    let s = engine.status();
    assert_eq!(s["counters"]["rejected"]["too_large"], 0, "{s}");
}

/// A tmpfs of `mb` MiB at `dir` (unmounted on drop).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mb: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs (the tests run as root)");
        Tmpfs(dir.to_path_buf())
    }

    /// Writes a filler file until the filesystem is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const ALARM: &str = r#"
chain: overload
on: { kind: telemetry }
nodes:
  - id: hot
    filter: msg.current > attr.rated_current * 1.2
  - id: raise
    alarm: { type: Overload, severity: MAJOR }
  - id: shed
    rpc: { method: setLoad, params: { percent: 80 } }
"#;

/// After a full disk, redb refused every later write and the engine never reopened it; alarms
/// went out while unsaved, so a restart created them again. Now a transition that cannot be
/// written is held (the engine is not ready, and says so), goes out once when the disk has
/// room again, and a restart repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_alarm_transitions_and_sends_them_once() {
    let (dir, broker, http_port) = setup(
        "diskfull",
        "",
        &[("overload.yaml", ALARM)],
        "devices:\n  - id: pump-3\n    attributes: { rated_current: 10.0 }\n",
    );
    let fs = Tmpfs::mount(&dir.join("state"), 4);
    let mut engine = Engine::start(&dir, http_port);
    let mut c = Mqtt::connect(broker.port, "full-test", true, &["device/+/command"]).await;
    fs.fill();
    c.publish("device/pump-3/telemetry", r#"{"current": 15.0}"#)
        .await;
    // Held: nothing leaves, and the engine says it is not ready.
    let early = c.drain(Duration::from_secs(3)).await;
    assert!(early.is_empty(), "a command left unsaved: {early:?}");
    let (code, body) = http(http_port, "GET", "/healthz").unwrap();
    assert_eq!(code, 503, "{body}");
    let s = engine.status();
    assert!(s["counters"]["held_effects"].as_u64() > Some(0), "{s}");
    assert!(s["counters"]["checkpoint_errors"].as_u64() > Some(0), "{s}");
    assert!(engine.log().contains("cannot write state"), "an error log");
    // Room again: the command goes out, once, and the engine is ready.
    fs.free();
    let cmd = c
        .expect(Duration::from_secs(10), |t, _| t == "device/pump-3/command")
        .await;
    assert!(
        cmd.is_some(),
        "the held command went out:\n{}",
        engine.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            (http(http_port, "GET", "/healthz")?.0 == 200).then_some(())
        })
        .is_some(),
        "ready again"
    );
    assert_eq!(engine.status()["counters"]["held_effects"], 0);
    // A restart (even a hard one) repeats neither the alarm nor its command.
    engine.kill9();
    engine.restart();
    c.publish("device/pump-3/telemetry", r#"{"current": 15.5}"#)
        .await;
    let again = c.drain(Duration::from_secs(3)).await;
    assert!(again.is_empty(), "repeated after a restart: {again:?}");
    let (_, alarms) = http(http_port, "GET", "/api/alarms").unwrap();
    assert!(alarms.contains("ACTIVE_UNACK"), "{alarms}");
    assert_eq!(engine.status()["counters"]["alarm_events"], 0);
    engine.stop();
}

fn rulechain() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rulechain"))
}

/// `rulechain run` on a state dir, until it exits or is healthy: the exit code (None: it ran,
/// and was stopped) and its log.
fn run_once(dir: &Path, http_port: u16, extra: &[&str]) -> (Option<i32>, String) {
    let log = dir.join("run.log");
    let mut child = rulechain()
        .args(["run", "--config", "rulechain.yaml"])
        .args(extra)
        .current_dir(dir)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("run.err")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if let Some((200, _)) = http(http_port, "GET", "/healthz") {
            common::signal(&child, "TERM");
            let _ = child.wait();
            break None;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "neither ran nor exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(dir.join("run.err")).unwrap_or_default();
    (code, text)
}

/// A damaged `state.redb` used to panic inside redb (exit 101) or start a shard empty and
/// overwrite it. Now the engine refuses to start (exit 2) naming the file and the way out;
/// where the damage is in bytes nothing reads, it starts with every alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_is_refused_never_panicked_on() {
    let (dir, broker, http_port) = setup(
        "damaged",
        "",
        &[("overload.yaml", ALARM)],
        "devices:\n  - id: pump-3\n    attributes: { rated_current: 10.0 }\n",
    );
    let mut engine = Engine::start(&dir, http_port);
    let c = Mqtt::connect(broker.port, "dmg-test", true, &[]).await;
    for d in 0..40 {
        c.publish(
            &format!("device/pump-{d}/telemetry"),
            r#"{"current": 15.0}"#,
        )
        .await;
    }
    assert!(wait_for(Duration::from_secs(10), || {
        (engine.status()["counters"]["alarm_events"].as_u64() >= Some(1)).then_some(())
    })
    .is_some());
    engine.stop();
    let path = dir.join("state").join("state.redb");
    let good = std::fs::read(&path).unwrap();
    let len = good.len();

    // Truncated: refused, and left as it was (the operator's copy of what is there).
    std::fs::write(&path, &good[..len / 3]).unwrap();
    let (code, err) = run_once(&dir, http_port, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == good[..len / 3],
        "the refused file was changed"
    );
    assert!(
        err.contains("state.redb") && err.contains("--reset-state"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Empty: refused.
    std::fs::write(&path, b"").unwrap();
    let (code, err) = run_once(&dir, http_port, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("0 bytes"), "{err}");

    // Flipped bytes: in the header, where the saved alarms are, and across the file. Never a
    // panic; either refused, or the engine starts with its state.
    let needle = b"Overload";
    let data: Vec<usize> = good
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(!data.is_empty(), "the alarms are in the file");
    let mut spots: Vec<usize> = vec![0, 24, 64, 200];
    spots.extend(data.iter().take(6));
    spots.extend((0..10).map(|i| (len / 10) * i + 1000));
    let mut refused = 0;
    for (i, at) in spots.into_iter().enumerate() {
        let mut bad = good.clone();
        let at = at.min(len - 16);
        for b in &mut bad[at..(at + 16).min(len)] {
            *b ^= 0xa5;
        }
        std::fs::write(&path, &bad).unwrap();
        let (code, err) = run_once(&dir, http_port, &[]);
        assert!(!err.contains("panicked"), "page {i}: {err}");
        match code {
            Some(2) => {
                assert!(err.contains("state.redb"), "page {i}: {err}");
                assert!(
                    std::fs::read(&path).unwrap() == bad,
                    "page {i}: the refused file was changed"
                );
                refused += 1;
            }
            None => assert!(
                err.contains("state restored"),
                "page {i} started without its state: {err}"
            ),
            other => panic!("page {i}: exit {other:?}: {err}"),
        }
    }
    assert!(refused > 0, "some damage must be noticed");

    // The way out: --reset-state moves the file aside and starts empty.
    std::fs::write(&path, &good[..len / 3]).unwrap();
    let (code, err) = run_once(&dir, http_port, &["--reset-state"]);
    assert_eq!(code, None, "{err}");
    let aside = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.redb.reset-")
        });
    assert!(aside, "the damaged file is kept aside");

    // A state dir that cannot be created is an I/O error: exit 2.
    std::fs::write(
        dir.join("rulechain.yaml"),
        std::fs::read_to_string(dir.join("rulechain.yaml"))
            .unwrap()
            .replace("state_dir: state", "state_dir: devices.yaml/state"),
    )
    .unwrap();
    let (code, err) = run_once(&dir, http_port, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot create the state dir"), "{err}");
}

/// `sleep()` used to work in rules and held the whole shard; a large sort within the
/// operation limit held it for 1.7 s. Now `sleep` is refused by `validate`, and an evaluation
/// over its time budget is that node's error while the other devices go on.
#[test]
fn rules_cannot_block_their_shard() {
    let dir = tempdir("sandbox");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/nap.yaml"),
        "chain: nap\nnodes:\n  - transform:\n      x: sleep(20)\n",
    )
    .unwrap();
    let out = rulechain()
        .args(["validate", "rules"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("nap.yaml:4:10") && text.contains("`sleep()` is not available"),
        "{text}"
    );

    std::fs::write(
        dir.join("rules/nap.yaml"),
        "chain: slow\nnodes:\n  - id: churn\n    filter: 'msg.heavy != ()'\n    else: pass\n  - id: work\n    script: |\n      let a = []; a.pad(9000, 0); let n = 0;\n      for i in 0..100000 { let b = a; b.sort(); n += b.len(); }\n      #{ n: n }\n  - id: pass\n    websocket: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("in.jsonl"),
        "{\"device\":\"a\",\"ts\":1000,\"data\":{\"heavy\":1}}\n{\"device\":\"b\",\"ts\":2000,\"data\":{\"light\":1}}\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = rulechain()
        .args(["dry-run", "--rules", "rules", "--input", "in.jsonl"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("\"event\":\"error\"") && l.contains("time budget")),
        "{text}"
    );
    assert!(
        text.contains("\"device\":\"b\""),
        "the next device ran: {text}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// A webhook's URL often holds its secret (`/hooks/<token>`, `?key=`); with the endpoint down,
/// logs, `/api/status` and `notify-test` printed it whole. Now only scheme and host show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_in_the_url_never_show() {
    let closed = free_port();
    let chain = "chain: tell\non: { kind: telemetry }\nnodes:\n  - notify: [hook]\n";
    let (dir, broker, http_port) = setup(
        "leak",
        &format!("channels:\n  hook:\n    webhook: {{url: \"http://127.0.0.1:{closed}/hooks/S3CRET-TOKEN?key=K3Y-VALUE\"}}\n    retries: 1\n"),
        &[("tell.yaml", chain)],
        "devices: []\n",
    );
    let out = rulechain()
        .args(["notify-test", "--config", "rulechain.yaml", "hook"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    let engine = Engine::start(&dir, http_port);
    let c = Mqtt::connect(broker.port, "leak-test", true, &[]).await;
    c.publish("device/d1/telemetry", "{\"x\":1}").await;
    let status = wait_for(Duration::from_secs(15), || {
        let s = engine.status();
        let e = s["notify"].to_string();
        e.contains("cannot connect").then_some(s)
    })
    .unwrap_or_else(|| panic!("no failure recorded: {}", engine.status()));
    for (what, t) in [
        ("notify-test", text),
        ("/api/status", status.to_string()),
        ("the log", engine.log()),
    ] {
        assert!(
            !t.contains("S3CRET") && !t.contains("K3Y") && !t.contains("/hooks"),
            "{what} shows the URL: {t}"
        );
    }
}

/// A FIFO named `*.yaml` among the rules blocked the loader (and so reloads and shutdown).
/// Now it is reported as not a regular file, at once.
#[test]
fn a_fifo_among_the_rules_never_blocks() {
    let dir = tempdir("fifo");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/ok.yaml"), ECHO).unwrap();
    let fifo = dir.join("rules/pipe.yaml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let out = rulechain()
        .args(["validate", "rules"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("pipe.yaml") && text.contains("not a regular file"),
        "{text}"
    );
}

/// 1,100 idle connections used to make `/healthz` time out and a broker reconnect fail with
/// "Too many open files". Now idle connections are closed after the header timeout and past
/// the connection cap a new one gets 503 at once; the engine stays reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_starve_the_engine() {
    let (dir, _broker, http_port) = setup("idle", "", &[("echo.yaml", ECHO)], "devices: []\n");
    let cfg = std::fs::read_to_string(dir.join("rulechain.yaml")).unwrap();
    let listen = format!("listen: 127.0.0.1:{http_port}");
    let cfg = cfg.replace(
        &listen,
        &format!("{listen}, max_connections: 50, header_timeout: 2s"),
    );
    std::fs::write(dir.join("rulechain.yaml"), cfg).unwrap();
    let engine = Engine::start(&dir, http_port);
    let idle: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", http_port)).ok())
        .collect();
    assert_eq!(idle.len(), 200);
    std::thread::sleep(Duration::from_millis(300));
    // Past the cap: answered 503 at once, not left hanging.
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // Idle ones are closed after the header timeout; then the engine answers again.
    let healthy = wait_for(Duration::from_secs(10), || {
        (http(http_port, "GET", "/healthz")?.0 == 200).then_some(())
    });
    assert!(healthy.is_some(), "{}", engine.log());
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(first.read(&mut buf).unwrap_or(0), 0, "closed by the engine");
    assert!(engine.status()["counters"]["http_refused"].as_u64() > Some(0));
}

/// A frame over 64 KiB used to end in a bare TCP close; now the client hears close 1009 and
/// why. Rooms that are not strings are an error, not a silent nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_abuse_gets_clear_answers() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (dir, _broker, http_port) = setup("wsabuse", "", &[("echo.yaml", ECHO)], "devices: []\n");
    let _engine = Engine::start(&dir, http_port);
    let url = format!("ws://127.0.0.1:{http_port}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(r#"{"op":"subscribe","rooms":[1,2]}"#))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    match reply {
        Some(Ok(Message::Text(t))) => {
            assert!(t.contains("\"error\"") && t.contains("strings"), "{t}")
        }
        other => panic!("{other:?}"),
    }
    ws.send(Message::text("x".repeat(100 * 1024)))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    match closed {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1009, "{f:?}");
            assert!(f.reason.contains("64 KiB"), "{f:?}");
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
}

/// One device sending new attribute keys used to grow without end (30,000 keys, its messages
/// 20× slower). Now a device keeps at most 1,000 reported keys; keys it has still update.
#[test]
fn a_device_cannot_grow_its_attributes_without_end() {
    let dir = tempdir("attrs");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/count.yaml"),
        "chain: count\nnodes:\n  - transform:\n      n: attr.len()\n      k0: attr.k0\n  - websocket: {}\n",
    )
    .unwrap();
    let keys = |from: usize, to: usize, v: usize| -> String {
        let m: serde_json::Map<String, serde_json::Value> =
            (from..to).map(|i| (format!("k{i}"), v.into())).collect();
        serde_json::Value::Object(m).to_string()
    };
    let lines = [
        format!(
            "{{\"device\":\"d\",\"ts\":1000,\"kind\":\"attributes\",\"data\":{}}}",
            keys(0, 1500, 1)
        ),
        format!(
            "{{\"device\":\"d\",\"ts\":2000,\"kind\":\"attributes\",\"data\":{}}}",
            keys(0, 1, 2)
        ),
        "{\"device\":\"d\",\"ts\":3000,\"data\":{\"x\":1}}".to_string(),
    ];
    std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let out = rulechain()
        .args(["dry-run", "--rules", "rules", "--input", "in.jsonl"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let last: serde_json::Value = text
        .lines()
        .rfind(|l| l.contains("\"event\":\"websocket\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(last["data"]["n"], 1000, "{last}");
    assert_eq!(last["data"]["k0"], 2, "a kept key still updates: {last}");
}

/// A web page in the operator's browser is the attacker of a token-less engine on loopback.
/// A cross-site `no-cors` POST (a `text/plain` body, a foreign `Origin`) acknowledged alarms,
/// and a page that rebound its own name to 127.0.0.1 (`Host: evil.example`) had the whole API
/// and the WebSocket. Now: a foreign Origin changes nothing, a body must be declared JSON, and
/// a request naming a host that is not an address, `localhost` or listed gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_on_another_site_or_name_can_change_nothing() {
    use common::http_as;
    let (dir, mqtt, http_port) = embedded_setup(
        "cross-site",
        &[(
            "hot.yaml",
            "chain: hot\nnodes:\n  - filter: msg.t > 50\n  - alarm: { type: Hot, severity: MAJOR }\n",
        )],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http_port);
    let pubr = Mqtt::connect(mqtt, "cross-site-pub", true, &[]).await;
    pubr.publish("device/d1/telemetry", r#"{"t": 90}"#).await;
    let id = wait_for(Duration::from_secs(10), || {
        let (_, body) = http(http_port, "GET", "/api/alarms")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["alarms"][0]["id"].as_str().map(String::from)
    })
    .expect("no alarm");
    let ack = format!("/api/alarms/{id}/ack");
    let here = format!("http://127.0.0.1:{http_port}");
    let status = || {
        let (_, body) = http(http_port, "GET", "/api/alarms").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["alarms"][0]["status"].as_str().unwrap_or("").to_string()
    };
    // A page on another site: refused, with or without a body.
    for body in ["", r#"{"by": "evil-page"}"#] {
        let (code, text) = http_as(
            http_port,
            "POST",
            &ack,
            &[
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
            ],
            body,
        )
        .unwrap();
        assert_eq!(code, 403, "{text}");
        assert!(text.contains("allowed_origins"), "{text}");
    }
    for path in [
        "/api/reload",
        "/api/rules/validate",
        &format!("/api/alarms/{id}/clear"),
    ] {
        let (code, _) = http_as(
            http_port,
            "POST",
            path,
            &[("Origin", "http://evil.example")],
            "",
        )
        .unwrap();
        assert_eq!(code, 403, "{path}");
    }
    let (code, _) = http_as(
        http_port,
        "PUT",
        "/api/devices/d1/attributes",
        &[("Origin", "null"), ("Content-Type", "application/json")],
        r#"{"x": 1}"#,
    )
    .unwrap();
    assert_eq!(code, 403, "a sandboxed page (Origin: null)");
    // No Origin (a form or tool that hides it) but a body not declared JSON: refused.
    let (code, text) = http_as(
        http_port,
        "POST",
        &ack,
        &[("Content-Type", "text/plain")],
        r#"{"by": "evil-page"}"#,
    )
    .unwrap();
    assert_eq!(code, 415, "{text}");
    assert_eq!(
        status(),
        "ACTIVE_UNACK",
        "a refused request acknowledged the alarm"
    );

    // DNS rebinding: the page's own name, pointing at 127.0.0.1, is same-origin with itself.
    let evil = [
        ("Host", "evil.example:8080"),
        ("Origin", "http://evil.example:8080"),
    ];
    let (code, text) = http_as(http_port, "GET", "/api/alarms", &evil[..1], "").unwrap();
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("allowed_hosts"), "{text}");
    let (code, _) = http_as(http_port, "POST", &ack, &evil, "").unwrap();
    assert_eq!(code, 403);
    let (code, _) = http_as(
        http_port,
        "GET",
        "/ws",
        &[
            evil[0],
            evil[1],
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .unwrap();
    assert_eq!(code, 403, "a WebSocket for the rebound name");
    let (code, _) = http_as(http_port, "GET", "/livez", &evil[..1], "").unwrap();
    assert_eq!(code, 200, "probes answer whatever the name");
    assert_eq!(status(), "ACTIVE_UNACK");

    // The dashboard itself: same origin, by address or as localhost, JSON: accepted.
    let (code, _) = http_as(
        http_port,
        "GET",
        "/api/alarms",
        &[("Host", &format!("localhost:{http_port}"))],
        "",
    )
    .unwrap();
    assert_eq!(code, 200);
    let (code, text) = http_as(
        http_port,
        "POST",
        &ack,
        &[
            ("Origin", &here),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        r#"{"by": "operator"}"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{text}");
    assert_eq!(status(), "ACTIVE_ACK");
    drop(engine);
}

/// An empty or blank token used to turn the check off (or lock everyone out) without a word.
/// Now it is a config error, at `validate` and at `run`, and a listener beyond loopback
/// without a token is warned of.
#[test]
fn an_empty_or_blank_token_is_a_config_error() {
    let dir = tempdir("empty-token");
    for (token, says) in [
        (r#""""#, "`http.token` is empty"),
        (
            r#""${RULECHAIN_TEST_UNSET_TOKEN:-}""#,
            "`http.token` is empty",
        ),
        (r#""   ""#, "`http.token` is blank"),
    ] {
        let http_port = free_port();
        std::fs::write(
            dir.join("rulechain.yaml"),
            format!(
                "embedded_broker: {{listen: 127.0.0.1:{}}}\nhttp: {{listen: 127.0.0.1:{http_port}, token: {token}}}\nstate_dir: state\nrules: rules\n",
                free_port()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        let v = rulechain()
            .args(["validate", "--config", "rulechain.yaml"])
            .current_dir(&dir)
            .env_remove("RULECHAIN_TEST_UNSET_TOKEN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&v.stdout).to_string();
        assert_eq!(v.status.code(), Some(1), "{token}: {text}");
        assert!(text.contains(says), "{token}: {text}");
        let (code, log) = run_once(&dir, http_port, &[]);
        assert_eq!(code, Some(1), "{token}: run did not refuse it:\n{log}");
        assert!(log.contains(says), "{token}: {log}");
    }
    let http_port = free_port();
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "embedded_broker: {{listen: 127.0.0.1:{}}}\nhttp: {{listen: 0.0.0.0:{http_port}}}\nstate_dir: state\nrules: rules\n",
            free_port()
        ),
    )
    .unwrap();
    let (code, log) = run_once(&dir, http_port, &[]);
    assert_eq!(code, None, "{log}");
    assert!(log.contains("with no token"), "{log}");
}

/// The demo moves off taken ports with flags, no config needed (a config would make the demo's
/// own rules refuse to load: their channels are the config's to define); the error for a taken
/// port names the flag.
#[test]
fn the_demo_moves_off_taken_ports_with_flags() {
    let dir = tempdir("demo-ports");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let refused = rulechain()
        .args(["run", "--demo", "--rules"])
        .arg(&rules)
        .args(["--mqtt-listen", &format!("127.0.0.1:{taken_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("--mqtt-listen 127.0.0.1:PORT"), "{err}");
    let (mqtt, http_port) = (free_port(), free_port());
    let mut child = common::Proc::spawn(
        rulechain()
            .args(["run", "--demo", "--rules"])
            .arg(&rules)
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .current_dir(&dir),
        &dir.join("demo.log"),
        "rulechain",
    );
    let flowing = wait_for(Duration::from_secs(20), || {
        let (_, body) = http(http_port, "GET", "/api/status")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["counters"]["processed"].as_u64()? > 0).then_some(v)
    });
    let log = std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default();
    assert!(
        flowing.is_some(),
        "the demo did not run on the ports given:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "embedded MQTT broker listening on 127.0.0.1:{mqtt}"
        )),
        "{log}"
    );
    child.terminate();
    drop(taken);
}

/// Attribute bytes are bounded per device and in total: 60 kB values within the key and
/// payload limits grew five devices to 1 GB of state. Past a device's 64 KiB, or the engine's
/// `max_attribute_bytes`, a new value is refused (a smaller update of a kept key still lands).
#[test]
fn attribute_bytes_are_bounded_per_device_and_in_total() {
    let dir = tempdir("attr-bytes");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/count.yaml"),
        "chain: count\nnodes:\n  - transform:\n      n: attr.len()\n  - websocket: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rulechain.yaml"),
        "rules: rules\nengine: {max_attribute_bytes: 150000}\n",
    )
    .unwrap();
    let big = "x".repeat(30_000);
    let attrs = |device: &str, ts: u64, key: &str, value: &str| {
        format!(
            "{{\"device\":\"{device}\",\"ts\":{ts},\"kind\":\"attributes\",\"data\":{{\"{key}\":\"{value}\"}}}}"
        )
    };
    let probe =
        |device: &str, ts: u64| format!("{{\"device\":\"{device}\",\"ts\":{ts},\"data\":{{}}}}");
    let lines = [
        // a: two 30 kB values fit its 64 KiB, a third does not; a smaller update of a kept one does.
        attrs("a", 1000, "k1", &big),
        attrs("a", 1001, "k2", &big),
        attrs("a", 1002, "k3", &big),
        attrs("a", 1003, "k1", "small"),
        probe("a", 1004),
        // b: 60 kB more makes about 90 kB of the engine's 150 kB; c's 60 kB do not fit.
        attrs("b", 2000, "k1", &big),
        attrs("b", 2001, "k2", &big),
        attrs("c", 3000, "k1", &big),
        attrs("c", 3001, "k2", &big),
        attrs("c", 3002, "k3", &big),
        probe("b", 3003),
        probe("c", 3004),
    ];
    std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let out = rulechain()
        .args([
            "dry-run",
            "--config",
            "rulechain.yaml",
            "--input",
            "in.jsonl",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n_at = |ts: u64| -> serde_json::Value {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["event"] == "websocket" && e["ts"] == ts)
            .map(|e| e["data"]["n"].clone())
            .unwrap_or_else(|| panic!("no event at {ts}: {text}"))
    };
    assert_eq!(n_at(1004), 2, "a keeps two 30 kB values, not three");
    assert_eq!(n_at(3003), 2, "b fits the total");
    // After a (about 30 kB now) and b (60 kB), c's first value fits and its second does not.
    assert_eq!(n_at(3004), 1, "c passes the engine's total");
}

/// Server-side attributes are bounded like reported ones, and a PUT is all or nothing: a
/// refused one (422) stores none of its values and creates no device. 300 PUTs of 1 MiB values
/// for new ids grew the engine to 2.26 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_attribute_put_changes_nothing_and_big_values_are_refused() {
    use common::http_as;
    let (dir, _, http_port) = embedded_setup(
        "attr-put",
        &[("noop.yaml", "chain: noop\nnodes:\n  - log: {}\n")],
        "devices: []\n",
    );
    let _engine = Engine::start(&dir, http_port);
    let json = [("Content-Type", "application/json")];
    let put = |id: &str, body: String| {
        http_as(
            http_port,
            "PUT",
            &format!("/api/devices/{id}/attributes"),
            &json,
            &body,
        )
        .unwrap()
    };
    let big = "x".repeat(70_000);
    let (code, text) = put("d1", format!(r#"{{"small": 1, "big": "{big}"}}"#));
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("64 KiB"), "{text}");
    let (code, _) = http(http_port, "GET", "/api/devices/d1").unwrap();
    assert_eq!(code, 404, "a refused PUT created the device");
    let (code, text) = put("d1", r#"{"small": 1}"#.to_string());
    assert_eq!(code, 200, "{text}");
    // A refused change to a device that exists leaves what it had.
    let (code, _) = put("d1", format!(r#"{{"small": 2, "big": "{big}"}}"#));
    assert_eq!(code, 422);
    let (_, text) = http(http_port, "GET", "/api/devices/d1").unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["attributes"]["small"]["value"], 1, "{v}");
    assert!(v["attributes"].get("big").is_none(), "{v}");
}

/// A value from outside cannot forge a log line: a newline in an alarm message (a template of
/// the payload) is written escaped in the text log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_an_alarm_message_forges_no_log_line() {
    let (dir, mqtt, http_port) = embedded_setup(
        "log-forge",
        &[(
            "hot.yaml",
            "chain: hot\nnodes:\n  - alarm: { type: Hot, message: \"${msg.m}\" }\n",
        )],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http_port);
    let pubr = Mqtt::connect(mqtt, "forge-pub", true, &[]).await;
    pubr.publish(
        "device/d1/telemetry",
        r#"{"m": "hot\n2026-01-01T00:00:00Z  INFO rulechain::live: FORGED all is well"}"#,
    )
    .await;
    let log = wait_for(Duration::from_secs(10), || {
        let log = engine.log();
        log.contains("ALARM created").then_some(log)
    })
    .expect("no alarm logged");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a forged line:\n{log}"
    );
    assert!(log.contains(r"hot\n2026-01-01T00:00:00Z"), "{log}");
}

/// Past `http.max_connections` the probes still answer (a few connections are kept for them),
/// so clients holding every slot do not make an orchestrator restart a live engine.
#[test]
fn the_probes_answer_past_the_connection_cap() {
    let (dir, _, http_port) = embedded_setup(
        "probe-reserve",
        &[("noop.yaml", "chain: noop\nnodes:\n  - log: {}\n")],
        "devices: []\n",
    );
    let cfg = std::fs::read_to_string(dir.join("rulechain.yaml")).unwrap();
    let listen = format!("listen: 127.0.0.1:{http_port}");
    std::fs::write(
        dir.join("rulechain.yaml"),
        cfg.replace(
            &listen,
            &format!("{listen}, max_connections: 10, header_timeout: 30s"),
        ),
    )
    .unwrap();
    let _engine = Engine::start(&dir, http_port);
    let _held: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (code, _) = http(http_port, "GET", "/livez").unwrap();
    assert_eq!(code, 200, "/livez past the cap");
    let (code, body) = http(http_port, "GET", "/api/status").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("max_connections"), "{body}");
}

/// Two engines with one client id throw each other off the broker forever; each now says why.
#[test]
fn two_engines_with_one_client_id_are_told_why_they_keep_reconnecting() {
    let (dir_a, broker, http_a) = setup("dup-id-a", "", &[("echo.yaml", ECHO)], "devices: []\n");
    let dir_b = tempdir("dup-id-b");
    let http_b = free_port();
    engine_dir(
        &dir_b,
        &mqtt_cfg(broker.port, "rc-dup-id-a"),
        http_b,
        &[("echo.yaml", ECHO)],
        "devices: []\n",
    );
    let a = Engine::start(&dir_a, http_a);
    let b = Engine::launch(&dir_b, http_b);
    let said = wait_for(Duration::from_secs(20), || {
        [a.log(), b.log()]
            .iter()
            .any(|l| l.contains("is another client connected with the client id `rc-dup-id-a`"))
            .then_some(())
    });
    assert!(said.is_some(), "a:\n{}\nb:\n{}", a.log(), b.log());
}

/// Dashboards polling the device list cannot starve the shards: 8 clients polling 10,000 rows
/// of 100,000 devices pushed message latency to 1.1 s, each list built on the shard threads.
/// Now one list is built at a time and the same question within a second is answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_device_lists_are_built_once() {
    let devices: String = (0..2000)
        .map(|i| format!("  - {{id: d{i}, type: pump}}\n"))
        .collect();
    let (dir, _, http_port) = embedded_setup(
        "device-lists",
        &[("noop.yaml", "chain: noop\nnodes:\n  - log: {}\n")],
        &format!("devices:\n{devices}"),
    );
    let engine = Engine::start(&dir, http_port);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                http(http_port, "GET", "/api/devices?limit=10000").map(|(code, body)| {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    (code, v["total"].as_u64())
                })
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), Some((200, Some(2000))));
    }
    let built = engine.status()["counters"]["device_lists"]
        .as_u64()
        .unwrap();
    assert!(built <= 2, "{built} lists built for 16 identical requests");
    // Another question is answered on its own.
    let (code, body) = http(http_port, "GET", "/api/devices?limit=5").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(5));
}
