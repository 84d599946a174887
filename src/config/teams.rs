//! `teams`: each team's client tokens (from its env var), allowed models (resolved through the
//! catalog, aliases included), budget, rate limits and policy layer.

use super::file::FileTeam;
use super::{build_policy, err, is_name, tokens_from_env, EnvSource};
use crate::model::catalog::Catalog;
use crate::model::team::{Budget, Limits, Team, Window};
use crate::model::{ConfigError, Secret};
use std::collections::HashSet;

pub(super) fn build(
    teams: &[FileTeam],
    catalog: &Catalog,
    env: &dyn EnvSource,
    client_tokens: &[Secret],
) -> Result<Vec<Team>, ConfigError> {
    let mut out = Vec::with_capacity(teams.len());
    let mut names = HashSet::new();
    let mut seen: HashSet<String> = client_tokens
        .iter()
        .map(|t| t.expose().to_string())
        .collect();
    for (i, t) in teams.iter().enumerate() {
        let path = format!("teams[{i}]");
        if !is_name(&t.name, 64) {
            return Err(err(
                format!("{path}.name"),
                "1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if !names.insert(t.name.clone()) {
            return Err(err(
                format!("{path}.name"),
                format!("duplicate team {:?}", t.name),
            ));
        }
        let tokens = tokens_from_env(&format!("{path}.tokens_env"), &t.tokens_env, env)?;
        for token in &tokens {
            // A token naming two teams (or a team and no team) would make its limits a guess.
            if !seen.insert(token.expose().to_string()) {
                return Err(err(
                    format!("{path}.tokens_env"),
                    format!(
                        "a token in {} also belongs to another team or client_tokens_env",
                        t.tokens_env
                    ),
                ));
            }
        }
        let models = match &t.models {
            None => None,
            Some(list) => {
                let mut ids = Vec::with_capacity(list.len());
                for (j, name) in list.iter().enumerate() {
                    let id = catalog.resolve(name).ok_or_else(|| {
                        err(
                            format!("{path}.models[{j}]"),
                            format!("unknown model {name:?}"),
                        )
                    })?;
                    ids.push(id);
                }
                Some(ids)
            }
        };
        let budget = match &t.budget {
            None => None,
            Some(b) => {
                if !(b.usd.is_finite() && b.usd > 0.0) {
                    return Err(err(format!("{path}.budget.usd"), "must be above 0"));
                }
                let per = match b.per.as_str() {
                    "hour" => Window::Hour,
                    "day" => Window::Day,
                    "month" => Window::Month,
                    other => {
                        return Err(err(
                            format!("{path}.budget.per"),
                            format!("unknown window {other:?} (hour, day or month)"),
                        ))
                    }
                };
                Some(Budget { usd: b.usd, per })
            }
        };
        let limits = match &t.limits {
            None => Limits::default(),
            Some(l) => {
                for (key, v) in [
                    ("requests_per_minute", l.requests_per_minute),
                    ("tokens_per_minute", l.tokens_per_minute),
                ] {
                    if v == Some(0) {
                        return Err(err(format!("{path}.limits.{key}"), "must be at least 1"));
                    }
                }
                Limits {
                    requests_per_minute: l.requests_per_minute,
                    tokens_per_minute: l.tokens_per_minute,
                }
            }
        };
        // The team's policy over each model's own (a route's still wins: `Config::policy_for`).
        let policies = match &t.policy {
            None => None,
            Some(p) => {
                let mut v = Vec::with_capacity(catalog.len());
                for m in catalog.ids() {
                    v.push(build_policy(
                        &format!("{path}.policy"),
                        Some(p),
                        &catalog.model(m).policy,
                    )?);
                }
                Some(v)
            }
        };
        out.push(Team {
            name: t.name.clone(),
            tokens,
            models,
            budget,
            limits,
            policies,
        });
    }
    Ok(out)
}
