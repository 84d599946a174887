//! `Idempotency-Key`: one upstream call per key. While a keyed request is in flight, a duplicate
//! (same client scope, same key, same body) waits for that call and receives the same answer —
//! a stream from its first byte, then live; after a success the answer is replayed for
//! `idempotency.ttl_s` and no provider sees the request again. The same key with another body is
//! a 422; a failure is not kept, so a retry after it is a new try, also in the moment between
//! the leader's client receiving the failure and the leader letting the key go (a duplicate
//! arriving once the failure's header is written leads anew instead of following it).
//!
//! The seam a shared store fills: `IdempotencyStore::claim` answers lead, follow or conflict.
//! A leader writes its answer into the store through its `Leader` (a `Tap`), and a follower
//! reads it back from the store through an `AnswerFeed`, event by event: nothing passes
//! between the two requests but what the store holds, so the two may be on different replicas.
//! `memory::MemoryStore` (moka: bounded by bytes, LRU, TTL) is the in-process default. The
//! decisions (key syntax, scope, fingerprint, what is storable) are `decide::idempotency`.

pub mod memory;

use crate::decide::idempotency::{Fingerprint, ScopedKey};
use crate::model::endpoint::Dialect;
use crate::serve::downstream::{Downstream, Tap};
pub use crate::serve::recording::{AnswerEvent, Ending, Head};
use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Where keyed answers live.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claim `key` for a request whose content is `fp`. Atomic per key: two claims never both
    /// lead.
    async fn claim(&self, key: &ScopedKey, fp: Fingerprint) -> Claim;
    /// Entries held and the bytes they weigh, for `/status` and metrics.
    fn usage(&self) -> (u64, u64);
}

/// The answer to a claim.
pub enum Claim {
    /// No one has this key: make the call, writing the answer through this leader.
    Lead(Box<dyn Leader>),
    /// The key's answer is in flight or kept: send the client what this feed reads.
    Follow(Box<dyn AnswerFeed>),
    /// The key was used with another body (or on another route).
    Conflict,
}

/// The leader's hold on its key. What it is written as a `Tap` goes to the store for the
/// duplicates following it. Dropped without `settle` (an early exit, a panic), it lets the key
/// go, so no duplicate is left waiting and a retry is a new try.
#[async_trait]
pub trait Leader: Tap + Send {
    /// The answer ended: `complete` when it was written whole. Followers see the end now.
    fn finish(&self, complete: bool);
    /// Keep the answer for replay (`keep`, when the store holds it whole: one it let go of for
    /// its size is not kept), or let the key go. Only this leader's own entry: after a failure
    /// a retry may already lead under the key.
    async fn settle(self: Box<Self>, keep: bool);
}

/// A duplicate's read of the answer it follows, from the store. Held, it counts as a follower
/// (the leader finishes the answer for it even when the leader's own client left).
#[async_trait]
pub trait AnswerFeed: Send {
    /// The next event of the answer, waiting for it to be written; `None` when the store lost
    /// the answer (read as abandoned).
    async fn next(&mut self) -> Option<AnswerEvent>;
}

/// Send a follower the answer its feed reads: the header with
/// `x-twinroute-idempotent-replay: true` and this request's id, then every chunk from the first,
/// live until the leader finishes. `Ok(None)`: the leader's answer broke off before its header
/// (nothing was sent; the caller answers instead); else the status sent. A stream that breaks off
/// after its header ends with the error event of the client's `stream`, never as a silent
/// truncation.
pub async fn follow(
    feed: &mut dyn AnswerFeed,
    session: &mut Session,
    request_id: &str,
    stream: Dialect,
    extra: Vec<(http::HeaderName, http::HeaderValue)>,
) -> Result<Option<u16>> {
    let mut session = Downstream::new(session, None).with_headers(extra);
    let mut status = None;
    let mut sse = false;
    loop {
        let event = feed.next().await;
        match (status, event) {
            (None, Some(AnswerEvent::Head((s, headers)))) => {
                sse = headers.iter().any(|(k, v)| {
                    k == http::header::CONTENT_TYPE
                        && v.as_bytes().starts_with(b"text/event-stream")
                });
                session
                    .write_header(replay_header(s, headers, request_id)?, false)
                    .await?;
                status = Some(s);
            }
            // Ended (or lost) before a header: nothing to share.
            (None, _) => return Ok(None),
            (Some(_), Some(AnswerEvent::Chunk(c))) => session.write_body(Some(c), false).await?,
            (Some(_), Some(AnswerEvent::End(Ending::Complete))) => {
                session.write_body(None, true).await?;
                return Ok(status);
            }
            (Some(_), Some(AnswerEvent::Head(_))) => {}
            (Some(_), Some(AnswerEvent::End(Ending::Abandoned)) | None) => {
                session.set_keepalive(None);
                if sse {
                    // A stream says it broke, as the leader's own client would be told.
                    let event = crate::wire::sse::stream_error_event(stream, "twinroute");
                    session.write_body(Some(event), true).await?;
                    return Ok(status);
                }
                // What was shared is all there is: the connection closes without the
                // terminating chunk, so the client sees an incomplete answer, not a short one.
                return pingora::Error::e_explain(
                    pingora::ErrorType::ConnectionClosed,
                    "the keyed answer being shared broke off",
                );
            }
        }
    }
}

/// The leader's header as a replay: its own request id and connection header left out.
fn replay_header(
    status: u16,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    request_id: &str,
) -> Result<Box<ResponseHeader>> {
    let mut h = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (k, v) in headers {
        if k == http::header::CONNECTION || k == crate::serve::names::REQUEST_ID {
            continue;
        }
        h.append_header(k, v)?;
    }
    h.insert_header(crate::serve::names::HDR_IDEMPOTENT_REPLAY, "true")?;
    h.insert_header(crate::serve::names::HDR_REQUEST_ID, request_id)?;
    Ok(Box::new(h))
}
