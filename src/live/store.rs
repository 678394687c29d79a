//! Persisted state: one snapshot per shard (see [`crate::engine::persist`]) in a redb file under
//! the state dir. A write is one ACID transaction, so a `kill -9` leaves either the previous
//! checkpoint or the new one, never half of one.
//!
//! [`StateStore`] is the seam for shared state later (Redis, for several instances); redb is the
//! single-instance store.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

/// Shard snapshots, by shard number.
const SHARDS: TableDefinition<u32, &[u8]> = TableDefinition::new("shards");
/// Facts about the state dir (`shards`: how many shards wrote it).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Where the engine keeps its state.
pub trait StateStore: Send + Sync {
    /// The last snapshot a shard saved.
    fn load(&self, shard: usize) -> Result<Option<Vec<u8>>, String>;
    /// Replaces a shard's snapshot.
    fn save(&self, shard: usize, data: &[u8]) -> Result<(), String>;
    /// How many shards wrote this state, if any did.
    fn shard_count(&self) -> Result<Option<usize>, String>;
    /// Records how many shards write this state.
    fn set_shard_count(&self, n: usize) -> Result<(), String>;
}

/// The redb store: `state.redb` in the state dir.
pub struct RedbStore {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the state dir {}: {e}", dir.display()))?;
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => format!(
                "{} is in use by another rulechain process: give each instance its own `state_dir`",
                path.display()
            ),
            e => format!("cannot open {}: {e}", path.display()),
        })?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(SHARDS).map_err(err)?;
        txn.open_table(META).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(RedbStore { db })
    }
}

impl StateStore for RedbStore {
    fn load(&self, shard: usize) -> Result<Option<Vec<u8>>, String> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(SHARDS).map_err(err)?;
        Ok(t.get(shard as u32)
            .map_err(err)?
            .map(|v| v.value().to_vec()))
    }

    fn save(&self, shard: usize, data: &[u8]) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(SHARDS).map_err(err)?;
            t.insert(shard as u32, data).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    fn shard_count(&self) -> Result<Option<usize>, String> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(META).map_err(err)?;
        Ok(t.get("shards").map_err(err)?.map(|v| v.value() as usize))
    }

    fn set_shard_count(&self, n: usize) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(META).map_err(err)?;
            t.insert("shards", n as u64).map_err(err)?;
        }
        txn.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("rulechain-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = RedbStore::open(&dir).unwrap();
            assert_eq!(s.load(0).unwrap(), None);
            assert_eq!(s.shard_count().unwrap(), None);
            s.save(0, b"zero").unwrap();
            s.save(1, b"one").unwrap();
            s.save(0, b"zero again").unwrap();
            s.set_shard_count(2).unwrap();
            let second = RedbStore::open(&dir);
            assert!(
                second
                    .as_ref()
                    .is_err_and(|e| e.contains("another rulechain")),
                "a second open must fail clearly"
            );
        }
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(s.load(0).unwrap().as_deref(), Some(&b"zero again"[..]));
        assert_eq!(s.load(1).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(s.shard_count().unwrap(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
