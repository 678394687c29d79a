//! One way to expose counters. A component lists its counters once, in
//! [`Counters::report`]: each with its name, its meaning and its kind (a count that only
//! grows, a level that goes up and down, a yes/no state, a family by one label, a part of its
//! own). A rendering is a [`Report`]: [`to_json`] gives the JSON of `/api/status` and of the log
//! line at shutdown; a Prometheus rendering for `/metrics` reads the same lists.
//!
//! Texts (the last error, where a channel delivers) are part of the JSON only: they are not
//! numbers and never become metrics.

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
