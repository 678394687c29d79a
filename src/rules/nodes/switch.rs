//! `switch`: routes by the value of an expression, compared as text with the `cases` keys.

use crate::engine::{Cx, Flow, NodeImpl, Packet};
use crate::rules::builder::Builder;
use crate::rules::model::NodeSpec;
use crate::script::Expr;
use crate::yaml::Pos;

struct Switch {
    expr: Expr,
    cases: Vec<(String, usize)>,
    default: Option<usize>,
}

/// The keys of a node that belong to this kind besides its kind key (another kind's node
/// holding one is an error).
pub(super) const OWNS: &[&str] = &["cases", "default"];

pub(super) fn build(
    spec: &NodeSpec,
    b: &mut Builder,
    edge: &mut dyn FnMut(usize, Pos),
) -> Option<Box<dyn NodeImpl>> {
    let expr = spec.switch.as_ref().and_then(|e| b.expr(e));
    let mut cases = Vec::new();
    let mut ok = true;
    match &spec.cases {
        Some(c) => {
            for (value, target) in &c.value.0 {
                match b.target(target) {
                    Some(t) => {
                        edge(t, target.pos);
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
                edge(t, d.pos);
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
