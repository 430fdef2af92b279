//! Router stage tests: gateway ARP/ND, same-host and cross-host (DVR MAC) routing, TTL and
//! checksums re-parsed by etherparse, ICMP errors byte-checked, echo, the SNAT default, next-hop
//! resolution and the ICMP rate limit.
use super::firewall_tests::entry_in_zone;
use super::testutil::*;
use crate::counters::{DropReason as D, Event as E};
use crate::tables::{mac_u64, Tables};
use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

const HOST: &str = r#"
role = "dvr"
host_id = "compute1"
local_vtep_ip = "10.0.0.11"
dvr_mac = "fa:16:3f:00:00:01"
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
name = "vm3"
devargs = "net_ring2"
kind = "instance"
iface_id = "p3"
[[ports]]
name = "overlay"
devargs = "net_ring3"
kind = "overlay"
"#;

const STATE: &str = r#"
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11, dvr_mac: "fa:16:3f:00:00:01"}
  - {host: compute2, vtep_ip: 10.0.0.12, dvr_mac: "fa:16:3f:00:00:02"}
  - {host: network1, vtep_ip: 10.0.0.13, dvr_mac: "fa:16:3f:00:00:03"}
networks:
  # 1500-byte MTUs over a 1500-byte underlay: only the VXLAN overhead limits routed packets
  # that leave the host (to 1450).
  - {id: n1, name: selfservice1, "provider:network_type": vxlan, "provider:segmentation_id": 101, mtu: 1500}
  - {id: n2, name: selfservice2, "provider:network_type": vxlan, "provider:segmentation_id": 102, mtu: 1500}
  - {id: next, name: provider1, "provider:network_type": flat, "provider:physical_network": provider, "router:external": true}
subnets:
  - {id: s1, name: s1, network_id: n1, cidr: 198.51.100.0/24, ip_version: 4, gateway_ip: 198.51.100.1}
  - {id: s1v6, name: s1v6, network_id: n1, cidr: "fd00:198:51:100::/64", ip_version: 6, gateway_ip: "fd00:198:51:100::1"}
  - {id: s2, name: s2, network_id: n2, cidr: 198.18.0.0/24, ip_version: 4, gateway_ip: 198.18.0.1}
  - {id: s2v6, name: s2v6, network_id: n2, cidr: "fd00:198:18::/64", ip_version: 6, gateway_ip: "fd00:198:18::1"}
  - {id: sext, name: sext, network_id: next, cidr: 203.0.113.0/24, ip_version: 4}
routers:
  - id: r1
    name: router1
    distributed: true
    external_gateway_info: {network_id: next, enable_snat: true, external_fixed_ips: [{subnet_id: sext, ip_address: 203.0.113.11}]}
    routes: [{destination: 10.20.0.0/16, nexthop: 198.18.0.50}]
ports:
  - {id: p1, network_id: n1, mac_address: "fa:16:3e:00:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.11}, {subnet_id: s1v6, ip_address: "fd00:198:51:100::11"}], "binding:host_id": compute1, device_owner: "compute:nova"}
  - {id: p2, network_id: n2, mac_address: "fa:16:3e:00:00:02", fixed_ips: [{subnet_id: s2, ip_address: 198.18.0.12}, {subnet_id: s2v6, ip_address: "fd00:198:18::12"}], "binding:host_id": compute1, device_owner: "compute:nova"}
  - {id: p3, network_id: n1, mac_address: "fa:16:3e:00:00:03", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.13}], port_security_enabled: false, "binding:host_id": compute1, device_owner: "compute:nova"}
  - {id: r2, network_id: n2, mac_address: "fa:16:3e:00:02:01", fixed_ips: [{subnet_id: s2, ip_address: 198.18.0.21}, {subnet_id: s2v6, ip_address: "fd00:198:18::21"}], "binding:host_id": compute2, device_owner: "compute:nova"}
  - {id: nh, network_id: n2, mac_address: "fa:16:3e:00:02:50", fixed_ips: [{subnet_id: s2, ip_address: 198.18.0.50}], "binding:host_id": compute2, device_owner: "compute:nova"}
  - {id: gw1, network_id: n1, mac_address: "fa:16:3e:aa:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.1}, {subnet_id: s1v6, ip_address: "fd00:198:51:100::1"}], device_owner: "network:router_interface_distributed", device_id: r1}
  - {id: gw2, network_id: n2, mac_address: "fa:16:3e:aa:00:02", fixed_ips: [{subnet_id: s2, ip_address: 198.18.0.1}, {subnet_id: s2v6, ip_address: "fd00:198:18::1"}], device_owner: "network:router_interface_distributed", device_id: r1}
  - {id: snat1, network_id: n1, mac_address: "fa:16:3e:bb:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.10}], "binding:host_id": network1, device_owner: "network:router_centralized_snat", device_id: r1}
"#;

const VM1: u16 = 0;
const VM2: u16 = 1;
const VM3: u16 = 2;
const OVERLAY: u16 = 3;
const M1: &str = "fa:16:3e:00:00:01";
const M2: &str = "fa:16:3e:00:00:02";
const M3: &str = "fa:16:3e:00:00:03";
const R2: &str = "fa:16:3e:00:02:01";
const NH: &str = "fa:16:3e:00:02:50";
const GW1: &str = "fa:16:3e:aa:00:01";
const GW2: &str = "fa:16:3e:aa:00:02";
const SNAT1: &str = "fa:16:3e:bb:00:01";
const DVR1: &str = "fa:16:3f:00:00:01";
const DVR2: &str = "fa:16:3f:00:00:02";
const OV_MAC: &str = "02:00:00:00:00:11";
const C2_MAC: &str = "02:00:00:00:00:12";
const IP1: [u8; 4] = [198, 51, 100, 11];
const IP2: [u8; 4] = [198, 18, 0, 12];
const IPR2: [u8; 4] = [198, 18, 0, 21];

/// Also the fixture of `control::trace`'s east-west test.
pub(crate) fn tables() -> Tables {
    tables_with(STATE)
}

/// The host with desired state `state`.
fn tables_with(state: &str) -> Tables {
    let macs = [
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        mac("02:00:00:00:00:03"),
        mac(OV_MAC),
    ];
    tables_from(HOST, state, &macs)
}

/// A harness whose underlay already knows compute2's and network1's MAC.
fn harness() -> Harness {
    harness_with(STATE)
}

/// [`harness`] with desired state `state`.
fn harness_with(state: &str) -> Harness {
    let h = Harness::with(tables_with(state));
    for ip in ["10.0.0.12", "10.0.0.13"] {
        h.s.neigh
            .set_static(ip.parse().unwrap(), mac_u64(&mac(C2_MAC).0));
    }
    h
}

/// A UDP frame with TTL `ttl`, DF and a payload of `len` bytes.
fn udp4_sized(src: &str, dst: &str, sip: [u8; 4], dip: [u8; 4], ttl: u8, len: usize) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac(src).0, mac(dst).0)
        .ipv4(sip, dip, ttl)
        .udp(40000, 33434);
    let payload = vec![0x5a; len];
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn udp6_ttl(src: &str, dst: &str, sip: &str, dip: &str, hop: u8, len: usize) -> Vec<u8> {
    let s: std::net::Ipv6Addr = sip.parse().unwrap();
    let d: std::net::Ipv6Addr = dip.parse().unwrap();
    let b = etherparse::PacketBuilder::ethernet2(mac(src).0, mac(dst).0)
        .ipv6(s.octets(), d.octets(), hop)
        .udp(40000, 33434);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0x5a; len]).unwrap();
    out
}

/// Decapsulates a VXLAN frame: (VNI, inner frame).
fn ipv4_of(f: &[u8]) -> etherparse::Ipv4Header {
    etherparse::Ipv4Header::from_slice(&f[14..]).unwrap().0
}

#[test]
fn gateway_arp_is_answered_with_the_interface_mac() {
    let mut h = harness();
    h.rx(VM1, &[arp(M1, M1, IP1, [198, 51, 100, 1])]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::NetSlice::Arp(a)) = p.net else {
        panic!("not ARP")
    };
    assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(a.sender_hw_addr(), &mac(GW1).0);
    assert_eq!(a.sender_protocol_addr(), &[198, 51, 100, 1]);
    assert_eq!(a.target_protocol_addr(), &IP1);
    assert_eq!(&out[0][..6], &mac(M1).0);
    assert_eq!(h.c.count(E::GatewayArpReply), 1);
    // Nothing crossed the overlay.
    assert!(h.sink.on(OVERLAY).is_empty());
}

#[test]
fn same_host_routing_rewrites_macs_and_ttl() {
    let mut h = harness();
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, IP2, 64, 100)]);
    let out = h.sink.on(VM2);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let f = &out[0];
    assert_eq!(&f[..6], &mac(M2).0, "to the instance");
    assert_eq!(
        &f[6..12],
        &mac(GW2).0,
        "from the egress interface (local delivery)"
    );
    let ip = ipv4_of(f);
    assert_eq!(ip.time_to_live, 63);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!((ip.source, ip.destination), (IP1, IP2));
    // The payload is untouched and the UDP checksum still right.
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(TransportSlice::Udp(u)) = p.transport else {
        panic!("udp")
    };
    assert_eq!(u.payload(), &[0x5a; 100][..]);
    assert_eq!(
        u.to_header()
            .calc_checksum_ipv4_raw(IP1, IP2, u.payload())
            .unwrap(),
        u.checksum()
    );
    assert_eq!(h.c.count(E::Routed), 1);
    assert_eq!(h.c.count(E::DvrMacOut), 0);
    assert!(h.sink.on(OVERLAY).is_empty());
    assert_eq!(
        h.s.router.c[0][0].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn cross_host_routing_leaves_with_the_dvr_mac_on_the_egress_vni() {
    let mut h = harness();
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, IPR2, 64, 64)]);
    let out = h.sink.on(OVERLAY);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let (vni, inner) = inner_of(&out[0]);
    assert_eq!(
        vni, 102,
        "VNI of the destination's network: routed on this host"
    );
    assert_eq!(&inner[..6], &mac(R2).0);
    assert_eq!(
        &inner[6..12],
        &mac(DVR1).0,
        "this host's DVR MAC, not the gateway's"
    );
    let ip = ipv4_of(&inner);
    assert_eq!(ip.time_to_live, 63);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(h.c.count(E::DvrMacOut), 1);
}

#[test]
fn static_route_goes_via_its_next_hop() {
    let mut h = harness();
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, [10, 20, 3, 4], 64, 10)]);
    let out = h.sink.on(OVERLAY);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let (vni, inner) = inner_of(&out[0]);
    assert_eq!(vni, 102);
    assert_eq!(&inner[..6], &mac(NH).0, "the next hop's MAC");
    assert_eq!(ipv4_of(&inner).destination, [10, 20, 3, 4]);
}

#[test]
fn routed_frame_from_another_host_gets_the_gateway_mac_as_source() {
    let mut h = harness();
    // compute2 routed R2 -> vm2's network... here: a frame routed on compute2 to vm1.
    let inner = udp4_sized(DVR2, M1, IPR2, IP1, 63, 20);
    let outer = vxlan(&inner, 101);
    h.rx(OVERLAY, &[outer]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    assert_eq!(&out[0][6..12], &mac(GW1).0);
    assert_eq!(&out[0][12..], &inner[12..], "only the source MAC changed");
    assert_eq!(h.c.count(E::DvrMacIn), 1);
    assert_eq!(h.c.count(E::Routed), 0, "never routed a second time");
}

#[test]
fn gateway_mac_from_the_overlay_is_never_routed_again() {
    let mut h = harness();
    let inner = udp4_sized(R2, GW2, IPR2, IP1, 64, 20);
    h.rx(OVERLAY, &[vxlan(&inner, 102)]);
    assert_eq!(h.sink.total(), 0);
    assert_eq!(h.c.dropped(D::RouterFromFabric), 1);
}

fn vxlan(inner: &[u8], vni: u32) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut payload = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    payload.extend_from_slice(inner);
    let b = etherparse::PacketBuilder::ethernet2(mac(C2_MAC).0, mac(OV_MAC).0)
        .ipv4([10, 0, 0, 12], [10, 0, 0, 11], 64)
        .udp(50000, 4789);
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

/// The ICMP error in `f`: (type, code, bytes 5..8, quoted bytes), with its checksums checked.
fn icmp4_error(f: &[u8]) -> (Icmpv4Type, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    let all = ip.payload().payload;
    assert_eq!(
        etherparse::checksum::Sum16BitWords::new()
            .add_slice(all)
            .ones_complement(),
        0,
        "ICMP checksum"
    );
    (icmp.icmp_type(), icmp.payload().to_vec())
}

#[test]
fn ttl_one_gets_time_exceeded_from_the_ingress_interface() {
    let mut h = harness();
    let orig = udp4_sized(M1, GW1, IP1, IP2, 1, 700);
    h.rx(VM1, std::slice::from_ref(&orig));
    assert!(h.sink.on(VM2).is_empty());
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let f = &out[0];
    assert_eq!((&f[..6], &f[6..12]), (&mac(M1).0[..], &mac(GW1).0[..]));
    let ip = ipv4_of(f);
    assert_eq!((ip.source, ip.destination), ([198, 51, 100, 1], IP1));
    let (ty, quote) = icmp4_error(f);
    assert!(matches!(
        ty,
        Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)
    ));
    // RFC 1812: as much of the original as fits in 576 bytes.
    assert_eq!(f.len() - 14, 576);
    assert_eq!(&quote[..], &orig[14..14 + 576 - 28]);
    assert_eq!(h.c.count(E::IcmpErrorSent), 1);
}

#[test]
fn no_route_gets_net_unreachable_and_unroutable_sources_get_nothing() {
    // Without the SNAT port there is no default: 10.99.0.1 matches nothing.
    let state = STATE.replace(
        "device_owner: \"network:router_centralized_snat\"",
        "device_owner: \"network:dhcp\"",
    );
    let mut t = tables_from(HOST, &state, &[]);
    t.overlay = tables().overlay;
    let mut h = Harness::with(t);
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, [10, 99, 0, 1], 64, 10)]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let (ty, quote) = icmp4_error(&out[0]);
    assert!(matches!(
        ty,
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Network)
    ));
    assert_eq!(
        &quote[16..20],
        &[10, 99, 0, 1],
        "quotes the original header"
    );
    // An ICMP error is never sent about an ICMP error.
    let b = etherparse::PacketBuilder::ethernet2(mac(M1).0, mac(GW1).0)
        .ipv4(IP1, [10, 99, 0, 1], 64)
        .icmpv4(Icmpv4Type::TimeExceeded(
            etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
        ));
    let mut f = Vec::new();
    b.write(&mut f, &[0u8; 28]).unwrap();
    // (The firewall would drop this error about nothing it tracks before the router saw it;
    // this is about the router, so the firewall stages are off.)
    h.t.firewall = false;
    h.rx(VM1, &[f]);
    assert_eq!(h.sink.on(VM1).len(), 1);
    assert_eq!(h.c.dropped(D::RouterNoRoute), 1);
}

#[test]
fn default_goes_to_the_centralized_snat_port_over_the_overlay() {
    let mut h = harness();
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, [203, 0, 113, 50], 64, 10)]);
    let out = h.sink.on(OVERLAY);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    assert_eq!(&out[0][30..34], &[10, 0, 0, 13], "to network1's VTEP");
    let (vni, inner) = inner_of(&out[0]);
    assert_eq!(
        vni, 101,
        "the instance's own network (the SNAT port is on it)"
    );
    assert_eq!(&inner[..6], &mac(SNAT1).0);
    assert_eq!(&inner[6..12], &mac(DVR1).0);
    assert_eq!(ipv4_of(&inner).destination, [203, 0, 113, 50]);
    assert_eq!(h.c.count(E::ToSnat), 1);
}

#[test]
fn oversized_df_packet_gets_fragmentation_needed_with_the_mtu() {
    let mut h = harness();
    // 1472 bytes of IP with DF fit the networks (1500) but not VXLAN over a 1500 underlay.
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, IPR2, 64, 1444)]);
    assert!(h.sink.on(OVERLAY).is_empty());
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let (ty, _) = icmp4_error(&out[0]);
    match ty {
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
        ) => assert_eq!(next_hop_mtu, 1450),
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_packet_without_df_leaves_in_fragments() {
    let mut h = harness();
    // 1472 bytes of IP without DF, routed onto selfservice2 across hosts: its IP MTU is 1450
    // (VXLAN over the 1500 underlay), so two fragments, each in a VXLAN frame of its own.
    let f = without_df(udp4_sized(M1, GW1, IP1, IPR2, 64, 1444));
    h.rx(VM1, std::slice::from_ref(&f));
    let out = h.sink.on(OVERLAY);
    assert_eq!(out.len(), 2, "drops {:?}", h.c.drops);
    let mut inner = Vec::new();
    for (k, o) in out.iter().enumerate() {
        let (vni, i) = inner_of(o);
        assert_eq!(vni, 102);
        assert_eq!(&i[..6], &mac(R2).0, "fragment {k}: to the instance");
        assert_eq!(
            &i[6..12],
            &mac(DVR1).0,
            "fragment {k}: from this host's DVR MAC"
        );
        inner.push(i);
    }
    let (ip, payload) = reassemble(&inner, 1450);
    assert_eq!(ip.time_to_live, 63, "routed once");
    assert_eq!((ip.source, ip.destination), (IP1, IPR2));
    assert_eq!(ip.identification, u16::from_be_bytes([f[18], f[19]]));
    assert_eq!(payload, f[34..], "the datagram, whole, in order");
    assert_eq!(h.c.count(E::RouterFragmented), 1);
    assert_eq!(h.c.count(E::RouterFragments), 2);
    assert_eq!(h.c.count(E::Routed), 1);
    assert_eq!(h.c.dropped(D::RouterNeedsFragmentation), 0);
}

#[test]
fn echo_to_the_gateway_is_answered() {
    let mut h = harness();
    let b = etherparse::PacketBuilder::ethernet2(mac(M1).0, mac(GW1).0)
        .ipv4(IP1, [198, 51, 100, 1], 64)
        .icmpv4_echo_request(7, 1);
    let mut f = Vec::new();
    b.write(&mut f, b"ping").unwrap();
    h.rx(VM1, &[f]);
    let out = h.sink.on(VM1).to_vec();
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("icmp")
    };
    assert!(matches!(icmp.icmp_type(), Icmpv4Type::EchoReply(e) if e.id == 7 && e.seq == 1));
    assert_eq!(icmp.payload(), b"ping");
    let ip = ipv4_of(&out[0]);
    assert_eq!((ip.source, ip.destination), ([198, 51, 100, 1], IP1));
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let Some(NetSlice::Ipv4(ipv)) = &p.net else {
        panic!()
    };
    assert_eq!(
        etherparse::checksum::Sum16BitWords::new()
            .add_slice(ipv.payload().payload)
            .ones_complement(),
        0
    );
    // Echo to the other interface's address works from here too (one router).
    let b = etherparse::PacketBuilder::ethernet2(mac(M1).0, mac(GW1).0)
        .ipv4(IP1, [198, 18, 0, 1], 64)
        .icmpv4_echo_request(7, 2);
    let mut f = Vec::new();
    b.write(&mut f, b"ping").unwrap();
    h.rx(VM1, &[f]);
    assert_eq!(h.sink.on(VM1).len(), 2);
    assert_eq!(h.c.count(E::EchoReply), 2);
}

/// A Neighbor Solicitation for `target` from (`mac`, `src`), built by etherparse.
fn ns(m: &str, src: &str, target: &str) -> Vec<u8> {
    let s: std::net::Ipv6Addr = src.parse().unwrap();
    let t: std::net::Ipv6Addr = target.parse().unwrap();
    let o = t.octets();
    let d = std::net::Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    );
    let b = etherparse::PacketBuilder::ethernet2(mac(m).0, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
        .ipv6(s.octets(), d.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborSolicitation);
    let mut payload = o.to_vec();
    payload.extend_from_slice(&[1, 1]);
    payload.extend_from_slice(&mac(m).0);
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

#[test]
fn neighbor_solicitation_for_the_gateway_gets_an_advertisement() {
    let mut h = harness();
    h.rx(VM1, &[ns(M1, "fd00:198:51:100::11", "fd00:198:51:100::1")]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let f = &out[0];
    assert_eq!((&f[..6], &f[6..12]), (&mac(M1).0[..], &mac(GW1).0[..]));
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!()
    };
    let src = ip.header().source_addr();
    let dst = ip.header().destination_addr();
    assert_eq!(
        src,
        "fd00:198:51:100::1".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(ip.header().hop_limit(), 255);
    let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv6Type::NeighborAdvertisement(etherparse::icmpv6::NeighborAdvertisementHeader {
            router: true,
            solicited: true,
            r#override: true
        })
    );
    assert_eq!(
        icmp.icmp_type()
            .calc_checksum(src.octets(), dst.octets(), icmp.payload())
            .unwrap(),
        icmp.checksum()
    );
    let body = icmp.payload();
    assert_eq!(&body[..16], &src.octets());
    assert_eq!(&body[16..18], &[2, 1], "target link-layer address option");
    assert_eq!(&body[18..24], &mac(GW1).0);
    assert_eq!(h.c.count(E::GatewayNaSent), 1);
}

#[test]
fn ipv6_is_routed_with_hop_limit_and_errors() {
    let mut h = harness();
    h.rx(
        VM1,
        &[udp6_ttl(
            M1,
            GW1,
            "fd00:198:51:100::11",
            "fd00:198:18::21",
            64,
            40,
        )],
    );
    let out = h.sink.on(OVERLAY).to_vec();
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    let (vni, inner) = inner_of(&out[0]);
    assert_eq!(vni, 102);
    assert_eq!(
        (&inner[..6], &inner[6..12]),
        (&mac(R2).0[..], &mac(DVR1).0[..])
    );
    assert_eq!(inner[14 + 7], 63);

    // Hop limit 1: time exceeded (type 3) from the ingress interface's address.
    h.rx(
        VM1,
        &[udp6_ttl(
            M1,
            GW1,
            "fd00:198:51:100::11",
            "fd00:198:18::12",
            1,
            40,
        )],
    );
    // Too big for the 1450 MTU: packet too big (type 2) carrying the MTU.
    h.rx(
        VM1,
        &[udp6_ttl(
            M1,
            GW1,
            "fd00:198:51:100::11",
            "fd00:198:18::21",
            64,
            1440,
        )],
    );
    let back = h.sink.on(VM1);
    assert_eq!(back.len(), 2, "drops {:?}", h.c.drops);
    for (f, want) in back.iter().zip([
        Icmpv6Type::TimeExceeded(etherparse::icmpv6::TimeExceededCode::HopLimitExceeded),
        Icmpv6Type::PacketTooBig { mtu: 1450 },
    ]) {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!()
        };
        let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
        assert_eq!(
            src,
            "fd00:198:51:100::1".parse::<std::net::Ipv6Addr>().unwrap()
        );
        let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!()
        };
        assert_eq!(icmp.icmp_type(), want);
        assert_eq!(
            icmp.icmp_type()
                .calc_checksum(src.octets(), dst.octets(), icmp.payload())
                .unwrap(),
            icmp.checksum()
        );
        assert!(f.len() - 14 <= 1280, "RFC 4443: fits the minimum MTU");
    }
}

/// vm3's ARP reply for `ip` to the selfservice1 gateway.
fn arp_reply_from_vm3(ip: [u8; 4]) -> Vec<u8> {
    let a = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation::REPLY,
        &mac(M3).0,
        &ip,
        &mac(GW1).0,
        &[198, 51, 100, 1],
    )
    .unwrap();
    let b = etherparse::PacketBuilder::ethernet2(mac(M3).0, mac(GW1).0).arp(a);
    let mut out = Vec::new();
    b.write(&mut out).unwrap();
    out
}

#[test]
fn unknown_next_hop_is_resolved_by_arp_while_packets_wait() {
    let mut h = harness();
    // 198.51.100.77 sits behind vm3 (no port security): nobody in the desired state has it.
    let f = udp4_sized(M2, GW2, IP2, [198, 51, 100, 77], 64, 10);
    h.rx(VM2, std::slice::from_ref(&f));
    assert_eq!(h.c.count(E::NextHopHeld), 1, "held, not dropped");
    assert_eq!(h.c.drops.iter().sum::<u64>(), 0, "{:?}", h.c.drops);
    // The ARP request went to the local ports of the egress network only, from the gateway.
    let reqs: Vec<_> = [VM1, VM3]
        .iter()
        .flat_map(|&p| h.sink.on(p).to_vec())
        .collect();
    assert_eq!(reqs.len(), 2, "vm1 and vm3");
    assert!(h.sink.on(OVERLAY).is_empty(), "never over the overlay");
    let p = SlicedPacket::from_ethernet(&reqs[0]).unwrap();
    let Some(NetSlice::Arp(a)) = p.net else {
        panic!()
    };
    assert_eq!(a.operation(), etherparse::ArpOperation::REQUEST);
    assert_eq!(a.sender_hw_addr(), &mac(GW1).0);
    assert_eq!(a.sender_protocol_addr(), &[198, 51, 100, 1]);
    assert_eq!(a.target_protocol_addr(), &[198, 51, 100, 77]);
    // A second packet within the retry time waits too, without asking again.
    h.rx(VM2, std::slice::from_ref(&f));
    assert_eq!(h.c.count(E::ResolveSent), 1);
    assert_eq!(h.held.len(), 2);
    // vm3 answers for .77: both waiting packets leave, in order, routed.
    let before = h.sink.on(VM3).len();
    h.rx(VM3, &[arp_reply_from_vm3([198, 51, 100, 77])]);
    assert_eq!(h.c.count(E::RouterNeighborLearned), 1);
    assert_eq!(h.c.count(E::NextHopReleased), 2);
    assert_eq!(h.held.len(), 0);
    let out = h.sink.on(VM3).to_vec();
    assert_eq!(out.len(), before + 2, "drops {:?}", h.c.drops);
    for g in &out[before..] {
        assert_eq!((&g[..6], &g[6..12]), (&mac(M3).0[..], &mac(GW1).0[..]));
        assert_eq!(ipv4_of(g).time_to_live, 63);
        assert_eq!(
            &g[14 + 20..],
            &f[14 + 20..],
            "the payload is the original one"
        );
    }
    // Later packets are routed at once.
    h.rx(VM2, &[f]);
    assert_eq!(h.sink.on(VM3).len(), before + 3);
    assert_eq!(h.c.drops.iter().sum::<u64>(), 0, "{:?}", h.c.drops);
}

#[test]
fn the_wait_queue_is_bounded_and_times_out() {
    use super::router::{PENDING_MS, PENDING_PER_HOP};
    let mut h = harness();
    let frames: Vec<_> = (0..PENDING_PER_HOP + 3)
        .map(|_| udp4_sized(M2, GW2, IP2, [198, 51, 100, 77], 64, 10))
        .collect();
    h.rx(VM2, &frames);
    assert_eq!(h.held.len(), PENDING_PER_HOP);
    assert_eq!(
        h.c.dropped(D::RouterUnresolved),
        3,
        "beyond the per-hop bound"
    );
    // Another next hop has its own share.
    h.rx(VM2, &[udp4_sized(M2, GW2, IP2, [198, 51, 100, 78], 64, 10)]);
    assert_eq!(h.held.len(), PENDING_PER_HOP + 1);
    // Nobody answers: after PENDING_MS they are dropped and counted, each sender told the
    // host is unreachable (as the token bucket allows), and nothing leaks.
    let before = h.sink.on(VM2).len();
    h.s.now_ms += PENDING_MS + 1;
    h.rx(VM2, &[]);
    assert_eq!(h.held.len(), 0);
    assert_eq!(
        h.c.dropped(D::RouterUnresolved),
        3 + PENDING_PER_HOP as u64 + 1
    );
    let errors = &h.sink.on(VM2)[before..];
    assert_eq!(errors.len(), PENDING_PER_HOP + 1);
    let (ty, quote) = icmp4_error(&errors[0]);
    assert!(matches!(
        ty,
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Host)
    ));
    assert_eq!(&quote[16..20], &[198, 51, 100, 77]);
    assert_eq!(
        ipv4_of(&errors[0]).source,
        [198, 18, 0, 1],
        "from the ingress interface"
    );
    // An answer after that finds nothing waiting.
    h.rx(VM3, &[arp_reply_from_vm3([198, 51, 100, 77])]);
    assert_eq!(h.c.count(E::NextHopReleased), 0);
}

#[test]
fn icmp_errors_are_rate_limited_per_core() {
    let mut h = harness();
    let frames: Vec<_> = (0..60)
        .map(|_| udp4_sized(M1, GW1, IP1, IP2, 1, 10))
        .collect();
    h.rx(VM1, &frames);
    assert_eq!(h.sink.on(VM1).len(), 50, "a burst of 50");
    assert_eq!(h.c.count(E::IcmpRateLimited), 10);
    assert_eq!(h.c.dropped(D::RouterTtlExceeded), 10);
    // Tokens come back at one per ms.
    h.s.now_ms += 5;
    h.rx(VM1, &frames[..10]);
    assert_eq!(h.sink.on(VM1).len(), 55);
}

#[test]
fn every_packet_is_accounted_for_with_routing() {
    // A mixed burst: each packet ends routed, answered, or dropped with a reason.
    let mut h = harness();
    let frames = vec![
        udp4_sized(M1, GW1, IP1, IP2, 64, 10),
        udp4_sized(M1, GW1, IP1, IPR2, 64, 10),
        udp4_sized(M1, GW1, IP1, IP2, 1, 10),
        udp4_sized(M1, GW1, IP1, [224, 0, 0, 5], 64, 10),
        arp(M1, M1, IP1, [198, 51, 100, 1]),
        udp4(M1, M1, IP1, IP1, 1, 2),
    ];
    h.rx(VM1, &frames);
    let drops: u64 = h.c.drops.iter().sum();
    assert_eq!(
        h.sink.total() as u64 + drops,
        frames.len() as u64,
        "{:?}",
        h.c.drops
    );
    assert_eq!(h.c.dropped(D::RouterNotRoutable), 1);
}

#[test]
fn trace_shows_the_route_and_the_dvr_mac() {
    let mut h = harness();
    let mut tr = crate::pipeline::TraceLog::default();
    h.rx_traced(VM1, &[udp4_sized(M1, GW1, IP1, IPR2, 64, 10)], &mut tr);
    let lines = tr.for_packet(0).join("\n");
    for want in [
        "integration: network selfservice1: fa:16:3e:aa:00:01 -> router router1 (interface gw1)",
        "router: router1 198.18.0.21: route 198.18.0.0/24 -> network selfservice2, fa:16:3f:00:00:01 -> fa:16:3e:00:02:01, to Tunnel(0) (source: this host's DVR MAC)",
        "output: vxlan to VTEP 10.0.0.12",
    ] {
        assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
    }
}

#[test]
fn route_cache_follows_new_tables() {
    let mut h = harness();
    let f = udp4_sized(M1, GW1, IP1, IPR2, 64, 10);
    h.rx(VM1, std::slice::from_ref(&f));
    h.rx(VM1, std::slice::from_ref(&f));
    // The remote instance's port gets another MAC in the next generation of tables.
    let moved = "fa:16:3e:00:02:99";
    let mut t = tables_from(HOST, &STATE.replace(R2, moved), &[]);
    t.overlay = tables().overlay;
    t.generation = h.t.generation + 1;
    h.t = t;
    h.rx(VM1, std::slice::from_ref(&f));
    let out = h.sink.on(OVERLAY);
    assert_eq!(out.len(), 3, "drops {:?}", h.c.drops);
    assert_eq!(&inner_of(&out[1]).1[..6], &mac(R2).0);
    assert_eq!(
        &inner_of(&out[2]).1[..6],
        &mac(moved).0,
        "not the cached MAC"
    );
}

/// DVR on VLAN provider networks: no tunnel, the DVR MAC is what the physical network sees.
mod vlan {
    use super::*;

    const HOST: &str = r#"
role = "dvr"
host_id = "compute1"
dvr_mac = "fa:16:3f:00:00:01"
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
name = "uplink"
devargs = "net_ring2"
kind = "provider"
[bridge_mappings]
provider = "uplink"
"#;

    const STATE: &str = r#"
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11, dvr_mac: "fa:16:3f:00:00:01"}
  - {host: compute2, vtep_ip: 10.0.0.12, dvr_mac: "fa:16:3f:00:00:02"}
networks:
  - {id: n1, name: vlan101, "provider:network_type": vlan, "provider:physical_network": provider, "provider:segmentation_id": 101}
  - {id: n2, name: vlan102, "provider:network_type": vlan, "provider:physical_network": provider, "provider:segmentation_id": 102}
subnets:
  - {id: s1, name: s1, network_id: n1, cidr: 198.51.100.0/24, ip_version: 4, gateway_ip: 198.51.100.1}
  - {id: s2, name: s2, network_id: n2, cidr: 198.18.0.0/24, ip_version: 4, gateway_ip: 198.18.0.1}
routers:
  - {id: r1, name: router1, distributed: true}
ports:
  - {id: p1, network_id: n1, mac_address: "fa:16:3e:00:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.11}], "binding:host_id": compute1}
  - {id: p2, network_id: n2, mac_address: "fa:16:3e:00:00:02", fixed_ips: [{subnet_id: s2, ip_address: 198.18.0.12}], "binding:host_id": compute1}
  - {id: r2, network_id: n2, mac_address: "fa:16:3e:00:02:01", fixed_ips: [{subnet_id: s2, ip_address: 198.18.0.21}], "binding:host_id": compute2}
  - {id: gw1, network_id: n1, mac_address: "fa:16:3e:aa:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.1}], device_owner: "network:router_interface_distributed", device_id: r1}
  - {id: gw2, network_id: n2, mac_address: "fa:16:3e:aa:00:02", fixed_ips: [{subnet_id: s2, ip_address: 198.18.0.1}], device_owner: "network:router_interface_distributed", device_id: r1}
"#;
    const UPLINK: u16 = 2;

    #[test]
    fn routed_frames_leave_tagged_with_the_dvr_mac_and_arrive_with_the_gateway_mac() {
        let mut h = Harness::with(tables_from(HOST, STATE, &[]));
        // compute2's instance has been heard on VLAN 102 (learned behind the uplink).
        h.rx(UPLINK, &[udp4_vlan(R2, M2, 102, IPR2, IP2)]);
        let before = h.sink.on(VM2).len();
        h.rx(VM1, &[udp4_sized(M1, GW1, IP1, IPR2, 64, 10)]);
        let out = h.sink.on(UPLINK);
        assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
        let f = &out[0];
        assert_eq!((&f[..6], &f[6..12]), (&mac(R2).0[..], &mac(DVR1).0[..]));
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 102], "tagged with VLAN 102");
        assert_eq!(f[18 + 8], 63, "TTL");
        assert_eq!(h.sink.on(VM2).len(), before, "unicast: no flood copy");
        assert_eq!(h.c.count(E::DvrMacOut), 1);

        // compute2 routed a frame to vm1 and sent it on VLAN 101 with its DVR MAC.
        h.rx(UPLINK, &[udp4_vlan(DVR2, M1, 101, IPR2, IP1)]);
        let got = h.sink.on(VM1);
        assert_eq!(got.len(), 1, "drops {:?}", h.c.drops);
        assert_eq!(
            (&got[0][..6], &got[0][6..12]),
            (&mac(M1).0[..], &mac(GW1).0[..])
        );
        assert_eq!(h.c.count(E::DvrMacIn), 1);
        // The gateway MAC arriving from the physical network is not routed here.
        h.rx(UPLINK, &[udp4_vlan(R2, GW2, 102, IPR2, IP1)]);
        assert_eq!(h.c.dropped(D::RouterFromFabric), 1);

        // Asking for an unknown next hop never puts the gateway MAC on the physical network.
        let on_uplink = h.sink.on(UPLINK).len();
        h.rx(VM1, &[udp4_sized(M1, GW1, IP1, [198, 18, 0, 99], 64, 10)]);
        assert_eq!(h.c.count(E::ResolveSent), 1);
        assert_eq!(
            h.sink.on(UPLINK).len(),
            on_uplink,
            "no request on the uplink"
        );
        let asked = h.sink.on(VM2).last().unwrap();
        assert_eq!(
            (&asked[..6], &asked[6..12]),
            (&[0xff; 6][..], &mac(GW2).0[..])
        );
    }
}

mod fuzz {
    //! Mutated routing traffic through the whole pipeline: no panic, nothing held forever.
    use super::*;
    use proptest::prelude::*;

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        let echo = {
            let b = etherparse::PacketBuilder::ethernet2(mac(M1).0, mac(GW1).0)
                .ipv4(IP1, [198, 51, 100, 1], 64)
                .icmpv4_echo_request(1, 1);
            let mut f = Vec::new();
            b.write(&mut f, b"x").unwrap();
            f
        };
        let templates = vec![
            udp4_sized(M1, GW1, IP1, IPR2, 64, 30),
            udp4_sized(M1, GW1, IP1, IP2, 1, 30),
            udp4_sized(M1, GW1, IP1, [198, 18, 0, 99], 64, 30),
            udp4_sized(M1, GW1, IP1, [203, 0, 113, 9], 64, 30),
            udp6_ttl(M1, GW1, "fd00:198:51:100::11", "fd00:198:18::21", 64, 30),
            udp6_ttl(M1, GW1, "fd00:198:51:100::11", "fd00:198:18::12", 1, 30),
            ns(M1, "fd00:198:51:100::11", "fd00:198:51:100::1"),
            arp(M1, M1, IP1, [198, 51, 100, 1]),
            echo,
            vxlan(&udp4_sized(DVR2, M1, IPR2, IP1, 63, 20), 101),
        ];
        (
            proptest::sample::select(templates),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            0usize..200,
        )
            .prop_map(|(mut f, muts, cut)| {
                for (at, v) in muts {
                    // Leave the MACs alone more often than not, so frames reach the router.
                    let i = 12 + at % (f.len() - 12);
                    f[i] = v;
                }
                f.truncate(f.len().saturating_sub(cut % f.len().max(1)));
                f
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn routing_never_panics_and_holds_nothing_forever(
            frames in proptest::collection::vec(frame(), 1..40),
            port in proptest::sample::select(vec![VM1, VM2, VM3, OVERLAY]),
        ) {
            let mut h = harness();
            h.rx(port, &frames);
            prop_assert!(h.held.len() <= super::super::router::PENDING_MAX);
            let handled = h.sink.total() as u64 + h.c.drops.iter().sum::<u64>() + h.held.len() as u64;
            prop_assert!(handled > 0 || frames.iter().all(|f| f.len() >= 42 && f[12..14] == [8, 6]));
            h.s.now_ms += super::super::router::PENDING_MS + 1;
            h.rx(port, &[]);
            prop_assert_eq!(h.held.len(), 0);
        }
    }
}

#[test]
fn held_packets_leave_in_arrival_order() {
    let mut h = harness();
    let to = |last: u8, tag: u8| {
        let mut f = udp4_sized(M2, GW2, IP2, [198, 51, 100, last], 64, 10);
        let n = f.len();
        f[n - 1] = tag;
        f
    };
    // P1 -> .77, P2 -> .78, P3 -> .77; .78 resolves (P2 leaves); P4 -> .77; .77 resolves.
    h.rx(VM2, &[to(77, 1), to(78, 2), to(77, 3)]);
    h.rx(VM3, &[arp_reply_from_vm3([198, 51, 100, 78])]);
    h.rx(VM2, &[to(77, 4)]);
    h.rx(VM3, &[arp_reply_from_vm3([198, 51, 100, 77])]);
    let tags: Vec<u8> = h
        .sink
        .on(VM3)
        .iter()
        .filter(|f| f.len() > 42 && f[12..14] == [8, 0])
        .map(|f| *f.last().unwrap())
        .collect();
    assert_eq!(tags, vec![2, 1, 3, 4]);
}

#[test]
fn gateway_learns_only_on_link_askers_and_gratuitous_arp_refreshes() {
    let mut h = harness();
    // vm3 (no port security) asks for the gateway from an address off the subnet: answered,
    // not learned.
    h.rx(VM3, &[arp(M3, M3, [10, 9, 9, 9], [198, 51, 100, 1])]);
    assert_eq!(h.c.count(E::GatewayArpReply), 1);
    assert_eq!(h.c.count(E::RouterNeighborLearned), 0);
    // On the subnet: learned.
    h.rx(VM3, &[arp(M3, M3, [198, 51, 100, 77], [198, 51, 100, 1])]);
    assert_eq!(h.c.count(E::RouterNeighborLearned), 1);
    // A gratuitous ARP moves it.
    h.rx(
        VM3,
        &[arp(
            M3,
            "fa:16:3e:00:00:33",
            [198, 51, 100, 77],
            [198, 51, 100, 77],
        )],
    );
    assert_eq!(h.c.count(E::RouterNeighborLearned), 2);
    h.rx(VM2, &[udp4_sized(M2, GW2, IP2, [198, 51, 100, 77], 64, 10)]);
    let out = h.sink.on(VM3).last().unwrap().clone();
    assert_eq!(&out[..6], &mac("fa:16:3e:00:00:33").0);
}

#[test]
fn broadcasts_source_routes_and_odd_echoes_are_not_routed_or_answered() {
    let mut h = harness();
    // Directed broadcast of a connected subnet, and its network address.
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, [198, 18, 0, 255], 64, 10)]);
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, [198, 18, 0, 0], 64, 10)]);
    assert_eq!(h.c.dropped(D::RouterNotRoutable), 2);
    // A loose source route option (RFC 791), header checksum fixed up.
    let mut f = udp4_sized(M1, GW1, IP1, IP2, 64, 10);
    let opt = [0x83u8, 7, 4, 198, 18, 0, 12, 0];
    f.splice(34..34, opt);
    f[14] = 0x47;
    let total = u16::from_be_bytes([f[16], f[17]]) + 8;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24..26].fill(0);
    let cs = crate::packet::checksum::checksum(&f[14..42]);
    f[24..26].copy_from_slice(&cs.to_be_bytes());
    h.rx(VM1, &[f]);
    assert_eq!(h.c.dropped(D::RouterNotRoutable), 3);
    // An echo request that is a first fragment gets no reply.
    let b = etherparse::PacketBuilder::ethernet2(mac(M1).0, mac(GW1).0)
        .ipv4(IP1, [198, 51, 100, 1], 64)
        .icmpv4_echo_request(1, 1);
    let mut e = Vec::new();
    b.write(&mut e, b"frag").unwrap();
    e[20] |= 0x20;
    e[24..26].fill(0);
    let cs = crate::packet::checksum::checksum(&e[14..34]);
    e[24..26].copy_from_slice(&cs.to_be_bytes());
    h.rx(VM1, &[e]);
    assert_eq!(h.c.count(E::EchoReply), 0);
    assert_eq!(h.c.dropped(D::RouterToRouter), 1);
    assert!(h.sink.on(VM1).is_empty());
}

#[test]
fn a_centralized_router_routes_what_comes_over_the_fabric() {
    let host = HOST.replace("role = \"dvr\"", "role = \"dvr_snat\"");
    let state = STATE.replace("    distributed: true\n", "    distributed: false\n");
    let state = state.replace(
        "network:router_interface_distributed",
        "network:router_interface",
    );
    let mut t = tables_from(&host, &state, &[]);
    t.overlay = tables().overlay;
    let mut h = Harness::with(t);
    for ip in ["10.0.0.12", "10.0.0.13"] {
        h.s.neigh
            .set_static(ip.parse().unwrap(), mac_u64(&mac(C2_MAC).0));
    }
    // compute2's instance sends to its gateway, which lives here: routed to vm1.
    let inner = udp4_sized(R2, GW2, IPR2, IP1, 64, 20);
    h.rx(OVERLAY, &[vxlan(&inner, 102)]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    assert_eq!(
        &out[0][6..12],
        &mac(GW1).0,
        "its own interface MAC, no DVR MAC"
    );
    // And the reply goes back over the overlay with the interface MAC too.
    h.rx(VM1, &[udp4_sized(M1, GW1, IP1, IPR2, 64, 20)]);
    let back = h.sink.on(OVERLAY);
    assert_eq!(back.len(), 1, "drops {:?}", h.c.drops);
    assert_eq!(&inner_of(&back[0]).1[6..12], &mac(GW2).0);
    assert_eq!(h.c.count(E::DvrMacOut), 0);
}

/// IPv6 is not translated, but north-south it still goes to the network node: with the SNAT
/// port holding an IPv6 address on the instance's subnet, what matches no IPv6 route goes
/// there over the overlay, addresses untouched, hop limit less one.
#[test]
fn ipv6_default_goes_to_the_snat_port_untranslated() {
    let v6_state = STATE.replace(
        r#"fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.10}], "binding:host_id": network1"#,
        r#"fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.10}, {subnet_id: s1v6, ip_address: "fd00:198:51:100::10"}], "binding:host_id": network1"#,
    );
    assert_ne!(v6_state, STATE);
    let mut h = harness_with(&v6_state);
    h.rx(
        VM1,
        &[udp6_ttl(
            M1,
            GW1,
            "fd00:198:51:100::11",
            "2001:db8:ffff::9",
            64,
            10,
        )],
    );
    let out = h.sink.on(OVERLAY);
    assert_eq!(out.len(), 1, "drops {:?}", h.c.drops);
    assert_eq!(&out[0][30..34], &[10, 0, 0, 13], "to network1's VTEP");
    let (vni, inner) = inner_of(&out[0]);
    assert_eq!(vni, 101);
    assert_eq!(&inner[..6], &mac(SNAT1).0);
    assert_eq!(&inner[6..12], &mac(DVR1).0);
    let ip = etherparse::Ipv6Header::from_slice(&inner[14..]).unwrap().0;
    assert_eq!(ip.hop_limit, 63);
    assert_eq!(
        (ip.source, ip.destination),
        (
            "fd00:198:51:100::11"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            "2001:db8:ffff::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        ),
        "not translated"
    );
    assert_eq!(h.c.count(E::ToSnat), 1);
    // Without the SNAT port's IPv6 address (the original state): no route, as before.
    let mut h = harness();
    h.rx(
        VM1,
        &[udp6_ttl(
            M1,
            GW1,
            "fd00:198:51:100::11",
            "2001:db8:ffff::9",
            64,
            10,
        )],
    );
    assert!(h.sink.on(OVERLAY).is_empty());
    let back = h.sink.on(VM1);
    assert_eq!(back.len(), 1, "an ICMPv6 error back: {:?}", h.c);
    assert_eq!(back[0][54], 1, "destination unreachable");
}

/// Frames another host's distributed router sent to an instance here (its DVR MAC as source,
/// over the overlay) are answered by the flow cache once their connection is established:
/// the gateway's MAC as source and `router.dvr_mac_in` counted, exactly as the stages do them.
#[test]
fn frames_routed_on_another_host_from_the_flow_cache_are_what_the_stages_make_of_them() {
    let mut tw = Twins::new(harness);
    let (c0, s0) = (1000u32, 5000u32);
    let from_r2 = |k: u16, (seq, ack): (u32, u32), flags: u8, len: usize| {
        let inner = tcp4(
            DVR2,
            M1,
            None,
            (IPR2, IP1),
            (40000 + k, 22),
            (seq, ack),
            flags,
            len,
            63,
        );
        vxlan(&inner, 101)
    };
    let from_vm1 = |k: u16, (seq, ack): (u32, u32), flags: u8| {
        tcp4(
            M1,
            GW1,
            None,
            (IP1, IPR2),
            (22, 40000 + k),
            (seq, ack),
            flags,
            0,
            64,
        )
    };
    let n = 8;
    let all = |f: &dyn Fn(u16) -> Vec<u8>| (0..n).map(f).collect::<Vec<_>>();
    tw.rx(OVERLAY, &all(&|k| from_r2(k, (c0, 0), 0x02, 0)));
    tw.rx(VM1, &all(&|k| from_vm1(k, (s0, c0 + 1), 0x12)));
    tw.rx(OVERLAY, &all(&|k| from_r2(k, (c0 + 1, s0 + 1), 0x10, 0)));
    for round in 0..4 {
        let seq = c0 + 1 + 6 * round;
        tw.rx(OVERLAY, &all(&|k| from_r2(k, (seq, s0 + 1), 0x18, 6)));
        tw.rx(VM1, &all(&|k| from_vm1(k, (s0 + 1, seq + 6), 0x10)));
    }
    assert!(tw.hits() >= 3 * 2 * n as u64, "hits: {}", tw.hits());
    let out = tw.cached.sink.on(VM1);
    assert_eq!(out.len(), 6 * n as usize, "drops {:?}", tw.cached.c.drops);
    assert!(out.iter().all(|f| f[6..12] == mac(GW1).0));
    assert_eq!(tw.cached.c.count(E::DvrMacIn), 6 * n as u64);
}

/// A packet the router answers (here a SYN whose TTL runs out) comes back to its sender's
/// port as another frame: the ingress check there judges the ICMP error as related to the
/// connection it quotes and leaves that connection as the egress check made it. (It went on
/// from the egress check's judgement of the original: the quoted SYN was judged again as one
/// coming in, and could reopen its connection the other way.)
#[test]
fn an_icmp_error_from_the_router_is_judged_as_itself_at_the_senders_port() {
    let (vm2, vm1) = cache_fuzz::routed_sides();
    let mut tw = Twins::new(harness);
    let mut cv = Conversation::new(vm2, vm1, 1);
    tw.warm_up(&mut cv, |_, f| f);
    // vm2 resets the connection, then opens it again with a SYN that dies at the router.
    tw.rx(VM2, &[cv.seg(0, false, 0x04, 0, 64)]);
    let (back, related) = (
        tw.staged.sink.on(VM2).len(),
        tw.staged.c.count(E::ConntrackRelated),
    );
    tw.rx(VM2, &[cv.seg(0, false, 0x02, 0, 1)]);
    let h = &tw.staged;
    assert_eq!(h.sink.on(VM2).len(), back + 1, "{:?}", h.c);
    assert_eq!(h.sink.on(VM2).last().unwrap()[34], 11, "time exceeded");
    assert_eq!(h.c.count(E::ConntrackRelated), related + 1);
    let (_, e) = entry_in_zone(h, VM2 + 1);
    assert_eq!(
        (e.state, e.flags & super::conntrack::flag::INGRESS),
        (super::conntrack::state::SYN_SENT, 0),
        "the new connection, as vm2's egress opened it"
    );
}

/// A retransmission TCP ignores (a SYN on an established connection) changes nothing in
/// the sender's zone, so the receiver's, taking the sender's result, changes nothing either:
/// not even the deadline, which a segment that passed the sender's zone and never reached the
/// receiver (dropped by the router for a bad header checksum) had moved on there alone.
#[test]
fn an_ignored_retransmission_leaves_the_receivers_deadline_as_it_was() {
    let (vm2, vm1) = cache_fuzz::routed_sides();
    let mut tw = Twins::new(harness);
    let mut cv = Conversation::new(vm2, vm1, 1);
    tw.warm_up(&mut cv, |_, f| f);
    let deadline = |tw: &Twins, zone: u16| entry_in_zone(&tw.staged, zone).1.expires;
    let (vm2_zone, vm1_zone) = (VM2 + 1, VM1 + 1);
    let before = deadline(&tw, vm1_zone);
    tw.advance(1000);
    let mut bad_sum = cv.seg(0, false, 0x10, 0, 64);
    bad_sum[15] ^= 1;
    tw.rx(VM2, &[bad_sum]);
    assert_eq!(tw.staged.c.dropped(D::RouterMalformed), 1);
    assert_eq!(
        deadline(&tw, vm2_zone),
        before + 1000,
        "vm2's zone let it out"
    );
    tw.rx(VM2, &[cv.seg(0, false, 0x02, 0, 64)]);
    assert_eq!(deadline(&tw, vm1_zone), before, "vm1's zone saw neither");
}

/// Differential fuzz of the flow cache against the stages on routed flows (see
/// `fip_tests::fuzz`): between two instances of this host on two networks of the distributed
/// router, and from an instance on compute2 (routed there, arriving in VXLAN from its DVR
/// MAC) to vm1 and back through this host's router.
mod cache_fuzz {
    use super::*;
    use proptest::prelude::*;

    /// vm1 (selfservice1) answering `peer` through its gateway.
    fn vm1_to(peer: [u8; 4]) -> Side<'static> {
        Side {
            port: VM1,
            smac: M1,
            dmac: GW1,
            vid: None,
            src: IP1,
            dst: peer,
        }
    }

    /// vm2 (selfservice2, client) and vm1 (selfservice1, server), routed here.
    pub(super) fn routed_sides() -> (Side<'static>, Side<'static>) {
        let vm2 = Side {
            port: VM2,
            smac: M2,
            dmac: GW2,
            vid: None,
            src: IP2,
            dst: IP1,
        };
        (vm2, vm1_to(IP2))
    }

    /// r2 on compute2 (client, its frames routed there and sent over VNI 101) and vm1.
    fn across_hosts_sides() -> (Side<'static>, Side<'static>) {
        let r2 = Side {
            port: OVERLAY,
            smac: DVR2,
            dmac: M1,
            vid: None,
            src: IPR2,
            dst: IP1,
        };
        (r2, vm1_to(IPR2))
    }

    fn from_compute2(port: u16, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        if port == OVERLAY {
            frames.iter().map(|f| vxlan(f, 101)).collect()
        } else {
            frames
        }
    }

    /// The IPv6 addresses of `sides`' client (vm2 or r2) and vm1.
    fn v6_of(sides: &(Side<'static>, Side<'static>)) -> [[u8; 16]; 2] {
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let client = if sides.0.port == OVERLAY {
            "fd00:198:18::21"
        } else {
            "fd00:198:18::12"
        };
        [a(client), a("fd00:198:51:100::11")]
    }

    /// An ICMP (ICMPv6) error about a routed flow, from either end, reaches the other end as
    /// an error about the packet that end sent: routed here between two instances, and routed
    /// on compute2 (arriving over VNI 101 from its DVR MAC; vm1's error goes back through this
    /// host's router and the overlay). IPv6 is routed, never translated.
    #[test]
    fn icmp_errors_about_routed_flows_reach_the_other_end() {
        use super::super::conntrack::state;
        for sides in [routed_sides(), across_hosts_sides()] {
            for (udp, v6) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut cv = Conversation::new(sides.0, sides.1, 2);
                cv.udp = udp;
                cv.v6 = v6.then(|| v6_of(&sides));
                let mut tw = Twins::new(harness);
                tw.warm_up(&mut cv, from_compute2);
                let steady = if udp {
                    state::REPLIED
                } else {
                    state::ESTABLISHED
                };
                // In both instances' zones here; in vm1's alone for r2 on compute2.
                let zones = if sides.0.port == OVERLAY { 1 } else { 2 };
                assert_eq!(
                    tw.staged.s.fw.ct.by_state[steady as usize],
                    2 * zones,
                    "{:?}",
                    tw.staged.c
                );
                tw.icmp_errors_reach_the_other_end(&cv, from_compute2);
            }
        }
    }

    /// IPv6 connections routed on compute2 (from r2, over VNI 101) are answered by the flow
    /// cache once established, both ways, as the stages route them (MACs, vm1's answers routed
    /// here with hop limit - 1 and encapsulated, vm1's zone's tracking); a segment of vm1's
    /// whose hop limit runs out here, or too big for the overlay (1450), takes the stages (time
    /// exceeded, packet too big, back to vm1), and the next segments hit again.
    #[test]
    fn ipv6_flows_routed_on_another_host_from_the_flow_cache_are_what_the_stages_make_of_them() {
        let sides = across_hosts_sides();
        let mut cv = Conversation::new(sides.0, sides.1, 4);
        cv.v6 = Some(v6_of(&sides));
        let mut tw = Twins::new(harness);
        tw.warm_up(&mut cv, from_compute2);
        // vm1's segments, routed here.
        let port = cv.port(true);
        for (hop_limit, payload, want) in [(1u8, 10usize, 3u8), (64, 1420, 2)] {
            let (hits, before) = (tw.hits(), tw.cached.sink.on(port).len());
            let f = cv.seg(0, true, 0x18, payload, hop_limit);
            tw.rx(port, &from_compute2(port, vec![f]));
            let what = format!("hop limit {hop_limit}, {payload} bytes");
            assert_eq!(tw.hits(), hits, "{what}: staged");
            let out = tw.cached.sink.on(port);
            assert_eq!(
                out.len(),
                before + 1,
                "{what}: an answer: {:?}",
                tw.cached.c
            );
            let says = icmp_says(&out[before]).expect("an ICMPv6 error");
            assert_eq!(says.2, want, "{what}: ICMPv6 type: {says:?}");
            for from_server in [false, true] {
                let (port, frames) = cv.all(from_server, 0x10, 0);
                tw.rx(port, &from_compute2(port, frames));
            }
            assert_eq!(tw.hits(), hits + 8, "{what}: the next segments hit");
        }
    }

    /// One batch with IPv4 and IPv6 segments of established connections side by side, and a
    /// FIN of each family ahead of an ACK of its own connection: each family's segments are
    /// answered from its own table, the FINs and the ACKs behind them take the stages (the
    /// other family's packets never hold a hit back), on all three twins alike.
    #[test]
    fn a_batch_of_both_families_is_answered_from_both_tables() {
        let sides = routed_sides();
        let mut v4 = Conversation::new(sides.0, sides.1, 4);
        let mut v6 = Conversation::new(sides.0, sides.1, 4);
        v6.v6 = Some(v6_of(&sides));
        let mut tw = Twins::new(harness);
        tw.warm_up(&mut v4, |_, f| f);
        tw.warm_up(&mut v6, |_, f| f);
        let hits = tw.hits();
        let mut batch = Vec::new();
        for k in 0..4 {
            batch.push(v4.seg(k, false, 0x18, 10, 64));
            batch.push(v6.seg(k, false, 0x18, 10, 64));
        }
        for (k, flags) in [(0, 0x11), (0, 0x10), (1, 0x10)] {
            batch.push(v4.seg(k, false, flags, 0, 64));
            batch.push(v6.seg(k, false, flags, 0, 64));
        }
        let sent = tw.cached.sink.on(v4.server.port).len();
        tw.rx(v4.client.port, &batch);
        assert_eq!(
            tw.hits(),
            hits + 10,
            "the data and connection 1's ACKs of both families"
        );
        assert_eq!(
            tw.cached.sink.on(v4.server.port).len(),
            sent + 14,
            "all routed"
        );
    }

    /// 256 connections routed here (vm2 to vm1, each segment checked in both zones) under
    /// callgrind (see [`probe_established`]), over IPv4 or (`v6`) IPv6: what the flow cache
    /// saves either way (`PROBE_NO_CACHE=1`: the stages alone).
    fn probe_routed(v6: bool) {
        let sides = routed_sides();
        let mut cv = Conversation::new(sides.0, sides.1, 256);
        if v6 {
            cv.v6 = Some(v6_of(&sides));
        }
        let mut h = harness();
        probe_established(&mut h, &mut cv, |h, (port, f)| h.rx(port, &f), |_, _| {});
    }

    #[test]
    #[ignore = "a profiling workload, run by hand under valgrind"]
    fn probe_routed_established_cost() {
        probe_routed(false);
    }

    #[test]
    #[ignore = "a profiling workload, run by hand under valgrind"]
    fn probe_routed_ipv6_established_cost() {
        probe_routed(true);
    }

    fn play(
        sides: (Side<'static>, Side<'static>),
        flows: (bool, bool),
        evict: bool,
        moves: &[FuzzMove],
    ) {
        play_v(sides, flows, false, evict, moves)
    }

    /// Plays `moves` on 6 connections (`udp`: flows, `one_way`: not replied yet; `v6`: over
    /// IPv6) between `sides`, the connection tables [`FUZZ_TABLE`] entries (`evict`: when
    /// full, a new connection evicts the oldest unestablished one).
    fn play_v(
        sides: (Side<'static>, Side<'static>),
        (udp, one_way): (bool, bool),
        v6: bool,
        evict: bool,
        moves: &[FuzzMove],
    ) {
        let mut cv = Conversation::new(sides.0, sides.1, 6);
        cv.udp = udp;
        if v6 {
            cv.v6 = Some(v6_of(&sides));
        }
        let mut tw = Twins::new(harness).limit(FUZZ_TABLE, evict);
        if one_way {
            tw.warm_up_one_way(&mut cv, from_compute2);
        } else {
            tw.warm_up(&mut cv, from_compute2);
        }
        tw.play(&mut cv, moves, from_compute2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn routed_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
        ) {
            play(routed_sides(), (false, false), evict, &moves);
        }

        #[test]
        fn routed_udp_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            play(routed_sides(), (true, one_way), evict, &moves);
        }

        #[test]
        fn flows_routed_on_another_host_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
        ) {
            play(across_hosts_sides(), (false, false), evict, &moves);
        }

        #[test]
        fn udp_flows_routed_on_another_host_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            play(across_hosts_sides(), (true, one_way), evict, &moves);
        }

        /// IPv6, routed here or on compute2, TCP or UDP (replied, or one way).
        #[test]
        fn routed_ipv6_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            across in any::<bool>(),
            udp in any::<bool>(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            let sides = if across { across_hosts_sides() } else { routed_sides() };
            play_v(sides, (udp, udp && one_way), true, evict, &moves);
        }
    }
}
