//! `websocket`: pushes the message to the clients subscribed to a room (template, default
//! `device/${meta.device}`).

use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use crate::rules::builder::Builder;
use crate::rules::model::NodeSpec;
use crate::script::Template;

struct Websocket {
    room: Option<Template>,
}

/// The keys of a node that belong to this kind besides its kind key (another kind's node
/// holding one is an error).
pub(super) const OWNS: &[&str] = &[];

pub(super) fn build(spec: &NodeSpec, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let w = spec.websocket.as_ref()?;
    Some(Box::new(Websocket {
        room: b.opt_template(&w.room)?,
    }))
}

impl NodeImpl for Websocket {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let room = match &self.room {
            Some(t) => match t.render(cx.rt, &mut p.vars) {
                Ok(r) => r,
                Err(e) => return Flow::Error(e, p),
            },
            // Pushed as is, not through `format!`: this runs for every message.
            None => {
                let mut room = String::with_capacity(7 + p.device.len());
                room.push_str("device/");
                room.push_str(&p.device);
                room
            }
        };
        cx.emit(Event::Websocket {
            device: p.device.clone(),
            room,
            data: p.share_msg(),
        });
        Flow::Pass(p)
    }
}
