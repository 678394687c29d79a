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

/// One message a pump publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    /// The full topic.
    pub topic: String,
    /// Retained (the attributes).
    pub retain: bool,
    /// The payload (JSON or a status word).
    pub body: String,
    /// Telemetry (at the configured QoS, counted); else the pump's own messages (QoS 1).
    pub telemetry: bool,
}

/// The pumps and their episodes, without a connection: what they publish at a time, and how
/// they answer a command. `run` drives it on the wall clock through MQTT.
pub struct Fleet {
    pumps: Vec<Pump>,
    rng: Rng,
    site: String,
    demo: bool,
    start: i64,
    next_pump: usize,
    /// Seconds between two messages of one pump: the odds of an episode on a message are
    /// per second of a pump's time, whatever the rate.
    spacing: f64,
}

/// Random episodes, per second of one pump's time: an overload about every 5.6 hours, going
/// offline about every 14 hours.
const OVERLOADS_PER_SECOND: f64 = 0.000_05;
const OUTAGES_PER_SECOND: f64 = 0.000_02;

impl Fleet {
    /// The pumps of `opts`, their clock starting at `start` (ms).
    pub fn new(opts: &SimOptions, start: i64) -> Fleet {
        let mut rng = Rng(opts.seed.max(1));
        let pumps = (1..=opts.devices.max(1))
            .map(|i| Pump {
                id: format!("pump-{i}"),
                rated: if i % 2 == 0 { 16.0 } else { 10.0 },
                load: 0.85,
                overload: (opts.demo && i == 1).then_some((0.45, i64::MAX)),
                temperature: 55.0 + rng.unit() * 10.0,
                offline_until: None,
            })
            .collect();
        Fleet {
            pumps,
            rng,
            site: opts.site.clone(),
            demo: opts.demo,
            start,
            next_pump: 0,
            spacing: opts.devices.max(1) as f64 / opts.rate.max(f64::MIN_POSITIVE),
        }
    }

    /// How many pumps.
    pub fn len(&self) -> usize {
        self.pumps.len()
    }

    /// Never empty (at least one pump).
    pub fn is_empty(&self) -> bool {
        self.pumps.is_empty()
    }

    fn own(&self, device: &str, kind: &str, retain: bool, body: String) -> Out {
        Out {
            topic: topic(&self.site, device, kind),
            retain,
            body,
            telemetry: false,
        }
    }

    /// What each pump says at start: its attributes (retained) and that it is online.
    pub fn announce(&self) -> Vec<Out> {
        let mut out = Vec::new();
        for p in &self.pumps {
            let attrs = json!({"rated_current": p.rated, "max_temp": 80.0, "critical_temp": 95.0});
            out.push(self.own(&p.id, "attributes", true, attrs.to_string()));
            out.push(self.own(&p.id, "status", false, "online".into()));
        }
        out
    }

    /// A command on `topic`: `setLoad` changes the pump's load (and ends its overload); every
    /// command to a pump gets a reply.
    pub fn command(&mut self, topic: &str, payload: &[u8]) -> Option<Out> {
        let v = serde_json::from_slice::<serde_json::Value>(payload).ok()?;
        let device = topic.split('/').nth(3).unwrap_or_default().to_string();
        let p = self.pumps.iter_mut().find(|p| p.id == device)?;
        if v["method"] == "setLoad" {
            let pct = v["params"]["percent"].as_f64().unwrap_or(100.0);
            p.load = (pct / 100.0).clamp(0.0, 1.5);
            p.overload = None;
            tracing::info!(device = %p.id, percent = pct, "simulator: setLoad obeyed");
        }
        let reply = json!({"id": v["id"], "result": "ok"});
        Some(self.own(&device, "rpc_response", false, reply.to_string()))
    }

    /// The next pump's turn at `now` (ms): its status when it goes offline or comes back, and
    /// its telemetry unless it is offline.
    pub fn next(&mut self, now: i64) -> Vec<Out> {
        let mut out = Vec::new();
        let elapsed = now - self.start;
        let i = self.next_pump % self.pumps.len();
        self.next_pump += 1;
        let (demo, site, spacing) = (self.demo, self.site.clone(), self.spacing);
        let rng = &mut self.rng;
        let p = &mut self.pumps[i];
        let status = |p: &Pump, word: &str| Out {
            topic: topic(&site, &p.id, "status"),
            retain: false,
            body: word.into(),
            telemetry: false,
        };
        // Offline episodes (not in the demo): 3 minutes, rarely.
        if let Some(until) = p.offline_until {
            if now < until {
                return out;
            }
            p.offline_until = None;
            out.push(status(p, "online"));
        } else if !demo && rng.unit() < OUTAGES_PER_SECOND * spacing {
            p.offline_until = Some(now + 180_000);
            out.push(status(p, "offline"));
            return out;
        }
        // Overload episodes: 40–90 s at 125–160% (random), or the demo's from 10 s on.
        if !demo && p.overload.is_none() && rng.unit() < OVERLOADS_PER_SECOND * spacing {
            p.overload = Some((
                0.4 + rng.unit() * 0.35,
                now + 40_000 + (rng.unit() * 50_000.0) as i64,
            ));
        }
        let extra = match p.overload {
            Some((x, until)) if now < until && (!demo || elapsed >= 10_000) => x,
            Some((_, until)) if now >= until => {
                p.overload = None;
                0.0
            }
            _ => 0.0,
        };
        let spike = if rng.unit() < 0.002 { 0.3 } else { 0.0 };
        let current = p.rated * (p.load + extra + spike) * (1.0 + 0.02 * rng.gauss());
        p.temperature =
            (p.temperature + 0.05 * rng.gauss() + (p.load + extra - 0.9) * 0.02).clamp(20.0, 120.0);
        let vibration = 1.5 + 0.3 * rng.gauss().abs() + extra * 3.0;
        let body = json!({
            "ts": now,
            "current": (current * 100.0).round() / 100.0,
            "temperature": (p.temperature * 10.0).round() / 10.0,
            "vibration": (vibration * 100.0).round() / 100.0,
        });
        out.push(Out {
            topic: topic(&site, &p.id, "telemetry"),
            retain: false,
            body: body.to_string(),
            telemetry: true,
        });
        out
    }
}

/// Publishes one of a pump's messages.
async fn publish(client: &rumqttc::AsyncClient, o: &Out, qos: QoS) {
    let _ = client
        .publish(o.topic.clone(), qos, o.retain, o.body.clone())
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
    let mut fleet = Fleet::new(&opts, wall_ms());
    for o in fleet.announce() {
        publish(&client, &o, QoS::AtLeastOnce).await;
    }
    tracing::info!(
        devices = fleet.len(),
        rate = opts.rate,
        demo = opts.demo,
        "simulator publishing"
    );
    // Publish in ticks of at most 10 ms, as many messages as the rate allows per tick.
    let tick = Duration::from_millis(10);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: u64 = 0;
    let t0 = tokio::time::Instant::now();
    'ticks: loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = interval.tick() => {}
        }
        // Commands: setLoad changes the load, every command gets a reply.
        while let Ok(cmd) = cmd_rx.try_recv() {
            if let Some(reply) = fleet.command(&cmd.topic, &cmd.payload) {
                publish(&client, &reply, QoS::AtLeastOnce).await;
            }
        }
        let mut due = (t0.elapsed().as_secs_f64() * opts.rate) - sent as f64;
        let now = wall_ms();
        'slots: while due >= 1.0 {
            due -= 1.0;
            for o in fleet.next(now) {
                if !o.telemetry {
                    publish(&client, &o, QoS::AtLeastOnce).await;
                    continue;
                }
                if client.publish(o.topic, qos, false, o.body).await.is_err() {
                    break 'slots;
                }
                sent += 1;
                if opts.count.is_some_and(|c| sent >= c) {
                    break 'ticks;
                }
            }
        }
    }
    // Let the last publishes leave.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    tracing::info!(sent, "simulator stopped");
    Ok(sent)
}

/// Writes `duration_ms` of the fleet's traffic from `start` (ms) on a virtual clock, as the
/// lines `record` writes and `dry-run` and `diff` read (`{"topic", "ts", "payload"}`): what each
/// pump says at start, then its turns at `opts.rate` messages a second over all pumps. No engine
/// answers: an overload ends when its episode does. Gives the lines written.
pub fn record(
    opts: &SimOptions,
    start: i64,
    duration_ms: i64,
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    let mut fleet = Fleet::new(opts, start);
    let mut lines = 0u64;
    let mut write = |ts: i64, o: Out| -> std::io::Result<()> {
        let payload = serde_json::from_str::<serde_json::Value>(&o.body)
            .unwrap_or(serde_json::Value::String(o.body));
        let line = json!({"topic": o.topic, "ts": ts, "payload": payload});
        lines += 1;
        writeln!(out, "{line}")
    };
    for o in fleet.announce() {
        write(start, o)?;
    }
    let step = 1000.0 / opts.rate.max(f64::MIN_POSITIVE);
    let mut k: u64 = 1;
    loop {
        let now = start + (k as f64 * step) as i64;
        if now >= start + duration_ms {
            break;
        }
        for o in fleet.next(now) {
            write(now, o)?;
        }
        k += 1;
    }
    out.flush()?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_day_is_the_same_for_the_same_seed_and_has_episodes() {
        let opts = SimOptions {
            devices: 4,
            rate: 0.4,
            seed: 11,
            demo: false,
            ..SimOptions::demo()
        };
        let day = |seed: u64| {
            let mut out = Vec::new();
            let o = SimOptions {
                seed,
                ..opts.clone()
            };
            let n = record(&o, 1_767_571_200_000, 86_400_000, &mut out).unwrap();
            (n, String::from_utf8(out).unwrap())
        };
        let (n, text) = day(11);
        assert_eq!(day(11).1, text, "the same seed, the same day");
        assert_ne!(day(12).1, text);
        // 4 pumps every 10 s for a day, less their time offline, plus their status lines.
        assert!(n > 33_000 && n < 35_500, "{n} lines");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines
            .windows(2)
            .all(|w| w[0]["ts"].as_i64() <= w[1]["ts"].as_i64()));
        let offline = lines.iter().filter(|l| l["payload"] == "offline").count();
        assert!(offline >= 1, "a day has outages");
        // Overloads: currents past 125% of a 10 A or 16 A rating.
        let over = lines
            .iter()
            .filter(|l| {
                let rated = if l["topic"].as_str().unwrap().contains("pump-2")
                    || l["topic"].as_str().unwrap().contains("pump-4")
                {
                    16.0
                } else {
                    10.0
                };
                l["payload"]["current"]
                    .as_f64()
                    .is_some_and(|c| c > rated * 1.24)
            })
            .count();
        assert!(over > 20, "a day has overloads ({over} messages over 124%)");
    }
}
