//! System tests of the distributed virtual router (DVR): `vswitchd` routes between the
//! self-service networks of router1 on the host of the sending instance, as the seed's
//! "East-west scenario 1" describes (shared/seed/ovs-dvr-ha.txt).
//!
//! ```text
//!  compute1 (namespace sw1)                                     compute2 (namespace sw2)
//!  i1 198.51.100.11 ─ vm1 ┐                                   ┌ vm2 ─ i2 198.18.0.22
//!     fd00:198:51:100::11 vswitchd ─ ul ═══ underlay ═══ ul ─ vswitchd   fd00:198:18::22
//!                         VTEP 10.0.0.11                VTEP 10.0.0.12
//!                         DVR MAC fa:16:3f:00:00:11     DVR MAC fa:16:3f:00:00:12
//!
//!  router1 (distributed): selfservice1 (VNI 101) 198.51.100.1 / fd00:198:51:100::1
//!                         selfservice2 (VNI 102) 198.18.0.1   / fd00:198:18::1
//!
//!  same-host variant: i1 and i2 both on compute1; the overlay port's veth peer (namespace
//!  rn) only listens.
//! ```
//!
//! Instances get their addresses and default routes (v4 and v6, via the gateway addresses)
//! statically. Networks and instances have MTU 1500, like the underlay (`[overlay] mtu =
//! 1500`), so only the 50 bytes of VXLAN limit routed packets that cross hosts (to 1450).
//! Underlay addresses (10.0.0.0/24) and the overlay subnets exist only inside the test's
//! namespaces, which are torn down on drop (also on panic); every vswitchd must exit 0 with
//! no mbuf leaked. Needs root; without root each test prints "skipped: needs root and DPDK"
//! and passes. Run: `cargo test -p vswitch --test system_dvr -- --test-threads=1`
//! (`VST_VERBOSE=1` prints every captured frame of `Capture::stop`).
mod support;

use std::collections::BTreeSet;
use std::time::Instant;

use support::{
    host_toml_overlay, instance_and_overlay_ports, ping, ping_ok, tcp_transfer, tshark_fields,
    InstanceNet, OverlayHost, Stats, Topology, Vswitchd,
};

// Instance 1 (selfservice1) and instance 2 (selfservice2).
const I1_MAC: &str = "fa:16:3e:00:01:11";
const I1_IP: &str = "198.51.100.11";
const I1_IP6: &str = "fd00:198:51:100::11";
const I2_MAC: &str = "fa:16:3e:00:02:22";
const I2_IP: &str = "198.18.0.22";
const I2_IP6: &str = "fd00:198:18::22";
// router1's distributed interfaces (the same MAC and addresses on every host).
const GW1_MAC: &str = "fa:16:3e:aa:00:01";
const GW1_IP: &str = "198.51.100.1";
const GW1_IP6: &str = "fd00:198:51:100::1";
const GW2_MAC: &str = "fa:16:3e:aa:00:02";
const GW2_IP: &str = "198.18.0.1";
const GW2_IP6: &str = "fd00:198:18::1";
// Underlay.
const VTEP1: &str = "10.0.0.11";
const VTEP2: &str = "10.0.0.12";
const UL1_MAC: &str = "02:00:00:00:00:11";
const UL2_MAC: &str = "02:00:00:00:00:12";
const DVR1_MAC: &str = "fa:16:3f:00:00:11";
const DVR2_MAC: &str = "fa:16:3f:00:00:12";
// VNIs.
const VNI_SS1: &str = "101";
const VNI_SS2: &str = "102";

/// Snap length of underlay captures: outer headers (50 B) + inner Ethernet/IPv6/ICMPv6 fit.
const SNAP: &str = "192";

/// The desired state (the same file on every host): router1 with one interface on each
/// self-service network (both address families), instance 1 on compute1 and instance 2 on
/// `i2_host`. Both hosts are listed with their VTEP and DVR MAC.
fn state_yaml(i2_host: &str) -> String {
    format!(
        r#"
networks:
  - id: net-selfservice1
    name: selfservice1
    provider:network_type: vxlan
    provider:segmentation_id: 101
    mtu: 1500
  - id: net-selfservice2
    name: selfservice2
    provider:network_type: vxlan
    provider:segmentation_id: 102
    mtu: 1500
subnets:
  - {{id: subnet-ss1-v4, name: selfservice1-v4, network_id: net-selfservice1, cidr: 198.51.100.0/24, ip_version: 4, gateway_ip: 198.51.100.1, enable_dhcp: false}}
  - {{id: subnet-ss1-v6, name: selfservice1-v6, network_id: net-selfservice1, cidr: "fd00:198:51:100::/64", ip_version: 6, gateway_ip: "fd00:198:51:100::1", enable_dhcp: false}}
  - {{id: subnet-ss2-v4, name: selfservice2-v4, network_id: net-selfservice2, cidr: 198.18.0.0/24, ip_version: 4, gateway_ip: 198.18.0.1, enable_dhcp: false}}
  - {{id: subnet-ss2-v6, name: selfservice2-v6, network_id: net-selfservice2, cidr: "fd00:198:18::/64", ip_version: 6, gateway_ip: "fd00:198:18::1", enable_dhcp: false}}
routers:
  - id: router1-id
    name: router1
    distributed: true
ports:
  - id: port-router1-ss1
    network_id: net-selfservice1
    mac_address: "{GW1_MAC}"
    fixed_ips:
      - {{subnet_id: subnet-ss1-v4, ip_address: 198.51.100.1}}
      - {{subnet_id: subnet-ss1-v6, ip_address: "fd00:198:51:100::1"}}
    device_owner: network:router_interface_distributed
    device_id: router1-id
  - id: port-router1-ss2
    network_id: net-selfservice2
    mac_address: "{GW2_MAC}"
    fixed_ips:
      - {{subnet_id: subnet-ss2-v4, ip_address: 198.18.0.1}}
      - {{subnet_id: subnet-ss2-v6, ip_address: "fd00:198:18::1"}}
    device_owner: network:router_interface_distributed
    device_id: router1-id
  - id: port-i1
    network_id: net-selfservice1
    mac_address: "{I1_MAC}"
    fixed_ips:
      - {{subnet_id: subnet-ss1-v4, ip_address: {I1_IP}}}
      - {{subnet_id: subnet-ss1-v6, ip_address: "{I1_IP6}"}}
    binding:host_id: compute1
    device_owner: compute:nova
    security_groups: [sg-open]
  - id: port-i2
    network_id: net-selfservice2
    mac_address: "{I2_MAC}"
    fixed_ips:
      - {{subnet_id: subnet-ss2-v4, ip_address: {I2_IP}}}
      - {{subnet_id: subnet-ss2-v6, ip_address: "{I2_IP6}"}}
    binding:host_id: {i2_host}
    device_owner: compute:nova
    security_groups: [sg-open]
# Everything allowed both ways (security groups are enforced on ports with port security on;
# these tests are about the routing, not filtering).
security_groups:
  - {{id: sg-open, name: open}}
security_group_rules:
  - {{id: sg-open-in4, security_group_id: sg-open, direction: ingress, ethertype: IPv4}}
  - {{id: sg-open-in6, security_group_id: sg-open, direction: ingress, ethertype: IPv6}}
  - {{id: sg-open-out4, security_group_id: sg-open, direction: egress, ethertype: IPv4}}
  - {{id: sg-open-out6, security_group_id: sg-open, direction: egress, ethertype: IPv6}}
hosts:
  - {{host: compute1, vtep_ip: {VTEP1}, dvr_mac: "{DVR1_MAC}"}}
  - {{host: compute2, vtep_ip: {VTEP2}, dvr_mac: "{DVR2_MAC}"}}
"#
    )
}

// --- topology building blocks -------------------------------------------------------------

/// An instance's addresses: MAC, IPv4 and IPv6 (each /24 and /64), and its gateways.
struct Inst<'a> {
    mac: &'a str,
    ip: &'a str,
    ip6: &'a str,
    gw: &'a str,
    gw6: &'a str,
}

/// An instance namespace `role` whose `eth0` (MTU 1500, IPv4 and static IPv6, quiet IPv6:
/// no DAD, router solicitations or RAs) is joined to `sw_if` in the switch namespace `sw`.
/// Default routes for both families go via the gateway addresses.
fn add_instance(topo: &mut Topology, role: &str, sw: &str, sw_if: &str, i: &Inst) -> String {
    let cidr = format!("{}/24", i.ip);
    let cidr6 = format!("{}/64", i.ip6);
    let n = InstanceNet {
        mac: i.mac,
        cidr: &cidr,
        mtu: 1500,
        cidr6: Some(&cidr6),
        gw: Some(i.gw),
        gw6: Some(i.gw6),
    };
    topo.add_instance(role, sw, sw_if, &n)
}

/// A host config with instance ports (name = interface in the switch namespace, Neutron port
/// id), the overlay port on interface `ul`, `[overlay] mtu = 1500` and, if given, `dvr_mac`
/// (otherwise the host's entry in the desired state provides it).
fn dvr_host_toml(
    host_id: &str,
    prefix: &str,
    vtep: &str,
    dvr_mac: Option<&str>,
    instances: &[(&str, &str)],
) -> String {
    let ports = instance_and_overlay_ports(instances);
    let overlay = OverlayHost {
        local_vtep_ip: vtep,
        dvr_mac,
        settings: &["mtu = 1500"],
        ..OverlayHost::default()
    };
    host_toml_overlay(host_id, prefix, &ports, &[], Some(&overlay))
}

const INST1: Inst = Inst {
    mac: I1_MAC,
    ip: I1_IP,
    ip6: I1_IP6,
    gw: GW1_IP,
    gw6: GW1_IP6,
};
const INST2: Inst = Inst {
    mac: I2_MAC,
    ip: I2_IP,
    ip6: I2_IP6,
    gw: GW2_IP,
    gw6: GW2_IP6,
};

// --- traffic helpers ----------------------------------------------------------------------

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

/// The first (outer) value of a tshark field that occurs several times.
fn outer(v: &str) -> &str {
    v.split(',').next().unwrap_or("")
}

/// The second (inner) value of a tshark field, or `""`.
fn inner(v: &str) -> &str {
    v.split(',').nth(1).unwrap_or("")
}

/// Drop counters that grew since `before`, except the ones named in `allowed`.
fn unexpected_drops(after: &Stats, before: &Stats, allowed: &[&str]) -> Vec<(String, u64)> {
    after
        .drops_since(before)
        .into_iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .collect()
}

/// What an instance's capture shows of the echo requests from `src`/`src6`: per frame
/// (Ethernet source, IPv4 TTL or IPv6 hop limit, "4" or "6").
fn echo_requests_seen(
    pcap: &std::path::Path,
    src: &str,
    src6: &str,
) -> Vec<(String, String, String)> {
    let filter = format!(
        "(ip.src == {src} && icmp.type == 8) || (ipv6.src == {src6} && icmpv6.type == 128)"
    );
    tshark_fields(pcap, &filter, &["eth.src", "ip.ttl", "ipv6.hlim"], false)
        .into_iter()
        .map(|f| {
            let v4 = !f[1].is_empty();
            (
                f[0].clone(),
                if v4 { f[1].clone() } else { f[2].clone() },
                if v4 { "4".into() } else { "6".into() },
            )
        })
        .collect()
}

/// `who`'s capture holds at least 4 IPv4 and 4 IPv6 echo requests from `from` (`src`,
/// `src6`), every one with the gateway MAC `gw` as Ethernet source and TTL / hop limit 63
/// (the sender's 64, decremented once by the router), and no frame from a DVR MAC.
fn assert_routed_from_gateway(
    pcap: &std::path::Path,
    who: &str,
    from: &str,
    (src, src6): (&str, &str),
    gw: &str,
) {
    let got = echo_requests_seen(pcap, src, src6);
    assert!(
        got.iter().filter(|g| g.2 == "4").count() >= 4
            && got.iter().filter(|g| g.2 == "6").count() >= 4,
        "{who} should have received {from}'s v4 and v6 echo requests: {got:?}"
    );
    for (mac, ttl, fam) in &got {
        assert_eq!(
            (mac.as_str(), ttl.as_str()),
            (gw, "63"),
            "IPv{fam} echo request from {from} at {who}: (source MAC, TTL)"
        );
    }
    let dvr = tshark_fields(
        pcap,
        &format!("eth.src == {DVR1_MAC} || eth.src == {DVR2_MAC}"),
        &["eth.src", "ip.src", "ipv6.src"],
        false,
    );
    assert!(
        dvr.is_empty(),
        "{who} received frames from a DVR MAC: {dvr:?}"
    );
}

/// From `ns`, a DF packet of exactly 1450 bytes to `dst` (v4, v6) passes; one of 1488
/// bytes gets fragmentation needed (v4) / packet too big (v6) with MTU 1450 from the gateway
/// `gw`, after which the sender's kernel knows the path MTU and refuses the next one itself.
/// (IPv6 uses -s 1440 for the same 1488-byte packet: -s 1460 would be 1508 bytes, over the
/// instance's own link MTU, and its kernel would fragment it.)
fn path_mtu_is_1450(topo: &Topology, ns: &str, dst: (&str, &str), gw: (&str, &str)) {
    let ping_df = |to: &str, size: &str| {
        run_text(
            topo,
            ns,
            &[
                "ping", "-n", "-c", "2", "-i", "0.3", "-W", "2", "-M", "do", "-s", size, to,
            ],
        )
    };
    for (to, size) in [(dst.0, "1422"), (dst.1, "1402")] {
        let (rc, text) = ping_df(to, size);
        assert_eq!(rc, 0, "a 1450-byte DF ping {ns} -> {to} must pass:\n{text}");
    }
    for (to, size, from, what) in [
        (dst.0, "1460", gw.0, "Frag needed and DF set (mtu = 1450)"),
        (dst.1, "1440", gw.1, "Packet too big: mtu=1450"),
    ] {
        let (_, text) = ping_df(to, size);
        assert!(
            text.contains(&format!("From {from} icmp_seq=1 {what}")),
            "ping -M do -s {size} {ns} -> {to}: expected \"{what}\" from {from}:\n{text}"
        );
        // (iputils prints "mtu=1450" for IPv4 and "mtu: 1450" for IPv6.)
        assert!(
            text.contains("message too long, mtu=1450")
                || text.contains("message too long, mtu: 1450"),
            "after the ICMP error the kernel in {ns} should know the path MTU 1450:\n{text}"
        );
    }
}

// --- tests --------------------------------------------------------------------------------

/// The seed's east-west scenario 1: instance 1 (compute1, selfservice1) and instance 2
/// (compute2, selfservice2) talk through router1, which is routed on the sending host. Ping
/// (v4, v6) and TCP both ways; tracepath sees exactly one router hop; on the underlay the
/// routed frames carry the sending host's DVR MAC and the destination network's VNI; the
/// receiving instance sees the gateway MAC; TTL 1 gets time exceeded and an oversized DF
/// packet fragmentation needed / packet too big with MTU 1450 (the VXLAN overhead).
#[test]
fn east_west_routed_across_hosts() {
    let started = Instant::now();
    let Some(mut topo) = Topology::new("dvrew") else {
        return;
    };
    let sw1 = topo.add_switch_ns("sw1");
    let sw2 = topo.add_switch_ns("sw2");
    let i1 = add_instance(&mut topo, "i1", &sw1, "vm1", &INST1);
    let i2 = add_instance(&mut topo, "i2", &sw2, "vm2", &INST2);
    topo.veth(&sw1, "ul", &sw2, "ul");
    topo.set_mac_up(&sw1, "ul", UL1_MAC);
    topo.set_mac_up(&sw2, "ul", UL2_MAC);
    let state = state_yaml("compute2");
    // compute1 names its DVR MAC in its host config, compute2 only in the desired state.
    let h1 = dvr_host_toml(
        "compute1",
        &format!("{}-c1", topo.name),
        VTEP1,
        Some(DVR1_MAC),
        &[("vm1", "port-i1")],
    );
    let h2 = dvr_host_toml(
        "compute2",
        &format!("{}-c2", topo.name),
        VTEP2,
        None,
        &[("vm2", "port-i2")],
    );
    let mut vs1 = Vswitchd::start_as(&topo, &sw1, "vswitchd-c1", &h1, &state);
    let mut vs2 = Vswitchd::start_as(&topo, &sw2, "vswitchd-c2", &h2, &state);
    eprintln!("[{}] two hosts up in {:?}", topo.name, started.elapsed());
    let (s1_0, s2_0) = (vs1.stats(), vs2.stats());

    // 1. Ping both ways, both families, and the gateway addresses themselves; capture the
    // underlay at compute1 and what instance 2 receives.
    // (af_packet transmits bypass the sender's own taps, so each host's frames are captured
    // where they arrive: `-Q in` on the other end of the underlay.)
    let cap_from2 = topo.capture_with(
        &sw1,
        "ul",
        "cap-ul-in1",
        &["-Q", "in", "-s", SNAP, "-B", "8192", "udp port 4789"],
    );
    let cap_from1 = topo.capture_with(
        &sw2,
        "ul",
        "cap-ul-in2",
        &["-Q", "in", "-s", SNAP, "-B", "8192", "udp port 4789"],
    );
    let cap_i1 = topo.capture_with(&i1, "eth0", "cap-i1", &["-s", SNAP, "icmp or icmp6"]);
    let cap_i2 = topo.capture_with(&i2, "eth0", "cap-i2", &["-s", SNAP, "icmp or icmp6"]);
    ping_ok(&topo, &i1, I2_IP, 3, 6);
    ping_ok(&topo, &i2, I1_IP, 3, 6);
    ping_ok(&topo, &i1, I2_IP6, 3, 6);
    ping_ok(&topo, &i2, I1_IP6, 3, 6);
    for (ns, gw) in [(&i1, GW1_IP), (&i1, GW1_IP6), (&i2, GW2_IP), (&i2, GW2_IP6)] {
        let (rc, text) = ping(&topo, ns, gw, 2, 4);
        assert_eq!(rc, 0, "ping {ns} -> gateway {gw}:\n{text}");
    }
    // `vswitchctl trace` on compute1 explains the seed's east-west path without sending it:
    // routed by the distributed router, the source MAC rewritten to compute1's DVR MAC, and
    // tunnelled to compute2's VTEP in the destination network's VNI.
    let out = vs1.ctl_ok(&[
        "trace",
        "--in-port",
        "vm1",
        "--ip-src",
        I1_IP,
        "--ip-dst",
        I2_IP,
        "--proto",
        "icmp",
    ]);
    for want in [
        "router:".to_string(),
        DVR1_MAC.to_string(),
        format!("verdict: tunnel to {VTEP2}"),
        format!("vni {VNI_SS2}"),
    ] {
        assert!(
            out.contains(&want),
            "east-west trace lacks {want:?}:\n{out}"
        );
    }
    let from1 = cap_from1.stop_file();
    let from2 = cap_from2.stop_file();
    let at_i1 = cap_i1.stop_file();
    let at_i2 = cap_i2.stop_file();
    let s1_1 = vs1.stats();
    let s2_1 = vs2.stats();

    // Instances resolved their gateways through the router (ARP, ND), and the gateway
    // addresses answered ping locally.
    for (host, now, before) in [("compute1", &s1_1, &s1_0), ("compute2", &s2_1, &s2_0)] {
        for e in ["router.arp_reply", "router.nd_advert"] {
            assert!(
                now.event_delta(before, e) >= 1,
                "{host}: {e} did not count: {}",
                now.0["events"]
            );
        }
        assert!(
            now.event_delta(before, "router.echo_reply") >= 4,
            "{host}: router.echo_reply for the 2 v4 + 2 v6 gateway pings: {}",
            now.0["events"]
        );
    }

    // The underlay: routed frames carry the sending host's DVR MAC as inner source and the
    // VNI of the *destination* network (routing happened on the sender).
    let fields = [
        "ip.src",
        "ip.dst",
        "ipv6.src",
        "ipv6.dst",
        "eth.src",
        "eth.dst",
        "vxlan.vni",
    ];
    let mut frames = tshark_fields(&from1, "vxlan", &fields, false);
    frames.extend(tshark_fields(&from2, "vxlan", &fields, false));
    let mut seen = BTreeSet::new();
    for f in &frames {
        let (osrc, isrc, idst) = (
            outer(&f[0]),
            if f[2].is_empty() { inner(&f[0]) } else { &f[2] },
            if f[3].is_empty() { inner(&f[1]) } else { &f[3] },
        );
        let (ieth_src, ieth_dst, vni) = (inner(&f[4]), inner(&f[5]), f[6].as_str());
        assert!(
            ieth_src != GW1_MAC && ieth_src != GW2_MAC,
            "a gateway MAC appeared on the fabric (routed frames must carry a DVR MAC): {f:?}"
        );
        for gw in [GW1_IP, GW1_IP6, GW2_IP, GW2_IP6] {
            assert_ne!(
                idst, gw,
                "a packet to a gateway address crossed the overlay: {f:?}"
            );
        }
        match (osrc, isrc, idst) {
            (VTEP1, I1_IP | I1_IP6, I2_IP | I2_IP6) => {
                assert_eq!(
                    (ieth_src, ieth_dst, vni),
                    (DVR1_MAC, I2_MAC, VNI_SS2),
                    "instance 1 -> instance 2 must leave compute1 routed: inner source \
                     compute1's DVR MAC, VNI of selfservice2: {f:?}"
                );
                seen.insert(("c1->c2", isrc.contains(':')));
            }
            (VTEP2, I2_IP | I2_IP6, I1_IP | I1_IP6) => {
                assert_eq!(
                    (ieth_src, ieth_dst, vni),
                    (DVR2_MAC, I1_MAC, VNI_SS1),
                    "instance 2 -> instance 1 must leave compute2 routed: inner source \
                     compute2's DVR MAC, VNI of selfservice1: {f:?}"
                );
                seen.insert(("c2->c1", isrc.contains(':')));
            }
            _ => panic!("unexpected VXLAN frame on the underlay: {f:?}"),
        }
    }
    let want: BTreeSet<_> = [
        ("c1->c2", false),
        ("c1->c2", true),
        ("c2->c1", false),
        ("c2->c1", true),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        seen, want,
        "routed v4 and v6 frames in both directions on the underlay: {frames:#?}"
    );

    // Each instance receives the other's echo requests from the gateway MAC of its own subnet
    // (the receiving host rewrote the sender's DVR MAC), TTL / hop limit decremented once.
    assert_routed_from_gateway(&at_i2, "instance 2", "instance 1", (I1_IP, I1_IP6), GW2_MAC);
    assert_routed_from_gateway(&at_i1, "instance 1", "instance 2", (I2_IP, I2_IP6), GW1_MAC);
    for (host, now, before) in [("compute1", &s1_1, &s1_0), ("compute2", &s2_1, &s2_0)] {
        for e in ["router.dvr_mac_out", "router.dvr_mac_in"] {
            assert!(
                now.event_delta(before, e) >= 8,
                "{host}: {e} should count every routed ping that crossed hosts: {}",
                now.0["events"]
            );
        }
    }

    // 2. TTL 1: time exceeded from the gateway of instance 1's subnet (the router on compute1).
    let (_, text) = run_text(
        &topo,
        &i1,
        &["ping", "-n", "-c", "1", "-W", "2", "-t", "1", I2_IP],
    );
    assert!(
        text.contains(&format!("From {GW1_IP} icmp_seq=1 Time to live exceeded")),
        "ping -t 1 {I2_IP}: expected time exceeded from {GW1_IP}:\n{text}"
    );
    let (_, text) = run_text(
        &topo,
        &i1,
        &["ping", "-n", "-c", "1", "-W", "2", "-t", "1", I2_IP6],
    );
    assert!(
        text.contains(&format!(
            "From {GW1_IP6} icmp_seq=1 Time exceeded: Hop limit"
        )),
        "ping -t 1 {I2_IP6}: expected hop limit exceeded from {GW1_IP6}:\n{text}"
    );

    // 3. Path MTU: 1500 - 50 bytes of VXLAN = 1450, in both directions (each host's router
    // answers for its own instance).
    let e0 = (vs1.stats(), vs2.stats());
    path_mtu_is_1450(&topo, &i1, (I2_IP, I2_IP6), (GW1_IP, GW1_IP6));
    path_mtu_is_1450(&topo, &i2, (I1_IP, I1_IP6), (GW2_IP, GW2_IP6));
    let e1 = (vs1.stats(), vs2.stats());
    for (host, now, before) in [("compute1", &e1.0, &e0.0), ("compute2", &e1.1, &e0.1)] {
        assert_eq!(
            now.event_delta(before, "router.icmp_error_sent"),
            2,
            "{host}: router.icmp_error_sent for one v4 fragmentation needed and one v6 \
             packet too big: {}",
            now.0["events"]
        );
    }

    // 4. tracepath: one router hop (instance 1's gateway), then the destination.
    let (rc, text) = run_text(&topo, &i1, &["tracepath", "-n", "-m", "5", I2_IP]);
    eprintln!("tracepath -n {I2_IP}:\n{text}");
    assert_eq!(rc, 0, "tracepath failed:\n{text}");
    let mut hops: Vec<(u32, String)> = Vec::new();
    for l in text.lines() {
        let l = l.trim_start();
        let Some((n, rest)) = l.split_once(':') else {
            continue;
        };
        let Ok(n) = n.trim_end_matches('?').parse::<u32>() else {
            continue;
        };
        let addr = rest.split_whitespace().next().unwrap_or("");
        if addr.starts_with('[') || addr == "no" || addr.is_empty() {
            continue; // [LOCALHOST], "no reply"
        }
        hops.push((n, addr.to_owned()));
    }
    assert!(
        hops.iter().all(|(_, a)| a == GW1_IP || a == I2_IP),
        "tracepath saw routers other than {GW1_IP}: {hops:?}\n{text}"
    );
    assert!(
        hops.contains(&(1, GW1_IP.to_owned())),
        "hop 1 should be {GW1_IP}: {hops:?}\n{text}"
    );
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("2:")
            && l.contains(I2_IP)
            && l.contains("reached")),
        "hop 2 should be {I2_IP} (reached): {hops:?}\n{text}"
    );
    assert!(
        text.contains("hops 2 back 2"),
        "tracepath's summary should read hops 2 back 2:\n{text}"
    );

    // 5. TCP both ways.
    tcp_transfer(&topo, &i1, &i2, I2_IP, 5001, 4 << 20);
    tcp_transfer(&topo, &i2, &i1, I1_IP, 5002, 4 << 20);
    tcp_transfer(&topo, &i1, &i2, I2_IP6, 5003, 2 << 20);
    tcp_transfer(&topo, &i2, &i1, I1_IP6, 5004, 2 << 20);

    // 6. Counters: router1 routed on both hosts, answered the gateway pings itself, sent the
    // ICMP errors above (compute1: 2 time exceeded, 2 too big, tracepath's; compute2: 2 too
    // big) and dropped nothing. The only drops allowed: the first frame to the other VTEP
    // while it is being resolved, and the instances' own MLD reports (multicast on a
    // network where the instance is the host's only port).
    let s1 = vs1.stats();
    let s2 = vs2.stats();
    for (host, now, before, min_icmp) in [("compute1", &s1, &s1_0, 4), ("compute2", &s2, &s2_0, 2)]
    {
        let (r, r0) = (now.router("router1"), before.router("router1"));
        eprintln!(
            "[{}] {host}: router1 {r:?}; drops {:?}",
            topo.name,
            now.drops_since(before)
        );
        let routed = r.routed - r0.routed;
        let icmp = r.icmp_errors - r0.icmp_errors;
        assert!(routed > 1000, "{host}: router1 routed {r:?}");
        assert_eq!(
            now.event_delta(before, "router.routed"),
            routed,
            "{host}: router.routed vs router1 routed (the only router)"
        );
        assert!(
            r.local - r0.local >= 4,
            "{host}: router1 local (echo) {r:?}"
        );
        assert!(icmp >= min_icmp, "{host}: router1 icmp_errors {r:?}");
        assert_eq!(
            now.event_delta(before, "router.icmp_error_sent"),
            icmp,
            "{host}: router.icmp_error_sent vs router1 icmp_errors"
        );
        assert_eq!(
            now.event_delta(before, "router.icmp_rate_limited"),
            0,
            "{host}: router.icmp_rate_limited"
        );
        assert_eq!(r.dropped - r0.dropped, 0, "{host}: router1 dropped {r:?}");
        let bad = unexpected_drops(
            now,
            before,
            &["tunnel.unresolved", "integration.flood_empty"],
        );
        assert!(bad.is_empty(), "{host}: unexpected drops {bad:?}");
        assert!(
            now.drop_delta(before, "tunnel.unresolved") <= 2,
            "{host}: more than the first frames to the other VTEP waited for its ARP"
        );
    }
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

/// Two instances on two subnets of router1 on the same host: routed locally (ping v4/v6,
/// TCP), delivered from the gateway MAC of the destination subnet (not the DVR MAC) with the
/// TTL decremented once, the full 1500-byte MTU (no VXLAN overhead), and nothing ever leaves
/// by the overlay port.
#[test]
fn same_host_routing_between_subnets() {
    let started = Instant::now();
    let Some(mut topo) = Topology::new("dvrsh") else {
        return;
    };
    let sw = topo.add_switch_ns("sw");
    let i1 = add_instance(&mut topo, "i1", &sw, "vm1", &INST1);
    let i2 = add_instance(&mut topo, "i2", &sw, "vm2", &INST2);
    // The overlay port's peer only listens (no address, no IPv6).
    let rn = topo.add_ns("rn");
    topo.disable_ipv6(&rn);
    topo.veth(&sw, "ul", &rn, "eth0");
    topo.set_mac_up(&sw, "ul", UL1_MAC);
    topo.set_mac_up(&rn, "eth0", UL2_MAC);
    let host = dvr_host_toml(
        "compute1",
        &topo.name,
        VTEP1,
        Some(DVR1_MAC),
        &[("vm1", "port-i1"), ("vm2", "port-i2")],
    );
    let mut vs = Vswitchd::start(&topo, &sw, &host, &state_yaml("compute1"));
    eprintln!("[{}] vswitchd up in {:?}", topo.name, started.elapsed());
    let cap_ul = topo.capture_with(&rn, "eth0", "cap-underlay", &["-s", SNAP]);
    let cap_i1 = topo.capture_with(&i1, "eth0", "cap-i1", &["-s", SNAP, "icmp or icmp6"]);
    let cap_i2 = topo.capture_with(&i2, "eth0", "cap-i2", &["-s", SNAP, "icmp or icmp6"]);
    let s0 = vs.stats();

    ping_ok(&topo, &i1, I2_IP, 3, 6);
    ping_ok(&topo, &i2, I1_IP, 3, 6);
    ping_ok(&topo, &i1, I2_IP6, 3, 6);
    ping_ok(&topo, &i2, I1_IP6, 3, 6);
    let at_i1 = cap_i1.stop_file();
    let at_i2 = cap_i2.stop_file();
    // The whole 1500-byte MTU is usable between local instances.
    for (dst, size) in [(I2_IP, "1472"), (I2_IP6, "1452")] {
        let (rc, text) = run_text(
            &topo,
            &i1,
            &[
                "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", size, dst,
            ],
        );
        assert_eq!(
            rc, 0,
            "a 1500-byte DF ping to {dst} must pass on one host:\n{text}"
        );
    }
    tcp_transfer(&topo, &i1, &i2, I2_IP, 5001, 4 << 20);
    tcp_transfer(&topo, &i2, &i1, I1_IP, 5002, 4 << 20);
    tcp_transfer(&topo, &i1, &i2, I2_IP6, 5003, 2 << 20);
    let s1 = vs.stats();
    let ul = cap_ul.stop();

    // Delivered from the gateway MAC of the destination's subnet (never the DVR MAC: the
    // frame did not leave the host), TTL decremented once.
    assert_routed_from_gateway(&at_i2, "instance 2", "instance 1", (I1_IP, I1_IP6), GW2_MAC);
    assert_routed_from_gateway(&at_i1, "instance 1", "instance 2", (I2_IP, I2_IP6), GW1_MAC);

    // Nothing left by the overlay.
    assert!(ul.is_empty(), "frames on the underlay: {ul:#?}");
    assert_eq!(s1.port("overlay").tx_packets, 0, "overlay port tx");
    assert_eq!(s1.event_delta(&s0, "tunnel.encap"), 0, "tunnel.encap");
    assert_eq!(
        s1.event_delta(&s0, "router.dvr_mac_out"),
        0,
        "router.dvr_mac_out"
    );
    let r = s1.router("router1");
    let r0 = s0.router("router1");
    eprintln!(
        "[{}] router1 {r:?}; drops {:?}",
        topo.name,
        s1.drops_since(&s0)
    );
    assert!(r.routed - r0.routed > 1000, "router1 routed {r:?}");
    assert_eq!(
        s1.event_delta(&s0, "router.routed"),
        r.routed - r0.routed,
        "router.routed vs router1 routed"
    );
    assert_eq!(r.dropped - r0.dropped, 0, "router1 dropped {r:?}");
    assert_eq!(
        r.icmp_errors - r0.icmp_errors,
        0,
        "router1 icmp_errors {r:?}"
    );
    // (integration.flood_empty: the instances' own MLD reports, multicast on a network where
    // each instance is the only port.)
    let bad = unexpected_drops(&s1, &s0, &["integration.flood_empty"]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    let f = vs.stop();
    eprintln!(
        "[{}] done in {:?}; drops {:?}",
        topo.name,
        started.elapsed(),
        f.nonzero_drops()
    );
}
