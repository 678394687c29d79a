//! The files users write, as Rust types. These types are the single source of truth: the loader
//! deserializes them, `schemas/*.json` are derived from them (their doc comments become the
//! schema descriptions editors show), and the compiler turns them into runnable chains.
//!
//! A node is one flat map (`filter:` next to `for:` and `else:`), as users write it; its kind is
//! the one kind key it holds, found by [`NodeSpec::kinds`].

use crate::message::Kind;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::program::NodeKind;
use crate::rules::nodes::aggregate::AggregateSpec;
use crate::rules::nodes::alarm::AlarmSpec;
use crate::rules::nodes::deadband::DeadbandSpec;
use crate::rules::nodes::debounce::Emit;
use crate::rules::nodes::influx::InfluxSpec;
use crate::rules::nodes::log::LogSpec;
use crate::rules::nodes::publish::PublishSpec;
use crate::rules::nodes::rpc::RpcSpec;
use crate::rules::nodes::websocket::WebsocketSpec;
use crate::rules::syntax::{ExprSrc, IdList};
use crate::yaml::{Sp, SpMap};

/// A rule chain file (`rules/*.yaml`): one chain.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rulechain chain file")]
pub struct ChainFile {
    /// The chain's unique name; also the metrics label and the `chain` of every event it emits.
    pub chain: Sp<String>,
    /// What the chain is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Which messages enter the chain. Every key is optional and all given keys must match.
    #[serde(default)]
    pub on: Option<OnSpec>,
    /// The nodes. A message enters at the first and flows down the list, or along `next:`.
    #[schemars(with = "Vec<NodeSpec>")]
    pub nodes: serde::de::IgnoredAny,
}

/// Which messages enter a chain.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct OnSpec {
    /// Message kind: `telemetry` (default), `attributes`, `status` or `rpc_response`.
    #[serde(default)]
    pub kind: Option<Sp<Kind>>,
    /// The device type (from the devices file), or a list of types.
    #[serde(default)]
    pub device_type: Option<IdList>,
    /// An MQTT topic filter (`+`, `#`) the message's source topic must match.
    #[serde(default)]
    pub topic: Option<Sp<String>>,
    /// A Rhai precondition; the message enters only when it is true.
    #[serde(default)]
    pub when: Option<Sp<ExprSrc>>,
}

/// One node of a chain. It holds exactly one kind key (`filter`, `transform`, `alarm`, …) and
/// the keys that go with it.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's id: unique in the chain, the target of `next`/`else`/`on_error`, and the key of
    /// its state across hot reloads. Default: `<kind>-<position>` (1-based).
    #[serde(default)]
    pub id: Option<Sp<String>>,
    /// What the node is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Where the output goes instead of the next node in the list: an id, a list of ids
    /// (fan-out, in order), or `[]` to end here.
    #[serde(default)]
    pub next: Option<Sp<IdList>>,
    /// Where a message goes when this node fails (a Rhai error, say), with `meta.error` set.
    #[serde(default)]
    pub on_error: Option<Sp<String>>,
    /// Per-key state is kept per value of this expression. Default: `meta.device`.
    #[serde(default)]
    pub key: Option<Sp<ExprSrc>>,

    /// filter: passes the message when the expression is true.
    #[serde(default)]
    pub filter: Option<Sp<ExprSrc>>,
    /// filter: the condition must stay true this long per key before anything passes (`30s`).
    #[serde(default, rename = "for")]
    pub hold: Option<Sp<String>>,
    /// filter: the node id a false message goes to (default: nowhere).
    #[serde(default, rename = "else")]
    pub else_: Option<Sp<String>>,

    /// transform: fields to set, `name: EXPR`, evaluated in order; a `()` value removes the field.
    #[serde(default)]
    pub transform: Option<Sp<SpMap<Sp<ExprSrc>>>>,
    /// transform: a Rhai script returning a map of fields to set (instead of, or after, `transform`).
    #[serde(default)]
    pub script: Option<Sp<String>>,
    /// transform: fields to remove.
    #[serde(default)]
    pub drop: Option<Vec<Sp<String>>>,

    /// switch: routes by the value of this expression.
    #[serde(default)]
    pub switch: Option<Sp<ExprSrc>>,
    /// switch: `value: node-id`; values are compared as text.
    #[serde(default)]
    pub cases: Option<Sp<SpMap<Sp<String>>>>,
    /// switch: the node id for a value with no case (default: nowhere).
    #[serde(default)]
    pub default: Option<Sp<String>>,

    /// debounce: the quiet time per key (`5s`).
    #[serde(default)]
    pub debounce: Option<Sp<String>>,
    /// debounce: `last` (default) or `first`.
    #[serde(default)]
    pub emit: Option<Sp<Emit>>,

    /// delay: how long each message is held before it passes.
    #[serde(default)]
    pub delay: Option<Sp<String>>,
    /// delay: at most this many pending messages per key; the oldest is dropped beyond it (default 1000).
    #[serde(default)]
    pub max_pending: Option<Sp<u32>>,
    /// delay: a message for which this is true drops the key's pending messages and is consumed.
    #[serde(default)]
    pub cancel_when: Option<Sp<ExprSrc>>,

    /// throttle: at most one message per key per duration (leading edge).
    #[serde(default)]
    pub throttle: Option<Sp<String>>,

    /// deadband: passes only when a field moved by more than `delta` since the last passed value.
    #[serde(default)]
    pub deadband: Option<Sp<DeadbandSpec>>,

    /// aggregate: a tumbling window per key, emitting one message when it closes.
    #[serde(default)]
    pub aggregate: Option<Sp<AggregateSpec>>,

    /// alarm: raise or clear the one alarm per (device, type).
    #[serde(default)]
    pub alarm: Option<Sp<AlarmSpec>>,

    /// rpc: send a command `{id, method, params}` to the device.
    #[serde(default)]
    pub rpc: Option<Sp<RpcSpec>>,

    /// influx: write one point to InfluxDB.
    #[serde(default, deserialize_with = "crate::rules::syntax::present")]
    pub influx: Option<Sp<InfluxSpec>>,

    /// websocket: push the message to the WebSocket clients of a room.
    #[serde(default, deserialize_with = "crate::rules::syntax::present")]
    pub websocket: Option<Sp<WebsocketSpec>>,

    /// notify: the notification channels (names from the config) to send the message to.
    #[serde(default)]
    pub notify: Option<Sp<IdList>>,

    /// publish: republish the message as JSON to MQTT.
    #[serde(default)]
    pub publish: Option<Sp<PublishSpec>>,

    /// log: write a log event.
    #[serde(default, deserialize_with = "crate::rules::syntax::present")]
    pub log: Option<Sp<LogSpec>>,
}

impl NodeSpec {
    /// The kind keys this node holds, with their positions (exactly one is valid).
    pub fn kinds(&self) -> Vec<(NodeKind, crate::yaml::Pos)> {
        let pos = |k: NodeKind| match k {
            NodeKind::Filter => self.filter.as_ref().map(|s| s.pos),
            NodeKind::Transform => self
                .transform
                .as_ref()
                .map(|s| s.pos)
                .or(self.script.as_ref().map(|s| s.pos)),
            NodeKind::Switch => self.switch.as_ref().map(|s| s.pos),
            NodeKind::Debounce => self.debounce.as_ref().map(|s| s.pos),
            NodeKind::Delay => self.delay.as_ref().map(|s| s.pos),
            NodeKind::Throttle => self.throttle.as_ref().map(|s| s.pos),
            NodeKind::Deadband => self.deadband.as_ref().map(|s| s.pos),
            NodeKind::Aggregate => self.aggregate.as_ref().map(|s| s.pos),
            NodeKind::Alarm => self.alarm.as_ref().map(|s| s.pos),
            NodeKind::Rpc => self.rpc.as_ref().map(|s| s.pos),
            NodeKind::Influx => self.influx.as_ref().map(|s| s.pos),
            NodeKind::Websocket => self.websocket.as_ref().map(|s| s.pos),
            NodeKind::Notify => self.notify.as_ref().map(|s| s.pos),
            NodeKind::Publish => self.publish.as_ref().map(|s| s.pos),
            NodeKind::Log => self.log.as_ref().map(|s| s.pos),
        };
        NodeKind::ALL
            .iter()
            .filter_map(|k| pos(*k).map(|p| (*k, p)))
            .collect()
    }
}

/// The devices file (`devices.yaml`).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rulechain devices file")]
pub struct DevicesFile {
    /// The devices.
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
}

/// A device of the registry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// The device id, as in its topics (`{device}`).
    pub id: Sp<String>,
    /// The device type (`on.device_type` matches it; `meta.device_type`).
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Attributes seen as `attr` in Rhai (`rated_current: 10.0`). What the device publishes on
    /// its attributes topic overlays them.
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// A rule test file (`*.test.yaml`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rulechain test file")]
pub struct TestFile {
    /// The chain files under test, relative to this file. Default: the chain file with the same
    /// stem (`overload.test.yaml` tests `overload.yaml`), else every chain in this directory.
    #[serde(default)]
    pub chains: Option<Vec<Sp<String>>>,
    /// Devices for every case (as in the devices file).
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// The cases.
    pub cases: Vec<TestCase>,
}

/// One test case: input messages and the events expected.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// The case's name, printed with its result.
    pub name: Sp<String>,
    /// Input messages, as dry-run input lines (`ts` in ms or `at: 30s` from time 0).
    pub input: Vec<Sp<InputLine>>,
    /// Expected events. Each lists only the fields it checks (`at: 30s` checks `ts`). For every
    /// kind named here (`event: alarm`), the events of that kind must match its expectations one
    /// for one, in order: an extra or missing one fails the case. Other kinds are not checked.
    #[serde(default)]
    pub expect: Vec<Sp<BTreeMap<String, serde_json::Value>>>,
    /// Event kinds that must not happen at all in this case (`[alarm, error]`).
    #[serde(default)]
    pub expect_none: Vec<Sp<String>>,
    /// How long timers still run after the last input (default: until none is pending).
    #[serde(default)]
    pub drain: Option<Sp<String>>,
}

/// One input message, as a `dry-run` JSON line or a test case's `input` entry.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputLine {
    /// The device (the direct form).
    #[serde(default)]
    pub device: Option<String>,
    /// The MQTT topic (the topic form: goes through the topic patterns).
    #[serde(default)]
    pub topic: Option<String>,
    /// `telemetry` (default), `attributes`, `status` or `rpc_response` (direct form).
    #[serde(default)]
    pub kind: Option<Kind>,
    /// Milliseconds since the epoch; default: the payload's `ts`/`timestamp`, else the previous line's.
    #[serde(default)]
    pub ts: Option<i64>,
    /// Tests only: the time as a duration from 0 (`30s`), instead of `ts`.
    #[serde(default)]
    pub at: Option<String>,
    /// The payload (direct form).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// The payload (topic form).
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}
