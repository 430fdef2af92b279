//! System test of floating IPs: the seed's "North-south scenario 2: Instance with a floating
//! IPv4 address" (shared/seed/ovs-dvr-ha.txt). `vswitchd` on compute1 answers ARP for the
//! floating IP on the provider network, translates what comes in to the instance's fixed IP
//! (DNAT) and what the instance sends out to the floating IP (SNAT), as Neutron's fip and
//! router namespaces do together.
//!
//! ```text
//!  compute1 (namespace sw)                      Internet (namespace inet)
//!  i1 198.51.100.4 ─── vm1 ┐                    ┌ eth0: the raw veth (captures taken here)
//!     MTU 1450             vswitchd ─ uplink ═══┘  └ eth0.101 (VLAN 101) 203.0.113.1/24:
//!     gw 198.51.100.1      │ (provider, physnet       provider1's gateway, 02:00:00:00:01:01
//!                          │  "provider")           lo 100.64.0.9/32: the Internet host (its
//!  rn (listens only) ─ ul ─┘ (overlay, VTEP            route to 203.0.113.17 has this source)
//!                             10.0.0.11)
//!
//!  selfservice1  VXLAN VNI 101, 198.51.100.0/24, MTU 1450; router1 (distributed) at .1
//!  provider1     VLAN 101 on physnet provider, 203.0.113.0/24, gateway .1, router:external:
//!                router1's external gateway; compute1's floating IP gateway (fg) port
//!                203.0.113.5, fa:16:3e:fe:00:01
//!  floating IPs  203.0.113.17 -> i1's port (198.51.100.4); 203.0.113.20 -> nothing
//! ```
//!
//! The Internet host pings, opens TCP to and exchanges UDP with 203.0.113.17; the instance
//! sees the real source (100.64.0.9) and answers; the Internet host sees 203.0.113.17, also
//! as the source of the instance's own outbound connections (TCP, UDP, ping). ICMP errors
//! find their sockets both ways (the quoted packet is translated too), and the path MTU of
//! the instance's network (1450) is reported from the fg address; without DF, a 1,500-byte
//! datagram reaches the instance in the two fragments the router cuts for that network. On
//! the provider veth every frame carries VLAN 101, the proxy-ARP reply for 203.0.113.17 and
//! every translated frame come from the fg MAC, and the fixed IP never appears; the
//! instance's security group still applies (a port it does not open stays closed) and an
//! address that is no floating IP here is not translated.
//!
//! "eth0.101" is a kernel VLAN subinterface where the kernel has 802.1Q (`ip link add ...
//! type vlan id 101`). Where it has none (`CONFIG_VLAN_8021Q` unset, as on the machines this
//! is developed on) the same interface is played by [`VLAN_TAP_PY`]: a TAP named eth0.101
//! whose frames a small user-space bridge tags (101) onto eth0 and untags from it, so that
//! the kernel's own IP stack (ping, TCP, UDP) still terminates VLAN 101 in both cases.
//!
//! Everything lives in the test's namespaces (torn down on drop, also on panic); vswitchd
//! must exit 0 with no mbuf leaked. Needs root; without root the test prints "skipped: needs
//! root and DPDK" and passes. Run: `cargo test -p vswitch --test system_fip --
//! --test-threads=1 --nocapture` (`VST_VERBOSE=1` prints the provider capture but TCP).
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{
    add_internet, big_udp_exchange, host_toml_overlay, instance_and_overlay_ports, line_words,
    ping_ok, py, python, python_server, server_output, tcp_transfer_to_a_stalled_reader,
    tshark_fields, udp_refused, udp_stream_one_way, Bg, HostPort, InstanceNet, OverlayHost, Stats,
    Topology, Vswitchd, EXT_GW_IP, EXT_GW_MAC, INET_IP, VID,
};

// The instance on selfservice1 and router1's interface there.
const I1_MAC: &str = "fa:16:3e:00:01:04";
const I1_IP: &str = "198.51.100.4";
// A second instance, for the floating IP to move to.
const I2_MAC: &str = "fa:16:3e:00:01:05";
const I2_IP: &str = "198.51.100.5";
const GW1_MAC: &str = "fa:16:3e:aa:00:01";
const GW1_IP: &str = "198.51.100.1";
// provider1: compute1's floating IP gateway port, the floating IP, the external gateway.
const FG_MAC: &str = "fa:16:3e:fe:00:01";
const FG_IP: &str = "203.0.113.5";
const FIP: &str = "203.0.113.17";
/// A floating IP of provider1 associated with no port.
const FIP_FREE: &str = "203.0.113.20";
/// The Internet host, behind the external gateway (on `lo` of the internet namespace).
// Underlay (only the overlay port's listening peer is there).
const VTEP1: &str = "10.0.0.11";
const UL1_MAC: &str = "02:00:00:00:00:11";
const RN_MAC: &str = "02:00:00:00:00:12";
const DVR1_MAC: &str = "fa:16:3f:00:00:11";
// Ports the instance's security group opens (from anywhere), and one it does not.
const TCP_IN: u16 = 5001;
const UDP_IN: u16 = 5005;
const TCP_CLOSED: u16 = 5009;
// Servers of the Internet host for the instance's outbound traffic.
const TCP_OUT: u16 = 5002;
const UDP_OUT: u16 = 5006;
/// The instance's source port for them.
const UDP_OUT_SRC: u16 = 40123;
/// A UDP port nobody listens on at the Internet host (its port unreachable comes back).
const UDP_NOBODY: u16 = 5007;

/// Snap length of the captures: VLAN + IPv4 + TCP headers with options, ARP.
const SNAP: &str = "128";

/// The desired state: selfservice1 and provider1 (external, VLAN 101); router1 (distributed)
/// with its interface on selfservice1 and its gateway on provider1 (centralized SNAT on
/// network1, for instances without a floating IP); the instance's port on compute1, in
/// group sg-fip; compute1's floating IP gateway port; floating IP 203.0.113.17 associated
/// with the instance, and 203.0.113.20 associated with nothing.
fn state_yaml() -> String {
    state_yaml_with("port-i1", false)
}

/// [`state_yaml`] with the floating IP on port `fip_port`, and a second instance's port
/// (`port-i2`, 198.51.100.5, on compute1, same group) when `i2`.
fn state_yaml_with(fip_port: &str, i2: bool) -> String {
    let port_i2 = if i2 {
        format!(
            r#"
  - id: port-i2
    network_id: net-selfservice1
    mac_address: "{I2_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {I2_IP}}}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-fip]"#
        )
    } else {
        String::new()
    };
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
      external_fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: 203.0.113.11}}]
ports:
  - id: port-router1-ss1
    network_id: net-selfservice1
    mac_address: "{GW1_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {GW1_IP}}}]
    device_owner: network:router_interface_distributed
    device_id: router1-id
  - id: port-router1-snat
    network_id: net-selfservice1
    mac_address: "fa:16:3e:bb:00:01"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: 198.51.100.10}}]
    binding:host_id: network1
    device_owner: network:router_centralized_snat
    device_id: router1-id
  - id: port-i1
    network_id: net-selfservice1
    mac_address: "{I1_MAC}"
    fixed_ips: [{{subnet_id: subnet-ss1-v4, ip_address: {I1_IP}}}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-fip]{port_i2}
  - id: port-fg-compute1
    network_id: net-provider1
    mac_address: "{FG_MAC}"
    fixed_ips: [{{subnet_id: subnet-provider1-v4, ip_address: {FG_IP}}}]
    binding:host_id: compute1
    device_owner: network:floatingip_agent_gateway
    device_id: compute1
floatingips:
  - {{id: fip-i1, floating_ip_address: {FIP}, floating_network_id: net-provider1, port_id: {fip_port}, router_id: router1-id}}
  - {{id: fip-free, floating_ip_address: {FIP_FREE}, floating_network_id: net-provider1}}
# Anything out; in only ICMP, TCP {TCP_IN} and UDP {UDP_IN} (from anywhere): TCP {TCP_CLOSED} stays
# closed, and replies to the instance's own connections come in as established.
security_groups:
  - {{id: sg-fip, name: fip-server}}
security_group_rules:
  - {{id: fip-out4, security_group_id: sg-fip, direction: egress, ethertype: IPv4}}
  - {{id: fip-icmp4, security_group_id: sg-fip, direction: ingress, ethertype: IPv4, protocol: icmp, remote_ip_prefix: 0.0.0.0/0}}
  - {{id: fip-tcp4, security_group_id: sg-fip, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: {TCP_IN}, port_range_max: {TCP_IN}, remote_ip_prefix: 0.0.0.0/0}}
  - {{id: fip-udp4, security_group_id: sg-fip, direction: ingress, ethertype: IPv4, protocol: udp, port_range_min: {UDP_IN}, port_range_max: {UDP_IN}, remote_ip_prefix: 0.0.0.0/0}}
hosts:
  - {{host: compute1, vtep_ip: {VTEP1}, dvr_mac: "{DVR1_MAC}"}}
  - {{host: network1, vtep_ip: 10.0.0.13, dvr_mac: "fa:16:3f:00:00:13"}}
"#
    )
}

/// compute1's host config: the instance port vm1, the overlay port on `ul` (`[overlay] mtu =
/// 1500`: the underlay's, which leaves 1450 to VXLAN networks) and the provider port `uplink`
/// for physnet "provider".
fn host_toml(prefix: &str) -> String {
    host_toml_with(prefix, false)
}

/// [`host_toml`], with the second instance's port vm2 when `i2`.
fn host_toml_with(prefix: &str, i2: bool) -> String {
    let instances: &[(&str, &str)] = if i2 {
        &[("vm1", "port-i1"), ("vm2", "port-i2")]
    } else {
        &[("vm1", "port-i1")]
    };
    let mut ports = instance_and_overlay_ports(instances);
    ports.push(HostPort {
        name: "uplink",
        iface: "uplink",
        kind: "provider",
        iface_id: None,
    });
    let overlay = OverlayHost {
        local_vtep_ip: VTEP1,
        dvr_mac: Some(DVR1_MAC),
        settings: &["mtu = 1500"],
        ..OverlayHost::default()
    };
    host_toml_overlay(
        "compute1",
        prefix,
        &ports,
        &[("provider", "uplink")],
        Some(&overlay),
    )
}

// --- traffic helpers ----------------------------------------------------------------------

/// A TCP server: accepts one connection on `argv[1]:argv[2]`, prints "peer IP PORT", reads
/// until EOF and sends everything back ("echoed N SHA256").
const TCP_ECHO_SERVER_PY: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(20)
print("listening", flush=True)
c, peer = s.accept()
c.settimeout(20)
print("peer", peer[0], peer[1], flush=True)
buf = bytearray()
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    buf += b
c.sendall(buf)
c.close()
print("echoed", len(buf), hashlib.sha256(buf).hexdigest(), flush=True)
"#;

/// A TCP client: connects to `argv[1]:argv[2]`, sends `argv[3]` random bytes, reads the echo
/// until EOF; prints "local IP PORT", "sent N SHA256", "back N SHA256".
const TCP_ECHO_CLIENT_PY: &str = r#"
import hashlib, os, socket, sys
n = int(sys.argv[3])
data = os.urandom(n)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
local = c.getsockname()
c.sendall(data)
c.shutdown(socket.SHUT_WR)
back = bytearray()
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    back += b
print("local", local[0], local[1])
print("sent", n, hashlib.sha256(data).hexdigest())
print("back", len(back), hashlib.sha256(back).hexdigest())
"#;

/// A TCP connection from `client_ns` to `dst:port` (a server in `server_ns` listening on
/// `bind`): `bytes` random bytes go to the server and come back (SHA-256 checked both
/// ways). Returns (the client's local address and port, the peer the server accepted).
fn tcp_echo(
    topo: &Topology,
    client_ns: &str,
    server_ns: &str,
    (bind, dst, port): (&str, &str, u16),
    bytes: usize,
) -> ((String, String), (String, String)) {
    let port_s = port.to_string();
    let mut server = topo.spawn(
        server_ns,
        &format!("tcp-echo-{port}"),
        &[python(), "-c", TCP_ECHO_SERVER_PY, bind, &port_s],
    );
    assert!(
        server.wait_for("listening", Duration::from_secs(10)),
        "tcp server in {server_ns} did not start: {}",
        server.stderr_text()
    );
    let started = Instant::now();
    let client = py(
        topo,
        client_ns,
        TCP_ECHO_CLIENT_PY,
        &[dst, &port_s, &bytes.to_string()],
    );
    let secs = started.elapsed().as_secs_f64();
    let out_path = server.stdout.clone();
    let st = server.wait(Duration::from_secs(20));
    assert!(st.success(), "tcp server in {server_ns} failed: {st}");
    let server_out = std::fs::read_to_string(out_path).unwrap_or_default();
    let (local, sent, back) = (
        line_words(&client, "local"),
        line_words(&client, "sent"),
        line_words(&client, "back"),
    );
    let (peer, echoed) = (
        line_words(&server_out, "peer"),
        line_words(&server_out, "echoed"),
    );
    let n = bytes.to_string();
    assert_eq!(
        (echoed[1], echoed[2]),
        (n.as_str(), sent[2]),
        "the server in {server_ns} received other bytes than the client sent"
    );
    assert_eq!(
        (back[1], back[2]),
        (n.as_str(), sent[2]),
        "the client in {client_ns} got other bytes back than it sent"
    );
    eprintln!(
        "TCP {client_ns} -> {dst}:{port}: {bytes} bytes each way in {secs:.2} s; client {}:{}, \
         server saw {}:{}",
        local[1], local[2], peer[1], peer[2]
    );
    (
        (local[1].to_owned(), local[2].to_owned()),
        (peer[1].to_owned(), peer[2].to_owned()),
    )
}

/// Connects to `argv[1]:argv[2]` with a 1.5 s timeout; prints "timed out" (exit 0), or
/// "connected" / "error ..." (exit 1).
const TCP_CONNECT_PY: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
except socket.timeout:
    print("timed out")
    sys.exit(0)
except OSError as e:
    print("error", e)
    sys.exit(1)
print("connected")
sys.exit(1)
"#;

/// A UDP server: one datagram on `0.0.0.0:argv[1]`, answered with "pong <sender>"; prints
/// "peer IP PORT".
const UDP_ECHO_SERVER_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(20)
print("listening", flush=True)
data, peer = s.recvfrom(2048)
s.sendto(b"pong " + peer[0].encode(), peer)
print("peer", peer[0], peer[1], flush=True)
"#;

/// A UDP client: sends "ping" to `argv[1]:argv[2]` (again every second, 5 times at most)
/// until an answer comes; prints "local IP PORT" and "reply IP PORT DATA".
const UDP_CLIENT_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
dst = (sys.argv[1], int(sys.argv[2]))
for _ in range(5):
    s.sendto(b"ping", dst)
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    print("local", *s.getsockname())
    print("reply", peer[0], peer[1], data.decode())
    sys.exit(0)
sys.exit("no reply")
"#;

/// A UDP receiver on `argv[1]:argv[2]`: prints "from IP PORT DATA" for each datagram, until
/// none came for a second after the first.
const UDP_RECEIVER_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
print("listening", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        print("from", peer[0], peer[1], data.decode(), flush=True)
        s.settimeout(1)
except socket.timeout:
    pass
"#;

/// A UDP sender: "hello" from local port `argv[3]` to `argv[1]:argv[2]`, 3 times 0.2 s apart
/// (all within the receiver's second).
const UDP_SENDER_PY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
for _ in range(3):
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.2)
"#;

/// Runs `args` in `ns` and returns its exit code and stdout + stderr.
fn run_text(topo: &Topology, ns: &str, args: &[&str]) -> (i32, String) {
    let out = topo.exec(ns, args);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Drop counters that grew since `before`, except the ones named in `allowed`.
fn unexpected_drops(after: &Stats, before: &Stats, allowed: &[&str]) -> Vec<(String, u64)> {
    after
        .drops_since(before)
        .into_iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .collect()
}

// --- what the captures show ---------------------------------------------------------------

/// On the provider veth (the Internet side of the wire): every frame is tagged VLAN 101 and
/// the fixed IP never appears; the switch answered ARP for the floating IP with the fg MAC
/// and asked for the external gateway from the fg MAC and address; every frame from the
/// floating IP has the fg MAC as source and the TTL decremented once (the instance's 64).
/// Returns how many frames from the floating IP it saw per protocol (ICMP, TCP, UDP).
fn assert_provider_wire(pcap: &Path) -> (usize, usize, usize) {
    let all = tshark_fields(pcap, "", &["eth.src", "vlan.id", "eth.type"], false);
    assert!(
        all.len() > 100,
        "too few frames on the provider veth: {}",
        all.len()
    );
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
        &format!("ip.addr == {I1_IP}"),
        &["eth.src", "ip.src", "ip.dst"],
        false,
    );
    assert!(
        fixed.is_empty(),
        "the fixed IP {I1_IP} appeared on the provider network: {fixed:?}"
    );
    // Proxy ARP: the reply for the floating IP, from the fg MAC, to the Internet side.
    let arp_fields = [
        "eth.src",
        "eth.dst",
        "vlan.id",
        "arp.src.hw_mac",
        "arp.src.proto_ipv4",
        "arp.dst.proto_ipv4",
    ];
    let replies = tshark_fields(
        pcap,
        &format!("arp.opcode == 2 && arp.src.proto_ipv4 == {FIP}"),
        &arp_fields,
        false,
    );
    assert!(
        !replies.is_empty(),
        "no ARP reply for {FIP} on the provider veth"
    );
    for r in &replies {
        assert_eq!(
            (r[0].as_str(), r[1].as_str(), r[2].as_str(), r[3].as_str()),
            (FG_MAC, EXT_GW_MAC, VID, FG_MAC),
            "ARP reply for {FIP}: (eth.src, eth.dst, vlan, sender MAC): {r:?}"
        );
    }
    // Nobody else answers for it.
    let other = tshark_fields(
        pcap,
        &format!("arp.opcode == 2 && arp.src.proto_ipv4 == {FIP} && arp.src.hw_mac != {FG_MAC}"),
        &arp_fields,
        false,
    );
    assert!(other.is_empty(), "ARP replies for {FIP}: {other:?}");
    // At start the switch announces the floating IP: a gratuitous ARP (a request for it from
    // itself), broadcast, tagged, from the fg MAC (counted in router.garp_sent; on the wire
    // only if the capture started in time, since vswitchd sends it as it comes up).
    let garps = tshark_fields(
        pcap,
        &format!("arp.opcode == 1 && arp.src.proto_ipv4 == {FIP} && arp.dst.proto_ipv4 == {FIP}"),
        &arp_fields,
        false,
    );
    for g in &garps {
        assert_eq!(
            (g[0].as_str(), g[1].as_str(), g[2].as_str(), g[3].as_str()),
            (FG_MAC, "ff:ff:ff:ff:ff:ff", VID, FG_MAC),
            "gratuitous ARP for {FIP}: (eth.src, eth.dst, vlan, sender MAC)"
        );
    }
    // The switch resolves the external gateway itself, as the fg port.
    let asks = tshark_fields(
        pcap,
        &format!(
            "arp.opcode == 1 && eth.src == {FG_MAC} && !(arp.src.proto_ipv4 == arp.dst.proto_ipv4)"
        ),
        &arp_fields,
        false,
    );
    assert!(
        !asks.is_empty(),
        "the switch never asked for the external gateway"
    );
    for a in &asks {
        assert_eq!(
            (
                a[1].as_str(),
                a[2].as_str(),
                a[3].as_str(),
                a[4].as_str(),
                a[5].as_str()
            ),
            ("ff:ff:ff:ff:ff:ff", VID, FG_MAC, FG_IP, EXT_GW_IP),
            "ARP request of the fg port: (eth.dst, vlan, sender MAC, sender IP, target IP)"
        );
    }
    // Translated frames: from the floating IP, the fg MAC, TTL 63, good checksums. (The
    // filter also matches ICMP errors of the Internet host that quote such a frame: checked
    // below.)
    let from_fip: Vec<Vec<String>> = tshark_fields(
        pcap,
        &format!("ip.src == {FIP}"),
        &[
            "eth.src",
            "eth.dst",
            "vlan.id",
            "ip.ttl",
            "ip.proto",
            "ip.dst",
            "ip.checksum.status",
            "ip.src",
        ],
        true,
    )
    .into_iter()
    .filter(|f| f[7] == FIP)
    .collect();
    for f in &from_fip {
        assert_eq!(
            (
                f[0].as_str(),
                f[1].as_str(),
                f[2].as_str(),
                f[3].as_str(),
                f[6].as_str()
            ),
            (FG_MAC, EXT_GW_MAC, VID, "63", "1"),
            "a frame from {FIP}: (eth.src, eth.dst, vlan, TTL, IPv4 checksum good): {f:?}"
        );
        assert!(
            f[5] == INET_IP || f[5] == EXT_GW_IP,
            "a frame from {FIP} to {}",
            f[5]
        );
    }
    // The Internet host's port unreachable about the instance's datagram (step 5) quotes it
    // as it saw it: from the floating IP.
    let errors = tshark_fields(
        pcap,
        &format!("icmp.type == 3 && ip.dst == {FIP}"),
        &["eth.dst", "ip.src", "ip.dst", "udp.dstport"],
        false,
    );
    assert!(
        errors.iter().any(|e| e[0] == FG_MAC
            && e[1] == format!("{INET_IP},{FIP}")
            && e[2] == format!("{FIP},{INET_IP}")
            && e[3] == UDP_NOBODY.to_string()),
        "no port unreachable from {INET_IP} quoting the datagram from {FIP} to port \
         {UDP_NOBODY}: {errors:?}"
    );
    // The instance's own port unreachable (step 4) left as the floating IP, quoting the
    // datagram as the Internet host sent it: to the floating IP.
    let unreachable = tshark_fields(
        pcap,
        &format!("icmp.type == 3 && icmp.code == 3 && ip.src == {FIP}"),
        &["ip.src", "ip.dst", "udp.dstport"],
        false,
    );
    assert!(
        unreachable
            .iter()
            .any(|e| e[0] == format!("{FIP},{INET_IP}")
                && e[1] == format!("{INET_IP},{FIP}")
                && e[2] == UDP_IN.to_string()),
        "no port unreachable from {FIP} quoting the datagram to {FIP}:{UDP_IN}: {unreachable:?}"
    );
    // Fragmentation needed (step 5) from the floating IP gateway, quoting the packet as sent
    // (to the floating IP).
    let too_big = tshark_fields(
        pcap,
        "icmp.type == 3 && icmp.code == 4",
        &["eth.src", "vlan.id", "ip.src", "ip.dst", "icmp.mtu"],
        false,
    );
    assert!(
        !too_big.is_empty()
            && too_big.iter().all(|e| e[0] == FG_MAC
                && e[1] == VID
                && e[2] == format!("{FG_IP},{INET_IP}")
                && e[3] == format!("{INET_IP},{FIP}")
                && e[4] == "1450"),
        "fragmentation needed: (eth.src, vlan, ip.src, ip.dst, mtu): {too_big:?}"
    );
    let count = |proto: &str| from_fip.iter().filter(|f| f[4] == proto).count();
    // Frames to the floating IP go to the fg MAC (the Internet side's ARP cache). (Only
    // frames whose outer destination it is: ICMP errors about it quote it.)
    let to_fip: Vec<Vec<String>> = tshark_fields(
        pcap,
        &format!("ip.dst == {FIP}"),
        &["eth.dst", "vlan.id", "ip.dst"],
        true,
    )
    .into_iter()
    .filter(|f| f[2] == FIP)
    .collect();
    assert!(!to_fip.is_empty(), "no frame to {FIP}");
    for f in &to_fip {
        assert_eq!(
            (f[0].as_str(), f[1].as_str()),
            (FG_MAC, VID),
            "a frame to {FIP}: {f:?}"
        );
    }
    (count("1"), count("6"), count("17"))
}

/// In the instance: what came from outside carries the Internet host's real address (never
/// the floating IP), from the router interface's MAC with the TTL decremented once, to the
/// fixed IP; the port unreachable about its datagram quotes it with its fixed address (the
/// translation reached inside the ICMP error). Returns the number of frames from outside.
fn assert_instance_sees_real_sources(pcap: &Path) -> usize {
    let fips = tshark_fields(
        pcap,
        &format!("ip.addr == {FIP} || ip.addr == {FIP_FREE}"),
        &["ip.src", "ip.dst"],
        false,
    );
    assert!(
        fips.is_empty(),
        "a floating IP appeared inside the instance: {fips:?}"
    );
    // (Frames the instance sends may quote the Internet host's address in an ICMP error:
    // only frames whose outer source it is count.)
    let inbound: Vec<Vec<String>> = tshark_fields(
        pcap,
        &format!("ip.src == {INET_IP}"),
        &[
            "eth.src",
            "eth.dst",
            "ip.ttl",
            "ip.dst",
            "ip.checksum.status",
            "ip.src",
        ],
        true,
    )
    .into_iter()
    .filter(|f| f[5] == INET_IP)
    .collect();
    for f in &inbound {
        assert_eq!(
            (
                f[0].as_str(),
                f[1].as_str(),
                f[2].as_str(),
                f[3].as_str(),
                f[4].as_str()
            ),
            (GW1_MAC, I1_MAC, "63", I1_IP, "1"),
            "a frame from {INET_IP} at the instance: (eth.src, eth.dst, TTL, ip.dst, checksum \
             good)"
        );
    }
    let echo = tshark_fields(
        pcap,
        &format!("ip.src == {INET_IP} && icmp.type == 8"),
        &["ip.src"],
        true,
    );
    assert!(
        echo.len() >= 4,
        "the instance should have seen the Internet host's echo requests from {INET_IP}: \
         {echo:?}"
    );
    let errors = tshark_fields(
        pcap,
        &format!("icmp.type == 3 && ip.src == {INET_IP}"),
        &["ip.src", "ip.dst", "udp.dstport", "icmp.checksum.status"],
        false,
    );
    assert!(
        errors.iter().any(|e| e[0] == format!("{INET_IP},{I1_IP}")
            && e[1] == format!("{I1_IP},{INET_IP}")
            && e[2] == UDP_NOBODY.to_string()
            && e[3] == "1"),
        "no port unreachable quoting the instance's datagram with its fixed IP: {errors:?}"
    );
    inbound.len()
}

// --- the test ------------------------------------------------------------------------------

/// The seed's north-south scenario 2: an Internet host on the provider network (VLAN 101)
/// pings, opens TCP to and exchanges UDP with the instance's floating IP 203.0.113.17; the
/// instance sees the real source and answers; the Internet host sees 203.0.113.17 as the
/// source of the answers and of the instance's own outbound TCP, UDP and ping; a reader that
/// stops reading (a zero window, probed by the sender) either way loses nothing. ICMP errors
/// (port unreachable both ways, fragmentation needed from the fg address) reach the right
/// sockets. The wire shows VLAN 101 on every frame, the proxy-ARP reply from the fg MAC and
/// translated frames from it, never the fixed IP; the instance never sees a floating IP. The
/// security group still applies to translated traffic, and an address that is no floating IP
/// of this host is not translated. Counters: router.fip_dnat, router.fip_snat, nothing to
/// the SNAT node or the overlay, and no drop but the two provoked ones.
#[test]
fn floating_ip_north_south() {
    let started = Instant::now();
    let Some(mut topo) = Topology::new("fipns") else {
        return;
    };
    let sw = topo.add_switch_ns("sw");
    let i1 = topo.add_instance(
        "i1",
        &sw,
        "vm1",
        &InstanceNet::v4(I1_MAC, &format!("{I1_IP}/24"), 1450, Some(GW1_IP)),
    );
    // The overlay port's peer only listens (no address, no IPv6).
    let rn = topo.add_ns("rn");
    topo.disable_ipv6(&rn);
    topo.veth(&sw, "ul", &rn, "eth0");
    topo.set_mac_up(&sw, "ul", UL1_MAC);
    topo.set_mac_up(&rn, "eth0", RN_MAC);
    let (inet, _vlan_tap) = add_internet(&mut topo, &sw, &[FIP]);
    let mut vs = Vswitchd::start(&topo, &sw, &host_toml(&topo.name), &state_yaml());
    eprintln!("[{}] vswitchd up in {:?}", topo.name, started.elapsed());

    let cap_wire = topo.capture_with(&inet, "eth0", "cap-provider", &["-s", SNAP, "-B", "8192"]);
    let cap_i1 = topo.capture_with(
        &i1,
        "eth0",
        "cap-i1",
        &["-s", SNAP, "icmp or udp or tcp[tcpflags] & tcp-syn != 0"],
    );
    // (Waits for the worker to fold the count in: it sends the announcement as it starts.)
    let s0 = vs.stats_when(|s| s.event("router.garp_sent") >= 1);
    assert_eq!(
        s0.event("router.garp_sent"),
        1,
        "one gratuitous ARP for the one floating IP at start"
    );

    // 1. Ping the floating IP from the Internet host (the first exchange also resolves the
    // floating IP by proxy ARP and, for the replies, the external gateway), and the other
    // way: the instance pings the Internet host and the external gateway (on-link), and
    // both ping the fg address.
    ping_ok(&topo, &inet, FIP, 4, 6);
    ping_ok(&topo, &i1, INET_IP, 3, 6);
    ping_ok(&topo, &i1, EXT_GW_IP, 2, 6);
    // The fg port's own address answers both sides: the Internet (on-link), and the
    // instance, whose echo leaves as the floating IP to an address of this host (answered
    // here, never asked for on the external network).
    ping_ok(&topo, &inet, FG_IP, 2, 6);
    ping_ok(&topo, &i1, FG_IP, 2, 6);
    let s1 = vs.stats_when(|s| {
        s.event_delta(&s0, "router.fip_dnat") >= 12
            && s.event_delta(&s0, "router.fip_snat") >= 12
            && s.event_delta(&s0, "router.echo_reply") >= 6
    });
    assert!(
        s1.event_delta(&s0, "router.echo_reply") >= 6,
        "router.echo_reply for the 3 + 3 pings of {FG_IP}: {}",
        s1.0["events"]
    );
    assert!(
        s1.event_delta(&s0, "router.arp_reply") >= 1,
        "the proxy ARP reply for {FIP} did not count as router.arp_reply: {}",
        s1.0["events"]
    );
    for e in ["router.fip_dnat", "router.fip_snat"] {
        assert!(
            s1.event_delta(&s0, e) >= 12,
            "{e}: 5 echo requests in and their replies out, 4 + 3 requests out and their \
             replies in: {}",
            s1.0["events"]
        );
    }

    // 2. TCP from the Internet host to the floating IP: data both ways; the instance's server
    // sees the real client address and port (a one-to-one address translation).
    let (client, peer) = tcp_echo(&topo, &inet, &i1, ("0.0.0.0", FIP, TCP_IN), 1 << 20);
    assert_eq!(
        client.0, INET_IP,
        "the Internet host's client should use {INET_IP}"
    );
    assert_eq!(
        peer, client,
        "the instance's server should see the Internet host's real address and port"
    );

    // 3. The instance's own outbound TCP: the Internet host's server sees the floating IP
    // (and the instance's port); the replies come back in as established connections (the
    // group opens no ingress port for them).
    let (client, peer) = tcp_echo(&topo, &i1, &inet, (INET_IP, INET_IP, TCP_OUT), 1 << 20);
    assert_eq!(client.0, I1_IP, "the instance's client uses its fixed IP");
    assert_eq!(
        peer,
        (FIP.to_owned(), client.1.clone()),
        "the Internet host should see the instance's connection from the floating IP"
    );

    // 3b. A receiver that stops reading, each way: its window closes for 2 s and the sender
    // probes it until it opens again, through the translation, the instance's connection
    // tracking (full window checks) and the flow cache. Nothing is dropped (the counters at
    // the end).
    let zero_cap = topo.capture_with(
        &i1,
        "eth0",
        "cap-i1-zero-window",
        &["tcp", "and", "tcp[14:2]", "==", "0"],
    );
    let at = ("0.0.0.0", FIP, TCP_IN);
    tcp_transfer_to_a_stalled_reader(&topo, &inet, &i1, at, 2 << 20, 2.0);
    let at = (INET_IP, INET_IP, TCP_OUT);
    tcp_transfer_to_a_stalled_reader(&topo, &i1, &inet, at, 2 << 20, 2.0);
    let zero = zero_cap.stop();
    for (who, from) in [
        ("the instance", format!(" {I1_IP}.{TCP_IN} >")),
        ("the Internet host", format!(" {INET_IP}.{TCP_OUT} >")),
    ] {
        assert!(
            zero.iter().any(|l| l.contains(&from)),
            "{who} never advertised a zero window:\n{}",
            zero.join("\n")
        );
    }

    // 4. UDP: a request from the Internet host to the floating IP is answered from it (the
    // instance saw the real source); datagrams the instance sends out arrive from it; an
    // ICMP error about one finds its way back to the instance's socket.
    let server = python_server(
        &topo,
        &i1,
        "udp-echo",
        UDP_ECHO_SERVER_PY,
        &[&UDP_IN.to_string()],
    );
    let client = py(&topo, &inet, UDP_CLIENT_PY, &[FIP, &UDP_IN.to_string()]);
    let seen = server_output(server, 20);
    let (local, reply, peer) = (
        line_words(&client, "local"),
        line_words(&client, "reply"),
        line_words(&seen, "peer"),
    );
    assert_eq!(
        (peer[1], peer[2]),
        (INET_IP, local[2]),
        "the instance's UDP server should see the Internet host's real address and port"
    );
    assert_eq!(
        reply[1..],
        [FIP, &UDP_IN.to_string(), "pong", INET_IP],
        "the Internet host should get the answer from {FIP}:{UDP_IN}"
    );
    let receiver = python_server(
        &topo,
        &inet,
        "udp-receiver",
        UDP_RECEIVER_PY,
        &[INET_IP, &UDP_OUT.to_string()],
    );
    py(
        &topo,
        &i1,
        UDP_SENDER_PY,
        &[INET_IP, &UDP_OUT.to_string(), &UDP_OUT_SRC.to_string()],
    );
    let got = server_output(receiver, 20);
    assert!(
        got.lines().any(|l| l.starts_with("from")),
        "the Internet host received nothing from the instance:\n{got}"
    );
    for l in got.lines().filter(|l| l.starts_with("from")) {
        assert_eq!(
            l,
            format!("from {FIP} {UDP_OUT_SRC} hello"),
            "the Internet host should receive the instance's datagrams from {FIP}"
        );
    }
    // An ICMP error about the instance's datagram comes back to it: the Internet host's
    // port unreachable quotes the floating IP, the instance's kernel matches it to its
    // socket only if the quoted packet was translated back to the fixed IP.
    let refused = udp_refused(&topo, &i1, INET_IP, UDP_NOBODY);
    assert_eq!(refused.trim(), "refused", "UDP to a closed port");
    // And the other way: the instance's own port unreachable (its UDP server is gone) leaves
    // as the floating IP and quotes the Internet host's datagram to the floating IP.
    let refused = udp_refused(&topo, &inet, FIP, UDP_IN);
    assert_eq!(
        refused.trim(),
        "refused",
        "UDP from the Internet host to the floating IP's closed port {UDP_IN}"
    );
    let s2 = vs.stats_when(|s| s.conntrack_delta(&s1, "related") >= 1);
    assert!(
        s2.conntrack_delta(&s1, "related") >= 1,
        "the port unreachable should be related to the instance's UDP flow: {}",
        s2.0["conntrack"]
    );
    // 4b. A one-way stream from the Internet host to the floating IP (never answered): every
    // datagram DNATed, routed and let in by the instance's group, most of them by the flow
    // cache (the flow stays unreplied in the instance's zone).
    let at = ("0.0.0.0", FIP, UDP_IN);
    let n = 2000;
    assert_eq!(
        udp_stream_one_way(&topo, &inet, &i1, at, n),
        n,
        "datagrams received"
    );
    let s2c = vs.stats();
    let hits = s2c.flow_cache("hits") - s2.flow_cache("hits");
    assert!(
        hits > n as u64 / 2,
        "the flow cache answered {hits} of {n} datagrams ({})",
        s2c.0["flow_cache"]
    );

    // 5. Without DF a packet too big for the instance's network goes on in fragments, as a
    // Linux router sends it (before any DF probe, while the Internet host still sends 1500-byte
    // packets to the floating IP): a 1,500-byte UDP datagram reaches the instance whole, put
    // back together from the two fragments the router made, and the small answer comes back.
    // (Only a datagram that arrives whole: DPDK's af_packet PMD joins a PACKET_FANOUT group
    // with PACKET_FANOUT_FLAG_DEFRAG, so the kernel hands vswitchd fragments put back
    // together; fragments arriving are tested in the unit tests.)
    let seen = big_udp_exchange(&topo, &inet, (&i1, I1_IP), (FIP, UDP_IN), (1472, 100));
    assert_eq!(
        seen, INET_IP,
        "the instance sees the Internet host's own address"
    );
    let s2b = vs.stats_when(|s| s.event_delta(&s2, "router.fragmented") >= 1);
    assert_eq!(
        (
            s2b.event_delta(&s2, "router.fragmented"),
            s2b.event_delta(&s2, "router.fragments")
        ),
        (1, 2),
        "the 1,500-byte datagram, sent to the instance in two fragments"
    );
    let s2 = s2b;

    // 6. Path MTU: the instance's network has MTU 1450 (VXLAN in a 1500-byte underlay). A
    // 1450-byte DF packet to the floating IP passes; a 1500-byte one gets fragmentation
    // needed with MTU 1450 from the floating IP gateway's address, after which the Internet
    // host's kernel knows the path MTU and refuses the next one itself.
    let ping_df = |size: &str| {
        run_text(
            &topo,
            &inet,
            &[
                "ping", "-n", "-c", "2", "-i", "0.3", "-W", "2", "-M", "do", "-s", size, FIP,
            ],
        )
    };
    let (rc, text) = ping_df("1422");
    assert_eq!(rc, 0, "a 1450-byte DF ping to {FIP} must pass:\n{text}");
    let (_, text) = ping_df("1472");
    assert!(
        text.contains(&format!(
            "From {FG_IP} icmp_seq=1 Frag needed and DF set (mtu = 1450)"
        )) && text.contains("message too long, mtu=1450"),
        "a 1500-byte DF ping to {FIP}: expected fragmentation needed (mtu 1450) from {FG_IP}, \
         then the kernel's own refusal:\n{text}"
    );
    let s3 = vs.stats_when(|s| s.event_delta(&s2, "router.icmp_error_sent") >= 1);
    assert_eq!(
        s3.event_delta(&s2, "router.icmp_error_sent"),
        1,
        "router.icmp_error_sent: one fragmentation needed"
    );

    // 7. Still firewalled: a port the instance's group does not open is closed to the
    // floating IP (dropped, not reset: the connection attempt times out).
    let (rc, text) = run_text(
        &topo,
        &inet,
        &[python(), "-c", TCP_CONNECT_PY, FIP, &TCP_CLOSED.to_string()],
    );
    assert_eq!(
        (rc, text.trim()),
        (0, "timed out"),
        "TCP {TCP_CLOSED} to {FIP} should be dropped by the security group"
    );
    let s4 = vs.stats_when(|s| s.drop_delta(&s3, "firewall.ingress_denied") >= 1);
    let denied = s4.drop_delta(&s3, "firewall.ingress_denied");
    assert!(
        (1..=3).contains(&denied),
        "firewall.ingress_denied for the SYN(s) to port {TCP_CLOSED}: {denied}"
    );

    // 8. Not a floating IP of this host (203.0.113.20 is associated with nothing): sent to
    // the fg MAC anyway (a static neighbour entry), it is neither answered nor translated.
    topo.ok(
        &inet,
        &[
            "ip",
            "neigh",
            "replace",
            FIP_FREE,
            "lladdr",
            FG_MAC,
            "dev",
            &format!("eth0.{VID}"),
            "nud",
            "permanent",
        ],
    );
    let (rc, text) = run_text(
        &topo,
        &inet,
        &["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", FIP_FREE],
    );
    assert_ne!(rc, 0, "{FIP_FREE} must not answer:\n{text}");
    let s5 = vs.stats_when(|s| s.drop_delta(&s4, "router.no_floating_ip") >= 2);
    assert_eq!(
        s5.drop_delta(&s4, "router.no_floating_ip"),
        2,
        "router.no_floating_ip for the two echo requests to {FIP_FREE}"
    );

    let wire = cap_wire.stop_file();
    let at_i1 = cap_i1.stop_file();
    if std::env::var_os("VST_VERBOSE").is_some() {
        let text = std::process::Command::new("tcpdump")
            .args(["-r", &wire.to_string_lossy(), "-e", "-n", "-t", "not tcp"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        eprintln!("--- provider veth, except TCP:\n{text}");
    }

    // 9. The wire and the instance.
    let (icmp, tcp, udp) = assert_provider_wire(&wire);
    eprintln!(
        "[{}] from {FIP} on the wire: {icmp} ICMP, {tcp} TCP, {udp} UDP",
        topo.name
    );
    assert!(
        icmp >= 12 && tcp >= 100 && udp >= 2,
        "frames from {FIP} on the provider veth: {icmp} ICMP (5 replies, 4 + 3 requests), {tcp} \
         TCP, {udp} UDP"
    );
    let inbound = assert_instance_sees_real_sources(&at_i1);
    eprintln!(
        "[{}] instance saw {inbound} frames from {INET_IP}",
        topo.name
    );

    // 10. Counters: everything to and from the Internet host was translated on this host,
    // nothing went to the network node's SNAT port or anywhere on the overlay, and the only
    // drops are the ones provoked above (the closed port, the foreign address).
    let end = vs.stats();
    let (dnat, snat) = (
        end.event_delta(&s0, "router.fip_dnat"),
        end.event_delta(&s0, "router.fip_snat"),
    );
    eprintln!(
        "[{}] router.fip_dnat {dnat}, router.fip_snat {snat}; routers {}; drops {:?}",
        topo.name,
        end.0["routers"],
        end.drops_since(&s0)
    );
    assert!(dnat > 100 && snat > 100, "fip_dnat {dnat}, fip_snat {snat}");
    assert_eq!(end.event_delta(&s0, "router.to_snat"), 0, "router.to_snat");
    assert_eq!(end.port("overlay").tx_packets, 0, "overlay port tx");
    let r1 = (end.router("router1"), s0.router("router1"));
    assert_eq!(r1.0.dropped - r1.1.dropped, 0, "router1 dropped {:?}", r1.0);
    let bad = unexpected_drops(
        &end,
        &s0,
        &["firewall.ingress_denied", "router.no_floating_ip"],
    );
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    assert_eq!(
        (
            end.drop_delta(&s0, "firewall.ingress_denied"),
            end.drop_delta(&s0, "router.no_floating_ip")
        ),
        (denied, 2),
        "drops outside steps 6 and 7"
    );
    let f = vs.stop();
    eprintln!(
        "[{}] done in {:?}; drops {:?}",
        topo.name,
        started.elapsed(),
        f.nonzero_drops()
    );
}

/// compute1 with two instances on selfservice1 (i1 on vm1, i2 on vm2), the overlay port's
/// listening peer and the Internet namespace on the provider port.
struct TwoInstances {
    topo: Topology,
    sw: String,
    i1: String,
    i2: String,
    inet: String,
    /// The user-space VLAN bridge, where the kernel has no 802.1Q (kept running).
    _vlan_tap: Option<Bg>,
}

/// [`TwoInstances`] in a topology named `name`; `None` where the test cannot run (not root,
/// no DPDK).
fn two_instances(name: &str) -> Option<TwoInstances> {
    let mut topo = Topology::new(name)?;
    let sw = topo.add_switch_ns("sw");
    let net = |mac, cidr| InstanceNet::v4(mac, cidr, 1450, Some(GW1_IP));
    let (c1, c2) = (format!("{I1_IP}/24"), format!("{I2_IP}/24"));
    let i1 = topo.add_instance("i1", &sw, "vm1", &net(I1_MAC, &c1));
    let i2 = topo.add_instance("i2", &sw, "vm2", &net(I2_MAC, &c2));
    let rn = topo.add_ns("rn");
    topo.disable_ipv6(&rn);
    topo.veth(&sw, "ul", &rn, "eth0");
    topo.set_mac_up(&sw, "ul", UL1_MAC);
    topo.set_mac_up(&rn, "eth0", RN_MAC);
    let (inet, vlan_tap) = add_internet(&mut topo, &sw, &[FIP]);
    Some(TwoInstances {
        topo,
        sw,
        i1,
        i2,
        inet,
        _vlan_tap: vlan_tap,
    })
}

/// Moving the floating IP from instance 1 to instance 2 (a `SIGHUP` reload of the desired
/// state): the host announces it again (a gratuitous ARP, counted, and seen on the provider
/// veth), and new connections from the Internet host to 203.0.113.17 reach instance 2 (a TCP
/// server listens there only).
#[test]
fn floating_ip_moves_to_another_instance() {
    let Some(TwoInstances {
        topo,
        sw,
        i2,
        inet,
        _vlan_tap,
        ..
    }) = two_instances("fipmv")
    else {
        return;
    };
    let mut vs = Vswitchd::start(
        &topo,
        &sw,
        &host_toml_with(&topo.name, true),
        &state_yaml_with("port-i1", true),
    );
    let cap = topo.capture_with(&inet, "eth0", "cap-provider", &["-s", SNAP, "-B", "8192"]);
    let s0 = vs.stats_when(|s| s.event("router.garp_sent") >= 1);
    assert_eq!(s0.event("router.garp_sent"), 1);
    // Before: instance 1 answers for the floating IP.
    let to_i1 = vs.stats().port("vm1").tx_packets;
    ping_ok(&topo, &inet, FIP, 2, 6);
    let after = vs.stats_when(|s| s.port("vm1").tx_packets > to_i1);
    assert!(
        after.port("vm1").tx_packets > to_i1,
        "instance 1 got the pings"
    );

    // Move it.
    vs.reload(&state_yaml_with("port-i2", true));
    let s1 = vs.stats_when(|s| s.event("router.garp_sent") >= 2);
    assert_eq!(
        s1.event("router.garp_sent"),
        2,
        "announced again once moved"
    );
    // New connections reach instance 2 (only it listens).
    const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(20)
print("listening", flush=True)
c, peer = s.accept()
c.settimeout(20)
n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
print("got", n, "from", peer[0], flush=True)
"#;
    const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"m" * 65536)
c.close()
print("sent")
"#;
    let port = TCP_IN.to_string();
    let mut server = topo.spawn(&i2, "moved-server", &[python(), "-c", SERVER, &port]);
    assert!(
        server.wait_for("listening", Duration::from_secs(10)),
        "server in i2: {}",
        server.stderr_text()
    );
    py(&topo, &inet, CLIENT, &[FIP, &port]);
    assert!(
        server.wait_for("got 65536 from", Duration::from_secs(10)),
        "instance 2 did not get the connection: {}{}",
        server.stdout_text(),
        server.stderr_text()
    );
    let to_i2 = vs.stats().port("vm2").tx_packets;
    ping_ok(&topo, &inet, FIP, 2, 6);
    let after = vs.stats_when(|s| s.port("vm2").tx_packets > to_i2);
    assert!(
        after.port("vm2").tx_packets > to_i2,
        "instance 2 got the pings"
    );

    // On the wire: a gratuitous ARP for the floating IP from the fg MAC after the move (the
    // one at start may have come before the capture started).
    let pcap = cap.stop_file();
    let garps = tshark_fields(
        &pcap,
        &format!("arp.opcode == 1 && arp.src.proto_ipv4 == {FIP} && arp.dst.proto_ipv4 == {FIP}"),
        &["eth.src", "vlan.id"],
        false,
    );
    assert!(
        !garps.is_empty(),
        "no gratuitous ARP for {FIP} after the move"
    );
    assert!(
        garps.iter().all(|g| g[0] == FG_MAC && g[1] == VID),
        "{garps:?}"
    );
    vs.stop();
}

/// Hairpin between two floating IPs of one host (issue #6, "Hairpin"): instance 2, with
/// floating IP 203.0.113.20 of its own, reaches instance 1 through 203.0.113.17 on the same
/// compute node, TCP and UDP, through the group's TCP 5001 and UDP 5005 rules. Instance 1
/// sees the traffic come from instance 2's floating IP, not from its fixed IP (the router
/// translates both addresses, as Neutron's do), its group judges it by that address, and
/// instance 2 sees the answers come from 203.0.113.17. Nothing of it goes out of the provider
/// port.
#[test]
fn hairpin_between_floating_ips_of_one_host() {
    let Some(TwoInstances {
        topo,
        sw,
        i1,
        i2,
        _vlan_tap,
        ..
    }) = two_instances("fiphp")
    else {
        return;
    };
    let free = format!(
        "{{id: fip-free, floating_ip_address: {FIP_FREE}, floating_network_id: net-provider1}}"
    );
    let state = state_yaml_with("port-i1", true).replace(
        &free,
        &free.replace('}', ", port_id: port-i2, router_id: router1-id}"),
    );
    assert!(state.contains("port_id: port-i2"), "{state}");
    let mut vs = Vswitchd::start(&topo, &sw, &host_toml_with(&topo.name, true), &state);
    let s0 = vs.stats_when(|s| s.event("router.garp_sent") >= 2);
    assert_eq!(
        s0.event("router.garp_sent"),
        2,
        "both floating IPs announced"
    );

    let (local, peer) = tcp_echo(&topo, &i2, &i1, ("0.0.0.0", FIP, TCP_IN), 100_000);
    assert_eq!(local.0, I2_IP, "instance 2's own socket");
    assert_eq!(peer.0, FIP_FREE, "instance 1 sees instance 2's floating IP");
    let udp_in = UDP_IN.to_string();
    let server = python_server(&topo, &i1, "udp-hairpin", UDP_ECHO_SERVER_PY, &[&udp_in]);
    let client = py(&topo, &i2, UDP_CLIENT_PY, &[FIP, &udp_in]);
    let reply = line_words(&client, "reply");
    assert_eq!(
        (reply[1], reply[3], reply[4]),
        (FIP, "pong", FIP_FREE),
        "the answer comes from 203.0.113.17, to 203.0.113.20"
    );
    let heard = server_output(server, 20);
    assert_eq!(line_words(&heard, "peer")[1], FIP_FREE);

    let s1 = vs.stats();
    // Both directions translated twice on the way (DNAT to the fixed IP, SNAT to the
    // sender's floating IP) and neither left through the provider port.
    assert!(s1.event_delta(&s0, "router.fip_dnat") >= 4, "{s1:?}");
    assert!(s1.event_delta(&s0, "router.fip_snat") >= 4, "{s1:?}");
    assert_eq!(
        s1.port("uplink").tx_packets,
        s0.port("uplink").tx_packets,
        "sent out of the provider port"
    );
    let drops = unexpected_drops(&s1, &s0, &[]);
    assert!(drops.is_empty(), "drops: {drops:?}");
    vs.stop();
}

/// `vswitchctl` on live floating-IP traffic: `trace` explains the seed's north-south scenario 2
/// (provider VLAN 101 -> DNAT -> route -> security group -> instance) without sending anything;
/// `capture` writes a pcap of the provider port that tshark reads (the echo requests to the
/// floating IP in, the replies from it out, both tagged VLAN 101); `conntrack list` shows the
/// instance's connection and `conntrack flush` removes it.
#[test]
fn vswitchctl_trace_capture_and_conntrack_on_floating_ip_traffic() {
    let Some(mut topo) = Topology::new("fipctl") else {
        return;
    };
    let sw = topo.add_switch_ns("sw");
    let c1 = format!("{I1_IP}/24");
    let i1 = topo.add_instance(
        "i1",
        &sw,
        "vm1",
        &InstanceNet::v4(I1_MAC, &c1, 1450, Some(GW1_IP)),
    );
    let rn = topo.add_ns("rn");
    topo.disable_ipv6(&rn);
    topo.veth(&sw, "ul", &rn, "eth0");
    topo.set_mac_up(&sw, "ul", UL1_MAC);
    topo.set_mac_up(&rn, "eth0", RN_MAC);
    let (inet, _vlan_tap) = add_internet(&mut topo, &sw, &[FIP]);
    let mut vs = Vswitchd::start(
        &topo,
        &sw,
        &host_toml_with(&topo.name, false),
        &state_yaml_with("port-i1", false),
    );

    // trace: nothing is sent, every stage is named, the verdict is the instance's port. (The
    // start-up announcement is sent first: wait until it is counted.)
    let before = vs.stats_when(|s| s.event("router.garp_sent") >= 1);
    let out = vs.ctl_ok(&[
        "trace",
        "--in-port",
        "uplink",
        "--eth-src",
        EXT_GW_MAC,
        "--vlan",
        VID,
        "--ip-src",
        INET_IP,
        "--ip-dst",
        FIP,
        "--proto",
        "icmp",
    ]);
    for want in [
        "provider:",
        "vlan 101",
        "router:",
        I1_IP,
        "firewall",
        "verdict: output to vm1",
    ] {
        assert!(out.contains(want), "trace lacks {want:?}:\n{out}");
    }
    let json = vs.ctl_ok(&[
        "trace",
        "--in-port",
        "uplink",
        "--eth-src",
        EXT_GW_MAC,
        "--vlan",
        VID,
        "--ip-src",
        INET_IP,
        "--ip-dst",
        FIP,
        "--proto",
        "tcp",
        "--dport",
        "5009",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .starts_with("dropped: firewall."),
        "a port the security group does not open: {v}"
    );
    let after = vs.stats();
    assert_eq!(
        after.port("vm1").tx_packets,
        before.port("vm1").tx_packets,
        "trace sent nothing"
    );
    assert_eq!(
        after.port("uplink").tx_packets,
        before.port("uplink").tx_packets
    );
    let (code, _, err) = vs.ctl(&["trace", "--in-port", "nope", "--ip-dst", FIP]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in_port"), "{err}");

    // capture while the Internet host pings the floating IP.
    let pcap = topo.dir().join("uplink.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    let sock = vs.socket().to_path_buf();
    let capture = std::thread::spawn(move || {
        let out = std::process::Command::new(support::VSWITCHCTL)
            .arg("--socket")
            .arg(&sock)
            .args([
                "capture",
                "uplink",
                "--count",
                "8",
                "-w",
                &pcap_s,
                "--timeout",
                "20",
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    ping_ok(&topo, &inet, FIP, 3, 6);
    let (code, out, err) = capture.join().unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("captured 8 packets on uplink"), "{out}");
    let requests = tshark_fields(
        &pcap,
        &format!("icmp.type == 8 && ip.dst == {FIP}"),
        &["vlan.id", "ip.src"],
        false,
    );
    let replies = tshark_fields(
        &pcap,
        &format!("icmp.type == 0 && ip.src == {FIP}"),
        &["vlan.id", "eth.src"],
        false,
    );
    let all = tshark_fields(
        &pcap,
        "",
        &[
            "eth.src", "eth.dst", "vlan.id", "eth.type", "ip.src", "ip.dst",
        ],
        false,
    );
    assert!(
        !requests.is_empty() && !replies.is_empty(),
        "tshark: {requests:?} {replies:?}\n{all:?}"
    );
    assert!(
        requests.iter().all(|r| r[0] == VID && r[1] == INET_IP),
        "{requests:?}"
    );
    assert!(
        replies.iter().all(|r| r[0] == VID && r[1] == FG_MAC),
        "{replies:?}"
    );

    // conntrack: the instance's echo connection (translated addresses: the fixed IP inside).
    let list = vs.ctl_ok(&["conntrack", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let conns = v["connections"].as_array().unwrap();
    assert!(
        conns.iter().any(|c| c["proto"] == "icmp"
            && c["original"]["src"] == INET_IP
            && c["original"]["dst"] == I1_IP
            && c["port"] == "vm1"),
        "{list}"
    );
    let table = vs.ctl_ok(&["conntrack", "list"]);
    assert!(table.contains("icmp") && table.contains(I1_IP), "{table}");
    // By zone: vm1's zone lists it, another zone does not, and flushing another zone leaves it.
    let zone = conns
        .iter()
        .find(|c| c["port"] == "vm1")
        .and_then(|c| c["zone"].as_u64())
        .unwrap()
        .to_string();
    let other = (zone.parse::<u64>().unwrap() + 1000).to_string();
    let only = |z: &str| -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&vs.ctl_ok(&["conntrack", "list", "--zone", z, "--json"]))
                .unwrap();
        let a = v["connections"].as_array().unwrap();
        assert!(
            a.iter()
                .all(|c| c["zone"].as_u64().map(|n| n.to_string()).as_deref() == Some(z)),
            "{v}"
        );
        a.len()
    };
    assert!(only(&zone) >= 1);
    assert_eq!(only(&other), 0);
    let none = vs.ctl_ok(&["conntrack", "flush", "--zone", &other]);
    assert!(none.contains("flushed 0 "), "{none}");
    assert!(only(&zone) >= 1, "flushing another zone left vm1's");
    let flushed = vs.ctl_ok(&["conntrack", "flush"]);
    assert!(!flushed.contains("flushed 0 "), "{flushed}");
    let v: serde_json::Value =
        serde_json::from_str(&vs.ctl_ok(&["conntrack", "list", "--json"])).unwrap();
    assert!(
        !v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["original"]["src"] == INET_IP),
        "flushed connections are gone: {v}"
    );
    let _ = i1;
    vs.stop();
}
