//! The in-process idempotency store: moka, weighted by bytes, least recently used out first,
//! entries kept `ttl` after their answer completed. A key's entry is the leader's `Recording`
//! itself; a follower's feed reads it through a cursor, woken by the recording's own watch.

use super::{AnswerEvent, AnswerFeed, Claim, IdempotencyStore, Leader};
use crate::decide::idempotency::{Fingerprint, ScopedKey};
use crate::model::IdempotencyConf;
use crate::observe::metrics::METRICS;
use crate::serve::downstream::Tap;
use crate::serve::recording::{Cursor, Recording};
use async_trait::async_trait;
use bytes::Bytes;
use moka::ops::compute::Op;
use pingora::http::ResponseHeader;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One key's answer: in flight, or kept.
struct Entry {
    fingerprint: Fingerprint,
    /// Duplicates holding a feed of this answer now.
    followers: AtomicUsize,
    answer: Recording,
}

type Entries = moka::sync::Cache<ScopedKey, Arc<Entry>>;

pub struct MemoryStore {
    entries: Entries,
    max_entry_bytes: usize,
}

impl MemoryStore {
    pub fn new(conf: &IdempotencyConf) -> MemoryStore {
        let entries = moka::sync::Cache::builder()
            .max_capacity(conf.max_bytes)
            .weigher(|_k: &ScopedKey, v: &Arc<Entry>| v.answer.weight())
            .time_to_live(conf.ttl)
            .eviction_listener(|_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    METRICS.idempotency_evictions.inc();
                }
            })
            .build();
        MemoryStore {
            entries,
            max_entry_bytes: conf.max_entry_bytes,
        }
    }

    /// The claim, decided inside moka's one-compute-per-key step.
    fn claim_now(&self, key: &ScopedKey, fp: Fingerprint) -> Claim {
        // Every branch below sets `claim`.
        let mut claim = Claim::Conflict;
        self.entries
            .entry(key.clone())
            .and_compute_with(|current| match current {
                Some(e) if e.value().answer.followable() => {
                    let entry = e.into_value();
                    if entry.fingerprint == fp {
                        claim = Claim::Follow(Box::new(MemoryFeed::new(entry)));
                    }
                    Op::Nop
                }
                // Free, or held by an answer already known to be a failure, which is not kept:
                // this request leads, in place of that entry.
                _ => {
                    let entry = Arc::new(Entry {
                        fingerprint: fp,
                        followers: AtomicUsize::new(0),
                        answer: Recording::new(self.max_entry_bytes),
                    });
                    claim = Claim::Lead(Box::new(MemoryLead {
                        entry: entry.clone(),
                        key: key.clone(),
                        entries: self.entries.clone(),
                        settled: false,
                    }));
                    Op::Put(entry)
                }
            });
        claim
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, key: &ScopedKey, fp: Fingerprint) -> Claim {
        self.claim_now(key, fp)
    }

    fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

struct MemoryLead {
    entry: Arc<Entry>,
    key: ScopedKey,
    entries: Entries,
    settled: bool,
}

impl MemoryLead {
    fn release(&mut self, keep: bool) {
        self.settled = true;
        let entry = &self.entry;
        self.entries
            .entry(self.key.clone())
            .and_compute_with(|current| match current {
                // Put again: weighed with its answer, and kept `ttl` from now.
                Some(e) if Arc::ptr_eq(e.value(), entry) => {
                    if keep {
                        Op::Put(entry.clone())
                    } else {
                        Op::Remove
                    }
                }
                // Evicted while in flight: kept all the same, as an insert would.
                None if keep => Op::Put(entry.clone()),
                _ => Op::Nop,
            });
    }
}

impl Tap for MemoryLead {
    fn head(&self, h: &ResponseHeader) {
        self.entry.answer.head(h);
    }

    fn body(&self, b: &Bytes) {
        self.entry.answer.body(b);
    }

    /// Duplicates read the answer: the leader finishes it for them even when its own client
    /// leaves.
    fn followed(&self) -> bool {
        self.entry.followers.load(Ordering::Acquire) > 0
    }
}

#[async_trait]
impl Leader for MemoryLead {
    fn finish(&self, complete: bool) {
        self.entry.answer.finish(complete);
    }

    /// Kept only when the store's own copy is whole (it let go of one over `max_entry_bytes`).
    async fn settle(mut self: Box<Self>, keep: bool) {
        let whole = self.entry.answer.complete();
        self.release(keep && whole);
    }
}

impl Drop for MemoryLead {
    fn drop(&mut self) {
        if !self.settled {
            self.entry.answer.finish(false);
            self.release(false);
        }
    }
}

/// A duplicate's read of the answer: counted as a follower from the moment the claim hands it
/// out (inside the per-key step), so a leader whose client leaves in the instant before the
/// follower starts reading still finishes the answer for it; uncounted when dropped.
struct MemoryFeed {
    entry: Arc<Entry>,
    cursor: Cursor,
    changed: tokio::sync::watch::Receiver<u64>,
}

impl MemoryFeed {
    fn new(entry: Arc<Entry>) -> MemoryFeed {
        entry.followers.fetch_add(1, Ordering::AcqRel);
        let changed = entry.answer.subscribe();
        MemoryFeed {
            entry,
            cursor: Cursor::default(),
            changed,
        }
    }
}

impl Drop for MemoryFeed {
    fn drop(&mut self) {
        self.entry.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl AnswerFeed for MemoryFeed {
    async fn next(&mut self) -> Option<AnswerEvent> {
        loop {
            // Seen before reading, so a change after the read wakes the wait below.
            self.changed.borrow_and_update();
            if let Some(e) = self.entry.answer.take(&mut self.cursor) {
                return Some(e);
            }
            self.changed.changed().await.ok()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::idempotency::Ending;
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

    fn lead(c: Claim) -> Box<dyn Leader> {
        match c {
            Claim::Lead(r) => r,
            Claim::Follow(_) => panic!("followed"),
            Claim::Conflict => panic!("conflict"),
        }
    }

    fn follow(c: Claim) -> Box<dyn AnswerFeed> {
        match c {
            Claim::Follow(f) => f,
            Claim::Lead(_) => panic!("led"),
            Claim::Conflict => panic!("conflict"),
        }
    }

    fn header(status: u16) -> ResponseHeader {
        ResponseHeader::build(status, None).unwrap()
    }

    #[tokio::test]
    async fn a_duplicate_follows_an_answer_in_flight_and_a_kept_success() {
        let s = store();
        let rec = lead(s.claim_now(&key("k"), [1; 32]));
        let mut live = follow(s.claim_now(&key("k"), [1; 32]));
        assert!(rec.followed());
        assert!(matches!(s.claim_now(&key("k"), [2; 32]), Claim::Conflict));
        rec.head(&header(200));
        rec.body(&Bytes::from_static(b"{}"));
        rec.finish(true);
        rec.settle(true).await;
        let mut kept = follow(s.claim_now(&key("k"), [1; 32]));
        for feed in [&mut live, &mut kept] {
            assert!(matches!(
                feed.next().await,
                Some(AnswerEvent::Head((200, _)))
            ));
            assert_eq!(
                feed.next().await,
                Some(AnswerEvent::Chunk(Bytes::from_static(b"{}")))
            );
            assert_eq!(feed.next().await, Some(AnswerEvent::End(Ending::Complete)));
        }
    }

    /// The leader's client holds the whole 502 before the leader settles: a retry in that moment
    /// leads anew, and the old leader letting the key go does not take the new leader's entry.
    #[tokio::test]
    async fn a_retry_after_a_failure_leads_even_before_the_failure_is_settled() {
        let s = store();
        let failed = lead(s.claim_now(&key("k"), [1; 32]));
        failed.head(&header(502));
        failed.body(&Bytes::from_static(b"{\"error\":{}}"));
        failed.finish(true);
        let retry = lead(s.claim_now(&key("k"), [1; 32]));
        failed.settle(false).await;
        // The retry's entry is still there: a duplicate follows it.
        let mut feed = follow(s.claim_now(&key("k"), [1; 32]));
        // And a stream that broke off (a 200 header, then abandoned) is not followed either.
        retry.head(&header(200));
        retry.finish(false);
        lead(s.claim_now(&key("k"), [1; 32]));
        // Its follower, which had read nothing yet, is told it broke off before any of it.
        assert_eq!(feed.next().await, Some(AnswerEvent::End(Ending::Abandoned)));
    }

    #[tokio::test]
    async fn a_settled_failure_frees_the_key() {
        let s = store();
        let rec = lead(s.claim_now(&key("k"), [1; 32]));
        rec.settle(false).await;
        lead(s.claim_now(&key("k"), [2; 32]));
    }

    /// A leader dropped without settling (an early return, a panic) lets the key go, and a
    /// duplicate waiting on it is told the answer broke off before its header.
    #[tokio::test]
    async fn a_dropped_leader_frees_the_key_and_its_followers() {
        let s = store();
        let rec = lead(s.claim_now(&key("k"), [1; 32]));
        let mut feed = follow(s.claim_now(&key("k"), [1; 32]));
        drop(rec);
        assert_eq!(feed.next().await, Some(AnswerEvent::End(Ending::Abandoned)));
        lead(s.claim_now(&key("k"), [1; 32]));
    }
}
