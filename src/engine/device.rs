//! A device as the executor keeps it: its type, its attributes from three sources (the
//! registry, what it reported, what an operator set), shared with its messages as one map and
//! bounded in keys and bytes, and where its last message came from.

use std::sync::Arc;

use rhai::{Dynamic, Map};

use crate::message::Kind;

/// Most attribute keys one device may report (attributes and status messages). A device that
/// keeps sending new keys would otherwise grow its state, its checkpoints and the `attr` map
/// every message of it builds without end (30,000 keys made its messages 20× slower). Past it,
/// new keys are dropped and counted ([`super::Executor::take_attributes_dropped`]); keys it has update.
pub const MAX_REPORTED_ATTRIBUTES: usize = 1_000;

/// Most bytes of attributes one device keeps of each source, reported and set through the API
/// ([`value_bytes`] of each key and value). Within the key count, 1,000 keys of 60 kB each
/// made one device 60 MB of state, rewritten at every checkpoint; past it a new value is
/// refused and counted, and the engine's total is bounded too (`engine.max_attribute_bytes`).
pub const MAX_DEVICE_ATTRIBUTE_BYTES: usize = 64 * 1024;

/// About how many bytes a value takes in memory and in a checkpoint: text and names by their
/// length, numbers and the like 8, each entry 16 more. What attribute bounds count.
pub fn value_bytes(v: &Dynamic) -> usize {
    16 + if let Some(s) = v.read_lock::<rhai::ImmutableString>() {
        s.len()
    } else if let Some(m) = v.read_lock::<Map>() {
        m.iter().map(|(k, v)| k.len() + value_bytes(v)).sum()
    } else if let Some(a) = v.read_lock::<rhai::Array>() {
        a.iter().map(value_bytes).sum()
    } else {
        8
    }
}

/// One attribute's bytes: its name and its value.
pub(super) fn entry_bytes(k: &str, v: &Dynamic) -> usize {
    k.len() + value_bytes(v)
}

/// Device registry entries: type and attributes (registry overlaid with reported ones).
#[derive(Debug, Clone)]
pub struct Device {
    /// The device type.
    pub type_: Option<Arc<str>>,
    /// The attributes: the registry's, overlaid with `reported` and `server`. One shared,
    /// never-written map: each message's `attr` is this value, not a copy of it; a change makes
    /// a new map ([`Device::take_attrs`]), so a message in flight keeps the attributes it came
    /// with.
    pub(super) attrs: Dynamic,
    /// What the device itself reported (attributes and status messages): persisted live.
    pub reported: Map,
    /// What an operator set through the API (server-side attributes): persisted, and above
    /// the reported and the registry's values of the same key.
    pub server: Map,
    /// The registry's attributes, kept to fall back to when a server-side one is removed.
    pub(super) registry: Map,
    /// `meta.device` and `meta.device_type`, built once: each message's `meta` starts as a copy.
    pub(super) meta_base: Option<Map>,
    /// From the registry (never forgotten).
    pub(super) registered: bool,
    /// The clock time of its last message.
    pub(super) last_seen: i64,
    /// [`entry_bytes`] of `reported` and of `server`, kept as they change.
    pub(super) reported_bytes: usize,
    pub(super) server_bytes: usize,
    /// Where its last message came from: the `meta` of a message the engine starts itself for
    /// it (an operator's acknowledgement), so templates and topics read `meta.site` as in the
    /// device's own messages. Not persisted: after a restart, known again from its next message.
    pub(super) source: Option<Box<Source>>,
}

/// The topic, kind and topic captures of a device's last message.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub(super) topic: Arc<str>,
    pub(super) kind: Kind,
    pub(super) captures: Vec<(String, String)>,
}

// Not derived: `attrs` must be a shared empty map, not `()` (`attr.x` reads `()` for a device
// with no attributes, where `()` would make it an error).
#[allow(clippy::derivable_impls)]
impl Default for Device {
    fn default() -> Self {
        Device {
            registered: false,
            ..Device::new(None, Map::new())
        }
    }
}

impl Device {
    /// A device of a type, with attributes.
    pub fn new(type_: Option<Arc<str>>, attrs: Map) -> Self {
        Device {
            type_,
            registry: attrs.clone(),
            attrs: Dynamic::from_map(attrs).into_shared(),
            reported: Map::new(),
            server: Map::new(),
            meta_base: None,
            source: None,
            reported_bytes: 0,
            server_bytes: 0,
            registered: true,
            last_seen: 0,
        }
    }

    /// Whether forgetting it loses nothing: not in the registry, nothing reported. (Alarms are
    /// checked by the caller.)
    pub(super) fn forgettable(&self) -> bool {
        !self.registered && self.reported.is_empty() && self.server.is_empty()
    }

    /// Its attributes from the devices file.
    pub fn registry_attrs(&self) -> &Map {
        &self.registry
    }

    /// The clock time of its last message (0: none yet).
    pub fn last_seen(&self) -> i64 {
        self.last_seen
    }

    /// The attributes: the registry's, overlaid with the reported and the server-side ones.
    pub fn attrs(&self) -> Map {
        self.attrs
            .read_lock::<Map>()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The attributes to change, then give back with [`Device::put_attrs`]: copied only if a
    /// message still holds them.
    pub(super) fn take_attrs(&mut self) -> Map {
        std::mem::take(&mut self.attrs)
            .flatten()
            .try_cast::<Map>()
            .unwrap_or_default()
    }

    /// The changed attributes, shared again.
    pub(super) fn put_attrs(&mut self, attrs: Map) {
        self.attrs = Dynamic::from_map(attrs).into_shared();
    }

    /// Lays restored attributes over the ones it has (reported ones over the registry's,
    /// server-side ones over both); their bytes ([`entry_bytes`]).
    pub(super) fn overlay(&mut self, m: &Map) -> usize {
        let mut attrs = self.take_attrs();
        for (k, v) in m {
            attrs.insert(k.clone(), v.clone());
        }
        self.put_attrs(attrs);
        m.iter().map(|(k, v)| entry_bytes(k, v)).sum()
    }

    /// Where attribute `key`'s value comes from: `server`, `reported` or `registry`.
    pub fn source_of(&self, key: &str) -> &'static str {
        if self.server.contains_key(key) {
            "server"
        } else if self.reported.contains_key(key) {
            "reported"
        } else {
            "registry"
        }
    }

    /// Applies server-side attribute changes, all or none: a unit (JSON `null`) removes one,
    /// and the key falls back to the reported or the registry's value. The reason when they
    /// would pass the device's key or byte bound or the engine's `room` of bytes left; on
    /// success, how many bytes its attributes grew by (negative: shrank).
    pub(super) fn set_server(&mut self, changes: Map, room: usize) -> Result<isize, String> {
        let (mut keys, mut bytes) = (self.server.len(), self.server_bytes as isize);
        for (k, v) in &changes {
            let old = self.server.get(k).map(|o| entry_bytes(k, o) as isize);
            if v.is_unit() {
                keys -= usize::from(old.is_some());
                bytes -= old.unwrap_or(0);
            } else {
                keys += usize::from(old.is_none());
                bytes += entry_bytes(k, v) as isize - old.unwrap_or(0);
            }
        }
        let grew = bytes - self.server_bytes as isize;
        if keys > MAX_REPORTED_ATTRIBUTES {
            return Err(format!(
                "a device has at most {MAX_REPORTED_ATTRIBUTES} server-side attributes"
            ));
        }
        if bytes as usize > MAX_DEVICE_ATTRIBUTE_BYTES {
            return Err(format!(
                "a device's server-side attributes take at most {} KiB; these would take {} KiB",
                MAX_DEVICE_ATTRIBUTE_BYTES / 1024,
                (bytes as usize).div_ceil(1024)
            ));
        }
        if grew > 0 && grew as usize > room {
            return Err(
                "the engine keeps no more attribute bytes (`engine.max_attribute_bytes`)".into(),
            );
        }
        let mut attrs = self.take_attrs();
        for (k, v) in changes {
            if v.is_unit() {
                self.server.remove(&k);
                match self.reported.get(&k).or_else(|| self.registry.get(&k)) {
                    Some(v) => attrs.insert(k, v.clone()),
                    None => attrs.remove(&k),
                };
            } else {
                attrs.insert(k.clone(), v.clone());
                self.server.insert(k, v);
            }
        }
        self.put_attrs(attrs);
        self.server_bytes = bytes.max(0) as usize;
        Ok(grew)
    }
}
