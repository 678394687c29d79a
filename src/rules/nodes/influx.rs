//! `influx`: one point per message: measurement (template, default `telemetry`), tags looked up
//! in `meta`, then `attr`, then `msg` (missing ones omitted), fields from `msg` (default every
//! numeric and boolean field; strings only when listed), timestamp `meta.ts`.

use crate::yaml::Sp;
use rhai::{Dynamic, Map};
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::as_f64;
use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use crate::lineproto::Line;
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::Template;

struct Influx {
    measurement: Template,
    /// Sorted, as line protocol wants them.
    tags: Vec<String>,
    /// Sorted; `None`: every numeric and boolean field of `msg` (a sorted map already).
    fields: Option<Vec<String>>,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["influx"],
    owns: &[],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// influx: write one point to InfluxDB.
    #[serde(default, deserialize_with = "crate::rules::syntax::present")]
    pub influx: Option<Sp<InfluxSpec>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let i = spec.influx.as_ref()?;
    let measurement = match &i.measurement {
        Some(m) => b.template(m)?,
        None => Template::literal("telemetry"),
    };
    let sorted = |v: &Vec<crate::yaml::Sp<String>>| {
        let mut v: Vec<String> = v.iter().map(|x| x.value.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let tags = i.tags.as_ref().map(sorted).unwrap_or_default();
    // `meta.device` is the packet's own device (and `meta` comes first), so a `device` tag
    // is read from the packet: a chain whose only tag is `device` builds neither map.
    let maps = tags.iter().any(|t| t != "device");
    b.reads(maps, maps);
    let fields = i.fields.as_ref().map(sorted);
    Some(Box::new(Influx {
        measurement,
        tags,
        fields,
    }))
}

/// Adds a value as a field: numbers as floats, booleans; strings only when listed.
fn add_field(line: &mut Line, key: &str, v: &Dynamic, listed: bool) {
    if v.is_bool() {
        line.boolean(key, v.as_bool().unwrap_or_default());
    } else if let Some(f) = as_f64(v) {
        line.float(key, f);
    } else if listed && v.is_string() {
        line.string(key, &v.to_string());
    }
}

fn lookup(maps: [&Dynamic; 3], name: &str) -> Option<String> {
    maps.iter().find_map(|m| {
        m.read_lock::<Map>().and_then(|m| {
            m.get(name)
                .filter(|v| !v.is_unit() && !v.is_map() && !v.is_array())
                .map(|v| v.to_string())
        })
    })
}

impl NodeImpl for Influx {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let measurement = match self.measurement.render(cx.rt, &mut p.vars) {
            Ok(m) => m,
            Err(e) => return Flow::Error(e, p),
        };
        let mut line = Line::new(&measurement);
        for t in &self.tags {
            if t == "device" {
                line.tag(t, &p.device);
            } else if let Some(v) = lookup([&p.vars.meta, &p.vars.attr, &p.vars.msg], t) {
                line.tag(t, &v);
            }
        }
        if let Some(m) = p.vars.msg.read_lock::<Map>() {
            match &self.fields {
                Some(list) => {
                    for f in list {
                        if let Some(v) = m.get(f.as_str()) {
                            add_field(&mut line, f, v, true);
                        }
                    }
                }
                None => {
                    for (k, v) in m.iter() {
                        add_field(&mut line, k, v, false);
                    }
                }
            }
        }
        let skipped = std::mem::take(&mut line.skipped);
        let ts_ns = p.ts.saturating_mul(1_000_000);
        let text = line.finish(ts_ns);
        for f in skipped {
            cx.emit(Event::Dropped {
                device: p.device.clone(),
                reason: crate::engine::effect::DropReason::NonFinite,
                detail: Some(format!("field `{f}`")),
            });
        }
        if let Some(line) = text {
            cx.emit(Event::Influx {
                device: p.device.clone(),
                line,
                ts_ns,
            });
        }
        Flow::Pass(p)
    }
}

/// `influx`: one point per message.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct InfluxSpec {
    /// The measurement, a template (default `telemetry`).
    #[serde(default)]
    pub measurement: Option<Sp<String>>,
    /// Tag names, looked up in `meta`, then `attr`, then `msg`; a missing tag is omitted.
    #[serde(default)]
    pub tags: Option<Vec<Sp<String>>>,
    /// Field names of `msg` (strings are written only when listed). Default: every numeric and
    /// boolean field.
    #[serde(default)]
    pub fields: Option<Vec<Sp<String>>>,
}
