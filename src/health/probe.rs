//! The background probe service: every `probe.interval_ms` each provider gets a cheap
//! authenticated `GET probe.path` (default `/v1/models`: no tokens spent). 2xx within
//! `probe.timeout_ms` is up and its round trip feeds the latency EWMA; anything else is down, and
//! routing skips the provider until a probe succeeds again.
//!
//! Runs as a Pingora background service with its own runtime and its own connector, off the
//! request path.
//!
//! The listing the probe fetches is also evidence about single models: an offering whose model
//! ID the provider does not list is taken out (`probe_model_missing`) until it is listed again.

use crate::config::Provider;
use crate::provider::build_probe;
use crate::resolve::Resolver;
use crate::state::Runtime;
use crate::state::Shared;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::prelude::HttpPeer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest probe response body read (model listings can be long; more is not needed).
const MAX_PROBE_BODY: usize = 4 << 20;

pub struct ProbeService {
    shared: Arc<Shared>,
}

impl ProbeService {
    pub fn new(shared: Arc<Shared>) -> ProbeService {
        ProbeService { shared }
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeError {
    /// The provider answered, with a non-2xx status.
    Status(u16),
    /// No answer: DNS, connect, TLS or I/O failure.
    Unreachable(String),
    Timeout(Duration),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Status(s) => write!(f, "status {s}"),
            ProbeError::Unreachable(e) => f.write_str(e),
            ProbeError::Timeout(d) => write!(f, "timeout after {} ms", d.as_millis()),
        }
    }
}

/// One probe of endpoint `endpoint` of `provider`: `Ok((round trip, body))` on a 2xx.
pub async fn probe_once(
    connector: &Connector,
    resolver: &Resolver,
    provider: &Provider,
    endpoint: usize,
) -> Result<(Duration, bytes::Bytes), ProbeError> {
    let started = Instant::now();
    let Some(ep) = provider.endpoints.get(endpoint) else {
        return Err(ProbeError::Unreachable(format!("no endpoint {endpoint}")));
    };
    let work =
        async {
            let addr = resolver
                .resolve(&ep.base.host, ep.base.port)
                .await
                .map_err(ProbeError::Unreachable)?;
            let mut peer = HttpPeer::new(addr, ep.base.tls, ep.base.host.clone());
            peer.options.connection_timeout =
                Some(provider.timeouts.connect.min(provider.probe.timeout));
            peer.options.verify_cert = provider.tls_verify;
            peer.options.verify_hostname = provider.tls_verify;
            let req = build_probe(provider, ep)
                .map_err(|e| ProbeError::Unreachable(format!("bad probe request: {e}")))?;
            let (mut s, _) = connector
                .get_http_session(&peer)
                .await
                .map_err(|e| ProbeError::Unreachable(format!("connect: {}", e.etype().as_str())))?;
            s.write_request_header(Box::new(req))
                .await
                .map_err(|e| ProbeError::Unreachable(format!("write: {}", e.etype().as_str())))?;
            s.finish_request_body()
                .await
                .map_err(|e| ProbeError::Unreachable(format!("write: {}", e.etype().as_str())))?;
            s.read_response_header()
                .await
                .map_err(|e| ProbeError::Unreachable(format!("read: {}", e.etype().as_str())))?;
            let status = s.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
            let rtt = started.elapsed();
            if !(200..300).contains(&status) {
                return Err(ProbeError::Status(status));
            }
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = s.read_response_body().await.map_err(|e| {
                ProbeError::Unreachable(format!("read body: {}", e.etype().as_str()))
            })? {
                if body.len() + chunk.len() > MAX_PROBE_BODY {
                    return Ok((rtt, body.freeze()));
                }
                body.extend_from_slice(&chunk);
            }
            if s.response_done() {
                connector
                    .release_http_session(s, &peer, Some(Duration::from_secs(60)))
                    .await;
            }
            Ok((rtt, body.freeze()))
        };
    match tokio::time::timeout(provider.probe.timeout, work).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProbeError::Timeout(provider.probe.timeout)),
    }
}

/// The model IDs a listing names, from OpenAI's and Anthropic's `{"data":[{"id":..}]}` or a
/// bare array of `{"id":..}` (some OpenAI-compatible hosts). `None` when the body is not a
/// listing or says it is incomplete (`has_more`): a partial list proves nothing missing. An
/// empty list is no evidence either (a gateway in front of the provider, a key scoped to
/// nothing): taking every model out on it would turn a listing quirk into an outage.
pub fn parse_listing(body: &[u8]) -> Option<HashSet<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("has_more").and_then(|h| h.as_bool()) == Some(true) {
        return None;
    }
    let items = match &v {
        serde_json::Value::Array(a) => a,
        _ => v.get("data")?.as_array()?,
    };
    let ids: HashSet<String> = items
        .iter()
        .filter_map(|m| m.get("id").and_then(|id| id.as_str()).map(str::to_string))
        .collect();
    (!ids.is_empty()).then_some(ids)
}

/// Compare one provider's listing with its offerings and take out (or put back) the ones it
/// does not (or again does) list.
fn apply_listing(rt: &Runtime, p: &Provider, body: &[u8]) {
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
            for p in rt.config.providers.iter().filter(|p| p.probe.enabled) {
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

#[cfg(test)]
mod tests {
    use super::parse_listing;

    #[test]
    fn listings() {
        let openai = br#"{"object":"list","data":[{"id":"gpt-4.1","object":"model"},{"id":"o3"}]}"#;
        let got = parse_listing(openai).unwrap();
        assert!(got.contains("gpt-4.1") && got.contains("o3") && got.len() == 2);
        let together = br#"[{"id":"meta-llama/Llama-3.3-70B-Instruct-Turbo","type":"chat"}]"#;
        assert_eq!(parse_listing(together).unwrap().len(), 1);
        // Anthropic pages: an incomplete page proves nothing missing.
        let page = br#"{"data":[{"id":"claude-sonnet-4-5"}],"has_more":true,"last_id":"x"}"#;
        assert!(parse_listing(page).is_none());
        let last = br#"{"data":[{"id":"claude-sonnet-4-5"}],"has_more":false}"#;
        assert_eq!(parse_listing(last).unwrap().len(), 1);
        assert!(parse_listing(b"ok").is_none());
        assert!(parse_listing(br#"{"object":"list","data":[]}"#).is_none());
        assert!(parse_listing(br#"{"status":"up"}"#).is_none());
    }
}
