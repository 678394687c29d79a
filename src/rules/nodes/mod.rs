//! Every node kind of the rule language, one file each, with the same shape: the compile step
//! (`build`, from the node's YAML through a [`Builder`] that reports problems with positions)
//! and the run step (an [`NodeImpl`]). The YAML types live in [`crate::rules::model`].

pub mod aggregate;
pub mod alarm;
pub mod common;
pub mod deadband;
pub mod debounce;
pub mod delay;
pub mod filter;
pub mod influx;
pub mod log;
pub mod notify;
pub mod publish;
pub mod rpc;
pub mod switch;
pub mod throttle;
pub mod transform;
pub mod websocket;

use crate::engine::program::NodeKind;
use crate::engine::NodeImpl;
use crate::rules::builder::Builder;
use crate::rules::model::NodeSpec;
use crate::yaml::Pos;

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
        NodeKind::Debounce => {
            debounce::build(spec.debounce.as_ref(), spec.emit.as_ref(), &spec.key, b)
        }
        NodeKind::Delay => delay::build(spec, b),
        NodeKind::Throttle => throttle::build(spec, b),
        NodeKind::Deadband => deadband::build(spec.deadband.as_ref(), &spec.key, b),
        NodeKind::Aggregate => aggregate::build(spec.aggregate.as_ref(), &spec.key, b),
        NodeKind::Alarm => alarm::build(spec.alarm.as_ref(), b),
        NodeKind::Rpc => rpc::build(spec.rpc.as_ref(), &spec.key, b),
        NodeKind::Influx => influx::build(spec.influx.as_ref(), b),
        NodeKind::Websocket => websocket::build(spec.websocket.as_ref(), b),
        NodeKind::Notify => notify::build(spec, b),
        NodeKind::Publish => publish::build(spec.publish.as_ref(), b),
        NodeKind::Log => log::build(spec.log.as_ref(), b),
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
