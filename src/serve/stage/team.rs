//! A team's limits around the attempt loop. Its rate limits first: a request takes one from
//! the team's requests bucket and its estimated tokens from the tokens bucket
//! (`decide::rate`), or is refused with 429 `rate_limit_exceeded` and a `Retry-After` for when
//! it would fit; the tokens are corrected by its usage after. Then its budget: before, the
//! request's worst-case cost is reserved
//! against the team's window (`decide::budget::worst_case`: the prompt as context fit estimates
//! it at the dearest candidate's input price, plus the output it may ask for at the dearest
//! output price), or the request is refused with 429 `budget_exceeded` and a `Retry-After` at
//! the window's end; after, the reservation is replaced by what the answer cost (its usage at
//! the serving offering's price, failovers and broken parts included; nothing for a cache hit or
//! a replay; the estimate for a success whose usage never arrived).

use crate::decide::budget::{self, nano, usd, NanoUsd};
use crate::decide::rate::Bucket;
use crate::model::team::{Team, Window};
use crate::observe::metrics::METRICS;
use crate::serve::recording::Recording;
use crate::serve::stage::{Before, Request, Stage};
use crate::serve::team::{Account, Hold, Rate, RateKind};
use crate::wire::errors::{ErrorKind, GatewayError};
use crate::wire::ratelimit::{self, LimitState};
use async_trait::async_trait;
use std::time::SystemTime;

/// What the stage took for a request, to settle after: its budget reservation, and the tokens
/// it took from the tokens bucket.
pub struct TeamHold {
    budget: Option<(Hold, String, u64)>,
    tokens: Option<f64>,
}

/// Budgets of the request's team (`teams[].budget`).
pub struct TeamStage;

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The window `now` falls in (its name and end), computed once per window and thread rather
/// than per request (calendar arithmetic and a formatted name).
fn current_window(per: Window, now: i64) -> (String, i64) {
    thread_local! {
        static LAST: std::cell::RefCell<[Option<(i64, i64, String)>; 3]> =
            const { std::cell::RefCell::new([None, None, None]) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let slot = &mut last[per as usize];
        match slot {
            Some((start, end, name)) if *start <= now && now < *end => (name.clone(), *end),
            _ => {
                let (name, start, end) = budget::window(per, now);
                *slot = Some((start, end, name.clone()));
                (name, end)
            }
        }
    })
}

fn rate<'a>(t: &'a Team, kind: RateKind, per_minute: u64) -> Rate<'a> {
    Rate {
        team: &t.name,
        kind,
        per_minute,
        now_ms: unix_now_ms(),
    }
}

/// A limit's state after a take (`Err`: refused, empty until `wait` ms from now).
fn state(what: &'static str, limit: u64, taken: &Result<Bucket, u64>) -> LimitState {
    match taken {
        Ok(b) => LimitState {
            what,
            limit,
            remaining: b.level.floor().max(0.0) as u64,
            reset_ms: b.full_in_ms(limit),
        },
        Err(wait) => LimitState {
            what,
            limit,
            remaining: 0,
            reset_ms: *wait,
        },
    }
}

/// Take from the team's rate buckets: the tokens taken, or the refusal (what was taken is
/// given back). Either way the request's answer carries the limits' state in its client's
/// header names (`Plan::rate_headers`).
async fn take_rates(req: &mut Request<'_>, t: &Team) -> Result<Option<f64>, GatewayError> {
    let ledger = req.shared.ledger.clone();
    let l = &t.limits;
    let mut states = Vec::new();
    let mut refused = None;
    if let Some(rpm) = l.requests_per_minute {
        let taken = ledger.take(rate(t, RateKind::Requests, rpm), 1.0).await;
        states.push(state("requests", rpm, &taken));
        if let Err(wait) = taken {
            refused = Some(rate_refusal(t, "requests", rpm, wait));
        }
    }
    let mut tokens = None;
    if let (Some(tpm), None) = (l.tokens_per_minute, &refused) {
        let n = req.body.estimated_tokens() as f64;
        let taken = ledger.take(rate(t, RateKind::Tokens, tpm), n).await;
        states.push(state("tokens", tpm, &taken));
        match taken {
            Ok(_) => tokens = Some(n),
            Err(wait) => {
                give_back(req, t, None).await;
                refused = Some(rate_refusal(t, "tokens", tpm, wait));
            }
        }
    }
    let family = req.plan.endpoint.family();
    req.plan.rate_headers = ratelimit::headers(family, &states, unix_now_ms());
    match refused {
        Some(mut e) => {
            e.headers = req.plan.rate_headers.clone();
            Err(e)
        }
        None => Ok(tokens),
    }
}

fn rate_refusal(t: &Team, what: &str, per_minute: u64, wait_ms: u64) -> GatewayError {
    METRICS
        .team_rejections
        .with_label_values(&[&t.name, "rate"])
        .inc();
    let mut e = GatewayError::new(
        ErrorKind::RateLimited,
        format!(
            "team {} is over its {per_minute} {what} per minute; retry in {:.1} s",
            t.name,
            wait_ms as f64 / 1000.0
        ),
    );
    e.retry_after_s = Some(wait_ms.div_ceil(1000).max(1));
    e
}

/// Give back what `take_rates` took (the request was refused after it).
async fn give_back(req: &Request<'_>, t: &Team, tokens: Option<f64>) {
    let ledger = &req.shared.ledger;
    if let Some(rpm) = t.limits.requests_per_minute {
        ledger.adjust(rate(t, RateKind::Requests, rpm), -1.0).await;
    }
    if let (Some(tpm), Some(n)) = (t.limits.tokens_per_minute, tokens) {
        ledger.adjust(rate(t, RateKind::Tokens, tpm), -n).await;
    }
}

/// The request's worst case over the candidates it could go to.
fn estimate(req: &Request<'_>) -> NanoUsd {
    let cfg = req.cfg;
    let prices = req
        .plan
        .candidates
        .iter()
        .filter_map(|c| cfg.catalog.offering(c.model, c.offering).price);
    // The output it asks for, else the most any candidate's provider would let it have.
    let output = req.body.max_output_tokens.unwrap_or_else(|| {
        req.plan
            .candidates
            .iter()
            .map(|c| cfg.providers[c.provider].default_max_tokens)
            .max()
            .unwrap_or(4096)
    });
    budget::worst_case(req.body.bytes().len() as u64 / 4, output, prices)
}

fn team<'a>(req: &Request<'a>) -> Option<&'a Team> {
    req.plan.team.map(|t| &req.cfg.teams[t.0])
}

#[async_trait]
impl Stage for TeamStage {
    fn applies(&self, req: &Request<'_>) -> bool {
        team(req).is_some_and(|t| {
            t.budget.is_some()
                || t.limits.requests_per_minute.is_some()
                || t.limits.tokens_per_minute.is_some()
        })
    }

    async fn before(&self, req: &mut Request<'_>) -> pingora::Result<Before> {
        let Some(t) = team(req) else {
            return Ok(Before::Next);
        };
        let tokens = match take_rates(req, t).await {
            Ok(n) => n,
            Err(e) => return Ok(Before::Refuse(e)),
        };
        let Some(b) = &t.budget else {
            req.team_hold = Some(TeamHold {
                budget: None,
                tokens,
            });
            return Ok(Before::Next);
        };
        let now = unix_now_ms() / 1000;
        let (window, end) = current_window(b.per, now);
        let ttl_s = (end - now).max(1) as u64;
        let at = Account {
            team: &t.name,
            window: &window,
            ttl_s,
        };
        let amount = estimate(req);
        let limit = nano(b.usd);
        match req.shared.ledger.reserve(at, limit, amount).await {
            Ok(hold) => {
                req.team_hold = Some(TeamHold {
                    budget: Some((hold, window, ttl_s)),
                    tokens,
                });
                Ok(Before::Next)
            }
            Err(standing) => {
                give_back(req, t, tokens).await;
                METRICS
                    .team_rejections
                    .with_label_values(&[&t.name, "budget"])
                    .inc();
                let reset = jiff::Timestamp::from_second(end)
                    .map(|ts| ts.to_string())
                    .unwrap_or_default();
                let mut e = GatewayError::new(
                    ErrorKind::BudgetExceeded,
                    format!(
                        "team {} has spent ${:.6} of its ${} budget per {} (${:.6} reserved by \
                         requests in flight; this one may cost up to ${:.6}); the budget resets \
                         at {reset}",
                        t.name,
                        usd(standing.spent),
                        b.usd,
                        b.per.as_str(),
                        usd(standing.reserved),
                        usd(amount),
                    ),
                );
                e.retry_after_s = Some(ttl_s);
                Ok(Before::Refuse(e))
            }
        }
    }

    async fn after(&self, req: &mut Request<'_>, _answer: Option<&Recording>, ok: bool) {
        let (Some(t), Some(h)) = (team(req), req.team_hold.take()) else {
            return;
        };
        let ctx = &*req.ctx;
        let kept = ctx.cache == Some("hit") || ctx.idempotent_replay;
        // The tokens bucket: the estimate taken, corrected to what the usage says was used.
        if let (Some(tpm), Some(est)) = (t.limits.tokens_per_minute, h.tokens) {
            let used = match (ctx.input_tokens, ctx.output_tokens) {
                _ if kept => 0.0,
                (Some(i), Some(o)) => (i + o) as f64,
                _ => est,
            };
            if used != est {
                req.shared
                    .ledger
                    .adjust(rate(t, RateKind::Tokens, tpm), used - est)
                    .await;
            }
        }
        let Some((hold, window, ttl_s)) = h.budget else {
            return;
        };
        let cost = if kept {
            0
        } else {
            match ctx.cost_usd {
                Some(c) => nano(c),
                // A success whose usage never came (a stream cut before it): the estimate.
                None if ok && (200..300).contains(&ctx.status) => hold.amount,
                None => 0,
            }
        };
        let at = Account {
            team: &t.name,
            window: &window,
            ttl_s,
        };
        let standing = req.shared.ledger.settle(at, hold, cost).await;
        METRICS
            .team_spend_usd
            .with_label_values(&[&t.name])
            .set(usd(standing.spent));
    }
}

/// Set every team's budget gauge (`twinroute_team_budget_usd`): at start and on each reload,
/// not per request.
pub fn observe_budgets(cfg: &crate::model::Config) {
    for t in &cfg.teams {
        if let Some(b) = &t.budget {
            METRICS
                .team_budget_usd
                .with_label_values(&[&t.name])
                .set(b.usd);
        }
    }
}

/// What a team sees of its own quota (`GET /v1/twinroute/usage`), and `/status` of every team:
/// its budget's window, spent, reserved, remaining and reset; its rate buckets' state.
pub async fn usage(shared: &crate::serve::state::Shared, t: &Team) -> serde_json::Value {
    let ledger = &shared.ledger;
    let budget = match &t.budget {
        None => serde_json::Value::Null,
        Some(b) => {
            let now = unix_now_ms() / 1000;
            let (window, start, end) = budget::window(b.per, now);
            let at = Account {
                team: &t.name,
                window: &window,
                ttl_s: (end - now).max(1) as u64,
            };
            let s = ledger.standing(at).await;
            let iso = |secs: i64| {
                jiff::Timestamp::from_second(secs)
                    .map(|ts| ts.to_string())
                    .unwrap_or_default()
            };
            serde_json::json!({
                "usd": b.usd,
                "per": b.per.as_str(),
                "window_start": iso(start),
                "resets_at": iso(end),
                "spent_usd": usd(s.spent),
                "reserved_usd": usd(s.reserved),
                "remaining_usd": usd((nano(b.usd) - s.spent - s.reserved).max(0)),
            })
        }
    };
    let mut limits = serde_json::Map::new();
    for (key, kind, per_minute) in [
        (
            "requests_per_minute",
            RateKind::Requests,
            t.limits.requests_per_minute,
        ),
        (
            "tokens_per_minute",
            RateKind::Tokens,
            t.limits.tokens_per_minute,
        ),
    ] {
        let Some(pm) = per_minute else { continue };
        // Taking nothing refills the bucket to now and says where it stands.
        if let Ok(b) = ledger.take(rate(t, kind, pm), 0.0).await {
            limits.insert(
                key.into(),
                serde_json::json!({
                    "limit": pm,
                    "remaining": b.level.floor().max(0.0) as u64,
                    "full_in_s": b.full_in_ms(pm) as f64 / 1000.0,
                }),
            );
        }
    }
    serde_json::json!({
        "object": "twinroute.usage",
        "team": t.name,
        "budget": budget,
        "limits": limits,
    })
}
