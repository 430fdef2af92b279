//! IPv4 header (RFC 791).
use super::{be16, checksum, put_be16, WireError};
use std::net::Ipv4Addr;

/// Minimum header length.
pub const IPV4_MIN_LEN: usize = 20;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: std::ops::Range<usize> = 12..16;
    pub const DST: std::ops::Range<usize> = 16..20;
}

/// A view of an IPv4 header. `new_checked` guarantees: version 4, IHL >= 5, the header and
/// `total_len` bytes fit in the buffer, `total_len >= header_len`.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    #[inline(always)]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < IPV4_MIN_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let ihl = ((b[0] & 0x0f) as usize) * 4;
        let total = be16(b, field::TOTAL_LEN) as usize;
        if ihl < IPV4_MIN_LEN || total < ihl {
            return Err(WireError::Malformed);
        }
        if b.len() < ihl || b.len() < total {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.buf.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }
    #[inline(always)]
    pub fn total_len(&self) -> usize {
        be16(self.buf.as_ref(), field::TOTAL_LEN) as usize
    }
    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[field::TTL]
    }
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[field::PROTO]
    }
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
    /// Fragment offset is non-zero: no L4 header follows.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        be16(self.buf.as_ref(), field::FLAGS_FRAG) & 0x1fff != 0
    }
    #[inline(always)]
    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buf.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    #[inline(always)]
    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buf.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// Whether the header checksum is right.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(&self.buf.as_ref()[..self.header_len()], 0) == 0xffff
    }
    /// The L4 bytes (after options, up to `total_len`).
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Decrements TTL and patches the checksum incrementally (RFC 1624), as a router does.
    #[inline(always)]
    pub fn decrement_ttl(&mut self) {
        let b = self.buf.as_mut();
        let old = be16(b, field::TTL);
        b[field::TTL] = b[field::TTL].wrapping_sub(1);
        let new = be16(b, field::TTL);
        let c = checksum::update16(be16(b, field::CHECKSUM), old, new);
        put_be16(b, field::CHECKSUM, c);
    }
    /// Recomputes the header checksum from scratch.
    #[inline(always)]
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buf.as_mut();
        put_be16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..hl]);
        put_be16(b, field::CHECKSUM, c);
    }
}

/// An option-less IPv4 header as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// L4 length (the header adds 20).
    pub payload_len: usize,
    pub ttl: u8,
    pub dont_fragment: bool,
}

impl Ipv4Repr {
    /// Writes a 20-byte header with a correct checksum into `buf[..20]`.
    #[inline(always)]
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..IPV4_MIN_LEN];
        b[0] = 0x45;
        b[1] = 0;
        put_be16(
            b,
            field::TOTAL_LEN,
            (IPV4_MIN_LEN + self.payload_len) as u16,
        );
        put_be16(b, 4, 0);
        put_be16(
            b,
            field::FLAGS_FRAG,
            if self.dont_fragment { 0x4000 } else { 0 },
        );
        b[field::TTL] = self.ttl;
        b[field::PROTO] = self.protocol;
        put_be16(b, field::CHECKSUM, 0);
        b[field::SRC].copy_from_slice(&self.src.octets());
        b[field::DST].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(b);
        put_be16(b, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![0xa5u8; 28];
        Ipv4Repr {
            src: Ipv4Addr::new(198, 51, 100, 4),
            dst: Ipv4Addr::new(203, 0, 113, 5),
            protocol: PROTO_UDP,
            payload_len: 8,
            ttl: 64,
            dont_fragment: true,
        }
        .emit(&mut b);
        b
    }

    #[test]
    fn emit_is_valid_for_etherparse() {
        let b = sample();
        let (h, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
        assert_eq!(h.source, [198, 51, 100, 4]);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert!(h.dont_fragment);
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut b = sample();
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        for _ in 0..70 {
            p.decrement_ttl();
            assert!(p.verify_checksum());
        }
        let (h, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
    }

    #[test]
    fn rejects_bad_lengths() {
        let b = sample();
        for n in 0..b.len() {
            assert!(Ipv4Packet::new_checked(&b[..n]).is_err(), "len {n}");
        }
        let mut bad = b.clone();
        bad[0] = 0x44; // IHL 4
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut bad = b.clone();
        bad[0] = 0x65; // version 6
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut bad = b;
        bad[2..4].copy_from_slice(&10u16.to_be_bytes()); // total < header
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
