//! Stage `tunnel`: VXLAN (RFC 7348) between hosts — the seed's br-tun — plus the underlay ARP
//! of the overlay port and l2population's ARP responder.
//!
//! Reads: `Tables::overlay` (VTEP address, outer header settings), `Tables::vteps` and
//! `vtep_by_ip` (known remote hosts), `Tables::vni`, `Tables::arp` (ARP responder).
//! Writes: the shared underlay [`NeighborTable`](crate::tables::neighbor::NeighborTable) (ARP
//! seen on the overlay port), the core's ARP retry slots and per-VTEP/VNI counters; rewrites
//! frames in place (decapsulation strips the outer headers, encapsulation prepends them, ARP
//! replies and requests are built in the buffer of the frame that caused them).
//! Next: [`decap`] gives a decapsulated frame its network (`Continue`), answers ARP for our
//! VTEP address (`Reply`) and takes in ARP replies (`Consumed`); [`arp_respond`] answers
//! instances' ARP requests for known ports (`Reply`); [`encap`] runs in `output`.
//! Drops: `tunnel.not_for_us`, `.wrong_port`, `.bad_flags`, `.unknown_vni`, `.unknown_vtep`,
//! `.truncated`, `.inner_vlan`, `.not_vxlan`, `.arp_not_for_us` on ingress; `.unresolved`,
//! `.too_big` on egress; `classify.bad_src_mac` for an inner frame with a bad source.
//!
//! Decapsulation accepts only frames to our VTEP address and VXLAN port, with the I flag, a
//! known VNI, and from the VTEP of a host the desired state knows: the first line of defence
//! against traffic injected into the overlay. The UDP checksum of received frames is not
//! checked (RFC 7348 5: zero must be accepted; Linux sends zero by default).
use super::{Batch, CoreState, Next, Tracer};
use crate::counters::{BatchCounters, DropReason as D, Event};
use crate::packet::arp::{ArpPacket, ArpRepr, ARP_LEN, OP_REPLY, OP_REQUEST};
use crate::packet::eth::{mac48_at, mac48_is_multicast, EtherType, EthernetRepr};
use crate::packet::ipv4::{Ipv4Packet, PROTO_UDP};
use crate::packet::udp::UdpPacket;
use crate::packet::vxlan::{VxlanPacket, FLAG_I, VXLAN_ENCAP_LEN};
use crate::packet::{checksum, EthernetFrame, MacAddr, PacketBuf};
use crate::tables::{OverlayEntry, Segment, Tables};
use crate::trace;
use std::net::Ipv4Addr;

/// Least time between two ARP requests from one core for one underlay address.
pub const ARP_RETRY_MS: u64 = 100;
/// Outer UDP source ports come from this range (RFC 7348 5: 49152-65535), chosen by a hash of
/// the inner flow so one flow keeps one path through ECMP and RSS.
const SPORT_BASE: u16 = 49152;

/// Decapsulates VXLAN on the overlay port and handles the underlay's ARP.
pub fn decap<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let Some(o) = t.overlay.as_ref() else { return };
    if b.in_port != o.port {
        return;
    }
    let mut k = DecapCache::new();
    for i in 0..b.len {
        if b.meta[i].next != Next::Continue {
            continue;
        }
        let Some(p) = b.pkts[i].as_mut() else {
            continue;
        };
        match decap_one(p, t, o, s, c, &mut k) {
            Ok(true) => {
                let (net, vtep) = (k.net, k.vtep);
                b.meta[i].network = net;
                b.meta[i].from_vtep = vtep;
                trace!(
                    tr,
                    i,
                    "tunnel",
                    "decap from VTEP {} ({}) vni -> network {}",
                    t.vteps[vtep as usize].ip,
                    t.vteps[vtep as usize].host,
                    t.networks[net as usize].name
                );
            }
            Ok(false) => {
                // ARP handled in place: a reply to send back, or a reply we consumed.
                let arp_reply = p.data().len() >= 14 && p.data()[6..12] == o.mac.0;
                b.meta[i].next = if arp_reply {
                    Next::Reply
                } else {
                    Next::Consumed
                };
                trace!(
                    tr,
                    i,
                    "tunnel",
                    "underlay ARP {}",
                    if arp_reply {
                        "request for our VTEP: replied"
                    } else {
                        "reply: neighbour noted"
                    }
                );
            }
            Err(r) => {
                trace!(tr, i, "tunnel", "drop {}", r.name());
                b.drop_pkt(i, r, c);
            }
        }
    }
    k.flush(&s.tunnel);
}

/// One frame from the underlay. `Ok(true)`: decapsulated, from `k.vtep` into network `k.net`
/// (read there: a returned pair was stored and read back whole, a store-forwarding stall on
/// every frame); `Ok(false)`: an ARP handled in place.
#[inline(always)]
fn decap_one<B: PacketBuf>(
    p: &mut B,
    t: &Tables,
    o: &OverlayEntry,
    s: &mut CoreState,
    c: &mut BatchCounters,
    k: &mut DecapCache,
) -> Result<bool, D> {
    let d = p.data();
    let eth = EthernetFrame::new_checked(d).map_err(|_| D::TunnelTruncated)?;
    match eth.ethertype() {
        EtherType::IPV4 => {}
        EtherType::ARP => return underlay_arp(p, t, o, s, c).map(|()| false),
        _ => return Err(D::TunnelNotVxlan),
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| D::TunnelTruncated)?;
    if ip.dst() != o.local_ip {
        return Err(D::TunnelNotForUs);
    }
    if ip.protocol() != PROTO_UDP || ip.is_later_fragment() || more_fragments(eth.payload()) {
        return Err(D::TunnelNotVxlan);
    }
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|_| D::TunnelTruncated)?;
    if udp.dst_port() != o.udp_port {
        return Err(D::TunnelWrongPort);
    }
    let udp_end = udp.len();
    let vx = VxlanPacket::new_checked(&ip.payload()[8..udp_end]).map_err(|_| D::TunnelTruncated)?;
    if vx.flags() & FLAG_I == 0 {
        return Err(D::TunnelBadFlags);
    }
    let src_ip = u32::from(ip.src());
    // The cached key carries a "valid" bit above the address, so no address (not even
    // 0.0.0.0) can match before a real lookup has been made.
    let src_key = src_ip as u64 | 1 << 32;
    if src_key != k.src_key {
        let Some(&vtep) = t.vtep_by_ip.get(&src_ip) else {
            return Err(D::TunnelUnknownVtep);
        };
        k.src_key = src_key;
        k.vtep = vtep;
    }
    let vni = vx.vni();
    if vni != k.vni {
        let Some(&net) = t.vni.get(&vni) else {
            return Err(D::TunnelUnknownVni);
        };
        k.vni = vni;
        k.net = net;
    }
    let (vtep, net) = (k.vtep, k.net);
    let inner = vx.payload();
    if inner.len() < 14 {
        return Err(D::TunnelTruncated);
    }
    let inner_type = u16::from_be_bytes([inner[12], inner[13]]);
    if crate::packet::vlan::is_tpid(inner_type) {
        return Err(D::TunnelInnerVlan);
    }
    let src = mac48_at(inner, 6);
    if mac48_is_multicast(src) || src == 0 {
        return Err(D::BadSrcMac);
    }
    let outer = 14 + ip.header_len() + 8 + 8;
    let inner_len = inner.len();
    let tail = p.pkt_len() - outer - inner_len;
    if !p.adj(outer) || (tail > 0 && !p.trim(tail)) {
        return Err(D::TunnelTruncated);
    }
    k.count(vtep, net, &s.tunnel);
    c.event(Event::TunnelDecap);
    Ok(true)
}

/// Lookups of one batch's decapsulation: the last source VTEP and VNI (a batch from the
/// underlay usually comes from few VTEPs), and frames received per (VTEP, network), added to
/// the per-VTEP/VNI counters once.
struct DecapCache {
    /// Last source address looked up, with bit 32 set (0: none yet).
    src_key: u64,
    vtep: u16,
    vni: u32,
    net: u16,
    counted: (u16, u16),
    n: u64,
}

impl DecapCache {
    fn new() -> Self {
        // u32::MAX is no VNI (they are 24 bits), so the first lookup always happens.
        Self {
            src_key: 0,
            vtep: 0,
            vni: u32::MAX,
            net: 0,
            counted: (0, 0),
            n: 0,
        }
    }

    #[inline(always)]
    fn count(&mut self, vtep: u16, net: u16, tc: &crate::counters::TunnelCounters) {
        if (vtep, net) != self.counted {
            self.flush(tc);
            self.counted = (vtep, net);
        }
        self.n += 1;
    }

    fn flush(&mut self, tc: &crate::counters::TunnelCounters) {
        if self.n != 0 {
            tc.rx_n(self.counted.0, self.counted.1, self.n);
            self.n = 0;
        }
    }
}

#[inline(always)]
fn more_fragments(ip: &[u8]) -> bool {
    ip[6] & 0x20 != 0
}

/// ARP on the overlay port: note the sender if it is a VTEP or the gateway; answer requests for
/// our VTEP address in place. `Err` for what is not ours.
fn underlay_arp<B: PacketBuf>(
    p: &mut B,
    t: &Tables,
    o: &OverlayEntry,
    s: &mut CoreState,
    c: &mut BatchCounters,
) -> Result<(), D> {
    let d = p.data();
    let arp = ArpPacket::new_checked(&d[14..]).map_err(|_| D::TunnelTruncated)?;
    let (spa, sha, tpa, op) = (
        arp.sender_ip(),
        arp.sender_mac(),
        arp.target_ip(),
        arp.operation(),
    );
    let known = t.vtep_by_ip.contains_key(&u32::from(spa)) || o.gateway == Some(spa);
    if known && s.neigh.learn(spa, crate::tables::mac_u64(&sha.0)) {
        c.event(Event::NeighborLearned);
    }
    if op == OP_REQUEST && tpa == o.local_ip {
        let reply = ArpRepr {
            operation: OP_REPLY,
            sender_mac: o.mac,
            sender_ip: o.local_ip,
            target_mac: sha,
            target_ip: spa,
        };
        let d = p.data_mut();
        EthernetRepr {
            dst: sha,
            src: o.mac,
            ethertype: EtherType::ARP,
        }
        .emit(d);
        reply.emit(&mut d[14..]);
        c.event(Event::ArpReplySent);
        return Ok(());
    }
    if op == OP_REPLY && known {
        return Ok(());
    }
    Err(D::TunnelArpNotForUs)
}

/// Whether l2population's ARP responder works on frames received on `in_port` (any port but
/// the overlay, when some port is known on a VXLAN network).
#[inline]
pub fn arp_responder_active(t: &Tables, in_port: u16) -> bool {
    !t.arp.is_empty() && t.overlay.as_ref().is_none_or(|o| o.port != in_port)
}

/// Answers an ARP request from a local port for the address of any port the desired state
/// knows on a VXLAN network (Neutron l2population's ARP responder), so it never crosses the
/// overlay: the reply is built in place (`Some(Reply)`). Called by
/// [`super::responders`] for ARP frames.
#[inline]
pub fn arp_respond<B: PacketBuf, T: Tracer>(
    p: &mut B,
    t: &Tables,
    net: u16,
    i: usize,
    c: &mut BatchCounters,
    tr: &mut T,
) -> Option<Next> {
    if !matches!(
        t.networks.get(net as usize).map(|n| n.segment),
        Some(Segment::Vxlan(_))
    ) {
        return None;
    }
    let d = p.data();
    if d.len() < 14 + ARP_LEN {
        return None;
    }
    let arp = ArpPacket::new_checked(&d[14..]).ok()?;
    if arp.operation() != OP_REQUEST {
        return None;
    }
    let (sha, spa, tpa) = (arp.sender_mac(), arp.sender_ip(), arp.target_ip());
    let mac = t.arp_lookup(net, u32::from(tpa))?;
    if mac == sha {
        return None; // a duplicate address probe for its own address: let it through
    }
    let reply = ArpRepr {
        operation: OP_REPLY,
        sender_mac: mac,
        sender_ip: tpa,
        target_mac: sha,
        target_ip: spa,
    };
    let src = EthernetFrame::new_unchecked(&d[..14]).src();
    let d = p.data_mut();
    EthernetRepr {
        dst: src,
        src: mac,
        ethertype: EtherType::ARP,
    }
    .emit(d);
    reply.emit(&mut d[14..]);
    c.event(Event::ArpResponder);
    trace!(
        tr,
        i,
        "tunnel",
        "arp responder: {tpa} is-at {mac} (network {})",
        t.networks[net as usize].name
    );
    Some(Next::Reply)
}

/// What [`encap`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Encapsulated: send it by the overlay port.
    Sent,
    /// The VTEP is unresolved: the frame is lost (the caller counts `tunnel.unresolved`) and
    /// its buffer now holds an ARP request for the next hop, to send by the overlay port.
    ArpRequest,
    /// Dropped for this reason; free the buffer.
    Drop(D),
}

/// How frames of one network reach one VTEP, worked out once per batch: the outer headers with
/// everything but lengths, checksum and source port already in place.
#[derive(Debug, Clone, Copy)]
pub enum EncapPlan {
    Ready {
        header: [u8; VXLAN_ENCAP_LEN],
        /// Sum of the constant outer IPv4 words (see `VtepEntry::ip_sum`).
        ip_sum: u32,
        /// Largest inner frame the underlay MTU allows.
        max_inner: usize,
        udp_checksum: bool,
    },
    /// The next hop's MAC is unknown: ARP for it.
    Unresolved(Ipv4Addr),
    Drop(D),
}

/// The per-batch encapsulation cache of one core: the plan for the last (VTEP, network) and
/// how many frames it sent, added to the per-VTEP/VNI counters once.
#[derive(Debug, Clone, Copy)]
pub struct EncapCache {
    key: u32,
    plan: EncapPlan,
    sent: u64,
}

impl Default for EncapCache {
    fn default() -> Self {
        Self {
            key: u32::MAX,
            plan: EncapPlan::Drop(D::EgressDown),
            sent: 0,
        }
    }
}

impl EncapCache {
    /// Ends a batch: counts what was sent and forgets the plan (a neighbour may change).
    #[inline]
    pub fn flush(&mut self, tunnel: &crate::counters::TunnelCounters) {
        if self.sent != 0 {
            tunnel.tx_n((self.key >> 16) as u16, self.key as u16, self.sent);
        }
        *self = Self::default();
    }
}

fn plan(t: &Tables, vtep: u16, net: u16, s: &CoreState) -> EncapPlan {
    let (Some(o), Some(v), Some(n)) = (
        t.overlay.as_ref(),
        t.vteps.get(vtep as usize),
        t.networks.get(net as usize),
    ) else {
        return EncapPlan::Drop(D::EgressDown);
    };
    let Segment::Vxlan(vni) = n.segment else {
        return EncapPlan::Drop(D::TunnelNotVxlan);
    };
    let Some(nh) = o.next_hop(v.ip) else {
        return EncapPlan::Drop(D::TunnelUnresolved);
    };
    let Some(mac) = s.neigh.lookup(nh) else {
        return EncapPlan::Unresolved(nh);
    };
    let mut header = v.header;
    header[0..6].copy_from_slice(&mac.to_be_bytes()[2..8]);
    header[46..49].copy_from_slice(&vni.to_be_bytes()[1..4]);
    EncapPlan::Ready {
        header,
        ip_sum: v.ip_sum,
        max_inner: (o.mtu as usize).saturating_sub(VXLAN_ENCAP_LEN - 14),
        udp_checksum: o.udp_checksum,
    }
}

/// Encapsulates a frame of network `net` for remote VTEP `vtep`.
#[inline(always)]
pub fn encap<B: PacketBuf>(
    p: &mut B,
    t: &Tables,
    vtep: u16,
    net: u16,
    s: &mut CoreState,
    c: &mut BatchCounters,
) -> Encap {
    let key = (vtep as u32) << 16 | net as u32;
    if s.encap.key != key {
        s.encap.flush(&s.tunnel);
        s.encap = EncapCache {
            key,
            plan: plan(t, vtep, net, s),
            sent: 0,
        };
    }
    let (header, ip_sum, max_inner, udp_checksum) = match s.encap.plan {
        EncapPlan::Ready {
            header,
            ip_sum,
            max_inner,
            udp_checksum,
        } => (header, ip_sum, max_inner, udp_checksum),
        EncapPlan::Drop(r) => return Encap::Drop(r),
        EncapPlan::Unresolved(nh) => {
            let Some(o) = t.overlay.as_ref() else {
                return Encap::Drop(D::EgressDown);
            };
            return if arp_due(s, nh) && build_arp_request(p, o, nh) {
                c.event(Event::ArpRequestSent);
                Encap::ArpRequest
            } else {
                Encap::Drop(D::TunnelUnresolved)
            };
        }
    };
    let inner_len = p.pkt_len();
    if inner_len > max_inner {
        return Encap::Drop(D::TunnelTooBig);
    }
    let sport = SPORT_BASE | (flow_hash(p.data()) & 0x3fff) as u16;
    if !p.prepend(VXLAN_ENCAP_LEN) {
        return Encap::Drop(D::NoHeadroom);
    }
    // Copy the planned headers, then patch what differs per packet.
    let d = p.data_mut();
    let h = &mut d[..VXLAN_ENCAP_LEN];
    h.copy_from_slice(&header);
    let udp_len = (8 + 8 + inner_len) as u16;
    let ip_len = 20 + udp_len;
    h[16..18].copy_from_slice(&ip_len.to_be_bytes());
    let mut sum = ip_sum + ip_len as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    h[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h[34..36].copy_from_slice(&sport.to_be_bytes());
    h[38..40].copy_from_slice(&udp_len.to_be_bytes());
    if udp_checksum {
        let (src, dst) = ([h[26], h[27], h[28], h[29]], [h[30], h[31], h[32], h[33]]);
        let ph = checksum::pseudo_v4(src, dst, PROTO_UDP, udp_len);
        let mut cs = !(checksum::sum(&d[34..34 + udp_len as usize], ph) as u16);
        if cs == 0 {
            cs = 0xffff; // RFC 768: a computed zero is sent as all ones
        }
        d[40..42].copy_from_slice(&cs.to_be_bytes());
    }
    s.encap.sent += 1;
    c.event(Event::TunnelEncap);
    Encap::Sent
}

/// Whether this core may send an ARP request for `ip` now (at most one per [`ARP_RETRY_MS`]).
fn arp_due(s: &mut CoreState, ip: Ipv4Addr) -> bool {
    super::request_due(&mut s.arp_sent, u32::from(ip) as u64, s.now_ms)
}

/// Turns the buffer into a broadcast ARP request for `ip` from our VTEP (60 bytes, padded).
fn build_arp_request<B: PacketBuf>(p: &mut B, o: &OverlayEntry, ip: Ipv4Addr) -> bool {
    const FRAME: usize = 60;
    let len = p.pkt_len();
    let ok = if len >= FRAME {
        p.trim(len - FRAME)
    } else {
        p.prepend(FRAME - len)
    };
    if !ok || p.data().len() != FRAME {
        return false;
    }
    let d = p.data_mut();
    EthernetRepr {
        dst: MacAddr::BROADCAST,
        src: o.mac,
        ethertype: EtherType::ARP,
    }
    .emit(d);
    ArpRepr {
        operation: OP_REQUEST,
        sender_mac: o.mac,
        sender_ip: o.local_ip,
        target_mac: MacAddr::ZERO,
        target_ip: ip,
    }
    .emit(&mut d[14..]);
    d[14 + ARP_LEN..].fill(0);
    true
}

/// A hash of the inner flow: MACs, and for IPv4 the addresses and (TCP/UDP) ports.
#[inline(always)]
fn flow_hash(f: &[u8]) -> u64 {
    // Native-order 8-byte loads and a xor-fold: only the low 14 bits are used, and they must
    // stay the same for every packet of a flow, not be cryptographic.
    let le64 = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let mut h = if f.len() >= 38 {
        // MACs, EtherType, IPv4 version/TOS, then (IPv4) both addresses.
        let mut h = le64(&f[0..8]) ^ le64(&f[8..16]).rotate_left(13);
        if f[12..14] == [0x08, 0x00] {
            h ^= le64(&f[26..34]).rotate_left(29);
            if f[14] == 0x45 && (f[23] == 6 || f[23] == 17) {
                h ^= u32::from_le_bytes([f[34], f[35], f[36], f[37]]) as u64;
            }
        }
        h
    } else {
        mac48_at(f, 0) ^ mac48_at(f, 6).rotate_left(29)
    };
    h ^= h >> 32;
    h ^= h >> 16;
    h ^ (h >> 8)
}
