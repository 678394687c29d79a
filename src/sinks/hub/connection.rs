//! One WebSocket connection: the client's commands in (a tagged enum, `op`), its queue's frames
//! out, pings, and the close codes that say why it ended.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{Client, Hub, Slot};

impl Hub {
    /// Serves one WebSocket connection until it closes.
    pub async fn serve(self: Arc<Self>, mut socket: WebSocket, _slot: Slot) {
        let client = Arc::new(Client {
            id: self.next_id.fetch_add(1, Relaxed),
            queue: Mutex::default(),
            wake: Notify::new(),
        });
        let mut ping = tokio::time::interval(self.settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut unanswered = 0u32;
        let reason = loop {
            tokio::select! {
                m = socket.recv() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => break read_error_close(e),
                        None => break None,
                    };
                    unanswered = 0;
                    match m {
                        Message::Text(t) => {
                            let reply = self.command(&client, t.as_str()).await;
                            if let Some(r) = reply {
                                if socket.send(Message::Text(r.to_string().into())).await.is_err() {
                                    break None;
                                }
                            }
                        }
                        Message::Close(_) => break None,
                        Message::Binary(_) => {
                            let e = json!({"op":"error","error":"binary frames are not understood: send JSON text"});
                            if socket.send(Message::Text(e.to_string().into())).await.is_err() {
                                break None;
                            }
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                _ = client.wake.notified() => {
                    let (missed, frames) = client.take();
                    let mut ok = true;
                    for (room, n) in missed {
                        let f = json!({"op":"lagged","room":&*room,"missed":n}).to_string();
                        if socket.send(Message::Text(f.into())).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        for (_, f) in frames {
                            if socket.send(Message::Text(f)).await.is_err() {
                                ok = false;
                                break;
                            }
                        }
                    }
                    if !ok {
                        break None;
                    }
                }
                _ = ping.tick() => {
                    if unanswered >= 2 {
                        self.stats.timed_out.fetch_add(1, Relaxed);
                        break Some((1001u16, "no pong to two pings"));
                    }
                    unanswered += 1;
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break None;
                    }
                }
            }
        };
        self.leave(&client);
        if let Some((code, text)) = reason {
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: text.into(),
                })))
                .await;
        }
    }

    pub(super) async fn command(&self, c: &Arc<Client>, text: &str) -> Option<Value> {
        let cmd = match Command::parse(text) {
            Ok(cmd) => cmd,
            Err(e) => return Some(json!({"op":"error","error":e})),
        };
        match cmd {
            Command::Subscribe { rooms, since } => match self.subscribe(c, &rooms, &since) {
                Ok(done) => {
                    // After the snapshots, in the same queue.
                    let f = json!({"op":"subscribed","rooms":done}).to_string();
                    c.push(&Arc::from(""), f.into(), usize::MAX, &self.stats);
                    None
                }
                Err(e) => Some(json!({"op":"error","error":e})),
            },
            Command::Unsubscribe { rooms } => {
                self.unsubscribe(c, &rooms);
                Some(json!({"op":"unsubscribed","rooms":rooms}))
            }
            Command::Ack { alarm, by } => {
                Some(match self.alarms.ack(&alarm, by.as_deref()).await {
                    Ok(status) => json!({"op":"acked","alarm":alarm,"status":status}),
                    Err(e) => json!({"op":"error","alarm":alarm,"error":e.to_string()}),
                })
            }
        }
    }
}

/// What a client may send: JSON text tagged by `op` (other fields are ignored).
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Command {
    /// `{"op":"subscribe","rooms":[...]}`: a snapshot of each room, then its frames. A name
    /// ending in `*` subscribes to every room it prefixes.
    /// With `"since":{"<room>":N}` (the last seq the client saw of a room, before it
    /// reconnected): the frames after N instead of the snapshot while they are kept, or a
    /// snapshot with `"resync":true` once they are not.
    Subscribe {
        rooms: Vec<String>,
        #[serde(default)]
        since: std::collections::HashMap<String, u64>,
    },
    /// `{"op":"unsubscribe","rooms":[...]}`.
    Unsubscribe { rooms: Vec<String> },
    /// `{"op":"ack","alarm":"<id>","by":"<who>"}`: acknowledges an alarm through its device's
    /// shard (`by`, optional: the operator's name, kept with the alarm).
    Ack {
        alarm: String,
        #[serde(default, deserialize_with = "operator_name")]
        by: Option<String>,
    },
}

fn operator_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    Ok(s.as_deref().and_then(crate::alarm::operator_name))
}

impl Command {
    /// Parses a text frame; the error tells the client what a well-formed one looks like.
    fn parse(text: &str) -> Result<Command, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let op = v
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        serde::Deserialize::deserialize(v).map_err(|_| match op.as_str() {
            "subscribe" | "unsubscribe" => {
                format!("`{op}` needs `rooms`: a list of room names (strings)")
            }
            "ack" => "`ack` needs `alarm`: the alarm id".to_string(),
            other => format!("unknown op `{other}`: use subscribe, unsubscribe or ack"),
        })
    }
}

/// How a connection whose read failed is closed: a frame or message over the limit gets 1009
/// (RFC 6455's "message too big", so the client knows why), a protocol violation 1002; a
/// connection that is gone gets nothing.
fn read_error_close(e: axum::Error) -> Option<(u16, &'static str)> {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some((1009, "message too big: at most 64 KiB")),
        Some(tungstenite::Error::Protocol(_)) => Some((1002, "protocol error")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_to_their_variants_or_say_what_is_expected() {
        assert_eq!(
            Command::parse(r#"{"op":"subscribe","rooms":["alarms","device/*"],"x":1}"#),
            Ok(Command::Subscribe {
                rooms: vec!["alarms".into(), "device/*".into()],
                since: Default::default(),
            })
        );
        assert_eq!(
            Command::parse(r#"{"op":"subscribe","rooms":["alarms"],"since":{"alarms":7}}"#),
            Ok(Command::Subscribe {
                rooms: vec!["alarms".into()],
                since: [("alarms".to_string(), 7)].into_iter().collect(),
            })
        );
        assert_eq!(
            Command::parse(r#"{"op":"ack","alarm":"A:p1:1"}"#),
            Ok(Command::Ack {
                alarm: "A:p1:1".into(),
                by: None,
            })
        );
        assert_eq!(
            Command::parse(r#"{"op":"ack","alarm":"A:p1:1","by":"  ana\n"}"#),
            Ok(Command::Ack {
                alarm: "A:p1:1".into(),
                by: Some("ana".into()),
            })
        );
        for (text, says) in [
            ("{", "not JSON"),
            (
                r#"{"op":"subscribe","rooms":[1]}"#,
                "`subscribe` needs `rooms`",
            ),
            (r#"{"op":"unsubscribe"}"#, "`unsubscribe` needs `rooms`"),
            (r#"{"op":"ack","alarm":7}"#, "`ack` needs `alarm`"),
            (r#"{"op":"shout"}"#, "unknown op `shout`"),
            (r#"[]"#, "unknown op ``"),
        ] {
            let e = Command::parse(text).unwrap_err();
            assert!(e.starts_with(says), "{text}: {e}");
        }
    }
}
