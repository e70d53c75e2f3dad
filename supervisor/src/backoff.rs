//! Retry delays, shared by the Bazel restart loop and ReportReady. Pure.

use std::time::Duration;

/// Delay before retry number `attempt` (1-based): `first`, doubling, capped at `max`.
pub fn backoff(attempt: u32, first: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    first.checked_mul(factor).map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let f = Duration::from_millis(500);
        let m = Duration::from_secs(30);
        let got: Vec<_> = (1..=9).map(|a| backoff(a, f, m).as_millis()).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(backoff(0, f, m), f);
        assert_eq!(backoff(40, f, m), m);
        assert_eq!(backoff(u32::MAX, f, m), m);
    }
}
