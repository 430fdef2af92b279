//! The per-core pipeline: one module per stage, each a loop over a whole batch.
//!
//! Order for a batch received on one port: [`classify`] (length, port state, source MAC) ->
//! [`provider`] (physnet VLAN -> network on provider ports; an instance port's network) ->
//! [`tunnel::decap`] (VXLAN -> network on the overlay port) -> [`router::dvr_ingress`]
//! (another host's DVR MAC -> gateway MAC) -> [`port_security`] (Neutron anti-spoofing on
//! instance ports) -> [`responders`] (ARP/ND for gateway addresses, l2population's ARP
//! responder) -> [`integration`] (per-network FDB, learning, flood decision; a
//! gateway MAC hands the frame to the router) -> [`router::route`] (FIB, TTL, MAC rewrite, L2
//! lookup in the egress network, ICMP) -> [`output`] (VLAN push on provider egress, VXLAN
//! encap, flood copies, per-port tx buffers). A stage only touches packets whose verdict is still
//! [`Next::Continue`]; a drop records its [`DropReason`] and the packet is freed in bulk at the
//! end. Stages never allocate, lock, log or panic.
//!
//! Every stage is generic over a [`Tracer`]: the production copy uses [`NoTrace`], whose calls
//! compile to nothing; `trace` runs the same code with a recorder and explains every decision.

pub mod classify;
pub mod conntrack;
pub mod firewall;
pub mod flowcache;
pub mod integration;
pub mod nat;
pub mod output;
pub mod port_security;
pub mod provider;
pub mod router;
pub mod trace;
pub mod tunnel;

use crate::counters::{BatchCounters, DropReason, RouterCounters, TunnelCounters};
use crate::packet::PacketBuf;
use crate::tables::fdb::LearnTable;
use crate::tables::l3neigh::L3Neighbors;
use crate::tables::neighbor::NeighborTable;
use crate::tables::{NetIdx, Tables, NO_NET};
pub use trace::{NoTrace, TraceLog, Tracer};

/// The most packets in a batch (one rx burst).
pub const BURST: usize = 32;

/// What happens to a packet next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Still going through the stages.
    Continue,
    /// Dropped, with the reason counted.
    Drop(DropReason),
    /// To one port.
    Output(u16),
    /// To every port of its network except the ingress one (and, from a local port, to every
    /// remote VTEP of the network: head-end replication).
    Flood,
    /// Encapsulated to a remote VTEP (index into `Tables::vteps`).
    Tunnel(u16),
    /// To a router interface on this host (index into `Tables::l3.rifs`): the router stage
    /// decides what follows.
    Route(u16),
    /// To every local port of its network except the ingress one, never to remote VTEPs (the
    /// router's own ARP requests and Neighbor Solicitations).
    FloodLocal,
    /// Back out of the ingress port (ARP replies built in place).
    Reply,
    /// Used up by the switch itself (an underlay ARP reply that taught us a neighbour).
    Consumed,
    /// To the worker core that owns the packet's connection: core index, the stage it resumes
    /// at ([`firewall::STAGE_EGRESS`] or [`firewall::STAGE_INGRESS`]) and, for the latter, the
    /// instance port it was about to leave by.
    Handoff(u16, u8, u16),
}

/// Per-packet metadata carried beside the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// The network (the seed's "local VLAN": metadata only, never on the wire).
    pub network: NetIdx,
    pub next: Next,
    /// The remote VTEP a decapsulated frame came from (for inner MAC learning).
    pub from_vtep: u16,
    /// The router translated its addresses (a floating IP): the instance's security groups
    /// mark the connection as one that lives through that floating IP.
    pub translated: bool,
    /// The router forwarded an IPv4 packet larger than this egress MTU with DF clear: `output`
    /// sends it in fragments of at most this many bytes (0: as it is).
    pub frag_mtu: u16,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            translated: false,
            frag_mtu: 0,
            network: NO_NET,
            next: Next::Continue,
            from_vtep: u16::MAX,
        }
    }
}

/// Up to [`BURST`] packets received on one port, with parallel metadata.
pub struct Batch<B> {
    pub pkts: [Option<B>; BURST],
    pub meta: [Meta; BURST],
    pub len: usize,
    /// The port every packet of this batch arrived on.
    pub in_port: u16,
    /// Bytes received in this batch (summed by `classify`, which reads every length anyway).
    pub rx_bytes: u64,
}

impl<B> Default for Batch<B> {
    fn default() -> Self {
        Self {
            pkts: std::array::from_fn(|_| None),
            meta: [Meta::default(); BURST],
            len: 0,
            in_port: 0,
            rx_bytes: 0,
        }
    }
}

impl<B: PacketBuf> Batch<B> {
    /// Resets metadata for `len` freshly received packets from `in_port`.
    #[inline]
    pub fn start(&mut self, in_port: u16, len: usize) {
        self.in_port = in_port;
        self.len = len;
        self.rx_bytes = 0;
        for m in &mut self.meta[..len] {
            *m = Meta::default();
        }
    }

    /// Marks packet `i` dropped for `r` and counts it.
    #[inline(always)]
    pub fn drop_pkt(&mut self, i: usize, r: DropReason, c: &mut BatchCounters) {
        self.meta[i].next = Next::Drop(r);
        c.drop(r);
    }
}

/// State a core owns and the stages update.
#[derive(Debug)]
pub struct CoreState {
    pub learn: LearnTable,
    /// The worker's clock, read once per poll round (injected, so tests control time).
    pub now_ms: u64,
    /// The underlay ARP cache, shared by every core (lock-free).
    pub neigh: std::sync::Arc<NeighborTable>,
    /// When this core last sent an ARP request for an underlay address: (IPv4, ms), a few
    /// slots, so an unresolved VTEP costs one request per [`tunnel::ARP_RETRY_MS`], not one per
    /// packet.
    pub arp_sent: [(u64, u64); 8],
    /// This core's per-VTEP and per-VNI counters.
    pub tunnel: std::sync::Arc<TunnelCounters>,
    /// The encapsulation plan of the last (VTEP, network) of this batch.
    pub encap: tunnel::EncapCache,
    /// Next hops the routers resolved (shared by every core, lock-free).
    pub l3neigh: std::sync::Arc<L3Neighbors>,
    /// This core's per-router counters.
    pub router: std::sync::Arc<RouterCounters>,
    /// ICMP error rate limit: a token bucket (tokens, last refill in ms).
    pub icmp_tokens: u32,
    pub icmp_refill_ms: u64,
    /// When this core last asked for a router next hop: (key, ms), as `arp_sent`.
    pub resolve_sent: [(u64, u64); 8],
    /// This core's cache of routing decisions.
    pub route_cache: router::RouteCache,
    /// This core's connection table and security-group counters.
    pub fw: firewall::FwCore,
    /// The firewall stages' parsed flows of the batch in flight.
    pub fw_flows: firewall::Flows,
    /// This core's cache of the stages' decisions for established connections.
    pub flows: flowcache::FlowCache,
}

/// Local answers to ARP and Neighbor Discovery, in one pass over the batch: the routers'
/// gateway addresses ([`router::gateway_respond`]), then l2population's ARP responder
/// ([`tunnel::arp_respond`]). Frames answered become `Reply` (or `Consumed`); the rest go on.
#[inline(never)]
pub fn responders<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let gw = router::gateway_scope(t, b.in_port);
    let l2pop = tunnel::arp_responder_active(t, b.in_port);
    if gw.is_none() && !l2pop {
        return;
    }
    for i in 0..b.len {
        if b.meta[i].next != Next::Continue {
            continue;
        }
        let net = b.meta[i].network;
        let Some(p) = b.pkts[i].as_mut() else {
            continue;
        };
        let d = p.data();
        if d.len() < 14 {
            continue;
        }
        let et = u16::from_be_bytes([d[12], d[13]]);
        if et != crate::packet::EtherType::ARP && et != crate::packet::EtherType::IPV6 {
            continue;
        }
        let mut next = None;
        if let Some(from_instance) = gw {
            next = router::gateway_respond(p, t, s, net, from_instance, et, i, c, tr);
        }
        if next.is_none() && l2pop && et == crate::packet::EtherType::ARP {
            next = tunnel::arp_respond(p, t, net, i, c, tr);
        }
        if let Some(n) = next {
            b.meta[i].next = n;
        }
    }
}

/// Whether a core may send a request (ARP, NS) for `key` now: at most one per
/// [`tunnel::ARP_RETRY_MS`] per key, remembered in a few (key, ms) slots, the oldest reused.
pub(crate) fn request_due(slots: &mut [(u64, u64)], key: u64, now: u64) -> bool {
    let slot = slots
        .iter()
        .position(|&(k, _)| k == key)
        .unwrap_or_else(|| {
            slots
                .iter()
                .enumerate()
                .min_by_key(|(_, &(_, at))| at)
                .map_or(0, |(i, _)| i)
        });
    let Some(&(k, at)) = slots.get(slot) else {
        return true;
    };
    if k == key && at != 0 && now.saturating_sub(at) < tunnel::ARP_RETRY_MS {
        return false;
    }
    slots[slot] = (key, now.max(1));
    true
}

/// Connections a [`CoreState`] tracks until the runtime gives it the configured table.
const DEFAULT_CT_CAPACITY: usize = 4096;

/// Shared state every core's [`CoreState`] points at.
#[derive(Debug, Clone)]
pub struct SharedState {
    pub neigh: std::sync::Arc<NeighborTable>,
    pub l3neigh: std::sync::Arc<L3Neighbors>,
}

impl CoreState {
    pub fn new(
        learn_capacity: usize,
        aging_ms: u64,
        shared: &SharedState,
        tunnel: std::sync::Arc<TunnelCounters>,
        router: std::sync::Arc<RouterCounters>,
    ) -> Self {
        Self {
            learn: LearnTable::new(learn_capacity, aging_ms),
            now_ms: 0,
            neigh: shared.neigh.clone(),
            arp_sent: [(0, 0); 8],
            tunnel,
            encap: Default::default(),
            l3neigh: shared.l3neigh.clone(),
            router,
            icmp_tokens: router::ICMP_BURST,
            icmp_refill_ms: 0,
            resolve_sent: [(0, 0); 8],
            route_cache: Default::default(),
            fw: firewall::FwCore::new(
                conntrack::Conntrack::new(
                    DEFAULT_CT_CAPACITY,
                    conntrack::Timeouts::default(),
                    true,
                ),
                0,
                1,
            ),
            fw_flows: Default::default(),
            flows: Default::default(),
        }
    }
}

/// Runs every decision stage over a batch; afterwards each packet's `next` is a drop, an
/// output port or a flood. [`output::run`] then moves the packets.
#[inline]
pub fn process<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    held: &mut router::Pending<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    classify::run(b, t, c, tr);
    provider::ingress(b, t, c, tr);
    tunnel::decap(b, t, s, c, tr);
    // Established connections whose way the stages worked out before skip them; the others
    // are learnt from once the stages are done (never while tracing: trace shows the stages;
    // never on a host that only switches, where a hit costs more than the stages).
    let learning = if !T::ON && s.flows.enabled && t.flow_cache {
        flowcache::lookup(b, t, s, c);
        // A batch of established flows the cache answered whole (the usual case under
        // load) skips the loops of the stages below.
        if s.flows.settled {
            return;
        }
        s.flows.cand != 0
    } else {
        s.flows.hits = 0;
        s.flows.cand = 0;
        s.flows.settled = false;
        false
    };
    // The routing stages stay out of line behind cheap checks, so a host (or a batch) without
    // routers keeps the switching loop as small as it was. After the flow cache: a frame from
    // another host's distributed router is cached as it arrived, its new source MAC with the
    // rest of what the stages do to it.
    if !t.l3.dvr_macs.is_empty() {
        router::dvr_ingress(b, t, &mut s.flows, c, tr);
    }
    let before = if learning {
        flowcache::unrepeatable(c)
    } else {
        0
    };
    port_security::run(b, t, c, tr);
    if t.firewall {
        firewall::egress(b, t, s, c, tr);
    }
    switch_and_route(b, t, s, held, c, tr);
    if learning {
        flowcache::learn(b, t, s, c, before);
    }
}

/// The stages after the egress firewall: local answers, switching, routing, ingress firewall.
#[inline(always)]
fn switch_and_route<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    held: &mut router::Pending<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    if !t.l3.rifs.is_empty() || !t.arp.is_empty() {
        responders(b, t, s, c, tr);
    }
    integration::run(b, t, s, c, tr);
    if !t.l3.rifs.is_empty() {
        router::route(b, t, s, held, c, tr);
    }
    if t.firewall {
        firewall::ingress(b, t, s, c, tr);
    }
}

/// Runs the rest of the stages for packets another core handed over because this core owns
/// their connections: all of them had reached `stage`, and arrived on `b.in_port`.
pub fn resume<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    stage: u8,
    t: &Tables,
    s: &mut CoreState,
    held: &mut router::Pending<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    // Nothing here came through the flow cache, and nothing is learnt from it.
    s.flows.hits = 0;
    s.flows.cand = 0;
    if stage == firewall::STAGE_EGRESS {
        firewall::egress(b, t, s, c, tr);
        switch_and_route(b, t, s, held, c, tr);
    } else if stage == firewall::STAGE_ROUTE {
        router::route(b, t, s, held, c, tr);
        if t.firewall {
            firewall::ingress(b, t, s, c, tr);
        }
    } else {
        firewall::ingress(b, t, s, c, tr);
    }
}

/// What a handed-over packet's `next` becomes on the core that resumes it: the ingress check
/// resumes with the port it was leaving by, SNAT with the router interface it arrived on, the
/// egress check from the start.
#[inline]
pub fn resumed_next(next: Next) -> Next {
    match next {
        Next::Handoff(_, firewall::STAGE_INGRESS, port) => Next::Output(port),
        Next::Handoff(_, firewall::STAGE_ROUTE, rif) => Next::Route(rif),
        _ => Next::Continue,
    }
}

/// One packet on its way to the core that owns its connection.
#[derive(Debug)]
pub struct Handoff<B> {
    pub p: B,
    pub meta: Meta,
    pub in_port: u16,
    pub stage: u8,
    /// The tables generation its metadata (network index) belongs to.
    pub generation: u64,
}

#[cfg(test)]
pub(crate) mod fip_tests;
#[cfg(test)]
pub(crate) mod firewall_tests;
#[cfg(test)]
pub(crate) mod router_tests;
#[cfg(test)]
mod snat_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
mod tunnel_tests;
