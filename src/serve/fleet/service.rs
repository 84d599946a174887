//! The fleet's background work: connect (and reconnect, with capped backoff), watch that Redis
//! answers, write out what health queued (verdicts to the stream and the snapshot, failure
//! counts, resets), and read the other replicas' verdicts into this replica's health. On every
//! (re)connection the reader first applies the snapshot, then this replica republishes what it
//! holds, then it follows the stream from where the snapshot was taken.

use super::{Fleet, Link, Outgoing};
use crate::health::verdict::{Verdict, VerdictBus};
use crate::serve::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::streams::{StreamRangeReply, StreamReadReply};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How long the reader blocks on the stream before asking again.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a link that is up is checked.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The stream keeps about this many verdicts (a joining replica reads the snapshot instead).
const STREAM_LEN: u32 = 10_000;
/// A failure count with no new failure for this long starts again from zero.
const COUNT_WINDOW: Duration = Duration::from_secs(60);

pub struct FleetService {
    pub fleet: Arc<Fleet>,
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(outbox) = self
            .fleet
            .outbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let (fleet, shared) = (self.fleet.clone(), self.shared.clone());
        let writer = tokio::spawn(write_out(fleet.clone(), shared.clone(), outbox));
        let reader = tokio::spawn(read_in(fleet.clone(), shared.clone()));
        tokio::select! {
            _ = watch(&fleet, &shared) => {}
            _ = shutdown.changed() => {}
        }
        writer.abort();
        reader.abort();
    }
}

/// The request-path link: made once (a Cluster's needs its topology first), then kept up by
/// pinging it, marking Redis up or down on each transition.
async fn watch(fleet: &Fleet, shared: &Shared) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if fleet.link.load().is_none() {
            match connect(fleet, fleet.conf.timeout).await {
                Ok(link) => fleet.link.store(Some(Arc::new(link))),
                Err(e) => fleet.failed("connect", &e),
            }
        }
        let pong: Option<String> = fleet.call_even_if_down("ping", &redis::cmd("PING")).await;
        let wait = if pong.is_some() {
            // The fleet's scope secret before anything is shared: keys made under this
            // replica's own secret would match no other replica's.
            if shared.fleet_scope.get().is_none() {
                if let Some(secret) = fleet_scope(fleet).await {
                    let _ = shared.fleet_scope.set(secret);
                }
            }
            fleet.recovered();
            backoff = Duration::from_millis(100);
            WATCH_EVERY
        } else {
            backoff = (backoff * 2).min(MAX_BACKOFF);
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = fleet.trouble.notified() => {}
        }
    }
}

/// The fleet's scope secret (`decide::idempotency::ScopeSecret`): the first replica to ask
/// makes it (32 random bytes), every other reads that one.
async fn fleet_scope(fleet: &Fleet) -> Option<crate::decide::idempotency::ScopeSecret> {
    let key = fleet.key("scope-secret");
    let mut set = redis::cmd("SET");
    set.arg(&key)
        .arg(hex::encode(rand::random::<[u8; 32]>()))
        .arg("NX");
    let _: Option<Option<String>> = fleet.call_even_if_down("scope", &set).await;
    let hexed: String = fleet
        .call_even_if_down("scope", redis::cmd("GET").arg(&key))
        .await?;
    let bytes: [u8; 32] = hex::decode(hexed).ok()?.try_into().ok()?;
    Some(crate::decide::idempotency::ScopeSecret::new(bytes))
}

/// A new link, each call bounded by `response`.
async fn connect(fleet: &Fleet, response: Duration) -> Result<Link, String> {
    let url = fleet.conf.url.expose();
    // Errors from the client may quote the URL, which may carry a password: never shown.
    let hide = |e: redis::RedisError| format!("{:?}", e.kind());
    let connect_timeout = fleet.conf.timeout.max(Duration::from_millis(500));
    if fleet.conf.cluster {
        let client = redis::cluster::ClusterClientBuilder::new(vec![url])
            .connection_timeout(connect_timeout)
            .response_timeout(response)
            .build()
            .map_err(hide)?;
        let conn = tokio::time::timeout(connect_timeout * 4, client.get_async_connection())
            .await
            .map_err(|_| "connecting to the cluster timed out".to_string())?
            .map_err(hide)?;
        return Ok(Link::Cluster(conn));
    }
    let client = redis::Client::open(url).map_err(hide)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(hide)?;
    Ok(Link::Single(conn))
}

/// Write out what health queued, in order. While Redis is down the work is dropped: health
/// runs on local state, and the reader republishes what matters once Redis is back.
async fn write_out(
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    mut outbox: tokio::sync::mpsc::Receiver<Outgoing>,
) {
    while let Some(work) = outbox.recv().await {
        match work {
            Outgoing::Publish(v) => publish(&fleet, &v).await,
            Outgoing::Count(at, threshold) => {
                let key = fleet.subject_key("fail", &at);
                let Some(n) = fleet
                    .call::<u64>("count", redis::cmd("INCR").arg(&key))
                    .await
                else {
                    continue;
                };
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&key).arg(COUNT_WINDOW.as_millis() as u64);
                let _: Option<i64> = fleet.call("count", &expire).await;
                if n >= u64::from(threshold) {
                    // The fleet's count is in: this replica opens the breaker and says so.
                    let _: Option<i64> = fleet.call("count", redis::cmd("DEL").arg(&key)).await;
                    let rt = shared.runtime.load();
                    if rt.health.trip(&at, Instant::now()) {
                        log::warn!(
                            "provider {}: breaker opened by the fleet's count ({n} failures of {}{})",
                            at.provider,
                            at.endpoint,
                            at.model.as_deref().map(|m| format!(", model {m}")).unwrap_or_default()
                        );
                    }
                }
            }
            Outgoing::Clear(at) => {
                let key = fleet.subject_key("fail", &at);
                let _: Option<i64> = fleet.call("count", redis::cmd("DEL").arg(&key)).await;
            }
        }
    }
}

/// A verdict to the stream (for the replicas reading it now) and to the snapshot (for those
/// joining later).
async fn publish(fleet: &Fleet, v: &Verdict) {
    let Ok(json) = serde_json::to_string(v) else {
        return;
    };
    let mut add = redis::cmd("XADD");
    add.arg(fleet.key("events"))
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_LEN)
        .arg("*")
        .arg("from")
        .arg(&fleet.replica)
        .arg("v")
        .arg(&json);
    if fleet.call::<String>("publish", &add).await.is_none() {
        return;
    }
    let (slot, ends) = v.slot();
    let mut keep = if ends {
        redis::cmd("HDEL")
    } else {
        redis::cmd("HSET")
    };
    keep.arg(fleet.key("verdicts")).arg(&slot);
    if !ends {
        keep.arg(&json);
    }
    let _: Option<i64> = fleet.call("publish", &keep).await;
}

/// Read the other replicas' verdicts into this replica's health, on a link of its own (a
/// blocking read would hold up every call queued behind it on a shared one).
async fn read_in(fleet: Arc<Fleet>, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if !fleet.up() {
            // The watcher reconnects; follow again as soon as it has.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let result = follow(&fleet, &shared).await;
        fleet.following.store(false, Ordering::Release);
        if let Err(e) = result {
            fleet.failed("subscribe", &e);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's worth of reading: the snapshot, this replica's own verdicts republished,
/// then the stream from where the snapshot was taken, until the link fails.
async fn follow(fleet: &Fleet, shared: &Shared) -> Result<(), String> {
    // Returns only with the link's error: it reads until then.
    let link = connect(fleet, READ_BLOCK * 3).await?;
    let events = fleet.key("events");
    let hide = |e: redis::RedisError| format!("{:?}", e.kind());
    let mut range = redis::cmd("XREVRANGE");
    range.arg(&events).arg("+").arg("-").arg("COUNT").arg(1);
    let last: StreamRangeReply = link.clone().query(&range).await.map_err(hide)?;
    let mut from = last.ids.first().map_or("0-0".to_string(), |e| e.id.clone());
    let mut all = redis::cmd("HGETALL");
    all.arg(fleet.key("verdicts"));
    let snapshot: HashMap<String, String> = link.clone().query(&all).await.map_err(hide)?;
    let now = Instant::now();
    let wall_now = SystemTime::now();
    let rt = shared.runtime.load();
    let mut expired = Vec::new();
    for (slot, json) in &snapshot {
        match serde_json::from_str::<Verdict>(json) {
            Ok(v) if v.until().is_some_and(|u| u <= wall_now) => expired.push(slot.clone()),
            Ok(v) => {
                rt.health.receive(&v, now);
            }
            Err(_) => expired.push(slot.clone()),
        }
    }
    if !expired.is_empty() {
        let mut del = redis::cmd("HDEL");
        del.arg(fleet.key("verdicts")).arg(&expired);
        let _: Option<i64> = fleet.call("publish", &del).await;
    }
    // What this replica learned while it could not tell anyone.
    for v in rt.health.verdicts_now(now) {
        fleet.publish(v);
    }
    drop(rt);
    fleet.following.store(true, Ordering::Release);
    loop {
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&events)
            .arg(&from);
        let reply: Option<StreamReadReply> = link.clone().query(&read).await.map_err(hide)?;
        let Some(reply) = reply else { continue };
        let rt = shared.runtime.load();
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            from = entry.id.clone();
            if entry.get::<String>("from").as_deref() == Some(fleet.replica()) {
                continue;
            }
            let Some(json) = entry.get::<String>("v") else {
                continue;
            };
            match serde_json::from_str::<Verdict>(&json) {
                Ok(v) => {
                    rt.health.receive(&v, Instant::now());
                }
                Err(e) => log::debug!("shared state: a verdict this version cannot read: {e}"),
            }
        }
    }
}
