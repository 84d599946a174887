//! Admission of one candidate: the next one health admits (breakers, cooldowns, probation
//! slots, `max_connections`), cycling through the plan; fail open when health turns all away.

use crate::decide::attempt::{Attempts, Probation};
use crate::decide::route::Candidate;
use crate::health::admit::Admitted;
use crate::health::InflightSlot;
use crate::serve::state::Generation;
use tokio::time::Instant;

use super::Plan;

/// The candidate one attempt goes to.
pub(super) struct Pick<'r> {
    pub(super) candidate: Candidate,
    /// Index of the endpoint within the provider's pool.
    pub(super) endpoint: usize,
    /// Which breakers (the endpoint's, the offering's) admitted this as their one probation.
    pub(super) probation: Probation,
    /// The provider's `max_connections` slot, held (never read) until the attempt and its
    /// relay end: its drop gives the slot back (none when failing open).
    pub(super) _slot: Option<InflightSlot<'r>>,
}

/// Next candidate health admits, cycling through the list. When health turns every candidate
/// away, the first one in order is used anyway (fail open).
pub(super) fn pick<'r>(
    rt: &'r Generation,
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
                _slot: None,
            });
        }
        let model_id = &catalog.offering(c.model, c.offering).model_id;
        let max = rt.config.providers[c.provider].max_connections;
        match rt.health.admit(c.provider, model_id, max, region, now) {
            Admitted::Yes {
                endpoint,
                probation,
                slot,
            } => {
                return Some(Pick {
                    candidate: c.clone(),
                    endpoint,
                    probation,
                    _slot: Some(slot),
                })
            }
            // A provider at its max_connections is passed over like an unhealthy one.
            Admitted::Saturated => attempts.note_saturated(),
            Admitted::Unhealthy => {}
        }
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
        _slot: None,
    })
}
