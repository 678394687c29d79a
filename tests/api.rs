//! The operator API against a running engine (the real binary on its embedded broker): every
//! route of `docs/openapi.yaml` is walked with the requests its `x-tests` name, each answer's
//! status and body checked against the file; the router and the file list the same routes; and
//! what the routes promise (server-side attributes seen by `attr` and kept across a restart,
//! recent values, metrics with bounded labels) is checked by behaviour.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{engine_dir, free_port, tempdir, wait_for, Engine, Mqtt};
use serde_json::{json, Value};

const OVERHEAT: &str = r#"
chain: overheat
nodes:
  - id: hot
    filter: msg.temp > attr.max_temp
    else: cool
  - id: raise
    alarm: { type: Overheat, severity: CRITICAL }
    next: []
  - id: cool
    alarm: { type: Overheat, action: clear }
"#;

const DEVICES: &str = r#"
devices:
  - id: pump-1
    type: pump
    attributes: { max_temp: 80 }
  - id: pump-2
    type: pump
    attributes: { max_temp: 80 }
"#;

/// An engine on its embedded broker in a fresh directory, with `extra` config, these chains
/// and [`DEVICES`]; `http_extra` goes into the `http:` map. Gives the engine and its broker
/// and HTTP ports.
struct Started {
    engine: Engine,
    dir: std::path::PathBuf,
    mqtt: u16,
    http: u16,
}

fn start(name: &str, extra: &str, chains: &[(&str, &str)], http_extra: &str) -> Started {
    let dir = tempdir(name);
    let (mqtt, http) = (free_port(), free_port());
    engine_dir(
        &dir,
        &format!("embedded_broker: {{listen: 127.0.0.1:{mqtt}}}\n{extra}"),
        http,
        chains,
        DEVICES,
    );
    if !http_extra.is_empty() {
        let cfg = dir.join("rulechain.yaml");
        let listen = format!("http: {{listen: 127.0.0.1:{http}}}");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(&listen));
        let with = format!("http: {{listen: 127.0.0.1:{http}, {http_extra}}}");
        std::fs::write(&cfg, text.replace(&listen, &with)).unwrap();
    }
    let engine = Engine::start(&dir, http);
    Started {
        engine,
        dir,
        mqtt,
        http,
    }
}

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    serde_saphyr::from_str(&text).expect("docs/openapi.yaml is YAML")
}

/// One request on a fresh connection: (status, content type, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    let upgrade = headers.iter().any(|(k, _)| *k == "Upgrade");
    if !upgrade {
        head.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it reads a large body whole, and close.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        if upgrade && raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4);
    let mut body = raw[at..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, ctype, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

fn get_json(port: u16, path: &str) -> Value {
    let (code, _, body) = request(port, "GET", path, &[], b"");
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Whether `body` is of the schema at `pointer` in the spec (its `$ref`s resolve in the spec).
fn check_schema(spec: &Value, pointer: &str, body: &Value) -> Result<(), String> {
    let mut root = spec.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!(format!("#{pointer}"));
    let v = jsonschema::validator_for(&root).map_err(|e| format!("bad schema {pointer}: {e}"))?;
    let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A JSON pointer token, as it stands in a URI fragment.
fn escape(p: &str) -> String {
    p.replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// The router's routes, read from its source: `.route("PATH", ...)`.
fn router_routes() -> std::collections::BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/live/http/mod.rs"))
        .unwrap();
    src.split(".route(")
        .skip(1)
        .filter_map(|s| {
            s.trim_start()
                .strip_prefix('"')?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn the_router_and_the_openapi_file_list_the_same_routes() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let documented: std::collections::BTreeSet<String> =
        spec["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(router_routes(), documented);
}

#[test]
fn every_route_of_the_openapi_file_answers_as_it_says() {
    let spec = spec();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Started {
        engine,
        dir,
        mqtt,
        http,
    } = start(
        "api-walk",
        "history: {resolution: 100ms}",
        &[("overheat.yaml", OVERHEAT)],
        "",
    );
    rt.block_on(async {
        let p = Mqtt::connect(mqtt, "api-walk", true, &[]).await;
        p.publish("device/pump-1/telemetry", r#"{"temp": 70}"#)
            .await;
        p.publish("device/pump-1/telemetry", r#"{"temp": 99}"#)
            .await;
        p.publish("device/pump-2/telemetry", r#"{"temp": 99}"#)
            .await;
    });
    let alarm_of = |device: &str| {
        wait_for(Duration::from_secs(10), || {
            let v = get_json(http, &format!("/api/alarms?device={device}"));
            v["alarms"][0]["id"].as_str().map(str::to_string)
        })
        .unwrap_or_else(|| panic!("{device}'s alarm is raised"))
    };
    let (alarm, alarm2) = (alarm_of("pump-1"), alarm_of("pump-2"));
    // A silence for the routes that name one.
    let (code, _, made) = request(
        http,
        "POST",
        "/api/silences",
        &[("Content-Type", "application/json")],
        br#"{"matchers": {"device": "walk-*"}, "duration": "1h", "comment": "walk"}"#,
    );
    assert_eq!(code, 201);
    let silence = serde_json::from_slice::<Value>(&made).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // An engine whose broker is down: not ready.
    let down_dir = tempdir("api-walk-down");
    let down_http = free_port();
    engine_dir(
        &down_dir,
        &format!("mqtt: {{url: \"mqtt://127.0.0.1:{}\"}}", free_port()),
        down_http,
        &[("overheat.yaml", OVERHEAT)],
        DEVICES,
    );
    let _down = Engine::launch(&down_dir, down_http);
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", down_http)).ok()
    })
    .expect("the engine without a broker serves HTTP");

    let mut walked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tests = op["x-tests"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path}: no x-tests"));
            let responses = op["responses"].as_object().unwrap();
            // Every documented status has a test, or says why not.
            for code in responses.keys() {
                let tested = tests.iter().any(|t| {
                    t["status"].as_u64().map(|s| s.to_string()).as_deref() == Some(code.as_str())
                });
                assert!(
                    tested || op["x-untested"][code].is_string(),
                    "{method} {path}: status {code} has no x-test"
                );
            }
            for t in tests {
                let want = t["status"].as_u64().unwrap() as u16;
                let m = t["method"].as_str().unwrap_or("GET");
                assert_eq!(m.to_lowercase(), *method, "{t}");
                let url = t["path"]
                    .as_str()
                    .unwrap()
                    .replace("{alarm}", &alarm)
                    .replace("{alarm2}", &alarm2)
                    .replace("{silence}", &silence);
                let port = if t["when"] == "no_broker" {
                    down_http
                } else {
                    http
                };
                let broken = dir.join("rules").join("broken.yaml");
                if t["when"] == "broken_rule_file" {
                    std::fs::write(&broken, "chain: broken\nnodes:\n  - filter: msg.x >\n")
                        .unwrap();
                }
                let mut headers: Vec<(&str, String)> = Vec::new();
                let mut body: Vec<u8> = Vec::new();
                if let Some(j) = t.get("json") {
                    headers.push(("Content-Type", "application/json".into()));
                    body = serde_json::to_vec(j).unwrap();
                }
                if let Some(b) = t["body"].as_str() {
                    body = b.as_bytes().to_vec();
                }
                if let Some(b) = t["body_bytes"].as_array() {
                    body = b.iter().map(|x| x.as_u64().unwrap() as u8).collect();
                }
                if let Some(n) = t["body_size"].as_u64() {
                    body = vec![b'x'; n as usize];
                }
                if let Some(c) = t["content_type"].as_str() {
                    headers.push(("Content-Type", c.into()));
                }
                if t["websocket"] == true {
                    headers.push(("Upgrade", "websocket".into()));
                    headers.push(("Connection", "Upgrade".into()));
                    headers.push(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".into()));
                    headers.push(("Sec-WebSocket-Version", "13".into()));
                }
                if let Some(o) = t["origin"].as_str() {
                    headers.push(("Origin", o.into()));
                }
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                // The engine without a broker may take a moment to settle; the rest answer at once.
                let (code, ctype, got) = wait_for(Duration::from_secs(5), || {
                    let r = request(port, m, &url, &h, &body);
                    (r.0 == want).then_some(r)
                })
                .unwrap_or_else(|| {
                    let r = request(port, m, &url, &h, &body);
                    panic!(
                        "{m} {url} ({t}): want {want}, got {}: {}",
                        r.0,
                        String::from_utf8_lossy(&r.2)
                    )
                });
                if t["when"] == "broken_rule_file" {
                    std::fs::remove_file(&broken).unwrap();
                    request(http, "POST", "/api/reload", &[], b"");
                }
                walked += 1;
                if code == 101 {
                    continue;
                }
                let resp = &responses[&code.to_string()];
                let (media, content) = resp["content"]
                    .as_object()
                    .and_then(|c| c.iter().next())
                    .unwrap_or_else(|| panic!("{m} {path} {code}: no content documented"));
                assert!(
                    ctype.starts_with(media.as_str()),
                    "{m} {url}: content type {ctype}, documented {media}"
                );
                if media == "application/json" {
                    let v: Value = serde_json::from_slice(&got).unwrap_or_else(|e| {
                        panic!(
                            "{m} {url}: not JSON ({e}): {}",
                            String::from_utf8_lossy(&got)
                        )
                    });
                    let pointer = format!(
                        "/paths/{}/{method}/responses/{code}/content/{}/schema",
                        escape(path),
                        escape(media)
                    );
                    let _ = content;
                    if let Err(e) = check_schema(&spec, &pointer, &v) {
                        panic!("{m} {url} answered {code} with a body not of its schema: {e}\n{v}");
                    }
                }
            }
        }
    }
    assert!(walked >= 30, "only {walked} requests walked");
    drop(engine);
}

#[test]
fn attributes_history_and_metrics_do_what_they_say() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Started {
        mut engine,
        mqtt,
        http,
        ..
    } = start(
        "api-behaviour",
        "history: {resolution: 100ms}",
        &[("overheat.yaml", OVERHEAT)],
        "",
    );
    let put = |body: &str| {
        request(
            http,
            "PUT",
            "/api/devices/pump-2/attributes",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    // A server-side attribute is above the registry's, and the next message sees it.
    let (code, _, body) = put(r#"{"max_temp": 50, "note": "<script>x</script>"}"#);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let d: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        d["attributes"]["max_temp"],
        json!({"value": 50, "source": "server"})
    );
    rt.block_on(async {
        let p = Mqtt::connect(mqtt, "api-b", true, &[]).await;
        for t in [40, 45, 60] {
            p.publish("device/pump-2/telemetry", format!(r#"{{"temp": {t}}}"#))
                .await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    wait_for(Duration::from_secs(10), || {
        let v = get_json(http, "/api/alarms?device=pump-2&status=active");
        (v["alarms"].as_array()?.len() == 1).then_some(())
    })
    .expect("60 > the server-side max_temp 50 raises an alarm (the registry says 80)");
    // Pages by id across the shards (the two pumps of the devices file: one per shard or not).
    let first = get_json(http, "/api/devices?limit=1");
    let second = get_json(http, "/api/devices?limit=1&offset=1");
    assert_eq!(
        (first["total"].as_u64(), second["total"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(first["devices"][0]["id"], "pump-1", "{first}");
    assert_eq!(second["devices"][0]["id"], "pump-2", "{second}");
    assert!(get_json(http, "/api/devices?offset=2")["devices"]
        .as_array()
        .unwrap()
        .is_empty());
    // An open alarm shows on its device and in the metrics, by status and severity.
    let list = get_json(http, "/api/devices?type=pump&online=true");
    assert_eq!(list["devices"][0]["open_alarms"], 1, "{list}");
    assert_eq!(list["devices"][0]["severity"], "CRITICAL");
    let m = String::from_utf8(request(http, "GET", "/metrics", &[], b"").2).unwrap();
    assert!(
        m.contains("rulechain_alarms{status=\"ACTIVE_UNACK\",severity=\"CRITICAL\"} 1"),
        "{m}"
    );
    // Acknowledged and cleared by hand, each with who did it.
    let id = get_json(http, "/api/alarms?device=pump-2")["alarms"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let by = |action: &str, who: &str| {
        let body = format!(r#"{{"by": "  {who}\n"}}"#);
        let (code, _, b) = request(
            http,
            "POST",
            &format!("/api/alarms/{id}/{action}"),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(code, 200, "{action}: {}", String::from_utf8_lossy(&b));
        serde_json::from_slice::<Value>(&b).unwrap()
    };
    assert_eq!(by("ack", "ana")["status"], "ACTIVE_ACK");
    assert_eq!(by("clear", "bo")["status"], "CLEARED_ACK");
    let (code, _, _) = request(http, "POST", &format!("/api/alarms/{id}/clear"), &[], b"");
    assert_eq!(code, 404, "cleared and acknowledged: done, no longer open");
    // Cleared and acknowledged: it leaves the open alarms, and shows among the closed with
    // who did what.
    let closed = get_json(http, "/api/alarms?status=CLEARED_ACK&device=pump-2");
    assert_eq!(closed["alarms"][0]["id"], id.as_str(), "{closed}");
    assert_eq!(closed["alarms"][0]["acked_by"], "ana");
    assert_eq!(closed["alarms"][0]["cleared_by"], "bo");
    assert!(get_json(http, "/api/alarms?device=pump-2")["alarms"]
        .as_array()
        .unwrap()
        .is_empty());
    rt.block_on(async {
        let p = Mqtt::connect(mqtt, "api-b2", true, &[]).await;
        p.publish("device/pump-2/telemetry", r#"{"temp": 61}"#)
            .await;
    });
    let again = wait_for(Duration::from_secs(10), || {
        let v = get_json(http, "/api/alarms?device=pump-2");
        v["alarms"].as_array()?.first().cloned()
    })
    .expect("raised again");
    assert_ne!(again["id"].as_str(), Some(id.as_str()), "a new alarm");
    let (code, _, b) = request(
        http,
        "POST",
        &format!("/api/alarms/{}/clear", again["id"].as_str().unwrap()),
        &[("Content-Type", "application/json")],
        br#"{"by":"bo"}"#,
    );
    assert_eq!(code, 200);
    let cleared = get_json(http, "/api/alarms?device=pump-2&status=CLEARED_UNACK");
    assert_eq!(
        cleared["alarms"][0]["cleared_by"],
        "bo",
        "{cleared} {}",
        String::from_utf8_lossy(&b)
    );
    let (code, _, _) = request(
        http,
        "POST",
        &format!("/api/alarms/{}/ack", again["id"].as_str().unwrap()),
        &[("Content-Type", "application/json")],
        br#"{"by":"ana"}"#,
    );
    assert_eq!(code, 200);
    // Recent values, oldest first, with their times.
    let h = get_json(http, "/api/devices/pump-2/history?field=temp");
    let values: Vec<f64> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![40.0, 45.0, 60.0, 61.0], "{h}");
    let list = get_json(http, "/api/devices?online=true");
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["devices"][0]["id"], "pump-2");
    assert_eq!(list["devices"][0]["latest"]["temp"], 61.0);
    // Metrics: per chain and node, alarms by status and severity, no device labels.
    let (code, ctype, m) = request(http, "GET", "/metrics", &[], b"");
    let m = String::from_utf8(m).unwrap();
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    for want in [
        "rulechain_engine_received_total 4",
        "rulechain_chain_messages_total{chain=\"overheat\"} 4",
        "rulechain_node_messages_total{chain=\"overheat\",node=\"hot\",outcome=\"pass\"} 2",
        "rulechain_node_messages_total{chain=\"overheat\",node=\"hot\",outcome=\"else\"} 2",
        "rulechain_chain_duration_seconds_count{chain=\"overheat\"} 4",
        "rulechain_rules_generation 1",
        "rulechain_websocket_clients 0",
        "# EOF",
    ] {
        assert!(m.contains(want), "{want} missing from /metrics:\n{m}");
    }
    assert!(!m.contains("pump-2"), "a device id became a label:\n{m}");
    // Removing the server-side value falls back to the registry's; a fresh value is kept
    // across a restart.
    let (code, _, body) = put(r#"{"max_temp": null}"#);
    assert_eq!(code, 200);
    let d: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        d["attributes"]["max_temp"],
        json!({"value": 80, "source": "registry"})
    );
    assert_eq!(put(r#"{"max_temp": 55}"#).0, 200);
    engine.stop();
    engine.restart();
    let d = get_json(http, "/api/devices/pump-2");
    assert_eq!(
        d["attributes"]["max_temp"],
        json!({"value": 55, "source": "server"}),
        "{d}"
    );
    assert_eq!(
        d["attributes"]["note"]["value"], "<script>x</script>",
        "kept as text"
    );
    // Bad input is refused with JSON, never a 500.
    for (body, want) in [("[]", 422), ("{}", 422), ("{\"\": 1}", 422), ("nope", 400)] {
        let (code, _, b) = put(body);
        assert_eq!(code, want, "{body}: {}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
}

/// The metric names a PromQL expression names: `rulechain_…` identifiers.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("rulechain_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_metric_the_grafana_dashboard_queries_exists_and_every_exposed_one_is_documented() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/rulechain.json"
    ))
    .unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // An engine with every part that has metrics: an InfluxDB writer (to a closed port), a
    // notification channel, a WebSocket client, an alarm.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chain = "chain: hot\nnodes:\n  - filter: msg.temp > 50\n  - alarm: { type: Hot, severity: MAJOR }\n  - notify: [ops]\n";
    let extra = format!(
        "influx: {{url: \"http://127.0.0.1:{}\"}}\nchannels: {{ops: {{log: {{}}}}}}",
        free_port()
    );
    let Started {
        engine: _engine,
        mqtt,
        http,
        ..
    } = start("api-grafana", &extra, &[("hot.yaml", chain)], "");
    rt.block_on(async {
        let p = Mqtt::connect(mqtt, "api-g", true, &[]).await;
        p.publish("device/pump-1/telemetry", r#"{"temp": 90}"#)
            .await;
    });
    let metrics = wait_for(Duration::from_secs(10), || {
        let m = String::from_utf8(request(http, "GET", "/metrics", &[], b"").2).ok()?;
        m.contains("rulechain_notify_sent_total{channel=\"ops\"} 1")
            .then_some(m)
    })
    .expect("the alarm's notification is counted");
    // Names as exposed: `# TYPE name kind`; a counter is queried with `_total`, a histogram
    // with `_bucket`, `_sum` or `_count`.
    let mut exposed = std::collections::BTreeSet::new();
    for line in metrics.lines() {
        let mut w = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            match kind {
                "counter" => {
                    exposed.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        exposed.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    exposed.insert(name.to_string());
                }
            }
        }
    }
    let mut queried = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                // Cluster metrics exist only in cluster mode: tests/cluster_run.rs checks them.
                if name.starts_with("rulechain_cluster_") {
                    continue;
                }
                queried += 1;
                assert!(
                    exposed.contains(&name),
                    "panel {:?} queries {name}, which /metrics does not have",
                    p["title"]
                );
            }
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        for name in metric_names(v["query"].as_str().unwrap()) {
            assert!(
                exposed.contains(&name),
                "variable {} queries {name}",
                v["name"]
            );
        }
    }
    assert!(queried >= 30, "only {queried} metric references");
    // And every metric the engine exposes is in docs/metrics.md, by its full name (a counter
    // with `_total`; a histogram by its base name).
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let undocumented: Vec<&String> = exposed
        .iter()
        .filter(|n| {
            let base = n
                .strip_suffix("_bucket")
                .or_else(|| n.strip_suffix("_sum"))
                .or_else(|| n.strip_suffix("_count"))
                .unwrap_or(n);
            !docs.contains(&format!("`{n}`")) && !docs.contains(&format!("`{base}`"))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "exposed but not in docs/metrics.md: {undocumented:?}"
    );
}

#[test]
fn a_trace_records_each_nodes_decision_and_survives_a_reload() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Started {
        engine: _engine,
        dir,
        mqtt,
        http,
    } = start("api-trace", "", &[("overheat.yaml", OVERHEAT)], "");
    let post = |body: &str| {
        let (code, _, b) = request(
            http,
            "POST",
            "/api/trace",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        (code, serde_json::from_slice::<Value>(&b).unwrap())
    };
    // No bounds given: the defaults; too large: the caps.
    let (code, t) = post("{}");
    assert_eq!(code, 200);
    assert_eq!(
        (
            t["trace"]["limit"].as_u64(),
            t["trace"]["duration"].as_str()
        ),
        (Some(20), Some("60s"))
    );
    let (_, t) = post(r#"{"limit": 4000000000, "duration": "30d"}"#);
    assert_eq!(
        (
            t["trace"]["limit"].as_u64(),
            t["trace"]["duration"].as_str()
        ),
        (Some(1000), Some("3600s"))
    );
    // Two messages of pump-1, one of pump-2 between them; a reload in the middle.
    let (code, _) = post(r#"{"device": "pump-1", "limit": 2}"#);
    assert_eq!(code, 200);
    let publish = |device: &str, temp: u32| {
        rt.block_on(async {
            let p = Mqtt::connect(mqtt, &format!("api-t-{device}-{temp}"), true, &[]).await;
            p.publish(
                &format!("device/{device}/telemetry"),
                format!(r#"{{"temp": {temp}}}"#),
            )
            .await;
        })
    };
    publish("pump-1", 70);
    publish("pump-2", 99);
    std::fs::write(
        dir.join("rules").join("overheat.yaml"),
        OVERHEAT.replace("msg.temp > attr.max_temp", "msg.temp > attr.max_temp - 1"),
    )
    .unwrap();
    let (code, _, b) = request(http, "POST", "/api/reload", &[], b"");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&b));
    publish("pump-1", 99);
    let trace = wait_for(Duration::from_secs(10), || {
        let t = get_json(http, "/api/trace");
        (t["entries"].as_array()?.len() == 2).then_some(t)
    })
    .expect("two entries: pump-1's two messages, one chain each");
    let e = trace["entries"].as_array().unwrap();
    assert!(e.iter().all(|x| x["device"] == "pump-1"), "{trace}");
    // 70 is not above 80: the filter goes to `else`, whose alarm has nothing to clear.
    let steps = |i: usize| -> Vec<(String, String)> {
        e[i]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["node"].as_str().unwrap().into(),
                    s["outcome"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(
        steps(0),
        [
            ("hot".into(), "else".into()),
            ("cool".into(), "suppressed".into())
        ]
    );
    assert_eq!(e[0]["steps"][0]["msg"], json!({"temp": 70}));
    // After the reload, the same trace: 99 passes the filter and raises the alarm.
    assert_eq!(
        steps(1),
        [
            ("hot".into(), "pass".into()),
            ("raise".into(), "pass".into())
        ]
    );
    assert!(
        trace["active"].is_null(),
        "the limit of 2 ended it: {trace}"
    );
}

#[test]
fn the_token_guards_the_api_not_the_probes_or_the_page_and_unknown_routes_answer_json() {
    let Started {
        engine: _engine,
        http,
        ..
    } = start(
        "api-token",
        "",
        &[("overheat.yaml", OVERHEAT)],
        "token: s3cret",
    );
    for open in ["/livez", "/readyz", "/healthz", "/", "/assets/app.js"] {
        assert_eq!(request(http, "GET", open, &[], b"").0, 200, "{open}");
    }
    for guarded in ["/metrics", "/api/devices", "/api/chains", "/api/trace"] {
        let (code, _, body) = request(http, "GET", guarded, &[], b"");
        assert_eq!(code, 401, "{guarded}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("token"), "{v}");
        assert!(
            !String::from_utf8_lossy(&body).contains("s3cret"),
            "the token leaked"
        );
        let (code, _, _) = request(
            http,
            "GET",
            guarded,
            &[("Authorization", "Bearer s3cret")],
            b"",
        );
        assert_eq!(code, 200, "{guarded} with the token");
    }
    let auth = [("Authorization", "Bearer s3cret")];
    let (code, ctype, body) = request(http, "GET", "/api/nothing", &auth, b"");
    assert_eq!(code, 404);
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("/api/nothing"), "{v}");
    let (code, _, body) = request(http, "DELETE", "/api/devices", &auth, b"");
    assert_eq!(code, 405);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("DELETE"), "{v}");
}

#[test]
fn prometheus_scrapes_the_metrics() {
    // Debian's Prometheus server (installed by scripts/services.sh), scraping every second.
    let s = start("api-prometheus", "", &[("overheat.yaml", OVERHEAT)], "");
    let prom_port = free_port();
    let prom_dir = s.dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: rulechain\n    static_configs: [{{targets: [\"127.0.0.1:{}\"]}}]\n",
            s.http
        ),
    )
    .unwrap();
    let _prom = common::Proc::spawn(
        std::process::Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &prom_dir.join("prometheus.log"),
        "prometheus",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let p = Mqtt::connect(s.mqtt, "api-prom", true, &[]).await;
        p.publish("device/pump-1/telemetry", r#"{"temp": 99}"#)
            .await;
    });
    let query = |q: &str| -> Option<Value> {
        // Not listening yet while it starts.
        std::net::TcpStream::connect(("127.0.0.1", prom_port)).ok()?;
        let (code, _, b) = request(
            prom_port,
            "GET",
            &format!("/api/v1/query?query={q}"),
            &[],
            b"",
        );
        (code == 200).then(|| serde_json::from_slice::<Value>(&b).ok())?
    };
    let log = || std::fs::read_to_string(prom_dir.join("prometheus.log")).unwrap_or_default();
    // `up` is 1 only when the last scrape parsed; then a counter, a labelled gauge and a
    // histogram's buckets are in its store.
    wait_for(Duration::from_secs(30), || {
        let v = query("up%7Bjob%3D%22rulechain%22%7D")?;
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    })
    .unwrap_or_else(|| panic!("Prometheus did not scrape /metrics:\n{}", log()));
    for (q, want) in [
        ("rulechain_engine_received_total", "1"),
        (
            "rulechain_alarms%7Bstatus%3D%22ACTIVE_UNACK%22%2Cseverity%3D%22CRITICAL%22%7D",
            "1",
        ),
        (
            "rulechain_chain_duration_seconds_count%7Bchain%3D%22overheat%22%7D",
            "1",
        ),
    ] {
        let got = wait_for(Duration::from_secs(10), || {
            let v = query(q)?;
            let value = v["data"]["result"][0]["value"][1].as_str()?.to_string();
            (value == want).then_some(value)
        });
        assert!(got.is_some(), "{q}: {:?}\n{}", query(q), log());
    }
}
