//! `validate`'s diagnostics as data: every `tests/diagnostics/<case>.yaml` (with
//! `<case>.config.yaml` as its config when there is one) is validated as a user would, and its
//! exit code, text and JSON output must equal `<case>.out`. After a deliberate change of the
//! messages, `BLESS=1 cargo test --test diagnostics` writes the files anew; review their diff.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics")
}

/// What `validate` says of a case, as the `.out` file holds it.
fn run(case: &str) -> String {
    let config = format!("{case}.config.yaml");
    let file = format!("{case}.yaml");
    let mut out = String::new();
    for format in ["text", "json"] {
        let mut args = vec!["validate", "--format", format];
        if dir().join(&config).exists() {
            args.extend(["--config", config.as_str()]);
        }
        args.push(file.as_str());
        let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args(&args)
            .current_dir(dir())
            .output()
            .unwrap();
        out.push_str(&format!(
            "--- {} (exit {})\n{}",
            args.join(" "),
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout)
        ));
        if !o.stderr.is_empty() {
            out.push_str(&format!(
                "--- stderr\n{}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    out
}

fn cases() -> Vec<String> {
    let mut c: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            let stem = name.strip_suffix(".yaml")?;
            (!stem.ends_with(".config")).then(|| stem.to_string())
        })
        .collect();
    c.sort();
    c
}

#[test]
fn validate_says_what_each_case_expects() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut wrong = Vec::new();
    for case in cases() {
        let got = run(&case);
        let path: &Path = &dir().join(format!("{case}.out"));
        if bless {
            std::fs::write(path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(path).unwrap_or_default();
        if got != want {
            wrong.push(format!(
                "{case}: the output differs from {case}.out (BLESS=1 writes it anew)\n--- got:\n{got}--- want:\n{want}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(cases().len() >= 4, "the cases are found");
}
