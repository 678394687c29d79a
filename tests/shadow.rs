//! Shadow mode on a running engine (the real binary on its embedded broker, a real MQTT client,
//! real HTTP): a candidate rule set sees the live messages, its differences are reported in
//! `rulechain diff`'s shape and counted in the metrics, none of its effects leaves (no alarm in
//! the registry, no command on the broker), and a promotion makes it the rules in force with the
//! state carried; a shadow survives a restart, and a bad candidate is refused with every problem.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Raises `Hot` above 50 and sends `cool`; clears below.
const HOT: &str = "chain: hot
on: {kind: telemetry}
nodes:
  - id: over
    filter: msg.t > 50
    else: clear
  - id: raise
    alarm: {type: Hot, severity: MAJOR}
  - id: cool
    rpc: {method: cool}
    next: []
  - id: clear
    alarm: {type: Hot, action: clear}
";

/// The candidate: `Hot` only above 70, and a new chain that raises `Cold` below 0 and sends
/// `heat`.
const COLD: &str = "chain: cold
on: {kind: telemetry}
nodes:
  - id: under
    filter: msg.t < 0
  - id: raise
    alarm: {type: Cold, severity: CRITICAL}
  - id: heat
    rpc: {method: heat}
";

fn json(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http_as(
        port,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(port: u16, path: &str) -> Value {
    let (code, v) = json(port, "GET", path, "");
    assert_eq!(code, 200, "{path}: {v}");
    v
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = http(port, "GET", "/metrics")?;
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn pairs(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["type"].as_str().unwrap().to_string(),
                a["device"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_reports_what_the_candidate_would_change_sends_nothing_and_is_promoted() {
    let (dir, mqtt, port) = embedded_setup("shadow", &[("hot.yaml", HOT)], "devices: []\n");
    let cand = dir.join("candidate");
    std::fs::create_dir_all(&cand).unwrap();
    std::fs::write(
        cand.join("hot.yaml"),
        HOT.replace("msg.t > 50", "msg.t > 70"),
    )
    .unwrap();
    std::fs::write(cand.join("cold.yaml"), COLD).unwrap();
    let mut engine = Engine::start(&dir, port);
    let (code, v) = json(
        port,
        "POST",
        "/api/shadow",
        &format!(r#"{{"dir": "{}", "by": "ana"}}"#, cand.display()),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["chains"], 2);
    assert_eq!(metric(port, "rulechain_shadow_running"), Some(1.0));

    let mut commands = Mqtt::connect(mqtt, "shadow-cmds", true, &["device/+/command"]).await;
    let p = Mqtt::connect(mqtt, "shadow-pub", true, &[]).await;
    // d1: only the live rules raise Hot; d3: both; d4: only the candidate raises Cold.
    for (d, t) in [("d1", 60), ("d3", 90), ("d4", -5)] {
        p.publish(&format!("device/{d}/telemetry"), format!(r#"{{"t": {t}}}"#))
            .await;
    }
    let report = wait_for(Duration::from_secs(10), || {
        let v = get(port, "/api/shadow");
        (v["messages"] == 3).then_some(v)
    })
    .expect("the shadow saw the three messages");
    assert_eq!(report["shadow"]["running"], true);
    assert_eq!(report["shadow"]["started_by"], "ana");
    assert_eq!(report["equal"], false);
    assert_eq!(pairs(&report["removed"]), [("Hot".into(), "d1".into())]);
    assert_eq!(pairs(&report["added"]), [("Cold".into(), "d4".into())]);
    assert!(report["changed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(
        report["alarms"],
        serde_json::json!({"base": 2, "candidate": 2})
    );
    // The RPCs: cool to d1 only live, heat to d4 only in the candidate; d3's paired.
    let rpc = report["examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rpc")
        .expect("rpc examples");
    let whats = |side: &str| -> Vec<(String, String)> {
        rpc[side]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["device"].as_str().unwrap().to_string(),
                    e["what"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(whats("only_base"), [("d1".into(), "cool".into())]);
    assert_eq!(whats("only_candidate"), [("d4".into(), "heat".into())]);
    assert_eq!(metric(port, "rulechain_shadow_alarms_removed"), Some(1.0));
    assert_eq!(metric(port, "rulechain_shadow_alarms_added"), Some(1.0));
    assert_eq!(metric(port, "rulechain_shadow_messages_total"), Some(3.0));

    // Nothing of the candidate left: the live commands went out, `heat` never did; the
    // registry has the live alarms only.
    let sent = commands.drain(Duration::from_secs(2)).await;
    let mut methods: Vec<(String, String)> = sent
        .iter()
        .map(|(t, v)| (t.clone(), v["method"].as_str().unwrap_or("").to_string()))
        .collect();
    methods.sort();
    assert_eq!(
        methods,
        [
            ("device/d1/command".to_string(), "cool".to_string()),
            ("device/d3/command".to_string(), "cool".to_string())
        ]
    );
    let open = get(port, "/api/alarms");
    let mut open: Vec<(String, String)> = pairs(
        &open["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| serde_json::json!({"type": a["type"], "device": a["device"]}))
            .collect::<Value>(),
    );
    open.sort();
    assert_eq!(
        open,
        [("Hot".into(), "d1".into()), ("Hot".into(), "d3".into())]
    );

    // An operator's acknowledgement reaches both sides: no difference from it.
    let d3 = get(port, "/api/alarms?device=d3")["alarms"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = json(
        port,
        "POST",
        &format!("/api/alarms/{d3}/ack"),
        r#"{"by": "ana"}"#,
    );
    assert_eq!(code, 200);
    // d3 cools down on both sides: the same episode, closed the same way on both.
    p.publish("device/d3/telemetry", r#"{"t": 20}"#).await;
    let after = wait_for(Duration::from_secs(10), || {
        let v = get(port, "/api/shadow");
        (v["messages"] == 4).then_some(v)
    })
    .unwrap();
    assert_eq!(pairs(&after["removed"]), [("Hot".into(), "d1".into())]);
    assert!(after["changed"].as_array().unwrap().is_empty(), "{after}");
    assert_eq!(
        after["alarms"],
        serde_json::json!({"base": 2, "candidate": 2})
    );

    // Promote: the candidate's files become the rules, the state is carried (d1's alarm stays
    // open), the shadow stops, and who did it is written down.
    let (code, promo) = json(port, "POST", "/api/rules/promote", r#"{"by": "ana"}"#);
    assert_eq!(code, 200, "{promo}");
    assert_eq!(promo["by"], "ana");
    assert_eq!(promo["alarms"]["removed"], 1);
    assert_eq!(promo["alarms"]["added"], 1);
    let mut written: Vec<&str> = promo["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    written.sort();
    assert_eq!(written, ["cold.yaml", "hot.yaml"]);
    assert!(std::fs::read_to_string(dir.join("rules/hot.yaml"))
        .unwrap()
        .contains("msg.t > 70"));
    assert!(dir.join("rules/cold.yaml").exists());
    let backup = dir.join(promo["backup"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(backup.join("hot.yaml")).unwrap(),
        HOT,
        "the replaced file is kept"
    );
    let log = std::fs::read_to_string(dir.join("state/promotions.jsonl")).unwrap();
    let line: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(line["by"], "ana");
    assert_eq!(line["generation"], promo["generation"]);
    let chains = get(port, "/api/chains");
    assert_eq!(chains["generation"], promo["generation"]);
    let shadow = get(port, "/api/shadow");
    assert_eq!(shadow["shadow"]["running"], false);
    assert_eq!(shadow["last_promotion"]["by"], "ana");
    assert_eq!(metric(port, "rulechain_shadow_running"), Some(0.0));
    assert!(get(port, "/api/alarms?device=d1")["alarms"][0]["status"]
        .as_str()
        .unwrap()
        .starts_with("ACTIVE"));
    // The promoted rules are in force: 60 raises nothing now, -5 raises Cold and sends `heat`.
    p.publish("device/d5/telemetry", r#"{"t": 60}"#).await;
    p.publish("device/d6/telemetry", r#"{"t": -5}"#).await;
    let (topic, cmd) = commands
        .expect(Duration::from_secs(10), |_, v| v["method"] == "heat")
        .await
        .expect("the promoted chain sends heat");
    assert_eq!(topic, "device/d6/command");
    assert_eq!(cmd["method"], "heat");
    assert!(wait_for(Duration::from_secs(5), || {
        let v = get(port, "/api/alarms?device=d6");
        (v["alarms"][0]["type"] == "Cold").then_some(())
    })
    .is_some());
    assert!(get(port, "/api/alarms?device=d5")["alarms"]
        .as_array()
        .unwrap()
        .is_empty());
    // A second promotion has nothing to promote.
    let (code, _) = json(port, "POST", "/api/rules/promote", "{}");
    assert_eq!(code, 409);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_refused_with_every_problem_kept_over_a_restart_and_started_from_the_config() {
    let (dir, mqtt, port) = embedded_setup("shadow-start", &[("hot.yaml", HOT)], "devices: []\n");
    let mut engine = Engine::start(&dir, port);
    // Every problem of the candidate, as data, in one answer.
    let bad = serde_json::json!({"chains": {
        "a.yaml": "chain: a\nnodes:\n  - filter: msg.t >\n",
        "b.yaml": "chain: b\nnodes:\n  - filtr: msg.t > 1\n",
    }});
    let (code, v) = json(port, "POST", "/api/shadow", &bad.to_string());
    assert_eq!(code, 422, "{v}");
    let files: Vec<&str> = v["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("a.yaml")) && files.iter().any(|f| f.ends_with("b.yaml")),
        "{v}"
    );
    assert!(v["detail"][0]["line"].as_u64().unwrap() >= 1);
    // Inside the rules directory: a reload would load it as live rules.
    std::fs::create_dir_all(dir.join("rules/next")).unwrap();
    let (code, v) = json(
        port,
        "POST",
        "/api/shadow",
        &format!(r#"{{"dir": "{}"}}"#, dir.join("rules/next").display()),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("inside the rules directory"),
        "{v}"
    );
    std::fs::remove_dir_all(dir.join("rules/next")).unwrap();
    assert_eq!(json(port, "DELETE", "/api/shadow", "").0, 404);

    // Uploaded chains run, and run again after a restart.
    let good =
        serde_json::json!({"chains": {"hot.yaml": HOT.replace("> 50", "> 55")}, "by": "ben"});
    let (code, v) = json(port, "POST", "/api/shadow", &good.to_string());
    assert_eq!(code, 201, "{v}");
    engine.stop();
    engine.restart();
    let v = get(port, "/api/shadow");
    assert_eq!(v["shadow"]["running"], true, "{v}");
    assert_eq!(v["shadow"]["started_by"], "ben");
    let p = Mqtt::connect(mqtt, "shadow-start-pub", true, &[]).await;
    p.publish("device/d1/telemetry", r#"{"t": 53}"#).await;
    let v = wait_for(Duration::from_secs(10), || {
        let v = get(port, "/api/shadow");
        (v["messages"] == 1).then_some(v)
    })
    .expect("the shadow runs after the restart");
    assert_eq!(pairs(&v["removed"]), [("Hot".into(), "d1".into())]);
    // A shadow started right after a stop runs (the stop, delivered to the shards on its
    // own, never stops a newer shadow).
    assert_eq!(json(port, "DELETE", "/api/shadow", "").0, 200);
    let (code, v) = json(port, "POST", "/api/shadow", &good.to_string());
    assert_eq!(code, 201, "{v}");
    p.publish("device/d1/telemetry", r#"{"t": 54}"#).await;
    wait_for(Duration::from_secs(10), || {
        let v = get(port, "/api/shadow");
        (v["messages"] == 1 && v["shadow"]["running"] == true).then_some(())
    })
    .expect("the new shadow runs and counts");
    // Stopped, it stays stopped over a restart.
    assert_eq!(json(port, "DELETE", "/api/shadow", "").0, 200);
    engine.stop();
    engine.restart();
    assert_eq!(get(port, "/api/shadow")["shadow"]["running"], false);
    engine.stop();

    // `rules: {dir, shadow_dir}` in the config starts one with the engine.
    let cand = dir.join("candidate");
    std::fs::create_dir_all(&cand).unwrap();
    std::fs::write(cand.join("hot.yaml"), HOT).unwrap();
    let cfg = std::fs::read_to_string(dir.join("rulechain.yaml"))
        .unwrap()
        .replace("rules: rules", "rules: {dir: rules, shadow_dir: candidate}");
    std::fs::write(dir.join("rulechain.yaml"), cfg).unwrap();
    engine.restart();
    let v = get(port, "/api/shadow");
    assert_eq!(v["shadow"]["running"], true, "{v}");
    assert_eq!(v["shadow"]["started_by"], "config");
    p.publish("device/d2/telemetry", r#"{"t": 99}"#).await;
    let v = wait_for(Duration::from_secs(10), || {
        let v = get(port, "/api/shadow");
        (v["messages"] == 1).then_some(v)
    })
    .expect("the config's shadow runs");
    assert_eq!(v["equal"], true, "the same rules: no difference: {v}");
    engine.stop();
}
