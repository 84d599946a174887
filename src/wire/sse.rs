//! Server-sent events as each client family expects them: the error event twinroute ends a
//! broken stream with.

use crate::model::endpoint::Family;
use bytes::Bytes;

/// The last event of a stream that broke after its first byte, in the client's own shape: an
/// OpenAI `data: {"error":…}` chunk, or Anthropic's `event: error`. SDKs raise it as an API
/// error instead of returning a silently truncated answer.
pub fn stream_error_event(family: Family, provider: &str) -> Bytes {
    let msg = format!("upstream provider {provider} ended the stream unexpectedly");
    let text = match family {
        Family::OpenAi => format!(
            "data: {}\n\n",
            serde_json::json!({"error": {"message": msg, "type": "api_error", "code": "upstream_stream_broken"}})
        ),
        Family::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            serde_json::json!({"type": "error", "error": {"type": "api_error", "message": msg}})
        ),
    };
    Bytes::from(text)
}
