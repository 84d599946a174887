//! twinroute's own background-job resource, `/v1/twinroute/jobs/{id}`: its path, the JSON a
//! waiting job is shown as, and which headers of a request and of its answer a job keeps.
//!
//! A finished job is served as the answer itself (the provider's status, content type and body),
//! so a client reads it with the code that reads a direct answer; only a job still waiting is
//! shown in this module's JSON.

use serde_json::json;

/// Where jobs live; a job's location is this and its id.
pub const JOBS_PREFIX: &str = "/v1/twinroute/jobs/";

pub fn location(id: &str) -> String {
    format!("{JOBS_PREFIX}{id}")
}

/// The id part of a job path (unchecked: `decide::queue::valid_job_id` says whether it is one).
pub fn id_from_path(path: &str) -> Option<&str> {
    path.strip_prefix(JOBS_PREFIX)
        .map(|rest| rest.trim_end_matches('/'))
}

/// What a job is doing, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// A job as its JSON shows it.
#[derive(Debug, Clone)]
pub struct JobView<'a> {
    pub id: &'a str,
    pub status: JobStatus,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Tries so far that found no capacity.
    pub tries: u32,
    pub last_error: Option<&'a str>,
}

/// `{"id", "object": "twinroute.job", "status", "created_at", "expires_at", "tries",
/// "last_error", "location"}` (times in Unix seconds, as OpenAI's objects give them).
pub fn render(v: &JobView<'_>) -> Vec<u8> {
    json!({
        "id": v.id,
        "object": "twinroute.job",
        "status": v.status.as_str(),
        "created_at": v.created_ms / 1000,
        "expires_at": v.expires_ms / 1000,
        "tries": v.tries,
        "last_error": v.last_error,
        "location": location(v.id),
    })
    .to_string()
    .into_bytes()
}

/// Whether a request header is kept with a queued job to be sent again when it runs. An
/// allowlist: a job on disk keeps only what decides how it is served — its content type, the
/// API version and beta flags its body is written for, twinroute's own routing headers, and the
/// headers a configured route matches on (`route_headers`). Everything else a client sent
/// (credentials under any name, `x-custom-secret`, cookies, tracing ids) is never written.
pub fn kept_request_header(name: &str, route_headers: &[http::HeaderName]) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "content-type"
            | "accept"
            | "anthropic-version"
            | "anthropic-beta"
            | "openai-beta"
            | "cache-control"
            | "x-twinroute-route"
            | "x-twinroute-provider"
            | "x-twinroute-region"
            | "x-twinroute-strategy"
            | "x-twinroute-allow-equivalents"
            | "x-twinroute-require-parameters"
            | "x-twinroute-priority"
    ) || route_headers.iter().any(|h| h.as_str() == n)
}

/// Whether an answer header is kept with a finished job: what describes the answer (its type,
/// who served it, usage), not what described the one exchange (length, request id, connection).
pub fn kept_answer_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "content-type"
        || (n.starts_with("x-twinroute-")
            && !matches!(
                n.as_str(),
                "x-twinroute-request-id" | "x-twinroute-queue" | "x-twinroute-job"
            ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(location("job_1"), "/v1/twinroute/jobs/job_1");
        assert_eq!(id_from_path("/v1/twinroute/jobs/job_1"), Some("job_1"));
        assert_eq!(id_from_path("/v1/twinroute/jobs/job_1/"), Some("job_1"));
        assert_eq!(id_from_path("/v1/chat/completions"), None);
    }

    #[test]
    fn view_json() {
        let v = JobView {
            id: "job_ab",
            status: JobStatus::Queued,
            created_ms: 1_700_000_000_123,
            expires_ms: 1_700_000_060_123,
            tries: 2,
            last_error: Some("all providers failed"),
        };
        let j: serde_json::Value = serde_json::from_slice(&render(&v)).unwrap();
        assert_eq!(j["object"], "twinroute.job");
        assert_eq!(j["status"], "queued");
        assert_eq!(j["created_at"], 1_700_000_000);
        assert_eq!(j["expires_at"], 1_700_000_060);
        assert_eq!(j["tries"], 2);
        assert_eq!(j["location"], "/v1/twinroute/jobs/job_ab");
    }

    #[test]
    fn credentials_are_never_kept() {
        for h in [
            "Authorization",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "Cookie",
            "Idempotency-Key",
            "Prefer",
            "Content-Length",
            "x-twinroute-job-token",
            "x-custom-secret",
            "anthropic-api-key",
            "x-tenant",
            "traceparent",
        ] {
            assert!(!kept_request_header(h, &[]), "{h}");
        }
        for h in [
            "content-type",
            "anthropic-version",
            "x-twinroute-route",
            "x-twinroute-priority",
            "X-Tenant",
        ] {
            // x-tenant: kept because a route matches on it.
            let routes = [http::HeaderName::from_static("x-tenant")];
            assert!(kept_request_header(h, &routes), "{h}");
        }
        assert!(kept_answer_header("Content-Type"));
        assert!(kept_answer_header("x-twinroute-provider"));
        assert!(!kept_answer_header("x-twinroute-request-id"));
        assert!(!kept_answer_header("content-length"));
    }
}
