//! State shared by every request and background service: the current config with its health
//! table (swapped together as one unit), the upstream connector and its pools, readiness.

use crate::health::verdict::VerdictBus;
use crate::health::Health;
use crate::model::Config;
use crate::net::resolve::Resolver;
use crate::serve::cache::AnswerCache;
use crate::serve::fleet::Fleet;
use crate::serve::idempotency::IdempotencyStore;
use crate::serve::team::TeamLedger;
use arc_swap::ArcSwap;
use pingora::connectors::http::Connector;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};

/// One generation of the config and the health table built for its providers (indexes match):
/// swapped whole on reload; a request keeps the generation it started with.
pub struct Generation {
    pub config: Config,
    pub health: Health,
}

impl Generation {
    pub fn new(config: Config) -> Generation {
        let health = Health::new(&config.providers);
        Generation { config, health }
    }

    /// A reloaded config, keeping the health of every provider it did not change.
    pub fn reloaded(config: Config, previous: &Generation) -> Generation {
        let health = Health::carried_over(
            &config.providers,
            Some((&previous.health, &previous.config.providers)),
        );
        Generation { config, health }
    }
}

/// Where state a fleet could share lives: the idempotency store (`None`: `idempotency` is off),
/// the prompt cache, and the health verdict bus. The in-process stores by default; a shared
/// store, or a test's own, is handed in whole (`serve::server::build_with`) and reached only
/// through its trait.
pub struct Stores {
    pub idempotency: Option<Arc<dyn IdempotencyStore>>,
    pub cache: Arc<dyn AnswerCache>,
    /// Where health verdicts are published (`health::verdict`; `None`: kept to this process).
    pub verdicts: Option<Arc<dyn VerdictBus>>,
    /// The fleet's Redis link (`shared_state`), whose background service the server runs.
    pub fleet: Option<Arc<Fleet>>,
    /// Team budgets' counts (`serve::team`).
    pub ledger: Arc<dyn TeamLedger>,
}

impl Stores {
    /// The stores `config` asks for: in-process, and with `shared_state` the fleet's verdict
    /// bus, idempotency store and prompt cache over Redis (each keeping an in-process one for
    /// when Redis is down).
    pub fn for_config(config: &Config) -> Stores {
        let mut stores = Stores::in_process(config);
        if let Some(conf) = &config.shared_state {
            let fleet = Fleet::new(conf.clone());
            stores.verdicts = Some(fleet.clone());
            stores.idempotency = config.idempotency.as_ref().map(|c| {
                Arc::new(crate::serve::fleet::FleetIdempotency::new(fleet.clone(), c))
                    as Arc<dyn IdempotencyStore>
            });
            stores.cache = Arc::new(crate::serve::fleet::FleetCache::new(
                fleet.clone(),
                config.cache_max_bytes,
            ));
            stores.ledger = Arc::new(crate::serve::fleet::FleetLedger::new(
                fleet.clone(),
                conf.replicas,
            ));
            stores.fleet = Some(fleet);
        }
        stores
    }

    /// The in-process stores `config` asks for.
    pub fn in_process(config: &Config) -> Stores {
        Stores {
            idempotency: config.idempotency.as_ref().map(|c| {
                Arc::new(crate::serve::idempotency::memory::MemoryStore::new(c))
                    as Arc<dyn IdempotencyStore>
            }),
            cache: Arc::new(crate::serve::cache::MemoryCache::new(
                config.cache_max_bytes,
            )),
            verdicts: None,
            fleet: None,
            ledger: Arc::new(crate::serve::team::MemoryLedger::default()),
        }
    }
}

pub struct Shared {
    pub runtime: ArcSwap<Generation>,
    pub connector: Connector,
    pub resolver: Resolver,
    pub ready: AtomicBool,
    /// Client requests being served now (the `max_concurrent_requests` gate and the drain).
    pub active: AtomicUsize,
    /// Short-lived provider credentials (Vertex access tokens).
    pub tokens: crate::serve::credentials::Tokens,
    /// Answers to requests with an `Idempotency-Key` (`None`: off). Built from the first config;
    /// a reload keeps it (and its entries).
    pub idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// The prompt cache (used by models and routes whose policy sets `cache`). Built from the
    /// first config; a reload keeps it.
    pub cache: Arc<dyn AnswerCache>,
    /// The durable background queue (`None`: no `state_dir`). Opened from the first config; a
    /// reload keeps it.
    pub queue: Option<Arc<crate::serve::queue::Queue>>,
    /// The data-plane runtime, recorded by the first request, so the memory trimmer can run a
    /// task on each of its threads (`serve::trim`: their allocator caches).
    pub data_plane: OnceLock<tokio::runtime::Handle>,
    /// The fleet's Redis link (`None`: no `shared_state`). Built from the first config; a
    /// reload keeps it.
    pub fleet: Option<Arc<Fleet>>,
    /// Team budgets' counts. Built from the first config; a reload keeps it.
    pub ledger: Arc<dyn TeamLedger>,
    /// Keys client scopes (`decide::idempotency::scope`): kept under `state_dir`, else made per
    /// process. Read at start; a reload keeps it.
    pub scope_secret: crate::decide::idempotency::ScopeSecret,
    /// The fleet's scope secret, shared through Redis (`shared_state`), which replaces
    /// `scope_secret` once this replica has read it.
    pub fleet_scope: OnceLock<crate::decide::idempotency::ScopeSecret>,
}

impl Shared {
    /// Fails only when the job store under `state_dir` cannot be opened.
    pub fn new(config: Config, stores: Stores) -> Result<Arc<Shared>, String> {
        let Stores {
            idempotency,
            cache,
            verdicts,
            fleet,
            ledger,
        } = stores;
        let scope_secret =
            crate::serve::secrets::scope_secret(config.queue.as_ref().map(|q| q.dir.as_path()))?;
        let runtime = Generation::new(config);
        if let Some(bus) = verdicts {
            runtime.health.set_bus(bus);
        }
        let queue = match &runtime.config.queue {
            Some(q) => Some(crate::serve::queue::Queue::open(q)?),
            None => None,
        };
        Ok(Arc::new(Shared {
            idempotency,
            cache,
            fleet,
            ledger,
            queue,
            runtime: ArcSwap::from_pointee(runtime),
            connector: Connector::new(None),
            resolver: Resolver::default(),
            ready: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            tokens: Default::default(),
            data_plane: OnceLock::new(),
            scope_secret,
            fleet_scope: OnceLock::new(),
        }))
    }
}
