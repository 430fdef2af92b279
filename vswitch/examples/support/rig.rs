//! What the benchmarks without DPDK share: one core's stages and tables compiled from a host
//! config and a desired state, fed a batch at a time, and a transmit sink that recycles the
//! buffers (nothing is allocated once the pools are warm).
// Each example that includes this module uses a part of it.
#![allow(dead_code)]
use vswitch::counters::BatchCounters;
use vswitch::packet::{PacketBuf, TestBuf};
use vswitch::pipeline::conntrack::{Conntrack, Timeouts};
use vswitch::pipeline::firewall::FwCore;
use vswitch::pipeline::output::{self, Tx, TxBuffers};
use vswitch::pipeline::{process, Batch, CoreState, NoTrace, SharedState, BURST};

/// Sends nothing: keeps the buffers, one pool per frame length, for the next batches.
#[derive(Default)]
pub struct Recycle(Vec<(usize, Vec<TestBuf>)>);

impl Recycle {
    fn pool(&mut self, len: usize) -> &mut Vec<TestBuf> {
        let i = match self.0.iter().position(|(l, _)| *l == len) {
            Some(i) => i,
            None => {
                self.0.push((len, Vec::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    /// A buffer holding a copy of `frame` (as a PMD copies a frame into an mbuf).
    pub fn take(&mut self, frame: &[u8]) -> TestBuf {
        match self.pool(frame.len()).pop() {
            Some(mut b) => {
                b.data_mut().copy_from_slice(frame);
                b
            }
            None => TestBuf::new(frame),
        }
    }

    /// A used buffer of `len` bytes as it came back (for callers that rewrite a few fields
    /// of frames made from one template), else a copy of `template`.
    pub fn reuse(&mut self, template: &[u8]) -> TestBuf {
        self.pool(template.len())
            .pop()
            .unwrap_or_else(|| TestBuf::new(template))
    }
}

impl Tx<TestBuf> for Recycle {
    fn tx(&mut self, _port: u16, pkts: &mut [Option<TestBuf>; BURST], n: usize) -> usize {
        for b in pkts[..n].iter_mut().filter_map(Option::take) {
            self.pool(b.pkt_len()).push(b);
        }
        n
    }
}

/// One core's stages and tables.
pub struct Rig {
    pub t: vswitch::tables::Tables,
    pub s: CoreState,
    pub txb: TxBuffers<TestBuf>,
    pub sink: Recycle,
    pub c: BatchCounters,
    pub b: Batch<TestBuf>,
    pub held: vswitch::pipeline::router::Pending<TestBuf>,
}

impl Rig {
    /// Tables compiled from `host` (TOML) and `state`, which must be valid for it.
    pub fn new(host: &str, state: &vswitch_config::DesiredState) -> Rig {
        let host = vswitch_config::parse_host_str(host).expect("bench host");
        let problems = vswitch_config::validate_for_host(&host, state);
        assert!(problems.is_empty(), "{problems:?}");
        let t = vswitch::tables::compile::compile(&host, state, 1, &[]);
        let shared = SharedState {
            neigh: std::sync::Arc::new(vswitch::tables::neighbor::NeighborTable::new(64)),
            l3neigh: std::sync::Arc::new(vswitch::tables::l3neigh::L3Neighbors::new(64)),
        };
        let s = CoreState::new(
            1024,
            300_000,
            &shared,
            Default::default(),
            Default::default(),
        );
        let n_ports = t.ports.len();
        let mut rig = Rig {
            t,
            s,
            txb: TxBuffers::new(n_ports),
            sink: Recycle::default(),
            c: BatchCounters::default(),
            b: Batch::default(),
            held: Default::default(),
        };
        rig.with_conntrack(4096);
        rig
    }

    /// Gives the core a connection table of `capacity` (evicting unestablished connections
    /// when full, as the daemon's default), per-port firewall counters, and a clock.
    pub fn with_conntrack(&mut self, capacity: usize) {
        self.s.fw = FwCore::new(Conntrack::new(capacity, Timeouts::default(), true), 0, 1);
        self.s.fw.per_port = vec![[0; 2]; self.t.ports.len()];
        self.s.fw.now = 1;
    }

    /// Runs the `len` frames the caller put in `b.pkts` through every stage as received on
    /// `port`, and hands what they send to the sink (buffered; see [`flush`](Self::flush)).
    pub fn send(&mut self, port: u16, len: usize) {
        self.b.start(port, len);
        process(
            &mut self.b,
            &self.t,
            &mut self.s,
            &mut self.held,
            &mut self.c,
            &mut NoTrace,
        );
        output::run(
            &mut self.b,
            &self.t,
            &mut self.s,
            &mut self.txb,
            &mut self.sink,
            &mut self.c,
            &mut NoTrace,
        );
    }

    /// Sends what the transmit buffers still hold.
    pub fn flush(&mut self) {
        self.txb.flush(&mut self.sink, &mut self.c);
    }

    /// Packets dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        self.c.drops.iter().sum()
    }
}
