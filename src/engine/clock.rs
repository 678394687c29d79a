//! Where time comes from. The executor never reads a clock itself: its harness reads one and
//! moves the executor with [`super::Executor::advance_to`], which fires the timers due on the way.
//! `dry-run` and `test` use the [`VirtualClock`]; `run` uses the [`WallClock`].

/// A source of time, in milliseconds since the epoch.
pub trait Clock {
    /// The current time.
    fn now_ms(&self) -> i64;
}

/// The virtual clock of `dry-run` and `test`: it jumps to each message's time and never moves
/// backwards, so an hour of recorded data runs in an instant and always gives the same result.
///
/// ```
/// use rulechain::engine::clock::{Clock, VirtualClock};
/// let mut c = VirtualClock::default();
/// assert_eq!(c.jump_to(5_000), 5_000);
/// assert_eq!(c.jump_to(1_000), 5_000, "an older message is processed at the clock's time");
/// assert_eq!(c.now_ms(), 5_000);
/// ```
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: i64,
}

impl Default for VirtualClock {
    /// A clock that has not started: the first jump sets it.
    fn default() -> Self {
        VirtualClock { now: i64::MIN }
    }
}

impl VirtualClock {
    /// Moves to `t` unless that is in the past; returns the time now.
    pub fn jump_to(&mut self, t: i64) -> i64 {
        self.now = self.now.max(t);
        self.now
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> i64 {
        self.now
    }
}

/// The wall clock (`run`, and the time of a dry-run line that names none).
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Milliseconds since the epoch, by the wall clock: for the harnesses and sinks (the executor
/// itself never calls it).
pub fn wall_ms() -> i64 {
    WallClock.now_ms()
}
