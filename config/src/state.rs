//! The desired state: Neutron's objects with Neutron's field names
//! (`provider:segmentation_id`, `binding:host_id`, `router:external`), so a
//! document can be produced from `openstack ... show -f json` output with
//! little editing. Only the fields the dataplane uses are modelled; an unknown
//! field is an error rather than silently ignored.
//!
//! Validation lives in [`crate::validate`]; this module is the data and the
//! look-up helpers the dataplane compiler uses.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

pub use crate::protocol::Protocol;

/// `device_owner` of a distributed router's interface port.
pub const OWNER_ROUTER_INTERFACE_DISTRIBUTED: &str = "network:router_interface_distributed";
/// `device_owner` of a centralized router's interface port.
pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";
/// `device_owner` of a host's floating IP gateway port on an external network.
pub const OWNER_FIP_GATEWAY: &str = "network:floatingip_agent_gateway";

/// Everything the switch should implement, as Neutron describes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub routers: Vec<Router>,
    #[serde(default)]
    pub floatingips: Vec<FloatingIp>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub security_group_rules: Vec<SecurityGroupRule>,
    /// Every host's tunnel endpoint and DVR MAC, for l2population.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

/// Segmentation type of a network (`provider:network_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    /// Untagged on a physical network.
    Flat,
    /// 802.1Q-tagged on a physical network.
    Vlan,
    /// Overlay, VXLAN-encapsulated between hosts' VTEPs.
    Vxlan,
}

/// A Neutron network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    /// Layer-3 MTU; see [`Network::effective_mtu`] when absent.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Default for the network's ports that do not set their own.
    #[serde(default = "yes")]
    pub port_security_enabled: bool,
    /// Can hold router gateways and floating IPs.
    #[serde(rename = "router:external", default)]
    pub router_external: bool,
    #[serde(default)]
    pub shared: bool,
    #[serde(rename = "provider:network_type")]
    pub network_type: NetworkType,
    /// Physical network name for flat and VLAN networks, as in `bridge_mappings`.
    #[serde(rename = "provider:physical_network", default)]
    pub physical_network: Option<String>,
    /// VLAN id (1..=4094) or VXLAN VNI (1..=16777215); absent for flat.
    #[serde(rename = "provider:segmentation_id", default)]
    pub segmentation_id: Option<u32>,
}

impl Network {
    /// The MTU in force: the configured one, else what Neutron would pick on
    /// a 1500-byte underlay (VXLAN's 50-byte overhead taken off).
    pub fn effective_mtu(&self) -> u16 {
        self.mtu.unwrap_or(match self.network_type {
            NetworkType::Vxlan => 1450,
            NetworkType::Flat | NetworkType::Vlan => 1500,
        })
    }

    /// The name if set, else the id: what messages call the network.
    pub fn display_name(&self) -> &str {
        name_or_id(&self.name, &self.id)
    }
}

/// One address range that Neutron hands out from a subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationPool {
    pub start: IpAddr,
    pub end: IpAddr,
}

/// A Neutron subnet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub network_id: String,
    /// The network address and prefix, without host bits.
    pub cidr: IpNet,
    /// 4 or 6; must agree with `cidr`.
    pub ip_version: u8,
    #[serde(default)]
    pub gateway_ip: Option<IpAddr>,
    #[serde(default)]
    pub allocation_pools: Vec<AllocationPool>,
    #[serde(default = "yes")]
    pub enable_dhcp: bool,
    #[serde(default)]
    pub dns_nameservers: Vec<IpAddr>,
    /// IPv6 only: who sends router advertisements (`slaac`, `dhcpv6-stateful`, `dhcpv6-stateless`).
    #[serde(default)]
    pub ipv6_ra_mode: Option<String>,
    /// IPv6 only: how instances get addresses (same values as `ipv6_ra_mode`).
    #[serde(default)]
    pub ipv6_address_mode: Option<String>,
}

impl Subnet {
    /// The name if set, else the id: what messages call the subnet.
    pub fn display_name(&self) -> &str {
        name_or_id(&self.name, &self.id)
    }
}

/// One address of a port (or of a router gateway).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: IpAddr,
}

/// Extra address (and optionally MAC) a port may source, past port security.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedAddressPair {
    /// An address or prefix; a plain address means /32 or /128.
    #[serde(deserialize_with = "crate::protocol::ip_or_net")]
    pub ip_address: IpNet,
    /// Defaults to the port's own MAC when absent.
    #[serde(default)]
    pub mac_address: Option<MacAddr>,
}

/// A Neutron port: an instance vNIC, a router interface, a DHCP port...
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub network_id: String,
    pub mac_address: MacAddr,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    /// The host the port lives on; empty/absent for unbound and distributed ports.
    #[serde(rename = "binding:host_id", default)]
    pub binding_host_id: Option<String>,
    /// Security group ids.
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub allowed_address_pairs: Vec<AllowedAddressPair>,
    /// Overrides the network's `port_security_enabled` when set.
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    /// `compute:nova`, `network:router_interface_distributed`,
    /// `network:router_gateway`, `network:router_centralized_snat`, `network:dhcp`...
    #[serde(default)]
    pub device_owner: String,
    /// Instance or router id owning the port.
    #[serde(default)]
    pub device_id: String,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
}

impl Port {
    /// Whether port security (anti-spoofing and security groups) applies:
    /// the port's own setting, else its network's.
    pub fn port_security(&self, net: &Network) -> bool {
        self.port_security_enabled
            .unwrap_or(net.port_security_enabled)
    }

    /// The name if set, else the id: what messages call the port.
    pub fn display_name(&self) -> &str {
        name_or_id(&self.name, &self.id)
    }
}

/// A router's uplink to an external network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalGatewayInfo {
    pub network_id: String,
    /// Source-NAT instances without a floating IP behind the gateway address.
    #[serde(default = "yes")]
    pub enable_snat: bool,
    #[serde(default)]
    pub external_fixed_ips: Vec<FixedIp>,
}

/// A static route on a router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub destination: IpNet,
    pub nexthop: IpAddr,
}

/// A Neutron router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    /// DVR: routed on every compute host rather than on the network node only.
    #[serde(default = "yes")]
    pub distributed: bool,
    /// VRRP-backed SNAT on several network nodes.
    #[serde(default)]
    pub ha: bool,
    #[serde(default)]
    pub external_gateway_info: Option<ExternalGatewayInfo>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl Router {
    /// The name if set, else the id: what messages call the router.
    pub fn display_name(&self) -> &str {
        name_or_id(&self.name, &self.id)
    }
}

/// A Neutron floating IP (IPv4 only: NAT does not apply to IPv6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatingIp {
    pub id: String,
    pub floating_ip_address: Ipv4Addr,
    pub floating_network_id: String,
    /// The port it is associated with; none when unassociated.
    #[serde(default)]
    pub port_id: Option<String>,
    /// Which of the port's fixed IPv4 addresses it maps to.
    #[serde(default)]
    pub fixed_ip_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub router_id: Option<String>,
}

/// A Neutron security group; its rules refer to it by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Stateful groups use connection tracking; stateless ones match each packet alone.
    #[serde(default = "yes")]
    pub stateful: bool,
}

/// Traffic direction relative to the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the instance.
    Ingress,
    /// From the instance.
    Egress,
}

/// Address family of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EtherType {
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

/// One security group rule (an allow; anything not allowed is dropped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRule {
    pub id: String,
    pub security_group_id: String,
    pub direction: Direction,
    pub ethertype: EtherType,
    /// Absent or `any` matches every protocol.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Lowest port for tcp/udp/sctp; ICMP type for icmp/icmpv6.
    #[serde(default)]
    pub port_range_min: Option<u16>,
    /// Highest port for tcp/udp/sctp; ICMP code for icmp/icmpv6.
    #[serde(default)]
    pub port_range_max: Option<u16>,
    #[serde(default)]
    pub remote_ip_prefix: Option<IpNet>,
    /// Matches traffic from/to any port in that group.
    #[serde(default)]
    pub remote_group_id: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// A host's tunnel endpoint and DVR MAC (what l2population distributes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The host name, as in ports' `binding:host_id`.
    pub host: String,
    pub vtep_ip: Ipv4Addr,
    #[serde(default)]
    pub dvr_mac: Option<MacAddr>,
}

impl DesiredState {
    /// The network with this id.
    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.id == id)
    }

    /// The subnet with this id.
    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.id == id)
    }

    /// The port with this id.
    pub fn port(&self, id: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.id == id)
    }

    /// The router with this id.
    pub fn router(&self, id: &str) -> Option<&Router> {
        self.routers.iter().find(|r| r.id == id)
    }

    /// The security group with this id.
    pub fn security_group(&self, id: &str) -> Option<&SecurityGroup> {
        self.security_groups.iter().find(|g| g.id == id)
    }

    /// The l2population entry of `host`.
    pub fn host(&self, host: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.host == host)
    }

    /// The subnets of a network, in document order.
    pub fn subnets_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a Subnet> + 'a {
        self.subnets
            .iter()
            .filter(move |s| s.network_id == network_id)
    }

    /// The ports on a network, in document order.
    pub fn ports_on_network<'a>(
        &'a self,
        network_id: &'a str,
    ) -> impl Iterator<Item = &'a Port> + 'a {
        self.ports
            .iter()
            .filter(move |p| p.network_id == network_id)
    }

    /// The ports bound to `host_id` (`binding:host_id`), in document order.
    pub fn ports_on_host<'a>(&'a self, host_id: &'a str) -> impl Iterator<Item = &'a Port> + 'a {
        self.ports
            .iter()
            .filter(move |p| p.binding_host_id.as_deref() == Some(host_id))
    }

    /// The fixed IPv4 address a floating IP maps to: its `fixed_ip_address`, else its port's
    /// only IPv4 address (`None`: unassociated, or not decidable; validation says why).
    pub fn fip_fixed_ip(&self, fip: &FloatingIp) -> Option<Ipv4Addr> {
        if fip.fixed_ip_address.is_some() {
            return fip.fixed_ip_address;
        }
        let port = self.port(fip.port_id.as_deref()?)?;
        let mut v4 = port.fixed_ips.iter().filter_map(|f| match f.ip_address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
        match (v4.next(), v4.next()) {
            (Some(a), None) => Some(a),
            _ => None,
        }
    }

    /// The router an associated floating IP's traffic goes through: its `router_id`, else
    /// (as Neutron picks it) the router with an interface on the port's network and its
    /// gateway on the floating IP's network.
    pub fn fip_router(&self, fip: &FloatingIp) -> Option<&Router> {
        let port = self.port(fip.port_id.as_deref()?)?;
        let connects = |r: &Router| {
            r.external_gateway_info
                .as_ref()
                .is_some_and(|g| g.network_id == fip.floating_network_id)
                && self.ports.iter().any(|p| {
                    p.device_id == r.id
                        && p.network_id == port.network_id
                        && matches!(
                            p.device_owner.as_str(),
                            OWNER_ROUTER_INTERFACE_DISTRIBUTED | OWNER_ROUTER_INTERFACE
                        )
                })
        };
        match &fip.router_id {
            Some(id) => self.router(id).filter(|r| connects(r)),
            None => self.routers.iter().find(|r| connects(r)),
        }
    }

    /// A host's floating IP gateway port on an external network (Neutron's `fg-` port in
    /// the fip namespace, one per host and external network): it answers ARP for the
    /// floating IPs of the host's instances, with its own MAC.
    pub fn fip_gateway_port(&self, host_id: &str, network_id: &str) -> Option<&Port> {
        self.ports.iter().find(|p| {
            p.device_owner == OWNER_FIP_GATEWAY
                && p.network_id == network_id
                && p.binding_host_id.as_deref() == Some(host_id)
        })
    }

    /// The rules of a security group, in document order.
    pub fn rules_of<'a>(
        &'a self,
        security_group_id: &'a str,
    ) -> impl Iterator<Item = &'a SecurityGroupRule> + 'a {
        self.security_group_rules
            .iter()
            .filter(move |r| r.security_group_id == security_group_id)
    }
}

fn name_or_id<'a>(name: &'a str, id: &'a str) -> &'a str {
    if name.is_empty() {
        id
    } else {
        name
    }
}

fn yes() -> bool {
    true
}
