//! The routing decision: a model's offerings in, an ordered list of candidates out.
//!
//! Pure: no sockets, no clocks read, no locks. Health arrives as a `HealthSnapshot` value the
//! caller took once for the request, so the same inputs always give the same order and every
//! rule is unit-testable.

pub use crate::decide::outcome::Grain;
use crate::model::catalog::{Catalog, Feature};
use crate::model::endpoint::Endpoint;
use crate::model::{ModelId, OfferingIdx, ProviderId};
use crate::model::{OnCeiling, Policy, Provider, Strategy};
use std::cmp::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

/// Why a provider (or one of its offerings) is not taking traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    BreakerOpen,
    Cooldown,
    ProbeDown,
    Drained,
    /// The provider answered "this model is gone" for this offering recently.
    ModelUnavailable,
    /// The provider's model listing does not include this offering's model ID.
    ProbeModelMissing,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::BreakerOpen => "breaker_open",
            SkipReason::Cooldown => "cooldown",
            SkipReason::ProbeDown => "probe_down",
            SkipReason::Drained => "drained",
            SkipReason::ModelUnavailable => "model_unavailable",
            SkipReason::ProbeModelMissing => "probe_model_missing",
        }
    }

    /// How strong the evidence against a candidate is, weakest first: the fail-open order.
    /// A listing that omits a model is a guess about real traffic; a failing probe tested the
    /// host but not the request; a Retry-After is the provider asking for time while it still
    /// answers; an open breaker is real requests failing in a row; "this model is gone" is the
    /// provider's own word; a drain is the operator's, and only the operator lifts it.
    pub fn evidence(self) -> u8 {
        match self {
            SkipReason::ProbeModelMissing => 0,
            SkipReason::ProbeDown => 1,
            SkipReason::Cooldown => 2,
            SkipReason::BreakerOpen => 3,
            SkipReason::ModelUnavailable => 4,
            SkipReason::Drained => 5,
        }
    }
}

/// What health holds against one candidate: the reason, when it is expected back, and the grain
/// the verdict is about (the whole provider endpoint, or this model there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub reason: SkipReason,
    pub until: Instant,
    pub grain: Grain,
}

impl Skip {
    /// The stronger of two verdicts (by `SkipReason::evidence`, then the later return).
    fn stronger(self, other: Skip) -> Skip {
        if (other.reason.evidence(), other.until) > (self.reason.evidence(), self.until) {
            other
        } else {
            self
        }
    }
}

/// What routing knows about health, taken once per request by `health` (or built by hand in
/// tests and `check`): a value, so ordering reads no lock and no clock. Healthy and unmeasured
/// is the default; only what health holds against a provider or an offering is stored.
#[derive(Debug, Clone, Default)]
pub struct HealthSnapshot {
    /// Indexed by provider; shorter than the provider list when the rest are up and unmeasured.
    providers: Vec<ProviderVerdict>,
    /// Offerings out while their provider is in (usually none).
    offerings: Vec<OfferingVerdict>,
}

/// One provider's health as routing sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProviderVerdict {
    /// `Some((reason, until))` when the provider should be skipped; `until` is when it is
    /// expected back (the fail-open order).
    pub skip: Option<(SkipReason, Instant)>,
    /// Latency score in milliseconds, lower is better; `None` when nothing was measured yet.
    pub latency_ms: Option<f64>,
}

/// One model out on one provider while the provider itself is fine.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferingVerdict {
    pub provider: ProviderId,
    pub model_id: String,
    pub skip: (SkipReason, Instant),
}

impl HealthSnapshot {
    /// Everyone up, nothing measured.
    pub fn all_up() -> HealthSnapshot {
        HealthSnapshot::default()
    }

    pub fn set_provider(&mut self, provider: ProviderId, verdict: ProviderVerdict) {
        if self.providers.len() <= provider.0 {
            self.providers
                .resize(provider.0 + 1, ProviderVerdict::default());
        }
        self.providers[provider.0] = verdict;
    }

    pub fn skip_provider(&mut self, provider: ProviderId, reason: SkipReason, until: Instant) {
        let mut v = self.provider(provider);
        v.skip = Some((reason, until));
        self.set_provider(provider, v);
    }

    pub fn set_latency(&mut self, provider: ProviderId, ms: f64) {
        let mut v = self.provider(provider);
        v.latency_ms = Some(ms);
        self.set_provider(provider, v);
    }

    pub fn skip_offering(
        &mut self,
        provider: ProviderId,
        model_id: &str,
        reason: SkipReason,
        until: Instant,
    ) {
        self.offerings.push(OfferingVerdict {
            provider,
            model_id: model_id.to_string(),
            skip: (reason, until),
        });
    }

    pub fn provider(&self, provider: ProviderId) -> ProviderVerdict {
        self.providers.get(provider.0).copied().unwrap_or_default()
    }

    pub fn offering_skip(
        &self,
        provider: ProviderId,
        model_id: &str,
    ) -> Option<(SkipReason, Instant)> {
        self.offerings
            .iter()
            .find(|o| o.provider == provider && o.model_id == model_id)
            .map(|o| o.skip)
    }

    /// Why this offering takes no traffic now: the strongest evidence either grain holds
    /// against it (the provider's endpoints, or this model there).
    pub fn skip(&self, provider: ProviderId, model_id: &str) -> Option<Skip> {
        let endpoint = self.provider(provider).skip.map(|(reason, until)| Skip {
            reason,
            until,
            grain: Grain::Endpoint,
        });
        let offering = self
            .offering_skip(provider, model_id)
            .map(|(reason, until)| Skip {
                reason,
                until,
                grain: Grain::Offering,
            });
        match (endpoint, offering) {
            (Some(e), Some(o)) => Some(e.stronger(o)),
            (e, o) => e.or(o),
        }
    }
}

/// Per-request constraints from the client's headers and body.
#[derive(Debug, Clone, Default)]
pub struct RequestConstraints {
    /// The provider the request is pinned to (no failover).
    pub pin: Option<ProviderId>,
    pub strategy: Option<Strategy>,
    pub region: Option<String>,
    /// `x-twinroute-allow-equivalents`, overriding the policy either way.
    pub allow_equivalents: Option<bool>,
    /// Estimated tokens the request needs (prompt plus the output it asks for), for context fit.
    pub needed_tokens: Option<u64>,
    /// The top-level parameters the request sends, when it asked (with
    /// `x-twinroute-require-parameters`) that none of them be dropped or ignored.
    pub required_params: Option<Vec<String>>,
    /// What of the request the other wire format cannot carry (`wire::translate::untranslatable`);
    /// offerings reached only through translation are skipped unless their `drop_params` cut it.
    pub untranslatable: Vec<String>,
    /// Features the request uses (`wire::translate::features`); an offering that `lacks` one
    /// is skipped.
    pub features: Vec<Feature>,
    /// A uniform draw in [0, 1) for `strategy: weighted`; the caller owns the randomness so this
    /// function stays pure.
    pub draw: f64,
}

/// What makes an answer acceptable to a request, besides its body and route: the headers that
/// narrow which offerings may answer. Two requests that differ here must never share a kept
/// answer (the cache) or a key's replay (idempotency): an answer an equivalent gave must not
/// reach a request that forbids equivalents, nor one from `oa` (region us) a request pinned to
/// `oa2` or to region eu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptable<'a> {
    /// Equivalents allowed, as the request's header and the policy decide together.
    pub allow_equivalents: bool,
    /// The provider the request is pinned to, by name (stable across reloads).
    pub pin: Option<&'a str>,
    pub region: Option<&'a str>,
    /// `x-twinroute-require-parameters: true`: no offering that drops a parameter.
    pub require_params: bool,
}

impl Acceptable<'_> {
    /// Fed into a digest (the cache key, the idempotency fingerprint), unambiguously: each part
    /// tagged, strings ended with a NUL (header values cannot hold one).
    pub fn digest_into(&self, h: &mut impl sha2::Digest) {
        h.update([
            u8::from(self.allow_equivalents),
            u8::from(self.require_params),
        ]);
        for part in [self.pin, self.region] {
            match part {
                None => h.update([0]),
                Some(v) => {
                    h.update([1]);
                    h.update(v.as_bytes());
                    h.update([0]);
                }
            }
        }
    }
}

/// Whether a provider that keeps nothing (`zero_retention: true`) could answer this request:
/// one of the model's offerings, or of its equivalents when they are allowed, on that provider
/// (only the pinned provider when pinned). Health is not asked: a zero-retention provider that
/// is down now can answer a moment later, and what a store kept for the request would outlive
/// it. Such a request neither reads nor writes any store (cache, idempotency, queue).
pub fn may_reach_zero_retention(
    catalog: &Catalog,
    providers: &[Arc<Provider>],
    model: ModelId,
    pin: Option<ProviderId>,
    allow_equivalents: bool,
) -> bool {
    if let Some(p) = pin {
        return providers[p].zero_retention;
    }
    let m = catalog.model(model);
    let equivalents = m
        .equivalents
        .iter()
        .filter(|_| allow_equivalents)
        .flat_map(|e| catalog.model(e.id).offerings.iter());
    m.offerings
        .iter()
        .chain(equivalents)
        .any(|o| providers[o.provider].zero_retention)
}

/// One place to send the request, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub model: ModelId,
    pub offering: OfferingIdx,
    pub provider: ProviderId,
    /// `Some(grade)` when this is a closest equivalent, not a twin of the requested model.
    pub grade: Option<f64>,
    /// Tried although health says it is down (with this reason), because nothing healthy was
    /// left: fail open.
    pub fail_open: Option<SkipReason>,
    /// Dearer than the cost ceiling; tried only because `on_ceiling: degrade`.
    pub over_ceiling: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NoRoute {
    /// No offering of the model speaks the endpoint's wire format, natively or translated.
    WrongApi,
    /// Every offering left lacks a feature the request uses.
    Lacks(Vec<String>),
    /// Every provider that could serve it has no credential (`credential_missing`).
    NoCredentials(Vec<String>),
    /// Only offerings of the other wire format are left, and the request uses what that format
    /// cannot carry (these parameters or content features).
    Untranslatable(Vec<String>),
    PinnedProviderHasNoOffering(String),
    NoOfferingInRegion(String),
    /// Every offering would drop or ignore one of these parameters.
    ParamsUnsupported(Vec<String>),
    /// The request needs `needed` tokens; the largest window on offer is `largest`.
    ContextTooLarge {
        needed: u64,
        largest: u64,
    },
}

impl NoRoute {
    pub fn message(&self, model: &str, endpoint: Endpoint) -> String {
        match self {
            NoRoute::Lacks(features) => format!(
                "no provider of model {model:?} supports what this request uses: {}",
                features.join(", ")
            ),
            NoRoute::NoCredentials(reasons) => format!(
                "no provider of model {model:?} has a credential configured: {}",
                reasons.join("; ")
            ),
            NoRoute::Untranslatable(features) => format!(
                "model {model:?} on the {} API can only be served through a provider of the other \
                 wire format here, which cannot carry: {} (list them in the offering's \
                 drop_params to send the request without them)",
                endpoint.as_str(),
                features.join(", ")
            ),
            NoRoute::WrongApi => format!(
                "model {model:?} has no provider that serves the {} API",
                endpoint.as_str()
            ),
            NoRoute::PinnedProviderHasNoOffering(p) => {
                format!("provider {p:?} does not offer model {model:?} for this API")
            }
            // The region is not echoed: a header's value goes into no error and no log line
            // (clients have pasted keys into headers before).
            NoRoute::NoOfferingInRegion(_) => {
                format!("no provider in the region x-twinroute-region names offers model {model:?}")
            }
            NoRoute::ParamsUnsupported(params) => format!(
                "x-twinroute-require-parameters: no provider of model {model:?} supports all of \
                 the parameters sent ({})",
                params.join(", ")
            ),
            NoRoute::ContextTooLarge { needed, largest } => format!(
                "the request needs about {needed} tokens of context; the largest window model \
                 {model:?} may use is {largest} tokens"
            ),
        }
    }
}

fn blended(catalog: &Catalog, model: ModelId, offering: OfferingIdx) -> f64 {
    catalog
        .offering(model, offering)
        .price
        .map(|p| p.blended())
        .unwrap_or(f64::INFINITY)
}

/// An offering under consideration: (model, offering index, grade if an equivalent).
#[derive(Debug, Clone, Copy)]
struct Choice {
    model: ModelId,
    offering: OfferingIdx,
    grade: Option<f64>,
}

/// Everything one routing decision reads.
#[derive(Clone, Copy)]
pub struct RouteInput<'a> {
    /// The requested (canonical) model.
    pub model: ModelId,
    pub catalog: &'a Catalog,
    pub providers: &'a [Arc<Provider>],
    /// The client's route, which fixes the wire format.
    pub endpoint: Endpoint,
    pub policy: &'a Policy,
    pub constraints: &'a RequestConstraints,
    pub health: &'a HealthSnapshot,
}

/// Order the offerings of `model` (and, when the policy allows, of its closest equivalents)
/// for one request.
///
/// The order is: healthy twins (by strategy), healthy equivalents (best grade first, each by
/// strategy), then with `on_ceiling: degrade` healthy offerings over the cost ceiling. Only when
/// health turned every one of them away are the others tried, as a fail-open last resort,
/// twins first, soonest back first.
pub fn candidates(input: &RouteInput<'_>) -> Result<Vec<Candidate>, NoRoute> {
    let RouteInput {
        model: model_id,
        catalog,
        providers,
        endpoint,
        policy,
        constraints,
        health,
    } = *input;
    let model = catalog.model(model_id);
    let mut pool: Vec<Choice> = (0..model.offerings.len())
        .map(|offering| Choice {
            model: model_id,
            offering: OfferingIdx(offering),
            grade: None,
        })
        .collect();
    if constraints
        .allow_equivalents
        .unwrap_or(policy.allow_equivalents)
    {
        let mut eqs: Vec<_> = model
            .equivalents
            .iter()
            .filter(|e| e.grade >= policy.min_grade)
            .collect();
        // Stable: equal grades keep file order.
        eqs.sort_by(|a, b| b.grade.partial_cmp(&a.grade).unwrap_or(Ordering::Equal));
        for e in eqs {
            for offering in 0..catalog.model(e.id).offerings.len() {
                pool.push(Choice {
                    model: e.id,
                    offering: OfferingIdx(offering),
                    grade: Some(e.grade),
                });
            }
        }
    }
    let provider_of = |o: &Choice| catalog.offering(o.model, o.offering).provider;

    // Filters, in an order that makes the error name the first thing that ruled everything out.
    let api_of = |o: &Choice| providers[provider_of(o)].api();
    pool.retain(|o| endpoint.reachable_by(api_of(o)));
    if pool.is_empty() {
        return Err(NoRoute::WrongApi);
    }
    // A provider without a credential is out of rotation entirely (not even fail-open: a
    // request without its key is refused, every time).
    if pool
        .iter()
        .any(|o| providers[provider_of(o)].credential_missing.is_some())
    {
        let mut reasons: Vec<String> = Vec::new();
        pool.retain(|o| {
            let p = &providers[provider_of(o)];
            match &p.credential_missing {
                None => true,
                Some(why) => {
                    let r = format!("{}: {why}", p.name);
                    if !reasons.contains(&r) {
                        reasons.push(r);
                    }
                    false
                }
            }
        });
        if pool.is_empty() {
            return Err(NoRoute::NoCredentials(reasons));
        }
    }
    // An offering reached through translation must be able to carry the whole request; what
    // its `drop_params` name is cut before translating.
    if !constraints.untranslatable.is_empty() {
        pool.retain(|o| {
            !endpoint.translated_to(api_of(o))
                || constraints.untranslatable.iter().all(|f| {
                    catalog
                        .offering(o.model, o.offering)
                        .drop_params
                        .contains(f)
                })
        });
        if pool.is_empty() {
            return Err(NoRoute::Untranslatable(constraints.untranslatable.clone()));
        }
    }
    if !constraints.features.is_empty() {
        let lacking: Vec<String> = constraints
            .features
            .iter()
            .filter(|f| {
                pool.iter()
                    .any(|o| catalog.offering(o.model, o.offering).lacks.contains(f))
            })
            .map(|f| f.as_str().to_string())
            .collect();
        pool.retain(|o| {
            !catalog
                .offering(o.model, o.offering)
                .lacks
                .iter()
                .any(|f| constraints.features.contains(f))
        });
        if pool.is_empty() {
            return Err(NoRoute::Lacks(lacking));
        }
    }
    if let Some(pin) = constraints.pin {
        pool.retain(|o| provider_of(o) == pin);
        if pool.is_empty() {
            return Err(NoRoute::PinnedProviderHasNoOffering(
                providers[pin].name.clone(),
            ));
        }
    }
    if let Some(region) = &constraints.region {
        pool.retain(|o| providers[provider_of(o)].in_region(region));
        if pool.is_empty() {
            return Err(NoRoute::NoOfferingInRegion(region.clone()));
        }
    }
    if let Some(sent) = &constraints.required_params {
        let all = pool.clone();
        pool.retain(|o| {
            let off = catalog.offering(o.model, o.offering);
            !sent.iter().any(|p| {
                off.drop_params.iter().any(|d| d == p)
                    || off.unsupported_params.iter().any(|u| u == p)
            })
        });
        if pool.is_empty() {
            let mut blocking: Vec<String> = sent
                .iter()
                .filter(|p| {
                    all.iter().any(|o| {
                        let off = catalog.offering(o.model, o.offering);
                        off.drop_params.contains(p) || off.unsupported_params.contains(p)
                    })
                })
                .cloned()
                .collect();
            blocking.dedup();
            return Err(NoRoute::ParamsUnsupported(blocking));
        }
    }
    if let Some(needed) = constraints.needed_tokens {
        let largest = pool
            .iter()
            .filter_map(|o| catalog.context_tokens(o.model, o.offering))
            .max();
        // Unknown windows are kept: no number is not evidence of a small one.
        pool.retain(|o| {
            catalog
                .context_tokens(o.model, o.offering)
                .is_none_or(|c| c >= needed)
        });
        if pool.is_empty() {
            return Err(NoRoute::ContextTooLarge {
                needed,
                largest: largest.unwrap_or(0),
            });
        }
    }

    // Cost ceiling: nothing dearer than `max_cost_multiplier` × the requested model's cheapest
    // priced twin that could serve this request. Unpriced offerings are never over it.
    let mut over: Vec<Choice> = Vec::new();
    if let Some(mult) = policy.max_cost_multiplier {
        let cheapest = pool
            .iter()
            .filter(|o| o.grade.is_none())
            .map(|o| blended(catalog, o.model, o.offering))
            .fold(f64::INFINITY, f64::min);
        if cheapest.is_finite() {
            let ceiling = cheapest * mult + 1e-12;
            let (within, dear): (Vec<_>, Vec<_>) = pool.into_iter().partition(|o| {
                let b = blended(catalog, o.model, o.offering);
                !b.is_finite() || b <= ceiling
            });
            pool = within;
            if policy.on_ceiling == OnCeiling::Degrade {
                over = dear;
            }
        }
    }

    let strategy = constraints.strategy.unwrap_or(policy.strategy);
    let mut up: Vec<Candidate> = Vec::with_capacity(pool.len() + over.len());
    let mut down: Vec<(Skip, bool, Candidate)> = Vec::new();
    // Groups keep their relative order (twins, then each equivalent by grade); the strategy
    // orders offerings within a group.
    for (list, over_ceiling) in [(&mut pool, false), (&mut over, true)] {
        let mut start = 0;
        while start < list.len() {
            let group = list[start].model;
            let end = start
                + list[start..]
                    .iter()
                    .take_while(|o| o.model == group)
                    .count();
            order_group(catalog, &mut list[start..end], strategy, health);
            let mut healthy = Vec::new();
            for o in &list[start..end] {
                let off = catalog.offering(o.model, o.offering);
                let c = Candidate {
                    model: o.model,
                    offering: o.offering,
                    provider: off.provider,
                    grade: o.grade,
                    fail_open: None,
                    over_ceiling,
                };
                match health.skip(off.provider, &off.model_id) {
                    None => healthy.push(c),
                    Some(skip) => down.push((
                        skip,
                        o.grade.is_some(),
                        Candidate {
                            fail_open: Some(skip.reason),
                            ..c
                        },
                    )),
                }
            }
            if strategy == Strategy::Weighted && !healthy.is_empty() {
                // Weighted choice picks the first candidate; failover after it stays in order.
                let pick = weighted_pick(
                    healthy
                        .iter()
                        .map(|c| catalog.offering(c.model, c.offering).weight),
                    constraints.draw,
                );
                let first = healthy.remove(pick);
                healthy.insert(0, first);
            }
            up.extend(healthy);
            start = end;
        }
    }
    if !up.is_empty() {
        return Ok(up);
    }
    // Fail open: every candidate looks down. An all-red board is as often a probe or breaker
    // problem as an outage, so try them all: the weakest evidence against a candidate first
    // (`SkipReason::evidence`), then twins before equivalents, then soonest back. The sort is
    // stable, so equal candidates keep the strategy's order.
    down.sort_by_key(|(skip, eq, _)| (skip.reason.evidence(), *eq, skip.until));
    Ok(down.into_iter().map(|(_, _, c)| c).collect())
}

/// Order one group (the offerings of one canonical model) by the strategy.
fn order_group(
    catalog: &Catalog,
    group: &mut [Choice],
    strategy: Strategy,
    health: &HealthSnapshot,
) {
    let cost = |o: &Choice| blended(catalog, o.model, o.offering);
    let cmp_cost =
        |a: &Choice, b: &Choice| cost(a).partial_cmp(&cost(b)).unwrap_or(Ordering::Equal);
    match strategy {
        Strategy::Ordered | Strategy::Weighted => {}
        Strategy::PreferCost => group.sort_by(cmp_cost),
        Strategy::PreferLatency => {
            let latency = |o: &Choice| {
                health
                    .provider(catalog.offering(o.model, o.offering).provider)
                    .latency_ms
                    .unwrap_or(f64::INFINITY)
            };
            group.sort_by(|a, b| {
                latency(a)
                    .partial_cmp(&latency(b))
                    .unwrap_or(Ordering::Equal)
                    .then_with(|| cmp_cost(a, b))
            })
        }
    }
}

/// Index chosen by weight for a uniform `draw` in [0, 1). All-zero weights choose the first.
pub fn weighted_pick(weights: impl Iterator<Item = f64> + Clone, draw: f64) -> usize {
    let total: f64 = weights.clone().filter(|w| *w > 0.0).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut target = draw.clamp(0.0, 1.0) * total;
    let mut last_positive = 0;
    for (i, w) in weights.enumerate() {
        if w <= 0.0 {
            continue;
        }
        last_positive = i;
        if target < w {
            return i;
        }
        target -= w;
    }
    last_positive
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

    /// Health as the tests write it: by provider index and model ID.
    #[derive(Default)]
    struct FakeHealth {
        skip: HashMap<usize, (SkipReason, Instant)>,
        latency: HashMap<usize, f64>,
        offering: HashMap<(usize, String), (SkipReason, Instant)>,
    }

    trait Snap {
        fn snap(&self) -> HealthSnapshot;
    }

    impl Snap for FakeHealth {
        fn snap(&self) -> HealthSnapshot {
            let mut h = HealthSnapshot::all_up();
            for (p, (r, u)) in &self.skip {
                h.skip_provider(ProviderId(*p), *r, *u);
            }
            for (p, ms) in &self.latency {
                h.set_latency(ProviderId(*p), *ms);
            }
            for ((p, id), (r, u)) in &self.offering {
                h.skip_offering(ProviderId(*p), id, *r, *u);
            }
            h
        }
    }

    struct NoHealth;

    impl Snap for NoHealth {
        fn snap(&self) -> HealthSnapshot {
            HealthSnapshot::all_up()
        }
    }

    fn route(
        cfg: &crate::model::Config,
        model: usize,
        ep: Endpoint,
        policy: &Policy,
        c: &RequestConstraints,
        h: &dyn Snap,
    ) -> Result<Vec<Candidate>, NoRoute> {
        candidates(&RouteInput {
            model: ModelId(model),
            catalog: &cfg.catalog,
            providers: &cfg.providers,
            endpoint: ep,
            policy,
            constraints: c,
            health: &h.snap(),
        })
    }

    fn order_in(
        text: &str,
        c: &RequestConstraints,
        h: &dyn Snap,
        ep: Endpoint,
        model: usize,
    ) -> Result<Vec<usize>, NoRoute> {
        let cfg = parse(text, &BTreeMap::new()).unwrap();
        let policy = cfg.catalog.model(ModelId(model)).policy.clone();
        route(&cfg, model, ep, &policy, c, h).map(|v| v.into_iter().map(|c| c.provider.0).collect())
    }

    fn full(
        text: &str,
        c: &RequestConstraints,
        h: &dyn Snap,
        ep: Endpoint,
        model: usize,
    ) -> Result<Vec<Candidate>, NoRoute> {
        let cfg = parse(text, &BTreeMap::new()).unwrap();
        let policy = cfg.catalog.model(ModelId(model)).policy.clone();
        route(&cfg, model, ep, &policy, c, h)
    }

    fn order(
        c: &RequestConstraints,
        h: &dyn Snap,
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
        // Azure has no Responses route; embeddings and Responses are never translated.
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::Responses, 0),
            Ok(vec![0, 1])
        );
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::Embeddings, 1),
            Err(NoRoute::WrongApi)
        );
        // Chat completions and Messages reach the other format through translation.
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::Messages, 0),
            Ok(vec![0, 1, 2])
        );
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::ChatCompletions, 1),
            Ok(vec![3])
        );
        // Unless the request uses what the other format cannot carry.
        let c = RequestConstraints {
            untranslatable: vec!["logprobs".into()],
            ..Default::default()
        };
        assert_eq!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 1),
            Err(NoRoute::Untranslatable(vec!["logprobs".into()]))
        );
        // Same-format offerings are untouched by it.
        assert_eq!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 0),
            Ok(vec![0, 1, 2])
        );
        // drop_params that cut the feature let the translated offering serve.
        let text = CONF.replace(
            "{provider: d, model: claude-x}",
            "{provider: d, model: claude-x, drop_params: [logprobs]}",
        );
        assert_eq!(
            order_in(&text, &c, &NoHealth, Endpoint::ChatCompletions, 1),
            Ok(vec![3])
        );
        assert_eq!(
            order(&Default::default(), &NoHealth, Endpoint::Messages, 1),
            Ok(vec![3])
        );
    }

    #[test]
    fn pin_and_region() {
        let c = RequestConstraints {
            pin: Some(ProviderId(1)),
            ..Default::default()
        };
        assert_eq!(
            order(&c, &NoHealth, Endpoint::ChatCompletions, 0),
            Ok(vec![1])
        );
        let c = RequestConstraints {
            pin: Some(ProviderId(3)),
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
    fn fail_open_tries_everyone_weakest_evidence_first() {
        let now = Instant::now();
        let mut h = FakeHealth::default();
        h.skip
            .insert(0, (SkipReason::BreakerOpen, now + Duration::from_secs(1)));
        h.skip
            .insert(1, (SkipReason::Cooldown, now + Duration::from_secs(9)));
        h.skip
            .insert(2, (SkipReason::ProbeDown, now + Duration::from_secs(5)));
        let got = full(CONF, &Default::default(), &h, Endpoint::ChatCompletions, 0).unwrap();
        assert_eq!(
            got.iter().map(|c| c.provider.0).collect::<Vec<_>>(),
            vec![2, 1, 0]
        );
        assert_eq!(got[0].fail_open, Some(SkipReason::ProbeDown));
    }

    const ALL_REASONS: [SkipReason; 6] = [
        SkipReason::ProbeModelMissing,
        SkipReason::ProbeDown,
        SkipReason::Cooldown,
        SkipReason::BreakerOpen,
        SkipReason::ModelUnavailable,
        SkipReason::Drained,
    ];

    /// Every pair of verdicts, at either grain, on two twins: the weaker evidence goes first
    /// whichever twin holds it and whichever comes back sooner; equal evidence keeps the soonest
    /// back first, then the strategy's order.
    #[test]
    fn fail_open_order_for_every_combination_of_evidence() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let sooner = now + Duration::from_secs(1);
        for (ia, ra) in ALL_REASONS.iter().enumerate() {
            for (ib, rb) in ALL_REASONS.iter().enumerate() {
                for a_grain_offering in [false, true] {
                    for b_grain_offering in [false, true] {
                        let mut h = FakeHealth::default();
                        // a comes back later than b, so only evidence can put a first.
                        let mut put = |p: usize, id: &str, r: SkipReason, u, offering: bool| {
                            if offering {
                                h.offering.insert((p, id.to_string()), (r, u));
                            } else {
                                h.skip.insert(p, (r, u));
                            }
                        };
                        put(0, "a-m", *ra, later, a_grain_offering);
                        put(1, "b-m", *rb, sooner, b_grain_offering);
                        // c, drained by hand, is the strongest evidence there is.
                        h.skip.insert(2, (SkipReason::Drained, later));
                        let got = full(CONF, &Default::default(), &h, Endpoint::ChatCompletions, 0)
                            .unwrap();
                        let order: Vec<usize> = got.iter().map(|c| c.provider.0).collect();
                        let want = if ia < ib { vec![0, 1] } else { vec![1, 0] };
                        assert_eq!(
                            &order[..2],
                            &want[..],
                            "{ra:?} (offering: {a_grain_offering}) vs {rb:?} (offering: {b_grain_offering})"
                        );
                        assert!(got.iter().all(|c| c.fail_open.is_some()));
                        assert_eq!(got[0].fail_open, Some(if ia < ib { *ra } else { *rb }));
                        // Drained is last (a drained twin back as late keeps its file order).
                        assert_eq!(order[2], 2);
                    }
                }
            }
        }
    }

    /// An offering with verdicts at both grains is ranked by the stronger one.
    #[test]
    fn the_stronger_of_two_grains_decides() {
        let now = Instant::now();
        let t = now + Duration::from_secs(5);
        for (i, weak) in ALL_REASONS.iter().enumerate() {
            for strong in &ALL_REASONS[i..] {
                let mut h = HealthSnapshot::all_up();
                h.skip_provider(ProviderId(0), *weak, t);
                h.skip_offering(ProviderId(0), "a-m", *strong, t);
                assert_eq!(
                    h.skip(ProviderId(0), "a-m").map(|s| s.reason),
                    Some(*strong)
                );
                let mut h = HealthSnapshot::all_up();
                h.skip_provider(ProviderId(0), *strong, t);
                h.skip_offering(ProviderId(0), "a-m", *weak, t);
                let s = h.skip(ProviderId(0), "a-m").unwrap();
                assert_eq!(s.reason, *strong);
                // Another model on the same provider sees only the endpoint's verdict.
                assert_eq!(
                    h.skip(ProviderId(0), "other").map(|s| (s.reason, s.grain)),
                    Some((*strong, Grain::Endpoint))
                );
            }
        }
        // An offering's own verdict never reaches its provider's other models.
        let mut h = HealthSnapshot::all_up();
        h.skip_offering(ProviderId(0), "a-m", SkipReason::BreakerOpen, t);
        assert_eq!(
            h.skip(ProviderId(0), "a-m").map(|s| s.grain),
            Some(Grain::Offering)
        );
        assert_eq!(h.skip(ProviderId(0), "b-m"), None);
    }

    #[test]
    fn equal_evidence_puts_twins_before_equivalents_then_soonest_back() {
        let now = Instant::now();
        let mut h = FakeHealth::default();
        for p in 0..4 {
            h.skip.insert(
                p,
                (
                    SkipReason::BreakerOpen,
                    now + Duration::from_secs(10 - p as u64),
                ),
            );
        }
        let text = eq_policy("");
        let fail_open = |h: &FakeHealth| {
            full(&text, &Default::default(), h, Endpoint::ChatCompletions, 0).unwrap()
        };
        let got = fail_open(&h);
        let order: Vec<(usize, bool)> = got
            .iter()
            .map(|c| (c.provider.0, c.grade.is_some()))
            .collect();
        // Twins a (back in 10 s) and b (9 s) first, soonest first; then d (7 s), c (8 s).
        assert_eq!(order, vec![(1, false), (0, false), (3, true), (2, true)]);
        // A twin with stronger evidence goes behind an equivalent with weaker.
        h.skip
            .insert(0, (SkipReason::Drained, now + Duration::from_secs(1)));
        h.skip
            .insert(2, (SkipReason::ProbeDown, now + Duration::from_secs(30)));
        let order: Vec<usize> = fail_open(&h).iter().map(|c| c.provider.0).collect();
        assert_eq!(order, vec![2, 1, 3, 0]);
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

    /// A catalog with graded equivalents, windows, params and weights on four OpenAI providers.
    const EQ: &str = r#"
providers:
  - {name: a, api: openai, base_url: "http://127.0.0.1:1"}
  - {name: b, api: openai, base_url: "http://127.0.0.1:2"}
  - {name: c, api: openai, base_url: "http://127.0.0.1:3"}
  - {name: d, api: openai, base_url: "http://127.0.0.1:4"}
models:
  - name: big
    context_tokens: 8000
    equivalents: [{model: mid, grade: 0.85}, {model: best, grade: 0.95}, {model: low, grade: 0.5}]
    offerings:
      - {provider: a, model: a-big, price: {input_per_mtok: 1, output_per_mtok: 1}, weight: 9}
      - {provider: b, model: b-big, price: {input_per_mtok: 1, output_per_mtok: 1}, weight: 1, drop_params: [temperature]}
  - name: mid
    context_tokens: 32000
    offerings:
      - {provider: c, model: c-mid, price: {input_per_mtok: 1.5, output_per_mtok: 1.5}}
  - name: best
    context_tokens: 128000
    offerings:
      - {provider: d, model: d-best, price: {input_per_mtok: 5, output_per_mtok: 5}, unsupported_params: [logprobs]}
  - name: low
    offerings:
      - {provider: c, model: c-low}
"#;

    #[test]
    fn zero_retention_is_decided_from_every_offering_the_request_may_use() {
        // c keeps nothing; it serves `mid` (an equivalent of `big`) and `low`.
        let text = EQ.replace(
            r#"{name: c, api: openai, base_url: "http://127.0.0.1:3"}"#,
            r#"{name: c, api: openai, base_url: "http://127.0.0.1:3", zero_retention: true}"#,
        );
        let cfg = parse(&text, &BTreeMap::new()).unwrap();
        let reach = |model: usize, pin: Option<usize>, eq: bool| {
            may_reach_zero_retention(
                &cfg.catalog,
                &cfg.providers,
                ModelId(model),
                pin.map(ProviderId),
                eq,
            )
        };
        assert!(!reach(0, None, false), "big's own twins keep data");
        assert!(reach(0, None, true), "its equivalent mid is served by c");
        assert!(!reach(0, Some(0), true), "pinned to a");
        assert!(reach(0, Some(2), false), "pinned to c");
        assert!(reach(1, None, false), "mid itself");
    }

    fn eq_policy(extra: &str) -> String {
        format!("{EQ}policy: {{allow_equivalents: true{extra}}}\n")
    }

    fn ids(text: &str, c: &RequestConstraints, h: &dyn Snap) -> Result<Vec<String>, NoRoute> {
        let cfg = parse(text, &BTreeMap::new()).unwrap();
        let policy = cfg.catalog.model(ModelId(0)).policy.clone();
        route(&cfg, 0, Endpoint::ChatCompletions, &policy, c, h).map(|v| {
            v.into_iter()
                .map(|c| cfg.catalog.offering(c.model, c.offering).model_id.clone())
                .collect()
        })
    }

    #[test]
    fn twins_before_equivalents_in_grade_order_above_min_grade() {
        let d = RequestConstraints::default();
        // Default: equivalents off (fail closed).
        assert_eq!(
            ids(EQ, &d, &NoHealth),
            Ok(vec!["a-big".into(), "b-big".into()])
        );
        // On: twins, then best (0.95), then mid (0.85); low (0.5) is under min_grade 0.8.
        assert_eq!(
            ids(&eq_policy(""), &d, &NoHealth),
            Ok(vec![
                "a-big".into(),
                "b-big".into(),
                "d-best".into(),
                "c-mid".into()
            ])
        );
        assert_eq!(
            ids(&eq_policy(", min_grade: 0.9"), &d, &NoHealth),
            Ok(vec!["a-big".into(), "b-big".into(), "d-best".into()])
        );
        // The request header turns them on or off over the policy.
        let on = RequestConstraints {
            allow_equivalents: Some(true),
            ..Default::default()
        };
        assert_eq!(ids(EQ, &on, &NoHealth).unwrap().len(), 4);
        let off = RequestConstraints {
            allow_equivalents: Some(false),
            ..Default::default()
        };
        assert_eq!(ids(&eq_policy(""), &off, &NoHealth).unwrap().len(), 2);
    }

    #[test]
    fn healthy_equivalents_replace_down_twins() {
        let now = Instant::now();
        let mut h = FakeHealth::default();
        h.skip
            .insert(0, (SkipReason::BreakerOpen, now + Duration::from_secs(3)));
        h.offering.insert(
            (1, "b-big".into()),
            (SkipReason::ModelUnavailable, now + Duration::from_secs(600)),
        );
        let d = RequestConstraints::default();
        let got = full(&eq_policy(""), &d, &h, Endpoint::ChatCompletions, 0).unwrap();
        let order: Vec<(usize, Option<f64>, Option<SkipReason>)> = got
            .iter()
            .map(|c| (c.provider.0, c.grade, c.fail_open))
            .collect();
        assert_eq!(order, vec![(3, Some(0.95), None), (2, Some(0.85), None)]);
        // Equivalents off: the twins are tried anyway (fail open), never another model.
        assert_eq!(ids(EQ, &d, &h), Ok(vec!["a-big".into(), "b-big".into()]));
    }

    #[test]
    fn context_fit_skips_small_windows() {
        let c = |needed| RequestConstraints {
            needed_tokens: Some(needed),
            ..Default::default()
        };
        // 20k tokens: big (8k) cannot hold it, mid (32k) and best (128k) can; low is unknown.
        assert_eq!(
            ids(&eq_policy(", min_grade: 0.1"), &c(20_000), &NoHealth),
            Ok(vec!["d-best".into(), "c-mid".into(), "c-low".into()])
        );
        // Without equivalents nothing fits: the error names the sizes.
        assert_eq!(
            ids(EQ, &c(20_000), &NoHealth),
            Err(NoRoute::ContextTooLarge {
                needed: 20_000,
                largest: 8000
            })
        );
        assert_eq!(ids(EQ, &c(100), &NoHealth).unwrap().len(), 2);
    }

    #[test]
    fn cost_ceiling_on_equivalents_fail_and_degrade() {
        let d = RequestConstraints::default();
        // Ceiling 2× the cheapest twin (1.0): best (5.0) is out, mid (1.5) is in.
        assert_eq!(
            ids(&eq_policy(", max_cost_multiplier: 2"), &d, &NoHealth),
            Ok(vec!["a-big".into(), "b-big".into(), "c-mid".into()])
        );
        // Degrade: over-ceiling offerings come last, marked.
        let text = eq_policy(", max_cost_multiplier: 2, on_ceiling: degrade");
        let got = full(&text, &d, &NoHealth, Endpoint::ChatCompletions, 0).unwrap();
        assert_eq!(got.len(), 4);
        assert!(got[3].over_ceiling && got[3].provider == ProviderId(3));
        assert!(got[..3].iter().all(|c| !c.over_ceiling));
    }

    #[test]
    fn require_parameters_skips_offerings_that_would_drop_them() {
        let sent = |p: &[&str]| RequestConstraints {
            required_params: Some(p.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert_eq!(
            ids(EQ, &sent(&["model", "messages", "temperature"]), &NoHealth),
            Ok(vec!["a-big".into()])
        );
        assert_eq!(
            ids(&eq_policy(""), &sent(&["model", "logprobs"]), &NoHealth),
            Ok(vec!["a-big".into(), "b-big".into(), "c-mid".into()])
        );
        let only_b = format!("{EQ}\n");
        let pinned = RequestConstraints {
            pin: Some(ProviderId(1)),
            required_params: Some(vec!["temperature".into()]),
            ..Default::default()
        };
        assert_eq!(
            ids(&only_b, &pinned, &NoHealth),
            Err(NoRoute::ParamsUnsupported(vec!["temperature".into()]))
        );
    }

    #[test]
    fn weighted_first_choice_follows_weights() {
        use rand::{Rng, SeedableRng};
        let text = format!("{EQ}policy: {{strategy: weighted}}\n");
        let cfg = parse(&text, &BTreeMap::new()).unwrap();
        let policy = cfg.catalog.model(ModelId(0)).policy.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 20_000;
        let mut first = [0usize; 2];
        for _ in 0..n {
            let c = RequestConstraints {
                draw: rng.random::<f64>(),
                ..Default::default()
            };
            let got = route(&cfg, 0, Endpoint::ChatCompletions, &policy, &c, &NoHealth).unwrap();
            assert_eq!(got.len(), 2, "failover after the weighted pick stays");
            first[got[0].provider.0] += 1;
        }
        // Chi-square against 90/10 with one degree of freedom: 10.83 is p = 0.001.
        let expected = [n as f64 * 0.9, n as f64 * 0.1];
        let chi2: f64 = (0..2)
            .map(|i| (first[i] as f64 - expected[i]).powi(2) / expected[i])
            .sum();
        assert!(chi2 < 10.83, "chi2 {chi2}, counts {first:?}");
        // A down twin never wins the draw.
        let now = Instant::now();
        let mut h = FakeHealth::default();
        h.skip
            .insert(0, (SkipReason::Drained, now + Duration::from_secs(60)));
        let c = RequestConstraints {
            draw: 0.01,
            ..Default::default()
        };
        let got = route(&cfg, 0, Endpoint::ChatCompletions, &policy, &c, &h).unwrap();
        assert_eq!(got[0].provider, ProviderId(1));
    }

    #[test]
    fn weighted_pick_edges() {
        let w = [0.0, 2.0, 0.0, 2.0];
        assert_eq!(weighted_pick(w.iter().copied(), 0.0), 1);
        assert_eq!(weighted_pick(w.iter().copied(), 0.49), 1);
        assert_eq!(weighted_pick(w.iter().copied(), 0.5), 3);
        assert_eq!(weighted_pick(w.iter().copied(), 0.999_999), 3);
        assert_eq!(weighted_pick([0.0, 0.0].iter().copied(), 0.7), 0);
    }

    #[test]
    fn routes_match_by_path_and_header_first_wins() {
        let text = format!(
            "{EQ}routes:\n  - name: bot\n    match: {{headers: {{x-twinroute-route: support-bot}}}}\n    policy: {{max_attempts: 1, allow_equivalents: true}}\n  - name: embed\n    match: {{paths: [/v1/embeddings]}}\n    policy: {{strategy: prefer_cost}}\n  - name: bot-chat\n    match: {{paths: [/v1/chat/completions], headers: {{x-twinroute-route: support-bot}}}}\n"
        );
        let cfg = parse(&text, &BTreeMap::new()).unwrap();
        let mut h = http::HeaderMap::new();
        assert!(cfg.route_for("/v1/chat/completions", &h).is_none());
        assert_eq!(cfg.route_for("/v1/embeddings", &h).unwrap().name, "embed");
        h.insert("x-twinroute-route", "support-bot".parse().unwrap());
        // "bot" comes first in the file and matches any path.
        let r = cfg.route_for("/v1/chat/completions", &h).unwrap();
        assert_eq!(r.name, "bot");
        let p = cfg.policy_for(Some(r), None, ModelId(0));
        assert_eq!((p.max_attempts, p.allow_equivalents), (1, true));
        assert_eq!(cfg.policy_for(None, None, ModelId(0)).max_attempts, 3);
        h.insert("x-twinroute-route", "other".parse().unwrap());
        assert_eq!(cfg.route_for("/v1/embeddings", &h).unwrap().name, "embed");
    }
}
