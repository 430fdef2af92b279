//! Stage `provider`: physical networks (the seed's br-provider) and the network of each frame.
//!
//! Reads: `Tables::ports`, `Tables::physnets` (flat network and VLAN map per physnet),
//! `Tables::networks` (segment, for egress).
//! Writes: `Meta::network` of provider frames; pops the 802.1Q tag on ingress ([`ingress`]) and pushes it on
//! egress ([`egress`]).
//! Next: `Continue`, or a drop.
//! Drops: `provider.unknown_vlan`, `provider.bad_tpid` (802.1ad and legacy QinQ TPIDs),
//! `provider.tagged_on_flat`, `provider.untagged_no_flat`, `provider.truncated_tag`,
//! `classify.no_network` (a provider port no physnet maps to); on egress `output.no_headroom`.
//!
//! On a provider port the seed's step "the OVS provider bridge swaps actual VLAN tag 101 with the
//! internal VLAN tag" becomes: VLAN 101 selects the network, the tag is removed, and the network
//! index travels as metadata. Priority-tagged frames (VID 0) belong to the flat network.
use super::{Batch, Tracer};
use crate::counters::{BatchCounters, DropReason, Event};
use crate::packet::eth::EtherType;
use crate::packet::vlan::{self, VlanTag};
use crate::packet::PacketBuf;
use crate::tables::{NetworkEntry, PortEntry, PortKind, Segment, Tables, NO_NET};
use crate::trace;

pub fn ingress<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let Some(port) = t.ports.get(b.in_port as usize) else {
        return;
    };
    match (port.kind, port.physnet) {
        (PortKind::Provider, Some(pn)) => {
            let pn = &t.physnets[pn as usize];
            for i in 0..b.len {
                if b.meta[i].next != super::Next::Continue {
                    continue;
                }
                let Some(p) = b.pkts[i].as_mut() else {
                    continue;
                };
                let d = p.data();
                let etype = u16::from_be_bytes([d[12], d[13]]);
                let verdict = if etype == EtherType::VLAN {
                    // Only the VID is needed: read it in place (a whole `VlanTag` built on
                    // the stack and read back stalls on store-to-load forwarding).
                    match VlanTag::vid_of(d) {
                        None => Err(DropReason::TruncatedTag),
                        Some(0) if pn.flat != NO_NET => Ok((pn.flat, true, 0)),
                        Some(vid) => match pn.vlans[vid as usize] {
                            NO_NET if pn.flat != NO_NET => Err(DropReason::TaggedOnFlat),
                            NO_NET => Err(DropReason::UnknownVlan),
                            n => Ok((n, true, vid)),
                        },
                    }
                } else if vlan::is_tpid(etype) {
                    Err(DropReason::BadTpid)
                } else if pn.flat != NO_NET {
                    Ok((pn.flat, false, 0))
                } else {
                    Err(DropReason::UntaggedNoFlat)
                };
                match verdict {
                    Ok((net, tagged, vid)) => {
                        if tagged {
                            if !vlan::pop(p) {
                                b.drop_pkt(i, DropReason::TruncatedTag, c);
                                continue;
                            }
                            c.event(Event::VlanPopped);
                        }
                        b.meta[i].network = net;
                        trace!(
                            tr,
                            i,
                            "provider",
                            "physnet {} {} -> network {} ({})",
                            pn.name,
                            if tagged {
                                format!("vlan {vid} (tag removed)")
                            } else {
                                "untagged".to_owned()
                            },
                            t.networks[net as usize].name,
                            t.networks[net as usize].id
                        );
                    }
                    Err(r) => {
                        trace!(
                            tr,
                            i,
                            "provider",
                            "drop {} (physnet {}, ethertype {:#06x})",
                            r.name(),
                            pn.name,
                            etype
                        );
                        b.drop_pkt(i, r, c);
                    }
                }
            }
        }
        (PortKind::Provider, None) => {
            // A provider port no physnet maps to carries no network.
            for i in 0..b.len {
                if b.meta[i].next == super::Next::Continue {
                    trace!(
                        tr,
                        i,
                        "provider",
                        "drop classify.no_network (port {} maps no physnet)",
                        port.name
                    );
                    b.drop_pkt(i, DropReason::NoNetwork, c);
                }
            }
        }
        // Instance ports: `classify` already set the network from the port.
        _ => {}
    }
}

/// The VLAN tag a frame of network `net` needs to leave by port `pe`: a VLAN network's
/// segmentation id on a provider port, nothing otherwise. (Output computes this once per
/// port and network, then applies [`push_tag`] per packet.)
#[inline]
pub fn egress_vlan(pe: &PortEntry, net: &NetworkEntry) -> Option<u16> {
    match (pe.kind, net.segment) {
        (PortKind::Provider, Segment::Vlan(vid)) => Some(vid),
        _ => None,
    }
}

/// Pushes the provider VLAN tag on egress.
#[inline]
pub fn push_tag<B: PacketBuf>(
    p: &mut B,
    vid: u16,
    c: &mut BatchCounters,
) -> Result<(), DropReason> {
    if !vlan::push(p, vid) {
        return Err(DropReason::NoHeadroom);
    }
    c.event(Event::VlanPushed);
    Ok(())
}
