//! What the attempt executor asks of a provider's wire family, answered here so that serve/
//! names no vendor: how a request is authorized once its body is built, whose own error table
//! reads an error answer first, how an answer's body is framed, and whether an error answer
//! must be re-shaped for the client, and how a minted credential (a Google token, temporary AWS
//! keys) is asked for and read. One match per question: a new family adds its arms here (and
//! its module), the executor and the credential refresher do not change.

use crate::model::outcome::FailoverReason;
use crate::model::{ApiKind, AwsCredentialSource, AwsCredentials, GcpCredentials, Provider};
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

/// A provider's credential source whose credentials are minted and refreshed (Google's service
/// account or metadata server; AWS's web identity or container credentials).
#[derive(Debug)]
pub enum MintSource<'a> {
    Gcp(&'a GcpCredentials),
    Aws(&'a AwsCredentialSource),
}

/// The source a provider's credentials are minted from, if they are.
pub fn mint_source(provider: &Provider) -> Option<MintSource<'_>> {
    if let Some(g) = provider.gcp() {
        return Some(MintSource::Gcp(&g.credentials));
    }
    match provider.aws().map(|a| &a.credentials) {
        Some(
            s @ (AwsCredentialSource::WebIdentity { .. } | AwsCredentialSource::Container { .. }),
        ) => Some(MintSource::Aws(s)),
        _ => None,
    }
}

/// The one exchange that mints a credential: where to send what. The caller does the I/O.
#[derive(Debug)]
pub struct MintRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
}

/// What a mint gave.
#[derive(Debug)]
pub enum Minted {
    /// A bearer token (Google), valid this many seconds.
    Bearer { token: String, expires_in_s: u64 },
    /// Temporary AWS keys, valid until this Unix time.
    AwsKeys {
        credentials: AwsCredentials,
        expires_at_s: i64,
    },
}

/// The mint request for `source` at `now_s` (Unix seconds). `read` reads a file the source
/// names (a projected token the kubelet rotates, so it is read at each mint).
pub fn mint_request(
    source: &MintSource<'_>,
    now_s: u64,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<MintRequest, String> {
    match source {
        MintSource::Gcp(creds) => {
            let req = super::vertex::token_request(creds, now_s).map_err(|e| e.to_string())?;
            Ok(MintRequest {
                method: req.method,
                url: req.url,
                headers: req
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect(),
                body: req.body.map(String::into_bytes),
            })
        }
        MintSource::Aws(AwsCredentialSource::WebIdentity {
            role_arn,
            token_file,
            session_name,
            sts_url,
        }) => {
            let token = read(token_file)
                .map_err(|e| format!("cannot read the web identity token {token_file}: {e}"))?;
            let (url, body) =
                super::bedrock::sts_request(sts_url, role_arn, session_name, token.trim());
            Ok(MintRequest {
                method: "POST",
                url,
                headers: vec![(
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                )],
                body: Some(body.into_bytes()),
            })
        }
        MintSource::Aws(AwsCredentialSource::Container {
            full_uri,
            token_file,
            token,
        }) => {
            let auth = match (token_file, token) {
                (Some(f), _) => Some(
                    read(f)
                        .map_err(|e| format!("cannot read the container token {f}: {e}"))?
                        .trim()
                        .to_string(),
                ),
                (None, Some(t)) => Some(t.expose().to_string()),
                (None, None) => None,
            };
            Ok(MintRequest {
                method: "GET",
                url: full_uri.clone(),
                headers: auth.map(|a| vec![("authorization", a)]).unwrap_or_default(),
                body: None,
            })
        }
        MintSource::Aws(AwsCredentialSource::Fixed(_)) => {
            Err("fixed credentials are not minted".into())
        }
    }
}

/// What the mint answered (`status`, `body`) means: the credential, or why there is none.
pub fn parse_minted(source: &MintSource<'_>, status: u16, body: &[u8]) -> Result<Minted, String> {
    match source {
        MintSource::Gcp(creds) => {
            if !(200..300).contains(&status) {
                let why = super::vertex::parse_token(body)
                    .err()
                    .map(|e| e.0)
                    .unwrap_or_default();
                let from = match creds {
                    GcpCredentials::ServiceAccount { .. } => "token endpoint",
                    GcpCredentials::MetadataServer { .. } => "metadata server",
                };
                return Err(format!("{from} answered {status}: {why}"));
            }
            let (token, expires_in_s) = super::vertex::parse_token(body).map_err(|e| e.0)?;
            Ok(Minted::Bearer {
                token,
                expires_in_s,
            })
        }
        MintSource::Aws(source) => {
            let parsed = match source {
                AwsCredentialSource::WebIdentity { .. } => {
                    super::bedrock::parse_sts(&String::from_utf8_lossy(body))
                }
                _ => super::bedrock::parse_container(body),
            };
            if !(200..300).contains(&status) {
                return Err(match parsed {
                    Err(e) => format!("credentials endpoint answered {status}: {e}"),
                    Ok(_) => format!("credentials endpoint answered {status}"),
                });
            }
            let t = parsed?;
            Ok(Minted::AwsKeys {
                credentials: t.credentials,
                expires_at_s: t.expires_s,
            })
        }
    }
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
