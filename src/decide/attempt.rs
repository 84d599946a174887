//! The attempt state machine: one request's attempts, their shared deadline, and what each
//! attempt's outcome means for the next step and for health.
//!
//! Pure: time and randomness are passed in, nothing is sent or locked here. `serve::forward`
//! drives it: `next_wait` before an attempt, `budget` for it, `record` after it, and
//! `final_error` when no attempt produced the answer. Every rule about "what happens on a 429"
//! (or a reset, an auth failure, a model that is gone, a prompt too long) is decided in
//! `record`, and the health consequences leave it as `HealthSignal` values that `health` alone
//! applies, the way linkerd2-proxy's breaker consumes classified outcomes.

use crate::decide::backoff;
use crate::decide::outcome::{self, Grain};
use crate::model::error::{ErrorKind, GatewayError};
use crate::model::outcome::FailoverReason;
use crate::model::{Backoff, Policy, ProviderId};
use std::time::Duration;
use tokio::time::Instant;

/// A failed attempt, kept for the final error message and the 429 decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub provider: String,
    pub reason: FailoverReason,
    pub status: Option<u16>,
    pub retry_after_s: Option<u64>,
}

/// What one attempt produced, as the executor saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A response header arrived and nothing of it reached the client yet. `body_verdict` is
    /// what its error body says (`None`: an answer to pass on as it is).
    Answered {
        status: u16,
        ttfb: Duration,
        body_verdict: Option<FailoverReason>,
    },
    /// No usable response: an I/O failure, a timeout, or a status to fail over on.
    Failed {
        reason: FailoverReason,
        status: Option<u16>,
        retry_after_s: Option<u64>,
    },
}

/// What the executor knows about the attempt it ran.
#[derive(Debug, Clone, Copy)]
pub struct AttemptFacts<'a> {
    pub provider: ProviderId,
    pub provider_name: &'a str,
    /// Index of the endpoint within the provider's pool.
    pub endpoint: usize,
    /// Which breakers (the endpoint's, the offering's) admitted this as their probation request.
    pub probation: Probation,
    /// The context window of the offering tried (its own, else its model's).
    pub context_tokens: Option<u64>,
    /// Some candidate of this request has a larger window than `context_tokens`.
    pub larger_window_exists: bool,
    /// How long an offering that answered "model unavailable" stays out.
    pub offering_cooldown: Duration,
}

/// The next step after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// This answer goes to the client.
    Deliver,
    /// Try the next candidate (if attempts and the deadline allow).
    Next(FailoverReason),
    /// No further attempt: the deadline ran out.
    Stop(FailoverReason),
    /// Try the same offering again after this wait (`same_offering_retries`, or a short
    /// Retry-After within `max_retry_after_wait`).
    Again {
        reason: FailoverReason,
        wait: Duration,
    },
}

/// What an attempt tells health about the endpoint or the offering (the model on that provider)
/// it went to; `health::Health::apply` is the one consumer. Which grain a failure is about is
/// `decide::outcome::grain`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HealthSignal {
    /// The endpoint answered: close its breaker, feed the latency score.
    Success { ttfb: Duration },
    /// The endpoint answered with an error about the model: the host is up (close its breaker),
    /// but an error answer's timing is not a latency sample.
    EndpointAnswered,
    /// A failure of the endpoint or of the offering. Only the first failure of one request on one
    /// endpoint counts for a breaker; later ones only record the error.
    Failure {
        reason: FailoverReason,
        grain: Grain,
        count_for_breaker: bool,
    },
    /// The answer said when to come back: hold that grain at least that long (never shortened).
    RetryAfter { after: Duration, grain: Grain },
    /// A probation request of this grain's breaker ended without a verdict on it: free the slot.
    ProbationAbandoned(Grain),
    /// The provider says this model is gone there: take the offering out for this long.
    OfferingUnavailable(Duration),
    /// The offering answered: close its breaker; whatever marked it out is over.
    OfferingAnswered,
    /// The provider's account cannot pay (credits, quota): keep the endpoint out for this long.
    AccountProblem(Duration),
}

impl HealthSignal {
    /// Whether this signal is a verdict on `grain`'s breaker (so a probation of it is settled).
    fn settles(&self, grain: Grain) -> bool {
        match (self, grain) {
            (HealthSignal::Success { .. } | HealthSignal::EndpointAnswered, Grain::Endpoint) => {
                true
            }
            (HealthSignal::OfferingAnswered, Grain::Offering) => true,
            (
                HealthSignal::Failure {
                    grain: g,
                    count_for_breaker: true,
                    ..
                },
                _,
            ) => *g == grain,
            _ => false,
        }
    }
}

/// At most five signals per attempt; a fixed array keeps the success path allocation-free.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals([Option<HealthSignal>; 5]);

impl Signals {
    fn push(&mut self, s: HealthSignal) {
        if let Some(slot) = self.0.iter_mut().find(|x| x.is_none()) {
            *slot = Some(s);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = HealthSignal> + '_ {
        self.0.iter().flatten().copied()
    }

    /// A probation of `grain` that this attempt gave no verdict on is abandoned, so the next
    /// request can be the probe instead of the breaker staying half-open forever.
    fn settle_probation(&mut self, grain: Grain, was_probation: bool) {
        if was_probation && !self.iter().any(|s| s.settles(grain)) {
            self.push(HealthSignal::ProbationAbandoned(grain));
        }
    }
}

/// Which breakers admitted this attempt as their one probation request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probation {
    pub endpoint: bool,
    pub offering: bool,
}

/// `record`'s answer: the next step and what to tell health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub step: Step,
    pub signals: Signals,
}

/// One request's attempts.
#[derive(Debug)]
pub struct Attempts {
    max_attempts: u32,
    start: Instant,
    deadline: Instant,
    backoff: Backoff,
    /// Attempts started so far.
    started: u32,
    failures: Vec<Failure>,
    /// Endpoints that already failed this request: only the first failure counts for a breaker.
    failed_once: Vec<(ProviderId, usize)>,
    /// Raised by a context-length answer: only offerings with at least this window remain.
    min_context: u64,
    deadline_hit: bool,
    /// A candidate was passed over for being at its `max_connections`.
    saturated: bool,
    same_offering_retries: u32,
    max_retry_after_wait: Duration,
    /// Same-offering retries used on the current candidate.
    retried_here: u32,
}

impl Attempts {
    /// `first_byte` is the first candidate's first-byte timeout: without a `request_timeout`
    /// the deadline is that times the attempts. A pinned request gets one attempt.
    pub fn new(policy: &Policy, pinned: bool, first_byte: Duration, now: Instant) -> Attempts {
        let max_attempts = if pinned { 1 } else { policy.max_attempts };
        Attempts {
            max_attempts,
            start: now,
            deadline: now + policy.request_timeout.unwrap_or(first_byte * max_attempts),
            backoff: policy.backoff.clone(),
            started: 0,
            failures: Vec::new(),
            failed_once: Vec::new(),
            min_context: 0,
            deadline_hit: false,
            saturated: false,
            same_offering_retries: policy.same_offering_retries,
            max_retry_after_wait: policy.max_retry_after_wait,
            retried_here: 0,
        }
    }

    /// Before the next attempt: how long to back off first (zero before the first), or `None`
    /// when attempts or the deadline are used up. `unit` is a uniform draw in [0, 1).
    pub fn next_wait(&mut self, now: Instant, unit: f64) -> Option<Duration> {
        if self.started >= self.max_attempts || self.deadline_hit {
            return None;
        }
        let wait = match self.started {
            0 => Duration::ZERO,
            n => backoff::delay_from(&self.backoff, n - 1, unit),
        };
        if now + wait >= self.deadline && (self.started > 0 || now >= self.deadline) {
            self.deadline_hit = true;
            return None;
        }
        Some(wait)
    }

    /// An attempt starts now (after its wait); `false` when the deadline has passed.
    pub fn begin(&mut self, now: Instant) -> bool {
        if now >= self.deadline {
            self.deadline_hit = true;
            return false;
        }
        self.started += 1;
        true
    }

    /// The first-byte budget of an attempt starting now at a provider with this first-byte
    /// timeout, and whether the deadline (rather than that timeout) bounds it.
    pub fn budget(&self, now: Instant, first_byte: Duration) -> (Duration, bool) {
        let budget = first_byte.min(self.deadline.saturating_duration_since(now));
        (budget, budget < first_byte)
    }

    /// A continuation of a broken stream: at most `attempts` more, within the original request's
    /// `deadline`.
    pub fn limit(&mut self, attempts: u32, deadline: Instant) {
        self.max_attempts = self.max_attempts.min(attempts);
        self.deadline = self.deadline.min(deadline);
    }

    /// When the request's time is up, whatever is in flight.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Offerings whose window is below this are no longer worth trying (0: no constraint).
    pub fn min_context(&self) -> u64 {
        self.min_context
    }

    /// A candidate was passed over because its provider is at `max_connections`.
    pub fn note_saturated(&mut self) {
        self.saturated = true;
    }

    /// Whether any candidate was passed over for `max_connections` during this request.
    pub fn saturated(&self) -> bool {
        self.saturated
    }

    /// Attempts started so far.
    pub fn started(&self) -> u32 {
        self.started
    }

    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// Record what the attempt just begun produced.
    pub fn record(&mut self, a: &AttemptFacts<'_>, outcome: Outcome) -> Verdict {
        let mut signals = Signals::default();
        let first_failure_here = !self.failed_once.contains(&(a.provider, a.endpoint));
        let (reason, status, retry_after_s) = match outcome {
            Outcome::Answered {
                status,
                ttfb,
                body_verdict,
            } => {
                let failover = match body_verdict {
                    // Only a larger window can help; without one (or without an attempt left to
                    // use it) the client gets the provider's own answer.
                    Some(FailoverReason::ContextLength) => {
                        let attempts_left = self.started < self.max_attempts;
                        (a.larger_window_exists && attempts_left).then(|| {
                            self.min_context = a.context_tokens.unwrap_or(0) + 1;
                            FailoverReason::ContextLength
                        })
                    }
                    other => other,
                };
                let Some(reason) = failover else {
                    signals.push(HealthSignal::Success { ttfb });
                    signals.push(HealthSignal::OfferingAnswered);
                    return Verdict {
                        step: Step::Deliver,
                        signals,
                    };
                };
                match reason {
                    FailoverReason::AuthFailed => signals.push(HealthSignal::Failure {
                        reason,
                        grain: Grain::Endpoint,
                        count_for_breaker: first_failure_here,
                    }),
                    // The provider is up and said something precise about this model.
                    _ => signals.push(HealthSignal::Success { ttfb }),
                }
                match reason {
                    FailoverReason::ModelUnavailable => {
                        signals.push(HealthSignal::OfferingUnavailable(a.offering_cooldown))
                    }
                    FailoverReason::ProviderAccount => {
                        signals.push(HealthSignal::AccountProblem(a.offering_cooldown))
                    }
                    // The model answered (the prompt is too long for it): it works.
                    FailoverReason::ContextLength => signals.push(HealthSignal::OfferingAnswered),
                    _ => {}
                }
                (reason, Some(status), None)
            }
            Outcome::Failed {
                reason,
                status,
                retry_after_s,
            } => {
                let grain = outcome::grain(reason);
                // A 429/503 that says when to come back is a cooldown, not a breaker failure.
                let cooldown = retry_after_s.filter(|_| matches!(status, Some(429) | Some(503)));
                if reason == FailoverReason::ProviderAccount {
                    signals.push(HealthSignal::AccountProblem(a.offering_cooldown));
                    signals.push(HealthSignal::Failure {
                        reason,
                        grain: Grain::Endpoint,
                        count_for_breaker: false,
                    });
                } else if let Some(secs) = cooldown {
                    signals.push(HealthSignal::RetryAfter {
                        after: Duration::from_secs(secs),
                        grain,
                    });
                    signals.push(HealthSignal::Failure {
                        reason,
                        grain,
                        count_for_breaker: false,
                    });
                } else {
                    // The request's own deadline cutting a probation short says nothing either
                    // way about the probed grain.
                    let no_verdict = reason == FailoverReason::Deadline
                        && (a.probation.endpoint || a.probation.offering);
                    signals.push(HealthSignal::Failure {
                        reason,
                        grain,
                        count_for_breaker: first_failure_here && !no_verdict,
                    });
                }
                if grain == Grain::Offering && status.is_some() {
                    // A status about the model came from a host that is up.
                    signals.push(HealthSignal::EndpointAnswered);
                }
                (reason, status, retry_after_s)
            }
        };
        signals.settle_probation(Grain::Endpoint, a.probation.endpoint);
        signals.settle_probation(Grain::Offering, a.probation.offering);
        self.failed_once.push((a.provider, a.endpoint));
        self.failures.push(Failure {
            provider: a.provider_name.to_string(),
            reason,
            status,
            retry_after_s,
        });
        let step = if reason == FailoverReason::Deadline {
            self.deadline_hit = true;
            Step::Stop(reason)
        } else if let Some(wait) = self.again(reason, status, retry_after_s) {
            self.retried_here += 1;
            Step::Again { reason, wait }
        } else {
            self.retried_here = 0;
            Step::Next(reason)
        };
        Verdict { step, signals }
    }

    /// Whether (and after how long) to retry the same offering: a 429 whose Retry-After fits
    /// `max_retry_after_wait`, or a transient failure while `same_offering_retries` last; never
    /// past the deadline or the attempts.
    fn again(
        &self,
        reason: FailoverReason,
        status: Option<u16>,
        retry_after_s: Option<u64>,
    ) -> Option<Duration> {
        if self.started >= self.max_attempts {
            return None;
        }
        let wait = match (reason, retry_after_s) {
            (FailoverReason::Status429, Some(s))
                if Duration::from_secs(s) <= self.max_retry_after_wait
                    && self.retried_here < self.max_attempts =>
            {
                Duration::from_secs(s)
            }
            (FailoverReason::Status5xx | FailoverReason::Reset, _)
                if self.retried_here < self.same_offering_retries && status != Some(429) =>
            {
                backoff::delay_from(&self.backoff, self.retried_here, 0.5)
            }
            _ => return None,
        };
        Some(wait)
    }

    /// Whether waiting `wait` from `now` still leaves the deadline room for another attempt
    /// (the executor asks before a same-offering retry; no: move on to the next twin).
    pub fn fits(&self, now: Instant, wait: Duration) -> bool {
        now + wait < self.deadline
    }

    /// The error the client gets when no attempt produced the answer.
    pub fn final_error(&self) -> GatewayError {
        if self.failures.is_empty() && self.saturated {
            let mut e = GatewayError::new(
                ErrorKind::Overloaded,
                "every provider of this model is at its max_connections; retry shortly",
            );
            e.retry_after_s = Some(1);
            return e;
        }
        final_error(
            &self.failures,
            self.deadline_hit,
            self.deadline - self.start,
        )
    }
}

/// What health hears when an answer already committed to breaks (a stall, a cut): a failure of
/// the grain its reason is about, counted like any other.
pub fn broken_after_commit(reason: FailoverReason) -> HealthSignal {
    HealthSignal::Failure {
        reason,
        grain: outcome::grain(reason),
        count_for_breaker: true,
    }
}

/// The error for a list of failures: a 504 when time ran out or every provider stayed silent, a
/// 404 when every twin said the model is gone, a 429 (with the smallest Retry-After) when every
/// one rate-limited, else a 502 listing each attempt.
pub fn final_error(failures: &[Failure], deadline_hit: bool, total: Duration) -> GatewayError {
    let list = failures
        .iter()
        .map(|f| match f.status {
            Some(s) => format!("{}: {} ({s})", f.provider, f.reason),
            None => format!("{}: {}", f.provider, f.reason),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let all = |r: FailoverReason| !failures.is_empty() && failures.iter().all(|f| f.reason == r);
    let all_timeouts = !failures.is_empty() && failures.iter().all(|f| f.reason.is_timeout());
    if deadline_hit || all_timeouts {
        return GatewayError::new(
            ErrorKind::UpstreamTimeout,
            format!(
                "no provider answered within {} ms: {}",
                total.as_millis(),
                if list.is_empty() {
                    "no attempt could start"
                } else {
                    &list
                }
            ),
        );
    }
    if all(FailoverReason::ModelUnavailable) {
        return GatewayError::new(
            ErrorKind::ModelUnavailable,
            format!("no provider serves this model right now: {list}"),
        );
    }
    if all(FailoverReason::Status429) {
        let mut e = GatewayError::new(
            ErrorKind::RateLimited,
            format!("every provider is rate limiting: {list}"),
        );
        e.retry_after_s = failures.iter().filter_map(|f| f.retry_after_s).min();
        return e;
    }
    GatewayError::new(
        ErrorKind::UpstreamFailed,
        if list.is_empty() {
            "no provider could be tried".to_string()
        } else {
            format!("all providers failed: {list}")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, timeout_ms: Option<u64>) -> Policy {
        Policy {
            max_attempts,
            request_timeout: timeout_ms.map(Duration::from_millis),
            ..Policy::default()
        }
    }

    fn facts(provider: usize, endpoint: usize) -> AttemptFacts<'static> {
        AttemptFacts {
            provider: ProviderId(provider),
            provider_name: ["a", "b", "c"][provider],
            endpoint,
            probation: Probation::default(),
            context_tokens: Some(8000),
            larger_window_exists: false,
            offering_cooldown: Duration::from_secs(600),
        }
    }

    fn failed(reason: FailoverReason, status: Option<u16>, retry: Option<u64>) -> Outcome {
        Outcome::Failed {
            reason,
            status,
            retry_after_s: retry,
        }
    }

    fn answered(status: u16, verdict: Option<FailoverReason>) -> Outcome {
        Outcome::Answered {
            status,
            ttfb: Duration::from_millis(40),
            body_verdict: verdict,
        }
    }

    fn signals(v: &Verdict) -> Vec<HealthSignal> {
        v.signals.iter().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_and_backoff_within_one_deadline() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
        // The first attempt never waits; its budget is the first-byte timeout.
        assert_eq!(a.next_wait(now, 0.9), Some(Duration::ZERO));
        assert!(a.begin(now));
        assert_eq!(
            a.budget(now, Duration::from_millis(500)),
            (Duration::from_millis(500), false)
        );
        let v = a.record(&facts(0, 0), failed(FailoverReason::Reset, None, None));
        assert_eq!(v.step, Step::Next(FailoverReason::Reset));
        // Full jitter: the draw scales the ceiling (25 ms base after the first failure).
        assert_eq!(a.next_wait(now, 0.5), Some(Duration::from_micros(12_500)));
        tokio::time::advance(Duration::from_millis(1400)).await;
        let now = Instant::now();
        // 100 ms of the 1500 ms deadline are left: the budget shrinks to it.
        assert!(a.begin(now));
        assert_eq!(
            a.budget(now, Duration::from_millis(500)),
            (Duration::from_millis(100), true)
        );
        a.record(&facts(1, 0), failed(FailoverReason::Deadline, None, None));
        // The deadline ended the request: no third attempt.
        assert_eq!(a.next_wait(now, 0.0), None);
        let e = a.final_error();
        assert_eq!(e.kind, ErrorKind::UpstreamTimeout);
        assert!(e.message.contains("1500 ms"), "{}", e.message);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pinned_request_gets_one_attempt() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), true, Duration::from_millis(500), now);
        assert!(a.next_wait(now, 0.0).is_some());
        a.begin(now);
        a.record(
            &facts(0, 0),
            failed(FailoverReason::Status5xx, Some(503), None),
        );
        assert_eq!(a.next_wait(now, 0.0), None);
        assert_eq!(a.final_error().kind, ErrorKind::UpstreamFailed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_would_pass_the_deadline_ends_the_request() {
        let now = Instant::now();
        let mut p = policy(3, Some(100));
        p.backoff.base = Duration::from_millis(1000);
        p.backoff.max = Duration::from_millis(1000);
        let mut a = Attempts::new(&p, false, Duration::from_millis(500), now);
        a.next_wait(now, 0.0);
        a.begin(now);
        a.record(
            &facts(0, 0),
            failed(FailoverReason::Status5xx, Some(500), None),
        );
        assert_eq!(a.next_wait(now, 0.99), None);
        assert_eq!(a.final_error().kind, ErrorKind::UpstreamTimeout);
    }

    #[test]
    fn retry_after_cools_the_offering_without_tripping_its_breaker() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
        a.begin(now);
        let v = a.record(
            &facts(0, 0),
            failed(FailoverReason::Status429, Some(429), Some(7)),
        );
        assert_eq!(
            signals(&v),
            vec![
                HealthSignal::RetryAfter {
                    after: Duration::from_secs(7),
                    grain: Grain::Offering
                },
                HealthSignal::Failure {
                    reason: FailoverReason::Status429,
                    grain: Grain::Offering,
                    count_for_breaker: false
                },
                HealthSignal::EndpointAnswered,
            ]
        );
        // A Retry-After on a 500 is not a cooldown: an ordinary failure of the offering; the
        // host that answered it is up.
        a.begin(now);
        let v = a.record(
            &facts(1, 0),
            failed(FailoverReason::Status5xx, Some(500), Some(7)),
        );
        assert_eq!(
            signals(&v),
            vec![
                HealthSignal::Failure {
                    reason: FailoverReason::Status5xx,
                    grain: Grain::Offering,
                    count_for_breaker: true
                },
                HealthSignal::EndpointAnswered,
            ]
        );
        // Every failure a 429: a 429 with the smallest Retry-After.
        a.begin(now);
        a.record(
            &facts(2, 0),
            failed(FailoverReason::Status429, Some(429), Some(3)),
        );
        assert_eq!(a.final_error().kind, ErrorKind::UpstreamFailed);
        let e = final_error(
            &[a.failures()[0].clone(), a.failures()[2].clone()],
            false,
            Duration::from_secs(1),
        );
        assert_eq!((e.kind, e.retry_after_s), (ErrorKind::RateLimited, Some(3)));
    }

    #[test]
    fn each_reason_costs_its_grain() {
        use FailoverReason as R;
        let now = Instant::now();
        let cases = [
            (R::ConnectFailure, None, Grain::Endpoint),
            (R::ConnectTimeout, None, Grain::Endpoint),
            (R::Reset, None, Grain::Endpoint),
            (R::FirstByteTimeout, None, Grain::Offering),
            (R::Status408, Some(408), Grain::Offering),
            (R::Status409, Some(409), Grain::Offering),
            (R::Status429, Some(429), Grain::Offering),
            (R::Status5xx, Some(503), Grain::Offering),
            (R::Status5xx, Some(529), Grain::Offering),
        ];
        for (reason, status, grain) in cases {
            let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
            a.begin(now);
            let v = a.record(&facts(0, 0), failed(reason, status, None));
            assert_eq!(
                signals(&v)[0],
                HealthSignal::Failure {
                    reason,
                    grain,
                    count_for_breaker: true
                },
                "{reason}"
            );
            // Only an answer with a status proves the host up.
            assert_eq!(
                signals(&v).contains(&HealthSignal::EndpointAnswered),
                status.is_some(),
                "{reason}"
            );
        }
    }

    #[test]
    fn only_the_first_failure_of_an_endpoint_counts_for_its_breaker() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
        for expected in [true, false] {
            a.begin(now);
            let v = a.record(&facts(0, 0), failed(FailoverReason::Reset, None, None));
            assert_eq!(
                signals(&v),
                vec![HealthSignal::Failure {
                    reason: FailoverReason::Reset,
                    grain: Grain::Endpoint,
                    count_for_breaker: expected
                }]
            );
        }
        // Another endpoint of the same provider is its own breaker.
        a.begin(now);
        let v = a.record(&facts(0, 1), failed(FailoverReason::Reset, None, None));
        assert!(matches!(
            signals(&v)[0],
            HealthSignal::Failure {
                count_for_breaker: true,
                ..
            }
        ));
    }

    #[test]
    fn probation_without_a_verdict_is_abandoned() {
        let now = Instant::now();
        let both = AttemptFacts {
            probation: Probation {
                endpoint: true,
                offering: true,
            },
            ..facts(0, 0)
        };
        let fresh = || {
            let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
            a.begin(now);
            a
        };
        // The request's deadline: no verdict on either grain.
        let v = fresh().record(&both, failed(FailoverReason::Deadline, None, None));
        assert_eq!(
            signals(&v),
            vec![
                HealthSignal::Failure {
                    reason: FailoverReason::Deadline,
                    grain: Grain::Offering,
                    count_for_breaker: false
                },
                HealthSignal::ProbationAbandoned(Grain::Endpoint),
                HealthSignal::ProbationAbandoned(Grain::Offering),
            ]
        );
        // A 503 with Retry-After: the host answered (endpoint settled), the model asked for time.
        let v = fresh().record(&both, failed(FailoverReason::Status5xx, Some(503), Some(2)));
        assert!(signals(&v).contains(&HealthSignal::EndpointAnswered));
        assert_eq!(
            signals(&v).last(),
            Some(&HealthSignal::ProbationAbandoned(Grain::Offering))
        );
        // A connect failure settles the endpoint (a failure) and says nothing of the model.
        let v = fresh().record(&both, failed(FailoverReason::ConnectFailure, None, None));
        assert_eq!(
            signals(&v),
            vec![
                HealthSignal::Failure {
                    reason: FailoverReason::ConnectFailure,
                    grain: Grain::Endpoint,
                    count_for_breaker: true
                },
                HealthSignal::ProbationAbandoned(Grain::Offering),
            ]
        );
        // A 500 settles both: the host answered, the model failed.
        let v = fresh().record(&both, failed(FailoverReason::Status5xx, Some(500), None));
        assert!(!signals(&v)
            .iter()
            .any(|s| matches!(s, HealthSignal::ProbationAbandoned(_))));
        // A success settles both.
        let v = fresh().record(&both, answered(200, None));
        assert_eq!(v.signals.iter().count(), 2);
    }

    #[test]
    fn answers_deliver_or_fail_over_by_their_body() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
        a.begin(now);
        let v = a.record(
            &facts(0, 0),
            answered(404, Some(FailoverReason::ModelUnavailable)),
        );
        assert_eq!(v.step, Step::Next(FailoverReason::ModelUnavailable));
        assert_eq!(
            signals(&v),
            vec![
                HealthSignal::Success {
                    ttfb: Duration::from_millis(40)
                },
                HealthSignal::OfferingUnavailable(Duration::from_secs(600))
            ]
        );
        a.begin(now);
        let v = a.record(
            &facts(1, 0),
            answered(403, Some(FailoverReason::AuthFailed)),
        );
        assert_eq!(
            signals(&v),
            vec![HealthSignal::Failure {
                reason: FailoverReason::AuthFailed,
                grain: Grain::Endpoint,
                count_for_breaker: true
            }]
        );
        a.begin(now);
        let v = a.record(&facts(2, 0), answered(400, None));
        assert_eq!(v.step, Step::Deliver);
        assert_eq!(
            signals(&v),
            vec![
                HealthSignal::Success {
                    ttfb: Duration::from_millis(40)
                },
                HealthSignal::OfferingAnswered
            ]
        );
        let e = final_error(&a.failures()[..1], false, Duration::from_secs(1));
        assert_eq!(e.kind, ErrorKind::ModelUnavailable);
    }

    #[test]
    fn a_context_length_answer_moves_only_to_a_larger_window() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
        a.begin(now);
        // No larger window on offer: the provider's own 400 goes to the client.
        let v = a.record(
            &facts(0, 0),
            answered(400, Some(FailoverReason::ContextLength)),
        );
        assert_eq!(v.step, Step::Deliver);
        assert_eq!(a.min_context(), 0);
        a.begin(now);
        let bigger = AttemptFacts {
            larger_window_exists: true,
            ..facts(0, 0)
        };
        let v = a.record(&bigger, answered(400, Some(FailoverReason::ContextLength)));
        assert_eq!(v.step, Step::Next(FailoverReason::ContextLength));
        assert_eq!(a.min_context(), 8001);
        // On the last attempt there is nothing to move to: deliver.
        a.begin(now);
        let v = a.record(&bigger, answered(400, Some(FailoverReason::ContextLength)));
        assert_eq!(v.step, Step::Deliver);
    }

    #[test]
    fn an_account_problem_keeps_the_provider_out_long() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
        a.begin(now);
        let v = a.record(
            &facts(0, 0),
            failed(FailoverReason::ProviderAccount, Some(402), None),
        );
        assert_eq!(v.step, Step::Next(FailoverReason::ProviderAccount));
        assert_eq!(
            signals(&v),
            vec![
                HealthSignal::AccountProblem(Duration::from_secs(600)),
                HealthSignal::Failure {
                    reason: FailoverReason::ProviderAccount,
                    grain: Grain::Endpoint,
                    count_for_breaker: false
                }
            ]
        );
    }

    #[test]
    fn same_offering_retries_and_short_retry_afters_stay_on_the_offering() {
        let now = Instant::now();
        let mut p = policy(4, None);
        p.same_offering_retries = 1;
        p.max_retry_after_wait = Duration::from_millis(3000);
        let mut a = Attempts::new(&p, false, Duration::from_millis(500), now);
        a.begin(now);
        // A 500: once more on the same offering, then the next twin.
        let v = a.record(
            &facts(0, 0),
            failed(FailoverReason::Status5xx, Some(500), None),
        );
        assert!(matches!(
            v.step,
            Step::Again {
                reason: FailoverReason::Status5xx,
                ..
            }
        ));
        a.begin(now);
        let v = a.record(
            &facts(0, 0),
            failed(FailoverReason::Status5xx, Some(500), None),
        );
        assert_eq!(v.step, Step::Next(FailoverReason::Status5xx));
        // A 429 with Retry-After: 1 is waited out; Retry-After: 10 is not.
        a.begin(now);
        let v = a.record(
            &facts(1, 0),
            failed(FailoverReason::Status429, Some(429), Some(1)),
        );
        assert_eq!(
            v.step,
            Step::Again {
                reason: FailoverReason::Status429,
                wait: Duration::from_secs(1)
            }
        );
        let mut b = Attempts::new(&p, false, Duration::from_millis(500), now);
        b.begin(now);
        let v = b.record(
            &facts(1, 0),
            failed(FailoverReason::Status429, Some(429), Some(10)),
        );
        assert_eq!(v.step, Step::Next(FailoverReason::Status429));
        // Off by default: the next twin at once.
        let mut c = Attempts::new(&policy(4, None), false, Duration::from_millis(500), now);
        c.begin(now);
        let v = c.record(
            &facts(0, 0),
            failed(FailoverReason::Status5xx, Some(500), None),
        );
        assert_eq!(v.step, Step::Next(FailoverReason::Status5xx));
        // A wait past the deadline does not fit.
        assert!(a.fits(now, Duration::from_millis(100)));
        assert!(!a.fits(now, Duration::from_secs(60)));
    }

    #[test]
    fn saturation_without_an_attempt_is_an_overload() {
        let now = Instant::now();
        let mut a = Attempts::new(&policy(3, None), false, Duration::from_millis(500), now);
        a.note_saturated();
        let e = a.final_error();
        assert_eq!((e.kind, e.retry_after_s), (ErrorKind::Overloaded, Some(1)));
    }

    #[test]
    fn final_error_picks_the_status() {
        let f = |reason, retry| Failure {
            provider: "p".into(),
            reason,
            status: None,
            retry_after_s: retry,
        };
        let d = Duration::from_millis(900);
        let e = final_error(
            &[
                f(FailoverReason::Status429, Some(7)),
                f(FailoverReason::Status429, Some(3)),
            ],
            false,
            d,
        );
        assert_eq!((e.kind, e.retry_after_s), (ErrorKind::RateLimited, Some(3)));
        let e = final_error(
            &[
                f(FailoverReason::Status429, None),
                f(FailoverReason::Status5xx, None),
            ],
            false,
            d,
        );
        assert_eq!(e.kind, ErrorKind::UpstreamFailed);
        assert!(
            e.message.contains("p: status_429; p: status_5xx"),
            "{}",
            e.message
        );
        let e = final_error(&[f(FailoverReason::FirstByteTimeout, None)], false, d);
        assert_eq!(e.kind, ErrorKind::UpstreamTimeout);
        let e = final_error(&[f(FailoverReason::ConnectFailure, None)], true, d);
        assert_eq!(e.kind, ErrorKind::UpstreamTimeout);
        assert!(e.message.contains("900 ms"));
    }
}
