//! What several node kinds share: the keys every node may hold ([`NodeHead`]), how a kind names
//! its keys ([`Keys`]), how a per-key node picks its key ([`KeySel`]), reading a Rhai number,
//! and the macro that makes a node's state persisted.

use std::sync::Arc;

use crate::engine::{Cx, Packet};
use crate::rules::builder::Builder;
use crate::rules::syntax::{ExprSrc, IdList};
use crate::script::Expr;
use crate::yaml::Sp;

/// The keys every node may hold, whatever its kind.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeHead {
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
}

impl NodeHead {
    /// Its keys, in the order the schema and the "expected one of" hints list them.
    pub const KEYS: &'static [&'static str] = &["id", "description", "next", "on_error", "key"];
}

/// The keys of a node that are one kind's, as its file declares them.
pub struct Keys {
    /// The kind keys: any of them makes a node of this kind (`transform` or `script`).
    pub triggers: &'static [&'static str],
    /// The keys the kind owns besides (`for` and `else` of a filter; `key` for the kinds with
    /// per-key state): a node of another kind holding one is an error.
    pub owns: &'static [&'static str],
}

/// Makes a node's `State` type its persisted state (see [`NodeImpl::save`]).
macro_rules! persisted {
    ($t:ty) => {
        fn save(&self, state: &(dyn std::any::Any + Send)) -> Option<serde_json::Value> {
            crate::engine::persist::save::<$t>(state)
        }
        fn load(&self, state: serde_json::Value) -> Option<Box<dyn std::any::Any + Send>> {
            crate::engine::persist::load::<$t>(state)
        }
    };
}
pub(crate) use persisted;

/// How a per-key node picks its key: `key:` or `meta.device`.
pub(crate) struct KeySel(Option<Expr>);

impl KeySel {
    pub(crate) fn build(key: &Option<Sp<ExprSrc>>, b: &mut Builder) -> Option<KeySel> {
        b.opt_expr(key).map(KeySel)
    }

    pub(crate) fn key(&self, cx: &mut Cx<'_>, p: &mut Packet) -> Result<Arc<str>, String> {
        match &self.0 {
            None => Ok(p.device.clone()),
            Some(e) => e.eval(cx.rt, &mut p.vars).map(|v| Arc::from(v.to_string())),
        }
    }
}

/// A Rhai number as f64.
pub(crate) fn as_f64(v: &rhai::Dynamic) -> Option<f64> {
    // By kind first: a failed `as_float` looks up the type's name for its error.
    if v.is_float() {
        v.as_float().ok()
    } else if v.is_int() {
        v.as_int().ok().map(|i| i as f64)
    } else {
        None
    }
}
