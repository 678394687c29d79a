//! Where a device's state lives when several instances run as one engine: device → partition
//! (a stable hash, a count fixed for the cluster's life) and partition → owner instance (a
//! placement every instance computes alike from the same facts: the live instances and the
//! current owners). Pure functions: the cluster's leases and epochs are built on them.
//!
//! The placement moves as few partitions as it can: each live instance has a quota (the
//! partitions divided as evenly as they go), a partition stays with a live owner that is within
//! its quota, and only the rest (a dead or departed owner's, and an owner's excess) move, each to
//! the instance with room that ranks it highest (rendezvous hashing: a stable score per
//! instance and partition). A fourth instance joining three takes exactly its quota, ⌊P/4⌋ or
//! ⌈P/4⌉, and nothing else moves; plain rendezvous or modulo placement would move more (modulo:
//! most), since their shares only average out.

use std::collections::HashMap;

/// FNV-1a over `bytes`, then a finalizer that spreads every input bit over the output
/// (splitmix64's), so that names alike ("rc-1", "rc-2") score unalike. Stable across builds and
/// platforms, unlike the standard hasher: every instance must compute the same.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The partition of `device`, of `partitions`.
pub fn partition_of(device: &str, partitions: u32) -> u32 {
    (stable_hash(&[device.as_bytes()]) % u64::from(partitions.max(1))) as u32
}

/// How much `instance` wants `partition` (rendezvous hashing: the highest score wins).
fn score(instance: &str, partition: u32) -> u64 {
    stable_hash(&[instance.as_bytes(), &partition.to_be_bytes()])
}

/// The owner of each of `current.len()` partitions, given the live instances and each
/// partition's current owner (None: none yet). Every instance that computes it from the same
/// facts gets the same answer, whatever the order of `live`. Empty when no instance is live.
pub fn place(live: &[&str], current: &[Option<&str>]) -> Vec<String> {
    let partitions = current.len();
    let mut live: Vec<&str> = live.to_vec();
    live.sort_unstable();
    live.dedup();
    if live.is_empty() {
        return Vec::new();
    }
    // Quotas: ⌊P/N⌋ each, one more for the first P mod N instances in the order of how many
    // they hold now (most first, then by name): the extra ones go where partitions already are.
    let mut held: HashMap<&str, usize> = live.iter().map(|i| (*i, 0)).collect();
    for o in current.iter().flatten() {
        if let Some(n) = held.get_mut(o) {
            *n += 1;
        }
    }
    let mut by_held = live.clone();
    by_held.sort_by(|a, b| held[b].cmp(&held[a]).then(a.cmp(b)));
    let base = partitions / live.len();
    let extra = partitions % live.len();
    let mut room: HashMap<&str, usize> = by_held
        .iter()
        .enumerate()
        .map(|(i, inst)| (*inst, base + usize::from(i < extra)))
        .collect();
    let mut owner: Vec<Option<&str>> = vec![None; partitions];
    // Keep: a live owner keeps the partitions it ranks highest, up to its quota.
    let mut kept: Vec<(u64, usize, &str)> = current
        .iter()
        .enumerate()
        .filter_map(|(p, o)| {
            let o = (*o)?;
            let inst = live.iter().find(|i| **i == o)?;
            Some((score(inst, p as u32), p, *inst))
        })
        .collect();
    kept.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, p, inst) in kept {
        let r = room.get_mut(inst).expect("a live instance");
        if *r > 0 {
            *r -= 1;
            owner[p] = Some(inst);
        }
    }
    // Move: the rest, each to the instance with room that ranks it highest; the partitions
    // with the strongest preference choose first, so the result does not depend on order.
    let mut offers: Vec<(u64, usize, &str)> = Vec::new();
    for (p, o) in owner.iter().enumerate() {
        if o.is_none() {
            for inst in &live {
                offers.push((score(inst, p as u32), p, *inst));
            }
        }
    }
    offers.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
    for (_, p, inst) in offers {
        if owner[p].is_some() {
            continue;
        }
        let r = room.get_mut(inst).expect("a live instance");
        if *r > 0 {
            *r -= 1;
            owner[p] = Some(inst);
        }
    }
    owner
        .into_iter()
        .map(|o| o.unwrap_or(live[0]).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(owners: &[String]) -> HashMap<&str, usize> {
        let mut c = HashMap::new();
        for o in owners {
            *c.entry(o.as_str()).or_default() += 1;
        }
        c
    }

    fn moved(a: &[String], b: &[String]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn the_hash_is_stable_and_spreads_devices_over_partitions() {
        // Fixed values: a change of the hash would move every device of a running cluster.
        assert_eq!(partition_of("pump-1", 64), partition_of("pump-1", 64));
        // FNV-1a, the separator, splitmix64's finalizer, computed by hand (outside this code).
        assert_eq!(stable_hash(&[b"pump-1"]), 0x6234_00e7_7bef_5c9b);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        let mut per = vec![0usize; 64];
        for i in 0..64_000 {
            per[partition_of(&format!("device-{i}"), 64) as usize] += 1;
        }
        let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "{min}..{max} of ~1000");
    }

    #[test]
    fn placement_is_even_and_the_same_whatever_the_order() {
        let none = vec![None; 64];
        let a = place(&["rc-1", "rc-2", "rc-3"], &none);
        let b = place(&["rc-3", "rc-1", "rc-2", "rc-1"], &none);
        assert_eq!(a, b);
        let c = counts(&a);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|n| *n == 21 || *n == 22), "{c:?}");
        assert!(place(&[], &none).is_empty());
    }

    #[test]
    fn a_fourth_instance_takes_its_quota_and_nothing_else_moves() {
        for partitions in [16usize, 64, 100, 256] {
            let start = place(&["rc-1", "rc-2", "rc-3"], &vec![None; partitions]);
            let current: Vec<Option<&str>> = start.iter().map(|s| Some(s.as_str())).collect();
            let after = place(&["rc-1", "rc-2", "rc-3", "rc-4"], &current);
            let new = counts(&after)["rc-4"];
            assert!(new == partitions / 4 || new == partitions.div_ceil(4));
            // Every partition that moved went to the new instance.
            assert_eq!(moved(&start, &after), new, "{partitions} partitions");
            assert!(moved(&start, &after) <= partitions.div_ceil(4) + 1);
            // Computed again from its own result, the placement stays put.
            let settled: Vec<Option<&str>> = after.iter().map(|s| Some(s.as_str())).collect();
            assert_eq!(place(&["rc-4", "rc-3", "rc-2", "rc-1"], &settled), after);
        }
    }

    #[test]
    fn a_departed_instances_partitions_spread_over_the_others_and_only_they_move() {
        let start = place(&["rc-1", "rc-2", "rc-3", "rc-4"], &vec![None; 64]);
        let current: Vec<Option<&str>> = start.iter().map(|s| Some(s.as_str())).collect();
        let after = place(&["rc-1", "rc-2", "rc-4"], &current);
        for (p, (before, now)) in start.iter().zip(&after).enumerate() {
            if before != "rc-3" {
                assert_eq!(before, now, "partition {p} moved though its owner stayed");
            }
        }
        let c = counts(&after);
        assert!(!c.contains_key("rc-3"));
        assert!(c.values().all(|n| *n == 21 || *n == 22), "{c:?}");
    }
}
