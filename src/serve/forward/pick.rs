//! Admission of one candidate: the next one health admits (breakers, cooldowns, probation
//! slots, `max_connections`), cycling through the plan; fail open when health turns all away.

use crate::decide::attempt::{Attempts, Probation};
use crate::decide::route::Candidate;
use crate::health::breaker::Admission;
use crate::health::InflightSlot;
use crate::serve::state::Runtime;
use tokio::time::Instant;

use super::Plan;

/// The candidate one attempt goes to.
pub(super) struct Pick<'r> {
    pub(super) candidate: Candidate,
    /// Index of the endpoint within the provider's pool.
    pub(super) endpoint: usize,
    /// Which breakers (the endpoint's, the offering's) admitted this as their one probation.
    pub(super) probation: Probation,
    /// The provider's `max_connections` slot, held for the attempt (none when failing open).
    pub(super) slot: Option<InflightSlot<'r>>,
}

/// Next candidate health admits, cycling through the list. When health turns every candidate
/// away, the first one in order is used anyway (fail open).
pub(super) fn pick<'r>(
    rt: &'r Runtime,
    plan: &Plan,
    cursor: &mut usize,
    now: Instant,
    attempts: &mut Attempts,
) -> Option<Pick<'r>> {
    let n = plan.candidates.len();
    if n == 0 {
        return None;
    }
    let catalog = &rt.config.catalog;
    let min_context = attempts.min_context();
    let fits = |c: &Candidate| {
        min_context == 0
            || catalog
                .context_tokens(c.model, c.offering)
                .is_some_and(|t| t >= min_context)
    };
    if !plan.candidates.iter().any(fits) {
        return None;
    }
    let region = plan.region.as_deref();
    for _ in 0..n {
        let c = &plan.candidates[*cursor % n];
        *cursor += 1;
        if !fits(c) {
            continue;
        }
        if c.fail_open.is_some() {
            // Routing already knows everything is down; order is its call.
            return Some(Pick {
                candidate: c.clone(),
                endpoint: rt.health.fallback_endpoint(c.provider, region, now),
                probation: Probation::default(),
                slot: None,
            });
        }
        // Health may have changed since routing (a Retry-After or a breaker trip mid-request,
        // an offering another request just found gone).
        let model_id = &catalog.offering(c.model, c.offering).model_id;
        if rt.health.provider_skip(c.provider, now).is_some()
            || rt.health.offering_skip(c.provider, model_id, now).is_some()
        {
            continue;
        }
        // A provider at its max_connections is passed over like an unhealthy one.
        let max = rt.config.providers[c.provider].max_connections;
        let Some(slot) = rt.health.try_acquire(c.provider, max) else {
            attempts.note_saturated();
            continue;
        };
        let Some((ep, endpoint_admission)) =
            rt.health.select_endpoint(c.provider, region, model_id, now)
        else {
            continue;
        };
        let endpoint_probation = endpoint_admission == Admission::Probation;
        // The offering's own breaker: a model sick on a healthy provider.
        let offering_probation = match rt.health.admit_offering(c.provider, ep, model_id, now) {
            Admission::Admit => false,
            Admission::Probation => true,
            Admission::Reject { .. } => {
                if endpoint_probation {
                    rt.health.on_abandoned(c.provider, ep, now);
                }
                continue;
            }
        };
        return Some(Pick {
            candidate: c.clone(),
            endpoint: ep,
            probation: Probation {
                endpoint: endpoint_probation,
                offering: offering_probation,
            },
            slot: Some(slot),
        });
    }
    let mut c = loop {
        let c = &plan.candidates[*cursor % n];
        *cursor += 1;
        if fits(c) {
            break c.clone();
        }
    };
    let model_id = &catalog.offering(c.model, c.offering).model_id;
    c.fail_open = rt
        .health
        .provider_skip(c.provider, now)
        .or_else(|| rt.health.offering_skip(c.provider, model_id, now))
        .map(|(r, _)| r);
    if attempts.saturated() && c.fail_open.is_none() {
        // Everyone healthy is busy: an overload answer, not a pile-up on a saturated provider.
        return None;
    }
    let endpoint = rt.health.fallback_endpoint(c.provider, region, now);
    Some(Pick {
        candidate: c,
        endpoint,
        probation: Probation::default(),
        slot: None,
    })
}
