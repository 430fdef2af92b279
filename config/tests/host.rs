//! Host config rules and the host-against-state cross checks.

mod common;

use common::{compute1, has, only, seed};
use vswitch_config::{
    load_host, parse_host_str, validate_for_host, ConfigError, IdleConfig, IdleMode, PortConfig,
    PortKind, Role,
};

const MINIMAL: &str = r#"
role = "dvr"
host_id = "compute1"
cores = [1]
[[ports]]
name = "vm1"
devargs = "net_af_packet0,iface=sw-vm1"
kind = "instance"
iface_id = "port-instance1"
"#;

fn port(name: &str, kind: PortKind, iface_id: Option<&str>) -> PortConfig {
    PortConfig {
        name: name.into(),
        devargs: format!("net_af_packet9,iface={name}"),
        kind,
        iface_id: iface_id.map(Into::into),
        rx_queues: 1,
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let h = parse_host_str(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.role, Role::Dvr);
    assert_eq!(h.main_core, 0);
    assert_eq!(
        (h.mbufs, h.mbuf_cache, h.rx_desc, h.tx_desc),
        (8191, 256, 1024, 1024)
    );
    assert_eq!(h.idle, IdleConfig::default());
    assert_eq!(h.idle.mode, IdleMode::Backoff);
    assert_eq!((h.idle.max_sleep_us, h.idle.spin_polls), (200, 64));
    assert_eq!(h.ports[0].rx_queues, 1);
    assert!(h.eal_args.is_empty() && h.bridge_mappings.is_empty());
    assert_eq!(h.local_vtep_ip, None);
}

#[test]
fn bad_role_is_a_parse_error_at_role() {
    let text = MINIMAL.replace("\"dvr\"", "\"snat\"");
    match parse_host_str(&text) {
        Err(ConfigError::Parse { path, message, .. }) => {
            assert_eq!(path, "role");
            assert!(
                message.contains("unknown variant `snat`, expected `dvr` or `dvr_snat`"),
                "{message}"
            );
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn unknown_field_and_bad_mac_are_parse_errors_with_paths() {
    let text = format!("{MINIMAL}queues = 2\n");
    match parse_host_str(&text) {
        Err(ConfigError::Parse { path, message, .. }) => {
            assert_eq!(path, "ports[0]");
            assert!(message.contains("unknown field `queues`"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let text = MINIMAL.replace("cores = [1]", "cores = [1]\ndvr_mac = \"fa:16:3f\"");
    match parse_host_str(&text) {
        Err(ConfigError::Parse { path, message, .. }) => {
            assert_eq!(path, "dvr_mac");
            assert!(message.contains("invalid MAC \"fa:16:3f\""), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn eal_args_that_we_generate_are_refused() {
    let mut h = compute1();
    h.eal_args = [
        "--no-huge",
        "-l",
        "0-3",
        "--vdev",
        "net_tap0",
        "--lcores=0@0",
        "-c0x3",
    ]
    .map(String::from)
    .to_vec();
    let p = h.validate();
    has(
        &p,
        "eal_args[3]",
        "--vdev must not be given in eal_args: it is generated from ports[].devargs; remove it and set ports[].devargs instead",
    );
    has(
        &p,
        "eal_args[1]",
        "-l must not be given in eal_args: it is generated from main_core and cores; remove it and set main_core and cores instead",
    );
    has(
        &p,
        "eal_args[5]",
        "--lcores must not be given in eal_args: it is generated from main_core and cores; remove it and set main_core and cores instead",
    );
    has(
        &p,
        "eal_args[6]",
        "-c must not be given in eal_args: it is generated from main_core and cores; remove it and set main_core and cores instead",
    );
    assert_eq!(p.len(), 4, "{}", common::list(&p));
}

#[test]
fn core_rules() {
    let mut h = compute1();
    h.main_core = 2;
    h.cores = vec![1, 2, 1, 4096];
    let p = h.validate();
    has(
        &p,
        "cores[1]",
        "lcore 2 is the main_core; workers need cores of their own",
    );
    has(&p, "cores[2]", "lcore 1 is listed twice, also at cores[0]");
    has(&p, "cores[3]", "lcore 4096 is out of range 0..=1023");
    assert_eq!(p.len(), 3);
    h.cores.clear();
    only(
        &h.validate(),
        "cores",
        "at least one worker core is needed, e.g. cores = [1]",
    );
}

#[test]
fn size_rules() {
    let mut h = compute1();
    h.mbufs = 100;
    h.mbuf_cache = 513;
    h.rx_desc = 1000;
    h.tx_desc = 8192;
    h.idle.max_sleep_us = 0;
    let p = h.validate();
    has(&p, "mbufs", "100 is out of range 1024..=1048575");
    has(&p, "mbuf_cache", "513 is above DPDK's limit of 512");
    has(
        &p,
        "rx_desc",
        "1000 must be a power of two in 64..=4096, e.g. 1024",
    );
    has(
        &p,
        "tx_desc",
        "8192 must be a power of two in 64..=4096, e.g. 1024",
    );
    has(&p, "idle.max_sleep_us", "0 is out of range 1..=100000");
    assert_eq!(p.len(), 5);
}

#[test]
fn port_rules() {
    let mut h = compute1();
    h.ports.push(port("bad name!", PortKind::Overlay, None));
    h.ports.push(port("vm1", PortKind::Instance, None));
    h.ports
        .push(port("uplink2", PortKind::Provider, Some("port-x")));
    let mut dup = port("vm4", PortKind::Instance, Some("port-instance1"));
    dup.devargs = h.ports[0].devargs.clone();
    dup.rx_queues = 0;
    h.ports.push(dup);
    let p = h.validate();
    has(
        &p,
        "ports[3].name",
        "port name \"bad name!\" must be 1 to 31 characters of A-Z, a-z, 0-9, '_', '.', '-'",
    );
    has(
        &p,
        "ports[4].name",
        "port name vm1 is already used by ports[0]",
    );
    has(
        &p,
        "ports[4].iface_id",
        "an instance port needs iface_id, the id of the Neutron port it carries",
    );
    has(
        &p,
        "ports[5].iface_id",
        "only instance ports carry a Neutron port; remove iface_id from this provider port",
    );
    has(
        &p,
        "ports[5]",
        "provider port uplink2 is mapped by no physical network; add it to bridge_mappings, e.g. provider = \"uplink2\"",
    );
    has(
        &p,
        "ports[6].devargs",
        "devargs \"net_af_packet0,iface=c1-vm1\" are already used by ports[0]",
    );
    has(
        &p,
        "ports[6].iface_id",
        "iface_id port-instance1 is already carried by ports[0]",
    );
    has(&p, "ports[6].rx_queues", "0 is out of range 1..=64");
    has(
        &p,
        "ports",
        "2 ports have kind = \"overlay\"; VXLAN leaves by exactly one",
    );
    assert_eq!(p.len(), 9, "{}", common::list(&p));

    let mut h = compute1();
    h.ports.clear();
    h.bridge_mappings.clear();
    h.local_vtep_ip = None;
    only(
        &h.validate(),
        "ports",
        "at least one [[ports]] entry is needed; a switch without ports forwards nothing",
    );
}

#[test]
fn bridge_mapping_rules() {
    let mut h = compute1();
    h.bridge_mappings.insert("physnet2".into(), "nope".into());
    h.bridge_mappings.insert("physnet3".into(), "vm1".into());
    h.bridge_mappings.insert("physnet4".into(), "uplink".into());
    let p = h.validate();
    has(
        &p,
        "bridge_mappings.physnet2",
        "port \"nope\" does not exist; name a [[ports]] entry with kind = \"provider\"",
    );
    has(
        &p,
        "bridge_mappings.physnet3",
        "port vm1 has kind = \"instance\"; physical networks map to kind = \"provider\" ports",
    );
    has(
        &p,
        "bridge_mappings.provider",
        "port uplink already carries physical network physnet4; each physical network needs its own provider port",
    );
    assert_eq!(p.len(), 3, "{}", common::list(&p));
}

#[test]
fn identity_rules() {
    let mut h = compute1();
    h.local_vtep_ip = None;
    h.dvr_mac = Some("01:80:c2:00:00:00".parse().unwrap());
    h.host_id = " ".into();
    let p = h.validate();
    has(
        &p,
        "local_vtep_ip",
        "an overlay port needs local_vtep_ip, the source address of this host's VXLAN tunnels",
    );
    has(
        &p,
        "dvr_mac",
        "MAC 01:80:c2:00:00:00 is a multicast address (lowest bit of the first octet set); use a unicast MAC such as fa:16:3e:xx:xx:xx",
    );
    has(
        &p,
        "host_id",
        "host_id must not be empty; use the name Neutron has for this host in binding:host_id",
    );
    assert_eq!(p.len(), 3);
}

#[test]
fn load_host_reports_every_problem_with_the_file_name() {
    let dir = std::env::temp_dir().join(format!("vswitch-config-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("h.toml");
    let text = MINIMAL.replace(
        "cores = [1]",
        "cores = [0]\neal_args = [\"--vdev=net_tap0\"]\nrx_desc = 100",
    );
    std::fs::write(&file, text).unwrap();
    let err = load_host(&file).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: 3 problems:\n  cores[0]: lcore 0 is the main_core; workers need cores of their own\n  \
             eal_args[0]: --vdev must not be given in eal_args: it is generated from ports[].devargs; remove it and set ports[].devargs instead\n  \
             rx_desc: 100 must be a power of two in 64..=4096, e.g. 1024",
            file.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn iface_id_bound_to_another_host() {
    let mut h = compute1();
    h.ports[0].iface_id = Some("port-instance2".into());
    only(
        &validate_for_host(&h, &seed()),
        "host.ports[0].iface_id",
        "neutron port port-instance2 is bound to host compute2, not compute1",
    );
}

#[test]
fn iface_id_carried_twice_but_missing_from_state_is_unbound() {
    let mut h = compute1();
    h.ports
        .push(port("vm9", PortKind::Instance, Some("port-gone")));
    h.ports
        .push(port("vm1b", PortKind::Instance, Some("port-instance1")));
    let p = validate_for_host(&h, &seed());
    // port-gone is not in the state: the vNIC is unbound (its traffic dropped), not an error.
    has(
        &p,
        "host.ports[4].iface_id",
        "neutron port port-instance1 is already carried by host.ports[0]",
    );
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn unbound_neutron_port_is_fine_and_own_entry_must_agree() {
    let mut s = seed();
    s.ports[0].binding_host_id = None;
    assert_eq!(validate_for_host(&compute1(), &s), vec![]);

    let mut h = compute1();
    h.local_vtep_ip = Some("10.0.0.99".parse().unwrap());
    h.dvr_mac = Some("fa:16:3f:01:00:99".parse().unwrap());
    let p = validate_for_host(&h, &seed());
    has(
        &p,
        "state.hosts[0].vtep_ip",
        "10.0.0.11 differs from host.local_vtep_ip 10.0.0.99; other hosts would tunnel to the wrong address",
    );
    has(
        &p,
        "state.hosts[0].dvr_mac",
        "fa:16:3f:01:00:11 differs from host.dvr_mac fa:16:3f:01:00:99",
    );
    assert_eq!(p.len(), 2);
}

#[test]
fn host_config_round_trips_through_toml() {
    let h = compute1();
    let text = toml::to_string(&h).unwrap();
    assert_eq!(parse_host_str(&text).unwrap(), h);
    assert_eq!(h.provider_port("provider").unwrap().name, "uplink");
    assert_eq!(h.instance_port("port-instance1").unwrap().name, "vm1");
}

#[test]
fn overlay_section_parses_with_defaults_and_static_neighbors() {
    let text = format!(
        "{MINIMAL}\n[overlay]\ngateway = \"10.0.0.1\"\nudp_checksum = true\n[overlay.neighbors]\n\"10.0.0.12\" = \"02:00:00:00:00:12\"\n"
    )
    .replace("host_id = \"compute1\"", "host_id = \"compute1\"\nlocal_vtep_ip = \"10.0.0.11\"");
    let h = parse_host_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let o = &h.overlay;
    assert_eq!(
        (o.prefix_len, o.mtu, o.ttl, o.df, o.udp_port, o.learn),
        (24, 1500, 64, true, 4789, false)
    );
    assert!(o.udp_checksum);
    assert_eq!(o.gateway, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(
        o.neighbors
            .get(&"10.0.0.12".parse().unwrap())
            .map(|m| m.to_string()),
        Some("02:00:00:00:00:12".to_owned())
    );
    assert_eq!(
        parse_host_str(MINIMAL).unwrap().overlay,
        vswitch_config::OverlayConfig::default()
    );
}

#[test]
fn overlay_rules_report_every_problem() {
    let mut h = parse_host_str(MINIMAL).unwrap();
    h.local_vtep_ip = Some("10.0.0.11".parse().unwrap());
    h.overlay.prefix_len = 24;
    h.overlay.gateway = Some("10.1.0.1".parse().unwrap());
    h.overlay.mtu = 100;
    h.overlay.ttl = 0;
    h.overlay.udp_port = 0;
    h.overlay.neighbors.insert(
        "10.0.0.12".parse().unwrap(),
        "01:00:5e:00:00:01".parse().unwrap(),
    );
    h.ports.push(port("ov1", PortKind::Overlay, None));
    h.ports.push(port("ov2", PortKind::Overlay, None));
    let p = h.validate();
    has(
        &p,
        "overlay.gateway",
        "10.1.0.1 is not in the underlay subnet of local_vtep_ip 10.0.0.11/24",
    );
    has(&p, "overlay.mtu", "100 is out of range 576..=9216");
    has(
        &p,
        "overlay.ttl",
        "a TTL of 0 would never leave this host; use 1..=255 (64 is usual)",
    );
    has(
        &p,
        "overlay.udp_port",
        "port 0 is not a VXLAN port; the IANA port is 4789",
    );
    has(
        &p,
        "ports",
        "2 ports have kind = \"overlay\"; VXLAN leaves by exactly one",
    );
    assert!(
        p.iter().any(|x| x.path == "overlay.neighbors.10.0.0.12"),
        "{p:?}"
    );
}

#[test]
fn conntrack_rules() {
    let mut h = compute1();
    assert_eq!(h.conntrack.capacity, 262_144);
    assert!(h.conntrack.evict_unestablished);
    assert_eq!(h.conntrack.timeouts.tcp_established, 432_000);
    h.conntrack.capacity = 100;
    h.conntrack.liberal_ports = vec!["uplink".into(), "vm9".into(), "vm1".into()];
    h.conntrack.timeouts.udp = 0;
    let p = h.validate();
    has(
        &p,
        "conntrack.capacity",
        "100 is out of range 1024..=67108864",
    );
    has(
        &p,
        "conntrack.liberal_ports[0]",
        "port \"uplink\" is not an instance port; zones belong to instance ports",
    );
    has(
        &p,
        "conntrack.liberal_ports[1]",
        "no port is called \"vm9\"",
    );
    has(
        &p,
        "conntrack.timeouts.udp",
        "0 s is out of range 1..=1000000",
    );
    assert_eq!(p.len(), 4);
    // The SNAT port range: Linux's masquerade range unless set, and a real range.
    let mut h = compute1();
    assert_eq!(h.conntrack.snat_ports, [1024, 65535]);
    h.conntrack.snat_ports = [3000, 2000];
    only(
        &h.validate(),
        "conntrack.snat_ports",
        "[3000, 2000] is not a range of ports: 1 <= low <= high",
    );
    // One core's table holds at most 2^23 connections.
    let mut h = compute1();
    h.conntrack.capacity = 16_777_216;
    h.cores = vec![1];
    only(
        &h.validate(),
        "conntrack.capacity",
        "16777216 connections over 1 worker core(s) is 16777216 per core; one core's table holds at most 8388608",
    );
    h.cores = vec![1, 2];
    assert!(h.validate().is_empty());
    // Parsed from TOML, unknown keys refused like everywhere else.
    let t = format!(
        "{MINIMAL}\n[conntrack]\ncapacity = 4096\n[conntrack.timeouts]\ntcp_syn_sent = 5\n"
    );
    let h = parse_host_str(&t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            h.conntrack.capacity,
            h.conntrack.timeouts.tcp_syn_sent,
            h.conntrack.timeouts.udp
        ),
        (4096, 5, 30)
    );
    let bad = format!("{MINIMAL}\n[conntrack]\nsize = 4096\n");
    assert!(parse_host_str(&bad).is_err());
}

#[test]
fn lcore_cpus_map_workers_onto_cpus() {
    let t = format!("{MINIMAL}\n[lcore_cpus]\n1 = 0\n");
    let h = parse_host_str(&t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((h.lcore_cpu(1), h.lcore_cpu(0)), (0, 0));
    assert!(h.validate().is_empty());
    let mut h = h;
    h.lcore_cpus.insert("7".into(), 1);
    h.lcore_cpus.insert("x".into(), 1);
    let p = h.validate();
    has(
        &p,
        "lcore_cpus.7",
        "lcore 7 is neither the main_core nor one of cores",
    );
    has(&p, "lcore_cpus.x", "\"x\" is not an lcore number");
    assert_eq!(p.len(), 2);
}

#[test]
fn control_tcp_listener_needs_a_token_file() {
    let mut h = compute1();
    h.control.listen = Some("127.0.0.1:9696".parse().unwrap());
    let p = h.validate();
    has(
        &p,
        "control.token_file",
        "required when control.listen is set: the TCP API only serves clients with a bearer token",
    );
    h.control.token_file = Some("/etc/vswitchd/token".into());
    assert!(h.validate().is_empty());
    assert_eq!(
        h.control_socket(),
        std::path::PathBuf::from("/run/vswitchd/compute1.sock")
    );
}
