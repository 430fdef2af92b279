//! System tests of L2 switching: real kernels in network namespaces talking through a
//! `vswitchd` (net_af_packet ports) that runs in its own namespace.
//!
//! ```text
//!  inst1 203.0.113.11 ─┐                       ┌─ provider host (namespace "prov")
//!  inst2 203.0.113.12 ─┤ provider1 (VLAN 101)  │   eth0 198.51.100.50/24, untagged (kernel, flat1)
//!  inst3 198.51.100.13─┤ flat1 (flat)          │   203.0.113.50 on VLAN 101 (tests/peers/vlan_host.py,
//!                      └── vswitchd ── uplink ─┘   MAC 02:00:00:00:01:50, scapy on the same eth0)
//! ```
//!
//! Each test builds its own topology and vswitchd (unique names, so they are independent and
//! may run in parallel) and ends by stopping vswitchd, which must exit 0 with no mbuf leaked.
//! Needs root; without root or `ip netns` each test prints "skipped: needs root and DPDK" and
//! passes. Run: `cargo test -p vswitch --test system_l2 -- --test-threads=1`.
mod support;

use std::time::{Duration, Instant};
use support::{host_toml, python, tcp_transfer, HostPort, Stats, Topology, Vswitchd, VLAN_HOST_PY};

const INST1_MAC: &str = "fa:16:3e:00:01:11";
const INST2_MAC: &str = "fa:16:3e:00:01:12";
const INST3_MAC: &str = "fa:16:3e:00:01:13";
const INST1_IP: &str = "203.0.113.11";
const INST2_IP: &str = "203.0.113.12";
const INST3_IP: &str = "198.51.100.13";
const PROV_IP: &str = "198.51.100.50";
const PROV_MAC: &str = "02:00:00:00:00:50";
const VLAN_PEER_IP: &str = "203.0.113.50";
const VLAN_PEER_MAC: &str = "02:00:00:00:01:50";
const SPOOF_MAC: &str = "fa:16:3e:00:06:66";
const SPOOF_IP: &str = "203.0.113.99";

const STATE_YAML: &str = r#"
networks:
  - id: net-provider1
    name: provider1
    provider:network_type: vlan
    provider:physical_network: provider
    provider:segmentation_id: 101
  - id: net-flat1
    name: flat1
    provider:network_type: flat
    provider:physical_network: provider
subnets:
  - id: subnet-provider1
    name: provider1-v4
    network_id: net-provider1
    cidr: 203.0.113.0/24
    ip_version: 4
    gateway_ip: 203.0.113.1
    enable_dhcp: false
  - id: subnet-flat1
    name: flat1-v4
    network_id: net-flat1
    cidr: 198.51.100.0/24
    ip_version: 4
    gateway_ip: 198.51.100.1
    enable_dhcp: false
ports:
  - id: port-inst1
    network_id: net-provider1
    mac_address: "fa:16:3e:00:01:11"
    fixed_ips: [{subnet_id: subnet-provider1, ip_address: 203.0.113.11}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-inst2
    network_id: net-provider1
    mac_address: "fa:16:3e:00:01:12"
    fixed_ips: [{subnet_id: subnet-provider1, ip_address: 203.0.113.12}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-inst3
    network_id: net-flat1
    mac_address: "fa:16:3e:00:01:13"
    fixed_ips: [{subnet_id: subnet-flat1, ip_address: 198.51.100.13}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-open]
# Everything allowed both ways (security groups are enforced on ports with port security on;
# these tests are about switching, not filtering).
security_groups:
  - {id: sg-open, name: open}
security_group_rules:
  - {id: sg-open-in4, security_group_id: sg-open, direction: ingress, ethertype: IPv4}
  - {id: sg-open-in6, security_group_id: sg-open, direction: ingress, ethertype: IPv6}
  - {id: sg-open-out4, security_group_id: sg-open, direction: egress, ethertype: IPv4}
  - {id: sg-open-out6, security_group_id: sg-open, direction: egress, ethertype: IPv6}
"#;

/// The topology above with its vswitchd running. Field order matters for drop: vswitchd
/// first, then the namespaces.
struct Lab {
    vs: Option<Vswitchd>,
    topo: Topology,
    inst1: String,
    inst2: String,
    inst3: String,
    prov: String,
    started: Instant,
}

impl Lab {
    /// Builds the topology and starts vswitchd; `None` when system tests cannot run here.
    fn start(tag: &str) -> Option<Lab> {
        let started = Instant::now();
        let mut topo = Topology::new(tag)?;
        let sw = topo.add_ns("sw");
        let inst1 = topo.add_host("i1", &sw, "vm1", INST1_MAC, Some(&format!("{INST1_IP}/24")));
        let inst2 = topo.add_host("i2", &sw, "vm2", INST2_MAC, Some(&format!("{INST2_IP}/24")));
        let inst3 = topo.add_host("i3", &sw, "vm3", INST3_MAC, Some(&format!("{INST3_IP}/24")));
        let prov = topo.add_host(
            "prov",
            &sw,
            "uplink",
            PROV_MAC,
            Some(&format!("{PROV_IP}/24")),
        );
        let host = host_toml(
            "compute1",
            &topo.name,
            &[
                HostPort {
                    name: "vm1",
                    iface: "vm1",
                    kind: "instance",
                    iface_id: Some("port-inst1"),
                },
                HostPort {
                    name: "vm2",
                    iface: "vm2",
                    kind: "instance",
                    iface_id: Some("port-inst2"),
                },
                HostPort {
                    name: "vm3",
                    iface: "vm3",
                    kind: "instance",
                    iface_id: Some("port-inst3"),
                },
                HostPort {
                    name: "uplink",
                    iface: "uplink",
                    kind: "provider",
                    iface_id: None,
                },
            ],
            &[("provider", "uplink")],
        );
        let vs = Vswitchd::start(&topo, &sw, &host, STATE_YAML);
        eprintln!(
            "[{}] topology and vswitchd up in {:?}",
            topo.name,
            started.elapsed()
        );
        Some(Lab {
            vs: Some(vs),
            topo,
            inst1,
            inst2,
            inst3,
            prov,
            started,
        })
    }

    fn stats(&mut self) -> Stats {
        self.vs.as_mut().expect("vswitchd running").stats()
    }

    /// Kernel ping, 0.2 s apart, giving up after 4 s; returns ping's exit code (0: all
    /// answered, 1: some lost) and its output.
    fn ping(&self, ns: &str, dst: &str, count: u32) -> (i32, String) {
        self.ping_deadline(ns, dst, count, 4)
    }

    fn ping_deadline(&self, ns: &str, dst: &str, count: u32, deadline_s: u32) -> (i32, String) {
        let (c, w) = (count.to_string(), deadline_s.to_string());
        let out = self.topo.exec(
            ns,
            &[
                "ping", "-n", "-c", &c, "-i", "0.2", "-W", "1", "-w", &w, dst,
            ],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// Runs a python snippet (with scapy available) inside `ns`; asserts success.
    fn py(&self, ns: &str, code: &str, args: &[&str]) -> String {
        let mut a = vec![python(), "-c", code];
        a.extend_from_slice(args);
        self.topo.ok(ns, &a)
    }

    /// Stops vswitchd (exit 0, no mbuf leaked) and reports the test's duration.
    fn finish(mut self) -> Stats {
        let st = self.vs.take().expect("vswitchd running").stop();
        eprintln!(
            "[{}] done in {:?}; drops: {:?}",
            self.topo.name,
            self.started.elapsed(),
            st.nonzero_drops()
        );
        st
    }
}

/// Sends frames with scapy: `send_frames.py IFACE SRC_MAC DST_MAC SRC_IP DST_IP COUNT TAG`
/// sends COUNT ICMP echo requests with ICMP id TAG.
const SEND_FRAMES_PY: &str = r#"
import sys
from scapy.config import conf
conf.verb = 0
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.sendrecv import sendp
iface, smac, dmac, sip, dip, count, tag = sys.argv[1:8]
frames = [Ether(src=smac, dst=dmac) / IP(src=sip, dst=dip) / ICMP(id=int(tag), seq=i) / Raw(b"spoof-test" * 4)
          for i in range(int(count))]
sendp(frames, iface=iface, inter=0.005)
print("sent", len(frames))
"#;

/// Sends `count` ICMP echo requests (ICMP id `tag`) from `ns` with scapy, from
/// `(src_mac, src_ip)` to `(dst_mac, dst_ip)`, whatever the namespace's own addresses are.
fn send_frames(lab: &Lab, ns: &str, src: (&str, &str), dst: (&str, &str), count: u32, tag: u16) {
    let (count_s, tag_s) = (count.to_string(), tag.to_string());
    let args = ["eth0", src.0, dst.0, src.1, dst.1, &count_s, &tag_s];
    let out = lab.py(ns, SEND_FRAMES_PY, &args);
    assert!(out.contains(&format!("sent {count}")), "sender said: {out}");
}

#[test]
fn same_network_ping_and_tcp() {
    let Some(mut lab) = Lab::start("same") else {
        return;
    };
    let before = lab.stats();

    let (rc, text) = lab.ping(&lab.inst1, INST2_IP, 3);
    assert_eq!(rc, 0, "inst1 -> inst2 ping failed:\n{text}");
    assert!(text.contains("3 received"), "{text}");

    // 8 MiB inst2 -> inst1 over TCP, checked end to end with a SHA-256.
    const BYTES: usize = 8 << 20;
    tcp_transfer(&lab.topo, &lab.inst2, &lab.inst1, INST1_IP, 5001, BYTES);

    let after = lab.stats();
    let d = |p: &str| {
        let (a, b) = (after.port(p), before.port(p));
        (a.rx_packets - b.rx_packets, a.tx_packets - b.tx_packets)
    };
    // The data crossed vm2 -> vm1: at least 8 MiB / 1500 B frames each way through the switch.
    let (vm2_rx, _) = d("vm2");
    let (_, vm1_tx) = d("vm1");
    assert!(
        vm2_rx as usize >= BYTES / 1500 && vm1_tx as usize >= BYTES / 1500,
        "vm2 rx {vm2_rx}, vm1 tx {vm1_tx}"
    );
    // Byte counters on both sides of the switch account for at least the payload.
    let vm2_rx_bytes = after.port("vm2").rx_bytes - before.port("vm2").rx_bytes;
    let vm1_tx_bytes = after.port("vm1").tx_bytes - before.port("vm1").tx_bytes;
    assert!(
        vm2_rx_bytes >= BYTES as u64,
        "vm2 rx_bytes grew by {vm2_rx_bytes}, less than the {BYTES} bytes of payload it received"
    );
    assert!(
        vm1_tx_bytes >= BYTES as u64,
        "vm1 tx_bytes grew by {vm1_tx_bytes}, less than the {BYTES} bytes of payload it sent"
    );
    // Nothing from the instances was taken for spoofed.
    for r in [
        "port_security.spoofed_mac",
        "port_security.spoofed_ipv4",
        "port_security.spoofed_arp",
    ] {
        assert_eq!(
            after.drop(r),
            before.drop(r),
            "{r} grew during legitimate traffic"
        );
    }
    lab.finish();
}

/// Frames of tcpdump lines whose source MAC (first field) is `mac`.
fn from_mac<'a>(lines: &'a [String], mac: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("{mac} >")))
        .collect()
}

#[test]
fn networks_are_isolated() {
    let Some(mut lab) = Lab::start("iso") else {
        return;
    };
    // Give each instance an on-link route to the other network so that it really ARPs and
    // sends on eth0 (without one the kernel answers "Network is unreachable" itself).
    lab.topo.ok(
        &lab.inst1,
        &["ip", "route", "add", "198.51.100.0/24", "dev", "eth0"],
    );
    lab.topo.ok(
        &lab.inst3,
        &["ip", "route", "add", "203.0.113.0/24", "dev", "eth0"],
    );

    // provider1 -> flat1: broadcast ARP (kernel) and unicast straight to inst3's MAC (scapy).
    let cap3 = lab.topo.capture(&lab.inst3, "eth0", "cap-inst3");
    let s0 = lab.stats();
    let (rc, text) = lab.ping_deadline(&lab.inst1, INST3_IP, 2, 2);
    assert_eq!(
        rc, 1,
        "inst1 -> inst3 (other network) must get no reply:\n{text}"
    );
    send_frames(
        &lab,
        &lab.inst1,
        (INST1_MAC, INST1_IP),
        (INST3_MAC, INST3_IP),
        5,
        0x1111,
    );
    send_frames(
        &lab,
        &lab.inst1,
        (INST1_MAC, INST1_IP),
        ("ff:ff:ff:ff:ff:ff", INST3_IP),
        5,
        0x1112,
    );
    // The switch did get them (1+ ARP request and 10 scapy frames)...
    let s1 = lab.stats();
    let vm1_rx = s1.port("vm1").rx_packets - s0.port("vm1").rx_packets;
    assert!(
        vm1_rx >= 11,
        "vswitchd received only {vm1_rx} frames from inst1"
    );
    // ... and inst3 does receive frames from its own network (positive control).
    let (rc, text) = lab.ping(&lab.prov, INST3_IP, 2);
    assert_eq!(
        rc, 0,
        "provider host -> inst3 (same flat network) failed:\n{text}"
    );
    let seen3 = cap3.stop();
    let leaked = from_mac(&seen3, INST1_MAC);
    assert!(
        leaked.is_empty(),
        "inst3 saw {} frames from inst1:\n{leaked:#?}",
        leaked.len()
    );
    assert!(
        !from_mac(&seen3, PROV_MAC).is_empty(),
        "capture on inst3 saw nothing from its own network: {seen3:#?}"
    );

    // flat1 -> provider1, the reverse direction.
    let cap1 = lab.topo.capture(&lab.inst1, "eth0", "cap-inst1");
    let s0 = lab.stats();
    let (rc, text) = lab.ping_deadline(&lab.inst3, INST1_IP, 2, 2);
    assert_eq!(
        rc, 1,
        "inst3 -> inst1 (other network) must get no reply:\n{text}"
    );
    send_frames(
        &lab,
        &lab.inst3,
        (INST3_MAC, INST3_IP),
        (INST1_MAC, INST1_IP),
        5,
        0x3333,
    );
    send_frames(
        &lab,
        &lab.inst3,
        (INST3_MAC, INST3_IP),
        ("ff:ff:ff:ff:ff:ff", INST1_IP),
        5,
        0x3334,
    );
    let s1 = lab.stats();
    let vm3_rx = s1.port("vm3").rx_packets - s0.port("vm3").rx_packets;
    assert!(
        vm3_rx >= 11,
        "vswitchd received only {vm3_rx} frames from inst3"
    );
    let (rc, text) = lab.ping(&lab.inst2, INST1_IP, 2);
    assert_eq!(rc, 0, "inst2 -> inst1 (same network) failed:\n{text}");
    let seen1 = cap1.stop();
    let leaked = from_mac(&seen1, INST3_MAC);
    assert!(
        leaked.is_empty(),
        "inst1 saw {} frames from inst3:\n{leaked:#?}",
        leaked.len()
    );
    assert!(
        !from_mac(&seen1, INST2_MAC).is_empty(),
        "capture on inst1 saw nothing from inst2: {seen1:#?}"
    );

    let st = lab.stats();
    assert!(st.event("integration.flooded") > 0);
    lab.finish();
}

#[test]
fn provider_vlan_host_reaches_instance() {
    let Some(mut lab) = Lab::start("prov") else {
        return;
    };
    let before = lab.stats();
    let cap = lab.topo.capture(&lab.prov, "eth0", "cap-prov");

    // The scapy VLAN 101 peer pings inst1 (provider1 = VLAN 101 on physnet provider).
    let peer = [
        python(),
        VLAN_HOST_PY,
        "--iface",
        "eth0",
        "--vid",
        "101",
        "--ip",
        VLAN_PEER_IP,
        "--mac",
        VLAN_PEER_MAC,
    ];
    let mut ping = peer.to_vec();
    ping.extend_from_slice(&["ping", INST1_IP, "--count", "3"]);
    let out = lab.topo.exec(&lab.prov, &ping);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "VLAN peer -> inst1 ping failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 transmitted, 3 received"), "{text}");

    // And the other way: inst2 pings the peer, which answers as a server.
    let mut serve = peer.to_vec();
    serve.push("serve");
    let mut server = lab.topo.spawn(&lab.prov, "vlan-peer", &serve);
    assert!(
        server.wait_for("ready", Duration::from_secs(10)),
        "vlan peer did not start: {}",
        server.stderr_text()
    );
    let (rc, text) = lab.ping(&lab.inst2, VLAN_PEER_IP, 3);
    assert_eq!(rc, 0, "inst2 -> VLAN peer ping failed:\n{text}");
    let st = server.stop("TERM", Duration::from_secs(10));
    assert!(st.success(), "vlan peer: {st}");

    // The kernel provider host, untagged on flat1, pings inst3.
    let (rc, text) = lab.ping(&lab.prov, INST3_IP, 3);
    assert_eq!(rc, 0, "provider host (flat) -> inst3 ping failed:\n{text}");

    let lines = cap.stop();
    let is_tagged_101 =
        |l: &str| l.contains("ethertype 802.1Q (0x8100)") && l.contains("vlan 101,");
    for (ip, min) in [(INST1_IP, 6), (INST2_IP, 6)] {
        let frames: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(&format!("{ip} >")) || l.contains(&format!("> {ip}:")))
            .collect();
        assert!(
            frames.len() >= min,
            "expected >= {min} frames to/from {ip} on the uplink, got {frames:#?}"
        );
        let untagged: Vec<_> = frames.iter().filter(|l| !is_tagged_101(l)).collect();
        assert!(
            untagged.is_empty(),
            "frames of {ip} on the uplink without VLAN 101: {untagged:#?}"
        );
    }
    let flat: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&format!("{INST3_IP} >")) || l.contains(&format!("> {INST3_IP}:")))
        .collect();
    assert!(
        flat.len() >= 6,
        "expected >= 6 frames to/from {INST3_IP}, got {flat:#?}"
    );
    let tagged: Vec<_> = flat
        .iter()
        .filter(|l| l.contains("802.1Q") || l.contains("vlan "))
        .collect();
    assert!(
        tagged.is_empty(),
        "flat network traffic on the uplink is tagged: {tagged:#?}"
    );

    let after = lab.stats();
    assert!(after.event("provider.vlan_pushed") - before.event("provider.vlan_pushed") >= 6);
    assert!(after.event("provider.vlan_popped") - before.event("provider.vlan_popped") >= 6);
    lab.finish();
}

#[test]
fn spoofed_mac_and_ip_are_dropped_and_counted() {
    let Some(mut lab) = Lab::start("spoof") else {
        return;
    };
    // Learn inst2's neighbour entry first so that the only traffic later is what we send.
    let (rc, text) = lab.ping(&lab.inst1, INST2_IP, 1);
    assert_eq!(rc, 0, "inst1 -> inst2 ping failed:\n{text}");
    let cap = lab.topo.capture(&lab.inst2, "eth0", "cap-inst2");
    let before = lab.stats();

    send_frames(
        &lab,
        &lab.inst1,
        (SPOOF_MAC, INST1_IP),
        (INST2_MAC, INST2_IP),
        20,
        0x5151,
    );
    send_frames(
        &lab,
        &lab.inst1,
        (INST1_MAC, SPOOF_IP),
        (INST2_MAC, INST2_IP),
        20,
        0x5152,
    );
    // Positive control: the same sender with the right MAC and IP gets through.
    send_frames(
        &lab,
        &lab.inst1,
        (INST1_MAC, INST1_IP),
        (INST2_MAC, INST2_IP),
        2,
        0x5153,
    );
    std::thread::sleep(Duration::from_millis(300));

    let after = lab.stats();
    let lines = cap.stop();
    let delta = |r: &str| after.drop(r) - before.drop(r);
    assert_eq!(
        delta("port_security.spoofed_mac"),
        20,
        "spoofed_mac delta; drops now {:?}",
        after.nonzero_drops()
    );
    assert_eq!(
        delta("port_security.spoofed_ipv4"),
        20,
        "spoofed_ipv4 delta; drops now {:?}",
        after.nonzero_drops()
    );
    let spoofed: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(SPOOF_MAC) || l.contains(SPOOF_IP))
        .collect();
    assert!(
        spoofed.is_empty(),
        "inst2 received spoofed frames: {spoofed:#?}"
    );
    let good = lines
        .iter()
        .filter(|l| {
            l.starts_with(&format!("{INST1_MAC} >"))
                && l.contains(&format!("{INST1_IP} > {INST2_IP}: ICMP echo request"))
        })
        .count();
    assert_eq!(
        good, 2,
        "inst2 should see exactly the 2 legitimate frames: {lines:#?}"
    );
    lab.finish();
}
