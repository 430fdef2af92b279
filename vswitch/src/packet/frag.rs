//! IPv4 fragmentation by a router (RFC 791 3.2, RFC 1812 4.2.2.7): a packet without DF that is
//! larger than the egress MTU leaves in fragments, as a Linux router (Neutron's qrouter, fip
//! and snat namespaces) sends it.
//!
//! Every fragment is a buffer of its own holding the Ethernet header and the IPv4 header of
//! the original, then its share of the payload: the first one is a copy cut short, each later
//! one a copy whose headers are moved up to just before its share (only the headers move), the
//! last one the original itself. They go out in order, the first first, so that a firewall or
//! NAT that follows a datagram by its first fragment (ours, VPP's, Linux's) sees it before
//! the others. A fragment keeps the identification, protocol and addresses; its offset is the
//! original's plus its place, every fragment but the last has More Fragments set (the last
//! keeps the original's: a fragment may be fragmented again), and its checksum is computed
//! afresh. Options whose copied flag is clear appear in the first fragment only; in the others
//! they become NOPs, so every fragment's header has the same length (as Linux's
//! `ip_options_fragment` does).
use super::checksum::checksum;
use super::{be16, put_be16, PacketBuf};

/// Why a packet was not fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragError {
    /// Not a whole, single-buffer IPv4 packet with well-formed options, or an MTU that leaves
    /// no room for 8 bytes of payload after the header. Nothing was sent.
    Unfit,
    /// No buffer for a copy: the fragments before it were sent, the rest are lost.
    NoBuffer,
}

/// Largest fragment count of one packet (a 9,000-byte jumbo frame into the minimum MTU of 68
/// makes 188): a bound on the work one packet costs.
pub const MAX_FRAGMENTS: usize = 256;

/// Splits the IPv4 packet in `p` (an untagged Ethernet frame) into fragments of at most `mtu`
/// bytes of IP packet each and hands them to `emit` in order. Returns how many it made. A
/// packet that already fits is handed over whole (one fragment). On [`FragError::Unfit`] the
/// packet comes back untouched.
pub fn fragment_v4<B: PacketBuf>(
    p: B,
    mtu: usize,
    mut emit: impl FnMut(B),
) -> Result<usize, (Option<B>, FragError)> {
    let Some(plan) = Plan::of(p.data(), p.pkt_len(), mtu) else {
        return Err((Some(p), FragError::Unfit));
    };
    if plan.count == 1 {
        emit(p);
        return Ok(1);
    }
    let mut orig = Some(p);
    for k in 0..plan.count {
        let last = k + 1 == plan.count;
        let q = if last {
            orig.take()
        } else {
            orig.as_ref().and_then(|o| o.try_clone())
        };
        let Some(mut q) = q else {
            return Err((orig, FragError::NoBuffer));
        };
        if !plan.shape(&mut q, k) {
            // Cannot happen once the plan was made (every length was checked); stop rather
            // than send a broken fragment.
            return Err((Some(q), FragError::Unfit));
        }
        emit(q);
    }
    Ok(plan.count)
}

/// How one packet is cut.
struct Plan {
    /// Ethernet + IPv4 header bytes.
    hdr: usize,
    ihl: usize,
    /// IPv4 payload bytes.
    payload: usize,
    /// Payload bytes per fragment but the last (a multiple of 8).
    chunk: usize,
    count: usize,
    /// The original's fragment offset (bytes) and More Fragments flag.
    offset: usize,
    more: bool,
}

impl Plan {
    fn of(d: &[u8], pkt_len: usize, mtu: usize) -> Option<Plan> {
        if d.len() != pkt_len || d.len() < 34 || d[14] >> 4 != 4 {
            return None;
        }
        let ihl = (d[14] & 0x0f) as usize * 4;
        let total = be16(d, 16) as usize;
        if ihl < 20 || total < ihl || 14 + total > d.len() || !options_ok(&d[34..14 + ihl]) {
            return None;
        }
        let payload = total - ihl;
        if total <= mtu {
            return Some(Plan {
                hdr: 14 + ihl,
                ihl,
                payload,
                chunk: payload,
                count: 1,
                offset: 0,
                more: false,
            });
        }
        let chunk = mtu.checked_sub(ihl)? / 8 * 8;
        if chunk == 0 {
            return None;
        }
        let count = payload.div_ceil(chunk);
        let frag = be16(d, 20);
        let offset = (frag & 0x1fff) as usize * 8;
        // The last fragment's offset must still fit in 13 bits of 8-byte units.
        if count > MAX_FRAGMENTS || (offset + payload - 1) / 8 > 0x1fff {
            return None;
        }
        Some(Plan {
            hdr: 14 + ihl,
            ihl,
            payload,
            chunk,
            count,
            offset,
            more: frag & 0x2000 != 0,
        })
    }

    /// Turns `q`, a whole copy of the original, into fragment `k`.
    fn shape<B: PacketBuf>(&self, q: &mut B, k: usize) -> bool {
        let at = k * self.chunk;
        let len = self.chunk.min(self.payload - at);
        if k > 0 {
            let d = q.data_mut();
            if d.len() < at + self.hdr {
                return false;
            }
            d.copy_within(..self.hdr, at);
            if !q.adj(at) {
                return false;
            }
        }
        let Some(extra) = q.pkt_len().checked_sub(self.hdr + len) else {
            return false;
        };
        if !q.trim(extra) {
            return false;
        }
        let last = k + 1 == self.count;
        let d = q.data_mut();
        if k > 0 {
            blank_uncopied_options(&mut d[34..self.hdr]);
        }
        put_be16(d, 16, (self.ihl + len) as u16);
        // Reserved bit and DF stay as they were (DF is clear, or we would not be here).
        let flags = be16(d, 20) & 0xc000 & !0x2000;
        let more = if !last || self.more { 0x2000 } else { 0 };
        put_be16(d, 20, flags | more | ((self.offset + at) / 8) as u16);
        put_be16(d, 24, 0);
        let sum = checksum(&d[14..self.hdr]);
        put_be16(d, 24, sum);
        true
    }
}

/// Whether IPv4 options parse: each option inside the header, lengths at least 2.
fn options_ok(opts: &[u8]) -> bool {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return true,
            1 => i += 1,
            _ => {
                let Some(&l) = opts.get(i + 1) else {
                    return false;
                };
                if l < 2 || i + l as usize > opts.len() {
                    return false;
                }
                i += l as usize;
            }
        }
    }
    true
}

/// Overwrites every option whose copied flag (the type's top bit) is clear with NOPs; `opts`
/// has passed [`options_ok`].
fn blank_uncopied_options(opts: &mut [u8]) {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return,
            1 => i += 1,
            t => {
                let l = opts.get(i + 1).map_or(opts.len() - i, |&l| l as usize);
                let end = (i + l).min(opts.len());
                if t & 0x80 == 0 {
                    opts[i..end].fill(1);
                }
                i = end.max(i + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TestBuf;
    use proptest::prelude::*;

    /// An untagged frame carrying an IPv4 packet: `opts` after the 20-byte header, `payload`
    /// bytes counting 0, 1, 2, ..., identification 0x1234, protocol UDP, flags/offset `frag`.
    fn packet(opts: &[u8], payload: usize, frag: u16) -> Vec<u8> {
        let ihl = 20 + opts.len();
        let mut f = vec![0u8; 14 + ihl + payload];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x40 | (ihl / 4) as u8;
        put_be16(&mut f, 16, (ihl + payload) as u16);
        put_be16(&mut f, 18, 0x1234);
        put_be16(&mut f, 20, frag);
        f[22] = 63;
        f[23] = 17;
        f[26..30].copy_from_slice(&[100, 64, 0, 9]);
        f[30..34].copy_from_slice(&[198, 51, 100, 4]);
        f[34..34 + opts.len()].copy_from_slice(opts);
        for (k, b) in f[14 + ihl..].iter_mut().enumerate() {
            *b = k as u8;
        }
        let sum = checksum(&f[14..14 + ihl]);
        put_be16(&mut f, 24, sum);
        f
    }

    fn cut(f: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, FragError> {
        let mut out = Vec::new();
        fragment_v4(TestBuf::new(f), mtu, |q| out.push(q.data().to_vec())).map_err(|(_, e)| e)?;
        Ok(out)
    }

    /// Reassembles fragments as a receiver does (RFC 815: by offset, until the one without
    /// MF), checking each header on the way; returns the header of the first and the payload.
    fn reassemble(frags: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let mut payload = Vec::new();
        let mut first = Vec::new();
        for (k, f) in frags.iter().enumerate() {
            let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).expect("a valid header");
            assert_eq!(
                ip.total_len() as usize,
                f.len() - 14,
                "fragment {k}: length"
            );
            assert_eq!(ip.identification(), 0x1234);
            assert!(!ip.dont_fragment());
            assert_eq!(
                ip.header_checksum(),
                ip.to_header().calc_header_checksum(),
                "fragment {k}: checksum"
            );
            let ihl = ip.ihl() as usize * 4;
            let off = ip.fragments_offset().value() as usize * 8;
            assert_eq!(off, payload.len(), "fragment {k}: offset");
            assert_eq!(ip.more_fragments(), k + 1 < frags.len(), "fragment {k}: MF");
            assert_eq!(f[..14], frags[0][..14], "fragment {k}: Ethernet header");
            if k == 0 {
                first = f[14..14 + ihl].to_vec();
            }
            payload.extend_from_slice(&f[14 + ihl..]);
        }
        (first, payload)
    }

    #[test]
    fn a_packet_over_the_mtu_leaves_in_fragments_the_receiver_puts_back_together() {
        let f = packet(&[], 1480, 0);
        let frags = cut(&f, 1450).unwrap();
        assert_eq!(
            frags.iter().map(Vec::len).collect::<Vec<_>>(),
            // 1,424 payload bytes (the largest multiple of 8 within 1,450 - 20), then 56.
            vec![14 + 20 + 1424, 14 + 20 + 56]
        );
        let (hdr, payload) = reassemble(&frags);
        assert_eq!(payload, f[34..]);
        assert_eq!(hdr[8..10], f[22..24], "TTL and protocol as they were");
        assert_eq!(hdr[12..], f[26..34], "addresses as they were");
    }

    #[test]
    fn a_packet_that_fits_goes_whole_and_untouched() {
        let f = packet(&[], 1000, 0);
        assert_eq!(cut(&f, 1500).unwrap(), vec![f.clone()]);
        assert_eq!(cut(&f, 1020).unwrap(), vec![f]);
    }

    #[test]
    fn a_fragment_is_fragmented_again_with_its_offset_and_more_fragments_kept() {
        // The middle fragment of a bigger datagram: offset 1480 (185 x 8), MF set.
        let f = packet(&[], 1480, 0x2000 | 185);
        let frags = cut(&f, 1000).unwrap();
        assert_eq!(frags.len(), 2);
        let field = |g: &[u8]| be16(g, 20);
        assert_eq!(field(&frags[0]), 0x2000 | 185);
        assert_eq!(field(&frags[1]), 0x2000 | (185 + 976 / 8));
        // The last fragment of a datagram: the last piece has MF clear again.
        let f = packet(&[], 1480, 185);
        let frags = cut(&f, 1000).unwrap();
        assert_eq!(field(&frags[1]), 185 + 976 / 8);
    }

    #[test]
    fn options_not_copied_are_in_the_first_fragment_only() {
        // Record route (7, not copied: 9 bytes), a NOP, then a security-like option with the
        // copied flag (0x82, 4 bytes), EOL + padding to 16 bytes.
        let mut opts = vec![7, 9, 4, 0, 0, 0, 0, 0, 0, 1, 0x82, 4, 0xab, 0xcd, 0, 0];
        opts.resize(16, 0);
        let f = packet(&opts, 200, 0);
        // 140 - 36 leaves 104 bytes of payload a fragment: two.
        let frags = cut(&f, 140).unwrap();
        assert_eq!(frags.len(), 2);
        assert_eq!(frags[0][34..50], opts[..], "first fragment: every option");
        assert_eq!(
            frags[1][34..50],
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0x82, 4, 0xab, 0xcd, 0, 0],
            "later fragment: the copied option only"
        );
        let (_, payload) = reassemble(&frags);
        assert_eq!(payload, f[50..]);
    }

    #[test]
    fn what_cannot_be_fragmented_comes_back_untouched() {
        let f = packet(&[], 100, 0);
        // 27 bytes of MTU leave 7 for payload: less than one 8-byte unit.
        let (back, e) = fragment_v4(TestBuf::new(&f), 27, |_| panic!("nothing sent")).unwrap_err();
        assert_eq!(e, FragError::Unfit);
        assert_eq!(back.unwrap().data(), &f[..]);
        // An option running past the header.
        let g = packet(&[7, 9, 4, 0], 100, 0);
        assert_eq!(cut(&g, 60), Err(FragError::Unfit));
        // Not IPv4.
        let mut h = f.clone();
        h[14] = 0x60;
        assert_eq!(cut(&h, 60), Err(FragError::Unfit));
        // A total length beyond the frame.
        let mut h = f.clone();
        put_be16(&mut h, 16, 200);
        assert_eq!(cut(&h, 60), Err(FragError::Unfit));
    }

    #[test]
    fn ethernet_padding_after_the_packet_is_not_payload() {
        let mut f = packet(&[], 10, 0);
        f.extend_from_slice(&[0xee; 16]);
        let frags = cut(&f, 28).unwrap();
        let (_, payload) = reassemble(&frags);
        assert_eq!(payload, f[34..44]);
    }

    proptest! {
        /// Any bytes at all, any MTU: no panic; what is made fits the MTU, or is the packet
        /// whole when it already did.
        #[test]
        fn any_bytes_are_cut_or_refused_never_a_panic(
            mut f in proptest::collection::vec(any::<u8>(), 0..3000),
            mtu in 0usize..2000,
            ipv4 in any::<bool>(),
        ) {
            if ipv4 && f.len() >= 34 {
                // Often enough a header that parses: version 4, a length within the frame.
                f[14] = 0x40 | (f[14] & 0x0f).max(5);
                let tl = (f.len() - 14).min(u16::MAX as usize) as u16;
                f[16..18].copy_from_slice(&tl.to_be_bytes());
            }
            let mut out = Vec::new();
            match fragment_v4(TestBuf::new(&f), mtu, |q| out.push(q.data().to_vec())) {
                Ok(1) => prop_assert_eq!(&out, &vec![f.clone()]),
                Ok(n) => {
                    prop_assert_eq!(out.len(), n);
                    for g in &out {
                        prop_assert!(g.len() - 14 <= mtu);
                    }
                }
                Err((back, e)) => {
                    prop_assert_eq!(e, FragError::Unfit);
                    prop_assert!(out.is_empty());
                    let back = back.unwrap();
                    prop_assert_eq!(back.data(), &f[..]);
                }
            }
        }

        /// Whatever the size, MTU, options and offset: the fragments fit the MTU, carry
        /// every payload byte once in order, and the first one's header is the original's
        /// but for length, flags and checksum. A packet that would take more than
        /// [`MAX_FRAGMENTS`] (every fragment carries the whole header, as Linux's do: here
        /// 36 bytes of options and an MTU of 68 leave 8 bytes a fragment) is refused.
        #[test]
        fn fragments_fit_and_put_back_together(
            payload in 1usize..3000,
            mtu in 68usize..1600,
            nopts in 0usize..10,
        ) {
            let opts = vec![1u8; nopts * 4];
            let f = packet(&opts, payload, 0);
            let ihl = 20 + opts.len();
            if ihl + payload > mtu && payload.div_ceil((mtu - ihl) / 8 * 8) > MAX_FRAGMENTS {
                prop_assert_eq!(cut(&f, mtu), Err(FragError::Unfit));
                return Ok(());
            }
            let frags = cut(&f, mtu).unwrap();
            if frags.len() == 1 {
                prop_assert!(ihl + payload <= mtu);
                prop_assert_eq!(&frags[0], &f);
            }
            for g in &frags {
                prop_assert!(g.len() - 14 <= mtu);
            }
            let (hdr, got) = reassemble(&frags);
            prop_assert_eq!(&got[..], &f[14 + ihl..]);
            prop_assert_eq!(&hdr[4..6], &f[18..20]);
            prop_assert_eq!(&hdr[8..10], &f[22..24]);
            prop_assert_eq!(&hdr[12..], &f[26..14 + ihl]);
        }
    }
}
