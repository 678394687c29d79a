//! `websocket`: pushes the message to the clients subscribed to a room (template, default
//! `device/${meta.device}`).

use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::Template;
use crate::yaml::Sp;
use schemars::JsonSchema;
use serde::Deserialize;

struct Websocket {
    room: Option<Template>,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["websocket"],
    owns: &[],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// websocket: push the message to the WebSocket clients of a room.
    #[serde(default, deserialize_with = "crate::rules::syntax::present")]
    pub websocket: Option<Sp<WebsocketSpec>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
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

/// `websocket`: push to a room.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct WebsocketSpec {
    /// The room, a template (default `device/${meta.device}`).
    #[serde(default)]
    pub room: Option<Sp<String>>,
}
