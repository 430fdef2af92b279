//! Hitless updates: with UDP flows running through two networks (each with the default security
//! group, stateful, remote-group rules), 1,000 API changes that do not concern those flows
//! (ports created and deleted on a third network and on the flows' own network, floating IPs
//! associated and released, security group rules added to and removed from the flows' own
//! group) lose not one packet of the flows. Every sequence number sent arrives.
//!
//! ```text
//!  a1 10.1.0.11 ─ vma ┐                       net-a  VXLAN 101, 10.1.0.0/24
//!  a2 10.1.0.12 ─ vmb ┤ vswitchd (compute1)   net-b  VXLAN 102, 10.2.0.0/24
//!  b1 10.2.0.11 ─ vmc ┤                       net-c  VXLAN 103, 10.3.0.0/24, router r1 (+ gateway
//!  b2 10.2.0.12 ─ vmd ┤                              on ext, 203.0.113.0/24 flat on "provider")
//!        (idle) ─ ul ─┘ provider port
//! ```
mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

const INSTS: [(&str, &str, &str, &str, &str); 4] = [
    ("a1", "vma", "port-a1", "fa:16:3e:0a:00:11", "10.1.0.11"),
    ("a2", "vmb", "port-a2", "fa:16:3e:0a:00:12", "10.1.0.12"),
    ("b1", "vmc", "port-b1", "fa:16:3e:0b:00:11", "10.2.0.11"),
    ("b2", "vmd", "port-b2", "fa:16:3e:0b:00:12", "10.2.0.12"),
];
const UDP_PORT: u16 = 5002;
const CHANGES: usize = 1000;

fn state_yaml() -> String {
    let mut s = String::from(
        r#"
networks:
  - {id: net-a, name: a, "provider:network_type": vxlan, "provider:segmentation_id": 101, mtu: 1500}
  - {id: net-b, name: b, "provider:network_type": vxlan, "provider:segmentation_id": 102, mtu: 1500}
  - {id: net-c, name: c, "provider:network_type": vxlan, "provider:segmentation_id": 103, mtu: 1500}
  - {id: ext, name: provider1, "router:external": true, "provider:network_type": flat, "provider:physical_network": provider}
subnets:
  - {id: sub-a, network_id: net-a, cidr: 10.1.0.0/24, ip_version: 4, gateway_ip: 10.1.0.1}
  - {id: sub-b, network_id: net-b, cidr: 10.2.0.0/24, ip_version: 4, gateway_ip: 10.2.0.1}
  - {id: sub-c, network_id: net-c, cidr: 10.3.0.0/24, ip_version: 4, gateway_ip: 10.3.0.1}
  - {id: sub-ext, network_id: ext, cidr: 203.0.113.0/24, ip_version: 4, gateway_ip: 203.0.113.1}
routers:
  - id: r1
    distributed: true
    external_gateway_info: {network_id: ext, external_fixed_ips: [{subnet_id: sub-ext, ip_address: 203.0.113.2}]}
security_groups:
  - {id: sg-default, name: default}
security_group_rules:
  - {id: out4, security_group_id: sg-default, direction: egress, ethertype: IPv4}
  - {id: in4, security_group_id: sg-default, direction: ingress, ethertype: IPv4, remote_group_id: sg-default}
ports:
  - {id: r1-c, network_id: net-c, mac_address: "fa:16:3e:cc:00:01", fixed_ips: [{subnet_id: sub-c, ip_address: 10.3.0.1}], device_owner: network:router_interface_distributed, device_id: r1}
  - {id: r1-gw, network_id: ext, mac_address: "fa:16:3e:cc:00:02", fixed_ips: [{subnet_id: sub-ext, ip_address: 203.0.113.2}], device_owner: network:router_gateway, device_id: r1, "binding:host_id": network1}
  - {id: fg1, network_id: ext, mac_address: "fa:16:3e:cc:00:03", fixed_ips: [{subnet_id: sub-ext, ip_address: 203.0.113.3}], device_owner: network:floatingip_agent_gateway, device_id: compute1, "binding:host_id": compute1}
"#,
    );
    for (_, _, id, mac, ip) in INSTS {
        let (net, sub) = if ip.starts_with("10.1.") {
            ("net-a", "sub-a")
        } else {
            ("net-b", "sub-b")
        };
        s.push_str(&format!(
            "  - {{id: {id}, network_id: {net}, mac_address: \"{mac}\", fixed_ips: [{{subnet_id: {sub}, ip_address: {ip}}}], \"binding:host_id\": compute1, security_groups: [sg-default], device_owner: \"compute:nova\"}}\n"
        ));
    }
    s
}

/// Sends numbered datagrams to every destination at `rate` per second each until the stop
/// file exists; prints how many went to each.
const SENDER_PY: &str = r#"
import os, socket, sys, time
stop, rate, port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
dsts = sys.argv[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
n, t0 = 0, time.monotonic()
print("sending", flush=True)
while not os.path.exists(stop):
    for d in dsts:
        s.sendto(n.to_bytes(8, "big") + b"x" * 56, (d, port))
    n += 1
    delay = t0 + n / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print("sent", n, flush=True)
"#;

/// Counts distinct sequence numbers until 3 s pass without a datagram.
const RECEIVER_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
seen = set()
s.settimeout(60)
while True:
    try:
        b, _ = s.recvfrom(2048)
    except socket.timeout:
        break
    seen.add(int.from_bytes(b[:8], "big"))
    s.settimeout(3)
top = max(seen) + 1 if seen else 0
missing = [i for i in range(top) if i not in seen]
print("got", len(seen), "top", top, "missing", len(missing), missing[:20], flush=True)
"#;

fn words_after(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hitless_updates_lose_no_packet_of_untouched_flows() {
    let Some(mut topo) = Topology::new("hitls") else {
        return;
    };
    let sw = topo.add_switch_ns("sw");
    let mut ns = Vec::new();
    for (role, port, _, mac, ip) in INSTS {
        let cidr = format!("{ip}/24");
        let n = InstanceNet::v4(mac, &cidr, 1500, None);
        ns.push(topo.add_instance(role, &sw, port, &n));
    }
    let idle = topo.add_ns("idle");
    topo.disable_ipv6(&idle);
    topo.veth(&sw, "ul", &idle, "eth0");
    topo.set_mac_up(&sw, "ul", "02:00:00:00:00:21");
    topo.set_mac_up(&idle, "eth0", "02:00:00:00:00:22");
    let mut ports: Vec<HostPort> = INSTS
        .iter()
        .map(|&(_, port, id, _, _)| HostPort {
            name: port,
            iface: port,
            kind: "instance",
            iface_id: Some(id),
        })
        .collect();
    ports.push(HostPort {
        name: "uplink",
        iface: "ul",
        kind: "provider",
        iface_id: None,
    });
    let host = format!(
        "dvr_mac = \"fa:16:3f:00:00:11\"\n{}",
        host_toml("compute1", &topo.name, &ports, &[("provider", "uplink")])
    );
    let mut vs = Vswitchd::start(&topo, &sw, &host, &state_yaml());
    let sock = vs.socket().to_path_buf();

    // Two flows, one per network, both checked by the default group at both ends.
    let mut rx_a = topo.spawn(
        &ns[1],
        "rx-a2",
        &[python(), "-c", RECEIVER_PY, &UDP_PORT.to_string()],
    );
    let mut rx_b = topo.spawn(
        &ns[3],
        "rx-b2",
        &[python(), "-c", RECEIVER_PY, &UDP_PORT.to_string()],
    );
    assert!(
        rx_a.wait_for("ready", Duration::from_secs(10))
            && rx_b.wait_for("ready", Duration::from_secs(10))
    );
    // ARP first, so the flows start on resolved neighbours.
    ping_ok(&topo, &ns[0], INSTS[1].4, 1, 5);
    ping_ok(&topo, &ns[2], INSTS[3].4, 1, 5);
    let stop = topo.dir().join("stop");
    let stop_s = stop.to_string_lossy().into_owned();
    let rate = "400";
    let mut tx_a = topo.spawn(
        &ns[0],
        "tx-a1",
        &[
            python(),
            "-c",
            SENDER_PY,
            &stop_s,
            rate,
            &UDP_PORT.to_string(),
            INSTS[1].4,
        ],
    );
    let mut tx_b = topo.spawn(
        &ns[2],
        "tx-b1",
        &[
            python(),
            "-c",
            SENDER_PY,
            &stop_s,
            rate,
            &UDP_PORT.to_string(),
            INSTS[3].4,
        ],
    );
    assert!(
        tx_a.wait_for("sending", Duration::from_secs(10))
            && tx_b.wait_for("sending", Duration::from_secs(10))
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = vs.stats();

    // 1,000 changes through the API while the flows run.
    let g0 = http(&sock, "GET", "/v1/status", None).2["generation"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    let mut done = 0;
    let mut cycle = 0;
    while done < CHANGES {
        let c = cycle;
        cycle += 1;
        let ops: Vec<(&str, String, Option<serde_json::Value>, u16)> = vec![
            (
                "POST",
                "/v2.0/ports".into(),
                Some(
                    json!({"port": {"id": format!("tmp-{c}"), "network_id": "net-c", "binding:host_id": "compute1"}}),
                ),
                201,
            ),
            (
                "POST",
                "/v2.0/floatingips".into(),
                Some(
                    json!({"floatingip": {"id": format!("fip-{c}"), "floating_network_id": "ext", "port_id": format!("tmp-{c}")}}),
                ),
                201,
            ),
            ("DELETE", format!("/v2.0/floatingips/fip-{c}"), None, 204),
            ("DELETE", format!("/v2.0/ports/tmp-{c}"), None, 204),
            (
                "POST",
                "/v2.0/security-group-rules".into(),
                Some(
                    json!({"security_group_rule": {"id": format!("rule-{c}"), "security_group_id": "sg-default", "direction": "ingress", "protocol": "tcp", "port_range_min": 10000 + c, "port_range_max": 10000 + c}}),
                ),
                201,
            ),
            (
                "DELETE",
                format!("/v2.0/security-group-rules/rule-{c}"),
                None,
                204,
            ),
            // A member joins and leaves the flows' own group (on another host): the remote-group
            // rule that admits the flows is recompiled twice.
            (
                "POST",
                "/v2.0/ports".into(),
                Some(
                    json!({"port": {"id": format!("member-{c}"), "network_id": "net-a", "binding:host_id": "compute2", "security_groups": ["sg-default"]}}),
                ),
                201,
            ),
            ("DELETE", format!("/v2.0/ports/member-{c}"), None, 204),
        ];
        for (method, path, body, want) in ops {
            if done == CHANGES {
                break;
            }
            let (st, _, v) = http(&sock, method, &path, body.as_ref());
            assert_eq!(st, want, "{method} {path}: {v}");
            done += 1;
        }
    }
    let took = started.elapsed();
    let g1 = http(&sock, "GET", "/v1/status", None).2["generation"]
        .as_u64()
        .unwrap();
    assert_eq!(g1 - g0, CHANGES as u64, "every change a generation");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "").unwrap();
    assert!(
        tx_a.wait_for("sent", Duration::from_secs(10))
            && tx_b.wait_for("sent", Duration::from_secs(10))
    );
    assert!(
        rx_a.wait_for("got", Duration::from_secs(15))
            && rx_b.wait_for("got", Duration::from_secs(15))
    );
    let after = vs.stats();
    for (tx, rx, flow) in [(&tx_a, &rx_a, "a1 -> a2"), (&tx_b, &rx_b, "b1 -> b2")] {
        let sent = words_after(&tx.stdout_text(), "sent");
        let got = words_after(&rx.stdout_text(), "got");
        eprintln!(
            "{flow}: sent {sent:?}, received {}",
            rx.stdout_text().trim()
        );
        assert!(
            sent[0] > 1000,
            "{flow}: the flow ran for the whole test ({sent:?})"
        );
        assert_eq!(
            got[0],
            sent[0],
            "{flow}: every datagram arrives ({})",
            rx.stdout_text()
        );
    }
    let drops = after.drops_since(&before);
    assert!(
        drops.is_empty(),
        "dropped while the changes were applied: {drops:?}"
    );
    eprintln!(
        "{CHANGES} changes in {took:?} ({:.0}/s) with no packet of the flows lost",
        CHANGES as f64 / took.as_secs_f64()
    );
    vs.stop();
}
