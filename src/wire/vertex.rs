//! Google Vertex AI, Anthropic publisher models: `rawPredict` and `streamRawPredict`.
//!
//! - Path: `/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:rawPredict`
//!   (`:streamRawPredict` for a stream), on `https://{location}-aiplatform.googleapis.com` or,
//!   for `global`, `https://aiplatform.googleapis.com`.
//! - Body: the Anthropic Messages body without `model`, with `anthropic_version:
//!   vertex-2023-10-16` (`stream` stays); answers are Anthropic's JSON and SSE as they are.
//! - Auth: `Authorization: Bearer` with an OAuth2 access token for the cloud-platform scope,
//!   from a service-account key (an RS256-signed JWT exchanged at the key's `token_uri`, the
//!   JWT bearer grant of RFC 7523) or the metadata server (GKE Workload Identity). Tokens are
//!   minted and refreshed by `serve::credentials`, off the request path.

use crate::model::GcpCredentials;
use base64::Engine;
use serde_json::{json, Value};

/// The Messages API version Vertex's Anthropic models take in the body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// The OAuth2 scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'@');

/// The rawPredict path for `model` (`claude-sonnet-4-5@20250929`).
pub fn path(base_path: &str, project: &str, location: &str, model: &str, stream: bool) -> String {
    let model = percent_encoding::utf8_percent_encode(model, SEGMENT);
    let op = if stream {
        "streamRawPredict"
    } else {
        "rawPredict"
    };
    format!("{base_path}/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:{op}")
}

/// The OpenAI-compatible chat completions path (Gemini: model `google/gemini-2.5-flash`).
pub fn openai_path(base_path: &str, project: &str, location: &str) -> String {
    format!(
        "{base_path}/v1/projects/{project}/locations/{location}/endpoints/openapi/chat/completions"
    )
}

/// An Anthropic Messages body as Vertex's rawPredict body.
pub fn envelope(messages_body: &Value) -> Vec<u8> {
    let mut map = messages_body.as_object().cloned().unwrap_or_default();
    map.remove("model");
    map.insert("anthropic_version".into(), json!(ANTHROPIC_VERSION));
    Value::Object(map).to_string().into_bytes()
}

/// Why a token could not be had.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenError(pub String);

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The DER of a PKCS#8 PEM private key.
fn pem_der(pem: &str) -> Result<Vec<u8>, TokenError> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| TokenError(format!("private_key is not PEM: {e}")))
}

/// The signed JWT assertion for the JWT bearer grant (RS256, signed by ring), valid an hour
/// from `now_s` (seconds since the epoch).
pub fn assertion(
    client_email: &str,
    private_key_id: Option<&str>,
    private_key_pem: &str,
    token_uri: &str,
    now_s: u64,
) -> Result<String, TokenError> {
    let mut header = json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = private_key_id {
        header["kid"] = json!(kid);
    }
    let claims = json!({
        "iss": client_email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": now_s,
        "exp": now_s + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = ring::signature::RsaKeyPair::from_pkcs8(&pem_der(private_key_pem)?)
        .map_err(|e| TokenError(format!("private_key is not an RSA PKCS#8 key: {e}")))?;
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| TokenError("RS256 signing failed".into()))?;
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}

/// One token request: what to send where.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    pub method: &'static str,
    pub url: String,
    /// The form body (the JWT bearer grant); `None` for the metadata server's GET.
    pub body: Option<String>,
    pub headers: Vec<(&'static str, &'static str)>,
}

/// The token request for a credential source.
pub fn token_request(creds: &GcpCredentials, now_s: u64) -> Result<TokenRequest, TokenError> {
    match creds {
        GcpCredentials::ServiceAccount {
            client_email,
            private_key_id,
            private_key,
            token_uri,
        } => {
            let jwt = assertion(
                client_email,
                private_key_id.as_deref(),
                private_key.expose(),
                token_uri,
                now_s,
            )?;
            let body = format!(
                "grant_type={}&assertion={jwt}",
                percent_encoding::utf8_percent_encode(
                    "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    percent_encoding::NON_ALPHANUMERIC
                )
            );
            Ok(TokenRequest {
                method: "POST",
                url: token_uri.clone(),
                body: Some(body),
                headers: vec![("content-type", "application/x-www-form-urlencoded")],
            })
        }
        GcpCredentials::MetadataServer { host } => Ok(TokenRequest {
            method: "GET",
            url: format!(
                "http://{host}/computeMetadata/v1/instance/service-accounts/default/token?scopes={}",
                percent_encoding::utf8_percent_encode(SCOPE, percent_encoding::NON_ALPHANUMERIC)
            ),
            body: None,
            headers: vec![("metadata-flavor", "Google")],
        }),
    }
}

/// `(access_token, expires_in seconds)` from a token endpoint's JSON answer.
pub fn parse_token(body: &[u8]) -> Result<(String, u64), TokenError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TokenError(format!("token answer is not JSON: {e}")))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            TokenError(format!(
                "token answer without access_token: {}",
                v.get("error_description")
                    .or_else(|| v.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ))
        })?;
    Ok((
        token.to_string(),
        v.get("expires_in").and_then(Value::as_u64).unwrap_or(3600),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_and_global_paths() {
        assert_eq!(
            path("", "my-proj", "us-east5", "claude-sonnet-4-5@20250929", false),
            "/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
        );
        assert_eq!(
            path("", "my-proj", "global", "claude-haiku-4-5@20251001", true),
            "/v1/projects/my-proj/locations/global/publishers/anthropic/models/claude-haiku-4-5@20251001:streamRawPredict"
        );
    }

    #[test]
    fn the_body_loses_model_and_gains_the_vertex_version() {
        let b = envelope(&json!({"model": "m", "stream": true, "max_tokens": 5, "messages": []}));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"stream": true, "max_tokens": 5, "messages": [], "anthropic_version": "vertex-2023-10-16"})
        );
    }

    #[test]
    fn token_answers() {
        assert_eq!(
            parse_token(br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#),
            Ok(("ya29.x".into(), 3599))
        );
        let e = parse_token(
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("Invalid JWT Signature"));
    }
}
