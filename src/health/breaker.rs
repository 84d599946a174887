//! Passive circuit breaker for one grain of health (an endpoint, or an offering: one model on one
//! provider): a small explicit state machine, after linkerd2-proxy's consecutive-failures breaker.
//!
//! closed ──(`failures` consecutive retryable failures)──▶ open(cooldown)
//! open ──(cooldown elapsed, one request admitted)──▶ half-open (probation)
//! half-open ──success──▶ closed;  half-open ──failure──▶ open(2 × cooldown, capped)
//!
//! The cap (`max_cooldown`, 30 s by default) is what keeps recovery in step with the outage: a
//! probation that lands inside a long outage can only push the next one out to the cap, so a
//! twin that recovers is back within one capped cooldown. Each open period is jittered down to
//! between 3/4 and all of its cooldown, so breakers that opened together (several offerings, or
//! replicas behind one outage) do not send their probations in one burst; the jitter never
//! lengthens a period past the cap.
//!
//! Time and the jitter draw are passed in, never read here, so it is tested on tokio's paused
//! clock.

use crate::model::BreakerConf;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BreakerState {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    /// One probation request is in flight; its outcome decides.
    HalfOpen {
        cooldown: Duration,
    },
}

impl BreakerState {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open (the `twinroute_breaker_state` gauge).
    pub fn gauge(&self) -> i64 {
        match self {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen { .. } => 1,
            BreakerState::Open { .. } => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// Normal traffic.
    Admit,
    /// The cooldown is over and this request is the one probation request.
    Probation,
    /// Open (until the given instant) or a probation request is already out.
    Reject { until: Option<Instant> },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    conf: BreakerConf,
    state: BreakerState,
}

impl Breaker {
    pub fn new(conf: BreakerConf) -> Breaker {
        Breaker {
            conf,
            state: BreakerState::Closed {
                consecutive_failures: 0,
            },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether routing should skip this provider now, without changing state.
    pub fn blocked(&self, now: Instant) -> Option<Instant> {
        match self.state {
            BreakerState::Closed { .. } => None,
            BreakerState::Open { until, .. } if now < until => Some(until),
            BreakerState::Open { .. } => None,
            // Probation in flight: everyone else waits for its verdict.
            BreakerState::HalfOpen { cooldown } => Some(now + cooldown),
        }
    }

    /// Called right before a request is sent to this provider.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Admit,
            BreakerState::Open { until, cooldown } => {
                if now >= until {
                    self.state = BreakerState::HalfOpen { cooldown };
                    Admission::Probation
                } else {
                    Admission::Reject { until: Some(until) }
                }
            }
            BreakerState::HalfOpen { .. } => Admission::Reject { until: None },
        }
    }

    /// Whether it holds anything against its grain: failures counted, open or half-open.
    pub fn failing(&self) -> bool {
        !matches!(
            self.state,
            BreakerState::Closed {
                consecutive_failures: 0
            }
        )
    }

    /// Whether it is closed (normal traffic passes).
    pub fn admits_traffic(&self) -> bool {
        matches!(self.state, BreakerState::Closed { .. })
    }

    /// The fleet counted `failures` failures in all: open now, as if this replica had counted
    /// them (a closed breaker only). Returns the end of the open period when it opened.
    pub fn trip(&mut self, now: Instant, unit: f64) -> Option<Instant> {
        let BreakerState::Closed { .. } = self.state else {
            return None;
        };
        let cooldown = self.conf.cooldown.min(self.conf.max_cooldown);
        let until = now + jittered(cooldown, unit);
        self.state = BreakerState::Open { until, cooldown };
        Some(until)
    }

    /// Returns whether it was not closed (a change the fleet hears of: `health::verdict`).
    pub fn on_success(&mut self) -> bool {
        let was_closed = matches!(self.state, BreakerState::Closed { .. });
        self.state = BreakerState::Closed {
            consecutive_failures: 0,
        };
        !was_closed
    }

    /// A retryable failure of real traffic (the caller counts at most one per request). `unit`
    /// is a uniform draw in [0, 1) that jitters the open period when this failure opens it.
    /// Returns the end of the open period when this failure opened the breaker.
    pub fn on_failure(&mut self, now: Instant, unit: f64) -> Option<Instant> {
        let was_open = matches!(self.state, BreakerState::Open { .. });
        self.state = match self.state {
            BreakerState::Closed {
                consecutive_failures,
            } => {
                let n = consecutive_failures + 1;
                if n >= self.conf.failures {
                    let cooldown = self.conf.cooldown.min(self.conf.max_cooldown);
                    BreakerState::Open {
                        until: now + jittered(cooldown, unit),
                        cooldown,
                    }
                } else {
                    BreakerState::Closed {
                        consecutive_failures: n,
                    }
                }
            }
            BreakerState::HalfOpen { cooldown } => {
                let next = (cooldown * 2).min(self.conf.max_cooldown);
                BreakerState::Open {
                    until: now + jittered(next, unit),
                    cooldown: next,
                }
            }
            // Failures of requests admitted before it opened: already open, nothing to add.
            open @ BreakerState::Open { .. } => open,
        };
        match self.state {
            BreakerState::Open { until, .. } if !was_open => Some(until),
            _ => None,
        }
    }

    /// Another replica saw this breaker open until `until`: open here too. Never shortens an
    /// open period, and never interrupts a probation in flight here (its verdict decides).
    pub fn learned_open(&mut self, until: Instant) {
        let cooldown = self.conf.cooldown.min(self.conf.max_cooldown);
        match self.state {
            BreakerState::Closed { .. } => self.state = BreakerState::Open { until, cooldown },
            BreakerState::Open { until: u, cooldown } if u < until => {
                self.state = BreakerState::Open { until, cooldown }
            }
            _ => {}
        }
    }

    /// A probation request ended without a verdict (client went away, deadline): let the next
    /// request be the probe instead of staying half-open forever.
    pub fn on_abandoned(&mut self, now: Instant) {
        if let BreakerState::HalfOpen { cooldown } = self.state {
            self.state = BreakerState::Open {
                until: now,
                cooldown,
            };
        }
    }
}

/// An open period of between 3/4 and all of `cooldown`, by the draw `unit` in [0, 1).
fn jittered(cooldown: Duration, unit: f64) -> Duration {
    cooldown.mul_f64(1.0 - 0.25 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> BreakerConf {
        BreakerConf {
            failures: 3,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(25),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let mut b = Breaker::new(conf());
        let now = Instant::now();
        b.on_failure(now, 0.0);
        b.on_failure(now, 0.0);
        b.on_success();
        b.on_failure(now, 0.0);
        b.on_failure(now, 0.0);
        assert_eq!(b.state().name(), "closed");
        b.on_failure(now, 0.0);
        assert_eq!(b.state().name(), "open");
        assert_eq!(
            b.blocked(Instant::now()),
            Some(now + Duration::from_secs(10))
        );
        assert!(matches!(b.admit(Instant::now()), Admission::Reject { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn one_probation_after_cooldown_then_close() {
        let mut b = Breaker::new(conf());
        for _ in 0..3 {
            b.on_failure(Instant::now(), 0.0);
        }
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert!(b.blocked(Instant::now()).is_some());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(b.blocked(Instant::now()), None);
        assert_eq!(b.admit(Instant::now()), Admission::Probation);
        // A second request while the probe is out is rejected.
        assert!(matches!(
            b.admit(Instant::now()),
            Admission::Reject { until: None }
        ));
        assert!(b.blocked(Instant::now()).is_some());
        b.on_success();
        assert_eq!(b.admit(Instant::now()), Admission::Admit);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probation_doubles_cooldown_capped() {
        let mut b = Breaker::new(conf());
        for _ in 0..3 {
            b.on_failure(Instant::now(), 0.0);
        }
        let mut expect = [20u64, 25, 25].into_iter();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert_eq!(b.admit(Instant::now()), Admission::Probation);
            b.on_failure(Instant::now(), 0.0);
            let BreakerState::Open { until, cooldown } = b.state() else {
                panic!("not open")
            };
            let want = Duration::from_secs(expect.next().unwrap());
            assert_eq!(cooldown, want);
            assert_eq!(until, Instant::now() + want);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probation_frees_the_slot() {
        let mut b = Breaker::new(conf());
        for _ in 0..3 {
            b.on_failure(Instant::now(), 0.0);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probation);
        b.on_abandoned(Instant::now());
        assert_eq!(b.admit(Instant::now()), Admission::Probation);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_shortens_open_periods_but_never_past_the_cap() {
        for unit in [0.0, 0.5, 0.999_999] {
            let mut b = Breaker::new(conf());
            for _ in 0..3 {
                b.on_failure(Instant::now(), unit);
            }
            let BreakerState::Open { until, cooldown } = b.state() else {
                panic!("not open")
            };
            let open_for = until - Instant::now();
            assert_eq!(cooldown, Duration::from_secs(10), "growth is not jittered");
            assert!(open_for <= cooldown && open_for >= cooldown.mul_f64(0.75));
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                assert_eq!(b.admit(Instant::now()), Admission::Probation);
                b.on_failure(Instant::now(), unit);
                let BreakerState::Open { until, .. } = b.state() else {
                    panic!("not open")
                };
                let open_for = until - Instant::now();
                assert!(open_for <= Duration::from_secs(25), "{open_for:?}");
                assert!(open_for >= Duration::from_secs(15), "{open_for:?}");
            }
        }
    }
}
