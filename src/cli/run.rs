//! `rulechain run`, `simulate` and `record`: the commands that talk to a live broker.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::clients::{record, sim};
use crate::config::settings::{self, MqttConn, Settings};
use crate::diag::Diagnostics;
use crate::live;

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Sets up logging: `RUST_LOG` if set, else info (the MQTT client library's chatter at warn).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.fmt_fields(OneLineFields).try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// The text log's fields, each event on one line: a control character in a value (a newline in
/// an alarm message, a device id or a topic, all from outside) is written escaped (`\n`), so a
/// value can never forge a log line of its own. (The JSON format escapes them already.)
struct OneLineFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for OneLineFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut text = String::new();
        tracing_subscriber::fmt::format::DefaultFields::new().format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut text),
            fields,
        )?;
        for c in text.chars() {
            if c.is_control() {
                write!(writer, "{}", c.escape_default())?;
            } else {
                writer.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The log filter: `RUST_LOG`, or `info` and the MQTT client library at `warn`. The embedded
/// broker (rumqttd) stays off unless named: it opens a span for every packet, its topic
/// formatted, at error level, so any filter that lets errors through formatted each message
/// twice (a third of the broker's router thread under load).
fn log_filter(rust_log: Option<&str>) -> String {
    let mut spec = match rust_log.map(str::trim) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "info,rumqttc=warn".to_string(),
    };
    if !spec.contains("rumqttd") {
        spec.push_str(",rumqttd=off");
    }
    spec
}

fn settings(config: Option<&Path>, rules: Option<PathBuf>) -> Result<Settings, i32> {
    let mut diags = Diagnostics::new();
    let cfg = super::load_config(config, &mut diags);
    if !diags.is_empty() {
        eprint!("{}", diags.render_text());
    }
    if diags.has_errors() || (config.is_some() && cfg.is_none()) {
        eprintln!("error: the config has errors; nothing was started");
        return Err(super::exit_for(&diags));
    }
    // The config was checked by the same function; this gives its typed values.
    settings::resolve(config, cfg.as_ref(), rules).map_err(|problems| {
        let file = config.map_or_else(String::new, |c| format!("{}:", c.display()));
        for p in problems {
            eprintln!("error: {file}{p}");
        }
        super::EXIT_FINDINGS
    })
}

/// `run --mqtt-listen`, `--http-listen`: the listen addresses over the config's, so the demo
/// moves off taken ports without a config (whose channels the demo's rules would then need).
#[derive(Debug, Clone, Copy, Default)]
pub struct Listen {
    /// The embedded broker's address.
    pub mqtt: Option<std::net::SocketAddr>,
    /// The HTTP listener's address.
    pub http: Option<std::net::SocketAddr>,
}

/// `run`.
pub fn run(
    config: Option<PathBuf>,
    rules: Option<PathBuf>,
    listen: Listen,
    opts: live::RunOptions,
    log: LogFormat,
) -> i32 {
    init_logging(log);
    let mut s = match settings(config.as_deref(), rules) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(addr) = listen.mqtt {
        match s.broker {
            settings::Broker::Embedded(_) => s.broker = settings::Broker::Embedded(addr),
            settings::Broker::External(_) => {
                eprintln!("error: --mqtt-listen moves the embedded broker, but the config names an external one (`mqtt:`)");
                return super::EXIT_USAGE;
            }
        }
    }
    if let Some(addr) = listen.http {
        s.http = Some(addr);
    }
    live::run(s, opts)
}

/// The broker a client command talks to: `--broker`, else the config's, else the embedded
/// default's address.
fn client_conn(config: Option<&Path>, broker: Option<String>) -> Result<(Settings, MqttConn), i32> {
    let s = settings(config, None)?;
    let mut conn = s.mqtt();
    if let Some(url) = broker {
        let (host, port, tls) = crate::config::check::mqtt_url(&url).map_err(|e| {
            eprintln!("error: --broker: {e}");
            super::EXIT_USAGE
        })?;
        if tls {
            eprintln!("error: --broker: TLS brokers are set in the config (`mqtt.tls`)");
            return Err(super::EXIT_USAGE);
        }
        conn.host = host;
        conn.port = port;
        conn.tls = None;
    }
    Ok((s, conn))
}

fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            super::EXIT_USAGE
        })
}

/// A stop signal that turns true on Ctrl-C / SIGTERM.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}

/// `simulate` options.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// The engine config (its broker).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The broker, e.g. `mqtt://127.0.0.1:1883` (default: the config's, else 127.0.0.1:1883).
    #[arg(long)]
    pub broker: Option<String>,
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Telemetry messages a second, over all devices.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Stop after this many telemetry messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// QoS of telemetry (0 or 1).
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// The `site` topic level.
    #[arg(long, default_value = "a")]
    pub site: String,
    /// The scripted demo instead of random episodes.
    #[arg(long)]
    pub demo: bool,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write a recording instead of publishing: the fleet's traffic on a virtual clock, as
    /// `record` writes it (`.gz`: compressed). No broker is needed.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// With `--output`: how much time the recording covers.
    #[arg(long, default_value = "1d", requires = "output")]
    pub duration: String,
    /// With `--output`: when it starts, in ms since the epoch (default 2026-01-05T00:00:00Z,
    /// so the same seed writes the same file).
    #[arg(long, default_value_t = 1_767_571_200_000, requires = "output")]
    pub start: i64,
}

/// `simulate`.
pub fn simulate(a: SimArgs) -> i32 {
    init_logging(LogFormat::Text);
    if !(a.rate.is_finite() && a.rate > 0.0) || a.devices == 0 || a.qos > 1 {
        eprintln!("error: --rate must be positive, --devices at least 1, --qos 0 or 1");
        return super::EXIT_USAGE;
    }
    if let Some(path) = &a.output {
        return simulate_to_file(&a, path);
    }
    let (_, conn) = match client_conn(a.config.as_deref(), a.broker) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = sim::SimOptions {
        devices: a.devices,
        rate: a.rate,
        site: a.site,
        demo: a.demo,
        count: a.count,
        qos: a.qos,
        seed: a.seed,
        connect_within: Some(std::time::Duration::from_secs(10)),
    };
    match rt.block_on(async move { sim::run(conn, opts, stop_on_signal()).await }) {
        Ok(_) => super::EXIT_OK,
        Err(e) => {
            eprintln!("error: {e} (is the broker running? `--broker mqtt://HOST:PORT`)");
            super::EXIT_USAGE
        }
    }
}

/// `simulate --output`: a recording on a virtual clock.
fn simulate_to_file(a: &SimArgs, path: &std::path::Path) -> i32 {
    let duration = match crate::duration::parse(&a.duration) {
        Ok(d) if d > 0 => d,
        Ok(_) => {
            eprintln!("error: --duration must be longer than 0");
            return super::EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("error: --duration {}: {e}", a.duration);
            return super::EXIT_USAGE;
        }
    };
    let opts = sim::SimOptions {
        devices: a.devices,
        rate: a.rate,
        site: a.site.clone(),
        demo: a.demo,
        count: None,
        qos: a.qos,
        seed: a.seed,
        connect_within: None,
    };
    let file = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            return super::EXIT_USAGE;
        }
    };
    let buffered = std::io::BufWriter::with_capacity(1 << 16, file);
    let written = if path.extension().is_some_and(|x| x == "gz") {
        let mut gz = flate2::write::GzEncoder::new(buffered, flate2::Compression::best());
        sim::record(&opts, a.start, duration, &mut gz).and_then(|n| gz.finish().map(|_| n))
    } else {
        let mut w = buffered;
        sim::record(&opts, a.start, duration, &mut w)
    };
    match written {
        Ok(n) => {
            eprintln!(
                "simulate: wrote {n} lines: {} pumps, {} messages/s, {} from {} (seed {}) to {}",
                a.devices,
                a.rate,
                a.duration,
                a.start,
                a.seed,
                path.display()
            );
            super::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            super::EXIT_USAGE
        }
    }
}

/// `record`.
pub fn record(
    config: Option<PathBuf>,
    broker: Option<String>,
    output: PathBuf,
    count: Option<u64>,
) -> i32 {
    let (s, conn) = match client_conn(config.as_deref(), broker) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut out: Box<dyn std::io::Write> = if output.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        match std::fs::File::create(&output) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("error: cannot create {}: {e}", output.display());
                return super::EXIT_USAGE;
            }
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let r = rt.block_on(async move {
        record::run(conn, s.patterns, &mut out, count, stop_on_signal()).await
    });
    match r {
        Ok(r) => {
            eprintln!(
                "record: {} line{} written to {}, {} skipped",
                r.written,
                if r.written == 1 { "" } else { "s" },
                output.display(),
                r.skipped
            );
            super::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            super::EXIT_USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    /// Whether error-level spans are recorded under `RUST_LOG=rust_log`: rumqttd's (as its
    /// router opens one per packet), rulechain's.
    fn error_spans_on(rust_log: Option<&str>) -> (bool, bool) {
        let filter = tracing_subscriber::EnvFilter::try_new(log_filter(rust_log)).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            (
                !tracing::error_span!(target: "rumqttd::router::routing", "publish").is_disabled(),
                !tracing::error_span!(target: "rulechain::live", "x").is_disabled(),
            )
        })
    }

    #[test]
    fn the_embedded_broker_logs_only_when_named() {
        for rust_log in [
            None,
            Some(""),
            Some("warn"),
            Some("debug"),
            Some("rulechain=trace"),
        ] {
            assert!(!error_spans_on(rust_log).0, "{rust_log:?}");
        }
        assert!(error_spans_on(Some("warn")).1);
        assert!(error_spans_on(None).1);
        assert!(error_spans_on(Some("warn,rumqttd=error")).0);
        assert_eq!(log_filter(None), "info,rumqttc=warn,rumqttd=off");
        assert_eq!(log_filter(Some(" debug ")), "debug,rumqttd=off");
    }
}
