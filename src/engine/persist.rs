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
