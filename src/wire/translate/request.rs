//! Request bodies: OpenAI chat completions ↔ Anthropic Messages.
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages | `system` (joined with blank lines, in order) |
//! | `user` content: text, `image_url` (data: URL or https) | `text`, `image` (base64 or url source) |
//! | `assistant` content + `tool_calls` (arguments a JSON string) | `text` + `tool_use` blocks (input an object), ids kept |
//! | `tool` messages (`tool_call_id`) | `tool_result` blocks in a user turn (`tool_use_id`) |
//! | `tools[].function` {name, description, parameters} | `tools[]` {name, description, input_schema} |
//! | `tool_choice` auto / none / required / {function} | {type: auto / none / any / tool} |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use: true` |
//! | `max_completion_tokens` or `max_tokens` | `max_tokens` (required: the provider's `default_max_tokens` when absent) |
//! | `stop` (string or list) | `stop_sequences` |
//! | `temperature` (≤ 1), `top_p`, `stream` | the same |
//! | `user` | `metadata.user_id` |
//! | `stream_options.include_usage` | (usage is always in the stream; honoured on the way back) |
//!
//! Everything else is refused by `*_untranslatable` rather than dropped.

use super::{openai_assistant, tool_use_blocks, TranslateError};
use serde_json::{json, Map, Value};

/// Top-level chat-completions parameters a Messages provider can honour (`n` only as 1,
/// `response_format` only as text).
const OPENAI_CARRIED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "response_format",
    "n",
];

/// Top-level Messages parameters a chat-completions provider can honour (`metadata` only with
/// `user_id`).
const ANTHROPIC_CARRIED: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
];

fn push_unique(out: &mut Vec<String>, what: impl Into<String>) {
    let what = what.into();
    if !out.contains(&what) {
        out.push(what);
    }
}

/// What of an OpenAI chat-completions body an Anthropic provider cannot honour.
pub fn openai_untranslatable(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(obj) = body.as_object() else {
        return out;
    };
    for (k, v) in obj {
        if !OPENAI_CARRIED.contains(&k.as_str()) && !v.is_null() {
            push_unique(&mut out, k.as_str());
        }
    }
    if obj
        .get("n")
        .is_some_and(|n| n.as_u64() != Some(1) && !n.is_null())
    {
        push_unique(&mut out, "n");
    }
    if let Some(rf) = obj.get("response_format").filter(|v| !v.is_null()) {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            push_unique(&mut out, "response_format");
        }
    }
    if obj
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t > 1.0)
    {
        // Anthropic's range is 0 to 1: a higher value would be an error or a different answer.
        push_unique(&mut out, "temperature");
    }
    for m in obj
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer" | "user" | "assistant" | "tool") => {}
            Some(other) => push_unique(&mut out, format!("{other} messages")),
            None => {}
        }
        if m.get("audio").is_some_and(|a| !a.is_null()) {
            push_unique(&mut out, "audio");
        }
        for part in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match part.get("type").and_then(Value::as_str) {
                Some("text" | "image_url" | "refusal") => {}
                Some("input_audio") => push_unique(&mut out, "audio input"),
                Some(other) => push_unique(&mut out, format!("{other} content part")),
                None => {}
            }
        }
    }
    for t in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            push_unique(&mut out, "non-function tools");
        }
    }
    if let Some(tc) = obj.get("tool_choice").and_then(Value::as_object) {
        if tc.get("type").and_then(Value::as_str) != Some("function") {
            push_unique(&mut out, "tool_choice");
        }
    }
    out
}

/// What of an Anthropic Messages body an OpenAI-format provider cannot honour.
pub fn anthropic_untranslatable(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(obj) = body.as_object() else {
        return out;
    };
    for (k, v) in obj {
        if !ANTHROPIC_CARRIED.contains(&k.as_str()) && !v.is_null() {
            push_unique(&mut out, k.as_str());
        }
    }
    if let Some(meta) = obj.get("metadata").and_then(Value::as_object) {
        if meta.keys().any(|k| k != "user_id") {
            push_unique(&mut out, "metadata");
        }
    }
    let blocks = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(Value::as_array).cloned().unwrap_or_default()
    };
    for b in blocks(obj.get("system")) {
        if b.get("type").and_then(Value::as_str) != Some("text") {
            push_unique(&mut out, "non-text system block");
        }
    }
    for m in obj
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for b in blocks(m.get("content")) {
            match b.get("type").and_then(Value::as_str) {
                Some("text" | "tool_use") => {}
                Some("image") => {
                    let src = b.pointer("/source/type").and_then(Value::as_str);
                    if !matches!(src, Some("base64" | "url")) {
                        push_unique(&mut out, "image source other than base64 or url");
                    }
                }
                Some("tool_result") => {
                    for inner in blocks(b.get("content")) {
                        if inner.get("type").and_then(Value::as_str) != Some("text") {
                            push_unique(&mut out, "non-text tool_result content");
                        }
                    }
                }
                Some("thinking" | "redacted_thinking") => {
                    push_unique(&mut out, "thinking content block")
                }
                Some(other) => push_unique(&mut out, format!("{other} content block")),
                None => {}
            }
        }
    }
    for t in blocks(obj.get("tools")) {
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => push_unique(&mut out, format!("server tool {other}")),
        }
    }
    if let Some(tc) = obj.get("tool_choice") {
        if !matches!(
            tc.get("type").and_then(Value::as_str),
            Some("auto" | "any" | "tool" | "none")
        ) {
            push_unique(&mut out, "tool_choice");
        }
    }
    out
}

/// The text of an OpenAI message content: a string, or the text (and refusal) parts joined.
fn openai_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").or_else(|| p.get("refusal")))
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn bad(what: impl Into<String>) -> TranslateError {
    TranslateError(what.into())
}

/// One OpenAI image part as an Anthropic image block.
fn image_block(part: &Value) -> Result<Value, TranslateError> {
    let url = part
        .pointer("/image_url/url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("image_url part without image_url.url"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| bad("image data URL is not base64"))?;
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// Append `content` (a string or blocks) as a turn of `role`, merging with the previous turn
/// of the same role (Anthropic alternates user and assistant; tool results ride in user turns).
fn push_turn(out: &mut Vec<Value>, role: &str, content: Value) {
    let as_blocks = |c: Value| match c {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    if content.as_array().is_some_and(|a| a.is_empty()) {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last["role"] == role {
            let mut merged = as_blocks(last["content"].take());
            merged.extend(as_blocks(content));
            last["content"] = Value::Array(merged);
            return;
        }
    }
    out.push(json!({"role": role, "content": content}));
}

/// An OpenAI chat-completions body as an Anthropic Messages body for `model_id`.
pub fn openai_to_anthropic(
    body: &Value,
    model_id: &str,
    default_max_tokens: u64,
) -> Result<Value, TranslateError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("body is not an object"))?;
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages is not an array"))?
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        match role {
            "system" | "developer" => system.push(openai_text(m.get("content"))),
            "user" => {
                let content = match m.get("content") {
                    Some(Value::String(s)) => json!(s),
                    Some(Value::Array(parts)) => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p.get("type").and_then(Value::as_str) {
                                Some("image_url") => image_block(p),
                                _ => Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()})),
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                    _ => Value::Array(Vec::new()),
                };
                push_turn(&mut messages, "user", content);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                let text = openai_text(m.get("content"));
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                blocks.extend(tool_use_blocks(m.get("tool_calls"))?);
                push_turn(&mut messages, "assistant", Value::Array(blocks));
            }
            "tool" => {
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": openai_text(m.get("content")),
                });
                push_turn(&mut messages, "user", json!([block]));
            }
            other => return Err(bad(format!("message role {other:?}"))),
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model_id));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default_max_tokens);
    out.insert("max_tokens".into(), json!(max_tokens));
    for k in ["temperature", "top_p", "stream"] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    match obj.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(user) = obj.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut tool = Map::new();
                tool.insert("name".into(), f["name"].clone());
                if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
                    tool.insert("description".into(), d.clone());
                }
                tool.insert(
                    "input_schema".into(),
                    f.get("parameters")
                        .filter(|p| !p.is_null())
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                Value::Object(tool)
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match obj.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            _ => Some(json!({"type": "auto"})),
        },
        Some(Value::Object(o)) => Some(
            json!({"type": "tool", "name": o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null)}),
        ),
        _ => None,
    };
    if obj.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    Ok(Value::Object(out))
}

/// An Anthropic system prompt (string or text blocks) as one string.
fn anthropic_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n\n"),
        _ => String::new(),
    }
}

/// An Anthropic image block as an OpenAI image part.
fn image_part(block: &Value) -> Value {
    let src = &block["source"];
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            src["media_type"].as_str().unwrap_or("image/png"),
            src["data"].as_str().unwrap_or_default()
        ),
        _ => src["url"].as_str().unwrap_or_default().to_string(),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// An Anthropic Messages body as an OpenAI chat-completions body for `model_id`.
pub fn anthropic_to_openai(body: &Value, model_id: &str) -> Result<Value, TranslateError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("body is not an object"))?;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(sys) = obj.get("system").filter(|s| !s.is_null()) {
        messages.push(json!({"role": "system", "content": anthropic_text(Some(sys))}));
    }
    for m in obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages is not an array"))?
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content");
        match (role, content) {
            ("user" | "assistant", Some(Value::String(s))) => {
                messages.push(json!({"role": role, "content": s}));
            }
            ("user", Some(Value::Array(blocks))) => {
                let mut parts = Vec::new();
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        // Tool results answer the assistant's calls: they come first, as
                        // `tool` messages, before anything else the user turn says.
                        Some("tool_result") => messages.push(json!({
                            "role": "tool",
                            "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                            "content": anthropic_text(b.get("content")),
                        })),
                        Some("image") => parts.push(image_part(b)),
                        _ => parts.push(json!({"type": "text", "text": b.get("text").and_then(Value::as_str).unwrap_or_default()})),
                    }
                }
                if !parts.is_empty() {
                    messages.push(json!({"role": "user", "content": parts}));
                }
            }
            ("assistant", Some(Value::Array(blocks))) => {
                messages.push(Value::Object(openai_assistant(blocks)));
            }
            (other, _) => return Err(bad(format!("message role {other:?} without content"))),
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model_id));
    out.insert("messages".into(), Value::Array(messages));
    for k in ["max_tokens", "temperature", "top_p", "stream"] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if obj.get("stream") == Some(&Value::Bool(true)) {
        // The Anthropic stream reports usage in message_delta: ask for it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(stop) = obj.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), stop.clone());
    }
    if let Some(user) = body.pointer("/metadata/user_id").filter(|v| !v.is_null()) {
        out.insert("user".into(), user.clone());
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), t["name"].clone());
                if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                    f.insert("description".into(), d.clone());
                }
                f.insert(
                    "parameters".into(),
                    t.get("input_schema").cloned().unwrap_or(json!({})),
                );
                json!({"type": "function", "function": Value::Object(f)})
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = obj.get("tool_choice").and_then(Value::as_object) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => json!("auto"),
        };
        out.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::tests::fixture;

    #[test]
    fn openai_request_with_tools_and_results_becomes_anthropic() {
        let got =
            openai_to_anthropic(&fixture("openai_request_tools.json"), "claude-x", 4096).unwrap();
        assert_eq!(got, fixture("anthropic_request_tools.json"));
    }

    #[test]
    fn anthropic_request_with_tools_and_results_becomes_openai() {
        // The way back gives the client's request again (with the served model ID).
        let got = anthropic_to_openai(&fixture("anthropic_request_tools.json"), "gpt-x").unwrap();
        assert_eq!(got, fixture("openai_request_tools_canonical.json"));
    }

    #[test]
    fn images_both_ways() {
        let openai = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
        ]}]});
        let a = openai_to_anthropic(&openai, "c", 100).unwrap();
        assert_eq!(
            a["messages"][0]["content"][1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
        );
        assert_eq!(
            a["messages"][0]["content"][2]["source"],
            json!({"type": "url", "url": "https://example.com/cat.jpg"})
        );
        let back = anthropic_to_openai(&a, "m").unwrap();
        assert_eq!(back["messages"], openai["messages"]);
    }

    #[test]
    fn max_tokens_default_and_stop_string() {
        let b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "END", "max_completion_tokens": 77});
        let a = openai_to_anthropic(&b, "c", 4096).unwrap();
        assert_eq!(a["max_tokens"], 77);
        assert_eq!(a["stop_sequences"], json!(["END"]));
        let b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            openai_to_anthropic(&b, "c", 4096).unwrap()["max_tokens"],
            4096
        );
    }

    #[test]
    fn untranslatable_features_are_named() {
        let b = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
                       "n": 2, "logprobs": true, "seed": 7, "response_format": {"type": "json_schema"}, "temperature": 1.5});
        let got = openai_untranslatable(&b);
        for f in [
            "n",
            "logprobs",
            "seed",
            "response_format",
            "temperature",
            "audio input",
        ] {
            assert!(got.contains(&f.to_string()), "{f} missing from {got:?}");
        }
        let fine = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1, "response_format": {"type": "text"}, "temperature": 0.5});
        assert!(openai_untranslatable(&fine).is_empty());
        let b = json!({"model": "m", "max_tokens": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 5,
                       "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
                       "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        let got = anthropic_untranslatable(&b);
        for f in [
            "thinking",
            "top_k",
            "document content block",
            "server tool web_search_20250305",
        ] {
            assert!(got.contains(&f.to_string()), "{f} missing from {got:?}");
        }
        assert!(anthropic_untranslatable(&fixture("anthropic_request_tools.json")).is_empty());
        assert!(openai_untranslatable(&fixture("openai_request_tools.json")).is_empty());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 .,!?'\"\\\\é中]{1,24}"
    }

    fn args() -> impl Strategy<Value = String> {
        proptest::collection::btree_map("[a-z]{1,6}", text(), 0..3)
            .prop_map(|m| serde_json::to_string(&m).unwrap())
    }

    /// One exchange after the user's first turn: an assistant answer in text, or tool calls
    /// followed by their results.
    fn exchange() -> impl Strategy<Value = Vec<Value>> {
        prop_oneof![
            (text(), text()).prop_map(|(a, u)| vec![
                json!({"role": "assistant", "content": a}),
                json!({"role": "user", "content": u}),
            ]),
            proptest::collection::vec(("[a-z_]{1,8}", args(), text()), 1..3).prop_map(|calls| {
                let mut msgs = vec![json!({"role": "assistant", "content": null, "tool_calls": calls
                    .iter()
                    .enumerate()
                    .map(|(i, (name, a, _))| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": a}}))
                    .collect::<Vec<_>>()})];
                for (i, (_, _, result)) in calls.iter().enumerate() {
                    msgs.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": result}));
                }
                msgs
            }),
        ]
    }

    /// Chat requests inside the translatable subset, in the canonical form the way back gives
    /// (one leading system message, stop as a list, tool_choice given when parallel calls are
    /// turned off).
    fn request() -> impl Strategy<Value = Value> {
        (
            proptest::option::of(text()),
            text(),
            proptest::collection::vec(exchange(), 0..3),
            proptest::option::of(1u64..8192),
            proptest::option::of(0.0f64..=1.0),
            proptest::option::of(0.0f64..=1.0),
            proptest::option::of(proptest::collection::vec(text(), 1..3)),
            proptest::option::of(text()),
            proptest::collection::vec(("[a-z_]{1,8}", proptest::option::of(text())), 0..3),
            (0usize..4, any::<bool>()),
        )
            .prop_map(
                |(system, first, exchanges, max, temp, top_p, stop, user, tools, (choice, parallel_off))| {
                    let mut messages = Vec::new();
                    if let Some(s) = system {
                        messages.push(json!({"role": "system", "content": s}));
                    }
                    messages.push(json!({"role": "user", "content": first}));
                    for e in exchanges {
                        messages.extend(e);
                    }
                    let mut b = json!({"model": "gpt-x", "messages": messages});
                    let o = b.as_object_mut().unwrap();
                    if let Some(m) = max {
                        o.insert("max_tokens".into(), json!(m));
                    }
                    if let Some(t) = temp {
                        o.insert("temperature".into(), json!(t));
                    }
                    if let Some(t) = top_p {
                        o.insert("top_p".into(), json!(t));
                    }
                    if let Some(s) = stop {
                        o.insert("stop".into(), json!(s));
                    }
                    if let Some(u) = user {
                        o.insert("user".into(), json!(u));
                    }
                    if !tools.is_empty() {
                        let defs: Vec<Value> = tools
                            .iter()
                            .map(|(name, desc)| {
                                let mut f = json!({"name": name, "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}});
                                if let Some(d) = desc {
                                    f["description"] = json!(d);
                                }
                                json!({"type": "function", "function": f})
                            })
                            .collect();
                        o.insert("tools".into(), Value::Array(defs));
                        let c = match choice {
                            0 => json!("auto"),
                            1 => json!("none"),
                            2 => json!("required"),
                            _ => json!({"type": "function", "function": {"name": tools[0].0}}),
                        };
                        o.insert("tool_choice".into(), c);
                        if parallel_off {
                            o.insert("parallel_tool_calls".into(), json!(false));
                        }
                    }
                    b
                },
            )
    }

    proptest! {
        #[test]
        fn openai_to_anthropic_and_back_keeps_the_request(req in request()) {
            prop_assert!(openai_untranslatable(&req).is_empty(), "{:?}", openai_untranslatable(&req));
            let a = openai_to_anthropic(&req, "claude-x", 4096).unwrap();
            prop_assert!(anthropic_untranslatable(&a).is_empty(), "{:?}", anthropic_untranslatable(&a));
            let mut back = anthropic_to_openai(&a, "gpt-x").unwrap();
            let mut want = req.clone();
            // Anthropic requires max_tokens: the default stands in when the client sent none.
            if want.get("max_tokens").is_none() {
                want["max_tokens"] = json!(4096);
            }
            // Floats go through JSON unchanged; compare the rest exactly.
            back.as_object_mut().unwrap().remove("stream_options");
            prop_assert_eq!(back, want);
        }
    }
}
