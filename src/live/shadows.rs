//! Shadow mode: a candidate rule set on the live messages, compared with the rules in force,
//! and promoted when it is right. This is the engine-wide half: it compiles the candidate
//! (from a directory, the config's `rules.shadow_dir` or `POST /api/shadow`), starts a
//! [`super::shadow::Run`] on every shard, adds the shards' pairs up into the report of
//! `rulechain diff` (`GET /api/shadow`, the `rulechain_shadow_*` metrics), and promotes: the
//! candidate's chain files are written into the rules directory (the files they replace or
//! remove kept under `state_dir/promoted/<time>/`), the rules reloaded (state carried as a
//! reload carries it), the shadow stopped, and who promoted it written to
//! `state_dir/promotions.jsonl`.
//!
//! Which shadow runs is kept in `state_dir/shadow.json`, so a restart starts it again (from
//! the live state; its counts start again too).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::reload::ReloadReq;
use super::shadow::{Cmd, Pair};
use super::shard::ShardMsg;
use super::shards::Shards;
use crate::config::Config;
use crate::counters::{Counters, Report as CounterReport};
use crate::diff::{compare, Report, Side};
use crate::engine::program::RuleSet;

/// How long starting a shadow waits for every shard to take it.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Who started the shadow, from where: what `shadow.json` keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Origin {
    /// The candidate's directory.
    pub dir: PathBuf,
    /// When it started (ms since the epoch).
    pub started_at: i64,
    /// Who started it (`config`, or the name given to the API).
    pub started_by: Option<String>,
}

/// A promotion, as `promotions.jsonl` and the API keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promotion {
    /// When (ms since the epoch).
    pub at: i64,
    /// Who (the name given to the API).
    pub by: Option<String>,
    /// The candidate's directory.
    pub from: PathBuf,
    /// The chain files written into the rules directory (new or changed; the others were
    /// the same already).
    pub written: Vec<PathBuf>,
    /// The chain files of the rules directory removed (the candidate has no such file).
    pub removed: Vec<PathBuf>,
    /// Where the files replaced or removed were kept.
    pub backup: Option<PathBuf>,
    /// The rules' generation after it.
    pub generation: u64,
    /// The shadow's report at the moment of the promotion: what the change did on live
    /// traffic (alarms added, removed, changed).
    pub alarms: PromotedAlarms,
}

/// How many alarms the promoted candidate added, removed and changed while it was a shadow.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PromotedAlarms {
    /// Added.
    pub added: usize,
    /// Removed.
    pub removed: usize,
    /// Changed.
    pub changed: usize,
}

/// A running shadow.
struct Running {
    origin: Origin,
    /// Each chain file's path under the candidate directory and its text, as compiled.
    files: Vec<(PathBuf, Arc<str>)>,
    chains: Vec<String>,
    pairs: Vec<Arc<Mutex<Pair>>>,
}

/// Why a shadow could not start or be promoted.
#[derive(Debug)]
pub enum ShadowError {
    /// The request is wrong (no such directory, a directory inside the rules).
    Bad(String),
    /// The candidate's rules have errors: every problem, as data.
    Invalid(Vec<crate::diag::Diagnostic>),
    /// There is no shadow (to promote).
    NotRunning,
    /// The engine cannot (a cluster; shutting down; a file that cannot be written).
    Unavailable(String),
}

/// The engine's shadow, shared by the API and the metrics.
pub struct Shadows {
    running: Mutex<Option<Running>>,
    /// Serializes start, stop and promote.
    busy: tokio::sync::Mutex<()>,
    last: Mutex<Option<Promotion>>,
    config: Option<Config>,
    rules_dir: PathBuf,
    state_dir: PathBuf,
    shards: Shards,
    reload: mpsc::Sender<ReloadReq>,
    /// In a cluster a shadow would see only this instance's partitions: refused.
    cluster: bool,
    /// The number of the last shadow started (a stop names the one it stops).
    generation: std::sync::atomic::AtomicU64,
}

/// The files of a directory of chains: (path, text) of each non-test YAML file.
fn chain_files(dir: &Path) -> Result<Vec<(PathBuf, Arc<str>)>, String> {
    let mut d = crate::diag::Diagnostics::new();
    let mut out = Vec::new();
    for f in crate::rules::yaml_files(&[dir.to_path_buf()], &mut d) {
        if crate::rules::is_test_file(&f) {
            continue;
        }
        let Some((src, root)) = crate::rules::read_yaml(&f, &mut d) else {
            continue;
        };
        if crate::rules::classify(&root) == Some(crate::rules::FileKind::Chain) {
            let rel = f.strip_prefix(dir).unwrap_or(&f).to_path_buf();
            out.push((rel, src.text.clone()));
        }
    }
    if d.has_errors() {
        return Err(d.render_each().join("\n"));
    }
    Ok(out)
}

impl Shadows {
    /// The engine's shadow (none running yet: [`Shadows::resume`] starts the one the config or
    /// `shadow.json` names).
    pub fn new(
        config: Option<Config>,
        rules_dir: PathBuf,
        state_dir: PathBuf,
        shards: Shards,
        reload: mpsc::Sender<ReloadReq>,
        cluster: bool,
    ) -> Shadows {
        Shadows {
            running: Mutex::new(None),
            busy: tokio::sync::Mutex::new(()),
            last: Mutex::new(read_last(&state_dir)),
            config,
            rules_dir,
            state_dir,
            shards,
            reload,
            cluster,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn saved_path(&self) -> PathBuf {
        self.state_dir.join("shadow.json")
    }

    /// At start: the config's shadow (`rules.shadow_dir`), else the one the API started
    /// before the restart. A shadow that cannot start is logged; the engine runs on.
    pub async fn resume(&self, from_config: Option<PathBuf>) {
        let origin = match from_config {
            Some(dir) => Some(Origin {
                dir,
                started_at: crate::engine::clock::wall_ms(),
                started_by: Some("config".into()),
            }),
            None => std::fs::read(self.saved_path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Origin>(&b).ok()),
        };
        let Some(origin) = origin else { return };
        let dir = origin.dir.display().to_string();
        if let Err(e) = self.start(origin).await {
            tracing::error!(dir, "the shadow does not run: {}", e.text());
        }
    }

    /// Starts a shadow of the chains in `origin.dir` (a running one is replaced). Gives how
    /// many chains it runs.
    pub async fn start(&self, origin: Origin) -> Result<usize, ShadowError> {
        if self.cluster {
            return Err(ShadowError::Unavailable(
                "shadow mode runs on a single instance; in a cluster, try the candidate with \
                 `rulechain diff` on a recording"
                    .into(),
            ));
        }
        let _busy = self.busy.lock().await;
        let dir = origin.dir.clone();
        if !dir.is_dir() {
            return Err(ShadowError::Bad(format!(
                "{} is not a directory of chain files",
                dir.display()
            )));
        }
        if let (Ok(d), Ok(r)) = (dir.canonicalize(), self.rules_dir.canonicalize()) {
            if d.starts_with(&r) {
                return Err(ShadowError::Bad(format!(
                    "{} is inside the rules directory {}: a reload would load the candidate as \
                     live rules; keep it apart",
                    dir.display(),
                    self.rules_dir.display()
                )));
            }
        }
        let config = self.config.clone();
        let d2 = dir.clone();
        // The files promoted later are the texts compiled now (a file changed since is not
        // what the shadow ran).
        let loaded = tokio::task::spawn_blocking(move || {
            let mut r = super::reload::Reloader::new(&d2, config);
            let loaded = r.load();
            let problems = r
                .status
                .lock()
                .map(|s| s.problems.clone())
                .unwrap_or_default();
            (r.sources(), loaded, problems)
        })
        .await
        .map_err(|_| ShadowError::Unavailable("the candidate could not be compiled".into()))?;
        let (files, (rules, report), problems) = loaded;
        if report.has_errors {
            return Err(ShadowError::Invalid(
                problems
                    .into_iter()
                    .filter(|p| p.severity == crate::diag::Severity::Error)
                    .collect(),
            ));
        }
        let Some(rules) = rules else {
            return Err(ShadowError::Bad(format!(
                "{} has no chain files",
                dir.display()
            )));
        };
        let chains: Vec<String> = rules.chains.iter().map(|c| c.name.to_string()).collect();
        let pairs = self.send_start(&rules).await?;
        let n = chains.len();
        tracing::info!(
            dir = %dir.display(),
            chains = n,
            by = origin.started_by.as_deref().unwrap_or("-"),
            "shadow started: the candidate runs on the live messages, its effects counted and never sent"
        );
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            origin: origin.clone(),
            files,
            chains,
            pairs,
        });
        if let Ok(b) = serde_json::to_vec_pretty(&origin) {
            if let Err(e) = crate::durable::replace(&self.saved_path(), &b) {
                tracing::warn!("cannot keep the shadow over a restart: {e}");
            }
        }
        Ok(n)
    }

    async fn send_start(&self, rules: &Arc<RuleSet>) -> Result<Vec<Arc<Mutex<Pair>>>, ShadowError> {
        let gone = || ShadowError::Unavailable("shutting down".into());
        let busy = || {
            ShadowError::Unavailable(format!(
                "a shard did not take the shadow within {} s (it is behind, or holding output \
                 while its state cannot be written); try again",
                ANSWER_WITHIN.as_secs()
            ))
        };
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let started = async {
            let mut answers = Vec::new();
            for tx in self.shards.senders() {
                let (reply, answer) = oneshot::channel();
                tx.send(ShardMsg::Shadow(Cmd::Start(
                    rules.clone(),
                    generation,
                    reply,
                )))
                .await
                .map_err(|_| gone())?;
                answers.push(answer);
            }
            let mut pairs = Vec::new();
            for a in answers {
                pairs.push(a.await.map_err(|_| gone())?);
            }
            Ok(pairs)
        };
        let pairs = match tokio::time::timeout(ANSWER_WITHIN, started).await {
            Ok(r) => r?,
            Err(_) => {
                // The shards that took it stop it again.
                self.send_stop();
                return Err(busy());
            }
        };
        if pairs.is_empty() {
            return Err(gone());
        }
        Ok(pairs)
    }

    /// Tells every shard to stop its shadow (the last one started, or an older one), without
    /// waiting for room in their queues.
    fn send_stop(&self) {
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        for tx in self.shards.senders() {
            tokio::spawn(async move {
                let _ = tx.send(ShardMsg::Shadow(Cmd::Stop(generation))).await;
            });
        }
    }

    /// Writes uploaded chain files (name → text, names already checked) into the state
    /// directory's `shadow-upload/`, replacing what an earlier upload left; gives the directory.
    pub async fn upload(
        &self,
        chains: std::collections::BTreeMap<String, String>,
    ) -> Result<PathBuf, String> {
        let _busy = self.busy.lock().await;
        let dir = self.state_dir.join("shadow-upload");
        let d2 = dir.clone();
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&d2);
            std::fs::create_dir_all(&d2)
                .map_err(|e| format!("cannot write {}: {e}", d2.display()))?;
            for (name, text) in chains {
                let p = d2.join(name);
                std::fs::write(&p, text)
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            Ok::<_, String>(())
        })
        .await
        .map_err(|_| "the files could not be written".to_string())??;
        Ok(dir)
    }

    /// Stops the shadow; false if none ran.
    pub async fn stop(&self) -> bool {
        let _busy = self.busy.lock().await;
        self.stop_now().await
    }

    async fn stop_now(&self) -> bool {
        let was = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.send_stop();
        let _ = std::fs::remove_file(self.saved_path());
        was.is_some()
    }

    /// The running diff: the live rules as the base, the candidate as the candidate, since
    /// the shadow started (None: no shadow runs).
    pub fn report(&self) -> Option<(Report, ShadowInfo)> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let r = running.as_ref()?;
        let (mut live, mut cand) = (Side::default(), Side::default());
        let (mut messages, mut dropped) = (0, 0);
        let mut unpaired = std::collections::BTreeMap::<(&str, &str), u64>::new();
        let mut effects = std::collections::BTreeMap::<(&str, &str), u64>::new();
        for p in &r.pairs {
            let p = p.lock().unwrap_or_else(|e| e.into_inner());
            live.add(p.live.side());
            cand.add(p.candidate.side());
            messages += p.messages;
            dropped += p.live.episodes_dropped + p.candidate.episodes_dropped;
            for (side, t) in [("live", &p.live), ("candidate", &p.candidate)] {
                for (k, n) in t.unpaired_counts() {
                    *unpaired.entry((side, k)).or_default() += n;
                }
                for (k, n) in t.effect_counts() {
                    *effects.entry((side, k)).or_default() += n;
                }
            }
        }
        let report = compare(&live, &cand, messages);
        let info = ShadowInfo {
            running: true,
            dir: r.origin.dir.clone(),
            started_at: r.origin.started_at,
            started_by: r.origin.started_by.clone(),
            chains: r.chains.clone(),
            episodes_dropped: dropped,
            unpaired: unpaired
                .into_iter()
                .map(|((s, k), n)| (format!("{s}:{k}"), n))
                .collect(),
            effects: effects
                .into_iter()
                .map(|((s, k), n)| (format!("{s}:{k}"), n))
                .collect(),
        };
        Some((report, info))
    }

    /// The last promotion (this run's, or the last one `promotions.jsonl` holds).
    pub fn last_promotion(&self) -> Option<Promotion> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Promotes the running shadow: its chain files into the rules directory, a reload, the
    /// shadow stopped, the promotion written down.
    pub async fn promote(&self, by: Option<String>) -> Result<Promotion, ShadowError> {
        let _busy = self.busy.lock().await;
        let (origin, files) = {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let r = running.as_ref().ok_or(ShadowError::NotRunning)?;
            (r.origin.clone(), r.files.clone())
        };
        let counted = self
            .report()
            .map(|(r, _)| PromotedAlarms {
                added: r.added.len(),
                removed: r.removed.len(),
                changed: r.changed.len(),
            })
            .unwrap_or_default();
        let at = crate::engine::clock::wall_ms();
        let rules_dir = self.rules_dir.clone();
        let backup_dir = self.state_dir.join("promoted").join(at.to_string());
        let written =
            tokio::task::spawn_blocking(move || write_rules(&rules_dir, &files, &backup_dir))
                .await
                .map_err(|_| ShadowError::Unavailable("the files could not be written".into()))?
                .map_err(ShadowError::Unavailable)?;
        // The reload reads what was written; the files' watcher may reload too (the same
        // rules: no second generation).
        let (tx, rx) = oneshot::channel();
        self.reload
            .send(ReloadReq { reply: Some(tx) })
            .await
            .map_err(|_| ShadowError::Unavailable("shutting down".into()))?;
        let report = rx
            .await
            .map_err(|_| ShadowError::Unavailable("shutting down".into()))?;
        if report.has_errors {
            // Compiled when the shadow started; only a change in between (the config) can
            // make them fail now. The files are written: the reload kept the last good rules.
            return Err(ShadowError::Unavailable(format!(
                "the promoted rules were written to {} but did not load: {}",
                self.rules_dir.display(),
                report.errors.join("; ")
            )));
        }
        self.stop_now().await;
        let p = Promotion {
            at,
            by,
            from: origin.dir,
            written: written.0,
            removed: written.1,
            backup: written.2,
            generation: report.generation,
            alarms: counted,
        };
        tracing::info!(
            by = p.by.as_deref().unwrap_or("-"),
            from = %p.from.display(),
            generation = p.generation,
            files = p.written.len(),
            removed = p.removed.len(),
            "shadow promoted: its rules are in force"
        );
        if let Ok(mut line) = serde_json::to_vec(&p) {
            line.push(b'\n');
            let path = self.state_dir.join("promotions.jsonl");
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &line));
            if let Err(e) = r {
                tracing::warn!("cannot write {}: {e}", path.display());
            }
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
        Ok(p)
    }
}

/// The last line of `promotions.jsonl`.
fn read_last(state_dir: &Path) -> Option<Promotion> {
    let text = std::fs::read_to_string(state_dir.join("promotions.jsonl")).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Writes the candidate's chain files into the rules directory and removes its chain files
/// that the candidate has not; every file replaced or removed is first copied under `backup`.
/// Gives (written, removed, the backup directory if anything was kept there).
#[allow(clippy::type_complexity)]
fn write_rules(
    rules_dir: &Path,
    files: &[(PathBuf, Arc<str>)],
    backup: &Path,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>, Option<PathBuf>), String> {
    let now =
        chain_files(rules_dir).map_err(|e| format!("the rules directory cannot be read: {e}"))?;
    let mut kept = false;
    let mut keep = |rel: &Path, text: &str| -> Result<(), String> {
        let dest = backup.join(rel);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot write {}: {e}", d.display()))?;
        }
        std::fs::write(&dest, text).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        kept = true;
        Ok(())
    };
    let mut removed = Vec::new();
    for (rel, text) in &now {
        match files.iter().find(|(r, _)| r == rel) {
            Some((_, new)) if new == text => {}
            Some(_) => keep(rel, text)?,
            None => {
                keep(rel, text)?;
                removed.push(rel.clone());
            }
        }
    }
    let mut written = Vec::new();
    for (rel, text) in files {
        if now.iter().any(|(r, t)| r == rel && t == text) {
            continue;
        }
        let dest = rules_dir.join(rel);
        crate::durable::replace(&dest, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        written.push(rel.clone());
    }
    for rel in &removed {
        let p = rules_dir.join(rel);
        std::fs::remove_file(&p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
    }
    Ok((written, removed, kept.then(|| backup.to_path_buf())))
}

impl ShadowError {
    /// The error as one text.
    pub fn text(&self) -> String {
        match self {
            ShadowError::Bad(s) | ShadowError::Unavailable(s) => s.clone(),
            ShadowError::Invalid(e) => format!(
                "the candidate's rules have {} error(s): {}",
                e.len(),
                e.iter()
                    .map(|d| format!("{}:{}:{}: {}", d.path, d.line, d.column, d.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            ShadowError::NotRunning => "no shadow runs: start one with `POST /api/shadow`".into(),
        }
    }
}

/// What the API says of the shadow besides the report.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowInfo {
    /// Whether a shadow runs.
    pub running: bool,
    /// The candidate's directory.
    pub dir: PathBuf,
    /// When it started (ms since the epoch).
    pub started_at: i64,
    /// Who started it.
    pub started_by: Option<String>,
    /// The candidate's chains.
    pub chains: Vec<String>,
    /// Alarm episodes not kept (past the bound per shard and side).
    pub episodes_dropped: u64,
    /// Effects one side made and the other did not, by `side:kind`.
    pub unpaired: std::collections::BTreeMap<String, u64>,
    /// Effects made, by `side:kind`.
    pub effects: std::collections::BTreeMap<String, u64>,
}

impl Counters for Shadows {
    fn report(&self, r: &mut dyn CounterReport) {
        let now = self.report();
        r.flag(
            "running",
            "whether a shadow of candidate rules runs",
            now.is_some(),
        );
        let (report, info) = match now {
            Some(x) => x,
            None => return,
        };
        r.counter(
            "messages",
            "messages the shadow was given since it started",
            report.messages,
        );
        for (name, help, n) in [
            (
                "alarms_added",
                "alarms the candidate raised and the live rules did not",
                report.added.len(),
            ),
            (
                "alarms_removed",
                "alarms the live rules raised and the candidate did not",
                report.removed.len(),
            ),
            (
                "alarms_changed",
                "alarms both raised, with another severity, start or duration",
                report.changed.len(),
            ),
        ] {
            r.gauge(name, help, n as u64);
        }
        for side in ["live", "candidate"] {
            let of = |m: &std::collections::BTreeMap<String, u64>| -> Vec<(String, u64)> {
                m.iter()
                    .filter_map(|(k, n)| {
                        let (s, kind) = k.split_once(':')?;
                        (s == side).then(|| (kind.to_string(), *n))
                    })
                    .collect()
            };
            for (name, help, m) in [
                (
                    "effects",
                    "effects made since the shadow started, by kind (the candidate's are counted, never sent)",
                    &info.effects,
                ),
                (
                    "unpaired",
                    "effects made that the other side did not make, by kind",
                    &info.unpaired,
                ),
            ] {
                let rows = of(m);
                let rows: Vec<(&str, u64)> = rows.iter().map(|(k, n)| (k.as_str(), *n)).collect();
                r.counters_by(&format!("{side}_{name}"), help, "kind", &rows);
            }
        }
    }
}
