//! Provider error bodies: the shapes each API family (and the common OpenAI-compatible hosts)
//! uses, and what a body says about an attempt that a status alone cannot (the model is gone
//! here, the prompt is too long, the key is refused).

use crate::model::outcome::FailoverReason;

/// Statuses whose meaning depends on the error body: "the model is gone here" and "the prompt is
/// too long" arrive as 400/403/404/410/413/422 next to ordinary client errors, and only the body
/// tells them apart. The attempt loop reads these bodies (bounded) before deciding.
pub fn body_decides(status: u16) -> bool {
    matches!(status, 400 | 403 | 404 | 410 | 413 | 422)
}

/// What stands in a passed-on error body where a secret was.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// `body` with every occurrence of each of `secrets` replaced by `[REDACTED]`; `None` when none
/// occurs (the body goes on as it came). A provider echoing the key it was sent ("Incorrect API
/// key provided: sk-...") must not hand the client twinroute's key. Secrets shorter than 8
/// bytes are skipped: no key is that short, and redacting "a" would mangle any body.
pub fn redact(body: &[u8], secrets: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        let cur = out.as_deref().unwrap_or(body);
        // Matches never overlap; a body without this secret is not copied for it.
        let mut hits = memchr::memmem::find_iter(cur, s).peekable();
        if hits.peek().is_none() {
            continue;
        }
        let mut next = Vec::with_capacity(cur.len());
        let mut last = 0;
        for at in hits {
            next.extend_from_slice(&cur[last..at]);
            next.extend_from_slice(REDACTED);
            last = at + s.len();
        }
        next.extend_from_slice(&cur[last..]);
        out = Some(next);
    }
    out
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
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        // Not JSON (an HTML error page, plain text): the text is all there is.
        return ErrorFields {
            message: String::from_utf8_lossy(body).to_lowercase(),
            ..Default::default()
        };
    };
    // Gemini's OpenAI-compatible endpoint wraps its error in a one-element array.
    if let serde_json::Value::Array(items) = &mut v {
        v = items.first().cloned().unwrap_or_default();
    }
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
        // Google's APIs name the kind in `status` (NOT_FOUND, RESOURCE_EXHAUSTED, ...).
        kind: text(inner.get("type").or_else(|| inner.get("status"))),
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
    // Gemini refuses a bad key with 400 INVALID_ARGUMENT "API key not valid": the injected
    // key's problem, never the client's.
    if status == 400
        && (f.message.contains("api key not valid") || f.message.contains("api_key_invalid"))
    {
        return Some(FailoverReason::AuthFailed);
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

/// Phrases and codes of a provider account that cannot pay (as opposed to a rate limit that
/// passes in seconds): OpenAI's `insufficient_quota` 429, OpenRouter's 402 "insufficient
/// credits", billing errors.
const ACCOUNT_CODES: &[&str] = &["insufficient_quota", "billing_hard_limit_reached", "402"];
const ACCOUNT_PHRASES: &[&str] = &[
    "exceeded your current quota",
    "insufficient credits",
    "insufficient_quota",
    "billing",
    "credit balance is too low",
];

/// Whether a 429's error body says the provider's account is out of quota or credits rather
/// than briefly rate limited. (A 402 needs no body: its status says it.)
pub fn account_problem(status: u16, body: &[u8]) -> bool {
    if status == 402 {
        return true;
    }
    if status != 429 {
        return false;
    }
    let f = error_fields(body);
    ACCOUNT_CODES.contains(&f.code.as_str())
        || ACCOUNT_CODES.contains(&f.kind.as_str())
        || ACCOUNT_PHRASES.iter().any(|p| f.message.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::outcome::{classify_status, StatusClass};

    /// Gemini's OpenAI-compatible endpoint (AI Studio): errors come as a one-element array of
    /// Google's `{"error": {"code", "message", "status"}}`.
    #[test]
    fn gemini_error_shapes() {
        let gone = br#"[{"error":{"code":404,"message":"models/gemini-9-pro is not found for API version v1beta, or is not supported for generateContent.","status":"NOT_FOUND"}}]"#;
        assert_eq!(
            classify_error_body(404, gone),
            Some(FailoverReason::ModelUnavailable)
        );
        let key = br#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}]"#;
        assert_eq!(
            classify_error_body(400, key),
            Some(FailoverReason::AuthFailed)
        );
        let bad = br#"[{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"foo\": Cannot find field.","status":"INVALID_ARGUMENT"}}]"#;
        assert_eq!(classify_error_body(400, bad), None);
        let long = br#"{"error":{"code":400,"message":"The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(
            classify_error_body(400, long),
            Some(FailoverReason::ContextLength)
        );
    }

    #[test]
    fn account_problems_are_told_from_rate_limits() {
        let quota = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert!(account_problem(429, quota));
        let limit = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(!account_problem(429, limit));
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        assert!(account_problem(429, anthropic));
        assert!(account_problem(
            402,
            br#"{"error":{"message":"Insufficient credits","code":402}}"#
        ));
        assert!(!account_problem(503, quota));
        assert!(!account_problem(429, b"too many requests"));
    }

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
    fn a_key_echoed_in_an_error_body_is_redacted() {
        let key: &[u8] = b"sk-live-0123456789";
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-live-0123456789. sk-live-0123456789"}}"#;
        let out = redact(body, &[key, b"short"]).expect("redacted");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"error":{"message":"Incorrect API key provided: [REDACTED]. [REDACTED]"}}"#
        );
        assert_eq!(
            redact(b"{\"error\":{}}", &[key]),
            None,
            "nothing to redact: no copy"
        );
    }
}
