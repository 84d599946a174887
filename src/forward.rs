//! The attempt loop: send the request to candidates in order until one answers, within one
//! deadline, then stream that answer to the client.
//!
//! Each attempt is: pick a candidate health admits → splice its model ID into the body → connect
//! (Pingora connector, pooled) → write header and body → wait for the response header under the
//! first-byte budget → classify. A retryable outcome moves on (with backoff); anything else is the
//! answer. Once a byte of the answer went to the client there is no going back, so the decision
//! is made on the response header, before anything is written downstream.
//!
//! Hooks for what comes later sit at the seams: `Plan` is the routing decision, `exchange` is one
//! attempt, `classify_status`/`classify_error` the outcome, `relay` the streaming.

use crate::access_log::{AttemptLog, RequestLog};
use crate::api::{Endpoint, Family};
use crate::backoff;
use crate::body::{RequestBody, SplicedBody};
use crate::catalog::{ModelId, Price};
use crate::config::{Policy, Provider, ProviderEndpoint};
use crate::errors::{ErrorKind, GatewayError};
use crate::health::breaker::Admission;
use crate::health::InflightSlot;
use crate::metrics::METRICS;
use crate::outcome::{
    body_decides, classify_error, classify_error_body, classify_status, parse_retry_after,
    AttemptPhase, FailoverReason, StatusClass,
};
use crate::provider;
use crate::route::{Candidate, HealthView};
use crate::state::{Runtime, Shared};
use crate::usage::UsageScanner;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use std::time::Duration;
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
    /// The request's route asked for zero retention (a provider may ask too).
    pub zero_retention: bool,
}

/// A failed attempt, kept for the final error message and the 429 decision.
struct Failure {
    provider: String,
    reason: FailoverReason,
    status: Option<u16>,
    retry_after_s: Option<u64>,
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

/// Run the attempts and write the response (the answer or an error) to the client.
/// Returns `Err` only when the client connection broke.
pub async fn run(
    shared: &Shared,
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut RequestLog,
    plan: &Plan,
    body: &RequestBody,
) -> Result<()> {
    let cfg = &rt.config;
    let model = cfg.catalog.model(plan.model);
    let start = Instant::now();
    let max_attempts = if plan.pinned {
        1
    } else {
        plan.policy.max_attempts
    };
    let first = &cfg.providers[plan.candidates[0].provider];
    let deadline = start
        + plan
            .policy
            .request_timeout
            .unwrap_or(first.timeouts.first_byte * max_attempts);
    let mut failures: Vec<Failure> = Vec::new();
    // Which endpoints already failed this request: only the first failure counts for a breaker.
    let mut failed_once: Vec<(usize, usize)> = Vec::new();
    let mut cursor = 0usize;
    let mut previous: Option<usize> = None;
    let mut deadline_hit = false;
    // Raised by a context-length answer: only offerings with a window at least this big remain.
    let mut min_context = 0u64;
    // Set when a candidate was passed over for being at its `max_connections`.
    let mut saturated = false;

    for attempt in 0..max_attempts {
        if attempt > 0 {
            let wait = backoff::delay(&plan.policy.backoff, attempt - 1);
            let now = Instant::now();
            if now + wait >= deadline {
                deadline_hit = true;
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let now = Instant::now();
        if now >= deadline {
            deadline_hit = true;
            break;
        }
        let Some((cand, ep, probation, _slot)) =
            pick(rt, plan, &mut cursor, now, min_context, &mut saturated)
        else {
            break;
        };
        let provider = &cfg.providers[cand.provider];
        let served_model = cfg.catalog.model(cand.model);
        let offering = &served_model.offerings[cand.offering];
        if cand.panic.is_some() {
            ctx.panic_mode = true;
        }
        if let Some(prev) = previous {
            if let Some(f) = failures.last() {
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
        }
        previous = Some(cand.provider);

        // Parameters this offering must not see: cut from the body, everything else as sent.
        let dropped = body.present(&offering.drop_params);
        let spliced = body.rewrite(&offering.model_id, &dropped);
        let upstream_ep = &provider.endpoints[ep];
        let header = provider::build_request(
            provider,
            upstream_ep,
            plan.endpoint,
            &offering.model_id,
            session.req_header(),
            spliced.len(),
        )?;
        let budget = provider.timeouts.first_byte.min(deadline - now);
        let bounded_by_deadline = budget < provider.timeouts.first_byte;
        let attempt_start = Instant::now();
        let result = exchange(
            shared,
            provider,
            upstream_ep,
            header,
            &spliced,
            budget,
            bounded_by_deadline,
        )
        .await;
        let ms = attempt_start.elapsed().as_millis() as u64;
        match result {
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
                let now = Instant::now();
                let failover = match verdict {
                    Some(FailoverReason::ContextLength) => {
                        // Only a larger window can help; without one the client gets the
                        // provider's own answer.
                        let here = cfg
                            .catalog
                            .context_tokens(cand.model, cand.offering)
                            .unwrap_or(0);
                        let larger = plan.candidates.iter().any(|c| {
                            cfg.catalog
                                .context_tokens(c.model, c.offering)
                                .is_some_and(|t| t > here)
                        });
                        (larger && attempt + 1 < max_attempts).then(|| {
                            min_context = here + 1;
                            FailoverReason::ContextLength
                        })
                    }
                    other => other,
                };
                if let Some(reason) = failover {
                    match reason {
                        FailoverReason::AuthFailed => rt.health.on_failure(
                            cand.provider,
                            ep,
                            reason.as_str(),
                            !failed_once.contains(&(cand.provider, ep)),
                            now,
                        ),
                        // The provider is up and said something precise about this model.
                        _ => rt.health.on_success(cand.provider, ep, ttfb, now),
                    }
                    if reason == FailoverReason::ModelUnavailable {
                        rt.health.mark_offering_unavailable(
                            cand.provider,
                            &offering.model_id,
                            plan.policy.offering_cooldown,
                            now,
                        );
                        log::warn!(
                            "provider {}: model {} unavailable ({status}); offering out for {} s",
                            provider.name,
                            offering.model_id,
                            plan.policy.offering_cooldown.as_secs()
                        );
                    }
                    failed_once.push((cand.provider, ep));
                    let zero_retention = plan.zero_retention || provider.zero_retention;
                    if upstream.response_done() && !zero_retention {
                        shared
                            .connector
                            .release_http_session(*upstream, &*peer, Some(POOL_IDLE))
                            .await;
                    }
                    METRICS
                        .attempts
                        .with_label_values(&[&provider.name, reason.as_str()])
                        .inc();
                    ctx.attempts.push(AttemptLog {
                        provider: provider.name.clone(),
                        model: offering.model_id.clone(),
                        reason: Some(reason.as_str()),
                        status: Some(status),
                        ms,
                    });
                    failures.push(Failure {
                        provider: provider.name.clone(),
                        reason,
                        status: Some(status),
                        retry_after_s: None,
                    });
                    continue;
                }
                rt.health.on_success(cand.provider, ep, ttfb, now);
                rt.health
                    .offering_answered(cand.provider, &offering.model_id);
                METRICS
                    .attempts
                    .with_label_values(&[&provider.name, "ok"])
                    .inc();
                METRICS
                    .upstream_ttfb
                    .with_label_values(&[&model.name, &provider.name])
                    .observe(ttfb.as_secs_f64());
                ctx.attempts.push(AttemptLog {
                    provider: provider.name.clone(),
                    model: offering.model_id.clone(),
                    reason: None,
                    status: Some(status),
                    ms,
                });
                ctx.provider = Some(provider.name.clone());
                ctx.served_model = Some(offering.model_id.clone());
                ctx.status = status;
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
                let attempts = (attempt + 1).to_string();
                if plan.zero_retention || provider.zero_retention {
                    ctx.zero_retention = true;
                }
                return relay(
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
                    },
                    &attempts,
                    plan.endpoint.family(),
                )
                .await;
            }
            Exchange::Failed {
                reason,
                status,
                retry_after_s,
            } => {
                let now = Instant::now();
                // A 429/503 that says when to come back is a cooldown, not a breaker failure.
                let cooldown = retry_after_s.filter(|_| matches!(status, Some(429) | Some(503)));
                if let Some(secs) = cooldown {
                    rt.health
                        .on_retry_after(cand.provider, ep, Duration::from_secs(secs), now);
                    rt.health
                        .on_failure(cand.provider, ep, reason.as_str(), false, now);
                }
                if probation && (reason == FailoverReason::Deadline || cooldown.is_some()) {
                    // No verdict on the provider's health: free the probation slot.
                    rt.health.on_abandoned(cand.provider, ep, now);
                } else if cooldown.is_none() {
                    rt.health.on_failure(
                        cand.provider,
                        ep,
                        reason.as_str(),
                        !failed_once.contains(&(cand.provider, ep)),
                        now,
                    );
                }
                failed_once.push((cand.provider, ep));
                METRICS
                    .attempts
                    .with_label_values(&[&provider.name, reason.as_str()])
                    .inc();
                log::debug!(
                    "attempt {} to {} failed: {}",
                    attempt + 1,
                    provider.name,
                    reason
                );
                ctx.attempts.push(AttemptLog {
                    provider: provider.name.clone(),
                    model: offering.model_id.clone(),
                    reason: Some(reason.as_str()),
                    status,
                    ms,
                });
                if reason == FailoverReason::Deadline {
                    deadline_hit = true;
                }
                failures.push(Failure {
                    provider: provider.name.clone(),
                    reason,
                    status,
                    retry_after_s,
                });
                if deadline_hit {
                    break;
                }
            }
        }
    }

    let e = if failures.is_empty() && saturated {
        let mut e = GatewayError::new(
            ErrorKind::Overloaded,
            "every provider of this model is at its max_connections; retry shortly",
        );
        e.retry_after_s = Some(1);
        e
    } else {
        final_error(&failures, deadline_hit, deadline - start)
    };
    ctx.status = e.kind.status();
    ctx.error = Some(e.message.clone());
    session.set_keepalive(None);
    let attempts = failures.len().to_string();
    e.send(
        session,
        plan.endpoint.family(),
        &[
            ("x-twinroute-attempts", attempts),
            ("x-twinroute-request-id", ctx.request_id.clone()),
        ],
    )
    .await
}

/// Next candidate health admits, cycling through the list. When health turns every candidate
/// away, the first one in order is used anyway (fail open).
fn pick<'r>(
    rt: &'r Runtime,
    plan: &Plan,
    cursor: &mut usize,
    now: Instant,
    min_context: u64,
    saturated: &mut bool,
) -> Option<(Candidate, usize, bool, Option<InflightSlot<'r>>)> {
    let n = plan.candidates.len();
    if n == 0 {
        return None;
    }
    let catalog = &rt.config.catalog;
    let fits = |c: &Candidate| {
        min_context == 0
            || catalog
                .context_tokens(c.model, c.offering)
                .is_some_and(|t| t >= min_context)
    };
    if !plan.candidates.iter().any(fits) {
        return None;
    }
    for _ in 0..n {
        let c = &plan.candidates[*cursor % n];
        *cursor += 1;
        if !fits(c) {
            continue;
        }
        if c.panic.is_some() {
            // Routing already knows everything is down; order is its call.
            let ep = rt
                .health
                .fallback_endpoint(c.provider, plan.region.as_deref(), now);
            return Some((c.clone(), ep, false, None));
        }
        // Health may have changed since routing (a Retry-After or a breaker trip mid-request,
        // an offering another request just found gone).
        let model_id = &catalog.model(c.model).offerings[c.offering].model_id;
        if rt.health.skip(c.provider).is_some()
            || rt.health.offering_skip(c.provider, model_id).is_some()
        {
            continue;
        }
        // A provider at its max_connections is passed over like an unhealthy one.
        let max = rt.config.providers[c.provider].max_connections;
        let Some(slot) = rt.health.try_acquire(c.provider, max) else {
            *saturated = true;
            continue;
        };
        match rt
            .health
            .select_endpoint(c.provider, plan.region.as_deref(), now)
        {
            Some((ep, Admission::Probation)) => return Some((c.clone(), ep, true, Some(slot))),
            Some((ep, _)) => return Some((c.clone(), ep, false, Some(slot))),
            None => continue,
        }
    }
    let mut c = loop {
        let c = &plan.candidates[*cursor % n];
        *cursor += 1;
        if fits(c) {
            break c.clone();
        }
    };
    c.panic = rt.health.skip(c.provider).map(|(r, _)| r);
    if *saturated && c.panic.is_none() {
        // Everyone healthy is busy: an overload answer, not a pile-up on a saturated provider.
        return None;
    }
    let ep = rt
        .health
        .fallback_endpoint(c.provider, plan.region.as_deref(), now);
    Some((c, ep, false, None))
}

fn final_error(failures: &[Failure], deadline_hit: bool, total: Duration) -> GatewayError {
    let list = failures
        .iter()
        .map(|f| match f.status {
            Some(s) => format!("{}: {} ({s})", f.provider, f.reason),
            None => format!("{}: {}", f.provider, f.reason),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let all_timeouts = !failures.is_empty() && failures.iter().all(|f| f.reason.is_timeout());
    if deadline_hit || all_timeouts {
        return GatewayError::new(
            ErrorKind::UpstreamTimeout,
            format!(
                "no provider answered within {} ms: {}",
                total.as_millis(),
                if list.is_empty() {
                    "no attempt could start"
                } else {
                    &list
                }
            ),
        );
    }
    if !failures.is_empty()
        && failures
            .iter()
            .all(|f| f.reason == FailoverReason::ModelUnavailable)
    {
        return GatewayError::new(
            ErrorKind::ModelUnavailable,
            format!("no provider serves this model right now: {list}"),
        );
    }
    if !failures.is_empty()
        && failures
            .iter()
            .all(|f| f.reason == FailoverReason::Status429)
    {
        let mut e = GatewayError::new(
            ErrorKind::RateLimited,
            format!("every provider is rate limiting: {list}"),
        );
        e.retry_after_s = failures.iter().filter_map(|f| f.retry_after_s).min();
        return e;
    }
    GatewayError::new(
        ErrorKind::UpstreamFailed,
        if list.is_empty() {
            "no provider could be tried".to_string()
        } else {
            format!("all providers failed: {list}")
        },
    )
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
            return failed(FailoverReason::ConnectFailure);
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
        let (mut up, _reused) = shared.connector.get_http_session(&*peer).await?;
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
            let complete = match fast_timeout(left, read).await {
                Ok(Ok(complete)) => complete,
                Ok(Err(e)) => {
                    log::debug!("provider {}: error body broke ({e})", provider.name);
                    return failed(FailoverReason::Reset);
                }
                Err(_) => {
                    return failed(if bounded_by_deadline {
                        FailoverReason::Deadline
                    } else {
                        FailoverReason::FirstByteTimeout
                    })
                }
            };
            let prefix = buf.freeze();
            // A body over the cap is no error message a provider sends about a model.
            let verdict = if complete {
                classify_error_body(status, &prefix)
            } else {
                None
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
        StatusClass::Retry(reason) => {
            let retry_after_s = resp
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v.as_bytes()));
            // The error body is not read; the connection is dropped rather than pooled.
            Exchange::Failed {
                reason,
                status: Some(status),
                retry_after_s,
            }
        }
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

/// What answered: for headers, usage accounting and cost.
struct Served<'a> {
    model_name: &'a str,
    model_id: &'a str,
    price: Option<Price>,
    /// `canonical;grade=g` when a closest equivalent answered.
    equivalent: Option<String>,
    dropped: &'a [&'a str],
}

/// The upstream side of the chosen answer.
struct Upstream {
    session: Box<HttpSession>,
    peer: Box<HttpPeer>,
    /// Body bytes already read while classifying.
    prefix: Option<Bytes>,
}

/// Stream the chosen answer to the client, chunk by chunk as it arrives.
#[allow(clippy::too_many_arguments)]
async fn relay(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestLog,
    up: Upstream,
    provider: &Provider,
    served: Served<'_>,
    attempts: &str,
    family: Family,
) -> Result<()> {
    let Upstream {
        session: mut upstream,
        peer,
        prefix,
    } = up;
    let served_model = served.model_id;
    let Some(up_header) = upstream.response_header() else {
        return Error::e_explain(ErrorType::InternalError, "answer without a response header");
    };
    let mut resp: ResponseHeader = up_header.clone();
    for h in HOP_BY_HOP {
        resp.remove_header(*h);
    }
    let has_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
    let chunked = resp.headers.contains_key(http::header::TRANSFER_ENCODING);
    if !has_length && !chunked && !session.is_http2() {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    let is_sse = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    resp.insert_header("x-twinroute-provider", provider.name.as_str())?;
    resp.insert_header("x-twinroute-model", served_model)?;
    resp.insert_header("x-twinroute-attempts", attempts)?;
    resp.insert_header("x-twinroute-request-id", ctx.request_id.as_str())?;
    if let Some(eq) = &served.equivalent {
        resp.insert_header("x-twinroute-equivalent", eq.as_str())?;
    }
    if !served.dropped.is_empty() {
        resp.insert_header("x-twinroute-dropped-params", served.dropped.join(","))?;
    }
    if ctx.zero_retention {
        // Said in the response header: the client's connection closes after this answer.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;

    let success = upstream
        .response_header()
        .is_some_and(|h| h.status.is_success());
    let mut usage = UsageScanner::default();
    if let Some(p) = prefix.filter(|p| !p.is_empty()) {
        session.write_response_body(Some(p), false).await?;
    }
    loop {
        match upstream.read_response_body().await {
            Ok(Some(chunk)) => {
                if success {
                    usage.feed(&chunk);
                }
                // A write error means the client left: return it, dropping the upstream
                // connection so the provider stops generating for nobody.
                session.write_response_body(Some(chunk), false).await?;
            }
            Ok(None) => break,
            Err(e) => {
                log::warn!(
                    "provider {} broke the response mid-body ({}); request {}",
                    provider.name,
                    e.etype().as_str(),
                    ctx.request_id
                );
                ctx.error = Some(format!(
                    "upstream broke mid-response: {}",
                    e.etype().as_str()
                ));
                session.set_keepalive(None);
                if is_sse {
                    // Never a silent truncation that looks like a finished answer: end the
                    // stream with an error event the SDKs surface as an exception.
                    let event = stream_error_event(family, &provider.name);
                    session.write_response_body(Some(event), true).await?;
                    return Ok(());
                }
                // Close without the terminating chunk: the client sees an incomplete body.
                return Err(e);
            }
        }
    }
    session.write_response_body(None, true).await?;
    record_usage(ctx, &usage, &served, &provider.name);
    if ctx.zero_retention {
        // Zero retention: neither connection outlives the request with its bytes in a buffer.
        // The upstream one is dropped rather than pooled; the client's closes (set above).
        return Ok(());
    }
    if upstream.response_done() {
        shared
            .connector
            .release_http_session(*upstream, &*peer, Some(POOL_IDLE))
            .await;
    }
    Ok(())
}

fn record_usage(ctx: &mut RequestLog, usage: &UsageScanner, served: &Served<'_>, provider: &str) {
    ctx.input_tokens = usage.input_tokens;
    ctx.output_tokens = usage.output_tokens;
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
        ctx.cost_usd = Some(cost);
        METRICS
            .cost_usd
            .with_label_values(&[served.model_name, provider])
            .inc_by(cost);
    }
}

fn stream_error_event(family: Family, provider: &str) -> Bytes {
    let msg = format!("upstream provider {provider} ended the stream unexpectedly");
    let text = match family {
        Family::OpenAi => format!(
            "data: {}\n\n",
            serde_json::json!({"error": {"message": msg, "type": "api_error", "code": "upstream_stream_broken"}})
        ),
        Family::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            serde_json::json!({"type": "error", "error": {"type": "api_error", "message": msg}})
        ),
    };
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(reason: FailoverReason, retry: Option<u64>) -> Failure {
        Failure {
            provider: "p".into(),
            reason,
            status: None,
            retry_after_s: retry,
        }
    }

    #[test]
    fn final_error_picks_the_status() {
        let d = Duration::from_millis(900);
        let e = final_error(
            &[
                f(FailoverReason::Status429, Some(7)),
                f(FailoverReason::Status429, Some(3)),
            ],
            false,
            d,
        );
        assert_eq!((e.kind, e.retry_after_s), (ErrorKind::RateLimited, Some(3)));
        let e = final_error(
            &[
                f(FailoverReason::Status429, None),
                f(FailoverReason::Status5xx, None),
            ],
            false,
            d,
        );
        assert_eq!(e.kind, ErrorKind::UpstreamFailed);
        assert!(
            e.message.contains("p: status_429; p: status_5xx"),
            "{}",
            e.message
        );
        let e = final_error(&[f(FailoverReason::FirstByteTimeout, None)], false, d);
        assert_eq!(e.kind, ErrorKind::UpstreamTimeout);
        let e = final_error(&[f(FailoverReason::ConnectFailure, None)], true, d);
        assert_eq!(e.kind, ErrorKind::UpstreamTimeout);
        assert!(e.message.contains("900 ms"));
    }
}
