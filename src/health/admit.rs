//! Admission of one candidate for one attempt: the one question the attempt loop asks health.
//! Health may have changed since routing read its snapshot (a Retry-After or a breaker trip
//! mid-request, an offering another request just found gone), so every attempt asks again:
//! provider and offering verdicts, the provider's `max_connections`, an endpoint the pool
//! admits (in the pinned region), and the offering's own breaker at that endpoint.

use super::{Health, InflightSlot};
use crate::decide::attempt::Probation;
use crate::health::breaker::Admission;
use crate::model::ProviderId;
use tokio::time::Instant;

/// What health says to one candidate.
pub enum Admitted<'h> {
    /// Go: on this endpoint, as these probations, holding a `max_connections` slot.
    Yes {
        endpoint: usize,
        probation: Probation,
        slot: InflightSlot<'h>,
    },
    /// Turned away: a breaker, a cooldown, a drain, a model held out.
    Unhealthy,
    /// Healthy but at its `max_connections`.
    Saturated,
}

impl Health {
    /// Admit `provider` (for `model_id`, limited to `max` concurrent attempts, in `region` when
    /// pinned) for one attempt now. A probation this call granted is given back when a later
    /// check turns the candidate away, so no breaker waits on a test that never ran.
    pub fn admit(
        &self,
        provider: ProviderId,
        model_id: &str,
        max: Option<usize>,
        region: Option<&str>,
        now: Instant,
    ) -> Admitted<'_> {
        if self.provider_skip(provider, now).is_some()
            || self.offering_skip(provider, model_id, now).is_some()
        {
            return Admitted::Unhealthy;
        }
        let Some(slot) = self.try_acquire(provider, max) else {
            return Admitted::Saturated;
        };
        let Some((endpoint, endpoint_admission)) =
            self.select_endpoint(provider, region, model_id, now)
        else {
            return Admitted::Unhealthy;
        };
        let endpoint_probation = endpoint_admission == Admission::Probation;
        // The offering's own breaker: a model sick on a healthy provider.
        let offering_probation = match self.admit_offering(provider, endpoint, model_id, now) {
            Admission::Admit => false,
            Admission::Probation => true,
            Admission::Reject { .. } => {
                if endpoint_probation {
                    self.on_abandoned(provider, endpoint, now);
                }
                return Admitted::Unhealthy;
            }
        };
        Admitted::Yes {
            endpoint,
            probation: Probation {
                endpoint: endpoint_probation,
                offering: offering_probation,
            },
            slot,
        }
    }
}
