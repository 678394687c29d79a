//! What several node kinds share: how a per-key node picks its key ([`KeySel`]), reading a Rhai
//! number, and the macro that makes a node's state persisted.

use std::sync::Arc;

use crate::engine::{Cx, Packet};
use crate::rules::builder::Builder;
use crate::rules::syntax::ExprSrc;
use crate::script::Expr;
use crate::yaml::Sp;

/// Makes a node's `State` type its persisted state (see [`NodeImpl::save`]).
macro_rules! persisted {
    ($t:ty) => {
        fn save(&self, state: &(dyn std::any::Any + Send)) -> Option<serde_json::Value> {
            crate::engine::persist::save::<$t>(state)
        }
        fn load(&self, state: serde_json::Value) -> Option<Box<dyn std::any::Any + Send>> {
            crate::engine::persist::load::<$t>(state)
        }
    };
}
pub(crate) use persisted;

/// How a per-key node picks its key: `key:` or `meta.device`.
pub(crate) struct KeySel(Option<Expr>);

impl KeySel {
    pub(crate) fn build(key: &Option<Sp<ExprSrc>>, b: &mut Builder) -> Option<KeySel> {
        b.opt_expr(key).map(KeySel)
    }

    pub(crate) fn key(&self, cx: &mut Cx<'_>, p: &mut Packet) -> Result<Arc<str>, String> {
        match &self.0 {
            None => Ok(p.device.clone()),
            Some(e) => e.eval(cx.rt, &mut p.vars).map(|v| Arc::from(v.to_string())),
        }
    }
}

/// A Rhai number as f64.
pub(crate) fn as_f64(v: &rhai::Dynamic) -> Option<f64> {
    // By kind first: a failed `as_float` looks up the type's name for its error.
    if v.is_float() {
        v.as_float().ok()
    } else if v.is_int() {
        v.as_int().ok().map(|i| i as f64)
    } else {
        None
    }
}
