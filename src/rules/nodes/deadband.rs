//! `deadband`: change-of-value. Passes a message only when `field` moved by more than `delta`
//! since the last value passed for the key (the first message passes).

use crate::yaml::Sp;
use schemars::JsonSchema;
use serde::Deserialize;
use std::any::Any;

use super::common::{as_f64, KeySel};
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;

struct Deadband {
    field: String,
    delta: f64,
    key: KeySel,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["deadband"],
    owns: &["key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// deadband: passes only when a field moved by more than `delta` since the last passed value.
    #[serde(default)]
    pub deadband: Option<Sp<DeadbandSpec>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let d = spec.deadband.as_ref()?;
    let key = KeySel::build(&head.key, b);
    if !(d.delta.value >= 0.0 && d.delta.value.is_finite()) {
        b.error(d.delta.pos, "`delta` must be a finite number, 0 or more");
        return None;
    }
    Some(Box::new(Deadband {
        field: d.field.value.clone(),
        delta: d.delta.value,
        key: key?,
    }))
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    last: Keyed<f64>,
}

impl NodeImpl for Deadband {
    super::common::persisted!(State);

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let Some(v) = p.field(&self.field).as_ref().and_then(as_f64) else {
            return Flow::Error(
                format!("field `{}` is missing or not a number", self.field),
                p,
            );
        };
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        let (delta, now) = (self.delta, cx.now);
        match cx.state::<State>().last.get_mut(&key, now) {
            Some(last) if (v - *last).abs() <= delta => Flow::Stop(Why::Suppressed),
            _ => {
                cx.insert_key(|s: &mut State| &mut s.last, key, v);
                Flow::Pass(p)
            }
        }
    }

    /// A key idle for `idle` is forgotten: its next value passes, as a first one does.
    fn sweep(&self, state: &mut (dyn Any + Send), now: i64, idle: i64) -> usize {
        state
            .downcast_mut::<State>()
            .map_or(0, |s| s.last.sweep(now, idle, |_| false))
    }
}

/// `deadband`: change-of-value.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DeadbandSpec {
    /// The numeric field of `msg` to watch.
    pub field: Sp<String>,
    /// The message passes when the field moved by more than this since the last passed value.
    pub delta: Sp<f64>,
}
