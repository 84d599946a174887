//! What one replica learns about an upstream that every replica should act on: a breaker that
//! opened or closed, a cooldown until a time, a model gone from a provider, a drain. `Health`
//! publishes a `Verdict` through its `VerdictBus` when its own state turns (never per request),
//! and applies one received from elsewhere with `Health::receive`, which never publishes again.
//! Routing keeps reading the local snapshot: nothing here is awaited on a request's path, and
//! without a bus (the default) nothing is published at all.
//!
//! Verdicts name providers and endpoints by their config name and URL (the same across replicas
//! running one config, unlike a position in it) and hold wall-clock times.

use std::time::{Duration, SystemTime};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// An endpoint's breaker opened: out until `until`.
    BreakerOpened {
        provider: String,
        endpoint: String,
        until: SystemTime,
    },
    /// An endpoint's breaker closed (its probation succeeded): back in rotation.
    BreakerClosed { provider: String, endpoint: String },
    /// An endpoint said "come back later" (Retry-After, an exhausted account): held until.
    Cooldown {
        provider: String,
        endpoint: String,
        until: SystemTime,
    },
    /// One model is gone from a provider (it said so) until. Offering breakers stay local: a
    /// model failing at one endpoint is that endpoint's business.
    ModelGone {
        provider: String,
        model: String,
        until: SystemTime,
    },
    /// A provider was drained by hand, or undrained.
    Drained { provider: String, drained: bool },
}

impl Verdict {
    pub fn provider(&self) -> &str {
        match self {
            Verdict::BreakerOpened { provider, .. }
            | Verdict::BreakerClosed { provider, .. }
            | Verdict::Cooldown { provider, .. }
            | Verdict::ModelGone { provider, .. }
            | Verdict::Drained { provider, .. } => provider,
        }
    }
}

/// Where verdicts go. `publish` never blocks and never fails the caller: a shared bus queues
/// the verdict and sends it in the background, dropping it when it cannot.
pub trait VerdictBus: Send + Sync {
    fn publish(&self, verdict: Verdict);
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

use super::{extend, Health};
use crate::model::ProviderId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Health {
    /// Publish this health's own verdicts through `bus` from now on (set once, at start).
    pub fn set_bus(&self, bus: Arc<dyn VerdictBus>) {
        let _ = self.bus.set(bus);
    }

    /// Publish a verdict about `provider` when a bus is set (`make` is not called otherwise).
    pub(super) fn tell(&self, provider: ProviderId, make: impl FnOnce(&str) -> Verdict) {
        if let Some(bus) = self.bus.get() {
            bus.publish(make(&self.providers[provider].name));
        }
    }

    /// Apply a verdict another replica published. Never publishes again; a verdict about a
    /// provider or endpoint this config does not have is ignored (`false`).
    pub fn receive(&self, verdict: &Verdict, now: Instant) -> bool {
        let Some(id) = self
            .providers
            .iter()
            .position(|p| p.name == verdict.provider())
        else {
            return false;
        };
        let p = &self.providers[id];
        let endpoint = |url: &str| p.urls.iter().position(|u| u == url);
        match verdict {
            Verdict::BreakerOpened {
                endpoint: url,
                until,
                ..
            } => {
                let Some(i) = endpoint(url) else { return false };
                p.pool.state(i).breaker.learned_open(local(*until, now));
            }
            Verdict::BreakerClosed { endpoint: url, .. } => {
                let Some(i) = endpoint(url) else { return false };
                p.pool.state(i).breaker.on_success();
            }
            Verdict::Cooldown {
                endpoint: url,
                until,
                ..
            } => {
                let Some(i) = endpoint(url) else { return false };
                extend(&mut p.pool.state(i).cooldown_until, local(*until, now), now);
            }
            Verdict::ModelGone { model, until, .. } => {
                let until = local(*until, now);
                self.with_offering(ProviderId(id), model, |st, _| {
                    extend(&mut st.unavailable_until, until, now);
                });
            }
            Verdict::Drained { drained, .. } => p.drained.store(*drained, Ordering::Relaxed),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::route::SkipReason;
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
        one.set_drained(A, true);
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
        one.set_drained(A, true);
        let heard = one_bus.take();
        assert_eq!(heard.len(), 3, "{heard:?}");
        for v in &heard {
            assert!(two.receive(v, now));
        }
        assert_eq!(two.provider_skip(A, now).unwrap().0, SkipReason::Drained);
        two.providers[0].drained.store(false, Ordering::Relaxed);
        let (reason, until) = two.provider_skip(A, now).unwrap();
        assert_eq!(reason, SkipReason::Cooldown);
        assert!(until > now + Duration::from_secs(58));
        assert!(two.offering_skip(A, "a-m", now).is_some());
        // A verdict about a provider this config does not have changes nothing.
        let stranger = Verdict::Drained {
            provider: "zz".into(),
            drained: true,
        };
        assert!(!two.receive(&stranger, now));
    }

    #[test]
    fn no_bus_publishes_nothing_and_costs_no_verdict() {
        let h = Health::new(&[]);
        h.tell(A, |_| unreachable!("a verdict was built with no bus"));
    }
}
