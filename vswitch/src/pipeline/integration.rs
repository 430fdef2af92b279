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
use crate::packet::{EthernetFrame, PacketBuf};
use crate::tables::fdb::Learned;
use crate::tables::Tables;
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
        let net = &t.networks[net_idx as usize];
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
        let (src, dst) = (eth.src(), eth.dst());

        if port.learn {
            match t.fdb_lookup(net_idx, src) {
                Some(owner) if owner != in_port => c.event(Event::StaticMacConflict),
                Some(_) => {}
                None => match s.learn.learn(net_idx, src, in_port, s.now_ms) {
                    Learned::New => c.event(Event::Learned),
                    Learned::Moved => c.event(Event::MacMoved),
                    Learned::Full => c.event(Event::LearnTableFull),
                    Learned::Refreshed => {}
                },
            }
        }

        let next = if dst.is_multicast() {
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
        } else if let Some(out) = t.fdb_lookup(net_idx, dst) {
            trace!(
                tr,
                i,
                "integration",
                "network {}: {} -> port {} (static fdb)",
                net.name,
                dst,
                t.ports[out as usize].name
            );
            Next::Output(out)
        } else if let Some(out) = s
            .learn
            .lookup(net_idx, dst, s.now_ms)
            .filter(|&o| (o as usize) < t.ports.len())
        {
            trace!(
                tr,
                i,
                "integration",
                "network {}: {} -> port {} (learned)",
                net.name,
                dst,
                t.ports[out as usize].name
            );
            Next::Output(out)
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
        };
        match next {
            Next::Output(o) if o == in_port => {
                trace!(tr, i, "integration", "drop integration.hairpin");
                b.drop_pkt(i, DropReason::Hairpin, c);
            }
            Next::Flood if !net.flood.iter().any(|&q| q != in_port) => {
                trace!(tr, i, "integration", "drop integration.flood_empty");
                b.drop_pkt(i, DropReason::FloodEmpty, c);
            }
            Next::Flood => {
                c.event(Event::Flooded);
                b.meta[i].next = Next::Flood;
            }
            n => {
                c.event(Event::Unicast);
                b.meta[i].next = n;
            }
        }
    }
}
