//! One attempt's own parts, apart from the loop that runs them: the body a candidate is sent
//! (spliced, or rebuilt for its family), and what an attempt leaves behind once it is made (the
//! attempt state machine's verdict, health signals, the attempts metric, the access line).

use super::Plan;
use crate::decide::attempt::{AttemptFacts, Attempts, Outcome, Probation, Step};
use crate::decide::outcome::FailoverReason;
use crate::decide::route::Candidate;
use crate::model::endpoint::Endpoint;
use crate::model::error::{ErrorKind, GatewayError};
use crate::model::Provider;
use crate::observe::access_log::{AttemptLog, RequestLog};
use crate::observe::metrics::METRICS;
use crate::serve::state::Runtime;
use crate::wire::body::{RequestBody, SplicedBody};
use crate::wire::translate::{self, Direction};
use bytes::Bytes;
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
    let translation = Direction::between(plan.endpoint, provider.api);
    let continuation_json = plan.continuation.as_ref().map(|c| &c.json);
    let rebuilt = plan.endpoint.rebuilt_for(provider.api) || continuation_json.is_some();
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
    rt: &Runtime,
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
