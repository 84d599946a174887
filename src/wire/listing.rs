//! Model listings (`GET /v1/models`) as providers return them: which model IDs a listing names.

use crate::model::endpoint::Family;
use serde_json::{json, Value};
use std::collections::HashSet;

/// twinroute's own `GET /v1/models`: the names a client may send (canonical names and aliases),
/// in the family's list shape, so an SDK's `models.list()` works against the proxy.
pub fn catalog_listing(family: Family, names: &[&str]) -> Vec<u8> {
    let v = match family {
        Family::OpenAi => json!({
            "object": "list",
            "data": names.iter().map(|n| model_entry(family, n)).collect::<Vec<_>>(),
        }),
        Family::Anthropic => json!({
            "data": names.iter().map(|n| model_entry(family, n)).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        }),
    };
    v.to_string().into_bytes()
}

/// One entry of that listing (also `GET /v1/models/{id}`).
pub fn model_entry(family: Family, name: &str) -> Value {
    match family {
        Family::OpenAi => {
            json!({"id": name, "object": "model", "created": 0, "owned_by": "twinroute"})
        }
        Family::Anthropic => {
            json!({"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"})
        }
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
