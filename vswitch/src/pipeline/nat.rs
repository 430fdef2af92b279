//! IPv4 address translation in place, for floating IPs: the router stage rewrites the
//! destination of inbound packets (DNAT, floating -> fixed) and the source of outbound ones
//! (SNAT, fixed -> floating), one to one, ports unchanged (Neutron's floating-IP NAT).
//!
//! Every checksum is updated incrementally (RFC 1624), never recomputed, so a packet that
//! arrived with a wrong checksum still has one: the IPv4 header's; TCP's and UDP's, whose
//! pseudo-header holds the addresses (a UDP checksum of 0 means none and stays 0; one that
//! comes out 0 is sent as 0xffff, RFC 768); nothing in an ICMP echo (no pseudo-header). An
//! ICMP error quotes the packet it is about, which crossed the same translation the other
//! way: the quoted packet's other address is translated back too (its header and transport
//! checksums, and the ICMP checksum over all of it), as Linux's NAT does, so the instance sees
//! an error about the packet it sent, and the outside one about the packet it sent.
//! Later fragments carry no transport header: only their IPv4 header changes.
use crate::packet::checksum::update16;
use crate::packet::{be16, be32};

/// Which address of a packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Src,
    Dst,
}

impl Field {
    /// Offset of the address in the IPv4 header.
    fn offset(self) -> usize {
        match self {
            Field::Src => 12,
            Field::Dst => 16,
        }
    }
    fn other(self) -> Field {
        match self {
            Field::Src => Field::Dst,
            Field::Dst => Field::Src,
        }
    }
}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// One's-complement update of checksum `c` for a 32-bit field going from `old` to `new`
/// (RFC 1624 eqn. 3 over both 16-bit halves at once).
#[inline(always)]
fn update32(c: u16, old: u32, new: u32) -> u16 {
    let mut s = (!c as u32) + (!old >> 16) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// A transport checksum to keep right through an address change: its offset, and whether it
/// is UDP's (0: none).
#[derive(Clone, Copy)]
struct L4Sum {
    at: usize,
    udp: bool,
}

/// The checksum words an address change rewrote, (old, new): what a checksum over them (an
/// ICMP error's, over its quote) must absorb besides the address itself.
struct Touched {
    ip: (u16, u16),
    l4: Option<(u16, u16)>,
}

/// Writes the address at `at` (4 bytes, currently `old`) and updates the checksums at
/// `ip_sum` and `l4`.
#[inline(always)]
fn set_addr(
    d: &mut [u8],
    at: usize,
    old: u32,
    new: u32,
    ip_sum: usize,
    l4: Option<L4Sum>,
) -> Touched {
    d[at..at + 4].copy_from_slice(&new.to_be_bytes());
    let ip_old = be16(d, ip_sum);
    let ip_new = update32(ip_old, old, new);
    d[ip_sum..ip_sum + 2].copy_from_slice(&ip_new.to_be_bytes());
    let l4 = l4.and_then(|L4Sum { at: c, udp }| {
        let c_old = be16(d, c);
        if udp && c_old == 0 {
            return None;
        }
        let mut c_new = update32(c_old, old, new);
        if udp && c_new == 0 {
            c_new = 0xffff;
        }
        d[c..c + 2].copy_from_slice(&c_new.to_be_bytes());
        Some((c_old, c_new))
    });
    Touched {
        ip: (ip_old, ip_new),
        l4,
    }
}

/// Where the transport checksum of the (possibly truncated, as quoted) IPv4 packet at `l3`
/// lies, if it is within `end` and the packet is a first fragment of TCP or UDP.
fn l4_sum(d: &[u8], l3: usize, end: usize) -> Option<L4Sum> {
    let ihl = (d[l3] & 0x0f) as usize * 4;
    let later = be16(d, l3 + 6) & 0x1fff != 0;
    if later {
        return None;
    }
    let l4 = l3 + ihl;
    let (at, udp) = match d[l3 + 9] {
        PROTO_TCP => (l4 + 16, false),
        PROTO_UDP => (l4 + 6, true),
        _ => return None,
    };
    (at + 2 <= end).then_some(L4Sum { at, udp })
}

/// The IPv4 header at `l3` is whole (version 4, options within the buffer, total length
/// within `end`): its header length and end.
fn header(d: &[u8], l3: usize, end: usize) -> Option<(usize, usize)> {
    if l3 + 20 > end || d[l3] >> 4 != 4 {
        return None;
    }
    let ihl = (d[l3] & 0x0f) as usize * 4;
    let total = be16(d, l3 + 2) as usize;
    (ihl >= 20 && total >= ihl && l3 + total <= end).then_some((ihl, l3 + total))
}

/// Rewrites `field` of the IPv4 packet at `d[l3..]` to `new` (see the module notes). `false`:
/// not a whole IPv4 packet, nothing changed.
pub fn rewrite(d: &mut [u8], l3: usize, field: Field, new: u32) -> bool {
    if let Some(done) = rewrite_plain(d, l3, field, new) {
        return done;
    }
    rewrite_any(d, l3, field, new)
}

/// [`rewrite`] of the common packet, at fixed offsets: an option-less IPv4 header, TCP or UDP,
/// not a later fragment, the transport checksum within the packet (what [`header`] and
/// [`l4_sum`] find for it, with no ICMP quote to mend). `None`: not such a packet, nothing
/// changed; the general way decides. The checksum updates are [`set_addr`]'s, written out on
/// the slice of the packet: calling it here (with the `Touched` it returns for ICMP quotes)
/// cost 55 more instructions a translated handshake segment (callgrind, PROBE_SYN fip probe).
#[inline(always)]
fn rewrite_plain(d: &mut [u8], l3: usize, field: Field, new: u32) -> Option<bool> {
    let len = d.len();
    let h = d.get_mut(l3..)?;
    let fixed = h.first_chunk::<20>()?;
    if fixed[0] != 0x45 || be16(fixed, 6) & 0x1fff != 0 {
        return None;
    }
    let total = be16(fixed, 2) as usize;
    let (sum, udp) = match fixed[9] {
        PROTO_TCP => (20 + 16, false),
        PROTO_UDP => (20 + 6, true),
        _ => return None,
    };
    if sum + 2 > total || total > len - l3 {
        return None;
    }
    let h = h.get_mut(..total)?;
    let at = field.offset();
    let old = be32(h, at);
    if old == new {
        return Some(true);
    }
    h[at..at + 4].copy_from_slice(&new.to_be_bytes());
    let ip = update32(be16(h, 10), old, new);
    h[10..12].copy_from_slice(&ip.to_be_bytes());
    let c_old = be16(h, sum);
    if !(udp && c_old == 0) {
        let mut c_new = update32(c_old, old, new);
        if udp && c_new == 0 {
            c_new = 0xffff;
        }
        h[sum..sum + 2].copy_from_slice(&c_new.to_be_bytes());
    }
    Some(true)
}

/// [`rewrite`] of any packet.
fn rewrite_any(d: &mut [u8], l3: usize, field: Field, new: u32) -> bool {
    let Some((ihl, end)) = header(d, l3, d.len()) else {
        return false;
    };
    let old = be32(d, l3 + field.offset());
    if old == new {
        return true;
    }
    let l4 = l4_sum(d, l3, end);
    set_addr(d, l3 + field.offset(), old, new, l3 + 10, l4);
    let later = be16(d, l3 + 6) & 0x1fff != 0;
    if d[l3 + 9] == PROTO_ICMP && !later {
        icmp_error_quote(d, l3 + ihl, end, field.other(), old, new);
    }
    true
}

/// Rewrites the source or destination port of the TCP or UDP packet at `d[l3..]`, or the
/// identifier of an ICMP echo request or reply (either `field`: it is one number), to `new`,
/// with the transport checksum updated incrementally. `false`: no such header (another
/// protocol, a later fragment, cut short), nothing changed.
pub fn rewrite_port(d: &mut [u8], l3: usize, field: Field, new: u16) -> bool {
    let Some((ihl, end)) = header(d, l3, d.len()) else {
        return false;
    };
    if be16(d, l3 + 6) & 0x1fff != 0 {
        return false;
    }
    let l4 = l3 + ihl;
    let off = match field {
        Field::Src => 0,
        Field::Dst => 2,
    };
    let (at, sum, udp) = match d[l3 + 9] {
        PROTO_TCP if l4 + 20 <= end => (l4 + off, l4 + 16, false),
        PROTO_UDP if l4 + 8 <= end => (l4 + off, l4 + 6, true),
        PROTO_ICMP if l4 + 8 <= end && matches!(d[l4], 0 | 8) => (l4 + 4, l4 + 2, false),
        _ => return false,
    };
    let old = be16(d, at);
    d[at..at + 2].copy_from_slice(&new.to_be_bytes());
    let s_old = be16(d, sum);
    if udp && s_old == 0 {
        return true;
    }
    let mut s_new = update16(s_old, old, new);
    if udp && s_new == 0 {
        s_new = 0xffff;
    }
    d[sum..sum + 2].copy_from_slice(&s_new.to_be_bytes());
    true
}

/// Rewrites, in the ICMP error that is the IPv4 packet at `d[l3..]`, the quoted packet's
/// source or destination port (TCP, UDP; an ICMP echo's identifier) to `new`, with the quoted
/// transport checksum (when the quote holds it) and the ICMP checksum: what port translation
/// needs on top of [`rewrite`], which translates the quoted address. `false`: not an ICMP
/// error quoting such a packet (nothing changed).
pub fn rewrite_quoted_port(d: &mut [u8], l3: usize, field: Field, new: u16) -> bool {
    let Some((ihl, end)) = header(d, l3, d.len()) else {
        return false;
    };
    let icmp = l3 + ihl;
    if d[l3 + 9] != PROTO_ICMP
        || be16(d, l3 + 6) & 0x1fff != 0
        || icmp + 8 > end
        || !matches!(d[icmp], 3 | 4 | 5 | 11 | 12)
    {
        return false;
    }
    let q = icmp + 8;
    if q + 20 > end || d[q] >> 4 != 4 {
        return false;
    }
    let ql4 = q + (d[q] & 0x0f) as usize * 4;
    let off = match field {
        Field::Src => 0,
        Field::Dst => 2,
    };
    let (at, sum, udp) = match d[q + 9] {
        PROTO_TCP => (ql4 + off, ql4 + 16, false),
        PROTO_UDP => (ql4 + off, ql4 + 6, true),
        PROTO_ICMP if ql4 + 8 <= end && matches!(d[ql4], 0 | 8) => (ql4 + 4, ql4 + 2, false),
        _ => return false,
    };
    if at + 2 > end {
        return false;
    }
    let old = be16(d, at);
    d[at..at + 2].copy_from_slice(&new.to_be_bytes());
    let mut c = update16(be16(d, icmp + 2), old, new);
    // The quoted transport checksum, if the quote reaches it (and UDP has one).
    if sum + 2 <= end && !(udp && be16(d, sum) == 0) {
        let s_old = be16(d, sum);
        let mut s_new = update16(s_old, old, new);
        if udp && s_new == 0 {
            s_new = 0xffff;
        }
        d[sum..sum + 2].copy_from_slice(&s_new.to_be_bytes());
        c = update16(c, s_old, s_new);
    }
    d[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    true
}

/// In an ICMP error at `icmp` (up to `end`), the quoted packet's `field` from `old` to `new`,
/// with the quoted checksums and the ICMP checksum. Anything else (echo, a quote too short to
/// hold the address, a quote about another address) is left alone.
fn icmp_error_quote(d: &mut [u8], icmp: usize, end: usize, field: Field, old: u32, new: u32) {
    if icmp + 8 > end || !matches!(d[icmp], 3 | 4 | 5 | 11 | 12) {
        return;
    }
    let q = icmp + 8;
    // The quote may be cut short anywhere after its IPv4 header (RFC 792: 64 bits of data).
    if q + 20 > end || d[q] >> 4 != 4 {
        return;
    }
    let q_ihl = (d[q] & 0x0f) as usize * 4;
    if q_ihl < 20 || q + q_ihl > end || be32(d, q + field.offset()) != old {
        return;
    }
    let l4 = l4_sum(d, q, end);
    let t = set_addr(d, q + field.offset(), old, new, q + 10, l4);
    let mut c = update32(be16(d, icmp + 2), old, new);
    c = update16(c, t.ip.0, t.ip.1);
    if let Some((o, n)) = t.l4 {
        c = update16(c, o, n);
    }
    d[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, IpNumber, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const F: [u8; 4] = [203, 0, 113, 17];
    const X: [u8; 4] = [198, 51, 100, 4];
    const H: [u8; 4] = [192, 168, 77, 9];

    fn ip(a: [u8; 4]) -> u32 {
        u32::from_be_bytes(a)
    }

    /// Parses a frame with etherparse and checks every checksum it can.
    fn check(f: &[u8]) -> SlicedPacket<'_> {
        let s = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Ipv4(v4)) = &s.net else {
            panic!("not IPv4")
        };
        let h = v4.header().to_header();
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "IPv4 header checksum"
        );
        s
    }

    fn tcp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(40000, 22, 1234, 64000)
            .ack(99)
            .write(&mut out, b"hello over the floating ip")
            .unwrap();
        out
    }

    fn udp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .udp(5353, 53)
            .write(&mut out, b"a datagram")
            .unwrap();
        out
    }

    fn tcp_ok(f: &[u8]) -> (u32, u32) {
        let s = check(f);
        let Some(NetSlice::Ipv4(v4)) = &s.net else {
            panic!()
        };
        let (src, dst) = (v4.header().source(), v4.header().destination());
        let Some(TransportSlice::Tcp(t)) = &s.transport else {
            panic!("not TCP")
        };
        let want = t
            .to_header()
            .calc_checksum_ipv4_raw(src, dst, t.payload())
            .unwrap();
        assert_eq!(t.checksum(), want, "TCP checksum");
        (ip(src), ip(dst))
    }

    #[test]
    fn dnat_and_snat_of_tcp_keep_every_checksum() {
        let mut f = tcp_frame(H, F);
        assert!(rewrite(&mut f, 14, Field::Dst, ip(X)));
        assert_eq!(tcp_ok(&f), (ip(H), ip(X)));
        let mut r = tcp_frame(X, H);
        assert!(rewrite(&mut r, 14, Field::Src, ip(F)));
        assert_eq!(tcp_ok(&r), (ip(F), ip(H)));
        // And back: the same packet translated twice is the original.
        let orig = tcp_frame(H, F);
        let mut again = f.clone();
        assert!(rewrite(&mut again, 14, Field::Dst, ip(F)));
        assert_eq!(again, orig);
    }

    #[test]
    fn udp_checksum_updated_and_none_stays_none() {
        let mut f = udp_frame(H, F);
        assert!(rewrite(&mut f, 14, Field::Dst, ip(X)));
        let s = check(&f);
        let Some(TransportSlice::Udp(u)) = &s.transport else {
            panic!()
        };
        let want = u
            .to_header()
            .calc_checksum_ipv4_raw(H, X, u.payload())
            .unwrap();
        assert_eq!(u.checksum(), want);
        // No checksum (0) stays none.
        let mut n = udp_frame(H, F);
        n[14 + 20 + 6] = 0;
        n[14 + 20 + 7] = 0;
        assert!(rewrite(&mut n, 14, Field::Dst, ip(X)));
        assert_eq!(&n[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
        check(&n);
    }

    #[test]
    fn an_icmp_error_translates_the_quoted_packet_back() {
        // The instance X sent UDP to H through floating IP F (so H saw it from F); H's
        // network answers port unreachable to F, quoting the packet as H received it.
        let sent = udp_frame(F, H);
        let quote = &sent[14..14 + 20 + 8];
        let mut err = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(H, F, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut err, quote)
            .unwrap();
        // DNAT to the instance: the outer destination and the quoted source become X.
        assert!(rewrite(&mut err, 14, Field::Dst, ip(X)));
        let s = check(&err);
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!()
        };
        let want = icmp.header().icmp_type.calc_checksum(icmp.payload());
        assert_eq!(icmp.checksum(), want, "ICMP checksum");
        // The sum over the whole message, computed here independently, folds to all ones.
        assert_eq!(
            crate::packet::checksum::checksum(&err[14 + 20..]),
            0,
            "ICMP checksum over the changed quote"
        );
        let q = icmp.payload();
        let (qh, _) = etherparse::Ipv4Header::from_slice(q).unwrap();
        assert_eq!((qh.source, qh.destination), (X, H));
        assert_eq!(qh.header_checksum, qh.calc_header_checksum());
        // The quoted UDP checksum is what X's own packet carried.
        let mine = udp_frame(X, H);
        assert_eq!(&q[20 + 6..20 + 8], &mine[14 + 20 + 6..14 + 20 + 8]);
        // An ICMP error about someone else's packet keeps its quote.
        let other = udp_frame([203, 0, 113, 99], H);
        let mut err2 = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(H, F, 64)
            .icmpv4(Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ))
            .write(&mut err2, &other[14..14 + 28])
            .unwrap();
        assert!(rewrite(&mut err2, 14, Field::Dst, ip(X)));
        assert_eq!(&err2[14 + 28..], &other[14..14 + 28]);
    }

    #[test]
    fn echo_keeps_its_checksum_and_later_fragments_only_their_header() {
        let mut e = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(H, F, 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut e, b"ping")
            .unwrap();
        let before = e[14 + 20..].to_vec();
        assert!(rewrite(&mut e, 14, Field::Dst, ip(X)));
        assert_eq!(&e[14 + 20..], &before[..]);
        check(&e);
        // A later fragment of TCP: offset 185 (x8), no transport header to touch.
        let mut fr = tcp_frame(H, F);
        fr[14 + 6] = 0x00;
        fr[14 + 7] = 185;
        let sum = etherparse::Ipv4Header::from_slice(&fr[14..])
            .unwrap()
            .0
            .calc_header_checksum();
        fr[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        let payload = fr[14 + 20..].to_vec();
        assert!(rewrite(&mut fr, 14, Field::Dst, ip(X)));
        assert_eq!(&fr[14 + 20..], &payload[..]);
        let h = etherparse::Ipv4Header::from_slice(&fr[14..]).unwrap().0;
        assert_eq!(h.destination, X);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(h.protocol, IpNumber::TCP);
    }

    #[test]
    fn short_or_foreign_packets_are_left_alone() {
        let mut f = tcp_frame(H, F);
        f.truncate(30);
        let before = f.clone();
        assert!(!rewrite(&mut f, 14, Field::Dst, ip(X)));
        assert_eq!(f, before);
        let mut v6 = tcp_frame(H, F);
        v6[14] = 0x65;
        assert!(!rewrite(&mut v6, 14, Field::Dst, ip(X)));
    }

    #[test]
    fn ports_and_echo_identifiers_are_rewritten_with_their_checksums() {
        let mut f = tcp_frame(X, H);
        assert!(rewrite(&mut f, 14, Field::Src, ip(F)));
        assert!(rewrite_port(&mut f, 14, Field::Src, 1031));
        let s = check(&f);
        let Some(TransportSlice::Tcp(t)) = &s.transport else {
            panic!()
        };
        assert_eq!(t.source_port(), 1031);
        let want = t
            .to_header()
            .calc_checksum_ipv4_raw(F, H, t.payload())
            .unwrap();
        assert_eq!(t.checksum(), want);
        let mut u = udp_frame(H, F);
        assert!(rewrite_port(&mut u, 14, Field::Dst, 7));
        let s = check(&u);
        let Some(TransportSlice::Udp(x)) = &s.transport else {
            panic!()
        };
        assert_eq!(x.destination_port(), 7);
        let want = x
            .to_header()
            .calc_checksum_ipv4_raw(H, F, x.payload())
            .unwrap();
        assert_eq!(x.checksum(), want);
        let mut e = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(X, H, 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut e, b"ping")
            .unwrap();
        assert!(rewrite_port(&mut e, 14, Field::Src, 4242));
        let s = check(&e);
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!()
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 4242, seq: 1 })
        );
        assert_eq!(crate::packet::checksum::checksum(&e[14 + 20..]), 0);
        // Nothing to rewrite in an ICMP error or another protocol.
        let mut g = tcp_frame(X, H);
        g[14 + 9] = 47;
        assert!(!rewrite_port(&mut g, 14, Field::Src, 1));
    }

    #[test]
    fn an_icmp_error_about_a_translated_port_quotes_the_original_port_again() {
        // X:40000 -> H:53 left as F:2000; H's network answers port unreachable to F:2000.
        let mut sent = udp_frame(X, H);
        sent[14 + 20..14 + 22].copy_from_slice(&40000u16.to_be_bytes());
        let orig = sent.clone();
        assert!(rewrite(&mut sent, 14, Field::Src, ip(F)));
        assert!(rewrite_port(&mut sent, 14, Field::Src, 2000));
        let mut err = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(H, F, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut err, &sent[14..14 + 28])
            .unwrap();
        // Back: outer destination and quoted source address, then the quoted port.
        assert!(rewrite(&mut err, 14, Field::Dst, ip(X)));
        assert!(rewrite_quoted_port(&mut err, 14, Field::Src, 40000));
        check(&err);
        assert_eq!(
            crate::packet::checksum::checksum(&err[14 + 20..]),
            0,
            "ICMP checksum"
        );
        // The quote is the instance's own packet as it sent it, checksums included.
        assert_eq!(&err[14 + 28..14 + 28 + 28], &orig[14..14 + 28]);
        // Not an ICMP error: nothing.
        let mut u = udp_frame(H, F);
        assert!(!rewrite_quoted_port(&mut u, 14, Field::Src, 1));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Any TCP or UDP packet, either address rewritten to anything: the checksums
            /// etherparse computes from scratch agree with the incremental ones.
            #[test]
            fn incremental_checksums_match_recomputed(
                src in any::<[u8; 4]>(),
                dst in any::<[u8; 4]>(),
                new in any::<[u8; 4]>(),
                tcp in any::<bool>(),
                dst_field in any::<bool>(),
                payload in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut f = Vec::new();
                let b = PacketBuilder::ethernet2([2; 6], [4; 6]).ipv4(src, dst, 64);
                if tcp {
                    b.tcp(1, 2, 3, 4).write(&mut f, &payload).unwrap();
                } else {
                    b.udp(1, 2).write(&mut f, &payload).unwrap();
                }
                let field = if dst_field { Field::Dst } else { Field::Src };
                prop_assert!(rewrite(&mut f, 14, field, ip(new)));
                let s = check(&f);
                let Some(NetSlice::Ipv4(v4)) = &s.net else { panic!() };
                let (hs, hd) = (v4.header().source(), v4.header().destination());
                prop_assert_eq!(if dst_field { hd } else { hs }, new);
                match &s.transport {
                    Some(TransportSlice::Tcp(t)) => {
                        let want = t.to_header().calc_checksum_ipv4_raw(hs, hd, t.payload()).unwrap();
                        prop_assert_eq!(t.checksum(), want);
                    }
                    Some(TransportSlice::Udp(u)) => {
                        let want = u.to_header().calc_checksum_ipv4_raw(hs, hd, u.payload()).unwrap();
                        prop_assert_eq!(u.checksum(), want);
                    }
                    _ => prop_assert!(false, "no transport"),
                }
            }

            /// The fixed-offset way of the common packet and the general way give the same
            /// bytes and answer, whatever the header says (options, fragments, protocols,
            /// lengths that do not add up, UDP without a checksum, cut short anywhere).
            #[test]
            fn the_plain_way_and_the_general_way_agree(
                tcp in any::<bool>(),
                payload in proptest::collection::vec(any::<u8>(), 0..40),
                ver_ihl in prop_oneof![4 => Just(0x45u8), 1 => Just(0x46), 1 => any::<u8>()],
                frag in prop_oneof![4 => Just(0u16), 1 => Just(0x4000), 1 => Just(0x2000), 1 => any::<u16>()],
                proto in prop_oneof![4 => Just(None), 1 => Just(Some(1u8)), 1 => any::<u8>().prop_map(Some)],
                total in prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some)],
                zero_udp_sum in any::<bool>(),
                cut in prop_oneof![3 => Just(None), 1 => any::<proptest::sample::Index>().prop_map(Some)],
                new in any::<[u8; 4]>(),
                dst_field in any::<bool>(),
            ) {
                let mut f = if tcp { tcp_frame(H, F) } else { udp_frame(H, F) };
                f.extend_from_slice(&payload);
                let n = f.len() - 14;
                f[16..18].copy_from_slice(&(n as u16).to_be_bytes());
                f[14] = ver_ihl;
                f[20..22].copy_from_slice(&frag.to_be_bytes());
                if let Some(p) = proto {
                    f[23] = p;
                }
                if let Some(t) = total {
                    f[16..18].copy_from_slice(&t.to_be_bytes());
                }
                if !tcp && zero_udp_sum {
                    f[14 + 20 + 6] = 0;
                    f[14 + 20 + 7] = 0;
                }
                if let Some(cut) = cut {
                    f.truncate(14 + cut.index(f.len() - 13));
                }
                let field = if dst_field { Field::Dst } else { Field::Src };
                let (mut a, mut b) = (f.clone(), f);
                let plain = rewrite(&mut a, 14, field, ip(new));
                let general = rewrite_any(&mut b, 14, field, ip(new));
                prop_assert_eq!(plain, general);
                prop_assert_eq!(a, b);
            }
        }
    }
}
