//! Compiled distributed routers: interfaces, FIBs, pre-populated neighbours and the DVR MACs.
//!
//! Which routers live here (the seed: "every host carries an instance of each router that has
//! ports on it"): on a `dvr` host, each distributed router with an interface on a network that
//! has a local instance port; on a `dvr_snat` host, every router (centralized ones included).
//! A router interface is a Neutron port with `device_owner` `network:router_interface_distributed`
//! (or `network:router_interface` for a centralized router) whose `device_id` is the router; its
//! MAC and addresses are the same on every host, which is why routed frames leaving the host
//! carry the host's DVR MAC instead.
use super::lpm::Lpm;
use super::*;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use vswitch_config::{DesiredState, HostConfig, Role};

/// An FDB destination with this bit (and not [`VTEP_BIT`]) set is a router interface.
pub const ROUTER_BIT: u16 = 0x4000;

pub const OWNER_RIF_DVR: &str = "network:router_interface_distributed";
pub const OWNER_RIF: &str = "network:router_interface";
pub const OWNER_SNAT: &str = "network:router_centralized_snat";
pub const OWNER_GATEWAY: &str = "network:router_gateway";

/// One router instance on this host.
#[derive(Debug, Clone)]
pub struct RouterEntry {
    pub id: String,
    pub name: String,
    pub up: bool,
    /// Distributed (an instance on every host with its networks) or centralized (the
    /// network node only).
    pub distributed: bool,
    /// IPv4 FIB: prefix -> index into `routes`.
    pub fib4: Lpm<u32>,
    /// IPv6 FIB: prefix -> index into `routes`.
    pub fib6: Lpm<u128>,
    pub routes: Vec<RouteEntry>,
    /// The router's own addresses (any interface): packets to them are for the router.
    pub local4: Vec<u32>,
    pub local6: Vec<u128>,
    /// Some instance behind it has a floating IP here ([`L3Tables::fip_out`]): a packet that
    /// matches no route is checked for one before it goes to the SNAT port.
    pub fips: bool,
    /// The centralized SNAT of a router, on the network node (Neutron's snat namespace):
    /// what leaves by the router's gateway is translated to its gateway address.
    pub snat: Option<Snat>,
}

/// Source NAT behind a router's external gateway address, with port (and ICMP echo
/// identifier) allocation, tracked in the core's connection table in its own zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snat {
    /// The gateway address (the router's `network:router_gateway` port).
    pub ip: u32,
    /// The gateway interface.
    pub rif: u16,
    /// The connection-table zone of the router's translations (above every port's zone).
    pub zone: u16,
    /// Ports translated to, inclusive.
    pub ports: [u16; 2],
}

/// The connection-table zone of router `ri`'s translations: port zones are a port's index
/// + 1, far below.
pub fn snat_zone(ri: u16) -> u16 {
    SNAT_ZONES | ri
}

/// The first zone of routers' translations.
const SNAT_ZONES: u16 = 0x8000;

/// Whether a connection-table zone holds a router's translations (not a port's connections).
pub fn is_snat_zone(zone: u16) -> bool {
    zone >= SNAT_ZONES
}

/// A FIB entry.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub prefix: IpNet,
    /// The interface it leaves by.
    pub rif: u16,
    /// The next hop for a static route; `None` for a connected subnet (the destination is the
    /// next hop).
    pub via: Option<IpAddr>,
}

/// A router interface (a router's port on one network).
#[derive(Debug, Clone)]
pub struct RifEntry {
    pub router: u16,
    pub port_id: String,
    pub net: NetIdx,
    pub mac: MacAddr,
    /// Interface addresses with their subnet's prefix length.
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
    /// On a `dvr` host, the router's centralized SNAT port on this interface's subnet (IPv4,
    /// MAC): the next hop of traffic that matches no route (north-south without a floating IP
    /// goes to the network node).
    pub snat: Option<(Ipv4Addr, MacAddr)>,
    /// The same for IPv6 (the SNAT port's IPv6 address on this interface's subnet): IPv6 is
    /// not translated, but the network node routes it north-south all the same (the seed:
    /// "Floating IP addresses and NAT do not apply to IPv6. Thus, the network node routes IPv6
    /// traffic").
    pub snat6: Option<(Ipv6Addr, MacAddr)>,
    /// This host's floating IP gateway on an external network (Neutron's fg- port in the fip
    /// namespace): its MAC answers ARP for the floating IPs of this host's instances, frames
    /// to it are translated to the fixed IP ([`L3Tables::fip_in`]), and translated frames
    /// leave through it. Its router is the fip namespace: its external subnets and the
    /// default route via their gateway.
    pub fip: bool,
}

impl RifEntry {
    /// The interface address to source ICMP errors and replies from, for a peer at `peer`.
    pub fn v4_source(&self, peer: u32) -> Option<u32> {
        self.v4
            .iter()
            .find(|n| u32::from(n.network()) == peer & u32::from(n.netmask()))
            .or(self.v4.first())
            .map(|n| u32::from(n.addr()))
    }
    pub fn v6_source(&self, peer: u128) -> Option<u128> {
        self.v6
            .iter()
            .find(|n| u128::from(n.network()) == peer & u128::from(n.netmask()))
            .or(self.v6.first())
            .map(|n| u128::from(n.addr()))
    }
}

/// The L3 part of [`Tables`].
#[derive(Debug, Clone, Default)]
pub struct L3Tables {
    pub routers: Vec<RouterEntry>,
    pub rifs: Vec<RifEntry>,
    /// (network << 32 | IPv4) of every interface address -> interface: ARP for the gateway.
    pub gw4: FxHashMap<u64, u16>,
    /// (network, IPv6) of every interface address -> interface: Neighbor Solicitations.
    pub gw6: FxHashMap<(NetIdx, u128), u16>,
    /// Pre-populated neighbours (as Neutron's l3 agent installs them): (network, address as
    /// 128 bits, IPv4 mapped) -> MAC (48-bit integer), every fixed IP on a routed network.
    pub neigh: FxHashMap<(NetIdx, u128), u64>,
    /// This host's DVR MAC: the source of routed frames that leave the host.
    pub dvr_mac: Option<MacAddr>,
    /// Other hosts' DVR MACs (48-bit integers): a frame from the fabric with one of these as
    /// source was routed on its sending host.
    pub dvr_macs: rustc_hash::FxHashSet<u64>,
    /// The 24-bit prefix every DVR MAC shares (Neutron derives them all from one
    /// `dvr_base_mac`), so most frames are ruled out with one compare before the set lookup;
    /// `None` when they differ (every frame from the fabric is then looked up).
    pub dvr_prefix: Option<u32>,
    /// fdb_key(network, local instance MAC) -> the gateway MAC of that instance's subnet: the
    /// source a routed frame from another host is delivered with.
    pub dvr_rewrite: FxHashMap<u64, MacAddr>,
    /// (external network << 32 | floating IP) -> where it leads, for the floating IPs of the
    /// instances this host carries (those of other hosts are not here: not answered, not
    /// translated).
    pub fip_in: FxHashMap<u64, FipIn>,
    /// (router << 32 | fixed IP) -> the floating IP that address leaves as.
    pub fip_out: FxHashMap<u64, FipOut>,
    /// Every floating IP answered here, sorted: a worker announces (gratuitous ARP) those a
    /// new generation of tables has and the one before did not.
    pub announce: Vec<Announce>,
    /// Some router here does centralized SNAT (its translations live in the connection
    /// table: the workers sweep it).
    pub snat: bool,
}

/// A floating IP this host answers for, as its gratuitous ARP needs it: the provider port and
/// network it goes out on, the address and the gateway MAC, and the fixed IP behind it (so a
/// floating IP moved between two instances of this host is announced again too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announce {
    pub port: u16,
    pub net: NetIdx,
    pub ip: u32,
    pub mac: [u8; 6],
    pub fixed: u32,
}

/// A floating IP as inbound traffic needs it: the fixed address it becomes, and the router
/// that routes it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FipIn {
    pub router: u16,
    pub fixed: u32,
}

/// A fixed address's floating IP as outbound traffic needs it: the address, and the floating
/// IP gateway interface ([`RifEntry::fip`]) it leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FipOut {
    pub ip: u32,
    pub rif: u16,
}

/// The key of a (network, IPv4 address) map.
#[inline(always)]
pub fn net_key4(net: NetIdx, a: u32) -> u64 {
    (net as u64) << 32 | a as u64
}

impl L3Tables {
    /// The static neighbour of (network, address).
    #[inline(always)]
    pub fn neighbor(&self, net: NetIdx, addr: u128) -> Option<u64> {
        self.neigh.get(&(net, addr)).copied()
    }
}

/// The IPv4 and IPv6 FIBs of a router's routes (values: indices into `routes`).
fn fibs(routes: &[RouteEntry]) -> (Lpm<u32>, Lpm<u128>) {
    let fib4 = Lpm::build(
        routes
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.prefix {
                IpNet::V4(n) => Some((u32::from(n.network()), n.prefix_len(), i as u32)),
                IpNet::V6(_) => None,
            }),
    );
    let fib6 = Lpm::build(
        routes
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.prefix {
                IpNet::V6(n) => Some((u128::from(n.network()), n.prefix_len(), i as u32)),
                IpNet::V4(_) => None,
            }),
    );
    (fib4, fib6)
}

/// The router's own IPv4 addresses: those of its interfaces.
fn local4(rifs: &[RifEntry]) -> Vec<u32> {
    rifs.iter()
        .flat_map(|x| x.v4.iter().map(|n| u32::from(n.addr())))
        .collect()
}

/// The router's own IPv6 addresses.
fn local6(rifs: &[RifEntry]) -> Vec<u128> {
    rifs.iter()
        .flat_map(|x| x.v6.iter().map(|n| u128::from(n.addr())))
        .collect()
}

/// The centralized SNAT of every router with an external gateway, on the network node (the
/// seed's north-south scenario 1: instances with only a fixed IP reach the outside through the
/// network node): a router `snat:<name>` (not distributed: its MACs exist here only) whose
/// interfaces are the router's SNAT ports (`network:router_centralized_snat`, where the
/// compute nodes send what matches no route) and its gateway port (`network:router_gateway`)
/// on the external network; routes: their subnets, the router's static routes and the
/// external subnet's gateway as default. With `enable_snat`, what leaves by the gateway is
/// translated to the gateway address. A router whose gateway port or external network is
/// missing here is left out.
fn compile_snat(host: &HostConfig, state: &DesiredState, t: &Tables, l3: &mut L3Tables) {
    for r in &state.routers {
        let Some(gw) = &r.external_gateway_info else {
            continue;
        };
        let Some(ext) = t.network_index(&gw.network_id) else {
            continue;
        };
        if t.networks[ext as usize].provider_port.is_none() {
            continue;
        }
        let mine = |owner: &str| {
            state
                .ports
                .iter()
                .filter(move |p| p.device_owner == owner && p.device_id == r.id)
                .collect::<Vec<_>>()
        };
        let (sg_ports, qg) = (mine(OWNER_SNAT), mine(OWNER_GATEWAY));
        let Some(qg) = qg.into_iter().find(|p| p.network_id == gw.network_id) else {
            continue;
        };
        if sg_ports.is_empty() || l3.rifs.len() + sg_ports.len() + 1 >= ROUTER_BIT as usize {
            continue;
        }
        let ri = l3.routers.len() as u16;
        let first = l3.rifs.len();
        for p in sg_ports.iter().chain(std::iter::once(&qg)) {
            let Some(net) = t.network_index(&p.network_id) else {
                continue;
            };
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            for f in &p.fixed_ips {
                let Some(sn) = state.subnet(&f.subnet_id) else {
                    continue;
                };
                match (f.ip_address, sn.cidr) {
                    (IpAddr::V4(a), IpNet::V4(c)) if c.contains(&a) => {
                        v4.extend(Ipv4Net::new(a, c.prefix_len()).ok())
                    }
                    (IpAddr::V6(a), IpNet::V6(c)) if c.contains(&a) => {
                        v6.extend(Ipv6Net::new(a, c.prefix_len()).ok())
                    }
                    _ => {}
                }
            }
            if v4.is_empty() && v6.is_empty() {
                continue;
            }
            l3.rifs.push(RifEntry {
                router: ri,
                port_id: p.id.clone(),
                net,
                mac: p.mac_address,
                v4,
                v6,
                snat: None,
                snat6: None,
                fip: false,
            });
        }
        let rifs = &l3.rifs[first..];
        let Some(gw_k) = rifs.iter().position(|x| x.net == ext && !x.v4.is_empty()) else {
            l3.rifs.truncate(first);
            continue;
        };
        let gw_rif = (first + gw_k) as u16;
        let mut routes: Vec<RouteEntry> = state
            .subnets_of(&gw.network_id)
            .filter_map(|sn| match sn.gateway_ip {
                Some(IpAddr::V4(g)) if rifs[gw_k].v4.iter().any(|n| n.contains(&g)) => {
                    Some(RouteEntry {
                        prefix: IpNet::V4(Ipv4Net::default()),
                        rif: gw_rif,
                        via: Some(IpAddr::V4(g)),
                    })
                }
                _ => None,
            })
            .take(1)
            .collect();
        // IPv6: routed, not translated, by the default of the external IPv6 subnet's gateway.
        routes.extend(
            state
                .subnets_of(&gw.network_id)
                .filter_map(|sn| match sn.gateway_ip {
                    Some(IpAddr::V6(g)) if rifs[gw_k].v6.iter().any(|n| n.contains(&g)) => {
                        Some(RouteEntry {
                            prefix: IpNet::V6(Ipv6Net::default()),
                            rif: gw_rif,
                            via: Some(IpAddr::V6(g)),
                        })
                    }
                    _ => None,
                })
                .take(1),
        );
        for sr in &r.routes {
            let k = rifs.iter().position(|x| match sr.nexthop {
                IpAddr::V4(nh) => x.v4.iter().any(|n| n.contains(&nh)),
                IpAddr::V6(nh) => x.v6.iter().any(|n| n.contains(&nh)),
            });
            if let Some(k) = k {
                routes.push(RouteEntry {
                    prefix: sr.destination.trunc(),
                    rif: (first + k) as u16,
                    via: Some(sr.nexthop),
                });
            }
        }
        for (k, x) in rifs.iter().enumerate() {
            for n in &x.v4 {
                routes.push(RouteEntry {
                    prefix: IpNet::V4(n.trunc()),
                    rif: (first + k) as u16,
                    via: None,
                });
            }
            for n in &x.v6 {
                routes.push(RouteEntry {
                    prefix: IpNet::V6(n.trunc()),
                    rif: (first + k) as u16,
                    via: None,
                });
            }
        }
        let (fib4, fib6) = fibs(&routes);
        let gw_ip = u32::from(rifs[gw_k].v4[0].addr());
        l3.routers.push(RouterEntry {
            id: format!("snat-{}", r.id),
            name: format!("snat:{}", r.display_name()),
            up: r.admin_state_up,
            distributed: false,
            fib4,
            fib6,
            routes,
            local4: local4(rifs),
            local6: local6(rifs),
            fips: false,
            snat: gw.enable_snat.then_some(Snat {
                ip: gw_ip,
                rif: gw_rif,
                zone: snat_zone(ri),
                ports: host.conntrack.snat_ports,
            }),
        });
        l3.snat |= gw.enable_snat;
    }
}

/// The floating IPs of the instance ports this host carries (the seed's north-south scenario
/// 2: "the compute node containing the instance performs SNAT ... and DNAT"): per external
/// network, the host's floating IP gateway interface and its router (the fip namespace), and
/// the translations both ways. A floating IP whose external network this host does not reach,
/// or without the host's gateway port, is left out (validation reports both).
fn compile_fips(host: &HostConfig, state: &DesiredState, t: &Tables, l3: &mut L3Tables) {
    // External network -> its gateway interface, made on first use.
    let mut gateways: Vec<(NetIdx, u16)> = Vec::new();
    for fip in &state.floatingips {
        let Some(port_id) = fip.port_id.as_deref() else {
            continue;
        };
        let carried = t
            .ports
            .iter()
            .any(|p| p.kind == PortKind::Instance && p.iface_id.as_deref() == Some(port_id));
        let (Some(fixed), Some(router)) = (state.fip_fixed_ip(fip), state.fip_router(fip)) else {
            continue;
        };
        let Some(ri) = l3.routers.iter().position(|r| r.id == router.id) else {
            continue;
        };
        let Some(ext) = t.network_index(&fip.floating_network_id) else {
            continue;
        };
        if !carried || t.networks[ext as usize].provider_port.is_none() {
            continue;
        }
        let rif = match gateways.iter().find(|g| g.0 == ext) {
            Some(&(_, rif)) => rif,
            None => {
                let Some(rif) = fip_gateway(host, state, t, l3, ext) else {
                    continue;
                };
                gateways.push((ext, rif));
                rif
            }
        };
        let f = u32::from(fip.floating_ip_address);
        l3.fip_in.insert(
            net_key4(ext, f),
            FipIn {
                router: ri as u16,
                fixed: u32::from(fixed),
            },
        );
        l3.fip_out.insert(
            (ri as u64) << 32 | u32::from(fixed) as u64,
            FipOut { ip: f, rif },
        );
        // Answered with the gateway's MAC (proxy ARP, as the fip namespace does).
        l3.gw4.insert(net_key4(ext, f), rif);
        l3.routers[ri].fips = true;
        if let Some(port) = t.networks[ext as usize].provider_port {
            l3.announce.push(Announce {
                port,
                net: ext,
                ip: f,
                mac: l3.rifs[rif as usize].mac.0,
                fixed: u32::from(fixed),
            });
        }
    }
    l3.announce.sort_unstable();
}

/// Adds this host's floating IP gateway on external network `ext`: its interface and its
/// router (connected external subnets, default route via the subnet's gateway). Returns
/// the interface, or `None` without a gateway port with an address on `ext`.
fn fip_gateway(
    host: &HostConfig,
    state: &DesiredState,
    t: &Tables,
    l3: &mut L3Tables,
    ext: NetIdx,
) -> Option<u16> {
    let net = &t.networks[ext as usize];
    let port = state.fip_gateway_port(&host.host_id, &net.id)?;
    let v4: Vec<Ipv4Net> = port
        .fixed_ips
        .iter()
        .filter_map(|f| {
            let sn = state
                .subnet(&f.subnet_id)
                .filter(|sn| sn.network_id == net.id)?;
            match (f.ip_address, sn.cidr) {
                (IpAddr::V4(a), IpNet::V4(c)) if c.contains(&a) => {
                    Ipv4Net::new(a, c.prefix_len()).ok()
                }
                _ => None,
            }
        })
        .collect();
    if v4.is_empty() || l3.rifs.len() + 1 >= ROUTER_BIT as usize {
        return None;
    }
    let (ri, rif) = (l3.routers.len() as u16, l3.rifs.len() as u16);
    // The provider network's default gateway (resolved by ARP like any next hop), then the
    // external subnets themselves.
    let mut routes: Vec<RouteEntry> = state
        .subnets_of(&net.id)
        .filter_map(|sn| match sn.gateway_ip {
            Some(IpAddr::V4(gw)) if v4.iter().any(|n| n.contains(&gw)) => Some(RouteEntry {
                prefix: IpNet::V4(Ipv4Net::default()),
                rif,
                via: Some(IpAddr::V4(gw)),
            }),
            _ => None,
        })
        .take(1)
        .collect();
    routes.extend(v4.iter().map(|n| RouteEntry {
        prefix: IpNet::V4(n.trunc()),
        rif,
        via: None,
    }));
    let (fib4, fib6) = fibs(&routes);
    l3.rifs.push(RifEntry {
        router: ri,
        port_id: port.id.clone(),
        net: ext,
        mac: port.mac_address,
        v4: v4.clone(),
        v6: Vec::new(),
        snat: None,
        snat6: None,
        fip: true,
    });
    l3.routers.push(RouterEntry {
        id: format!("fip-{}", net.id),
        name: format!("fip:{}", net.name),
        up: true,
        distributed: false,
        fib4,
        fib6,
        routes,
        local4: v4.iter().map(|n| u32::from(n.addr())).collect(),
        local6: Vec::new(),
        fips: false,
        snat: None,
    });
    Some(rif)
}

fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => super::l3neigh::v4_key(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Compiles the routers this host carries into `t.l3` and their gateway MACs into the FDB.
pub fn compile_routers(host: &HostConfig, state: &DesiredState, t: &mut Tables) {
    let mut l3 = L3Tables {
        dvr_mac: host
            .dvr_mac
            .or_else(|| state.host(&host.host_id).and_then(|h| h.dvr_mac)),
        ..Default::default()
    };
    for h in state.hosts.iter().filter(|h| h.host != host.host_id) {
        if let Some(m) = h.dvr_mac {
            l3.dvr_macs.insert(mac_u64(&m.0));
        }
    }
    let mut prefixes = l3.dvr_macs.iter().map(|m| (m >> 24) as u32);
    l3.dvr_prefix = prefixes
        .next()
        .filter(|&first| prefixes.all(|p| p == first));
    let net_ids: Vec<String> = t.networks.iter().map(|n| n.id.clone()).collect();
    let net_idx = |id: &str| net_ids.iter().position(|n| n == id).map(|i| i as NetIdx);
    // Networks with a local instance port.
    let local_nets: Vec<NetIdx> = t
        .ports
        .iter()
        .filter(|p| p.kind == PortKind::Instance && p.network != NO_NET)
        .map(|p| p.network)
        .collect();
    let snat_host = host.role == Role::DvrSnat;
    for r in &state.routers {
        let rif_ports: Vec<&vswitch_config::Port> = state
            .ports
            .iter()
            .filter(|p| {
                p.device_id == r.id
                    && (p.device_owner == OWNER_RIF_DVR || p.device_owner == OWNER_RIF)
            })
            .collect();
        let here = if snat_host {
            !rif_ports.is_empty()
        } else {
            r.distributed
                && rif_ports
                    .iter()
                    .any(|p| net_idx(&p.network_id).is_some_and(|n| local_nets.contains(&n)))
        };
        if !here {
            continue;
        }
        // Interface indices share the FDB value space with ports and VTEPs (below
        // ROUTER_BIT): a host never carries more interfaces than that.
        if l3.rifs.len() + rif_ports.len() >= ROUTER_BIT as usize {
            continue;
        }
        let ri = l3.routers.len() as u16;
        let first_rif = l3.rifs.len();
        for p in &rif_ports {
            let Some(net) = net_idx(&p.network_id) else {
                continue;
            };
            let mut rif = RifEntry {
                router: ri,
                port_id: p.id.clone(),
                net,
                mac: p.mac_address,
                v4: Vec::new(),
                v6: Vec::new(),
                snat: None,
                snat6: None,
                fip: false,
            };
            for f in &p.fixed_ips {
                let Some(sn) = state.subnet(&f.subnet_id) else {
                    continue;
                };
                match (f.ip_address, sn.cidr) {
                    (IpAddr::V4(a), IpNet::V4(c)) => rif
                        .v4
                        .push(Ipv4Net::new(a, c.prefix_len()).expect("valid prefix")),
                    (IpAddr::V6(a), IpNet::V6(c)) => rif
                        .v6
                        .push(Ipv6Net::new(a, c.prefix_len()).expect("valid prefix")),
                    _ => {}
                }
            }
            // With a gateway, what matches no route goes to the SNAT port on the network node
            // (which translates it, or only routes it when `enable_snat` is off).
            let snat_wanted = !snat_host && r.external_gateway_info.is_some();
            if snat_wanted {
                let snat_ports = || {
                    state.ports.iter().filter(|sp| {
                        sp.device_owner == OWNER_SNAT
                            && sp.device_id == r.id
                            && sp.network_id == p.network_id
                    })
                };
                rif.snat = snat_ports().find_map(|sp| {
                    sp.fixed_ips.iter().find_map(|f| match f.ip_address {
                        IpAddr::V4(a) if rif.v4.iter().any(|n| n.contains(&a)) => {
                            Some((a, sp.mac_address))
                        }
                        _ => None,
                    })
                });
                rif.snat6 = snat_ports().find_map(|sp| {
                    sp.fixed_ips.iter().find_map(|f| match f.ip_address {
                        IpAddr::V6(a) if rif.v6.iter().any(|n| n.contains(&a)) => {
                            Some((a, sp.mac_address))
                        }
                        _ => None,
                    })
                });
            }
            l3.rifs.push(rif);
        }
        let rifs = &l3.rifs[first_rif..];
        let mut routes: Vec<RouteEntry> = Vec::new();
        // Static routes first, connected subnets last: for the same prefix the connected
        // one wins (the FIB keeps the last duplicate).
        for sr in &r.routes {
            let nh = sr.nexthop;
            let rif = rifs.iter().position(|x| match nh {
                IpAddr::V4(a) => x.v4.iter().any(|n| n.contains(&a)),
                IpAddr::V6(a) => x.v6.iter().any(|n| n.contains(&a)),
            });
            if let Some(k) = rif {
                routes.push(RouteEntry {
                    prefix: sr.destination.trunc(),
                    rif: (first_rif + k) as u16,
                    via: Some(nh),
                });
            }
        }
        for (k, x) in rifs.iter().enumerate() {
            let rif = (first_rif + k) as u16;
            for n in &x.v4 {
                routes.push(RouteEntry {
                    prefix: IpNet::V4(n.trunc()),
                    rif,
                    via: None,
                });
            }
            for n in &x.v6 {
                routes.push(RouteEntry {
                    prefix: IpNet::V6(n.trunc()),
                    rif,
                    via: None,
                });
            }
        }
        let (fib4, fib6) = fibs(&routes);
        l3.routers.push(RouterEntry {
            id: r.id.clone(),
            name: if r.name.is_empty() {
                r.id.clone()
            } else {
                r.name.clone()
            },
            up: r.admin_state_up,
            distributed: r.distributed,
            fib4,
            fib6,
            routes,
            local4: local4(rifs),
            local6: local6(rifs),
            fips: false,
            snat: None,
        });
    }
    compile_fips(host, state, t, &mut l3);
    if snat_host {
        compile_snat(host, state, t, &mut l3);
    }

    // Gateway addresses, gateway MACs in the FDB, and the neighbours of routed networks.
    let mut routed_nets: Vec<NetIdx> = Vec::new();
    for (i, x) in l3.rifs.iter().enumerate() {
        let i = i as u16;
        for n in &x.v4 {
            l3.gw4
                .insert((x.net as u64) << 32 | u32::from(n.addr()) as u64, i);
        }
        for n in &x.v6 {
            l3.gw6.insert((x.net, u128::from(n.addr())), i);
        }
        t.fdb.insert(fdb_key(x.net, x.mac), ROUTER_BIT | i);
        if !routed_nets.contains(&x.net) {
            routed_nets.push(x.net);
        }
    }
    for p in &state.ports {
        let Some(net) = net_idx(&p.network_id).filter(|n| routed_nets.contains(n)) else {
            continue;
        };
        let mac = mac_u64(&p.mac_address.0);
        for f in &p.fixed_ips {
            let k = (net, key_of(f.ip_address));
            if !l3.gw4.is_empty() || !l3.gw6.is_empty() {
                // Our own interface addresses are not neighbours.
                let ours = match f.ip_address {
                    IpAddr::V4(a) => l3
                        .gw4
                        .contains_key(&((net as u64) << 32 | u32::from(a) as u64)),
                    IpAddr::V6(a) => l3.gw6.contains_key(&(net, u128::from(a))),
                };
                if ours {
                    continue;
                }
            }
            l3.neigh.entry(k).or_insert(mac);
        }
        for aap in &p.allowed_address_pairs {
            let single = match aap.ip_address {
                IpNet::V4(n) => n.prefix_len() == 32,
                IpNet::V6(n) => n.prefix_len() == 128,
            };
            if single {
                let m = aap.mac_address.map_or(mac, |m| mac_u64(&m.0));
                l3.neigh
                    .entry((net, key_of(aap.ip_address.addr())))
                    .or_insert(m);
            }
        }
    }
    // Local instance ports: the gateway MAC their routed frames from other hosts get.
    for pe in t.ports.iter().filter(|p| p.kind == PortKind::Instance) {
        let Some(np) = pe
            .iface_id
            .as_deref()
            .and_then(|id| state.ports.iter().find(|p| p.id == id))
        else {
            continue;
        };
        let gw = np.fixed_ips.iter().find_map(|f| {
            l3.rifs
                .iter()
                .find(|x| {
                    x.net == pe.network
                        && match f.ip_address {
                            IpAddr::V4(a) => x.v4.iter().any(|n| n.contains(&a)),
                            IpAddr::V6(a) => x.v6.iter().any(|n| n.contains(&a)),
                        }
                })
                .map(|x| x.mac)
        });
        if let Some(gw) = gw {
            l3.dvr_rewrite
                .insert(fdb_key(pe.network, np.mac_address), gw);
        }
    }
    t.l3 = l3;
}
