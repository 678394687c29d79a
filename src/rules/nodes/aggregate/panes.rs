//! Sliding windows as panes. A window of `size` ending at every multiple of `every` is the sum
//! of its `size / every` panes (each `every` long, aligned to the epoch), so a key keeps one
//! accumulator per output and pane, whatever the message rate: a 60 s window every 10 s holds
//! six panes, not the 600 messages of a 10 msg/s device. A pane goes once no window still to
//! close needs it. Tumbling windows with `allowed_lateness` are the case `every == size`.

use std::collections::VecDeque;

use rhai::Dynamic;

use super::acc::{Acc, Func, MAX_VALUES};
use crate::engine::Packet;

/// At most this many panes per window, lateness included: `(window + allowed_lateness) / every`.
pub(super) const MAX_PANES: i64 = 1_000;

/// The windows: their length, their step, and how long after its end a window still takes
/// late messages (`None`: windows follow the engine's clock).
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub(super) size: i64,
    pub(super) every: i64,
    pub(super) lateness: Option<i64>,
}

impl Shape {
    fn pane_start(&self, t: i64) -> i64 {
        t.saturating_sub(t.rem_euclid(self.every))
    }

    /// The end of the first window that holds time `t` and is still open at `now` (it closes
    /// at its end plus the lateness); `None` when every window holding `t` has closed.
    pub(super) fn first_open_end(&self, t: i64, now: i64) -> Option<i64> {
        let ps = self.pane_start(t);
        let closed_before = now
            .saturating_sub(self.lateness.unwrap_or(0))
            .saturating_sub(ps);
        let k = (closed_before.div_euclid(self.every) + 1).max(1);
        (k.saturating_mul(self.every) <= self.size).then(|| ps.saturating_add(k * self.every))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Pane {
    start: i64,
    accs: Vec<Acc>,
    messages: u64,
}

/// A key's panes, oldest first, and the next window to close.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Panes {
    panes: VecDeque<Pane>,
    /// The end of the next window to close (its timer is due at that plus the lateness).
    pub(super) next_end: i64,
    /// That timer's tag.
    pub(super) tag: u64,
    /// The last message without its `msg`: its `meta` and `attr` go with the output.
    pub(super) last: Packet,
}

impl Panes {
    pub(super) fn new(next_end: i64, tag: u64, last: Packet) -> Self {
        Panes {
            panes: VecDeque::new(),
            next_end,
            tag,
            last,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.panes.is_empty()
    }

    /// Adds a message at time `t` to its pane; false when every window holding it has closed
    /// (it is late).
    pub(super) fn add(
        &mut self,
        shape: Shape,
        t: i64,
        values: Vec<Option<Dynamic>>,
        funcs: &[Func],
    ) -> bool {
        let ps = shape.pane_start(t);
        if ps.saturating_add(shape.size) < self.next_end {
            return false;
        }
        // Usually the newest pane; a late message goes before it.
        let at = self.panes.iter().rposition(|p| p.start <= ps);
        let i = match at {
            Some(i) if self.panes[i].start == ps => i,
            other => {
                let i = other.map_or(0, |i| i + 1);
                self.panes.insert(
                    i,
                    Pane {
                        start: ps,
                        accs: vec![Acc::default(); funcs.len()],
                        messages: 0,
                    },
                );
                i
            }
        };
        // A window's values for a percentile are bounded as a tumbling window's are: its
        // panes share the bound.
        let per_window = (shape.size / shape.every).max(1) as usize;
        let cap = (MAX_VALUES / per_window).max(100);
        let pane = &mut self.panes[i];
        pane.messages += 1;
        for ((acc, v), f) in pane.accs.iter_mut().zip(values).zip(funcs) {
            if let Some(v) = v {
                acc.add(*f, v, cap);
            }
        }
        true
    }

    /// Closes the window ending at `next_end`: its end, and its accumulators and message count
    /// if it had any message. Panes no later window holds go, and `next_end` moves on.
    pub(super) fn close(&mut self, shape: Shape, outs: usize) -> (i64, Option<(Vec<Acc>, u64)>) {
        let end = self.next_end;
        let from = end.saturating_sub(shape.size);
        let mut accs = vec![Acc::default(); outs];
        let mut messages = 0;
        for p in self.panes.iter().filter(|p| p.start >= from && p.start < end) {
            messages += p.messages;
            for (a, b) in accs.iter_mut().zip(&p.accs) {
                a.merge(b);
            }
        }
        let keep_from = end
            .saturating_add(shape.every)
            .saturating_sub(shape.size);
        self.panes.retain(|p| p.start >= keep_from);
        self.next_end = end.saturating_add(shape.every);
        (end, (messages > 0).then_some((accs, messages)))
    }
}

#[cfg(test)]
mod tests {
    use super::Shape;

    #[test]
    fn the_first_open_window_of_a_late_message() {
        let s = Shape {
            size: 60_000,
            every: 10_000,
            lateness: Some(5_000),
        };
        // On time: the window ending at the pane's end.
        assert_eq!(s.first_open_end(12_000, 12_000), Some(20_000));
        // 4 s late for the window ending at 20 s: it is still open (5 s of lateness).
        assert_eq!(s.first_open_end(12_000, 24_000), Some(20_000));
        // 6 s late: that window closed, the next one (ending at 30 s) holds it too.
        assert_eq!(s.first_open_end(12_000, 26_000), Some(30_000));
        // Every window holding 12 s (the last ends at 70 s) has closed by 75 s.
        assert_eq!(s.first_open_end(12_000, 74_999), Some(70_000));
        assert_eq!(s.first_open_end(12_000, 75_000), None);
    }
}
