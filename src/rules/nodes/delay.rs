//! `delay`: holds each message for the duration, then passes it at its due time. A message for
//! which `cancel_when` is true drops the key's pending messages and is consumed; beyond
//! `max_pending` per key the oldest pending message is dropped.

use crate::yaml::Sp;
use crate::rules::syntax::ExprSrc;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::common::KeySel;
use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::Expr;

/// The default bound on pending messages per key.
const DEFAULT_MAX_PENDING: usize = 1000;

struct Delay {
    hold: i64,
    max_pending: usize,
    cancel_when: Option<Expr>,
    key: KeySel,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["delay"],
    owns: &["max_pending", "cancel_when", "key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// delay: how long each message is held before it passes.
    #[serde(default)]
    pub delay: Option<Sp<String>>,
    /// delay: at most this many pending messages per key; the oldest is dropped beyond it (default 1000).
    #[serde(default)]
    pub max_pending: Option<Sp<u32>>,
    /// delay: a message for which this is true drops the key's pending messages and is consumed.
    #[serde(default)]
    pub cancel_when: Option<Sp<ExprSrc>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let hold = spec.delay.as_ref().and_then(|d| b.duration(d));
    let cancel_when = b.opt_expr(&spec.cancel_when);
    let key = KeySel::build(&head.key, b);
    let max_pending = match &spec.max_pending {
        Some(m) if m.value == 0 => {
            b.error(m.pos, "`max_pending` must be at least 1");
            return None;
        }
        Some(m) => m.value as usize,
        None => DEFAULT_MAX_PENDING,
    };
    Some(Box::new(Delay {
        hold: hold?,
        max_pending,
        cancel_when: cancel_when?,
        key: key?,
    }))
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    pending: HashMap<Arc<str>, VecDeque<(u64, Packet)>>,
}

impl NodeImpl for Delay {
    super::common::persisted!(State);

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        if let Some(c) = &self.cancel_when {
            match c.eval_bool(cx.rt, &mut p.vars) {
                Ok(true) => {
                    let dropped = cx.state::<State>().pending.remove(&key).unwrap_or_default();
                    for (_, d) in dropped {
                        cx.emit(Event::Dropped {
                            device: d.device.clone(),
                            reason: crate::engine::effect::DropReason::Cancelled,
                            detail: None,
                        });
                    }
                    return Flow::Stop(Why::Stopped);
                }
                Ok(false) => {}
                Err(e) => return Flow::Error(e, p),
            }
        }
        let tag = cx.next_id();
        if let Err(e) = cx.schedule(cx.now.saturating_add(self.hold), &key, tag) {
            return Flow::Error(e, p);
        }
        let max = self.max_pending;
        let q = cx.state::<State>().pending.entry(key).or_default();
        q.push_back((tag, p));
        let over = if q.len() > max { q.pop_front() } else { None };
        if let Some((_, d)) = over {
            cx.emit(Event::Dropped {
                device: d.device.clone(),
                reason: crate::engine::effect::DropReason::Overflow,
                detail: None,
            });
        }
        Flow::Stop(Why::Held)
    }

    fn fire(&self, cx: &mut Cx<'_>, key: &str, tag: u64) -> Option<Flow> {
        let st = cx.state::<State>();
        let q = st.pending.get_mut(key)?;
        let i = q.iter().position(|(t, _)| *t == tag)?;
        let (_, p) = q.remove(i)?;
        if q.is_empty() {
            st.pending.remove(key);
        }
        Some(Flow::Pass(p))
    }
}
