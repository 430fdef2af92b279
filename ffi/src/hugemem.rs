//! Large tables the fast path reads at random (the connection table, its index), in memory
//! the kernel backs with 2 MiB pages where it can.
//!
//! With 4 KiB pages a table of tens of MiB spans thousands of pages: nearly every random
//! lookup then also misses the TLB, and a page walk (two-dimensional under a hypervisor) costs
//! more than the cache miss itself; a software prefetch of such a line stalls until the walk
//! is done. The same table on 2 MiB pages needs a few dozen TLB entries. DPDK keeps its own
//! memory on huge pages for the same reason; these tables live outside DPDK's heap (the
//! stages also run without the EAL, in tests and benchmarks), so they ask the kernel for
//! transparent huge pages: an anonymous mapping aligned to 2 MiB and `madvise(MADV_HUGEPAGE)`,
//! which works with the usual `enabled = madvise` setting and leaves the hugetlbfs pool to
//! DPDK. Where the kernel has no transparent huge pages the same mapping simply stays on
//! 4 KiB pages. All of it is allocated, filled and faulted in when the table is made, never
//! on the fast path.
use std::ptr::NonNull;

/// Transparent huge page size on x86_64 and most 64-bit Arm kernels.
const HUGE: usize = 2 << 20;

/// A fixed-length slice of `T` in its own anonymous mapping: 2 MiB-aligned and advised for
/// huge pages when it is at least 1 MiB, plain pages below that.
pub struct HugeSlice<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    /// The mapping (address and length) to unmap on drop.
    map: *mut libc::c_void,
    map_len: usize,
    advised: bool,
}

// SAFETY: a HugeSlice owns its mapping exclusively (like a Box<[T]>): moving it to another
// thread moves that ownership, and shared references only read.
unsafe impl<T: Copy + Send> Send for HugeSlice<T> {}
// SAFETY: as above; `&HugeSlice` gives only `&[T]`.
unsafe impl<T: Copy + Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// `len` copies of `value`. Panics only where `Vec` would: when the system has no memory
    /// for the mapping (or `T` needs more than page alignment).
    pub fn new(len: usize, value: T) -> Self {
        Self::with_threshold(len, value, HUGE / 2)
    }

    /// `len` copies of `value`, advised for huge pages whatever its size: for a table under
    /// 1 MiB that is read at random on every packet, where a 2 MiB page (mostly unused) is
    /// worth the TLB entries it saves.
    pub fn on_huge_pages(len: usize, value: T) -> Self {
        Self::with_threshold(len, value, 0)
    }

    fn with_threshold(len: usize, value: T, threshold: usize) -> Self {
        assert!(
            std::mem::align_of::<T>() <= 4096,
            "HugeSlice: alignment above a page"
        );
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("HugeSlice: size overflow")
            .max(1);
        let huge = bytes >= threshold;
        // Room to align the start to 2 MiB: the slack before and after is unmapped again.
        let want = if huge {
            bytes.next_multiple_of(HUGE) + HUGE
        } else {
            bytes
        };
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory; the result is checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                want,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            panic!(
                "HugeSlice: mmap of {want} bytes failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let (mut map, mut map_len, mut advised) = (map, want, false);
        if huge {
            let start = map as usize;
            let aligned = start.next_multiple_of(HUGE);
            let size = bytes.next_multiple_of(HUGE);
            let (head, tail) = (aligned - start, want - (aligned - start) - size);
            // SAFETY: both ranges lie inside the mapping just made, are page-aligned (the
            // mapping and HUGE are) and are not used by anything: they are the alignment slack.
            unsafe {
                if head > 0 {
                    libc::munmap(map, head);
                }
                if tail > 0 {
                    libc::munmap((aligned + size) as *mut libc::c_void, tail);
                }
            }
            map = aligned as *mut libc::c_void;
            map_len = size;
            // SAFETY: advice on a range this value owns; it changes how the kernel backs the
            // pages, never their contents. Failure (no THP in this kernel) is fine.
            advised = unsafe { libc::madvise(map, map_len, libc::MADV_HUGEPAGE) } == 0;
        }
        let ptr = NonNull::new(map as *mut T).expect("mmap never returns null on success");
        for i in 0..len {
            // SAFETY: element i lies inside the mapping (len * size_of::<T>() <= map_len), the
            // mapping is page-aligned and so aligned for T, and T: Copy needs no drop of the
            // zeroes it overwrites.
            unsafe { ptr.as_ptr().add(i).write(value) };
        }
        HugeSlice {
            ptr,
            len,
            map,
            map_len,
            advised,
        }
    }

    /// Whether the kernel was asked to back this slice with huge pages (and accepted the
    /// advice; whether it found them shows in [`huge_bytes`](Self::huge_bytes)).
    pub fn advised(&self) -> bool {
        self.advised
    }

    /// Bytes the kernel backs with huge pages now in the mapping that holds this slice, from
    /// `/proc/self/smaps` (`None` where that cannot be read). The kernel may have merged
    /// neighbouring advised mappings into one, whose total this is. For start-up reports and
    /// tests, not the fast path.
    pub fn huge_bytes(&self) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let at = self.map as usize;
        let mut inside = false;
        for l in smaps.lines() {
            let first = l.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= at && at < b;
                    continue;
                }
            }
            if inside {
                if let Some(v) = l.strip_prefix("AnonHugePages:") {
                    return v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .map(|kb| kb * 1024);
                }
            }
        }
        None
    }
}

impl<T: Copy> std::ops::Deref for HugeSlice<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: ptr points at len initialised, aligned elements owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeSlice<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by new() with exactly this address and length and no
        // reference into it outlives self.
        unsafe {
            libc::munmap(self.map, self.map_len);
        }
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for HugeSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeSlice")
            .field("len", &self.len)
            .field("advised", &self.advised)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_slices_are_plain_memory_filled_with_the_value() {
        let mut s = HugeSlice::new(1000, 7u64);
        assert_eq!(s.len(), 1000);
        assert!(s.iter().all(|&x| x == 7));
        s[999] = 1;
        assert_eq!(s[999], 1);
        assert!(!s.advised());
        let empty = HugeSlice::new(0, 0u8);
        assert!(empty.is_empty());
    }

    #[test]
    fn large_slices_are_aligned_to_2_mib_and_advised() {
        let s = HugeSlice::new(3 << 20, 0xa5u8);
        assert_eq!(s.as_ptr() as usize % HUGE, 0);
        assert!(s.iter().all(|&x| x == 0xa5));
        // A kernel built with transparent huge pages accepts the advice whatever its
        // `enabled` setting; whether pages were found depends on that setting and on free
        // memory, so it is read back, not assumed.
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if thp.is_ok() {
            assert!(s.advised(), "madvise(MADV_HUGEPAGE) refused");
        }
        let huge = s.huge_bytes().expect("this mapping in /proc/self/smaps");
        assert_eq!(huge % HUGE, 0, "{huge}");
    }

    #[test]
    fn a_small_slice_asked_for_huge_pages_gets_a_whole_aligned_one() {
        let s = HugeSlice::on_huge_pages(8192, [3u64; 8]);
        assert_eq!((s.len(), s.as_ptr() as usize % HUGE), (8192, 0));
        assert!(s.iter().all(|w| *w == [3; 8]));
        if std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok() {
            assert!(s.advised(), "madvise(MADV_HUGEPAGE) refused");
        }
    }
}
