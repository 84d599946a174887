//! What one upstream stream event means to the relay: whether it is content (the commit point
//! of a stream), the end, an error, or only preamble (`message_start`, a role-only chunk, a
//! ping); and, for a stream that may have to be continued elsewhere, the text it carries and
//! whether it is inside a tool call or a thinking block.
//!
//! Pure: events in, a classification out. The upstream's stream family decides the shapes:
//! OpenAI `chat.completion.chunk`s (OpenAI, Azure, Vertex's OpenAI surface) or Anthropic
//! Messages events (Anthropic, Vertex rawPredict, Bedrock once its frames are decoded).

use crate::model::endpoint::Family;
use crate::wire::translate::stream::SseEvent;
use serde_json::Value;

/// What an upstream event is, for the commit point and stream recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Nothing the user sees yet: `message_start`, a role-only chunk, a ping, a block start.
    Preamble,
    /// A delta the user sees: text, a tool-call fragment, thinking. `text` is the visible text
    /// it adds (empty for tool calls and thinking); `inside` says what kind of block it is in.
    Content { text: String, inside: Block },
    /// The stream said it is done (`[DONE]`, `message_stop`, a finish reason, `message_delta`).
    End,
    /// The provider reported an error inside the stream (an error chunk or `event: error`).
    Error,
    /// The data is not JSON (and not `[DONE]`): nothing a client SDK could parse.
    Malformed,
}

/// The kind of block a content delta belongs to: only plain text can be continued by prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Text,
    ToolCall,
    Thinking,
}

/// Classify one event of an upstream stream of `family`'s shape.
pub fn classify(family: Family, ev: &SseEvent) -> EventKind {
    let data = ev.data.trim();
    if family == Family::OpenAi && data == "[DONE]" {
        return EventKind::End;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return EventKind::Malformed;
    };
    match family {
        Family::OpenAi => classify_openai(&v),
        Family::Anthropic => {
            let kind = ev
                .event
                .as_deref()
                .or_else(|| v.get("type").and_then(Value::as_str))
                .unwrap_or("");
            classify_anthropic(kind, &v)
        }
    }
}

fn non_empty_str(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn classify_openai(v: &Value) -> EventKind {
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return EventKind::Error;
    }
    let mut ended = false;
    for choice in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let delta = choice.get("delta");
        if let Some(text) = non_empty_str(delta.and_then(|d| d.get("content"))) {
            return EventKind::Content {
                text: text.to_string(),
                inside: Block::Text,
            };
        }
        if delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return EventKind::Content {
                text: String::new(),
                inside: Block::ToolCall,
            };
        }
        if non_empty_str(delta.and_then(|d| d.get("reasoning_content")))
            .or_else(|| non_empty_str(delta.and_then(|d| d.get("reasoning"))))
            .is_some()
        {
            return EventKind::Content {
                text: String::new(),
                inside: Block::Thinking,
            };
        }
        if non_empty_str(delta.and_then(|d| d.get("refusal"))).is_some() {
            return EventKind::Content {
                text: String::new(),
                inside: Block::Text,
            };
        }
        ended |= choice.get("finish_reason").is_some_and(|f| !f.is_null());
    }
    if ended {
        EventKind::End
    } else {
        EventKind::Preamble
    }
}

fn classify_anthropic(kind: &str, v: &Value) -> EventKind {
    match kind {
        "content_block_delta" => {
            let delta = v.get("delta");
            match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                Some("text_delta") => EventKind::Content {
                    text: non_empty_str(delta.and_then(|d| d.get("text")))
                        .unwrap_or("")
                        .to_string(),
                    inside: Block::Text,
                },
                Some("input_json_delta") => EventKind::Content {
                    text: String::new(),
                    inside: Block::ToolCall,
                },
                // thinking_delta, signature_delta, and whatever comes next: not plain text.
                _ => EventKind::Content {
                    text: String::new(),
                    inside: Block::Thinking,
                },
            }
        }
        "message_delta" | "message_stop" => EventKind::End,
        "error" => EventKind::Error,
        _ => EventKind::Preamble,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn text(t: &str) -> EventKind {
        EventKind::Content {
            text: t.to_string(),
            inside: Block::Text,
        }
    }

    #[test]
    fn openai_chunks() {
        let c = |d: &str| classify(Family::OpenAi, &ev(None, d));
        let role = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(c(role), EventKind::Preamble);
        assert_eq!(
            c(r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#),
            text("Hi")
        );
        assert_eq!(
            c(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}}]}"#
            ),
            EventKind::Content {
                text: String::new(),
                inside: Block::ToolCall
            }
        );
        assert_eq!(
            c(r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#),
            EventKind::Content {
                text: String::new(),
                inside: Block::Thinking
            }
        );
        assert_eq!(
            c(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            EventKind::End
        );
        assert_eq!(
            c(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#),
            EventKind::Preamble
        );
        assert_eq!(c("[DONE]"), EventKind::End);
        assert_eq!(c(r#"{"error":{"message":"overloaded"}}"#), EventKind::Error);
        assert_eq!(c("{not json"), EventKind::Malformed);
    }

    #[test]
    fn anthropic_events() {
        let c = |e: &str, d: &str| classify(Family::Anthropic, &ev(Some(e), d));
        assert_eq!(
            c(
                "message_start",
                r#"{"type":"message_start","message":{"id":"m"}}"#
            ),
            EventKind::Preamble
        );
        assert_eq!(c("ping", r#"{"type":"ping"}"#), EventKind::Preamble);
        assert_eq!(
            c(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
            ),
            EventKind::Preamble
        );
        assert_eq!(
            c(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#
            ),
            text("Hello")
        );
        assert_eq!(
            c(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#
            ),
            EventKind::Content {
                text: String::new(),
                inside: Block::ToolCall
            }
        );
        assert_eq!(
            c(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"x"}}"#
            ),
            EventKind::Content {
                text: String::new(),
                inside: Block::Thinking
            }
        );
        assert_eq!(
            c("message_stop", r#"{"type":"message_stop"}"#),
            EventKind::End
        );
        assert_eq!(
            c(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#
            ),
            EventKind::Error
        );
        // Bedrock's decoded frames carry no event name: the type field decides.
        assert_eq!(
            classify(
                Family::Anthropic,
                &ev(
                    None,
                    r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#
                )
            ),
            text("x")
        );
        assert_eq!(c("content_block_delta", "data"), EventKind::Malformed);
    }
}
