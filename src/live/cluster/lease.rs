//! Leases with an epoch (a fencing token) in Redis, and the fenced write every state write of a
//! cluster goes through.
//!
//! A partition has one owner at a time: the instance holding its lease. Taking a lease that was
//! free or had expired bumps the partition's epoch; renewing keeps it. Every write of the
//! partition's state carries the writer's epoch, and Redis itself refuses it (in the same Lua
//! script that writes) when the epoch is no longer the partition's: an instance that was paused
//! past its lease, or cut off from Redis, can never write again once another took over, whatever
//! its own clock says. The lease's expiry is Redis's (`PX`), never the instance's.
//!
//! Every key of a partition shares the hash tag `{p<N>}`, so that a partition sits in one slot
//! of a Redis Cluster and its scripts touch one node.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::Script;

/// The scripts, each hashed once (Redis runs them by hash, loading one it does not know).
static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
static FENCED_SET_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FENCED_SET));

/// Takes the lease (free, expired, or already ours: then renewed), in one step.
/// KEYS: lease, epoch. ARGV: instance, ttl ms. Returns the epoch held, or 0 when another holds
/// it.
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false then
  local e = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. e, 'PX', ARGV[2])
  return e
end
local sep = string.find(cur, ' ', 1, true)
if string.sub(cur, 1, sep - 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(cur, sep + 1))
end
return 0
";

/// Gives the lease up if it is ours at this epoch (a graceful stop: no lease wait for the next).
/// KEYS: lease. ARGV: instance, epoch. Returns 1 if released.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] .. ' ' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Writes a value if the writer's epoch is the partition's. KEYS: epoch, target. ARGV: epoch,
/// value. An error reply `STALE …` otherwise.
const FENCED_SET: &str = r"
local e = tonumber(redis.call('GET', KEYS[1]) or '0')
if e ~= tonumber(ARGV[1]) then
  return redis.error_reply('STALE epoch ' .. ARGV[1] .. ', the partition is at ' .. e)
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
";

/// A key of the cluster as a whole (hash tag `{c}`): the members, the WebSocket frames, the
/// partition count.
pub fn cluster_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{{c}}:{name}")
}

/// A partition's keys in Redis, under a cluster's prefix.
#[derive(Debug, Clone)]
pub struct PartitionKeys {
    tag: String,
}

impl PartitionKeys {
    /// The keys of partition `p` of the cluster whose keys start with `prefix`.
    pub fn new(prefix: &str, p: u32) -> PartitionKeys {
        PartitionKeys {
            tag: format!("{prefix}:{{p{p}}}"),
        }
    }

    /// The lease: `"<instance> <epoch>"`, expiring.
    pub fn lease(&self) -> String {
        format!("{}:lease", self.tag)
    }

    /// The epoch counter (never expires).
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.tag)
    }

    /// The keys of a lease of the whole cluster, `name` (`ingest`): tagged `{name}`.
    pub fn named(prefix: &str, name: &str) -> PartitionKeys {
        PartitionKeys {
            tag: format!("{prefix}:{{{name}}}"),
        }
    }

    /// A key of the partition's state, `name` (a snapshot, an outbox…).
    pub fn state(&self, name: &str) -> String {
        format!("{}:{name}", self.tag)
    }
}

/// Why a fenced write was refused.
#[derive(Debug)]
pub enum WriteError {
    /// The writer's epoch is not the partition's: another instance took it over.
    Stale(String),
    /// Redis could not be reached or answered otherwise.
    Redis(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Stale(m) => write!(f, "refused: {m}"),
            WriteError::Redis(m) => write!(f, "Redis: {m}"),
        }
    }
}

/// Takes or renews the lease of a partition for `instance` for `ttl_ms`: Some(epoch) when held,
/// None when another instance holds it.
pub async fn acquire(
    con: &mut (impl ConnectionLike + Send),
    keys: &PartitionKeys,
    instance: &str,
    ttl_ms: u64,
) -> Result<Option<u64>, String> {
    let e: u64 = ACQUIRE_SCRIPT
        .key(keys.lease())
        .key(keys.epoch())
        .arg(instance)
        .arg(ttl_ms)
        .invoke_async(con)
        .await
        .map_err(|e| e.to_string())?;
    Ok((e > 0).then_some(e))
}

/// Gives the lease up if `instance` holds it at `epoch`; true if it did.
pub async fn release(
    con: &mut (impl ConnectionLike + Send),
    keys: &PartitionKeys,
    instance: &str,
    epoch: u64,
) -> Result<bool, String> {
    let r: u64 = RELEASE_SCRIPT
        .key(keys.lease())
        .arg(instance)
        .arg(epoch)
        .invoke_async(con)
        .await
        .map_err(|e| e.to_string())?;
    Ok(r == 1)
}

/// Writes `value` to the partition's state key `name` if `epoch` is still the partition's.
pub async fn fenced_set(
    con: &mut (impl ConnectionLike + Send),
    keys: &PartitionKeys,
    epoch: u64,
    name: &str,
    value: &[u8],
) -> Result<(), WriteError> {
    let r: Result<u64, redis::RedisError> = FENCED_SET_SCRIPT
        .key(keys.epoch())
        .key(keys.state(name))
        .arg(epoch)
        .arg(value)
        .invoke_async(con)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("STALE") => Err(WriteError::Stale(e.to_string())),
        Err(e) => Err(WriteError::Redis(e.to_string())),
    }
}
