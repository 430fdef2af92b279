//! The security-group fast path without DPDK: the `conntrack-established` benchmark scenario's
//! traffic through the real stages on one core, for profiling and quick A/B comparisons.
//!
//! `cargo run --release --example ct_established_bench [PASSES [RUNS]]` (run by `make bench`). It
//! writes the scenario's two pcaps with `perf/gen_pcap.py` (1,024 TCP connections vm1 <-> vm2,
//! 4,096 frames a side), compiles the scenario's host and desired state, and replays the two
//! sides in lockstep, 32 frames of vm1 then 32 of vm2, as the worker polls them: each frame is
//! copied into a recycled buffer (as a PMD copies into an mbuf), parsed, checked by vm1's egress
//! rules and vm2's ingress rules (or the other way) with full TCP window tracking in both
//! zones, switched and handed to a sink. The same frames with port security off on both
//! ports give the cost of everything but the firewall, in the same run. Unlike the DPDK
//! benchmark, the tables stay in this core's caches (no PMD streams frames through them), so
//! the figures are an upper bound and the difference between the two is the firewall's
//! computing cost. `CT_CAP=N` sets the connection table's capacity (default 262,144, the
//! daemon's default for one worker).
use std::path::{Path, PathBuf};
use std::time::Instant;
use vswitch::pipeline::BURST;

#[path = "support/rig.rs"]
mod rig;
use rig::Rig;

const HOST: &str = r#"
role = "dvr"
host_id = "bench1"
cores = [1]
[[ports]]
name = "vm1"
devargs = "net_null0"
kind = "instance"
iface_id = "bench-vm1"
[[ports]]
name = "vm2"
devargs = "net_null1"
kind = "instance"
iface_id = "bench-vm2"
[conntrack]
liberal_ports = []
"#;

/// The frames of a classic pcap file.
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let d = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        d.len() >= 24 && d[..4] == [0xd4, 0xc3, 0xb2, 0xa1],
        "{}: not a little-endian pcap",
        path.display()
    );
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= d.len() {
        let incl = u32::from_le_bytes([d[at + 8], d[at + 9], d[at + 10], d[at + 11]]) as usize;
        at += 16;
        out.push(d[at..at + incl].to_vec());
        at += incl;
    }
    out
}

/// Replays both sides once through `rig`, in lockstep: 32 frames of vm1, then 32 of vm2.
fn pass(rig: &mut Rig, sides: &[Vec<Vec<u8>>; 2]) {
    let n = sides[0].len();
    for at in (0..n).step_by(BURST) {
        for (port, frames) in sides.iter().enumerate() {
            let len = BURST.min(n - at);
            for i in 0..len {
                rig.b.pkts[i] = Some(rig.sink.take(&frames[at + i]));
            }
            rig.send(port as u16, len);
        }
    }
    rig.flush();
}

/// Mpps over `rounds` passes.
fn measure(rig: &mut Rig, sides: &[Vec<Vec<u8>>; 2], rounds: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        pass(rig, sides);
    }
    (2 * sides[0].len() * rounds) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = |n: usize, d: usize| {
        std::env::args()
            .nth(n)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (rounds, runs) = (arg(1, 200), arg(2, 9));
    let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!("ct_established_bench.{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let st = std::process::Command::new("python3")
        .arg(top.join("perf/gen_pcap.py"))
        .arg("conntrack-established")
        .arg("-o")
        .arg(out.join("ct.pcap"))
        .status()
        .expect("python3 perf/gen_pcap.py");
    assert!(st.success(), "gen_pcap.py failed");
    let sides = [
        read_pcap(&out.join("ct-client.pcap")),
        read_pcap(&out.join("ct-server.pcap")),
    ];
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(sides[0].len(), sides[1].len());
    let yaml = std::fs::read_to_string(top.join("perf/scenarios/conntrack-established/state.yaml"))
        .expect("scenario state");
    let with_sg = vswitch_config::parse_state_str(&yaml, false).expect("scenario state");
    let mut open = with_sg.clone();
    for p in &mut open.ports {
        p.port_security_enabled = Some(false);
        p.security_groups.clear();
    }
    println!(
        "ct_established_bench: {} frames a side, {} runs of {} passes, 1 core, no DPDK",
        sides[0].len(),
        runs,
        rounds
    );
    let capacity = std::env::var("CT_CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(262_144);
    let mut rigs = [Rig::new(HOST, &open), Rig::new(HOST, &with_sg)];
    for r in &mut rigs {
        r.with_conntrack(capacity);
    }
    // The first pass opens every connection; the measured passes after it are established
    // traffic. The two rigs take turns, so a slow patch of the machine hits both alike.
    let mut mpps = [Vec::new(), Vec::new()];
    for r in &mut rigs {
        pass(r, &sides);
    }
    for _ in 0..runs {
        for (r, m) in rigs.iter_mut().zip(mpps.iter_mut()) {
            m.push(measure(r, &sides, rounds));
        }
    }
    for r in &rigs {
        assert_eq!(r.dropped(), 0, "no frame may be dropped: {:?}", r.c.drops);
    }
    let [base, fw] = mpps.map(median);
    println!(
        "port security off:      {base:>6.2} Mpps ({:.1} ns/packet)",
        1e3 / base
    );
    println!(
        "security groups on:     {fw:>6.2} Mpps ({:.1} ns/packet)",
        1e3 / fw
    );
    println!(
        "firewall, both zones:   {:>6.1} ns/packet (median of {runs} runs each)",
        1e3 / fw - 1e3 / base
    );
}
