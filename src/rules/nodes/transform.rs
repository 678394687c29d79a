//! `transform`: sets fields of `msg` (`name: EXPR`, in order, each seeing the ones before it;
//! `()` removes the field), then runs `script:` (its map is merged the same way), then `drop:`.

use crate::yaml::Sp;
use crate::yaml::SpMap;
use crate::rules::syntax::ExprSrc;
use rhai::{Dynamic, Map};

use crate::engine::{Cx, Flow, NodeImpl, Packet};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::{Expr, Script};

struct Transform {
    fields: Vec<(String, Expr)>,
    script: Option<Script>,
    drop: Vec<String>,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["transform", "script"],
    owns: &["drop"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// transform: fields to set, `name: EXPR`, evaluated in order; a `()` value removes the field.
    #[serde(default)]
    pub transform: Option<Sp<SpMap<Sp<ExprSrc>>>>,
    /// transform: a Rhai script returning a map of fields to set (instead of, or after, `transform`).
    #[serde(default)]
    pub script: Option<Sp<String>>,
    /// transform: fields to remove.
    #[serde(default)]
    pub drop: Option<Vec<Sp<String>>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
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
