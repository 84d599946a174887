//! One small HTTP exchange off the request path (token endpoints, metadata servers), through
//! Pingora's connector (rustls for https), bounded in time and size.

use crate::net::resolve::Resolver;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use std::time::Duration;

/// Largest answer read (token answers are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

/// `method url` with `headers` and `body`; `(status, body)` or why it failed.
pub async fn fetch(
    connector: &Connector,
    resolver: &Resolver,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("URL scheme must be http or https".into()),
    };
    let host = uri.host().ok_or("URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let work = async {
        let addr = resolver.resolve(&host, port).await?;
        let mut peer = HttpPeer::new(addr, tls, host.clone());
        peer.options.connection_timeout = Some(timeout);
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(headers.len() + 3))
            .map_err(|e| e.to_string())?;
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        req.insert_header(http::header::HOST, host_header)
            .map_err(|e| e.to_string())?;
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v)
                .map_err(|e| e.to_string())?;
        }
        req.insert_header(http::header::CONTENT_LENGTH, body.map_or(0, |b| b.len()))
            .map_err(|e| e.to_string())?;
        let (mut s, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
        s.write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("write: {}", e.etype().as_str()))?;
        if let Some(b) = body {
            s.write_request_body(Bytes::copy_from_slice(b), true)
                .await
                .map_err(|e| format!("write: {}", e.etype().as_str()))?;
        }
        s.finish_request_body()
            .await
            .map_err(|e| format!("write: {}", e.etype().as_str()))?;
        s.read_response_header()
            .await
            .map_err(|e| format!("read: {}", e.etype().as_str()))?;
        let status = s.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        let mut out = BytesMut::new();
        while let Some(chunk) = s
            .read_response_body()
            .await
            .map_err(|e| format!("read body: {}", e.etype().as_str()))?
        {
            if out.len() + chunk.len() > MAX_BODY {
                return Err("answer too large".into());
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, out.freeze()))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}
