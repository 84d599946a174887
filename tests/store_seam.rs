//! The state seams are real: twinroute built in-process with a store of this test's own (a
//! ledger of idempotency claims and a shelf of cached answers, kept in plain maps and reached
//! only through `IdempotencyStore` / `Leader` / `AnswerFeed` and `AnswerCache`). Duplicates
//! follow their leader through that ledger alone, and a cache hit comes off that shelf: what a
//! shared store (Redis) implements is exactly what this one does.

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use pingora::http::ResponseHeader;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use twinroute::decide::cache::CacheKey;
use twinroute::decide::idempotency::{followable, Fingerprint, ScopedKey};
use twinroute::serve::cache::{AnswerCache, Cached};
use twinroute::serve::downstream::Tap;
use twinroute::serve::idempotency::{
    AnswerEvent, AnswerFeed, Claim, Ending, IdempotencyStore, Leader,
};
use twinroute::serve::state::Stores;
use twinroute::testkit::client;

/// One key's answer as events, as a store that serialises them would keep it.
struct Page {
    fingerprint: Fingerprint,
    /// Which lead wrote it (a retry after a failure leads anew under the same key).
    lease: u64,
    events: Vec<AnswerEvent>,
}

impl Page {
    fn followable(&self) -> bool {
        let status = self.events.iter().find_map(|e| match e {
            AnswerEvent::Head((s, _)) => Some(*s),
            _ => None,
        });
        let abandoned = self.events.contains(&AnswerEvent::End(Ending::Abandoned));
        followable(status, abandoned)
    }
}

#[derive(Default)]
struct Ledger {
    pages: Mutex<HashMap<ScopedKey, Page>>,
    /// Bumped at every write: a feed waits on it, never on its leader.
    changed: Mutex<Option<tokio::sync::watch::Sender<u64>>>,
    leases: AtomicUsize,
    leads: AtomicUsize,
    follows: AtomicUsize,
}

impl Ledger {
    fn bump(&self) {
        if let Some(tx) = &*self.changed.lock().unwrap() {
            tx.send_modify(|v| *v += 1);
        }
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        let mut g = self.changed.lock().unwrap();
        g.get_or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// Append to the page `lease` wrote, if it is still there.
    fn write(&self, key: &ScopedKey, lease: u64, event: AnswerEvent) {
        if let Some(p) = self.pages.lock().unwrap().get_mut(key) {
            if p.lease == lease && !matches!(p.events.last(), Some(AnswerEvent::End(_))) {
                p.events.push(event);
            }
        }
        self.bump();
    }
}

struct LedgerStore(Arc<Ledger>);

#[async_trait]
impl IdempotencyStore for LedgerStore {
    async fn claim(&self, key: &ScopedKey, fp: Fingerprint) -> Claim {
        let ledger = &self.0;
        let mut pages = ledger.pages.lock().unwrap();
        if let Some(p) = pages.get(key).filter(|p| p.followable()) {
            if p.fingerprint != fp {
                return Claim::Conflict;
            }
            ledger.follows.fetch_add(1, Ordering::SeqCst);
            return Claim::Follow(Box::new(LedgerFeed {
                ledger: ledger.clone(),
                key: key.clone(),
                lease: p.lease,
                read: 0,
                changed: ledger.subscribe(),
            }));
        }
        let lease = ledger.leases.fetch_add(1, Ordering::SeqCst) as u64;
        pages.insert(
            key.clone(),
            Page {
                fingerprint: fp,
                lease,
                events: Vec::new(),
            },
        );
        ledger.leads.fetch_add(1, Ordering::SeqCst);
        Claim::Lead(Box::new(LedgerLead {
            ledger: ledger.clone(),
            key: key.clone(),
            lease,
            settled: false,
        }))
    }

    fn usage(&self) -> (u64, u64) {
        (self.0.pages.lock().unwrap().len() as u64, 0)
    }
}

struct LedgerLead {
    ledger: Arc<Ledger>,
    key: ScopedKey,
    lease: u64,
    settled: bool,
}

impl Tap for LedgerLead {
    fn head(&self, h: &ResponseHeader) {
        let headers = h.headers.iter().map(|(k, v)| (k.clone(), v.clone()));
        let head = (h.status.as_u16(), headers.collect());
        self.ledger
            .write(&self.key, self.lease, AnswerEvent::Head(head));
    }

    fn body(&self, b: &Bytes) {
        let chunk = AnswerEvent::Chunk(b.clone());
        self.ledger.write(&self.key, self.lease, chunk);
    }

    /// A shared store cannot see who reads: the answer is always finished.
    fn followed(&self) -> bool {
        true
    }
}

impl LedgerLead {
    fn release(&mut self, keep: bool) {
        self.settled = true;
        let mut pages = self.ledger.pages.lock().unwrap();
        if !keep && pages.get(&self.key).is_some_and(|p| p.lease == self.lease) {
            pages.remove(&self.key);
        }
        drop(pages);
        self.ledger.bump();
    }
}

#[async_trait]
impl Leader for LedgerLead {
    fn finish(&self, complete: bool) {
        let end = if complete {
            Ending::Complete
        } else {
            Ending::Abandoned
        };
        self.ledger
            .write(&self.key, self.lease, AnswerEvent::End(end));
    }

    async fn settle(mut self: Box<Self>, keep: bool) {
        self.release(keep);
    }
}

impl Drop for LedgerLead {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(false);
            self.release(false);
        }
    }
}

struct LedgerFeed {
    ledger: Arc<Ledger>,
    key: ScopedKey,
    lease: u64,
    read: usize,
    changed: tokio::sync::watch::Receiver<u64>,
}

#[async_trait]
impl AnswerFeed for LedgerFeed {
    async fn next(&mut self) -> Option<AnswerEvent> {
        loop {
            self.changed.borrow_and_update();
            {
                let pages = self.ledger.pages.lock().unwrap();
                // The page gone (let go after a failure): the answer is lost to this reader.
                let page = pages.get(&self.key).filter(|p| p.lease == self.lease)?;
                if let Some(e) = page.events.get(self.read) {
                    self.read += 1;
                    return Some(e.clone());
                }
            }
            self.changed.changed().await.ok()?;
        }
    }
}

#[derive(Default)]
struct Shelf {
    answers: Mutex<HashMap<CacheKey, Arc<Cached>>>,
    gets: AtomicUsize,
    puts: AtomicUsize,
}

struct ShelfCache(Arc<Shelf>);

#[async_trait]
impl AnswerCache for ShelfCache {
    async fn get(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        self.0.gets.fetch_add(1, Ordering::SeqCst);
        self.0.answers.lock().unwrap().get(key).cloned()
    }

    async fn put(&self, key: CacheKey, entry: Arc<Cached>) {
        self.0.puts.fetch_add(1, Ordering::SeqCst);
        self.0.answers.lock().unwrap().insert(key, entry);
    }

    fn usage(&self) -> (u64, u64) {
        (self.0.answers.lock().unwrap().len() as u64, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_follow_their_leader_and_hits_come_through_the_stores_seams_alone() {
    let a = MockProvider::start("a").await.unwrap();
    // Models `m` (keyed requests) and `c` (cached), both on a.
    let listen = free_port();
    let admin = free_port();
    let yaml = format!(
        "listen: \"127.0.0.1:{listen}\"\nadmin_listen: \"127.0.0.1:{admin}\"\nthreads: 2\nidempotency: {{ttl_s: 60}}\nproviders:\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\n  - name: c\n    offerings: [{{provider: a, model: a-c}}]\n    policy: {{cache: {{ttl_s: 60}}}}\n",
        provider("a", &a.base_url(), ""),
    );
    let cfg = twinroute::config::parse(&yaml, &BTreeMap::<String, String>::new()).unwrap();
    let (ledger, shelf) = (Arc::new(Ledger::default()), Arc::new(Shelf::default()));
    let stores = Stores {
        idempotency: Some(Arc::new(LedgerStore(ledger.clone()))),
        cache: Arc::new(ShelfCache(shelf.clone())),
        verdicts: None,
        fleet: None,
        ledger: Arc::new(twinroute::serve::team::MemoryLedger::default()),
    };
    let (server, shared) = twinroute::serve::server::build_with(cfg, None, stores).unwrap();
    std::thread::spawn(move || server.run_forever());
    for _ in 0..300 {
        if shared.ready.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = format!("http://127.0.0.1:{listen}/v1/chat/completions");

    // Five duplicates of a stream that takes ~300 ms: one leads, four follow, some joining
    // mid-stream; every one gets the whole stream.
    a.set_stream(6, Duration::from_millis(50));
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let tasks: Vec<_> = (0..5u64)
        .map(|i| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 40)).await;
                client::post_json(&url, &[("idempotency-key", "seam-1")], &body)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    assert_eq!(a.request_count(), 1, "duplicates reached the provider");
    assert_eq!(ledger.leads.load(Ordering::SeqCst), 1);
    assert_eq!(ledger.follows.load(Ordering::SeqCst), 4);
    let whole = replies[0].text();
    assert!(whole.contains("tok0") && whole.contains("tok5") && whole.contains("[DONE]"));
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text(),
            whole,
            "a follower's stream differs from the leader's"
        );
    }
    let replays = replies
        .iter()
        .filter(|r| r.header("x-twinroute-idempotent-replay") == Some("true"))
        .count();
    assert_eq!(replays, 4);
    // The success is kept in the ledger: a later duplicate is answered from it.
    let again = client::post_json(&url, &[("idempotency-key", "seam-1")], &body)
        .await
        .unwrap();
    assert_eq!(again.text(), whole);
    assert_eq!(a.request_count(), 1);
    // Another body under the key: the ledger's fingerprint says conflict.
    let other =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "other"}]});
    let conflict = client::post_json(&url, &[("idempotency-key", "seam-1")], &other)
        .await
        .unwrap();
    assert_eq!(conflict.status, 422);

    // The cache: a miss goes upstream and is put on the shelf; the same question again is a
    // hit from the shelf, with no provider call.
    a.set_behavior(Behavior::Ok);
    let ask = json!({"model": "c", "messages": [{"role": "user", "content": "cached?"}]});
    let first = client::post_json(&url, &[], &ask).await.unwrap();
    assert_eq!(first.header("x-twinroute-cache"), Some("miss"));
    // Put once the answer is written whole, which is just after the client has it.
    for _ in 0..100 {
        if shelf.puts.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(shelf.puts.load(Ordering::SeqCst), 1);
    let calls = a.request_count();
    let hit = client::post_json(&url, &[], &ask).await.unwrap();
    assert_eq!(hit.header("x-twinroute-cache"), Some("hit"));
    assert_eq!(a.request_count(), calls, "a hit reached the provider");
    assert_eq!(shelf.gets.load(Ordering::SeqCst), 2);
    let answer = |r: &client::Reply| r.json()["choices"][0]["message"]["content"].clone();
    assert_eq!(answer(&hit), answer(&first));
}
