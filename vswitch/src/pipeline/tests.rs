//! Stage tests: frames built with etherparse go through the whole pipeline on heap buffers
//! (no EAL); outputs are re-parsed with etherparse; assertions are on the frames each port
//! would send and on counter deltas.
use super::testutil::*;
use crate::counters::{DropReason as D, Event as E};
use crate::pipeline::TraceLog;

const IP1: [u8; 4] = [203, 0, 113, 11];
const IP2: [u8; 4] = [203, 0, 113, 12];
const PEER: &str = "02:00:00:00:01:50";
const PEER2: &str = "02:00:00:00:01:51";

fn vlan_of(frame: &[u8]) -> Option<u16> {
    let s = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    match s.vlan() {
        Some(etherparse::VlanSlice::SingleVlan(v)) => Some(v.vlan_identifier().value()),
        _ => None,
    }
}

#[test]
fn unicast_between_instances_on_one_network_is_unchanged() {
    for n in [1usize, 3, 4, 5, 32, 33] {
        let mut h = Harness::new();
        let frames: Vec<_> = (0..n)
            .map(|i| udp4(MAC1, MAC2, IP1, IP2, 1000 + i as u16, 53))
            .collect();
        h.rx(VM1, &frames);
        assert_eq!(h.sink.on(VM2), &frames[..], "burst of {n}");
        assert_eq!(h.sink.total(), n);
        assert_eq!(h.c.count(E::Unicast), n as u64);
        assert_eq!(h.c.drops.iter().sum::<u64>(), 0);
        assert_eq!(h.txb.sent(VM2).packets, n as u64);
        assert_eq!(
            h.rx_bytes,
            frames.iter().map(|f| f.len() as u64).sum::<u64>(),
            "rx bytes"
        );
        assert_eq!(
            h.txb.sent(VM2).bytes,
            frames.iter().map(|f| f.len() as u64).sum::<u64>()
        );
    }
}

#[test]
fn a_whole_burst_to_one_provider_port_is_tagged_frame_by_frame_or_dropped_whole() {
    let mut h = Harness::new();
    let peer_ip = [203, 0, 113, 50];
    // The peer's MAC is learnt on the uplink (net1 is VLAN 101 there).
    h.rx(UPLINK, &[udp4_vlan(PEER, MAC1, 101, peer_ip, IP1)]);
    let frames: Vec<_> = (0..32)
        .map(|i| udp4(MAC1, PEER, IP1, peer_ip, 1000 + i, 53))
        .collect();
    h.rx(VM1, &frames);
    let up = h.sink.on(UPLINK);
    assert_eq!(up.len(), 32, "every frame of the burst, in order");
    for (out, f) in up.iter().zip(&frames) {
        assert_eq!(vlan_of(out), Some(101));
        let untagged: Vec<u8> = out[..12].iter().chain(&out[16..]).copied().collect();
        assert_eq!(&untagged, f);
    }
    assert_eq!(h.c.count(E::VlanPushed), 32);
    assert_eq!(
        h.txb.sent(UPLINK).bytes,
        frames.iter().map(|f| f.len() as u64 + 4).sum::<u64>(),
        "tx bytes count the tag"
    );
    // The same burst with the uplink down: every frame counted and freed, none sent.
    h.t.ports[UPLINK as usize].up = false;
    h.rx(VM1, &frames);
    assert_eq!(h.c.dropped(D::EgressDown), 32);
    assert_eq!(h.sink.on(UPLINK).len(), 32);
    assert_eq!(h.txb.sent(UPLINK).packets, 32);
}

#[test]
fn broadcast_floods_its_network_only_and_tags_the_provider_copy() {
    let mut h = Harness::new();
    let f = arp(MAC1, MAC1, IP1, IP2);
    h.rx(VM1, std::slice::from_ref(&f));
    assert_eq!(h.sink.on(VM2), std::slice::from_ref(&f));
    assert_eq!(
        h.sink.on(VM4),
        std::slice::from_ref(&f),
        "port-security-less port on net1 gets it too"
    );
    assert!(h.sink.on(VM1).is_empty(), "never back to the ingress port");
    assert!(h.sink.on(VM3).is_empty(), "vm3 is on another network");
    assert!(
        h.sink.on(UPLINK2).is_empty(),
        "physnet2 does not carry net1"
    );
    let up = h.sink.on(UPLINK);
    assert_eq!(up.len(), 1);
    assert_eq!(vlan_of(&up[0]), Some(101));
    let s = etherparse::SlicedPacket::from_ethernet(&up[0]).unwrap();
    assert!(matches!(s.net, Some(etherparse::NetSlice::Arp(_))));
    assert_eq!(h.c.count(E::Flooded), 1);
    assert_eq!(h.c.count(E::VlanPushed), 1);
}

#[test]
fn provider_vlan_selects_network_and_tag_is_removed() {
    let mut h = Harness::new();
    let tagged = udp4_vlan(PEER, MAC1, 101, [203, 0, 113, 50], IP1);
    h.rx(UPLINK, &[tagged]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1);
    assert_eq!(vlan_of(&out[0]), None);
    assert_eq!(
        out[0],
        udp4_vlan_stripped(PEER, MAC1, [203, 0, 113, 50], IP1)
    );
    assert_eq!(h.c.count(E::VlanPopped), 1);
}

fn udp4_vlan_stripped(src: &str, dst: &str, sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac(src).0, mac(dst).0)
        .ipv4(sip, dip, 64)
        .udp(1000, 2000);
    let mut out = Vec::new();
    b.write(&mut out, &[0x42u8; 18]).unwrap();
    out
}

#[test]
fn provider_bad_tags_are_dropped_with_their_own_counters() {
    let mut h = Harness::new();
    // VLAN 55: unknown, but physnet "provider" has a flat network -> tagged_on_flat.
    h.rx(UPLINK, &[udp4_vlan(PEER, MAC1, 55, [1, 1, 1, 1], IP1)]);
    assert_eq!(h.c.dropped(D::TaggedOnFlat), 1);
    // physnet2 has only VLAN 200: VLAN 55 is unknown_vlan, untagged is untagged_no_flat.
    h.rx(UPLINK2, &[udp4_vlan(PEER, MAC1, 55, [1, 1, 1, 1], IP1)]);
    assert_eq!(h.c.dropped(D::UnknownVlan), 1);
    h.rx(UPLINK2, &[udp4(PEER, MAC1, [1, 1, 1, 1], IP1, 1, 2)]);
    assert_eq!(h.c.dropped(D::UntaggedNoFlat), 1);
    // 802.1ad outer tag.
    let mut qinq = udp4_vlan(PEER, MAC1, 101, [1, 1, 1, 1], IP1);
    qinq[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    h.rx(UPLINK, &[qinq]);
    assert_eq!(h.c.dropped(D::BadTpid), 1);
    // A tag header cut short.
    let short = udp4_vlan(PEER, MAC1, 101, [1, 1, 1, 1], IP1)[..16].to_vec();
    h.rx(UPLINK, &[short]);
    assert_eq!(h.c.dropped(D::TruncatedTag), 1);
    assert_eq!(h.sink.total(), 0);
}

#[test]
fn untagged_provider_frames_belong_to_the_flat_network() {
    let mut h = Harness::new();
    let f = udp4(PEER, MAC3, [198, 51, 100, 50], [198, 51, 100, 13], 5, 6);
    h.rx(UPLINK, std::slice::from_ref(&f));
    assert_eq!(h.sink.on(VM3), &[f]);
    // And vm3's reply leaves untagged.
    let r = udp4(MAC3, PEER, [198, 51, 100, 13], [198, 51, 100, 50], 6, 5);
    h.rx(VM3, std::slice::from_ref(&r));
    assert_eq!(h.sink.on(UPLINK), &[r]);
}

#[test]
fn provider_macs_are_learned_per_network_and_can_move() {
    let mut h = Harness::new();
    h.rx(
        UPLINK,
        &[udp4_vlan(PEER, MAC1, 101, [203, 0, 113, 50], IP1)],
    );
    assert_eq!(h.c.count(E::Learned), 1);
    // vm1 -> PEER is now unicast to the uplink, tagged.
    h.rx(VM1, &[udp4(MAC1, PEER, IP1, [203, 0, 113, 50], 1, 2)]);
    let up = h.sink.on(UPLINK);
    assert_eq!(up.len(), 1);
    assert_eq!(vlan_of(&up[0]), Some(101));
    assert!(h.sink.on(VM2).is_empty(), "known MAC: not flooded");
    // The same MAC is unknown on the flat network (isolation of learned entries).
    h.rx(
        VM3,
        &[udp4(
            MAC3,
            PEER,
            [198, 51, 100, 13],
            [198, 51, 100, 50],
            1,
            2,
        )],
    );
    assert_eq!(h.c.count(E::Flooded), 1);
    // PEER moves behind vm4 (no port security, learns).
    h.rx(VM4, &[udp4(PEER, MAC1, [203, 0, 113, 50], IP1, 1, 2)]);
    assert_eq!(h.c.count(E::MacMoved), 1);
    h.rx(VM1, &[udp4(MAC1, PEER, IP1, [203, 0, 113, 50], 1, 2)]);
    assert_eq!(h.sink.on(VM4).len(), 1);
}

#[test]
fn learned_mac_never_overrides_a_static_one() {
    let mut h = Harness::new();
    // A frame from the provider claiming vm2's MAC.
    h.rx(
        UPLINK,
        &[udp4_vlan(MAC2, MAC1, 101, [203, 0, 113, 50], IP1)],
    );
    assert_eq!(h.c.count(E::StaticMacConflict), 1);
    assert_eq!(h.c.count(E::Learned), 0);
    h.rx(VM1, &[udp4(MAC1, MAC2, IP1, IP2, 1, 2)]);
    assert_eq!(h.sink.on(VM2).len(), 1, "still delivered to the real vm2");
}

#[test]
fn learned_entries_age_out() {
    let mut h = Harness::new();
    h.rx(
        UPLINK,
        &[udp4_vlan(PEER2, MAC1, 101, [203, 0, 113, 51], IP1)],
    );
    h.s.now_ms += 300_001;
    h.rx(VM1, &[udp4(MAC1, PEER2, IP1, [203, 0, 113, 51], 1, 2)]);
    assert_eq!(h.c.count(E::Flooded), 1, "aged out: flooded again");
}

#[test]
fn hairpin_is_dropped() {
    let mut h = Harness::new();
    h.rx(VM1, &[udp4(MAC1, MAC1, IP1, IP1, 1, 2)]);
    assert_eq!(h.c.dropped(D::Hairpin), 1);
    assert_eq!(h.sink.total(), 0);
}

#[test]
fn port_security_drops_spoofs_and_counts_each_reason() {
    let cases: Vec<(Vec<u8>, Option<D>)> = vec![
        (udp4(MAC1, MAC2, IP1, IP2, 1, 2), None),
        (
            udp4("fa:16:3e:00:00:77", MAC2, IP1, IP2, 1, 2),
            Some(D::SpoofedMac),
        ),
        (
            udp4(MAC1, MAC2, [203, 0, 113, 66], IP2, 1, 2),
            Some(D::SpoofedIpv4),
        ),
        // Allowed address pair 203.0.113.128/25 with the port MAC, and .99 with its own MAC.
        (udp4(MAC1, MAC2, [203, 0, 113, 200], IP2, 1, 2), None),
        (
            udp4("fa:16:3e:00:00:99", MAC2, [203, 0, 113, 99], IP2, 1, 2),
            None,
        ),
        (
            udp4("fa:16:3e:00:00:99", MAC2, [203, 0, 113, 200], IP2, 1, 2),
            Some(D::SpoofedIpv4),
        ),
        // DHCP: a client from 0.0.0.0 passes, a server reply does not, 0.0.0.0 otherwise does not.
        (
            udp4(MAC1, "ff:ff:ff:ff:ff:ff", [0; 4], [255; 4], 68, 67),
            None,
        ),
        (udp4(MAC1, MAC2, IP1, IP2, 67, 68), Some(D::DhcpServer)),
        (udp4(MAC1, MAC2, [0; 4], IP2, 5, 6), Some(D::SpoofedIpv4)),
        // ARP: sender must be the frame's source and an allowed IP (or a 0.0.0.0 probe).
        (arp(MAC1, MAC1, IP1, IP2), None),
        (arp(MAC1, MAC1, [0; 4], IP2), None),
        (arp(MAC1, MAC1, [203, 0, 113, 66], IP2), Some(D::SpoofedArp)),
        (arp(MAC1, MAC2, IP1, IP2), Some(D::SpoofedArp)),
        // IPv6: fixed IP and EUI-64 link-local pass; others, RAs and DHCPv6 replies do not.
        (udp6(MAC1, MAC2, "fd00:203::11", "fd00:203::12", 1, 2), None),
        (
            udp6(MAC1, MAC2, "fe80::f816:3eff:fe00:1", "fe80::1", 1, 2),
            None,
        ),
        (
            udp6(MAC1, MAC2, "fd00:203::66", "fd00:203::12", 1, 2),
            Some(D::SpoofedIpv6),
        ),
        (
            icmp6(MAC1, "fe80::f816:3eff:fe00:1", 134),
            Some(D::RouterAdvert),
        ),
        (icmp6(MAC1, "::", 135), None),
        (icmp6(MAC1, "::", 128), Some(D::SpoofedIpv6)),
        (
            udp6(MAC1, MAC2, "fd00:203::11", "fd00:203::12", 547, 546),
            Some(D::DhcpServer),
        ),
    ];
    for (i, (frame, want)) in cases.into_iter().enumerate() {
        let mut h = Harness::new();
        h.rx(VM1, &[frame]);
        match want {
            None => {
                assert_eq!(
                    h.c.drops.iter().sum::<u64>(),
                    0,
                    "case {i} should pass: {:?}",
                    h.c.drops
                );
                assert!(h.sink.total() >= 1, "case {i} should be forwarded");
            }
            Some(r) => {
                assert_eq!(h.c.dropped(r), 1, "case {i}: expected {}", r.name());
                assert_eq!(h.c.drops.iter().sum::<u64>(), 1, "case {i}: one drop only");
                assert_eq!(h.sink.total(), 0, "case {i}: nothing forwarded");
            }
        }
    }
}

#[test]
fn non_ip_and_tagged_frames_from_instances_are_dropped() {
    let mut h = Harness::new();
    let mut lldp = udp4(MAC1, MAC2, IP1, IP2, 1, 2);
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
    h.rx(VM1, &[lldp]);
    assert_eq!(h.c.dropped(D::EtherTypeDenied), 1);
    h.rx(VM1, &[udp4_vlan(MAC1, MAC2, 7, IP1, IP2)]);
    assert_eq!(h.c.dropped(D::TaggedFromInstance), 1);
    let mut bad_ip = udp4(MAC1, MAC2, IP1, IP2, 1, 2);
    bad_ip[14] = 0x41; // IHL 1
    h.rx(VM1, &[bad_ip]);
    assert_eq!(h.c.dropped(D::MalformedL3), 1);
}

#[test]
fn port_security_disabled_lets_anything_through() {
    let mut h = Harness::new();
    h.rx(
        VM4,
        &[udp4("fa:16:3e:00:00:77", MAC2, [10, 9, 9, 9], IP2, 67, 68)],
    );
    assert_eq!(h.sink.on(VM2).len(), 1);
    assert_eq!(h.c.drops.iter().sum::<u64>(), 0);
}

#[test]
fn runts_oversize_and_bad_sources_are_dropped() {
    let mut h = Harness::new();
    h.rx(VM1, &[vec![0u8; 13], vec![]]);
    assert_eq!(h.c.dropped(D::Runt), 2);
    assert_eq!(h.rx_bytes, 13, "dropped frames were still received");
    let mut big = udp4(MAC1, MAC2, IP1, IP2, 1, 2);
    big.resize(1515, 0); // network MTU 1500 + 14
    h.rx(VM1, &[big]);
    assert_eq!(h.c.dropped(D::Oversize), 1);
    h.rx(UPLINK, &[udp4("01:00:5e:00:00:01", MAC1, IP1, IP2, 1, 2)]);
    h.rx(UPLINK, &[udp4("00:00:00:00:00:00", MAC1, IP1, IP2, 1, 2)]);
    assert_eq!(h.c.dropped(D::BadSrcMac), 2);
    assert_eq!(h.sink.total(), 0);
}

#[test]
fn a_down_port_or_one_without_a_network_drops_what_it_receives_runts_first() {
    let mut h = Harness::new();
    let f = udp4(MAC1, MAC2, IP1, IP2, 1, 2);
    h.t.ports[VM1 as usize].up = false;
    h.rx(VM1, &[f.clone(), vec![0u8; 13], f.clone()]);
    assert_eq!(h.c.dropped(D::PortDown), 2);
    assert_eq!(h.c.dropped(D::Runt), 1, "a runt is a runt on any port");
    h.t.ports[VM1 as usize].up = true;
    h.t.ports[VM1 as usize].network = crate::tables::NO_NET;
    let mut big = f.clone();
    big.resize(1515, 0);
    h.rx(VM1, &[f.clone(), big]);
    assert_eq!(h.c.dropped(D::NoNetwork), 1);
    assert_eq!(
        h.c.dropped(D::Oversize),
        1,
        "the frame's own checks come first"
    );
    assert_eq!(h.sink.total(), 0);
    assert_eq!(
        h.rx_bytes,
        3 * f.len() as u64 + 13 + 1515,
        "all of it was received"
    );
}

#[test]
fn full_tx_ring_drops_and_counts_the_rest() {
    let mut h = Harness::new();
    h.sink.limit = Some(10);
    let frames: Vec<_> = (0..32).map(|i| udp4(MAC1, MAC2, IP1, IP2, i, 2)).collect();
    h.rx(VM1, &frames);
    assert_eq!(h.sink.on(VM2).len(), 10);
    assert_eq!(h.c.dropped(D::TxFull), 22);
    assert_eq!(h.txb.sent(VM2).packets, 10);
}

#[test]
fn trace_explains_every_stage() {
    let mut h = Harness::new();
    let mut tr = TraceLog::default();
    h.rx_traced(
        UPLINK,
        &[udp4_vlan(PEER, MAC1, 101, [203, 0, 113, 50], IP1)],
        &mut tr,
    );
    let lines = tr.for_packet(0).join("\n");
    for want in [
        "classify: in_port uplink",
        "provider: physnet provider vlan 101 (tag removed) -> network provider1",
        "integration: network provider1: fa:16:3e:00:00:01 -> port vm1 (static fdb)",
        "output: tx port vm1",
    ] {
        assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
    }
    let mut tr = TraceLog::default();
    h.rx_traced(
        VM1,
        &[udp4("fa:16:3e:00:00:77", MAC2, IP1, IP2, 1, 2)],
        &mut tr,
    );
    assert!(tr
        .for_packet(0)
        .join("\n")
        .contains("port vm1: drop port_security.spoofed_mac"));
}

mod fuzz {
    //! Random bytes through the parsers and the whole pipeline: no panic, and every packet is
    //! accounted for (forwarded or dropped with a reason).
    use super::*;
    use crate::packet::arp::ArpPacket;
    use crate::packet::ipv4::Ipv4Packet;
    use crate::packet::ipv6::Ipv6Packet;
    use crate::packet::udp::UdpPacket;
    use crate::packet::EthernetFrame;
    use proptest::prelude::*;

    /// Mostly-valid frames: a real header prefix from a template with random mutations, so the
    /// fuzzer gets past the first length checks often.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        let templates = vec![
            udp4(MAC1, MAC2, IP1, IP2, 1, 2),
            udp4_vlan(PEER, MAC1, 101, [203, 0, 113, 50], IP1),
            arp(MAC1, MAC1, IP1, IP2),
            udp6(MAC1, MAC2, "fd00:203::11", "fd00:203::12", 1, 2),
            icmp6(MAC1, "::", 143),
        ];
        (
            proptest::sample::select(templates),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            0usize..120,
        )
            .prop_map(|(mut f, muts, cut)| {
                for (at, v) in muts {
                    let i = at % f.len();
                    f[i] = v;
                }
                f.truncate(f.len().saturating_sub(cut % f.len().max(1)));
                f
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = EthernetFrame::new_checked(&bytes[..]) {
                let _ = (e.src(), e.dst(), e.ethertype());
                if let Ok(ip) = Ipv4Packet::new_checked(e.payload()) {
                    let _ = (ip.src(), ip.dst(), ip.verify_checksum(), ip.payload().len());
                    let _ = UdpPacket::new_checked(ip.payload()).map(|u| (u.src_port(), u.len()));
                }
                if let Ok(ip) = Ipv6Packet::new_checked(e.payload()) {
                    let _ = (ip.src(), ip.upper_layer());
                }
                if let Ok(a) = ArpPacket::new_checked(e.payload()) {
                    let _ = (a.sender_ip(), a.target_mac());
                }
            }
            let _ = crate::packet::vlan::VlanTag::parse(&bytes);
        }

        #[test]
        fn pipeline_never_panics_and_accounts_for_every_packet(
            frames in proptest::collection::vec(frame(), 1..40),
            raw in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..8),
            port in 0u16..6,
        ) {
            let mut h = Harness::new();
            let mut all = frames;
            all.extend(raw);
            h.rx(port, &all);
            // Each received packet is dropped once, or sent to >= 1 port (floods copy); a
            // packet the ingress firewall drops after switching counted it is counted twice.
            let dropped: u64 = h.c.drops.iter().sum::<u64>() - h.s.fw.ingress_drops;
            let unicast = h.c.count(E::Unicast);
            let flooded = h.c.count(E::Flooded);
            prop_assert_eq!(dropped + unicast + flooded, all.len() as u64);
            prop_assert!(h.sink.total() as u64 >= unicast + flooded - h.s.fw.ingress_drops);
        }
    }
}

/// A host that only switches (no security groups, no router) leaves the flow cache out: a hit
/// would cost more than the switching it stands for. Every frame, UDP as TCP, takes the
/// stages, and nothing is looked up or learnt. The same host with (allow-all, stateful)
/// security groups answers a replied UDP flow's datagrams from the cache.
#[test]
fn a_host_that_only_switches_runs_no_flow_cache() {
    let no_groups = STATE
        .replace(
            "    \"binding:host_id\": compute1",
            "    port_security_enabled: false\n    \"binding:host_id\": compute1",
        )
        .replace(
            "    port_security_enabled: false\n    port_security_enabled: false",
            "    port_security_enabled: false",
        )
        .lines()
        .filter(|l| !l.contains("allowed_address_pairs"))
        .collect::<Vec<_>>()
        .join("\n");
    for (state, cached) in [(no_groups.as_str(), false), (STATE, true)] {
        let mut h = Harness::with(tables_from(HOST, state, &[]));
        assert_eq!(h.t.flow_cache, cached);
        let [there, back] = udp_flows(32, (MAC1, IP1), (MAC2, IP2), 1000, 53);
        for _ in 0..3 {
            h.rx(VM1, &there);
            h.rx(VM2, &back);
        }
        assert_eq!(h.sink.on(VM2), [&there[..], &there, &there].concat());
        assert_eq!(h.sink.on(VM1).len(), 3 * 32);
        let st = h.s.flows.stats;
        let seen = (st.hits, st.misses, st.inserted);
        // Stateful: the first round opens and replies, the second is learnt, the third hits.
        let want = if cached { (64, 128, 64) } else { (0, 0, 0) };
        assert_eq!(
            seen, want,
            "hits, misses, learnt with security groups: {cached}"
        );
    }
}
