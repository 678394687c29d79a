//! `publish`: republishes the message as JSON to an MQTT topic (template).

use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::Template;
use crate::yaml::Sp;
use schemars::JsonSchema;
use serde::Deserialize;

struct Publish {
    topic: Template,
    qos: u8,
    retain: bool,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["publish"],
    owns: &[],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// publish: republish the message as JSON to MQTT.
    #[serde(default)]
    pub publish: Option<Sp<PublishSpec>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let s = spec.publish.as_ref()?;
    let topic = b.template(&s.topic);
    let qos = match &s.qos {
        Some(q) if q.value > 2 => {
            b.error(q.pos, "qos is 0, 1 or 2");
            return None;
        }
        Some(q) => q.value,
        None => 0,
    };
    Some(Box::new(Publish {
        topic: topic?,
        qos,
        retain: s.retain.unwrap_or(false),
    }))
}

impl NodeImpl for Publish {
    fn acts_on_devices(&self) -> bool {
        true
    }

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let topic = match self.topic.render(cx.rt, &mut p.vars) {
            Ok(t) if !t.is_empty() && !t.contains(['+', '#']) => t,
            Ok(t) => return Flow::Error(format!("`{t}` is not a topic to publish to"), p),
            Err(e) => return Flow::Error(e, p),
        };
        cx.emit(Event::Publish {
            device: p.device.clone(),
            topic,
            payload: p.share_msg(),
            qos: self.qos,
            retain: self.retain,
        });
        Flow::Pass(p)
    }
}

/// `publish`: republish to MQTT.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// The topic, a template.
    pub topic: Sp<String>,
    /// MQTT QoS 0, 1 or 2 (default 0).
    #[serde(default)]
    pub qos: Option<Sp<u8>>,
    /// Publish as a retained message.
    #[serde(default)]
    pub retain: Option<bool>,
}
