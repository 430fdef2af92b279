//! Whole-document validation. Every check runs and every problem is
//! collected (never stop at the first), so one edit round fixes them all.
//!
//! Paths name the collection and index as in the document
//! (`networks[1].provider:segmentation_id`). The rules follow Neutron's own
//! API validation where it has one, so a document Neutron would reject is
//! rejected here too, with a message that says what to change.
//!
//! Split by object family: `network` (networks, subnets), `port`, `l3`
//! (routers, floating IPs), `secgroup`, `hostcfg` (the TOML host config)
//! and `cross` (host config against desired state).

mod cross;
mod hostcfg;
mod l3;
mod network;
mod port;
mod secgroup;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::Problem;
use crate::state::{DesiredState, Subnet};

pub use cross::validate_for_host;

/// Where problems are collected.
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }
}

/// Id -> index of its first occurrence, for each collection that others refer to.
pub(crate) struct Index<'a> {
    pub networks: HashMap<&'a str, usize>,
    pub subnets: HashMap<&'a str, usize>,
    pub ports: HashMap<&'a str, usize>,
    pub routers: HashMap<&'a str, usize>,
    pub security_groups: HashMap<&'a str, usize>,
}

impl DesiredState {
    /// Checks every rule of the desired state and returns every problem
    /// found, in document order; empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Problems(Vec::new());
        let index = Index {
            networks: ids(&self.networks, "networks", |n| &n.id, &mut out),
            subnets: ids(&self.subnets, "subnets", |s| &s.id, &mut out),
            ports: ids(&self.ports, "ports", |p| &p.id, &mut out),
            routers: ids(&self.routers, "routers", |r| &r.id, &mut out),
            security_groups: ids(
                &self.security_groups,
                "security_groups",
                |g| &g.id,
                &mut out,
            ),
        };
        ids(&self.floatingips, "floatingips", |f| &f.id, &mut out);
        ids(
            &self.security_group_rules,
            "security_group_rules",
            |r| &r.id,
            &mut out,
        );
        network::check_networks(self, &mut out);
        network::check_subnets(self, &index, &mut out);
        port::check_ports(self, &index, &mut out);
        l3::check_routers(self, &index, &mut out);
        l3::check_floatingips(self, &index, &mut out);
        secgroup::check_rules(self, &index, &mut out);
        check_hosts(self, &mut out);
        out.0
    }
}

/// Indexes `items` by id, reporting empty and duplicate ids.
fn ids<'a, T>(
    items: &'a [T],
    key: &str,
    id: impl Fn(&'a T) -> &'a str,
    out: &mut Problems,
) -> HashMap<&'a str, usize> {
    let mut seen = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let id = id(item);
        if id.is_empty() {
            out.push(format!("{key}[{i}].id"), "id must not be empty");
        } else if let Some(first) = seen.get(id) {
            out.push(
                format!("{key}[{i}].id"),
                format!("duplicate id \"{id}\", also used by {key}[{first}]"),
            );
        } else {
            seen.insert(id, i);
        }
    }
    seen
}

/// The l2population host list: names, VTEPs and DVR MACs are all unique.
fn check_hosts(state: &DesiredState, out: &mut Problems) {
    let mut names = HashMap::new();
    let mut vteps = HashMap::new();
    let mut macs = HashMap::new();
    for (i, h) in state.hosts.iter().enumerate() {
        let at = format!("hosts[{i}]");
        if h.host.is_empty() {
            out.push(format!("{at}.host"), "host must not be empty");
        } else if let Some(k) = first_use(&mut names, h.host.as_str(), i) {
            out.push(
                format!("{at}.host"),
                format!("host {} is listed twice, also at hosts[{k}]", h.host),
            );
        }
        let ip = h.vtep_ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
            out.push(
                format!("{at}.vtep_ip"),
                format!(
                    "{ip} cannot be a tunnel endpoint; use the host's underlay unicast address"
                ),
            );
        }
        if let Some(k) = first_use(&mut vteps, ip, i) {
            out.push(
                format!("{at}.vtep_ip"),
                format!("VTEP {ip} is already used by hosts[{k}]"),
            );
        }
        if let Some(mac) = h.dvr_mac {
            if let Some(msg) = bad_unicast_mac(mac) {
                out.push(format!("{at}.dvr_mac"), msg);
            }
            if let Some(k) = first_use(&mut macs, mac, i) {
                out.push(
                    format!("{at}.dvr_mac"),
                    format!("DVR MAC {mac} is already used by hosts[{k}]; each host needs its own"),
                );
            }
        }
    }
}

/// Records `key` as first used at `i`, or returns where it was first used.
pub(crate) fn first_use<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, usize>,
    key: K,
    i: usize,
) -> Option<usize> {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(i);
            None
        }
    }
}

/// Why `mac` cannot be a station address, if it cannot.
pub(crate) fn bad_unicast_mac(mac: crate::MacAddr) -> Option<String> {
    if mac.is_multicast() {
        Some(format!(
            "MAC {mac} is a multicast address (lowest bit of the first octet set); use a unicast MAC such as fa:16:3e:xx:xx:xx"
        ))
    } else if mac.is_zero() {
        Some(format!(
            "MAC {mac} is all zeros; use a unicast MAC such as fa:16:3e:xx:xx:xx"
        ))
    } else {
        None
    }
}

/// The address family of an address, in words.
pub(crate) fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Whether `net` has host bits set; returns the network it should be.
pub(crate) fn host_bits(net: &IpNet) -> Option<IpNet> {
    let trunc = net.trunc();
    (trunc != *net).then_some(trunc)
}

/// Checks that `ip` may be a fixed address in `subnet`: inside it, not its
/// network address (IPv6 router ports excepted, as in Neutron) and not its
/// IPv4 broadcast address. Returns the message if not.
pub(crate) fn fixed_ip_problem(ip: IpAddr, subnet: &Subnet, router_port: bool) -> Option<String> {
    let cidr = subnet.cidr.trunc();
    let name = subnet.display_name();
    if !cidr.contains(&ip) {
        return Some(format!("{ip} is not in subnet {name} ({})", subnet.cidr));
    }
    let small_v4 = matches!(cidr, IpNet::V4(n) if n.prefix_len() >= 31);
    let small_v6 = matches!(cidr, IpNet::V6(n) if n.prefix_len() >= 127);
    let v6_router_port = cidr.addr().is_ipv6() && router_port;
    let tiny = small_v4 || small_v6;
    if ip == cidr.network() && !tiny && !v6_router_port {
        return Some(format!(
            "{ip} is the network address of subnet {name} ({}); use a host address",
            subnet.cidr
        ));
    }
    if cidr.addr().is_ipv4() && !small_v4 && ip == cidr.broadcast() {
        return Some(format!(
            "{ip} is the broadcast address of subnet {name} ({}); use a host address",
            subnet.cidr
        ));
    }
    None
}
