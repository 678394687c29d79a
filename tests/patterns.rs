//! The edge-processing patterns of the shipped example chains, checked on a realistic day of
//! simulated traffic (`examples/day.jsonl.gz`) with the real binary: what each pattern finds,
//! found again apart from it.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The events of a dry-run of the shipped rules over the example day.
fn day_events() -> Vec<serde_json::Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args([
            "dry-run",
            "--config",
            "examples/rulechain.yaml",
            "--input",
            "examples/day.jsonl.gz",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The episodes (device, created, cleared) of an alarm type.
fn episodes(events: &[serde_json::Value], type_: &str) -> Vec<(String, i64, i64)> {
    let mut eps: Vec<(String, i64, i64)> = Vec::new();
    for e in events {
        if e["event"] != "alarm" || e["type"] != type_ {
            continue;
        }
        let device = e["device"].as_str().unwrap().to_string();
        let ts = e["ts"].as_i64().unwrap();
        match e["transition"].as_str().unwrap() {
            "created" => eps.push((device, ts, i64::MAX)),
            "cleared" => {
                if let Some(ep) = eps.iter_mut().rev().find(|x| x.0 == device) {
                    ep.2 = ts;
                }
            }
            _ => {}
        }
    }
    eps
}

#[test]
fn the_vibration_anomaly_fires_on_each_simulated_fault_and_never_in_normal_noise() {
    let events = day_events();
    // The simulator's fault is an overload episode: its vibration rises with the extra load.
    // The overload alarm (current over 120% of rated for 30 s) finds those episodes apart from
    // the vibration baseline.
    let faults = episodes(&events, "MotorOverload");
    let anomalies = episodes(&events, "VibrationAnomaly");
    assert!(faults.len() >= 5, "the day has faults: {faults:?}");
    for a in &anomalies {
        assert!(
            faults
                .iter()
                .any(|f| f.0 == a.0 && a.1 >= f.1 - 30_000 && a.1 <= f.2),
            "a vibration anomaly outside any fault (normal noise alarmed): {a:?}"
        );
    }
    for f in &faults {
        assert!(
            anomalies
                .iter()
                .any(|a| a.0 == f.0 && a.1 >= f.1 - 30_000 && a.1 <= f.2),
            "a fault the vibration baseline missed: {f:?}"
        );
    }
    // The alarm tells how far from its baseline the reading was (`msg.anomaly.score`).
    let raised = events
        .iter()
        .find(|e| e["type"] == "VibrationAnomaly" && e["transition"] == "created")
        .unwrap();
    let message = raised["message"].as_str().unwrap();
    let score: i64 = message
        .split(" standard deviations")
        .next()
        .and_then(|m| m.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(score > 4, "{message}");
}
