//! What routing makes of a request before anything goes upstream: its control headers and
//! route, its model, the providers it could use (the body parsed only when one of them needs
//! it), their order by health (`decide::route` over the health snapshot), and what may be kept
//! of it (`Plan::keep_nothing`). Pure decisions are `decide::route`; this reads the request.

use crate::decide::route::{self, Acceptable, RequestConstraints, RouteInput};
use crate::model::endpoint::Endpoint;
use crate::model::Strategy;
use crate::observe::access_log::RequestLog;
use crate::serve::forward;
use crate::serve::names::{self, HDR_PROVIDER, HDR_ROUTE, HDR_STRATEGY};
use crate::serve::state::{Generation, Shared};
use crate::wire::body::RequestBody;
use crate::wire::errors::{truncate, ErrorKind, GatewayError};
use crate::wire::translate::{self, Direction};
use pingora::proxy::Session;
use tokio::time::Instant;

/// An `x-twinroute-*` control header's text. One twinroute cannot read is refused (400), never
/// ignored: a pin that silently fell back to failover would send the request where the client
/// said it must not go. Its value is not echoed (clients have pasted keys into headers).
fn control<'a>(
    session: &'a Session,
    name: &http::HeaderName,
) -> std::result::Result<Option<&'a str>, GatewayError> {
    match session.req_header().headers.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) => Ok(Some(s.trim())),
            Err(_) => Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!("{name} must be visible ASCII text"),
            )),
        },
    }
}

/// The team the request's client token names (`teams`; `None` without teams or for a token of
/// `client_tokens_env`), noted in the access line; a model outside its allow-list is a 403.
fn request_team(
    session: &Session,
    cfg: &crate::model::Config,
    ctx: &mut RequestLog,
    model: crate::model::ModelId,
) -> Result<Option<crate::model::team::TeamId>, GatewayError> {
    if cfg.teams.is_empty() {
        return Ok(None);
    }
    let Some(id) = crate::serve::stage::presented_token(&session.req_header().headers)
        .and_then(|token| cfg.team_of(token))
    else {
        return Ok(None);
    };
    let t = &cfg.teams[id.0];
    ctx.team = Some(t.name.clone());
    if !t.allows(model) {
        crate::observe::metrics::METRICS
            .team_rejections
            .with_label_values(&[&t.name, "model"])
            .inc();
        return Err(GatewayError::new(
            ErrorKind::ModelNotAllowed,
            format!(
                "team {} may not use model {}",
                t.name,
                cfg.catalog.model(model).name
            ),
        ));
    }
    Ok(Some(id))
}

/// What routing made of a request: its plan, and what the stages key on.
pub struct Routed<'c> {
    pub plan: forward::Plan,
    pub route: Option<&'c crate::model::Route>,
    /// The canonical model's name.
    pub model_name: &'c str,
    /// What the request accepts, but for its region (`region`, which it borrows).
    pub acceptable: Acceptable<'c>,
    /// The region the request is pinned to (`x-twinroute-region`).
    pub region: Option<String>,
}

/// Route the request: its control headers and route, its model, the providers it could
/// use (the body parsed only when one of them speaks the other wire format, or lacks a
/// feature), their order by health, and what may be kept of it.
pub fn route<'c>(
    shared: &Shared,
    session: &Session,
    ctx: &mut RequestLog,
    rt: &'c Generation,
    endpoint: Endpoint,
    body: &RequestBody,
    path: &str,
) -> Result<Routed<'c>, GatewayError> {
    let cfg = &rt.config;
    let (mut constraints, require_params) = constraints_of(session, cfg, body)?;
    let route = matched_route(session, cfg, path)?;
    ctx.route = route.map(|r| r.name.clone());

    let Some(model_id) = cfg.catalog.resolve(&body.model) else {
        return Err(GatewayError::new(
            ErrorKind::ModelNotFound,
            format!(
                "model {:?} is not in twinroute's model map",
                truncate(&body.model)
            ),
        ));
    };
    let model = cfg.catalog.model(model_id);
    ctx.model = Some(model.name.clone());
    let team = request_team(session, cfg, ctx, model_id)?;
    let policy = cfg.policy_for(route, team, model_id);
    // Only the offerings (and providers) this request could use: the model's and its
    // equivalents'.
    let offerings = model.offerings.iter().chain(
        model
            .equivalents
            .iter()
            .flat_map(|e| cfg.catalog.model(e.id).offerings.iter()),
    );
    let relevant = offerings.clone().map(|o| o.provider);
    // An offering that declares it lacks a feature also needs the body looked at.
    let lacks_declared = offerings.clone().any(|o| !o.lacks.is_empty());
    let translated = relevant
        .clone()
        .any(|p| endpoint.rebuilt_for(cfg.providers[p].api()));
    let (json, include_usage) =
        look_into_body(body, endpoint, &mut constraints, translated, lacks_declared)?;
    let health = rt.health.routing_snapshot(Instant::now(), relevant);
    let candidates = match route::candidates(&RouteInput {
        model: model_id,
        catalog: &cfg.catalog,
        providers: &cfg.providers,
        endpoint,
        policy,
        constraints: &constraints,
        health: &health,
    }) {
        Ok(c) => c,
        Err(e) => {
            // Missing credentials are the deployment's problem, not the request's.
            let kind = match e {
                route::NoRoute::NoCredentials(_) => ErrorKind::UpstreamFailed,
                _ => ErrorKind::InvalidRequest,
            };
            return Err(GatewayError::new(kind, e.message(&model.name, endpoint)));
        }
    };
    note_skipped(ctx, cfg, model, &candidates, &health);
    let allow_equivalents = constraints
        .allow_equivalents
        .unwrap_or(policy.allow_equivalents);
    // What a kept answer must have been given under (its region is the plan's).
    let acceptable = Acceptable {
        allow_equivalents,
        pin: constraints.pin.map(|p| cfg.providers[p].name.as_str()),
        region: None,
        require_params,
    };
    let keep_nothing = route.is_some_and(|r| r.zero_retention)
        || stores_in_play(shared, session, policy)
            && route::may_reach_zero_retention(
                &cfg.catalog,
                &cfg.providers,
                model_id,
                constraints.pin,
                allow_equivalents,
            );
    let plan = forward::Plan {
        endpoint,
        model: model_id,
        candidates,
        policy: policy.clone(),
        pinned: constraints.pin.is_some(),
        region: constraints.region.clone(),
        zero_retention: route.is_some_and(|r| r.zero_retention),
        keep_nothing,
        parsed_body: json,
        include_usage,
        continuation: None,
        cache_header: None,
        stale: None,
        queue_on_fail: false,
        team,
        rate_headers: Vec::new(),
    };
    Ok(Routed {
        plan,
        route,
        model_name: &model.name,
        acceptable,
        region: constraints.region,
    })
}

/// Whether a store could keep anything of this request (the cache, a key, the queue).
/// Nothing of a request a zero-retention provider could answer is kept anywhere: decided
/// from every offering it may use, whatever their health now, not from the route alone;
/// asked only when this says a store is in play, so a request none of them would touch
/// pays nothing for the question.
fn stores_in_play(shared: &Shared, session: &Session, policy: &crate::model::Policy) -> bool {
    policy.cache.is_some()
        || shared.queue.is_some()
        || (shared.idempotency.is_some()
            && session
                .req_header()
                .headers
                .contains_key(&names::IDEMPOTENCY_KEY))
}

/// Translation: the body is parsed only when a provider this request could use speaks the
/// other wire format (`translated`) or lacks a feature (`lacks_declared`); same-format traffic
/// keeps the splice path untouched. What routing needs from it goes into `constraints`; the
/// parsed body and whether the client asked for usage in its stream come back.
fn look_into_body(
    body: &RequestBody,
    endpoint: Endpoint,
    constraints: &mut RequestConstraints,
    translated: bool,
    lacks_declared: bool,
) -> std::result::Result<(Option<serde_json::Value>, bool), GatewayError> {
    let Some(dir) = Direction::from_client(endpoint) else {
        return Ok((None, false));
    };
    if !translated && !lacks_declared {
        return Ok((None, false));
    }
    let v = serde_json::from_slice::<serde_json::Value>(body.bytes()).map_err(|e| {
        GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if translated {
        constraints.untranslatable = translate::untranslatable(dir, &v);
    }
    constraints.features = translate::features(&v);
    let include_usage =
        v.pointer("/stream_options/include_usage") == Some(&serde_json::Value::Bool(true));
    Ok((Some(v), include_usage))
}

/// The route the request matches; a `x-twinroute-route` that names none of the routes keyed
/// on it is the client's error.
fn matched_route<'c>(
    session: &Session,
    cfg: &'c crate::model::Config,
    path: &str,
) -> std::result::Result<Option<&'c crate::model::Route>, GatewayError> {
    let route = cfg.route_for(path, &session.req_header().headers);
    if route.is_none() {
        let asked = control(session, &names::ROUTE)?;
        if let Some(asked) = asked {
            let known: Vec<&str> = cfg
                .routes
                .iter()
                .filter(|r| r.headers.iter().any(|(k, _)| *k == names::ROUTE))
                .map(|r| r.name.as_str())
                .collect();
            if !known.is_empty() {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "{HDR_ROUTE}: {:?} matches no route for {path}; routes keyed on it: {}",
                        truncate(asked),
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(route)
}

/// The request's control headers as routing constraints (`x-twinroute-provider`, `-strategy`,
/// `-region`, `-allow-equivalents`, `-require-parameters`), with what routing needs from the
/// body; and whether the client asked that no parameter be dropped. A header twinroute cannot
/// read, or a value it does not know, is the client's error.
fn constraints_of(
    session: &Session,
    cfg: &crate::model::Config,
    body: &RequestBody,
) -> std::result::Result<(RequestConstraints, bool), GatewayError> {
    let mut constraints = RequestConstraints::default();
    let mut require_params: Option<bool> = None;
    let provider = control(session, &names::PROVIDER)?;
    if let Some(name) = provider {
        let name = name.to_string();
        match cfg.provider_by_name(&name) {
            Some(p) => constraints.pin = Some(p.id),
            None => {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    // The value is not echoed: clients have pasted keys into headers before.
                    format!(
                        "{HDR_PROVIDER} names no configured provider; configured: {}",
                        cfg.providers
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    let strategy = control(session, &names::STRATEGY)?;
    if let Some(s) = strategy {
        match Strategy::parse(s) {
            Some(s) => constraints.strategy = Some(s),
            None => {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    format!("{HDR_STRATEGY}: unknown strategy {:?} (ordered, prefer_cost, prefer_latency or weighted)", truncate(s)),
                ))
            }
        }
    }
    if let Some(r) = control(session, &names::REGION)? {
        constraints.region = Some(r.to_string());
    }
    for (name, slot) in [
        (names::ALLOW_EQUIVALENTS, &mut constraints.allow_equivalents),
        (names::REQUIRE_PARAMS, &mut require_params),
    ] {
        let value = control(session, &name)?;
        if let Some(v) = value {
            *slot = Some(match parse_bool(v) {
                Some(b) => b,
                None => {
                    return Err(GatewayError::new(
                        ErrorKind::InvalidRequest,
                        format!("{name} must be true or false"),
                    ))
                }
            });
        }
    }
    if require_params == Some(true) {
        constraints.required_params = Some(body.param_names());
    }
    constraints.needed_tokens = Some(body.estimated_tokens());
    constraints.draw = rand::random::<f64>();
    Ok((constraints, require_params == Some(true)))
}

/// Record in the access line which twins health kept out, with the same reason names as
/// failovers: `provider:reason` when its endpoints are out, `provider/model:reason` when only
/// that model is.
fn note_skipped(
    ctx: &mut RequestLog,
    cfg: &crate::model::Config,
    model: &crate::model::catalog::Model,
    candidates: &[route::Candidate],
    health: &route::HealthSnapshot,
) {
    for o in &model.offerings {
        if !candidates.iter().any(|c| c.provider == o.provider) {
            if let Some(skip) = health.skip(o.provider, &o.model_id) {
                let name = &cfg.providers[o.provider].name;
                ctx.skipped.push(match skip.grain {
                    route::Grain::Endpoint => format!("{name}:{}", skip.reason.as_str()),
                    route::Grain::Offering => {
                        format!("{name}/{}:{}", o.model_id, skip.reason.as_str())
                    }
                });
            }
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}
