//! Exponential backoff with full jitter between attempts (AWS architecture blog's "full
//! jitter"): the wait before retry `n` is uniform in `[0, min(max, base * 2^n)]`, which spreads
//! a burst of clients retrying against the same failure instead of synchronising them.

use crate::model::Backoff;
use std::time::Duration;

/// Upper bound of the wait before the retry that follows failed attempt number `attempt`
/// (0-based: the wait after the first failure uses `attempt = 0`).
pub fn ceiling(b: &Backoff, attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
    let ms = (b.base.as_millis() as u64).saturating_mul(factor);
    Duration::from_millis(ms).min(b.max)
}

/// The wait itself, given a uniform sample `unit` in `[0, 1)`; separate from the randomness
/// so the bounds are testable.
pub fn delay_from(b: &Backoff, attempt: u32, unit: f64) -> Duration {
    ceiling(b, attempt).mul_f64(unit.clamp(0.0, 1.0))
}

pub fn delay(b: &Backoff, attempt: u32) -> Duration {
    delay_from(b, attempt, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(1000),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let got: Vec<u128> = (0..8).map(|n| ceiling(&b(), n).as_millis()).collect();
        assert_eq!(got, vec![25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(ceiling(&b(), 500), Duration::from_millis(1000));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for n in 0..10 {
            for _ in 0..200 {
                let d = delay(&b(), n);
                assert!(d <= ceiling(&b(), n));
            }
        }
        assert_eq!(delay_from(&b(), 2, 0.0), Duration::ZERO);
        assert_eq!(delay_from(&b(), 2, 0.5), Duration::from_millis(50));
    }

    #[test]
    fn zero_base_means_no_wait() {
        let z = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(delay(&z, 3), Duration::ZERO);
    }
}
