//! The live engine's settings: the config file with every default filled in and every path made
//! absolute against the config file's directory. With no config file, this is the embedded
//! default: an in-process broker on 127.0.0.1:1883, `./rules`, HTTP on 127.0.0.1:8080, state
//! under `./.rulechain`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::duration;
use crate::topic::TopicPattern;

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

/// Everything `run` needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file, if any.
    pub config_path: Option<PathBuf>,
    /// The config (channels, command pattern, topics).
    pub config: Config,
    /// Whether a config file was given: only then are `notify` channel names checked (the
    /// embedded default has no channels; notifications to unknown ones are logged).
    pub config_given: bool,
    /// The rules directory.
    pub rules_dir: PathBuf,
    /// The devices file.
    pub devices: Option<PathBuf>,
    /// The broker.
    pub broker: Broker,
    /// Topic patterns.
    pub patterns: Vec<TopicPattern>,
    /// HTTP listen address (`None`: off).
    pub http: Option<SocketAddr>,
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
    pub state_limits: crate::engine::Limits,
    /// Payload limits (`ingest:`): the same decoder as `dry-run`'s.
    pub payload: crate::message::Limits,
    /// Dead-letter topic.
    pub dead_letter: Option<String>,
    /// Most HTTP connections at once (before the open-files limit is applied).
    pub http_max_connections: usize,
    /// Header-read and keep-alive idle timeout.
    pub http_header_timeout: Duration,
}

impl Settings {
    /// The directory paths in the config are relative to (the current one without a config).
    pub fn config_dir(&self) -> PathBuf {
        self.config_path
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

fn dur(s: &Option<crate::yaml::Sp<String>>, default_ms: i64) -> i64 {
    s.as_ref()
        .and_then(|s| duration::parse(&s.value).ok())
        .unwrap_or(default_ms)
}

impl Settings {
    /// Resolves a (checked) config. `rules` overrides the rules directory.
    pub fn resolve(
        config_path: Option<&Path>,
        config: Option<Config>,
        rules: Option<PathBuf>,
    ) -> Result<Settings, String> {
        let config_given = config.is_some();
        let config = config.unwrap_or_default();
        let rel = |p: &str| crate::config::config_relative(config_path, p);
        let rules_dir = crate::config::rules_dir(rules, config_path, Some(&config));
        let devices = config.devices.as_ref().map(|d| rel(d));
        let broker = match &config.mqtt {
            None => {
                let listen = config
                    .embedded_broker
                    .as_ref()
                    .and_then(|b| b.listen.as_ref())
                    .map_or("127.0.0.1:1883", |l| l.value.as_str());
                Broker::Embedded(
                    listen
                        .parse()
                        .map_err(|_| format!("`{listen}` is not an address"))?,
                )
            }
            Some(m) => {
                let m = &m.value;
                let url = m.url.value.as_str();
                let (host, port, tls) = crate::config::check::mqtt_url(url)?;
                let tls = match (&m.tls, tls) {
                    (Some(t), _) => Some(TlsFiles {
                        ca: rel(&t.ca.value),
                        client: t
                            .client_cert
                            .as_ref()
                            .zip(t.client_key.as_ref())
                            .map(|(c, k)| (rel(&c.value), rel(&k.value))),
                    }),
                    (None, true) => {
                        return Err(format!(
                            "`{url}` is TLS: give the broker's CA as `mqtt.tls.ca`"
                        ))
                    }
                    (None, false) => None,
                };
                Broker::External(MqttConn {
                    host,
                    port,
                    tls,
                    client_id: m.client_id.clone().unwrap_or_else(|| "rulechain".into()),
                    username: m.username.clone(),
                    password: m.password.clone(),
                    keep_alive: Duration::from_millis(dur(&m.keep_alive, 30_000).max(1000) as u64),
                    qos: m.qos.as_ref().map_or(1, |q| q.value.min(1)),
                    persistent_session: m.persistent_session.unwrap_or(true),
                    reconnect_max: Duration::from_millis(
                        dur(&m.reconnect_max, 5_000).max(100) as u64
                    ),
                })
            }
        };
        let http = match config.http.as_ref().and_then(|h| h.listen.as_ref()) {
            Some(l) if l.value == "off" => None,
            Some(l) => Some(
                l.value
                    .parse()
                    .map_err(|_| format!("`{}` is not an address", l.value))?,
            ),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        };
        let state_dir = config
            .state_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(".rulechain"), |d| rel(&d.value));
        let engine = config.engine.clone().unwrap_or_default();
        let ingest = config.ingest.clone().unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Settings {
            patterns: crate::config::patterns(Some(&config)),
            config_path: config_path.map(Path::to_path_buf),
            rules_dir,
            devices,
            broker,
            http,
            state_dir,
            shards: engine
                .shards
                .as_ref()
                .map_or(cpus, |n| n.value)
                .clamp(1, 256),
            queue: engine.queue.as_ref().map_or(4096, |n| n.value).max(1),
            checkpoint: Duration::from_millis(dur(&engine.checkpoint, 1000).max(10) as u64),
            shutdown_timeout: Duration::from_millis(
                dur(&engine.shutdown_timeout, 10_000).max(100) as u64
            ),
            state_limits: crate::engine::Limits::from_config(Some(&config)),
            payload: crate::config::payload_limits(Some(&config)),
            dead_letter: ingest.dead_letter.clone(),
            http_max_connections: config
                .http
                .as_ref()
                .and_then(|h| h.max_connections.as_ref())
                .map_or(1024, |n| n.value.max(1)),
            http_header_timeout: Duration::from_millis(
                dur(
                    &config.http.as_ref().and_then(|h| h.header_timeout.clone()),
                    10_000,
                )
                .max(100) as u64,
            ),
            config,
            config_given,
        })
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
            },
        }
    }
}
