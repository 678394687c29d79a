//! The executor's state as data: what `run` checkpoints to the state store and restores after a
//! restart (alarms, reported attributes, node state such as holds and windows, pending timers,
//! awaited RPC replies), and what a hot reload carries from one rule set to the next.
//!
//! Node state and timers are named by (chain name, node id), never by position, so a restart or
//! a reload with edited rules finds them again. State of a node that no longer exists is dropped
//! (and counted); a node whose kind changed starts fresh, because its state no longer reads as
//! its type.

use std::any::Any;

use rhai::Dynamic;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::alarm::Alarm;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use rhai::Map;

use super::device::Device;
use super::executor::Executor;
use super::node::{Await, Timer};
use super::program::RuleSet;
use crate::script::Runtime;

/// The current snapshot format. A snapshot of another version is not restored (the engine
/// starts with empty state and says so).
pub const VERSION: u32 = 1;

/// Everything an executor knows besides its rules.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`VERSION`].
    pub version: u32,
    /// The clock time of the snapshot.
    pub now: i64,
    /// The id counter (timer order, RPC ids).
    pub seq: u64,
    /// Node state, by chain and node id.
    pub nodes: Vec<SavedNode>,
    /// Pending timers.
    pub timers: Vec<SavedTimer>,
    /// RPC ids awaiting a reply, and the node that waits.
    pub awaits: Vec<SavedAwait>,
    /// Every alarm (active and the last cleared one per device and type).
    pub alarms: Vec<Alarm>,
    /// The attributes each device reported (the registry's come from the devices file).
    pub reported: Vec<(String, Dynamic)>,
    /// The server-side attributes operators set through the API (absent in snapshots from
    /// before they existed).
    #[serde(default)]
    pub server: Vec<(String, Dynamic)>,
    /// Set when `reported` and `server` came inside the shard's record (as every snapshot held
    /// them before the live engine kept them in a record of their own, written as they change):
    /// the next checkpoint writes them to their own record.
    #[serde(skip)]
    pub attributes_inline: bool,
}

/// The devices' attributes, as the live engine keeps them apart from the rest of a shard's
/// state (written only when one changed).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedAttributes {
    /// As [`Snapshot::reported`].
    pub reported: Vec<(String, Dynamic)>,
    /// As [`Snapshot::server`].
    pub server: Vec<(String, Dynamic)>,
}

/// One node's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedNode {
    /// The chain.
    pub chain: String,
    /// The node id.
    pub node: String,
    /// The state, as the node kind writes it.
    pub state: serde_json::Value,
}

/// One pending timer.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedTimer {
    /// When it falls due.
    pub due: i64,
    /// Its rank among timers due at the same time.
    pub order: u64,
    /// The chain.
    pub chain: String,
    /// The node id.
    pub node: String,
    /// The node's key (device, or the `key:` value).
    pub key: String,
    /// The node's tag for it.
    pub tag: u64,
}

/// One awaited RPC reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedAwait {
    /// The request id.
    pub id: String,
    /// The chain.
    pub chain: String,
    /// The node id.
    pub node: String,
    /// The device the command went to, the only one whose reply counts (empty in snapshots
    /// from before replies were matched by device: any device's, as then).
    #[serde(default)]
    pub device: String,
}

/// What a restore or a reload could not carry over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// Node states restored.
    pub nodes: usize,
    /// Node states dropped: the node is gone, or its state no longer reads as its kind's.
    pub dropped_nodes: usize,
    /// Timers restored.
    pub timers: usize,
    /// Timers dropped with their node.
    pub dropped_timers: usize,
}

/// Writes a node's state of type `T` (see [`crate::engine::NodeImpl::save`]).
pub fn save<T: Serialize + 'static>(state: &(dyn Any + Send)) -> Option<serde_json::Value> {
    state
        .downcast_ref::<T>()
        .and_then(|s| serde_json::to_value(s).ok())
}

/// Reads a node's state of type `T` (see [`crate::engine::NodeImpl::load`]).
pub fn load<T: DeserializeOwned + Send + 'static>(
    v: serde_json::Value,
) -> Option<Box<dyn Any + Send>> {
    serde_json::from_value::<T>(v)
        .ok()
        .map(|s| Box::new(s) as Box<dyn Any + Send>)
}

/// `f64` that may be infinite or NaN (JSON has neither): written as a number when finite, else
/// as `"inf"`, `"-inf"` or `"nan"`.
pub mod any_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes it.
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("nan")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    /// Reads it.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum F {
            N(f64),
            S(String),
        }
        Ok(match F::deserialize(d)? {
            F::N(x) => x,
            F::S(s) if s == "inf" => f64::INFINITY,
            F::S(s) if s == "-inf" => f64::NEG_INFINITY,
            F::S(_) => f64::NAN,
        })
    }
}

/// The executor's state as data, and back: for restarts, hot reloads and a shadow.
impl Executor {
    /// The (chain, node) of every slot, in slot order.
    pub(super) fn slot_names(rules: &RuleSet) -> Vec<(usize, usize)> {
        rules
            .chains
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| (0..c.nodes.len()).map(move |ni| (ci, ni)))
            .collect()
    }

    /// Where (chain name, node id) lives in `rules`.
    pub(super) fn locate(rules: &RuleSet) -> HashMap<(&str, &str), (usize, usize)> {
        let mut m = HashMap::new();
        for (ci, c) in rules.chains.iter().enumerate() {
            for (ni, n) in c.nodes.iter().enumerate() {
                m.insert((c.name.as_ref(), n.id.as_ref()), (ci, ni));
            }
        }
        m
    }

    /// Everything but the rules, as data (see [`persist`]).
    pub fn snapshot(&self) -> Snapshot {
        let a = self.saved_attributes();
        Snapshot {
            reported: a.reported,
            server: a.server,
            ..self.snapshot_without_attributes()
        }
    }

    /// Everything but the rules and the devices' attributes, which a checkpoint writes apart
    /// ([`Executor::take_attributes`]).
    pub fn snapshot_without_attributes(&self) -> Snapshot {
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
                nodes.push(SavedNode {
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
                SavedTimer {
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
                SavedAwait {
                    id: id.to_string(),
                    chain,
                    node,
                    device: a.device.to_string(),
                }
            })
            .collect();
        Snapshot {
            version: VERSION,
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
    pub fn restore(&mut self, snap: Snapshot) -> Carried {
        let rules = self.rules.clone();
        let at = Self::locate(&rules);
        let mut carried = Carried::default();
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
    pub fn reload(&mut self, rules: Arc<RuleSet>) -> Carried {
        let old = std::mem::replace(&mut self.rules, rules.clone());
        self.rt = Runtime::new(rules.engine.clone());
        self.bound = self.stats.bind(&rules);
        let at = Self::locate(&rules);
        let mut carried = Carried::default();
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
    pub fn fork(&self, rules: Arc<RuleSet>) -> (Executor, Carried) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_floats_survive() {
        #[derive(Serialize, Deserialize)]
        struct W(#[serde(with = "any_f64")] f64);
        for x in [1.5, f64::INFINITY, f64::NEG_INFINITY] {
            let t = serde_json::to_string(&W(x)).unwrap();
            assert_eq!(serde_json::from_str::<W>(&t).unwrap().0, x, "{t}");
        }
        let t = serde_json::to_string(&W(f64::NAN)).unwrap();
        assert!(serde_json::from_str::<W>(&t).unwrap().0.is_nan());
    }
}
