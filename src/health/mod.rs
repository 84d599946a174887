//! Live provider health: breaker, Retry-After cooldown, probe verdict, latency, drain flag.
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

#[derive(Debug)]
pub struct Health {
    providers: Vec<ProviderHealth>,
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
        }
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
}
