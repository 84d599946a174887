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

/// One limit's three header names in a family, static (no name is parsed per request).
fn names(family: Family, what: &str) -> [HeaderName; 3] {
    let n = HeaderName::from_static;
    match (family, what) {
        (Family::OpenAi, "requests") => [
            n("x-ratelimit-limit-requests"),
            n("x-ratelimit-remaining-requests"),
            n("x-ratelimit-reset-requests"),
        ],
        (Family::OpenAi, _) => [
            n("x-ratelimit-limit-tokens"),
            n("x-ratelimit-remaining-tokens"),
            n("x-ratelimit-reset-tokens"),
        ],
        (Family::Anthropic, "requests") => [
            n("anthropic-ratelimit-requests-limit"),
            n("anthropic-ratelimit-requests-remaining"),
            n("anthropic-ratelimit-requests-reset"),
        ],
        (Family::Anthropic, _) => [
            n("anthropic-ratelimit-tokens-limit"),
            n("anthropic-ratelimit-tokens-remaining"),
            n("anthropic-ratelimit-tokens-reset"),
        ],
    }
}

/// The headers for `limits` in `family`'s names; `now_ms` (UTC) dates Anthropic's resets.
pub fn headers(
    family: Family,
    limits: &[LimitState],
    now_ms: i64,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(limits.len() * 3);
    for l in limits {
        let [limit, remaining, reset] = names(family, l.what);
        let reset_value = match family {
            Family::OpenAi => duration(l.reset_ms),
            Family::Anthropic => jiff::Timestamp::from_millisecond(now_ms + l.reset_ms as i64)
                .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
                .unwrap_or_default(),
        };
        out.push((limit, HeaderValue::from(l.limit)));
        out.push((remaining, HeaderValue::from(l.remaining)));
        if let Ok(v) = HeaderValue::from_str(&reset_value) {
            out.push((reset, v));
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
