//! The Pingora `ProxyHttp` implementation: parses and validates the client request, resolves
//! the model, asks `route` for candidates and hands them to `forward`'s attempt loop.
//!
//! Everything happens in `request_filter`, which answers the request itself and returns
//! `Ok(true)`: Pingora 0.9 can replay a request body to a second upstream only from a 64 KiB
//! buffer, and LLM prompts are larger, so twinroute owns the attempt loop (see
//! docs in PINGORA-NOTES and `forward`). Pingora still provides the listener, HTTP parsing,
//! upstream connection pools, TLS, and graceful shutdown.

use crate::decide::route::{self, Acceptable, RequestConstraints, RouteInput};
use crate::model::endpoint::{Endpoint, Family};
use crate::model::Strategy;
use crate::observe::access_log::RequestLog;
use crate::observe::metrics::METRICS;
use crate::serve::background::{self, Queueing};
use crate::serve::downstream::Downstream;
use crate::serve::forward;
use crate::serve::stage::{self, presented_token};
use crate::serve::state::Shared;
use crate::wire::body::RequestBody;
use crate::wire::errors::{ErrorKind, GatewayError};
use crate::wire::listing;
use crate::wire::translate::{self, Direction};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::serve::names;
pub use crate::serve::names::{
    HDR_ALLOW_EQUIVALENTS, HDR_PROVIDER, HDR_REGION, HDR_REQUEST_ID, HDR_REQUIRE_PARAMS, HDR_ROUTE,
    HDR_STRATEGY,
};

/// How long a client may pause while sending its body.
const CLIENT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Proxy {
    pub shared: Arc<Shared>,
    request_seq: AtomicU64,
    id_prefix: u32,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Proxy {
        Proxy {
            shared,
            request_seq: AtomicU64::new(0),
            id_prefix: rand::random(),
        }
    }
}

/// Outcome of `handle`: an error twinroute answers itself, a JSON answer of its own (the model
/// listing), or done (response already written).
enum Handled {
    Reject(GatewayError),
    Json(Vec<u8>),
    Done,
}

/// A request id: the process's prefix and the request's sequence number, 8 hex digits each
/// (`format!`'s machinery cost ~1 % of a small request here).
fn request_id(prefix: u32, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(16);
    for v in [u64::from(prefix), n] {
        // At least 8 digits, more when the number needs them (as `{:08x}`).
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(8);
        for shift in (0..digits).rev() {
            id.push(char::from(HEX[((v >> (shift * 4)) & 0xf) as usize]));
        }
    }
    id
}

/// An `x-twinroute-*` control header's text. One twinroute cannot read is refused (400), never
/// ignored: a pin that silently fell back to failover would send the request where the client
/// said it must not go. Its value is not echoed (clients have pasted keys into headers).
fn control<'a>(
    session: &'a Session,
    name: &http::HeaderName,
) -> std::result::Result<Option<&'a str>, GatewayError> {
    match session.req_header().headers.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) => Ok(Some(s.trim())),
            Err(_) => Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!("{name} must be visible ASCII text"),
            )),
        },
    }
}

fn header_str<'a>(session: &'a Session, name: &http::HeaderName) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

async fn read_body(
    session: &mut Session,
    limit: usize,
) -> Result<std::result::Result<Bytes, GatewayError>> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds max_body_bytes ({limit} bytes)"),
        )
    };
    let announced =
        header_str(session, &http::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Ok(Err(too_large()));
    }
    if session
        .req_header()
        .headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await?;
    }
    session.set_read_timeout(Some(CLIENT_BODY_READ_TIMEOUT));
    // A body that arrives in one read is kept as it came (no copy); one in several is gathered
    // into a buffer sized once from Content-Length (within the limit), not grown by doubling.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = session.read_request_body().await? {
        total += chunk.len();
        if total > limit {
            return Ok(Err(too_large()));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            held => {
                if buf.is_empty() {
                    let expected = announced.map_or(0, |n| n as usize).min(limit);
                    buf.reserve(expected.max(total));
                }
                if let Some(h) = held {
                    buf.extend_from_slice(&h);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(Ok(first.unwrap_or_else(|| buf.freeze())))
}

/// Counts a request as active for as long as it is served.
struct ActiveGuard<'a> {
    shared: &'a Shared,
    /// Active requests including this one, when it entered.
    count: usize,
}

impl<'a> ActiveGuard<'a> {
    fn enter(shared: &'a Shared) -> ActiveGuard<'a> {
        let count = shared.active.fetch_add(1, Ordering::AcqRel) + 1;
        ActiveGuard { shared, count }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Constant-time membership: the comparison does not reveal how much of a token matched.
fn token_ok(presented: &[u8], tokens: &[crate::model::Secret]) -> bool {
    use subtle::ConstantTimeEq;
    let mut ok = subtle::Choice::from(0u8);
    for t in tokens {
        ok |= presented.ct_eq(t.expose().as_bytes());
    }
    ok.into()
}

impl Proxy {
    /// `GET /v1/models` (and `/v1/models/{id}`): the catalog's names, in Anthropic's shape when
    /// the request carries `anthropic-version` (as the Anthropic SDK sends), else OpenAI's.
    fn models(&self, session: &Session, cfg: &crate::model::Config, rest: &str) -> Handled {
        let family = if session
            .req_header()
            .headers
            .contains_key("anthropic-version")
        {
            Family::Anthropic
        } else {
            Family::OpenAi
        };
        let names: Vec<&str> = cfg
            .catalog
            .models()
            .iter()
            .flat_map(|m| {
                std::iter::once(m.name.as_str()).chain(m.aliases.iter().map(|a| a.as_str()))
            })
            .collect();
        match rest.strip_prefix('/') {
            None if rest.is_empty() => Handled::Json(listing::catalog_listing(family, &names)),
            Some(id) if names.contains(&id) => {
                Handled::Json(listing::model_entry(family, id).to_string().into_bytes())
            }
            _ => Handled::Reject(GatewayError::new(
                ErrorKind::ModelNotFound,
                format!(
                    "model {:?} is not in twinroute's model map",
                    truncate(rest.trim_start_matches('/'))
                ),
            )),
        }
    }

    /// Checks made before anything is read: concurrency limit and client tokens.
    fn admit(&self, session: &Session, active: usize) -> Option<GatewayError> {
        let rt = self.shared.runtime.load();
        let cfg = &rt.config;
        if active > cfg.max_concurrent_requests {
            let mut e = GatewayError::new(
                ErrorKind::Overloaded,
                format!(
                    "twinroute is serving its maximum of {} concurrent requests; retry shortly",
                    cfg.max_concurrent_requests
                ),
            );
            e.retry_after_s = Some(1);
            return Some(e);
        }
        // The drain's own runs carry this process's job token instead of a client's.
        if !cfg.client_tokens.is_empty()
            && background::job_run(&self.shared, &session.req_header().headers).is_none()
        {
            let presented = presented_token(&session.req_header().headers);
            if !presented.is_some_and(|p| token_ok(p, &cfg.client_tokens)) {
                return Some(GatewayError::new(
                    ErrorKind::Unauthorized,
                    "missing or invalid twinroute client token (Authorization: Bearer or x-api-key)",
                ));
            }
        }
        None
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestLog) -> Result<Handled> {
        let rt = self.shared.runtime.load_full();
        let cfg = &rt.config;
        let path = session.req_header().uri.path().to_string();
        if let Some(rest) = path.trim_end_matches('/').strip_prefix("/v1/models") {
            if session.req_header().method == http::Method::GET {
                return Ok(self.models(session, cfg, rest));
            }
        }
        if let Some(id) = crate::wire::job::id_from_path(&path) {
            let scope = stage::client_scope(&self.shared, session, cfg);
            let mut down = Downstream::new(session, None);
            return Ok(
                match background::resource(&self.shared, &mut down, ctx, id, scope).await? {
                    Ok(()) => Handled::Done,
                    Err(e) => Handled::Reject(e),
                },
            );
        }
        let Some(endpoint) = Endpoint::from_path(&path) else {
            return Ok(Handled::Reject(GatewayError::new(
                ErrorKind::NotFound,
                format!("unknown path {path:?}; twinroute serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses and /v1/messages"),
            )));
        };
        ctx.endpoint = endpoint.as_str();
        if session.req_header().method != http::Method::POST {
            return Ok(Handled::Reject(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{} is not allowed on {path}; use POST",
                    session.req_header().method
                ),
            )));
        }
        if let Some(enc) = header_str(session, &http::header::CONTENT_ENCODING) {
            if !enc.eq_ignore_ascii_case("identity") {
                return Ok(Handled::Reject(GatewayError::new(
                    ErrorKind::UnsupportedMediaType,
                    format!("Content-Encoding {enc:?} is not supported; send the JSON body uncompressed"),
                )));
            }
        }
        // The whole body within one deadline: a client trickling bytes is cut off, not waited on.
        let raw = match pingora::prelude::fast_timeout::fast_timeout(
            cfg.client_body_timeout,
            read_body(session, cfg.max_body_bytes),
        )
        .await
        {
            Ok(read) => match read? {
                Ok(b) => b,
                Err(e) => return Ok(Handled::Reject(e)),
            },
            Err(_) => {
                return Ok(Handled::Reject(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} ms",
                        cfg.client_body_timeout.as_millis()
                    ),
                )))
            }
        };
        let mut body = match RequestBody::parse(raw) {
            Ok(b) => b,
            Err(e) => {
                return Ok(Handled::Reject(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    e.message(),
                )))
            }
        };
        ctx.requested_model = Some(body.model.clone());
        ctx.stream = body.stream;

        let (mut constraints, require_params) = match constraints_of(session, cfg, &body) {
            Ok(c) => c,
            Err(e) => return Ok(Handled::Reject(e)),
        };
        let route = cfg.route_for(&path, &session.req_header().headers);
        if route.is_none() {
            let asked = match control(session, &names::ROUTE) {
                Ok(v) => v,
                Err(e) => return Ok(Handled::Reject(e)),
            };
            if let Some(asked) = asked {
                let known: Vec<&str> = cfg
                    .routes
                    .iter()
                    .filter(|r| r.headers.iter().any(|(k, _)| *k == names::ROUTE))
                    .map(|r| r.name.as_str())
                    .collect();
                if !known.is_empty() {
                    return Ok(Handled::Reject(GatewayError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "{HDR_ROUTE}: {:?} matches no route for {path}; routes keyed on it: {}",
                            truncate(asked),
                            known.join(", ")
                        ),
                    )));
                }
            }
        }
        ctx.route = route.map(|r| r.name.clone());

        let Some(model_id) = cfg.catalog.resolve(&body.model) else {
            return Ok(Handled::Reject(GatewayError::new(
                ErrorKind::ModelNotFound,
                format!(
                    "model {:?} is not in twinroute's model map",
                    truncate(&body.model)
                ),
            )));
        };
        let model = cfg.catalog.model(model_id);
        ctx.model = Some(model.name.clone());
        let policy = cfg.policy_for(route, model_id);
        // Only the offerings (and providers) this request could use: the model's and its
        // equivalents'.
        let offerings = model.offerings.iter().chain(
            model
                .equivalents
                .iter()
                .flat_map(|e| cfg.catalog.model(e.id).offerings.iter()),
        );
        let relevant = offerings.clone().map(|o| o.provider);
        // Translation: the body is parsed only when a provider this request could use speaks
        // the other wire format; same-format traffic keeps the splice path untouched.
        let mut json = None;
        let mut include_usage = false;
        // An offering that declares it lacks a feature also needs the body looked at.
        let lacks_declared = offerings.clone().any(|o| !o.lacks.is_empty());
        if let Some(dir) = Direction::from_client(endpoint) {
            let reachable_only_translated = relevant
                .clone()
                .any(|p| endpoint.rebuilt_for(cfg.providers[p].api));
            if reachable_only_translated || lacks_declared {
                match serde_json::from_slice::<serde_json::Value>(body.bytes()) {
                    Ok(v) => {
                        if reachable_only_translated {
                            constraints.untranslatable = translate::untranslatable(dir, &v);
                        }
                        constraints.features = translate::features(&v);
                        include_usage = v.pointer("/stream_options/include_usage")
                            == Some(&serde_json::Value::Bool(true));
                        json = Some(v);
                    }
                    Err(e) => {
                        return Ok(Handled::Reject(GatewayError::new(
                            ErrorKind::InvalidRequest,
                            format!("request body is not valid JSON: {e}"),
                        )))
                    }
                }
            }
        }
        let health = rt.health.routing_snapshot(Instant::now(), relevant);
        let candidates = match route::candidates(&RouteInput {
            model: model_id,
            catalog: &cfg.catalog,
            providers: &cfg.providers,
            endpoint,
            policy,
            constraints: &constraints,
            health: &health,
        }) {
            Ok(c) => c,
            Err(e) => {
                // Missing credentials are the deployment's problem, not the request's.
                let kind = match e {
                    route::NoRoute::NoCredentials(_) => ErrorKind::UpstreamFailed,
                    _ => ErrorKind::InvalidRequest,
                };
                return Ok(Handled::Reject(GatewayError::new(
                    kind,
                    e.message(&model.name, endpoint),
                )));
            }
        };
        note_skipped(ctx, cfg, model, &candidates, &health);
        let allow_equivalents = constraints
            .allow_equivalents
            .unwrap_or(policy.allow_equivalents);
        let acceptable = Acceptable {
            allow_equivalents,
            pin: constraints.pin.map(|p| cfg.providers[p].name.as_str()),
            region: constraints.region.as_deref(),
            require_params,
        };
        // Nothing of a request a zero-retention provider could answer is kept anywhere: decided
        // from every offering it may use, whatever their health now, not from the route alone.
        // Asked only when a store could be in play (the cache, a key, the queue): a request none
        // of them would touch pays nothing for the question.
        let stores_in_play = policy.cache.is_some()
            || self.shared.queue.is_some()
            || (self.shared.idempotency.is_some()
                && session
                    .req_header()
                    .headers
                    .contains_key(&names::IDEMPOTENCY_KEY));
        let keep_nothing = route.is_some_and(|r| r.zero_retention)
            || stores_in_play
                && route::may_reach_zero_retention(
                    &cfg.catalog,
                    &cfg.providers,
                    model_id,
                    constraints.pin,
                    allow_equivalents,
                );
        let mut plan = forward::Plan {
            endpoint,
            model: model_id,
            candidates,
            policy: policy.clone(),
            pinned: constraints.pin.is_some(),
            region: constraints.region.clone(),
            zero_retention: route.is_some_and(|r| r.zero_retention),
            keep_nothing,
            parsed_body: json,
            include_usage,
            continuation: None,
            cache_header: None,
            stale: None,
            queue_on_fail: false,
        };
        let queueing =
            match background::queueing(&self.shared, &session.req_header().headers, &plan, || {
                stage::client_scope(&self.shared, session, cfg)
            }) {
                Ok(q) => q,
                Err(e) => return Ok(Handled::Reject(e)),
            };
        plan.queue_on_fail = !matches!(queueing, Queueing::No);
        if let Queueing::Run(id) = &queueing {
            ctx.queued = Some(id.clone());
        }
        let mut req = stage::Request {
            shared: &self.shared,
            cfg,
            session,
            ctx,
            body: &body,
            plan: &mut plan,
            route,
            model_name: &model.name,
            acceptable,
            cache: None,
            leader: None,
            record_bytes: None,
        };
        let result = match stage::run(&mut req, &rt, &queueing).await {
            Ok(result) => result,
            Err(refusal) => return Ok(Handled::Reject(refusal)),
        };
        if ctx.zero_retention {
            body.wipe();
            if let Some(v) = plan.parsed_body.as_mut() {
                translate::wipe(v);
            }
        }
        result?;
        Ok(Handled::Done)
    }
}

/// The request's control headers as routing constraints (`x-twinroute-provider`, `-strategy`,
/// `-region`, `-allow-equivalents`, `-require-parameters`), with what routing needs from the
/// body; and whether the client asked that no parameter be dropped. A header twinroute cannot
/// read, or a value it does not know, is the client's error.
fn constraints_of(
    session: &Session,
    cfg: &crate::model::Config,
    body: &RequestBody,
) -> std::result::Result<(RequestConstraints, bool), GatewayError> {
    let mut constraints = RequestConstraints::default();
    let mut require_params: Option<bool> = None;
    let provider = control(session, &names::PROVIDER)?;
    if let Some(name) = provider {
        let name = name.to_string();
        match cfg.provider_by_name(&name) {
            Some(p) => constraints.pin = Some(p.id),
            None => {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    // The value is not echoed: clients have pasted keys into headers before.
                    format!(
                        "{HDR_PROVIDER} names no configured provider; configured: {}",
                        cfg.providers
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    let strategy = control(session, &names::STRATEGY)?;
    if let Some(s) = strategy {
        match Strategy::parse(s) {
            Some(s) => constraints.strategy = Some(s),
            None => {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    format!("{HDR_STRATEGY}: unknown strategy {:?} (ordered, prefer_cost, prefer_latency or weighted)", truncate(s)),
                ))
            }
        }
    }
    if let Some(r) = control(session, &names::REGION)? {
        constraints.region = Some(r.to_string());
    }
    for (name, slot) in [
        (names::ALLOW_EQUIVALENTS, &mut constraints.allow_equivalents),
        (names::REQUIRE_PARAMS, &mut require_params),
    ] {
        let value = control(session, &name)?;
        if let Some(v) = value {
            *slot = Some(match parse_bool(v) {
                Some(b) => b,
                None => {
                    return Err(GatewayError::new(
                        ErrorKind::InvalidRequest,
                        format!("{name} must be true or false"),
                    ))
                }
            });
        }
    }
    if require_params == Some(true) {
        constraints.required_params = Some(body.param_names());
    }
    constraints.needed_tokens = Some(body.estimated_tokens());
    constraints.draw = rand::random::<f64>();
    Ok((constraints, require_params == Some(true)))
}

/// Record in the access line which twins health kept out, with the same reason names as
/// failovers: `provider:reason` when its endpoints are out, `provider/model:reason` when only
/// that model is.
fn note_skipped(
    ctx: &mut RequestLog,
    cfg: &crate::model::Config,
    model: &crate::model::catalog::Model,
    candidates: &[route::Candidate],
    health: &route::HealthSnapshot,
) {
    for o in &model.offerings {
        if !candidates.iter().any(|c| c.provider == o.provider) {
            if let Some(skip) = health.skip(o.provider, &o.model_id) {
                let name = &cfg.providers[o.provider].name;
                ctx.skipped.push(match skip.grain {
                    route::Grain::Endpoint => format!("{name}:{}", skip.reason.as_str()),
                    route::Grain::Offering => {
                        format!("{name}/{}:{}", o.model_id, skip.reason.as_str())
                    }
                });
            }
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn family_of(session: &Session) -> Family {
    Endpoint::from_path(session.req_header().uri.path())
        .map(Endpoint::family)
        .unwrap_or(Family::OpenAi)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestLog;

    fn new_ctx(&self) -> RequestLog {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        RequestLog::new(request_id(self.id_prefix, n))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestLog) -> Result<bool> {
        let in_flight = crate::observe::metrics::in_flight_all();
        in_flight.inc();
        let active = ActiveGuard::enter(&self.shared);
        self.shared
            .data_plane
            .get_or_init(tokio::runtime::Handle::current);
        let result = match self.admit(session, active.count) {
            Some(reject) => Ok(Handled::Reject(reject)),
            None => self.handle(session, ctx).await,
        };
        drop(active);
        in_flight.dec();
        match result? {
            Handled::Done => Ok(true),
            Handled::Json(body) => {
                ctx.status = 200;
                let mut h = pingora::http::ResponseHeader::build(200, Some(3))?;
                h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
                h.insert_header(HDR_REQUEST_ID, ctx.request_id.as_str())?;
                let mut down = Downstream::new(session, None);
                down.write_header(Box::new(h), false).await?;
                down.write_body(Some(Bytes::from(body)), true).await?;
                Ok(true)
            }
            Handled::Reject(e) => {
                ctx.status = e.kind.status();
                ctx.error = Some(e.message.clone());
                // The body may be unread (413, early rejections): the connection cannot be reused.
                session.set_keepalive(None);
                let id = ctx.request_id.clone();
                let mut extra = vec![(HDR_REQUEST_ID, id)];
                // twinroute itself at its limit is no answer to a job: the drain tries it again.
                if e.kind == ErrorKind::Overloaded
                    && background::job_run(&self.shared, &session.req_header().headers).is_some()
                {
                    extra.push((crate::serve::queue::NO_CAPACITY_HEADER, "retry".into()));
                }
                let family = family_of(session);
                Downstream::new(session, None)
                    .write_error(&e, family, &extra)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestLog,
    ) -> Result<Box<HttpPeer>> {
        // Never reached: request_filter answers every request.
        Error::e_explain(
            ErrorType::InternalError,
            "twinroute forwards from request_filter",
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestLog,
    ) -> pingora::proxy::FailToProxy {
        // Only downstream I/O errors and Pingora-level failures get here. Once a response has
        // started nothing more can be said; otherwise answer in the client's API format.
        let client_gone = matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        ) && e.esource() == &ErrorSource::Downstream;
        let code = if session.response_written().is_some() || client_gone {
            0
        } else {
            let g = match e.etype() {
                ErrorType::ReadTimedout => GatewayError::new(
                    ErrorKind::InvalidRequest,
                    "timed out reading the request body",
                ),
                ErrorType::InvalidHTTPHeader => {
                    GatewayError::new(ErrorKind::InvalidRequest, "malformed request")
                }
                _ => GatewayError::new(ErrorKind::InvalidRequest, "could not read the request"),
            };
            let family = family_of(session);
            let _ = Downstream::new(session, None)
                .write_error(&g, family, &[])
                .await;
            g.kind.status()
        };
        if ctx.status == 0 {
            ctx.status = code;
        }
        ctx.client_left |= client_gone;
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestLog, e: &Error) -> bool {
        // A client hanging up is not an error of ours; the access log records it.
        e.esource() == &ErrorSource::Downstream
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestLog) {
        ctx.latency_ms = ctx.start.elapsed().as_millis() as u64;
        let fmt = self.shared.runtime.load().config.log_format;
        ctx.emit(fmt);
        let model = ctx.model.as_deref().unwrap_or("");
        let provider = ctx.provider.as_deref().unwrap_or("");
        // `StatusCode::as_str` is a static table: no allocation per request.
        let code = http::StatusCode::from_u16(ctx.status).ok();
        let status = code.as_ref().map_or("0", |s| s.as_str());
        METRICS
            .requests
            .with_label_values(&[model, provider, status])
            .inc();
        if !model.is_empty() {
            METRICS
                .request_duration
                .with_label_values(&[model, provider])
                .observe(ctx.start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_read_as_the_zero_padded_hex_they_replace() {
        for (p, n) in [
            (0u32, 0u64),
            (0xdead_beef, 1),
            (u32::MAX, 0xffff_ffff),
            (7, 0x1_0000_0000),
            (1, u64::MAX),
        ] {
            assert_eq!(super::request_id(p, n), format!("{p:08x}{n:08x}"));
        }
    }
}
