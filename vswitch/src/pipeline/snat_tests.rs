//! Centralized SNAT on the network node (the seed's north-south scenario 1): instances with
//! only a fixed IP reach the outside through the router's SNAT port on the `dvr_snat` host,
//! which translates them to the router's gateway address with a port of their own and
//! translates the replies back over the overlay. Frames re-parsed by etherparse.
use super::testutil::*;
use crate::counters::{DropReason as D, Event as E};
use crate::tables::Tables;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

fn host(ports: [u16; 2]) -> String {
    format!(
        r#"
role = "dvr_snat"
host_id = "network1"
local_vtep_ip = "10.0.0.13"
dvr_mac = "fa:16:3f:00:00:03"
cores = [1]
[[ports]]
name = "overlay"
devargs = "net_ring0"
kind = "overlay"
[[ports]]
name = "uplink"
devargs = "net_ring1"
kind = "provider"
[bridge_mappings]
provider = "uplink"
[conntrack]
snat_ports = [{}, {}]
"#,
        ports[0], ports[1]
    )
}

const STATE: &str = r#"
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11, dvr_mac: "fa:16:3f:00:00:01"}
  - {host: network1, vtep_ip: 10.0.0.13, dvr_mac: "fa:16:3f:00:00:03"}
networks:
  - {id: n1, name: selfservice1, "provider:network_type": vxlan, "provider:segmentation_id": 101, mtu: 1450}
  - {id: ext, name: provider1, "provider:network_type": vlan, "provider:physical_network": provider, "provider:segmentation_id": 101, "router:external": true}
subnets:
  - {id: s1, name: s1, network_id: n1, cidr: 198.51.100.0/24, ip_version: 4, gateway_ip: 198.51.100.1}
  - {id: sext, name: sext, network_id: ext, cidr: 203.0.113.0/24, ip_version: 4, gateway_ip: 203.0.113.1}
routers:
  - id: r1
    name: router1
    distributed: true
    external_gateway_info: {network_id: ext, enable_snat: true, external_fixed_ips: [{subnet_id: sext, ip_address: 203.0.113.11}]}
ports:
  - {id: p1, network_id: n1, mac_address: "fa:16:3e:00:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.4}], "binding:host_id": compute1, device_owner: "compute:nova"}
  - {id: p2, network_id: n1, mac_address: "fa:16:3e:00:00:02", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.5}], "binding:host_id": compute1, device_owner: "compute:nova"}
  - {id: gw1, network_id: n1, mac_address: "fa:16:3e:aa:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.1}], device_owner: "network:router_interface_distributed", device_id: r1}
  - {id: snat1, network_id: n1, mac_address: "fa:16:3e:bb:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.10}], "binding:host_id": network1, device_owner: "network:router_centralized_snat", device_id: r1}
  - {id: qg1, network_id: ext, mac_address: "fa:16:3e:bb:00:03", fixed_ips: [{subnet_id: sext, ip_address: 203.0.113.11}], "binding:host_id": network1, device_owner: "network:router_gateway", device_id: r1}
"#;

const OVERLAY: u16 = 0;
const UPLINK: u16 = 1;
const SNAT1: &str = "fa:16:3e:bb:00:01";
const QG1: &str = "fa:16:3e:bb:00:03";
const DVR1: &str = "fa:16:3f:00:00:01";
const M1: &str = "fa:16:3e:00:00:01";
const INET_GW: &str = "02:00:00:00:01:01";
const OV_MAC: &str = "02:00:00:00:00:13";
const C1_MAC: &str = "02:00:00:00:00:11";
const X1: [u8; 4] = [198, 51, 100, 4];
const X2: [u8; 4] = [198, 51, 100, 5];
const G: [u8; 4] = [203, 0, 113, 11];
const INET: [u8; 4] = [100, 64, 0, 9];
const EXT_GW: [u8; 4] = [203, 0, 113, 1];

fn tables(ports: [u16; 2]) -> Tables {
    tables_from(
        &host(ports),
        STATE,
        &[mac(OV_MAC), mac("02:00:00:00:00:14")],
    )
}

fn harness(ports: [u16; 2]) -> Harness {
    let mut h = Harness::with(tables(ports));
    h.s.neigh.set_static(
        "10.0.0.11".parse().unwrap(),
        crate::tables::mac_u64(&mac(C1_MAC).0),
    );
    // The external gateway answers the SNAT router's ARP request.
    h.rx(UPLINK, &[arp101(INET_GW, EXT_GW, QG1, G)]);
    h
}

/// An ARP reply on VLAN 101 from (`sha`, `spa`) to (`tha`, `tpa`).
fn arp101(sha: &str, spa: [u8; 4], tha: &str, tpa: [u8; 4]) -> Vec<u8> {
    let a = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation::REPLY,
        &mac(sha).0,
        &spa,
        &mac(tha).0,
        &tpa,
    )
    .unwrap();
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(sha).0, mac(tha).0)
        .single_vlan(etherparse::VlanId::try_new(101).unwrap())
        .arp(a)
        .write(&mut out)
        .unwrap();
    out
}

/// A VXLAN frame from compute1's VTEP carrying `inner` on VNI 101.
fn from_compute1(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0, 0, 0, 101, 0];
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(C1_MAC).0, mac(OV_MAC).0)
        .ipv4([10, 0, 0, 11], [10, 0, 0, 13], 64)
        .udp(50000, 4789)
        .write(&mut out, &payload)
        .unwrap();
    out
}

/// compute1's routed frame for the SNAT port: from its DVR MAC, a TCP SYN `src:sport -> dst:443`.
fn syn_out(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(DVR1).0, mac(SNAT1).0)
        .ipv4(src, INET, 63)
        .tcp(sport, 443, 1000, 64240)
        .syn()
        .write(&mut inner, &[])
        .unwrap();
    from_compute1(&inner)
}

/// The Internet host's answer to `G:port`, tagged VLAN 101, to the gateway port's MAC.
fn synack_in(port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(INET_GW).0, mac(QG1).0)
        .single_vlan(etherparse::VlanId::try_new(101).unwrap())
        .ipv4(INET, G, 60)
        .tcp(443, port, 7000, 64240)
        .syn()
        .ack(1001)
        .write(&mut out, &[])
        .unwrap();
    out
}

/// (source, source port, destination, destination port) of a TCP/IPv4 frame (tagged or not),
/// its checksums verified.
fn tcp4(f: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let s = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(v4)) = &s.net else {
        panic!("not IPv4")
    };
    let h = v4.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    let Some(TransportSlice::Tcp(t)) = &s.transport else {
        panic!("not TCP")
    };
    let want = t
        .to_header()
        .calc_checksum_ipv4_raw(h.source, h.destination, t.payload())
        .unwrap();
    assert_eq!(t.checksum(), want, "TCP checksum");
    (
        h.source,
        t.source_port(),
        h.destination,
        t.destination_port(),
    )
}

#[test]
fn an_instance_without_a_floating_ip_leaves_the_network_node_as_the_gateway_address() {
    let mut h = harness([1024, 65535]);
    h.rx(OVERLAY, &[syn_out(X1, 40000)]);
    let out = h.sink.on(UPLINK);
    assert_eq!(out.len(), 1, "{:?}", h.c);
    let f = &out[0];
    // Tagged for the external network, from the gateway port's MAC to the gateway's.
    assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 101]);
    assert_eq!(
        (&f[0..6], &f[6..12]),
        (&mac(INET_GW).0[..], &mac(QG1).0[..])
    );
    let (src, sport, dst, dport) = tcp4(f);
    assert_eq!((src, dst, dport), (G, INET, 443));
    assert!((1024..=65535).contains(&sport));
    assert_eq!(h.c.events[E::SnatOut as usize], 1);
    // The reply goes back over the overlay to compute1, to the instance, translated back.
    h.rx(UPLINK, &[synack_in(sport)]);
    let ov = h.sink.on(OVERLAY);
    assert_eq!(ov.len(), 1, "{:?}", h.c);
    let inner = &ov[0][50..];
    assert_eq!(&inner[0..6], &mac(M1).0[..]);
    assert_eq!(&inner[6..12], &mac(SNAT1).0[..], "from the SNAT port");
    assert_eq!(tcp4(inner), (INET, 443, X1, 40000));
    assert_eq!(h.c.events[E::SnatIn as usize], 1);
    // The same connection keeps its port.
    h.rx(OVERLAY, &[syn_out(X1, 40000)]);
    assert_eq!(tcp4(&h.sink.on(UPLINK)[1]).1, sport);
}

/// Nothing told the SNAT router the external gateway's MAC (no instance of this host is on the
/// external network to ask for it): it asks itself, from the gateway port, tagged for the
/// external network, holds the packet and sends it translated once the answer is in.
#[test]
fn the_snat_router_asks_the_external_network_for_its_gateway() {
    let mut h = Harness::with(tables([1024, 65535]));
    h.s.neigh.set_static(
        "10.0.0.11".parse().unwrap(),
        crate::tables::mac_u64(&mac(C1_MAC).0),
    );
    h.rx(OVERLAY, &[syn_out(X1, 40000)]);
    let out = h.sink.on(UPLINK);
    assert_eq!(out.len(), 1, "{:?}", h.c);
    let f = &out[0];
    assert_eq!((&f[0..6], &f[6..12]), (&[0xff; 6][..], &mac(QG1).0[..]));
    assert_eq!(
        &f[12..18],
        &[0x81, 0x00, 0x00, 101, 0x08, 0x06],
        "ARP on VLAN 101"
    );
    let arp = &f[18..];
    assert_eq!(&arp[6..8], &[0, 1], "a request");
    assert_eq!(&arp[8..14], &mac(QG1).0[..]);
    assert_eq!((&arp[14..18], &arp[24..28]), (&G[..], &EXT_GW[..]));
    assert_eq!(h.c.events[E::ResolveSent as usize], 1);
    assert_eq!(h.c.events[E::NextHopHeld as usize], 1);
    h.rx(UPLINK, &[arp101(INET_GW, EXT_GW, QG1, G)]);
    let out = h.sink.on(UPLINK);
    assert_eq!(out.len(), 2, "{:?}", h.c);
    assert_eq!(&out[1][0..6], &mac(INET_GW).0[..]);
    let (src, _, dst, dport) = tcp4(&out[1]);
    assert_eq!((src, dst, dport), (G, INET, 443));
    assert_eq!(h.c.events[E::SnatOut as usize], 1);
}

#[test]
fn concurrent_connections_get_distinct_ports() {
    let mut h = harness([1024, 65535]);
    // Two instances, the same source port, the same destination: two ports.
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|n| syn_out(if n % 2 == 0 { X1 } else { X2 }, 40000 + n / 2))
        .collect();
    h.rx(OVERLAY, &frames);
    let out = h.sink.on(UPLINK);
    assert_eq!(out.len(), 64, "{:?}", h.c);
    let ports: std::collections::BTreeSet<u16> = out.iter().map(|f| tcp4(f).1).collect();
    assert_eq!(ports.len(), 64);
}

#[test]
fn a_tiny_port_range_refuses_new_connections_and_keeps_the_old_ones() {
    let mut h = harness([2000, 2002]);
    let frames: Vec<Vec<u8>> = (0..3).map(|n| syn_out(X1, 40000 + n)).collect();
    h.rx(OVERLAY, &frames);
    assert_eq!(h.sink.on(UPLINK).len(), 3);
    // The fourth finds no port to this destination.
    h.rx(OVERLAY, &[syn_out(X2, 50000)]);
    assert_eq!(h.sink.on(UPLINK).len(), 3);
    assert_eq!(h.c.dropped(D::RouterSnatExhausted), 1);
    // The three carry on, both ways.
    for n in 0..3u16 {
        h.rx(OVERLAY, &[syn_out(X1, 40000 + n)]);
    }
    let ports: Vec<u16> = h.sink.on(UPLINK)[3..].iter().map(|f| tcp4(f).1).collect();
    assert_eq!(ports.len(), 3);
    for p in ports {
        assert!((2000..=2002).contains(&p));
        h.rx(UPLINK, &[synack_in(p)]);
    }
    assert_eq!(h.sink.on(OVERLAY).len(), 3);
    assert_eq!(h.c.dropped(D::RouterSnatExhausted), 1);
}

/// An exhausted range recovers: the port of a connection that went (reset, then its CLOSE
/// deadline passed; or an unanswered SYN past SYN_SENT's) goes to the next new connection,
/// with nothing swept in between (the worker's sweep may not have reached it yet), while the
/// connections still there keep theirs.
#[test]
fn a_port_goes_to_a_new_connection_once_its_connection_is_gone() {
    let mut h = harness([2000, 2002]);
    let later = |h: &mut Harness, s: u64| {
        h.s.now_ms += s * 1000;
        h.s.fw.now = h.s.now_ms as u32;
    };
    let frames: Vec<Vec<u8>> = (0..3).map(|n| syn_out(X1, 40000 + n)).collect();
    h.rx(OVERLAY, &frames);
    let ports: Vec<u16> = h.sink.on(UPLINK).iter().map(|f| tcp4(f).1).collect();
    assert_eq!(ports.len(), 3);
    // Connection 0 is answered, then reset by the instance.
    h.rx(UPLINK, &[synack_in(ports[0])]);
    assert_eq!(h.sink.on(OVERLAY).len(), 1);
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(DVR1).0, mac(SNAT1).0)
        .ipv4(X1, INET, 63)
        .tcp(40000, 443, 1001, 0)
        .rst()
        .ack(7001)
        .write(&mut inner, &[])
        .unwrap();
    h.rx(OVERLAY, &[from_compute1(&inner)]);
    assert_eq!(h.sink.on(UPLINK).len(), 4, "the RST goes out: {:?}", h.c);
    // A new connection's SYN finds no port (one more refusal); `secs` later, its retransmission
    // gets one (no more refusals): the port it leaves from.
    let refused_then_translated = |h: &mut Harness, syn: Vec<u8>, secs: u64| {
        let refused = h.c.dropped(D::RouterSnatExhausted);
        h.rx(OVERLAY, std::slice::from_ref(&syn));
        assert_eq!(
            h.c.dropped(D::RouterSnatExhausted),
            refused + 1,
            "no port yet"
        );
        later(h, secs);
        h.rx(OVERLAY, &[syn]);
        assert_eq!(
            h.c.dropped(D::RouterSnatExhausted),
            refused + 1,
            "{:?}",
            h.c
        );
        let out = h.sink.on(UPLINK).last().unwrap().clone();
        let (src, port, dst, dport) = tcp4(&out);
        assert_eq!((src, dst, dport), (G, INET, 443));
        port
    };
    // Closed, its port held for CLOSE's 10 s.
    let port = refused_then_translated(&mut h, syn_out(X2, 50000), 11);
    assert_eq!(port, ports[0], "the freed port");
    // The two unanswered SYNs keep their ports until SYN_SENT's 120 s are up, then the
    // same happens to them.
    let port = refused_then_translated(&mut h, syn_out(X2, 50001), 110);
    assert!(ports[1..].contains(&port), "{port} is one of {ports:?}");
    // The newcomer's connection kept its port all along.
    h.rx(UPLINK, &[synack_in(ports[0])]);
    let back = h.sink.on(OVERLAY).last().unwrap().clone();
    // Inside VXLAN (outer Ethernet, IPv4, UDP, VXLAN: 50 bytes) to compute1.
    assert_eq!(tcp4(&back[50..]), (INET, 443, X2, 50000));
}

#[test]
fn replies_to_the_gateway_address_that_match_no_translation_are_dropped() {
    let mut h = harness([1024, 65535]);
    h.rx(UPLINK, &[synack_in(4242)]);
    assert_eq!(h.sink.total(), 0);
    assert_eq!(h.c.dropped(D::RouterSnatUnknown), 1);
}

#[test]
fn an_icmp_error_about_a_translated_connection_reaches_the_instance_as_about_its_own_packet() {
    let mut h = harness([1024, 65535]);
    let sent = syn_out(X1, 40000);
    h.rx(OVERLAY, std::slice::from_ref(&sent));
    let out = h.sink.on(UPLINK)[0].clone();
    // A router outside answers "fragmentation needed", quoting the translated SYN.
    let quote = &out[18..18 + 28];
    let mut err = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(INET_GW).0, mac(QG1).0)
        .single_vlan(etherparse::VlanId::try_new(101).unwrap())
        .ipv4(EXT_GW, G, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut err, quote)
        .unwrap();
    h.rx(UPLINK, &[err]);
    let ov = h.sink.on(OVERLAY);
    assert_eq!(ov.len(), 1, "{:?}", h.c);
    let inner = &ov[0][50..];
    let s = SlicedPacket::from_ethernet(inner).unwrap();
    let Some(NetSlice::Ipv4(v4)) = &s.net else {
        panic!("not IPv4")
    };
    assert_eq!(v4.header().destination(), X1);
    let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
        panic!("not ICMP")
    };
    assert_eq!(
        crate::packet::checksum::checksum(icmp.slice()),
        0,
        "ICMP checksum"
    );
    // The quote is the SYN as compute1 routed it (addresses, ports, TCP checksum), one hop
    // older (the network node's): TTL 62, its header checksum right for that.
    let q = icmp.payload();
    let mine = &sent[50 + 14..50 + 14 + 28];
    assert_eq!(
        (&q[..8], &q[9..10], &q[12..28]),
        (&mine[..8], &mine[9..10], &mine[12..28])
    );
    assert_eq!(q[8], 62);
    let qh = etherparse::Ipv4Header::from_slice(q).unwrap().0;
    assert_eq!(qh.header_checksum, qh.calc_header_checksum());
}

/// network1 with two workers (cores 0 and 1), each knowing compute1's VTEP and the external
/// gateway.
fn two_workers() -> super::firewall_tests::TwoCores {
    let mut x = super::firewall_tests::TwoCores::new(tables([1024, 65535]));
    for (k, s) in x.s.iter().enumerate() {
        s.neigh.set_static(
            "10.0.0.11".parse().unwrap(),
            crate::tables::mac_u64(&mac(C1_MAC).0),
        );
        assert_eq!(s.fw.core as usize, k);
    }
    for core in 0..2 {
        x.rx(core, UPLINK, arp101(INET_GW, EXT_GW, QG1, G));
    }
    x
}

/// Two workers, packets arriving on either (as RSS spreads them): every connection is
/// translated on the core that owns it, with a port whose replies that core owns too, so both
/// directions meet the same entry wherever they arrive, and the two cores' ports never collide.
#[test]
fn two_workers_translate_each_connection_on_its_owner_core_without_port_collisions() {
    let mut x = two_workers();
    let n = 24u16;
    let mut handed = 0;
    let mut ports = Vec::new();
    for k in 0..n {
        let sport = 40000 + k;
        // Arrives on core k % 2, whoever owns it.
        handed += x.rx(k as usize % 2, OVERLAY, syn_out(X1, sport));
        let out = x.sink.on(UPLINK);
        assert_eq!(out.len(), 1 + k as usize, "connection {k}: {:?}", x.c);
        let (src, p, dst, _) = tcp4(out.last().unwrap());
        assert_eq!((src, dst), (G, INET));
        ports.push((sport, p));
    }
    assert!(
        handed > 0,
        "some connections arrived on the core that does not own them"
    );
    let mut distinct: Vec<u16> = ports.iter().map(|p| p.1).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), n as usize, "ports collide: {ports:?}");
    // Each entry lives on one core only: the owner of both its keys.
    let entries: usize = x.s.iter().map(|s| s.fw.ct.len()).sum();
    assert_eq!(entries, n as usize);
    assert!(
        x.s.iter().all(|s| !s.fw.ct.is_empty()),
        "both cores own some"
    );
    // Replies, each on the core that did not translate it, find their connection.
    for (k, &(sport, p)) in ports.iter().enumerate() {
        x.rx((k + 1) % 2, UPLINK, synack_in(p));
        let ov = x.sink.on(OVERLAY);
        assert_eq!(ov.len(), k + 1, "reply {k} ({sport} as {p}): {:?}", x.c);
        let (src, sp, dst, dp) = tcp4(&ov.last().unwrap()[50..]);
        assert_eq!((src, sp, dst, dp), (INET, 443, X1, sport));
    }
    assert_eq!(x.c.dropped(D::RouterSnatUnknown), 0);
    assert!(x.c.count(E::ConntrackHandoff) >= n as u64 / 2);
    // The instance's port unreachable about each reply, on the core that did not get the
    // reply: translated on the owner, it leaves from the gateway address, quoting the reply
    // as the server sent it (to the gateway address and the connection's port).
    let replies: Vec<Vec<u8>> = x
        .sink
        .on(OVERLAY)
        .iter()
        .map(|f| f[50..].to_vec())
        .collect();
    for (k, (&(_, p), reply)) in ports.iter().zip(&replies).enumerate() {
        let mut err = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(DVR1).0, mac(SNAT1).0)
            .ipv4(X1, INET, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut err, &reply[14..])
            .unwrap();
        x.rx(k % 2, OVERLAY, from_compute1(&err));
        let out = x.sink.on(UPLINK);
        assert_eq!(out.len(), n as usize + 1 + k, "error {k}: {:?}", x.c);
        let (src, dst, _, q_src, q_dst) = icmp_says(&out[out.len() - 1]).expect("an ICMP error");
        let (g, inet) = (G.into(), INET.into());
        assert_eq!((src, dst, q_src, q_dst), (g, inet, (inet, 443), (g, p)));
    }
    // About a connection it never had: dropped.
    let stranger = Conversation::new(snat_sides().0, snat_sides().1, 100);
    let ic = FuzzIcmp {
        kind: 0,
        from_router: false,
        short_quote: true,
    };
    x.rx(
        0,
        OVERLAY,
        from_compute1(&stranger.icmp_error(99, false, ic, 64)),
    );
    x.rx(
        1,
        OVERLAY,
        from_compute1(&stranger.icmp_error(99, false, ic, 64)),
    );
    assert_eq!(x.c.dropped(D::RouterSnatUnknown), 2);
    let errors = x.sink.on(UPLINK).len();
    // The original direction again, on the other core: the same port, no new entry.
    let again = errors;
    x.rx(1, OVERLAY, syn_out(X1, 40000));
    x.rx(0, OVERLAY, syn_out(X1, 40001));
    let out = x.sink.on(UPLINK);
    assert_eq!(out.len(), again + 2);
    assert_eq!(tcp4(&out[again]).1, ports[0].1);
    assert_eq!(tcp4(&out[again + 1]).1, ports[1].1);
    assert_eq!(x.s.iter().map(|s| s.fw.ct.len()).sum::<usize>(), n as usize);
}

/// Two workers, every fragment of a datagram arriving on one of them (RSS hashes a fragment by
/// its addresses only): the first fragment goes to the core that owns its connection and
/// leaves a note, so the later ones follow it there, both ways.
#[test]
fn two_workers_send_every_fragment_where_its_first_went() {
    let mut x = two_workers();
    let body = |k: u16| -> Vec<u8> { (0..2000).map(|j| (j + k as usize) as u8).collect() };
    let mut handed = 0;
    let mut ports = Vec::new();
    for k in 0..8u16 {
        // Each datagram its own identification, as a sender's stack numbers them.
        let f = with_ident(
            without_df(udp4_tagged(
                (DVR1, SNAT1),
                None,
                (X1, INET),
                (40000 + k, 53),
                &body(k),
            )),
            k + 1,
        );
        for piece in fragments(&f, 1450) {
            handed += x.rx(k as usize % 2, OVERLAY, from_compute1(&piece));
        }
        let up = x.sink.on(UPLINK);
        assert_eq!(up.len(), 2 * (k as usize + 1), "datagram {k}: {:?}", x.c);
        let frags: Vec<Vec<u8>> = up[up.len() - 2..]
            .iter()
            .map(|f| untagged(f, 101))
            .collect();
        let (ip, d) = reassemble(&frags, 1500);
        assert_eq!((ip.source, d[8..].to_vec()), (G, body(k)), "datagram {k}");
        assert!(udp_sum_ok(&d, G, INET));
        ports.push(u16::from_be_bytes([d[0], d[1]]));
    }
    assert!(
        handed >= 2,
        "some first fragments went to the other core ({handed})"
    );
    for (k, &p) in ports.iter().enumerate() {
        let back = with_ident(
            without_df(udp4_tagged(
                (INET_GW, QG1),
                None,
                (INET, G),
                (53, p),
                &body(100 + k as u16),
            )),
            100 + k as u16,
        );
        for piece in fragments(&back, 1500) {
            x.rx((k + 1) % 2, UPLINK, tagged(&piece, 101));
        }
        let ov = x.sink.on(OVERLAY);
        // 2,008 bytes of UDP: 1,480 + 528 from the server, the first cut again (1,424 + 56).
        assert_eq!(ov.len(), 3 * (k + 1), "answer {k}: {:?}", x.c);
        let inner: Vec<Vec<u8>> = ov[ov.len() - 3..].iter().map(|f| inner_of(f).1).collect();
        let (ip, d) = reassemble(&inner, 1450);
        assert_eq!(
            (ip.destination, u16::from_be_bytes([d[2], d[3]])),
            (X1, 40000 + k as u16)
        );
        assert_eq!(d[8..], body(100 + k as u16)[..], "answer {k}");
        assert!(udp_sum_ok(&d, INET, X1));
    }
    assert_eq!(x.c.dropped(D::RouterSnatFragment), 0);
}

/// An echo request's identifier is its "port" in both directions; with two workers every
/// identifier still gets a translated identifier whose replies the translating core owns (the
/// owner hash must not cancel equal ports), and every reply comes back.
#[test]
fn two_workers_translate_every_echo_identifier() {
    let echo = |src: [u8; 4], dst: [u8; 4], id: u16, request: bool| {
        let mut inner = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2(
            mac(if request { DVR1 } else { INET_GW }).0,
            mac(if request { SNAT1 } else { QG1 }).0,
        );
        let b = if request {
            b.ipv4(src, dst, 63)
        } else {
            b.single_vlan(etherparse::VlanId::try_new(101).unwrap())
                .ipv4(src, dst, 60)
        };
        if request {
            b.icmpv4_echo_request(id, 1)
                .write(&mut inner, b"ping")
                .unwrap();
            from_compute1(&inner)
        } else {
            b.icmpv4_echo_reply(id, 1)
                .write(&mut inner, b"ping")
                .unwrap();
            inner
        }
    };
    let ident = |f: &[u8]| {
        let s = SlicedPacket::from_ethernet(f).unwrap();
        match s.transport {
            Some(TransportSlice::Icmpv4(i)) => match i.icmp_type() {
                etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) => {
                    e.id
                }
                t => panic!("{t:?}"),
            },
            _ => panic!("not ICMP"),
        }
    };
    let mut x = two_workers();
    // Two instances pinging eight hosts: (source, destination) pairs whose owners differ.
    let mut sent = Vec::new();
    for (k, (src, last)) in [X1, X2]
        .into_iter()
        .flat_map(|s| (9..17u8).map(move |d| (s, d)))
        .enumerate()
    {
        let dst = [100, 64, 0, last];
        let id = 100 + k as u16;
        x.rx(k % 2, OVERLAY, echo(src, dst, id, true));
        let out = x.sink.on(UPLINK);
        assert_eq!(out.len(), k + 1, "echo {src:?} -> {dst:?}: {:?}", x.c);
        sent.push((dst, id, ident(out.last().unwrap())));
    }
    assert_eq!(x.c.dropped(D::RouterSnatExhausted), 0);
    for (k, &(dst, id, gid)) in sent.iter().enumerate() {
        x.rx((k + 1) % 2, UPLINK, echo(dst, G, gid, false));
        let ov = x.sink.on(OVERLAY);
        assert_eq!(ov.len(), k + 1, "reply {k}: {:?}", x.c);
        assert_eq!(ident(&ov.last().unwrap()[50..]), id);
    }
    // A router on the way (100.64.0.254) finds a destination unreachable: its error about the
    // translated request (from G, identifier gid) reaches the instance about its own request
    // (from X, identifier id), its checksums right.
    for (k, &(dst, id, gid)) in sent.iter().enumerate() {
        let mut quote = Vec::new();
        etherparse::PacketBuilder::ipv4(G, dst, 61)
            .icmpv4_echo_request(gid, 1)
            .write(&mut quote, b"ping")
            .unwrap();
        let mut err = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(INET_GW).0, mac(QG1).0)
            .single_vlan(etherparse::VlanId::try_new(101).unwrap())
            .ipv4([100, 64, 0, 254], G, 60)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Host,
            ))
            .write(&mut err, &quote)
            .unwrap();
        x.rx(k % 2, UPLINK, err);
        let ov = x.sink.on(OVERLAY);
        assert_eq!(ov.len(), sent.len() + k + 1, "error {k}: {:?}", x.c);
        let inner = &ov.last().unwrap()[50..];
        let s = SlicedPacket::from_ethernet(inner).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!("not ICMP: {inner:02x?}");
        };
        assert_eq!(
            icmp.checksum(),
            icmp.header().icmp_type.calc_checksum(icmp.payload())
        );
        let (qh, rest) = etherparse::Ipv4Header::from_slice(icmp.payload()).unwrap();
        assert_eq!(qh.header_checksum, qh.calc_header_checksum());
        let src = if k < 8 { X1 } else { X2 };
        assert_eq!((qh.source, qh.destination), (src, dst), "error {k}");
        assert_eq!(
            u16::from_be_bytes([rest[4], rest[5]]),
            id,
            "error {k}: identifier"
        );
        // The quoted echo's own checksum, over its whole message, still folds to all ones.
        assert_eq!(
            crate::packet::checksum::checksum(rest),
            0,
            "error {k}: echo checksum"
        );
    }
}

/// IPv6 north-south on the network node (the seed: "Floating IP addresses and NAT do not
/// apply to IPv6. Thus, the network node routes IPv6 traffic"): the SNAT router routes what
/// compute1 sends to its SNAT port's IPv6 address out of the gateway port, untranslated, to the
/// external IPv6 gateway, and the answers back over the overlay to the instance.
#[test]
fn ipv6_is_routed_by_the_network_node_not_translated() {
    let state = STATE
        .replace(
            "subnets:\n",
            "subnets:\n  - {id: s1v6, name: s1v6, network_id: n1, cidr: \"fd00:198:51:100::/64\", ip_version: 6, gateway_ip: \"fd00:198:51:100::1\"}\n  - {id: sextv6, name: sextv6, network_id: ext, cidr: \"2001:db8:203::/64\", ip_version: 6, gateway_ip: \"2001:db8:203::1\"}\n",
        )
        .replace(
            r#"fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.4}]"#,
            r#"fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.4}, {subnet_id: s1v6, ip_address: "fd00:198:51:100::4"}]"#,
        )
        .replace(
            r#"fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.10}]"#,
            r#"fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.10}, {subnet_id: s1v6, ip_address: "fd00:198:51:100::10"}]"#,
        )
        .replace(
            r#"fixed_ips: [{subnet_id: sext, ip_address: 203.0.113.11}], "binding:host_id": network1"#,
            r#"fixed_ips: [{subnet_id: sext, ip_address: 203.0.113.11}, {subnet_id: sextv6, ip_address: "2001:db8:203::11"}], "binding:host_id": network1"#,
        )
        + "  - {id: extgw, network_id: ext, mac_address: \"02:00:00:00:01:01\", fixed_ips: [{subnet_id: sextv6, ip_address: \"2001:db8:203::1\"}]}\n";
    let t = tables_from(
        &host([1024, 65535]),
        &state,
        &[mac(OV_MAC), mac("02:00:00:00:00:14")],
    );
    let mut h = Harness::with(t);
    h.s.neigh.set_static(
        "10.0.0.11".parse().unwrap(),
        crate::tables::mac_u64(&mac(C1_MAC).0),
    );
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let (x, inet) = ("fd00:198:51:100::4", "2001:db8:ffff::9");
    // Out: compute1's routed frame for the SNAT port.
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(DVR1).0, mac(SNAT1).0)
        .ipv6(v6(x), v6(inet), 63)
        .udp(40000, 53)
        .write(&mut inner, b"query")
        .unwrap();
    h.rx(OVERLAY, &[from_compute1(&inner)]);
    let out = h.sink.on(UPLINK);
    assert_eq!(out.len(), 1, "{:?}", h.c);
    let f = &out[0];
    assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 101]);
    assert_eq!(
        (&f[0..6], &f[6..12]),
        (&mac(INET_GW).0[..], &mac(QG1).0[..])
    );
    let ip = etherparse::Ipv6Header::from_slice(&f[18..]).unwrap().0;
    assert_eq!(
        (ip.source, ip.destination, ip.hop_limit),
        (v6(x), v6(inet), 62)
    );
    assert_eq!(h.c.count(E::SnatOut), 0, "IPv6 is not translated");
    // Back: the answer to the instance's own address, over the overlay to compute1.
    let mut back = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(INET_GW).0, mac(QG1).0)
        .single_vlan(etherparse::VlanId::try_new(101).unwrap())
        .ipv6(v6(inet), v6(x), 60)
        .udp(53, 40000)
        .write(&mut back, b"answer")
        .unwrap();
    h.rx(UPLINK, &[back]);
    let ov = h.sink.on(OVERLAY);
    assert_eq!(ov.len(), 1, "{:?}", h.c);
    assert_eq!(&ov[0][30..34], &[10, 0, 0, 11], "to compute1's VTEP");
    let inner = &ov[0][50..];
    assert_eq!(&inner[0..6], &mac(M1).0[..]);
    assert_eq!(&inner[6..12], &mac(SNAT1).0[..], "from the SNAT port");
    let ip = etherparse::Ipv6Header::from_slice(&inner[14..]).unwrap().0;
    assert_eq!(
        (ip.source, ip.destination, ip.hop_limit),
        (v6(inet), v6(x), 59)
    );
}

/// The flow cache answers established SNAT connections exactly as the stages do, both ways
/// (out of the overlay translated to the gateway address and a port of its own, back
/// translated and encapsulated to the instance's host), and leaves the rest to them.
#[test]
fn snat_flows_from_the_flow_cache_are_what_the_stages_make_of_them() {
    let mut tw = Twins::new(|| harness([1024, 65535]));
    let (instance, server) = snat_sides();
    let mut cv = Conversation::new(instance, server, 40);
    let (syn, ack, psh) = (0x02, 0x10, 0x18);
    let rx = |tw: &mut Twins, (port, frames): (u16, Vec<Vec<u8>>)| {
        tw.rx(port, &as_sent(port, frames));
    };
    rx(&mut tw, cv.all(false, syn, 0));
    // The ports the router chose, as the server sees them.
    let out = tw.cached.sink.on(UPLINK);
    cv.seen_ports = out[out.len() - 40..].iter().map(|f| tcp4(f).1).collect();
    rx(&mut tw, cv.all(true, syn | ack, 0));
    rx(&mut tw, cv.all(false, ack, 0));
    for _ in 0..4 {
        rx(&mut tw, cv.all(false, psh, 100));
        rx(&mut tw, cv.all(true, ack, 0));
    }
    assert!(tw.hits() >= 3 * 2 * 40, "hits: {}", tw.hits());
    let last = tw.cached.sink.on(UPLINK).last().unwrap();
    assert_eq!(tcp4(last), (G, cv.seen_ports[39], INET, 5001));
    // FIN from the server on connection 5: the stages see it; the rest carry on.
    let f = cv.seg(5, true, 0x01 | ack, 0, 64);
    tw.rx(UPLINK, &[f]);
    rx(&mut tw, cv.all(false, psh, 10));
    rx(&mut tw, cv.all(true, ack, 0));
}

/// A translation picked up again mid-stream (its entry gone: flushed here, or expired) is a
/// new one, here with another port: the flow cache does not answer for the packet that
/// picked it up (nothing it could check on a hit), learns the next one, and leaves the
/// connection's FIN to the stages. (That a slot learnt from the old translation never
/// answers for the new one is shown where the two can share an entry of the table:
/// `flowcache::tests::a_translation_made_again_in_the_same_entry_has_another_fingerprint`;
/// here the new one takes another entry.)
#[test]
fn a_translation_picked_up_again_is_cached_anew() {
    // Two ports: the instance's connection 0 and another one take them both.
    let mut tw = Twins::new(|| harness([1024, 1025]));
    let (instance, server) = snat_sides();
    let mut cv = Conversation::new(instance, server, 16);
    let rx = |tw: &mut Twins, port: u16, frames: Vec<Vec<u8>>| {
        tw.rx(port, &as_sent(port, frames));
    };
    let (syn, ack, psh) = (0x02, 0x10, 0x18);
    let out = |tw: &Twins| tcp4(tw.cached.sink.on(UPLINK).last().unwrap()).1;
    rx(&mut tw, OVERLAY, vec![cv.seg(0, false, syn, 0, 64)]);
    cv.seen_ports[0] = out(&tw);
    rx(&mut tw, UPLINK, vec![cv.seg(0, true, syn | ack, 0, 64)]);
    rx(&mut tw, OVERLAY, vec![cv.seg(0, false, ack, 0, 64)]);
    for _ in 0..3 {
        rx(&mut tw, OVERLAY, vec![cv.seg(0, false, psh, 10, 64)]);
        rx(&mut tw, UPLINK, vec![cv.seg(0, true, ack, 0, 64)]);
    }
    let hits = tw.hits();
    assert!(hits >= 2, "hits: {hits}");
    let first = cv.seen_ports[0];
    let flush = |tw: &mut Twins| {
        for h in tw.all() {
            h.s.fw.ct.flush(None);
        }
    };
    // Another connection of the instance takes connection 0's port while it is gone.
    flush(&mut tw);
    let taken = (1..16).any(|k| {
        rx(&mut tw, OVERLAY, vec![cv.seg(k, false, syn, 0, 64)]);
        out(&tw) == first || {
            flush(&mut tw);
            false
        }
    });
    assert!(taken, "one of 15 connections got port {first}");
    // Connection 0 goes on: picked up again, with the other port.
    for _ in 0..3 {
        rx(&mut tw, OVERLAY, vec![cv.seg(0, false, psh, 10, 64)]);
        assert_ne!(out(&tw), first);
    }
    assert_eq!(tw.hits(), hits + 1, "the third segment only");
    rx(&mut tw, OVERLAY, vec![cv.seg(0, false, 0x11, 0, 64)]);
    rx(&mut tw, OVERLAY, vec![cv.seg(0, false, ack, 0, 64)]);
    assert_eq!(tw.hits(), hits + 1, "FIN_WAIT is the stages' to track");
}

/// Round `round` of `n` UDP flows from i1 (ports 40000 + k) to port `dport` of the Internet
/// host, as compute1 sends them to the SNAT port in VXLAN, each datagram's payload (and so its
/// checksum) changing with the round.
fn udp_from_compute1(n: u16, dport: u16, round: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            let payload = [round ^ k as u8; 25];
            let ends = ((X1, INET), (40000 + k, dport));
            from_compute1(&udp4_tagged((DVR1, SNAT1), None, ends.0, ends.1, &payload))
        })
        .collect()
}

/// UDP through the SNAT router, many flows: once a flow is replied, the flow cache answers
/// its datagrams both ways as the stages do (out: the gateway address and the flow's own
/// port, VLAN 101; back: the instance's address and port, in VXLAN to compute1), checksums
/// right, a datagram without a UDP checksum left without one; a flow that expired is the
/// stages' to translate again.
#[test]
fn udp_snat_flows_from_the_flow_cache_are_what_the_stages_make_of_them() {
    let mut tw = Twins::new(|| harness([1024, 65535]));
    let n = 40u16;
    let out = |round: u8| udp_from_compute1(n, 53, round);
    tw.rx(OVERLAY, &out(0));
    // The ports the router chose, as the server sees them.
    let ports: Vec<u16> = tw.cached.sink.on(UPLINK)[..]
        .iter()
        .map(|f| udp4_fields(f).0 .1)
        .collect();
    assert_eq!(ports.len(), n as usize, "{:?}", tw.cached.c);
    let back = |round: u8| -> Vec<Vec<u8>> {
        ports
            .iter()
            .map(|&p| {
                let payload = [round.wrapping_mul(5) ^ p as u8; 40];
                udp4_tagged((INET_GW, QG1), Some(101), (INET, G), (53, p), &payload)
            })
            .collect()
    };
    tw.rx(UPLINK, &back(0));
    assert_eq!(tw.hits(), 0, "new flows and first replies take the stages");
    for round in 1..4 {
        tw.rx(OVERLAY, &out(round));
        tw.rx(UPLINK, &back(round));
    }
    assert_eq!(tw.hits(), 2 * 2 * n as u64, "{:?}", tw.cached.s.flows.stats);
    let up = tw.cached.sink.on(UPLINK);
    assert_eq!(up.len(), 4 * n as usize);
    let (from, to, _) = udp4_fields(up.last().unwrap());
    assert_eq!((from, to), ((G, ports[n as usize - 1]), (INET, 53)));
    let ov = tw.cached.sink.on(OVERLAY);
    assert_eq!(ov.len(), 4 * n as usize);
    let last = ov.last().unwrap();
    assert_eq!(&last[30..34], &[10, 0, 0, 11], "to compute1's VTEP");
    let (from, to, _) = udp4_fields(&last[50..]);
    assert_eq!((from, to), ((INET, 53), (X1, 40000 + n - 1)));
    // No UDP checksum (0) stays none, both ways, from the cache.
    let hits = tw.hits();
    let mut none_out = udp4_tagged((DVR1, SNAT1), None, (X1, INET), (40002, 53), &[1; 19]);
    none_out[40..42].fill(0);
    tw.rx(OVERLAY, &[from_compute1(&none_out)]);
    assert_eq!(udp4_fields(tw.cached.sink.on(UPLINK).last().unwrap()).2, 0);
    let mut none_back = back(9).swap_remove(2);
    none_back[44..46].fill(0);
    tw.rx(UPLINK, &[none_back]);
    assert_eq!(
        udp4_fields(&tw.cached.sink.on(OVERLAY).last().unwrap()[50..]).2,
        0
    );
    assert_eq!(tw.hits(), hits + 2);
    // The flows' deadlines pass (the cache's slots still young): their next datagrams are
    // the stages' to translate again.
    for h in tw.all() {
        h.s.fw.now = h.s.fw.now.wrapping_add(181_000);
    }
    let hits = tw.hits();
    tw.rx(OVERLAY, &out(10));
    assert_eq!(tw.hits(), hits, "expired flows are not the cache's");
}

/// One-way UDP from an instance through the SNAT router (a stream no server answers): from
/// a flow's second datagram on, the flow cache translates it as the stages do (the gateway
/// address, the flow's own port, checksums right), the translation left unreplied with its
/// unreplied deadline; the first reply is the stages' (the translation becomes replied),
/// after which the cache answers both ways; a translation left alone past its unreplied
/// deadline (30 s) is the stages' to make again.
#[test]
fn one_way_udp_snat_flows_from_the_flow_cache_are_what_the_stages_make_of_them() {
    let mut tw = Twins::new(|| harness([1024, 65535]));
    // The external gateway's MAC learnt first (from a datagram no translation awaits,
    // dropped): the replies below then change nothing the slots depend on but the
    // translations' state.
    let stray = udp4_tagged((INET_GW, QG1), Some(101), (INET, G), (514, 9), &[0; 8]);
    tw.rx(UPLINK, &[stray]);
    assert_eq!(tw.cached.c.dropped(D::RouterSnatUnknown), 1);
    let n = 40u16;
    let out = |round: u8| udp_from_compute1(n, 514, round);
    for round in 0..4 {
        tw.rx(OVERLAY, &out(round));
    }
    assert_eq!(tw.hits(), 2 * n as u64, "{:?}", tw.cached.s.flows.stats);
    let unreplied = super::conntrack::state::UNREPLIED as usize;
    assert_eq!(tw.cached.s.fw.ct.by_state[unreplied], n as u32);
    let up = tw.cached.sink.on(UPLINK);
    assert_eq!(up.len(), 4 * n as usize);
    // Every flow kept its port, from the stages and from the cache alike.
    let ports: Vec<u16> = up[..n as usize]
        .iter()
        .map(|f| udp4_fields(f).0 .1)
        .collect();
    for (k, f) in up[3 * n as usize..].iter().enumerate() {
        assert_eq!(udp4_fields(f).0, (G, ports[k]), "from the gateway address");
    }
    // The replies: the stages'; then the cache both ways.
    let back: Vec<Vec<u8>> = ports
        .iter()
        .map(|&p| udp4_tagged((INET_GW, QG1), Some(101), (INET, G), (514, p), &[7; 40]))
        .collect();
    tw.reply_to_one_way((OVERLAY, out), (UPLINK, &back), n);
    // Other flows one way, left alone for 31 s: the stages translate them again.
    let others: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            let inner = udp4_tagged((DVR1, SNAT1), None, (X1, INET), (41000 + k, 514), &[3; 25]);
            from_compute1(&inner)
        })
        .collect();
    for _ in 0..3 {
        tw.rx(OVERLAY, &others);
    }
    let hits = tw.hits();
    assert_eq!(hits, 5 * n as u64);
    tw.advance(31_000);
    tw.rx(OVERLAY, &others);
    assert_eq!(tw.hits(), hits, "expired translations are not the cache's");
}

/// Datagrams too big for one frame cross centralized SNAT in fragments, both ways, as through
/// Neutron's snat namespace: a 3,000-byte datagram the instance's stack cut to its network's
/// 1,450 bytes leaves from the gateway address, every fragment translated (the port in the
/// first, the address in all); the server's 3,000-byte answer, cut by its stack to 1,500 bytes,
/// comes back to the instance, each 1,500-byte fragment cut again for the VXLAN network. Both
/// put back together are the datagrams sent, translated, UDP checksums right. A later
/// fragment whose first fragment was never translated goes nowhere (`router.snat_fragment`).
#[test]
fn fragmented_datagrams_cross_centralized_snat_both_ways() {
    let mut h = harness([1024, 65535]);
    let bytes = |n: usize, k: usize| -> Vec<u8> { (0..n).map(|j| (j * k) as u8).collect() };
    let there = without_df(udp4_tagged(
        (DVR1, SNAT1),
        None,
        (X1, INET),
        (40000, 53),
        &bytes(3000, 3),
    ));
    let out: Vec<Vec<u8>> = fragments(&there, 1450)
        .iter()
        .map(|f| from_compute1(f))
        .collect();
    assert_eq!(out.len(), 3);
    h.rx(OVERLAY, &out);
    let up: Vec<Vec<u8>> = h.sink.on(UPLINK).iter().map(|f| untagged(f, 101)).collect();
    assert_eq!(up.len(), 3, "drops {:?}", h.c.drops);
    let (ip, d) = reassemble(&up, 1500);
    assert_eq!((ip.source, ip.destination), (G, INET));
    let port = u16::from_be_bytes([d[0], d[1]]);
    assert!(port >= 1024, "a port of the range: {port}");
    assert_eq!((&d[2..6], &d[8..]), (&there[36..40], &there[42..]));
    assert!(
        udp_sum_ok(&d, G, INET),
        "the translated datagram's checksum"
    );
    assert_eq!(h.c.count(E::SnatOut), 3);

    let back = without_df(udp4_tagged(
        (INET_GW, QG1),
        None,
        (INET, G),
        (53, port),
        &bytes(3000, 5),
    ));
    let pieces: Vec<Vec<u8>> = fragments(&back, 1500)
        .iter()
        .map(|f| tagged(f, 101))
        .collect();
    assert_eq!(pieces.len(), 3);
    h.rx(UPLINK, &pieces);
    let inner: Vec<Vec<u8>> = h
        .sink
        .on(OVERLAY)
        .iter()
        .map(|f| {
            let (vni, i) = inner_of(f);
            assert_eq!(vni, 101);
            i
        })
        .collect();
    // 1,480 bytes of payload a fragment do not fit 1,450: each full one is cut in two.
    assert_eq!(inner.len(), 5, "drops {:?}", h.c.drops);
    for f in &inner {
        assert_eq!((&f[..6], &f[6..12]), (&mac(M1).0[..], &mac(SNAT1).0[..]));
    }
    let (ip, d) = reassemble(&inner, 1450);
    assert_eq!((ip.source, ip.destination), (INET, X1));
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 40000);
    assert_eq!(d[8..], back[42..]);
    assert!(
        udp_sum_ok(&d, INET, X1),
        "the answer's checksum, translated back"
    );
    assert_eq!(h.c.count(E::SnatIn), 3);
    assert_eq!(h.c.count(E::RouterFragmented), 2);
    assert_eq!(h.c.count(E::RouterFragments), 4);

    // The middle fragment of another datagram (its own identification), alone: its first
    // fragment never came.
    let stray = fragments(
        &without_df(udp4_tagged(
            (INET_GW, QG1),
            None,
            (INET, G),
            (53, port),
            &bytes(3000, 7),
        )),
        1500,
    );
    let lone = tagged(&with_ident(stray[1].clone(), 0x5555), 101);
    h.rx(UPLINK, &[lone]);
    assert_eq!(h.c.dropped(D::RouterSnatFragment), 1);
    assert_eq!(h.sink.on(OVERLAY).len(), 5, "nothing more");
}

/// The snat-outbound shape under callgrind (see [`probe_established`]): 256 connections from
/// an instance on compute1 (VXLAN in) to an Internet server through the SNAT router.
#[test]
#[ignore = "a profiling workload, run by hand under valgrind"]
fn probe_snat_established_cost() {
    let mut h = harness([1024, 65535]);
    let (instance, server) = snat_sides();
    let mut cv = Conversation::new(instance, server, 256);
    probe_established(&mut h, &mut cv, rx_from_compute1, |h, cv| {
        // The ports the router chose, as the server sees them.
        let out = h.sink.on(UPLINK);
        let n = cv.n as usize;
        cv.seen_ports = out[out.len() - n..].iter().map(|f| tcp4(f).1).collect();
    });
}

/// The instance on compute1 (arriving in VXLAN on the overlay port, routed there to the SNAT
/// port) and an Internet server on the uplink (VLAN 101, answering the gateway address G).
fn snat_sides() -> (Side<'static>, Side<'static>) {
    let instance = Side {
        port: OVERLAY,
        smac: DVR1,
        dmac: SNAT1,
        vid: None,
        src: X1,
        dst: INET,
    };
    let server = Side {
        port: UPLINK,
        smac: INET_GW,
        dmac: QG1,
        vid: Some(101),
        src: INET,
        dst: G,
    };
    (instance, server)
}

/// `frames` as they arrive on `port`: on the overlay port, encapsulated as compute1 sends them.
fn as_sent(port: u16, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    if port == OVERLAY {
        frames.iter().map(|f| from_compute1(f)).collect()
    } else {
        frames
    }
}

fn rx_from_compute1(h: &mut Harness, (port, frames): (u16, Vec<Vec<u8>>)) {
    h.rx(port, &as_sent(port, frames));
}

/// An ICMP error about an established SNAT flow from either end reaches the other: from
/// the instance (in VXLAN from compute1) to the server, about the packet the server sent to
/// the gateway address and port; from the server to the instance, about the packet the
/// instance sent (the outer destination and the quoted source translated back).
#[test]
fn icmp_errors_about_snat_flows_reach_the_other_end() {
    for udp in [false, true] {
        let mut tw = Twins::new(|| harness([1024, 65535]));
        let (instance, server) = snat_sides();
        let mut cv = Conversation::new(instance, server, 2);
        cv.udp = udp;
        let (port, frames) = cv.all(false, if udp { 0 } else { 0x02 }, 0);
        tw.rx(port, &as_sent(port, frames));
        let out = tw.cached.sink.on(UPLINK);
        cv.seen_ports = out[out.len() - 2..]
            .iter()
            .map(|f| if udp { udp4_fields(f).0 .1 } else { tcp4(f).1 })
            .collect();
        let steps: &[(bool, u8)] = if udp {
            &[(true, 0), (false, 0)]
        } else {
            &[(true, 0x12), (false, 0x10), (false, 0x18), (true, 0x10)]
        };
        for &(from_server, flags) in steps {
            let (port, frames) = cv.all(from_server, flags, 0);
            tw.rx(port, &as_sent(port, frames));
        }
        tw.icmp_errors_reach_the_other_end(&cv, as_sent);
    }
}

/// Differential fuzz of the flow cache against the stages on centralized SNAT's established
/// connections (see `fip_tests::fuzz`): out of the overlay in VXLAN (the inner frame damaged,
/// the outer one as compute1 sends it) and back from the uplink.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// The external gateway's ARP replies: from its MAC, and from another (it moved).
    fn gateway_moves() -> Vec<(u16, Vec<u8>)> {
        [INET_GW, "02:00:00:00:01:02"]
            .into_iter()
            .map(|m| (UPLINK, arp101(m, EXT_GW, QG1, G)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn snat_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
        ) {
            let mut tw = Twins::new(|| harness([1024, 65535])).limit(FUZZ_TABLE, evict);
            tw.announcements = gateway_moves();
            let (instance, server) = snat_sides();
            let mut cv = Conversation::new(instance, server, 6);
            let rx = |tw: &mut Twins, (port, frames): (u16, Vec<Vec<u8>>)| {
                tw.rx(port, &as_sent(port, frames));
            };
            rx(&mut tw, cv.all(false, 0x02, 0));
            let out = tw.cached.sink.on(UPLINK);
            cv.seen_ports = out[out.len() - 6..].iter().map(|f| tcp4(f).1).collect();
            rx(&mut tw, cv.all(true, 0x12, 0));
            rx(&mut tw, cv.all(false, 0x10, 0));
            for _ in 0..2 {
                rx(&mut tw, cv.all(false, 0x18, 10));
                rx(&mut tw, cv.all(true, 0x10, 0));
            }
            prop_assert!(tw.hits() >= 12, "hits: {}", tw.hits());
            tw.play(&mut cv, &moves, as_sent);
        }

        /// Replied flows, or (`one_way`) flows the server has not answered yet, the
        /// instance's datagrams answered from the flow cache until the moves reply.
        #[test]
        fn snat_udp_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            let mut tw = Twins::new(|| harness([1024, 65535])).limit(FUZZ_TABLE, evict);
            tw.announcements = gateway_moves();
            let (instance, server) = snat_sides();
            let mut cv = Conversation::new(instance, server, 6);
            cv.udp = true;
            let (port, frames) = cv.all(false, 0, 20);
            tw.rx(port, &as_sent(port, frames));
            let out = tw.cached.sink.on(UPLINK);
            cv.seen_ports = out[out.len() - 6..].iter().map(|f| udp4_fields(f).0 .1).collect();
            for _ in 0..3 {
                if !one_way {
                    let (port, frames) = cv.all(true, 0, 30);
                    tw.rx(port, &as_sent(port, frames));
                }
                let (port, frames) = cv.all(false, 0, 20);
                tw.rx(port, &as_sent(port, frames));
            }
            prop_assert!(tw.hits() >= 6, "hits: {}", tw.hits());
            let unreplied = super::super::conntrack::state::UNREPLIED as usize;
            let left = tw.staged.s.fw.ct.by_state[unreplied];
            prop_assert_eq!(left, if one_way { 6 } else { 0 });
            tw.play(&mut cv, &moves, as_sent);
        }
    }
}
