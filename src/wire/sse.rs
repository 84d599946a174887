//! Server-sent events as each client family expects them: the error event twinroute ends a
//! broken stream with.

use crate::model::endpoint::Dialect;
use bytes::Bytes;

/// The last event of a stream that broke after its first byte, in the client's own shape: an
/// OpenAI `data: {"error":…}` chunk, Anthropic's `event: error`, or the Responses API's
/// `event: error`. SDKs raise it as an API error instead of returning a silently truncated
/// answer.
pub fn stream_error_event(stream: impl Into<Dialect>, provider: &str) -> Bytes {
    let msg = format!("upstream provider {provider} ended the stream unexpectedly");
    let text = match stream.into() {
        // The Responses API's own error event: the SDK raises it as an APIError.
        Dialect::Responses => format!(
            "event: error\ndata: {}\n\n",
            serde_json::json!({"type": "error", "code": "upstream_stream_broken", "message": msg, "param": null, "sequence_number": 0})
        ),
        Dialect::Chat => format!(
            "data: {}\n\n",
            serde_json::json!({"error": {"message": msg, "type": "api_error", "code": "upstream_stream_broken"}})
        ),
        Dialect::Messages => format!(
            "event: error\ndata: {}\n\n",
            serde_json::json!({"type": "error", "error": {"type": "api_error", "message": msg}})
        ),
    };
    Bytes::from(text)
}
