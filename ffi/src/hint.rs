//! CPU hints the fast path needs that Rust only offers as `unsafe` intrinsics.

/// Asks the CPU to start loading the cache line at `p` into all cache levels, without waiting
/// for it. A batch computes where its packets' table entries are, prefetches them all, then
/// works on them: the loads overlap instead of each packet waiting for its own.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 (SSE, part of the x86_64 baseline) is only a hint: it never faults,
    // whatever the address, and has no architectural effect.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
