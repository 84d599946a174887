//! Gives freed memory back after a burst: every `EVERY`, if `decide::memory::should_trim` says
//! the burst has ebbed, `malloc_trim(0)` on glibc (its arenas otherwise keep the pages a burst
//! freed, and RSS stays at the burst's peak). Measured in `benches/rss.py` ("after" column).

use crate::decide::memory::should_trim;
use crate::serve::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(2);

pub struct Trimmer {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Trimmer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut peak = 0usize;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let active = self.shared.active.load(Ordering::Relaxed);
            peak = peak.max(active);
            if should_trim(active, peak) {
                // A walk over the allocator's arenas: off the request threads.
                let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
                log::debug!(
                    "memory: burst of {peak} requests ebbed to {active}; trimmed: {released}"
                );
                peak = active;
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and only releases free pages of the allocator.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
