//! `throttle`: at most one message per key per duration (leading edge, no trailing emit).

use std::collections::HashMap;
use std::sync::Arc;

use super::KeySel;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use crate::rules::compile::Builder;
use crate::rules::model::NodeSpec;

struct Throttle {
    every: i64,
    key: KeySel,
}

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
    last_passed: HashMap<Arc<str>, i64>,
}

impl NodeImpl for Throttle {
    super::persisted!(State);

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        let now = cx.now;
        let every = self.every;
        let st = cx.state::<State>();
        match st.last_passed.get(&key) {
            Some(t) if now.saturating_sub(*t) < every => Flow::Stop("suppressed"),
            _ => {
                st.last_passed.insert(key, now);
                Flow::Pass(p)
            }
        }
    }
}
