//! `throttle`: at most one message per key per duration (leading edge, no trailing emit).

use crate::yaml::Sp;
use std::any::Any;

use super::common::KeySel;
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;

struct Throttle {
    every: i64,
    key: KeySel,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["throttle"],
    owns: &["key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// throttle: at most one message per key per duration (leading edge).
    #[serde(default)]
    pub throttle: Option<Sp<String>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let every = spec.throttle.as_ref().and_then(|d| b.duration(d));
    let key = KeySel::build(&head.key, b);
    Some(Box::new(Throttle {
        every: every?,
        key: key?,
    }))
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    last_passed: Keyed<i64>,
}

impl NodeImpl for Throttle {
    super::common::persisted!(State);

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        let now = cx.now;
        let every = self.every;
        match cx.state::<State>().last_passed.get(&key) {
            Some(t) if now.saturating_sub(*t) < every => Flow::Stop(Why::Suppressed),
            _ => {
                cx.insert_key(|s: &mut State| &mut s.last_passed, key, now);
                Flow::Pass(p)
            }
        }
    }

    /// An entry older than `every` decides nothing (the next message passes either way): it
    /// goes at once, whatever `idle` says.
    fn sweep(&self, state: &mut (dyn Any + Send), now: i64, idle: i64) -> usize {
        let every = self.every.min(idle);
        state
            .downcast_mut::<State>()
            .map_or(0, |s| s.last_passed.sweep(now, every, |_| false))
    }
}
