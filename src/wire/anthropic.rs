//! Anthropic Messages API: `x-api-key` plus `anthropic-version` (the client's own version header
//! is kept when it sent one: it chose the API semantics it parses).

use crate::model::{Provider, Secret};
use pingora::http::RequestHeader;
use pingora::Result;

/// The model listing; Anthropic pages it (20 by default), so the probe asks for all of it.
pub fn listing_path(base_path: &str) -> String {
    if base_path.is_empty() {
        "/v1/models?limit=1000".to_string()
    } else {
        format!("{base_path}/models?limit=1000")
    }
}

pub fn authorize(provider: &Provider, key: Option<&Secret>, req: &mut RequestHeader) -> Result<()> {
    if let Some(key) = key {
        req.insert_header("x-api-key", key.expose())?;
    }
    if !req.headers.contains_key("anthropic-version") {
        req.insert_header("anthropic-version", provider.anthropic_version.as_str())?;
    }
    Ok(())
}
