//! `api: bedrock`: the signing region, the regional endpoint, and the AWS credential chain in
//! the SDKs' order (a Bedrock API key, static keys, web identity (IRSA), container credentials
//! (EKS Pod Identity, ECS)). The keys themselves are minted and refreshed by
//! `serve::credentials`; here they are only located.

use super::err;
use super::file::FileProvider;
use super::EnvSource;
use crate::model::{AwsConf, AwsCredentialSource, AwsCredentials, ConfigError, Secret};

/// Region and credentials of a Bedrock provider; `Ok(None)` when no credentials were found and
/// the provider is not `required` (it is then left out of rotation). Fills in the regional
/// endpoint unless `base_url` or `endpoints` replace it (VPC endpoints, PrivateLink, tests):
/// the signature does not change with it.
pub(super) fn bedrock(
    path: &str,
    p: &mut FileProvider,
    env: &dyn EnvSource,
    required: bool,
) -> Result<Option<AwsConf>, ConfigError> {
    let region = p
        .aws_region
        .clone()
        .or_else(|| env.get("AWS_REGION"))
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            err(
                format!("{path}.aws_region"),
                "api: bedrock needs aws_region (or AWS_REGION / AWS_DEFAULT_REGION)",
            )
        })?;
    if !region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(err(format!("{path}.aws_region"), "not an AWS region name"));
    }
    if p.base_url.is_none() && p.endpoints.is_none() {
        p.base_url = Some(format!("https://bedrock-runtime.{region}.amazonaws.com"));
    }
    match credential_source(&region, env) {
        Some(credentials) => Ok(Some(AwsConf {
            region,
            credentials,
        })),
        None if required => Err(err(
            format!("{path}.api"),
            "api: bedrock found no AWS credentials (AWS_BEARER_TOKEN_BEDROCK, or \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        )),
        None => Ok(None),
    }
}

/// Why a Bedrock provider without credentials is out of rotation (`credential_missing`).
pub(super) const NO_CREDENTIALS: &str =
    "no AWS credentials: set AWS_BEARER_TOKEN_BEDROCK, AWS_ACCESS_KEY_ID and \
     AWS_SECRET_ACCESS_KEY, AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), or \
     AWS_CONTAINER_CREDENTIALS_FULL_URI (Pod Identity)";

/// The first credential source the environment names, in the AWS SDKs' order.
fn credential_source(region: &str, env: &dyn EnvSource) -> Option<AwsCredentialSource> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
    if let Some(token) = get("AWS_BEARER_TOKEN_BEDROCK") {
        return Some(AwsCredentialSource::Fixed(AwsCredentials::Bearer(
            Secret::new(token),
        )));
    }
    if let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        return Some(AwsCredentialSource::Fixed(AwsCredentials::Static {
            access_key_id: Secret::new(id),
            secret_access_key: Secret::new(secret),
            session_token: get("AWS_SESSION_TOKEN").map(Secret::new),
        }));
    }
    if let (Some(role_arn), Some(token_file)) =
        (get("AWS_ROLE_ARN"), get("AWS_WEB_IDENTITY_TOKEN_FILE"))
    {
        return Some(AwsCredentialSource::WebIdentity {
            role_arn,
            token_file,
            session_name: get("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "twinroute".to_string()),
            sts_url: get("AWS_ENDPOINT_URL_STS")
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com")),
        });
    }
    get("AWS_CONTAINER_CREDENTIALS_FULL_URI").map(|full_uri| AwsCredentialSource::Container {
        full_uri,
        token_file: get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        token: get("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(Secret::new),
    })
}
