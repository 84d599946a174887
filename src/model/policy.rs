//! Routing policy: strategy, equivalents, cost ceiling, attempts, deadlines and backoff, after
//! merging route over model over top-level settings.

use std::time::Duration;

/// Candidate ordering strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// File order of the offerings.
    Ordered,
    /// Cheapest blended price first.
    PreferCost,
    /// Lowest observed latency first (probe EWMA blended with passive TTFB).
    PreferLatency,
    /// First choice drawn in proportion to offering `weight` (A/B, canaries); failover after
    /// it in file order.
    Weighted,
}

/// What the cost ceiling does to offerings above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCeiling {
    /// Never tried.
    Fail,
    /// Tried last, after everything within the ceiling failed.
    Degrade,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "ordered" => Some(Strategy::Ordered),
            "prefer_cost" => Some(Strategy::PreferCost),
            "prefer_latency" => Some(Strategy::PreferLatency),
            "weighted" => Some(Strategy::Weighted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Ordered => "ordered",
            Strategy::PreferCost => "prefer_cost",
            Strategy::PreferLatency => "prefer_latency",
            Strategy::Weighted => "weighted",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// Routing policy after merging a model's override over the top-level defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub strategy: Strategy,
    pub allow_equivalents: bool,
    pub min_grade: f64,
    pub max_cost_multiplier: Option<f64>,
    pub max_attempts: u32,
    /// `None`: derived per request as first-byte timeout × attempts.
    pub request_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub on_ceiling: OnCeiling,
    /// How long an offering that answered "model unavailable" stays out of rotation.
    pub offering_cooldown: Duration,
    /// Transient failures retried on the same offering before the next twin.
    pub same_offering_retries: u32,
    /// A 429's Retry-After up to this is waited out on the same offering.
    pub max_retry_after_wait: Duration,
    /// Overrides of the providers' `first_token` / `stream_idle` timeouts.
    pub first_token: Option<Duration>,
    pub stream_idle: Option<Duration>,
    pub stream_recovery: StreamRecovery,
    /// The prompt cache (`None`: off).
    pub cache: Option<CachePolicy>,
    /// Background work: whether this scope's requests may wait in the queue, and how long.
    pub queue: QueuePolicy,
}

/// How requests of a model or route wait for capacity in the durable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Every request of this scope is background work (as with `x-twinroute-priority:
    /// background`).
    pub background: bool,
    /// Without `Prefer: respond-async`, how long the client's connection is held waiting for
    /// its job before it gets 202 and the job's location.
    pub max_wait: Duration,
    /// A job not done this long after it was queued is failed with its reason.
    pub max_age: Duration,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            background: false,
            max_wait: Duration::from_secs(30),
            max_age: Duration::from_secs(86_400),
        }
    }
}

/// How answers of a model or route are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub max_entry_bytes: usize,
    pub stale_if_error: Duration,
    pub tool_calls: bool,
}

/// What happens to a stream that breaks after the client received its first content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamRecovery {
    /// End it with an error event in the client's format (the SDKs raise it).
    #[default]
    Error,
    /// Complete it from the next candidate that accepts assistant prefill.
    Continue,
}

impl StreamRecovery {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamRecovery::Error => "error",
            StreamRecovery::Continue => "continue",
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            strategy: Strategy::Ordered,
            allow_equivalents: false,
            min_grade: 0.8,
            max_cost_multiplier: None,
            max_attempts: 3,
            request_timeout: None,
            backoff: Backoff {
                base: Duration::from_millis(25),
                max: Duration::from_millis(1000),
            },
            on_ceiling: OnCeiling::Fail,
            offering_cooldown: Duration::from_secs(600),
            same_offering_retries: 0,
            max_retry_after_wait: Duration::ZERO,
            first_token: None,
            stream_idle: None,
            stream_recovery: StreamRecovery::Error,
            cache: None,
            queue: QueuePolicy::default(),
        }
    }
}
