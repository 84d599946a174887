//! Hot reload: a changed config file (polled) or SIGHUP is validated and swapped in whole.
//!
//! In-flight requests keep the `Generation` they started with (an `Arc` each), new ones get the new
//! config: nothing is dropped. An invalid file is refused with a log line naming the problem and
//! the running config stays in force. Listener addresses, thread count and the grace period are
//! fixed at start; a change to them is logged as needing a restart and otherwise ignored.
//!
//! Health is per runtime: a reload starts every provider healthy with closed breakers, except
//! that manual drains are carried over by provider name.

use crate::config::{self};
use crate::model::Config;
use crate::serve::state::{Generation, Shared};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Reloader {
    pub shared: Arc<Shared>,
    pub path: String,
}

/// What identifies a file version without reading it: modification time and length.
fn stamp(path: &str) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Settings that cannot change without a restart, as `(key, old, new)` for those that did.
fn fixed_changes(old: &Config, new: &Config) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let mut check = |k: &'static str, a: String, b: String| {
        if a != b {
            out.push((k, a, b));
        }
    };
    check("listen", old.listen.clone(), new.listen.clone());
    check(
        "admin_listen",
        old.admin_listen.clone(),
        new.admin_listen.clone(),
    );
    check("threads", old.threads.to_string(), new.threads.to_string());
    check(
        "grace_period_s",
        old.grace_period_s.to_string(),
        new.grace_period_s.to_string(),
    );
    out
}

impl Reloader {
    /// Load, validate and swap in the file; `why` says what triggered it.
    pub fn reload(&self, why: &str) -> bool {
        let new = match config::load_file(&self.path) {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    "config reload ({why}) rejected, keeping the running config: {}: {e}",
                    self.path
                );
                return false;
            }
        };
        let old = self.shared.runtime.load_full();
        for (k, a, b) in fixed_changes(&old.config, &new) {
            log::warn!(
                "config reload: {k} changed ({a} -> {b}); takes effect only after a restart"
            );
        }
        let rt = Generation::reloaded(new, &old);
        crate::serve::stage::team::observe_budgets(&rt.config);
        let without = rt.config.without_credentials();
        if !without.is_empty() {
            log::warn!(
                "config reload: {} provider(s) left out of rotation, no credential: {}",
                without.len(),
                without.join(", ")
            );
        }
        let (providers, models) = (rt.config.providers.len(), rt.config.catalog.models().len());
        self.shared.runtime.store(Arc::new(rt));
        log::warn!(
            "config reloaded ({why}) from {}: {providers} providers, {models} models",
            self.path
        );
        true
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot listen for SIGHUP ({e}); reload by file change only");
                None
            }
        };
        let mut last = stamp(&self.path);
        loop {
            let poll = self.shared.runtime.load().config.reload_poll;
            let tick = poll.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(tick) => {
                    if poll.is_none() {
                        continue;
                    }
                    let now = stamp(&self.path);
                    if now.is_some() && now != last {
                        // A file still being written (truncated, then filled) would be refused
                        // for a syntax error it does not have: reload once it holds still.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if stamp(&self.path) != now {
                            continue;
                        }
                        last = now;
                        self.reload("file changed");
                    }
                }
                Some(_) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    last = stamp(&self.path);
                    self.reload("SIGHUP");
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// After a graceful-shutdown signal (the listeners stop accepting at once), exit as soon as
/// nothing is in flight instead of sitting out the whole grace period; Pingora still bounds the
/// wait by `grace_period_s` when requests or streams keep going.
pub struct Drainer {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Drainer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        log::warn!("shutting down: no new connections; waiting for in-flight requests");
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let active = self
                .shared
                .active
                .load(std::sync::atomic::Ordering::Acquire);
            if active > 0 {
                idle_since = None;
                continue;
            }
            // A short settle lets the last access-log lines be written.
            let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= Duration::from_millis(200) {
                log::warn!("shutdown: nothing in flight, exiting");
                std::process::exit(0);
            }
        }
    }
}
