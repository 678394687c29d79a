//! Rule files: the model, loading with positions, and compilation.
//!
//! Architecture invariant: loading never stops at the first problem. Every function here
//! returns what it could load and pushes every problem, with its position, into a
//! [`Diagnostics`].

pub mod builder;
pub mod compile;
pub mod model;
pub mod nodes;
pub mod syntax;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::diag::{Diagnostics, Source};
use crate::engine::program::RuleSet;
use crate::engine::Device;
use crate::yaml::{self, from_node, Node};
use compile::{report_de, ChainDoc, CompileOptions};
use model::{DeviceSpec, DevicesFile, TestFile};

/// Largest rule, config, devices or test file read (rule files are small; this bounds memory).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// What a YAML file is, judged by its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `chain:` — a rule chain.
    Chain,
    /// `cases:` — a rule test.
    Test,
    /// `devices:` — a device registry.
    Devices,
    /// `topics:`/`channels:`/`rules:` — an engine config.
    Config,
}

/// Reads and parses a YAML file. A problem is reported and `None` returned.
pub fn read_yaml(path: &Path, diags: &mut Diagnostics) -> Option<(Source, Node)> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            diags.unreadable_error(path, format!("cannot read the file: {e}"));
            return None;
        }
    };
    if !meta.is_file() {
        // A FIFO or a device would block the reader (and with it a reload, and shutdown).
        diags.file_error(
            path,
            "not a regular file (a FIFO, socket or device?): rule, config and devices files must be regular files",
        );
        return None;
    }
    if meta.len() > MAX_FILE_BYTES {
        diags.file_error(
            path,
            format!(
                "the file is {} bytes; rule files may be at most {MAX_FILE_BYTES}",
                meta.len()
            ),
        );
        return None;
    }
    let bytes = match read_regular(path) {
        Ok(b) => b,
        Err(e) => {
            diags.unreadable_error(path, format!("cannot read the file: {e}"));
            return None;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            diags.file_error(
                path,
                format!(
                    "the file is not UTF-8 text (byte {})",
                    e.utf8_error().valid_up_to()
                ),
            );
            return None;
        }
    };
    parse_text(path, text, diags)
}

/// Reads a file that must be regular, never blocking: it is opened non-blocking and checked
/// again once open (it may have been swapped for a FIFO since it was looked at), and read up to
/// [`MAX_FILE_BYTES`].
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses YAML text as if read from `path`.
pub fn parse_text(path: &Path, text: String, diags: &mut Diagnostics) -> Option<(Source, Node)> {
    let src = Source::new(path, text);
    match yaml::parse(&src.text) {
        Ok(root) => Some((src, root)),
        Err((pos, msg)) => {
            diags.error(&src, pos, msg);
            None
        }
    }
}

/// Classifies a parsed file by its top-level keys.
pub fn classify(root: &Node) -> Option<FileKind> {
    if root.get("chain").is_some() {
        Some(FileKind::Chain)
    } else if root.get("cases").is_some() {
        Some(FileKind::Test)
    } else if root.get("devices").is_some()
        && root.get("topics").is_none()
        && root.get("channels").is_none()
    {
        Some(FileKind::Devices)
    } else if ["topics", "channels", "rules", "command_topic"]
        .iter()
        .any(|k| root.get(k).is_some())
    {
        Some(FileKind::Config)
    } else {
        None
    }
}

/// The YAML files under `paths` (files as given; directories searched recursively, skipping
/// hidden entries), sorted, without repeats.
pub fn yaml_files(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out, diags);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            diags.unreadable_error(p, "no such file or directory");
        }
    }
    out.sort();
    out.dedup();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, diags: &mut Diagnostics) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.unreadable_error(dir, format!("cannot read the directory: {e}"));
            return;
        }
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out, diags);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// True for `*.test.yaml` / `*.test.yml`.
pub fn is_test_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}

/// Loads and checks the engine config.
pub fn load_config(path: &Path, diags: &mut Diagnostics) -> Option<Config> {
    let (src, root) = read_yaml(path, diags)?;
    check_config(&src, &root, diags)
}

/// Checks a parsed config: `${ENV}` variables, structure, topic patterns, channel kinds and
/// templates.
pub fn check_config(src: &Source, root: &Node, diags: &mut Diagnostics) -> Option<Config> {
    let mut root = root.clone();
    let missing = crate::env::expand_tree(&mut root, &|name| std::env::var(name).ok());
    for (name, pos) in &missing {
        diags
            .error(
                src,
                *pos,
                format!("environment variable `{name}` is not set"),
            )
            .hint(format!("set it, or give a default: `${{{name}:-value}}`"));
    }
    // The rest is checked too (an unset variable hides nothing else); what a value holding an
    // unset variable would not read as is not reported again.
    let mut rest = Diagnostics::new();
    let cfg = check_expanded(src, &root, &mut rest);
    rest.forget_at(&missing.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    diags.extend(rest);
    cfg.filter(|_| missing.is_empty())
}

fn check_expanded(src: &Source, root: &Node, diags: &mut Diagnostics) -> Option<Config> {
    let before = diags.error_count();
    // The structure (every top-level problem at once), then each topic and each channel on its
    // own: every broken one is reported.
    let header =
        yaml::from_node_every::<Config>(&without_lists(root, &["topics", "channels"]), |e| {
            report_de(diags, src, e, root.pos)
        });
    let (topics, topics_ok) = items(src, root, "topics", diags);
    let mut channels_ok = true;
    let mut channels = std::collections::BTreeMap::new();
    if let Some(Node {
        value: yaml::Yaml::Map(entries),
        ..
    }) = root.get("channels")
    {
        for (k, v) in entries {
            match from_node::<yaml::Sp<crate::config::ChannelSpec>>(v) {
                Ok(c) => {
                    channels.insert(k.scalar_text(), c);
                }
                Err(e) => {
                    report_de(diags, src, e, v.pos);
                    channels_ok = false;
                }
            }
        }
    }
    let mut cfg = header?;
    if root
        .get("topics")
        .is_some_and(|t| matches!(t.value, yaml::Yaml::Seq(_)))
    {
        cfg.topics = Some(topics);
    }
    if !channels.is_empty() {
        cfg.channels = channels;
    }
    // Every value `run` reads is checked by the function that reads it for `run`.
    if let Err(problems) = crate::config::settings::resolve(None, Some(&cfg), None) {
        for p in problems {
            let d = diags.error(src, p.pos, p.text);
            if let Some(h) = p.hint {
                d.hint(h);
            }
        }
    }
    let engine = crate::script::new_engine();
    for ch in cfg.channels.values() {
        if let Some(j) = &ch.body_json {
            if let Err((at, e)) = crate::script::JsonTemplate::compile(&engine, &j.value) {
                diags
                    .error(src, j.pos, format!("in the template at `{at}`: {}", e.message))
                    .hint("each string of `body_json` is a template: `${` opens a Rhai expression that `}` closes");
            }
        }
        for t in [&ch.subject, &ch.body].into_iter().flatten() {
            if let Err(e) = crate::script::Template::compile(&engine, t) {
                let pos = yaml::pos_in_scalar(&src.text, t.pos, e.line, e.col);
                let d = diags.error(src, pos, format!("in template: {}", e.message));
                if let Some(h) = e.hint {
                    d.hint(h);
                }
            }
        }
    }
    (topics_ok && channels_ok && diags.error_count() == before).then_some(cfg)
}

/// Loads a devices file into the registry form the executor uses.
pub fn load_devices(path: &Path, diags: &mut Diagnostics) -> Option<HashMap<Arc<str>, Device>> {
    let (src, root) = read_yaml(path, diags)?;
    let header = from_node::<DevicesFile>(&without_lists(&root, &["devices"]));
    let (devices, ok) = items::<DeviceSpec>(&src, &root, "devices", diags);
    if let Err(e) = header {
        report_de(diags, &src, e, root.pos);
        return None;
    }
    let registry = devices_registry(&src, &devices, diags);
    if ok {
        registry
    } else {
        None
    }
}

/// Takes each device's signing key out of its attributes (`ingest.signature.key_attribute`),
/// into the signature settings: rules, the API, the dashboard and traces never see it. Returns
/// how many devices have a key.
pub fn take_signing_keys(
    settings: &mut crate::config::settings::Settings,
    devices: &mut std::collections::HashMap<std::sync::Arc<str>, crate::engine::Device>,
) -> usize {
    let (Some(attr), Some(sig)) = (&settings.signature_key_attribute, &mut settings.signature)
    else {
        return 0;
    };
    let mut keys = std::collections::HashMap::new();
    for (id, d) in devices.iter_mut() {
        let mut attrs = d.registry_attrs().clone();
        if let Some(k) = attrs.remove(attr.as_str()) {
            let text = k.to_string();
            if !text.is_empty() {
                keys.insert(id.clone(), std::sync::Arc::<[u8]>::from(text.as_bytes()));
            }
            *d = crate::engine::Device::new(d.type_.clone(), attrs);
        }
    }
    let n = keys.len();
    sig.keys = crate::signature::KeySource::PerDevice(std::sync::Arc::new(keys));
    n
}

/// Deserializes every item of the list `key` of `root` on its own, so that every broken item is
/// reported, not only the first. The flag is false when any item failed.
pub fn items<'a, T: serde::Deserialize<'a>>(
    src: &Source,
    root: &'a Node,
    key: &str,
    diags: &mut Diagnostics,
) -> (Vec<T>, bool) {
    match root.get(key) {
        None => (Vec::new(), true),
        Some(Node {
            value: yaml::Yaml::Null,
            ..
        }) => (Vec::new(), true),
        Some(Node {
            value: yaml::Yaml::Seq(list),
            ..
        }) => {
            let mut out = Vec::new();
            let mut ok = true;
            for item in list {
                match from_node::<T>(item) {
                    Ok(t) => out.push(t),
                    Err(e) => {
                        report_de(diags, src, e, item.pos);
                        ok = false;
                    }
                }
            }
            (out, ok)
        }
        Some(n) => {
            diags.error(
                src,
                n.pos,
                format!("`{key}` must be a list, found {}", n.type_name()),
            );
            (Vec::new(), false)
        }
    }
}

/// `root` with the lists and maps `keys` emptied: what is left to check of a file's structure
/// once their items are checked one by one.
fn without_lists(root: &Node, keys: &[&str]) -> Node {
    let mut n = root.clone();
    if let yaml::Yaml::Map(entries) = &mut n.value {
        for (k, v) in entries.iter_mut() {
            if k.as_str().is_some_and(|k| keys.contains(&k)) {
                match v.value {
                    yaml::Yaml::Seq(_) => v.value = yaml::Yaml::Seq(Vec::new()),
                    yaml::Yaml::Map(_) => v.value = yaml::Yaml::Map(Vec::new()),
                    _ => {}
                }
            }
        }
    }
    n
}

/// Turns device specs into the registry, reporting duplicates.
pub fn devices_registry(
    src: &Source,
    specs: &[DeviceSpec],
    diags: &mut Diagnostics,
) -> Option<HashMap<Arc<str>, Device>> {
    let mut map: HashMap<Arc<str>, Device> = HashMap::new();
    let mut ok = true;
    for d in specs {
        let attrs = match rhai::serde::to_dynamic(&d.attributes).map(|v| v.try_cast::<rhai::Map>())
        {
            Ok(Some(m)) => m,
            _ => {
                diags.error(src, d.id.pos, "attributes must be a map of values");
                ok = false;
                continue;
            }
        };
        let id: Arc<str> = d.id.value.as_str().into();
        if map.contains_key(&id) {
            diags.error(src, d.id.pos, format!("duplicate device `{id}`"));
            ok = false;
            continue;
        }
        map.insert(id, Device::new(d.type_.as_deref().map(Arc::from), attrs));
    }
    ok.then_some(map)
}

/// Loads a test file's model; every broken case or device is reported, and the file comes
/// back with the cases and devices that did load (so a caller can check those too: one broken
/// case hides nothing in the others). Check `diags` before running it.
pub fn load_test_file(path: &Path, diags: &mut Diagnostics) -> Option<(Source, TestFile)> {
    let (src, root) = read_yaml(path, diags)?;
    let header = from_node::<TestFile>(&without_lists(&root, &["devices", "cases"]));
    let (devices, _) = items::<DeviceSpec>(&src, &root, "devices", diags);
    let (cases, _) = items(&src, &root, "cases", diags);
    match header {
        Err(e) => {
            report_de(diags, &src, e, root.pos);
            None
        }
        Ok(h) => Some((
            src,
            TestFile {
                chains: h.chains,
                devices,
                cases,
            },
        )),
    }
}

/// Loads the chain files among `files` (test files skipped) and compiles them.
pub fn load_chains(files: &[PathBuf], config: Option<&Config>, diags: &mut Diagnostics) -> RuleSet {
    let mut docs = Vec::new();
    for f in files.iter().filter(|f| !is_test_file(f)) {
        let Some((src, root)) = read_yaml(f, diags) else {
            continue;
        };
        match classify(&root) {
            Some(FileKind::Chain) => docs.push(ChainDoc { src, root }),
            Some(_) => {}
            None => {
                diags
                    .error(
                        &src,
                        root.pos,
                        "not a chain file: no top-level `chain:` key",
                    )
                    .hint("a chain file starts with `chain: NAME` and `nodes:`");
            }
        }
    }
    compile::compile(&docs, &CompileOptions { config }, diags)
}
