//! A provider's endpoints as a health-checked pool on pingora-load-balancing.
//!
//! Each endpoint (a region, a deployment, a second key) is a `Backend` of one `LoadBalancer`
//! with weighted round robin; pingora's `Backends` keeps each endpoint's probe verdict (our
//! `HealthCheck` sends the provider's authenticated probe to that endpoint) and `select_with`
//! skips unhealthy ones. On top of that verdict each endpoint has its own passive circuit
//! breaker and Retry-After cooldown, consulted in the same `select_with` call.
//!
//! Backend identity: pingora keys backends by socket address, but an endpoint is a URL (its host
//! resolved per connection, several keys on one host). So each endpoint gets a stable synthetic
//! identity address, `0.0.0.0:<index + 1>`, never dialled; the URL lives in the config.

use super::breaker::{Admission, Breaker, BreakerState};
use super::probe::{probe_once, ProbeError};
use crate::decide::route::SkipReason;
use crate::model::Provider;
use crate::net::resolve::Resolver;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Passive state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    pub breaker: Breaker,
    /// Set by a 429/503 `Retry-After`; only ever extended.
    pub cooldown_until: Option<Instant>,
    pub last_error: Option<String>,
}

/// The last probe result per endpoint, written by the health check, read by the probe service.
type ProbeResults = Vec<Mutex<Option<Result<(Duration, Bytes), ProbeError>>>>;

pub struct Pool {
    lb: LoadBalancer<RoundRobin>,
    /// The identity backend of each endpoint, built once (readiness lookups are per request).
    identities: Vec<Backend>,
    endpoints: Vec<Mutex<EndpointState>>,
    results: Arc<ProbeResults>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn identity(index: usize) -> Backend {
    let mut b = Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(std::net::SocketAddr::from((
            [0, 0, 0, 0],
            (index + 1) as u16,
        ))),
        weight: 1,
        ext: Default::default(),
    };
    b.ext.insert(EndpointIndex(index));
    b
}

/// Which endpoint a backend stands for.
#[derive(Debug, Clone, Copy)]
struct EndpointIndex(usize);

fn index_of(b: &Backend) -> Option<usize> {
    b.ext.get::<EndpointIndex>().map(|i| i.0)
}

/// The pool's health check: the provider's probe, sent to one endpoint with that endpoint's key.
struct EndpointProbe {
    provider: Arc<Provider>,
    connector: Arc<Connector>,
    resolver: Arc<Resolver>,
    results: Arc<ProbeResults>,
}

#[async_trait]
impl HealthCheck for EndpointProbe {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let Some(i) = index_of(target) else {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "backend without endpoint index",
            );
        };
        let result = probe_once(&self.connector, &self.resolver, &self.provider, i).await;
        let ok = result.is_ok();
        let detail = result.as_ref().err().map(|e| e.to_string());
        if let Some(slot) = self.results.get(i) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        }
        if ok {
            Ok(())
        } else {
            pingora::Error::e_explain(pingora::ErrorType::ConnectError, detail.unwrap_or_default())
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if self.provider.endpoints.len() > 1 {
            if let Some(ep) = index_of(target).and_then(|i| self.provider.endpoints.get(i)) {
                log::warn!(
                    "provider {} endpoint {} {}",
                    self.provider.name,
                    ep.url,
                    if healthy {
                        "probe succeeded, back in rotation"
                    } else {
                        "probe failed, out of rotation"
                    }
                );
            }
        }
    }

    /// One result flips an endpoint either way: the provider-level verdict already needs a
    /// probe interval to act, and a second one would double the time a dead region takes traffic.
    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

impl Pool {
    pub fn new(
        provider: &Arc<Provider>,
        connector: Arc<Connector>,
        resolver: Arc<Resolver>,
    ) -> Pool {
        let mut set = BTreeSet::new();
        for (i, ep) in provider.endpoints.iter().enumerate() {
            let mut b = identity(i);
            b.weight = ep.weight;
            set.insert(b);
        }
        let results: Arc<ProbeResults> = Arc::new(
            provider
                .endpoints
                .iter()
                .map(|_| Mutex::new(None))
                .collect(),
        );
        let mut backends = Backends::new(discovery::Static::new(set));
        backends.set_health_check(Box::new(EndpointProbe {
            provider: provider.clone(),
            connector,
            resolver,
            results: results.clone(),
        }));
        let lb = LoadBalancer::<RoundRobin>::from_backends(backends);
        // Static discovery never blocks or fails: this fills the selector synchronously.
        let _ = futures_now(lb.update());
        Pool {
            lb,
            identities: (0..provider.endpoints.len()).map(identity).collect(),
            endpoints: provider
                .endpoints
                .iter()
                .map(|_| {
                    Mutex::new(EndpointState {
                        breaker: Breaker::new(provider.breaker.clone()),
                        cooldown_until: None,
                        last_error: None,
                    })
                })
                .collect(),
            results,
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn state(&self, i: usize) -> MutexGuard<'_, EndpointState> {
        // A panic while holding this lock cannot leave the state half-written in a way that
        // matters more than losing health tracking; keep serving.
        self.endpoints[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The probe verdict pingora's `Backends` holds for endpoint `i`.
    pub fn probe_ready(&self, i: usize) -> bool {
        self.lb.backends().ready(&self.identities[i])
    }

    /// Why endpoint `i` takes no traffic now, and until when (probe verdicts have no end time:
    /// expected back around the next probe).
    pub fn blocked(&self, i: usize, now: Instant) -> Option<(SkipReason, Instant)> {
        let g = self.state(i);
        if let Some(until) = g.cooldown_until.filter(|u| *u > now) {
            return Some((SkipReason::Cooldown, until));
        }
        if let Some(until) = g.breaker.blocked(now) {
            return Some((SkipReason::BreakerOpen, until));
        }
        drop(g);
        if !self.probe_ready(i) {
            return Some((SkipReason::ProbeDown, now + Duration::from_secs(1)));
        }
        None
    }

    /// Pick an endpoint by weighted round robin among those whose probe, breaker and cooldown
    /// allow it, that `excluded` does not mark (the request's model is held out there), and in
    /// `region` when given. `Probation` means the breaker lets this one
    /// request test a recovering endpoint; its result must be reported.
    pub fn select(
        &self,
        region: Option<&str>,
        regions: &[Option<String>],
        excluded: &[bool],
        now: Instant,
    ) -> Option<(usize, Admission)> {
        let admitted = std::cell::Cell::new(None);
        self.lb
            .select_with(b"", self.endpoints.len() * 4 + 4, |b, ready| {
                let Some(i) = index_of(b) else {
                    return false;
                };
                if !ready
                    || excluded.get(i).copied().unwrap_or(false)
                    || region.is_some_and(|r| regions[i].as_deref() != Some(r))
                {
                    return false;
                }
                let mut g = self.state(i);
                if g.cooldown_until.is_some_and(|u| u > now) {
                    return false;
                }
                match g.breaker.admit(now) {
                    Admission::Reject { .. } => false,
                    a => {
                        admitted.set(Some((i, a)));
                        true
                    }
                }
            })?;
        admitted.get()
    }

    /// Run the health check on every endpoint now (in parallel) and return each result.
    pub async fn probe(&self) -> Vec<Option<Result<(Duration, Bytes), ProbeError>>> {
        self.lb.backends().run_health_check(true).await;
        self.results
            .iter()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect()
    }

    /// The most permissive breaker state across endpoints: the provider is as available as its
    /// best endpoint.
    pub fn best_breaker(&self) -> BreakerState {
        (0..self.len())
            .map(|i| self.state(i).breaker.state())
            .min_by_key(|s| s.gauge())
            .unwrap_or(BreakerState::Closed {
                consecutive_failures: 0,
            })
    }
}

/// Poll a future that is known to complete without waiting (static discovery).
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
