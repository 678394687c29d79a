//! The engine config (`rulechain.yaml`). With no config file, every command uses
//! [`Config::default`], the embedded default: topics `device/{device}/{kind}` and
//! `site/{site}/device/{device}/{kind}`, rules in `./rules`, no notification channels checked.

pub mod check;
pub mod settings;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::message::Kind;
use crate::yaml::Sp;

/// The engine config file.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rulechain engine config")]
pub struct Config {
    /// The directory of the rule chains (default `./rules`), relative to the config file; or
    /// `{dir, shadow_dir}` to also run a candidate rule set in shadow mode.
    #[serde(default, deserialize_with = "rules_spec")]
    pub rules: Option<RulesSpec>,
    /// The devices file (optional), relative to the config file.
    #[serde(default)]
    pub devices: Option<Sp<String>>,
    /// How MQTT topics map to messages. Default: `device/{device}/{kind}` and
    /// `site/{site}/device/{device}/{kind}`.
    #[serde(default)]
    pub topics: Option<Vec<TopicSpec>>,
    /// The command topic pattern for RPC (`site/{site}/device/{device}/command`). Default: the
    /// source topic with its last level replaced by `command`.
    #[serde(default)]
    pub command_topic: Option<Sp<String>>,
    /// Notification channels, by name, for `notify` nodes.
    #[serde(default)]
    pub channels: BTreeMap<String, Sp<ChannelSpec>>,
    /// Inhibition rules: while an active alarm matching a rule's `source` is open, the
    /// notifications of alarms matching its `target` on the same device (or site…) are held.
    #[serde(default)]
    pub inhibit: Vec<Sp<InhibitSpec>>,
    /// The MQTT broker to connect to. Without it, `rulechain run` starts its embedded broker.
    #[serde(default)]
    pub mqtt: Option<Sp<MqttSpec>>,
    /// The embedded broker (used when `mqtt` is not given).
    #[serde(default)]
    pub embedded_broker: Option<EmbeddedBrokerSpec>,
    /// How incoming messages are checked.
    #[serde(default)]
    pub ingest: Option<IngestSpec>,
    /// The HTTP server (API, health).
    #[serde(default)]
    pub http: Option<HttpSpec>,
    /// Where state is kept (alarms, attributes, holds, windows): default `./.rulechain`,
    /// relative to the config file.
    #[serde(default)]
    pub state_dir: Option<Sp<String>>,
    /// The engine: shards, queues, checkpoints.
    #[serde(default)]
    pub engine: Option<EngineSpec>,
    /// Where `influx` nodes write. Without it, their points are counted and not stored.
    #[serde(default)]
    pub influx: Option<Sp<InfluxSpec>>,
    /// The WebSocket hub (`/ws` on the HTTP listener).
    #[serde(default)]
    pub websocket: Option<WebsocketSpec>,
    /// Recent values in memory, for the API and the dashboard.
    #[serde(default)]
    pub history: Option<HistorySpec>,
    /// Several instances as one engine on Redis (see docs/cluster.md). Without it the engine
    /// is one process with its state in the state dir.
    #[serde(default)]
    pub cluster: Option<Sp<ClusterSpec>>,
}

/// Several rulechain instances as one engine: devices spread over the instances by partition,
/// messages through Redis Streams, state in Redis, a dead instance's work taken over after
/// `lease`. Needs an external broker (`mqtt:`).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The cluster's Redis: `redis://HOST:6379`, `rediss://HOST:6380` for TLS, a password as
    /// `redis://:PASSWORD@HOST:6379` (use `${ENV_VAR}`).
    pub redis: Sp<String>,
    /// The Redis password, given apart from the URL (wins over one in it; use `${ENV_VAR}`).
    #[serde(default)]
    pub password: Option<String>,
    /// A CA certificate (PEM) to trust for `rediss://` instead of the system's roots, relative
    /// to the config file.
    #[serde(default)]
    pub ca: Option<Sp<String>>,
    /// This instance's name, unique in the cluster (default: the host name and process id).
    #[serde(default)]
    pub instance: Option<Sp<String>>,
    /// Partitions: devices map to partitions by a stable hash, and partitions to instances
    /// (default 64). Fixed for the cluster's life: stored in Redis by the first instance, and
    /// an instance configured otherwise refuses to start.
    #[serde(default)]
    pub partitions: Option<Sp<usize>>,
    /// How long a dead instance's partitions and ingest wait before another takes them
    /// (default `5s`). Leases are renewed every third of it.
    #[serde(default)]
    pub lease: Option<Sp<String>>,
    /// The prefix of every Redis key of this cluster (default `rulechain`): two clusters can
    /// share a Redis under two prefixes.
    #[serde(default)]
    pub prefix: Option<Sp<String>>,
    /// Messages each partition's stream keeps at least (default 100000).
    #[serde(default)]
    pub stream_keep: Option<Sp<usize>>,
    /// Where the other instances reach this one's HTTP API (`host:port`), to hand it requests
    /// about its devices (default: `http.listen`; when that listens on every address, this
    /// machine's host name and its port).
    #[serde(default)]
    pub advertise: Option<Sp<String>>,
    /// How long a small batch of messages waits for more before it goes to Redis, once, at the
    /// ingest and at the owners' reader (default `1ms`; `0s`: never). Fewer Redis requests per
    /// message under a light load, for up to twice this in latency.
    #[serde(default)]
    pub linger: Option<Sp<String>>,
}

/// An InfluxDB-compatible server: InfluxDB 2.x/3.x and 1.8+ (`/api/v2/write`), older 1.x
/// (`api: v1`, `/write?db=`), VictoriaMetrics (either).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct InfluxSpec {
    /// The server, e.g. `http://127.0.0.1:8086`.
    pub url: Sp<String>,
    /// `v2` (default: `/api/v2/write` with token, org, bucket) or `v1` (`/write?db=`).
    #[serde(default)]
    pub api: Option<Sp<String>>,
    /// The API token (v2: `Authorization: Token ...`; use `${ENV_VAR}`).
    #[serde(default)]
    pub token: Option<String>,
    /// The organization (v2).
    #[serde(default)]
    pub org: Option<String>,
    /// The bucket (v2).
    #[serde(default)]
    pub bucket: Option<String>,
    /// The database (v1).
    #[serde(default)]
    pub database: Option<String>,
    /// User name (v1, basic auth).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (v1, basic auth; use `${ENV_VAR}`).
    #[serde(default)]
    pub password: Option<String>,
    /// Timestamp precision sent: `ns` (default), `us`, `ms` or `s`.
    #[serde(default)]
    pub precision: Option<Sp<String>>,
    /// Points per request (default 5000).
    #[serde(default)]
    pub batch_size: Option<Sp<usize>>,
    /// A partial batch is sent after this long (default `1s`).
    #[serde(default)]
    pub flush_interval: Option<Sp<String>>,
    /// Points held in memory while the server is slow or away (default 200000); beyond it the
    /// oldest are spooled to disk (`spool`) or dropped and counted.
    #[serde(default)]
    pub buffer_points: Option<Sp<usize>>,
    /// Spill batches that do not fit the buffer to `{state_dir}/influx-spool` and send them
    /// when the server is back (default false). Also keeps what a shutdown could not send.
    #[serde(default)]
    pub spool: Option<bool>,
    /// The spool's size limit in MiB (default 1024); beyond it the oldest batch is dropped.
    #[serde(default)]
    pub spool_max_mb: Option<Sp<u64>>,
    /// Request timeout (default `10s`).
    #[serde(default)]
    pub timeout: Option<Sp<String>>,
    /// Compress request bodies with gzip (default true).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// The longest wait between retries (default `30s`).
    #[serde(default)]
    pub max_backoff: Option<Sp<String>>,
}

/// The WebSocket hub.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct WebsocketSpec {
    /// Most clients at once (default 20000); one more is refused with close code 1013.
    #[serde(default)]
    pub max_clients: Option<Sp<usize>>,
    /// Messages queued per client (default 1024); a slow client loses the oldest and is told
    /// how many with `{"op":"lagged"}`.
    #[serde(default)]
    pub client_queue: Option<Sp<usize>>,
    /// How often the server pings (default `30s`); a client that misses two pongs is dropped.
    #[serde(default)]
    pub ping_interval: Option<Sp<String>>,
    /// Web pages (origins, e.g. `https://dashboard.example.com`) allowed to open `/ws` besides
    /// pages served from the same host; `"*"` allows any. Clients that send no `Origin`
    /// (non-browser) are not affected.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
}

/// The MQTT connection. rulechain opens two: `{client_id}-in` subscribes, `{client_id}-out`
/// publishes commands and republished messages, so a full pipeline never blocks the client
/// that reads.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct MqttSpec {
    /// `mqtt://host:1883`, or `mqtts://host:8883` for TLS.
    pub url: Sp<String>,
    /// The client id prefix (default `rulechain`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (use `${ENV_VAR}`).
    #[serde(default)]
    pub password: Option<String>,
    /// TLS files (PEM). With `mqtts://` and no `ca`, the system roots are not used: give the
    /// broker's CA.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Keep-alive interval (default `30s`).
    #[serde(default)]
    pub keep_alive: Option<Sp<String>>,
    /// The longest wait between reconnect attempts (default `5s`): after a broker outage the
    /// engine is back within this long of the broker.
    #[serde(default)]
    pub reconnect_max: Option<Sp<String>>,
    /// QoS of the subscriptions (0 or 1; default 1).
    #[serde(default)]
    pub qos: Option<Sp<u8>>,
    /// Keep the session on the broker across reconnects and restarts (default true), so QoS 1
    /// messages published while rulechain was down are delivered when it returns.
    #[serde(default)]
    pub persistent_session: Option<bool>,
    /// While messages arrive densely, how long they are gathered before their chains run
    /// (default `1ms`; `0s` runs every read from the broker at once: the lowest latency, and
    /// at tens of thousands of messages a second the most CPU). A message after a quiet spell
    /// runs at once either way.
    #[serde(default)]
    pub batch_window: Option<Sp<String>>,
}

/// TLS files for MQTT.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// The CA certificate(s) that signed the broker's certificate.
    pub ca: Sp<String>,
    /// A client certificate, for brokers that require one.
    #[serde(default)]
    pub client_cert: Option<Sp<String>>,
    /// The client certificate's private key.
    #[serde(default)]
    pub client_key: Option<Sp<String>>,
}

/// The embedded broker.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerSpec {
    /// The address it listens on (default `127.0.0.1:1883`).
    #[serde(default)]
    pub listen: Option<Sp<String>>,
}

/// Checks on incoming messages; a message that fails one is counted by reason, logged
/// (rate-limited) and, with `dead_letter`, republished there. It never stops the engine.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// Largest payload accepted, in bytes (default 65536).
    #[serde(default)]
    pub max_payload_bytes: Option<usize>,
    /// Deepest JSON nesting accepted (default 32).
    #[serde(default)]
    pub max_depth: Option<usize>,
    /// A payload `ts` further than this from the receive time is replaced by the receive time
    /// (default `10m`).
    #[serde(default)]
    pub max_clock_skew: Option<Sp<String>>,
    /// A topic to republish rejected messages to, as `{topic, reason, payload}` JSON.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Signed messages: every payload carries an HMAC-SHA256 of itself, checked before anything
    /// else; a missing or bad signature, a stale time or a replay is rejected as
    /// `bad_signature`.
    #[serde(default)]
    pub signature: Option<SignatureSpec>,
}

/// `ingest.signature`: how devices sign their payloads (docs/live.md, "Signed messages").
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {
    /// The payload field holding the signature: lowercase hex HMAC-SHA256 of the payload
    /// without it, as RFC 8785 canonical JSON (default `sig`).
    #[serde(default)]
    pub field: Option<Sp<String>>,
    /// Each device's key is this attribute of it in the devices file (`signing_key`). The
    /// attribute is taken out: rules, the API, the dashboard and traces never see it.
    #[serde(default)]
    pub key_attribute: Option<Sp<String>>,
    /// One key for every device instead: use `${ENV_VAR}`.
    #[serde(default)]
    pub key: Option<Sp<String>>,
    /// How far the payload's `ts` (ms) may be from the engine's clock (default `30s`); a
    /// signature is taken once within it (the replay guard).
    #[serde(default)]
    pub max_skew: Option<Sp<String>>,
    /// Sign RPC commands the same way (with `ts`), for devices to verify (default false).
    #[serde(default)]
    pub commands: Option<bool>,
}

/// The HTTP server.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// The address it listens on (default `127.0.0.1:8080`); `off` for none.
    #[serde(default)]
    pub listen: Option<Sp<String>>,
    /// A bearer token required by `/ws` and `/api/*` (`Authorization: Bearer ...` or
    /// `?token=`); `/healthz` stays open. Use `${ENV_VAR}`. An empty or blank token is an
    /// error (it would turn the check off, or lock everyone out): leave the key out for none.
    #[serde(default)]
    pub token: Option<Sp<String>>,
    /// Host names the API and `/ws` answer to besides IP addresses and `localhost`
    /// (`rulechain.example.com`), when no token is set: a request naming another host is
    /// refused, so a web page cannot reach the API by rebinding its own name to 127.0.0.1.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// Most HTTP connections open at once, besides WebSocket clients (default 1024, and never
    /// more than the process's open-files limit leaves after the WebSocket clients). Past it a
    /// new connection gets 503 at once and is closed.
    #[serde(default)]
    pub max_connections: Option<Sp<usize>>,
    /// How long a connection may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open (default `10s`).
    #[serde(default)]
    pub header_timeout: Option<Sp<String>>,
    /// The dashboard's public address (`https://rulechain.example.com`), for the links that
    /// chat and incident channels put in their messages. Without it they carry no link.
    #[serde(default)]
    pub base_url: Option<Sp<String>>,
}

/// The engine's shape.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Shard workers (default: one less than the number of CPUs, at least 1: the other core
    /// runs the MQTT connections and the broker). Fixed for a state dir once written.
    #[serde(default)]
    pub shards: Option<Sp<usize>>,
    /// Messages queued per shard before ingest waits (default 4096).
    #[serde(default)]
    pub queue: Option<Sp<usize>>,
    /// How often state is written to disk (default `1s`). Alarm transitions are written at
    /// once, whatever this says.
    #[serde(default)]
    pub checkpoint: Option<Sp<String>>,
    /// How long a shutdown may take before it gives up on draining (default `10s`).
    #[serde(default)]
    pub shutdown_timeout: Option<Sp<String>>,
    /// Most per-key entries one node keeps (default 100000): past it, the least recently used
    /// are forgotten. Split evenly across shards.
    #[serde(default)]
    pub max_keys: Option<Sp<usize>>,
    /// Most devices tracked (default 250000): past it, the least recently seen devices with
    /// nothing of their own are forgotten. Split evenly across shards.
    #[serde(default)]
    pub max_devices: Option<Sp<usize>>,
    /// Most bytes of attributes kept for all devices together, reported and set through the
    /// API (default 64 MiB; a device keeps at most 64 KiB of each): past it, new attribute
    /// values are refused and counted (`attributes_dropped`). Split evenly across shards.
    #[serde(default)]
    pub max_attribute_bytes: Option<Sp<usize>>,
    /// Per-key state and devices idle this long are forgotten (default `7d`).
    #[serde(default)]
    pub forget_after: Option<Sp<String>>,
    /// The API and the dashboard show a device offline when no message of it came for this
    /// long (default `5m`).
    #[serde(default)]
    pub offline_after: Option<Sp<String>>,
}

/// Recent values kept in memory for the API and the dashboard's charts: per device and numeric
/// telemetry field, one point per `resolution` over the last `window`. The most points held is
/// `max_devices × max_fields × window / resolution` (the default: 1000 × 8 × 180).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HistorySpec {
    /// How far back values are kept (default `15m`).
    #[serde(default)]
    pub window: Option<Sp<String>>,
    /// One point per this step, the latest value of the step (default `5s`).
    #[serde(default)]
    pub resolution: Option<Sp<String>>,
    /// Most devices with history (default 1000; 0 keeps none): past it, the least recently
    /// updated are evicted, and counted. Split evenly across shards.
    #[serde(default)]
    pub max_devices: Option<Sp<usize>>,
    /// Most fields per device (default 8): the values of fields past it are not kept, and
    /// counted.
    #[serde(default)]
    pub max_fields: Option<Sp<usize>>,
}

/// One topic pattern: literal levels and `{name}` captures. `{device}` is required; `{kind}`
/// takes the message kind from the topic; other captures land in `meta`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The pattern, e.g. `site/{site}/device/{device}/telemetry`.
    pub pattern: Sp<String>,
    /// The kind of matching messages, when the pattern has no `{kind}` capture.
    #[serde(default)]
    pub kind: Option<Kind>,
}

/// A notification channel: exactly one of `email`, `webhook`, `log`, and optional templates.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Send by email (SMTP).
    #[serde(default)]
    pub email: Option<EmailSpec>,
    /// POST JSON to a URL.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// Write to the log.
    #[serde(default)]
    pub log: Option<serde_json::Value>,
    /// Post to Slack: with a bot `token` and `channel`, one message per alarm, edited on each
    /// transition with a thread reply; with an incoming `webhook`, one message per transition.
    #[serde(default)]
    pub slack: Option<SlackSpec>,
    /// Post an Adaptive Card to a Microsoft Teams Workflows webhook.
    #[serde(default)]
    pub teams: Option<TeamsSpec>,
    /// Send PagerDuty Events API v2 events: an alarm is one incident (`dedup_key` = the alarm's
    /// id), triggered, acknowledged and resolved with it.
    #[serde(default)]
    pub pagerduty: Option<PagerDutySpec>,
    /// Send through a Telegram bot: one message per alarm, edited on each transition.
    #[serde(default)]
    pub telegram: Option<TelegramSpec>,
    /// Subject template (`${}` holes over `msg`, `attr`, `meta`; an alarm is `msg.alarm`).
    #[serde(default)]
    pub subject: Option<Sp<String>>,
    /// Body template. For a webhook, the request body instead of the default JSON.
    #[serde(default)]
    pub body: Option<Sp<String>>,
    /// A webhook's body as JSON whose strings are templates (`{text: "${msg.alarm.message}"}`):
    /// each string is rendered and the JSON built from the results, so no value can make it
    /// invalid (a quote or a newline in a device name is escaped). Instead of `body`.
    #[serde(default)]
    pub body_json: Option<Sp<serde_json::Value>>,
    /// Retries of a failed delivery, with capped exponential backoff (default 5).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Time allowed for one delivery attempt (default `10s`).
    #[serde(default)]
    pub timeout: Option<Sp<String>>,
    /// Another channel that gets the notification when this one has failed `fallback_after`
    /// times on it.
    #[serde(default)]
    pub fallback: Option<Sp<String>>,
    /// Failed attempts before the fallback is used (default 3).
    #[serde(default)]
    pub fallback_after: Option<Sp<u32>>,
    /// At most this many notifications per period, e.g. `10/1m`; more are dropped and counted.
    #[serde(default)]
    pub rate_limit: Option<Sp<String>>,
    /// While an alarm stays active and unacknowledged, send it again this often (e.g. `4h`).
    #[serde(default)]
    pub repeat_interval: Option<Sp<String>>,
    /// Escalation: while an alarm this channel notified stays active and unacknowledged, each
    /// step hands it to more channels after its delay (`[{after: 15m, to: [oncall]}, {after:
    /// 1h, to: [plant-manager]}]`); an acknowledgement or a clear stops it.
    #[serde(default)]
    pub escalate: Vec<Sp<EscalationSpec>>,
    /// Notifications queued for this channel before new ones are dropped (default 1000).
    #[serde(default)]
    pub queue: Option<Sp<usize>>,
}

/// One step of an escalation.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EscalationSpec {
    /// How long after the alarm's notification on this channel (`15m`).
    pub after: Sp<String>,
    /// The channels that get it then.
    pub to: Vec<String>,
}

/// SMTP delivery.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// The SMTP server, e.g. `smtp://mail.example.com:587` (`smtps://` for TLS from the first
    /// byte, port 465).
    pub smtp: Sp<String>,
    /// `starttls` (default for `smtp://`), `tls` (default for `smtps://`) or `none` (plain
    /// text: only for a relay on the same host).
    #[serde(default)]
    pub tls: Option<Sp<String>>,
    /// A CA certificate (PEM) to trust besides the system's, for a server with a private or
    /// self-signed certificate; relative to the config file.
    #[serde(default)]
    pub ca: Option<Sp<String>>,
    /// The sender address.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// SMTP user name.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP password (use `${ENV_VAR}`).
    #[serde(default)]
    pub password: Option<String>,
}

/// HTTP webhook delivery.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The URL to POST to.
    pub url: Sp<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Shared secret: each request carries `X-Rulechain-Signature: sha256=<hex>`, the
    /// HMAC-SHA256 of the body under this secret. Use `${ENV_VAR}`.
    #[serde(default)]
    pub secret: Option<String>,
    /// The signature header's name (default `X-Rulechain-Signature`).
    #[serde(default)]
    pub signature_header: Option<String>,
}

/// An inhibition rule: `{source: {type: DeviceOffline}, target: {type: "*"}, equal: [device]}`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct InhibitSpec {
    /// The inhibiting alarm: matchers on `device`, `device_type`, `type`, `chain`, `severity`
    /// (each an exact name or a glob such as `pump-*`).
    pub source: BTreeMap<String, String>,
    /// The alarms whose notifications it holds, matched the same way.
    pub target: BTreeMap<String, String>,
    /// What the two must share (default `[device]`): `device`, `device_type`, or `attr.NAME`,
    /// an attribute from the devices file (`attr.site`).
    #[serde(default)]
    pub equal: Option<Vec<String>>,
}

/// Slack: a bot (`token` and `channel`) or an incoming webhook (`webhook`).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SlackSpec {
    /// A bot token (`xoxb-…`, with the `chat:write` scope; use `${ENV_VAR}`).
    #[serde(default)]
    pub token: Option<Sp<String>>,
    /// The channel the bot posts to (`#maintenance` or a channel id), for `token`.
    #[serde(default)]
    pub channel: Option<Sp<String>>,
    /// An incoming webhook's URL (`https://hooks.slack.com/services/…`; use `${ENV_VAR}`).
    #[serde(default)]
    pub webhook: Option<Sp<String>>,
    /// The Web API's address (default `https://slack.com/api`), for a proxy or a test server;
    /// `/chat.postMessage` and `/chat.update` are appended.
    #[serde(default)]
    pub api_url: Option<Sp<String>>,
}

/// Microsoft Teams: a Workflows webhook ("Post to a channel when a webhook request is
/// received").
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TeamsSpec {
    /// The workflow's URL (use `${ENV_VAR}`: it holds its signature).
    pub url: Sp<String>,
}

/// PagerDuty Events API v2.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PagerDutySpec {
    /// The service's integration (routing) key (use `${ENV_VAR}`).
    pub routing_key: Sp<String>,
    /// The Events API's address (default `https://events.pagerduty.com`); `/v2/enqueue` is
    /// appended.
    #[serde(default)]
    pub api_url: Option<Sp<String>>,
}

/// Telegram Bot API.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TelegramSpec {
    /// The bot's token from @BotFather (use `${ENV_VAR}`).
    pub token: Sp<String>,
    /// The chat: a group's or channel's id (`-100…`, a number or a string) or a channel's
    /// `@name`.
    pub chat_id: Sp<serde_json::Value>,
    /// The Bot API's address (default `https://api.telegram.org`); `/bot<token>/sendMessage`
    /// and `/bot<token>/editMessageText` are appended.
    #[serde(default)]
    pub api_url: Option<Sp<String>>,
}

impl Config {
    /// The topic patterns in force: the configured ones, or the embedded default's.
    pub fn topic_patterns(&self) -> Vec<(String, Option<Kind>)> {
        self.topic_patterns_placed()
            .into_iter()
            .map(|(p, k)| (p.value, k))
            .collect()
    }

    /// The topic patterns in force, with their positions (the default's are unplaced).
    pub fn topic_patterns_placed(&self) -> Vec<(Sp<String>, Option<Kind>)> {
        match &self.topics {
            Some(t) => t.iter().map(|t| (t.pattern.clone(), t.kind)).collect(),
            None => vec![
                (Sp::unplaced("device/{device}/{kind}".into()), None),
                (
                    Sp::unplaced("site/{site}/device/{device}/{kind}".into()),
                    None,
                ),
            ],
        }
    }
}

/// A path from the config, relative to the config file's directory.
pub fn config_relative(config_path: Option<&Path>, p: &str) -> PathBuf {
    let p = Path::new(p);
    match config_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// `rules:`: the directory of the rule chains, or a map with it and a shadow's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSpec {
    /// The directory of the rule chains (default `./rules`), relative to the config file.
    #[serde(default)]
    pub dir: Option<Sp<String>>,
    /// A directory of candidate chains that `run` runs in shadow mode on the same messages,
    /// its effects counted and never sent (see docs/diff.md), relative to the config file.
    #[serde(default)]
    pub shadow_dir: Option<Sp<String>>,
}

impl RulesSpec {
    /// Reads `rules: DIR` as well as `rules: {dir, shadow_dir}`.
    fn deserialize_either<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RulesSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the rules directory, or a map with `dir` and `shadow_dir`")
            }
            fn visit_str<E>(self, s: &str) -> Result<RulesSpec, E> {
                Ok(RulesSpec {
                    dir: Some(Sp::unplaced(s.to_string())),
                    shadow_dir: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<RulesSpec, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct M {
                    #[serde(default)]
                    dir: Option<Sp<String>>,
                    #[serde(default)]
                    shadow_dir: Option<Sp<String>>,
                }
                let m = M::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
                Ok(RulesSpec {
                    dir: m.dir,
                    shadow_dir: m.shadow_dir,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes `rules:` (see [`RulesSpec`]).
fn rules_spec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RulesSpec>, D::Error> {
    RulesSpec::deserialize_either(d).map(Some)
}

impl JsonSchema for RulesSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RulesSpec".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The directory of the rule chains (default `./rules`), relative to the config file; or `{dir, shadow_dir}`.",
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "dir": { "type": "string", "description": "The directory of the rule chains (default `./rules`), relative to the config file." },
                        "shadow_dir": { "type": "string", "description": "A directory of candidate chains that `run` runs in shadow mode on the same messages, its effects counted and never sent, relative to the config file." }
                    }
                }
            ]
        })
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
            .and_then(|r| r.dir.as_ref())
            .map(|r| config_relative(config_path, r))
    })
    .unwrap_or_else(|| PathBuf::from("rules"))
}
