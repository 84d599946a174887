//! `shared_state`: where the fleet's Redis is, under which namespace, and how long one call
//! may take. The URL is a secret (it may carry a password): no error repeats it.

use super::err;
use super::file::FileSharedState;
use super::EnvSource;
use crate::model::{ConfigError, Secret, SharedStateConf};
use std::time::Duration;

pub(super) fn build(
    f: Option<&FileSharedState>,
    env: &dyn EnvSource,
) -> Result<Option<SharedStateConf>, ConfigError> {
    let Some(f) = f else { return Ok(None) };
    let url = match (&f.redis_url, &f.redis_url_env) {
        (Some(url), None) => url.clone(),
        (None, Some(var)) => env.get(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            err(
                "shared_state.redis_url_env",
                format!("env var {var} is not set (or empty)"),
            )
        })?,
        (Some(_), Some(_)) => {
            return Err(err(
                "shared_state.redis_url",
                "set redis_url or redis_url_env, not both",
            ))
        }
        (None, None) => {
            return Err(err(
                "shared_state.redis_url",
                "shared_state needs redis_url (or redis_url_env)",
            ))
        }
    };
    let key = if f.redis_url.is_some() {
        "shared_state.redis_url"
    } else {
        "shared_state.redis_url_env"
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(err(key, "not a URL (redis://host:6379/0 or rediss://...)"));
    };
    if !matches!(scheme, "redis" | "rediss") {
        return Err(err(key, "the scheme must be redis:// or rediss:// (TLS)"));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(err(key, "the URL names no host"));
    }
    let namespace = f.namespace.clone().unwrap_or_else(|| "twinroute".into());
    if !super::is_name(&namespace, 64) {
        return Err(err(
            "shared_state.namespace",
            "1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    let timeout = match f.timeout_ms {
        None => Duration::from_millis(50),
        Some(ms @ 1..=10_000) => Duration::from_millis(ms),
        Some(_) => {
            return Err(err(
                "shared_state.timeout_ms",
                "must be between 1 and 10000",
            ))
        }
    };
    let replicas = match f.replicas {
        None => 1,
        Some(n @ 1..=10_000) => n,
        Some(_) => return Err(err("shared_state.replicas", "must be between 1 and 10000")),
    };
    Ok(Some(SharedStateConf {
        url: Secret::new(url),
        cluster: f.cluster.unwrap_or(false),
        namespace,
        timeout,
        replicas,
    }))
}
