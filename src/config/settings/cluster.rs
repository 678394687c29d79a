//! `cluster:`: several instances as one engine on Redis.

use std::path::PathBuf;
use std::time::Duration;

use super::{Broker, Problems};
use crate::config::ClusterSpec;
use crate::yaml::Sp;

/// Default partition count.
pub const PARTITIONS: usize = 64;

/// The cluster this instance belongs to.
#[derive(Clone)]
pub struct ClusterSettings {
    /// `redis://…` or `rediss://…` (may hold a password: never printed).
    pub redis: String,
    /// A password given apart (never printed).
    pub password: Option<String>,
    /// A CA file for `rediss://`.
    pub ca: Option<PathBuf>,
    /// This instance's name.
    pub instance: String,
    /// Partitions (fixed for the cluster's life).
    pub partitions: u32,
    /// Lease length.
    pub lease: Duration,
    /// Key prefix.
    pub prefix: String,
    /// Entries a partition's stream keeps at least.
    pub stream_keep: usize,
    /// How long a small batch waits for more (zero: never).
    pub linger: Duration,
    /// Where the other instances reach this one's API (`host:port`), if it serves one.
    pub advertise: Option<String>,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the URL (it may carry a password) nor the password reach a log line.
        f.debug_struct("ClusterSettings")
            .field("instance", &self.instance)
            .field("partitions", &self.partitions)
            .field("lease", &self.lease)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// This machine's host name, if it can be told.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// The default instance name: the host name and the process id.
pub fn default_instance() -> String {
    let host = host_name().unwrap_or_else(|| "rulechain".into());
    format!("{}-{}", name_safe(&host), std::process::id())
}

/// Letters, digits and `-_.:` only (a name goes into Redis values split on spaces, and into
/// metrics labels).
fn name_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && name_safe(s) == s
}

/// Resolves `cluster:`; every problem is recorded.
pub(super) fn resolve(
    p: &mut Problems,
    spec: &Sp<ClusterSpec>,
    broker: Option<&Broker>,
    http: Option<std::net::SocketAddr>,
    rel: &dyn Fn(&str) -> PathBuf,
) -> Option<ClusterSettings> {
    let c = &spec.value;
    let mut ok = true;
    if matches!(broker, Some(Broker::Embedded(_))) {
        p.add(spec.pos, "a cluster needs an external MQTT broker")
            .hint("add `mqtt: {url: mqtt://HOST:1883}`: the instances share one broker (the embedded broker is one process's)");
        ok = false;
    }
    let url = c.redis.value.trim();
    let tls = url.starts_with("rediss://");
    if !(url.starts_with("redis://") || tls) || url.len() <= "rediss://".len() {
        p.add(c.redis.pos, "`cluster.redis` is not a Redis URL")
            .hint("use redis://HOST:6379, or rediss://HOST:6380 for TLS");
        ok = false;
    }
    let ca = c.ca.as_ref().map(|a| (a.pos, rel(&a.value)));
    if let Some((pos, _)) = &ca {
        if !tls {
            p.add(*pos, "`cluster.ca` is for TLS, and `cluster.redis` is not")
                .hint("use a rediss:// URL, or leave `ca` out");
            ok = false;
        }
    }
    let instance = match &c.instance {
        Some(i) if !is_name(&i.value) => {
            p.add(i.pos, format!("`{}` is not an instance name", i.value))
                .hint("use up to 64 letters, digits, `-`, `_`, `.` or `:`, unique in the cluster");
            ok = false;
            String::new()
        }
        Some(i) => i.value.clone(),
        None => default_instance(),
    };
    let prefix = match &c.prefix {
        Some(x) if !is_name(&x.value) => {
            p.add(x.pos, format!("`{}` is not a key prefix", x.value))
                .hint("use up to 64 letters, digits, `-`, `_`, `.` or `:`");
            ok = false;
            String::new()
        }
        Some(x) => x.value.clone(),
        None => "rulechain".into(),
    };
    let partitions = p.in_range(
        &c.partitions,
        PARTITIONS,
        1..=4096,
        "partitions is between 1 and 4096",
    ) as u32;
    let lease = p.duration(&c.lease, 5_000, 0);
    if let Some(l) = c
        .lease
        .as_ref()
        .filter(|_| lease < Duration::from_millis(500))
    {
        p.add(l.pos, "the lease is at least 500ms")
            .hint("a lease shorter than a Redis round trip under load would move partitions for nothing; 5s is the default");
        ok = false;
    }
    let stream_keep = p.in_range(
        &c.stream_keep,
        100_000,
        1_000..=100_000_000,
        "stream_keep is between 1000 and 100000000",
    );
    let linger = match &c.linger {
        Some(l) => match crate::duration::parse(&l.value) {
            Ok(ms) if (0..=100).contains(&ms) => Duration::from_millis(ms as u64),
            Ok(_) => {
                p.add(l.pos, "the linger is between 0s and 100ms").hint(
                    "it is added to every message's latency under a light load; 1ms is the default",
                );
                ok = false;
                Duration::ZERO
            }
            Err(e) => {
                p.add(l.pos, e);
                ok = false;
                Duration::ZERO
            }
        },
        None => Duration::from_millis(1),
    };
    let advertise = match (&c.advertise, http) {
        (Some(a), _) => {
            let valid = a
                .value
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                p.add(a.pos, format!("`{}` is not a host and a port", a.value))
                    .hint("e.g. `rc-1:8080` or `10.0.0.5:8080`: where the other instances reach this one's API");
                ok = false;
            }
            Some(a.value.clone())
        }
        (None, Some(addr)) if addr.ip().is_unspecified() => {
            let host = host_name().unwrap_or_else(|| "localhost".into());
            Some(format!("{host}:{}", addr.port()))
        }
        (None, Some(addr)) => Some(addr.to_string()),
        (None, None) => None,
    };
    ok.then(|| ClusterSettings {
        redis: url.to_string(),
        password: c.password.clone(),
        ca: ca.map(|(_, path)| path),
        instance,
        partitions,
        lease,
        prefix,
        stream_keep,
        linger,
        advertise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_names() {
        assert!(is_name(&default_instance()), "{}", default_instance());
        assert!(!is_name("rc 1"));
        assert!(!is_name(""));
        assert!(is_name("rc-1.eu:a_b"));
    }
}
