//! DPDK with virtual devices: real EAL, real mempool, real `net_pcap` PMD. Frames are read from
//! pcap files on three ports, switched by `vswitchd`, and the pcaps the PMD writes on the other
//! side are compared frame by frame with what the desired state says must come out.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAC1: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const MAC2: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const PEER: [u8; 6] = [0x02, 0, 0, 0, 1, 0x50];

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut f = std::fs::File::create(path).unwrap();
    // Classic pcap, microsecond timestamps, LINKTYPE_ETHERNET.
    f.write_all(&0xa1b2c3d4u32.to_le_bytes()).unwrap();
    f.write_all(&2u16.to_le_bytes()).unwrap();
    f.write_all(&4u16.to_le_bytes()).unwrap();
    f.write_all(&[0; 8]).unwrap();
    f.write_all(&65535u32.to_le_bytes()).unwrap();
    f.write_all(&1u32.to_le_bytes()).unwrap();
    for (i, fr) in frames.iter().enumerate() {
        f.write_all(&(i as u32).to_le_bytes()).unwrap();
        f.write_all(&0u32.to_le_bytes()).unwrap();
        f.write_all(&(fr.len() as u32).to_le_bytes()).unwrap();
        f.write_all(&(fr.len() as u32).to_le_bytes()).unwrap();
        f.write_all(fr).unwrap();
    }
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    if b.len() < 24 {
        return Vec::new();
    }
    let le = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let rd = |x: &[u8]| {
        let a: [u8; 4] = x.try_into().unwrap();
        if le == 0xa1b2c3d4 || le == 0xa1b23c4d {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let caplen = rd(&b[at + 8..at + 12]) as usize;
        at += 16;
        if at + caplen > b.len() {
            break;
        }
        out.push(b[at..at + caplen].to_vec());
        at += caplen;
    }
    out
}

fn udp(
    src: [u8; 6],
    dst: [u8; 6],
    vlan: Option<u16>,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
) -> Vec<u8> {
    let e = etherparse::PacketBuilder::ethernet2(src, dst);
    let mut out = Vec::new();
    match vlan {
        Some(v) => {
            let b = e
                .single_vlan(etherparse::VlanId::try_new(v).unwrap())
                .ipv4(sip, dip, 64)
                .udp(sport, 9);
            b.write(&mut out, &[7u8; 22]).unwrap();
        }
        None => {
            let b = e.ipv4(sip, dip, 64).udp(sport, 9);
            b.write(&mut out, &[7u8; 22]).unwrap();
        }
    }
    out
}

fn vswitchd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vswitchd"))
}

#[test]
fn pcap_in_pcap_out_through_real_dpdk() {
    let dir = std::env::temp_dir().join(format!("vswitch-pcap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n);

    let ip1 = [203, 0, 113, 11];
    let ip2 = [203, 0, 113, 12];
    let peer_ip = [203, 0, 113, 50];
    // vm1: 20 unicast frames to vm2, 5 with a spoofed source IP, 1 broadcast.
    let mut vm1_in: Vec<Vec<u8>> = (0..20)
        .map(|i| udp(MAC1, MAC2, None, ip1, ip2, 1000 + i))
        .collect();
    vm1_in.extend((0..5).map(|i| udp(MAC1, MAC2, None, [203, 0, 113, 99], ip2, 2000 + i)));
    vm1_in.push(udp(MAC1, [0xff; 6], None, ip1, [203, 0, 113, 255], 3000));
    // uplink: 10 frames on VLAN 101 to vm2, 3 on unknown VLAN 55.
    let mut up_in: Vec<Vec<u8>> = (0..10)
        .map(|i| udp(PEER, MAC2, Some(101), peer_ip, ip2, 4000 + i))
        .collect();
    up_in.extend((0..3).map(|i| udp(PEER, MAC2, Some(55), peer_ip, ip2, 5000 + i)));
    write_pcap(&p("vm1_in.pcap"), &vm1_in);
    write_pcap(&p("up_in.pcap"), &up_in);
    write_pcap(&p("empty.pcap"), &[]);

    let host = format!(
        r#"role = "dvr"
host_id = "compute1"
cores = [1]
mbufs = 4095
eal_args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--file-prefix", "pcaptest{pid}"]
[idle]
mode = "backoff"
[[ports]]
name = "vm1"
devargs = "net_pcap0,rx_pcap={d}/vm1_in.pcap,tx_pcap={d}/vm1_out.pcap"
kind = "instance"
iface_id = "p1"
[[ports]]
name = "vm2"
devargs = "net_pcap1,rx_pcap={d}/empty.pcap,tx_pcap={d}/vm2_out.pcap"
kind = "instance"
iface_id = "p2"
[[ports]]
name = "uplink"
devargs = "net_pcap2,rx_pcap={d}/up_in.pcap,tx_pcap={d}/up_out.pcap"
kind = "provider"
[bridge_mappings]
provider = "uplink"
"#,
        pid = std::process::id(),
        d = dir.display()
    );
    let state = r#"
networks:
  - {id: net1, name: provider1, "provider:network_type": vlan, "provider:physical_network": provider, "provider:segmentation_id": 101}
subnets:
  - {id: s1, name: s1, network_id: net1, cidr: 203.0.113.0/24, ip_version: 4}
ports:
  - {id: p1, network_id: net1, mac_address: "fa:16:3e:00:00:01", fixed_ips: [{subnet_id: s1, ip_address: 203.0.113.11}], security_groups: [sg-open]}
  - {id: p2, network_id: net1, mac_address: "fa:16:3e:00:00:02", fixed_ips: [{subnet_id: s1, ip_address: 203.0.113.12}], security_groups: [sg-open]}
# Port security needs a security group; this test is about the DPDK plumbing, so it lets
# everything through (stateful: the frames are tracked).
security_groups:
  - {id: sg-open, name: open}
security_group_rules:
  - {id: open-in, security_group_id: sg-open, direction: ingress, ethertype: IPv4}
  - {id: open-out, security_group_id: sg-open, direction: egress, ethertype: IPv4}
"#;
    std::fs::write(p("host.toml"), host).unwrap();
    std::fs::write(p("state.yaml"), state).unwrap();

    let mut child = Command::new(vswitchd())
        .args([
            "--config",
            p("host.toml").to_str().unwrap(),
            "--state",
            p("state.yaml").to_str().unwrap(),
        ])
        .stdout(std::fs::File::create(p("stdout")).unwrap())
        .stderr(std::fs::File::create(p("stderr")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("start vswitchd");
    // The pcap PMD replays each file once; wait until all input has been received.
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "vswitchd exited early ({st}): {}{}",
                std::fs::read_to_string(p("stdout")).unwrap_or_default(),
                std::fs::read_to_string(p("stderr")).unwrap_or_default()
            );
        }
        let _ = Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(200));
        let out = std::fs::read_to_string(p("stdout")).unwrap_or_default();
        let rx: u64 = out
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("stats-json: "))
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .map(|v| {
                v["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["rx_packets"].as_u64().unwrap())
                    .sum()
            })
            .unwrap_or(0);
        if rx >= (vm1_in.len() + up_in.len()) as u64 || t0.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let stdout = std::fs::read_to_string(p("stdout")).unwrap();
    let stderr = std::fs::read_to_string(p("stderr")).unwrap();
    assert!(
        status.success(),
        "vswitchd failed: {status}\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("mbufs in use after closing ports: 0 of"),
        "mbuf leak:\n{stdout}"
    );

    let vm2_out = read_pcap(&p("vm2_out.pcap"));
    let up_out = read_pcap(&p("up_out.pcap"));
    let vm1_out = read_pcap(&p("vm1_out.pcap"));
    // vm2 gets vm1's 20 good unicast frames unchanged, the broadcast, and the 10 VLAN 101
    // frames from the uplink with their tag removed.
    let mut want_vm2: Vec<Vec<u8>> = vm1_in[..20].to_vec();
    want_vm2.push(vm1_in[25].clone());
    want_vm2.extend((0..10).map(|i| udp(PEER, MAC2, None, peer_ip, ip2, 4000 + i)));
    let mut got = vm2_out.clone();
    got.sort();
    want_vm2.sort();
    assert_eq!(got, want_vm2, "vm2 output");
    // The uplink gets only the broadcast, tagged with VLAN 101.
    assert_eq!(up_out.len(), 1, "uplink output");
    let s = etherparse::SlicedPacket::from_ethernet(&up_out[0]).unwrap();
    match s.vlan() {
        Some(etherparse::VlanSlice::SingleVlan(v)) => assert_eq!(v.vlan_identifier().value(), 101),
        other => panic!("expected a VLAN 101 tag, got {other:?}"),
    }
    assert!(vm1_out.is_empty(), "nothing goes back to vm1");
    let last = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stats-json: "))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["drops"]["port_security.spoofed_ipv4"], 5);
    assert_eq!(
        v["drops"]["provider.unknown_vlan"].as_u64().unwrap()
            + v["drops"]["provider.tagged_on_flat"].as_u64().unwrap(),
        3
    );
    assert_eq!(v["events"]["provider.vlan_popped"], 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_devargs_stop_startup_with_every_problem_listed() {
    let dir = std::env::temp_dir().join(format!("vswitch-baddev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let host = format!(
        r#"role = "dvr"
host_id = "compute1"
cores = [1]
eal_args = ["--no-huge", "-m", "128", "--no-pci", "--no-shconf", "--file-prefix", "baddev{pid}"]
[[ports]]
name = "a"
devargs = "net_null0,no-rx=1"
kind = "provider"
[[ports]]
name = "b"
devargs = "net_nosuchdriver0,x=1"
kind = "provider"
[[ports]]
name = "c"
devargs = "net_pcap1,rx_pcap=/nonexistent/x.pcap"
kind = "provider"
[bridge_mappings]
p1 = "a"
p2 = "b"
p3 = "c"
"#,
        pid = std::process::id()
    );
    std::fs::write(dir.join("host.toml"), host).unwrap();
    let out = Command::new(vswitchd())
        .args(["--config", dir.join("host.toml").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("ports rejected, nothing started"), "{err}");
    assert!(
        err.contains("ports[1].devargs") && err.contains("net_nosuchdriver0"),
        "{err}"
    );
    assert!(
        err.contains("ports[2].devargs") && err.contains("net_pcap1"),
        "{err}"
    );
    assert!(!err.contains("ports[0]"), "port a was fine: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_lists_every_problem_and_starts_nothing() {
    let dir = std::env::temp_dir().join(format!("vswitch-badcfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("host.toml"),
        "role = \"dvr\"\nhost_id = \"c1\"\ncores = [1]\n[[ports]]\nname = \"vm1\"\ndevargs = \"net_null0\"\nkind = \"instance\"\niface_id = \"p1\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("state.yaml"),
        r#"
networks:
  - {id: n1, "provider:network_type": vlan, "provider:physical_network": provider, "provider:segmentation_id": 5000}
subnets:
  - {id: s1, name: selfservice2-v4, network_id: n1, cidr: 198.51.100.0/24, ip_version: 4}
ports:
  - {id: p1, network_id: n1, mac_address: "fa:16:3e:00:00:01", fixed_ips: [{subnet_id: s1, ip_address: 10.9.9.9}]}
  - {id: p2, network_id: nope, mac_address: "fa:16:3e:00:00:01"}
"#,
    )
    .unwrap();
    let out = Command::new(vswitchd())
        .args([
            "--config",
            dir.join("host.toml").to_str().unwrap(),
            "--state",
            dir.join("state.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "networks[0].provider:segmentation_id",
        "ports[0].fixed_ips[0].ip_address: 10.9.9.9 is not in subnet selfservice2-v4 (198.51.100.0/24)",
        "ports[1].network_id",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("running"));
    let _ = std::fs::remove_dir_all(&dir);
}
