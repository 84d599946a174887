//! The attempt whose answer goes to the client: what the access line and metrics say about it
//! (provider, served model, a closest equivalent, dropped parameters), the relay stage a stream
//! needs (plain, tracked for `stream_recovery: continue`, or spliced as a continuation), then the
//! relay itself; a tracked stream that broke comes back as the break.

use super::relay::{relay, Served, Stage, Upstream};
use super::{Attempted, BrokenStream, Plan};
use crate::decide::outcome::FailoverReason;
use crate::decide::route::Candidate;
use crate::model::catalog::Offering;
use crate::model::endpoint::Endpoint;
use crate::model::{Provider, StreamRecovery};
use crate::observe::access_log::RequestLog;
use crate::observe::metrics::METRICS;
use crate::serve::downstream::Downstream;
use crate::serve::state::{Generation, Shared};
use crate::wire::stream_event::StreamTrack;
use crate::wire::translate::Direction;
use pingora::prelude::*;
use std::time::Duration;
use tokio::time::Instant;

/// The attempt that answered and is to be delivered.
pub(super) struct Winner<'a> {
    pub(super) candidate: &'a Candidate,
    pub(super) endpoint: usize,
    pub(super) provider: &'a Provider,
    pub(super) offering: &'a Offering,
    /// Parameters cut from the body for this offering.
    pub(super) dropped: &'a [&'a str],
    pub(super) status: u16,
    pub(super) ttfb: Duration,
    /// The client asked for a stream.
    pub(super) stream: bool,
    /// Attempts started so far (this one included), and the request's deadline: what a
    /// continuation inherits.
    pub(super) attempts_started: u32,
    pub(super) deadline: Instant,
}

/// Deliver the winner's answer: note it, pick the relay stage, relay.
pub(super) async fn deliver(
    shared: &Shared,
    rt: &Generation,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    plan: &Plan,
    w: Winner<'_>,
    up: Upstream,
) -> Result<Attempted> {
    let cfg = &rt.config;
    let (cand, provider, offering) = (w.candidate, w.provider, w.offering);
    let model = cfg.catalog.model(plan.model);
    let served_model = cfg.catalog.model(cand.model);
    METRICS
        .upstream_ttfb
        .with_label_values(&[&model.name, &provider.name])
        .observe(w.ttfb.as_secs_f64());
    ctx.provider = Some(provider.name.clone());
    ctx.served_model = Some(offering.model_id.clone());
    ctx.status = w.status;
    ctx.ttfb_ms = Some(ctx.start.elapsed().as_millis() as u64);
    ctx.dropped_params = w.dropped.iter().map(|d| d.to_string()).collect();
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
    let started = w.attempts_started;
    let attempts_header = started.to_string();
    let broken = |reason: FailoverReason| {
        let signal = crate::decide::attempt::broken_after_commit(reason);
        rt.health.apply(
            cand.provider,
            w.endpoint,
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
        // A Responses stream is not tracked: a continuation speaks chat and Messages only.
        None if plan.policy.stream_recovery == StreamRecovery::Continue
            && w.stream
            && plan.endpoint != Endpoint::Responses =>
        {
            Stage::Track(Box::new(StreamTrack::new(plan.endpoint.family())))
        }
        None => Stage::Plain,
    };
    let served = Served {
        model_name: &served_model.name,
        model_id: &offering.model_id,
        price: offering.price,
        equivalent,
        dropped: w.dropped,
        attempts: &attempts_header,
        family: plan.endpoint.family(),
        client_stream: plan.endpoint.dialect(),
        upstream_stream: super::attempt::upstream_dialect(plan, provider),
        translation: Direction::between(plan.endpoint, provider.api()),
        include_usage: plan.include_usage,
        stream_idle: plan
            .policy
            .stream_idle
            .unwrap_or(provider.timeouts.stream_idle),
        broken: &broken,
        origin,
        cache_header: plan.cache_header,
        max_event: cfg.max_stream_event_bytes,
    };
    let end = relay(shared, session, ctx, up, provider, served, stage).await?;
    Ok(match end {
        None => Attempted::Done,
        Some(b) => Attempted::Broken(Box::new(BrokenStream {
            reason: b.reason,
            provider: cand.provider,
            track: *b.track,
            deadline: w.deadline,
            attempts_left: plan.policy.max_attempts.saturating_sub(started),
        })),
    })
}
