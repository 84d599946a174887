//! The prompt cache as a request stage: before the attempt loop, look the request up (a fresh
//! answer ends the request there; a stale one waits in the plan for stale-if-error); after it,
//! keep the answer the request's recording saw. The store is `serve::cache`.

use crate::decide::cache::{
    cacheable, freshness, key as cache_key, CacheKey, Directive, Freshness, KeyScope,
};
use crate::model::endpoint::{Endpoint, Family};
use crate::observe::access_log::RequestLog;
use crate::observe::metrics::METRICS;
use crate::serve::cache::{render, serve, AnswerCache, Cached, Origin, Rendered};
use crate::serve::downstream::Downstream;
use crate::serve::forward::Plan;
use crate::serve::recording::Recording;
use crate::serve::stage::{Before, Request, Stage};
use crate::wire::answer;
use crate::wire::body::RequestBody;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::SystemTime;

/// The prompt cache's part in one request.
enum Lookup {
    /// Not cached here (no policy, another endpoint, zero retention, `no-store`).
    Off,
    /// Answer from the cache.
    Hit(Rendered),
    /// Go upstream; keep the answer under this key (unless `no-store`).
    Miss(CacheState),
}

/// Where a missed request's answer is kept, and how.
pub struct CacheState {
    key: CacheKey,
    pub policy: crate::model::CachePolicy,
    family: Family,
}

/// Look the request up in the prompt cache: a fresh answer is a hit; a stale one is kept in
/// the plan for stale-if-error; `x-twinroute-cache` goes on the upstream answer.
async fn lookup(
    store: &dyn AnswerCache,
    headers: &http::HeaderMap,
    ctx: &mut RequestLog,
    body: &RequestBody,
    plan: &mut Plan,
    scope: &KeyScope<'_>,
) -> Lookup {
    let Some(policy) = plan.policy.cache else {
        return Lookup::Off;
    };
    let directive = Directive::parse(
        headers
            .get(http::header::CACHE_CONTROL)
            .map(|v| v.as_bytes()),
    );
    let outcome = |o: &'static str| METRICS.cache_lookups.with_label_values(&[o]).inc();
    if directive == Directive::NoStore {
        outcome("bypass");
        ctx.cache = Some("bypass");
        plan.cache_header = Some("bypass");
        return Lookup::Off;
    }
    // Parsed here only when routing did not need it; kept in the plan, so a continuation
    // does not parse it again.
    if plan.parsed_body.is_none() {
        match serde_json::from_slice::<serde_json::Value>(body.bytes()) {
            Ok(v) => plan.parsed_body = Some(v),
            Err(_) => return Lookup::Off,
        }
    }
    let Some(json) = plan.parsed_body.as_ref() else {
        return Lookup::Off;
    };
    let Some(key) = cache_key(json, scope) else {
        return Lookup::Off;
    };
    let family = plan.endpoint.family();
    if directive == Directive::Normal {
        if let Some(c) = store.get(&key).await {
            match freshness(c.age(), c.ttl, c.stale_if_error) {
                Freshness::Fresh => {
                    if let Some(r) = render(&c, body.stream) {
                        outcome("hit");
                        ctx.cache = Some("hit");
                        return Lookup::Hit(r);
                    }
                }
                Freshness::Stale => plan.stale = render(&c, body.stream),
                Freshness::Gone => {}
            }
        }
    }
    let label = if directive == Directive::Normal {
        "miss"
    } else {
        "bypass"
    };
    outcome(label);
    ctx.cache = Some(label);
    plan.cache_header = Some(label);
    Lookup::Miss(CacheState {
        key,
        policy,
        family,
    })
}

/// Keep the answer the recording saw, when it is a complete success with content (a stream
/// folded into the answer it stands for).
async fn keep(
    store: &dyn AnswerCache,
    ctx: &RequestLog,
    state: &CacheState,
    rec: &Recording,
    stream: bool,
) {
    if ctx.cache == Some("stale") || ctx.error.is_some() {
        return;
    }
    let Some(bytes) = rec.body_bytes() else {
        return;
    };
    if bytes.len() > state.policy.max_entry_bytes {
        return;
    }
    let answer = if stream {
        answer::fold(state.family, &bytes)
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let Some(answer) = answer else {
        return;
    };
    let c = answer::content(state.family, &answer);
    if !cacheable(
        rec.status().unwrap_or(0),
        rec.complete(),
        c.non_empty,
        c.tool_calls,
        state.policy.tool_calls,
    ) {
        return;
    }
    let weight = answer.to_string().len().min(u32::MAX as usize) as u32;
    let entry = Cached {
        answer,
        family: state.family,
        stored_at: SystemTime::now(),
        ttl: state.policy.ttl,
        stale_if_error: state.policy.stale_if_error,
        weight,
        origin: Origin {
            provider: ctx.provider.clone(),
            model: ctx.served_model.clone(),
            equivalent: ctx.degraded.clone(),
        },
    };
    store.put(state.key, Arc::new(entry)).await;
}

/// The prompt cache, for models and routes whose policy sets `cache`.
pub struct CacheStage;

#[async_trait]
impl Stage for CacheStage {
    /// A policy with `cache`, nothing kept from it, and an endpoint whose answers are cached.
    fn applies(&self, req: &Request<'_>) -> bool {
        req.plan.policy.cache.is_some()
            && !req.plan.keep_nothing
            && matches!(
                req.plan.endpoint,
                Endpoint::ChatCompletions | Endpoint::Messages
            )
    }

    async fn before(&self, req: &mut Request<'_>) -> pingora::Result<Before> {
        let scope = KeyScope {
            model: req.model_name,
            route: req.route.map(|r| r.name.as_str()),
            endpoint: req.plan.endpoint.as_str(),
            identity: req.client_scope(),
            acceptable: req.acceptable,
        };
        let store = &*req.shared.cache;
        let headers = &req.session.req_header().headers;
        let looked = lookup(store, headers, req.ctx, req.body, req.plan, &scope).await;
        match looked {
            Lookup::Hit(rendered) => {
                let mut down =
                    Downstream::new(req.session, None).with_headers(req.plan.rate_headers.clone());
                serve(&mut down, &rendered, "hit", &req.ctx.request_id).await?;
                req.ctx.status = 200;
                return Ok(Before::Answered);
            }
            Lookup::Miss(state) => {
                req.record(state.policy.max_entry_bytes);
                req.cache = Some(state);
            }
            Lookup::Off => {}
        }
        Ok(Before::Next)
    }

    async fn after(&self, req: &mut Request<'_>, answer: Option<&Recording>, _ok: bool) {
        if let (Some(state), Some(answer)) = (&req.cache, answer) {
            keep(&*req.shared.cache, req.ctx, state, answer, req.body.stream).await;
        }
    }
}
