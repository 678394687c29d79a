//! The message and its decoding: what a device sent, as the engine sees it, however it
//! arrived. `run` (MQTT), `record`, `dry-run` and `test` all decode payloads here, so a payload
//! means the same in each: topic kinds, payload limits and rejects by reason, status words (a
//! plain `offline` last will), the payload's own time.

use std::sync::Arc;

use rhai::Map;
use schemars::JsonSchema;
use serde::Deserialize;

/// A message kind: which topic a message came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema, Default, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Readings (the default).
    #[default]
    Telemetry,
    /// Attributes the device reports (merged into `attr` before chains run).
    Attributes,
    /// Online/offline status (also the MQTT last will).
    Status,
    /// A device's reply to an RPC command.
    RpcResponse,
}

impl Kind {
    /// The name used in topics, `meta.kind` and YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Attributes => "attributes",
            Kind::Status => "status",
            Kind::RpcResponse => "rpc_response",
        }
    }

    /// The kind of a name, if it is one.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "telemetry" => Some(Kind::Telemetry),
            "attributes" => Some(Kind::Attributes),
            "status" => Some(Kind::Status),
            "rpc_response" => Some(Kind::RpcResponse),
            _ => None,
        }
    }
}

/// A message entering the engine.
#[derive(Debug, Clone)]
pub struct Message {
    /// The device id.
    pub device: Arc<str>,
    /// The kind (which topic it came from).
    pub kind: Kind,
    /// The source topic, if it came from one.
    pub topic: Option<Arc<str>>,
    /// `meta.ts`, ms since the epoch.
    pub ts: i64,
    /// Named captures of the topic pattern (`site`), into `meta`.
    pub captures: Vec<(String, String)>,
    /// The payload fields.
    pub payload: Map,
}

/// Payload checks (`ingest:` in the config; the defaults are `run`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Largest payload in bytes.
    pub max_payload_bytes: usize,
    /// Deepest nesting.
    pub max_depth: usize,
    /// Skew guard (ms).
    pub max_clock_skew_ms: i64,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        PayloadLimits {
            max_payload_bytes: 65_536,
            max_depth: 32,
            max_clock_skew_ms: 600_000,
        }
    }
}

/// Why a payload was rejected (the counter names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Larger than `max_payload_bytes`.
    TooLarge,
    /// Not UTF-8.
    InvalidUtf8,
    /// Deeper than `max_depth`.
    TooDeep,
    /// Not JSON.
    NotJson,
    /// JSON, but not an object.
    NotObject,
    /// A signed message (`ingest.signature`) whose signature is missing or wrong, whose time is
    /// too far from the clock, or that came before (a replay).
    BadSignature,
}

impl Reject {
    /// The counter and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::InvalidUtf8 => "invalid_utf8",
            Reject::TooDeep => "too_deep",
            Reject::NotJson => "not_json",
            Reject::NotObject => "not_object",
            Reject::BadSignature => "bad_signature",
        }
    }
}

/// The deepest nesting of `[`/`{` outside strings (a cheap pre-check before parsing).
fn depth(bytes: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The deepest JSON the parser takes (serde_json's recursion limit of 128 allows 127 levels):
/// `ingest.max_depth` above it counts as this, so a deeper payload is `too_deep`, not `not_json`.
pub const JSON_MAX_DEPTH: usize = 127;

/// Parses a payload into `msg`. A `status` payload may be plain text (`online`, `offline`, as
/// MQTT last wills usually are): it reads as `{"status": TEXT, "online": BOOL}`.
pub fn parse(kind: Kind, bytes: &[u8], limits: &PayloadLimits) -> Result<Map, Reject> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(Reject::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Reject::InvalidUtf8)?;
    if depth(bytes) > limits.max_depth.min(JSON_MAX_DEPTH) {
        return Err(Reject::TooDeep);
    }
    let trimmed = text.trim();
    if kind == Kind::Status && !trimmed.starts_with('{') {
        let word = trimmed.trim_matches('"').to_ascii_lowercase();
        if word == "online" || word == "offline" {
            let mut m = Map::new();
            m.insert("online".into(), (word == "online").into());
            m.insert("status".into(), word.into());
            return Ok(m);
        }
    }
    let mut m = json_object(bytes).map_err(|e| {
        if e.is_data() {
            Reject::NotObject
        } else {
            Reject::NotJson
        }
    })?;
    normalize(kind, &mut m);
    Ok(m)
}

/// What every decoded payload gets, however it arrived: a `status` object whose `status` is
/// `online`/`offline` also says `online` (true/false).
pub fn normalize(kind: Kind, m: &mut Map) {
    if kind == Kind::Status && !m.contains_key("online") {
        if let Some(s) = m.get("status").map(|s| s.to_string().to_ascii_lowercase()) {
            if s == "online" || s == "offline" {
                m.insert("online".into(), (s == "online").into());
            }
        }
    }
}

/// A payload as an input line (`dry-run`, `test`) gives it: a JSON object, or the text an MQTT
/// payload carried (a plain `offline`, or anything else, decoded by [`parse`] as `run` would).
#[derive(Debug, Clone)]
pub enum RawPayload {
    /// Already a JSON object.
    Map(Map),
    /// The payload's text.
    Text(String),
}

impl RawPayload {
    /// Decodes it as `run` decodes a payload of this kind.
    pub fn decode(self, kind: Kind, limits: &PayloadLimits) -> Result<Map, Reject> {
        match self {
            RawPayload::Map(mut m) => {
                normalize(kind, &mut m);
                Ok(m)
            }
            RawPayload::Text(t) => parse(kind, t.as_bytes(), limits),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RawPayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawPayload;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object, or the payload's text")
            }
            fn visit_str<E>(self, s: &str) -> Result<RawPayload, E> {
                Ok(RawPayload::Text(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<RawPayload, E> {
                Ok(RawPayload::Text(s))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<RawPayload, A::Error> {
                json::object(a).map(RawPayload::Map)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a JSON payload straight into the map `msg` is made of (JSON integers become Rhai
/// integers, decimals floats). Anything but a JSON object is an error.
pub fn parse_payload(bytes: &[u8]) -> Result<Map, String> {
    json_object(bytes).map_err(|e| {
        // A data error is ours ("must be a JSON object"); the others are syntax.
        if e.is_data() {
            e.to_string()
        } else {
            format!("not JSON: {e}")
        }
    })
}

/// A JSON object straight into a map; a data error means valid JSON that is not an object.
fn json_object(bytes: &[u8]) -> Result<Map, serde_json::Error> {
    serde_json::from_slice::<JsonMap>(bytes).map(|m| m.0)
}

/// A JSON object read straight into the map `msg` is made of, inside a larger document (the
/// payload of a dry-run line): one pass over the text, no intermediate value.
pub struct JsonMap(pub Map);

impl<'de> serde::Deserialize<'de> for JsonMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The error is made here, after the value: made inside the visitor, serde_json would
        // add a position to it.
        d.deserialize_any(json::ObjectVisitor)?
            .map(JsonMap)
            .map_err(|type_name| {
                serde::de::Error::custom(format!(
                    "the payload must be a JSON object, not {type_name}"
                ))
            })
    }
}

/// JSON → Rhai values without an intermediate tree (rhai's generic `Dynamic` deserializer is
/// several times slower on small objects, and this runs for every message).
mod json {
    use rhai::{Array, Dynamic, Map};
    use serde::de::{self, MapAccess, SeqAccess, Visitor};

    pub(super) struct ValueVisitor;

    impl<'de> de::DeserializeSeed<'de> for ValueVisitor {
        type Value = Dynamic;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Dynamic, D::Error> {
            d.deserialize_any(ValueVisitor)
        }
    }

    impl<'de> Visitor<'de> for ValueVisitor {
        type Value = Dynamic;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_unit<E>(self) -> Result<Dynamic, E> {
            Ok(Dynamic::UNIT)
        }
        fn visit_bool<E>(self, b: bool) -> Result<Dynamic, E> {
            Ok(Dynamic::from_bool(b))
        }
        fn visit_i64<E>(self, i: i64) -> Result<Dynamic, E> {
            Ok(Dynamic::from_int(i))
        }
        fn visit_u64<E>(self, u: u64) -> Result<Dynamic, E> {
            Ok(i64::try_from(u).map_or_else(|_| Dynamic::from_float(u as f64), Dynamic::from_int))
        }
        fn visit_f64<E>(self, f: f64) -> Result<Dynamic, E> {
            Ok(Dynamic::from_float(f))
        }
        fn visit_str<E>(self, s: &str) -> Result<Dynamic, E> {
            Ok(Dynamic::from(rhai::ImmutableString::from(s)))
        }
        fn visit_string<E>(self, s: String) -> Result<Dynamic, E> {
            Ok(Dynamic::from(s))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Dynamic, A::Error> {
            let mut v = Array::new();
            while let Some(x) = a.next_element_seed(ValueVisitor)? {
                v.push(x);
            }
            Ok(Dynamic::from_array(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Dynamic, A::Error> {
            object(a).map(Dynamic::from_map)
        }
    }

    /// An object's members into a map.
    pub(super) fn object<'de, A: MapAccess<'de>>(mut a: A) -> Result<Map, A::Error> {
        let mut m = Map::new();
        while let Some(k) = a.next_key::<std::borrow::Cow<'de, str>>()? {
            let v = a.next_value_seed(ValueVisitor)?;
            m.insert(k.as_ref().into(), v);
        }
        Ok(m)
    }

    /// A payload: an object straight into a map (not boxed into a value and out again, as this
    /// runs for every message); anything else gives the name of what it is.
    pub(super) struct ObjectVisitor;

    type Object = Result<Map, &'static str>;

    impl<'de> Visitor<'de> for ObjectVisitor {
        type Value = Object;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Object, A::Error> {
            object(a).map(Ok)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Object, E> {
            Ok(Err(Dynamic::UNIT.type_name()))
        }
        fn visit_bool<E: de::Error>(self, b: bool) -> Result<Object, E> {
            Ok(Err(ValueVisitor.visit_bool::<E>(b)?.type_name()))
        }
        fn visit_i64<E: de::Error>(self, i: i64) -> Result<Object, E> {
            Ok(Err(ValueVisitor.visit_i64::<E>(i)?.type_name()))
        }
        fn visit_u64<E: de::Error>(self, u: u64) -> Result<Object, E> {
            Ok(Err(ValueVisitor.visit_u64::<E>(u)?.type_name()))
        }
        fn visit_f64<E: de::Error>(self, f: f64) -> Result<Object, E> {
            Ok(Err(ValueVisitor.visit_f64::<E>(f)?.type_name()))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Object, E> {
            Ok(Err(ValueVisitor.visit_str::<E>(s)?.type_name()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Object, A::Error> {
            Ok(Err(ValueVisitor.visit_seq(a)?.type_name()))
        }
    }
}

/// The payload's own `ts`/`timestamp`: ms since the epoch, or an RFC 3339 time.
pub fn payload_ts(payload: &Map) -> Option<i64> {
    let v = payload.get("ts").or_else(|| payload.get("timestamp"))?;
    if let Ok(i) = v.as_int() {
        return Some(i);
    }
    if let Ok(f) = v.as_float() {
        return f.is_finite().then_some(f as i64);
    }
    v.read_lock::<rhai::ImmutableString>()
        .and_then(|s| parse_rfc3339(&s))
}

/// `ms` since the epoch as RFC 3339 UTC (`2026-12-06T17:04:53.123Z`).
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::civil::from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `2024-12-05T10:30:00Z` / `2024-12-05T10:30:00.250+01:00` into ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        let f = &frac[..digits];
        ms = format!("{:0<3}", &f[..f.len().min(3)])
            .parse::<i64>()
            .ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (r.get(1..3)?.parse::<i64>().ok()? * 60 + r.get(4..6)?.parse::<i64>().ok()?)
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) - offset_min * 60) * 1000 + ms)
}

/// `meta.ts`: the payload's `ts`/`timestamp` when within `max_skew_ms` of the receive time,
/// else the receive time. The flag says the payload's time was replaced (live counts it).
pub fn message_ts(payload: &Map, received: i64, max_skew_ms: i64) -> (i64, bool) {
    match payload_ts(payload) {
        Some(ts) if ts.abs_diff(received) <= max_skew_ms.unsigned_abs() => (ts, false),
        Some(_) => (received, true),
        None => (received, false),
    }
}

/// Largest packet our connections send (commands, republished messages, dead letters), and
/// the embedded broker's payload limit.
pub const MAX_OUTGOING_PACKET: usize = 16 * 1024 * 1024;

/// Largest MQTT packet our connections read: the largest the protocol can express (its
/// remaining length is at most 268,435,455 bytes). A client that drops the connection on a
/// larger packet stalls for good with a persistent session: the broker delivers the same message
/// at every reconnect. So nothing the broker may send is refused here; `ingest.max_payload_bytes`
/// then skips the message alone (counted `too_large`, acknowledged, dead-lettered by reference).
/// Such a message costs its size in memory while it is read; a broker's `message_size_limit`
/// keeps them out earlier.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;

#[cfg(test)]
mod tests {
    use super::*;

    const L: PayloadLimits = PayloadLimits {
        max_payload_bytes: 64,
        max_depth: 3,
        max_clock_skew_ms: 1000,
    };

    #[test]
    fn bad_payloads_are_rejected_by_reason() {
        let t = Kind::Telemetry;
        assert!(parse(t, br#"{"a": 1}"#, &L).is_ok());
        assert_eq!(parse(t, &[b'1'; 65], &L).err(), Some(Reject::TooLarge));
        assert_eq!(parse(t, b"\xff\xfe", &L).err(), Some(Reject::InvalidUtf8));
        assert_eq!(
            parse(t, br#"{"a":[[[[1]]]]}"#, &L).err(),
            Some(Reject::TooDeep)
        );
        assert_eq!(parse(t, br#"{"a":"[[[[[["}"#, &L).map(|m| m.len()), Ok(1));
        assert_eq!(parse(t, b"hello", &L).err(), Some(Reject::NotJson));
        assert_eq!(parse(t, b"[1]", &L).err(), Some(Reject::NotObject));
        assert_eq!(parse(t, b"online", &L).err(), Some(Reject::NotJson));
    }

    #[test]
    fn depth_above_the_parsers_limit_is_too_deep() {
        let deep = PayloadLimits {
            max_payload_bytes: 1 << 20,
            max_depth: 10_000,
            max_clock_skew_ms: 1000,
        };
        let nest = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
        let t = Kind::Telemetry;
        assert!(parse(t, nest(JSON_MAX_DEPTH).as_bytes(), &deep).is_ok());
        assert_eq!(
            parse(t, nest(JSON_MAX_DEPTH + 1).as_bytes(), &deep).err(),
            Some(Reject::TooDeep)
        );
        assert_eq!(
            parse(t, nest(10_000).as_bytes(), &deep).err(),
            Some(Reject::TooDeep)
        );
    }

    #[test]
    fn status_payloads_may_be_words() {
        let m = parse(Kind::Status, b"offline", &L).unwrap();
        assert_eq!(m["status"].to_string(), "offline");
        assert_eq!(m["online"].as_bool(), Ok(false));
        let m = parse(Kind::Status, br#"{"status": "online"}"#, &L).unwrap();
        assert_eq!(m["online"].as_bool(), Ok(true));
    }

    #[test]
    fn payload_time_is_trusted_within_the_skew_guard() {
        let mut m = Map::new();
        assert_eq!(
            message_ts(&m, 5_000, 1000),
            (5_000, false),
            "no ts: receive time"
        );
        m.insert("ts".into(), 4_500_i64.into());
        assert_eq!(
            message_ts(&m, 5_000, 1000),
            (4_500, false),
            "within 1 s: the payload's"
        );
        m.insert("ts".into(), 1_000_i64.into());
        assert_eq!(
            message_ts(&m, 5_000, 1000),
            (5_000, true),
            "4 s off: the receive time"
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-12-05T10:30:00Z"),
            Some(1_733_394_600_000)
        );
        assert_eq!(
            parse_rfc3339("2024-12-05T11:30:00.25+01:00"),
            Some(1_733_394_600_250)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_796_576_693_123),
            "2026-12-06T17:04:53.123Z"
        );
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for ms in [0, 951_782_400_000, 1_796_576_693_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }
    }
}
