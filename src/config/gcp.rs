//! `api: vertex`: project and location, the regional (or global) endpoint, and where access
//! tokens come from (a service-account key file, else the metadata server: GKE Workload
//! Identity, GCE). Tokens are minted and refreshed by `serve::credentials`.

use super::err;
use super::file::FileProvider;
use super::EnvSource;
use crate::model::{ConfigError, GcpConf, GcpCredentials, Secret};

/// A Vertex provider's project, location and token source. Fills in the regional (or global)
/// endpoint unless `base_url` or `endpoints` replace it (Private Service Connect, tests).
pub(super) fn vertex(
    path: &str,
    p: &mut FileProvider,
    env: &dyn EnvSource,
) -> Result<GcpConf, ConfigError> {
    let project = p
        .gcp_project
        .clone()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            err(
                format!("{path}.gcp_project"),
                "api: vertex needs gcp_project",
            )
        })?;
    let location = p
        .gcp_location
        .clone()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            err(
                format!("{path}.gcp_location"),
                "api: vertex needs gcp_location (a region such as us-east5, or global)",
            )
        })?;
    for (key, v) in [("gcp_project", &project), ("gcp_location", &location)] {
        if !v
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(err(
                format!("{path}.{key}"),
                "lowercase letters, digits and '-' only",
            ));
        }
    }
    if p.base_url.is_none() && p.endpoints.is_none() {
        p.base_url = Some(if location == "global" {
            "https://aiplatform.googleapis.com".to_string()
        } else {
            format!("https://{location}-aiplatform.googleapis.com")
        });
    }
    let file = p.gcp_credentials_file.clone().or_else(|| {
        env.get("GOOGLE_APPLICATION_CREDENTIALS")
            .filter(|v| !v.is_empty())
    });
    let credentials = match file {
        Some(file) => service_account(&format!("{path}.gcp_credentials_file"), &file)?,
        None => GcpCredentials::MetadataServer {
            host: env
                .get("GCE_METADATA_HOST")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "metadata.google.internal".to_string()),
        },
    };
    Ok(GcpConf {
        project,
        location,
        credentials,
    })
}

/// A Google service-account key file (`type: service_account`): what signing a token request
/// needs. A file that cannot be read or is not such a key is a config error: it was named.
fn service_account(path: &str, file: &str) -> Result<GcpCredentials, ConfigError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| err(path, format!("cannot read {file}: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(path, format!("{file} is not JSON: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    if field("type").as_deref() != Some("service_account") {
        return Err(err(
            path,
            format!("{file} is not a service-account key (type)"),
        ));
    }
    let (Some(client_email), Some(private_key)) = (field("client_email"), field("private_key"))
    else {
        return Err(err(
            path,
            format!("{file} lacks client_email or private_key"),
        ));
    };
    Ok(GcpCredentials::ServiceAccount {
        client_email,
        private_key_id: field("private_key_id"),
        private_key: Secret::new(private_key),
        token_uri: field("token_uri")
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
    })
}
