//! An operator's action on an alarm (an acknowledgement, a clear by hand) never makes a device
//! command or a publish run again, and what it does start carries the device's `meta`; a reply
//! to a command counts only from the device the command went to.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rulechain::diag::Diagnostics;
use rulechain::engine::effect::Recorder;
use rulechain::engine::program::RuleSet;
use rulechain::replay::Replay;
use rulechain::rules;
use serde_json::Value;

fn load(dir: &Path, files: &[(&str, &str)]) -> Arc<RuleSet> {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let mut diags = Diagnostics::new();
    let paths = rules::yaml_files(&[dir.to_path_buf()], &mut diags);
    let rs = rules::load_chains(&paths, None, &mut diags);
    assert!(!diags.has_errors(), "{}", diags.render_text());
    Arc::new(rs)
}

fn replay(rules: Arc<RuleSet>) -> Replay {
    Replay::new(
        rules,
        HashMap::new(),
        rulechain::config::settings::resolve_lossy(None, None, None)
            .0
            .patterns,
        1_700_000_000_000,
    )
}

fn feed(r: &mut Replay, line: &str, out: &mut Recorder) {
    let m = r.message_json(line).unwrap();
    r.feed(m, out);
}

/// The effects as their dry-run JSON, taken out of the recorder.
fn take(out: &mut Recorder) -> Vec<Value> {
    out.effects
        .drain(..)
        .map(|e| serde_json::to_value(&e).unwrap())
        .collect()
}

fn events<'a>(effects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    effects.iter().filter(|e| e["event"] == kind).collect()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rulechain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The shipped motor-overload chain: raise → tell → shed (an rpc). The alarm's creation sends
/// `setLoad` once; acknowledging it and clearing it by hand, even long after the cooldown,
/// send nothing to the pump.
#[test]
fn acknowledging_or_clearing_the_shipped_overload_alarm_sends_no_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut diags = Diagnostics::new();
    let paths = rules::yaml_files(&[root.join("rules")], &mut diags);
    let set = Arc::new(rules::load_chains(&paths, None, &mut diags));
    assert!(!diags.has_errors(), "{}", diags.render_text());
    let mut r = replay(set);
    let mut out = Recorder::default();
    let t0 = 1_700_000_000_000i64;
    feed(
        &mut r,
        &format!(
            r#"{{"topic": "site/a/device/pump-3/attributes", "ts": {t0}, "payload": {{"rated_current": 10.0}}}}"#
        ),
        &mut out,
    );
    for s in 0..=40 {
        feed(
            &mut r,
            &format!(
                r#"{{"topic": "site/a/device/pump-3/telemetry", "ts": {}, "payload": {{"current": 13.0}}}}"#,
                t0 + s * 1000
            ),
            &mut out,
        );
    }
    let raised = take(&mut out);
    let rpcs = events(&raised, "rpc");
    assert_eq!(rpcs.len(), 1, "{raised:#?}");
    assert_eq!(rpcs[0]["topic"], "site/a/device/pump-3/command");
    let alarm = events(&raised, "alarm")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Ten minutes later (twice the cooldown), with no message in between.
    r.executor_mut().advance_to(t0 + 600_000, &mut out);
    let acked = r
        .executor_mut()
        .acknowledge(&alarm, Some("op"), &mut out)
        .unwrap();
    assert_eq!(acked.status.as_str(), "ACTIVE_ACK");
    let after_ack = take(&mut out);
    assert_eq!(
        events(&after_ack, "alarm")[0]["transition"],
        "acknowledged",
        "{after_ack:#?}"
    );
    assert!(events(&after_ack, "rpc").is_empty(), "{after_ack:#?}");
    r.executor_mut()
        .clear_alarm(&alarm, Some("op"), &mut out)
        .unwrap();
    let after_clear = take(&mut out);
    assert_eq!(events(&after_clear, "alarm")[0]["transition"], "cleared");
    assert!(events(&after_clear, "rpc").is_empty(), "{after_clear:#?}");
    assert!(events(&after_clear, "error").is_empty(), "{after_clear:#?}");
}

const ASKED: &str = r#"
chain: asked
nodes:
  - id: raise
    alarm: { type: Hot, pass: [created, acknowledged, cleared] }
  - id: tell
    notify: [ops]
  - id: show
    websocket: { room: "site/${meta.site}/${msg.alarm.transition}" }
  - id: shed
    rpc: { method: cool }
  - id: echo
    publish: { topic: "site/${meta.site}/echo" }
"#;

/// A chain that asks for the operator's transitions gets them at its notify and websocket
/// nodes, with the device's `meta` (its site), but its rpc and publish nodes do not run.
#[test]
fn an_operator_transition_reaches_only_what_does_not_act_on_devices() {
    let dir = tempdir("operator-asked");
    let mut r = replay(load(&dir, &[("asked.yaml", ASKED)]));
    let mut out = Recorder::default();
    feed(
        &mut r,
        r#"{"topic": "site/north/device/d1/telemetry", "ts": 1700000000000, "payload": {"t": 1}}"#,
        &mut out,
    );
    let created = take(&mut out);
    for kind in ["alarm", "notify", "websocket", "rpc", "publish"] {
        assert_eq!(events(&created, kind).len(), 1, "{kind}: {created:#?}");
    }
    let id = events(&created, "alarm")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    out.trace = true;
    r.executor_mut().acknowledge(&id, None, &mut out).unwrap();
    let acked = take(&mut out);
    assert_eq!(events(&acked, "notify").len(), 1, "{acked:#?}");
    let ws = events(&acked, "websocket");
    assert_eq!(ws.len(), 1, "{acked:#?}");
    assert_eq!(ws[0]["room"], "site/north/acknowledged");
    assert!(events(&acked, "rpc").is_empty(), "{acked:#?}");
    assert!(events(&acked, "publish").is_empty(), "{acked:#?}");
    // The trace says why: the rpc node suppressed it.
    let shed: Vec<_> = events(&acked, "node")
        .into_iter()
        .filter(|n| n["node"] == "shed")
        .collect();
    assert_eq!(shed.len(), 1, "{acked:#?}");
    assert_eq!(shed[0]["result"], "suppressed");
    r.executor_mut().clear_alarm(&id, None, &mut out).unwrap();
    let cleared = take(&mut out);
    assert_eq!(events(&cleared, "notify").len(), 1, "{cleared:#?}");
    assert!(events(&cleared, "rpc").is_empty(), "{cleared:#?}");
    assert!(events(&cleared, "publish").is_empty(), "{cleared:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

const DEFAULT: &str = r#"
chain: plain
nodes:
  - id: raise
    alarm: { type: Hot, severity: 'if msg.t > 5 { "MAJOR" } else { "MINOR" }' }
  - id: tell
    notify: [ops]
"#;

/// By default a raise passes on only `created`: a change of severity and an operator's
/// action are emitted but run nothing after the alarm node.
#[test]
fn by_default_only_created_passes_on() {
    let dir = tempdir("operator-default");
    let mut r = replay(load(&dir, &[("plain.yaml", DEFAULT)]));
    let mut out = Recorder::default();
    for (i, t) in [1, 9].iter().enumerate() {
        feed(
            &mut r,
            &format!(
                r#"{{"device": "d1", "ts": {}, "data": {{"t": {t}}}}}"#,
                1_700_000_000_000i64 + i as i64
            ),
            &mut out,
        );
    }
    let effects = take(&mut out);
    let transitions: Vec<_> = events(&effects, "alarm")
        .iter()
        .map(|a| a["transition"].clone())
        .collect();
    assert_eq!(transitions, ["created", "severity_changed"]);
    assert_eq!(events(&effects, "notify").len(), 1, "{effects:#?}");
    let id = events(&effects, "alarm")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    r.executor_mut().acknowledge(&id, None, &mut out).unwrap();
    let acked = take(&mut out);
    assert_eq!(events(&acked, "alarm").len(), 1);
    assert!(events(&acked, "notify").is_empty(), "{acked:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

const AWAIT: &str = r#"
chain: ask
nodes:
  - id: ask
    rpc: { method: ping, await: 10s }
  - id: got
    log: { message: "reply ${msg.ok}" }
"#;

/// A reply counts only from the device the command went to: another device publishing the
/// same id on its own rpc_response topic is not the answer.
#[test]
fn a_reply_counts_only_from_the_device_asked() {
    let dir = tempdir("operator-await");
    let mut r = replay(load(&dir, &[("ask.yaml", AWAIT)]));
    let mut out = Recorder::default();
    feed(
        &mut r,
        r#"{"device": "a", "ts": 1700000000000, "data": {"x": 1}}"#,
        &mut out,
    );
    let sent = take(&mut out);
    let id = events(&sent, "rpc")[0]["id"].as_str().unwrap().to_string();
    feed(
        &mut r,
        &format!(
            r#"{{"device": "b", "kind": "rpc_response", "ts": 1700000001000, "data": {{"id": "{id}", "ok": "forged"}}}}"#
        ),
        &mut out,
    );
    assert!(
        events(&take(&mut out), "log").is_empty(),
        "device b answered for device a"
    );
    feed(
        &mut r,
        &format!(
            r#"{{"device": "a", "kind": "rpc_response", "ts": 1700000002000, "data": {{"id": "{id}", "ok": "real"}}}}"#
        ),
        &mut out,
    );
    let got = take(&mut out);
    let logs = events(&got, "log");
    assert_eq!(logs.len(), 1, "{got:#?}");
    assert!(
        logs[0]["message"].as_str().unwrap().contains("real"),
        "{got:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
