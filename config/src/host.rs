//! Host configuration (TOML): what this one appliance is, which lcores it
//! polls on and which DPDK ports it drives. The Neutron-side desired state is
//! in [`crate::state`]; [`crate::validate_for_host`] checks the two agree.
//!
//! This plays the part of `openvswitch_agent.ini` + `l3_agent.ini` in the
//! seed's DVR deployment: `role` is the L3 agent's `agent_mode`, and
//! `bridge_mappings` is the OVS agent's `bridge_mappings`, except that a
//! physical network maps straight to a DPDK port rather than to a bridge.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// The L3 agent mode of this host (Neutron's `agent_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Compute node: distributed routing and floating IPs for local instances.
    Dvr,
    /// Network node: as `dvr`, plus centralised SNAT for instances without a floating IP.
    DvrSnat,
}

/// What a DPDK port is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// One instance's vNIC; carries the Neutron port named by `iface_id`.
    Instance,
    /// The uplink to a physical network (flat or VLAN), named in `bridge_mappings`.
    Provider,
    /// The underlay link that VXLAN tunnels leave by, sourced from `local_vtep_ip`.
    Overlay,
}

/// How a worker core waits when its queues are empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleMode {
    /// Poll forever; lowest latency, one full CPU per worker.
    Busy,
    /// After `spin_polls` empty polls, sleep 1 us, doubling up to `max_sleep_us`.
    Backoff,
}

/// Worker idle policy (`[idle]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleConfig {
    /// `busy` or `backoff`.
    #[serde(default = "default_idle_mode")]
    pub mode: IdleMode,
    /// Longest single sleep in backoff mode, microseconds (1..=100000).
    #[serde(default = "default_max_sleep_us")]
    pub max_sleep_us: u32,
    /// Empty polls in a row before the first sleep.
    #[serde(default = "default_spin_polls")]
    pub spin_polls: u32,
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig {
            mode: default_idle_mode(),
            max_sleep_us: default_max_sleep_us(),
            spin_polls: default_spin_polls(),
        }
    }
}

/// The VXLAN underlay (`[overlay]`): how tunnels leave by the `overlay` port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    /// Prefix length of the underlay subnet `local_vtep_ip` is in: VTEPs inside it are
    /// resolved by ARP directly, others through `gateway` (1..=32).
    #[serde(default = "default_prefix_len")]
    pub prefix_len: u8,
    /// Underlay next hop for VTEPs outside that subnet.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Underlay IP MTU: an inner frame that does not fit after the 50 bytes of VXLAN
    /// encapsulation is dropped (576..=9216).
    #[serde(default = "default_underlay_mtu")]
    pub mtu: u16,
    /// Outer IPv4 TTL (1..=255).
    #[serde(default = "default_ttl")]
    pub ttl: u8,
    /// Set Don't Fragment on the outer IPv4 header.
    #[serde(default = "default_true")]
    pub df: bool,
    /// Compute the outer UDP checksum (RFC 7348 allows zero, the default).
    #[serde(default)]
    pub udp_checksum: bool,
    /// VXLAN UDP destination port (IANA: 4789).
    #[serde(default = "default_vxlan_port")]
    pub udp_port: u16,
    /// Learn inner source MACs of decapsulated frames (for networks without l2population;
    /// off by default because the desired state is authoritative).
    #[serde(default)]
    pub learn: bool,
    /// Static underlay neighbours (IP -> MAC), never aged: for links where ARP cannot run
    /// (benchmarks on net_null) or is not wanted.
    #[serde(default)]
    pub neighbors: BTreeMap<Ipv4Addr, MacAddr>,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            prefix_len: default_prefix_len(),
            gateway: None,
            mtu: default_underlay_mtu(),
            ttl: default_ttl(),
            df: true,
            udp_checksum: false,
            udp_port: default_vxlan_port(),
            learn: false,
            neighbors: BTreeMap::new(),
        }
    }
}

fn default_prefix_len() -> u8 {
    24
}
fn default_underlay_mtu() -> u16 {
    1500
}
fn default_ttl() -> u8 {
    64
}
fn default_true() -> bool {
    true
}
fn default_vxlan_port() -> u16 {
    4789
}

/// One DPDK port (`[[ports]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Local name used in logs, counters and `bridge_mappings`: `[A-Za-z0-9_.-]{1,31}`.
    pub name: String,
    /// DPDK device: a vdev name with its arguments
    /// (`net_af_packet0,iface=sw-vm1`) or a PCI address (`0000:03:00.0`).
    pub devargs: String,
    /// What the port is attached to.
    pub kind: PortKind,
    /// For `kind = "instance"`: the Neutron port id this vNIC carries, like
    /// OVS's `external_ids:iface-id`. Not allowed for other kinds.
    #[serde(default)]
    pub iface_id: Option<String>,
    /// Receive queues, spread over the worker cores (1..=64).
    #[serde(default = "default_rx_queues")]
    pub rx_queues: u16,
}

/// The whole host config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `dvr` (compute) or `dvr_snat` (network node).
    pub role: Role,
    /// This host's name as Neutron knows it; ports bound here carry it in `binding:host_id`.
    pub host_id: String,
    /// Source address of our VXLAN tunnels; required when an overlay port exists.
    #[serde(default)]
    pub local_vtep_ip: Option<Ipv4Addr>,
    /// This host's unique DVR MAC, used as the source MAC of routed packets
    /// so the same router MAC on every host does not confuse the fabric.
    #[serde(default)]
    pub dvr_mac: Option<MacAddr>,
    /// lcore of the control thread (DPDK main lcore).
    #[serde(default)]
    pub main_core: u32,
    /// Worker lcores, one poll loop each.
    #[serde(default)]
    pub cores: Vec<u32>,
    /// Runs lcore N on CPU M instead of CPU N (`"N" = M` pairs, as EAL's `--lcores N@M`):
    /// lets several workers share CPUs, e.g. to run two workers on a 2-CPU test machine.
    /// Lcores left out run on the CPU of their own number.
    #[serde(default)]
    pub lcore_cpus: BTreeMap<String, u32>,
    /// Extra EAL arguments. Cores and ports are generated from `main_core`,
    /// `cores` and `ports[].devargs`, so `-l`, `-c`, `--lcores` and `--vdev` are refused.
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// Packet buffers in the mempool (1024..=1048575; 2^n - 1 is most memory-efficient).
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// Per-core mempool cache size (at most 512, DPDK's `RTE_MEMPOOL_CACHE_MAX_SIZE`).
    #[serde(default = "default_mbuf_cache")]
    pub mbuf_cache: u32,
    /// RX descriptors per queue: a power of two in 64..=4096.
    #[serde(default = "default_desc")]
    pub rx_desc: u16,
    /// TX descriptors per queue: a power of two in 64..=4096.
    #[serde(default = "default_desc")]
    pub tx_desc: u16,
    /// Worker idle policy.
    #[serde(default)]
    pub idle: IdleConfig,
    /// Each worker keeps an exact-match cache of what its stages decided for the packets of
    /// established TCP connections (OVS-DPDK's EMC) and answers the next packets of the same
    /// flow from it, with the same result. `false`: every packet goes through every stage.
    #[serde(default = "default_true")]
    pub flow_cache: bool,
    /// The DPDK ports.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// Physical network name -> name of the `provider` port that reaches it.
    #[serde(default)]
    pub bridge_mappings: BTreeMap<String, String>,
    /// VXLAN underlay settings.
    #[serde(default)]
    pub overlay: OverlayConfig,
    /// Connection tracking for security groups (`[conntrack]`).
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// The control plane's API endpoints (`[control]`).
    #[serde(default)]
    pub control: ControlConfig,
}

/// Where the control plane listens (`[control]`): always a unix socket (mode 0600, so only its
/// owner may change the switch); a TCP address only when set, and then every request must carry
/// `Authorization: Bearer <token>` with the token read from `token_file`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The API's unix socket; default `/run/vswitchd/<host_id>.sock`, so several switches
    /// (a lab of hosts on one machine) each have their own. `vswitchctl` finds the only one.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Also serve the API on this TCP address (e.g. `127.0.0.1:9696`); needs `token_file`.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token for TCP clients (one line, at least 16 characters).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where accepted changes are written (atomically) when `vswitchd` runs without `--state`;
    /// with `--state`, that file is the one kept up to date.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

/// The directory of the default API sockets.
pub const DEFAULT_CONTROL_DIR: &str = "/run/vswitchd";

/// Connection tracking (`[conntrack]`): the table's size and the per-state timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackConfig {
    /// Tracked connections in all, split evenly over the worker cores and allocated at start
    /// (1024..=67108864). When a core's share is full, new connections are refused.
    #[serde(default = "default_ct_capacity")]
    pub capacity: u32,
    /// When full, a new connection evicts the oldest connection that is not established
    /// (Linux's early drop) instead of being refused; established ones are never evicted.
    #[serde(default = "default_true")]
    pub evict_unestablished: bool,
    /// Instance ports whose zone tracks TCP liberally: no sequence/window checks and
    /// mid-stream pick-up (for asymmetric paths), like Linux's `nf_conntrack_tcp_be_liberal`.
    #[serde(default)]
    pub liberal_ports: Vec<String>,
    /// Per-state timeouts, seconds.
    #[serde(default)]
    pub timeouts: ConntrackTimeouts,
    /// Source ports (and ICMP echo identifiers) centralized SNAT on a `dvr_snat` host
    /// translates to, `[low, high]` (Linux's masquerade range is 1024-65535).
    #[serde(default = "default_snat_ports")]
    pub snat_ports: [u16; 2],
}

fn default_snat_ports() -> [u16; 2] {
    [1024, 65535]
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: default_ct_capacity(),
            evict_unestablished: true,
            liberal_ports: Vec::new(),
            timeouts: ConntrackTimeouts::default(),
            snat_ports: default_snat_ports(),
        }
    }
}

fn default_ct_capacity() -> u32 {
    262_144
}

/// Idle timeouts per connection state, in seconds; the defaults are Linux's
/// (`net.netfilter.nf_conntrack_*_timeout*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackTimeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// UDP before a reply was seen.
    pub udp: u32,
    /// UDP once both directions were seen.
    pub udp_stream: u32,
    /// ICMP / ICMPv6 echo.
    pub icmp: u32,
    /// Any other protocol.
    pub generic: u32,
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        ConntrackTimeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
            generic: 600,
        }
    }
}

impl HostConfig {
    /// The API's unix socket: `control.socket`, else `/run/vswitchd/<host_id>.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.control.socket.clone().unwrap_or_else(|| {
            PathBuf::from(DEFAULT_CONTROL_DIR).join(format!("{}.sock", self.host_id))
        })
    }

    /// The port called `name`.
    pub fn port(&self, name: &str) -> Option<&PortConfig> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// The provider port that reaches physical network `physnet`.
    pub fn provider_port(&self, physnet: &str) -> Option<&PortConfig> {
        self.bridge_mappings
            .get(physnet)
            .and_then(|name| self.port(name))
    }

    /// The CPU lcore `lcore` runs on (`lcore_cpus`, else its own number).
    pub fn lcore_cpu(&self, lcore: u32) -> u32 {
        self.lcore_cpus
            .get(&lcore.to_string())
            .copied()
            .unwrap_or(lcore)
    }

    /// The instance port carrying Neutron port `iface_id`.
    pub fn instance_port(&self, iface_id: &str) -> Option<&PortConfig> {
        self.ports
            .iter()
            .find(|p| p.kind == PortKind::Instance && p.iface_id.as_deref() == Some(iface_id))
    }
}

fn default_idle_mode() -> IdleMode {
    IdleMode::Backoff
}
fn default_max_sleep_us() -> u32 {
    200
}
fn default_spin_polls() -> u32 {
    64
}
fn default_rx_queues() -> u16 {
    1
}
fn default_mbufs() -> u32 {
    8191
}
fn default_mbuf_cache() -> u32 {
    256
}
fn default_desc() -> u16 {
    1024
}
