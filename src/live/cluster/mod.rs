//! Several instances as one engine on Redis (`cluster:`). See ARCHITECTURE.md ("Cluster mode")
//! for the design and its reasons, and docs/cluster.md for what it guarantees.
//!
//! ```text
//! broker ──one QoS 1 session (cluster-wide client id)──► ingest holder: appender
//!                                              │ fenced XADD per partition, then PUBACK
//!                                              ▼
//!                          Redis: {p<N>}:log  {p<N>}:state  {p<N>}:lease/epoch
//!                                              │ XREAD (one request, every owned partition)
//!                                              ▼
//!             each instance: reader ──► one executor per owned partition (a shard)
//!                                        state written through, fenced by the epoch
//! ```
//!
//! One control loop per instance, every third of the lease: a heartbeat (the live instances),
//! the partitions' owners, the placement every instance computes alike
//! ([`placement::place`]); then it renews what it holds, hands over what the placement gives
//! another (a final snapshot, then the lease released: no lease wait), takes what is free and
//! its own, and holds or seeks the ingest lease. A partition whose lease it could not renew
//! within the lease stops at once, writing nothing (Redis would refuse it anyway).

pub mod lease;
pub mod placement;
pub mod redis_conn;
pub mod streams;

mod appender;
mod control;
mod fanout;
mod outbox;
mod pstore;
mod reader;
mod remote;
mod view;

pub use control::{start, Running, Setup, ShardTemplate};
pub use remote::FORWARDED;
pub use view::{Backlog, ClusterStats, Holder, Member, Status, View};
