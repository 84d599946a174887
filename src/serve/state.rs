//! State shared by every request and background service: the current config with its health
//! table (swapped together as one unit), the upstream connector and its pools, readiness.

use crate::health::Health;
use crate::model::Config;
use crate::net::resolve::Resolver;
use arc_swap::ArcSwap;
use pingora::connectors::http::Connector;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};

/// A config and the health table built for its providers (indexes match).
pub struct Runtime {
    pub config: Config,
    pub health: Health,
}

impl Runtime {
    pub fn new(config: Config) -> Runtime {
        let health = Health::new(&config.providers);
        Runtime { config, health }
    }

    /// A reloaded config, keeping the health of every provider it did not change.
    pub fn reloaded(config: Config, previous: &Runtime) -> Runtime {
        let health = Health::carried_over(
            &config.providers,
            Some((&previous.health, &previous.config.providers)),
        );
        Runtime { config, health }
    }
}

pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub connector: Connector,
    pub resolver: Resolver,
    pub ready: AtomicBool,
    /// Client requests being served now (the `max_concurrent_requests` gate and the drain).
    pub active: AtomicUsize,
    /// Short-lived provider credentials (Vertex access tokens).
    pub tokens: crate::serve::credentials::Tokens,
    /// Answers to requests with an `Idempotency-Key` (`None`: off). Built from the first config;
    /// a reload keeps it (and its entries).
    pub idempotency: Option<Box<dyn crate::serve::idempotency::IdempotencyStore>>,
    /// The prompt cache (used by models and routes whose policy sets `cache`). Built from the
    /// first config; a reload keeps it.
    pub cache: Box<dyn crate::serve::cache::AnswerCache>,
    /// The durable background queue (`None`: no `state_dir`). Opened from the first config; a
    /// reload keeps it.
    pub queue: Option<Arc<crate::serve::queue::Queue>>,
    /// The data-plane runtime, recorded by the first request, so the memory trimmer can run a
    /// task on each of its threads (`serve::trim`: their allocator caches).
    pub data_plane: OnceLock<tokio::runtime::Handle>,
    /// Keys client scopes (`decide::idempotency::scope`): kept under `state_dir`, else made per
    /// process. Read at start; a reload keeps it.
    pub scope_secret: crate::decide::idempotency::ScopeSecret,
}

impl Shared {
    /// Fails only when the job store under `state_dir` cannot be opened.
    pub fn new(config: Config) -> Result<Arc<Shared>, String> {
        let idempotency = config.idempotency.as_ref().map(|c| {
            Box::new(crate::serve::idempotency::MemoryStore::new(c))
                as Box<dyn crate::serve::idempotency::IdempotencyStore>
        });
        let cache = Box::new(crate::serve::cache::MemoryCache::new(
            config.cache_max_bytes,
        ));
        let scope_secret =
            crate::serve::secrets::scope_secret(config.queue.as_ref().map(|q| q.dir.as_path()))?;
        let queue = match &config.queue {
            Some(q) => Some(crate::serve::queue::Queue::open(q)?),
            None => None,
        };
        Ok(Arc::new(Shared {
            idempotency,
            cache,
            queue,
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            connector: Connector::new(None),
            resolver: Resolver::default(),
            ready: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            tokens: Default::default(),
            data_plane: OnceLock::new(),
            scope_secret,
        }))
    }
}
