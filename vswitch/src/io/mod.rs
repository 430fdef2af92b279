//! Ports: DPDK ethdevs (any PMD: af_packet, tap, pcap, ring, null, vhost, virtio-user, a PCI
//! NIC) opened from the host config's devargs, and the transmit side the pipeline writes to.
//!
//! Opening is all-or-nothing: every port is probed and checked, every problem is reported with
//! its config path, and if any fails the ones already opened are closed again, so nothing
//! half-starts.
use crate::pipeline::output::Tx;
use crate::pipeline::BURST;
use vswitch_config::{HostConfig, Problem};
use vswitch_ffi::{ethdev, Mbuf, Mempool};

/// An opened DPDK port.
#[derive(Debug, Clone)]
pub struct OpenPort {
    /// Our port index (position in the host config).
    pub index: u16,
    pub name: String,
    /// The ethdev port id.
    pub port_id: u16,
    pub driver: String,
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub mac: [u8; 6],
}

/// All ports of the host, open and started.
#[derive(Debug)]
pub struct Ports {
    pub ports: Vec<OpenPort>,
}

impl Ports {
    /// Probes, configures and starts every port; `tx_queues` is one per worker core.
    pub fn open(host: &HostConfig, pool: &Mempool, tx_queues: u16) -> Result<Ports, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut probed: Vec<(usize, u16)> = Vec::new();
        for (i, pc) in host.ports.iter().enumerate() {
            match ethdev::probe(&pc.devargs) {
                Ok(id) => probed.push((i, id)),
                Err(e) => problems.push(Problem {
                    path: format!("ports[{i}].devargs"),
                    message: format!("port {}: DPDK rejected {:?}: {e}", pc.name, pc.devargs),
                }),
            }
        }
        let mut opened = Vec::new();
        if problems.is_empty() {
            for &(i, id) in &probed {
                let pc = &host.ports[i];
                let info = match ethdev::info(id) {
                    Ok(info) => info,
                    Err(e) => {
                        problems.push(Problem {
                            path: format!("ports[{i}]"),
                            message: e.to_string(),
                        });
                        continue;
                    }
                };
                if info.max_rx_queues < pc.rx_queues {
                    problems.push(Problem {
                        path: format!("ports[{i}].rx_queues"),
                        message: format!(
                            "port {} ({}) supports at most {} rx queues, {} configured",
                            pc.name, info.driver, info.max_rx_queues, pc.rx_queues
                        ),
                    });
                }
                if info.max_tx_queues < tx_queues {
                    problems.push(Problem {
                        path: format!("ports[{i}].devargs"),
                        message: format!(
                            "port {} ({}) supports at most {} tx queues but {} worker cores each need one \
                             (for net_af_packet add qpairs={} to the devargs, or use fewer cores)",
                            pc.name, info.driver, info.max_tx_queues, tx_queues, tx_queues
                        ),
                    });
                }
                if !problems.is_empty() {
                    continue;
                }
                let setup = ethdev::PortSetup {
                    rx_queues: pc.rx_queues,
                    tx_queues,
                    rx_desc: host.rx_desc,
                    tx_desc: host.tx_desc,
                };
                match ethdev::setup_and_start(id, &setup, pool) {
                    Ok(()) => opened.push(OpenPort {
                        index: i as u16,
                        name: pc.name.clone(),
                        port_id: id,
                        driver: info.driver,
                        rx_queues: pc.rx_queues,
                        tx_queues,
                        mac: ethdev::mac_addr(id),
                    }),
                    Err(e) => problems.push(Problem {
                        path: format!("ports[{i}]"),
                        message: format!("port {}: {e}", pc.name),
                    }),
                }
            }
        }
        if !problems.is_empty() {
            for &(_, id) in &probed {
                ethdev::stop(id);
                ethdev::close(id);
            }
            return Err(problems);
        }
        Ok(Ports { ports: opened })
    }

    /// Stops and closes every port (their rx rings give their mbufs back).
    pub fn close(self) {
        for p in &self.ports {
            ethdev::stop(p.port_id);
        }
        for p in &self.ports {
            ethdev::close(p.port_id);
        }
    }
}

/// A worker's transmit side: its own tx queue on every port.
pub struct DpdkTx {
    /// Our port index -> ethdev port id.
    pub port_ids: Vec<u16>,
    pub queue: u16,
    /// Every worker's hand-off ring, by worker index.
    pub inboxes: std::sync::Arc<Inboxes>,
    /// Packet capture, and the capture in force this round (the worker sets it).
    pub tap: std::sync::Arc<crate::runtime::capture::Tap>,
    pub armed: crate::runtime::capture::Armed,
}

/// Each worker's ring of packets handed over by other workers (lock-free, bounded).
pub type Inboxes = Vec<crossbeam_queue::ArrayQueue<crate::pipeline::Handoff<Mbuf>>>;

/// Slots in each worker's hand-off ring.
pub const INBOX_SLOTS: usize = 4096;

impl Tx<Mbuf> for DpdkTx {
    #[inline]
    fn tx(&mut self, port: u16, pkts: &mut [Option<Mbuf>; BURST], n: usize) -> usize {
        let Some(&id) = self.port_ids.get(port as usize) else {
            return 0;
        };
        // As sent, after every stage (before the driver takes the mbufs).
        self.tap.burst(
            self.armed,
            port,
            crate::runtime::capture::Dir::Tx,
            pkts.get(..n).unwrap_or_default(),
            vswitch_ffi::eal::tsc,
        );
        ethdev::tx_burst(id, self.queue, pkts, n)
    }

    #[inline]
    fn handoff(
        &mut self,
        core: u16,
        h: crate::pipeline::Handoff<Mbuf>,
    ) -> Result<(), crate::pipeline::Handoff<Mbuf>> {
        match self.inboxes.get(core as usize) {
            Some(q) => q.push(h),
            None => Err(h),
        }
    }
}
