//! Zero-copy typed header views over packet bytes, in the manner of smoltcp's `wire` module.
//!
//! Each header type `XPacket<T: AsRef<[u8]>>` wraps a byte buffer. `new_checked` validates every
//! length the accessors rely on, once; after it succeeds no accessor can panic. Setters exist
//! only when `T: AsMut<[u8]>`. Builders (`*Repr::emit`) write a whole header into a buffer the
//! caller sized. The fast path edits headers in place; it never re-serialises them.

pub mod arp;
pub mod buf;
pub mod checksum;
pub mod eth;
pub mod frag;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod udp;
pub mod vlan;
pub mod vxlan;

pub use buf::{PacketBuf, TestBuf};
pub use eth::{EtherType, EthernetFrame, ETH_HDR_LEN};
pub use vswitch_config::MacAddr;

/// Why a header view could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is shorter than the header (or than a length field says).
    Truncated,
    /// A field holds a value the header cannot have (version, header length).
    Malformed,
}

/// Reads a big-endian u16 at `at` (the caller has checked bounds).
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at` (the caller has checked bounds).
#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes a big-endian u16 at `at` (the caller has checked bounds).
#[inline(always)]
pub(crate) fn put_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
