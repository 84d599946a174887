//! The commit point: twinroute sends the client nothing of an answer until that answer can no
//! longer fail cleanly somewhere else.
//!
//! - A non-streaming answer is read whole first (a larger one than `max_response_body_bytes` is
//!   a failed attempt, `response_too_large`), so a reset, a stall or a cut mid-body fails over
//!   like any failed attempt instead of reaching the client as broken JSON.
//! - A stream is held until its first *content* event (a text, tool-call or thinking delta;
//!   `wire::stream_event` decides), not its first byte: the header, `message_start`, role-only
//!   chunks and pings are held and replayed with the content. `first_token_ms` bounds the wait;
//!   an error event, a cut or a silence before the first content fail over with nothing sent.
//!
//! What was held becomes the prefix the relay sends first; the relay never re-reads it.

use crate::model::endpoint::Dialect;
use crate::model::outcome::FailoverReason;
use crate::wire::stream_event::{classify, EventKind};
use crate::wire::translate::stream::{SseEvent, SseParser};
use crate::wire::vendor::FrameDecoder;
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::client::HttpSession;
use tokio::time::Instant;

/// A stream holding this much before its first content is committed anyway: the hold is brief
/// and bounded, never a buffer for a whole answer.
const MAX_STREAM_HOLD: usize = 256 * 1024;

/// How to hold one answer.
#[derive(Debug, Clone, Copy)]
pub struct HoldSpec {
    /// `Some(dialect)`: the answer is a stream of that dialect's events; `None`: a whole body.
    pub stream: Option<Dialect>,
    /// The stream arrives as AWS event-stream frames (Bedrock), decoded to see its events.
    pub eventstream: bool,
    /// A stream's first content must arrive by then ...
    pub first_token_by: Instant,
    /// ... else the attempt failed for this reason (`first_token_timeout`, or `deadline` when
    /// the request's deadline came first).
    pub first_token_reason: FailoverReason,
    /// A whole body must have arrived by then (the request's deadline).
    pub body_by: Instant,
    /// Largest whole body taken; a larger one fails the attempt (`response_too_large`).
    pub max_body: usize,
    /// Largest stream event taken (`max_stream_event_bytes`).
    pub max_event: usize,
}

/// The hold's result.
#[derive(Debug)]
pub enum Held {
    /// Deliver this answer; these bytes (if any) go to the client first.
    Committed(Option<Bytes>),
    /// The answer failed before the commit point; nothing of it reached the client.
    Failed(FailoverReason),
}

/// Hold the answer `up` is reading (`prefix`: body bytes already read) until its commit point.
pub async fn hold(up: &mut HttpSession, prefix: Option<Bytes>, spec: &HoldSpec) -> Held {
    let mut held = BytesMut::new();
    if let Some(p) = prefix {
        held.extend_from_slice(&p);
    }
    match spec.stream {
        None => hold_body(up, held, spec).await,
        Some(stream) => hold_stream(up, held, stream, spec).await,
    }
}

fn committed(held: BytesMut) -> Held {
    Held::Committed((!held.is_empty()).then(|| held.freeze()))
}

async fn hold_body(up: &mut HttpSession, mut held: BytesMut, spec: &HoldSpec) -> Held {
    let announced = up
        .response_header()
        .and_then(|h| h.headers.get(http::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if announced.is_some_and(|n| n > spec.max_body) {
        return Held::Failed(FailoverReason::ResponseTooLarge);
    }
    if let Some(n) = announced {
        held.reserve(n.saturating_sub(held.len()));
    }
    loop {
        if held.len() > spec.max_body {
            // Never relayed without bound: no chat answer is this large, and holding or
            // streaming it would cost the pod its memory and the client its deadline.
            drop(held);
            crate::serve::trim::release_oversized();
            return Held::Failed(FailoverReason::ResponseTooLarge);
        }
        match tokio::time::timeout_at(spec.body_by, up.read_response_body()).await {
            Err(_) => return Held::Failed(FailoverReason::Deadline),
            Ok(Err(_)) => return Held::Failed(FailoverReason::Truncated),
            Ok(Ok(None)) => return committed(held),
            Ok(Ok(Some(chunk))) => held.extend_from_slice(&chunk),
        }
    }
}

async fn hold_stream(
    up: &mut HttpSession,
    mut held: BytesMut,
    stream: Dialect,
    spec: &HoldSpec,
) -> Held {
    let mut parser = SseParser::new(spec.max_event);
    let mut frames = spec
        .eventstream
        .then(|| FrameDecoder::with_limit(spec.max_event.saturating_mul(2)));
    let mut events: Vec<SseEvent> = Vec::new();
    let mut sse = Vec::new();
    let mut ended = false;
    // Bytes already held (a prefix) are looked at like any read.
    let mut fresh = held.clone().freeze();
    loop {
        if !fresh.is_empty() {
            let text: &[u8] = match frames.as_mut() {
                None => &fresh,
                Some(f) => {
                    sse.clear();
                    if f.feed(&fresh, &mut sse).is_err() {
                        return Held::Failed(FailoverReason::Truncated);
                    }
                    &sse
                }
            };
            events.clear();
            parser.feed(text, &mut events);
            if parser.overflowed() {
                drop((parser, held));
                crate::serve::trim::release_oversized();
                return Held::Failed(FailoverReason::ResponseTooLarge);
            }
            for ev in &events {
                match classify(stream, ev) {
                    EventKind::Content { .. } => return committed(held),
                    EventKind::End => ended = true,
                    // An error before any content (an overloaded model): another twin may
                    // answer, and the client has seen nothing yet.
                    EventKind::Error => return Held::Failed(FailoverReason::Status5xx),
                    EventKind::Preamble | EventKind::Malformed => {}
                }
            }
            // An event still arriving is held to its end (or to `max_event`, which fails the
            // attempt): committing in its middle would hand an oversized event to the relay
            // after the point where another candidate could still answer.
            if ended || (held.len() >= MAX_STREAM_HOLD && parser.pending() == 0) {
                // An answer that ends without content (empty, filtered) is still the answer.
                return committed(held);
            }
        }
        match tokio::time::timeout_at(spec.first_token_by, up.read_response_body()).await {
            Err(_) => return Held::Failed(spec.first_token_reason),
            Ok(Err(_)) | Ok(Ok(None)) => return Held::Failed(FailoverReason::Truncated),
            Ok(Ok(Some(chunk))) => {
                held.extend_from_slice(&chunk);
                fresh = chunk;
            }
        }
    }
}
