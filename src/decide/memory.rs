//! When to hand freed memory back to the operating system.
//!
//! An allocator keeps what a burst freed (thousands of streams: hundreds of MB), so a sidecar's
//! RSS would stay at its peak long after the load. Handing the pages back walks every arena, so
//! it is done only after a burst has ebbed: when the requests in flight are down to a quarter of
//! the peak seen since the last trim, and that peak was a burst at all. The request threads'
//! allocator caches (jemalloc's per-thread caches: a few MB a thread after a burst) can only be
//! emptied on those threads, which briefly takes each of them; that is done once the burst is
//! over (nothing in flight), not while its tail is still being served.

/// A peak below this many requests in flight frees too little to be worth a trim.
pub const BURST: usize = 64;

/// Whether to trim now, given the requests in flight and the most seen since the last trim.
pub fn should_trim(active: usize, peak_since_trim: usize) -> bool {
    peak_since_trim >= BURST && active <= peak_since_trim / 4
}

/// What the trimmer does on one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimStep {
    Nothing,
    /// Return the arenas' free pages.
    Purge,
    /// Empty each request thread's allocator cache, then return the free pages.
    FlushAndPurge,
}

/// The trimmer's memory between ticks.
#[derive(Debug, Default)]
pub struct Trim {
    /// Most requests in flight seen since the last trim.
    peak: usize,
    /// A burst was trimmed at its ebb; the threads' caches are emptied once it is over.
    flush_when_idle: bool,
}

impl Trim {
    /// The step for a tick that sees `active` requests in flight.
    pub fn step(&mut self, active: usize) -> TrimStep {
        self.peak = self.peak.max(active);
        let ebbed = should_trim(active, self.peak);
        if ebbed {
            self.peak = active;
            self.flush_when_idle = true;
        }
        if self.flush_when_idle && active == 0 {
            self.flush_when_idle = false;
            return TrimStep::FlushAndPurge;
        }
        if ebbed {
            TrimStep::Purge
        } else {
            TrimStep::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_purged_at_its_ebb_and_the_caches_flushed_once_it_is_over() {
        let mut t = Trim::default();
        assert_eq!(t.step(10), TrimStep::Nothing, "no burst");
        assert_eq!(
            t.step(0),
            TrimStep::Nothing,
            "a small peak is not worth a trim"
        );
        assert_eq!(t.step(5000), TrimStep::Nothing, "busy");
        assert_eq!(t.step(1251), TrimStep::Nothing, "still busy");
        assert_eq!(t.step(1000), TrimStep::Purge, "ebbed to a quarter");
        assert_eq!(t.step(900), TrimStep::Nothing, "the tail");
        assert_eq!(t.step(0), TrimStep::FlushAndPurge, "over");
        assert_eq!(t.step(0), TrimStep::Nothing, "once");
    }

    #[test]
    fn a_burst_that_ends_at_once_is_flushed_at_once() {
        let mut t = Trim::default();
        assert_eq!(t.step(5000), TrimStep::Nothing);
        assert_eq!(t.step(0), TrimStep::FlushAndPurge);
        assert_eq!(t.step(0), TrimStep::Nothing);
    }

    #[test]
    fn a_new_burst_in_the_tail_defers_the_flush_until_idle() {
        let mut t = Trim::default();
        t.step(5000);
        assert_eq!(t.step(100), TrimStep::Purge);
        assert_eq!(t.step(4000), TrimStep::Nothing, "a second burst");
        assert_eq!(t.step(3), TrimStep::Purge, "its ebb");
        assert_eq!(t.step(0), TrimStep::FlushAndPurge);
    }

    #[test]
    fn trims_once_a_burst_has_ebbed() {
        assert!(should_trim(0, 5000));
        assert!(should_trim(1250, 5000));
        assert!(!should_trim(1251, 5000), "still busy");
        assert!(!should_trim(0, 10), "no burst");
        assert!(should_trim(16, BURST));
    }
}
