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
//! executes them. Hooks for what comes later sit at the seams: `Plan` is the routing decision,
//! `exchange` is one attempt, `relay` the streaming.

use crate::decide::attempt::{AttemptFacts, Attempts, Outcome, Probation, Step};
use crate::decide::outcome::{
    classify_error, classify_status, parse_retry_after, AttemptPhase, FailoverReason, StatusClass,
};
use crate::decide::route::Candidate;
use crate::health::breaker::Admission;
use crate::health::InflightSlot;
use crate::model::catalog::Price;
use crate::model::endpoint::{answer_family, Endpoint, Family};
use crate::model::error::{ErrorKind, GatewayError};
use crate::model::{
    ApiKind, ModelId, Policy, Provider, ProviderEndpoint, ProviderId, StreamRecovery,
};
use crate::observe::access_log::{AttemptLog, RequestLog};
use crate::observe::metrics::METRICS;
use crate::serve::cache::Rendered;
use crate::serve::commit::{self, Held, HoldSpec};
use crate::serve::downstream::Downstream;
use crate::serve::names;
use crate::serve::state::{Runtime, Shared};
use crate::wire::bedrock;
use crate::wire::body::{RequestBody, SplicedBody};
use crate::wire::error_body::{account_problem, body_decides, classify_error_body};
use crate::wire::request as provider;
use crate::wire::request::header_value;
use crate::wire::sse::stream_error_event;
use crate::wire::stream_event::{EventGuard, Splice, StreamEnd, StreamTrack};
use crate::wire::translate::{self, Direction};
use crate::wire::usage::UsageScanner;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Request bodies up to this size are sent as one contiguous write.
const COALESCE_BELOW: usize = 64 * 1024;

/// Largest error body read to classify it; provider error JSON is a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Pingora's timer wheel for the per-request timeouts: they almost never fire, and tokio's timer
/// registration showed in profiles (10 ms granularity is fine for budgets of hundreds of ms).
use pingora::prelude::fast_timeout::fast_timeout;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);

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
    /// The client's body parsed, when a candidate speaks the other wire format (translation
    /// builds that candidate's body from it); `None` keeps every attempt on the splice path.
    pub json: Option<serde_json::Value>,
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

/// What one attempt produced.
enum Exchange {
    /// A response header the client will get (success or a final error).
    Answer {
        upstream: Box<HttpSession>,
        peer: Box<HttpPeer>,
        ttfb: Duration,
        /// The start of the body (all of it when the upstream says it is done), read before
        /// deciding because an error body can mean "try elsewhere".
        prefix: Option<Bytes>,
        /// What that error body says: `None` for an answer to pass on as it is.
        verdict: Option<FailoverReason>,
    },
    Failed {
        reason: FailoverReason,
        status: Option<u16>,
        retry_after_s: Option<u64>,
    },
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
    let mut json: serde_json::Value = match &plan.json {
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
        json: None,
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
        let continuation_json = plan.continuation.as_ref().map(|c| &c.json);
        let rebuilt = plan.endpoint.rebuilt_for(provider.api) || continuation_json.is_some();
        let (spliced, upstream_endpoint) = match (rebuilt, continuation_json.or(plan.json.as_ref()))
        {
            (true, Some(json)) => {
                match translate::provider_body(
                    plan.endpoint,
                    provider,
                    json,
                    &offering.model_id,
                    &dropped,
                ) {
                    Ok(bytes) => (
                        SplicedBody {
                            parts: vec![Bytes::from(bytes)],
                        },
                        translation.map_or(plan.endpoint, |d| d.provider_endpoint()),
                    ),
                    Err(e) => {
                        // The body is not the shape its own API documents (say, tool call
                        // arguments that are not JSON): the client's error, for every twin.
                        let e = GatewayError::new(
                            ErrorKind::InvalidRequest,
                            format!(
                                "the request cannot be translated for {}: {e}",
                                provider.name
                            ),
                        );
                        if plan.continuation.is_some() {
                            continue;
                        }
                        send_error(session, ctx, e, plan.endpoint.family(), vec![]).await?;
                        return Ok(Attempted::Done);
                    }
                }
            }
            _ => (body.rewrite(&offering.model_id, &dropped), plan.endpoint),
        };
        let upstream_ep = &provider.endpoints[ep];
        let mut header = provider::build_request(
            provider,
            upstream_ep,
            upstream_endpoint,
            &offering.model_id,
            body.stream,
            session.req_header(),
            spliced.len(),
        )?;
        // Bedrock: the current keys (fixed, or temporary ones from IRSA / Pod Identity), then
        // SigV4 over the exact bytes sent, computed last.
        let mut no_credential = false;
        if provider.api == ApiKind::Bedrock {
            // Boxed, as every rare path here: an inline future sizes the attempt loop's and
            // each one above it, all moved once per request (see `exchange`).
            match Box::pin(bedrock_credentials(shared, provider, budget)).await {
                Some(creds) => {
                    let whole = spliced.to_vec();
                    if let Err(e) =
                        bedrock::sign(&mut header, provider, &creds, &whole, SystemTime::now())
                    {
                        return Error::e_explain(
                            ErrorType::InternalError,
                            format!("bedrock signing: {e}"),
                        );
                    }
                }
                None => no_credential = true,
            }
        }
        let attempt_start = Instant::now();
        let result = if no_credential {
            Exchange::Failed {
                reason: FailoverReason::AuthFailed,
                status: None,
                retry_after_s: None,
            }
        } else if matches!(provider.api, ApiKind::Vertex | ApiKind::VertexOpenAi) {
            Box::pin(vertex_exchange(
                shared,
                provider,
                upstream_ep,
                header,
                &spliced,
                budget,
                bounded_by_deadline,
            ))
            .await
        } else {
            exchange(
                shared,
                provider,
                upstream_ep,
                header,
                &spliced,
                budget,
                bounded_by_deadline,
            )
            .await
        };
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
        let ms = attempt_start.elapsed().as_millis() as u64;
        let here = cfg.catalog.context_tokens(cand.model, cand.offering);
        let facts = AttemptFacts {
            provider: cand.provider,
            provider_name: &provider.name,
            endpoint: ep,
            probation,
            context_tokens: here,
            larger_window_exists: plan.candidates.iter().any(|c| {
                cfg.catalog
                    .context_tokens(c.model, c.offering)
                    .is_some_and(|t| t > here.unwrap_or(0))
            }),
            offering_cooldown: plan.policy.offering_cooldown,
        };
        let verdict = attempts.record(&facts, outcome);
        let now = Instant::now();
        for signal in verdict.signals.iter() {
            rt.health
                .apply(cand.provider, ep, &offering.model_id, signal, now);
        }
        let status = match outcome {
            Outcome::Answered { status, .. } => Some(status),
            Outcome::Failed { status, .. } => status,
        };
        let reason = match verdict.step {
            Step::Deliver => None,
            Step::Next(r) | Step::Stop(r) | Step::Again { reason: r, .. } => Some(r),
        };
        if let Step::Again { wait, .. } = verdict.step {
            if attempts.fits(Instant::now(), wait) {
                again = Some((cand.clone(), ep, wait));
            }
        }
        METRICS
            .attempts
            .with_label_values(&[provider.name.as_str(), reason.map_or("ok", |r| r.as_str())])
            .inc();
        ctx.attempts.push(AttemptLog {
            provider: provider.name.clone(),
            model: offering.model_id.clone(),
            reason: reason.map(|r| r.as_str()),
            status,
            ms,
        });
        match (verdict.step, answer) {
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

/// Answer the client with twinroute's own error: recorded in the access line (unless a more
/// precise cause already is), the connection not reused, the request id among the headers.
pub async fn send_error(
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    e: GatewayError,
    family: Family,
    mut extra: Vec<(&'static str, String)>,
) -> Result<()> {
    ctx.status = e.kind.status();
    ctx.error.get_or_insert_with(|| e.message.clone());
    session.set_keepalive(None);
    extra.push((names::HDR_REQUEST_ID, ctx.request_id.clone()));
    session.write_error(&e, family, &extra).await
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
    let content_type = |prefix: &[u8]| {
        upstream
            .response_header()
            .and_then(|h| h.headers.get(http::header::CONTENT_TYPE))
            .is_some_and(|v| v.as_bytes().starts_with(prefix))
    };
    let eventstream =
        provider.api == ApiKind::Bedrock && content_type(b"application/vnd.amazon.eventstream");
    let stream =
        (eventstream || content_type(b"text/event-stream")).then(|| answer_family(provider.api));
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

/// The candidate one attempt goes to.
struct Pick<'r> {
    candidate: Candidate,
    /// Index of the endpoint within the provider's pool.
    endpoint: usize,
    /// Which breakers (the endpoint's, the offering's) admitted this as their one probation.
    probation: Probation,
    /// The provider's `max_connections` slot, held for the attempt (none when failing open).
    slot: Option<InflightSlot<'r>>,
}

/// Next candidate health admits, cycling through the list. When health turns every candidate
/// away, the first one in order is used anyway (fail open).
fn pick<'r>(
    rt: &'r Runtime,
    plan: &Plan,
    cursor: &mut usize,
    now: Instant,
    attempts: &mut Attempts,
) -> Option<Pick<'r>> {
    let n = plan.candidates.len();
    if n == 0 {
        return None;
    }
    let catalog = &rt.config.catalog;
    let min_context = attempts.min_context();
    let fits = |c: &Candidate| {
        min_context == 0
            || catalog
                .context_tokens(c.model, c.offering)
                .is_some_and(|t| t >= min_context)
    };
    if !plan.candidates.iter().any(fits) {
        return None;
    }
    let region = plan.region.as_deref();
    for _ in 0..n {
        let c = &plan.candidates[*cursor % n];
        *cursor += 1;
        if !fits(c) {
            continue;
        }
        if c.fail_open.is_some() {
            // Routing already knows everything is down; order is its call.
            return Some(Pick {
                candidate: c.clone(),
                endpoint: rt.health.fallback_endpoint(c.provider, region, now),
                probation: Probation::default(),
                slot: None,
            });
        }
        // Health may have changed since routing (a Retry-After or a breaker trip mid-request,
        // an offering another request just found gone).
        let model_id = &catalog.offering(c.model, c.offering).model_id;
        if rt.health.provider_skip(c.provider, now).is_some()
            || rt.health.offering_skip(c.provider, model_id, now).is_some()
        {
            continue;
        }
        // A provider at its max_connections is passed over like an unhealthy one.
        let max = rt.config.providers[c.provider].max_connections;
        let Some(slot) = rt.health.try_acquire(c.provider, max) else {
            attempts.note_saturated();
            continue;
        };
        let Some((ep, endpoint_admission)) =
            rt.health.select_endpoint(c.provider, region, model_id, now)
        else {
            continue;
        };
        let endpoint_probation = endpoint_admission == Admission::Probation;
        // The offering's own breaker: a model sick on a healthy provider.
        let offering_probation = match rt.health.admit_offering(c.provider, ep, model_id, now) {
            Admission::Admit => false,
            Admission::Probation => true,
            Admission::Reject { .. } => {
                if endpoint_probation {
                    rt.health.on_abandoned(c.provider, ep, now);
                }
                continue;
            }
        };
        return Some(Pick {
            candidate: c.clone(),
            endpoint: ep,
            probation: Probation {
                endpoint: endpoint_probation,
                offering: offering_probation,
            },
            slot: Some(slot),
        });
    }
    let mut c = loop {
        let c = &plan.candidates[*cursor % n];
        *cursor += 1;
        if fits(c) {
            break c.clone();
        }
    };
    let model_id = &catalog.offering(c.model, c.offering).model_id;
    c.fail_open = rt
        .health
        .provider_skip(c.provider, now)
        .or_else(|| rt.health.offering_skip(c.provider, model_id, now))
        .map(|(r, _)| r);
    if attempts.saturated() && c.fail_open.is_none() {
        // Everyone healthy is busy: an overload answer, not a pile-up on a saturated provider.
        return None;
    }
    let endpoint = rt.health.fallback_endpoint(c.provider, region, now);
    Some(Pick {
        candidate: c,
        endpoint,
        probation: Probation::default(),
        slot: None,
    })
}

/// The AWS keys to sign a Bedrock request with: fixed ones as they are, temporary ones from
/// the credential store (minted off the request path; within `budget` if none is current).
async fn bedrock_credentials(
    shared: &Shared,
    provider: &Provider,
    budget: Duration,
) -> Option<crate::model::AwsCredentials> {
    match provider.aws.as_ref().map(|a| &a.credentials) {
        Some(crate::model::AwsCredentialSource::Fixed(c)) => Some(c.clone()),
        Some(_) => {
            let net = crate::serve::credentials::Net {
                connector: &shared.connector,
                resolver: &shared.resolver,
            };
            let got = fast_timeout(
                budget,
                shared
                    .tokens
                    .bearer(net, provider, crate::serve::credentials::Need::Request),
            )
            .await;
            match got {
                Ok(Ok(t)) => t.aws.clone(),
                _ => None,
            }
        }
        None => None,
    }
}

/// A Vertex attempt: the current access token in `Authorization`; a 401 (a token revoked or
/// expired early) invalidates it and is retried once with a freshly minted one, inside the same
/// budget. No token to be had is the attempt's `auth_failed`, nothing sent.
async fn vertex_exchange(
    shared: &Shared,
    provider: &Provider,
    upstream: &ProviderEndpoint,
    header: RequestHeader,
    body: &SplicedBody,
    budget: Duration,
    bounded_by_deadline: bool,
) -> Exchange {
    let started = Instant::now();
    let auth_failed = |status| Exchange::Failed {
        reason: FailoverReason::AuthFailed,
        status,
        retry_after_s: None,
    };
    for retry in [false, true] {
        let left = budget.saturating_sub(started.elapsed());
        let token = match fast_timeout(
            left,
            shared.tokens.bearer(
                crate::serve::credentials::Net {
                    connector: &shared.connector,
                    resolver: &shared.resolver,
                },
                provider,
                crate::serve::credentials::Need::Request,
            ),
        )
        .await
        {
            Ok(Ok(t)) => t,
            _ => return auth_failed(None),
        };
        let mut h = header.clone();
        if h.insert_header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.value.expose()),
        )
        .is_err()
        {
            return auth_failed(None);
        }
        let result = exchange(
            shared,
            provider,
            upstream,
            h,
            body,
            budget.saturating_sub(started.elapsed()),
            bounded_by_deadline,
        )
        .await;
        match result {
            Exchange::Failed {
                status: Some(401), ..
            } if !retry => {
                log::warn!(
                    "provider {}: access token refused (401); minting a new one and retrying once",
                    provider.name
                );
                shared.tokens.invalidate(&provider.name);
            }
            other => return other,
        }
    }
    auth_failed(Some(401))
}

/// One attempt against one provider, up to its response header.
async fn exchange(
    shared: &Shared,
    provider: &Provider,
    upstream: &ProviderEndpoint,
    header: RequestHeader,
    body: &SplicedBody,
    budget: Duration,
    bounded_by_deadline: bool,
) -> Exchange {
    let failed = |reason| Exchange::Failed {
        reason,
        status: None,
        retry_after_s: None,
    };
    let started = Instant::now();
    let addr = match fast_timeout(
        budget,
        shared
            .resolver
            .resolve(&upstream.base.host, upstream.base.port),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            log::warn!("provider {}: {e}", provider.name);
            return failed(FailoverReason::DnsFailure);
        }
        Err(_) => return failed(FailoverReason::ConnectTimeout),
    };
    let mut peer = Box::new(HttpPeer::new(
        addr,
        upstream.base.tls,
        upstream.base.host.clone(),
    ));
    let connect = provider.timeouts.connect.min(budget);
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(budget);
    peer.options.verify_cert = provider.tls_verify;
    peer.options.verify_hostname = provider.tls_verify;
    peer.options.idle_timeout = Some(POOL_IDLE);

    let mut phase = AttemptPhase::Connect;
    let work = async {
        // Boxed: Pingora's connect future is ~9 KB (its TLS handshake), and held inline it
        // would size every future above this one, each of which is moved (copied) at least
        // once per request: ~70 KB of memcpy a request before, by valgrind's count.
        let (mut up, _reused) = Box::pin(shared.connector.get_http_session(&*peer)).await?;
        phase = AttemptPhase::Exchange;
        // The whole exchange is bounded by `budget` below; per-read timeouts apply to the body.
        up.set_read_timeout(None);
        up.write_request_header(Box::new(header)).await?;
        // Pingora's streams write unbuffered: each piece is a send(2). Small bodies go out as one
        // piece (a copy of a few KiB costs less than the syscalls); large ones as the shared
        // slices, never copied.
        if body.len() <= COALESCE_BELOW && body.parts.len() > 1 {
            up.write_request_body(Bytes::from(body.to_vec()), false)
                .await?;
        } else {
            for part in &body.parts {
                if !part.is_empty() {
                    up.write_request_body(part.clone(), false).await?;
                }
            }
        }
        up.finish_request_body().await?;
        up.read_response_header().await?;
        Ok::<_, Box<Error>>(up)
    };
    let result = fast_timeout(budget, work).await;
    let ttfb = started.elapsed();
    let mut up = match result {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            let reason = classify_error(phase, e.etype());
            log::debug!("provider {}: {} ({e})", provider.name, reason);
            return failed(reason);
        }
        Err(_) => {
            return failed(if bounded_by_deadline {
                FailoverReason::Deadline
            } else if phase == AttemptPhase::Connect {
                FailoverReason::ConnectTimeout
            } else {
                FailoverReason::FirstByteTimeout
            })
        }
    };
    let Some(resp) = up.response_header() else {
        return failed(FailoverReason::Reset);
    };
    let status = resp.status.as_u16();
    match classify_status(status) {
        StatusClass::Final if body_decides(status) => {
            // Read the (small) error body within what is left of the budget: it decides
            // between "pass this error on" and "this offering is gone, try the next".
            let left = budget.saturating_sub(started.elapsed());
            let (prefix, complete) =
                match read_error_body(&mut up, left, bounded_by_deadline, &provider.name).await {
                    Ok(read) => read,
                    Err(reason) => return failed(reason),
                };
            // A body over the cap is no error message a provider sends about a model.
            // Bedrock names its error in x-amzn-ErrorType; that decides before the body does.
            let aws_error = (provider.api == ApiKind::Bedrock)
                .then(|| up.response_header())
                .flatten()
                .and_then(|h| h.headers.get("x-amzn-errortype"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let verdict = match aws_error
                .as_deref()
                .and_then(|t| bedrock::classify(t, &prefix))
            {
                Some(verdict) => verdict,
                None if complete => classify_error_body(status, &prefix),
                None => None,
            };
            up.set_read_timeout(Some(provider.timeouts.idle));
            Exchange::Answer {
                upstream: Box::new(up),
                peer,
                ttfb,
                prefix: Some(prefix),
                verdict,
            }
        }
        StatusClass::Final => {
            up.set_read_timeout(Some(provider.timeouts.idle));
            Exchange::Answer {
                upstream: Box::new(up),
                peer,
                ttfb,
                prefix: None,
                verdict: None,
            }
        }
        StatusClass::Retry(mut reason) => {
            let retry_after_s = resp
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v.as_bytes()));
            if status == 429 {
                // A 429 is a short rate limit or an account out of quota; only the body tells.
                // Its body comes with the header; a body that does not is not waited for long.
                let left = budget
                    .saturating_sub(started.elapsed())
                    .min(Duration::from_millis(250));
                if let Ok((body, true)) =
                    read_error_body(&mut up, left, bounded_by_deadline, &provider.name).await
                {
                    if account_problem(status, &body) {
                        reason = FailoverReason::ProviderAccount;
                    }
                }
            }
            // The connection is dropped rather than pooled.
            Exchange::Failed {
                reason,
                status: Some(status),
                retry_after_s,
            }
        }
    }
}

/// Read an error body (bounded in size and by `left`): `(body, complete)`, or the failure a
/// broken or silent body is.
async fn read_error_body(
    up: &mut HttpSession,
    left: Duration,
    bounded_by_deadline: bool,
    provider: &str,
) -> std::result::Result<(Bytes, bool), FailoverReason> {
    let mut buf = BytesMut::new();
    let read = async {
        while buf.len() < MAX_ERROR_BODY {
            match up.read_response_body().await? {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => return Ok(true),
            }
        }
        Ok::<_, Box<Error>>(false)
    };
    match fast_timeout(left, read).await {
        Ok(Ok(complete)) => Ok((buf.freeze(), complete)),
        Ok(Err(e)) => {
            log::debug!("provider {provider}: error body broke ({e})");
            Err(FailoverReason::Reset)
        }
        Err(_) => Err(if bounded_by_deadline {
            FailoverReason::Deadline
        } else {
            FailoverReason::FirstByteTimeout
        }),
    }
}

/// Response headers that describe the upstream hop, not the answer.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "trailer",
    "te",
];

const CHUNKED: http::HeaderValue = http::HeaderValue::from_static("chunked");

/// Hand a finished upstream connection back to Pingora's pool. Boxed: the pool's future is
/// ~3 KB, and inline it would size `relay`'s and the attempt loop's futures, moved once per
/// request each (see `exchange`).
async fn pool_again(shared: &Shared, upstream: Box<HttpSession>, peer: &HttpPeer) {
    Box::pin(
        shared
            .connector
            .release_http_session(*upstream, peer, Some(POOL_IDLE)),
    )
    .await;
}

/// What answered: for headers, usage accounting and cost.
struct Served<'a> {
    model_name: &'a str,
    model_id: &'a str,
    price: Option<Price>,
    /// `canonical;grade=g` when a closest equivalent answered.
    equivalent: Option<String>,
    dropped: &'a [&'a str],
    /// `x-twinroute-attempts`.
    attempts: &'a str,
    /// The client's wire family, for the error event of a broken stream.
    family: Family,
    /// The answer is translated into the client's format on its way.
    translation: Option<Direction>,
    /// OpenAI client of a translated stream: end it with a usage chunk.
    include_usage: bool,
    /// Longest silence of the stream once committed.
    stream_idle: Duration,
    /// Tell health the committed answer broke (stall, cut) after all.
    broken: &'a (dyn Fn(FailoverReason) + Sync),
    /// The provider a broken stream's error event names: this one, or for a continuation the
    /// one whose stream broke first.
    origin: &'a str,
    /// `x-twinroute-cache` for the answer, when the prompt cache is on.
    cache_header: Option<&'static str>,
    /// Largest upstream stream event taken (`max_stream_event_bytes`).
    max_event: usize,
}

/// Where the client-format bytes of an answer go.
enum Stage {
    /// Straight to the client.
    Plain,
    /// Through a tracker of what the client received (`stream_recovery: continue`), so a break
    /// can be completed elsewhere.
    Track(Box<StreamTrack>),
    /// A continuation: rewritten to read as the rest of the stream the client has.
    Splice(Box<Splice>),
}

/// How a relay ended.
enum RelayEnd {
    /// The answer (or its explicit error event) reached the client.
    Done,
    /// A tracked stream broke where a continuation can complete it; nothing of the break was
    /// sent.
    Broken {
        reason: FailoverReason,
        track: Box<StreamTrack>,
    },
}

/// Send client-format bytes through the stage; `true` when they carried an error event (held
/// back by a tracking or splicing stage: the stream broke).
async fn emit(
    session: &mut Downstream<'_>,
    stage: &mut Stage,
    bytes: Bytes,
    buf: &mut Vec<u8>,
) -> Result<bool> {
    if bytes.is_empty() {
        return Ok(false);
    }
    let error = match stage {
        Stage::Plain => {
            session.write_body(Some(bytes), false).await?;
            return Ok(false);
        }
        Stage::Track(t) => {
            buf.clear();
            t.feed(&bytes, buf)
        }
        Stage::Splice(s) => {
            buf.clear();
            s.feed(&bytes, buf)
        }
    };
    if !buf.is_empty() {
        session
            .write_body(Some(Bytes::copy_from_slice(buf)), false)
            .await?;
    }
    Ok(error)
}

/// Most bytes `join_ready` joins into one write.
const JOIN_AT_MOST: usize = 64 * 1024;

/// `chunk`, joined with what the upstream has already delivered behind it: reads that complete
/// without waiting (HTTP chunks already in Pingora's buffer, bytes already in the socket) are
/// appended, so a run of small stream events goes to the client in one write and one wake-up
/// instead of one each, as Pingora's own proxy loop batches them. A read that would wait is
/// dropped unfinished, which Pingora's body readers allow (its proxy loop drops them in
/// `select!`): its state stays in the session and nothing read is lost. A read that ends the
/// body or fails is kept in `held` for the caller's next turn. `read_timeout` is the session's
/// read timeout to put back (none is armed for a read that is not waited on).
fn join_ready(
    upstream: &mut HttpSession,
    chunk: Bytes,
    read_timeout: Option<Duration>,
    held: &mut Option<Result<Option<Bytes>>>,
) -> Bytes {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut joined: Option<BytesMut> = None;
    let mut cx = Context::from_waker(Waker::noop());
    upstream.set_read_timeout(None);
    while joined.as_ref().map_or(chunk.len(), |j| j.len()) < JOIN_AT_MOST {
        let ready = {
            let read = std::pin::pin!(upstream.read_response_body());
            match read.poll(&mut cx) {
                Poll::Ready(r) => r,
                Poll::Pending => break,
            }
        };
        match ready {
            Ok(Some(more)) => joined
                .get_or_insert_with(|| {
                    let mut j = BytesMut::with_capacity(chunk.len() + more.len());
                    j.extend_from_slice(&chunk);
                    j
                })
                .extend_from_slice(&more),
            other => {
                *held = Some(other);
                break;
            }
        }
    }
    upstream.set_read_timeout(read_timeout);
    joined.map_or(chunk, BytesMut::freeze)
}

/// The upstream side of the chosen answer.
struct Upstream {
    session: Box<HttpSession>,
    peer: Box<HttpPeer>,
    /// Body bytes already read while classifying.
    prefix: Option<Bytes>,
}

/// Stream the chosen answer to the client, chunk by chunk as it arrives.
async fn relay(
    shared: &Shared,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    up: Upstream,
    provider: &Provider,
    served: Served<'_>,
    mut stage: Stage,
) -> Result<RelayEnd> {
    let (attempts, family, max_event) = (served.attempts, served.family, served.max_event);
    let Upstream {
        session: mut upstream,
        peer,
        prefix,
    } = up;
    let served_model = served.model_id;
    let Some(up_header) = upstream.response_header() else {
        return Error::e_explain(ErrorType::InternalError, "answer without a response header");
    };
    // The answer's header is built on `http`'s parts and handed to Pingora once: its own
    // `insert_header` re-parses each name and keeps a second, case-preserving map, several
    // allocations per header on every answer (callgrind: ~4 % of a 1 KB request). Names then go
    // out lower-case, as HTTP/2 sends them anyway.
    let mut resp = up_header.as_owned_parts();
    for h in HOP_BY_HOP {
        resp.headers.remove(*h);
    }
    let has_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
    let chunked = resp.headers.contains_key(http::header::TRANSFER_ENCODING);
    if !has_length && !chunked && !session.is_http2() {
        resp.headers
            .insert(http::header::TRANSFER_ENCODING, CHUNKED.clone());
    }
    let content_type = |prefix: &[u8]| {
        resp.headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(prefix))
    };
    // Bedrock streams AWS event-stream frames: decoded into the Anthropic SSE they carry.
    let is_eventstream =
        provider.api == ApiKind::Bedrock && content_type(b"application/vnd.amazon.eventstream");
    let is_sse = content_type(b"text/event-stream") || is_eventstream;
    let h = &mut resp.headers;
    h.insert(names::PROVIDER, header_value(provider.name.as_str())?);
    h.insert(names::MODEL, header_value(served_model)?);
    h.insert(names::ATTEMPTS, header_value(attempts)?);
    h.insert(names::REQUEST_ID, header_value(&ctx.request_id)?);
    if let Some(eq) = &served.equivalent {
        h.insert(names::EQUIVALENT, header_value(eq)?);
    }
    if !served.dropped.is_empty() {
        h.insert(
            names::DROPPED_PARAMS,
            header_value(&served.dropped.join(","))?,
        );
    }
    if let Some(c) = served.cache_header {
        h.insert(names::CACHE, http::HeaderValue::from_static(c));
    }
    if ctx.zero_retention {
        // Said in the response header: the client's connection closes after this answer.
        session.set_keepalive(None);
    }
    let success = upstream
        .response_header()
        .is_some_and(|h| h.status.is_success());
    let mut translator = None;
    if let Some(dir) = served.translation {
        resp.headers.insert(
            names::TRANSLATED,
            http::HeaderValue::from_static(dir.label()),
        );
        ctx.translated = Some(dir.label());
        METRICS.translations.with_label_values(&[dir.label()]).inc();
    }
    // A translated whole answer, or any error passed on: read whole (an error is re-shaped when
    // its shape is not the client's: another family, Bedrock's own `{"message"}`), and an error
    // is cleared of the provider's key should it echo it.
    if !success || (served.translation.is_some() && !is_sse) {
        let up = Upstream {
            session: upstream,
            peer,
            prefix,
        };
        Box::pin(relay_whole(
            shared,
            session,
            ctx,
            up,
            provider,
            &served,
            resp.into(),
        ))
        .await?;
        return Ok(RelayEnd::Done);
    }
    let mut frames = None;
    if is_eventstream {
        resp.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        frames = Some(bedrock::EventStreamToSse::with_limit(
            max_event.saturating_mul(2),
        ));
    }
    if let Some(dir) = served.translation.filter(|_| is_sse) {
        translator = Some(translate::stream::StreamTranslator::new(
            dir,
            served.include_usage,
        ));
    }
    if frames.is_some() || translator.is_some() {
        // The stream's bytes change on the way: its length is no longer the provider's.
        resp.headers.remove(http::header::CONTENT_LENGTH);
        if !resp.headers.contains_key(http::header::TRANSFER_ENCODING) && !session.is_http2() {
            resp.headers
                .insert(http::header::TRANSFER_ENCODING, CHUNKED.clone());
        }
    }
    if !matches!(stage, Stage::Splice(_)) {
        session
            .write_header(Box::new(ResponseHeader::from(resp)), false)
            .await?;
    }

    let mut usage = UsageScanner::default();
    let mut out = Vec::new();
    let mut sse = Vec::new();
    // What the commit point held goes first, through the same decoding and translation.
    let mut pending = prefix.filter(|p| !p.is_empty());
    // A committed stream silent this long is broken (`stream_stall`); a whole body was read
    // before committing, so only streams need the watch.
    let stall_after = is_sse.then_some(served.stream_idle);
    // The read timeout the session carries (set here for streams; by `exchange` otherwise).
    let restore_timeout = Some(match stall_after {
        Some(idle) => idle + Duration::from_millis(500),
        None => provider.timeouts.idle,
    });
    if stall_after.is_some() {
        // Pingora's own read timeout only as a backstop, so a stall is named as one.
        upstream.set_read_timeout(restore_timeout);
    }
    let mut staged = Vec::new();
    // Every upstream stream event is checked before it goes on: malformed ones are dropped.
    let mut guard = is_sse.then(|| EventGuard::new(answer_family(provider.api), max_event));
    let mut slices: Vec<Bytes> = Vec::new();
    // What a read that did not wait returned after the bytes it was joined to (`join_ready`).
    let mut held: Option<Result<Option<Bytes>>> = None;
    // The stream's break, if it breaks: the reason and what the access line says.
    let broke: Option<(FailoverReason, String)> = loop {
        let next = match (held.take(), pending.take(), stall_after) {
            (Some(h), _, _) => h,
            (None, Some(p), _) => Ok(Some(p)),
            (None, None, None) => upstream.read_response_body().await,
            (None, None, Some(idle)) => {
                match tokio::time::timeout(idle, upstream.read_response_body()).await {
                    Ok(r) => r,
                    Err(_) => {
                        break Some((
                            FailoverReason::StreamStall,
                            format!("stream_stall: upstream silent for {} ms", idle.as_millis()),
                        ))
                    }
                }
            }
        };
        match next {
            Ok(Some(chunk)) => {
                let chunk = join_ready(&mut upstream, chunk, restore_timeout, &mut held);
                if success {
                    usage.feed(&chunk);
                }
                // A write error means the client left: return it, dropping the upstream
                // connection so the provider stops generating for nobody.
                let chunk = match frames.as_mut() {
                    None => chunk,
                    Some(f) => {
                        sse.clear();
                        if let Err(e) = f.feed(&chunk, &mut sse) {
                            break Some((FailoverReason::Truncated, e.0));
                        }
                        Bytes::copy_from_slice(&sse)
                    }
                };
                let chunk = match guard.as_mut() {
                    None => chunk,
                    Some(g) => {
                        let dropped = g.dropped();
                        slices.clear();
                        if let Err(e) = g.feed(chunk, &mut slices) {
                            // The upstream connection is dropped with this function: nothing
                            // more of the event is read.
                            break Some((
                                FailoverReason::ResponseTooLarge,
                                format!("{}: {e}", FailoverReason::ResponseTooLarge),
                            ));
                        }
                        if g.dropped() > dropped {
                            note_malformed(ctx, provider, g.dropped() - dropped, dropped == 0);
                        }
                        match slices.len() {
                            0 => Bytes::new(),
                            1 => slices.swap_remove(0),
                            _ => Bytes::from(slices.concat()),
                        }
                    }
                };
                let chunk = translated(translator.as_mut(), chunk, &mut out);
                if emit(session, &mut stage, chunk, &mut staged).await? {
                    break Some(error_event_break());
                }
            }
            Ok(None) => {
                if frames.as_ref().is_some_and(|f| f.pending() > 0) {
                    // Ended mid-frame: what arrived whole was delivered; say the rest broke.
                    break Some((
                        FailoverReason::Truncated,
                        "upstream event stream ended mid-frame".into(),
                    ));
                }
                let tail = match guard.as_ref().map(|g| g.end()) {
                    None | Some(StreamEnd::Complete) => None,
                    // Said it finished, left out the terminator: finish it for the client now.
                    Some(StreamEnd::Terminate(t)) => Some(Bytes::from_static(t)),
                    Some(StreamEnd::Truncated) if translator.is_none() => {
                        break Some((
                            FailoverReason::Truncated,
                            "upstream stream ended without its end event".into(),
                        ));
                    }
                    // The translator knows (and says below).
                    Some(StreamEnd::Truncated) => None,
                };
                if let Some(tail) = tail {
                    let tail = translated(translator.as_mut(), tail, &mut out);
                    if emit(session, &mut stage, tail, &mut staged).await? {
                        break Some(error_event_break());
                    }
                }
                if let Some(t) = translator.as_mut() {
                    out.clear();
                    let finished = t.finish(&mut out);
                    if finished {
                        let tail = Bytes::copy_from_slice(&out);
                        if emit(session, &mut stage, tail, &mut staged).await? {
                            break Some(error_event_break());
                        }
                    } else {
                        // Ended before saying how: an explicit error (or a continuation),
                        // never a stream that looks finished.
                        break Some((
                            FailoverReason::Truncated,
                            "upstream stream ended without its end event".into(),
                        ));
                    }
                }
                break None;
            }
            Err(e) => {
                let why = format!("upstream broke mid-response: {}", e.etype().as_str());
                if !is_sse {
                    log::warn!(
                        "provider {} broke the response mid-body ({}); request {}",
                        provider.name,
                        e.etype().as_str(),
                        ctx.request_id
                    );
                    (served.broken)(FailoverReason::Truncated);
                    ctx.error = Some(why);
                    session.set_keepalive(None);
                    // Close without the terminating chunk: the client sees an incomplete body.
                    return Err(e);
                }
                break Some((FailoverReason::Truncated, why));
            }
        }
    };
    if let Some((reason, why)) = broke {
        if reason == FailoverReason::ResponseTooLarge {
            drop(guard.take());
            crate::serve::trim::release_oversized();
        }
        log::warn!(
            "provider {}: stream broke after its first content ({why}); request {}",
            provider.name,
            ctx.request_id
        );
        (served.broken)(reason);
        // What the broken part reported is still spent.
        record_usage(ctx, &usage, &served, &provider.name);
        ctx.error = Some(why);
        match stage {
            Stage::Track(track) if track.continuable() => {
                // Nothing of the break was sent: the caller completes the stream elsewhere.
                return Ok(RelayEnd::Broken { reason, track });
            }
            Stage::Track(_) => {
                METRICS
                    .stream_recoveries
                    .with_label_values(&["not_continuable"])
                    .inc();
            }
            Stage::Splice(_) => {
                // The continuation broke too: the error event names the original break.
                METRICS
                    .stream_recoveries
                    .with_label_values(&["failed"])
                    .inc();
                ctx.stream_recovery = Some(format!("failed:{}", served.origin));
            }
            Stage::Plain => {}
        }
        // Never a silent truncation that looks like a finished answer: end the stream with an
        // error event the SDKs surface as an exception. The upstream connection is dropped
        // with this function, never pooled.
        session.set_keepalive(None);
        let event = stream_error_event(family, served.origin);
        session.write_body(Some(event), true).await?;
        return Ok(RelayEnd::Done);
    }
    if let Stage::Splice(_) = stage {
        // Said in the stream itself (a comment every SSE parser skips) and in the access line.
        METRICS
            .stream_recoveries
            .with_label_values(&["completed"])
            .inc();
        ctx.stream_recovery = Some(format!("completed:{}", provider.name));
        let note = format!(
            ": twinroute completed this stream from {} after {} broke it\n\n",
            provider.name, served.origin
        );
        session.write_body(Some(Bytes::from(note)), false).await?;
    }
    session.write_body(None, true).await?;
    record_usage(ctx, &usage, &served, &provider.name);
    if ctx.zero_retention {
        // Zero retention: neither connection outlives the request with its bytes in a buffer.
        // The upstream one is dropped rather than pooled; the client's closes (set above).
        return Ok(RelayEnd::Done);
    }
    if upstream.response_done() {
        pool_again(shared, upstream, &peer).await;
    }
    Ok(RelayEnd::Done)
}

/// Bytes on their way to the client: through the translator when the formats differ.
fn translated(
    translator: Option<&mut translate::stream::StreamTranslator>,
    chunk: Bytes,
    out: &mut Vec<u8>,
) -> Bytes {
    match translator {
        None => chunk,
        Some(t) => {
            out.clear();
            t.feed(&chunk, out);
            Bytes::copy_from_slice(out)
        }
    }
}

/// A committed stream that carried an error event: a break like a cut (an overloaded model).
fn error_event_break() -> (FailoverReason, String) {
    (
        FailoverReason::Status5xx,
        "upstream sent an error event mid-stream".into(),
    )
}

/// Malformed upstream events were dropped: counted always, logged once per stream.
fn note_malformed(ctx: &RequestLog, provider: &Provider, n: u64, first: bool) {
    METRICS
        .malformed_events
        .with_label_values(&[&provider.name])
        .inc_by(n);
    if first {
        log::warn!(
            "provider {}: dropped a stream event whose data is not JSON; request {}",
            provider.name,
            ctx.request_id
        );
    }
}

/// Largest answer read whole to translate it (a non-streaming completion is a few KB to a few
/// MB; past this the provider is not sending a chat answer).
const MAX_TRANSLATED_BODY: usize = 32 << 20;

/// A translated non-streaming answer (or a provider error passed to the client): read whole,
/// translated into the client's format, then sent with its own length.
#[allow(clippy::too_many_arguments)]
async fn relay_whole(
    shared: &Shared,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    up: Upstream,
    provider: &Provider,
    served: &Served<'_>,
    mut resp: ResponseHeader,
) -> Result<()> {
    let Upstream {
        session: mut upstream,
        peer,
        prefix,
    } = up;
    let status = resp.status.as_u16();
    let mut buf = BytesMut::new();
    if let Some(p) = prefix {
        buf.extend_from_slice(&p);
    }
    loop {
        match upstream.read_response_body().await {
            Ok(Some(chunk)) if buf.len() + chunk.len() <= MAX_TRANSLATED_BODY => {
                buf.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                let e = GatewayError::new(
                    ErrorKind::UpstreamFailed,
                    format!(
                        "provider {} sent an answer over {MAX_TRANSLATED_BODY} bytes to translate",
                        provider.name
                    ),
                );
                return send_error(session, ctx, e, served.family, vec![]).await;
            }
            Ok(None) => break,
            Err(e) => {
                ctx.error = Some(format!(
                    "upstream broke mid-response: {}",
                    e.etype().as_str()
                ));
                let g = GatewayError::new(
                    ErrorKind::UpstreamFailed,
                    format!("provider {} broke its answer mid-body", provider.name),
                );
                return send_error(session, ctx, g, served.family, vec![]).await;
            }
        }
    }
    let foreign_error = served.translation.is_some()
        || matches!(
            provider.api,
            ApiKind::Bedrock | ApiKind::Vertex | ApiKind::VertexOpenAi
        );
    let body = if !(200..300).contains(&status) {
        let body = if foreign_error {
            translate::response::error(served.family, status, &buf)
        } else {
            buf.to_vec()
        };
        // A provider echoing a credential it was sent never hands it to the client: its keys,
        // its current minted token, and static headers that carry a credential.
        let token = shared.tokens.current(&provider.name);
        let keys: Vec<&[u8]> = provider
            .endpoints
            .iter()
            .filter_map(|e| e.key.as_ref().map(|k| k.expose().as_bytes()))
            .chain(
                provider
                    .extra_headers
                    .iter()
                    .filter(|(k, _)| crate::wire::request::carries_credential(k.as_str()))
                    .map(|(_, v)| v.as_bytes()),
            )
            .chain(token.as_ref().map(|t| t.value.expose().as_bytes()))
            .chain(
                token
                    .as_ref()
                    .and_then(|t| match t.aws.as_ref()? {
                        crate::model::AwsCredentials::Bearer(b) => Some(b),
                        crate::model::AwsCredentials::Static { session_token, .. } => {
                            session_token.as_ref()
                        }
                    })
                    .map(|s| s.expose().as_bytes()),
            )
            .collect();
        crate::wire::error_body::redact(&body, &keys).unwrap_or(body)
    } else if let Some(dir) = served.translation {
        match translate::response::response(dir, &buf) {
            Ok(b) => b,
            Err(e) => {
                let g = GatewayError::new(
                    ErrorKind::UpstreamFailed,
                    format!(
                        "provider {}'s answer could not be translated: {e}",
                        provider.name
                    ),
                );
                return send_error(session, ctx, g, served.family, vec![]).await;
            }
        }
    } else {
        buf.to_vec()
    };
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    if foreign_error || (200..300).contains(&status) {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_header(Box::new(resp), false).await?;
    session.write_body(Some(Bytes::from(body)), true).await?;
    if (200..300).contains(&status) {
        let mut usage = UsageScanner::default();
        usage.feed(&buf);
        record_usage(ctx, &usage, served, &provider.name);
    }
    if !ctx.zero_retention && upstream.response_done() {
        pool_again(shared, upstream, &peer).await;
    }
    Ok(())
}

/// Count an answer's reported tokens (and their cost) for its provider; summed into the access
/// line, so a stream completed from a second provider shows what both calls reported.
fn record_usage(ctx: &mut RequestLog, usage: &UsageScanner, served: &Served<'_>, provider: &str) {
    let add = |prev: Option<u64>, new: Option<u64>| match (prev, new) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    ctx.input_tokens = add(ctx.input_tokens, usage.input_tokens);
    ctx.output_tokens = add(ctx.output_tokens, usage.output_tokens);
    let (input, output) = (
        usage.input_tokens.unwrap_or(0),
        usage.output_tokens.unwrap_or(0),
    );
    if input > 0 {
        METRICS
            .tokens
            .with_label_values(&[served.model_name, provider, "input"])
            .inc_by(input);
    }
    if output > 0 {
        METRICS
            .tokens
            .with_label_values(&[served.model_name, provider, "output"])
            .inc_by(output);
    }
    if let (Some(price), true) = (served.price, input + output > 0) {
        let cost = price.cost_usd(input, output);
        ctx.cost_usd = Some(ctx.cost_usd.unwrap_or(0.0) + cost);
        METRICS
            .cost_usd
            .with_label_values(&[served.model_name, provider])
            .inc_by(cost);
    }
}
