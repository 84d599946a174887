//! The fleet: what replicas share through Redis (`shared_state`). Health verdicts travel as a
//! stream every replica reads (`{ns}:events`) and a snapshot a joining replica reads first
//! (`{ns}:verdicts`, one field per breaker, cooldown, gone model or drain); failures that count
//! toward a breaker are counted in one counter per breaker (`{ns}:fail:…`), and a half-open
//! breaker's one probation is a lease (`{ns}:probation:…`, `SET NX PX`). All of them sit on one
//! Cluster slot (the `{ns}` hash tag), so a Cluster works as one node does.
//!
//! Idempotency keys (`idempotency`) and the prompt cache (`cache`) live there too when they are
//! on. Nothing on a plain request's path waits on Redis; a probation claim (once per cooldown),
//! an idempotency claim and a cache lookup do, each bounded by `timeout_ms`. `Fleet` is the `VerdictBus`: what health tells it is
//! queued and written by the background service (`service`), which also reads the stream,
//! watches the link and reconnects. While Redis is down every replica runs on its own state,
//! as without a fleet; when it is back, the replica republishes what it learned meanwhile.

mod cache;
mod idempotency;
mod ledger;
mod service;

pub use cache::FleetCache;
pub use idempotency::FleetIdempotency;
pub use ledger::FleetLedger;
pub use service::FleetService;

use crate::health::verdict::{Subject, Verdict, VerdictBus};
use crate::model::SharedStateConf;
use crate::observe::metrics::METRICS;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, Notify};

/// Work health hands the fleet, done in the background in order.
#[derive(Debug)]
enum Outgoing {
    Publish(Verdict),
    Count(Subject, u32),
    Clear(Subject),
}

/// How many verdicts and counts may wait for Redis; past it they are dropped (health keeps
/// working on local state, and a rejoin republishes what matters).
const OUTBOX: usize = 4096;

/// A connection to the fleet's Redis, single node or Cluster; cheap to clone (both multiplex).
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    async fn query<T: redis::FromRedisValue>(self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Link::Single(mut c) => cmd.query_async(&mut c).await,
            Link::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }
}

/// Whether Redis answers, since when, and its last error: `/status`'s `shared_state`.
struct LinkState {
    since: SystemTime,
    last_error: Option<String>,
}

pub struct Fleet {
    conf: SharedStateConf,
    /// This process among the replicas (`HOSTNAME`, the pid and a random tag): who drained.
    replica: String,
    link: ArcSwapOption<Link>,
    up: AtomicBool,
    /// The warning that Redis cannot be reached was logged (once per outage, the first one at
    /// start included).
    said_down: AtomicBool,
    /// The reader applied the snapshot and follows the stream.
    following: AtomicBool,
    state: Mutex<LinkState>,
    outbox: mpsc::Sender<Outgoing>,
    /// Taken by the service that writes it out.
    outbox_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Woken when a call failed, so the watcher checks the link at once.
    trouble: Notify,
}

impl Fleet {
    pub fn new(conf: SharedStateConf) -> Arc<Fleet> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "twinroute".into());
        let replica = format!(
            "{host}/{}/{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        METRICS.shared_state_up.set(0);
        Arc::new(Fleet {
            conf,
            replica,
            link: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            said_down: AtomicBool::new(false),
            following: AtomicBool::new(false),
            state: Mutex::new(LinkState {
                since: SystemTime::now(),
                last_error: Some("not connected yet".into()),
            }),
            outbox: tx,
            outbox_rx: Mutex::new(Some(rx)),
            trouble: Notify::new(),
        })
    }

    /// This replica's name in the fleet.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A key under the namespace, on the namespace's one Cluster slot.
    fn key(&self, rest: &str) -> String {
        format!("{{{}}}:{rest}", self.conf.namespace)
    }

    /// A per-breaker key: the subject hashed (short, and no URL or model name in a key).
    fn subject_key(&self, kind: &str, at: &Subject) -> String {
        let digest = Sha256::digest(at.key().as_bytes());
        self.key(&format!("{kind}:{}", hex::encode(&digest[..12])))
    }

    /// One Redis call, bounded by `timeout_ms`; `None` when Redis is down (not even tried),
    /// fails or is slow, which is then counted, logged once per transition and watched.
    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Option<T> {
        if !self.up() {
            return None;
        }
        self.call_even_if_down(op, cmd).await
    }

    async fn call_even_if_down<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Option<T> {
        let link = self.link.load_full()?;
        let link = Link::clone(&link);
        match tokio::time::timeout(self.conf.timeout, link.query(cmd)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(op, &format!("no answer within {:?}", self.conf.timeout));
                None
            }
        }
    }

    /// A call failed: count it, and mark Redis down (once per transition).
    fn failed(&self, op: &'static str, why: &str) {
        // The URL may carry a password, and a client error may quote it: never logged.
        let url = self.conf.url.expose();
        let why = &why.replace(url, "<redis_url>");
        METRICS.shared_state_errors.with_label_values(&[op]).inc();
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up {
            METRICS.shared_state_up.set(0);
        }
        if !self.said_down.swap(true, Ordering::AcqRel) {
            log::warn!(
                "shared state: Redis is unreachable ({op}: {why}); serving on this replica's own state"
            );
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if was_up {
            s.since = SystemTime::now();
        }
        s.last_error = Some(format!("{op}: {why}"));
        drop(s);
        self.trouble.notify_one();
    }

    /// Redis answered again (or for the first time).
    fn recovered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            METRICS.shared_state_up.set(1);
            self.said_down.store(false, Ordering::Release);
            log::warn!(
                "shared state: Redis at namespace {} is reachable; sharing with the fleet",
                self.conf.namespace
            );
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.since = SystemTime::now();
        }
    }

    fn queue(&self, work: Outgoing) {
        // Full or closed: dropped, never waited for (health is on a request's path).
        let _ = self.outbox.try_send(work);
    }

    /// `/status`'s `shared_state`.
    pub fn status_json(&self) -> serde_json::Value {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        serde_json::json!({
            "backend": if self.conf.cluster { "redis-cluster" } else { "redis" },
            "namespace": self.conf.namespace,
            "replica": self.replica,
            "up": self.up(),
            "following": self.up() && self.following.load(Ordering::Acquire),
            "since_unix_s": unix(s.since),
            "last_error": s.last_error,
        })
    }
}

#[async_trait]
impl VerdictBus for Fleet {
    fn publish(&self, verdict: Verdict) {
        self.queue(Outgoing::Publish(verdict));
    }

    fn count_failure(&self, at: Subject, threshold: u32) {
        self.queue(Outgoing::Count(at, threshold));
    }

    fn clear_failures(&self, at: Subject) {
        self.queue(Outgoing::Clear(at));
    }

    async fn claim_probation(&self, at: &Subject, hold: Duration) -> bool {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.subject_key("probation", at))
            .arg(&self.replica)
            .arg("NX")
            .arg("PX")
            .arg(hold.as_millis().max(1) as u64);
        // Nil: another replica holds it. No answer: probe alone, as without a fleet.
        match self.call::<Option<String>>("probation", &cmd).await {
            Some(reply) => reply.is_some(),
            None => true,
        }
    }
}
