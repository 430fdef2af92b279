//! Longest-prefix match for a router's FIB, IPv4 (`u32` keys) and IPv6 (`u128` keys).
//!
//! Design note. A tenant router holds a handful of connected subnets and a few static routes,
//! rarely more than a few hundred prefixes, with few distinct prefix lengths. So the FIB is one
//! hash map per distinct prefix length, searched from the longest length down (the "binary
//! search on prefix lengths" family, here without the markers: a linear walk over the lengths
//! present, which is at most a few for real tenant routers). The first hit is the longest
//! match. Small tables (up to [`LINEAR_MAX`] prefixes) skip the hashing and scan a flat array
//! sorted by length, which `examples/lpm_bench.rs` measured faster below that size (numbers in
//! `docs/architecture.md`). Built once by the control plane, never changed (a change builds a
//! new one), so lookups need no synchronisation. The default route is kept aside: it is the
//! answer when nothing longer matches.
use rustc_hash::FxHashMap;

/// Up to this many prefixes, lookups scan a sorted array instead of hashing.
pub const LINEAR_MAX: usize = 8;

/// An address type the FIB can be keyed by.
pub trait LpmKey: Copy + Eq + std::hash::Hash + std::fmt::Debug {
    const BITS: u8;
    /// The address with only its first `len` bits kept.
    fn masked(self, len: u8) -> Self;
}

impl LpmKey for u32 {
    const BITS: u8 = 32;
    #[inline(always)]
    fn masked(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - len as u32))
        }
    }
}

impl LpmKey for u128 {
    const BITS: u8 = 128;
    #[inline(always)]
    fn masked(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - len as u32))
        }
    }
}

/// An immutable longest-prefix-match table from prefixes to `u32` values (route indices).
#[derive(Debug, Clone)]
pub struct Lpm<K: LpmKey> {
    /// Small tables: (masked prefix, length, value), longest length first.
    linear: Vec<(K, u8, u32)>,
    /// Large tables: one map per distinct length, longest first.
    by_len: Vec<(u8, FxHashMap<K, u32>)>,
    default: Option<u32>,
    len: usize,
}

impl<K: LpmKey> Default for Lpm<K> {
    fn default() -> Self {
        Self {
            linear: Vec::new(),
            by_len: Vec::new(),
            default: None,
            len: 0,
        }
    }
}

impl<K: LpmKey> Lpm<K> {
    /// Builds the table. Later duplicates of a prefix replace earlier ones (so callers list
    /// connected routes last to make them win over a static route for the same prefix).
    pub fn build(prefixes: impl IntoIterator<Item = (K, u8, u32)>) -> Self {
        Self::build_with(prefixes, LINEAR_MAX)
    }

    /// [`build`](Self::build) with another size limit for the linear form (benchmarks).
    pub fn build_with(prefixes: impl IntoIterator<Item = (K, u8, u32)>, linear_max: usize) -> Self {
        // Deduplicate by (length, masked prefix), keeping the last value and first position.
        let mut all: FxHashMap<(u8, K), u32> = FxHashMap::default();
        let mut order: Vec<(u8, K)> = Vec::new();
        for (k, len, v) in prefixes {
            let len = len.min(K::BITS);
            let key = (len, k.masked(len));
            if all.insert(key, v).is_none() {
                order.push(key);
            }
        }
        // Longest first (stable, so the table is deterministic for one input).
        order.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut t = Self {
            len: all.len(),
            ..Self::default()
        };
        let entries: Vec<(K, u8, u32)> = order
            .iter()
            .map(|&(len, k)| (k, len, all[&(len, k)]))
            .collect();
        for &(_, len, v) in &entries {
            if len == 0 {
                t.default = Some(v);
            }
        }
        let rest = entries.into_iter().filter(|&(_, len, _)| len != 0);
        if t.len <= linear_max {
            t.linear = rest.collect();
        } else {
            for (k, len, v) in rest {
                match t.by_len.last_mut() {
                    Some((l, m)) if *l == len => {
                        m.insert(k, v);
                    }
                    _ => {
                        let mut m = FxHashMap::default();
                        m.insert(k, v);
                        t.by_len.push((len, m));
                    }
                }
            }
        }
        t
    }

    /// The value of the longest prefix containing `addr`, with that prefix's length.
    #[inline]
    pub fn lookup(&self, addr: K) -> Option<(u32, u8)> {
        for &(k, len, v) in &self.linear {
            if addr.masked(len) == k {
                return Some((v, len));
            }
        }
        for (len, m) in &self.by_len {
            if let Some(&v) = m.get(&addr.masked(*len)) {
                return Some((v, *len));
            }
        }
        self.default.map(|v| (v, 0))
    }

    /// How many prefixes (the default route included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: every prefix checked, the longest match wins (later duplicates replace).
    fn brute<K: LpmKey>(prefixes: &[(K, u8, u32)], addr: K) -> Option<(u32, u8)> {
        let mut best: Option<(u32, u8)> = None;
        for &(k, len, v) in prefixes {
            if addr.masked(len) == k.masked(len) && best.is_none_or(|(_, l)| len >= l) {
                best = Some((v, len));
            }
        }
        best
    }

    #[test]
    fn longest_wins_and_default_is_last() {
        let t = Lpm::<u32>::build([
            (0, 0, 1),
            (0xc612_0000, 15, 2), // 198.18.0.0/15
            (0xc612_0000, 24, 3), // 198.18.0.0/24
            (0xc612_0005, 32, 4), // 198.18.0.5/32
            (0xc633_6400, 24, 5), // 198.51.100.0/24
        ]);
        assert_eq!(t.lookup(0xc612_0005), Some((4, 32)));
        assert_eq!(t.lookup(0xc612_0006), Some((3, 24)));
        assert_eq!(t.lookup(0xc613_0006), Some((2, 15)));
        assert_eq!(t.lookup(0xc633_6401), Some((5, 24)));
        assert_eq!(t.lookup(0x0a00_0001), Some((1, 0)));
        assert_eq!(Lpm::<u32>::build([(0xc612_0000, 24, 3)]).lookup(1), None);
    }

    fn check<K: LpmKey>(prefixes: Vec<(K, u8, u32)>, probes: Vec<K>) -> Result<(), TestCaseError> {
        let t = Lpm::build(prefixes.clone());
        for a in probes.iter().copied().chain(prefixes.iter().map(|p| p.0)) {
            prop_assert_eq!(t.lookup(a), brute(&prefixes, a), "addr {:?}", a);
        }
        Ok(())
    }

    proptest! {
        // Few prefixes (the linear form) and many (the per-length hash form), clustered in a
        // small address space so nested prefixes and hits are common.
        #[test]
        fn v4_matches_brute_force(
            prefixes in proptest::collection::vec((0u32..4096, 0u8..=32, any::<u32>()), 0..200),
            probes in proptest::collection::vec(0u32..4096, 1..64),
        ) {
            let spread = |x: u32| x.rotate_right(12);
            let prefixes: Vec<_> = prefixes.into_iter().map(|(k, l, v)| (spread(k), l, v)).collect();
            check(prefixes, probes.into_iter().map(spread).collect())?;
        }

        #[test]
        fn v6_matches_brute_force(
            prefixes in proptest::collection::vec((0u128..4096, 0u8..=128, any::<u32>()), 0..200),
            probes in proptest::collection::vec(0u128..4096, 1..64),
        ) {
            let spread = |x: u128| x.rotate_right(12);
            let prefixes: Vec<_> = prefixes.into_iter().map(|(k, l, v)| (spread(k), l, v)).collect();
            check(prefixes, probes.into_iter().map(spread).collect())?;
        }
    }
}
