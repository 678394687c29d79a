//! The executor: runs compiled chains on messages, owns per-node state, the alarm store, device
//! attributes and the timer queue, and emits [`effect::Effect`]s.
//!
//! Architecture invariant: the executor does no I/O and never reads the wall clock. Time moves
//! only when its harness calls [`Executor::advance_to`]: `dry-run` and `test` jump it to each
//! input's timestamp (the virtual clock), `run` to the wall clock. Every timer due on the way
//! fires first, in due order (ties: the order they were set), with its due time as the effect
//! time. That is why a dry-run is exact and deterministic.

pub mod alarm;
pub mod clock;
mod device;
pub mod effect;
mod keyed;
pub mod persist;
pub mod program;
pub mod stats;

use crate::message::Message;
use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The hasher of the maps keyed by device id that each message looks up (the devices, nodes'
/// per-key state): foldhash, seeded at random per process, where the standard SipHash cost ~3%
/// of a message's instructions. Device ids come from outside; a per-process seed keeps
/// collisions from being chosen in advance.
pub type DeviceHasher = foldhash::fast::RandomState;
use std::sync::Arc;

use rhai::{Dynamic, Map};

use crate::alarm::Alarm;
use crate::config::settings::StateLimits;
use crate::message::Kind;
use crate::script::{Runtime, Vars};
use alarm::AlarmStore;
use device::{entry_bytes, Source};
pub use device::{value_bytes, Device, MAX_DEVICE_ATTRIBUTE_BYTES, MAX_REPORTED_ATTRIBUTES};
use effect::{Effect, EffectSink, Event};
pub use keyed::Keyed;
use program::{Chain, Reads, RuleSet};

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

impl Why {
    /// The trace word (the same as the metrics' outcome).
    pub fn as_str(self) -> &'static str {
        stats::Outcome::from(self).as_str()
    }
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

/// A command awaiting its reply: the rpc node that sent it, and the device it went to.
#[derive(Debug, Clone)]
struct Await {
    chain: usize,
    node: usize,
    /// Empty only when restored from a snapshot written before replies were matched by device.
    device: Arc<str>,
}

/// What `meta` is built from, besides the packet.
struct Head<'a> {
    kind: Kind,
    captures: &'a [(String, String)],
}

/// What the bounds on state dropped since last taken ([`Executor::take_evictions`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evictions {
    /// Per-key node entries idle for `forget_after`.
    pub keys_forgotten: u64,
    /// Per-key node entries evicted, least recently used first, at `max_keys`.
    pub keys_evicted: u64,
    /// Devices idle for `forget_after`, with nothing of their own.
    pub devices_forgotten: u64,
    /// Devices with nothing of their own evicted, least recently seen first, at `max_devices`.
    pub devices_evicted: u64,
    /// Messages of new devices past `max_devices` with nothing to forget: run, but the device
    /// is not kept (its reported attributes are dropped).
    pub untracked: u64,
}

/// Timers order by due time, then by when they were (logically) set.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    due: i64,
    order: u64,
    seq: u64,
    chain: usize,
    node: usize,
    key: Arc<str>,
    tag: u64,
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
    /// The whole rule set (config-derived data such as channel templates).
    pub rules: &'a RuleSet,
    state: &'a mut Option<Box<dyn Any + Send>>,
    timers: &'a mut BinaryHeap<Reverse<Timer>>,
    seq: &'a mut u64,
    awaits: &'a mut HashMap<Arc<str>, Await>,
    id_prefix: &'a str,
    chain_idx: usize,
    node_idx: usize,
    out: &'a mut dyn EffectSink,
    max_keys: usize,
    keys_evicted: &'a mut u64,
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

/// The engine core: compiled rules plus all their state.
pub struct Executor {
    rules: Arc<RuleSet>,
    rt: Runtime,
    states: Vec<Option<Box<dyn Any + Send>>>,
    alarms: AlarmStore,
    devices: HashMap<Arc<str>, Device, DeviceHasher>,
    timers: BinaryHeap<Reverse<Timer>>,
    awaits: HashMap<Arc<str>, Await>,
    id_prefix: String,
    seq: u64,
    now: i64,
    /// `meta.kind` values, by `Kind as usize`, shared by every message.
    kind_names: [Dynamic; 4],
    /// The traversal stack, kept between messages.
    stack: Vec<(usize, Packet)>,
    /// Reported attribute values dropped at [`MAX_REPORTED_ATTRIBUTES`],
    /// [`MAX_DEVICE_ATTRIBUTE_BYTES`] or the engine's byte bound, since last taken.
    attributes_dropped: u64,
    /// Bytes of every device's attributes, reported and server-side ([`entry_bytes`]).
    attribute_bytes: usize,
    /// Some device's attributes changed since [`Executor::take_attributes`] last took them.
    attributes_changed: bool,
    limits: StateLimits,
    evictions: Evictions,
    /// When the next sweep of idle state is due (clock time).
    next_sweep: i64,
    /// Devices from the registry (never forgotten; not counted against `max_devices`).
    registered: usize,
    /// At `max_devices`, nothing was forgettable: a device only becomes forgettable again at a
    /// sweep, so until then a new device does not scan them all again.
    devices_full: bool,
    /// What each chain and node did, and the counters of the rules in force.
    stats: Arc<stats::RuleStats>,
    bound: Arc<stats::Bound>,
    /// A monotonic clock in nanoseconds, if the harness wants chain durations measured. It
    /// only measures: no result depends on it.
    stopwatch: Option<fn() -> u64>,
}

impl Executor {
    /// An executor for a rule set, with a device registry, at clock time `now`.
    pub fn new(rules: Arc<RuleSet>, devices: HashMap<Arc<str>, Device>, now: i64) -> Self {
        let devices_registered = devices.values().filter(|d| d.registered).count();
        let states = rules
            .chains
            .iter()
            .flat_map(|c| c.nodes.iter().map(|_| None))
            .collect();
        Executor {
            rt: Runtime::new(rules.engine.clone()),
            rules,
            states,
            alarms: AlarmStore::default(),
            devices: devices.into_iter().collect(),
            timers: BinaryHeap::new(),
            awaits: HashMap::new(),
            id_prefix: String::new(),
            seq: 0,
            now,
            kind_names: [
                Kind::Telemetry,
                Kind::Attributes,
                Kind::Status,
                Kind::RpcResponse,
            ]
            .map(|k| Dynamic::from(k.as_str())),
            stack: Vec::new(),
            attributes_dropped: 0,
            attribute_bytes: 0,
            attributes_changed: false,
            limits: StateLimits::default(),
            evictions: Evictions::default(),
            next_sweep: now,
            registered: devices_registered,
            devices_full: false,
            bound: Arc::default(),
            stats: Arc::default(),
            stopwatch: None,
        }
        .bound_to_rules()
    }

    fn bound_to_rules(mut self) -> Self {
        self.bound = self.stats.bind(&self.rules);
        self
    }

    /// Counts into `stats` from now on (the harness made it, to read it while this runs).
    pub fn share_stats(&mut self, stats: Arc<stats::RuleStats>) {
        self.stats = stats;
        self.bound = self.stats.bind(&self.rules);
    }

    /// Measures how long each message takes through each chain with this monotonic clock
    /// (nanoseconds), into [`stats::ChainCounts::duration`].
    pub fn set_stopwatch(&mut self, now_ns: fn() -> u64) {
        self.stopwatch = Some(now_ns);
    }

    /// The devices it knows: from the registry, and learned from messages.
    pub fn devices(&self) -> impl Iterator<Item = (&Arc<str>, &Device)> {
        self.devices.iter()
    }

    /// One device.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    /// Sets server-side attributes of a device (an operator, through the API): the next
    /// message of the device sees them in `attr`. A unit value removes one. A device not known
    /// yet is learned. All or nothing: the reason, when the changes would pass the device's
    /// bounds ([`MAX_REPORTED_ATTRIBUTES`], [`MAX_DEVICE_ATTRIBUTE_BYTES`]), the engine's
    /// `max_attribute_bytes` or, for a new device, `max_devices`.
    pub fn set_server_attributes(&mut self, device: &str, changes: Map) -> Result<(), String> {
        if !self.devices.contains_key(device) && !self.make_room() {
            return Err(format!(
                "the engine tracks engine.max_devices devices and none can be forgotten; {device} is not kept"
            ));
        }
        let room = self
            .limits
            .max_attribute_bytes
            .saturating_sub(self.attribute_bytes);
        let d = self.devices.entry(Arc::from(device)).or_default();
        let grew = d.set_server(changes, room);
        // A device made for a refused change has nothing of its own: it goes again.
        if grew.is_err() && d.forgettable() && d.last_seen == 0 {
            self.devices.remove(device);
        }
        self.attribute_bytes = self.attribute_bytes.saturating_add_signed(grew?);
        self.attributes_changed = true;
        Ok(())
    }

    /// Every device's attributes, when one changed since the last call: what a checkpoint
    /// writes apart from the rest of the state, so that a checkpoint costs them only when they
    /// changed. Given back with [`Executor::attributes_unsaved`] when it could not be written.
    pub fn take_attributes(&mut self) -> Option<persist::SavedAttributes> {
        std::mem::take(&mut self.attributes_changed).then(|| self.saved_attributes())
    }

    /// Every device's reported and server-side attributes, as data.
    fn saved_attributes(&self) -> persist::SavedAttributes {
        let of = |m: fn(&Device) -> &Map| {
            self.devices
                .iter()
                .filter(|(_, d)| !m(d).is_empty())
                .map(|(id, d)| (id.to_string(), Dynamic::from_map(m(d).clone())))
                .collect()
        };
        persist::SavedAttributes {
            reported: of(|d| &d.reported),
            server: of(|d| &d.server),
        }
    }

    /// The attributes must be written again (a checkpoint that failed, a new state file).
    pub fn attributes_unsaved(&mut self) {
        self.attributes_changed = true;
    }

    /// Sets the bounds on state (default [`Limits::default`]).
    pub fn set_limits(&mut self, limits: StateLimits) {
        self.limits = limits;
    }

    /// What the bounds dropped since the last call (the harness counts and logs it).
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evictions)
    }

    /// How many devices it learned from messages (tracked beyond the registry): what
    /// `max_devices` bounds.
    pub fn learned_devices(&self) -> usize {
        self.devices.len() - self.registered
    }

    /// Sweeps idle state when due: a sixteenth of `forget_after` apart (between a second and
    /// an hour), so nothing stays much past its time and a sweep is rare.
    fn maybe_sweep(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        let every = (self.limits.forget_after / 16).clamp(1_000, 3_600_000);
        self.next_sweep = self.now.saturating_add(every);
        self.sweep();
    }

    /// Forgets what has been idle for `forget_after`: per-key node entries (each node decides
    /// what it must keep) and devices with nothing of their own (see [`Device::forgettable`]),
    /// no alarm and no message since.
    pub fn sweep(&mut self) {
        let (now, idle) = (self.now, self.limits.forget_after);
        let rules = self.rules.clone();
        for (slot, (ci, ni)) in Self::slot_names(&rules).into_iter().enumerate() {
            if let Some(state) = self.states[slot].as_deref_mut() {
                let n = rules.chains[ci].nodes[ni].imp.sweep(state, now, idle);
                self.evictions.keys_forgotten += n as u64;
            }
        }
        let alarmed = self.alarmed_devices();
        let n = self.forget_devices_seen_before(now.saturating_sub(idle), &alarmed);
        self.evictions.devices_forgotten += n as u64;
        self.devices_full = false;
    }

    /// Forgets the devices last seen before `cut` that have nothing of their own and no alarm;
    /// returns how many.
    fn forget_devices_seen_before(
        &mut self,
        cut: i64,
        alarmed: &std::collections::HashSet<String>,
    ) -> usize {
        let before = self.devices.len();
        self.devices.retain(|id, d| {
            !(d.forgettable() && d.last_seen < cut && !alarmed.contains(id.as_ref()))
        });
        before - self.devices.len()
    }

    /// Devices with an alarm record: never forgotten (the alarm names them).
    fn alarmed_devices(&self) -> std::collections::HashSet<String> {
        self.alarms.iter().map(|a| a.device.clone()).collect()
    }

    /// Makes room for a new device at `max_devices`: forgets the least recently seen eighth of
    /// the forgettable ones. Returns whether there is room now.
    fn make_room(&mut self) -> bool {
        let max = self.limits.max_devices.max(1);
        if self.learned_devices() < max {
            return true;
        }
        if self.devices_full {
            return false;
        }
        let alarmed = self.alarmed_devices();
        let mut seen: Vec<i64> = self
            .devices
            .iter()
            .filter(|(id, d)| d.forgettable() && !alarmed.contains(id.as_ref()))
            .map(|(_, d)| d.last_seen)
            .collect();
        if !seen.is_empty() {
            let n = (max / 8 + 1).min(seen.len());
            let (_, cut, _) = seen.select_nth_unstable(n - 1);
            let cut = cut.saturating_add(1);
            let n = self.forget_devices_seen_before(cut, &alarmed);
            self.evictions.devices_evicted += n as u64;
        }
        self.devices_full = self.learned_devices() >= max;
        !self.devices_full
    }

    /// The clock time.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Prefixes every RPC id from now on (live: unique per run and shard).
    pub fn set_id_prefix(&mut self, prefix: impl Into<String>) {
        self.id_prefix = prefix.into();
    }

    /// The alarm store.
    pub fn alarms(&self) -> &AlarmStore {
        &self.alarms
    }

    /// How many timers are pending.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// The (chain, node) of every slot, in slot order.
    fn slot_names(rules: &RuleSet) -> Vec<(usize, usize)> {
        rules
            .chains
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| (0..c.nodes.len()).map(move |ni| (ci, ni)))
            .collect()
    }

    /// Where (chain name, node id) lives in `rules`.
    fn locate(rules: &RuleSet) -> HashMap<(&str, &str), (usize, usize)> {
        let mut m = HashMap::new();
        for (ci, c) in rules.chains.iter().enumerate() {
            for (ni, n) in c.nodes.iter().enumerate() {
                m.insert((c.name.as_ref(), n.id.as_ref()), (ci, ni));
            }
        }
        m
    }

    /// An operator acknowledges an alarm (`by`: the name they gave). The transition is always
    /// emitted (log, the `alarms` room, the registry); it continues down the chain only from an
    /// alarm node that lists `acknowledged` in its `pass`, and never into an `rpc` or `publish`.
    pub fn acknowledge(
        &mut self,
        id: &str,
        by: Option<&str>,
        out: &mut dyn EffectSink,
    ) -> Result<Alarm, crate::alarm::AckError> {
        let alarm = match self.alarms.acknowledge(id, by) {
            Some(a) => a.clone(),
            None => {
                return Err(match self.alarms.by_id(id) {
                    Some(a) => crate::alarm::AckError::AlreadyAcknowledged(id.into(), a.status),
                    None => crate::alarm::AckError::NotFound(id.into()),
                })
            }
        };
        self.operator_transition(&alarm, crate::alarm::Transition::Acknowledged, out);
        Ok(alarm)
    }

    /// An operator clears an active alarm by hand (`by`: the name they gave): the same
    /// transition as a rule's clear, emitted, and continued from the alarm node that raised it
    /// if that node passes `cleared` (see [`Executor::acknowledge`]).
    pub fn clear_alarm(
        &mut self,
        id: &str,
        by: Option<&str>,
        out: &mut dyn EffectSink,
    ) -> Result<Alarm, crate::alarm::AckError> {
        let alarm = self.alarms.clear_by_id(id, self.now, by)?.clone();
        self.operator_transition(&alarm, crate::alarm::Transition::Cleared, out);
        Ok(alarm)
    }

    /// Emits an operator's transition of an alarm, and continues from the alarm node that raised
    /// it where that node passes it on ([`NodeImpl::operator`]). The message carries the
    /// device's last topic and captures as `meta`, and never runs a node that acts on devices.
    fn operator_transition(
        &mut self,
        alarm: &Alarm,
        transition: crate::alarm::Transition,
        out: &mut dyn EffectSink,
    ) {
        let rules = self.rules.clone();
        let at = alarm
            .origin
            .as_ref()
            .and_then(|(c, n)| Self::locate(&rules).get(&(c.as_str(), n.as_str())).copied());
        let (chain, node): (Arc<str>, Arc<str>) = match at {
            Some((ci, ni)) => (
                rules.chains[ci].name.clone(),
                rules.chains[ci].nodes[ni].id.clone(),
            ),
            None => ("".into(), "".into()),
        };
        let device: Arc<str> = alarm.device.as_str().into();
        out.emit(Effect {
            event: Event::alarm(device.clone(), alarm.clone(), transition),
            ts: self.now,
            chain,
            node,
        });
        if let Some((ci, ni)) = at {
            let source = self
                .devices
                .entry(device.clone())
                .or_default()
                .source
                .clone();
            let mut msg = Map::new();
            msg.insert("alarm".into(), Dynamic::from_map(alarm.to_map(transition)));
            let mut p = Packet {
                vars: Vars {
                    msg: Dynamic::from_map(msg),
                    attr: Dynamic::UNIT,
                    meta: Dynamic::UNIT,
                },
                device,
                topic: source.as_ref().map(|s| s.topic.clone()),
                ts: self.now,
                by_operator: true,
            };
            let head = Head {
                kind: source.as_ref().map_or(Kind::Telemetry, |s| s.kind),
                captures: source.as_ref().map_or(&[][..], |s| &s.captures[..]),
            };
            self.fill(
                &mut p,
                &head,
                Reads {
                    meta: true,
                    attr: true,
                },
            );
            let flow = {
                let mut cx = self.cx(&rules, ci, ni, out);
                rules.chains[ci].nodes[ni]
                    .imp
                    .operator(&mut cx, transition, p)
            };
            if let Some(flow) = flow {
                self.follow(&rules, ci, ni, flow, out);
            }
        }
    }

    /// Everything but the rules, as data (see [`persist`]).
    pub fn snapshot(&self) -> persist::Snapshot {
        let a = self.saved_attributes();
        persist::Snapshot {
            reported: a.reported,
            server: a.server,
            ..self.snapshot_without_attributes()
        }
    }

    /// Everything but the rules and the devices' attributes, which a checkpoint writes apart
    /// ([`Executor::take_attributes`]).
    pub fn snapshot_without_attributes(&self) -> persist::Snapshot {
        let rules = &self.rules;
        let name = |ci: usize, ni: usize| {
            let c = &rules.chains[ci];
            (c.name.to_string(), c.nodes[ni].id.to_string())
        };
        let mut nodes = Vec::new();
        for (slot, (ci, ni)) in Self::slot_names(rules).into_iter().enumerate() {
            let Some(state) = self.states[slot].as_deref() else {
                continue;
            };
            if let Some(v) = rules.chains[ci].nodes[ni].imp.save(state) {
                let (chain, node) = name(ci, ni);
                nodes.push(persist::SavedNode {
                    chain,
                    node,
                    state: v,
                });
            }
        }
        let timers = self
            .timers
            .iter()
            .map(|Reverse(t)| {
                let (chain, node) = name(t.chain, t.node);
                persist::SavedTimer {
                    due: t.due,
                    order: t.order,
                    chain,
                    node,
                    key: t.key.to_string(),
                    tag: t.tag,
                }
            })
            .collect();
        let awaits = self
            .awaits
            .iter()
            .map(|(id, a)| {
                let (chain, node) = name(a.chain, a.node);
                persist::SavedAwait {
                    id: id.to_string(),
                    chain,
                    node,
                    device: a.device.to_string(),
                }
            })
            .collect();
        persist::Snapshot {
            version: persist::VERSION,
            now: self.now,
            seq: self.seq,
            nodes,
            timers,
            awaits,
            alarms: self.alarms.iter().cloned().collect(),
            reported: Vec::new(),
            server: Vec::new(),
            attributes_inline: false,
        }
    }

    /// Takes over a snapshot's state (after a restart): node state and timers of nodes that
    /// still exist, every alarm, the reported attributes over the registry's. The clock does not
    /// move back; timers that fell due while the engine was down fire on the next
    /// [`Executor::advance_to`].
    pub fn restore(&mut self, snap: persist::Snapshot) -> persist::Carried {
        let rules = self.rules.clone();
        let at = Self::locate(&rules);
        let mut carried = persist::Carried::default();
        for n in snap.nodes {
            let Some(&(ci, ni)) = at.get(&(n.chain.as_str(), n.node.as_str())) else {
                carried.dropped_nodes += 1;
                continue;
            };
            match rules.chains[ci].nodes[ni].imp.load(n.state) {
                Some(state) => {
                    self.states[rules.chains[ci].first_slot + ni] = Some(state);
                    carried.nodes += 1;
                }
                None => carried.dropped_nodes += 1,
            }
        }
        for t in snap.timers {
            let Some(&(ci, ni)) = at.get(&(t.chain.as_str(), t.node.as_str())) else {
                carried.dropped_timers += 1;
                continue;
            };
            self.timers.push(Reverse(Timer {
                due: t.due,
                order: t.order,
                seq: t.order,
                chain: ci,
                node: ni,
                key: t.key.into(),
                tag: t.tag,
            }));
            carried.timers += 1;
        }
        for a in snap.awaits {
            if let Some(&(ci, ni)) = at.get(&(a.chain.as_str(), a.node.as_str())) {
                self.awaits.insert(
                    a.id.into(),
                    Await {
                        chain: ci,
                        node: ni,
                        device: a.device.into(),
                    },
                );
            }
        }
        self.alarms.restore(snap.alarms);
        // Read from inside the shard's record (written before attributes had their own): the
        // next checkpoint writes them to their own record.
        self.attributes_changed |= snap.attributes_inline;
        for (id, reported) in snap.reported {
            let Some(reported) = reported.try_cast::<Map>() else {
                continue;
            };
            let d = self.devices.entry(id.into()).or_default();
            d.reported_bytes = d.overlay(&reported);
            self.attribute_bytes += d.reported_bytes;
            d.reported = reported;
        }
        for (id, server) in snap.server {
            if let Some(server) = server.try_cast::<Map>() {
                // What was kept before is kept, past today's bounds if they were lowered.
                let d = self.devices.entry(id.into()).or_default();
                d.server_bytes = d.overlay(&server);
                self.attribute_bytes += d.server_bytes;
                d.server = server;
            }
        }
        self.seq = self.seq.max(snap.seq);
        self.now = self.now.max(snap.now);
        carried
    }

    /// Swaps in a new rule set (a hot reload). Node state, timers and awaited replies follow
    /// their (chain name, node id); those of nodes that are gone are dropped. A node whose
    /// kind changed keeps nothing usable: [`Cx::state`] starts it fresh.
    pub fn reload(&mut self, rules: Arc<RuleSet>) -> persist::Carried {
        let old = std::mem::replace(&mut self.rules, rules.clone());
        self.rt = Runtime::new(rules.engine.clone());
        self.bound = self.stats.bind(&rules);
        let at = Self::locate(&rules);
        let mut carried = persist::Carried::default();
        let mut states: Vec<Option<Box<dyn Any + Send>>> =
            Self::slot_names(&rules).iter().map(|_| None).collect();
        for (slot, (ci, ni)) in Self::slot_names(&old).into_iter().enumerate() {
            let Some(state) = self.states[slot].take() else {
                continue;
            };
            let (c, n) = (&old.chains[ci], &old.chains[ci].nodes[ni]);
            match at.get(&(c.name.as_ref(), n.id.as_ref())) {
                Some(&(nci, nni)) => {
                    states[rules.chains[nci].first_slot + nni] = Some(state);
                    carried.nodes += 1;
                }
                None => carried.dropped_nodes += 1,
            }
        }
        self.states = states;
        let remap = |ci: usize, ni: usize| {
            let c = &old.chains[ci];
            at.get(&(c.name.as_ref(), c.nodes[ni].id.as_ref())).copied()
        };
        let timers = std::mem::take(&mut self.timers);
        for Reverse(mut t) in timers.into_vec() {
            match remap(t.chain, t.node) {
                Some((ci, ni)) => {
                    t.chain = ci;
                    t.node = ni;
                    self.timers.push(Reverse(t));
                    carried.timers += 1;
                }
                None => carried.dropped_timers += 1,
            }
        }
        self.awaits = std::mem::take(&mut self.awaits)
            .into_iter()
            .filter_map(|(id, a)| {
                remap(a.chain, a.node).map(|(chain, node)| {
                    (
                        id,
                        Await {
                            chain,
                            node,
                            device: a.device,
                        },
                    )
                })
            })
            .collect();
        carried
    }

    /// A second executor for other rules that starts where this one is: the same device
    /// registry, limits and clock, and this one's state carried by (chain name, node id) as a
    /// reload carries it (node state, timers, awaited replies, alarms, attributes). From then on
    /// the two share nothing: a shadow of the live rules (`run`'s shadow mode) is one.
    pub fn fork(&self, rules: Arc<RuleSet>) -> (Executor, persist::Carried) {
        let registry: HashMap<Arc<str>, Device> = self
            .devices
            .iter()
            .filter(|(_, d)| d.registered)
            .map(|(id, d)| (id.clone(), Device::new(d.type_.clone(), d.registry.clone())))
            .collect();
        let mut e = Executor::new(rules, registry, self.now);
        e.limits = self.limits;
        let carried = e.restore(self.snapshot());
        (e, carried)
    }

    /// The due time of the earliest pending timer.
    pub fn next_due(&self) -> Option<i64> {
        self.timers.peek().map(|t| t.0.due)
    }

    /// Moves the clock to `to` (never backwards), firing every timer due at or before it.
    pub fn advance_to(&mut self, to: i64, out: &mut dyn EffectSink) {
        while let Some(Reverse(t)) = self.timers.peek() {
            if t.due > to {
                break;
            }
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            self.now = self.now.max(t.due);
            let rules = self.rules.clone();
            let chain = &rules.chains[t.chain];
            let node = &chain.nodes[t.node];
            let mut cx = self.cx(&rules, t.chain, t.node, out);
            if let Some(flow) = node.imp.fire(&mut cx, &t.key, t.tag) {
                self.follow(&rules, t.chain, t.node, flow, out);
            }
        }
        self.now = self.now.max(to);
    }

    fn cx<'a>(
        &'a mut self,
        rules: &'a RuleSet,
        ci: usize,
        ni: usize,
        out: &'a mut dyn EffectSink,
    ) -> Cx<'a> {
        let chain = &rules.chains[ci];
        let slot = chain.first_slot + ni;
        Cx {
            now: self.now,
            rt: &mut self.rt,
            alarms: &mut self.alarms,
            chain: &chain.name,
            node: &chain.nodes[ni].id,
            rules,
            state: &mut self.states[slot],
            timers: &mut self.timers,
            seq: &mut self.seq,
            awaits: &mut self.awaits,
            id_prefix: &self.id_prefix,
            chain_idx: ci,
            node_idx: ni,
            out,
            max_keys: self.limits.max_keys,
            keys_evicted: &mut self.evictions.keys_evicted,
        }
    }

    /// How many reported attribute keys were dropped at [`MAX_REPORTED_ATTRIBUTES`] since the
    /// last call (the harness counts and logs them).
    pub fn take_attributes_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.attributes_dropped)
    }

    /// Runs every matching chain on a message, at the current clock time.
    pub fn process(&mut self, m: Message, out: &mut dyn EffectSink) {
        self.maybe_sweep();
        let now = self.now;
        // Past `max_devices` with nothing to forget, a new device's message still runs, but
        // the device is not kept: what it reported is gone after this message. (A known device
        // costs one lookup, as before the bound.)
        let mut untracked = None;
        let device = match self.devices.get_mut(&m.device) {
            Some(d) => d,
            None => {
                if !self.make_room() {
                    self.evictions.untracked += 1;
                    untracked = Some(m.device.clone());
                }
                self.devices.entry(m.device.clone()).or_default()
            }
        };
        device.last_seen = now;
        if let Some(topic) = &m.topic {
            // Nearly always the same as last time: compared, not copied.
            if device
                .source
                .as_ref()
                .is_none_or(|s| s.topic != *topic || s.kind != m.kind)
            {
                device.source = Some(Box::new(Source {
                    topic: topic.clone(),
                    kind: m.kind,
                    captures: m.captures.clone(),
                }));
            }
        }
        if matches!(m.kind, Kind::Attributes | Kind::Status) {
            let mut attrs = device.take_attrs();
            for (k, v) in &m.payload {
                let old = device.reported.get(k).map(|o| entry_bytes(k, o));
                let new = entry_bytes(k, v);
                let grows = new.saturating_sub(old.unwrap_or(0));
                if (old.is_none() && device.reported.len() >= MAX_REPORTED_ATTRIBUTES)
                    || device.reported_bytes + grows > MAX_DEVICE_ATTRIBUTE_BYTES
                    || self.attribute_bytes + grows > self.limits.max_attribute_bytes
                {
                    self.attributes_dropped += 1;
                    continue;
                }
                if !device.server.contains_key(k) {
                    attrs.insert(k.clone(), v.clone());
                }
                device.reported.insert(k.clone(), v.clone());
                self.attributes_changed = true;
                let was = old.unwrap_or(0);
                device.reported_bytes = device.reported_bytes + new - was;
                self.attribute_bytes = self.attribute_bytes + new - was;
            }
            device.put_attrs(attrs);
        }
        let device_type = device.type_.clone();
        // `meta` and `attr` are built only when a chain the message enters reads them.
        let mut packet = Packet {
            vars: Vars {
                msg: Dynamic::from_map(m.payload),
                attr: Dynamic::UNIT,
                meta: Dynamic::UNIT,
            },
            device: m.device,
            topic: m.topic,
            ts: m.ts,
            by_operator: false,
        };
        let head = Head {
            kind: m.kind,
            captures: &m.captures,
        };
        let rules = self.rules.clone();
        if m.kind == Kind::RpcResponse {
            let id = packet.field("id").map(|v| v.to_string());
            let from = |a: &Await| a.device.is_empty() || a.device == packet.device;
            let awaited = id
                .as_deref()
                .filter(|id| self.awaits.get(*id).is_some_and(from))
                .and_then(|id| self.awaits.remove(id));
            if let Some(Await {
                chain: ci,
                node: ni,
                ..
            }) = awaited
            {
                let mut reply = packet.clone();
                self.fill(
                    &mut reply,
                    &head,
                    Reads {
                        meta: true,
                        attr: true,
                    },
                );
                let flow = {
                    let mut cx = self.cx(&rules, ci, ni, out);
                    rules.chains[ci].nodes[ni].imp.reply(
                        &mut cx,
                        id.as_deref().unwrap_or(""),
                        reply,
                    )
                };
                if let Some(flow) = flow {
                    self.follow(&rules, ci, ni, flow, out);
                }
            }
        }
        // The chains this message enters; the last one gets the packet, the others a copy.
        let mut last: Option<usize> = None;
        for (ci, chain) in rules.chains.iter().enumerate() {
            if chain.nodes.is_empty()
                || !chain
                    .on
                    .matches(m.kind, device_type.as_deref(), packet.topic.as_deref())
            {
                continue;
            }
            self.fill(&mut packet, &head, chain.reads);
            if let Some(when) = &chain.on.when {
                match when.eval_bool(&mut self.rt, &mut packet.vars) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        out.emit(Effect {
                            event: Event::Error {
                                device: packet.device.clone(),
                                error: format!("on.when: {e}"),
                            },
                            ts: self.now,
                            chain: chain.name.clone(),
                            node: "on".into(),
                        });
                        continue;
                    }
                }
            }
            if let Some(prev) = last.replace(ci) {
                self.run_chain(&rules, prev, packet.clone(), out);
            }
        }
        if let Some(ci) = last {
            self.run_chain(&rules, ci, packet, out);
        }
        if let Some(id) = untracked {
            if let Some(d) = self.devices.remove(&id) {
                self.attribute_bytes = self
                    .attribute_bytes
                    .saturating_sub(d.reported_bytes + d.server_bytes);
            }
        }
    }

    /// Builds the packet's `meta` and `attr`, if `reads` wants them and they are not built yet.
    fn fill(&mut self, p: &mut Packet, head: &Head<'_>, reads: Reads) {
        let want_meta = reads.meta && p.vars.meta.is_unit();
        let want_attr = reads.attr && p.vars.attr.is_unit();
        if !want_meta && !want_attr {
            return;
        }
        let Some(device) = self.devices.get_mut(&p.device) else {
            return;
        };
        if want_attr {
            p.vars.attr = device.attrs.clone();
        }
        if want_meta {
            let device_type = device.type_.clone();
            let name = &p.device;
            let mut meta = device
                .meta_base
                .get_or_insert_with(|| {
                    let mut b = Map::new();
                    b.insert("device".into(), Dynamic::from(name.to_string()));
                    b.insert(
                        "device_type".into(),
                        device_type
                            .as_ref()
                            .map_or(Dynamic::UNIT, |t| Dynamic::from(t.to_string())),
                    );
                    b
                })
                .clone();
            meta.insert("kind".into(), self.kind_names[head.kind as usize].clone());
            meta.insert(
                "topic".into(),
                p.topic
                    .as_ref()
                    .map_or(Dynamic::UNIT, |t| Dynamic::from(t.to_string())),
            );
            meta.insert("ts".into(), p.ts.into());
            for (k, v) in head.captures {
                meta.insert(k.as_str().into(), v.clone().into());
            }
            p.vars.meta = Dynamic::from_map(meta);
        }
    }

    /// Runs a message through chain `ci`, counting it (and timing it, with a stopwatch).
    fn run_chain(&mut self, rules: &RuleSet, ci: usize, p: Packet, out: &mut dyn EffectSink) {
        // Indexed each time rather than holding an `Arc` clone: two atomic operations per chain
        // and message saved (the bound counters only change at a reload, never inside a run).
        if let Some(c) = self.bound.get(ci) {
            c.0.entered();
        }
        match self.stopwatch {
            None => self.run_from(rules, ci, 0, p, out),
            Some(now) => {
                let t0 = now();
                self.run_from(rules, ci, 0, p, out);
                if let Some(c) = self.bound.get(ci) {
                    c.0.duration.observe_ns(now().saturating_sub(t0));
                }
            }
        }
    }

    /// Runs chain `ci` from node `start` (depth-first, in list order).
    fn run_from(
        &mut self,
        rules: &RuleSet,
        ci: usize,
        start: usize,
        p: Packet,
        out: &mut dyn EffectSink,
    ) {
        let mut stack = std::mem::take(&mut self.stack);
        let base = stack.len();
        stack.push((start, p));
        // Asked once per run, not per node: tracing is off for nearly every message.
        let tracing = out.wants_trace();
        let trace_messages = tracing && out.wants_trace_messages();
        while stack.len() > base {
            let Some((ni, p)) = stack.pop() else { break };
            let chain = &rules.chains[ci];
            let node = &chain.nodes[ni];
            let keep = node.on_error.is_some() && node.kind.mutates();
            let backup = keep.then(|| p.clone());
            let device = tracing.then(|| p.device.clone());
            // A live trace wants the message as it entered the node (dry-run's trace does not).
            let entered = trace_messages.then(|| p.vars.msg.clone());
            let mut flow = if p.by_operator && node.imp.acts_on_devices() {
                Flow::Stop(Why::Suppressed)
            } else {
                let mut cx = self.cx(rules, ci, ni, out);
                node.imp.run(&mut cx, p)
            };
            if let (Some(b), Flow::Error(_, p)) = (backup, &mut flow) {
                *p = b;
            }
            let outcome = stats::Outcome::of(&flow, node.else_.is_some());
            if let Some(n) = self.bound.get(ci).and_then(|c| c.1.get(ni)) {
                n.count(outcome);
            }
            if let Some(device) = device {
                out.emit(Effect {
                    event: Event::Node {
                        device,
                        result: outcome.as_str(),
                        msg: entered,
                    },
                    ts: self.now,
                    chain: chain.name.clone(),
                    node: node.id.clone(),
                });
            }
            self.push_targets(chain, ni, flow, &mut stack, out);
        }
        self.stack = stack;
    }

    /// Continues after a timer's flow.
    fn follow(
        &mut self,
        rules: &RuleSet,
        ci: usize,
        ni: usize,
        flow: Flow,
        out: &mut dyn EffectSink,
    ) {
        let mut stack = Vec::new();
        self.push_targets(&rules.chains[ci], ni, flow, &mut stack, out);
        while let Some((next, p)) = stack.pop() {
            self.run_from(rules, ci, next, p, out);
        }
    }

    fn push_targets(
        &self,
        chain: &Chain,
        ni: usize,
        flow: Flow,
        stack: &mut Vec<(usize, Packet)>,
        out: &mut dyn EffectSink,
    ) {
        let node = &chain.nodes[ni];
        match flow {
            Flow::Pass(p) | Flow::PassAs(_, p) => {
                // Reversed so that the first target runs first (depth-first, list order).
                if let Some((first, rest)) = node.next.split_first() {
                    for t in rest.iter().rev() {
                        stack.push((*t, p.clone()));
                    }
                    stack.push((*first, p));
                }
            }
            Flow::Else(p) => {
                if let Some(t) = node.else_ {
                    stack.push((t, p));
                }
            }
            Flow::Route(Some(t), p) => stack.push((t, p)),
            Flow::Route(None, _) | Flow::Stop(_) => {}
            Flow::Error(error, mut p) => {
                out.emit(Effect {
                    event: Event::Error {
                        device: p.device.clone(),
                        error: error.clone(),
                    },
                    ts: self.now,
                    chain: chain.name.clone(),
                    node: node.id.clone(),
                });
                if let Some(t) = node.on_error {
                    p.set_meta("error", error.into());
                    stack.push((t, p));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_parse_into_rhai_values() {
        let m = crate::message::parse_payload(br#"{"i": 2, "f": 2.5, "b": true, "s": "x\"y", "n": null, "a": [1, {"k": 1}], "big": 18446744073709551615}"#).unwrap();
        assert_eq!(m["i"].as_int(), Ok(2));
        assert_eq!(m["f"].as_float(), Ok(2.5));
        assert_eq!(m["b"].as_bool(), Ok(true));
        assert_eq!(m["s"].to_string(), "x\"y");
        assert!(m["n"].is_unit());
        assert_eq!(m["a"].clone().into_array().unwrap().len(), 2);
        assert_eq!(m["big"].as_float(), Ok(18446744073709551615.0));
        for (text, what) in [
            (&b"[1]"[..], "array"),
            (b"3", "i64"),
            (b"18446744073709551615", "f64"),
            (b"2.5", "f64"),
            (b"\"x\"", "string"),
            (b"true", "bool"),
            (b"null", "()"),
        ] {
            assert_eq!(
                crate::message::parse_payload(text).unwrap_err(),
                format!("the payload must be a JSON object, not {what}")
            );
        }
        assert!(crate::message::parse_payload(b"{} x")
            .unwrap_err()
            .contains("not JSON"));
        assert!(crate::message::parse_payload(b"\xff").is_err());
    }
}
