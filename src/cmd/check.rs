//! `twinroute check`: what a config will do, before any traffic does it.
//!
//! Static part: the candidate order for every model (and every route's paths) with all
//! providers healthy, plus warnings for mistakes the loader accepts but an operator would want
//! to hear about. Live part (`--live`): one authenticated model-listing call per provider, and
//! per offering whether it is listed, missing, refused or unreachable.

use crate::decide::route::{self, HealthSnapshot, RequestConstraints, RouteInput};
use crate::model::endpoint::Endpoint;
use crate::model::ModelId;
use crate::model::{AwsCredentialSource, AwsCredentials, Config, Policy};
use crate::wire::request::upstream_path;
use std::fmt::Write;

/// The endpoints a model is listed under when no route names paths.
const DEFAULT_ENDPOINTS: [Endpoint; 2] = [Endpoint::ChatCompletions, Endpoint::Messages];

/// One client route's candidates for a model, numbered from 1, under the route's own line
/// (`POST /v1/chat/completions:`); when there is none, why (the unset key variables, say).
fn order(cfg: &Config, out: &mut String, model: ModelId, endpoint: Endpoint, policy: &Policy) {
    let _ = writeln!(out, "    POST /v1{}:", endpoint.subpath());
    let cands = match route::candidates(&RouteInput {
        model,
        catalog: &cfg.catalog,
        providers: &cfg.providers,
        endpoint,
        policy,
        constraints: &RequestConstraints::default(),
        health: &HealthSnapshot::all_up(),
    }) {
        Ok(c) => c,
        Err(route::NoRoute::NoCredentials(reasons)) => {
            let _ = writeln!(out, "      no candidate: {}", reasons.join("; "));
            return;
        }
        Err(e) => {
            let name = &cfg.catalog.model(model).name;
            let _ = writeln!(out, "      no candidate: {}", e.message(name, endpoint));
            return;
        }
    };
    for (n, c) in cands.iter().enumerate() {
        let p = &cfg.providers[c.provider];
        let m = cfg.catalog.model(c.model);
        let o = &m.offerings[c.offering];
        let price = o
            .price
            .map(|p| format!("${}/${} per Mtok", p.input_per_mtok, p.output_per_mtok))
            .unwrap_or_else(|| "no price".into());
        let tag = match c.grade {
            Some(g) => format!("  ≈ {} grade {g}", m.name),
            None => String::new(),
        };
        // Served through translation: the provider is called on its own format's path.
        let translated = crate::wire::translate::Direction::between(endpoint, p.api());
        let path = upstream_path(
            p,
            translated.map_or(endpoint, |d| d.provider_endpoint()),
            &o.model_id,
            false,
        );
        let path = match translated {
            Some(d) => format!("{path} (translated {})", d.label()),
            None => path,
        };
        let _ = writeln!(
            out,
            "      {}. {:<12} {:<50} {}  POST {}{}{}",
            n + 1,
            p.name,
            o.model_id,
            price,
            path,
            if c.over_ceiling {
                "  (over cost ceiling)"
            } else {
                ""
            },
            tag
        );
    }
}

/// Mistakes the loader lets through but that change what traffic does.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut w = Vec::new();
    for p in &cfg.providers {
        // Only a provider configured with no credential at all sends requests without one (a
        // local server); one whose key variable is unset is left out of rotation instead, and
        // said so above.
        let keyless = p.key.is_none()
            && p.key_env.is_none()
            && p.credential_missing.is_none()
            && p.aws().is_none()
            && p.gcp().is_none()
            && p.endpoints
                .iter()
                .all(|e| e.key.is_none() && e.key_env.is_none());
        if keyless {
            w.push(format!(
                "provider {}: no api_key_env, requests go out without a key",
                p.name
            ));
        }
        if !p.tls_verify {
            w.push(format!("provider {}: TLS verification is off", p.name));
        }
    }
    for m in cfg.catalog.models() {
        for e in &m.equivalents {
            if e.grade < m.policy.min_grade {
                w.push(format!(
                    "model {}: equivalent {} has grade {} below min_grade {}: never used",
                    m.name, e.model, e.grade, m.policy.min_grade
                ));
            }
        }
    }
    for r in &cfg.routes {
        for path in &r.paths {
            let Some(endpoint) = Endpoint::from_path(path) else {
                continue;
            };
            for m in cfg.catalog.models() {
                let cannot: Vec<&str> = m
                    .offerings
                    .iter()
                    .filter(|o| !endpoint.served_by(cfg.providers[o.provider].api()))
                    .map(|o| cfg.providers[o.provider].name.as_str())
                    .collect();
                if !cannot.is_empty() && cannot.len() < m.offerings.len() {
                    w.push(format!(
                        "route {}: {path} cannot be served by {} for model {} (wire format)",
                        r.name,
                        cannot.join(", "),
                        m.name
                    ));
                }
            }
        }
    }
    w
}

/// The whole static report.
pub fn report(cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "config OK: {} providers, {} models, {} routes",
        cfg.providers.len(),
        cfg.catalog.models().len(),
        cfg.routes.len()
    );
    let _ = writeln!(out, "\nproviders:");
    for p in &cfg.providers {
        let _ = writeln!(
            out,
            "  {:<14} api={:<9} {}://{}:{}{}  region={}  key={}",
            p.name,
            p.api().as_str(),
            if p.base.tls { "https" } else { "http" },
            p.base.host,
            p.base.port,
            p.base.path,
            p.region.as_deref().unwrap_or("-"),
            match (&p.key_env, &p.credential_missing, &p.aws()) {
                (_, Some(why), _) => format!("MISSING ({why}): left out of rotation"),
                (_, None, Some(aws)) => match &aws.credentials {
                    AwsCredentialSource::Fixed(AwsCredentials::Bearer(_)) => format!(
                        "Bedrock API key $AWS_BEARER_TOKEN_BEDROCK (set), region {}",
                        aws.region
                    ),
                    AwsCredentialSource::WebIdentity { role_arn, sts_url, .. } => format!(
                        "SigV4 bedrock/{} with web identity (IRSA): role {role_arn} via {sts_url}",
                        aws.region
                    ),
                    AwsCredentialSource::Container { full_uri, .. } => format!(
                        "SigV4 bedrock/{} with container credentials (Pod Identity) from {full_uri}",
                        aws.region
                    ),
                    AwsCredentialSource::Fixed(AwsCredentials::Static { session_token, .. }) => format!(
                        "SigV4 bedrock/{} with $AWS_ACCESS_KEY_ID{} (set)",
                        aws.region,
                        if session_token.is_some() {
                            " + $AWS_SESSION_TOKEN"
                        } else {
                            ""
                        }
                    ),
                },
                (Some(v), None, None) => format!("${v} (set)"),
                (None, None, None) => "none".into(),
            },
        );
    }
    let without = cfg.without_credentials();
    if !without.is_empty() {
        let _ = writeln!(
            out,
            "\n{} provider(s) without a credential, left out of rotation (check --strict fails on this): {}",
            without.len(),
            without.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nmodels (candidate order per client route, with every provider healthy):"
    );
    for (i, m) in cfg.catalog.models().iter().enumerate() {
        let aliases = if m.aliases.is_empty() {
            String::new()
        } else {
            format!(" aliases={}", m.aliases.join(","))
        };
        let _ = writeln!(
            out,
            "  {}{}  strategy={} max_attempts={} equivalents={}",
            m.name,
            aliases,
            m.policy.strategy.as_str(),
            m.policy.max_attempts,
            if m.policy.allow_equivalents {
                "on"
            } else {
                "off"
            }
        );
        for endpoint in DEFAULT_ENDPOINTS {
            order(cfg, &mut out, ModelId(i), endpoint, &m.policy);
        }
    }
    for r in &cfg.routes {
        let headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            out,
            "\nroute {} (paths: {}; headers: {}):",
            r.name,
            if r.paths.is_empty() {
                "any".to_string()
            } else {
                r.paths.join(", ")
            },
            if headers.is_empty() {
                "any".to_string()
            } else {
                headers.join(", ")
            }
        );
        let endpoints: Vec<Endpoint> = if r.paths.is_empty() {
            DEFAULT_ENDPOINTS.to_vec()
        } else {
            r.paths
                .iter()
                .filter_map(|p| Endpoint::from_path(p))
                .collect()
        };
        for (i, m) in cfg.catalog.models().iter().enumerate() {
            let policy = &r.policies[i];
            let _ = writeln!(
                out,
                "  {}  strategy={} max_attempts={} equivalents={}",
                m.name,
                policy.strategy.as_str(),
                policy.max_attempts,
                if policy.allow_equivalents {
                    "on"
                } else {
                    "off"
                }
            );
            for endpoint in &endpoints {
                order(cfg, &mut out, ModelId(i), *endpoint, policy);
            }
        }
    }
    let w = warnings(cfg);
    if !w.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for line in w {
            let _ = writeln!(out, "  - {line}");
        }
    }
    out
}

/// What one provider's listing says about one offering.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveState {
    Listed,
    Missing,
    /// The provider answered but the listing is no full list (paged, empty, another shape).
    Unknown,
    AuthFailed(u16),
    /// Another non-2xx status.
    Error(u16),
    Unreachable(String),
    /// A cloud provider with nothing free to list: its credential could be minted (or is a
    /// fixed key, which only a real call can test).
    CredentialOk(String),
    /// Its credential source could not produce a credential.
    NoCredential(String),
}

impl LiveState {
    /// Could traffic reach this offering now, as far as the listing can tell?
    pub fn reachable(&self) -> bool {
        matches!(
            self,
            LiveState::Listed | LiveState::Unknown | LiveState::CredentialOk(_)
        )
    }

    pub fn label(&self) -> String {
        match self {
            LiveState::Listed => "listed".into(),
            LiveState::Missing => "missing".into(),
            LiveState::Unknown => "reachable (listing inconclusive)".into(),
            LiveState::AuthFailed(s) => format!("auth failed ({s})"),
            LiveState::Error(s) => format!("error ({s})"),
            LiveState::Unreachable(e) => format!("unreachable ({e})"),
            LiveState::CredentialOk(how) => format!("credential ok ({how}; no free listing)"),
            LiveState::NoCredential(e) => format!("no credential ({e})"),
        }
    }
}

/// `check --live`: one listing call per provider with its key, then a verdict per offering.
/// Returns the report and whether every model has at least one reachable twin.
pub async fn live(cfg: &Config) -> (String, bool) {
    use crate::health::probe::{probe_once, ProbeError};
    use crate::wire::listing::parse_listing;
    let connector = std::sync::Arc::new(pingora::connectors::http::Connector::new(None));
    let resolver = std::sync::Arc::new(crate::net::resolve::Resolver::default());
    // All providers at once: the slowest one bounds the wait, not the sum.
    let tasks: Vec<_> = cfg
        .providers
        .iter()
        .map(|p| {
            let (p, connector, resolver) = (p.clone(), connector.clone(), resolver.clone());
            // Every endpoint; the provider is as reachable as its best one.
            tokio::spawn(async move {
                let mut first_err = None;
                for i in 0..p.endpoints.len() {
                    match probe_once(&connector, &resolver, &p, i).await {
                        Ok(r) => return Ok(r),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                Err(first_err.unwrap_or(ProbeError::Unreachable("no endpoint".into())))
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(
            t.await
                .unwrap_or_else(|e| Err(ProbeError::Unreachable(format!("probe task: {e}")))),
        );
    }
    // Clouds with nothing free to probe: try each credential once instead.
    let tokens = crate::serve::credentials::Tokens::default();
    let net = crate::serve::credentials::Net {
        connector: &connector,
        resolver: &resolver,
    };
    let mut credentials: Vec<Option<LiveState>> = Vec::with_capacity(cfg.providers.len());
    for p in &cfg.providers {
        let is_cloud = matches!(
            p.api(),
            crate::model::ApiKind::Bedrock
                | crate::model::ApiKind::Vertex
                | crate::model::ApiKind::VertexOpenAi
        );
        credentials.push(if let Some(why) = &p.credential_missing {
            Some(LiveState::NoCredential(why.clone()))
        } else if crate::serve::credentials::refreshable(p) {
            Some(
                match tokens
                    .bearer(net, p, crate::serve::credentials::Need::Request)
                    .await
                {
                    Ok(t) => {
                        LiveState::CredentialOk(format!("minted, valid {} s", t.lifetime.as_secs()))
                    }
                    Err(e) => LiveState::NoCredential(e),
                },
            )
        } else if is_cloud {
            Some(LiveState::CredentialOk(
                "fixed key, not verifiable without a call".into(),
            ))
        } else {
            None
        });
    }
    let mut out = String::new();
    let _ = writeln!(out, "live check ({} providers):", cfg.providers.len());
    for ((p, r), c) in cfg.providers.iter().zip(&results).zip(&credentials) {
        if let Some(c) = c {
            let _ = writeln!(out, "  {:<14} credential: {}", p.name, c.label());
            continue;
        }
        let summary = match r {
            Ok((rtt, _)) => format!("ok in {} ms", rtt.as_millis()),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<14} GET {}  {summary}",
            p.name,
            crate::wire::request::probe_path(p)
        );
    }
    let mut all_ok = true;
    let _ = writeln!(out, "\noffering states:");
    for m in cfg.catalog.models() {
        let mut any = false;
        let _ = writeln!(out, "  {}", m.name);
        for o in &m.offerings {
            let p = &cfg.providers[o.provider];
            let state = match (&credentials[o.provider.0], &results[o.provider]) {
                (Some(c), _) => c.clone(),
                (None, r) => match r {
                    Ok((_, body)) => match parse_listing(body) {
                        Some(ids) if ids.contains(&o.model_id) => LiveState::Listed,
                        Some(_) => LiveState::Missing,
                        None => LiveState::Unknown,
                    },
                    Err(ProbeError::Status(s @ (401 | 403))) => LiveState::AuthFailed(*s),
                    Err(ProbeError::Status(s)) => LiveState::Error(*s),
                    Err(e) => LiveState::Unreachable(e.to_string()),
                },
            };
            any |= state.reachable();
            let _ = writeln!(
                out,
                "    {:<14} {:<50} {}",
                p.name,
                o.model_id,
                state.label()
            );
        }
        if !any {
            all_ok = false;
            let _ = writeln!(out, "    !! no reachable twin for {}", m.name);
        }
    }
    (out, all_ok)
}
