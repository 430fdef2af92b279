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
use crate::tables::{fdb_key48, Tables};
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

        if port.learn {
            let src = eth.src();
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
            if let Some(out) = last_out {
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
            }
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
