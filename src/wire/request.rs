//! Turning a candidate into an upstream request: URL path, headers, credentials.
//!
//! The client's own credentials and twinroute's control headers never leave this process; the
//! provider's key is injected in the form its wire format expects (one file per format).

use super::{anthropic, azure, bedrock, openai, vertex};
use crate::model::endpoint::Endpoint;
use crate::model::{Provider, ProviderEndpoint, Vendor};
use http::header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::request::Parts as RequestParts;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::{ErrorType, OrErr, Result};

/// A header value from text twinroute carries (the upstream's host; on answers a provider's
/// name, a model id, a request id): refused, as Pingora's own `insert_header` would refuse it,
/// when it is not a valid header value.
pub fn header_value(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).or_err(ErrorType::InvalidHTTPHeader, "invalid header value")
}

/// Request headers that are never forwarded: hop-by-hop (RFC 9110 §7.6.1), framing we redo,
/// the client's credentials, and our own control headers.
fn is_dropped(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "expect"
            | "accept-encoding"
            | "authorization"
            | "x-api-key"
            | "api-key"
            | "cookie"
            | "openai-organization"
            | "openai-project"
    ) || name.starts_with("x-twinroute-")
}

/// Whether a header (by lower-case name) carries a credential: its value is a secret that must
/// not come back to a client or into a log (`authorization`, `x-api-key`, `x-goog-api-key`,
/// `x-amz-security-token`, a custom `x-...-token` or `...-secret`).
pub fn carries_credential(name: &str) -> bool {
    [
        "auth",
        "key",
        "token",
        "secret",
        "password",
        "cookie",
        "signature",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// The upstream path (and query) for an endpoint on a provider.
///
/// `base_url` follows the OpenAI SDK convention: when it has a path it is the API root
/// (`https://api.groq.com/openai/v1`) and the endpoint's subpath is appended; a bare host
/// (`https://api.together.xyz`) gets the standard `/v1` root.
pub fn upstream_path(
    provider: &Provider,
    endpoint: Endpoint,
    model_id: &str,
    stream: bool,
) -> String {
    let base = provider.base.path.as_str();
    match &provider.vendor {
        Vendor::Azure { api_version } => azure::path(base, api_version, endpoint, model_id),
        Vendor::Bedrock { .. } => bedrock::path(base, model_id, stream),
        Vendor::Vertex { gcp, openai: false } => {
            vertex::path(base, &gcp.project, &gcp.location, model_id, stream)
        }
        Vendor::Vertex { gcp, openai: true } => {
            vertex::openai_path(base, &gcp.project, &gcp.location)
        }
        Vendor::OpenAi | Vendor::Anthropic { .. } => {
            let root = if base.is_empty() { "/v1" } else { base };
            format!("{root}{}", endpoint.subpath())
        }
    }
}

/// Build the request header sent to one endpoint of `provider` for a body of `body_len` bytes.
pub fn build_request(
    provider: &Provider,
    upstream: &ProviderEndpoint,
    endpoint: Endpoint,
    model_id: &str,
    stream: bool,
    client: &RequestHeader,
    body_len: usize,
) -> Result<RequestHeader> {
    let path = upstream_path(provider, endpoint, model_id, stream);
    // The headers are set on `http`'s parts and handed to Pingora once: its `append_header`
    // re-parses every name and keeps a second, case-preserving map (callgrind: half of this
    // function's cost). Names go to the provider lower-case, as over HTTP/2.
    let n = client.headers.len() + 6;
    let mut req: RequestParts =
        RequestHeader::build_no_case("POST", path.as_bytes(), Some(n))?.into();
    let h = &mut req.headers;
    for (name, value) in client.headers.iter() {
        if !is_dropped(name.as_str()) {
            h.append(name.clone(), value.clone());
        }
    }
    h.insert(HOST, header_value(upstream.base.host_header())?);
    h.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    if !h.contains_key(CONTENT_TYPE) {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // Identity so usage accounting can read the response; LLM answers are small next to the
    // time they take to generate.
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    for (name, value) in &provider.extra_headers {
        h.insert(name.clone(), value.clone());
    }
    let mut req = RequestHeader::from(req);
    authorize(provider, upstream, &mut req)?;
    Ok(req)
}

fn authorize(
    provider: &Provider,
    upstream: &ProviderEndpoint,
    req: &mut RequestHeader,
) -> Result<()> {
    let key = upstream.key.as_ref();
    match &provider.vendor {
        Vendor::OpenAi => openai::authorize(key, req),
        Vendor::Anthropic { version } => anthropic::authorize(version, key, req),
        Vendor::Azure { .. } => azure::authorize(key, req),
        // Signed over the final body by the caller (`bedrock::sign`).
        Vendor::Bedrock { .. } => Ok(()),
        // The caller adds the current access token (`serve::credentials`).
        Vendor::Vertex { .. } => Ok(()),
    }
}

/// What a probe asks for: `probe.path` when configured, else the family's model listing under
/// the provider's API root (cheap, authenticated, no tokens spent).
pub fn probe_path(provider: &Provider) -> String {
    if let Some(p) = &provider.probe.path {
        return p.clone();
    }
    let base = &provider.base.path;
    match &provider.vendor {
        Vendor::OpenAi => openai::listing_path(base),
        Vendor::Anthropic { .. } => anthropic::listing_path(base),
        Vendor::Azure { api_version } => azure::listing_path(base, api_version),
        // Bedrock Runtime has no free listing: its probe is off by default (passive health
        // only); an operator who enables it names a path.
        Vendor::Bedrock { .. } | Vendor::Vertex { .. } => format!("{base}/"),
    }
}

/// Headers for a probe (`GET probe_path`) of one endpoint, with its credentials.
pub fn build_probe(provider: &Provider, upstream: &ProviderEndpoint) -> Result<RequestHeader> {
    let mut req = RequestHeader::build("GET", probe_path(provider).as_bytes(), Some(4))?;
    req.insert_header(http::header::HOST, upstream.base.host_header())?;
    req.insert_header(http::header::ACCEPT, "application/json")?;
    authorize(provider, upstream, &mut req)?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credential_headers_are_known_by_name() {
        for h in [
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "x-amz-security-token",
            "x-my-secret",
        ] {
            assert!(super::carries_credential(h), "{h}");
        }
        for h in ["anthropic-version", "openai-beta", "x-region"] {
            assert!(!super::carries_credential(h), "{h}");
        }
    }

    use super::*;
    use crate::config::parse;
    use std::collections::BTreeMap;

    fn cfg() -> crate::model::Config {
        let env: BTreeMap<String, String> = [("K".to_string(), "sk-secret".to_string())]
            .into_iter()
            .collect();
        parse(
            r#"
providers:
  - {name: tog, api: openai, base_url: "https://api.together.xyz", api_key_env: K}
  - {name: groq, api: openai, base_url: "https://api.groq.com/openai/v1", api_key_env: K}
  - {name: ant, api: anthropic, base_url: "https://api.anthropic.com", api_key_env: K}
  - {name: az, api: azure, base_url: "https://res.openai.azure.com", api_key_env: K, api_version: "2024-10-21"}
models:
  - name: m
    offerings: [{provider: tog, model: x}]
"#,
            &env,
        )
        .unwrap()
    }

    fn client() -> RequestHeader {
        let mut c = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        c.insert_header("authorization", "Bearer client-key")
            .unwrap();
        c.insert_header("x-api-key", "client-key").unwrap();
        c.insert_header("x-twinroute-provider", "tog").unwrap();
        c.insert_header("connection", "keep-alive").unwrap();
        c.insert_header("content-length", "999").unwrap();
        c.insert_header("user-agent", "OpenAI/Python 1.0").unwrap();
        c.insert_header("anthropic-beta", "tools-2024").unwrap();
        c
    }

    #[test]
    fn paths_per_provider_kind() {
        let c = cfg();
        assert_eq!(
            upstream_path(&c.providers[0], Endpoint::ChatCompletions, "x", false),
            "/v1/chat/completions"
        );
        assert_eq!(
            upstream_path(&c.providers[1], Endpoint::Embeddings, "x", false),
            "/openai/v1/embeddings"
        );
        assert_eq!(
            upstream_path(&c.providers[2], Endpoint::Messages, "x", false),
            "/v1/messages"
        );
        assert_eq!(
            upstream_path(
                &c.providers[3],
                Endpoint::ChatCompletions,
                "gpt4o-prod",
                false
            ),
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn openai_key_injection_and_header_hygiene() {
        let c = cfg();
        let r = build_request(
            &c.providers[0],
            &c.providers[0].endpoints[0],
            Endpoint::ChatCompletions,
            "x",
            false,
            &client(),
            42,
        )
        .unwrap();
        assert_eq!(r.headers["authorization"], "Bearer sk-secret");
        assert!(r.headers.get("x-api-key").is_none());
        assert!(r.headers.get("x-twinroute-provider").is_none());
        assert!(r.headers.get("connection").is_none());
        assert_eq!(r.headers["content-length"], "42");
        assert_eq!(r.headers["host"], "api.together.xyz");
        assert_eq!(r.headers["user-agent"], "OpenAI/Python 1.0");
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    }

    #[test]
    fn anthropic_and_azure_auth() {
        let c = cfg();
        let r = build_request(
            &c.providers[2],
            &c.providers[2].endpoints[0],
            Endpoint::Messages,
            "x",
            false,
            &client(),
            1,
        )
        .unwrap();
        assert_eq!(r.headers["x-api-key"], "sk-secret");
        assert_eq!(r.headers["anthropic-version"], "2023-06-01");
        assert_eq!(r.headers["anthropic-beta"], "tools-2024");
        assert!(r.headers.get("authorization").is_none());
        let r = build_request(
            &c.providers[3],
            &c.providers[3].endpoints[0],
            Endpoint::ChatCompletions,
            "dep",
            false,
            &client(),
            1,
        )
        .unwrap();
        assert_eq!(r.headers["api-key"], "sk-secret");
        assert!(r.headers.get("authorization").is_none());
    }
}
