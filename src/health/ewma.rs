//! Latency estimates.
//!
//! `PeakEwma` (after Finagle / tower's peak-EWMA balancer): a sample above the estimate replaces
//! it at once, so a provider that turns slow loses traffic on its next response; lower samples
//! pull it down with a time-based decay, so recovery is gradual and a single fast reply does not
//! erase a bad minute.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct PeakEwma {
    decay: Duration,
    value_ms: Option<f64>,
    updated: Option<Instant>,
}

impl PeakEwma {
    pub fn new(decay: Duration) -> PeakEwma {
        PeakEwma {
            decay,
            value_ms: None,
            updated: None,
        }
    }

    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let s = sample.as_secs_f64() * 1000.0;
        self.value_ms = Some(match (self.value_ms, self.updated) {
            (Some(v), Some(t)) if s < v => {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                let w = (-dt / self.decay.as_secs_f64()).exp();
                v * w + s * (1.0 - w)
            }
            _ => s,
        });
        self.updated = Some(now);
    }

    pub fn get(&self) -> Option<f64> {
        self.value_ms
    }
}

/// Plain EWMA with a fixed weight per sample (probes arrive at a fixed interval).
#[derive(Debug, Clone, Default)]
pub struct Ewma {
    value_ms: Option<f64>,
}

impl Ewma {
    const ALPHA: f64 = 0.3;

    pub fn observe(&mut self, sample: Duration) {
        let s = sample.as_secs_f64() * 1000.0;
        self.value_ms = Some(match self.value_ms {
            Some(v) => v + Self::ALPHA * (s - v),
            None => s,
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.value_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peak_jumps_up_and_decays_down() {
        let mut e = PeakEwma::new(Duration::from_secs(10));
        e.observe(Duration::from_millis(100), Instant::now());
        assert_eq!(e.get(), Some(100.0));
        e.observe(Duration::from_millis(900), Instant::now());
        assert_eq!(
            e.get(),
            Some(900.0),
            "a slow response raises the score at once"
        );
        // An immediate fast reply barely moves it.
        e.observe(Duration::from_millis(100), Instant::now());
        assert!(e.get().unwrap() > 899.0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        e.observe(Duration::from_millis(100), Instant::now());
        let v = e.get().unwrap();
        // One decay constant later: ~63% of the way down.
        assert!((v - (100.0 + 800.0 * (-1f64).exp())).abs() < 1.0, "{v}");
        tokio::time::sleep(Duration::from_secs(60)).await;
        e.observe(Duration::from_millis(100), Instant::now());
        assert!(e.get().unwrap() < 102.0);
    }

    #[test]
    fn plain_ewma() {
        let mut e = Ewma::default();
        e.observe(Duration::from_millis(10));
        e.observe(Duration::from_millis(20));
        assert!((e.get().unwrap() - 13.0).abs() < 1e-9);
    }
}
