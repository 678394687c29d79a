//! One shard's shadow: a candidate rule set run on the shard's own messages, on the same clock,
//! with no effect leaving. Its executor is forked from the live one when the shadow starts
//! (`Executor::fork`: the live state carried as a reload carries it), then lives apart: every
//! message the live executor processes, every timer tick and every operator's action is given
//! to both, and once a turn the two sides' effects are paired into the shard's [`Pair`]
//! (`crate::diff::pair`): counts, alarm episodes and the first effects only one side made.
//!
//! The candidate's alarms never reach the alarm registry, its RPCs and publishes never reach
//! the broker, its notifications never reach a channel: its effects are counted and dropped
//! here. Its state is memory only: a restart starts the shadow again from the live state.

use std::sync::{Arc, Mutex};

use crate::diff::{pair, Tally};
use crate::engine::effect::{Effect, EffectSink, Event};
use crate::engine::stats::RuleStats;
use crate::engine::{Executor, Message};
use crate::rules::compile::RuleSet;

/// What a shard is told about its shadow.
pub enum Cmd {
    /// Start a shadow of these rules (one running is replaced); the shard answers with the
    /// pair it counts into.
    Start(Arc<RuleSet>, tokio::sync::oneshot::Sender<Arc<Mutex<Pair>>>),
    /// Stop it.
    Stop,
}

/// The two sides of one shard, as the API reads them (locked once per shard turn).
pub struct Pair {
    /// What the live rules did since the shadow started.
    pub live: Tally,
    /// What the candidate did.
    pub candidate: Tally,
    /// Messages both sides were given.
    pub messages: u64,
}

/// The candidate's effects of one turn.
#[derive(Default)]
struct Effects(Vec<Effect>);

impl EffectSink for Effects {
    fn emit(&mut self, e: Effect) {
        self.0.push(e);
    }
}

/// One shard's running shadow.
pub struct Run {
    exec: Executor,
    out: Effects,
    messages: u64,
    pair: Arc<Mutex<Pair>>,
}

impl Run {
    /// Forks the live executor for `rules`; `live_stats` are the live executor's counters (the
    /// report subtracts what they held before now).
    pub fn start(
        live: &Executor,
        live_stats: Arc<RuleStats>,
        rules: Arc<RuleSet>,
        shard: usize,
    ) -> Run {
        let (mut exec, carried) = live.fork(rules);
        let stats = Arc::new(RuleStats::default());
        exec.share_stats(stats.clone());
        // Its RPC ids never meet the live ones (its commands are never sent).
        exec.set_id_prefix(format!("shadow-{shard}-"));
        tracing::debug!(
            shard,
            node_states = carried.nodes,
            timers = carried.timers,
            "shadow started from the live state"
        );
        Run {
            exec,
            out: Effects::default(),
            messages: 0,
            pair: Arc::new(Mutex::new(Pair {
                live: Tally::paired(live_stats),
                candidate: Tally::paired(stats),
                messages: 0,
            })),
        }
    }

    /// The pair the API reads.
    pub fn pair(&self) -> Arc<Mutex<Pair>> {
        self.pair.clone()
    }

    /// When its next timer is due (the shard wakes for it as for its own).
    pub fn next_due(&self) -> Option<i64> {
        self.exec.next_due()
    }

    /// Moves its clock as the live executor's moved.
    pub fn advance_to(&mut self, now: i64) {
        self.exec.advance_to(now, &mut self.out);
    }

    /// A message the live executor processes too.
    pub fn process(&mut self, m: Message) {
        self.messages += 1;
        self.exec.process(m, &mut self.out);
    }

    /// An operator's acknowledgement or clear, as the live executor was given it (the alarm
    /// may not exist here: then nothing happens).
    pub fn operator(&mut self, id: &str, by: Option<&str>, clear: bool) {
        let _ = if clear {
            self.exec.clear_alarm(id, by, &mut self.out)
        } else {
            self.exec.acknowledge(id, by, &mut self.out)
        };
    }

    /// Server-side attributes an operator set, as the live executor was given them.
    pub fn set_attributes(&mut self, device: &str, changes: rhai::Map) {
        let _ = self.exec.set_server_attributes(device, changes);
    }

    /// Ends a turn: pairs the live executor's effects of the turn with the candidate's, and
    /// drops the candidate's.
    pub fn settle(&mut self, live: &[Effect]) {
        if self.out.0.is_empty() && live.is_empty() && self.messages == 0 {
            return;
        }
        // The live trace's entries are the trace's, not the rules' effects.
        let live: Vec<&Effect> = live.iter().filter(|e| !is_trace(e)).collect();
        let cand: Vec<&Effect> = self.out.0.iter().collect();
        let mut p = self.pair.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *p;
        pair(&live, &cand, &mut p.live, &mut p.candidate);
        p.messages += self.messages;
        drop(cand);
        self.messages = 0;
        self.out.0.clear();
    }
}

fn is_trace(e: &Effect) -> bool {
    matches!(&e.event, Event::Websocket { room, .. } if &**room == "trace")
}
