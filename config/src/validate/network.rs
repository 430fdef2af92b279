//! Networks (segmentation, MTU) and subnets (CIDR, gateway, pools, IPv6 modes).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{family, first_use, host_bits, Index, Problems};
use crate::state::{DesiredState, NetworkType};

const VLAN_RANGE: std::ops::RangeInclusive<u32> = 1..=4094;
const VNI_RANGE: std::ops::RangeInclusive<u32> = 1..=16_777_215;
const MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=9216;
/// RFC 8200 section 5: every IPv6 link carries at least 1280 bytes.
const IPV6_MIN_MTU: u16 = 1280;
const IPV6_MODES: [&str; 3] = ["slaac", "dhcpv6-stateful", "dhcpv6-stateless"];

pub(super) fn check_networks(state: &DesiredState, out: &mut Problems) {
    let mut vlans = HashMap::new();
    let mut flats = HashMap::new();
    let mut vnis = HashMap::new();
    for (i, net) in state.networks.iter().enumerate() {
        let at = format!("networks[{i}]");
        let physnet_at = format!("{at}.provider:physical_network");
        let seg_at = format!("{at}.provider:segmentation_id");

        if let Some(mtu) = net.mtu {
            if !MTU_RANGE.contains(&mtu) {
                out.push(
                    format!("{at}.mtu"),
                    format!("MTU {mtu} is out of range 68..=9216"),
                );
            }
        }
        if let Some(v6) = state.subnets_of(&net.id).find(|s| s.cidr.addr().is_ipv6()) {
            let mtu = net.effective_mtu();
            if mtu < IPV6_MIN_MTU {
                out.push(
                    format!("{at}.mtu"),
                    format!(
                        "MTU {mtu} is below 1280, the IPv6 minimum, and the network has IPv6 subnet {}; raise the MTU or remove the subnet",
                        v6.display_name()
                    ),
                );
            }
        }
        if net.physical_network.as_deref() == Some("") {
            out.push(&physnet_at, "physical network name must not be empty");
        }

        match net.network_type {
            NetworkType::Flat => {
                if net.physical_network.is_none() {
                    out.push(
                        &physnet_at,
                        "a flat network needs a physical network (a name from the hosts' bridge_mappings)",
                    );
                }
                if let Some(seg) = net.segmentation_id {
                    out.push(
                        &seg_at,
                        format!("a flat network is untagged and has no segmentation id; remove {seg} or make the network vlan"),
                    );
                }
                if let Some(physnet) = net.physical_network.as_deref() {
                    if let Some(k) = first_use(&mut flats, physnet, i) {
                        out.push(
                            &physnet_at,
                            format!("physical network {physnet} already carries flat network networks[{k}]; only one untagged network fits on a physical network"),
                        );
                    }
                }
            }
            NetworkType::Vlan => {
                if net.physical_network.is_none() {
                    out.push(
                        &physnet_at,
                        "a vlan network needs a physical network (a name from the hosts' bridge_mappings)",
                    );
                }
                match net.segmentation_id {
                    None => out.push(&seg_at, "a vlan network needs a VLAN id (1..=4094)"),
                    Some(vid) if !VLAN_RANGE.contains(&vid) => {
                        out.push(&seg_at, format!("VLAN id {vid} is out of range 1..=4094"))
                    }
                    Some(vid) => {
                        if let Some(physnet) = net.physical_network.as_deref() {
                            if let Some(k) = first_use(&mut vlans, (physnet, vid), i) {
                                out.push(
                                    &seg_at,
                                    format!("VLAN {vid} on physical network {physnet} is already used by networks[{k}]"),
                                );
                            }
                        }
                    }
                }
            }
            NetworkType::Vxlan => {
                if let Some(physnet) = &net.physical_network {
                    out.push(
                        &physnet_at,
                        format!("a vxlan network runs over the hosts' tunnels, not a physical network; remove {physnet:?}"),
                    );
                }
                match net.segmentation_id {
                    None => out.push(&seg_at, "a vxlan network needs a VNI (1..=16777215)"),
                    Some(vni) if !VNI_RANGE.contains(&vni) => {
                        out.push(&seg_at, format!("VNI {vni} is out of range 1..=16777215"))
                    }
                    Some(vni) => {
                        if let Some(k) = first_use(&mut vnis, vni, i) {
                            out.push(
                                &seg_at,
                                format!("VNI {vni} is already used by networks[{k}]"),
                            );
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn check_subnets(state: &DesiredState, index: &Index<'_>, out: &mut Problems) {
    for (i, subnet) in state.subnets.iter().enumerate() {
        let at = format!("subnets[{i}]");
        let cidr = subnet.cidr.trunc();

        if !index.networks.contains_key(subnet.network_id.as_str()) {
            out.push(
                format!("{at}.network_id"),
                format!("network \"{}\" does not exist", subnet.network_id),
            );
        }
        if let Some(net) = host_bits(&subnet.cidr) {
            out.push(
                format!("{at}.cidr"),
                format!(
                    "{} has host bits set; use the network address {net}",
                    subnet.cidr
                ),
            );
        }
        let cidr_version = if cidr.addr().is_ipv4() { 4 } else { 6 };
        match subnet.ip_version {
            4 | 6 if subnet.ip_version != cidr_version => out.push(
                format!("{at}.ip_version"),
                format!(
                    "ip_version is {} but cidr {} is IPv{cidr_version}",
                    subnet.ip_version, subnet.cidr
                ),
            ),
            4 | 6 => {}
            v => out.push(
                format!("{at}.ip_version"),
                format!("ip_version must be 4 or 6, not {v}"),
            ),
        }

        if let Some(gw) = subnet.gateway_ip {
            if let Some(msg) = address_problem(gw, &cidr, "gateway") {
                out.push(format!("{at}.gateway_ip"), msg);
            }
        }

        check_pools(subnet, &cidr, &at, out);

        for (j, dns) in subnet.dns_nameservers.iter().enumerate() {
            if subnet.dns_nameservers[..j].contains(dns) {
                out.push(
                    format!("{at}.dns_nameservers[{j}]"),
                    format!("{dns} is listed twice"),
                );
            }
        }

        check_ipv6_modes(subnet, cidr_version, &at, out);

        // Subnets of one network share one L2 segment and one router port
        // per subnet; overlapping ranges would make routing ambiguous.
        for (k, other) in state.subnets[..i].iter().enumerate() {
            let other_cidr = other.cidr.trunc();
            if other.network_id == subnet.network_id
                && (other_cidr.contains(&cidr.network()) || cidr.contains(&other_cidr.network()))
            {
                out.push(
                    format!("{at}.cidr"),
                    format!(
                        "{} overlaps {} of subnets[{k}] on the same network",
                        subnet.cidr, other.cidr
                    ),
                );
            }
        }
    }
}

/// Why `ip` cannot be the `what` (gateway, pool start...) of `cidr`, if it cannot.
fn address_problem(ip: IpAddr, cidr: &IpNet, what: &str) -> Option<String> {
    if !cidr.contains(&ip) {
        return Some(format!("{what} {ip} is not in {cidr}"));
    }
    let tiny = match cidr {
        IpNet::V4(n) => n.prefix_len() >= 31,
        IpNet::V6(n) => n.prefix_len() >= 127,
    };
    if !tiny && ip == cidr.network() {
        return Some(format!("{what} {ip} is the network address of {cidr}"));
    }
    if !tiny && cidr.addr().is_ipv4() && ip == cidr.broadcast() {
        return Some(format!("{what} {ip} is the broadcast address of {cidr}"));
    }
    None
}

fn check_pools(subnet: &crate::state::Subnet, cidr: &IpNet, at: &str, out: &mut Problems) {
    for (j, pool) in subnet.allocation_pools.iter().enumerate() {
        let pat = format!("{at}.allocation_pools[{j}]");
        let mut ok = true;
        for (field, ip) in [("start", pool.start), ("end", pool.end)] {
            if let Some(msg) = address_problem(ip, cidr, &format!("pool {field}")) {
                out.push(format!("{pat}.{field}"), msg);
                ok = false;
            }
        }
        if !ok {
            continue;
        }
        if pool.start > pool.end {
            out.push(
                &pat,
                format!("start {} is after end {}; swap them", pool.start, pool.end),
            );
            continue;
        }
        if let Some(gw) = subnet.gateway_ip {
            if pool.start <= gw && gw <= pool.end {
                out.push(
                    &pat,
                    format!(
                        "pool {}-{} contains the gateway {gw}; keep the gateway out of the pools",
                        pool.start, pool.end
                    ),
                );
            }
        }
        for (k, other) in subnet.allocation_pools[..j].iter().enumerate() {
            if family(other.start) == family(pool.start)
                && other.start <= other.end
                && pool.start <= other.end
                && other.start <= pool.end
            {
                out.push(
                    &pat,
                    format!(
                        "pool {}-{} overlaps allocation_pools[{k}] ({}-{})",
                        pool.start, pool.end, other.start, other.end
                    ),
                );
            }
        }
    }
}

fn check_ipv6_modes(subnet: &crate::state::Subnet, version: u8, at: &str, out: &mut Problems) {
    let modes = [
        ("ipv6_ra_mode", subnet.ipv6_ra_mode.as_deref()),
        ("ipv6_address_mode", subnet.ipv6_address_mode.as_deref()),
    ];
    for (field, mode) in modes {
        let Some(mode) = mode else { continue };
        if version == 4 {
            out.push(
                format!("{at}.{field}"),
                format!("{field} applies to IPv6 subnets only; remove it"),
            );
        } else if !IPV6_MODES.contains(&mode) {
            out.push(
                format!("{at}.{field}"),
                format!(
                    "unknown mode {mode:?}: expected slaac, dhcpv6-stateful or dhcpv6-stateless"
                ),
            );
        }
    }
    if let (Some(ra), Some(addr)) = (&subnet.ipv6_ra_mode, &subnet.ipv6_address_mode) {
        if version == 6 && ra != addr {
            out.push(
                format!("{at}.ipv6_address_mode"),
                format!("ipv6_ra_mode {ra} with ipv6_address_mode {addr} is not a valid combination; set both to the same mode"),
            );
        }
    }
}
