//! Ethernet devices: probe from devargs, queue setup, start/stop/close, bursts, stats.
use crate::error::DpdkError;
use crate::mbuf::Mbuf;
use crate::mempool::Mempool;
use crate::sys;
use std::ffi::{CStr, CString};

/// The most packets one rx or tx call moves.
pub const BURST: usize = 32;

/// Probes a device from DPDK devargs (`net_af_packet0,iface=veth0`, `net_pcap0,rx_pcap=f.pcap`,
/// a PCI address, ...) and returns its ethdev port id.
pub fn probe(devargs: &str) -> Result<u16, DpdkError> {
    let c = CString::new(devargs).map_err(|_| DpdkError::new("devargs contain NUL", 22))?;
    // SAFETY: c is a valid C string for the call.
    let rc = unsafe { sys::rte_dev_probe(c.as_ptr()) };
    if rc < 0 {
        return Err(DpdkError::new(format!("rte_dev_probe({devargs})"), rc));
    }
    let name = devargs.split(',').next().unwrap_or(devargs);
    port_by_name(name).ok_or_else(|| {
        DpdkError::new(
            format!("device {name} probed but no ethdev port by that name"),
            19,
        )
    })
}

/// The port id of the ethdev named `name`.
pub fn port_by_name(name: &str) -> Option<u16> {
    let c = CString::new(name).ok()?;
    let mut id: u16 = 0;
    // SAFETY: c is a valid C string; id is a valid out pointer.
    let rc = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    (rc == 0).then_some(id)
}

/// What a device can do, as far as we need it.
#[derive(Debug, Clone)]
pub struct DevInfo {
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub socket: i32,
}

/// Reads the device's capabilities.
pub fn info(port: u16) -> Result<DevInfo, DpdkError> {
    let mut di = sys::rte_eth_dev_info::default();
    // SAFETY: di is a valid, writable rte_eth_dev_info.
    let rc = unsafe { sys::rte_eth_dev_info_get(port, &mut di) };
    if rc != 0 {
        return Err(DpdkError::new(
            format!("rte_eth_dev_info_get(port {port})"),
            rc,
        ));
    }
    let driver = if di.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: driver_name is a NUL-terminated static string owned by the driver.
        unsafe { CStr::from_ptr(di.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: a plain lookup for a valid port id.
    let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
    Ok(DevInfo {
        driver,
        max_rx_queues: di.max_rx_queues,
        max_tx_queues: di.max_tx_queues,
        socket,
    })
}

/// Queue layout and ring sizes for [`setup_and_start`].
#[derive(Debug, Clone, Copy)]
pub struct PortSetup {
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_desc: u16,
    pub tx_desc: u16,
}

/// Configures queues, enables promiscuous mode (a switch port must see every MAC) and starts
/// the port.
pub fn setup_and_start(port: u16, s: &PortSetup, pool: &Mempool) -> Result<(), DpdkError> {
    let conf = sys::rte_eth_conf::default();
    // SAFETY: conf is a valid zeroed configuration (defaults for every field).
    let rc = unsafe { sys::rte_eth_dev_configure(port, s.rx_queues, s.tx_queues, &conf) };
    if rc < 0 {
        return Err(DpdkError::new(
            format!("rte_eth_dev_configure(port {port})"),
            rc,
        ));
    }
    // SAFETY: plain lookup for a valid port.
    let socket = unsafe { sys::rte_eth_dev_socket_id(port) }.max(0) as u32;
    for q in 0..s.rx_queues {
        // SAFETY: NULL conf means driver defaults; pool outlives the port (closed before drop).
        let rc = unsafe {
            sys::rte_eth_rx_queue_setup(port, q, s.rx_desc, socket, std::ptr::null(), pool.as_ptr())
        };
        if rc < 0 {
            return Err(DpdkError::new(
                format!("rte_eth_rx_queue_setup(port {port}, queue {q})"),
                rc,
            ));
        }
    }
    for q in 0..s.tx_queues {
        // SAFETY: NULL conf means driver defaults.
        let rc =
            unsafe { sys::rte_eth_tx_queue_setup(port, q, s.tx_desc, socket, std::ptr::null()) };
        if rc < 0 {
            return Err(DpdkError::new(
                format!("rte_eth_tx_queue_setup(port {port}, queue {q})"),
                rc,
            ));
        }
    }
    // SAFETY: valid configured port. Some PMDs (pcap, null) lack promiscuous control: fine.
    let _ = unsafe { sys::rte_eth_promiscuous_enable(port) };
    // SAFETY: valid configured port with all queues set up.
    let rc = unsafe { sys::rte_eth_dev_start(port) };
    if rc < 0 {
        return Err(DpdkError::new(
            format!("rte_eth_dev_start(port {port})"),
            rc,
        ));
    }
    Ok(())
}

/// Stops the port (rx/tx cease; queued mbufs stay in the rings until close).
pub fn stop(port: u16) {
    // SAFETY: stopping a valid port id is always allowed; errors are harmless at shutdown.
    let _ = unsafe { sys::rte_eth_dev_stop(port) };
}

/// Closes the port and releases its queues (and the mbufs they held).
pub fn close(port: u16) {
    // SAFETY: closing a stopped port; errors are harmless at shutdown.
    let _ = unsafe { sys::rte_eth_dev_close(port) };
}

/// The port's MAC address.
pub fn mac_addr(port: u16) -> [u8; 6] {
    let mut a = sys::rte_ether_addr::default();
    // SAFETY: a is a valid out parameter.
    let _ = unsafe { sys::rte_eth_macaddr_get(port, &mut a) };
    a.addr_bytes
}

/// Hardware/driver counters of a port.
#[derive(Debug, Clone, Copy, Default)]
pub struct EthStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// Dropped by the NIC/driver because no mbuf or descriptor was free.
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

/// Reads the driver's counters.
pub fn stats(port: u16) -> EthStats {
    let mut s = sys::rte_eth_stats::default();
    // SAFETY: s is a valid out parameter.
    let _ = unsafe { sys::rte_eth_stats_get(port, &mut s) };
    EthStats {
        ipackets: s.ipackets,
        opackets: s.opackets,
        ibytes: s.ibytes,
        obytes: s.obytes,
        imissed: s.imissed,
        ierrors: s.ierrors,
        oerrors: s.oerrors,
        rx_nombuf: s.rx_nombuf,
    }
}

/// Receives up to `out.len()` (at most [`BURST`]) packets into the empty slots of `out`;
/// returns how many arrived (they are in `out[..n]`). Slots must be `None` on entry.
#[inline]
pub fn rx_burst(port: u16, queue: u16, out: &mut [Option<Mbuf>; BURST]) -> usize {
    debug_assert!(out.iter().all(Option::is_none));
    // Option<Mbuf> is a nullable pointer (Mbuf is repr(transparent) over NonNull), so the array
    // has the layout of `struct rte_mbuf *[BURST]`.
    let p = out.as_mut_ptr() as *mut *mut sys::rte_mbuf;
    // SAFETY: p points to BURST writable pointer slots; the PMD writes at most BURST of them and
    // hands us ownership of each mbuf it writes.
    unsafe { sys::vs_eth_rx_burst(port, queue, p, BURST as u16) as usize }
}

/// Sends `pkts[..n]` (n <= [`BURST`], all `Some`). The sent ones leave their slots (`None`);
/// the unsent ones stay in `pkts[sent..n]` for the caller to retry or drop. Returns `sent`.
#[inline]
pub fn tx_burst(port: u16, queue: u16, pkts: &mut [Option<Mbuf>], n: usize) -> usize {
    let n = n.min(pkts.len()).min(BURST);
    debug_assert!(pkts[..n].iter().all(Option::is_some));
    let p = pkts.as_mut_ptr() as *mut *mut sys::rte_mbuf;
    // SAFETY: p[..n] are valid mbufs we own; the PMD takes ownership of the first `sent`.
    let sent = unsafe { sys::vs_eth_tx_burst(port, queue, p, n as u16) } as usize;
    for slot in &mut pkts[..sent] {
        // The driver owns these now: forget our handle without freeing.
        if let Some(m) = slot.take() {
            let _ = m.into_raw();
        }
    }
    sent
}
