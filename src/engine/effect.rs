//! What the core emits: [`Effect`]s, one per thing that happens (an alarm transition, an RPC
//! command, an InfluxDB point…), in the order they happen. The live engine routes them to real
//! sinks; `dry-run` and `test` record them. The JSON form is the `dry-run` output contract.

use std::sync::Arc;

use rhai::Dynamic;
use serde::Serialize;

/// One thing that happened, at a clock time, in a chain's node.
#[derive(Debug, Clone, Serialize)]
pub struct Effect {
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// The clock time (ms since the epoch): a message's processing time, or a timer's due time.
    pub ts: i64,
    /// The chain.
    pub chain: Arc<str>,
    /// The node id.
    pub node: Arc<str>,
}

/// The kinds of effects (`"event"` in JSON).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// An alarm transition.
    Alarm {
        /// The device.
        device: Arc<str>,
        /// The alarm type.
        #[serde(rename = "type")]
        type_: String,
        /// The severity after the transition.
        severity: crate::alarm::Severity,
        /// `created`, `severity_changed`, `acknowledged` or `cleared`.
        transition: crate::alarm::Transition,
        /// The status after the transition (ACTIVE_UNACK, …).
        status: crate::alarm::Status,
        /// The alarm text.
        message: String,
        /// The alarm id.
        id: String,
        /// The whole alarm after the transition (for the live sinks; not in dry-run output).
        #[serde(skip)]
        record: Box<crate::alarm::Alarm>,
    },
    /// A notification to a channel.
    Notify {
        /// The channel name.
        channel: String,
        /// The device.
        device: Arc<str>,
        /// The rendered subject.
        subject: String,
        /// The rendered body.
        body: String,
        /// The message (an alarm message holds the alarm under `alarm`), for the live
        /// channels' payloads (not in dry-run output).
        #[serde(skip)]
        data: Dynamic,
    },
    /// An RPC command to a device.
    Rpc {
        /// The device.
        device: Arc<str>,
        /// The command topic.
        topic: String,
        /// The request id (matches the reply).
        id: String,
        /// The method.
        method: String,
        /// The parameters.
        params: Dynamic,
        /// MQTT QoS.
        qos: u8,
    },
    /// A point for InfluxDB, as one line of line protocol.
    Influx {
        /// The device.
        device: Arc<str>,
        /// The line.
        line: String,
        /// Its timestamp (ns), the line's last field (for the writer; not in dry-run output).
        #[serde(skip)]
        ts_ns: i64,
    },
    /// A push to WebSocket clients.
    Websocket {
        /// The device.
        device: Arc<str>,
        /// The room.
        room: String,
        /// The message.
        data: Dynamic,
    },
    /// A republish to MQTT.
    Publish {
        /// The device.
        device: Arc<str>,
        /// The topic.
        topic: String,
        /// The message.
        payload: Dynamic,
        /// MQTT QoS.
        qos: u8,
        /// Retained.
        retain: bool,
    },
    /// A log event from a `log` node.
    Log {
        /// The device.
        device: Arc<str>,
        /// The level.
        level: LogLevel,
        /// The rendered text.
        message: String,
    },
    /// A node failed on a message.
    Error {
        /// The device.
        device: Arc<str>,
        /// What went wrong.
        error: String,
    },
    /// A message was dropped for a reason worth reporting (delay cancel/overflow, a non-finite
    /// influx field, an unreadable input line).
    Dropped {
        /// The device.
        device: Arc<str>,
        /// Why.
        reason: DropReason,
        /// More about it (the field, the parse error).
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// `--trace`: a message reached a node.
    Node {
        /// The device.
        device: Arc<str>,
        /// What the node decided.
        result: Outcome,
        /// The message as it entered the node, when the sink asked for it (a live trace).
        #[serde(skip_serializing_if = "Option::is_none")]
        msg: Option<Dynamic>,
    },
}

impl Event {
    /// An alarm transition: the one way both the `alarm` node and an operator's action (an
    /// acknowledgement, a clear by hand) make it, from the alarm as it is after the transition.
    pub fn alarm(
        device: Arc<str>,
        alarm: crate::alarm::Alarm,
        transition: crate::alarm::Transition,
    ) -> Event {
        Event::Alarm {
            device,
            type_: alarm.type_.clone(),
            severity: alarm.severity,
            transition,
            status: alarm.status,
            message: alarm.message.clone(),
            id: alarm.id.clone(),
            record: Box::new(alarm),
        }
    }
}

impl Event {
    /// The `"event"` name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Alarm { .. } => "alarm",
            Event::Notify { .. } => "notify",
            Event::Rpc { .. } => "rpc",
            Event::Influx { .. } => "influx",
            Event::Websocket { .. } => "websocket",
            Event::Publish { .. } => "publish",
            Event::Log { .. } => "log",
            Event::Error { .. } => "error",
            Event::Dropped { .. } => "dropped",
            Event::Node { .. } => "node",
        }
    }
}

/// Where effects go.
pub trait EffectSink {
    /// Takes one effect.
    fn emit(&mut self, effect: Effect);
    /// Whether `node` trace events are wanted (they cost a little per node).
    fn wants_trace(&self) -> bool {
        false
    }
    /// Whether `node` trace events should carry the message as it entered the node (a copy
    /// per node: only for the few messages a live trace samples).
    fn wants_trace_messages(&self) -> bool {
        false
    }
}

/// A sink that keeps everything, in order (`dry-run`, `test`, unit tests).
#[derive(Debug, Default)]
pub struct Recorder {
    /// What was emitted.
    pub effects: Vec<Effect>,
    /// Whether to record trace events.
    pub trace: bool,
}

impl EffectSink for Recorder {
    fn emit(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
    fn wants_trace(&self) -> bool {
        self.trace
    }
}

/// Counts of effects by kind: the `summary` line of `dry-run`.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Input messages accepted.
    pub messages: u64,
    /// Alarm events (all transitions).
    pub alarms: u64,
    /// RPC commands.
    pub rpcs: u64,
    /// InfluxDB points.
    pub influx_points: u64,
    /// WebSocket pushes.
    pub websocket: u64,
    /// Notifications.
    pub notifications: u64,
    /// Publishes.
    pub publishes: u64,
    /// Node errors.
    pub errors: u64,
    /// Dropped messages (reported ones).
    pub dropped: u64,
}

impl Summary {
    /// Counts one effect.
    pub fn count(&mut self, e: &Event) {
        match e {
            Event::Alarm { .. } => self.alarms += 1,
            Event::Rpc { .. } => self.rpcs += 1,
            Event::Influx { .. } => self.influx_points += 1,
            Event::Websocket { .. } => self.websocket += 1,
            Event::Notify { .. } => self.notifications += 1,
            Event::Publish { .. } => self.publishes += 1,
            Event::Error { .. } => self.errors += 1,
            Event::Dropped { .. } => self.dropped += 1,
            Event::Log { .. } | Event::Node { .. } => {}
        }
    }
}

/// Log levels.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Deserialize,
    schemars::JsonSchema,
    Default,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors.
    Error,
    /// Warnings.
    Warn,
    /// Information (default).
    #[default]
    Info,
    /// Debugging.
    Debug,
    /// Tracing.
    Trace,
}

/// What a node decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Passed on (or routed by a switch).
    Pass,
    /// A false filter went to its `else`.
    Else,
    /// Ended here: a false filter without `else`, a switch without a match, a `cancel_when`.
    Stop,
    /// Kept for later (hold, debounce, delay, an awaited reply).
    Held,
    /// Left out by design (throttle, deadband, cooldowns, an alarm with nothing to change).
    Suppressed,
    /// The node failed.
    Error,
}

impl Outcome {
    /// Every outcome, in the order of [`super::stats::NodeCounts::outcomes`].
    pub const ALL: [Outcome; 6] = [
        Outcome::Pass,
        Outcome::Else,
        Outcome::Stop,
        Outcome::Held,
        Outcome::Suppressed,
        Outcome::Error,
    ];

    /// The word of `dry-run --trace` and of the metrics' `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Else => "else",
            Outcome::Stop => "stop",
            Outcome::Held => "held",
            Outcome::Suppressed => "suppressed",
            Outcome::Error => "error",
        }
    }
}

/// Why a message was dropped, where that is worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropReason {
    /// A delay's `cancel_when` dropped the key's pending messages.
    Cancelled,
    /// A delay's `max_pending` was reached: its oldest message went.
    Overflow,
    /// An InfluxDB field was not a finite number.
    NonFinite,
    /// An input line of a replay could not be read.
    BadInput,
    /// A message came after every window it belongs to had closed (`allowed_lateness`).
    Late,
}

impl DropReason {
    /// Its word in the `dropped` event.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Cancelled => "cancelled",
            DropReason::Overflow => "overflow",
            DropReason::NonFinite => "non-finite",
            DropReason::BadInput => "bad-input",
            DropReason::Late => "late",
        }
    }
}
