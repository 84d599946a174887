//! The YAML file as written by the operator: serde structs that mirror the file one to one.
//!
//! Nothing here is validated beyond its shape; `config::build` turns these into the runtime
//! model. Unknown keys are errors everywhere (`deny_unknown_fields`) so a typo never silently
//! disables a setting.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub threads: Option<usize>,
    pub max_body_bytes: Option<u64>,
    /// Largest non-streaming answer taken (default 32 MiB): it is read whole before the client
    /// sees a byte, and a larger one is a failed attempt (`response_too_large`).
    pub max_response_body_bytes: Option<u64>,
    /// Largest single stream event taken (default 4 MiB): an upstream event (an endless `data:`
    /// line) past it fails the attempt before the commit point and ends the stream with the
    /// error event after it.
    pub max_stream_event_bytes: Option<u64>,
    /// `Idempotency-Key` handling: how long answers are kept and how much memory they take.
    pub idempotency: Option<FileIdempotency>,
    /// Memory for the prompt cache, all entries together (default 64 MiB).
    pub cache_max_bytes: Option<u64>,
    /// Directory for state that must survive a restart (the background queue's job store).
    /// Unset: nothing is written to disk and nothing is queued.
    pub state_dir: Option<String>,
    /// The background queue's limits (used when `state_dir` is set).
    pub queue: Option<FileQueue>,
    /// Health verdicts, breaker counts, probation and drains shared with the other replicas
    /// through Redis. Unset: this process keeps its own state, and nothing needs Redis.
    pub shared_state: Option<FileSharedState>,
    /// Teams: client tokens that name a team, its allowed models, budget and rate limits.
    #[serde(default)]
    pub teams: Vec<FileTeam>,
    pub log_format: Option<String>,
    /// Seconds Pingora waits for in-flight requests on SIGTERM before it exits.
    pub grace_period_s: Option<u64>,
    /// Requests served at once; past it a fast 503 with Retry-After, never a queue.
    pub max_concurrent_requests: Option<usize>,
    /// Longest time a client may take to send its whole body.
    pub client_body_timeout_ms: Option<u64>,
    /// Longest time a client may take to send a whole request header (slowloris guard).
    pub client_header_timeout_ms: Option<u64>,
    /// Largest request header (request line and all fields) a client may send.
    pub max_request_header_bytes: Option<u64>,
    /// How long a keepalive client connection may wait idle for its next request.
    pub client_keepalive_timeout_ms: Option<u64>,
    /// How long a client may leave its answer unread (no room in its socket) before it is cut.
    pub client_send_timeout_ms: Option<u64>,
    /// Env var holding comma-separated client tokens; when set, every request needs one.
    pub client_tokens_env: Option<String>,
    /// Enable the admin listener's mutating routes (drain/undrain).
    pub admin_mutations: Option<bool>,
    /// Poll the config file for changes this often (SIGHUP always reloads); 0 turns polling off.
    pub reload_poll_ms: Option<u64>,
    #[serde(default)]
    pub providers: Vec<FileProvider>,
    #[serde(default)]
    pub models: Vec<FileModel>,
    pub policy: Option<FilePolicy>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSharedState {
    /// `redis://host:6379/0`, or `rediss://` for TLS.
    pub redis_url: Option<String>,
    /// The env var holding the URL, when it carries a password.
    pub redis_url_env: Option<String>,
    /// The URL is a seed node of a Redis Cluster.
    pub cluster: Option<bool>,
    /// Key prefix (default `twinroute`).
    pub namespace: Option<String>,
    /// One Redis call's bound (default 50).
    pub timeout_ms: Option<u64>,
    /// Replicas sharing team budgets (each serves its share while Redis is down; default 1).
    pub replicas: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTeam {
    pub name: String,
    /// Env var holding the team's comma-separated client tokens.
    pub tokens_env: String,
    /// Canonical model names (or aliases) the team may use; unset: any.
    pub models: Option<Vec<String>>,
    pub budget: Option<FileBudget>,
    pub limits: Option<FileLimits>,
    /// The team's policy layer.
    pub policy: Option<FilePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBudget {
    pub usd: f64,
    /// hour | day | month (UTC calendar windows).
    pub per: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// A per-feature route: requests it matches use its policy instead of the top-level one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: FileRouteMatch,
    pub policy: Option<FilePolicy>,
    pub zero_retention: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteMatch {
    /// Request paths (exact, e.g. `/v1/embeddings`); any of them matches.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Request headers that must all be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProvider {
    pub name: String,
    pub api: String,
    /// One endpoint; or `endpoints` for several (regions, keys).
    pub base_url: Option<String>,
    pub endpoints: Option<Vec<FileEndpoint>>,
    pub api_key_env: Option<String>,
    /// A file holding the key (a mounted secret); instead of `api_key_env`.
    pub api_key_file: Option<String>,
    pub region: Option<String>,
    /// Upstream requests in flight to this provider at most; past it, the next twin is used.
    pub max_connections: Option<usize>,
    /// Keep request and response bodies out of everything that outlives the request.
    pub zero_retention: Option<bool>,
    pub timeouts: Option<FileTimeouts>,
    pub probe: Option<FileProbe>,
    pub breaker: Option<FileBreaker>,
    /// `anthropic-version` header value for `api: anthropic`.
    pub anthropic_version: Option<String>,
    /// `api-version` query parameter for `api: azure`.
    pub api_version: Option<String>,
    /// Extra static headers sent to this provider (e.g. OpenRouter's `HTTP-Referer`).
    pub headers: Option<BTreeMap<String, String>>,
    /// TLS certificate verification; on unless explicitly turned off.
    pub tls_verify: Option<bool>,
    /// A missing credential is a config error (default: the provider is left out of rotation
    /// with a warning, so a catalog can list providers not every deployment has keys for).
    pub required: Option<bool>,
    /// `api: bedrock`: the region requests are signed for (else `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`).
    pub aws_region: Option<String>,
    /// `api: vertex`: the Google Cloud project and location (`us-east5`, `global`, ...).
    pub gcp_project: Option<String>,
    pub gcp_location: Option<String>,
    /// `api: vertex`: a service-account key file (else GOOGLE_APPLICATION_CREDENTIALS, else
    /// the metadata server).
    pub gcp_credentials_file: Option<String>,
    /// `api: vertex`: `anthropic` (Claude through rawPredict, the default) or `openai` (Gemini
    /// and other Model Garden models through the OpenAI-compatible endpoint).
    pub vertex_api: Option<String>,
    /// `max_tokens` sent to an Anthropic-format provider when a translated chat-completions
    /// request named none (the Messages API requires it).
    pub default_max_tokens: Option<u64>,
}

/// One endpoint of a provider's pool: a region, a deployment, or another key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEndpoint {
    pub url: String,
    pub region: Option<String>,
    pub weight: Option<usize>,
    /// This endpoint's key; the provider's when absent.
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub connect_ms: Option<u64>,
    pub first_byte_ms: Option<u64>,
    /// Longest silence allowed between two body reads once the response started.
    pub idle_ms: Option<u64>,
    /// Longest wait from sending the request to a stream's first content event (text, tool
    /// call or thinking delta); default `first_byte_ms`.
    pub first_token_ms: Option<u64>,
    /// Longest silence of a stream after its first content event; default `idle_ms`.
    pub stream_idle_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProbe {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Compare the probe's model listing with this provider's offerings.
    pub list_models: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBreaker {
    pub failures: Option<u32>,
    pub cooldown_ms: Option<u64>,
    pub max_cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModel {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub context_tokens: Option<u64>,
    #[serde(default)]
    pub offerings: Vec<FileOffering>,
    #[serde(default)]
    pub equivalents: Vec<FileEquivalent>,
    pub policy: Option<FilePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOffering {
    pub provider: String,
    pub model: String,
    pub price: Option<FilePrice>,
    pub weight: Option<f64>,
    pub context_tokens: Option<u64>,
    #[serde(default)]
    pub drop_params: Vec<String>,
    #[serde(default)]
    pub unsupported_params: Vec<String>,
    /// Request features this offering cannot honour although its format can carry them
    /// (`images`, `tools`): a request using one skips it.
    #[serde(default)]
    pub lacks: Vec<String>,
    /// Whether this offering continues a trailing assistant message (assistant prefill), so a
    /// broken stream can be completed from it; default by wire format and model family.
    pub prefill: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePrice {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEquivalent {
    pub model: String,
    pub grade: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    pub strategy: Option<String>,
    pub allow_equivalents: Option<bool>,
    pub min_grade: Option<f64>,
    pub max_cost_multiplier: Option<f64>,
    pub max_attempts: Option<u32>,
    pub request_timeout_ms: Option<u64>,
    pub backoff: Option<FileBackoff>,
    /// `fail` (default) or `degrade`: whether offerings over the cost ceiling are a last resort.
    pub on_ceiling: Option<String>,
    /// How long an offering that answered "model unavailable" stays out.
    pub offering_cooldown_ms: Option<u64>,
    /// Retry a transient failure (5xx, 529, reset) this many times on the same offering before
    /// the next twin (default 0).
    pub same_offering_retries: Option<u32>,
    /// A 429 whose Retry-After is at most this is waited out on the same offering (default 0:
    /// never wait, fail over at once).
    pub max_retry_after_wait_ms: Option<u64>,
    /// Override every provider's `timeouts.first_token_ms` for this route or model.
    pub first_token_ms: Option<u64>,
    /// Override every provider's `timeouts.stream_idle_ms` for this route or model.
    pub stream_idle_ms: Option<u64>,
    /// `error` (default): a stream that breaks after its first content ends with an error
    /// event; `continue`: it is completed from the next candidate that takes assistant prefill.
    pub stream_recovery: Option<String>,
    /// The prompt cache for this scope (off unless set).
    pub cache: Option<FileCache>,
    /// Background work for this scope: queued when no capacity is found.
    pub queue: Option<FilePolicyQueue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicyQueue {
    /// Every request of this scope is background work (default false: only those with
    /// `x-twinroute-priority: background`).
    pub background: Option<bool>,
    /// Without `Prefer: respond-async`, how long the connection is held for the job (default
    /// 30000) before 202 and its location.
    pub max_wait_ms: Option<u64>,
    /// A job not done this long after it was queued fails (default 86400).
    pub max_age_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQueue {
    /// Jobs waiting or running at most (default 10000); past it 503 `queue_full`.
    pub max_jobs: Option<u64>,
    /// Jobs started per second at most while the queue drains (default 5).
    pub drain_per_s: Option<f64>,
    /// The longest wait between two tries of a job that found no capacity (default 10000).
    pub retry_max_ms: Option<u64>,
    /// How long a finished job's answer stays at its location (default 3600).
    pub keep_done_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    /// How long an answer is served from the cache.
    pub ttl_s: u64,
    /// A larger answer is not kept (default 1 MiB).
    pub max_entry_bytes: Option<u64>,
    /// After the TTL, how long the answer may still be served when every candidate fails.
    pub stale_if_error_s: Option<u64>,
    /// Keep answers that call tools too (default false: a tool call acts on the world).
    pub tool_calls: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdempotency {
    /// `false`: the header is ignored (default true).
    pub enabled: Option<bool>,
    /// How long a successful answer is replayed for its key (default 3600).
    pub ttl_s: Option<u64>,
    /// Memory for kept answers, all keys together (default 64 MiB); least recently used go.
    pub max_bytes: Option<u64>,
    /// A larger answer is not kept (nor shared with a duplicate in flight); default 8 MiB.
    pub max_entry_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackoff {
    pub base_ms: Option<u64>,
    pub max_ms: Option<u64>,
}
