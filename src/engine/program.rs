//! The compiled program the executor runs: a [`RuleSet`] of chains of nodes, each node's
//! behaviour behind [`NodeImpl`]. `rules::compile` builds it from chain files; it lives here,
//! with the executor, so the executor never depends on the compiler.

use std::collections::HashMap;
use std::sync::Arc;

use rhai::Engine;

use super::NodeImpl;
use crate::message::Kind;
use crate::script::{Expr, Template};
use crate::topic;

/// Every compiled chain, and what they share.
pub struct RuleSet {
    /// The Rhai engine the chains were compiled with.
    pub engine: Arc<Engine>,
    /// The chains, in the order of their file paths.
    pub chains: Vec<Chain>,
    /// Notification channel templates by name (from the config).
    pub channels: HashMap<String, ChannelTemplates>,
    /// The config's RPC command topic pattern (`site/{site}/device/{device}/command`).
    pub command_topic: Option<String>,
}

/// Subject and body templates of a notification channel.
#[derive(Clone, Default)]
pub struct ChannelTemplates {
    /// Subject.
    pub subject: Option<Template>,
    /// Body.
    pub body: Option<Template>,
    /// A webhook's body as JSON whose strings are templates.
    pub body_json: Option<crate::script::JsonTemplate>,
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

/// A compiled node.
pub struct CNode {
    /// The id (given or `<kind>-<n>`).
    pub id: Arc<str>,
    /// The kind key.
    pub kind: &'static str,
    /// Where its output goes.
    pub next: Vec<usize>,
    /// A false filter's target.
    pub else_: Option<usize>,
    /// Where errors go.
    pub on_error: Option<usize>,
    /// True when the node changes `msg` (the executor keeps a copy for `on_error`).
    pub mutates: bool,
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
