//! The prompt cache (opt-in per model or route with `cache: {ttl_s, ...}`): a complete,
//! successful answer is kept under its request's canonical key and served again — as JSON or as
//! a well-formed stream, whichever the new request asks for — with `x-twinroute-cache: hit` and
//! `Age`; past its TTL, within `stale_if_error_s`, it is served only when every candidate fails
//! (`x-twinroute-cache: stale`). The attempt loop's own retries never read it.
//!
//! Storage is behind `AnswerCache`, an async seam a shared store fills (an entry is plain data,
//! its time a wall-clock one, so replicas can read each other's); `MemoryCache` (moka: bounded
//! by bytes, LRU, per-entry expiry) is the in-process default. Decisions are `decide::cache`; folding a stream into an
//! answer and back is `wire::answer`.

use crate::decide::cache::CacheKey;
use crate::model::endpoint::Family;
use crate::serve::downstream::Downstream;
use crate::wire::answer;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::Result;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One kept answer: the client-format JSON of a non-streaming answer. Plain data (JSON in a
/// shared store).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Cached {
    pub answer: serde_json::Value,
    pub family: Family,
    /// Wall-clock: a shared store's entries are read by other replicas.
    pub stored_at: SystemTime,
    pub ttl: Duration,
    pub stale_if_error: Duration,
    /// Bytes it weighs in the cache.
    pub weight: u32,
    /// Who gave the answer: a hit says it as the original answer did.
    pub origin: Origin,
}

/// Who gave a kept answer, said again on every hit (`x-twinroute-provider`, `-model`,
/// `-equivalent`): a hit never hides that an equivalent answered.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub provider: Option<String>,
    pub model: Option<String>,
    /// `canonical;grade=g` when a closest equivalent answered.
    pub equivalent: Option<String>,
}

/// Where cached answers live. A store that cannot answer (down, slow) answers `None` and keeps
/// nothing: a cache never fails a request.
#[async_trait]
pub trait AnswerCache: Send + Sync {
    async fn get(&self, key: &CacheKey) -> Option<Arc<Cached>>;
    async fn put(&self, key: CacheKey, entry: Arc<Cached>);
    /// Entries held and the bytes they weigh.
    fn usage(&self) -> (u64, u64);
}

impl Cached {
    /// How long ago it was kept (zero when the clock stepped back).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.stored_at)
            .unwrap_or_default()
    }
}

/// Each entry lives its TTL plus its stale-if-error window.
struct Lifetime;

impl moka::Expiry<CacheKey, Arc<Cached>> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl + value.stale_if_error)
    }
}

pub struct MemoryCache {
    cache: moka::sync::Cache<CacheKey, Arc<Cached>>,
}

impl MemoryCache {
    pub fn new(max_bytes: u64) -> MemoryCache {
        MemoryCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &CacheKey, v: &Arc<Cached>| v.weight)
                .expire_after(Lifetime)
                .build(),
        }
    }
}

#[async_trait]
impl AnswerCache for MemoryCache {
    async fn get(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        self.cache.get(key)
    }

    async fn put(&self, key: CacheKey, entry: Arc<Cached>) {
        self.cache.insert(key, entry);
    }

    fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

/// A kept answer rendered for one request: JSON, or a stream when the request asks for one.
pub struct Rendered {
    pub body: Bytes,
    pub stream: bool,
    pub age: Duration,
    pub origin: Origin,
}

/// Render `cached` for a request that does (`stream`) or does not want a stream; `None` when a
/// stream is wanted and the answer cannot be unfolded into one (not plain text).
pub fn render(cached: &Cached, stream: bool) -> Option<Rendered> {
    let body = if stream {
        Bytes::from(answer::unfold(cached.family, &cached.answer)?)
    } else {
        Bytes::from(cached.answer.to_string())
    };
    Some(Rendered {
        body,
        stream,
        age: cached.age(),
        origin: cached.origin.clone(),
    })
}

/// Answer the client from the cache, saying so (`label`: `hit` or `stale`).
pub async fn serve(
    down: &mut Downstream<'_>,
    r: &Rendered,
    label: &'static str,
    request_id: &str,
) -> Result<()> {
    let mut h = ResponseHeader::build(200, Some(9))?;
    if r.stream {
        h.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
        h.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    } else {
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, r.body.len())?;
    h.insert_header(crate::serve::names::HDR_CACHE, label)?;
    h.insert_header(http::header::AGE, r.age.as_secs())?;
    h.insert_header(crate::serve::names::HDR_REQUEST_ID, request_id)?;
    let o = &r.origin;
    for (name, value) in [
        (crate::serve::names::PROVIDER, &o.provider),
        (crate::serve::names::MODEL, &o.model),
        (crate::serve::names::EQUIVALENT, &o.equivalent),
    ] {
        if let Some(v) = value {
            h.insert_header(name, v.as_str())?;
        }
    }
    down.write_header(Box::new(h), false).await?;
    down.write_body(Some(r.body.clone()), true).await
}
