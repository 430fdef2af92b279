//! Stage `output`: moves decided packets into per-port transmit buffers.
//!
//! Reads: `Tables::ports`, `Tables::networks` (flood lists, segments).
//! Writes: the core's [`TxBuffers`]; frees dropped packets in bulk.
//! Next: none (terminal).
//! Drops: `output.no_mbuf` (no buffer for a flood copy or a fragment), `output.no_headroom`
//! (VLAN push), `output.egress_port_down`, `output.tx_full` (counted at flush),
//! `router.needs_fragmentation` (a packet the router marked for fragments that cannot be cut).
//!
//! A packet the router forwarded larger than the egress MTU without DF (`Meta::frag_mtu`)
//! leaves in fragments ([`crate::packet::frag`]), each sent the way the packet would have gone.
//!
//! A flooded frame is copied once per extra destination (the last destination gets the
//! original). Copies, not reference-counted clones, because each egress may rewrite headers
//! (a provider port pushes its VLAN tag).
use super::tunnel::Encap;
use super::{Batch, CoreState, Next, Tracer, BURST};
use crate::counters::{BatchCounters, DropReason};
use crate::packet::PacketBuf;
use crate::tables::Tables;
use crate::trace;

/// Something that transmits a burst on a port (a DPDK tx queue, or a test sink).
pub trait Tx<B> {
    /// Sends `pkts[..n]`; sent ones leave their slot (`None`). Returns how many were sent.
    fn tx(&mut self, port: u16, pkts: &mut [Option<B>; BURST], n: usize) -> usize;

    /// Gives a packet to worker `core`, which owns its connection. `Err` gives it back when
    /// that core's ring is full (or there is no such core).
    fn handoff(&mut self, core: u16, h: super::Handoff<B>) -> Result<(), super::Handoff<B>> {
        let _ = core;
        Err(h)
    }
}

/// One core's transmit buffers: up to [`BURST`] packets per port, flushed when full and at the
/// end of every poll round.
pub struct TxBuffers<B> {
    bufs: Vec<TxBuf<B>>,
}

struct TxBuf<B> {
    pkts: [Option<B>; BURST],
    n: usize,
    /// Bytes queued, for the port's tx byte counter.
    bytes: u64,
    /// What flushes have sent since the counters were last taken.
    sent: TxStats,
}

impl<B: PacketBuf> TxBuf<B> {
    /// Queues `p`, flushing first if the buffer is full.
    #[inline(always)]
    fn add(&mut self, port: u16, p: B, tx: &mut impl Tx<B>, c: &mut BatchCounters) {
        if self.n >= BURST {
            TxBuffers::flush_one(self, port, tx, c);
        }
        self.bytes += p.pkt_len() as u64;
        if let Some(to) = self.pkts.get_mut(self.n) {
            *to = Some(p);
            self.n += 1;
        }
    }
}

/// How many packets the slots hold.
#[inline(always)]
fn queued<B>(pkts: &[Option<B>]) -> u64 {
    pkts.iter().flatten().count() as u64
}

/// Per-port results of a flush, for the core's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxStats {
    pub packets: u64,
    pub bytes: u64,
}

impl<B: PacketBuf> TxBuffers<B> {
    pub fn new(n_ports: usize) -> Self {
        Self {
            bufs: (0..n_ports)
                .map(|_| TxBuf {
                    pkts: std::array::from_fn(|_| None),
                    n: 0,
                    bytes: 0,
                    sent: TxStats::default(),
                })
                .collect(),
        }
    }

    /// Queues one packet for `port`, flushing first if the buffer is full.
    #[inline]
    pub fn push(&mut self, port: u16, p: B, tx: &mut impl Tx<B>, c: &mut BatchCounters) {
        let Some(tb) = self.bufs.get_mut(port as usize) else {
            c.drop(DropReason::EgressDown);
            return;
        };
        tb.add(port, p, tx, c);
    }

    /// Queues every packet of `pkts` for `port` in order (their slots left empty), flushing
    /// whenever the buffer fills. `false`: no such port; each packet is counted and left in
    /// its slot for the caller to free.
    #[inline]
    pub fn push_all(
        &mut self,
        port: u16,
        pkts: &mut [Option<B>],
        tx: &mut impl Tx<B>,
        c: &mut BatchCounters,
    ) -> bool {
        let Some(tb) = self.bufs.get_mut(port as usize) else {
            c.drop_n(DropReason::EgressDown, queued(pkts));
            return false;
        };
        for slot in pkts {
            if let Some(p) = slot.take() {
                tb.add(port, p, tx, c);
            }
        }
        true
    }

    fn flush_one(tb: &mut TxBuf<B>, port: u16, tx: &mut impl Tx<B>, c: &mut BatchCounters) {
        if tb.n == 0 {
            return;
        }
        let n = tb.n;
        let sent = tx.tx(port, &mut tb.pkts, n);
        if sent < n {
            // Sent bytes are unknown per packet once some failed: subtract the unsent ones.
            for slot in &mut tb.pkts[sent..n] {
                if let Some(p) = slot.take() {
                    tb.bytes -= p.pkt_len() as u64;
                    c.drop(DropReason::TxFull);
                }
            }
        }
        tb.sent.packets += sent as u64;
        tb.sent.bytes += tb.bytes;
        tb.n = 0;
        tb.bytes = 0;
    }

    /// What was sent on each port since the last call, resetting it (for the core's counters).
    pub fn take_sent(&mut self) -> impl Iterator<Item = TxStats> + '_ {
        self.bufs.iter_mut().map(|tb| std::mem::take(&mut tb.sent))
    }

    /// Sent so far on `port`, without resetting (tests).
    pub fn sent(&self, port: u16) -> TxStats {
        self.bufs
            .get(port as usize)
            .map_or_else(TxStats::default, |tb| tb.sent)
    }

    /// Sends everything buffered (end of a poll round).
    pub fn flush(&mut self, tx: &mut impl Tx<B>, c: &mut BatchCounters) {
        for (port, tb) in self.bufs.iter_mut().enumerate() {
            Self::flush_one(tb, port as u16, tx, c);
        }
    }
}

/// Moves every packet of the batch to its destination(s) and frees the dropped ones.
pub fn run<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    txb: &mut TxBuffers<B>,
    tx: &mut impl Tx<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let from = Ingress {
        port: b.in_port,
        overlay: t.overlay.as_ref().is_some_and(|o| o.port == b.in_port),
    };
    s.encap = Default::default();
    // The usual batch under load: every packet of one network to one port, or to one remote
    // VTEP, whole. One plan, and the packets move without the per-packet dispatch (the trace
    // takes the general way, which explains each packet).
    if !T::ON {
        match one_way(b) {
            Some((Next::Output(port), net)) => {
                send_all(b, port, plan(t, port, net), txb, tx, c);
                return;
            }
            Some((Next::Tunnel(vtep), net)) => {
                let n = b.len.min(BURST);
                for (i, slot) in b.pkts[..n].iter_mut().enumerate() {
                    if let Some(p) = slot.take() {
                        tunnel_send(p, vtep, net, i, t, s, txb, tx, c, tr);
                    }
                }
                s.encap.flush(&s.tunnel);
                return;
            }
            _ => {}
        }
    }
    // The egress plan of the last (port, network) pair: a batch rarely has more than a few.
    let mut cached: (u32, Plan) = (u32::MAX, Err(DropReason::EgressDown));
    for i in 0..b.len {
        let Some(p) = b.pkts[i].take() else { continue };
        let m = &b.meta[i];
        // A packet handed to another core goes whole: that core sends it.
        if m.frag_mtu == 0 || matches!(m.next, Next::Handoff(..)) {
            // What is not sent is freed with the batch.
            if let Some(x) = dispatch(p, m, i, from, &mut cached, t, s, txb, tx, c, tr) {
                b.pkts[i] = Some(x);
            }
            continue;
        }
        // What the router forwarded in fragments: each one the way the packet would have
        // gone (the first first), whatever is left of it freed with the batch.
        let mut n = 0u64;
        let r = crate::packet::frag::fragment_v4(p, m.frag_mtu as usize, |q| {
            n += 1;
            // A fragment the egress refuses is freed here, counted by `dispatch`.
            drop(dispatch(q, m, i, from, &mut cached, t, s, txb, tx, c, tr));
        });
        c.events[crate::counters::Event::RouterFragments as usize] += n;
        match r {
            Ok(k) => trace!(
                tr,
                i,
                "output",
                "sent in {k} fragments of at most {} bytes",
                m.frag_mtu
            ),
            Err((rest, e)) => {
                let why = match e {
                    crate::packet::frag::FragError::Unfit => DropReason::RouterNeedsFragmentation,
                    crate::packet::frag::FragError::NoBuffer => DropReason::NoMbuf,
                };
                trace!(tr, i, "output", "drop {} after {n} fragments", why.name());
                c.drop(why);
                b.pkts[i] = rest;
            }
        }
    }
    s.encap.flush(&s.tunnel);
    B::free_bulk(&mut b.pkts[..b.len]);
}

/// Where every packet of the batch goes, and their network, when they all go one way (to
/// one port, or encapsulated to one VTEP) and none leaves in fragments.
#[inline(always)]
fn one_way<B>(b: &Batch<B>) -> Option<(Next, u16)> {
    let metas = b.meta.get(..b.len)?;
    let first = metas.first()?;
    let net = first.network;
    // Compared with a constant kind, each packet's check stays a few instructions.
    let all = |next: Next| {
        metas
            .iter()
            .all(|m| m.next == next && m.network == net && m.frag_mtu == 0)
            .then_some((next, net))
    };
    match first.next {
        Next::Output(port) => all(Next::Output(port)),
        Next::Tunnel(vtep) => all(Next::Tunnel(vtep)),
        _ => None,
    }
}

/// [`send`] for every packet of a batch [`one_way`] found going to `port`: what leaves is
/// queued on `port`, what the egress refuses is counted and freed with the batch.
#[inline(always)]
fn send_all<B: PacketBuf>(
    b: &mut Batch<B>,
    port: u16,
    plan: Plan,
    txb: &mut TxBuffers<B>,
    tx: &mut impl Tx<B>,
    c: &mut BatchCounters,
) {
    let pkts = &mut b.pkts[..b.len.min(BURST)];
    match plan {
        Ok(None) => {
            if txb.push_all(port, pkts, tx, c) {
                // Every slot is empty: nothing to free.
                return;
            }
        }
        Ok(Some(vid)) => {
            for slot in pkts.iter_mut() {
                let Some(p) = slot.as_mut() else { continue };
                match super::provider::push_tag(p, vid, c) {
                    Ok(()) => {
                        if let Some(p) = slot.take() {
                            txb.push(port, p, tx, c);
                        }
                    }
                    Err(r) => c.drop(r),
                }
            }
        }
        Err(r) => c.drop_n(r, queued(pkts)),
    }
    B::free_bulk(pkts);
}

/// Where the batch came from, as `dispatch` needs it for each packet.
#[derive(Clone, Copy)]
struct Ingress {
    port: u16,
    /// The overlay port (split horizon: never flooded back to VTEPs).
    overlay: bool,
}

/// Sends one packet (or one fragment of it) where its metadata says; returns it when it is to
/// be freed instead (dropped, counted where that was decided, or consumed by the switch).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dispatch<B: PacketBuf, T: Tracer>(
    p: B,
    m: &super::Meta,
    i: usize,
    from: Ingress,
    cached: &mut (u32, Plan),
    t: &Tables,
    s: &mut CoreState,
    txb: &mut TxBuffers<B>,
    tx: &mut impl Tx<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) -> Option<B> {
    let net = m.network;
    match m.next {
        Next::Output(o) => {
            let key = (o as u32) << 16 | net as u32;
            if key != cached.0 {
                *cached = (key, plan(t, o, net));
            }
            send(p, o, cached.1, i, t, txb, tx, c, tr)
        }
        Next::Tunnel(v) => tunnel_send(p, v, net, i, t, s, txb, tx, c, tr),
        Next::Reply => {
            trace!(
                tr,
                i,
                "output",
                "reply out of port {}",
                t.ports[from.port as usize].name
            );
            // Back the way it came: on a provider port, with the VLAN tag of its network
            // (taken off on the way in).
            let vid = t
                .ports
                .get(from.port as usize)
                .zip(t.networks.get(net as usize))
                .and_then(|(pe, ne)| super::provider::egress_vlan(pe, ne));
            send(p, from.port, Ok(vid), i, t, txb, tx, c, tr);
        }
        Next::Consumed => return Some(p),
        Next::Handoff(core, stage, _) => {
            trace!(tr, i, "output", "handed to core {core}");
            let h = super::Handoff {
                p,
                meta: *m,
                in_port: from.port,
                stage,
                generation: t.generation,
            };
            if let Err(h) = tx.handoff(core, h) {
                c.drop(DropReason::HandoffFull);
                return Some(h.p);
            } else {
                c.event(crate::counters::Event::ConntrackHandoff);
            }
        }
        Next::Flood | Next::FloodLocal => {
            let Some(n) = t.networks.get(net as usize) else {
                c.drop(DropReason::FloodEmpty);
                return Some(p);
            };
            // Head-end replication to the network's remote VTEPs, unless the frame came
            // from the overlay (every host floods to the others itself: split horizon).
            let local_only = from.overlay || m.next == Next::FloodLocal;
            let vteps: &[u16] = if local_only { &[] } else { &n.flood_vteps };
            // The router's own requests (gateway MAC as source) go to this host's instance
            // ports only, the ingress one included: never onto the fabric, where every
            // host's router has that MAC.
            let router_ask = m.next == Next::FloodLocal;
            let skip = if router_ask { u16::MAX } else { from.port };
            // What the security groups of instance ports judge a flooded copy by.
            let fl = t.firewall.then(|| super::conntrack::flow::parse(p.data()));
            let to = |q: u16| {
                q != skip
                    && (!router_ask
                        || t.ports
                            .get(q as usize)
                            .is_some_and(|pe| pe.kind == crate::tables::PortKind::Instance))
                    && fl
                        .as_ref()
                        .is_none_or(|f| super::firewall::flood_allowed(t, q, f))
            };
            let total = n.flood.iter().filter(|&&q| to(q)).count() + vteps.len();
            if total == 0 && fl.is_some() && n.flood.iter().any(|&q| q != skip) {
                // Every destination was an instance whose ingress rules refuse it.
                trace!(
                    tr,
                    i,
                    "output",
                    "flood refused by every destination's security groups"
                );
                c.drop(DropReason::FirewallIngressDenied);
                s.fw.ingress_drops += 1;
                return Some(p);
            }
            if total == 0 {
                c.drop(DropReason::FloodEmpty);
                return Some(p);
            }
            // Copies for every destination but the last, made before any egress rewrite;
            // the original goes to the last one.
            let mut orig = Some(p);
            let mut k = 0;
            let next_copy = |k: usize, orig: &mut Option<B>, c: &mut BatchCounters| {
                let x = if k == total {
                    orig.take()
                } else {
                    orig.as_ref().and_then(|o| o.try_clone())
                };
                if x.is_none() {
                    c.drop(DropReason::NoMbuf);
                }
                x
            };
            for &q in n.flood.iter().filter(|&&q| to(q)) {
                k += 1;
                if let Some(x) = next_copy(k, &mut orig, c) {
                    send(x, q, plan(t, q, net), i, t, txb, tx, c, tr);
                }
            }
            for &v in vteps {
                k += 1;
                if let Some(x) = next_copy(k, &mut orig, c) {
                    tunnel_send(x, v, net, i, t, s, txb, tx, c, tr);
                }
            }
        }
        Next::Drop(_) | Next::Continue | Next::Route(_) => {
            // Drops were counted by the stage that decided them; a packet still at Continue
            // means no stage claimed it, which is a bug, so it is dropped too.
            debug_assert!(!matches!(m.next, Next::Continue | Next::Route(_)));
            return Some(p);
        }
    }
    None
}

/// Encapsulation towards a remote VTEP, then into the overlay port's tx buffer. An unresolved
/// VTEP costs the frame (`tunnel.unresolved`), whose buffer carries the ARP request instead.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tunnel_send<B: PacketBuf, T: Tracer>(
    mut p: B,
    vtep: u16,
    net: u16,
    i: usize,
    t: &Tables,
    s: &mut CoreState,
    txb: &mut TxBuffers<B>,
    tx: &mut impl Tx<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let Some(oport) = t.overlay.as_ref().map(|o| o.port) else {
        c.drop(DropReason::EgressDown);
        return;
    };
    match super::tunnel::encap(&mut p, t, vtep, net, s, c) {
        Encap::Sent => {
            trace!(
                tr,
                i,
                "output",
                "vxlan to VTEP {} by port {}",
                t.vteps[vtep as usize].ip,
                t.ports[oport as usize].name
            );
            txb.push(oport, p, tx, c);
        }
        Encap::ArpRequest => {
            trace!(
                tr,
                i,
                "output",
                "drop tunnel.unresolved: VTEP {} not resolved, ARP request sent",
                t.vteps[vtep as usize].ip
            );
            c.drop(DropReason::TunnelUnresolved);
            txb.push(oport, p, tx, c);
        }
        Encap::Drop(r) => {
            trace!(tr, i, "output", "drop {}", r.name());
            c.drop(r);
        }
    }
}

/// What leaving by one port takes for a frame of one network: a VLAN tag to push (or none),
/// or the reason it cannot leave there.
type Plan = Result<Option<u16>, DropReason>;

#[inline]
/// Sends a frame the switch built itself (not from a batch) out of `port` for network `net`,
/// through the same egress processing (a provider port's VLAN tag).
pub fn send_to<B: PacketBuf>(
    p: B,
    port: u16,
    net: u16,
    t: &Tables,
    txb: &mut TxBuffers<B>,
    tx: &mut impl Tx<B>,
    c: &mut BatchCounters,
) {
    send(
        p,
        port,
        plan(t, port, net),
        0,
        t,
        txb,
        tx,
        c,
        &mut super::NoTrace,
    );
}

fn plan(t: &Tables, port: u16, net: u16) -> Plan {
    match (t.ports.get(port as usize), t.networks.get(net as usize)) {
        (Some(pe), Some(ne)) if pe.up => Ok(super::provider::egress_vlan(pe, ne)),
        _ => Err(DropReason::EgressDown),
    }
}

/// Egress processing for one destination, then into that port's tx buffer (or dropped).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn send<B: PacketBuf, T: Tracer>(
    mut p: B,
    port: u16,
    plan: Plan,
    i: usize,
    t: &Tables,
    txb: &mut TxBuffers<B>,
    tx: &mut impl Tx<B>,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let r = match plan {
        Ok(None) => Ok(()),
        Ok(Some(vid)) => super::provider::push_tag(&mut p, vid, c),
        Err(r) => Err(r),
    };
    match r {
        Ok(()) => {
            trace!(tr, i, "output", "tx port {}", t.ports[port as usize].name);
            txb.push(port, p, tx, c);
        }
        Err(r) => {
            trace!(
                tr,
                i,
                "output",
                "drop {} at port {}",
                r.name(),
                t.ports[port as usize].name
            );
            c.drop(r);
        }
    }
}
