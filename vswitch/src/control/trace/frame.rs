//! The frame a trace runs, built from fields ([`PacketSpec`]) with etherparse (an independent
//! builder: a bug in our own header code cannot hide itself in what we feed it), or decoded
//! from hex.
//!
//! Off the fast path: every function here allocates, and every problem with the input is
//! reported, all of them at once, each naming its field (`vlan: 5000 is not a VLAN id ...`).
use super::decode::parse_hex;
use crate::packet::MacAddr;
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, IpHeaders, IpNumber, Ipv4Header,
    Ipv6FlowLabel, Ipv6Header, PacketBuilder,
};
use std::net::{IpAddr, Ipv4Addr};

/// The largest payload a spec may ask for (a jumbo frame's worth).
pub const MAX_PAYLOAD: usize = 9000;
/// The largest frame `hex` or a pcap packet may give.
pub const MAX_FRAME: usize = 16384;
/// Default transport ports of a built TCP or UDP packet.
pub const DEFAULT_SPORT: u16 = 40000;
pub const DEFAULT_DPORT: u16 = 80;

/// A packet to trace, described by fields (serde: the JSON body of `POST /v1/trace`).
///
/// Either `hex` (the whole frame) or fields. Defaults: `eth_src` the ingress port's instance
/// MAC, `eth_dst` what the tables say `ip_dst` is on the ingress network (a gateway, floating
/// IP or known port; off-link from an instance port: its subnet's gateway), both filled in by
/// `trace_spec` ([`build_frame`] alone needs them unless `arp` gives them); `proto` udp,
/// `sport` 40000, `dport` 80, `tcp_flags` "S", `icmp_type` echo request (8, or 128 for
/// icmpv6), `icmp_code` 0, `ttl` 64, `payload_len` 0, `df` true (as Linux sends).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PacketSpec {
    /// Port name from the host config (`vm1`, `uplink`, `overlay`).
    pub in_port: String,
    /// The whole frame as hex (spaces, colons and dashes allowed); then no other field but
    /// `in_port` may be given.
    pub hex: Option<String>,
    pub eth_src: Option<String>,
    pub eth_dst: Option<String>,
    /// An 802.1Q tag (0-4094), as a provider port receives a VLAN network's frames.
    pub vlan: Option<u16>,
    /// IPv4 or IPv6 (both the same family); required unless `arp`.
    pub ip_src: Option<IpAddr>,
    pub ip_dst: Option<IpAddr>,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number (any other is sent with
    /// `payload_len` zero bytes as its payload).
    pub proto: Option<String>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP flags, one letter each: S(YN) A(CK) F(IN) R(ST) P(SH) U(RG) E(CE) C(WR); `.` is ACK.
    pub tcp_flags: Option<String>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: Option<u8>,
    /// Bytes after the transport header (zeros).
    pub payload_len: Option<usize>,
    /// IPv4 don't-fragment bit.
    pub df: Option<bool>,
    /// An ARP packet instead of IP.
    pub arp: Option<ArpSpec>,
}

/// An ARP request or reply (Ethernet/IPv4).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArpSpec {
    /// `request` (default), `reply` or an operation number.
    pub op: Option<String>,
    pub sender_ip: Option<Ipv4Addr>,
    pub target_ip: Option<Ipv4Addr>,
    /// Default: the frame's source MAC.
    pub sender_mac: Option<String>,
    /// Default: zero in a request, the frame's destination in a reply.
    pub target_mac: Option<String>,
}

impl PacketSpec {
    /// The fields that describe the packet by parts, with whether each is given (what `hex`
    /// and `arp` exclude).
    fn ip_fields(&self) -> [(&'static str, bool); 11] {
        [
            ("ip_src", self.ip_src.is_some()),
            ("ip_dst", self.ip_dst.is_some()),
            ("proto", self.proto.is_some()),
            ("sport", self.sport.is_some()),
            ("dport", self.dport.is_some()),
            ("tcp_flags", self.tcp_flags.is_some()),
            ("icmp_type", self.icmp_type.is_some()),
            ("icmp_code", self.icmp_code.is_some()),
            ("ttl", self.ttl.is_some()),
            ("payload_len", self.payload_len.is_some()),
            ("df", self.df.is_some()),
        ]
    }
}

/// Builds the frame `spec` describes. `Err` lists every problem, each naming its field.
pub fn build_frame(spec: &PacketSpec) -> Result<Vec<u8>, Vec<String>> {
    let mut e = Vec::new();
    if let Some(h) = &spec.hex {
        let others = [
            ("eth_src", spec.eth_src.is_some()),
            ("eth_dst", spec.eth_dst.is_some()),
            ("vlan", spec.vlan.is_some()),
            ("arp", spec.arp.is_some()),
        ];
        for (name, _) in others.iter().chain(spec.ip_fields().iter()).filter(|f| f.1) {
            e.push(format!(
                "{name}: not allowed with hex (the frame is given whole)"
            ));
        }
        return match parse_hex(h) {
            Ok(f) if e.is_empty() => Ok(f),
            Ok(_) => Err(e),
            Err(m) => {
                e.push(format!("hex: {m}"));
                Err(e)
            }
        };
    }
    let vlan = spec.vlan.filter(|&v| {
        let ok = v < 4095;
        if !ok {
            e.push(format!("vlan: {v} is not a VLAN id (0-4094)"));
        }
        ok
    });
    let frame = match &spec.arp {
        Some(a) => arp_frame(spec, a, &mut e),
        None => ip_frame(spec, &mut e),
    };
    match frame {
        Some(mut f) if e.is_empty() => {
            if let Some(v) = vlan {
                // The tag goes after the two MACs; the frame's EtherType moves behind it.
                f.splice(12..12, [0x81, 0x00, (v >> 8) as u8, v as u8]);
            }
            Ok(f)
        }
        _ => Err(e),
    }
}

/// An optional MAC field: `Ok(None)` when absent, `Err` (and a problem noted) when it is not a
/// MAC.
fn opt_mac(e: &mut Vec<String>, name: &str, v: Option<&str>) -> Result<Option<MacAddr>, ()> {
    match v.map(str::parse::<MacAddr>) {
        None => Ok(None),
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(_)) => {
            e.push(format!(
                "{name}: {:?} is not a MAC address (aa:bb:cc:dd:ee:ff)",
                v.unwrap_or_default()
            ));
            Err(())
        }
    }
}

/// A required MAC field: parsed, or a problem noted (why it is needed, when absent).
fn mac_field(e: &mut Vec<String>, name: &str, v: Option<&str>, why: &str) -> Option<MacAddr> {
    match opt_mac(e, name, v) {
        Ok(Some(m)) => Some(m),
        Ok(None) => {
            e.push(format!("{name}: required: {why}"));
            None
        }
        Err(()) => None,
    }
}

/// Two MAC fields that default to each other (the Ethernet and the ARP sender, say): both, or
/// a problem noted.
fn mac_pair(
    e: &mut Vec<String>,
    (a, va): (&str, Option<&str>),
    (b, vb): (&str, Option<&str>),
    fallback: Option<MacAddr>,
    why: &str,
) -> Option<(MacAddr, MacAddr)> {
    let (x, y) = (opt_mac(e, a, va), opt_mac(e, b, vb));
    let (Ok(x), Ok(y)) = (x, y) else {
        return None;
    };
    let x2 = x.or(y).or(fallback);
    let y2 = y.or(x).or(fallback);
    if x2.is_none() {
        e.push(format!("{a}: required: {why} (or {b})"));
    }
    x2.zip(y2)
}

const DST_REQUIRED: &str = "the MAC the frame is addressed to (a trace derives it when ip_dst is \
     a gateway, floating IP or known port on the ingress network)";

fn arp_frame(spec: &PacketSpec, a: &ArpSpec, e: &mut Vec<String>) -> Option<Vec<u8>> {
    for (name, _) in spec.ip_fields().iter().filter(|f| f.1) {
        e.push(format!("{name}: not allowed with arp"));
    }
    let op = match a.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("request") => Some(1),
        Some("reply") => Some(2),
        Some(s) => match s.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => {
                e.push(format!(
                    "arp.op: {s:?} is not request, reply or an operation number"
                ));
                None
            }
        },
    };
    let src_sha = mac_pair(
        e,
        ("eth_src", spec.eth_src.as_deref()),
        ("arp.sender_mac", a.sender_mac.as_deref()),
        None,
        "the sender's MAC",
    );
    // A request is broadcast and asks for an unknown MAC; a reply goes to the asker.
    let reply = op == Some(2);
    let dst_tha = if reply {
        mac_pair(
            e,
            ("eth_dst", spec.eth_dst.as_deref()),
            ("arp.target_mac", a.target_mac.as_deref()),
            None,
            "the asker's MAC",
        )
    } else {
        match (
            opt_mac(e, "eth_dst", spec.eth_dst.as_deref()),
            opt_mac(e, "arp.target_mac", a.target_mac.as_deref()),
        ) {
            (Ok(d), Ok(t)) => Some((
                d.unwrap_or(MacAddr([0xff; 6])),
                t.unwrap_or(MacAddr([0; 6])),
            )),
            _ => None,
        }
    };
    let spa = a.sender_ip;
    let tpa = a.target_ip;
    if spa.is_none() {
        e.push("arp.sender_ip: required".into());
    }
    if tpa.is_none() {
        e.push("arp.target_ip: required".into());
    }
    let (op, (src, sha), (dst, tha), spa, tpa) = (op?, src_sha?, dst_tha?, spa?, tpa?);
    let pkt = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation(op),
        &sha.0,
        &spa.octets(),
        &tha.0,
        &tpa.octets(),
    );
    let mut out = Vec::new();
    let written = pkt.map_err(|x| x.to_string()).and_then(|p| {
        PacketBuilder::ethernet2(src.0, dst.0)
            .arp(p)
            .write(&mut out)
            .map_err(|x| x.to_string())
    });
    match written {
        Ok(()) => Some(out),
        Err(x) => {
            e.push(format!("arp: {x}"));
            None
        }
    }
}

/// What the transport layer of a built IP packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Other(u8),
}

fn proto_field(e: &mut Vec<String>, v: Option<&str>) -> Option<Proto> {
    let Some(s) = v else {
        return Some(Proto::Udp);
    };
    Some(match s.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Proto::Tcp,
        "udp" | "17" => Proto::Udp,
        "icmp" | "1" => Proto::Icmp,
        "icmpv6" | "ipv6-icmp" | "58" => Proto::Icmpv6,
        other => match other.parse::<u8>() {
            Ok(n) => Proto::Other(n),
            Err(_) => {
                e.push(format!(
                    "proto: {s:?} is not tcp, udp, icmp, icmpv6 or a protocol number (0-255)"
                ));
                return None;
            }
        },
    })
}

/// TCP flags from letters: (flags as in the header's 13th byte).
fn tcp_flags_field(e: &mut Vec<String>, v: &str) -> Option<u8> {
    let mut f = 0u8;
    let mut ok = true;
    for ch in v.chars() {
        f |= match ch.to_ascii_uppercase() {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            'A' | '.' => 0x10,
            'U' => 0x20,
            'E' => 0x40,
            'C' => 0x80,
            _ => {
                e.push(format!(
                    "tcp_flags: {ch:?} is not a TCP flag (S, A, F, R, P, U, E, C)"
                ));
                ok = false;
                0
            }
        };
    }
    ok.then_some(f)
}

fn ip_frame(spec: &PacketSpec, e: &mut Vec<String>) -> Option<Vec<u8>> {
    let src = mac_field(
        e,
        "eth_src",
        spec.eth_src.as_deref(),
        "the sender's MAC (a trace uses the ingress instance port's)",
    );
    let dst = mac_field(e, "eth_dst", spec.eth_dst.as_deref(), DST_REQUIRED);
    let proto = proto_field(e, spec.proto.as_deref());
    let (sip, dip) = (spec.ip_src, spec.ip_dst);
    if sip.is_none() {
        e.push("ip_src: required (or arp)".into());
    }
    if dip.is_none() {
        e.push("ip_dst: required (or arp)".into());
    }
    let v6 = match (sip, dip) {
        (Some(s), Some(d)) if s.is_ipv6() != d.is_ipv6() => {
            e.push(format!(
                "ip_dst: {d} is not of the same family as ip_src {s}"
            ));
            None
        }
        (Some(a), _) | (_, Some(a)) => Some(a.is_ipv6()),
        _ => None,
    };
    match (proto, v6) {
        (Some(Proto::Icmp), Some(true)) => {
            e.push("proto: icmp is ICMP for IPv4; IPv6 addresses take icmpv6".into())
        }
        (Some(Proto::Icmpv6), Some(false)) => {
            e.push("proto: icmpv6 is for IPv6; IPv4 addresses take icmp".into())
        }
        _ => {}
    }
    let ports = matches!(proto, Some(Proto::Tcp | Proto::Udp));
    let icmp = matches!(proto, Some(Proto::Icmp | Proto::Icmpv6));
    for (name, given, allowed, what) in [
        ("sport", spec.sport.is_some(), ports, "tcp and udp"),
        ("dport", spec.dport.is_some(), ports, "tcp and udp"),
        (
            "tcp_flags",
            spec.tcp_flags.is_some(),
            proto == Some(Proto::Tcp),
            "tcp",
        ),
        (
            "icmp_type",
            spec.icmp_type.is_some(),
            icmp,
            "icmp and icmpv6",
        ),
        (
            "icmp_code",
            spec.icmp_code.is_some(),
            icmp,
            "icmp and icmpv6",
        ),
        ("df", spec.df.is_some(), v6 != Some(true), "IPv4"),
    ] {
        if given && !allowed && proto.is_some() {
            e.push(format!("{name}: only for {what}"));
        }
    }
    let flags = match spec.tcp_flags.as_deref() {
        Some(f) => tcp_flags_field(e, f),
        None => Some(0x02),
    };
    let payload_len = spec.payload_len.unwrap_or(0);
    if payload_len > MAX_PAYLOAD {
        e.push(format!(
            "payload_len: {payload_len} is more than {MAX_PAYLOAD} bytes"
        ));
    }
    let (src, dst, proto, sip, dip, flags) = (src?, dst?, proto?, sip?, dip?, flags?);
    if !e.is_empty() {
        return None;
    }
    let ttl = spec.ttl.unwrap_or(64);
    let number = match proto {
        Proto::Tcp => IpNumber::TCP,
        Proto::Udp => IpNumber::UDP,
        Proto::Icmp => IpNumber::ICMP,
        Proto::Icmpv6 => IpNumber::IPV6_ICMP,
        Proto::Other(n) => IpNumber(n),
    };
    let ip = match (sip, dip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = match Ipv4Header::new(0, ttl, number, s.octets(), d.octets()) {
                Ok(h) => h,
                Err(x) => {
                    e.push(format!("ip_src: {x}"));
                    return None;
                }
            };
            h.dont_fragment = spec.df.unwrap_or(true);
            IpHeaders::Ipv4(h, Default::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: 0,
                next_header: number,
                hop_limit: ttl,
                source: s.octets(),
                destination: d.octets(),
            },
            Default::default(),
        ),
        _ => return None,
    };
    let payload = vec![0u8; payload_len];
    let step = PacketBuilder::ethernet2(src.0, dst.0).ip(ip);
    let (sport, dport) = (
        spec.sport.unwrap_or(DEFAULT_SPORT),
        spec.dport.unwrap_or(DEFAULT_DPORT),
    );
    let (ity, icode) = (
        spec.icmp_type
            .unwrap_or(if proto == Proto::Icmp { 8 } else { 128 }),
        spec.icmp_code.unwrap_or(0),
    );
    // Echo requests and replies carry an identifier and a sequence number; other messages
    // (errors) have their own meaning for bytes 5 to 8 and get zeros.
    let echo = matches!(
        (proto, ity),
        (Proto::Icmp, 0 | 8) | (Proto::Icmpv6, 128 | 129)
    );
    let rest = if echo { [0x12, 0x34, 0, 1] } else { [0; 4] };
    let mut out = Vec::new();
    let written = match proto {
        Proto::Tcp => {
            let mut t = step.tcp(sport, dport, 1000, 64240);
            let setters: [(u8, SetFlag); 6] = [
                (0x01, PacketBuilderTcp::fin),
                (0x02, PacketBuilderTcp::syn),
                (0x04, PacketBuilderTcp::rst),
                (0x08, PacketBuilderTcp::psh),
                (0x40, PacketBuilderTcp::ece),
                (0x80, PacketBuilderTcp::cwr),
            ];
            for (bit, set) in setters {
                if flags & bit != 0 {
                    t = set(t);
                }
            }
            if flags & 0x10 != 0 {
                t = t.ack(1);
            }
            if flags & 0x20 != 0 {
                t = t.urg(0);
            }
            t.write(&mut out, &payload)
        }
        Proto::Udp => step.udp(sport, dport).write(&mut out, &payload),
        Proto::Icmp => step.icmpv4_raw(ity, icode, rest).write(&mut out, &payload),
        Proto::Icmpv6 => step.icmpv6_raw(ity, icode, rest).write(&mut out, &payload),
        Proto::Other(_) => step.write(&mut out, number, &payload),
    };
    match written {
        Ok(()) => Some(out),
        Err(x) => {
            e.push(format!("proto: cannot build the packet: {x}"));
            None
        }
    }
}

/// The TCP step of etherparse's builder (its flag setters, as plain functions).
type PacketBuilderTcp = etherparse::PacketBuilderStep<etherparse::TcpHeader>;
/// One of its flag setters.
type SetFlag = fn(PacketBuilderTcp) -> PacketBuilderTcp;
