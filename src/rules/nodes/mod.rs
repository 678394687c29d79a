//! Every node kind of the rule language, one file each, with the same shape: the compile step
//! (`build`, from the node's YAML through a [`Builder`] that reports problems with positions)
//! and the run step (an [`NodeImpl`]). The YAML types live in [`crate::rules::model`].

mod aggregate;
mod alarm;
mod deadband;
mod debounce;
mod delay;
mod filter;
mod influx;
mod log;
pub mod notify;
mod publish;
mod rpc;
mod switch;
mod throttle;
mod transform;
mod websocket;

use std::sync::Arc;

use crate::engine::program::NodeKind;
use crate::engine::{Cx, NodeImpl, Packet};
use crate::rules::builder::Builder;
use crate::rules::model::{ExprSrc, NodeSpec};
use crate::script::Expr;
use crate::yaml::{Pos, Sp};

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

/// Compiles the node of kind `kind`. `edge` records extra graph edges (switch targets) for the
/// cycle and reachability checks. Returns `None` when the node has errors (already reported).
pub fn build(
    kind: NodeKind,
    spec: &NodeSpec,
    b: &mut Builder,
    edge: &mut dyn FnMut(usize, Pos),
) -> Option<Box<dyn NodeImpl>> {
    match kind {
        NodeKind::Filter => filter::build(spec, b),
        NodeKind::Transform => transform::build(spec, b),
        NodeKind::Switch => switch::build(spec, b, edge),
        NodeKind::Debounce => debounce::build(spec, b),
        NodeKind::Delay => delay::build(spec, b),
        NodeKind::Throttle => throttle::build(spec, b),
        NodeKind::Deadband => deadband::build(spec, b),
        NodeKind::Aggregate => aggregate::build(spec, b),
        NodeKind::Alarm => alarm::build(spec, b),
        NodeKind::Rpc => rpc::build(spec, b),
        NodeKind::Influx => influx::build(spec, b),
        NodeKind::Websocket => websocket::build(spec, b),
        NodeKind::Notify => notify::build(spec, b),
        NodeKind::Publish => publish::build(spec, b),
        NodeKind::Log => log::build(spec, b),
    }
}

/// The keys of a node that belong to its kind besides the kind key (`for` and `else` to a
/// filter, `key` to the kinds with per-key state): each kind's file says.
pub fn owns(kind: NodeKind) -> &'static [&'static str] {
    match kind {
        NodeKind::Filter => filter::OWNS,
        NodeKind::Transform => transform::OWNS,
        NodeKind::Switch => switch::OWNS,
        NodeKind::Debounce => debounce::OWNS,
        NodeKind::Delay => delay::OWNS,
        NodeKind::Throttle => throttle::OWNS,
        NodeKind::Deadband => deadband::OWNS,
        NodeKind::Aggregate => aggregate::OWNS,
        NodeKind::Alarm => alarm::OWNS,
        NodeKind::Rpc => rpc::OWNS,
        NodeKind::Influx => influx::OWNS,
        NodeKind::Websocket => websocket::OWNS,
        NodeKind::Notify => notify::OWNS,
        NodeKind::Publish => publish::OWNS,
        NodeKind::Log => log::OWNS,
    }
}

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
