//! The queue's drain: runs due jobs oldest first, at most `queue.drain_per_s` starts a second,
//! each by sending its request to this process's own data-plane listener with the job token, so
//! a job goes through exactly the path a client request does; its answer is stored as the
//! provider gave it.

use crate::decide::queue as decide;
use crate::net::fetch::{self, FetchError};
use crate::serve::queue::{
    now_ms, JobMeta, Queue, Stored, JOB_HEADER, JOB_TOKEN_HEADER, NO_CAPACITY_HEADER,
};
use crate::serve::state::Shared;
use crate::wire::job;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Jobs running at once at most, whatever the drain rate (each holds a loopback connection).
const MAX_RUNNING: usize = 64;
/// Largest answer a job keeps (a long stream's SSE included).
const MAX_ANSWER: usize = 64 << 20;
/// The longest one run of a job may take.
const MAX_RUN: Duration = Duration::from_secs(900);
/// How often expired jobs are failed and finished ones past `keep_done_s` removed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The address the drain reaches the data plane at: the listener, with a wildcard address
/// replaced by loopback.
fn loopback(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() && a.is_ipv4() => format!("127.0.0.1:{}", a.port()),
        Ok(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => listen.to_string(),
    }
}

/// Runs due jobs, oldest first, at most `drain_per_s` starts a second.
pub struct Drain {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(q) = self.shared.queue.clone() else {
            return;
        };
        // On shutdown no job starts, and held connections are answered with their location.
        let closing = q.clone();
        let _close = Defer(move || closing.close());
        let spacing = decide::spacing(q.conf().drain_per_s);
        let running = Arc::new(Semaphore::new(MAX_RUNNING));
        let mut last_start: Option<Instant> = None;
        let mut next_sweep = Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if Instant::now() >= next_sweep {
                q.sweep(now_ms()).await;
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
            // The rate limit: no two starts closer than `spacing`.
            if let Some(t) = last_start {
                tokio::select! {
                    _ = tokio::time::sleep_until(t + spacing) => {}
                    _ = shutdown.changed() => return,
                }
            }
            let permit = tokio::select! {
                p = running.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.changed() => return,
            };
            match q.take_due(Instant::now()) {
                Some((seq, meta)) => {
                    last_start = Some(Instant::now());
                    let (shared, q) = (self.shared.clone(), q.clone());
                    tokio::spawn(async move {
                        run(&shared, &q, seq, meta).await;
                        drop(permit);
                    });
                }
                None => {
                    drop(permit);
                    let wake = q
                        .next_wake()
                        .map_or(next_sweep, |w| w.min(next_sweep))
                        .max(Instant::now() + Duration::from_millis(5));
                    tokio::select! {
                        _ = q.wake.notified() => {}
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

/// Runs its closure when dropped (when the drain service ends, however it ends).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// One run of a job: its request sent to this process's data plane, its answer stored.
async fn run(shared: &Shared, q: &Queue, seq: u64, meta: JobMeta) {
    let body = match q.body(seq).await {
        Ok(b) => b,
        Err(why) => {
            log::error!("job {}: {why}", meta.id);
            q.retry(seq, why).await;
            return;
        }
    };
    let rt = shared.runtime.load_full();
    let listen = loopback(&rt.config.listen);
    let url = format!("http://{listen}{}", meta.path);
    // Filtered again as it runs: a job an older version queued may hold headers outside
    // today's allowlist, which are never sent.
    let keep = crate::serve::background::route_headers(&rt.config);
    let mut headers: Vec<(&str, &str)> = meta
        .headers
        .iter()
        .filter(|(k, _)| job::kept_request_header(k, &keep))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.push((JOB_TOKEN_HEADER, q.token()));
    headers.push((JOB_HEADER, meta.id.as_str()));
    let left = Duration::from_millis(meta.deadline_ms.saturating_sub(now_ms()));
    let req = fetch::Request {
        method: "POST",
        url: &url,
        headers: &headers,
        body: Some(&body),
        timeout: left.clamp(Duration::from_secs(1), MAX_RUN),
        max_body: MAX_ANSWER,
    };
    // A DELETE while the job runs abandons the run: its connection to the data plane closes,
    // which stops a stream at its next event; a whole answer already being generated upstream
    // may still complete there (the DELETE's answer says "cancel_requested", not "cancelled").
    let mut done = q.watch_done(seq);
    let mut exchange = std::pin::pin!(fetch::exchange(&shared.connector, &shared.resolver, &req));
    let result = match done.as_mut() {
        Some(done) => tokio::select! {
            r = &mut exchange => r,
            _ = async { done.wait_for(|d| *d).await.is_ok() } => {
                if q.abandon(seq) {
                    log::info!("job {}: cancelled while running; run abandoned", meta.id);
                    return;
                }
                exchange.await
            }
        },
        None => exchange.await,
    };
    match result {
        Ok(a) if a.header(NO_CAPACITY_HEADER).is_some() => {
            let why = serde_json::from_slice::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("no capacity ({})", a.status));
            log::debug!("job {}: no capacity yet: {why}", meta.id);
            q.retry(seq, why).await;
        }
        Ok(a) => {
            let headers = a
                .headers
                .into_iter()
                .filter(|(k, _)| job::kept_answer_header(k))
                .collect();
            let state = Stored::Succeeded {
                status: a.status,
                headers,
                finished_ms: now_ms(),
            };
            log::info!("job {}: answered {}", meta.id, a.status);
            q.finish(seq, state, Some(a.body)).await;
        }
        Err(FetchError::Unsent(x)) | Err(FetchError::Sent(x)) => {
            // The data plane was not reachable (shutting down, say): the job runs again. A run
            // cut after it was sent may have reached a provider: a crash mid-run is the one
            // case a job can run twice.
            log::warn!("job {}: run did not complete: {x}", meta.id);
            q.retry(seq, x).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        assert_eq!(loopback("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(loopback("[::]:8080"), "[::1]:8080");
        assert_eq!(loopback("127.0.0.1:9"), "127.0.0.1:9");
    }
}
