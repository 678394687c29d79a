//! The commands as a user runs them: the real binary, real files, exit codes and output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rulechain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rulechain-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn validate_accepts_the_example_rules_with_and_without_config() {
    let o = rulechain(&["validate", "rules/"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("0 errors, 0 warnings"));
    let o = rulechain(&["validate", "--config", "examples/rulechain.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn validate_reports_files_that_are_not_yaml_or_not_rulechain() {
    let dir = scratch("notyaml");
    let bad = write(&dir, "bad.yaml", "chain: x\nnodes: [\n");
    let other = write(&dir, "other.yaml", "hello: world\n");
    let o = rulechain(&["validate", &bad, &other]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains(&format!("{bad}:3:1: error:")) || text.contains(&format!("{bad}:2:")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{other}:1:1: error: not a rulechain file")),
        "{text}"
    );
}

#[test]
fn dry_run_prints_the_contract_at_the_right_virtual_times() {
    let o = rulechain(&[
        "dry-run",
        "--config",
        "examples/rulechain.yaml",
        "--input",
        "examples/motor-overload.jsonl",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let events = json_lines(&o);
    let t0 = 1_710_000_000_000i64;
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["event"] == kind)
            .collect::<Vec<_>>()
    };
    let alarms = of("alarm");
    assert_eq!(alarms.len(), 2, "{alarms:?}");
    assert_eq!(alarms[0]["transition"], "created");
    assert_eq!(
        alarms[0]["ts"],
        t0 + 40_000,
        "overload from +10 s, held 30 s"
    );
    assert_eq!(alarms[0]["severity"], "WARNING");
    assert_eq!(alarms[0]["message"], "pump-3 at 31% over rated current");
    assert_eq!(alarms[0]["chain"], "motor-overload");
    assert_eq!(alarms[0]["node"], "raise");
    assert_eq!(alarms[1]["transition"], "cleared");
    assert_eq!(alarms[1]["ts"], t0 + 60_000);
    let notify = of("notify");
    assert_eq!(notify.len(), 3);
    assert_eq!(notify[0]["channel"], "maintenance-email");
    assert_eq!(
        notify[0]["subject"],
        "[WARNING] MotorOverload created: pump-3"
    );
    assert_eq!(notify[1]["channel"], "ops-webhook");
    let rpc = of("rpc");
    assert_eq!(rpc.len(), 1);
    assert_eq!(rpc[0]["topic"], "site/a/device/pump-3/command");
    assert_eq!(rpc[0]["method"], "setLoad");
    assert_eq!(rpc[0]["params"], serde_json::json!({"percent": 80}));
    assert_eq!(rpc[0]["ts"], t0 + 40_000);
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["messages"], 15);
    assert_eq!(summary["alarms"], 2);
    assert_eq!(summary["rpcs"], 1);
    assert_eq!(summary["notifications"], 3);
    // One per message (store-telemetry), and the pump's run when the recording ends (pump-runs).
    assert_eq!(summary["influx_points"], 16);
    assert_eq!(summary["websocket"], 15);
    assert_eq!(summary["errors"], 0);
}

#[test]
fn dry_run_reads_stdin_reports_bad_lines_and_goes_on() {
    let input = concat!(
        "{\"device\":\"pump-3\",\"ts\":1000,\"data\":{\"current\":1}}\n",
        "not json\n",
        "{\"device\":\"pump-3\",\"ts\":2000,\"data\":[1,2]}\n",
        "{\"topic\":\"nowhere\",\"payload\":{}}\n",
        "\n",
        "{\"device\":\"pump-3\",\"ts\":3000,\"data\":{\"current\":2}}\n",
    );
    let o = with_stdin(
        &[
            "dry-run",
            "--rules",
            "rules",
            "--devices",
            "examples/devices.yaml",
            "--input",
            "-",
        ],
        input,
    );
    assert_eq!(o.status.code(), Some(1), "bad lines make the exit code 1");
    let events = json_lines(&o);
    let bad: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "bad-input")
        .collect();
    assert_eq!(
        bad.iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(
        bad[1]["detail"].as_str().unwrap().contains("object"),
        "{:?}",
        bad[1]
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["messages"], 2);
    // One per message, and the run they make (pump-runs).
    assert_eq!(summary["influx_points"], 3);
    assert!(String::from_utf8_lossy(&o.stderr).contains("3 input lines could not be read"));
}

#[test]
fn dry_run_trace_shows_every_node_a_message_reaches() {
    let input = "{\"device\":\"pump-3\",\"ts\":0,\"data\":{\"current\":13.0}}\n";
    let o = with_stdin(
        &[
            "dry-run",
            "--devices",
            "examples/devices.yaml",
            "--input",
            "-",
            "--trace",
            "--drain",
            "0s",
        ],
        input,
    );
    let events = json_lines(&o);
    let trace: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "node" && e["chain"] == "motor-overload")
        .map(|e| {
            (
                e["node"].as_str().unwrap().to_string(),
                e["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(trace, vec![("overload".to_string(), "held".to_string())]);
}

#[test]
fn dry_run_refuses_invalid_rules() {
    let dir = scratch("invalid");
    write(&dir, "x.yaml", "chain: x\nnodes:\n  - filter: nope\n");
    let o = with_stdin(
        &["dry-run", "--rules", dir.to_str().unwrap(), "--input", "-"],
        "",
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("x.yaml:3:13: error: in expression: undefined variable `nope`"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn test_command_reports_failures_and_exits_1() {
    let dir = scratch("failing");
    write(
        &dir,
        "hot.yaml",
        "chain: hot\nnodes:\n  - filter: msg.t > 50\n  - alarm: { type: Hot, severity: MAJOR }\n",
    );
    write(
        &dir,
        "hot.test.yaml",
        "cases:\n  - name: passes\n    input: [{ device: d, at: 0s, data: { t: 60 } }]\n    expect: [{ event: alarm, severity: MAJOR }]\n  - name: fails\n    input: [{ device: d, at: 0s, data: { t: 60 } }]\n    expect: [{ event: alarm, severity: CRITICAL }]\n",
    );
    let o = rulechain(&["test", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("ok   "), "{text}");
    assert!(text.contains("FAIL "), "{text}");
    assert!(text.contains("`severity` differs"), "{text}");
    assert!(text.trim_end().ends_with("1 passed, 1 failed"), "{text}");

    let o = rulechain(&["test", "rules"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).trim_end().ends_with(" passed, 0 failed"));
}

/// `test` refuses a test file that `validate` rejects, with the same diagnostics, and runs none
/// of its cases: a misspelled event kind would otherwise check nothing and pass. A broken case
/// hides nothing in the others.
#[test]
fn test_refuses_what_validate_rejects_and_both_report_every_case() {
    let dir = scratch("invalid-tests");
    write(
        &dir,
        "hot.yaml",
        "chain: hot\nnodes:\n  - filter: msg.t > 50\n  - alarm: { type: Hot, severity: MAJOR }\n",
    );
    let t = write(
        &dir,
        "hot.test.yaml",
        "cases:\n  - name: typo in expect_none\n    input: [{ device: d, at: 0s, data: { t: 60 } }]\n    expect_none: [rpcs]\n  - name: typo in expect\n    input: [{ device: d, at: 0s, data: { t: 60 } }]\n    expect: [{ event: alarms }]\n  - name: a bad key\n    input: []\n    expct: []\n",
    );
    let v = rulechain(&["validate", &t]);
    assert_eq!(v.status.code(), Some(1));
    let found = stdout(&v);
    for want in [
        format!("{t}:4:19: error: unknown event kind `rpcs`"),
        format!("{t}:7:14: error: unknown event kind `alarms`"),
        format!("{t}:10:5: error: unknown key `expct`"),
    ] {
        assert!(found.contains(&want), "validate: {want}\n{found}");
    }
    let o = rulechain(&["test", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !out.contains("ok   "),
        "a case of an invalid file ran: {out}"
    );
    assert!(out.contains("the test file has errors"), "{out}");
    for line in found.lines().filter(|l| l.contains(": error: ")) {
        assert!(err.contains(line), "test does not say {line:?}:\n{err}");
    }
}

/// A failing case shows the error events that explain it, and an empty listing says so.
#[test]
fn a_failing_case_shows_its_error_events() {
    let dir = scratch("error-events");
    write(
        &dir,
        "cmd.yaml",
        "chain: cmd\nnodes:\n  - rpc: { method: go, topic: \"${msg.nope.x}\" }\n",
    );
    write(
        &dir,
        "cmd.test.yaml",
        "cases:\n  - name: sends\n    input: [{ device: d, at: 0s, data: { t: 60 } }]\n    expect: [{ event: rpc }]\n",
    );
    let o = rulechain(&["test", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("actual events of this kind: none"), "{out}");
    assert!(out.contains("error events of this case:"), "{out}");
    assert!(out.contains(r#""node":"rpc-1""#), "{out}");
}

/// The shipped tests pass with the shipped config (its command topic fits every topic pattern).
#[test]
fn the_shipped_tests_pass_with_the_shipped_config() {
    let o = rulechain(&["test", "--config", "examples/rulechain.yaml", "rules"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).trim_end().ends_with(" passed, 0 failed"));
}

#[test]
fn the_config_command_pattern_fills_from_meta_or_is_the_node_error() {
    let input = concat!(
        "{\"device\":\"pump-3\",\"ts\":0,\"data\":{\"current\":13.1}}\n",
        "{\"topic\":\"site/a/device/pump-3/telemetry\",\"ts\":60000,\"payload\":{\"current\":9}}\n",
        "{\"topic\":\"site/a/device/pump-3/telemetry\",\"ts\":70000,\"payload\":{\"current\":13.1}}\n",
    );
    // The example config with a command pattern that needs a site.
    let dir = scratch("command-pattern");
    let example = std::fs::read_to_string(root().join("examples/rulechain.yaml")).unwrap();
    let config = write(
        &dir,
        "rulechain.yaml",
        &format!(
            "{}\ncommand_topic: site/{{site}}/device/{{device}}/command\n",
            example
                .replace(
                    "rules: ../rules",
                    &format!("rules: {}", root().join("rules").display())
                )
                .replace(
                    "devices: devices.yaml",
                    &format!(
                        "devices: {}",
                        root().join("examples/devices.yaml").display()
                    )
                )
        ),
    );
    let o = with_stdin(&["dry-run", "--config", &config, "--input", "-"], input);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let events = json_lines(&o);
    let error = events
        .iter()
        .find(|e| e["event"] == "error")
        .expect("an error event");
    assert_eq!(error["node"], "shed");
    assert!(
        error["error"].as_str().unwrap().contains("needs `{site}`"),
        "{error}"
    );
    let rpc = events
        .iter()
        .find(|e| e["event"] == "rpc")
        .expect("an rpc event");
    assert_eq!(rpc["topic"], "site/a/device/pump-3/command");
    assert_eq!(rpc["ts"], 100_000);
}

#[test]
fn config_variables_come_from_the_environment_and_are_never_printed() {
    let dir = scratch("env");
    let cfg = write(
        &dir,
        "rulechain.yaml",
        "channels:\n  ops:\n    webhook:\n      url: ${RULECHAIN_TEST_HOOK}\n      secret: ${RULECHAIN_TEST_SECRET}\n    subject: \"[${msg.alarm.severity}] ${meta.device}\"\n",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["validate", "--config", &cfg, &cfg])
        .env_remove("RULECHAIN_TEST_HOOK")
        .env("RULECHAIN_TEST_SECRET", "hunter2-do-not-print")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "{cfg}:4:12: error: environment variable `RULECHAIN_TEST_HOOK` is not set"
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "a secret was printed:\n{text}");

    let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["validate", "--config", &cfg, &cfg])
        .env("RULECHAIN_TEST_HOOK", "http://127.0.0.1:9/hook")
        .env("RULECHAIN_TEST_SECRET", "hunter2-do-not-print")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn every_broken_test_case_and_device_is_reported() {
    let dir = scratch("brokentests");
    let t = write(
        &dir,
        "x.test.yaml",
        "devices:\n  - { id: a, tpye: pump }\n  - { id: b }\ncases:\n  - name: one\n    input: []\n    expct: []\n  - name: two\n    input: 3\n",
    );
    let o = rulechain(&["validate", &t]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains(&format!("{t}:2:14: error: unknown key `tpye`")),
        "{text}"
    );
    assert!(text.contains("did you mean `type`?"), "{text}");
    assert!(
        text.contains(&format!("{t}:7:5: error: unknown key `expct`")),
        "{text}"
    );
    assert!(text.contains(&format!("{t}:9:12: error:")), "{text}");
}

#[test]
fn every_broken_topic_and_channel_of_a_config_is_reported_once() {
    let dir = scratch("badcfg");
    let cfg = write(
        &dir,
        "rulechain.yaml",
        "topics:\n  - pattern: x/{device}\n    knd: telemetry\nchannels:\n  a:\n    webhok: {url: http://x}\n  b:\n    email: {smtp: s, from: f, to: [t]}\n    subjct: x\n",
    );
    let o = rulechain(&["validate", "--config", &cfg, &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    for at in [
        "3:5: error: unknown key `knd`",
        "6:5: error: unknown key `webhok`",
        "9:5: error: unknown key `subjct`",
    ] {
        assert!(
            text.contains(&format!("{cfg}:{at}")),
            "missing {at} in:\n{text}"
        );
    }
    assert!(
        text.trim_end()
            .ends_with("1 file checked: 3 errors, 0 warnings"),
        "{text}"
    );
}

#[test]
fn sink_settings_are_checked_with_their_positions() {
    let dir = scratch("badsinks");
    let cfg = write(
        &dir,
        "rulechain.yaml",
        "influx:\n  url: ftp://db\n  api: v3\n  precision: min\n  batch_size: 0\n  flush_interval: 1x\n\
         websocket:\n  client_queue: 0\n  ping_interval: soon\n\
         channels:\n  mail:\n    email: {smtp: 'smtp://m:25', tls: ssl, from: 'not an address', to: []}\n    fallback: nowhere\n    rate_limit: lots\n  hook:\n    webhook: {url: 'file:///etc/passwd'}\n    fallback: hook\n    repeat_interval: 1y\n",
    );
    let o = rulechain(&["validate", "--config", &cfg, &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    for at in [
        "2:8: error: bad InfluxDB URL `ftp://db`: use http:// or https://",
        "3:8: error: unknown InfluxDB api `v3`",
        "4:14: error: unknown precision `min`",
        "5:15: error: batch_size is between 1 and 1000000",
        "6:19: error: bad duration `1x`",
        "8:17: error: client_queue is between 1 and 1048576",
        "9:18: error: bad duration `soon`",
        "12:39: error: `tls: ssl`: use starttls, tls or none",
        "error: channel `mail`: bad `from` address `not an address`",
        "error: channel `mail`: `to` lists no address",
        "13:15: error: unknown fallback channel `nowhere`",
        "14:17: error: bad rate limit `lots`",
        "16:20: error: channel `hook`: bad webhook URL",
        "17:15: error: channel `hook` cannot be its own fallback",
        "18:22: error: bad duration `1y`",
    ] {
        assert!(text.contains(at), "missing {at} in:\n{text}");
    }
    assert_eq!(text.matches("bad `from` address").count(), 1, "{text}");
    assert!(text.trim_end().ends_with("15 errors, 0 warnings"), "{text}");
}

#[test]
fn validate_warns_of_fall_through_into_a_branch_but_not_after_a_switch() {
    let d = scratch("fallthrough");
    // `shed` falls through into `clear`, which is also the filter's `else`: a warning.
    write(
        &d,
        "falls.yaml",
        "chain: falls\nnodes:\n  - id: hot\n    filter: msg.t > 1\n    else: clear\n  - id: shed\n    log: { message: hot }\n  - id: clear\n    log: { message: clear }\n",
    );
    let o = rulechain(&["validate", d.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("node `clear` is entered by fall-through from `shed`"),
        "{}",
        stdout(&o)
    );
    // A switch routes or stops; it never falls through into the node after it.
    let d = scratch("switchdefault");
    write(
        &d,
        "route.yaml",
        "chain: route\nnodes:\n  - id: route\n    switch: msg.level\n    cases: { high: high }\n    default: low\n  - id: low\n    log: { message: low }\n    next: []\n  - id: high\n    log: { message: high }\n",
    );
    let o = rulechain(&["validate", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("0 errors, 0 warnings"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_and_run_read_mqtt_urls_alike() {
    // One parser for both: a bare `host:port` is plain MQTT, another scheme is an error with
    // its position, credentials belong in `username`/`password`.
    let d = scratch("mqtturl");
    std::fs::create_dir_all(d.join("rules")).unwrap();
    write(
        &d.join("rules"),
        "echo.yaml",
        "chain: echo\nnodes:\n  - log: { message: hi }\n",
    );
    let check = |url: &str| {
        let cfg = write(
            &d,
            "rulechain.yaml",
            &format!("mqtt: {{url: \"{url}\"}}\nrules: rules\n"),
        );
        let o = rulechain(&["validate", "--config", &cfg]);
        (
            o.status.code(),
            stdout(&o) + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, text) = check("127.0.0.1:1883");
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = check("http://127.0.0.1:1883");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("rulechain.yaml:1:13: error: bad MQTT URL"),
        "{text}"
    );
    let (code, text) = check("mqtt://u:p@127.0.0.1:1883");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("credentials go in `username`"), "{text}");
    // A TLS broker needs its CA. `run` always refused this; `validate` now reads the config
    // through the same function, so it refuses it too, with the same words and the position.
    let (code, text) = check("mqtts://127.0.0.1:8883");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "rulechain.yaml:1:13: error: `mqtts://127.0.0.1:8883` is TLS: give the broker's CA"
        ),
        "{text}"
    );
    let o = rulechain(&[
        "run",
        "--config",
        &d.join("rulechain.yaml").to_string_lossy(),
    ]);
    let run_text = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{run_text}");
    assert!(
        run_text.contains("rulechain.yaml:1:13: error: `mqtts://127.0.0.1:8883` is TLS"),
        "{run_text}"
    );
}

/// A file that cannot be read at all is an I/O error, exit 2 (the README's promise), not a
/// finding; and a config that cannot be read does not send `validate` looking in `./rules`.
#[test]
fn a_missing_file_or_config_exits_2() {
    for args in [
        &["validate", "--config", "nope.yaml"][..],
        &["validate", "nope/"],
        &["test", "nope/"],
        &["test", "--config", "nope.yaml", "rules"],
        &[
            "dry-run",
            "--config",
            "nope.yaml",
            "--input",
            "examples/motor-overload.jsonl",
        ],
        &["dry-run", "--input", "nope.jsonl"],
        &["run", "--config", "nope.yaml"],
    ] {
        let o = rulechain(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string() + &stdout(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("nope"),
            "{args:?} does not name the file: {err}"
        );
    }
    let o = rulechain(&["validate", "--config", "nope.yaml"]);
    assert!(!stdout(&o).contains("rules:1:1"), "{}", stdout(&o));
}

/// Every independent problem of a file in one pass: an unset variable, a wrong value and an
/// unknown key hide nothing else (a chain's broken `on.kind` hid a misspelled `nodes:` and an
/// undefined name in `when`; a config with eleven mistakes took five rounds).
#[test]
fn validate_reports_every_problem_of_a_file_in_one_pass() {
    let dir = scratch("one-pass");
    let chain = write(
        &dir,
        "c.yaml",
        "chain: c\non:\n  kind: telemetri\n  when: msg.x > limit\nnodse:\n  - filter: msg.x > 1\n",
    );
    let o = rulechain(&["validate", &chain]);
    let text = stdout(&o);
    for want in [
        "3:9: error: unknown value `telemetri`",
        "4:17: error: in expression: undefined variable `limit`",
        "5:1: error: unknown key `nodse`",
    ] {
        assert!(text.contains(&format!("{chain}:{want}")), "{want}\n{text}");
    }
    let config = write(
        &dir,
        "cfg.yaml",
        "mqtt:\n  url: ${RULECHAIN_TEST_UNSET_X}\n  qos: 7\ntopics:\n  - pattern: site/{site}/x\nhttp:\n  listen: nowhere\n  max_connections: 0\ninflux:\n  url: notaurl\n  batch_size: 0\nchannels:\n  a:\n    webhook: {url: \"ftp://x\"}\n    fallback: nope\nengine:\n  shards: 0\n  checkpoint: 5 minutes\n",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["validate", "--config", &config])
        .env_remove("RULECHAIN_TEST_UNSET_X")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    for at in [
        "2:8", "3:8", "5:14", "7:11", "8:20", "10:8", "11:15", "14:20", "15:15", "17:11", "18:15",
    ] {
        assert!(
            text.contains(&format!("{config}:{at}: error:")),
            "{at}\n{text}"
        );
    }
    assert!(text.contains("11 errors"), "{text}");
    assert!(!text.contains("rules:1:1"), "{text}");
}

/// `simulate` against a broker that is not there says so and exits 2; it used to print
/// `sent=1` (queued for nobody) and exit 0.
#[test]
fn simulate_against_a_dead_broker_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let o = rulechain(&["simulate", "--broker", &broker, "--count", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("did not accept a connection"), "{err}");
    assert!(!err.contains("sent=1"), "{err}");
}

/// A chain that publishes onto its own input topic would loop on its own output: `validate`
/// warns at the topic; one that publishes elsewhere, or narrows `on:`, is fine.
#[test]
fn validate_warns_of_a_chain_that_feeds_its_own_input() {
    let dir = scratch("self-feeding");
    let looping = write(
        &dir,
        "loop.yaml",
        "chain: loop\nnodes:\n  - publish: { topic: \"device/${meta.device}/telemetry\" }\n",
    );
    write(
        &dir,
        "fine.yaml",
        "chain: fine\nnodes:\n  - publish: { topic: \"out/${meta.device}/telemetry\" }\n",
    );
    write(
        &dir,
        "narrow.yaml",
        "chain: narrow\non: { topic: \"site/+/device/+/telemetry\" }\nnodes:\n  - publish: { topic: \"device/${meta.device}/telemetry\" }\n",
    );
    let o = rulechain(&["validate", dir.to_str().unwrap()]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("{looping}:3:23: warning: `publish` to `device/${{meta.device}}/telemetry` feeds this chain's own input")),
        "{text}"
    );
    assert!(text.contains("1 warning"), "{text}");
}

/// A copy of the example rules with the motor-overload threshold raised from 120% to 140%.
/// `diff` of the example rules (base) against `candidate` over `input`, with more arguments.
fn diff_with_example_rules(candidate: &str, input: &str, extra: &[&str]) -> Output {
    let mut a = vec![
        "diff",
        "--config",
        "examples/rulechain.yaml",
        "--base",
        "rules",
        "--candidate",
        candidate,
        "--input",
        input,
    ];
    a.extend_from_slice(extra);
    rulechain(&a)
}

fn raised_threshold(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for e in std::fs::read_dir(root().join("rules")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, rules.join(p.file_name().unwrap())).unwrap();
    }
    let f = rules.join("motor-overload.yaml");
    let text = std::fs::read_to_string(&f).unwrap();
    let old = "filter: msg.current > attr.rated_current * 1.2";
    assert!(text.contains(old));
    std::fs::write(
        &f,
        text.replace(old, "filter: msg.current > attr.rated_current * 1.4"),
    )
    .unwrap();
    rules
}

#[test]
fn diff_names_the_alarms_a_change_removes_with_their_effects_and_gates_ci() {
    let dir = scratch("diff");
    let cand = raised_threshold(&dir);
    let cand = cand.to_str().unwrap();
    let args =
        |extra: &[&str]| diff_with_example_rules(cand, "examples/motor-overload.jsonl", extra);
    let o = args(&["--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "they differ");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The report is what its documented schema says.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schemas/diff.schema.json")).unwrap(),
    )
    .unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v.iter_errors(&r).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(r["equal"], false);
    assert_eq!(r["removed"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(r["removed"][0]["type"], "MotorOverload");
    assert_eq!(r["removed"][0]["device"], "pump-3");
    assert_eq!(r["removed"][0]["base"]["severity"], "WARNING");
    assert!(
        r["added"].as_array().unwrap().is_empty() && r["changed"].as_array().unwrap().is_empty()
    );
    let effects: Vec<(String, u64, u64)> = r["effects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["base"].as_u64().unwrap(),
                e["candidate"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        effects,
        [("notify".to_string(), 3, 0), ("rpc".to_string(), 1, 0)],
        "the RPC and notifications go with it"
    );
    let rpc = r["examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rpc")
        .unwrap();
    assert_eq!(rpc["only_base"][0]["what"], "setLoad");
    assert!(r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["node"] == "raise" && n["candidate"].as_object().is_none_or(|m| m.is_empty())));
    // Gates: a removal fails `--fail-on removed`, not `--fail-on added`.
    assert_eq!(args(&["--fail-on", "removed"]).status.code(), Some(1));
    assert_eq!(args(&["--fail-on", "added"]).status.code(), Some(0));
    assert_eq!(
        args(&["--fail-on", "severity>=MAJOR"]).status.code(),
        Some(0),
        "a WARNING alarm"
    );
    assert_eq!(
        args(&["--fail-on", "severity>=WARNING"]).status.code(),
        Some(1)
    );
    let bad = args(&["--fail-on", "louder"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown gate `louder`"));
    // What the text and markdown say, and the same rules on both sides (equal, exit 0), are kept
    // as data: tests/diffs/*.out (tests/diagnostics.rs).
}

#[test]
fn diff_takes_the_base_from_a_git_ref() {
    let dir = scratch("diff-git");
    let rules = raised_threshold(&dir);
    // A repository whose HEAD has the example rules; the working tree raises the threshold.
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let f = rules.join("motor-overload.yaml");
    let changed = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        std::fs::read_to_string(root().join("rules/motor-overload.yaml")).unwrap(),
    )
    .unwrap();
    git(&["init", "-q"]);
    git(&["add", "rules"]);
    git(&["commit", "-q", "-m", "rules"]);
    std::fs::write(&f, changed).unwrap();
    let input = root().join("examples/motor-overload.jsonl");
    let devices = root().join("examples/devices.yaml");
    let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args([
            "diff",
            "--input",
            input.to_str().unwrap(),
            "--devices",
            devices.to_str().unwrap(),
            "--format",
            "json",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["removed"][0]["device"], "pump-3", "{r:#}");
    let unknown = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args([
            "diff",
            "--base",
            "no-such-ref",
            "--input",
            input.to_str().unwrap(),
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("is neither a directory nor a git ref")
    );
}

#[test]
fn new_chain_writes_a_chain_whose_tests_pass_and_never_overwrites() {
    let dir = scratch("new-chain");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let o = run(&["new", "chain", "cold-room"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let chain = std::fs::read_to_string(dir.join("rules/cold-room.yaml")).unwrap();
    assert!(chain.starts_with("# yaml-language-server: $schema=../schemas/chain.schema.json"));
    assert!(chain.contains("type: ColdRoom"));
    assert!(run(&["validate", "rules"]).status.success());
    let t = run(&["test", "rules"]);
    assert!(t.status.success(), "{}", stdout(&t));
    assert!(stdout(&t).contains("2 passed, 0 failed"));
    let again = run(&["new", "chain", "cold-room"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad = run(&["new", "chain", "Cold Room"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a chain name"));
}

/// MotorOverload episodes (device, start, end) in a dry-run of the example day.
fn overloads(rules: &str) -> Vec<(String, i64, Option<i64>)> {
    let o = rulechain(&[
        "dry-run",
        "--config",
        "examples/rulechain.yaml",
        "--rules",
        rules,
        "--input",
        "examples/day.jsonl.gz",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut eps: Vec<(String, i64, Option<i64>)> = Vec::new();
    for e in json_lines(&o) {
        if e["event"] != "alarm" || e["type"] != "MotorOverload" {
            continue;
        }
        let device = e["device"].as_str().unwrap().to_string();
        let ts = e["ts"].as_i64().unwrap();
        match e["transition"].as_str().unwrap() {
            "created" => eps.push((device, ts, None)),
            "cleared" => {
                if let Some(ep) = eps.iter_mut().rev().find(|x| x.0 == device) {
                    ep.2 = Some(ts);
                }
            }
            _ => {}
        }
    }
    eps
}

#[test]
fn the_example_day_diff_names_exactly_the_overloads_a_raised_threshold_removes() {
    // The day is what the simulator writes for its documented command (the same seed, the
    // same file).
    let dir = scratch("day");
    let again = dir.join("day.jsonl");
    let o = rulechain(&[
        "simulate",
        "--output",
        again.to_str().unwrap(),
        "--devices",
        "4",
        "--rate",
        "0.4",
        "--seed",
        "11",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut committed = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(root().join("examples/day.jsonl.gz")).unwrap(),
        ),
        &mut committed,
    )
    .unwrap();
    assert!(
        committed == std::fs::read_to_string(&again).unwrap(),
        "examples/day.jsonl.gz is not what `simulate --output … --devices 4 --rate 0.4 --seed 11` writes"
    );
    // Which overloads go, found apart from `diff`: the base's episodes no candidate episode
    // overlaps.
    let cand = raised_threshold(&dir);
    let base = overloads("rules");
    let kept = overloads(cand.to_str().unwrap());
    let end = |e: Option<i64>| e.unwrap_or(i64::MAX);
    let mut gone: Vec<(String, i64)> = base
        .iter()
        .filter(|b| {
            !kept
                .iter()
                .any(|k| k.0 == b.0 && k.1 <= end(b.2) && b.1 <= end(k.2))
        })
        .map(|b| (b.0.clone(), b.1))
        .collect();
    gone.sort();
    assert!(
        gone.len() >= 3 && gone.len() < base.len(),
        "{gone:?} of {base:?}"
    );
    let o = diff_with_example_rules(
        cand.to_str().unwrap(),
        "examples/day.jsonl.gz",
        &["--format", "json", "--fail-on", "removed"],
    );
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut removed: Vec<(String, i64)> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["type"], "MotorOverload");
            (
                a["device"].as_str().unwrap().to_string(),
                a["base"]["start"].as_i64().unwrap(),
            )
        })
        .collect();
    removed.sort();
    assert_eq!(removed, gone, "exactly the overloads that disappear");
    // Their commands go with them: one `setLoad` per removed overload.
    let rpc = r["effects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rpc")
        .unwrap();
    assert_eq!(
        rpc["base"].as_u64().unwrap() - rpc["candidate"].as_u64().unwrap(),
        gone.len() as u64
    );
}

#[test]
fn validate_checks_the_shadow_candidate_as_a_rule_set_of_its_own() {
    let dir = scratch("validate-shadow");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::create_dir_all(dir.join("next")).unwrap();
    let chain = "chain: hot\nnodes:\n  - filter: msg.t > 50\n  - log: {}\n";
    write(&dir.join("rules"), "hot.yaml", chain);
    // The candidate names the same chain (no duplicate across the two sets) and has an error.
    write(
        &dir.join("next"),
        "hot.yaml",
        "chain: hot\nnodes:\n  - filter: msg.t >\n",
    );
    let cfg = write(
        &dir,
        "rulechain.yaml",
        "rules: {dir: rules, shadow_dir: next}\n",
    );
    let o = rulechain(&["validate", "--config", &cfg]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("next/hot.yaml:3:"), "{text}");
    assert!(!text.contains("duplicate chain name"), "{text}");
    assert!(text.contains("2 files checked: 1 error"), "{text}");
    // A good candidate: clean.
    write(&dir.join("next"), "hot.yaml", &chain.replace("50", "70"));
    let o = rulechain(&["validate", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // A shadow directory that is not there is named as such.
    let cfg = write(
        &dir,
        "rulechain.yaml",
        "rules: {dir: rules, shadow_dir: nowhere}\n",
    );
    let o = rulechain(&["validate", "--config", &cfg]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("rules.shadow_dir"), "{}", stdout(&o));
}

#[test]
fn init_makes_a_project_that_validates_tests_and_replays_at_once() {
    let dir = scratch("init");
    let o = rulechain(&["init", dir.join("demo").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let demo = dir.join("demo");
    let run_in = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args(args)
            .current_dir(&demo)
            .env_remove("RULECHAIN_CONFIG")
            .output()
            .unwrap()
    };
    // Its own config is found without --config, and said so.
    let v = run_in(&["validate"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    assert!(String::from_utf8_lossy(&v.stderr).contains("using the config rulechain.yaml"));
    let t = run_in(&["test"]);
    assert!(t.status.success(), "{}", stdout(&t));
    assert!(stdout(&t).contains("2 passed, 0 failed"), "{}", stdout(&t));
    let d = run_in(&["dry-run", "--input", "recordings/high-temperature.jsonl"]);
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let events = json_lines(&d);
    let alarms: Vec<_> = events.iter().filter(|e| e["event"] == "alarm").collect();
    assert_eq!(alarms.len(), 2, "raised and cleared: {events:?}");
    assert!(events
        .iter()
        .any(|e| e["event"] == "notify" && e["channel"] == "ops"));
    // And it runs: `rulechain run` in the project, its config found (the listen addresses
    // moved to free ports, as a user whose 1883 is taken would).
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let mqtt = free();
    // The kernel may hand the released port out again: two distinct ones.
    let http = std::iter::repeat_with(free).find(|p| *p != mqtt).unwrap();
    let mut engine = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args([
            "run",
            "--mqtt-listen",
            &format!("127.0.0.1:{mqtt}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .current_dir(&demo)
        .env_remove("RULECHAIN_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args([
                "healthcheck",
                "--url",
                &format!("http://127.0.0.1:{http}/readyz"),
            ])
            .status()
            .is_ok_and(|s| s.success())
    });
    let _ = engine.kill();
    let _ = engine.wait();
    assert!(
        ready,
        "`rulechain run` in the new project never became ready"
    );
    assert!(
        demo.join("state").exists(),
        "its state_dir is the project's"
    );
    // A second init keeps what is there.
    std::fs::write(demo.join("devices.yaml"), "devices: []\n").unwrap();
    let again = rulechain(&["init", demo.to_str().unwrap()]);
    assert!(stdout(&again).contains("kept"), "{}", stdout(&again));
    assert_eq!(
        std::fs::read_to_string(demo.join("devices.yaml")).unwrap(),
        "devices: []\n"
    );
}

#[test]
fn rulechain_config_is_the_config_when_none_is_given() {
    let dir = scratch("envconfig");
    write(&dir, "cfg.yaml", "channels:\n  ops: {log: {}}\n");
    let chain = write(
        &dir,
        "chain.yaml",
        "chain: c\nnodes:\n  - notify: [pager]\n",
    );
    let validate_with = |config: &str| {
        Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args(["validate", &chain])
            .env("RULECHAIN_CONFIG", dir.join(config))
            .current_dir(root())
            .output()
            .unwrap()
    };
    let o = validate_with("cfg.yaml");
    assert_eq!(
        o.status.code(),
        Some(1),
        "checked against the config's channels"
    );
    assert!(stdout(&o).contains("pager"), "{}", stdout(&o));
    let missing = validate_with("nope.yaml");
    assert_ne!(
        missing.status.code(),
        Some(0),
        "a named config that is missing is an error"
    );
}

#[test]
fn completions_man_page_and_version_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let o = rulechain(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let text = stdout(&o);
        assert!(
            text.contains("rulechain") && text.contains("dry-run") && text.contains("notify-test"),
            "{shell}: {text}"
        );
    }
    let man = rulechain(&["man"]);
    assert!(man.status.success());
    let page = stdout(&man);
    assert!(
        page.starts_with(".ie") || page.contains(".TH rulechain"),
        "{page}"
    );
    assert!(
        page.contains("dry\\-run") || page.contains("dry-run"),
        "{page}"
    );
    let v = stdout(&rulechain(&["--version"]));
    let commit = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(c) = commit {
        assert!(v.contains(&c), "the commit in --version: {v} (HEAD is {c})");
    }
    assert!(
        v.split_whitespace()
            .any(|w| w.len() >= 10 && w[..4].parse::<u32>().is_ok() && &w[4..5] == "-"),
        "a build date in --version: {v}"
    );
}
