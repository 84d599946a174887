//! Outcome classification: what one upstream attempt's result means, decided in one place.
//!
//! Metrics, the access log, the retry decision and (later) breakers all read the same
//! `FailoverReason`, so "why did we fail over" has one vocabulary everywhere (Envoy-style names).

use pingora::ErrorType;
use std::fmt;

/// Why an attempt did not produce the answer, when that is the provider's fault and another
/// provider may do better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailoverReason {
    ConnectFailure,
    ConnectTimeout,
    FirstByteTimeout,
    Reset,
    Status408,
    Status409,
    Status429,
    Status5xx,
    /// The whole request's deadline ran out during this attempt.
    Deadline,
    /// 401, or a 403 that is not about a model: the key twinroute injected was refused. The
    /// client's own credentials never reach a provider, so this is never the client's fault.
    AuthFailed,
    /// The provider says this model is gone here (not found, not deployed, decommissioned, no
    /// access) while the request itself is fine: the offering, not the provider, is taken out.
    ModelUnavailable,
    /// The prompt does not fit this model's context window; only a larger model can help.
    ContextLength,
}

impl FailoverReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverReason::ConnectFailure => "connect_failure",
            FailoverReason::ConnectTimeout => "connect_timeout",
            FailoverReason::FirstByteTimeout => "first_byte_timeout",
            FailoverReason::Reset => "reset",
            FailoverReason::Status408 => "status_408",
            FailoverReason::Status409 => "status_409",
            FailoverReason::Status429 => "status_429",
            FailoverReason::Status5xx => "status_5xx",
            FailoverReason::Deadline => "deadline",
            FailoverReason::AuthFailed => "auth_failed",
            FailoverReason::ModelUnavailable => "model_unavailable",
            FailoverReason::ContextLength => "context_length_exceeded",
        }
    }

    /// The provider stayed silent (as opposed to refusing or erroring): these add up to a 504.
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            FailoverReason::ConnectTimeout
                | FailoverReason::FirstByteTimeout
                | FailoverReason::Deadline
        )
    }
}

impl fmt::Display for FailoverReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with an upstream response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// Pass it to the client: a success, or an error that is about the request itself (other
    /// 4xx), which another provider would answer the same way.
    Final,
    /// Try the next candidate.
    Retry(FailoverReason),
}

pub fn classify_status(status: u16) -> StatusClass {
    match status {
        401 => StatusClass::Retry(FailoverReason::AuthFailed),
        408 => StatusClass::Retry(FailoverReason::Status408),
        409 => StatusClass::Retry(FailoverReason::Status409),
        429 => StatusClass::Retry(FailoverReason::Status429),
        500 | 502 | 503 | 504 => StatusClass::Retry(FailoverReason::Status5xx),
        _ => StatusClass::Final,
    }
}

/// Statuses whose meaning depends on the error body: "the model is gone here" and "the prompt is
/// too long" arrive as 400/403/404/410/413/422 next to ordinary client errors, and only the body
/// tells them apart. The attempt loop reads these bodies (bounded) before deciding.
pub fn body_decides(status: u16) -> bool {
    matches!(status, 400 | 403 | 404 | 410 | 413 | 422)
}

/// The error fields providers use, from whichever of the common shapes the body has:
/// OpenAI `{"error":{"message","type","param","code"}}`, Anthropic
/// `{"type":"error","error":{"type","message"}}`, vLLM/Mistral `{"object":"error","message",..}`,
/// FastAPI `{"detail": ..}`, OpenRouter's numeric `code`.
#[derive(Debug, Default, PartialEq)]
struct ErrorFields {
    code: String,
    kind: String,
    param: String,
    message: String,
}

fn error_fields(body: &[u8]) -> ErrorFields {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        // Not JSON (an HTML error page, plain text): the text is all there is.
        return ErrorFields {
            message: String::from_utf8_lossy(body).to_lowercase(),
            ..Default::default()
        };
    };
    let text = |v: Option<&serde_json::Value>| -> String {
        match v {
            Some(serde_json::Value::String(s)) => s.to_lowercase(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::Object(o)) => o
                .get("message")
                .or_else(|| o.get("error"))
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_lowercase(),
            _ => String::new(),
        }
    };
    let inner = match v.get("error") {
        Some(e @ serde_json::Value::Object(_)) => e,
        _ => &v,
    };
    let mut f = ErrorFields {
        code: text(inner.get("code")),
        kind: text(inner.get("type")),
        param: text(inner.get("param")),
        message: text(inner.get("message")),
    };
    if f.message.is_empty() {
        f.message = text(v.get("error")).to_string();
    }
    if f.message.is_empty() {
        f.message = text(v.get("detail"));
    }
    f
}

/// Phrases that, in a 400/422 that mentions a model, say the model is not served here. Kept
/// strong on purpose: "image input is not supported for this model" is about the request, and
/// marking an offering out for ten minutes on it would be wrong. (A 404 that mentions a model
/// needs no phrase: on a completion endpoint nothing else can be missing.)
const GONE_PHRASES: &[&str] = &[
    "does not exist",
    "not found",
    "not deployed",
    "no longer supported",
    "no longer available",
    "decommissioned",
    "deprecated",
    "has been retired",
    "is retired",
    "invalid model",
    "unknown model",
];

const GONE_CODES: &[&str] = &[
    "model_not_found",
    "model_not_available",
    "model_decommissioned",
    "model_deprecated",
    "model_not_supported",
    "deploymentnotfound",
    "invalid_model",
    "not_found",
];

const CONTEXT_CODES: &[&str] = &["context_length_exceeded", "string_above_max_length"];

const CONTEXT_PHRASES: &[&str] = &[
    "maximum context length",
    "context length",
    "context_length",
    "context window",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "reduce the length of the messages",
    "exceeds the maximum number of tokens",
];

/// Codes that name a problem with one parameter of the request: always the client's.
const PARAM_CODES: &[&str] = &[
    "unsupported_parameter",
    "unsupported_value",
    "invalid_value",
    "invalid_type",
    "missing_required_parameter",
];

/// What an error body says about the attempt, for the statuses `body_decides` names. `None`:
/// an ordinary error about the request, to be passed to the client as it is.
pub fn classify_error_body(status: u16, body: &[u8]) -> Option<FailoverReason> {
    if !body_decides(status) {
        return None;
    }
    let f = error_fields(body);
    if PARAM_CODES.contains(&f.code.as_str()) {
        return None;
    }
    if CONTEXT_CODES.contains(&f.code.as_str())
        || (matches!(status, 400 | 413 | 422)
            && CONTEXT_PHRASES.iter().any(|p| f.message.contains(p)))
    {
        return Some(FailoverReason::ContextLength);
    }
    // A parameter error names its parameter; only `model` (or none) can be about the model.
    let param_ok = f.param.is_empty() || f.param == "null" || f.param == "model";
    let mentions_model = f.message.contains("model") || f.message.contains("deployment");
    let gone_code = GONE_CODES.contains(&f.code.as_str());
    let gone_text = mentions_model && GONE_PHRASES.iter().any(|p| f.message.contains(p));
    match status {
        // Anthropic's model not-found reads `model: claude-…` under `not_found_error`.
        404 | 410 if gone_code || mentions_model || f.message.contains("no endpoints found") => {
            Some(FailoverReason::ModelUnavailable)
        }
        400 | 422 if param_ok && (gone_code || gone_text) => Some(FailoverReason::ModelUnavailable),
        403 if mentions_model => Some(FailoverReason::ModelUnavailable),
        // A 403 about anything else is the injected key's permission: not the client's doing.
        403 => Some(FailoverReason::AuthFailed),
        _ => None,
    }
}

/// Which step of an attempt an I/O error happened in; the same error type means different
/// things before and after the request reached the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptPhase {
    Connect,
    /// Writing the request or waiting for the response header.
    Exchange,
}

pub fn classify_error(phase: AttemptPhase, etype: &ErrorType) -> FailoverReason {
    match etype {
        ErrorType::ConnectTimedout => FailoverReason::ConnectTimeout,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::SocketError
        | ErrorType::BindError
        | ErrorType::ConnectProxyFailure => FailoverReason::ConnectFailure,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailoverReason::FirstByteTimeout,
        _ if phase == AttemptPhase::Connect => FailoverReason::ConnectFailure,
        // Closed, reset, malformed or otherwise broken before a usable response header.
        _ => FailoverReason::Reset,
    }
}

/// Parse `Retry-After` (delta-seconds only; providers do not send HTTP dates in practice, and a
/// date we cannot parse is better ignored than guessed).
pub fn parse_retry_after(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        for s in [200, 201, 204, 301, 400, 403, 404, 413, 422] {
            assert_eq!(classify_status(s), StatusClass::Final, "{s}");
        }
        assert_eq!(
            classify_status(408),
            StatusClass::Retry(FailoverReason::Status408)
        );
        assert_eq!(
            classify_status(409),
            StatusClass::Retry(FailoverReason::Status409)
        );
        assert_eq!(
            classify_status(429),
            StatusClass::Retry(FailoverReason::Status429)
        );
        for s in [500, 502, 503, 504] {
            assert_eq!(
                classify_status(s),
                StatusClass::Retry(FailoverReason::Status5xx),
                "{s}"
            );
        }
        // 501 Not Implemented is about the request: another provider will not implement it either.
        assert_eq!(classify_status(501), StatusClass::Final);
    }

    #[test]
    fn error_table() {
        use AttemptPhase::*;
        assert_eq!(
            classify_error(Connect, &ErrorType::ConnectRefused),
            FailoverReason::ConnectFailure
        );
        assert_eq!(
            classify_error(Connect, &ErrorType::ConnectTimedout),
            FailoverReason::ConnectTimeout
        );
        assert_eq!(
            classify_error(Exchange, &ErrorType::ReadTimedout),
            FailoverReason::FirstByteTimeout
        );
        assert_eq!(
            classify_error(Exchange, &ErrorType::ConnectionClosed),
            FailoverReason::Reset
        );
        assert_eq!(
            classify_error(Exchange, &ErrorType::ReadError),
            FailoverReason::Reset
        );
        assert_eq!(
            classify_error(Connect, &ErrorType::ReadError),
            FailoverReason::ConnectFailure
        );
        assert!(FailoverReason::FirstByteTimeout.is_timeout());
        assert!(!FailoverReason::Reset.is_timeout());
    }

    /// Error bodies as providers send them (trimmed of request ids).
    #[test]
    fn error_body_table() {
        use FailoverReason::*;
        let cases: &[(&str, u16, &str, Option<FailoverReason>)] = &[
            (
                "openai unknown model",
                404,
                r#"{"error":{"message":"The model `gpt-4-32k` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "openai deprecated",
                404,
                r#"{"error":{"message":"The model `text-davinci-003` has been deprecated, learn more here: https://platform.openai.com/docs/deprecations","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "groq decommissioned",
                400,
                r#"{"error":{"message":"The model `llama3-70b-8192` has been decommissioned and is no longer supported. Please refer to https://console.groq.com/docs/deprecations for a recommendation on which model to use instead.","type":"invalid_request_error","code":"model_decommissioned"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "groq retired llama",
                404,
                r#"{"error":{"message":"The model `llama-3.3-70b-versatile` does not exist or you do not have access to it.","type":"invalid_request_error","code":"model_not_found"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "fireworks not deployed",
                404,
                r#"{"error":{"object":"error","type":"invalid_request_error","code":"NOT_FOUND","message":"Model not found, inaccessible, and/or not deployed"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "together unavailable",
                404,
                r#"{"error":{"message":"Unable to access model meta-llama/Llama-3-70b. Please visit https://api.together.ai/models to view the list of supported models.","type":"invalid_request_error","param":null,"code":"model_not_available"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "openrouter numeric code",
                404,
                r#"{"error":{"message":"No endpoints found for meta-llama/llama-3-70b.","code":404}}"#,
                Some(ModelUnavailable),
            ),
            (
                "openrouter numeric code naming the model",
                404,
                r#"{"error":{"message":"No endpoints found for model meta-llama/llama-3-70b.","code":404}}"#,
                Some(ModelUnavailable),
            ),
            (
                "azure deployment",
                404,
                r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}"#,
                Some(ModelUnavailable),
            ),
            (
                "anthropic model not found",
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-3-opus-20240229"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "vllm unknown model",
                404,
                r#"{"object":"error","message":"The model `Llama-3-70B` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
                Some(ModelUnavailable),
            ),
            (
                "mistral invalid model",
                400,
                r#"{"object":"error","message":"Invalid model: mistral-tiny-2312","type":"invalid_model","param":null,"code":"1500"}"#,
                Some(ModelUnavailable),
            ),
            (
                "fastapi detail",
                404,
                r#"{"detail":"Model not found"}"#,
                Some(ModelUnavailable),
            ),
            (
                "gone with 410",
                410,
                r#"{"error":{"message":"This model is no longer supported"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "openai project access",
                403,
                r#"{"error":{"message":"Project `proj_x` does not have access to model `o3`","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
                Some(ModelUnavailable),
            ),
            (
                "anthropic permission, no model",
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#,
                Some(AuthFailed),
            ),
            (
                "openai context",
                400,
                r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
                Some(ContextLength),
            ),
            (
                "anthropic prompt too long",
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208000 tokens > 200000 maximum"}}"#,
                Some(ContextLength),
            ),
            (
                "vllm context",
                400,
                r#"{"object":"error","message":"This model's maximum context length is 8192 tokens. However, you requested 9000 tokens (8000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#,
                Some(ContextLength),
            ),
            (
                "openai unsupported parameter",
                400,
                r#"{"error":{"message":"Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#,
                None,
            ),
            (
                "parameter deprecated for this model",
                400,
                r#"{"error":{"message":"'functions' is deprecated for this model, use 'tools'","type":"invalid_request_error","param":"functions","code":null}}"#,
                None,
            ),
            (
                "image input unsupported",
                400,
                r#"{"error":{"message":"Image input is not supported for this model.","type":"invalid_request_error","param":null,"code":null}}"#,
                None,
            ),
            (
                "ordinary 400",
                400,
                r#"{"error":{"message":"'messages' is a required property","type":"invalid_request_error","param":null,"code":null}}"#,
                None,
            ),
            (
                "anthropic ordinary 400",
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
                None,
            ),
            (
                "html 404 page",
                404,
                "<html><body>404 Not Found</body></html>",
                None,
            ),
            (
                "not a deciding status",
                500,
                r#"{"error":{"code":"model_not_found"}}"#,
                None,
            ),
        ];
        for (name, status, body, want) in cases {
            assert_eq!(
                classify_error_body(*status, body.as_bytes()),
                *want,
                "{name}"
            );
        }
        assert_eq!(
            classify_status(401),
            StatusClass::Retry(FailoverReason::AuthFailed)
        );
    }

    #[test]
    fn retry_after() {
        assert_eq!(parse_retry_after(b"7"), Some(7));
        assert_eq!(parse_retry_after(b" 12 "), Some(12));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(b"-1"), None);
    }
}
