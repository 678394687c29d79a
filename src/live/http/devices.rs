//! Devices: the list (with online state, open alarms, latest values), one device (its
//! attributes and where each comes from), server-side attributes, and a field's recent values.
//! Each answer comes from the shard that owns the device.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::live::devices::{Ask, DeviceDetail, DeviceFilter, DeviceRow};

/// Most devices one page of `/api/devices` gives.
const MAX_PAGE: usize = 10_000;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// Only devices of this type.
    #[serde(rename = "type")]
    type_: Option<String>,
    /// Only online (`true`) or offline (`false`) devices.
    online: Option<bool>,
    /// Devices per page (default 1000, at most 10000).
    limit: Option<usize>,
    /// Devices to skip (by id order).
    offset: Option<usize>,
}

/// Fills in the rows' open alarms and their highest severity, from one read of the registry
/// (one device's with `device`). A cleared alarm not yet acknowledged is open, and counts for
/// both: a device must never show an open alarm with no severity.
fn with_alarms<'a>(
    api: &Api,
    device: Option<&str>,
    rows: impl IntoIterator<Item = &'a mut DeviceRow>,
) {
    let mut by_device: HashMap<String, (usize, Option<crate::alarm::Severity>)> = HashMap::new();
    for a in api.alarms.open(device) {
        let e = by_device.entry(a.alarm.device).or_default();
        e.0 += 1;
        // The most severe: the lowest in the severities' order.
        let sev = a.alarm.severity;
        if e.1.is_none_or(|s| sev < s) {
            e.1 = Some(sev);
        }
    }
    for row in rows {
        let (n, sev) = by_device.get(&row.id).copied().unwrap_or_default();
        row.open_alarms = n;
        row.severity = sev;
    }
}

/// How long a device list answer is served again to the same question.
const LIST_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The last device list answered: when, to which question, and the answer.
pub(super) type ListCache = Arc<tokio::sync::Mutex<Option<(std::time::Instant, String, Value)>>>;

/// `GET /api/devices`: every device the engine knows, by id.
///
/// Listing asks every shard to sort and build its rows on its own thread, between messages: 8
/// dashboards polling 10,000 rows of 100,000 devices pushed message latency from 0.6 ms to
/// 1.1 s. So one list is built at a time (others wait for it) and the same question within a
/// second gets the same answer: the shards do at most one list's work a second per question.
pub(super) async fn list(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    // A cluster member asked by another answers with its own devices; asked by a client, it
    // merges every instance's.
    let fleet = api.cluster.is_some() && !super::forwarded(&headers);
    let question = format!(
        "{:?} {:?} {:?} {:?} {fleet}",
        q.type_, q.online, q.limit, q.offset
    );
    let mut cache = api.device_list.lock().await;
    if let Some((at, asked, answer)) = cache.as_ref() {
        if *asked == question && at.elapsed() < LIST_FRESH {
            return Ok(Json(answer.clone()));
        }
    }
    api.stats
        .device_lists
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token = super::given_token(&headers, &uri);
    let answer = build_list(&api, q, fleet, token.as_deref()).await?;
    *cache = Some((std::time::Instant::now(), question, answer.clone()));
    Ok(Json(answer))
}

async fn build_list(
    api: &Api,
    q: ListQuery,
    fleet: bool,
    token: Option<&str>,
) -> Result<Value, ApiError> {
    let limit = q.limit.unwrap_or(1_000).min(MAX_PAGE);
    let offset = q.offset.unwrap_or(0).min(usize::MAX - MAX_PAGE);
    let filter = DeviceFilter {
        type_: q.type_.clone(),
        online: q.online,
    };
    // Each shard gives its first offset + limit matching rows by id; merged, the page is the
    // same as if one list had been sorted whole.
    let mut total = 0;
    let mut rows: Vec<DeviceRow> = Vec::new();
    for shard in 0..api.shards.len() {
        let asked = api
            .shards
            .ask(
                shard,
                |reply| Ask::Devices {
                    filter: filter.clone(),
                    take: offset + limit,
                    reply,
                },
                super::ASK_TIMEOUT,
            )
            .await;
        let (n, r) = match asked {
            Ok(a) => a,
            // In a cluster: a partition this instance does not own now.
            Err(crate::live::shards::Unreachable::Elsewhere) => continue,
            Err(e) => return Err(super::unreachable(e)),
        };
        total += n;
        rows.extend(r);
    }
    with_alarms(api, None, &mut rows);
    let mut rows: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .collect();
    let mut unreachable = Vec::new();
    if fleet {
        // The other instances' first offset + limit rows each, for the same question.
        // The question again for the others, its values percent-encoded by the URL's builder.
        let mut url = reqwest::Url::parse("http://peer/")
            .map_err(|_| ApiError::unavailable("cannot build the other instances' query"))?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("offset", "0")
                .append_pair("limit", &(offset + limit).to_string());
            if let Some(t) = &q.type_ {
                query.append_pair("type", t);
            }
            if let Some(o) = q.online {
                query.append_pair("online", &o.to_string());
            }
        }
        let query = url.query().unwrap_or_default().to_string();
        let (n, r, down) = super::fleet::peer_lists(api, &query, token).await;
        total += n;
        rows.extend(r);
        unreachable = down;
    }
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let page: Vec<Value> = rows.into_iter().skip(offset).take(limit).collect();
    let mut answer = json!({"total": total, "devices": page});
    if !unreachable.is_empty() {
        answer["unreachable"] = json!(unreachable);
    }
    Ok(answer)
}

async fn detail(api: &Api, id: &str) -> Result<DeviceDetail, ApiError> {
    let d = api
        .ask_owner(id, |reply| Ask::Device(id.to_string(), reply))
        .await?;
    let mut d = d.ok_or_else(|| {
        ApiError::not_found(format!("no device {id:?}: it has sent no message since the start and is not in the devices file"))
    })?;
    with_alarms(api, Some(id), [&mut d.row]);
    Ok(d)
}

/// `GET /api/devices/{id}`: one device, its attributes with their source, its latest values
/// and its open alarms.
pub(super) async fn one(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = detail(&api, &id).await?;
    let alarms: Vec<Value> = api
        .alarms
        .open(Some(&id))
        .iter()
        .map(|a| a.to_json())
        .collect();
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("alarms".into(), alarms.into());
    }
    Ok(Json(v))
}

/// `PUT /api/devices/{id}/attributes`: sets server-side attributes (a JSON object; `null`
/// removes one). They are persisted, and above what the device reports and the devices file
/// says; the device's next message sees them in `attr`.
pub(super) async fn set_attributes(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    let Value::Object(obj) = body else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object of attributes: {\"rated_current\": 12.5}",
        ));
    };
    if obj.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no attributes given",
        ));
    }
    if let Some(k) = obj.keys().find(|k| k.is_empty() || k.len() > 256) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "an attribute name is 1 to 256 bytes",
        )
        .detail(json!({"name": k})));
    }
    if id.is_empty() || id.len() > 1024 {
        return Err(ApiError::bad_request("a device id is 1 to 1024 bytes"));
    }
    let changes: rhai::Map = obj
        .into_iter()
        .map(|(k, v)| {
            let v = rhai::serde::to_dynamic(v).unwrap_or(rhai::Dynamic::UNIT);
            (k.into(), v)
        })
        .collect();
    let r = api
        .ask_owner(&id, |reply| Ask::SetAttributes {
            device: id.clone(),
            changes,
            reply,
        })
        .await?;
    let mut d = r.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    with_alarms(&api, Some(&id), [&mut d.row]);
    Ok(Json(serde_json::to_value(d).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
pub(super) struct HistoryQuery {
    /// The numeric field.
    field: Option<String>,
    /// From when: ms since the epoch, or a duration back from now (`10m`).
    since: Option<String>,
}

/// `GET /api/devices/{id}/history?field=&since=`: a field's recent values, oldest first.
pub(super) async fn history(
    State(api): State<Api>,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let Some(field) = q.field.filter(|f| !f.is_empty()) else {
        return Err(ApiError::bad_request("`field` is required: ?field=current"));
    };
    let now = crate::engine::clock::wall_ms();
    let since = match q.since.as_deref() {
        None | Some("") => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => match crate::duration::parse(s) {
                Ok(back) => now - back,
                Err(e) => {
                    return Err(ApiError::bad_request(format!(
                        "`since` is ms since the epoch or a duration back from now (`10m`): {e}"
                    )))
                }
            },
        },
    };
    let points = api.ask_owner(&id, |reply| Ask::History {
        device: id.clone(),
        field: field.clone(),
        since,
        reply,
    })
    .await?
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "no recent values of {field:?} for device {id:?} (only numeric telemetry fields are kept, for history.window)"
        ))
    })?;
    let points: Vec<Value> = points.iter().map(|(t, v)| json!([t, v])).collect();
    Ok(Json(
        json!({"device": id, "field": field, "points": points}),
    ))
}
