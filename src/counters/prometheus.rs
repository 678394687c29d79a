//! Counters as Prometheus metrics: a [`Report`] that gathers every component's list into metric
//! families, encoded by `prometheus-client`'s text encoder (OpenMetrics text, which Prometheus
//! scrapes; counters get their `_total` suffix there).
//!
//! Names: the component's prefix plus the counter's name (`rulechain_influx_` + `written` →
//! `rulechain_influx_written_total`). A family by label adds that label; a part adds its label
//! (`channel="ops"`) to every counter it lists, under the same names as its siblings, so one
//! metric holds every channel. Texts are left out.

use std::collections::HashMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Counters, HistogramSnapshot, Report};

type Labels = Vec<(String, String)>;

#[derive(Debug)]
enum Sample {
    Int(u64),
    Hist(HistogramSnapshot),
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Labels, Sample)>,
}

/// Metric families gathered from components' counter lists.
#[derive(Debug, Default)]
pub struct PromReport {
    prefix: String,
    labels: Labels,
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl PromReport {
    /// Adds a component's counters under `prefix` (`rulechain_influx_`).
    pub fn add(&mut self, prefix: &str, c: &dyn Counters) {
        self.prefix = prefix.to_string();
        self.labels.clear();
        c.report(self);
    }

    /// Adds a component's counters under `prefix`, each with these labels too.
    pub fn add_labelled(&mut self, prefix: &str, labels: &[(&str, &str)], c: &dyn Counters) {
        self.prefix = prefix.to_string();
        self.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c.report(self);
        self.labels.clear();
    }

    fn push(&mut self, name: &str, help: &str, kind: MetricType, extra: Labels, v: Sample) {
        let full = format!("{}{name}", self.prefix);
        let i = match self.index.get(&full) {
            Some(&i) => i,
            None => {
                self.families.push(Family {
                    name: full.clone(),
                    help: help.to_string(),
                    kind,
                    samples: Vec::new(),
                });
                self.index.insert(full, self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let mut labels = self.labels.clone();
        labels.extend(extra);
        self.families[i].samples.push((labels, v));
    }

    /// The metrics as OpenMetrics text.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(self.families)));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl Report for PromReport {
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.push(name, help, MetricType::Counter, vec![], Sample::Int(value));
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.push(name, help, MetricType::Gauge, vec![], Sample::Int(value));
    }

    fn flag(&mut self, name: &str, help: &str, value: bool) {
        self.push(
            name,
            help,
            MetricType::Gauge,
            vec![],
            Sample::Int(value.into()),
        );
    }

    fn text(&mut self, _name: &str, _help: &str, _value: Option<&str>) {}

    fn counters_by(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        for (v, n) in values {
            let labels = vec![(label.to_string(), v.to_string())];
            self.push(name, help, MetricType::Counter, labels, Sample::Int(*n));
        }
    }

    fn parts(&mut self, _name: &str, label: &str, parts: &[(&str, &dyn Counters)]) {
        let outer = self.labels.clone();
        for (part, c) in parts {
            self.labels = outer.clone();
            self.labels.push((label.to_string(), part.to_string()));
            c.report(self);
        }
        self.labels = outer;
    }

    fn histogram(&mut self, name: &str, help: &str, value: &HistogramSnapshot) {
        let v = Sample::Hist(value.clone());
        self.push(name, help, MetricType::Histogram, vec![], v);
    }

    fn gauges_by(&mut self, name: &str, help: &str, labels: &[&str], values: &[(Vec<&str>, u64)]) {
        for (vs, n) in values {
            let l = labels
                .iter()
                .zip(vs)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.push(name, help, MetricType::Gauge, l, Sample::Int(*n));
        }
    }
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut m = encoder.encode_descriptor(&f.name, &f.help, None, f.kind)?;
            for (labels, v) in &f.samples {
                let e = m.encode_family(labels)?;
                match v {
                    Sample::Int(n) if f.kind == MetricType::Counter => {
                        ConstCounter::new(*n).encode(e)?
                    }
                    Sample::Int(n) => {
                        ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX)).encode(e)?
                    }
                    Sample::Hist(h) => {
                        let mut e = e;
                        e.encode_histogram(
                            h.sum,
                            h.count,
                            &h.per_bucket(),
                            None::<&HashMap<usize, Exemplar<Labels, f64>>>,
                        )?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Histogram;

    struct Channel(u64);
    impl Counters for Channel {
        fn report(&self, r: &mut dyn Report) {
            r.counter("sent", "delivered", self.0);
            r.text("via", "where", Some("smtp"));
        }
    }

    struct Notify;
    impl Counters for Notify {
        fn report(&self, r: &mut dyn Report) {
            r.parts(
                "channels",
                "channel",
                &[("ops", &Channel(2)), ("m\"x", &Channel(3))],
            );
            r.counters_by("rejected", "by reason", "reason", &[("too_large", 1)]);
            r.flag("connected", "up", true);
            let h = Histogram::default();
            h.observe_ns(20_000);
            h.observe_ns(20_000_000_000);
            r.histogram("request_duration_seconds", "requests", &h.snapshot());
            r.gauges_by(
                "alarms",
                "open",
                &["status", "severity"],
                &[(vec!["active_unack", "critical"], 4)],
            );
        }
    }

    #[test]
    fn families_carry_prefix_labels_and_kinds() {
        let mut r = PromReport::default();
        r.add("rulechain_notify_", &Notify);
        let text = r.render();
        for want in [
            "# TYPE rulechain_notify_sent counter",
            "rulechain_notify_sent_total{channel=\"ops\"} 2",
            // Label values are escaped: a quote in a name cannot end the label.
            "rulechain_notify_sent_total{channel=\"m\\\"x\"} 3",
            "rulechain_notify_rejected_total{reason=\"too_large\"} 1",
            "# TYPE rulechain_notify_connected gauge",
            "rulechain_notify_connected 1",
            "rulechain_notify_request_duration_seconds_bucket{le=\"0.000025\"} 1",
            "rulechain_notify_request_duration_seconds_bucket{le=\"0.00001\"} 0",
            "rulechain_notify_request_duration_seconds_bucket{le=\"0.00005\"} 1",
            "rulechain_notify_request_duration_seconds_bucket{le=\"10.0\"} 1",
            "rulechain_notify_request_duration_seconds_bucket{le=\"+Inf\"} 2",
            "rulechain_notify_request_duration_seconds_count 2",
            "rulechain_notify_alarms{status=\"active_unack\",severity=\"critical\"} 4",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("smtp"), "texts are not metrics:\n{text}");
        // One family per name: every channel under one TYPE line.
        assert_eq!(text.matches("# TYPE rulechain_notify_sent ").count(), 1);
    }
}
