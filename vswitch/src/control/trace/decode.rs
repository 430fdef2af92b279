//! Frames a trace reads and shows: hex and pcap input, and the one-line summaries a report
//! gives of every frame. Off the fast path; every problem is a message saying what was wrong.
use super::frame::MAX_FRAME;
use crate::packet::MacAddr;
use etherparse::{ArpOperation, LinkSlice, NetSlice, SlicedPacket, TransportSlice, VlanSlice};
use std::net::Ipv4Addr;

/// Decodes a frame written as hex: whitespace, `:` and `-` between digits are ignored, a
/// leading `0x` too.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let mut digits = Vec::with_capacity(t.len());
    for (at, ch) in t.char_indices() {
        match ch.to_digit(16) {
            Some(d) => digits.push(d as u8),
            None if ch.is_whitespace() || ch == ':' || ch == '-' => {}
            None => return Err(format!("{ch:?} at offset {at} is not a hex digit")),
        }
    }
    if digits.is_empty() {
        return Err("no bytes".into());
    }
    if digits.len() % 2 == 1 {
        return Err(format!(
            "an odd number of hex digits ({}): every byte takes two",
            digits.len()
        ));
    }
    if digits.len() / 2 > MAX_FRAME {
        return Err(format!(
            "{} bytes, more than a frame ({MAX_FRAME})",
            digits.len() / 2
        ));
    }
    Ok(digits.chunks(2).map(|d| d[0] << 4 | d[1]).collect())
}

/// Bytes as contiguous lowercase hex (what [`parse_hex`] reads back).
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first packet of a classic pcap file (either byte order, microsecond or nanosecond
/// timestamps) whose link type is Ethernet. pcapng is not read.
pub fn first_pcap_packet(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let word = |at: usize, le: bool| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let magic = word(0, false).ok_or("pcap: shorter than a pcap file header (24 bytes)")?;
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => false,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => true,
        0x0a0d_0d0a => return Err("pcap: this is pcapng; save it as classic pcap".into()),
        m => return Err(format!("pcap: magic {m:#010x} is not a pcap file's")),
    };
    let link = word(20, le).ok_or("pcap: shorter than a pcap file header (24 bytes)")?;
    // The low 16 bits are the link type; the top bits may say how many FCS bytes follow.
    if link & 0xffff != 1 {
        return Err(format!(
            "pcap: link type {} is not Ethernet (1)",
            link & 0xffff
        ));
    }
    let incl = word(24 + 8, le).ok_or("pcap: no packet after the file header")? as usize;
    if incl > MAX_FRAME {
        return Err(format!(
            "pcap: the first packet has {incl} bytes, more than a frame ({MAX_FRAME})"
        ));
    }
    let data = bytes.get(40..40 + incl).ok_or_else(|| {
        format!(
            "pcap: the first packet is cut short ({incl} bytes announced, {} there)",
            bytes.len().saturating_sub(40)
        )
    })?;
    Ok(data.to_vec())
}

/// One line about a frame: MACs, VLAN, addresses, protocol; a VXLAN frame (to `vxlan_port`)
/// also its inner frame.
pub fn summary(f: &[u8], vxlan_port: u16) -> String {
    line(f, Some(vxlan_port))
}

/// [`summary`]; an inner frame is not looked into again (`vxlan_port` none).
fn line(f: &[u8], vxlan_port: Option<u16>) -> String {
    let Ok(s) = SlicedPacket::from_ethernet(f) else {
        return match f.get(..14) {
            Some(h) => format!(
                "{} > {}, ethertype {:#06x}, {} bytes (not parsed)",
                mac_at(h, 6),
                mac_at(h, 0),
                u16::from_be_bytes([h[12], h[13]]),
                f.len()
            ),
            None => format!("{} bytes, shorter than an Ethernet header", f.len()),
        };
    };
    let mut out = match &s.link {
        Some(LinkSlice::Ethernet2(eth)) => {
            format!("{} > {}", MacAddr(eth.source()), MacAddr(eth.destination()))
        }
        _ => String::new(),
    };
    match s.vlan() {
        Some(VlanSlice::SingleVlan(v)) => {
            out.push_str(&format!(" vlan {}", v.vlan_identifier().value()))
        }
        Some(VlanSlice::DoubleVlan(v)) => out.push_str(&format!(
            " vlan {}.{}",
            v.outer.vlan_identifier().value(),
            v.inner.vlan_identifier().value()
        )),
        None => {}
    }
    match &s.net {
        Some(NetSlice::Arp(a)) => {
            let ip = |b: &[u8]| {
                <[u8; 4]>::try_from(b)
                    .map_or_else(|_| format!("{b:02x?}"), |x| Ipv4Addr::from(x).to_string())
            };
            let op = a.operation();
            let (spa, tpa) = (ip(a.sender_protocol_addr()), ip(a.target_protocol_addr()));
            let sha = <[u8; 6]>::try_from(a.sender_hw_addr()).map(MacAddr);
            out.push_str(&match (op, sha) {
                (ArpOperation::REQUEST, _) => format!(", arp who-has {tpa} tell {spa}"),
                (ArpOperation::REPLY, Ok(m)) => format!(", arp reply {spa} is-at {m}"),
                _ => format!(", arp op {} {spa} -> {tpa}", op.0),
            });
        }
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            out.push_str(&format!(
                ", {} > {} ttl {}",
                h.source_addr(),
                h.destination_addr(),
                h.ttl()
            ));
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            out.push_str(&format!(
                ", {} > {} hlim {}",
                h.source_addr(),
                h.destination_addr(),
                h.hop_limit()
            ));
        }
        None => {}
    }
    match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            let flags: String = [
                (t.syn(), 'S'),
                (t.ack(), 'A'),
                (t.fin(), 'F'),
                (t.rst(), 'R'),
                (t.psh(), 'P'),
            ]
            .iter()
            .filter(|x| x.0)
            .map(|x| x.1)
            .collect();
            out.push_str(&format!(
                ", tcp {} > {} [{flags}]",
                t.source_port(),
                t.destination_port()
            ));
        }
        Some(TransportSlice::Udp(u)) => {
            out.push_str(&format!(
                ", udp {} > {}",
                u.source_port(),
                u.destination_port()
            ));
            let p = u.payload();
            if Some(u.destination_port()) == vxlan_port && p.len() >= 8 && p[0] & 0x08 != 0 {
                let vni = u32::from_be_bytes([0, p[4], p[5], p[6]]);
                out.push_str(&format!(", vxlan vni {vni} [{}]", line(&p[8..], None)));
            }
        }
        Some(TransportSlice::Icmpv4(i)) => {
            out.push_str(&format!(", icmp type {} code {}", i.type_u8(), i.code_u8()))
        }
        Some(TransportSlice::Icmpv6(i)) => out.push_str(&format!(
            ", icmpv6 type {} code {}",
            i.type_u8(),
            i.code_u8()
        )),
        None => {}
    }
    out.push_str(&format!(", {} bytes", f.len()));
    out
}

fn mac_at(h: &[u8], at: usize) -> String {
    h.get(at..at + 6)
        .and_then(|m| <[u8; 6]>::try_from(m).ok())
        .map_or_else(String::new, |m| MacAddr(m).to_string())
}
