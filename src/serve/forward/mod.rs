//! The attempt loop: send the request to candidates in order until one answers, within one
//! deadline, then stream that answer to the client.
//!
//! Each attempt is: pick a candidate health admits → splice its model ID into the body → connect
//! (Pingora connector, pooled) → write header and body → wait for the response header under the
//! first-byte budget → classify. A retryable outcome moves on (with backoff); anything else is the
//! answer. Once a byte of the answer went to the client there is no going back, so the decision
//! is made on the response header, before anything is written downstream.
//!
//! The decisions are not made here: `decide::attempt::Attempts` says how long to back off, how
//! long an attempt may take, what its outcome means and which health signals it gives; this file
//! executes them. The rooms: this module holds the plan (`Plan`, continuations) and the attempt
//! loop; `pick` asks health which candidate it admits, `exchange` is one attempt on the wire,
//! `relay` the answer back to the client.

use crate::decide::attempt::{Attempts, Outcome, Probation, Step};
use crate::decide::outcome::FailoverReason;
use crate::decide::route::Candidate;
use crate::model::endpoint::{answer_family, Endpoint, Family};
use crate::model::error::GatewayError;
use crate::model::{ModelId, Policy, ProviderId};
use crate::observe::access_log::RequestLog;
use crate::observe::metrics::METRICS;
use crate::serve::cache::Rendered;
use crate::serve::downstream::Downstream;
use crate::serve::names;
use crate::serve::state::{Generation, Shared};
use crate::wire::body::RequestBody;
use crate::wire::request as provider;
use crate::wire::sse::stream_error_event;
use crate::wire::stream_event::StreamTrack;
use pingora::prelude::*;
use std::time::Duration;
use tokio::time::Instant;

mod attempt;
mod deliver;
mod exchange;
mod pick;
mod relay;

use attempt::{attempt_body, exchange_held, record_attempt, Tried};
use deliver::{deliver, Winner};
use exchange::{pool_again, Call};
use pick::{pick, Pick};
pub use relay::send_error;

/// The routing decision for one request.
pub struct Plan {
    pub endpoint: Endpoint,
    pub model: ModelId,
    pub candidates: Vec<Candidate>,
    pub policy: Policy,
    pub pinned: bool,
    /// `x-twinroute-region`: endpoints outside it are not used either.
    pub region: Option<String>,
    /// The request's route asked for zero retention (a provider may ask too): connections
    /// not pooled, the body wiped.
    pub zero_retention: bool,
    /// No store may read or write this request (cache, idempotency, queue): its route, or a
    /// provider it could reach, keeps nothing (`decide::route::may_reach_zero_retention`).
    pub keep_nothing: bool,
    /// The client's body parsed, once, by the first part of the request that needed it
    /// (translation or `lacks` checks before routing, else the prompt cache): translation builds
    /// a candidate's body from it, a continuation adds the text sent to it. The splice path never
    /// reads it; `None` when nothing needed the body parsed.
    pub parsed_body: Option<serde_json::Value>,
    /// The client asked for a usage chunk at the end of its stream (OpenAI clients).
    pub include_usage: bool,
    /// This plan completes a stream that broke after the client received part of it.
    pub continuation: Option<Continuation>,
    /// `x-twinroute-cache` on the answer (`miss`, `bypass`) when the prompt cache is on.
    pub cache_header: Option<&'static str>,
    /// A cached answer past its TTL but within `stale_if_error_s`: served instead of the error
    /// when every candidate fails.
    pub stale: Option<Rendered>,
    /// Background work (or the queue's own run of it): when every candidate fails, nothing is
    /// written and `run` returns `Ran::NoCapacity` with the error the client would have had.
    pub queue_on_fail: bool,
    /// The team the client token names (`teams`).
    pub team: Option<crate::model::team::TeamId>,
    /// The team's rate-limit headers, on whatever answers the request.
    pub rate_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// How `run` ended.
pub enum Ran {
    /// An answer or an error reached the client.
    Done,
    /// Background work found no capacity; nothing was written. The error, and the attempts it
    /// made (for `x-twinroute-attempts`).
    NoCapacity(GatewayError, usize),
}

/// A committed stream that broke under `stream_recovery: continue`: what the client has, and
/// what the continuation must carry.
pub struct Continuation {
    /// What the client received (its text, identity fields, open block).
    track: StreamTrack,
    /// The client's request plus the assistant turn holding the text sent (the prefill).
    json: serde_json::Value,
    /// The provider whose stream broke, and why: the error event names it if nothing completes
    /// the stream.
    origin: String,
    reason: FailoverReason,
    /// The original request's deadline and the attempts it has left.
    deadline: Instant,
    attempts_left: u32,
}

/// How the attempts of a plan ended.
enum Attempted {
    /// An answer or an error reached the client.
    Done,
    /// Every candidate failed on a `queue_on_fail` plan; nothing was written.
    NoCapacity(GatewayError, usize),
    /// A committed stream broke and can be completed from another candidate.
    Broken(Box<BrokenStream>),
}

/// A committed stream that broke, as the relay hands it back.
struct BrokenStream {
    reason: FailoverReason,
    provider: ProviderId,
    track: StreamTrack,
    /// The request's deadline and the attempts it has left, for the continuation.
    deadline: Instant,
    attempts_left: u32,
}

/// Run the attempts and write the response (the answer or an error) to the client; background
/// work that finds no capacity comes back as `Ran::NoCapacity`, unanswered.
/// Returns `Err` only when the client connection broke.
///
/// The loop only executes: `decide::attempt::Attempts` says how long to wait, how long an
/// attempt may take, what its outcome means and which health signals it gives.
pub async fn run(
    shared: &Shared,
    rt: &Generation,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    plan: &Plan,
    body: &RequestBody,
) -> Result<Ran> {
    let broken = match attempt_loop(shared, rt, session, ctx, plan, body).await? {
        Attempted::Done => return Ok(Ran::Done),
        Attempted::NoCapacity(e, tried) => return Ok(Ran::NoCapacity(e, tried)),
        Attempted::Broken(b) => b,
    };
    let origin = rt.config.providers[broken.provider].name.clone();
    let Some(next) = continuation_plan(rt, plan, body, *broken, origin.clone()) else {
        METRICS
            .stream_recoveries
            .with_label_values(&["no_candidate"])
            .inc();
        end_broken_stream(session, ctx, plan.endpoint.family(), &origin).await?;
        return Ok(Ran::Done);
    };
    match attempt_loop(shared, rt, session, ctx, &next, body).await? {
        Attempted::Done => {}
        // A continuation's own break is not continued again: the relay ends it. (A
        // continuation never queues: the client already holds half a stream.)
        Attempted::Broken(_) | Attempted::NoCapacity(..) => {
            end_broken_stream(session, ctx, plan.endpoint.family(), &origin).await?
        }
    }
    Ok(Ran::Done)
}

/// The plan that completes a broken stream: the candidates left that accept assistant prefill
/// (never the offering that broke), the client's request with the text sent as an assistant
/// turn, the original deadline and what is left of its attempts. `None` when no candidate can.
fn continuation_plan(
    rt: &Generation,
    plan: &Plan,
    body: &RequestBody,
    broken: BrokenStream,
    origin: String,
) -> Option<Plan> {
    let cfg = &rt.config;
    let candidates: Vec<Candidate> = plan
        .candidates
        .iter()
        .filter(|c| c.provider != broken.provider)
        .filter(|c| {
            let offering = cfg.catalog.offering(c.model, c.offering);
            let api = cfg.providers[c.provider].api();
            offering.prefill.unwrap_or_else(|| {
                answer_family(api) == Family::Anthropic
                    && crate::wire::anthropic::accepts_prefill(&offering.model_id)
            })
        })
        .cloned()
        .collect();
    let (attempts_left, deadline) = (broken.attempts_left, broken.deadline);
    if candidates.is_empty() || attempts_left == 0 {
        return None;
    }
    let mut json: serde_json::Value = match &plan.parsed_body {
        Some(j) => j.clone(),
        None => serde_json::from_slice(body.bytes()).ok()?,
    };
    let (prefill, _) = broken.track.prefill();
    json.get_mut("messages")?
        .as_array_mut()?
        .push(serde_json::json!({"role": "assistant", "content": prefill}));
    Some(Plan {
        endpoint: plan.endpoint,
        model: plan.model,
        candidates,
        policy: plan.policy.clone(),
        pinned: false,
        region: plan.region.clone(),
        zero_retention: plan.zero_retention,
        keep_nothing: plan.keep_nothing,
        parsed_body: None,
        include_usage: plan.include_usage,
        cache_header: None,
        stale: None,
        queue_on_fail: false,
        team: plan.team,
        rate_headers: plan.rate_headers.clone(),
        continuation: Some(Continuation {
            track: broken.track,
            json,
            origin,
            reason: broken.reason,
            deadline,
            attempts_left,
        }),
    })
}

/// End a broken stream that nothing completed with the error event naming the original break.
async fn end_broken_stream(
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    family: Family,
    origin: &str,
) -> Result<()> {
    session.set_keepalive(None);
    ctx.stream_recovery = Some(format!("failed:{origin}"));
    let event = stream_error_event(family, origin);
    session.write_body(Some(event), true).await
}

/// Where the attempt loop is between attempts: the attempt state machine, the next candidate in
/// order, the provider tried last (for the failover metric) and a same-offering retry the last
/// attempt asked for.
struct Turns {
    attempts: Attempts,
    cursor: usize,
    previous: Option<ProviderId>,
    again: Option<Again>,
}

/// A retry of the same candidate on the same endpoint (a short Retry-After), after `wait`.
struct Again {
    candidate: Candidate,
    endpoint: usize,
    wait: Duration,
}

impl Turns {
    fn new(rt: &Generation, plan: &Plan) -> Turns {
        let first = &rt.config.providers[plan.candidates[0].provider];
        let mut attempts = Attempts::new(
            &plan.policy,
            plan.pinned,
            first.timeouts.first_byte,
            Instant::now(),
        );
        if let Some(c) = &plan.continuation {
            attempts.limit(c.attempts_left, c.deadline);
        }
        Turns {
            attempts,
            cursor: 0,
            previous: None,
            again: None,
        }
    }

    /// The next attempt's candidate, after its backoff: the retry asked for, else the next
    /// candidate health admits. `None` when the attempts or the deadline are spent, or nothing
    /// is admitted.
    async fn next<'r>(&mut self, rt: &'r Generation, plan: &Plan) -> Option<Pick<'r>> {
        let backoff = self
            .attempts
            .next_wait(Instant::now(), rand::random::<f64>())?;
        let wait = self.again.as_ref().map_or(backoff, |a| a.wait);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let now = Instant::now();
        if !self.attempts.begin(now) {
            return None;
        }
        match self.again.take() {
            Some(a) => Some(Pick {
                candidate: a.candidate,
                endpoint: a.endpoint,
                probation: Probation::default(),
                _slot: None,
            }),
            None => self.admitted(rt, plan, now).await,
        }
    }

    /// The next candidate health admits. A half-open breaker's probation is the fleet's one
    /// (`VerdictBus::claim_probation`): when another replica holds it, this candidate waits for
    /// that trial's verdict and the next is picked. Without a fleet this is `pick` alone.
    async fn admitted<'r>(
        &mut self,
        rt: &'r Generation,
        plan: &Plan,
        now: Instant,
    ) -> Option<Pick<'r>> {
        for _ in 0..=plan.candidates.len() {
            let p = pick(rt, plan, &mut self.cursor, now, &mut self.attempts)?;
            let Some(bus) = rt.health.bus() else {
                return Some(p);
            };
            if !p.probation.endpoint && !p.probation.offering {
                return Some(p);
            }
            let c = &p.candidate;
            let provider = &rt.config.providers[c.provider];
            let model = &rt.config.catalog.offering(c.model, c.offering).model_id;
            let grain = p.probation.offering.then_some(model.as_str());
            let at = rt.health.subject(c.provider, p.endpoint, grain);
            let hold = provider.timeouts.first_byte;
            if bus.claim_probation(&at, hold).await {
                return Some(p);
            }
            let now = Instant::now();
            if p.probation.endpoint {
                rt.health
                    .probation_taken(c.provider, p.endpoint, None, hold, now);
            }
            if p.probation.offering {
                rt.health
                    .probation_taken(c.provider, p.endpoint, Some(model), hold, now);
            }
        }
        None
    }

    /// Note an attempt about to go to `pick`: fail-open and zero retention in the access line,
    /// and a failover from the provider tried last.
    fn note(&mut self, rt: &Generation, plan: &Plan, ctx: &mut RequestLog, pick: &Pick<'_>) {
        let cfg = &rt.config;
        let cand = &pick.candidate;
        let provider = &cfg.providers[cand.provider];
        if cand.fail_open.is_some() {
            ctx.fail_open = true;
        }
        // Wiped whenever the route or any provider tried asks for it, answered or not.
        if plan.zero_retention || provider.zero_retention {
            ctx.zero_retention = true;
        }
        if let (Some(prev), Some(f)) = (
            self.previous.filter(|p| *p != cand.provider),
            self.attempts.failures().last(),
        ) {
            METRICS
                .failovers
                .with_label_values(&[
                    &cfg.catalog.model(plan.model).name,
                    &cfg.providers[prev].name,
                    &provider.name,
                    f.reason.as_str(),
                ])
                .inc();
        }
        self.previous = Some(cand.provider);
    }

    /// Keep the retry of the same offering a step asked for, if it fits the deadline.
    fn retry_if_asked(&mut self, step: Step, pick: &Pick<'_>) {
        if let Step::Again { wait, .. } = step {
            if self.attempts.fits(Instant::now(), wait) {
                self.again = Some(Again {
                    candidate: pick.candidate.clone(),
                    endpoint: pick.endpoint,
                    wait,
                });
            }
        }
    }
}

/// Run a plan's attempts: deliver an answer, an error, or (a committed stream that broke under
/// `stream_recovery: continue`) hand the break back. Each turn: pick a candidate health admits,
/// build its body and header, exchange and hold to the commit point, record the outcome, then
/// deliver, retry or move on as the attempt state machine says.
async fn attempt_loop(
    shared: &Shared,
    rt: &Generation,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    plan: &Plan,
    body: &RequestBody,
) -> Result<Attempted> {
    let cfg = &rt.config;
    let mut turns = Turns::new(rt, plan);
    ctx.zero_retention |= plan.zero_retention;
    while let Some(pick) = turns.next(rt, plan).await {
        turns.note(rt, plan, ctx, &pick);
        let cand = &pick.candidate;
        let provider = &cfg.providers[cand.provider];
        let offering = cfg.catalog.offering(cand.model, cand.offering);
        let (budget, bounded_by_deadline) = turns
            .attempts
            .budget(Instant::now(), provider.timeouts.first_byte);
        // Parameters this offering must not see: cut from the body, everything else as sent.
        let dropped = body.present(&offering.drop_params);
        let (spliced, upstream_endpoint) =
            match attempt_body(plan, body, provider, offering, &dropped) {
                Ok(b) => b,
                Err(_) if plan.continuation.is_some() => continue,
                Err(e) => {
                    send_error(session, ctx, e, plan.endpoint.family(), vec![]).await?;
                    return Ok(Attempted::Done);
                }
            };
        let upstream = &provider.endpoints[pick.endpoint];
        let header = provider::build_request(
            provider,
            upstream,
            upstream_endpoint,
            &offering.model_id,
            body.stream,
            session.req_header(),
            spliced.len(),
        )?;
        let started = Instant::now();
        let call = Call {
            shared,
            provider,
            upstream,
            body: &spliced,
            budget,
            bounded_by_deadline,
        };
        let (outcome, answer) =
            exchange_held(call, header, cfg, plan, started, &turns.attempts).await?;
        let tried = Tried {
            candidate: cand,
            endpoint: pick.endpoint,
            probation: pick.probation,
            provider,
            model_id: &offering.model_id,
            started,
        };
        let recorded = record_attempt(rt, plan, ctx, &mut turns.attempts, tried, outcome);
        turns.retry_if_asked(recorded.step, &pick);
        match (recorded.step, answer, outcome) {
            (Step::Deliver, Some(up), _) if plan.continuation.is_some() && !up.is_success() => {
                // A continuation's error answer (a model that refuses the prefill, say) never
                // reaches the client: it has half a stream; the next candidate is tried.
                log::info!(
                    "request {}: {} refused the continuation ({})",
                    ctx.request_id,
                    provider.name,
                    recorded.status.unwrap_or(0)
                );
            }
            (Step::Deliver, Some(up), Outcome::Answered { status, ttfb, .. }) => {
                let winner = Winner {
                    candidate: cand,
                    endpoint: pick.endpoint,
                    provider,
                    offering,
                    dropped: &dropped,
                    status,
                    ttfb,
                    stream: body.stream,
                    attempts_started: turns.attempts.started(),
                    deadline: turns.attempts.deadline(),
                };
                return deliver(shared, rt, session, ctx, plan, winner, up).await;
            }
            (_, Some(mut up), _) => {
                // An error answer read whole is pooled again, unless retention forbids it.
                if up.session.response_done() && !ctx.zero_retention {
                    pool_again(shared, up.session, &up.peer).await;
                }
            }
            (_, None, _) => {
                log::debug!(
                    "attempt {} to {} failed: {}",
                    turns.attempts.started(),
                    provider.name,
                    recorded.reason.map_or("unknown", |r| r.as_str())
                );
            }
        }
    }
    exhausted(session, ctx, plan, &turns.attempts).await
}

/// Every attempt is spent: complete nothing of a broken stream (its error event names the
/// original break), serve a stale cached answer if there is one, hand background work back
/// unanswered, or send the client the error the attempts add up to.
async fn exhausted(
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    plan: &Plan,
    attempts: &Attempts,
) -> Result<Attempted> {
    if let Some(c) = &plan.continuation {
        METRICS
            .stream_recoveries
            .with_label_values(&["failed"])
            .inc();
        log::warn!(
            "request {}: no candidate completed the stream broken at {} ({})",
            ctx.request_id,
            c.origin,
            c.reason
        );
        end_broken_stream(session, ctx, plan.endpoint.family(), &c.origin).await?;
        return Ok(Attempted::Done);
    }
    if let Some(stale) = &plan.stale {
        // RFC 5861's stale-if-error: a recent answer beats an error.
        log::warn!(
            "request {}: every candidate failed; serving the cached answer from {} s ago",
            ctx.request_id,
            stale.age.as_secs()
        );
        METRICS.cache_lookups.with_label_values(&["stale"]).inc();
        ctx.cache = Some("stale");
        ctx.status = 200;
        crate::serve::cache::serve(session, stale, "stale", &ctx.request_id).await?;
        return Ok(Attempted::Done);
    }
    let e = attempts.final_error();
    if plan.queue_on_fail {
        return Ok(Attempted::NoCapacity(e, attempts.failures().len()));
    }
    let tried = attempts.failures().len().to_string();
    send_error(
        session,
        ctx,
        e,
        plan.endpoint.family(),
        vec![(names::HDR_ATTEMPTS, tried)],
    )
    .await?;
    Ok(Attempted::Done)
}
