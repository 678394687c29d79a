//! `rulechain dry-run --input FILE`: feeds recorded messages through the chains on a virtual
//! clock, with no side effects, and prints what would happen as JSON lines (the contract of
//! RULES.md), ending with a `summary` line.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use crate::diag::Diagnostics;
use crate::engine::effect::{Effect, EffectSink, Summary};
use crate::replay::Replay;
use crate::rules;

/// `dry-run` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON lines to feed (`-` reads stdin; `.gz` is read decompressed).
    #[arg(long)]
    pub input: PathBuf,
    /// The rules directory (default: the config's, else `./rules`).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// The devices file (default: the config's).
    #[arg(long)]
    pub devices: Option<PathBuf>,
    /// The engine config (topic patterns, channels).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also print a `node` event for every node a message reaches.
    #[arg(long)]
    pub trace: bool,
    /// How long timers still run after the last input (default: until none is pending, at most 1 day).
    #[arg(long)]
    pub drain: Option<String>,
}

struct JsonLines<W: Write> {
    w: W,
    trace: bool,
    summary: Summary,
    broken: bool,
}

impl<W: Write> JsonLines<W> {
    fn line(&mut self, v: &impl serde::Serialize) {
        if self.broken {
            return;
        }
        let r = serde_json::to_writer(&mut self.w, v)
            .map_err(std::io::Error::from)
            .and_then(|_| self.w.write_all(b"\n"));
        if r.is_err() {
            // A closed pipe (`| head`) is a normal end: stop writing.
            self.broken = true;
        }
    }
}

impl<W: Write> EffectSink for JsonLines<W> {
    fn emit(&mut self, e: Effect) {
        self.summary.count(&e.event);
        self.line(&e);
    }
    fn wants_trace(&self) -> bool {
        self.trace
    }
}

/// Runs `dry-run`.
pub fn run(a: Args) -> i32 {
    let mut diags = Diagnostics::new();
    let cfg = super::load_config(a.config.as_deref(), &mut diags);
    // The engine's part of the config, typed (its problems are in `diags` already).
    let (mut settings, _) =
        crate::config::settings::resolve_lossy(a.config.as_deref(), cfg.as_ref(), a.rules.clone());
    let rules_dir = settings.rules_dir.clone();
    let devices_path = a.devices.clone().or_else(|| settings.devices.clone());
    let drain = match super::drain_arg(a.drain.as_deref()) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let files = rules::yaml_files(std::slice::from_ref(&rules_dir), &mut diags);
    let ruleset = rules::load_chains(&files, cfg.as_ref(), &mut diags);
    let mut devices = match &devices_path {
        Some(p) => rules::load_devices(p, &mut diags).unwrap_or_default(),
        None => Default::default(),
    };
    // Signing keys leave the attributes, as in `run`.
    rules::take_signing_keys(&mut settings, &mut devices);
    if !diags.is_empty() {
        eprint!("{}", diags.render_text());
    }
    if diags.has_errors() {
        eprintln!("dry-run: the rules have errors; nothing was run");
        return super::exit_for(&diags);
    }
    let input: Box<dyn BufRead> = match super::open_input(&a.input) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_USAGE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = JsonLines {
        w: BufWriter::with_capacity(1 << 16, stdout.lock()),
        trace: a.trace,
        summary: Summary::default(),
        broken: false,
    };
    let mut replay = Replay::new(
        Arc::new(ruleset),
        devices,
        settings.patterns,
        crate::engine::clock::wall_ms(),
    );
    replay.executor_mut().set_limits(settings.state_limits);
    replay.set_payload_limits(settings.payload);
    let verifier = settings
        .signature
        .clone()
        .map(crate::signature::Verifier::new);
    let bad = feed_lines(input, &mut replay, &mut out, verifier);
    replay.drain(drain, &mut out);
    out.summary.messages = replay.messages;
    let s = &out.summary;
    let summary = json!({
        "event": "summary", "messages": s.messages, "alarms": s.alarms, "rpcs": s.rpcs,
        "influx_points": s.influx_points, "websocket": s.websocket, "notifications": s.notifications,
        "publishes": s.publishes, "errors": s.errors, "dropped": s.dropped, "bad_input": bad,
    });
    out.line(&summary);
    let _ = out.w.flush();
    if bad > 0 {
        eprintln!(
            "dry-run: {bad} input line{} could not be read (see the `bad-input` events)",
            if bad == 1 { "" } else { "s" }
        );
        return super::EXIT_FINDINGS;
    }
    super::EXIT_OK
}

/// Feeds every line; returns how many could not be read.
fn feed_lines(
    input: Box<dyn BufRead>,
    replay: &mut Replay,
    out: &mut JsonLines<impl Write>,
    mut verifier: Option<crate::signature::Verifier>,
) -> u64 {
    let mut bad = 0;
    bad += super::each_line(input, |n, line| {
        let m = line.and_then(|l| replay.message_json(l)).and_then(|mut m| {
            if let Some(v) = verifier.as_mut() {
                check_signature(v, &mut m, replay.executor().now())?;
            }
            Ok(m)
        });
        match m {
            Ok(m) => replay.feed(m, out),
            Err(e) => {
                bad += 1;
                let ts = replay.executor().now();
                out.summary.dropped += 1;
                out.line(&json!({"event": "dropped", "ts": ts.max(0), "reason": crate::engine::effect::DropReason::BadInput, "line": n, "detail": e}));
            }
        }
    });
    bad
}

/// Checks a signed message as `run` does (`ingest.signature`), at the later of the replay's
/// clock and the message's time (the clock it will be processed at); the signature field is
/// taken out of a message that passes. A status message is not signed (see `run`).
fn check_signature(
    v: &mut crate::signature::Verifier,
    m: &mut crate::message::Message,
    clock: i64,
) -> Result<(), String> {
    if m.kind == crate::message::Kind::Status {
        return Ok(());
    }
    let json = serde_json::to_value(rhai::Dynamic::from_map(m.payload.clone()))
        .map_err(|e| e.to_string())?;
    let serde_json::Value::Object(map) = json else {
        return Err("the payload is rejected (bad_signature), as `run` would reject it".into());
    };
    v.check_map(&m.device, map, clock.max(m.ts))
        .map_err(|why| {
            format!(
                "the payload is rejected (bad_signature: {}), as `run` would reject it",
                why.as_str()
            )
        })?;
    m.payload.remove(v.settings().field.as_str());
    Ok(())
}
