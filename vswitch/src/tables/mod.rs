//! The compiled, immutable lookup structures the stages read.
//!
//! Design note. The control plane compiles the desired state plus the host config into one
//! [`Tables`] value: dense indices instead of ids (a network is a `NetIdx`, the seed's "local
//! VLAN", which never appears on the wire), per-port stage flags, per-physnet VLAN maps as flat
//! arrays (one load per lookup), a static FDB of every known port MAC, and per-network flood
//! lists. A compiled value is never mutated; a change compiles a new one and [`publish`] swaps it
//! in atomically, so every batch sees one consistent generation. State the fast path creates
//! itself (learned MACs) lives per core in [`fdb::LearnTable`], not here.

pub mod compile;
pub mod fdb;
pub mod l3neigh;
pub mod lpm;
pub mod neighbor;
pub mod publish;
pub mod router;
pub mod secgroup;

use crate::packet::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use rustc_hash::FxHashMap;
pub use vswitch_config::PortKind;

/// An FDB destination with this bit set is a remote VTEP index, not a local port.
pub const VTEP_BIT: u16 = 0x8000;

/// Where an FDB entry (static or learned) sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A local port.
    Port(u16),
    /// A remote host's VTEP (index into [`Tables::vteps`]).
    Vtep(u16),
    /// A router interface on this host (index into `Tables::l3.rifs`).
    Router(u16),
}

impl Dest {
    /// Decodes the u16 stored in the FDBs.
    #[inline(always)]
    pub fn from_raw(v: u16) -> Dest {
        if v & VTEP_BIT != 0 {
            Dest::Vtep(v & !VTEP_BIT)
        } else if v & router::ROUTER_BIT != 0 {
            Dest::Router(v & !router::ROUTER_BIT)
        } else {
            Dest::Port(v)
        }
    }
}

/// A remote host reachable over VXLAN (from the desired state's `hosts`, this host excluded).
#[derive(Debug, Clone)]
pub struct VtepEntry {
    pub host: String,
    pub ip: std::net::Ipv4Addr,
    /// The outer headers towards this VTEP, prebuilt (as OVS builds tunnel headers once per
    /// port): Ethernet (destination left zero), IPv4 without total length and checksum, UDP
    /// with only the destination port, VXLAN with the I flag. Encapsulation copies these 50
    /// bytes and patches the destination MAC, lengths, source port, VNI and checksum.
    pub header: [u8; 50],
    /// One's-complement sum of the IPv4 header words that never change (everything but total
    /// length and checksum): the checksum is then one add and a fold per packet.
    pub ip_sum: u32,
}

/// How VXLAN leaves this host: the overlay port and the outer headers' settings.
#[derive(Debug, Clone)]
pub struct OverlayEntry {
    /// The overlay (underlay-facing) port.
    pub port: u16,
    pub local_ip: std::net::Ipv4Addr,
    /// The overlay port's own MAC (outer source, and what we answer ARP with).
    pub mac: MacAddr,
    /// Netmask of the underlay subnet: VTEPs inside it are ARPed directly.
    pub mask: u32,
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Underlay IP MTU.
    pub mtu: u16,
    pub ttl: u8,
    pub df: bool,
    pub udp_checksum: bool,
    pub udp_port: u16,
    /// Learn inner source MACs from decapsulated frames.
    pub learn: bool,
}

impl OverlayEntry {
    /// The underlay next hop towards `vtep`: itself when on-link, else the gateway.
    #[inline]
    pub fn next_hop(&self, vtep: std::net::Ipv4Addr) -> Option<std::net::Ipv4Addr> {
        if u32::from(vtep) & self.mask == u32::from(self.local_ip) & self.mask {
            Some(vtep)
        } else {
            self.gateway
        }
    }
}

/// Dense network index (the seed's "local VLAN"; metadata only, never on the wire).
pub type NetIdx = u16;
/// No network.
pub const NO_NET: NetIdx = u16::MAX;

/// How a network reaches the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Flat,
    Vlan(u16),
    Vxlan(u32),
}

/// One switch port as the stages see it.
#[derive(Debug, Clone)]
pub struct PortEntry {
    pub name: String,
    pub kind: PortKind,
    /// Administratively up (the Neutron port's `admin_state_up` for instance ports).
    pub up: bool,
    /// The network of an instance port.
    pub network: NetIdx,
    /// The physnet index of a provider port.
    pub physnet: Option<u16>,
    /// Anti-spoofing rules; `None` when port security is off or the port is not an instance.
    pub security: Option<PortSecurity>,
    /// Learn source MACs of frames received here (provider ports, instance ports without port
    /// security, which may legitimately front other MACs).
    pub learn: bool,
    /// Largest frame accepted on ingress (L2 header included).
    pub max_frame: usize,
    /// The Neutron port id carried by an instance port (for trace).
    pub iface_id: Option<String>,
    /// The Neutron port's MAC of an instance port (a traced frame's default source).
    pub mac: Option<MacAddr>,
    /// Security groups of an instance port with port security (absent: no filtering).
    pub firewall: Option<std::sync::Arc<secgroup::PortFirewall>>,
}

/// What an instance port may send: Neutron's port security.
///
/// Built with [`PortSecurity::new`], which also derives the integer forms the fast path
/// compares (a MAC as a u64, an IPv4 prefix as address/mask words), so a check is a few
/// integer compares over a handful of entries.
#[derive(Debug, Clone, Default)]
pub struct PortSecurity {
    /// The port's MAC plus the MACs of its allowed address pairs.
    pub macs: Vec<MacAddr>,
    /// (source MAC, allowed IPv4 prefix) pairs: fixed IPs with the port MAC, allowed address
    /// pairs with theirs.
    pub v4: Vec<(MacAddr, Ipv4Net)>,
    /// The same for IPv6, plus each MAC's EUI-64 link-local address.
    pub v6: Vec<(MacAddr, Ipv6Net)>,
    /// `macs` as [`mac_u64`] keys.
    mac_keys: Vec<u64>,
    /// `v4` as (MAC key, network address, netmask).
    v4_keys: Vec<(u64, u32, u32)>,
}

/// A MAC as an integer (the 48 bits in the low bytes), for one-compare equality.
#[inline(always)]
pub fn mac_u64(b: &[u8; 6]) -> u64 {
    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64) << 16
        | u16::from_be_bytes([b[4], b[5]]) as u64
}

impl PortSecurity {
    pub fn new(
        macs: Vec<MacAddr>,
        v4: Vec<(MacAddr, Ipv4Net)>,
        v6: Vec<(MacAddr, Ipv6Net)>,
    ) -> Self {
        let mac_keys = macs.iter().map(|m| mac_u64(&m.0)).collect();
        let v4_keys = v4
            .iter()
            .map(|(m, n)| {
                (
                    mac_u64(&m.0),
                    u32::from(n.network()),
                    u32::from(n.netmask()),
                )
            })
            .collect();
        Self {
            macs,
            v4,
            v6,
            mac_keys,
            v4_keys,
        }
    }
    #[inline]
    pub fn mac_allowed(&self, m: MacAddr) -> bool {
        self.mac_key_allowed(mac_u64(&m.0))
    }
    #[inline(always)]
    pub fn mac_key_allowed(&self, k: u64) -> bool {
        self.mac_keys.contains(&k)
    }
    #[inline]
    pub fn v4_allowed(&self, m: MacAddr, ip: std::net::Ipv4Addr) -> bool {
        self.v4_key_allowed(mac_u64(&m.0), u32::from(ip))
    }
    #[inline(always)]
    pub fn v4_key_allowed(&self, mac: u64, ip: u32) -> bool {
        self.v4_keys
            .iter()
            .any(|&(m, net, mask)| m == mac && ip & mask == net)
    }
    #[inline]
    pub fn v6_allowed(&self, m: MacAddr, ip: std::net::Ipv6Addr) -> bool {
        self.v6.iter().any(|(pm, n)| *pm == m && n.contains(&ip))
    }
}

/// A network with at least one presence on this host.
#[derive(Debug, Clone)]
pub struct NetworkEntry {
    pub id: String,
    pub name: String,
    pub up: bool,
    pub segment: Segment,
    pub mtu: u16,
    /// The provider port this network leaves by (flat/vlan networks whose physnet is mapped).
    pub provider_port: Option<u16>,
    /// Every local port on the network, ingress excluded at flood time.
    pub flood: Vec<u16>,
    /// Remote VTEPs with ports on this (VXLAN) network: l2population's flood list, the targets
    /// of head-end replication.
    pub flood_vteps: Vec<u16>,
}

/// A physical network mapped to a provider port (`bridge_mappings`).
#[derive(Debug, Clone)]
pub struct PhysnetEntry {
    pub name: String,
    pub port: u16,
    /// The flat network of this physnet, if any.
    pub flat: NetIdx,
    /// VLAN id -> network (4096 entries, [`NO_NET`] where unused): one load per lookup.
    pub vlans: Box<[NetIdx; 4096]>,
}

/// Static FDB key: network + MAC packed into one u64.
#[inline(always)]
pub fn fdb_key(net: NetIdx, mac: MacAddr) -> u64 {
    fdb_key48(net, mac_u64(&mac.0))
}

/// [`fdb_key`] from a MAC already read as a 48-bit integer.
#[inline(always)]
pub fn fdb_key48(net: NetIdx, mac48: u64) -> u64 {
    (net as u64) << 48 | mac48
}

/// One immutable generation of everything the stages read.
#[derive(Debug, Clone)]
pub struct Tables {
    /// Increases by one per accepted change.
    pub generation: u64,
    pub ports: Vec<PortEntry>,
    pub networks: Vec<NetworkEntry>,
    pub physnets: Vec<PhysnetEntry>,
    /// (network, MAC) -> destination ([`Dest`] encoding): every MAC the desired state binds to
    /// a local port, and (l2population) every MAC bound to a remote host's VTEP.
    pub fdb: FxHashMap<u64, u16>,
    /// Remote VTEPs, indexed by [`Dest::Vtep`].
    pub vteps: Vec<VtepEntry>,
    /// Remote VTEP address -> index, for decapsulation's source check.
    pub vtep_by_ip: FxHashMap<u32, u16>,
    /// VNI -> network.
    pub vni: FxHashMap<u32, NetIdx>,
    /// ARP responder: (network << 32 | IPv4) -> MAC of every port the desired state knows on a
    /// VXLAN network.
    pub arp: FxHashMap<u64, MacAddr>,
    /// The VXLAN underlay, when this host has an overlay port.
    pub overlay: Option<OverlayEntry>,
    /// Distributed routers on this host.
    pub l3: router::L3Tables,
    /// Some port has security groups (the firewall stages run).
    pub firewall: bool,
    /// The flow cache runs: some port has security groups or some router has an interface
    /// here, the stages a hit stands for. Without either, switching (and tunnelling) alone
    /// costs less than a hit (interleaved ours-only runs, every frame a hit: `l2` 21.1 against
    /// 24.6 Mpps without the cache over 4 pairs, `vxlan-decap` 15.5 against 20.0 and
    /// `vxlan-encap` 20.2 against 23.1 over 2; `routed-east-west` 16.7 against 14.8
    /// over 5).
    pub flow_cache: bool,
}

impl Tables {
    /// Static FDB lookup (raw [`Dest`] encoding).
    #[inline(always)]
    pub fn fdb_lookup(&self, net: NetIdx, mac: MacAddr) -> Option<u16> {
        self.fdb.get(&fdb_key(net, mac)).copied()
    }

    /// ARP responder lookup.
    #[inline(always)]
    pub fn arp_lookup(&self, net: NetIdx, ip: u32) -> Option<MacAddr> {
        self.arp.get(&((net as u64) << 32 | ip as u64)).copied()
    }

    /// The port index with this name.
    pub fn port_index(&self, name: &str) -> Option<u16> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as u16)
    }

    /// The network index with this Neutron id.
    pub fn network_index(&self, id: &str) -> Option<NetIdx> {
        self.networks
            .iter()
            .position(|n| n.id == id)
            .map(|i| i as NetIdx)
    }
}
