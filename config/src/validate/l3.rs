//! Routers (gateway, static routes) and floating IPs.

use std::collections::HashMap;
use std::net::IpAddr;

use super::port::check_fixed_ip;
use super::{family, first_use, host_bits, Index, Problems};
use crate::state::DesiredState;

pub(super) fn check_routers(state: &DesiredState, index: &Index<'_>, out: &mut Problems) {
    for (i, router) in state.routers.iter().enumerate() {
        let at = format!("routers[{i}]");
        if let Some(gw) = &router.external_gateway_info {
            let gat = format!("{at}.external_gateway_info");
            match index.networks.get(gw.network_id.as_str()) {
                None => out.push(
                    format!("{gat}.network_id"),
                    format!("network \"{}\" does not exist", gw.network_id),
                ),
                Some(&n) if !state.networks[n].router_external => out.push(
                    format!("{gat}.network_id"),
                    format!(
                        "network {} is not router:external; a router gateway needs an external network",
                        state.networks[n].display_name()
                    ),
                ),
                Some(_) => {}
            }
            for (j, fixed) in gw.external_fixed_ips.iter().enumerate() {
                let fat = format!("{gat}.external_fixed_ips[{j}]");
                check_fixed_ip(state, index, &gw.network_id, fixed, true, &fat, out);
            }
        }
        for (j, route) in router.routes.iter().enumerate() {
            let rat = format!("{at}.routes[{j}]");
            if let Some(net) = host_bits(&route.destination) {
                out.push(
                    format!("{rat}.destination"),
                    format!(
                        "{} has host bits set; use the network address {net}",
                        route.destination
                    ),
                );
            }
            // The next hop must be on one of the router's own subnets (an interface port's
            // subnet), or the route can never be used.
            let on_link = state
                .ports
                .iter()
                .filter(|p| {
                    p.device_id == router.id
                        && matches!(
                            p.device_owner.as_str(),
                            "network:router_interface_distributed" | "network:router_interface"
                        )
                })
                .flat_map(|p| p.fixed_ips.iter())
                .filter_map(|f| state.subnet(&f.subnet_id))
                .any(|sn| sn.cidr.contains(&route.nexthop));
            if !on_link && family(route.nexthop) == family(route.destination.addr()) {
                out.push(
                    format!("{rat}.nexthop"),
                    format!(
                        "nexthop {} is on none of the router's interface subnets; add an interface on its subnet",
                        route.nexthop
                    ),
                );
            }
            let dest_family = family(route.destination.addr());
            if family(route.nexthop) != dest_family {
                out.push(
                    format!("{rat}.nexthop"),
                    format!(
                        "nexthop {} is {} but destination {} is {dest_family}",
                        route.nexthop,
                        family(route.nexthop),
                        route.destination
                    ),
                );
            }
        }
    }
}

pub(super) fn check_floatingips(state: &DesiredState, index: &Index<'_>, out: &mut Problems) {
    let mut addresses = HashMap::new();
    let mut mappings: HashMap<(&str, IpAddr), usize> = HashMap::new();
    for (i, fip) in state.floatingips.iter().enumerate() {
        let at = format!("floatingips[{i}]");
        let addr = IpAddr::V4(fip.floating_ip_address);

        if let Some(k) = first_use(&mut addresses, fip.floating_ip_address, i) {
            out.push(
                format!("{at}.floating_ip_address"),
                format!("{addr} is already used by floatingips[{k}]"),
            );
        }

        match index.networks.get(fip.floating_network_id.as_str()) {
            None => out.push(
                format!("{at}.floating_network_id"),
                format!("network \"{}\" does not exist", fip.floating_network_id),
            ),
            Some(&n) => {
                let net = &state.networks[n];
                if !net.router_external {
                    out.push(
                        format!("{at}.floating_network_id"),
                        format!(
                            "network {} is not router:external; floating IPs come from an external network",
                            net.display_name()
                        ),
                    );
                } else if !state
                    .subnets_of(&net.id)
                    .any(|s| s.cidr.trunc().contains(&addr))
                {
                    let cidrs: Vec<String> = state
                        .subnets_of(&net.id)
                        .filter(|s| s.cidr.addr().is_ipv4())
                        .map(|s| s.cidr.to_string())
                        .collect();
                    let within = if cidrs.is_empty() {
                        "it has no IPv4 subnet".to_string()
                    } else {
                        format!("its IPv4 subnets are {}", cidrs.join(", "))
                    };
                    out.push(
                        format!("{at}.floating_ip_address"),
                        format!(
                            "{addr} is not in any subnet of network {}; {within}",
                            net.display_name()
                        ),
                    );
                }
            }
        }

        if let Some(router_id) = &fip.router_id {
            if !index.routers.contains_key(router_id.as_str()) {
                out.push(
                    format!("{at}.router_id"),
                    format!("router \"{router_id}\" does not exist"),
                );
            }
        }

        let Some(port_id) = &fip.port_id else {
            if let Some(fixed) = fip.fixed_ip_address {
                out.push(
                    format!("{at}.fixed_ip_address"),
                    format!("fixed_ip_address {fixed} needs a port_id to say whose address it is"),
                );
            }
            continue;
        };
        let Some(&p) = index.ports.get(port_id.as_str()) else {
            out.push(
                format!("{at}.port_id"),
                format!("port \"{port_id}\" does not exist"),
            );
            continue;
        };
        let port = &state.ports[p];
        let v4: Vec<IpAddr> = port
            .fixed_ips
            .iter()
            .map(|f| f.ip_address)
            .filter(IpAddr::is_ipv4)
            .collect();
        let fixed = match fip.fixed_ip_address {
            Some(fixed) => {
                if !v4.contains(&IpAddr::V4(fixed)) {
                    out.push(
                        format!("{at}.fixed_ip_address"),
                        format!(
                            "{fixed} is not a fixed IP of port {}; its IPv4 addresses are: {}",
                            port.display_name(),
                            join_or_none(&v4)
                        ),
                    );
                    continue;
                }
                IpAddr::V4(fixed)
            }
            None => match v4.as_slice() {
                [only] => *only,
                [] => {
                    out.push(
                        format!("{at}.port_id"),
                        format!(
                            "port {} has no IPv4 address to map the floating IP to",
                            port.display_name()
                        ),
                    );
                    continue;
                }
                several => {
                    out.push(
                        format!("{at}.fixed_ip_address"),
                        format!(
                            "port {} has several IPv4 addresses ({}); set fixed_ip_address to the one to map",
                            port.display_name(),
                            join_or_none(several)
                        ),
                    );
                    continue;
                }
            },
        };
        if let Some(k) = first_use(&mut mappings, (port_id.as_str(), fixed), i) {
            out.push(
                format!("{at}.port_id"),
                format!(
                    "{fixed} of port {} already has floating IP floatingips[{k}]; a fixed IP maps to one floating IP",
                    port.display_name()
                ),
            );
        }
        // Its traffic is translated by the router between the port's network and the
        // floating network (Neutron refuses the association without one).
        if state.fip_router(fip).is_none() {
            let (path, what) = match &fip.router_id {
                Some(id) if index.routers.contains_key(id.as_str()) => (
                    format!("{at}.router_id"),
                    format!(
                        "router {} does not connect",
                        state.router(id).map_or(id.as_str(), |r| r.display_name())
                    ),
                ),
                Some(_) => continue,
                None => (format!("{at}.port_id"), "no router connects".to_string()),
            };
            let name = |id: &str| {
                state
                    .network(id)
                    .map_or(id.to_string(), |n| n.display_name().to_string())
            };
            out.push(
                path,
                format!(
                    "{what} network {} of port {} to external network {}: it needs an interface on the first and its gateway on the second",
                    name(&port.network_id),
                    port.display_name(),
                    name(&fip.floating_network_id)
                ),
            );
        }
    }
}

fn join_or_none(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        "none".to_string()
    } else {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
