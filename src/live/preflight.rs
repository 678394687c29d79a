//! What `run` checks and opens before anything runs (the rules directory, the state file, the
//! embedded broker, the rules and devices), then the I/O runtime that serves the engine.

use std::sync::Arc;

use super::serve::{RunOptions, SavedState};
use super::{broker, reload, serve, shard, store};
use crate::config::settings::{Broker, Settings};
use crate::diag::Diagnostics;
use crate::engine::clock::wall_ms;

/// Why the engine did not start or stopped early, with its exit code: 1 for findings (rules
/// with errors), 2 for usage and I/O (a port taken, a state file damaged, a directory missing).
#[derive(Debug)]
pub struct Fatal {
    /// The exit code.
    pub code: i32,
    /// What went wrong and how to fix it.
    pub message: String,
}

impl From<String> for Fatal {
    fn from(message: String) -> Self {
        Fatal { code: 2, message }
    }
}

impl From<store::StoreError> for Fatal {
    fn from(e: store::StoreError) -> Self {
        Fatal {
            code: 2,
            message: e.to_string(),
        }
    }
}

/// Worker threads of the I/O runtime: the cores the shards leave, at least one. Every extra
/// worker is another thread for the ingest and egress tasks to be woken on: on 2 cores with one
/// shard, measured side by side (benches/compare), one worker drained a flood at 21–22k msg/s
/// and 33–35 µs of CPU a message, two at 19–21k and 36–40 µs.
fn io_threads(shards: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cpus.saturating_sub(shards).max(1)
}

/// Opens the state store (first, before any thread runs: a damaged file is reported, not
/// panicked on), moving the old file aside with `--reset-state`.
fn open_store(dir: &std::path::Path, reset: bool) -> Result<store::RedbStore, Fatal> {
    let path = store::RedbStore::path_in(dir);
    if reset && path.exists() {
        let aside = path.with_extension(format!("redb.reset-{}", wall_ms()));
        std::fs::rename(&path, &aside)
            .map_err(|e| format!("--reset-state: cannot move {} aside: {e}", path.display()))?;
        tracing::warn!(
            "--reset-state: moved {} to {}; starting with empty state",
            path.display(),
            aside.display()
        );
    }
    Ok(store::RedbStore::open(dir)?)
}

/// The state dir's store and every shard's saved state, read and decoded now: one that cannot
/// be read stops the start (exit 2) instead of starting that shard empty and overwriting it.
/// Gives the shard count the state was written with.
fn saved_state(settings: &Settings, reset: bool) -> Result<(SavedState, usize), Fatal> {
    let mut redb = open_store(&settings.state_dir, reset)?;
    // Notifications are kept with the state that produced them until delivered.
    redb.keep_outbox()?;
    use store::StateStore as _;
    // A state dir keeps the shard count it was written with: devices map to shards by hash.
    let shards = match redb.shard_count()? {
        Some(n) if n != settings.shards => {
            tracing::info!(
                "the state in {} was written by {n} shards; running {n} shards (not {})",
                settings.state_dir.display(),
                settings.shards
            );
            n
        }
        Some(n) => n,
        None => {
            redb.set_shard_count(settings.shards)?;
            settings.shards
        }
    };
    let snapshots: Vec<_> = redb
        .check_all(shards, shard::decode_snapshot)?
        .into_iter()
        .map(Option::flatten)
        .collect();
    let store: Arc<dyn store::StateStore> = Arc::new(redb);
    Ok((SavedState { store, snapshots }, shards))
}

pub(super) fn start(settings: Settings, opts: RunOptions) -> Result<(), Fatal> {
    if !settings.rules_dir.is_dir() {
        return Err(format!(
            "the rules directory {} does not exist: create it, give `--rules DIR`, or set `rules:` in the config",
            settings.rules_dir.display()
        )
        .into());
    }
    // In a cluster the state is in Redis, by partition (read when a partition is taken).
    let (state, shards) = match &settings.cluster {
        Some(_) => (None, settings.shards),
        None => {
            let (state, shards) = saved_state(&settings, opts.reset_state)?;
            (Some(state), shards)
        }
    };
    let embedded = match settings.broker {
        Broker::Embedded(addr) => {
            let links = broker::start(addr, &crate::topic::mqtt_filters(&settings.patterns))?;
            tracing::info!("embedded MQTT broker listening on {addr}");
            Some(links)
        }
        Broker::External(_) => None,
    };
    let mut reloader = reload::Reloader::new(
        &settings.rules_dir,
        settings.config_given.then(|| settings.config.clone()),
    );
    let (rules, report) = reloader.load();
    for e in &report.errors {
        if report.has_errors {
            tracing::error!("{e}");
        } else {
            tracing::warn!("{e}");
        }
    }
    // At start there is no last good version to fall back on: refuse, as a reload would.
    let rules = match rules {
        Some(r) if !report.has_errors => r,
        _ => {
            return Err(Fatal {
                code: 1,
                message: format!(
                    "the rules in {} have errors (above); fix them (`rulechain validate {}{}` shows them) and start again",
                    settings.rules_dir.display(),
                    // Under a config (its channels, its command topic) they are checked against it.
                    settings
                        .config_path
                        .as_ref()
                        .map_or_else(String::new, |c| format!("--config {} ", c.display())),
                    settings.rules_dir.display()
                ),
            });
        }
    };
    tracing::info!(
        chains = ?rules.chains.iter().map(|c| c.name.to_string()).collect::<Vec<_>>(),
        dir = %settings.rules_dir.display(),
        "rules loaded"
    );
    let devices = match &settings.devices {
        Some(p) => {
            let mut d = Diagnostics::new();
            let devices = crate::rules::load_devices(p, &mut d);
            if d.has_errors() {
                return Err(Fatal {
                    code: 1,
                    message: format!("the devices file has errors:\n{}", d.render_text()),
                });
            }
            devices.unwrap_or_default()
        }
        None => Default::default(),
    };
    let mut devices = devices;
    let mut settings = settings;
    if let Some(attr) = settings.signature_key_attribute.clone() {
        let n = crate::rules::take_signing_keys(&mut settings, &mut devices);
        tracing::info!(
            attribute = %attr,
            devices = n,
            "signed messages: each device's key taken from the devices file"
        );
        if n == 0 {
            tracing::warn!(
                attribute = %attr,
                "no device has a signing key: every signed message will be refused"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads(shards))
        .enable_all()
        .thread_name("rulechain-io")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(serve::serve(
        settings, opts, state, reloader, rules, devices, embedded,
    ))
    .map_err(Fatal::from)
}
