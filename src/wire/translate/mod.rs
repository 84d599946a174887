//! Translation between the OpenAI chat-completions and the Anthropic Messages wire formats, so
//! a candidate whose provider speaks the other format can still serve a request, and an
//! unmodified OpenAI or Anthropic SDK cannot tell.
//!
//! Pure functions over JSON values and SSE events: `request` (the client's body into the
//! provider's), `response` (a whole answer or an error back), `stream` (event by event, as it
//! arrives). Same-format traffic never comes here: it keeps the splice path.
//!
//! Nothing is dropped silently: `untranslatable` names every parameter or content block the
//! other format cannot carry (an unknown top-level key included), and routing skips offerings
//! that would need it carried. An operator who is fine losing one (say `seed`) lists it in the
//! offering's `drop_params`, which is applied before translation.

pub mod request;
pub mod response;
pub mod stream;

use crate::model::endpoint::{Endpoint, Family};
use crate::model::ApiKind;

/// Which way a request is translated: the client's family, then the provider's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// An OpenAI chat-completions client served by an Anthropic Messages provider.
    OpenAiToAnthropic,
    /// An Anthropic Messages client served by an OpenAI chat-completions provider.
    AnthropicToOpenAi,
}

impl Direction {
    /// The translation a client of `endpoint` needs toward a provider of `api`: `None` when
    /// the provider speaks the client's format, or when no translation exists (embeddings,
    /// the Responses API and legacy completions are served in their own format only).
    pub fn between(endpoint: Endpoint, api: ApiKind) -> Option<Direction> {
        if !endpoint.translated_to(api) {
            return None;
        }
        Some(match endpoint {
            Endpoint::Messages => Direction::AnthropicToOpenAi,
            _ => Direction::OpenAiToAnthropic,
        })
    }

    /// `client->provider`, as in `x-twinroute-translated`, the access line and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Direction::OpenAiToAnthropic => "openai->anthropic",
            Direction::AnthropicToOpenAi => "anthropic->openai",
        }
    }

    /// The endpoint the provider is called on.
    pub fn provider_endpoint(self) -> Endpoint {
        match self {
            Direction::OpenAiToAnthropic => Endpoint::Messages,
            Direction::AnthropicToOpenAi => Endpoint::ChatCompletions,
        }
    }

    /// The translation a client of `endpoint` would need toward a provider of the other format.
    pub fn from_client(endpoint: Endpoint) -> Option<Direction> {
        match endpoint {
            Endpoint::ChatCompletions => Some(Direction::OpenAiToAnthropic),
            Endpoint::Messages => Some(Direction::AnthropicToOpenAi),
            _ => None,
        }
    }

    pub fn client_family(self) -> Family {
        match self {
            Direction::OpenAiToAnthropic => Family::OpenAi,
            Direction::AnthropicToOpenAi => Family::Anthropic,
        }
    }
}

/// Why a body could not be translated (after `untranslatable` said it could: a body that is
/// not the shape its own API documents).
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateError(pub String);

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The features of a request body that a provider of the other format cannot honour: top-level
/// parameter names as sent (so `drop_params` can name them), and content features by a
/// descriptive name (`document content block`). Empty: translatable as it is.
pub fn untranslatable(dir: Direction, body: &serde_json::Value) -> Vec<String> {
    match dir {
        Direction::OpenAiToAnthropic => request::openai_untranslatable(body),
        Direction::AnthropicToOpenAi => request::anthropic_untranslatable(body),
    }
}

/// The provider's request body for one attempt, built from the client's parsed body: less the
/// offering's `drop_params`, translated when the families differ, with `model` set to the
/// offering's ID, and in the provider's envelope (Bedrock's).
pub fn provider_body(
    endpoint: Endpoint,
    provider: &crate::model::Provider,
    client: &serde_json::Value,
    model_id: &str,
    drop: &[&str],
) -> Result<Vec<u8>, TranslateError> {
    let trimmed;
    let body = if drop.is_empty() {
        client
    } else {
        let mut map = client.as_object().cloned().unwrap_or_default();
        for k in drop {
            map.remove(*k);
        }
        trimmed = serde_json::Value::Object(map);
        &trimmed
    };
    let out = match Direction::between(endpoint, provider.api()) {
        Some(Direction::OpenAiToAnthropic) => {
            request::openai_to_anthropic(body, model_id, provider.default_max_tokens)?
        }
        Some(Direction::AnthropicToOpenAi) => request::anthropic_to_openai(body, model_id)?,
        None => {
            let mut same = body.clone();
            same["model"] = serde_json::json!(model_id);
            same
        }
    };
    match provider.api() {
        ApiKind::Bedrock => return Ok(super::bedrock::envelope(&out)),
        ApiKind::Vertex => return Ok(super::vertex::envelope(&out)),
        _ => {}
    }
    serde_json::to_vec(&out).map_err(|e| TranslateError(e.to_string()))
}

/// Overwrite every string of a parsed body with zeros before it is freed (zero retention:
/// a translated request's parsed copy outlives nothing either).
pub fn wipe(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            let mut bytes = std::mem::take(s).into_bytes();
            bytes.fill(0);
            std::hint::black_box(&bytes);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(o) => o.values_mut().for_each(wipe),
        _ => {}
    }
}

/// Anthropic assistant content blocks as an OpenAI assistant message: the text blocks joined
/// into `content` (null when there is only tool use), `tool_use` blocks as `tool_calls` with
/// their input serialised to a JSON string. Shared by requests (history) and answers.
fn openai_assistant(blocks: &[serde_json::Value]) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{json, Value};
    let of_type = |t: &'static str| {
        blocks
            .iter()
            .filter(move |b| b.get("type").and_then(Value::as_str) == Some(t))
    };
    let text: String = of_type("text")
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let calls: Vec<Value> = of_type("tool_use")
        .map(|b| {
            let args = serde_json::to_string(b.get("input").unwrap_or(&json!({})))
                .unwrap_or_else(|_| "{}".into());
            json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": b.get("name").cloned().unwrap_or(Value::Null), "arguments": args},
            })
        })
        .collect();
    let mut msg = serde_json::Map::new();
    msg.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    msg.insert("content".into(), content);
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    msg
}

/// OpenAI `tool_calls` as Anthropic `tool_use` blocks (arguments parsed into an object; an
/// empty string is an empty object). Shared by requests (history) and answers.
fn tool_use_blocks(
    calls: Option<&serde_json::Value>,
) -> Result<Vec<serde_json::Value>, TranslateError> {
    use serde_json::{json, Value};
    let mut out = Vec::new();
    for call in calls.and_then(Value::as_array).into_iter().flatten() {
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        let input: Value = if args.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args)
                .map_err(|e| TranslateError(format!("tool call arguments are not JSON: {e}")))?
        };
        out.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    Ok(out)
}

/// The features of a request (either family) an offering may declare it `lacks`: images in any
/// message, and tool definitions.
pub fn features(body: &serde_json::Value) -> Vec<crate::model::catalog::Feature> {
    use crate::model::catalog::Feature;
    use serde_json::Value;
    let mut out = Vec::new();
    let images = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .any(|part| {
            matches!(
                part.get("type").and_then(Value::as_str),
                Some("image_url" | "image")
            )
        });
    if images {
        out.push(Feature::Images);
    }
    if body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
    {
        out.push(Feature::Tools);
    }
    out
}

/// Seconds since the epoch, for OpenAI's `created`.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// OpenAI `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn
        _ => "stop",
    }
}

/// Anthropic `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A golden fixture of tests/fixtures/translate, parsed.
    pub(crate) fn fixture(name: &str) -> serde_json::Value {
        let path = format!(
            "{}/tests/fixtures/translate/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn directions() {
        assert_eq!(
            Direction::between(Endpoint::ChatCompletions, ApiKind::Anthropic),
            Some(Direction::OpenAiToAnthropic)
        );
        assert_eq!(
            Direction::between(Endpoint::Messages, ApiKind::OpenAi),
            Some(Direction::AnthropicToOpenAi)
        );
        assert_eq!(
            Direction::between(Endpoint::Messages, ApiKind::Azure),
            Some(Direction::AnthropicToOpenAi)
        );
        assert_eq!(
            Direction::between(Endpoint::ChatCompletions, ApiKind::OpenAi),
            None
        );
        assert_eq!(
            Direction::between(Endpoint::Embeddings, ApiKind::Anthropic),
            None
        );
        assert_eq!(
            Direction::between(Endpoint::Responses, ApiKind::Anthropic),
            None
        );
        // Translation is only ever needed where the format is not spoken natively.
        use Endpoint::*;
        for e in [
            ChatCompletions,
            Completions,
            Embeddings,
            Responses,
            Messages,
        ] {
            for a in [ApiKind::OpenAi, ApiKind::Anthropic, ApiKind::Azure] {
                assert!(!(e.served_by(a) && e.translated_to(a)), "{e:?} {a:?}");
            }
        }
    }

    #[test]
    fn stop_reasons_both_ways() {
        for (a, o) in [
            ("end_turn", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(a), o);
            assert_eq!(stop_reason(o), a);
        }
        assert_eq!(finish_reason("stop_sequence"), "stop");
    }
}
