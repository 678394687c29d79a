//! What a rule change does: two rule sets' effects on the same messages, compared. A
//! [`Tally`] is an effect sink that keeps what a comparison needs of one side (each alarm's
//! episodes, the effects counted by kind and chain, their keys for examples); [`compare`] turns
//! two tallies and their node counters into a [`Report`]: alarms added, removed and changed
//! (severity, start, duration), the difference in RPCs, notifications, publishes, points and
//! pushes with first examples, and each chain's and node's counts on both sides.
//!
//! Used by `rulechain diff` (a recording replayed through both sides on the virtual clock).
//! The report is plain data: `render` writes it as text or markdown, serde as JSON.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::alarm::{Severity, Transition};
use crate::engine::effect::Outcome;
use crate::engine::effect::{Effect, EffectSink, Event};
use crate::engine::stats::RuleStats;

/// Examples kept per kind and side.
pub const EXAMPLES: usize = 5;

/// One alarm's life on one side: from its creation to its clear (or the end of the input).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Episode {
    /// The chain that raised it.
    pub chain: String,
    /// When it was created (ms).
    pub start: i64,
    /// When it was cleared (ms); None: still active at the end.
    pub end: Option<i64>,
    /// The highest severity it had.
    pub severity: Severity,
}

/// An effect, in short, as an example.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
pub struct Example {
    /// When (ms).
    pub ts: i64,
    /// The chain.
    pub chain: String,
    /// The device.
    pub device: String,
    /// What: the RPC's method, the channel and subject, the topic, the line, the room.
    pub what: String,
}

/// What one side did.
///
/// Two ways to keep examples: `rulechain diff` keeps every effect's key (up to [`KEYS_KEPT`]
/// per kind) and [`compare`] finds those only one side made; the shadow of `run` runs for days,
/// so it pairs the two sides' effects as they happen ([`pair`], one shard turn at a time) and
/// keeps only the first effects left unpaired ([`Tally::paired`]).
#[derive(Debug, Default)]
pub struct Tally {
    /// (alarm type, device) → episodes, in order.
    alarms: BTreeMap<(String, String), Vec<Episode>>,
    /// (kind, chain) → count.
    counts: BTreeMap<(&'static str, Arc<str>), u64>,
    /// kind → every effect's example key, for the first differences (bounded per kind).
    keys: BTreeMap<&'static str, Vec<Example>>,
    /// Examples come from [`pair`]: only effects the other side did not make are kept.
    paired: bool,
    /// Paired: effects the other side did not make, by kind.
    unpaired: BTreeMap<&'static str, u64>,
    /// Paired: episodes the same on both sides once closed, forgotten (still counted).
    same: usize,
    /// Episodes kept in `alarms`.
    kept: usize,
    /// Episodes not kept past [`MAX_EPISODES`].
    pub episodes_dropped: u64,
    /// The rule counters of this side's executor.
    pub stats: Arc<RuleStats>,
    /// Node counters at the start, subtracted (a live engine's counters run from its start).
    since: NodeCounts,
}

/// Effect keys kept per kind: past it, examples come from the first this many.
const KEYS_KEPT: usize = 100_000;

/// Alarm episodes one side keeps; past it, new ones are counted in `episodes_dropped`.
pub const MAX_EPISODES: usize = 100_000;

/// (chain, node) → (kind, outcomes).
pub type NodeCounts = BTreeMap<(String, String), (&'static str, Outcomes)>;

/// An effect's kind, device and what it was (two parts, shown joined by `: `), for the kinds
/// a comparison counts; None for alarms and the rest.
fn parts(e: &Effect) -> Option<(&'static str, &str, &str, &str)> {
    Some(match &e.event {
        Event::Rpc { device, method, .. } => ("rpc", device, method.as_str(), ""),
        Event::Notify {
            device,
            channel,
            subject,
            ..
        } => ("notify", device, channel.as_ref(), subject.as_str()),
        Event::Publish { device, topic, .. } => ("publish", device, topic.as_str(), ""),
        Event::Influx { device, line, .. } => ("influx", device, line.as_str(), ""),
        Event::Websocket { device, room, .. } => ("websocket", device, room.as_ref(), ""),
        Event::Error { device, error } => ("error", device, error.as_str(), ""),
        _ => return None,
    })
}

fn example(e: &Effect) -> Option<(&'static str, Example)> {
    let (kind, device, a, b) = parts(e)?;
    Some((
        kind,
        Example {
            ts: e.ts,
            chain: e.chain.to_string(),
            device: device.to_string(),
            what: if b.is_empty() {
                a.to_string()
            } else {
                format!("{a}: {b}")
            },
        },
    ))
}

/// What identifies an effect for pairing: its kind and a hash of its example key.
fn pairing_key(e: &Effect, h: &foldhash::fast::FixedState) -> Option<(&'static str, u64)> {
    use std::hash::BuildHasher;
    let (kind, device, a, b) = parts(e)?;
    Some((kind, h.hash_one((e.ts, e.chain.as_ref(), device, a, b))))
}

impl Tally {
    /// A tally whose examples come from [`pair`] (the shadow of `run`), counting into
    /// `stats`, whose node counters at this moment are subtracted from what it reports.
    pub fn paired(stats: Arc<RuleStats>) -> Tally {
        Tally {
            paired: true,
            since: node_counts(&stats, &NodeCounts::new()),
            stats,
            ..Tally::default()
        }
    }

    /// Counts an effect: an alarm's transition into its episodes, any other into the counts by
    /// kind and chain (and, unpaired, its key for the examples).
    pub fn note(&mut self, e: &Effect) {
        if let Event::Alarm {
            device,
            type_,
            severity,
            transition,
            ..
        } = &e.event
        {
            self.alarm(e, device, type_, *severity, *transition);
            return;
        }
        let Some((kind, _, _, _)) = parts(e) else {
            return;
        };
        // The chain's name is shared with the effect: no copy per effect.
        *self.counts.entry((kind, e.chain.clone())).or_default() += 1;
        if !self.paired {
            let keys = self.keys.entry(kind).or_default();
            if keys.len() < KEYS_KEPT {
                keys.extend(example(e).map(|x| x.1));
            }
        }
    }

    fn alarm(&mut self, e: &Effect, device: &str, type_: &str, severity: Severity, t: Transition) {
        let key = (type_.to_string(), device.to_string());
        match t {
            Transition::Created if self.kept >= MAX_EPISODES => self.episodes_dropped += 1,
            Transition::Created => {
                self.kept += 1;
                self.alarms.entry(key).or_default().push(Episode {
                    chain: e.chain.to_string(),
                    start: e.ts,
                    end: None,
                    severity,
                });
            }
            Transition::SeverityChanged => {
                if let Some(ep) = self.alarms.get_mut(&key).and_then(|v| v.last_mut()) {
                    ep.severity = ep.severity.min(severity);
                }
            }
            Transition::Cleared => {
                if let Some(ep) = self
                    .alarms
                    .get_mut(&key)
                    .and_then(|v| v.last_mut())
                    .filter(|ep| ep.end.is_none())
                {
                    ep.end = Some(e.ts);
                }
            }
            Transition::Acknowledged => {}
        }
    }

    /// An effect the other side did not make (paired).
    fn unpaired(&mut self, kind: &'static str, e: &Effect) {
        *self.unpaired.entry(kind).or_default() += 1;
        let keys = self.keys.entry(kind).or_default();
        if keys.len() < EXAMPLES {
            keys.extend(example(e).map(|x| x.1));
        }
    }

    /// Paired: effects the other side did not make, by kind.
    pub fn unpaired_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.unpaired
    }

    /// Effects by kind (all chains).
    pub fn effect_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for ((kind, _), n) in &self.counts {
            *out.entry(*kind).or_default() += n;
        }
        out
    }

    /// What this side did as plain data, to compare or to add to another shard's.
    pub fn side(&self) -> Side {
        Side {
            alarms: self.alarms.clone(),
            same: self.same,
            counts: self.counts.clone(),
            keys: self.keys.clone(),
            nodes: node_counts(&self.stats, &self.since),
        }
    }
}

impl EffectSink for Tally {
    fn emit(&mut self, e: Effect) {
        self.note(&e);
    }
}

/// Pairs one turn's effects of the two sides (the same messages and the same clock), counts
/// both, and keeps as examples the effects only one side made. Alarm episodes that both sides
/// closed the same way are forgotten (and counted), so a shadow that runs for days keeps only
/// its differences.
pub fn pair(base: &[&Effect], cand: &[&Effect], bt: &mut Tally, ct: &mut Tally) {
    for e in base {
        bt.note(e);
    }
    for e in cand {
        ct.note(e);
    }
    let h = foldhash::fast::FixedState::default();
    let bk: Vec<_> = base.iter().map(|e| pairing_key(e, &h)).collect();
    let ck: Vec<_> = cand.iter().map(|e| pairing_key(e, &h)).collect();
    if bk != ck {
        let mut left: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
        for (_, k) in bk.iter().flatten() {
            *left.entry(*k).or_default() += 1;
        }
        for (e, k) in cand.iter().zip(&ck) {
            let Some((kind, k)) = k else { continue };
            match left.get_mut(k) {
                Some(n) if *n > 0 => *n -= 1,
                _ => ct.unpaired(kind, e),
            }
        }
        for (e, k) in base.iter().zip(&bk) {
            let Some((kind, k)) = k else { continue };
            if let Some(n) = left.get_mut(k).filter(|n| **n > 0) {
                *n -= 1;
                bt.unpaired(kind, e);
            }
        }
    }
    // Episodes closed the same way on both sides: nothing to show.
    for e in base.iter().chain(cand) {
        if let Event::Alarm {
            device,
            type_,
            transition: Transition::Cleared,
            ..
        } = &e.event
        {
            let key = (type_.clone(), device.to_string());
            let (Some(b), Some(c)) = (bt.alarms.get(&key), ct.alarms.get(&key)) else {
                continue;
            };
            if let (Some(x), Some(y)) = (b.last(), c.last()) {
                if x.end.is_some() && x == y {
                    for t in [&mut *bt, &mut *ct] {
                        if let Some(v) = t.alarms.get_mut(&key) {
                            v.pop();
                            if v.is_empty() {
                                t.alarms.remove(&key);
                            }
                        }
                        t.same += 1;
                        t.kept -= 1;
                    }
                }
            }
        }
    }
}

/// One side's tally as data: what [`compare`] reads. The shadow adds its shards' together
/// ([`Side::add`]).
#[derive(Debug, Default, Clone)]
pub struct Side {
    alarms: BTreeMap<(String, String), Vec<Episode>>,
    same: usize,
    counts: BTreeMap<(&'static str, Arc<str>), u64>,
    keys: BTreeMap<&'static str, Vec<Example>>,
    nodes: NodeCounts,
}

impl Side {
    /// Adds another shard's: episodes, counts and node outcomes; examples in time order.
    pub fn add(&mut self, o: Side) {
        for (k, mut v) in o.alarms {
            let e = self.alarms.entry(k).or_default();
            e.append(&mut v);
            e.sort_by_key(|x| x.start);
        }
        self.same += o.same;
        for (k, n) in o.counts {
            *self.counts.entry(k).or_default() += n;
        }
        for (k, mut v) in o.keys {
            let e = self.keys.entry(k).or_default();
            e.append(&mut v);
            e.sort();
        }
        for (k, (kind, outcomes)) in o.nodes {
            let e = self.nodes.entry(k).or_insert((kind, Outcomes::new()));
            for (w, n) in outcomes {
                *e.1.entry(w).or_default() += n;
            }
        }
    }
}

/// An alarm that one side has and the other does not, or that both have differently.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AlarmChange {
    /// The alarm type.
    #[serde(rename = "type")]
    pub type_: String,
    /// The device.
    pub device: String,
    /// The chain that raised it (the candidate's, when both have it).
    pub chain: String,
    /// The base's episode (None: added).
    pub base: Option<Episode>,
    /// The candidate's episode (None: removed).
    pub candidate: Option<Episode>,
    /// What changed, for a changed alarm: `severity`, `start` (shifted by `start_shift_ms`),
    /// `duration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<&'static str>,
    /// The candidate's start minus the base's (ms), for a changed alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_shift_ms: Option<i64>,
}

/// One kind of effect in one chain: counts on each side.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EffectCount {
    /// `rpc`, `notify`, `publish`, `influx`, `websocket`, `error`.
    pub kind: &'static str,
    /// The chain.
    pub chain: String,
    /// How many the base made.
    pub base: u64,
    /// How many the candidate made.
    pub candidate: u64,
}

/// The first effects of a kind only one side made.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EffectExamples {
    /// The kind.
    pub kind: &'static str,
    /// Made by the base only (the first [`EXAMPLES`]).
    pub only_base: Vec<Example>,
    /// Made by the candidate only.
    pub only_candidate: Vec<Example>,
}

/// A node's outcomes on each side.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct NodeCount {
    /// The chain.
    pub chain: String,
    /// The node.
    pub node: String,
    /// Its kind.
    pub kind: &'static str,
    /// Outcome → count, on the base (absent: the base has no such node).
    pub base: Option<Outcomes>,
    /// On the candidate.
    pub candidate: Option<Outcomes>,
}

/// What the candidate does differently from the base.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// Messages replayed.
    pub messages: u64,
    /// Whether the two sides did the same.
    pub equal: bool,
    /// Alarm episodes on each side.
    pub alarms: Totals,
    /// Alarms only the candidate raises.
    pub added: Vec<AlarmChange>,
    /// Alarms only the base raises.
    pub removed: Vec<AlarmChange>,
    /// Alarms both raise, differently.
    pub changed: Vec<AlarmChange>,
    /// Effects by kind and chain, where the counts differ.
    pub effects: Vec<EffectCount>,
    /// The first effects only one side made, by kind.
    pub examples: Vec<EffectExamples>,
    /// Nodes whose outcomes differ (or that one side has not).
    pub nodes: Vec<NodeCount>,
}

/// Counts on both sides.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Totals {
    /// The base's.
    pub base: usize,
    /// The candidate's.
    pub candidate: usize,
}

/// Outcome word → count.
pub type Outcomes = BTreeMap<&'static str, u64>;

/// The node counters of one side, less those at `since`.
fn node_counts(stats: &RuleStats, since: &NodeCounts) -> NodeCounts {
    let mut out = BTreeMap::new();
    for (chain, nodes) in stats.current().iter() {
        for n in nodes {
            let key = (chain.name.to_string(), n.id.to_string());
            let before = since.get(&key).filter(|b| b.0 == n.kind).map(|b| &b.1);
            let counts = Outcome::ALL
                .iter()
                .map(|o| {
                    let now = n.outcomes[*o as usize].load(std::sync::atomic::Ordering::Relaxed);
                    let was = before.and_then(|b| b.get(o.as_str())).copied().unwrap_or(0);
                    (o.as_str(), now.saturating_sub(was))
                })
                .filter(|(_, c)| *c > 0)
                .collect();
            out.insert(key, (n.kind, counts));
        }
    }
    out
}

/// Whether two episodes are the same alarm: they overlap in time (an open end runs on).
fn overlap(a: &Episode, b: &Episode) -> bool {
    let end = |e: &Episode| e.end.unwrap_or(i64::MAX);
    a.start <= end(b) && b.start <= end(a)
}

/// Compares the candidate's side with the base's.
pub fn compare(base: &Side, candidate: &Side, messages: u64) -> Report {
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let keys: BTreeSet<&(String, String)> =
        base.alarms.keys().chain(candidate.alarms.keys()).collect();
    for key in keys {
        let b = base.alarms.get(key).map_or(&[][..], Vec::as_slice);
        let c = candidate.alarms.get(key).map_or(&[][..], Vec::as_slice);
        let mut used = vec![false; c.len()];
        let change = |base: Option<&Episode>, cand: Option<&Episode>| AlarmChange {
            type_: key.0.clone(),
            device: key.1.clone(),
            chain: cand.or(base).map(|e| e.chain.clone()).unwrap_or_default(),
            base: base.cloned(),
            candidate: cand.cloned(),
            changes: Vec::new(),
            start_shift_ms: None,
        };
        for be in b {
            // The first candidate episode not yet paired that overlaps this one.
            let found = c
                .iter()
                .enumerate()
                .find(|(i, ce)| !used[*i] && overlap(be, ce))
                .map(|(i, _)| i);
            match found {
                Some(i) => {
                    used[i] = true;
                    let ce = &c[i];
                    let mut ch = change(Some(be), Some(ce));
                    if be.severity != ce.severity {
                        ch.changes.push("severity");
                    }
                    if be.start != ce.start {
                        ch.changes.push("start");
                        ch.start_shift_ms = Some(ce.start - be.start);
                    }
                    let dur = |e: &Episode| e.end.map(|x| x - e.start);
                    if dur(be) != dur(ce) {
                        ch.changes.push("duration");
                    }
                    if !ch.changes.is_empty() {
                        changed.push(ch);
                    }
                }
                None => removed.push(change(Some(be), None)),
            }
        }
        for (i, ce) in c.iter().enumerate() {
            if !used[i] {
                added.push(change(None, Some(ce)));
            }
        }
    }
    let mut effects = Vec::new();
    let kinds: BTreeSet<&(&'static str, Arc<str>)> =
        base.counts.keys().chain(candidate.counts.keys()).collect();
    for k in kinds {
        let (bc, cc) = (
            base.counts.get(k).copied().unwrap_or(0),
            candidate.counts.get(k).copied().unwrap_or(0),
        );
        if bc != cc {
            effects.push(EffectCount {
                kind: k.0,
                chain: k.1.to_string(),
                base: bc,
                candidate: cc,
            });
        }
    }
    let mut examples = Vec::new();
    let kinds: BTreeSet<&&'static str> = base.keys.keys().chain(candidate.keys.keys()).collect();
    for kind in kinds {
        let b = base.keys.get(kind).map_or(&[][..], Vec::as_slice);
        let c = candidate.keys.get(kind).map_or(&[][..], Vec::as_slice);
        let only = |x: &[Example], y: &[Example]| -> Vec<Example> {
            let ys: BTreeSet<&Example> = y.iter().collect();
            x.iter()
                .filter(|e| !ys.contains(e))
                .take(EXAMPLES)
                .cloned()
                .collect()
        };
        let (ob, oc) = (only(b, c), only(c, b));
        if !ob.is_empty() || !oc.is_empty() {
            examples.push(EffectExamples {
                kind,
                only_base: ob,
                only_candidate: oc,
            });
        }
    }
    let (bn, cn) = (&base.nodes, &candidate.nodes);
    let mut nodes = Vec::new();
    let names: BTreeSet<&(String, String)> = bn.keys().chain(cn.keys()).collect();
    for name in names {
        let (b, c) = (bn.get(name), cn.get(name));
        if b.map(|x| &x.1) != c.map(|x| &x.1) {
            nodes.push(NodeCount {
                chain: name.0.clone(),
                node: name.1.clone(),
                kind: c.or(b).map_or("", |x| x.0),
                base: b.map(|x| x.1.clone()),
                candidate: c.map(|x| x.1.clone()),
            });
        }
    }
    let count = |t: &Side| t.alarms.values().map(Vec::len).sum::<usize>() + t.same;
    let equal = added.is_empty()
        && removed.is_empty()
        && changed.is_empty()
        && effects.is_empty()
        && examples.is_empty();
    Report {
        messages,
        equal,
        alarms: Totals {
            base: count(base),
            candidate: count(candidate),
        },
        added,
        removed,
        changed,
        effects,
        examples,
        nodes,
    }
}

/// A gate: what makes `diff` fail in CI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Any alarm removed.
    Removed,
    /// Any alarm added.
    Added,
    /// Any alarm changed.
    Changed,
    /// An alarm of this severity or a more severe one removed, added or changed.
    Severity(Severity),
}

impl Gate {
    /// `removed`, `added`, `changed`, `severity>=MAJOR`.
    pub fn parse(text: &str) -> Result<Gate, String> {
        match text.trim() {
            "removed" => Ok(Gate::Removed),
            "added" => Ok(Gate::Added),
            "changed" => Ok(Gate::Changed),
            t => match t.strip_prefix("severity>=") {
                Some(s) => Severity::parse(s.trim())
                    .map(Gate::Severity)
                    .ok_or_else(|| {
                        format!(
                            "unknown severity `{s}` in `--fail-on {t}`: one of {}",
                            crate::alarm::SEVERITIES.join(", ")
                        )
                    }),
                None => Err(format!(
                    "unknown gate `{t}`: `removed`, `added`, `changed` or `severity>=MAJOR`"
                )),
            },
        }
    }

    /// The alarms of the report that trip it.
    pub fn tripped<'a>(&self, r: &'a Report) -> Vec<&'a AlarmChange> {
        let sev = |a: &AlarmChange| {
            a.base
                .iter()
                .chain(a.candidate.iter())
                .map(|e| e.severity)
                .min()
        };
        match self {
            Gate::Removed => r.removed.iter().collect(),
            Gate::Added => r.added.iter().collect(),
            Gate::Changed => r.changed.iter().collect(),
            Gate::Severity(s) => r
                .removed
                .iter()
                .chain(&r.added)
                .chain(&r.changed)
                .filter(|a| sev(a).is_some_and(|x| x <= *s))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm_effect(device: &str, ts: i64, tr: Transition, sev: Severity) -> Effect {
        let a = crate::alarm::Alarm {
            id: format!("Hot:{device}:{ts}"),
            device: device.into(),
            type_: "Hot".into(),
            severity: sev,
            status: crate::alarm::Status::ActiveUnack,
            message: String::new(),
            details: rhai::Map::new(),
            start_ts: ts,
            last_ts: ts,
            end_ts: None,
            count: 1,
            origin: None,
            acked_by: None,
            cleared_by: None,
        };
        Effect {
            event: Event::alarm(device.into(), a, tr),
            ts,
            chain: "hot".into(),
            node: "raise".into(),
        }
    }

    fn alarm(t: &mut Tally, device: &str, ts: i64, tr: Transition, sev: Severity) {
        t.emit(alarm_effect(device, ts, tr, sev));
    }

    fn rpc(device: &str, ts: i64, method: &str) -> Effect {
        Effect {
            event: Event::Rpc {
                device: device.into(),
                method: method.into(),
                params: rhai::Dynamic::UNIT,
                id: "1".into(),
                topic: String::new(),
                qos: 1,
            },
            ts,
            chain: "hot".into(),
            node: "cool".into(),
        }
    }

    #[test]
    fn a_live_pair_keeps_only_what_one_side_did_and_forgets_equal_episodes() {
        let stats = || Arc::new(RuleStats::default());
        let (mut b, mut c) = (Tally::paired(stats()), Tally::paired(stats()));
        // The same turn on both sides: nothing unpaired, no example kept.
        let same = [rpc("p1", 10, "cool"), rpc("p2", 10, "cool")];
        let refs: Vec<&Effect> = same.iter().collect();
        pair(&refs, &refs, &mut b, &mut c);
        assert!(b.unpaired_counts().is_empty() && c.unpaired_counts().is_empty());
        // One more on the base, another method on the candidate, in another order.
        let base = [rpc("p1", 20, "cool"), rpc("p2", 20, "cool")];
        let cand = [rpc("p2", 20, "cool"), rpc("p1", 20, "heat")];
        pair(
            &base.iter().collect::<Vec<_>>(),
            &cand.iter().collect::<Vec<_>>(),
            &mut b,
            &mut c,
        );
        assert_eq!(b.unpaired_counts().get("rpc"), Some(&1));
        assert_eq!(c.unpaired_counts().get("rpc"), Some(&1));
        let r = compare(&b.side(), &c.side(), 2);
        assert!(!r.equal);
        assert_eq!(r.examples[0].only_base[0].what, "cool");
        assert_eq!(r.examples[0].only_base[0].device, "p1");
        assert_eq!(r.examples[0].only_candidate[0].what, "heat");
        // An episode both sides open and close alike is forgotten, and still counted.
        let (mut live, mut shadow) = (Tally::paired(stats()), Tally::paired(stats()));
        for (ts, tr) in [(30, Transition::Created), (40, Transition::Cleared)] {
            let turn = [alarm_effect("p3", ts, tr, Severity::Major)];
            let refs: Vec<&Effect> = turn.iter().collect();
            pair(&refs, &refs, &mut live, &mut shadow);
            assert_eq!(live.alarms.len(), usize::from(ts == 30), "kept while open");
        }
        assert!(shadow.alarms.is_empty());
        let r = compare(&live.side(), &shadow.side(), 2);
        assert!(r.equal);
        assert_eq!((r.alarms.base, r.alarms.candidate), (1, 1));
    }

    #[test]
    fn alarms_pair_by_overlap_and_differences_are_named() {
        let (mut b, mut c) = (Tally::default(), Tally::default());
        // p1: both, the candidate later and more severe; p2: base only; p3: candidate only.
        alarm(&mut b, "p1", 100, Transition::Created, Severity::Major);
        alarm(&mut b, "p1", 500, Transition::Cleared, Severity::Major);
        alarm(&mut c, "p1", 160, Transition::Created, Severity::Major);
        alarm(
            &mut c,
            "p1",
            200,
            Transition::SeverityChanged,
            Severity::Critical,
        );
        alarm(&mut c, "p1", 500, Transition::Cleared, Severity::Critical);
        alarm(&mut b, "p2", 100, Transition::Created, Severity::Critical);
        alarm(&mut c, "p3", 100, Transition::Created, Severity::Warning);
        let r = compare(&b.side(), &c.side(), 10);
        assert!(!r.equal);
        assert_eq!(r.removed.len(), 1);
        assert_eq!(r.removed[0].device, "p2");
        assert_eq!(r.added.len(), 1);
        assert_eq!(r.added[0].device, "p3");
        assert_eq!(r.changed.len(), 1);
        assert_eq!(r.changed[0].changes, ["severity", "start", "duration"]);
        assert_eq!(r.changed[0].start_shift_ms, Some(60));
        assert_eq!(Gate::parse("removed").unwrap().tripped(&r).len(), 1);
        assert_eq!(
            Gate::parse("severity>=MAJOR").unwrap().tripped(&r).len(),
            2,
            "p2 and p1"
        );
        assert_eq!(
            Gate::parse("severity>=CRITICAL").unwrap().tripped(&r).len(),
            2
        );
        assert!(Gate::parse("severity>=HUGE")
            .unwrap_err()
            .contains("unknown severity"));
        assert!(Gate::parse("louder").unwrap_err().contains("unknown gate"));
        let same = compare(&b.side(), &b.side(), 10);
        assert!(same.equal && same.removed.is_empty() && same.changed.is_empty());
    }
}
