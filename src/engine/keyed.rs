//! Per-key node state with bounds. Nodes with `key:` (filter holds, debounce, throttle,
//! deadband, rpc cooldowns) keep an entry per key, and keys come from outside: one device id per
//! device, or whatever a `key:` expression makes of a payload. [`Keyed`] is their map, with two
//! bounds (see docs/live.md, "Bounds on state"):
//!
//! - **Size.** At [`crate::config::settings::StateLimits::max_keys`] entries, a new key first evicts the least recently used
//!   eighth, so a flood of new keys costs one scan per eighth of the cap, not one per key.
//! - **Idle.** [`Keyed::sweep`] drops entries not touched for a while; the engine sweeps on its
//!   own clock ([`crate::engine::Executor`]), so dry-run and `test` see what live sees.
//!
//! An entry remembers when it was last touched. That time is not persisted (the saved form is
//! the plain map it always was): entries loaded from a snapshot count as touched at the first
//! sweep after the load.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Touched-time of entries loaded from a snapshot: set to the clock at the next sweep.
const LOADED: i64 = i64::MIN;

struct Slot<V> {
    value: V,
    touched: i64,
}

/// A node's per-key state: a map that remembers when each key was last used.
pub struct Keyed<V> {
    map: HashMap<Arc<str>, Slot<V>, super::DeviceHasher>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Keyed {
            map: HashMap::default(),
        }
    }
}

impl<V> Keyed<V> {
    /// The entry for `key`, without touching it.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|s| &s.value)
    }

    /// The entry for `key`, touched at `now`.
    pub fn get_mut(&mut self, key: &str, now: i64) -> Option<&mut V> {
        self.map.get_mut(key).map(|s| {
            s.touched = now;
            &mut s.value
        })
    }

    /// Removes the entry for `key`.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.map.remove(key).map(|s| s.value)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sets the entry for `key`, touched at `now`. A new key at `max_keys` entries first evicts
    /// the least recently used eighth. Returns how many entries were evicted.
    pub fn insert(&mut self, key: Arc<str>, value: V, now: i64, max_keys: usize) -> usize {
        let mut evicted = 0;
        if self.map.len() >= max_keys.max(1) && !self.map.contains_key(&key) {
            evicted = self.evict_oldest(self.map.len() / 8 + 1);
        }
        self.map.insert(
            key,
            Slot {
                value,
                touched: now,
            },
        );
        evicted
    }

    /// Removes at least `n` of the least recently touched entries (more when touched at the
    /// same instant as the n-th). One pass to find the cut, one to remove.
    fn evict_oldest(&mut self, n: usize) -> usize {
        if n == 0 || self.map.is_empty() {
            return 0;
        }
        let mut times: Vec<i64> = self.map.values().map(|s| s.touched).collect();
        let n = n.min(times.len());
        let (_, cut, _) = times.select_nth_unstable(n - 1);
        let cut = *cut;
        let before = self.map.len();
        self.map.retain(|_, s| s.touched > cut);
        before - self.map.len()
    }

    /// Drops entries not touched for `idle` ms before `now`, except those `keep` holds on to
    /// (state a pending timer will resolve). Entries loaded from a snapshot count as touched
    /// now. Returns how many were dropped.
    pub fn sweep(&mut self, now: i64, idle: i64, keep: impl Fn(&V) -> bool) -> usize {
        let before = self.map.len();
        let cut = now.saturating_sub(idle);
        self.map.retain(|_, s| {
            if s.touched == LOADED {
                s.touched = now;
            }
            s.touched >= cut || keep(&s.value)
        });
        before - self.map.len()
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.map.iter().map(|(k, s)| (k, &s.value))
    }
}

/// Saved as the plain map of key → value (the touch times are not state worth keeping).
impl<V: Serialize> Serialize for Keyed<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.map.iter().map(|(k, v)| (k, &v.value)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Keyed<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let plain = HashMap::<Arc<str>, V>::deserialize(d)?;
        Ok(Keyed {
            map: plain
                .into_iter()
                .map(|(k, value)| {
                    (
                        k,
                        Slot {
                            value,
                            touched: LOADED,
                        },
                    )
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_at_the_cap_evicts_the_least_recently_used_eighth() {
        let mut k = Keyed::default();
        for i in 0..80 {
            assert_eq!(k.insert(format!("k{i}").into(), i, i as i64, 80), 0);
        }
        // k0..k9 are the oldest; touching k0 makes it recent.
        assert!(k.get_mut("k0", 100).is_some());
        // An existing key never evicts.
        assert_eq!(k.insert("k5".into(), 5, 5, 80), 0);
        let evicted = k.insert("new".into(), 0, 101, 80);
        assert_eq!(evicted, 11, "80/8 + 1 oldest");
        assert!(k.get("k0").is_some(), "touched: kept");
        assert!(k.get("k1").is_none() && k.get("k11").is_none());
        assert!(k.get("k12").is_some() && k.get("new").is_some());
        assert_eq!(k.len(), 70);
    }

    #[test]
    fn sweep_drops_idle_entries_but_not_kept_ones() {
        let mut k = Keyed::default();
        k.insert("old".into(), 1, 0, 10);
        k.insert("pinned".into(), 2, 0, 10);
        k.insert("fresh".into(), 3, 900, 10);
        assert_eq!(k.sweep(1000, 500, |v| *v == 2), 1);
        assert!(k.get("old").is_none());
        assert!(k.get("pinned").is_some() && k.get("fresh").is_some());
    }

    #[test]
    fn loaded_entries_get_a_full_idle_period() {
        let mut k = Keyed::default();
        k.insert("a".into(), 1, 0, 10);
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(json, serde_json::json!({"a": 1}), "saved as the plain map");
        let mut back: Keyed<i32> = serde_json::from_value(json).unwrap();
        assert_eq!(back.sweep(10_000, 500, |_| false), 0, "loaded: touched now");
        assert_eq!(back.sweep(10_400, 500, |_| false), 0);
        assert_eq!(back.sweep(10_600, 500, |_| false), 1);
    }
}
