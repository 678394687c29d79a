//! Recent values in memory: per device and numeric telemetry field, the last `window` of
//! values at one point per `resolution` (the latest value of each step), so the dashboard's
//! charts open with data whether or not InfluxDB is configured.
//!
//! Each shard keeps the history of its own devices (no lock on the message path; the API asks
//! the shard). The budget is `max_devices × max_fields × window / resolution` points: a
//! series holds at most `window / resolution` points (older ones expire), a device at most
//! `max_fields` series (a new field past it is not kept, and counted), a shard at most its
//! share of `max_devices` (at the cap, the least recently updated eighth is evicted, counted).

use std::collections::VecDeque;
use std::sync::Arc;

use rhai::Map;

use crate::config::settings::HistorySettings;
use crate::engine::Keyed;

/// One field's points, oldest first: (ms since the epoch, value).
type Points = VecDeque<(i64, f64)>;

/// Longest field name kept (bytes): a longer name is a field not kept (counted). Names are in
/// the budget; a 7.5 kB name per field added 54 MiB to the default one.
pub const MAX_FIELD_NAME: usize = 64;

/// Bytes a series costs besides its points: its name (at most [`MAX_FIELD_NAME`]) and the
/// bookkeeping around it (the name's `Arc`, the deque, the list entry).
const SERIES_OVERHEAD: usize = MAX_FIELD_NAME + 64;

/// A device's series.
#[derive(Default)]
struct Series {
    fields: Vec<(Arc<str>, Points)>,
}

/// What the budget turned away since the last [`History::take_dropped`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Devices evicted at `max_devices`.
    pub devices: u64,
    /// Values of fields past `max_fields` not kept.
    pub fields: u64,
}

/// A shard's recent values.
pub struct History {
    settings: HistorySettings,
    /// Points per series.
    points: usize,
    max_devices: usize,
    devices: Keyed<Series>,
    dropped: Dropped,
}

impl History {
    /// An empty history; `shards` share `max_devices`.
    pub fn new(settings: HistorySettings, shards: usize) -> Self {
        let points = (settings.window_ms / settings.resolution_ms.max(1)).max(1) as usize;
        let max_devices = settings.max_devices.div_ceil(shards.max(1));
        History {
            settings,
            points,
            max_devices,
            devices: Keyed::default(),
            dropped: Dropped::default(),
        }
    }

    /// Whether history is kept (`history: off` sets `max_devices: 0`).
    pub fn enabled(&self) -> bool {
        self.max_devices > 0
    }

    /// Records a telemetry message's numeric top-level fields at `ts`.
    pub fn record(&mut self, device: &Arc<str>, ts: i64, payload: &Map) {
        if !self.enabled() {
            return;
        }
        // `ts` and `timestamp` are the message's time, not a reading.
        let numbers = payload
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ts" | "timestamp"))
            .filter_map(|(k, v)| {
                let x = crate::rules::nodes::common::as_f64(v)?;
                x.is_finite().then_some((k, x))
            });
        let series = match self.devices.get_mut(device, ts) {
            Some(s) => s,
            None => {
                let evicted =
                    self.devices
                        .insert(device.clone(), Series::default(), ts, self.max_devices);
                self.dropped.devices += evicted as u64;
                match self.devices.get_mut(device, ts) {
                    Some(s) => s,
                    None => return,
                }
            }
        };
        let (res, window, cap) = (
            self.settings.resolution_ms.max(1),
            self.settings.window_ms,
            self.points,
        );
        for (k, x) in numbers {
            if k.len() > MAX_FIELD_NAME {
                self.dropped.fields += 1;
                continue;
            }
            let points = match series
                .fields
                .iter_mut()
                .position(|(f, _)| f.as_ref() == k.as_str())
            {
                Some(i) => &mut series.fields[i].1,
                None if series.fields.len() >= self.settings.max_fields => {
                    self.dropped.fields += 1;
                    continue;
                }
                None => {
                    // Room for exactly the window: a deque left to grow doubles its buffer
                    // (180 points became 256), a third over the budget.
                    series
                        .fields
                        .push((Arc::from(k.as_str()), VecDeque::with_capacity(cap)));
                    &mut series.fields.last_mut().expect("just pushed").1
                }
            };
            match points.back_mut() {
                // The same step: the latest value stands for it.
                Some(last) if last.0.div_euclid(res) == ts.div_euclid(res) => *last = (ts, x),
                // An older time than the last kept: a chart is drawn in time order, skip it.
                Some(last) if ts < last.0 => {}
                _ => {
                    // Room first: a push past the capacity would double the buffer.
                    if points.len() >= cap {
                        points.pop_front();
                    }
                    points.push_back((ts, x))
                }
            }
            while points.front().is_some_and(|p| p.0 < ts - window) {
                points.pop_front();
            }
        }
    }

    /// Drops devices with nothing newer than `window` before `now`.
    pub fn sweep(&mut self, now: i64) {
        self.devices.sweep(now, self.settings.window_ms, |_| false);
    }

    /// A field's points since `since` (ms), oldest first; `None`: no such device or field.
    pub fn series(&self, device: &str, field: &str, since: i64) -> Option<Vec<(i64, f64)>> {
        let s = self.devices.get(device)?;
        let (_, points) = s.fields.iter().find(|(f, _)| f.as_ref() == field)?;
        Some(points.iter().copied().filter(|p| p.0 >= since).collect())
    }

    /// Each field's latest point: (field, ms, value), in the order the fields first came.
    pub fn latest(&self, device: &str) -> Vec<(Arc<str>, i64, f64)> {
        self.devices
            .get(device)
            .map(|s| {
                s.fields
                    .iter()
                    .filter_map(|(f, p)| p.back().map(|(t, v)| (f.clone(), *t, *v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The most bytes this history may hold: its share of `max_devices × max_fields` series
    /// of `window / resolution` points (16 bytes each) and their overhead.
    pub fn budget_bytes(&self) -> usize {
        self.max_devices * self.settings.max_fields * (self.points * 16 + SERIES_OVERHEAD)
    }

    /// The bytes it holds now, counted as [`History::budget_bytes`] counts them (buffers by
    /// their capacity, names by their length).
    pub fn held_bytes(&self) -> usize {
        self.devices
            .iter()
            .map(|(_, s)| {
                s.fields
                    .iter()
                    .map(|(f, p)| p.capacity() * 16 + f.len() + (SERIES_OVERHEAD - MAX_FIELD_NAME))
                    .sum::<usize>()
            })
            .sum()
    }

    /// Points held now.
    pub fn points(&self) -> usize {
        self.devices
            .iter()
            .map(|(_, s)| s.fields.iter().map(|f| f.1.len()).sum::<usize>())
            .sum()
    }

    /// What the budget turned away since the last call.
    pub fn take_dropped(&mut self) -> Dropped {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::Dynamic;

    fn settings(max_devices: usize, max_fields: usize) -> HistorySettings {
        HistorySettings {
            window_ms: 10_000,
            resolution_ms: 1_000,
            max_devices,
            max_fields,
        }
    }

    fn msg(fields: &[(&str, Dynamic)]) -> Map {
        fields
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect()
    }

    /// Filled to its bounds, with long names among the fields, a history holds no more bytes
    /// than its budget says (it held a third more, and names were not counted at all).
    #[test]
    fn a_full_history_stays_within_its_byte_budget() {
        let s = HistorySettings {
            window_ms: 900_000,
            resolution_ms: 5_000,
            max_devices: 20,
            max_fields: 8,
        };
        let mut h = History::new(s, 1);
        let long = "n".repeat(7_500);
        for d in 0..40 {
            let d: Arc<str> = format!("pump-{d}").into();
            for step in 0..400 {
                let mut m: Map = (0..10)
                    .map(|f| (format!("field-{f}").into(), Dynamic::from(step as f64)))
                    .collect();
                m.insert(long.as_str().into(), Dynamic::from(1.0));
                h.record(&d, 1_000_000 + step * 5_000, &m);
            }
        }
        assert_eq!(h.points(), 20 * 8 * 180, "not filled to its bounds");
        assert!(
            h.held_bytes() <= h.budget_bytes(),
            "{} bytes held, {} budgeted",
            h.held_bytes(),
            h.budget_bytes()
        );
        assert!(h.take_dropped().fields > 0, "the long name was kept");
    }

    #[test]
    fn one_point_per_step_latest_wins_and_old_points_expire() {
        let mut h = History::new(settings(10, 4), 1);
        let d: Arc<str> = "pump-1".into();
        for (ts, v) in [(1_000, 1.0), (1_500, 2.0), (2_000, 3.0), (2_100, 4.0)] {
            h.record(
                &d,
                ts,
                &msg(&[
                    ("current", Dynamic::from(v)),
                    ("ok", true.into()),
                    ("ts", Dynamic::from(ts)),
                ]),
            );
        }
        assert_eq!(
            h.series("pump-1", "current", 0),
            Some(vec![(1_500, 2.0), (2_100, 4.0)])
        );
        assert_eq!(
            h.series("pump-1", "ok", 0),
            None,
            "booleans are not charted"
        );
        assert_eq!(
            h.series("pump-1", "ts", 0),
            None,
            "the message time is not a reading"
        );
        // Integers are numbers too; 10 s later the first points are past the window.
        h.record(&d, 11_900, &msg(&[("current", Dynamic::from(7_i64))]));
        assert_eq!(
            h.series("pump-1", "current", 0),
            Some(vec![(2_100, 4.0), (11_900, 7.0)])
        );
        assert_eq!(
            h.series("pump-1", "current", 5_000),
            Some(vec![(11_900, 7.0)])
        );
        assert_eq!(h.latest("pump-1")[0].2, 7.0);
    }

    #[test]
    fn the_budget_is_kept_and_what_it_turns_away_is_counted() {
        let mut h = History::new(settings(8, 2), 1);
        for i in 0..20 {
            let d: Arc<str> = format!("d{i}").into();
            h.record(
                &d,
                1_000 + i,
                &msg(&[("a", 1.0.into()), ("b", 2.0.into()), ("c", 3.0.into())]),
            );
        }
        let dropped = h.take_dropped();
        assert!(dropped.devices >= 12, "{dropped:?}");
        assert_eq!(dropped.fields, 20, "field c of each device");
        assert!(h.points() <= 8 * 2, "{}", h.points());
        // The newest devices are the ones kept.
        assert!(h.series("d19", "a", 0).is_some());
        assert!(h.series("d0", "a", 0).is_none());
        // Off: nothing is kept.
        let mut off = History::new(settings(0, 2), 1);
        off.record(&"x".into(), 1, &msg(&[("a", 1.0.into())]));
        assert_eq!(off.points(), 0);
    }
}
