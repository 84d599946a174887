//! AWS Bedrock Runtime, Anthropic models: InvokeModel and InvokeModelWithResponseStream.
//!
//! - Path: `/model/{modelId}/invoke` or `/model/{modelId}/invoke-with-response-stream`, the model
//!   (or inference-profile) ID percent-encoded as one path segment.
//! - Body: the Anthropic Messages body without `model` and `stream`, with
//!   `anthropic_version: bedrock-2023-05-31` (`envelope`).
//! - Auth: AWS Signature V4 for service `bedrock` in the provider's region, computed by awslabs'
//!   `aws-sigv4` over the exact bytes sent (`sign`); or a Bedrock API key as a bearer token.
//! - Answers: a whole Anthropic `message` JSON; a stream is the AWS event stream
//!   (`application/vnd.amazon.eventstream`: binary frames with prelude and message CRCs), whose
//!   `chunk` events carry base64 `bytes` of Anthropic stream events and whose `exception` frames
//!   (`throttlingException`, `modelStreamErrorException`, ...) end it. `EventStreamToSse` turns it
//!   into the Anthropic SSE a Messages client (or the translator, for an OpenAI client) expects.
//! - Errors: `x-amzn-ErrorType` and a `{"message": …}` body; statuses follow the shared table
//!   (`ThrottlingException` 429, `ServiceUnavailableException` 503, `InternalServerException`
//!   500, `ModelTimeoutException` 408, `AccessDeniedException` about model access 403 → the
//!   offering is unavailable, `ValidationException` 400 → the client's).

use crate::model::outcome::FailoverReason;
use crate::model::{AwsCredentials, Provider};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use base64::Engine;
use bytes::{Buf, BytesMut};
use pingora::http::RequestHeader;
use serde_json::{json, Value};
use std::time::SystemTime;

/// The Messages API version Bedrock's Anthropic models take in the body.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// Characters kept as they are in a path segment (RFC 3986 unreserved); everything else,
/// including the `:` of `...-v1:0` and the `/` of an ARN, is percent-encoded.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The InvokeModel path for `model_id` under the API root `base_path`.
pub fn path(base_path: &str, model_id: &str, stream: bool) -> String {
    let id = percent_encoding::utf8_percent_encode(model_id, SEGMENT);
    let op = if stream {
        "invoke-with-response-stream"
    } else {
        "invoke"
    };
    format!("{base_path}/model/{id}/{op}")
}

/// An Anthropic Messages body as Bedrock's InvokeModel body.
pub fn envelope(messages_body: &Value) -> Vec<u8> {
    let mut map = messages_body.as_object().cloned().unwrap_or_default();
    map.remove("model");
    map.remove("stream");
    map.insert("anthropic_version".into(), json!(ANTHROPIC_VERSION));
    Value::Object(map).to_string().into_bytes()
}

/// What Bedrock's `x-amzn-ErrorType` says about an answer whose status alone does not decide
/// (400/403/404): `Some(verdict)` when the type settles it, `None` to let the shared body
/// table decide. The header may carry a `:`-suffix (`AccessDeniedException:http://...`).
pub fn classify(error_type: &str, body: &[u8]) -> Option<Option<FailoverReason>> {
    let kind = error_type.split(':').next().unwrap_or_default();
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(Value::as_str)
                .map(str::to_lowercase)
        })
        .unwrap_or_default();
    match kind {
        // The credential twinroute signed with was refused: never the client's doing.
        "InvalidSignatureException"
        | "UnrecognizedClientException"
        | "ExpiredTokenException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException" => Some(Some(FailoverReason::AuthFailed)),
        // "You don't have access to the model with the specified model ID.": the offering is
        // out (model access not granted in this account/region); anything else is the role's
        // permissions.
        "AccessDeniedException"
            if ["access to the model", "model access", "specified model"]
                .iter()
                .any(|p| message.contains(p)) =>
        {
            Some(Some(FailoverReason::ModelUnavailable))
        }
        "AccessDeniedException" => Some(Some(FailoverReason::AuthFailed)),
        "ResourceNotFoundException" => Some(Some(FailoverReason::ModelUnavailable)),
        // The request itself (a context-length message still moves to a larger window).
        "ValidationException" => None,
        _ => None,
    }
}

/// Why a request could not be signed.
#[derive(Debug)]
pub struct SignError(pub String);

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Authenticate `req` (whose `Host` and body are final) for `provider`: SigV4 over method,
/// path, the headers sent and the body's SHA-256, or the bearer API key.
pub fn sign(
    req: &mut RequestHeader,
    provider: &Provider,
    credentials: &AwsCredentials,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SignError> {
    let Some(aws) = provider.aws() else {
        return Err(SignError("provider has no AWS settings".into()));
    };
    match credentials {
        AwsCredentials::Bearer(token) => {
            req.insert_header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
            )
            .map_err(|e| SignError(e.to_string()))?;
            Ok(())
        }
        AwsCredentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let scheme = if provider.base.tls { "https" } else { "http" };
            let uri = format!("{scheme}://{host}{}", req.uri);
            let signed = sign_headers(SigningInput {
                method: req.method.as_str(),
                uri: &uri,
                headers: &[
                    ("host", host.as_str()),
                    ("content-type", "application/json"),
                ],
                body,
                access_key_id: access_key_id.expose(),
                secret_access_key: secret_access_key.expose(),
                session_token: session_token.as_ref().map(|t| t.expose()),
                region: &aws.region,
                service: "bedrock",
                time: now,
            })?;
            for (name, value) in signed {
                req.insert_header(name, value)
                    .map_err(|e| SignError(e.to_string()))?;
            }
            Ok(())
        }
    }
}

/// The STS `AssumeRoleWithWebIdentity` call (unsigned: the web identity token is the proof):
/// `(url, form body)`.
pub fn sts_request(
    sts_url: &str,
    role_arn: &str,
    session_name: &str,
    token: &str,
) -> (String, String) {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
    (
        format!("{}/", sts_url.trim_end_matches('/')),
        format!(
            "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}&RoleSessionName={}&WebIdentityToken={}",
            enc(role_arn),
            enc(session_name),
            enc(token)
        ),
    )
}

/// The text of `<tag>…</tag>` in an XML answer (STS's fixed schema; entities unescaped).
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<std::borrow::Cow<'a, str>> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    let raw = xml[start..end].trim();
    Some(if raw.contains('&') {
        std::borrow::Cow::Owned(
            raw.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        )
    } else {
        std::borrow::Cow::Borrowed(raw)
    })
}

/// Temporary credentials and their expiry (seconds since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Temporary {
    pub credentials: AwsCredentials,
    pub expires_s: i64,
}

fn expiry(ts: &str) -> Result<i64, String> {
    ts.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| format!("bad Expiration {ts:?}: {e}"))
}

/// STS's `AssumeRoleWithWebIdentityResponse` (or its `ErrorResponse`).
pub fn parse_sts(xml: &str) -> Result<Temporary, String> {
    if let Some(code) = xml_text(xml, "Code") {
        let msg = xml_text(xml, "Message").unwrap_or_default();
        return Err(format!("STS refused: {code}: {msg}"));
    }
    let get = |t: &str| {
        xml_text(xml, t)
            .map(|v| v.into_owned())
            .ok_or_else(|| format!("STS answer without {t}"))
    };
    Ok(Temporary {
        credentials: AwsCredentials::Static {
            access_key_id: crate::model::Secret::new(get("AccessKeyId")?),
            secret_access_key: crate::model::Secret::new(get("SecretAccessKey")?),
            session_token: Some(crate::model::Secret::new(get("SessionToken")?)),
        },
        expires_s: expiry(&get("Expiration")?)?,
    })
}

/// A container-credentials endpoint's JSON (`AccessKeyId`, `SecretAccessKey`, `Token`,
/// `Expiration`).
pub fn parse_container(body: &[u8]) -> Result<Temporary, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("answer without {k}"))
    };
    Ok(Temporary {
        credentials: AwsCredentials::Static {
            access_key_id: crate::model::Secret::new(get("AccessKeyId")?),
            secret_access_key: crate::model::Secret::new(get("SecretAccessKey")?),
            session_token: get("Token").ok().map(crate::model::Secret::new),
        },
        expires_s: expiry(&get("Expiration")?)?,
    })
}

/// What a SigV4 signature covers.
pub struct SigningInput<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
    pub time: SystemTime,
}

/// The headers SigV4 adds (`authorization`, `x-amz-date`, `x-amz-security-token`), computed by
/// `aws-sigv4`.
pub fn sign_headers(input: SigningInput<'_>) -> Result<Vec<(String, String)>, SignError> {
    use aws_sigv4::http_request::{sign as sigv4, SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(
        input.access_key_id,
        input.secret_access_key,
        input.session_token.map(str::to_string),
        None,
        "twinroute",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(input.region)
        .name(input.service)
        .time(input.time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        input.method,
        input.uri,
        input.headers.iter().copied(),
        SignableBody::Bytes(input.body),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _) = sigv4(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Why a Bedrock event stream could not be read: a frame whose CRC or length is wrong, or a
/// chunk that is not the JSON it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamError(pub String);

/// Bedrock's event stream in, Anthropic SSE out, frame by frame whatever the read boundaries.
#[derive(Debug, Default)]
pub struct EventStreamToSse {
    decoder: MessageFrameDecoder,
    buf: BytesMut,
    /// An exception frame ended the stream (its error event was emitted).
    pub ended: bool,
    /// Largest frame held while it arrives (`0`: no bound). The codec believes a prelude's
    /// declared length, up to 4 GiB: without this a hostile frame would grow the buffer so.
    max_frame: usize,
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

impl EventStreamToSse {
    /// A decoder holding no frame larger than `max_frame` bytes.
    pub fn with_limit(max_frame: usize) -> EventStreamToSse {
        EventStreamToSse {
            max_frame,
            ..EventStreamToSse::default()
        }
    }

    /// Decode what arrived; complete events are appended to `out` as SSE.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.buf.extend_from_slice(bytes);
        loop {
            if self.ended {
                return Ok(());
            }
            let before = self.buf.remaining();
            let frame = self
                .decoder
                .decode_frame(&mut self.buf)
                .map_err(|e| StreamError(format!("bad event stream frame: {e}")))?;
            match frame {
                DecodedFrame::Complete(m) => self.message(&m, out)?,
                // Only the frame still arriving counts against the limit (what is held once
                // every complete frame was decoded), never several small frames read at once.
                DecodedFrame::Incomplete
                    if self.max_frame > 0 && self.pending() > self.max_frame =>
                {
                    return Err(StreamError(format!(
                        "an event stream frame exceeded {} bytes",
                        self.max_frame
                    )));
                }
                DecodedFrame::Incomplete if self.buf.remaining() == before => return Ok(()),
                // The prelude was consumed; the rest of the frame is still to come.
                DecodedFrame::Incomplete => {}
            }
        }
    }

    /// Bytes of a frame that never completed (the stream stopped mid-frame).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn message(&mut self, m: &Message, out: &mut Vec<u8>) -> Result<(), StreamError> {
        match header(m, ":message-type") {
            Some("event") if header(m, ":event-type") == Some("chunk") => {
                let v: Value = serde_json::from_slice(m.payload())
                    .map_err(|e| StreamError(format!("chunk payload is not JSON: {e}")))?;
                let b64 = v
                    .get("bytes")
                    .and_then(Value::as_str)
                    .ok_or_else(|| StreamError("chunk without bytes".into()))?;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| StreamError(format!("chunk bytes are not base64: {e}")))?;
                let event: Value = serde_json::from_slice(&raw)
                    .map_err(|e| StreamError(format!("chunk event is not JSON: {e}")))?;
                let kind = event.get("type").and_then(Value::as_str).unwrap_or("event");
                out.extend_from_slice(format!("event: {kind}\ndata: {event}\n\n").as_bytes());
            }
            Some("exception") | Some("error") => {
                let kind = header(m, ":exception-type")
                    .or_else(|| header(m, ":error-code"))
                    .unwrap_or("internalServerException");
                let message = serde_json::from_slice::<Value>(m.payload())
                    .ok()
                    .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| kind.to_string());
                let anthropic_type = match kind {
                    "throttlingException" => "rate_limit_error",
                    "serviceUnavailableException" => "overloaded_error",
                    "validationException" => "invalid_request_error",
                    _ => "api_error",
                };
                let e = json!({"type": "error", "error": {"type": anthropic_type, "message": format!("{kind}: {message}")}});
                out.extend_from_slice(format!("event: error\ndata: {e}\n\n").as_bytes());
                self.ended = true;
            }
            // Other events (none documented for Anthropic models): nothing for the client.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn chunk(event: &Value) -> Vec<u8> {
        crate::testkit::mock::bedrock_chunk(event).to_vec()
    }

    fn exception(kind: &str, message: &str) -> Vec<u8> {
        crate::testkit::mock::bedrock_exception(kind, message).to_vec()
    }

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(chunk(&json!({"type": "message_start", "message": {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude", "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}}})));
        s.extend(chunk(&json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        s.extend(chunk(&json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})));
        s.extend(chunk(&json!({"type": "content_block_stop", "index": 0})));
        s.extend(chunk(&json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}})));
        s.extend(chunk(&json!({"type": "message_stop"})));
        s
    }

    #[test]
    fn sts_and_container_answers() {
        let xml = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>FwoGZXIvYXdzE/token+with=chars</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-12-02T03:15:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        let t = parse_sts(xml).unwrap();
        assert_eq!(t.expires_s, 1_796_181_300);
        let AwsCredentials::Static {
            access_key_id,
            session_token,
            ..
        } = t.credentials
        else {
            panic!()
        };
        assert_eq!(access_key_id.expose(), "ASIAEXAMPLE");
        assert_eq!(
            session_token.unwrap().expose(),
            "FwoGZXIvYXdzE/token+with=chars"
        );
        let err = r#"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key</Message></Error></ErrorResponse>"#;
        assert!(parse_sts(err).unwrap_err().contains("InvalidIdentityToken"));
        let c = parse_container(br#"{"AccessKeyId":"ASIA2","SecretAccessKey":"s","Token":"t","Expiration":"2026-12-02T03:15:00Z"}"#).unwrap();
        assert_eq!(c.expires_s, 1_796_181_300);
        assert!(parse_container(br#"{"AccessKeyId":"ASIA2"}"#).is_err());
        let (url, body) = sts_request(
            "https://sts.us-east-1.amazonaws.com",
            "arn:aws:iam::1:role/r",
            "twinroute",
            "ey.J/x",
        );
        assert_eq!(url, "https://sts.us-east-1.amazonaws.com/");
        assert!(body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr"));
        assert!(body.contains("WebIdentityToken=ey.J%2Fx"));
    }

    #[test]
    fn error_types_decide_before_the_body() {
        let sig = br#"{"message":"The request signature we calculated does not match the signature you provided. The canonical request was: POST /model/x/invoke"}"#;
        assert_eq!(
            classify(
                "InvalidSignatureException:http://internal.amazon.com/coral/",
                sig
            ),
            Some(Some(FailoverReason::AuthFailed))
        );
        let access =
            br#"{"message":"You don't have access to the model with the specified model ID."}"#;
        assert_eq!(
            classify("AccessDeniedException", access),
            Some(Some(FailoverReason::ModelUnavailable))
        );
        assert_eq!(
            classify(
                "AccessDeniedException",
                br#"{"message":"User is not authorized to perform: bedrock:InvokeModel"}"#
            ),
            Some(Some(FailoverReason::AuthFailed))
        );
        assert_eq!(
            classify("ValidationException", br#"{"message":"bad"}"#),
            None
        );
    }

    #[test]
    fn paths_encode_the_model_id_as_one_segment() {
        assert_eq!(
            path("", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", false),
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
        );
        assert_eq!(
            path("/vpce", "arn:aws:bedrock:us-east-1:123:inference-profile/x", true),
            "/vpce/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fx/invoke-with-response-stream"
        );
    }

    #[test]
    fn the_body_loses_model_and_stream_and_gains_the_bedrock_version() {
        let b = envelope(&json!({"model": "m", "stream": true, "max_tokens": 5, "messages": []}));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"max_tokens": 5, "messages": [], "anthropic_version": "bedrock-2023-05-31"})
        );
    }

    /// The signer against AWS's published SigV4 test-suite vectors (aws-signing-test-suite/v4,
    /// copied into tests/fixtures/sigv4 with their expected signatures).
    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        for (case, method, uri, token) in [
            (
                "post-vanilla",
                "POST",
                "https://example.amazonaws.com/",
                None,
            ),
            ("get-vanilla", "GET", "https://example.amazonaws.com/", None),
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "https://example.amazonaws.com/?Param2=value2&Param1=value1",
                None,
            ),
            (
                "get-vanilla-with-session-token",
                "GET",
                "https://example.amazonaws.com/",
                Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"),
            ),
        ] {
            let want = std::fs::read_to_string(format!(
                "{}/tests/fixtures/sigv4/{case}/header-signature.txt",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let headers = sign_headers(SigningInput {
                method,
                uri,
                headers: &[("host", "example.amazonaws.com")],
                body: b"",
                access_key_id: "AKIDEXAMPLE",
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                session_token: token,
                region: "us-east-1",
                service: "service",
                time: t,
            })
            .unwrap();
            let auth = &headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .unwrap()
                .1;
            assert!(
                auth.ends_with(&format!("Signature={}", want.trim())),
                "{case}: {auth}"
            );
            assert!(auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
            ));
            if token.is_some() {
                assert!(headers.iter().any(|(k, _)| k == "x-amz-security-token"));
            }
        }
    }

    #[test]
    fn event_stream_becomes_anthropic_sse_at_any_split() {
        let bytes = stream();
        for step in [1, 3, 17, bytes.len()] {
            let mut d = EventStreamToSse::default();
            let mut out = Vec::new();
            for piece in bytes.chunks(step) {
                d.feed(piece, &mut out).unwrap();
            }
            assert_eq!(d.pending(), 0);
            let text = String::from_utf8(out).unwrap();
            let kinds: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("event: "))
                .collect();
            assert_eq!(
                kinds,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ],
                "split {step}"
            );
            assert!(text.contains(r#""text":"Hi""#));
        }
    }

    #[test]
    fn only_the_frame_still_arriving_counts_against_the_limit() {
        // Every frame of the stream in one read, with a limit below their sum but above each.
        let bytes = stream();
        let mut d = EventStreamToSse::with_limit(bytes.len() / 2);
        let mut out = Vec::new();
        d.feed(&bytes, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("message_stop"));
        // A frame past the limit is refused while it arrives (a prelude may announce up to
        // 4 GiB), not buffered to its end.
        let big = chunk(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "x".repeat(4096)}}));
        let mut d = EventStreamToSse::with_limit(1024);
        let mut out = Vec::new();
        assert!(d.feed(&big[..512], &mut out).is_ok());
        assert!(d.feed(&big[512..2048], &mut out).is_err());
    }

    #[test]
    fn an_exception_frame_ends_the_stream_with_an_error_event() {
        let mut bytes = chunk(&json!({"type": "message_start", "message": {"id": "m"}}));
        bytes.extend(exception(
            "throttlingException",
            "Too many tokens, please wait.",
        ));
        bytes.extend(chunk(&json!({"type": "message_stop"})));
        let mut d = EventStreamToSse::default();
        let mut out = Vec::new();
        d.feed(&bytes, &mut out).unwrap();
        assert!(d.ended);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("event: error"), "{text}");
        assert!(text.contains("rate_limit_error"));
        assert!(text.contains("throttlingException: Too many tokens"));
        assert!(
            !text.contains("message_stop"),
            "nothing after the exception"
        );
    }

    #[test]
    fn corrupted_and_truncated_frames_are_errors_not_events() {
        let good = stream();
        // A flipped payload byte breaks the message CRC.
        let mut bad = good.clone();
        bad[40] ^= 0xff;
        let mut d = EventStreamToSse::default();
        let mut out = Vec::new();
        assert!(d.feed(&bad, &mut out).is_err());
        // A flipped prelude byte breaks the prelude CRC.
        let mut bad = good.clone();
        bad[2] ^= 0x01;
        let mut d = EventStreamToSse::default();
        assert!(d.feed(&bad, &mut Vec::new()).is_err());
        // Truncated: what arrived whole is delivered, the rest is pending (the caller reports
        // a stream that ended mid-frame).
        let mut d = EventStreamToSse::default();
        let mut out = Vec::new();
        d.feed(&good[..good.len() - 5], &mut out).unwrap();
        assert!(d.pending() > 0);
        assert!(String::from_utf8(out).unwrap().contains("message_delta"));
    }
}
