//! `aggregate`: windows per key, each emitting one message when it closes: `meta` of the
//! window's last message with `meta.ts` = the window's end, and `msg` = the output fields plus
//! `window_start` and `window_end` (ms).
//!
//! - `window: D` alone: tumbling windows aligned to the epoch, closed by a timer at their end.
//! - `window: D, every: E`: sliding (hopping) windows of length D, one ending at every multiple
//!   of E. A window is the sum of its E-long panes: a key keeps one accumulator per output and
//!   pane, never the messages (panes.rs).
//! - `session: G` (`max: M`): a window opens with a key's message and closes after G without
//!   one, or M after it opened.
//! - `count: N`: a window closes with its Nth message, at that message's time.
//! - `allowed_lateness: L` (time windows): windows follow the messages' own times (`meta.ts`)
//!   and close L after their end; a message later than that for every window it belongs to is
//!   dropped (reason `late`). Without it, windows follow the engine's clock.
//!
//! Functions are in `acc.rs`. An output with no value to aggregate is left out.

mod acc;
mod panes;

use crate::rules::syntax::ExprSrc;
use crate::yaml::Sp;
use crate::yaml::SpMap;
use rhai::{Dynamic, Map};
use schemars::JsonSchema;
use serde::Deserialize;

use std::sync::Arc;

use super::common::KeySel;
use crate::engine::effect::{DropReason, Event};
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use acc::{Acc, Func};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::yaml::Pos;

struct Aggregate {
    mode: Mode,
    key: KeySel,
    outs: Vec<(String, Func, String)>,
}

/// Which windows.
#[derive(Clone, Copy)]
enum Mode {
    /// Tumbling, on the engine's clock.
    Tumbling(i64),
    /// Sliding (or tumbling with lateness): panes of `every`.
    Panes(panes::Shape),
    /// Closed by `gap` of silence, or `max` after it opened.
    Session { gap: i64, max: i64 },
    /// Closed by its `n`th message.
    Count(u64),
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["aggregate"],
    owns: &["key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// aggregate: windows per key (tumbling, sliding, session or count), each emitting one
    /// message when it closes.
    #[serde(default)]
    pub aggregate: Option<Sp<AggregateSpec>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let a = spec.aggregate.as_ref()?;
    let key_src = a.key.clone().or_else(|| head.key.clone());
    let key = KeySel::build(&key_src, b);
    let mode = mode(a, b);
    let mut outs = Vec::new();
    let mut ok = true;
    if a.fields.value.0.is_empty() {
        b.error(a.fields.pos, "`fields` is empty")
            .hint("e.g. `fields: {avg_rms: \"avg(rms)\"}`");
        ok = false;
    }
    for (name, call) in &a.fields.value.0 {
        match acc::parse_call(call) {
            Ok((f, field)) => outs.push((name.value.clone(), f, field)),
            Err(e) => {
                let pos = if call.pos == Pos::default() {
                    name.pos
                } else {
                    call.pos
                };
                b.error(pos, e);
                ok = false;
            }
        }
    }
    let (mode, key) = (mode?, key?);
    ok.then(|| Box::new(Aggregate { mode, key, outs }) as Box<dyn NodeImpl>)
}

/// A duration that must be longer than 0.
fn positive(b: &mut Builder, d: &Sp<String>, what: &str) -> Option<i64> {
    match b.duration(d)? {
        0 => {
            b.error(d.pos, format!("`{what}` must be longer than 0"));
            None
        }
        v => Some(v),
    }
}

/// Which windows the keys ask for; each mistake reported at its key.
fn mode(a: &AggregateSpec, b: &mut Builder) -> Option<Mode> {
    let given: Vec<(&str, Pos)> = [
        ("window", a.window.as_ref().map(|w| w.pos)),
        ("session", a.session.as_ref().map(|w| w.pos)),
        ("count", a.count.as_ref().map(|w| w.pos)),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.map(|p| (k, p)))
    .collect();
    match given.as_slice() {
        [] => {
            b.error(
                a.fields.pos,
                "an aggregate needs its window: `window`, `session` or `count`",
            )
            .hint("`window: 1m` (tumbling), `window: 1m, every: 10s` (sliding), `session: 30s` or `count: 100`");
            return None;
        }
        [_] => {}
        [(first, _), (second, pos), ..] => {
            b.error(
                *pos,
                format!("`{first}` and `{second}` are two kinds of window; an aggregate has one"),
            );
            return None;
        }
    }
    let only = |b: &mut Builder, key: &str, pos: Option<Pos>, with: &str| {
        if let Some(pos) = pos {
            b.error(pos, format!("`{key}` applies to {with} only"));
            false
        } else {
            true
        }
    };
    let mut ok = true;
    if a.window.is_none() {
        ok &= only(b, "every", a.every.as_ref().map(|e| e.pos), "`window` (a sliding window)");
        ok &= only(
            b,
            "allowed_lateness",
            a.allowed_lateness.as_ref().map(|e| e.pos),
            "time windows (`window`)",
        );
    }
    if a.session.is_none() {
        ok &= only(b, "max", a.max.as_ref().map(|e| e.pos), "`session`");
    }
    if let Some(w) = &a.window {
        let size = positive(b, w, "window");
        let every = match &a.every {
            Some(e) => positive(b, e, "every"),
            None => size,
        };
        let lateness = b.opt_duration(&a.allowed_lateness);
        let (size, every, lateness) = (size?, every?, lateness?);
        if size % every != 0 {
            b.error(
                a.every.as_ref().map_or(w.pos, |e| e.pos),
                "`window` must be a whole multiple of `every`",
            )
            .hint("e.g. `window: 1m, every: 10s`: each window is six 10-second panes");
            return None;
        }
        let panes = (size + lateness.unwrap_or(0)) / every;
        if panes > panes::MAX_PANES {
            b.error(
                a.every.as_ref().map_or(w.pos, |e| e.pos),
                format!(
                    "a window of {panes} panes (`window` plus `allowed_lateness`, over `every`); at most {}",
                    panes::MAX_PANES
                ),
            )
            .hint("a longer `every`, or a shorter `window` or `allowed_lateness`");
            return None;
        }
        return ok.then_some(if every == size && lateness.is_none() {
            Mode::Tumbling(size)
        } else {
            Mode::Panes(panes::Shape {
                size,
                every,
                lateness,
            })
        });
    }
    if let Some(g) = &a.session {
        let gap = positive(b, g, "session");
        let max = match &a.max {
            Some(m) => positive(b, m, "max"),
            None => Some(DEFAULT_SESSION_MAX),
        };
        let (gap, max) = (gap?, max?);
        return ok.then_some(Mode::Session { gap, max });
    }
    let c = a.count.as_ref()?;
    if c.value == 0 {
        b.error(c.pos, "`count` must be at least 1");
        return None;
    }
    ok.then_some(Mode::Count(u64::from(c.value)))
}

/// How long a session lasts at most when `max` is not given: a day.
const DEFAULT_SESSION_MAX: i64 = 86_400_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Window {
    start: i64,
    tag: u64,
    accs: Vec<Acc>,
    messages: u64,
    /// The window's last message without its `msg` (the output replaces it): its `meta` and
    /// `attr` are what the output carries. Keeping the whole message kept a 60 kB payload per
    /// key in memory and in every checkpoint.
    last: Packet,
    /// A session's last message time (its silence counts from there).
    #[serde(default, skip_serializing_if = "is_zero")]
    last_at: i64,
}

fn is_zero(x: &i64) -> bool {
    *x == 0
}

/// Windows by key, under the node's `max_keys` like every per-key state (an evicted window
/// emits nothing, counted as an evicted key).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    /// Tumbling, session and count windows.
    windows: Keyed<Window>,
    /// Sliding windows' panes.
    #[serde(default, skip_serializing_if = "Keyed::is_empty")]
    panes: Keyed<panes::Panes>,
}

/// The message with an empty `msg`.
fn without_msg(mut p: Packet) -> Packet {
    p.vars.msg = Dynamic::UNIT;
    p
}

impl NodeImpl for Aggregate {
    super::common::persisted!(State);

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        match self.mode {
            Mode::Tumbling(window) => self.tumbling(cx, key, p, window),
            Mode::Panes(shape) => self.run_panes(cx, key, p, shape),
            Mode::Session { gap, max } => self.session(cx, key, p, gap, max),
            Mode::Count(n) => self.count(cx, key, p, n),
        }
    }

    /// A window of `key` closes: its output, if the timer is the window's own.
    fn fire(&self, cx: &mut Cx<'_>, key: &str, tag: u64) -> Option<Flow> {
        match self.mode {
            Mode::Tumbling(window) => {
                let st = cx.state::<State>();
                if st.windows.get(key).is_none_or(|w| w.tag != tag) {
                    return None;
                }
                let w = st.windows.remove(key)?;
                let end = w.start.saturating_add(window);
                Some(Flow::Pass(self.output(
                    &w.accs, w.messages, w.start, end, w.last,
                )))
            }
            Mode::Session { gap, max } => {
                let st = cx.state::<State>();
                let w = st.windows.get(key).filter(|w| w.tag == tag)?;
                let deadline = w
                    .last_at
                    .saturating_add(gap)
                    .min(w.start.saturating_add(max));
                if cx.now < deadline {
                    // Messages came since the timer was set: wait for the silence from the last.
                    let tag = cx.next_id();
                    if cx.schedule(deadline, key, tag).is_ok() {
                        let now = cx.now;
                        if let Some(w) = cx.state::<State>().windows.get_mut(key, now) {
                            w.tag = tag;
                        }
                        return None;
                    }
                }
                let w = cx.state::<State>().windows.remove(key)?;
                Some(Flow::Pass(self.output(
                    &w.accs, w.messages, w.start, deadline, w.last,
                )))
            }
            Mode::Panes(shape) => {
                let now = cx.now;
                let st = cx.state::<State>();
                if st.panes.get(key).is_none_or(|s| s.tag != tag) {
                    return None;
                }
                let s = st.panes.get_mut(key, now)?;
                let (end, closed) = s.close(shape, self.outs.len());
                let (last, empty, next_end) = (s.last.clone(), s.is_empty(), s.next_end);
                if empty {
                    cx.state::<State>().panes.remove(key);
                } else {
                    let tag = cx.next_id();
                    let due = next_end.saturating_add(shape.lateness.unwrap_or(0));
                    match cx.schedule(due, key, tag) {
                        Ok(()) => {
                            if let Some(s) = cx.state::<State>().panes.get_mut(key, now) {
                                s.tag = tag;
                            }
                        }
                        Err(_) => {
                            cx.state::<State>().panes.remove(key);
                        }
                    }
                }
                let (accs, messages) = closed?;
                Some(Flow::Pass(self.output(
                    &accs,
                    messages,
                    end.saturating_sub(shape.size),
                    end,
                    last,
                )))
            }
            Mode::Count(_) => None,
        }
    }
}

impl Aggregate {
    /// The window's message: the outputs, `window_start` and `window_end`, with `meta` of its
    /// last message and its end as the time.
    fn output(&self, accs: &[Acc], messages: u64, start: i64, end: i64, mut p: Packet) -> Packet {
        let mut out = Map::new();
        for (acc, (name, f, field)) in accs.iter().zip(&self.outs) {
            if let Some(v) = acc.output(*f, field, messages) {
                out.insert(name.as_str().into(), v);
            }
        }
        out.insert("window_start".into(), start.into());
        out.insert("window_end".into(), end.into());
        p.vars.msg = Dynamic::from_map(out);
        p.ts = end;
        p.set_meta("ts", end.into());
        p
    }

    fn values(&self, p: &Packet) -> Vec<Option<Dynamic>> {
        self.outs.iter().map(|(_, _, f)| p.field(f)).collect()
    }

    fn tumbling(&self, cx: &mut Cx<'_>, key: Arc<str>, p: Packet, window: i64) -> Flow {
        let start = cx.now.saturating_sub(cx.now.rem_euclid(window));
        let values = self.values(&p);
        let exists = cx
            .state::<State>()
            .windows
            .get(&key)
            .is_some_and(|w| w.start == start);
        if !exists {
            let tag = cx.next_id();
            if let Err(e) = cx.schedule(start.saturating_add(window), &key, tag) {
                return Flow::Error(e, p);
            }
            self.open(cx, key.clone(), start, tag, p);
            // The window holds the message now.
            return self.add(cx, &key, values, None);
        }
        self.add(cx, &key, values, Some(p))
    }

    fn session(&self, cx: &mut Cx<'_>, key: Arc<str>, p: Packet, gap: i64, max: i64) -> Flow {
        let now = cx.now;
        let values = self.values(&p);
        if cx.state::<State>().windows.get(&key).is_none() {
            let tag = cx.next_id();
            let due = now.saturating_add(gap.min(max));
            if let Err(e) = cx.schedule(due, &key, tag) {
                return Flow::Error(e, p);
            }
            self.open(cx, key.clone(), now, tag, p);
            return self.add(cx, &key, values, None);
        }
        if let Some(w) = cx.state::<State>().windows.get_mut(&key, now) {
            w.last_at = now;
        }
        self.add(cx, &key, values, Some(p))
    }

    fn count(&self, cx: &mut Cx<'_>, key: Arc<str>, p: Packet, n: u64) -> Flow {
        let now = cx.now;
        let values = self.values(&p);
        if cx.state::<State>().windows.get(&key).is_none() {
            self.open(cx, key.clone(), now, 0, p.clone());
        }
        let _ = self.add(cx, &key, values, None);
        let st = cx.state::<State>();
        if st.windows.get(&key).is_none_or(|w| w.messages < n) {
            return Flow::Stop(Why::Held);
        }
        let Some(w) = st.windows.remove(&key) else {
            return Flow::Stop(Why::Held);
        };
        Flow::Pass(self.output(&w.accs, w.messages, w.start, now, without_msg(p)))
    }

    fn run_panes(&self, cx: &mut Cx<'_>, key: Arc<str>, p: Packet, shape: panes::Shape) -> Flow {
        let now = cx.now;
        // On the engine's clock, or (with lateness) the message's own time, never ahead of
        // the clock.
        let t = if shape.lateness.is_some() {
            p.ts.min(now)
        } else {
            now
        };
        let values = self.values(&p);
        let funcs: Vec<Func> = self.outs.iter().map(|(_, f, _)| *f).collect();
        let exists = cx.state::<State>().panes.get(&key).is_some();
        if !exists {
            let Some(end) = shape.first_open_end(t, now) else {
                return late(cx, p, t);
            };
            let tag = cx.next_id();
            let due = end.saturating_add(shape.lateness.unwrap_or(0));
            if let Err(e) = cx.schedule(due, &key, tag) {
                return Flow::Error(e, p);
            }
            let s = panes::Panes::new(end, tag, without_msg(p));
            cx.insert_key(|s: &mut State| &mut s.panes, key.clone(), s);
            if let Some(s) = cx.state::<State>().panes.get_mut(&key, now) {
                s.add(shape, t, values, &funcs);
            }
            return Flow::Stop(Why::Held);
        }
        let Some(s) = cx.state::<State>().panes.get_mut(&key, now) else {
            return Flow::Stop(Why::Held);
        };
        if !s.add(shape, t, values, &funcs) {
            return late(cx, p, t);
        }
        s.last = without_msg(p);
        Flow::Stop(Why::Held)
    }

    /// Opens `key`'s window at `start` with `p` as its last message (timer `tag`).
    fn open(&self, cx: &mut Cx<'_>, key: Arc<str>, start: i64, tag: u64, p: Packet) {
        let accs = vec![Acc::default(); self.outs.len()];
        cx.insert_key(
            |s: &mut State| &mut s.windows,
            key,
            Window {
                start,
                tag,
                accs,
                messages: 0,
                last: without_msg(p),
                last_at: start,
            },
        );
    }

    /// Adds a message's values to its key's window; `p`, when given, becomes its last message.
    fn add(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        values: Vec<Option<Dynamic>>,
        p: Option<Packet>,
    ) -> Flow {
        let now = cx.now;
        let Some(w) = cx.state::<State>().windows.get_mut(key, now) else {
            return Flow::Stop(Why::Held);
        };
        w.messages += 1;
        for ((acc, v), (_, f, _)) in w.accs.iter_mut().zip(values).zip(&self.outs) {
            if let Some(v) = v {
                acc.add(*f, v, acc::MAX_VALUES);
            }
        }
        if let Some(p) = p {
            w.last = without_msg(p);
        }
        Flow::Stop(Why::Held)
    }
}

/// A message too late for every window it belongs to: dropped, with reason `late`.
fn late(cx: &mut Cx<'_>, p: Packet, t: i64) -> Flow {
    cx.emit(Event::Dropped {
        device: p.device.clone(),
        reason: DropReason::Late,
        detail: Some(format!(
            "its time {t} is before every window still open (allowed_lateness)"
        )),
    });
    Flow::Stop(Why::Stopped)
}

/// `aggregate`: windows per key (one of `window`, `session`, `count`).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// A time window's length (`1m`): tumbling alone, sliding with `every`. Also `size`.
    #[serde(default, alias = "size")]
    pub window: Option<Sp<String>>,
    /// A sliding window: one window ends at every multiple of this (`10s`); `window` must be a
    /// whole multiple of it.
    #[serde(default)]
    pub every: Option<Sp<String>>,
    /// A session window: it closes after this long without a message for its key (`30s`).
    /// Also `gap`.
    #[serde(default, alias = "gap")]
    pub session: Option<Sp<String>>,
    /// A session window closes at the latest this long after it opened (default `1d`).
    #[serde(default)]
    pub max: Option<Sp<String>>,
    /// A count window: it closes with its key's Nth message.
    #[serde(default)]
    pub count: Option<Sp<u32>>,
    /// Time windows follow the messages' own times (`meta.ts`) and close this long after their
    /// end; a message later than that is dropped (reason `late`). Default: windows follow the
    /// engine's clock.
    #[serde(default)]
    pub allowed_lateness: Option<Sp<String>>,
    /// Per-key windows; default `meta.device`.
    #[serde(default)]
    pub key: Option<Sp<ExprSrc>>,
    /// Output fields: `name: "avg(field)"` with `avg min max sum count first last stddev`
    /// and percentiles `p50`, `p95`, `p99` (any `p1` … `p99`).
    pub fields: Sp<SpMap<Sp<String>>>,
}
