//! Files written so that a crash or a power cut leaves the old content or the new, never a
//! part: the new content goes to a file beside it, is flushed to disk, renamed over the old,
//! and the directory is flushed. Used by the InfluxDB spool and by the small JSON files of the
//! state dir (silences, the alarms' history, the channels' reminders).

use std::io::Write;
use std::path::Path;

/// Reads a JSON file written by [`replace`]: None when there is none yet; an error naming the
/// file and how to start without it (`what` it holds) when it cannot be read or parsed.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<Option<T>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        format!(
            "{} is damaged ({e}): move it aside to start without {what}",
            path.display()
        )
    })
}

/// Replaces `path` with `body()` when `dirty` says something changed since the last save
/// (cleared now; set again if the write fails, so the next save tries again). `what` names
/// the content for the error.
pub fn save_if_changed(
    path: Option<&Path>,
    dirty: &std::sync::atomic::AtomicBool,
    body: impl FnOnce() -> Vec<u8>,
    what: &str,
) -> Result<(), String> {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(path) = path else { return Ok(()) };
    if !dirty.swap(false, Relaxed) {
        return Ok(());
    }
    replace(path, &body()).map_err(|e| {
        dirty.store(true, Relaxed);
        format!("cannot save {what} to {}: {e}", path.display())
    })
}

/// Writes `body` to `tmp`, flushes it, renames it to `path` and flushes the directory.
pub fn write_via(tmp: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Replaces `path` with `body` (through `path.tmp`), creating its directory if need be.
pub fn replace(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    write_via(Path::new(&tmp), path, body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("rc-durable-{}", std::process::id()));
        let f = dir.join("sub").join("x.json");
        super::replace(&f, b"one").unwrap();
        super::replace(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!dir.join("sub").join("x.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
