//! Idempotency as a request stage: claim the request's `Idempotency-Key` before the attempt
//! loop (lead, follow, or refuse); the leader settles after it. The store is
//! `serve::idempotency`.

use crate::decide::idempotency::{fingerprint, parse_key, storable, Fingerprint, ScopedKey};
use crate::observe::metrics::METRICS;
use crate::serve::idempotency::{follow, Claim, IdempotencyStore};
use crate::serve::names;
use crate::serve::recording::Recording;
use crate::serve::stage::{Before, Request, Stage};
use crate::wire::errors::{ErrorKind, GatewayError};
use async_trait::async_trait;

/// Claim the request's `Idempotency-Key` in `store`. `scoped` gives the client's scope and the
/// request's fingerprint, asked only when the request carries a key. A request none of whose
/// answer may be kept (`keep_nothing`: zero retention) is not keyed: `Ok(None)`, as for a request
/// without a key; `Err` when the key header is malformed or sent more than once.
pub async fn claim(
    store: &dyn IdempotencyStore,
    headers: &http::HeaderMap,
    keep_nothing: bool,
    scoped: impl FnOnce() -> ([u8; 32], Fingerprint),
) -> Result<Option<Claim>, GatewayError> {
    let mut values = headers
        .get_all(&crate::serve::names::IDEMPOTENCY_KEY)
        .iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        // Which one the client meant is not ours to guess: the first winning silently
        // would replay an answer for a key the client may not have sent last.
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "send one Idempotency-Key header, not several",
        ));
    }
    if keep_nothing {
        return Ok(None);
    }
    let key = match parse_key(value.as_bytes()) {
        Ok(k) => k.to_string(),
        Err(e) => return Err(GatewayError::new(ErrorKind::InvalidRequest, e.message())),
    };
    let (scope, fp) = scoped();
    Ok(Some(store.claim(&ScopedKey { scope, key }, fp).await))
}

/// `Idempotency-Key`, when `idempotency` is on and the request carries one.
pub struct IdempotencyStage;

#[async_trait]
impl Stage for IdempotencyStage {
    fn applies(&self, req: &Request<'_>) -> bool {
        req.shared.idempotency.is_some()
            && req
                .session
                .req_header()
                .headers
                .contains_key(&names::IDEMPOTENCY_KEY)
    }

    async fn before(&self, req: &mut Request<'_>) -> pingora::Result<Before> {
        let Some(store) = req.shared.idempotency.as_deref() else {
            return Ok(Before::Next);
        };
        let r = &*req;
        let headers = &r.session.req_header().headers;
        let keyed = claim(store, headers, r.plan.keep_nothing, || {
            let path = r.session.req_header().uri.path();
            let route = r.route.map(|r| r.name.as_str());
            let fp = fingerprint(path, route, &r.acceptable, r.body.bytes());
            (r.client_scope(), fp)
        })
        .await;
        Ok(match keyed {
            Ok(None) => Before::Next,
            Err(e) => Before::Refuse(e),
            Ok(Some(Claim::Conflict)) => Before::Refuse(GatewayError::new(
                ErrorKind::IdempotencyKeyReused,
                "this Idempotency-Key was already used with a different request body",
            )),
            Ok(Some(Claim::Follow(mut feed))) => {
                req.ctx.idempotent_replay = true;
                METRICS.idempotency_replays.inc();
                let stream = req.plan.endpoint.dialect();
                let id = &req.ctx.request_id;
                match follow(
                    &mut *feed,
                    req.session,
                    id,
                    stream,
                    req.plan.rate_headers.clone(),
                )
                .await?
                {
                    Some(status) => {
                        req.ctx.status = status;
                        Before::Answered
                    }
                    None => Before::Refuse(GatewayError::new(
                        ErrorKind::IdempotencyKeyInUse,
                        "the request holding this Idempotency-Key ended without an answer; retry",
                    )),
                }
            }
            Ok(Some(Claim::Lead(leader))) => {
                // The leader records the answer into its store, which holds it to its own bound.
                req.leader = Some(leader);
                Before::Next
            }
        })
    }

    /// The leader's answer ended: followers see the end, and the key keeps a complete success
    /// (`decide::idempotency::storable`; the store also lets go of one it could not hold
    /// whole) or lets go.
    async fn after(&self, req: &mut Request<'_>, _answer: Option<&Recording>, ok: bool) {
        let Some(leader) = req.leader.take() else {
            return;
        };
        leader.finish(ok);
        let keep = storable(req.ctx.status, ok && req.ctx.error.is_none());
        leader.settle(keep).await;
    }
}
