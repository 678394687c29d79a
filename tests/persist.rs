//! State survives restarts and reloads: a replay stopped after any input line, snapshotted to
//! JSON text, and restored into a fresh executor (a restart), or handed the same rules again (a
//! hot reload), says exactly what the uninterrupted replay says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rulechain::diag::Diagnostics;
use rulechain::engine::effect::Recorder;
use rulechain::engine::persist::Snapshot;
use rulechain::engine::program::RuleSet;
use rulechain::engine::Device;
use rulechain::replay::Replay;
use rulechain::rules;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_rules(dir: &Path) -> Arc<RuleSet> {
    let mut diags = Diagnostics::new();
    let files = rules::yaml_files(&[dir.to_path_buf()], &mut diags);
    let rs = rules::load_chains(&files, None, &mut diags);
    assert!(!diags.has_errors(), "{}", diags.render_text());
    Arc::new(rs)
}

fn devices() -> HashMap<Arc<str>, Device> {
    let mut diags = Diagnostics::new();
    rules::load_devices(&root().join("examples/devices.yaml"), &mut diags).unwrap()
}

fn new_replay(rules: Arc<RuleSet>) -> Replay {
    Replay::new(
        rules,
        devices(),
        rulechain::config::settings::resolve_lossy(None, None, None)
            .0
            .patterns,
        1_700_000_000_000,
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn text(r: &Recorder) -> Vec<String> {
    r.effects
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

/// Runs `input`, calling `pause` after line `at` with the replay; returns every effect.
fn run(
    rules: Arc<RuleSet>,
    input: &[String],
    at: usize,
    pause: impl FnOnce(Replay) -> Replay,
) -> Vec<String> {
    let mut out = Recorder::default();
    let mut replay = new_replay(rules);
    let mut pause = Some(pause);
    for (i, line) in input.iter().enumerate() {
        let m = replay.message_json(line).unwrap();
        replay.feed(m, &mut out);
        if i + 1 == at {
            replay = (pause.take().unwrap())(replay);
        }
    }
    replay.drain(None, &mut out);
    text(&out)
}

fn recordings() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "the example recordings are missing");
    v
}

#[test]
fn a_restart_after_any_line_changes_nothing() {
    restart_anywhere(&root().join("rules"), recordings());
}

#[test]
fn a_sliding_window_restarted_after_any_line_changes_nothing() {
    // The example chain outside the defaults (examples/rules/), on 3 minutes of the simulator.
    restart_anywhere(
        &root().join("examples/rules"),
        vec![root().join("examples/pump-vibration.jsonl")],
    );
}

/// Runs each recording through `dir`'s chains whole, and again restarted from a snapshot after
/// every line: the output must be the same.
fn restart_anywhere(dir: &Path, recs: Vec<PathBuf>) {
    let rules = load_rules(dir);
    for rec in recs {
        let input = lines(&rec);
        let whole = run(rules.clone(), &input, usize::MAX, |r| r);
        assert!(!whole.is_empty(), "{} emits nothing", rec.display());
        for at in 1..input.len() {
            let rules2 = rules.clone();
            let resumed = run(rules.clone(), &input, at, move |old| {
                // Through text, as the state store keeps it.
                let snap = serde_json::to_string(&old.executor().snapshot()).unwrap();
                let snap: Snapshot = serde_json::from_str(&snap).unwrap();
                let mut fresh = new_replay(rules2);
                let carried = fresh.executor_mut().restore(snap);
                assert_eq!(carried.dropped_nodes + carried.dropped_timers, 0);
                // The fresh replay's clock resumes from the next line's time.
                fresh
            });
            assert_eq!(
                whole,
                resumed,
                "{}: restarting after line {at} changed the output",
                rec.display()
            );
        }
    }
}

#[test]
fn a_reload_with_the_same_rules_after_any_line_changes_nothing() {
    let rules = load_rules(&root().join("rules"));
    for rec in recordings() {
        let input = lines(&rec);
        let whole = run(rules.clone(), &input, usize::MAX, |r| r);
        for at in 1..input.len() {
            let resumed = run(rules.clone(), &input, at, |mut r| {
                // A fresh compile of the same files: new slots, same (chain, node id).
                let carried = r.executor_mut().reload(load_rules(&root().join("rules")));
                assert_eq!(carried.dropped_nodes + carried.dropped_timers, 0);
                r
            });
            assert_eq!(
                whole,
                resumed,
                "{}: reloading after line {at} changed the output",
                rec.display()
            );
        }
    }
}

#[test]
fn a_reload_drops_the_state_of_removed_nodes_only() {
    let dir = tempdir("reload-drop");
    std::fs::copy(
        root().join("rules/motor-overload.yaml"),
        dir.join("motor-overload.yaml"),
    )
    .unwrap();
    let input = lines(&root().join("examples/motor-overload.jsonl"));
    let rules = load_rules(&dir);
    let mut replay = new_replay(rules.clone());
    let mut out = Recorder::default();
    // Feed until a hold is pending (the overload has started).
    for line in &input[..3] {
        let m = replay.message_json(line).unwrap();
        replay.feed(m, &mut out);
    }
    let pending = replay.executor().pending_timers();
    assert!(pending > 0, "the motor-overload hold should be pending");
    // An empty rule set: every node is gone, and so is every timer.
    let empty = Arc::new(RuleSet {
        engine: rules.engine.clone(),
        chains: Vec::new(),
        config: Default::default(),
    });
    let carried = replay.executor_mut().reload(empty);
    assert_eq!(carried.timers, 0);
    assert_eq!(carried.dropped_timers, pending);
    assert!(carried.dropped_nodes > 0);
    assert_eq!(replay.executor().pending_timers(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rulechain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The live engine writes the devices' attributes in a record of their own, only when one
/// changed: after a checkpoint, messages that change no attribute write none. A restart reads
/// them back, and a shard record from before (attributes inside it) too, which the next
/// checkpoint then writes apart.
#[test]
fn attributes_are_written_when_they_change_and_read_back() {
    use rulechain::live::store::{RedbStore, StateStore};
    let rules = load_rules(&root().join("rules"));
    let mut replay = new_replay(rules.clone());
    let mut out = Recorder::default();
    let mut feed = |r: &mut Replay, line: &str| {
        let m = r.message_json(line).unwrap();
        r.feed(m, &mut out);
    };
    for (i, d) in ["a", "b", "c"].iter().enumerate() {
        feed(
            &mut replay,
            &format!(
                r#"{{"device": "{d}", "kind": "attributes", "ts": {}, "data": {{"x": {i}}}}}"#,
                1_700_000_000_000i64 + i as i64
            ),
        );
    }
    let first = replay.executor_mut().take_attributes().expect("changed");
    assert_eq!(first.reported.len(), 3);
    assert!(
        replay.executor_mut().take_attributes().is_none(),
        "taken once"
    );
    feed(
        &mut replay,
        r#"{"device": "a", "ts": 1700000001000, "data": {"current": 1}}"#,
    );
    assert!(
        replay.executor_mut().take_attributes().is_none(),
        "telemetry changes none"
    );
    feed(
        &mut replay,
        r#"{"device": "b", "kind": "attributes", "ts": 1700000002000, "data": {"x": 9}}"#,
    );
    let second = replay.executor_mut().take_attributes().expect("b changed");

    // Written as a checkpoint writes them, read back as a start reads them.
    let dir = std::env::temp_dir().join(format!("rulechain-attributes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shard = serde_json::to_vec(&replay.executor().snapshot_without_attributes()).unwrap();
    {
        let store = RedbStore::open(&dir).unwrap();
        store
            .save(0, &shard, Some(&serde_json::to_vec(&first).unwrap()))
            .unwrap();
        store
            .save(0, &shard, Some(&serde_json::to_vec(&second).unwrap()))
            .unwrap();
        store.save(0, &shard, None).unwrap();
    }
    let restore = |dir: &Path| {
        let store = RedbStore::open(dir).unwrap();
        let saved = store
            .check_all(1, rulechain::live::shard::decode_snapshot)
            .unwrap()
            .remove(0)
            .flatten()
            .unwrap();
        let mut r = new_replay(rules.clone());
        r.executor_mut().restore(saved);
        r
    };
    let x = |r: &Replay, d: &str| {
        r.executor()
            .device(d)
            .and_then(|d| d.attrs().get("x").map(|v| v.to_string()))
    };
    let mut restored = restore(&dir);
    assert_eq!(x(&restored, "a").as_deref(), Some("0"));
    assert_eq!(x(&restored, "b").as_deref(), Some("9"));
    assert_eq!(x(&restored, "c").as_deref(), Some("2"));
    assert!(
        restored.executor_mut().take_attributes().is_none(),
        "read from their record: nothing to write again"
    );
    // A shard record from before, attributes inside it: read, then written apart.
    let _ = std::fs::remove_dir_all(&dir);
    {
        let store = RedbStore::open(&dir).unwrap();
        let old = serde_json::to_vec(&replay.executor().snapshot()).unwrap();
        store.save(0, &old, None).unwrap();
    }
    let mut restored = restore(&dir);
    assert_eq!(x(&restored, "b").as_deref(), Some("9"));
    assert_eq!(
        restored
            .executor_mut()
            .take_attributes()
            .map(|a| a.reported.len()),
        Some(3)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
