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
use crate::engine::program::RuleSet;
use crate::engine::stats::RuleStats;
use crate::engine::Executor;
use crate::message::Message;

/// What a shard is told about its shadow.
pub enum Cmd {
    /// Start shadow number `.1` of these rules (one running is replaced); the shard answers
    /// with the pair it counts into.
    Start(
        Arc<RuleSet>,
        u64,
        tokio::sync::oneshot::Sender<Arc<Mutex<Pair>>>,
    ),
    /// Stop the shadow if it is this one or an older one (a stop that arrives late never
    /// stops a newer shadow).
    Stop(u64),
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

/// What the shadow is given during a turn, in order, run once the live output left.
enum Step {
    Advance(i64),
    Message(Message),
    Operator {
        id: String,
        by: Option<String>,
        clear: bool,
    },
    Attributes(String, rhai::Map),
}

/// One shard's running shadow. It runs after the live rules: a turn's messages, clock steps
/// and operators' actions are kept in order ([`Run::process`] and the rest), the live effects
/// of the turn copied before they leave ([`Run::keep_live`]), and once the live output went
/// out the candidate runs the same steps and the two are paired ([`Run::run_turn`]). So the
/// live output never waits for the candidate.
pub struct Run {
    exec: Executor,
    out: Effects,
    steps: Vec<Step>,
    live: Vec<Effect>,
    /// Live effects of the turn it started in that came before it: not its to pair.
    skip: usize,
    /// Which shadow it is (the engine counts them).
    pub generation: u64,
    pair: Arc<Mutex<Pair>>,
}

impl Run {
    /// Forks the live executor for `rules`; `live_stats` are the live executor's counters (the
    /// report subtracts what they held before now); `before` live effects of this turn came
    /// before the start.
    pub fn start(
        live: &Executor,
        live_stats: Arc<RuleStats>,
        rules: Arc<RuleSet>,
        shard: usize,
        before: usize,
        generation: u64,
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
            steps: Vec::new(),
            live: Vec::new(),
            skip: before,
            generation,
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

    /// The live executor's clock moved to `now`.
    pub fn advance_to(&mut self, now: i64) {
        self.steps.push(Step::Advance(now));
    }

    /// A message the live executor processes too.
    pub fn process(&mut self, m: Message) {
        self.steps.push(Step::Message(m));
    }

    /// An operator's acknowledgement or clear, as the live executor was given it (the alarm
    /// may not exist here: then nothing happens).
    pub fn operator(&mut self, id: &str, by: Option<&str>, clear: bool) {
        self.steps.push(Step::Operator {
            id: id.to_string(),
            by: by.map(str::to_string),
            clear,
        });
    }

    /// Server-side attributes an operator set, as the live executor was given them.
    pub fn set_attributes(&mut self, device: &str, changes: rhai::Map) {
        self.steps
            .push(Step::Attributes(device.to_string(), changes));
    }

    /// Copies the turn's live effects before they leave (the live trace's entries are the
    /// trace's, not the rules' effects).
    pub fn keep_live(&mut self, live: &[Effect]) {
        let from = std::mem::take(&mut self.skip).min(live.len());
        self.live
            .extend(live[from..].iter().filter(|e| !is_trace(e)).cloned());
    }

    /// Once the turn's live output left: the candidate runs the turn, and its effects are
    /// paired with the live ones, then dropped.
    pub fn run_turn(&mut self) {
        if self.steps.is_empty() && self.live.is_empty() {
            return;
        }
        let mut messages = 0;
        for step in self.steps.drain(..) {
            match step {
                Step::Advance(now) => self.exec.advance_to(now, &mut self.out),
                Step::Message(m) => {
                    messages += 1;
                    self.exec.process(m, &mut self.out);
                }
                Step::Operator { id, by, clear } => {
                    let _ = if clear {
                        self.exec.clear_alarm(&id, by.as_deref(), &mut self.out)
                    } else {
                        self.exec.acknowledge(&id, by.as_deref(), &mut self.out)
                    };
                }
                Step::Attributes(device, changes) => {
                    let _ = self.exec.set_server_attributes(&device, changes);
                }
            }
        }
        let live: Vec<&Effect> = self.live.iter().collect();
        let cand: Vec<&Effect> = self.out.0.iter().collect();
        let mut p = self.pair.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *p;
        pair(&live, &cand, &mut p.live, &mut p.candidate);
        p.messages += messages;
        drop((live, cand));
        self.live.clear();
        self.out.0.clear();
    }
}

fn is_trace(e: &Effect) -> bool {
    matches!(&e.event, Event::Websocket { room, .. } if &**room == "trace")
}
