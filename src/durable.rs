//! Files written so that a crash or a power cut leaves the old content or the new, never a
//! part: the new content goes to a file beside it, is flushed to disk, renamed over the old,
//! and the directory is flushed. Used by the InfluxDB spool and by the small JSON files of the
//! state dir (silences, the alarms' history, the channels' reminders).

use std::io::Write;
use std::path::Path;

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
