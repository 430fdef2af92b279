//! Stage `port_security`: Neutron's anti-spoofing for instance ports.
//!
//! Reads: `PortEntry::security` of the ingress port (absent when `port_security_enabled` is
//! false, and then this stage does nothing).
//! Writes: nothing but verdicts.
//! Next: `Continue`, or a drop.
//! Drops: `port_security.spoofed_mac`, `.spoofed_ipv4`, `.spoofed_ipv6`, `.spoofed_arp`,
//! `.dhcp_server`, `.router_advert`, `.ethertype`, `.tagged`, `.malformed`.
//!
//! What passes, as Neutron's OVS firewall allows it: frames from the port's MAC (or an allowed
//! address pair's MAC); IPv4 from a fixed IP or allowed pair paired with that MAC, and from
//! 0.0.0.0 only for DHCP client traffic (UDP 68 -> 67); IPv6 from a fixed IP, an allowed pair,
//! the MAC's EUI-64 link-local address, and `::` only for DAD Neighbor Solicitations and MLD
//! reports; ARP whose sender MAC is the frame's source and whose sender IP is allowed (or
//! 0.0.0.0, an ARP probe). DHCP server replies (UDP 67 -> 68, and DHCPv6 547 -> 546) and router
//! advertisements from an instance are dropped.
use super::{Batch, Next, Tracer};
use crate::counters::{BatchCounters, DropReason};
use crate::packet::arp::ArpPacket;
use crate::packet::eth::EtherType;
use crate::packet::icmpv6::{self, Icmpv6Packet};
use crate::packet::ipv4::{Ipv4Packet, PROTO_UDP};
use crate::packet::ipv6::{Ipv6Packet, NEXT_ICMPV6, NEXT_UDP};
use crate::packet::udp::UdpPacket;
use crate::packet::{EthernetFrame, MacAddr, PacketBuf};
use crate::tables::{PortSecurity, Tables};
use crate::trace;
use std::net::{Ipv4Addr, Ipv6Addr};

pub fn run<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let Some(port) = t.ports.get(b.in_port as usize) else {
        return;
    };
    let Some(sec) = port.security.as_ref() else {
        return;
    };
    for i in 0..b.len {
        if b.meta[i].next != Next::Continue {
            continue;
        }
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        match check(p.data(), sec) {
            Ok(what) => {
                trace!(
                    tr,
                    i,
                    "port_security",
                    "port {}: allowed ({what})",
                    port.name
                );
            }
            Err(r) => {
                trace!(
                    tr,
                    i,
                    "port_security",
                    "port {}: drop {}",
                    port.name,
                    r.name()
                );
                b.drop_pkt(i, r, c);
            }
        }
    }
}

/// Checks one frame (at least 14 bytes, as `classify` guarantees) against a port's rules.
/// `Ok` carries a short word on what matched, for trace.
#[inline]
pub fn check(frame: &[u8], sec: &PortSecurity) -> Result<&'static str, DropReason> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Err(DropReason::MalformedL3);
    };
    let src_key = eth.src_u64();
    if !sec.mac_key_allowed(src_key) {
        return Err(DropReason::SpoofedMac);
    }
    match eth.ethertype() {
        EtherType::IPV4 => check_v4(eth.payload(), src_key, sec),
        EtherType::IPV6 => check_v6(eth.payload(), eth.src(), sec),
        EtherType::ARP => check_arp(eth.payload(), eth.src(), sec),
        t if crate::packet::vlan::is_tpid(t) => Err(DropReason::TaggedFromInstance),
        _ => Err(DropReason::EtherTypeDenied),
    }
}

fn check_v4(l3: &[u8], src: u64, sec: &PortSecurity) -> Result<&'static str, DropReason> {
    let ip = Ipv4Packet::new_checked(l3).map_err(|_| DropReason::MalformedL3)?;
    let s = u32::from(ip.src());
    // UDP ports, read straight from the header (only DHCP's 67/68 matter here).
    let hl = ip.header_len();
    let udp = if ip.protocol() == PROTO_UDP && !ip.is_later_fragment() && ip.total_len() >= hl + 4 {
        Some((
            u16::from_be_bytes([l3[hl], l3[hl + 1]]),
            u16::from_be_bytes([l3[hl + 2], l3[hl + 3]]),
        ))
    } else {
        None
    };
    if udp == Some((67, 68)) {
        return Err(DropReason::DhcpServer);
    }
    if sec.v4_key_allowed(src, s) {
        return Ok("ipv4 source");
    }
    if s == 0 && udp == Some((68, 67)) {
        // DHCPDISCOVER/REQUEST before the instance has an address.
        return Ok("dhcp client");
    }
    Err(DropReason::SpoofedIpv4)
}

fn check_v6(l3: &[u8], src: MacAddr, sec: &PortSecurity) -> Result<&'static str, DropReason> {
    let ip = Ipv6Packet::new_checked(l3).map_err(|_| DropReason::MalformedL3)?;
    let upper = ip.upper_layer();
    let icmp_type = match upper {
        Some((NEXT_ICMPV6, l4)) => Icmpv6Packet::new_checked(l4).ok().map(|m| m.msg_type()),
        _ => None,
    };
    if icmp_type == Some(icmpv6::ROUTER_ADVERT) {
        return Err(DropReason::RouterAdvert);
    }
    if let Some((NEXT_UDP, l4)) = upper {
        if let Ok(u) = UdpPacket::new_checked(l4) {
            if (u.src_port(), u.dst_port()) == (547, 546) {
                return Err(DropReason::DhcpServer);
            }
        }
    }
    let s = ip.src();
    if s == Ipv6Addr::UNSPECIFIED {
        // Duplicate address detection and MLD reports are sent from :: (RFC 4862, RFC 3810).
        return match icmp_type {
            Some(icmpv6::NEIGHBOR_SOLICIT | icmpv6::MLD_REPORT | icmpv6::MLDV2_REPORT) => {
                Ok("dad/mld from ::")
            }
            _ => Err(DropReason::SpoofedIpv6),
        };
    }
    if sec.v6_allowed(src, s) {
        Ok("ipv6 source")
    } else {
        Err(DropReason::SpoofedIpv6)
    }
}

fn check_arp(l3: &[u8], src: MacAddr, sec: &PortSecurity) -> Result<&'static str, DropReason> {
    let arp = ArpPacket::new_checked(l3).map_err(|_| DropReason::MalformedL3)?;
    if arp.sender_mac() != src {
        return Err(DropReason::SpoofedArp);
    }
    let spa = arp.sender_ip();
    if spa == Ipv4Addr::UNSPECIFIED || sec.v4_allowed(src, spa) {
        Ok("arp sender")
    } else {
        Err(DropReason::SpoofedArp)
    }
}
