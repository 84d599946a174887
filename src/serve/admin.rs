//! The admin listener (loopback by default): `/healthz`, `/readyz`, `/status`, `/metrics`, and
//! `POST /admin/providers/{name}/drain|undrain` to take a provider out of rotation by hand.

use crate::decide::route::{self, RequestConstraints, RouteInput};
use crate::model::endpoint::Endpoint;
use crate::observe::metrics::{self, METRICS};
use crate::serve::state::{Generation, Shared};
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

pub struct Admin {
    pub shared: Arc<Shared>,
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: u16, v: Value) -> Response<Vec<u8>> {
    respond(status, "application/json", v.to_string().into_bytes())
}

/// Refresh the stores' gauges: idempotency and cache (entries held, bytes they weigh), the
/// queue (depth, oldest job's age).
pub fn update_store_gauges(shared: &Shared) {
    let (entries, bytes) = shared.cache.usage();
    METRICS.cache_entries.set(entries as i64);
    METRICS.cache_bytes.set(bytes as i64);
    if let Some(store) = shared.idempotency.as_deref() {
        let (entries, bytes) = store.usage();
        METRICS.idempotency_entries.set(entries as i64);
        METRICS.idempotency_bytes.set(bytes as i64);
    }
    if let Some(q) = shared.queue.as_deref() {
        let s = q.stats();
        METRICS.queue_depth.set(s.waiting as i64);
        METRICS.queue_oldest_age.set(s.oldest_age_s);
    }
}

/// Refresh the health gauges from the live state; called on every scrape so they are never stale.
pub fn update_health_gauges(rt: &Generation) {
    let now = Instant::now();
    for p in &rt.config.providers {
        let s = rt.health.snapshot(p.id, now);
        METRICS
            .provider_healthy
            .with_label_values(&[&p.name])
            .set((s.healthy && p.credential_missing.is_none()) as i64);
        METRICS
            .breaker_state
            .with_label_values(&[&p.name])
            .set(s.breaker_gauge);
        if let Some(ms) = s.probe_latency_ms {
            METRICS
                .probe_latency
                .with_label_values(&[&p.name])
                .set(ms / 1000.0);
        }
    }
    // Every offering has a series (0 / 1 when nothing holds against it), so a recovered one
    // reads closed and healthy rather than vanishing.
    let out = rt.health.offering_snapshot(now);
    for (_, m) in rt.config.catalog.iter() {
        for o in &m.offerings {
            let provider = &rt.config.providers[o.provider].name;
            let s = out
                .iter()
                .find(|s| &s.provider == provider && s.model_id == o.model_id);
            METRICS
                .offering_breaker_state
                .with_label_values(&[provider, &o.model_id])
                .set(s.map_or(0, |s| s.breaker.gauge()));
            METRICS
                .offering_healthy
                .with_label_values(&[provider, &o.model_id])
                .set(s.is_none_or(|s| s.reason.is_none()) as i64);
        }
    }
}

pub fn status_json(rt: &Generation, tokens: &crate::serve::credentials::Tokens) -> Value {
    let now = Instant::now();
    let providers: Vec<Value> = rt
        .config
        .providers
        .iter()
        .map(|p| {
            let s = rt.health.snapshot(p.id, now);
            json!({
                "name": s.name,
                "api": p.api().as_str(),
                "region": p.region,
                "healthy": s.healthy && p.credential_missing.is_none(),
                // Left out of rotation: no credential (which env var or file is missing).
                "credential_missing": p.credential_missing,
                // Why the last access-token mint failed (Vertex), while it keeps failing.
                "credential_error": tokens.last_error(&p.name),
                "probe_up": s.probe_up,
                "breaker": s.breaker,
                "cooldown_remaining_ms": s.cooldown_remaining_ms,
                "latency_ms": s.latency_ms,
                "probe_latency_ms": s.probe_latency_ms,
                "last_error": s.last_error,
                "drained": s.drained,
                "drained_by": s.drained_by.as_ref().map(|(by, at)| json!({
                    "replica": by,
                    "at_unix_s": at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                })),
                "endpoints": s.endpoints.iter().map(|e| json!({
                    "url": e.url,
                    "region": e.region,
                    "probe_up": e.probe_up,
                    "breaker": e.breaker,
                    "cooldown_remaining_ms": e.cooldown_remaining_ms,
                    "last_error": e.last_error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let health = rt
        .health
        .routing_snapshot(now, rt.config.providers.iter().map(|p| p.id));
    let models: Vec<Value> = rt
        .config
        .catalog
        .iter()
        .map(|(id, m)| {
            let endpoint = [Endpoint::ChatCompletions, Endpoint::Messages]
                .into_iter()
                .find(|e| {
                    m.offerings
                        .iter()
                        .any(|o| e.served_by(rt.config.providers[o.provider].api()))
                })
                .unwrap_or(Endpoint::ChatCompletions);
            let order: Vec<Value> = route::candidates(&RouteInput {
                model: id,
                catalog: &rt.config.catalog,
                providers: &rt.config.providers,
                endpoint,
                policy: &m.policy,
                constraints: &RequestConstraints::default(),
                health: &health,
            })
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        json!({
                            "provider": rt.config.providers[c.provider].name,
                            "model": rt.config.catalog.model(c.model).offerings[c.offering].model_id,
                            "equivalent_grade": c.grade,
                            "fail_open": c.fail_open.map(|r| r.as_str()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
            json!({"name": m.name, "strategy": m.policy.strategy.as_str(), "candidates": order})
        })
        .collect();
    let offerings_out: Vec<Value> = rt
        .health
        .offering_snapshot(now)
        .into_iter()
        .map(|o| {
            json!({
                "provider": o.provider,
                "model": o.model_id,
                "grain": "offering",
                "reason": o.reason.map(|r| r.as_str()),
                "remaining_ms": o.remaining_ms,
                "breaker": o.breaker.name(),
                "held_out_at": o.held_out_at,
                "last_error": o.last_error,
            })
        })
        .collect();
    json!({"providers": providers, "models": models, "offerings_out": offerings_out})
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let rt = self.shared.runtime.load_full();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => respond(200, "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") => {
                if self.shared.ready.load(Ordering::Relaxed) {
                    respond(200, "text/plain", b"ready\n".to_vec())
                } else {
                    respond(503, "text/plain", b"starting\n".to_vec())
                }
            }
            ("GET", "/status") => {
                let mut v = status_json(&rt, &self.shared.tokens);
                if let Some(store) = self.shared.idempotency.as_deref() {
                    let (entries, bytes) = store.usage();
                    v["idempotency"] = json!({"entries": entries, "bytes": bytes});
                }
                let (entries, bytes) = self.shared.cache.usage();
                let lookups = |o: &str| METRICS.cache_lookups.with_label_values(&[o]).get();
                let (hits, misses) = (lookups("hit"), lookups("miss"));
                v["cache"] = json!({
                    "entries": entries,
                    "bytes": bytes,
                    "hit_ratio": (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
                    "stale_served": lookups("stale"),
                });
                if let Some(q) = self.shared.queue.as_deref() {
                    let s = q.stats();
                    v["queue"] = json!({
                        "depth": s.waiting,
                        "running": s.running,
                        "finished_kept": s.finished,
                        "oldest_age_s": s.oldest_age_s,
                    });
                }
                if let Some(f) = self.shared.fleet.as_deref() {
                    v["shared_state"] = f.status_json();
                }
                if !rt.config.teams.is_empty() {
                    let mut teams = Vec::with_capacity(rt.config.teams.len());
                    for t in &rt.config.teams {
                        teams.push(crate::serve::stage::team::usage(&self.shared, t).await);
                    }
                    v["teams"] = json!(teams);
                }
                json_response(200, v)
            }
            ("GET", "/metrics") => {
                update_health_gauges(&rt);
                update_store_gauges(&self.shared);
                respond(200, "text/plain; version=0.0.4", metrics::render())
            }
            ("POST", p) if p.starts_with("/admin/providers/") => {
                if !rt.config.admin_mutations {
                    return json_response(
                        403,
                        json!({"error": "admin mutations are off; set admin_mutations: true to drain providers by hand"}),
                    );
                }
                let rest = &p["/admin/providers/".len()..];
                let (name, action) = rest.rsplit_once('/').unwrap_or((rest, ""));
                let Some(provider) = rt.config.provider_by_name(name) else {
                    return json_response(
                        404,
                        json!({"error": format!("unknown provider {name:?}")}),
                    );
                };
                let drained = match action {
                    "drain" => true,
                    "undrain" => false,
                    _ => return json_response(404, json!({"error": "use /drain or /undrain"})),
                };
                // `?scope=fleet`: every replica sharing this one's state follows.
                let fleet_wide = session
                    .req_header()
                    .uri
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "scope=fleet"));
                let fleet = match (fleet_wide, self.shared.fleet.as_deref()) {
                    (false, _) => None,
                    (true, Some(f)) => Some(f.replica()),
                    (true, None) => {
                        return json_response(
                            400,
                            json!({"error": "scope=fleet needs shared_state in the config"}),
                        )
                    }
                };
                rt.health.set_drained(provider.id, drained, fleet);
                log::warn!(
                    "provider {} {} by admin request{}",
                    provider.name,
                    if drained { "drained" } else { "undrained" },
                    if fleet.is_some() {
                        " for the fleet"
                    } else {
                        ""
                    }
                );
                json_response(
                    200,
                    json!({"provider": provider.name, "drained": drained, "healthy": rt.health.provider_skip(provider.id, Instant::now()).is_none()}),
                )
            }
            _ => json_response(404, json!({"error": "not found"})),
        }
    }
}
