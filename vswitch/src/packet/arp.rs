//! ARP for IPv4 over Ethernet (RFC 826). Only htype 1 / ptype 0x0800 / hlen 6 / plen 4 is
//! accepted; anything else is `Malformed`.
use super::{be16, put_be16, MacAddr, WireError};
use std::net::Ipv4Addr;

/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: std::ops::Range<usize> = 8..14;
    pub const SPA: std::ops::Range<usize> = 14..18;
    pub const THA: std::ops::Range<usize> = 18..24;
    pub const TPA: std::ops::Range<usize> = 24..28;
}

pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// A view of an ARP packet (the Ethernet payload).
#[derive(Debug)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < ARP_LEN {
            return Err(WireError::Truncated);
        }
        if be16(b, field::HTYPE) != 1
            || be16(b, field::PTYPE) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Malformed);
        }
        Ok(Self { buf })
    }
    #[inline]
    pub fn operation(&self) -> u16 {
        be16(self.buf.as_ref(), field::OPER)
    }
    #[inline]
    pub fn sender_mac(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buf.as_ref()[field::SHA]);
        MacAddr(m)
    }
    #[inline]
    pub fn sender_ip(&self) -> Ipv4Addr {
        let b = &self.buf.as_ref()[field::SPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    #[inline]
    pub fn target_mac(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buf.as_ref()[field::THA]);
        MacAddr(m)
    }
    #[inline]
    pub fn target_ip(&self) -> Ipv4Addr {
        let b = &self.buf.as_ref()[field::TPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

/// An ARP packet as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Self {
        Self {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        }
    }

    /// Writes the packet into `buf[..ARP_LEN]`.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..ARP_LEN];
        put_be16(b, field::HTYPE, 1);
        put_be16(b, field::PTYPE, 0x0800);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        put_be16(b, field::OPER, self.operation);
        b[field::SHA].copy_from_slice(&self.sender_mac.0);
        b[field::SPA].copy_from_slice(&self.sender_ip.octets());
        b[field::THA].copy_from_slice(&self.target_mac.0);
        b[field::TPA].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_parse_round_trip_checked_by_etherparse() {
        let r = ArpRepr {
            operation: OP_REPLY,
            sender_mac: "fa:16:3e:00:00:01".parse().unwrap(),
            sender_ip: Ipv4Addr::new(198, 51, 100, 1),
            target_mac: "fa:16:3e:00:00:02".parse().unwrap(),
            target_ip: Ipv4Addr::new(198, 51, 100, 4),
        };
        let mut buf = [0xa5u8; ARP_LEN];
        r.emit(&mut buf);
        let p = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p), r);
        let e = etherparse::ArpPacket::from_slice(&buf).unwrap();
        assert_eq!(e.operation, etherparse::ArpOperation::REPLY);
        assert_eq!(e.sender_protocol_addr(), &[198, 51, 100, 1]);
        assert_eq!(e.target_hw_addr(), &r.target_mac.0);
    }

    #[test]
    fn rejects_truncated_and_foreign_arp() {
        let mut buf = [0u8; ARP_LEN];
        for n in 0..ARP_LEN {
            assert_eq!(
                ArpPacket::new_checked(&buf[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
        assert_eq!(
            ArpPacket::new_checked(&buf[..]).unwrap_err(),
            WireError::Malformed
        );
        ArpRepr {
            operation: 1,
            sender_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            sender_ip: Ipv4Addr::new(10, 0, 0, 1),
            target_mac: MacAddr([0; 6]),
            target_ip: Ipv4Addr::new(10, 0, 0, 2),
        }
        .emit(&mut buf);
        buf[5] = 16; // IPv6-sized protocol address: not ours
        assert_eq!(
            ArpPacket::new_checked(&buf[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
