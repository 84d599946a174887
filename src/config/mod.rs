//! Loading the YAML file into the runtime model (`crate::model`).
//!
//! `file` mirrors the YAML; `build` checks it and resolves everything the request path needs
//! (secrets from the environment, durations, parsed upstream URLs, the catalog index) so the
//! proxy never re-parses or re-validates per request. Errors name the key path that is wrong.

mod aws;
pub mod file;
mod gcp;
mod provider;
mod shared_state;
mod teams;

use crate::model::catalog::{Catalog, Equivalent, Feature, Model, Offering, Price};
pub use crate::model::ConfigError;
use crate::model::{ApiKind, Config, LogFormat, OnCeiling, Policy, Route, Secret, Strategy};
use crate::model::{ModelId, ProviderId, StreamRecovery};
use file::{FileConfig, FilePolicy};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The comma-separated client tokens in env var `var` (at least one; `path` names the key).
fn tokens_from_env(path: &str, var: &str, env: &dyn EnvSource) -> Result<Vec<Secret>, ConfigError> {
    let tokens: Vec<Secret> = env
        .get(var)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Secret::new(t.to_string()))
        .collect();
    if tokens.is_empty() {
        return Err(err(
            path,
            format!("env var {var} is not set or holds no token"),
        ));
    }
    Ok(tokens)
}

/// A name a config gives (provider, team, namespace): non-empty, at most `max` bytes, letters,
/// digits, '-', '_' and '.' only.
fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Where secrets come from; a trait so tests can build configs without touching the process env.
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

pub fn load_file(path: &str) -> Result<Config, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| err("", format!("cannot read {path}: {e}")))?;
    parse(&text, &ProcessEnv)
}

/// Largest config file read: a catalog of every model is tens of KiB; more is a mistake.
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// The file's serde mirror, deserialized through `serde_path_to_error` so a shape error names
/// the key path it is at (`providers[0]: unknown field `colour``), as the loader's own errors do.
struct Tracked(FileConfig);

impl<'de> serde::Deserialize<'de> for Tracked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_path_to_error::deserialize(d)
            .map(Tracked)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    inner
                } else {
                    <D::Error as serde::de::Error>::custom(format!("{path}: {inner}"))
                }
            })
    }
}

pub fn parse(text: &str, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(err(
            "",
            format!(
                "config is {} bytes; at most {MAX_CONFIG_BYTES} are read",
                text.len()
            ),
        ));
    }
    // serde-saphyr: panic-free, with input budgets so a hostile or broken file (an alias bomb,
    // deep nesting, a document storm) is refused quickly instead of eating memory.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_depth: 32,
            max_nodes: 200_000,
            max_events: 1_000_000,
            max_aliases: 10_000,
            max_anchors: 10_000,
            max_total_scalar_bytes: MAX_CONFIG_BYTES,
        },
        with_snippet: false,
    };
    let Tracked(file) = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| err("", e.to_string().trim_start_matches("error: ").to_string()))?;
    build(file, env)
}

fn nonzero_ms(path: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match v {
        Some(0) => Err(err(path, "must be greater than 0")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_millis(default)),
    }
}

fn build_policy(path: &str, p: Option<&FilePolicy>, base: &Policy) -> Result<Policy, ConfigError> {
    let Some(p) = p else {
        return Ok(base.clone());
    };
    let mut out = base.clone();
    if let Some(s) = &p.strategy {
        out.strategy = Strategy::parse(s).ok_or_else(|| {
            err(
                format!("{path}.strategy"),
                format!(
                    "unknown strategy {s:?} (expected ordered, prefer_cost, prefer_latency or \
                     weighted)"
                ),
            )
        })?;
    }
    if let Some(v) = p.allow_equivalents {
        out.allow_equivalents = v;
    }
    if let Some(g) = p.min_grade {
        if !(g > 0.0 && g <= 1.0) {
            return Err(err(format!("{path}.min_grade"), "must be in (0, 1]"));
        }
        out.min_grade = g;
    }
    if let Some(m) = p.max_cost_multiplier {
        if !(m >= 1.0 && m.is_finite()) {
            return Err(err(
                format!("{path}.max_cost_multiplier"),
                "must be a number >= 1",
            ));
        }
        out.max_cost_multiplier = Some(m);
    }
    if let Some(a) = p.max_attempts {
        if a == 0 || a > 16 {
            return Err(err(
                format!("{path}.max_attempts"),
                "must be between 1 and 16",
            ));
        }
        out.max_attempts = a;
    }
    if let Some(ms) = p.request_timeout_ms {
        out.request_timeout = Some(nonzero_ms(
            &format!("{path}.request_timeout_ms"),
            Some(ms),
            0,
        )?);
    }
    if let Some(b) = &p.backoff {
        if let Some(ms) = b.base_ms {
            out.backoff.base = Duration::from_millis(ms);
        }
        if let Some(ms) = b.max_ms {
            out.backoff.max = Duration::from_millis(ms);
        }
        if out.backoff.max < out.backoff.base {
            return Err(err(format!("{path}.backoff"), "max_ms must be >= base_ms"));
        }
    }
    if let Some(v) = &p.on_ceiling {
        out.on_ceiling = match v.as_str() {
            "fail" => OnCeiling::Fail,
            "degrade" => OnCeiling::Degrade,
            other => {
                return Err(err(
                    format!("{path}.on_ceiling"),
                    format!("unknown value {other:?} (expected fail or degrade)"),
                ))
            }
        };
    }
    if let Some(ms) = p.offering_cooldown_ms {
        out.offering_cooldown = nonzero_ms(&format!("{path}.offering_cooldown_ms"), Some(ms), 0)?;
    }
    if let Some(n) = p.same_offering_retries {
        if n > 5 {
            return Err(err(
                format!("{path}.same_offering_retries"),
                "must be between 0 and 5",
            ));
        }
        out.same_offering_retries = n;
    }
    if let Some(ms) = p.max_retry_after_wait_ms {
        out.max_retry_after_wait = Duration::from_millis(ms);
    }
    if let Some(ms) = p.first_token_ms {
        out.first_token = Some(nonzero_ms(&format!("{path}.first_token_ms"), Some(ms), 0)?);
    }
    if let Some(ms) = p.stream_idle_ms {
        out.stream_idle = Some(nonzero_ms(&format!("{path}.stream_idle_ms"), Some(ms), 0)?);
    }
    if let Some(c) = &p.cache {
        if c.ttl_s == 0 {
            return Err(err(format!("{path}.cache.ttl_s"), "must be at least 1"));
        }
        out.cache = Some(crate::model::CachePolicy {
            ttl: Duration::from_secs(c.ttl_s),
            max_entry_bytes: c.max_entry_bytes.unwrap_or(1 << 20) as usize,
            stale_if_error: Duration::from_secs(c.stale_if_error_s.unwrap_or(0)),
            tool_calls: c.tool_calls.unwrap_or(false),
        });
    }
    if let Some(q) = &p.queue {
        if let Some(b) = q.background {
            out.queue.background = b;
        }
        if let Some(ms) = q.max_wait_ms {
            out.queue.max_wait = Duration::from_millis(ms.min(600_000));
        }
        if let Some(s) = q.max_age_s {
            if s == 0 || s > 30 * 86_400 {
                return Err(err(
                    format!("{path}.queue.max_age_s"),
                    "must be between 1 and 2592000",
                ));
            }
            out.queue.max_age = Duration::from_secs(s);
        }
    }
    if let Some(v) = &p.stream_recovery {
        out.stream_recovery = match v.as_str() {
            "error" => StreamRecovery::Error,
            "continue" => StreamRecovery::Continue,
            other => {
                return Err(err(
                    format!("{path}.stream_recovery"),
                    format!("unknown value {other:?} (expected error or continue)"),
                ))
            }
        };
    }
    Ok(out)
}

fn build_queue(
    state_dir: Option<&str>,
    f: Option<&file::FileQueue>,
) -> Result<Option<crate::model::QueueConf>, ConfigError> {
    let Some(dir) = state_dir else {
        if f.is_some() {
            return Err(err(
                "queue",
                "the background queue keeps its jobs on disk: set state_dir too",
            ));
        }
        return Ok(None);
    };
    if dir.is_empty() {
        return Err(err("state_dir", "must name a directory"));
    }
    let max_jobs = f.and_then(|f| f.max_jobs).unwrap_or(10_000);
    if max_jobs == 0 || max_jobs > 10_000_000 {
        return Err(err("queue.max_jobs", "must be between 1 and 10000000"));
    }
    let drain_per_s = f.and_then(|f| f.drain_per_s).unwrap_or(5.0);
    if !(drain_per_s.is_finite() && (0.01..=10_000.0).contains(&drain_per_s)) {
        return Err(err("queue.drain_per_s", "must be between 0.01 and 10000"));
    }
    let retry_max_ms = f.and_then(|f| f.retry_max_ms).unwrap_or(10_000);
    if !(100..=3_600_000).contains(&retry_max_ms) {
        return Err(err("queue.retry_max_ms", "must be between 100 and 3600000"));
    }
    let keep_done_s = f.and_then(|f| f.keep_done_s).unwrap_or(3600);
    if keep_done_s == 0 || keep_done_s > 30 * 86_400 {
        return Err(err("queue.keep_done_s", "must be between 1 and 2592000"));
    }
    Ok(Some(crate::model::QueueConf {
        dir: dir.into(),
        max_jobs: max_jobs as usize,
        drain_per_s,
        retry_max: Duration::from_millis(retry_max_ms),
        keep_done: Duration::from_secs(keep_done_s),
    }))
}

fn build_idempotency(
    f: Option<&file::FileIdempotency>,
) -> Result<Option<crate::model::IdempotencyConf>, ConfigError> {
    if f.and_then(|f| f.enabled) == Some(false) {
        return Ok(None);
    }
    let ttl_s = f.and_then(|f| f.ttl_s).unwrap_or(3600);
    if ttl_s == 0 || ttl_s > 7 * 86_400 {
        return Err(err("idempotency.ttl_s", "must be between 1 and 604800"));
    }
    let max_bytes = f.and_then(|f| f.max_bytes).unwrap_or(64 << 20);
    let max_entry_bytes = f.and_then(|f| f.max_entry_bytes).unwrap_or(8 << 20);
    if max_entry_bytes == 0 || max_entry_bytes > max_bytes || max_bytes > 1 << 34 {
        return Err(err(
            "idempotency.max_entry_bytes",
            "must be at least 1 and at most idempotency.max_bytes (itself at most 16 GiB)",
        ));
    }
    Ok(Some(crate::model::IdempotencyConf {
        ttl: Duration::from_secs(ttl_s),
        max_bytes,
        max_entry_bytes: max_entry_bytes as usize,
    }))
}

/// A provider's timeouts: each defaults from the one before it (first token and idle from
/// first byte, stream idle from idle).
pub fn build(file: FileConfig, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let listen = file.listen.unwrap_or_else(|| "127.0.0.1:4000".to_string());
    let admin_listen = file
        .admin_listen
        .unwrap_or_else(|| "127.0.0.1:9464".to_string());
    for (key, addr) in [("listen", &listen), ("admin_listen", &admin_listen)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(key, format!("{addr:?} is not an ip:port address")));
        }
    }
    let threads = file.threads.unwrap_or(2);
    if threads == 0 || threads > 256 {
        return Err(err("threads", "must be between 1 and 256"));
    }
    let max_response_body_bytes = file.max_response_body_bytes.unwrap_or(32 * 1024 * 1024);
    if max_response_body_bytes == 0 || max_response_body_bytes > 1 << 30 {
        return Err(err(
            "max_response_body_bytes",
            "must be between 1 and 1073741824",
        ));
    }
    let max_stream_event_bytes = file.max_stream_event_bytes.unwrap_or(4 * 1024 * 1024);
    if !(1024..=1 << 30).contains(&max_stream_event_bytes) {
        return Err(err(
            "max_stream_event_bytes",
            "must be between 1024 and 1073741824",
        ));
    }
    let max_body_bytes = file.max_body_bytes.unwrap_or(10 * 1024 * 1024);
    if max_body_bytes == 0 || max_body_bytes > 1 << 30 {
        return Err(err("max_body_bytes", "must be between 1 and 1073741824"));
    }
    let log_format = match file.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(err(
                "log_format",
                format!("unknown format {other:?} (expected text or json)"),
            ))
        }
    };
    if file.providers.is_empty() {
        return Err(err("providers", "at least one provider is required"));
    }
    let max_concurrent_requests = file.max_concurrent_requests.unwrap_or(1024);
    if max_concurrent_requests == 0 {
        return Err(err("max_concurrent_requests", "must be at least 1"));
    }
    // Pingora refuses headers past 1 MiB on its own; below 1 KiB no real client fits.
    let max_request_header_bytes = match file.max_request_header_bytes {
        None => 64 * 1024,
        Some(n) if (1024..=1024 * 1024).contains(&n) => n as usize,
        Some(n) => {
            return Err(err(
                "max_request_header_bytes",
                format!("{n} is out of range (1024 to 1048576)"),
            ))
        }
    };
    let client_tokens = match &file.client_tokens_env {
        None => Vec::new(),
        Some(var) => tokens_from_env("client_tokens_env", var, env)?,
    };
    let mut providers = Vec::with_capacity(file.providers.len());
    let mut names = HashSet::new();
    for (i, p) in file.providers.into_iter().enumerate() {
        let path = format!("providers[{i}]");
        if !names.insert(p.name.clone()) {
            return Err(err(
                format!("{path}.name"),
                format!("duplicate provider {:?}", p.name),
            ));
        }
        providers.push(Arc::new(provider::build_provider(
            ProviderId(i),
            &path,
            p,
            env,
        )?));
    }
    let policy = build_policy("policy", file.policy.as_ref(), &Policy::default())?;

    let mut models = Vec::with_capacity(file.models.len());
    for (mi, m) in file.models.iter().enumerate() {
        let path = format!("models[{mi}]");
        if m.name.is_empty() {
            return Err(err(format!("{path}.name"), "must not be empty"));
        }
        if m.offerings.is_empty() {
            return Err(err(
                format!("{path}.offerings"),
                "a model needs at least one offering",
            ));
        }
        if m.context_tokens == Some(0) {
            return Err(err(
                format!("{path}.context_tokens"),
                "must be greater than 0",
            ));
        }
        let mut offerings = Vec::with_capacity(m.offerings.len());
        for (oi, o) in m.offerings.iter().enumerate() {
            let opath = format!("{path}.offerings[{oi}]");
            let provider = providers
                .iter()
                .find(|p| p.name == o.provider)
                .ok_or_else(|| {
                    err(
                        format!("{opath}.provider"),
                        format!("unknown provider {:?}", o.provider),
                    )
                })?;
            if o.model.is_empty() {
                return Err(err(format!("{opath}.model"), "must not be empty"));
            }
            if provider.api() == ApiKind::Azure
                && !o
                    .model
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(
                    format!("{opath}.model"),
                    "an Azure deployment name may use only letters, digits, '-', '_' or '.'",
                ));
            }
            let price = match &o.price {
                Some(p) => {
                    let valid = |v: f64| v.is_finite() && v >= 0.0;
                    if !valid(p.input_per_mtok) || !valid(p.output_per_mtok) {
                        return Err(err(format!("{opath}.price"), "prices must be >= 0"));
                    }
                    Some(Price {
                        input_per_mtok: p.input_per_mtok,
                        output_per_mtok: p.output_per_mtok,
                    })
                }
                None => None,
            };
            let weight = o.weight.unwrap_or(1.0);
            if !(weight >= 0.0 && weight.is_finite()) {
                return Err(err(format!("{opath}.weight"), "must be >= 0"));
            }
            for (key, list) in [
                ("drop_params", &o.drop_params),
                ("unsupported_params", &o.unsupported_params),
            ] {
                if let Some(bad) = list.iter().find(|p| p.is_empty() || p.as_str() == "model") {
                    return Err(err(
                        format!("{opath}.{key}"),
                        format!("{bad:?} cannot be listed: twinroute needs `model` to route"),
                    ));
                }
            }
            if o.context_tokens == Some(0) {
                return Err(err(
                    format!("{opath}.context_tokens"),
                    "must be greater than 0",
                ));
            }
            let mut lacks = Vec::new();
            for (li, l) in o.lacks.iter().enumerate() {
                lacks.push(Feature::parse(l).ok_or_else(|| {
                    err(
                        format!("{opath}.lacks[{li}]"),
                        format!("unknown feature {l:?} (expected images or tools)"),
                    )
                })?);
            }
            offerings.push(Offering {
                provider: provider.id,
                model_id: o.model.clone(),
                price,
                weight,
                context_tokens: o.context_tokens,
                drop_params: o.drop_params.clone(),
                unsupported_params: o.unsupported_params.clone(),
                lacks,
                prefill: o.prefill,
            });
        }
        let mut equivalents = Vec::new();
        for (ei, e) in m.equivalents.iter().enumerate() {
            if !(e.grade > 0.0 && e.grade <= 1.0) {
                return Err(err(
                    format!("{path}.equivalents[{ei}].grade"),
                    "must be in (0, 1]",
                ));
            }
            equivalents.push(Equivalent {
                model: e.model.clone(),
                // Resolved by `Catalog::new` once every model is known.
                id: ModelId(0),
                grade: e.grade,
            });
        }
        models.push(Model {
            name: m.name.clone(),
            aliases: m.aliases.clone(),
            context_tokens: m.context_tokens,
            offerings,
            equivalents,
            policy: build_policy(&format!("{path}.policy"), m.policy.as_ref(), &policy)?,
        });
    }
    let catalog = Catalog::new(models)?;
    let mut routes = Vec::with_capacity(file.routes.len());
    let mut route_names = HashSet::new();
    for (ri, r) in file.routes.iter().enumerate() {
        let path = format!("routes[{ri}]");
        if r.name.is_empty() || !route_names.insert(r.name.clone()) {
            return Err(err(
                format!("{path}.name"),
                format!("must be non-empty and unique ({:?})", r.name),
            ));
        }
        if r.matcher.paths.is_empty() && r.matcher.headers.is_empty() {
            return Err(err(
                format!("{path}.match"),
                "needs `paths` or `headers` (a route matching everything would hide `policy`)",
            ));
        }
        for (pi, p) in r.matcher.paths.iter().enumerate() {
            if crate::model::endpoint::Endpoint::from_path(p).is_none() {
                return Err(err(
                    format!("{path}.match.paths[{pi}]"),
                    format!("{p:?} is not an endpoint twinroute serves"),
                ));
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &r.matcher.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                err(
                    format!("{path}.match.headers.{k}"),
                    "not a valid header name",
                )
            })?;
            headers.push((name, v.clone()));
        }
        // The route's policy applies over each model's own (route wins where it says something).
        let policies = catalog
            .models()
            .iter()
            .map(|m| build_policy(&format!("{path}.policy"), r.policy.as_ref(), &m.policy))
            .collect::<Result<Vec<_>, _>>()?;
        routes.push(Route {
            name: r.name.clone(),
            paths: r.matcher.paths.clone(),
            headers,
            policies,
            zero_retention: r.zero_retention.unwrap_or(false),
        });
    }
    Ok(Config {
        listen,
        admin_listen,
        threads,
        max_body_bytes: max_body_bytes as usize,
        max_response_body_bytes: max_response_body_bytes as usize,
        max_stream_event_bytes: max_stream_event_bytes as usize,
        idempotency: build_idempotency(file.idempotency.as_ref())?,
        shared_state: shared_state::build(file.shared_state.as_ref(), env)?,
        cache_max_bytes: file.cache_max_bytes.unwrap_or(64 << 20),
        queue: build_queue(file.state_dir.as_deref(), file.queue.as_ref())?,
        log_format,
        grace_period_s: file.grace_period_s.unwrap_or(20),
        max_concurrent_requests,
        client_body_timeout: nonzero_ms(
            "client_body_timeout_ms",
            file.client_body_timeout_ms,
            30_000,
        )?,
        client_header_timeout: nonzero_ms(
            "client_header_timeout_ms",
            file.client_header_timeout_ms,
            10_000,
        )?,
        max_request_header_bytes,
        client_keepalive_timeout: nonzero_ms(
            "client_keepalive_timeout_ms",
            file.client_keepalive_timeout_ms,
            60_000,
        )?,
        client_send_timeout: nonzero_ms(
            "client_send_timeout_ms",
            file.client_send_timeout_ms,
            60_000,
        )?,
        admin_mutations: file.admin_mutations.unwrap_or(false),
        reload_poll: match file.reload_poll_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => Some(Duration::from_millis(1000)),
        },
        teams: teams::build(&file.teams, &catalog, env, &client_tokens)?,
        client_tokens,
        providers,
        catalog,
        policy,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UpstreamBase;

    fn env() -> BTreeMap<String, String> {
        [("K".to_string(), "sk-test".to_string())]
            .into_iter()
            .collect()
    }

    const OK: &str = r#"
providers:
  - {name: a, api: openai, base_url: "http://127.0.0.1:1", api_key_env: K}
  - {name: b, api: anthropic, base_url: "https://api.anthropic.com/v1"}
models:
  - name: m
    aliases: [m-alias]
    offerings:
      - {provider: a, model: "org/m"}
"#;

    #[test]
    fn builds_a_minimal_config() {
        let c = parse(OK, &env()).unwrap();
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[0].key.as_ref().unwrap().expose(), "sk-test");
        assert_eq!(c.providers[1].base.path, "/v1");
        use crate::wire::request::probe_path;
        assert_eq!(probe_path(&c.providers[0]), "/v1/models");
        // Anthropic pages its listing: the probe asks for all of it.
        assert_eq!(probe_path(&c.providers[1]), "/v1/models?limit=1000");
        assert!(c.providers[1].base.tls);
        assert_eq!(c.providers[1].base.port, 443);
        assert_eq!(c.listen, "127.0.0.1:4000");
    }

    #[test]
    fn hostile_yaml_is_refused_by_the_parser_budgets() {
        // A "billion laughs" alias bomb: nine levels of ten aliases each.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let started = std::time::Instant::now();
        assert!(parse(&bomb, &env()).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&deep, &env()).is_err());
        let two_documents = format!("{OK}---\n{OK}");
        assert!(parse(&two_documents, &env()).is_err());
        let huge = "#".repeat(5 << 20);
        let e = parse(&huge, &env()).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_path() {
        let text = OK.replace("api_key_env: K}", "api_key_env: K, colour: red}");
        let e = parse(&text, &env()).unwrap_err().to_string();
        assert!(e.contains("providers[0]") && e.contains("colour"), "{e}");
    }

    #[test]
    fn header_limits_default_and_range() {
        let c = parse(OK, &env()).unwrap();
        assert_eq!(c.client_header_timeout, Duration::from_secs(10));
        assert_eq!(c.max_request_header_bytes, 64 * 1024);
        let c = parse(
            &format!("client_header_timeout_ms: 250\nmax_request_header_bytes: 2048\n{OK}"),
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.connection_limits().header_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(c.connection_limits().max_header_bytes, 2048);
        assert_eq!(c.connection_limits().idle_timeout, Duration::from_secs(60));
        for bad in [
            "max_request_header_bytes: 100",
            "max_request_header_bytes: 2000000",
        ] {
            let e = parse(&format!("{bad}\n{OK}"), &env()).unwrap_err();
            assert_eq!(e.path, "max_request_header_bytes", "{bad}");
        }
        let e = parse(&format!("client_header_timeout_ms: 0\n{OK}"), &env()).unwrap_err();
        assert_eq!(e.path, "client_header_timeout_ms");
    }

    #[test]
    fn missing_env_var_names_the_variable_not_a_value() {
        // `required: true`: a missing credential is a config error naming the variable.
        let required = OK.replace("api_key_env: K}", "api_key_env: K, required: true}");
        let e = parse(&required, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.path, "providers[0].api_key_env");
        assert!(e.reason.contains("K is not set"));
        // Otherwise the provider loads, out of rotation, with the reason.
        let c = parse(OK, &BTreeMap::new()).unwrap();
        assert_eq!(
            c.providers[0].credential_missing.as_deref(),
            Some("K is not set")
        );
        assert_eq!(c.without_credentials(), ["a (K is not set)"]);
        let with = parse(OK, &env()).unwrap();
        assert!(with.providers[0].credential_missing.is_none());
        assert!(with.without_credentials().is_empty());
        // A key file that does not exist is the same; one that cannot be read otherwise is not.
        let file = OK.replace(
            "api_key_env: K}",
            "api_key_file: /nonexistent/twinroute-key}",
        );
        let c = parse(&file, &BTreeMap::new()).unwrap();
        assert!(c.providers[0]
            .credential_missing
            .as_deref()
            .unwrap()
            .contains("does not exist"));
    }

    #[test]
    fn unknown_provider_in_offering() {
        let text = OK.replace("{provider: a,", "{provider: zz,");
        let e = parse(&text, &env()).unwrap_err();
        assert_eq!(e.path, "models[0].offerings[0].provider");
    }

    #[test]
    fn bad_strategy_and_grade() {
        let text = format!("{OK}policy: {{strategy: fastest}}\n");
        assert_eq!(parse(&text, &env()).unwrap_err().path, "policy.strategy");
        let text = OK.replace(
            "aliases: [m-alias]",
            "aliases: [m-alias]\n    equivalents: [{model: x, grade: 1.5}]",
        );
        assert_eq!(
            parse(&text, &env()).unwrap_err().path,
            "models[0].equivalents[0].grade"
        );
    }

    #[test]
    fn model_policy_inherits_top_level() {
        let text = format!(
            "{}policy: {{max_attempts: 5, strategy: prefer_cost}}\n",
            OK.replace(
                "aliases: [m-alias]",
                "aliases: [m-alias]\n    policy: {strategy: ordered}"
            )
        );
        let c = parse(&text, &env()).unwrap();
        let m = &c.catalog.models()[0];
        assert_eq!(m.policy.max_attempts, 5);
        assert_eq!(m.policy.strategy, Strategy::Ordered);
    }

    #[test]
    fn endpoint_pools() {
        let env: BTreeMap<String, String> = [("K", "k1"), ("K2", "k2")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let conf = |eps: &str| {
            format!("providers:\n  - {{name: a, api: openai, api_key_env: K, region: us, {eps}}}\nmodels:\n  - {{name: m, offerings: [{{provider: a, model: x}}]}}\n")
        };
        let c = parse(
            &conf("endpoints: [{url: \"https://one.example/v1\"}, {url: \"https://two.example/v1\", region: eu, weight: 3, api_key_env: K2}]"),
            &env,
        )
        .unwrap();
        let eps = &c.providers[0].endpoints;
        assert_eq!(eps.len(), 2);
        assert_eq!(
            eps[0].region.as_deref(),
            Some("us"),
            "inherits the provider's region"
        );
        assert_eq!(
            (eps[1].weight, eps[1].key.as_ref().unwrap().expose()),
            (3, "k2")
        );
        assert_eq!(eps[0].key.as_ref().unwrap().expose(), "k1");
        assert!(c.providers[0].in_region("eu"));
        let e = parse(
            &conf("base_url: \"http://x\", endpoints: [{url: \"http://y\"}]"),
            &env,
        )
        .unwrap_err();
        assert_eq!(e.path, "providers[0].endpoints");
        let e = parse(&conf("endpoints: []"), &env).unwrap_err();
        assert_eq!(e.path, "providers[0].base_url");
        let e = parse(
            &conf("endpoints: [{url: \"http://y/v1\"}, {url: \"http://z/openai/v1\"}]"),
            &env,
        )
        .unwrap_err();
        assert_eq!(e.path, "providers[0].endpoints[1].url");
        let c = parse(
            &conf("endpoints: [{url: \"http://y\", api_key_env: NOPE}]"),
            &env,
        )
        .unwrap();
        assert_eq!(
            c.providers[0].credential_missing.as_deref(),
            Some("NOPE is not set")
        );
    }

    #[test]
    fn base_url_forms() {
        let b = UpstreamBase::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!((b.tls, b.port, b.path.as_str()), (false, 8080, ""));
        assert_eq!(b.host_header(), "127.0.0.1:8080");
        let b = UpstreamBase::parse("https://api.groq.com/openai/v1").unwrap();
        assert_eq!(
            (b.host.as_str(), b.path.as_str()),
            ("api.groq.com", "/openai/v1")
        );
        assert_eq!(b.host_header(), "api.groq.com");
        assert!(UpstreamBase::parse("ftp://x").is_err());
        assert!(UpstreamBase::parse("https://x/v1?a=b").is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("sk-live-123".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    /// The stream and toolkit keys: provider timeouts with their defaults, policy overrides per
    /// route and model, and the bad values refused with their key path.
    #[test]
    fn stream_and_toolkit_keys() {
        let text = format!(
            "{OK}  - name: n\n    offerings: [{{provider: a, model: y, prefill: false}}]\n    policy: {{stream_recovery: continue, cache: {{ttl_s: 30, stale_if_error_s: 600}}}}\nroutes:\n  - name: chat\n    match: {{headers: {{x-twinroute-route: chat}}}}\n    policy: {{first_token_ms: 700, stream_idle_ms: 900}}\nidempotency: {{ttl_s: 120}}\n"
        );
        let c = parse(&text, &env()).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.timeouts.first_token, p.timeouts.first_byte);
        assert_eq!(p.timeouts.stream_idle, p.timeouts.idle);
        let n = c.catalog.resolve("n").unwrap();
        let model_policy = c.policy_for(None, None, n);
        assert_eq!(model_policy.stream_recovery, StreamRecovery::Continue);
        assert_eq!(
            model_policy.cache.unwrap().stale_if_error,
            Duration::from_secs(600)
        );
        assert_eq!(
            c.catalog.offering(n, crate::model::OfferingIdx(0)).prefill,
            Some(false)
        );
        let route = &c.routes[0];
        let routed = c.policy_for(Some(route), None, n);
        assert_eq!(routed.first_token, Some(Duration::from_millis(700)));
        assert_eq!(routed.stream_idle, Some(Duration::from_millis(900)));
        // The route's policy goes over the model's: what it does not say stays the model's.
        assert_eq!(routed.stream_recovery, StreamRecovery::Continue);
        assert_eq!(
            c.idempotency.as_ref().unwrap().ttl,
            Duration::from_secs(120)
        );
        for (bad, key) in [
            (
                "policy: {stream_recovery: maybe}\n",
                "policy.stream_recovery",
            ),
            ("policy: {cache: {ttl_s: 0}}\n", "policy.cache.ttl_s"),
            ("idempotency: {ttl_s: 0}\n", "idempotency.ttl_s"),
        ] {
            let e = parse(&format!("{OK}{bad}"), &env()).unwrap_err();
            assert_eq!(e.path, key, "{e}");
        }
    }

    #[test]
    fn shared_state_keys() {
        assert!(parse(OK, &env()).unwrap().shared_state.is_none());
        let c = parse(
            &format!("{OK}shared_state: {{redis_url_env: R, cluster: true, namespace: fleet-a}}\n"),
            &[(
                "R".to_string(),
                "rediss://:pw-hunter2@redis:6380/0".to_string(),
            )]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        )
        .unwrap();
        let s = c.shared_state.unwrap();
        assert_eq!(s.url.expose(), "rediss://:pw-hunter2@redis:6380/0");
        assert!(s.cluster);
        assert_eq!(s.namespace, "fleet-a");
        assert_eq!(s.timeout, Duration::from_millis(50));
        for (bad, key) in [
            ("shared_state: {}\n", "shared_state.redis_url"),
            (
                "shared_state: {redis_url: \"http://:pw-hunter2@h:1\"}\n",
                "shared_state.redis_url",
            ),
            (
                "shared_state: {redis_url: \"redis://\"}\n",
                "shared_state.redis_url",
            ),
            (
                "shared_state: {redis_url: \"redis://h\", redis_url_env: R}\n",
                "shared_state.redis_url",
            ),
            (
                "shared_state: {redis_url_env: NOPE}\n",
                "shared_state.redis_url_env",
            ),
            (
                "shared_state: {redis_url: \"redis://h\", namespace: \"a b\"}\n",
                "shared_state.namespace",
            ),
            (
                "shared_state: {redis_url: \"redis://h\", timeout_ms: 0}\n",
                "shared_state.timeout_ms",
            ),
            (
                "shared_state: {redis_url: \"redis://h\", pool: 3}\n",
                "shared_state",
            ),
        ] {
            let e = parse(&format!("{OK}{bad}"), &env()).unwrap_err();
            assert!(e.to_string().starts_with(key), "{bad}: {e}");
            assert!(
                !e.to_string().contains("hunter2"),
                "the URL's password in {e}"
            );
        }
    }

    #[test]
    fn team_keys() {
        let envs: BTreeMap<String, String> = [
            ("K", "sk-test"),
            ("T1", "tok-a, tok-b"),
            ("T2", "tok-c"),
            ("DUP", "tok-a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let team = |extra: &str| {
            format!("{OK}teams:\n  - {{name: search, tokens_env: T1{extra}}}\n  - {{name: ads, tokens_env: T2}}\n")
        };
        let c = parse(
            &team(", models: [m-alias], budget: {usd: 50, per: day}, limits: {requests_per_minute: 600}, policy: {max_attempts: 1}"),
            &envs,
        )
        .unwrap();
        let t = &c.teams[0];
        assert_eq!(t.tokens.len(), 2);
        assert_eq!(
            t.budget.as_ref().unwrap().per,
            crate::model::team::Window::Day
        );
        assert_eq!(t.limits.requests_per_minute, Some(600));
        let x = c.catalog.resolve("m").unwrap();
        assert!(t.allows(x));
        let search = c.team_of(b"tok-b").unwrap();
        assert_eq!(c.teams[search.0].name, "search");
        assert!(c.team_of(b"tok-z").is_none());
        // The team's policy layer, under a route's.
        assert_eq!(c.policy_for(None, Some(search), x).max_attempts, 1);
        assert_ne!(c.policy_for(None, None, x).max_attempts, 1);
        assert!(c.tokens_required());
        for (bad, key) in [
            (team(", models: [nope]"), "teams[0].models[0]"),
            (team(", budget: {usd: 5, per: week}"), "teams[0].budget.per"),
            (team(", budget: {usd: 0, per: day}"), "teams[0].budget.usd"),
            (team(", limits: {tokens_per_minute: 0}"), "teams[0].limits.tokens_per_minute"),
            (team(", tokens_env: NOPE"), "teams[0]"),
            (format!("{OK}teams:\n  - {{name: a, tokens_env: T1}}\n  - {{name: a, tokens_env: T2}}\n"), "teams[1].name"),
            (format!("{OK}teams:\n  - {{name: a, tokens_env: T1}}\n  - {{name: b, tokens_env: DUP}}\n"), "teams[1].tokens_env"),
        ] {
            let e = parse(&bad, &envs).unwrap_err();
            assert!(e.to_string().starts_with(key), "{bad}: {e}");
            assert!(!e.to_string().contains("tok-a"), "a token in {e}");
        }
    }

    #[test]
    fn queue_keys() {
        let c = parse(OK, &env()).unwrap();
        assert!(c.queue.is_none(), "no state_dir, no queue");
        let text = format!(
            "{OK}  - name: n\n    offerings: [{{provider: a, model: y}}]\n    policy: {{queue: {{background: true, max_wait_ms: 250, max_age_s: 60}}}}\nstate_dir: /var/lib/twinroute\nqueue: {{max_jobs: 50, drain_per_s: 2.5}}\n"
        );
        let c = parse(&text, &env()).unwrap();
        let q = c.queue.as_ref().unwrap();
        assert_eq!(q.dir, std::path::PathBuf::from("/var/lib/twinroute"));
        assert_eq!((q.max_jobs, q.drain_per_s), (50, 2.5));
        assert_eq!(q.keep_done, Duration::from_secs(3600));
        let n = c.catalog.resolve("n").unwrap();
        let p = c.policy_for(None, None, n).queue;
        assert!(p.background);
        assert_eq!(p.max_wait, Duration::from_millis(250));
        assert_eq!(p.max_age, Duration::from_secs(60));
        let m = c.catalog.resolve("m").unwrap();
        assert!(!c.policy_for(None, None, m).queue.background);
        for (bad, key) in [
            ("queue: {max_jobs: 5}\n", "queue"),
            ("state_dir: /x\nqueue: {max_jobs: 0}\n", "queue.max_jobs"),
            (
                "state_dir: /x\nqueue: {drain_per_s: 0}\n",
                "queue.drain_per_s",
            ),
            ("state_dir: \"\"\n", "state_dir"),
            (
                "policy: {queue: {max_age_s: 0}}\n",
                "policy.queue.max_age_s",
            ),
        ] {
            let e = parse(&format!("{OK}{bad}"), &env()).unwrap_err();
            assert_eq!(e.path, key, "{e}");
        }
    }
}

/// Property tests: the loader never panics, whatever the file holds.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "providers:\n  - {name: a, api: openai, base_url: \"http://127.0.0.1:1\", timeouts: {connect_ms: 5}}\nmodels:\n  - name: m\n    equivalents: [{model: n, grade: 0.9}]\n    offerings: [{provider: a, model: x, price: {input_per_mtok: 1, output_per_mtok: 2}}]\n  - name: n\n    offerings: [{provider: a, model: y}]\nroutes:\n  - {name: r, match: {paths: [/v1/embeddings]}}\n";

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse(&text, &BTreeMap::new());
        }

        #[test]
        fn mutated_valid_config_never_panics(at in any::<usize>(), byte in 0x20u8..0x7f, cut in any::<bool>()) {
            let mut raw = VALID.as_bytes().to_vec();
            let i = at % raw.len();
            if cut { raw.truncate(i) } else { raw[i] = byte }
            let _ = parse(&String::from_utf8_lossy(&raw), &BTreeMap::new());
        }
    }
}
