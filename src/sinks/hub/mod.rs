//! The WebSocket hub: rooms, per-room sequence numbers, snapshots on subscribe, bounded
//! per-client queues, heartbeats, and alarm acknowledgement (protocol in the README).
//!
//! Shards publish into the hub without waiting: a publish serializes the frame once, takes the
//! next sequence number of its room and appends the frame to each subscriber's queue. A queue
//! that is full loses its oldest frame and counts it per room; the client's task tells the client
//! with `{"op":"lagged","room":..,"missed":N}` before its next frames. So a slow client never
//! slows the engine or another client.
//!
//! In one process the hub numbers each room's frames itself. In a cluster every frame goes
//! through Redis first, where its room's number is taken, and comes back to every instance's
//! hub with it ([`Hub::publish_seq`]): a client sees the same numbers on any instance.
//!
//! `connection.rs` serves one client's WebSocket; the settings are
//! `config::settings::HubSettings`; the open alarms in snapshots come from the
//! `engine::registry::AlarmRegistry`, through which acknowledgements go too.

mod connection;

use crate::config::settings::HubSettings;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::alarm::registry::alarm_json;
use crate::alarm::registry::AlarmRegistry;
use crate::alarm::{Alarm, Transition};
use crate::counters::{Counters, Report};

/// Most rooms whose latest message is kept for snapshots.
pub const MAX_ROOMS: usize = 200_000;
/// Most rooms one client may subscribe to.
pub const MAX_ROOMS_PER_CLIENT: usize = 1_000;
/// Longest room name.
pub const MAX_ROOM_LEN: usize = 256;

/// The hub's counters.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Connections refused (limit, auth).
    pub refused: AtomicU64,
    /// Frames published (one per room message).
    pub published: AtomicU64,
    /// Frames queued to clients.
    pub delivered: AtomicU64,
    /// Frames a slow client lost.
    pub lagged: AtomicU64,
    /// Clients dropped for missing pongs.
    pub timed_out: AtomicU64,
}

struct Room {
    /// Its name (the map's key too: frames queued to clients share this one).
    name: Arc<str>,
    seq: u64,
    subs: Vec<Arc<Client>>,
    /// The latest message: ts and data (JSON text), for snapshots.
    last: Option<(i64, Arc<str>)>,
}

impl Room {
    fn new(name: &str) -> Room {
        Room {
            name: Arc::from(name),
            seq: 0,
            subs: Vec::new(),
            last: None,
        }
    }
}

/// The room of this name, made if new.
fn room_mut<'a>(rooms: &'a mut HashMap<Arc<str>, Room>, name: &str) -> &'a mut Room {
    if !rooms.contains_key(name) {
        let r = Room::new(name);
        rooms.insert(r.name.clone(), r);
    }
    rooms
        .get_mut(name)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<Arc<str>, Room>,
    /// Wildcard subscriptions: `device/*` is the prefix `device/`.
    wild: Vec<(Arc<str>, Arc<Client>)>,
    /// The latest frames of every room, oldest first, at most `keep_recent` (0: none kept): a
    /// client that reconnects, to this instance or another of a cluster, gets what it missed.
    recent: VecDeque<(Arc<str>, u64, Utf8Bytes)>,
    keep_recent: usize,
}

/// Frames a cluster member keeps for clients that come back (about 200 bytes each).
pub const RECENT_FRAMES: usize = 16_384;

/// One connected client's queue.
pub struct Client {
    id: u64,
    queue: Mutex<ClientQueue>,
    wake: Notify,
}

/// Frames, each with its room.
type Frames = VecDeque<(Arc<str>, Utf8Bytes)>;
/// Frames lost per room.
type Missed = Vec<(Arc<str>, u64)>;

#[derive(Default)]
struct ClientQueue {
    frames: Frames,
    missed: Missed,
    rooms: usize,
}

impl Client {
    fn push(&self, room: &Arc<str>, frame: Utf8Bytes, cap: usize, stats: &HubStats) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.frames.len() >= cap {
            if let Some((r, _)) = q.frames.pop_front() {
                stats.lagged.fetch_add(1, Relaxed);
                match q.missed.iter_mut().find(|m| m.0 == r) {
                    Some(m) => m.1 += 1,
                    None => q.missed.push((r, 1)),
                }
            }
        }
        q.frames.push_back((room.clone(), frame));
        drop(q);
        stats.delivered.fetch_add(1, Relaxed);
        self.wake.notify_one();
    }

    fn take(&self) -> (Missed, Frames) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut q.missed), std::mem::take(&mut q.frames))
    }
}

/// The hub.
pub struct Hub {
    settings: HubSettings,
    inner: Mutex<Inner>,
    /// Counters.
    pub stats: HubStats,
    next_id: AtomicU64,
    /// The open alarms (for snapshots and acknowledgements); the hub only reads it.
    alarms: Arc<AlarmRegistry>,
}

fn room_frame(room: &str, seq: u64, ts: i64, data: &str) -> Utf8Bytes {
    let mut s = String::with_capacity(room.len() + data.len() + 48);
    s.push_str("{\"room\":");
    s.push_str(&Value::from(room).to_string());
    s.push_str(",\"seq\":");
    s.push_str(itoa::Buffer::new().format(seq));
    s.push_str(",\"ts\":");
    s.push_str(itoa::Buffer::new().format(ts));
    s.push_str(",\"data\":");
    s.push_str(data);
    s.push('}');
    Utf8Bytes::from(s)
}

impl Hub {
    /// A hub; snapshots read the open alarms from `alarms`, and clients' acknowledgements go
    /// through it.
    pub fn new(settings: HubSettings, alarms: Arc<AlarmRegistry>) -> Self {
        Hub {
            settings,
            inner: Mutex::default(),
            stats: HubStats::default(),
            next_id: AtomicU64::new(1),
            alarms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a message (JSON text) to a room.
    pub fn publish(&self, room: &str, ts: i64, data: &str) {
        self.publish_at(room, None, ts, data);
    }

    /// Publishes a message that has its room's sequence number already (a cluster's: every
    /// instance serves every room, numbered once, in Redis). One at or below the room's
    /// current number was published already and is skipped.
    pub fn publish_seq(&self, room: &str, seq: u64, ts: i64, data: &str) {
        self.publish_at(room, Some(seq), ts, data);
    }

    fn publish_at(&self, room: &str, seq: Option<u64>, ts: i64, data: &str) {
        self.stats.published.fetch_add(1, Relaxed);
        let cap = self.settings.client_queue;
        let mut inner = self.lock();
        let inner = &mut *inner;
        let wild: Vec<Arc<Client>> = inner
            .wild
            .iter()
            .filter(|(p, _)| room.starts_with(&**p))
            .map(|(_, c)| c.clone())
            .collect();
        if !inner.rooms.contains_key(room) && inner.rooms.len() >= MAX_ROOMS {
            if wild.is_empty() {
                return;
            }
            // Bounded: a room only remembered for snapshots makes way (its seq starts again
            // if it comes back).
            let idle = inner
                .rooms
                .iter()
                .find(|(_, r)| r.subs.is_empty())
                .map(|(k, _)| k.clone());
            match idle {
                Some(k) => {
                    inner.rooms.remove(&k);
                }
                None => return,
            }
        }
        let keep_recent = inner.keep_recent;
        let r = room_mut(&mut inner.rooms, room);
        match seq {
            Some(s) if s <= r.seq => return,
            Some(s) => r.seq = s,
            None => r.seq += 1,
        }
        let data: Arc<str> = Arc::from(data);
        let listened = !(r.subs.is_empty() && wild.is_empty());
        // The frame, built once: for the room's clients and for the recent frames kept.
        let frame = (listened || keep_recent > 0).then(|| room_frame(room, r.seq, ts, &data));
        if let Some(f) = frame.as_ref().filter(|_| keep_recent > 0) {
            if inner.recent.len() >= keep_recent {
                inner.recent.pop_front();
            }
            inner.recent.push_back((r.name.clone(), r.seq, f.clone()));
        }
        if let Some(frame) = frame.filter(|_| listened) {
            // A client may listen to a room twice (by name and by a wildcard, or by two
            // wildcards): it gets each frame once.
            let mut sent: Vec<u64> = Vec::new();
            for c in r.subs.iter().chain(wild.iter()) {
                if !wild.is_empty() {
                    if sent.contains(&c.id) {
                        continue;
                    }
                    sent.push(c.id);
                }
                c.push(&r.name, frame.clone(), cap, &self.stats);
            }
        }
        r.last = Some((ts, data));
    }

    /// Keeps the latest `n` frames of all rooms, for clients that come back (`since`).
    pub fn keep_recent(&self, n: usize) {
        self.lock().keep_recent = n;
    }

    /// An alarm transition, published to the room `alarms` (the registry has recorded it).
    pub fn alarm(&self, a: &Alarm, transition: Transition, ts: i64) {
        let v = alarm_json(a, transition.as_str());
        self.publish("alarms", ts, &v.to_string());
    }

    /// Counters and sizes, as JSON.
    pub fn to_json(&self) -> Value {
        crate::counters::to_json(self)
    }

    /// Takes a connection slot, or `None` when the hub is full.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let n = self.stats.clients.fetch_add(1, Relaxed);
        if n >= self.settings.max_clients {
            self.stats.clients.fetch_sub(1, Relaxed);
            self.stats.refused.fetch_add(1, Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// Whether a browser page from `origin` may connect, given the request's `host` and the
    /// scheme the browser used (`http`, or what a TLS-terminating proxy says in
    /// `X-Forwarded-Proto`). Pages from other origins (another host, port or scheme) are refused
    /// unless listed: without this, any web page a user opens could read the dashboards' data
    /// and acknowledge alarms through the user's browser.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>, scheme: &str) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self
            .settings
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let Some((origin_scheme, origin_host)) = origin.split_once("://") else {
            return false;
        };
        origin_scheme.eq_ignore_ascii_case(scheme)
            && host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
    }

    /// The client limit.
    pub fn max_clients(&self) -> usize {
        self.settings.max_clients
    }

    fn subscribe(
        &self,
        c: &Arc<Client>,
        rooms: &[String],
        since: &HashMap<String, u64>,
    ) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        let cap = self.settings.client_queue;
        let mut inner = self.lock();
        let inner = &mut *inner;
        for room in rooms {
            if room.is_empty() || room.len() > MAX_ROOM_LEN {
                return Err(format!(
                    "bad room name `{room}` (1 to {MAX_ROOM_LEN} characters)"
                ));
            }
            {
                let mut q = c.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.rooms >= MAX_ROOMS_PER_CLIENT {
                    return Err(format!("at most {MAX_ROOMS_PER_CLIENT} rooms per client"));
                }
                q.rooms += 1;
            }
            if let Some(prefix) = room.strip_suffix('*') {
                if inner
                    .wild
                    .iter()
                    .any(|(p, w)| &**p == prefix && w.id == c.id)
                {
                    continue;
                }
                // Rooms this client already has a snapshot of (by name or by an earlier
                // wildcard) get none again.
                let known = |name: &str, r: &Room, wild: &[(Arc<str>, Arc<Client>)]| {
                    r.subs.iter().any(|s| s.id == c.id)
                        || wild
                            .iter()
                            .any(|(p, w)| w.id == c.id && name.starts_with(&**p))
                };
                let mut names: Vec<&Arc<str>> = inner
                    .rooms
                    .iter()
                    .filter(|(k, r)| k.starts_with(prefix) && !known(k, r, &inner.wild))
                    .map(|(k, _)| k)
                    .collect();
                inner.wild.push((Arc::from(prefix), c.clone()));
                names.sort();
                for name in names {
                    let frame = snapshot(name, &inner.rooms[name], &self.alarms);
                    c.push(name, frame, cap, &self.stats);
                }
            } else {
                let covered = inner
                    .wild
                    .iter()
                    .any(|(p, w)| w.id == c.id && room.starts_with(&**p));
                let r = room_mut(&mut inner.rooms, room);
                if r.subs.iter().any(|s| s.id == c.id) {
                    continue;
                }
                r.subs.push(c.clone());
                let (name, seq) = (r.name.clone(), r.seq);
                if covered {
                } else if let Some(missed) = since
                    .get(room.as_str())
                    .and_then(|s| missed_frames(&inner.recent, &name, *s, seq))
                {
                    // Back within what is kept: the frames it missed, in order, no snapshot.
                    for f in missed {
                        c.push(&name, f, cap, &self.stats);
                    }
                } else {
                    let r = &inner.rooms[&name];
                    let mut frame = snapshot(&name, r, &self.alarms);
                    if since.contains_key(room.as_str()) {
                        // Too far behind: a snapshot that says so, never a silent gap.
                        frame = resync(frame);
                    }
                    c.push(&name, frame, cap, &self.stats);
                }
            }
            done.push(room.clone());
        }
        Ok(done)
    }

    fn unsubscribe(&self, c: &Client, rooms: &[String]) {
        let mut inner = self.lock();
        let mut removed = 0;
        for room in rooms {
            if let Some(prefix) = room.strip_suffix('*') {
                let before = inner.wild.len();
                inner
                    .wild
                    .retain(|(p, w)| !(&**p == prefix && w.id == c.id));
                removed += before - inner.wild.len();
            } else if let Some(r) = inner.rooms.get_mut(room.as_str()) {
                let before = r.subs.len();
                r.subs.retain(|s| s.id != c.id);
                removed += before - r.subs.len();
            }
        }
        let mut q = c.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.rooms = q.rooms.saturating_sub(removed);
    }

    fn leave(&self, c: &Client) {
        let mut inner = self.lock();
        inner.wild.retain(|(_, w)| w.id != c.id);
        for r in inner.rooms.values_mut() {
            r.subs.retain(|s| s.id != c.id);
        }
        // Rooms nobody listens to and nothing was published to are forgotten.
        inner
            .rooms
            .retain(|_, r| !r.subs.is_empty() || r.last.is_some());
    }
}

impl Counters for Hub {
    fn report(&self, r: &mut dyn Report) {
        let (rooms, wild) = {
            let i = self.lock();
            (i.rooms.len(), i.wild.len())
        };
        let g = |a: &AtomicU64| a.load(Relaxed);
        let s = &self.stats;
        r.gauge(
            "clients",
            "WebSocket clients connected now",
            s.clients.load(Relaxed) as u64,
        );
        r.counter(
            "refused",
            "WebSocket connections refused (limit, auth)",
            g(&s.refused),
        );
        r.counter(
            "published",
            "frames published, one per room message",
            g(&s.published),
        );
        r.counter("delivered", "frames queued to clients", g(&s.delivered));
        r.counter("lagged", "frames slow clients lost", g(&s.lagged));
        r.counter(
            "timed_out",
            "clients dropped for missing pongs",
            g(&s.timed_out),
        );
        r.gauge("rooms", "rooms known now", rooms as u64);
        r.gauge(
            "wildcard_subscriptions",
            "wildcard subscriptions now",
            wild as u64,
        );
        r.gauge("alarms_open", "alarms open now", self.alarms.len() as u64);
    }
}

/// A connection slot (given back on drop).
pub struct Slot(Arc<Hub>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.stats.clients.fetch_sub(1, Relaxed);
    }
}

/// The frames of `room` after `since` up to `now`, if every one of them is still kept.
fn missed_frames(
    recent: &VecDeque<(Arc<str>, u64, Utf8Bytes)>,
    room: &str,
    since: u64,
    now: u64,
) -> Option<Vec<Utf8Bytes>> {
    if since > now {
        return None;
    }
    let frames: Vec<(u64, Utf8Bytes)> = recent
        .iter()
        .filter(|(r, s, _)| &**r == room && *s > since)
        .map(|(_, s, f)| (*s, f.clone()))
        .collect();
    // Complete: since+1 ..= now, each once.
    let complete = frames.len() as u64 == now - since
        && frames
            .iter()
            .zip(since + 1..)
            .all(|((s, _), want)| *s == want);
    complete.then(|| frames.into_iter().map(|(_, f)| f).collect())
}

/// A snapshot frame marked `"resync": true`: the client was told what it missed cannot be
/// replayed, and this is the room as it is now.
fn resync(frame: Utf8Bytes) -> Utf8Bytes {
    let mut v: Value = serde_json::from_str(frame.as_str()).unwrap_or_default();
    v["resync"] = Value::Bool(true);
    Utf8Bytes::from(v.to_string())
}

fn snapshot(name: &str, r: &Room, alarms: &AlarmRegistry) -> Utf8Bytes {
    let mut v = json!({"op":"snapshot","room":name,"seq":r.seq});
    if let Some((ts, data)) = &r.last {
        v["ts"] = (*ts).into();
        v["data"] = serde_json::from_str(data).unwrap_or(Value::Null);
    } else {
        v["data"] = Value::Null;
    }
    let open = |dev: Option<&str>| -> Value {
        Value::Array(alarms.open(dev).iter().map(|a| a.to_json()).collect())
    };
    if name == "alarms" {
        v["alarms"] = open(None);
    } else if let Some(dev) = name.strip_prefix("device/") {
        v["alarms"] = open(Some(dev));
    }
    Utf8Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: u64) -> Arc<Client> {
        Arc::new(Client {
            id,
            queue: Mutex::default(),
            wake: Notify::new(),
        })
    }

    /// A hub with the default settings, whose acknowledgements go nowhere.
    fn plain_hub() -> Hub {
        Hub::new(
            HubSettings::default(),
            Arc::new(AlarmRegistry::without_acks()),
        )
    }

    fn frames(c: &Client) -> (Vec<(String, u64)>, Vec<Value>) {
        let (missed, frames) = c.take();
        (
            missed
                .into_iter()
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
            frames
                .into_iter()
                .map(|(_, f)| serde_json::from_str(f.as_str()).unwrap())
                .collect(),
        )
    }

    #[test]
    fn a_client_that_comes_back_gets_what_it_missed_or_a_resync_never_a_gap() {
        let hub = plain_hub();
        hub.keep_recent(4);
        // Frames numbered elsewhere (a cluster): a number already seen is skipped.
        for seq in 1..=5 {
            hub.publish_seq("device/a", seq, seq as i64, &format!("{{\"n\":{seq}}}"));
        }
        hub.publish_seq("device/a", 5, 9, "{\"n\":99}");
        // Saw up to 2: frames 3, 4, 5 are kept (4 of the last frames): they come, no snapshot.
        let c = client(1);
        let since: HashMap<String, u64> = [("device/a".to_string(), 2)].into_iter().collect();
        hub.subscribe(&c, &["device/a".into()], &since).unwrap();
        let (_, f) = frames(&c);
        let seqs: Vec<u64> = f.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![3, 4, 5], "{f:?}");
        assert!(f.iter().all(|f| f["op"].is_null()), "{f:?}");
        assert_eq!(f[2]["data"]["n"], 5);
        // Saw up to 0: frame 1 is gone; a snapshot marked resync (the room as it is now).
        let c = client(2);
        let since: HashMap<String, u64> = [("device/a".to_string(), 0)].into_iter().collect();
        hub.subscribe(&c, &["device/a".into()], &since).unwrap();
        let (_, f) = frames(&c);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0]["op"], "snapshot");
        assert_eq!(f[0]["resync"], true);
        assert_eq!(
            (f[0]["seq"].as_u64(), &f[0]["data"]["n"]),
            (Some(5), &json!(5))
        );
        // Up to date: nothing to send.
        let c = client(3);
        let since: HashMap<String, u64> = [("device/a".to_string(), 5)].into_iter().collect();
        hub.subscribe(&c, &["device/a".into()], &since).unwrap();
        assert!(frames(&c).1.is_empty());
    }

    #[test]
    fn a_room_heard_by_name_and_by_wildcard_comes_once() {
        let hub = plain_hub();
        hub.publish("room-x", 1, "{\"v\":1}");
        hub.publish("room-y", 1, "{\"v\":2}");
        let c = client(1);
        hub.subscribe(
            &c,
            &["room-x".into(), "*".into(), "room-*".into()],
            &HashMap::new(),
        )
        .unwrap();
        let (_, f) = frames(&c);
        let rooms: Vec<&str> = f.iter().filter_map(|f| f["room"].as_str()).collect();
        assert_eq!(rooms, ["room-x", "room-y"], "one snapshot a room: {f:?}");
        hub.publish("room-x", 2, "{\"v\":3}");
        let (_, f) = frames(&c);
        assert_eq!(
            f.len(),
            1,
            "one frame, though three subscriptions match: {f:?}"
        );
        assert_eq!(f[0]["seq"], 2);
    }

    #[tokio::test]
    async fn rooms_must_be_strings() {
        let hub = plain_hub();
        let c = client(1);
        for bad in [
            r#"{"op":"subscribe","rooms":[1,2]}"#,
            r#"{"op":"subscribe","rooms":["a",null]}"#,
            r#"{"op":"subscribe","rooms":"a"}"#,
        ] {
            let r = hub.command(&c, bad).await.expect("an answer");
            assert_eq!(r["op"], "error", "{bad}: {r}");
            assert!(r["error"].as_str().unwrap().contains("strings"), "{r}");
        }
        assert_eq!(c.queue.lock().unwrap().rooms, 0, "nothing was subscribed");
    }

    proptest::proptest! {
        /// The command parser (fuzzed): any text a client sends gets an answer or a snapshot,
        /// never a panic, and never a subscription past the per-client limit.
        #[test]
        fn any_command_text_is_answered_never_panicked_on(
            text in "[{}\\[\\]\":, a-z0-9*/]{0,60}|\\{\"op\":\"(subscribe|unsubscribe|ack)\",\"(rooms|alarm)\":[\\[\\]\"a-z0-9*/,]{0,30}\\}"
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let hub = plain_hub();
            let c = client(1);
            let reply = rt.block_on(hub.command(&c, &text));
            if let Some(r) = reply {
                proptest::prop_assert!(r.get("op").is_some(), "{r}");
            }
            proptest::prop_assert!(c.queue.lock().unwrap().rooms <= MAX_ROOMS_PER_CLIENT);
        }
    }

    #[test]
    fn a_slow_client_loses_the_oldest_and_is_told_how_many_others_lose_nothing() {
        let hub = Hub::new(
            HubSettings {
                client_queue: 3,
                ..HubSettings::default()
            },
            Arc::new(AlarmRegistry::without_acks()),
        );
        let (slow, fast) = (client(1), client(2));
        hub.subscribe(&slow, &["device/a".into()], &HashMap::new())
            .unwrap();
        hub.subscribe(&fast, &["device/a".into()], &HashMap::new())
            .unwrap();
        let (_, snap) = frames(&fast);
        assert_eq!(snap[0]["op"], "snapshot");
        for i in 1..=5 {
            hub.publish("device/a", 1000 + i, &format!("{{\"n\":{i}}}"));
            // The fast client's task drains its queue as frames come.
            let (missed, got) = frames(&fast);
            assert!(missed.is_empty());
            assert_eq!(got[0]["seq"], i);
        }
        // The slow one never drained: its snapshot and the first two frames are gone.
        let (missed, got) = frames(&slow);
        assert_eq!(missed, vec![("device/a".to_string(), 3)]);
        let seqs: Vec<i64> = got.iter().map(|f| f["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(got[2]["data"]["n"], 5);
        assert_eq!(hub.stats.lagged.load(Relaxed), 3);
    }

    #[test]
    fn wildcards_snapshots_and_alarms() {
        let registry = Arc::new(AlarmRegistry::without_acks());
        let hub = Hub::new(HubSettings::default(), registry.clone());
        hub.publish("device/a", 1, "{\"t\":1}");
        hub.publish("device/b", 2, "{\"t\":2}");
        hub.publish("chain/x", 3, "{}");
        let alarm = crate::alarm::Alarm {
            id: "Hot:b:1".into(),
            device: "b".into(),
            type_: "Hot".into(),
            severity: crate::alarm::Severity::Major,
            status: crate::alarm::Status::ActiveUnack,
            message: "m".into(),
            details: Default::default(),
            start_ts: 1,
            last_ts: 1,
            end_ts: None,
            count: 1,
            origin: Some(("c".into(), "n".into())),
            acked_by: None,
            cleared_by: None,
        };
        registry.record(&alarm, Transition::Created);
        hub.alarm(&alarm, Transition::Created, 4);
        let c = client(1);
        hub.subscribe(&c, &["device/*".into()], &HashMap::new())
            .unwrap();
        let (_, snaps) = frames(&c);
        let rooms: Vec<&str> = snaps.iter().map(|s| s["room"].as_str().unwrap()).collect();
        assert_eq!(rooms, vec!["device/a", "device/b"]);
        assert_eq!(snaps[1]["data"]["t"], 2);
        assert_eq!(snaps[1]["alarms"][0]["id"], "Hot:b:1");
        assert!(snaps[1]["alarms"][0].get("origin").is_none());
        assert_eq!(snaps[0]["alarms"], json!([]));
        hub.publish("device/c", 5, "{\"t\":5}");
        hub.publish("chain/x", 6, "{}");
        let (_, got) = frames(&c);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0]["room"].as_str(), got[0]["seq"].as_i64()),
            (Some("device/c"), Some(1))
        );
        // A cleared and acknowledged alarm needs no attention any more.
        let done = crate::alarm::Alarm {
            status: crate::alarm::Status::ClearedAck,
            ..alarm
        };
        registry.record(&done, Transition::Acknowledged);
        hub.alarm(&done, Transition::Acknowledged, 7);
        assert!(registry.is_empty());
        assert_eq!(hub.to_json()["alarms_open"], 0);
        assert!(hub.subscribe(&c, &["".into()], &HashMap::new()).is_err());
        hub.unsubscribe(&c, &["device/*".into()]);
        hub.publish("device/c", 8, "{}");
        assert!(frames(&c).1.is_empty());
    }

    #[test]
    fn browsers_from_other_sites_are_refused_unless_listed() {
        let hub = Hub::new(
            HubSettings {
                allowed_origins: vec!["https://dash.example.com/".into()],
                ..HubSettings::default()
            },
            Arc::new(AlarmRegistry::without_acks()),
        );
        let host = Some("127.0.0.1:8080");
        let ok = |o: &str| hub.origin_allowed(Some(o), host, "http");
        assert!(
            hub.origin_allowed(None, host, "http"),
            "non-browser clients send no Origin"
        );
        assert!(ok("http://127.0.0.1:8080"));
        assert!(ok("https://dash.example.com"));
        assert!(!ok("https://evil.example"));
        assert!(!ok("http://127.0.0.1:8081"));
        assert!(!ok("null"));
        // Same host and port, another scheme: another origin.
        assert!(!ok("https://127.0.0.1:8080"));
        assert!(!ok("ftp://127.0.0.1:8080"));
        assert!(!ok("127.0.0.1:8080"));
        // Behind a TLS-terminating proxy the page is https.
        assert!(hub.origin_allowed(Some("https://127.0.0.1:8080"), host, "https"));
        let open = Hub::new(
            HubSettings {
                allowed_origins: vec!["*".into()],
                ..HubSettings::default()
            },
            Arc::new(AlarmRegistry::without_acks()),
        );
        assert!(open.origin_allowed(Some("https://evil.example"), host, "http"));
    }
}
