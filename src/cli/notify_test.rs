//! `rulechain notify-test CHANNEL`: renders the channel's templates for a sample alarm, sends
//! it once (no retries, no fallback) and reports what happened, so a channel can be checked
//! before a real alarm depends on it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rhai::{Dynamic, Map};

use crate::diag::Diagnostics;
use crate::script::{Runtime, Template, Vars};
use crate::sinks::notify::{Notice, Transport};

/// The sample alarm sent.
fn sample_alarm(device: &str, now: i64) -> crate::alarm::Alarm {
    crate::alarm::Alarm {
        id: format!("TestAlarm:{device}:{now}"),
        device: device.to_string(),
        type_: "TestAlarm".into(),
        severity: crate::alarm::Severity::Warning,
        status: crate::alarm::Status::ActiveUnack,
        message: format!("a test notification from rulechain notify-test for {device}"),
        details: Map::new(),
        start_ts: now,
        last_ts: now,
        end_ts: None,
        count: 1,
        origin: None,
        acked_by: None,
        cleared_by: None,
    }
}

/// Runs `notify-test`.
pub fn run(config: &Path, channel: &str, device: &str) -> i32 {
    let mut diags = Diagnostics::new();
    let Some(cfg) = super::load_config(Some(config), &mut diags) else {
        eprint!("{}", diags.render_text());
        return super::EXIT_FINDINGS;
    };
    let Some(spec) = cfg.channels.get(channel) else {
        let known: Vec<&str> = cfg.channels.keys().map(String::as_str).collect();
        eprintln!(
            "error: no channel `{channel}` in {} (known: {})",
            config.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        return super::EXIT_USAGE;
    };
    let now = crate::engine::clock::wall_ms();
    let alarm = sample_alarm(device, now);
    let transition = crate::alarm::Transition::Created;
    let alarm_map = alarm.to_map(transition);
    // The templates see what a `notify` after an alarm node sees.
    let mut msg = Map::new();
    msg.insert("alarm".into(), Dynamic::from_map(alarm_map.clone()));
    let mut meta = Map::new();
    meta.insert("device".into(), device.to_string().into());
    meta.insert("device_type".into(), Dynamic::UNIT);
    meta.insert("kind".into(), "telemetry".into());
    meta.insert("topic".into(), Dynamic::UNIT);
    meta.insert("ts".into(), now.into());
    let mut vars = Vars {
        msg: Dynamic::from_map(msg.clone()),
        attr: Dynamic::from_map(Map::new()),
        meta: Dynamic::from_map(meta),
    };
    let engine = Arc::new(crate::script::new_engine());
    let mut rt = Runtime::new(engine.clone());
    let (mut subject, mut body) = crate::rules::nodes::notify::alarm_text(&alarm_map);
    for (t, out) in [(&spec.subject, &mut subject), (&spec.body, &mut body)] {
        if let Some(t) = t {
            let rendered = Template::compile(&engine, t)
                .map_err(|e| e.message)
                .and_then(|t| t.render(&mut rt, &mut vars));
            match rendered {
                Ok(s) => *out = s,
                Err(e) => {
                    eprintln!(
                        "error: channel `{channel}`: a template failed on the sample alarm: {e}"
                    );
                    return super::EXIT_FINDINGS;
                }
            }
        }
    }
    if let Some(j) = &spec.body_json {
        let rendered = crate::script::JsonTemplate::compile(&engine, &j.value)
            .map_err(|(at, e)| format!("at `{at}`: {}", e.message))
            .and_then(|t| t.render(&mut rt, &mut vars));
        match rendered {
            Ok(v) => body = v.to_string(),
            Err(e) => {
                eprintln!(
                    "error: channel `{channel}`: `body_json` failed on the sample alarm: {e}"
                );
                return super::EXIT_FINDINGS;
            }
        }
    }
    let notice = Notice {
        channel: channel.to_string(),
        chain: "notify-test".into(),
        node: "notify-test".into(),
        device: device.into(),
        ts: now,
        subject,
        body,
        data: serde_json::json!({
            "alarm": crate::alarm::registry::alarm_json(&alarm, transition.as_str())
        }),
        reminder: false,
        fallback_from: None,
        receipt: None,
        rearm: false,
        follow: false,
        escalation: None,
    };
    let rt = match super::client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // The config was checked by the same function; this gives the channel's typed settings.
    let settings = match crate::config::settings::resolve(Some(config), Some(&cfg), None) {
        Ok(s) => s,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {}:{p}", config.display());
            }
            return super::EXIT_FINDINGS;
        }
    };
    let Some(ch) = settings.channels.get(channel) else {
        eprintln!("error: channel `{channel}` has errors; run `rulechain validate`");
        return super::EXIT_FINDINGS;
    };
    let policy = &ch.policy;
    let outcome = rt.block_on(async {
        let transport = Transport::build(channel, ch)?;
        let via = transport.describe();
        println!("sending a sample alarm through `{channel}` ({via})");
        println!("  subject: {}", notice.subject);
        println!("  body:    {}", notice.body);
        let start = Instant::now();
        let sent = tokio::time::timeout(policy.timeout, transport.deliver(&notice)).await;
        if matches!(sent, Ok(Ok(()))) && transport.follows_alarms() {
            // A bot's message and an incident follow their alarm: the sample is closed at once,
            // so the test leaves no open incident and shows the message edited.
            let took = start.elapsed();
            let mut closed = alarm.clone();
            closed.status = crate::alarm::Status::ClearedAck;
            closed.cleared_by = Some("notify-test".into());
            closed.acked_by = Some("notify-test".into());
            closed.end_ts = Some(now);
            let mut follow = notice.clone();
            follow.data = serde_json::json!({
                "alarm": crate::alarm::registry::alarm_json(&closed, crate::alarm::Transition::Cleared.as_str())
            });
            return match tokio::time::timeout(policy.timeout, transport.deliver(&follow)).await {
                Ok(Ok(())) => {
                    println!("then closed it (cleared and acknowledged): the message edited, the incident resolved");
                    Ok(took)
                }
                Ok(Err(e)) => Err(format!("the sample was delivered, closing it failed: {e}")),
                Err(_) => Err("the sample was delivered, closing it got no answer".into()),
            };
        }
        match sent {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(e)) if e.permanent => Err(format!(
                "{e} (the receiver refuses it: retrying would not help)"
            )),
            Ok(Err(e)) => Err(e.text),
            Err(_) => Err(format!(
                "no answer within {} ms (the channel's `timeout`)",
                policy.timeout.as_millis()
            )),
        }
    });
    match outcome {
        Ok(took) => {
            println!("delivered in {} ms", took.as_millis());
            super::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: `{channel}` failed: {e}");
            super::EXIT_FINDINGS
        }
    }
}
