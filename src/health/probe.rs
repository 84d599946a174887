//! One active probe of one endpoint: a cheap authenticated `GET probe.path` (the family's model
//! listing by default: no tokens spent). 2xx within `probe.timeout_ms` is up and its round trip
//! feeds the latency EWMA; anything else is down, and routing skips the endpoint until a probe
//! succeeds again. Scheduling is `serve::probe`; the verdicts live in the pool.

use crate::model::Provider;
use crate::net::resolve::Resolver;
use crate::wire::request::build_probe;
use pingora::connectors::http::Connector;
use pingora::prelude::HttpPeer;
use std::time::Duration;
use tokio::time::Instant;

/// Largest probe response body read (model listings can be long; more is not needed).
const MAX_PROBE_BODY: usize = 4 << 20;

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
