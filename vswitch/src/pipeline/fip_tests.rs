//! Floating IPs on a `dvr` compute host (the seed's north-south scenario 2): proxy ARP on the
//! provider network (VLAN 101) with the host's floating IP gateway MAC, DNAT inbound, SNAT
//! outbound through the external network's default gateway (resolved by ARP), hairpin between
//! two floating IPs of the host, and what is not ours is neither answered nor translated.
//! Every frame out is re-parsed by etherparse, checksums included.
use super::testutil::*;
use crate::counters::{DropReason as D, Event as E};
use crate::tables::Tables;
use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};

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
[[ports]]
name = "uplink"
devargs = "net_ring4"
kind = "provider"
[bridge_mappings]
provider = "uplink"
"#;

/// The seed's addresses, except that the instance is 198.51.100.4 (this machine's own uplink
/// uses 192.0.2.0/24): provider1 is VLAN 101 with 203.0.113.0/24, gateway .1; instance 1 has
/// floating IP 203.0.113.17; compute1's floating IP gateway port is 203.0.113.5.
pub(crate) const STATE: &str = r#"
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11, dvr_mac: "fa:16:3f:00:00:01"}
  - {host: compute2, vtep_ip: 10.0.0.12, dvr_mac: "fa:16:3f:00:00:02"}
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
  - {id: p3, network_id: n1, mac_address: "fa:16:3e:00:00:03", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.6}], "binding:host_id": compute1, device_owner: "compute:nova"}
  - {id: p9, network_id: n1, mac_address: "fa:16:3e:00:00:09", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.9}], "binding:host_id": compute2, device_owner: "compute:nova"}
  - {id: gw1, network_id: n1, mac_address: "fa:16:3e:aa:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.1}], device_owner: "network:router_interface_distributed", device_id: r1}
  - {id: snat1, network_id: n1, mac_address: "fa:16:3e:bb:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.10}], "binding:host_id": network1, device_owner: "network:router_centralized_snat", device_id: r1}
  - {id: fg1, network_id: ext, mac_address: "fa:16:3e:fe:00:01", fixed_ips: [{subnet_id: sext, ip_address: 203.0.113.5}], "binding:host_id": compute1, device_owner: "network:floatingip_agent_gateway", device_id: compute1}
  - {id: fg2, network_id: ext, mac_address: "fa:16:3e:fe:00:02", fixed_ips: [{subnet_id: sext, ip_address: 203.0.113.6}], "binding:host_id": compute2, device_owner: "network:floatingip_agent_gateway", device_id: compute2}
floatingips:
  - {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext, port_id: p1, router_id: r1}
  - {id: fip2, floating_ip_address: 203.0.113.18, floating_network_id: ext, port_id: p2}
  - {id: fip9, floating_ip_address: 203.0.113.19, floating_network_id: ext, port_id: p9, router_id: r1}
  - {id: fip-free, floating_ip_address: 203.0.113.20, floating_network_id: ext}
"#;

const VM1: u16 = 0;
const VM2: u16 = 1;
const VM3: u16 = 2;
const OVERLAY: u16 = 3;
const UPLINK: u16 = 4;
const M1: &str = "fa:16:3e:00:00:01";
const M2: &str = "fa:16:3e:00:00:02";
const M3: &str = "fa:16:3e:00:00:03";
const GW1: &str = "fa:16:3e:aa:00:01";
const FG1: &str = "fa:16:3e:fe:00:01";
const SNAT1: &str = "fa:16:3e:bb:00:01";
/// The Internet host, behind the external network's gateway.
const INET_GW: &str = "02:00:00:00:01:01";
const INET: [u8; 4] = [100, 64, 0, 9];
const X1: [u8; 4] = [198, 51, 100, 4];
const X2: [u8; 4] = [198, 51, 100, 5];
const X3: [u8; 4] = [198, 51, 100, 6];
const F1: [u8; 4] = [203, 0, 113, 17];
const F2: [u8; 4] = [203, 0, 113, 18];
const F9: [u8; 4] = [203, 0, 113, 19];
const FG_IP: [u8; 4] = [203, 0, 113, 5];
const EXT_GW: [u8; 4] = [203, 0, 113, 1];

/// Also the fixture of `control::trace`'s floating IP test.
pub(crate) fn tables_with(state: &str) -> Tables {
    let macs = [
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        mac("02:00:00:00:00:03"),
        mac("02:00:00:00:00:11"),
        mac("02:00:00:00:00:04"),
    ];
    tables_from(HOST, state, &macs)
}

/// A harness whose underlay already knows the other hosts' VTEPs.
fn harness_with(state: &str) -> Harness {
    let h = Harness::with(tables_with(state));
    for ip in ["10.0.0.12", "10.0.0.13"] {
        h.s.neigh.set_static(
            ip.parse().unwrap(),
            crate::tables::mac_u64(&mac("02:00:00:00:00:12").0),
        );
    }
    h
}

fn harness() -> Harness {
    harness_with(STATE)
}

/// A TCP SYN from `src` to `dst` (ports 40000 -> 22), optionally tagged.
fn syn(smac: &str, dmac: &str, vid: Option<u16>, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac(smac).0, mac(dmac).0);
    let mut out = Vec::new();
    match vid {
        Some(v) => b
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv4(src, dst, 64)
            .tcp(40000, 22, 1000, 64240)
            .syn()
            .write(&mut out, &[]),
        None => b
            .ipv4(src, dst, 64)
            .tcp(40000, 22, 1000, 64240)
            .syn()
            .write(&mut out, &[]),
    }
    .unwrap();
    out
}

/// An ARP request (or reply with `reply`) on VLAN 101.
fn arp101(sha: &str, spa: [u8; 4], tha: &str, tpa: [u8; 4], reply: bool) -> Vec<u8> {
    let op = if reply {
        etherparse::ArpOperation::REPLY
    } else {
        etherparse::ArpOperation::REQUEST
    };
    let a = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        op,
        &mac(sha).0,
        &spa,
        &mac(tha).0,
        &tpa,
    )
    .unwrap();
    let dst = if reply { mac(tha).0 } else { [0xff; 6] };
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(sha).0, dst)
        .single_vlan(etherparse::VlanId::try_new(101).unwrap())
        .arp(a)
        .write(&mut out)
        .unwrap();
    out
}

/// What a TCP/IPv4 frame out says: (VLAN, source MAC, destination MAC, source, destination,
/// TTL), with the IPv4 and TCP checksums verified.
fn tcp_out(f: &[u8]) -> (Option<u16>, String, String, [u8; 4], [u8; 4], u8) {
    let s = SlicedPacket::from_ethernet(f).unwrap();
    let Some(LinkSlice::Ethernet2(eth)) = &s.link else {
        panic!("not Ethernet")
    };
    let vid = s.vlan().map(|v| match v {
        etherparse::VlanSlice::SingleVlan(v) => v.vlan_identifier().value(),
        etherparse::VlanSlice::DoubleVlan(_) => panic!("double tagged"),
    });
    let Some(NetSlice::Ipv4(v4)) = &s.net else {
        panic!("not IPv4")
    };
    let h = v4.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let Some(TransportSlice::Tcp(t)) = &s.transport else {
        panic!("not TCP")
    };
    let want = t
        .to_header()
        .calc_checksum_ipv4_raw(h.source, h.destination, t.payload())
        .unwrap();
    assert_eq!(t.checksum(), want, "TCP checksum");
    let m = |b: [u8; 6]| crate::packet::MacAddr(b).to_string();
    (
        vid,
        m(eth.source()),
        m(eth.destination()),
        h.source,
        h.destination,
        h.time_to_live,
    )
}

/// The external gateway answers the router's ARP request; the reply comes in on the uplink.
fn resolve_external_gateway(h: &mut Harness) {
    h.rx(UPLINK, &[arp101(INET_GW, EXT_GW, FG1, FG_IP, true)]);
}

#[test]
fn floating_ip_arp_is_answered_with_the_gateway_mac_only_for_this_hosts_instances() {
    let mut h = harness();
    let asker = "02:00:00:00:01:99";
    let asker_ip = [203, 0, 113, 99];
    h.rx(
        UPLINK,
        &[
            arp101(asker, asker_ip, "00:00:00:00:00:00", F1, false),
            arp101(asker, asker_ip, "00:00:00:00:00:00", F2, false),
            // compute2's instance: its host answers, not this one.
            arp101(asker, asker_ip, "00:00:00:00:00:00", F9, false),
            // Not associated with any port.
            arp101(
                asker,
                asker_ip,
                "00:00:00:00:00:00",
                [203, 0, 113, 20],
                false,
            ),
        ],
    );
    let out = h.sink.on(UPLINK);
    assert_eq!(out.len(), 2, "two replies, back out of the uplink");
    for (f, want) in out.iter().zip([F1, F2]) {
        let s = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Arp(a)) = &s.net else {
            panic!("not ARP")
        };
        assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
        assert_eq!(a.sender_hw_addr(), &mac(FG1).0[..]);
        assert_eq!(a.sender_protocol_addr(), &want[..]);
        assert_eq!(a.target_protocol_addr(), &asker_ip[..]);
        assert_eq!(&f[0..6], &mac(asker).0[..]);
        assert_eq!(&f[6..12], &mac(FG1).0[..]);
        // Tagged with the provider VLAN on the way out.
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 101]);
    }
    assert_eq!(h.c.events[E::GatewayArpReply as usize], 2);
}

/// Frame `f` is the floating IP gateway port asking the provider network for `target`: an
/// ARP request tagged VLAN 101, from the fg MAC and address.
#[track_caller]
fn assert_fg_asks_for(f: &[u8], target: [u8; 4]) {
    let s = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Arp(a)) = &s.net else {
        panic!("not ARP")
    };
    assert_eq!(a.operation(), etherparse::ArpOperation::REQUEST);
    assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 101]);
    assert_eq!(&f[6..12], &mac(FG1).0[..]);
    assert_eq!(a.sender_hw_addr(), &mac(FG1).0[..]);
    assert_eq!(
        (a.sender_protocol_addr(), a.target_protocol_addr()),
        (&FG_IP[..], &target[..])
    );
}

#[test]
fn inbound_to_a_floating_ip_is_translated_and_routed_to_the_instance() {
    let mut h = harness();
    h.rx(UPLINK, &[syn(INET_GW, FG1, Some(101), INET, F1)]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "{:?}", h.c);
    // The instance sees the real source and its own fixed IP; the router's gateway MAC on
    // its network as source; one hop (TTL 63).
    let (vid, smac, dmac, src, dst, ttl) = tcp_out(&out[0]);
    assert_eq!(
        (vid, smac.as_str(), dmac.as_str(), src, dst, ttl),
        (None, GW1, M1, INET, X1, 63)
    );
    assert_eq!(h.c.events[E::FipDnat as usize], 1);
    assert_eq!(h.sink.total(), 1);
}

#[test]
fn outbound_from_a_fixed_ip_with_a_floating_ip_leaves_as_the_floating_ip() {
    let mut h = harness();
    // The external gateway is not known yet: the packet waits while the floating IP
    // gateway asks for it on the external network (tagged, from its own MAC and address).
    h.rx(VM1, &[syn(M1, GW1, None, X1, INET)]);
    let asks = h.sink.on(UPLINK).to_vec();
    assert_eq!(asks.len(), 1, "one ARP request: {:?}", h.c);
    assert_fg_asks_for(&asks[0], EXT_GW);
    assert_eq!(h.held.len(), 1);
    // The answer releases it, translated.
    resolve_external_gateway(&mut h);
    let out = h.sink.on(UPLINK);
    assert_eq!(out.len(), 2, "{:?}", h.c);
    let (vid, smac, dmac, src, dst, ttl) = tcp_out(&out[1]);
    assert_eq!(
        (vid, smac.as_str(), dmac.as_str(), src, dst, ttl),
        (Some(101), FG1, INET_GW, F1, INET, 63)
    );
    assert_eq!(h.c.events[E::FipSnat as usize], 1);
    // From now on straight out.
    h.rx(VM1, &[syn(M1, GW1, None, X1, INET)]);
    assert_eq!(h.sink.on(UPLINK).len(), 3);
    assert_eq!(tcp_out(&h.sink.on(UPLINK)[2]).3, F1);
    // And the reply comes back in, to the instance.
    h.rx(UPLINK, &[syn(INET_GW, FG1, Some(101), INET, F1)]);
    assert_eq!(tcp_out(&h.sink.on(VM1)[0]).4, X1);
}

#[test]
fn an_instance_without_a_floating_ip_still_goes_to_the_snat_node_whatever_went_before() {
    let mut h = harness();
    resolve_external_gateway(&mut h);
    // vm3 has no floating IP: to the network node's SNAT port over the overlay. vm1, to the
    // same destination right after, leaves as its floating IP: the decision depends on the
    // source, so no cached decision for the destination may be reused across sources.
    for _ in 0..2 {
        h.rx(VM3, &[syn(M3, GW1, None, X3, INET)]);
        h.rx(VM1, &[syn(M1, GW1, None, X1, INET)]);
    }
    assert_eq!(h.c.events[E::ToSnat as usize], 2, "{:?}", h.c);
    assert_eq!(h.c.events[E::FipSnat as usize], 2);
    let up = h.sink.on(UPLINK);
    assert_eq!(up.len(), 2);
    assert!(up.iter().all(|f| tcp_out(f).3 == F1));
    // vm3's went over the overlay to the network node, to the SNAT port's MAC.
    let ov = h.sink.on(OVERLAY);
    assert_eq!(ov.len(), 2);
    assert!(ov
        .iter()
        .all(|f| f[50..56] == mac(SNAT1).0 && f[50 + 26..50 + 30] == X3));
}

#[test]
fn an_instance_reaches_another_floating_ip_of_the_same_host_hairpin() {
    let mut h = harness();
    h.rx(VM2, &[syn(M2, GW1, None, X2, F1)]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 1, "{:?}", h.c);
    // vm1 sees vm2 by its floating IP, as any outside host would.
    let (_, smac, dmac, src, dst, _) = tcp_out(&out[0]);
    assert_eq!((smac.as_str(), dmac.as_str(), src, dst), (GW1, M1, F2, X1));
    assert_eq!(h.sink.on(UPLINK).len(), 0, "never left the host");
    assert_eq!(h.c.events[E::FipSnat as usize], 1);
    assert_eq!(h.c.events[E::FipDnat as usize], 1);
}

/// The fixture's state with security groups of its own: vm1 (p1) lets UDP 53 in only from
/// `vm1_from` (a prefix), vm2 (p2) lets nothing in (both let everything out), so that only
/// replies reach vm2.
fn state_with_groups(vm1_from: &str) -> String {
    let port = |ip: &str, sg: &str| {
        let at = format!(
            "ip_address: {ip}}}], \"binding:host_id\": compute1, device_owner: \"compute:nova\""
        );
        (at.clone(), format!("{at}, security_groups: [{sg}]"))
    };
    let mut s = STATE.to_string();
    for (from, to) in [
        port("198.51.100.4", "sg-dns"),
        port("198.51.100.5", "sg-out"),
    ] {
        assert!(s.contains(&from), "{from}");
        s = s.replace(&from, &to);
    }
    s.push_str(&format!(
        r#"security_groups:
  - {{id: sg-dns, name: dns}}
  - {{id: sg-out, name: out}}
security_group_rules:
  - {{id: dns-eg, security_group_id: sg-dns, direction: egress, ethertype: IPv4}}
  - {{id: dns-in, security_group_id: sg-dns, direction: ingress, ethertype: IPv4, protocol: udp, port_range_min: 53, port_range_max: 53, remote_ip_prefix: {vm1_from}}}
  - {{id: out-eg, security_group_id: sg-out, direction: egress, ethertype: IPv4}}
"#
    ));
    s
}

/// A datagram larger than the instance's network (MTU 1450) reaches the instance through its
/// floating IP in fragments, as a Linux router sends it: one that arrives whole (1,500 bytes,
/// DF clear) in two, one that arrives in two fragments (2,028 bytes) in three (its first
/// fragment cut again, the second following the first's verdict through the security
/// groups and DNAT). The instance puts each back together into the translated datagram,
/// its UDP checksum right.
#[test]
fn a_datagram_too_big_for_the_instance_network_reaches_it_in_fragments() {
    let mut h = harness_with(&state_with_groups("0.0.0.0/0"));
    let datagram = |port: u16, len: usize| {
        let payload: Vec<u8> = (0..len).map(|k| (k * 7) as u8).collect();
        without_df(udp4_tagged(
            (INET_GW, FG1),
            None,
            (INET, F1),
            (port, 53),
            &payload,
        ))
    };
    // Whole, 1,500 bytes of IP.
    let whole = datagram(40000, 1472);
    h.rx(UPLINK, &[tagged(&whole, 101)]);
    // In two fragments of at most 1,500 bytes, as the Internet host's own stack sends it.
    let big = datagram(40001, 2000);
    let pieces: Vec<Vec<u8>> = fragments(&big, 1500)
        .iter()
        .map(|f| tagged(f, 101))
        .collect();
    assert_eq!(pieces.len(), 2);
    h.rx(UPLINK, &pieces);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), 5, "drops {:?}", h.c.drops);
    for (frags, sent) in [(&out[..2], &whole), (&out[2..], &big)] {
        for f in frags {
            assert_eq!((&f[..6], &f[6..12]), (&mac(M1).0[..], &mac(GW1).0[..]));
        }
        let (ip, d) = reassemble(frags, 1450);
        assert_eq!((ip.source, ip.destination, ip.time_to_live), (INET, X1, 63));
        assert_eq!(d[..6], sent[34..40], "ports and length as sent");
        assert_eq!(d[8..], sent[42..], "the payload");
        assert!(
            udp_sum_ok(&d, INET, X1),
            "the translated datagram's UDP checksum"
        );
    }
    assert_eq!(h.c.count(E::RouterFragmented), 2);
    assert_eq!(h.c.count(E::RouterFragments), 4);
    assert_eq!(h.c.count(E::FipDnat), 3);
}

/// A UDP flow the flow cache answers still gets a datagram too big for the instance's network
/// through: the cached answer holds only datagrams within the MTU, so that one takes the
/// stages and leaves in fragments, and the next small one is answered from the cache again.
#[test]
fn a_cached_flow_s_datagram_too_big_for_the_network_takes_the_stages_into_fragments() {
    let mut h = harness_with(&state_with_groups("0.0.0.0/0"));
    let query = |len: usize| {
        without_df(udp4_tagged(
            (INET_GW, FG1),
            Some(101),
            (INET, F1),
            (40000, 53),
            &vec![7u8; len],
        ))
    };
    let answer = udp4_tagged((M1, GW1), None, (X1, INET), (53, 40000), &[9; 30]);
    resolve_external_gateway(&mut h);
    for _ in 0..3 {
        h.rx(UPLINK, &[query(30)]);
        h.rx(VM1, std::slice::from_ref(&answer));
    }
    let hits = h.s.flows.stats.hits;
    assert!(hits >= 2, "the flow is cached: {:?}", h.s.flows.stats);
    let before = h.sink.on(VM1).len();
    h.rx(UPLINK, &[query(1472)]);
    let out = h.sink.on(VM1);
    assert_eq!(out.len(), before + 2, "two fragments: {:?}", h.c);
    let (ip, d) = reassemble(&out[before..], 1450);
    assert_eq!((ip.source, ip.destination, d.len()), (INET, X1, 8 + 1472));
    assert_eq!(h.s.flows.stats.hits, hits, "not from the cache");
    h.rx(UPLINK, &[query(30)]);
    assert_eq!(h.s.flows.stats.hits, hits + 1, "the next one is");
    assert_eq!(h.sink.on(VM1).len(), before + 3);
}

/// Hairpin through floating IPs, as the instances' security groups see it: vm2 reaches vm1's
/// floating IP and vm1's groups judge it by the address vm1 sees it from (vm2's floating IP),
/// not by vm2's fixed IP; vm1's answer is a reply to vm2's own connection, let in by vm2's
/// groups though they let nothing new in, and so is an ICMP error vm1 sends about it.
#[test]
fn hairpin_through_floating_ips_is_judged_by_the_addresses_each_instance_sees() {
    let dns = |src, dst, ports| udp4_tagged((M2, GW1), None, (src, dst), ports, &[1; 20]);
    let answer = |src, dst, ports| udp4_tagged((M1, GW1), None, (src, dst), ports, &[2; 20]);
    // vm1 lets DNS in from vm2's floating IP: the query and the answer pass.
    let mut h = harness_with(&state_with_groups("203.0.113.18/32"));
    for _ in 0..3 {
        h.rx(VM2, &[dns(X2, F1, (40000, 53))]);
        h.rx(VM1, &[answer(X1, F2, (53, 40000))]);
    }
    assert_eq!(h.sink.on(VM1).len(), 3, "{:?}", h.c);
    let (from, to, _) = udp4_fields(&h.sink.on(VM1)[0]);
    assert_eq!((from, to), ((F2, 40000), (X1, 53)));
    assert_eq!(
        h.sink.on(VM2).len(),
        3,
        "the answers are replies: {:?}",
        h.c
    );
    let (from, to, _) = udp4_fields(&h.sink.on(VM2)[0]);
    assert_eq!((from, to), ((F1, 53), (X2, 40000)));
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 0);
    // vm1's port unreachable about the query it got (F2 -> X1) reaches vm2 from F1, as
    // about vm2's own datagram (X2 -> F1), and related to it in both zones.
    let query = h.sink.on(VM1)[0].clone();
    let mut error = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(M1).0, mac(GW1).0)
        .ipv4(X1, F2, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut error, &query[14..])
        .unwrap();
    h.rx(VM1, &[error]);
    assert_eq!(h.sink.on(VM2).len(), 4, "{:?}", h.c);
    let got = &h.sink.on(VM2)[3];
    assert_eq!(
        (&got[26..30], &got[30..34]),
        (&F1[..], &X2[..]),
        "from F1 to vm2"
    );
    let quoted = &got[14 + 20 + 8..];
    assert_eq!(
        (&quoted[12..16], &quoted[16..20]),
        (&X2[..], &F1[..]),
        "vm2's own datagram"
    );
    assert_eq!(crate::packet::be16(quoted, 20), 40000, "and its port");
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 0);
    // From vm2's fixed IP only: vm1 never sees that address, so nothing passes.
    let mut h = harness_with(&state_with_groups("198.51.100.5/32"));
    h.rx(VM2, &[dns(X2, F1, (40000, 53))]);
    assert_eq!(h.sink.on(VM1).len(), 0, "{:?}", h.c);
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 1);
}

/// Hairpin to another host (issue #6: "same or another host"): vm1 reaches the floating IP
/// of an instance on compute2. 203.0.113.19 is on the external subnet, so compute1's floating
/// IP router asks for it on the provider network itself (from the fg port, tagged, as
/// Neutron's fip namespace does), not through the external gateway; compute2's fg port
/// answers, and the datagram held meanwhile leaves as from 203.0.113.17 to its MAC.
#[test]
fn an_instance_reaches_the_floating_ip_of_an_instance_on_another_host() {
    let mut h = harness();
    resolve_external_gateway(&mut h);
    let to_f9 = |n: u8| udp4_tagged((M1, GW1), None, (X1, F9), (40000, 53), &[n; 20]);
    h.rx(VM1, &[to_f9(1)]);
    let asked = h.sink.on(UPLINK).to_vec();
    assert_eq!(asked.len(), 1, "{:?}", h.c);
    // 203.0.113.19 itself, not the external gateway.
    assert_fg_asks_for(&asked[0], F9);
    // compute2's fg port answers for its instance's floating IP.
    let fg2 = "fa:16:3e:fe:00:02";
    h.rx(UPLINK, &[arp101(fg2, F9, FG1, FG_IP, true)]);
    h.rx(VM1, &[to_f9(2)]);
    let out = &h.sink.on(UPLINK)[1..];
    assert_eq!(out.len(), 2, "the held datagram and the next: {:?}", h.c);
    for f in out {
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 101]);
        assert_eq!((&f[0..6], &f[6..12]), (&mac(fg2).0[..], &mac(FG1).0[..]));
        let (from, to, _) = udp4_fields(f);
        assert_eq!((from, to), ((F1, 40000), (F9, 53)));
    }
}

#[test]
fn an_instance_with_a_floating_ip_reaches_the_hosts_floating_ip_gateway_address() {
    let mut h = harness();
    resolve_external_gateway(&mut h);
    // vm1 pings 203.0.113.5, this host's own fg address (the fip namespace answers it in
    // Neutron). It must not be resolved on the external network as a neighbour: nobody
    // else has it.
    let echo = |id: u16| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(M1).0, mac(GW1).0)
            .ipv4(X1, FG_IP, 64)
            .icmpv4_echo_request(id, 1)
            .write(&mut f, b"ping")
            .unwrap();
        f
    };
    h.rx(VM1, &[echo(7)]);
    assert_eq!(
        h.sink.on(UPLINK).len(),
        0,
        "nothing asked or sent out: {:?}",
        h.c
    );
    let out = h.sink.on(VM1).to_vec();
    assert_eq!(out.len(), 1, "{:?}", h.c);
    let s = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
        panic!("not ICMP")
    };
    assert!(matches!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::EchoReply(e) if e.id == 7 && e.seq == 1
    ));
    assert_eq!(
        etherparse::checksum::Sum16BitWords::new()
            .add_slice(icmp.slice())
            .ones_complement(),
        0,
        "ICMP checksum"
    );
    let Some(NetSlice::Ipv4(v4)) = &s.net else {
        panic!("not IPv4")
    };
    let ip = v4.header().to_header();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    // From the fg address to the fixed IP (what the floating IP's reply becomes), from the
    // router interface's MAC.
    assert_eq!((ip.source, ip.destination), (FG_IP, X1));
    assert_eq!(
        (&out[0][0..6], &out[0][6..12]),
        (&mac(M1).0[..], &mac(GW1).0[..])
    );
    assert_eq!(h.c.events[E::EchoReply as usize], 1);
    assert_eq!(h.c.dropped(D::RouterUnresolved), 0);
    // Again (no decision cached that would send it out).
    h.rx(VM1, &[echo(8)]);
    assert_eq!(h.sink.on(VM1).len(), 2);
    assert_eq!(h.sink.on(UPLINK).len(), 0);
}

#[test]
fn what_is_not_a_floating_ip_of_this_host_is_not_translated() {
    let mut h = harness();
    // To compute2's floating IP, at this host's gateway MAC (a stale ARP cache outside).
    h.rx(UPLINK, &[syn(INET_GW, FG1, Some(101), INET, F9)]);
    assert_eq!(h.sink.total(), 0);
    assert_eq!(h.c.dropped(D::RouterNoFloatingIp), 1);
    // Without the floating IP (disassociated), the next tables neither answer nor translate.
    let state = STATE.replace(
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext, port_id: p1, router_id: r1}",
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext}",
    );
    assert_ne!(state, STATE);
    let mut h = harness_with(&state);
    h.rx(
        UPLINK,
        &[
            arp101(
                "02:00:00:00:01:99",
                [203, 0, 113, 99],
                "00:00:00:00:00:00",
                F1,
                false,
            ),
            syn(INET_GW, FG1, Some(101), INET, F1),
        ],
    );
    assert_eq!(h.sink.total(), 0);
    assert_eq!(h.c.dropped(D::RouterNoFloatingIp), 1);
    // vm1's outbound traffic goes to the SNAT node again.
    h.rx(VM1, &[syn(M1, GW1, None, X1, INET)]);
    assert_eq!(h.c.events[E::ToSnat as usize], 1);
    assert_eq!(h.sink.on(OVERLAY).len(), 1);
}

#[test]
fn east_west_traffic_of_an_instance_with_a_floating_ip_is_not_translated() {
    let mut h = harness();
    // vm1 (floating IP) to vm2's fixed IP: routed? no, same subnet: switched, untouched.
    // To the router's own network a route exists: never translated.
    h.rx(VM1, &[syn(M1, M2, None, X1, X2)]);
    let (_, _, _, src, dst, ttl) = tcp_out(&h.sink.on(VM2)[0]);
    assert_eq!((src, dst, ttl), (X1, X2, 64));
    assert_eq!(h.c.events[E::FipSnat as usize], 0);
}

#[test]
fn the_validation_asks_for_the_hosts_floating_ip_gateway_port() {
    let host = vswitch_config::parse_host_str(HOST).unwrap();
    // Without compute1's gateway port (compute2's is no use here).
    let fg1 = STATE
        .lines()
        .find(|l| l.contains("id: fg1"))
        .expect("fixture has fg1");
    let state = STATE.replace(&format!("{fg1}\n"), "");
    assert_ne!(state, STATE);
    let state = vswitch_config::parse_state_str(&state, false).unwrap();
    let problems = vswitch_config::validate_for_host(&host, &state);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["state.floatingips[0]", "state.floatingips[1]"],
        "{problems:?}"
    );
    assert!(problems[0]
        .message
        .contains("network:floatingip_agent_gateway"));
}

/// A gratuitous ARP as sent: (VLAN tag bytes, source MAC, sender and target address).
type Garp = ([u8; 4], String, [u8; 4], [u8; 4]);

/// The gratuitous ARPs announce_floating_ips sends from `prev` to `t`.
fn garps(h: &mut Harness, prev: Option<&Tables>, t: &Tables) -> Vec<Garp> {
    let before = h.sink.on(UPLINK).len();
    let sent = super::router::announce_floating_ips(
        prev,
        t,
        || Some(crate::packet::TestBuf::new(&[])),
        &mut h.txb,
        &mut h.sink,
        &mut h.c,
    );
    h.txb.flush(&mut h.sink, &mut h.c);
    let out = h.sink.on(UPLINK)[before..].to_vec();
    assert_eq!(sent, Some(out.len()));
    out.iter()
        .map(|f| {
            assert_eq!(f.len(), 64, "60 bytes + the tag");
            let s = SlicedPacket::from_ethernet(f).unwrap();
            let Some(NetSlice::Arp(a)) = &s.net else {
                panic!("not ARP")
            };
            assert_eq!(a.operation(), etherparse::ArpOperation::REQUEST);
            assert_eq!(&f[0..6], &[0xff; 6]);
            assert_eq!(a.sender_hw_addr(), &f[6..12]);
            (
                f[12..16].try_into().unwrap(),
                crate::packet::MacAddr(f[6..12].try_into().unwrap()).to_string(),
                a.sender_protocol_addr().try_into().unwrap(),
                a.target_protocol_addr().try_into().unwrap(),
            )
        })
        .collect()
}

#[test]
fn floating_ips_are_announced_when_associated_or_moved_here() {
    let t = tables_with(STATE);
    let mut h = harness();
    let tag = [0x81, 0x00, 0x00, 101];
    // At start every floating IP answered here, once each.
    assert_eq!(
        garps(&mut h, None, &t),
        [
            (tag, FG1.to_string(), F1, F1),
            (tag, FG1.to_string(), F2, F2)
        ]
    );
    // The same tables again (another change elsewhere): nothing.
    assert_eq!(garps(&mut h, Some(&t), &t), []);
    // fip2 moves to vm3 (same host, same gateway MAC: announced again all the same); fip1 is
    // disassociated and fip9 moves from compute2's instance to vm1.
    let moved = STATE
        .replace("floating_network_id: ext, port_id: p2}", "floating_network_id: ext, port_id: p3}")
        .replace(
            "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext, port_id: p1, router_id: r1}",
            "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext}",
        )
        .replace("port_id: p9, router_id: r1}", "port_id: p1, router_id: r1}");
    let t2 = tables_with(&moved);
    assert_eq!(
        garps(&mut h, Some(&t), &t2),
        [
            (tag, FG1.to_string(), F2, F2),
            (tag, FG1.to_string(), F9, F9)
        ]
    );
    assert_eq!(h.c.events[E::GarpSent as usize], 4);
    // No buffer: try again later.
    let none = super::router::announce_floating_ips(
        None,
        &t2,
        || None::<crate::packet::TestBuf>,
        &mut h.txb,
        &mut h.sink,
        &mut h.c,
    );
    assert_eq!(none, None);
}

/// A TCP segment (SYN-ACK with `synack`, else a plain ACK) from port 22 to 40000, untagged.
fn reply(smac: &str, dmac: &str, src: [u8; 4], dst: [u8; 4], synack: bool) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac(smac).0, mac(dmac).0)
        .ipv4(src, dst, 64)
        .tcp(22, 40000, 5000 + !synack as u32, 64240)
        .ack(1001);
    let b = if synack { b.syn() } else { b };
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

#[test]
fn disassociating_a_floating_ip_cuts_the_connections_that_came_through_it() {
    let mut h = harness();
    resolve_external_gateway(&mut h);
    // An outside client connects to vm1 through its floating IP, and vm1 answers.
    h.rx(UPLINK, &[syn(INET_GW, FG1, Some(101), INET, F1)]);
    assert_eq!(h.sink.on(VM1).len(), 1);
    let up = h.sink.on(UPLINK).len();
    h.rx(VM1, &[reply(M1, GW1, X1, INET, true)]);
    assert_eq!(h.sink.on(UPLINK).len(), up + 1);
    // And vm2 connects to vm1 on their own network, no floating IP involved.
    h.rx(VM2, &[syn(M2, M1, None, X2, X1)]);
    assert_eq!(h.sink.on(VM1).len(), 2);
    // fip1 is disassociated: new tables.
    let state = STATE.replace(
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext, port_id: p1, router_id: r1}",
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext}",
    );
    h.t = tables_with(&state);
    h.t.generation = 2;
    // vm1's next segment of the connection that came through it is dropped, and the
    // connection is gone from its zone.
    let before = h.sink.total();
    h.rx(VM1, &[reply(M1, GW1, X1, INET, false)]);
    assert_eq!(h.sink.total(), before, "{:?}", h.c);
    assert_eq!(h.c.dropped(D::FirewallRevoked), 1);
    assert_eq!(h.s.fw.ct.stats.cut, 1);
    // The connection from vm2 carries on.
    h.rx(VM1, &[reply(M1, M2, X1, X2, true)]);
    assert_eq!(h.sink.on(VM2).len(), 1, "{:?}", h.c);
    assert_eq!(h.c.dropped(D::FirewallRevoked), 1);
}

#[test]
fn a_moved_external_gateway_is_followed_at_once() {
    let mut h = harness();
    resolve_external_gateway(&mut h);
    for _ in 0..2 {
        h.rx(VM1, &[syn(M1, GW1, None, X1, INET)]);
    }
    assert!(h.sink.on(UPLINK).iter().all(|f| f[0..6] == mac(INET_GW).0));
    // The gateway's address answers from another MAC (a failover): the decisions kept for
    // the old one are not used any more.
    let moved = "02:00:00:00:01:02";
    h.rx(UPLINK, &[arp101(moved, EXT_GW, FG1, FG_IP, true)]);
    h.rx(VM1, &[syn(M1, GW1, None, X1, INET)]);
    let last = h.sink.on(UPLINK).last().unwrap();
    assert_eq!(&last[0..6], &mac(moved).0[..], "{:?}", h.c);
    assert_eq!(tcp_out(last).3, F1);
}

/// Twin harnesses (flow cache on and off) whose external gateway is resolved.
fn fip_twins() -> Twins {
    Twins::new(|| {
        let mut h = harness();
        resolve_external_gateway(&mut h);
        h
    })
}

/// The flow cache answers established floating-IP connections exactly as the stages do, both
/// ways (DNAT in, SNAT out, routing, the instance's connection tracking), and steps aside for
/// what it cannot answer: a TTL that runs out (an ICMP error from the router), an RST, a FIN,
/// new tables, the external gateway's MAC moving.
#[test]
fn floating_ip_flows_from_the_flow_cache_are_what_the_stages_make_of_them() {
    let mut tw = fip_twins();
    let (internet, vm1) = floating_ip_sides();
    let mut cv = Conversation::new(internet, vm1, 40);
    let (ack, psh) = (0x10, 0x18);
    tw.handshakes(&mut cv);
    for _ in 0..4 {
        let (port, frames) = cv.all(false, psh, 100);
        tw.rx(port, &frames);
        let (port, frames) = cv.all(true, ack, 0);
        tw.rx(port, &frames);
    }
    assert!(tw.hits() >= 3 * 2 * 40, "hits: {}", tw.hits());
    assert_eq!(tw.cached.sink.on(VM1).len(), 40 * 6);
    // Re-parsed, both ways: translated addresses, checksums right.
    let last_in = tw.cached.sink.on(VM1).last().unwrap();
    assert_eq!(
        tcp_out(last_in),
        (None, GW1.into(), M1.into(), INET, X1, 63)
    );
    let last_out = tw.cached.sink.on(UPLINK).last().unwrap();
    assert_eq!(
        tcp_out(last_out),
        (Some(101), FG1.into(), INET_GW.into(), F1, INET, 63)
    );
    // A segment whose TTL runs out at the router: time exceeded, from the stages.
    let icmp_before = tw.cached.c.count(E::IcmpErrorSent);
    let f = cv.seg(0, false, ack, 0, 1);
    tw.rx(UPLINK, &[f]);
    assert_eq!(tw.cached.c.count(E::IcmpErrorSent), icmp_before + 1);
    // An RST closes connection 1: its next segments are the stages' to refuse.
    let f = cv.seg(1, false, 0x04 | ack, 0, 64);
    tw.rx(UPLINK, &[f]);
    let f = cv.seg(1, true, ack, 10, 64);
    tw.rx(VM1, &[f]);
    // A FIN from the instance on connection 2, the rest carry on from the cache.
    let f = cv.seg(2, true, 0x01 | ack, 0, 64);
    tw.rx(VM1, &[f]);
    let hits = tw.hits();
    let (port, frames) = cv.all(false, psh, 10);
    tw.rx(port, &frames);
    assert!(tw.hits() > hits);
    // The external gateway's MAC moves: learnt from its ARP reply, followed at once.
    let moved = "02:00:00:00:01:02";
    tw.rx(UPLINK, &[arp101(moved, EXT_GW, FG1, FG_IP, true)]);
    let (port, frames) = cv.all(true, ack, 0);
    tw.rx(port, &frames);
    let last = tw.cached.sink.on(UPLINK).last().unwrap();
    assert_eq!(&last[0..6], &mac(moved).0[..]);
    // New tables without the floating IP: its connections are cut, by the stages.
    let state = STATE.replace(
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext, port_id: p1, router_id: r1}",
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext}",
    );
    tw.set_tables(|| tables_with(&state));
    let hits = tw.hits();
    let (port, frames) = cv.all(true, ack, 0);
    tw.rx(port, &frames);
    assert_eq!(
        tw.hits(),
        hits,
        "nothing from the cache after a new generation"
    );
    assert!(tw.cached.c.dropped(D::FirewallRevoked) > 0);
}

/// Two instances of one host, both with a stateful group: each packet of an established
/// connection is checked in the sender's zone and in the receiver's; the flow cache does both
/// as the stages do, and an out-of-window segment is the stages' to drop.
#[test]
fn east_west_flows_from_the_flow_cache_are_what_the_stages_make_of_them() {
    let mut tw = Twins::new(harness);
    let (vm2, vm1) = east_west_sides();
    let mut cv = Conversation::new(vm2, vm1, 40);
    let (ack, psh) = (0x10, 0x18);
    tw.handshakes(&mut cv);
    for _ in 0..3 {
        let (port, frames) = cv.all(false, psh, 200);
        tw.rx(port, &frames);
        let (port, frames) = cv.all(true, ack, 0);
        tw.rx(port, &frames);
    }
    assert!(tw.hits() >= 2 * 2 * 40, "hits: {}", tw.hits());
    // An out-of-window segment: dropped as invalid, by the stages, in both twins.
    let mut bad = cv.seg(3, false, ack, 0, 64);
    bad[38] ^= 0x80;
    // (the TCP checksum does not matter to the switch; the sequence number does)
    let invalid = tw.cached.c.dropped(D::ConntrackInvalid);
    tw.rx(VM2, &[bad]);
    assert_eq!(tw.cached.c.dropped(D::ConntrackInvalid), invalid + 1);
    let (port, frames) = cv.all(false, psh, 20);
    tw.rx(port, &frames);
}

/// A segment the cache could answer, behind one of the same connection that takes the
/// stages (a FIN) in one batch, takes the stages too, after it: the connection's entries move
/// on in the order the segments came (Linux's table: the sender's ACK after its own FIN moves
/// FIN_WAIT on to CLOSE_WAIT). Another connection's ACK in the same batch is still answered.
#[test]
fn a_segment_behind_one_of_its_connection_that_takes_the_stages_takes_them_too() {
    let mut tw = Twins::new(harness);
    let (vm2, vm1) = east_west_sides();
    let mut cv = Conversation::new(vm2, vm1, 2);
    tw.handshakes(&mut cv);
    for _ in 0..2 {
        let (port, frames) = cv.all(false, 0x18, 10);
        tw.rx(port, &frames);
        let (port, frames) = cv.all(true, 0x10, 0);
        tw.rx(port, &frames);
    }
    let hits = tw.hits();
    let (fin, ack) = (0x11, 0x10);
    let batch = [
        cv.seg(0, false, fin, 0, 64),
        cv.seg(1, false, ack, 0, 64),
        cv.seg(0, false, ack, 0, 64),
    ];
    tw.rx(VM2, &batch);
    assert_eq!(tw.hits(), hits + 1, "connection 1's ACK only");
    let states: Vec<u8> = tw
        .cached
        .s
        .fw
        .ct
        .iter()
        .filter(|(_, k, _)| format!("{k}").contains(":40000 "))
        .map(|(_, _, e)| e.state)
        .collect();
    assert_eq!(
        states,
        [super::conntrack::state::CLOSE_WAIT; 2],
        "both zones"
    );
}

/// UDP between two instances of this host, both with a stateful group: once a flow is replied
/// (and so assured), the flow cache answers its datagrams both ways as the stages do, in both
/// zones, deadlines included. The first datagrams (unreplied) and the first reply are the
/// stages'; a TCP connection on the same addresses and ports is another flow, cached beside
/// it; a flow whose entries expired is the stages' to open again.
#[test]
fn east_west_udp_flows_from_the_flow_cache_are_what_the_stages_make_of_them() {
    let mut tw = Twins::new(harness);
    let n = 40u16;
    let [there, back] = udp_flows(n, (M2, X2), (M1, X1), 40000, 5001);
    for _ in 0..2 {
        tw.rx(VM2, &there);
    }
    tw.rx(VM1, &back);
    assert_eq!(
        tw.hits(),
        0,
        "unreplied flows and first replies take the stages"
    );
    let replied = tw.cached.s.fw.ct.by_state[crate::pipeline::conntrack::state::REPLIED as usize];
    assert_eq!(replied, 2 * n as u32, "each flow replied in both zones");
    // Learnt from the next datagram each way, answered from then on.
    for _ in 0..3 {
        tw.rx(VM2, &there);
        tw.rx(VM1, &back);
    }
    assert_eq!(tw.hits(), 2 * 2 * n as u64, "hits");
    assert_eq!(tw.cached.sink.on(VM1).len(), 5 * n as usize);
    assert_eq!(tw.cached.sink.on(VM2).len(), 4 * n as usize);
    assert_eq!(
        tw.cached.sink.on(VM1).last(),
        there.last(),
        "switched as it came"
    );
    // TCP on the same ports: its own flows, learnt and answered beside the UDP ones.
    let (vm2, vm1) = east_west_sides();
    let mut cv = Conversation::new(vm2, vm1, n);
    let psh = 0x18;
    tw.handshakes(&mut cv);
    for _ in 0..3 {
        let (port, frames) = cv.all(false, psh, 10);
        tw.rx(port, &frames);
        let hits = tw.hits();
        tw.rx(VM2, &there);
        assert_eq!(
            tw.hits(),
            hits + n as u64,
            "UDP answered between TCP segments"
        );
    }
    // UDP: 2 rounds both ways (the first learnt) and 3 one way; TCP: the data of the 2nd and
    // 3rd round (the 1st learnt).
    assert_eq!(tw.hits(), (2 * 2 + 3 + 2) * n as u64, "hits");
    // The UDP flows' deadlines pass (120 s without a datagram, the cache's slots still
    // young): their next datagrams open new flows, by the stages.
    for h in tw.all() {
        h.s.fw.now = h.s.fw.now.wrapping_add(121_000);
    }
    let (hits, new) = (tw.hits(), tw.cached.c.count(E::ConntrackNew));
    tw.rx(VM2, &there);
    assert_eq!(tw.hits(), hits, "expired flows are not the cache's");
    assert!(tw.cached.c.count(E::ConntrackNew) > new);
}

/// Round `round` of `n` UDP flows from the Internet host (ports 40000 + k, VLAN 101) to
/// port 53 of floating IP F1, each datagram's payload (and so its checksum) changing with the
/// round.
fn udp_to_the_floating_ip(n: u16, round: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            let payload = [round ^ k as u8; 21];
            let (macs, ips) = ((INET_GW, FG1), (INET, F1));
            udp4_tagged(macs, Some(101), ips, (40000 + k, 53), &payload)
        })
        .collect()
}

/// A one-way UDP stream between two instances of this host, both with a stateful group (a
/// TRex profile, syslog, RTP one way): from its second datagram on, the flow cache answers a
/// flow the stages left unreplied as they answer it, in both zones: the flow stays
/// unreplied and unassured, with the unreplied deadline (30 s). The first reply is the
/// stages' (it makes the flow replied and assured), after which the cache answers it both
/// ways as a replied flow; a flow left alone past its unreplied deadline is the stages' to
/// open again.
#[test]
fn one_way_udp_flows_from_the_flow_cache_are_what_the_stages_make_of_them() {
    use crate::pipeline::conntrack::state;
    let mut tw = Twins::new(harness);
    let n = 40u16;
    let [there, back] = udp_flows(n, (M2, X2), (M1, X1), 40000, 5001);
    let by_state = |tw: &Twins, st: u8| tw.cached.s.fw.ct.by_state[st as usize];
    for _ in 0..5 {
        tw.rx(VM2, &there);
    }
    assert_eq!(
        tw.hits(),
        3 * n as u64,
        "the first datagram of a flow opens it, the second is learnt"
    );
    assert_eq!(by_state(&tw, state::UNREPLIED), 2 * n as u32, "both zones");
    assert_eq!(tw.cached.sink.on(VM1).len(), 5 * n as usize);
    assert_eq!(
        tw.cached.sink.on(VM1).last(),
        there.last(),
        "switched as it came"
    );
    // 20 s later (the cache's slots stale, the flows' deadlines not yet passed): the stages
    // answer once and the cache learns again.
    tw.advance(20_000);
    for _ in 0..3 {
        tw.rx(VM2, &there);
    }
    assert_eq!(tw.hits(), 5 * n as u64, "relearnt after MAX_AGE_MS");
    assert_eq!(by_state(&tw, state::UNREPLIED), 2 * n as u32);
    // 20 s more: still alive, since every datagram moved the deadline on (from the cache
    // too), and answered by the cache again after one round.
    tw.advance(20_000);
    let new = tw.cached.c.count(E::ConntrackNew);
    for _ in 0..2 {
        tw.rx(VM2, &there);
    }
    assert_eq!(tw.cached.c.count(E::ConntrackNew), new, "no flow expired");
    assert_eq!(tw.hits(), 6 * n as u64);
    // The replies: the stages make the flows replied; the next datagram there misses (its
    // slot was learnt unreplied) and is learnt again, as a replied flow's.
    tw.rx(VM1, &back);
    assert_eq!(tw.hits(), 6 * n as u64, "first replies take the stages");
    assert_eq!(by_state(&tw, state::REPLIED), 2 * n as u32, "both zones");
    assert_eq!(by_state(&tw, state::UNREPLIED), 0);
    tw.rx(VM2, &there);
    assert_eq!(
        tw.hits(),
        6 * n as u64,
        "the unreplied slots no longer hold"
    );
    for _ in 0..2 {
        tw.rx(VM2, &there);
        tw.rx(VM1, &back);
    }
    assert_eq!(
        tw.hits(),
        (6 + 2 + 1) * n as u64,
        "{:?}",
        tw.cached.s.flows.stats
    );
    // Other flows one way, left alone for 31 s: their next datagrams open them again.
    let [others, _] = udp_flows(n, (M2, X2), (M1, X1), 41000, 5001);
    for _ in 0..3 {
        tw.rx(VM2, &others);
    }
    let (hits, new) = (tw.hits(), tw.cached.c.count(E::ConntrackNew));
    tw.advance(31_000);
    tw.rx(VM2, &others);
    assert_eq!(tw.hits(), hits, "expired flows are not the cache's");
    assert_eq!(tw.cached.c.count(E::ConntrackNew), new + 2 * n as u64);
}

/// A full connection table that evicts the oldest unestablished connection: a new flow
/// ahead of a one-way flow's datagram in the same batch pushes that flow's unreplied entries
/// out, and the stages then open it again. So with the table about to evict, a one-way
/// flow's hit behind a packet that takes the stages takes them too, in order (the
/// differential fuzz found the cache answering it first, from the entries about to go).
#[test]
fn a_one_way_flow_pushed_out_of_a_full_table_is_opened_again_as_by_the_stages() {
    let mut tw = Twins::new(harness).limit(4, true);
    let [there, _] = udp_flows(2, (M2, X2), (M1, X1), 40000, 5001);
    for _ in 0..3 {
        tw.rx(VM2, &there);
    }
    assert_eq!(
        tw.hits(),
        2,
        "the third round answered by the cache, both flows"
    );
    assert_eq!(tw.cached.s.fw.ct.len(), 4, "full: two flows in two zones");
    let [newcomer, _] = udp_flows(1, (M2, X2), (M1, X1), 41000, 5001);
    let new = tw.cached.c.count(E::ConntrackNew);
    tw.rx(VM2, &[newcomer[0].clone(), there[0].clone()]);
    assert_eq!(
        tw.hits(),
        2,
        "behind the newcomer, the first flow takes the stages"
    );
    assert_eq!(
        tw.cached.c.count(E::ConntrackNew),
        new + 4,
        "the newcomer pushed the first flow out, which was opened again (two zones each)"
    );
    assert_eq!(tw.cached.s.fw.ct.stats.evicted, 4);
}

/// One-way UDP from the Internet to an instance behind its floating IP (DNAT, routed, the
/// instance's stateful group): answered by the flow cache from a flow's second datagram on
/// as the stages answer it (addresses, TTL, MACs, the tag popped, the checksum), the flow
/// left unreplied; the instance's first reply is the stages', and from then on the cache
/// answers both ways.
#[test]
fn one_way_udp_to_a_floating_ip_from_the_flow_cache_is_what_the_stages_make_of_it() {
    let mut tw = fip_twins();
    let n = 40u16;
    let inbound = |round: u8| udp_to_the_floating_ip(n, round);
    for round in 0..4 {
        tw.rx(UPLINK, &inbound(round));
    }
    assert_eq!(tw.hits(), 2 * n as u64, "{:?}", tw.cached.s.flows.stats);
    let unreplied = super::conntrack::state::UNREPLIED as usize;
    assert_eq!(tw.cached.s.fw.ct.by_state[unreplied], n as u32);
    let (from, to, _) = udp4_fields(tw.cached.sink.on(VM1).last().unwrap());
    assert_eq!(
        (from, to),
        ((INET, 40000 + n - 1), (X1, 53)),
        "DNAT to the fixed IP, the real source kept"
    );
    let replies: Vec<Vec<u8>> = (0..n)
        .map(|k| udp4_tagged((M1, GW1), None, (X1, INET), (53, 40000 + k), &[k as u8; 30]))
        .collect();
    tw.reply_to_one_way((UPLINK, inbound), (VM1, &replies), n);
}

/// UDP through a floating IP (DNAT in, SNAT out), many flows: once a flow is replied, the
/// flow cache answers its datagrams both ways as the stages do (addresses, TTL, MACs, tag,
/// both checksums; a datagram without a UDP checksum stays without one), with payloads and
/// so checksums that change every round; disassociating the floating IP ends it at once.
#[test]
fn udp_through_a_floating_ip_from_the_flow_cache_is_what_the_stages_make_of_it() {
    let mut tw = fip_twins();
    let n = 40u16;
    let inbound = |round: u8| udp_to_the_floating_ip(n, round);
    let replies = |round: u8| -> Vec<Vec<u8>> {
        (0..n)
            .map(|k| {
                let payload = [round.wrapping_mul(7) ^ k as u8; 30];
                udp4_tagged((M1, GW1), None, (X1, INET), (53, 40000 + k), &payload)
            })
            .collect()
    };
    tw.rx(UPLINK, &inbound(0));
    tw.rx(VM1, &replies(0));
    assert_eq!(tw.hits(), 0, "new flows and first replies take the stages");
    // Learnt from the next datagram each way, answered from then on.
    for round in 1..4 {
        tw.rx(UPLINK, &inbound(round));
        tw.rx(VM1, &replies(round));
    }
    assert_eq!(tw.hits(), 2 * 2 * n as u64, "{:?}", tw.cached.s.flows.stats);
    assert_eq!(tw.cached.sink.on(VM1).len(), 4 * n as usize);
    assert_eq!(tw.cached.sink.on(UPLINK).len(), 4 * n as usize);
    let last_in = tw.cached.sink.on(VM1).last().unwrap();
    let (from, to, _) = udp4_fields(last_in);
    assert_eq!(
        (from, to),
        ((INET, 40000 + n - 1), (X1, 53)),
        "DNAT to the fixed IP, the real source kept"
    );
    let last_out = tw.cached.sink.on(UPLINK).last().unwrap();
    assert_eq!(
        &last_out[12..16],
        &[0x81, 0x00, 0x00, 101],
        "tagged VLAN 101"
    );
    let (from, to, _) = udp4_fields(last_out);
    assert_eq!(
        (from, to),
        ((F1, 53), (INET, 40000 + n - 1)),
        "leaves as the floating IP"
    );
    // No UDP checksum (0) stays none, both ways, from the cache.
    let hits = tw.hits();
    let mut none_in = inbound(9).swap_remove(3);
    none_in[44..46].fill(0);
    tw.rx(UPLINK, &[none_in]);
    assert_eq!(udp4_fields(tw.cached.sink.on(VM1).last().unwrap()).2, 0);
    let mut none_out = replies(9).swap_remove(3);
    none_out[40..42].fill(0);
    tw.rx(VM1, &[none_out]);
    assert_eq!(udp4_fields(tw.cached.sink.on(UPLINK).last().unwrap()).2, 0);
    assert_eq!(tw.hits(), hits + 2);
    // The floating IP disassociated: nothing from the cache, no datagram reaches vm1.
    let state = STATE.replace(
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext, port_id: p1, router_id: r1}",
        "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext}",
    );
    tw.set_tables(|| tables_with(&state));
    let (hits, to_vm1) = (tw.hits(), tw.cached.sink.on(VM1).len());
    tw.rx(UPLINK, &inbound(10));
    tw.rx(VM1, &replies(10));
    assert_eq!(
        tw.hits(),
        hits,
        "nothing from the cache after a new generation"
    );
    assert_eq!(tw.cached.sink.on(VM1).len(), to_vm1, "{:?}", tw.cached.c);
}

/// Hairpin UDP between two instances of this host through each other's floating IPs (vm2 to
/// F1, seen by vm1 as from F2; vm1 answers F2): both addresses translated in one pass, each
/// datagram checked in both zones; the flow cache answers it as the stages do, and it never
/// leaves the host.
#[test]
fn hairpin_udp_between_floating_ips_from_the_flow_cache_is_what_the_stages_make_of_it() {
    let mut tw = fip_twins();
    let n = 20u16;
    let there = |round: u8| -> Vec<Vec<u8>> {
        (0..n)
            .map(|k| udp4_tagged((M2, GW1), None, (X2, F1), (40000 + k, 53), &[round; 20]))
            .collect()
    };
    let back = |round: u8| -> Vec<Vec<u8>> {
        (0..n)
            .map(|k| udp4_tagged((M1, GW1), None, (X1, F2), (53, 40000 + k), &[!round; 33]))
            .collect()
    };
    for round in 0..4 {
        tw.rx(VM2, &there(round));
        tw.rx(VM1, &back(round));
    }
    assert_eq!(tw.hits(), 2 * 2 * n as u64, "{:?}", tw.cached.s.flows.stats);
    let (from, to, _) = udp4_fields(tw.cached.sink.on(VM1).last().unwrap());
    assert_eq!(
        (from, to),
        ((F2, 40000 + n - 1), (X1, 53)),
        "vm2 seen as F2"
    );
    let (from, to, _) = udp4_fields(tw.cached.sink.on(VM2).last().unwrap());
    assert_eq!(
        (from, to),
        ((F1, 53), (X2, 40000 + n - 1)),
        "vm1 seen as F1"
    );
    assert_eq!(tw.cached.sink.on(UPLINK).len(), 0, "never left the host");
}

/// Hairpin TCP between two instances of this host through each other's floating IPs: the
/// flow cache answers the established connections' segments as the stages do (both
/// addresses translated, checked in both zones), and an out-of-window segment is the stages'
/// to drop.
#[test]
fn hairpin_tcp_between_floating_ips_from_the_flow_cache_is_what_the_stages_make_of_it() {
    let mut tw = fip_twins();
    let vm2 = Side {
        port: VM2,
        smac: M2,
        dmac: GW1,
        vid: None,
        src: X2,
        dst: F1,
    };
    let vm1 = Side {
        port: VM1,
        smac: M1,
        dmac: GW1,
        vid: None,
        src: X1,
        dst: F2,
    };
    let n = 20;
    let mut cv = Conversation::new(vm2, vm1, n);
    let (ack, psh) = (0x10, 0x18);
    tw.handshakes(&mut cv);
    for _ in 0..3 {
        let (port, frames) = cv.all(false, psh, 100);
        tw.rx(port, &frames);
        let (port, frames) = cv.all(true, ack, 0);
        tw.rx(port, &frames);
    }
    assert_eq!(tw.hits(), 2 * 2 * n as u64, "{:?}", tw.cached.s.flows.stats);
    let (_, smac, dmac, src, dst, _) = tcp_out(tw.cached.sink.on(VM1).last().unwrap());
    assert_eq!((smac.as_str(), dmac.as_str(), src, dst), (GW1, M1, F2, X1));
    let (_, smac, dmac, src, dst, _) = tcp_out(tw.cached.sink.on(VM2).last().unwrap());
    assert_eq!((smac.as_str(), dmac.as_str(), src, dst), (GW1, M2, F1, X2));
    let invalid = tw.cached.c.dropped(D::ConntrackInvalid);
    let mut bad = cv.seg(3, false, ack, 0, 64);
    bad[38] ^= 0x80;
    tw.rx(VM2, &[bad]);
    assert_eq!(tw.cached.c.dropped(D::ConntrackInvalid), invalid + 1);
    assert_eq!(tw.cached.sink.on(UPLINK).len(), 0, "never left the host");
}

/// Hairpin between two floating IPs with two workers: each datagram arrives on either core,
/// and the sender's zone entry and the receiver's (other keys: what each instance sees) may
/// belong to different cores, handed over between the egress check, the router and the
/// ingress check. Every query reaches vm1 from F2, every answer reaches vm2 from F1 as a
/// reply, and each flow is tracked once in each zone.
#[test]
fn two_workers_hairpin_between_floating_ips() {
    use super::firewall_tests::TwoCores;
    let mut x = TwoCores::new(tables_with(STATE));
    let n = 24u16;
    let mut handed = 0;
    for k in 0..n {
        let q = udp4_tagged((M2, GW1), None, (X2, F1), (40000 + k, 53), &[1; 20]);
        handed += x.rx(k as usize % 2, VM2, q);
        let got = x.sink.on(VM1);
        assert_eq!(got.len(), 1 + k as usize, "query {k}: {:?}", x.c);
        assert_eq!(udp4_fields(got.last().unwrap()).0, (F2, 40000 + k));
    }
    for k in 0..n {
        let a = udp4_tagged((M1, GW1), None, (X1, F2), (53, 40000 + k), &[2; 20]);
        handed += x.rx((k as usize + 1) % 2, VM1, a);
        let got = x.sink.on(VM2);
        assert_eq!(got.len(), 1 + k as usize, "answer {k}: {:?}", x.c);
        assert_eq!(udp4_fields(got.last().unwrap()).0, (F1, 53));
    }
    assert!(
        handed > 0,
        "some datagrams arrived on the core that does not own them"
    );
    let entries: usize = x.s.iter().map(|s| s.fw.ct.len()).sum();
    assert_eq!(entries, 2 * n as usize, "one entry a flow in each zone");
    let replied = crate::pipeline::conntrack::state::REPLIED as usize;
    let replied: u32 = x.s.iter().map(|s| s.fw.ct.by_state[replied]).sum();
    assert_eq!(replied, 2 * n as u32, "{:?}", x.c);
}

/// Three connections whose packets from the client share one bucket of the flow cache (two
/// ways), sending in turn: the cache keeps two of them and answers their packets, rather
/// than each learn pushing out the flow that comes next so that every packet misses; what
/// it answers is still what the stages make of it. Slots that can no longer answer (a MAC was
/// learnt since) crowd nobody: the flow left outside gets a way at its next miss.
#[test]
fn flows_sharing_a_bucket_keep_two_of_them_cached() {
    let mut tw = Twins::new(harness);
    let (vm2, vm1) = east_west_sides();
    let net = tw.cached.t.ports[VM2 as usize].network;
    let bucket = |k: u16| {
        let f = tcp4(
            vm2.smac,
            vm2.dmac,
            None,
            (vm2.src, vm2.dst),
            (40000 + k, 5001),
            (1, 1),
            0x10,
            0,
            64,
        );
        crate::pipeline::flowcache::bucket_of(&f, VM2, net)
    };
    // The first three client ports 40000 + k that land in one bucket.
    let mut seen = std::collections::HashMap::<usize, Vec<u16>>::new();
    let three = (0..20_000u16)
        .find_map(|k| {
            let ks = seen.entry(bucket(k)).or_default();
            ks.push(k);
            (ks.len() == 3).then(|| ks.clone())
        })
        .expect("three ports in one bucket");
    let mut cv = Conversation::new(vm2, vm1, three[2] + 1);
    let (syn, ack) = (0x02, 0x10);
    for (from_server, flags) in [(false, syn), (true, syn | ack), (false, ack)] {
        for &k in &three {
            let f = cv.seg(k, from_server, flags, 0, 64);
            tw.rx(if from_server { VM1 } else { VM2 }, &[f]);
        }
    }
    // Connection k's client sends data and the server acks it; whether the cache answered
    // the client's packet.
    fn exchange(tw: &mut Twins, cv: &mut Conversation, k: u16) -> bool {
        let f = cv.seg(k, false, 0x18, 6, 64);
        let before = tw.hits();
        tw.rx(VM2, &[f]);
        let hit = tw.hits() > before;
        let f = cv.seg(k, true, 0x10, 0, 64);
        tw.rx(VM1, &[f]);
        hit
    }
    let (rounds, mut client_hits) = (64, 0);
    for _ in 0..rounds {
        for &k in &three {
            client_hits += exchange(&mut tw, &mut cv, k) as u64;
        }
    }
    // Two in three would be all of them kept; a learn that replaces one (1 in 16) costs a
    // few misses. Replaced on every learn, only the flow a tie on age leaves in its way hits
    // (63 of 192).
    assert!(
        client_hits >= rounds as u64 * 3 / 2,
        "{client_hits} of {} client packets answered by the cache",
        rounds * 3
    );
    assert!(
        tw.cached.s.flows.stats.crowded > 0,
        "{:?}",
        tw.cached.s.flows.stats
    );
    // The one the cache does not hold now: the first that misses.
    let mut outside = None;
    for &k in &three {
        if !exchange(&mut tw, &mut cv, k) && outside.is_none() {
            outside = Some(k);
        }
    }
    let outside = outside.expect("one of three flows in two ways missed");
    // A MAC learnt anywhere: no slot made before can answer any more, so none is crowding
    // the bucket, and the flow left outside is learnt at its next miss.
    for h in tw.all() {
        let now = h.s.now_ms;
        h.s.learn
            .learn(net, crate::packet::MacAddr([2, 0, 0, 0, 0, 0x77]), VM1, now);
    }
    for hit in [false, true] {
        assert_eq!(
            exchange(&mut tw, &mut cv, outside),
            hit,
            "connection {outside} after the learn"
        );
    }
}

/// The conntrack-established shape under callgrind (see [`probe_established`]): 256
/// connections between two instances of this host, each segment checked in both zones.
#[test]
#[ignore = "a profiling workload, run by hand under valgrind"]
fn probe_east_west_established_cost() {
    let mut h = harness();
    let (vm2, vm1) = east_west_sides();
    let mut cv = Conversation::new(vm2, vm1, 256);
    probe_established(&mut h, &mut cv, |h, (port, f)| h.rx(port, &f), |_, _| {});
}

/// Replied UDP flows between two instances of this host under callgrind (see
/// [`probe_udp`]): 256 flows from vm2 to vm1, each datagram checked in both zones.
#[test]
#[ignore = "a profiling workload, run by hand under valgrind"]
fn probe_east_west_udp_cost() {
    let mut h = harness();
    let [there, back] = udp_flows(256, (M2, X2), (M1, X1), 40000, 5001);
    probe_udp(&mut h, (VM2, &there), (VM1, &back));
}

/// One-way UDP flows between two instances of this host under callgrind (see
/// [`probe_udp`]): 256 flows from vm2 to vm1, never replied, each datagram checked in both
/// zones.
#[test]
#[ignore = "a profiling workload, run by hand under valgrind"]
fn probe_east_west_one_way_udp_cost() {
    let mut h = harness();
    let [there, _] = udp_flows(256, (M2, X2), (M1, X1), 40000, 5001);
    probe_udp(&mut h, (VM2, &there), (VM1, &[]));
}

/// Replied UDP flows through the floating IP under callgrind (see [`probe_udp`]):
/// 256 flows from the Internet host (VLAN 101, DNAT, routed, vm1's zone) and vm1's replies
/// (SNAT, routed, tagged).
#[test]
#[ignore = "a profiling workload, run by hand under valgrind"]
fn probe_floating_ip_udp_cost() {
    let mut h = harness();
    resolve_external_gateway(&mut h);
    let n = 256u16;
    let inbound: Vec<_> = (0..n)
        .map(|k| {
            let ports = (40000 + k, 53);
            udp4_tagged((INET_GW, FG1), Some(101), (INET, F1), ports, &[7; 18])
        })
        .collect();
    let replies: Vec<_> = (0..n)
        .map(|k| udp4_tagged((M1, GW1), None, (X1, INET), (53, 40000 + k), &[9; 18]))
        .collect();
    probe_udp(&mut h, (UPLINK, &inbound), (VM1, &replies));
}

/// The fip-inbound shape under callgrind (see [`probe_established`]): 256 connections from
/// an Internet host to vm1 through its floating IP (VLAN 101 in, DNAT, routed, the
/// instance's zone; back: SNAT, routed, tagged).
#[test]
#[ignore = "a profiling workload, run by hand under valgrind"]
fn probe_floating_ip_established_cost() {
    let mut h = harness();
    resolve_external_gateway(&mut h);
    let (internet, vm1) = floating_ip_sides();
    let mut cv = Conversation::new(internet, vm1, 256);
    probe_established(&mut h, &mut cv, |h, (port, f)| h.rx(port, &f), |_, _| {});
}

/// An Internet host (on the uplink, VLAN 101, from the external gateway's MAC) and vm1 behind
/// floating IP F1: client and server of the floating-IP flows.
fn floating_ip_sides() -> (Side<'static>, Side<'static>) {
    let internet = Side {
        port: UPLINK,
        smac: INET_GW,
        dmac: FG1,
        vid: Some(101),
        src: INET,
        dst: F1,
    };
    let vm1 = Side {
        port: VM1,
        smac: M1,
        dmac: GW1,
        vid: None,
        src: X1,
        dst: INET,
    };
    (internet, vm1)
}

/// A conversation's client and server.
type Sides = (Side<'static>, Side<'static>);

/// The two shapes of established flows the scripted twin tests play: through the floating
/// IP (twins whose external gateway is resolved) and between two instances of this host.
fn established_shapes() -> [(fn() -> Twins, Sides); 2] {
    [
        (fip_twins, floating_ip_sides()),
        (|| Twins::new(harness), east_west_sides()),
    ]
}

/// An ICMP error about an established flow, from either end (the fuzz's kinds, quoting the
/// whole packet or its first 28 bytes), reaches the other end as an error about the packet
/// that end sent: through the floating IP (the outer destination and the quoted source
/// translated back) and between two instances of this host (related in both zones).
#[test]
fn icmp_errors_about_established_flows_reach_the_other_end() {
    for (make, (client, server)) in established_shapes() {
        for udp in [false, true] {
            let mut tw = make();
            let mut cv = Conversation::new(client, server, 2);
            cv.udp = udp;
            tw.warm_up(&mut cv, |_, f| f);
            tw.icmp_errors_reach_the_other_end(&cv, |_, f| f);
            assert!(
                tw.cached.c.count(E::ConntrackRelated) >= 16,
                "{:?}",
                tw.cached.c
            );
        }
    }
    // From a router on the Internet side (100.64.0.254) about what vm1 sent: vm1 gets it,
    // from that router.
    let mut tw = fip_twins();
    let (internet, vm1) = floating_ip_sides();
    let mut cv = Conversation::new(internet, vm1, 2);
    tw.warm_up(&mut cv, |_, f| f);
    let ic = FuzzIcmp {
        kind: 1,
        from_router: true,
        short_quote: true,
    };
    let got = tw
        .icmp_error(&cv, 0, false, ic, |_, f| f)
        .expect("delivered");
    let (src, dst, ..) = icmp_says(&got).unwrap();
    assert_eq!((src, dst), ([100, 64, 0, 254].into(), X1.into()));
}

/// vm2 (client) and vm1 (server), two instances of this host with stateful groups.
fn east_west_sides() -> (Side<'static>, Side<'static>) {
    let vm2 = Side {
        port: VM2,
        smac: M2,
        dmac: M1,
        vid: None,
        src: X2,
        dst: X1,
    };
    let vm1 = Side {
        port: VM1,
        smac: M1,
        dmac: M2,
        vid: None,
        src: X1,
        dst: X2,
    };
    (vm2, vm1)
}

/// Differential fuzz of the flow cache against the stages on the established connections it
/// answers: whatever follows the handshakes (damaged headers, cut frames, any flags, TTLs
/// that run out, datagrams over the MTU, time passing), the twin with the cache sends,
/// drops, counts and tracks exactly what the twin without it does.
mod fuzz {
    use super::super::firewall_tests::TwoCores;
    use super::*;
    use proptest::prelude::*;

    /// The tables a `Retable` move swaps in: the host's, and the host's with floating IP
    /// 203.0.113.17 disassociated.
    fn fip_states() -> Vec<Box<dyn Fn() -> Tables>> {
        vec![
            Box::new(|| tables_with(STATE)),
            Box::new(|| tables_with(&without_fip())),
        ]
    }

    /// The host's state with floating IP 203.0.113.17 disassociated.
    fn without_fip() -> String {
        STATE.replace(
            "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext, port_id: p1, router_id: r1}",
            "- {id: fip1, floating_ip_address: 203.0.113.17, floating_network_id: ext}",
        )
    }

    /// One worker and two on the same tables, fed the same frames one at a time.
    struct OneAndTwo {
        one: Harness,
        two: TwoCores,
        /// As [`Twins::announcements`].
        announcements: Vec<(u16, Vec<u8>)>,
    }

    impl OneAndTwo {
        fn new() -> Self {
            let one = harness();
            let two = TwoCores::new(one.t.clone());
            for s in &two.s {
                for ip in ["10.0.0.12", "10.0.0.13"] {
                    s.neigh.set_static(
                        ip.parse().unwrap(),
                        crate::tables::mac_u64(&mac("02:00:00:00:00:12").0),
                    );
                }
            }
            OneAndTwo {
                one,
                two,
                announcements: Vec::new(),
            }
        }

        /// `f` arrives on `port`: of the one worker, and of worker `core` of the two; but
        /// an IPv4 fragment on the worker its addresses pick, as RSS hashes fragments (no
        /// ports in most of them) by addresses only, so that all of a datagram's arrive on one.
        #[track_caller]
        fn rx(&mut self, core: usize, port: u16, f: Vec<u8>) {
            let fragment = f.len() >= 34
                && f[12..14] == [8, 0]
                && u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
            let core = if fragment {
                f[26..34].iter().fold(0usize, |h, &b| h ^ b as usize) % 2
            } else {
                core
            };
            self.one.rx(port, std::slice::from_ref(&f));
            self.two.rx(core, port, f);
            self.assert_same();
        }

        fn advance(&mut self, ms: u64) {
            for s in std::iter::once(&mut self.one.s).chain(self.two.s.iter_mut()) {
                s.now_ms += ms;
                s.fw.now = s.now_ms as u32;
            }
        }

        /// Every worker learns the external gateway's MAC from its ARP reply (each core has
        /// its own neighbour table); the counters start again from there.
        fn resolve_external_gateway(&mut self) {
            resolve_external_gateway(&mut self.one);
            for core in 0..2 {
                self.two
                    .rx(core, UPLINK, arp101(INET_GW, EXT_GW, FG1, FG_IP, true));
            }
            self.one.c = Default::default();
            self.two.c = Default::default();
            self.assert_same();
        }

        /// A whole sweep of every worker's connection table.
        #[track_caller]
        fn sweep(&mut self) {
            let t = self.one.t.clone();
            for s in std::iter::once(&mut self.one.s).chain(self.two.s.iter_mut()) {
                crate::pipeline::firewall::sweep(&t, &mut s.fw, usize::MAX);
            }
            self.assert_same();
        }

        #[track_caller]
        fn assert_same(&self) {
            let (one, two) = (&self.one, &self.two);
            assert_eq!(one.sink.sent, two.sink.sent, "frames sent");
            assert_eq!(one.c.drops, two.c.drops, "drops");
            // Hand-offs aside; and each worker learns MACs into a table of its own, so a
            // MAC first seen on both counts once on each.
            let but_handoffs = |c: &crate::counters::BatchCounters| {
                let mut e = c.events;
                e[E::ConntrackHandoff as usize] = 0;
                e[E::Learned as usize] = 0;
                e
            };
            assert_eq!(but_handoffs(&one.c), but_handoffs(&two.c), "events");
            let conns = |ss: &[&crate::pipeline::CoreState]| {
                let mut v: Vec<_> = ss
                    .iter()
                    .flat_map(|s| s.fw.ct.iter())
                    .map(|(_, k, e)| (format!("{k}"), e.state, e.flags, e.tcp, e.expires))
                    .collect();
                v.sort_by(|x, y| x.0.cmp(&y.0));
                v
            };
            assert_eq!(
                conns(&[&one.s]),
                conns(&[&two.s[0], &two.s[1]]),
                "connections"
            );
            let per_port: Vec<[u64; 2]> = (0..one.s.fw.per_port.len())
                .map(|p| {
                    let [a, b] = [&two.s[0], &two.s[1]]
                        .map(|s| s.fw.per_port.get(p).copied().unwrap_or_default());
                    [a[0] + b[0], a[1] + b[1]]
                })
                .collect();
            assert_eq!(one.s.fw.per_port, per_port, "firewall counters per port");
        }
    }

    /// Plays `moves` on `sides`' connections (`udp`: flows) through one worker and two,
    /// warmed up with each connection's two directions arriving on different workers of the
    /// two; a frame of connection `k` (of the moves) arrives on worker `k / n % 2`.
    fn one_and_two(
        mut x: OneAndTwo,
        (client, server): (Side<'static>, Side<'static>),
        udp: bool,
        moves: &[FuzzMove],
    ) {
        let mut cv = Conversation::new(client, server, 6);
        cv.udp = udp;
        // The handshakes (or first datagrams) and two rounds.
        let steps: &[(bool, u8, usize)] = if udp {
            &[(false, 0, 20), (true, 0, 30), (false, 0, 20), (true, 0, 30)]
        } else {
            &[
                (false, 0x02, 0),
                (true, 0x12, 0),
                (false, 0x10, 0),
                (false, 0x18, 10),
                (true, 0x10, 0),
                (false, 0x18, 10),
                (true, 0x10, 0),
            ]
        };
        for &(from_server, flags, len) in steps {
            for k in 0..cv.n {
                let f = cv.seg(k, from_server, flags, len, 64);
                x.rx(
                    (k as usize + from_server as usize) % 2,
                    cv.port(from_server),
                    f,
                );
            }
        }
        assert!(
            x.two.c.count(E::ConntrackHandoff) > 0,
            "some frames handed over"
        );
        assert!(x.one.c.count(E::Unicast) > 0, "{:?}", x.one.c);
        // New connections the floods may open: few enough that neither worker's table (64
        // entries each) fills, as the one's (1,024) never does: full tables are per worker.
        let mut openings = 16u16;
        for m in moves {
            match m {
                FuzzMove::Wait(ms) => x.advance(*ms),
                FuzzMove::Retable(_) => {}
                // Whole sweeps: a few slots of one table are not those of the other two.
                FuzzMove::Sweep(_) => x.sweep(),
                // On either worker: they share the neighbour tables.
                FuzzMove::Announce(k) => {
                    let n = x.announcements.len().max(1);
                    if let Some((port, f)) = x.announcements.get(k % n).cloned() {
                        x.rx(k / n % 2, port, f);
                    }
                }
                FuzzMove::Batch { from_server, segs } => {
                    for s in segs {
                        let f = s.frame(&mut cv, *from_server);
                        x.rx((s.k / cv.n) as usize % 2, cv.port(*from_server), f);
                    }
                }
                &FuzzMove::Flood {
                    from_server,
                    first,
                    n,
                } => {
                    let n = n.min(openings);
                    openings -= n;
                    for p in first..first.saturating_add(n) {
                        x.rx(
                            p as usize % 2,
                            cv.port(from_server),
                            cv.opening(p, from_server),
                        );
                    }
                }
            }
        }
    }

    /// Plays `moves` on `sides`' connections (`udp`: flows) through `tw`, once warmed up,
    /// its connection tables [`FUZZ_TABLE`] entries (`evict`: when full, a new connection
    /// evicts the oldest unestablished one).
    fn play(
        tw: Twins,
        sides: (Side<'static>, Side<'static>),
        (udp, one_way): (bool, bool),
        evict: bool,
        moves: &[FuzzMove],
    ) {
        let mut tw = tw.limit(FUZZ_TABLE, evict);
        let mut cv = Conversation::new(sides.0, sides.1, 6);
        cv.udp = udp;
        if one_way {
            tw.warm_up_one_way(&mut cv, |_, f| f);
        } else {
            tw.warm_up(&mut cv, |_, f| f);
        }
        tw.play(&mut cv, moves, |_, f| f);
    }

    /// What the fuzz's `Flood` does to its tables: 47 new connections fill a [`FUZZ_TABLE`]
    /// that holds the conversation's, later ones refused (or evicting the oldest of the
    /// flood's), and the conversation's established connections go on, answered by the flow
    /// cache, on all three twins alike.
    #[test]
    fn a_flood_fills_the_fuzzed_table_and_the_conversation_goes_on() {
        for (make, (client, server)) in established_shapes() {
            for evict in [false, true] {
                let mut tw = make().limit(FUZZ_TABLE, evict);
                let mut cv = Conversation::new(client, server, 6);
                tw.warm_up(&mut cv, |_, f| f);
                let flood = FuzzMove::Flood {
                    from_server: false,
                    first: 20000,
                    n: 47,
                };
                tw.play(&mut cv, &[flood], |_, f| f);
                let ct = &tw.staged.s.fw.ct;
                assert_eq!(ct.len(), FUZZ_TABLE, "full");
                let (refused, evicted) = (ct.stats.refused_full, ct.stats.evicted);
                if evict {
                    assert!(evicted > 0 && refused == 0, "{:?}", ct.stats);
                } else {
                    assert!(refused > 0 && evicted == 0, "{:?}", ct.stats);
                }
                let (hits, sent) = (tw.hits(), tw.cached.sink.on(server.port).len());
                let (port, frames) = cv.all(false, 0x18, 10);
                tw.rx(port, &frames);
                assert_eq!(tw.hits(), hits + 6, "every segment answered by the cache");
                assert_eq!(tw.cached.sink.on(server.port).len(), sent + 6);
            }
        }
    }

    /// Twins of the floating-IP host whose Retable moves disassociate the floating IP and
    /// associate it again.
    fn fip_twins_retabled() -> Twins {
        let mut tw = fip_twins();
        tw.states = fip_states();
        tw.announcements = gateway_moves();
        tw
    }

    /// The external gateway's ARP replies: from its MAC, and from another (it moved).
    fn gateway_moves() -> Vec<(u16, Vec<u8>)> {
        [INET_GW, "02:00:00:00:01:02"]
            .into_iter()
            .map(|m| (UPLINK, arp101(m, EXT_GW, FG1, FG_IP, true)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Internet host -> floating IP (DNAT, routed, vm1's zone) and back (SNAT), the
        /// floating IP disassociated and associated again as the moves swap the tables.
        #[test]
        fn floating_ip_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
        ) {
            play(fip_twins_retabled(), floating_ip_sides(), (false, false), evict, &moves);
        }

        /// Two instances of this host, each packet judged in both zones.
        #[test]
        fn east_west_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
        ) {
            play(Twins::new(harness), east_west_sides(), (false, false), evict, &moves);
        }

        /// The same with UDP flows, replied or (`one_way`) not yet: the Internet host's
        /// datagrams answered from the flow cache until vm1 replies.
        #[test]
        fn floating_ip_udp_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            play(fip_twins_retabled(), floating_ip_sides(), (true, one_way), evict, &moves);
        }

        /// One worker against two, every frame arriving on either of the two (as RSS
        /// spreads a connection's two directions over them): each connection is judged on
        /// the core that owns it, handed over when it arrives on the other, and the two send,
        /// drop, count and track frame after frame what the one does.
        #[test]
        fn east_west_flows_are_the_same_on_one_worker_and_on_two(
            moves in fuzz_moves(),
            udp in any::<bool>(),
        ) {
            one_and_two(OneAndTwo::new(), east_west_sides(), udp, &moves);
        }

        /// The same through the floating IP: DNAT in, SNAT out, routed, vm1's zone.
        #[test]
        fn floating_ip_flows_are_the_same_on_one_worker_and_on_two(
            moves in fuzz_moves(),
            udp in any::<bool>(),
        ) {
            let mut x = OneAndTwo::new();
            x.resolve_external_gateway();
            x.announcements = gateway_moves();
            one_and_two(x, floating_ip_sides(), udp, &moves);
        }

        #[test]
        fn east_west_udp_flows_are_the_same_with_and_without_the_cache(
            moves in fuzz_moves(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            play(Twins::new(harness), east_west_sides(), (true, one_way), evict, &moves);
        }
    }
}
