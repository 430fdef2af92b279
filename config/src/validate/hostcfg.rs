//! The host config: cores, EAL arguments, mempool and ring sizes, ports and
//! bridge mappings.

use std::collections::HashMap;

use super::{bad_unicast_mac, first_use, Problems};
use crate::error::Problem;
use crate::host::{HostConfig, PortKind};

/// DPDK's `RTE_MAX_LCORE` default.
const MAX_LCORE: u32 = 1024;
/// DPDK's `RTE_MEMPOOL_CACHE_MAX_SIZE`.
const MAX_MBUF_CACHE: u32 = 512;

/// EAL options we generate ourselves, with the field they come from.
const GENERATED_EAL: [(&str, &str); 7] = [
    ("-l", "main_core and cores"),
    ("--lcores", "main_core and cores"),
    ("-c", "main_core and cores"),
    ("--main-lcore", "main_core"),
    ("--master-lcore", "main_core"),
    ("--vdev", "ports[].devargs"),
    ("--coremask", "main_core and cores"),
];

impl HostConfig {
    /// Checks every rule of the host config and returns every problem
    /// found; empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Problems(Vec::new());
        self.check_identity(&mut out);
        self.check_cores(&mut out);
        self.check_eal_args(&mut out);
        self.check_sizes(&mut out);
        self.check_ports(&mut out);
        self.check_bridge_mappings(&mut out);
        self.check_overlay(&mut out);
        self.check_conntrack(&mut out);
        self.check_control(&mut out);
        out.0
    }

    fn check_control(&self, out: &mut Problems) {
        let c = &self.control;
        let socket = self.control_socket();
        if c.socket.as_ref().is_some_and(|s| s.as_os_str().is_empty()) {
            out.push("control.socket", "must not be empty");
        } else if socket.as_os_str().len() > 107 {
            out.push(
                "control.socket",
                format!(
                    "{} is longer than a unix socket path may be (107 bytes)",
                    socket.display()
                ),
            );
        }
        if c.listen.is_some() && c.token_file.is_none() {
            out.push(
                "control.token_file",
                "required when control.listen is set: the TCP API only serves clients with a bearer token",
            );
        }
    }

    fn check_conntrack(&self, out: &mut Problems) {
        let ct = &self.conntrack;
        if !(1024..=67_108_864).contains(&ct.capacity) {
            out.push(
                "conntrack.capacity",
                format!("{} is out of range 1024..=67108864", ct.capacity),
            );
        }
        // Each worker's table holds at most 2^23 connections (index slots carry 25-bit links).
        let per_core = (ct.capacity as usize).div_ceil(self.cores.len().max(1));
        if per_core > 8_388_608 {
            out.push(
                "conntrack.capacity",
                format!(
                    "{} connections over {} worker core(s) is {per_core} per core; one core's table holds at most 8388608",
                    ct.capacity,
                    self.cores.len().max(1)
                ),
            );
        }
        let [lo, hi] = ct.snat_ports;
        if lo == 0 || lo > hi {
            out.push(
                "conntrack.snat_ports",
                format!("[{lo}, {hi}] is not a range of ports: 1 <= low <= high"),
            );
        }
        for (i, name) in ct.liberal_ports.iter().enumerate() {
            match self.port(name) {
                Some(p) if p.kind == PortKind::Instance => {}
                Some(_) => out.push(
                    format!("conntrack.liberal_ports[{i}]"),
                    format!(
                        "port \"{name}\" is not an instance port; zones belong to instance ports"
                    ),
                ),
                None => out.push(
                    format!("conntrack.liberal_ports[{i}]"),
                    format!("no port is called \"{name}\""),
                ),
            }
        }
        let t = &ct.timeouts;
        for (field, v) in [
            ("tcp_syn_sent", t.tcp_syn_sent),
            ("tcp_syn_recv", t.tcp_syn_recv),
            ("tcp_established", t.tcp_established),
            ("tcp_fin_wait", t.tcp_fin_wait),
            ("tcp_close_wait", t.tcp_close_wait),
            ("tcp_last_ack", t.tcp_last_ack),
            ("tcp_time_wait", t.tcp_time_wait),
            ("tcp_close", t.tcp_close),
            ("udp", t.udp),
            ("udp_stream", t.udp_stream),
            ("icmp", t.icmp),
            ("generic", t.generic),
        ] {
            // The table keeps deadlines as 32-bit milliseconds compared with wrapping
            // arithmetic, so a timeout must stay under 2^31 ms (24 days).
            if !(1..=1_000_000).contains(&v) {
                out.push(
                    format!("conntrack.timeouts.{field}"),
                    format!("{v} s is out of range 1..=1000000"),
                );
            }
        }
    }

    fn check_overlay(&self, out: &mut Problems) {
        let o = &self.overlay;
        if !(1..=32).contains(&o.prefix_len) {
            out.push(
                "overlay.prefix_len",
                format!("{} is not a prefix length (1..=32)", o.prefix_len),
            );
        }
        if !(576..=9216).contains(&o.mtu) {
            out.push(
                "overlay.mtu",
                format!("{} is out of range 576..=9216", o.mtu),
            );
        }
        if o.ttl == 0 {
            out.push(
                "overlay.ttl",
                "a TTL of 0 would never leave this host; use 1..=255 (64 is usual)",
            );
        }
        if o.udp_port == 0 {
            out.push(
                "overlay.udp_port",
                "port 0 is not a VXLAN port; the IANA port is 4789",
            );
        }
        if let (Some(gw), Some(local)) = (o.gateway, self.local_vtep_ip) {
            if (1..=32).contains(&o.prefix_len) {
                let mask = u32::MAX << (32 - o.prefix_len as u32);
                if u32::from(gw) & mask != u32::from(local) & mask {
                    out.push(
                        "overlay.gateway",
                        format!(
                            "{gw} is not in the underlay subnet of local_vtep_ip {local}/{}",
                            o.prefix_len
                        ),
                    );
                }
            }
        }
        for (ip, mac) in &o.neighbors {
            if let Some(msg) = bad_unicast_mac(*mac) {
                out.push(format!("overlay.neighbors.{ip}"), msg);
            }
        }
        let overlay_ports = self
            .ports
            .iter()
            .filter(|p| p.kind == PortKind::Overlay)
            .count();
        if overlay_ports > 1 {
            out.push(
                "ports",
                format!(
                    "{overlay_ports} ports have kind = \"overlay\"; VXLAN leaves by exactly one"
                ),
            );
        }
    }

    fn check_identity(&self, out: &mut Problems) {
        if self.host_id.trim().is_empty() {
            out.push(
                "host_id",
                "host_id must not be empty; use the name Neutron has for this host in binding:host_id",
            );
        }
        if let Some(ip) = self.local_vtep_ip {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
                out.push(
                    "local_vtep_ip",
                    format!("{ip} cannot be a tunnel endpoint; use this host's underlay unicast address"),
                );
            }
        } else if self.ports.iter().any(|p| p.kind == PortKind::Overlay) {
            out.push(
                "local_vtep_ip",
                "an overlay port needs local_vtep_ip, the source address of this host's VXLAN tunnels",
            );
        }
        if let Some(msg) = self.dvr_mac.and_then(bad_unicast_mac) {
            out.push("dvr_mac", msg);
        }
    }

    fn check_cores(&self, out: &mut Problems) {
        if self.main_core >= MAX_LCORE {
            out.push(
                "main_core",
                format!("lcore {} is out of range 0..=1023", self.main_core),
            );
        }
        if self.cores.is_empty() {
            out.push(
                "cores",
                "at least one worker core is needed, e.g. cores = [1]",
            );
        }
        for (key, &cpu) in &self.lcore_cpus {
            match key.parse::<u32>() {
                Ok(lcore) if lcore == self.main_core || self.cores.contains(&lcore) => {}
                Ok(lcore) => out.push(
                    format!("lcore_cpus.{key}"),
                    format!("lcore {lcore} is neither the main_core nor one of cores"),
                ),
                Err(_) => out.push(
                    format!("lcore_cpus.{key}"),
                    format!("\"{key}\" is not an lcore number"),
                ),
            }
            if cpu >= MAX_LCORE {
                out.push(
                    format!("lcore_cpus.{key}"),
                    format!("CPU {cpu} is out of range 0..=1023"),
                );
            }
        }
        let mut seen = HashMap::new();
        for (i, &core) in self.cores.iter().enumerate() {
            let at = format!("cores[{i}]");
            if core >= MAX_LCORE {
                out.push(&at, format!("lcore {core} is out of range 0..=1023"));
            }
            if core == self.main_core {
                out.push(
                    &at,
                    format!("lcore {core} is the main_core; workers need cores of their own"),
                );
            }
            if let Some(k) = first_use(&mut seen, core, i) {
                out.push(
                    &at,
                    format!("lcore {core} is listed twice, also at cores[{k}]"),
                );
            }
        }
    }

    fn check_eal_args(&self, out: &mut Problems) {
        for (i, arg) in self.eal_args.iter().enumerate() {
            let hit = GENERATED_EAL.iter().find(|(opt, _)| {
                arg == opt
                    || (opt.starts_with("--") && arg.starts_with(&format!("{opt}=")))
                    || (!opt.starts_with("--") && arg.len() > 2 && arg.starts_with(opt))
            });
            if let Some((opt, from)) = hit {
                out.push(
                    format!("eal_args[{i}]"),
                    format!("{opt} must not be given in eal_args: it is generated from {from}; remove it and set {from} instead"),
                );
            }
        }
    }

    fn check_sizes(&self, out: &mut Problems) {
        if !(1024..=1_048_575).contains(&self.mbufs) {
            out.push(
                "mbufs",
                format!("{} is out of range 1024..=1048575", self.mbufs),
            );
        }
        if self.mbuf_cache > MAX_MBUF_CACHE {
            out.push(
                "mbuf_cache",
                format!("{} is above DPDK's limit of 512", self.mbuf_cache),
            );
        }
        for (field, n) in [("rx_desc", self.rx_desc), ("tx_desc", self.tx_desc)] {
            if !(64..=4096).contains(&n) || !n.is_power_of_two() {
                out.push(
                    field,
                    format!("{n} must be a power of two in 64..=4096, e.g. 1024"),
                );
            }
        }
        if !(1..=100_000).contains(&self.idle.max_sleep_us) {
            out.push(
                "idle.max_sleep_us",
                format!("{} is out of range 1..=100000", self.idle.max_sleep_us),
            );
        }
    }

    fn check_ports(&self, out: &mut Problems) {
        if self.ports.is_empty() {
            out.push(
                "ports",
                "at least one [[ports]] entry is needed; a switch without ports forwards nothing",
            );
        }
        let mut names = HashMap::new();
        let mut devargs = HashMap::new();
        let mut iface_ids = HashMap::new();
        for (i, port) in self.ports.iter().enumerate() {
            let at = format!("ports[{i}]");
            let name_ok = (1..=31).contains(&port.name.len())
                && port
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !name_ok {
                out.push(
                    format!("{at}.name"),
                    format!(
                        "port name {:?} must be 1 to 31 characters of A-Z, a-z, 0-9, '_', '.', '-'",
                        port.name
                    ),
                );
            } else if let Some(k) = first_use(&mut names, port.name.as_str(), i) {
                out.push(
                    format!("{at}.name"),
                    format!("port name {} is already used by ports[{k}]", port.name),
                );
            }
            if port.devargs.trim().is_empty() {
                out.push(
                    format!("{at}.devargs"),
                    "devargs must not be empty: give a vdev (net_af_packet0,iface=eth1) or a PCI address (0000:03:00.0)",
                );
            } else if let Some(k) = first_use(&mut devargs, port.devargs.as_str(), i) {
                out.push(
                    format!("{at}.devargs"),
                    format!("devargs {:?} are already used by ports[{k}]", port.devargs),
                );
            }
            match (port.kind, &port.iface_id) {
                (PortKind::Instance, None) => out.push(
                    format!("{at}.iface_id"),
                    "an instance port needs iface_id, the id of the Neutron port it carries",
                ),
                (PortKind::Instance, Some(id)) if id.is_empty() => {
                    out.push(format!("{at}.iface_id"), "iface_id must not be empty")
                }
                (PortKind::Instance, Some(id)) => {
                    if let Some(k) = first_use(&mut iface_ids, id.as_str(), i) {
                        out.push(
                            format!("{at}.iface_id"),
                            format!("iface_id {id} is already carried by ports[{k}]"),
                        );
                    }
                }
                (kind, Some(_)) => out.push(
                    format!("{at}.iface_id"),
                    format!(
                        "only instance ports carry a Neutron port; remove iface_id from this {} port",
                        kind_name(kind)
                    ),
                ),
                (_, None) => {}
            }
            if !(1..=64).contains(&port.rx_queues) {
                out.push(
                    format!("{at}.rx_queues"),
                    format!("{} is out of range 1..=64", port.rx_queues),
                );
            }
            if port.kind == PortKind::Provider
                && !self.bridge_mappings.values().any(|p| p == &port.name)
            {
                out.push(
                    &at,
                    format!(
                        "provider port {} is mapped by no physical network; add it to bridge_mappings, e.g. provider = \"{}\"",
                        port.name, port.name
                    ),
                );
            }
        }
    }

    fn check_bridge_mappings(&self, out: &mut Problems) {
        let mut by_port: HashMap<&str, &str> = HashMap::new();
        for (physnet, port_name) in &self.bridge_mappings {
            let at = format!("bridge_mappings.{physnet}");
            if physnet.is_empty() {
                out.push(&at, "physical network name must not be empty");
            }
            match self.port(port_name) {
                None => out.push(
                    &at,
                    format!("port {port_name:?} does not exist; name a [[ports]] entry with kind = \"provider\""),
                ),
                Some(port) if port.kind != PortKind::Provider => out.push(
                    &at,
                    format!(
                        "port {port_name} has kind = \"{}\"; physical networks map to kind = \"provider\" ports",
                        kind_name(port.kind)
                    ),
                ),
                Some(_) => {
                    if let Some(other) = by_port.insert(port_name.as_str(), physnet.as_str()) {
                        by_port.insert(port_name.as_str(), other);
                        out.push(
                            &at,
                            format!("port {port_name} already carries physical network {other}; each physical network needs its own provider port"),
                        );
                    }
                }
            }
        }
    }
}

fn kind_name(kind: PortKind) -> &'static str {
    match kind {
        PortKind::Instance => "instance",
        PortKind::Provider => "provider",
        PortKind::Overlay => "overlay",
    }
}
