//! `debounce`: per key, `last` passes the latest message once the key has been quiet for the
//! duration; `first` passes a message when no message for the key came in the duration before it.

use crate::yaml::Sp;
use schemars::JsonSchema;
use serde::Deserialize;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use super::common::KeySel;
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;

struct Debounce {
    quiet: i64,
    emit: Emit,
    key: KeySel,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["debounce"],
    owns: &["emit", "key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// debounce: the quiet time per key (`5s`).
    #[serde(default)]
    pub debounce: Option<Sp<String>>,
    /// debounce: `last` (default) or `first`.
    #[serde(default)]
    pub emit: Option<Sp<Emit>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let quiet = spec.debounce.as_ref().and_then(|d| b.duration(d));
    let key = KeySel::build(&head.key, b);
    let emit = spec.emit.as_ref().map_or(Emit::Last, |e| e.value);
    Some(Box::new(Debounce {
        quiet: quiet?,
        emit,
        key: key?,
    }))
}

/// `last`: the pending message and when it is due. One timer per key is kept armed: when it
/// fires early (newer messages moved `due`), it is set again for `due`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    latest: Packet,
    due: i64,
    tag: u64,
    /// When the latest message set the (logical) timer: its rank among same-instant timers.
    order: u64,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    pending: HashMap<Arc<str>, Pending>,
    last_seen: Keyed<i64>,
}

impl NodeImpl for Debounce {
    super::common::persisted!(State);

    /// `first`: a key quiet for longer than the duration passes its next message either way,
    /// so its entry goes once the duration has passed. `last`: a pending message is left to
    /// its timer.
    fn sweep(&self, state: &mut (dyn Any + Send), now: i64, idle: i64) -> usize {
        let quiet = self.quiet.min(idle);
        state
            .downcast_mut::<State>()
            .map_or(0, |s| s.last_seen.sweep(now, quiet, |_| false))
    }

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        let now = cx.now;
        match self.emit {
            Emit::First => {
                let last = cx.state::<State>().last_seen.get(&key).copied();
                cx.insert_key(|s: &mut State| &mut s.last_seen, key, now);
                match last {
                    Some(t) if now.saturating_sub(t) < self.quiet => Flow::Stop(Why::Suppressed),
                    _ => Flow::Pass(p),
                }
            }
            Emit::Last => {
                let due = now.saturating_add(self.quiet);
                let order = cx.next_id();
                if let Some(pend) = cx.state::<State>().pending.get_mut(&key) {
                    pend.latest = p;
                    pend.due = due;
                    pend.order = order;
                    return Flow::Stop(Why::Held);
                }
                let tag = cx.next_id();
                if let Err(e) = cx.schedule_as(due, &key, tag, order) {
                    return Flow::Error(e, p);
                }
                cx.state::<State>().pending.insert(
                    key,
                    Pending {
                        latest: p,
                        due,
                        tag,
                        order,
                    },
                );
                Flow::Stop(Why::Held)
            }
        }
    }

    fn fire(&self, cx: &mut Cx<'_>, key: &str, tag: u64) -> Option<Flow> {
        let now = cx.now;
        let (due, order) = {
            let pend = cx.state::<State>().pending.get(key)?;
            if pend.tag != tag {
                return None;
            }
            (pend.due, pend.order)
        };
        if due <= now {
            let pend = cx.state::<State>().pending.remove(key)?;
            return Some(Flow::Pass(pend.latest));
        }
        let new_tag = cx.next_id();
        match cx.schedule_as(due, key, new_tag, order) {
            Ok(_) => {
                if let Some(p) = cx.state::<State>().pending.get_mut(key) {
                    p.tag = new_tag;
                }
                None
            }
            Err(e) => {
                let pend = cx.state::<State>().pending.remove(key)?;
                Some(Flow::Error(e, pend.latest))
            }
        }
    }
}

/// `debounce` emit mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Emit {
    /// Pass the latest message once the key has been quiet for the duration.
    #[default]
    Last,
    /// Pass the first message and suppress the rest until the key has been quiet for the duration.
    First,
}
