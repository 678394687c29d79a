//! `rulechain silence add|list|expire`: silences through a running engine's API (the same
//! `POST/GET/DELETE /api/silences` the dashboard uses), so they are kept, shared by a
//! cluster's instances and shown alike wherever they were made.

use std::path::PathBuf;

use serde_json::{json, Value};

/// Where the engine's API is.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The engine's address (default: the config's `http.listen`, else
    /// `http://127.0.0.1:8080`).
    #[arg(long, global = true)]
    url: Option<String>,
    /// The engine config, for its address and token (default: `rulechain.yaml` when there is
    /// one here).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The API's bearer token (default: `$RULECHAIN_TOKEN`, else the config's).
    #[arg(long, global = true)]
    token: Option<String>,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Make a silence: the matching alarms' notifications and reminders are held.
    Add {
        /// What it matches, `FIELD=PATTERN` (device, device_type, type, chain, severity; a
        /// glob such as `pump-*`), repeated: every one must match.
        #[arg(
            long = "matcher",
            short = 'm',
            value_name = "FIELD=PATTERN",
            required = true
        )]
        matchers: Vec<String>,
        /// How long (`2h`); or `--ends-at`.
        #[arg(long)]
        duration: Option<String>,
        /// When it starts (RFC 3339; default now).
        #[arg(long)]
        starts_at: Option<String>,
        /// When it ends (RFC 3339).
        #[arg(long)]
        ends_at: Option<String>,
        /// The window comes again every period (`7d`: a weekly maintenance slot).
        #[arg(long)]
        every: Option<String>,
        /// A recurring silence ends at this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Ends once an alarm it matches clears.
        #[arg(long)]
        expire_on_clear: bool,
        /// Why.
        #[arg(long, short = 'c')]
        comment: String,
        /// Who (default: `$USER`).
        #[arg(long)]
        by: Option<String>,
    },
    /// List the silences (expired ones for a day after they end).
    List {
        /// Only `active`, `pending` or `expired` ones.
        #[arg(long)]
        state: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Expire {
        /// The silence's id.
        id: String,
        /// Who (default: `$USER`).
        #[arg(long)]
        by: Option<String>,
    },
}

/// Runs `silence`.
pub fn run(target: Target, action: Action) -> i32 {
    let (base, token) = match resolve(&target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_USAGE;
        }
    };
    let rt = match super::client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let user = || std::env::var("USER").ok().filter(|u| !u.is_empty());
    let (method, path, body) = match &action {
        Action::Add {
            matchers,
            duration,
            starts_at,
            ends_at,
            every,
            until,
            expire_on_clear,
            comment,
            by,
        } => {
            let mut m = serde_json::Map::new();
            for given in matchers {
                let Some((k, v)) = given.split_once('=') else {
                    eprintln!(
                        "error: matcher `{given}` is not FIELD=PATTERN (e.g. `device=pump-*`)"
                    );
                    return super::EXIT_USAGE;
                };
                m.insert(k.trim().to_string(), v.trim().into());
            }
            let mut b =
                json!({"matchers": m, "comment": comment, "expire_on_clear": expire_on_clear});
            for (k, v) in [
                ("duration", duration),
                ("starts_at", starts_at),
                ("ends_at", ends_at),
                ("every", every),
                ("until", until),
            ] {
                if let Some(v) = v {
                    b[k] = v.as_str().into();
                }
            }
            if let Some(u) = by.clone().or_else(user) {
                b["by"] = u.into();
            }
            (reqwest::Method::POST, "/api/silences".to_string(), Some(b))
        }
        Action::List { state, .. } => (
            reqwest::Method::GET,
            match state {
                Some(s) => format!(
                    "/api/silences?state={}",
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                ),
                None => "/api/silences".into(),
            },
            None,
        ),
        Action::Expire { id, by } => {
            let mut p = format!(
                "/api/silences/{}",
                percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
            );
            if let Some(u) = by.clone().or_else(user) {
                p.push_str(&format!(
                    "?by={}",
                    percent_encoding::utf8_percent_encode(&u, percent_encoding::NON_ALPHANUMERIC)
                ));
            }
            (reqwest::Method::DELETE, p, None)
        }
    };
    let answer = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "cannot reach the engine at {base}: {}",
                crate::sinks::http_error_text(&e)
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok::<_, String>((status, v))
    });
    let (status, v) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_USAGE;
        }
    };
    if !status.is_success() {
        let what = v["error"].as_str().unwrap_or("refused");
        eprintln!("error: the engine answered {status}: {what}");
        if !v["detail"].is_null() {
            eprintln!("  {}", v["detail"]);
        }
        return super::EXIT_FINDINGS;
    }
    match action {
        Action::Add { .. } => {
            println!("{}", v["id"].as_str().unwrap_or_default());
            eprintln!(
                "silence {} is {} until {}",
                v["id"].as_str().unwrap_or_default(),
                v["state"].as_str().unwrap_or_default(),
                v["ends_at_text"].as_str().unwrap_or_default()
            );
        }
        Action::List { json: true, .. } => println!("{v:#}"),
        Action::List { .. } => print_table(v["silences"].as_array().map_or(&[][..], Vec::as_slice)),
        Action::Expire { id, .. } => println!("silence {id} expired"),
    }
    super::EXIT_OK
}

fn print_table(list: &[Value]) {
    if list.is_empty() {
        println!("no silences");
        return;
    }
    println!(
        "{:<22} {:<8} {:<40} {:<25} {:<12} COMMENT",
        "ID", "STATE", "MATCHERS", "ENDS", "BY"
    );
    for s in list {
        let matchers: Vec<String> = s["matchers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let mut ends = s["ends_at_text"].as_str().unwrap_or_default().to_string();
        if let Some(e) = s["every"].as_i64() {
            ends.push_str(&format!(" (every {}h)", e / 3_600_000));
        }
        println!(
            "{:<22} {:<8} {:<40} {:<25} {:<12} {}",
            s["id"].as_str().unwrap_or_default(),
            s["state"].as_str().unwrap_or_default(),
            matchers.join(","),
            ends,
            s["by"].as_str().unwrap_or("-"),
            s["comment"].as_str().unwrap_or_default().replace('\n', " ")
        );
    }
}

/// The API's base URL and token: given, else from the config.
fn resolve(t: &Target) -> Result<(String, Option<String>), String> {
    let mut token = t
        .token
        .clone()
        .or_else(|| std::env::var("RULECHAIN_TOKEN").ok())
        .filter(|s| !s.is_empty());
    let mut base = t.url.clone();
    let default = PathBuf::from("rulechain.yaml");
    let config = t
        .config
        .clone()
        .or_else(|| default.exists().then_some(default));
    if let Some(path) = &config {
        let mut diags = crate::diag::Diagnostics::new();
        let Some(cfg) = super::load_config(Some(path), &mut diags) else {
            return Err(format!("cannot read the config:\n{}", diags.render_text()));
        };
        let http = cfg.http.clone().unwrap_or_default();
        if token.is_none() {
            token = http.token.map(|t| t.value.clone());
        }
        if base.is_none() {
            if let Some(l) = http.listen.as_ref().map(|l| l.value.clone()) {
                if l == "off" {
                    return Err("the config's HTTP listener is off: the API is unreachable".into());
                }
                let l = l.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
                base = Some(format!("http://{l}"));
            }
        }
    }
    let base = base.unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let base = base.trim_end_matches('/').to_string();
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(format!(
            "`--url {base}` is not an http:// or https:// address"
        ));
    }
    Ok((base, token))
}
