//! The log behind ingest in cluster mode (not yet used by a running engine: the cluster is being
//! built on it): the instance holding the ingest lease appends every message to its partition's
//! log and acknowledges it to the broker only once the append is stored; a partition's owner
//! reads its log in order, and a new owner replays it from the offset its snapshot covers.
//!
//! [`PartitionLog`] is the seam (NATS JetStream or Kafka could take Redis's place);
//! [`RedisStreams`] keeps one Redis Stream per partition, under the partition's hash tag, and
//! appends a whole read batch in one pipelined round trip.

use bytes::Bytes;
use redis::aio::MultiplexedConnection;

use super::lease::PartitionKeys;

/// One message in a partition's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The partition (of the device the topic names).
    pub partition: u32,
    /// The MQTT topic.
    pub topic: Bytes,
    /// The payload, as received.
    pub payload: Bytes,
    /// When the ingest holder received it (ms since the epoch).
    pub received: i64,
}

/// A partition's offset in its log: Redis's stream id (`<ms>-<seq>`), which orders entries.
pub type Offset = String;

/// Where ingest puts messages and partition owners read them.
#[allow(async_fn_in_trait)] // used with concrete types: the engine picks one at start
pub trait PartitionLog {
    /// Appends `entries`, each to its partition's log, keeping their order within a partition;
    /// returns each one's offset, in order. Ok only once every entry is stored.
    async fn append(&mut self, entries: &[Entry]) -> Result<Vec<Offset>, String>;

    /// A partition's entries after `after` (exclusive; None: from the start), at most `max`.
    async fn read(
        &mut self,
        partition: u32,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(Offset, Entry)>, String>;
}

/// One Redis Stream per partition.
pub struct RedisStreams {
    con: MultiplexedConnection,
    prefix: String,
    /// Entries a stream keeps at least (trimmed approximately past it: `MAXLEN ~`).
    keep: usize,
}

impl RedisStreams {
    /// Streams of the cluster whose keys start with `prefix`, each keeping about `keep` entries.
    pub fn new(con: MultiplexedConnection, prefix: &str, keep: usize) -> RedisStreams {
        RedisStreams {
            con,
            prefix: prefix.to_string(),
            keep,
        }
    }

    fn key(&self, partition: u32) -> String {
        PartitionKeys::new(&self.prefix, partition).state("log")
    }
}

impl PartitionLog for RedisStreams {
    async fn append(&mut self, entries: &[Entry]) -> Result<Vec<Offset>, String> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("XADD")
                .arg(self.key(e.partition))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.keep)
                .arg("*")
                .arg("t")
                .arg(e.topic.as_ref())
                .arg("p")
                .arg(e.payload.as_ref())
                .arg("r")
                .arg(e.received);
        }
        pipe.query_async(&mut self.con)
            .await
            .map_err(|e| format!("cannot append to the partition logs: {e}"))
    }

    async fn read(
        &mut self,
        partition: u32,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(Offset, Entry)>, String> {
        let start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        type Raw = Vec<(String, Vec<(String, Vec<u8>)>)>;
        let raw: Raw = redis::cmd("XRANGE")
            .arg(self.key(partition))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.con)
            .await
            .map_err(|e| format!("cannot read partition {partition}'s log: {e}"))?;
        raw.into_iter()
            .map(|(id, fields)| {
                let mut e = Entry {
                    partition,
                    topic: Bytes::new(),
                    payload: Bytes::new(),
                    received: 0,
                };
                for (k, v) in fields {
                    match k.as_str() {
                        "t" => e.topic = Bytes::from(v),
                        "p" => e.payload = Bytes::from(v),
                        "r" => {
                            e.received = std::str::from_utf8(&v)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .ok_or_else(|| {
                                format!("entry {id} of partition {partition}: a bad receive time")
                            })?
                        }
                        _ => {}
                    }
                }
                Ok((id, e))
            })
            .collect()
    }
}
