//! MQTT clients that stand beside the engine rather than in it: the device simulator
//! (`rulechain simulate`, and `run --demo`) and the recorder (`rulechain record`). They carry
//! little traffic, so they keep rumqttc's event loop, with the broker settings of the config.
//! They never import `live`; the engine starts the simulator for `--demo`.

pub mod record;
pub mod sim;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, Transport};

use crate::config::settings::MqttConn;
use crate::message::{MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET};

/// rumqttc options for a helper connection (`suffix`: `sim`, `record`).
pub fn options(conn: &MqttConn, suffix: &str) -> Result<MqttOptions, String> {
    let id = format!("{}-{suffix}", conn.client_id);
    let mut o = MqttOptions::new(id, conn.host.clone(), conn.port);
    o.set_keep_alive(conn.keep_alive);
    o.set_clean_session(!conn.persistent_session);
    o.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    o.set_request_channel_capacity(1024);
    o.set_inflight(100);
    if let Some(u) = &conn.username {
        o.set_credentials(u.clone(), conn.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &conn.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let client_auth = match &tls.client {
            Some((c, k)) => Some((read(c)?, read(k)?)),
            None => None,
        };
        o.set_transport(Transport::tls(read(&tls.ca)?, client_auth, None));
    }
    Ok(o)
}

/// A helper client and its event loop, with TCP_NODELAY.
pub fn client(o: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
    let (c, mut events) = AsyncClient::new(o, cap);
    let mut net = events.network_options();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    (c, events)
}
