//! The embedded broker's network side against real clients: the `rulechain` binary on its
//! embedded broker, raw MQTT over TCP (to flood faster than any client library would) and
//! rumqttc. A flood faster than the rules is held in TCP, not skipped; wills are published;
//! the engine's own client ids cannot be taken over.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{embedded_setup, Engine, Mqtt};
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use serde_json::json;

/// An MQTT 3.1.1 packet: fixed header byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut rest = body.len();
    loop {
        let mut b = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            b |= 0x80;
        }
        out.push(b);
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// CONNECT with a clean session and a keep-alive of `keep_alive` s.
fn connect(client_id: &str, keep_alive: u8) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend_from_slice(&[4, 0x02, 0, keep_alive]);
    body.extend(string(client_id));
    packet(0x10, &body)
}

/// A QoS 0 PUBLISH.
fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// Connects with raw MQTT (keep-alive 60 s); gives the stream once the CONNACK came, and its
/// return code.
fn raw_connect(port: u16, client_id: &str) -> (TcpStream, u8) {
    raw_connect_with(port, client_id, 60)
}

fn raw_connect_with(port: u16, client_id: &str, keep_alive: u8) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect(client_id, keep_alive)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack[0], 0x20, "a CONNACK");
    (s, ack[3])
}

const COUNT: &str = "chain: count\non: { kind: telemetry }\nnodes:\n  - filter: msg.v >= 0\n";

#[test]
fn a_flood_faster_than_the_rules_is_held_in_tcp_not_skipped() {
    // 400,000 messages written as fast as a socket takes them: several times what the rules
    // drain, and several times what the broker's log for the engine holds. Every one must be
    // run, none skipped; the publisher is slowed instead.
    const N: u64 = 400_000;
    let (dir, mqtt, http) =
        embedded_setup("broker-flood", &[("count.yaml", COUNT)], "devices: []\n");
    let engine = Engine::start(&dir, http);
    let (mut s, code) = raw_connect(mqtt, "flooder");
    assert_eq!(code, 0);
    let mut buf = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    for i in 0..N {
        let payload = format!("{{\"v\":{i},\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}");
        buf.extend(publish(
            &format!("device/d{}/telemetry", i % 50),
            payload.as_bytes(),
        ));
        if buf.len() > 64 * 1024 {
            s.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    s.write_all(&buf).unwrap();
    let written = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let counters = loop {
        let c = engine.status()["counters"].clone();
        let done = c["received"].as_u64().unwrap_or(0) + c["broker_dropped"].as_u64().unwrap_or(0);
        if done >= N || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        counters["broker_dropped"],
        json!(0),
        "{counters}\n{}",
        engine.log()
    );
    assert_eq!(
        counters["received"],
        json!(N),
        "{counters}\n{}",
        engine.log()
    );
    eprintln!("flood of {N} written in {written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_when_a_connection_is_lost_not_when_it_disconnects() {
    let (dir, mqtt, http) =
        embedded_setup("broker-will", &[("count.yaml", COUNT)], "devices: []\n");
    let _engine = Engine::start(&dir, http);
    let mut watcher = Mqtt::connect(mqtt, "will-watcher", true, &["status/#"]).await;
    for (id, lost) in [("dev-lost", true), ("dev-bye", false)] {
        let mut o = MqttOptions::new(id, "127.0.0.1", mqtt);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_last_will(LastWill::new(
            format!("status/{id}"),
            r#"{"online":false}"#,
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut events) = AsyncClient::new(o, 10);
        // Connected once the CONNACK came.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("{id} could not connect: {other:?}"),
            }
        }
        if lost {
            // The socket closes without a DISCONNECT.
            drop(events);
            drop(client);
        } else {
            client.disconnect().await.unwrap();
            while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(2), events.poll()).await
            {
                if matches!(e, rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        }
    }
    let got = watcher.drain(Duration::from_secs(3)).await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["status/dev-lost"], "{got:?}");
    assert_eq!(got[0].1, json!({"online": false}));
}

#[test]
fn the_engines_own_client_ids_are_refused() {
    let (dir, mqtt, http) = embedded_setup("broker-ids", &[("count.yaml", COUNT)], "devices: []\n");
    let engine = Engine::start(&dir, http);
    for id in [
        "rulechain-engine-in-0",
        "rulechain-engine-out",
        "rulechain-broker-wills",
    ] {
        let (_s, code) = raw_connect(mqtt, id);
        assert_eq!(code, 2, "{id}: identifier rejected");
    }
    // The engine's links were not taken over: a device's message still runs.
    let (mut s, code) = raw_connect(mqtt, "device-1");
    assert_eq!(code, 0);
    s.write_all(&publish("device/d1/telemetry", br#"{"v":1}"#))
        .unwrap();
    let ok = common::wait_for(Duration::from_secs(10), || {
        (engine.status()["counters"]["received"] == json!(1)).then_some(())
    });
    assert!(ok.is_some(), "{}", engine.log());
    assert_eq!(engine.status()["counters"]["mqtt_connect_errors"], json!(0));
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives_and_a_pinging_one_is_not() {
    let (dir, mqtt, http) = embedded_setup(
        "broker-keepalive",
        &[("count.yaml", COUNT)],
        "devices: []\n",
    );
    let _engine = Engine::start(&dir, http);
    let (mut silent, code) = raw_connect_with(mqtt, "silent", 1);
    assert_eq!(code, 0);
    let (mut pinging, code) = raw_connect_with(mqtt, "pinging", 1);
    assert_eq!(code, 0);
    // The pinging client sends PINGREQ every half second and reads each PINGRESP.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        pinging.write_all(&[0xC0, 0]).unwrap();
        let mut resp = [0u8; 2];
        pinging.read_exact(&mut resp).unwrap();
        assert_eq!(resp, [0xD0, 0], "a PINGRESP");
    }
    // 3 s on: the silent one was closed by the broker (1.5 s after its last packet), which a
    // read sees as the end of the stream (or a reset), not as a timeout.
    let mut byte = [0u8; 1];
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match silent.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent client is still connected: {other:?}"),
    }
}
