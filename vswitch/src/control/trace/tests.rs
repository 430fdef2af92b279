//! Trace tests: frames built from fields re-parsed by etherparse, hex and pcap input, and whole
//! traces over the router, floating IP and security group fixtures of the pipeline's tests.
use super::*;
use crate::pipeline::testutil::mac;
use crate::tables::mac_u64;
use etherparse::{NetSlice, SlicedPacket, TransportSlice, VlanSlice};

/// Live neighbour caches with the given underlay neighbours known (static, as
/// `[overlay.neighbors]` installs them).
fn shared_with(vteps: &[&str]) -> SharedState {
    let s = SharedState {
        neigh: Arc::new(NeighborTable::new(64)),
        l3neigh: Arc::new(L3Neighbors::new(64)),
    };
    for ip in vteps {
        s.neigh
            .set_static(ip.parse().unwrap(), mac_u64(&mac("02:00:00:00:00:12").0));
    }
    s
}

fn spec(in_port: &str) -> PacketSpec {
    PacketSpec {
        in_port: in_port.into(),
        ..Default::default()
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

// --- building frames ------------------------------------------------------------------------

#[test]
fn fields_build_a_frame_etherparse_reads_back() {
    let s = PacketSpec {
        eth_src: Some("fa:16:3e:00:00:01".into()),
        eth_dst: Some("fa:16:3e:aa:00:01".into()),
        vlan: Some(101),
        ip_src: ip("198.51.100.11"),
        ip_dst: ip("198.18.0.21"),
        proto: Some("TCP".into()),
        sport: Some(1234),
        dport: Some(22),
        tcp_flags: Some("SA".into()),
        ttl: Some(7),
        payload_len: Some(33),
        ..spec("vm1")
    };
    let f = build_frame(&s).unwrap();
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("not Ethernet")
    };
    assert_eq!(eth.source(), mac("fa:16:3e:00:00:01").0);
    assert_eq!(eth.destination(), mac("fa:16:3e:aa:00:01").0);
    let Some(VlanSlice::SingleVlan(v)) = p.vlan() else {
        panic!("no tag")
    };
    assert_eq!(v.vlan_identifier().value(), 101);
    let Some(NetSlice::Ipv4(v4)) = &p.net else {
        panic!("not IPv4")
    };
    let h = v4.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(
        (h.source, h.destination, h.time_to_live),
        ([198, 51, 100, 11], [198, 18, 0, 21], 7)
    );
    assert!(h.dont_fragment, "DF by default, as Linux sends");
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP")
    };
    assert_eq!((t.source_port(), t.destination_port()), (1234, 22));
    assert!(t.syn() && t.ack() && !t.fin() && !t.rst());
    assert_eq!(t.payload().len(), 33);
    let sum = t
        .to_header()
        .calc_checksum_ipv4_raw(h.source, h.destination, t.payload())
        .unwrap();
    assert_eq!(t.checksum(), sum, "TCP checksum");

    // IPv6 ICMP echo, default hop limit; an ARP reply; another IP protocol.
    let f = build_frame(&PacketSpec {
        eth_src: Some("fa:16:3e:00:00:01".into()),
        eth_dst: Some("fa:16:3e:aa:00:01".into()),
        ip_src: ip("fd00::11"),
        ip_dst: ip("fd00::1"),
        proto: Some("icmpv6".into()),
        ..spec("vm1")
    })
    .unwrap();
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(NetSlice::Ipv6(v6)) = &p.net else {
        panic!("not IPv6")
    };
    assert_eq!(v6.header().hop_limit(), 64);
    let Some(TransportSlice::Icmpv6(i)) = &p.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!((i.type_u8(), i.code_u8()), (128, 0));
    assert!(i.is_checksum_valid(v6.header().source(), v6.header().destination()));

    let f = build_frame(&PacketSpec {
        eth_src: Some("fa:16:3e:00:00:03".into()),
        arp: Some(ArpSpec {
            op: Some("reply".into()),
            sender_ip: Some("198.51.100.77".parse().unwrap()),
            target_ip: Some("198.51.100.1".parse().unwrap()),
            target_mac: Some("fa:16:3e:aa:00:01".into()),
            ..Default::default()
        }),
        ..spec("vm3")
    })
    .unwrap();
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(NetSlice::Arp(a)) = &p.net else {
        panic!("not ARP")
    };
    assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(a.sender_hw_addr(), &mac("fa:16:3e:00:00:03").0[..]);
    assert_eq!(a.target_hw_addr(), &mac("fa:16:3e:aa:00:01").0[..]);
    assert_eq!(&f[0..6], &mac("fa:16:3e:aa:00:01").0[..], "to the asker");
    assert_eq!(a.sender_protocol_addr(), &[198, 51, 100, 77]);

    let f = build_frame(&PacketSpec {
        eth_src: Some("fa:16:3e:00:00:01".into()),
        eth_dst: Some("fa:16:3e:aa:00:01".into()),
        ip_src: ip("198.51.100.11"),
        ip_dst: ip("198.18.0.21"),
        proto: Some("47".into()),
        payload_len: Some(4),
        df: Some(false),
        ..spec("vm1")
    })
    .unwrap();
    let h = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap().0;
    assert_eq!(
        (h.protocol.0, h.total_len, h.dont_fragment),
        (47, 24, false)
    );
}

#[test]
fn hex_round_trips_and_excludes_fields() {
    let f = crate::pipeline::testutil::udp4(
        "fa:16:3e:00:00:01",
        "fa:16:3e:00:00:02",
        [203, 0, 113, 11],
        [203, 0, 113, 12],
        1,
        2,
    );
    let plain = to_hex(&f);
    assert_eq!(parse_hex(&plain).unwrap(), f);
    // Spaced, coloned, upper case, with a prefix, as people paste it.
    let pasted = format!(
        "0x{}",
        f.iter()
            .enumerate()
            .map(|(i, b)| format!("{b:02X}{}", if i % 2 == 1 { " " } else { ":" }))
            .collect::<String>()
    );
    let s = PacketSpec {
        hex: Some(pasted),
        ..spec("vm1")
    };
    assert_eq!(build_frame(&s).unwrap(), f);
    assert!(parse_hex("0a0").unwrap_err().contains("odd number"));
    assert!(parse_hex("0a zz").unwrap_err().contains("'z' at offset 3"));
    assert_eq!(parse_hex(" ").unwrap_err(), "no bytes");
    let e = build_frame(&PacketSpec {
        hex: Some("0a0".into()),
        ttl: Some(3),
        eth_src: Some("fa:16:3e:00:00:01".into()),
        ..spec("vm1")
    })
    .unwrap_err();
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e.iter().any(|m| m.starts_with("ttl: not allowed with hex")));
    assert!(e
        .iter()
        .any(|m| m.starts_with("eth_src: not allowed with hex")));
    assert!(e.iter().any(|m| m.starts_with("hex: an odd number")));
}

/// A classic pcap file of `pkts`, in either byte order, with microsecond or nanosecond stamps.
fn pcap(pkts: &[&[u8]], little: bool, nanos: bool, link: u32) -> Vec<u8> {
    let w = |v: u32| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let h = |v: u16| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let mut out = Vec::new();
    out.extend(w(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
    out.extend(h(2));
    out.extend(h(4));
    out.extend(w(0));
    out.extend(w(0));
    out.extend(w(65535));
    out.extend(w(link));
    for (k, p) in pkts.iter().enumerate() {
        out.extend(w(1_700_000_000 + k as u32));
        out.extend(w(123));
        out.extend(w(p.len() as u32));
        out.extend(w(p.len() as u32));
        out.extend_from_slice(p);
    }
    out
}

#[test]
fn pcap_gives_its_first_packet_in_either_byte_order() {
    let a = crate::pipeline::testutil::arp(
        "fa:16:3e:00:00:01",
        "fa:16:3e:00:00:01",
        [203, 0, 113, 11],
        [203, 0, 113, 12],
    );
    let b = vec![0xee; 70];
    for little in [false, true] {
        for nanos in [false, true] {
            let file = pcap(&[&a, &b], little, nanos, 1);
            assert_eq!(
                first_pcap_packet(&file).unwrap(),
                a,
                "le {little} ns {nanos}"
            );
        }
    }
    let e = first_pcap_packet(&pcap(&[&a], true, false, 113)).unwrap_err();
    assert!(e.contains("link type 113 is not Ethernet"), "{e}");
    let cut = pcap(&[&a], false, false, 1);
    let e = first_pcap_packet(&cut[..cut.len() - 1]).unwrap_err();
    assert!(e.contains("cut short"), "{e}");
    assert!(first_pcap_packet(&pcap(&[], true, true, 1))
        .unwrap_err()
        .contains("no packet"));
    assert!(first_pcap_packet(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0])
        .unwrap_err()
        .contains("pcapng"));
    assert!(first_pcap_packet(&[1, 2]).unwrap_err().contains("shorter"));
}

#[test]
fn every_bad_field_is_reported_at_once() {
    let e = build_frame(&PacketSpec {
        eth_src: Some("fa:16:3e:00:00".into()),
        vlan: Some(5000),
        ip_src: ip("198.51.100.11"),
        proto: Some("sctp-ish".into()),
        payload_len: Some(100_000),
        ..spec("vm1")
    })
    .unwrap_err();
    for want in [
        "eth_src: \"fa:16:3e:00:00\" is not a MAC address",
        "eth_dst: required",
        "vlan: 5000 is not a VLAN id",
        "ip_dst: required",
        "proto: \"sctp-ish\" is not tcp, udp, icmp, icmpv6",
        "payload_len: 100000 is more than 9000",
    ] {
        assert!(
            e.iter().any(|m| m.starts_with(want)),
            "missing {want:?} in {e:#?}"
        );
    }
    assert_eq!(e.len(), 6, "{e:#?}");
    // Fields that do not belong to the protocol, mixed families, and ARP's own fields.
    let e = build_frame(&PacketSpec {
        eth_src: Some("fa:16:3e:00:00:01".into()),
        eth_dst: Some("fa:16:3e:00:00:02".into()),
        ip_src: ip("198.51.100.11"),
        ip_dst: ip("fd00::1"),
        proto: Some("udp".into()),
        tcp_flags: Some("S".into()),
        icmp_type: Some(3),
        ..spec("vm1")
    })
    .unwrap_err();
    for want in [
        "ip_dst: fd00::1 is not of the same family",
        "tcp_flags: only for tcp",
        "icmp_type: only for icmp and icmpv6",
    ] {
        assert!(
            e.iter().any(|m| m.starts_with(want)),
            "missing {want:?} in {e:#?}"
        );
    }
    let e = build_frame(&PacketSpec {
        ttl: Some(1),
        arp: Some(ArpSpec {
            op: Some("ask".into()),
            sender_mac: Some("nope".into()),
            ..Default::default()
        }),
        ..spec("vm1")
    })
    .unwrap_err();
    for want in [
        "ttl: not allowed with arp",
        "arp.op: \"ask\" is not request, reply",
        "arp.sender_mac: \"nope\" is not a MAC address",
        "arp.sender_ip: required",
        "arp.target_ip: required",
    ] {
        assert!(
            e.iter().any(|m| m.starts_with(want)),
            "missing {want:?} in {e:#?}"
        );
    }
    assert!(build_frame(&PacketSpec {
        eth_src: Some("fa:16:3e:00:00:01".into()),
        eth_dst: Some("fa:16:3e:00:00:02".into()),
        ip_src: ip("198.51.100.11"),
        ip_dst: ip("198.51.100.12"),
        proto: Some("tcp".into()),
        tcp_flags: Some("SX".into()),
        ..spec("vm1")
    })
    .unwrap_err()
    .iter()
    .any(|m| m.starts_with("tcp_flags: 'X' is not a TCP flag")));
}

#[test]
fn a_spec_names_an_unknown_port_and_its_own_problems_only() {
    let t = crate::pipeline::router_tests::tables();
    let e = trace_spec(
        &t,
        &shared_with(&[]),
        &PacketSpec {
            ip_src: ip("198.51.100.11"),
            ip_dst: ip("198.18.0.21"),
            ttl: Some(5),
            icmp_code: Some(1),
            ..spec("vm9")
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        vec![
            "in_port: no port named \"vm9\" (ports: vm1, vm2, vm3, overlay)".to_string(),
            "icmp_code: only for icmp and icmpv6".to_string(),
        ]
    );
}

// --- whole traces ---------------------------------------------------------------------------

/// The seed's east-west scenario: an instance on selfservice1 to an instance on selfservice2
/// on compute2, through the distributed router.
fn east_west() -> (Tables, SharedState, PacketSpec) {
    let s = PacketSpec {
        ip_src: ip("198.51.100.11"),
        ip_dst: ip("198.18.0.21"),
        proto: Some("udp".into()),
        dport: Some(5001),
        ..spec("vm1")
    };
    (
        crate::pipeline::router_tests::tables(),
        shared_with(&["10.0.0.12", "10.0.0.13"]),
        s,
    )
}

#[test]
fn east_west_to_another_host_is_routed_and_tunnelled_with_the_dvr_mac() {
    let (t, shared, s) = east_west();
    let r = trace_spec(&t, &shared, &s).unwrap();
    let lines = r.lines.join("\n");
    for want in [
        "classify: in_port vm1",
        // The destination MAC came from the tables: the gateway of vm1's subnet.
        "integration: network selfservice1: fa:16:3e:aa:00:01 -> router router1 (interface gw1)",
        "router: router1 198.18.0.21: route 198.18.0.0/24 -> network selfservice2, fa:16:3f:00:00:01 -> fa:16:3e:00:02:01",
        "(source: this host's DVR MAC)",
        "output: vxlan to VTEP 10.0.0.12 by port overlay",
    ] {
        assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
    }
    assert_eq!(r.verdict, "tunnel to 10.0.0.12 (compute2) vni 102");
    assert_eq!(r.in_port, "vm1");
    assert_eq!(r.outputs.len(), 1);
    let o = &r.outputs[0];
    assert_eq!(o.port, "overlay");
    let f = parse_hex(&o.hex).unwrap();
    assert_eq!(o.len, f.len());
    // The inner frame: from this host's DVR MAC to the remote instance, TTL decremented.
    let inner = &f[50..];
    assert_eq!(&inner[6..12], &mac("fa:16:3f:00:00:01").0);
    assert_eq!(&inner[0..6], &mac("fa:16:3e:00:02:01").0);
    assert_eq!(
        etherparse::Ipv4Header::from_slice(&inner[14..])
            .unwrap()
            .0
            .time_to_live,
        63
    );
    assert!(o.summary.contains("vxlan vni 102"), "{}", o.summary);
    assert_eq!(r.counters.get("router.routed"), Some(&1));
}

#[test]
fn a_packet_too_big_for_the_egress_network_is_shown_leaving_in_fragments() {
    let (t, shared, s) = east_west();
    // 1,472 bytes of IP without DF; selfservice2 takes 1,450 (VXLAN over a 1,500 underlay).
    let s = PacketSpec {
        payload_len: Some(1444),
        df: Some(false),
        ..s
    };
    let r = trace_spec(&t, &shared, &s).unwrap();
    let lines = r.lines.join("\n");
    for want in [
        "router: 1472 bytes > egress MTU 1450, DF clear: sent in fragments",
        "output: vxlan to VTEP 10.0.0.12 by port overlay",
        "output: sent in 2 fragments of at most 1450 bytes",
    ] {
        assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
    }
    assert_eq!(r.outputs.len(), 2, "{lines}");
    let lens: Vec<usize> = r.outputs.iter().map(|o| o.len).collect();
    assert_eq!(lens, [50 + 14 + 1444, 50 + 14 + 48], "two VXLAN frames");
    assert_eq!(r.counters.get("router.fragmented"), Some(&1));
    assert_eq!(r.counters.get("router.fragments"), Some(&2));
}

#[test]
fn floating_ip_inbound_is_translated_checked_and_delivered() {
    let t = crate::pipeline::fip_tests::tables_with(crate::pipeline::fip_tests::STATE);
    let shared = shared_with(&["10.0.0.12", "10.0.0.13"]);
    let s = PacketSpec {
        eth_src: Some("02:00:00:00:01:01".into()),
        vlan: Some(101),
        ip_src: ip("100.64.0.9"),
        ip_dst: ip("203.0.113.17"),
        proto: Some("tcp".into()),
        dport: Some(22),
        ..spec("uplink")
    };
    let r = trace_spec(&t, &shared, &s).unwrap();
    let lines = r.lines.join("\n");
    for want in [
        "provider: physnet provider vlan 101 (tag removed) -> network provider1",
        // To this host's floating IP gateway MAC (what ARP for the floating IP answers).
        "fa:16:3e:fe:00:01 -> router fip:",
        "router: floating IP 203.0.113.17 -> fixed IP 198.51.100.4 (router router1)",
        "port vm1 ingress: new zone 1 tcp 100.64.0.9:40000 -> 198.51.100.4:22 (tcp_syn_sent): allowed by rule sg-open-0",
        "output: tx port vm1",
    ] {
        assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
    }
    assert_eq!(r.verdict, "output to vm1");
    assert_eq!(r.outputs.len(), 1);
    let f = parse_hex(&r.outputs[0].hex).unwrap();
    let h = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap().0;
    assert_eq!(
        (h.source, h.destination),
        ([100, 64, 0, 9], [198, 51, 100, 4])
    );
    assert_eq!(r.counters.get("router.fip_dnat"), Some(&1));
    assert!(r.notes.iter().any(|n| n.starts_with("security groups")));
}

#[test]
fn a_denied_packet_is_dropped_with_its_reason() {
    // vm2 (sg-web) takes TCP 80 only.
    let t = crate::pipeline::firewall_tests::sg_tables("", "sg-web");
    let mut s = PacketSpec {
        eth_dst: Some("fa:16:3e:00:00:02".into()),
        ip_src: ip("203.0.113.11"),
        ip_dst: ip("203.0.113.12"),
        proto: Some("tcp".into()),
        dport: Some(22),
        ..spec("vm1")
    };
    let r = trace_spec(&t, &shared_with(&[]), &s).unwrap();
    assert_eq!(r.verdict, "dropped: firewall.ingress_denied");
    assert!(r.outputs.is_empty());
    assert!(r
        .lines
        .iter()
        .any(|l| l.contains("port vm2 ingress: new") && l.contains("no rule of groups [sg-web]")));
    s.dport = Some(80);
    let r = trace_spec(&t, &shared_with(&[]), &s).unwrap();
    assert_eq!(r.verdict, "output to vm2");
    // No such port: classify's drop, not a panic.
    let f = build_frame(&with_defaults(&t, &shared_with(&[]), 0, &s)).unwrap();
    let r = trace(&t, &shared_with(&[]), 99, &f);
    assert_eq!(
        (r.in_port.as_str(), r.verdict.as_str()),
        ("port 99", "dropped: classify.port_down")
    );
}

#[test]
fn a_packet_for_an_unknown_next_hop_is_held_and_the_request_shown() {
    let (t, shared, mut s) = east_west();
    // On selfservice2 but in no port of the desired state.
    s.ip_dst = ip("198.18.0.77");
    let r = trace_spec(&t, &shared, &s).unwrap();
    assert_eq!(
        r.verdict,
        "held: waiting for ARP of 198.18.0.77 on network selfservice2; request sent to vm2"
    );
    assert_eq!(r.outputs.len(), 1);
    assert!(
        r.outputs[0]
            .summary
            .contains("arp who-has 198.18.0.77 tell 198.18.0.1"),
        "{}",
        r.outputs[0].summary
    );
    assert!(shared.l3neigh.entries().is_empty());
}

#[test]
fn a_trace_never_writes_the_shared_neighbour_tables() {
    let (t, _, _) = east_west();
    let shared = shared_with(&["10.0.0.12"]);
    let neigh_before = shared.neigh.entries();
    let (l3_before, epoch) = (shared.l3neigh.entries(), shared.l3neigh.epoch());
    // compute3's VTEP (network1's, 10.0.0.13) answers on the overlay: the tunnel stage learns.
    let arp_reply = PacketSpec {
        eth_src: Some("02:00:00:00:00:13".into()),
        eth_dst: Some("02:00:00:00:00:11".into()),
        arp: Some(ArpSpec {
            op: Some("reply".into()),
            sender_ip: Some("10.0.0.13".parse().unwrap()),
            target_ip: Some("10.0.0.11".parse().unwrap()),
            ..Default::default()
        }),
        ..spec("overlay")
    };
    let r = trace_spec(&t, &shared, &arp_reply).unwrap();
    assert_eq!(
        r.counters.get("tunnel.neighbor_learned"),
        Some(&1),
        "{r:#?}"
    );
    // vm3 (no port security) asks for its gateway from an address the desired state does not
    // know: the router keeps it as a next hop.
    let ask = PacketSpec {
        arp: Some(ArpSpec {
            sender_ip: Some("198.51.100.77".parse().unwrap()),
            target_ip: Some("198.51.100.1".parse().unwrap()),
            ..Default::default()
        }),
        ..spec("vm3")
    };
    let r = trace_spec(&t, &shared, &ask).unwrap();
    assert_eq!(
        r.counters.get("router.neighbor_learned"),
        Some(&1),
        "{r:#?}"
    );
    assert_eq!(r.verdict, "reply out of vm3");
    assert!(r.outputs[0]
        .summary
        .contains("arp reply 198.51.100.1 is-at fa:16:3e:aa:00:01"));
    assert_eq!(shared.neigh.entries(), neigh_before);
    assert_eq!(shared.l3neigh.entries(), l3_before);
    assert_eq!(shared.l3neigh.epoch(), epoch);
    // What the live tables already know, a trace does see.
    let n2 = t.network_index("n2").unwrap();
    shared.l3neigh.learn(
        n2,
        v4_key(u32::from(Ipv4Addr::new(198, 18, 0, 77))),
        0x0200_0000_0077,
    );
    let (_, _, mut s) = east_west();
    s.ip_dst = ip("198.18.0.77");
    let r = trace_spec(&t, &shared, &s).unwrap();
    // Resolved, so routed; its MAC is in no FDB, so flooded on selfservice2.
    assert_eq!(
        r.verdict, "flood: vm2, tunnel to 10.0.0.12 (compute2) vni 102",
        "{r:#?}"
    );
    assert!(r.notes.iter().any(|n| n.starts_with("MAC learning")));
}

#[test]
fn the_same_packet_traces_the_same_twice() {
    for (t, shared, s) in [
        east_west(),
        (
            crate::pipeline::fip_tests::tables_with(crate::pipeline::fip_tests::STATE),
            shared_with(&[]),
            PacketSpec {
                ip_src: ip("198.51.100.4"),
                ip_dst: ip("100.64.0.9"),
                proto: Some("icmp".into()),
                ..spec("vm1")
            },
        ),
    ] {
        let a = trace_spec(&t, &shared, &s).unwrap();
        let b = trace_spec(&t, &shared, &s).unwrap();
        assert!(!a.lines.is_empty());
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
}

#[test]
fn a_packet_handed_to_the_owner_core_is_followed_there() {
    let t = crate::pipeline::firewall_tests::sg_tables("", "sg-web");
    let (a, b) = (
        u32::from(Ipv4Addr::new(203, 0, 113, 11)),
        u32::from(Ipv4Addr::new(203, 0, 113, 12)),
    );
    let sport = (40000..41000)
        .find(|&p| conntrack::Key::v4(0, 6, a, b, p, 80).owner_hash() % 2 == 1)
        .expect("some port hashes to core 1");
    let s = PacketSpec {
        eth_dst: Some("fa:16:3e:00:00:02".into()),
        ip_src: ip("203.0.113.11"),
        ip_dst: ip("203.0.113.12"),
        proto: Some("tcp".into()),
        sport: Some(sport),
        dport: Some(80),
        ..spec("vm1")
    };
    let opts = TraceOptions {
        workers: 2,
        rx_core: 0,
    };
    let r = trace_spec_with(&t, &shared_with(&[]), &s, &opts).unwrap();
    let lines = r.lines.join("\n");
    for want in [
        "belongs to core 1: hand off",
        "output: handed to core 1",
        "handoff: core 1, which owns the connection, resumes at the firewall egress check",
        "port vm2 ingress: new",
        "output: tx port vm2",
    ] {
        assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
    }
    assert_eq!(r.verdict, "output to vm2");
    assert_eq!(
        r.counters.get("conntrack.handoff"),
        Some(&1),
        "{:?}",
        r.counters
    );
    // One worker: no hand-off.
    let r = trace_spec(&t, &shared_with(&[]), &s).unwrap();
    assert!(!r.lines.iter().any(|l| l.starts_with("handoff")));
    assert_eq!(r.verdict, "output to vm2");
}
