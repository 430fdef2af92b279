//! The packet buffer abstraction every stage works on.
//!
//! `PacketBuf` is implemented for DPDK's [`Mbuf`] and for [`TestBuf`], a heap buffer with
//! headroom, so every stage runs under `cargo test` with no EAL and no hugepages.
use vswitch_ffi::Mbuf;

/// A packet: contiguous header bytes plus the ability to grow or shrink at the front.
pub trait PacketBuf: Sized {
    /// The packet bytes (first segment; every header lives there).
    fn data(&self) -> &[u8];
    /// The packet bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Total length, all segments.
    fn pkt_len(&self) -> usize;
    /// Grows the front by `n` bytes; false (and unchanged) if the headroom is too small.
    fn prepend(&mut self, n: usize) -> bool;
    /// Strips `n` bytes from the front; false (and unchanged) if the packet is shorter.
    fn adj(&mut self, n: usize) -> bool;
    /// Strips `n` bytes from the end; false (and unchanged) if the last segment is shorter.
    fn trim(&mut self, n: usize) -> bool;
    /// A deep copy for flooding; None when no buffer is free (the copy is then counted as a drop).
    fn try_clone(&self) -> Option<Self>;
    /// Frees every packet in `slots` (leaving them `None`); DPDK buffers go back in one call.
    fn free_bulk(slots: &mut [Option<Self>]) {
        for s in slots {
            s.take();
        }
    }
}

impl PacketBuf for Mbuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }
    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        Mbuf::data_mut(self)
    }
    #[inline(always)]
    fn pkt_len(&self) -> usize {
        Mbuf::pkt_len(self)
    }
    #[inline(always)]
    fn prepend(&mut self, n: usize) -> bool {
        Mbuf::prepend(self, n)
    }
    #[inline(always)]
    fn adj(&mut self, n: usize) -> bool {
        Mbuf::adj(self, n)
    }
    #[inline(always)]
    fn trim(&mut self, n: usize) -> bool {
        Mbuf::trim(self, n)
    }
    #[inline(always)]
    fn try_clone(&self) -> Option<Self> {
        Mbuf::try_clone(self)
    }
    #[inline]
    fn free_bulk(slots: &mut [Option<Self>]) {
        vswitch_ffi::mbuf::free_bulk(slots)
    }
}

/// Headroom of a [`TestBuf`], the same as DPDK's default `RTE_PKTMBUF_HEADROOM`.
pub const TEST_HEADROOM: usize = 128;

/// A heap packet buffer with headroom, for tests and for packets built off the fast path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestBuf {
    buf: Vec<u8>,
    start: usize,
}

impl TestBuf {
    /// A buffer holding `bytes` after [`TEST_HEADROOM`] bytes of headroom (filled with 0xa5 so a
    /// header field we forget to write shows up).
    pub fn new(bytes: &[u8]) -> Self {
        let mut buf = vec![0xa5; TEST_HEADROOM];
        buf.extend_from_slice(bytes);
        Self {
            buf,
            start: TEST_HEADROOM,
        }
    }
}

impl PacketBuf for TestBuf {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
    fn pkt_len(&self) -> usize {
        self.buf.len() - self.start
    }
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }
    fn adj(&mut self, n: usize) -> bool {
        if n > self.pkt_len() {
            return false;
        }
        self.start += n;
        true
    }
    fn trim(&mut self, n: usize) -> bool {
        if n > self.pkt_len() {
            return false;
        }
        self.buf.truncate(self.buf.len() - n);
        true
    }
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}
