//! The device simulator (`rulechain simulate`, and `run --demo`): pumps that publish telemetry
//! with drift, noise and spikes, announce their attributes and status at start, go offline now
//! and then, and obey `setLoad` commands (replying on their `rpc_response` topic), so the
//! example rules fire and clear on their own.
//!
//! The demo script is fixed so a new user sees the whole loop within a minute: pump-1 overloads
//! after 10 s, the 30 s hold fires the MotorOverload alarm, the engine's `setLoad` command brings
//! the current down, and the alarm clears.

use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use serde_json::json;
use tokio::sync::watch;

use crate::config::settings::MqttConn;
use crate::engine::clock::wall_ms;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How many devices (`pump-1` …).
    pub devices: usize,
    /// Telemetry messages a second, over all devices.
    pub rate: f64,
    /// The `site` level of the topics.
    pub site: String,
    /// The scripted demo (pump-1 overloads after 10 s) instead of random episodes.
    pub demo: bool,
    /// Stop after this many telemetry messages.
    pub count: Option<u64>,
    /// QoS of telemetry.
    pub qos: u8,
    /// Random seed (the same seed, the same episodes).
    pub seed: u64,
    /// Give up when the broker has not accepted the connection within this long (`simulate`:
    /// a dead broker is an error, not messages queued for nobody); `None` waits.
    pub connect_within: Option<Duration>,
}

impl SimOptions {
    /// The demo: 3 pumps, one message a second each.
    pub fn demo() -> Self {
        SimOptions {
            devices: 3,
            rate: 3.0,
            site: "a".into(),
            demo: true,
            count: None,
            connect_within: None,
            qos: 1,
            seed: 7,
        }
    }
}

/// A small deterministic generator (xorshift64*): the simulator needs variety, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal, mean 0, deviation 1.
    fn gauss(&mut self) -> f64 {
        (0..6).map(|_| self.unit()).sum::<f64>() - 3.0
    }
}

struct Pump {
    id: String,
    rated: f64,
    /// Commanded load (1.0 = rated current).
    load: f64,
    /// Extra load of an overload episode, and until when (ms).
    overload: Option<(f64, i64)>,
    temperature: f64,
    /// Offline until (ms).
    offline_until: Option<i64>,
}

fn topic(site: &str, device: &str, kind: &str) -> String {
    format!("site/{site}/device/{device}/{kind}")
}

/// Publishes one of a pump's own messages at QoS 1 (attributes, status, replies).
async fn send(
    client: &rumqttc::AsyncClient,
    site: &str,
    device: &str,
    kind: &str,
    retain: bool,
    body: String,
) {
    let _ = client
        .publish(topic(site, device, kind), QoS::AtLeastOnce, retain, body)
        .await;
}

/// Publishes until `stop` turns true or `count` messages went out; the number published. An
/// error when the broker never accepted the connection (within `connect_within`).
pub async fn run(
    conn: MqttConn,
    opts: SimOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, String> {
    let mut o = super::options(&conn, "sim").map_err(|e| format!("simulator: {e}"))?;
    o.set_clean_session(true);
    let (client, mut events) = super::client(o, 4096);
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<rumqttc::Publish>(1024);
    let sub = format!("site/{}/device/+/command", opts.site);
    let (connected_tx, mut connected) = watch::channel(false);
    let poller = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut backoff = crate::retry::reconnect_backoff(std::time::Duration::from_secs(5));
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        let _ = connected_tx.send(true);
                        let _ = client.try_subscribe(sub.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = cmd_tx.try_send(p);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        let wait = backoff.next_delay();
                        tracing::warn!("simulator connection: {e}; retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
    };
    // Nothing is published before the broker accepted the connection: rumqttc would queue it
    // and report it sent.
    let accepted = async {
        let _ = connected.wait_for(|c| *c).await;
    };
    let in_time = async {
        match opts.connect_within {
            Some(d) => tokio::time::timeout(d, accepted).await.is_ok(),
            None => {
                accepted.await;
                true
            }
        }
    };
    tokio::select! {
        _ = stop.changed() => {
            poller.abort();
            return Ok(0);
        }
        ok = in_time => if !ok {
            poller.abort();
            return Err(format!(
                "the broker at {}:{} did not accept a connection within {:?}",
                conn.host,
                conn.port,
                opts.connect_within.unwrap_or_default()
            ));
        }
    }
    let qos = if opts.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut rng = Rng(opts.seed.max(1));
    let start = wall_ms();
    let mut pumps: Vec<Pump> = (1..=opts.devices.max(1))
        .map(|i| Pump {
            id: format!("pump-{i}"),
            rated: if i % 2 == 0 { 16.0 } else { 10.0 },
            load: 0.85,
            overload: (opts.demo && i == 1).then_some((0.45, i64::MAX)),
            temperature: 55.0 + rng.unit() * 10.0,
            offline_until: None,
        })
        .collect();
    for p in &pumps {
        let attrs = json!({"rated_current": p.rated, "max_temp": 80.0, "critical_temp": 95.0});
        send(
            &client,
            &opts.site,
            &p.id,
            "attributes",
            true,
            attrs.to_string(),
        )
        .await;
        send(&client, &opts.site, &p.id, "status", false, "online".into()).await;
    }
    tracing::info!(
        devices = pumps.len(),
        rate = opts.rate,
        demo = opts.demo,
        "simulator publishing"
    );
    // Publish in ticks of at most 10 ms, as many messages as the rate allows per tick.
    let tick = Duration::from_millis(10);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: u64 = 0;
    let mut next_pump = 0usize;
    let t0 = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = interval.tick() => {}
        }
        // Commands: setLoad changes the load, every command gets a reply.
        while let Ok(cmd) = cmd_rx.try_recv() {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&cmd.payload) else {
                continue;
            };
            let device = cmd.topic.split('/').nth(3).unwrap_or_default().to_string();
            if let Some(p) = pumps.iter_mut().find(|p| p.id == device) {
                if v["method"] == "setLoad" {
                    let pct = v["params"]["percent"].as_f64().unwrap_or(100.0);
                    p.load = (pct / 100.0).clamp(0.0, 1.5);
                    p.overload = None;
                    tracing::info!(device = %p.id, percent = pct, "simulator: setLoad obeyed");
                }
                let reply = json!({"id": v["id"], "result": "ok"});
                send(
                    &client,
                    &opts.site,
                    &p.id,
                    "rpc_response",
                    false,
                    reply.to_string(),
                )
                .await;
            }
        }
        let mut due = (t0.elapsed().as_secs_f64() * opts.rate) - sent as f64;
        let now = wall_ms();
        let elapsed = now - start;
        while due >= 1.0 {
            due -= 1.0;
            let i = next_pump % pumps.len();
            next_pump += 1;
            let p = &mut pumps[i];
            // Offline episodes (not in the demo): 3 minutes, rarely.
            if let Some(until) = p.offline_until {
                if now < until {
                    continue;
                }
                p.offline_until = None;
                send(&client, &opts.site, &p.id, "status", false, "online".into()).await;
            } else if !opts.demo && rng.unit() < 0.000_02 {
                p.offline_until = Some(now + 180_000);
                send(
                    &client,
                    &opts.site,
                    &p.id,
                    "status",
                    false,
                    "offline".into(),
                )
                .await;
                continue;
            }
            // Overload episodes: 40–90 s at 125–160% (random), or the demo's from 10 s on.
            if !opts.demo && p.overload.is_none() && rng.unit() < 0.000_05 {
                p.overload = Some((
                    0.4 + rng.unit() * 0.35,
                    now + 40_000 + (rng.unit() * 50_000.0) as i64,
                ));
            }
            let extra = match p.overload {
                Some((x, until)) if now < until && (!opts.demo || elapsed >= 10_000) => x,
                Some((_, until)) if now >= until => {
                    p.overload = None;
                    0.0
                }
                _ => 0.0,
            };
            let spike = if rng.unit() < 0.002 { 0.3 } else { 0.0 };
            let current = p.rated * (p.load + extra + spike) * (1.0 + 0.02 * rng.gauss());
            p.temperature = (p.temperature + 0.05 * rng.gauss() + (p.load + extra - 0.9) * 0.02)
                .clamp(20.0, 120.0);
            let vibration = 1.5 + 0.3 * rng.gauss().abs() + extra * 3.0;
            let body = json!({
                "ts": now,
                "current": (current * 100.0).round() / 100.0,
                "temperature": (p.temperature * 10.0).round() / 10.0,
                "vibration": (vibration * 100.0).round() / 100.0,
            });
            if client
                .publish(
                    topic(&opts.site, &p.id, "telemetry"),
                    qos,
                    false,
                    body.to_string(),
                )
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
            if opts.count.is_some_and(|c| sent >= c) {
                break;
            }
        }
        if opts.count.is_some_and(|c| sent >= c) {
            break;
        }
    }
    // Let the last publishes leave.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    tracing::info!(sent, "simulator stopped");
    Ok(sent)
}
