//! Workers: queue-to-core assignment, the run-to-completion poll loop and idle back-off.
//!
//! Each worker lcore owns a set of (port, rx queue) pairs and one tx queue on every port. A
//! poll round: load the current tables (one atomic load), then for each owned rx queue receive
//! a burst of up to 32, run the stages over it, and buffer the output; at the end flush every
//! tx buffer, fold the round's counters into the core's counters, and bump the core's epoch.
//! The tables are held through an `arc_swap::Cache`, which swaps its `Arc` at the first load
//! after a publish, so two epochs after a publish the core holds only the new generation
//! (see `tables::publish`). After `spin_polls` empty rounds the worker
//! sleeps, doubling from 1 µs up to `max_sleep_us`, so several appliances can share a small
//! machine; `busy` mode never sleeps.
//!
//! Besides packets, a round looks at two things the control side may have set, each with one
//! relaxed load: the capture in force ([`capture`], read at the top of the round and compared
//! with the port of every rx and tx burst), and this worker's mailbox ([`requests`]: list or
//! flush the connection table), answered after the round's transmit flush, between bursts.
pub mod capture;
pub mod requests;

use crate::counters::{bump, BatchCounters, CoreCounters};
use crate::io::DpdkTx;
use crate::pipeline::output::{self, TxBuffers, TxStats};
use crate::pipeline::router::{release_pending, Pending};
use crate::pipeline::{self, Batch, CoreState, NoTrace, SharedState};
use crate::tables::publish::SharedTables;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vswitch_config::{IdleConfig, IdleMode};
use vswitch_ffi::{eal, ethdev, Mbuf};

/// Busy rounds between two reads of the clock and two folds of the counters (a power of two).
const FOLD_EVERY: u64 = 16;

/// One rx queue a worker polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxQueue {
    /// Our port index.
    pub port: u16,
    /// The ethdev port id.
    pub port_id: u16,
    pub queue: u16,
}

/// Spreads every port's rx queues over `workers` cores, round robin across ports first so a
/// core's queues come from different ports.
pub fn assign_queues(ports: &[(u16, u16, u16)], workers: usize) -> Vec<Vec<RxQueue>> {
    let mut out = vec![Vec::new(); workers.max(1)];
    let mut k = 0;
    let max_q = ports.iter().map(|p| p.2).max().unwrap_or(0);
    for q in 0..max_q {
        for &(port, port_id, nq) in ports {
            if q < nq {
                let w = k % out.len();
                out[w].push(RxQueue {
                    port,
                    port_id,
                    queue: q,
                });
                k += 1;
            }
        }
    }
    out
}

/// Everything a worker needs; moved onto its lcore.
pub struct Worker {
    pub lcore: u32,
    /// Index of this worker (its tx queue on every port).
    pub index: u16,
    pub rx: Vec<RxQueue>,
    pub port_ids: Vec<u16>,
    pub tables: SharedTables,
    pub counters: Arc<CoreCounters>,
    pub stop: Arc<AtomicBool>,
    pub idle: IdleConfig,
    pub learn_capacity: usize,
    pub aging_ms: u64,
    /// The neighbour tables shared by every worker.
    pub shared: SharedState,
    /// This worker's share of the connection table, its timeouts and eviction policy.
    pub ct_capacity: usize,
    pub ct_timeouts: crate::pipeline::conntrack::Timeouts,
    pub ct_evict: bool,
    /// Whether the worker answers established flows from its flow cache.
    pub flow_cache: bool,
    /// How many workers share connections (by a symmetric hash of the 5-tuple).
    pub workers: u16,
    /// Every worker's hand-off ring; this worker reads its own (`index`).
    pub inboxes: Arc<crate::io::Inboxes>,
    /// The mbuf pool, for the frames the switch sends of its own accord (worker 0 announces
    /// floating IPs).
    pub pool: Arc<vswitch_ffi::Mempool>,
    /// Requests from the control side (conntrack list and flush), answered between bursts.
    pub mailbox: Arc<requests::Mailbox>,
    /// Packet capture, shared by every worker.
    pub tap: Arc<capture::Tap>,
}

/// Slots of the connection table examined per sweep call: a few on busy rounds (every
/// [`FOLD_EVERY`]th), more when idle.
const SWEEP_BUSY: usize = 64;
const SWEEP_IDLE: usize = 2048;

impl Worker {
    /// The poll loop. Returns when `stop` is set, after flushing its tx buffers.
    pub fn run(self) -> i32 {
        let n_ports = self.port_ids.len();
        let mut state = CoreState::new(
            self.learn_capacity,
            self.aging_ms,
            &self.shared,
            self.counters.tunnel.clone(),
            self.counters.router.clone(),
        );
        state.fw = crate::pipeline::firewall::FwCore::new(
            crate::pipeline::conntrack::Conntrack::new(
                self.ct_capacity,
                self.ct_timeouts,
                self.ct_evict,
            ),
            self.index,
            self.workers,
        );
        let (huge_entries, huge_index) = state.fw.ct.huge_bytes();
        tracing::info!(
            worker = self.index,
            capacity = state.fw.ct.capacity(),
            mib = state.fw.ct.memory_bytes() >> 20,
            huge_pages_entries_mib = huge_entries.map(|b| b >> 20),
            huge_pages_index_mib = huge_index.map(|b| b >> 20),
            "conntrack table allocated"
        );
        state.fw.per_port = vec![[0; 2]; n_ports];
        state.flows.enabled = self.flow_cache;
        let mut fw_folded = vec![[0u64; 2]; n_ports];
        let mut batch: Batch<Mbuf> = Batch::default();
        let mut txb: TxBuffers<Mbuf> = TxBuffers::new(n_ports);
        // Packets waiting for a router next hop to resolve (bounded, allocated now).
        let mut held: Pending<Mbuf> = Pending::default();
        let mut tx = DpdkTx {
            port_ids: self.port_ids.clone(),
            queue: self.index,
            inboxes: self.inboxes.clone(),
            tap: self.tap.clone(),
            armed: capture::Armed::OFF,
        };
        let mut rx_stats = vec![TxStats::default(); n_ports];
        let mut bc = BatchCounters::default();
        let hz_per_ms = (eal::tsc_hz() / 1000).max(1);
        let mut idle_rounds: u32 = 0;
        let mut sleep_us: u64 = 1;

        // A cache of the current tables: one atomic load per round to see whether the pointer
        // changed (no thread-local lookup, no reference count traffic while it has not).
        let mut tables_cache = arc_swap::Cache::new(self.tables.clone());
        // The tables whose floating IPs have been announced (worker 0 announces; none yet).
        let mut announced: Option<Arc<crate::tables::Tables>> = None;
        let mut round: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let tables = tables_cache.load();
            // The capture in force for this round: one relaxed load; each rx and tx burst
            // then compares a port index (see `capture::Tap::burst`).
            let armed = self.tap.armed();
            tx.armed = armed;
            if self.index == 0 && !announced.as_ref().is_some_and(|a| Arc::ptr_eq(a, tables)) {
                let done = crate::pipeline::router::announce_floating_ips(
                    announced.as_deref(),
                    tables,
                    || self.pool.alloc(),
                    &mut txb,
                    &mut tx,
                    &mut bc,
                );
                if done.is_some() {
                    announced = Some(tables.clone());
                }
            }
            // The clock only ages learned MACs (300 s): reading it every 16th round is plenty,
            // and RDTSC is not free in a VM.
            if round & (FOLD_EVERY - 1) == 0 {
                state.now_ms = eal::tsc() / hz_per_ms;
                state.fw.now = state.now_ms as u32;
                if tables.firewall || tables.l3.snat {
                    crate::pipeline::firewall::sweep(tables, &mut state.fw, SWEEP_BUSY);
                }
            }
            round = round.wrapping_add(1);
            let mut got = 0usize;
            for q in &self.rx {
                // Received straight into the batch: the slots are all empty between batches.
                let n = ethdev::rx_burst(q.port_id, q.queue, &mut batch.pkts);
                if n == 0 {
                    continue;
                }
                got += n;
                // As received, before any stage edits the frames.
                let got_pkts = batch.pkts.get(..n).unwrap_or_default();
                self.tap
                    .burst(armed, q.port, capture::Dir::Rx, got_pkts, eal::tsc);
                batch.start(q.port, n);
                pipeline::process(
                    &mut batch,
                    tables,
                    &mut state,
                    &mut held,
                    &mut bc,
                    &mut NoTrace,
                );
                let rs = &mut rx_stats[q.port as usize];
                rs.packets += n as u64;
                rs.bytes += batch.rx_bytes;
                output::run(
                    &mut batch,
                    tables,
                    &mut state,
                    &mut txb,
                    &mut tx,
                    &mut bc,
                    &mut NoTrace,
                );
            }
            // Packets other workers handed over because this one owns their connections.
            got += self.drain_inbox(
                &mut batch, tables, &mut state, &mut held, &mut txb, &mut tx, &mut bc,
            );
            if !held.is_empty() {
                release_pending(&mut held, tables, &mut state, &mut txb, &mut tx, &mut bc);
            }
            txb.flush(&mut tx, &mut bc);
            // Control requests, between bursts: one relaxed load when there are none.
            if self.mailbox.pending() {
                let now = (eal::tsc() / hz_per_ms) as u32;
                if self.mailbox.serve(self.index, &mut state.fw.ct, now) > 0 {
                    // A flush shows in the gauges at once.
                    self.fold_fw(&state, &mut fw_folded);
                }
            }

            if got > 0 {
                // Counters reach the shared copy every 16 busy rounds (and on every idle one),
                // so a reader is at most a few microseconds behind.
                if round & (FOLD_EVERY - 1) == 0 {
                    self.fold(&mut bc, &mut txb, &mut rx_stats);
                    self.fold_fw(&state, &mut fw_folded);
                }
                bump(&self.counters.busy_polls, 1);
                idle_rounds = 0;
                sleep_us = 1;
            } else {
                if tables.firewall || tables.l3.snat {
                    state.now_ms = eal::tsc() / hz_per_ms;
                    state.fw.now = state.now_ms as u32;
                    crate::pipeline::firewall::sweep(tables, &mut state.fw, SWEEP_IDLE);
                }
                self.fold(&mut bc, &mut txb, &mut rx_stats);
                self.fold_fw(&state, &mut fw_folded);
                bump(&self.counters.idle_polls, 1);
                idle_rounds = idle_rounds.saturating_add(1);
                if self.idle.mode == IdleMode::Backoff && idle_rounds > self.idle.spin_polls {
                    std::thread::sleep(std::time::Duration::from_micros(sleep_us));
                    sleep_us = (sleep_us * 2).min(self.idle.max_sleep_us as u64);
                }
            }
            self.quiesce();
        }
        txb.flush(&mut tx, &mut bc);
        // Packets still waiting for a next hop are lost with the shutdown: counted, freed.
        for _ in 0..held.clear() {
            bc.drop(crate::counters::DropReason::RouterUnresolved);
        }
        // Packets handed to this worker and not yet taken are freed with the shutdown.
        if let Some(q) = self.inboxes.get(self.index as usize) {
            while let Some(h) = q.pop() {
                drop(h.p);
                bc.drop(crate::counters::DropReason::HandoffFull);
            }
        }
        self.fold(&mut bc, &mut txb, &mut rx_stats);
        self.fold_fw(&state, &mut fw_folded);
        self.quiesce();
        0
    }

    /// Runs the packets waiting in this worker's hand-off ring through the rest of their
    /// stages, in batches of one ingress port and one resume stage. Returns how many.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn drain_inbox(
        &self,
        batch: &mut Batch<Mbuf>,
        tables: &crate::tables::Tables,
        state: &mut CoreState,
        held: &mut Pending<Mbuf>,
        txb: &mut TxBuffers<Mbuf>,
        tx: &mut DpdkTx,
        bc: &mut BatchCounters,
    ) -> usize {
        let Some(q) = self.inboxes.get(self.index as usize) else {
            return 0;
        };
        if q.is_empty() {
            return 0;
        }
        let mut total = 0;
        let mut stage = 0u8;
        batch.len = 0;
        // At most one ring's worth per round, so other work is never starved.
        for _ in 0..crate::io::INBOX_SLOTS {
            let Some(h) = q.pop() else { break };
            if h.generation != tables.generation {
                drop(h.p);
                bc.drop(crate::counters::DropReason::HandoffStale);
                continue;
            }
            if batch.len > 0
                && (batch.in_port != h.in_port || stage != h.stage || batch.len == pipeline::BURST)
            {
                self.run_resumed(batch, stage, tables, state, held, txb, tx, bc);
            }
            if batch.len == 0 {
                batch.in_port = h.in_port;
                batch.rx_bytes = 0;
                stage = h.stage;
            }
            let i = batch.len;
            batch.pkts[i] = Some(h.p);
            let mut m = h.meta;
            m.next = pipeline::resumed_next(m.next);
            batch.meta[i] = m;
            batch.len += 1;
            total += 1;
        }
        if batch.len > 0 {
            self.run_resumed(batch, stage, tables, state, held, txb, tx, bc);
        }
        total
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn run_resumed(
        &self,
        batch: &mut Batch<Mbuf>,
        stage: u8,
        tables: &crate::tables::Tables,
        state: &mut CoreState,
        held: &mut Pending<Mbuf>,
        txb: &mut TxBuffers<Mbuf>,
        tx: &mut DpdkTx,
        bc: &mut BatchCounters,
    ) {
        pipeline::resume(batch, stage, tables, state, held, bc, &mut NoTrace);
        output::run(batch, tables, state, txb, tx, bc, &mut NoTrace);
        batch.len = 0;
    }

    /// Publishes the connection table's figures and the per-port firewall counts.
    fn fold_fw(&self, state: &CoreState, folded: &mut [[u64; 2]]) {
        self.counters.conntrack.store(&state.fw.ct);
        let fc = &state.flows.stats;
        for (a, v) in
            self.counters
                .flow_cache
                .iter()
                .zip([fc.hits, fc.misses, fc.inserted, fc.crowded])
        {
            a.store(v, Ordering::Relaxed);
        }
        for (i, (now, was)) in state.fw.per_port.iter().zip(folded.iter_mut()).enumerate() {
            if now != was {
                let pc = &self.counters.ports[i];
                bump(&pc.fw_allowed, now[0] - was[0]);
                bump(&pc.fw_dropped, now[1] - was[1]);
                *was = *now;
            }
        }
    }

    /// Ends a round: this core holds nothing it loaded before. Single writer, so a plain
    /// release store (no locked instruction).
    #[inline(always)]
    fn quiesce(&self) {
        let e = &self.counters.epoch;
        e.store(e.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
    }

    fn fold(&self, bc: &mut BatchCounters, txb: &mut TxBuffers<Mbuf>, rx: &mut [TxStats]) {
        self.counters.add_batch(bc);
        *bc = BatchCounters::default();
        for (i, (t, r)) in txb.take_sent().zip(rx.iter_mut()).enumerate() {
            let pc = &self.counters.ports[i];
            if t.packets != 0 {
                bump(&pc.tx_packets, t.packets);
                bump(&pc.tx_bytes, t.bytes);
            }
            if r.packets != 0 {
                bump(&pc.rx_packets, r.packets);
                bump(&pc.rx_bytes, r.bytes);
            }
            *r = TxStats::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_spread_round_robin() {
        let a = assign_queues(&[(0, 10, 2), (1, 11, 1), (2, 12, 2)], 2);
        assert_eq!(a[0].len() + a[1].len(), 5);
        assert_eq!(
            a[0][0],
            RxQueue {
                port: 0,
                port_id: 10,
                queue: 0
            }
        );
        assert_eq!(
            a[1][0],
            RxQueue {
                port: 1,
                port_id: 11,
                queue: 0
            }
        );
        let one = assign_queues(&[(0, 0, 1), (1, 1, 1)], 1);
        assert_eq!(one[0].len(), 2);
        let more_workers = assign_queues(&[(0, 0, 1)], 3);
        assert_eq!(
            more_workers.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 0, 0]
        );
    }
}
