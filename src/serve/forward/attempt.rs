//! One attempt's own parts, apart from the loop that runs them: the body a candidate is sent
//! (spliced, or rebuilt for its family), the exchange held to its commit point, and what an
//! attempt leaves behind once it is made (the attempt state machine's verdict, health signals,
//! the attempts metric, the access line).

use super::exchange::{authorized_exchange, Call, Exchange};
use super::relay::Upstream;
use super::Plan;
use crate::decide::attempt::{AttemptFacts, Attempts, Outcome, Probation, Step};
use crate::decide::outcome::FailoverReason;
use crate::decide::route::Candidate;
use crate::model::endpoint::Endpoint;
use crate::model::endpoint::{answer_family, Dialect};
use crate::model::error::{ErrorKind, GatewayError};
use crate::model::{Config, Provider};
use crate::observe::access_log::{AttemptLog, RequestLog};
use crate::observe::metrics::METRICS;
use crate::serve::commit::{self, Held, HoldSpec};
use crate::serve::state::Generation;
use crate::wire::body::{RequestBody, SplicedBody};
use crate::wire::translate::{self, Direction};
use crate::wire::vendor;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use tokio::time::Instant;

/// The body one candidate is sent, and the client route it is sent on: translated (or wrapped in
/// a cloud's envelope) from the parsed body when the candidate needs it rebuilt, else the
/// client's bytes with the model spliced; parameters the offering must not see cut either way.
/// An error when the body is not the shape its own API documents (say, tool call arguments that
/// are not JSON): the client's, for every twin.
pub(super) fn attempt_body(
    plan: &Plan,
    body: &RequestBody,
    provider: &Provider,
    offering: &crate::model::catalog::Offering,
    dropped: &[&str],
) -> std::result::Result<(SplicedBody, Endpoint), GatewayError> {
    let translation = Direction::between(plan.endpoint, provider.api());
    let continuation_json = plan.continuation.as_ref().map(|c| &c.json);
    let rebuilt = plan.endpoint.rebuilt_for(provider.api()) || continuation_json.is_some();
    match (rebuilt, continuation_json.or(plan.parsed_body.as_ref())) {
        (true, Some(json)) => {
            let bytes = translate::provider_body(
                plan.endpoint,
                provider,
                json,
                &offering.model_id,
                dropped,
            )
            .map_err(|e| {
                GatewayError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "the request cannot be translated for {}: {e}",
                        provider.name
                    ),
                )
            })?;
            Ok((
                SplicedBody {
                    parts: vec![Bytes::from(bytes)],
                },
                translation.map_or(plan.endpoint, |d| d.provider_endpoint()),
            ))
        }
        _ => Ok((body.rewrite(&offering.model_id, dropped), plan.endpoint)),
    }
}

/// One attempt as it was made: which candidate, on which endpoint of its provider, admitted as
/// which probations, and when it started.
pub(super) struct Tried<'a> {
    pub(super) candidate: &'a Candidate,
    pub(super) endpoint: usize,
    pub(super) probation: Probation,
    pub(super) provider: &'a Provider,
    pub(super) model_id: &'a str,
    pub(super) started: Instant,
}

/// What recording an attempt decided: the next step, and the status and failover reason it is
/// logged with.
pub(super) struct Recorded {
    pub(super) step: Step,
    pub(super) status: Option<u16>,
    pub(super) reason: Option<FailoverReason>,
}

/// Record what an attempt produced: the attempt state machine's verdict, the health signals it
/// gives, the attempts metric and the access line's attempt.
pub(super) fn record_attempt(
    rt: &Generation,
    plan: &Plan,
    ctx: &mut RequestLog,
    attempts: &mut Attempts,
    tried: Tried<'_>,
    outcome: Outcome,
) -> Recorded {
    let cfg = &rt.config;
    let cand = tried.candidate;
    let ms = tried.started.elapsed().as_millis() as u64;
    let here = cfg.catalog.context_tokens(cand.model, cand.offering);
    let facts = AttemptFacts {
        provider: cand.provider,
        provider_name: &tried.provider.name,
        endpoint: tried.endpoint,
        probation: tried.probation,
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
            .apply(cand.provider, tried.endpoint, tried.model_id, signal, now);
    }
    let status = match outcome {
        Outcome::Answered { status, .. } => Some(status),
        Outcome::Failed { status, .. } => status,
    };
    let reason = match verdict.step {
        Step::Deliver => None,
        Step::Next(r) | Step::Stop(r) | Step::Again { reason: r, .. } => Some(r),
    };
    METRICS
        .attempts
        .with_label_values(&[
            tried.provider.name.as_str(),
            reason.map_or("ok", |r| r.as_str()),
        ])
        .inc();
    ctx.attempts.push(AttemptLog {
        provider: tried.provider.name.clone(),
        model: tried.model_id.to_string(),
        reason: reason.map(|r| r.as_str()),
        status,
        ms,
    });
    Recorded {
        step: verdict.step,
        status,
        reason,
    }
}

/// One attempt on the wire, held to its commit point: the exchange, then (a success) the hold
/// until a stream's first content or a whole body arrives, so that nothing reaches the client
/// before the answer is known to be one. The outcome, and the answer when there is one to
/// deliver or to clear (an error answer).
pub(super) async fn exchange_held(
    call: Call<'_>,
    header: RequestHeader,
    cfg: &Config,
    plan: &Plan,
    started: Instant,
    attempts: &Attempts,
) -> pingora::Result<(Outcome, Option<Upstream>)> {
    match authorized_exchange(call, header).await? {
        Exchange::Failed {
            reason,
            status,
            retry_after_s,
        } => Ok((
            Outcome::Failed {
                reason,
                status,
                retry_after_s,
            },
            None,
        )),
        Exchange::Answer {
            upstream: mut session,
            peer,
            ttfb,
            prefix,
            verdict,
        } => {
            let status = session
                .response_header()
                .map(|h| h.status.as_u16())
                .unwrap_or(0);
            let answered = Outcome::Answered {
                status,
                ttfb,
                body_verdict: verdict,
            };
            if verdict.is_some() || !(200..300).contains(&status) {
                return Ok((
                    answered,
                    Some(Upstream {
                        session,
                        peer,
                        prefix,
                    }),
                ));
            }
            // The commit point: nothing reaches the client before it.
            let spec = hold_spec(cfg, plan, call.provider, &session, started, attempts);
            Ok(match commit::hold(&mut session, prefix, &spec).await {
                Held::Committed(prefix) => (
                    answered,
                    Some(Upstream {
                        session,
                        peer,
                        prefix,
                    }),
                ),
                Held::Failed(reason) => (
                    Outcome::Failed {
                        reason,
                        status: Some(status),
                        retry_after_s: None,
                    },
                    None,
                ),
            })
        }
    }
}

/// The events a candidate's stream is made of: those of the route it is sent on (the client's,
/// or the one translation sends it to) in the provider's family.
pub(super) fn upstream_dialect(plan: &Plan, provider: &Provider) -> Dialect {
    let endpoint = Direction::between(plan.endpoint, provider.api())
        .map_or(plan.endpoint, |d| d.provider_endpoint());
    Dialect::of(endpoint, answer_family(provider.api()))
}

/// How to hold a successful answer until its commit point: a stream (by its content type) until
/// its first content within `first_token_ms` (the route's, else the provider's), a whole body
/// within the request's deadline.
fn hold_spec(
    cfg: &Config,
    plan: &Plan,
    provider: &Provider,
    upstream: &HttpSession,
    attempt_start: Instant,
    attempts: &Attempts,
) -> HoldSpec {
    let framing = vendor::framing(
        provider.api(),
        upstream
            .response_header()
            .and_then(|h| h.headers.get(http::header::CONTENT_TYPE))
            .map(|v| v.as_bytes()),
    );
    let eventstream = framing == vendor::Framing::EventStream;
    let stream = (framing != vendor::Framing::Whole).then(|| upstream_dialect(plan, provider));
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
