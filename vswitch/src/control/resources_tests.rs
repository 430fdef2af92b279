//! Neutron resources over the desired state, without a data plane.
use super::*;
use serde_json::json;

fn seed() -> DesiredState {
    vswitch_config::parse_state_str(
        include_str!("../../../config/examples/seed-state.yaml"),
        false,
    )
    .unwrap()
}

fn ok(c: Result<Change, ApiError>) -> Change {
    let c = c.unwrap();
    assert!(c.state.validate().is_empty(), "{:?}", c.state.validate());
    c
}

#[test]
fn create_fills_in_what_the_neutron_server_does() {
    let s = seed();
    let c = ok(create(
        &s,
        Kind::Network,
        json!({"network": {"name": "blue"}}),
    ));
    let n = c.state.networks.last().unwrap();
    assert_eq!(n.network_type, vswitch_config::NetworkType::Vxlan);
    let used: Vec<u32> = s
        .networks
        .iter()
        .filter_map(|n| n.segmentation_id)
        .collect();
    assert!(!used.contains(&n.segmentation_id.unwrap()));
    assert_eq!(uuid::Uuid::parse_str(&n.id).map(|_| ()), Ok(()));
    let net = n.id.clone();
    let c = ok(create(
        &c.state,
        Kind::Subnet,
        json!({"subnet": {"id": "sb", "network_id": net, "cidr": "10.9.0.0/29"}}),
    ));
    let sb = c.state.subnet("sb").unwrap();
    assert_eq!(sb.ip_version, 4);
    assert_eq!(sb.gateway_ip, Some("10.9.0.1".parse().unwrap()));
    // Ports take .2, .3, ...: the gateway and used addresses are skipped.
    let c = ok(create(
        &c.state,
        Kind::Port,
        json!({"port": {"id": "a", "network_id": net}}),
    ));
    let c = ok(create(
        &c.state,
        Kind::Port,
        json!({"port": {"id": "b", "network_id": net}}),
    ));
    let ip = |st: &DesiredState, id: &str| st.port(id).unwrap().fixed_ips[0].ip_address.to_string();
    assert_eq!(ip(&c.state, "a"), "10.9.0.2");
    assert_eq!(ip(&c.state, "b"), "10.9.0.3");
    assert_ne!(
        c.state.port("a").unwrap().mac_address,
        c.state.port("b").unwrap().mac_address
    );
    // A /29 has .1 to .6: gateway + 5 ports, then the subnet is full.
    let mut st = c.state;
    for id in ["c", "d", "e"] {
        st = ok(create(
            &st,
            Kind::Port,
            json!({"port": {"id": id, "network_id": net}}),
        ))
        .state;
    }
    let e = create(
        &st,
        Kind::Port,
        json!({"port": {"id": "f", "network_id": net}}),
    )
    .unwrap_err();
    assert_eq!(e.status, 409);
    assert_eq!(e.problems[0].path, "port.fixed_ips");
}

#[test]
fn a_new_security_group_allows_everything_out() {
    let c = ok(create(
        &DesiredState::default(),
        Kind::SecurityGroup,
        json!({"security_group": {"name": "web"}}),
    ));
    let g = &c.state.security_groups[0];
    let rules: Vec<_> = c.state.rules_of(&g.id).collect();
    assert_eq!(rules.len(), 2);
    assert!(rules
        .iter()
        .all(|r| r.direction == vswitch_config::Direction::Egress));
    assert_eq!(
        c.response["security_group"]["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Deleting the group takes its rules.
    let d = delete(&c.state, Kind::SecurityGroup, &g.id).unwrap();
    assert!(d.state.security_group_rules.is_empty());
}

#[test]
fn body_problems_name_the_body_path() {
    let s = seed();
    let e = create(
        &s,
        Kind::Port,
        json!({"port": {"network_id": "net-selfservice1", "mac_address": "zz"}}),
    )
    .unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(e.problems[0].path, "port.mac_address", "{e:?}");
    let e = create(&s, Kind::Network, json!({"network": {"mtux": 1}})).unwrap_err();
    assert_eq!(e.problems[0].path, "network");
    assert!(e.problems[0].message.contains("mtux"));
    let e = create(&s, Kind::Network, json!({"networks": {}})).unwrap_err();
    assert_eq!(e.problems[0].path, "networks");
    let e = update(
        &s,
        Kind::Port,
        "port-instance1",
        json!({"port": {"id": "other"}}),
    )
    .unwrap_err();
    assert_eq!(e.problems[0].path, "port.id");
    let e = show(&s, Kind::Port, "nope").unwrap_err();
    assert_eq!(e.status, 404);
    let e = create(
        &s,
        Kind::Port,
        json!({"port": {"id": "port-instance1", "network_id": "net-selfservice1"}}),
    )
    .unwrap_err();
    assert_eq!(e.status, 409);
}

#[test]
fn state_problems_of_the_subject_are_named_by_its_singular() {
    let s = seed();
    let c = create(
        &s,
        Kind::Port,
        json!({"port": {"network_id": "nope", "mac_address": "fa:16:3e:00:00:99"}}),
    )
    .unwrap();
    let named = c.name_problems(c.state.validate());
    assert!(
        named.iter().any(|p| p.path == "port.network_id"),
        "{named:?}"
    );
}

#[test]
fn update_merges_fields_and_floating_ip_reassociation_drops_derived_fields() {
    let s = seed();
    let c = ok(update(
        &s,
        Kind::Port,
        "port-instance1",
        json!({"port": {"name": "renamed"}}),
    ));
    let p = c.state.port("port-instance1").unwrap();
    assert_eq!(p.name, "renamed");
    assert_eq!(p.fixed_ips, s.port("port-instance1").unwrap().fixed_ips);
    let fip = s.floatingips[0].clone();
    let mut s2 = s.clone();
    s2.floatingips[0].fixed_ip_address = Some("198.51.100.4".parse().unwrap());
    let c = update(
        &s2,
        Kind::FloatingIp,
        &fip.id,
        json!({"floatingip": {"port_id": "port-instance3"}}),
    )
    .unwrap();
    assert_eq!(
        c.state.floatingips[0].port_id.as_deref(),
        Some("port-instance3")
    );
    assert_eq!(c.state.floatingips[0].fixed_ip_address, None);
    let e = update(
        &s,
        Kind::SecurityGroupRule,
        &s.security_group_rules[0].id,
        json!({"security_group_rule": {"port_range_min": 1}}),
    )
    .unwrap_err();
    assert_eq!(e.status, 400);
}

#[test]
fn router_interfaces_and_gateway() {
    let mut s = seed();
    // A fresh subnet on a fresh network, attached to router2 (distributed, gateway on network1).
    s = ok(create(&s, Kind::Network, json!({"network": {"id": "n9"}}))).state;
    s = ok(create(
        &s,
        Kind::Subnet,
        json!({"subnet": {"id": "s9", "network_id": "n9", "cidr": "10.99.0.0/24"}}),
    ))
    .state;
    let r = "78d2f628-137c-4f26-a257-25fc20f203c1";
    let c = ok(add_router_interface(&s, r, json!({"subnet_id": "s9"})));
    let iface: Vec<_> = c
        .state
        .ports
        .iter()
        .filter(|p| p.network_id == "n9")
        .collect();
    assert_eq!(iface.len(), 2, "interface and SNAT port");
    let i = iface
        .iter()
        .find(|p| p.device_owner == OWNER_ROUTER_INTERFACE_DISTRIBUTED)
        .unwrap();
    assert_eq!(i.fixed_ips[0].ip_address.to_string(), "10.99.0.1");
    let snat = iface.iter().find(|p| p.device_owner == OWNER_SNAT).unwrap();
    assert_eq!(snat.binding_host_id.as_deref(), Some("network1"));
    assert_eq!(c.response["port_id"], json!(i.id));
    // Twice: the gateway address is taken.
    let again = add_router_interface(&c.state, r, json!({"subnet_id": "s9"})).unwrap();
    assert!(!again.state.validate().is_empty());
    let e =
        add_router_interface(&c.state, r, json!({"subnet_id": "s9", "port_id": "x"})).unwrap_err();
    assert_eq!(e.status, 400);
    let back = ok(remove_router_interface(
        &c.state,
        r,
        json!({"subnet_id": "s9"}),
    ));
    assert!(back.state.ports.iter().all(|p| p.network_id != "n9"));
    assert_eq!(back.state, s);
    // Clearing the gateway while a floating IP needs it makes an invalid state (refused).
    let c = update(
        &s,
        Kind::Router,
        r,
        json!({"router": {"external_gateway_info": null}}),
    )
    .unwrap();
    assert!(c
        .state
        .validate()
        .iter()
        .any(|p| p.path == "floatingips[0].router_id"));
    // Without floating IPs: the gateway and SNAT ports go; setting it again allocates.
    s.floatingips.clear();
    let c = ok(update(
        &s,
        Kind::Router,
        r,
        json!({"router": {"external_gateway_info": null}}),
    ));
    assert!(!c
        .state
        .ports
        .iter()
        .any(|p| p.device_id == r
            && (p.device_owner == OWNER_GATEWAY || p.device_owner == OWNER_SNAT)));
    let ext = s.routers[0]
        .external_gateway_info
        .as_ref()
        .unwrap()
        .network_id
        .clone();
    let c = ok(update(
        &c.state,
        Kind::Router,
        r,
        json!({"router": {"external_gateway_info": {"network_id": ext}}}),
    ));
    let gw = c
        .state
        .ports
        .iter()
        .find(|p| p.device_id == r && p.device_owner == OWNER_GATEWAY)
        .unwrap();
    let info = c.state.routers[0].external_gateway_info.as_ref().unwrap();
    assert_eq!(info.external_fixed_ips, gw.fixed_ips);
    assert_eq!(gw.fixed_ips.len(), 1);
}

#[test]
fn floating_ip_gets_a_free_address() {
    let s = seed();
    let ext = s.floatingips[0].floating_network_id.clone();
    let c = create(
        &s,
        Kind::FloatingIp,
        json!({"floatingip": {"floating_network_id": ext}}),
    )
    .unwrap();
    let f = c.state.floatingips.last().unwrap();
    let used: Vec<_> = s
        .ports
        .iter()
        .flat_map(|p| p.fixed_ips.iter().map(|f| f.ip_address))
        .collect();
    assert!(!used.contains(&IpAddr::V4(f.floating_ip_address)));
    assert!(s
        .floatingips
        .iter()
        .all(|g| g.floating_ip_address != f.floating_ip_address));
}

#[test]
fn list_and_show_use_neutron_envelopes() {
    let s = seed();
    let l = list(&s, Kind::SecurityGroup);
    assert_eq!(
        l["security_groups"].as_array().unwrap().len(),
        s.security_groups.len()
    );
    assert!(l["security_groups"][0]["security_group_rules"].is_array());
    let p = show(&s, Kind::Port, "port-instance1").unwrap();
    assert_eq!(p["port"]["binding:host_id"], json!("compute1"));
    for k in KINDS {
        assert_eq!(Kind::from_collection(k.collection()), Some(k));
    }
}

#[test]
fn neutron_bookkeeping_fields_are_accepted_and_dropped_but_unknown_ones_refused() {
    let s = seed();
    let c = ok(create(
        &s,
        Kind::Network,
        json!({"network": {"id": "nb", "name": "from-openstack", "tenant_id": "t1", "project_id": "t1",
            "status": "ACTIVE", "tags": ["a"], "description": "x", "revision_number": 3,
            "availability_zone_hints": [], "subnets": []}}),
    ));
    assert_eq!(c.state.network("nb").unwrap().name, "from-openstack");
    let e = create(
        &s,
        Kind::Network,
        json!({"network": {"id": "nc", "host_routes": []}}),
    )
    .unwrap_err();
    assert_eq!(e.problems[0].path, "network");
    // A security group keeps its description.
    let c = ok(create(
        &s,
        Kind::SecurityGroup,
        json!({"security_group": {"id": "g", "description": "web", "project_id": "t1"}}),
    ));
    assert_eq!(c.state.security_group("g").unwrap().description, "web");
}
