//! Packet buffer pools (`rte_pktmbuf_pool_create`).
use crate::error::DpdkError;
use crate::sys;
use std::ffi::CString;
use std::ptr::NonNull;

/// An mbuf pool. Shared by every core (DPDK mempools are multi-producer/multi-consumer with a
/// per-lcore cache). Freed on drop, which must happen after every port using it is closed.
pub struct Mempool {
    raw: NonNull<sys::rte_mempool>,
    size: u32,
}

// SAFETY: rte_mempool get/put operations are thread-safe (ring-backed, per-lcore caches).
unsafe impl Send for Mempool {}
// SAFETY: see Send; shared references only call thread-safe DPDK functions.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with a per-lcore cache of `cache` and `data_room` bytes of
    /// buffer (including `RTE_PKTMBUF_HEADROOM`) on NUMA `socket` (-1 for any).
    pub fn pktmbuf(
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Self, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::new("mempool name has NUL", 22))?;
        // SAFETY: cname is a valid C string for the duration of the call.
        let p =
            unsafe { sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket) };
        match NonNull::new(p) {
            Some(raw) => Ok(Self { raw, size: n }),
            None => Err(DpdkError::from_errno(format!(
                "rte_pktmbuf_pool_create({name}, {n} mbufs)"
            ))),
        }
    }

    /// The raw pointer, for setting up queues.
    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.raw.as_ptr()
    }

    /// Total mbufs in the pool.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Mbufs currently free (in the ring or in lcore caches).
    pub fn avail(&self) -> u32 {
        // SAFETY: raw is a live pool (owned by self).
        unsafe { sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs currently held by someone (queues, workers, leaks).
    pub fn in_use(&self) -> u32 {
        // SAFETY: raw is a live pool (owned by self).
        unsafe { sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// Allocates one mbuf (None when the pool is empty).
    pub fn alloc(&self) -> Option<crate::Mbuf> {
        // SAFETY: raw is a live pktmbuf pool.
        let m = unsafe { sys::vs_pktmbuf_alloc(self.raw.as_ptr()) };
        // SAFETY: a non-null result is a freshly allocated mbuf that we now own.
        NonNull::new(m).map(|p| unsafe { crate::Mbuf::from_raw(p) })
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: we own the pool; callers drop it only after ports using it are closed.
        unsafe { sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}
