//! A whole answer and the stream that carries it, both ways, in each client family's shape: a
//! finished stream folded into the non-streaming answer it stands for, and an answer unfolded
//! into a well-formed stream. The prompt cache keeps one form and serves either.
//!
//! Text answers only: an answer with tool calls, thinking or a refusal is folded to `None`
//! (not kept from a stream), and unfolded only when it is plain text.

use crate::model::endpoint::Family;
use crate::wire::translate::stream::{SseEvent, SseParser};
use serde_json::{json, Value};

/// What an answer holds, for deciding whether it is worth keeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    /// Some text (or a tool call) came back: not an empty completion.
    pub non_empty: bool,
    pub tool_calls: bool,
    /// Plain text only, so it can be unfolded into a stream.
    pub text_only: bool,
}

/// What a non-streaming answer of `family` holds.
pub fn content(family: Family, answer: &Value) -> Content {
    match family {
        Family::OpenAi => {
            let message = &answer["choices"][0]["message"];
            let text = message["content"].as_str().unwrap_or("");
            let tools = message["tool_calls"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            let single = answer["choices"].as_array().is_some_and(|c| c.len() == 1);
            Content {
                non_empty: !text.is_empty() || tools,
                tool_calls: tools,
                text_only: single && !tools && message["refusal"].is_null(),
            }
        }
        Family::Anthropic => {
            let blocks: &[Value] = answer["content"].as_array().map_or(&[], Vec::as_slice);
            let text: usize = blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .map(str::len)
                .sum();
            let tools = blocks.iter().any(|b| b["type"] == "tool_use");
            Content {
                non_empty: text > 0 || tools,
                tool_calls: tools,
                text_only: blocks.iter().all(|b| b["type"] == "text"),
            }
        }
    }
}

/// Fold a complete client-format stream into the non-streaming answer it stands for. `None`
/// for a stream that did not finish, or that carried anything but text.
pub fn fold(family: Family, stream: &[u8]) -> Option<Value> {
    let mut parser = SseParser::default();
    let mut events: Vec<SseEvent> = Vec::new();
    parser.feed(stream, &mut events);
    match family {
        Family::OpenAi => fold_openai(&events),
        Family::Anthropic => fold_anthropic(&events),
    }
}

fn fold_openai(events: &[SseEvent]) -> Option<Value> {
    let (mut id, mut created, mut model) = (Value::Null, Value::Null, Value::Null);
    let (mut text, mut finish, mut usage, mut done) = (String::new(), Value::Null, None, false);
    for ev in events {
        if ev.data.trim() == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(&ev.data).ok()?;
        if v.get("error").is_some() {
            return None;
        }
        if id.is_null() {
            (id, created, model) = (v["id"].clone(), v["created"].clone(), v["model"].clone());
        }
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
        let choices: &[Value] = v["choices"].as_array().map_or(&[], Vec::as_slice);
        if choices.len() > 1 {
            return None;
        }
        for c in choices {
            let d = &c["delta"];
            if d.get("tool_calls").is_some_and(|t| !t.is_null())
                || d.get("refusal").is_some_and(|r| !r.is_null())
                || d.get("reasoning_content").is_some_and(|r| !r.is_null())
            {
                return None;
            }
            text.push_str(d["content"].as_str().unwrap_or(""));
            if !c["finish_reason"].is_null() {
                finish = c["finish_reason"].clone();
            }
        }
    }
    if !done {
        return None;
    }
    if finish.is_null() {
        // [DONE] ends the stream whole; a host that left out the finish reason stopped anyway.
        finish = json!("stop");
    }
    let mut out = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
    });
    if let Some(u) = usage {
        out["usage"] = u;
    }
    Some(out)
}

fn fold_anthropic(events: &[SseEvent]) -> Option<Value> {
    let mut message: Option<Value> = None;
    let mut blocks: Vec<String> = Vec::new();
    let mut done = false;
    for ev in events {
        let v: Value = serde_json::from_str(&ev.data).ok()?;
        match v["type"].as_str().or(ev.event.as_deref())? {
            "message_start" => message = Some(v["message"].clone()),
            "content_block_start" => {
                if v["content_block"]["type"] != "text" {
                    return None;
                }
                blocks.push(
                    v["content_block"]["text"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
            "content_block_delta" => {
                if v["delta"]["type"] != "text_delta" {
                    return None;
                }
                blocks
                    .last_mut()?
                    .push_str(v["delta"]["text"].as_str().unwrap_or(""));
            }
            "message_delta" => {
                let m = message.as_mut()?;
                m["stop_reason"] = v["delta"]["stop_reason"].clone();
                m["stop_sequence"] = v["delta"]["stop_sequence"].clone();
                if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                    m["usage"]["output_tokens"] = json!(n);
                }
            }
            "message_stop" => done = true,
            "error" => return None,
            _ => {}
        }
    }
    let mut m = message.filter(|_| done)?;
    m["content"] = Value::Array(
        blocks
            .into_iter()
            .map(|t| json!({"type": "text", "text": t}))
            .collect(),
    );
    Some(m)
}

/// Unfold a non-streaming text answer into the stream a client of `family` expects. `None`
/// when it is not plain text.
pub fn unfold(family: Family, answer: &Value) -> Option<Vec<u8>> {
    if !content(family, answer).text_only {
        return None;
    }
    let mut out = Vec::new();
    let mut push = |event: Option<&str>, v: &Value| {
        if let Some(e) = event {
            out.extend_from_slice(format!("event: {e}\n").as_bytes());
        }
        out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
    };
    match family {
        Family::OpenAi => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
                       "model": answer["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let message = &answer["choices"][0]["message"];
            push(
                None,
                &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            );
            push(
                None,
                &chunk(json!({"content": message["content"]}), Value::Null),
            );
            push(
                None,
                &chunk(json!({}), answer["choices"][0]["finish_reason"].clone()),
            );
            if !answer["usage"].is_null() {
                push(
                    None,
                    &json!({"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
                            "model": answer["model"], "choices": [], "usage": answer["usage"]}),
                );
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        Family::Anthropic => {
            let mut start = answer.clone();
            start["content"] = json!([]);
            start["stop_reason"] = Value::Null;
            start["stop_sequence"] = Value::Null;
            push(
                Some("message_start"),
                &json!({"type": "message_start", "message": start}),
            );
            for (i, b) in answer["content"].as_array()?.iter().enumerate() {
                push(
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                );
                push(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": b["text"]}}),
                );
                push(
                    Some("content_block_stop"),
                    &json!({"type": "content_block_stop", "index": i}),
                );
            }
            push(
                Some("message_delta"),
                &json!({"type": "message_delta", "delta": {"stop_reason": answer["stop_reason"], "stop_sequence": answer["stop_sequence"]},
                        "usage": {"output_tokens": answer["usage"]["output_tokens"]}}),
            );
            push(Some("message_stop"), &json!({"type": "message_stop"}));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_both_ways() {
        let answer = json!({"id": "c1", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        let stream = unfold(Family::OpenAi, &answer).unwrap();
        assert_eq!(fold(Family::OpenAi, &stream), Some(answer.clone()));
        // Cut before [DONE]: not an answer.
        let cut = &stream[..stream.len() - "data: [DONE]\n\n".len()];
        assert_eq!(fold(Family::OpenAi, cut), None);
        let c = content(Family::OpenAi, &answer);
        assert!(c.non_empty && c.text_only && !c.tool_calls);
        let empty = json!({"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]});
        assert!(!content(Family::OpenAi, &empty).non_empty);
    }

    #[test]
    fn anthropic_both_ways() {
        let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 4, "output_tokens": 2}});
        let stream = unfold(Family::Anthropic, &answer).unwrap();
        assert_eq!(fold(Family::Anthropic, &stream), Some(answer.clone()));
        let with_tool =
            json!({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]});
        assert_eq!(unfold(Family::Anthropic, &with_tool), None);
        assert!(content(Family::Anthropic, &with_tool).tool_calls);
    }
}
