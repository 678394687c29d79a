//! A partition's state in Redis: its executor's snapshot, its devices' attributes and the log
//! offset the snapshot covers, in one hash (`{p<N>}:state`), written only through a Lua script
//! that refuses a stale epoch; the same script appends the turn's notifications to the
//! partition's outbox stream (`{p<N>}:outbox`), so a notification is stored exactly when the
//! state that produced it is. The partition's executor writes it from its own thread, in line
//! (an alarm transition leaves only once this write is acknowledged), so the connection is a
//! blocking one, its own.

use std::sync::Mutex;
use std::time::Duration;

use redis::{Client, Script};

use super::lease::PartitionKeys;
use crate::live::store::StateStore;

/// Writes the state, and appends the turn's notifications to the partition's outbox, if the
/// writer's epoch is the partition's. KEYS: epoch, state, outbox. ARGV: epoch, snapshot,
/// offset (empty: unchanged), attributes (empty: unchanged), then one notification (JSON) per
/// argument.
const SAVE: &str = r"
local e = tonumber(redis.call('GET', KEYS[1]) or '0')
if e ~= tonumber(ARGV[1]) then
  return redis.error_reply('STALE epoch ' .. ARGV[1] .. ', the partition is at ' .. e)
end
redis.call('HSET', KEYS[2], 's', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'o', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'a', ARGV[4]) end
for i = 5, #ARGV do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'n', ARGV[i])
end
return 1
";

static SAVE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(SAVE));

/// How long one state write may take before it counts as failed (the shard then holds its
/// output and retries).
const TIMEOUT: Duration = Duration::from_secs(2);

/// One partition's state, as its owner at `epoch` writes it.
pub struct PartitionStore {
    keys: PartitionKeys,
    epoch: u64,
    client: Client,
    con: Mutex<Option<redis::Connection>>,
}

impl PartitionStore {
    /// The store of partition `p` for its owner at `epoch`.
    pub fn new(client: Client, prefix: &str, p: u32, epoch: u64) -> PartitionStore {
        PartitionStore {
            keys: PartitionKeys::new(prefix, p),
            epoch,
            client,
            con: Mutex::new(None),
        }
    }
}

impl StateStore for PartitionStore {
    fn load(&self, _shard: usize) -> Result<Option<Vec<u8>>, String> {
        // Read by the owner before the executor starts (see `partitions.rs`).
        Ok(None)
    }

    fn save(&self, shard: usize, data: &[u8], attributes: Option<&[u8]>) -> Result<(), String> {
        self.save_at(shard, data, attributes, None, &[])
    }

    fn keeps_outbox(&self) -> bool {
        true
    }

    fn save_at(
        &self,
        _shard: usize,
        data: &[u8],
        attributes: Option<&[u8]>,
        position: Option<&str>,
        outbox: &[Vec<u8>],
    ) -> Result<(), String> {
        let mut con = self.con.lock().unwrap_or_else(|e| e.into_inner());
        if con.is_none() {
            *con = Some(super::redis_conn::connect_blocking(&self.client, TIMEOUT)?);
        }
        let Some(c) = con.as_mut() else {
            return Err("no connection".into());
        };
        let mut call = SAVE_SCRIPT.key(self.keys.epoch());
        call.key(self.keys.state("state"))
            .key(self.keys.state("outbox"))
            .arg(self.epoch)
            .arg(data)
            .arg(position.unwrap_or(""))
            .arg(attributes.unwrap_or(b""));
        for n in outbox {
            call.arg(n.as_slice());
        }
        let r: Result<u64, redis::RedisError> = call.invoke(c);
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("STALE") => Err(format!(
                "another instance owns the partition now (its writes are refused: {e})"
            )),
            Err(e) => {
                // A fresh connection next time (Redis restarted, the network dropped).
                *con = None;
                Err(format!("Redis: {e}"))
            }
        }
    }

    fn shard_count(&self) -> Result<Option<usize>, String> {
        Ok(None)
    }

    fn set_shard_count(&self, _n: usize) -> Result<(), String> {
        Ok(())
    }

    fn epoch(&self) -> u64 {
        0
    }
}
