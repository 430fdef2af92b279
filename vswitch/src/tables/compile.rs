//! Desired state + host config -> [`Tables`]. Runs on the control thread, never on a worker.
//! The inputs are already validated (`vswitch_config`), so compilation cannot fail on them.
use super::*;
use std::net::{IpAddr, Ipv6Addr};
use vswitch_config::{DesiredState, HostConfig, NetworkType};

/// Frame overhead above the IP MTU: Ethernet header plus one 802.1Q tag.
const L2_OVERHEAD: usize = 14 + 4;
/// Largest frame accepted where no network bounds it (jumbo).
const MAX_FRAME: usize = 9216 + L2_OVERHEAD;

/// The EUI-64 link-local address (fe80::/64) Linux and Neutron derive from a MAC (RFC 4291 App. A).
pub fn link_local_from_mac(m: MacAddr) -> Ipv6Addr {
    let o = m.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        o[0] ^ 0x02,
        o[1],
        o[2],
        0xff,
        0xfe,
        o[3],
        o[4],
        o[5],
    ])
}

/// Compiles one generation of tables. `port_macs` are the ports' own MACs (from the NICs), in
/// host config order; the overlay port's is the outer source MAC of every tunnel.
pub fn compile(
    host: &HostConfig,
    state: &DesiredState,
    generation: u64,
    port_macs: &[MacAddr],
) -> Tables {
    let mut networks: Vec<NetworkEntry> = state
        .networks
        .iter()
        .map(|n| NetworkEntry {
            id: n.id.clone(),
            name: n.display_name().to_owned(),
            up: n.admin_state_up,
            segment: match n.network_type {
                NetworkType::Flat => Segment::Flat,
                NetworkType::Vlan => Segment::Vlan(n.segmentation_id.unwrap_or(0) as u16),
                NetworkType::Vxlan => Segment::Vxlan(n.segmentation_id.unwrap_or(0)),
            },
            mtu: n.effective_mtu(),
            provider_port: None,
            flood: Vec::new(),
            flood_vteps: Vec::new(),
        })
        .collect();
    let net_idx = |id: &str| {
        state
            .networks
            .iter()
            .position(|n| n.id == id)
            .map(|i| i as NetIdx)
    };

    // Physnets mapped on this host, each with its flat network and VLAN map.
    let mut physnets = Vec::new();
    for (name, port_name) in &host.bridge_mappings {
        let Some(port) = host.ports.iter().position(|p| &p.name == port_name) else {
            continue;
        };
        let mut pn = PhysnetEntry {
            name: name.clone(),
            port: port as u16,
            flat: NO_NET,
            vlans: Box::new([NO_NET; 4096]),
        };
        for (i, n) in state.networks.iter().enumerate() {
            if n.physical_network.as_deref() != Some(name.as_str()) {
                continue;
            }
            match n.network_type {
                NetworkType::Flat => pn.flat = i as NetIdx,
                NetworkType::Vlan => {
                    if let Some(vid) = n.segmentation_id.filter(|v| (1..4095).contains(v)) {
                        pn.vlans[vid as usize] = i as NetIdx;
                    }
                }
                NetworkType::Vxlan => continue,
            }
            networks[i].provider_port = Some(port as u16);
        }
        physnets.push(pn);
    }

    let mut fdb = FxHashMap::default();
    let mut ports = Vec::with_capacity(host.ports.len());
    // Remote groups are expanded once and shared by every port's classifier.
    let (groups, group_index) = super::secgroup::expand_groups(state);
    let groups = std::sync::Arc::new(groups);
    for (pi, pc) in host.ports.iter().enumerate() {
        let mut e = PortEntry {
            name: pc.name.clone(),
            kind: pc.kind,
            up: true,
            network: NO_NET,
            physnet: physnets
                .iter()
                .position(|p| p.port == pi as u16)
                .map(|i| i as u16),
            security: None,
            learn: pc.kind == PortKind::Provider,
            max_frame: MAX_FRAME,
            iface_id: pc.iface_id.clone(),
            mac: None,
            firewall: None,
        };
        if pc.kind == PortKind::Provider {
            // The largest MTU of the networks this provider port carries bounds its frames.
            let mtu = networks
                .iter()
                .filter(|n| n.provider_port == Some(pi as u16))
                .map(|n| n.mtu)
                .max();
            if let Some(mtu) = mtu {
                e.max_frame = mtu as usize + L2_OVERHEAD;
            }
        }
        let neutron = pc
            .iface_id
            .as_deref()
            .and_then(|id| state.ports.iter().find(|p| p.id == id));
        if let (PortKind::Instance, Some(np)) = (pc.kind, neutron) {
            if let (Some(ni), Some(net)) = (net_idx(&np.network_id), state.network(&np.network_id))
            {
                e.network = ni;
                e.mac = Some(np.mac_address);
                e.up = np.admin_state_up;
                e.max_frame = net.effective_mtu() as usize + 14;
                fdb.insert(fdb_key(ni, np.mac_address), pi as u16);
                for aap in &np.allowed_address_pairs {
                    if let Some(m) = aap.mac_address {
                        fdb.entry(fdb_key(ni, m)).or_insert(pi as u16);
                    }
                }
                if np.port_security(net) {
                    e.security = Some(port_security(np));
                    e.firewall = Some(std::sync::Arc::new(port_firewall(
                        host,
                        state,
                        pi,
                        np,
                        &groups,
                        &group_index,
                    )));
                } else {
                    e.learn = true;
                }
                if np.admin_state_up {
                    networks[ni as usize].flood.push(pi as u16);
                }
            }
        }
        ports.push(e);
    }
    for n in networks.iter_mut() {
        if let Some(p) = n.provider_port {
            n.flood.push(p);
        }
    }
    let mut t = Tables {
        generation,
        ports,
        networks,
        physnets,
        fdb,
        vteps: Vec::new(),
        vtep_by_ip: FxHashMap::default(),
        vni: FxHashMap::default(),
        arp: FxHashMap::default(),
        overlay: None,
        l3: Default::default(),
        firewall: false,
        flow_cache: false,
    };
    t.firewall = t.ports.iter().any(|p| p.firewall.is_some());
    compile_overlay(host, state, port_macs, &mut t);
    super::router::compile_routers(host, state, &mut t);
    t.flow_cache = t.firewall || !t.l3.rifs.is_empty();
    t
}

/// VXLAN: the overlay port, remote VTEPs, VNIs, l2population (remote MACs and flood lists) and
/// the ARP responder.
fn compile_overlay(host: &HostConfig, state: &DesiredState, port_macs: &[MacAddr], t: &mut Tables) {
    let (Some(port), Some(local_ip)) = (
        host.ports.iter().position(|p| p.kind == PortKind::Overlay),
        host.local_vtep_ip,
    ) else {
        return;
    };
    let o = &host.overlay;
    t.overlay = Some(OverlayEntry {
        port: port as u16,
        local_ip,
        mac: port_macs
            .get(port)
            .copied()
            .unwrap_or(MacAddr([0x02, 0, 0, 0, 0, 1])),
        mask: if o.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - o.prefix_len.min(32) as u32)
        },
        gateway: o.gateway,
        mtu: o.mtu,
        ttl: o.ttl,
        df: o.df,
        udp_checksum: o.udp_checksum,
        udp_port: o.udp_port,
        learn: o.learn,
    });
    // The overlay port carries no network of its own; decapsulation gives each frame one.
    t.ports[port].learn = false;
    for h in state
        .hosts
        .iter()
        .filter(|h| h.host != host.host_id && h.vtep_ip != local_ip)
    {
        if t.vteps.len() >= (VTEP_BIT - 1) as usize {
            break;
        }
        t.vtep_by_ip
            .insert(u32::from(h.vtep_ip), t.vteps.len() as u16);
        let (header, ip_sum) = outer_header(t.overlay.as_ref().expect("set above"), h.vtep_ip);
        t.vteps.push(VtepEntry {
            host: h.host.clone(),
            ip: h.vtep_ip,
            header,
            ip_sum,
        });
    }
    let vtep_of_host = |name: &str| {
        t.vteps
            .iter()
            .position(|v| v.host == name)
            .map(|i| i as u16)
    };
    let mut remote: Vec<(usize, u16, &vswitch_config::Port)> = Vec::new();
    for (ni, n) in state.networks.iter().enumerate() {
        if n.network_type != NetworkType::Vxlan {
            continue;
        }
        if let Some(vni) = n.segmentation_id {
            t.vni.insert(vni, ni as NetIdx);
        }
    }
    for p in &state.ports {
        let Some(ni) = state.networks.iter().position(|n| n.id == p.network_id) else {
            continue;
        };
        if state.networks[ni].network_type != NetworkType::Vxlan {
            continue;
        }
        for f in &p.fixed_ips {
            if let IpAddr::V4(a) = f.ip_address {
                t.arp
                    .insert((ni as u64) << 32 | u32::from(a) as u64, p.mac_address);
            }
        }
        let bound = p.binding_host_id.as_deref();
        if let Some(v) = bound.filter(|h| *h != host.host_id).and_then(vtep_of_host) {
            remote.push((ni, v, p));
        }
    }
    for (ni, v, p) in remote {
        let dest = VTEP_BIT | v;
        t.fdb
            .entry(fdb_key(ni as NetIdx, p.mac_address))
            .or_insert(dest);
        for aap in &p.allowed_address_pairs {
            if let Some(m) = aap.mac_address {
                t.fdb.entry(fdb_key(ni as NetIdx, m)).or_insert(dest);
            }
        }
        if p.admin_state_up && !t.networks[ni].flood_vteps.contains(&v) {
            t.networks[ni].flood_vteps.push(v);
        }
    }
}

/// The prebuilt outer headers towards `vtep` and the sum of their constant IPv4 words.
fn outer_header(o: &OverlayEntry, vtep: std::net::Ipv4Addr) -> ([u8; 50], u32) {
    use crate::packet::eth::{EtherType, EthernetRepr};
    use crate::packet::ipv4::{Ipv4Repr, PROTO_UDP};
    let mut h = [0u8; 50];
    EthernetRepr {
        dst: MacAddr::ZERO,
        src: o.mac,
        ethertype: EtherType::IPV4,
    }
    .emit(&mut h);
    Ipv4Repr {
        src: o.local_ip,
        dst: vtep,
        protocol: PROTO_UDP,
        payload_len: 0,
        ttl: o.ttl,
        dont_fragment: o.df,
    }
    .emit(&mut h[14..]);
    // Total length and checksum are per packet.
    h[16..18].fill(0);
    h[24..26].fill(0);
    let ip_sum = crate::packet::checksum::sum(&h[14..34], 0);
    h[36..38].copy_from_slice(&o.udp_port.to_be_bytes());
    crate::packet::vxlan::VxlanRepr { vni: 0 }.emit(&mut h[42..50]);
    (h, ip_sum)
}

/// A port's security groups as a classifier, in the zone of host port `pi`.
fn port_firewall(
    host: &HostConfig,
    state: &DesiredState,
    pi: usize,
    np: &vswitch_config::Port,
    groups: &std::sync::Arc<Vec<super::secgroup::GroupMembers>>,
    group_index: &FxHashMap<String, u32>,
) -> super::secgroup::PortFirewall {
    let rules: Vec<&vswitch_config::SecurityGroupRule> = np
        .security_groups
        .iter()
        .flat_map(|g| state.rules_of(g))
        .collect();
    // Validation refuses mixing; a port with no group is stateful (and allows nothing).
    let stateful = np
        .security_groups
        .iter()
        .filter_map(|g| state.security_group(g))
        .all(|g| g.stateful);
    let liberal = host.conntrack.liberal_ports.contains(&host.ports[pi].name);
    let mut fw = super::secgroup::compile_port(
        pi as u16 + 1,
        stateful,
        liberal,
        np.security_groups.clone(),
        &rules,
        groups,
        group_index,
    );
    fw.nat = nat_epoch(state, np);
    fw.version ^= (fw.nat as u32).wrapping_mul(0x9e37_79b9);
    fw
}

/// The epoch of a port's floating IPs (see `PortFirewall::nat`).
fn nat_epoch(state: &DesiredState, np: &vswitch_config::Port) -> u16 {
    use std::hash::{Hash, Hasher};
    let mut pairs: Vec<(std::net::Ipv4Addr, Option<std::net::Ipv4Addr>)> = state
        .floatingips
        .iter()
        .filter(|f| f.port_id.as_deref() == Some(np.id.as_str()))
        .map(|f| (f.floating_ip_address, state.fip_fixed_ip(f)))
        .collect();
    if pairs.is_empty() {
        return 0;
    }
    pairs.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pairs.hash(&mut h);
    let v = h.finish();
    (v as u16 ^ (v >> 16) as u16 ^ (v >> 32) as u16 ^ (v >> 48) as u16).max(1)
}

fn port_security(np: &vswitch_config::Port) -> PortSecurity {
    let mut s = PortSecurity::default();
    let mac = np.mac_address;
    s.macs.push(mac);
    let add = |s: &mut PortSecurity, m: MacAddr, net: ipnet::IpNet| match net {
        ipnet::IpNet::V4(n) => s.v4.push((m, n)),
        ipnet::IpNet::V6(n) => s.v6.push((m, n)),
    };
    for f in &np.fixed_ips {
        let n = match f.ip_address {
            IpAddr::V4(a) => ipnet::IpNet::V4(Ipv4Net::new(a, 32).expect("/32 is valid")),
            IpAddr::V6(a) => ipnet::IpNet::V6(Ipv6Net::new(a, 128).expect("/128 is valid")),
        };
        add(&mut s, mac, n);
    }
    for aap in &np.allowed_address_pairs {
        let m = aap.mac_address.unwrap_or(mac);
        if !s.macs.contains(&m) {
            s.macs.push(m);
        }
        add(&mut s, m, aap.ip_address);
    }
    for m in s.macs.clone() {
        let ll = Ipv6Net::new(link_local_from_mac(m), 128).expect("/128 is valid");
        s.v6.push((m, ll));
    }
    PortSecurity::new(s.macs, s.v4, s.v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_link_local_matches_linux() {
        // Linux derives fe80::f816:3eff:fe71:e93e for fa:16:3e:71:e9:3e (as in the seed's SLAAC address).
        let m: MacAddr = "fa:16:3e:71:e9:3e".parse().unwrap();
        assert_eq!(
            link_local_from_mac(m),
            "fe80::f816:3eff:fe71:e93e".parse::<Ipv6Addr>().unwrap()
        );
    }
}
