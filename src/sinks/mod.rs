//! Where results leave rulechain besides MQTT: the InfluxDB writer ([`influx`]), the WebSocket
//! hub ([`hub`]) and notification channels ([`notify`]). Each is bounded, retried where the
//! far side can fail, and counted in `/api/status`. The shards hand effects to them without
//! waiting (see `live::egress`).

pub mod hub;
pub mod influx;
pub mod notify;

use std::sync::Arc;

/// The sinks the shards hand effects to (cheap to clone: handles and counters).
#[derive(Clone)]
pub struct Sinks {
    /// The InfluxDB writer, when `influx:` is configured.
    pub influx: Option<influx::Handle>,
    /// The WebSocket hub.
    pub hub: Arc<hub::Hub>,
    /// The notification channels.
    pub notify: notify::Notifier,
}
