//! The files users write, as Rust types. These types are the single source of truth: the loader
//! deserializes them, `schemas/*.json` are derived from them (their doc comments become the
//! schema descriptions editors show), and the compiler turns them into runnable chains.
//!
//! A chain's nodes are read by [`crate::rules::nodes::load`]: each kind's keys live in its own
//! file under `src/rules/nodes/`.

use crate::message::Kind;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::rules::syntax::{ExprSrc, IdList};
use crate::yaml::Sp;

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
    #[schemars(with = "Vec<crate::rules::nodes::NodeSchema>")]
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
