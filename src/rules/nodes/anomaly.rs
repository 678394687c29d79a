//! `anomaly`: a learned baseline per key and field, and a z-score against it. Per key (the device,
//! or `key:`), the node keeps an exponentially weighted mean and variance of `field` whose
//! weights halve every `half_life` of the engine's clock (message time, so dry-run equals run).
//! Once `warmup` values have been learned, a value whose score `|x − mean| / std` is above
//! `threshold` passes (`then`, the next node); any other goes to `else:` (like a false filter).
//!
//! A judged message gets `msg.anomaly = {score, mean, std}` (the signed score, the baseline
//! before this value), on either route, for templates and alarms. A normal value is then
//! learned; an anomalous one is not (the baseline stays what normal looks like, so a fault does
//! not become normal while it lasts, and one spike does not widen the baseline). A message
//! without the field (or with a non-number) is not judged and goes to `else:`.
//!
//! The baseline's total weight decays with time too: after a silence of several half-lives it
//! rests on fewer than `warmup / 2` values' weight, and the key learns again before it judges.
//!
//! State per key: four numbers. The baselines persist and carry over reloads like every node's
//! state; keys beyond the state limit are evicted least recently used first.

use rhai::{Dynamic, Map};

use super::common::{as_f64, KeySel};
use super::common::{Keys, NodeHead};
use crate::engine::{Cx, Flow, Keyed, NodeImpl, Packet};
use crate::rules::builder::Builder;
use crate::yaml::Sp;

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["anomaly"],
    owns: &["else", "key"],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// anomaly: passes a value that deviates from the key's learned baseline (a z-score above
    /// `threshold`); a normal one goes to `else`.
    #[serde(default)]
    pub anomaly: Option<Sp<AnomalySpec>>,
    /// anomaly: the node id a normal (or unjudged) message goes to (default: nowhere).
    #[serde(default, rename = "else")]
    pub else_: Option<Sp<String>>,
}

/// `anomaly`: a z-score against an exponentially weighted baseline.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalySpec {
    /// The numeric field of `msg` to judge.
    pub field: Sp<String>,
    /// How many standard deviations from the mean make an anomaly (default 3).
    #[serde(default)]
    pub threshold: Option<Sp<f64>>,
    /// How fast the baseline forgets: a value this old weighs half as much as a new one
    /// (default `1h`).
    #[serde(default)]
    pub half_life: Option<Sp<String>>,
    /// How many values are learned before any is judged (default 30).
    #[serde(default)]
    pub warmup: Option<Sp<u32>>,
    /// The smallest standard deviation the score divides by, in the field's unit (default 0):
    /// a near-constant signal otherwise makes every small change an anomaly.
    #[serde(default)]
    pub min_std: Option<Sp<f64>>,
}

struct Anomaly {
    field: String,
    threshold: f64,
    half_life: i64,
    warmup: u64,
    min_std: f64,
    key: KeySel,
}

pub(super) fn build(spec: &Spec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let a = spec.anomaly.as_ref()?;
    let key = KeySel::build(&head.key, b);
    let mut ok = true;
    if a.field.value.trim().is_empty() {
        b.error(a.field.pos, "`field` is empty")
            .hint("the numeric field of `msg` to judge, e.g. `field: vibration`");
        ok = false;
    }
    let threshold = a.threshold.as_ref().map_or(3.0, |t| t.value);
    if let Some(t) = &a.threshold {
        if !(t.value > 0.0 && t.value.is_finite()) {
            b.error(t.pos, "`threshold` must be a finite number above 0")
                .hint("a z-score: 3 flags values 3 standard deviations from the mean");
            ok = false;
        }
    }
    let half_life = match &a.half_life {
        Some(h) => match b.duration(h) {
            Some(0) => {
                b.error(h.pos, "`half_life` must be longer than 0");
                None
            }
            other => other,
        },
        None => Some(3_600_000),
    };
    let min_std = a.min_std.as_ref().map_or(0.0, |m| m.value);
    if let Some(m) = &a.min_std {
        if !(m.value >= 0.0 && m.value.is_finite()) {
            b.error(m.pos, "`min_std` must be a finite number, 0 or more");
            ok = false;
        }
    }
    let warmup = a.warmup.as_ref().map_or(30, |w| u64::from(w.value));
    if warmup == 0 {
        if let Some(w) = &a.warmup {
            b.error(w.pos, "`warmup` must be at least 1")
                .hint("the baseline needs values before it can judge one");
        }
        ok = false;
    }
    let (half_life, key) = (half_life?, key?);
    ok.then(|| {
        Box::new(Anomaly {
            field: a.field.value.clone(),
            threshold,
            half_life,
            warmup,
            min_std,
            key,
        }) as Box<dyn NodeImpl>
    })
}

/// A key's baseline: the exponentially weighted mean and variance of the values learned, each
/// value weighing `2^(−age/half_life)`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Baseline {
    /// Values learned.
    n: u64,
    /// Their total weight now: about `n` at first, at most the number of values in
    /// `half_life / ln 2`, and less after a silence (the old values weigh less).
    w: f64,
    mean: f64,
    /// The weighted sum of squared deviations from the mean (the variance is `s / w`).
    s: f64,
    /// The time of the last value learned (ms).
    at: i64,
}

impl Baseline {
    /// Learns `x` at time `ts`: the old values' weights decay by the time since the last one,
    /// and `x` comes in with weight 1 (West's weighted update, exact for these weights).
    fn learn(&mut self, x: f64, ts: i64, half_life: i64) {
        let dt = ts.saturating_sub(self.at).max(0) as f64;
        let decay = if self.n == 0 {
            0.0
        } else {
            (-dt / half_life as f64).exp2()
        };
        self.w = self.w * decay + 1.0;
        let diff = x - self.mean;
        self.mean += diff / self.w;
        self.s = self.s * decay + diff * (x - self.mean);
        self.n = self.n.saturating_add(1);
        self.at = self.at.max(ts);
    }

    fn std(&self) -> f64 {
        if self.w > 0.0 {
            (self.s / self.w).max(0.0).sqrt()
        } else {
            0.0
        }
    }

    /// Whether it judges: `warmup` values learned, and, after a silence, at least half that
    /// many values' weight still behind it (else it learns again first).
    fn ready(&self, warmup: u64) -> bool {
        self.n >= warmup && self.w >= warmup as f64 / 2.0
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    keys: Keyed<Baseline>,
}

impl NodeImpl for Anomaly {
    super::common::persisted!(State);

    /// A baseline idle for `idle` (`engine.forget_after`, 7 days) is forgotten: with any
    /// half-life up to a day it weighs next to nothing by then, and would learn again anyway.
    fn sweep(&self, state: &mut (dyn std::any::Any + Send), now: i64, idle: i64) -> usize {
        state
            .downcast_mut::<State>()
            .map_or(0, |s| s.keys.sweep(now, idle, |_| false))
    }

    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let Some(x) = p
            .field(&self.field)
            .as_ref()
            .and_then(as_f64)
            .filter(|x| x.is_finite())
        else {
            return Flow::Else(p);
        };
        let key = match self.key.key(cx, &mut p) {
            Ok(k) => k,
            Err(e) => return Flow::Error(e, p),
        };
        let (now, ts) = (cx.now, p.ts);
        let mut base = cx
            .state::<State>()
            .keys
            .get_mut(&key, now)
            .copied()
            .unwrap_or_default();
        let mut anomalous = false;
        if base.ready(self.warmup) {
            let std = base.std();
            // Never divide by 0: a constant baseline scores a change by its size.
            let scale = std
                .max(self.min_std)
                .max(f64::EPSILON * base.mean.abs().max(1.0));
            let score = (x - base.mean) / scale;
            anomalous = score.abs() > self.threshold;
            let mut m = Map::new();
            m.insert("score".into(), Dynamic::from_float(score));
            m.insert("mean".into(), Dynamic::from_float(base.mean));
            m.insert("std".into(), Dynamic::from_float(std));
            p.with_msg(|msg| msg.insert("anomaly".into(), Dynamic::from_map(m)));
        }
        if anomalous {
            // Not learned: the baseline stays what normal looks like, and a fault does not
            // become normal while it lasts.
            return Flow::Pass(p);
        }
        base.learn(x, ts, self.half_life);
        match cx.state::<State>().keys.get_mut(&key, now) {
            Some(b) => *b = base,
            None => {
                cx.insert_key(|s: &mut State| &mut s.keys, key, base);
            }
        }
        Flow::Else(p)
    }
}

#[cfg(test)]
mod tests {
    use super::Baseline;

    #[test]
    fn values_at_one_instant_give_the_plain_mean_and_variance() {
        let mut b = Baseline::default();
        for x in [1.0, 2.0, 3.0, 4.0, 5.0] {
            b.learn(x, 1000, 3_600_000);
        }
        assert_eq!(b.n, 5);
        assert!((b.mean - 3.0).abs() < 1e-9, "{b:?}");
        assert!((b.std() - 2f64.sqrt()).abs() < 1e-9, "population deviation: {b:?}");
        assert!(b.ready(5) && !b.ready(6));
    }

    #[test]
    fn a_value_one_half_life_old_weighs_half() {
        let mut b = Baseline::default();
        b.learn(0.0, 0, 60_000);
        b.learn(3.0, 60_000, 60_000);
        // Weights 0.5 and 1: mean 2, variance (0.5·4 + 1·1) / 1.5 = 2.
        assert!((b.w - 1.5).abs() < 1e-9, "{b:?}");
        assert!((b.mean - 2.0).abs() < 1e-9, "{b:?}");
        assert!((b.std() - 2f64.sqrt()).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn after_a_long_silence_the_baseline_learns_again_before_it_judges() {
        let mut b = Baseline::default();
        for i in 0..100 {
            b.learn(f64::from(i % 2), i64::from(i) * 1000, 3_600_000);
        }
        assert!(b.ready(30));
        // Ten half-lives later the old values weigh 1/1024 of what they did.
        b.learn(0.5, 100_000 + 36_000_000, 3_600_000);
        assert!(!b.ready(30), "{b:?}");
        // A silence of a few minutes changes nothing.
        let mut c = Baseline::default();
        for i in 0..100 {
            c.learn(f64::from(i % 2), i64::from(i) * 1000, 3_600_000);
        }
        c.learn(0.5, 100_000 + 300_000, 3_600_000);
        assert!(c.ready(30) && (c.std() - 0.5).abs() < 0.01, "{c:?}");
    }
}
