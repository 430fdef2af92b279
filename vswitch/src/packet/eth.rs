//! Ethernet II header (IEEE 802.3 with an EtherType).
use super::{be16, put_be16, MacAddr, WireError};

/// Length of an untagged Ethernet header.
pub const ETH_HDR_LEN: usize = 14;

mod field {
    pub const DST: std::ops::Range<usize> = 0..6;
    pub const SRC: std::ops::Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
}

/// EtherTypes the appliance knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtherType;
impl EtherType {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ TPIDs still seen in the wild.
    pub const QINQ_9100: u16 = 0x9100;
    pub const QINQ_9200: u16 = 0x9200;
    pub const IPV6: u16 = 0x86dd;
}

/// The MAC at `b[at..at + 6]` as a 48-bit integer (high byte first, like [`crate::tables::mac_u64`]).
/// The caller guarantees `at + 6 <= b.len()`; a header of 14 bytes always allows both MACs.
#[inline(always)]
pub fn mac48_at(b: &[u8], at: usize) -> u64 {
    let m = &b[at..at + 6];
    (u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as u64) << 16
        | u16::from_be_bytes([m[4], m[5]]) as u64
}

/// Whether a 48-bit MAC integer has the group (multicast/broadcast) bit set.
#[inline(always)]
pub fn mac48_is_multicast(m: u64) -> bool {
    m & (1 << 40) != 0
}

/// A view of an Ethernet header at the start of `T`.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buf` after checking it holds a whole header.
    #[inline(always)]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < ETH_HDR_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }

    /// Wraps a buffer the caller is about to fill (length still checked by the caller's sizing).
    #[inline(always)]
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    #[inline(always)]
    pub fn dst(&self) -> MacAddr {
        let b = self.buf.as_ref();
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    #[inline(always)]
    pub fn src(&self) -> MacAddr {
        let b = self.buf.as_ref();
        MacAddr([b[6], b[7], b[8], b[9], b[10], b[11]])
    }

    /// The destination MAC as a 48-bit integer (one 8-byte load).
    #[inline(always)]
    pub fn dst_u64(&self) -> u64 {
        mac48_at(self.buf.as_ref(), 0)
    }

    /// The source MAC as a 48-bit integer (one 8-byte load).
    #[inline(always)]
    pub fn src_u64(&self) -> u64 {
        mac48_at(self.buf.as_ref(), 6)
    }

    #[inline(always)]
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), field::ETHERTYPE)
    }

    /// The bytes after the header.
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[ETH_HDR_LEN..]
    }

    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    #[inline(always)]
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::DST].copy_from_slice(&m.0);
    }
    #[inline(always)]
    pub fn set_src(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::SRC].copy_from_slice(&m.0);
    }
    #[inline(always)]
    pub fn set_ethertype(&mut self, t: u16) {
        put_be16(self.buf.as_mut(), field::ETHERTYPE, t);
    }
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[ETH_HDR_LEN..]
    }
}

/// An Ethernet header as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub ethertype: u16,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(f: &EthernetFrame<T>) -> Self {
        Self {
            dst: f.dst(),
            src: f.src(),
            ethertype: f.ethertype(),
        }
    }

    /// Writes the header into the first [`ETH_HDR_LEN`] bytes of `buf` (which must be that long).
    pub fn emit(&self, buf: &mut [u8]) {
        let mut f = EthernetFrame::new_unchecked(&mut buf[..ETH_HDR_LEN]);
        f.set_dst(self.dst);
        f.set_src(self.src);
        f.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A broadcast ARP request captured on a Linux veth.
    const ARP_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfa, 0x16, 0x3e, 0x71, 0xe9, 0x3e, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0xfa, 0x16, 0x3e, 0x71, 0xe9, 0x3e, 0xc6, 0x33,
        0x64, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc6, 0x33, 0x64, 0x01,
    ];

    #[test]
    fn parse_captured_frame() {
        let f = EthernetFrame::new_checked(&ARP_FRAME[..]).unwrap();
        assert!(f.dst().is_broadcast());
        assert_eq!(f.src().to_string(), "fa:16:3e:71:e9:3e");
        assert_eq!(f.ethertype(), EtherType::ARP);
        let e = etherparse::Ethernet2HeaderSlice::from_slice(&ARP_FRAME).unwrap();
        assert_eq!(e.source(), f.src().0);
    }

    #[test]
    fn truncated_is_rejected_at_every_length() {
        for n in 0..ETH_HDR_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_FRAME[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
    }

    #[test]
    fn emit_round_trips_through_etherparse() {
        let mut buf = [0xa5u8; ETH_HDR_LEN];
        let r = EthernetRepr {
            dst: "fa:16:3e:00:00:01".parse().unwrap(),
            src: "fa:16:3e:00:00:02".parse().unwrap(),
            ethertype: EtherType::IPV6,
        };
        r.emit(&mut buf);
        let e = etherparse::Ethernet2Header::from_slice(&buf).unwrap().0;
        assert_eq!(e.destination, r.dst.0);
        assert_eq!(e.source, r.src.0);
        assert_eq!(e.ether_type.0, EtherType::IPV6);
        assert_eq!(
            EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()),
            r
        );
    }
}
