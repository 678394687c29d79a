//! Hot reload of the rules directory, per file: each chain file is checked on its own; a file
//! with errors keeps its last good version (its diagnostics are logged and kept for the API), a
//! good file replaces its old version, a deleted file's chains go. The rules that result are
//! swapped in atomically on every shard; node state follows (chain, node id).
//!
//! Triggers: file changes (debounced), SIGHUP, and `POST /api/reload`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::Config;
use crate::diag::{Diagnostics, Source};
use crate::engine::program::RuleSet;
use crate::rules::compile::{self, ChainDoc, CompileOptions};
use crate::rules::{self, FileKind};
use crate::yaml::Node;

/// What the API shows about reloads.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadStatus {
    /// The generation of the rules in force (1 = the rules loaded at start): after a reload,
    /// it counts once every shard was handed the new rules, ahead of any message that arrives
    /// later (a shard's queue is in order).
    pub generation: u64,
    /// The generation of the rules loaded last, which may still be on their way to the shards.
    #[serde(skip)]
    pub loaded: u64,
    /// Times the rules directory was read (start, file changes, SIGHUP, the API).
    pub checks: u64,
    /// Reloads that swapped in new rules.
    pub reloads: u64,
    /// Reloads that found errors (some files kept their last good version, or nothing changed).
    pub failed: u64,
    /// The problems of the last reload, as `path:line:col: error: …` text (empty: none).
    pub errors: Vec<String>,
    /// The same problems as data (file, line, column, severity, message, hint), for
    /// `/api/chains`.
    #[serde(skip)]
    pub problems: Vec<crate::diag::Diagnostic>,
    /// The chains in force.
    pub chains: Vec<String>,
    /// When rules were last swapped (ms since the epoch).
    pub swapped_at: i64,
}

/// The result of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Whether new rules were swapped in.
    pub swapped: bool,
    /// The generation in force after it.
    pub generation: u64,
    /// Its problems (errors and warnings).
    pub errors: Vec<String>,
    /// Whether any of them is an error (a warning alone changes nothing).
    pub has_errors: bool,
}

/// A reload asked for (by the API, SIGHUP, the file watcher or a promotion).
pub struct ReloadReq {
    /// Where the result goes, if anyone waits for it.
    pub reply: Option<tokio::sync::oneshot::Sender<ReloadReport>>,
}

/// The last good version of each chain file.
pub struct Reloader {
    dir: PathBuf,
    config: Option<Config>,
    good: BTreeMap<PathBuf, (Source, Node)>,
    /// Shared with the API.
    pub status: Arc<Mutex<ReloadStatus>>,
}

impl Reloader {
    /// A reloader for `dir`; call [`Reloader::load`] for the first rule set.
    pub fn new(dir: &Path, config: Option<Config>) -> Self {
        Reloader {
            dir: dir.to_path_buf(),
            config,
            good: BTreeMap::new(),
            status: Arc::default(),
        }
    }

    /// The chain files in force, as (path under the directory, text): what the last good load
    /// compiled.
    pub fn sources(&self) -> Vec<(PathBuf, Arc<str>)> {
        self.good
            .iter()
            .map(|(p, (src, _))| {
                let rel = p.strip_prefix(&self.dir).unwrap_or(p).to_path_buf();
                (rel, src.text.clone())
            })
            .collect()
    }

    /// Reads the directory again. Returns the new rules when anything changed and they compile,
    /// and the diagnostics either way.
    pub fn load(&mut self) -> (Option<Arc<RuleSet>>, ReloadReport) {
        let mut problems = Diagnostics::new();
        let files = rules::yaml_files(std::slice::from_ref(&self.dir), &mut problems);
        let mut next: BTreeMap<PathBuf, (Source, Node)> = BTreeMap::new();
        for f in files.iter().filter(|f| !rules::is_test_file(f)) {
            let mut d = Diagnostics::new();
            let parsed = rules::read_yaml(f, &mut d);
            let candidate = match parsed {
                Some((src, root)) => match rules::classify(&root) {
                    Some(FileKind::Chain) => {
                        // Compile the file alone: its own errors decide its fate.
                        compile_alone(self.config.as_ref(), &src, &root, &mut d);
                        Some((src, root))
                    }
                    // Devices, config or other YAML in the rules dir: not chains.
                    Some(_) => continue,
                    None => {
                        d.error(
                            &src,
                            root.pos,
                            "not a chain file: no top-level `chain:` key",
                        );
                        Some((src, root))
                    }
                },
                None => None,
            };
            if d.has_errors() {
                problems.extend(d);
                if let Some(old) = self.good.get(f) {
                    tracing::warn!(file = %f.display(), "keeping the last good version of this file");
                    next.insert(f.clone(), old.clone());
                }
            } else if let Some(c) = candidate {
                problems.extend(d);
                next.insert(f.clone(), c);
            }
        }
        let unchanged = next.len() == self.good.len()
            && next
                .iter()
                .zip(&self.good)
                .all(|((a, (sa, _)), (b, (sb, _)))| a == b && sa.text == sb.text);
        let mut errors = problems.render_each();
        let mut has_errors = problems.has_errors();
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.checks += 1;
        let mut rules = None;
        if !(unchanged && status.loaded > 0) {
            // Together: errors across files (two files naming one chain) refuse the whole swap.
            let docs: Vec<ChainDoc> = next
                .values()
                .map(|(src, root)| ChainDoc {
                    src: src.clone(),
                    root: root.clone(),
                })
                .collect();
            let mut d = Diagnostics::new();
            let opts = CompileOptions {
                config: self.config.as_ref(),
            };
            let rs = compile::compile(&docs, &opts, &mut d);
            if d.has_errors() {
                errors.extend(d.render_each());
                problems.extend(d);
                has_errors = true;
            } else {
                self.good = next;
                status.loaded += 1;
                if status.loaded > 1 {
                    status.reloads += 1;
                } else {
                    // The rules at start: the shards begin with them.
                    status.generation = 1;
                }
                status.chains = rs.chains.iter().map(|c| c.name.to_string()).collect();
                status.swapped_at = crate::engine::clock::wall_ms();
                rules = Some(Arc::new(rs));
            }
        }
        if has_errors {
            status.failed += 1;
        }
        status.errors.clone_from(&errors);
        status.problems = problems.sorted().into_iter().cloned().collect();
        let report = ReloadReport {
            swapped: rules.is_some(),
            generation: status.loaded,
            errors,
            has_errors,
        };
        (rules, report)
    }
}

/// Compiles one chain file on its own, as a reload does before it takes the file.
fn compile_alone(config: Option<&Config>, src: &Source, root: &Node, d: &mut Diagnostics) {
    let doc = ChainDoc {
        src: src.clone(),
        root: root.clone(),
    };
    let opts = CompileOptions { config };
    compile::compile(std::slice::from_ref(&doc), &opts, d);
}

/// Checks a chain file's text as a reload would check the file `name` (`POST
/// /api/rules/validate`): the problems `validate` would print for it.
pub fn check_chain_text(config: Option<&Config>, name: &str, text: String) -> Diagnostics {
    let mut d = Diagnostics::new();
    let Some((src, root)) = rules::parse_text(Path::new(name), text, &mut d) else {
        return d;
    };
    match rules::classify(&root) {
        Some(FileKind::Chain) => compile_alone(config, &src, &root, &mut d),
        _ => {
            d.error(
                &src,
                root.pos,
                "not a chain file: no top-level `chain:` key",
            );
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("rulechain-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const A: &str = "chain: a\nnodes:\n  - filter: msg.x > 1\n";
    const B: &str = "chain: b\nnodes:\n  - filter: msg.y > 1\n";

    #[test]
    fn a_broken_file_keeps_its_last_good_version() {
        let d = dir("broken");
        std::fs::write(d.join("a.yaml"), A).unwrap();
        std::fs::write(d.join("b.yaml"), B).unwrap();
        let mut r = Reloader::new(&d, None);
        let (rs, rep) = r.load();
        assert!(rep.swapped && rep.errors.is_empty(), "{rep:?}");
        assert_eq!(rs.unwrap().chains.len(), 2);
        // Nothing changed: no new generation.
        let (rs, rep) = r.load();
        assert!(rs.is_none() && !rep.swapped && rep.generation == 1);
        // `a` breaks, `b` changes: `b` is swapped in, `a` keeps its old version.
        std::fs::write(d.join("a.yaml"), "chain: a\nnodes:\n  - filter: msg.x >\n").unwrap();
        std::fs::write(d.join("b.yaml"), B.replace("1", "2")).unwrap();
        let (rs, rep) = r.load();
        let rs = rs.expect("b's change is swapped in");
        assert_eq!(rep.generation, 2);
        assert_eq!(rs.chains.len(), 2, "a still runs");
        assert_eq!(rep.errors.len(), 1, "{rep:?}");
        assert!(rep.errors[0].contains("a.yaml:3:"), "{rep:?}");
        let st = r.status.lock().unwrap().clone();
        assert_eq!((st.reloads, st.failed), (1, 1));
        // A deleted file's chain goes.
        std::fs::remove_file(d.join("b.yaml")).unwrap();
        let (rs, _) = r.load();
        assert_eq!(rs.unwrap().chains.len(), 1);
        // Two files naming one chain: the swap is refused as a whole.
        std::fs::write(d.join("c.yaml"), A.replace("msg.x", "msg.z")).unwrap();
        let (rs, rep) = r.load();
        assert!(rs.is_none(), "{rep:?}");
        assert!(
            rep.errors
                .iter()
                .any(|e| e.contains("duplicate chain name")),
            "{rep:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
