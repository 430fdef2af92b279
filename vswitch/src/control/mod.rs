//! The control side of the process: load and validate configuration, start the data plane,
//! report counters, shut down cleanly. The async control plane ([`server`]) owns the desired
//! state ([`store`]), changes it through Neutron's resources ([`resources`]) and serves the API
//! ([`api`]) that `vswitchctl` speaks; [`metrics`] exports the counters to Prometheus.
pub mod api;
pub mod metrics;
pub mod resources;
pub mod server;
pub mod store;
use crate::counters::{totals, CoreCounters, Totals};
use crate::io::Ports;
use crate::runtime::{assign_queues, Worker};
use crate::tables::compile::compile;
use crate::tables::l3neigh::L3Neighbors;
use crate::tables::neighbor::NeighborTable;
use crate::tables::publish::Publisher;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vswitch_config::{DesiredState, HostConfig, Problem};
use vswitch_ffi::{eal, Mempool};

mod capture;
pub mod pcap;
mod requests;
pub use crate::runtime::requests::CtView;
pub use capture::Capture;
pub mod trace;

/// Per-core learning table size (entries) and aging.
const LEARN_CAPACITY: usize = 16384;
/// Next hops the routers may resolve themselves (beyond the desired state's ports).
const L3_NEIGHBOR_CAPACITY: usize = 16384;
/// Underlay neighbours (VTEPs and gateways) the shared ARP cache holds.
const NEIGHBOR_CAPACITY: usize = 4096;

/// Loads and validates the host config and the desired state (if given) together. On any
/// problem returns one message that lists all of them.
pub fn load(config: &Path, state: Option<&Path>) -> Result<(HostConfig, DesiredState), String> {
    let host = vswitch_config::load_host(config);
    let st = match state {
        Some(p) => vswitch_config::load_state(p),
        None => Ok(DesiredState::default()),
    };
    let mut msgs = Vec::new();
    if let Err(e) = &host {
        msgs.push(e.to_string());
    }
    if let Err(e) = &st {
        msgs.push(e.to_string());
    }
    let (Ok(host), Ok(st)) = (host, st) else {
        return Err(format!(
            "vswitchd: configuration rejected, nothing started:\n{}",
            msgs.join("\n")
        ));
    };
    let cross = vswitch_config::validate_for_host(&host, &st);
    if !cross.is_empty() {
        return Err(format!(
            "vswitchd: configuration rejected, nothing started:\n{}",
            problems_text(&cross)
        ));
    }
    Ok((host, st))
}

fn problems_text(ps: &[Problem]) -> String {
    ps.iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The running data plane.
pub struct Daemon {
    host: HostConfig,
    ports: Option<Ports>,
    pool: Option<Arc<Mempool>>,
    cores: Vec<Arc<CoreCounters>>,
    lcores: Vec<u32>,
    publisher: Publisher,
    /// The ports' own MACs (what the compiler needs besides the two files).
    port_macs: Vec<vswitch_config::MacAddr>,
    /// The neighbour caches every worker shares (read by `trace`).
    shared: crate::pipeline::SharedState,
    /// Set when the daemon stops: a capture in progress ends at once.
    stop: Arc<AtomicBool>,
    /// When the counters were last reported and how many connections had been created.
    last_new: std::sync::Mutex<(std::time::Instant, u64)>,
    /// Each worker's mailbox and the shared capture slots (see `requests.rs`).
    mailboxes: Vec<Arc<crate::runtime::requests::Mailbox>>,
    tap: Arc<crate::runtime::capture::Tap>,
}

impl Daemon {
    /// EAL, mempool, ports, tables, workers. Any failure undoes what was done and returns a
    /// message listing every problem.
    pub fn start(
        host: HostConfig,
        state: DesiredState,
        stop: Arc<AtomicBool>,
    ) -> Result<Daemon, String> {
        let lcores = std::iter::once(host.main_core).chain(host.cores.iter().copied());
        let mut eal_args = if host.lcore_cpus.is_empty() {
            vec![
                "-l".to_owned(),
                lcores.map(|c| c.to_string()).collect::<Vec<_>>().join(","),
            ]
        } else {
            // `--lcores 0@0,1@1,2@1`: lcore N on the CPU `lcore_cpus` gives, else on CPU N.
            vec![
                "--lcores".to_owned(),
                lcores
                    .map(|c| format!("{c}@{}", host.lcore_cpu(c)))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        };
        eal_args.extend(["--main-lcore".to_owned(), host.main_core.to_string()]);
        eal_args.extend(host.eal_args.iter().cloned());
        tracing::info!(args = ?eal_args, "initialising EAL");
        eal::init(&eal_args).map_err(|e| {
            format!("vswitchd: EAL initialisation failed: {e}\n  (EAL arguments: {})\n  hint: without hugepages add \"--no-huge\", \"-m\", \"512\" to eal_args", eal_args.join(" "))
        })?;
        let fail = |msg: String| {
            let _ = eal::cleanup();
            msg
        };
        let workers = host.cores.len() as u16;
        let pool = Mempool::pktmbuf("vswitch_mbufs", host.mbufs, host.mbuf_cache, 2048 + 128, -1)
            .map_err(|e| fail(format!("vswitchd: cannot create the mbuf pool: {e}")))?;
        let pool = Arc::new(pool);
        let ports = match Ports::open(&host, &pool, workers) {
            Ok(p) => p,
            Err(ps) => {
                drop(pool);
                return Err(fail(format!(
                    "vswitchd: ports rejected, nothing started:\n{}",
                    problems_text(&ps)
                )));
            }
        };
        for p in &ports.ports {
            tracing::info!(port = %p.name, port_id = p.port_id, driver = %p.driver,
                mac = %vswitch_config::MacAddr(p.mac), rx_queues = p.rx_queues, tx_queues = p.tx_queues, "port up");
        }
        let n_ports = host.ports.len();
        let cores: Vec<Arc<CoreCounters>> = host
            .cores
            .iter()
            .map(|&l| Arc::new(CoreCounters::new(l, n_ports)))
            .collect();
        let port_macs: Vec<vswitch_config::MacAddr> = ports
            .ports
            .iter()
            .map(|p| vswitch_config::MacAddr(p.mac))
            .collect();
        let tables = compile(&host, &state, 1, &port_macs);
        let neigh = Arc::new(NeighborTable::new(NEIGHBOR_CAPACITY));
        let l3neigh = Arc::new(L3Neighbors::new(L3_NEIGHBOR_CAPACITY));
        for (ip, mac) in &host.overlay.neighbors {
            neigh.set_static(*ip, crate::tables::mac_u64(&mac.0));
        }
        let publisher = Publisher::new(tables, cores.clone());
        let port_ids: Vec<u16> = ports.ports.iter().map(|p| p.port_id).collect();
        let q: Vec<(u16, u16, u16)> = ports
            .ports
            .iter()
            .map(|p| (p.index, p.port_id, p.rx_queues))
            .collect();
        let assignment = assign_queues(&q, host.cores.len());
        // The connection table's hard capacity, split evenly over the workers (each owns the
        // connections its share of the 5-tuple hash maps to), and their hand-off rings.
        let n_workers = host.cores.len().max(1);
        let ct_per_core = (host.conntrack.capacity as usize).div_ceil(n_workers);
        let inboxes: Arc<crate::io::Inboxes> = Arc::new(
            (0..n_workers)
                .map(|_| crossbeam_queue::ArrayQueue::new(crate::io::INBOX_SLOTS))
                .collect(),
        );
        let mailboxes: Vec<Arc<crate::runtime::requests::Mailbox>> =
            host.cores.iter().map(|_| Arc::default()).collect();
        let tap = Arc::new(crate::runtime::capture::Tap::default());
        let mut daemon = Daemon {
            mailboxes: mailboxes.clone(),
            tap: tap.clone(),
            port_macs: port_macs.clone(),
            shared: crate::pipeline::SharedState {
                neigh: neigh.clone(),
                l3neigh: l3neigh.clone(),
            },
            stop: stop.clone(),
            last_new: std::sync::Mutex::new((std::time::Instant::now(), 0)),
            lcores: Vec::new(),
            cores,
            publisher,
            ports: Some(ports),
            pool: Some(pool.clone()),
            host,
        };
        for (w, (&lcore, rx)) in daemon.host.cores.iter().zip(assignment).enumerate() {
            let worker = Worker {
                lcore,
                index: w as u16,
                rx,
                port_ids: port_ids.clone(),
                tables: daemon.publisher.shared(),
                counters: daemon.cores[w].clone(),
                stop: stop.clone(),
                idle: daemon.host.idle.clone(),
                learn_capacity: LEARN_CAPACITY,
                aging_ms: crate::tables::fdb::DEFAULT_AGING_MS,
                shared: crate::pipeline::SharedState {
                    neigh: neigh.clone(),
                    l3neigh: l3neigh.clone(),
                },
                ct_capacity: ct_per_core,
                ct_timeouts: crate::pipeline::conntrack::Timeouts::from_config(
                    &daemon.host.conntrack.timeouts,
                ),
                ct_evict: daemon.host.conntrack.evict_unestablished,
                flow_cache: daemon.host.flow_cache,
                workers: n_workers as u16,
                inboxes: inboxes.clone(),
                pool: pool.clone(),
                mailbox: mailboxes[w].clone(),
                tap: tap.clone(),
            };
            tracing::info!(lcore, queues = ?worker.rx, "launching worker");
            if let Err(e) = eal::launch(lcore, move || worker.run()) {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                daemon.shutdown();
                return Err(format!(
                    "vswitchd: cannot launch worker on lcore {lcore}: {e}"
                ));
            }
            daemon.lcores.push(lcore);
        }
        Ok(daemon)
    }

    pub fn port_count(&self) -> usize {
        self.host.ports.len()
    }

    pub fn worker_count(&self) -> usize {
        self.host.cores.len()
    }

    pub fn port_names(&self) -> Vec<String> {
        self.host.ports.iter().map(|p| p.name.clone()).collect()
    }

    /// All cores' counters summed.
    pub fn totals(&self) -> Totals {
        totals(&self.cores, self.host.ports.len())
    }

    /// The counters as the text the operator reads and as JSON, the PMDs' own included, with
    /// the new connections per second since the previous call.
    pub fn stats(&self) -> (String, serde_json::Value) {
        let driver = self.ports.as_ref().map(driver_stats).unwrap_or_default();
        let mut t = self.totals();
        let new = t
            .conntrack
            .iter()
            .find(|(n, _)| n == "new")
            .map_or(0, |x| x.1);
        let now = std::time::Instant::now();
        if let Ok(mut last) = self.last_new.lock() {
            let (at, n) = *last;
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let rate = (new.saturating_sub(n) as f64 / secs).round() as u64;
                t.conntrack.push(("new_per_s".into(), rate));
            }
            *last = (now, new);
        }
        let (mut text, mut json) =
            render(&t, &self.port_names(), &driver, &self.publisher.current());
        text.push_str(&format!(
            "{:<16} {:>14} {:>14} {:>10}\n",
            "core", "busy_polls", "idle_polls", "busy"
        ));
        for c in &self.cores {
            let busy = c.busy_polls.load(std::sync::atomic::Ordering::Relaxed);
            let idle = c.idle_polls.load(std::sync::atomic::Ordering::Relaxed);
            let ratio = busy as f64 / (busy + idle).max(1) as f64;
            text.push_str(&format!(
                "lcore {:<10} {:>14} {:>14} {:>9.1}%\n",
                c.lcore,
                busy,
                idle,
                ratio * 100.0
            ));
        }
        json["cores"] = serde_json::Value::Array(
            self.cores
                .iter()
                .map(|c| {
                    let busy = c.busy_polls.load(std::sync::atomic::Ordering::Relaxed);
                    let idle = c.idle_polls.load(std::sync::atomic::Ordering::Relaxed);
                    serde_json::json!({"lcore": c.lcore, "busy_polls": busy, "idle_polls": idle})
                })
                .collect(),
        );
        (text, json)
    }

    /// Prints the counters (SIGUSR1).
    pub fn report(&self) {
        let (text, json) = self.stats();
        print_report(&text, &json);
    }

    /// Every core's counters (the metrics exporter reads them).
    pub fn core_counters(&self) -> &[Arc<CoreCounters>] {
        &self.cores
    }

    /// The driver's counters of every port.
    pub fn driver(&self) -> Vec<vswitch_ffi::ethdev::EthStats> {
        self.ports.as_ref().map(driver_stats).unwrap_or_default()
    }

    /// The host config the daemon runs with.
    pub fn host(&self) -> &HostConfig {
        &self.host
    }

    /// The neighbour caches the workers share.
    pub fn shared(&self) -> &crate::pipeline::SharedState {
        &self.shared
    }

    /// The table publisher.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Compiles a desired state (already validated for this host) as `generation` and makes it
    /// live on every core with one swap. Returns how long until every core ran on it.
    pub fn apply_state(&self, state: &DesiredState, generation: u64) -> std::time::Duration {
        let tables = compile(&self.host, state, generation, &self.port_macs);
        self.publisher.publish(tables, || true)
    }

    /// Waits for the workers (the caller has set the stop flag), prints the final counters,
    /// closes the ports, checks every mbuf came back, cleans up the EAL. True when clean.
    pub fn shutdown(mut self) -> bool {
        for &l in &self.lcores {
            eal::wait(l);
        }
        self.report();
        if let Some(p) = self.ports.take() {
            p.close();
        }
        let mut clean = true;
        if let Some(pool) = self.pool.take() {
            let in_use = pool.in_use();
            println!(
                "shutdown: mbufs in use after closing ports: {in_use} of {}",
                pool.size()
            );
            clean = in_use == 0;
            drop(pool);
        }
        if let Err(e) = eal::cleanup() {
            eprintln!("shutdown: {e}");
        }
        clean
    }
}

/// The driver's own counters of every open port (misses, buffer shortages, errors).
pub fn driver_stats(ports: &Ports) -> Vec<vswitch_ffi::ethdev::EthStats> {
    ports
        .ports
        .iter()
        .map(|p| vswitch_ffi::ethdev::stats(p.port_id))
        .collect()
}

/// Prints counters for people (aligned) and one JSON line for scripts (`stats-json: {...}`).
pub fn print_report(text: &str, json: &serde_json::Value) {
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(text.as_bytes());
    let _ = writeln!(so, "stats-json: {json}");
    let _ = so.flush();
}

/// The counters for people (aligned columns) and for scripts (JSON). `driver` holds each port's
/// PMD counters when the ports are open.
pub fn render(
    t: &Totals,
    names: &[String],
    driver: &[vswitch_ffi::ethdev::EthStats],
    tables: &crate::tables::Tables,
) -> (String, serde_json::Value) {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<16} {:>14} {:>16} {:>14} {:>16}\n",
        "port", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes"
    ));
    for (n, p) in names.iter().zip(&t.ports) {
        out.push_str(&format!(
            "{:<16} {:>14} {:>16} {:>14} {:>16}\n",
            n, p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes
        ));
    }
    if !driver.is_empty() {
        out.push_str(&format!(
            "{:<16} {:>14} {:>16} {:>14} {:>16}\n",
            "driver", "imissed", "rx_nombuf", "ierrors", "oerrors"
        ));
        for (n, d) in names.iter().zip(driver) {
            out.push_str(&format!(
                "{:<16} {:>14} {:>16} {:>14} {:>16}\n",
                n, d.imissed, d.rx_nombuf, d.ierrors, d.oerrors
            ));
        }
    }
    let vteps: Vec<_> = tables
        .vteps
        .iter()
        .enumerate()
        .map(|(i, v)| (v, t.vteps.get(i).copied().unwrap_or_default()))
        .collect();
    let mut vnis: Vec<_> = tables
        .vni
        .iter()
        .map(|(&vni, &n)| {
            (
                vni,
                &tables.networks[n as usize].name,
                t.nets.get(n as usize).copied().unwrap_or_default(),
            )
        })
        .collect();
    vnis.sort();
    if !vteps.is_empty() {
        out.push_str(&format!(
            "{:<16} {:<16} {:>14} {:>14}\n",
            "vtep", "host", "rx_packets", "tx_packets"
        ));
        for (v, (rx, tx)) in &vteps {
            out.push_str(&format!(
                "{:<16} {:<16} {:>14} {:>14}\n",
                v.ip.to_string(),
                v.host,
                rx,
                tx
            ));
        }
    }
    if !vnis.is_empty() {
        out.push_str(&format!(
            "{:<16} {:<16} {:>14} {:>14}\n",
            "vni", "network", "rx_packets", "tx_packets"
        ));
        for (vni, name, (rx, tx)) in &vnis {
            out.push_str(&format!("{:<16} {:<16} {:>14} {:>14}\n", vni, name, rx, tx));
        }
    }
    let routers: Vec<_> = tables
        .l3
        .routers
        .iter()
        .enumerate()
        .map(|(i, r)| (r, t.routers.get(i).copied().unwrap_or_default()))
        .collect();
    if !routers.is_empty() {
        out.push_str(&format!(
            "{:<16} {:>14} {:>14} {:>14} {:>14}\n",
            "router", "routed", "local", "icmp_errors", "dropped"
        ));
        for (r, c) in &routers {
            out.push_str(&format!(
                "{:<16} {:>14} {:>14} {:>14} {:>14}\n",
                r.name, c[0], c[1], c[2], c[3]
            ));
        }
    }
    out.push_str("drops:\n");
    for (k, v) in t.drops.iter().filter(|(_, v)| *v > 0) {
        out.push_str(&format!("  {k:<36} {v:>14}\n"));
    }
    out.push_str("events:\n");
    for (k, v) in t.events.iter().filter(|(_, v)| *v > 0) {
        out.push_str(&format!("  {k:<36} {v:>14}\n"));
    }
    // Security groups: per instance port with groups, and the connection table.
    let firewall: Vec<(&String, (u64, u64))> = names
        .iter()
        .zip(&tables.ports)
        .zip(t.firewall.iter().chain(std::iter::repeat(&(0, 0))))
        .filter(|((_, pe), _)| pe.firewall.is_some())
        .map(|((n, _), &f)| (n, f))
        .collect();
    if !firewall.is_empty() {
        out.push_str(&format!(
            "{:<16} {:>14} {:>14}\n",
            "firewall", "allowed", "dropped"
        ));
        for (n, (a, d)) in &firewall {
            out.push_str(&format!("{:<16} {:>14} {:>14}\n", n, a, d));
        }
        let ct = |k: &str| t.conntrack.iter().find(|(n, _)| n == k).map_or(0, |x| x.1);
        out.push_str(&format!(
            "conntrack        entries {} of {}, established {}, new {} ({}/s), refused (full) {}, evicted {}, expired {}, cut {}, related {}\n",
            ct("entries"),
            ct("capacity"),
            ct("established"),
            ct("new"),
            ct("new_per_s"),
            ct("refused_full"),
            ct("evicted"),
            ct("expired"),
            ct("cut"),
            ct("related"),
        ));
        let states: Vec<String> = crate::pipeline::conntrack::state::NAMES
            .iter()
            .skip(1)
            .filter(|n| ct(n) > 0)
            .map(|n| format!("{n} {}", ct(n)))
            .collect();
        if !states.is_empty() {
            out.push_str(&format!("conntrack states {}\n", states.join(", ")));
        }
    }
    let [hits, misses, learnt, crowded] = t.flow_cache;
    if hits + misses > 0 {
        out.push_str(&format!(
            "flow cache       hits {hits}, misses {misses} ({:.1} % hit), learnt {learnt}, \
             crowded {crowded}\n",
            100.0 * hits as f64 / (hits + misses) as f64
        ));
    }
    let json = serde_json::json!({
        "ports": names.iter().zip(&t.ports).map(|(n, p)| serde_json::json!({
            "name": n, "rx_packets": p.rx_packets, "rx_bytes": p.rx_bytes,
            "tx_packets": p.tx_packets, "tx_bytes": p.tx_bytes,
        })).collect::<Vec<_>>(),
        "drops": t.drops.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "events": t.events.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "driver": names.iter().zip(driver).map(|(n, d)| serde_json::json!({
            "name": n, "imissed": d.imissed, "rx_nombuf": d.rx_nombuf,
            "ierrors": d.ierrors, "oerrors": d.oerrors,
        })).collect::<Vec<_>>(),
        "vteps": vteps.iter().map(|(v, (rx, tx))| serde_json::json!({
            "ip": v.ip.to_string(), "host": v.host, "rx_packets": rx, "tx_packets": tx,
        })).collect::<Vec<_>>(),
        "vnis": vnis.iter().map(|(vni, name, (rx, tx))| serde_json::json!({
            "vni": vni, "network": name, "rx_packets": rx, "tx_packets": tx,
        })).collect::<Vec<_>>(),
        "routers": routers.iter().map(|(r, c)| serde_json::json!({
            "id": r.id, "name": r.name, "routed": c[0], "local": c[1],
            "icmp_errors": c[2], "dropped": c[3],
        })).collect::<Vec<_>>(),
        "conntrack": t.conntrack.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "firewall": firewall.iter().map(|(n, (a, d))| serde_json::json!({
            "port": n, "allowed": a, "dropped": d,
        })).collect::<Vec<_>>(),
        "flow_cache": {"hits": t.flow_cache[0], "misses": t.flow_cache[1], "learnt": t.flow_cache[2],
            "crowded": t.flow_cache[3]},
        "busy_polls": t.busy_polls,
        "idle_polls": t.idle_polls,
        "generation": tables.generation,
    });
    (out, json)
}
