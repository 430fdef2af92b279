//! IEEE 802.1Q tags: parse, pop and push on a whole packet buffer.
//!
//! A tag sits between the source MAC and the EtherType: `dst(6) src(6) TPID(2) TCI(2) type(2)`.
//! Pop moves the 12 MAC bytes forward by 4 and trims the front; push does the reverse. Both are
//! O(12 bytes) and never reallocate (the mbuf headroom absorbs a push).
use super::{be16, put_be16, PacketBuf, WireError};
use crate::packet::eth::EtherType;

/// Bytes of one 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;

/// A tag as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    pub tpid: u16,
    /// Priority code point (3 bits).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN id (12 bits).
    pub vid: u16,
}

impl VlanTag {
    /// Reads the outer tag of an Ethernet frame, if its TPID field holds `tpid` (frame must be
    /// at least 18 bytes, else `Truncated`).
    pub fn parse(frame: &[u8]) -> Result<VlanTag, WireError> {
        if frame.len() < 14 + VLAN_TAG_LEN {
            return Err(WireError::Truncated);
        }
        let tpid = be16(frame, 12);
        let tci = be16(frame, 14);
        Ok(VlanTag {
            tpid,
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        })
    }

    /// The VLAN id of a tagged frame's outer tag (`None`: shorter than a tagged header).
    #[inline(always)]
    pub fn vid_of(frame: &[u8]) -> Option<u16> {
        if frame.len() < 14 + VLAN_TAG_LEN {
            return None;
        }
        Some(be16(frame, 14) & 0x0fff)
    }

    pub fn tci(&self) -> u16 {
        ((self.pcp as u16 & 7) << 13) | ((self.dei as u16) << 12) | (self.vid & 0x0fff)
    }
}

/// Whether an EtherType value is a tag protocol identifier (802.1Q, 802.1ad or legacy QinQ).
#[inline(always)]
pub fn is_tpid(t: u16) -> bool {
    matches!(
        t,
        EtherType::VLAN | EtherType::QINQ | EtherType::QINQ_9100 | EtherType::QINQ_9200
    )
}

/// Removes the outer tag. The caller has checked the frame is tagged and long enough.
#[inline]
pub fn pop<B: PacketBuf>(pkt: &mut B) -> bool {
    let d = pkt.data_mut();
    if d.len() < 14 + VLAN_TAG_LEN {
        return false;
    }
    d.copy_within(0..12, VLAN_TAG_LEN);
    pkt.adj(VLAN_TAG_LEN)
}

/// Inserts an 802.1Q tag (TPID 0x8100) with `vid` and priority 0 after the MACs.
#[inline]
pub fn push<B: PacketBuf>(pkt: &mut B, vid: u16) -> bool {
    if pkt.data().len() < 12 || !pkt.prepend(VLAN_TAG_LEN) {
        return false;
    }
    let d = pkt.data_mut();
    d.copy_within(VLAN_TAG_LEN..VLAN_TAG_LEN + 12, 0);
    put_be16(d, 12, EtherType::VLAN);
    put_be16(d, 14, vid & 0x0fff);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TestBuf;

    fn frame() -> Vec<u8> {
        let mut f = vec![1, 2, 3, 4, 5, 6, 0xa, 0xb, 0xc, 0xd, 0xe, 0xf, 0x08, 0x00];
        f.extend_from_slice(&[0x45; 20]);
        f
    }

    #[test]
    fn push_then_pop_is_identity_and_etherparse_sees_the_tag() {
        let orig = frame();
        let mut b = TestBuf::new(&orig);
        assert!(push(&mut b, 101));
        let (v, _) = etherparse::Ethernet2Header::from_slice(b.data()).unwrap();
        assert_eq!(v.ether_type.0, EtherType::VLAN);
        let (tag, _) = etherparse::SingleVlanHeader::from_slice(&b.data()[14..]).unwrap();
        assert_eq!(tag.vlan_id.value(), 101);
        assert_eq!(tag.ether_type.0, 0x0800);
        let t = VlanTag::parse(b.data()).unwrap();
        assert_eq!((t.tpid, t.vid, t.pcp), (EtherType::VLAN, 101, 0));
        assert_eq!(VlanTag::vid_of(b.data()), Some(101));
        assert!(pop(&mut b));
        assert_eq!(b.data(), &orig[..]);
    }

    #[test]
    fn pop_refuses_short_frames() {
        let mut b = TestBuf::new(&[0u8; 17]);
        assert!(!pop(&mut b));
        assert_eq!(b.data().len(), 17);
        assert_eq!(
            VlanTag::parse(&[0u8; 17]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(VlanTag::vid_of(&[0u8; 17]), None);
    }

    #[test]
    fn tci_round_trip() {
        let t = VlanTag {
            tpid: EtherType::VLAN,
            pcp: 5,
            dei: true,
            vid: 4094,
        };
        let mut f = frame();
        f.splice(12..12, [0x81, 0x00, (t.tci() >> 8) as u8, t.tci() as u8]);
        assert_eq!(VlanTag::parse(&f).unwrap(), t);
        assert_eq!(
            VlanTag::vid_of(&f),
            Some(4094),
            "PCP and DEI are not part of the VID"
        );
    }
}
