//! Prometheus metrics through the `metrics` facade. Workers never call a `metrics` macro: they
//! write plain per-core counters, and on every scrape the control plane sums them and sets the
//! exported values here. Apply latency and the table generation are recorded where changes are
//! applied (`store`).
use super::Daemon;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, OnceLock};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
            1.0,
        ])
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "vswitch_port_rx_packets_total",
        "Packets received on a port"
    );
    describe_counter!(
        "vswitch_port_rx_bytes_total",
        Unit::Bytes,
        "Bytes received on a port"
    );
    describe_counter!(
        "vswitch_port_tx_packets_total",
        "Packets transmitted on a port"
    );
    describe_counter!(
        "vswitch_port_tx_bytes_total",
        Unit::Bytes,
        "Bytes transmitted on a port"
    );
    describe_counter!(
        "vswitch_port_rx_missed_total",
        "Packets the NIC dropped because no rx descriptor was free (imissed)"
    );
    describe_counter!(
        "vswitch_port_rx_errors_total",
        "Erroneous packets received (ierrors)"
    );
    describe_counter!(
        "vswitch_port_tx_errors_total",
        "Failed transmissions (oerrors)"
    );
    describe_counter!(
        "vswitch_port_firewall_allowed_total",
        "Packets the port's security groups let through"
    );
    describe_counter!(
        "vswitch_port_firewall_dropped_total",
        "Packets the port's security groups dropped"
    );
    describe_counter!(
        "vswitch_drops_total",
        "Packets dropped, by pipeline stage and reason"
    );
    describe_counter!("vswitch_events_total", "Stage events, by stage and event");
    describe_gauge!(
        "vswitch_conntrack",
        "Connection table figures (entries, capacity, by state)"
    );
    describe_counter!(
        "vswitch_conntrack_total",
        "Connection table events (new, refused, expired, ...)"
    );
    describe_gauge!(
        "vswitch_core_busy_ratio",
        "Share of poll rounds that found packets since the previous scrape, per worker core"
    );
    describe_counter!(
        "vswitch_core_polls_total",
        "Poll rounds per worker core, busy or idle"
    );
    describe_gauge!(
        "vswitch_table_generation",
        "Generation of the tables live on the cores"
    );
    describe_histogram!(
        "vswitch_apply_latency_seconds",
        Unit::Seconds,
        "Accepted change (valid, in the state file) -> new tables live on every core"
    );
    describe_histogram!(
        "vswitch_request_latency_seconds",
        Unit::Seconds,
        "A whole change request: validation, state file, compile, publish"
    );
    describe_counter!("vswitch_apply_total", "Changes applied");
    describe_counter!(
        "vswitch_apply_rejected_total",
        "Changes refused (nothing changed)"
    );
    describe_counter!(
        "vswitch_router_packets_total",
        "Router counters, by router and kind"
    );
}

/// Poll counts at the previous scrape, per core (for the busy ratio).
static LAST_POLLS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Sums the cores' counters into the exported metrics and renders the Prometheus text.
pub fn render(daemon: &Daemon, handle: &PrometheusHandle) -> String {
    refresh(daemon);
    handle.run_upkeep();
    handle.render()
}

fn split(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((stage, what)) => (stage.to_string(), what.to_string()),
        None => (String::new(), name.to_string()),
    }
}

/// Sets every exported counter from the cores' plain counters.
pub fn refresh(daemon: &Daemon) {
    let t = daemon.totals();
    let names = daemon.port_names();
    let driver = daemon.driver();
    for (i, (name, p)) in names.iter().zip(&t.ports).enumerate() {
        let l = [("port", name.clone())];
        counter!("vswitch_port_rx_packets_total", &l).absolute(p.rx_packets);
        counter!("vswitch_port_rx_bytes_total", &l).absolute(p.rx_bytes);
        counter!("vswitch_port_tx_packets_total", &l).absolute(p.tx_packets);
        counter!("vswitch_port_tx_bytes_total", &l).absolute(p.tx_bytes);
        if let Some(d) = driver.get(i) {
            counter!("vswitch_port_rx_missed_total", &l).absolute(d.imissed);
            counter!("vswitch_port_rx_errors_total", &l).absolute(d.ierrors);
            counter!("vswitch_port_tx_errors_total", &l).absolute(d.oerrors);
        }
        if let Some(&(a, d)) = t.firewall.get(i) {
            counter!("vswitch_port_firewall_allowed_total", &l).absolute(a);
            counter!("vswitch_port_firewall_dropped_total", &l).absolute(d);
        }
    }
    for (name, v) in &t.drops {
        let (stage, reason) = split(name);
        counter!("vswitch_drops_total", "stage" => stage, "reason" => reason).absolute(*v);
    }
    for (name, v) in &t.events {
        let (stage, event) = split(name);
        counter!("vswitch_events_total", "stage" => stage, "event" => event).absolute(*v);
    }
    const GAUGES: [&str; 3] = ["entries", "capacity", "established"];
    for (name, v) in &t.conntrack {
        if GAUGES.contains(&name.as_str())
            || crate::pipeline::conntrack::state::NAMES.contains(&name.as_str())
        {
            gauge!("vswitch_conntrack", "figure" => name.clone()).set(*v as f64);
        } else if name != "new_per_s" {
            counter!("vswitch_conntrack_total", "event" => name.clone()).absolute(*v);
        }
    }
    for (kind, v) in ["hit", "miss", "learnt", "crowded"]
        .iter()
        .zip(t.flow_cache)
    {
        counter!("vswitch_flow_cache_total", "kind" => *kind).absolute(v);
    }
    let tables = daemon.publisher().current();
    for (r, c) in tables.l3.routers.iter().zip(&t.routers) {
        for (kind, v) in ["routed", "local", "icmp_errors", "dropped"].iter().zip(c) {
            counter!("vswitch_router_packets_total", "router" => r.name.clone(), "kind" => *kind)
                .absolute(*v);
        }
    }
    gauge!("vswitch_table_generation").set(tables.generation as f64);
    let mut last = LAST_POLLS.lock().unwrap_or_else(|e| e.into_inner());
    let cores = daemon.core_counters();
    last.resize(cores.len(), (0, 0));
    for (c, prev) in cores.iter().zip(last.iter_mut()) {
        let busy = c.busy_polls.load(Relaxed);
        let idle = c.idle_polls.load(Relaxed);
        let lcore = c.lcore.to_string();
        let (db, di) = (busy.saturating_sub(prev.0), idle.saturating_sub(prev.1));
        if db + di > 0 {
            gauge!("vswitch_core_busy_ratio", "lcore" => lcore.clone())
                .set(db as f64 / (db + di) as f64);
        }
        counter!("vswitch_core_polls_total", "lcore" => lcore.clone(), "kind" => "busy")
            .absolute(busy);
        counter!("vswitch_core_polls_total", "lcore" => lcore, "kind" => "idle").absolute(idle);
        *prev = (busy, idle);
    }
}
