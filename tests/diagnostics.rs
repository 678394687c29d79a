//! What the checking commands say, as data. `validate`: every `tests/diagnostics/<case>.yaml`
//! (with `<case>.config.yaml` as its config when there is one) is validated as a user would,
//! and its exit code, text and JSON output must equal `<case>.out`. `diff`: every
//! `tests/diffs/<case>.yaml` (below). After a deliberate change of the messages, `BLESS=1 cargo
//! test --test diagnostics` writes the files anew; review their diff.

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
        shown(&mut out, &args, &args, &dir());
    }
    out
}

/// Runs `rulechain` with `args` in `cwd` and appends what the `.out` files hold: the command as
/// `shown` (a temporary path named by a placeholder), its exit code, its stdout, its stderr.
fn shown<S: AsRef<std::ffi::OsStr>>(out: &mut String, shown: &[&str], args: &[S], cwd: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    out.push_str(&format!(
        "--- {} (exit {})\n{}",
        shown.join(" "),
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

/// Compares each case's output with its `.out` file in `dir` (or, with `BLESS`, writes it).
fn check(dir: &Path, cases: &[String], run: impl Fn(&str) -> String) {
    let bless = std::env::var_os("BLESS").is_some();
    let mut wrong = Vec::new();
    for case in cases {
        let got = run(case);
        let path = dir.join(format!("{case}.out"));
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            wrong.push(format!(
                "{case}: the output differs from {case}.out (BLESS=1 writes it anew)\n--- got:\n{got}--- want:\n{want}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(cases.len() >= 4, "the cases are found");
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
    check(&dir(), &cases(), run);
}

/// `diff`'s output as data: every `tests/diffs/<case>.yaml` names recordings (`input`), edits
/// of the example rules that make the candidate (`edit`: file → [text, replacement]) and more
/// arguments (`args`); `diff` against the example rules, in text, JSON and markdown, with its
/// exit codes, must equal `<case>.out` (`BLESS=1` writes it anew).
#[derive(serde::Deserialize)]
struct DiffCase {
    input: Vec<String>,
    edit: std::collections::BTreeMap<String, (String, String)>,
    #[serde(default)]
    args: Vec<String>,
}

fn diff_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/diffs")
}

fn run_diff(case: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let c: DiffCase = serde_saphyr::from_str(
        &std::fs::read_to_string(diff_dir().join(format!("{case}.yaml"))).unwrap(),
    )
    .unwrap();
    let cand =
        std::env::temp_dir().join(format!("rulechain-diffcase-{case}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cand);
    std::fs::create_dir_all(&cand).unwrap();
    for e in std::fs::read_dir(root.join("rules")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let mut text = std::fs::read_to_string(&p).unwrap();
        if let Some((from, to)) = c.edit.get(&name) {
            assert!(
                text.contains(from.as_str()),
                "{case}: {name} has no `{from}`"
            );
            text = text.replace(from.as_str(), to);
        }
        std::fs::write(cand.join(&name), text).unwrap();
    }
    let mut out = String::new();
    for format in ["text", "json", "markdown"] {
        let mut args: Vec<String> = [
            "diff",
            "--config",
            "examples/rulechain.yaml",
            "--base",
            "rules",
            "--candidate",
            "CANDIDATE",
        ]
        .map(String::from)
        .into();
        for i in &c.input {
            args.extend(["--input".to_string(), i.clone()]);
        }
        args.extend(["--format".to_string(), format.to_string()]);
        args.extend(c.args.iter().cloned());
        let real: Vec<String> = args
            .iter()
            .map(|a| {
                if a == "CANDIDATE" {
                    cand.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let named: Vec<&str> = args.iter().map(String::as_str).collect();
        shown(&mut out, &named, &real, &root);
    }
    let _ = std::fs::remove_dir_all(&cand);
    out
}

#[test]
fn diff_says_what_each_case_expects() {
    let mut cases: Vec<String> = std::fs::read_dir(diff_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    cases.sort();
    check(&diff_dir(), &cases, run_diff);
}
