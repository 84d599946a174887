//! The Pingora `ProxyHttp` implementation: parses and validates the client request, resolves
//! the model, asks `route` for candidates and hands them to `forward`'s attempt loop.
//!
//! Everything happens in `request_filter`, which answers the request itself and returns
//! `Ok(true)`: Pingora 0.9 can replay a request body to a second upstream only from a 64 KiB
//! buffer, and LLM prompts are larger, so twinroute owns the attempt loop (see
//! docs in PINGORA-NOTES and `forward`). Pingora still provides the listener, HTTP parsing,
//! upstream connection pools, TLS, and graceful shutdown.

use crate::decide::route::Acceptable;
use crate::model::endpoint::{Endpoint, Family};
use crate::observe::access_log::RequestLog;
use crate::observe::metrics::METRICS;
use crate::serve::background::{self, Queueing};
use crate::serve::downstream::Downstream;
use crate::serve::routing::{self, Routed};
use crate::serve::stage::{self, presented_token};
use crate::serve::state::Shared;
use crate::wire::body::RequestBody;
use crate::wire::errors::{truncate, ErrorKind, GatewayError};
use crate::wire::listing;
use crate::wire::translate;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    /// `GET /v1/twinroute/usage`: the presenting team's own quota.
    async fn team_usage(&self, session: &Session, cfg: &crate::model::Config) -> Handled {
        let team = presented_token(&session.req_header().headers).and_then(|t| cfg.team_of(t));
        match team {
            Some(id) => Handled::Json(
                stage::team::usage(&self.shared, &cfg.teams[id.0])
                    .await
                    .to_string()
                    .into_bytes(),
            ),
            None => Handled::Reject(GatewayError::new(
                ErrorKind::NotFound,
                "usage is per team: present a team's client token",
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
        if cfg.tokens_required()
            && background::job_run(&self.shared, &session.req_header().headers).is_none()
        {
            let presented = presented_token(&session.req_header().headers);
            // A token of `client_tokens_env` (no team, no limits) or of a team.
            if !presented.is_some_and(|p| {
                crate::model::provider::presented_matches(p, &cfg.client_tokens)
                    || cfg.team_of(p).is_some()
            }) {
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
        if path == "/v1/twinroute/usage" && session.req_header().method == http::Method::GET {
            return Ok(self.team_usage(session, cfg).await);
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
        let (endpoint, mut body) = match self.read_request(session, ctx, cfg, &path).await? {
            Ok(read) => read,
            Err(h) => return Ok(h),
        };

        let Routed {
            mut plan,
            route,
            model_name,
            acceptable,
            region,
        } = match routing::route(&self.shared, session, ctx, &rt, endpoint, &body, &path) {
            Ok(r) => r,
            Err(e) => return Ok(Handled::Reject(e)),
        };
        let acceptable = Acceptable {
            region: region.as_deref(),
            ..acceptable
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
            model_name,
            acceptable,
            cache: None,
            leader: None,
            record_bytes: None,
            team_hold: None,
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

impl Proxy {
    /// The request as twinroute serves it: a known endpoint, POST, an uncompressed body read
    /// whole within `client_body_timeout`, and the fields routing reads from it.
    async fn read_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestLog,
        cfg: &crate::model::Config,
        path: &str,
    ) -> Result<std::result::Result<(Endpoint, RequestBody), Handled>> {
        let Some(endpoint) = Endpoint::from_path(path) else {
            return Ok(Err(Handled::Reject(GatewayError::new(
                ErrorKind::NotFound,
                format!("unknown path {path:?}; twinroute serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses and /v1/messages"),
            ))));
        };
        ctx.endpoint = endpoint.as_str();
        if session.req_header().method != http::Method::POST {
            return Ok(Err(Handled::Reject(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{} is not allowed on {path}; use POST",
                    session.req_header().method
                ),
            ))));
        }
        if let Some(enc) = header_str(session, &http::header::CONTENT_ENCODING) {
            if !enc.eq_ignore_ascii_case("identity") {
                return Ok(Err(Handled::Reject(GatewayError::new(
                    ErrorKind::UnsupportedMediaType,
                    format!("Content-Encoding {enc:?} is not supported; send the JSON body uncompressed"),
                ))));
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
                Err(e) => return Ok(Err(Handled::Reject(e))),
            },
            Err(_) => {
                return Ok(Err(Handled::Reject(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} ms",
                        cfg.client_body_timeout.as_millis()
                    ),
                ))))
            }
        };
        let body = match RequestBody::parse(raw) {
            Ok(b) => b,
            Err(e) => {
                return Ok(Err(Handled::Reject(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    e.message(),
                ))))
            }
        };
        ctx.requested_model = Some(body.model.clone());
        ctx.stream = body.stream;
        Ok(Ok((endpoint, body)))
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
        if let Some(team) = ctx.team.as_deref() {
            METRICS
                .team_requests
                .with_label_values(&[team, model, status])
                .inc();
        }
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
