//! Team budgets, as arithmetic: the UTC calendar window a moment falls in, a request's
//! worst-case cost (what is reserved before it is sent), and whether a reservation fits. Money
//! is counted in nano-dollars (integers), so a shared store adds exactly and a thousand small
//! requests never drift.

use crate::model::catalog::Price;
use crate::model::team::Window;

/// Nano-dollars: 1 USD = 1e9.
pub type NanoUsd = i64;

pub fn nano(usd: f64) -> NanoUsd {
    (usd * 1e9).round() as NanoUsd
}

pub fn usd(n: NanoUsd) -> f64 {
    n as f64 / 1e9
}

/// The window `unix_s` (UTC seconds) falls in: its name (a store's key: `day:2026-12-08`) and
/// its start and end, in UTC seconds.
pub fn window(per: Window, unix_s: i64) -> (String, i64, i64) {
    let ts = jiff::Timestamp::from_second(unix_s).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let (start, end, name) = match per {
        Window::Hour => {
            let start = dt.date().at(dt.hour(), 0, 0, 0);
            let end = start + jiff::Span::new().hours(1);
            (
                start,
                end,
                format!("hour:{}", start.strftime("%Y-%m-%dT%H")),
            )
        }
        Window::Day => {
            let start = dt.date().at(0, 0, 0, 0);
            let end = start + jiff::Span::new().days(1);
            (start, end, format!("day:{}", start.strftime("%Y-%m-%d")))
        }
        Window::Month => {
            let start = dt.date().first_of_month().at(0, 0, 0, 0);
            let end = start + jiff::Span::new().months(1);
            (start, end, format!("month:{}", start.strftime("%Y-%m")))
        }
    };
    let secs = |d: jiff::civil::DateTime| {
        d.to_zoned(jiff::tz::TimeZone::UTC)
            .map_or(unix_s, |z| z.timestamp().as_second())
    };
    (name, secs(start), secs(end))
}

/// A request's worst case: its prompt (estimated as for context fit) at the dearest input price
/// of the candidates it could go to, plus the output it may ask for at the dearest output price
/// (a failover to a dearer twin must still fit). Candidates without a price add nothing.
pub fn worst_case(
    prompt_tokens: u64,
    output_tokens: u64,
    prices: impl IntoIterator<Item = Price>,
) -> NanoUsd {
    let (mut input, mut output) = (0.0f64, 0.0f64);
    for p in prices {
        input = input.max(p.input_per_mtok);
        output = output.max(p.output_per_mtok);
    }
    nano((prompt_tokens as f64 * input + output_tokens as f64 * output) / 1e6)
}

/// Whether reserving `amount` more keeps spent + reserved within `budget`.
pub fn fits(budget: NanoUsd, spent: NanoUsd, reserved: NanoUsd, amount: NanoUsd) -> bool {
    spent.saturating_add(reserved).saturating_add(amount) <= budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_calendar_ones() {
        // 2026-12-08T13:45:10Z
        let t = 1_796_737_510;
        let (name, start, end) = window(Window::Day, t);
        assert_eq!(name, "day:2026-12-08");
        assert_eq!((end - start, t - start), (86_400, 13 * 3600 + 45 * 60 + 10));
        let (name, start, end) = window(Window::Hour, t);
        assert_eq!(name, "hour:2026-12-08T13");
        assert_eq!((end - start, t - start), (3600, 45 * 60 + 10));
        let (name, start, end) = window(Window::Month, t);
        assert_eq!(name, "month:2026-12");
        assert_eq!(end - start, 31 * 86_400);
    }

    #[test]
    fn the_worst_case_takes_the_dearest_price_of_each_side() {
        let cheap = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        };
        let dear_in = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 1.0,
        };
        // 1,000 prompt tokens at $3/M + 500 output tokens at $2/M = $0.004.
        assert_eq!(worst_case(1000, 500, [cheap, dear_in]), nano(0.004));
        assert_eq!(worst_case(1000, 500, []), 0);
        assert!(fits(nano(0.010), nano(0.004), nano(0.004), nano(0.002)));
        assert!(!fits(nano(0.010), nano(0.004), nano(0.004), nano(0.0021)));
    }
}
