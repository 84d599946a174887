//! Request features around the attempt loop, as an ordered list of stages (River's request
//! modifiers are the model). `serve::proxy` builds a `Request` once routing has a plan, runs
//! each stage's `before` in order (a stage may answer the request itself: a cache hit, an
//! idempotent replay; or refuse it), goes upstream unless one did, then runs each `after` in
//! reverse order with the answer as written. A stage that has nothing to do for a request
//! (`applies` says so, from config and headers, without awaiting) costs that request nothing.
//!
//! A new feature (team limits, budgets) is a new module here and a place in `STAGES`; its state
//! sits behind an async store trait in serve/ (`serve::cache`, `serve::idempotency`), so a
//! shared store fills it without touching the stage.

pub mod cache;
pub mod idempotency;
pub mod team;

use crate::decide::idempotency::scope;
use crate::decide::route::Acceptable;
use crate::model::{Config, Route};
use crate::observe::access_log::RequestLog;
use crate::serve::background::{self, Queueing};
use crate::serve::downstream::{Both, Downstream, Tap};
use crate::serve::forward::Plan;
use crate::serve::idempotency::Leader;
use crate::serve::recording::Recording;
use crate::serve::state::{Generation, Shared};
use crate::wire::body::RequestBody;
use crate::wire::errors::GatewayError;
use async_trait::async_trait;
use pingora::proxy::Session;

/// The stages, in the order their `before` runs.
pub static STAGES: [&dyn Stage; 3] = [
    &team::TeamStage,
    &cache::CacheStage,
    &idempotency::IdempotencyStage,
];

/// What a stage decided before the attempt loop.
pub enum Before {
    /// On to the next stage, and then upstream.
    Next,
    /// The stage wrote the whole answer itself: nothing goes upstream, no later stage runs.
    Answered,
    /// Refuse the request with this error.
    Refuse(GatewayError),
}

#[async_trait]
pub trait Stage: Sync {
    /// Whether this request involves the stage at all (no await, no allocation).
    fn applies(&self, req: &Request<'_>) -> bool;
    /// Before the attempt loop.
    async fn before(&self, req: &mut Request<'_>) -> pingora::Result<Before>;
    /// After the answer was written (`answer`: the request's recording of it, finished, when a
    /// stage asked for one; `ok`: the executor reported no error), for a request whose `before`
    /// said `Next`.
    async fn after(&self, req: &mut Request<'_>, answer: Option<&Recording>, ok: bool);
}

/// One request as the stages see it: what routing decided, and what the stages leave for the
/// way upstream and for their own `after`.
pub struct Request<'a> {
    pub shared: &'a Shared,
    pub cfg: &'a Config,
    pub session: &'a mut Session,
    pub ctx: &'a mut RequestLog,
    pub body: &'a RequestBody,
    pub plan: &'a mut Plan,
    pub route: Option<&'a Route>,
    /// The canonical model's name (the cache keys on it, not on the alias asked for).
    pub model_name: &'a str,
    pub acceptable: Acceptable<'a>,
    /// Where the cache stage keeps a missed answer.
    pub cache: Option<cache::CacheState>,
    /// The idempotency leader, when this request leads its key.
    pub leader: Option<Box<dyn Leader>>,
    /// Bound of the request's own recording of its answer (`None`: nothing records it).
    pub record_bytes: Option<usize>,
    /// What the team stage reserved against the team's budget.
    pub team_hold: Option<team::TeamHold>,
}

impl Request<'_> {
    /// The client's identity for scoping keys: its token (keyed under the installation's
    /// secret) when client tokens are on. The drain's run of a job is its client's request
    /// again: it carries the scope the job was queued under, never one shared by every job.
    pub fn client_scope(&self) -> [u8; 32] {
        client_scope(self.shared, self.session, self.cfg)
    }

    /// Ask for a recording of the answer of at most `bytes` (the largest bound asked wins:
    /// each store also holds to its own).
    pub fn record(&mut self, bytes: usize) {
        self.record_bytes = Some(self.record_bytes.map_or(bytes, |b| b.max(bytes)));
    }
}

/// `Request::client_scope`, for a request not (yet) in stages.
pub fn client_scope(shared: &Shared, session: &Session, cfg: &Config) -> [u8; 32] {
    let h = &session.req_header().headers;
    if let Some(id) = background::job_run(shared, h) {
        if let Some(s) = shared.queue.as_ref().and_then(|q| q.scope_of(&id)) {
            return s;
        }
    }
    let token = cfg.tokens_required().then(|| presented_token(h)).flatten();
    // The fleet's secret once Redis gave it (`serve::fleet`): a client is the same client on
    // every replica, so its kept answers are found there too.
    let secret = shared.fleet_scope.get().unwrap_or(&shared.scope_secret);
    scope(secret, token)
}

/// The client token a request presents: `Authorization: Bearer`, else `x-api-key`.
pub fn presented_token(h: &http::HeaderMap) -> Option<&[u8]> {
    h.get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .or_else(|| h.get("x-api-key").map(|v| v.as_bytes()))
}

/// Run the stages around the way upstream: each `before` in order, then (unless one answered or
/// refused) the executor, then each `after` in reverse. `Err`: a stage refused the request;
/// else what writing its answer came to.
pub async fn run(
    req: &mut Request<'_>,
    rt: &Generation,
    queueing: &Queueing,
) -> Result<pingora::Result<()>, GatewayError> {
    let mut ran = [false; STAGES.len()];
    for (i, stage) in STAGES.iter().enumerate() {
        if !stage.applies(req) {
            continue;
        }
        let end = match stage.before(req).await {
            Ok(Before::Next) => {
                ran[i] = true;
                continue;
            }
            Ok(Before::Answered) => Ok(Ok(())),
            Ok(Before::Refuse(e)) => Err(e),
            Err(e) => Ok(Err(e)),
        };
        // A later stage answered or refused: the earlier ones that went on still close (a
        // budget reservation is released), with no answer of their own.
        let answered = matches!(end, Ok(Ok(())));
        for (j, earlier) in STAGES.iter().enumerate().take(i).rev() {
            if ran[j] {
                earlier.after(req, None, answered).await;
            }
        }
        return end;
    }
    let answer = req.record_bytes.map(Recording::new);
    let result = upstream(req, rt, queueing, answer.as_ref()).await;
    if let Some(a) = &answer {
        a.finish(result.is_ok());
    }
    for (i, stage) in STAGES.iter().enumerate().rev() {
        if ran[i] {
            stage.after(req, answer.as_ref(), result.is_ok()).await;
        }
    }
    Ok(result)
}

/// Go upstream for the answer (or queue the request: `serve::background`), the answer written
/// through the request's recording and its idempotency leader when it has them.
async fn upstream(
    req: &mut Request<'_>,
    rt: &Generation,
    queueing: &Queueing,
    answer: Option<&Recording>,
) -> pingora::Result<()> {
    let both;
    let tap: Option<&dyn Tap> = match (answer, &req.leader) {
        (Some(a), Some(l)) => {
            both = Both(a, &**l);
            Some(&both)
        }
        (Some(a), None) => Some(a),
        (None, Some(l)) => Some(&**l),
        (None, None) => None,
    };
    let extra = std::mem::take(&mut req.plan.rate_headers);
    let mut down = Downstream::new(req.session, tap).with_headers(extra);
    let result = background::execute(
        req.shared, rt, &mut down, req.ctx, req.plan, req.body, queueing,
    )
    .await;
    req.ctx.client_left |= down.client_gone();
    result
}
