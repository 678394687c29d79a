//! `notify`: sends the message to notification channels. Subject and body come from the
//! channel's templates in the config; without them, an alarm message reads
//! `[WARNING] MotorOverload created on pump-3` with the alarm text as body, and any other
//! message `<chain> on <device>` with the message as JSON.

use crate::yaml::Sp;
use crate::rules::syntax::IdList;
use rhai::Map;

use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;

struct Notify {
    channels: Vec<String>,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["notify"],
    owns: &[],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// notify: the notification channels (names from the config) to send the message to.
    #[serde(default)]
    pub notify: Option<Sp<IdList>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let n = spec.notify.as_ref()?;
    let mut ok = true;
    if n.0.is_empty() {
        b.error(n.pos, "`notify` names no channel");
        ok = false;
    }
    let mut channels = Vec::new();
    // The channels' templates (from the config) may read anything.
    b.reads(true, true);
    for c in &n.0 {
        let c = if c.pos.line == 0 {
            crate::yaml::Sp {
                value: c.value.clone(),
                pos: n.pos,
            }
        } else {
            c.clone()
        };
        ok &= b.channel(&c);
        channels.push(c.value);
    }
    ok.then(|| Box::new(Notify { channels }) as Box<dyn NodeImpl>)
}

/// The default subject and body of an alarm notification:
/// `[WARNING] MotorOverload created on pump-3`, and the alarm text.
pub fn alarm_text(a: &Map) -> (String, String) {
    let get = |k: &str| a.get(k).map(|v| v.to_string()).unwrap_or_default();
    (
        crate::alarm::default_subject(
            &get("severity"),
            &get("type"),
            &get("transition"),
            &get("device"),
        ),
        get("message"),
    )
}

fn default_text(cx: &Cx<'_>, p: &Packet) -> (String, String) {
    let alarm = p.field("alarm").and_then(|a| a.try_cast::<Map>());
    match alarm {
        Some(a) => alarm_text(&a),
        None => (
            format!("{} on {}", cx.chain, p.device),
            serde_json::to_string(p.msg()).unwrap_or_default(),
        ),
    }
}

impl NodeImpl for Notify {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        for ch in &self.channels {
            let (mut subject, mut body) = default_text(cx, &p);
            if let Some(t) = cx.config.channels.get(ch).cloned() {
                if let Some(s) = &t.subject {
                    match s.render(cx.rt, &mut p.vars) {
                        Ok(s) => subject = s,
                        Err(e) => return Flow::Error(format!("channel `{ch}` subject: {e}"), p),
                    }
                }
                if let Some(b) = &t.body {
                    match b.render(cx.rt, &mut p.vars) {
                        Ok(b) => body = b,
                        Err(e) => return Flow::Error(format!("channel `{ch}` body: {e}"), p),
                    }
                }
                if let Some(j) = &t.body_json {
                    match j.render(cx.rt, &mut p.vars) {
                        Ok(v) => body = v.to_string(),
                        Err(e) => return Flow::Error(format!("channel `{ch}` body_json: {e}"), p),
                    }
                }
            }
            cx.emit(Event::Notify {
                channel: ch.clone(),
                device: p.device.clone(),
                subject,
                body,
                data: p.share_msg(),
            });
        }
        Flow::Pass(p)
    }
}
