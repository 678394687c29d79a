//! `rulechain record --output FILE`: writes live MQTT traffic as `dry-run` input lines
//! (`{"topic", "ts", "payload"}`, `ts` the receive time), so a behaviour seen live replays
//! offline with `dry-run`. Subscribes to the same topics as the engine, through the same topic
//! patterns.

use std::io::Write;
use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use tokio::sync::watch;

use crate::config::settings::MqttConn;
use crate::engine::clock::wall_ms;
use crate::message::{PayloadLimits, MAX_INCOMING_PACKET};
use crate::topic::{mqtt_filters, TopicPattern};

/// What `record` reports at the end.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recorded {
    /// Lines written.
    pub written: u64,
    /// Messages skipped (topic outside the patterns, payload not UTF-8).
    pub skipped: u64,
}

/// Records until `stop` turns true or `count` lines are written.
pub async fn run(
    conn: MqttConn,
    patterns: Vec<TopicPattern>,
    out: &mut dyn Write,
    count: Option<u64>,
    mut stop: watch::Receiver<bool>,
) -> Result<Recorded, String> {
    let mut o = super::options(&conn, "record")?;
    o.set_clean_session(true);
    let (client, mut events) = super::client(o, 64);
    let subs = mqtt_filters(&patterns);
    let limits = PayloadLimits {
        max_payload_bytes: MAX_INCOMING_PACKET,
        max_depth: 128,
        max_clock_skew_ms: 0,
    };
    let mut r = Recorded::default();
    let mut backoff = crate::retry::reconnect_backoff(std::time::Duration::from_secs(5));
    // SUBACKs still due for the last connection's subscriptions.
    let mut pending_acks = 0usize;
    loop {
        let ev = tokio::select! {
            _ = stop.changed() => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                eprintln!("record: connected; subscribing to {}", subs.join(", "));
                pending_acks = subs.len();
                for f in &subs {
                    let _ = client.try_subscribe(f.clone(), QoS::AtMostOnce);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if pending_acks > 0 => {
                // Said once the broker holds every subscription: what is published from now
                // on is recorded.
                pending_acks -= 1;
                if pending_acks == 0 {
                    eprintln!("record: subscribed; recording");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(m) = patterns.iter().find_map(|pat| pat.matches(&p.topic)) else {
                    r.skipped += 1;
                    continue;
                };
                // A payload the engine would reject is recorded too, as its text, so that the
                // dry-run of the recording rejects it the same way; only bytes that are not
                // UTF-8 cannot be carried by a JSON line.
                let payload = match crate::message::parse(m.kind, &p.payload, &limits) {
                    Ok(map) => serde_json::to_value(rhai::Dynamic::from_map(map))
                        .unwrap_or(serde_json::Value::Null),
                    Err(reason) => match std::str::from_utf8(&p.payload) {
                        Ok(text) => serde_json::Value::String(text.to_string()),
                        Err(_) => {
                            r.skipped += 1;
                            eprintln!(
                                "record: skipped a message on {} ({}: a JSON line cannot carry it)",
                                p.topic,
                                reason.as_str()
                            );
                            continue;
                        }
                    },
                };
                let line = serde_json::json!({
                    "topic": p.topic,
                    "ts": wall_ms(),
                    "payload": payload,
                });
                // Each line is flushed as it is written: a `kill -9` loses nothing recorded.
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write: {e}"))?;
                r.written += 1;
                if count.is_some_and(|c| r.written >= c) {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let wait = backoff.next_delay();
                eprintln!("record: MQTT connection: {e}; retrying in {wait:?}");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    out.flush().map_err(|e| format!("cannot write: {e}"))?;
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(r)
}
