//! Idempotency keys across the fleet: a key claimed on one replica is led there, and a duplicate
//! on any replica waits for the leader's answer in Redis and gets the same bytes. One hash per
//! key (`{ns}:idem:<hash of scope and key>`): the fingerprint, the leader's lease (renewed while
//! it runs, so a leader that dies lets the key go), and once the answer is complete its status,
//! headers and body, kept `idempotency.ttl_s`. Claim and settle are Lua scripts, atomic per key;
//! a settle touches only its own lease. A failure is never kept: the leader lets the key go, and
//! a follower then answers "retry" as it does in one process.
//!
//! Redis down or slow: the claim falls back to this replica's in-process store
//! (`memory::MemoryStore`), so keys still hold per replica.

use super::Fleet;
use crate::decide::idempotency::{Fingerprint, ScopedKey};
use crate::model::IdempotencyConf;
use crate::serve::downstream::Tap;
use crate::serve::idempotency::memory::MemoryStore;
use crate::serve::idempotency::{AnswerEvent, AnswerFeed, Claim, Ending, IdempotencyStore, Leader};
use crate::serve::recording::Recording;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How long a leader's claim lasts without renewal; renewed every third of it while it runs.
const LEASE: Duration = Duration::from_secs(10);

/// Lead when the key is free, follow when it holds the same request, else conflict. KEYS[1] the
/// key; ARGV fingerprint, lease token, lease ms.
const CLAIM: &str = r"
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'lease', ARGV[2], 'state', 'running')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 'lead'
end
if fp ~= ARGV[1] then return 'conflict' end
return 'follow'
";

/// Keep the answer, only under this leader's own lease. ARGV lease, ttl ms, status, head, body.
const KEEP: &str = r"
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[3], 'head', ARGV[4], 'body', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Let the key go, or renew its lease (ARGV[2] ms), only under this leader's own lease.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
";

pub struct FleetIdempotency {
    fleet: Arc<Fleet>,
    local: MemoryStore,
    ttl: Duration,
    max_entry_bytes: usize,
}

impl FleetIdempotency {
    pub fn new(fleet: Arc<Fleet>, conf: &IdempotencyConf) -> FleetIdempotency {
        FleetIdempotency {
            fleet,
            local: MemoryStore::new(conf),
            ttl: conf.ttl,
            max_entry_bytes: conf.max_entry_bytes,
        }
    }

    fn redis_key(&self, key: &ScopedKey) -> String {
        let mut h = Sha256::new();
        h.update(key.scope);
        h.update(key.key.as_bytes());
        self.fleet
            .key(&format!("idem:{}", hex::encode(&h.finalize()[..16])))
    }
}

#[async_trait]
impl IdempotencyStore for FleetIdempotency {
    async fn claim(&self, key: &ScopedKey, fp: Fingerprint) -> Claim {
        let rkey = self.redis_key(key);
        let lease = format!("{}/{:032x}", self.fleet.replica(), rand::random::<u128>());
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM)
            .arg(1)
            .arg(&rkey)
            .arg(hex::encode(fp))
            .arg(&lease)
            .arg(LEASE.as_millis() as u64);
        match self
            .fleet
            .call::<String>("idempotency", &cmd)
            .await
            .as_deref()
        {
            Some("lead") => Claim::Lead(Box::new(FleetLead::new(
                self.fleet.clone(),
                rkey,
                lease,
                self.ttl,
                self.max_entry_bytes,
            ))),
            Some("follow") => Claim::Follow(Box::new(FleetFeed {
                fleet: self.fleet.clone(),
                key: rkey,
                pending: Vec::new(),
                wait: Duration::from_millis(10),
            })),
            Some(_) => Claim::Conflict,
            // Redis cannot answer: keys hold on this replica alone.
            None => self.local.claim(key, fp).await,
        }
    }

    fn usage(&self) -> (u64, u64) {
        self.local.usage()
    }
}

/// The leader: records its answer here, keeps it in Redis when it settles.
struct FleetLead {
    fleet: Arc<Fleet>,
    key: String,
    lease: String,
    ttl: Duration,
    answer: Recording,
    renew: Option<tokio::task::JoinHandle<()>>,
}

impl FleetLead {
    fn new(
        fleet: Arc<Fleet>,
        key: String,
        lease: String,
        ttl: Duration,
        max_bytes: usize,
    ) -> FleetLead {
        let renew = {
            let (fleet, key, lease) = (fleet.clone(), key.clone(), lease.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE / 3).await;
                    let _: Option<i64> = fleet
                        .call("idempotency", &release(&key, &lease, LEASE))
                        .await;
                }
            })
        };
        FleetLead {
            fleet,
            key,
            lease,
            ttl,
            answer: Recording::new(max_bytes),
            renew: Some(renew),
        }
    }

    fn stop_renewing(&mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
    }
}

/// The RELEASE script: renew for `ms`, or (zero) let the key go.
fn release(key: &str, lease: &str, ms: Duration) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RELEASE)
        .arg(1)
        .arg(key)
        .arg(lease)
        .arg(ms.as_millis() as u64);
    cmd
}

impl Tap for FleetLead {
    fn head(&self, h: &ResponseHeader) {
        self.answer.head(h);
    }

    fn body(&self, b: &Bytes) {
        self.answer.body(b);
    }

    /// Followers elsewhere cannot be seen: the answer is always finished for them.
    fn followed(&self) -> bool {
        true
    }
}

#[async_trait]
impl Leader for FleetLead {
    fn finish(&self, complete: bool) {
        self.answer.finish(complete);
    }

    async fn settle(mut self: Box<Self>, keep: bool) {
        self.stop_renewing();
        let whole = match (keep, self.answer.body_bytes()) {
            (true, Some(body)) => Some(body),
            _ => None,
        };
        let cmd = match (whole, head_of(&self.answer)) {
            (Some(body), Some((status, head))) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(KEEP)
                    .arg(1)
                    .arg(&self.key)
                    .arg(&self.lease)
                    .arg(self.ttl.as_millis() as u64)
                    .arg(status)
                    .arg(head)
                    .arg(body);
                cmd
            }
            _ => release(&self.key, &self.lease, Duration::ZERO),
        };
        let _: Option<i64> = self.fleet.call("idempotency", &cmd).await;
        // Settled: nothing left for Drop to let go.
        self.lease.clear();
    }
}

impl Drop for FleetLead {
    /// Dropped unsettled (an early exit): let the key go, so no duplicate waits for nothing.
    fn drop(&mut self) {
        self.stop_renewing();
        if self.lease.is_empty() {
            return;
        }
        self.answer.finish(false);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (fleet, cmd) = (
                self.fleet.clone(),
                release(&self.key, &self.lease, Duration::ZERO),
            );
            rt.spawn(async move {
                let _: Option<i64> = fleet.call("idempotency", &cmd).await;
            });
        }
    }
}

/// The recorded header as stored: `name: value\r\n` lines, as HTTP/1 writes them (a name has no
/// colon, a value no CR or LF).
fn head_of(answer: &Recording) -> Option<(u16, Vec<u8>)> {
    let mut cursor = Default::default();
    let Some(AnswerEvent::Head((status, headers))) = answer.take(&mut cursor) else {
        return None;
    };
    let mut out = Vec::new();
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Some((status, out))
}

fn parse_head(raw: &[u8]) -> Vec<(http::HeaderName, http::HeaderValue)> {
    raw.split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let at = line.iter().position(|b| *b == b':')?;
            let name = http::HeaderName::from_bytes(&line[..at]).ok()?;
            let value = http::HeaderValue::from_bytes(line[at + 1..].trim_ascii_start()).ok()?;
            Some((name, value))
        })
        .collect()
}

/// A duplicate's read: waits (polling, backing off to 100 ms) until the leader's answer is kept,
/// then sends it whole; the key gone or Redis lost ends it without an answer.
struct FleetFeed {
    fleet: Arc<Fleet>,
    key: String,
    /// Events read but not yet handed out (the rest of a kept answer).
    pending: Vec<AnswerEvent>,
    wait: Duration,
}

#[async_trait]
impl AnswerFeed for FleetFeed {
    async fn next(&mut self) -> Option<AnswerEvent> {
        if let Some(e) = self.pending.pop() {
            return Some(e);
        }
        loop {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&self.key)
                .arg("state")
                .arg("status")
                .arg("head")
                .arg("body");
            type Row = (
                Option<String>,
                Option<u16>,
                Option<Vec<u8>>,
                Option<Vec<u8>>,
            );
            let row: Row = self.fleet.call("idempotency", &cmd).await?;
            match row {
                (Some(state), Some(status), Some(head), Some(body)) if state == "done" => {
                    // Handed out from the end.
                    self.pending = vec![
                        AnswerEvent::End(Ending::Complete),
                        AnswerEvent::Chunk(Bytes::from(body)),
                    ];
                    return Some(AnswerEvent::Head((status, parse_head(&head))));
                }
                (Some(_), ..) => {
                    tokio::time::sleep(self.wait).await;
                    self.wait = (self.wait * 2).min(Duration::from_millis(100));
                }
                // Let go (a failure, a leader gone): no answer to share.
                (None, ..) => return None,
            }
        }
    }
}
