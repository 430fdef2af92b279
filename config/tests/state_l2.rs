//! Desired-state rules for networks, subnets and ports: each test breaks one
//! thing in the (valid) seed state and checks the exact path and message.

mod common;

use common::{has, only, seed};
use vswitch_config::{AllowedAddressPair, FixedIp, MacAddr, NetworkType};

#[test]
fn fixed_ip_outside_its_subnet() {
    let mut s = seed();
    s.ports[2].fixed_ips[0].ip_address = "10.9.9.9".parse().unwrap();
    only(
        &s.validate(),
        "ports[2].fixed_ips[0].ip_address",
        "10.9.9.9 is not in subnet selfservice2-v4 (198.51.100.0/24)",
    );
    // A subnet without a name is called by its id.
    s.subnets[2].name.clear();
    only(
        &s.validate(),
        "ports[2].fixed_ips[0].ip_address",
        "10.9.9.9 is not in subnet subnet-selfservice2-v4 (198.51.100.0/24)",
    );
}

#[test]
fn fixed_ip_network_and_broadcast_addresses() {
    let mut s = seed();
    s.ports[1].fixed_ips[0].ip_address = "198.18.0.0".parse().unwrap();
    s.ports[2].fixed_ips[0].ip_address = "198.51.100.255".parse().unwrap();
    s.ports[2].fixed_ips[1].ip_address = "fd00:198:51:100::".parse().unwrap();
    let p = s.validate();
    has(
        &p,
        "ports[1].fixed_ips[0].ip_address",
        "198.18.0.0 is the network address of subnet selfservice1-v4 (198.18.0.0/24); use a host address",
    );
    has(
        &p,
        "ports[2].fixed_ips[0].ip_address",
        "198.51.100.255 is the broadcast address of subnet selfservice2-v4 (198.51.100.0/24); use a host address",
    );
    has(
        &p,
        "ports[2].fixed_ips[1].ip_address",
        "fd00:198:51:100:: is the network address of subnet selfservice2-v6 (fd00:198:51:100::/64); use a host address",
    );
    assert_eq!(p.len(), 3);
}

#[test]
fn fixed_ip_used_twice_in_a_subnet() {
    let mut s = seed();
    s.ports[2].fixed_ips[0].ip_address = "198.51.100.4".parse().unwrap();
    only(
        &s.validate(),
        "ports[2].fixed_ips[0].ip_address",
        "198.51.100.4 is already used by ports[0] in subnet selfservice2-v4",
    );
}

#[test]
fn fixed_ip_subnet_missing_or_on_another_network() {
    let mut s = seed();
    s.ports[0].fixed_ips[0].subnet_id = "subnet-selfservice1-v4".into();
    s.ports[2].fixed_ips.push(FixedIp {
        subnet_id: "nope".into(),
        ip_address: "198.51.100.9".parse().unwrap(),
    });
    let p = s.validate();
    has(
        &p,
        "ports[0].fixed_ips[0].subnet_id",
        "subnet selfservice1-v4 is on network selfservice1, not on this port's network selfservice2",
    );
    has(
        &p,
        "ports[2].fixed_ips[2].subnet_id",
        "subnet \"nope\" does not exist",
    );
}

#[test]
fn duplicate_mac_on_one_network() {
    let mut s = seed();
    s.ports[2].mac_address = s.ports[0].mac_address;
    only(
        &s.validate(),
        "ports[2].mac_address",
        "duplicate MAC fa:16:3e:71:e9:3e also used by ports[0] on network selfservice2",
    );
    // The same MAC on another network is fine.
    let mut s = seed();
    s.ports[1].mac_address = s.ports[0].mac_address;
    assert_eq!(s.validate(), vec![]);
}

#[test]
fn multicast_and_zero_macs() {
    let mut s = seed();
    s.ports[0].mac_address = "01:00:5e:00:00:01".parse().unwrap();
    s.ports[1].mac_address = MacAddr::ZERO;
    let p = s.validate();
    has(
        &p,
        "ports[0].mac_address",
        "MAC 01:00:5e:00:00:01 is a multicast address (lowest bit of the first octet set); use a unicast MAC such as fa:16:3e:xx:xx:xx",
    );
    has(
        &p,
        "ports[1].mac_address",
        "MAC 00:00:00:00:00:00 is all zeros; use a unicast MAC such as fa:16:3e:xx:xx:xx",
    );
}

#[test]
fn port_on_missing_network() {
    let mut s = seed();
    s.ports[1].network_id = "nope".into();
    let p = s.validate();
    has(&p, "ports[1].network_id", "network \"nope\" does not exist");
    has(
        &p,
        "ports[1].fixed_ips[0].subnet_id",
        "subnet selfservice1-v4 is on network selfservice1, not on this port's network nope",
    );
}

#[test]
fn port_security_disabled_with_groups_or_pairs() {
    let mut s = seed();
    s.ports[0].port_security_enabled = Some(false);
    s.ports[0].allowed_address_pairs.push(AllowedAddressPair {
        ip_address: "198.51.100.50/32".parse().unwrap(),
        mac_address: None,
    });
    let p = s.validate();
    has(
        &p,
        "ports[0].security_groups",
        "port security is disabled for this port, so it cannot have security groups; remove them or enable port_security_enabled",
    );
    has(
        &p,
        "ports[0].allowed_address_pairs",
        "port security is disabled for this port, so allowed address pairs mean nothing; remove them or enable port_security_enabled",
    );
    // Inherited from the network too.
    let mut s = seed();
    s.networks[1].port_security_enabled = false;
    only(
        &s.validate(),
        "ports[1].security_groups",
        "port security is disabled for this port, so it cannot have security groups; remove them or enable port_security_enabled",
    );
    assert!(!s.ports[1].port_security(&s.networks[1]));
}

#[test]
fn missing_security_group() {
    let mut s = seed();
    s.ports[1].security_groups.push("sg-web".into());
    only(
        &s.validate(),
        "ports[1].security_groups[1]",
        "security group \"sg-web\" does not exist",
    );
}

#[test]
fn router_port_of_missing_router() {
    let mut s = seed();
    s.ports[3].device_id = "router9".into();
    only(
        &s.validate(),
        "ports[3].device_id",
        "a network:router_interface_distributed port belongs to a router, but router \"router9\" does not exist",
    );
}

#[test]
fn bound_to_unlisted_host() {
    let mut s = seed();
    s.ports[1].binding_host_id = Some("compute9".into());
    only(
        &s.validate(),
        "ports[1].binding:host_id",
        "host compute9 is not in hosts; add it with its vtep_ip so other hosts can reach this port",
    );
}

#[test]
fn segmentation_rules() {
    let mut s = seed();
    s.networks[0].segmentation_id = Some(5000);
    s.networks[1].segmentation_id = Some(16_777_216);
    s.networks[2].physical_network = Some("provider".into());
    let p = s.validate();
    has(
        &p,
        "networks[0].provider:segmentation_id",
        "VLAN id 5000 is out of range 1..=4094",
    );
    has(
        &p,
        "networks[1].provider:segmentation_id",
        "VNI 16777216 is out of range 1..=16777215",
    );
    has(
        &p,
        "networks[2].provider:physical_network",
        "a vxlan network runs over the hosts' tunnels, not a physical network; remove \"provider\"",
    );
    assert_eq!(p.len(), 3, "{}", common::list(&p));

    let mut s = seed();
    s.networks[0].network_type = NetworkType::Flat;
    s.networks[1].segmentation_id = None;
    let p = s.validate();
    has(
        &p,
        "networks[0].provider:segmentation_id",
        "a flat network is untagged and has no segmentation id; remove 101 or make the network vlan",
    );
    has(
        &p,
        "networks[1].provider:segmentation_id",
        "a vxlan network needs a VNI (1..=16777215)",
    );

    let mut s = seed();
    s.networks[0].physical_network = None;
    s.networks[0].segmentation_id = Some(0);
    let p = s.validate();
    has(
        &p,
        "networks[0].provider:physical_network",
        "a vlan network needs a physical network (a name from the hosts' bridge_mappings)",
    );
    has(
        &p,
        "networks[0].provider:segmentation_id",
        "VLAN id 0 is out of range 1..=4094",
    );
}

#[test]
fn duplicate_segments() {
    let mut s = seed();
    let mut vlan = s.networks[0].clone();
    vlan.id = "net-vlan-dup".into();
    let mut flat1 = vlan.clone();
    flat1.id = "net-flat1".into();
    flat1.network_type = NetworkType::Flat;
    flat1.segmentation_id = None;
    let mut flat2 = flat1.clone();
    flat2.id = "net-flat2".into();
    s.networks.extend([vlan, flat1, flat2]);
    s.networks[2].segmentation_id = Some(102);
    let p = s.validate();
    has(
        &p,
        "networks[2].provider:segmentation_id",
        "VNI 102 is already used by networks[1]",
    );
    has(
        &p,
        "networks[3].provider:segmentation_id",
        "VLAN 101 on physical network provider is already used by networks[0]",
    );
    has(
        &p,
        "networks[5].provider:physical_network",
        "physical network provider already carries flat network networks[4]; only one untagged network fits on a physical network",
    );
    assert_eq!(p.len(), 3, "{}", common::list(&p));
}

#[test]
fn mtu_rules() {
    let mut s = seed();
    s.networks[0].mtu = Some(60);
    s.networks[2].mtu = Some(1200);
    let p = s.validate();
    has(&p, "networks[0].mtu", "MTU 60 is out of range 68..=9216");
    has(
        &p,
        "networks[2].mtu",
        "MTU 1200 is below 1280, the IPv6 minimum, and the network has IPv6 subnet selfservice2-v6; raise the MTU or remove the subnet",
    );
    assert_eq!(p.len(), 2);
    // 1200 is fine without IPv6.
    s.networks[0].mtu = Some(1200);
    assert_eq!(s.validate().len(), 1);
}

#[test]
fn cidr_with_host_bits_and_wrong_version() {
    let mut s = seed();
    s.subnets[2].cidr = "198.51.100.5/24".parse().unwrap();
    only(
        &s.validate(),
        "subnets[2].cidr",
        "198.51.100.5/24 has host bits set; use the network address 198.51.100.0/24",
    );
    let mut s = seed();
    s.subnets[1].ip_version = 6;
    s.subnets[2].ip_version = 5;
    let p = s.validate();
    has(
        &p,
        "subnets[1].ip_version",
        "ip_version is 6 but cidr 198.18.0.0/24 is IPv4",
    );
    has(
        &p,
        "subnets[2].ip_version",
        "ip_version must be 4 or 6, not 5",
    );
}

#[test]
fn subnet_on_missing_network_and_overlaps() {
    let mut s = seed();
    s.subnets[1].network_id = "nope".into();
    s.subnets[3].cidr = "fd00:198:51::/48".parse().unwrap();
    s.subnets[3].gateway_ip = Some("fd00:198:51::1".parse().unwrap());
    s.subnets[3].allocation_pools.clear();
    s.subnets.push(s.subnets[2].clone());
    s.subnets[4].id = "subnet-overlap".into();
    s.subnets[4].cidr = "198.51.100.128/25".parse().unwrap();
    s.subnets[4].gateway_ip = None;
    s.subnets[4].allocation_pools.clear();
    let p = s.validate();
    has(
        &p,
        "subnets[1].network_id",
        "network \"nope\" does not exist",
    );
    has(
        &p,
        "subnets[4].cidr",
        "198.51.100.128/25 overlaps 198.51.100.0/24 of subnets[2] on the same network",
    );
    // The instances' v6 addresses are in the larger prefix, so nothing else.
    assert!(p.iter().all(|p| !p.path.starts_with("subnets[3]")), "{p:?}");
}

#[test]
fn gateway_rules() {
    let mut s = seed();
    s.subnets[0].gateway_ip = Some("10.0.0.1".parse().unwrap());
    s.subnets[1].gateway_ip = Some("198.18.0.0".parse().unwrap());
    s.subnets[2].gateway_ip = Some("198.51.100.255".parse().unwrap());
    let p = s.validate();
    has(
        &p,
        "subnets[0].gateway_ip",
        "gateway 10.0.0.1 is not in 203.0.113.0/24",
    );
    has(
        &p,
        "subnets[1].gateway_ip",
        "gateway 198.18.0.0 is the network address of 198.18.0.0/24",
    );
    has(
        &p,
        "subnets[2].gateway_ip",
        "gateway 198.51.100.255 is the broadcast address of 198.51.100.0/24",
    );
}

#[test]
fn allocation_pool_rules() {
    let mut s = seed();
    let pools = &mut s.subnets[1].allocation_pools;
    pools[0].start = "198.18.0.1".parse().unwrap();
    pools.push(vswitch_config::AllocationPool {
        start: "198.18.0.100".parse().unwrap(),
        end: "198.18.1.5".parse().unwrap(),
    });
    pools.push(vswitch_config::AllocationPool {
        start: "198.18.0.90".parse().unwrap(),
        end: "198.18.0.80".parse().unwrap(),
    });
    let p = s.validate();
    has(
        &p,
        "subnets[1].allocation_pools[0]",
        "pool 198.18.0.1-198.18.0.254 contains the gateway 198.18.0.1; keep the gateway out of the pools",
    );
    has(
        &p,
        "subnets[1].allocation_pools[1].end",
        "pool end 198.18.1.5 is not in 198.18.0.0/24",
    );
    has(
        &p,
        "subnets[1].allocation_pools[2]",
        "start 198.18.0.90 is after end 198.18.0.80; swap them",
    );
    assert_eq!(p.len(), 3, "{}", common::list(&p));

    let mut s = seed();
    s.subnets[2]
        .allocation_pools
        .push(vswitch_config::AllocationPool {
            start: "198.51.100.200".parse().unwrap(),
            end: "198.51.100.210".parse().unwrap(),
        });
    only(
        &s.validate(),
        "subnets[2].allocation_pools[1]",
        "pool 198.51.100.200-198.51.100.210 overlaps allocation_pools[0] (198.51.100.2-198.51.100.254)",
    );
}

#[test]
fn ipv6_modes_and_duplicate_dns() {
    let mut s = seed();
    s.subnets[1].ipv6_ra_mode = Some("slaac".into());
    s.subnets[3].ipv6_address_mode = Some("dhcpv6-stateful".into());
    s.subnets[2]
        .dns_nameservers
        .push("8.8.4.4".parse().unwrap());
    let p = s.validate();
    has(
        &p,
        "subnets[1].ipv6_ra_mode",
        "ipv6_ra_mode applies to IPv6 subnets only; remove it",
    );
    has(
        &p,
        "subnets[3].ipv6_address_mode",
        "ipv6_ra_mode slaac with ipv6_address_mode dhcpv6-stateful is not a valid combination; set both to the same mode",
    );
    has(
        &p,
        "subnets[2].dns_nameservers[1]",
        "8.8.4.4 is listed twice",
    );
    let mut s = seed();
    s.subnets[3].ipv6_ra_mode = Some("radvd".into());
    has(
        &s.validate(),
        "subnets[3].ipv6_ra_mode",
        "unknown mode \"radvd\": expected slaac, dhcpv6-stateful or dhcpv6-stateless",
    );
}

#[test]
fn duplicate_ids() {
    let mut s = seed();
    s.networks.push(s.networks[1].clone());
    s.networks[3].segmentation_id = Some(4242);
    s.ports[2].id = "port-instance1".into();
    s.subnets[0].id.clear();
    let p = s.validate();
    has(
        &p,
        "networks[3].id",
        "duplicate id \"net-selfservice1\", also used by networks[1]",
    );
    has(
        &p,
        "ports[2].id",
        "duplicate id \"port-instance1\", also used by ports[0]",
    );
    has(&p, "subnets[0].id", "id must not be empty");
}

#[test]
fn stateful_and_stateless_groups_do_not_mix_on_a_port() {
    let mut s = seed();
    let mut g = s.security_groups[0].clone();
    g.id = "sg-stateless".into();
    g.stateful = false;
    s.security_groups.push(g);
    s.ports[1].security_groups.push("sg-stateless".into());
    only(
        &s.validate(),
        "ports[1].security_groups",
        "stateful and stateless security groups cannot be combined on one port",
    );
}
