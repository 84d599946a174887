//! Team rate limits as buckets: a limit of N per minute is a bucket of N that refills smoothly
//! at N per minute (GCRA's equivalent with a minute of burst tolerance), so a burst of 100
//! against 60 per minute gets 60 through at once and then one a second, never a fresh 60 at
//! each minute's turn. Tokens are taken at a request's estimate and corrected by its usage
//! after (a bucket may go into debt). Pure: times are passed in, in milliseconds.

/// A bucket's level at a time (absent: full).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub level: f64,
    pub at_ms: i64,
}

impl Bucket {
    pub fn full(per_minute: u64, now_ms: i64) -> Bucket {
        Bucket {
            level: per_minute as f64,
            at_ms: now_ms,
        }
    }

    /// The level now, refilled since `at_ms` and capped at a minute's worth.
    pub fn now(self, per_minute: u64, now_ms: i64) -> Bucket {
        let rate = per_minute as f64 / 60_000.0;
        let elapsed = (now_ms - self.at_ms).max(0) as f64;
        Bucket {
            level: (self.level + elapsed * rate).min(per_minute as f64),
            at_ms: now_ms.max(self.at_ms),
        }
    }

    /// Take `n`: the bucket after, or how many milliseconds until `n` would fit.
    pub fn take(self, per_minute: u64, n: f64, now_ms: i64) -> Result<Bucket, u64> {
        let b = self.now(per_minute, now_ms);
        if b.level >= n {
            return Ok(Bucket {
                level: b.level - n,
                ..b
            });
        }
        let rate = per_minute as f64 / 60_000.0;
        // More than a minute's worth never fits: wait for a full bucket.
        let missing = n.min(per_minute as f64) - b.level;
        Err((missing / rate).ceil().max(1.0) as u64)
    }

    /// Milliseconds until it is full again (the `x-ratelimit-reset-*` headers).
    pub fn full_in_ms(self, per_minute: u64) -> u64 {
        let rate = per_minute as f64 / 60_000.0;
        ((per_minute as f64 - self.level).max(0.0) / rate).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_gets_a_minutes_worth_then_the_refill_rate() {
        let mut b = Bucket::full(60, 0);
        let mut through = 0;
        for _ in 0..100 {
            if let Ok(next) = b.take(60, 1.0, 0) {
                b = next;
                through += 1;
            }
        }
        assert_eq!(through, 60);
        // Empty: the next fits in one second, at one a second.
        assert_eq!(b.take(60, 1.0, 0), Err(1000));
        assert!(b.take(60, 1.0, 1000).is_ok());
        assert_eq!(b.full_in_ms(60), 60_000);
        // Never more than a minute's worth, however long it waited.
        assert_eq!(b.now(60, 10_000_000).level, 60.0);
        // Debt (usage above the estimate) is paid back by the refill.
        let debt = Bucket {
            level: -30.0,
            at_ms: 0,
        };
        assert_eq!(debt.take(60, 1.0, 0), Err(31_000));
    }
}
