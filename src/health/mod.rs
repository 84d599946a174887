//! Live provider health: breaker, Retry-After cooldown, probe verdict, latency, drain flag, and
//! per-offering availability (one model gone on a provider that still serves the others).
//!
//! Written through `Health::apply`, the one consumer of the `HealthSignal`s that
//! `decide::attempt` derives from each attempt (passive), and by the probe service (active);
//! read by routing as a `HealthSnapshot` value taken once per request (`routing_snapshot`). A
//! provider is a pool of endpoints (`pool`): probe verdicts, breakers and Retry-After cooldowns
//! are per endpoint, and the provider is out of rotation only when every endpoint is. Each piece
//! of state sits behind its own short-held lock; no lock is held across an await. State is kept
//! by identity across reloads (`carried_over`), not by position in the config.

pub mod admit;
pub mod breaker;
pub mod ewma;
pub mod pool;
pub mod probe;
pub mod verdict;

use crate::decide::attempt::HealthSignal;
use crate::decide::outcome::Grain;
use crate::decide::route::{HealthSnapshot, ProviderVerdict, SkipReason};
use crate::model::outcome::FailoverReason;
use crate::model::{BreakerConf, Provider, ProviderId};
use crate::net::resolve::Resolver;
use breaker::{Admission, Breaker, BreakerState};
use bytes::Bytes;
use ewma::{Ewma, PeakEwma};
use pingora::connectors::http::Connector;
use pool::Pool;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use verdict::{wall, Verdict, VerdictBus};

#[derive(Debug)]
struct Inner {
    probe_latency: Ewma,
    passive_ttfb: PeakEwma,
    last_error: Option<String>,
    /// Who drained the provider for the fleet, and when (`None`: not drained, or by hand here).
    drained_by: Option<(String, SystemTime)>,
}

#[derive(Debug)]
pub struct ProviderHealth {
    pub name: String,
    inner: Mutex<Inner>,
    /// The provider's endpoints, with per-endpoint probe verdicts, breakers and cooldowns.
    pool: Pool,
    /// Where each endpoint is, for region-pinned selection.
    regions: Vec<Option<String>>,
    urls: Vec<String>,
    drained: AtomicBool,
    /// Upstream requests in flight, for `max_connections`.
    inflight: AtomicUsize,
    /// Settings for the breakers of this provider's offerings (its endpoints' are in `pool`).
    breaker_conf: BreakerConf,
}

/// One upstream request in flight to a provider; released on drop.
pub struct InflightSlot<'a>(&'a AtomicUsize);

impl Drop for InflightSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One endpoint's view, for `/status`.
#[derive(Debug, Clone)]
pub struct EndpointSnapshot {
    pub url: String,
    pub region: Option<String>,
    pub probe_up: bool,
    pub breaker: &'static str,
    pub cooldown_remaining_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// A point-in-time view of one provider, for `/status` and metrics.
#[derive(Debug, Clone)]
pub struct ProviderSnapshot {
    pub name: String,
    pub healthy: bool,
    pub probe_up: bool,
    pub breaker: &'static str,
    pub breaker_gauge: i64,
    pub cooldown_remaining_ms: Option<u64>,
    pub latency_ms: Option<f64>,
    pub probe_latency_ms: Option<f64>,
    pub last_error: Option<String>,
    pub drained: bool,
    /// A fleet drain: which replica asked, and when.
    pub drained_by: Option<(String, SystemTime)>,
    pub endpoints: Vec<EndpointSnapshot>,
}

impl ProviderHealth {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state half-written in a way that
        // matters more than losing health tracking; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every endpoint's block, when all are blocked: the provider is out until the soonest.
    fn all_blocked(&self, now: Instant) -> Option<(SkipReason, Instant)> {
        let mut soonest: Option<(SkipReason, Instant)> = None;
        for i in 0..self.pool.len() {
            let b = self.pool.blocked(i, now)?;
            if soonest.is_none_or(|s| b.1 < s.1) {
                soonest = Some(b);
            }
        }
        soonest
    }
}

/// The health of one offering (a model on a provider), apart from its provider's: real
/// providers limit and overload per model, so a model's 429s, 5xx and silences cost it alone.
#[derive(Debug, Default, Clone)]
struct OfferingState {
    /// The model's own breaker and Retry-After hold at each of the provider's endpoints (grown
    /// on first use): one region's trouble with a deployment is not another region's, so an
    /// offering is held out only where it failed, and wholly only when it is out at every one.
    at: Vec<OfferingAtEndpoint>,
    /// Set when the provider answered "model unavailable"; lifted when it passes.
    unavailable_until: Option<Instant>,
    /// The provider's last model listing did not include this model ID.
    missing_from_listing: bool,
    last_error: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct OfferingAtEndpoint {
    /// Created at the offering's first failure there (with its provider's breaker settings).
    breaker: Option<Breaker>,
    /// Set by a Retry-After in this model's answer; only ever extended.
    cooldown_until: Option<Instant>,
}

impl OfferingAtEndpoint {
    /// Why the model takes no traffic at this endpoint now, and until when.
    fn blocked(&self, now: Instant) -> Option<(SkipReason, Instant)> {
        if let Some(until) = self.cooldown_until.filter(|u| *u > now) {
            return Some((SkipReason::Cooldown, until));
        }
        let until = self.breaker.as_ref()?.blocked(now)?;
        Some((SkipReason::BreakerOpen, until))
    }
}

impl OfferingState {
    fn at(&mut self, endpoint: usize) -> &mut OfferingAtEndpoint {
        if self.at.len() <= endpoint {
            self.at.resize(endpoint + 1, OfferingAtEndpoint::default());
        }
        &mut self.at[endpoint]
    }

    /// Held out at every one of `endpoints` endpoints: the soonest back of them.
    fn blocked_everywhere(&self, endpoints: usize, now: Instant) -> Option<(SkipReason, Instant)> {
        let mut soonest: Option<(SkipReason, Instant)> = None;
        for i in 0..endpoints {
            let b = self.at.get(i)?.blocked(now)?;
            if soonest.is_none_or(|s| b.1 < s.1) {
                soonest = Some(b);
            }
        }
        soonest
    }

    /// The most permissive breaker state across endpoints (closed where none was created).
    fn best_breaker(&self, endpoints: usize) -> BreakerState {
        let closed = BreakerState::Closed {
            consecutive_failures: 0,
        };
        (0..endpoints)
            .map(|i| {
                self.at
                    .get(i)
                    .and_then(|a| a.breaker.as_ref())
                    .map_or(closed, |b| b.state())
            })
            .min_by_key(|s| s.gauge())
            .unwrap_or(closed)
    }
}

/// A point-in-time view of one offering that is out (or whose breaker is not closed), for
/// `/status` and metrics.
#[derive(Debug, Clone)]
pub struct OfferingSnapshot {
    pub provider: String,
    pub model_id: String,
    /// Why it takes no traffic now; `None` while its breaker lets a probation through.
    pub reason: Option<SkipReason>,
    pub remaining_ms: Option<u64>,
    pub breaker: BreakerState,
    pub last_error: Option<String>,
    /// URLs of the endpoints where this model is held out now (by its own breaker or cooldown).
    pub held_out_at: Vec<String>,
}

/// Offerings' health by provider, then model ID: looked up with a borrowed `&str` on every
/// request, so the key is never built (allocated) to find an entry, only to add one.
#[derive(Debug, Default)]
struct OfferingTable(HashMap<ProviderId, HashMap<String, OfferingState>>);

impl OfferingTable {
    fn get(&self, provider: ProviderId, model_id: &str) -> Option<&OfferingState> {
        self.0.get(&provider)?.get(model_id)
    }

    fn get_mut(&mut self, provider: ProviderId, model_id: &str) -> Option<&mut OfferingState> {
        self.0.get_mut(&provider)?.get_mut(model_id)
    }

    /// The entry, created when missing.
    fn entry(&mut self, provider: ProviderId, model_id: &str) -> &mut OfferingState {
        let models = self.0.entry(provider).or_default();
        if !models.contains_key(model_id) {
            models.insert(model_id.to_string(), OfferingState::default());
        }
        models.get_mut(model_id).expect("inserted above")
    }

    fn iter(&self) -> impl Iterator<Item = (ProviderId, &String, &OfferingState)> {
        self.0
            .iter()
            .flat_map(|(p, models)| models.iter().map(move |(id, st)| (*p, id, st)))
    }

    fn is_empty(&self) -> bool {
        self.0.values().all(HashMap::is_empty)
    }
}

#[derive(Debug)]
pub struct Health {
    /// Shared with the next config's `Health` when a reload leaves the provider unchanged.
    providers: Vec<Arc<ProviderHealth>>,
    /// Keyed by (provider index, upstream model ID): the unit the provider answers about.
    offerings: Mutex<OfferingTable>,
    /// Fast path: while no offering was ever marked, routing never takes the lock above.
    offerings_marked: AtomicBool,
    /// Where this replica's verdicts go (`verdict`): unset, nothing is published.
    bus: BusSlot,
}

/// The verdict bus, once set.
#[derive(Default)]
struct BusSlot(std::sync::OnceLock<Arc<dyn VerdictBus>>);

impl std::fmt::Debug for BusSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "bus"
        } else {
            "no bus"
        })
    }
}

impl std::ops::Deref for BusSlot {
    type Target = std::sync::OnceLock<Arc<dyn VerdictBus>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Health {
    pub fn new(providers: &[Arc<Provider>]) -> Health {
        Health::carried_over(providers, None)
    }

    /// The health of a new config's providers. Keyed by identity, not position: a provider the
    /// reload left unchanged (`Provider::same_upstream`) keeps its whole state (breakers,
    /// cooldowns, probe verdicts, latency, drain flag, offerings taken out); a changed or new
    /// one starts fresh but for its drain flag; a removed one's state goes with the old config.
    pub fn carried_over(
        providers: &[Arc<Provider>],
        previous: Option<(&Health, &[Arc<Provider>])>,
    ) -> Health {
        // One connector for every pool's probes: off the request path, shared keep-alive.
        let connector = Arc::new(Connector::new(None));
        let resolver = Arc::new(Resolver::default());
        let offerings = Mutex::new(OfferingTable::default());
        let list = providers
            .iter()
            .map(|p| {
                let old = previous.and_then(|(h, old_providers)| {
                    let i = old_providers.iter().position(|o| o.name == p.name)?;
                    Some((h, &old_providers[i], ProviderId(i)))
                });
                match old {
                    Some((h, old_p, old_id)) if old_p.same_upstream(p) => {
                        let kept = h.offerings();
                        let mut g = offerings.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(models) = kept.0.get(&old_id) {
                            g.0.insert(p.id, models.clone());
                        }
                        h.providers[old_id].clone()
                    }
                    _ => {
                        let fresh = Arc::new(ProviderHealth::new(p, &connector, &resolver));
                        if let Some((h, _, old_id)) = old {
                            let drained = h.providers[old_id].drained.load(Ordering::Relaxed);
                            fresh.drained.store(drained, Ordering::Relaxed);
                        }
                        fresh
                    }
                }
            })
            .collect();
        let marked = !offerings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        let bus = BusSlot::default();
        if let Some(b) = previous.and_then(|(h, _)| h.bus.get()) {
            let _ = bus.set(b.clone());
        }
        Health {
            providers: list,
            offerings,
            offerings_marked: AtomicBool::new(marked),
            bus,
        }
    }
}

impl ProviderHealth {
    fn new(p: &Arc<Provider>, connector: &Arc<Connector>, resolver: &Arc<Resolver>) -> Self {
        ProviderHealth {
            name: p.name.clone(),
            inner: Mutex::new(Inner {
                probe_latency: Ewma::default(),
                passive_ttfb: PeakEwma::new(Duration::from_secs(10)),
                last_error: None,
                drained_by: None,
            }),
            pool: Pool::new(p, connector.clone(), resolver.clone()),
            regions: p.endpoints.iter().map(|e| e.region.clone()).collect(),
            urls: p.endpoints.iter().map(|e| e.url.clone()).collect(),
            drained: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            breaker_conf: p.breaker.clone(),
        }
    }
}

impl Health {
    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Choose the endpoint of `provider` for one attempt of `model_id` (weighted round robin
    /// over those probe, breaker and cooldown allow, where the model is not held out, in
    /// `region` when pinned). `Probation` means this request is the single test of an endpoint
    /// whose breaker cooldown ended; its result must be reported.
    pub fn select_endpoint(
        &self,
        provider: ProviderId,
        region: Option<&str>,
        model_id: &str,
        now: Instant,
    ) -> Option<(usize, Admission)> {
        let p = &self.providers[provider];
        let model_out = self.endpoints_out_for(provider, model_id, now);
        p.pool.select(region, &p.regions, &model_out, now)
    }

    /// An endpoint to use when health turned everything away (fail open): the one in `region`
    /// (if pinned) expected back soonest.
    pub fn fallback_endpoint(
        &self,
        provider: ProviderId,
        region: Option<&str>,
        now: Instant,
    ) -> usize {
        let p = &self.providers[provider];
        (0..p.pool.len())
            .filter(|&i| region.is_none_or(|r| p.regions[i].as_deref() == Some(r)))
            .min_by_key(|&i| p.pool.blocked(i, now).map(|(_, u)| u).unwrap_or(now))
            .unwrap_or(0)
    }

    /// Take one of `provider`'s `max` upstream slots (`None` max: unbounded, always granted).
    pub fn try_acquire(
        &self,
        provider: ProviderId,
        max: Option<usize>,
    ) -> Option<InflightSlot<'_>> {
        let c = &self.providers[provider].inflight;
        match max {
            None => {
                c.fetch_add(1, Ordering::AcqRel);
            }
            Some(max) => {
                c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
            }
        }
        Some(InflightSlot(c))
    }

    pub fn endpoint_url(&self, provider: ProviderId, endpoint: usize) -> &str {
        &self.providers[provider].urls[endpoint]
    }

    pub fn on_success(&self, provider: ProviderId, endpoint: usize, ttfb: Duration, now: Instant) {
        self.close_breaker(provider, endpoint);
        self.providers[provider]
            .lock()
            .passive_ttfb
            .observe(ttfb, now);
    }

    /// The endpoint answered: its breaker closes (said to the fleet when it was not closed).
    fn close_breaker(&self, provider: ProviderId, endpoint: usize) {
        let mut e = self.providers[provider].pool.state(endpoint);
        let failing = e.breaker.failing();
        let closed = e.breaker.on_success();
        drop(e);
        if closed {
            self.tell(provider, |_| Verdict::BreakerClosed {
                at: self.subject(provider, endpoint, None),
            });
        }
        if failing {
            self.fleet_clear(provider, endpoint, None);
        }
    }

    /// A retryable failure of the endpoint. `count_for_breaker` is false for the second and
    /// later failures of the same request on the same endpoint.
    pub fn on_failure(
        &self,
        provider: ProviderId,
        endpoint: usize,
        reason: FailoverReason,
        count_for_breaker: bool,
        now: Instant,
    ) {
        let p = &self.providers[provider];
        let mut e = p.pool.state(endpoint);
        let was_open = !e.breaker.admits_traffic();
        let opened = count_for_breaker
            .then(|| e.breaker.on_failure(now, rand::random::<f64>()))
            .flatten();
        e.last_error = Some(reason.as_str().to_string());
        drop(e);
        p.lock().last_error = Some(reason.as_str().to_string());
        match opened {
            Some(until) => self.tell(provider, |_| Verdict::BreakerOpened {
                at: self.subject(provider, endpoint, None),
                until: wall(until, now),
            }),
            None if count_for_breaker && !was_open => {
                self.fleet_count(provider, endpoint, None, p.breaker_conf.failures)
            }
            None => {}
        }
    }

    /// A response said "come back in `after`": hold the endpoint for at least that long, without
    /// counting it as a breaker failure. A shorter Retry-After never shortens a longer one.
    pub fn on_retry_after(
        &self,
        provider: ProviderId,
        endpoint: usize,
        after: Duration,
        now: Instant,
    ) {
        let mut e = self.providers[provider].pool.state(endpoint);
        let news = extend(&mut e.cooldown_until, now + after, now);
        drop(e);
        if news {
            self.tell(provider, |_| Verdict::Cooldown {
                at: self.subject(provider, endpoint, None),
                until: SystemTime::now() + after,
            });
        }
    }

    /// A probation request ended without an answer either way.
    pub fn on_abandoned(&self, provider: ProviderId, endpoint: usize, now: Instant) {
        self.providers[provider]
            .pool
            .state(endpoint)
            .breaker
            .on_abandoned(now);
    }

    /// Change one offering's state (created on first use). Marks the map as in use, so routing
    /// starts reading it.
    fn with_offering<R>(
        &self,
        provider: ProviderId,
        model_id: &str,
        f: impl FnOnce(&mut OfferingState, &BreakerConf) -> R,
    ) -> R {
        let mut g = self.offerings();
        let st = g.entry(provider, model_id);
        self.offerings_marked.store(true, Ordering::Relaxed);
        f(st, &self.providers[provider].breaker_conf)
    }

    /// A failure of this model on this provider's endpoint (a 429, a 5xx, silence after the
    /// request was taken): counts for the offering's breaker there, not the endpoint's.
    pub fn on_offering_failure(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model_id: &str,
        reason: FailoverReason,
        count_for_breaker: bool,
        now: Instant,
    ) {
        let (was_open, opened) = self.with_offering(provider, model_id, |st, conf| {
            st.last_error = Some(reason.as_str().to_string());
            if !count_for_breaker {
                return (false, None);
            }
            let b = st
                .at(endpoint)
                .breaker
                .get_or_insert_with(|| Breaker::new(conf.clone()));
            (
                !b.admits_traffic(),
                b.on_failure(now, rand::random::<f64>()),
            )
        });
        self.providers[provider].lock().last_error = Some(format!("{model_id}: {reason}"));
        match opened {
            Some(until) => self.tell(provider, |_| Verdict::BreakerOpened {
                at: self.subject(provider, endpoint, Some(model_id)),
                until: wall(until, now),
            }),
            None if count_for_breaker && !was_open => {
                let threshold = self.providers[provider].breaker_conf.failures;
                self.fleet_count(provider, endpoint, Some(model_id), threshold)
            }
            None => {}
        }
    }

    /// The model's answer said "come back in `after`": cool this offering at that endpoint.
    pub fn on_offering_retry_after(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model_id: &str,
        after: Duration,
        now: Instant,
    ) {
        let news = self.with_offering(provider, model_id, |st, _| {
            extend(&mut st.at(endpoint).cooldown_until, now + after, now)
        });
        if news {
            self.tell(provider, |_| Verdict::Cooldown {
                at: self.subject(provider, endpoint, Some(model_id)),
                until: SystemTime::now() + after,
            });
        }
    }

    /// Admit one request to this offering at `endpoint`: `Probation` when its breaker's cooldown
    /// there just ended and this request is the one test; `Reject` while it is open or a
    /// probation is out.
    pub fn admit_offering(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model_id: &str,
        now: Instant,
    ) -> Admission {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return Admission::Admit;
        }
        let mut g = self.offerings();
        let Some(st) = g.get_mut(provider, model_id) else {
            return Admission::Admit;
        };
        match st.at.get_mut(endpoint) {
            Some(a) if a.cooldown_until.is_some_and(|u| u > now) => Admission::Reject {
                until: a.cooldown_until,
            },
            Some(OfferingAtEndpoint {
                breaker: Some(b), ..
            }) => b.admit(now),
            _ => Admission::Admit,
        }
    }

    /// Endpoints of `provider` where this model is held out now (empty: none), for selection.
    fn endpoints_out_for(&self, provider: ProviderId, model_id: &str, now: Instant) -> Vec<bool> {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let g = self.offerings();
        let Some(st) = g.get(provider, model_id) else {
            return Vec::new();
        };
        st.at.iter().map(|a| a.blocked(now).is_some()).collect()
    }

    /// A probation request of the offering at `endpoint` ended without a verdict on the model.
    pub fn on_offering_abandoned(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model_id: &str,
        now: Instant,
    ) {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.offerings();
        if let Some(b) = g
            .get_mut(provider, model_id)
            .and_then(|st| st.at.get_mut(endpoint))
            .and_then(|a| a.breaker.as_mut())
        {
            b.on_abandoned(now);
        }
    }

    /// Probe every endpoint of `provider` now. Returns the first successful listing body (for
    /// the catalog comparison) and, when the provider as a whole flipped, `Some(up)` with the
    /// error that took it down.
    pub async fn probe(
        &self,
        provider: ProviderId,
    ) -> (Option<Bytes>, Option<(bool, Option<String>)>) {
        let p = &self.providers[provider];
        let was_up = (0..p.pool.len()).any(|i| p.pool.probe_ready(i));
        let results = p.pool.probe().await;
        let mut body = None;
        let mut error = None;
        {
            let mut g = p.lock();
            for r in results.into_iter().flatten() {
                match r {
                    Ok((rtt, b)) => {
                        g.probe_latency.observe(rtt);
                        body.get_or_insert(b);
                    }
                    Err(e) => {
                        let e = format!("probe: {e}");
                        g.last_error = Some(e.clone());
                        error.get_or_insert(e);
                    }
                }
            }
        }
        let up = (0..p.pool.len()).any(|i| p.pool.probe_ready(i));
        (body, (up != was_up).then_some((up, error)))
    }

    /// Drain (or undrain) a provider here; `fleet` names this replica when the whole fleet is
    /// to follow (the verdict is published), `None` for this replica alone.
    pub fn set_drained(&self, provider: ProviderId, drained: bool, fleet: Option<&str>) {
        let p = &self.providers[provider];
        p.drained.store(drained, Ordering::Relaxed);
        let at = SystemTime::now();
        p.lock().drained_by = fleet.filter(|_| drained).map(|by| (by.to_string(), at));
        if let Some(by) = fleet {
            self.tell(provider, |name| Verdict::Drained {
                provider: name.to_string(),
                drained,
                by: by.to_string(),
                at,
            });
        }
    }

    pub fn snapshot(&self, provider: ProviderId, now: Instant) -> ProviderSnapshot {
        let p = &self.providers[provider];
        let endpoints: Vec<EndpointSnapshot> = (0..p.pool.len())
            .map(|i| {
                let e = p.pool.state(i);
                EndpointSnapshot {
                    url: p.urls[i].clone(),
                    region: p.regions[i].clone(),
                    probe_up: p.pool.probe_ready(i),
                    breaker: e.breaker.state().name(),
                    cooldown_remaining_ms: e
                        .cooldown_until
                        .filter(|u| *u > now)
                        .map(|u| (u - now).as_millis() as u64),
                    last_error: e.last_error.clone(),
                }
            })
            .collect();
        let state = p.pool.best_breaker();
        let probe_up = endpoints.iter().any(|e| e.probe_up);
        let drained = p.drained.load(Ordering::Relaxed);
        // The provider is cooling down only when every endpoint is; report the soonest end.
        let cooldown = if endpoints.iter().all(|e| e.cooldown_remaining_ms.is_some()) {
            endpoints
                .iter()
                .filter_map(|e| e.cooldown_remaining_ms)
                .min()
        } else {
            None
        };
        let g = p.lock();
        ProviderSnapshot {
            name: p.name.clone(),
            healthy: !drained && p.all_blocked(now).is_none(),
            probe_up,
            breaker: state.name(),
            breaker_gauge: state.gauge(),
            cooldown_remaining_ms: cooldown,
            latency_ms: score(&g),
            probe_latency_ms: g.probe_latency.get(),
            last_error: g.last_error.clone(),
            drained,
            drained_by: g.drained_by.clone().filter(|_| drained),
            endpoints,
        }
    }

    pub fn breaker_state(&self, provider: ProviderId) -> BreakerState {
        self.providers[provider].pool.best_breaker()
    }

    fn offerings(&self) -> MutexGuard<'_, OfferingTable> {
        self.offerings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The provider said this model is gone there: keep it out for `for_how_long` (extended,
    /// never shortened, by later answers), while the provider serves its other models.
    pub fn mark_offering_unavailable(
        &self,
        provider: ProviderId,
        model_id: &str,
        for_how_long: Duration,
        now: Instant,
    ) {
        let news = self.with_offering(provider, model_id, |st, _| {
            st.last_error = Some(FailoverReason::ModelUnavailable.as_str().to_string());
            extend(&mut st.unavailable_until, now + for_how_long, now)
        });
        if news {
            self.tell(provider, |name| Verdict::ModelGone {
                provider: name.to_string(),
                model: model_id.to_string(),
                until: SystemTime::now() + for_how_long,
            });
        }
    }

    /// An offering answered at `endpoint`: its breaker there closes at once, and whatever
    /// marked the model out was wrong or is over.
    pub fn offering_answered(&self, provider: ProviderId, endpoint: usize, model_id: &str) {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.offerings();
        let (mut failing, mut closed) = (false, false);
        if let Some(st) = g.get_mut(provider, model_id) {
            st.unavailable_until = None;
            if let Some(a) = st.at.get_mut(endpoint) {
                a.cooldown_until = None;
                if let Some(b) = a.breaker.as_mut() {
                    failing = b.failing();
                    closed = b.on_success();
                }
            }
        }
        drop(g);
        if closed {
            self.tell(provider, |_| Verdict::BreakerClosed {
                at: self.subject(provider, endpoint, Some(model_id)),
            });
        }
        if failing {
            self.fleet_clear(provider, endpoint, Some(model_id));
        }
    }

    /// Apply a model listing from the provider's probe: each of `offered` (this provider's
    /// offering model IDs) is in or out by whether `listed` has it. Returns the IDs whose state
    /// changed, with `true` for "now missing".
    pub fn apply_listing(
        &self,
        provider: ProviderId,
        offered: &[&str],
        listed: &HashSet<String>,
    ) -> Vec<(String, bool)> {
        let mut changed = Vec::new();
        let mut g = self.offerings();
        for id in offered {
            let missing = !listed.contains(*id);
            let was = g.get(provider, id).is_some_and(|s| s.missing_from_listing);
            if was != missing {
                g.entry(provider, id).missing_from_listing = missing;
                changed.push((id.to_string(), missing));
            }
        }
        if changed.iter().any(|(_, m)| *m) {
            self.offerings_marked.store(true, Ordering::Relaxed);
        }
        changed
    }

    /// Offerings that are out right now, held out at some endpoint, or whose breaker is not
    /// closed.
    pub fn offering_snapshot(&self, now: Instant) -> Vec<OfferingSnapshot> {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let g = self.offerings();
        let mut out: Vec<OfferingSnapshot> = g
            .iter()
            .filter_map(|(p, id, st)| {
                let endpoints = self.providers[p].pool.len();
                let verdict = offering_verdict(st, endpoints, now);
                let breaker = st.best_breaker(endpoints);
                let held_out_at: Vec<String> = (0..endpoints)
                    .filter(|i| st.at.get(*i).is_some_and(|a| a.blocked(now).is_some()))
                    .map(|i| self.providers[p].urls[i].clone())
                    .collect();
                if verdict.is_none() && breaker.gauge() == 0 && held_out_at.is_empty() {
                    return None;
                }
                Some(OfferingSnapshot {
                    provider: self.providers[p].name.clone(),
                    model_id: id.clone(),
                    reason: verdict.map(|(r, _)| r),
                    remaining_ms: verdict.and_then(|(_, ms)| ms),
                    breaker,
                    last_error: st.last_error.clone(),
                    held_out_at,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.provider, &a.model_id).cmp(&(&b.provider, &b.model_id)));
        out
    }
}

/// Extend a hold to `until`; a shorter one never shortens a longer one.
/// Hold until at least `until`. Returns whether that is news for the fleet (`verdict`): the
/// hold began, or moved a second or more later; a storm of 429s each extending it by the time
/// between them is not a verdict apiece.
fn extend(hold: &mut Option<Instant>, until: Instant, now: Instant) -> bool {
    let news = hold.is_none_or(|u| u <= now || until >= u + Duration::from_secs(1));
    if hold.is_none_or(|u| u < until) {
        *hold = Some(until);
    }
    news
}

/// Why an offering is out (at every endpoint of its provider), and for how much longer when
/// that is known. The provider's word that the model is gone comes first, then the model's own
/// Retry-After or breaker, then the listing.
fn offering_verdict(
    st: &OfferingState,
    endpoints: usize,
    now: Instant,
) -> Option<(SkipReason, Option<u64>)> {
    let ms = |until: Instant| Some((until - now).as_millis() as u64);
    if let Some(until) = st.unavailable_until.filter(|u| *u > now) {
        return Some((SkipReason::ModelUnavailable, ms(until)));
    }
    if let Some((reason, until)) = st.blocked_everywhere(endpoints, now) {
        return Some((reason, ms(until)));
    }
    if st.missing_from_listing {
        return Some((SkipReason::ProbeModelMissing, None));
    }
    None
}

/// Latency score: the probe's round trip and the passive time-to-first-byte, averaged when both
/// are known.
fn score(g: &Inner) -> Option<f64> {
    match (g.probe_latency.get(), g.passive_ttfb.get()) {
        (Some(p), Some(t)) => Some((p + t) / 2.0),
        (Some(v), None) | (None, Some(v)) => Some(v),
        (None, None) => None,
    }
}

impl Health {
    /// Apply what one attempt said about an endpoint of `provider` and its offering `model_id`
    /// (`decide::attempt` decides which signals an outcome gives; this is their one consumer).
    pub fn apply(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model_id: &str,
        signal: HealthSignal,
        now: Instant,
    ) {
        match signal {
            HealthSignal::Success { ttfb } => self.on_success(provider, endpoint, ttfb, now),
            HealthSignal::EndpointAnswered => self.close_breaker(provider, endpoint),
            HealthSignal::Failure {
                reason,
                grain: Grain::Endpoint,
                count_for_breaker,
            } => self.on_failure(provider, endpoint, reason, count_for_breaker, now),
            HealthSignal::Failure {
                reason,
                grain: Grain::Offering,
                count_for_breaker,
            } => self.on_offering_failure(
                provider,
                endpoint,
                model_id,
                reason,
                count_for_breaker,
                now,
            ),
            HealthSignal::RetryAfter {
                after,
                grain: Grain::Endpoint,
            } => self.on_retry_after(provider, endpoint, after, now),
            HealthSignal::RetryAfter {
                after,
                grain: Grain::Offering,
            } => self.on_offering_retry_after(provider, endpoint, model_id, after, now),
            HealthSignal::ProbationAbandoned(Grain::Endpoint) => {
                self.on_abandoned(provider, endpoint, now)
            }
            HealthSignal::ProbationAbandoned(Grain::Offering) => {
                self.on_offering_abandoned(provider, endpoint, model_id, now)
            }
            HealthSignal::OfferingUnavailable(cooldown) => {
                self.mark_offering_unavailable(provider, model_id, cooldown, now);
                log::warn!(
                    "provider {}: model {model_id} unavailable; offering out for {} s",
                    self.providers[provider].name,
                    cooldown.as_secs()
                );
            }
            HealthSignal::OfferingAnswered => self.offering_answered(provider, endpoint, model_id),
            HealthSignal::AccountProblem(cooldown) => {
                self.on_retry_after(provider, endpoint, cooldown, now);
                log::warn!(
                    "provider {}: account cannot pay (credits or quota exhausted); endpoint {} out for {} s",
                    self.providers[provider].name,
                    self.endpoint_url(provider, endpoint),
                    cooldown.as_secs()
                );
            }
        }
    }

    /// What health holds against the `relevant` providers (those a request could use) and
    /// their offerings right now, for one routing decision: each provider's state is read once,
    /// not once per candidate or sort comparison.
    pub fn routing_snapshot(
        &self,
        now: Instant,
        relevant: impl IntoIterator<Item = ProviderId>,
    ) -> HealthSnapshot {
        let mut snap = HealthSnapshot::all_up();
        for id in relevant {
            let Some(p) = self.providers.get(id.0) else {
                continue;
            };
            let verdict = ProviderVerdict {
                skip: self.provider_skip(id, now),
                latency_ms: score(&p.lock()),
            };
            if verdict != ProviderVerdict::default() {
                snap.set_provider(id, verdict);
            }
        }
        if self.offerings_marked.load(Ordering::Relaxed) {
            for (p, id, st) in self.offerings().iter() {
                let endpoints = self.providers[p].pool.len();
                if let Some((reason, until)) = offering_until(st, endpoints, now) {
                    snap.skip_offering(p, id, reason, until);
                }
            }
        }
        snap
    }

    /// `Some((reason, until))` when the provider should be skipped now; `until` is when it is
    /// expected back.
    pub fn provider_skip(
        &self,
        provider: ProviderId,
        now: Instant,
    ) -> Option<(SkipReason, Instant)> {
        let p = &self.providers[provider];
        if p.drained.load(Ordering::Relaxed) {
            // Drained providers come back only by hand: last in fail-open order.
            return Some((SkipReason::Drained, now + Duration::from_secs(86_400)));
        }
        p.all_blocked(now)
    }

    /// `Some` when this one model is out on this provider while the provider itself is fine.
    pub fn offering_skip(
        &self,
        provider: ProviderId,
        model_id: &str,
        now: Instant,
    ) -> Option<(SkipReason, Instant)> {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return None;
        }
        let g = self.offerings();
        let endpoints = self.providers[provider].pool.len();
        offering_until(g.get(provider, model_id)?, endpoints, now)
    }
}

/// An offering's verdict with an end time: a listing gap has none, so expect it back at the
/// next probe, roughly.
fn offering_until(
    st: &OfferingState,
    endpoints: usize,
    now: Instant,
) -> Option<(SkipReason, Instant)> {
    let (reason, remaining) = offering_verdict(st, endpoints, now)?;
    Some((
        reason,
        now + remaining
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(5)),
    ))
}
