//! Real parts for the live tests: a Mosquitto broker of the test's own (started from the
//! Debian package that `scripts/test.sh` installs, on a free loopback port, stopped by pid), the
//! real `rulechain` binary, an MQTT client, and a minimal HTTP GET/POST.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A free loopback port (bound, then released), never one this test process handed out before:
/// the kernel may give a just-released port again, and two of a test's ports (its broker's and
/// its API's) were once the same.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A fresh directory for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rulechain-live-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 10 s");
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed: run scripts/test.sh, which installs it (apt-get install mosquitto)");
}

/// A Mosquitto of the test's own, with persistence (sessions and queued QoS 1 messages
/// survive its restart).
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    proc: Proc,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_with(dir, "")
    }

    /// With a second, TLS listener on `tls_port` (the server certificate of `certs`).
    pub fn start_tls(dir: &Path, certs: &Certs) -> (Mosquitto, u16) {
        let tls_port = free_port();
        let m = Self::start_with(
            dir,
            &format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                certs.ca.display(),
                certs.cert.display(),
                certs.key.display()
            ),
        );
        wait_port(tls_port, "mosquitto (TLS)");
        (m, tls_port)
    }

    fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // Started as root, mosquitto drops to its own user: its data dir must be writable.
        let data = dir.join("mosquitto-data");
        std::fs::create_dir_all(&data).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                 listener {port} 127.0.0.1\n{extra}",
                data.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            port,
            dir: dir.to_path_buf(),
            proc: Proc::default(),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        self.proc = Proc::spawn(
            Command::new(mosquitto_bin())
                .arg("-c")
                .arg(self.dir.join("mosquitto.conf")),
            &self.dir.join("mosquitto.log"),
            "mosquitto",
        );
        wait_port(self.port, "mosquitto");
    }

    /// Stops it with SIGTERM (it saves its sessions) and waits.
    pub fn stop(&mut self) {
        self.proc.terminate();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

pub fn signal(c: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(c.id().to_string())
        .status();
}

/// A process a test started: its stderr appended to a log file, stopped by pid, killed when
/// dropped (a failing test leaves nothing running).
#[derive(Default)]
pub struct Proc(Option<Child>);

impl Proc {
    /// Starts `cmd` with stdout discarded and stderr appended to `log`; `what` names it in a
    /// failure.
    pub fn spawn(cmd: &mut Command, log: &Path, what: &str) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc(Some(child))
    }

    /// Sends a signal (`HUP`, `TERM`, …) if it runs.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.0 {
            signal(c, sig);
        }
    }

    /// SIGTERM (a graceful stop), and the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.0.take()?;
        signal(&c, "TERM");
        c.wait().ok()
    }

    /// SIGKILL: no shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut()?.try_wait().ok()?
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real `rulechain` binary, running `run` in a directory.
pub struct Engine {
    pub dir: PathBuf,
    pub http: u16,
    proc: Proc,
    args: Vec<String>,
}

impl Engine {
    /// Starts `rulechain run --config rulechain.yaml` in `dir` and waits until it is connected.
    pub fn start(dir: &Path, http: u16) -> Engine {
        let mut e = Self::launch(dir, http);
        e.wait_healthy();
        e
    }

    /// Starts it without waiting for `/healthz` (the test watches readiness itself).
    pub fn launch(dir: &Path, http: u16) -> Engine {
        let mut e = Engine {
            dir: dir.to_path_buf(),
            http,
            proc: Proc::default(),
            args: vec!["run".into(), "--config".into(), "rulechain.yaml".into()],
        };
        e.spawn_process();
        e
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_healthy();
    }

    fn spawn_process(&mut self) {
        self.proc = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_rulechain"))
                .args(&self.args)
                .current_dir(&self.dir)
                .env("RUST_LOG", "info"),
            &self.dir.join("engine.log"),
            "rulechain",
        );
    }

    fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = http(self.http, "GET", "/healthz") {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!("rulechain exited ({status}) at start:\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "rulechain did not become healthy within 15 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("engine.log")).unwrap_or_default()
    }

    /// `kill -9`: no shutdown, no last checkpoint.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the running engine.
    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.terminate()
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    /// The CPU time (user and system) the engine's process has used so far.
    #[allow(dead_code)] // not every test binary asks
    pub fn cpu_time(&self) -> Duration {
        let pid = self.proc.pid().expect("the engine runs");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The fields after the command name (in parentheses, which may hold spaces): utime and
        // stime are the 14th and 15th fields of the line, in clock ticks.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// `/api/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http(self.http, "GET", "/api/status").expect("status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// An HTTP/1.1 request on loopback with the headers given (`Host` among them, or
/// `127.0.0.1`) and a body: (status, body).
#[allow(dead_code)] // not every test binary asks
pub fn http_as(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(head.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// A minimal HTTP/1.1 request on loopback: (status, body).
pub fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// An HTTP/1.0 GET (the answer is never chunked): (status, body).
pub fn http10(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// An MQTT test client that collects what its subscriptions receive.
pub struct Mqtt {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl Mqtt {
    /// Connects and subscribes (again on every reconnect); returns once subscribed.
    pub async fn connect(port: u16, id: &str, clean: bool, subs: &[&str]) -> Mqtt {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(clean);
        o.set_inflight(100);
        let (client, mut events) = AsyncClient::new(o, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
        let subs: Vec<String> = subs.iter().map(|s| s.to_string()).collect();
        let c = client.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if subs.is_empty() {
                            let _ = ready_tx.try_send(());
                        }
                        for s in &subs {
                            let _ = c.try_subscribe(s.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("the test client could not connect and subscribe");
        Mqtt { client, rx }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// The next message whose topic and JSON payload satisfy `pred`, within `within`.
    pub async fn expect(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&str, &serde_json::Value) -> bool,
    ) -> Option<(String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (t, p) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
            if pred(&t, &v) {
                return Some((t, v));
            }
        }
    }

    /// Everything received within `within`.
    pub async fn drain(&mut self, within: Duration) -> Vec<(String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(Some((t, p))) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push((t, serde_json::from_slice(&p).unwrap_or_default()));
        }
        out
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        // Ends the polling task (it holds a client, so the channel alone never closes); a
        // leftover task would reconnect with the same client id and push the next one out.
        let _ = self.client.try_disconnect();
    }
}

/// A test's directory and an engine config on the embedded broker (these chains and
/// devices), with free MQTT and HTTP ports: (dir, mqtt port, http port).
#[allow(dead_code)] // not every test binary asks
pub fn embedded_setup(
    name: &str,
    chains: &[(&str, &str)],
    devices: &str,
) -> (std::path::PathBuf, u16, u16) {
    let dir = tempdir(name);
    let (mqtt, http_port) = (free_port(), free_port());
    engine_dir(
        &dir,
        &format!("embedded_broker: {{listen: 127.0.0.1:{mqtt}}}"),
        http_port,
        chains,
        devices,
    );
    (dir, mqtt, http_port)
}

/// Writes the files of an engine directory: config, devices, one chain file per entry.
pub fn engine_dir(dir: &Path, mqtt: &str, http: u16, chains: &[(&str, &str)], devices: &str) {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "{mqtt}\nhttp: {{listen: 127.0.0.1:{http}}}\nstate_dir: state\nrules: rules\ndevices: devices.yaml\n\
             engine: {{shards: 2, checkpoint: 100ms}}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("devices.yaml"), devices).unwrap();
    for (name, text) in chains {
        std::fs::write(dir.join("rules").join(name), text).unwrap();
    }
}

/// A VictoriaMetrics of the test's own (Debian's `victoria-metrics`, an InfluxDB-compatible
/// write API), on a free loopback port, stopped by pid. Its data dir survives a restart.
pub struct Victoria {
    pub port: u16,
    dir: PathBuf,
    proc: Proc,
}

impl Victoria {
    pub fn start(dir: &Path) -> Victoria {
        let bin = Path::new("/usr/bin/victoria-metrics");
        assert!(
            bin.exists(),
            "victoria-metrics is not installed: run scripts/test.sh, which installs it"
        );
        let mut v = Victoria {
            port: free_port(),
            dir: dir.to_path_buf(),
            proc: Proc::default(),
        };
        v.spawn();
        v
    }

    fn spawn(&mut self) {
        self.proc = Proc::spawn(
            Command::new("/usr/bin/victoria-metrics")
                .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                .arg(format!(
                    "-storageDataPath={}",
                    self.dir.join("vm-data").display()
                ))
                .arg("-search.latencyOffset=0s")
                .arg("-search.disableCache")
                .arg("-loggerLevel=ERROR"),
            &self.dir.join("victoria.log"),
            "victoria-metrics",
        );
        wait_port(self.port, "victoria-metrics");
    }

    /// Stops it (SIGTERM, waits).
    pub fn stop(&mut self) {
        self.proc.terminate();
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Every series matching the selector, as exported: one JSON object per series with
    /// `metric`, `values`, `timestamps`.
    pub fn export(&self, selector: &str) -> Vec<serde_json::Value> {
        let _ = http(self.port, "GET", "/internal/force_flush");
        let q: String = selector
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http10(self.port, &format!("/api/v1/export?match[]={q}"))
            .expect("victoria-metrics export");
        assert_eq!(code, 200, "{body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A Redis of the test's own (Debian's `redis-server`), on a free loopback port, without
/// persistence, stopped by pid.
#[allow(dead_code)] // not every test binary asks
pub struct Redis {
    pub port: u16,
    proc: Proc,
    dir: PathBuf,
    options: Vec<String>,
}

#[allow(dead_code)]
impl Redis {
    pub fn start(dir: &Path) -> Redis {
        Redis::start_with(dir, &[])
    }

    /// With more `redis-server` options (`--requirepass`, TLS); `--port 0` in them turns the
    /// plain port off, and the port given is then `--tls-port`'s.
    pub fn start_with(dir: &Path, options: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            proc: Proc::default(),
            dir: dir.to_path_buf(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let bin = Path::new("/usr/bin/redis-server");
        assert!(
            bin.exists(),
            "redis-server is not installed: run scripts/test.sh, which installs it"
        );
        let tls = self.options.iter().any(|o| o == "--port");
        let port_flag = if tls { "--tls-port" } else { "--port" };
        self.proc = Proc::spawn(
            Command::new(bin)
                .args(["--bind", "127.0.0.1", port_flag, &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(&self.options)
                .arg("--dir")
                .arg(&self.dir),
            &self.dir.join("redis.log"),
            "redis-server",
        );
        wait_port(self.port, "redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it (SIGTERM, waits).
    pub fn stop(&mut self) {
        self.proc.terminate();
    }

    /// Starts it again after [`Redis::stop`], on the same port and directory.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Stops it and starts it again on the same port and directory (with `--appendonly yes`
    /// among its options, its data survives).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// An SMTP sink (Debian's python3-aiosmtpd) writing every mail it accepts into a Maildir.
pub struct SmtpSink {
    pub port: u16,
    pub maildir: PathBuf,
    _proc: Proc,
}

impl SmtpSink {
    pub fn start(dir: &Path) -> SmtpSink {
        Self::start_with(dir, None)
    }

    /// Requiring STARTTLS, with the server certificate of `certs`.
    pub fn start_tls(dir: &Path, certs: &Certs) -> SmtpSink {
        Self::start_with(dir, Some(certs))
    }

    fn start_with(dir: &Path, certs: Option<&Certs>) -> SmtpSink {
        let port = free_port();
        let maildir = dir.join("Maildir");
        // Debian's python, where python3-aiosmtpd is installed (not a pyenv one on PATH).
        let proc = Proc::spawn(
            Command::new("/usr/bin/python3")
                .args(["-m", "aiosmtpd", "-n", "-l"])
                .arg(format!("127.0.0.1:{port}"))
                .args(certs.map_or(Vec::new(), |c| {
                    vec![
                        "--tlscert".into(),
                        c.cert.display().to_string(),
                        "--tlskey".into(),
                        c.key.display().to_string(),
                    ]
                }))
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(&maildir),
            &dir.join("smtp.log"),
            "aiosmtpd (scripts/test.sh installs python3-aiosmtpd)",
        );
        wait_port(port, "aiosmtpd");
        SmtpSink {
            port,
            maildir,
            _proc: proc,
        }
    }

    /// The mails delivered so far, as text.
    pub fn mails(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.maildir.join("new")) {
            for e in rd.flatten() {
                if let Ok(t) = std::fs::read_to_string(e.path()) {
                    out.push(t);
                }
            }
        }
        out
    }
}

/// Polls `f` every 50 ms until it returns `Some`, at most `within`.
///
/// Called from an async test on the multi-threaded runtime, the wait hands this worker's queue
/// to another thread first (`block_in_place`): a task this worker woke last (the MQTT client's
/// event loop right after a `publish`) can sit in the worker's LIFO slot, which other workers
/// do not steal, until a plain blocking wait is over.
pub fn wait_for<T>(within: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(|| poll_until(within, f))
    } else {
        poll_until(within, f)
    }
}

fn poll_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test CA and a server certificate it signed, for `localhost` and 127.0.0.1 (made with the
/// `openssl` command, which `scripts/services.sh` installs). Readable by services that drop
/// privileges (Mosquitto).
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs(dir: &Path) -> Certs {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is not installed: run scripts/test.sh, which installs it");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rulechain test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// One HTTP/1.1 request read from a test server's connection: its path, its headers (names in
/// lower case) and its body (by `Content-Length`). None when the connection closes first.
#[allow(dead_code)] // not every test binary serves HTTP
pub fn read_request(
    s: &mut std::net::TcpStream,
) -> Option<(String, std::collections::BTreeMap<String, String>, Vec<u8>)> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let headers: std::collections::BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((path, headers, buf[head_end..].to_vec()))
}
