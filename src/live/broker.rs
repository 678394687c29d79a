//! The embedded MQTT broker (rumqttd, behind the default cargo feature `embedded-broker`): what
//! makes `rulechain run` work with nothing installed. It listens on loopback by default, speaks
//! MQTT 3.1.1, and lives as long as the process (rumqttd has no shutdown API). The engine itself
//! is attached to it in process, through rumqttd's local links ([`super::local`]): no socket
//! between the broker and the rules. Its network side is rulechain's own ([`super::front`]):
//! rumqttd's router behind a listener that stops reading publishers while the engine lags.
//!
//! rumqttd keeps every message in a commit log per subscription filter (and per topic that no
//! filter matches) and frees it only when the log rotates, read or not: the log's size is the
//! broker's memory. Every log is bounded ([`LOG_SEGMENTS`] segments of [`LOG_SEGMENT_BYTES`]).
//! The listener holds its intake before the engine falls a quarter of a log behind, so the
//! engine's logs are not outrun by network clients; a
//! subscriber that falls further behind than its log (a slow dashboard) skips to the oldest
//! message kept, and if the engine ever does, it counts what it skipped (`broker_dropped`).

use std::net::SocketAddr;

/// The engine's links to the embedded broker, and the tasks that use them.
#[cfg(feature = "embedded-broker")]
pub use super::local::{
    egress as local_egress, ingest as local_ingest, EgressLink, IngestLinks, Links,
};

#[cfg(not(feature = "embedded-broker"))]
pub use no_links::*;

/// Without the feature there is no embedded broker, and no links to it: these types have no
/// values, so the code that would use them is never reached.
#[cfg(not(feature = "embedded-broker"))]
mod no_links {
    use std::sync::Arc;

    use tokio::sync::{mpsc, watch};
    use tokio::task::JoinHandle;

    use crate::live::shard::ShardMsg;
    use crate::live::{publisher::Queue, RateLimit, Stats};
    use crate::topic::TopicPattern;

    /// No links.
    pub enum Links {}
    /// No ingest links.
    pub enum IngestLinks {}
    /// No egress link.
    pub enum EgressLink {}

    impl Links {
        /// Never called.
        pub fn split(self) -> (IngestLinks, EgressLink) {
            match self {}
        }
    }

    /// Never called.
    pub fn local_ingest(
        links: IngestLinks,
        _: &[TopicPattern],
        _: &[mpsc::Sender<ShardMsg>],
        _: &Arc<Stats>,
        _: &Arc<RateLimit>,
        _: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        match links {}
    }

    /// Never called.
    pub fn local_egress(link: EgressLink, _: Queue, _: Arc<RateLimit>) -> JoinHandle<()> {
        match link {}
    }
}

/// Bytes (topics and payloads, as rumqttd counts them) in one segment of a commit log: 4 such
/// segments hold some 35,000 telemetry-sized messages (~110 bytes counted), for a device's
/// commands, a dashboard's subscription or a topic nobody subscribed to. In memory a message
/// costs ~5 times what is counted (rumqttd's record of it, ~250 bytes, in a vector that doubles
/// as it grows): a full log of 4 MiB counted takes ~20 MiB.
pub const LOG_SEGMENT_BYTES: usize = 1024 * 1024;

/// Segments a commit log keeps. rumqttd's own default (10 × 100 MiB for every filter) let the
/// broker grow to 0.5–1.3 GiB in a 400,000-message flood.
pub const LOG_SEGMENTS: usize = 4;

/// Starts the broker on `listen`, waits until it accepts connections, and attaches the engine:
/// one local link per subscription filter of `filters` for ingest, one for egress.
#[cfg(feature = "embedded-broker")]
pub fn start(listen: SocketAddr, filters: &[String]) -> Result<super::local::Links, String> {
    use super::front::{self, Backlog};
    use rumqttd::local::LinkBuilder;
    use rumqttd::{Router, RouterConfig};
    use std::sync::Arc;

    // The listener is bound here, so that a port already taken is refused at once and clearly.
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            format!(
                "the embedded broker cannot listen on {listen}: {e}. Another broker may be running there: \
                 move the embedded one with `rulechain run --mqtt-listen 127.0.0.1:PORT` (or \
                 `embedded_broker: {{listen: 127.0.0.1:PORT}}` in a config), or point rulechain at that \
                 broker with `mqtt: {{url: mqtt://{listen}}}` in a config"
            )
        })?;
    let router = RouterConfig {
        max_connections: 10_010,
        max_outgoing_packet_count: 500,
        max_segment_size: LOG_SEGMENT_BYTES,
        max_segment_count: LOG_SEGMENTS,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    // rumqttd's `Broker` is not used: its local links cannot publish to a topic no filter
    // matches (the router disconnects them), and its listener cannot hold a publisher
    // ([`super::front`]). The router is started alone; links to it are made here, the engine's
    // (the egress link with dynamic filters, as network clients have) and one per connection.
    let router_tx = Router::new(0, router).spawn();
    let link_tx = router_tx.clone();
    let backlog = Arc::new(Backlog::new(filters, LOG_SEGMENT_BYTES * LOG_SEGMENTS));
    let links = super::local::Links::attach(
        filters,
        move |id, dynamic| {
            LinkBuilder::new(id, link_tx.clone())
                .dynamic_filters(dynamic)
                .build()
                .map(|(tx, rx, _connack)| (tx, rx))
                .map_err(|e| format!("cannot attach to the embedded broker: {e}"))
        },
        backlog.clone(),
    )?;
    let connect: Arc<front::Connect> = Arc::new(move |id: &str, clean: bool| {
        LinkBuilder::new(id, router_tx.clone())
            .clean_session(clean)
            .dynamic_filters(true)
            .build()
            .map_err(|e| e.to_string())
    });
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(front::serve(listener, connect, backlog)),
                Err(e) => tracing::error!("the embedded broker cannot start its runtime: {e}"),
            }
        })
        .map_err(|e| format!("cannot start the embedded broker: {e}"))?;
    Ok(links)
}

/// Without the feature there is no embedded broker: say how to get one.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(listen: SocketAddr, _filters: &[String]) -> Result<Links, String> {
    Err(format!(
        "no `mqtt:` broker is configured and this build has no embedded broker (feature \
         `embedded-broker`): configure `mqtt: {{url: mqtt://HOST:1883}}`, or rebuild with the \
         default features (it would listen on {listen})"
    ))
}
