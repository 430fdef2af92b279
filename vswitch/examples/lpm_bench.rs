//! Measures the router FIB's longest-prefix match (`tables::lpm`) in its two forms, a sorted
//! array scan and one hash map per prefix length, at several table sizes, to pick the size
//! where the FIB switches from one to the other (`LINEAR_MAX`). Run by `make bench`:
//! `cargo run --release --example lpm_bench`.
use std::hint::black_box;
use std::time::Instant;
use vswitch::tables::lpm::{Lpm, LINEAR_MAX};

/// A small xorshift generator: reproducible tables without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Tenant-like tables: connected /24s and /64s, static routes of a few lengths, a default.
fn prefixes(n: usize, rng: &mut Rng) -> Vec<(u32, u8, u32)> {
    let lens = [24u8, 24, 24, 16, 28, 32, 20];
    let mut v: Vec<(u32, u8, u32)> = (0..n.saturating_sub(1))
        .map(|i| {
            let len = lens[i % lens.len()];
            (
                (rng.next() as u32) & 0x0fff_ffff | 0x0a00_0000,
                len,
                i as u32,
            )
        })
        .collect();
    v.push((0, 0, u32::MAX));
    v
}

fn ns_per_lookup(t: &Lpm<u32>, probes: &[u32]) -> f64 {
    let rounds = 20;
    let start = Instant::now();
    let mut acc = 0u64;
    for _ in 0..rounds {
        for &a in probes {
            acc = acc.wrapping_add(black_box(t.lookup(black_box(a))).map_or(0, |v| v.0 as u64));
        }
    }
    black_box(acc);
    start.elapsed().as_nanos() as f64 / (rounds * probes.len()) as f64
}

fn main() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    println!("lpm lookup, IPv4, ns per lookup (median of 5); LINEAR_MAX = {LINEAR_MAX}");
    println!(
        "{:>8} {:>12} {:>12} {:>12}",
        "prefixes", "linear", "per-length", "chosen"
    );
    let mut rows = Vec::new();
    for &n in &[2usize, 4, 8, 16, 32, 64, 256, 1024, 10_000] {
        let p = prefixes(n, &mut rng);
        // Half the probes hit a table prefix, half are random (default route).
        let probes: Vec<u32> = (0..100_000)
            .map(|i| {
                if i % 2 == 0 {
                    let (k, len, _) = p[(rng.next() as usize) % p.len()];
                    k | (rng.next() as u32 & (u32::MAX.checked_shr(len as u32).unwrap_or(0)))
                } else {
                    rng.next() as u32
                }
            })
            .collect();
        let forms = [
            Lpm::build_with(p.clone(), usize::MAX),
            Lpm::build_with(p.clone(), 0),
            Lpm::build(p.clone()),
        ];
        let med: Vec<f64> = forms
            .iter()
            .map(|t| {
                let mut xs: Vec<f64> = (0..5).map(|_| ns_per_lookup(t, &probes)).collect();
                xs.sort_by(f64::total_cmp);
                xs[2]
            })
            .collect();
        println!("{n:>8} {:>12.1} {:>12.1} {:>12.1}", med[0], med[1], med[2]);
        rows.push(serde_json::json!({
            "prefixes": n, "linear_ns": med[0], "per_length_ns": med[1], "chosen_ns": med[2],
        }));
    }
    println!("lpm-json: {}", serde_json::Value::Array(rows));
}
