//! Reading what the tracker and the security-group classifier need from one Ethernet frame.
use super::tcp::{self, Segment};
use super::{Key, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::packet::{be16, be32};

const ETH: usize = 14;
const PROTO_SCTP: u8 = 132;
const PROTO_UDPLITE: u8 = 136;
const PROTO_DCCP: u8 = 33;

/// What one frame is, for the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not IP, or IP that security groups always allow (ARP, DHCP).
    Bypass(&'static str),
    /// ICMPv6 Neighbor Discovery or MLD, of this type: allowed in the directions Neutron
    /// allows it (see `firewall`), else matched against the rules.
    Nd(u8),
    /// A TCP segment.
    Tcp(Segment),
    /// UDP, SCTP, UDP-Lite, DCCP: tracked by ports, no state machine.
    Ports,
    /// ICMP / ICMPv6 echo request (`true`) or reply.
    Echo(bool),
    /// An ICMP error quoting the header of a packet of the connection `inner` (the quoted
    /// packet's own direction, zone not set).
    Error(Key),
    /// Other ICMP messages: matched against the rules, never tracked.
    IcmpOther,
    /// Any other IP protocol: tracked by addresses.
    Other,
    /// A non-first fragment (IPv4 or IPv6): no transport header; it follows the verdict of
    /// its datagram's first fragment (`Flow::frag` holds the identification).
    Fragment,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// A frame's key (zone 0) and kind, and what rules match on: the protocol and the
/// destination port, or ICMP `type << 8 | code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub key: Key,
    pub kind: Kind,
    /// Destination port, or ICMP type << 8 | code.
    pub port_key: u16,
    /// The IP identification of a fragment (first or later), else `None`.
    pub frag: Option<u32>,
}

/// A placeholder flow (scratch arrays).
pub const MALFORMED: Flow = Flow {
    key: Key { w: [0; 5] },
    kind: Kind::Malformed,
    port_key: 0,
    frag: None,
};

impl Flow {
    fn bypass(why: &'static str) -> Flow {
        Flow {
            key: Key::default(),
            kind: Kind::Bypass(why),
            port_key: 0,
            frag: None,
        }
    }
    fn malformed() -> Flow {
        MALFORMED
    }
}

/// Parses an untagged Ethernet frame.
#[inline(always)]
pub fn parse(frame: &[u8]) -> Flow {
    if frame.len() < ETH {
        return Flow::malformed();
    }
    match be16(frame, 12) {
        0x0800 => parse_v4(&frame[ETH..]),
        0x86dd => parse_v6(&frame[ETH..]),
        0x0806 => Flow::bypass("arp"),
        _ => Flow::bypass("not ip"),
    }
}

/// The key [`parse`] gives an unfragmented, option-less IPv4 TCP or UDP packet, read at
/// fixed offsets without parsing the rest (`None` for anything else): where a batch only
/// needs to know which connection-table lines to start loading.
#[inline(always)]
pub fn quick_v4_key(frame: &[u8]) -> Option<Key> {
    let h = frame.first_chunk::<{ ETH + 24 }>()?;
    let proto = h[23];
    (be16(h, 12) == 0x0800
        && h[14] == 0x45
        && be16(h, 20) & 0x3fff == 0
        && (proto == PROTO_TCP || proto == PROTO_UDP))
        .then(|| {
            let (src, dst) = (be32(h, 26), be32(h, 30));
            Key::v4(0, proto, src, dst, be16(h, 34), be16(h, 36))
        })
}

/// UDP ports of DHCP client and server traffic (IPv4), which the firewall lets by untracked
/// as Neutron does.
#[inline(always)]
pub fn dhcp_ports(sport: u16, dport: u16) -> bool {
    matches!((sport, dport), (68, 67) | (67, 68))
}

/// [`parse`] into `out`. The common case, an unfragmented IPv4 TCP segment (a SYN's window
/// scale option read too) or UDP datagram, is written field by field straight into `out`, the
/// batch's scratch slot: building the flow elsewhere and copying it in stalled the firewall
/// on store forwarding. Everything else goes through [`parse`]. The same result either way
/// (a proptest checks it).
#[inline(always)]
pub fn parse_into(frame: &[u8], out: &mut Flow) {
    // Ethernet, a 20-byte IPv4 header and 20 bytes of transport header at fixed offsets:
    // one length check instead of one per field.
    if let Some(h) = frame.first_chunk::<{ ETH + 40 }>() {
        let tl = be16(h, 16) as usize;
        if be16(h, 12) == 0x0800
            && h[14] == 0x45
            && be16(h, 20) & 0x3fff == 0
            && tl >= 20
            && tl <= frame.len() - ETH
        {
            let (src, dst) = (be32(h, 26), be32(h, 30));
            let (sp, dp) = (be16(h, 34), be16(h, 36));
            match h[23] {
                PROTO_TCP if tl >= 40 => {
                    let doff = ((h[46] >> 4) as usize) * 4;
                    if doff >= 20 && doff <= tl - 20 {
                        let flags = h[47];
                        // A SYN's window scale option (options end within the IP packet:
                        // doff <= tl - 20 <= frame length - 34).
                        let wscale = match frame.get(ETH + 40..ETH + 20 + doff) {
                            Some(opts) if flags & tcp::SYN != 0 => wscale_option(opts),
                            _ => 255,
                        };
                        out.key = Key::v4(0, PROTO_TCP, src, dst, sp, dp);
                        out.kind = Kind::Tcp(Segment {
                            seq: be32(h, 38),
                            ack: be32(h, 42),
                            win: be16(h, 48),
                            flags,
                            len: (tl - 20 - doff) as u32,
                            wscale,
                        });
                        out.port_key = dp;
                        out.frag = None;
                        return;
                    }
                }
                PROTO_UDP if tl >= 28 && !dhcp_ports(sp, dp) => {
                    out.key = Key::v4(0, PROTO_UDP, src, dst, sp, dp);
                    out.kind = Kind::Ports;
                    out.port_key = dp;
                    out.frag = None;
                    return;
                }
                _ => {}
            }
        }
    }
    *out = parse(frame);
}

/// IPv4 header checks; returns (header length, total length).
#[inline(always)]
fn v4_bounds(ip: &[u8]) -> Option<(usize, usize)> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let hl = ((ip[0] & 0x0f) as usize) * 4;
    let tl = be16(ip, 2) as usize;
    if hl < 20 || tl < hl || tl > ip.len() {
        return None;
    }
    Some((hl, tl))
}

#[inline(always)]
fn parse_v4(ip: &[u8]) -> Flow {
    let Some((hl, tl)) = v4_bounds(ip) else {
        return Flow::malformed();
    };
    let proto = ip[9];
    let src = be32(ip, 12);
    let dst = be32(ip, 16);
    let frag = be16(ip, 6);
    let id = be16(ip, 4) as u32;
    if frag & 0x1fff == 1 && proto == PROTO_TCP {
        // RFC 1858: a TCP fragment at offset 8 can only be rewriting the first one's flags.
        return Flow::malformed();
    }
    if frag & 0x1fff != 0 {
        return Flow {
            key: Key::v4(0, proto, src, dst, 0, 0),
            kind: Kind::Fragment,
            port_key: 0,
            frag: Some(id),
        };
    }
    let l4 = &ip[hl..tl];
    if proto == 17 && frag & 0x2000 == 0 {
        if let Some(f) = dhcp(l4, 68, 67, 67, 68) {
            return f;
        }
    }
    // A first fragment (more fragments follow): its verdict covers the rest.
    let first = (frag & 0x2000 != 0).then_some(id);
    transport(proto, l4, false, first, |sp, dp| {
        Key::v4(0, proto, src, dst, sp, dp)
    })
}

/// DHCP client requests and server replies are allowed as Neutron allows them.
#[inline(always)]
fn dhcp(l4: &[u8], cs: u16, cd: u16, ss: u16, sd: u16) -> Option<Flow> {
    if l4.len() < 8 {
        return None;
    }
    let (sp, dp) = (be16(l4, 0), be16(l4, 2));
    if (sp, dp) == (cs, cd) {
        Some(Flow::bypass("dhcp client"))
    } else if (sp, dp) == (ss, sd) {
        Some(Flow::bypass("dhcp reply"))
    } else {
        None
    }
}

#[inline]
fn parse_v6(ip: &[u8]) -> Flow {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Flow::malformed();
    }
    let plen = be16(ip, 4) as usize;
    if 40 + plen > ip.len() {
        return Flow::malformed();
    }
    let src = u128::from_be_bytes(ip[8..24].try_into().unwrap_or([0; 16]));
    let dst = u128::from_be_bytes(ip[24..40].try_into().unwrap_or([0; 16]));
    // Walk the extension headers to the transport header.
    let mut next = ip[6];
    let mut rest = &ip[40..40 + plen];
    let mut frag = None;
    for _ in 0..crate::packet::ipv6::MAX_EXT_HEADERS {
        match next {
            0 | 43 | 60 => {
                if rest.len() < 8 {
                    return Flow::malformed();
                }
                let len = (rest[1] as usize + 1) * 8;
                if rest.len() < len {
                    return Flow::malformed();
                }
                next = rest[0];
                rest = &rest[len..];
            }
            44 => {
                // Fragment header: next header, reserved, offset << 3 | M, identification.
                if rest.len() < 8 || frag.is_some() {
                    return Flow::malformed();
                }
                let id = be32(rest, 4);
                let offset = be16(rest, 2) >> 3;
                let more = be16(rest, 2) & 1 != 0;
                next = rest[0];
                if offset != 0 {
                    return Flow {
                        key: Key::v6(0, next, src, dst, 0, 0),
                        kind: Kind::Fragment,
                        port_key: 0,
                        frag: Some(id),
                    };
                }
                // An atomic fragment (offset 0, no more) is a whole datagram (RFC 6946).
                frag = more.then_some(id);
                rest = &rest[8..];
            }
            _ => break,
        }
    }
    if next == PROTO_ICMPV6 && frag.is_none() {
        if let Some(&t) = rest.first() {
            // Neighbor Discovery (RS, RA, NS, NA, redirect) and MLD.
            if matches!(t, 130..=137 | 143) {
                return Flow {
                    key: Key::v6(0, next, src, dst, 0, 0),
                    kind: Kind::Nd(t),
                    port_key: (t as u16) << 8 | rest.get(1).copied().unwrap_or(0) as u16,
                    frag: None,
                };
            }
        }
    }
    if next == 17 && frag.is_none() {
        if let Some(f) = dhcp(rest, 546, 547, 547, 546) {
            return f;
        }
    }
    transport(next, rest, true, frag, |sp, dp| {
        Key::v6(0, next, src, dst, sp, dp)
    })
}

/// The transport part, shared by both families; `frag` is the identification of a first
/// fragment (kept unless the header is malformed). Built in place as the return value: the
/// flow is not copied after (that copy stalled the fast path on store forwarding).
#[inline(always)]
fn transport(
    proto: u8,
    l4: &[u8],
    v6: bool,
    frag: Option<u32>,
    key: impl Fn(u16, u16) -> Key,
) -> Flow {
    match proto {
        PROTO_TCP => {
            if l4.len() < 20 {
                return Flow::malformed();
            }
            let doff = ((l4[12] >> 4) as usize) * 4;
            if doff < 20 || doff > l4.len() {
                return Flow::malformed();
            }
            let flags = l4[13];
            let wscale = if flags & tcp::SYN != 0 {
                wscale_option(&l4[20..doff])
            } else {
                255
            };
            let (sp, dp) = (be16(l4, 0), be16(l4, 2));
            Flow {
                key: key(sp, dp),
                kind: Kind::Tcp(Segment {
                    seq: be32(l4, 4),
                    ack: be32(l4, 8),
                    win: be16(l4, 14),
                    flags,
                    len: (l4.len() - doff) as u32,
                    wscale,
                }),
                port_key: dp,
                frag,
            }
        }
        PROTO_UDP | PROTO_SCTP | PROTO_UDPLITE | PROTO_DCCP => {
            if l4.len() < 8 {
                return Flow::malformed();
            }
            let (sp, dp) = (be16(l4, 0), be16(l4, 2));
            Flow {
                key: key(sp, dp),
                kind: Kind::Ports,
                port_key: dp,
                frag,
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 if (proto == PROTO_ICMPV6) == v6 => icmp(l4, v6, frag, key),
        _ => Flow {
            key: key(0, 0),
            kind: Kind::Other,
            port_key: 0,
            frag,
        },
    }
}

#[inline]
fn icmp(l4: &[u8], v6: bool, frag: Option<u32>, key: impl Fn(u16, u16) -> Key) -> Flow {
    if l4.len() < 8 {
        return Flow::malformed();
    }
    let (t, code) = (l4[0], l4[1]);
    let port_key = (t as u16) << 8 | code as u16;
    let (req, rep) = if v6 { (128, 129) } else { (8, 0) };
    if t == req || t == rep {
        let id = be16(l4, 4);
        return Flow {
            key: key(id, id),
            kind: Kind::Echo(t == req),
            port_key,
            frag,
        };
    }
    let error = if v6 {
        matches!(t, 1..=4)
    } else {
        matches!(t, 3 | 4 | 5 | 11 | 12)
    };
    if !error {
        return Flow {
            key: key(0, 0),
            kind: Kind::IcmpOther,
            port_key,
            frag,
        };
    }
    let inner = &l4[8..];
    let k = if v6 {
        quoted_v6(inner)
    } else {
        quoted_v4(inner)
    };
    match k {
        Some(k) => Flow {
            key: key(0, 0),
            kind: Kind::Error(k),
            port_key,
            frag,
        },
        None => Flow::malformed(),
    }
}

/// The key of the packet an ICMP error quotes (its IPv4 header and at least 8 bytes after).
fn quoted_v4(q: &[u8]) -> Option<Key> {
    if q.len() < 20 || q[0] >> 4 != 4 {
        return None;
    }
    let hl = ((q[0] & 0x0f) as usize) * 4;
    if hl < 20 || q.len() < hl + 8 {
        return None;
    }
    let (proto, src, dst) = (q[9], be32(q, 12), be32(q, 16));
    let l4 = &q[hl..];
    let (sp, dp) = quoted_ports(proto, l4, false)?;
    Some(Key::v4(0, proto, src, dst, sp, dp))
}

fn quoted_v6(q: &[u8]) -> Option<Key> {
    if q.len() < 48 || q[0] >> 4 != 6 {
        return None;
    }
    let src = u128::from_be_bytes(q[8..24].try_into().ok()?);
    let dst = u128::from_be_bytes(q[24..40].try_into().ok()?);
    let proto = q[6];
    let (sp, dp) = quoted_ports(proto, &q[40..], true)?;
    Some(Key::v6(0, proto, src, dst, sp, dp))
}

fn quoted_ports(proto: u8, l4: &[u8], v6: bool) -> Option<(u16, u16)> {
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_UDPLITE | PROTO_DCCP => {
            Some((be16(l4, 0), be16(l4, 2)))
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let req = if v6 { 128 } else { 8 };
            // Only an echo request is worth an error back.
            if l4[0] == req {
                let id = be16(l4, 4);
                Some((id, id))
            } else {
                None
            }
        }
        _ => Some((0, 0)),
    }
}

/// The window-scale option (kind 3) of a SYN's options, else 255.
fn wscale_option(mut opts: &[u8]) -> u8 {
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => opts = &opts[1..],
            _ => {
                let Some(&len) = opts.get(1) else { break };
                let len = len as usize;
                if len < 2 || len > opts.len() {
                    break;
                }
                if kind == 3 && len == 3 {
                    return opts[2];
                }
                opts = &opts[len..];
            }
        }
    }
    255
}
