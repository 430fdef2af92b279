//! Stage `classify`: first look at every received frame.
//!
//! Reads: `Tables::ports` (ingress port state, network of an instance port, largest frame).
//! Writes: `Meta::network` of frames from instance ports (provider ports get theirs from the
//! VLAN in the `provider` stage); the batch's received byte count.
//! Next: `Continue`, or a drop.
//! Drops: `classify.runt` (< 14 bytes), `classify.port_down`, `classify.oversize`,
//! `classify.bad_src_mac` (multicast or all-zero source: never a valid sender),
//! `classify.no_network` (an instance port whose Neutron port has no network here).
use super::{Batch, Next, Tracer};
use crate::counters::{BatchCounters, DropReason};
use crate::packet::eth::{mac48_at, mac48_is_multicast};
use crate::packet::{PacketBuf, ETH_HDR_LEN};
use crate::tables::{PortKind, Tables, NO_NET};
use crate::trace;

pub fn run<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let Some(port) = t.ports.get(b.in_port as usize) else {
        for i in 0..b.len {
            b.drop_pkt(i, DropReason::PortDown, c);
        }
        return;
    };
    // What holds for the whole port, decided once: a frame that passes the per-frame checks
    // too goes on with the port's network, the rest take the checks in order, out of line.
    let port_ok = port.up && !(port.kind == PortKind::Instance && port.network == NO_NET);
    // Summed here and added once: not a read-modify-write of the batch per frame.
    let mut rx_bytes = 0u64;
    for i in 0..b.len {
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        let len = p.pkt_len();
        rx_bytes += len as u64;
        let d = p.data();
        if !T::ON && port_ok && len <= port.max_frame && d.len() >= ETH_HDR_LEN && !bad_src(d) {
            b.meta[i].network = port.network;
            continue;
        }
        match verdict(port, d, len) {
            Some(r) => {
                trace!(
                    tr,
                    i,
                    "classify",
                    "drop {} (port {}, {} bytes, max {})",
                    r.name(),
                    port.name,
                    len,
                    port.max_frame
                );
                b.drop_pkt(i, r, c);
            }
            None => {
                trace!(
                    tr,
                    i,
                    "classify",
                    "in_port {} ({:?}), {} bytes",
                    port.name,
                    port.kind,
                    len
                );
                debug_assert_eq!(b.meta[i].next, Next::Continue);
                b.meta[i].network = port.network;
            }
        }
    }
    b.rx_bytes += rx_bytes;
}

/// Why a frame of `len` bytes (`d` its first segment) from `port` is dropped, in the order the
/// checks are made (a runt first), or `None`.
#[cold]
#[inline(never)]
fn verdict(port: &crate::tables::PortEntry, d: &[u8], len: usize) -> Option<DropReason> {
    if d.len() < ETH_HDR_LEN {
        Some(DropReason::Runt)
    } else if !port.up {
        Some(DropReason::PortDown)
    } else if len > port.max_frame {
        Some(DropReason::Oversize)
    } else if bad_src(d) {
        Some(DropReason::BadSrcMac)
    } else if port.kind == PortKind::Instance && port.network == NO_NET {
        Some(DropReason::NoNetwork)
    } else {
        None
    }
}

/// A multicast or all-zero source MAC (the caller has checked `d` holds a header).
#[inline(always)]
fn bad_src(d: &[u8]) -> bool {
    let src = mac48_at(d, 6);
    mac48_is_multicast(src) || src == 0
}
