//! Whole answers and error bodies: OpenAI `chat.completion` ↔ Anthropic `message`.
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `choices[0].message.content` | `text` block |
//! | `choices[0].message.tool_calls` (arguments a JSON string) | `tool_use` blocks (input an object) |
//! | `finish_reason` stop / length / tool_calls / content_filter | `stop_reason` end_turn (or stop_sequence) / max_tokens / tool_use / refusal |
//! | `usage.prompt_tokens` (cached included), `completion_tokens`, `prompt_tokens_details.cached_tokens` | `usage.input_tokens` (uncached), `output_tokens`, `cache_read_input_tokens` (+ `cache_creation_input_tokens`) |
//! | `id`, `model` | `id`, `model` (the served model, as the provider named it) |

use super::{
    finish_reason, openai_assistant, stop_reason, tool_use_blocks, unix_now, Direction,
    TranslateError,
};
use serde_json::{json, Value};

/// The provider's answer body in the client's format.
pub fn response(dir: Direction, body: &[u8]) -> Result<Vec<u8>, TranslateError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError(format!("provider answer is not JSON: {e}")))?;
    let out = match dir {
        Direction::AnthropicToOpenAi => chat_completion_to_message(&v)?,
        Direction::OpenAiToAnthropic => message_to_chat_completion(&v)?,
    };
    Ok(out.to_string().into_bytes())
}

/// An OpenAI `chat.completion` as an Anthropic `message`.
pub fn chat_completion_to_message(v: &Value) -> Result<Value, TranslateError> {
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| TranslateError("chat completion without choices".into()))?;
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": text}));
    }
    content.extend(tool_use_blocks(msg.get("tool_calls"))?);
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    Ok(json!({
        "id": v.get("id").cloned().unwrap_or(json!("msg_twinroute")),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": anthropic_usage(v.get("usage")),
    }))
}

/// OpenAI usage as Anthropic's: `input_tokens` counts only uncached input there.
pub fn anthropic_usage(u: Option<&Value>) -> Value {
    let n = |p: &str| {
        u.and_then(|u| u.pointer(p))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = n("/prompt_tokens_details/cached_tokens");
    let mut out = json!({
        "input_tokens": n("/prompt_tokens").saturating_sub(cached),
        "output_tokens": n("/completion_tokens"),
    });
    if cached > 0 {
        out["cache_read_input_tokens"] = json!(cached);
    }
    out
}

/// Anthropic usage as OpenAI's: `prompt_tokens` includes cache reads and writes there.
pub fn openai_usage(u: Option<&Value>) -> Value {
    let n = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    let mut out = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if cached > 0 {
        out["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    out
}

/// An Anthropic `message` as an OpenAI `chat.completion`.
pub fn message_to_chat_completion(v: &Value) -> Result<Value, TranslateError> {
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError("message without content".into()))?;
    let mut message = openai_assistant(blocks);
    message.insert("refusal".into(), Value::Null);
    let stop = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    Ok(json!({
        "id": v.get("id").cloned().unwrap_or(json!("chatcmpl-twinroute")),
        "object": "chat.completion",
        "created": unix_now(),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish_reason(stop),
        }],
        "usage": openai_usage(v.get("usage")),
    }))
}

/// The message of a provider error body in either family's shape (or its text).
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

/// A provider's error answer re-shaped into the client's error JSON, the status kept (the SDKs
/// raise their typed exception from the status and this shape).
pub fn error(client: crate::model::endpoint::Family, status: u16, body: &[u8]) -> Vec<u8> {
    let message = error_message(body);
    let v = match client {
        crate::model::endpoint::Family::Anthropic => {
            let kind = match status {
                400 | 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 | 503 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        crate::model::endpoint::Family::OpenAi => {
            let kind = match status {
                400 | 404 | 413 | 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_error",
                _ => "server_error",
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
    };
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::tests::fixture;

    #[test]
    fn openai_tool_call_answer_becomes_an_anthropic_message() {
        let got = chat_completion_to_message(&fixture("openai_response_tools.json")).unwrap();
        assert_eq!(got, fixture("anthropic_response_tools.json"));
    }

    #[test]
    fn anthropic_tool_use_answer_becomes_a_chat_completion() {
        let mut got =
            message_to_chat_completion(&fixture("anthropic_response_tools.json")).unwrap();
        assert!(got["created"].as_u64().unwrap() > 1_700_000_000);
        got["created"] = json!(1_741_569_952u64);
        let mut want = fixture("openai_response_tools.json");
        // The way back has no system_fingerprint and a refusal field, as OpenAI sends it.
        want.as_object_mut().unwrap().remove("system_fingerprint");
        want["choices"][0]["message"]["refusal"] = Value::Null;
        want["choices"][0]["logprobs"] = Value::Null;
        assert_eq!(got, want);
    }

    #[test]
    fn text_answers_and_usage_with_cache() {
        let a = fixture("anthropic_response_text.json");
        let o = message_to_chat_completion(&a).unwrap();
        assert_eq!(
            o["choices"][0]["message"]["content"],
            "Hello! How can I help?"
        );
        assert_eq!(o["choices"][0]["finish_reason"], "stop");
        // input 10 + cache read 90 + cache write 5 = 105 prompt tokens, 90 of them cached.
        assert_eq!(o["usage"]["prompt_tokens"], 105);
        assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 90);
        assert_eq!(o["usage"]["completion_tokens"], 12);
        let back = chat_completion_to_message(&o).unwrap();
        assert_eq!(back["content"], a["content"]);
        assert_eq!(back["usage"]["cache_read_input_tokens"], 90);
        assert_eq!(back["stop_reason"], "end_turn");
    }

    #[test]
    fn errors_take_the_clients_shape_and_keep_the_message() {
        let anthropic_err = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        let v: Value = serde_json::from_slice(&error(
            Direction::OpenAiToAnthropic.client_family(),
            400,
            anthropic_err,
        ))
        .unwrap();
        assert_eq!(v["error"]["message"], "max_tokens: Field required");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let openai_err = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let v: Value = serde_json::from_slice(&error(
            Direction::AnthropicToOpenAi.client_family(),
            429,
            openai_err,
        ))
        .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "Rate limit reached");
        let v: Value = serde_json::from_slice(&error(
            Direction::AnthropicToOpenAi.client_family(),
            502,
            b"Bad Gateway",
        ))
        .unwrap();
        assert_eq!(v["error"]["message"], "Bad Gateway");
    }
}
