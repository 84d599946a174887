//! One structured line per request: who asked for what, who served it, every attempt with its
//! failover reason, status, latency. Never a prompt, a completion, a header value or a key.

use crate::model::LogFormat;
use serde::Serialize;
use std::fmt::Write;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct AttemptLog {
    pub provider: String,
    pub model: String,
    /// `None` when this attempt produced the answer.
    pub reason: Option<&'static str>,
    pub status: Option<u16>,
    pub ms: u64,
}

#[derive(Debug, Serialize)]
pub struct RequestLog {
    pub request_id: String,
    #[serde(skip)]
    pub start: Instant,
    pub endpoint: &'static str,
    pub requested_model: Option<String>,
    pub model: Option<String>,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub attempts: Vec<AttemptLog>,
    pub status: u16,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub stream: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// Health turned every candidate away and one was tried anyway.
    pub fail_open: bool,
    /// Candidates routing left out because of health, as `provider:reason` when the provider's
    /// endpoints are out, `provider/model:reason` when only that model is out there.
    pub skipped: Vec<String>,
    /// The per-feature route the request matched.
    pub route: Option<String>,
    /// `canonical;grade=g` when a closest equivalent answered instead of a twin.
    pub degraded: Option<String>,
    /// Parameters removed for the offering that answered.
    pub dropped_params: Vec<String>,
    /// Handled under `zero_retention` (no pooling, connection closed, body wiped).
    pub zero_retention: bool,
    /// `client->provider` when the answer was translated between wire formats.
    pub translated: Option<&'static str>,
    /// A stream that broke after its first content: `completed:<provider>` when another
    /// candidate completed it, `failed:<provider>` when it ended with the error event.
    pub stream_recovery: Option<String>,
    /// Answered from another request with the same `Idempotency-Key`.
    pub idempotent_replay: bool,
    /// The prompt cache's part: `hit`, `miss`, `stale` or `bypass`.
    pub cache: Option<&'static str>,
    /// The background job this request was queued as (or, for the drain's own request, runs).
    pub queued: Option<String>,
    pub error: Option<String>,
}

impl RequestLog {
    pub fn new(request_id: String) -> RequestLog {
        RequestLog {
            request_id,
            start: Instant::now(),
            endpoint: "-",
            requested_model: None,
            model: None,
            served_model: None,
            provider: None,
            attempts: Vec::new(),
            status: 0,
            latency_ms: 0,
            ttfb_ms: None,
            stream: false,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            fail_open: false,
            skipped: Vec::new(),
            route: None,
            degraded: None,
            dropped_params: Vec::new(),
            zero_retention: false,
            translated: None,
            stream_recovery: None,
            idempotent_replay: false,
            cache: None,
            queued: None,
            error: None,
        }
    }

    pub fn render(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            LogFormat::Text => {
                let mut s = String::with_capacity(256);
                let _ = write!(
                    s,
                    "request id={} endpoint={} status={} latency_ms={}",
                    self.request_id, self.endpoint, self.status, self.latency_ms
                );
                let opt = |s: &mut String, k: &str, v: &Option<String>| {
                    if let Some(v) = v {
                        let _ = write!(s, " {k}={v:?}");
                    }
                };
                opt(&mut s, "requested_model", &self.requested_model);
                opt(&mut s, "model", &self.model);
                opt(&mut s, "served_model", &self.served_model);
                opt(&mut s, "provider", &self.provider);
                opt(&mut s, "route", &self.route);
                opt(&mut s, "degraded", &self.degraded);
                if !self.dropped_params.is_empty() {
                    let _ = write!(s, " dropped_params={:?}", self.dropped_params.join(","));
                }
                if let Some(t) = self.ttfb_ms {
                    let _ = write!(s, " ttfb_ms={t}");
                }
                let _ = write!(s, " attempts={}", self.attempts.len());
                let failovers: Vec<String> = self
                    .attempts
                    .iter()
                    .filter_map(|a| a.reason.map(|r| format!("{}:{}", a.provider, r)))
                    .collect();
                if !failovers.is_empty() {
                    let _ = write!(s, " failovers={:?}", failovers.join(","));
                }
                if self.stream {
                    s.push_str(" stream=true");
                }
                if !self.skipped.is_empty() {
                    let _ = write!(s, " skipped={:?}", self.skipped.join(","));
                }
                if self.fail_open {
                    s.push_str(" fail_open=true");
                }
                if self.zero_retention {
                    s.push_str(" zero_retention=true");
                }
                if let Some(c) = self.cache {
                    let _ = write!(s, " cache={c}");
                }
                if self.idempotent_replay {
                    s.push_str(" idempotent_replay=true");
                }
                opt(&mut s, "queued", &self.queued);
                if let Some(r) = &self.stream_recovery {
                    let _ = write!(s, " stream_recovery={r}");
                }
                if let Some(t) = self.translated {
                    let _ = write!(s, " translated={t}");
                }
                if let (Some(i), Some(o)) = (self.input_tokens, self.output_tokens) {
                    let _ = write!(s, " tokens_in={i} tokens_out={o}");
                }
                if let Some(c) = self.cost_usd {
                    let _ = write!(s, " cost_usd={c:.6}");
                }
                opt(&mut s, "error", &self.error);
                s
            }
        }
    }
}
