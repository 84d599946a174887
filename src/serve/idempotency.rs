//! `Idempotency-Key`: one upstream call per key. While a keyed request is in flight, a duplicate
//! (same client scope, same key, same body) waits for that call and receives the same answer —
//! a stream from its first byte, then live; after a success the answer is replayed for
//! `idempotency.ttl_s` and no provider sees the request again. The same key with another body is
//! a 422; a failure is not kept, so a retry after it is a new try, also in the moment between
//! the leader's client receiving the failure and the leader letting the key go (a duplicate
//! arriving once the failure's header is written leads anew instead of following it).
//!
//! Storage is behind `IdempotencyStore`; `MemoryStore` (moka: bounded by bytes, LRU, TTL) is
//! the in-process default. A store shared across replicas is a second implementation. The
//! decisions (key syntax, scope, fingerprint, what is storable) are `decide::idempotency`.

use crate::decide::idempotency::{followable, Fingerprint, ScopedKey};
use crate::model::endpoint::Family;
use crate::model::IdempotencyConf;
use crate::observe::metrics::METRICS;
use crate::serve::downstream::{Downstream, Tap};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use moka::ops::compute::Op;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// What an in-flight or kept entry weighs before its answer is known.
const IN_FLIGHT_WEIGHT: u32 = 1024;

/// Where keyed answers live.
pub trait IdempotencyStore: Send + Sync {
    /// Claim `key` for a request whose content is `fp`.
    fn claim(&self, key: &ScopedKey, fp: Fingerprint) -> Claim;
    /// The leader's answer ended: keep it for replay (`keep`) or let the key go.
    fn settle(&self, key: &ScopedKey, rec: &Arc<Recording>, keep: bool);
    /// Entries held and the bytes they weigh, for `/status` and metrics.
    fn usage(&self) -> (u64, u64);
}

/// The answer to a claim.
pub enum Claim {
    /// No one has this key: make the call, recording the answer here.
    Lead(Arc<Recording>),
    /// The key's answer is in flight or kept: send this one.
    Follow(Follower),
    /// The key was used with another body (or on another route).
    Conflict,
}

/// A duplicate's hold on the answer it follows: counted from the moment the claim hands it out
/// (inside the store's per-key step), so a leader whose client leaves in the instant before the
/// follower starts reading still finishes the answer for it; uncounted when dropped.
pub struct Follower(Arc<Recording>);

impl Follower {
    fn new(rec: Arc<Recording>) -> Follower {
        rec.followers
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Follower(rec)
    }

    pub fn recording(&self) -> &Arc<Recording> {
        &self.0
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0
            .followers
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl std::ops::Deref for Follower {
    type Target = Recording;
    fn deref(&self) -> &Recording {
        &self.0
    }
}

/// One keyed answer as the leader wrote it to its client: the header, then the body chunks.
pub struct Recording {
    fingerprint: Fingerprint,
    max_bytes: usize,
    /// Duplicates holding a `Follower` of this answer now.
    followers: std::sync::atomic::AtomicUsize,
    state: Mutex<RecState>,
    /// Bumped at every change, so followers wait without polling.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct RecState {
    head: Option<(u16, Vec<(HeaderName, HeaderValue)>)>,
    chunks: Vec<Bytes>,
    bytes: usize,
    end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum End {
    #[default]
    Open,
    /// The whole answer was written.
    Complete,
    /// The leader's answer broke off (its client left), or outgrew what may be shared.
    Abandoned,
}

impl Recording {
    /// A recording of at most `max_bytes` of body (more: abandoned).
    pub fn new(fingerprint: Fingerprint, max_bytes: usize) -> Recording {
        Recording {
            fingerprint,
            max_bytes,
            followers: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(RecState::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn weight(&self) -> u32 {
        let g = self.lock();
        let head: usize = g.head.as_ref().map_or(0, |(_, h)| {
            h.iter().map(|(k, v)| k.as_str().len() + v.len() + 8).sum()
        });
        (g.bytes + head)
            .max(IN_FLIGHT_WEIGHT as usize)
            .min(u32::MAX as usize) as u32
    }
}

/// The leader's answer, as `serve::downstream` writes it.
impl Tap for Recording {
    /// The leader wrote its response header.
    fn head(&self, h: &ResponseHeader) {
        let headers = h
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.lock().head = Some((h.status.as_u16(), headers));
        self.bump();
    }

    /// Duplicates wait on the recording: the leader finishes the answer for them even when its
    /// own client leaves.
    fn followed(&self) -> bool {
        self.followers.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// The leader wrote body bytes.
    fn body(&self, b: &Bytes) {
        if b.is_empty() {
            return;
        }
        let mut g = self.lock();
        if g.end != End::Open {
            return;
        }
        g.bytes += b.len();
        if g.bytes > self.max_bytes {
            g.end = End::Abandoned;
            g.chunks.clear();
        } else {
            g.chunks.push(b.clone());
        }
        drop(g);
        self.bump();
    }
}

impl Recording {
    /// The leader is done: `complete` when its whole answer was written.
    pub fn finish(&self, complete: bool) {
        let mut g = self.lock();
        if g.end == End::Open {
            g.end = if complete {
                End::Complete
            } else {
                End::Abandoned
            };
        }
        drop(g);
        self.bump();
    }

    /// Whether the answer was written whole (and fitted `max_entry_bytes`).
    pub fn complete(&self) -> bool {
        self.lock().end == End::Complete
    }

    /// The whole body written, when it was written whole.
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        let g = self.lock();
        (g.end == End::Complete).then(|| g.chunks.concat())
    }

    /// The status the leader answered with, once it did.
    pub fn status(&self) -> Option<u16> {
        self.lock().head.as_ref().map(|(s, _)| *s)
    }

    /// Whether a duplicate may still follow this answer (`decide::idempotency::followable`).
    fn followable(&self) -> bool {
        let g = self.lock();
        followable(g.head.as_ref().map(|(s, _)| *s), g.end == End::Abandoned)
    }
}

/// The in-process store: moka, weighted by bytes, least recently used out first, entries kept
/// `ttl` after their answer completed.
pub struct MemoryStore {
    cache: moka::sync::Cache<ScopedKey, Arc<Recording>>,
    max_entry_bytes: usize,
}

impl MemoryStore {
    pub fn new(conf: &IdempotencyConf) -> MemoryStore {
        let cache = moka::sync::Cache::builder()
            .max_capacity(conf.max_bytes)
            .weigher(|_k: &ScopedKey, v: &Arc<Recording>| v.weight())
            .time_to_live(conf.ttl)
            .eviction_listener(|_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    METRICS.idempotency_evictions.inc();
                }
            })
            .build();
        MemoryStore {
            cache,
            max_entry_bytes: conf.max_entry_bytes,
        }
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim(&self, key: &ScopedKey, fp: Fingerprint) -> Claim {
        // One compute per key at a time (moka serialises them), so two claims never both lead.
        // Every branch below sets `claim`.
        let mut claim = Claim::Conflict;
        self.cache
            .entry(key.clone())
            .and_compute_with(|current| match current {
                Some(e) if e.value().followable() => {
                    let rec = e.into_value();
                    claim = if rec.fingerprint == fp {
                        Claim::Follow(Follower::new(rec))
                    } else {
                        Claim::Conflict
                    };
                    Op::Nop
                }
                // Free, or held by an answer already known to be a failure, which is not kept:
                // this request leads, in place of that entry.
                _ => {
                    let rec = Arc::new(Recording::new(fp, self.max_entry_bytes));
                    claim = Claim::Lead(rec.clone());
                    Op::Put(rec)
                }
            });
        claim
    }

    fn settle(&self, key: &ScopedKey, rec: &Arc<Recording>, keep: bool) {
        // Only this leader's own entry: after a failure a retry may already lead under the key.
        self.cache
            .entry(key.clone())
            .and_compute_with(|current| match current {
                // Put again: weighed with its answer, and kept `ttl` from now.
                Some(e) if Arc::ptr_eq(e.value(), rec) => {
                    if keep {
                        Op::Put(rec.clone())
                    } else {
                        Op::Remove
                    }
                }
                // Evicted while in flight: kept all the same, as an insert would.
                None if keep => Op::Put(rec.clone()),
                _ => Op::Nop,
            });
    }

    fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

/// Send a follower the answer the leader is writing (or wrote): the header with
/// `x-twinroute-idempotent-replay: true` and this request's id, then every chunk from the first,
/// live until the leader finishes. `Ok(false)`: the leader's answer broke off before its header
/// (nothing was sent; the caller answers instead). A stream that breaks off after its header ends
/// with the error event in the client's `family`, never as a silent truncation.
pub async fn follow(
    rec: &Recording,
    session: &mut Session,
    request_id: &str,
    family: Family,
) -> Result<bool> {
    let mut session = Downstream::new(session, None);
    let mut rx = rec.changed.subscribe();
    let mut sent = 0usize;
    let mut head_sent = false;
    let mut sse = false;
    loop {
        // Seen before reading, so a change after the read wakes the wait below.
        rx.borrow_and_update();
        let (head, chunks, end) = {
            let g = rec.lock();
            let head = (!head_sent).then(|| g.head.clone()).flatten();
            let chunks: Vec<Bytes> = g.chunks.get(sent..).unwrap_or_default().to_vec();
            (head, chunks, g.end)
        };
        if !head_sent && end == End::Abandoned {
            // Broke off (or outgrew max_entry_bytes) before this follower saw any of it.
            return Ok(false);
        }
        if !head_sent {
            match head {
                Some((status, headers)) => {
                    sse = headers.iter().any(|(k, v)| {
                        k == http::header::CONTENT_TYPE
                            && v.as_bytes().starts_with(b"text/event-stream")
                    });
                    let mut h = ResponseHeader::build(status, Some(headers.len() + 2))?;
                    for (k, v) in headers {
                        if k == http::header::CONNECTION || k == crate::serve::names::REQUEST_ID {
                            continue;
                        }
                        h.append_header(k, v)?;
                    }
                    h.insert_header(crate::serve::names::HDR_IDEMPOTENT_REPLAY, "true")?;
                    h.insert_header(crate::serve::names::HDR_REQUEST_ID, request_id)?;
                    session.write_header(Box::new(h), false).await?;
                    head_sent = true;
                }
                // Ended without a header: nothing to share (never waits on a finished answer).
                None if end != End::Open => return Ok(false),
                None => {}
            }
        }
        if head_sent {
            for c in chunks {
                sent += 1;
                session.write_body(Some(c), false).await?;
            }
            match end {
                End::Complete => {
                    session.write_body(None, true).await?;
                    return Ok(true);
                }
                End::Abandoned => {
                    session.set_keepalive(None);
                    if sse {
                        // A stream says it broke, as the leader's own client would be told.
                        let event = crate::wire::sse::stream_error_event(family, "twinroute");
                        session.write_body(Some(event), true).await?;
                        return Ok(true);
                    }
                    // What was shared is all there is: the connection closes without the
                    // terminating chunk, so the client sees an incomplete answer, not a short one.
                    return pingora::Error::e_explain(
                        pingora::ErrorType::ConnectionClosed,
                        "the keyed answer being shared broke off",
                    );
                }
                End::Open => {}
            }
        }
        if rx.changed().await.is_err() {
            return Ok(head_sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn store() -> MemoryStore {
        MemoryStore::new(&IdempotencyConf {
            ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 16,
        })
    }

    fn key(k: &str) -> ScopedKey {
        ScopedKey {
            scope: [0; 32],
            key: k.to_string(),
        }
    }

    fn lead(c: Claim) -> Arc<Recording> {
        match c {
            Claim::Lead(r) => r,
            Claim::Follow(_) => panic!("followed"),
            Claim::Conflict => panic!("conflict"),
        }
    }

    fn header(status: u16) -> ResponseHeader {
        ResponseHeader::build(status, None).unwrap()
    }

    #[test]
    fn a_duplicate_follows_an_answer_in_flight_and_a_kept_success() {
        let s = store();
        let rec = lead(s.claim(&key("k"), [1; 32]));
        assert!(
            matches!(s.claim(&key("k"), [1; 32]), Claim::Follow(r) if Arc::ptr_eq(r.recording(), &rec))
        );
        assert!(matches!(s.claim(&key("k"), [2; 32]), Claim::Conflict));
        rec.head(&header(200));
        rec.body(&Bytes::from_static(b"{}"));
        rec.finish(true);
        s.settle(&key("k"), &rec, true);
        assert!(
            matches!(s.claim(&key("k"), [1; 32]), Claim::Follow(r) if Arc::ptr_eq(r.recording(), &rec))
        );
    }

    /// The leader's client holds the whole 502 before the leader settles: a retry in that moment
    /// leads anew, and the old leader letting the key go does not take the new leader's entry.
    #[test]
    fn a_retry_after_a_failure_leads_even_before_the_failure_is_settled() {
        let s = store();
        let failed = lead(s.claim(&key("k"), [1; 32]));
        failed.head(&header(502));
        failed.body(&Bytes::from_static(b"{\"error\":{}}"));
        failed.finish(true);
        let retry = lead(s.claim(&key("k"), [1; 32]));
        assert!(!Arc::ptr_eq(&failed, &retry));
        s.settle(&key("k"), &failed, false);
        assert!(
            matches!(s.claim(&key("k"), [1; 32]), Claim::Follow(r) if Arc::ptr_eq(r.recording(), &retry)),
            "the retry's entry was taken by the failed leader's settle"
        );
        // And a stream that broke off (a 200 header, then abandoned) is not followed either.
        retry.head(&header(200));
        retry.finish(false);
        let third = lead(s.claim(&key("k"), [1; 32]));
        assert!(!Arc::ptr_eq(&third, &retry));
    }

    #[test]
    fn a_settled_failure_frees_the_key() {
        let s = store();
        let rec = lead(s.claim(&key("k"), [1; 32]));
        s.settle(&key("k"), &rec, false);
        lead(s.claim(&key("k"), [2; 32]));
    }
}
