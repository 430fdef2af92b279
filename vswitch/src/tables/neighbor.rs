//! Underlay neighbours (IPv4 -> MAC) of the overlay port, shared by every core.
//!
//! Design note. Any core may receive the ARP reply for a VTEP, and every core that sends to
//! that VTEP needs the answer, so this table is shared, not per core, and lock-free: a fixed
//! array of slots, each an `AtomicU32` IPv4 address (0 = free) and an `AtomicU64` holding the
//! MAC in its low 48 bits, a "valid" bit and a "static" bit. A slot's address is claimed once by
//! compare-and-swap and never released, so a lookup probes a bounded window until the address
//! or a free slot; the MAC word is written with one release store and read with one acquire
//! load, so a reader sees a whole MAC or none. Entries are refreshed by every ARP reply or
//! request seen from that address; static entries (`[overlay.neighbors]`) are never
//! overwritten. The table is sized at start (no allocation afterwards); when a window is full
//! the answer is not stored (`tunnel.unresolved` keeps counting, visibly).
//!
//! [`NeighborTable::snapshot`] copies every slot into a table of its own, so a packet trace
//! (`control::trace`) can run the pipeline, which may learn, without writing to the table the
//! workers share.
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Slots examined per lookup or insert.
const PROBE: usize = 16;
const VALID: u64 = 1 << 63;
const STATIC: u64 = 1 << 62;
const MAC_MASK: u64 = (1 << 48) - 1;

#[derive(Debug, Default)]
struct Slot {
    ip: AtomicU32,
    mac: AtomicU64,
}

/// The shared underlay ARP cache.
#[derive(Debug)]
pub struct NeighborTable {
    slots: Box<[Slot]>,
    mask: usize,
}

impl NeighborTable {
    /// A table of `capacity` slots (rounded up to a power of two, at least [`PROBE`]).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(PROBE).next_power_of_two();
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
        }
    }

    #[inline(always)]
    fn home(ip: u32) -> usize {
        (ip.wrapping_mul(0x9E37_79B1) >> 8) as usize
    }

    /// The MAC (48-bit integer) of `ip`, if resolved.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<u64> {
        let ip = u32::from(ip);
        let h = Self::home(ip);
        for i in 0..PROBE {
            let s = &self.slots[(h + i) & self.mask];
            match s.ip.load(Ordering::Acquire) {
                0 => return None,
                x if x == ip => {
                    let m = s.mac.load(Ordering::Acquire);
                    return (m & VALID != 0).then_some(m & MAC_MASK);
                }
                _ => {}
            }
        }
        None
    }

    /// Records `ip` at `mac` (48-bit integer). A static entry is never overwritten by a learned
    /// one. Returns whether the entry is new or changed.
    pub fn learn(&self, ip: Ipv4Addr, mac: u64) -> bool {
        self.store(ip, mac & MAC_MASK | VALID)
    }

    /// Installs a permanent entry.
    pub fn set_static(&self, ip: Ipv4Addr, mac: u64) -> bool {
        self.store(ip, mac & MAC_MASK | VALID | STATIC)
    }

    fn store(&self, ip: Ipv4Addr, word: u64) -> bool {
        let ip = u32::from(ip);
        if ip == 0 {
            return false;
        }
        let h = Self::home(ip);
        for i in 0..PROBE {
            let s = &self.slots[(h + i) & self.mask];
            let cur = s.ip.load(Ordering::Acquire);
            let mine = cur == ip
                || (cur == 0 && {
                    match s
                        .ip
                        .compare_exchange(0, ip, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => true,
                        Err(other) => other == ip,
                    }
                });
            if mine {
                let old = s.mac.load(Ordering::Acquire);
                if old & STATIC != 0 && word & STATIC == 0 {
                    return false;
                }
                if old == word {
                    return false;
                }
                s.mac.store(word, Ordering::Release);
                return true;
            }
        }
        false
    }

    /// A private copy, slot for slot (so every probe window is as full as here), of what the
    /// table holds now. Each slot is read with the same acquire loads as a lookup, so a copy
    /// taken while workers learn holds, per slot, the old entry or the new one, never half.
    pub fn snapshot(&self) -> Self {
        let slots = self
            .slots
            .iter()
            .map(|s| Slot {
                ip: AtomicU32::new(s.ip.load(Ordering::Acquire)),
                mac: AtomicU64::new(s.mac.load(Ordering::Acquire)),
            })
            .collect();
        Self {
            slots,
            mask: self.mask,
        }
    }

    /// Every resolved entry (control plane: counters, show).
    pub fn entries(&self) -> Vec<(Ipv4Addr, u64, bool)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let ip = s.ip.load(Ordering::Acquire);
                let m = s.mac.load(Ordering::Acquire);
                (ip != 0 && m & VALID != 0)
                    .then(|| (Ipv4Addr::from(ip), m & MAC_MASK, m & STATIC != 0))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn learn_lookup_static_wins() {
        let t = NeighborTable::new(64);
        let a: Ipv4Addr = "10.0.0.12".parse().unwrap();
        assert_eq!(t.lookup(a), None);
        assert!(t.learn(a, 0x0200_0000_0012));
        assert_eq!(t.lookup(a), Some(0x0200_0000_0012));
        assert!(!t.learn(a, 0x0200_0000_0012), "unchanged");
        assert!(t.set_static(a, 0x0200_0000_0099));
        assert!(
            !t.learn(a, 0x0200_0000_0012),
            "static entries are not overwritten"
        );
        assert_eq!(t.lookup(a), Some(0x0200_0000_0099));
        assert_eq!(t.entries(), vec![(a, 0x0200_0000_0099, true)]);
    }

    #[test]
    fn a_snapshot_holds_the_same_entries_and_learns_alone() {
        let t = NeighborTable::new(64);
        let a: Ipv4Addr = "10.0.0.12".parse().unwrap();
        let b: Ipv4Addr = "10.0.0.13".parse().unwrap();
        t.learn(a, 0x0200_0000_0012);
        t.set_static(b, 0x0200_0000_0013);
        let copy = t.snapshot();
        assert_eq!(copy.entries(), t.entries());
        assert!(
            !copy.learn(b, 0x0200_0000_0099),
            "the static entry stays static"
        );
        let c: Ipv4Addr = "10.0.0.14".parse().unwrap();
        assert!(copy.learn(c, 0x0200_0000_0014));
        assert!(copy.learn(a, 0x0200_0000_0077));
        assert_eq!(t.lookup(c), None, "the original learns nothing");
        assert_eq!(t.lookup(a), Some(0x0200_0000_0012));
        assert_eq!(copy.lookup(a), Some(0x0200_0000_0077));
    }

    #[test]
    fn concurrent_writers_never_tear_or_duplicate() {
        let t = Arc::new(NeighborTable::new(256));
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for round in 0..2000u64 {
                        for i in 1..=100u32 {
                            t.learn(Ipv4Addr::from(0x0a00_0000 + i), (k << 40) | round);
                            if let Some(m) = t.lookup(Ipv4Addr::from(0x0a00_0000 + i)) {
                                assert!(m >> 40 < 4, "a whole MAC from one writer");
                            }
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let e = t.entries();
        assert_eq!(e.len(), 100, "each address holds exactly one slot");
    }
}
