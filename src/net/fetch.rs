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

/// One request: `method url` with `headers` and `body`, within `timeout`, reading at most
/// `max_body` bytes of the answer.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
    pub max_body: usize,
}

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an exchange failed, and whether the request may have reached the server: a retry after
/// `Unsent` cannot run the request twice.
#[derive(Debug)]
pub enum FetchError {
    Unsent(String),
    Sent(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unsent(e) | FetchError::Sent(e) => f.write_str(e),
        }
    }
}

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
    let req = Request {
        method,
        url,
        headers,
        body,
        timeout,
        max_body: MAX_BODY,
    };
    exchange(connector, resolver, &req)
        .await
        .map(|a| (a.status, a.body))
        .map_err(|e| e.to_string())
}

/// One exchange: the whole answer (status, headers, body) or why it failed.
pub async fn exchange(
    connector: &Connector,
    resolver: &Resolver,
    r: &Request<'_>,
) -> Result<Answer, FetchError> {
    let unsent = FetchError::Unsent;
    let sent = FetchError::Sent;
    let (method, headers, body, timeout) = (r.method, r.headers, r.body, r.timeout);
    let uri: http::Uri = r.url.parse().map_err(|e| unsent(format!("bad URL: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(unsent("URL scheme must be http or https".into())),
    };
    let host = uri
        .host()
        .ok_or(unsent("URL has no host".into()))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let work = async {
        let addr = resolver.resolve(&host, port).await.map_err(unsent)?;
        let mut peer = HttpPeer::new(addr, tls, host.clone());
        peer.options.connection_timeout = Some(timeout);
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(headers.len() + 3))
            .map_err(|e| unsent(e.to_string()))?;
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        req.insert_header(http::header::HOST, host_header)
            .map_err(|e| unsent(e.to_string()))?;
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v)
                .map_err(|e| unsent(e.to_string()))?;
        }
        req.insert_header(http::header::CONTENT_LENGTH, body.map_or(0, |b| b.len()))
            .map_err(|e| unsent(e.to_string()))?;
        // Boxed: Pingora's connect future (~9 KB) would otherwise size every caller's future,
        // credentials minted on the request path among them (see `forward::exchange`).
        let (mut s, _) = Box::pin(connector.get_http_session(&peer))
            .await
            .map_err(|e| unsent(format!("connect: {}", e.etype().as_str())))?;
        s.write_request_header(Box::new(req))
            .await
            .map_err(|e| sent(format!("write: {}", e.etype().as_str())))?;
        if let Some(b) = body {
            s.write_request_body(Bytes::copy_from_slice(b), true)
                .await
                .map_err(|e| sent(format!("write: {}", e.etype().as_str())))?;
        }
        s.finish_request_body()
            .await
            .map_err(|e| sent(format!("write: {}", e.etype().as_str())))?;
        s.read_response_header()
            .await
            .map_err(|e| sent(format!("read: {}", e.etype().as_str())))?;
        let (status, headers) = match s.response_header() {
            Some(h) => (
                h.status.as_u16(),
                h.headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                    .collect(),
            ),
            None => (0, Vec::new()),
        };
        let mut out = BytesMut::new();
        while let Some(chunk) = s
            .read_response_body()
            .await
            .map_err(|e| sent(format!("read body: {}", e.etype().as_str())))?
        {
            if out.len() + chunk.len() > r.max_body {
                return Err(sent("answer too large".into()));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body: out.freeze(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(sent(format!("no answer within {} ms", timeout.as_millis()))),
    }
}
