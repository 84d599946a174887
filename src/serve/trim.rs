//! Gives freed memory back after a burst: every `EVERY`, if `decide::memory::should_trim` says
//! the burst has ebbed, the allocator's unused pages go back to the kernel. The binary's
//! allocator is jemalloc (`main.rs`): without a background thread it purges only while it is
//! busy allocating, so after a burst that ended its arenas would keep the burst's pages and RSS
//! would stay at the peak; `arena.<all>.purge` hands them back. glibc's `malloc_trim` does the
//! same for what C code allocated. Measured in `benches/rss.py` ("after" column).
use crate::decide::memory::{Trim, TrimStep};
use crate::serve::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(2);

/// How long a request thread waits for the others to reach their cache flush (see
/// `flush_thread_caches`); they are idle when it runs, so this is only a bound.
const RENDEZVOUS: Duration = Duration::from_millis(50);

pub struct Trimmer {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Trimmer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut trim = Trim::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let active = self.shared.active.load(Ordering::Relaxed);
            let step = trim.step(active);
            let flushed = match (step, self.shared.data_plane.get()) {
                (TrimStep::FlushAndPurge, Some(rt)) => flush_thread_caches(rt).await,
                _ => 0,
            };
            if step != TrimStep::Nothing {
                // A walk over the allocator's arenas: off the request threads.
                let released = tokio::task::spawn_blocking(trim_now).await.unwrap_or(false);
                log::debug!(
                    "memory: {active} requests in flight after a burst; {flushed} thread caches \
                     flushed; pages released: {released}"
                );
            }
        }
    }
}

/// Empty the allocator cache of each of the runtime's worker threads; how many were reached. A
/// thread's cache can only be flushed from that thread, and a task may run on any of them, so
/// one task per worker flushes and then holds its thread (up to `RENDEZVOUS`) until all have: no
/// two land on the same thread. Run once a burst is over, when the threads are idle, so holding
/// them costs nothing. The worker count is the runtime's own (a reloaded `threads` takes effect
/// only at a restart).
async fn flush_thread_caches(rt: &tokio::runtime::Handle) -> usize {
    let threads = rt.metrics().num_workers();
    let gate = Arc::new((Mutex::new(0usize), Condvar::new()));
    let tasks: Vec<_> = (0..threads)
        .map(|_| {
            let gate = gate.clone();
            rt.spawn(async move {
                flush_this_thread();
                let (arrived, all) = &*gate;
                let mut n = arrived.lock().unwrap_or_else(|p| p.into_inner());
                *n += 1;
                all.notify_all();
                // Blocking on purpose: holding this thread sends the other tasks elsewhere.
                let _ = all
                    .wait_timeout_while(n, RENDEZVOUS, |n| *n < threads)
                    .unwrap_or_else(|p| p.into_inner());
                std::thread::current().id()
            })
        })
        .collect();
    let mut reached = HashSet::new();
    for t in tasks {
        if let Ok(id) = t.await {
            reached.insert(id);
        }
    }
    reached.len()
}

/// Return this thread's cached allocations to their arenas (jemalloc's `thread.tcache.flush`).
#[cfg(not(target_env = "msvc"))]
fn flush_this_thread() {
    mallctl_call(b"thread.tcache.flush\0");
}

#[cfg(target_env = "msvc")]
fn flush_this_thread() {}

/// Give back at once what one oversized answer held (a stream event or body refused at its
/// limit: megabytes a hostile provider made twinroute buffer), rather than after a burst or the
/// allocator's decay, which an idle process may not reach. Rare by construction: only that path
/// calls it.
pub fn release_oversized() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    // At most once a second, off the request thread: a provider sending oversized answers on
    // every request must not turn each into a purge of every arena.
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1000;
    let last = LAST_MS.load(Ordering::Relaxed);
    if now < last + 1000
        || LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(trim_now);
    }
}

/// Purge every jemalloc arena's unused pages (when jemalloc is the allocator) and trim glibc's
/// heap; whether anything was released.
fn trim_now() -> bool {
    purge_jemalloc() | trim_glibc()
}

#[cfg(not(target_env = "msvc"))]
fn purge_jemalloc() -> bool {
    // `MALLCTL_ARENAS_ALL` in jemalloc's mallctl namespace: every arena at once.
    mallctl_call(b"arena.4096.purge\0")
}

/// A jemalloc control that reads and writes nothing (a command); whether it succeeded.
#[cfg(not(target_env = "msvc"))]
fn mallctl_call(name: &[u8]) -> bool {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: a NUL-terminated name, and null old/new pointers with zero length, which is how
    // command controls are called. With another allocator in the binary the call reaches
    // jemalloc's own (empty) state and does nothing.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    rc == 0
}

#[cfg(target_env = "msvc")]
fn purge_jemalloc() -> bool {
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_glibc() -> bool {
    // SAFETY: malloc_trim takes no pointers and only releases free pages of the allocator.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_glibc() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_thread_is_reached_once() {
        // More threads than this machine has cores: the rendezvous, not luck, spreads the tasks.
        let workers = 4;
        let data_plane = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        let trimmer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..3 {
            let reached = trimmer.block_on(flush_thread_caches(data_plane.handle()));
            assert_eq!(reached, workers);
        }
    }

    #[cfg(not(target_env = "msvc"))]
    #[test]
    fn the_allocator_controls_are_called_as_jemalloc_expects() {
        // Command controls refuse any old/new pointer (EPERM): a zero return means the call
        // shape is right. An unknown name must fail, or the check proves nothing.
        assert!(mallctl_call(b"thread.tcache.flush\0"));
        assert!(mallctl_call(b"arena.4096.purge\0"));
        assert!(!mallctl_call(b"arena.4096.no_such_control\0"));
    }
}
