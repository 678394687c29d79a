//! `aggregate`: tumbling windows per key, aligned to the epoch. When a window closes (a timer at
//! its end), one message passes: `meta` of the window's last message with `meta.ts` = the window
//! end, and `msg` = the output fields plus `window_start` and `window_end` (ms).
//!
//! `avg`, `min`, `max` and `sum` read numbers (others are skipped) and give floats; `count(f)`
//! counts the messages that have field `f` (`count()` counts all); `first`/`last` keep values as
//! they were. An output with no value to aggregate is left out.

use crate::rules::syntax::ExprSrc;
use crate::yaml::Sp;
use crate::yaml::SpMap;
use rhai::{Dynamic, Map};
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::{as_f64, KeySel};
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::yaml::Pos;

#[derive(Clone, Copy, PartialEq)]
enum Func {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    First,
    Last,
}

struct Aggregate {
    window: i64,
    key: KeySel,
    outs: Vec<(String, Func, String)>,
}

const FUNCS: &[&str] = &["avg", "min", "max", "sum", "count", "first", "last"];

fn parse_call(text: &str) -> Result<(Func, String), String> {
    let t = text.trim();
    let (name, rest) = t
        .split_once('(')
        .ok_or_else(|| format!("`{t}` is not a call like `avg(temperature)`"))?;
    let field = rest
        .strip_suffix(')')
        .ok_or_else(|| format!("`{t}` misses its closing `)`"))?
        .trim();
    let f = match name.trim() {
        "avg" => Func::Avg,
        "min" => Func::Min,
        "max" => Func::Max,
        "sum" => Func::Sum,
        "count" => Func::Count,
        "first" => Func::First,
        "last" => Func::Last,
        other => {
            return Err(format!(
                "unknown function `{other}`; use one of {}",
                FUNCS.join(", ")
            ))
        }
    };
    if field.is_empty() && f != Func::Count {
        return Err(format!("`{name}()` needs a field name"));
    }
    Ok((f, field.to_string()))
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
    /// aggregate: a tumbling window per key, emitting one message when it closes.
    #[serde(default)]
    pub aggregate: Option<Sp<AggregateSpec>>,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let a = spec.aggregate.as_ref()?;
    let key = &head.key;
    let window = b.duration(&a.window);
    if window == Some(0) {
        b.error(a.window.pos, "the window must be longer than 0");
    }
    let key_src = a.key.clone().or_else(|| key.clone());
    let key = KeySel::build(&key_src, b);
    let mut outs = Vec::new();
    let mut ok = true;
    if a.fields.value.0.is_empty() {
        b.error(a.fields.pos, "`fields` is empty")
            .hint("e.g. `fields: {avg_rms: \"avg(rms)\"}`");
        ok = false;
    }
    for (name, call) in &a.fields.value.0 {
        match parse_call(call) {
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
    let window = window.filter(|w| *w > 0)?;
    let key = key?;
    ok.then(|| Box::new(Aggregate { window, key, outs }) as Box<dyn NodeImpl>)
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Acc {
    n: u64,
    sum: f64,
    #[serde(with = "crate::engine::persist::any_f64")]
    min: f64,
    #[serde(with = "crate::engine::persist::any_f64")]
    max: f64,
    first: Option<Dynamic>,
    last: Option<Dynamic>,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: None,
            last: None,
        }
    }
}

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
}

/// Windows by key, under the node's `max_keys` like every per-key state (an evicted window
/// emits nothing, counted as an evicted key).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    windows: Keyed<Window>,
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
        let start = cx.now.saturating_sub(cx.now.rem_euclid(self.window));
        let values: Vec<Option<Dynamic>> = self.outs.iter().map(|(_, _, f)| p.field(f)).collect();
        let exists = cx
            .state::<State>()
            .windows
            .get(&key)
            .is_some_and(|w| w.start == start);
        if !exists {
            let tag = cx.next_id();
            if let Err(e) = cx.schedule(start.saturating_add(self.window), &key, tag) {
                return Flow::Error(e, p);
            }
            let accs = vec![Acc::default(); self.outs.len()];
            cx.insert_key(
                |s: &mut State| &mut s.windows,
                key.clone(),
                Window {
                    start,
                    tag,
                    accs,
                    messages: 0,
                    last: without_msg(p),
                },
            );
            // The window holds the message now.
            return self.add(cx, &key, values, None);
        }
        self.add(cx, &key, values, Some(p))
    }

    /// The window of `key` closes: its output, if the timer is the window's own.
    fn fire(&self, cx: &mut Cx<'_>, key: &str, tag: u64) -> Option<Flow> {
        let st = cx.state::<State>();
        if st.windows.get(key).is_none_or(|w| w.tag != tag) {
            return None;
        }
        let w = st.windows.remove(key)?;
        let end = w.start.saturating_add(self.window);
        let mut out = Map::new();
        for (acc, (name, f, field)) in w.accs.iter().zip(&self.outs) {
            let v: Option<Dynamic> = match f {
                Func::Count if field.is_empty() => Some((w.messages as i64).into()),
                Func::Count => Some((acc.n as i64).into()),
                _ if acc.n == 0 => None,
                Func::Avg => Some((acc.sum / acc.n as f64).into()),
                Func::Sum => Some(acc.sum.into()),
                Func::Min => Some(acc.min.into()),
                Func::Max => Some(acc.max.into()),
                Func::First => acc.first.clone(),
                Func::Last => acc.last.clone(),
            };
            if let Some(v) = v {
                out.insert(name.as_str().into(), v);
            }
        }
        out.insert("window_start".into(), w.start.into());
        out.insert("window_end".into(), end.into());
        let mut p = w.last;
        p.vars.msg = Dynamic::from_map(out);
        p.ts = end;
        p.set_meta("ts", end.into());
        Some(Flow::Pass(p))
    }
}

impl Aggregate {
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
        for ((acc, v), (_, f, field)) in w.accs.iter_mut().zip(values).zip(&self.outs) {
            let Some(v) = v else { continue };
            if matches!(f, Func::Avg | Func::Min | Func::Max | Func::Sum) {
                let Some(x) = as_f64(&v) else { continue };
                acc.sum += x;
                acc.min = acc.min.min(x);
                acc.max = acc.max.max(x);
            }
            let _ = field;
            acc.n += 1;
            if acc.first.is_none() {
                acc.first = Some(v.clone());
            }
            acc.last = Some(v);
        }
        if let Some(p) = p {
            w.last = without_msg(p);
        }
        Flow::Stop(Why::Held)
    }
}

/// `aggregate`: a tumbling window, aligned to the epoch.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// The window length (`1m`).
    pub window: Sp<String>,
    /// Per-key windows; default `meta.device`.
    #[serde(default)]
    pub key: Option<Sp<ExprSrc>>,
    /// Output fields: `name: "avg(field)"` with `avg min max sum count first last`.
    pub fields: Sp<SpMap<Sp<String>>>,
}
