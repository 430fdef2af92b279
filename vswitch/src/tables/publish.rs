//! Publishing tables to the cores: one atomic pointer swap, frees on the control thread.
//!
//! Design note. Workers `load()` the current [`Tables`] at the top of every poll round and drop
//! the guard at its end, so the end of a round is a quiescent state (QSBR): after it the worker
//! holds no reference to any older generation. [`Publisher::publish`] swaps in the new value with
//! one `ArcSwap::swap` (readers never block or retry), then keeps the old `Arc` until every
//! worker's epoch counter has moved past the value it had at swap time, and only then drops it.
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
                .any(|(c, m)| c.epoch.load(Ordering::Acquire) == *m)
        {
            std::thread::sleep(Duration::from_micros(20));
        }
        let waited = t0.elapsed();
        drop(old);
        waited
    }
}
