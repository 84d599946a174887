//! Background-queue decisions: which requests may wait (`x-twinroute-priority`, RFC 7240's
//! `Prefer: respond-async`), whether a new job fits, which job the drain runs next (oldest due
//! first), how long a job that found no capacity waits before its next try, and when a job is
//! past its deadline.
//!
//! Pure: wall-clock times are passed in as Unix milliseconds (jobs outlive the process, so a
//! monotonic clock cannot date them); the store and the drain are `serve::queue`.

use std::time::Duration;

/// `x-twinroute-priority`: how long the client is prepared to wait for capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Answer now, or fail now (the default).
    Interactive,
    /// Work that can wait: queued when no capacity is found, not failed.
    Background,
}

impl Priority {
    pub fn parse(v: &str) -> Result<Priority, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "interactive" => Ok(Priority::Interactive),
            "background" => Ok(Priority::Background),
            _ => Err("x-twinroute-priority must be background or interactive".into()),
        }
    }
}

/// Whether a `Prefer` header (RFC 7240: comma-separated preferences, each a token with optional
/// `=value` and `;` parameters, case-insensitive) asks for `respond-async`.
pub fn prefers_async(prefer: &str) -> bool {
    prefer.split(',').any(|p| {
        let token = p.split([';', '=']).next().unwrap_or("").trim();
        token.eq_ignore_ascii_case("respond-async")
    })
}

/// The queue is bounded: a job past `max_jobs` waiting is refused (503 `queue_full`).
pub fn fits(waiting: usize, max_jobs: usize) -> bool {
    waiting < max_jobs
}

/// How long a job that found no capacity waits before its next try: doubling from half a
/// second, capped at `max`, with jitter (`draw` in [0, 1)) so jobs queued together do not come
/// back together. The drain's rate limit applies on top.
pub fn retry_delay(tries: u32, max: Duration, draw: f64) -> Duration {
    let base = Duration::from_millis(500);
    let full = base.saturating_mul(1u32 << tries.min(16)).min(max);
    // Between half and all of it: spread, never zero.
    full.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
}

/// A job's deadline has passed: it is failed with its reason, never run again.
pub fn expired(deadline_ms: u64, now_ms: u64) -> bool {
    now_ms >= deadline_ms
}

/// The spacing between two job starts for a drain rate of `per_s` jobs a second.
pub fn spacing(per_s: f64) -> Duration {
    Duration::from_secs_f64(1.0 / per_s.max(1e-3))
}

/// A job as the drain sees it when choosing: its place in line and when it may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Arrival order (oldest first).
    pub seq: u64,
    /// Not before this (monotonic milliseconds from any origin the caller keeps).
    pub not_before_ms: u64,
}

/// The oldest waiting job that may run now. `jobs` are in arrival order.
pub fn next_due(jobs: impl IntoIterator<Item = Waiting>, now_ms: u64) -> Option<u64> {
    jobs.into_iter()
        .find(|j| j.not_before_ms <= now_ms)
        .map(|j| j.seq)
}

/// When the drain should look again if nothing is due now: the earliest `not_before`.
pub fn next_wake(jobs: impl IntoIterator<Item = Waiting>) -> Option<u64> {
    jobs.into_iter().map(|j| j.not_before_ms).min()
}

/// A job id: `job_` and 32 hex digits of randomness (128 bits: a Location cannot be guessed,
/// and the id never carries anything of the request).
pub fn job_id(random: u128) -> String {
    format!("job_{random:032x}")
}

/// Whether `s` is shaped like a job id (checked before any lookup).
pub fn valid_job_id(s: &str) -> bool {
    s.len() == 36
        && s.starts_with("job_")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_values() {
        assert_eq!(Priority::parse("background"), Ok(Priority::Background));
        assert_eq!(Priority::parse(" Background "), Ok(Priority::Background));
        assert_eq!(Priority::parse("interactive"), Ok(Priority::Interactive));
        assert!(Priority::parse("low").is_err());
        assert!(Priority::parse("").is_err());
    }

    #[test]
    fn prefer_header() {
        assert!(prefers_async("respond-async"));
        assert!(prefers_async("Respond-Async, wait=10"));
        assert!(prefers_async("return=minimal; foo=\"bar\", respond-async"));
        assert!(prefers_async("respond-async;x=1"));
        assert!(!prefers_async("return=representation"));
        assert!(!prefers_async("respond-asynchronously"));
        assert!(!prefers_async(""));
    }

    #[test]
    fn bounded() {
        assert!(fits(0, 1));
        assert!(!fits(1, 1));
        assert!(!fits(5, 0));
    }

    #[test]
    fn retry_delay_doubles_to_its_cap_with_jitter() {
        let max = Duration::from_secs(10);
        assert_eq!(retry_delay(0, max, 1.0), Duration::from_millis(500));
        assert_eq!(retry_delay(0, max, 0.0), Duration::from_millis(250));
        assert_eq!(retry_delay(1, max, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(3, max, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(30, max, 1.0), max);
        assert_eq!(retry_delay(30, max, 0.0), max / 2);
        assert!(retry_delay(2, max, 0.3) > Duration::ZERO);
    }

    #[test]
    fn oldest_due_first() {
        let jobs = [
            Waiting {
                seq: 1,
                not_before_ms: 500,
            },
            Waiting {
                seq: 2,
                not_before_ms: 100,
            },
            Waiting {
                seq: 3,
                not_before_ms: 0,
            },
        ];
        assert_eq!(next_due(jobs, 50), Some(3));
        assert_eq!(next_due(jobs, 100), Some(2));
        assert_eq!(next_due(jobs, 500), Some(1));
        assert_eq!(next_due([], 500), None);
        assert_eq!(next_wake(jobs), Some(0));
        assert_eq!(next_wake(jobs[..2].iter().copied()), Some(100));
    }

    #[test]
    fn deadline_and_spacing() {
        assert!(!expired(1000, 999));
        assert!(expired(1000, 1000));
        assert_eq!(spacing(20.0), Duration::from_millis(50));
        assert_eq!(spacing(0.5), Duration::from_secs(2));
    }

    #[test]
    fn job_ids() {
        let id = job_id(0xfeed_u128 << 64 | 7);
        assert!(valid_job_id(&id), "{id}");
        assert_eq!(id.len(), 36);
        assert!(!valid_job_id("job_123"));
        assert!(!valid_job_id(&id.to_uppercase()));
        assert!(!valid_job_id(&id.replace("job_", "jab_")));
        assert!(!valid_job_id("job_../../../../../../../etc/passwdxx"));
    }
}
