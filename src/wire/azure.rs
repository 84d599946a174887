//! Azure OpenAI (classic deployments API): the model ID is the deployment name in the path,
//! `api-version` is a query parameter, and the key goes in `api-key`.

use crate::model::endpoint::Endpoint;
use crate::model::Secret;
use pingora::http::RequestHeader;
use pingora::Result;

/// The resource's model listing (base models, not deployments: listings are not compared).
pub fn listing_path(base_path: &str, api_version: &str) -> String {
    format!("{base_path}/openai/models?api-version={api_version}")
}

pub fn path(base_path: &str, api_version: &str, endpoint: Endpoint, deployment: &str) -> String {
    // Deployment names are validated to [A-Za-z0-9._-] at config load: no escaping needed.
    format!(
        "{base_path}/openai/deployments/{deployment}{}?api-version={api_version}",
        endpoint.subpath(),
    )
}

pub fn authorize(key: Option<&Secret>, req: &mut RequestHeader) -> Result<()> {
    if let Some(key) = key {
        req.insert_header("api-key", key.expose())?;
    }
    Ok(())
}
