//! The compiled program the executor runs: a [`RuleSet`] of chains of nodes, each node's
//! behaviour behind [`super::NodeImpl`]. `rules::compile` builds it from chain files; it lives here,
//! with the executor, so the executor never depends on the compiler.

use std::sync::Arc;

use rhai::Engine;

use super::node::{NodeConfig, NodeImpl};
use crate::message::Kind;
use crate::script::Expr;
use crate::topic;

/// Every compiled chain, and what they share.
pub struct RuleSet {
    /// The Rhai engine the chains were compiled with.
    pub engine: Arc<Engine>,
    /// The chains, in the order of their file paths.
    pub chains: Vec<Chain>,
    /// What nodes read of the config.
    pub config: NodeConfig,
}

/// A compiled chain.
pub struct Chain {
    /// Its name.
    pub name: Arc<str>,
    /// Its file.
    pub path: String,
    /// Which messages enter it.
    pub on: OnFilter,
    /// Its nodes, in file order.
    pub nodes: Vec<CNode>,
    /// Index of its first node's state slot in the executor.
    pub first_slot: usize,
    /// Whether anything in the chain reads `meta` / `attr`: the executor builds those maps for
    /// a message only when a chain it enters does.
    pub reads: Reads,
}

/// Which of a message's maps a chain reads (a conservative answer: a source that mentions the
/// name counts).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reads {
    /// `meta` is read.
    pub meta: bool,
    /// `attr` is read.
    pub attr: bool,
}

impl Reads {
    /// Both maps (a message the engine starts itself: an operator's action, a reply).
    pub const ALL: Reads = Reads {
        meta: true,
        attr: true,
    };
}

/// The kinds of node: the one place a kind is named. Its YAML keys and its compile step are in
/// `rules::nodes` (one file per kind, one row in its table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    /// `filter`: passes what an expression accepts, optionally once it held for a while.
    Filter,
    /// `transform`: sets and removes fields.
    Transform,
    /// `switch`: routes by a value.
    Switch,
    /// `debounce`: one message per quiet spell.
    Debounce,
    /// `delay`: holds each message for a while.
    Delay,
    /// `throttle`: at most one message per period.
    Throttle,
    /// `deadband`: passes a change of value.
    Deadband,
    /// `aggregate`: a window's summary.
    Aggregate,
    /// `anomaly`: passes a value far from its learned baseline.
    Anomaly,
    /// `alarm`: raises or clears an alarm.
    Alarm,
    /// `rpc`: a command to the device.
    Rpc,
    /// `influx`: an InfluxDB point.
    Influx,
    /// `websocket`: a push to a room.
    Websocket,
    /// `notify`: a notification.
    Notify,
    /// `publish`: a message to MQTT.
    Publish,
    /// `log`: a log event.
    Log,
}

impl NodeKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [NodeKind; 16] = [
        NodeKind::Filter,
        NodeKind::Transform,
        NodeKind::Switch,
        NodeKind::Debounce,
        NodeKind::Delay,
        NodeKind::Throttle,
        NodeKind::Deadband,
        NodeKind::Aggregate,
        NodeKind::Anomaly,
        NodeKind::Alarm,
        NodeKind::Rpc,
        NodeKind::Influx,
        NodeKind::Websocket,
        NodeKind::Notify,
        NodeKind::Publish,
        NodeKind::Log,
    ];

    /// Its key in YAML, its name in traces, counters and default ids.
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Filter => "filter",
            NodeKind::Transform => "transform",
            NodeKind::Switch => "switch",
            NodeKind::Debounce => "debounce",
            NodeKind::Delay => "delay",
            NodeKind::Throttle => "throttle",
            NodeKind::Deadband => "deadband",
            NodeKind::Aggregate => "aggregate",
            NodeKind::Anomaly => "anomaly",
            NodeKind::Alarm => "alarm",
            NodeKind::Rpc => "rpc",
            NodeKind::Influx => "influx",
            NodeKind::Websocket => "websocket",
            NodeKind::Notify => "notify",
            NodeKind::Publish => "publish",
            NodeKind::Log => "log",
        }
    }

    /// Whether it changes `msg` (the executor keeps a copy for `on_error`).
    pub fn mutates(self) -> bool {
        self == NodeKind::Transform
    }

    /// Whether a message with no explicit `next` falls through to the node below (a switch
    /// routes or stops).
    pub fn falls_through(self) -> bool {
        self != NodeKind::Switch
    }
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A compiled node.
pub struct CNode {
    /// The id (given or `<kind>-<n>`).
    pub id: Arc<str>,
    /// Its kind.
    pub kind: NodeKind,
    /// Where its output goes.
    pub next: Vec<usize>,
    /// A false filter's target.
    pub else_: Option<usize>,
    /// Where errors go.
    pub on_error: Option<usize>,
    /// The node's behaviour.
    pub imp: Box<dyn NodeImpl>,
}

/// A chain's `on:`.
#[derive(Default)]
pub struct OnFilter {
    /// The message kind.
    pub kind: Kind,
    /// Device types (empty: any).
    pub device_types: Vec<String>,
    /// A topic filter the source topic must match.
    pub topic: Option<String>,
    /// The precondition.
    pub when: Option<Expr>,
}

impl OnFilter {
    /// Whether a message of this kind, device type and topic enters (before `when`).
    pub fn matches(&self, kind: Kind, device_type: Option<&str>, topic: Option<&str>) -> bool {
        kind == self.kind
            && (self.device_types.is_empty()
                || device_type.is_some_and(|t| self.device_types.iter().any(|d| d == t)))
            && self
                .topic
                .as_deref()
                .is_none_or(|f| topic.is_some_and(|t| topic::filter_matches(f, t)))
    }
}
