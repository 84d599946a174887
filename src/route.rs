//! The routing decision: a model's offerings in, an ordered list of candidates out.
//!
//! Pure: no sockets, no clocks read here. Health arrives through `HealthView` as a snapshot the
//! caller took, so the same inputs always give the same order and every rule is unit-testable.

use crate::api::Endpoint;
use crate::catalog::{Model, ModelId};
use crate::config::{Provider, Strategy};
use std::cmp::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

/// Why a provider is not taking traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    BreakerOpen,
    Cooldown,
    ProbeDown,
    Drained,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::BreakerOpen => "breaker_open",
            SkipReason::Cooldown => "cooldown",
            SkipReason::ProbeDown => "probe_down",
            SkipReason::Drained => "drained",
        }
    }
}

/// What routing needs to know about provider health; implemented by `health` over its live
/// state and by plain structs in tests.
pub trait HealthView {
    /// `Some((reason, until))` when the provider should be skipped; `until` is when it is
    /// expected back (used to order providers in panic mode).
    fn skip(&self, provider: usize) -> Option<(SkipReason, Instant)>;
    /// Latency score in milliseconds, lower is better; `None` when nothing was measured yet.
    fn latency_ms(&self, provider: usize) -> Option<f64>;
}

/// Health that knows nothing: every provider is up, no latency measured.
pub struct NoHealth;

impl HealthView for NoHealth {
    fn skip(&self, _provider: usize) -> Option<(SkipReason, Instant)> {
        None
    }
    fn latency_ms(&self, _provider: usize) -> Option<f64> {
        None
    }
}

/// Per-request constraints from the client's headers.
#[derive(Debug, Clone, Default)]
pub struct RequestConstraints {
    /// Provider index the request is pinned to (no failover).
    pub pin: Option<usize>,
    pub strategy: Option<Strategy>,
    pub region: Option<String>,
}

/// One place to send the request, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub model: ModelId,
    /// Index of the offering in that model's `offerings`.
    pub offering: usize,
    pub provider: usize,
    /// Tried although health says it is down, because nothing healthy was left.
    pub panic: Option<SkipReason>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NoRoute {
    /// No offering of the model speaks the endpoint's wire format.
    WrongApi,
    PinnedProviderHasNoOffering(String),
    NoOfferingInRegion(String),
}

impl NoRoute {
    pub fn message(&self, model: &str, endpoint: Endpoint) -> String {
        match self {
            NoRoute::WrongApi => format!(
                "model {model:?} has no provider that serves the {} API",
                endpoint.as_str()
            ),
            NoRoute::PinnedProviderHasNoOffering(p) => {
                format!("provider {p:?} does not offer model {model:?} for this API")
            }
            NoRoute::NoOfferingInRegion(r) => {
                format!("no provider in region {r:?} offers model {model:?}")
            }
        }
    }
}

fn blended(model: &Model, offering: usize) -> f64 {
    model.offerings[offering]
        .price
        .map(|p| p.blended())
        .unwrap_or(f64::INFINITY)
}

/// Order `model`'s offerings for one request.
pub fn candidates(
    model_id: ModelId,
    model: &Model,
    providers: &[Arc<Provider>],
    endpoint: Endpoint,
    constraints: &RequestConstraints,
    health: &dyn HealthView,
) -> Result<Vec<Candidate>, NoRoute> {
    let mut eligible: Vec<usize> = (0..model.offerings.len())
        .filter(|&i| endpoint.served_by(providers[model.offerings[i].provider].api))
        .collect();
    if eligible.is_empty() {
        return Err(NoRoute::WrongApi);
    }
    if let Some(pin) = constraints.pin {
        eligible.retain(|&i| model.offerings[i].provider == pin);
        if eligible.is_empty() {
            return Err(NoRoute::PinnedProviderHasNoOffering(
                providers[pin].name.clone(),
            ));
        }
    }
    if let Some(region) = &constraints.region {
        eligible
            .retain(|&i| providers[model.offerings[i].provider].region.as_deref() == Some(region));
        if eligible.is_empty() {
            return Err(NoRoute::NoOfferingInRegion(region.clone()));
        }
    }

    // Cost ceiling: nothing dearer than `max_cost_multiplier` × the cheapest priced twin.
    // Unpriced offerings are kept: no price is not evidence of a high one.
    if let Some(mult) = model.policy.max_cost_multiplier {
        let cheapest = eligible
            .iter()
            .map(|&i| blended(model, i))
            .fold(f64::INFINITY, f64::min);
        if cheapest.is_finite() {
            eligible.retain(|&i| {
                let b = blended(model, i);
                !b.is_finite() || b <= cheapest * mult + 1e-12
            });
        }
    }

    let strategy = constraints.strategy.unwrap_or(model.policy.strategy);
    let cmp_cost = |a: &usize, b: &usize| {
        blended(model, *a)
            .partial_cmp(&blended(model, *b))
            .unwrap_or(Ordering::Equal)
    };
    match strategy {
        Strategy::Ordered => {}
        Strategy::PreferCost => eligible.sort_by(cmp_cost),
        Strategy::PreferLatency => eligible.sort_by(|a, b| {
            let la = health
                .latency_ms(model.offerings[*a].provider)
                .unwrap_or(f64::INFINITY);
            let lb = health
                .latency_ms(model.offerings[*b].provider)
                .unwrap_or(f64::INFINITY);
            la.partial_cmp(&lb)
                .unwrap_or(Ordering::Equal)
                .then_with(|| cmp_cost(a, b))
        }),
    }

    let mut up = Vec::with_capacity(eligible.len());
    let mut down = Vec::new();
    for i in eligible {
        let provider = model.offerings[i].provider;
        match health.skip(provider) {
            None => up.push(Candidate {
                model: model_id,
                offering: i,
                provider,
                panic: None,
            }),
            Some((reason, until)) => down.push((
                until,
                Candidate {
                    model: model_id,
                    offering: i,
                    provider,
                    panic: Some(reason),
                },
            )),
        }
    }
    if !up.is_empty() {
        return Ok(up);
    }
    // Fail open: every twin looks down. An all-red board is as often a probe or breaker problem
    // as an outage, so try them, the one expected back soonest first.
    down.sort_by_key(|(until, _)| *until);
    Ok(down.into_iter().map(|(_, c)| c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    const CONF: &str = r#"
providers:
  - {name: a, api: openai, base_url: "http://127.0.0.1:1", region: us}
  - {name: b, api: openai, base_url: "http://127.0.0.1:2", region: eu}
  - {name: c, api: azure, base_url: "http://127.0.0.1:3", region: us}
  - {name: d, api: anthropic, base_url: "http://127.0.0.1:4"}
models:
  - name: m
    offerings:
      - {provider: a, model: a-m, price: {input_per_mtok: 3, output_per_mtok: 3}}
      - {provider: b, model: b-m, price: {input_per_mtok: 1, output_per_mtok: 1}}
      - {provider: c, model: c-m, price: {input_per_mtok: 2, output_per_mtok: 2}}
  - name: claude
    offerings:
      - {provider: d, model: claude-x}
"#;

    #[derive(Default)]
    struct FakeHealth {
        skip: HashMap<usize, (SkipReason, Instant)>,
        latency: HashMap<usize, f64>,
    }

    impl HealthView for FakeHealth {
        fn skip(&self, p: usize) -> Option<(SkipReason, Instant)> {
            self.skip.get(&p).copied()
        }
        fn latency_ms(&self, p: usize) -> Option<f64> {
            self.latency.get(&p).copied()
        }
    }

    fn order_in(
        text: &str,
        c: &RequestConstraints,
        h: &dyn HealthView,
        ep: Endpoint,
        model: usize,
    ) -> Result<Vec<usize>, NoRoute> {
        let cfg = parse(text, &BTreeMap::new()).unwrap();
        candidates(model, cfg.catalog.model(model), &cfg.providers, ep, c, h)
            .map(|v| v.into_iter().map(|c| c.provider).collect())
    }

    fn order(
        c: &RequestConstraints,
        h: &dyn HealthView,
        ep: Endpoint,
        model: usize,
    ) -> Result<Vec<usize>, NoRoute> {
        order_in(CONF, c, h, ep, model)
    }

    #[test]
    fn ordered_is_file_order() {
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::ChatCompletions, 0),
            Ok(vec![0, 1, 2])
        );
    }

    #[test]
    fn cost_ceiling_drops_dear_offerings() {
        let d = RequestConstraints::default();
        let ep = Endpoint::ChatCompletions;
        let two = format!("{CONF}policy: {{max_cost_multiplier: 2.0}}\n");
        // b costs 1, c 2 (kept: exactly 2×), a 3 (dropped).
        assert_eq!(order_in(&two, &d, &NoHealth, ep, 0), Ok(vec![1, 2]));
        let tight = format!("{CONF}policy: {{max_cost_multiplier: 1.5}}\n");
        assert_eq!(order_in(&tight, &d, &NoHealth, ep, 0), Ok(vec![1]));
        // Unpriced offerings are not dropped.
        assert_eq!(
            order_in(&tight, &d, &NoHealth, Endpoint::Messages, 1),
            Ok(vec![3])
        );
    }

    #[test]
    fn prefer_cost_is_cheapest_first() {
        let c = RequestConstraints {
            strategy: Some(Strategy::PreferCost),
            ..Default::default()
        };
        assert_eq!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 0),
            Ok(vec![1, 2, 0])
        );
    }

    #[test]
    fn wire_format_filters_providers() {
        // Azure has no Responses route; Anthropic never serves OpenAI routes.
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::Responses, 0),
            Ok(vec![0, 1])
        );
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::Messages, 0),
            Err(NoRoute::WrongApi)
        );
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::Messages, 1),
            Ok(vec![3])
        );
    }

    #[test]
    fn pin_and_region() {
        let c = RequestConstraints {
            pin: Some(1),
            ..Default::default()
        };
        assert_eq!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 0),
            Ok(vec![1])
        );
        let c = RequestConstraints {
            pin: Some(3),
            ..Default::default()
        };
        assert!(matches!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 0),
            Err(NoRoute::PinnedProviderHasNoOffering(_))
        ));
        let c = RequestConstraints {
            region: Some("us".into()),
            ..Default::default()
        };
        assert_eq!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 0),
            Ok(vec![0, 2])
        );
        let c = RequestConstraints {
            region: Some("ap".into()),
            ..Default::default()
        };
        assert!(matches!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 0),
            Err(NoRoute::NoOfferingInRegion(_))
        ));
    }

    #[test]
    fn unhealthy_providers_are_skipped() {
        let now = Instant::now();
        let mut h = FakeHealth::default();
        h.skip
            .insert(0, (SkipReason::BreakerOpen, now + Duration::from_secs(5)));
        assert_eq!(
            order(&Default::default(), &h, Endpoint::ChatCompletions, 0),
            Ok(vec![1, 2])
        );
    }

    #[test]
    fn panic_mode_tries_everyone_soonest_back_first() {
        let now = Instant::now();
        let mut h = FakeHealth::default();
        h.skip
            .insert(0, (SkipReason::BreakerOpen, now + Duration::from_secs(9)));
        h.skip
            .insert(1, (SkipReason::Cooldown, now + Duration::from_secs(1)));
        h.skip
            .insert(2, (SkipReason::ProbeDown, now + Duration::from_secs(5)));
        let cfg = parse(CONF, &BTreeMap::new()).unwrap();
        let got = candidates(
            0,
            cfg.catalog.model(0),
            &cfg.providers,
            Endpoint::ChatCompletions,
            &Default::default(),
            &h,
        )
        .unwrap();
        assert_eq!(
            got.iter().map(|c| c.provider).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
        assert_eq!(got[0].panic, Some(SkipReason::Cooldown));
    }

    #[test]
    fn prefer_latency_with_cost_tiebreak_and_unknowns_last() {
        let mut h = FakeHealth::default();
        h.latency.insert(0, 50.0);
        h.latency.insert(2, 50.0);
        let c = RequestConstraints {
            strategy: Some(Strategy::PreferLatency),
            ..Default::default()
        };
        // a and c tie on latency: c is cheaper; b has no measurement yet.
        assert_eq!(
            order(&c, &h, Endpoint::ChatCompletions, 0),
            Ok(vec![2, 0, 1])
        );
    }
}
