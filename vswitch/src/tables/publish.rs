//! Publishing tables to the cores: one atomic pointer swap, frees on the control thread.
//!
//! Design note. Workers read the current [`Tables`] through an `arc_swap::Cache` at the top of
//! every poll round and bump their epoch counter at its end. The cache replaces its `Arc` at the
//! first load after a swap, so once a worker's epoch has advanced by two since the swap (the
//! round in flight at swap time ended, and a whole round began after it) the worker holds no
//! reference to any older generation: a quiescent state (QSBR). [`Publisher::publish`] swaps in
//! the new value with one `ArcSwap::swap` (readers never block or retry), then keeps the old
//! `Arc` until every worker has passed that point, and only then drops it.
//! That way the last reference to an old generation is always released here, on the control
//! thread, never inside a worker's loop (freeing a big table there would stall forwarding, and
//! DPDK objects such as `rte_lpm` must be freed by a registered thread anyway).

use super::Tables;
use crate::counters::CoreCounters;
use arc_swap::ArcSwap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where workers find the current tables.
pub type SharedTables = Arc<ArcSwap<Tables>>;

/// The control thread's handle for replacing the tables.
pub struct Publisher {
    shared: SharedTables,
    cores: Vec<Arc<CoreCounters>>,
}

impl Publisher {
    pub fn new(initial: Tables, cores: Vec<Arc<CoreCounters>>) -> Self {
        Self {
            shared: Arc::new(ArcSwap::from_pointee(initial)),
            cores,
        }
    }

    /// The handle workers load from.
    pub fn shared(&self) -> SharedTables {
        self.shared.clone()
    }

    /// The generation now live.
    pub fn current(&self) -> Arc<Tables> {
        self.shared.load_full()
    }

    /// Makes `next` live on every core (all-or-nothing: a core sees either the old or the new
    /// value for a whole round) and frees the old one here once no core can still hold it.
    /// Returns how long until every core had moved on. `running` tells whether workers are
    /// polling (a stopped worker holds nothing).
    pub fn publish(&self, next: Tables, running: impl Fn() -> bool) -> Duration {
        let t0 = Instant::now();
        let old = self.shared.swap(Arc::new(next));
        let marks: Vec<u64> = self
            .cores
            .iter()
            .map(|c| c.epoch.load(Ordering::Acquire))
            .collect();
        while running()
            && self
                .cores
                .iter()
                .zip(&marks)
                .any(|(c, m)| c.epoch.load(Ordering::Acquire) < m.wrapping_add(2))
        {
            std::thread::sleep(Duration::from_micros(20));
        }
        let waited = t0.elapsed();
        drop(old);
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testutil::tables;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    #[test]
    fn publish_swaps_whole_and_frees_only_after_every_core_moved_on() {
        let cores: Vec<_> = (0..2).map(|i| Arc::new(CoreCounters::new(i, 6))).collect();
        let mut first = tables();
        first.generation = 1;
        let p = Arc::new(Publisher::new(first, cores.clone()));
        let shared = p.shared();
        let stop = Arc::new(AtomicBool::new(false));
        // Two "workers": load, check the generation is whole, bump the epoch.
        let workers: Vec<_> = cores
            .iter()
            .map(|c| {
                let (c, shared, stop) = (c.clone(), shared.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = 0;
                    // The same access pattern as a worker: a cache refreshed once per round.
                    let mut cache = arc_swap::Cache::new(shared);
                    while !stop.load(Relaxed) {
                        let t = cache.load();
                        assert!(t.generation >= seen, "generations never go back");
                        assert_eq!(t.ports.len(), 6);
                        seen = t.generation;
                        c.epoch.fetch_add(1, Ordering::Release);
                    }
                    seen
                })
            })
            .collect();
        let first = p.current();
        let weak = Arc::downgrade(&first);
        drop(first);
        for g in 2..=50 {
            let mut t = tables();
            t.generation = g;
            p.publish(t, || true);
        }
        assert!(
            weak.upgrade().is_none(),
            "generation 1 was freed by the publisher"
        );
        assert_eq!(p.current().generation, 50);
        // Two more epochs: each core has run a whole round that began after the last swap.
        let marks: Vec<u64> = cores
            .iter()
            .map(|c| c.epoch.load(Ordering::Acquire))
            .collect();
        while cores
            .iter()
            .zip(&marks)
            .any(|(c, m)| c.epoch.load(Ordering::Acquire) < m + 2)
        {
            std::thread::yield_now();
        }
        stop.store(true, Relaxed);
        for w in workers {
            assert_eq!(w.join().unwrap(), 50);
        }
    }
}
