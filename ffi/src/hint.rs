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

/// Which of the 16 words match `value` under `mask` (`w & mask == value`), as bit `i` for word
/// `i`: four SSE2 compares instead of sixteen scalar ones (hash-table buckets scan their tags
/// with it).
#[inline(always)]
pub fn match_words(w: &[u32; 16], mask: u32, value: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::*;
        let p = w.as_ptr() as *const __m128i;
        // SAFETY: `w` is 64 readable bytes and the four unaligned 16-byte loads read exactly
        // them; SSE and SSE2, the only instructions used, are part of the x86_64 baseline.
        unsafe {
            let m = _mm_set1_epi32(mask as i32);
            let v = _mm_set1_epi32(value as i32);
            let lanes = |x: __m128i| {
                _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(x, m), v))) as u32
            };
            lanes(_mm_loadu_si128(p))
                | lanes(_mm_loadu_si128(p.add(1))) << 4
                | lanes(_mm_loadu_si128(p.add(2))) << 8
                | lanes(_mm_loadu_si128(p.add(3))) << 12
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut m = 0;
        for (i, &x) in w.iter().enumerate() {
            m |= ((x & mask == value) as u32) << i;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_words_agrees_with_a_scalar_scan() {
        let mut w = [0u32; 16];
        for (i, x) in w.iter_mut().enumerate() {
            *x = (i as u32 % 3) << 25 | i as u32;
        }
        for value in [0u32, 1 << 25, 2 << 25, 3 << 25] {
            let want = (0..16).fold(0, |m, i| m | ((w[i] & 0xfe00_0000 == value) as u32) << i);
            assert_eq!(match_words(&w, 0xfe00_0000, value), want);
        }
        assert_eq!(match_words(&[7; 16], u32::MAX, 7), 0xffff);
    }
}
