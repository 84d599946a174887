//! Rate-limit headers as each client family names them, so SDKs and apps can back off before
//! they are refused: OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as
//! a duration, `1s`, `6m0s`, `20ms`) and Anthropic's
//! `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (reset as an RFC 3339 time).

use crate::model::endpoint::Family;
use http::{HeaderName, HeaderValue};

/// One limit's state: `what` is `requests` or `tokens`.
pub struct LimitState {
    pub what: &'static str,
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is whole again.
    pub reset_ms: u64,
}

/// OpenAI's duration: `20ms` under a second, else minutes and seconds (`1m30s`, `12.5s`).
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (m, rest_ms) = (ms / 60_000, ms % 60_000);
    let secs = rest_ms as f64 / 1000.0;
    let secs = if rest_ms % 1000 == 0 {
        format!("{}", rest_ms / 1000)
    } else {
        format!("{secs:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    };
    if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// The headers for `limits` in `family`'s names; `now_ms` (UTC) dates Anthropic's resets.
pub fn headers(
    family: Family,
    limits: &[LimitState],
    now_ms: i64,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(limits.len() * 3);
    let mut push = |name: String, value: String| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            out.push((n, v));
        }
    };
    for l in limits {
        match family {
            Family::OpenAi => {
                push(format!("x-ratelimit-limit-{}", l.what), l.limit.to_string());
                push(
                    format!("x-ratelimit-remaining-{}", l.what),
                    l.remaining.to_string(),
                );
                push(
                    format!("x-ratelimit-reset-{}", l.what),
                    duration(l.reset_ms),
                );
            }
            Family::Anthropic => {
                let at = jiff::Timestamp::from_millisecond(now_ms + l.reset_ms as i64)
                    .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
                    .unwrap_or_default();
                push(
                    format!("anthropic-ratelimit-{}-limit", l.what),
                    l.limit.to_string(),
                );
                push(
                    format!("anthropic-ratelimit-{}-remaining", l.what),
                    l.remaining.to_string(),
                );
                push(format!("anthropic-ratelimit-{}-reset", l.what), at);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_openais() {
        assert_eq!(duration(20), "20ms");
        assert_eq!(duration(1000), "1s");
        assert_eq!(duration(12_500), "12.5s");
        assert_eq!(duration(90_000), "1m30s");
        assert_eq!(duration(360_000), "6m0s");
    }

    #[test]
    fn each_family_gets_its_own_names() {
        let l = [LimitState {
            what: "requests",
            limit: 60,
            remaining: 59,
            reset_ms: 1000,
        }];
        let oa = headers(Family::OpenAi, &l, 0);
        assert_eq!(oa[0].0.as_str(), "x-ratelimit-limit-requests");
        assert_eq!(oa[2].1.to_str().unwrap(), "1s");
        let an = headers(Family::Anthropic, &l, 0);
        assert_eq!(an[1].0.as_str(), "anthropic-ratelimit-requests-remaining");
        assert_eq!(an[2].1.to_str().unwrap(), "1970-01-01T00:00:01Z");
    }
}
