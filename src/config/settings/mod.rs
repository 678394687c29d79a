//! The config resolved into typed settings: every default filled in, every duration, URL,
//! address, mode and rate parsed, every path made absolute against the config file's directory.
//!
//! [`resolve`] is the one path from the config's text to the values the engine runs with.
//! `validate` (and every command that loads a config) calls it and reports each [`Problem`] with
//! its position; `run` calls it and hands the typed parts to the live engine and the sinks, which
//! never read config text themselves. So the config `validate` accepts is the config `run` starts
//! with, and the reverse.
//!
//! The YAML model ([`super::Config`]) keeps modes as positioned strings, and this module turns
//! them into enums, rather than deserializing enums directly: a serde error ends the
//! deserialization at the first bad value, while `validate` reports every bad value of a file at
//! once.
//!
//! With no config file this is the embedded default: an in-process broker on 127.0.0.1:1883,
//! `./rules`, HTTP on 127.0.0.1:8080, state under `./.rulechain`.

mod cluster;
mod influx;
mod notify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Config;
use crate::duration;
use crate::topic::TopicPattern;
use crate::yaml::{Pos, Sp};

pub use cluster::ClusterSettings;
pub use influx::{InfluxApi, InfluxAuth, InfluxSettings, Precision};
pub use notify::{
    ChannelSettings, Delivery, EmailSettings, PagerDutySettings, Policy, Secret, SlackSettings,
    TelegramSettings, WebhookSettings,
};

/// One thing wrong with a config value: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The value's position in the config file.
    pub pos: Pos,
    /// What is wrong.
    pub text: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pos.line > 0 {
            write!(f, "{}:{}: ", self.pos.line, self.pos.col)?;
        }
        f.write_str(&self.text)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// The problems found so far.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    /// Records a problem at `pos`.
    pub(crate) fn add(&mut self, pos: Pos, text: impl Into<String>) -> &mut Problem {
        self.0.push(Problem {
            pos,
            text: text.into(),
            hint: None,
        });
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    /// A duration (`30s`, `5m`) or its default, in milliseconds, at least `min_ms`; a bad one
    /// is recorded and gives the default.
    pub(crate) fn duration(
        &mut self,
        s: &Option<Sp<String>>,
        default_ms: i64,
        min_ms: i64,
    ) -> Duration {
        self.duration_of(s.as_ref(), default_ms, min_ms)
    }

    fn duration_of(&mut self, s: Option<&Sp<String>>, default_ms: i64, min_ms: i64) -> Duration {
        let ms = match s {
            Some(s) => duration::parse(&s.value).unwrap_or_else(|e| {
                self.add(s.pos, e);
                default_ms
            }),
            None => default_ms,
        };
        Duration::from_millis(ms.max(min_ms) as u64)
    }

    /// An optional duration.
    pub(crate) fn opt_duration(&mut self, s: &Option<Sp<String>>, min_ms: i64) -> Option<Duration> {
        s.as_ref()
            .map(|d| self.duration(&Some(d.clone()), 0, min_ms))
    }

    /// A number in `range`, or its default.
    pub(crate) fn in_range(
        &mut self,
        n: &Option<Sp<usize>>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
        text: &str,
    ) -> usize {
        match n {
            Some(n) if !range.contains(&n.value) => {
                self.add(n.pos, text);
                default
            }
            Some(n) => n.value,
            None => default,
        }
    }
}

impl Problem {
    /// Adds how to fix it.
    pub(crate) fn hint(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Where the broker is.
#[derive(Debug, Clone)]
pub enum Broker {
    /// An external broker.
    External(MqttConn),
    /// The in-process broker, listening here.
    Embedded(SocketAddr),
}

/// How to reach an MQTT broker.
#[derive(Clone)]
pub struct MqttConn {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS (mqtts://).
    pub tls: Option<TlsFiles>,
    /// Client id prefix.
    pub client_id: String,
    /// Credentials.
    pub username: Option<String>,
    /// Never printed.
    pub password: Option<String>,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Subscription QoS (0 or 1).
    pub qos: u8,
    /// Keep the session across reconnects.
    pub persistent_session: bool,
    /// The longest wait between reconnect attempts.
    pub reconnect_max: Duration,
    /// How long messages arriving densely are gathered before a shard gets them (0: never).
    pub batch_window: Duration,
}

impl std::fmt::Debug for MqttConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of every log line.
        f.debug_struct("MqttConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// TLS files (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificates.
    pub ca: PathBuf,
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Bounds on the rule core's state (`engine.max_keys`, `max_devices`, `forget_after`): the
/// whole engine's; each shard takes its share ([`StateLimits::per_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Most entries one node keeps (throttle keys, deadband values…).
    pub max_keys: usize,
    /// Most devices tracked.
    pub max_devices: usize,
    /// Idle state older than this is forgotten (ms).
    pub forget_after: i64,
    /// Most bytes of attributes, all devices together (see `engine::value_bytes`).
    pub max_attribute_bytes: usize,
}

/// Recent values kept in memory (`history:`), whole engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// How far back (ms).
    pub window_ms: i64,
    /// One point per this step (ms).
    pub resolution_ms: i64,
    /// Most devices with history (0: none).
    pub max_devices: usize,
    /// Most fields per device.
    pub max_fields: usize,
}

/// Default `engine.max_keys`.
pub const MAX_KEYS: usize = 100_000;
/// Default `engine.max_devices`.
pub const MAX_DEVICES: usize = 250_000;
/// Default `engine.forget_after`: 7 days.
pub const FORGET_AFTER: i64 = 7 * 24 * 3_600_000;
/// Default `engine.max_attribute_bytes`: 64 MiB.
pub const MAX_ATTRIBUTE_BYTES: usize = 64 << 20;

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_keys: MAX_KEYS,
            max_devices: MAX_DEVICES,
            forget_after: FORGET_AFTER,
            max_attribute_bytes: MAX_ATTRIBUTE_BYTES,
        }
    }
}

impl StateLimits {
    /// The share of one of `shards` executors (each bound divided, rounded up).
    pub fn per_shard(self, shards: usize) -> StateLimits {
        let shards = shards.max(1);
        StateLimits {
            max_keys: self.max_keys.div_ceil(shards).max(1),
            max_devices: self.max_devices.div_ceil(shards).max(1),
            forget_after: self.forget_after,
            max_attribute_bytes: self.max_attribute_bytes.div_ceil(shards).max(1),
        }
    }
}

/// The WebSocket hub's settings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Most clients at once.
    pub max_clients: usize,
    /// Frames queued per client.
    pub client_queue: usize,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Origins allowed besides the same host (`*`: any).
    pub allowed_origins: Vec<String>,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            max_clients: 20_000,
            client_queue: 1024,
            ping_interval: Duration::from_secs(30),
            allowed_origins: Vec::new(),
        }
    }
}

/// Everything the engine runs with.
#[derive(Clone)]
pub struct Settings {
    /// The config file, if any.
    pub config_path: Option<PathBuf>,
    /// The config, for the rule compiler (channel templates, the command topic).
    pub config: Config,
    /// Whether a config file was given: only then are `notify` channel names checked (the
    /// embedded default has no channels; notifications to unknown ones are logged).
    pub config_given: bool,
    /// The rules directory.
    pub rules_dir: PathBuf,
    /// A candidate rule set to run in shadow mode (`rules.shadow_dir`).
    pub shadow_dir: Option<PathBuf>,
    /// The devices file.
    pub devices: Option<PathBuf>,
    /// The broker.
    pub broker: Broker,
    /// Topic patterns.
    pub patterns: Vec<TopicPattern>,
    /// HTTP listen address (`None`: off).
    pub http: Option<SocketAddr>,
    /// The bearer token `/ws` and `/api/*` require (never logged).
    pub http_token: Option<Arc<str>>,
    /// Host names the API answers to besides IP addresses and `localhost` (without a token).
    pub http_allowed_hosts: Vec<String>,
    /// Most HTTP connections at once (before the open-files limit is applied).
    pub http_max_connections: usize,
    /// Header-read and keep-alive idle timeout.
    pub http_header_timeout: Duration,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Shard workers.
    pub shards: usize,
    /// Queue length per shard.
    pub queue: usize,
    /// Checkpoint interval.
    pub checkpoint: Duration,
    /// Shutdown deadline.
    pub shutdown_timeout: Duration,
    /// Bounds on state, whole engine (each shard takes its share).
    pub state_limits: StateLimits,
    /// A device with no message for this long is shown offline (ms).
    pub offline_after: i64,
    /// Recent values in memory.
    pub history: HistorySettings,
    /// Payload limits (`ingest:`): the same decoder as `dry-run`'s.
    pub payload: crate::message::PayloadLimits,
    /// Dead-letter topic.
    pub dead_letter: Option<String>,
    /// Signed messages (`ingest.signature`). With `key_attribute` the keys are filled in from
    /// the devices file when it is loaded (`rules::take_signing_keys`).
    pub signature: Option<crate::signature::SignatureSettings>,
    /// The devices' attribute that holds their keys (`ingest.signature.key_attribute`).
    pub signature_key_attribute: Option<String>,
    /// The InfluxDB writer, when `influx:` is configured.
    pub influx: Option<InfluxSettings>,
    /// The WebSocket hub.
    pub websocket: HubSettings,
    /// Notification channels, by name.
    pub channels: BTreeMap<String, ChannelSettings>,
    /// Inhibition rules (`inhibit:`).
    pub inhibit: Vec<crate::alarm::silence::Inhibition>,
    /// Several instances as one engine (`cluster:`), or one process.
    pub cluster: Option<ClusterSettings>,
}

impl std::fmt::Debug for Settings {
    /// The typed parts, each of which keeps its secrets out; not the config's text values
    /// (passwords and tokens are there as written).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("config_path", &self.config_path)
            .field("rules_dir", &self.rules_dir)
            .field("broker", &self.broker)
            .field("http", &self.http)
            .field("state_dir", &self.state_dir)
            .field("shards", &self.shards)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The directory paths in the config are relative to (the current one without a config).
    pub fn config_dir(&self) -> PathBuf {
        self.config_path
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// The MQTT connection: the configured broker's, or the embedded one's.
    pub fn mqtt(&self) -> MqttConn {
        match &self.broker {
            Broker::External(c) => c.clone(),
            Broker::Embedded(addr) => MqttConn {
                host: addr.ip().to_string(),
                port: addr.port(),
                tls: None,
                client_id: "rulechain".into(),
                username: None,
                password: None,
                keep_alive: Duration::from_secs(30),
                qos: 1,
                persistent_session: true,
                reconnect_max: Duration::from_secs(1),
                batch_window: DEFAULT_BATCH_WINDOW,
            },
        }
    }
}

/// `mqtt.batch_window`'s default: a shard wakes at most about once a millisecond for the
/// messages of one broker connection while they come densely (see `live::ingest`).
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(1);

/// The longest `mqtt.batch_window` accepted.
const MAX_BATCH_WINDOW: Duration = Duration::from_secs(1);

/// Resolves a config (`None`: the embedded default). `rules` overrides the rules directory.
/// Every problem is reported, each with its position.
pub fn resolve(
    config_path: Option<&Path>,
    config: Option<&Config>,
    rules: Option<PathBuf>,
) -> Result<Settings, Vec<Problem>> {
    let (settings, problems) = resolve_lossy(config_path, config, rules);
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(problems)
    }
}

/// Resolves a config as [`resolve`] does, and gives settings even when it has problems: each
/// bad value replaced by its default, a broken sink or channel left out. For `dry-run` and
/// `test`, which have reported the problems already (through `validate`'s checks) and need
/// only the engine's part.
pub fn resolve_lossy(
    config_path: Option<&Path>,
    config: Option<&Config>,
    rules: Option<PathBuf>,
) -> (Settings, Vec<Problem>) {
    let mut p = Problems::default();
    let config_given = config.is_some();
    let config = config.cloned().unwrap_or_default();
    let rel = |s: &str| super::config_relative(config_path, s);
    let rules_dir = super::rules_dir(rules, config_path, Some(&config));
    let mut patterns = Vec::new();
    for (pattern, kind) in config.topic_patterns_placed() {
        match TopicPattern::parse(&pattern.value, kind) {
            Ok(t) => patterns.push(t),
            Err(e) => {
                p.add(pattern.pos, format!("bad topic pattern: {e}"));
            }
        }
    }
    let broker = broker(&mut p, &config, &rel);
    let http = config.http.clone().unwrap_or_default();
    let http_token = match &http.token {
        None => None,
        Some(t) if t.value.trim().is_empty() => {
            p.add(
                t.pos,
                if t.value.is_empty() {
                    "`http.token` is empty, which would turn the token check off"
                } else {
                    "`http.token` is blank, which no client could send"
                },
            )
            .hint("set a token (e.g. `${RULECHAIN_TOKEN}`, an unset variable is an error), or leave `token` out for none");
            None
        }
        Some(t) if t.value.trim() != t.value => {
            p.add(t.pos, "`http.token` begins or ends with white space")
                .hint(
                    "a client's `Authorization: Bearer` header cannot carry it; remove the spaces",
                );
            None
        }
        Some(t) => Some(Arc::from(t.value.as_str())),
    };
    let http_addr = match &http.listen {
        Some(l) if l.value == "off" => None,
        Some(l) => address(&mut p, l),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
    };
    let http_max_connections = p.in_range(
        &http.max_connections,
        1024,
        1..=usize::MAX,
        "max_connections is at least 1",
    );
    let http_header_timeout = p.duration(&http.header_timeout, 10_000, 100);
    let engine = config.engine.clone().unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    // One core is left to the I/O runtime (the MQTT connections, HTTP, sinks) and, on a small
    // machine, to the broker: on 2 cores with Mosquitto (benches/compare, consecutive runs), one
    // shard drained a flood at ~22k msg/s where two drained ~18k.
    let shards = p.in_range(
        &engine.shards,
        cpus.saturating_sub(1).clamp(1, 256),
        1..=256,
        "shards is between 1 and 256",
    );
    let queue = p.in_range(
        &engine.queue,
        4096,
        1..=1 << 20,
        "queue is between 1 and 1048576",
    );
    let checkpoint = p.duration(&engine.checkpoint, 1000, 10);
    let shutdown_timeout = p.duration(&engine.shutdown_timeout, 10_000, 100);
    let d = StateLimits::default();
    let state_limits = StateLimits {
        max_keys: p.in_range(
            &engine.max_keys,
            d.max_keys,
            1..=usize::MAX,
            "the bound is at least 1",
        ),
        max_devices: p.in_range(
            &engine.max_devices,
            d.max_devices,
            1..=usize::MAX,
            "the bound is at least 1",
        ),
        forget_after: p
            .duration(&engine.forget_after, d.forget_after, 1_000)
            .as_millis() as i64,
        max_attribute_bytes: p.in_range(
            &engine.max_attribute_bytes,
            d.max_attribute_bytes,
            1..=usize::MAX,
            "the bound is at least 1",
        ),
    };
    let offline_after = p
        .duration(&engine.offline_after, 300_000, 1_000)
        .as_millis() as i64;
    let hs = config.history.clone().unwrap_or_default();
    let history = HistorySettings {
        window_ms: p.duration(&hs.window, 900_000, 1_000).as_millis() as i64,
        resolution_ms: p.duration(&hs.resolution, 5_000, 100).as_millis() as i64,
        max_devices: p.in_range(
            &hs.max_devices,
            1_000,
            0..=10_000_000,
            "max_devices is at most 10000000",
        ),
        max_fields: p.in_range(
            &hs.max_fields,
            8,
            1..=1_000,
            "max_fields is between 1 and 1000",
        ),
    };
    let ingest = config.ingest.clone().unwrap_or_default();
    let dl = crate::message::PayloadLimits::default();
    let payload = crate::message::PayloadLimits {
        max_payload_bytes: ingest.max_payload_bytes.unwrap_or(dl.max_payload_bytes),
        max_depth: ingest.max_depth.unwrap_or(dl.max_depth).max(1),
        max_clock_skew_ms: p
            .duration(&ingest.max_clock_skew, dl.max_clock_skew_ms, 0)
            .as_millis() as i64,
    };
    let (signature, signature_key_attribute) = match &ingest.signature {
        Some(sig) => signature(&mut p, sig),
        None => (None, None),
    };
    let state_dir = config
        .state_dir
        .as_ref()
        .map_or_else(|| PathBuf::from(".rulechain"), |d| rel(&d.value));
    let influx = config
        .influx
        .as_ref()
        .map(|spec| influx::resolve(&mut p, spec, &state_dir, shutdown_timeout));
    let websocket = websocket(&mut p, &config);
    let base_url = http.base_url.as_ref().and_then(|b| {
        let u = crate::config::check::webhook_url(b.value.trim_end_matches('/'));
        if u.is_none() {
            p.add(b.pos, format!("bad `base_url` `{}`", b.value))
                .hint("the dashboard's public address, e.g. `https://rulechain.example.com`");
        }
        u
    });
    let mut channels = BTreeMap::new();
    for (name, spec) in &config.channels {
        if let Some(c) = notify::resolve(
            &mut p,
            name,
            spec,
            &config.channels,
            &rel,
            base_url.as_ref(),
        ) {
            channels.insert(name.clone(), c);
        }
    }
    let inhibit = config
        .inhibit
        .iter()
        .filter_map(|r| inhibition(&mut p, r))
        .collect();
    let devices = config.devices.as_ref().map(|d| rel(d));
    let cluster = config
        .cluster
        .as_ref()
        .and_then(|c| cluster::resolve(&mut p, c, broker.as_ref(), http_addr, &rel));
    let settings = Settings {
        config_path: config_path.map(Path::to_path_buf),
        config_given,
        rules_dir,
        shadow_dir: config
            .rules
            .as_ref()
            .and_then(|r| r.shadow_dir.as_ref())
            .map(|d| rel(d)),
        devices,
        broker: broker.unwrap_or(Broker::Embedded(SocketAddr::from(([127, 0, 0, 1], 1883)))),
        patterns,
        http: http_addr,
        http_token,
        http_allowed_hosts: http.allowed_hosts.clone().unwrap_or_default(),
        http_max_connections,
        http_header_timeout,
        state_dir,
        shards,
        queue,
        checkpoint,
        shutdown_timeout,
        state_limits,
        offline_after,
        history,
        payload,
        dead_letter: ingest.dead_letter.clone(),
        signature,
        signature_key_attribute,
        influx: influx.flatten(),
        websocket,
        channels,
        inhibit,
        cluster,
        config,
    };
    (settings, p.0)
}

/// An `IP:port` listen address.
fn address(p: &mut Problems, l: &Sp<String>) -> Option<SocketAddr> {
    match l.value.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(l.pos, format!("`{}` is not an address", l.value))
                .hint("give an IP and a port, e.g. `127.0.0.1:8080`");
            None
        }
    }
}

fn broker(p: &mut Problems, config: &Config, rel: &dyn Fn(&str) -> PathBuf) -> Option<Broker> {
    let Some(m) = &config.mqtt else {
        let listen = config
            .embedded_broker
            .as_ref()
            .and_then(|b| b.listen.as_ref());
        return match listen {
            Some(l) => address(p, l).map(Broker::Embedded),
            None => Some(Broker::Embedded(SocketAddr::from(([127, 0, 0, 1], 1883)))),
        };
    };
    let m = &m.value;
    let keep_alive = p.duration(&m.keep_alive, 30_000, 1000);
    let reconnect_max = p.duration(&m.reconnect_max, 5_000, 100);
    let batch_window = match &m.batch_window {
        Some(w) => {
            let d = p.duration(&Some(w.clone()), 1, 0);
            if d > MAX_BATCH_WINDOW {
                p.add(
                    w.pos,
                    format!("`mqtt.batch_window: {}` is longer than 1s", w.value),
                )
                .hint("it gathers dense traffic for a few milliseconds (default 1ms; 0s turns it off)");
            }
            d.min(MAX_BATCH_WINDOW)
        }
        None => DEFAULT_BATCH_WINDOW,
    };
    if let Some(q) = m.qos.as_ref().filter(|q| q.value > 1) {
        p.add(q.pos, "the subscription qos is 0 or 1")
            .hint("rulechain acknowledges QoS 1 after the chains ran; QoS 2 adds nothing");
    }
    if let Some(t) = &m.tls {
        if t.client_cert.is_some() != t.client_key.is_some() {
            p.add(t.ca.pos, "`client_cert` and `client_key` go together");
        }
    }
    let url = &m.url;
    let (host, port, is_tls) = match super::check::mqtt_url(&url.value) {
        Ok(v) => v,
        Err(e) => {
            p.add(url.pos, e)
                .hint("use `mqtt://host:1883`, or `mqtts://host:8883` for TLS");
            return None;
        }
    };
    let tls = match (&m.tls, is_tls) {
        (Some(t), _) => Some(TlsFiles {
            ca: rel(&t.ca.value),
            client: t
                .client_cert
                .as_ref()
                .zip(t.client_key.as_ref())
                .map(|(c, k)| (rel(&c.value), rel(&k.value))),
        }),
        (None, true) => {
            p.add(
                url.pos,
                format!("`{}` is TLS: give the broker's CA", url.value),
            )
            .hint("add `tls: {ca: ca.pem}` under `mqtt:`");
            None
        }
        (None, false) => None,
    };
    Some(Broker::External(MqttConn {
        host,
        port,
        tls,
        client_id: m.client_id.clone().unwrap_or_else(|| "rulechain".into()),
        username: m.username.clone(),
        password: m.password.clone(),
        keep_alive,
        qos: m.qos.as_ref().map_or(1, |q| q.value.min(1)),
        persistent_session: m.persistent_session.unwrap_or(true),
        reconnect_max,
        batch_window,
    }))
}

fn websocket(p: &mut Problems, config: &Config) -> HubSettings {
    let d = HubSettings::default();
    let Some(s) = &config.websocket else { return d };
    HubSettings {
        max_clients: p.in_range(
            &s.max_clients,
            d.max_clients,
            1..=usize::MAX,
            "max_clients is at least 1",
        ),
        client_queue: p.in_range(
            &s.client_queue,
            d.client_queue,
            1..=1 << 20,
            "client_queue is between 1 and 1048576",
        ),
        ping_interval: p.duration(&s.ping_interval, 30_000, 100),
        allowed_origins: s.allowed_origins.clone().unwrap_or_default(),
    }
}

/// One inhibition rule, checked.
fn inhibition(
    p: &mut Problems,
    r: &Sp<crate::config::InhibitSpec>,
) -> Option<crate::alarm::silence::Inhibition> {
    use crate::alarm::silence::Matchers;
    let before = p.0.len();
    let source = Matchers(r.source.clone());
    let target = Matchers(r.target.clone());
    for (what, m) in [("source", &source), ("target", &target)] {
        if let Err(e) = m.check() {
            p.add(r.pos, format!("inhibit rule `{what}`: {e}")).hint(
                "e.g. `{source: {type: DeviceOffline}, target: {type: \"*\"}, equal: [device]}`",
            );
        }
    }
    let equal = r.equal.clone().unwrap_or_else(|| vec!["device".into()]);
    for f in &equal {
        let ok = matches!(f.as_str(), "device" | "device_type")
            || f.strip_prefix("attr.").is_some_and(|n| !n.is_empty());
        if !ok {
            p.add(r.pos, format!("inhibit rule: cannot compare `{f}`"))
                .hint("`equal` lists `device`, `device_type` or `attr.NAME` (a devices-file attribute, e.g. `attr.site`)");
        }
    }
    (p.0.len() == before).then_some(crate::alarm::silence::Inhibition {
        source,
        target,
        equal,
    })
}

/// `ingest.signature`, checked: one key source, a key that is not blank.
fn signature(
    p: &mut Problems,
    sig: &crate::config::SignatureSpec,
) -> (Option<crate::signature::SignatureSettings>, Option<String>) {
    use crate::signature::{KeySource, SignatureSettings};
    let field = sig
        .field
        .as_ref()
        .map_or_else(|| "sig".to_string(), |f| f.value.clone());
    if let Some(f) = sig.field.as_ref().filter(|f| f.value.trim().is_empty()) {
        p.add(f.pos, "`field` is empty").hint =
            Some("the payload field holding the signature, e.g. `sig`".into());
    }
    let max_skew_ms = p.duration(&sig.max_skew, 30_000, 1_000).as_millis() as i64;
    let commands = sig.commands.unwrap_or(false);
    let keys = match (&sig.key_attribute, &sig.key) {
        (Some(a), None) if !a.value.trim().is_empty() => {
            let settings = SignatureSettings {
                field,
                keys: KeySource::PerDevice(Default::default()),
                max_skew_ms,
                commands,
            };
            return (Some(settings), Some(a.value.clone()));
        }
        (Some(a), None) => {
            p.add(a.pos, "`key_attribute` is empty").hint =
                Some("the devices' attribute holding their keys, e.g. `signing_key`".into());
            return (None, None);
        }
        (None, Some(k)) if !k.value.trim().is_empty() => KeySource::One(k.value.as_bytes().into()),
        (None, Some(k)) => {
            p.add(k.pos, "the signing key is empty")
                .hint = Some("`key: ${SIGNING_KEY}` with the variable set, or `key_attribute:` for a key per device".into());
            return (None, None);
        }
        (Some(a), Some(_)) => {
            p.add(a.pos, "`key_attribute` and `key` both given").hint =
                Some("one key per device (`key_attribute`) or one for all (`key`)".into());
            return (None, None);
        }
        (None, None) => {
            p.add(Pos::default(), "`ingest.signature` needs `key_attribute` or `key`")
                .hint = Some("`key_attribute: signing_key` (each device's, from the devices file) or `key: ${SIGNING_KEY}`".into());
            return (None, None);
        }
    };
    (
        Some(SignatureSettings {
            field,
            keys,
            max_skew_ms,
            commands,
        }),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let root = crate::yaml::parse(text).unwrap();
        crate::yaml::from_node(&root).unwrap()
    }

    #[test]
    fn the_embedded_default_resolves() {
        let s = resolve(None, None, None).unwrap();
        assert!(matches!(s.broker, Broker::Embedded(a) if a.port() == 1883));
        assert_eq!(s.http, Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(s.patterns.len(), 2);
        assert!(s.influx.is_none() && s.channels.is_empty());
    }

    #[test]
    fn every_bad_value_is_reported_with_its_position() {
        let c = config(
            "mqtt:\n  url: mqtts://broker\n  keep_alive: soon\nhttp:\n  listen: nowhere\nengine:\n  shards: 0\n",
        );
        let problems = resolve(None, Some(&c), None).unwrap_err();
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "3:15: bad duration `soon`",
            "2:8: `mqtts://broker` is TLS: give the broker's CA",
            "5:11: `nowhere` is not an address",
            "7:11: shards is between 1 and 256",
        ] {
            assert!(
                texts.iter().any(|t| t.starts_with(want)),
                "{want} not in {texts:#?}"
            );
        }
    }

    #[test]
    fn a_tls_broker_with_its_ca_resolves_relative_to_the_config() {
        let c = config("mqtt:\n  url: mqtts://broker\n  tls: {ca: certs/ca.pem}\n");
        let s = resolve(Some(Path::new("/etc/rc/rulechain.yaml")), Some(&c), None).unwrap();
        let Broker::External(m) = s.broker else {
            panic!("external broker expected")
        };
        assert_eq!((m.host.as_str(), m.port), ("broker", 8883));
        assert_eq!(m.tls.unwrap().ca, PathBuf::from("/etc/rc/certs/ca.pem"));
    }

    #[test]
    fn a_cluster_is_checked_whole_and_its_secrets_never_printed() {
        let c = config(
            "cluster:\n  redis: http://r:6379\n  ca: ca.pem\n  instance: rc 1\n  partitions: 0\n  lease: 100ms\n",
        );
        let problems = resolve(None, Some(&c), None).unwrap_err();
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "2:3: a cluster needs an external MQTT broker",
            "2:10: `cluster.redis` is not a Redis URL",
            "3:7: `cluster.ca` is for TLS",
            "4:13: `rc 1` is not an instance name",
            "5:15: partitions is between 1 and 4096",
            "6:10: the lease is at least 500ms",
        ] {
            assert!(
                texts.iter().any(|t| t.starts_with(want)),
                "{want} not in {texts:#?}"
            );
        }
        let c = config(
            "mqtt: {url: mqtt://b:1883}\ncluster:\n  redis: redis://:hunter2@r:6379\n  password: s3cret\n",
        );
        let s = resolve(None, Some(&c), None).unwrap();
        let cl = s.cluster.as_ref().unwrap();
        assert_eq!((cl.partitions, cl.lease.as_millis()), (64, 5000));
        // The others reach this instance's API where it listens (by default 127.0.0.1:8080).
        assert_eq!(cl.advertise.as_deref(), Some("127.0.0.1:8080"));
        let c2 = config(
            "mqtt: {url: mqtt://b:1883}\nhttp: {listen: 0.0.0.0:9000, token: t}\ncluster: {redis: redis://r:6379}\n",
        );
        let s2 = resolve(None, Some(&c2), None).unwrap();
        let a = s2.cluster.unwrap().advertise.unwrap();
        assert!(a.ends_with(":9000") && !a.starts_with("0.0.0.0"), "{a}");
        let c2 = config(
            "mqtt: {url: mqtt://b:1883}\ncluster: {redis: redis://r:6379, advertise: nowhere}\n",
        );
        let problems = resolve(None, Some(&c2), None).unwrap_err();
        assert!(
            problems[0]
                .text
                .contains("`nowhere` is not a host and a port"),
            "{problems:?}"
        );
        assert!(!cl.instance.is_empty() && cl.prefix == "rulechain");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn chat_channels_say_what_is_missing_and_never_show_their_secrets() {
        let c = config(
            "channels:\n  both:\n    slack: {token: xoxb-1, channel: '#a', webhook: 'https://hooks.slack.com/x'}\n  half:\n    slack: {token: xoxb-2}\n  blank:\n    pagerduty: {routing_key: ' '}\n  api:\n    telegram: {token: '1:x', chat_id: -100, api_url: 'ftp://t'}\n  chat:\n    telegram: {token: '1:x', chat_id: [1]}\n  hookapi:\n    slack: {webhook: 'https://hooks.slack.com/x', api_url: 'http://x'}\n  two:\n    teams: {url: 'https://t/x'}\n    log: {}\n",
        );
        let problems = resolve(None, Some(&c), None).unwrap_err();
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "channel `both`: `slack` takes a bot's `token` and `channel`, or an incoming `webhook`",
            "channel `half`: `slack` takes",
            "channel `blank`: `routing_key` is empty",
            "channel `api`: bad `api_url` `ftp://t`",
            "channel `chat`: `chat_id` is a chat's id",
            "channel `hookapi`: `api_url` is for a bot",
            "channel `two` needs exactly one of",
        ] {
            assert!(
                texts.iter().any(|t| t.contains(want)),
                "{want} not in {texts:#?}"
            );
        }
        let ok = config(
            "http: {base_url: 'https://rc.example.com/'}\nchannels:\n  s:\n    slack: {token: xoxb-SECRET, channel: '#a'}\n  t:\n    telegram: {token: '1:SECRET', chat_id: '@ops', api_url: 'http://127.0.0.1:9/'}\n  p:\n    pagerduty: {routing_key: SECRETKEY}\n  m:\n    teams: {url: 'https://x.example.com/workflows/SECRET'}\n",
        );
        let s = resolve(None, Some(&ok), None).unwrap();
        assert_eq!(
            s.channels["s"].base_url.as_ref().map(|u| u.as_str()),
            Some("https://rc.example.com/")
        );
        match &s.channels["t"].delivery {
            Delivery::Telegram(t) => assert_eq!(t.api.as_str(), "http://127.0.0.1:9/"),
            d => panic!("{d:?}"),
        }
        let shown = format!("{:?}", s.channels);
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn escalation_steps_go_forward_to_channels_that_exist() {
        let c = config(
            "channels:\n  a:\n    log: {}\n    escalate:\n      - {after: 10m, to: [b]}\n      - {after: 5m, to: [nope]}\n      - {after: soon, to: [a]}\n      - {after: 1h, to: []}\n  b:\n    log: {}\n",
        );
        let problems = resolve(None, Some(&c), None).unwrap_err();
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "each escalation step comes after the one before it",
            "escalation to unknown channel `nope`",
            "escalation `after` `soon` is not a duration",
            "channel `a` cannot escalate to itself",
            "an escalation step names no channel",
        ] {
            assert!(
                texts.iter().any(|t| t.contains(want)),
                "{want} not in {texts:#?}"
            );
        }
        let ok = config("channels:\n  a:\n    log: {}\n    escalate: [{after: 15m, to: [b]}, {after: 1h, to: [b]}]\n  b:\n    log: {}\n");
        let s = resolve(None, Some(&ok), None).unwrap();
        assert_eq!(
            s.channels["a"].policy.escalate,
            vec![
                (Duration::from_secs(900), vec!["b".to_string()]),
                (Duration::from_secs(3600), vec!["b".to_string()])
            ]
        );
    }

    #[test]
    fn body_json_is_a_webhooks_map_and_never_beside_body() {
        let c = config(
            "channels:\n  a:\n    webhook: {url: 'http://h/x'}\n    body: b\n    body_json: {text: t}\n  m:\n    email: {smtp: 'smtp://m:25', from: a@b.c, to: [d@e.f]}\n    body_json: {text: t}\n  l:\n    webhook: {url: 'http://h/y'}\n    body_json: [1]\n",
        );
        let problems = resolve(None, Some(&c), None).unwrap_err();
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "channel `a` has both `body` and `body_json`",
            "channel `m`: `body_json` is a webhook's body",
            "channel `l`: `body_json` is a map",
        ] {
            assert!(
                texts.iter().any(|t| t.contains(want)),
                "{want} not in {texts:#?}"
            );
        }
    }
}
