//! A team's budget around the attempt loop: before, the request's worst-case cost is reserved
//! against the team's window (`decide::budget::worst_case`: the prompt as context fit estimates
//! it at the dearest candidate's input price, plus the output it may ask for at the dearest
//! output price), or the request is refused with 429 `budget_exceeded` and a `Retry-After` at
//! the window's end; after, the reservation is replaced by what the answer cost (its usage at
//! the serving offering's price, failovers and broken parts included; nothing for a cache hit or
//! a replay; the estimate for a success whose usage never arrived).

use crate::decide::budget::{self, nano, usd, NanoUsd};
use crate::model::team::Team;
use crate::observe::metrics::METRICS;
use crate::serve::recording::Recording;
use crate::serve::stage::{Before, Request, Stage};
use crate::serve::team::{Account, Hold};
use crate::wire::errors::{ErrorKind, GatewayError};
use async_trait::async_trait;
use std::time::SystemTime;

/// What the stage reserved for a request, to settle after.
pub struct TeamHold {
    hold: Hold,
    window: String,
    ttl_s: u64,
}

/// Budgets of the request's team (`teams[].budget`).
pub struct TeamStage;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
        team(req).is_some_and(|t| t.budget.is_some())
    }

    async fn before(&self, req: &mut Request<'_>) -> pingora::Result<Before> {
        let Some(t) = team(req) else {
            return Ok(Before::Next);
        };
        let Some(b) = &t.budget else {
            return Ok(Before::Next);
        };
        let now = unix_now();
        let (window, _, end) = budget::window(b.per, now);
        let ttl_s = (end - now).max(1) as u64;
        let at = Account {
            team: &t.name,
            window: &window,
            ttl_s,
        };
        let amount = estimate(req);
        let limit = nano(b.usd);
        METRICS
            .team_budget_usd
            .with_label_values(&[&t.name])
            .set(b.usd);
        match req.shared.ledger.reserve(at, limit, amount).await {
            Ok(hold) => {
                req.team_hold = Some(TeamHold {
                    hold,
                    window,
                    ttl_s,
                });
                Ok(Before::Next)
            }
            Err(standing) => {
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
        let cost = if ctx.cache == Some("hit") || ctx.idempotent_replay {
            0
        } else {
            match ctx.cost_usd {
                Some(c) => nano(c),
                // A success whose usage never came (a stream cut before it): the estimate.
                None if ok && (200..300).contains(&ctx.status) => h.hold.amount,
                None => 0,
            }
        };
        let at = Account {
            team: &t.name,
            window: &h.window,
            ttl_s: h.ttl_s,
        };
        req.shared.ledger.settle(at, h.hold, cost).await;
        let standing = req.shared.ledger.standing(at).await;
        METRICS
            .team_spend_usd
            .with_label_values(&[&t.name])
            .set(usd(standing.spent));
    }
}
