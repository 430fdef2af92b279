//! System test of centralized SNAT: the seed's "North-south scenario 1: Instance with a fixed
//! IP address" (shared/seed/ovs-dvr-ha.txt). Instances without a floating IP on two compute
//! nodes reach the Internet through router1's SNAT port on the network node (`dvr_snat`),
//! which translates them to the router's gateway address 203.0.113.11, a source port per
//! connection, as Neutron's snat namespace does.
//!
//! ```text
//!  compute1 (sw1)                 compute2 (sw2)               network1 (sw3, dvr_snat)
//!  i1 198.51.100.4 ─ vm1 ┐        i2 198.51.100.5 ─ vm2 ┐      SNAT port 198.51.100.10
//!                vswitchd                       vswitchd        gateway port 203.0.113.11 ─┐
//!                 ul 10.0.0.11                   ul 10.0.0.12   vswitchd ─ uplink (provider)│
//!                   │                              │             ul 10.0.0.13               │
//!                   └──── br0 (namespace ulnet) ───┴──────────────┘          Internet (inet)│
//!                                                                eth0 ══ VLAN 101 ═════════┘
//!                                                                eth0.101 203.0.113.1/24
//!                                                                lo 100.64.0.9 (the host)
//!
//!  selfservice1  VXLAN VNI 101, 198.51.100.0/24, MTU 1450; router1 (distributed) at .1
//!  provider1     VLAN 101 on physnet provider, 203.0.113.0/24, gateway .1, router:external
//!  router1       external gateway 203.0.113.11 (enable_snat), SNAT port on network1
//! ```
//!
//! Both instances ping the Internet host and exchange data with its TCP server, which sees
//! the router's gateway address, never a fixed IP; a 1,500-byte UDP answer (DF clear) comes
//! back to i1 in the two fragments network1's router cuts for the 1450-byte network; i1's
//! 2 MiB to a server that reads nothing for 2 s (a zero window, probed by i1's kernel until
//! it opens) arrive whole with nothing dropped on the way; 20
//! connections opened together from both instances get 20 distinct source ports; with
//! `[conntrack] snat_ports = [20000, 20002]`
//! (network1 restarted), three long-lived connections to the server work, a fourth finds no
//! port (its SYNs are dropped, counted as `router.snat_exhausted`: the client times out) and
//! the three still carry data afterwards. The provider veth shows VLAN 101 only, the gateway
//! port's ARP request for 203.0.113.1 and every frame from 203.0.113.11 with the gateway
//! port's MAC; the underlay shows compute1 sending to the SNAT port's MAC at network1's VTEP
//! from its DVR MAC. Counters: router.to_snat on the compute nodes (no floating IP event),
//! router.snat_out / router.snat_in on network1.
//!
//! `floating_ip_reached_from_instances_on_another_host` adds floating IPs to the same hosts
//! (203.0.113.17 for a third instance i3 on compute1, 203.0.113.19 for i2; compute1 and
//! compute2 get their fg ports and provider ports, the three provider ports one Linux bridge):
//! i1 (fixed IP only) and i3 reach 203.0.113.19 over ICMP and TCP, i1 through network1's SNAT
//! (i2 sees 203.0.113.11), i3 from its own floating IP; on compute2's provider link the
//! routers ask each other for their addresses and send straight to each other's MACs.
//!
//! The kernel's 802.1Q is replaced by a user-space VLAN bridge where it is missing (as in
//! system_fip). Everything lives in the test's namespaces (torn down on drop, also on panic);
//! every vswitchd must exit 0 with no mbuf leaked. Needs root; without root the test prints
//! "skipped: needs root and DPDK" and passes. Run: `cargo test -p vswitch --test system_snat
//! -- --test-threads=1 --nocapture`.
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{
    add_internet, big_udp_exchange, host_toml_overlay, instance_and_overlay_ports,
    late_udp_answer_refused, ping_ok, python, python_server, tcp_transfer_to_a_stalled_reader,
    tshark_fields, udp_refused, udp_stream_one_way, Bg, HostPort, InstanceNet, OverlayHost, Stats,
    Topology, Vswitchd, EXT_GW_IP, EXT_GW_MAC, INET_IP, VID,
};

const I1_MAC: &str = "fa:16:3e:00:01:04";
const I1_IP: &str = "198.51.100.4";
const I2_MAC: &str = "fa:16:3e:00:01:05";
const I2_IP: &str = "198.51.100.5";
const GW1_MAC: &str = "fa:16:3e:aa:00:01";
const GW1_IP: &str = "198.51.100.1";
const SNAT_MAC: &str = "fa:16:3e:bb:00:01";
const SNAT_IP: &str = "198.51.100.10";
/// router1's gateway port on provider1 (on network1).
const QG_MAC: &str = "fa:16:3e:bb:00:03";
const QG_IP: &str = "203.0.113.11";
// Underlay.
const VTEP1: &str = "10.0.0.11";
const VTEP2: &str = "10.0.0.12";
const VTEP3: &str = "10.0.0.13";
const UL1_MAC: &str = "02:00:00:00:00:11";
const UL2_MAC: &str = "02:00:00:00:00:12";
const UL3_MAC: &str = "02:00:00:00:00:13";
const DVR1_MAC: &str = "fa:16:3f:00:00:11";
const DVR2_MAC: &str = "fa:16:3f:00:00:12";
const DVR3_MAC: &str = "fa:16:3f:00:00:13";
/// The Internet host's TCP server.
const PORT: u16 = 5001;
/// The deliberately tiny port range of the exhaustion phase.
const TINY: [u16; 2] = [20000, 20002];

const SNAP: &str = "160";

/// The desired state (the same file on all three hosts): selfservice1 and provider1; router1
/// (distributed) with its interface on selfservice1, its SNAT port on selfservice1 and its
/// gateway port on provider1, both bound to network1; i1 on compute1 and i2 on compute2 in a
/// group that allows anything out and nothing new in. No floating IPs.
fn state_yaml() -> String {
    format!(
        r#"
networks:
  - id: net-selfservice1
    name: selfservice1
    provider:network_type: vxlan
    provider:segmentation_id: 101
    mtu: 1450
  - id: net-provider1
    name: provider1
    provider:network_type: vlan
    provider:physical_network: provider
    provider:segmentation_id: {VID}
    router:external: true
    mtu: 1500
subnets:
  - {{id: subnet-ss1-v4, name: selfservice1-v4, network_id: net-selfservice1, cidr: 198.51.100.0/24, ip_version: 4, gateway_ip: {GW1_IP}, enable_dhcp: false}}
  - {{id: subnet-provider1-v4, name: provider1-v4, network_id: net-provider1, cidr: 203.0.113.0/24, ip_version: 4, gateway_ip: {EXT_GW_IP}, enable_dhcp: false}}
routers:
  - id: router1-id
    name: router1
    distributed: true
    external_gateway_info:
      network_id: net-provider1
      enable_snat: true
      external_fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: {QG_IP}}}]
ports:
  - id: port-router1-ss1
    network_id: net-selfservice1
    mac_address: "{GW1_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {GW1_IP}}}]
    device_owner: network:router_interface_distributed
    device_id: router1-id
  - id: port-router1-snat
    network_id: net-selfservice1
    mac_address: "{SNAT_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {SNAT_IP}}}]
    binding:host_id: network1
    device_owner: network:router_centralized_snat
    device_id: router1-id
  - id: port-router1-gw
    network_id: net-provider1
    mac_address: "{QG_MAC}"
    fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: {QG_IP}}}]
    binding:host_id: network1
    device_owner: network:router_gateway
    device_id: router1-id
  - id: port-i1
    network_id: net-selfservice1
    mac_address: "{I1_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {I1_IP}}}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-out]
  - id: port-i2
    network_id: net-selfservice1
    mac_address: "{I2_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {I2_IP}}}]
    binding:host_id: compute2
    device_owner: compute:nova
    security_groups: [sg-out]
# Anything out, nothing new in: the replies come in as established connections.
security_groups:
  - {{id: sg-out, name: out-only}}
security_group_rules:
  - {{id: out4, security_group_id: sg-out, direction: egress, ethertype: IPv4}}
hosts:
  - {{host: compute1, vtep_ip: {VTEP1}, dvr_mac: "{DVR1_MAC}"}}
  - {{host: compute2, vtep_ip: {VTEP2}, dvr_mac: "{DVR2_MAC}"}}
  - {{host: network1, vtep_ip: {VTEP3}, dvr_mac: "{DVR3_MAC}"}}
"#
    )
}

/// A compute host: its instance ports, the overlay port on `ul` (`[overlay] mtu = 1500`) and,
/// with `provider`, the provider port `uplink` for physnet "provider" (a host with floating
/// IPs).
fn compute_toml(
    host: &str,
    prefix: &str,
    vtep: &str,
    inst: &[(&str, &str)],
    provider: bool,
) -> String {
    let mut ports = instance_and_overlay_ports(inst);
    let mut mappings = Vec::new();
    if provider {
        ports.push(HostPort {
            name: "uplink",
            iface: "uplink",
            kind: "provider",
            iface_id: None,
        });
        mappings.push(("provider", "uplink"));
    }
    let overlay = OverlayHost {
        local_vtep_ip: vtep,
        settings: &["mtu = 1500"],
        ..OverlayHost::default()
    };
    host_toml_overlay(host, prefix, &ports, &mappings, Some(&overlay))
}

/// network1: role `dvr_snat`, the overlay port on `ul`, the provider port `uplink` for physnet
/// "provider", and the SNAT port range `snat_ports`; with `workers` = 2, two workers (both on
/// CPU 1) and two af_packet queue pairs per port, the kernel spreading flows over them, so
/// connections and their replies arrive on either worker and SNAT hands them to their owner.
fn network_toml(prefix: &str, snat_ports: [u16; 2], workers: u16) -> String {
    let ports = [
        HostPort {
            name: "overlay",
            iface: "ul",
            kind: "overlay",
            iface_id: None,
        },
        HostPort {
            name: "uplink",
            iface: "uplink",
            kind: "provider",
            iface_id: None,
        },
    ];
    let overlay = OverlayHost {
        local_vtep_ip: VTEP3,
        settings: &["mtu = 1500"],
        ..OverlayHost::default()
    };
    let base = host_toml_overlay(
        "network1",
        prefix,
        &ports,
        &[("provider", "uplink")],
        Some(&overlay),
    );
    assert!(base.starts_with("role = \"dvr\"\n"), "{base}");
    let mut body = base["role = \"dvr\"\n".len()..].to_string();
    if workers == 2 {
        assert!(body.contains("cores = [1]\n"), "{body}");
        body = body.replace("cores = [1]\n", "cores = [1, 2]\n");
        for iface in ["ul", "uplink"] {
            let from = format!("iface={iface}\"\n");
            assert!(body.contains(&from), "{body}");
            body = body.replace(&from, &format!("iface={iface},qpairs=2\"\nrx_queues = 2\n"));
        }
        body.push_str("\n[lcore_cpus]\n\"2\" = 1\n");
    }
    format!(
        "role = \"dvr_snat\"\n{body}\n[conntrack]\nsnat_ports = [{}, {}]\n",
        snat_ports[0], snat_ports[1]
    )
}

/// Starts compute node `n` (`compute<n>`, VTEP 10.0.0.1<n>) in `sw` with an instance port
/// `vm<k>` carrying Neutron port `port-i<k>` for each `k` of `instances`, and the provider port
/// when `provider` (see [`compute_toml`]).
fn start_compute(
    topo: &Topology,
    sw: &str,
    n: u8,
    instances: &[u8],
    provider: bool,
    state: &str,
) -> Vswitchd {
    let (host, vtep) = (format!("compute{n}"), format!("10.0.0.1{n}"));
    let names: Vec<(String, String)> = instances
        .iter()
        .map(|k| (format!("vm{k}"), format!("port-i{k}")))
        .collect();
    let inst: Vec<(&str, &str)> = names.iter().map(|(v, p)| (&v[..], &p[..])).collect();
    Vswitchd::start_as(
        topo,
        sw,
        &format!("vswitchd-c{n}"),
        &compute_toml(
            &host,
            &format!("{}-c{n}", topo.name),
            &vtep,
            &inst,
            provider,
        ),
        state,
    )
}

/// Starts network1 in `sw` as `label` (`vswitchd-<label>`), see [`network_toml`].
fn start_network(
    topo: &Topology,
    sw: &str,
    label: &str,
    snat_ports: [u16; 2],
    workers: u16,
    state: &str,
) -> Vswitchd {
    Vswitchd::start_as(
        topo,
        sw,
        &format!("vswitchd-{label}"),
        &network_toml(&format!("{}-{label}", topo.name), snat_ports, workers),
        state,
    )
}

/// A topology `tag` (see [`Topology::new`]; `None`: system tests are skipped here) with the
/// switch namespaces of compute1, compute2 and network1 on one underlay; also returns the
/// underlay's namespace.
fn three_hosts(tag: &str) -> Option<(Topology, [String; 3], String)> {
    let mut topo = Topology::new(tag)?;
    let sw = ["sw1", "sw2", "sw3"].map(|role| topo.add_switch_ns(role));
    let ulnet = add_underlay(
        &mut topo,
        &[(&sw[0], UL1_MAC), (&sw[1], UL2_MAC), (&sw[2], UL3_MAC)],
    );
    Some((topo, sw, ulnet))
}

/// The underlay: [`add_segment`] `ulnet` with each switch's `ul` plugged in (the switch ends
/// carry the given MACs: af_packet takes them as the overlay ports').
fn add_underlay(topo: &mut Topology, switches: &[(&str, &str)]) -> String {
    let ends: Vec<(&str, Option<&str>)> = switches.iter().map(|&(sw, m)| (sw, Some(m))).collect();
    add_segment(topo, "ulnet", "ul", &ends)
}

/// One Ethernet segment: a Linux bridge `br0` in a new namespace `role`, with interface `dev`
/// of each switch namespace plugged in as `p1`, `p2`, ... (in the order given; with a MAC, the
/// switch end gets it). Tagged frames cross it as they are; the bridge itself says nothing
/// (no multicast snooping: it would join 224.0.0.106 and report it on every port).
fn add_segment(
    topo: &mut Topology,
    role: &str,
    dev: &str,
    ends: &[(&str, Option<&str>)],
) -> String {
    let ns = topo.add_ns(role);
    topo.disable_ipv6(&ns);
    topo.ok(
        &ns,
        &[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    );
    for (i, (sw, mac)) in ends.iter().enumerate() {
        let p = format!("p{}", i + 1);
        topo.veth(sw, dev, &ns, &p);
        match mac {
            Some(mac) => topo.set_mac_up(sw, dev, mac),
            None => {
                topo.ok(sw, &["ip", "link", "set", dev, "up"]);
            }
        }
        topo.ok(&ns, &["ip", "link", "set", &p, "master", "br0"]);
        topo.ok(&ns, &["ip", "link", "set", &p, "up"]);
    }
    topo.ok(&ns, &["ip", "link", "set", "br0", "up"]);
    ns
}

/// An instance's `eth0` on selfservice1 (`cidr`, MTU 1450, router1 as default gateway).
fn selfservice1<'a>(mac: &'a str, cidr: &'a str) -> InstanceNet<'a> {
    InstanceNet::v4(mac, cidr, 1450, Some(GW1_IP))
}

// --- traffic --------------------------------------------------------------------------------

/// The Internet host's TCP server on `argv[1]:argv[2]`: accepts connections (at most
/// `argv[3]`; it stops accepting after `argv[4]` seconds without a new one), echoes what each
/// sends until EOF, one thread per connection; prints "peer IP PORT" per connection and
/// "closed IP PORT BYTES" when one ends, then "done" once every connection ended.
const SERVER_PY: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
s.settimeout(float(sys.argv[4]))
lock = threading.Lock()
def say(*a):
    with lock:
        print(*a, flush=True)
def serve(c, peer):
    c.settimeout(30)
    n = 0
    try:
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            c.sendall(b)
            n += len(b)
    finally:
        c.close()
        say("closed", peer[0], peer[1], n)
say("listening")
threads = []
try:
    for _ in range(int(sys.argv[3])):
        c, peer = s.accept()
        say("peer", peer[0], peer[1])
        t = threading.Thread(target=serve, args=(c, peer))
        t.start()
        threads.append(t)
except socket.timeout:
    pass
for t in threads:
    t.join()
say("done")
"#;

/// `argv[3]` TCP connections to `argv[1]:argv[2]`, all opened before any carries data; then
/// each sends `argv[4]` random bytes (from a thread of its own) and reads the echo until
/// EOF, checked. Prints "conn LOCALPORT ok" per connection and "all N" at the end.
const CLIENTS_PY: &str = r#"
import os, socket, sys, threading
dst, n, size = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
conns = [socket.create_connection(dst, timeout=10) for _ in range(n)]
res = {}
def run(i, c):
    data = os.urandom(size)
    def send():
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    back = bytearray()
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        back += b
    t.join()
    res[i] = (c.getsockname()[1], back == data)
    c.close()
ts = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(conns)]
for t in ts:
    t.start()
for t in ts:
    t.join()
for i in range(n):
    port, ok = res[i]
    print("conn", port, "ok" if ok else "CORRUPT")
print("all", n)
"#;

/// The exhaustion phase from one instance: opens 3 connections to `argv[1]:argv[2]` and keeps
/// them; a 4th gets 4 s to connect ("fourth timed out" / "fourth connected" / "fourth error
/// ..."); then each of the 3 exchanges 1000 bytes ("alive PORT"), and all close.
const HOLD_PY: &str = r#"
import os, socket, sys
dst = (sys.argv[1], int(sys.argv[2]))
held = [socket.create_connection(dst, timeout=8) for _ in range(3)]
for c in held:
    print("held", c.getsockname()[1], flush=True)
try:
    x = socket.create_connection(dst, timeout=4)
    print("fourth connected", x.getsockname()[1], flush=True)
    x.close()
except socket.timeout:
    print("fourth timed out", flush=True)
except OSError as e:
    print("fourth error", e, flush=True)
for c in held:
    data = os.urandom(1000)
    c.sendall(data)
    back = bytearray()
    while len(back) < len(data):
        b = c.recv(4096)
        if not b:
            break
        back += b
    print("alive" if back == data else "broken", c.getsockname()[1], flush=True)
for c in held:
    c.close()
"#;

/// Starts [`SERVER_PY`] in `ns` on `bind`:[`PORT`] for `max` connections.
fn start_server(
    topo: &Topology,
    (ns, bind): (&str, &str),
    label: &str,
    max: usize,
    idle_s: u32,
) -> Bg {
    let (port, max, idle) = (PORT.to_string(), max.to_string(), idle_s.to_string());
    python_server(topo, ns, label, SERVER_PY, &[bind, &port, &max, &idle])
}

/// Waits for the server to print "done" and exit 0; returns the peers it accepted (address,
/// port) and the lines it printed.
fn server_peers(bg: Bg) -> (Vec<(String, u16)>, String) {
    let (label, out) = (bg.label.clone(), bg.stdout.clone());
    let st = bg.wait(Duration::from_secs(40));
    let text = std::fs::read_to_string(out).unwrap_or_default();
    assert!(st.success(), "{label} failed ({st}):\n{text}");
    assert!(text.lines().any(|l| l == "done"), "{label}:\n{text}");
    let peers = text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[0] == "peer").then(|| (w[1].to_owned(), w[2].parse().unwrap()))
        })
        .collect();
    (peers, text)
}

/// Starts [`CLIENTS_PY`] in `ns` in the background, to `dst`:[`PORT`].
fn start_clients(
    topo: &Topology,
    (ns, dst): (&str, &str),
    label: &str,
    n: usize,
    size: usize,
) -> Bg {
    let (port, n, size) = (PORT.to_string(), n.to_string(), size.to_string());
    topo.spawn(
        ns,
        label,
        &[python(), "-c", CLIENTS_PY, dst, &port, &n, &size],
    )
}

/// Waits for a [`start_clients`] run: every connection echoed its bytes intact. Returns the
/// clients' local ports.
fn clients_ok(bg: Bg, n: usize) -> Vec<u16> {
    let (label, out, err) = (bg.label.clone(), bg.stdout.clone(), bg.stderr.clone());
    let st = bg.wait(Duration::from_secs(40));
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let etext = std::fs::read_to_string(err).unwrap_or_default();
    assert!(st.success(), "{label} failed ({st}):\n{text}\n{etext}");
    assert!(
        text.lines().any(|l| l == format!("all {n}")),
        "{label}:\n{text}"
    );
    let conns: Vec<&str> = text.lines().filter(|l| l.starts_with("conn ")).collect();
    assert_eq!(conns.len(), n, "{label}:\n{text}");
    assert!(
        conns.iter().all(|l| l.ends_with(" ok")),
        "{label}: data came back altered:\n{text}"
    );
    conns
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

/// The event counters that are not zero (for the log).
fn nonzero_events(s: &Stats) -> Vec<String> {
    s.0["events"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default()
}

// --- captures -------------------------------------------------------------------------------

/// The provider veth (the Internet side): every frame on VLAN 101; no fixed IP; the gateway
/// port asked for 203.0.113.1 from its MAC and address; every frame from 203.0.113.11 has the
/// gateway port's MAC as source, the external gateway's as destination, TTL 62 (the
/// instance's 64, routed twice: by router1 on the compute node and by its SNAT router on
/// network1, as through Neutron's qrouter and snat namespaces) and a good checksum. Returns how many frames from 203.0.113.11 it saw (ICMP, TCP).
fn assert_provider_wire(pcap: &Path) -> (usize, usize) {
    let all = tshark_fields(pcap, "", &["eth.src", "vlan.id"], false);
    assert!(all.len() > 50, "too few frames on the provider veth");
    let untagged: Vec<_> = all.iter().filter(|f| f[1] != VID).collect();
    assert!(
        untagged.is_empty(),
        "{} of {} frames on the provider veth are not on VLAN {VID}: {:?}",
        untagged.len(),
        all.len(),
        &untagged[..untagged.len().min(10)]
    );
    let fixed = tshark_fields(
        pcap,
        "ip.addr == 198.51.100.0/24",
        &["eth.src", "ip.src", "ip.dst"],
        false,
    );
    assert!(
        fixed.is_empty(),
        "a self-service address appeared on the provider network: {fixed:?}"
    );
    let asks = tshark_fields(
        pcap,
        &format!("arp.opcode == 1 && arp.dst.proto_ipv4 == {EXT_GW_IP}"),
        &[
            "eth.src",
            "eth.dst",
            "vlan.id",
            "arp.src.hw_mac",
            "arp.src.proto_ipv4",
        ],
        false,
    );
    assert!(
        !asks.is_empty(),
        "no ARP request for {EXT_GW_IP} on the provider veth"
    );
    for a in &asks {
        assert_eq!(
            a[..],
            [QG_MAC, "ff:ff:ff:ff:ff:ff", VID, QG_MAC, QG_IP],
            "ARP request for {EXT_GW_IP}: (eth.src, eth.dst, vlan, sender MAC, sender IP)"
        );
    }
    let from_qg = tshark_fields(
        pcap,
        &format!("ip.src == {QG_IP}"),
        &[
            "eth.src",
            "eth.dst",
            "vlan.id",
            "ip.ttl",
            "ip.checksum.status",
            "ip.proto",
            "ip.dst",
            "ip.src",
        ],
        true,
    );
    // Sent from the gateway address, not only quoting it (an ICMP error to it matches
    // `ip.src` by its quote; the fields are the outer header's).
    let from_qg: Vec<_> = from_qg.into_iter().filter(|f| f[7] == QG_IP).collect();
    for f in &from_qg {
        assert_eq!(
            f[..5],
            [QG_MAC, EXT_GW_MAC, VID, "62", "1"],
            "a frame from {QG_IP}: (eth.src, eth.dst, vlan, TTL, checksum good): {f:?}"
        );
        assert_eq!(f[6], INET_IP, "a frame from {QG_IP}: {f:?}");
    }
    let count = |p: &str| from_qg.iter().filter(|f| f[5] == p).count();
    (count("1"), count("6"))
}

/// The underlay at compute1's bridge port: compute1's frames for the Internet host go to network1's VTEP on
/// VNI 101, from compute1's DVR MAC to the SNAT port's MAC; the replies come back from
/// network1 to compute1 from the SNAT port's MAC to the instance. Returns (out, back).
fn assert_underlay(pcap: &Path) -> (usize, usize) {
    let fields = ["ip.src", "ip.dst", "vxlan.vni", "eth.src", "eth.dst"];
    let rows = tshark_fields(
        pcap,
        &format!("vxlan && ip.addr == {INET_IP}"),
        &fields,
        false,
    );
    let (mut out, mut back) = (0, 0);
    for r in &rows {
        let ips: Vec<&str> = r[0].split(',').collect();
        let dsts: Vec<&str> = r[1].split(',').collect();
        let srcs: Vec<&str> = r[3].split(',').collect();
        let macs: Vec<&str> = r[4].split(',').collect();
        if ips.len() < 2 || srcs.len() < 2 || macs.len() < 2 {
            continue;
        }
        if ips[0] == VTEP1 && dsts[1] == INET_IP {
            assert_eq!(
                (dsts[0], r[2].as_str(), srcs[1], macs[1], ips[1]),
                (VTEP3, "101", DVR1_MAC, SNAT_MAC, I1_IP),
                "compute1 -> Internet on the underlay: (outer dst, VNI, inner eth src/dst, \
                 inner src)"
            );
            out += 1;
        }
        if ips[0] == VTEP3 && ips[1] == INET_IP && dsts[0] == VTEP1 {
            assert_eq!(
                (r[2].as_str(), srcs[1], macs[1], dsts[1]),
                ("101", SNAT_MAC, I1_MAC, I1_IP),
                "network1 -> compute1 reply on the underlay: (VNI, inner eth src/dst, inner dst)"
            );
            back += 1;
        }
    }
    (out, back)
}

// --- the test ------------------------------------------------------------------------------

/// The seed's north-south scenario 1 (see the module documentation).
#[test]
fn centralized_snat_north_south() {
    let started = Instant::now();
    let Some((mut topo, [sw1, sw2, sw3], ulnet)) = three_hosts("snatns") else {
        return;
    };
    let (cidr1, cidr2) = (format!("{I1_IP}/24"), format!("{I2_IP}/24"));
    let i1 = topo.add_instance("i1", &sw1, "vm1", &selfservice1(I1_MAC, &cidr1));
    let i2 = topo.add_instance("i2", &sw2, "vm2", &selfservice1(I2_MAC, &cidr2));
    let (inet, _vlan_tap) = add_internet(&mut topo, &sw3, &[]);
    let cap_wire = topo.capture_with(&inet, "eth0", "cap-provider", &["-s", SNAP, "-B", "8192"]);
    let cap_ul = topo.capture_with(
        &ulnet,
        "p1",
        "cap-underlay",
        &["-s", SNAP, "-B", "8192", "udp port 4789"],
    );
    let state = state_yaml();
    let name = topo.name.clone();
    let mut vs1 = start_compute(&topo, &sw1, 1, &[1], false, &state);
    let mut vs2 = start_compute(&topo, &sw2, 2, &[2], false, &state);
    let mut vs3 = start_network(&topo, &sw3, "n1", [1024, 65535], 2, &state);
    eprintln!("[{name}] three hosts up in {:?}", started.elapsed());
    let (c1_0, c2_0, n1_0) = (vs1.stats(), vs2.stats(), vs3.stats());

    // 1. Each instance pings the Internet host and exchanges data with its server over one
    // TCP connection; the server sees the router's gateway address.
    ping_ok(&topo, &i1, INET_IP, 4, 8);
    ping_ok(&topo, &i2, INET_IP, 4, 8);
    for (ns, ip) in [(&i1, I1_IP), (&i2, I2_IP)] {
        let server = start_server(&topo, (&inet, INET_IP), "server-one", 1, 15);
        let client = start_clients(&topo, (ns, INET_IP), "client-one", 1, 256 << 10);
        let local = clients_ok(client, 1);
        let (peers, text) = server_peers(server);
        assert_eq!(peers.len(), 1, "{text}");
        assert_eq!(
            peers[0].0, QG_IP,
            "the Internet host should see {ip}'s connection from the router's gateway \
             address:\n{text}"
        );
        assert!(
            text.contains(&format!("closed {QG_IP} {} {}", peers[0].1, 256 << 10)),
            "{text}"
        );
        eprintln!(
            "[{name}] {ip}:{} -> {INET_IP}:{PORT} seen as {}:{}",
            local[0], peers[0].0, peers[0].1
        );
    }

    // A UDP answer too big for the instance's network (1,500 bytes of IP, DF clear) comes back
    // through network1 in the two fragments its router makes (each VXLAN-encapsulated to
    // compute1), and i1 puts it back together; the server saw the gateway address.
    let seen = big_udp_exchange(
        &topo,
        &i1,
        (&inet, INET_IP),
        (INET_IP, PORT + 1),
        (100, 1472),
    );
    assert_eq!(seen, QG_IP, "the server sees the router's gateway address");
    let n = vs3.stats_when(|s| s.event_delta(&n1_0, "router.fragmented") >= 1);
    assert_eq!(
        (
            n.event_delta(&n1_0, "router.fragmented"),
            n.event_delta(&n1_0, "router.fragments")
        ),
        (1, 2),
        "network1 sent the answer in two fragments"
    );

    // The instance's port unreachable about a late UDP answer (its socket closed) reaches the
    // Internet host as an error about that answer: from the gateway address, its quote
    // translated back to the gateway address and port the server answered.
    let late = late_udp_answer_refused(&topo, &i1, (&inet, INET_IP), (INET_IP, PORT + 2));
    assert!(
        late.starts_with(&format!("refused {QG_IP} ")),
        "the server should hear of its late answer from {QG_IP}: {late:?}"
    );

    // And the other way: the Internet host's port unreachable about the instance's datagram
    // (to the gateway address and port) reaches the instance's socket, translated back.
    let refused = udp_refused(&topo, &i1, INET_IP, PORT + 3);
    assert_eq!(
        refused.trim(),
        "refused",
        "UDP to a closed port of the Internet host"
    );

    // A reader that stops reading: the Internet host's server reads nothing for 2 s (its
    // window closes, and i1's kernel probes it until it opens again) while i1 sends 2 MiB
    // through the translation and both hosts' connection tracking and flow caches; neither
    // compute1 nor network1 drops anything meanwhile.
    let (c1_a, n1_a) = (vs1.stats(), vs3.stats());
    let zero_cap = topo.capture_with(
        &i1,
        "eth0",
        "cap-i1-zero-window",
        &[
            "tcp",
            "and",
            "src",
            "host",
            INET_IP,
            "and",
            "tcp[14:2]",
            "==",
            "0",
        ],
    );
    let at = (INET_IP, INET_IP, PORT + 4);
    tcp_transfer_to_a_stalled_reader(&topo, &i1, &inet, at, 2 << 20, 2.0);
    let zero = zero_cap.stop();
    assert!(
        !zero.is_empty(),
        "the Internet host never advertised a zero window"
    );
    let (c1_b, n1_b) = (vs1.stats(), vs3.stats());
    assert_eq!(c1_b.drops_since(&c1_a), vec![], "compute1 dropped");
    assert_eq!(n1_b.drops_since(&n1_a), vec![], "network1 dropped");

    // A one-way stream from i1 to the Internet host (never answered): every datagram routed
    // to the SNAT port on compute1 and translated on network1, most of them by compute1's
    // flow cache; on network1 by its flow cache too, unless they arrive on the worker that
    // does not own the translation (its two workers each get the flows the kernel spreads
    // to them): then each is handed over, and the owner translates it by the stages.
    let n = 2000;
    let at = (INET_IP, INET_IP, PORT + 5);
    assert_eq!(
        udp_stream_one_way(&topo, &i1, &inet, at, n),
        n,
        "datagrams received"
    );
    let (c1_c, n1_c) = (vs1.stats(), vs3.stats());
    let hits = |b: &Stats, a: &Stats| b.flow_cache("hits") - a.flow_cache("hits");
    let half = n as u64 / 2;
    assert!(
        hits(&c1_c, &c1_b) > half,
        "compute1's flow cache answered {} of {n} datagrams ({})",
        hits(&c1_c, &c1_b),
        c1_c.0["flow_cache"]
    );
    let handed = n1_c.event_delta(&n1_b, "conntrack.handoff");
    eprintln!(
        "network1: {} of {n} from the flow cache, {handed} handed to the owner",
        hits(&n1_c, &n1_b)
    );
    assert!(
        hits(&n1_c, &n1_b) > half || handed > half,
        "network1 neither answered from its flow cache ({}) nor handed over ({handed}) most of \
         {n} datagrams",
        n1_c.0["flow_cache"]
    );
    assert_eq!(c1_c.drops_since(&c1_b), vec![], "compute1 dropped");
    assert_eq!(n1_c.drops_since(&n1_b), vec![], "network1 dropped");

    // 2. 20 connections at once, 10 from each instance: 20 distinct source ports at the
    // server, all from the gateway address, all complete.
    let server = start_server(&topo, (&inet, INET_IP), "server-many", 20, 15);
    let a = start_clients(&topo, (&i1, INET_IP), "clients-i1", 10, 16 << 10);
    let b = start_clients(&topo, (&i2, INET_IP), "clients-i2", 10, 16 << 10);
    let (pa, pb) = (clients_ok(a, 10), clients_ok(b, 10));
    let (peers, text) = server_peers(server);
    assert_eq!(peers.len(), 20, "the server accepted:\n{text}");
    assert!(
        peers.iter().all(|p| p.0 == QG_IP),
        "every connection should come from {QG_IP}:\n{text}"
    );
    let ports: BTreeSet<u16> = peers.iter().map(|p| p.1).collect();
    assert_eq!(ports.len(), 20, "20 connections, distinct ports:\n{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("closed ") && l.ends_with(&format!(" {}", 16 << 10)))
            .count(),
        20,
        "every connection echoed 16 KiB:\n{text}"
    );
    eprintln!("[{name}] 20 concurrent connections: i1 ports {pa:?}, i2 ports {pb:?}; server saw {ports:?}");

    let c1 = vs1.stats_when(|s| s.event_delta(&c1_0, "router.to_snat") > 0);
    let c2 = vs2.stats_when(|s| s.event_delta(&c2_0, "router.to_snat") > 0);
    let n1 = vs3.stats_when(|s| {
        s.event_delta(&n1_0, "router.snat_out") > 0 && s.event_delta(&n1_0, "router.snat_in") > 0
    });
    eprintln!(
        "[{name}] compute1 events {:?}\n[{name}] network1 events {:?}; drops {:?}",
        nonzero_events(&c1),
        nonzero_events(&n1),
        n1.drops_since(&n1_0)
    );
    for (who, s, s0) in [("compute1", &c1, &c1_0), ("compute2", &c2, &c2_0)] {
        assert!(
            s.event_delta(s0, "router.to_snat") > 0,
            "{who}: router.to_snat {}",
            s.0["events"]
        );
        for e in ["router.fip_dnat", "router.fip_snat", "router.garp_sent"] {
            assert_eq!(s.event_delta(s0, e), 0, "{who}: {e}");
        }
    }
    let (out1, in1) = (
        n1.event_delta(&n1_0, "router.snat_out"),
        n1.event_delta(&n1_0, "router.snat_in"),
    );
    assert!(
        out1 > 100 && in1 > 100,
        "network1: router.snat_out {out1}, router.snat_in {in1}"
    );
    assert_eq!(n1.drop_delta(&n1_0, "router.snat_exhausted"), 0);

    // 3. Exhaustion: network1 restarted with 3 ports. Three long-lived connections from i1
    // work, a fourth finds no port (its SYNs are dropped: the client times out), and the
    // three still carry data afterwards.
    let fin = vs3.stop();
    eprintln!("[{name}] network1 stopped; drops {:?}", fin.nonzero_drops());
    let mut vs3 = start_network(&topo, &sw3, "n1b", TINY, 1, &state);
    let n2_0 = vs3.stats();
    let server = start_server(&topo, (&inet, INET_IP), "server-tiny", 4, 12);
    let hold = topo.exec(&i1, &[python(), "-c", HOLD_PY, INET_IP, &PORT.to_string()]);
    let htext = String::from_utf8_lossy(&hold.stdout).into_owned();
    let herr = String::from_utf8_lossy(&hold.stderr).into_owned();
    assert!(hold.status.success(), "exhaustion client:\n{htext}\n{herr}");
    let (peers, text) = server_peers(server);
    eprintln!("[{name}] exhaustion client:\n{htext}server:\n{text}");
    assert_eq!(
        htext.lines().filter(|l| l.starts_with("held ")).count(),
        3,
        "{htext}"
    );
    assert!(
        htext.lines().any(|l| l == "fourth timed out"),
        "the 4th connection should time out (no SYN-ACK):\n{htext}"
    );
    assert_eq!(
        htext.lines().filter(|l| l.starts_with("alive ")).count(),
        3,
        "the three held connections should still carry data:\n{htext}"
    );
    assert_eq!(peers.len(), 3, "the server accepted:\n{text}");
    for p in &peers {
        assert_eq!(p.0, QG_IP, "{text}");
        assert!(
            (TINY[0]..=TINY[1]).contains(&p.1),
            "port {} outside {TINY:?}:\n{text}",
            p.1
        );
    }
    let n2 = vs3.stats_when(|s| s.drop_delta(&n2_0, "router.snat_exhausted") > 0);
    let exhausted = n2.drop_delta(&n2_0, "router.snat_exhausted");
    eprintln!(
        "[{name}] network1 (tiny range): events {:?}; drops {:?}",
        nonzero_events(&n2),
        n2.drops_since(&n2_0)
    );
    assert!(exhausted > 0, "router.snat_exhausted {exhausted}");

    // 4. The wires.
    let wire = cap_wire.stop_file();
    let ul = cap_ul.stop_file();
    let (icmp, tcp) = assert_provider_wire(&wire);
    eprintln!("[{name}] from {QG_IP} on the provider veth: {icmp} ICMP, {tcp} TCP");
    assert!(icmp >= 10 && tcp > 100, "ICMP {icmp}, TCP {tcp}");
    let (out, back) = assert_underlay(&ul);
    eprintln!("[{name}] underlay: {out} compute1 -> network1, {back} back");
    assert!(out >= 5 && back >= 5, "underlay out {out}, back {back}");

    // 5. Clean exits, no mbuf leaked.
    let f3 = vs3.stop();
    let f2 = vs2.stop();
    let f1 = vs1.stop();
    eprintln!(
        "[{name}] done in {:?}; drops c1 {:?} c2 {:?} n1 {:?}",
        started.elapsed(),
        f1.nonzero_drops(),
        f2.nonzero_drops(),
        f3.nonzero_drops()
    );
}

const I1_IP6: &str = "fd00:198:51:100::4";
const GW1_IP6: &str = "fd00:198:51:100::1";
const SNAT_IP6: &str = "fd00:198:51:100::10";
const QG_IP6: &str = "2001:db8:203::11";
const EXT_GW_IP6: &str = "2001:db8:203::1";
const INET_IP6: &str = "2001:db8:ffff::9";

/// `s` with the first `from` replaced by `to` (which must be there).
fn edit(s: String, from: &str, to: &str) -> String {
    assert!(s.contains(from), "{from}");
    s.replacen(from, to, 1)
}

/// The state of `state_yaml` with IPv6 on selfservice1 (router1's interface, its SNAT port,
/// i1) and on provider1 (router1's gateway port, the external gateway); i1's group lets IPv6
/// out too.
fn state_yaml_v6() -> String {
    let s = state_yaml();
    let s = edit(
        s,
        "subnets:\n",
        &format!(
            "subnets:\n  - {{id: subnet-ss1-v6, name: selfservice1-v6, network_id: net-selfservice1, cidr: \"fd00:198:51:100::/64\", ip_version: 6, gateway_ip: \"{GW1_IP6}\", enable_dhcp: false}}\n  - {{id: subnet-provider1-v6, name: provider1-v6, network_id: net-provider1, cidr: \"2001:db8:203::/64\", ip_version: 6, gateway_ip: \"{EXT_GW_IP6}\", enable_dhcp: false}}\n"
        ),
    );
    let s = edit(
        s,
        &format!("fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {GW1_IP}}}]"),
        &format!("fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {GW1_IP}}}, {{subnet_id: subnet-ss1-v6, ip_address: \"{GW1_IP6}\"}}]"),
    );
    let s = edit(
        s,
        &format!("fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {SNAT_IP}}}]"),
        &format!("fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {SNAT_IP}}}, {{subnet_id: subnet-ss1-v6, ip_address: \"{SNAT_IP6}\"}}]"),
    );
    let s = edit(
        s,
        &format!("fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: {QG_IP}}}]\n    binding:host_id: network1"),
        &format!("fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: {QG_IP}}}, {{subnet_id: subnet-provider1-v6, ip_address: \"{QG_IP6}\"}}]\n    binding:host_id: network1"),
    );
    let s = edit(
        s,
        &format!("fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {I1_IP}}}]"),
        &format!("fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {I1_IP}}}, {{subnet_id: subnet-ss1-v6, ip_address: \"{I1_IP6}\"}}]"),
    );
    edit(
        s,
        "  - {id: out4, security_group_id: sg-out, direction: egress, ethertype: IPv4}\n",
        "  - {id: out4, security_group_id: sg-out, direction: egress, ethertype: IPv4}\n  - {id: out6, security_group_id: sg-out, direction: egress, ethertype: IPv6}\n",
    )
}

/// IPv6 north-south through the network node, the seed's "Floating IP addresses and NAT do not
/// apply to IPv6. Thus, the network node routes IPv6 traffic": i1 on compute1 pings and opens
/// TCP to an IPv6 Internet host; compute1's distributed router sends it to router1's SNAT port
/// on network1, whose router sends it, untranslated, out of the gateway port on VLAN 101 to the
/// external IPv6 gateway (resolved by Neighbor Discovery); the Internet side sees i1's own
/// address, and its route to selfservice1's prefix via the gateway port brings the answers
/// back.
#[test]
fn ipv6_north_south_is_routed_by_the_network_node_untranslated() {
    let Some(mut topo) = Topology::new("snat6") else {
        return;
    };
    let sw1 = topo.add_switch_ns("sw1");
    let sw3 = topo.add_switch_ns("sw3");
    let (cidr1, cidr6) = (format!("{I1_IP}/24"), format!("{I1_IP6}/64"));
    let i1 = topo.add_instance(
        "i1",
        &sw1,
        "vm1",
        &InstanceNet {
            mac: I1_MAC,
            cidr: &cidr1,
            mtu: 1450,
            cidr6: Some(&cidr6),
            gw: Some(GW1_IP),
            gw6: Some(GW1_IP6),
        },
    );
    add_underlay(&mut topo, &[(&sw1, UL1_MAC), (&sw3, UL3_MAC)]);
    let (inet, _vlan_tap) = add_internet(&mut topo, &sw3, &[]);
    // The Internet side speaks IPv6 too: the external gateway on VLAN 101, a host behind it,
    // and the route to selfservice1's prefix via router1's gateway port (what an upstream
    // router learns for a tenant prefix).
    for conf in ["all", "default", "lo", "eth0.101"] {
        let arg = format!("net.ipv6.conf.{conf}.disable_ipv6=0");
        topo.exec(&inet, &["sysctl", "-q", "-w", &arg]);
    }
    let gw6 = format!("{EXT_GW_IP6}/64");
    topo.ok(
        &inet,
        &["ip", "-6", "addr", "add", &gw6, "dev", "eth0.101", "nodad"],
    );
    let host6 = format!("{INET_IP6}/128");
    topo.ok(
        &inet,
        &["ip", "-6", "addr", "add", &host6, "dev", "lo", "nodad"],
    );
    topo.ok(
        &inet,
        &[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:198:51:100::/64",
            "via",
            QG_IP6,
            "dev",
            "eth0.101",
        ],
    );
    let cap = topo.capture_with(&inet, "eth0", "cap-provider6", &["-s", SNAP, "-B", "8192"]);
    let state = state_yaml_v6();
    let mut vs1 = start_compute(&topo, &sw1, 1, &[1], false, &state);
    let mut vs3 = start_network(&topo, &sw3, "n1", [1024, 65535], 1, &state);
    ping_ok(&topo, &i1, INET_IP6, 3, 8);
    // TCP to a server on the Internet host: it sees i1's own address.
    const SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(20)
print("listening", flush=True)
c, peer = s.accept()
data = c.recv(100)
c.sendall(data.upper())
print("peer", peer[0], flush=True)
"#;
    const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"hello over ipv6")
print(c.recv(100).decode(), flush=True)
"#;
    let port = PORT.to_string();
    let mut server = topo.spawn(&inet, "server6", &[python(), "-c", SERVER, INET_IP6, &port]);
    assert!(
        server.wait_for("listening", Duration::from_secs(10)),
        "{}",
        server.stderr_text()
    );
    let reply = support::py(&topo, &i1, CLIENT, &[INET_IP6, &port]);
    assert!(reply.contains("HELLO OVER IPV6"), "{reply}");
    assert!(server.wait_for("peer", Duration::from_secs(10)));
    assert!(
        server.stdout_text().contains(&format!("peer {I1_IP6}")),
        "the server sees the instance's own address: {}",
        server.stdout_text()
    );
    let n1 = vs3.stats_when(|s| s.router("snat:router1").routed > 0);
    assert!(
        n1.router("snat:router1").routed > 0,
        "routed by network1's SNAT router"
    );
    assert_eq!(n1.event("router.snat_out"), 0, "IPv6 is not translated");
    let c1 = vs1.stats();
    assert!(
        c1.event("router.to_snat") > 0,
        "compute1 sent it to the SNAT port"
    );
    // On the wire: VLAN 101, i1's own address, from the gateway port's MAC.
    let pcap = cap.stop_file();
    let out = tshark_fields(
        &pcap,
        &format!("ipv6.src == {I1_IP6} && ipv6.dst == {INET_IP6}"),
        &["vlan.id", "eth.src", "eth.dst"],
        false,
    );
    assert!(!out.is_empty(), "no IPv6 from i1 on the provider network");
    assert!(
        out.iter()
            .all(|f| f[0] == VID && f[1] == QG_MAC && f[2] == EXT_GW_MAC),
        "{out:?}"
    );
    vs1.stop();
    vs3.stop();
}

// --- floating IPs reached from another host ------------------------------------------------

const I3_MAC: &str = "fa:16:3e:00:01:06";
const I3_IP: &str = "198.51.100.6";
/// The floating IP gateway (fg) ports of compute1 and compute2 on provider1.
const FG1_MAC: &str = "fa:16:3e:fe:00:01";
const FG1_IP: &str = "203.0.113.5";
const FG2_MAC: &str = "fa:16:3e:fe:00:02";
const FG2_IP: &str = "203.0.113.6";
/// i3's floating IP (on compute1) and i2's (on compute2).
const FIP3: &str = "203.0.113.17";
const FIP2: &str = "203.0.113.19";

/// [`state_yaml`] with floating IPs: i3 (198.51.100.6, on compute1, group sg-out) gets
/// 203.0.113.17 and i2 gets 203.0.113.19; compute1 and compute2 have their fg ports; i2 is
/// also in sg-web, which lets ICMP and TCP [`PORT`] in from anywhere. i1 keeps only its fixed
/// IP.
fn state_yaml_fips() -> String {
    let s = edit(
        state_yaml(),
        "    binding:host_id: compute2\n    device_owner: compute:nova\n    security_groups: [sg-out]\n",
        "    binding:host_id: compute2\n    device_owner: compute:nova\n    security_groups: [sg-out, sg-web]\n",
    );
    let s = edit(
        s,
        "# Anything out, nothing new in",
        &format!(
            r#"  - id: port-i3
    network_id: net-selfservice1
    mac_address: "{I3_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {I3_IP}}}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-out]
  - id: port-fg-compute1
    network_id: net-provider1
    mac_address: "{FG1_MAC}"
    fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: {FG1_IP}}}]
    binding:host_id: compute1
    device_owner: network:floatingip_agent_gateway
    device_id: compute1
  - id: port-fg-compute2
    network_id: net-provider1
    mac_address: "{FG2_MAC}"
    fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: {FG2_IP}}}]
    binding:host_id: compute2
    device_owner: network:floatingip_agent_gateway
    device_id: compute2
# Anything out, nothing new in"#
        ),
    );
    let s = edit(
        s,
        "  - {id: sg-out, name: out-only}\n",
        "  - {id: sg-out, name: out-only}\n  - {id: sg-web, name: web}\n",
    );
    let s = edit(
        s,
        "  - {id: out4, security_group_id: sg-out, direction: egress, ethertype: IPv4}\n",
        &format!(
            "  - {{id: out4, security_group_id: sg-out, direction: egress, ethertype: IPv4}}\n  \
             - {{id: web-icmp, security_group_id: sg-web, direction: ingress, ethertype: IPv4, protocol: icmp, remote_ip_prefix: 0.0.0.0/0}}\n  \
             - {{id: web-tcp, security_group_id: sg-web, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: {PORT}, port_range_max: {PORT}, remote_ip_prefix: 0.0.0.0/0}}\n"
        ),
    );
    s + &format!(
        "floatingips:\n  \
         - {{id: fip-i3, floating_ip_address: {FIP3}, floating_network_id: net-provider1, port_id: port-i3, router_id: router1-id}}\n  \
         - {{id: fip-i2, floating_ip_address: {FIP2}, floating_network_id: net-provider1, port_id: port-i2, router_id: router1-id}}\n"
    )
}

/// compute2's provider link: every frame on VLAN 101, no self-service address; every IPv4
/// frame is one of the two conversations with 203.0.113.19 and goes straight between the
/// routers' own MACs (no external gateway in between): 203.0.113.11 (network1's gateway port)
/// <-> compute2's fg port, 203.0.113.17 (compute1's fg port) <-> compute2's fg port. ARP
/// answers for 203.0.113.19, .11 and .17 come from those ports' MACs. Returns the frames of
/// each of the four (source, destination) pairs.
fn assert_hairpin_wire(pcap: &Path) -> [usize; 4] {
    let all = tshark_fields(
        pcap,
        "",
        &["vlan.id", "eth.src", "eth.dst", "_ws.col.Info"],
        false,
    );
    assert!(all.len() > 20, "too few frames on compute2's provider link");
    let untagged: Vec<_> = all.iter().filter(|f| f[0] != VID).collect();
    assert!(
        untagged.is_empty(),
        "frames on compute2's provider link not on VLAN {VID}: {untagged:?}"
    );
    let fixed = tshark_fields(
        pcap,
        "ip.addr == 198.51.100.0/24",
        &["ip.src", "ip.dst"],
        false,
    );
    assert!(
        fixed.is_empty(),
        "a self-service address on provider1: {fixed:?}"
    );
    let pairs = [
        (QG_IP, FIP2, QG_MAC, FG2_MAC),
        (FIP2, QG_IP, FG2_MAC, QG_MAC),
        (FIP3, FIP2, FG1_MAC, FG2_MAC),
        (FIP2, FIP3, FG2_MAC, FG1_MAC),
    ];
    let mut n = [0; 4];
    for f in tshark_fields(
        pcap,
        "ip",
        &["ip.src", "ip.dst", "eth.src", "eth.dst"],
        true,
    ) {
        let k = pairs
            .iter()
            .position(|p| (f[0].as_str(), f[1].as_str()) == (p.0, p.1));
        let Some(k) = k else {
            panic!("an IPv4 frame on provider1 that is neither conversation: {f:?}");
        };
        assert_eq!(
            (f[2].as_str(), f[3].as_str()),
            (pairs[k].2, pairs[k].3),
            "{} -> {}: (eth.src, eth.dst)",
            pairs[k].0,
            pairs[k].1
        );
        n[k] += 1;
    }
    // ARP: each router port speaks for its own addresses (an fg port asks from the fg
    // address, answers for its floating IPs), the routers ask for each other's addresses
    // straight away, and nobody asks for the external gateway.
    let arps = tshark_fields(
        pcap,
        "arp",
        &[
            "arp.opcode",
            "eth.src",
            "arp.src.hw_mac",
            "arp.src.proto_ipv4",
            "arp.dst.proto_ipv4",
        ],
        false,
    );
    let owner = |ip: &str| match ip {
        FIP2 | FG2_IP => FG2_MAC,
        FIP3 | FG1_IP => FG1_MAC,
        QG_IP => QG_MAC,
        _ => "nobody",
    };
    for a in &arps {
        assert_ne!(a[4], EXT_GW_IP, "an ARP for the external gateway: {a:?}");
        assert!(
            a[1] == owner(&a[3]) && a[2] == a[1],
            "ARP (op, eth.src, sender MAC, sender IP, target IP) not from the owner of its \
             sender address: {a:?}"
        );
    }
    let said = |op: &str, mac: &str, ip: &str| {
        arps.iter()
            .any(|a| a[0] == op && a[1] == mac && (a[3] == ip || a[4] == ip))
    };
    for (op, mac, ip, what) in [
        ("1", QG_MAC, FIP2, "network1 asks for 203.0.113.19"),
        ("1", FG1_MAC, FIP2, "compute1 asks for 203.0.113.19"),
        ("2", FG2_MAC, FIP2, "compute2 answers for 203.0.113.19"),
        ("1", FG2_MAC, FIP3, "compute2 asks for 203.0.113.17"),
        ("2", FG1_MAC, FIP3, "compute1 answers for 203.0.113.17"),
    ] {
        assert!(said(op, mac, ip), "{what}: ARP seen {arps:?}");
    }
    n
}

/// The issue's hairpin across hosts: an instance reaches the floating IP of an instance on
/// another compute node. i1 (compute1, no floating IP) and i3 (compute1, floating IP
/// 203.0.113.17) ping 203.0.113.19 and exchange data over TCP with i2's server behind it (on
/// compute2). i1's traffic takes the seed's scenario 1 to the network node, whose SNAT router
/// sends it from 203.0.113.11 straight to compute2's fg port (203.0.113.19 is on its gateway's
/// subnet: asked for by ARP, not routed via 203.0.113.1); i3's leaves compute1 from
/// 203.0.113.17 the same way. compute2 answers ARP for 203.0.113.19, DNATs to i2 (whose group
/// lets TCP 5001 in), and sends the answers from 203.0.113.19 straight back to the address
/// each connection came from. i2 sees 203.0.113.11 and 203.0.113.17, never a fixed IP; the
/// three provider ports share one segment (a Linux bridge).
#[test]
fn floating_ip_reached_from_instances_on_another_host() {
    let started = Instant::now();
    let Some((mut topo, [sw1, sw2, sw3], _)) = three_hosts("fiphop") else {
        return;
    };
    let cidrs = [I1_IP, I2_IP, I3_IP].map(|ip| format!("{ip}/24"));
    let i1 = topo.add_instance("i1", &sw1, "vm1", &selfservice1(I1_MAC, &cidrs[0]));
    let i2 = topo.add_instance("i2", &sw2, "vm2", &selfservice1(I2_MAC, &cidrs[1]));
    let i3 = topo.add_instance("i3", &sw1, "vm3", &selfservice1(I3_MAC, &cidrs[2]));
    let provnet = add_segment(
        &mut topo,
        "provnet",
        "uplink",
        &[(&sw1, None), (&sw2, None), (&sw3, None)],
    );
    let cap = topo.capture_with(
        &provnet,
        "p2",
        "cap-provider-c2",
        &["-s", SNAP, "-B", "8192"],
    );
    let state = state_yaml_fips();
    let name = topo.name.clone();
    let mut vs1 = start_compute(&topo, &sw1, 1, &[1, 3], true, &state);
    let mut vs2 = start_compute(&topo, &sw2, 2, &[2], true, &state);
    let mut vs3 = start_network(&topo, &sw3, "n1", [1024, 65535], 1, &state);
    eprintln!("[{name}] three hosts up in {:?}", started.elapsed());
    let (c1_0, c2_0, n1_0) = (vs1.stats(), vs2.stats(), vs3.stats());

    ping_ok(&topo, &i1, FIP2, 3, 8);
    ping_ok(&topo, &i3, FIP2, 3, 8);
    for (ns, who, seen) in [(&i1, "i1", QG_IP), (&i3, "i3", FIP3)] {
        let server = start_server(&topo, (&i2, I2_IP), &format!("server-{who}"), 2, 15);
        let client = start_clients(&topo, (ns, FIP2), &format!("clients-{who}"), 2, 64 << 10);
        let local = clients_ok(client, 2);
        let (peers, text) = server_peers(server);
        assert_eq!(peers.len(), 2, "{text}");
        assert!(
            peers.iter().all(|p| p.0 == seen),
            "i2 should see {who}'s connections from {seen}:\n{text}"
        );
        eprintln!("[{name}] {who} ports {local:?} -> {FIP2}:{PORT}, seen by i2 as {peers:?}");
    }

    let c1 = vs1.stats_when(|s| s.event_delta(&c1_0, "router.fip_dnat") > 0);
    let c2 = vs2.stats_when(|s| s.event_delta(&c2_0, "router.fip_snat") > 0);
    let n1 = vs3.stats_when(|s| s.event_delta(&n1_0, "router.snat_in") > 0);
    eprintln!(
        "[{name}] events: compute1 {:?}\n  compute2 {:?}\n  network1 {:?}\n\
         [{name}] drops: compute1 {:?} compute2 {:?} network1 {:?}",
        nonzero_events(&c1),
        nonzero_events(&c2),
        nonzero_events(&n1),
        c1.drops_since(&c1_0),
        c2.drops_since(&c2_0),
        n1.drops_since(&n1_0),
    );
    // i1's way through network1, i3's through compute1's own floating IP; both in and out
    // through compute2's.
    for (who, s, s0, events) in [
        (
            "compute1",
            &c1,
            &c1_0,
            &["router.to_snat", "router.fip_snat", "router.fip_dnat"][..],
        ),
        (
            "compute2",
            &c2,
            &c2_0,
            &["router.fip_dnat", "router.fip_snat"][..],
        ),
        (
            "network1",
            &n1,
            &n1_0,
            &["router.snat_out", "router.snat_in"][..],
        ),
    ] {
        for e in events {
            assert!(s.event_delta(s0, e) > 0, "{who}: {e} {}", s.0["events"]);
        }
    }
    assert_eq!(
        c2.event_delta(&c2_0, "router.to_snat"),
        0,
        "compute2 never needs network1"
    );

    let [qg_in, qg_back, fip_in, fip_back] = assert_hairpin_wire(&cap.stop_file());
    eprintln!(
        "[{name}] compute2's provider link: {QG_IP} -> {FIP2} {qg_in}, back {qg_back}; \
         {FIP3} -> {FIP2} {fip_in}, back {fip_back}"
    );
    assert!(qg_in >= 10 && qg_back >= 10 && fip_in >= 10 && fip_back >= 10);
    for vs in [vs3, vs2, vs1] {
        vs.stop();
    }
    eprintln!("[{name}] done in {:?}", started.elapsed());
}
