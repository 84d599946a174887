//! The errors twinroute itself answers with, as data: a kind (which fixes the status) and a
//! message. How each API family renders them is `wire::errors`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    ModelNotFound,
    /// Every provider of the model said it is gone there (not found, retired, not deployed).
    ModelUnavailable,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The request header passed `max_request_header_bytes`.
    HeaderTooLarge,
    UnsupportedMediaType,
    /// An `Idempotency-Key` reused with another request body (422).
    IdempotencyKeyReused,
    /// The request holding an `Idempotency-Key` ended without an answer to share (409).
    IdempotencyKeyInUse,
    RateLimited,
    /// A client token was required and missing or wrong.
    Unauthorized,
    /// The client was too slow sending its request.
    RequestTimeout,
    /// twinroute itself is at `max_concurrent_requests`, or every provider at `max_connections`.
    Overloaded,
    UpstreamFailed,
    UpstreamTimeout,
    /// The background queue is at `queue.max_jobs` (503).
    QueueFull,
    /// A background job passed `queue.max_age_s` without an answer (504).
    JobExpired,
    /// A team's budget for its window would be overrun (429).
    BudgetExceeded,
    /// The model is outside the team's allow-list (403).
    ModelNotAllowed,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::ModelNotFound | ErrorKind::ModelUnavailable | ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeaderTooLarge => 431,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::IdempotencyKeyReused => 422,
            ErrorKind::IdempotencyKeyInUse => 409,
            ErrorKind::RateLimited => 429,
            ErrorKind::Unauthorized => 401,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Overloaded => 503,
            ErrorKind::UpstreamFailed => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::QueueFull => 503,
            ErrorKind::JobExpired => 504,
            ErrorKind::BudgetExceeded => 429,
            ErrorKind::ModelNotAllowed => 403,
        }
    }
}

/// An error response twinroute generates (as opposed to one a provider sent).
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// Headers the answer carries besides its own (a team's rate-limit state).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> GatewayError {
        GatewayError {
            kind,
            message: message.into(),
            retry_after_s: None,
            headers: Vec::new(),
        }
    }
}
