//! UDP header (RFC 768): ports and length, for the stages that classify by port.
use super::{be16, put_be16, WireError};

pub const UDP_HDR_LEN: usize = 8;

/// A view of a UDP header; `new_checked` guarantees 8 header bytes and a length field that is
/// at least 8 and fits the buffer.
#[derive(Debug)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    #[inline(always)]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < UDP_HDR_LEN {
            return Err(WireError::Truncated);
        }
        let len = be16(b, 4) as usize;
        if len < UDP_HDR_LEN {
            return Err(WireError::Malformed);
        }
        if len > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    #[inline(always)]
    pub fn len(&self) -> usize {
        be16(self.buf.as_ref(), 4) as usize
    }
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == UDP_HDR_LEN
    }
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }
}

/// A UDP header as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl UdpRepr {
    /// Writes the header with checksum 0 ("not computed", allowed for IPv4) into `buf[..8]`.
    #[inline(always)]
    pub fn emit(&self, buf: &mut [u8]) {
        put_be16(buf, 0, self.src_port);
        put_be16(buf, 2, self.dst_port);
        put_be16(buf, 4, (UDP_HDR_LEN + self.payload_len) as u16);
        put_be16(buf, 6, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_lengths() {
        let mut b = [0xa5u8; 12];
        UdpRepr {
            src_port: 68,
            dst_port: 67,
            payload_len: 4,
        }
        .emit(&mut b);
        let u = UdpPacket::new_checked(&b[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port(), u.len()), (68, 67, 12));
        let (e, _) = etherparse::UdpHeader::from_slice(&b).unwrap();
        assert_eq!((e.source_port, e.destination_port, e.length), (68, 67, 12));
        assert_eq!(
            UdpPacket::new_checked(&b[..11]).unwrap_err(),
            WireError::Truncated
        );
        b[4..6].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
