//! What an operator installs: the systemd unit (checked by `systemd-analyze verify` where the
//! machine has it) and the engine's systemd notifications (readiness, watchdog, stopping),
//! read from a notify socket of the test's own, as systemd would.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{embedded_setup, http};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_unit_verifies() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not on this machine: the unit is not verified here");
        return;
    };
    assert!(v.status.success());
    let dir = common::tempdir("unit");
    // `verify` checks that the program exists: this build's binary stands in for the package's.
    let unit = std::fs::read_to_string(root().join("deploy/systemd/rulechain.service"))
        .unwrap()
        .replace("/usr/bin/rulechain", env!("CARGO_BIN_EXE_rulechain"));
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let path = dir.join("rulechain.service");
    std::fs::write(&path, unit).unwrap();
    // The man page is checked by the package's install, not here.
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && said.trim().is_empty(), "{said}");
}

/// The notifications read from the socket until `until` says enough, or 20 s.
fn read_until(sock: &UnixDatagram, mut until: impl FnMut(&[String]) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
        }
    }
    got
}

#[test]
fn ready_once_subscribed_with_rules_then_the_watchdog_then_stopping() {
    let (dir, _mqtt, http_port) = embedded_setup(
        "sdnotify",
        &[("log.yaml", "chain: log\nnodes:\n  - log: {}\n")],
        "devices: []\n",
    );
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["run", "--config", "rulechain.yaml"])
        .current_dir(&dir)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("engine.log")).unwrap())
        .spawn()
        .unwrap();
    let got = read_until(&sock, |g| g.iter().any(|l| l == "READY=1"));
    assert!(got.iter().any(|l| l == "READY=1"), "{got:?}");
    // Ready means what /readyz means.
    let (code, body) = http(http_port, "GET", "/readyz").unwrap();
    assert_eq!(code, 200, "READY=1 before the engine was ready: {body}");
    // The image's health check, against the running engine.
    let check = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args([
                "healthcheck",
                "--url",
                &format!("http://127.0.0.1:{http_port}{path}"),
            ])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(check("/livez"), Some(0));
    assert_eq!(check("/no-such-page"), Some(1), "a 404 is not healthy");
    // Pings at half the watchdog interval: several within 2 s.
    let t0 = Instant::now();
    let pings = read_until(&sock, |g| {
        g.iter().filter(|l| *l == "WATCHDOG=1").count() >= 3
    });
    assert!(
        pings.iter().filter(|l| *l == "WATCHDOG=1").count() >= 3,
        "{pings:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    common::signal(&child, "TERM");
    let bye = read_until(&sock, |g| g.iter().any(|l| l == "STOPPING=1"));
    assert!(bye.iter().any(|l| l == "STOPPING=1"), "{bye:?}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(dir.join("state").exists(), "the state was saved");
    assert_eq!(check("/livez"), Some(1), "nothing answers once stopped");
    let bad = Command::new(env!("CARGO_BIN_EXE_rulechain"))
        .args(["healthcheck", "--url", "https://127.0.0.1/livez"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a URL it cannot use");
}
