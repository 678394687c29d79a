//! `rulechain validate [--config F] [PATHS]`: checks config, chains, devices and test files and
//! prints every problem (`path:line:col: error: …` with a snippet, or `--format json`).

use std::path::{Path, PathBuf};

use crate::diag::{Diagnostics, Source};
use crate::rules::compile::{self, ChainDoc, CompileOptions};
use crate::rules::model::TestFile;
use crate::rules::{self, classify, read_yaml, FileKind};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `path:line:col: error: …` with snippets.
    Text,
    /// One JSON array of diagnostics.
    Json,
}

/// Reads and checks each file by its kind; gives the chain files, to compile together.
fn check_files(files: &[PathBuf], diags: &mut Diagnostics, checked: &mut usize) -> Vec<ChainDoc> {
    let mut docs = Vec::new();
    for f in files {
        *checked += 1;
        let Some((src, root)) = read_yaml(f, diags) else {
            continue;
        };
        match classify(&root) {
            Some(FileKind::Chain) => docs.push(ChainDoc { src, root }),
            Some(FileKind::Test) => {
                check_test_file(f, diags);
            }
            Some(FileKind::Devices) => {
                rules::load_devices(f, diags);
            }
            Some(FileKind::Config) => {
                rules::check_config(&src, &root, diags);
            }
            None => {
                diags
                    .error(&src, root.pos, "not a rulechain file: expected a top-level `chain:`, `cases:` or `devices:` key (or a config)")
                    .hint("chains start with `chain: NAME`, tests with `cases:`, device registries with `devices:`");
            }
        }
    }
    docs
}

/// Runs `validate`.
pub fn run(config: Option<PathBuf>, paths: Vec<PathBuf>, format: Format) -> i32 {
    let mut diags = Diagnostics::new();
    let cfg = super::load_config(config.as_deref(), &mut diags);
    let mut paths = paths;
    // A config that could not be read names no rules directory: falling back to `./rules`
    // would report a directory nobody asked for.
    let unread_config = config.is_some() && cfg.is_none();
    // A shadow's candidate rules (`rules.shadow_dir`) are a rule set of their own: checked,
    // and compiled apart from the live rules (the same chain names on both sides are the point).
    let mut shadow = None;
    if paths.is_empty() && !unread_config {
        let (settings, _) =
            crate::config::settings::resolve_lossy(config.as_deref(), cfg.as_ref(), None);
        paths.push(settings.rules_dir);
        paths.extend(settings.devices);
        shadow = settings.shadow_dir;
    }
    let mut checked = 0;
    let files = rules::yaml_files(&paths, &mut diags);
    let docs = check_files(&files, &mut diags, &mut checked);
    let shadow_docs = shadow.map(|dir| {
        if !dir.is_dir() {
            diags.unreadable_error(
                &dir,
                "no such directory (the config's `rules.shadow_dir`: the candidate rules a shadow runs)",
            );
            return Vec::new();
        }
        let files = rules::yaml_files(&[dir], &mut diags);
        check_files(&files, &mut diags, &mut checked)
    });
    // With a broken config, channel names cannot be checked; the config's own errors are shown.
    for docs in std::iter::once(&docs).chain(shadow_docs.as_ref()) {
        compile::compile(
            docs,
            &CompileOptions {
                config: cfg.as_ref(),
            },
            &mut diags,
        );
    }
    match format {
        Format::Json => println!("{}", diags.render_json()),
        Format::Text => {
            print!("{}", diags.render_text());
            let (e, w) = diags.printed_counts();
            println!(
                "{checked} file{} checked: {e} error{}, {w} warning{}",
                if checked == 1 { "" } else { "s" },
                if e == 1 { "" } else { "s" },
                if w == 1 { "" } else { "s" }
            );
        }
    }
    if files.is_empty() && !diags.has_errors() {
        eprintln!(
            "no YAML files found under {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return super::EXIT_FINDINGS;
    }
    if diags.has_errors() {
        super::exit_for(&diags)
    } else {
        super::EXIT_OK
    }
}

/// The event kinds a test case can expect or rule out (the dry-run events; `node` and
/// `summary` are not in a case's events).
pub const EVENT_KINDS: &[&str] = &[
    "alarm",
    "notify",
    "rpc",
    "influx",
    "websocket",
    "publish",
    "log",
    "error",
    "dropped",
];

/// Checks a test file: its structure, the chains it names, its devices, and in every case the
/// event kinds, inputs and durations; every problem is reported. Returns the file as loaded
/// (`test` runs it only when nothing was reported).
pub fn check_test_file(path: &Path, diags: &mut Diagnostics) -> Option<(Source, TestFile)> {
    let (src, t) = rules::load_test_file(path, diags)?;
    for c in t.chains.iter().flatten() {
        let p = path.parent().unwrap_or(Path::new(".")).join(c.as_str());
        if !p.exists() {
            diags.error(
                &src,
                c.pos,
                format!(
                    "chain file `{}` not found (relative to this test file)",
                    c.value
                ),
            );
        }
    }
    rules::devices_registry(&src, &t.devices, diags);
    let unknown_kind = |diags: &mut Diagnostics, pos, kind: &str| {
        diags
            .error(&src, pos, format!("unknown event kind `{kind}`"))
            .hint(
                crate::yaml::did_you_mean(kind, EVENT_KINDS.iter().copied())
                    .unwrap_or_else(|| format!("one of {}", EVENT_KINDS.join(", "))),
            );
    };
    for case in &t.cases {
        for e in &case.expect {
            match e.value.get("event") {
                None => {
                    diags
                        .error(&src, e.pos, "an expected event needs `event:`")
                        .hint("e.g. `{event: alarm, transition: created}`");
                }
                Some(serde_json::Value::String(k)) if EVENT_KINDS.contains(&k.as_str()) => {}
                Some(serde_json::Value::String(k)) => unknown_kind(diags, e.pos, k),
                Some(other) => unknown_kind(diags, e.pos, &other.to_string()),
            }
            match e.value.get("at") {
                None => {}
                Some(serde_json::Value::String(a)) => {
                    if let Err(err) = crate::duration::parse(a) {
                        diags.error(&src, e.pos, format!("`at`: {err}"));
                    }
                }
                Some(other) => {
                    diags
                        .error(
                            &src,
                            e.pos,
                            format!("`at` must be a duration, found {other}"),
                        )
                        .hint("e.g. `at: 30s`; `ts:` takes milliseconds");
                }
            }
        }
        for k in &case.expect_none {
            if !EVENT_KINDS.contains(&k.as_str()) {
                unknown_kind(diags, k.pos, k);
            }
        }
        for i in &case.input {
            if i.value.device.is_none() && i.value.topic.is_none() {
                diags.error(&src, i.pos, "an input needs `device` or `topic`");
            }
            if let Some(a) = &i.value.at {
                if let Err(e) = crate::duration::parse(a) {
                    diags.error(&src, i.pos, format!("`at`: {e}"));
                }
            }
        }
        if let Some(d) = &case.drain {
            if let Err(e) = crate::duration::parse(d) {
                diags.error(&src, d.pos, e);
            }
        }
    }
    Some((src, t))
}
