//! The chat and incident channels against receivers of the test's own that speak each API's
//! shape (Slack's Web API and incoming webhooks, a Teams workflow, PagerDuty's Events API v2,
//! Telegram's Bot API), including their error answers: 429 with `Retry-After`, 5xx, a bad
//! token. The engine is the `rulechain` binary on its embedded broker; no real service is
//! called.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{engine_dir, free_port, http_as, tempdir, wait_for, Engine, Mqtt};
use serde_json::{json, Value};

/// A request the services got.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
    at: Instant,
}

/// A canned answer: status, extra headers, body.
type Canned = (u16, Vec<(String, String)>, String);

/// Slack, Teams, PagerDuty and Telegram as far as rulechain uses them, on one port: every
/// request is recorded; a path may first answer with canned failures, in turn.
#[derive(Clone, Default)]
struct Services {
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<BTreeMap<String, Vec<Canned>>>>,
    /// Slack messages by ts, Telegram messages by id: their current text.
    slack: Arc<Mutex<BTreeMap<String, Value>>>,
    telegram: Arc<Mutex<BTreeMap<i64, String>>>,
}

const SLACK_TOKEN: &str = "xoxb-good";
const TG_TOKEN: &str = "123:good";
const PD_KEY: &str = "pd-good";

impl Services {
    fn start() -> (Services, u16) {
        let s = Services::default();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ss = s.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let ss = ss.clone();
                std::thread::spawn(move || ss.handle(c));
            }
        });
        (s, port)
    }

    fn fail_first(&self, path: &str, answers: Vec<Canned>) {
        self.script.lock().unwrap().insert(path.into(), answers);
    }

    fn handle(&self, mut s: std::net::TcpStream) {
        let Some((path, headers, body)) = common::read_request(&mut s) else {
            return;
        };
        // Every body must be JSON: a receiver that cannot parse it is a failed test.
        let body: Value = serde_json::from_slice(&body).unwrap_or_else(
            |e| json!({"NOT_JSON": e.to_string(), "raw": String::from_utf8_lossy(&body)}),
        );
        self.calls.lock().unwrap().push(Call {
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        let canned = {
            let mut sc = self.script.lock().unwrap();
            sc.get_mut(&path)
                .and_then(|v| (!v.is_empty()).then(|| v.remove(0)))
        };
        let (status, extra, text) = canned.unwrap_or_else(|| self.answer(&path, &headers, &body));
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            text.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let _ = write!(s, "{head}\r\n{text}");
    }

    fn answer(&self, path: &str, headers: &BTreeMap<String, String>, body: &Value) -> Canned {
        let ok = |v: Value| (200, vec![], v.to_string());
        if let Some(method) = path.strip_prefix("/slack/") {
            if headers.get("authorization").map(String::as_str)
                != Some(&format!("Bearer {SLACK_TOKEN}"))
            {
                return ok(json!({"ok": false, "error": "invalid_auth"}));
            }
            let mut msgs = self.slack.lock().unwrap();
            return match method {
                "chat.postMessage" => {
                    if body["thread_ts"].is_string() {
                        return ok(
                            json!({"ok": true, "channel": "C0MAINT", "ts": format!("{}.r", msgs.len())}),
                        );
                    }
                    let ts = format!("1700000000.{:06}", msgs.len() + 1);
                    msgs.insert(ts.clone(), body.clone());
                    ok(json!({"ok": true, "channel": "C0MAINT", "ts": ts}))
                }
                "chat.update" => {
                    let ts = body["ts"].as_str().unwrap_or_default().to_string();
                    if body["channel"] != "C0MAINT" || !msgs.contains_key(&ts) {
                        return ok(json!({"ok": false, "error": "message_not_found"}));
                    }
                    msgs.insert(ts.clone(), body.clone());
                    ok(json!({"ok": true, "channel": "C0MAINT", "ts": ts}))
                }
                _ => ok(json!({"ok": false, "error": "unknown_method"})),
            };
        }
        if path == "/hooks/slack" || path == "/teams" {
            return (
                if path == "/teams" { 202 } else { 200 },
                vec![],
                "ok".into(),
            );
        }
        if path == "/pd/v2/enqueue" {
            if body["routing_key"] != PD_KEY {
                return (400, vec![], json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["Invalid routing key"]}).to_string());
            }
            return (202, vec![], json!({"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]}).to_string());
        }
        if let Some(rest) = path.strip_prefix("/tg/bot") {
            let (token, method) = rest.split_once('/').unwrap_or((rest, ""));
            if token != TG_TOKEN {
                return (
                    401,
                    vec![],
                    json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
                        .to_string(),
                );
            }
            let mut msgs = self.telegram.lock().unwrap();
            let text = body["text"].as_str().unwrap_or_default().to_string();
            return match method {
                "sendMessage" => {
                    let id = msgs.len() as i64 + 100;
                    msgs.insert(id, text.clone());
                    ok(json!({"ok": true, "result": {"message_id": id, "text": text}}))
                }
                "editMessageText" => {
                    let id = body["message_id"].as_i64().unwrap_or(-1);
                    match msgs.get(&id) {
                        None => (400, vec![], json!({"ok": false, "error_code": 400, "description": "Bad Request: message to edit not found"}).to_string()),
                        Some(t) if *t == text => (400, vec![], json!({"ok": false, "error_code": 400, "description": "Bad Request: message is not modified"}).to_string()),
                        Some(_) => {
                            msgs.insert(id, text.clone());
                            ok(json!({"ok": true, "result": {"message_id": id, "text": text}}))
                        }
                    }
                }
                _ => (
                    404,
                    vec![],
                    json!({"ok": false, "error_code": 404, "description": "Not Found"}).to_string(),
                ),
            };
        }
        (404, vec![], "{}".into())
    }

    fn on(&self, path: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

const CHAIN: &str = r#"
chain: hot
nodes:
  - id: check
    filter: msg.temp > 50
    else: cool
  - id: raise
    alarm:
      type: Hot
      severity: CRITICAL
      message: "${meta.device} at ${msg.temp} <b>&</b>"
      pass: [created, acknowledged]
  - id: tell
    notify: [bot, hook, teams, pd, tg]
    next: []
  - id: cool
    alarm: { type: Hot, action: clear }
    next: [tell]
"#;

fn channels(port: u16) -> String {
    format!(
        r##"channels:
  bot:
    slack: {{token: "{SLACK_TOKEN}", channel: "#maintenance", api_url: "http://127.0.0.1:{port}/slack"}}
    retries: 3
  hook:
    slack: {{webhook: "http://127.0.0.1:{port}/hooks/slack"}}
  teams:
    teams: {{url: "http://127.0.0.1:{port}/teams"}}
  pd:
    pagerduty: {{routing_key: "{PD_KEY}", api_url: "http://127.0.0.1:{port}/pd"}}
    retries: 3
  tg:
    telegram: {{token: "{TG_TOKEN}", chat_id: -100123, api_url: "http://127.0.0.1:{port}/tg/"}}
"##
    )
}

/// The engine on its embedded broker with the channels pointed at `port`.
async fn start(dir: &std::path::Path, channels: &str, chain: &str) -> (Engine, Mqtt) {
    let (mqtt, http_port) = (free_port(), free_port());
    let cfg = format!("embedded_broker: {{listen: 127.0.0.1:{mqtt}}}\n{channels}");
    engine_dir(
        dir,
        &cfg,
        http_port,
        &[("hot.yaml", chain)],
        "devices: []\n",
    );
    let path = dir.join("rulechain.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let listen = format!("http: {{listen: 127.0.0.1:{http_port}}}");
    assert!(text.contains(&listen));
    std::fs::write(
        &path,
        text.replace(
            &listen,
            &format!(
                "http: {{listen: 127.0.0.1:{http_port}, base_url: \"https://rc.example.com/\"}}"
            ),
        ),
    )
    .unwrap();
    let engine = Engine::start(dir, http_port);
    let pubr = Mqtt::connect(mqtt, "channels-pub", true, &[]).await;
    (engine, pubr)
}

/// A device id that would break a naive template in every target: quotes, markup, an
/// ampersand, markdown.
const DEVICE: &str = "pump-\"7\"<b>&*x*";

#[tokio::test(flavor = "multi_thread")]
async fn one_message_per_alarm_edited_one_incident_and_everything_escaped() {
    let dir = tempdir("channels");
    let (svc, port) = Services::start();
    // Slack first answers 429 with Retry-After: 1, PagerDuty a 503: both are retried.
    svc.fail_first(
        "/slack/chat.postMessage",
        vec![(
            429,
            vec![("Retry-After".into(), "1".into())],
            r#"{"ok":false,"error":"ratelimited"}"#.into(),
        )],
    );
    svc.fail_first("/pd/v2/enqueue", vec![(503, vec![], "unavailable".into())]);
    let (engine, pubr) = start(&dir, &channels(port), CHAIN).await;
    pubr.publish(
        &format!("device/{DEVICE}/telemetry"),
        br#"{"temp": 70}"#.to_vec(),
    )
    .await;

    // Created: one Slack message, one webhook post, one card, one trigger, one Telegram message.
    let posts = wait_for(Duration::from_secs(15), || {
        let p = svc.on("/slack/chat.postMessage");
        (p.len() >= 2).then_some(p)
    })
    .expect("the Slack bot posts after its 429");
    assert!(
        posts[1].at.duration_since(posts[0].at) >= Duration::from_millis(950),
        "Retry-After is waited for"
    );
    assert_eq!(
        posts[1].headers.get("authorization").map(String::as_str),
        Some("Bearer xoxb-good")
    );
    let first = &posts[1].body;
    assert_eq!(first["channel"], "#maintenance");
    let blocks = first["attachments"][0]["blocks"].to_string();
    assert_eq!(
        first["attachments"][0]["color"], "#b71c1c",
        "critical colour"
    );
    assert!(
        blocks.contains("pump-\\\"7\\\"&lt;b&gt;&amp;*x*"),
        "Slack's control characters escaped: {blocks}"
    );
    assert!(
        blocks.contains("https://rc.example.com/#/alarm/Hot%3Apump%2D%227%22%3Cb%3E%26%2Ax%2A%3A"),
        "a link to the alarm: {blocks}"
    );
    assert!(!blocks.contains("<b>"), "{blocks}");
    let alarm_id = wait_for(Duration::from_secs(10), || {
        let (code, body) = http_as(engine.http, "GET", "/api/alarms", &[], "")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200)
            .then(|| v["alarms"][0]["id"].as_str().map(String::from))
            .flatten()
    })
    .expect("the alarm is listed");

    let pd = wait_for(Duration::from_secs(10), || {
        let p = svc.on("/pd/v2/enqueue");
        (p.len() >= 2).then_some(p)
    })
    .expect("PagerDuty is retried after its 503");
    assert_eq!(pd[1].body["event_action"], "trigger");
    assert_eq!(pd[1].body["dedup_key"], alarm_id.as_str());
    assert_eq!(pd[1].body["payload"]["severity"], "critical");
    assert_eq!(pd[1].body["payload"]["source"], DEVICE);
    assert_eq!(
        pd[1].body["links"][0]["href"]
            .as_str()
            .map(|l| l.starts_with("https://rc.example.com/#/alarm/")),
        Some(true)
    );

    let tg = wait_for(Duration::from_secs(10), || {
        svc.on(&format!("/tg/bot{TG_TOKEN}/sendMessage")).pop()
    })
    .expect("Telegram gets the message");
    assert_eq!(tg.body["chat_id"], -100123);
    assert_eq!(tg.body["parse_mode"], "HTML");
    let text = tg.body["text"].as_str().unwrap();
    assert!(
        text.contains("<code>pump-&quot;7&quot;&lt;b&gt;&amp;*x*</code>"),
        "{text}"
    );
    assert!(text.contains("at 70 &lt;b&gt;&amp;&lt;/b&gt;"), "{text}");

    let card =
        wait_for(Duration::from_secs(10), || svc.on("/teams").pop()).expect("Teams gets a card");
    let content = &card.body["attachments"][0]["content"];
    assert_eq!(
        card.body["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(content["type"], "AdaptiveCard");
    assert_eq!(
        content["body"][1]["facts"][0]["value"],
        "pump-\"7\"\\<b\\>&\\*x\\*"
    );
    assert_eq!(content["actions"][0]["type"], "Action.OpenUrl");
    let hook = wait_for(Duration::from_secs(10), || svc.on("/hooks/slack").pop())
        .expect("the Slack webhook is posted");
    assert!(hook.body["text"].as_str().unwrap().contains("&lt;b&gt;"));

    // Acknowledged on the API: every message edited, the incident acknowledged.
    let enc: String = alarm_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let acked_at = Instant::now();
    let (code, body) = http_as(
        engine.http,
        "POST",
        &format!("/api/alarms/{enc}/ack"),
        &[("content-type", "application/json")],
        r#"{"by":"alice"}"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let updates = wait_for(Duration::from_secs(10), || {
        let u = svc.on("/slack/chat.update");
        (!u.is_empty()).then_some(u)
    })
    .expect("the Slack message is edited on ack");
    assert!(updates[0].at.duration_since(acked_at) < Duration::from_secs(2));
    assert_eq!(
        updates[0].body["ts"], "1700000000.000001",
        "the first message is edited"
    );
    assert!(updates[0].body["attachments"][0]["blocks"]
        .to_string()
        .contains("Active, acknowledged by alice"));
    let edits = wait_for(Duration::from_secs(10), || {
        svc.on(&format!("/tg/bot{TG_TOKEN}/editMessageText")).pop()
    })
    .expect("the Telegram message is edited on ack");
    assert_eq!(edits.body["message_id"], 100);
    assert!(edits.body["text"]
        .as_str()
        .unwrap()
        .contains("acknowledged by alice"));
    wait_for(Duration::from_secs(10), || {
        svc.on("/pd/v2/enqueue")
            .iter()
            .any(|c| {
                c.body["event_action"] == "acknowledge" && c.body["dedup_key"] == alarm_id.as_str()
            })
            .then_some(())
    })
    .expect("the incident is acknowledged");

    // Cleared by the rule: edited again (green), the incident resolved.
    pubr.publish(
        &format!("device/{DEVICE}/telemetry"),
        br#"{"temp": 20}"#.to_vec(),
    )
    .await;
    wait_for(Duration::from_secs(10), || {
        svc.on("/pd/v2/enqueue")
            .iter()
            .any(|c| {
                c.body["event_action"] == "resolve" && c.body["dedup_key"] == alarm_id.as_str()
            })
            .then_some(())
    })
    .expect("the incident is resolved");
    // The chain notifies the ack and the clear, and the bot follows the alarm anyway: each
    // edits the one message (green once cleared), and each transition has one reply.
    let updates = wait_for(Duration::from_secs(10), || {
        let u = svc.on("/slack/chat.update");
        (u.last()?.body["attachments"][0]["color"] == "#2e7d32").then_some(u)
    })
    .expect("edited on clear: green");
    assert!(
        updates.iter().all(|u| u.body["ts"] == "1700000000.000001"),
        "every edit is of the one message"
    );
    wait_for(Duration::from_secs(10), || {
        (svc.on(&format!("/tg/bot{TG_TOKEN}/editMessageText")).len() >= 2).then_some(())
    })
    .expect("Telegram edited on clear");
    // One message per alarm, one thread reply per later transition. The bot edits before it
    // replies: wait for the clear's reply before counting.
    let posts = wait_for(Duration::from_secs(10), || {
        let p = svc.on("/slack/chat.postMessage");
        let replies = p
            .iter()
            .filter(|c| c.body["thread_ts"] == "1700000000.000001")
            .count();
        (replies >= 2).then_some(p)
    })
    .expect("a reply for the clear");
    let top: Vec<_> = posts
        .iter()
        .filter(|c| !c.body["thread_ts"].is_string() && c.body["attachments"].is_array())
        .collect();
    let replies: Vec<_> = posts
        .iter()
        .filter(|c| c.body["thread_ts"] == "1700000000.000001")
        .collect();
    assert_eq!(
        top.len(),
        2,
        "one top-level message (and its refused first attempt)"
    );
    assert_eq!(
        replies.len(),
        2,
        "a reply for the ack and one for the clear: {replies:?}"
    );
    assert!(replies[0].body["text"]
        .as_str()
        .unwrap()
        .contains("Acknowledged by alice"));
    assert_eq!(
        svc.on(&format!("/tg/bot{TG_TOKEN}/sendMessage")).len(),
        1,
        "one Telegram message"
    );
    // The webhook and Teams deliveries run on their own: wait for their third post (the clear)
    // before counting, so a slow delivery is not counted as a missing one.
    wait_for(Duration::from_secs(10), || {
        (svc.on("/hooks/slack").len() >= 3 && svc.on("/teams").len() >= 3).then_some(())
    })
    .expect("the webhook and Teams get the clear");
    assert_eq!(
        svc.on("/hooks/slack").len(),
        3,
        "the webhook posts each transition"
    );
    assert_eq!(svc.on("/teams").len(), 3);
    // Nobody ever got a body that was not JSON.
    assert!(svc
        .calls
        .lock()
        .unwrap()
        .iter()
        .all(|c| c.body.get("NOT_JSON").is_none()));
    let (_, status) = http_as(engine.http, "GET", "/api/status", &[], "").unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    let ch = &status["notify"]["channels"];
    assert_eq!(ch["bot"]["failed"], 0, "{ch}");
    assert_eq!(ch["pd"]["failed"], 0, "{ch}");
    let triggers = svc
        .on("/pd/v2/enqueue")
        .iter()
        .filter(|c| c.body["event_action"] == "trigger")
        .count();
    assert_eq!(triggers, 2, "one trigger (and its refused first attempt)");
    let via = ch["tg"]["via"].as_str().unwrap();
    assert!(!via.contains(TG_TOKEN), "no token in the status: {via}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_token_or_key_fails_at_once_with_the_services_reason() {
    let dir = tempdir("channels-bad");
    let (svc, port) = Services::start();
    let channels = format!(
        r##"channels:
  bot:
    slack: {{token: "xoxb-revoked", channel: "#maintenance", api_url: "http://127.0.0.1:{port}/slack"}}
  pd:
    pagerduty: {{routing_key: "wrong", api_url: "http://127.0.0.1:{port}/pd"}}
  tg:
    telegram: {{token: "999:bad", chat_id: "@ops", api_url: "http://127.0.0.1:{port}/tg"}}
"##
    );
    let chain = CHAIN.replace("[bot, hook, teams, pd, tg]", "[bot, pd, tg]");
    let (engine, pubr) = start(&dir, &channels, &chain).await;
    pubr.publish("device/pump-1/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    let status = wait_for(Duration::from_secs(15), || {
        let (_, s) = http_as(engine.http, "GET", "/api/status", &[], "")?;
        let v: Value = serde_json::from_str(&s).ok()?;
        let ch = &v["notify"]["channels"];
        (["bot", "pd", "tg"].iter().all(|c| ch[c]["failed"] == 1)).then(|| ch.clone())
    })
    .expect("each refusal fails its notification");
    for c in ["bot", "pd", "tg"] {
        assert_eq!(
            status[c]["attempts_failed"], 1,
            "a refusal is not retried: {status}"
        );
    }
    assert!(
        status["bot"]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_auth"),
        "{status}"
    );
    assert!(
        status["pd"]["last_error"]
            .as_str()
            .unwrap()
            .contains("Invalid routing key"),
        "{status}"
    );
    let tg = status["tg"]["last_error"].as_str().unwrap();
    assert!(
        tg.contains("401 Unauthorized") && !tg.contains("999:bad"),
        "{tg}"
    );
    assert_eq!(svc.on("/slack/chat.postMessage").len(), 1);
}

#[test]
fn notify_test_sends_through_each_channel_and_closes_what_follows_an_alarm() {
    let dir = tempdir("channels-notify-test");
    let (svc, port) = Services::start();
    std::fs::write(
        dir.join("rulechain.yaml"),
        format!(
            "http: {{base_url: \"https://rc.example.com\"}}\n{}",
            channels(port)
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    for (ch, path, calls) in [
        ("bot", "/slack/chat.postMessage", 2),
        ("hook", "/hooks/slack", 1),
        ("teams", "/teams", 1),
        ("pd", "/pd/v2/enqueue", 2),
        ("tg", "/tg/bot123:good/sendMessage", 1),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .current_dir(&dir)
            .args(["notify-test", "--config", "rulechain.yaml", ch])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{ch}: {text}");
        assert!(text.contains("delivered in"), "{ch}: {text}");
        assert_eq!(svc.on(path).len(), calls, "{ch}: {text}");
    }
    // The incident is resolved, the bots' messages edited as closed.
    let pd = svc.on("/pd/v2/enqueue");
    assert_eq!(pd[0].body["event_action"], "trigger");
    assert_eq!(pd[1].body["event_action"], "resolve");
    assert_eq!(pd[0].body["dedup_key"], pd[1].body["dedup_key"]);
    let upd = svc.on("/slack/chat.update");
    assert_eq!(upd.len(), 1);
    assert_eq!(upd[0].body["attachments"][0]["color"], "#2e7d32");
    assert_eq!(svc.on("/tg/bot123:good/editMessageText").len(), 1);
}

/// `(status, JSON body)` of an API request.
fn api(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let (code, out) = http_as(
        port,
        method,
        path,
        &[("content-type", "application/json")],
        &text,
    )
    .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    (code, serde_json::from_str(&out).unwrap_or(Value::Null))
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The open alarm of a device, once listed.
fn alarm_of(port: u16, device: &str) -> Value {
    wait_for(Duration::from_secs(10), || {
        let (_, v) = api(port, "GET", "/api/alarms", None);
        v["alarms"]
            .as_array()?
            .iter()
            .find(|a| a["device"] == device)
            .cloned()
    })
    .unwrap_or_else(|| panic!("no alarm on {device}"))
}

const DESK: &str = r#"
chain: hot
nodes:
  - id: check
    filter: msg.temp > 50
    else: cool
  - id: raise
    alarm: { type: Hot, severity: MAJOR, message: "${meta.device} at ${msg.temp}" }
  - id: tell
    notify: [hook]
    next: []
  - id: cool
    alarm: { type: Hot, action: clear }
"#;

const OFFLINE: &str = r#"
chain: offline
on: { when: msg.online == false || msg.online == true }
nodes:
  - id: down
    filter: msg.online == false
    else: up
  - id: raise
    alarm: { type: Offline, severity: MAJOR, message: "${meta.device} is offline" }
    next: []
  - id: up
    alarm: { type: Offline, action: clear }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn silences_hold_notifications_expire_on_time_or_on_clear_and_survive_a_restart() {
    let dir = tempdir("silences");
    let (svc, port) = Services::start();
    let (mut engine, pubr) = start(
        &dir,
        &format!(
            "channels:\n  hook:\n    slack: {{webhook: \"http://127.0.0.1:{port}/hooks/slack\"}}\n"
        ),
        DESK,
    )
    .await;
    let http = engine.http;
    // A silence for 3 s on every pump's Hot alarm.
    let (code, s) = api(
        http,
        "POST",
        "/api/silences",
        Some(json!({
            "matchers": {"device": "pump-*", "type": "Hot"}, "duration": "3s",
            "comment": "pump maintenance", "by": "ana"
        })),
    );
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["state"], "active");
    let sid = s["id"].as_str().unwrap().to_string();
    pubr.publish("device/pump-1/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    // Still raised, stored and shown, marked silenced; its notification held and counted.
    let a = alarm_of(http, "pump-1");
    assert_eq!(a["silenced_by"], sid.as_str());
    let held = wait_for(Duration::from_secs(10), || {
        let st = engine.status();
        (st["notify"]["channels"]["hook"]["held"] == 1).then_some(st)
    });
    assert!(held.is_some(), "the notification is held");
    // A fan is not matched: its notification goes out.
    pubr.publish("device/fan-1/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    wait_for(Duration::from_secs(10), || {
        (svc.on("/hooks/slack").len() == 1).then_some(())
    })
    .expect("the fan's alarm is notified");
    assert!(svc.on("/hooks/slack")[0].body["text"]
        .as_str()
        .unwrap()
        .contains("fan-1"));
    // The history says what happened and who did it; a comment joins it.
    let id = a["id"].as_str().unwrap().to_string();
    let (code, c) = api(
        http,
        "POST",
        &format!("/api/alarms/{}/comments", pct(&id)),
        Some(json!({"text": "valve swapped", "by": "bo"})),
    );
    assert_eq!(code, 201, "{c}");
    let (code, h) = api(
        http,
        "GET",
        &format!("/api/alarms/{}/history", pct(&id)),
        None,
    );
    assert_eq!(code, 200);
    let kinds: Vec<(&str, &str)> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("created", "rule"), ("held", "hook"), ("comment", "bo")],
        "{h}"
    );
    assert_eq!(h["history"][1]["text"], format!("silence {sid}"));
    assert_eq!(
        api(
            http,
            "POST",
            "/api/alarms/nope/comments",
            Some(json!({"text": "x"}))
        )
        .0,
        404
    );
    assert_eq!(
        api(
            http,
            "POST",
            &format!("/api/alarms/{}/comments", pct(&id)),
            Some(json!({"text": "  "}))
        )
        .0,
        422
    );
    // The silence ends on time: the next pump alarm is notified.
    wait_for(Duration::from_secs(10), || {
        let (_, v) = api(http, "GET", &format!("/api/silences/{sid}"), None);
        (v["state"] == "expired").then_some(())
    })
    .expect("the silence expires after its 3 s");
    pubr.publish("device/pump-2/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    wait_for(Duration::from_secs(10), || {
        (svc.on("/hooks/slack").len() == 2).then_some(())
    })
    .expect("notified once the silence is over");

    // One that ends when the alarm clears, made with the CLI.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulechain"))
            .args(["silence", "--url", &format!("http://127.0.0.1:{http}")])
            .args(args)
            .env_remove("RULECHAIN_TOKEN")
            .current_dir(&dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&[
        "add",
        "-m",
        "device=pump-3",
        "--duration",
        "1h",
        "--expire-on-clear",
        "-c",
        "bearing swap",
        "--by",
        "cy",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let clear_id = out.trim().to_string();
    let (code, out, _) = cli(&["list", "--state", "active"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&clear_id) && out.contains("device=pump-3") && out.contains("bearing swap"),
        "{out}"
    );
    let (code, _, err) = cli(&["add", "-m", "colour=red", "--duration", "1h", "-c", "x"]);
    assert_eq!(code, Some(1), "refused");
    assert!(err.contains("unknown matcher `colour`"), "{err}");
    pubr.publish("device/pump-3/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    alarm_of(http, "pump-3");
    pubr.publish("device/pump-3/telemetry", br#"{"temp": 20}"#.to_vec())
        .await;
    wait_for(Duration::from_secs(10), || {
        let (_, v) = api(http, "GET", &format!("/api/silences/{clear_id}"), None);
        (v["state"] == "expired" && v["expired_by"].as_str()?.contains("Hot:pump-3")).then_some(())
    })
    .expect("the clear ends the silence");
    // A weekly window, and one expired by hand.
    let (code, w) = api(
        http,
        "POST",
        "/api/silences",
        Some(json!({
            "matchers": {"device_type": "chiller"}, "starts_at": "2020-01-04T02:00:00Z", "duration": "2h", "every": "7d", "comment": "weekly window"
        })),
    );
    assert_eq!(code, 201, "{w}");
    let wid = w["id"].as_str().unwrap().to_string();
    let (code, out, _) = cli(&["expire", &wid, "--by", "dee"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, bad) = api(
        http,
        "POST",
        "/api/silences",
        Some(json!({"matchers": {"device": "x"}})),
    );
    assert_eq!(code, 400);
    assert!(
        bad["error"].as_str().unwrap().contains("needs an end"),
        "{bad}"
    );
    assert_eq!(api(http, "DELETE", "/api/silences/nope", None).0, 404);

    // A restart keeps the silences and the history.
    let stopped = engine.stop();
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    engine.restart();
    let http = engine.http;
    let (_, l) = api(http, "GET", "/api/silences", None);
    let ids: Vec<&str> = l["silences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for want in [&sid, &clear_id, &wid] {
        assert!(ids.contains(&want.as_str()), "{want} kept: {l}");
    }
    assert!(l["silences"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "expired"));
    let (_, h) = api(
        http,
        "GET",
        &format!("/api/alarms/{}/history", pct(&id)),
        None,
    );
    assert_eq!(h["history"][2]["text"], "valve swapped", "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_offline_alarm_inhibits_the_devices_other_notifications() {
    let dir = tempdir("inhibit");
    let (svc, port) = Services::start();
    let cfg = format!(
        "channels:\n  hook:\n    slack: {{webhook: \"http://127.0.0.1:{port}/hooks/slack\"}}\ninhibit:\n  - {{source: {{type: Offline}}, target: {{type: Hot}}, equal: [device]}}\n"
    );
    let (mqtt, http_port) = (free_port(), free_port());
    engine_dir(
        &dir,
        &format!("embedded_broker: {{listen: 127.0.0.1:{mqtt}}}\n{cfg}"),
        http_port,
        &[("hot.yaml", DESK), ("offline.yaml", OFFLINE)],
        "devices: []\n",
    );
    let engine = Engine::start(&dir, http_port);
    let pubr = Mqtt::connect(mqtt, "inhibit-pub", true, &[]).await;
    pubr.publish("device/pump-5/telemetry", br#"{"online": false}"#.to_vec())
        .await;
    alarm_of(http_port, "pump-5");
    pubr.publish("device/pump-5/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    pubr.publish("device/pump-6/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    wait_for(Duration::from_secs(10), || {
        (svc.on("/hooks/slack").len() == 1).then_some(())
    })
    .expect("pump-6's alarm is notified");
    assert!(svc.on("/hooks/slack")[0].body["text"]
        .as_str()
        .unwrap()
        .contains("pump-6"));
    let hot = wait_for(Duration::from_secs(10), || {
        let (_, v) = api(http_port, "GET", "/api/alarms?device=pump-5", None);
        v["alarms"]
            .as_array()?
            .iter()
            .find(|a| a["type"] == "Hot")
            .cloned()
    })
    .expect("pump-5's Hot alarm is raised and shown");
    assert!(
        hot["inhibited_by"]
            .as_str()
            .unwrap()
            .starts_with("Offline:pump-5"),
        "{hot}"
    );
    wait_for(Duration::from_secs(10), || {
        (engine.status()["notify"]["channels"]["hook"]["held"] == 1).then_some(())
    })
    .expect("held, counted");
    assert_eq!(svc.on("/hooks/slack").len(), 1, "nothing for pump-5's Hot");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_before_the_delivery_loses_no_notification_and_sends_none_twice() {
    let dir = tempdir("outbox-kill");
    let (svc, port) = Services::start();
    // The receiver refuses (503) until the engine is killed: the notification is in retries.
    svc.fail_first(
        "/hook",
        (0..1000)
            .map(|_| (503, vec![], "down".to_string()))
            .collect(),
    );
    let (mut engine, pubr) = start(
        &dir,
        &format!("channels:\n  hook:\n    webhook: {{url: \"http://127.0.0.1:{port}/hook\"}}\n    retries: 50\n"),
        DESK,
    )
    .await;
    pubr.publish("device/pump-1/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    let tried = wait_for(Duration::from_secs(10), || svc.on("/hook").pop())
        .expect("the delivery is attempted");
    let key = tried.headers["idempotency-key"].clone();
    assert!(
        key.starts_with("Hot:pump-1:") && key.ends_with("/created"),
        "{key}"
    );
    engine.kill9();
    svc.fail_first("/hook", vec![]);
    let before = svc.on("/hook").len();
    engine.restart();
    let delivered = wait_for(Duration::from_secs(15), || {
        let calls = svc.on("/hook");
        (calls.len() > before).then(|| calls[before].clone())
    })
    .expect("delivered after the restart");
    assert_eq!(
        delivered.headers["idempotency-key"], key,
        "the same notification"
    );
    assert_eq!(delivered.body["alarm"]["transition"], "created");
    // Delivered once: not again, nor after another kill -9 and start.
    std::thread::sleep(Duration::from_millis(1500));
    engine.kill9();
    engine.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(svc.on("/hook").len(), before + 1, "sent once");
}

#[tokio::test(flavor = "multi_thread")]
async fn reminders_go_on_on_their_schedule_after_a_kill_9() {
    let dir = tempdir("reminder-kill");
    let (svc, port) = Services::start();
    let (mut engine, pubr) = start(
        &dir,
        &format!("channels:\n  hook:\n    webhook: {{url: \"http://127.0.0.1:{port}/hook\"}}\n    repeat_interval: 4s\n"),
        DESK,
    )
    .await;
    pubr.publish("device/pump-1/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    let first = wait_for(Duration::from_secs(10), || svc.on("/hook").pop()).expect("notified");
    let reminder = wait_for(Duration::from_secs(10), || {
        svc.on("/hook")
            .into_iter()
            .find(|c| c.body["reminder"] == true)
    })
    .expect("a first reminder");
    let every = reminder.at.duration_since(first.at);
    assert!(every >= Duration::from_millis(3500), "{every:?}");
    // The next reminder is due 4 s after this one; the engine dies 2.5 s in (its memory saved
    // every 2 s) and comes back.
    std::thread::sleep(Duration::from_millis(2500));
    engine.kill9();
    let n = svc.on("/hook").len();
    engine.restart();
    let next = wait_for(Duration::from_secs(10), || svc.on("/hook").get(n).cloned())
        .expect("the reminder cycle goes on after the restart");
    assert_eq!(next.body["reminder"], true);
    assert_eq!(next.body["alarm"]["id"], first.body["alarm"]["id"]);
    let due = reminder.at + Duration::from_secs(4);
    assert!(
        next.at + Duration::from_millis(300) >= due,
        "not before its time: {:?} early",
        due.duration_since(next.at)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledgement_reaches_every_bot_message_and_incident_though_the_chain_passes_only_created(
) {
    let dir = tempdir("channels-follow");
    let (svc, port) = Services::start();
    // DESK notifies the creation only (the alarm node's default `pass`), and not the clear.
    let chain = DESK.replace("notify: [hook]", "notify: [bot, pd, tg]");
    let (engine, pubr) = start(&dir, &channels(port), &chain).await;
    pubr.publish("device/pump-9/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    let a = alarm_of(engine.http, "pump-9");
    let id = a["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(10), || {
        (svc.on("/slack/chat.postMessage").len() == 1
            && svc.on("/pd/v2/enqueue").len() == 1
            && svc.on(&format!("/tg/bot{TG_TOKEN}/sendMessage")).len() == 1)
            .then_some(())
    })
    .expect("posted, triggered, sent");
    let acked = Instant::now();
    let (code, _) = api(
        engine.http,
        "POST",
        &format!("/api/alarms/{}/ack", pct(&id)),
        Some(json!({"by": "ana"})),
    );
    assert_eq!(code, 200);
    let edited = wait_for(Duration::from_secs(10), || {
        svc.on("/slack/chat.update").pop()
    })
    .expect("the Slack message is edited");
    assert!(edited.at.duration_since(acked) < Duration::from_secs(2));
    assert!(edited.body["attachments"][0]["blocks"]
        .to_string()
        .contains("Active, acknowledged by ana"));
    wait_for(Duration::from_secs(10), || {
        svc.on("/pd/v2/enqueue")
            .iter()
            .any(|c| c.body["event_action"] == "acknowledge" && c.body["dedup_key"] == id.as_str())
            .then_some(())
    })
    .expect("the incident is acknowledged");
    wait_for(Duration::from_secs(10), || {
        svc.on(&format!("/tg/bot{TG_TOKEN}/editMessageText")).pop()
    })
    .expect("the Telegram message is edited");
    // The clear, which the chain notifies nowhere, closes them too.
    pubr.publish("device/pump-9/telemetry", br#"{"temp": 20}"#.to_vec())
        .await;
    wait_for(Duration::from_secs(10), || {
        svc.on("/pd/v2/enqueue")
            .iter()
            .any(|c| c.body["event_action"] == "resolve")
            .then_some(())
    })
    .expect("the incident is resolved");
    let last = wait_for(Duration::from_secs(10), || {
        let u = svc.on("/slack/chat.update");
        (u.len() == 2).then(|| u[1].clone())
    })
    .expect("edited again on the clear");
    assert_eq!(last.body["attachments"][0]["color"], "#2e7d32");
    // The bot edits before it replies: wait for the clear's reply, then count.
    let replies = wait_for(Duration::from_secs(10), || {
        let n = svc
            .on("/slack/chat.postMessage")
            .iter()
            .filter(|c| c.body["thread_ts"].is_string())
            .count();
        (n >= 2).then_some(n)
    })
    .expect("a reply for the clear");
    assert_eq!(replies, 2, "one reply per later transition");
    // A channel that posted nothing for an alarm hears nothing of it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(svc.on("/hooks/slack").len(), 0);
    assert_eq!(svc.on("/teams").len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unacknowledged_alarm_escalates_step_by_step_and_an_acknowledged_one_does_not() {
    let dir = tempdir("escalate");
    let (svc, port) = Services::start();
    let cfg = format!(
        r#"channels:
  hook:
    slack: {{webhook: "http://127.0.0.1:{port}/hooks/slack"}}
    escalate:
      - {{after: 1s, to: [teams]}}
      - {{after: 2s, to: [pd]}}
  teams:
    teams: {{url: "http://127.0.0.1:{port}/teams"}}
  pd:
    pagerduty: {{routing_key: "{PD_KEY}", api_url: "http://127.0.0.1:{port}/pd"}}
"#
    );
    let (engine, pubr) = start(&dir, &cfg, DESK).await;
    pubr.publish("device/pump-1/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    pubr.publish("device/pump-2/telemetry", br#"{"temp": 70}"#.to_vec())
        .await;
    let acked = alarm_of(engine.http, "pump-2");
    let (code, _) = api(
        engine.http,
        "POST",
        &format!("/api/alarms/{}/ack", pct(acked["id"].as_str().unwrap())),
        Some(json!({"by": "ana"})),
    );
    assert_eq!(code, 200);
    let notified = wait_for(Duration::from_secs(10), || {
        let h = svc.on("/hooks/slack");
        (h.len() == 2).then(|| h[0].at.min(h[1].at))
    })
    .expect("both notified");
    let card = wait_for(Duration::from_secs(10), || svc.on("/teams").pop()).expect("step 1");
    assert!(card.at.duration_since(notified) >= Duration::from_millis(900));
    let headline = card.body["attachments"][0]["content"]["body"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        headline.contains("Escalated \\(step 1 of hook\\)") && headline.contains("pump-1"),
        "{headline}"
    );
    let page =
        wait_for(Duration::from_secs(10), || svc.on("/pd/v2/enqueue").pop()).expect("step 2");
    assert!(page.at.duration_since(notified) >= Duration::from_millis(1900));
    assert_eq!(page.body["event_action"], "trigger");
    assert_eq!(page.body["payload"]["source"], "pump-1");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        svc.on("/teams").len(),
        1,
        "the acknowledged alarm is not escalated"
    );
    assert_eq!(svc.on("/pd/v2/enqueue").len(), 1);
    assert_eq!(
        engine.status()["notify"]["channels"]["hook"]["escalations"],
        2
    );
    let (_, h) = api(
        engine.http,
        "GET",
        &format!(
            "/api/alarms/{}/history",
            pct(alarm_of(engine.http, "pump-1")["id"].as_str().unwrap())
        ),
        None,
    );
    let steps = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "escalated")
        .count();
    assert_eq!(steps, 2, "{h}");
}
