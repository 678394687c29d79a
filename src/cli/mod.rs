//! The commands. Each is one function returning the process exit code: 0 ok, 1 findings
//! (invalid rules, failed tests, unreadable input lines), 2 usage or I/O errors.

pub mod dry_run;
pub mod notify_test;
pub mod run;
pub mod schema;
pub mod test;
pub mod validate;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::diag::Diagnostics;
use crate::topic::TopicPattern;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: findings (invalid rules, failed tests, bad input lines).
pub const EXIT_FINDINGS: i32 = 1;
/// Exit code: usage or I/O error.
pub const EXIT_USAGE: i32 = 2;

/// The config given with `--config`, loaded and checked (problems into `diags`).
pub fn load_config(path: Option<&Path>, diags: &mut Diagnostics) -> Option<Config> {
    crate::rules::load_config(path?, diags)
}

/// A path from the config, relative to the config file's directory.
pub fn config_relative(config_path: Option<&Path>, p: &str) -> PathBuf {
    let p = Path::new(p);
    match config_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// The rules directory: `--rules`, else the config's `rules:`, else `./rules`.
pub fn rules_dir(
    arg: Option<PathBuf>,
    config_path: Option<&Path>,
    cfg: Option<&Config>,
) -> PathBuf {
    arg.or_else(|| {
        cfg.and_then(|c| c.rules.as_ref())
            .map(|r| config_relative(config_path, r))
    })
    .unwrap_or_else(|| PathBuf::from("rules"))
}

/// The topic patterns in force.
pub fn patterns(cfg: Option<&Config>) -> Vec<TopicPattern> {
    let default = Config::default();
    cfg.unwrap_or(&default)
        .topic_patterns()
        .iter()
        .filter_map(|(p, k)| TopicPattern::parse(p, *k).ok())
        .collect()
}

/// The bounds on state the config sets (`engine.max_keys`, `max_devices`, `forget_after`),
/// for the whole engine; `run` splits them across shards, `dry-run` and `test` run one executor.
pub fn state_limits(cfg: Option<&Config>) -> crate::engine::Limits {
    use crate::engine::keyed::{FORGET_AFTER, MAX_DEVICES, MAX_KEYS};
    let e = cfg.and_then(|c| c.engine.as_ref());
    let n = |v: Option<&Option<crate::rules::yaml::Sp<usize>>>, default: usize| {
        v.and_then(|v| v.as_ref())
            .map_or(default, |n| n.value.max(1))
    };
    crate::engine::Limits {
        max_keys: n(e.map(|e| &e.max_keys), MAX_KEYS),
        max_devices: n(e.map(|e| &e.max_devices), MAX_DEVICES),
        forget_after: e
            .and_then(|e| e.forget_after.as_ref())
            .and_then(|d| crate::rules::duration::parse(&d.value).ok())
            .map_or(FORGET_AFTER, |ms| ms.max(1_000)),
    }
}

/// Milliseconds since the epoch, by the wall clock (only the CLI reads it, never the core).
pub fn wall_ms() -> i64 {
    use crate::engine::clock::Clock;
    crate::engine::clock::WallClock.now_ms()
}
