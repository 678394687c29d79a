//! Where effects go live. RPC commands, republished messages and dead letters leave through the
//! egress MQTT connection (its own client, so a slow publish never blocks the client that
//! reads); points go to the InfluxDB writer (collected per shard turn, handed over as one
//! chunk), WebSocket pushes and alarm transitions to the hub, notifications to their channels'
//! queues, log and error events to the log. None of these waits: every queue is bounded and
//! a full one drops and counts (see `sinks`).
//!
//! A shard gathers the publishes of one turn and hands them to the egress connection
//! (`publisher.rs`) as one batch, written with one system call. The queue is bounded in
//! messages (`EGRESS_QUEUE`): when it is full (the broker is away for long), new publishes are
//! dropped and counted rather than stalling the shards.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;

use super::publisher::{Batch, Egress, Out};
use super::{RateLimit, Stats};
use crate::alarm::Transition;
use crate::engine::effect::LogLevel;
use crate::engine::effect::{Effect, Event};
use crate::message::Reject;
use crate::sinks::notify::Unsent;

/// Publishes queued for the egress connection before new ones are dropped.
pub const EGRESS_QUEUE: usize = 10_000;

/// The shards' handle on the outside world.
#[derive(Clone)]
pub struct Outbox {
    /// InfluxDB, WebSocket, notifications.
    pub sinks: crate::sinks::Sinks,
    /// The open alarms, recorded as transitions leave the shard.
    pub alarms: Arc<crate::alarm::registry::AlarmRegistry>,
    /// Lines for InfluxDB gathered in this turn of the shard loop.
    pub influx_pending: Vec<crate::lineproto::Point>,
    /// The egress connection's queue.
    pub mqtt: Egress,
    /// Publishes gathered in this turn of the shard loop.
    pub mqtt_pending: Vec<Out>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The dead-letter topic.
    pub dead_letter: Option<Arc<str>>,
    /// Log lines about bad input and node errors, at most a few a second.
    pub limit: Arc<RateLimit>,
    /// In a cluster: where WebSocket frames and alarm transitions go (through Redis to every
    /// instance's hub and alarm registry) instead of this process's hub.
    pub fanout: Option<mpsc::Sender<Vec<Frame>>>,
    /// Frames gathered in this turn of the shard loop.
    pub fanout_pending: Vec<Frame>,
    /// RPC commands are signed for devices to verify (`ingest.signature.commands`).
    pub command_signing: Option<Arc<crate::signature::SignatureSettings>>,
}

/// A WebSocket frame (or an alarm transition) on its way to every instance of a cluster.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The room.
    pub room: String,
    /// When (ms).
    pub ts: i64,
    /// The frame's data (JSON text).
    pub data: String,
    /// An alarm transition: the alarm as it is now (JSON) and the transition, for every
    /// instance's alarm registry.
    pub alarm: Option<(String, Transition)>,
}

impl Outbox {
    fn publish(&mut self, topic: String, payload: Vec<u8>, qos: u8, retain: bool) {
        self.mqtt_pending.push(Out {
            topic,
            payload,
            qos,
            retain,
        });
    }

    /// Queues publishes for the egress connection; counts and reports what did not fit.
    /// Returns the acknowledgements it could not queue (the caller reports them done).
    fn send_publishes(&self, batch: Batch) -> Vec<u64> {
        let (dropped, back) = self.mqtt.send(batch);
        if dropped > 0 {
            self.stats.egress_dropped.fetch_add(dropped as u64, Relaxed);
            if self.limit.allow() {
                tracing::warn!(
                    dropped,
                    "egress queue full (is the broker reachable?): publishes were dropped"
                );
            }
        }
        back
    }

    /// Hands what this turn gathered to the egress connection and the sinks that take batches.
    /// `acks`, the turn's QoS 1 messages, go with its publishes: the egress connection reports
    /// them done once those have left (a message is acknowledged only once its output is with
    /// the broker), and with them the publishes wait for room in the egress queue rather than
    /// being dropped. Returns those it could not queue, for the caller to report itself.
    pub async fn flush(&mut self, acks: Vec<u64>) -> Vec<u64> {
        let mut back = Vec::new();
        if !acks.is_empty() {
            self.mqtt.room(self.mqtt_pending.len()).await;
        }
        if !self.mqtt_pending.is_empty() || !acks.is_empty() {
            let outs = std::mem::take(&mut self.mqtt_pending);
            back = self.send_publishes(Batch { outs, acks });
        }
        if let Some(f) = self
            .fanout
            .as_ref()
            .filter(|_| !self.fanout_pending.is_empty())
        {
            // Waits for room: a frame (an alarm transition above all) is never dropped here;
            // while Redis is slow the partition waits.
            let _ = f.send(std::mem::take(&mut self.fanout_pending)).await;
        }
        if !self.influx_pending.is_empty() {
            let lines = std::mem::take(&mut self.influx_pending);
            if let Some(i) = &self.sinks.influx {
                i.send(lines);
            }
        }
        back
    }

    /// Routes one effect.
    pub fn send(&mut self, e: Effect) {
        let s = &self.stats;
        match e.event {
            Event::Rpc {
                device,
                topic,
                id,
                method,
                params,
                qos,
            } => {
                s.rpc_sent.fetch_add(1, Relaxed);
                tracing::info!(chain = %e.chain, node = %e.node, %device, %topic, %id, %method, "rpc command");
                let mut payload = json!({"id": id, "method": method, "params": params});
                if let (Some(sig), Some(m)) = (&self.command_signing, payload.as_object_mut()) {
                    // Signed as devices sign: the time in `ts`, the signature in its field.
                    m.insert("ts".into(), e.ts.into());
                    match sig.keys.key(&device) {
                        Some(key) => {
                            let s = crate::signature::sign(key, m, &sig.field);
                            m.insert(sig.field.clone(), s.into());
                        }
                        None => {
                            if self.limit.allow() {
                                tracing::warn!(%device, "no signing key for the device: its command goes unsigned");
                            }
                        }
                    }
                }
                self.publish(topic, payload.to_string().into_bytes(), qos, false);
            }
            Event::Publish {
                topic,
                payload,
                qos,
                retain,
                ..
            } => {
                s.published.fetch_add(1, Relaxed);
                self.publish(
                    topic,
                    serde_json::to_vec(&payload).unwrap_or_default(),
                    qos,
                    retain,
                );
            }
            Event::Alarm {
                device,
                type_,
                severity,
                transition,
                status,
                message,
                id,
                record,
            } => {
                s.alarm_events.fetch_add(1, Relaxed);
                tracing::warn!(chain = %e.chain, %device, alarm = %type_, %severity, %status, %id, "ALARM {transition}: {message}");
                // The channels that posted a message or opened an incident for the alarm edit
                // or update it, whether or not the chain notifies them of this transition.
                self.sinks.notify.follow(&record, transition);
                if self.fanout.is_some() {
                    // A cluster: every instance records it and publishes it, from Redis.
                    self.fanout_pending.push(Frame {
                        room: "alarms".into(),
                        ts: e.ts,
                        data: crate::alarm::registry::alarm_json(&record, transition.as_str())
                            .to_string(),
                        alarm: Some((
                            serde_json::to_string(&*record).unwrap_or_default(),
                            transition,
                        )),
                    });
                    return;
                }
                // Recorded before it is published: a client that acknowledges what it was just
                // sent finds the alarm.
                self.alarms.record(&record, transition);
                self.sinks.hub.alarm(&record, transition, e.ts);
            }
            Event::Notify { .. } => {
                s.notifications.fetch_add(1, Relaxed);
                let Some(notice) = notice(e) else { return };
                let (channel, device) = (notice.channel.clone(), notice.device.clone());
                match self.sinks.notify.send(notice) {
                    Ok(()) => {}
                    // No such channel: the embedded default has none; the log stands in.
                    Err(Unsent::Unknown(n)) => {
                        if self.limit.allow() {
                            tracing::info!(chain = %n.chain, node = %n.node, %device, %channel, "notify (channel not configured, logged only): {}", n.subject);
                        }
                    }
                    Err(Unsent::Full) => {
                        if self.limit.allow() {
                            tracing::warn!(%channel, %device, "notification dropped: the channel's queue is full (is it failing? see /api/status)");
                        }
                    }
                }
            }
            Event::Influx { line, ts_ns, .. } => {
                s.influx_points.fetch_add(1, Relaxed);
                if self.sinks.influx.is_some() {
                    self.influx_pending
                        .push(crate::lineproto::Point::new(line, ts_ns));
                }
            }
            Event::Websocket { room, data, .. } => {
                s.websocket.fetch_add(1, Relaxed);
                let data = serde_json::to_string(&data).unwrap_or_else(|_| "null".into());
                if self.fanout.is_some() {
                    self.fanout_pending.push(Frame {
                        room: room.to_string(),
                        ts: e.ts,
                        data,
                        alarm: None,
                    });
                } else {
                    self.sinks.hub.publish(&room, e.ts, &data);
                }
            }
            Event::Log {
                device,
                level,
                message,
            } => match level {
                LogLevel::Error => {
                    tracing::error!(chain = %e.chain, node = %e.node, %device, "{message}")
                }
                LogLevel::Warn => {
                    tracing::warn!(chain = %e.chain, node = %e.node, %device, "{message}")
                }
                LogLevel::Info => {
                    tracing::info!(chain = %e.chain, node = %e.node, %device, "{message}")
                }
                LogLevel::Debug => {
                    tracing::debug!(chain = %e.chain, node = %e.node, %device, "{message}")
                }
                LogLevel::Trace => {
                    tracing::trace!(chain = %e.chain, node = %e.node, %device, "{message}")
                }
            },
            Event::Error { device, error } => {
                s.node_errors.fetch_add(1, Relaxed);
                if self.limit.allow() {
                    tracing::warn!(chain = %e.chain, node = %e.node, %device, "node error: {error}");
                }
            }
            Event::Dropped { .. } => {
                s.dropped.fetch_add(1, Relaxed);
            }
            Event::Node { .. } => {}
        }
    }

    /// Reports a rejected payload (counted by the caller) and republishes it to the dead-letter
    /// topic, if one is configured.
    pub fn dead_letter(&self, topic: &str, reason: Reject, payload: &[u8]) {
        if self.limit.allow() {
            tracing::warn!(%topic, reason = reason.as_str(), bytes = payload.len(), "payload rejected");
        }
        if let Some(dl) = &self.dead_letter {
            // A message too large to take is dead-lettered by reference (its size and SHA-256),
            // never carried: it would be as large on the dead-letter topic.
            let body = if reason == Reject::TooLarge {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(payload);
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                json!({
                    "topic": topic,
                    "reason": reason.as_str(),
                    "bytes": payload.len(),
                    "sha256": hex,
                })
            } else {
                json!({
                    "topic": topic,
                    "reason": reason.as_str(),
                    "payload": String::from_utf8_lossy(payload),
                })
            };
            self.send_publishes(Batch {
                outs: vec![Out {
                    topic: dl.to_string(),
                    payload: body.to_string().into_bytes(),
                    qos: 0,
                    retain: false,
                }],
                acks: Vec::new(),
            });
        }
    }
}

/// A `notify` effect as the notification for its channel (None for any other effect).
pub fn notice(e: Effect) -> Option<crate::sinks::notify::Notice> {
    let Event::Notify {
        channel,
        device,
        subject,
        body,
        data,
    } = e.event
    else {
        return None;
    };
    Some(crate::sinks::notify::Notice {
        channel,
        chain: e.chain,
        node: e.node,
        device,
        ts: e.ts,
        subject,
        body,
        data: serde_json::to_value(&data).unwrap_or_default(),
        reminder: false,
        fallback_from: None,
        receipt: None,
        rearm: false,
        follow: false,
        escalation: None,
    })
}
