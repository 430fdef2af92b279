//! Stage `router`: the distributed virtual router (the seed's qrouter namespace on every host).
//!
//! Reads: `Tables::l3` (router interfaces, FIBs, pre-populated neighbours, DVR MACs),
//! `Tables::fdb` and the core's learned MACs (the L2 destination in the egress network),
//! `Tables::networks` (MTU, segment), the shared routed-neighbour table.
//! Writes: frames in place (TTL / hop limit, MACs; ARP and NA replies, echo replies and ICMP
//! errors built in the buffer of the packet that caused them), the shared neighbour table
//! (answers to the router's ARP/NS), the core's ICMP token bucket and per-router counters.
//! Next: [`gateway_respond`] answers ARP and Neighbor Solicitations for gateway addresses
//! (`Reply`) and takes in answers to the router's own (`Consumed`); [`route`] turns a frame
//! addressed to a gateway MAC (`Route`) into `Output`/`Tunnel`/`Flood` in the egress network,
//! an ICMP error or echo reply back out of the ingress port, or an ARP request/NS
//! (`FloodLocal`); [`dvr_ingress`] rewrites another host's DVR MAC to the gateway MAC.
//! Drops: `router.gateway_from_fabric`, `.not_ip`, `.malformed`, `.down`, `.not_routable`,
//! `.ttl_exceeded`, `.no_route`, `.too_big`, `.unresolved`,
//! `.to_router`, `.no_floating_ip`.
//!
//! DVR. Every host routes what its own instances send (the seed: "routing between
//! self-service networks occurs on the compute node containing the instance sending the
//! packet"). A routed frame that leaves the host (VXLAN, a provider port, or a flood that may)
//! carries this host's DVR MAC as source, so one gateway MAC never appears from several hosts
//! on the fabric; the receiving host sees a known DVR MAC and delivers the frame to its
//! instance with the gateway MAC of the instance's subnet as source, as Neutron's br-tun/br-int
//! DVR flows do. A frame from the fabric to a gateway MAC is never routed again.
//!
//! Floating IPs (the seed's north-south scenario 2). For each external network that carries a
//! floating IP of an instance on this host, the host's floating IP gateway port (Neutron's
//! fg- port in the fip namespace) is an interface of its own small router: the external
//! subnets and a default route via their gateway. It answers ARP for those floating IPs with
//! its MAC (and only for this host's: other hosts answer for theirs); a packet to one is
//! translated to the fixed IP (DNAT, [`super::nat`]) and routed by the instance's router; a
//! packet from a fixed IP with a floating IP to where its router has no route is translated
//! to the floating IP (SNAT) and leaves through the gateway, from its MAC, to the external
//! gateway resolved by ARP, or, to another floating IP of this host, straight back in
//! (hairpin); to the gateway's own address, answered at once (echo), as the fip namespace
//! does. Instances without one still go to the SNAT port on the network node. The
//! translation is one to one and stateless, as the floating IP itself: replies match it the
//! other way, and the security groups see the fixed addresses (egress before, ingress after).
//! A packet is translated only once its next hop is known, so one held for resolution is
//! routed again from the start. A TTL is decremented once (Neutron's two namespaces do it
//! twice).
//!
//! ICMP errors (RFC 1812 4.3.2, RFC 4443 2.4) come from the ingress interface's address, quote
//! as much of the original as fits in 576 bytes (IPv4) or 1280 (IPv6), are never sent about an
//! ICMP error, a non-first fragment or a multicast/unspecified source, and are rate-limited per
//! core with a token bucket (1 per ms, bursts of [`ICMP_BURST`], Linux's defaults). An IPv4
//! packet larger than the egress MTU gets fragmentation needed when it has DF; without DF it is
//! forwarded and marked for `output` to send in fragments (`Meta::frag_mtu`).
use super::conntrack::flow::Kind;
use super::conntrack::Key;
use super::firewall::FRAG_HERE;
use super::integration::dest_next;
use super::{Batch, CoreState, Next, Tracer};
use crate::counters::{BatchCounters, DropReason as D, Event as E, RouterStat};
use crate::packet::arp::{ArpPacket, ArpRepr, ARP_LEN, OP_REPLY, OP_REQUEST};
use crate::packet::eth::{mac48_at, EtherType, EthernetRepr};
use crate::packet::icmpv6::{NEIGHBOR_ADVERT, NEIGHBOR_SOLICIT};
use crate::packet::ipv4::{Ipv4Packet, Ipv4Repr};
use crate::packet::ipv6::{Ipv6Packet, Ipv6Repr};
use crate::packet::{checksum, MacAddr, PacketBuf};
use crate::tables::l3neigh::v4_key;
use crate::tables::router::{net_key4, RifEntry, RouterEntry};
use crate::tables::{fdb_key48, mac_u64, NetIdx, PortKind, Segment, Tables};
use crate::trace;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Largest burst of ICMP errors one core sends (tokens in the bucket).
pub const ICMP_BURST: u32 = 50;
/// IPv4 ICMP errors are at most this long (RFC 1812 4.3.2.3).
const ICMP4_MAX: usize = 576;
/// IPv6 ICMP errors are at most this long (RFC 4443 2.4 (c): the minimum MTU).
const ICMP6_MAX: usize = 1280;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// VXLAN adds this much to the inner IP packet (outer Ethernet excluded: it is not in the
/// underlay IP MTU): outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
const VXLAN_IP_OVERHEAD: u16 = 50;

/// Rewrites another host's DVR MAC to the local gateway MAC on frames from the fabric.
#[inline(never)]
pub fn dvr_ingress<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    fc: &mut super::flowcache::FlowCache,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    if t.l3.dvr_macs.is_empty() {
        return;
    }
    match t.ports.get(b.in_port as usize) {
        Some(p) if p.kind != PortKind::Instance => {}
        _ => return,
    }
    for i in 0..b.len {
        if b.meta[i].next != Next::Continue {
            continue;
        }
        let Some(p) = b.pkts[i].as_mut() else {
            continue;
        };
        let d = p.data();
        if d.len() < 14 {
            continue;
        }
        let src = mac48_at(d, 6);
        if t.l3.dvr_prefix.is_some_and(|pre| (src >> 24) as u32 != pre)
            || !t.l3.dvr_macs.contains(&src)
        {
            continue;
        }
        let key = fdb_key48(b.meta[i].network, mac48_at(d, 0));
        match t.l3.dvr_rewrite.get(&key) {
            Some(gw) => {
                p.data_mut()[6..12].copy_from_slice(&gw.0);
                c.event(E::DvrMacIn);
                fc.note_dvr_in(i);
                trace!(
                    tr,
                    i,
                    "router",
                    "from a DVR MAC: source rewritten to gateway {gw}"
                );
            }
            None => {
                trace!(
                    tr,
                    i,
                    "router",
                    "from a DVR MAC, not to a local instance: unchanged"
                );
            }
        }
    }
}

/// Whether the gateways answer frames received on `in_port`: `Some(from_instance)`, or
/// `None` when no router here may (only instances ask this host's instance of a distributed
/// router: the fabric's copies of the same question are answered by the router instance on the
/// asker's own host; a centralized router lives on one host only and answers the fabric too).
#[inline]
pub fn gateway_scope(t: &Tables, in_port: u16) -> Option<bool> {
    if t.l3.rifs.is_empty() {
        return None;
    }
    let from_instance = t.ports.get(in_port as usize)?.kind == PortKind::Instance;
    (from_instance || t.l3.routers.iter().any(|r| !r.distributed)).then_some(from_instance)
}

/// Answers an ARP request or Neighbor Solicitation for a gateway address in place
/// (`Some(Reply)`), or takes in an answer to the router's own request (`Some(Consumed)`).
/// Called by [`super::responders`] for ARP and IPv6 frames (`ethertype`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gateway_respond<B: PacketBuf, T: Tracer>(
    p: &mut B,
    t: &Tables,
    s: &mut CoreState,
    net: NetIdx,
    from_instance: bool,
    ethertype: u16,
    i: usize,
    c: &mut BatchCounters,
    tr: &mut T,
) -> Option<Next> {
    let n = if ethertype == EtherType::ARP {
        gateway_arp(p, t, s, net, from_instance, c)
    } else {
        gateway_nd(p, t, s, net, from_instance, c)
    }?;
    trace!(
        tr,
        i,
        "router",
        "{}",
        if n == Next::Reply {
            "request for a gateway address: answered"
        } else {
            "answer to the router's own request: neighbour noted"
        }
    );
    Some(n)
}

fn gateway_arp<B: PacketBuf>(
    p: &mut B,
    t: &Tables,
    s: &mut CoreState,
    net: NetIdx,
    from_instance: bool,
    c: &mut BatchCounters,
) -> Option<Next> {
    let d = p.data();
    if d.len() < 14 + ARP_LEN {
        return None;
    }
    let arp = ArpPacket::new_checked(&d[14..]).ok()?;
    let (op, sha, spa, tpa) = (
        arp.operation(),
        arp.sender_mac(),
        arp.sender_ip(),
        arp.target_ip(),
    );
    let spa_key = v4_key(u32::from(spa));
    let Some(&rif) = t.l3.gw4.get(&((net as u64) << 32 | u32::from(tpa) as u64)) else {
        // A gratuitous ARP refreshes a next hop the router already resolved (a moved
        // address, a VRRP failover); it is not answered and goes on as usual.
        if spa == tpa
            && from_instance
            && s.l3neigh.lookup(net, spa_key).is_some()
            && s.l3neigh.learn(net, spa_key, mac_u64(&sha.0))
        {
            c.event(E::RouterNeighborLearned);
        }
        return None;
    };
    let rif = &t.l3.rifs[rif as usize];
    if !from_instance && t.l3.routers[rif.router as usize].distributed {
        return None;
    }
    let mac = rif.mac;
    // The asker's address is worth keeping when it is on the interface's subnet and the
    // desired state does not know it already (nothing else may fill the shared table).
    let on_link = rif
        .v4
        .iter()
        .any(|n| n.contains(&spa) && spa != n.network() && spa != n.broadcast());
    if on_link
        && t.l3.neighbor(net, spa_key).is_none()
        && s.l3neigh.learn(net, spa_key, mac_u64(&sha.0))
    {
        c.event(E::RouterNeighborLearned);
    }
    match op {
        OP_REQUEST => {
            let src = MacAddr(d[6..12].try_into().ok()?);
            let d = p.data_mut();
            EthernetRepr {
                dst: src,
                src: mac,
                ethertype: EtherType::ARP,
            }
            .emit(d);
            ArpRepr {
                operation: OP_REPLY,
                sender_mac: mac,
                sender_ip: tpa,
                target_mac: sha,
                target_ip: spa,
            }
            .emit(&mut d[14..]);
            c.event(E::GatewayArpReply);
            Some(Next::Reply)
        }
        OP_REPLY => Some(Next::Consumed),
        _ => None,
    }
}

/// Neighbor Solicitation for a gateway address -> Neighbor Advertisement; an advertisement to
/// a gateway MAC -> a learned next hop.
fn gateway_nd<B: PacketBuf>(
    p: &mut B,
    t: &Tables,
    s: &mut CoreState,
    net: NetIdx,
    from_instance: bool,
    c: &mut BatchCounters,
) -> Option<Next> {
    let d = p.data();
    let ip = Ipv6Packet::new_checked(&d[14..]).ok()?;
    let (nh, icmp) = ip.upper_layer()?;
    // RFC 4861 7.1: hop limit 255, at least 24 bytes, code 0.
    if nh != PROTO_ICMPV6 || icmp.len() < 24 || ip.hop_limit() != 255 || icmp[1] != 0 {
        return None;
    }
    let ty = icmp[0];
    if ty != NEIGHBOR_SOLICIT && ty != NEIGHBOR_ADVERT {
        return None;
    }
    // RFC 4861 7.1.1: a message with a bad checksum is silently discarded (here: left to the
    // L2 path, which treats it as any other frame).
    let ph = checksum::pseudo_v6(
        ip.src().octets(),
        ip.dst().octets(),
        PROTO_ICMPV6,
        icmp.len() as u32,
    );
    if checksum::sum(icmp, ph) != 0xffff {
        return None;
    }
    let target = u128::from_be_bytes(icmp[8..24].try_into().ok()?);
    let src_ip = ip.src();
    // The link-layer address option (source for NS, target for NA), else the frame's source.
    let lla = nd_option(&icmp[24..], if ty == NEIGHBOR_SOLICIT { 1 } else { 2 })
        .unwrap_or_else(|| mac48_at(d, 6));
    if ty == NEIGHBOR_ADVERT {
        // Only answers addressed to one of our gateway MACs are ours to take.
        let to_us = t
            .fdb
            .get(&fdb_key48(net, mac48_at(d, 0)))
            .filter(|&&v| {
                let r = v & !crate::tables::router::ROUTER_BIT;
                from_instance
                    || t.l3
                        .rifs
                        .get(r as usize)
                        .is_some_and(|x| !t.l3.routers[x.router as usize].distributed)
            })
            .is_some_and(|&v| {
                matches!(
                    crate::tables::Dest::from_raw(v),
                    crate::tables::Dest::Router(_)
                )
            });
        if !to_us {
            return None;
        }
        let on_link =
            t.l3.rifs
                .iter()
                .any(|x| x.net == net && x.v6.iter().any(|n| n.contains(&Ipv6Addr::from(target))));
        if on_link && t.l3.neighbor(net, target).is_none() && s.l3neigh.learn(net, target, lla) {
            c.event(E::RouterNeighborLearned);
        }
        return Some(Next::Consumed);
    }
    let &rif = t.l3.gw6.get(&(net, target))?;
    if !from_instance && t.l3.routers[t.l3.rifs[rif as usize].router as usize].distributed {
        return None;
    }
    if src_ip.is_unspecified() {
        return None; // duplicate address detection: not ours to answer
    }
    let src_key = u128::from(src_ip);
    let on_link = t.l3.rifs[rif as usize]
        .v6
        .iter()
        .any(|n| n.contains(&src_ip));
    if on_link && t.l3.neighbor(net, src_key).is_none() && s.l3neigh.learn(net, src_key, lla) {
        c.event(E::RouterNeighborLearned);
    }
    let mac = t.l3.rifs[rif as usize].mac;
    let dst_mac = MacAddr(d[6..12].try_into().ok()?);
    // Ethernet 14 + IPv6 40 + NA 24 + target link-layer address option 8.
    const LEN: usize = 14 + 40 + 24 + 8;
    if !set_len(p, LEN) {
        return None;
    }
    let d = p.data_mut();
    EthernetRepr {
        dst: dst_mac,
        src: mac,
        ethertype: EtherType::IPV6,
    }
    .emit(d);
    let gw = Ipv6Addr::from(target);
    Ipv6Repr {
        src: gw,
        dst: src_ip,
        next_header: PROTO_ICMPV6,
        payload_len: 32,
        hop_limit: 255,
    }
    .emit(&mut d[14..]);
    let m = &mut d[54..LEN];
    m[0] = NEIGHBOR_ADVERT;
    m[1] = 0;
    m[2..4].fill(0);
    // Router, Solicited, Override.
    m[4..8].copy_from_slice(&0xe000_0000u32.to_be_bytes());
    m[8..24].copy_from_slice(&target.to_be_bytes());
    m[24] = 2;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac.0);
    let ph = checksum::pseudo_v6(gw.octets(), src_ip.octets(), PROTO_ICMPV6, 32);
    let cs = !(checksum::sum(m, ph) as u16);
    m[2..4].copy_from_slice(&cs.to_be_bytes());
    c.event(E::GatewayNaSent);
    Some(Next::Reply)
}

/// The MAC in the first ND option of type `want` (RFC 4861 4.6.1), as a 48-bit integer.
fn nd_option(mut opts: &[u8], want: u8) -> Option<u64> {
    while opts.len() >= 8 {
        let len = opts[1] as usize * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == want {
            return Some(mac48_at(opts, 2));
        }
        opts = &opts[len..];
    }
    None
}

/// Makes the packet exactly `len` bytes (its contents are about to be rewritten).
fn set_len<B: PacketBuf>(p: &mut B, len: usize) -> bool {
    let have = p.pkt_len();
    let ok = match have.cmp(&len) {
        std::cmp::Ordering::Less => p.prepend(len - have),
        std::cmp::Ordering::Greater => p.trim(have - len),
        std::cmp::Ordering::Equal => true,
    };
    ok && p.data().len() == len
}

/// Where a routed destination goes, worked out once per (ingress interface, destination) and
/// batch.
/// Laid out in 16-byte lanes and copied whole: it moves through the route cache and the
/// verdicts by value, and copies of a packed layout stalled on store forwarding.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Hop {
    /// Destination and source MAC, as they go into bytes 0..12.
    macs: [u8; 12],
    net: NetIdx,
    /// Largest IP packet the egress allows.
    mtu: u16,
    next: Next,
    dvr: bool,
    to_snat: bool,
    /// May go into the [`RouteCache`]: decided from compiled tables (static neighbour, and a
    /// static FDB entry or a provider network's only way out), so it holds for as long as this
    /// generation of tables does, and, when the next hop was resolved by the router,
    /// while the resolved neighbours have not changed (`neigh`).
    cacheable: bool,
    /// The resolved neighbours' change count the decision was taken at ([`STATIC`]: none
    /// involved).
    neigh: u64,
}

impl Hop {
    /// The flow cache's record of the events forwarding by this hop counts, with `nat`'s.
    #[inline(always)]
    fn events(&self, nat: u8) -> u8 {
        use super::flowcache::ev;
        ev::ROUTED
            | if self.dvr { ev::DVR } else { 0 }
            | if self.to_snat { ev::TO_SNAT } else { 0 }
            | nat
    }
}

/// [`Hop::neigh`] of a decision that involves no resolved neighbour.
const STATIC: u64 = u64::MAX;

/// Entries of a core's [`RouteCache`] (a power of two).
const ROUTE_CACHE: usize = 256;

#[derive(Debug, Clone, Copy)]
struct CacheEntry {
    /// Tables generation the entry was decided in (`u64::MAX`: empty).
    generation: u64,
    rif_in: u16,
    dst: u128,
    hop: Hop,
}

/// A core's direct-mapped cache of routing decisions: (ingress interface, destination) -> the
/// whole `Hop` (egress network, L2 destination, both MACs, MTU). Like OVS's exact-match
/// cache in front of its classifier: a hit skips the FIB, the neighbour and the FDB lookups.
/// Only decisions taken from the compiled tables are kept, tagged with their generation, so a
/// new generation (any change of routes, ports or neighbours in the desired state) makes every
/// entry a miss; next hops the router resolved itself and learned MACs are looked up every
/// time, since they may move.
#[derive(Debug, Clone)]
pub struct RouteCache {
    e: Box<[CacheEntry]>,
}

impl Default for RouteCache {
    fn default() -> Self {
        let empty = CacheEntry {
            generation: u64::MAX,
            rif_in: 0,
            dst: 0,
            hop: Hop {
                net: 0,
                next: Next::Consumed,
                macs: [0; 12],
                mtu: 0,
                dvr: false,
                to_snat: false,
                cacheable: false,
                neigh: STATIC,
            },
        };
        Self {
            e: vec![empty; ROUTE_CACHE].into_boxed_slice(),
        }
    }
}

/// The routing decision for `dst` (IPv4 mapped) from the ingress interface of `x`.
#[inline(always)]
fn cached_hop(x: &Ctx<'_>, s: &mut CoreState, dst: u128, v6: bool) -> Result<Hop, Miss> {
    let i = cache_slot(dst, x.rif_in);
    let e = &s.route_cache.e[i];
    if e.generation == x.t.generation
        && e.dst == dst
        && e.rif_in == x.rif_in
        && (e.hop.neigh == STATIC || e.hop.neigh == s.l3neigh.epoch())
    {
        return Ok(e.hop);
    }
    let r = next_hop(x, s, dst, v6);
    if let Ok(hop) = r {
        if hop.cacheable {
            s.route_cache.e[i] = CacheEntry {
                generation: x.t.generation,
                rif_in: x.rif_in,
                dst,
                hop,
            };
        }
    }
    r
}

/// Forwards an option-less IPv4 packet whose decision is in the route cache and needs nothing
/// else (TTL above 1, fits the egress MTU, unicast addresses, not for the router): TTL and
/// checksum (RFC 1624) and both MACs rewritten in place. `Err`: nothing was changed, take the
/// full path; `Err(true)`: the header passed the checks that do not depend on the decision
/// (whole, option-less, TTL above 1, checksum right, routable source), which the full path
/// need not repeat.
#[inline(always)]
fn fast_v4(d: &mut [u8], x: &Ctx<'_>, s: &CoreState) -> Result<Hop, bool> {
    if d.len() < 34 || d[12..15] != [0x08, 0x00, 0x45] {
        return Err(false);
    }
    let total = u16::from_be_bytes([d[16], d[17]]) as usize;
    let ttl = d[22];
    if total < 20 || 14 + total > d.len() || ttl <= 1 || !ipv4_sum20_ok(&d[14..34]) {
        return Err(false);
    }
    let dst = u32::from_be_bytes([d[30], d[31], d[32], d[33]]);
    let src = u32::from_be_bytes([d[26], d[27], d[28], d[29]]);
    // The destination needs no checks of its own: the cache only holds decisions for routable
    // destinations that are not the router's, taken while the router was up, and a new
    // generation of tables (where that could change) misses.
    if !v4_routable(src) {
        return Err(false);
    }
    let key = v4_key(dst);
    let e = &s.route_cache.e[cache_slot(key, x.rif_in)];
    if e.generation != x.t.generation
        || e.dst != key
        || e.rif_in != x.rif_in
        || (e.hop.neigh != STATIC && e.hop.neigh != s.l3neigh.epoch())
    {
        return Err(true);
    }
    let h = e.hop;
    if total > h.mtu as usize {
        return Err(true);
    }
    // TTL is the high byte of the word at 22; the checksum at 24.
    let old = u16::from_be_bytes([ttl, d[23]]);
    d[22] = ttl - 1;
    let new = u16::from_be_bytes([d[22], d[23]]);
    let cs = checksum::update16(u16::from_be_bytes([d[24], d[25]]), old, new);
    d[24..26].copy_from_slice(&cs.to_be_bytes());
    d[..12].copy_from_slice(&h.macs);
    Ok(h)
}

/// The route cache slot of (destination, ingress interface).
#[inline(always)]
fn cache_slot(dst: u128, rif_in: u16) -> usize {
    let h = (dst as u64 ^ (dst >> 64) as u64 ^ (rif_in as u64) << 40)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 56) as usize & (ROUTE_CACHE - 1)
}

/// A 20-byte IPv4 header's checksum is right (five 32-bit adds and a fold). The one's
/// complement sum does not depend on byte order (RFC 1071 2(B)), and all ones reads the same
/// either way, so the words are summed as they lie in memory.
#[inline(always)]
pub(crate) fn ipv4_sum20_ok(h: &[u8]) -> bool {
    let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    let mut s = w(0) + w(4) + w(8) + w(12) + w(16);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s == 0xffff
}

#[derive(Debug, Clone, Copy)]
enum Miss {
    NoRoute,
    /// The network or broadcast address of a connected IPv4 subnet: directed broadcasts are
    /// not forwarded (RFC 2644), and there is no host to resolve.
    Broadcast,
    /// The next hop's MAC is unknown: ask from this interface.
    Unresolved {
        rif: u16,
        addr: u128,
    },
}

/// Routes the frames integration handed to a router interface.
#[inline(never)]
pub fn route<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    held: &mut Pending<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    if t.l3.rifs.is_empty() {
        return;
    }
    let from_instance = t
        .ports
        .get(b.in_port as usize)
        .is_some_and(|p| p.kind == PortKind::Instance);
    prefetch_translations(b, t, s);
    let mut tally = Tally::default();
    let mut fwd = Forwarded::default();
    for i in 0..b.len {
        let Next::Route(rif_in) = b.meta[i].next else {
            continue;
        };
        let Some(p) = b.pkts[i].as_mut() else {
            continue;
        };
        let Some(rif) = t.l3.rifs.get(rif_in as usize) else {
            b.drop_pkt(i, D::RouterToRouter, c);
            continue;
        };
        let r = &t.l3.routers[rif.router as usize];
        tally.switch(rif.router, &s.router);
        // A distributed router routes what its own host's instances send; a centralized one
        // (legacy, on the network node) also what arrives over the fabric.
        if !from_instance && r.distributed {
            trace!(
                tr,
                i,
                "router",
                "drop router.gateway_from_fabric (routed on its sending host)"
            );
            tally.c[RouterStat::Dropped as usize] += 1;
            b.drop_pkt(i, D::RouterFromFabric, c);
            continue;
        }
        let ctx = Ctx { t, r, rif_in, rif };
        // The common case first: an option-less IPv4 packet to a destination in the route
        // cache, forwarded as is. Anything else takes the full path below.
        let mut checked = false;
        if !T::ON && !rif.fip && r.snat.is_none() {
            match fast_v4(p.data_mut(), &ctx, s) {
                Ok(h) => {
                    b.meta[i].network = h.net;
                    b.meta[i].next = h.next;
                    tally.c[RouterStat::Routed as usize] += 1;
                    fwd.count(&h);
                    s.flows.note_route(i, rif.router, h.mtu, h.events(0));
                    continue;
                }
                Err(ok) => checked = ok,
            }
        }
        let d = p.data();
        let et = if d.len() >= 14 {
            u16::from_be_bytes([d[12], d[13]])
        } else {
            0
        };
        let out = match et {
            EtherType::IPV4 => route_v4(p, &ctx, s, c, i, tr, checked),
            EtherType::IPV6 => route_v6(p, &ctx, s, c, i, tr),
            EtherType::ARP => Err(D::RouterToRouter),
            _ => Err(D::RouterNotIp),
        };
        match out {
            Ok(Verdict::Forward(h)) => {
                b.meta[i].network = h.net;
                b.meta[i].next = h.next;
                tally.c[RouterStat::Routed as usize] += 1;
                fwd.count(&h);
                s.flows.note_route(i, rif.router, h.mtu, h.events(0));
                fragment_if_over(p.data(), &h, &mut b.meta[i], &mut s.flows, c, i, tr);
            }
            Ok(Verdict::Translated(h, nat)) => {
                b.meta[i].network = h.net;
                b.meta[i].next = h.next;
                b.meta[i].translated = true;
                fragment_if_over(p.data(), &h, &mut b.meta[i], &mut s.flows, c, i, tr);
                tally.c[RouterStat::Routed as usize] += 1;
                fwd.count(&h);
                let central = nat.central;
                fwd.snat_in += (central && nat.dnat.is_some()) as u64;
                fwd.snat_out += (central && nat.snat.is_some()) as u64;
                fwd.fip_in += (!central && nat.dnat.is_some()) as u64;
                fwd.fip_out += (!central && nat.snat.is_some()) as u64;
                use super::flowcache::ev;
                let bit = |on: bool, b: u8| if on { b } else { 0 };
                let nat_ev = bit(central && nat.dnat.is_some(), ev::SNAT_IN)
                    | bit(central && nat.snat.is_some(), ev::SNAT_OUT)
                    | bit(!central && nat.dnat.is_some(), ev::FIP_IN)
                    | bit(!central && nat.snat.is_some(), ev::FIP_OUT);
                // An ICMP error's quote is rewritten per packet: not repeatable.
                if nat.quote_port.is_some() {
                    s.flows.spoil(i);
                }
                s.flows.note_route(i, rif.router, h.mtu, h.events(nat_ev));
            }
            Ok(Verdict::Handoff(core)) => {
                b.meta[i].next = Next::Handoff(core, super::firewall::STAGE_ROUTE, rif_in);
            }
            Ok(Verdict::Back(kind)) => {
                s.flows.spoil(i);
                // A reply or ICMP error from the router, out of the ingress port: another
                // frame than the one the egress check judged.
                s.fw.forget(i);
                b.meta[i].next = Next::Output(b.in_port);
                tally.c[kind as usize] += 1;
            }
            Ok(Verdict::Unresolved { rif, addr }) => {
                let out = &t.l3.rifs[rif as usize];
                let key =
                    (out.net as u64) << 48 ^ (addr as u64) ^ ((addr >> 64) as u64).rotate_left(17);
                // A distributed router's MAC is every host's: it asks only this host's
                // instances (see output's FloodLocal), and with none on that network nobody
                // can answer, so nothing waits. A router that is not distributed (a centralized
                // one, the floating IP gateway's, the network node's SNAT router) has MACs of
                // its own and asks the whole network, provider port and remote VTEPs included.
                let ext =
                    t.l3.routers
                        .get(out.router as usize)
                        .is_some_and(|r| !r.distributed);
                let can_ask = t.networks.get(out.net as usize).is_some_and(|n| {
                    (ext && (!n.flood.is_empty() || !n.flood_vteps.is_empty()))
                        || n.flood.iter().any(|&q| {
                            t.ports
                                .get(q as usize)
                                .is_some_and(|pe| pe.kind == PortKind::Instance)
                        })
                });
                let due = can_ask && resolve_due(s, key);
                let gen = t.generation;
                let held = if can_ask && held.has_room(out.net, addr) {
                    b.pkts[i].take().map(|orig| {
                        // Ask in a copy; the original waits for the answer.
                        let ask = if due { orig.try_clone() } else { None };
                        held.push(Held {
                            p: orig,
                            rif_in,
                            in_net: b.meta[i].network,
                            in_port: b.in_port,
                            net: out.net,
                            addr,
                            since_ms: s.now_ms,
                            generation: gen,
                            seq: 0,
                        });
                        c.event(E::NextHopHeld);
                        b.pkts[i] = ask;
                    })
                } else {
                    None
                };
                // The buffer left in the slot (the copy, or the packet itself when the queue
                // is full) becomes the request.
                let asked = due
                    && b.pkts[i]
                        .as_mut()
                        .is_some_and(|q| build_request(q, out, addr));
                if asked {
                    c.event(E::ResolveSent);
                    b.meta[i].network = out.net;
                    b.meta[i].next = if ext { Next::Flood } else { Next::FloodLocal };
                } else {
                    b.meta[i].next = Next::Drop(D::RouterUnresolved);
                }
                if held.is_none() {
                    c.drop(D::RouterUnresolved);
                    tally.c[RouterStat::Dropped as usize] += 1;
                } else if !asked {
                    // The copy could not be made or used: nothing to count, it is freed.
                    b.meta[i].next = Next::Consumed;
                    if let Some(q) = b.pkts[i].take() {
                        drop(q);
                    }
                }
                trace!(
                    tr,
                    i,
                    "router",
                    "next hop {} unknown on network {}: {}{}",
                    addr_str(addr),
                    t.networks[out.net as usize].name,
                    if held.is_some() {
                        "packet held until it resolves"
                    } else {
                        "drop router.unresolved (queue full)"
                    },
                    if asked { ", asking" } else { "" }
                );
            }
            Err(r) => {
                trace!(tr, i, "router", "drop {}", r.name());
                tally.c[RouterStat::Dropped as usize] += 1;
                b.drop_pkt(i, r, c);
            }
        }
    }
    tally.flush(&s.router);
    fwd.add_to(c);
}

/// Events of the packets one batch routed, added to the batch counters once.
#[derive(Default)]
struct Forwarded {
    routed: u64,
    dvr: u64,
    snat: u64,
    fip_in: u64,
    fip_out: u64,
    snat_in: u64,
    snat_out: u64,
}

impl Forwarded {
    #[inline(always)]
    fn count(&mut self, h: &Hop) {
        self.routed += 1;
        self.dvr += h.dvr as u64;
        self.snat += h.to_snat as u64;
    }
    fn add_to(&self, c: &mut BatchCounters) {
        c.events[E::FipDnat as usize] += self.fip_in;
        c.events[E::FipSnat as usize] += self.fip_out;
        c.events[E::SnatIn as usize] += self.snat_in;
        c.events[E::SnatOut as usize] += self.snat_out;
        c.events[E::Routed as usize] += self.routed;
        c.events[E::DvrMacOut as usize] += self.dvr;
        c.events[E::ToSnat as usize] += self.snat;
    }
}

/// Per-router counts of one batch, added to the core's counters when the router changes.
#[derive(Default)]
struct Tally {
    router: Option<u16>,
    c: [u64; 4],
}

impl Tally {
    #[inline(always)]
    fn switch(&mut self, router: u16, rc: &crate::counters::RouterCounters) {
        if self.router != Some(router) {
            self.flush(rc);
            self.router = Some(router);
        }
    }
    fn flush(&mut self, rc: &crate::counters::RouterCounters) {
        if let Some(r) = self.router {
            rc.add(r, self.c);
        }
        self.c = [0; 4];
    }
}

struct Ctx<'a> {
    t: &'a Tables,
    r: &'a RouterEntry,
    rif_in: u16,
    rif: &'a RifEntry,
}

/// The address translations of one floating-IP packet: the new source (SNAT, fixed ->
/// floating) and the new destination (DNAT, floating -> fixed); a packet from one instance to
/// another's floating IP on this host gets both.
#[derive(Debug, Clone, Copy, Default)]
struct Nat {
    snat: Option<u32>,
    dnat: Option<u32>,
    /// New source / destination port (or ICMP echo identifier): centralized SNAT.
    sport: Option<u16>,
    dport: Option<u16>,
    /// An ICMP error's quoted port (source or destination), translated as its connection's
    /// (centralized SNAT).
    quote_port: Option<(super::nat::Field, u16)>,
    /// The network node's centralized SNAT (counted as such), not a floating IP.
    central: bool,
}

/// An IPv4 packet `d` forwarded by `h` that is larger than its MTU (DF clear: with DF the
/// router answered it with an ICMP error) is marked for `output` to send in fragments; the
/// flow cache does not learn from it (a cached answer would send it whole).
#[inline(always)]
fn fragment_if_over<T: Tracer>(
    d: &[u8],
    h: &Hop,
    m: &mut super::Meta,
    fc: &mut super::flowcache::FlowCache,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
) {
    if d.len() < 18 || u16::from_be_bytes([d[12], d[13]]) != EtherType::IPV4 {
        return;
    }
    let total = u16::from_be_bytes([d[16], d[17]]);
    if total <= h.mtu {
        return;
    }
    trace!(
        tr,
        i,
        "router",
        "{total} bytes > egress MTU {}, DF clear: sent in fragments",
        h.mtu
    );
    m.frag_mtu = h.mtu;
    fc.spoil(i);
    c.event(E::RouterFragmented);
}

/// Route-cache key of the decisions a router takes for translated packets: not a real
/// interface (those are below `ROUTER_BIT`), one per router, so routers whose tenant subnets
/// overlap never share an entry.
#[inline(always)]
fn translated_rif(router: u16) -> u16 {
    0x8000 | router
}

enum Verdict {
    Forward(Hop),
    /// Forwarded with its addresses translated (floating IPs).
    Translated(Hop, Nat),
    /// Rewritten into a reply or error to the sender.
    Back(RouterStat),
    /// The next hop's MAC is unknown (the packet is untouched).
    Unresolved {
        rif: u16,
        addr: u128,
    },
    /// Centralized SNAT: another core owns the translation (the packet is untouched); it
    /// resumes at the router stage there.
    Handoff(u16),
}

/// `checked`: [`fast_v4`] found the header whole, option-less, with a right checksum, a TTL
/// above 1 and a routable source.
#[allow(clippy::too_many_arguments)]
fn route_v4<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    checked: bool,
) -> Result<Verdict, D> {
    // A reply to a centralized SNAT translation (to the router's gateway address).
    if let Some(sn) = x.r.snat.filter(|sn| sn.rif == x.rif_in) {
        let d = p.data();
        if d.len() >= 34
            && u32::from_be_bytes([d[30], d[31], d[32], d[33]]) == sn.ip
            && d[14] == 0x45
            && ipv4_sum20_ok(&d[14..34])
        {
            let total = u16::from_be_bytes([d[16], d[17]]) as usize;
            let df = d[14 + 6] & 0x40 != 0;
            if let Some(v) = snat_in(p, x, &sn, s, c, i, tr, total, df) {
                return v;
            }
        }
    }
    let d = p.data();
    let ip = Ipv4Packet::new_checked(&d[14..]).map_err(|_| D::RouterMalformed)?;
    let sum_ok = if checked {
        true
    } else if d[14] == 0x45 {
        ipv4_sum20_ok(&d[14..34])
    } else {
        ip.verify_checksum()
    };
    if !sum_ok {
        return Err(D::RouterMalformed);
    }
    let dst = u32::from(ip.dst());
    let src = u32::from(ip.src());
    let (ttl, total) = (ip.ttl(), ip.total_len());
    let df = d[14 + 6] & 0x40 != 0;
    if x.r.local4.contains(&dst) {
        return to_router_v4(p, x.rif.mac, c, i, tr);
    }
    if !x.r.up {
        return Err(D::RouterDown);
    }
    if !v4_routable(dst) || (!checked && !v4_routable(src)) {
        return Err(D::RouterNotRoutable);
    }
    // Source-routed packets are not forwarded (RFC 1812 5.2.4.1 allows it; Linux's
    // accept_source_route = 0 default does the same).
    if has_source_route(&d[14 + 20..14 + ip.header_len()]) {
        return Err(D::RouterNotRoutable);
    }
    if ttl <= 1 {
        trace!(tr, i, "router", "TTL {ttl}: time exceeded");
        return icmp_v4(
            p,
            x,
            s,
            c,
            IcmpHead {
                ty: 11,
                code: 0,
                word: 0,
            },
            D::RouterTtlExceeded,
        );
    }
    if let Some(v) = floating_ip(p, x, s, c, i, tr, src, dst, total, df) {
        return v;
    }
    if let Some(sn) = x.r.snat {
        if let Some(v) = snat_out(p, x, &sn, s, c, i, tr, dst, total, df) {
            return v;
        }
    }
    let hop = cached_hop(x, s, v4_key(dst), false);
    let h = match hop {
        Ok(h) => h,
        Err(Miss::NoRoute) => {
            trace!(tr, i, "router", "{}: no route", Ipv4Addr::from(dst));
            return icmp_v4(
                p,
                x,
                s,
                c,
                IcmpHead {
                    ty: 3,
                    code: 0,
                    word: 0,
                },
                D::RouterNoRoute,
            );
        }
        Err(Miss::Unresolved { rif, addr }) => return Ok(Verdict::Unresolved { rif, addr }),
        Err(Miss::Broadcast) => return Err(D::RouterNotRoutable),
    };
    // Without DF, `route` has it sent in fragments.
    if total > h.mtu as usize && df {
        trace!(
            tr,
            i,
            "router",
            "{total} bytes > egress MTU {}: fragmentation needed",
            h.mtu
        );
        return icmp_v4(
            p,
            x,
            s,
            c,
            IcmpHead {
                ty: 3,
                code: 4,
                word: h.mtu as u32,
            },
            D::RouterTooBig,
        );
    }
    let d = p.data_mut();
    if let Ok(mut ipm) = Ipv4Packet::new_checked(&mut d[14..]) {
        ipm.decrement_ttl();
    }
    d[..12].copy_from_slice(&h.macs);
    trace_hop(tr, i, x, &h, Ipv4Addr::from(dst).into());
    Ok(Verdict::Forward(h))
}

/// A packet to one of the router's own addresses: an echo request (unfragmented, from a
/// unicast source) is answered, from `mac`, out of the way it came; anything else is dropped.
fn to_router_v4<B: PacketBuf, T: Tracer>(
    p: &mut B,
    mac: MacAddr,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
) -> Result<Verdict, D> {
    let d = p.data();
    let ip = Ipv4Packet::new_checked(&d[14..]).map_err(|_| D::RouterMalformed)?;
    let (src, dst) = (u32::from(ip.src()), u32::from(ip.dst()));
    let icmp = &d[14 + ip.header_len()..14 + ip.total_len()];
    let fragment = ip.is_later_fragment() || d[14 + 6] & 0x20 != 0;
    if ip.protocol() == PROTO_ICMP
        && !fragment
        && v4_routable(src)
        && icmp.len() >= 8
        && icmp[0] == 8
    {
        echo_reply_v4(p, mac);
        c.event(E::EchoReply);
        trace!(
            tr,
            i,
            "router",
            "echo request to {}: replied",
            Ipv4Addr::from(dst)
        );
        return Ok(Verdict::Back(RouterStat::Local));
    }
    Err(D::RouterToRouter)
}

/// Floating IPs (the fip namespace and the router's NAT, in one step): a packet to this
/// host's floating IP gateway is translated to the fixed IP it stands for and routed by that
/// address's router; a packet from a fixed IP that has a floating IP here, to where the
/// router has no route (the outside), is translated to the floating IP and leaves through the
/// gateway to the external network's default gateway, or, to another floating IP of this
/// host, straight to that instance (hairpin). `None`: neither, route as usual.
#[allow(clippy::too_many_arguments)]
#[inline]
fn floating_ip<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    src: u32,
    dst: u32,
    total: usize,
    df: bool,
) -> Option<Result<Verdict, D>> {
    let l3 = &x.t.l3;
    if x.rif.fip {
        let Some(&fi) = l3.fip_in.get(&net_key4(x.rif.net, dst)) else {
            trace!(
                tr,
                i,
                "router",
                "{} is no floating IP of an instance here",
                Ipv4Addr::from(dst)
            );
            return Some(Err(D::RouterNoFloatingIp));
        };
        return to_fixed(p, x, x.rif, s, c, i, tr, dst, fi, None, total, df);
    }
    if !x.r.fips || x.r.fib4.lookup(dst).is_some() {
        return None;
    }
    let fo = *l3
        .fip_out
        .get(&((x.rif.router as u64) << 32 | src as u64))?;
    let gw = l3.rifs.get(fo.rif as usize)?;
    if l3.routers.get(gw.router as usize)?.local4.contains(&dst) {
        // The floating IP gateway's own address (the fip namespace answers it itself): not
        // a neighbour on the external network, answered here as it would be, its reply to
        // the floating IP already translated back to the fixed IP.
        return Some(to_router_v4(p, x.rif.mac, c, i, tr));
    }
    trace!(
        tr,
        i,
        "router",
        "{} leaves as floating IP {}",
        Ipv4Addr::from(src),
        Ipv4Addr::from(fo.ip)
    );
    if let Some(&fi) = l3.fip_in.get(&net_key4(gw.net, dst)) {
        // Another instance's floating IP on this host: in again at once.
        return to_fixed(p, x, gw, s, c, i, tr, dst, fi, Some(fo.ip), total, df);
    }
    let to = Ctx {
        t: x.t,
        r: l3.routers.get(gw.router as usize)?,
        rif_in: translated_rif(gw.router),
        rif: gw,
    };
    let nat = Nat {
        snat: Some(fo.ip),
        ..Default::default()
    };
    Some(translate(p, x, &to, s, c, i, tr, dst, total, df, nat))
}

/// Starts loading the connection-table lines that centralized SNAT reads for the batch's
/// packets at a router with a SNAT port (index bucket, then the entry and its reply key), in
/// two passes over the batch, so the loads of all of them overlap: looked up one packet at a
/// time, each would wait for its own bucket and entry from memory (the table spans the whole
/// capacity). What the flow cache answered never gets here.
#[inline(always)]
fn prefetch_translations<B: PacketBuf>(b: &Batch<B>, t: &Tables, s: &CoreState) {
    let mut hashes = [0u64; super::BURST];
    let mut todo = 0u32;
    for (i, h) in hashes.iter_mut().enumerate().take(b.len) {
        let Next::Route(rif_in) = b.meta[i].next else {
            continue;
        };
        let Some(sn) =
            t.l3.rifs
                .get(rif_in as usize)
                .and_then(|rif| t.l3.routers.get(rif.router as usize))
                .and_then(|r| r.snat.as_ref())
        else {
            continue;
        };
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        // TCP and UDP over plain IPv4 (a full parse here would cost more than the load it
        // hides): the key the translation's lookup will use.
        if let Some(k) = super::conntrack::flow::quick_v4_key(p.data()) {
            *h = k.with_zone(sn.zone).hash();
            s.fw.ct.touch(*h);
            todo |= 1 << i;
        }
    }
    while todo != 0 {
        let i = todo.trailing_zeros() as usize & (super::BURST - 1);
        todo &= todo - 1;
        if let Some(link) = s.fw.ct.touch_candidate(hashes[i]).checked_sub(1) {
            s.fw.ct.touch_wide(link >> 1);
        }
    }
}

/// Centralized SNAT on the way out (the network node's snat namespace): a packet this router
/// sends out of its gateway interface leaves from the gateway address, with a source port
/// (ICMP echo: identifier) of its own per connection, kept in the core's connection table
/// with the key its replies will have. A new connection gets the first free port from a point
/// its key hashes to; none free: `router.snat_exhausted`, and connections already translated
/// carry on. `None`: not leaving by the gateway, route as usual.
#[allow(clippy::too_many_arguments)]
fn snat_out<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    sn: &crate::tables::router::Snat,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    dst: u32,
    total: usize,
    df: bool,
) -> Option<Result<Verdict, D>> {
    // Only what its route sends out of the gateway interface (the hop itself is worked out
    // once, by `translate`; a packet held for the gateway's MAC keeps its translation).
    let route =
        x.r.fib4
            .lookup(dst)
            .and_then(|(ri, _)| x.r.routes.get(ri as usize));
    if route.is_none_or(|r| r.rif != sn.rif) {
        return None;
    }
    let fl = super::conntrack::flow::parse(p.data());
    if fl.kind == Kind::Fragment {
        return Some(snat_later_fragment(
            p,
            x,
            sn,
            &fl,
            s,
            c,
            i,
            tr,
            Some(dst),
            total,
            df,
        ));
    }
    if let Kind::Error(inner) = fl.kind {
        return Some(snat_error_out(p, x, sn, inner, s, c, i, tr, dst, total, df));
    }
    let echo = match fl.kind {
        Kind::Tcp(_) | Kind::Ports => false,
        Kind::Echo(true) => true,
        _ => {
            trace!(
                tr,
                i,
                "router",
                "SNAT translates TCP, UDP and ICMP echo only"
            );
            return Some(Err(D::RouterSnatProtocol));
        }
    };
    let key = fl.key.with_zone(sn.zone);
    let (now, cores, core) = (s.fw.now, s.fw.cores, s.fw.core);
    // With several workers, the core that owns the connection's original direction translates
    // it, and picks a port whose replies it owns too: both directions meet there, and the
    // cores' ports never collide.
    if let Some(owner) = snat_owner(&key, cores, core) {
        trace!(
            tr,
            i,
            "router",
            "SNAT {key}: core {owner} owns it, handed over"
        );
        // Its later fragments follow it there.
        if let Some(id) = fl.frag {
            s.fw.frags.insert(&key, id, owner, 0, now);
        }
        return Some(Ok(Verdict::Handoff(owner)));
    }
    let ct = &mut s.fw.ct;
    let port = match ct.lookup(&key, now) {
        Some((idx, 0)) => {
            let was = ct.entry(idx).map(|e| (e.state, e.flags));
            super::firewall::track_translation(ct, idx, 0, &fl.kind, now);
            note_translation(&mut s.flows, ct, i, idx, 0, &fl.kind, was);
            s.fw.ct.reply_of(idx)?.dport()
        }
        Some(_) => return Some(Err(D::RouterSnatProtocol)),
        None => {
            let [lo, hi] = sn.ports;
            let n = (hi as u32).saturating_sub(lo as u32) + 1;
            let start = (key.hash() >> 32) as u32 % n;
            let (d, dp, proto) = (key.dst128() as u32, key.dport(), key.proto());
            let mut got = None;
            for k in 0..n {
                let gp = lo.wrapping_add(((start + k) % n) as u16);
                // An echo's reply carries the identifier as its "source port" too.
                let rp = if echo { gp } else { dp };
                let reply = Key::v4(sn.zone, proto, d, sn.ip, rp, gp);
                // With several workers, only a port whose replies this core owns.
                if cores > 1 && (reply.owner_hash() % cores as u64) as u16 != core {
                    continue;
                }
                if ct.lookup(&reply, now).is_some() {
                    continue;
                }
                got =
                    super::firewall::open_translation(ct, &key, &reply, &fl.kind, now).map(|_| gp);
                break;
            }
            let Some(gp) = got else {
                trace!(
                    tr,
                    i,
                    "router",
                    "SNAT: no free port to {}",
                    Ipv4Addr::from(d)
                );
                return Some(Err(D::RouterSnatExhausted));
            };
            // A new translation (of a SYN, or picked up mid-stream): the flow cache learns
            // only from packets of one it can check on every hit.
            s.flows.spoil(i);
            gp
        }
    };
    trace!(
        tr,
        i,
        "router",
        "SNAT {} -> {}:{port}",
        key,
        Ipv4Addr::from(sn.ip)
    );
    if let Some(id) = fl.frag {
        // A first fragment: the rest of its datagram is translated the same way.
        s.fw.frags.insert(&key, id, FRAG_HERE, sn.ip, now);
        s.flows.spoil(i);
    }
    let nat = Nat {
        snat: Some(sn.ip),
        sport: Some(port),
        central: true,
        ..Default::default()
    };
    Some(translate(p, x, x, s, c, i, tr, dst, total, df, nat))
}

/// An ICMP error from inside about a packet that one of this router's translations brought
/// in (a reply its instance got; e.g. port unreachable for a late UDP answer, fragmentation
/// needed): it leaves from the gateway address, its quote turned back into the packet the
/// peer sent (to the gateway address and the connection's port), as Linux's NAT translates
/// an error related to a connection. Matching no translation: `router.snat_unknown`.
#[allow(clippy::too_many_arguments)]
fn snat_error_out<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    sn: &crate::tables::router::Snat,
    inner: Key,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    dst: u32,
    total: usize,
    df: bool,
) -> Result<Verdict, D> {
    // The quoted packet came in translated back: its key reversed is the original key.
    let key = inner.with_zone(sn.zone).reverse();
    if let Some(owner) = snat_owner(&key, s.fw.cores, s.fw.core) {
        trace!(
            tr,
            i,
            "router",
            "SNAT: ICMP error about {key}: core {owner} owns it, handed over"
        );
        return Ok(Verdict::Handoff(owner));
    }
    s.flows.spoil(i);
    let ct = &mut s.fw.ct;
    let reply = match ct.lookup(&key, s.fw.now) {
        Some((idx, 0)) => ct.reply_of(idx),
        _ => None,
    };
    let Some(reply) = reply else {
        trace!(
            tr,
            i,
            "router",
            "SNAT: ICMP error about {key}: no translation"
        );
        return Err(D::RouterSnatUnknown);
    };
    trace!(
        tr,
        i,
        "router",
        "SNAT: ICMP error about {key} -> from {}, quoting {reply}",
        Ipv4Addr::from(sn.ip)
    );
    let nat = Nat {
        snat: Some(sn.ip),
        quote_port: Some((super::nat::Field::Dst, reply.dport())),
        central: true,
        ..Default::default()
    };
    translate(p, x, x, s, c, i, tr, dst, total, df, nat)
}

/// A later fragment through centralized SNAT: it carries no ports, so it follows its
/// datagram's first fragment, on the core that translated that one, to the address that one
/// got: on the way out (`out_to`: its destination) from the gateway address, on the way back
/// to the instance's. With no such first fragment in the last [`FRAG_MS`] ms it is dropped
/// (`router.snat_fragment`).
///
/// [`FRAG_MS`]: super::firewall::FRAG_MS
#[allow(clippy::too_many_arguments)]
fn snat_later_fragment<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    sn: &crate::tables::router::Snat,
    fl: &super::conntrack::flow::Flow,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    out_to: Option<u32>,
    total: usize,
    df: bool,
) -> Result<Verdict, D> {
    let key = fl.key.with_zone(sn.zone);
    let id = fl.frag.unwrap_or(0);
    s.flows.spoil(i);
    match s.fw.frags.lookup(&key, id, s.fw.now) {
        Some((to, _)) if to != FRAG_HERE => {
            trace!(
                tr,
                i,
                "router",
                "fragment id {id} of {key}: its first went to core {to}, handed over"
            );
            Ok(Verdict::Handoff(to))
        }
        Some((_, addr)) => {
            trace!(
                tr,
                i,
                "router",
                "fragment id {id} of {key}: translated as its first fragment"
            );
            let (route_to, nat) = match out_to {
                Some(dst) => (
                    dst,
                    Nat {
                        snat: Some(addr),
                        central: true,
                        ..Default::default()
                    },
                ),
                None => (
                    addr,
                    Nat {
                        dnat: Some(addr),
                        central: true,
                        ..Default::default()
                    },
                ),
            };
            translate(p, x, x, s, c, i, tr, route_to, total, df, nat)
        }
        None => {
            trace!(
                tr,
                i,
                "router",
                "fragment id {id} of {key}: no first fragment translated here"
            );
            Err(D::RouterSnatFragment)
        }
    }
}

/// Tells the flow cache how a packet of `kind` moved translation `idx` on (direction `dir`)
/// from state and flags `was`: a plain ACK of an assured, established translation that stayed
/// established, a datagram of an assured UDP translation that was and stays replied, or one
/// more datagram of a UDP translation not replied yet, in its original direction (each moved
/// the deadline on, nothing else), is repeatable; anything else is not.
fn note_translation(
    fc: &mut super::flowcache::FlowCache,
    ct: &super::conntrack::Conntrack,
    i: usize,
    idx: u32,
    dir: u8,
    kind: &Kind,
    was: Option<(u8, u8)>,
) {
    use super::conntrack::{flag, state, tcp, PROTO_UDP};
    let Some(e) = ct.entry(idx) else {
        return fc.spoil(i);
    };
    let Some((st, fl)) = was else {
        return fc.spoil(i);
    };
    // The state it must have been in and still be in, and whether assured.
    let steady = match kind {
        Kind::Tcp(seg) if seg.flags & (tcp::FIN | tcp::SYN | tcp::RST | tcp::ACK) == tcp::ACK => {
            Some((state::ESTABLISHED, true))
        }
        Kind::Ports if e.proto() == PROTO_UDP && st == state::REPLIED => Some((st, true)),
        Kind::Ports if e.proto() == PROTO_UDP && st == state::UNREPLIED && dir == 0 => {
            Some((st, false))
        }
        _ => None,
    };
    let assured = |fl: u8| fl & flag::ASSURED != 0;
    match steady {
        Some((want, sure))
            if st == want && e.state == want && (!sure || (assured(fl) && assured(e.flags))) =>
        {
            fc.note_ct(i, idx, dir, super::flowcache::Track::Translation)
        }
        _ => fc.spoil(i),
    }
}

/// The core that owns a SNAT connection with key `key` (original direction or reply), when it
/// is not this one.
#[inline]
fn snat_owner(key: &Key, cores: u16, core: u16) -> Option<u16> {
    if cores <= 1 {
        return None;
    }
    let owner = (key.owner_hash() % cores as u64) as u16;
    (owner != core).then_some(owner)
}

/// Centralized SNAT on the way back: a reply to the gateway address of one of this router's
/// translations is translated back to the connection's own address and port and routed to
/// it; an ICMP error about one too, its quoted packet to what the instance sent.
/// An echo request to the gateway address matching none is the router's to answer (`None`).
#[allow(clippy::too_many_arguments)]
fn snat_in<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    sn: &crate::tables::router::Snat,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    total: usize,
    df: bool,
) -> Option<Result<Verdict, D>> {
    let fl = super::conntrack::flow::parse(p.data());
    if fl.kind == Kind::Fragment {
        return Some(snat_later_fragment(
            p, x, sn, &fl, s, c, i, tr, None, total, df,
        ));
    }
    let (key, ports) = match fl.kind {
        Kind::Tcp(_) | Kind::Ports | Kind::Echo(false) => (fl.key.with_zone(sn.zone), true),
        // The quoted packet went out translated: its key reversed is a reply key.
        Kind::Error(inner) => (inner.with_zone(sn.zone).reverse(), false),
        Kind::Echo(true) => return None,
        _ => return Some(Err(D::RouterSnatUnknown)),
    };
    let now = s.fw.now;
    if let Some(owner) = snat_owner(&key, s.fw.cores, s.fw.core) {
        trace!(
            tr,
            i,
            "router",
            "SNAT reply {key}: core {owner} owns it, handed over"
        );
        if let (true, Some(id)) = (ports, fl.frag) {
            s.fw.frags.insert(&key, id, owner, 0, now);
        }
        return Some(Ok(Verdict::Handoff(owner)));
    }
    let ct = &mut s.fw.ct;
    let Some((idx, 1)) = ct.lookup(&key, now) else {
        trace!(tr, i, "router", "{key}: no SNAT translation");
        return Some(Err(D::RouterSnatUnknown));
    };
    if ports {
        let was = ct.entry(idx).map(|e| (e.state, e.flags));
        super::firewall::track_translation(ct, idx, 1, &fl.kind, now);
        note_translation(&mut s.flows, ct, i, idx, 1, &fl.kind, was);
    } else {
        s.flows.spoil(i);
    }
    let orig = ct.key_of(idx)?;
    let fixed = orig.src128() as u32;
    trace!(tr, i, "router", "SNAT reply -> {orig} (reversed)");
    if let (true, Some(id)) = (ports, fl.frag) {
        s.fw.frags.insert(&key, id, FRAG_HERE, fixed, now);
        s.flows.spoil(i);
    }
    let nat = Nat {
        dnat: Some(fixed),
        dport: ports.then_some(orig.sport()),
        quote_port: (!ports).then_some((super::nat::Field::Src, orig.sport())),
        central: true,
        ..Default::default()
    };
    Some(translate(p, x, x, s, c, i, tr, fixed, total, df, nat))
}

/// A packet to floating IP `dst` (`fi`), arrived through floating IP gateway `gw`: translated
/// to the fixed IP (and, from another instance of this host, from its own floating IP `snat`)
/// and routed by the fixed IP's router.
#[allow(clippy::too_many_arguments)]
fn to_fixed<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    gw: &RifEntry,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    dst: u32,
    fi: crate::tables::router::FipIn,
    snat: Option<u32>,
    total: usize,
    df: bool,
) -> Option<Result<Verdict, D>> {
    let r = x.t.l3.routers.get(fi.router as usize)?;
    trace!(
        tr,
        i,
        "router",
        "floating IP {} -> fixed IP {} (router {})",
        Ipv4Addr::from(dst),
        Ipv4Addr::from(fi.fixed),
        r.name
    );
    let to = Ctx {
        t: x.t,
        r,
        rif_in: translated_rif(fi.router),
        rif: gw,
    };
    let nat = Nat {
        snat,
        dnat: Some(fi.fixed),
        ..Default::default()
    };
    Some(translate(p, x, &to, s, c, i, tr, fi.fixed, total, df, nat))
}

/// Routes a packet to `route_to` through `to` (a router after the translation), then
/// translates it by `nat` (only once its next hop is known: a packet waiting for one is held
/// as it came, and routed again from the start when it resolves). Errors go back to the
/// sender as `x` (the ingress interface) would send them.
#[allow(clippy::too_many_arguments)]
fn translate<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    to: &Ctx<'_>,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
    route_to: u32,
    total: usize,
    df: bool,
    nat: Nat,
) -> Result<Verdict, D> {
    let h = match cached_hop(to, s, v4_key(route_to), false) {
        Ok(h) => h,
        Err(Miss::NoRoute) => {
            trace!(tr, i, "router", "{}: no route", Ipv4Addr::from(route_to));
            let head = IcmpHead {
                ty: 3,
                code: 0,
                word: 0,
            };
            return icmp_v4(p, x, s, c, head, D::RouterNoRoute);
        }
        Err(Miss::Unresolved { rif, addr }) => return Ok(Verdict::Unresolved { rif, addr }),
        Err(Miss::Broadcast) => return Err(D::RouterNotRoutable),
    };
    if total > h.mtu as usize && df {
        let head = IcmpHead {
            ty: 3,
            code: 4,
            word: h.mtu as u32,
        };
        return icmp_v4(p, x, s, c, head, D::RouterTooBig);
    }
    let d = p.data_mut();
    for (field, addr, port) in [
        (super::nat::Field::Src, nat.snat, nat.sport),
        (super::nat::Field::Dst, nat.dnat, nat.dport),
    ] {
        if let Some(a) = addr {
            if !super::nat::rewrite(d, 14, field, a) {
                return Err(D::RouterMalformed);
            }
        }
        if let Some(pt) = port {
            if !super::nat::rewrite_port(d, 14, field, pt) {
                return Err(D::RouterMalformed);
            }
        }
    }
    if let Some((field, pt)) = nat.quote_port {
        // A quote cut short before its ports stays as it is.
        super::nat::rewrite_quoted_port(d, 14, field, pt);
    }
    if let Ok(mut ipm) = Ipv4Packet::new_checked(&mut d[14..]) {
        ipm.decrement_ttl();
    }
    d[..12].copy_from_slice(&h.macs);
    trace_hop(tr, i, to, &h, Ipv4Addr::from(route_to).into());
    Ok(Verdict::Translated(h, nat))
}

#[allow(clippy::too_many_arguments)]
fn route_v6<B: PacketBuf, T: Tracer>(
    p: &mut B,
    x: &Ctx<'_>,
    s: &mut CoreState,
    c: &mut BatchCounters,
    i: usize,
    tr: &mut T,
) -> Result<Verdict, D> {
    let d = p.data();
    let ip = Ipv6Packet::new_checked(&d[14..]).map_err(|_| D::RouterMalformed)?;
    let dst = ip.dst();
    let src = ip.src();
    let hop_limit = ip.hop_limit();
    let total = 40 + ip.payload_len();
    let dkey = u128::from(dst);
    if x.r.local6.contains(&dkey) {
        if !v6_routable(src) {
            return Err(D::RouterToRouter);
        }
        if let Some((PROTO_ICMPV6, icmp)) = ip.upper_layer() {
            if icmp.len() >= 8 && icmp[0] == 128 {
                echo_reply_v6(p, x.rif.mac);
                c.event(E::EchoReply);
                trace!(tr, i, "router", "echo request to {dst}: replied");
                return Ok(Verdict::Back(RouterStat::Local));
            }
        }
        return Err(D::RouterToRouter);
    }
    if !x.r.up {
        return Err(D::RouterDown);
    }
    if !v6_routable(dst) || !v6_routable(src) {
        return Err(D::RouterNotRoutable);
    }
    if hop_limit <= 1 {
        trace!(tr, i, "router", "hop limit {hop_limit}: time exceeded");
        return icmp_v6(
            p,
            x,
            s,
            c,
            IcmpHead {
                ty: 3,
                code: 0,
                word: 0,
            },
            D::RouterTtlExceeded,
        );
    }
    let hop = cached_hop(x, s, dkey, true);
    let h = match hop {
        Ok(h) => h,
        Err(Miss::NoRoute) => {
            trace!(tr, i, "router", "{dst}: no route");
            return icmp_v6(
                p,
                x,
                s,
                c,
                IcmpHead {
                    ty: 1,
                    code: 0,
                    word: 0,
                },
                D::RouterNoRoute,
            );
        }
        Err(Miss::Unresolved { rif, addr }) => return Ok(Verdict::Unresolved { rif, addr }),
        Err(Miss::Broadcast) => return Err(D::RouterNotRoutable),
    };
    if total > h.mtu as usize {
        trace!(
            tr,
            i,
            "router",
            "{total} bytes > egress MTU {}: packet too big",
            h.mtu
        );
        return icmp_v6(
            p,
            x,
            s,
            c,
            IcmpHead {
                ty: 2,
                code: 0,
                word: h.mtu as u32,
            },
            D::RouterTooBig,
        );
    }
    let d = p.data_mut();
    d[14 + 7] = hop_limit - 1;
    d[..12].copy_from_slice(&h.macs);
    trace_hop(tr, i, x, &h, dst.into());
    Ok(Verdict::Forward(h))
}

#[inline(always)]
fn trace_hop<T: Tracer>(tr: &mut T, i: usize, x: &Ctx<'_>, h: &Hop, dst: std::net::IpAddr) {
    trace!(
        tr,
        i,
        "router",
        "{} {dst}: {} -> network {}, {} -> {}, to {:?}{}{}",
        x.r.name,
        x.r.fib_route_for(dst).map_or("-".to_string(), |r| {
            format!(
                "route {}{}",
                r.prefix,
                r.via.map_or(String::new(), |v| format!(" via {v}"))
            )
        }),
        x.t.networks[h.net as usize].name,
        MacAddr(h.macs[6..12].try_into().expect("6 bytes")),
        MacAddr(h.macs[0..6].try_into().expect("6 bytes")),
        h.next,
        if h.dvr {
            " (source: this host's DVR MAC)"
        } else {
            ""
        },
        if h.to_snat {
            " (default: centralized SNAT port)"
        } else {
            ""
        },
    );
}

impl RouterEntry {
    /// The route a destination matches (trace only).
    pub fn fib_route_for(
        &self,
        dst: std::net::IpAddr,
    ) -> Option<&crate::tables::router::RouteEntry> {
        let idx = match dst {
            std::net::IpAddr::V4(a) => self.fib4.lookup(u32::from(a)),
            std::net::IpAddr::V6(a) => self.fib6.lookup(u128::from(a)),
        };
        idx.and_then(|(r, _)| self.routes.get(r as usize))
    }
}

/// FIB lookup, next hop, its MAC and its L2 destination in the egress network.
fn next_hop(x: &Ctx<'_>, s: &mut CoreState, dst: u128, v6: bool) -> Result<Hop, Miss> {
    let t = x.t;
    let found = if v6 {
        x.r.fib6.lookup(dst)
    } else {
        x.r.fib4.lookup(dst as u32)
    };
    let routed = found.is_some();
    let (rif_out, nh, snat_mac) = match found.and_then(|(ri, _)| x.r.routes.get(ri as usize)) {
        Some(re) => {
            if let (None, ipnet::IpNet::V4(n)) = (re.via, re.prefix) {
                let a = dst as u32;
                if n.prefix_len() <= 30
                    && (a == u32::from(n.network()) || a == u32::from(n.broadcast()))
                {
                    return Err(Miss::Broadcast);
                }
            }
            let nh = match re.via {
                Some(std::net::IpAddr::V4(a)) => v4_key(u32::from(a)),
                Some(std::net::IpAddr::V6(a)) => u128::from(a),
                None => dst,
            };
            (re.rif, nh, None)
        }
        None => match (v6, x.rif.snat, x.rif.snat6) {
            // North-south without a floating IP: to the router's SNAT port on the network
            // node, on the same subnet (IPv6 too: routed there, not translated).
            (false, Some((ip, mac)), _) => (x.rif_in, v4_key(u32::from(ip)), Some(mac_u64(&mac.0))),
            (true, _, Some((ip, mac))) => (x.rif_in, u128::from(ip), Some(mac_u64(&mac.0))),
            _ => return Err(Miss::NoRoute),
        },
    };
    let out = &t.l3.rifs[rif_out as usize];
    let net = out.net;
    let static_mac = snat_mac.or_else(|| t.l3.neighbor(net, nh));
    // Read before the lookup whose answer a cached decision keeps.
    let epoch = s.l3neigh.epoch();
    let mac = static_mac
        .or_else(|| s.l3neigh.lookup(net, nh))
        .ok_or(Miss::Unresolved {
            rif: rif_out,
            addr: nh,
        })?;
    let ne = &t.networks[net as usize];
    let static_dest = t.fdb.get(&fdb_key48(net, mac)).copied();
    // On a flat or VLAN network whatever is not a port here (static) is behind the provider
    // port: no need to ask what was learned.
    let provider_only = match (ne.segment, ne.provider_port) {
        (Segment::Vxlan(_), _) | (_, None) => None,
        (_, Some(p)) => Some(p),
    };
    let learned = || {
        let m = MacAddr(mac.to_be_bytes()[2..8].try_into().expect("6 bytes"));
        s.learn.lookup(net, m, s.now_ms)
    };
    let l2_static = static_dest.or(provider_only);
    let from_static = l2_static.is_some();
    let next = match l2_static.or_else(learned).and_then(|d| dest_next(t, d)) {
        Some(Next::Route(_)) => return Err(Miss::NoRoute),
        Some(n) => n,
        None => Next::Flood,
    };
    let leaves = match next {
        Next::Output(p) => t.ports[p as usize].kind != PortKind::Instance,
        Next::Tunnel(_) => true,
        _ => ne.provider_port.is_some() || !ne.flood_vteps.is_empty(),
    };
    // Only a distributed router's MACs exist on several hosts; a centralized one (on the
    // network node) sends with its own interface MAC.
    let leaves = leaves && x.r.distributed;
    let src = match (leaves, t.l3.dvr_mac) {
        (true, Some(m)) => m,
        _ => out.mac,
    };
    let mut mtu = ne.mtu;
    let tunnelled = matches!(next, Next::Tunnel(_))
        || (next == Next::Flood
            && matches!(ne.segment, Segment::Vxlan(_))
            && !ne.flood_vteps.is_empty());
    if tunnelled {
        if let Some(o) = t.overlay.as_ref() {
            mtu = mtu.min(o.mtu.saturating_sub(VXLAN_IP_OVERHEAD));
        }
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&mac.to_be_bytes()[2..8]);
    macs[6..].copy_from_slice(&src.0);
    Ok(Hop {
        net,
        next,
        macs,
        mtu,
        dvr: leaves && t.l3.dvr_mac.is_some(),
        to_snat: snat_mac.is_some(),
        // Where no route leads depends on the source when some have floating IPs: never
        // decided by destination alone.
        cacheable: from_static && (routed || !x.r.fips),
        neigh: if static_mac.is_some() { STATIC } else { epoch },
    })
}

/// Whether IPv4 options carry a loose or strict source route (RFC 791).
fn has_source_route(mut o: &[u8]) -> bool {
    while let Some(&kind) = o.first() {
        match kind {
            0 => return false,
            1 => o = &o[1..],
            0x83 | 0x89 => return true,
            _ => {
                let len = o.get(1).copied().unwrap_or(0) as usize;
                if len < 2 || len > o.len() {
                    return false;
                }
                o = &o[len..];
            }
        }
    }
    false
}

#[inline(always)]
fn v4_routable(a: u32) -> bool {
    let first = (a >> 24) as u8;
    // 0/8, 127/8, multicast, class E and broadcast; 169.254/16 link-local.
    !(first == 0 || first == 127 || first >= 224 || a >> 16 == 0xa9fe)
}

/// Unspecified, loopback, multicast, link-local and IPv4-mapped (RFC 4291 2.5.5.2: never on
/// the wire; also keeps IPv6 keys apart from the IPv4 ones in the route cache) are never routed.
fn v6_routable(a: Ipv6Addr) -> bool {
    let s = a.segments();
    let v4_mapped = u128::from(a) >> 32 == 0xffff;
    !(a.is_unspecified()
        || a.is_loopback()
        || v4_mapped
        || s[0] & 0xff00 == 0xff00
        || s[0] & 0xffc0 == 0xfe80)
}

/// Echo request -> echo reply, in place: addresses and MACs swapped, type 0, TTL 64.
fn echo_reply_v4<B: PacketBuf>(p: &mut B, mac: MacAddr) {
    let d = p.data_mut();
    let src_mac: [u8; 6] = d[6..12].try_into().expect("6 bytes");
    d[0..6].copy_from_slice(&src_mac);
    d[6..12].copy_from_slice(&mac.0);
    let hl = ((d[14] & 0x0f) as usize) * 4;
    let (a, b): ([u8; 4], [u8; 4]) = (
        d[26..30].try_into().expect("4"),
        d[30..34].try_into().expect("4"),
    );
    d[26..30].copy_from_slice(&b);
    d[30..34].copy_from_slice(&a);
    d[14 + 8] = 64;
    // A fresh, unfragmented datagram: no flags, offset 0.
    d[14 + 6] = 0;
    d[14 + 7] = 0;
    if let Ok(mut ip) = Ipv4Packet::new_checked(&mut d[14..]) {
        ip.fill_checksum();
    }
    let at = 14 + hl;
    let old = u16::from_be_bytes([d[at], d[at + 1]]);
    d[at] = 0;
    let cs = checksum::update16(
        u16::from_be_bytes([d[at + 2], d[at + 3]]),
        old,
        u16::from_be_bytes([d[at], d[at + 1]]),
    );
    d[at + 2..at + 4].copy_from_slice(&cs.to_be_bytes());
}

/// ICMPv6 echo request -> reply, in place (the pseudo-header sum is unchanged by the swap).
fn echo_reply_v6<B: PacketBuf>(p: &mut B, mac: MacAddr) {
    let d = p.data_mut();
    let src_mac: [u8; 6] = d[6..12].try_into().expect("6 bytes");
    d[0..6].copy_from_slice(&src_mac);
    d[6..12].copy_from_slice(&mac.0);
    let (a, b): ([u8; 16], [u8; 16]) = (
        d[22..38].try_into().expect("16"),
        d[38..54].try_into().expect("16"),
    );
    d[22..38].copy_from_slice(&b);
    d[38..54].copy_from_slice(&a);
    d[14 + 7] = 64;
    // upper_layer() found the ICMPv6 header; with extension headers it is further in.
    let at = match Ipv6Packet::new_checked(&d[14..]).ok().and_then(|ip| {
        ip.upper_layer()
            .map(|(_, l4)| 14 + 40 + ip.payload_len() - l4.len())
    }) {
        Some(at) => at,
        None => return,
    };
    let old = u16::from_be_bytes([d[at], d[at + 1]]);
    d[at] = 129;
    let new = u16::from_be_bytes([d[at], d[at + 1]]);
    let cs = checksum::update16(u16::from_be_bytes([d[at + 2], d[at + 3]]), old, new);
    d[at + 2..at + 4].copy_from_slice(&cs.to_be_bytes());
}

/// Takes an ICMP token (refilled one per ms, up to [`ICMP_BURST`]).
fn icmp_token(s: &mut CoreState) -> bool {
    let now = s.now_ms;
    let add = now.saturating_sub(s.icmp_refill_ms);
    if add > 0 {
        s.icmp_tokens = (s.icmp_tokens as u64 + add).min(ICMP_BURST as u64) as u32;
        s.icmp_refill_ms = now;
    }
    if s.icmp_tokens == 0 {
        return false;
    }
    s.icmp_tokens -= 1;
    true
}

/// Turns the packet into an ICMP error to its sender, or drops it for `reason` when no error
/// may be sent.
fn icmp_v4<B: PacketBuf>(
    p: &mut B,
    x: &Ctx<'_>,
    s: &mut CoreState,
    c: &mut BatchCounters,
    head: IcmpHead,
    reason: D,
) -> Result<Verdict, D> {
    let d = p.data();
    let ip = Ipv4Packet::new_checked(&d[14..]).map_err(|_| reason)?;
    let orig_src = u32::from(ip.src());
    // RFC 1812 4.3.2.7: never about an ICMP error, a non-first fragment, or to a source that
    // is not a unicast host.
    if ip.is_later_fragment() || !v4_routable(orig_src) {
        return Err(reason);
    }
    if ip.protocol() == PROTO_ICMP {
        let t = ip.payload().first().copied().unwrap_or(0);
        if matches!(t, 3 | 4 | 5 | 11 | 12) {
            return Err(reason);
        }
    }
    let Some(from) = x.rif.v4_source(orig_src) else {
        return Err(reason);
    };
    let orig_len = ip.total_len();
    let sent = icmp_error::<B, { ICMP4_MAX - 20 - 8 }>(
        p,
        x.rif.mac,
        s,
        c,
        (EtherType::IPV4, 20),
        orig_len,
        head,
        |d, icmp_len| {
            Ipv4Repr {
                src: Ipv4Addr::from(from),
                dst: Ipv4Addr::from(orig_src),
                protocol: PROTO_ICMP,
                payload_len: icmp_len,
                ttl: 64,
                dont_fragment: false,
            }
            .emit(d);
            0
        },
    );
    if sent {
        Ok(Verdict::Back(RouterStat::IcmpSent))
    } else {
        Err(reason)
    }
}

/// Type, code and the 32-bit word that follows the checksum of an ICMP / ICMPv6 error
/// (unused; the next-hop MTU of fragmentation needed in its low 16 bits, RFC 1191; the MTU of
/// packet too big, RFC 4443).
#[derive(Clone, Copy)]
struct IcmpHead {
    ty: u8,
    code: u8,
    word: u32,
}

/// What building an ICMP and an ICMPv6 error share, once the family's own checks have passed:
/// the rate limit, the quote of the original (from its IP header on, `orig_len` bytes at most
/// `MAXQ`), the frame back to the sender (Ethernet from `mac`, the IP header `ip_hdr` writes
/// given the ICMP length, returning the checksum's initial sum: 0 for IPv4, the pseudo-header
/// for IPv6), the ICMP header and checksum. Whether the packet became the error.
#[allow(clippy::too_many_arguments)]
fn icmp_error<B: PacketBuf, const MAXQ: usize>(
    p: &mut B,
    mac: MacAddr,
    s: &mut CoreState,
    c: &mut BatchCounters,
    (ethertype, ip_len): (u16, usize),
    orig_len: usize,
    head: IcmpHead,
    ip_hdr: impl FnOnce(&mut [u8], usize) -> u32,
) -> bool {
    if !icmp_token(s) {
        c.event(E::IcmpRateLimited);
        return false;
    }
    let d = p.data();
    let quote_len = orig_len.min(MAXQ).min(d.len().saturating_sub(14));
    let mut quote = [0u8; MAXQ];
    quote[..quote_len].copy_from_slice(&d[14..14 + quote_len]);
    let Ok(dst_mac) = d[6..12].try_into().map(MacAddr) else {
        return false;
    };
    let at = 14 + ip_len;
    let len = at + 8 + quote_len;
    if !set_len(p, len) {
        return false;
    }
    let d = p.data_mut();
    EthernetRepr {
        dst: dst_mac,
        src: mac,
        ethertype,
    }
    .emit(d);
    let initial = ip_hdr(&mut d[14..at], 8 + quote_len);
    let m = &mut d[at..len];
    m[0] = head.ty;
    m[1] = head.code;
    m[2..4].fill(0);
    m[4..8].copy_from_slice(&head.word.to_be_bytes());
    m[8..].copy_from_slice(&quote[..quote_len]);
    let cs = !(checksum::sum(m, initial) as u16);
    m[2..4].copy_from_slice(&cs.to_be_bytes());
    c.event(E::IcmpErrorSent);
    true
}

fn icmp_v6<B: PacketBuf>(
    p: &mut B,
    x: &Ctx<'_>,
    s: &mut CoreState,
    c: &mut BatchCounters,
    head: IcmpHead,
    reason: D,
) -> Result<Verdict, D> {
    let d = p.data();
    let ip = Ipv6Packet::new_checked(&d[14..]).map_err(|_| reason)?;
    let orig_src = ip.src();
    if !v6_routable(orig_src) {
        return Err(reason);
    }
    // RFC 4443 2.4 (e): never about an ICMPv6 error message. When the upper layer cannot be
    // found (a fragment, an unparsable header chain) it may be one: no error either.
    match ip.upper_layer() {
        Some((PROTO_ICMPV6, l4)) if l4.first().is_none_or(|&t| t < 128) => return Err(reason),
        None => return Err(reason),
        _ => {}
    }
    let Some(from) = x.rif.v6_source(u128::from(orig_src)) else {
        return Err(reason);
    };
    let from = Ipv6Addr::from(from);
    let orig_len = 40 + ip.payload_len();
    let sent = icmp_error::<B, { ICMP6_MAX - 40 - 8 }>(
        p,
        x.rif.mac,
        s,
        c,
        (EtherType::IPV6, 40),
        orig_len,
        head,
        |d, icmp_len| {
            Ipv6Repr {
                src: from,
                dst: orig_src,
                next_header: PROTO_ICMPV6,
                payload_len: icmp_len,
                hop_limit: 64,
            }
            .emit(d);
            checksum::pseudo_v6(
                from.octets(),
                orig_src.octets(),
                PROTO_ICMPV6,
                icmp_len as u32,
            )
        },
    );
    if sent {
        Ok(Verdict::Back(RouterStat::IcmpSent))
    } else {
        Err(reason)
    }
}

/// Whether this core may ask for `key` now (one request per `ARP_RETRY_MS` per core).
fn resolve_due(s: &mut CoreState, key: u64) -> bool {
    super::request_due(&mut s.resolve_sent, key, s.now_ms)
}

/// Turns `p` into an ARP request (IPv4) or a Neighbor Solicitation (IPv6) for `addr` from
/// interface `out`.
fn build_request<B: PacketBuf>(p: &mut B, out: &RifEntry, addr: u128) -> bool {
    if addr >> 32 == 0xffff {
        let target = addr as u32;
        out.v4_source(target)
            .is_some_and(|from| build_arp_request(p, out.mac, from, target))
    } else {
        out.v6_source(addr)
            .is_some_and(|from| build_ns(p, out.mac, from, addr))
    }
}

/// A next-hop key (IPv4 mapped) in words.
fn addr_str(addr: u128) -> String {
    if addr >> 32 == 0xffff {
        Ipv4Addr::from(addr as u32).to_string()
    } else {
        Ipv6Addr::from(addr).to_string()
    }
}

/// Most packets one core holds while their next hops resolve.
pub const PENDING_MAX: usize = 64;
/// Most packets held for one next hop (Linux keeps a few per unresolved neighbour too).
pub const PENDING_PER_HOP: usize = 8;
/// How long a held packet waits for its next hop before it is dropped (`router.unresolved`).
pub const PENDING_MS: u64 = 1000;

/// A packet waiting for its next hop's MAC.
pub struct Held<B> {
    p: B,
    rif_in: u16,
    in_net: NetIdx,
    in_port: u16,
    net: NetIdx,
    addr: u128,
    since_ms: u64,
    generation: u64,
    /// Arrival order: released packets leave in it.
    seq: u64,
}

/// One core's bounded queue of packets whose next hop is being resolved: allocated once, at
/// start; when full (or [`PENDING_PER_HOP`] for one next hop) a packet is dropped and counted
/// instead. [`release_pending`] routes what has resolved and drops what waited too long.
pub struct Pending<B> {
    q: Vec<Option<Held<B>>>,
    n: usize,
    seq: u64,
}

impl<B> Default for Pending<B> {
    fn default() -> Self {
        Self {
            q: (0..PENDING_MAX).map(|_| None).collect(),
            n: 0,
            seq: 0,
        }
    }
}

impl<B> Pending<B> {
    /// Packets held now.
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    fn has_room(&self, net: NetIdx, addr: u128) -> bool {
        self.n < PENDING_MAX
            && self
                .q
                .iter()
                .flatten()
                .filter(|h| h.net == net && h.addr == addr)
                .count()
                < PENDING_PER_HOP
    }
    fn push(&mut self, mut h: Held<B>) {
        if let Some(slot) = self.q.iter_mut().find(|s| s.is_none()) {
            h.seq = self.seq;
            self.seq += 1;
            *slot = Some(h);
            self.n += 1;
        }
    }

    /// The next hops the held packets wait for, oldest first: (network, address as 128 bits,
    /// IPv4 mapped as `::ffff:a.b.c.d`). For a packet trace; never on the fast path.
    pub fn waiting_for(&self) -> Vec<(NetIdx, u128)> {
        let mut v: Vec<_> = self
            .q
            .iter()
            .flatten()
            .map(|h| (h.seq, h.net, h.addr))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, net, addr)| (net, addr)).collect()
    }

    /// Frees every held packet (shutdown). Returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.n;
        for s in &mut self.q {
            s.take();
        }
        self.n = 0;
        n
    }
}

/// Routes held packets whose next hop has resolved (into the transmit buffers, through the
/// normal router and output stages), and drops those that waited more than [`PENDING_MS`] or
/// whose tables have changed since (`router.unresolved`). Called once per poll round.
pub fn release_pending<B: PacketBuf>(
    held: &mut Pending<B>,
    t: &Tables,
    s: &mut CoreState,
    txb: &mut super::output::TxBuffers<B>,
    tx: &mut impl super::output::Tx<B>,
    c: &mut BatchCounters,
) {
    if held.n == 0 {
        return;
    }
    // Ready packets go through the stages in one-port batches, oldest first.
    let mut b: Batch<B> = Batch::default();
    let now = s.now_ms;
    let mut order = [(u64::MAX, 0usize); PENDING_MAX];
    for (k, slot) in held.q.iter().enumerate() {
        if let Some(h) = slot {
            order[k] = (h.seq, k);
        }
    }
    order.sort_unstable();
    for &(seq, k) in &order {
        if seq == u64::MAX {
            break;
        }
        let Some(h) = held.q[k].as_ref() else {
            continue;
        };
        let new_tables = h.generation != t.generation;
        let timed_out = now.saturating_sub(h.since_ms) > PENDING_MS;
        let stale = new_tables || timed_out;
        let ready = !stale
            && (t.l3.neighbor(h.net, h.addr).is_some()
                || s.l3neigh.lookup(h.net, h.addr).is_some());
        if !stale && !ready {
            continue;
        }
        let Some(mut h) = held.q[k].take() else {
            continue;
        };
        held.n -= 1;
        let next = if stale {
            c.drop(D::RouterUnresolved);
            // RFC 1812 5.2.7.1 / RFC 4443 3.1: the sender hears that the host is unreachable
            // (indices are only meaningful in the tables the packet was held under).
            if new_tables || !unreachable(&mut h, t, s, c) {
                drop(h.p);
                continue;
            }
            Next::Output(h.in_port)
        } else {
            c.event(E::NextHopReleased);
            Next::Route(h.rif_in)
        };
        if b.len > 0 && (b.in_port != h.in_port || b.len == super::BURST) {
            flush_released(&mut b, t, s, held, txb, tx, c);
        }
        if b.len == 0 {
            b.start(h.in_port, 0);
        }
        let i = b.len;
        b.pkts[i] = Some(h.p);
        b.meta[i] = super::Meta {
            network: h.in_net,
            next,
            ..Default::default()
        };
        b.len += 1;
    }
    if b.len > 0 {
        flush_released(&mut b, t, s, held, txb, tx, c);
    }
}

/// Turns a held packet whose next hop never answered into an ICMP host unreachable (IPv4) /
/// address unreachable (IPv6) to its sender. Whether it was.
fn unreachable<B: PacketBuf>(
    h: &mut Held<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &mut BatchCounters,
) -> bool {
    let Some(rif) = t.l3.rifs.get(h.rif_in as usize) else {
        return false;
    };
    let Some(r) = t.l3.routers.get(rif.router as usize) else {
        return false;
    };
    let x = Ctx {
        t,
        r,
        rif_in: h.rif_in,
        rif,
    };
    let d = h.p.data();
    let et = if d.len() >= 14 {
        u16::from_be_bytes([d[12], d[13]])
    } else {
        0
    };
    let sent = match et {
        EtherType::IPV4 => icmp_v4(
            &mut h.p,
            &x,
            s,
            c,
            IcmpHead {
                ty: 3,
                code: 1,
                word: 0,
            },
            D::RouterUnresolved,
        ),
        EtherType::IPV6 => icmp_v6(
            &mut h.p,
            &x,
            s,
            c,
            IcmpHead {
                ty: 1,
                code: 3,
                word: 0,
            },
            D::RouterUnresolved,
        ),
        _ => Err(D::RouterUnresolved),
    };
    if sent.is_ok() {
        s.router.add(rif.router, [0, 0, 1, 0]);
    }
    sent.is_ok()
}

fn flush_released<B: PacketBuf>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    held: &mut Pending<B>,
    txb: &mut super::output::TxBuffers<B>,
    tx: &mut impl super::output::Tx<B>,
    c: &mut BatchCounters,
) {
    s.flows.hits = 0;
    s.flows.cand = 0;
    route(b, t, s, held, c, &mut super::NoTrace);
    if t.firewall {
        super::firewall::ingress(b, t, s, c, &mut super::NoTrace);
    }
    super::output::run(b, t, s, txb, tx, c, &mut super::NoTrace);
    b.len = 0;
}

/// Announces the floating IPs that `t` answers for and `prev` (the tables before; none at
/// start) did not, with a gratuitous ARP each (an ARP request for the address from itself,
/// as `arping -U` and Neutron's l3 agent send it) out of the external network's provider port,
/// so upstream caches learn the gateway MAC at once when a floating IP is associated or moves
/// here. `alloc` gives a buffer. Returns how many were sent, or `None` when the pool ran out
/// (call again later: some may go twice, which is harmless).
pub fn announce_floating_ips<B: PacketBuf>(
    prev: Option<&Tables>,
    t: &Tables,
    mut alloc: impl FnMut() -> Option<B>,
    txb: &mut super::output::TxBuffers<B>,
    tx: &mut impl super::output::Tx<B>,
    c: &mut BatchCounters,
) -> Option<usize> {
    let before: &[crate::tables::router::Announce] = prev.map_or(&[], |p| &p.l3.announce);
    let mut sent = 0;
    for a in
        t.l3.announce
            .iter()
            .filter(|a| before.binary_search(a).is_err())
    {
        let mut p = alloc()?;
        if !build_arp_request(&mut p, MacAddr(a.mac), a.ip, a.ip) {
            continue;
        }
        c.event(E::GarpSent);
        super::output::send_to(p, a.port, a.net, t, txb, tx, c);
        sent += 1;
    }
    Some(sent)
}

/// A broadcast ARP request for `target` from (`mac`, `from`), 60 bytes.
fn build_arp_request<B: PacketBuf>(p: &mut B, mac: MacAddr, from: u32, target: u32) -> bool {
    const LEN: usize = 60;
    if !set_len(p, LEN) {
        return false;
    }
    let d = p.data_mut();
    EthernetRepr {
        dst: MacAddr::BROADCAST,
        src: mac,
        ethertype: EtherType::ARP,
    }
    .emit(d);
    ArpRepr {
        operation: OP_REQUEST,
        sender_mac: mac,
        sender_ip: Ipv4Addr::from(from),
        target_mac: MacAddr::ZERO,
        target_ip: Ipv4Addr::from(target),
    }
    .emit(&mut d[14..]);
    d[14 + ARP_LEN..].fill(0);
    true
}

/// A Neighbor Solicitation for `target` to its solicited-node multicast address (RFC 4861
/// 7.2.2), with our link-layer address.
fn build_ns<B: PacketBuf>(p: &mut B, mac: MacAddr, from: u128, target: u128) -> bool {
    const LEN: usize = 14 + 40 + 24 + 8;
    if !set_len(p, LEN) {
        return false;
    }
    let t = target.to_be_bytes();
    let dst_ip = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | t[13] as u16,
        u16::from_be_bytes([t[14], t[15]]),
    );
    let d = p.data_mut();
    EthernetRepr {
        dst: MacAddr([0x33, 0x33, 0xff, t[13], t[14], t[15]]),
        src: mac,
        ethertype: EtherType::IPV6,
    }
    .emit(d);
    let from = Ipv6Addr::from(from);
    Ipv6Repr {
        src: from,
        dst: dst_ip,
        next_header: PROTO_ICMPV6,
        payload_len: 32,
        hop_limit: 255,
    }
    .emit(&mut d[14..]);
    let m = &mut d[54..LEN];
    m[0] = NEIGHBOR_SOLICIT;
    m[1] = 0;
    m[2..8].fill(0);
    m[8..24].copy_from_slice(&t);
    m[24] = 1;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac.0);
    let ph = checksum::pseudo_v6(from.octets(), dst_ip.octets(), PROTO_ICMPV6, 32);
    let cs = !(checksum::sum(m, ph) as u16);
    m[2..4].copy_from_slice(&cs.to_be_bytes());
    true
}
