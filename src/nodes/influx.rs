//! `influx`: one point per message: measurement (template, default `telemetry`), tags looked up
//! in `meta`, then `attr`, then `msg` (missing ones omitted), fields from `msg` (default every
//! numeric and boolean field; strings only when listed), timestamp `meta.ts`.

use rhai::{Dynamic, Map};

use super::as_f64;
use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet};
use crate::lineproto::{FieldValue, Point};
use crate::rules::compile::Builder;
use crate::rules::model::NodeSpec;
use crate::script::Template;

struct Influx {
    measurement: Template,
    tags: Vec<String>,
    fields: Option<Vec<String>>,
}

pub(super) fn build(spec: &NodeSpec, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let i = spec.influx.as_ref()?;
    let measurement = match &i.measurement {
        Some(m) => b.template(m)?,
        None => Template::literal("telemetry"),
    };
    let tags = i.tags.iter().flatten().map(|t| t.value.clone()).collect();
    let fields = i.fields.as_ref().map(|f| f.iter().map(|x| x.value.clone()).collect());
    Some(Box::new(Influx { measurement, tags, fields }))
}

fn field_value(v: &Dynamic, listed: bool) -> Option<FieldValue> {
    if let Ok(b) = v.as_bool() {
        return Some(FieldValue::Bool(b));
    }
    if let Some(f) = as_f64(v) {
        return Some(FieldValue::Float(f));
    }
    if listed && v.is_string() {
        return Some(FieldValue::Str(v.to_string()));
    }
    None
}

fn lookup(maps: [&Dynamic; 3], name: &str) -> Option<String> {
    maps.iter().find_map(|m| {
        m.read_lock::<Map>().and_then(|m| m.get(name).filter(|v| !v.is_unit() && !v.is_map() && !v.is_array()).map(|v| v.to_string()))
    })
}

impl NodeImpl for Influx {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let measurement = match self.measurement.render(cx.rt, &mut p.vars) {
            Ok(m) => m,
            Err(e) => return Flow::Error(e, p),
        };
        let tags = self
            .tags
            .iter()
            .filter_map(|t| lookup([&p.vars.meta, &p.vars.attr, &p.vars.msg], t).map(|v| (t.clone(), v)))
            .collect();
        let fields: Vec<(String, FieldValue)> = match p.vars.msg.read_lock::<Map>() {
            None => Vec::new(),
            Some(m) => match &self.fields {
                Some(list) => list
                    .iter()
                    .filter_map(|f| m.get(f.as_str()).and_then(|v| field_value(v, true)).map(|v| (f.clone(), v)))
                    .collect(),
                None => m.iter().filter_map(|(k, v)| field_value(v, false).map(|v| (k.to_string(), v))).collect(),
            },
        };
        let point = Point { measurement, tags, fields, ts_ns: p.ts.saturating_mul(1_000_000) };
        let (line, skipped) = point.line();
        for f in skipped {
            cx.emit(Event::Dropped { device: p.device.clone(), reason: "non-finite", detail: Some(format!("field `{f}`")) });
        }
        if let Some(line) = line {
            cx.emit(Event::Influx { device: p.device.clone(), line });
        }
        Flow::Pass(p)
    }
}
