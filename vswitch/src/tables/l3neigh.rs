//! Neighbours the routers resolved themselves (ARP replies and Neighbor Advertisements to a
//! router interface), shared by every core, lock-free.
//!
//! Design note. Neutron pre-populates a DVR router's neighbours with every port it knows, and
//! so does the compiled FIB (`RifEntry`/`Tables::neigh`): this table only holds what the
//! desired state does not know (an address behind an instance without port security, an
//! allowed-address-pair prefix). Any core may receive the answer and any core may need it, so
//! the table is shared, as the underlay's [`NeighborTable`](super::neighbor::NeighborTable) is:
//! a fixed array of slots claimed once by compare-and-swap and never released. A slot holds the
//! key (network + 128-bit address, IPv4 as `::ffff:a.b.c.d`) in two words published before its
//! tag (release/acquire), and the MAC in one word written with a single store, so a reader sees
//! a whole key and a whole MAC or nothing. Entries are refreshed by every answer; the table is
//! sized at start and never allocates; when a probe window is full the answer is not kept and
//! the router keeps asking (`router.unresolved` counts it).
//!
//! [`L3Neighbors::snapshot`] copies every slot and the change count into a table of its own,
//! so a packet trace (`control::trace`) can run the router, which may learn, without writing
//! to the table the workers share.
use std::sync::atomic::{AtomicU64, Ordering};

const PROBE: usize = 16;
const READY: u64 = 1 << 63;
const CLAIMED: u64 = 1 << 62;
const MAC_MASK: u64 = (1 << 48) - 1;

#[derive(Debug, Default)]
struct Slot {
    tag: AtomicU64,
    hi: AtomicU64,
    lo: AtomicU64,
    mac: AtomicU64,
}

/// The routers' dynamic neighbour cache.
#[derive(Debug)]
pub struct L3Neighbors {
    slots: Box<[Slot]>,
    mask: usize,
    /// Counts changes (a neighbour learned or moved): a routing decision taken from a
    /// resolved neighbour holds while this has not moved.
    epoch: AtomicU64,
}

/// An IPv4 address as the 128-bit key (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn v4_key(ip: u32) -> u128 {
    0xffff_0000_0000 | ip as u128
}

impl L3Neighbors {
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(PROBE).next_power_of_two();
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            epoch: AtomicU64::new(0),
        }
    }

    /// The change count (see `epoch`): read it before a lookup whose answer is kept.
    #[inline(always)]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The slot tag of a key: a hash in bits 16..62 and the network in the low 16 bits.
    #[inline(always)]
    fn tag(net: u16, addr: u128) -> u64 {
        let h = ((addr as u64) ^ ((addr >> 64) as u64).rotate_left(29) ^ net as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        READY | (h >> 2 & 0x3fff_ffff_ffff_0000) | net as u64
    }

    #[inline(always)]
    fn home(tag: u64) -> usize {
        (tag >> 16) as usize
    }

    /// The MAC (48-bit integer) of `addr` on network `net`, if resolved.
    #[inline]
    pub fn lookup(&self, net: u16, addr: u128) -> Option<u64> {
        self.find(net, addr)
            .map(|s| s.mac.load(Ordering::Acquire))
            .map(|m| m & MAC_MASK)
    }

    fn find(&self, net: u16, addr: u128) -> Option<&Slot> {
        let tag = Self::tag(net, addr);
        let h = Self::home(tag);
        for i in 0..PROBE {
            let s = &self.slots[(h + i) & self.mask];
            match s.tag.load(Ordering::Acquire) {
                0 => return None,
                t if t == tag
                    && s.hi.load(Ordering::Relaxed) == (addr >> 64) as u64
                    && s.lo.load(Ordering::Relaxed) == addr as u64 =>
                {
                    return Some(s)
                }
                _ => {}
            }
        }
        None
    }

    /// A private copy, slot for slot, of what the table holds now, with its change count. A
    /// slot is copied only once its tag is published (acquire, as a lookup reads it), so the
    /// copy never holds half a key; a slot claimed but not yet published stays claimed in the
    /// copy, so the probe windows behind it are as long as here.
    pub fn snapshot(&self) -> Self {
        let slots = self
            .slots
            .iter()
            .map(|s| {
                let tag = s.tag.load(Ordering::Acquire);
                if tag & READY == 0 {
                    return Slot {
                        tag: AtomicU64::new(tag),
                        ..Slot::default()
                    };
                }
                Slot {
                    tag: AtomicU64::new(tag),
                    hi: AtomicU64::new(s.hi.load(Ordering::Relaxed)),
                    lo: AtomicU64::new(s.lo.load(Ordering::Relaxed)),
                    mac: AtomicU64::new(s.mac.load(Ordering::Acquire)),
                }
            })
            .collect();
        Self {
            slots,
            mask: self.mask,
            epoch: AtomicU64::new(self.epoch()),
        }
    }

    /// Every resolved entry: (network, address as 128 bits, MAC as a 48-bit integer), in slot
    /// order (control plane: show, and the trace's tests).
    pub fn entries(&self) -> Vec<(u16, u128, u64)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let tag = s.tag.load(Ordering::Acquire);
                (tag & READY != 0).then(|| {
                    let addr = (s.hi.load(Ordering::Relaxed) as u128) << 64
                        | s.lo.load(Ordering::Relaxed) as u128;
                    (tag as u16, addr, s.mac.load(Ordering::Acquire) & MAC_MASK)
                })
            })
            .collect()
    }

    /// Records `addr` on `net` at `mac` (48-bit integer). Returns whether it is new or changed.
    pub fn learn(&self, net: u16, addr: u128, mac: u64) -> bool {
        // A slot's MAC is written before its tag is published, so a found slot always holds one.
        let word = mac & MAC_MASK;
        if let Some(s) = self.find(net, addr) {
            // Most answers confirm what is known: read before writing the shared line.
            if s.mac.load(Ordering::Acquire) == word {
                return false;
            }
            let moved = s.mac.swap(word, Ordering::AcqRel) != word;
            if moved {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            return moved;
        }
        let tag = Self::tag(net, addr);
        let h = Self::home(tag);
        for i in 0..PROBE {
            let s = &self.slots[(h + i) & self.mask];
            if s.tag
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                s.hi.store((addr >> 64) as u64, Ordering::Relaxed);
                s.lo.store(addr as u64, Ordering::Relaxed);
                s.mac.store(word, Ordering::Relaxed);
                s.tag.store(tag, Ordering::Release);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_lookup_update_and_keys_are_exact() {
        let t = L3Neighbors::new(64);
        let a = v4_key(0xc612_0009);
        assert_eq!(t.lookup(1, a), None);
        assert!(t.learn(1, a, 0x0200_0000_0009));
        assert_eq!(t.lookup(1, a), Some(0x0200_0000_0009));
        // Same address on another network, and an IPv6 address: separate entries.
        assert_eq!(t.lookup(2, a), None);
        let v6 = 0xfd00_0198_0018_0000_0000_0000_0000_0009u128;
        assert!(t.learn(2, v6, 0x0200_0000_0066));
        assert_eq!(t.lookup(2, v6), Some(0x0200_0000_0066));
        assert!(!t.learn(1, a, 0x0200_0000_0009), "unchanged");
        assert!(t.learn(1, a, 0x0200_0000_000a), "moved");
        assert_eq!(t.lookup(1, a), Some(0x0200_0000_000a));
    }

    #[test]
    fn a_snapshot_holds_the_same_entries_and_learns_alone() {
        let t = L3Neighbors::new(64);
        let a = v4_key(0xc612_0009);
        let v6 = 0xfd00_0198_0018_0000_0000_0000_0000_0009u128;
        t.learn(1, a, 0x0200_0000_0009);
        t.learn(2, v6, 0x0200_0000_0066);
        let copy = t.snapshot();
        assert_eq!(copy.entries(), t.entries());
        assert_eq!(copy.epoch(), t.epoch());
        assert_eq!(copy.lookup(2, v6), Some(0x0200_0000_0066));
        assert!(copy.learn(1, v4_key(0xc612_000a), 0x0200_0000_000a));
        assert!(copy.learn(1, a, 0x0200_0000_0077));
        assert_eq!(
            t.lookup(1, v4_key(0xc612_000a)),
            None,
            "the original learns nothing"
        );
        assert_eq!(t.lookup(1, a), Some(0x0200_0000_0009));
        assert_eq!(t.entries().len(), 2);
        assert_ne!(copy.epoch(), t.epoch());
    }

    #[test]
    fn full_window_refuses_without_losing_entries() {
        let t = L3Neighbors::new(16);
        let stored = (0..40u32)
            .filter(|&i| t.learn(0, v4_key(i), i as u64 + 1))
            .count();
        assert_eq!(stored, 16);
        for i in 0..40u32 {
            if let Some(m) = t.lookup(0, v4_key(i)) {
                assert_eq!(m, i as u64 + 1);
            }
        }
    }

    #[test]
    fn concurrent_learners_and_readers_see_whole_entries() {
        let t = std::sync::Arc::new(L3Neighbors::new(4096));
        let hs: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u32 {
                        let mac = (i as u64) << 8 | w;
                        t.learn(0, v4_key(i), mac);
                        if let Some(m) = t.lookup(0, v4_key(i)) {
                            assert_eq!(m >> 8, i as u64, "a MAC of another key");
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}
