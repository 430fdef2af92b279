//! An owned packet buffer. Only the first segment's data is exposed: every header the
//! appliance parses or rewrites lives there (headroom is kept for encapsulation).
use crate::sys;
use std::ptr::NonNull;

/// An mbuf we own. Freed (returned to its pool) on drop.
#[repr(transparent)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an mbuf is owned by one thread at a time; moving it between lcores is how DPDK works.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that nobody else frees or uses afterwards.
    #[inline]
    pub unsafe fn from_raw(raw: NonNull<sys::rte_mbuf>) -> Self {
        Self(raw)
    }

    /// Gives up ownership (e.g. to a tx queue).
    #[inline]
    pub fn into_raw(self) -> NonNull<sys::rte_mbuf> {
        let p = self.0;
        std::mem::forget(self);
        p
    }

    #[inline]
    fn m(&self) -> &sys::rte_mbuf {
        // SAFETY: self.0 is a valid mbuf we own (type invariant).
        unsafe { self.0.as_ref() }
    }

    /// Bytes of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.m();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's buffer (DPDK invariant).
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    /// Mutable bytes of the first segment.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.m();
        let (addr, off, len) = (
            m.buf_addr as *mut u8,
            m.data_off as usize,
            m.data_len as usize,
        );
        // SAFETY: as in `data`, and we own the mbuf exclusively (&mut self, refcnt 1 on rx/alloc).
        unsafe { std::slice::from_raw_parts_mut(addr.add(off), len) }
    }

    /// Total packet length over all segments.
    #[inline]
    pub fn pkt_len(&self) -> usize {
        self.m().pkt_len as usize
    }

    /// Number of segments.
    #[inline]
    pub fn nb_segs(&self) -> u16 {
        self.m().nb_segs
    }

    /// The port the packet was received on (as set by the PMD).
    #[inline]
    pub fn port(&self) -> u16 {
        self.m().port
    }

    /// Free bytes in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.m().data_off as usize
    }

    /// Grows the packet at the front by `n` bytes (content left as it was in the headroom).
    /// False when the headroom is too small; the packet is then unchanged. Done here rather
    /// than through `rte_pktmbuf_prepend` so the per-packet call inlines (VXLAN encapsulation).
    #[inline]
    pub fn prepend(&mut self, n: usize) -> bool {
        // SAFETY: self.0 is a valid mbuf we own exclusively (type invariant, &mut self).
        let m = unsafe { self.0.as_mut() };
        if n > m.data_off as usize {
            return false;
        }
        // The same field updates as rte_pktmbuf_prepend: the data start moves into the headroom.
        m.data_off -= n as u16;
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        true
    }

    /// Removes `n` bytes from the front. False when the first segment is shorter.
    #[inline]
    pub fn adj(&mut self, n: usize) -> bool {
        // SAFETY: self.0 is a valid mbuf we own exclusively (type invariant, &mut self).
        let m = unsafe { self.0.as_mut() };
        if n > m.data_len as usize {
            return false;
        }
        // The same field updates as rte_pktmbuf_adj.
        m.data_off += n as u16;
        m.data_len -= n as u16;
        m.pkt_len -= n as u32;
        true
    }

    /// Appends `n` bytes at the end of the last segment (uninitialised). False when no tailroom.
    #[inline]
    pub fn append(&mut self, n: usize) -> bool {
        if n > u16::MAX as usize {
            return false;
        }
        // SAFETY: self.0 is a valid mbuf we own; rte_pktmbuf_append checks the tailroom.
        !unsafe { sys::vs_pktmbuf_append(self.0.as_ptr(), n as u16) }.is_null()
    }

    /// Removes `n` bytes from the end. False when the last segment is shorter.
    #[inline]
    pub fn trim(&mut self, n: usize) -> bool {
        if n > u16::MAX as usize {
            return false;
        }
        // SAFETY: self.0 is a valid mbuf we own; rte_pktmbuf_trim checks the length.
        unsafe { sys::vs_pktmbuf_trim(self.0.as_ptr(), n as u16) == 0 }
    }

    /// A deep copy (all segments) from this mbuf's own pool; None when the pool is empty.
    #[inline]
    pub fn try_clone(&self) -> Option<Mbuf> {
        let pool = self.m().pool;
        // SAFETY: self.0 is valid; pool is the pool it came from; copy allocates new mbufs.
        let c = unsafe { sys::rte_pktmbuf_copy(self.0.as_ptr(), pool, 0, u32::MAX) };
        // SAFETY: a non-null result is a new mbuf owned by nobody else.
        NonNull::new(c).map(|p| unsafe { Mbuf::from_raw(p) })
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (type invariant) and it is freed exactly once, here.
        unsafe { sys::vs_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Frees many mbufs with one call (fast path drops).
#[inline]
pub fn free_bulk(bufs: &mut [Option<Mbuf>]) {
    let mut raw: [*mut sys::rte_mbuf; 64] = [std::ptr::null_mut(); 64];
    let mut n = 0;
    for slot in bufs.iter_mut() {
        if let Some(m) = slot.take() {
            raw[n] = m.into_raw().as_ptr();
            n += 1;
            if n == raw.len() {
                // SAFETY: raw[..n] are mbufs we owned and gave up ownership of above.
                unsafe { sys::rte_pktmbuf_free_bulk(raw.as_mut_ptr(), n as u32) };
                n = 0;
            }
        }
    }
    if n > 0 {
        // SAFETY: raw[..n] are mbufs we owned and gave up ownership of above.
        unsafe { sys::rte_pktmbuf_free_bulk(raw.as_mut_ptr(), n as u32) };
    }
}
