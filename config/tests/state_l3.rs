//! Desired-state rules for routers, floating IPs, security group rules and
//! the hosts list.

mod common;

use common::{has, only, seed};
use vswitch_config::{
    EtherType, FixedIp, FloatingIp, HostEntry, Protocol, Route, SecurityGroupRule,
};

#[test]
fn router_gateway_rules() {
    let mut s = seed();
    s.networks[0].router_external = false;
    let gw = s.routers[0].external_gateway_info.as_mut().unwrap();
    gw.external_fixed_ips.push(FixedIp {
        subnet_id: "subnet-selfservice1-v4".into(),
        ip_address: "198.18.0.77".parse().unwrap(),
    });
    let p = s.validate();
    has(
        &p,
        "routers[0].external_gateway_info.network_id",
        "network provider1 is not router:external; a router gateway needs an external network",
    );
    has(
        &p,
        "routers[0].external_gateway_info.external_fixed_ips[1].subnet_id",
        "subnet selfservice1-v4 is on network selfservice1, not on this port's network provider1",
    );
    has(
        &p,
        "floatingips[0].floating_network_id",
        "network provider1 is not router:external; floating IPs come from an external network",
    );

    let mut s = seed();
    s.routers[0]
        .external_gateway_info
        .as_mut()
        .unwrap()
        .network_id = "nope".into();
    has(
        &s.validate(),
        "routers[0].external_gateway_info.network_id",
        "network \"nope\" does not exist",
    );
}

#[test]
fn route_rules() {
    let mut s = seed();
    s.routers[0].routes = vec![
        Route {
            destination: "10.1.0.0/16".parse().unwrap(),
            nexthop: "198.51.100.20".parse().unwrap(),
        },
        Route {
            destination: "10.2.3.4/16".parse().unwrap(),
            nexthop: "fd00:198:51:100::20".parse().unwrap(),
        },
        Route {
            destination: "10.3.0.0/16".parse().unwrap(),
            nexthop: "10.9.9.9".parse().unwrap(),
        },
    ];
    let p = s.validate();
    has(
        &p,
        "routers[0].routes[1].destination",
        "10.2.3.4/16 has host bits set; use the network address 10.2.0.0/16",
    );
    has(
        &p,
        "routers[0].routes[1].nexthop",
        "nexthop fd00:198:51:100::20 is IPv6 but destination 10.2.3.4/16 is IPv4",
    );
    has(
        &p,
        "routers[0].routes[2].nexthop",
        "nexthop 10.9.9.9 is on none of the router's interface subnets; add an interface on its subnet",
    );
    assert_eq!(p.len(), 3);
}

#[test]
fn a_host_routing_for_a_distributed_router_needs_a_dvr_mac() {
    let mut host = common::compute1();
    let mut s = seed();
    assert!(vswitch_config::validate_for_host(&host, &s).is_empty());
    host.dvr_mac = None;
    // Still listed in state.hosts: fine.
    assert!(vswitch_config::validate_for_host(&host, &s).is_empty());
    for h in &mut s.hosts {
        h.dvr_mac = None;
    }
    only(
        &vswitch_config::validate_for_host(&host, &s),
        "host.dvr_mac",
        "missing: state.routers[0] (78d2f628-137c-4f26-a257-25fc20f203c1) is distributed, and routed frames leave each host with that host's unique DVR MAC (set host.dvr_mac or state.hosts[].dvr_mac)",
    );
}

fn fip(id: &str, addr: &str, port: Option<&str>, fixed: Option<&str>) -> FloatingIp {
    FloatingIp {
        id: id.into(),
        floating_ip_address: addr.parse().unwrap(),
        floating_network_id: "4bfa3075-b4b2-4f7d-b88e-df1113942d43".into(),
        port_id: port.map(Into::into),
        fixed_ip_address: fixed.map(|f| f.parse().unwrap()),
        router_id: None,
    }
}

#[test]
fn floating_ip_rules() {
    let mut s = seed();
    s.floatingips.extend([
        // 1: same floating address as floatingips[0]
        fip("f1", "203.0.113.17", None, None),
        // 2: outside provider1's subnets
        fip("f2", "198.18.0.40", None, None),
        // 3: missing port
        fip("f3", "203.0.113.30", Some("nope"), None),
        // 4: not an address of the port
        fip(
            "f4",
            "203.0.113.31",
            Some("port-instance2"),
            Some("198.18.0.6"),
        ),
        // 5: fixed address without a port
        fip("f5", "203.0.113.32", None, Some("198.18.0.5")),
        // 6: the same fixed IP as floatingips[0], found without fixed_ip_address
        fip("f6", "203.0.113.33", Some("port-instance1"), None),
    ]);
    s.floatingips[1].router_id = Some("router9".into());
    let p = s.validate();
    has(
        &p,
        "floatingips[1].floating_ip_address",
        "203.0.113.17 is already used by floatingips[0]",
    );
    has(
        &p,
        "floatingips[1].router_id",
        "router \"router9\" does not exist",
    );
    has(
        &p,
        "floatingips[2].floating_ip_address",
        "198.18.0.40 is not in any subnet of network provider1; its IPv4 subnets are 203.0.113.0/24",
    );
    has(&p, "floatingips[3].port_id", "port \"nope\" does not exist");
    has(
        &p,
        "floatingips[4].fixed_ip_address",
        "198.18.0.6 is not a fixed IP of port instance2; its IPv4 addresses are: 198.18.0.5",
    );
    has(
        &p,
        "floatingips[5].fixed_ip_address",
        "fixed_ip_address 198.18.0.5 needs a port_id to say whose address it is",
    );
    has(
        &p,
        "floatingips[6].port_id",
        "198.51.100.4 of port instance1 already has floating IP floatingips[0]; a fixed IP maps to one floating IP",
    );
    assert_eq!(p.len(), 7, "{}", common::list(&p));
}

#[test]
fn floating_ip_needs_a_router_between_its_port_and_its_network() {
    // Its router is named, but has no gateway on the floating network.
    let mut s = seed();
    s.routers[0].external_gateway_info = None;
    s.floatingips[0].router_id = Some(s.routers[0].id.clone());
    only(
        &s.validate(),
        "floatingips[0].router_id",
        "router router2 does not connect network selfservice2 of port instance1 to external network provider1: it needs an interface on the first and its gateway on the second",
    );
    // None named, and none to find.
    s.floatingips[0].router_id = None;
    only(
        &s.validate(),
        "floatingips[0].port_id",
        "no router connects network selfservice2 of port instance1 to external network provider1: it needs an interface on the first and its gateway on the second",
    );
}

#[test]
fn floating_ip_on_a_port_with_several_ipv4_addresses() {
    let mut s = seed();
    s.ports[1].fixed_ips.push(FixedIp {
        subnet_id: "subnet-selfservice1-v4".into(),
        ip_address: "198.18.0.6".parse().unwrap(),
    });
    s.floatingips
        .push(fip("f1", "203.0.113.40", Some("port-instance2"), None));
    only(
        &s.validate(),
        "floatingips[1].fixed_ip_address",
        "port instance2 has several IPv4 addresses (198.18.0.5, 198.18.0.6); set fixed_ip_address to the one to map",
    );
}

fn rule(id: &str, ethertype: EtherType, protocol: Option<Protocol>) -> SecurityGroupRule {
    SecurityGroupRule {
        id: id.into(),
        security_group_id: "sg-default".into(),
        direction: vswitch_config::Direction::Ingress,
        ethertype,
        protocol,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: None,
        description: String::new(),
    }
}

#[test]
fn security_group_rule_rules() {
    let mut s = seed();
    let base = s.security_group_rules.len();
    let mut r = vec![
        rule("r0", EtherType::Ipv6, Some(Protocol::Icmp)),
        rule("r1", EtherType::Ipv4, Some(Protocol::Icmpv6)),
        rule("r2", EtherType::Ipv4, Some(Protocol::Tcp)),
        rule("r3", EtherType::Ipv4, Some(Protocol::Number(47))),
        rule("r4", EtherType::Ipv4, Some(Protocol::Icmp)),
        rule("r5", EtherType::Ipv6, None),
        rule("r6", EtherType::Ipv4, Some(Protocol::Udp)),
    ];
    r[2].port_range_min = Some(443);
    r[2].port_range_max = Some(80);
    r[3].port_range_min = Some(1);
    r[4].port_range_min = Some(300);
    r[5].remote_ip_prefix = Some("10.0.0.0/8".parse().unwrap());
    r[5].remote_group_id = Some("sg-nope".into());
    r[5].security_group_id = "sg-gone".into();
    r[6].port_range_max = Some(53);
    s.security_group_rules.extend(r);
    let p = s.validate();
    let at = |i: usize, f: &str| format!("security_group_rules[{}].{f}", base + i);
    has(
        &p,
        &at(0, "protocol"),
        "icmp is IPv4-only; use icmpv6 (or ipv6-icmp) with ethertype IPv6",
    );
    has(
        &p,
        &at(1, "protocol"),
        "icmpv6 is IPv6-only; use icmp with ethertype IPv4",
    );
    has(
        &p,
        &at(2, "port_range_min"),
        "port_range_min 443 is above port_range_max 80",
    );
    has(
        &p,
        &at(3, "port_range_min"),
        "protocol 47 cannot have a port range; port ranges apply to tcp, udp and sctp (ports) and icmp/icmpv6 (type and code)",
    );
    has(
        &p,
        &at(4, "port_range_min"),
        "for icmp, port_range_min is the ICMP type; 300 is out of range 0..=255",
    );
    has(
        &p,
        &at(5, "security_group_id"),
        "security group \"sg-gone\" does not exist",
    );
    has(
        &p,
        &at(5, "remote_ip_prefix"),
        "remote_ip_prefix 10.0.0.0/8 is IPv4 but ethertype is IPv6",
    );
    has(
        &p,
        &at(5, "remote_group_id"),
        "security group \"sg-nope\" does not exist",
    );
    has(
        &p,
        &at(5, "remote_group_id"),
        "remote_group_id and remote_ip_prefix cannot both be set; split them into two rules",
    );
    has(
        &p,
        &at(6, "port_range_min"),
        "udp port ranges need both port_range_min and port_range_max (equal for one port)",
    );
    assert_eq!(p.len(), 10, "{}", common::list(&p));
}

#[test]
fn hosts_list_rules() {
    let mut s = seed();
    s.hosts.push(HostEntry {
        host: "compute1".into(),
        vtep_ip: "10.0.0.12".parse().unwrap(),
        dvr_mac: Some("fa:16:3f:01:00:21".parse().unwrap()),
    });
    s.hosts.push(HostEntry {
        host: "compute3".into(),
        vtep_ip: "224.0.0.5".parse().unwrap(),
        dvr_mac: Some("ff:ff:ff:ff:ff:ff".parse().unwrap()),
    });
    let p = s.validate();
    has(
        &p,
        "hosts[3].host",
        "host compute1 is listed twice, also at hosts[0]",
    );
    has(
        &p,
        "hosts[3].vtep_ip",
        "VTEP 10.0.0.12 is already used by hosts[1]",
    );
    has(
        &p,
        "hosts[3].dvr_mac",
        "DVR MAC fa:16:3f:01:00:21 is already used by hosts[2]; each host needs its own",
    );
    has(
        &p,
        "hosts[4].vtep_ip",
        "224.0.0.5 cannot be a tunnel endpoint; use the host's underlay unicast address",
    );
    has(
        &p,
        "hosts[4].dvr_mac",
        "MAC ff:ff:ff:ff:ff:ff is a multicast address (lowest bit of the first octet set); use a unicast MAC such as fa:16:3e:xx:xx:xx",
    );
    assert_eq!(p.len(), 5, "{}", common::list(&p));
}

#[test]
fn helpers() {
    let s = seed();
    assert_eq!(s.ports_on_host("compute1").count(), 2);
    assert_eq!(s.ports_on_host("network1").count(), 3);
    assert_eq!(s.rules_of("sg-default").count(), 6);
    assert_eq!(s.ports_on_network("net-selfservice2").count(), 5);
    assert!(
        s.router("78d2f628-137c-4f26-a257-25fc20f203c1")
            .unwrap()
            .distributed
    );
    assert_eq!(s.security_group("sg-default").unwrap().name, "default");
    assert_eq!(s.subnet("subnet-selfservice2-v6").unwrap().ip_version, 6);
    assert!(s.network("nope").is_none());
    let net = s.network("net-selfservice2").unwrap();
    assert!(s.port("port-instance1").unwrap().port_security(net));
    assert_eq!(Protocol::Tcp.number(), Some(6));
}
