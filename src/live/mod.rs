//! The live engine (`rulechain run`): the rule core plugged into real I/O.
//!
//! ```text
//! MQTT ◄─► ingest task (own connection) ──hash(device)──► shard threads (executor, wall clock)
//!   ▲        QoS 1 acks, in receive order ◄──── Done([seq…]) per turn ─┘   │ effects
//!   └──egress conn. (batches) ◄── outbox in each shard (rpc, publish, dead letters)
//!                                          └──► sinks (InfluxDB writer, WebSocket hub, notify
//!                                               channels: see `crate::sinks`), never waiting
//! ```
//!
//! Every queue is bounded. State is checkpointed per shard to the store (see [`store`]); alarm
//! transitions are written through before they leave the shard. Rule reloads swap a new rule set
//! into every shard without touching the MQTT connections.

pub mod broker;
pub mod cluster;
pub mod devices;
pub mod egress;
#[cfg(feature = "embedded-broker")]
pub mod front;
pub mod history;
pub mod http;
pub mod ingest;
pub mod link;
#[cfg(feature = "embedded-broker")]
pub mod local;
pub(crate) mod notices;
mod os;
mod preflight;
pub mod publisher;
pub mod reload;
mod serve;
pub mod shadow;
pub mod shadows;
pub mod shard;
pub mod shards;
mod stats;
pub mod store;
mod systemd;
pub mod trace;

pub use preflight::Fatal;
pub use serve::RunOptions;
pub use stats::{RateLimit, Stats};

/// Runs the engine until SIGINT/SIGTERM. Returns the process exit code.
pub fn run(settings: crate::config::settings::Settings, opts: RunOptions) -> i32 {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match preflight::start(settings, opts) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{}", e.message);
            e.code
        }
    }
}
