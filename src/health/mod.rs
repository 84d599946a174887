//! Live provider health: breaker, Retry-After cooldown, probe verdict, latency, drain flag, and
//! per-offering availability (one model gone on a provider that still serves the others).
//!
//! Written by the attempt loop (passive signals) and the probe service (active signals); read by
//! routing through `HealthView`. Each provider's state sits behind its own short-held lock; no
//! lock is held across an await.

pub mod breaker;
pub mod ewma;
pub mod probe;

use crate::config::Provider;
use crate::route::{HealthView, SkipReason};
use breaker::{Admission, Breaker, BreakerState};
use ewma::{Ewma, PeakEwma};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
struct Inner {
    breaker: Breaker,
    /// Set by a 429/503 `Retry-After`; only ever extended.
    cooldown_until: Option<Instant>,
    probe_latency: Ewma,
    passive_ttfb: PeakEwma,
    last_error: Option<String>,
    /// When the probe last failed, for ordering in panic mode.
    probe_down_since: Option<Instant>,
}

#[derive(Debug)]
pub struct ProviderHealth {
    pub name: String,
    inner: Mutex<Inner>,
    probe_up: AtomicBool,
    drained: AtomicBool,
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
}

impl ProviderHealth {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state half-written in a way that
        // matters more than losing health tracking; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One offering (a model on a provider) out of rotation while its provider stays in.
#[derive(Debug, Default, Clone)]
struct OfferingState {
    /// Set when the provider answered "model unavailable"; lifted when it passes.
    unavailable_until: Option<Instant>,
    /// The provider's last model listing did not include this model ID.
    missing_from_listing: bool,
}

/// A point-in-time view of one offering that is out, for `/status`.
#[derive(Debug, Clone)]
pub struct OfferingSnapshot {
    pub provider: String,
    pub model_id: String,
    pub reason: SkipReason,
    pub remaining_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Health {
    providers: Vec<ProviderHealth>,
    /// Keyed by (provider index, upstream model ID): the unit the provider answers about.
    offerings: Mutex<HashMap<(usize, String), OfferingState>>,
    /// Fast path: while no offering was ever marked, routing never takes the lock above.
    offerings_marked: AtomicBool,
}

impl Health {
    pub fn new(providers: &[Arc<Provider>]) -> Health {
        Health {
            providers: providers
                .iter()
                .map(|p| ProviderHealth {
                    name: p.name.clone(),
                    inner: Mutex::new(Inner {
                        breaker: Breaker::new(p.breaker.clone()),
                        cooldown_until: None,
                        probe_latency: Ewma::default(),
                        passive_ttfb: PeakEwma::new(Duration::from_secs(10)),
                        last_error: None,
                        probe_down_since: None,
                    }),
                    probe_up: AtomicBool::new(true),
                    drained: AtomicBool::new(false),
                })
                .collect(),
            offerings: Mutex::new(HashMap::new()),
            offerings_marked: AtomicBool::new(false),
        }
    }

    fn offerings(&self) -> MutexGuard<'_, HashMap<(usize, String), OfferingState>> {
        self.offerings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The provider said this model is gone there: keep it out for `for_how_long` (extended,
    /// never shortened, by later answers), while the provider serves its other models.
    pub fn mark_offering_unavailable(
        &self,
        provider: usize,
        model_id: &str,
        for_how_long: Duration,
        now: Instant,
    ) {
        let until = now + for_how_long;
        let mut g = self.offerings();
        let st = g.entry((provider, model_id.to_string())).or_default();
        if st.unavailable_until.is_none_or(|u| u < until) {
            st.unavailable_until = Some(until);
        }
        self.offerings_marked.store(true, Ordering::Relaxed);
    }

    /// An offering answered: whatever marked it out was wrong or is over.
    pub fn offering_answered(&self, provider: usize, model_id: &str) {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.offerings();
        if let Some(st) = g.get_mut(&(provider, model_id.to_string())) {
            st.unavailable_until = None;
        }
    }

    /// Apply a model listing from the provider's probe: each of `offered` (this provider's
    /// offering model IDs) is in or out by whether `listed` has it. Returns the IDs whose state
    /// changed, with `true` for "now missing".
    pub fn apply_listing(
        &self,
        provider: usize,
        offered: &[&str],
        listed: &HashSet<String>,
    ) -> Vec<(String, bool)> {
        let mut changed = Vec::new();
        let mut g = self.offerings();
        for id in offered {
            let missing = !listed.contains(*id);
            let key = (provider, id.to_string());
            let was = g.get(&key).is_some_and(|s| s.missing_from_listing);
            if was != missing {
                g.entry(key).or_default().missing_from_listing = missing;
                changed.push((id.to_string(), missing));
            }
        }
        if changed.iter().any(|(_, m)| *m) {
            self.offerings_marked.store(true, Ordering::Relaxed);
        }
        changed
    }

    /// Offerings that are out right now.
    pub fn offering_snapshot(&self, now: Instant) -> Vec<OfferingSnapshot> {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let g = self.offerings();
        let mut out: Vec<OfferingSnapshot> = g
            .iter()
            .filter_map(|((p, id), st)| {
                let (reason, remaining_ms) = offering_verdict(st, now)?;
                Some(OfferingSnapshot {
                    provider: self.providers[*p].name.clone(),
                    model_id: id.clone(),
                    reason,
                    remaining_ms,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.provider, &a.model_id).cmp(&(&b.provider, &b.model_id)));
        out
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Ask to send a request to `provider` now. `Probation` means this request is the single
    /// probe of a breaker whose cooldown ended; its result must be reported.
    pub fn admit(&self, provider: usize, now: Instant) -> Admission {
        self.providers[provider].lock().breaker.admit(now)
    }

    pub fn on_success(&self, provider: usize, ttfb: Duration, now: Instant) {
        let mut g = self.providers[provider].lock();
        g.breaker.on_success();
        g.passive_ttfb.observe(ttfb, now);
    }

    /// A retryable failure. `count_for_breaker` is false for the second and later failures of the
    /// same request on the same provider.
    pub fn on_failure(&self, provider: usize, reason: &str, count_for_breaker: bool, now: Instant) {
        let mut g = self.providers[provider].lock();
        if count_for_breaker {
            g.breaker.on_failure(now);
        }
        g.last_error = Some(reason.to_string());
    }

    /// A response said "come back in `after`": hold the provider for at least that long, without
    /// counting it as a breaker failure. A shorter Retry-After never shortens a longer one.
    pub fn on_retry_after(&self, provider: usize, after: Duration, now: Instant) {
        let mut g = self.providers[provider].lock();
        let until = now + after;
        if g.cooldown_until.is_none_or(|u| u < until) {
            g.cooldown_until = Some(until);
        }
    }

    /// A probation request ended without an answer either way.
    pub fn on_abandoned(&self, provider: usize, now: Instant) {
        self.providers[provider].lock().breaker.on_abandoned(now);
    }

    /// A slow first byte that still produced an answer moves the latency score too.
    pub fn observe_ttfb(&self, provider: usize, ttfb: Duration, now: Instant) {
        self.providers[provider]
            .lock()
            .passive_ttfb
            .observe(ttfb, now);
    }

    /// Record a probe result; returns true when it flipped the provider up or down.
    pub fn on_probe(
        &self,
        provider: usize,
        result: Result<Duration, String>,
        now: Instant,
    ) -> bool {
        let p = &self.providers[provider];
        let mut g = p.lock();
        let was_up = p.probe_up.load(Ordering::Relaxed);
        match result {
            Ok(rtt) => {
                g.probe_latency.observe(rtt);
                g.probe_down_since = None;
                p.probe_up.store(true, Ordering::Relaxed);
                !was_up
            }
            Err(e) => {
                g.last_error = Some(format!("probe: {e}"));
                g.probe_down_since.get_or_insert(now);
                p.probe_up.store(false, Ordering::Relaxed);
                was_up
            }
        }
    }

    pub fn set_drained(&self, provider: usize, drained: bool) {
        self.providers[provider]
            .drained
            .store(drained, Ordering::Relaxed);
    }

    pub fn snapshot(&self, provider: usize, now: Instant) -> ProviderSnapshot {
        let p = &self.providers[provider];
        let g = p.lock();
        let state = g.breaker.state();
        let probe_up = p.probe_up.load(Ordering::Relaxed);
        let drained = p.drained.load(Ordering::Relaxed);
        let cooldown = g
            .cooldown_until
            .filter(|u| *u > now)
            .map(|u| (u - now).as_millis() as u64);
        let breaker_blocks = g.breaker.blocked(now).is_some();
        ProviderSnapshot {
            name: p.name.clone(),
            healthy: probe_up && !drained && cooldown.is_none() && !breaker_blocks,
            probe_up,
            breaker: state.name(),
            breaker_gauge: state.gauge(),
            cooldown_remaining_ms: cooldown,
            latency_ms: score(&g),
            probe_latency_ms: g.probe_latency.get(),
            last_error: g.last_error.clone(),
            drained,
        }
    }

    pub fn breaker_state(&self, provider: usize) -> BreakerState {
        self.providers[provider].lock().breaker.state()
    }
}

/// Why an offering is out, and for how much longer when that is known.
fn offering_verdict(st: &OfferingState, now: Instant) -> Option<(SkipReason, Option<u64>)> {
    if let Some(until) = st.unavailable_until.filter(|u| *u > now) {
        return Some((
            SkipReason::ModelUnavailable,
            Some((until - now).as_millis() as u64),
        ));
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

impl HealthView for Health {
    fn skip(&self, provider: usize) -> Option<(SkipReason, Instant)> {
        let p = &self.providers[provider];
        let now = Instant::now();
        if p.drained.load(Ordering::Relaxed) {
            // Drained providers come back only by hand: last in panic order.
            return Some((SkipReason::Drained, now + Duration::from_secs(86_400)));
        }
        let g = p.lock();
        if let Some(until) = g.cooldown_until.filter(|u| *u > now) {
            return Some((SkipReason::Cooldown, until));
        }
        if let Some(until) = g.breaker.blocked(now) {
            return Some((SkipReason::BreakerOpen, until));
        }
        if !p.probe_up.load(Ordering::Relaxed) {
            return Some((SkipReason::ProbeDown, now + Duration::from_secs(1)));
        }
        None
    }

    fn latency_ms(&self, provider: usize) -> Option<f64> {
        score(&self.providers[provider].lock())
    }

    fn offering_skip(&self, provider: usize, model_id: &str) -> Option<(SkipReason, Instant)> {
        if !self.offerings_marked.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let g = self.offerings();
        let st = g.get(&(provider, model_id.to_string()))?;
        let (reason, remaining) = offering_verdict(st, now)?;
        // A listing gap has no end time: expect it back at the next probe, roughly.
        Some((
            reason,
            now + remaining
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(5)),
        ))
    }
}
