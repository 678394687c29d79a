//! One way to expose counters. A component lists its counters once, in
//! [`Counters::report`]: each with its name, its meaning and its kind (a count that only
//! grows, a level that goes up and down, a yes/no state, a family by one label, a part of its
//! own). A rendering is a [`Report`]: [`to_json`] gives the JSON of `/api/status` and of the log
//! line at shutdown; a Prometheus rendering for `/metrics` reads the same lists.
//!
//! Texts (the last error, where a channel delivers) are part of the JSON only: they are not
//! numbers and never become metrics.

pub mod prometheus;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::{Map, Value};

/// A component with counters.
pub trait Counters {
    /// Lists every counter, in the order it is shown.
    fn report(&self, r: &mut dyn Report);
}

/// A rendering of counters.
pub trait Report {
    /// A count that only grows.
    fn counter(&mut self, name: &str, help: &str, value: u64);
    /// A level that goes up and down (clients now, points buffered now).
    fn gauge(&mut self, name: &str, help: &str, value: u64);
    /// A yes/no state.
    fn flag(&mut self, name: &str, help: &str, value: bool);
    /// A short text (JSON only).
    fn text(&mut self, name: &str, help: &str, value: Option<&str>);
    /// Counts by one label (rejected payloads by reason).
    fn counters_by(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]);
    /// Parts with counters of their own (the notification channels), under `name`, each told
    /// apart by `label` = its name.
    fn parts(&mut self, name: &str, label: &str, parts: &[(&str, &dyn Counters)]);
    /// Durations (metrics only: the JSON of `/api/status` does not show them).
    fn histogram(&mut self, _name: &str, _help: &str, _value: &HistogramSnapshot) {}
    /// Levels by several labels (open alarms by status and severity; metrics only).
    fn gauges_by(
        &mut self,
        _name: &str,
        _help: &str,
        _labels: &[&str],
        _values: &[(Vec<&str>, u64)],
    ) {
    }
}

/// The upper bounds of the duration buckets, in seconds: 10 µs to 10 s.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations in [`DURATION_BUCKETS`], lock-free: each observation is three
/// relaxed atomic adds (its bucket, the count, the sum), so the writer never waits on a scrape.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in nanoseconds.
    bounds: [u64; DURATION_BUCKETS.len()],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: DURATION_BUCKETS.map(|s| (s * 1e9).round() as u64),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn observe_ns(&self, ns: u64) {
        let i = self.bounds.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// What it holds now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot::default();
        s.add(self);
        s
    }
}

/// A histogram's values at one moment; snapshots of several writers (shards) add up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`DURATION_BUCKETS`], not cumulative; the last is `+Inf`.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Adds what `h` holds.
    pub fn add(&mut self, h: &Histogram) {
        for (mine, b) in self.buckets.iter_mut().zip(&h.buckets) {
            *mine += b.load(Relaxed);
        }
        self.count += h.count.load(Relaxed);
        self.sum += h.sum_ns.load(Relaxed) as f64 / 1e9;
    }

    /// `(upper bound, count in this bucket alone)`, `+Inf` last: what the Prometheus encoder
    /// takes (it adds them up into the cumulative `le` buckets itself).
    pub fn per_bucket(&self) -> Vec<(f64, u64)> {
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .collect()
    }
}

/// Counters as a JSON object: `{name: value}`, a family as `{name: {label value: n}}`, parts as
/// `{name: {label value: {...}}}`.
#[derive(Debug, Default)]
pub struct JsonReport(pub Map<String, Value>);

impl Report for JsonReport {
    fn counter(&mut self, name: &str, _help: &str, value: u64) {
        self.0.insert(name.into(), value.into());
    }

    fn gauge(&mut self, name: &str, _help: &str, value: u64) {
        self.0.insert(name.into(), value.into());
    }

    fn flag(&mut self, name: &str, _help: &str, value: bool) {
        self.0.insert(name.into(), value.into());
    }

    fn text(&mut self, name: &str, _help: &str, value: Option<&str>) {
        self.0
            .insert(name.into(), value.map_or(Value::Null, Value::from));
    }

    fn counters_by(&mut self, name: &str, _help: &str, _label: &str, values: &[(&str, u64)]) {
        let m: Map<String, Value> = values
            .iter()
            .map(|(k, n)| (k.to_string(), (*n).into()))
            .collect();
        self.0.insert(name.into(), Value::Object(m));
    }

    fn parts(&mut self, name: &str, _label: &str, parts: &[(&str, &dyn Counters)]) {
        let m: Map<String, Value> = parts
            .iter()
            .map(|(k, c)| (k.to_string(), to_json(*c)))
            .collect();
        self.0.insert(name.into(), Value::Object(m));
    }
}

/// Named parts as [`Report::parts`] takes them.
pub fn parts<'a, T: Counters>(named: &'a [(&'a str, T)]) -> Vec<(&'a str, &'a dyn Counters)> {
    named
        .iter()
        .map(|(n, p)| (*n, p as &dyn Counters))
        .collect()
}

/// A component's counters as JSON.
pub fn to_json(c: &dyn Counters) -> Value {
    let mut r = JsonReport::default();
    c.report(&mut r);
    Value::Object(r.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Channel(u64);
    impl Counters for Channel {
        fn report(&self, r: &mut dyn Report) {
            r.counter("sent", "delivered", self.0);
            r.text("last_error", "the last error", None);
        }
    }

    struct Engine;
    impl Counters for Engine {
        fn report(&self, r: &mut dyn Report) {
            r.counter("received", "messages in", 7);
            r.counters_by("rejected", "by reason", "reason", &[("too_large", 1)]);
            r.flag("connected", "ingest connected", true);
            r.parts(
                "channels",
                "channel",
                &[("ops", &Channel(2)), ("mail", &Channel(3))],
            );
            r.parts("none", "channel", &[]);
        }
    }

    #[test]
    fn histogram_buckets_are_upper_bounds_inclusive() {
        let h = Histogram::default();
        h.observe_ns(10_000); // exactly 10 µs: the first bucket
        h.observe_ns(10_001);
        h.observe(std::time::Duration::from_secs(60)); // past every bound: +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        let c = s.per_bucket();
        assert_eq!(c[0], (0.000_01, 1));
        assert_eq!(c[1], (0.000_025, 1));
        assert_eq!(c[c.len() - 2].1, 0);
        assert_eq!(c[c.len() - 1], (f64::INFINITY, 1));
        assert!((s.sum - 60.000_020_001).abs() < 1e-9);
    }

    #[test]
    fn json_nests_families_and_parts() {
        assert_eq!(
            to_json(&Engine),
            serde_json::json!({
                "received": 7,
                "rejected": {"too_large": 1},
                "connected": true,
                "channels": {
                    "ops": {"sent": 2, "last_error": null},
                    "mail": {"sent": 3, "last_error": null},
                },
                "none": {},
            })
        );
    }
}
