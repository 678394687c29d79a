//! The embedded MQTT broker (rumqttd, behind the default cargo feature `embedded-broker`): what
//! makes `rulechain run` work with nothing installed. It listens on loopback by default, speaks
//! MQTT 3.1.1, and lives as long as the process (rumqttd has no shutdown API).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Starts the broker on `listen` and waits until it accepts connections.
#[cfg(feature = "embedded-broker")]
pub fn start(listen: SocketAddr) -> Result<(), String> {
    use std::collections::HashMap;

    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

    // Refuse early and clearly when the port is taken (rumqttd would only log it).
    match std::net::TcpListener::bind(listen) {
        Ok(l) => drop(l),
        Err(e) => {
            return Err(format!(
                "the embedded broker cannot listen on {listen}: {e}. Another broker may be running there: \
                 point rulechain at it with `mqtt: {{url: mqtt://{listen}}}` in a config, or move the embedded \
                 one with `embedded_broker: {{listen: 127.0.0.1:PORT}}`"
            ))
        }
    }
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: super::link::MAX_OUTGOING_PACKET,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 500,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the embedded broker: {e}"))?;
    wait_for(listen)
}

/// Without the feature there is no embedded broker: say how to get one.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(listen: SocketAddr) -> Result<(), String> {
    Err(format!(
        "no `mqtt:` broker is configured and this build has no embedded broker (feature \
         `embedded-broker`): configure `mqtt: {{url: mqtt://HOST:1883}}`, or rebuild with the \
         default features (it would listen on {listen})"
    ))
}

/// Waits until something accepts TCP connections on `addr` (at most 5 s).
pub fn wait_for(addr: SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the embedded broker did not start listening on {addr}"
    ))
}
