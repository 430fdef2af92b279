//! IPv6 fixed header (RFC 8200). Extension headers are not walked here: the stages that care
//! (port security looks for ICMPv6 and UDP) only look at `next_header` of the fixed header.
use super::{be16, put_be16, WireError};
use std::net::Ipv6Addr;

pub const IPV6_HDR_LEN: usize = 40;
pub const NEXT_ICMPV6: u8 = 58;
pub const NEXT_UDP: u8 = 17;
pub const NEXT_TCP: u8 = 6;

/// A view of an IPv6 header. `new_checked` guarantees version 6 and that the header plus
/// `payload_len` bytes fit.
#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < IPV6_HDR_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        if b.len() < IPV6_HDR_LEN + be16(b, 4) as usize {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }
    #[inline]
    pub fn payload_len(&self) -> usize {
        be16(self.buf.as_ref(), 4) as usize
    }
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[6]
    }
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[7]
    }
    #[inline]
    pub fn src(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buf.as_ref()[8..24]);
        Ipv6Addr::from(a)
    }
    #[inline]
    pub fn dst(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buf.as_ref()[24..40]);
        Ipv6Addr::from(a)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[IPV6_HDR_LEN..IPV6_HDR_LEN + self.payload_len()]
    }

    /// The upper-layer protocol and its bytes, after skipping Hop-by-Hop, Routing and
    /// Destination Options headers (RFC 8200 4.1; MLD reports carry a Hop-by-Hop Router Alert).
    /// `None` for a fragment, ESP/AH, or a chain cut short or longer than [`MAX_EXT_HEADERS`].
    #[inline]
    pub fn upper_layer(&self) -> Option<(u8, &[u8])> {
        let mut next = self.next_header();
        let mut rest = self.payload();
        for _ in 0..MAX_EXT_HEADERS {
            match next {
                EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                    if rest.len() < 8 {
                        return None;
                    }
                    let len = (rest[1] as usize + 1) * 8;
                    if rest.len() < len {
                        return None;
                    }
                    next = rest[0];
                    rest = &rest[len..];
                }
                EXT_FRAGMENT | 50 | 51 => return None,
                _ => return Some((next, rest)),
            }
        }
        None
    }
}

/// Extension headers [`Ipv6Packet::upper_layer`] walks before giving up.
pub const MAX_EXT_HEADERS: usize = 4;
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_DEST_OPTS: u8 = 60;

/// An IPv6 fixed header as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    /// Writes the 40-byte header into `buf[..40]`.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..IPV6_HDR_LEN];
        b[0] = 0x60;
        b[1] = 0;
        b[2] = 0;
        b[3] = 0;
        put_be16(b, 4, self.payload_len as u16);
        b[6] = self.next_header;
        b[7] = self.hop_limit;
        b[8..24].copy_from_slice(&self.src.octets());
        b[24..40].copy_from_slice(&self.dst.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_parse_and_etherparse_agree() {
        let r = Ipv6Repr {
            src: "fd00:198:51:100::4".parse().unwrap(),
            dst: "ff02::1".parse().unwrap(),
            next_header: NEXT_ICMPV6,
            payload_len: 8,
            hop_limit: 255,
        };
        let mut b = vec![0xa5u8; 48];
        r.emit(&mut b);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            (p.src(), p.dst(), p.next_header(), p.hop_limit()),
            (r.src, r.dst, r.next_header, 255)
        );
        let (h, _) = etherparse::Ipv6Header::from_slice(&b).unwrap();
        assert_eq!(h.source, r.src.octets());
        assert_eq!(h.payload_length, 8);
        for n in 0..b.len() {
            assert!(Ipv6Packet::new_checked(&b[..n]).is_err());
        }
    }

    #[test]
    fn upper_layer_skips_hop_by_hop() {
        // An MLDv2 report as Linux sends it: HBH (router alert) then ICMPv6 type 143.
        let mut b = vec![0u8; 40 + 8 + 8];
        Ipv6Repr {
            src: Ipv6Addr::UNSPECIFIED,
            dst: "ff02::16".parse().unwrap(),
            next_header: EXT_HOP_BY_HOP,
            payload_len: 16,
            hop_limit: 1,
        }
        .emit(&mut b);
        b[40..48].copy_from_slice(&[NEXT_ICMPV6, 0, 5, 2, 0, 0, 1, 0]);
        b[48] = 143;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        let (nh, l4) = p.upper_layer().unwrap();
        assert_eq!((nh, l4[0]), (NEXT_ICMPV6, 143));
        // A chain that claims more bytes than there are gives None, not a panic.
        b[41] = 9;
        assert!(Ipv6Packet::new_checked(&b[..])
            .unwrap()
            .upper_layer()
            .is_none());
    }
}
