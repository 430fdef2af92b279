//! Per-core MAC learning table.
//!
//! Design note. Learning happens on the fast path, so the table is owned by one core (no locks,
//! no sharing) and has a fixed capacity chosen at start-up (no allocation after it). It is an
//! open-addressing hash of `(network, MAC)` keys (packed in a u64, see [`super::fdb_key`]) with
//! linear probing over a bounded window of [`PROBE`] slots. Entries are never deleted: an entry
//! older than the aging time is a miss, and its slot is reused by the next insert that lands in
//! its window. A lookup scans the window until an empty slot or its key, so reuse never breaks a
//! probe chain. When a window has neither its key, an empty nor an expired slot, the MAC is not
//! learned and `integration.learn_table_full` counts it (frames to it are then flooded, which is
//! what a full hardware switch does too). Each core learns what it sees; a MAC another core
//! learned is flooded here until this core sees it, which is correct, only less efficient.

use super::NetIdx;
use crate::packet::MacAddr;

/// Slots examined per lookup or insert.
pub const PROBE: usize = 8;
/// Default aging time (OVS `mac-aging-time` and Linux bridge default: 300 s).
pub const DEFAULT_AGING_MS: u64 = 300_000;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// `fdb_key` + 1, so 0 means empty.
    key: u64,
    port: u16,
    /// Last time a frame from this MAC was seen, in the worker's millisecond clock.
    seen_ms: u64,
}

/// What [`LearnTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    New,
    Moved,
    Refreshed,
    Full,
}

/// A fixed-capacity MAC table owned by one core.
#[derive(Debug)]
pub struct LearnTable {
    slots: Box<[Slot]>,
    mask: usize,
    aging_ms: u64,
    /// Counts the entries that appeared or moved (what a cached forwarding decision depends
    /// on; see `pipeline::flowcache`).
    epoch: u64,
}

impl LearnTable {
    /// A table with `capacity` (rounded up to a power of two, at least [`PROBE`]) slots.
    pub fn new(capacity: usize, aging_ms: u64) -> Self {
        let n = capacity.max(PROBE).next_power_of_two();
        Self {
            slots: vec![Slot::default(); n].into_boxed_slice(),
            mask: n - 1,
            aging_ms,
            epoch: 0,
        }
    }

    /// The change count: it moves whenever a MAC is learnt anew or moves.
    #[inline(always)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        // Fibonacci hashing spreads sequential MACs over the table.
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask
    }

    #[inline(always)]
    fn live(&self, s: &Slot, now_ms: u64) -> bool {
        now_ms.saturating_sub(s.seen_ms) <= self.aging_ms
    }

    /// The port `mac` was last seen on in `net`, if not aged out.
    #[inline]
    pub fn lookup(&self, net: NetIdx, mac: MacAddr, now_ms: u64) -> Option<u16> {
        let key = super::fdb_key(net, mac) + 1;
        let h = self.home(key);
        for i in 0..PROBE {
            let s = &self.slots[(h + i) & self.mask];
            if s.key == 0 {
                return None;
            }
            if s.key == key {
                return self.live(s, now_ms).then_some(s.port);
            }
        }
        None
    }

    /// Records that `mac` was seen on `port` in `net` at `now_ms`.
    #[inline]
    pub fn learn(&mut self, net: NetIdx, mac: MacAddr, port: u16, now_ms: u64) -> Learned {
        let key = super::fdb_key(net, mac) + 1;
        let h = self.home(key);
        let mut free = None;
        for i in 0..PROBE {
            let idx = (h + i) & self.mask;
            let live = self.live(&self.slots[idx], now_ms);
            let s = &mut self.slots[idx];
            if s.key == key {
                let r = if !live {
                    Learned::New
                } else if s.port != port {
                    Learned::Moved
                } else {
                    Learned::Refreshed
                };
                s.port = port;
                s.seen_ms = now_ms;
                if r != Learned::Refreshed {
                    self.epoch += 1;
                }
                return r;
            }
            if s.key == 0 {
                free.get_or_insert(idx);
                break;
            }
            if !live && free.is_none() {
                free = Some(idx);
            }
        }
        match free {
            Some(idx) => {
                self.slots[idx] = Slot {
                    key,
                    port,
                    seen_ms: now_ms,
                };
                self.epoch += 1;
                Learned::New
            }
            None => Learned::Full,
        }
    }

    /// Live entries (control plane / tests; walks the whole table).
    pub fn len(&self, now_ms: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| s.key != 0 && self.live(s, now_ms))
            .count()
    }

    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.len(now_ms) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> MacAddr {
        let b = i.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learn_lookup_move_and_age() {
        let mut t = LearnTable::new(64, 1000);
        assert_eq!(t.learn(1, mac(1), 3, 0), Learned::New);
        assert_eq!(t.lookup(1, mac(1), 10), Some(3));
        assert_eq!(t.lookup(2, mac(1), 10), None, "networks are isolated");
        assert_eq!(t.learn(1, mac(1), 3, 20), Learned::Refreshed);
        assert_eq!(t.learn(1, mac(1), 4, 30), Learned::Moved);
        assert_eq!(t.lookup(1, mac(1), 1030), Some(4));
        assert_eq!(t.lookup(1, mac(1), 1031), None, "aged out");
        assert_eq!(t.learn(1, mac(1), 4, 2000), Learned::New);
    }

    #[test]
    fn full_table_refuses_then_reuses_expired_slots() {
        let mut t = LearnTable::new(8, 100);
        let mut full = 0;
        for i in 0..64 {
            if t.learn(0, mac(i), 1, 0) == Learned::Full {
                full += 1;
            }
        }
        assert_eq!(t.len(0), 8);
        assert_eq!(full, 56);
        // Everything expires; new MACs take the old slots.
        for i in 100..108 {
            assert_ne!(t.learn(0, mac(i), 2, 500), Learned::Full);
        }
        assert_eq!(t.len(500), 8);
    }

    #[test]
    fn no_duplicate_after_reuse() {
        let mut t = LearnTable::new(8, 100);
        for i in 0..8 {
            t.learn(0, mac(i), 1, 0);
        }
        // mac(3) expires, and is re-learned: it must update its own slot, not add a second.
        for i in 0..8 {
            t.learn(0, mac(i), 1, 1000);
        }
        assert_eq!(t.len(1000), 8);
        assert_eq!(t.lookup(0, mac(3), 1000), Some(1));
    }
}
