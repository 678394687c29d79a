//! The commands. Each is one function returning the process exit code: 0 ok, 1 findings
//! (invalid rules, failed tests, unreadable input lines), 2 usage or I/O errors.

pub mod diff;
pub mod dry_run;
pub mod healthcheck;
pub mod new;
pub mod notify_test;
pub mod run;
pub mod schema;
pub mod silence;
pub mod test;
pub mod validate;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::diag::Diagnostics;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: findings (invalid rules, failed tests, bad input lines).
pub const EXIT_FINDINGS: i32 = 1;
/// Exit code: usage or I/O error.
pub const EXIT_USAGE: i32 = 2;

/// The exit code for problems `diags` found: 2 when a file could not be read at all, else 1.
pub fn exit_for(diags: &Diagnostics) -> i32 {
    if diags.unreadable() {
        EXIT_USAGE
    } else {
        EXIT_FINDINGS
    }
}

/// The config a command uses: the one given, else `$RULECHAIN_CONFIG` (used even if missing,
/// so a wrong path is reported, not ignored), else `./rulechain.yaml`, else the package's
/// `/etc/rulechain/rulechain.yaml`, when the file exists. An implicit one is named on stderr.
pub fn config_or_default(given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    if let Some(p) = std::env::var_os("RULECHAIN_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let found = ["rulechain.yaml", "/etc/rulechain/rulechain.yaml"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())?;
    eprintln!("using the config {} (no --config given)", found.display());
    Some(found)
}

/// The config given with `--config`, loaded and checked (problems into `diags`).
pub fn load_config(path: Option<&Path>, diags: &mut Diagnostics) -> Option<Config> {
    crate::rules::load_config(path?, diags)
}

/// A runtime for a command that talks to a service once (`notify-test`, `silence`), with the
/// TLS provider installed; an exit code when it cannot start.
pub fn client_runtime() -> Result<tokio::runtime::Runtime, i32> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            EXIT_USAGE
        })
}

/// A recording to read: `-` for stdin, a `.gz` file decompressed as it is read (a day of a
/// fleet is committed compressed), else the file.
pub fn open_input(path: &std::path::Path) -> Result<Box<dyn std::io::BufRead>, String> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if path.extension().is_some_and(|x| x == "gz") {
        return Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(f),
        )));
    }
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 16, f)))
}

/// Longest input line `dry-run` and `diff` read; a longer one is reported (memory stays
/// bounded).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Reads input lines for a replay: calls `f` with each non-blank line's number (1-based) and its
/// text, or why it cannot be read (longer than [`MAX_LINE_BYTES`]: the rest of it is skipped).
/// Gives 1 when reading failed part way (reported), else 0.
pub fn each_line(
    mut input: Box<dyn std::io::BufRead>,
    mut f: impl FnMut(u64, Result<&str, String>),
) -> u64 {
    use std::io::{BufRead, Read};
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        match (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: reading the input: {e}");
                return 1;
            }
        }
        n += 1;
        if buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n") {
            let mut sink = Vec::new();
            let _ = (&mut input).take(u64::MAX).read_until(b'\n', &mut sink);
            f(
                n,
                Err(format!("the line is longer than {MAX_LINE_BYTES} bytes")),
            );
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim();
        if !line.is_empty() {
            f(n, Ok(line));
        }
    }
}

/// `--drain` as given: a duration, or none; an exit code (the error printed) when it is not one.
pub fn drain_arg(given: Option<&str>) -> Result<Option<i64>, i32> {
    match given.map(crate::duration::parse) {
        Some(Err(e)) => {
            eprintln!("error: --drain: {e}");
            Err(EXIT_USAGE)
        }
        Some(Ok(d)) => Ok(Some(d)),
        None => Ok(None),
    }
}
