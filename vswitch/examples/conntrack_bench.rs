//! Connection setup rate and memory per connection, on one core, through the real stages.
//!
//! `cargo run --release --example conntrack_bench` (run by `make bench`). Instance vm1's
//! security group has 1,000 rules plus the one that allows its traffic: egress UDP to the
//! members of a remote group of 10,000 ports. Every frame vm1 sends is a new 5-tuple (one of
//! the 10,000 members as destination, a fresh source port), so each one is parsed, classified
//! against the rules and committed to the connection table, then switched to vm2 (no port
//! security) and handed to a transmit sink that recycles the buffers (nothing is allocated in
//! the loop). Figures:
//! - setup rate while the table fills from empty to 1,048,576 connections, and once it is
//!   full (every new connection then evicts the oldest unestablished one);
//! - the same tuples again (every frame a tracked connection): packets per second;
//! - bytes per tracked connection at 1,048,576 entries: the table's own arrays, and the
//!   process's resident memory growth while it filled.
use std::net::Ipv4Addr;
use std::time::Instant;
use vswitch::counters::DropReason;
use vswitch::packet::PacketBuf;
use vswitch::pipeline::BURST;

#[path = "support/rig.rs"]
mod rig;
use rig::Rig;

const CAPACITY: usize = 1 << 20;
const MEMBERS: u32 = 10_000;
const RULES: u32 = 1_000;

const HOST: &str = r#"
role = "dvr"
host_id = "bench1"
cores = [1]
[[ports]]
name = "vm1"
devargs = "net_null0"
kind = "instance"
iface_id = "vm1"
[[ports]]
name = "vm2"
devargs = "net_null1"
kind = "instance"
iface_id = "vm2"
"#;

const STATE: &str = r#"
networks:
  - {id: net1, name: net1, "provider:network_type": vxlan, "provider:segmentation_id": 100}
  - {id: servers, name: servers, "provider:network_type": vxlan, "provider:segmentation_id": 200}
subnets:
  - {id: s1, network_id: net1, cidr: 198.51.100.0/24, ip_version: 4}
  - {id: s-servers, network_id: servers, cidr: 100.64.0.0/16, ip_version: 4}
ports:
  - {id: vm1, network_id: net1, mac_address: "fa:16:3e:00:00:01", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.11}], "binding:host_id": bench1, security_groups: [client]}
  - {id: vm2, network_id: net1, mac_address: "fa:16:3e:00:00:02", fixed_ips: [{subnet_id: s1, ip_address: 198.51.100.12}], "binding:host_id": bench1, port_security_enabled: false}
security_groups:
  - {id: client, name: client}
  - {id: servers, name: servers}
security_group_rules:
  - {id: to-servers, security_group_id: client, direction: egress, ethertype: IPv4, protocol: udp, remote_group_id: servers}
"#;

/// The desired state: the YAML above plus the 10,000 server ports and the 1,000 other rules.
fn state() -> vswitch_config::DesiredState {
    let mut s = vswitch_config::parse_state_str(STATE, false).expect("bench state");
    let proto = s.ports[1].clone();
    for i in 0..MEMBERS {
        let mut p = proto.clone();
        p.id = format!("server{i}");
        p.network_id = "servers".into();
        p.mac_address = vswitch_config::MacAddr([0xfa, 0x16, 0x3e, 0x10, (i >> 8) as u8, i as u8]);
        p.fixed_ips = vec![vswitch_config::FixedIp {
            subnet_id: "s-servers".into(),
            ip_address: member(i).into(),
        }];
        p.binding_host_id = None;
        p.port_security_enabled = None;
        p.security_groups = vec!["servers".into()];
        s.ports.push(p);
    }
    let base = s.security_group_rules[0].clone();
    for i in 0..RULES {
        let mut r = base.clone();
        r.id = format!("r{i}");
        r.direction = vswitch_config::Direction::Ingress;
        r.protocol = Some(vswitch_config::Protocol::Tcp);
        r.port_range_min = Some(1000 + i as u16 * 7);
        r.port_range_max = Some(1000 + i as u16 * 7 + 3);
        r.remote_group_id = None;
        r.remote_ip_prefix = Some(format!("203.0.{}.0/24", i % 256).parse().unwrap());
        s.security_group_rules.push(r);
    }
    s
}

fn member(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 10)) + i)
}

/// A UDP frame vm1 -> vm2's MAC, addressed to a server.
fn template() -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(
        [0xfa, 0x16, 0x3e, 0, 0, 1],
        [0xfa, 0x16, 0x3e, 0, 0, 2],
    )
    .ipv4([198, 51, 100, 11], member(0).octets(), 64)
    .udp(1024, 53);
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 18]).unwrap();
    out
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Sends `n` frames through `rig`; frame k goes to server k % 10,000 from a source port
/// derived from k, so tuples repeat only after 10,000 x 60,000 frames. Returns seconds.
fn run(rig: &mut Rig, from: u64, n: u64) -> f64 {
    let tmpl = template();
    let start = Instant::now();
    let mut k = from;
    let end = from + n;
    while k < end {
        let len = (end - k).min(BURST as u64) as usize;
        for i in 0..len {
            let mut p = rig.sink.reuse(&tmpl);
            let x = k + i as u64;
            let d = p.data_mut();
            let dst = u32::from(member((x % MEMBERS as u64) as u32)).to_be_bytes();
            d[30..34].copy_from_slice(&dst);
            // Source port and the rest of the tuple from the frame number.
            let sport = (1024 + (x / MEMBERS as u64) % 60000) as u16;
            let dport = (53 + (x / (MEMBERS as u64 * 60000))) as u16;
            d[34..36].copy_from_slice(&sport.to_be_bytes());
            d[36..38].copy_from_slice(&dport.to_be_bytes());
            rig.b.pkts[i] = Some(p);
        }
        rig.send(0, len);
        k += len as u64;
    }
    rig.flush();
    start.elapsed().as_secs_f64()
}

fn main() {
    let mut rig = Rig::new(HOST, &state());
    let rss0 = rss_kib();
    rig.with_conntrack(CAPACITY);
    println!(
        "conntrack_bench: vm1's group has {} rules, the allowing one names a remote group of {} members; capacity {} connections, 1 core",
        RULES + 1,
        MEMBERS,
        CAPACITY
    );
    // Fill: every frame a new connection, until the table is full.
    let fill = CAPACITY as u64;
    let secs = run(&mut rig, 0, fill);
    let rss1 = rss_kib();
    assert_eq!(rig.s.fw.ct.len(), CAPACITY, "the table filled");
    assert_eq!(rig.c.dropped(DropReason::FirewallEgressDenied), 0);
    println!(
        "setup, table filling:   {:>6.2} M new connections/s per core ({} in {:.3} s)",
        fill as f64 / secs / 1e6,
        fill,
        secs
    );
    // Full: each new connection evicts the oldest unestablished one.
    let more = 2 * CAPACITY as u64;
    let secs = run(&mut rig, fill, more);
    println!(
        "setup, table full:      {:>6.2} M new connections/s per core ({} evicted)",
        more as f64 / secs / 1e6,
        rig.s.fw.ct.stats.evicted
    );
    // The last CAPACITY tuples again: every frame hits a tracked connection.
    let secs = run(&mut rig, fill + more - CAPACITY as u64, CAPACITY as u64);
    println!(
        "tracked (1 M flows):    {:>6.2} Mpps per core",
        CAPACITY as f64 / secs / 1e6
    );
    assert_eq!(rig.dropped(), 0, "no drops: {:?}", rig.c.drops);
    let ct = &rig.s.fw.ct;
    println!(
        "memory per connection:  {} bytes (table arrays: {} MiB for {} entries); RSS grew {} MiB while filling = {} bytes per connection",
        ct.memory_bytes() / ct.capacity(),
        ct.memory_bytes() >> 20,
        ct.capacity(),
        (rss1 - rss0) >> 10,
        (rss1 - rss0) * 1024 / CAPACITY as u64
    );
}
