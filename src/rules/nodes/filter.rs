//! `filter`: passes messages for which the expression is true; with `for`, only once the
//! condition has held for the duration per key (the hold), then every true message until a false
//! one ends the episode.

use crate::yaml::Sp;
use crate::rules::syntax::ExprSrc;
use std::any::Any;

use super::common::KeySel;
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::Expr;

struct Filter {
    cond: Expr,
    hold: Option<i64>,
    key: KeySel,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["filter"],
    owns: &["for", "else", "key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// filter: passes the message when the expression is true.
    #[serde(default)]
    pub filter: Option<Sp<ExprSrc>>,
    /// filter: the condition must stay true this long per key before anything passes (`30s`).
    #[serde(default, rename = "for")]
    pub hold: Option<Sp<String>>,
    /// filter: the node id a false message goes to (default: nowhere).
    #[serde(default, rename = "else")]
    pub else_: Option<Sp<String>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let cond = spec.filter.as_ref().and_then(|f| b.expr(f));
    let hold = b.opt_duration(&spec.hold);
    let key = KeySel::build(&head.key, b);
    Some(Box::new(Filter {
        cond: cond?,
        hold: hold?.filter(|h| *h > 0),
        key: key?,
    }))
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Hold {
    /// The condition is true since a time; the latest true message waits for the timer `tag`.
    Holding { latest: Packet, tag: u64 },
    /// The hold completed: true messages pass until a false one.
    Passing,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    keys: Keyed<Hold>,
}

impl NodeImpl for Filter {
    super::common::persisted!(State);

    /// An episode (`Passing`) idle for `idle` is forgotten: the key's next true message starts a
    /// new hold. A hold in progress is left to its timer.
    fn sweep(&self, state: &mut (dyn Any + Send), now: i64, idle: i64) -> usize {
        state.downcast_mut::<State>().map_or(0, |s| {
            s.keys
                .sweep(now, idle, |h| matches!(h, Hold::Holding { .. }))
        })
    }

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let ok = match self.cond.eval_bool(cx.rt, &mut p.vars) {
            Ok(v) => v,
            Err(e) => return Flow::Error(e, p),
        };
        let Some(hold) = self.hold else {
            return if ok { Flow::Pass(p) } else { Flow::Else(p) };
        };
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        if !ok {
            cx.state::<State>().keys.remove(&key);
            return Flow::Else(p);
        }
        let now = cx.now;
        match cx.state::<State>().keys.get_mut(&key, now) {
            Some(Hold::Passing) => return Flow::Pass(p),
            Some(Hold::Holding { latest, .. }) => {
                *latest = p;
                return Flow::Stop(Why::Held);
            }
            None => {}
        }
        let tag = cx.next_id();
        if let Err(e) = cx.schedule(cx.now.saturating_add(hold), &key, tag) {
            return Flow::Error(e, p);
        }
        cx.insert_key(
            |s: &mut State| &mut s.keys,
            key,
            Hold::Holding { latest: p, tag },
        );
        Flow::Stop(Why::Held)
    }

    fn fire(&self, cx: &mut Cx<'_>, key: &str, tag: u64) -> Option<Flow> {
        let now = cx.now;
        let st = cx.state::<State>();
        match st.keys.get_mut(key, now) {
            Some(h @ Hold::Holding { .. }) => {
                if !matches!(h, Hold::Holding { tag: t, .. } if *t == tag) {
                    return None;
                }
                match std::mem::replace(h, Hold::Passing) {
                    Hold::Holding { latest, .. } => Some(Flow::Pass(latest)),
                    Hold::Passing => None,
                }
            }
            _ => None,
        }
    }
}
