//! `switch`: routes by the value of an expression, compared as text with the `cases` keys.

use crate::yaml::Sp;
use crate::yaml::SpMap;
use crate::rules::syntax::ExprSrc;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::Expr;
use crate::yaml::Pos;

struct Switch {
    expr: Expr,
    cases: Vec<(String, usize)>,
    default: Option<usize>,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["switch"],
    owns: &["cases", "default"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// switch: routes by the value of this expression.
    #[serde(default)]
    pub switch: Option<Sp<ExprSrc>>,
    /// switch: `value: node-id`; values are compared as text.
    #[serde(default)]
    pub cases: Option<Sp<SpMap<Sp<String>>>>,
    /// switch: the node id for a value with no case (default: nowhere).
    #[serde(default)]
    pub default: Option<Sp<String>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let expr = spec.switch.as_ref().and_then(|e| b.expr(e));
    let mut cases = Vec::new();
    let mut ok = true;
    match &spec.cases {
        Some(c) => {
            for (value, target) in &c.value.0 {
                match b.target(target) {
                    Some(t) => {
                        b.edge(t, target.pos);
                        cases.push((value.value.clone(), t));
                    }
                    None => ok = false,
                }
            }
        }
        None => {
            let pos = spec.switch.as_ref().map_or(Pos::default(), |s| s.pos);
            b.error(pos, "a switch needs `cases:`")
                .hint("e.g. `cases: {\"high\": alarm, \"low\": store}`");
            ok = false;
        }
    }
    let default = match &spec.default {
        Some(d) => {
            let t = b.target(d);
            if let Some(t) = t {
                b.edge(t, d.pos);
            } else {
                ok = false;
            }
            t
        }
        None => None,
    };
    let expr = expr?;
    ok.then(|| {
        Box::new(Switch {
            expr,
            cases,
            default,
        }) as Box<dyn NodeImpl>
    })
}

impl NodeImpl for Switch {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let v = match self.expr.eval(cx.rt, &mut p.vars) {
            Ok(v) => v.to_string(),
            Err(e) => return Flow::Error(e, p),
        };
        let to = self
            .cases
            .iter()
            .find(|(c, _)| *c == v)
            .map(|(_, t)| *t)
            .or(self.default);
        Flow::Route(to, p)
    }
}
