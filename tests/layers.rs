//! The layers of ARCHITECTURE.md, kept by a test: every `crate::…` path in `src/` is an arrow
//! from the module that writes it to the module it names, and arrows run down, never up:
//!
//! ```text
//! main ─► cli ─► harnesses (replay, live), clients ─► rule core (rules with its node kinds,
//!                and sinks                             script, engine)
//!                                                    ─► config ─► foundation
//! ```
//!
//! Besides the floors: sinks never import `live` or `cli`; the helper clients (simulator,
//! recorder) never import `live`; `live` and `replay` never import each
//! other; `engine` never imports the compiler (`rules::compile`); no two modules import each
//! other, directly or around a circle.
//!
//! An arrow that must break these for a while is listed in `KNOWN`; the test fails on any other,
//! and on a `KNOWN` entry that no longer exists (so the list only shrinks).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floor of each top-level module of `src/` (higher may import lower).
fn floor(module: &str) -> Option<u8> {
    Some(match module {
        "diag" | "env" | "topic" | "lineproto" | "message" | "yaml" | "duration" | "retry"
        | "counters" => 0,
        "config" => 1,
        "script" | "rules" | "engine" => 2,
        "replay" | "live" | "sinks" | "clients" => 3,
        "cli" => 4,
        "main" | "lib" => 5,
        _ => return None,
    })
}

/// Forbidden arrows between modules of one floor, or into a module's inside.
fn forbidden(from: &str, to: &str, path: &str) -> Option<&'static str> {
    match (from, to) {
        ("sinks", "live") => Some("sinks never import live"),
        ("clients", "live") => {
            Some("the helper clients never import live (live starts the simulator)")
        }
        ("live", "replay") | ("replay", "live") => Some("live and replay never import each other"),
        ("engine", "rules") if path.starts_with("rules::compile") => {
            Some("engine never imports the compiler")
        }
        _ => None,
    }
}

/// Arrows that break the rules today, as `from -> to`, each one work left. None are left; an
/// entry here must name the arrow and why it cannot be mended yet.
const KNOWN: &[&str] = &[];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::a::b…` path in the text, outside comments: (module, the path after `crate::`).
fn crate_paths(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let path: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let module = path.split("::").next().unwrap_or("").to_string();
            if !module.is_empty() {
                out.push((module, path));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn imports_run_down_the_layers() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for f in &files {
        let from = module_of(&src, f);
        let Some(from_floor) = floor(&from) else {
            panic!(
                "{}: module `{from}` has no floor in tests/layers.rs",
                f.display()
            );
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (to, path) in crate_paths(&text) {
            if to == from {
                continue;
            }
            let Some(to_floor) = floor(&to) else {
                continue;
            };
            edges.insert((from.clone(), to.clone()));
            let why = if to_floor > from_floor {
                Some("an arrow that runs up")
            } else if to == "cli" && from != "main" {
                Some("only main imports cli")
            } else {
                forbidden(&from, &to, &path)
            };
            if let Some(why) = why {
                let rel = f.strip_prefix(&src).unwrap().display().to_string();
                found
                    .entry(format!("{from} -> {to}"))
                    .or_insert_with(|| format!("src/{rel}: crate::{path} ({why})"));
            }
        }
    }
    // Circles between modules: an arrow a -> b where b also reaches a.
    let reach = |a: &str, b: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![b.to_string()];
        while let Some(n) = stack.pop() {
            if n == a {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.extend(
                    edges
                        .iter()
                        .filter(|(x, _)| *x == n)
                        .map(|(_, y)| y.clone()),
                );
            }
        }
        false
    };
    for (a, b) in &edges {
        if reach(a, b) {
            found
                .entry(format!("{a} -> {b}"))
                .or_insert_with(|| format!("{a} -> {b} is on a circle of imports"));
        }
    }
    let known: BTreeSet<&str> = KNOWN.iter().copied().collect();
    let new: Vec<&String> = found
        .iter()
        .filter(|(k, _)| !known.contains(k.as_str()))
        .map(|(_, v)| v)
        .collect();
    let gone: Vec<&&str> = known.iter().filter(|k| !found.contains_key(**k)).collect();
    assert!(
        new.is_empty(),
        "imports that break the layers (see ARCHITECTURE.md, \"Layers\"):\n  {}",
        new.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert!(
        gone.is_empty(),
        "fixed, so remove from KNOWN in tests/layers.rs: {gone:?}"
    );
}
