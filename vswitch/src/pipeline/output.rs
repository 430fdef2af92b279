//! Stage `output`: moves decided packets into per-port transmit buffers.
//!
//! Reads: `Tables::ports`, `Tables::networks` (flood lists, segments).
//! Writes: the core's [`TxBuffers`]; frees dropped packets in bulk.
//! Next: none (terminal).
//! Drops: `output.no_mbuf` (no buffer for a flood copy), `output.no_headroom` (VLAN push),
//! `output.egress_port_down`, `output.tx_full` (counted at flush).
//!
//! A flooded frame is copied once per extra destination (the last destination gets the
//! original). Copies, not reference-counted clones, because each egress may rewrite headers
//! (a provider port pushes its VLAN tag).
use super::{Batch, Next, Tracer, BURST};
use crate::counters::{BatchCounters, DropReason};
use crate::packet::PacketBuf;
use crate::tables::Tables;
use crate::trace;

/// Something that transmits a burst on a port (a DPDK tx queue, or a test sink).
pub trait Tx<B> {
    /// Sends `pkts[..n]`; sent ones leave their slot (`None`). Returns how many were sent.
    fn tx(&mut self, port: u16, pkts: &mut [Option<B>; BURST], n: usize) -> usize;
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
                })
                .collect(),
        }
    }

    /// Queues one packet for `port`, flushing first if the buffer is full.
    #[inline]
    pub fn push(
        &mut self,
        port: u16,
        p: B,
        tx: &mut impl Tx<B>,
        c: &mut BatchCounters,
        stats: &mut [TxStats],
    ) {
        let Some(tb) = self.bufs.get_mut(port as usize) else {
            c.drop(DropReason::EgressDown);
            return;
        };
        if tb.n == BURST {
            Self::flush_one(tb, port, tx, c, stats);
        }
        tb.bytes += p.pkt_len() as u64;
        tb.pkts[tb.n] = Some(p);
        tb.n += 1;
    }

    fn flush_one(
        tb: &mut TxBuf<B>,
        port: u16,
        tx: &mut impl Tx<B>,
        c: &mut BatchCounters,
        stats: &mut [TxStats],
    ) {
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
        if let Some(s) = stats.get_mut(port as usize) {
            s.packets += sent as u64;
            s.bytes += tb.bytes;
        }
        tb.n = 0;
        tb.bytes = 0;
    }

    /// Sends everything buffered (end of a poll round).
    pub fn flush(&mut self, tx: &mut impl Tx<B>, c: &mut BatchCounters, stats: &mut [TxStats]) {
        for (port, tb) in self.bufs.iter_mut().enumerate() {
            Self::flush_one(tb, port as u16, tx, c, stats);
        }
    }
}

/// Moves every packet of the batch to its destination(s) and frees the dropped ones.
pub fn run<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    txb: &mut TxBuffers<B>,
    tx: &mut impl Tx<B>,
    c: &mut BatchCounters,
    stats: &mut [TxStats],
    tr: &mut T,
) {
    let in_port = b.in_port;
    // The egress plan of the last (port, network) pair: a batch rarely has more than a few.
    let mut cached: (u32, Plan) = (u32::MAX, Err(DropReason::EgressDown));
    for i in 0..b.len {
        let Some(p) = b.pkts[i].take() else { continue };
        let net = b.meta[i].network;
        match b.meta[i].next {
            Next::Output(o) => {
                let key = (o as u32) << 16 | net as u32;
                if key != cached.0 {
                    cached = (key, plan(t, o, net));
                }
                send(p, o, cached.1, i, t, txb, tx, c, stats, tr)
            }
            Next::Flood => {
                let flood = &t.networks[net as usize].flood;
                let Some(last) = flood.iter().rposition(|&q| q != in_port) else {
                    c.drop(DropReason::FloodEmpty);
                    b.pkts[i] = Some(p);
                    continue;
                };
                // Copies for every destination but the last, made before any egress rewrite.
                for &q in &flood[..last] {
                    if q == in_port {
                        continue;
                    }
                    match p.try_clone() {
                        Some(cp) => send(cp, q, plan(t, q, net), i, t, txb, tx, c, stats, tr),
                        None => c.drop(DropReason::NoMbuf),
                    }
                }
                let q = flood[last];
                send(p, q, plan(t, q, net), i, t, txb, tx, c, stats, tr);
            }
            Next::Drop(_) | Next::Continue => {
                // Drops were counted by the stage that decided them; a packet still at Continue
                // means no stage claimed it, which is a bug, so it is dropped too.
                debug_assert!(!matches!(b.meta[i].next, Next::Continue));
                b.pkts[i] = Some(p);
            }
        }
    }
    B::free_bulk(&mut b.pkts[..b.len]);
}

/// What leaving by one port takes for a frame of one network: a VLAN tag to push (or none),
/// or the reason it cannot leave there.
type Plan = Result<Option<u16>, DropReason>;

#[inline]
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
    stats: &mut [TxStats],
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
            txb.push(port, p, tx, c, stats);
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
