//! Host config against desired state: the instance ports this host carries
//! are Neutron ports bound here, and this host's l2population entry (if the
//! state lists one) agrees with its own VTEP and DVR MAC.

use std::collections::HashMap;

use super::{first_use, Problems};
use crate::error::Problem;
use crate::host::{HostConfig, PortKind};
use crate::state::DesiredState;

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
        let Some(neutron) = state.port(iface_id) else {
            out.push(
                &at,
                format!("neutron port {iface_id} does not exist in the desired state; check the id or add the port to state.ports"),
            );
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
