//! `throttle`: at most one message per key per duration (leading edge, no trailing emit).

use std::any::Any;

use super::common::KeySel;
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use crate::rules::builder::Builder;
use crate::rules::model::NodeSpec;

struct Throttle {
    every: i64,
    key: KeySel,
}

/// The keys of a node that belong to this kind besides its kind key (another kind's node
/// holding one is an error).
pub(super) const OWNS: &[&str] = &["key"];

pub(super) fn build(spec: &NodeSpec, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let every = spec.throttle.as_ref().and_then(|d| b.duration(d));
    let key = KeySel::build(&spec.key, b);
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
