//! Retrying, one way for every connection that retries: the MQTT reconnect, the InfluxDB writer
//! and the notification channels. A [`Backoff`] doubles from its first wait up to a cap, each wait
//! 75–100% of its step (jitter, so a fleet of engines does not retry in step; never above the
//! cap). [`retryable_status`] is the HTTP rule both HTTP senders follow.
//!
//! Written here rather than taken from a crate: the retry loops are three different shapes (a
//! reconnect that never gives up, a writer that keeps taking points while it waits, a channel that
//! hands over to a fallback after N failures), and what they share is this arithmetic; the retry
//! crates (`backon`, `tokio-retry`) want to own the loop.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The MQTT reconnect backoff: 0.5 s, 1 s, 2 s … up to `cap` (`mqtt.reconnect_max`), each wait
/// 75–100% of its step, so the cap is a true cap (a broker back after an outage is seen within it).
pub fn reconnect_backoff(cap: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(500), cap)
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    seed: u64,
    first_ms: u64,
    cap_ms: u64,
}

impl Backoff {
    /// Waits of `first`, doubling, never longer than `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        // A per-process random seed (the std hasher's keys), so that engines started together
        // do not jitter alike.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        let cap_ms = (cap.as_millis() as u64).max(1);
        Backoff {
            attempt: 0,
            seed,
            first_ms: (first.as_millis() as u64).clamp(1, cap_ms),
            cap_ms,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .first_ms
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap_ms);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        Duration::from_millis(step - self.seed % (step / 4 + 1))
    }

    /// It worked: the next failure starts from the first wait again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Whether an HTTP status is worth another try: any but a 4xx, and of those 408 (timeout) and
/// 429 (too many requests), which ask to come back later. Any other 4xx refuses the request
/// itself: sending it again changes nothing.
pub fn retryable_status(code: u16) -> bool {
    !(400..500).contains(&code) || code == 408 || code == 429
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let d: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert!((375..=500).contains(&d[0]), "{d:?}");
        assert!(d[1] > 500 && d[1] <= 1000, "{d:?}");
        assert!(
            d.iter().all(|&x| x <= 5_000),
            "the cap is a true cap: {d:?}"
        );
        assert!(d[9] >= 3_750, "{d:?}");
        assert!(d[5..].windows(2).any(|w| w[0] != w[1]), "jitter: {d:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 500);
    }

    #[test]
    fn only_timeouts_and_throttling_among_4xx_are_retried() {
        assert!(retryable_status(500) && retryable_status(503));
        assert!(retryable_status(408) && retryable_status(429));
        assert!(!retryable_status(400) && !retryable_status(401) && !retryable_status(404));
    }
}
