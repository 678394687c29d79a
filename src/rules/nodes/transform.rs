//! `transform`: sets fields of `msg` (`name: EXPR`, in order, each seeing the ones before it;
//! `()` removes the field), then runs `script:` (its map is merged the same way), then `drop:`.

use rhai::{Dynamic, Map};

use crate::engine::{Cx, Flow, NodeImpl, Packet};
use crate::rules::builder::Builder;
use crate::rules::model::NodeSpec;
use crate::script::{Expr, Script};

struct Transform {
    fields: Vec<(String, Expr)>,
    script: Option<Script>,
    drop: Vec<String>,
}

/// The keys of a node that belong to this kind besides its kind key (another kind's node
/// holding one is an error).
pub(super) const OWNS: &[&str] = &["drop"];

pub(super) fn build(spec: &NodeSpec, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let mut fields = Vec::new();
    let mut ok = true;
    for (name, e) in spec.transform.iter().flat_map(|t| t.value.0.iter()) {
        match b.expr(e) {
            Some(x) => fields.push((name.value.clone(), x)),
            None => ok = false,
        }
    }
    let script = match &spec.script {
        Some(s) => Some(b.script(s)?),
        None => None,
    };
    let drop = spec
        .drop
        .iter()
        .flatten()
        .map(|s| s.value.clone())
        .collect();
    ok.then(|| {
        Box::new(Transform {
            fields,
            script,
            drop,
        }) as Box<dyn NodeImpl>
    })
}

fn set(m: &mut Map, name: &str, v: Dynamic) {
    if v.is_unit() {
        m.remove(name);
    } else {
        m.insert(name.into(), v);
    }
}

impl NodeImpl for Transform {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        for (name, e) in &self.fields {
            match e.eval(cx.rt, &mut p.vars) {
                Ok(v) => p.with_msg(|m| set(m, name, v)),
                Err(e) => return Flow::Error(format!("field `{name}`: {e}"), p),
            }
        }
        if let Some(s) = &self.script {
            match s.eval(cx.rt, &mut p.vars) {
                Ok(v) if v.is_unit() => {}
                Ok(v) => match v.try_cast::<Map>() {
                    Some(out) => p.with_msg(|m| {
                        for (k, v) in out {
                            set(m, &k, v);
                        }
                    }),
                    None => {
                        return Flow::Error("script must return a map of fields (or ())".into(), p)
                    }
                },
                Err(e) => return Flow::Error(e, p),
            }
        }
        if !self.drop.is_empty() {
            p.with_msg(|m| {
                for f in &self.drop {
                    m.remove(f.as_str());
                }
            });
        }
        Flow::Pass(p)
    }
}
