//! Errors twinroute itself answers with, in the client's own API error format.
//!
//! OpenAI routes get `{"error":{"message","type","param","code"}}`; `/v1/messages` gets
//! Anthropic's `{"type":"error","error":{"type","message"}}`. SDKs parse these shapes to raise
//! their typed exceptions, so a gateway error must look like the API the client thinks it called.

use crate::model::endpoint::Family;
pub use crate::model::error::{ErrorKind, GatewayError};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde_json::json;

/// (OpenAI `type`, OpenAI `code`, Anthropic `type`) of each kind.
fn names(kind: ErrorKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        ErrorKind::InvalidRequest => (
            "invalid_request_error",
            "invalid_request",
            "invalid_request_error",
        ),
        ErrorKind::ModelNotFound => (
            "invalid_request_error",
            "model_not_found",
            "not_found_error",
        ),
        ErrorKind::ModelUnavailable => (
            "invalid_request_error",
            "model_unavailable",
            "not_found_error",
        ),
        ErrorKind::NotFound => ("invalid_request_error", "unknown_url", "not_found_error"),
        ErrorKind::MethodNotAllowed => (
            "invalid_request_error",
            "method_not_allowed",
            "invalid_request_error",
        ),
        ErrorKind::PayloadTooLarge => (
            "invalid_request_error",
            "request_too_large",
            "request_too_large",
        ),
        ErrorKind::HeaderTooLarge => (
            "invalid_request_error",
            "request_header_too_large",
            "request_too_large",
        ),
        ErrorKind::UnsupportedMediaType => (
            "invalid_request_error",
            "unsupported_media_type",
            "invalid_request_error",
        ),
        ErrorKind::IdempotencyKeyReused => (
            "invalid_request_error",
            "idempotency_key_reused",
            "invalid_request_error",
        ),
        ErrorKind::IdempotencyKeyInUse => (
            "invalid_request_error",
            "idempotency_key_in_use",
            "invalid_request_error",
        ),
        ErrorKind::RateLimited => (
            "rate_limit_error",
            "rate_limit_exceeded",
            "rate_limit_error",
        ),
        ErrorKind::Unauthorized => (
            "authentication_error",
            "invalid_api_key",
            "authentication_error",
        ),
        ErrorKind::RequestTimeout => ("invalid_request_error", "request_timeout", "timeout_error"),
        ErrorKind::Overloaded => ("server_error", "overloaded", "overloaded_error"),
        ErrorKind::UpstreamFailed => ("api_error", "all_providers_failed", "api_error"),
        ErrorKind::UpstreamTimeout => ("api_error", "upstream_timeout", "timeout_error"),
        ErrorKind::QueueFull => ("server_error", "queue_full", "overloaded_error"),
        ErrorKind::JobExpired => ("api_error", "job_expired", "timeout_error"),
        ErrorKind::BudgetExceeded => ("rate_limit_error", "budget_exceeded", "rate_limit_error"),
        ErrorKind::ModelNotAllowed => ("permission_error", "model_not_allowed", "permission_error"),
    }
}

impl GatewayError {
    pub fn body(&self, family: Family) -> Bytes {
        let (oa_type, oa_code, an_type) = names(self.kind);
        let v = match family {
            Family::OpenAi => {
                json!({"error": {"message": self.message, "type": oa_type, "param": null, "code": oa_code}})
            }
            Family::Anthropic => {
                json!({"type": "error", "error": {"type": an_type, "message": self.message}})
            }
        };
        Bytes::from(v.to_string())
    }

    pub fn header(&self, body_len: usize) -> pingora::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(self.kind.status(), Some(4))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body_len)?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if let Some(s) = self.retry_after_s {
            h.insert_header(http::header::RETRY_AFTER, s)?;
        }
        for (k, v) in &self.headers {
            h.insert_header(k.clone(), v.clone())?;
        }
        Ok(h)
    }
}

/// At most the first 64 characters of a value a client sent, for an error message that names
/// it (an unknown model, route or job id) without echoing whatever was pasted there.
pub fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn openai_shape() {
        let e = GatewayError::new(ErrorKind::ModelNotFound, "model \"x\" is not configured");
        let v: Value = serde_json::from_slice(&e.body(Family::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "model \"x\" is not configured");
        assert_eq!(e.kind.status(), 404);
    }

    #[test]
    fn anthropic_shape() {
        let e = GatewayError::new(ErrorKind::PayloadTooLarge, "too big");
        let v: Value = serde_json::from_slice(&e.body(Family::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(v["error"]["message"], "too big");
    }
}
