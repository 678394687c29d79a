//! What each chain and node did: messages in, outcomes, and the time a chain took. One
//! [`RuleStats`] per executor (per shard in `run`), written only by that executor's thread with
//! relaxed atomics, read by the metrics and the chains API (which add up the shards).
//!
//! Counters follow (chain name, node id) across reloads, as node state does: a node that stays
//! keeps counting; a node that goes takes its counts with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::counters::{Histogram, HistogramSnapshot};

use super::effect::Outcome;
use super::program::RuleSet;
use super::{Flow, Why};

impl Why {
    /// The trace word (the same as the metrics' outcome).
    pub fn as_str(self) -> &'static str {
        Outcome::from(self).as_str()
    }
}

impl Outcome {
    /// The outcome of a node's flow (`has_else`: the node has an `else` target).
    pub fn of(flow: &Flow, has_else: bool) -> Outcome {
        match flow {
            Flow::Pass(_) | Flow::Route(Some(_), _) => Outcome::Pass,
            Flow::PassAs(why, _) | Flow::Stop(why) => Outcome::from(*why),
            Flow::Route(None, _) => Outcome::Stop,
            Flow::Else(_) if has_else => Outcome::Else,
            Flow::Else(_) => Outcome::Stop,
            Flow::Error(..) => Outcome::Error,
        }
    }
}

impl From<Why> for Outcome {
    fn from(w: Why) -> Self {
        match w {
            Why::Held => Outcome::Held,
            Why::Suppressed => Outcome::Suppressed,
            Why::Stopped => Outcome::Stop,
        }
    }
}

/// Adds one to a counter that only this thread writes (a load and a store, no locked
/// instruction).
fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

/// One node's outcomes.
#[derive(Debug)]
pub struct NodeCounts {
    /// Its id.
    pub id: Arc<str>,
    /// Its kind (`filter`, `alarm`…).
    pub kind: &'static str,
    /// By [`Outcome::ALL`].
    pub outcomes: [AtomicU64; 6],
}

impl NodeCounts {
    /// Counts one outcome.
    pub fn count(&self, o: Outcome) {
        bump(&self.outcomes[o as usize]);
    }
}

/// One chain's messages and durations.
#[derive(Debug)]
pub struct ChainCounts {
    /// Its name.
    pub name: Arc<str>,
    /// Its file.
    pub path: String,
    /// Messages that entered it (its `on` matched).
    pub messages: AtomicU64,
    /// How long a message took through it, when the harness gives a stopwatch.
    pub duration: Histogram,
}

impl ChainCounts {
    /// Counts a message that entered the chain.
    pub fn entered(&self) {
        bump(&self.messages);
    }
}

/// The counters of the chains in force, in their order, each with its nodes in file order.
pub type Bound = Vec<(Arc<ChainCounts>, Vec<Arc<NodeCounts>>)>;

/// An executor's counters.
#[derive(Debug, Default)]
pub struct RuleStats {
    bound: Mutex<Arc<Bound>>,
}

impl RuleStats {
    /// Counters for `rules`: those of chains and nodes that were there before are kept (a node
    /// whose kind changed starts again), the rest start at zero.
    pub fn bind(&self, rules: &RuleSet) -> Arc<Bound> {
        let mut cur = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        let old_chains: HashMap<&str, &(Arc<ChainCounts>, Vec<Arc<NodeCounts>>)> =
            cur.iter().map(|c| (c.0.name.as_ref(), c)).collect();
        let next: Bound = rules
            .chains
            .iter()
            .map(|chain| {
                let old = old_chains.get(chain.name.as_ref());
                let counts = old
                    .map(|o| o.0.clone())
                    .filter(|c| c.path == chain.path)
                    .unwrap_or_else(|| {
                        Arc::new(ChainCounts {
                            name: chain.name.clone(),
                            path: chain.path.clone(),
                            messages: AtomicU64::new(0),
                            duration: Histogram::default(),
                        })
                    });
                let nodes = chain
                    .nodes
                    .iter()
                    .map(|n| {
                        old.and_then(|o| {
                            o.1.iter().find(|x| x.id == n.id && x.kind == n.kind.name())
                        })
                        .cloned()
                        .unwrap_or_else(|| {
                            Arc::new(NodeCounts {
                                id: n.id.clone(),
                                kind: n.kind.name(),
                                outcomes: Default::default(),
                            })
                        })
                    })
                    .collect();
                (counts, nodes)
            })
            .collect();
        *cur = Arc::new(next);
        cur.clone()
    }

    /// The counters in force.
    pub fn current(&self) -> Arc<Bound> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A node's totals over several executors.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeTotals {
    /// Its id.
    pub id: Arc<str>,
    /// Its kind.
    pub kind: &'static str,
    /// Messages it ran on.
    pub messages: u64,
    /// By outcome word (`pass`, `else`, `stop`, `held`, `suppressed`, `error`).
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
}

/// A chain's totals over several executors.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainTotals {
    /// Its name.
    pub name: Arc<str>,
    /// Its file.
    pub path: String,
    /// Messages that entered it.
    pub messages: u64,
    /// Its durations.
    #[serde(skip)]
    pub duration: HistogramSnapshot,
    /// Its nodes, in file order.
    pub nodes: Vec<NodeTotals>,
}

/// Adds up the counters of several executors (the shards), in the first one's chain order.
pub fn totals(stats: &[Arc<RuleStats>]) -> Vec<ChainTotals> {
    let bound: Vec<Arc<Bound>> = stats.iter().map(|s| s.current()).collect();
    let Some(first) = bound.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|(chain, nodes)| {
            let same: Vec<&(Arc<ChainCounts>, Vec<Arc<NodeCounts>>)> = bound
                .iter()
                .filter_map(|b| b.iter().find(|c| c.0.name == chain.name))
                .collect();
            let mut duration = HistogramSnapshot::default();
            for c in &same {
                duration.add(&c.0.duration);
            }
            let nodes = nodes
                .iter()
                .map(|n| {
                    let mut outcomes = std::collections::BTreeMap::new();
                    for c in &same {
                        let Some(x) = c.1.iter().find(|x| x.id == n.id) else {
                            continue;
                        };
                        for (o, v) in Outcome::ALL.iter().zip(&x.outcomes) {
                            *outcomes.entry(o.as_str()).or_insert(0) += v.load(Relaxed);
                        }
                    }
                    NodeTotals {
                        id: n.id.clone(),
                        kind: n.kind,
                        messages: outcomes.values().sum(),
                        outcomes,
                    }
                })
                .collect();
            ChainTotals {
                name: chain.name.clone(),
                path: chain.path.clone(),
                messages: same.iter().map(|c| c.0.messages.load(Relaxed)).sum(),
                duration,
                nodes,
            }
        })
        .collect()
}
