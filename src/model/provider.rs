//! Providers as the request path sees them: wire format, endpoints, keys, timeouts, probe and
//! breaker settings, all resolved at load time.

use crate::model::ids::ProviderId;
use std::fmt;
use std::time::Duration;

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    OpenAi,
    Anthropic,
    Azure,
    /// AWS Bedrock Runtime (Anthropic models, SigV4).
    Bedrock,
    /// Google Vertex AI, Anthropic publisher models (rawPredict, OAuth2 bearer tokens).
    Vertex,
    /// Google Vertex AI's OpenAI-compatible endpoint (`vertex_api: openai`): Gemini and other
    /// Model Garden models as chat completions, same tokens.
    VertexOpenAi,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::OpenAi => "openai",
            ApiKind::Anthropic => "anthropic",
            ApiKind::Azure => "azure",
            ApiKind::Bedrock => "bedrock",
            ApiKind::Vertex => "vertex",
            ApiKind::VertexOpenAi => "vertex-openai",
        }
    }
}

/// What one vendor's wire needs beyond what every provider has: each family's own settings,
/// resolved at load time. `ApiKind` is its name (`Provider::api`).
#[derive(Debug, Clone, PartialEq)]
pub enum Vendor {
    OpenAi,
    /// `anthropic_version` (the `anthropic-version` header unless the client sent one).
    Anthropic {
        version: String,
    },
    /// `api_version` (the `api-version` query parameter).
    Azure {
        api_version: String,
    },
    /// Region and credentials; `None` when no AWS credentials were found (the provider is then
    /// out of rotation, `credential_missing` says why).
    Bedrock {
        aws: Option<AwsConf>,
    },
    /// Project, location and where access tokens come from; `openai` for `vertex_api: openai`.
    Vertex {
        gcp: GcpConf,
        openai: bool,
    },
}

impl Vendor {
    pub fn api(&self) -> ApiKind {
        match self {
            Vendor::OpenAi => ApiKind::OpenAi,
            Vendor::Anthropic { .. } => ApiKind::Anthropic,
            Vendor::Azure { .. } => ApiKind::Azure,
            Vendor::Bedrock { .. } => ApiKind::Bedrock,
            Vendor::Vertex { openai: false, .. } => ApiKind::Vertex,
            Vendor::Vertex { openai: true, .. } => ApiKind::VertexOpenAi,
        }
    }
}

/// Where an `api: bedrock` provider signs for.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsConf {
    /// The signing region (`aws_region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`).
    pub region: String,
    pub credentials: AwsCredentialSource,
}

/// Where an `api: bedrock` provider's credentials come from, in the AWS SDKs' order.
#[derive(Debug, Clone, PartialEq)]
pub enum AwsCredentialSource {
    /// Fixed for the process: a Bedrock API key or static keys.
    Fixed(AwsCredentials),
    /// Web identity (EKS IRSA): the projected token file exchanged at STS
    /// (AssumeRoleWithWebIdentity) for temporary keys, refreshed before they expire.
    WebIdentity {
        role_arn: String,
        token_file: String,
        session_name: String,
        /// `AWS_ENDPOINT_URL_STS`, else the regional STS endpoint.
        sts_url: String,
    },
    /// Container credentials (EKS Pod Identity, ECS): `GET full_uri` with the authorization
    /// token (read from the file each time: it rotates) for temporary keys.
    Container {
        full_uri: String,
        token_file: Option<String>,
        token: Option<Secret>,
    },
}

/// AWS credentials, in the SDKs' order of precedence for what twinroute supports so far.
#[derive(Debug, Clone, PartialEq)]
pub enum AwsCredentials {
    /// A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`), sent as a bearer token.
    Bearer(Secret),
    /// Static keys (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`).
    Static {
        access_key_id: Secret,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
}

/// Where an `api: vertex` provider sends requests and gets its OAuth2 access tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GcpConf {
    pub project: String,
    /// A region (`us-east5`) or `global`.
    pub location: String,
    pub credentials: GcpCredentials,
}

/// The source of Vertex access tokens (minted and refreshed off the request path).
#[derive(Debug, Clone, PartialEq)]
pub enum GcpCredentials {
    /// A service-account key file: an RS256-signed JWT exchanged at `token_uri`.
    ServiceAccount {
        client_email: String,
        private_key_id: Option<String>,
        /// PKCS#8 PEM.
        private_key: Secret,
        token_uri: String,
    },
    /// The metadata server (GKE Workload Identity, GCE): `http://{host}/computeMetadata/v1/...`.
    MetadataServer { host: String },
}

/// A provider API key. Its `Debug`/`Display` never show the value, so it cannot leak
/// through a log line or an error message by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Whether a presented credential is one of `tokens`: compared in constant time, and with every
/// token whichever matches, so the time says nothing of which one or how much of it matched.
pub fn presented_matches(presented: &[u8], tokens: &[Secret]) -> bool {
    use subtle::ConstantTimeEq;
    let mut ok = subtle::Choice::from(0u8);
    for t in tokens {
        ok |= presented.ct_eq(t.expose().as_bytes());
    }
    ok.into()
}

/// Config comparison only (a reload deciding whether a provider changed), never a check of a
/// presented credential: those use `presented_matches`.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a provider lives, parsed once from `base_url`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamBase {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash; empty when the URL has no path.
    pub path: String,
    /// The `Host` header value, formed once here rather than on every request.
    host_header: String,
}

impl UpstreamBase {
    pub fn parse(url: &str) -> Result<UpstreamBase, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a valid URL ({e})"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("scheme must be http or https".into()),
        };
        let host = uri
            .host()
            .ok_or_else(|| "URL has no host".to_string())?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err("base_url must not carry a query string".into());
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path().trim_end_matches('/').to_string();
        let host_header = host_header(&host, port, tls);
        Ok(UpstreamBase {
            tls,
            host,
            port,
            path,
            host_header,
        })
    }

    /// `Host` header value: the port is shown only when it is not the scheme's default.
    pub fn host_header(&self) -> &str {
        &self.host_header
    }
}

fn host_header(host: &str, port: u16, tls: bool) -> String {
    let default = if tls { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default {
        host
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// From sending the request to a stream's first content event.
    pub first_token: Duration,
    /// Longest silence of a stream once committed (after its first content event).
    pub stream_idle: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConf {
    pub enabled: bool,
    /// `None`: the model listing of the provider's wire family (`wire::request::probe_path`).
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Compare the listing the probe returns with the provider's offerings.
    pub list_models: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConf {
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

/// One endpoint of a provider: where requests go and with which key.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderEndpoint {
    /// As written in the config (no secrets in it), for `/status` and logs.
    pub url: String,
    pub base: UpstreamBase,
    pub region: Option<String>,
    pub weight: usize,
    pub key: Option<Secret>,
    pub key_env: Option<String>,
}

/// One upstream provider, fully resolved.
#[derive(Debug)]
pub struct Provider {
    /// Its place in `Config::providers`; a compact id on the hot path.
    pub id: ProviderId,
    pub name: String,
    /// The wire family and its own settings.
    pub vendor: Vendor,
    pub base: UpstreamBase,
    pub key: Option<Secret>,
    pub key_env: Option<String>,
    pub region: Option<String>,
    pub timeouts: Timeouts,
    pub probe: ProbeConf,
    pub breaker: BreakerConf,
    pub extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub tls_verify: bool,
    /// Why this provider has no usable credential (`OPENAI_API_KEY is not set`): it is left
    /// out of rotation. Only for providers without `required: true`.
    pub credential_missing: Option<String>,
    /// `max_tokens` for a translated request that sent none (Messages requires one).
    pub default_max_tokens: u64,
    /// At least one; `base`, `key` and `region` above are the first one's (all share the path).
    pub endpoints: Vec<ProviderEndpoint>,
    /// Upstream requests in flight at most (`None`: unbounded).
    pub max_connections: Option<usize>,
    /// Bodies of requests to this provider outlive nothing: see `forward` and `proxy`.
    pub zero_retention: bool,
}

impl Provider {
    /// The wire format this provider speaks.
    pub fn api(&self) -> ApiKind {
        self.vendor.api()
    }

    /// `api: bedrock` with credentials: the signing region and where keys come from.
    pub fn aws(&self) -> Option<&AwsConf> {
        match &self.vendor {
            Vendor::Bedrock { aws } => aws.as_ref(),
            _ => None,
        }
    }

    /// `api: vertex`: project, location and where access tokens come from.
    pub fn gcp(&self) -> Option<&GcpConf> {
        match &self.vendor {
            Vendor::Vertex { gcp, .. } => Some(gcp),
            _ => None,
        }
    }
    /// Whether `other` (from another config) is the same upstream in every setting: only its
    /// place in the provider list may differ. A reload keeps the health of such providers.
    pub fn same_upstream(&self, other: &Provider) -> bool {
        self.name == other.name
            && self.vendor == other.vendor
            && self.base == other.base
            && self.key == other.key
            && self.key_env == other.key_env
            && self.region == other.region
            && self.timeouts == other.timeouts
            && self.probe == other.probe
            && self.breaker == other.breaker
            && self.extra_headers == other.extra_headers
            && self.tls_verify == other.tls_verify
            && self.default_max_tokens == other.default_max_tokens
            && self.credential_missing == other.credential_missing
            && self.endpoints == other.endpoints
            && self.max_connections == other.max_connections
            && self.zero_retention == other.zero_retention
    }

    /// Whether any endpoint is in `region`.
    pub fn in_region(&self, region: &str) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.region.as_deref() == Some(region))
    }
}
