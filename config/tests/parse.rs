//! Parse errors name their path; semantic problems are all reported at once;
//! no input makes the parser panic.

mod common;

use proptest::prelude::*;
use vswitch_config::{load_state, parse_state_str, ConfigError, Protocol};

fn parse_error(text: &str, json: bool) -> (String, String) {
    match parse_state_str(text, json) {
        Err(ConfigError::Parse {
            file,
            path,
            message,
        }) => {
            assert_eq!(file, "<input>");
            (path, message)
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

const NET: &str = "  - id: n1\n    provider:network_type: vxlan\n    provider:segmentation_id: 7\n";

#[test]
fn unknown_field_names_its_path() {
    let (path, message) = parse_error(&format!("networks:\n{NET}    mtux: 1400\n"), false);
    assert_eq!(path, "networks[0]");
    assert!(
        message.starts_with("unknown field `mtux`, expected one of"),
        "{message}"
    );
    let (path, message) = parse_error("{\"networks\": [], \"routerz\": []}", true);
    assert_eq!(path, "");
    assert!(message.starts_with("unknown field `routerz`"), "{message}");
}

#[test]
fn bad_mac_names_its_path() {
    let text = format!(
        "networks:\n{NET}ports:\n  - {{id: p0, network_id: n1, mac_address: 'fa:16:3e:00:00:01'}}\n  - {{id: p1, network_id: n1, mac_address: 'zz:16:3e:00:00:01'}}\n"
    );
    let (path, message) = parse_error(&text, false);
    assert_eq!(path, "ports[1].mac_address");
    assert!(
        message.starts_with(
            "invalid MAC \"zz:16:3e:00:00:01\": expected six hex octets like fa:16:3e:01:02:03"
        ),
        "{message}"
    );
}

#[test]
fn bad_values_name_their_path() {
    let (path, message) = parse_error(
        "{\"networks\": [{\"id\": \"n\", \"provider:network_type\": \"geneve\"}]}",
        true,
    );
    assert_eq!(path, "networks[0].provider:network_type");
    assert!(message.starts_with("unknown variant `geneve`"), "{message}");

    let (path, message) = parse_error(
        "subnets:\n  - {id: s, network_id: n, cidr: 10.0.0.0/33, ip_version: 4}\n",
        false,
    );
    assert_eq!(path, "subnets[0].cidr");
    assert!(message.contains("invalid IP address syntax"), "{message}");

    let (path, message) = parse_error(
        "security_group_rules:\n  - {id: r, security_group_id: g, direction: ingress, ethertype: IPv4, protocol: gre}\n",
        false,
    );
    assert_eq!(path, "security_group_rules[0].protocol");
    assert!(message.starts_with("unknown protocol \"gre\""), "{message}");

    let (path, _) = parse_error(
        "security_group_rules:\n  - {id: r, security_group_id: g, direction: ingress, ethertype: ipv4}\n",
        false,
    );
    assert_eq!(path, "security_group_rules[0].ethertype");

    let (path, message) = parse_error("networks:\n  - id: n\n", false);
    assert_eq!(path, "networks[0]");
    assert!(
        message.starts_with("missing field `provider:network_type`"),
        "{message}"
    );

    let (path, _) = parse_error("{\"networks\": []} trailing", true);
    assert_eq!(path, "");
}

#[test]
fn protocol_forms_and_address_pairs_parse() {
    let text = r#"
security_groups: [{id: g}]
security_group_rules:
  - {id: a, security_group_id: g, direction: egress, ethertype: IPv4, protocol: 6, port_range_min: 80, port_range_max: 80}
  - {id: b, security_group_id: g, direction: egress, ethertype: IPv4, protocol: "17", port_range_min: 53, port_range_max: 53}
  - {id: c, security_group_id: g, direction: egress, ethertype: IPv6, protocol: ipv6-icmp, port_range_min: 128}
  - {id: d, security_group_id: g, direction: egress, ethertype: IPv4, protocol: 112}
  - {id: e, security_group_id: g, direction: egress, ethertype: IPv4, protocol: any}
networks:
  - {id: n, provider:network_type: vxlan, provider:segmentation_id: 9}
ports:
  - id: p
    network_id: n
    mac_address: fa:16:3e:00:00:09
    allowed_address_pairs:
      - {ip_address: 10.1.2.3}
      - {ip_address: 10.1.0.0/16, mac_address: "fa:16:3e:00:00:0a"}
      - {ip_address: "fd00::5"}
"#;
    let s = parse_state_str(text, false).unwrap_or_else(|e| panic!("{e}"));
    let protocols: Vec<_> = s.security_group_rules.iter().map(|r| r.protocol).collect();
    assert_eq!(
        protocols,
        [
            Some(Protocol::Tcp),
            Some(Protocol::Udp),
            Some(Protocol::Icmpv6),
            Some(Protocol::Number(112)),
            Some(Protocol::Any)
        ]
    );
    let pairs: Vec<String> = s.ports[0]
        .allowed_address_pairs
        .iter()
        .map(|p| p.ip_address.to_string())
        .collect();
    assert_eq!(pairs, ["10.1.2.3/32", "10.1.0.0/16", "fd00::5/128"]);
    // Defaults.
    let n = &s.networks[0];
    assert!(n.admin_state_up && n.port_security_enabled && !n.router_external && !n.shared);
    assert_eq!(n.mtu, None);
    assert_eq!(n.effective_mtu(), 1450);
    assert!(s.ports[0].admin_state_up);
    assert!(s.security_groups[0].stateful);
}

#[test]
fn empty_documents_are_empty_states() {
    assert_eq!(parse_state_str("", false).unwrap(), Default::default());
    assert_eq!(
        parse_state_str("# nothing yet\n", false).unwrap(),
        Default::default()
    );
    assert_eq!(parse_state_str("{}", true).unwrap(), Default::default());
}

#[test]
fn every_problem_of_a_broken_document_is_reported() {
    let text = r#"
networks:
  - {id: net-a, name: selfservice2, provider:network_type: vxlan, provider:segmentation_id: 101}
  - {id: net-b, provider:network_type: vlan, provider:physical_network: provider, provider:segmentation_id: 4095}
subnets:
  - {id: s4, name: selfservice2-v4, network_id: net-a, cidr: 198.51.100.0/24, ip_version: 4}
  - {id: s-bad, network_id: net-a, cidr: 198.18.0.1/24, ip_version: 4}
ports:
  - {id: p0, network_id: net-a, mac_address: "fa:16:3e:00:00:01", fixed_ips: [{subnet_id: s4, ip_address: 198.51.100.4}]}
  - {id: p1, network_id: net-gone, mac_address: "fa:16:3e:00:00:02"}
  - {id: p2, network_id: net-a, mac_address: "fa:16:3e:00:00:03", fixed_ips: [{subnet_id: s4, ip_address: 10.9.9.9}]}
  - {id: p3, network_id: net-a, mac_address: "fa:16:3e:00:00:01"}
"#;
    let err = parse_state_str(text, false).unwrap_err();
    let ConfigError::Invalid { file, problems } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(file, "<input>");
    let expected = [
        "networks[1].provider:segmentation_id: VLAN id 4095 is out of range 1..=4094",
        "subnets[1].cidr: 198.18.0.1/24 has host bits set; use the network address 198.18.0.0/24",
        "ports[1].network_id: network \"net-gone\" does not exist",
        "ports[2].fixed_ips[0].ip_address: 10.9.9.9 is not in subnet selfservice2-v4 (198.51.100.0/24)",
        "ports[3].mac_address: duplicate MAC fa:16:3e:00:00:01 also used by ports[0] on network selfservice2",
    ];
    let got: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(got, expected);
    let shown = err.to_string();
    assert!(shown.starts_with("<input>: 5 problems:\n"), "{shown}");
    for line in expected {
        assert!(
            shown.lines().any(|l| l.trim() == line),
            "{line} not in\n{shown}"
        );
    }
}

#[test]
fn load_state_reads_json_and_reports_io_errors() {
    let dir = std::env::temp_dir().join(format!("vswitch-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("state.json");
    let state = common::seed();
    std::fs::write(&json, serde_json::to_vec(&state).unwrap()).unwrap();
    assert_eq!(load_state(&json).unwrap(), state);

    let broken = dir.join("broken.yaml");
    std::fs::write(
        &broken,
        "networks:\n  - {id: n, provider:network_type: vxlan, provider:segmentation_id: 0}\n",
    )
    .unwrap();
    let err = load_state(&broken).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: 1 problem:\n  networks[0].provider:segmentation_id: VNI 0 is out of range 1..=16777215",
            broken.display()
        )
    );

    let missing = dir.join("missing.yaml");
    let err = load_state(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read {}: ", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}", json in any::<bool>()) {
        let _ = parse_state_str(&text, json);
    }

    #[test]
    fn mutated_seed_never_panics(cut in 0usize..6000, junk in "[-:{}\\[\\],. a-z0-9\n]{0,12}") {
        let seed = common::SEED_STATE;
        let mut at = cut.min(seed.len());
        while !seed.is_char_boundary(at) {
            at -= 1;
        }
        let text = format!("{}{junk}{}", &seed[..at], &seed[at..]);
        let _ = parse_state_str(&text, false);
    }
}
