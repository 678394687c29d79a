//! What the API asks a shard about its devices, and how the shard answers: the device list,
//! one device (attributes with their source, latest values), a field's recent values, and
//! server-side attributes set by an operator. The shard answers between messages, from its own
//! executor and history, so the message path takes no lock.

use rhai::{Dynamic, Map};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::history::History;
use crate::engine::{Device, Executor};

/// A device in the list.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    /// Its id (from its topic, or the devices file).
    pub id: String,
    /// Its type, if the devices file gives one.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// A message came within `engine.offline_after`.
    pub online: bool,
    /// When its last message came (ms since the epoch), if one did since the start.
    pub last_seen: Option<i64>,
    /// Its open alarms (filled in by the API from the alarm registry).
    pub open_alarms: usize,
    /// The highest severity of its open alarms.
    pub severity: Option<crate::alarm::Severity>,
    /// The latest value of each numeric field.
    pub latest: serde_json::Map<String, Value>,
}

/// An attribute and where its value comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Attribute {
    /// Its value.
    pub value: Value,
    /// `server` (set through the API), `reported` (by the device) or `registry` (the devices
    /// file).
    pub source: &'static str,
}

/// One device, whole.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub row: DeviceRow,
    /// Its attributes, as `attr` sees them, each with its source.
    pub attributes: std::collections::BTreeMap<String, Attribute>,
    /// Each numeric field's latest value and time.
    pub telemetry: Vec<Latest>,
}

/// A field's latest value.
#[derive(Debug, Clone, Serialize)]
pub struct Latest {
    /// The field.
    pub field: String,
    /// When (ms since the epoch).
    pub ts: i64,
    /// The value.
    pub value: f64,
}

/// Which devices a list wants.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only this type.
    pub type_: Option<String>,
    /// Only online (`true`) or offline (`false`) ones.
    pub online: Option<bool>,
}

/// A question for a shard.
pub enum Ask {
    /// Its devices that match, by id: how many match, and the first `take` of them.
    Devices {
        /// Which.
        filter: DeviceFilter,
        /// How many rows at most (the page's offset + limit: the API merges the shards').
        take: usize,
        /// (matching, rows).
        reply: oneshot::Sender<(usize, Vec<DeviceRow>)>,
    },
    /// One device.
    Device(String, oneshot::Sender<Option<DeviceDetail>>),
    /// A field's points since a time (ms).
    History {
        /// The device.
        device: String,
        /// The field.
        field: String,
        /// From when.
        since: i64,
        /// The points, or `None` for an unknown device or field.
        reply: oneshot::Sender<Option<Vec<(i64, f64)>>>,
    },
    /// Sets server-side attributes (a unit value removes one).
    SetAttributes {
        /// The device.
        device: String,
        /// The changes.
        changes: Map,
        /// The device after them, or why not.
        reply: oneshot::Sender<Result<DeviceDetail, String>>,
    },
}

/// How a shard answers.
pub struct Answerer<'a> {
    /// The shard's executor.
    pub exec: &'a mut Executor,
    /// The shard's history.
    pub history: &'a History,
    /// The wall clock (ms).
    pub now: i64,
    /// `engine.offline_after` (ms).
    pub offline_after: i64,
}

impl Answerer<'_> {
    /// Answers; returns whether state changed (a checkpoint is due).
    pub fn answer(&mut self, ask: Ask) -> bool {
        match ask {
            Ask::Devices {
                filter,
                take,
                reply,
            } => {
                // Ids first, rows only for the page: a row reads the device's recent values.
                let mut ids: Vec<(&str, &Device)> = self
                    .exec
                    .devices()
                    .filter(|(_, d)| {
                        filter
                            .type_
                            .as_deref()
                            .is_none_or(|t| d.type_.as_deref() == Some(t))
                            && filter.online.is_none_or(|o| self.online(d) == o)
                    })
                    .map(|(id, d)| (id.as_ref(), d))
                    .collect();
                let total = ids.len();
                if take < ids.len() {
                    ids.select_nth_unstable_by(take, |a, b| a.0.cmp(b.0));
                    ids.truncate(take);
                }
                ids.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let rows = ids.iter().map(|(id, d)| self.row(id, d)).collect();
                let _ = reply.send((total, rows));
                false
            }
            Ask::Device(id, reply) => {
                let _ = reply.send(self.detail(&id));
                false
            }
            Ask::History {
                device,
                field,
                since,
                reply,
            } => {
                let _ = reply.send(self.history.series(&device, &field, since));
                false
            }
            Ask::SetAttributes {
                device,
                changes,
                reply,
            } => {
                // All or nothing: a refused request changes nothing.
                let r = self
                    .exec
                    .set_server_attributes(&device, changes)
                    .and_then(|()| {
                        self.detail(&device)
                            .ok_or_else(|| "the device is gone".to_string())
                    });
                let _ = reply.send(r);
                true
            }
        }
    }

    fn online(&self, d: &Device) -> bool {
        let seen = d.last_seen();
        seen > 0 && self.now - seen < self.offline_after
    }

    fn row(&self, id: &str, d: &Device) -> DeviceRow {
        let seen = d.last_seen();
        DeviceRow {
            id: id.to_string(),
            type_: d.type_.as_deref().map(str::to_string),
            online: self.online(d),
            last_seen: (seen > 0).then_some(seen),
            open_alarms: 0,
            severity: None,
            latest: self
                .history
                .latest(id)
                .into_iter()
                .filter_map(|(f, _, v)| {
                    serde_json::Number::from_f64(v).map(|n| (f.to_string(), Value::Number(n)))
                })
                .collect(),
        }
    }

    fn detail(&self, id: &str) -> Option<DeviceDetail> {
        let d = self.exec.device(id)?;
        let attributes = d
            .attrs()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Attribute {
                        value: to_json(v),
                        source: d.source_of(k),
                    },
                )
            })
            .collect();
        let telemetry = self
            .history
            .latest(id)
            .into_iter()
            .map(|(field, ts, value)| Latest {
                field: field.to_string(),
                ts,
                value,
            })
            .collect();
        Some(DeviceDetail {
            row: self.row(id, d),
            attributes,
            telemetry,
        })
    }
}

fn to_json(v: &Dynamic) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
