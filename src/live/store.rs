//! Persisted state: one snapshot per shard (see [`crate::engine::persist`]) in a redb file under
//! the state dir. A write is one ACID transaction, so a `kill -9` leaves either the previous
//! checkpoint or the new one, never half of one.
//!
//! [`StateStore`] is the seam for shared state later (Redis, for several instances); redb is the
//! single-instance store.
//!
//! What can go wrong with the file, and what the store does:
//! - **Damaged at start** (truncated, flipped bytes, empty): [`RedbStore::open`] refuses with
//!   [`StoreError::Damaged`], naming the file and how to recover; the engine exits 2 rather than
//!   run on and overwrite what it could not read. redb can panic on some damage: every call into
//!   it is caught, so a damaged file is an error, never a crash.
//! - **A write fails** (disk full, I/O error): redb refuses every later write until the
//!   database is reopened, so the store drops it and reopens it at the next write.
//! - **The file is deleted or replaced while running**: checked before every write (the path's
//!   inode against the open file's); the store opens a new file and bumps its
//!   [`epoch`](StateStore::epoch), so every shard writes its state again.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, TableDefinition};

/// The state file's cache: enough for a checkpoint's pages, not a copy of the file.
const STORE_CACHE_BYTES: usize = 16 << 20;

/// Shard snapshots, by shard number.
const SHARDS: TableDefinition<u32, &[u8]> = TableDefinition::new("shards");
/// A shard's attributes record is kept in `shards` too, under its number with this bit set:
/// written only when some attribute of the shard's devices changed, not with every checkpoint.
/// The same table, because redb 3.1.3 reports a healthy file as repaired after transactions
/// in a row that each write two tables, and a start refuses such a file as damaged.
const ATTRIBUTES_KEY: u32 = 1 << 31;
/// Notifications kept with the state that produced them (a single process's outbox): in `shards`
/// too, under their sequence number with this bit set (and [`ATTRIBUTES_KEY`]'s clear), written
/// in the shard's state transaction and removed once their channel settled them.
const OUTBOX_KEY: u32 = 1 << 30;
/// The sequence part of an outbox key (it wraps after 2^30 notifications).
const OUTBOX_SEQ: u32 = OUTBOX_KEY - 1;
/// Facts about the state dir (`shards`: how many shards wrote it).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Where the engine keeps its state.
pub trait StateStore: Send + Sync {
    /// The last snapshot a shard saved.
    fn load(&self, shard: usize) -> Result<Option<Vec<u8>>, String>;
    /// Replaces a shard's snapshot, and its attributes record when given, in one transaction.
    fn save(&self, shard: usize, data: &[u8], attributes: Option<&[u8]>) -> Result<(), String>;
    /// Saves as [`save`](StateStore::save) does, with the input position the state covers
    /// (in a cluster: the offset in the partition's log its last message had, from which a new
    /// owner replays). A single process keeps no position: the broker's acknowledgements are
    /// its positions.
    ///
    /// `outbox`: the turn's notifications (JSON), when the store [keeps an
    /// outbox](StateStore::keeps_outbox): stored in the same write, delivered from there.
    fn save_at(
        &self,
        shard: usize,
        data: &[u8],
        attributes: Option<&[u8]>,
        position: Option<&str>,
        outbox: &[Vec<u8>],
    ) -> Result<(), String> {
        let _ = (position, outbox);
        self.save(shard, data, attributes)
    }

    /// Whether the notifications of a turn are stored with its state and delivered from there
    /// (a cluster's partition, whose next owner delivers what this one did not confirm; a
    /// single process's state file, which a restart delivers from); else the shard hands them
    /// to the channels itself.
    fn keeps_outbox(&self) -> bool {
        false
    }

    /// A single process's outbox: the notifications kept and not yet settled, in order, but
    /// those in `skip` (handed over already), each with its key.
    fn outbox_pending(
        &self,
        skip: &std::collections::HashSet<u32>,
    ) -> Result<Vec<(u32, Vec<u8>)>, String> {
        let _ = skip;
        Ok(Vec::new())
    }

    /// Removes settled notifications from a single process's outbox.
    fn outbox_settle(&self, keys: &[u32]) -> Result<(), String> {
        let _ = keys;
        Ok(())
    }

    /// Told after each write that kept notifications (a single process's outbox).
    fn outbox_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// How many shards wrote this state, if any did.
    fn shard_count(&self) -> Result<Option<usize>, String>;
    /// Records how many shards write this state.
    fn set_shard_count(&self, n: usize) -> Result<(), String>;
    /// Changes whenever the store had to start a new file (the old one was deleted or
    /// replaced): every shard must then save its state again, even when nothing changed.
    fn epoch(&self) -> u64;
}

/// Why the store cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another process has it open.
    InUse(String),
    /// The file cannot be read as rulechain state.
    Damaged(String),
    /// The directory or file cannot be created, read or written.
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::InUse(s) | StoreError::Damaged(s) | StoreError::Io(s) => f.write_str(s),
        }
    }
}

/// The message for a state file that cannot be read: what, where, and the two ways out.
pub fn damaged(path: &Path, what: &str) -> StoreError {
    let p = path.display();
    StoreError::Damaged(format!(
        "the state file {p} is damaged ({what}). rulechain does not start on it, so that no alarm, \
         hold or attribute is silently lost. To keep the state, restore the file from a backup. \
         To start with empty state, move it aside (`mv {p} {p}.damaged`) or start once with \
         `rulechain run --reset-state`, which does that for you"
    ))
}

/// The redb store: `state.redb` in the state dir.
pub struct RedbStore {
    path: PathBuf,
    open: Mutex<Open>,
    epoch: AtomicU64,
    /// With an outbox: told after each write that kept notifications.
    outbox: Option<Arc<tokio::sync::Notify>>,
    /// The next outbox sequence number.
    next_seq: std::sync::atomic::AtomicU32,
}

struct Open {
    /// `None` after a failed write: redb must be reopened before it writes again.
    db: Option<Database>,
    /// The open file's (device, inode).
    id: (u64, u64),
    /// The shard count, written again into a new file.
    shards: Option<u64>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs `f`, turning a panic inside redb into an error. Panics are silenced while `quiet`
/// (at start, when a damaged file is expected to be reported as an error, not as a panic).
fn guarded<T>(quiet: bool, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let hook = quiet.then(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        prev
    });
    let r = catch_unwind(AssertUnwindSafe(f));
    if let Some(prev) = hook {
        std::panic::set_hook(prev);
    }
    r.unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(format!("the storage library failed: {what}"))
    })
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Opens (or creates) the database file; the file's identity comes with it.
fn open_db(path: &Path, quiet: bool) -> Result<(Database, (u64, u64)), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("cannot open {}: {e}", path.display()));
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    let id = file_id(&file.metadata().map_err(io)?);
    let mut in_use = false;
    let db = guarded(quiet, || {
        // The state is written every checkpoint and read back only at start: a small cache
        // (redb's default is 1 GiB) keeps a shard's memory flat however much state it writes
        // (sliding windows, 1,000 devices at 2 msg/s: +60 MiB in a minute with the default).
        Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create_file(file)
            .map_err(|e| {
                in_use = matches!(e, redb::DatabaseError::DatabaseAlreadyOpen);
                e.to_string()
            })
    })
    .map_err(|e| {
        if in_use {
            StoreError::InUse(format!(
                "{} is in use by another rulechain process: give each instance its own `state_dir`",
                path.display()
            ))
        } else {
            damaged(path, &e)
        }
    })?;
    Ok((db, id))
}

/// Closes a database whose last write may have failed: redb writes on drop, and that can fail
/// (or panic) too; nothing is left to do about it here.
fn close(db: Database, quiet: bool) {
    let _ = guarded(quiet, || {
        drop(db);
        Ok(())
    });
}

fn write_meta(db: &Database, shards: Option<u64>) -> Result<(), String> {
    let txn = db.begin_write().map_err(err)?;
    txn.open_table(SHARDS).map_err(err)?;
    {
        let mut t = txn.open_table(META).map_err(err)?;
        if let Some(n) = shards {
            t.insert("shards", n).map_err(err)?;
        }
    }
    txn.commit().map_err(err)
}

/// Copies the state file aside (`state.redb.checking`) before it is opened; `None` when there
/// is no file yet.
fn keep_a_copy(path: &Path) -> Result<Option<PathBuf>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let copy = path.with_extension("redb.checking");
    std::fs::copy(path, &copy).map_err(|e| {
        StoreError::Io(format!(
            "cannot copy {} before checking it: {e} (is the disk full?)",
            path.display()
        ))
    })?;
    Ok(Some(copy))
}

/// After a refused open: a damaged file goes back exactly as it was before the open touched
/// it; otherwise (in use by another process, an I/O error) the copy is only removed.
fn put_back(path: &Path, copy: Option<&Path>, why: &StoreError) {
    let Some(copy) = copy else { return };
    if matches!(why, StoreError::Damaged(_)) && std::fs::rename(copy, path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(copy);
}

impl RedbStore {
    /// The state file in `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("state.redb")
    }

    /// Opens (or creates) the store in `dir`, and checks the file whole: a damaged file is
    /// refused ([`StoreError::Damaged`]), never half read.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create the state dir {}: {e} (set `state_dir` in the config to a writable directory)",
                dir.display()
            ))
        })?;
        let path = Self::path_in(dir);
        match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => {
                return Err(StoreError::Io(format!(
                    "{} is not a regular file",
                    path.display()
                )))
            }
            Ok(m) if m.len() == 0 => return Err(damaged(&path, "it is empty: 0 bytes")),
            _ => {}
        }
        // Opening repairs a file left by a crash, and the integrity check repairs what it
        // finds, both in place: a file refused as damaged would be left changed, and the
        // operator's copy of what was there lost. So the check runs on the file while a copy
        // of it waits beside it; a refused file is put back as it was.
        let kept = keep_a_copy(&path)?;
        let (mut db, id) = match open_db(&path, true) {
            Ok(o) => o,
            Err(e) => {
                put_back(&path, kept.as_deref(), &e);
                return Err(e);
            }
        };
        let checked = match guarded(true, || db.check_integrity().map_err(err)) {
            Ok(true) => guarded(true, || {
                write_meta(&db, None)?;
                let txn = db.begin_read().map_err(err)?;
                let t = txn.open_table(META).map_err(err)?;
                let n = t.get("shards").map_err(err)?.map(|v| v.value());
                Ok(n)
            })
            .map_err(|e| damaged(&path, &e)),
            Ok(false) => Err(damaged(
                &path,
                "it failed the storage library's integrity check; its structure was repaired, but data may be missing",
            )),
            Err(e) => Err(damaged(&path, &e)),
        };
        let shards = match checked {
            Ok(n) => n,
            Err(e) => {
                close(db, true);
                put_back(&path, kept.as_deref(), &e);
                return Err(e);
            }
        };
        if let Some(copy) = kept {
            let _ = std::fs::remove_file(copy);
        }
        Ok(RedbStore {
            path,
            open: Mutex::new(Open {
                db: Some(db),
                id,
                shards,
            }),
            epoch: AtomicU64::new(0),
            outbox: None,
            next_seq: Default::default(),
        })
    }

    /// Keeps the shards' notifications in the state file, written with the state that produced
    /// them and delivered from there ([`StateStore::outbox_pending`]): a notification is not
    /// lost when the process dies before its channel delivered it.
    pub fn keep_outbox(&mut self) -> Result<(), String> {
        let last = self
            .outbox_pending(&Default::default())?
            .last()
            .map_or(0, |(k, _)| (k & OUTBOX_SEQ) + 1);
        self.next_seq.store(last & OUTBOX_SEQ, Relaxed);
        self.outbox = Some(Arc::default());
        Ok(())
    }

    /// Reads every shard's snapshot once, so a damaged record stops the start instead of a
    /// shard (`decode` is what the engine makes of the bytes).
    pub fn check_all<T>(
        &self,
        shards: usize,
        decode: impl Fn(&[u8], Option<Vec<u8>>) -> Result<T, String>,
    ) -> Result<Vec<Option<T>>, StoreError> {
        (0..shards)
            .map(|i| {
                let bytes = self
                    .read(i as u32, true)
                    .map_err(|e| damaged(&self.path, &format!("shard {i}: {e}")))?;
                let attributes = self
                    .read(i as u32 | ATTRIBUTES_KEY, true)
                    .map_err(|e| damaged(&self.path, &format!("shard {i}'s attributes: {e}")))?;
                bytes
                    .map(|b| decode(&b, attributes))
                    .transpose()
                    .map_err(|e| damaged(&self.path, &format!("shard {i}'s state: {e}")))
            })
            .collect()
    }

    /// A record; `quiet` at start, where damage is reported as an error, not a panic.
    fn read(&self, key: u32, quiet: bool) -> Result<Option<Vec<u8>>, String> {
        let o = self.lock();
        let db = o.db.as_ref().ok_or("the state store is closed")?;
        guarded(quiet, || {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(SHARDS).map_err(err)?;
            Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec()))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open database, reopened after a failed write, or opened anew when the file was
    /// deleted or replaced.
    fn writable<'a>(&self, o: &'a mut Open) -> Result<&'a Database, String> {
        let replaced = match std::fs::metadata(&self.path) {
            Ok(m) => file_id(&m) != o.id,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(_) => false,
        };
        if replaced {
            tracing::error!(
                path = %self.path.display(),
                "the state file was deleted or replaced while rulechain runs; writing every shard's state to a new one"
            );
        }
        if replaced || o.db.is_none() {
            if let Some(db) = o.db.take() {
                close(db, false);
            }
            let (db, id) = open_db(&self.path, false).map_err(|e| e.to_string())?;
            guarded(false, || write_meta(&db, o.shards))?;
            o.id = id;
            o.db = Some(db);
            if replaced {
                self.epoch.fetch_add(1, Relaxed);
            }
        }
        o.db.as_ref()
            .ok_or_else(|| "the state store is closed".to_string())
    }

    /// A shard's state, its attributes record when given, and the turn's notifications, in one
    /// transaction of one table.
    fn write_state(
        &self,
        shard: usize,
        data: &[u8],
        attributes: Option<&[u8]>,
        outbox: &[Vec<u8>],
    ) -> Result<(), String> {
        self.write(|db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(SHARDS).map_err(err)?;
                t.insert(shard as u32, data).map_err(err)?;
                if let Some(a) = attributes {
                    t.insert(shard as u32 | ATTRIBUTES_KEY, a).map_err(err)?;
                }
                for n in outbox {
                    let seq = self.next_seq.fetch_add(1, Relaxed) & OUTBOX_SEQ;
                    t.insert(OUTBOX_KEY | seq, n.as_slice()).map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
    }

    fn write(&self, f: impl FnOnce(&Database) -> Result<(), String>) -> Result<(), String> {
        let mut o = self.lock();
        let r = self
            .writable(&mut o)
            .and_then(|db| guarded(false, || f(db)));
        if r.is_err() {
            // redb refuses every write after an I/O error until it is reopened.
            if let Some(db) = o.db.take() {
                close(db, false);
            }
        }
        r
    }
}

impl StateStore for RedbStore {
    fn load(&self, shard: usize) -> Result<Option<Vec<u8>>, String> {
        self.read(shard as u32, false)
    }

    fn save(&self, shard: usize, data: &[u8], attributes: Option<&[u8]>) -> Result<(), String> {
        self.write_state(shard, data, attributes, &[])
    }

    fn save_at(
        &self,
        shard: usize,
        data: &[u8],
        attributes: Option<&[u8]>,
        _position: Option<&str>,
        outbox: &[Vec<u8>],
    ) -> Result<(), String> {
        let outbox = if self.outbox.is_some() { outbox } else { &[] };
        self.write_state(shard, data, attributes, outbox)?;
        if let Some(n) = self.outbox.as_ref().filter(|_| !outbox.is_empty()) {
            n.notify_one();
        }
        Ok(())
    }

    fn keeps_outbox(&self) -> bool {
        self.outbox.is_some()
    }

    fn outbox_pending(
        &self,
        skip: &std::collections::HashSet<u32>,
    ) -> Result<Vec<(u32, Vec<u8>)>, String> {
        let o = self.lock();
        let db = o.db.as_ref().ok_or("the state store is closed")?;
        guarded(false, || {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(SHARDS).map_err(err)?;
            let mut out = Vec::new();
            for e in t.range(OUTBOX_KEY..ATTRIBUTES_KEY).map_err(err)? {
                let (k, v) = e.map_err(err)?;
                if !skip.contains(&k.value()) {
                    out.push((k.value(), v.value().to_vec()));
                }
            }
            Ok(out)
        })
    }

    fn outbox_settle(&self, keys: &[u32]) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(|db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(SHARDS).map_err(err)?;
                for k in keys {
                    t.remove(*k).map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
    }

    fn outbox_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.outbox.clone()
    }

    fn shard_count(&self) -> Result<Option<usize>, String> {
        Ok(self.lock().shards.map(|n| n as usize))
    }

    fn set_shard_count(&self, n: usize) -> Result<(), String> {
        self.write(|db| write_meta(db, Some(n as u64)))?;
        self.lock().shards = Some(n as u64);
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rulechain-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn snapshots_survive_reopening() {
        let dir = dir("reopen");
        {
            let s = RedbStore::open(&dir).unwrap();
            assert_eq!(s.load(0).unwrap(), None);
            assert_eq!(s.shard_count().unwrap(), None);
            s.save(0, b"zero", None).unwrap();
            s.save(1, b"one", None).unwrap();
            s.save(0, b"zero again", None).unwrap();
            s.set_shard_count(2).unwrap();
            let second = RedbStore::open(&dir);
            assert!(
                matches!(&second, Err(StoreError::InUse(e)) if e.contains("another rulechain")),
                "a second open must fail clearly"
            );
        }
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(s.load(0).unwrap().as_deref(), Some(&b"zero again"[..]));
        assert_eq!(s.load(1).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(s.shard_count().unwrap(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Checkpoints in a row, with and without an attributes record, leave a file that opens
    /// clean (a start refuses one the storage library says it had to repair), and each shard
    /// reads back its latest record of each kind.
    #[test]
    fn attributes_records_are_kept_and_reopen_clean() {
        let dir = dir("attributes");
        type Save<'a> = (usize, &'a [u8], Option<&'a [u8]>);
        let saves: [Save; 6] = [
            (0, b"zero", Some(b"attrs 0")),
            (0, b"zero", Some(b"attrs 0 again")),
            (1, b"one", Some(b"attrs 1")),
            (0, b"zero 2", None),
            (1, b"one 2", Some(b"attrs 1 again")),
            (0, b"zero 3", None),
        ];
        {
            let s = RedbStore::open(&dir).unwrap();
            s.set_shard_count(2).unwrap();
            for (shard, data, attrs) in saves {
                s.save(shard, data, attrs).unwrap();
            }
        }
        let s = RedbStore::open(&dir).unwrap();
        let all = s.check_all(2, |b, a| Ok((b.to_vec(), a))).unwrap();
        assert_eq!(
            all[0].clone().unwrap(),
            (b"zero 3".to_vec(), Some(b"attrs 0 again".to_vec()))
        );
        assert_eq!(
            all[1].clone().unwrap(),
            (b"one 2".to_vec(), Some(b"attrs 1 again".to_vec()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deleted_file_is_noticed_and_written_anew() {
        let dir = dir("deleted");
        let s = RedbStore::open(&dir).unwrap();
        s.set_shard_count(3).unwrap();
        s.save(0, b"before", None).unwrap();
        assert_eq!(s.epoch(), 0);
        std::fs::remove_file(RedbStore::path_in(&dir)).unwrap();
        s.save(1, b"after", None).unwrap();
        assert_eq!(s.epoch(), 1, "the shards are told to save again");
        assert!(RedbStore::path_in(&dir).exists());
        drop(s);
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(s.load(1).unwrap().as_deref(), Some(&b"after"[..]));
        assert_eq!(
            s.load(0).unwrap(),
            None,
            "the old file's records went with it"
        );
        assert_eq!(
            s.shard_count().unwrap(),
            Some(3),
            "the shard count is written again"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_or_truncated_file_is_refused_naming_it() {
        let dir = dir("damaged");
        std::fs::create_dir_all(&dir).unwrap();
        let path = RedbStore::path_in(&dir);
        std::fs::write(&path, b"").unwrap();
        let e = RedbStore::open(&dir).err().unwrap();
        assert!(
            matches!(&e, StoreError::Damaged(t) if t.contains("0 bytes") && t.contains(&*path.to_string_lossy()) && t.contains("--reset-state")),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        {
            let s = RedbStore::open(&dir).unwrap();
            s.save(0, &vec![7u8; 100_000], None).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = File::options().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        let e = RedbStore::open(&dir).err().unwrap();
        assert!(matches!(&e, StoreError::Damaged(_)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
