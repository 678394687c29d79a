//! Batches on disk (`{state_dir}/influx-spool`): what did not fit the memory buffer, or what a
//! shutdown could not send, sent first when the server is back.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use super::encoding::Batch;
use super::InfluxStats;

/// Batches on disk, oldest first: `{seq:016}-{points}.lp[.gz]`.
pub(super) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    files: VecDeque<(PathBuf, usize, u64)>,
    bytes: u64,
    next_seq: u64,
    /// The oldest file is in flight (not offered twice).
    taken: bool,
}

impl Spool {
    pub(super) fn open(dir: &Path, max_bytes: u64, stats: &InfluxStats) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the spool {}: {e}", dir.display()))?;
        let mut files = Vec::new();
        let rd = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read the spool {}: {e}", dir.display()))?;
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let stem = name.split('.').next().unwrap_or("");
            let Some((seq, points)) = stem.split_once('-') else {
                continue;
            };
            let (Ok(seq), Ok(points)) = (seq.parse::<u64>(), points.parse::<usize>()) else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            files.push((seq, path, points, size));
        }
        files.sort_by_key(|f| f.0);
        let next_seq = files.last().map_or(0, |f| f.0 + 1);
        let bytes = files.iter().map(|f| f.3).sum();
        let points: usize = files.iter().map(|f| f.2).sum();
        stats.in_spool.store(points as u64, Relaxed);
        if points > 0 {
            tracing::info!(
                points,
                files = files.len(),
                "InfluxDB spool holds points from before; sending them first"
            );
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            files: files.into_iter().map(|f| (f.1, f.2, f.3)).collect(),
            bytes,
            next_seq,
            taken: false,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub(super) fn push(
        &mut self,
        body: &[u8],
        gzip: bool,
        points: usize,
        stats: &InfluxStats,
    ) -> bool {
        let name = format!(
            "{:016}-{points}.lp{}",
            self.next_seq,
            if gzip { ".gz" } else { "" }
        );
        let path = self.dir.join(name);
        let tmp = path.with_extension("tmp");
        let written = crate::durable::write_via(&tmp, &path, body);
        if let Err(e) = written {
            tracing::error!("cannot write the InfluxDB spool {}: {e}", path.display());
            return false;
        }
        self.next_seq += 1;
        let size = body.len() as u64;
        self.files.push_back((path, points, size));
        self.bytes += size;
        stats.spooled.fetch_add(points as u64, Relaxed);
        stats.in_spool.fetch_add(points as u64, Relaxed);
        // Over the limit: the oldest batches go (not the one in flight).
        while self.bytes > self.max_bytes && self.files.len() > usize::from(self.taken) + 1 {
            let idx = usize::from(self.taken);
            if let Some((p, n, s)) = self.files.remove(idx) {
                let _ = std::fs::remove_file(&p);
                self.bytes -= s;
                stats.in_spool.fetch_sub(n as u64, Relaxed);
                stats.dropped.fetch_add(n as u64, Relaxed);
            }
        }
        true
    }

    pub(super) fn oldest(&mut self) -> Option<Batch> {
        if self.taken {
            return None;
        }
        let (path, points, _) = self.files.front()?.clone();
        match std::fs::read(&path) {
            Ok(body) => {
                self.taken = true;
                Some(Batch {
                    body: body.into(),
                    gzip: path.extension().is_some_and(|e| e == "gz"),
                    points,
                    file: Some(path),
                    first: None,
                })
            }
            Err(e) => {
                tracing::error!(
                    "cannot read the InfluxDB spool file {}: {e}; skipping it",
                    path.display()
                );
                self.files.pop_front();
                None
            }
        }
    }

    pub(super) fn remove(&mut self, path: &Path, points: usize, stats: &InfluxStats) {
        if let Some(i) = self.files.iter().position(|f| f.0 == path) {
            if let Some((p, _, s)) = self.files.remove(i) {
                let _ = std::fs::remove_file(&p);
                self.bytes -= s;
                stats.in_spool.fetch_sub(points as u64, Relaxed);
            }
        }
        self.taken = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_keeps_batches_across_reopen_and_caps_its_size() {
        let dir = std::env::temp_dir().join(format!("rc-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let stats = InfluxStats::default();
        let mut sp = Spool::open(&dir, 100, &stats).unwrap();
        assert!(sp.push(&[b'a'; 40], false, 4, &stats));
        assert!(sp.push(&[b'b'; 40], true, 5, &stats));
        assert_eq!(stats.in_spool.load(Relaxed), 9);
        // A third batch passes the 100-byte cap: the oldest goes, counted as dropped.
        assert!(sp.push(&[b'c'; 40], false, 6, &stats));
        assert_eq!(stats.dropped.load(Relaxed), 4);
        assert_eq!(stats.in_spool.load(Relaxed), 11);
        drop(sp);
        let stats = InfluxStats::default();
        let mut sp = Spool::open(&dir, 100, &stats).unwrap();
        assert_eq!(stats.in_spool.load(Relaxed), 11);
        let b = sp.oldest().unwrap();
        assert_eq!((b.points, b.gzip, &b.body[..2]), (5, true, &b"bb"[..]));
        assert!(
            sp.oldest().is_none(),
            "the batch in flight is not offered twice"
        );
        let f = b.file.clone().unwrap();
        sp.remove(&f, b.points, &stats);
        let b = sp.oldest().unwrap();
        assert_eq!(b.points, 6);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
