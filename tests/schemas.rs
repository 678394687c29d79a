//! The JSON Schemas in `schemas/` are derived from the Rust types: they must equal what
//! `rulechain schema` writes (run with `UPDATE_SCHEMAS=1` to refresh them), and every file users
//! start from (`rules/`, `examples/`) must conform to its schema.

use std::path::{Path, PathBuf};

use rulechain::diag::Diagnostics;
use rulechain::rules::{self, classify, FileKind};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_schemas_equal_the_derived_ones() {
    let dir = root().join("schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, text) in rulechain::cli::schema::all() {
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas out of date: {stale:?}; run `UPDATE_SCHEMAS=1 cargo test --test schemas`"
    );
}

fn schema_for(kind: FileKind) -> serde_json::Value {
    let name = match kind {
        FileKind::Chain => "chain.schema.json",
        FileKind::Test => "test.schema.json",
        FileKind::Devices => "devices.schema.json",
        FileKind::Config => "config.schema.json",
    };
    serde_json::from_str(&std::fs::read_to_string(root().join("schemas").join(name)).unwrap())
        .unwrap()
}

/// The schema errors of one YAML file, judged by its kind.
fn schema_errors(path: &Path) -> Vec<String> {
    let mut d = Diagnostics::new();
    let (_, node) = rules::read_yaml(path, &mut d).unwrap_or_else(|| panic!("{}", d.render_text()));
    let kind =
        classify(&node).unwrap_or_else(|| panic!("{}: not a rulechain file", path.display()));
    let validator = jsonschema::validator_for(&schema_for(kind)).unwrap();
    let instance = node.to_json();
    validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {} at {}", path.display(), e, e.instance_path()))
        .collect()
}

#[test]
fn every_file_users_start_from_conforms() {
    let mut d = Diagnostics::new();
    let files = rules::yaml_files(&[root().join("rules"), root().join("examples")], &mut d);
    assert!(
        files.len() >= 14,
        "expected the example chains, tests, devices and config, found {files:?}"
    );
    let errors: Vec<String> = files.iter().flat_map(|f| schema_errors(f)).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_schema_rejects_what_the_loader_rejects() {
    let dir = std::env::temp_dir().join(format!("rulechain-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "chain: x\nnodes:\n  - fitler: msg.x > 1\n  - alarm: { type: T, severity: 3, extra: 1 }\n",
    )
    .unwrap();
    let errors = schema_errors(&bad);
    assert!(errors.iter().any(|e| e.contains("fitler")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("extra")), "{errors:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
