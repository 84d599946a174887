//! A request's part in the background queue: whether it is background work
//! (`x-twinroute-priority`, the route's `queue.background`), what happens when it finds no
//! capacity (queued: 202 at once under `Prefer: respond-async`, else the connection held up to
//! `queue.max_wait_ms`), the drain's own runs (never queued again), and the job resource
//! (`GET` / `DELETE /v1/twinroute/jobs/{id}`).
//!
//! The store and the drain are `serve::queue`; the decisions `decide::queue`.

use crate::decide::queue::{prefers_async, valid_job_id, Priority};
use crate::model::endpoint::{Endpoint, Family};
use crate::model::QueuePolicy;
use crate::observe::access_log::RequestLog;
use crate::serve::downstream::Downstream;
use crate::serve::forward::{self, Plan, Ran};
use crate::serve::queue::{
    Found, NewJob, Refused, JOB_HEADER, JOB_TOKEN_HEADER, NO_CAPACITY_HEADER,
};
use crate::serve::state::{Generation, Shared};
use crate::wire::body::RequestBody;
use crate::wire::errors::{truncate, ErrorKind, GatewayError};
use crate::wire::job::{self, JobStatus};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::Result;

pub const HDR_PRIORITY: &str = "x-twinroute-priority";

/// How one request takes part in the queue.
pub enum Queueing {
    /// Answered or failed now.
    No,
    /// Background work: queued when no capacity is found.
    Client {
        respond_async: bool,
        policy: QueuePolicy,
        /// The client's identity, hashed: only it may read the job.
        scope: [u8; 32],
    },
    /// The drain's own run of this job: never queued again; no capacity is answered with
    /// `x-twinroute-queue: retry` so the job waits for its next try.
    Run(String),
}

/// The job a request runs, when it is the drain's (it carries this process's job token).
pub fn job_run(shared: &Shared, h: &http::HeaderMap) -> Option<String> {
    use subtle::ConstantTimeEq;
    let q = shared.queue.as_ref()?;
    let presented = h.get(JOB_TOKEN_HEADER)?.as_bytes();
    if !bool::from(presented.ct_eq(q.token().as_bytes())) {
        return None;
    }
    let id = h.get(JOB_HEADER)?.to_str().ok()?;
    valid_job_id(id).then(|| id.to_string())
}

/// Whether this request is background work, and how it waits. A bad `x-twinroute-priority` is
/// the client's error. Requests a zero-retention route or provider could see never queue (a
/// job is written to disk), and
/// without `state_dir` there is no queue: such requests are answered or failed now.
pub fn queueing(
    shared: &Shared,
    h: &http::HeaderMap,
    plan: &Plan,
    scope: impl FnOnce() -> [u8; 32],
) -> std::result::Result<Queueing, GatewayError> {
    if let Some(id) = job_run(shared, h) {
        if plan.keep_nothing {
            // Queued before a reload put a zero-retention provider in its reach: not run, so
            // nothing of its answer is written; its client reads this error instead.
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "this background job could now be answered by a zero-retention provider, whose answers are never stored; it was not run",
            ));
        }
        return Ok(Queueing::Run(id));
    }
    let background = match h.get(HDR_PRIORITY) {
        Some(v) => {
            let p = Priority::parse(v.to_str().unwrap_or(""))
                .map_err(|m| GatewayError::new(ErrorKind::InvalidRequest, m))?;
            p == Priority::Background
        }
        None => plan.policy.queue.background,
    };
    if !background || plan.keep_nothing || shared.queue.is_none() {
        return Ok(Queueing::No);
    }
    let respond_async = h
        .get_all("prefer")
        .iter()
        .any(|v| v.to_str().is_ok_and(prefers_async));
    Ok(Queueing::Client {
        respond_async,
        policy: plan.policy.queue,
        scope: scope(),
    })
}

/// Run the plan; background work that finds no capacity is queued (or, for the drain's own
/// run, told to wait) instead of failed.
pub async fn execute(
    shared: &Shared,
    rt: &Generation,
    down: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    plan: &Plan,
    body: &RequestBody,
    q: &Queueing,
) -> Result<()> {
    let (e, tried) = match forward::run(shared, rt, down, ctx, plan, body).await? {
        Ran::Done => return Ok(()),
        Ran::NoCapacity(e, tried) => (e, tried),
    };
    let family = plan.endpoint.family();
    let mut extra = vec![(crate::serve::names::HDR_ATTEMPTS, tried.to_string())];
    let (
        Queueing::Client {
            respond_async,
            policy,
            scope,
        },
        Some(queue),
    ) = (q, shared.queue.as_ref())
    else {
        if matches!(q, Queueing::Run(_)) {
            extra.push((NO_CAPACITY_HEADER, "retry".into()));
        }
        return forward::send_error(down, ctx, e, family, extra).await;
    };
    let (respond_async, policy, scope) = (*respond_async, *policy, *scope);
    let route_headers = route_headers(&rt.config);
    let new = NewJob {
        path: down.req_header().uri.path().to_string(),
        headers: down
            .req_header()
            .headers
            .iter()
            .filter(|(k, _)| job::kept_request_header(k.as_str(), &route_headers))
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        scope,
        max_age: policy.max_age,
    };
    let (id, mut done) = match queue
        .enqueue(new, Bytes::copy_from_slice(body.bytes()))
        .await
    {
        Ok(j) => j,
        Err(Refused::Full(n)) => {
            let mut full = GatewayError::new(
                ErrorKind::QueueFull,
                format!(
                    "no capacity now, and the background queue is full ({n} jobs): retry later ({})",
                    e.message
                ),
            );
            full.retry_after_s = Some(5);
            return forward::send_error(down, ctx, full, family, extra).await;
        }
        Err(Refused::Store(x)) => {
            // Not written, so not accepted: the client gets the failure it would have had.
            log::error!("request {}: could not queue: {x}", ctx.request_id);
            return forward::send_error(down, ctx, e, family, extra).await;
        }
    };
    log::info!(
        "request {}: no capacity ({}); queued as {id}",
        ctx.request_id,
        e.message
    );
    ctx.queued = Some(id.clone());
    ctx.error = Some(e.message);
    if !respond_async {
        // Held: answered as soon as the job is, or given its location when the wait runs out.
        let mut closing = queue.closing();
        let finished = tokio::select! {
            r = tokio::time::timeout(policy.max_wait, done.wait_for(|d| *d)) => {
                r.is_ok_and(|r| r.is_ok())
            }
            // Shutting down: the location now, not a connection cut at the end of the grace.
            _ = closing.wait_for(|c| *c) => false,
        };
        if finished {
            if let Some(found) = queue.find(&id, &scope).await {
                ctx.error = None;
                return write_found(down, ctx, &id, found, respond_async).await;
            }
        }
    }
    match queue.find(&id, &scope).await {
        Some(found) => write_found(down, ctx, &id, found, respond_async).await,
        None => {
            let gone = GatewayError::new(ErrorKind::NotFound, format!("job {id} was cancelled"));
            forward::send_error(down, ctx, gone, family, vec![(JOB_HEADER, id)]).await
        }
    }
}

/// The headers configured routes match on: a job keeps them (`wire::job::kept_request_header`).
pub fn route_headers(cfg: &crate::model::Config) -> Vec<http::HeaderName> {
    cfg.routes
        .iter()
        .flat_map(|r| r.headers.iter().map(|(k, _)| k.clone()))
        .collect()
}

/// `GET` or `DELETE /v1/twinroute/jobs/{id}`: the job, as its client (`scope`) may see it.
/// `Err(e)`: an error to answer with; `Ok(())`: answered.
pub async fn resource(
    shared: &Shared,
    down: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    id: &str,
    scope: [u8; 32],
) -> Result<std::result::Result<(), GatewayError>> {
    let Some(queue) = shared.queue.as_ref() else {
        return Ok(Err(GatewayError::new(
            ErrorKind::NotFound,
            "the background queue is off (set state_dir to turn it on)",
        )));
    };
    let missing = || {
        GatewayError::new(
            ErrorKind::NotFound,
            format!("no background job {:?}", truncate(id)),
        )
    };
    if !valid_job_id(id) {
        return Ok(Err(missing()));
    }
    ctx.queued = Some(id.to_string());
    let method = down.req_header().method.clone();
    if method == http::Method::GET {
        return Ok(match queue.find(id, &scope).await {
            Some(found) => write_found(down, ctx, id, found, false).await.map(Ok)?,
            None => Err(missing()),
        });
    }
    if method == http::Method::DELETE {
        let Some(was) = queue.cancel(id, &scope) else {
            return Ok(Err(missing()));
        };
        // A running job's request is abandoned, but a provider may already be generating (and
        // billing) its answer: said as it is, not as "cancelled".
        let body = match was {
            JobStatus::Queued => {
                serde_json::json!({"id": id, "object": "twinroute.job", "status": "cancelled"})
            }
            JobStatus::Running => serde_json::json!({"id": id, "object": "twinroute.job",
                "status": "cancel_requested",
                "detail": "the job's run is abandoned and its answer will not be kept; a provider call already under way may still complete and be billed"}),
            _ => serde_json::json!({"id": id, "object": "twinroute.job", "status": "deleted"}),
        };
        ctx.status = 200;
        let mut h = ResponseHeader::build(200, Some(4))?;
        let body = Bytes::from(body.to_string());
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        h.insert_header(crate::serve::names::HDR_REQUEST_ID, ctx.request_id.as_str())?;
        down.write_header(Box::new(h), false).await?;
        down.write_body(Some(body), true).await?;
        return Ok(Ok(()));
    }
    Ok(Err(GatewayError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on a job; use GET or DELETE"),
    )))
}

/// Answer with a job: a waiting one as 202 and its JSON (with its location), a finished one as
/// the answer the provider gave, a failed one as the error in its client's format.
async fn write_found(
    down: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    id: &str,
    found: Found,
    respond_async: bool,
) -> Result<()> {
    let (status, headers, body) = match found {
        Found::Waiting(view) => {
            let mut h = vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("location".to_string(), job::location(id)),
                ("retry-after".to_string(), "1".to_string()),
            ];
            if respond_async {
                h.push(("preference-applied".into(), "respond-async".into()));
            }
            (202, h, Bytes::from(view))
        }
        Found::Succeeded {
            status,
            headers,
            body,
        } => (status, headers, body),
        Found::Failed { path, message } => {
            let family = Endpoint::from_path(&path).map_or(Family::OpenAi, Endpoint::family);
            let e = GatewayError::new(ErrorKind::JobExpired, message);
            return forward::send_error(down, ctx, e, family, vec![(JOB_HEADER, id.to_string())])
                .await;
        }
    };
    ctx.status = status;
    let mut h = ResponseHeader::build(status, Some(headers.len() + 4))?;
    for (k, v) in headers {
        h.append_header(k, v)?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    h.insert_header(JOB_HEADER, id)?;
    h.insert_header(crate::serve::names::HDR_REQUEST_ID, ctx.request_id.as_str())?;
    down.write_header(Box::new(h), false).await?;
    down.write_body(Some(body), true).await
}
