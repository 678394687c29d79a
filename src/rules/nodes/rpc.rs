//! `rpc`: sends a command `{id, method, params}` to the device's command topic, at most once per
//! key per `cooldown` (a suppressed command emits nothing and the message passes on). With
//! `await`, the message waits for the device's reply (an `rpc_response` message with the same
//! `id`): the reply passes on; a timeout is this node's error.

use crate::rules::syntax::ExprSrc;
use crate::yaml::Sp;
use crate::yaml::SpMap;
use schemars::JsonSchema;
use serde::Deserialize;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use rhai::{Dynamic, Map};

use super::common::KeySel;
use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::{Expr, Template};
use crate::topic::default_command_topic;

struct Rpc {
    method: String,
    params: Vec<(String, Expr)>,
    topic: Option<Template>,
    qos: u8,
    cooldown: Option<i64>,
    await_: Option<i64>,
    key: KeySel,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["rpc"],
    owns: &["key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// rpc: send a command `{id, method, params}` to the device.
    #[serde(default)]
    pub rpc: Option<Sp<RpcSpec>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let r = spec.rpc.as_ref()?;
    let key = &head.key;
    let mut ok = true;
    if r.method.trim().is_empty() {
        b.error(r.method.pos, "the rpc method is empty");
        ok = false;
    }
    let mut params = Vec::new();
    for (k, e) in r.params.iter().flat_map(|p| p.value.0.iter()) {
        match b.expr(e) {
            Some(x) => params.push((k.value.clone(), x)),
            None => ok = false,
        }
    }
    let topic = b.opt_template(&r.topic);
    let cooldown = b.opt_duration(&r.cooldown);
    let key = KeySel::build(key, b);
    let qos = match &r.qos {
        Some(q) if q.value > 2 => {
            b.error(q.pos, "qos is 0, 1 or 2");
            ok = false;
            1
        }
        Some(q) => q.value,
        None => 1,
    };
    let await_ = b.opt_duration(&r.await_);
    // The config's command pattern is filled from `meta`.
    b.reads(true, false);
    let node = Rpc {
        method: r.method.value.clone(),
        params,
        topic: topic?,
        qos,
        cooldown: cooldown?,
        await_: await_?,
        key: key?,
    };
    ok.then(|| Box::new(node) as Box<dyn NodeImpl>)
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    last_sent: Keyed<i64>,
    /// Commands awaiting a reply: id → (timeout timer tag, the message that sent it).
    awaiting: HashMap<Arc<str>, (u64, Packet)>,
}

/// Fills a `{name}` command pattern from `meta` (device and topic captures).
fn fill_pattern(pattern: &str, p: &Packet) -> Result<String, String> {
    let meta = p.vars.meta.read_lock::<Map>();
    pattern
        .split('/')
        .map(|level| match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            Some(name) => meta
                .as_ref()
                .and_then(|m| m.get(name))
                .filter(|v| !v.is_unit())
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!("the command topic `{pattern}` needs `{{{name}}}`, which this message has no value for")
                }),
            None => Ok(level.to_string()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|levels| levels.join("/"))
}

impl NodeImpl for Rpc {
    super::common::persisted!(State);
    fn acts_on_devices(&self) -> bool {
        true
    }

    /// A key's cooldown entry decides nothing once the cooldown has passed: it goes then.
    /// Commands awaiting a reply are left to their timers.
    fn sweep(&self, state: &mut (dyn Any + Send), now: i64, idle: i64) -> usize {
        let window = self.cooldown.unwrap_or(0).min(idle);
        state
            .downcast_mut::<State>()
            .map_or(0, |s| s.last_sent.sweep(now, window, |_| false))
    }

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        let now = cx.now;
        if let Some(c) = self.cooldown {
            if cx
                .state::<State>()
                .last_sent
                .get(&key)
                .is_some_and(|t| now.saturating_sub(*t) < c)
            {
                return Flow::PassAs(Why::Suppressed, p);
            }
        }
        let mut params = Map::new();
        for (k, e) in &self.params {
            match e.eval(cx.rt, &mut p.vars) {
                Ok(v) => {
                    params.insert(k.as_str().into(), v);
                }
                Err(e) => return Flow::Error(format!("param `{k}`: {e}"), p),
            }
        }
        let topic = match &self.topic {
            Some(t) => match t.render(cx.rt, &mut p.vars) {
                Ok(t) => t,
                Err(e) => return Flow::Error(e, p),
            },
            None => match &cx.config.command_topic {
                Some(pattern) => match fill_pattern(pattern, &p) {
                    Ok(t) => t,
                    Err(e) => return Flow::Error(e, p),
                },
                None => default_command_topic(p.topic.as_deref(), &p.device),
            },
        };
        if self.cooldown.is_some() {
            cx.insert_key(|s: &mut State| &mut s.last_sent, key, now);
        }
        let id = cx.rpc_id();
        cx.emit(Event::Rpc {
            device: p.device.clone(),
            topic,
            id: id.clone(),
            method: self.method.clone(),
            params: Dynamic::from_map(params),
            qos: self.qos,
        });
        let Some(wait) = self.await_ else {
            return Flow::Pass(p);
        };
        let tag = cx.next_id();
        if let Err(e) = cx.schedule(cx.now.saturating_add(wait), &id, tag) {
            return Flow::Error(e, p);
        }
        cx.await_reply(&id, &p.device);
        cx.state::<State>().awaiting.insert(id.into(), (tag, p));
        Flow::Stop(Why::Held)
    }

    fn fire(&self, cx: &mut Cx<'_>, id: &str, tag: u64) -> Option<Flow> {
        let st = cx.state::<State>();
        if st.awaiting.get(id).is_none_or(|(t, _)| *t != tag) {
            return None;
        }
        let (_, p) = st.awaiting.remove(id)?;
        cx.forget_await(id);
        let wait = crate::duration::format(self.await_.unwrap_or(0));
        Some(Flow::Error(
            format!("no reply to `{}` (id {id}) within {wait}", self.method),
            p,
        ))
    }

    fn reply(&self, cx: &mut Cx<'_>, id: &str, reply: Packet) -> Option<Flow> {
        cx.state::<State>().awaiting.remove(id)?;
        Some(Flow::Pass(reply))
    }
}

/// `rpc`: a command to the device.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RpcSpec {
    /// The method name.
    pub method: Sp<String>,
    /// Parameters: `name: EXPR`.
    #[serde(default)]
    pub params: Option<Sp<SpMap<Sp<ExprSrc>>>>,
    /// The command topic, a template. Default: the source topic with its last level replaced
    /// by `command`, or the config's command pattern.
    #[serde(default)]
    pub topic: Option<Sp<String>>,
    /// MQTT QoS 0, 1 or 2 (default 1).
    #[serde(default)]
    pub qos: Option<Sp<u8>>,
    /// At most one command per key per this duration.
    #[serde(default)]
    pub cooldown: Option<Sp<String>>,
    /// Wait this long for the device's reply (same id on its rpc-response topic); the reply
    /// passes downstream, a timeout goes to `on_error`.
    #[serde(default, rename = "await")]
    pub await_: Option<Sp<String>>,
}
