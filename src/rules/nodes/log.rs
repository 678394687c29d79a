//! `log`: writes a log event (template, default the message as JSON). In `dry-run` it prints as
//! a `log` event.

use crate::engine::effect::Event;
use crate::engine::effect::LogLevel;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::Template;
use crate::yaml::Sp;
use schemars::JsonSchema;
use serde::Deserialize;

struct Log {
    level: LogLevel,
    message: Option<Template>,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["log"],
    owns: &[],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// log: write a log event.
    #[serde(default, deserialize_with = "crate::rules::syntax::present")]
    pub log: Option<Sp<LogSpec>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let l = spec.log.as_ref()?;
    let message = b.opt_template(&l.message)?;
    Some(Box::new(Log {
        level: l.level.as_ref().map_or(LogLevel::Info, |x| x.value),
        message,
    }))
}

impl NodeImpl for Log {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let message = match &self.message {
            Some(t) => match t.render(cx.rt, &mut p.vars) {
                Ok(m) => m,
                Err(e) => return Flow::Error(e, p),
            },
            None => serde_json::to_string(p.msg()).unwrap_or_default(),
        };
        cx.emit(Event::Log {
            device: p.device.clone(),
            level: self.level,
            message,
        });
        Flow::Pass(p)
    }
}

/// `log`: a log event.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// The level (default `info`).
    #[serde(default)]
    pub level: Option<Sp<LogLevel>>,
    /// The text, a template (default: the message as JSON).
    #[serde(default)]
    pub message: Option<Sp<String>>,
}
