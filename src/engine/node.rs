//! What a node sees and says: the [`Packet`] a message is while it runs through a chain, the
//! [`NodeImpl`] trait every node kind implements, the [`Cx`] it runs in (clock, state, timers,
//! alarms, effects) and the [`Flow`] it decides; and the timers and awaited replies the
//! executor keeps for nodes.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rhai::{Dynamic, Map};

use crate::script::{Runtime, Vars};

use super::alarm::AlarmStore;
use super::effect::{Effect, EffectSink, Event};
use super::keyed::Keyed;

/// A message on its way through a chain: Rhai's three maps plus what nodes read often. It is
/// serializable because held messages (holds, delays, windows, awaited replies) are node state
/// that the live engine persists.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Packet {
    /// `msg`, `attr`, `meta`.
    pub vars: Vars,
    /// `meta.device`.
    pub device: Arc<str>,
    /// `meta.topic`.
    pub topic: Option<Arc<str>>,
    /// `meta.ts`.
    pub ts: i64,
    /// Started by an operator's action (an acknowledgement, a clear by hand), not by the
    /// device: such a message never runs a node that acts on devices
    /// ([`NodeImpl::acts_on_devices`]), wherever it goes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_operator: bool,
}

impl Packet {
    /// Reads a field of `msg`.
    pub fn field(&self, name: &str) -> Option<Dynamic> {
        self.vars
            .msg
            .read_lock::<Map>()
            .and_then(|m| m.get(name).cloned())
    }

    /// Changes `msg` in place (after taking it back from the effects it was shared with, see
    /// [`Packet::share_msg`]).
    pub fn with_msg<R>(&mut self, f: impl FnOnce(&mut Map) -> R) -> R {
        self.vars.own_msg();
        if !self.vars.msg.is_map() {
            self.vars.msg = Dynamic::from_map(Map::new());
        }
        let mut guard = self.vars.msg.write_lock::<Map>().expect("msg is a map");
        f(&mut guard)
    }

    /// Sets a field of `meta`.
    pub fn set_meta(&mut self, name: &str, value: Dynamic) {
        if let Some(mut m) = self.vars.meta.write_lock::<Map>() {
            m.insert(name.into(), value);
        }
    }

    /// `msg` as JSON-serializable data.
    pub fn msg(&self) -> &Dynamic {
        &self.vars.msg
    }

    /// `msg` for an effect that carries it (a WebSocket push, a publish, a notification),
    /// without copying it: `msg` becomes one value shared by the packet and its effects, and the
    /// packet copies it back only if a later node changes it ([`Vars::own_msg`]), so what an
    /// effect carries is the message as it was when the node ran.
    pub fn share_msg(&mut self) -> Dynamic {
        if !self.vars.msg.is_shared() {
            self.vars.msg = std::mem::take(&mut self.vars.msg).into_shared();
        }
        self.vars.msg.clone()
    }
}

/// Why a node did not simply pass a message on: the trace result `dry-run --trace` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Kept for later: a hold, a debounce, a delay, an awaited reply.
    Held,
    /// Left out by design: throttle, deadband, debounce `first`, an rpc cooldown, an alarm
    /// node with no transition to make.
    Suppressed,
    /// Ended here (a delay's `cancel_when`).
    Stopped,
}

/// What a node decided for a message.
pub enum Flow {
    /// Go on to the node's `next` (by default the next node in the list).
    Pass(Packet),
    /// Go on as `Pass`, with another trace result (an rpc suppressed by its cooldown passes on).
    PassAs(Why, Packet),
    /// A false filter: go to `else`, if any.
    Else(Packet),
    /// Go to this node (switch cases).
    Route(Option<usize>, Packet),
    /// The message stops here, for this reason (the trace result).
    Stop(Why),
    /// The node failed; the packet is the message as it entered the node.
    Error(String, Packet),
}

/// One kind of node, compiled. Each file of `src/rules/nodes/` implements it.
pub trait NodeImpl: Send + Sync {
    /// Runs the node on a message.
    fn run(&self, cx: &mut Cx<'_>, p: Packet) -> Flow;

    /// A timer this node set fell due. What it returns continues as [`NodeImpl::run`]'s would.
    fn fire(&self, _cx: &mut Cx<'_>, _key: &str, _tag: u64) -> Option<Flow> {
        None
    }

    /// A device replied to a command this node awaits (see [`Cx::await_reply`]).
    fn reply(&self, _cx: &mut Cx<'_>, _id: &str, _reply: Packet) -> Option<Flow> {
        None
    }

    /// An operator acknowledged or cleared by hand an alarm this node raised: `p` holds the
    /// alarm as `msg.alarm`. What it returns continues as [`NodeImpl::run`]'s would; `None`
    /// ends it here.
    fn operator(&self, _cx: &mut Cx<'_>, _t: crate::alarm::Transition, _p: Packet) -> Option<Flow> {
        None
    }

    /// True for a node whose effect reaches devices (`rpc`, `publish`): a message an operator
    /// started never runs it (an acknowledgement must not send a command again).
    fn acts_on_devices(&self) -> bool {
        false
    }

    /// Writes this node's state (what [`Cx::state`] holds) as data, for checkpoints and
    /// restarts. Nodes with state implement it with [`persist::save`].
    fn save(&self, _state: &(dyn Any + Send)) -> Option<serde_json::Value> {
        None
    }

    /// Reads state written by [`NodeImpl::save`]; `None` when it does not read as this node's.
    fn load(&self, _state: serde_json::Value) -> Option<Box<dyn Any + Send>> {
        None
    }

    /// Forgets per-key state idle for `idle` ms before `now` (see [`Keyed::sweep`]); returns
    /// how many entries went. Nodes whose entries only matter within a window (a throttle's
    /// `every`, a cooldown) drop them once it has passed, whatever `idle` says.
    fn sweep(&self, _state: &mut (dyn Any + Send), _now: i64, _idle: i64) -> usize {
        0
    }
}

/// What nodes read of the config, compiled once with the rules.
#[derive(Default)]
pub struct NodeConfig {
    /// Notification channel templates by name.
    pub channels: HashMap<String, ChannelTemplates>,
    /// The config's RPC command topic pattern (`site/{site}/device/{device}/command`).
    pub command_topic: Option<String>,
}

/// Subject and body templates of a notification channel.
#[derive(Clone, Default)]
pub struct ChannelTemplates {
    /// Subject.
    pub subject: Option<crate::script::Template>,
    /// Body.
    pub body: Option<crate::script::Template>,
    /// A webhook's body as JSON whose strings are templates.
    pub body_json: Option<crate::script::JsonTemplate>,
}

/// A command awaiting its reply: the rpc node that sent it, and the device it went to.
#[derive(Debug, Clone)]
pub(super) struct Await {
    pub(super) chain: usize,
    pub(super) node: usize,
    /// Empty only when restored from a snapshot written before replies were matched by device.
    pub(super) device: Arc<str>,
}

/// Timers order by due time, then by when they were (logically) set.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) due: i64,
    pub(super) order: u64,
    pub(super) seq: u64,
    pub(super) chain: usize,
    pub(super) node: usize,
    pub(super) key: Arc<str>,
    pub(super) tag: u64,
}

/// Most pending timers at once; past it, new timers are refused and counted as node errors
/// (no queue is unbounded).
pub const MAX_TIMERS: usize = 1_000_000;

/// What a node sees while it runs: the clock, its own state, timers, alarms, effects.
pub struct Cx<'a> {
    /// The clock time.
    pub now: i64,
    /// The Rhai runtime.
    pub rt: &'a mut Runtime,
    /// The alarm store.
    pub alarms: &'a mut AlarmStore,
    /// The chain's name.
    pub chain: &'a Arc<str>,
    /// The node's id.
    pub node: &'a Arc<str>,
    /// What nodes read of the config (channel templates, the command topic).
    pub config: &'a NodeConfig,
    pub(super) state: &'a mut Option<Box<dyn Any + Send>>,
    pub(super) timers: &'a mut BinaryHeap<Reverse<Timer>>,
    pub(super) seq: &'a mut u64,
    pub(super) awaits: &'a mut HashMap<Arc<str>, Await>,
    pub(super) id_prefix: &'a str,
    pub(super) chain_idx: usize,
    pub(super) node_idx: usize,
    pub(super) out: &'a mut dyn EffectSink,
    pub(super) max_keys: usize,
    pub(super) keys_evicted: &'a mut u64,
}

impl Cx<'_> {
    /// Emits an effect at the current time from this node.
    pub fn emit(&mut self, event: Event) {
        self.out.emit(Effect {
            event,
            ts: self.now,
            chain: self.chain.clone(),
            node: self.node.clone(),
        });
    }

    /// This node's state, created on first use.
    pub fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.state.as_ref().is_some_and(|s| s.is::<T>()) {
            *self.state = Some(Box::new(T::default()));
        }
        self.state
            .as_mut()
            .and_then(|s| s.downcast_mut::<T>())
            .expect("state was just set to T")
    }

    /// Sets `key`'s entry in this node's per-key state (the [`Keyed`] map `field` picks from the
    /// state), touched now, within the engine's `max_keys` (evictions are counted).
    pub fn insert_key<S: Default + Send + 'static, V>(
        &mut self,
        field: impl FnOnce(&mut S) -> &mut Keyed<V>,
        key: Arc<str>,
        value: V,
    ) {
        let (now, max) = (self.now, self.max_keys);
        let evicted = field(self.state::<S>()).insert(key, value, now, max);
        *self.keys_evicted += evicted as u64;
    }

    /// Sets a timer for this node at `due` (not before now). Returns an error when the engine
    /// holds [`MAX_TIMERS`] already.
    pub fn schedule(&mut self, due: i64, key: &str, tag: u64) -> Result<(), String> {
        let order = self.next_id();
        self.schedule_as(due, key, tag, order)
    }

    /// Sets a timer that ranks, among timers due at the same instant, as if set when `order`
    /// was drawn from [`Cx::next_id`]. A node that moves one armed timer forward instead of
    /// setting a new one per message (debounce) keeps "fire in the order set" this way.
    pub fn schedule_as(&mut self, due: i64, key: &str, tag: u64, order: u64) -> Result<(), String> {
        if self.timers.len() >= MAX_TIMERS {
            return Err(format!(
                "too many pending timers ({MAX_TIMERS}); timer refused"
            ));
        }
        *self.seq += 1;
        self.timers.push(Reverse(Timer {
            due: due.max(self.now),
            order,
            seq: *self.seq,
            chain: self.chain_idx,
            node: self.node_idx,
            key: key.into(),
            tag,
        }));
        Ok(())
    }

    /// Routes the `rpc_response` message of `device` whose `id` is `id` to this node's
    /// [`NodeImpl::reply`]. A reply with that id from another device is not it: ids can be
    /// guessed, and one device must not answer for another.
    pub fn await_reply(&mut self, id: &str, device: &Arc<str>) {
        self.awaits.insert(
            id.into(),
            Await {
                chain: self.chain_idx,
                node: self.node_idx,
                device: device.clone(),
            },
        );
    }

    /// Stops routing replies with this id (the wait timed out).
    pub fn forget_await(&mut self, id: &str) {
        self.awaits.remove(id);
    }

    /// A fresh number, unique in this engine (timer tags).
    pub fn next_id(&mut self) -> u64 {
        *self.seq += 1;
        *self.seq
    }

    /// A fresh RPC request id: the engine's id prefix (live: unique per run and shard, so ids
    /// never repeat across restarts) and a number.
    pub fn rpc_id(&mut self) -> String {
        let n = self.next_id();
        let mut s = String::with_capacity(self.id_prefix.len() + 20);
        s.push_str(self.id_prefix);
        s.push_str(itoa::Buffer::new().format(n));
        s
    }
}
