//! `rulechain test [PATHS]`: runs `*.test.yaml` files. Each case feeds its inputs through the
//! chains under test on a virtual clock starting at 0 and compares the events with `expect`:
//! for every event kind an expectation names, the actual events of that kind must match the
//! expectations of that kind one for one, in order (an expectation lists only the fields it checks; `at: 30s`
//! checks `ts`); `expect_none` names event kinds that must not happen at all. Prints a line per case and `N passed, N failed`; exit 1 on any failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::diag::Diagnostics;
use crate::duration;
use crate::engine::effect::Recorder;
use crate::replay::Replay;
use crate::rules::model::{TestCase, TestFile};
use crate::rules::{self};

/// Runs `test`.
pub fn run(config: Option<PathBuf>, paths: Vec<PathBuf>) -> i32 {
    let mut diags = Diagnostics::new();
    let cfg = super::load_config(config.as_deref(), &mut diags);
    // The engine's part of the config, typed (its problems are in `diags` already).
    let (settings, _) =
        crate::config::settings::resolve_lossy(config.as_deref(), cfg.as_ref(), None);
    let paths = if paths.is_empty() {
        vec![settings.rules_dir.clone()]
    } else {
        paths
    };
    let files: Vec<PathBuf> = rules::yaml_files(&paths, &mut diags)
        .into_iter()
        .filter(|p| rules::is_test_file(p))
        .collect();
    if diags.has_errors() {
        eprint!("{}", diags.render_text());
        return super::exit_for(&diags);
    }
    if files.is_empty() {
        eprintln!(
            "no *.test.yaml files under {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("0 passed, 0 failed");
        return super::EXIT_FINDINGS;
    }
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        let mut d = Diagnostics::new();
        // The same checks as `validate`: a test file it rejects runs no case (a misspelled
        // event kind would otherwise check nothing and pass).
        let loaded = super::validate::check_test_file(f, &mut d);
        let (src, t) = match loaded {
            Some(l) if !d.has_errors() => l,
            loaded => {
                eprint!("{}", d.render_text());
                let cases = loaded.map_or(0, |(_, t)| t.cases.len()).max(1);
                println!(
                    "FAIL {}: the test file has errors (`rulechain validate {}` shows them)",
                    f.display(),
                    f.display()
                );
                failed += cases;
                continue;
            }
        };
        let chain_files = chains_under_test(f, &t);
        let ruleset = Arc::new(rules::load_chains(&chain_files, cfg.as_ref(), &mut d));
        let devices = rules::devices_registry(&src, &t.devices, &mut d).unwrap_or_default();
        if d.has_errors() {
            eprint!("{}", d.render_text());
            println!("FAIL {}: the chains under test have errors", f.display());
            failed += t.cases.len().max(1);
            continue;
        }
        for case in &t.cases {
            let mut replay = Replay::new(
                ruleset.clone(),
                devices.clone(),
                settings.patterns.clone(),
                0,
            );
            replay.executor_mut().set_limits(settings.state_limits);
            replay.set_payload_limits(settings.payload);
            match run_case(replay, case) {
                Ok(()) => {
                    passed += 1;
                    println!("ok   {}: {}", f.display(), case.name.value);
                }
                Err(why) => {
                    failed += 1;
                    println!(
                        "FAIL {}:{}: {}",
                        f.display(),
                        case.name.pos.line,
                        case.name.value
                    );
                    for l in why.lines() {
                        println!("     {l}");
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        super::EXIT_FINDINGS
    } else {
        super::EXIT_OK
    }
}

/// The chain files a test file tests: `chains:`, else `<stem>.yaml` beside it, else every chain
/// file in its directory.
fn chains_under_test(test: &Path, t: &TestFile) -> Vec<PathBuf> {
    let dir = test.parent().unwrap_or(Path::new("."));
    if let Some(list) = &t.chains {
        return list.iter().map(|c| dir.join(c.as_str())).collect();
    }
    let name = test
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = name
        .trim_end_matches(".test.yaml")
        .trim_end_matches(".test.yml");
    for ext in ["yaml", "yml"] {
        let p = dir.join(format!("{stem}.{ext}"));
        if p.exists() {
            return vec![p];
        }
    }
    let mut d = Diagnostics::new();
    rules::yaml_files(&[dir.to_path_buf()], &mut d)
        .into_iter()
        .filter(|p| !rules::is_test_file(p))
        .collect()
}

fn run_case(mut replay: Replay, case: &TestCase) -> Result<(), String> {
    let mut rec = Recorder::default();
    for (i, line) in case.input.iter().enumerate() {
        let m = replay
            .message(line.value.clone())
            .map_err(|e| format!("input {} (line {}): {e}", i + 1, line.pos.line))?;
        replay.feed(m, &mut rec);
    }
    let drain = match &case.drain {
        Some(d) => Some(duration::parse(d)?),
        None => None,
    };
    replay.drain(drain, &mut rec);
    let actual: Vec<Value> = rec
        .effects
        .iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    for kind in &case.expect_none {
        if let Some(e) = actual.iter().find(|a| a["event"] == kind.as_str()) {
            return Err(format!("expected no `{}` event, got {e}", kind.value));
        }
    }
    compare(
        &case
            .expect
            .iter()
            .map(|e| e.value.clone())
            .collect::<Vec<_>>(),
        &actual,
    )
    .map_err(|why| with_errors(why, &actual))
}

/// A failure's text, followed by the case's error events (a node error is most often why an
/// expected event did not happen), unless it lists them already.
fn with_errors(mut why: String, actual: &[Value]) -> String {
    let errors: Vec<&Value> = actual.iter().filter(|a| a["event"] == "error").collect();
    if errors.is_empty() || why.contains("error event") {
        return why;
    }
    why.push_str("\n  error events of this case:");
    for e in errors {
        why.push_str(&format!("\n    {e}"));
    }
    why
}

/// Compares expectations with actual events (see the module docs): per event kind named in
/// `expect`, the actual events of that kind match its expectations one for one, in order.
pub fn compare(expect: &[BTreeMap<String, Value>], actual: &[Value]) -> Result<(), String> {
    let mut kinds: Vec<&str> = Vec::new();
    for e in expect {
        let k = e
            .get("event")
            .and_then(Value::as_str)
            .ok_or("every expected event needs `event:`")?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    for kind in kinds {
        let want: Vec<&BTreeMap<String, Value>> =
            expect.iter().filter(|e| e["event"] == kind).collect();
        let got: Vec<&Value> = actual.iter().filter(|a| a["event"] == kind).collect();
        for (i, e) in want.iter().enumerate() {
            let Some(a) = got.get(i) else {
                return Err(format!(
                    "expected {kind} event {} {}, but only {} {kind} event{} happened{}",
                    i + 1,
                    show(e),
                    got.len(),
                    if got.len() == 1 { "" } else { "s" },
                    listing(&got)
                ));
            };
            if let Some(field) = mismatch(e, a)? {
                return Err(format!(
                    "{kind} event {}: expected {}\n  got {a}\n  (`{field}` differs){}",
                    i + 1,
                    show(e),
                    listing(&got)
                ));
            }
        }
        if got.len() > want.len() {
            let extra = got.len() - want.len();
            return Err(format!(
                "{extra} more {kind} event{} than expected, from {}{}",
                if extra == 1 { "" } else { "s" },
                got[want.len()],
                listing(&got)
            ));
        }
    }
    Ok(())
}

fn show(e: &BTreeMap<String, Value>) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

fn listing(events: &[&Value]) -> String {
    let mut s = String::from("\n  actual events of this kind:");
    if events.is_empty() {
        s.push_str(" none");
    }
    for e in events {
        s.push_str(&format!("\n    {e}"));
    }
    s
}

/// The first expected field that differs, if any.
fn mismatch(e: &BTreeMap<String, Value>, a: &Value) -> Result<Option<String>, String> {
    for (k, v) in e {
        let ok = if k == "at" {
            let at = v.as_str().ok_or("`at` is a duration like `30s`")?;
            Some(duration::parse(at)?) == a["ts"].as_i64()
        } else {
            same(v, &a[k.as_str()])
        };
        if !ok {
            return Ok(Some(k.clone()));
        }
    }
    Ok(None)
}

/// JSON equality where 55 equals 55.0 and expected maps match as subsets.
fn same(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => e == a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exp(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn one_for_one_per_named_kind() {
        let actual = vec![
            json!({"event": "alarm", "transition": "created", "ts": 30000}),
            json!({"event": "notify", "channel": "x"}),
            json!({"event": "alarm", "transition": "cleared", "ts": 60000}),
        ];
        let ok = [
            exp(json!({"event": "alarm", "transition": "created", "at": "30s"})),
            exp(json!({"event": "alarm", "transition": "cleared"})),
        ];
        assert!(compare(&ok, &actual).is_ok());
        let missing = [exp(json!({"event": "alarm", "transition": "created"}))];
        assert!(compare(&missing, &actual)
            .unwrap_err()
            .contains("1 more alarm event"));
        let wrong = [
            exp(json!({"event": "alarm", "transition": "cleared"})),
            exp(json!({"event": "alarm"})),
        ];
        let other_kinds_in_any_order = [
            exp(json!({"event": "notify"})),
            exp(json!({"event": "alarm"})),
            exp(json!({"event": "alarm"})),
        ];
        assert!(compare(&other_kinds_in_any_order, &actual).is_ok());
        assert!(compare(&wrong, &actual)
            .unwrap_err()
            .contains("`transition` differs"));
        let numbers = [
            exp(json!({"event": "alarm", "ts": 30000.0})),
            exp(json!({"event": "alarm"})),
        ];
        assert!(compare(&numbers, &actual).is_ok());
    }
}
