//! The log behind ingest in cluster mode: the instance holding the ingest lease appends every message to its partition's
//! log and acknowledges it to the broker only once the append is stored; a partition's owner
//! reads its log in order, and a new owner replays it from the offset its snapshot covers.
//!
//! [`PartitionLog`] is the seam (NATS JetStream or Kafka could take Redis's place);
//! [`RedisStreams`] keeps one Redis Stream per partition, under the partition's hash tag, and
//! appends a whole read batch in one round trip: one fenced script call for all its
//! partitions.

use bytes::Bytes;
use redis::aio::ConnectionManager;

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

/// Why an append was refused.
#[derive(Debug)]
pub enum AppendError {
    /// Another instance holds the ingest lease at a higher epoch and has appended to a
    /// partition since: this writer must stop (its messages are not acknowledged, so the broker
    /// delivers them to the new holder).
    Stale(String),
    /// The log could not be reached or refused otherwise: try again.
    Failed(String),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Stale(m) | AppendError::Failed(m) => f.write_str(m),
        }
    }
}

/// Where ingest puts messages and partition owners read them.
#[allow(async_fn_in_trait)] // used with concrete types: the engine picks one at start
pub trait PartitionLog {
    /// Appends `entries`, each to its partition's log, keeping their order within a partition,
    /// as the ingest holder of `epoch`; returns each one's offset, in the order given. Ok only
    /// once every entry is stored. A partition refuses a writer older than the newest that
    /// wrote to it.
    async fn append(&mut self, epoch: u64, entries: &[Entry]) -> Result<Vec<Offset>, AppendError>;

    /// A partition's entries after `after` (exclusive; None: from the start), at most `max`.
    async fn read(
        &mut self,
        partition: u32,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(Offset, Entry)>, String>;

    /// The entries after each `(partition, offset)` (exclusive), at most `max` per partition,
    /// waiting up to `wait_ms` for one when there are none (the owners' reader: one request
    /// for all the partitions an instance owns).
    async fn read_many(
        &mut self,
        from: &[(u32, Offset)],
        max: usize,
        wait_ms: u64,
    ) -> Result<Vec<(u32, Vec<(Offset, Entry)>)>, String>;

    /// Entries in a partition's log (the backlog bound: trimmed past `keep`).
    async fn len(&mut self, partition: u32) -> Result<u64, String>;
}

/// Appends a read batch to its partitions' logs, fenced by the ingest epoch, in one script
/// call. KEYS: each partition's fence and log, in pairs. ARGV: epoch, entries kept, then for
/// each partition its entry count and the topic, payload and receive time of each entry. Every
/// fence is checked before anything is appended, so a refused batch stores nothing. A fence
/// rises to the newest writer's epoch at its first append to the partition, after which an
/// older writer (paused past its lease, its session taken over) is refused. Returns each
/// partition's entry ids.
const APPEND: &str = r"
local e = tonumber(ARGV[1])
for k = 1, #KEYS, 2 do
  local f = tonumber(redis.call('GET', KEYS[k]) or '0')
  if f > e then
    return redis.error_reply('STALE ingest epoch ' .. e .. ', a partition takes ' .. f)
  end
  if f < e then redis.call('SET', KEYS[k], e) end
end
local out = {}
local a = 3
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  a = a + 1
  local ids = {}
  for j = 1, n do
    ids[j] = redis.call('XADD', KEYS[k + 1], 'MAXLEN', '~', ARGV[2], '*',
      't', ARGV[a], 'p', ARGV[a + 1], 'r', ARGV[a + 2])
    a = a + 3
  end
  out[#out + 1] = ids
end
return out
";

static APPEND_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(APPEND));

/// One Redis Stream per partition.
pub struct RedisStreams {
    con: ConnectionManager,
    prefix: String,
    /// Entries a stream keeps at least (trimmed approximately past it: `MAXLEN ~`).
    keep: usize,
}

impl RedisStreams {
    /// Streams of the cluster whose keys start with `prefix`, each keeping about `keep` entries.
    pub fn new(con: ConnectionManager, prefix: &str, keep: usize) -> RedisStreams {
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
    async fn append(&mut self, epoch: u64, entries: &[Entry]) -> Result<Vec<Offset>, AppendError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Each partition's entries, in order; one script call per partition, all in one
        // round trip.
        let mut parts: Vec<(u32, Vec<usize>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match parts.iter_mut().find(|(p, _)| *p == e.partition) {
                Some((_, idx)) => idx.push(i),
                None => parts.push((e.partition, vec![i])),
            }
        }
        let mut call = APPEND_SCRIPT.prepare_invoke();
        for (p, _) in &parts {
            let keys = PartitionKeys::new(&self.prefix, *p);
            call.key(keys.state("ingest")).key(keys.state("log"));
        }
        call.arg(epoch).arg(self.keep);
        for (_, idx) in &parts {
            call.arg(idx.len());
            for &i in idx {
                let e = &entries[i];
                call.arg(e.topic.as_ref())
                    .arg(e.payload.as_ref())
                    .arg(e.received);
            }
        }
        // Redis runs it by hash, and loads it first when it does not know it (after a restart).
        let ids: Vec<Vec<String>> = call.invoke_async(&mut self.con).await.map_err(|e| {
            if e.code() == Some("STALE") {
                AppendError::Stale(e.to_string())
            } else {
                AppendError::Failed(format!("cannot append to the partition logs: {e}"))
            }
        })?;
        let mut out = vec![String::new(); entries.len()];
        for ((_, idx), ids) in parts.iter().zip(ids) {
            for (&i, id) in idx.iter().zip(ids) {
                out[i] = id;
            }
        }
        Ok(out)
    }

    async fn read(
        &mut self,
        partition: u32,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(Offset, Entry)>, String> {
        let start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let raw: Raw = redis::cmd("XRANGE")
            .arg(self.key(partition))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.con)
            .await
            .map_err(|e| format!("cannot read partition {partition}'s log: {e}"))?;
        decode(partition, raw)
    }

    async fn read_many(
        &mut self,
        from: &[(u32, Offset)],
        max: usize,
        wait_ms: u64,
    ) -> Result<Vec<(u32, Vec<(Offset, Entry)>)>, String> {
        if from.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(wait_ms)
            .arg("STREAMS");
        for (p, _) in from {
            cmd.arg(self.key(*p));
        }
        for (_, o) in from {
            cmd.arg(o);
        }
        // Nil when nothing came within the wait.
        let raw: Option<Vec<(String, Raw)>> = cmd
            .query_async(&mut self.con)
            .await
            .map_err(|e| format!("cannot read the partition logs: {e}"))?;
        let mut out = Vec::new();
        for (key, entries) in raw.unwrap_or_default() {
            let Some(p) = from.iter().map(|(p, _)| *p).find(|p| self.key(*p) == key) else {
                continue;
            };
            out.push((p, decode(p, entries)?));
        }
        Ok(out)
    }

    async fn len(&mut self, partition: u32) -> Result<u64, String> {
        redis::cmd("XLEN")
            .arg(self.key(partition))
            .query_async(&mut self.con)
            .await
            .map_err(|e| format!("cannot read partition {partition}'s log: {e}"))
    }
}

/// Stream entries as Redis gives them: id, then field/value pairs.
type Raw = Vec<(String, Vec<(String, Vec<u8>)>)>;

fn decode(partition: u32, raw: Raw) -> Result<Vec<(Offset, Entry)>, String> {
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
