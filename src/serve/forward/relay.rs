//! The answer back to the client: its header (twinroute's own on top), then the body through one
//! pipeline (Bedrock frames, the event guard, translation, the tracking or splicing stage) with
//! a stall watch; a whole answer read and re-shaped when it must be (translation, an error).

use crate::decide::outcome::FailoverReason;
use crate::model::catalog::Price;
use crate::model::endpoint::{Dialect, Family};
use crate::model::error::{ErrorKind, GatewayError};
use crate::model::Provider;
use crate::observe::access_log::RequestLog;
use crate::observe::metrics::METRICS;
use crate::serve::downstream::Downstream;
use crate::serve::names;
use crate::serve::state::Shared;
use crate::wire::request::header_value;
use crate::wire::sse::stream_error_event;
use crate::wire::stream_event::{EventGuard, Splice, StreamEnd, StreamTrack};
use crate::wire::translate::{self, Direction};
use crate::wire::usage::UsageScanner;
use crate::wire::vendor;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use std::time::Duration;

use super::exchange::pool_again;

/// Response headers that describe the upstream hop, not the answer.
pub(super) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "trailer",
    "te",
];

pub(super) const CHUNKED: http::HeaderValue = http::HeaderValue::from_static("chunked");

/// What answered: for headers, usage accounting and cost.
pub(super) struct Served<'a> {
    pub(super) model_name: &'a str,
    pub(super) model_id: &'a str,
    pub(super) price: Option<Price>,
    /// `canonical;grade=g` when a closest equivalent answered.
    pub(super) equivalent: Option<String>,
    pub(super) dropped: &'a [&'a str],
    /// `x-twinroute-attempts`.
    pub(super) attempts: &'a str,
    /// The client's wire family, for its errors.
    pub(super) family: Family,
    /// The client's stream (for the error event of a broken one) and the upstream's (how its
    /// events end).
    pub(super) client_stream: Dialect,
    pub(super) upstream_stream: Dialect,
    /// The answer is translated into the client's format on its way.
    pub(super) translation: Option<Direction>,
    /// OpenAI client of a translated stream: end it with a usage chunk.
    pub(super) include_usage: bool,
    /// Longest silence of the stream once committed.
    pub(super) stream_idle: Duration,
    /// Tell health the committed answer broke (stall, cut) after all.
    pub(super) broken: &'a (dyn Fn(FailoverReason) + Sync),
    /// The provider a broken stream's error event names: this one, or for a continuation the
    /// one whose stream broke first.
    pub(super) origin: &'a str,
    /// `x-twinroute-cache` for the answer, when the prompt cache is on.
    pub(super) cache_header: Option<&'static str>,
    /// Largest upstream stream event taken (`max_stream_event_bytes`).
    pub(super) max_event: usize,
}

/// Where the client-format bytes of an answer go.
pub(super) enum Stage {
    /// Straight to the client.
    Plain,
    /// Through a tracker of what the client received (`stream_recovery: continue`), so a break
    /// can be completed elsewhere.
    Track(Box<StreamTrack>),
    /// A continuation: rewritten to read as the rest of the stream the client has.
    Splice(Box<Splice>),
}

/// A tracked stream that broke where a continuation can complete it (`stream_recovery:
/// continue`); nothing of the break was sent to the client.
pub(super) struct StreamBreak {
    pub(super) reason: FailoverReason,
    pub(super) track: Box<StreamTrack>,
}

/// Send client-format bytes through the stage; `true` when they carried an error event (held
/// back by a tracking or splicing stage: the stream broke).
pub(super) async fn emit(
    session: &mut Downstream<'_>,
    stage: &mut Stage,
    bytes: Bytes,
    buf: &mut Vec<u8>,
) -> Result<bool> {
    if bytes.is_empty() {
        return Ok(false);
    }
    let error = match stage {
        Stage::Plain => {
            session.write_body(Some(bytes), false).await?;
            return Ok(false);
        }
        Stage::Track(t) => {
            buf.clear();
            t.feed(&bytes, buf)
        }
        Stage::Splice(s) => {
            buf.clear();
            s.feed(&bytes, buf)
        }
    };
    if !buf.is_empty() {
        session
            .write_body(Some(Bytes::copy_from_slice(buf)), false)
            .await?;
    }
    Ok(error)
}

/// Most bytes `join_ready` joins into one write.
pub(super) const JOIN_AT_MOST: usize = 64 * 1024;

/// `chunk`, joined with what the upstream has already delivered behind it: reads that complete
/// without waiting (HTTP chunks already in Pingora's buffer, bytes already in the socket) are
/// appended, so a run of small stream events goes to the client in one write and one wake-up
/// instead of one each, as Pingora's own proxy loop batches them. A read that would wait is
/// dropped unfinished, which Pingora's body readers allow (its proxy loop drops them in
/// `select!`): its state stays in the session and nothing read is lost. A read that ends the
/// body or fails is kept in `held` for the caller's next turn. `read_timeout` is the session's
/// read timeout to put back (none is armed for a read that is not waited on).
pub(super) fn join_ready(
    upstream: &mut HttpSession,
    chunk: Bytes,
    read_timeout: Option<Duration>,
    held: &mut Option<Result<Option<Bytes>>>,
) -> Bytes {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut joined: Option<BytesMut> = None;
    let mut cx = Context::from_waker(Waker::noop());
    upstream.set_read_timeout(None);
    while joined.as_ref().map_or(chunk.len(), |j| j.len()) < JOIN_AT_MOST {
        let ready = {
            let read = std::pin::pin!(upstream.read_response_body());
            match read.poll(&mut cx) {
                Poll::Ready(r) => r,
                Poll::Pending => break,
            }
        };
        match ready {
            Ok(Some(more)) => joined
                .get_or_insert_with(|| {
                    let mut j = BytesMut::with_capacity(chunk.len() + more.len());
                    j.extend_from_slice(&chunk);
                    j
                })
                .extend_from_slice(&more),
            other => {
                *held = Some(other);
                break;
            }
        }
    }
    upstream.set_read_timeout(read_timeout);
    joined.map_or(chunk, BytesMut::freeze)
}

/// The upstream side of the chosen answer.
pub(super) struct Upstream {
    pub(super) session: Box<HttpSession>,
    pub(super) peer: Box<HttpPeer>,
    /// Body bytes already read while classifying.
    pub(super) prefix: Option<Bytes>,
}

impl Upstream {
    /// The upstream answered 2xx.
    pub(super) fn is_success(&self) -> bool {
        self.session
            .response_header()
            .is_some_and(|h| h.status.is_success())
    }
}

/// Stream the chosen answer to the client, chunk by chunk as it arrives. `Some` only when a
/// tracked stream broke and the caller may complete it elsewhere; otherwise the answer, or its
/// explicit error event, reached the client.
pub(super) async fn relay(
    shared: &Shared,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    up: Upstream,
    provider: &Provider,
    served: Served<'_>,
    mut stage: Stage,
) -> Result<Option<StreamBreak>> {
    let (attempts, max_event) = (served.attempts, served.max_event);
    let Upstream {
        session: mut upstream,
        peer,
        prefix,
    } = up;
    let served_model = served.model_id;
    let Some(up_header) = upstream.response_header() else {
        return Error::e_explain(ErrorType::InternalError, "answer without a response header");
    };
    // The answer's header is built on `http`'s parts and handed to Pingora once: its own
    // `insert_header` re-parses each name and keeps a second, case-preserving map, several
    // allocations per header on every answer (callgrind: ~4 % of a 1 KB request). Names then go
    // out lower-case, as HTTP/2 sends them anyway.
    let mut resp = up_header.as_owned_parts();
    for h in HOP_BY_HOP {
        resp.headers.remove(*h);
    }
    let has_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
    let chunked = resp.headers.contains_key(http::header::TRANSFER_ENCODING);
    if !has_length && !chunked && !session.is_http2() {
        resp.headers
            .insert(http::header::TRANSFER_ENCODING, CHUNKED.clone());
    }
    // A family may stream in frames of its own (Bedrock's AWS event stream): decoded into the
    // SSE they carry.
    let framing = vendor::framing(
        provider.api(),
        resp.headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    );
    let is_eventstream = framing == vendor::Framing::EventStream;
    let is_sse = framing != vendor::Framing::Whole;
    let h = &mut resp.headers;
    h.insert(names::PROVIDER, header_value(provider.name.as_str())?);
    h.insert(names::MODEL, header_value(served_model)?);
    h.insert(names::ATTEMPTS, header_value(attempts)?);
    h.insert(names::REQUEST_ID, header_value(&ctx.request_id)?);
    if let Some(eq) = &served.equivalent {
        h.insert(names::EQUIVALENT, header_value(eq)?);
    }
    if !served.dropped.is_empty() {
        h.insert(
            names::DROPPED_PARAMS,
            header_value(&served.dropped.join(","))?,
        );
    }
    if let Some(c) = served.cache_header {
        h.insert(names::CACHE, http::HeaderValue::from_static(c));
    }
    // The request's own headers (a team's rate-limit state) join here, on `http`'s map, rather
    // than through Pingora's `insert_header` (a name re-parsed and a case map kept, each).
    for (k, v) in session.take_headers() {
        h.insert(k, v);
    }
    if ctx.zero_retention {
        // Said in the response header: the client's connection closes after this answer.
        session.set_keepalive(None);
    }
    let success = upstream
        .response_header()
        .is_some_and(|h| h.status.is_success());
    let mut translator = None;
    if let Some(dir) = served.translation {
        resp.headers.insert(
            names::TRANSLATED,
            http::HeaderValue::from_static(dir.label()),
        );
        ctx.translated = Some(dir.label());
        METRICS.translations.with_label_values(&[dir.label()]).inc();
    }
    // A translated whole answer, or any error passed on: read whole (an error is re-shaped when
    // its shape is not the client's: another family, Bedrock's own `{"message"}`), and an error
    // is cleared of the provider's key should it echo it.
    if !success || (served.translation.is_some() && !is_sse) {
        let up = Upstream {
            session: upstream,
            peer,
            prefix,
        };
        Box::pin(relay_whole(
            shared,
            session,
            ctx,
            up,
            provider,
            &served,
            resp.into(),
        ))
        .await?;
        return Ok(None);
    }
    let mut frames = None;
    if is_eventstream {
        resp.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        frames = Some(vendor::FrameDecoder::with_limit(
            max_event.saturating_mul(2),
        ));
    }
    if let Some(dir) = served.translation.filter(|_| is_sse) {
        translator = Some(translate::stream::StreamTranslator::new(
            dir,
            served.include_usage,
        ));
    }
    if frames.is_some() || translator.is_some() {
        // The stream's bytes change on the way: its length is no longer the provider's.
        resp.headers.remove(http::header::CONTENT_LENGTH);
        if !resp.headers.contains_key(http::header::TRANSFER_ENCODING) && !session.is_http2() {
            resp.headers
                .insert(http::header::TRANSFER_ENCODING, CHUNKED.clone());
        }
    }
    if !matches!(stage, Stage::Splice(_)) {
        session
            .write_header(Box::new(ResponseHeader::from(resp)), false)
            .await?;
    }

    let mut usage = UsageScanner::default();
    let mut out = Vec::new();
    let mut sse = Vec::new();
    // What the commit point held goes first, through the same decoding and translation.
    let mut pending = prefix.filter(|p| !p.is_empty());
    // A committed stream silent this long is broken (`stream_stall`); a whole body was read
    // before committing, so only streams need the watch.
    let stall_after = is_sse.then_some(served.stream_idle);
    // The read timeout the session carries (set here for streams; by `exchange` otherwise).
    let restore_timeout = Some(match stall_after {
        Some(idle) => idle + Duration::from_millis(500),
        None => provider.timeouts.idle,
    });
    if stall_after.is_some() {
        // Pingora's own read timeout only as a backstop, so a stall is named as one.
        upstream.set_read_timeout(restore_timeout);
    }
    let mut staged = Vec::new();
    // Every upstream stream event is checked before it goes on: malformed ones are dropped.
    let mut guard = is_sse.then(|| EventGuard::new(served.upstream_stream, max_event));
    let mut slices: Vec<Bytes> = Vec::new();
    // What a read that did not wait returned after the bytes it was joined to (`join_ready`).
    let mut held: Option<Result<Option<Bytes>>> = None;
    // The stream's break, if it breaks: the reason and what the access line says.
    let broke: Option<(FailoverReason, String)> = loop {
        let next = match (held.take(), pending.take(), stall_after) {
            (Some(h), _, _) => h,
            (None, Some(p), _) => Ok(Some(p)),
            (None, None, None) => upstream.read_response_body().await,
            (None, None, Some(idle)) => {
                match tokio::time::timeout(idle, upstream.read_response_body()).await {
                    Ok(r) => r,
                    Err(_) => {
                        break Some((
                            FailoverReason::StreamStall,
                            format!("stream_stall: upstream silent for {} ms", idle.as_millis()),
                        ))
                    }
                }
            }
        };
        match next {
            Ok(Some(chunk)) => {
                let chunk = join_ready(&mut upstream, chunk, restore_timeout, &mut held);
                if success {
                    usage.feed(&chunk);
                }
                // A write error means the client left: return it, dropping the upstream
                // connection so the provider stops generating for nobody.
                let chunk = match frames.as_mut() {
                    None => chunk,
                    Some(f) => {
                        sse.clear();
                        if let Err(e) = f.feed(&chunk, &mut sse) {
                            break Some((FailoverReason::Truncated, e.0));
                        }
                        Bytes::copy_from_slice(&sse)
                    }
                };
                let chunk = match guard.as_mut() {
                    None => chunk,
                    Some(g) => {
                        let dropped = g.dropped();
                        slices.clear();
                        if let Err(e) = g.feed(chunk, &mut slices) {
                            // The upstream connection is dropped with this function: nothing
                            // more of the event is read.
                            break Some((
                                FailoverReason::ResponseTooLarge,
                                format!("{}: {e}", FailoverReason::ResponseTooLarge),
                            ));
                        }
                        if g.dropped() > dropped {
                            note_malformed(ctx, provider, g.dropped() - dropped, dropped == 0);
                        }
                        match slices.len() {
                            0 => Bytes::new(),
                            1 => slices.swap_remove(0),
                            _ => Bytes::from(slices.concat()),
                        }
                    }
                };
                let chunk = translated(translator.as_mut(), chunk, &mut out);
                if emit(session, &mut stage, chunk, &mut staged).await? {
                    break Some(error_event_break());
                }
            }
            Ok(None) => {
                if frames.as_ref().is_some_and(|f| f.pending() > 0) {
                    // Ended mid-frame: what arrived whole was delivered; say the rest broke.
                    break Some((
                        FailoverReason::Truncated,
                        "upstream event stream ended mid-frame".into(),
                    ));
                }
                let tail = match guard.as_ref().map(|g| g.end()) {
                    None | Some(StreamEnd::Complete) => None,
                    // Said it finished, left out the terminator: finish it for the client now.
                    Some(StreamEnd::Terminate(t)) => Some(Bytes::from_static(t)),
                    Some(StreamEnd::Truncated) if translator.is_none() => {
                        break Some((
                            FailoverReason::Truncated,
                            "upstream stream ended without its end event".into(),
                        ));
                    }
                    // The translator knows (and says below).
                    Some(StreamEnd::Truncated) => None,
                };
                if let Some(tail) = tail {
                    let tail = translated(translator.as_mut(), tail, &mut out);
                    if emit(session, &mut stage, tail, &mut staged).await? {
                        break Some(error_event_break());
                    }
                }
                if let Some(t) = translator.as_mut() {
                    out.clear();
                    let finished = t.finish(&mut out);
                    if finished {
                        let tail = Bytes::copy_from_slice(&out);
                        if emit(session, &mut stage, tail, &mut staged).await? {
                            break Some(error_event_break());
                        }
                    } else {
                        // Ended before saying how: an explicit error (or a continuation),
                        // never a stream that looks finished.
                        break Some((
                            FailoverReason::Truncated,
                            "upstream stream ended without its end event".into(),
                        ));
                    }
                }
                break None;
            }
            Err(e) => {
                let why = format!("upstream broke mid-response: {}", e.etype().as_str());
                if !is_sse {
                    log::warn!(
                        "provider {} broke the response mid-body ({}); request {}",
                        provider.name,
                        e.etype().as_str(),
                        ctx.request_id
                    );
                    (served.broken)(FailoverReason::Truncated);
                    ctx.error = Some(why);
                    session.set_keepalive(None);
                    // Close without the terminating chunk: the client sees an incomplete body.
                    return Err(e);
                }
                break Some((FailoverReason::Truncated, why));
            }
        }
    };
    if let Some((reason, why)) = broke {
        if reason == FailoverReason::ResponseTooLarge {
            drop(guard.take());
            crate::serve::trim::release_oversized();
        }
        log::warn!(
            "provider {}: stream broke after its first content ({why}); request {}",
            provider.name,
            ctx.request_id
        );
        (served.broken)(reason);
        // What the broken part reported is still spent.
        record_usage(ctx, &usage, &served, &provider.name);
        ctx.error = Some(why);
        match stage {
            Stage::Track(track) if track.continuable() => {
                // Nothing of the break was sent: the caller completes the stream elsewhere.
                return Ok(Some(StreamBreak { reason, track }));
            }
            Stage::Track(_) => {
                METRICS
                    .stream_recoveries
                    .with_label_values(&["not_continuable"])
                    .inc();
            }
            Stage::Splice(_) => {
                // The continuation broke too: the error event names the original break.
                METRICS
                    .stream_recoveries
                    .with_label_values(&["failed"])
                    .inc();
                ctx.stream_recovery = Some(format!("failed:{}", served.origin));
            }
            Stage::Plain => {}
        }
        // Never a silent truncation that looks like a finished answer: end the stream with an
        // error event the SDKs surface as an exception. The upstream connection is dropped
        // with this function, never pooled.
        session.set_keepalive(None);
        let event = stream_error_event(served.client_stream, served.origin);
        session.write_body(Some(event), true).await?;
        return Ok(None);
    }
    if let Stage::Splice(_) = stage {
        // Said in the stream itself (a comment every SSE parser skips) and in the access line.
        METRICS
            .stream_recoveries
            .with_label_values(&["completed"])
            .inc();
        ctx.stream_recovery = Some(format!("completed:{}", provider.name));
        let note = format!(
            ": twinroute completed this stream from {} after {} broke it\n\n",
            provider.name, served.origin
        );
        session.write_body(Some(Bytes::from(note)), false).await?;
    }
    session.write_body(None, true).await?;
    record_usage(ctx, &usage, &served, &provider.name);
    if ctx.zero_retention {
        // Zero retention: neither connection outlives the request with its bytes in a buffer.
        // The upstream one is dropped rather than pooled; the client's closes (set above).
        return Ok(None);
    }
    if upstream.response_done() {
        pool_again(shared, upstream, &peer).await;
    }
    Ok(None)
}

/// Bytes on their way to the client: through the translator when the formats differ.
pub(super) fn translated(
    translator: Option<&mut translate::stream::StreamTranslator>,
    chunk: Bytes,
    out: &mut Vec<u8>,
) -> Bytes {
    match translator {
        None => chunk,
        Some(t) => {
            out.clear();
            t.feed(&chunk, out);
            Bytes::copy_from_slice(out)
        }
    }
}

/// A committed stream that carried an error event: a break like a cut (an overloaded model).
pub(super) fn error_event_break() -> (FailoverReason, String) {
    (
        FailoverReason::Status5xx,
        "upstream sent an error event mid-stream".into(),
    )
}

/// Malformed upstream events were dropped: counted always, logged once per stream.
pub(super) fn note_malformed(ctx: &RequestLog, provider: &Provider, n: u64, first: bool) {
    METRICS
        .malformed_events
        .with_label_values(&[&provider.name])
        .inc_by(n);
    if first {
        log::warn!(
            "provider {}: dropped a stream event whose data is not JSON; request {}",
            provider.name,
            ctx.request_id
        );
    }
}

/// Largest answer read whole to translate it (a non-streaming completion is a few KB to a few
/// MB; past this the provider is not sending a chat answer).
pub(super) const MAX_TRANSLATED_BODY: usize = 32 << 20;

/// A translated non-streaming answer (or a provider error passed to the client): read whole,
/// translated into the client's format, then sent with its own length.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_whole(
    shared: &Shared,
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    up: Upstream,
    provider: &Provider,
    served: &Served<'_>,
    mut resp: ResponseHeader,
) -> Result<()> {
    let Upstream {
        session: mut upstream,
        peer,
        prefix,
    } = up;
    let status = resp.status.as_u16();
    let mut buf = BytesMut::new();
    if let Some(p) = prefix {
        buf.extend_from_slice(&p);
    }
    loop {
        match upstream.read_response_body().await {
            Ok(Some(chunk)) if buf.len() + chunk.len() <= MAX_TRANSLATED_BODY => {
                buf.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                let e = GatewayError::new(
                    ErrorKind::UpstreamFailed,
                    format!(
                        "provider {} sent an answer over {MAX_TRANSLATED_BODY} bytes, more than is read whole (to translate it, or to clear an error of credentials)",
                        provider.name
                    ),
                );
                return send_error(session, ctx, e, served.family, vec![]).await;
            }
            Ok(None) => break,
            Err(e) => {
                ctx.error = Some(format!(
                    "upstream broke mid-response: {}",
                    e.etype().as_str()
                ));
                let g = GatewayError::new(
                    ErrorKind::UpstreamFailed,
                    format!("provider {} broke its answer mid-body", provider.name),
                );
                return send_error(session, ctx, g, served.family, vec![]).await;
            }
        }
    }
    let foreign_error = served.translation.is_some() || vendor::reshapes_errors(provider.api());
    let body = if !(200..300).contains(&status) {
        let body = if foreign_error {
            translate::response::error(served.family, status, &buf)
        } else {
            buf.to_vec()
        };
        without_credentials(shared, provider, body)
    } else if let Some(dir) = served.translation {
        match translate::response::response(dir, &buf) {
            Ok(b) => b,
            Err(e) => {
                let g = GatewayError::new(
                    ErrorKind::UpstreamFailed,
                    format!(
                        "provider {}'s answer could not be translated: {e}",
                        provider.name
                    ),
                );
                return send_error(session, ctx, g, served.family, vec![]).await;
            }
        }
    } else {
        buf.to_vec()
    };
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    if foreign_error || (200..300).contains(&status) {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_header(Box::new(resp), false).await?;
    session.write_body(Some(Bytes::from(body)), true).await?;
    if (200..300).contains(&status) {
        let mut usage = UsageScanner::default();
        usage.feed(&buf);
        record_usage(ctx, &usage, served, &provider.name);
    }
    if !ctx.zero_retention && upstream.response_done() {
        pool_again(shared, upstream, &peer).await;
    }
    Ok(())
}

/// Count an answer's reported tokens (and their cost) for its provider; summed into the access
/// line, so a stream completed from a second provider shows what both calls reported.
pub(super) fn record_usage(
    ctx: &mut RequestLog,
    usage: &UsageScanner,
    served: &Served<'_>,
    provider: &str,
) {
    let add = |prev: Option<u64>, new: Option<u64>| match (prev, new) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    ctx.input_tokens = add(ctx.input_tokens, usage.input_tokens);
    ctx.output_tokens = add(ctx.output_tokens, usage.output_tokens);
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
        ctx.cost_usd = Some(ctx.cost_usd.unwrap_or(0.0) + cost);
        METRICS
            .cost_usd
            .with_label_values(&[served.model_name, provider])
            .inc_by(cost);
    }
}

/// Answer the client with twinroute's own error: recorded in the access line (unless a more
/// precise cause already is), the connection not reused, the request id among the headers.
pub async fn send_error(
    session: &mut Downstream<'_>,
    ctx: &mut RequestLog,
    e: GatewayError,
    family: Family,
    mut extra: Vec<(&'static str, String)>,
) -> Result<()> {
    ctx.status = e.kind.status();
    ctx.error.get_or_insert_with(|| e.message.clone());
    session.set_keepalive(None);
    extra.push((names::HDR_REQUEST_ID, ctx.request_id.clone()));
    session.write_error(&e, family, &extra).await
}

/// An error body to pass on, with any credential it echoes replaced by `[REDACTED]`: a provider
/// repeating what it was sent ("Incorrect API key provided: sk-...") never hands the client a
/// key. What counts: the provider's keys, its current minted token (Vertex, temporary AWS keys'
/// session token), and static headers that carry a credential.
fn without_credentials(shared: &Shared, provider: &Provider, body: Vec<u8>) -> Vec<u8> {
    let token = shared.tokens.current(&provider.name);
    let minted = token.as_ref().and_then(|t| match t.aws.as_ref() {
        None => Some(&t.value),
        Some(crate::model::AwsCredentials::Bearer(b)) => Some(b),
        Some(crate::model::AwsCredentials::Static { session_token, .. }) => session_token.as_ref(),
    });
    let keys: Vec<&[u8]> = provider
        .endpoints
        .iter()
        .filter_map(|e| e.key.as_ref())
        .chain(minted)
        .map(|k| k.expose().as_bytes())
        .chain(
            provider
                .extra_headers
                .iter()
                .filter(|(k, _)| crate::wire::request::carries_credential(k.as_str()))
                .map(|(_, v)| v.as_bytes()),
        )
        .collect();
    crate::wire::error_body::redact(&body, &keys).unwrap_or(body)
}
