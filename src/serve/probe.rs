//! The background probe service: every `probe.interval_ms` each provider gets a cheap
//! authenticated `GET probe.path` (default: the family's model listing, no tokens spent) on
//! every endpoint, through its pool's health check (`health::probe`). Runs as a Pingora
//! background service with its own runtime, off the request path.
//!
//! The listing the probe fetches is also evidence about single models: an offering whose model
//! ID the provider does not list is taken out (`probe_model_missing`) until it is listed again.

use crate::model::Provider;
use crate::serve::state::{Generation, Shared};
use crate::wire::listing::parse_listing;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct ProbeService {
    shared: Arc<Shared>,
}

impl ProbeService {
    pub fn new(shared: Arc<Shared>) -> ProbeService {
        ProbeService { shared }
    }
}

/// Compare one provider's listing with its offerings and take out (or put back) the ones it
/// does not (or again does) list.
fn apply_listing(rt: &Generation, p: &Provider, body: &[u8]) {
    let Some(listed) = parse_listing(body) else {
        log::debug!(
            "provider {}: probe body is not a full model listing",
            p.name
        );
        return;
    };
    let offered: Vec<&str> = rt
        .config
        .catalog
        .models()
        .iter()
        .flat_map(|m| m.offerings.iter())
        .filter(|o| o.provider == p.id)
        .map(|o| o.model_id.as_str())
        .collect();
    for (id, missing) in rt.health.apply_listing(p.id, &offered, &listed) {
        if missing {
            log::warn!(
                "provider {}: model {id} is not in its model listing (probe_model_missing); offering out of rotation",
                p.name
            );
        } else {
            log::warn!(
                "provider {}: model {id} is listed again; offering back in rotation",
                p.name
            );
        }
    }
}

#[async_trait]
impl BackgroundService for ProbeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Keyed by provider name so a config reload keeps each provider's schedule.
        let mut next_due: HashMap<String, Instant> = HashMap::new();
        loop {
            let rt = self.shared.runtime.load_full();
            let now = Instant::now();
            let mut wake = now + Duration::from_secs(1);
            // A provider without a credential is out of rotation: probing it would only log 401s.
            let probed = rt
                .config
                .providers
                .iter()
                .filter(|p| p.probe.enabled && p.credential_missing.is_none());
            for p in probed {
                let due = *next_due.entry(p.name.clone()).or_insert(now);
                if due <= now {
                    next_due.insert(p.name.clone(), now + p.probe.interval);
                    wake = wake.min(now + p.probe.interval);
                    let (rt, p) = (rt.clone(), p.clone());
                    tokio::spawn(async move {
                        // Every endpoint, through the pool's pingora health check.
                        let (body, flipped) = rt.health.probe(p.id).await;
                        if let (Some(body), true) = (&body, p.probe.list_models) {
                            apply_listing(&rt, &p, body);
                        }
                        // Log transitions only: a provider down for an hour is one line, not 720.
                        match flipped {
                            Some((false, e)) => log::warn!(
                                "provider {} probe failed, out of rotation: {}",
                                p.name,
                                e.unwrap_or_default()
                            ),
                            Some((true, _)) => {
                                log::warn!("provider {} probe succeeded, back in rotation", p.name)
                            }
                            None => {}
                        }
                    });
                } else {
                    wake = wake.min(due);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
