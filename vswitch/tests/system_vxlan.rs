//! System tests of the VXLAN overlay: `vswitchd` (net_af_packet ports, in its own switch
//! namespace) tunnels self-service networks over an underlay veth to a remote compute node,
//! which is either a namespace with a Linux kernel VTEP, a namespace with a scapy injector,
//! or a second `vswitchd`.
//!
//! ```text
//!  compute1 (namespace sw / sw1)                       remote node (namespace rn)
//!  i1 198.51.100.11 ─ vm1 ┐                            eth0 10.0.0.12/24 (02:00:00:00:00:12)
//!                         vswitchd ─ overlay "ul" ──── vx0 (kernel VXLAN, VNI 101) ─ br0 ─ i2
//!      local_vtep_ip 10.0.0.11, 02:00:00:00:00:11                    198.51.100.22 (MTU 1450)
//!
//!  two-host variant: vswitchd compute1 (sw1) ─ ul ═══ ul ─ vswitchd compute2 (sw2)
//!    a1 198.51.100.11 (VNI 101)  b1 198.18.0.11 (VNI 102)  a2 198.51.100.22  b2 198.18.0.22
//!    compute3 (10.0.0.13, one port on VNI 102) exists only in the desired state.
//! ```
//!
//! Underlay addresses (10.0.0.0/24) and the overlay subnets (198.51.100.0/24 "selfservice2",
//! VNI 101; 198.18.0.0/24 "selfservice1", VNI 102) exist only inside the test's namespaces.
//! Each test builds its own topology and vswitchd(s) (unique names, torn down on drop, also
//! on panic) and ends by stopping every vswitchd, which must exit 0 with no mbuf leaked.
//! Needs root; without root or `ip netns` each test prints "skipped: needs root and DPDK" and
//! passes. Run: `cargo test -p vswitch --test system_vxlan -- --test-threads=1`
//! (`VST_VERBOSE=1` prints every captured frame).
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::{
    host_toml_overlay, instance_and_overlay_ports, ping, py, tcp_transfer, tshark_fields,
    InstanceNet, OverlayHost, Stats, Topology, Vswitchd,
};

// compute1's instances.
const I1_MAC: &str = "fa:16:3e:00:01:11";
const I1_IP: &str = "198.51.100.11";
const B1_MAC: &str = "fa:16:3e:00:02:11";
const B1_IP: &str = "198.18.0.11";
// compute2's instances (behind the kernel VTEP or the second vswitchd).
const I2_MAC: &str = "fa:16:3e:00:01:22";
const I2_IP: &str = "198.51.100.22";
const B2_MAC: &str = "fa:16:3e:00:02:22";
const B2_IP: &str = "198.18.0.22";
// Underlay.
const VTEP1: &str = "10.0.0.11";
const VTEP2: &str = "10.0.0.12";
const VTEP3: &str = "10.0.0.13";
const UL1_MAC: &str = "02:00:00:00:00:11";
const UL2_MAC: &str = "02:00:00:00:00:12";
const DVR1_MAC: &str = "fa:16:3f:00:00:11";
const DVR2_MAC: &str = "fa:16:3f:00:00:12";

/// Desired state of the one-network tests: selfservice2 (VNI 101), i1 on compute1 and i2 on
/// compute2 (the kernel VTEP at 10.0.0.12).
const STATE_ONE_NET: &str = r#"
networks:
  - id: net-selfservice2
    name: selfservice2
    provider:network_type: vxlan
    provider:segmentation_id: 101
    mtu: 1450
subnets:
  - id: subnet-selfservice2
    name: selfservice2-v4
    network_id: net-selfservice2
    cidr: 198.51.100.0/24
    ip_version: 4
    gateway_ip: 198.51.100.1
    enable_dhcp: false
ports:
  - id: port-i1
    network_id: net-selfservice2
    mac_address: "fa:16:3e:00:01:11"
    fixed_ips: [{subnet_id: subnet-selfservice2, ip_address: 198.51.100.11}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-i2
    network_id: net-selfservice2
    mac_address: "fa:16:3e:00:01:22"
    fixed_ips: [{subnet_id: subnet-selfservice2, ip_address: 198.51.100.22}]
    binding:host_id: compute2
    device_owner: compute:nova
    security_groups: [sg-open]
# Everything allowed both ways (security groups are enforced on ports with port security on;
# these tests are about the overlay, not filtering), packet by packet: overlay_rejects_bad_vxlan
# injects unsolicited ICMP echo replies that must reach i1, which a stateful group would
# rightly drop as invalid (no echo request was seen).
security_groups:
  - {id: sg-open, name: open, stateful: false}
security_group_rules:
  - {id: sg-open-in4, security_group_id: sg-open, direction: ingress, ethertype: IPv4}
  - {id: sg-open-in6, security_group_id: sg-open, direction: ingress, ethertype: IPv6}
  - {id: sg-open-out4, security_group_id: sg-open, direction: egress, ethertype: IPv4}
  - {id: sg-open-out6, security_group_id: sg-open, direction: egress, ethertype: IPv6}
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11, dvr_mac: "fa:16:3f:00:00:11"}
  - {host: compute2, vtep_ip: 10.0.0.12, dvr_mac: "fa:16:3f:00:00:12"}
"#;

/// Desired state of the two-host test (the same file on both hosts): selfservice2 (VNI 101)
/// with a port on compute1 and compute2, selfservice1 (VNI 102) with a port on compute1,
/// compute2 and compute3. compute3 never runs: it is only in the flood list of VNI 102.
const STATE_TWO_NETS: &str = r#"
networks:
  - id: net-selfservice2
    name: selfservice2
    provider:network_type: vxlan
    provider:segmentation_id: 101
    mtu: 1450
  - id: net-selfservice1
    name: selfservice1
    provider:network_type: vxlan
    provider:segmentation_id: 102
    mtu: 1450
subnets:
  - id: subnet-selfservice2
    name: selfservice2-v4
    network_id: net-selfservice2
    cidr: 198.51.100.0/24
    ip_version: 4
    gateway_ip: 198.51.100.1
    enable_dhcp: false
  - id: subnet-selfservice1
    name: selfservice1-v4
    network_id: net-selfservice1
    cidr: 198.18.0.0/24
    ip_version: 4
    gateway_ip: 198.18.0.1
    enable_dhcp: false
ports:
  - id: port-a1
    network_id: net-selfservice2
    mac_address: "fa:16:3e:00:01:11"
    fixed_ips: [{subnet_id: subnet-selfservice2, ip_address: 198.51.100.11}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-b1
    network_id: net-selfservice1
    mac_address: "fa:16:3e:00:02:11"
    fixed_ips: [{subnet_id: subnet-selfservice1, ip_address: 198.18.0.11}]
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-a2
    network_id: net-selfservice2
    mac_address: "fa:16:3e:00:01:22"
    fixed_ips: [{subnet_id: subnet-selfservice2, ip_address: 198.51.100.22}]
    binding:host_id: compute2
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-b2
    network_id: net-selfservice1
    mac_address: "fa:16:3e:00:02:22"
    fixed_ips: [{subnet_id: subnet-selfservice1, ip_address: 198.18.0.22}]
    binding:host_id: compute2
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-c3
    network_id: net-selfservice1
    mac_address: "fa:16:3e:00:02:33"
    fixed_ips: [{subnet_id: subnet-selfservice1, ip_address: 198.18.0.33}]
    binding:host_id: compute3
    device_owner: compute:nova
    security_groups: [sg-open]
# Everything allowed both ways (security groups are enforced on ports with port security on;
# these tests are about the overlay, not filtering).
security_groups:
  - {id: sg-open, name: open}
security_group_rules:
  - {id: sg-open-in4, security_group_id: sg-open, direction: ingress, ethertype: IPv4}
  - {id: sg-open-in6, security_group_id: sg-open, direction: ingress, ethertype: IPv6}
  - {id: sg-open-out4, security_group_id: sg-open, direction: egress, ethertype: IPv4}
  - {id: sg-open-out6, security_group_id: sg-open, direction: egress, ethertype: IPv6}
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11, dvr_mac: "fa:16:3f:00:00:11"}
  - {host: compute2, vtep_ip: 10.0.0.12, dvr_mac: "fa:16:3f:00:00:12"}
  - {host: compute3, vtep_ip: 10.0.0.13, dvr_mac: "fa:16:3f:00:00:13"}
"#;

// --- topology building blocks -------------------------------------------------------------

/// An instance namespace `role` whose `eth0` (MAC `mac`, `ip`/24, MTU 1450 as Neutron gives
/// a VXLAN network, IPv6 off) is joined to `sw_if` in the switch namespace.
fn add_instance(
    topo: &mut Topology,
    role: &str,
    sw: &str,
    sw_if: &str,
    mac: &str,
    ip: &str,
) -> String {
    let cidr = format!("{ip}/24");
    let n = InstanceNet::v4(mac, &cidr, 1450, None);
    topo.add_instance(role, sw, sw_if, &n)
}

/// compute`n`'s host config: instance ports (name = interface in the switch namespace,
/// Neutron port id) and the overlay port on interface `ul`.
fn overlay_host_toml(
    host_id: &str,
    prefix: &str,
    vtep: &str,
    dvr_mac: &str,
    instances: &[(&str, &str)],
    settings: &[&str],
) -> String {
    let ports = instance_and_overlay_ports(instances);
    let overlay = OverlayHost {
        local_vtep_ip: vtep,
        dvr_mac: Some(dvr_mac),
        settings,
        ..OverlayHost::default()
    };
    host_toml_overlay(host_id, prefix, &ports, &[], Some(&overlay))
}

/// One vswitchd (compute1) with instance i1 and an underlay veth to the remote node `rn`
/// (eth0 10.0.0.12/24). With `kernel_vtep`, `rn` also runs a Linux VXLAN device vx0
/// (VNI 101, learning on) bridged with instance `i2` (198.51.100.22).
struct Lab {
    vs: Option<Vswitchd>,
    topo: Topology,
    i1: String,
    rn: String,
    i2: Option<String>,
    started: Instant,
}

impl Lab {
    /// `overlay`: lines of the host's `[overlay]` section (none: the defaults).
    fn start(tag: &str, kernel_vtep: bool, overlay: &[&str]) -> Option<Lab> {
        let started = Instant::now();
        let mut topo = Topology::new(tag)?;
        let sw = topo.add_switch_ns("sw");
        let i1 = add_instance(&mut topo, "i1", &sw, "vm1", I1_MAC, I1_IP);

        let rn = topo.add_ns("rn");
        topo.disable_ipv6(&rn);
        topo.veth(&sw, "ul", &rn, "eth0");
        topo.set_mac_up(&sw, "ul", UL1_MAC);
        let rn_cidr = format!("{VTEP2}/24");
        for args in [
            &["ip", "link", "set", "eth0", "address", UL2_MAC][..],
            &["ip", "addr", "add", &rn_cidr, "dev", "eth0"],
            &["ip", "link", "set", "eth0", "up"],
            &[
                "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
            ],
        ] {
            topo.ok(&rn, args);
        }

        let i2 = kernel_vtep.then(|| {
            let i2 = topo.add_ns("i2");
            topo.disable_ipv6(&i2);
            topo.veth(&rn, "vi", &i2, "eth0");
            for args in [
                &[
                    "ip", "link", "add", "vx0", "type", "vxlan", "id", "101", "local", VTEP2,
                    "remote", VTEP1, "dstport", "4789", "dev", "eth0",
                ][..],
                &["ip", "link", "add", "br0", "type", "bridge"],
                &["ip", "link", "set", "vx0", "master", "br0"],
                &["ip", "link", "set", "vi", "master", "br0"],
                &["ip", "link", "set", "vi", "mtu", "1450"],
                &[
                    "ethtool", "-K", "vi", "tx", "off", "tso", "off", "gso", "off",
                ],
                &["ip", "link", "set", "vx0", "up"],
                &["ip", "link", "set", "vi", "up"],
                &["ip", "link", "set", "br0", "up"],
            ] {
                topo.ok(&rn, args);
            }
            let cidr = format!("{I2_IP}/24");
            for args in [
                &["ip", "link", "set", "eth0", "address", I2_MAC][..],
                &["ip", "link", "set", "eth0", "mtu", "1450"],
                &["ip", "addr", "add", &cidr, "dev", "eth0"],
                &["ip", "link", "set", "eth0", "up"],
                &[
                    "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
                ],
            ] {
                topo.ok(&i2, args);
            }
            i2
        });

        let host = overlay_host_toml(
            "compute1",
            &topo.name,
            VTEP1,
            DVR1_MAC,
            &[("vm1", "port-i1")],
            overlay,
        );
        let vs = Vswitchd::start(&topo, &sw, &host, STATE_ONE_NET);
        eprintln!(
            "[{}] topology and vswitchd up in {:?}",
            topo.name,
            started.elapsed()
        );
        Some(Lab {
            vs: Some(vs),
            topo,
            i1,
            rn,
            i2,
            started,
        })
    }

    fn stats(&mut self) -> Stats {
        self.vs.as_mut().expect("vswitchd running").stats()
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

/// Pings until one reply comes back (the first packets may be dropped while vswitchd ARPs
/// for the remote VTEP; with `-w`, ping keeps sending until `count` replies or the
/// deadline), then asserts that `count` more are all answered.
fn ping_ok(topo: &Topology, ns: &str, dst: &str, count: u32) {
    let (rc, text) = ping(topo, ns, dst, 1, 6);
    assert_eq!(
        rc, 0,
        "warm-up ping {ns} -> {dst} got no reply within 6 s:\n{text}"
    );
    let (rc, text) = ping(topo, ns, dst, count, 4);
    assert_eq!(rc, 0, "ping {ns} -> {dst} lost packets:\n{text}");
    assert!(text.contains(&format!("{count} received")), "{text}");
}

/// The first (outer) value of a tshark field that occurs several times (`"10.0.0.11,198.51.100.11"`).
fn outer(v: &str) -> &str {
    v.split(',').next().unwrap_or("")
}

/// The second (inner) value of a tshark field, or `""`.
fn inner(v: &str) -> &str {
    v.split(',').nth(1).unwrap_or("")
}

/// Snap length of underlay captures: outer headers (50 B) + inner Ethernet/IPv4/TCP with
/// options fit, the payload does not.
const SNAP: &str = "192";

// --- scapy helpers ------------------------------------------------------------------------

/// `arp_probe.py IFACE SRC_MAC SRC_IP TARGET_IP COUNT GAP_S`: sends COUNT broadcast ARP
/// requests for TARGET_IP and prints, as JSON, every ARP reply seen on IFACE meanwhile.
const ARP_PROBE_PY: &str = r#"
import json, sys, time
from scapy.config import conf
conf.verb = 0
from scapy.layers.l2 import ARP, Ether
from scapy.sendrecv import AsyncSniffer, sendp
iface, smac, sip, target, count, gap = sys.argv[1:7]
sn = AsyncSniffer(iface=iface, filter="arp")
sn.start()
time.sleep(0.5)
for _ in range(int(count)):
    sendp(Ether(src=smac, dst="ff:ff:ff:ff:ff:ff")
          / ARP(op=1, hwsrc=smac, psrc=sip, hwdst="00:00:00:00:00:00", pdst=target), iface=iface)
    time.sleep(float(gap))
time.sleep(0.5)
got = sn.stop() or []
print(json.dumps([{"eth_src": p[Ether].src, "eth_dst": p[Ether].dst, "op": p[ARP].op,
                   "hwsrc": p[ARP].hwsrc, "psrc": p[ARP].psrc, "hwdst": p[ARP].hwdst,
                   "pdst": p[ARP].pdst}
                  for p in got if ARP in p and p[ARP].op == 2]))
"#;

/// `flood.py IFACE SRC_MAC SRC_IP BCAST_IP UNKNOWN_IP N_UDP N_ARP`: N_UDP broadcast UDP
/// datagrams to BCAST_IP:9999 and N_ARP ARP requests for UNKNOWN_IP (no port has it, so no
/// ARP responder answers): all broadcast, all to be flooded.
const FLOOD_PY: &str = r#"
import sys
from scapy.config import conf
conf.verb = 0
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.sendrecv import sendp
iface, smac, sip, bip, unknown, n_udp, n_arp = sys.argv[1:8]
bc = "ff:ff:ff:ff:ff:ff"
frames = [Ether(src=smac, dst=bc) / IP(src=sip, dst=bip) / UDP(sport=40000, dport=9999)
          / Raw(b"flood-test-%d" % i) for i in range(int(n_udp))]
frames += [Ether(src=smac, dst=bc) / ARP(op=1, hwsrc=smac, psrc=sip, pdst=unknown)
           for _ in range(int(n_arp))]
sendp(frames, iface=iface, inter=0.02)
print("sent", len(frames))
"#;

/// `icmp.py IFACE SRC_MAC DST_MAC SRC_IP DST_IP COUNT ID [IP_LEN]`: COUNT ICMP echo
/// requests (IPv4 total length IP_LEN, default 42).
const ICMP_PY: &str = r#"
import sys
from scapy.config import conf
conf.verb = 0
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.sendrecv import sendp
iface, smac, dmac, sip, dip, count, ident = sys.argv[1:8]
ip_len = int(sys.argv[8]) if len(sys.argv) > 8 else 42
pad = b"isolation-test" + bytes(max(0, ip_len - 28 - 14))
sendp([Ether(src=smac, dst=dmac) / IP(src=sip, dst=dip) / ICMP(id=int(ident), seq=i) / Raw(pad)
       for i in range(int(count))], iface=iface, inter=0.01)
print("sent", count)
"#;

/// `inject.py IFACE DST_MAC SRC_MAC KIND=COUNT...`: VXLAN (and not quite VXLAN) frames from
/// the remote node to vswitchd's overlay port. The inner frame is an ICMP echo reply (the
/// instance answers nothing) from i2 to i1 whose ICMP id names the kind.
const INJECT_PY: &str = r#"
import sys
from scapy.config import conf
conf.verb = 0
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.sendrecv import sendp
iface, dmac, smac = sys.argv[1:4]
LOCAL, REMOTE, I1_MAC, I2_MAC, I1_IP, I2_IP = (
    "10.0.0.11", "10.0.0.12", "fa:16:3e:00:01:11", "fa:16:3e:00:01:22", "198.51.100.11", "198.51.100.22")
IDS = {"good": 0x600, "bad_flags": 0x601, "wrong_port": 0x602, "unknown_vni": 0x603,
       "unknown_vtep": 0x604, "inner_vlan": 0x605, "not_for_us": 0x606, "trunc_inner": 0x607}

def eth():
    return Ether(dst=dmac, src=smac)

def ip(src=REMOTE, dst=LOCAL, **kw):
    return IP(src=src, dst=dst, flags="DF", **kw)

def udp(dport=4789):
    return UDP(sport=50001, dport=dport, chksum=0)

def inner(kind, vlan=None):
    e = Ether(src=I2_MAC, dst=I1_MAC)
    if vlan is not None:
        e = e / Dot1Q(vlan=vlan)
    return e / IP(src=I2_IP, dst=I1_IP) / ICMP(type=0, id=IDS[kind], seq=1) / Raw(b"vxlan-reject")

def vx(vni=101, flags=0x08):
    return VXLAN(flags=flags, vni=vni)

def build(kind):
    if kind == "good":
        return eth() / ip() / udp() / vx() / inner(kind)
    if kind == "bad_flags":
        return eth() / ip() / udp() / vx(flags=0x00) / inner(kind)
    if kind == "wrong_port":
        return eth() / ip() / udp(dport=4790) / vx() / inner(kind)
    if kind == "unknown_vni":
        return eth() / ip() / udp() / vx(vni=999) / inner(kind)
    if kind == "unknown_vtep":
        return eth() / ip(src="10.0.0.99") / udp() / vx() / inner(kind)
    if kind == "inner_vlan":
        return eth() / ip() / udp() / vx() / inner(kind, vlan=5)
    if kind == "not_for_us":
        return eth() / ip(dst="10.0.0.50") / udp() / vx() / inner(kind)
    if kind == "trunc_vxlan":   # UDP to 4789 with 4 of the 8 VXLAN header bytes
        return eth() / ip() / udp() / Raw(bytes(vx())[:4])
    if kind == "trunc_udp":     # IPv4 (proto UDP) whose datagram ends inside the UDP header
        return eth() / ip(proto=17) / Raw(bytes(udp())[:4])
    if kind == "trunc_inner":   # a whole VXLAN header, then 10 bytes of an inner frame
        return eth() / ip() / udp() / vx() / Raw(bytes(inner(kind))[:10])
    if kind == "not_vxlan":     # TCP to our VTEP address
        return eth() / ip() / TCP(sport=40000, dport=80, flags="S")
    raise SystemExit("unknown kind " + kind)

frames = []
for arg in sys.argv[4:]:
    kind, n = arg.split("=")
    frames += [build(kind) for _ in range(int(n))]
sendp(frames, iface=iface, inter=0.003)
print("sent", len(frames))
"#;

// --- tests ------------------------------------------------------------------------------

/// The remote compute node is plain Linux: a kernel VXLAN device (VNI 101, learning on,
/// default remote 10.0.0.11) bridged to an instance. Both directions ping and carry 8 MiB of
/// TCP; the underlay frames are RFC 7348 VXLAN that tshark dissects as such.
#[test]
fn vxlan_interop_with_linux_kernel_vtep() {
    let Some(mut lab) = Lab::start("kvtep", true, &[]) else {
        return;
    };
    let i2 = lab.i2.clone().expect("kernel VTEP instance");
    let cap = lab.topo.capture_with(
        &lab.rn,
        "eth0",
        "cap-underlay",
        &["-s", SNAP, "-B", "16384", "udp port 4789 or arp"],
    );
    let before = lab.stats();

    ping_ok(&lab.topo, &lab.i1, I2_IP, 3);
    ping_ok(&lab.topo, &i2, I1_IP, 3);
    const BYTES: usize = 8 << 20;
    tcp_transfer(&lab.topo, &lab.i1, &i2, I2_IP, 5001, BYTES);
    tcp_transfer(&lab.topo, &i2, &lab.i1, I1_IP, 5002, BYTES);

    let pcap = cap.stop_file();
    let after = lab.stats();
    let frames = tshark_fields(
        &pcap,
        "vxlan",
        &[
            "ip.src",
            "ip.dst",
            "udp.srcport",
            "udp.dstport",
            "vxlan.vni",
            "ip.checksum.status",
            "ip.flags.df",
            "ip.ttl",
            "udp.checksum",
            "vxlan.flags",
            "tcp.srcport",
            "tcp.dstport",
        ],
        false,
    );
    let (mut ours, mut kernels) = (0u64, 0u64);
    // Outer UDP source ports vswitchd chose per inner TCP flow (ip src, dst, tcp ports).
    let mut sport_of_flow: BTreeMap<(String, String, String, String), BTreeSet<u16>> =
        BTreeMap::new();
    for f in &frames {
        let (src, dst) = (outer(&f[0]), outer(&f[1]));
        assert_eq!(f[3], "4789", "VXLAN frame not to UDP 4789: {f:?}");
        assert_eq!(
            f[4], "101",
            "VXLAN frame with VNI {} instead of 101: {f:?}",
            f[4]
        );
        assert_eq!(
            outer(&f[5]),
            "1",
            "bad outer IPv4 checksum (status {}): {f:?}",
            f[5]
        );
        match (src, dst) {
            (VTEP1, VTEP2) => {
                ours += 1;
                let sport: u16 = f[2].parse().unwrap_or_else(|_| panic!("udp.srcport {f:?}"));
                assert!(
                    sport >= 49152,
                    "vswitchd's outer UDP source port {sport} is below 49152: {f:?}"
                );
                assert_eq!(
                    outer(&f[6]),
                    "1",
                    "vswitchd's outer IPv4 lacks DF (df = true by default): {f:?}"
                );
                assert_eq!(
                    outer(&f[7]),
                    "64",
                    "vswitchd's outer TTL is not the default 64: {f:?}"
                );
                assert_eq!(
                    f[8], "0x0000",
                    "outer UDP checksum must be 0 with udp_checksum = false: {f:?}"
                );
                assert_eq!(
                    f[9], "0x0800",
                    "VXLAN flags must be exactly I (0x08): {f:?}"
                );
                if !f[10].is_empty() {
                    sport_of_flow
                        .entry((
                            inner(&f[0]).into(),
                            inner(&f[1]).into(),
                            f[10].clone(),
                            f[11].clone(),
                        ))
                        .or_default()
                        .insert(sport);
                }
            }
            (VTEP2, VTEP1) => kernels += 1,
            _ => panic!("VXLAN frame between unexpected VTEPs: {f:?}"),
        }
    }
    let min_data_frames = (BYTES / 1500) as u64;
    assert!(
        ours >= min_data_frames && kernels >= min_data_frames,
        "expected >= {min_data_frames} VXLAN frames each way, saw {ours} from vswitchd and {kernels} from the kernel"
    );
    assert!(
        sport_of_flow.len() >= 2,
        "no inner TCP flows seen from vswitchd: {sport_of_flow:?}"
    );
    for (flow, ports) in &sport_of_flow {
        assert_eq!(
            ports.len(),
            1,
            "inner flow {flow:?} left with several outer source ports {ports:?} (must be a hash of the flow)"
        );
    }
    eprintln!("underlay: {ours} VXLAN frames from vswitchd, {kernels} from the kernel VTEP; per-flow source ports {sport_of_flow:?}");

    // Counters. vswitchd -> kernel frames were captured where they arrive, so vswitchd
    // encapsulated at least those; kernel -> vswitchd frames were captured where they leave,
    // and the af_packet ring may overflow in a TCP burst (TCP resends), so those are checked
    // against what the overlay port received instead.
    let ev = |n: &str| after.event_delta(&before, n);
    let (encap, decap) = (ev("tunnel.encap"), ev("tunnel.decap"));
    let overlay_rx = after.port("overlay").rx_packets - before.port("overlay").rx_packets;
    eprintln!(
        "counters: encap {encap}, decap {decap}, overlay rx {overlay_rx}, drops {:?}",
        after.drops_since(&before)
    );
    assert!(
        encap >= ours,
        "tunnel.encap {encap} < {ours} frames captured at the kernel VTEP"
    );
    assert!(
        decap <= overlay_rx && overlay_rx - decap <= 4,
        "tunnel.decap {decap} of {overlay_rx} frames received on the overlay port (only ARP may be left)"
    );
    assert!(
        decap >= kernels * 9 / 10,
        "tunnel.decap {decap}, but the kernel VTEP sent {kernels}"
    );
    let (v0, v1) = (before.vtep(VTEP2), after.vtep(VTEP2));
    assert_eq!(
        (v1.tx_packets - v0.tx_packets, v1.rx_packets - v0.rx_packets),
        (encap, decap),
        "vtep {VTEP2} (tx, rx) vs (tunnel.encap, tunnel.decap): the only remote VTEP"
    );
    let (n0, n1) = (before.vni(101), after.vni(101));
    assert_eq!(
        (n1.tx_packets - n0.tx_packets, n1.rx_packets - n0.rx_packets),
        (encap, decap),
        "vni 101 (tx, rx) vs (tunnel.encap, tunnel.decap): the only VNI"
    );
    // (The kernel learns our VTEP's MAC from vswitchd's ARP request, so it may never ARP for
    // 10.0.0.11 itself: tunnel.arp_reply_sent is checked in arp_responder_answers_locally.)
    for e in [
        "tunnel.arp_request_sent",
        "tunnel.neighbor_learned",
        "tunnel.arp_responder",
    ] {
        assert!(
            ev(e) >= 1,
            "{e} did not count (events now {})",
            after.0["events"]
        );
    }
    for r in [
        "tunnel.bad_flags",
        "tunnel.unknown_vni",
        "tunnel.unknown_vtep",
        "tunnel.truncated",
        "tunnel.too_big",
    ] {
        assert_eq!(
            after.drop_delta(&before, r),
            0,
            "{r} grew during legitimate traffic"
        );
    }
    lab.finish();
}

/// Two vswitchd hosts joined by one underlay veth carry two VXLAN networks: instances of one
/// network reach each other across hosts (ping, TCP), the networks stay apart, and broadcast
/// is replicated head-end only to the hosts with ports on the network (the flood list).
#[test]
fn east_west_same_network_across_two_vswitchd_hosts() {
    let started = Instant::now();
    let Some(mut topo) = Topology::new("ew") else {
        return;
    };
    let sw1 = topo.add_switch_ns("sw1");
    let sw2 = topo.add_switch_ns("sw2");
    let a1 = add_instance(&mut topo, "a1", &sw1, "a1", I1_MAC, I1_IP);
    let b1 = add_instance(&mut topo, "b1", &sw1, "b1", B1_MAC, B1_IP);
    let a2 = add_instance(&mut topo, "a2", &sw2, "a2", I2_MAC, I2_IP);
    let b2 = add_instance(&mut topo, "b2", &sw2, "b2", B2_MAC, B2_IP);
    topo.veth(&sw1, "ul", &sw2, "ul");
    topo.set_mac_up(&sw1, "ul", UL1_MAC);
    topo.set_mac_up(&sw2, "ul", UL2_MAC);
    let h1 = overlay_host_toml(
        "compute1",
        &format!("{}-c1", topo.name),
        VTEP1,
        DVR1_MAC,
        &[("a1", "port-a1"), ("b1", "port-b1")],
        &[],
    );
    let h2 = overlay_host_toml(
        "compute2",
        &format!("{}-c2", topo.name),
        VTEP2,
        DVR2_MAC,
        &[("a2", "port-a2"), ("b2", "port-b2")],
        &[],
    );
    let mut vs1 = Vswitchd::start_as(&topo, &sw1, "vswitchd-c1", &h1, STATE_TWO_NETS);
    let mut vs2 = Vswitchd::start_as(&topo, &sw2, "vswitchd-c2", &h2, STATE_TWO_NETS);
    eprintln!("[{}] two hosts up in {:?}", topo.name, started.elapsed());

    // 1. Same network across hosts: ping both ways on both networks, TCP on both.
    ping_ok(&topo, &a1, I2_IP, 3);
    ping_ok(&topo, &b2, B1_IP, 3);
    ping_ok(&topo, &a2, I1_IP, 2);
    ping_ok(&topo, &b1, B2_IP, 2);
    tcp_transfer(&topo, &a2, &a1, I1_IP, 5001, 4 << 20);
    tcp_transfer(&topo, &b1, &b2, B2_IP, 5002, 4 << 20);

    // 2. Different networks: a1 (VNI 101) -> b2 (VNI 102) and b1 (VNI 102) -> a2 (VNI 101).
    topo.ok(&a1, &["ip", "route", "add", "198.18.0.0/24", "dev", "eth0"]);
    topo.ok(
        &b1,
        &["ip", "route", "add", "198.51.100.0/24", "dev", "eth0"],
    );
    let cap_b2 = topo.capture(&b2, "eth0", "cap-b2");
    let cap_a2 = topo.capture(&a2, "eth0", "cap-a2");
    let cap_ul2 = topo.capture_with(&sw2, "ul", "cap-ul-in2", &["-Q", "in", "-s", SNAP]);
    // The ARP responder answers only for ports of the asker's own network.
    let replies = arp_probe(&topo, &a1, I1_MAC, I1_IP, B2_IP, 2);
    assert_eq!(
        replies,
        serde_json::json!([]),
        "a1 (VNI 101) got ARP replies for b2's address on VNI 102"
    );
    let (rc, text) = ping(&topo, &a1, B2_IP, 2, 2);
    assert_ne!(rc, 0, "a1 (VNI 101) reached b2 (VNI 102):\n{text}");
    let (rc, text) = ping(&topo, &b1, I2_IP, 2, 2);
    assert_ne!(rc, 0, "b1 (VNI 102) reached a2 (VNI 101):\n{text}");
    // Frames addressed straight to the other network's MACs, unicast and broadcast.
    for (ns, smac, sip, dmac, dip, id) in [
        (&a1, I1_MAC, I1_IP, B2_MAC, B2_IP, "4401"),
        (&a1, I1_MAC, I1_IP, "ff:ff:ff:ff:ff:ff", B2_IP, "4402"),
        (&b1, B1_MAC, B1_IP, I2_MAC, I2_IP, "4403"),
        (&b1, B1_MAC, B1_IP, "ff:ff:ff:ff:ff:ff", I2_IP, "4404"),
    ] {
        let out = py(&topo, ns, ICMP_PY, &["eth0", smac, dmac, sip, dip, "5", id]);
        assert!(out.contains("sent 5"), "{out}");
    }
    // Positive controls: each capture sees its own network.
    ping_ok(&topo, &b1, B2_IP, 1);
    ping_ok(&topo, &a1, I2_IP, 1);
    let seen_b2 = cap_b2.stop();
    let seen_a2 = cap_a2.stop();
    let ul2 = cap_ul2.stop_file();
    assert_isolated(
        &seen_b2,
        "b2 (VNI 102)",
        (I1_MAC, I1_IP),
        "a1 (VNI 101)",
        B1_MAC,
        "b1",
    );
    assert_isolated(
        &seen_a2,
        "a2 (VNI 101)",
        (B1_MAC, B1_IP),
        "b1 (VNI 102)",
        I1_MAC,
        "a1",
    );
    // On the underlay, every frame of a1 is on VNI 101 and every frame of b1 on VNI 102.
    let vx = tshark_fields(&ul2, "vxlan", &["vxlan.vni", "eth.src"], false);
    assert!(
        !vx.is_empty(),
        "no VXLAN frames from compute1 on the underlay"
    );
    for f in &vx {
        let src = inner(&f[1]);
        let ok = match src {
            I1_MAC => f[0] == "101",
            B1_MAC => f[0] == "102",
            _ => true,
        };
        assert!(ok, "inner source {src} carried on VNI {}: {f:?}", f[0]);
    }

    // 3. Flood lists: VNI 101 = {compute2}, VNI 102 = {compute2, compute3 (10.0.0.13)}.
    // Phase 1: a1 floods 8 broadcasts on VNI 101; phase 2: b1 floods 4 on VNI 102. What
    // compute1 sends is captured where it arrives (compute2's end of the underlay, `-Q in`).
    let cap_ul2 = topo.capture_with(&sw2, "ul", "cap-flood-in2", &["-Q", "in", "-s", SNAP]);
    let cap_ul1 = topo.capture_with(&sw1, "ul", "cap-flood-in1", &["-Q", "in", "-s", SNAP]);
    let cap_a2 = topo.capture_with(&a2, "eth0", "cap-flood-a2", &["ether broadcast"]);
    let cap_b2 = topo.capture_with(&b2, "eth0", "cap-flood-b2", &["ether broadcast"]);
    let s0 = vs1.stats();
    let out = py(
        &topo,
        &a1,
        FLOOD_PY,
        &[
            "eth0",
            I1_MAC,
            I1_IP,
            "198.51.100.255",
            "198.51.100.200",
            "5",
            "3",
        ],
    );
    assert!(out.contains("sent 8"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let s1 = vs1.stats();
    let out = py(
        &topo,
        &b1,
        FLOOD_PY,
        &[
            "eth0",
            B1_MAC,
            B1_IP,
            "198.18.0.255",
            "198.18.0.200",
            "4",
            "0",
        ],
    );
    assert!(out.contains("sent 4"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let s2 = vs1.stats();
    let fields = [
        "ip.src",
        "ip.dst",
        "vxlan.vni",
        "arp.opcode",
        "arp.dst.proto_ipv4",
    ];
    let from1 = tshark_fields(&cap_ul2.stop_file(), "", &fields, false);
    let from2 = tshark_fields(&cap_ul1.stop_file(), "vxlan", &fields, false);
    let a2_bcast = cap_a2.stop();
    let b2_bcast = cap_b2.stop();

    // Which phase's broadcast a VXLAN frame carries (by its inner destination), if any.
    let phase = |f: &Vec<String>| -> Option<u8> {
        match (inner(&f[1]), f[4].as_str()) {
            ("198.51.100.255", _) | (_, "198.51.100.200") => Some(1),
            ("198.18.0.255", _) => Some(2),
            _ => None,
        }
    };
    let is_vxlan = |f: &&Vec<String>| !f[2].is_empty();
    let count = |pred: &dyn Fn(&Vec<String>) -> bool| {
        from1.iter().filter(is_vxlan).filter(|f| pred(f)).count() as u64
    };
    let p1_to2 = count(&|f| phase(f) == Some(1) && outer(&f[1]) == VTEP2 && f[2] == "101");
    let p2_to2 = count(&|f| phase(f) == Some(2) && outer(&f[1]) == VTEP2 && f[2] == "102");
    let to3 = count(&|f| outer(&f[1]) == VTEP3);
    assert_eq!(
        p1_to2, 8,
        "VNI 101 broadcasts carried to compute2: {from1:#?}"
    );
    assert_eq!(
        p2_to2, 4,
        "VNI 102 broadcasts carried to compute2: {from1:#?}"
    );
    assert_eq!(
        count(&|f| phase(f).is_some()),
        12,
        "broadcasts carried anywhere else: {from1:#?}"
    );
    assert_eq!(
        to3, 0,
        "VXLAN frames to compute3, whose MAC nobody answers for: {from1:#?}"
    );
    // compute1 ARPs for compute3 only once VNI 102 (whose flood list has it) floods: every
    // ARP request for 10.0.0.13 comes after the last VNI 101 broadcast.
    let last_p1 = from1
        .iter()
        .rposition(|f| is_vxlan(&f) && phase(f) == Some(1))
        .expect("phase 1 frames");
    let arp3: Vec<usize> = from1
        .iter()
        .enumerate()
        .filter(|(_, f)| f[2].is_empty() && f[3] == "1" && f[4] == VTEP3)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !arp3.is_empty(),
        "the VNI 102 broadcast did not make compute1 ARP for compute3 ({VTEP3}): {from1:#?}"
    );
    assert!(
        arp3[0] > last_p1,
        "compute1 ARPed for compute3 during the VNI 101 broadcast: {from1:#?}"
    );
    assert_eq!(
        s1.drop_delta(&s0, "tunnel.unresolved"),
        0,
        "the VNI 101 broadcast met an unresolved VTEP"
    );
    assert_eq!(
        s2.drop_delta(&s1, "tunnel.unresolved"),
        4,
        "each of the 4 VNI 102 broadcasts should be dropped once for compute3 (unresolved)"
    );
    // The per-VTEP and per-VNI counters agree with the underlay.
    let vx_to = |ip: &str| count(&|f| outer(&f[1]) == ip);
    let vx_vni = |vni: &str| count(&|f| f[2] == vni);
    let d = |ip: &str| s2.vtep(ip).tx_packets - s0.vtep(ip).tx_packets;
    assert_eq!(
        d(VTEP2),
        vx_to(VTEP2),
        "vtep {VTEP2} tx vs VXLAN frames captured to it"
    );
    assert_eq!(d(VTEP3), 0, "vtep {VTEP3} tx (never resolved)");
    assert_eq!(
        s2.vni(101).tx_packets - s0.vni(101).tx_packets,
        vx_vni("101"),
        "vni 101 tx vs capture"
    );
    assert_eq!(
        s2.vni(102).tx_packets - s0.vni(102).tx_packets,
        vx_vni("102"),
        "vni 102 tx vs capture"
    );
    // compute2 delivers each broadcast to its port of that network only, and does not send
    // tunnel traffic back into the overlay.
    let n = |lines: &[String], mac: &str, marker: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{mac} >")) && l.contains(marker))
            .count()
    };
    let a2_udp = n(&a2_bcast, I1_MAC, "198.51.100.255.9999:");
    let a2_arp = n(&a2_bcast, I1_MAC, "who-has 198.51.100.200");
    assert_eq!(
        (a2_udp, a2_arp),
        (5, 3),
        "a2 should get a1's 5 UDP + 3 ARP broadcasts: {a2_bcast:#?}"
    );
    assert_eq!(
        n(&b2_bcast, B1_MAC, "198.18.0.255.9999:"),
        4,
        "b2 should get b1's 4 broadcasts: {b2_bcast:#?}"
    );
    assert_eq!(
        n(&a2_bcast, B1_MAC, ""),
        0,
        "a2 (VNI 101) got b1's broadcasts: {a2_bcast:#?}"
    );
    assert_eq!(
        n(&b2_bcast, I1_MAC, ""),
        0,
        "b2 (VNI 102) got a1's broadcasts: {b2_bcast:#?}"
    );
    let reflected: Vec<_> = from2.iter().filter(|f| phase(f).is_some()).collect();
    assert!(
        reflected.is_empty(),
        "compute2 sent tunnel broadcasts back into the overlay: {reflected:#?}"
    );

    let st2 = vs2.stats();
    assert_eq!(st2.drop("tunnel.unknown_vtep"), 0);
    assert!(st2.event("tunnel.decap") >= 12);
    let f1 = vs1.stop();
    let f2 = vs2.stop();
    eprintln!(
        "[{}] done in {:?}; drops compute1 {:?}, compute2 {:?}",
        topo.name,
        started.elapsed(),
        f1.nonzero_drops(),
        f2.nonzero_drops()
    );
}

/// Runs [`ARP_PROBE_PY`] in `ns` and returns its JSON list of replies.
fn arp_probe(
    topo: &Topology,
    ns: &str,
    smac: &str,
    sip: &str,
    target: &str,
    count: u32,
) -> serde_json::Value {
    let out = py(
        topo,
        ns,
        ARP_PROBE_PY,
        &["eth0", smac, sip, target, &count.to_string(), "0.1"],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("arp_probe output {out:?}: {e}"))
}

/// An instance's ARP request for a port on another host is answered by vswitchd on this
/// host, byte for byte as that port would, and never goes into the overlay.
#[test]
fn arp_responder_answers_locally() {
    let Some(mut lab) = Lab::start("arpr", false, &[]) else {
        return;
    };
    let cap = lab
        .topo
        .capture_with(&lab.rn, "eth0", "cap-underlay", &["-s", SNAP]);
    let s0 = lab.stats();
    let replies = arp_probe(&lab.topo, &lab.i1, I1_MAC, I1_IP, I2_IP, 3);
    let s1 = lab.stats();
    let replies = replies.as_array().expect("list");
    assert_eq!(
        replies.len(),
        3,
        "expected 3 ARP replies for {I2_IP}: {replies:?}"
    );
    for r in replies {
        for (k, want) in [
            ("eth_src", I2_MAC),
            ("eth_dst", I1_MAC),
            ("hwsrc", I2_MAC),
            ("psrc", I2_IP),
            ("hwdst", I1_MAC),
            ("pdst", I1_IP),
        ] {
            assert_eq!(r[k], want, "ARP reply field {k}: {r}");
        }
    }
    assert_eq!(
        s1.event_delta(&s0, "tunnel.arp_responder"),
        3,
        "tunnel.arp_responder"
    );
    assert_eq!(
        s1.event_delta(&s0, "tunnel.encap"),
        0,
        "something was encapsulated while answering"
    );
    assert_eq!(s1.vtep(VTEP2).tx_packets, s0.vtep(VTEP2).tx_packets);

    // Positive control: an ARP for an address no port has is flooded into the overlay (the
    // first may be dropped while vswitchd resolves the remote VTEP).
    let none = arp_probe(&lab.topo, &lab.i1, I1_MAC, I1_IP, "198.51.100.200", 3);
    assert_eq!(
        none,
        serde_json::json!([]),
        "ARP for an unknown address was answered"
    );
    let s2 = lab.stats();
    assert_eq!(
        s2.event_delta(&s1, "tunnel.arp_responder"),
        0,
        "answered for an unknown address"
    );

    // (`!icmp`: the remote node, which has no VXLAN socket, answers the flooded frames with
    // ICMP port unreachable quoting them; vswitchd counts those as tunnel.not_vxlan.)
    let pcap = cap.stop_file();
    let inner_arp = tshark_fields(
        &pcap,
        "vxlan && arp && !icmp",
        &["arp.dst.proto_ipv4", "vxlan.vni"],
        false,
    );
    let for_i2: Vec<_> = inner_arp.iter().filter(|f| f[0] == I2_IP).collect();
    assert!(
        for_i2.is_empty(),
        "ARP requests for {I2_IP} went into the overlay: {for_i2:?}"
    );
    let flooded = inner_arp
        .iter()
        .filter(|f| f[0] == "198.51.100.200" && f[1] == "101")
        .count() as u64;
    let unresolved = s2.drop_delta(&s1, "tunnel.unresolved");
    assert!(
        flooded >= 2,
        "ARP for an unknown address not flooded to the overlay: {inner_arp:?}"
    );
    assert_eq!(
        flooded + unresolved,
        3,
        "flooded {flooded} + dropped while unresolved {unresolved}"
    );

    // On the underlay, vswitchd answers ARP for its own VTEP address, and only for it.
    let ours = arp_probe(&lab.topo, &lab.rn, UL2_MAC, VTEP2, VTEP1, 2);
    let others = arp_probe(&lab.topo, &lab.rn, UL2_MAC, VTEP2, "10.0.0.50", 2);
    let s3 = lab.stats();
    let ours = ours.as_array().expect("list");
    assert_eq!(
        ours.len(),
        2,
        "ARP replies for local_vtep_ip {VTEP1}: {ours:?}"
    );
    for r in ours {
        for (k, want) in [
            ("eth_src", UL1_MAC),
            ("eth_dst", UL2_MAC),
            ("hwsrc", UL1_MAC),
            ("psrc", VTEP1),
            ("hwdst", UL2_MAC),
            ("pdst", VTEP2),
        ] {
            assert_eq!(r[k], want, "underlay ARP reply field {k}: {r}");
        }
    }
    assert_eq!(
        others,
        serde_json::json!([]),
        "vswitchd answered ARP for another underlay address"
    );
    assert_eq!(
        s3.event_delta(&s2, "tunnel.arp_reply_sent"),
        2,
        "tunnel.arp_reply_sent"
    );
    lab.finish();
}

/// Frames injected on the underlay that are not valid VXLAN for this host are dropped, each
/// under its own counter, and never reach the instance.
#[test]
fn overlay_rejects_bad_vxlan() {
    let Some(mut lab) = Lab::start("rej", false, &[]) else {
        return;
    };
    let cap = lab.topo.capture(&lab.i1, "eth0", "cap-i1");
    let before = lab.stats();
    // kind -> (frames, drop counter).
    let plan: &[(&str, u32, Option<&str>)] = &[
        ("good", 2, None),
        ("bad_flags", 3, Some("tunnel.bad_flags")),
        ("wrong_port", 4, Some("tunnel.wrong_port")),
        ("unknown_vni", 5, Some("tunnel.unknown_vni")),
        ("unknown_vtep", 6, Some("tunnel.unknown_vtep")),
        ("inner_vlan", 7, Some("tunnel.inner_vlan")),
        ("not_for_us", 8, Some("tunnel.not_for_us")),
        ("trunc_vxlan", 3, Some("tunnel.truncated")),
        ("trunc_udp", 3, Some("tunnel.truncated")),
        ("trunc_inner", 3, Some("tunnel.truncated")),
        ("not_vxlan", 2, Some("tunnel.not_vxlan")),
    ];
    let mut args = vec!["eth0".to_owned(), UL1_MAC.to_owned(), UL2_MAC.to_owned()];
    args.extend(plan.iter().map(|(k, n, _)| format!("{k}={n}")));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let total: u32 = plan.iter().map(|p| p.1).sum();
    let out = py(&lab.topo, &lab.rn, INJECT_PY, &argv);
    assert!(out.contains(&format!("sent {total}")), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let after = lab.stats();

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, n, reason) in plan {
        if let Some(r) = reason {
            *want.entry((*r).to_owned()).or_default() += u64::from(*n);
        }
    }
    let got: BTreeMap<String, u64> = after.drops_since(&before).into_iter().collect();
    assert_eq!(
        got, want,
        "drop counter deltas (left: measured, right: expected)"
    );
    assert_eq!(
        after.event_delta(&before, "tunnel.decap"),
        2,
        "tunnel.decap: only the 2 good frames"
    );
    let overlay = after.port("overlay").rx_packets - before.port("overlay").rx_packets;
    assert_eq!(overlay, u64::from(total), "overlay port rx");

    let delivered = tshark_fields(
        &cap.stop_file(),
        "icmp",
        &["icmp.ident", "vlan.id", "ip.src"],
        false,
    );
    let idents: Vec<&str> = delivered.iter().map(|f| f[0].as_str()).collect();
    assert_eq!(
        idents,
        vec!["1536", "1536"],
        "the instance must receive exactly the 2 good frames (ICMP id 0x600), got {delivered:?}"
    );
    assert!(
        delivered.iter().all(|f| f[1].is_empty()),
        "a tagged frame reached the instance: {delivered:?}"
    );
    lab.finish();
}

/// With `[overlay] mtu = 1400`, an inner frame whose encapsulation would make a 1401-byte
/// outer IPv4 packet is dropped (tunnel.too_big) and one that makes exactly 1400 leaves.
#[test]
fn inner_frame_over_underlay_mtu_is_dropped_as_too_big() {
    let Some(mut lab) = Lab::start("big", false, &["mtu = 1400"]) else {
        return;
    };
    // The instance may send up to 1500 here; the switch, not the instance, must refuse.
    lab.topo
        .ok(&lab.i1, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    let cap = lab.topo.capture_with(
        &lab.rn,
        "eth0",
        "cap-underlay",
        &["-s", "96", "udp port 4789 and src host 10.0.0.11"],
    );
    let i1 = lab.i1.clone();
    let send = |topo: &Topology, ident: &str, ip_len: &str, count: &str| {
        let args = ["eth0", I1_MAC, I2_MAC, I1_IP, I2_IP, count, ident, ip_len];
        let out = py(topo, &i1, ICMP_PY, &args);
        assert!(out.contains(&format!("sent {count}")), "{out}");
    };
    // Resolve the remote VTEP first (this frame is dropped as tunnel.unresolved).
    send(&lab.topo, "4500", "100", "1");
    std::thread::sleep(Duration::from_millis(500));
    let s0 = lab.stats();
    send(&lab.topo, "4501", "1350", "3"); // inner frame 1364 B: outer IPv4 1400 B
    send(&lab.topo, "4502", "1351", "3"); // outer IPv4 1401 B: too big
    std::thread::sleep(Duration::from_millis(300));
    let s1 = lab.stats();
    assert_eq!(s1.drop_delta(&s0, "tunnel.too_big"), 3, "tunnel.too_big");
    assert_eq!(s1.event_delta(&s0, "tunnel.encap"), 3, "tunnel.encap");
    let frames = tshark_fields(&cap.stop_file(), "vxlan", &["ip.len", "icmp.ident"], false);
    let sizes: Vec<(&str, &str)> = frames
        .iter()
        .map(|f| (outer(&f[0]), f[1].as_str()))
        .filter(|(_, id)| *id != "4500")
        .collect();
    assert_eq!(
        sizes,
        vec![("1400", "4501"); 3],
        "VXLAN frames on the underlay (outer IPv4 length, inner ICMP id)"
    );
    lab.finish();
}

/// `[overlay]` ttl, df and udp_checksum shape the outer headers: TTL 7, no DF, and a UDP
/// checksum that verifies (RFC 768, pseudo-header included).
#[test]
fn outer_ttl_df_and_udp_checksum_follow_overlay_settings() {
    let Some(mut lab) = Lab::start(
        "hdr",
        false,
        &["ttl = 7", "df = false", "udp_checksum = true"],
    ) else {
        return;
    };
    let cap = lab.topo.capture_with(
        &lab.rn,
        "eth0",
        "cap-underlay",
        &["udp port 4789 and src host 10.0.0.11"],
    );
    let s0 = lab.stats();
    // The first frame is dropped while vswitchd resolves the remote VTEP.
    for (id, n) in [("4600", "1"), ("4601", "3")] {
        let args = ["eth0", I1_MAC, I2_MAC, I1_IP, I2_IP, n, id, "300"];
        let out = py(&lab.topo, &lab.i1, ICMP_PY, &args);
        assert!(out.contains(&format!("sent {n}")), "{out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let s1 = lab.stats();
    let fields = [
        "ip.ttl",
        "ip.flags.df",
        "ip.checksum.status",
        "udp.checksum.status",
        "icmp.ident",
    ];
    let frames = tshark_fields(&cap.stop_file(), "vxlan", &fields, false);
    let ours: Vec<_> = frames.iter().filter(|f| f[4] == "4601").collect();
    assert_eq!(ours.len(), 3, "VXLAN frames of the 3 pings: {frames:?}");
    for f in ours {
        assert_eq!(outer(&f[0]), "7", "outer TTL (ttl = 7): {f:?}");
        assert_eq!(outer(&f[1]), "0", "outer DF (df = false): {f:?}");
        assert_eq!(outer(&f[2]), "1", "outer IPv4 checksum: {f:?}");
        assert_eq!(
            f[3], "1",
            "outer UDP checksum (udp_checksum = true) must verify: {f:?}"
        );
    }
    assert_eq!(
        s1.event_delta(&s0, "tunnel.encap"),
        frames.len() as u64,
        "tunnel.encap vs VXLAN frames on the underlay"
    );
    lab.finish();
}

/// A capture on `who` holds no frame of `foreign` (its MAC or IP), and at least one frame from
/// `own_mac` (`own`, on the same network): the positive control that the capture worked.
fn assert_isolated(
    seen: &[String],
    who: &str,
    foreign: (&str, &str),
    foreign_name: &str,
    own_mac: &str,
    own: &str,
) {
    let leaked: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(foreign.0) || l.contains(foreign.1))
        .collect();
    assert!(
        leaked.is_empty(),
        "{who} received frames of {foreign_name}: {leaked:#?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with(&format!("{own_mac} >"))),
        "{who} saw nothing from {own}: {seen:#?}"
    );
}
