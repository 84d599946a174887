//! When to hand freed memory back to the operating system.
//!
//! glibc's allocator keeps what a burst freed in its arenas, so a sidecar's RSS stays at its
//! peak long after the load (thousands of streams: hundreds of MB). `malloc_trim` returns the
//! free pages, but it walks every arena, so it is run only after a burst has ebbed: when the
//! requests in flight are down to a quarter of the peak seen since the last trim, and that peak
//! was a burst at all.

/// A peak below this many requests in flight frees too little to be worth a trim.
pub const BURST: usize = 64;

/// Whether to trim now, given the requests in flight and the most seen since the last trim.
pub fn should_trim(active: usize, peak_since_trim: usize) -> bool {
    peak_since_trim >= BURST && active <= peak_since_trim / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_burst_has_ebbed() {
        assert!(should_trim(0, 5000));
        assert!(should_trim(1250, 5000));
        assert!(!should_trim(1251, 5000), "still busy");
        assert!(!should_trim(0, 10), "no burst");
        assert!(should_trim(16, BURST));
    }
}
