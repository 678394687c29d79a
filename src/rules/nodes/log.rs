//! `log`: writes a log event (template, default the message as JSON). In `dry-run` it prints as
//! a `log` event.

use crate::engine::effect::Event;
use crate::engine::effect::LogLevel;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use crate::rules::builder::Builder;
use crate::rules::model::NodeSpec;
use crate::script::Template;

struct Log {
    level: LogLevel,
    message: Option<Template>,
}

/// The keys of a node that belong to this kind besides its kind key (another kind's node
/// holding one is an error).
pub(super) const OWNS: &[&str] = &[];

pub(super) fn build(spec: &NodeSpec, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
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
