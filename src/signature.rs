//! Signed messages (`ingest.signature`): a device puts an HMAC-SHA256 of its payload into the
//! payload itself, and the engine refuses a message whose signature is missing or wrong, whose
//! time is too far from the engine's clock, or that it already took (a replay).
//!
//! What is signed: the payload without the signature field, as RFC 8785 canonical JSON (keys
//! sorted, no whitespace, numbers in their shortest form: for integers and strings, what a
//! device gets from sorted keys and no spaces). The signature is the lowercase hex of the HMAC
//! under the device's key (the key's text as UTF-8 bytes). The payload's `ts` (ms) must be
//! within `max_skew` of the engine's clock, and a signature is taken once: the same message
//! again within that window is a replay.
//!
//! The same scheme signs RPC commands for devices to verify ([`sign`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hmac::{KeyInit, Mac};
use serde_json::Value;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Most signatures remembered per device for the replay guard; past it the oldest go (a device
/// sending more than this within `max_skew` could have its oldest replayed).
const MAX_REMEMBERED: usize = 4_096;

/// Where the keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// One key for every device (`key:`).
    One(Arc<[u8]>),
    /// Each device's own, from the devices file's attribute (`key_attribute:`), taken out of
    /// the attributes so that rules, the API and traces never see it.
    PerDevice(Arc<HashMap<Arc<str>, Arc<[u8]>>>),
}

impl KeySource {
    /// The device's key, if it has one.
    pub fn key(&self, device: &str) -> Option<&[u8]> {
        match self {
            KeySource::One(k) => Some(k),
            KeySource::PerDevice(m) => m.get(device).map(|k| &k[..]),
        }
    }
}

impl std::fmt::Debug for KeySource {
    /// Never the keys themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::One(_) => f.write_str("KeySource::One(<secret>)"),
            KeySource::PerDevice(m) => write!(f, "KeySource::PerDevice({} devices)", m.len()),
        }
    }
}

/// The settings of `ingest.signature`.
#[derive(Clone, Debug)]
pub struct SignatureSettings {
    /// The payload field that holds the signature (`sig`).
    pub field: String,
    /// The keys.
    pub keys: KeySource,
    /// How far the payload's `ts` may be from the engine's clock (ms).
    pub max_skew_ms: i64,
    /// Whether RPC commands are signed too.
    pub commands: bool,
}

/// Why a signed message was refused (logged at debug level, counted as `bad_signature`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The payload is not a JSON object.
    NotObject,
    /// No signature field, or not a string.
    Missing,
    /// The device has no key.
    NoKey,
    /// The signature does not match.
    Mismatch,
    /// No `ts`, or further than `max_skew` from the clock.
    Stale,
    /// Taken before.
    Replayed,
}

impl Refusal {
    /// In words.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotObject => "not a JSON object",
            Refusal::Missing => "no signature",
            Refusal::NoKey => "no key for the device",
            Refusal::Mismatch => "wrong signature",
            Refusal::Stale => "ts missing or too far from the clock",
            Refusal::Replayed => "replayed",
        }
    }
}

/// The bytes a signature covers: `payload` without `field`, as canonical JSON.
pub fn canonical(payload: &serde_json::Map<String, Value>, field: &str) -> Vec<u8> {
    let mut m = payload.clone();
    m.remove(field);
    canonical_bytes(&m)
}

/// A map as canonical JSON (serializing JSON values cannot fail).
fn canonical_bytes(m: &serde_json::Map<String, Value>) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(m).unwrap_or_default()
}

/// The signature of `payload` (without `field`) under `key`: lowercase hex.
pub fn sign(key: &[u8], payload: &serde_json::Map<String, Value>, field: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(&canonical(payload, field));
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks signatures, with a replay memory per device. One per shard: a device's messages all
/// go through one.
pub struct Verifier {
    settings: SignatureSettings,
    /// Per device, the (time, signature prefix) of messages taken within `max_skew`.
    seen: HashMap<Arc<str>, VecDeque<(i64, u64)>>,
}

impl Verifier {
    /// A verifier for these settings.
    pub fn new(settings: SignatureSettings) -> Verifier {
        Verifier {
            settings,
            seen: HashMap::new(),
        }
    }

    /// Checks a payload of `device` at the engine's clock `now` (ms).
    pub fn check(&mut self, device: &Arc<str>, payload: &[u8], now: i64) -> Result<(), Refusal> {
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(payload) else {
            return Err(Refusal::NotObject);
        };
        self.check_map(device, m, now)
    }

    /// Checks a payload already read as JSON (taken: the signature field comes out of it, and
    /// the rest is what was signed, with no copy of the payload).
    pub fn check_map(
        &mut self,
        device: &Arc<str>,
        mut m: serde_json::Map<String, Value>,
        now: i64,
    ) -> Result<(), Refusal> {
        let s = &self.settings;
        let sig = m.remove(&s.field).ok_or(Refusal::Missing)?;
        let sig = sig.as_str().ok_or(Refusal::Missing)?;
        let key = s.keys.key(device).ok_or(Refusal::NoKey)?;
        let given = hex(sig).ok_or(Refusal::Mismatch)?;
        let mut mac = HmacSha256::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&canonical_bytes(&m));
        // Constant time.
        mac.verify_slice(&given).map_err(|_| Refusal::Mismatch)?;
        let ts = m
            .get("ts")
            .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)))
            .ok_or(Refusal::Stale)?;
        if ts.abs_diff(now) > s.max_skew_ms.unsigned_abs() {
            return Err(Refusal::Stale);
        }
        let tag = u64::from_be_bytes([
            given[0], given[1], given[2], given[3], given[4], given[5], given[6], given[7],
        ]);
        let window = s.max_skew_ms;
        let seen = self.seen.entry(device.clone()).or_default();
        // A message older than the window is refused as stale: its signature need not stay.
        seen.retain(|(t, _)| t.saturating_add(window) >= now);
        if seen.iter().any(|(t, g)| *t == ts && *g == tag) {
            return Err(Refusal::Replayed);
        }
        if seen.len() >= MAX_REMEMBERED {
            seen.pop_front();
        }
        seen.push_back((ts, tag));
        Ok(())
    }

    /// Forgets the devices with nothing within the window left (called with the shard's
    /// sweeps, so that devices gone quiet do not stay).
    pub fn sweep(&mut self, now: i64) {
        let window = self.settings.max_skew_ms;
        self.seen.retain(|_, s| {
            s.retain(|(t, _)| t.saturating_add(window) >= now);
            !s.is_empty()
        });
    }

    /// The settings.
    pub fn settings(&self) -> &SignatureSettings {
        &self.settings
    }
}

/// 32 bytes from 64 hex digits.
fn hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SignatureSettings {
        SignatureSettings {
            field: "sig".into(),
            keys: KeySource::One(Arc::from(&b"k3y"[..])),
            max_skew_ms: 30_000,
            commands: false,
        }
    }

    fn signed(v: Value) -> Vec<u8> {
        let mut m = v.as_object().unwrap().clone();
        let sig = sign(b"k3y", &m, "sig");
        m.insert("sig".into(), sig.into());
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_the_signature() {
        let v = serde_json::json!({"b": 1, "a": "x", "sig": "zz", "c": {"z": 1.5, "y": 1e21}});
        assert_eq!(
            String::from_utf8(canonical(v.as_object().unwrap(), "sig")).unwrap(),
            r#"{"a":"x","b":1,"c":{"y":1e+21,"z":1.5}}"#
        );
    }

    #[test]
    fn a_good_message_passes_once_and_a_tampered_stale_or_replayed_one_does_not() {
        let mut v = Verifier::new(settings());
        let d: Arc<str> = "pump-1".into();
        let good = signed(serde_json::json!({"ts": 1_000_000, "temp": 70}));
        assert_eq!(v.check(&d, &good, 1_010_000), Ok(()));
        assert_eq!(v.check(&d, &good, 1_010_001), Err(Refusal::Replayed));
        let tampered = String::from_utf8(good.clone()).unwrap().replace("70", "20");
        assert_eq!(
            v.check(&d, tampered.as_bytes(), 1_010_000),
            Err(Refusal::Mismatch)
        );
        let old = signed(serde_json::json!({"ts": 1_000_000, "temp": 71}));
        assert_eq!(v.check(&d, &old, 1_030_001), Err(Refusal::Stale));
        assert_eq!(
            v.check(&d, br#"{"ts": 1000000, "temp": 70}"#, 1_000_000),
            Err(Refusal::Missing)
        );
        assert_eq!(v.check(&d, b"[1]", 1_000_000), Err(Refusal::NotObject));
    }
}
