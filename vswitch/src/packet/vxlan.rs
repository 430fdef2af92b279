//! VXLAN header (RFC 7348 section 5): `flags(1) reserved(3) VNI(3) reserved(1)`; the I flag
//! (0x08) says the VNI is valid. Also the size of a whole IPv4 encapsulation.
use super::WireError;

/// Bytes of the VXLAN header.
pub const VXLAN_HDR_LEN: usize = 8;
/// Outer Ethernet + IPv4 (no options) + UDP + VXLAN: what encapsulation adds.
pub const VXLAN_ENCAP_LEN: usize = 14 + 20 + 8 + VXLAN_HDR_LEN;
/// The I flag: the VNI field is valid.
pub const FLAG_I: u8 = 0x08;

/// A view of a VXLAN header.
#[derive(Debug)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    #[inline(always)]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < VXLAN_HDR_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[0]
    }
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([0, b[4], b[5], b[6]])
    }
    /// The encapsulated Ethernet frame.
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[VXLAN_HDR_LEN..]
    }
}

/// A VXLAN header as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    /// Writes the header (I flag set, reserved bits zero) into `buf[..8]`.
    #[inline(always)]
    pub fn emit(&self, buf: &mut [u8]) {
        let v = self.vni.to_be_bytes();
        buf[..VXLAN_HDR_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_parse_and_etherparse_agree() {
        let mut b = [0xa5u8; 8];
        VxlanRepr { vni: 0x00_12_34_56 }.emit(&mut b);
        let v = VxlanPacket::new_checked(&b[..]).unwrap();
        assert_eq!((v.flags(), v.vni()), (FLAG_I, 0x123456));
        assert_eq!(b, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(
            VxlanPacket::new_checked(&b[..7]).unwrap_err(),
            WireError::Truncated
        );
    }
}
