//! `twinroute check`: what a config will do, before any traffic does it.
//!
//! Static part: the candidate order for every model (and every route's paths) with all
//! providers healthy, plus warnings for mistakes the loader accepts but an operator would want
//! to hear about. Live part (`--live`): one authenticated model-listing call per provider, and
//! per offering whether it is listed, missing, refused or unreachable.

use crate::api::Endpoint;
use crate::catalog::ModelId;
use crate::config::{Config, Policy};
use crate::provider::upstream_path;
use crate::route::{self, NoHealth, RequestConstraints};
use std::fmt::Write;

/// The endpoints a model is listed under when no route names paths.
const DEFAULT_ENDPOINTS: [Endpoint; 2] = [Endpoint::ChatCompletions, Endpoint::Messages];

fn order(cfg: &Config, out: &mut String, model: ModelId, endpoint: Endpoint, policy: &Policy) {
    let Ok(cands) = route::candidates(
        model,
        &cfg.catalog,
        &cfg.providers,
        endpoint,
        policy,
        &RequestConstraints::default(),
        &NoHealth,
    ) else {
        return;
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
        let _ = writeln!(
            out,
            "    {}. {:<12} {:<50} {}  POST {}{}{}",
            n + 1,
            p.name,
            o.model_id,
            price,
            upstream_path(p, endpoint, &o.model_id),
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
        if p.key.is_none() {
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
        if !m.equivalents.is_empty() && !m.policy.allow_equivalents {
            w.push(format!(
                "model {}: equivalents listed but allow_equivalents is false (only a request \
                 header x-twinroute-allow-equivalents: true uses them)",
                m.name
            ));
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
                    .filter(|o| !endpoint.served_by(cfg.providers[o.provider].api))
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
            p.api.as_str(),
            if p.base.tls { "https" } else { "http" },
            p.base.host,
            p.base.port,
            p.base.path,
            p.region.as_deref().unwrap_or("-"),
            match &p.key_env {
                Some(v) => format!("${v} (set)"),
                None => "none".into(),
            },
        );
    }
    let _ = writeln!(
        out,
        "\nmodels (candidate order with every provider healthy):"
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
            order(cfg, &mut out, i, endpoint, &m.policy);
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
                order(cfg, &mut out, i, *endpoint, policy);
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
