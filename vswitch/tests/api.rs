//! The REST API and `vswitchctl` against a running `vswitchd` (in a namespace of its own, ports
//! on DPDK's null PMD): every resource created, read, updated and deleted over the unix socket;
//! refused requests (wrong types, unknown fields, dangling references, overlapping subnets,
//! duplicate MACs and IPs) answer 4xx with every problem and its path and change nothing;
//! concurrent clients; the socket's mode; persistence across `kill -9`; SIGHUP through the same
//! path; `vswitchctl` tables; `/metrics` parsed by the Prometheus client library's parser.
//!
//! The client here is a plain HTTP/1.1 over `std::os::unix::net::UnixStream`, independent of
//! the hyper/axum stack the server uses.
mod support;

use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

fn host(prefix: &str) -> String {
    format!(
        r#"role = "dvr"
host_id = "compute1"
local_vtep_ip = "10.0.0.11"
dvr_mac = "fa:16:3f:01:00:11"
main_core = 0
cores = [1]
eal_args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--file-prefix", "{prefix}"]
mbufs = 4095
[idle]
mode = "backoff"
[[ports]]
name = "vm1"
devargs = "net_null0,no-rx=1"
kind = "instance"
iface_id = "port-a"
[[ports]]
name = "vm2"
devargs = "net_null1,no-rx=1"
kind = "instance"
iface_id = "port-b"
[[ports]]
name = "uplink"
devargs = "net_null2,no-rx=1"
kind = "provider"
[bridge_mappings]
provider = "uplink"
"#
    )
}

fn generation(sock: &Path) -> u64 {
    let (_, _, v) = http(sock, "GET", "/v1/status", None);
    v["generation"].as_u64().expect("generation")
}

fn state(sock: &Path) -> Value {
    http(sock, "GET", "/v1/state", None).2
}

/// A refused change: the status, the problems' paths, and nothing changed.
fn refused(
    sock: &Path,
    method: &str,
    path: &str,
    body: Value,
    want_status: u16,
    want_paths: &[&str],
) {
    let before = (state(sock), generation(sock));
    let (st, _, v) = http(sock, method, path, Some(&body));
    assert_eq!(st, want_status, "{method} {path} {body}: {v}");
    let paths: Vec<String> = v["NeutronError"]["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {v}"))
        .iter()
        .map(|p| p["path"].as_str().unwrap_or("").to_string())
        .collect();
    for want in want_paths {
        assert!(
            paths.iter().any(|p| p == want),
            "{method} {path}: want a problem at {want:?}, got {v}"
        );
    }
    assert_eq!(
        (state(sock), generation(sock)),
        before,
        "a refused request changed the state"
    );
}

fn created(sock: &Path, coll: &str, singular: &str, fields: Value) -> Value {
    let (st, h, v) = http(
        sock,
        "POST",
        &format!("/v2.0/{coll}"),
        Some(&json!({ singular: fields })),
    );
    assert_eq!(st, 201, "create {coll}: {v}");
    assert!(header(&h, "x-vswitch-generation").is_some());
    v[singular].clone()
}

fn start(tag: &str) -> Option<(Topology, String, Vswitchd)> {
    let mut topo = Topology::new(tag)?;
    let ns = topo.add_switch_ns("sw");
    let prefix = format!("api{tag}{}", std::process::id());
    let vs = Vswitchd::start(&topo, &ns, &host(&prefix), "{}\n");
    Some((topo, ns, vs))
}

#[test]
fn api_every_resource_crud_over_the_unix_socket() {
    let Some((_topo, _ns, vs)) = start("crud") else {
        return;
    };
    let sock = vs.socket().to_path_buf();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket must be private to its owner");
    assert_eq!(generation(&sock), 1);

    // Networks: a tenant VXLAN network and the external provider VLAN.
    let net = created(
        &sock,
        "networks",
        "network",
        json!({"id": "net-a", "name": "blue"}),
    );
    assert_eq!(net["provider:network_type"], "vxlan");
    created(
        &sock,
        "networks",
        "network",
        json!({"id": "ext", "name": "provider1", "router:external": true,
        "provider:network_type": "vlan", "provider:physical_network": "provider", "provider:segmentation_id": 101}),
    );
    created(
        &sock,
        "subnets",
        "subnet",
        json!({"id": "sub-a", "network_id": "net-a", "cidr": "10.10.0.0/24"}),
    );
    created(
        &sock,
        "subnets",
        "subnet",
        json!({"id": "sub-ext", "network_id": "ext", "cidr": "203.0.113.0/24"}),
    );
    let sg = created(
        &sock,
        "security-groups",
        "security_group",
        json!({"id": "sg", "name": "default"}),
    );
    assert_eq!(sg["security_group_rules"].as_array().unwrap().len(), 2);
    let rule = created(
        &sock,
        "security-group-rules",
        "security_group_rule",
        json!({
        "security_group_id": "sg", "direction": "ingress", "protocol": "tcp",
        "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}),
    );
    let a = created(
        &sock,
        "ports",
        "port",
        json!({"id": "port-a", "network_id": "net-a", "binding:host_id": "compute1"}),
    );
    assert_eq!(a["fixed_ips"][0]["ip_address"], "10.10.0.2");
    assert_eq!(a["security_groups"], json!(["sg"]));
    created(
        &sock,
        "ports",
        "port",
        json!({"id": "port-b", "network_id": "net-a", "binding:host_id": "compute1",
        "fixed_ips": [{"subnet_id": "sub-a"}]}),
    );
    let r = created(
        &sock,
        "routers",
        "router",
        json!({"id": "r1", "name": "router1"}),
    );
    assert_eq!(r["distributed"], true);
    let (st, _, v) = http(
        &sock,
        "PUT",
        "/v2.0/routers/r1/add_router_interface",
        Some(&json!({"subnet_id": "sub-a"})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["subnet_id"], "sub-a");
    // The router's gateway on the external network, the host's fg port, a floating IP.
    let (st, _, v) = http(
        &sock,
        "PUT",
        "/v2.0/routers/r1",
        Some(&json!({"router": {"external_gateway_info": {"network_id": "ext"}}})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
        "203.0.113.2"
    );
    created(
        &sock,
        "ports",
        "port",
        json!({"id": "fg", "network_id": "ext", "binding:host_id": "compute1",
        "device_owner": "network:floatingip_agent_gateway", "device_id": "compute1"}),
    );
    let fip = created(
        &sock,
        "floatingips",
        "floatingip",
        json!({"floating_network_id": "ext", "port_id": "port-a"}),
    );
    let fip_id = fip["id"].as_str().unwrap().to_string();
    assert_eq!(fip["floating_ip_address"], "203.0.113.4");

    // Read: lists and single objects, with Neutron's envelopes.
    for (coll, key, n) in [
        ("networks", "networks", 2),
        ("subnets", "subnets", 2),
        ("routers", "routers", 1),
        ("floatingips", "floatingips", 1),
        ("security-groups", "security_groups", 1),
        ("security-group-rules", "security_group_rules", 3),
    ] {
        let (st, _, v) = http(&sock, "GET", &format!("/v2.0/{coll}"), None);
        assert_eq!(st, 200);
        assert_eq!(v[key].as_array().map(Vec::len), Some(n), "{coll}: {v}");
    }
    let (_, _, v) = http(&sock, "GET", "/v2.0/ports", None);
    assert_eq!(
        v["ports"].as_array().unwrap().len(),
        5,
        "2 instances, interface, gateway, fg: {v}"
    );
    let (st, _, v) = http(&sock, "GET", "/v2.0/ports/port-a", None);
    assert_eq!(
        (st, v["port"]["binding:host_id"].clone()),
        (200, json!("compute1"))
    );
    let (st, _, _) = http(&sock, "GET", "/v2.0/ports/nope", None);
    assert_eq!(st, 404);

    // Update every kind: a field changes, the others stay.
    for (coll, singular, id, field, value) in [
        ("networks", "network", "net-a", "name", json!("blue2")),
        ("subnets", "subnet", "sub-a", "name", json!("sub-a2")),
        (
            "security-groups",
            "security_group",
            "sg",
            "description",
            json!("web tier"),
        ),
        ("routers", "router", "r1", "name", json!("router1b")),
    ] {
        let (st, _, v) = http(
            &sock,
            "PUT",
            &format!("/v2.0/{coll}/{id}"),
            Some(&json!({singular: {field: value}})),
        );
        assert_eq!(st, 200, "{coll}: {v}");
        assert_eq!(v[singular][field], value, "{coll}: {v}");
        assert_eq!(v[singular]["id"], id);
    }
    let (_, _, v) = http(&sock, "GET", "/v2.0/subnets/sub-a", None);
    assert_eq!(v["subnet"]["cidr"], "10.10.0.0/24", "unchanged fields stay");
    // Update: the data plane follows (the FIP moves away).
    let (st, h, v) = http(
        &sock,
        "PUT",
        "/v2.0/ports/port-b",
        Some(&json!({"port": {"name": "renamed"}})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["port"]["name"], "renamed");
    assert_eq!(v["port"]["fixed_ips"][0]["ip_address"], "10.10.0.3");
    let g: u64 = header(&h, "x-vswitch-generation").unwrap().parse().unwrap();
    assert_eq!(g, generation(&sock));
    let (st, _, v) = http(
        &sock,
        "PUT",
        &format!("/v2.0/floatingips/{fip_id}"),
        Some(&json!({"floatingip": {"port_id": "port-b"}})),
    );
    assert_eq!(st, 200, "{v}");
    let (_, _, stats) = http(&sock, "GET", "/v1/stats", None);
    assert_eq!(
        stats["generation"].as_u64(),
        Some(generation(&sock)),
        "the cores run the latest tables"
    );

    // Refused, nothing changes: wrong type, unknown field, dangling reference, overlapping
    // subnet, duplicate MAC, duplicate IP, bad JSON, bad envelope, immutable rule.
    refused(
        &sock,
        "POST",
        "/v2.0/networks",
        json!({"network": {"mtu": "big"}}),
        400,
        &["network.mtu"],
    );
    refused(
        &sock,
        "POST",
        "/v2.0/networks",
        json!({"network": {"colour": "red"}}),
        400,
        &["network"],
    );
    refused(
        &sock,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": "nope", "mac_address": "fa:16:3e:00:00:09"}}),
        400,
        &["port.network_id"],
    );
    refused(
        &sock,
        "POST",
        "/v2.0/subnets",
        json!({"subnet": {"network_id": "net-a", "cidr": "10.10.0.128/25"}}),
        400,
        &["subnet.cidr"],
    );
    let mac_a = a["mac_address"].as_str().unwrap();
    refused(
        &sock,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": "net-a", "mac_address": mac_a}}),
        400,
        &["port.mac_address"],
    );
    refused(
        &sock,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": "net-a", "fixed_ips": [{"ip_address": "10.10.0.2"}]}}),
        400,
        &["port.fixed_ips[0].ip_address"],
    );
    refused(
        &sock,
        "DELETE",
        "/v2.0/networks/net-a",
        json!(null),
        400,
        &[],
    );
    refused(
        &sock,
        "PUT",
        &format!(
            "/v2.0/security-group-rules/{}",
            rule["id"].as_str().unwrap()
        ),
        json!({"security_group_rule": {"port_range_min": 23}}),
        400,
        &["security_group_rule"],
    );
    refused(
        &sock,
        "POST",
        "/v2.0/networks",
        json!({"net": {}}),
        400,
        &["net"],
    );
    let before = generation(&sock);
    let (st, _, body) = http_raw(&sock, "POST", "/v2.0/networks", Some("{not json".into()));
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(generation(&sock), before);

    // Delete, in Neutron's order.
    for path in [
        format!("/v2.0/floatingips/{fip_id}"),
        "/v2.0/ports/fg".into(),
        "/v2.0/ports/port-a".into(),
        "/v2.0/ports/port-b".into(),
    ] {
        let (st, _, v) = http(&sock, "DELETE", &path, None);
        assert_eq!(st, 204, "{path}: {v}");
    }
    let (st, _, v) = http(
        &sock,
        "PUT",
        "/v2.0/routers/r1/remove_router_interface",
        Some(&json!({"subnet_id": "sub-a"})),
    );
    assert_eq!(st, 200, "{v}");
    for path in [
        "/v2.0/routers/r1",
        &format!(
            "/v2.0/security-group-rules/{}",
            rule["id"].as_str().unwrap()
        ),
        "/v2.0/security-groups/sg",
        "/v2.0/subnets/sub-a",
        "/v2.0/networks/net-a",
    ] {
        let (st, _, v) = http(&sock, "DELETE", path, None);
        assert_eq!(st, 204, "{path}: {v}");
    }
    let s = state(&sock);
    assert_eq!(s["ports"], json!([]), "{s}");
    assert_eq!(s["routers"], json!([]));
    assert_eq!(s["security_groups"], json!([]));
    vs.stop();
}

#[test]
fn api_concurrent_clients_each_get_their_own_generation() {
    let Some((_topo, _ns, vs)) = start("conc") else {
        return;
    };
    let sock = vs.socket().to_path_buf();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let (st, h, v) = http(
                            &sock,
                            "POST",
                            "/v2.0/networks",
                            Some(&json!({"network": {"id": format!("n{t}-{i}")}})),
                        );
                        assert_eq!(st, 201, "{v}");
                        header(&h, "x-vswitch-generation")
                            .unwrap()
                            .parse::<u64>()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut gens: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    gens.sort();
    assert_eq!(
        gens,
        (2..62).collect::<Vec<_>>(),
        "every change one generation, none lost"
    );
    let s = state(&sock);
    let vnis: std::collections::HashSet<u64> = s["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["provider:segmentation_id"].as_u64().unwrap())
        .collect();
    assert_eq!(vnis.len(), 60, "each network its own VNI");
    vs.stop();
}

#[test]
fn api_state_survives_kill_9_during_a_stream_of_changes() {
    let Some((topo, ns, vs)) = start("kill") else {
        return;
    };
    let sock = vs.socket().to_path_buf();
    let state_file = vs.state_file().to_path_buf();
    // A client streams changes; vswitchd is killed while it does.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let a2 = acked.clone();
    let s2 = sock.clone();
    let client = std::thread::spawn(move || {
        for i in 0..10_000 {
            let id = format!("n{i}");
            let r = std::panic::catch_unwind(|| {
                http(
                    &s2,
                    "POST",
                    "/v2.0/networks",
                    Some(&json!({"network": {"id": id}})),
                )
            });
            match r {
                Ok((201, _, _)) => a2.lock().unwrap().push(format!("n{i}")),
                _ => return i,
            }
        }
        10_000
    });
    while acked.lock().unwrap().len() < 40 {
        std::thread::sleep(Duration::from_millis(5));
    }
    vs.kill9();
    let attempted = client.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40 && attempted >= acked.len());
    // Restart from the same files: exactly the accepted networks (the one in flight when the
    // process died may or may not have been accepted; nothing half-written either way).
    let host_toml = std::fs::read_to_string(topo.dir().join("host.toml")).unwrap();
    let state_yaml = std::fs::read_to_string(&state_file).unwrap();
    let vs = Vswitchd::start(&topo, &ns, &host_toml, &state_yaml);
    let s = state(vs.socket());
    let ids: Vec<String> = s["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.starts_with(&acked),
        "lost an accepted change: {} accepted, {} back",
        acked.len(),
        ids.len()
    );
    assert!(
        ids.len() <= acked.len() + 1,
        "{} accepted, {} back",
        acked.len(),
        ids.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(topo.dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(
        leftovers.len() <= 1,
        "temporary files pile up: {leftovers:?}"
    );
    vs.stop();
}

#[test]
fn vswitchctl_apply_show_stats_and_prometheus_metrics() {
    let Some((topo, _ns, mut vs)) = start("ctl") else {
        return;
    };
    let sock = vs.socket().to_path_buf();
    let doc = topo.dir().join("desired.yaml");
    std::fs::write(&doc, r#"
networks:
  - {id: net-a, name: blue, "provider:network_type": vxlan, "provider:segmentation_id": 77}
subnets:
  - {id: sub-a, network_id: net-a, cidr: 10.20.0.0/24, ip_version: 4, gateway_ip: 10.20.0.1}
ports:
  - {id: port-a, name: web1, network_id: net-a, mac_address: "fa:16:3e:00:20:01", "binding:host_id": compute1,
     fixed_ips: [{subnet_id: sub-a, ip_address: 10.20.0.5}], port_security_enabled: false}
  - {id: port-b, name: web2, network_id: net-a, mac_address: "fa:16:3e:00:20:02", "binding:host_id": compute1,
     fixed_ips: [{subnet_id: sub-a, ip_address: 10.20.0.6}], port_security_enabled: false}
"#).unwrap();
    let (code, out, err) = vs.ctl(&["apply", doc.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("generation 2"), "{out}");
    // Applying the same file again is no change.
    let (_, out, _) = vs.ctl(&["apply", doc.to_str().unwrap()]);
    assert!(out.contains("generation 2"), "{out}");
    let (code, out, _) = vs.ctl(&["show", "ports"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("FIXED_IPS"),
        "{out}"
    );
    let col = lines[0].find("MAC").unwrap();
    assert!(
        lines[1][col..].starts_with("fa:16:3e:00:20:0"),
        "columns aligned:\n{out}"
    );
    assert!(out.contains("10.20.0.5") && out.contains("web2"), "{out}");
    let (_, out, _) = vs.ctl(&["show", "networks", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["provider:segmentation_id"], 77);
    // A refused apply: exit 1, each problem with its path, nothing changed.
    std::fs::write(&doc, "networks:\n  - {id: x, \"provider:network_type\": vxlan, \"provider:segmentation_id\": 0}\nports:\n  - {id: p, network_id: nope, mac_address: \"fa:16:3e:00:00:01\"}\n").unwrap();
    let (code, _, err) = vs.ctl(&["apply", doc.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("networks[0].provider:segmentation_id") && err.contains("ports[0].network_id"),
        "{err}"
    );
    assert_eq!(generation(&sock), 2);
    let (code, out, _) = vs.ctl(&["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("port")
            && out.contains("vm1")
            && out.contains("drops:")
            && out.contains("lcore 1"),
        "{out}"
    );
    let (_, out, _) = vs.ctl(&["stats", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cores"][0]["lcore"], 1);
    // SIGHUP goes through the same store: the file vswitchd keeps is what it reloads.
    let g = vs.reload(&std::fs::read_to_string(vs.state_file()).unwrap());
    assert_eq!(g, 2, "the same state again is no new generation");

    // /metrics, parsed by the Prometheus client library's own parser.
    let (st, h, body) = http_raw(&sock, "GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(header(&h, "content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    let path = topo.dir().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(python())
        .args([
            "-c",
            r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
out = {}
for name, f in fams.items():
    for s in f.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps({"types": {n: f.type for n, f in fams.items()}, "samples": out}))
"#,
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = &m["samples"];
    let one = |name: &str, label: Option<(&str, &str)>| -> f64 {
        samples[name]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .iter()
            .find(|s| label.is_none_or(|(k, v)| s[0][k] == v))
            .and_then(|s| s[1].as_f64())
            .unwrap_or_else(|| panic!("no {name} {label:?}"))
    };
    assert_eq!(m["types"]["vswitch_port_rx_packets"], "counter");
    one("vswitch_port_rx_packets_total", Some(("port", "vm1")));
    one("vswitch_port_tx_bytes_total", Some(("port", "uplink")));
    one("vswitch_drops_total", Some(("reason", "no_network")));
    one("vswitch_conntrack", Some(("figure", "capacity")));
    assert_eq!(one("vswitch_table_generation", None), 2.0);
    assert!(one("vswitch_apply_latency_seconds_count", None) >= 1.0);
    assert!(one("vswitch_apply_rejected_total", None) >= 1.0);
    let ratio = one("vswitch_core_busy_ratio", Some(("lcore", "1")));
    assert!((0.0..=1.0).contains(&ratio));
    vs.stop();
}

#[test]
fn api_on_tcp_only_with_the_bearer_token() {
    let Some(mut topo) = Topology::new("tcp") else {
        return;
    };
    let ns = topo.add_switch_ns("sw");
    topo.ok(&ns, &["ip", "link", "set", "lo", "up"]);
    let token = topo.dir().join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    let prefix = format!("apitcp{}", std::process::id());
    let sock = topo.dir().join("vswitchd.sock");
    let host = format!(
        "{}\n[control]\nsocket = \"{}\"\nlisten = \"127.0.0.1:9696\"\ntoken_file = \"{}\"\n",
        host(&prefix),
        sock.display(),
        token.display()
    );
    let vs = Vswitchd::start(&topo, &ns, &host, "{}\n");
    assert!(vs
        .stdout_text()
        .contains("API on tcp 127.0.0.1:9696 (bearer token)"));
    let curl = |extra: &[&str]| -> String {
        let mut args = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        args.push("http://127.0.0.1:9696/v2.0/networks");
        String::from_utf8_lossy(&topo.exec(&ns, &args).stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401", "no token");
    assert_eq!(
        curl(&["-H", "Authorization: Bearer wrong-token-0123456789"]),
        "401"
    );
    assert_eq!(
        curl(&["-H", "Authorization: Bearer s3cret-token-0123456789"]),
        "200"
    );
    let out = topo.exec(
        &ns,
        &[
            VSWITCHCTL,
            "--tcp",
            "127.0.0.1:9696",
            "--token-file",
            token.to_str().unwrap(),
            "status",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("compute1"));
    // The unix socket needs no token (its mode keeps others out).
    let (st, _, _) = http(vs.socket(), "GET", "/v2.0/networks", None);
    assert_eq!(st, 200);
    vs.stop();
}

/// A bug that panics in the control plane fails its own request; the workers keep forwarding and
/// the API keeps answering (the store's lock, poisoned by the panic, still holds the last accepted
/// state). Uses the fault-injection route of debug builds.
#[test]
fn a_panic_in_the_control_plane_leaves_forwarding_and_the_api_running() {
    let Some(mut topo) = Topology::new("panic") else {
        return;
    };
    let ns = topo.add_switch_ns("sw");
    let prefix = format!("apipanic{}", std::process::id());
    // vm2's null PMD receives a steady stream of (zero-filled) frames: traffic to count.
    let host = host(&prefix).replace("net_null1,no-rx=1", "net_null1");
    let mut vs = Vswitchd::start(&topo, &ns, &host, "{}\n");
    let sock = vs.socket().to_path_buf();
    created(&sock, "networks", "network", json!({"id": "n1"}));
    let before = state(&sock);
    let rx0 = vs.stats().port("vm2").rx_packets;
    let (st, _, v) = http(&sock, "POST", "/v1/debug/panic", None);
    assert_eq!(st, 500, "a panicking change fails its request: {v}");
    // A panic in the handler itself: the connection drops, the server stays.
    let r = std::panic::catch_unwind(|| http(&sock, "POST", "/v1/debug/panic?in=handler", None));
    assert!(r.is_err() || r.as_ref().is_ok_and(|x| x.0 >= 500), "{r:?}");
    assert_eq!(state(&sock), before, "the last accepted state stands");
    created(&sock, "networks", "network", json!({"id": "n2"}));
    assert_eq!(generation(&sock), 3);
    let s = vs.stats_when(|s| s.port("vm2").rx_packets > rx0 + 1000);
    assert!(
        s.port("vm2").rx_packets > rx0 + 1000,
        "the worker kept polling"
    );
    assert!(
        vs.stderr_text().contains("injected panic"),
        "the panic is logged"
    );
    vs.stop();
}
