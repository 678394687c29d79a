//! The layers of ARCHITECTURE.md, kept by a test: every `crate::…` path in `src/` is an arrow
//! from the module that writes it to the module it names, and arrows run down, never up:
//!
//! ```text
//! main ─► cli ─► harnesses (replay, live), clients ─► rule core (rules with its node kinds,
//!                and sinks                             script, engine)
//!                                                    ─► config ─► foundation
//! ```
//!
//! Besides the floors: sinks never import `live` or `cli`, nor the engine for alarms (they are
//! `crate::alarm`'s); the helper clients (simulator,
//! recorder) never import `live`; `live` and `replay` never import each
//! other; `engine` never imports the compiler (`rules::compile`); no two modules import each
//! other, directly or around a circle.
//!
//! An arrow that must break these for a while is listed in `KNOWN`; the test fails on any other,
//! and on a `KNOWN` entry that no longer exists (so the list only shrinks).
//!
//! And within modules: no two files import each other, directly or around a circle (every
//! `use` and every `crate::`, `super::`, `self::` path, a re-exported name followed to the file
//! that defines it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floor of each top-level module of `src/` (higher may import lower).
fn floor(module: &str) -> Option<u8> {
    Some(match module {
        "civil" | "diag" | "env" | "topic" | "lineproto" | "message" | "yaml" | "duration"
        | "durable" | "retry" | "counters" | "signature" => 0,
        "config" | "alarm" => 1,
        "script" | "rules" | "engine" | "diff" => 2,
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
        ("sinks", "engine") if path.starts_with("engine::alarm") => {
            Some("the sinks take alarms from `crate::alarm`, not from the engine's store")
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

/// A file's module path: `src/live/cluster/view.rs` is `live::cluster::view`, a `mod.rs` its
/// directory's, `lib.rs` and `main.rs` the crate's root (empty).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The `use` statements of a file with their braces expanded, and every other `crate::`,
/// `super::` and `self::` path outside comments: each as its segments.
fn file_paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    // `use …;` statements, braces expanded.
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use ") {
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        let after = &rest[i + 4..];
        let Some(end) = after.find(';') else { break };
        if before_ok {
            expand(
                &after[..end].split_whitespace().collect::<String>(),
                &mut out,
            );
        }
        rest = &after[end..];
    }
    // Paths written inline.
    for start in ["crate::", "super::", "self::"] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(start) {
            let before_ok = i == 0 || {
                let c = rest.as_bytes()[i - 1];
                !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
            };
            let tail = &rest[i..];
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if before_ok {
                out.push(path.split("::").map(str::to_string).collect());
            }
            rest = &tail[start.len()..];
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (an `as` rename is dropped).
fn expand(tree: &str, out: &mut Vec<Vec<String>>) {
    fn go(prefix: &[String], t: &str, out: &mut Vec<Vec<String>>) {
        let t = t.trim().trim_start_matches("pub").trim_start_matches("::");
        match t.find('{') {
            Some(open) if t.ends_with('}') => {
                let mut base = prefix.to_vec();
                base.extend(
                    t[..open]
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
                let inner = &t[open + 1..t.len() - 1];
                let mut depth = 0;
                let mut part = String::new();
                for c in inner.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            go(&base, &part, out);
                            part.clear();
                            continue;
                        }
                        _ => {}
                    }
                    part.push(c);
                }
                if !part.trim().is_empty() {
                    go(&base, &part, out);
                }
            }
            _ => {
                let t = t.split("as").next().unwrap_or(t);
                let mut p = prefix.to_vec();
                p.extend(t.split("::").filter(|s| !s.is_empty()).map(str::to_string));
                out.push(p);
            }
        }
    }
    go(&[], tree, out);
}

#[test]
fn no_two_files_import_each_other_directly_or_around_a_circle() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    // Module path → file, and each module's re-exports (`pub use x::Name`: Name → x's path).
    let mut by_module: BTreeMap<Vec<String>, PathBuf> = BTreeMap::new();
    for f in &files {
        by_module.insert(module_path(&src, f), f.clone());
    }
    let texts: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read_to_string(f).unwrap()))
        .collect();
    // A path, absolute (from the crate root), to the file that defines what it names.
    let resolve = |path: &[String], depth: usize| -> Option<PathBuf> {
        let mut resolved: Option<(usize, PathBuf)> = None;
        for n in (0..=path.len()).rev() {
            if let Some(f) = by_module.get(&path[..n]) {
                resolved = Some((n, f.clone()));
                break;
            }
        }
        let (n, f) = resolved?;
        // A name the module re-exports from one of its own: that one's file (one step).
        if depth == 0 {
            if let Some(name) = path.get(n) {
                let module = path[..n].to_vec();
                let mut re = Vec::new();
                for l in texts[&f]
                    .lines()
                    .filter(|l| l.trim_start().starts_with("pub use "))
                {
                    expand(
                        l.trim_start()
                            .trim_start_matches("pub use ")
                            .trim_end_matches(';'),
                        &mut re,
                    );
                }
                for r in re {
                    if r.last() == Some(name) {
                        let target: Vec<String> = match r.first().map(String::as_str) {
                            Some("crate") => r[1..].to_vec(),
                            Some("super" | "self") => continue,
                            _ => module.iter().chain(r.iter()).cloned().collect(),
                        };
                        for m in (0..=target.len()).rev() {
                            if let Some(g) = by_module.get(&target[..m]) {
                                return Some(g.clone());
                            }
                        }
                    }
                }
            }
        }
        Some(f)
    };
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in &files {
        let here = module_path(&src, f);
        let is_mod = f.ends_with("mod.rs") || f.ends_with("lib.rs");
        for p in file_paths(&texts[f]) {
            // Absolute: from the crate root.
            let abs: Vec<String> = match p.first().map(String::as_str) {
                Some("crate") => p[1..].to_vec(),
                Some("super") => {
                    let mut base = here.clone();
                    let mut rest = &p[..];
                    // A `mod.rs`'s `super` is its directory's parent; a file's, its directory.
                    if !is_mod {
                        base.pop();
                    }
                    while rest.first().map(String::as_str) == Some("super") {
                        rest = &rest[1..];
                        if rest.first().map(String::as_str) == Some("super") {
                            base.pop();
                        }
                    }
                    if is_mod {
                        base.pop();
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                Some("self") => {
                    let mut base = here.clone();
                    base.extend(p[1..].iter().cloned());
                    base
                }
                _ => continue,
            };
            if let Some(to) = resolve(&abs, 0) {
                if &to != f {
                    edges.entry(f.clone()).or_default().insert(to);
                }
            }
        }
    }
    // Circles: a file that reaches itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut stack: Vec<(PathBuf, Vec<PathBuf>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((n, trail)) = stack.pop() {
            for next in edges.get(&n).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = trail
                        .iter()
                        .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
                        .collect();
                    circles.push(names.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    assert!(
        circles.is_empty(),
        "files that import each other (move what both need into a file both import):\n  {}",
        circles.join("\n  ")
    );
}
