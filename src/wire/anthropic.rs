//! Anthropic Messages API: `x-api-key` plus `anthropic-version` (the client's own version header
//! is kept when it sent one: it chose the API semantics it parses).

use crate::model::Secret;
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

/// Whether a Claude model continues a trailing assistant message (prefill). Claude 4.6 and
/// later answer 400 "This model does not support assistant message prefill" (Anthropic's
/// migration guide); earlier ones, and IDs that are not Claude's, are taken to accept it. Reads
/// first-party IDs (`claude-sonnet-4-5-20250929`, `claude-3-5-sonnet-20241022`) and the clouds'
/// (`us.anthropic.claude-opus-4-6-v1:0`, `claude-sonnet-4-5@20250929`).
pub fn accepts_prefill(model_id: &str) -> bool {
    let Some(at) = model_id.find("claude-") else {
        return true;
    };
    let rest = &model_id[at + "claude-".len()..];
    let mut parts = rest.split(['-', '@', '.', ':']);
    let Some(first) = parts.next() else {
        return true;
    };
    // Old naming puts the version first: claude-3-5-sonnet, claude-3-opus.
    let major = match first.parse::<u32>() {
        Ok(n) => n,
        Err(_) => match parts.next().and_then(|p| p.parse::<u32>().ok()) {
            Some(n) => n,
            None => return true,
        },
    };
    // A minor version is a short number; a date (20250929) or a revision (v1) is not one.
    let minor = parts
        .next()
        .filter(|p| p.len() <= 2)
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    (major, minor) < (4, 6)
}

/// The key as `x-api-key`, and `anthropic-version` (the provider's `anthropic_version`) unless
/// the client chose its own.
pub fn authorize(version: &str, key: Option<&Secret>, req: &mut RequestHeader) -> Result<()> {
    if let Some(key) = key {
        req.insert_header("x-api-key", key.expose())?;
    }
    if !req.headers.contains_key("anthropic-version") {
        req.insert_header("anthropic-version", version)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::accepts_prefill;

    #[test]
    fn claude_4_6_and_later_reject_prefill() {
        for id in [
            "claude-sonnet-4-5-20250929",
            "claude-haiku-4-5",
            "claude-3-5-sonnet-20241022",
            "claude-3-opus-20240229",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5@20250929",
            "claude-opus-4-1",
            "claude-sonnet-4-20250514",
            "some-other-model",
        ] {
            assert!(accepts_prefill(id), "{id}");
        }
        for id in [
            "claude-opus-4-6",
            "claude-sonnet-4-6",
            "us.anthropic.claude-opus-4-6-v1",
            "claude-sonnet-5",
            "claude-opus-5-5",
            "claude-sonnet-4-7-20260101",
        ] {
            assert!(!accepts_prefill(id), "{id}");
        }
    }
}
