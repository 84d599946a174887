//! What the attempt executor asks of a provider's wire family, answered here so that serve/
//! names no vendor: how a request is authorized once its body is built, whose own error table
//! reads an error answer first, how an answer's body is framed, and whether an error answer
//! must be re-shaped for the client. One match per question on `ApiKind`: a new family adds its
//! arms here (and its module), the executor does not change.

use crate::model::outcome::FailoverReason;
use crate::model::{ApiKind, AwsCredentials, Provider};
use pingora::http::RequestHeader;

/// How a request to the family is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// A key set among the headers when the request is built (`wire::request::build_request`).
    InHeaders,
    /// A signature over the exact bytes sent (AWS SigV4), made last, with the current keys.
    SignedBody,
    /// A short-lived bearer token minted from a service account or workload identity (Google),
    /// added to each request and replaced when the provider refuses it.
    MintedBearer,
}

pub fn authorization(api: ApiKind) -> Authorization {
    match api {
        ApiKind::Bedrock => Authorization::SignedBody,
        ApiKind::Vertex | ApiKind::VertexOpenAi => Authorization::MintedBearer,
        ApiKind::OpenAi | ApiKind::Anthropic | ApiKind::Azure => Authorization::InHeaders,
    }
}

/// Sign a `SignedBody` request over `body`, the exact bytes sent.
pub fn sign(
    header: &mut RequestHeader,
    provider: &Provider,
    credentials: &AwsCredentials,
    body: &[u8],
    now: std::time::SystemTime,
) -> Result<(), String> {
    super::bedrock::sign(header, provider, credentials, body, now).map_err(|e| e.to_string())
}

/// The family's own verdict on an error answer, read before the shared body tables: `Some`
/// when it has one (Bedrock names its error in `x-amzn-ErrorType`), `None` to let them decide.
pub fn error_verdict(
    api: ApiKind,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Option<Option<FailoverReason>> {
    match api {
        ApiKind::Bedrock => {
            let kind = headers.get("x-amzn-errortype")?.to_str().ok()?;
            super::bedrock::classify(kind, body)
        }
        _ => None,
    }
}

/// How an answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One document (JSON, or whatever the provider sent).
    Whole,
    /// Server-sent events.
    Sse,
    /// AWS event-stream frames carrying the family's SSE events (Bedrock), decoded with
    /// `FrameDecoder`.
    EventStream,
}

/// The framing of an answer with this `Content-Type`.
pub fn framing(api: ApiKind, content_type: Option<&[u8]>) -> Framing {
    let is = |prefix: &[u8]| content_type.is_some_and(|v| v.starts_with(prefix));
    if api == ApiKind::Bedrock && is(b"application/vnd.amazon.eventstream") {
        Framing::EventStream
    } else if is(b"text/event-stream") {
        Framing::Sse
    } else {
        Framing::Whole
    }
}

/// Decodes `Framing::EventStream` answers into the SSE they carry.
pub type FrameDecoder = super::bedrock::EventStreamToSse;

/// Whether the family's error answers have a shape no client SDK reads (Bedrock's own
/// `{"message"}`, Google's envelope), so they are re-shaped into the client's error JSON.
pub fn reshapes_errors(api: ApiKind) -> bool {
    matches!(
        api,
        ApiKind::Bedrock | ApiKind::Vertex | ApiKind::VertexOpenAi
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_answers_the_executors_questions() {
        assert_eq!(authorization(ApiKind::Bedrock), Authorization::SignedBody);
        assert_eq!(authorization(ApiKind::Vertex), Authorization::MintedBearer);
        assert_eq!(authorization(ApiKind::Azure), Authorization::InHeaders);
        let es = Some(&b"application/vnd.amazon.eventstream"[..]);
        assert_eq!(framing(ApiKind::Bedrock, es), Framing::EventStream);
        assert_eq!(framing(ApiKind::OpenAi, es), Framing::Whole);
        let sse = Some(&b"text/event-stream; charset=utf-8"[..]);
        assert_eq!(framing(ApiKind::Anthropic, sse), Framing::Sse);
        assert_eq!(framing(ApiKind::OpenAi, None), Framing::Whole);
        let mut h = http::HeaderMap::new();
        assert_eq!(error_verdict(ApiKind::Bedrock, &h, b"{}"), None);
        h.insert(
            "x-amzn-errortype",
            http::HeaderValue::from_static("ResourceNotFoundException:x"),
        );
        assert_eq!(
            error_verdict(ApiKind::Bedrock, &h, b"{}"),
            Some(Some(FailoverReason::ModelUnavailable))
        );
        assert_eq!(error_verdict(ApiKind::OpenAi, &h, b"{}"), None);
        assert!(reshapes_errors(ApiKind::Bedrock) && !reshapes_errors(ApiKind::OpenAi));
    }
}
