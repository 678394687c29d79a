//! Rule files: the model, loading with positions, and compilation.
//!
//! Architecture invariant: loading never stops at the first problem. Every function here
//! returns what it could load and pushes every problem, with its position, into a
//! [`Diagnostics`].

pub mod builder;
pub mod compile;
pub mod model;
pub mod nodes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::diag::{Diagnostics, Source};
use crate::engine::Device;
use crate::topic::TopicPattern;
pub use crate::{duration, yaml};
use compile::{report_de, ChainDoc, CompileOptions, RuleSet};
use model::{DeviceSpec, DevicesFile, TestFile};
use yaml::{from_node, Node};

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
            diags.file_error(path, format!("cannot read the file: {e}"));
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
            diags.file_error(path, format!("cannot read the file: {e}"));
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
            diags.file_error(p, "no such file or directory");
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
            diags.file_error(dir, format!("cannot read the directory: {e}"));
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
    if !missing.is_empty() {
        return None;
    }
    // The structure, then each topic and each channel on its own: every broken one is reported.
    let header = from_node::<Config>(&without_lists(&root, &["topics", "channels"]));
    let (topics, topics_ok) = items(src, &root, "topics", diags);
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
    let mut cfg = match header {
        Ok(c) => c,
        Err(e) => {
            report_de(diags, src, e, root.pos);
            return None;
        }
    };
    if !(topics_ok && channels_ok) {
        return None;
    }
    if root
        .get("topics")
        .is_some_and(|t| matches!(t.value, yaml::Yaml::Seq(_)))
    {
        cfg.topics = Some(topics);
    }
    if !channels.is_empty() {
        cfg.channels = channels;
    }
    let before = diags.error_count();
    for t in cfg.topics.iter().flatten() {
        if let Err(e) = TopicPattern::parse(&t.pattern, t.kind) {
            diags.error(src, t.pattern.pos, format!("bad topic pattern: {e}"));
        }
    }
    check_live_settings(src, &cfg, diags);
    let engine = crate::script::new_engine();
    for (name, ch) in &cfg.channels {
        let n = usize::from(ch.email.is_some())
            + usize::from(ch.webhook.is_some())
            + usize::from(ch.log.is_some());
        if n != 1 {
            diags
                .error(
                    src,
                    ch.pos,
                    format!("channel `{name}` needs exactly one of `email`, `webhook`, `log`"),
                )
                .hint("e.g. `webhook: {url: https://example.com/hook}`");
        }
        for (pos, text, hint) in crate::config::check::check_channel(name, ch, &cfg.channels) {
            let d = diags.error(src, pos, text);
            if let Some(h) = hint {
                d.hint(h);
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
    (diags.error_count() == before).then_some(cfg)
}

/// Checks the settings only `run` uses: durations, addresses, the MQTT URL, numbers in range.
fn check_live_settings(src: &Source, cfg: &Config, diags: &mut Diagnostics) {
    let mut durations: Vec<&yaml::Sp<String>> = Vec::new();
    if let Some(m) = &cfg.mqtt {
        let url = &m.value.url;
        if let Err(e) = crate::config::check::mqtt_url(&url.value) {
            diags
                .error(src, url.pos, e)
                .hint("use `mqtt://host:1883`, or `mqtts://host:8883` for TLS");
        }
        durations.extend(&m.value.keep_alive);
        durations.extend(&m.value.reconnect_max);
        if let Some(q) = m.value.qos.as_ref().filter(|q| q.value > 1) {
            diags
                .error(src, q.pos, "the subscription qos is 0 or 1")
                .hint("rulechain acknowledges QoS 1 after the chains ran; QoS 2 adds nothing");
        }
        if let Some(t) = &m.value.tls {
            if t.client_cert.is_some() != t.client_key.is_some() {
                diags.error(src, t.ca.pos, "`client_cert` and `client_key` go together");
            }
        }
    }
    let addrs = [
        cfg.embedded_broker.as_ref().and_then(|b| b.listen.as_ref()),
        cfg.http
            .as_ref()
            .and_then(|h| h.listen.as_ref())
            .filter(|l| l.value != "off"),
    ];
    for a in addrs.into_iter().flatten() {
        if a.value.parse::<std::net::SocketAddr>().is_err() {
            diags
                .error(src, a.pos, format!("`{}` is not an address", a.value))
                .hint("give an IP and a port, e.g. `127.0.0.1:8080`");
        }
    }
    if let Some(i) = &cfg.ingest {
        durations.extend(&i.max_clock_skew);
    }
    if let Some(h) = &cfg.http {
        durations.extend(&h.header_timeout);
        if let Some(n) = h.max_connections.as_ref().filter(|n| n.value == 0) {
            diags.error(src, n.pos, "max_connections is at least 1");
        }
    }
    if let Some(e) = &cfg.engine {
        durations.extend(&e.checkpoint);
        durations.extend(&e.shutdown_timeout);
        durations.extend(&e.forget_after);
        for n in [&e.max_keys, &e.max_devices].into_iter().flatten() {
            if n.value == 0 {
                diags.error(src, n.pos, "the bound is at least 1");
            }
        }
        if let Some(n) = e.shards.as_ref().filter(|n| !(1..=256).contains(&n.value)) {
            diags.error(src, n.pos, "shards is between 1 and 256");
        }
        if let Some(n) = e
            .queue
            .as_ref()
            .filter(|n| !(1..=1 << 20).contains(&n.value))
        {
            diags.error(src, n.pos, "queue is between 1 and 1048576");
        }
    }
    if let Some(i) = &cfg.influx {
        let i = &i.value;
        if let Err(e) = crate::config::check::base_url(&i.url.value) {
            diags.error(src, i.url.pos, e);
        }
        if let Some(a) = i
            .api
            .as_ref()
            .filter(|a| a.value != "v1" && a.value != "v2")
        {
            diags
                .error(src, a.pos, format!("unknown InfluxDB api `{}`", a.value))
                .hint("`v2` (/api/v2/write: InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics) or `v1` (/write?db=)");
        }
        if let Some(p) = i
            .precision
            .as_ref()
            .filter(|p| !["ns", "us", "ms", "s"].contains(&p.value.as_str()))
        {
            diags.error(
                src,
                p.pos,
                format!("unknown precision `{}`: use ns, us, ms or s", p.value),
            );
        }
        if let Some(b) = i
            .batch_size
            .as_ref()
            .filter(|b| !(1..=1_000_000).contains(&b.value))
        {
            diags.error(src, b.pos, "batch_size is between 1 and 1000000");
        }
        if let (Some(b), Some(n)) = (&i.batch_size, &i.buffer_points) {
            if n.value < b.value {
                diags.error(
                    src,
                    n.pos,
                    "buffer_points must hold at least one batch (batch_size)",
                );
            }
        }
        durations.extend(&i.flush_interval);
        durations.extend(&i.timeout);
        durations.extend(&i.max_backoff);
    }
    if let Some(w) = &cfg.websocket {
        durations.extend(&w.ping_interval);
        if let Some(n) = w.max_clients.as_ref().filter(|n| n.value == 0) {
            diags.error(src, n.pos, "max_clients is at least 1");
        }
        if let Some(n) = w
            .client_queue
            .as_ref()
            .filter(|n| !(1..=1 << 20).contains(&n.value))
        {
            diags.error(src, n.pos, "client_queue is between 1 and 1048576");
        }
    }
    for d in durations {
        if let Err(e) = duration::parse(&d.value) {
            diags.error(src, d.pos, e);
        }
    }
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

/// Loads a test file's model; every broken case or device is reported.
pub fn load_test_file(path: &Path, diags: &mut Diagnostics) -> Option<(Source, TestFile)> {
    let (src, root) = read_yaml(path, diags)?;
    let header = from_node::<TestFile>(&without_lists(&root, &["devices", "cases"]));
    let (devices, devices_ok) = items::<DeviceSpec>(&src, &root, "devices", diags);
    let (cases, cases_ok) = items(&src, &root, "cases", diags);
    match header {
        Err(e) => {
            report_de(diags, &src, e, root.pos);
            None
        }
        Ok(h) if devices_ok && cases_ok => Some((
            src,
            TestFile {
                chains: h.chains,
                devices,
                cases,
            },
        )),
        Ok(_) => None,
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
