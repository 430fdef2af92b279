//! VXLAN stage tests: encapsulation checked by etherparse, decapsulation of frames etherparse
//! built, every ingress drop reason, underlay ARP, the ARP responder, l2population flood lists
//! and split horizon.
use super::testutil::*;
use crate::counters::{DropReason as D, Event as E};
use crate::tables::{mac_u64, Tables};

const HOST: &str = r#"
role = "dvr"
host_id = "compute1"
local_vtep_ip = "10.0.0.11"
cores = [1]
[[ports]]
name = "vm1"
devargs = "net_ring0"
kind = "instance"
iface_id = "p1"
[[ports]]
name = "vm2"
devargs = "net_ring1"
kind = "instance"
iface_id = "p2"
[[ports]]
name = "overlay"
devargs = "net_ring2"
kind = "overlay"
"#;

const STATE: &str = r#"
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11}
  - {host: compute2, vtep_ip: 10.0.0.12}
  - {host: compute3, vtep_ip: 10.0.0.13}
networks:
  - {id: n101, name: selfservice2, "provider:network_type": vxlan, "provider:segmentation_id": 101}
  - {id: n102, name: selfservice1, "provider:network_type": vxlan, "provider:segmentation_id": 102}
subnets:
  - {id: s101, name: s101, network_id: n101, cidr: 198.51.100.0/24, ip_version: 4}
  - {id: s102, name: s102, network_id: n102, cidr: 198.18.0.0/24, ip_version: 4}
ports:
  - {id: p1, network_id: n101, mac_address: "fa:16:3e:00:01:11", fixed_ips: [{subnet_id: s101, ip_address: 198.51.100.11}], "binding:host_id": compute1}
  - {id: p2, network_id: n102, mac_address: "fa:16:3e:00:01:12", fixed_ips: [{subnet_id: s102, ip_address: 198.18.0.12}], "binding:host_id": compute1}
  - {id: r1, network_id: n101, mac_address: "fa:16:3e:00:02:01", fixed_ips: [{subnet_id: s101, ip_address: 198.51.100.21}], "binding:host_id": compute2}
  - {id: r2, network_id: n102, mac_address: "fa:16:3e:00:03:01", fixed_ips: [{subnet_id: s102, ip_address: 198.18.0.31}], "binding:host_id": compute3}
"#;

const VM1: u16 = 0;
const VM2: u16 = 1;
const OVERLAY: u16 = 2;
const M1: &str = "fa:16:3e:00:01:11";
const R1: &str = "fa:16:3e:00:02:01";
const R2: &str = "fa:16:3e:00:03:01";
const OV_MAC: &str = "02:00:00:00:00:11";
const C2_MAC: &str = "02:00:00:00:00:12";
const IP1: [u8; 4] = [198, 51, 100, 11];
const IPR1: [u8; 4] = [198, 51, 100, 21];

fn tables() -> Tables {
    let macs = [
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        mac(OV_MAC),
    ];
    tables_from(HOST, STATE, &macs)
}

/// A harness whose underlay already knows compute2's MAC.
fn resolved() -> Harness {
    resolved_with(tables())
}

/// The same over tables a test has adjusted.
fn resolved_with(t: Tables) -> Harness {
    let h = Harness::with(t);
    h.s.neigh
        .set_static("10.0.0.12".parse().unwrap(), mac_u64(&mac(C2_MAC).0));
    h
}

/// An outer VXLAN frame (built by etherparse) from `src_ip` to `dst_ip`.
fn vxlan_frame(
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    dport: u16,
    flags: u8,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut payload = vec![flags, 0, 0, 0, v[1], v[2], v[3], 0];
    payload.extend_from_slice(inner);
    let b = etherparse::PacketBuilder::ethernet2(mac(C2_MAC).0, mac(OV_MAC).0)
        .ipv4(src_ip, dst_ip, 64)
        .udp(50000, dport);
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

#[test]
fn encap_to_remote_vtep_is_valid_vxlan() {
    let mut h = resolved();
    let inner = udp4(M1, R1, IP1, IPR1, 1234, 80);
    h.rx(VM1, std::slice::from_ref(&inner));
    let out = h.sink.on(OVERLAY).to_vec();
    assert_eq!(out.len(), 1, "drops: {:?}", h.c.drops);
    let f = &out[0];
    let (eth, rest) = etherparse::Ethernet2Header::from_slice(f).unwrap();
    assert_eq!(
        (eth.source, eth.destination),
        (mac(OV_MAC).0, mac(C2_MAC).0)
    );
    let (ip, rest) = etherparse::Ipv4Header::from_slice(rest).unwrap();
    assert_eq!(
        (ip.source, ip.destination),
        ([10, 0, 0, 11], [10, 0, 0, 12])
    );
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "outer IPv4 checksum"
    );
    assert!(ip.dont_fragment);
    assert_eq!(ip.time_to_live, 64);
    let (udp, rest) = etherparse::UdpHeader::from_slice(rest).unwrap();
    assert_eq!(udp.destination_port, 4789);
    assert!(
        udp.source_port >= 49152,
        "source port {} in 49152-65535",
        udp.source_port
    );
    assert_eq!(udp.checksum, 0);
    assert_eq!(udp.length as usize, 8 + 8 + inner.len());
    assert_eq!(&rest[..8], &[0x08, 0, 0, 0, 0, 0, 101, 0]);
    assert_eq!(&rest[8..], &inner[..], "inner frame unchanged");
    assert_eq!(h.c.count(E::TunnelEncap), 1);
    assert_eq!(
        h.s.tunnel.vtep_tx[0].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Same flow, same source port; another flow usually another.
    h.rx(VM1, &[inner]);
    let sport = |f: &Vec<u8>| u16::from_be_bytes([f[34], f[35]]);
    assert_eq!(sport(&h.sink.on(OVERLAY)[0]), sport(&h.sink.on(OVERLAY)[1]));
}

#[test]
fn a_whole_burst_to_one_vtep_is_encapsulated_frame_by_frame_in_order() {
    let mut h = resolved();
    let inner: Vec<_> = (0..32)
        .map(|k| udp4(M1, R1, IP1, IPR1, 1000 + k, 80))
        .collect();
    h.rx(VM1, &inner);
    let out = h.sink.on(OVERLAY);
    assert_eq!(out.len(), 32, "drops: {:?}", h.c.drops);
    for (f, want) in out.iter().zip(&inner) {
        let s = etherparse::SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = &s.transport else {
            panic!("udp")
        };
        assert_eq!(u.destination_port(), 4789);
        assert_eq!(&u.payload()[8..], &want[..], "inner frame, in order");
    }
    assert_eq!(h.c.count(E::TunnelEncap), 32);
    assert_eq!(
        h.s.tunnel.vtep_tx[0].load(std::sync::atomic::Ordering::Relaxed),
        32,
        "the VTEP's counter, added once for the batch"
    );
}

#[test]
fn computed_udp_checksum_is_valid() {
    let mut t = tables();
    t.overlay.as_mut().unwrap().udp_checksum = true;
    let mut h = resolved_with(t);
    h.rx(VM1, &[udp4(M1, R1, IP1, IPR1, 1, 2)]);
    let f = &h.sink.on(OVERLAY)[0];
    let s = etherparse::SlicedPacket::from_ethernet(f).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        panic!("ipv4")
    };
    let Some(etherparse::TransportSlice::Udp(u)) = &s.transport else {
        panic!("udp")
    };
    let want = u
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), u.payload())
        .unwrap();
    assert_eq!(u.checksum(), want);
}

#[test]
fn unresolved_vtep_sends_one_arp_request_then_waits() {
    let mut h = Harness::with(tables());
    let f = udp4(M1, R1, IP1, IPR1, 1, 2);
    h.rx(VM1, &[f.clone(), f.clone(), f]);
    let out = h.sink.on(OVERLAY).to_vec();
    assert_eq!(out.len(), 1, "one ARP request, not one per packet");
    let s = etherparse::SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::NetSlice::Arp(a)) = &s.net else {
        panic!("an ARP request: {:?}", s.net)
    };
    assert_eq!(a.operation(), etherparse::ArpOperation::REQUEST);
    assert_eq!(a.sender_protocol_addr(), &[10, 0, 0, 11]);
    assert_eq!(a.target_protocol_addr(), &[10, 0, 0, 12]);
    assert_eq!(a.sender_hw_addr(), &mac(OV_MAC).0);
    assert_eq!(out[0].len(), 60);
    assert_eq!(h.c.dropped(D::TunnelUnresolved), 3);
    assert_eq!(h.c.count(E::ArpRequestSent), 1);
    // After the retry interval, the next packet asks again.
    h.s.now_ms += super::tunnel::ARP_RETRY_MS + 1;
    h.rx(VM1, &[udp4(M1, R1, IP1, IPR1, 1, 2)]);
    assert_eq!(h.c.count(E::ArpRequestSent), 2);
}

#[test]
fn underlay_arp_is_answered_and_learned() {
    let mut h = Harness::with(tables());
    // compute2 asks for our VTEP address.
    let req = arp(C2_MAC, C2_MAC, [10, 0, 0, 12], [10, 0, 0, 11]);
    h.rx(OVERLAY, &[req]);
    let out = h.sink.on(OVERLAY).to_vec();
    assert_eq!(out.len(), 1);
    let s = etherparse::SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::NetSlice::Arp(a)) = &s.net else {
        panic!("ARP reply")
    };
    assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(
        (a.sender_hw_addr(), a.sender_protocol_addr()),
        (&mac(OV_MAC).0[..], &[10u8, 0, 0, 11][..])
    );
    assert_eq!(a.target_protocol_addr(), &[10, 0, 0, 12]);
    assert_eq!(h.c.count(E::ArpReplySent), 1);
    // Its request taught us its MAC: traffic to it is encapsulated at once.
    assert_eq!(h.c.count(E::NeighborLearned), 1);
    h.rx(VM1, &[udp4(M1, R1, IP1, IPR1, 1, 2)]);
    assert_eq!(h.c.count(E::TunnelEncap), 1);
    // Requests for other addresses are not ours.
    h.rx(
        OVERLAY,
        &[arp(C2_MAC, C2_MAC, [10, 0, 0, 12], [10, 0, 0, 99])],
    );
    assert_eq!(h.c.dropped(D::TunnelArpNotForUs), 1);
}

#[test]
fn decap_delivers_the_inner_frame_to_the_local_port() {
    let mut h = Harness::with(tables());
    let inner = udp4(R1, M1, IPR1, IP1, 80, 1234);
    h.rx(
        OVERLAY,
        &[vxlan_frame(
            [10, 0, 0, 12],
            [10, 0, 0, 11],
            4789,
            0x08,
            101,
            &inner,
        )],
    );
    assert_eq!(h.sink.on(VM1), std::slice::from_ref(&inner));
    assert_eq!(h.c.count(E::TunnelDecap), 1);
    assert_eq!(
        h.s.tunnel.vtep_rx[0].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Ethernet padding after a short outer frame does not end up in the inner frame.
    let mut padded = vxlan_frame([10, 0, 0, 12], [10, 0, 0, 11], 4789, 0x08, 101, &inner);
    padded.extend_from_slice(&[0; 6]);
    h.rx(OVERLAY, &[padded]);
    assert_eq!(h.sink.on(VM1)[1], inner);
}

#[test]
fn bad_overlay_traffic_is_dropped_by_reason() {
    let inner = udp4(R1, M1, IPR1, IP1, 80, 1234);
    let ok = vxlan_frame([10, 0, 0, 12], [10, 0, 0, 11], 4789, 0x08, 101, &inner);
    let mut tagged_inner = udp4_vlan(R1, M1, 7, IPR1, IP1);
    tagged_inner.truncate(60);
    let mut not_udp = ok.clone();
    not_udp[23] = 6;
    let cases: Vec<(Vec<u8>, D)> = vec![
        (
            vxlan_frame([10, 0, 0, 12], [10, 0, 0, 99], 4789, 0x08, 101, &inner),
            D::TunnelNotForUs,
        ),
        (
            vxlan_frame([10, 0, 0, 12], [10, 0, 0, 11], 4790, 0x08, 101, &inner),
            D::TunnelWrongPort,
        ),
        (
            vxlan_frame([10, 0, 0, 12], [10, 0, 0, 11], 4789, 0x00, 101, &inner),
            D::TunnelBadFlags,
        ),
        (
            vxlan_frame([10, 0, 0, 12], [10, 0, 0, 11], 4789, 0x08, 999, &inner),
            D::TunnelUnknownVni,
        ),
        (
            vxlan_frame([10, 0, 0, 99], [10, 0, 0, 11], 4789, 0x08, 101, &inner),
            D::TunnelUnknownVtep,
        ),
        (
            vxlan_frame(
                [10, 0, 0, 12],
                [10, 0, 0, 11],
                4789,
                0x08,
                101,
                &tagged_inner,
            ),
            D::TunnelInnerVlan,
        ),
        (
            vxlan_frame(
                [10, 0, 0, 12],
                [10, 0, 0, 11],
                4789,
                0x08,
                101,
                &inner[..10],
            ),
            D::TunnelTruncated,
        ),
        (ok[..40].to_vec(), D::TunnelTruncated),
        (not_udp, D::TunnelNotVxlan),
    ];
    for (i, (frame, want)) in cases.into_iter().enumerate() {
        let mut h = Harness::with(tables());
        h.rx(OVERLAY, &[frame]);
        assert_eq!(
            h.c.dropped(want),
            1,
            "case {i}: want {} got {:?}",
            want.name(),
            h.c.drops
        );
        assert_eq!(h.c.drops.iter().sum::<u64>(), 1, "case {i}");
        assert_eq!(h.sink.total(), 0, "case {i}");
    }
}

#[test]
fn a_known_vtep_earlier_in_the_batch_does_not_vouch_for_an_unknown_one() {
    let inner = udp4(R1, M1, IPR1, IP1, 80, 1234);
    let good = vxlan_frame([10, 0, 0, 12], [10, 0, 0, 11], 4789, 0x08, 101, &inner);
    let bad = vxlan_frame([10, 0, 0, 99], [10, 0, 0, 11], 4789, 0x08, 101, &inner);
    let zero = vxlan_frame([0, 0, 0, 0], [10, 0, 0, 11], 4789, 0x08, 101, &inner);
    let mut h = Harness::with(tables());
    h.rx(OVERLAY, &[good.clone(), bad, good, zero]);
    assert_eq!(h.c.dropped(D::TunnelUnknownVtep), 2);
    assert_eq!(h.sink.on(VM1).len(), 2);
    assert_eq!(
        h.s.tunnel.vtep_rx[0].load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn arp_responder_answers_for_remote_ports_without_the_overlay() {
    let mut h = resolved();
    h.rx(VM1, &[arp(M1, M1, IP1, IPR1)]);
    let out = h.sink.on(VM1).to_vec();
    assert_eq!(out.len(), 1, "answered back to vm1");
    let s = etherparse::SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::NetSlice::Arp(a)) = &s.net else {
        panic!("ARP reply")
    };
    assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(
        (a.sender_hw_addr(), a.sender_protocol_addr()),
        (&mac(R1).0[..], &IPR1[..])
    );
    assert_eq!(
        (a.target_hw_addr(), a.target_protocol_addr()),
        (&mac(M1).0[..], &IP1[..])
    );
    assert_eq!(
        s.link
            .unwrap()
            .to_header()
            .unwrap()
            .ethernet2()
            .unwrap()
            .destination,
        mac(M1).0
    );
    assert!(h.sink.on(OVERLAY).is_empty(), "nothing crossed the overlay");
    assert_eq!(h.c.count(E::ArpResponder), 1);
    // An unknown address is flooded as usual (to compute2, the only other host on n101).
    h.rx(VM1, &[arp(M1, M1, IP1, [198, 51, 100, 77])]);
    assert_eq!(h.sink.on(OVERLAY).len(), 1);
}

#[test]
fn broadcast_is_replicated_only_to_hosts_on_the_network() {
    let mut h = resolved();
    h.s.neigh.set_static(
        "10.0.0.13".parse().unwrap(),
        mac_u64(&mac("02:00:00:00:00:13").0),
    );
    h.rx(
        VM1,
        &[udp4(
            M1,
            "ff:ff:ff:ff:ff:ff",
            IP1,
            [198, 51, 100, 255],
            1,
            2,
        )],
    );
    let out = h.sink.on(OVERLAY).to_vec();
    assert_eq!(out.len(), 1, "compute2 only: compute3 has no port on n101");
    assert_eq!(&out[0][30..34], &[10, 0, 0, 12]);
    assert!(h.sink.on(VM2).is_empty(), "vm2 is on another network");
    // On n102 the flood list is compute3.
    h.rx(
        VM2,
        &[udp4(
            "fa:16:3e:00:01:12",
            "ff:ff:ff:ff:ff:ff",
            [198, 18, 0, 12],
            [198, 18, 0, 255],
            1,
            2,
        )],
    );
    assert_eq!(&h.sink.on(OVERLAY)[1][30..34], &[10, 0, 0, 13]);
}

#[test]
fn overlay_frames_never_go_back_into_the_overlay() {
    let mut h = resolved();
    // A broadcast from compute2 reaches local ports of n101 only.
    let bcast = udp4(R1, "ff:ff:ff:ff:ff:ff", IPR1, [198, 51, 100, 255], 1, 2);
    h.rx(
        OVERLAY,
        &[vxlan_frame(
            [10, 0, 0, 12],
            [10, 0, 0, 11],
            4789,
            0x08,
            101,
            &bcast,
        )],
    );
    assert_eq!(h.sink.on(VM1).len(), 1);
    assert!(h.sink.on(OVERLAY).is_empty());
    // A unicast to a MAC behind compute3, arriving from compute2, is not relayed.
    let relay = udp4(R1, R2, IPR1, [198, 18, 0, 31], 1, 2);
    h.rx(
        OVERLAY,
        &[vxlan_frame(
            [10, 0, 0, 12],
            [10, 0, 0, 11],
            4789,
            0x08,
            102,
            &relay,
        )],
    );
    assert_eq!(h.c.dropped(D::TunnelSplitHorizon), 1);
    assert!(h.sink.on(OVERLAY).is_empty());
}

#[test]
fn frames_too_big_for_the_underlay_are_dropped() {
    let mut t = tables();
    t.overlay.as_mut().unwrap().mtu = 600;
    let mut h = resolved_with(t);
    let mut big = udp4(M1, R1, IP1, IPR1, 1, 2);
    big.resize(14 + 600 - 36 + 1, 0);
    h.rx(VM1, &[big]);
    assert_eq!(h.c.dropped(D::TunnelTooBig), 1);
    assert!(h.sink.on(OVERLAY).is_empty());
}

#[test]
fn inner_learning_is_off_by_default_and_can_be_switched_on() {
    let unknown = "fa:16:3e:00:09:09";
    let frame = vxlan_frame(
        [10, 0, 0, 12],
        [10, 0, 0, 11],
        4789,
        0x08,
        101,
        &udp4(unknown, M1, [198, 51, 100, 99], IP1, 1, 2),
    );
    let mut h = resolved();
    h.rx(OVERLAY, std::slice::from_ref(&frame));
    assert_eq!(h.c.count(E::Learned), 0);
    let mut t = tables();
    t.overlay.as_mut().unwrap().learn = true;
    let mut h = resolved_with(t);
    h.rx(OVERLAY, &[frame]);
    assert_eq!(h.c.count(E::Learned), 1);
    h.rx(VM1, &[udp4(M1, unknown, IP1, [198, 51, 100, 99], 1, 2)]);
    let out = h.sink.on(OVERLAY).to_vec();
    assert_eq!(out.len(), 1, "unicast to the learned VTEP, not flooded");
    assert_eq!(&out[0][30..34], &[10, 0, 0, 12]);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        /// Mutated VXLAN frames, ARPs and random bytes on the overlay port, and random frames
        /// from instances towards remote MACs: nothing panics and every frame leaves the batch.
        #[test]
        fn overlay_and_encap_never_panic(
            muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in 0usize..120,
            which in 0usize..4,
            raw in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let inner = udp4(R1, M1, IPR1, IP1, 80, 1234);
            let mut f = match which {
                0 => vxlan_frame([10, 0, 0, 12], [10, 0, 0, 11], 4789, 0x08, 101, &inner),
                1 => arp(C2_MAC, C2_MAC, [10, 0, 0, 12], [10, 0, 0, 11]),
                2 => udp4(M1, R1, IP1, IPR1, 1, 2),
                _ => raw,
            };
            for (at, v) in muts {
                if !f.is_empty() {
                    let i = at % f.len();
                    f[i] = v;
                }
            }
            f.truncate(f.len().saturating_sub(cut % (f.len().max(1))));
            let mut h = resolved();
            h.rx(OVERLAY, std::slice::from_ref(&f));
            h.rx(VM1, std::slice::from_ref(&f));
        }
    }
}

#[test]
fn vteps_off_the_underlay_subnet_go_through_the_gateway() {
    // compute3 lives on another underlay subnet, reached through 10.0.0.1.
    let host = format!("{HOST}\n[overlay]\nprefix_len = 24\ngateway = \"10.0.0.1\"\n");
    let state = STATE.replace("10.0.0.13", "10.9.0.13");
    let macs = [
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        mac(OV_MAC),
    ];
    let mut h = Harness::with(tables_from(&host, &state, &macs));
    // Unresolved gateway: the ARP request is for the gateway, not for the VTEP.
    h.rx(
        VM2,
        &[udp4(
            "fa:16:3e:00:01:12",
            R2,
            [198, 18, 0, 12],
            [198, 18, 0, 31],
            1,
            2,
        )],
    );
    let out = h.sink.on(OVERLAY).to_vec();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][38..42], &[10, 0, 0, 1], "ARP target is the gateway");
    // Once the gateway is known, frames leave with its MAC and the VTEP's address.
    h.s.neigh.set_static(
        "10.0.0.1".parse().unwrap(),
        mac_u64(&mac("02:00:00:00:00:01").0),
    );
    h.rx(
        VM2,
        &[udp4(
            "fa:16:3e:00:01:12",
            R2,
            [198, 18, 0, 12],
            [198, 18, 0, 31],
            1,
            2,
        )],
    );
    let f = &h.sink.on(OVERLAY)[1];
    assert_eq!(&f[0..6], &mac("02:00:00:00:00:01").0);
    assert_eq!(&f[30..34], &[10, 9, 0, 13]);
    let (ip, _) = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
}
