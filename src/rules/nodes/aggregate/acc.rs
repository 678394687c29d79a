//! What an aggregate output keeps of the values it saw ([`Acc`]), how accumulators of parts of a
//! window add up (the panes of a sliding window), and the functions users name (`avg(v)`,
//! `p95(v)`…).

use rhai::Dynamic;

use crate::rules::nodes::common::as_f64;

/// An output function.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Func {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    First,
    Last,
    /// The sample standard deviation (n − 1).
    Stddev,
    /// A percentile, 0–100 (`p50`, `p95`, `p99`, any `pNN`).
    Pct(f64),
}

impl Func {
    /// Whether it reads numbers (others are skipped).
    fn numeric(self) -> bool {
        !matches!(self, Func::Count | Func::First | Func::Last)
    }
}

pub(super) const FUNCS: &str =
    "avg, min, max, sum, count, first, last, stddev and percentiles p1 … p99 (p50, p95, p99…)";

/// Most values a window keeps for a percentile output, per key; beyond it a uniform sample of
/// this many (see [`Acc::add`]).
pub(super) const MAX_VALUES: usize = 10_000;

/// `avg(temperature)` → (Avg, "temperature").
pub(super) fn parse_call(text: &str) -> Result<(Func, String), String> {
    let t = text.trim();
    let (name, rest) = t
        .split_once('(')
        .ok_or_else(|| format!("`{t}` is not a call like `avg(temperature)`"))?;
    let field = rest
        .strip_suffix(')')
        .ok_or_else(|| format!("`{t}` misses its closing `)`"))?
        .trim();
    let name = name.trim();
    let f = match name {
        "avg" => Func::Avg,
        "min" => Func::Min,
        "max" => Func::Max,
        "sum" => Func::Sum,
        "count" => Func::Count,
        "first" => Func::First,
        "last" => Func::Last,
        "stddev" => Func::Stddev,
        p if p.starts_with('p') && p.len() > 1 && p[1..].bytes().all(|b| b.is_ascii_digit()) => {
            match p[1..].parse::<u32>() {
                Ok(q) if (1..=99).contains(&q) => Func::Pct(f64::from(q)),
                _ => {
                    return Err(format!(
                        "`{p}` is not a percentile: use p1 … p99 (p50 is the median)"
                    ))
                }
            }
        }
        other => return Err(format!("unknown function `{other}`; use one of {FUNCS}")),
    };
    if field.is_empty() && f != Func::Count {
        return Err(format!("`{name}()` needs a field name"));
    }
    Ok((f, field.to_string()))
}

/// One output's accumulator over part or all of a window.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Acc {
    pub(super) n: u64,
    sum: f64,
    #[serde(with = "crate::engine::persist::any_f64")]
    min: f64,
    #[serde(with = "crate::engine::persist::any_f64")]
    max: f64,
    first: Option<Dynamic>,
    last: Option<Dynamic>,
    /// The running mean and sum of squared deviations (Welford), for `stddev`.
    #[serde(default, skip_serializing_if = "is_zero")]
    mean: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    m2: f64,
    /// The values, for a percentile: all of them up to [`MAX_VALUES`], then a uniform sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    values: Vec<f64>,
    /// How many values the sample stands for (when it is one).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    seen: u64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero_u64(x: &u64) -> bool {
    *x == 0
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
            mean: 0.0,
            m2: 0.0,
            values: Vec::new(),
            seen: 0,
        }
    }
}

impl Acc {
    /// Adds a message's value of the output's field. A numeric function skips what is not a
    /// number. A percentile's values past `cap` are sampled (reservoir sampling with a
    /// generator seeded by the count, so the same input gives the same sample, in a run as in
    /// a dry-run).
    pub(super) fn add(&mut self, f: Func, v: Dynamic, cap: usize) {
        if f.numeric() {
            let Some(x) = as_f64(&v) else { return };
            self.sum += x;
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            match f {
                Func::Stddev => {
                    let d = x - self.mean;
                    self.mean += d / (self.n + 1) as f64;
                    self.m2 += d * (x - self.mean);
                }
                Func::Pct(_) => {
                    self.seen += 1;
                    if self.values.len() < cap {
                        self.values.push(x);
                    } else {
                        let j = (mix(self.seen) % self.seen) as usize;
                        if j < cap {
                            self.values[j] = x;
                        }
                    }
                }
                _ => {}
            }
        }
        self.n += 1;
        if self.first.is_none() {
            self.first = Some(v.clone());
        }
        self.last = Some(v);
    }

    /// Adds a later part of the window (`other` came after `self`).
    pub(super) fn merge(&mut self, other: &Acc) {
        if other.n == 0 {
            return;
        }
        let (n1, n2) = (self.n as f64, other.n as f64);
        let d = other.mean - self.mean;
        let n = n1 + n2;
        self.mean += d * n2 / n;
        self.m2 += other.m2 + d * d * n1 * n2 / n;
        self.n += other.n;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if self.first.is_none() {
            self.first = other.first.clone();
        }
        if other.last.is_some() {
            self.last = other.last.clone();
        }
        self.seen += other.seen;
        let room = MAX_VALUES.saturating_sub(self.values.len());
        if other.values.len() <= room {
            self.values.extend_from_slice(&other.values);
        } else {
            // Both parts sampled down to the bound, each in proportion to what it stands for.
            let (a, b) = (self.seen.max(1) as f64, other.seen.max(1) as f64);
            let keep_b = ((MAX_VALUES as f64) * b / (a + b)).round() as usize;
            let keep_a = MAX_VALUES - keep_b.min(MAX_VALUES);
            thin(&mut self.values, keep_a);
            self.values
                .extend(other.values.iter().step_by(step(other.values.len(), keep_b)));
            self.values.truncate(MAX_VALUES);
        }
    }

    /// The output of function `f` (`messages`: how many messages the window had, for
    /// `count()`); `None` when there was nothing to aggregate.
    pub(super) fn output(&self, f: Func, field: &str, messages: u64) -> Option<Dynamic> {
        match f {
            Func::Count if field.is_empty() => Some((messages as i64).into()),
            Func::Count => Some((self.n as i64).into()),
            _ if self.n == 0 => None,
            Func::Avg => Some((self.sum / self.n as f64).into()),
            Func::Sum => Some(self.sum.into()),
            Func::Min => Some(self.min.into()),
            Func::Max => Some(self.max.into()),
            Func::First => self.first.clone(),
            Func::Last => self.last.clone(),
            Func::Stddev if self.n < 2 => None,
            Func::Stddev => Some((self.m2.max(0.0) / (self.n - 1) as f64).sqrt().into()),
            Func::Pct(q) => percentile(&self.values, q).map(Dynamic::from_float),
        }
    }
}

/// The `q`th percentile (0–100) by linear interpolation between the closest ranks (the
/// default of NumPy and of most spreadsheets): p50 of 1, 2, 3, 4 is 2.5.
fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let rank = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

/// Keeps about `keep` of `v`, evenly spread.
fn thin(v: &mut Vec<f64>, keep: usize) {
    let s = step(v.len(), keep);
    if s > 1 {
        *v = v.iter().step_by(s).copied().collect();
    }
    v.truncate(keep);
}

fn step(len: usize, keep: usize) -> usize {
    if keep == 0 {
        usize::MAX
    } else {
        len.div_ceil(keep).max(1)
    }
}

/// A 64-bit mix (splitmix64's finalizer): the reservoir's deterministic "random" index.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(f: Func, xs: &[f64]) -> Acc {
        let mut a = Acc::default();
        for x in xs {
            a.add(f, Dynamic::from_float(*x), MAX_VALUES);
        }
        a
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let a = acc(Func::Pct(50.0), &[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(a.output(Func::Pct(50.0), "v", 4).unwrap().as_float(), Ok(2.5));
        let a = acc(Func::Pct(95.0), &(1..=101).map(f64::from).collect::<Vec<_>>());
        assert_eq!(a.output(Func::Pct(95.0), "v", 101).unwrap().as_float(), Ok(96.0));
    }

    #[test]
    fn stddev_is_the_sample_deviation_and_merges_exactly() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let whole = acc(Func::Stddev, &xs);
        let sd = whole.output(Func::Stddev, "v", 8).unwrap().as_float().unwrap();
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12, "{sd}");
        let mut a = acc(Func::Stddev, &xs[..3]);
        a.merge(&acc(Func::Stddev, &xs[3..]));
        let merged = a.output(Func::Stddev, "v", 8).unwrap().as_float().unwrap();
        assert!((merged - sd).abs() < 1e-12, "{merged} {sd}");
        assert!(acc(Func::Stddev, &[1.0]).output(Func::Stddev, "v", 1).is_none());
    }

    #[test]
    fn a_percentile_keeps_at_most_max_values_and_stays_close() {
        let xs: Vec<f64> = (0..50_000).map(|i| f64::from((i * 7919) % 50_000)).collect();
        let a = acc(Func::Pct(95.0), &xs);
        assert_eq!(a.values.len(), MAX_VALUES);
        let p95 = a.output(Func::Pct(95.0), "v", 50_000).unwrap().as_float().unwrap();
        assert!((p95 - 47_500.0).abs() < 500.0, "{p95}");
        let mut m = acc(Func::Pct(95.0), &xs[..30_000]);
        m.merge(&acc(Func::Pct(95.0), &xs[30_000..]));
        assert!(m.values.len() <= MAX_VALUES);
        let p95 = m.output(Func::Pct(95.0), "v", 50_000).unwrap().as_float().unwrap();
        assert!((p95 - 47_500.0).abs() < 500.0, "{p95}");
    }

    #[test]
    fn functions_are_named_as_users_write_them() {
        assert_eq!(parse_call("p95(v)"), Ok((Func::Pct(95.0), "v".into())));
        assert_eq!(parse_call(" stddev( v ) "), Ok((Func::Stddev, "v".into())));
        assert!(parse_call("p100(v)").unwrap_err().contains("p1 … p99"));
        assert!(parse_call("median(v)").unwrap_err().contains("unknown function"));
    }
}
