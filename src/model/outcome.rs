//! The vocabulary of attempt outcomes: why an attempt did not produce the answer.
//!
//! Metrics, the access log, the retry decision and the breakers all read the same
//! `FailoverReason`, so "why did we fail over" has one vocabulary everywhere (Envoy-style names).
//! Deciding which reason an attempt gets is `decide::outcome` (statuses, I/O errors) and
//! `wire::error_body` (what a provider's error body says).

use std::fmt;

/// Why an attempt did not produce the answer, when that is the provider's fault and another
/// provider may do better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailoverReason {
    /// The provider's host name did not resolve (a typo in `base_url`, a DNS outage): said
    /// apart from a refused connection, since the fix is a different one.
    DnsFailure,
    ConnectFailure,
    ConnectTimeout,
    FirstByteTimeout,
    /// A stream sent its header (and perhaps a role chunk or `message_start`) but no content
    /// within `first_token_ms`.
    FirstTokenTimeout,
    /// A committed stream went silent for longer than `stream_idle_ms`.
    StreamStall,
    /// An answer broke after its header: the connection reset or closed mid-body, or a stream
    /// ended without its terminating event.
    Truncated,
    Reset,
    Status408,
    Status409,
    Status429,
    Status5xx,
    /// The whole request's deadline ran out during this attempt.
    Deadline,
    /// 401, or a 403 that is not about a model: the key twinroute injected was refused. The
    /// client's own credentials never reach a provider, so this is never the client's fault.
    AuthFailed,
    /// The provider says this model is gone here (not found, not deployed, decommissioned, no
    /// access) while the request itself is fine: the offering, not the provider, is taken out.
    ModelUnavailable,
    /// The prompt does not fit this model's context window; only a larger model can help.
    ContextLength,
    /// The provider account cannot pay: OpenRouter's 402 for exhausted credits, OpenAI's 429
    /// `insufficient_quota`. Not the client's fault and no short blip: fail over, and keep the
    /// provider out for long.
    ProviderAccount,
    /// The provider answered with a redirect (3xx). A redirect is never followed (the prompt
    /// and, after a client SDK follows it, the answer would come from a host no config names)
    /// and never passed on: a misconfigured or hijacked endpoint, so the next candidate answers.
    UpstreamRedirect,
    /// The answer was larger than twinroute takes: a whole body over `max_response_body_bytes`
    /// or one stream event over `max_stream_event_bytes`. No chat answer is that large; a
    /// provider sending it is broken (or hostile), and holding it would cost the pod its memory.
    ResponseTooLarge,
}

impl FailoverReason {
    /// Every reason, in the order the README lists them.
    pub const ALL: [FailoverReason; 19] = [
        FailoverReason::DnsFailure,
        FailoverReason::ConnectFailure,
        FailoverReason::ConnectTimeout,
        FailoverReason::Reset,
        FailoverReason::FirstByteTimeout,
        FailoverReason::FirstTokenTimeout,
        FailoverReason::StreamStall,
        FailoverReason::Truncated,
        FailoverReason::Status408,
        FailoverReason::Status409,
        FailoverReason::Status429,
        FailoverReason::Status5xx,
        FailoverReason::Deadline,
        FailoverReason::AuthFailed,
        FailoverReason::ModelUnavailable,
        FailoverReason::ContextLength,
        FailoverReason::ProviderAccount,
        FailoverReason::UpstreamRedirect,
        FailoverReason::ResponseTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailoverReason::DnsFailure => "dns_failure",
            FailoverReason::ConnectFailure => "connect_failure",
            FailoverReason::ConnectTimeout => "connect_timeout",
            FailoverReason::FirstByteTimeout => "first_byte_timeout",
            FailoverReason::FirstTokenTimeout => "first_token_timeout",
            FailoverReason::StreamStall => "stream_stall",
            FailoverReason::Truncated => "truncated",
            FailoverReason::Reset => "reset",
            FailoverReason::Status408 => "status_408",
            FailoverReason::Status409 => "status_409",
            FailoverReason::Status429 => "status_429",
            FailoverReason::Status5xx => "status_5xx",
            FailoverReason::Deadline => "deadline",
            FailoverReason::AuthFailed => "auth_failed",
            FailoverReason::ModelUnavailable => "model_unavailable",
            FailoverReason::ContextLength => "context_length_exceeded",
            FailoverReason::ProviderAccount => "provider_account",
            FailoverReason::UpstreamRedirect => "upstream_redirect",
            FailoverReason::ResponseTooLarge => "response_too_large",
        }
    }

    /// The provider stayed silent (as opposed to refusing or erroring): these add up to a 504.
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            FailoverReason::ConnectTimeout
                | FailoverReason::FirstByteTimeout
                | FailoverReason::FirstTokenTimeout
                | FailoverReason::StreamStall
                | FailoverReason::Deadline
        )
    }
}

impl fmt::Display for FailoverReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
