//! The precise semantics of RULES.md, as rule tests (`tests/rules/*.test.yaml`) run by the same
//! runner as `rulechain test`. Each file pairs a chain with the cases that pin its behaviour.

use std::path::PathBuf;

#[test]
fn rule_semantics_hold() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rules");
    assert_eq!(
        rulechain::cli::test::run(None, vec![dir]),
        0,
        "a rule test failed: see its FAIL line above"
    );
}

#[test]
fn example_rules_pass_their_tests() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    assert_eq!(
        rulechain::cli::test::run(None, vec![dir]),
        0,
        "an example rule test failed: see its FAIL line above"
    );
}

#[test]
fn bounds_on_state_hold() {
    // The chain and cases beside a config with small `engine.max_keys`, `max_devices` and
    // `forget_after`: idle keys are forgotten, the least recently used go at the cap, and a
    // device past the cap runs without being kept.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bounds");
    assert_eq!(
        rulechain::cli::test::run(Some(dir.join("rulechain.yaml")), vec![dir]),
        0,
        "a bounds test failed: see its FAIL line above"
    );
}
