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
use crate::model::{ModelId, Policy, Provider, ProviderId, StreamRecovery};
use crate::observe::access_log::RequestLog;
use crate::observe::metrics::METRICS;
use crate::serve::cache::Rendered;
use crate::serve::commit::{self, Held, HoldSpec};
use crate::serve::downstream::Downstream;
use crate::serve::names;
use crate::serve::state::{Runtime, Shared};
use crate::wire::body::RequestBody;
use crate::wire::request as provider;
use crate::wire::sse::stream_error_event;
use crate::wire::stream_event::StreamTrack;
use crate::wire::translate::Direction;
use crate::wire::vendor;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use std::time::Duration;
use tokio::time::Instant;

mod attempt;
mod exchange;
mod pick;
mod relay;

use attempt::{attempt_body, record_attempt, Recorded, Tried};
use exchange::{authorized_exchange, pool_again, Call, Exchange};
use pick::{pick, Pick};
pub use relay::send_error;
use relay::{relay, RelayEnd, Served, Stage, Upstream};

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
    rt: &Runtime,
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
    rt: &Runtime,
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
            let api = cfg.providers[c.provider].api;
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

/// Run a plan's attempts: deliver an answer, an error, or (a committed stream that broke under
/// `stream_recovery: continue`) hand the break back.
async fn attempt_loop(
    shared: &Shared,
    rt: &Runtime,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    plan: &Plan,
    body: &RequestBody,
) -> Result<Attempted> {
    let cfg = &rt.config;
    let model = cfg.catalog.model(plan.model);
    let first = &cfg.providers[plan.candidates[0].provider];
    let mut attempts = Attempts::new(
        &plan.policy,
        plan.pinned,
        first.timeouts.first_byte,
        Instant::now(),
    );
    if let Some(c) = &plan.continuation {
        attempts.limit(c.attempts_left, c.deadline);
    }
    let mut cursor = 0usize;
    let mut previous: Option<ProviderId> = None;
    ctx.zero_retention |= plan.zero_retention;

    // A same-offering retry the last attempt asked for: (candidate, endpoint, wait).
    let mut again: Option<(Candidate, usize, Duration)> = None;
    while let Some(backoff) = attempts.next_wait(Instant::now(), rand::random::<f64>()) {
        let wait = again.as_ref().map_or(backoff, |(_, _, w)| *w);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let now = Instant::now();
        if !attempts.begin(now) {
            break;
        }
        let Some(Pick {
            candidate: cand,
            endpoint: ep,
            probation,
            slot: _slot,
        }) = (match again.take() {
            Some((candidate, endpoint, _)) => Some(Pick {
                candidate,
                endpoint,
                probation: Probation::default(),
                slot: None,
            }),
            None => pick(rt, plan, &mut cursor, now, &mut attempts),
        })
        else {
            break;
        };
        let provider = &cfg.providers[cand.provider];
        let (budget, bounded_by_deadline) = attempts.budget(now, provider.timeouts.first_byte);
        let served_model = cfg.catalog.model(cand.model);
        let offering = cfg.catalog.offering(cand.model, cand.offering);
        if cand.fail_open.is_some() {
            ctx.fail_open = true;
        }
        // Wiped whenever the route or any provider tried asks for it, answered or not.
        if plan.zero_retention || provider.zero_retention {
            ctx.zero_retention = true;
        }
        if let (Some(prev), Some(f)) = (
            previous.filter(|p| *p != cand.provider),
            attempts.failures().last(),
        ) {
            METRICS
                .failovers
                .with_label_values(&[
                    &model.name,
                    &cfg.providers[prev].name,
                    &provider.name,
                    f.reason.as_str(),
                ])
                .inc();
        }
        previous = Some(cand.provider);

        // Parameters this offering must not see: cut from the body, everything else as sent.
        let dropped = body.present(&offering.drop_params);
        let translation = Direction::between(plan.endpoint, provider.api);
        let (spliced, upstream_endpoint) =
            match attempt_body(plan, body, provider, offering, &dropped) {
                Ok(b) => b,
                Err(e) => {
                    if plan.continuation.is_some() {
                        continue;
                    }
                    send_error(session, ctx, e, plan.endpoint.family(), vec![]).await?;
                    return Ok(Attempted::Done);
                }
            };
        let upstream_ep = &provider.endpoints[ep];
        let header = provider::build_request(
            provider,
            upstream_ep,
            upstream_endpoint,
            &offering.model_id,
            body.stream,
            session.req_header(),
            spliced.len(),
        )?;
        let attempt_start = Instant::now();
        let call = Call {
            shared,
            provider,
            upstream: upstream_ep,
            body: &spliced,
            budget,
            bounded_by_deadline,
        };
        let result = authorized_exchange(call, header).await?;
        let (outcome, answer) = match result {
            Exchange::Answer {
                mut upstream,
                peer,
                ttfb,
                prefix,
                verdict,
            } => {
                let status = upstream
                    .response_header()
                    .map(|h| h.status.as_u16())
                    .unwrap_or(0);
                let answered = Outcome::Answered {
                    status,
                    ttfb,
                    body_verdict: verdict,
                };
                if verdict.is_some() || !(200..300).contains(&status) {
                    (answered, Some((upstream, peer, prefix)))
                } else {
                    // The commit point: nothing reaches the client before it.
                    let spec = hold_spec(cfg, plan, provider, &upstream, attempt_start, &attempts);
                    match commit::hold(&mut upstream, prefix, &spec).await {
                        Held::Committed(prefix) => (answered, Some((upstream, peer, prefix))),
                        Held::Failed(reason) => {
                            let failed = Outcome::Failed {
                                reason,
                                status: Some(status),
                                retry_after_s: None,
                            };
                            (failed, None)
                        }
                    }
                }
            }
            Exchange::Failed {
                reason,
                status,
                retry_after_s,
            } => {
                let outcome = Outcome::Failed {
                    reason,
                    status,
                    retry_after_s,
                };
                (outcome, None)
            }
        };
        let Recorded {
            step,
            status,
            reason,
        } = record_attempt(
            rt,
            plan,
            ctx,
            &mut attempts,
            Tried {
                candidate: &cand,
                endpoint: ep,
                probation,
                provider,
                model_id: &offering.model_id,
                started: attempt_start,
            },
            outcome,
        );
        if let Step::Again { wait, .. } = step {
            if attempts.fits(Instant::now(), wait) {
                again = Some((cand.clone(), ep, wait));
            }
        }
        match (step, answer) {
            (Step::Deliver, Some((upstream, _, _)))
                if plan.continuation.is_some()
                    && !upstream
                        .response_header()
                        .is_some_and(|h| h.status.is_success()) =>
            {
                // A continuation's error answer (a model that refuses the prefill, say) never
                // reaches the client: it has half a stream; the next candidate is tried.
                log::info!(
                    "request {}: {} refused the continuation ({})",
                    ctx.request_id,
                    provider.name,
                    status.unwrap_or(0)
                );
            }
            (Step::Deliver, Some((upstream, peer, prefix))) => {
                let Outcome::Answered { ttfb, .. } = outcome else {
                    unreachable!("an answer comes with an Answered outcome");
                };
                METRICS
                    .upstream_ttfb
                    .with_label_values(&[&model.name, &provider.name])
                    .observe(ttfb.as_secs_f64());
                ctx.provider = Some(provider.name.clone());
                ctx.served_model = Some(offering.model_id.clone());
                ctx.status = status.unwrap_or(0);
                ctx.ttfb_ms = Some(ctx.start.elapsed().as_millis() as u64);
                ctx.dropped_params = dropped.iter().map(|d| d.to_string()).collect();
                let equivalent = cand
                    .grade
                    .map(|g| format!("{};grade={g}", served_model.name));
                if equivalent.is_some() {
                    ctx.degraded = equivalent.clone();
                    METRICS
                        .degraded
                        .with_label_values(&[&model.name, &served_model.name])
                        .inc();
                    log::warn!(
                        "request {}: {} served by equivalent {} on {}",
                        ctx.request_id,
                        model.name,
                        served_model.name,
                        provider.name
                    );
                }
                let started = attempts.started();
                let attempts_header = started.to_string();
                let broken = |reason: FailoverReason| {
                    let signal = crate::decide::attempt::broken_after_commit(reason);
                    rt.health.apply(
                        cand.provider,
                        ep,
                        &offering.model_id,
                        signal,
                        Instant::now(),
                    );
                };
                let origin = plan
                    .continuation
                    .as_ref()
                    .map_or(provider.name.as_str(), |c| c.origin.as_str());
                let stage = match &plan.continuation {
                    Some(c) => Stage::Splice(Box::new(c.track.splice())),
                    None if plan.policy.stream_recovery == StreamRecovery::Continue
                        && body.stream =>
                    {
                        Stage::Track(Box::new(StreamTrack::new(plan.endpoint.family())))
                    }
                    None => Stage::Plain,
                };
                let end = relay(
                    shared,
                    session,
                    ctx,
                    Upstream {
                        session: upstream,
                        peer,
                        prefix,
                    },
                    provider,
                    Served {
                        model_name: &served_model.name,
                        model_id: &offering.model_id,
                        price: offering.price,
                        equivalent,
                        dropped: &dropped,
                        attempts: &attempts_header,
                        family: plan.endpoint.family(),
                        translation,
                        include_usage: plan.include_usage,
                        stream_idle: plan
                            .policy
                            .stream_idle
                            .unwrap_or(provider.timeouts.stream_idle),
                        broken: &broken,
                        origin,
                        cache_header: plan.cache_header,
                        max_event: cfg.max_stream_event_bytes,
                    },
                    stage,
                )
                .await?;
                return Ok(match end {
                    RelayEnd::Done => Attempted::Done,
                    RelayEnd::Broken { reason, track } => {
                        Attempted::Broken(Box::new(BrokenStream {
                            reason,
                            provider: cand.provider,
                            track: *track,
                            deadline: attempts.deadline(),
                            attempts_left: plan.policy.max_attempts.saturating_sub(started),
                        }))
                    }
                });
            }
            (_, Some((mut upstream, peer, _))) => {
                // An error answer read whole is pooled again, unless retention forbids it.
                if upstream.response_done() && !ctx.zero_retention {
                    pool_again(shared, upstream, &peer).await;
                }
            }
            (_, None) => {
                log::debug!(
                    "attempt {} to {} failed: {}",
                    attempts.started(),
                    provider.name,
                    reason.map_or("unknown", |r| r.as_str())
                );
            }
        }
    }

    if let Some(c) = &plan.continuation {
        // Nothing completed the stream: the client's error event names the original break.
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

/// How to hold a successful answer until its commit point: a stream (by its content type) until
/// its first content within `first_token_ms` (the route's, else the provider's), a whole body
/// within the request's deadline.
fn hold_spec(
    cfg: &crate::model::Config,
    plan: &Plan,
    provider: &Provider,
    upstream: &HttpSession,
    attempt_start: Instant,
    attempts: &Attempts,
) -> HoldSpec {
    let framing = vendor::framing(
        provider.api,
        upstream
            .response_header()
            .and_then(|h| h.headers.get(http::header::CONTENT_TYPE))
            .map(|v| v.as_bytes()),
    );
    let eventstream = framing == vendor::Framing::EventStream;
    let stream = (framing != vendor::Framing::Whole).then(|| answer_family(provider.api));
    let first_token = plan
        .policy
        .first_token
        .unwrap_or(provider.timeouts.first_token);
    let by = attempt_start + first_token;
    let deadline = attempts.deadline();
    HoldSpec {
        stream,
        eventstream,
        first_token_by: by.min(deadline),
        first_token_reason: if by <= deadline {
            FailoverReason::FirstTokenTimeout
        } else {
            FailoverReason::Deadline
        },
        body_by: deadline,
        max_body: cfg.max_response_body_bytes,
        max_event: cfg.max_stream_event_bytes,
    }
}
