//! Host config against desired state: the instance ports this host carries
//! are Neutron ports bound here (or not in the state yet: unbound), and this host's l2population entry (if the
//! state lists one) agrees with its own VTEP and DVR MAC.

use std::collections::HashMap;

use super::{first_use, Problems};
use crate::error::Problem;
use crate::host::{HostConfig, PortKind};
use crate::state::{DesiredState, OWNER_FIP_GATEWAY};

/// Cross-checks a (separately validated) host config against a desired
/// state. Paths start with `host.` or `state.` to say which file to edit.
/// Physical networks the host does not map are fine: such networks are
/// simply not reachable from this host.
pub fn validate_for_host(host: &HostConfig, state: &DesiredState) -> Vec<Problem> {
    let mut out = Problems(Vec::new());
    let mut carried = HashMap::new();
    for (i, port) in host.ports.iter().enumerate() {
        if port.kind != PortKind::Instance {
            continue;
        }
        let Some(iface_id) = port.iface_id.as_deref() else {
            continue;
        };
        let at = format!("host.ports[{i}].iface_id");
        if let Some(k) = first_use(&mut carried, iface_id, i) {
            out.push(
                &at,
                format!("neutron port {iface_id} is already carried by host.ports[{k}]"),
            );
            continue;
        }
        // A vNIC whose Neutron port is not (or no longer) in the state is unbound, as in OVS
        // an interface whose iface-id Neutron does not know: its traffic is dropped and counted
        // until the port is created, so ports can come and go through the API.
        let Some(neutron) = state.port(iface_id) else {
            continue;
        };
        match neutron.binding_host_id.as_deref() {
            Some(bound) if !bound.is_empty() && bound != host.host_id => out.push(
                &at,
                format!(
                    "neutron port {iface_id} is bound to host {bound}, not {}",
                    host.host_id
                ),
            ),
            _ => {}
        }
    }

    // A distributed router's interfaces have the same MAC on every host: routed frames leave
    // a host with its own DVR MAC instead, so a host routing for a distributed router needs one.
    let has_dvr_mac = host.dvr_mac.is_some()
        || state
            .hosts
            .iter()
            .any(|h| h.host == host.host_id && h.dvr_mac.is_some());
    if !has_dvr_mac {
        if let Some((i, r)) = state.routers.iter().enumerate().find(|(_, r)| {
            r.distributed
                && state.ports.iter().any(|p| {
                    p.device_id == r.id && p.device_owner == "network:router_interface_distributed"
                })
        }) {
            out.push(
                "host.dvr_mac",
                format!(
                    "missing: state.routers[{i}] ({}) is distributed, and routed frames leave each host with that host's unique DVR MAC (set host.dvr_mac or state.hosts[].dvr_mac)",
                    r.id
                ),
            );
        }
    }

    // Floating IPs of the instances this host carries: answered and translated here, on the
    // external network, by the host's floating IP gateway port (Neutron's fg- port).
    for (i, fip) in state.floatingips.iter().enumerate() {
        let Some(port_id) = fip.port_id.as_deref() else {
            continue;
        };
        let carried_here = host
            .ports
            .iter()
            .any(|p| p.kind == PortKind::Instance && p.iface_id.as_deref() == Some(port_id));
        if !carried_here {
            continue;
        }
        let at = format!("state.floatingips[{i}]");
        let Some(net) = state.network(&fip.floating_network_id) else {
            continue;
        };
        let mapped = net
            .physical_network
            .as_ref()
            .is_some_and(|pn| host.bridge_mappings.contains_key(pn));
        if !mapped {
            out.push(
                format!("{at}.floating_network_id"),
                format!(
                    "port {port_id} is carried here, but external network {} is not: its physical network {} is not in host.bridge_mappings",
                    net.display_name(),
                    net.physical_network.as_deref().unwrap_or("(none)")
                ),
            );
            continue;
        }
        let gw = state.fip_gateway_port(&host.host_id, &net.id);
        let has_v4 = gw.is_some_and(|g| {
            g.fixed_ips.iter().any(|f| {
                f.ip_address.is_ipv4()
                    && state.subnet(&f.subnet_id).is_some_and(|sn| {
                        sn.network_id == net.id && sn.cidr.contains(&f.ip_address)
                    })
            })
        });
        if !has_v4 {
            out.push(
                at,
                format!(
                    "port {port_id} is carried here, so host {} needs a floating IP gateway port on network {}: a port with device_owner {OWNER_FIP_GATEWAY}, binding:host_id {} and an IPv4 address on one of the network's subnets (Neutron creates one per host and external network)",
                    host.host_id,
                    net.display_name(),
                    host.host_id
                ),
            );
        }
    }

    if let Some((i, entry)) = state
        .hosts
        .iter()
        .enumerate()
        .find(|(_, h)| h.host == host.host_id)
    {
        if let Some(vtep) = host.local_vtep_ip {
            if vtep != entry.vtep_ip {
                out.push(
                    format!("state.hosts[{i}].vtep_ip"),
                    format!(
                        "{} differs from host.local_vtep_ip {vtep}; other hosts would tunnel to the wrong address",
                        entry.vtep_ip
                    ),
                );
            }
        }
        if let (Some(mine), Some(listed)) = (host.dvr_mac, entry.dvr_mac) {
            if mine != listed {
                out.push(
                    format!("state.hosts[{i}].dvr_mac"),
                    format!("{listed} differs from host.dvr_mac {mine}"),
                );
            }
        }
    }
    out.0
}
