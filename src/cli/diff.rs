//! `rulechain diff`: replays a recording through two rule sets (the base, by default the rules
//! at git's `HEAD`, and the candidate, by default the working tree's) on the virtual clock, each
//! with its own state, and reports what the candidate does differently: alarms added, removed
//! and changed, effects by kind and chain, nodes' outcomes (see `crate::diff`).
//!
//! Exit codes: 0 the same (or no gate tripped), 1 they differ (or a `--fail-on` gate tripped),
//! 2 an error (bad rules, unreadable input, an unknown git ref).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::diag::Diagnostics;
use crate::diff::{compare, render, Gate, Tally};
use crate::replay::Replay;
use crate::rules;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A readable summary.
    Text,
    /// The report as JSON (docs/diff.md has its schema).
    Json,
    /// Markdown tables, for a pull-request comment.
    Markdown,
}

/// `diff` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rules to compare against: a directory, or a git ref (its copy of the rules
    /// directory). Default: `HEAD`.
    #[arg(long, default_value = "HEAD")]
    pub base: String,
    /// The changed rules (default: the config's rules directory, else `./rules`).
    #[arg(long)]
    pub candidate: Option<PathBuf>,
    /// Recordings to replay (JSON lines, as `dry-run` reads; `.gz` read decompressed; `-` for
    /// stdin), in order.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// The devices file (default: the config's).
    #[arg(long)]
    pub devices: Option<PathBuf>,
    /// The engine config (topic patterns, channels).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Fail (exit 1) only when this holds: `removed`, `added`, `changed`, `severity>=MAJOR`
    /// (an alarm that severe or worse removed, added or changed). Repeatable. Without it, any
    /// difference fails.
    #[arg(long = "fail-on", value_name = "GATE")]
    pub fail_on: Vec<String>,
    /// How long timers still run after the last input (default: until none is pending, at most
    /// 1 day).
    #[arg(long)]
    pub drain: Option<String>,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(out.stdout)
}

/// The base's rules: a directory as it is, or a git ref's copy of `rules_dir` written out.
fn base_rules(base: &str, rules_dir: &Path) -> Result<(PathBuf, Option<TempDir>), String> {
    let as_dir = PathBuf::from(base);
    if as_dir.is_dir() {
        return Ok((as_dir, None));
    }
    let abs = rules_dir.canonicalize().map_err(|e| {
        format!(
            "cannot find the rules directory {}: {e}",
            rules_dir.display()
        )
    })?;
    let top = String::from_utf8_lossy(&git(&abs, &["rev-parse", "--show-toplevel"]).map_err(|e| {
        format!("`--base {base}` is not a directory, and the rules are not in a git repository ({e})")
    })?)
    .trim()
    .to_string();
    let rel = abs
        .strip_prefix(&top)
        .map_err(|_| format!("{} is not inside {top}", abs.display()))?
        .to_string_lossy()
        .to_string();
    git(
        &abs,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{base}^{{commit}}"),
        ],
    )
    .map_err(|_| format!("`--base {base}` is neither a directory nor a git ref of {top}"))?;
    let spec = if rel.is_empty() {
        ".".to_string()
    } else {
        rel.clone()
    };
    let list = git(
        Path::new(&top),
        &["ls-tree", "-r", "--name-only", base, "--", &spec],
    )?;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = std::env::temp_dir().join(format!(
        "rulechain-diff-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let guard = TempDir(tmp.clone());
    for file in String::from_utf8_lossy(&list).lines() {
        if !(file.ends_with(".yaml") || file.ends_with(".yml")) {
            continue;
        }
        let body = git(Path::new(&top), &["show", &format!("{base}:{file}")])?;
        let inside = Path::new(file)
            .strip_prefix(&rel)
            .unwrap_or(Path::new(file));
        let dest = tmp.join(inside);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot write {}: {e}", d.display()))?;
        }
        std::fs::write(&dest, body).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    Ok((tmp, Some(guard)))
}

/// Runs `diff`.
pub fn run(a: Args) -> i32 {
    let gates: Vec<Gate> = match a.fail_on.iter().map(|g| Gate::parse(g)).collect() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_USAGE;
        }
    };
    let drain = match super::drain_arg(a.drain.as_deref()) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut diags = Diagnostics::new();
    let cfg = super::load_config(a.config.as_deref(), &mut diags);
    // The rules directory of the working tree (the config's, else `./rules`): the candidate by
    // default, and where a git ref's copy of the rules comes from.
    let (settings, _) =
        crate::config::settings::resolve_lossy(a.config.as_deref(), cfg.as_ref(), None);
    let tree_dir = settings.rules_dir.clone();
    let candidate_dir = a.candidate.clone().unwrap_or_else(|| tree_dir.clone());
    let (base_dir, _keep) = match base_rules(&a.base, &tree_dir) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_USAGE;
        }
    };
    let load = |dir: &Path, diags: &mut Diagnostics| {
        let files = rules::yaml_files(&[dir.to_path_buf()], diags);
        rules::load_chains(&files, cfg.as_ref(), diags)
    };
    let mut base_diags = Diagnostics::new();
    let base_rules = load(&base_dir, &mut base_diags);
    let candidate_rules = load(&candidate_dir, &mut diags);
    let devices_path = a.devices.clone().or_else(|| settings.devices.clone());
    let devices = match &devices_path {
        Some(p) => rules::load_devices(p, &mut diags).unwrap_or_default(),
        None => Default::default(),
    };
    for (side, d) in [("base", &base_diags), ("candidate", &diags)] {
        if !d.is_empty() {
            eprintln!("the {side}'s rules:");
            eprint!("{}", d.render_text());
        }
    }
    if base_diags.has_errors() || diags.has_errors() {
        eprintln!("diff: the rules have errors; nothing was replayed");
        return super::EXIT_USAGE;
    }
    let start = crate::engine::clock::wall_ms();
    let (base_rules, candidate_rules) = (Arc::new(base_rules), Arc::new(candidate_rules));
    // Each recording is replayed on its own (a day's state does not run into the next
    // recording's), both sides counting into one tally each.
    let replay = |rules: &Arc<crate::engine::program::RuleSet>, tally: &Tally| {
        let mut r = Replay::new(
            rules.clone(),
            devices.clone(),
            settings.patterns.clone(),
            start,
        );
        r.executor_mut().set_limits(settings.state_limits);
        r.set_payload_limits(settings.payload);
        r.executor_mut().share_stats(tally.stats.clone());
        r
    };
    let (mut base_tally, mut cand_tally) = (Tally::default(), Tally::default());
    let (mut bad, mut messages) = (0u64, 0u64);
    for path in &a.input {
        let input: Box<dyn BufRead> = match super::open_input(path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return super::EXIT_USAGE;
            }
        };
        let mut base = replay(&base_rules, &base_tally);
        let mut cand = replay(&candidate_rules, &cand_tally);
        bad += feed(
            input,
            &mut base,
            &mut base_tally,
            &mut cand,
            &mut cand_tally,
        );
        base.drain(drain, &mut base_tally);
        cand.drain(drain, &mut cand_tally);
        messages += base.messages;
    }
    if bad > 0 {
        eprintln!(
            "diff: {bad} input line{} could not be read and were skipped",
            if bad == 1 { "" } else { "s" }
        );
    }
    let report = compare(&base_tally.side(), &cand_tally.side(), messages);
    let out = match a.format {
        Format::Text => render::text(&report),
        Format::Markdown => render::markdown(&report),
        Format::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
    };
    print!("{out}");
    if report.equal {
        return super::EXIT_OK;
    }
    if gates.is_empty() {
        return super::EXIT_FINDINGS;
    }
    let mut tripped = false;
    for g in &gates {
        let t = g.tripped(&report);
        if !t.is_empty() {
            tripped = true;
            eprintln!(
                "diff: `--fail-on {}` holds for {} alarm{}",
                gate_text(g),
                t.len(),
                if t.len() == 1 { "" } else { "s" }
            );
        }
    }
    if tripped {
        super::EXIT_FINDINGS
    } else {
        super::EXIT_OK
    }
}

fn gate_text(g: &Gate) -> String {
    match g {
        Gate::Removed => "removed".into(),
        Gate::Added => "added".into(),
        Gate::Changed => "changed".into(),
        Gate::Severity(s) => format!("severity>={}", s.as_str()),
    }
}

/// Feeds every line to both sides; gives how many could not be read.
fn feed(
    input: Box<dyn BufRead>,
    base: &mut Replay,
    base_out: &mut Tally,
    cand: &mut Replay,
    cand_out: &mut Tally,
) -> u64 {
    let mut bad = 0;
    bad += super::each_line(input, |_, line| {
        let Ok(line) = line else {
            bad += 1;
            return;
        };
        // Read once: both sides are set up alike and fed alike, so a line means the same
        // message to each.
        match base.message_json(line) {
            Ok(m) => {
                cand.feed(m.clone(), cand_out);
                base.feed(m, base_out);
            }
            Err(_) => bad += 1,
        }
    });
    bad
}
