//! The executor's devices: the registry's and those learned from messages, their attributes
//! (reported, set by an operator, bounded), and the bounds on state (idle keys and devices
//! forgotten, the least recently used evicted).

use std::sync::Arc;

use rhai::{Dynamic, Map};

use crate::config::settings::StateLimits;

use super::device::Device;
use super::executor::{Evictions, Executor};
use super::persist;

impl Executor {
    /// The devices it knows: from the registry, and learned from messages.
    pub fn devices(&self) -> impl Iterator<Item = (&Arc<str>, &Device)> {
        self.devices.iter()
    }

    /// One device.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    /// Sets server-side attributes of a device (an operator, through the API): the next
    /// message of the device sees them in `attr`. A unit value removes one. A device not known
    /// yet is learned. All or nothing: the reason, when the changes would pass the device's
    /// bounds ([`MAX_REPORTED_ATTRIBUTES`], [`MAX_DEVICE_ATTRIBUTE_BYTES`]), the engine's
    /// `max_attribute_bytes` or, for a new device, `max_devices`.
    pub fn set_server_attributes(&mut self, device: &str, changes: Map) -> Result<(), String> {
        if !self.devices.contains_key(device) && !self.make_room() {
            return Err(format!(
                "the engine tracks engine.max_devices devices and none can be forgotten; {device} is not kept"
            ));
        }
        let room = self
            .limits
            .max_attribute_bytes
            .saturating_sub(self.attribute_bytes);
        let d = self.devices.entry(Arc::from(device)).or_default();
        let grew = d.set_server(changes, room);
        // A device made for a refused change has nothing of its own: it goes again.
        if grew.is_err() && d.forgettable() && d.last_seen == 0 {
            self.devices.remove(device);
        }
        self.attribute_bytes = self.attribute_bytes.saturating_add_signed(grew?);
        self.attributes_changed = true;
        Ok(())
    }

    /// Every device's attributes, when one changed since the last call: what a checkpoint
    /// writes apart from the rest of the state, so that a checkpoint costs them only when they
    /// changed. Given back with [`Executor::attributes_unsaved`] when it could not be written.
    pub fn take_attributes(&mut self) -> Option<persist::SavedAttributes> {
        std::mem::take(&mut self.attributes_changed).then(|| self.saved_attributes())
    }

    /// Every device's reported and server-side attributes, as data.
    pub(super) fn saved_attributes(&self) -> persist::SavedAttributes {
        let of = |m: fn(&Device) -> &Map| {
            self.devices
                .iter()
                .filter(|(_, d)| !m(d).is_empty())
                .map(|(id, d)| (id.to_string(), Dynamic::from_map(m(d).clone())))
                .collect()
        };
        persist::SavedAttributes {
            reported: of(|d| &d.reported),
            server: of(|d| &d.server),
        }
    }

    /// The attributes must be written again (a checkpoint that failed, a new state file).
    pub fn attributes_unsaved(&mut self) {
        self.attributes_changed = true;
    }

    /// Sets the bounds on state (default [`Limits::default`]).
    pub fn set_limits(&mut self, limits: StateLimits) {
        self.limits = limits;
    }

    /// What the bounds dropped since the last call (the harness counts and logs it).
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evictions)
    }

    /// How many devices it learned from messages (tracked beyond the registry): what
    /// `max_devices` bounds.
    pub fn learned_devices(&self) -> usize {
        self.devices.len() - self.registered
    }

    /// Sweeps idle state when due: a sixteenth of `forget_after` apart (between a second and
    /// an hour), so nothing stays much past its time and a sweep is rare.
    pub(super) fn maybe_sweep(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        let every = (self.limits.forget_after / 16).clamp(1_000, 3_600_000);
        self.next_sweep = self.now.saturating_add(every);
        self.sweep();
    }

    /// Forgets what has been idle for `forget_after`: per-key node entries (each node decides
    /// what it must keep) and devices with nothing of their own (see [`Device::forgettable`]),
    /// no alarm and no message since.
    pub fn sweep(&mut self) {
        let (now, idle) = (self.now, self.limits.forget_after);
        let rules = self.rules.clone();
        for (slot, (ci, ni)) in Self::slot_names(&rules).into_iter().enumerate() {
            if let Some(state) = self.states[slot].as_deref_mut() {
                let n = rules.chains[ci].nodes[ni].imp.sweep(state, now, idle);
                self.evictions.keys_forgotten += n as u64;
            }
        }
        let alarmed = self.alarmed_devices();
        let n = self.forget_devices_seen_before(now.saturating_sub(idle), &alarmed);
        self.evictions.devices_forgotten += n as u64;
        self.devices_full = false;
    }

    /// Forgets the devices last seen before `cut` that have nothing of their own and no alarm;
    /// returns how many.
    fn forget_devices_seen_before(
        &mut self,
        cut: i64,
        alarmed: &std::collections::HashSet<String>,
    ) -> usize {
        let before = self.devices.len();
        self.devices.retain(|id, d| {
            !(d.forgettable() && d.last_seen < cut && !alarmed.contains(id.as_ref()))
        });
        before - self.devices.len()
    }

    /// Devices with an alarm record: never forgotten (the alarm names them).
    fn alarmed_devices(&self) -> std::collections::HashSet<String> {
        self.alarms.iter().map(|a| a.device.clone()).collect()
    }

    /// Makes room for a new device at `max_devices`: forgets the least recently seen eighth of
    /// the forgettable ones. Returns whether there is room now.
    pub(super) fn make_room(&mut self) -> bool {
        let max = self.limits.max_devices.max(1);
        if self.learned_devices() < max {
            return true;
        }
        if self.devices_full {
            return false;
        }
        let alarmed = self.alarmed_devices();
        let mut seen: Vec<i64> = self
            .devices
            .iter()
            .filter(|(id, d)| d.forgettable() && !alarmed.contains(id.as_ref()))
            .map(|(_, d)| d.last_seen)
            .collect();
        if !seen.is_empty() {
            let n = (max / 8 + 1).min(seen.len());
            let (_, cut, _) = seen.select_nth_unstable(n - 1);
            let cut = cut.saturating_add(1);
            let n = self.forget_devices_seen_before(cut, &alarmed);
            self.evictions.devices_evicted += n as u64;
        }
        self.devices_full = self.learned_devices() >= max;
        !self.devices_full
    }
}
