//! Outcome classification: what an upstream status or I/O error means for one attempt.
//!
//! The result is a `FailoverReason` (model/outcome.rs), the one vocabulary metrics, the access
//! log, breakers and the retry decision share; what an error *body* says is
//! `wire::error_body`, and what each reason leads to is `decide::attempt`.

pub use crate::model::outcome::FailoverReason;
use pingora::ErrorType;

/// Which grain of health an outcome is evidence about. Real providers limit and overload per
/// model, so a model-level answer must cost that offering, not every model the provider serves;
/// only what says the host itself is sick costs the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grain {
    /// The provider's endpoint: the host, its network path, the key twinroute injects.
    Endpoint,
    /// One model on one provider (an offering).
    Offering,
}

impl Grain {
    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Endpoint => "endpoint",
            Grain::Offering => "offering",
        }
    }
}

/// The grain a failure reason is evidence about: connect failures and timeouts, resets before a
/// response and refused keys say the host (or the account) is sick; statuses, silence after the
/// request was taken and "model gone" answers say the model is sick there.
pub fn grain(reason: FailoverReason) -> Grain {
    match reason {
        FailoverReason::DnsFailure
        | FailoverReason::ConnectFailure
        | FailoverReason::ConnectTimeout
        | FailoverReason::Reset
        | FailoverReason::AuthFailed
        | FailoverReason::ProviderAccount
        // A redirect is the host's (its URL moved, or something in front of it answers).
        | FailoverReason::UpstreamRedirect => Grain::Endpoint,
        FailoverReason::FirstByteTimeout
        | FailoverReason::FirstTokenTimeout
        | FailoverReason::StreamStall
        | FailoverReason::Truncated
        | FailoverReason::Status408
        | FailoverReason::Status409
        | FailoverReason::Status429
        | FailoverReason::Status5xx
        | FailoverReason::Deadline
        | FailoverReason::ModelUnavailable
        | FailoverReason::ContextLength
        | FailoverReason::ResponseTooLarge => Grain::Offering,
    }
}

/// What to do with an upstream response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// Pass it to the client: a success, or an error that is about the request itself (other
    /// 4xx), which another provider would answer the same way.
    Final,
    /// Try the next candidate.
    Retry(FailoverReason),
}

pub fn classify_status(status: u16) -> StatusClass {
    match status {
        401 => StatusClass::Retry(FailoverReason::AuthFailed),
        408 => StatusClass::Retry(FailoverReason::Status408),
        409 => StatusClass::Retry(FailoverReason::Status409),
        // Payment required: the provider's account is out of credits (OpenRouter).
        402 => StatusClass::Retry(FailoverReason::ProviderAccount),
        429 => StatusClass::Retry(FailoverReason::Status429),
        // 529 is Anthropic's "overloaded_error", its most common failure: transient like a 503.
        500 | 502 | 503 | 504 | 529 => StatusClass::Retry(FailoverReason::Status5xx),
        // Never followed, never passed on: a client SDK would follow it and send the prompt to
        // a host no config names, and take that host's answer for the model's.
        300..=399 => StatusClass::Retry(FailoverReason::UpstreamRedirect),
        _ => StatusClass::Final,
    }
}

/// Which step of an attempt an I/O error happened in; the same error type means different
/// things before and after the request reached the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptPhase {
    Connect,
    /// Writing the request or waiting for the response header.
    Exchange,
}

pub fn classify_error(phase: AttemptPhase, etype: &ErrorType) -> FailoverReason {
    match etype {
        ErrorType::ConnectTimedout => FailoverReason::ConnectTimeout,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::SocketError
        | ErrorType::BindError
        | ErrorType::ConnectProxyFailure => FailoverReason::ConnectFailure,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailoverReason::FirstByteTimeout,
        _ if phase == AttemptPhase::Connect => FailoverReason::ConnectFailure,
        // Closed, reset, malformed or otherwise broken before a usable response header.
        _ => FailoverReason::Reset,
    }
}

/// Parse `Retry-After` (delta-seconds only; providers do not send HTTP dates in practice, and a
/// date we cannot parse is better ignored than guessed).
pub fn parse_retry_after(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        for s in [200, 201, 204, 400, 403, 404, 413, 422] {
            assert_eq!(classify_status(s), StatusClass::Final, "{s}");
        }
        assert_eq!(
            classify_status(408),
            StatusClass::Retry(FailoverReason::Status408)
        );
        assert_eq!(
            classify_status(409),
            StatusClass::Retry(FailoverReason::Status409)
        );
        assert_eq!(
            classify_status(429),
            StatusClass::Retry(FailoverReason::Status429)
        );
        assert_eq!(
            classify_status(402),
            StatusClass::Retry(FailoverReason::ProviderAccount)
        );
        for s in [500, 502, 503, 504, 529] {
            assert_eq!(
                classify_status(s),
                StatusClass::Retry(FailoverReason::Status5xx),
                "{s}"
            );
        }
        for s in [300, 301, 302, 303, 307, 308] {
            assert_eq!(
                classify_status(s),
                StatusClass::Retry(FailoverReason::UpstreamRedirect),
                "{s}"
            );
        }
        assert_eq!(grain(FailoverReason::UpstreamRedirect), Grain::Endpoint);
        // 501 Not Implemented is about the request: another provider will not implement it either.
        assert_eq!(classify_status(501), StatusClass::Final);
    }

    #[test]
    fn error_table() {
        use AttemptPhase::*;
        assert_eq!(
            classify_error(Connect, &ErrorType::ConnectRefused),
            FailoverReason::ConnectFailure
        );
        assert_eq!(
            classify_error(Connect, &ErrorType::ConnectTimedout),
            FailoverReason::ConnectTimeout
        );
        assert_eq!(
            classify_error(Exchange, &ErrorType::ReadTimedout),
            FailoverReason::FirstByteTimeout
        );
        assert_eq!(
            classify_error(Exchange, &ErrorType::ConnectionClosed),
            FailoverReason::Reset
        );
        assert_eq!(
            classify_error(Exchange, &ErrorType::ReadError),
            FailoverReason::Reset
        );
        assert_eq!(
            classify_error(Connect, &ErrorType::ReadError),
            FailoverReason::ConnectFailure
        );
        assert!(FailoverReason::FirstByteTimeout.is_timeout());
        assert!(!FailoverReason::Reset.is_timeout());
    }

    /// Error bodies as providers send them (trimmed of request ids).
    #[test]
    fn retry_after() {
        assert_eq!(parse_retry_after(b"7"), Some(7));
        assert_eq!(parse_retry_after(b" 12 "), Some(12));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(b"-1"), None);
    }
}
