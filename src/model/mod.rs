//! The runtime model: plain, validated, immutable data that every other layer reads.
//!
//! Built by `config` from the YAML file and swapped in whole on reload. Imports nothing else of
//! the crate: ids, the catalog, policies, providers and their endpoints, the client-facing API
//! surface, the vocabulary of attempt outcomes and of the errors twinroute answers with.

pub mod catalog;
pub mod endpoint;
pub mod error;
pub mod ids;
pub mod outcome;
pub mod policy;
pub mod provider;
pub mod team;

pub use catalog::{Catalog, Equivalent, Model, Offering, Price};
pub use ids::{ModelId, OfferingIdx, ProviderId};
pub use policy::{Backoff, CachePolicy, OnCeiling, Policy, QueuePolicy, Strategy, StreamRecovery};
pub use provider::{
    ApiKind, AwsConf, AwsCredentialSource, AwsCredentials, BreakerConf, GcpConf, GcpCredentials,
    ProbeConf, Provider, ProviderEndpoint, Secret, Timeouts, UpstreamBase, Vendor,
};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A config problem, with the YAML key path it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How answers to requests with an `Idempotency-Key` are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyConf {
    pub ttl: Duration,
    pub max_bytes: u64,
    pub max_entry_bytes: usize,
}

/// The durable background queue (on when `state_dir` is set).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConf {
    /// Where the job store lives (`state_dir`; a volume in Kubernetes).
    pub dir: std::path::PathBuf,
    /// Jobs waiting or running at most; past it a background request gets 503 `queue_full`.
    pub max_jobs: usize,
    /// Jobs started per second at most when the queue drains.
    pub drain_per_s: f64,
    /// The longest a job that found no capacity waits before its next try.
    pub retry_max: Duration,
    /// How long a finished job's answer stays readable at its location.
    pub keep_done: Duration,
}

/// `shared_state`: what the fleet shares through Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedStateConf {
    /// `redis://` or `rediss://` (TLS); a secret, as it may carry a password.
    pub url: Secret,
    /// The URL is a seed node of a Redis Cluster.
    pub cluster: bool,
    /// Prefix of every key: two fleets on one Redis never see each other's state.
    pub namespace: String,
    /// The bound on one Redis call; a request never waits longer on Redis.
    pub timeout: Duration,
    /// Replicas sharing a team budget: while Redis is down each serves `budget / replicas`.
    pub replicas: u32,
}

/// The whole runtime configuration, swapped in as one immutable unit.
#[derive(Debug)]
pub struct Config {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    pub max_body_bytes: usize,
    /// Largest non-streaming answer taken (read whole before committing to it).
    pub max_response_body_bytes: usize,
    /// Largest single upstream stream event (and Bedrock frame, at twice this) taken.
    pub max_stream_event_bytes: usize,
    /// `Idempotency-Key` handling (`None`: off).
    pub idempotency: Option<IdempotencyConf>,
    /// Memory for the prompt cache.
    pub cache_max_bytes: u64,
    /// The background queue (`None`: no `state_dir`, nothing is queued).
    pub queue: Option<QueueConf>,
    /// State shared with the fleet through Redis (`None`: this process keeps its own).
    pub shared_state: Option<SharedStateConf>,
    /// Teams, each named by its client tokens (empty: no teams).
    pub teams: Vec<team::Team>,
    pub log_format: LogFormat,
    pub grace_period_s: u64,
    pub max_concurrent_requests: usize,
    pub client_body_timeout: Duration,
    /// Whole-header deadline and size, enforced by `header_guard` below Pingora's parser.
    pub client_header_timeout: Duration,
    pub max_request_header_bytes: usize,
    /// An idle keepalive client connection is closed after this long.
    pub client_keepalive_timeout: Duration,
    /// A client that reads nothing of its answer for this long is cut off.
    pub client_send_timeout: Duration,
    /// Tokens clients must present (`Authorization: Bearer` or `x-api-key`); empty = none needed.
    pub client_tokens: Vec<Secret>,
    pub admin_mutations: bool,
    /// `None`: only SIGHUP reloads.
    pub reload_poll: Option<Duration>,
    pub providers: Vec<Arc<Provider>>,
    pub catalog: Catalog,
    pub policy: Policy,
    pub routes: Vec<Route>,
}

/// A per-feature route: requests matching it use its policy.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Exact request paths; empty matches any path.
    pub paths: Vec<String>,
    /// Headers that must all be present with these exact values.
    pub headers: Vec<(http::HeaderName, String)>,
    /// The effective policy per model (indexed by `ModelId`): route over model over top level.
    pub policies: Vec<Policy>,
    pub zero_retention: bool,
}

impl Route {
    pub fn matches(&self, path: &str, headers: &http::HeaderMap) -> bool {
        (self.paths.is_empty() || self.paths.iter().any(|p| p == path))
            && self
                .headers
                .iter()
                .all(|(k, v)| headers.get(k).is_some_and(|h| h.as_bytes() == v.as_bytes()))
    }
}

impl Config {
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: self.client_header_timeout,
            max_header_bytes: self.max_request_header_bytes,
            idle_timeout: self.client_keepalive_timeout,
            send_timeout: self.client_send_timeout,
        }
    }

    /// Providers left out of rotation for want of a credential, with why (`name: reason`).
    pub fn without_credentials(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter_map(|p| {
                p.credential_missing
                    .as_ref()
                    .map(|why| format!("{} ({why})", p.name))
            })
            .collect()
    }

    pub fn provider_by_name(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The first route matching the request, if any.
    pub fn route_for(&self, path: &str, headers: &http::HeaderMap) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path, headers))
    }

    /// The policy a request uses: its route's for this model, else the model's.
    /// The policy a request for `model` runs under: its route's when it matched one, else its
    /// team's layer when the team has one, else the model's.
    pub fn policy_for<'a>(
        &'a self,
        route: Option<&'a Route>,
        team: Option<team::TeamId>,
        model: ModelId,
    ) -> &'a Policy {
        if let Some(r) = route {
            return &r.policies[model];
        }
        match team.and_then(|t| self.teams[t.0].policies.as_ref()) {
            Some(p) => &p[model.0],
            None => &self.catalog.model(model).policy,
        }
    }

    /// Whether a request must present a client token: `client_tokens_env` or `teams` is set.
    pub fn tokens_required(&self) -> bool {
        !self.client_tokens.is_empty() || !self.teams.is_empty()
    }

    /// The team a client token names, if any (compared in constant time, as client tokens are).
    pub fn team_of(&self, token: &[u8]) -> Option<team::TeamId> {
        self.teams
            .iter()
            .position(|t| provider::presented_matches(token, &t.tokens))
            .map(team::TeamId)
    }
}

/// A client connection's limits, read from the config current when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request header must be complete this long after its first byte (after accept, for a
    /// connection's first request).
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    /// A keepalive connection waiting for its next request is closed after this long.
    pub idle_timeout: Duration,
    /// A write the client does not make room for (it stopped reading) fails after this long.
    pub send_timeout: Duration,
}
