//! The InfluxDB writer's settings (`influx:`), resolved.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Problems;
use crate::config::InfluxSpec;

/// Which write API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfluxApi {
    /// `/api/v2/write` with org and bucket: InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics.
    V2,
    /// `/write?db=`: InfluxDB 1.x.
    V1,
}

impl std::str::FromStr for InfluxApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v2" => Ok(InfluxApi::V2),
            "v1" => Ok(InfluxApi::V1),
            _ => Err(format!("unknown InfluxDB api `{s}`")),
        }
    }
}

/// Timestamp precision of the lines sent (the encoder writes nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Nanoseconds (as encoded).
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ns" => Precision::Ns,
            "us" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            _ => return Err(format!("unknown precision `{s}`: use ns, us, ms or s")),
        })
    }
}

impl Precision {
    /// The name in a v2 URL's `precision=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
        }
    }

    /// Nanoseconds per unit.
    pub fn divisor(self) -> i64 {
        match self {
            Precision::Ns => 1,
            Precision::Us => 1_000,
            Precision::Ms => 1_000_000,
            Precision::S => 1_000_000_000,
        }
    }
}

/// How the writer authenticates.
#[derive(Clone)]
pub enum InfluxAuth {
    /// No credentials.
    None,
    /// `Authorization: Token ...`.
    Token(String),
    /// Basic auth (v1): user and password.
    Basic(String, Option<String>),
}

/// The writer's settings, every default filled in.
#[derive(Clone)]
pub struct InfluxSettings {
    /// The full write URL, with its query.
    pub write_url: reqwest::Url,
    /// Credentials (never logged).
    pub auth: InfluxAuth,
    /// Precision of the timestamps sent.
    pub precision: Precision,
    /// Points per request.
    pub batch_size: usize,
    /// A partial batch waits at most this long.
    pub flush_interval: Duration,
    /// Points held in memory.
    pub buffer_points: usize,
    /// The spool directory and its size limit in bytes.
    pub spool: Option<(PathBuf, u64)>,
    /// Request timeout.
    pub timeout: Duration,
    /// gzip request bodies.
    pub gzip: bool,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// After shutdown begins, how long the writer keeps trying before it spools or gives up.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for InfluxSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and password never reach a log line.
        f.debug_struct("InfluxSettings")
            .field("write_url", &self.write_url.as_str())
            .field("precision", &self.precision)
            .field("batch_size", &self.batch_size)
            .field("buffer_points", &self.buffer_points)
            .field("spool", &self.spool)
            .finish()
    }
}

impl InfluxSettings {
    /// `influx:` alone, resolved as [`super::resolve`] resolves it (with the default shutdown
    /// timeout), for a writer started outside `run` (tests, benches).
    pub fn from_spec(spec: &InfluxSpec, state_dir: &Path) -> Result<Self, Vec<super::Problem>> {
        let mut p = Problems::default();
        let s = resolve(
            &mut p,
            &crate::yaml::Sp::unplaced(spec.clone()),
            state_dir,
            Duration::from_secs(10),
        );
        match s {
            Some(s) if p.0.is_empty() => Ok(s),
            _ => Err(p.0),
        }
    }
}

/// Resolves `influx:`; `None` when it has problems (recorded).
pub(crate) fn resolve(
    p: &mut Problems,
    spec: &crate::yaml::Sp<InfluxSpec>,
    state_dir: &Path,
    shutdown_timeout: Duration,
) -> Option<InfluxSettings> {
    let before = p.0.len();
    let api = match &spec.api {
        Some(a) => a.value.parse().unwrap_or_else(|e: String| {
            p.add(a.pos, e).hint(
                "`v2` (/api/v2/write: InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics) or `v1` (/write?db=)",
            );
            InfluxApi::V2
        }),
        None => InfluxApi::V2,
    };
    let precision = match &spec.precision {
        Some(pr) => pr.value.parse().unwrap_or_else(|e: String| {
            p.add(pr.pos, e);
            Precision::Ns
        }),
        None => Precision::Ns,
    };
    let base = crate::config::check::base_url(&spec.url.value)
        .map_err(|e| {
            p.add(spec.url.pos, e);
        })
        .ok();
    let batch_size = p.in_range(
        &spec.batch_size,
        5000,
        1..=1_000_000,
        "batch_size is between 1 and 1000000",
    );
    let buffer_points = spec.buffer_points.as_ref().map_or(200_000, |b| b.value);
    if let (Some(_), Some(n)) = (&spec.batch_size, &spec.buffer_points) {
        if n.value < batch_size {
            p.add(
                n.pos,
                "buffer_points must hold at least one batch (batch_size)",
            );
        }
    }
    let flush_interval = p.duration(&spec.flush_interval, 1000, 1);
    let timeout = p.duration(&spec.timeout, 10_000, 1);
    let max_backoff = p.duration(&spec.max_backoff, 30_000, 1);
    let (write_url, auth) = write_url(base?, api, precision, spec);
    let spool = spec.spool.unwrap_or(false).then(|| {
        (
            state_dir.join("influx-spool"),
            spec.spool_max_mb.as_ref().map_or(1024, |m| m.value) * 1024 * 1024,
        )
    });
    (p.0.len() == before).then(|| InfluxSettings {
        write_url,
        auth,
        precision,
        batch_size,
        flush_interval,
        buffer_points: buffer_points.max(batch_size),
        spool,
        timeout,
        gzip: spec.gzip.unwrap_or(true),
        max_backoff,
        // The writer must give up (and spool) before the shutdown deadline cuts it off.
        shutdown_grace: (shutdown_timeout / 2).min(Duration::from_secs(5)),
    })
}

/// The write URL with its query, and the credentials, for an API.
fn write_url(
    mut url: reqwest::Url,
    api: InfluxApi,
    precision: Precision,
    spec: &InfluxSpec,
) -> (reqwest::Url, InfluxAuth) {
    // `base_url` ends the path in `/`, so these joins append.
    match api {
        InfluxApi::V2 => {
            url.set_path(&format!("{}api/v2/write", url.path()));
            {
                let mut q = url.query_pairs_mut();
                if let Some(o) = &spec.org {
                    q.append_pair("org", o);
                }
                if let Some(b) = &spec.bucket {
                    q.append_pair("bucket", b);
                }
                q.append_pair("precision", precision.as_str());
            }
            let auth = match &spec.token {
                Some(t) if !t.is_empty() => InfluxAuth::Token(t.clone()),
                _ => InfluxAuth::None,
            };
            (url, auth)
        }
        InfluxApi::V1 => {
            url.set_path(&format!("{}write", url.path()));
            {
                let mut q = url.query_pairs_mut();
                if let Some(d) = &spec.database {
                    q.append_pair("db", d);
                }
                let p = if precision == Precision::Us {
                    "u"
                } else {
                    precision.as_str()
                };
                q.append_pair("precision", p);
            }
            let auth = match (&spec.username, &spec.token) {
                (Some(u), _) if !u.is_empty() => {
                    InfluxAuth::Basic(u.clone(), spec.password.clone())
                }
                (_, Some(t)) if !t.is_empty() => InfluxAuth::Token(t.clone()),
                _ => InfluxAuth::None,
            };
            (url, auth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::Sp;

    fn resolved(spec: InfluxSpec) -> InfluxSettings {
        let mut p = Problems::default();
        let s = resolve(
            &mut p,
            &Sp::unplaced(spec),
            Path::new("/tmp"),
            Duration::from_secs(10),
        );
        assert!(p.0.is_empty(), "{:?}", p.0);
        s.unwrap()
    }

    #[test]
    fn urls_carry_org_bucket_and_precision() {
        let spec = InfluxSpec {
            url: Sp::unplaced("http://db:8086/influx".to_string()),
            org: Some("acme & co".into()),
            bucket: Some("iot".into()),
            precision: Some(Sp::unplaced("ms".to_string())),
            ..Default::default()
        };
        assert_eq!(
            resolved(spec.clone()).write_url.as_str(),
            "http://db:8086/influx/api/v2/write?org=acme+%26+co&bucket=iot&precision=ms"
        );
        let spec = InfluxSpec {
            api: Some(Sp::unplaced("v1".to_string())),
            database: Some("telemetry".into()),
            ..spec
        };
        assert_eq!(
            resolved(spec).write_url.as_str(),
            "http://db:8086/influx/write?db=telemetry&precision=ms"
        );
    }

    #[test]
    fn modes_parse_to_their_variants_and_others_are_refused() {
        assert_eq!("v1".parse(), Ok(InfluxApi::V1));
        assert_eq!("us".parse(), Ok(Precision::Us));
        assert_eq!(
            "v3".parse::<InfluxApi>(),
            Err("unknown InfluxDB api `v3`".to_string())
        );
        assert!("min".parse::<Precision>().is_err());
    }
}
