//! The durable background queue: jobs kept in an embedded database under `state_dir` (redb),
//! and the in-memory index the request path and the drain (`serve::drain`) read.
//!
//! A background request that found no capacity becomes a job: its body and the headers that
//! route it are written (and fsynced) before the client hears 202, so a crash loses none. The
//! drain runs due jobs oldest first, at most `queue.drain_per_s` starts a second, by sending each
//! to this process's own data-plane listener with a per-process job token: the job goes through
//! exactly the path a client request does (routing, translation, health, the attempt loop), and
//! the proxy answers a job that still finds no capacity with a marker instead of queueing it
//! again. The answer is stored as the provider gave it and served at the job's location.
//!
//! The decisions (admission, order, retry delay, deadline) are `decide::queue`; the resource's
//! JSON and the headers a job keeps are `wire::job`. `JobStore` is the storage seam: a store
//! shared across replicas is a second implementation.

use crate::decide::queue::{self as decide, Waiting};
use crate::model::QueueConf;
use crate::observe::metrics::METRICS;
use crate::wire::job::{self, JobStatus, JobView};
use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The drain's own requests carry this process's job token (never stored, never logged): the
/// proxy runs them without a client token and never queues them again.
pub const JOB_TOKEN_HEADER: &str = "x-twinroute-job-token";
/// The job a request is, on the drain's requests and on every answer a job gives.
pub const JOB_HEADER: &str = "x-twinroute-job";
/// On the proxy's answer to a drain request that still found no capacity: try again later.
pub const NO_CAPACITY_HEADER: &str = "x-twinroute-queue";

/// What a job is, as stored: everything needed to run it again after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMeta {
    pub id: String,
    pub created_ms: u64,
    pub deadline_ms: u64,
    /// The client's endpoint (`/v1/chat/completions`, ...).
    pub path: String,
    /// The request headers that route it (`wire::job::kept_request_header`).
    pub headers: Vec<(String, String)>,
    /// The client's identity, hashed (`decide::idempotency::scope`): only it may read the job.
    pub scope: [u8; 32],
    pub state: Stored,
}

/// Where a job stands, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Stored {
    Queued,
    /// The answer as the provider gave it (its body is stored beside).
    Succeeded {
        status: u16,
        headers: Vec<(String, String)>,
        finished_ms: u64,
    },
    /// Failed with its reason (past its deadline).
    Failed {
        message: String,
        finished_ms: u64,
    },
}

/// The storage seam: jobs by arrival number. Writes are durable when they return.
pub trait JobStore: Send + Sync {
    fn insert(&self, seq: u64, meta: &JobMeta, body: &[u8]) -> Result<(), String>;
    fn body(&self, seq: u64) -> Result<Option<Vec<u8>>, String>;
    /// The job's final state, its answer's body when it has one; the request body goes.
    fn finish(&self, seq: u64, meta: &JobMeta, answer: Option<&[u8]>) -> Result<(), String>;
    fn answer(&self, seq: u64) -> Result<Option<Vec<u8>>, String>;
    fn remove(&self, seq: u64) -> Result<(), String>;
    /// Every job, in arrival order (at start).
    fn load(&self) -> Result<Vec<(u64, JobMeta)>, String>;
}

const META: TableDefinition<u64, &[u8]> = TableDefinition::new("job_meta");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("job_body");
const ANSWERS: TableDefinition<u64, &[u8]> = TableDefinition::new("job_answer");

/// The embedded default: one redb file, `jobs.redb`, in `state_dir`.
pub struct RedbStore {
    db: redb::Database,
}

fn e(context: &str) -> impl Fn(String) -> String + '_ {
    move |err| format!("job store: {context}: {err}")
}

impl RedbStore {
    pub fn open(dir: &std::path::Path) -> Result<RedbStore, String> {
        crate::serve::secrets::state_dir(dir)?;
        let path = dir.join("jobs.redb");
        // Prompts wait in this file: only twinroute's user may read it (redb creates files with
        // the process's umask, 0644 by default).
        crate::serve::secrets::private_file(&path).map_err(|err| format!("job store {err}"))?;
        let db = redb::Database::create(&path)
            .map_err(|err| format!("job store {}: {err}", path.display()))?;
        // The tables exist from the start, so a read never meets a missing one.
        let w = db.begin_write().map_err(|x| e("open")(x.to_string()))?;
        for t in [META, BODIES, ANSWERS] {
            w.open_table(t).map_err(|x| e("open")(x.to_string()))?;
        }
        w.commit().map_err(|x| e("open")(x.to_string()))?;
        Ok(RedbStore { db })
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), String>,
    ) -> Result<(), String> {
        let w = self
            .db
            .begin_write()
            .map_err(|x| e("write")(x.to_string()))?;
        f(&w)?;
        // Durability::Immediate (redb's default): on disk when commit returns.
        w.commit().map_err(|x| e("commit")(x.to_string()))
    }

    fn read(
        &self,
        table: TableDefinition<u64, &[u8]>,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, String> {
        let r = self.db.begin_read().map_err(|x| e("read")(x.to_string()))?;
        let t = r.open_table(table).map_err(|x| e("read")(x.to_string()))?;
        let v = t.get(seq).map_err(|x| e("read")(x.to_string()))?;
        Ok(v.map(|g| g.value().to_vec()))
    }
}

pub fn encode(meta: &JobMeta) -> Result<Vec<u8>, String> {
    serde_json::to_vec(meta).map_err(|x| e("encode")(x.to_string()))
}

/// A stored job record read back: refused unless it is one this version could have written (a
/// valid job id, a path twinroute serves, headers that are valid HTTP), so a damaged or edited
/// file can neither crash the loader nor have the drain send what no client sent.
pub fn decode(bytes: &[u8]) -> Result<JobMeta, String> {
    let meta: JobMeta = serde_json::from_slice(bytes).map_err(|x| x.to_string())?;
    if !decide::valid_job_id(&meta.id) {
        return Err("not a job id".into());
    }
    if crate::model::endpoint::Endpoint::from_path(&meta.path).is_none() {
        return Err(format!("{:?} is no path twinroute serves", meta.path));
    }
    let answer_headers = match &meta.state {
        Stored::Succeeded { headers, .. } => headers.as_slice(),
        _ => &[],
    };
    for (k, v) in meta.headers.iter().chain(answer_headers) {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            return Err(format!("invalid header {k:?}"));
        }
    }
    Ok(meta)
}

/// One change to one table inside a write transaction.
enum Put<'a> {
    Set(TableDefinition<'static, u64, &'static [u8]>, &'a [u8]),
    Remove(TableDefinition<'static, u64, &'static [u8]>),
}

impl RedbStore {
    /// Apply `changes` to job `seq` as one durable transaction.
    fn apply(&self, context: &str, seq: u64, changes: &[Put<'_>]) -> Result<(), String> {
        self.write(|w| {
            let err = |x: redb::Error| e(context)(x.to_string());
            for c in changes {
                match c {
                    Put::Set(t, v) => {
                        w.open_table(*t)
                            .map_err(|x| err(x.into()))?
                            .insert(seq, *v)
                            .map_err(|x| err(x.into()))?;
                    }
                    Put::Remove(t) => {
                        w.open_table(*t)
                            .map_err(|x| err(x.into()))?
                            .remove(seq)
                            .map_err(|x| err(x.into()))?;
                    }
                }
            }
            Ok(())
        })
    }
}

impl JobStore for RedbStore {
    fn insert(&self, seq: u64, meta: &JobMeta, body: &[u8]) -> Result<(), String> {
        let m = encode(meta)?;
        self.apply("insert", seq, &[Put::Set(META, &m), Put::Set(BODIES, body)])
    }

    fn body(&self, seq: u64) -> Result<Option<Vec<u8>>, String> {
        self.read(BODIES, seq)
    }

    fn finish(&self, seq: u64, meta: &JobMeta, answer: Option<&[u8]>) -> Result<(), String> {
        let m = encode(meta)?;
        let mut changes = vec![Put::Set(META, &m), Put::Remove(BODIES)];
        if let Some(a) = answer {
            changes.push(Put::Set(ANSWERS, a));
        }
        self.apply("finish", seq, &changes)
    }

    fn answer(&self, seq: u64) -> Result<Option<Vec<u8>>, String> {
        self.read(ANSWERS, seq)
    }

    fn remove(&self, seq: u64) -> Result<(), String> {
        let all = [META, BODIES, ANSWERS].map(Put::Remove);
        self.apply("remove", seq, &all)
    }

    fn load(&self) -> Result<Vec<(u64, JobMeta)>, String> {
        let err = |x: redb::Error| e("load")(x.to_string());
        let r = self.db.begin_read().map_err(|x| err(x.into()))?;
        let t = r.open_table(META).map_err(|x| err(x.into()))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|x| err(x.into()))? {
            let (k, v) = row.map_err(|x| err(x.into()))?;
            match decode(v.value()) {
                Ok(m) => out.push((k.value(), m)),
                // A record this version cannot read is left alone, not fatal.
                Err(x) => log::error!("job store: job {} unreadable, skipped: {x}", k.value()),
            }
        }
        Ok(out)
    }
}

/// A job in the index.
struct Job {
    meta: JobMeta,
    /// A drain run holds it (or its first write is under way).
    running: bool,
    /// Deleted while running: its answer is thrown away when the run ends.
    cancelled: bool,
    tries: u32,
    not_before: Instant,
    last_error: Option<String>,
    /// Flips to true when the job is finished (held connections wait on it).
    done: watch::Sender<bool>,
}

impl Job {
    fn waiting(&self) -> bool {
        matches!(self.meta.state, Stored::Queued)
    }

    fn status(&self) -> JobStatus {
        match (&self.meta.state, self.running) {
            (Stored::Queued, false) => JobStatus::Queued,
            (Stored::Queued, true) => JobStatus::Running,
            (Stored::Succeeded { .. }, _) => JobStatus::Succeeded,
            (Stored::Failed { .. }, _) => JobStatus::Failed,
        }
    }
}

#[derive(Default)]
struct Index {
    jobs: BTreeMap<u64, Job>,
    ids: HashMap<String, u64>,
    next_seq: u64,
}

/// Why a job was not taken.
pub enum Refused {
    Full(usize),
    Store(String),
}

/// What a new job needs from its request.
pub struct NewJob {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub scope: [u8; 32],
    pub max_age: Duration,
}

/// A job as `GET` finds it.
pub enum Found {
    Waiting(String),
    Succeeded {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    Failed {
        path: String,
        message: String,
    },
}

/// Depth and age, for `/status` and the gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub waiting: usize,
    pub running: usize,
    pub finished: usize,
    pub oldest_age_s: f64,
}

pub struct Queue {
    store: Arc<dyn JobStore>,
    conf: QueueConf,
    index: Mutex<Index>,
    /// Wakes the drain when a job arrives.
    pub wake: Notify,
    /// Turns true when the process shuts down: held connections get their 202 at once
    /// instead of being cut at the end of the grace period.
    closing: watch::Sender<bool>,
    /// This process's job token (random per start; the drain's requests carry it).
    token: String,
    /// Monotonic origin for `not_before` in milliseconds (`decide::queue::Waiting`).
    origin: Instant,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Queue {
    /// Open the store under `conf.dir` and take up every job it holds: waiting ones run again.
    pub fn open(conf: &QueueConf) -> Result<Arc<Queue>, String> {
        let store = Arc::new(RedbStore::open(&conf.dir)?);
        Queue::with_store(conf, store)
    }

    pub fn with_store(conf: &QueueConf, store: Arc<dyn JobStore>) -> Result<Arc<Queue>, String> {
        let now = Instant::now();
        let mut index = Index::default();
        for (seq, meta) in store.load()? {
            index.next_seq = index.next_seq.max(seq + 1);
            index.ids.insert(meta.id.clone(), seq);
            let finished = !matches!(meta.state, Stored::Queued);
            index.jobs.insert(
                seq,
                Job {
                    meta,
                    running: false,
                    cancelled: false,
                    tries: 0,
                    not_before: now,
                    last_error: None,
                    done: watch::channel(finished).0,
                },
            );
        }
        let waiting = index.jobs.values().filter(|j| j.waiting()).count();
        if !index.jobs.is_empty() {
            log::info!(
                "background queue: {waiting} job(s) to resume, {} finished kept, from {}",
                index.jobs.len() - waiting,
                conf.dir.display()
            );
        }
        Ok(Arc::new(Queue {
            store,
            conf: conf.clone(),
            index: Mutex::new(index),
            wake: Notify::new(),
            closing: watch::channel(false).0,
            token: hex::encode(rand::random::<[u8; 32]>()),
            origin: now,
        }))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The process is shutting down: release every held connection.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true when the process is shutting down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn conf(&self) -> &QueueConf {
        &self.conf
    }

    /// A waiting job's request body, from the store.
    pub async fn body(&self, seq: u64) -> Result<Vec<u8>, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.body(seq))
            .await
            .unwrap_or_else(|x| Err(x.to_string()))
            .and_then(|b| b.ok_or_else(|| "its request body is missing from the store".to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding it leaves plain data behind: carry on with it.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Take a job: written to disk before this returns its id and a receiver that turns true
    /// when it is finished.
    pub async fn enqueue(
        &self,
        new: NewJob,
        body: Bytes,
    ) -> Result<(String, watch::Receiver<bool>), Refused> {
        let created_ms = now_ms();
        let meta = JobMeta {
            id: decide::job_id(rand::random()),
            created_ms,
            deadline_ms: created_ms + new.max_age.as_millis() as u64,
            path: new.path,
            headers: new.headers,
            scope: new.scope,
            state: Stored::Queued,
        };
        let (seq, rx) = {
            let mut ix = self.lock();
            let waiting = ix.jobs.values().filter(|j| j.waiting()).count();
            if !decide::fits(waiting, self.conf.max_jobs) {
                METRICS.queue_jobs.with_label_values(&["full"]).inc();
                return Err(Refused::Full(self.conf.max_jobs));
            }
            let seq = ix.next_seq;
            ix.next_seq += 1;
            let (tx, rx) = watch::channel(false);
            ix.ids.insert(meta.id.clone(), seq);
            // Held as running until it is on disk: the drain must not run a job a crash
            // could still lose.
            ix.jobs.insert(
                seq,
                Job {
                    meta: meta.clone(),
                    running: true,
                    cancelled: false,
                    tries: 0,
                    not_before: Instant::now(),
                    last_error: None,
                    done: tx,
                },
            );
            (seq, rx)
        };
        let store = self.store.clone();
        let m = meta.clone();
        let written = tokio::task::spawn_blocking(move || store.insert(seq, &m, &body))
            .await
            .unwrap_or_else(|x| Err(format!("job store: {x}")));
        let mut ix = self.lock();
        if let Err(x) = written {
            ix.jobs.remove(&seq);
            ix.ids.remove(&meta.id);
            return Err(Refused::Store(x));
        }
        if let Some(j) = ix.jobs.get_mut(&seq) {
            j.running = false;
        }
        drop(ix);
        METRICS.queue_jobs.with_label_values(&["queued"]).inc();
        self.wake.notify_one();
        Ok((meta.id, rx))
    }

    /// The oldest job due now, marked running; `None` when none is.
    pub fn take_due(&self, now: Instant) -> Option<(u64, JobMeta)> {
        let mut ix = self.lock();
        let waiting = ix
            .jobs
            .iter()
            .filter(|(_, j)| j.waiting() && !j.running)
            .map(|(&seq, j)| Waiting {
                seq,
                not_before_ms: self.ms(j.not_before),
            });
        let seq = decide::next_due(waiting, self.ms(now))?;
        let j = ix.jobs.get_mut(&seq)?;
        j.running = true;
        Some((seq, j.meta.clone()))
    }

    /// When a waiting job next becomes due.
    pub fn next_wake(&self) -> Option<Instant> {
        let ix = self.lock();
        let ms = decide::next_wake(
            ix.jobs
                .iter()
                .filter(|(_, j)| j.waiting() && !j.running)
                .map(|(&seq, j)| Waiting {
                    seq,
                    not_before_ms: self.ms(j.not_before),
                }),
        )?;
        Some(self.origin + Duration::from_millis(ms))
    }

    /// A run found no capacity (or could not reach the data plane): back in line after its
    /// retry delay, or failed when its deadline has passed.
    pub async fn retry(&self, seq: u64, error: String) {
        let expired = {
            let mut ix = self.lock();
            let Some(j) = ix.jobs.get_mut(&seq) else {
                return;
            };
            j.tries += 1;
            j.last_error = Some(error);
            if j.cancelled {
                drop(ix);
                self.forget(seq);
                return;
            }
            let now = now_ms();
            if decide::expired(j.meta.deadline_ms, now) {
                Some(expiry_message(j, now))
            } else {
                j.running = false;
                j.not_before = Instant::now()
                    + decide::retry_delay(j.tries - 1, self.conf.retry_max, rand::random());
                None
            }
        };
        METRICS.queue_jobs.with_label_values(&["retried"]).inc();
        if let Some(message) = expired {
            self.fail(seq, message).await;
        }
    }

    async fn fail(&self, seq: u64, message: String) {
        if let Some(id) = self.lock().jobs.get(&seq).map(|j| j.meta.id.clone()) {
            log::warn!("job {id}: {message}");
        }
        let state = Stored::Failed {
            message,
            finished_ms: now_ms(),
        };
        self.finish(seq, state, None).await;
    }

    /// Store a job's final state, then tell whoever waits on it.
    pub async fn finish(&self, seq: u64, state: Stored, answer: Option<Bytes>) {
        let meta = {
            let mut ix = self.lock();
            let Some(j) = ix.jobs.get_mut(&seq) else {
                return;
            };
            if j.cancelled {
                drop(ix);
                self.forget(seq);
                return;
            }
            let mut m = j.meta.clone();
            m.state = state;
            m
        };
        let store = self.store.clone();
        let m = meta.clone();
        let written = tokio::task::spawn_blocking(move || store.finish(seq, &m, answer.as_deref()))
            .await
            .unwrap_or_else(|x| Err(format!("job store: {x}")));
        if let Err(x) = written {
            // The job stays queued on disk: after a restart it runs again.
            log::error!("job {}: its answer could not be stored: {x}", meta.id);
        }
        let event = match meta.state {
            Stored::Succeeded { .. } => "succeeded",
            _ => "expired",
        };
        METRICS.queue_jobs.with_label_values(&[event]).inc();
        let mut ix = self.lock();
        if let Some(j) = ix.jobs.get_mut(&seq) {
            j.meta = meta;
            j.running = false;
            j.done.send_replace(true);
        }
    }

    /// Remove a job from the index and the store.
    fn forget(&self, seq: u64) {
        let mut ix = self.lock();
        if let Some(j) = ix.jobs.remove(&seq) {
            ix.ids.remove(&j.meta.id);
            j.done.send_replace(true);
        }
        drop(ix);
        let store = self.store.clone();
        // Off the caller's thread; a failure leaves a record that the next start reloads.
        tokio::task::spawn_blocking(move || {
            if let Err(x) = store.remove(seq) {
                log::error!("{x}");
            }
        });
    }

    /// Fail waiting jobs past their deadline; drop finished ones past `keep_done_s`.
    pub async fn sweep(&self, now_ms: u64) {
        let keep_ms = self.conf.keep_done.as_millis() as u64;
        let (expired, old): (Vec<(u64, String)>, Vec<u64>) = {
            let ix = self.lock();
            let expired = ix
                .jobs
                .iter()
                .filter(|(_, j)| j.waiting() && !j.running)
                .filter(|(_, j)| decide::expired(j.meta.deadline_ms, now_ms))
                .map(|(&seq, j)| (seq, expiry_message(j, now_ms)))
                .collect();
            let old = ix
                .jobs
                .iter()
                .filter_map(|(&seq, j)| match &j.meta.state {
                    Stored::Succeeded { finished_ms, .. } | Stored::Failed { finished_ms, .. }
                        if now_ms.saturating_sub(*finished_ms) >= keep_ms =>
                    {
                        Some(seq)
                    }
                    _ => None,
                })
                .collect();
            (expired, old)
        };
        for (seq, message) in expired {
            self.fail(seq, message).await;
        }
        for seq in old {
            self.forget(seq);
        }
        let s = self.stats();
        METRICS.queue_depth.set((s.waiting) as i64);
        METRICS.queue_oldest_age.set(s.oldest_age_s);
    }

    pub fn stats(&self) -> QueueStats {
        let ix = self.lock();
        let now = now_ms();
        let mut s = QueueStats::default();
        for j in ix.jobs.values() {
            if j.waiting() {
                s.waiting += 1;
                s.running += j.running as usize;
                // The first waiting job in arrival order is the oldest.
                if s.waiting == 1 {
                    s.oldest_age_s = now.saturating_sub(j.meta.created_ms) as f64 / 1000.0;
                }
            } else {
                s.finished += 1;
            }
        }
        s
    }

    /// The job `id` as the client `scope` may see it (`None`: no such job for this client).
    pub async fn find(&self, id: &str, scope: &[u8; 32]) -> Option<Found> {
        let (seq, state, path, view) = {
            let ix = self.lock();
            let seq = *ix.ids.get(id)?;
            let j = ix.jobs.get(&seq)?;
            if j.meta.scope != *scope || j.cancelled {
                return None;
            }
            let view = job::render(&JobView {
                id,
                status: j.status(),
                created_ms: j.meta.created_ms,
                expires_ms: j.meta.deadline_ms,
                tries: j.tries,
                last_error: j.last_error.as_deref(),
            });
            (seq, j.meta.state.clone(), j.meta.path.clone(), view)
        };
        match state {
            Stored::Queued => Some(Found::Waiting(String::from_utf8(view).ok()?)),
            Stored::Failed { message, .. } => Some(Found::Failed { path, message }),
            Stored::Succeeded {
                status, headers, ..
            } => {
                let store = self.store.clone();
                let body = tokio::task::spawn_blocking(move || store.answer(seq))
                    .await
                    .ok()?
                    .map_err(|x| log::error!("{x}"))
                    .ok()??;
                Some(Found::Succeeded {
                    status,
                    headers,
                    body: Bytes::from(body),
                })
            }
        }
    }

    /// The scope a job was queued under: its run is the client's request again, so the cache,
    /// idempotency (and team limits) see that client, never a shared drain identity.
    pub fn scope_of(&self, id: &str) -> Option<[u8; 32]> {
        let ix = self.lock();
        let seq = *ix.ids.get(id)?;
        ix.jobs.get(&seq).map(|j| j.meta.scope)
    }

    /// Turns true when job `seq` is finished or cancelled: a run in progress watches it to
    /// abandon a cancelled job's request.
    pub fn watch_done(&self, seq: u64) -> Option<watch::Receiver<bool>> {
        self.lock().jobs.get(&seq).map(|j| j.done.subscribe())
    }

    /// A running job that was cancelled is forgotten (its run abandoned): `true`; any other job
    /// is left as it is: `false`.
    pub fn abandon(&self, seq: u64) -> bool {
        let cancelled = self.lock().jobs.get(&seq).is_some_and(|j| j.cancelled);
        if cancelled {
            self.forget(seq);
        }
        cancelled
    }

    /// Cancel a waiting job or delete a finished one: `None` when the client has no such job.
    pub fn cancel(&self, id: &str, scope: &[u8; 32]) -> Option<JobStatus> {
        let mut ix = self.lock();
        let seq = *ix.ids.get(id)?;
        let j = ix.jobs.get_mut(&seq)?;
        if j.meta.scope != *scope || j.cancelled {
            return None;
        }
        let was = j.status();
        if j.running {
            // Its run ends on its own; what it brings back is thrown away.
            j.cancelled = true;
            j.done.send_replace(true);
        } else {
            drop(ix);
            self.forget(seq);
        }
        if matches!(was, JobStatus::Queued | JobStatus::Running) {
            METRICS.queue_jobs.with_label_values(&["cancelled"]).inc();
        }
        Some(was)
    }
}

/// Why a job failed at its deadline: how old it is, how often it was tried, the last failure.
fn expiry_message(j: &Job, now_ms: u64) -> String {
    let age = now_ms.saturating_sub(j.meta.created_ms) / 1000;
    let last = j.last_error.as_deref().unwrap_or("no capacity");
    format!(
        "background job expired after {age} s (queue.max_age_s) without an answer, after {} tries; last: {last}",
        j.tries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &std::path::Path) -> QueueConf {
        QueueConf {
            dir: dir.to_path_buf(),
            max_jobs: 2,
            drain_per_s: 10.0,
            retry_max: Duration::from_millis(200),
            keep_done: Duration::from_secs(60),
        }
    }

    fn new_job(scope: u8) -> NewJob {
        NewJob {
            path: "/v1/chat/completions".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            scope: [scope; 32],
            max_age: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn jobs_survive_reopening_and_stay_bounded() {
        let dir = std::env::temp_dir().join(format!("twinroute-queue-{}", rand::random::<u64>()));
        let c = conf(&dir);
        let q = Queue::open(&c).unwrap();
        let (a, _) = q
            .enqueue(new_job(1), Bytes::from_static(b"{\"a\":1}"))
            .await
            .ok()
            .unwrap();
        let (b, _) = q
            .enqueue(new_job(2), Bytes::from_static(b"{\"b\":2}"))
            .await
            .ok()
            .unwrap();
        assert!(matches!(
            q.enqueue(new_job(1), Bytes::new()).await,
            Err(Refused::Full(2))
        ));
        // Oldest first; the one taken is running.
        let (seq, meta) = q.take_due(Instant::now()).unwrap();
        assert_eq!(meta.id, a);
        let answer = Stored::Succeeded {
            status: 200,
            headers: vec![],
            finished_ms: now_ms(),
        };
        q.finish(seq, answer, Some(Bytes::from_static(b"ok"))).await;
        // Another client cannot see it; its own can.
        assert!(q.find(&a, &[2; 32]).await.is_none());
        match q.find(&a, &[1; 32]).await {
            Some(Found::Succeeded { status, body, .. }) => {
                assert_eq!((status, &body[..]), (200, &b"ok"[..]))
            }
            _ => panic!("finished job not found"),
        }
        drop(q);
        // Reopened: the finished answer is kept, the waiting job runs again.
        let q = Queue::open(&c).unwrap();
        assert!(matches!(
            q.find(&b, &[2; 32]).await,
            Some(Found::Waiting(_))
        ));
        let (seq, meta) = q.take_due(Instant::now()).unwrap();
        assert_eq!(meta.id, b);
        assert_eq!(q.store.body(seq).unwrap().unwrap(), b"{\"b\":2}");
        assert!(
            q.take_due(Instant::now()).is_none(),
            "the other one is done"
        );
        q.retry(seq, "no capacity".into()).await;
        assert!(
            q.take_due(Instant::now()).is_none(),
            "waits out its retry delay"
        );
        assert_eq!(q.cancel(&b, &[2; 32]), Some(JobStatus::Queued));
        assert!(q.find(&b, &[2; 32]).await.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
