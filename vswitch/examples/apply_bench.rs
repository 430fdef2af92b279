//! Apply latency of the control plane at 10,000 ports: single API changes (a port created, a
//! port deleted, a security group rule added, a floating IP moved) and a whole-state replace,
//! through the real store (validation of the whole state, the state file written with fsync,
//! tables compiled and published through the real publisher). Prints p50/p99 per phase: the
//! request (validation + fsync + compile + publish) and "accepted -> live" (compile + publish),
//! the figure the issue's 10 ms target is about.
//!
//! `cargo run --release -p vswitch --example apply_bench [ports] [changes] [--output FILE.json]`
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vswitch::control::resources::{self, Kind};
use vswitch::control::store::{Dataplane, Store};
use vswitch::tables::compile::compile;
use vswitch::tables::publish::Publisher;
use vswitch_config::{DesiredState, HostConfig, MacAddr};

const HOST: &str = r#"
role = "dvr"
host_id = "host0"
local_vtep_ip = "10.0.0.1"
dvr_mac = "fa:16:3f:00:00:01"
cores = [1]
[[ports]]
name = "vm0"
devargs = "net_null0"
kind = "instance"
iface_id = "port-0"
[[ports]]
name = "vm1"
devargs = "net_null1"
kind = "instance"
iface_id = "port-50"
[[ports]]
name = "overlay"
devargs = "net_null2"
kind = "overlay"
[[ports]]
name = "uplink"
devargs = "net_null3"
kind = "provider"
[bridge_mappings]
provider = "uplink"
"#;

/// Compiles and publishes like the daemon (no worker cores here to wait for).
struct Plane {
    host: HostConfig,
    publisher: Publisher,
    macs: Vec<MacAddr>,
    live: std::sync::Mutex<Vec<Duration>>,
}

impl Dataplane for Plane {
    fn apply(&self, state: &DesiredState, generation: u64) -> Duration {
        let t0 = Instant::now();
        let t = compile(&self.host, state, generation, &self.macs);
        self.publisher.publish(t, || true);
        let d = t0.elapsed();
        self.live.lock().unwrap().push(d);
        d
    }
}

/// 10,000 ports: 100 VXLAN networks of 100 ports on 50 hosts, one router, the default group
/// with a remote-group rule (every port a member), 100 floating IPs.
fn state(ports: usize) -> DesiredState {
    let nets = ports.div_ceil(100);
    let mut v = json!({"networks": [], "subnets": [], "ports": [], "routers": [{"id": "r1", "distributed": true,
        "external_gateway_info": {"network_id": "ext", "external_fixed_ips": [{"subnet_id": "ext-s", "ip_address": "203.0.113.2"}]}}],
        "security_groups": [{"id": "sg", "name": "default"}],
        "security_group_rules": [
            {"id": "r-e4", "security_group_id": "sg", "direction": "egress", "ethertype": "IPv4"},
            {"id": "r-i4", "security_group_id": "sg", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": "sg"},
            {"id": "r-ssh", "security_group_id": "sg", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}],
        "floatingips": [], "hosts": []});
    v["networks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "ext", "router:external": true,
        "provider:network_type": "flat", "provider:physical_network": "provider"}));
    v["subnets"].as_array_mut().unwrap().push(
        json!({"id": "ext-s", "network_id": "ext", "cidr": "203.0.113.0/24", "ip_version": 4}),
    );
    for h in 0..50 {
        v["hosts"].as_array_mut().unwrap().push(json!({"host": format!("host{h}"), "vtep_ip": format!("10.0.{}.{}", h / 200, h % 200 + 1),
            "dvr_mac": format!("fa:16:3f:00:{:02x}:{:02x}", h / 256, h % 256 + 1)}));
    }
    v["ports"].as_array_mut().unwrap().push(json!({"id": "gw", "network_id": "ext", "mac_address": "fa:16:3e:ff:00:01",
        "fixed_ips": [{"subnet_id": "ext-s", "ip_address": "203.0.113.2"}], "device_owner": "network:router_gateway", "device_id": "r1", "binding:host_id": "host49"}));
    v["ports"].as_array_mut().unwrap().push(json!({"id": "fg0", "network_id": "ext", "mac_address": "fa:16:3e:ff:00:02",
        "fixed_ips": [{"subnet_id": "ext-s", "ip_address": "203.0.113.3"}], "device_owner": "network:floatingip_agent_gateway", "device_id": "host0", "binding:host_id": "host0"}));
    for n in 0..nets {
        v["networks"].as_array_mut().unwrap().push(json!({"id": format!("net-{n}"), "provider:network_type": "vxlan", "provider:segmentation_id": 1000 + n}));
        v["subnets"].as_array_mut().unwrap().push(json!({"id": format!("sub-{n}"), "network_id": format!("net-{n}"),
            "cidr": format!("10.{}.{}.0/24", 100 + n / 256, n % 256), "ip_version": 4, "gateway_ip": format!("10.{}.{}.1", 100 + n / 256, n % 256)}));
        v["ports"].as_array_mut().unwrap().push(json!({"id": format!("ri-{n}"), "network_id": format!("net-{n}"),
            "mac_address": format!("fa:16:3e:fe:{:02x}:{:02x}", n / 256, n % 256),
            "fixed_ips": [{"subnet_id": format!("sub-{n}"), "ip_address": format!("10.{}.{}.1", 100 + n / 256, n % 256)}],
            "device_owner": "network:router_interface_distributed", "device_id": "r1"}));
    }
    for p in 0..ports {
        let n = p / 100;
        v["ports"].as_array_mut().unwrap().push(json!({"id": format!("port-{p}"), "network_id": format!("net-{n}"),
            "mac_address": format!("fa:16:3e:{:02x}:{:02x}:{:02x}", p >> 16, (p >> 8) & 255, p & 255),
            "fixed_ips": [{"subnet_id": format!("sub-{n}"), "ip_address": format!("10.{}.{}.{}", 100 + n / 256, n % 256, p % 100 + 10)}],
            "binding:host_id": format!("host{}", p % 50), "security_groups": ["sg"], "device_owner": "compute:nova"}));
        if p % 100 == 0 {
            v["floatingips"].as_array_mut().unwrap().push(json!({"id": format!("fip-{p}"), "floating_ip_address": format!("203.0.113.{}", 10 + p / 100),
                "floating_network_id": "ext", "port_id": format!("port-{p}")}));
        }
    }
    serde_json::from_value(v).expect("bench state")
}

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let output = argv
        .iter()
        .position(|a| a == "--output")
        .and_then(|i| argv.get(i + 1).cloned());
    let args: Vec<usize> = argv.iter().filter_map(|a| a.parse().ok()).collect();
    let ports = args.first().copied().unwrap_or(10_000);
    let changes = args.get(1).copied().unwrap_or(200);
    let host = vswitch_config::parse_host_str(HOST).expect("host");
    let st = state(ports);
    let t0 = Instant::now();
    let problems = st.validate();
    let validate = t0.elapsed();
    assert!(problems.is_empty(), "{problems:?}");
    let cross = vswitch_config::validate_for_host(&host, &st);
    assert!(cross.is_empty(), "{cross:?}");
    let macs = vec![MacAddr([2, 0, 0, 0, 0, 1]); host.ports.len()];
    let t0 = Instant::now();
    let tables = compile(&host, &st, 1, &macs);
    let first = t0.elapsed();
    let plane = Arc::new(Plane {
        host: host.clone(),
        publisher: Publisher::new(tables, Vec::new()),
        macs,
        live: Default::default(),
    });
    let dir = std::env::temp_dir().join(format!("apply-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.json");
    let store = Store::new(host, st.clone(), Some(file), plane.clone());
    println!(
        "apply_bench: {ports} ports, {} networks, {} floating IPs: validate {:.1} ms, first compile {:.1} ms",
        st.networks.len(),
        st.floatingips.len(),
        validate.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );
    let mut requests = Vec::new();
    for i in 0..changes {
        let t0 = Instant::now();
        let r = match i % 4 {
            0 => store.submit(|s| resources::create(s, Kind::Port, json!({"port": {"id": format!("new-{i}"), "network_id": "net-1", "binding:host_id": "host3", "fixed_ips": [{"subnet_id": "sub-1", "ip_address": format!("10.100.1.{}", 150 + i % 100)}]}}))),
            1 => store.submit(|s| resources::delete(s, Kind::Port, &format!("new-{}", i - 1))),
            2 => store.submit(|s| resources::create(s, Kind::SecurityGroupRule, json!({"security_group_rule": {"id": format!("rule-{i}"), "security_group_id": "sg", "direction": "ingress", "protocol": "tcp", "port_range_min": 1000 + i, "port_range_max": 1000 + i}}))),
            _ => store.submit(|s| resources::update(s, Kind::FloatingIp, "fip-0", json!({"floatingip": {"port_id": if i % 8 == 3 { "port-50" } else { "port-0" }}}))),
        };
        r.unwrap_or_else(|e| panic!("change {i}: {:?}", e.problems));
        requests.push(t0.elapsed());
    }
    let single_live = std::mem::take(&mut *plane.live.lock().unwrap());
    let live = single_live.clone();
    let single_req = requests.clone();
    println!(
        "single change at {ports} ports ({changes} changes): accepted -> live p50 {:.2} ms p99 {:.2} ms; whole request (validate + fsync + compile + publish) p50 {:.2} ms p99 {:.2} ms",
        pct(live.clone(), 0.5),
        pct(live, 0.99),
        pct(requests.clone(), 0.5),
        pct(requests, 0.99)
    );
    let mut replace = Vec::new();
    for i in 0..20 {
        let mut next = st.clone();
        let last = next.ports.len() - 1 - i;
        next.ports[last].name = format!("renamed-{i}");
        let t0 = Instant::now();
        store.replace(next).expect("replace");
        replace.push(t0.elapsed());
    }
    let live = std::mem::take(&mut *plane.live.lock().unwrap());
    if let Some(out) = &output {
        let ms = |v: &Vec<Duration>, p| (pct(v.clone(), p) * 1000.0).round() / 1000.0;
        let j = json!({
            "ports": ports, "changes": changes,
            "single_change_live_ms": {"p50": ms(&single_live, 0.5), "p99": ms(&single_live, 0.99)},
            "single_change_request_ms": {"p50": ms(&single_req, 0.5), "p99": ms(&single_req, 0.99)},
            "replace_live_ms": {"p50": ms(&live, 0.5), "p99": ms(&live, 0.99)},
            "replace_request_ms": {"p50": ms(&replace, 0.5), "p99": ms(&replace, 0.99)},
            "target_live_ms": 10.0,
        });
        std::fs::write(out, format!("{j:#}\n")).expect("write --output");
        println!("wrote {out}");
    }
    println!(
        "whole-state replace at {ports} ports (20): accepted -> live p50 {:.2} ms p99 {:.2} ms; whole request p50 {:.2} ms p99 {:.2} ms",
        pct(live.clone(), 0.5),
        pct(live, 0.99),
        pct(replace.clone(), 0.5),
        pct(replace, 0.99)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
