//! Stage `integration`: per-network L2 switching (the seed's br-int).
//!
//! Reads: `Tables::networks` (state, flood list), `Tables::fdb` (static MACs of local ports),
//! `Tables::ports`.
//! Writes: the core's [`LearnTable`](crate::tables::fdb::LearnTable) (source MACs seen on ports
//! that learn).
//! Next: `Output(port)` for a known destination, `Flood` for broadcast, multicast and unknown
//! unicast.
//! Drops: `integration.network_down`, `integration.hairpin` (destination is the ingress port),
//! `integration.flood_empty` (no other port on the network).
//!
//! Isolation: every lookup is keyed by the packet's network, so a frame can only ever reach
//! ports of its own network. A learned MAC never overrides a static one: a frame from a
//! provider port with the source MAC of a local instance port is forwarded but not learned
//! (`integration.static_mac_conflict`).
use super::{Batch, CoreState, Next, Tracer};
use crate::counters::{BatchCounters, DropReason, Event};
use crate::packet::eth::mac48_is_multicast;
use crate::packet::{EthernetFrame, PacketBuf};
use crate::tables::fdb::Learned;
use crate::tables::router::ROUTER_BIT;
use crate::tables::{fdb_key48, Dest, Tables, VTEP_BIT};
use crate::trace;

pub fn run<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let in_port = b.in_port;
    let Some(port) = t.ports.get(in_port as usize) else {
        return;
    };
    // Frames decapsulated from the overlay: their source is behind a VTEP, and they are never
    // sent back into the overlay (split horizon: every host floods to every other itself).
    let from_overlay = t.overlay.as_ref().is_some_and(|o| o.port == in_port);
    let learn_overlay = from_overlay && t.overlay.as_ref().is_some_and(|o| o.learn);
    // A batch usually carries a few flows: remember the last static FDB answer (the tables
    // cannot change within a batch, so this one-entry cache is always coherent).
    let mut last_key = u64::MAX;
    let mut last_out: Option<u16> = None;
    let (mut unicast, mut flooded) = (0u64, 0u64);
    for i in 0..b.len {
        if b.meta[i].next != Next::Continue {
            continue;
        }
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        let Ok(eth) = EthernetFrame::new_checked(p.data()) else {
            b.drop_pkt(i, DropReason::Runt, c);
            continue;
        };
        let net_idx = b.meta[i].network;
        let Some(net) = t.networks.get(net_idx as usize) else {
            b.drop_pkt(i, DropReason::NoNetwork, c);
            continue;
        };
        if !net.up {
            trace!(
                tr,
                i,
                "integration",
                "drop integration.network_down ({})",
                net.name
            );
            b.drop_pkt(i, DropReason::NetworkDown, c);
            continue;
        }
        let dst = eth.dst();

        if port.learn || learn_overlay {
            let src = eth.src();
            // What a learned entry points at: this port, or the VTEP the frame came from.
            let here = if from_overlay {
                VTEP_BIT | b.meta[i].from_vtep
            } else {
                in_port
            };
            match t.fdb_lookup(net_idx, src) {
                // A gateway MAC as source: a frame the router itself sent (or another host's
                // routed frame after `dvr_ingress`), never learned.
                Some(owner) if owner & VTEP_BIT == 0 && owner & ROUTER_BIT != 0 => {}
                Some(owner) if owner != here => c.event(Event::StaticMacConflict),
                Some(_) => {}
                None => match s.learn.learn(net_idx, src, here, s.now_ms) {
                    Learned::New => c.event(Event::Learned),
                    Learned::Moved => c.event(Event::MacMoved),
                    Learned::Full => c.event(Event::LearnTableFull),
                    Learned::Refreshed => {}
                },
            }
        }

        let dst48 = eth.dst_u64();
        let next = if mac48_is_multicast(dst48) {
            trace!(
                tr,
                i,
                "integration",
                "network {}: {} is {}: flood",
                net.name,
                dst,
                if dst.is_broadcast() {
                    "broadcast"
                } else {
                    "multicast"
                }
            );
            Next::Flood
        } else {
            let key = fdb_key48(net_idx, dst48);
            if key != last_key {
                last_key = key;
                last_out = t.fdb.get(&key).copied();
            }
            let (found, how) = match last_out {
                Some(d) => (Some(d), "static fdb"),
                None => (s.learn.lookup(net_idx, dst, s.now_ms), "learned"),
            };
            if let Some(next) = found.and_then(|d| dest_next(t, d)) {
                trace!(
                    tr,
                    i,
                    "integration",
                    "network {}: {} -> {} ({how})",
                    net.name,
                    dst,
                    describe(t, next)
                );
                next
            } else {
                trace!(
                    tr,
                    i,
                    "integration",
                    "network {}: {} unknown: flood",
                    net.name,
                    dst
                );
                Next::Flood
            }
        };
        match next {
            Next::Output(o) if o == in_port => {
                trace!(tr, i, "integration", "drop integration.hairpin");
                b.drop_pkt(i, DropReason::Hairpin, c);
            }
            Next::Tunnel(_) if from_overlay => {
                trace!(tr, i, "integration", "drop tunnel.split_horizon");
                b.drop_pkt(i, DropReason::TunnelSplitHorizon, c);
            }
            Next::Flood
                if !net.flood.iter().any(|&q| q != in_port)
                    && (from_overlay || net.flood_vteps.is_empty()) =>
            {
                trace!(tr, i, "integration", "drop integration.flood_empty");
                b.drop_pkt(i, DropReason::FloodEmpty, c);
            }
            Next::Flood => {
                flooded += 1;
                b.meta[i].next = Next::Flood;
            }
            n => {
                unicast += 1;
                b.meta[i].next = n;
            }
        }
    }
    c.events[Event::Unicast as usize] += unicast;
    c.events[Event::Flooded as usize] += flooded;
}

/// The verdict for an FDB destination that still exists in these tables.
#[inline(always)]
pub(crate) fn dest_next(t: &Tables, raw: u16) -> Option<Next> {
    match Dest::from_raw(raw) {
        Dest::Port(p) if (p as usize) < t.ports.len() => Some(Next::Output(p)),
        Dest::Vtep(v) if (v as usize) < t.vteps.len() => Some(Next::Tunnel(v)),
        Dest::Router(r) if (r as usize) < t.l3.rifs.len() => Some(Next::Route(r)),
        _ => None,
    }
}

/// A destination in words, for trace.
fn describe(t: &Tables, n: Next) -> String {
    match n {
        Next::Output(p) => format!("port {}", t.ports[p as usize].name),
        Next::Tunnel(v) => format!(
            "VTEP {} ({})",
            t.vteps[v as usize].ip, t.vteps[v as usize].host
        ),
        Next::Route(r) => {
            let rif = &t.l3.rifs[r as usize];
            format!(
                "router {} (interface {})",
                t.l3.routers[rif.router as usize].name, rif.port_id
            )
        }
        other => format!("{other:?}"),
    }
}
