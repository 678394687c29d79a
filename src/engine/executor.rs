//! The executor: runs compiled chains on messages, owns per-node state, the alarm store, device
//! attributes and the timer queue, and emits [`super::effect::Effect`]s. Its device registry and
//! bounds are in `devices.rs`, its state as data in `persist.rs`.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rhai::{Dynamic, Map};

use crate::alarm::Alarm;
use crate::config::settings::StateLimits;
use crate::message::{Kind, Message};
use crate::script::{Runtime, Vars};

use super::alarm::AlarmStore;
use super::device::{
    entry_bytes, Device, Source, MAX_DEVICE_ATTRIBUTE_BYTES, MAX_REPORTED_ATTRIBUTES,
};
use super::effect::{Effect, EffectSink, Event};
use super::node::{Await, Cx, Flow, Packet, Timer, Why};
use super::program::{Chain, Reads, RuleSet};
use super::stats;

/// The hasher of the maps keyed by device id that each message looks up (the devices, nodes'
/// per-key state): foldhash, seeded at random per process, where the standard SipHash cost ~3%
/// of a message's instructions. Device ids come from outside; a per-process seed keeps
/// collisions from being chosen in advance.
pub type DeviceHasher = foldhash::fast::RandomState;

/// What `meta` is built from, besides the packet.
pub(super) struct Head<'a> {
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

/// The engine core: compiled rules plus all their state.
pub struct Executor {
    pub(super) rules: Arc<RuleSet>,
    pub(super) rt: Runtime,
    pub(super) states: Vec<Option<Box<dyn Any + Send>>>,
    pub(super) alarms: AlarmStore,
    pub(super) devices: HashMap<Arc<str>, Device, DeviceHasher>,
    pub(super) timers: BinaryHeap<Reverse<Timer>>,
    pub(super) awaits: HashMap<Arc<str>, Await>,
    pub(super) id_prefix: String,
    pub(super) seq: u64,
    pub(super) now: i64,
    /// `meta.kind` values, by `Kind as usize`, shared by every message.
    pub(super) kind_names: [Dynamic; 4],
    /// The traversal stack, kept between messages.
    pub(super) stack: Vec<(usize, Packet)>,
    /// Reported attribute values dropped at [`MAX_REPORTED_ATTRIBUTES`],
    /// [`MAX_DEVICE_ATTRIBUTE_BYTES`] or the engine's byte bound, since last taken.
    pub(super) attributes_dropped: u64,
    /// Bytes of every device's attributes, reported and server-side ([`entry_bytes`]).
    pub(super) attribute_bytes: usize,
    /// Some device's attributes changed since [`Executor::take_attributes`] last took them.
    pub(super) attributes_changed: bool,
    pub(super) limits: StateLimits,
    pub(super) evictions: Evictions,
    /// When the next sweep of idle state is due (clock time).
    pub(super) next_sweep: i64,
    /// Devices from the registry (never forgotten; not counted against `max_devices`).
    pub(super) registered: usize,
    /// At `max_devices`, nothing was forgettable: a device only becomes forgettable again at a
    /// sweep, so until then a new device does not scan them all again.
    pub(super) devices_full: bool,
    /// What each chain and node did, and the counters of the rules in force.
    pub(super) stats: Arc<stats::RuleStats>,
    pub(super) bound: Arc<stats::Bound>,
    /// A monotonic clock in nanoseconds, if the harness wants chain durations measured. It
    /// only measures: no result depends on it.
    pub(super) stopwatch: Option<fn() -> u64>,
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
            self.fill(&mut p, &head, Reads::ALL);
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
            config: &rules.config,
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
                self.fill(&mut reply, &head, Reads::ALL);
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
            let outcome = super::effect::Outcome::of(&flow, node.else_.is_some());
            if let Some(n) = self.bound.get(ci).and_then(|c| c.1.get(ni)) {
                n.count(outcome);
            }
            if let Some(device) = device {
                out.emit(Effect {
                    event: Event::Node {
                        device,
                        result: outcome,
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
