//! Retry pauses, the one mechanism all three programs use: exponential from a first pause,
//! capped, and jittered in its upper half so that clients cut off together do not come back
//! together. Pure but for [`jitter`], which reads no I/O.

use std::time::Duration;

/// An exponential backoff policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause before the first retry.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Backoff {
    /// A policy of `first`, doubling, capped at `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max }
    }

    /// The un-jittered pause before retry number `attempt` (1-based; 0 counts as 1):
    /// `first * 2^(attempt-1)`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The pause before retry `attempt`: [`Backoff::ceiling`] of which the upper half is
    /// scaled by `jitter` in [0, 1] (clamped; NaN counts as 1: a broken jitter source never
    /// makes a client call back sooner), so it lies in [ceiling/2, ceiling].
    pub fn pause(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let jitter = if jitter.is_nan() {
            1.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        half + half.mul_f64(jitter)
    }
}

/// A number in [0, 1) that differs between processes and calls: std's per-process random
/// hash keys mixed with the clock (jitter needs no better randomness).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let got: Vec<_> = (1..=9).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.ceiling(0), b.first);
        assert_eq!(b.ceiling(40), b.max);
        assert_eq!(b.ceiling(u32::MAX), b.max);
    }

    #[test]
    fn pause_is_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.pause(1, 0.0), Duration::from_millis(50));
        assert_eq!(b.pause(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.pause(3, 0.5), Duration::from_millis(300));
        assert_eq!(b.pause(30, 1.0), Duration::from_secs(2));
        assert_eq!(b.pause(2, 7.0), Duration::from_millis(200), "clamped");
        assert_eq!(b.pause(2, -1.0), Duration::from_millis(100), "clamped");
        assert_eq!(b.pause(2, f64::NAN), Duration::from_millis(200), "NaN is 1");
        assert_eq!(b.pause(2, f64::INFINITY), Duration::from_millis(200));
    }

    #[test]
    fn jitter_is_a_fraction_and_varies() {
        let draws: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let distinct: std::collections::HashSet<u64> = draws.iter().map(|j| j.to_bits()).collect();
        assert!(distinct.len() > 50, "{} distinct", distinct.len());
    }
}
