//! The commands. Each is one function returning the process exit code: 0 ok, 1 findings
//! (invalid rules, failed tests, unreadable input lines), 2 usage or I/O errors.

pub mod diff;
pub mod dry_run;
pub mod new;
pub mod notify_test;
pub mod run;
pub mod schema;
pub mod silence;
pub mod test;
pub mod validate;

use std::path::Path;

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

/// The config given with `--config`, loaded and checked (problems into `diags`).
pub fn load_config(path: Option<&Path>, diags: &mut Diagnostics) -> Option<Config> {
    crate::rules::load_config(path?, diags)
}

pub use crate::engine::clock::wall_ms;

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
