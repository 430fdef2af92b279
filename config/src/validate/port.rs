//! Ports: network, MAC, fixed IPs, security groups, allowed address pairs.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{bad_unicast_mac, first_use, fixed_ip_problem, Index, Problems};
use crate::state::{DesiredState, FixedIp};

/// `device_owner`s whose `device_id` is a router id.
pub(super) const ROUTER_OWNERS: [&str; 5] = [
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
    "network:router_centralized_snat",
    "network:router_gateway",
];

pub(super) fn check_ports(state: &DesiredState, index: &Index<'_>, out: &mut Problems) {
    let mut macs: HashMap<(&str, crate::MacAddr), usize> = HashMap::new();
    let mut addresses: HashMap<(&str, IpAddr), usize> = HashMap::new();
    let known_hosts: Vec<&str> = state.hosts.iter().map(|h| h.host.as_str()).collect();

    for (i, port) in state.ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        let network = index
            .networks
            .get(port.network_id.as_str())
            .map(|&n| &state.networks[n]);
        if network.is_none() {
            out.push(
                format!("{at}.network_id"),
                format!("network \"{}\" does not exist", port.network_id),
            );
        }

        if let Some(msg) = bad_unicast_mac(port.mac_address) {
            out.push(format!("{at}.mac_address"), msg);
        } else if let Some(k) =
            first_use(&mut macs, (port.network_id.as_str(), port.mac_address), i)
        {
            let net_name = network.map_or(port.network_id.as_str(), |n| n.display_name());
            out.push(
                format!("{at}.mac_address"),
                format!(
                    "duplicate MAC {} also used by ports[{k}] on network {net_name}",
                    port.mac_address
                ),
            );
        }

        let router_port = ROUTER_OWNERS.contains(&port.device_owner.as_str());
        for (j, fixed) in port.fixed_ips.iter().enumerate() {
            let fat = format!("{at}.fixed_ips[{j}]");
            if check_fixed_ip(
                state,
                index,
                &port.network_id,
                fixed,
                router_port,
                &fat,
                out,
            ) {
                if let Some(k) = first_use(
                    &mut addresses,
                    (fixed.subnet_id.as_str(), fixed.ip_address),
                    i,
                ) {
                    let subnet = &state.subnets[index.subnets[fixed.subnet_id.as_str()]];
                    out.push(
                        format!("{fat}.ip_address"),
                        format!(
                            "{} is already used by ports[{k}] in subnet {}",
                            fixed.ip_address,
                            subnet.display_name()
                        ),
                    );
                }
            }
        }

        if router_port && !index.routers.contains_key(port.device_id.as_str()) {
            out.push(
                format!("{at}.device_id"),
                format!(
                    "a {} port belongs to a router, but router \"{}\" does not exist",
                    port.device_owner, port.device_id
                ),
            );
        }

        if let Some(host) = port.binding_host_id.as_deref() {
            if !host.is_empty() && !known_hosts.is_empty() && !known_hosts.contains(&host) {
                out.push(
                    format!("{at}.binding:host_id"),
                    format!("host {host} is not in hosts; add it with its vtep_ip so other hosts can reach this port"),
                );
            }
        }

        for (j, sg) in port.security_groups.iter().enumerate() {
            if !index.security_groups.contains_key(sg.as_str()) {
                out.push(
                    format!("{at}.security_groups[{j}]"),
                    format!("security group \"{sg}\" does not exist"),
                );
            }
        }
        // Neutron refuses a port whose groups mix stateful and stateless: one port is either
        // tracked or matched packet by packet.
        let kinds: Vec<bool> = port
            .security_groups
            .iter()
            .filter_map(|g| state.security_group(g).map(|g| g.stateful))
            .collect();
        if kinds.iter().any(|&k| k) && kinds.iter().any(|&k| !k) {
            out.push(
                format!("{at}.security_groups"),
                "stateful and stateless security groups cannot be combined on one port",
            );
        }
        let secured = network.map_or(port.port_security_enabled.unwrap_or(true), |n| {
            port.port_security(n)
        });
        if !secured && !port.security_groups.is_empty() {
            out.push(
                format!("{at}.security_groups"),
                "port security is disabled for this port, so it cannot have security groups; remove them or enable port_security_enabled",
            );
        }
        if !secured && !port.allowed_address_pairs.is_empty() {
            out.push(
                format!("{at}.allowed_address_pairs"),
                "port security is disabled for this port, so allowed address pairs mean nothing; remove them or enable port_security_enabled",
            );
        }
        for (j, pair) in port.allowed_address_pairs.iter().enumerate() {
            if let Some(msg) = pair.mac_address.and_then(bad_unicast_mac) {
                out.push(format!("{at}.allowed_address_pairs[{j}].mac_address"), msg);
            }
        }
    }
}

/// Checks one fixed IP of something on `network_id` (a port or a router
/// gateway): the subnet exists, is on that network and holds the address.
/// Returns whether it is fine.
pub(super) fn check_fixed_ip(
    state: &DesiredState,
    index: &Index<'_>,
    network_id: &str,
    fixed: &FixedIp,
    router_port: bool,
    at: &str,
    out: &mut Problems,
) -> bool {
    let Some(&s) = index.subnets.get(fixed.subnet_id.as_str()) else {
        out.push(
            format!("{at}.subnet_id"),
            format!("subnet \"{}\" does not exist", fixed.subnet_id),
        );
        return false;
    };
    let subnet = &state.subnets[s];
    if subnet.network_id != network_id {
        let name = |id: &str| {
            state
                .network(id)
                .map_or(id.to_string(), |n| n.display_name().to_string())
        };
        out.push(
            format!("{at}.subnet_id"),
            format!(
                "subnet {} is on network {}, not on this port's network {}",
                subnet.display_name(),
                name(&subnet.network_id),
                name(network_id)
            ),
        );
        return false;
    }
    if let Some(msg) = fixed_ip_problem(fixed.ip_address, subnet, router_port) {
        out.push(format!("{at}.ip_address"), msg);
        return false;
    }
    true
}
