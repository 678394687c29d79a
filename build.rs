//! Stamps the build with its git commit and date for `rulechain --version`. Runs again only
//! when the checked-out commit changes (not on every build), so the date is the build's of that
//! commit. Outside a git checkout (a source tarball) the commit reads `unknown`.

use std::process::Command;

// The crate's own civil-date function (a file with no imports), as `rulechain::civil`.
#[path = "src/civil.rs"]
mod civil;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    // A build without git (the container's build stage) is told the commit.
    let commit = std::env::var("RULECHAIN_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=10", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rerun-if-env-changed=RULECHAIN_COMMIT");
    // SOURCE_DATE_EPOCH (reproducible builds) wins over the clock.
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    println!("cargo:rustc-env=RULECHAIN_COMMIT={commit}");
    println!("cargo:rustc-env=RULECHAIN_BUILD_DATE={}", date(secs));
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/civil.rs");
    // Where git keeps them (a worktree's HEAD is its own, its branches the repository's).
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for w in watch {
        if let Some(p) =
            git(&["rev-parse", "--git-path", &w]).filter(|p| std::path::Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

/// `YYYY-MM-DD` of a Unix time (UTC).
fn date(secs: i64) -> String {
    let (y, m, d) = civil::from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}
