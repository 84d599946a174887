//! Prometheus metrics. One registry per process, rendered by the admin listener.
//!
//! Label values are bounded: canonical model names and provider names from the config, status
//! codes and `FailoverReason` names; never a client-sent string.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub attempts: IntCounterVec,
    pub failovers: IntCounterVec,
    pub degraded: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_ttfb: HistogramVec,
    pub provider_healthy: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub offering_breaker_state: IntGaugeVec,
    pub stream_recoveries: IntCounterVec,
    pub malformed_events: IntCounterVec,
    pub idempotency_evictions: prometheus::IntCounter,
    pub idempotency_entries: prometheus::IntGauge,
    pub idempotency_bytes: prometheus::IntGauge,
    pub idempotency_replays: prometheus::IntCounter,
    pub team_spend_usd: GaugeVec,
    pub team_budget_usd: GaugeVec,
    pub team_rejections: IntCounterVec,
    pub team_requests: IntCounterVec,
    /// 1 while the fleet's Redis answers (`shared_state`), 0 while it does not.
    pub shared_state_up: prometheus::IntGauge,
    pub shared_state_errors: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub log_waits: prometheus::IntCounter,
    pub cache_entries: prometheus::IntGauge,
    pub cache_bytes: prometheus::IntGauge,
    pub queue_jobs: IntCounterVec,
    pub queue_depth: prometheus::IntGauge,
    pub queue_oldest_age: prometheus::Gauge,
    pub offering_healthy: IntGaugeVec,
    pub probe_latency: GaugeVec,
    pub tokens: IntCounterVec,
    pub cost_usd: CounterVec,
    pub in_flight: IntGaugeVec,
    pub client_cut: IntCounterVec,
    pub translations: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "twinroute_requests_total",
            "Client requests by canonical model, serving provider and status",
        ),
        &["model", "provider", "status"],
    )?;
    let attempts = IntCounterVec::new(
        Opts::new(
            "twinroute_upstream_attempts_total",
            "Upstream attempts by provider and outcome",
        ),
        &["provider", "outcome"],
    )?;
    let failovers = IntCounterVec::new(
        Opts::new(
            "twinroute_failovers_total",
            "Moves from one provider to the next, with the reason",
        ),
        &["model", "from_provider", "to_provider", "reason"],
    )?;
    let degraded = IntCounterVec::new(
        Opts::new(
            "twinroute_degraded_total",
            "Requests answered by a closest equivalent instead of a twin of the requested model",
        ),
        &["model", "equivalent"],
    )?;
    let request_duration = HistogramVec::new(
        HistogramOpts::new(
            "twinroute_request_duration_seconds",
            "Whole request time as the client saw it",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["model", "provider"],
    )?;
    let upstream_ttfb = HistogramVec::new(
        HistogramOpts::new(
            "twinroute_upstream_ttfb_seconds",
            "Time to the upstream response header",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["model", "provider"],
    )?;
    let provider_healthy = IntGaugeVec::new(
        Opts::new(
            "twinroute_provider_healthy",
            "1 when the provider takes traffic",
        ),
        &["provider"],
    )?;
    let breaker_state = IntGaugeVec::new(
        Opts::new(
            "twinroute_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
        ),
        &["provider"],
    )?;
    let offering_breaker_state = IntGaugeVec::new(
        Opts::new(
            "twinroute_offering_breaker_state",
            "Circuit breaker of one model on one provider: 0 closed, 1 half-open, 2 open",
        ),
        &["provider", "model"],
    )?;
    let stream_recoveries = IntCounterVec::new(
        Opts::new(
            "twinroute_stream_recoveries_total",
            "Streams that broke after their first content under stream_recovery: continue, by outcome (completed, failed, no_candidate, not_continuable)",
        ),
        &["outcome"],
    )?;
    let malformed_events = IntCounterVec::new(
        Opts::new(
            "twinroute_stream_events_dropped_total",
            "Upstream stream events dropped because their data was not JSON",
        ),
        &["provider"],
    )?;
    let idempotency_evictions = prometheus::IntCounter::new(
        "twinroute_idempotency_evictions_total",
        "Kept idempotent answers evicted to stay within idempotency.max_bytes",
    )?;
    let idempotency_entries = prometheus::IntGauge::new(
        "twinroute_idempotency_entries",
        "Idempotency keys held (in flight or kept)",
    )?;
    let idempotency_bytes = prometheus::IntGauge::new(
        "twinroute_idempotency_bytes",
        "Bytes the kept idempotent answers weigh",
    )?;
    let team_spend_usd = GaugeVec::new(
        Opts::new(
            "twinroute_team_spend_usd",
            "A team's spend in its current budget window (fleet-wide with shared_state)",
        ),
        &["team"],
    )?;
    let team_budget_usd = GaugeVec::new(
        Opts::new("twinroute_team_budget_usd", "A team's budget per window"),
        &["team"],
    )?;
    let team_rejections = IntCounterVec::new(
        Opts::new(
            "twinroute_team_rejections_total",
            "Requests of a team refused by its limits, by reason (budget, rate, model)",
        ),
        &["team", "reason"],
    )?;
    let team_requests = IntCounterVec::new(
        Opts::new(
            "twinroute_team_requests_total",
            "A team's requests by canonical model and status",
        ),
        &["team", "model", "status"],
    )?;
    let shared_state_up = prometheus::IntGauge::new(
        "twinroute_shared_state_up",
        "1 while the shared state's Redis answers, 0 while it does not (local state serves)",
    )?;
    let shared_state_errors = IntCounterVec::new(
        Opts::new(
            "twinroute_shared_state_errors_total",
            "Redis calls of the shared state that failed or timed out, by operation",
        ),
        &["op"],
    )?;
    let idempotency_replays = prometheus::IntCounter::new(
        "twinroute_idempotency_replays_total",
        "Requests answered from another request with the same Idempotency-Key (in flight or kept)",
    )?;
    let cache_lookups = IntCounterVec::new(
        Opts::new(
            "twinroute_cache_lookups_total",
            "Prompt-cache outcomes: hit, miss, stale (served while every candidate failed), bypass (Cache-Control)",
        ),
        &["outcome"],
    )?;
    let cache_entries =
        prometheus::IntGauge::new("twinroute_cache_entries", "Answers in the prompt cache")?;
    let cache_bytes = prometheus::IntGauge::new(
        "twinroute_cache_bytes",
        "Bytes the prompt cache's answers weigh",
    )?;
    let queue_jobs = IntCounterVec::new(
        Opts::new(
            "twinroute_queue_jobs_total",
            "Background jobs by event: queued, retried (no capacity yet), succeeded, expired, cancelled, full (refused at queue.max_jobs)",
        ),
        &["event"],
    )?;
    let queue_depth = prometheus::IntGauge::new(
        "twinroute_queue_depth",
        "Background jobs waiting or running",
    )?;
    let queue_oldest_age = prometheus::Gauge::new(
        "twinroute_queue_oldest_age_seconds",
        "Age of the oldest background job still waiting or running (0 when none)",
    )?;
    let log_waits = prometheus::IntCounter::new(
        "twinroute_log_waits_total",
        "Log lines whose request waited for the log writer to make room in its buffer (none are dropped)",
    )?;
    let offering_healthy = IntGaugeVec::new(
        Opts::new(
            "twinroute_offering_healthy",
            "1 when the model on this provider takes traffic by its own health (the provider's is twinroute_provider_healthy)",
        ),
        &["provider", "model"],
    )?;
    let probe_latency = GaugeVec::new(
        Opts::new("twinroute_probe_latency_seconds", "Probe round-trip EWMA"),
        &["provider"],
    )?;
    let tokens = IntCounterVec::new(
        Opts::new(
            "twinroute_tokens_total",
            "Tokens reported in responses' usage",
        ),
        &["model", "provider", "kind"],
    )?;
    let cost_usd = CounterVec::new(
        Opts::new(
            "twinroute_cost_usd_total",
            "Spend computed from usage and list prices",
        ),
        &["model", "provider"],
    )?;
    let in_flight = IntGaugeVec::new(
        Opts::new(
            "twinroute_in_flight_requests",
            "Client requests being served",
        ),
        &["endpoint"],
    )?;
    let client_cut = IntCounterVec::new(
        Opts::new(
            "twinroute_client_connections_cut_total",
            "Client connections twinroute closed for a limit: header_timeout, header_too_large, send_timeout",
        ),
        &["reason"],
    )?;
    let translations = IntCounterVec::new(
        Opts::new(
            "twinroute_translations_total",
            "Answers translated between wire formats, by direction (client->provider)",
        ),
        &["direction"],
    )?;
    registry.register(Box::new(translations.clone()))?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(attempts.clone()))?;
    registry.register(Box::new(degraded.clone()))?;
    registry.register(Box::new(failovers.clone()))?;
    registry.register(Box::new(request_duration.clone()))?;
    registry.register(Box::new(upstream_ttfb.clone()))?;
    registry.register(Box::new(provider_healthy.clone()))?;
    registry.register(Box::new(breaker_state.clone()))?;
    registry.register(Box::new(offering_breaker_state.clone()))?;
    registry.register(Box::new(offering_healthy.clone()))?;
    registry.register(Box::new(stream_recoveries.clone()))?;
    registry.register(Box::new(malformed_events.clone()))?;
    registry.register(Box::new(idempotency_evictions.clone()))?;
    registry.register(Box::new(idempotency_entries.clone()))?;
    registry.register(Box::new(idempotency_bytes.clone()))?;
    registry.register(Box::new(idempotency_replays.clone()))?;
    registry.register(Box::new(shared_state_up.clone()))?;
    registry.register(Box::new(team_spend_usd.clone()))?;
    registry.register(Box::new(team_budget_usd.clone()))?;
    registry.register(Box::new(team_rejections.clone()))?;
    registry.register(Box::new(team_requests.clone()))?;
    registry.register(Box::new(shared_state_errors.clone()))?;
    registry.register(Box::new(cache_lookups.clone()))?;
    registry.register(Box::new(log_waits.clone()))?;
    registry.register(Box::new(cache_entries.clone()))?;
    registry.register(Box::new(cache_bytes.clone()))?;
    registry.register(Box::new(queue_jobs.clone()))?;
    registry.register(Box::new(queue_depth.clone()))?;
    registry.register(Box::new(queue_oldest_age.clone()))?;
    registry.register(Box::new(probe_latency.clone()))?;
    registry.register(Box::new(tokens.clone()))?;
    registry.register(Box::new(cost_usd.clone()))?;
    registry.register(Box::new(in_flight.clone()))?;
    registry.register(Box::new(client_cut.clone()))?;
    Ok(Metrics {
        registry,
        requests,
        attempts,
        failovers,
        degraded,
        request_duration,
        upstream_ttfb,
        provider_healthy,
        breaker_state,
        offering_breaker_state,
        offering_healthy,
        stream_recoveries,
        malformed_events,
        idempotency_evictions,
        idempotency_entries,
        idempotency_bytes,
        idempotency_replays,
        shared_state_up,
        shared_state_errors,
        team_spend_usd,
        team_budget_usd,
        team_rejections,
        team_requests,
        cache_lookups,
        log_waits,
        cache_entries,
        cache_bytes,
        queue_jobs,
        queue_depth,
        queue_oldest_age,
        probe_latency,
        tokens,
        cost_usd,
        in_flight,
        client_cut,
        translations,
    })
}

/// The process-wide metrics. Construction only fails on a duplicate or malformed metric name,
/// which is a programming error caught by the unit test below.
pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().unwrap_or_else(|e| panic!("metric definitions are invalid: {e}")));

/// `twinroute_in_flight_requests{endpoint="all"}`, every request's: looked up once, not per
/// request (a label lookup hashes the values and takes the vector's lock).
pub fn in_flight_all() -> &'static prometheus::IntGauge {
    static ALL: LazyLock<prometheus::IntGauge> =
        LazyLock::new(|| METRICS.in_flight.with_label_values(&["all"]));
    &ALL
}

pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    let families = METRICS.registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        log::warn!("metrics encoding failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn definitions_are_valid_and_render() {
        super::build().unwrap();
        super::METRICS
            .requests
            .with_label_values(&["m", "p", "200"])
            .inc();
        let text = String::from_utf8(super::render()).unwrap();
        assert!(
            text.contains("twinroute_requests_total{model=\"m\",provider=\"p\",status=\"200\"} 1")
        );
    }
}
