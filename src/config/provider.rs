//! One provider from the file: its name, its vendor (the wire family and that family's own
//! settings: `aws` and `gcp` hold the cloud credential chains), its keys, its endpoints, and
//! the timeouts, probe and breaker every family shares.

use super::file::{self, FileProvider};
use super::{aws, err, gcp, nonzero_ms, EnvSource};
use crate::model::{
    ApiKind, BreakerConf, ConfigError, ProbeConf, Provider, ProviderEndpoint, ProviderId, Secret,
    Timeouts, UpstreamBase, Vendor,
};

/// The GA Azure OpenAI data-plane version most SDKs default to.
const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

fn provider_timeouts(path: &str, t: Option<&file::FileTimeouts>) -> Result<Timeouts, ConfigError> {
    let first_byte = nonzero_ms(
        &format!("{path}.timeouts.first_byte_ms"),
        t.and_then(|t| t.first_byte_ms),
        30_000,
    )?;
    let idle = nonzero_ms(
        &format!("{path}.timeouts.idle_ms"),
        t.and_then(|t| t.idle_ms),
        first_byte.as_millis() as u64,
    )?;
    Ok(Timeouts {
        connect: nonzero_ms(
            &format!("{path}.timeouts.connect_ms"),
            t.and_then(|t| t.connect_ms),
            2_000,
        )?,
        first_byte,
        idle,
        first_token: nonzero_ms(
            &format!("{path}.timeouts.first_token_ms"),
            t.and_then(|t| t.first_token_ms),
            first_byte.as_millis() as u64,
        )?,
        stream_idle: nonzero_ms(
            &format!("{path}.timeouts.stream_idle_ms"),
            t.and_then(|t| t.stream_idle_ms),
            idle.as_millis() as u64,
        )?,
    })
}

/// A provider's active health probe: on by default where the family has something free to
/// probe.
fn provider_probe(
    path: &str,
    api: ApiKind,
    pr: Option<&file::FileProbe>,
) -> Result<ProbeConf, ConfigError> {
    let probe = ProbeConf {
        // Bedrock Runtime has nothing free to probe: passive health only, unless asked.
        enabled: pr.and_then(|p| p.enabled).unwrap_or(!matches!(
            api,
            ApiKind::Bedrock | ApiKind::Vertex | ApiKind::VertexOpenAi
        )),
        // None: the family's model listing (`wire::request::probe_path`).
        path: pr.and_then(|p| p.path.clone()),
        interval: nonzero_ms(
            &format!("{path}.probe.interval_ms"),
            pr.and_then(|p| p.interval_ms),
            5_000,
        )?,
        timeout: nonzero_ms(
            &format!("{path}.probe.timeout_ms"),
            pr.and_then(|p| p.timeout_ms),
            2_000,
        )?,
        // Azure's listing names base models, not the deployments offerings use.
        list_models: pr
            .and_then(|p| p.list_models)
            .unwrap_or(api != ApiKind::Azure),
    };
    if probe.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
        return Err(err(format!("{path}.probe.path"), "must start with '/'"));
    }
    Ok(probe)
}

/// A provider's breaker settings (its endpoints' and its offerings').
fn provider_breaker(
    path: &str,
    br: Option<&file::FileBreaker>,
) -> Result<BreakerConf, ConfigError> {
    // A short first cooldown and a 30 s cap: an outage's probations come at most every 30 s
    // (jittered), so a recovered twin is back within 30 s of its recovery.
    let cooldown = nonzero_ms(
        &format!("{path}.breaker.cooldown_ms"),
        br.and_then(|b| b.cooldown_ms),
        5_000,
    )?;
    let max_cooldown = nonzero_ms(
        &format!("{path}.breaker.max_cooldown_ms"),
        br.and_then(|b| b.max_cooldown_ms),
        (cooldown.as_millis() as u64).max(30_000),
    )?;
    if max_cooldown < cooldown {
        return Err(err(
            format!("{path}.breaker.max_cooldown_ms"),
            "must be at least breaker.cooldown_ms",
        ));
    }
    Ok(BreakerConf {
        failures: match br.and_then(|b| b.failures) {
            Some(0) => {
                return Err(err(
                    format!("{path}.breaker.failures"),
                    "must be at least 1",
                ))
            }
            Some(n) => n,
            None => 5,
        },
        cooldown,
        max_cooldown,
    })
}

/// Build one provider (`path` names it in errors, `providers[i]`).
pub(super) fn build_provider(
    id: ProviderId,
    path: &str,
    p: FileProvider,
    env: &dyn EnvSource,
) -> Result<Provider, ConfigError> {
    if !super::is_name(&p.name, usize::MAX) {
        return Err(err(
            format!("{path}.name"),
            "must be non-empty and use only letters, digits, '-', '_' or '.'",
        ));
    }
    let mut p = p;
    let required = p.required.unwrap_or(false);
    let vendor = vendor(path, &mut p, env, required)?;
    let mut keys = Keys {
        env,
        required,
        missing: Vec::new(),
    };
    let key = match (&p.api_key_env, &p.api_key_file) {
        (Some(var), None) => keys.read_env(format!("{path}.api_key_env"), var)?,
        (None, Some(file)) => keys.read_file(format!("{path}.api_key_file"), file)?,
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{path}.api_key_file"),
                "set api_key_env or api_key_file, not both",
            ))
        }
    };
    let endpoints = endpoints(path, &p, &key, &mut keys)?;
    let base = endpoints[0].base.clone();
    let timeouts = provider_timeouts(path, p.timeouts.as_ref())?;
    let probe = provider_probe(path, vendor.api(), p.probe.as_ref())?;
    let breaker = provider_breaker(path, p.breaker.as_ref())?;
    let mut extra_headers = Vec::new();
    for (k, v) in p.headers.iter().flatten() {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| err(format!("{path}.headers.{k}"), "not a valid header name"))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| err(format!("{path}.headers.{k}"), "not a valid header value"))?;
        extra_headers.push((name, value));
    }
    if p.max_connections == Some(0) {
        return Err(err(format!("{path}.max_connections"), "must be at least 1"));
    }
    let mut missing = keys.missing;
    if matches!(vendor, Vendor::Bedrock { aws: None }) {
        missing.push(aws::NO_CREDENTIALS.to_string());
    }
    Ok(Provider {
        id,
        max_connections: p.max_connections,
        zero_retention: p.zero_retention.unwrap_or(false),
        name: p.name,
        vendor,
        base,
        key,
        key_env: p.api_key_env,
        region: p.region,
        endpoints,
        timeouts,
        probe,
        breaker,
        extra_headers,
        tls_verify: p.tls_verify.unwrap_or(true),
        credential_missing: (!missing.is_empty()).then(|| missing.join(", ")),
        default_max_tokens: match p.default_max_tokens {
            Some(0) => {
                return Err(err(
                    format!("{path}.default_max_tokens"),
                    "must be greater than 0",
                ))
            }
            Some(n) => n,
            None => 4096,
        },
    })
}

/// The provider's wire family (`api`, `vertex_api`) and the settings only that family reads;
/// a key meant for another family is an error.
fn vendor(
    path: &str,
    p: &mut FileProvider,
    env: &dyn EnvSource,
    required: bool,
) -> Result<Vendor, ConfigError> {
    let api = match p.api.as_str() {
        "openai" => ApiKind::OpenAi,
        "anthropic" => ApiKind::Anthropic,
        "azure" => ApiKind::Azure,
        "bedrock" => ApiKind::Bedrock,
        "vertex" => match p.vertex_api.as_deref() {
            None | Some("anthropic") => ApiKind::Vertex,
            Some("openai") => ApiKind::VertexOpenAi,
            Some(other) => {
                return Err(err(
                    format!("{path}.vertex_api"),
                    format!("unknown value {other:?} (expected anthropic or openai)"),
                ))
            }
        },
        other => {
            return Err(err(
                format!("{path}.api"),
                format!(
                    "unknown api {other:?} (expected openai, anthropic, azure, bedrock or vertex)"
                ),
            ))
        }
    };
    let vertex = matches!(api, ApiKind::Vertex | ApiKind::VertexOpenAi);
    for (key, set) in [
        ("gcp_project", p.gcp_project.is_some()),
        ("gcp_location", p.gcp_location.is_some()),
        ("gcp_credentials_file", p.gcp_credentials_file.is_some()),
        ("vertex_api", p.vertex_api.is_some()),
    ] {
        if set && !vertex {
            return Err(err(format!("{path}.{key}"), "only for api: vertex"));
        }
    }
    if p.aws_region.is_some() && api != ApiKind::Bedrock {
        return Err(err(format!("{path}.aws_region"), "only for api: bedrock"));
    }
    if let Some(v) = &p.api_version {
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(err(
                format!("{path}.api_version"),
                "use letters, digits and '-' only",
            ));
        }
    }
    Ok(match api {
        ApiKind::OpenAi => Vendor::OpenAi,
        ApiKind::Anthropic => Vendor::Anthropic {
            version: p
                .anthropic_version
                .clone()
                .unwrap_or_else(|| "2023-06-01".to_string()),
        },
        ApiKind::Azure => Vendor::Azure {
            api_version: p
                .api_version
                .clone()
                .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_string()),
        },
        ApiKind::Bedrock => Vendor::Bedrock {
            aws: aws::bedrock(path, p, env, required)?,
        },
        ApiKind::Vertex | ApiKind::VertexOpenAi => Vendor::Vertex {
            gcp: gcp::vertex(path, p, env)?,
            openai: api == ApiKind::VertexOpenAi,
        },
    })
}

/// Reads a provider's keys. A key that is not there is a config error only for `required:
/// true`; otherwise the provider is left out of rotation (`credential_missing`, the reasons
/// gathered in `missing`) with a warning.
struct Keys<'e> {
    env: &'e dyn EnvSource,
    required: bool,
    missing: Vec<String>,
}

impl Keys<'_> {
    fn read_env(&mut self, key_path: String, var: &str) -> Result<Option<Secret>, ConfigError> {
        match self.env.get(var) {
            Some(v) if !v.is_empty() => {
                if http::HeaderValue::from_str(&v).is_err() {
                    return Err(err(
                        key_path,
                        format!("env var {var} holds characters not allowed in a header"),
                    ));
                }
                Ok(Some(Secret::new(v)))
            }
            _ if self.required => Err(err(
                key_path,
                format!("env var {var} is not set (or empty)"),
            )),
            _ => {
                self.missing.push(format!("{var} is not set"));
                Ok(None)
            }
        }
    }

    fn read_file(&mut self, key_path: String, file: &str) -> Result<Option<Secret>, ConfigError> {
        let v = match std::fs::read_to_string(file) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.required => {
                self.missing.push(format!("{file} does not exist"));
                return Ok(None);
            }
            Err(e) => return Err(err(key_path.clone(), format!("cannot read {file}: {e}"))),
        };
        // Mounted secrets usually end with a newline.
        let v = v.trim();
        if v.is_empty() || http::HeaderValue::from_str(v).is_err() {
            return Err(err(
                key_path,
                format!("{file} is empty or holds characters not allowed in a header"),
            ));
        }
        Ok(Some(Secret::new(v.to_string())))
    }
}

/// The provider's endpoints: `base_url` alone, or the `endpoints` list (one API root path for
/// all, weights, each with the provider's key unless it names its own).
fn endpoints(
    path: &str,
    p: &FileProvider,
    key: &Option<Secret>,
    keys: &mut Keys<'_>,
) -> Result<Vec<ProviderEndpoint>, ConfigError> {
    match (&p.base_url, &p.endpoints) {
        (Some(url), None) => Ok(vec![ProviderEndpoint {
            url: url.clone(),
            base: UpstreamBase::parse(url).map_err(|r| err(format!("{path}.base_url"), r))?,
            region: p.region.clone(),
            weight: 1,
            key: key.clone(),
            key_env: p.api_key_env.clone(),
        }]),
        (None, Some(list)) if !list.is_empty() => {
            let mut out: Vec<ProviderEndpoint> = Vec::with_capacity(list.len());
            for (i, e) in list.iter().enumerate() {
                let epath = format!("{path}.endpoints[{i}]");
                let base =
                    UpstreamBase::parse(&e.url).map_err(|r| err(format!("{epath}.url"), r))?;
                if let Some(first) = out.first() {
                    if first.base.path != base.path {
                        return Err(err(
                            format!("{epath}.url"),
                            format!(
                                "every endpoint of a provider must have the same API root path \
                                 ({:?} here, {:?} on endpoints[0])",
                                base.path, first.base.path
                            ),
                        ));
                    }
                }
                let weight = e.weight.unwrap_or(1);
                if weight == 0 || weight > 1000 {
                    return Err(err(format!("{epath}.weight"), "must be between 1 and 1000"));
                }
                let (key, key_env) = match (&e.api_key_env, &e.api_key_file) {
                    (Some(var), _) => (
                        keys.read_env(format!("{epath}.api_key_env"), var)?,
                        Some(var.clone()),
                    ),
                    (None, Some(file)) => {
                        (keys.read_file(format!("{epath}.api_key_file"), file)?, None)
                    }
                    (None, None) => (key.clone(), p.api_key_env.clone()),
                };
                out.push(ProviderEndpoint {
                    url: e.url.clone(),
                    base,
                    region: e.region.clone().or_else(|| p.region.clone()),
                    weight,
                    key,
                    key_env,
                });
            }
            Ok(out)
        }
        (Some(_), Some(_)) => Err(err(
            format!("{path}.endpoints"),
            "set base_url or endpoints, not both",
        )),
        _ => Err(err(
            format!("{path}.base_url"),
            "a provider needs base_url or a non-empty endpoints list",
        )),
    }
}
