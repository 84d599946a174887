//! What one replica learns about an upstream that every replica should act on: a breaker that
//! opened or closed, a cooldown until a time, a model gone from a provider, a drain. `Health`
//! publishes a `Verdict` through its `VerdictBus` when its own state turns (never per request),
//! and applies one received from elsewhere with `Health::receive`, which never publishes again.
//! Routing keeps reading the local snapshot: nothing here is awaited on a request's path, and
//! without a bus (the default) nothing is published at all.
//!
//! Verdicts name providers and endpoints by their config name and URL (the same across replicas
//! running one config, unlike a position in it) and hold wall-clock times.

use async_trait::async_trait;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What a verdict is about: an endpoint of a provider, or one model (an offering) at that
/// endpoint — the two grains health keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    pub provider: String,
    pub endpoint: String,
    /// The upstream model ID for the offering grain; `None` for the endpoint itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Subject {
    /// One line naming it, for a shared store's keys and fields.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.provider,
            self.endpoint,
            self.model.as_deref().unwrap_or("")
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// A breaker opened: out until `until`.
    BreakerOpened { at: Subject, until: SystemTime },
    /// A breaker closed (its probation succeeded): back in rotation.
    BreakerClosed { at: Subject },
    /// "Come back later" (Retry-After, an exhausted account): held until `until`.
    Cooldown { at: Subject, until: SystemTime },
    /// One model is gone from a provider (it said so) until `until`.
    ModelGone {
        provider: String,
        model: String,
        until: SystemTime,
    },
    /// A provider drained (or undrained) for the whole fleet, by whom and when.
    Drained {
        provider: String,
        drained: bool,
        by: String,
        at: SystemTime,
    },
}

impl Verdict {
    pub fn provider(&self) -> &str {
        match self {
            Verdict::BreakerOpened { at, .. }
            | Verdict::BreakerClosed { at }
            | Verdict::Cooldown { at, .. } => &at.provider,
            Verdict::ModelGone { provider, .. } | Verdict::Drained { provider, .. } => provider,
        }
    }

    /// Where a shared store keeps this verdict's state for a replica that joins later (one
    /// slot per breaker, cooldown, gone model, drain; a verdict replaces the slot's last), and
    /// whether it ends that state (a breaker closed, an undrain) rather than sets it.
    pub fn slot(&self) -> (String, bool) {
        match self {
            Verdict::BreakerOpened { at, .. } => (format!("breaker|{}", at.key()), false),
            Verdict::BreakerClosed { at } => (format!("breaker|{}", at.key()), true),
            Verdict::Cooldown { at, .. } => (format!("cooldown|{}", at.key()), false),
            Verdict::ModelGone {
                provider, model, ..
            } => (format!("gone|{provider}|{model}"), false),
            Verdict::Drained {
                provider, drained, ..
            } => (format!("drain|{provider}"), !drained),
        }
    }

    /// When the state it sets is over by itself (`None`: until a later verdict ends it).
    pub fn until(&self) -> Option<SystemTime> {
        match self {
            Verdict::BreakerOpened { until, .. }
            | Verdict::Cooldown { until, .. }
            | Verdict::ModelGone { until, .. } => Some(*until),
            Verdict::BreakerClosed { .. } | Verdict::Drained { .. } => None,
        }
    }
}

/// Where verdicts go, and what a fleet decides together. `publish`, `count_failure` and
/// `clear_failures` never block and never fail the caller: a shared bus queues the work and does
/// it in the background, dropping it when it cannot. The defaults are a replica alone.
#[async_trait]
pub trait VerdictBus: Send + Sync {
    fn publish(&self, verdict: Verdict);
    /// A failure that counts toward the breaker of `at`. A shared bus counts it fleet-wide and,
    /// when the fleet's count reaches `threshold`, trips this replica's breaker
    /// (`Health::trip`), which then publishes the opening.
    fn count_failure(&self, _at: Subject, _threshold: u32) {}
    /// `at` answered after failures this replica counted: the fleet's count starts again.
    fn clear_failures(&self, _at: Subject) {}
    /// Claim the fleet's one probation of `at`'s half-open breaker for `hold`; `false` when
    /// another replica holds it. Bounded by the bus's own timeout; a bus that cannot ask says
    /// `true` (each replica probes on its own, as without a fleet).
    async fn claim_probation(&self, _at: &Subject, _hold: Duration) -> bool {
        true
    }
}

/// A monotonic instant as wall-clock time (for a verdict leaving this process).
pub fn wall(at: Instant, now: Instant) -> SystemTime {
    let wall_now = SystemTime::now();
    if at >= now {
        wall_now + (at - now)
    } else {
        wall_now - (now - at)
    }
}

/// A received wall-clock time as a local instant; a time already past is `now`.
pub fn local(at: SystemTime, now: Instant) -> Instant {
    now + at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

use super::breaker::{Breaker, BreakerState};
use super::{extend, Health};
use crate::model::ProviderId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Health {
    /// Publish this health's own verdicts through `bus` from now on (set once, at start).
    pub fn set_bus(&self, bus: Arc<dyn VerdictBus>) {
        let _ = self.bus.set(bus);
    }

    /// The fleet's bus, when this replica has one.
    pub fn bus(&self) -> Option<&Arc<dyn VerdictBus>> {
        self.bus.get()
    }

    /// Publish a verdict about `provider` when a bus is set (`make` is not called otherwise).
    pub(super) fn tell(&self, provider: ProviderId, make: impl FnOnce(&str) -> Verdict) {
        if let Some(bus) = self.bus.get() {
            bus.publish(make(&self.providers[provider].name));
        }
    }

    /// The endpoint of `provider`, or one model at it, as the fleet names them.
    pub fn subject(&self, provider: ProviderId, endpoint: usize, model: Option<&str>) -> Subject {
        Subject {
            provider: self.providers[provider].name.clone(),
            endpoint: self.endpoint_url(provider, endpoint).to_string(),
            model: model.map(str::to_string),
        }
    }

    /// A failure counted toward a breaker that did not open here: the fleet counts it too.
    pub(super) fn fleet_count(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model: Option<&str>,
        threshold: u32,
    ) {
        if let Some(bus) = self.bus.get() {
            bus.count_failure(self.subject(provider, endpoint, model), threshold);
        }
    }

    /// An answer after failures this replica counted: the fleet's count starts again.
    pub(super) fn fleet_clear(&self, provider: ProviderId, endpoint: usize, model: Option<&str>) {
        if let Some(bus) = self.bus.get() {
            bus.clear_failures(self.subject(provider, endpoint, model));
        }
    }

    /// Where `at` is in this config: provider and endpoint (`None`: not here).
    fn locate(&self, at: &Subject) -> Option<(ProviderId, usize)> {
        let id = self.providers.iter().position(|p| p.name == at.provider)?;
        let ep = self.providers[id]
            .urls
            .iter()
            .position(|u| *u == at.endpoint)?;
        Some((ProviderId(id), ep))
    }

    /// Change the breaker of `at` here (an offering's is created on first use).
    fn with_breaker<R>(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model: Option<&str>,
        f: impl FnOnce(&mut Breaker) -> R,
    ) -> R {
        match model {
            None => f(&mut self.providers[provider].pool.state(endpoint).breaker),
            Some(m) => self.with_offering(provider, m, |st, conf| {
                f(st.at(endpoint)
                    .breaker
                    .get_or_insert_with(|| Breaker::new(conf.clone())))
            }),
        }
    }

    /// The fleet counted enough failures of `at` (this replica's last among them): open its
    /// breaker here, and tell the fleet it opened. `false` when it was already open here, or
    /// `at` is not in this config.
    pub fn trip(&self, at: &Subject, now: Instant) -> bool {
        let Some((provider, endpoint)) = self.locate(at) else {
            return false;
        };
        let model = at.model.as_deref();
        let opened = self.with_breaker(provider, endpoint, model, |b| {
            b.trip(now, rand::random::<f64>())
        });
        let Some(until) = opened else { return false };
        self.tell(provider, |_| Verdict::BreakerOpened {
            at: at.clone(),
            until: wall(until, now),
        });
        true
    }

    /// Another replica holds the fleet's probation of this breaker: give back the one this
    /// replica's breaker granted, and stay out until that trial's verdict arrives (or `hold`
    /// passes).
    pub fn probation_taken(
        &self,
        provider: ProviderId,
        endpoint: usize,
        model: Option<&str>,
        hold: Duration,
        now: Instant,
    ) {
        self.with_breaker(provider, endpoint, model, |b| {
            b.on_abandoned(now);
            b.learned_open(now + hold);
        });
    }

    /// Apply a verdict another replica published. Never publishes again; a verdict about a
    /// provider or endpoint this config does not have is ignored (`false`).
    pub fn receive(&self, verdict: &Verdict, now: Instant) -> bool {
        match verdict {
            Verdict::BreakerOpened { at, until } => {
                let Some((p, ep)) = self.locate(at) else {
                    return false;
                };
                let until = local(*until, now);
                self.with_breaker(p, ep, at.model.as_deref(), |b| b.learned_open(until));
            }
            Verdict::BreakerClosed { at } => {
                let Some((p, ep)) = self.locate(at) else {
                    return false;
                };
                self.with_breaker(p, ep, at.model.as_deref(), |b| b.on_success());
            }
            Verdict::Cooldown { at, until } => {
                let Some((p, ep)) = self.locate(at) else {
                    return false;
                };
                let until = local(*until, now);
                match at.model.as_deref() {
                    None => {
                        let mut e = self.providers[p].pool.state(ep);
                        extend(&mut e.cooldown_until, until, now);
                    }
                    Some(m) => self.with_offering(p, m, |st, _| {
                        extend(&mut st.at(ep).cooldown_until, until, now);
                    }),
                }
            }
            Verdict::ModelGone {
                provider,
                model,
                until,
            } => {
                let Some(id) = self.providers.iter().position(|p| p.name == *provider) else {
                    return false;
                };
                let until = local(*until, now);
                self.with_offering(ProviderId(id), model, |st, _| {
                    extend(&mut st.unavailable_until, until, now);
                });
            }
            Verdict::Drained {
                provider,
                drained,
                by,
                at,
            } => {
                let Some(p) = self.providers.iter().find(|p| p.name == *provider) else {
                    return false;
                };
                p.drained.store(*drained, Ordering::Relaxed);
                p.lock().drained_by = drained.then(|| (by.clone(), *at));
            }
        }
        true
    }

    /// What this replica holds against upstreams now, as verdicts: published again when it
    /// rejoins the fleet after losing it, so what it learned alone is not lost. Breakers open
    /// and cooldowns of both grains, models gone, and fleet drains.
    pub fn verdicts_now(&self, now: Instant) -> Vec<Verdict> {
        let mut out = Vec::new();
        let opened = |out: &mut Vec<Verdict>,
                      at: Subject,
                      state: BreakerState,
                      cooldown: Option<Instant>| {
            if let BreakerState::Open { until, .. } = state {
                if until > now {
                    out.push(Verdict::BreakerOpened {
                        at: at.clone(),
                        until: wall(until, now),
                    });
                }
            }
            if let Some(until) = cooldown.filter(|u| *u > now) {
                out.push(Verdict::Cooldown {
                    at,
                    until: wall(until, now),
                });
            }
        };
        for (id, p) in self.providers.iter().enumerate() {
            for ep in 0..p.urls.len() {
                let e = p.pool.state(ep);
                let (state, cooldown) = (e.breaker.state(), e.cooldown_until);
                drop(e);
                opened(
                    &mut out,
                    self.subject(ProviderId(id), ep, None),
                    state,
                    cooldown,
                );
            }
        }
        let g = self.offerings();
        for (id, model, st) in g.iter() {
            for (ep, a) in st.at.iter().enumerate() {
                let state = a.breaker.as_ref().map(|b| b.state());
                let closed = BreakerState::Closed {
                    consecutive_failures: 0,
                };
                opened(
                    &mut out,
                    self.subject(id, ep, Some(model)),
                    state.unwrap_or(closed),
                    a.cooldown_until,
                );
            }
            if let Some(until) = st.unavailable_until.filter(|u| *u > now) {
                out.push(Verdict::ModelGone {
                    provider: self.providers[id].name.clone(),
                    model: model.clone(),
                    until: wall(until, now),
                });
            }
        }
        drop(g);
        for p in &self.providers {
            if let Some((by, at)) = p.lock().drained_by.clone() {
                if p.drained.load(Ordering::Relaxed) {
                    out.push(Verdict::Drained {
                        provider: p.name.clone(),
                        drained: true,
                        by,
                        at,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::route::SkipReason;
    use crate::health::breaker::Admission;
    use crate::model::outcome::FailoverReason;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Heard(Mutex<Vec<Verdict>>);

    impl VerdictBus for Heard {
        fn publish(&self, verdict: Verdict) {
            self.0.lock().unwrap().push(verdict);
        }
    }

    impl Heard {
        fn take(&self) -> Vec<Verdict> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    /// Two replicas' health over one config, each with its own bus.
    fn replicas() -> [(Health, Arc<Heard>); 2] {
        let yaml = "providers:\n  - {name: a, api: openai, base_url: \"http://127.0.0.1:9\", breaker: {failures: 2, cooldown_ms: 30000, max_cooldown_ms: 60000}, probe: {enabled: false}}\nmodels:\n  - {name: m, offerings: [{provider: a, model: a-m}]}\n";
        let cfg = crate::config::parse(yaml, &BTreeMap::<String, String>::new()).unwrap();
        [(); 2].map(|_| {
            let h = Health::new(&cfg.providers);
            let bus = Arc::new(Heard::default());
            h.set_bus(bus.clone());
            (h, bus)
        })
    }

    const A: ProviderId = ProviderId(0);

    #[tokio::test]
    async fn a_breaker_one_replica_opens_is_open_on_the_other_and_closes_there_too() {
        let [(one, one_bus), (two, two_bus)] = replicas();
        let now = Instant::now();
        one.on_failure(A, 0, FailoverReason::Status5xx, true, now);
        assert!(
            one_bus.take().is_empty(),
            "one failure of two published a verdict"
        );
        one.on_failure(A, 0, FailoverReason::Status5xx, true, now);
        let heard = one_bus.take();
        let [opened @ Verdict::BreakerOpened { until, .. }] = &heard[..] else {
            panic!("expected one BreakerOpened, heard {heard:?}");
        };
        // Roughly the configured cooldown (jittered to between 3/4 and all of it).
        let left = until.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(20) && left <= Duration::from_secs(30));
        // Over the wire and back, as a shared bus carries it.
        let wire: Verdict = serde_json::from_str(&serde_json::to_string(opened).unwrap()).unwrap();
        assert!(two.provider_skip(A, now).is_none());
        assert!(two.receive(&wire, now));
        let (reason, back) = two
            .provider_skip(A, now)
            .expect("the other replica skips a");
        assert_eq!(reason, SkipReason::BreakerOpen);
        assert!(back > now + Duration::from_secs(20));
        assert!(
            two_bus.take().is_empty(),
            "a received verdict was published again"
        );
        // The probation on the first replica succeeds: the breaker closes on both.
        one.on_success(
            A,
            0,
            Duration::from_millis(5),
            now + Duration::from_secs(31),
        );
        let heard = one_bus.take();
        assert!(matches!(&heard[..], [Verdict::BreakerClosed { .. }]));
        assert!(two.receive(&heard[0], now));
        assert!(two.provider_skip(A, now).is_none());
    }

    #[tokio::test]
    async fn cooldowns_drains_and_gone_models_reach_the_other_replica() {
        let [(one, one_bus), (two, _)] = replicas();
        let now = Instant::now();
        one.on_retry_after(A, 0, Duration::from_secs(60), now);
        one.set_drained(A, true, Some("one"));
        one.mark_offering_unavailable(A, "a-m", Duration::from_secs(120), now);
        // A storm of 429s each extending the hold a little, and the same drain again, are no
        // news: one verdict for each change.
        for ms in 1..50 {
            one.on_retry_after(
                A,
                0,
                Duration::from_secs(60),
                now + Duration::from_millis(ms),
            );
        }
        // A drain by hand on this replica alone is not the fleet's.
        one.set_drained(A, true, None);
        let heard = one_bus.take();
        assert_eq!(heard.len(), 3, "{heard:?}");
        for v in &heard {
            assert!(two.receive(v, now));
        }
        assert_eq!(two.provider_skip(A, now).unwrap().0, SkipReason::Drained);
        let snap = two.snapshot(A, now);
        assert_eq!(snap.drained_by.map(|(by, _)| by).as_deref(), Some("one"));
        two.providers[0].drained.store(false, Ordering::Relaxed);
        let (reason, until) = two.provider_skip(A, now).unwrap();
        assert_eq!(reason, SkipReason::Cooldown);
        assert!(until > now + Duration::from_secs(58));
        assert!(two.offering_skip(A, "a-m", now).is_some());
        // A verdict about a provider this config does not have changes nothing.
        let stranger = Verdict::Drained {
            provider: "zz".into(),
            drained: true,
            by: "one".into(),
            at: SystemTime::now(),
        };
        assert!(!two.receive(&stranger, now));
    }

    #[tokio::test]
    async fn an_offerings_breaker_and_cooldown_reach_the_other_replica_at_that_grain() {
        let [(one, one_bus), (two, _)] = replicas();
        let now = Instant::now();
        for _ in 0..2 {
            one.on_offering_failure(A, 0, "a-m", FailoverReason::Status5xx, true, now);
        }
        one.on_offering_retry_after(A, 0, "a-m", Duration::from_secs(40), now);
        let heard = one_bus.take();
        assert!(
            matches!(&heard[..], [Verdict::BreakerOpened { at, .. }, Verdict::Cooldown { .. }] if at.model.as_deref() == Some("a-m")),
            "{heard:?}"
        );
        for v in &heard {
            assert!(two.receive(v, now));
        }
        // The model is out on the other replica; the provider itself is not.
        assert!(two.provider_skip(A, now).is_none());
        assert!(two.offering_skip(A, "a-m", now).is_some());
        // What a rejoining replica republishes holds both.
        let again = two.verdicts_now(now);
        assert!(again
            .iter()
            .any(|v| matches!(v, Verdict::BreakerOpened { at, .. } if at.model.is_some())));
        assert!(again
            .iter()
            .any(|v| matches!(v, Verdict::Cooldown { at, .. } if at.model.is_some())));
    }

    #[derive(Default)]
    struct Counted(Mutex<Vec<(Subject, u32)>>);

    #[async_trait]
    impl VerdictBus for Counted {
        fn publish(&self, _: Verdict) {}
        fn count_failure(&self, at: Subject, threshold: u32) {
            self.0.lock().unwrap().push((at, threshold));
        }
    }

    #[tokio::test]
    async fn failures_below_the_threshold_go_to_the_fleets_count_and_its_trip_opens_the_breaker() {
        let h = Health::carried_over(
            &crate::config::parse(
                "providers:\n  - {name: a, api: openai, base_url: \"http://127.0.0.1:9\", breaker: {failures: 2}, probe: {enabled: false}}\nmodels:\n  - {name: m, offerings: [{provider: a, model: a-m}]}\n",
                &std::collections::BTreeMap::<String, String>::new(),
            )
            .unwrap()
            .providers,
            None,
        );
        let counted = Arc::new(Counted::default());
        h.set_bus(counted.clone());
        let now = Instant::now();
        h.on_offering_failure(A, 0, "a-m", FailoverReason::Status5xx, true, now);
        let c = std::mem::take(&mut *counted.0.lock().unwrap());
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0.model.as_deref(), Some("a-m"));
        assert_eq!(c[0].1, 2);
        assert!(h.offering_skip(A, "a-m", now).is_none());
        // The fleet's count reached two: this replica's breaker opens on one local failure.
        assert!(h.trip(&c[0].0, now));
        assert!(h.offering_skip(A, "a-m", now).is_some());
        assert!(!h.trip(&c[0].0, now), "tripped twice");
        // Another replica holds the probation: this one stays out for the hold.
        let later = now + Duration::from_secs(60);
        assert_eq!(h.admit_offering(A, 0, "a-m", later), Admission::Probation);
        h.probation_taken(A, 0, Some("a-m"), Duration::from_secs(5), later);
        assert!(h
            .offering_skip(A, "a-m", later + Duration::from_secs(4))
            .is_some());
        assert!(h
            .offering_skip(A, "a-m", later + Duration::from_secs(6))
            .is_none());
    }

    #[test]
    fn no_bus_publishes_nothing_and_costs_no_verdict() {
        let h = Health::new(&[]);
        h.tell(A, |_| unreachable!("a verdict was built with no bus"));
    }
}
