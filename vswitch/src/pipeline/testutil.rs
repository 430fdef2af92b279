//! Test fixtures: a small host with instance and provider ports, frames built with etherparse
//! (an independent builder), and a transmit sink that records what each port would send.
use super::output::{self, Tx, TxBuffers};
use super::{process, Batch, CoreState, Tracer, BURST};
use crate::counters::BatchCounters;
use crate::packet::{MacAddr, PacketBuf, TestBuf};
use crate::tables::compile::compile;
use crate::tables::Tables;

pub const HOST: &str = r#"
role = "dvr"
host_id = "compute1"
cores = [1]
[[ports]]
name = "vm1"
devargs = "net_ring0"
kind = "instance"
iface_id = "p1"
[[ports]]
name = "vm2"
devargs = "net_ring1"
kind = "instance"
iface_id = "p2"
[[ports]]
name = "vm3"
devargs = "net_ring2"
kind = "instance"
iface_id = "p3"
[[ports]]
name = "uplink"
devargs = "net_ring3"
kind = "provider"
[[ports]]
name = "uplink2"
devargs = "net_ring4"
kind = "provider"
[[ports]]
name = "vm4"
devargs = "net_ring5"
kind = "instance"
iface_id = "p4"
[bridge_mappings]
provider = "uplink"
physnet2 = "uplink2"
"#;

pub const STATE: &str = r#"
networks:
  - {id: net1, name: provider1, "provider:network_type": vlan, "provider:physical_network": provider, "provider:segmentation_id": 101}
  - {id: net2, name: flat1, "provider:network_type": flat, "provider:physical_network": provider}
  - {id: net3, name: vlan200, "provider:network_type": vlan, "provider:physical_network": physnet2, "provider:segmentation_id": 200}
subnets:
  - {id: s1, name: s1, network_id: net1, cidr: 203.0.113.0/24, ip_version: 4}
  - {id: s1v6, name: s1v6, network_id: net1, cidr: "fd00:203::/64", ip_version: 6}
  - {id: s2, name: s2, network_id: net2, cidr: 198.51.100.0/24, ip_version: 4}
ports:
  - id: p1
    network_id: net1
    mac_address: "fa:16:3e:00:00:01"
    fixed_ips: [{subnet_id: s1, ip_address: 203.0.113.11}, {subnet_id: s1v6, ip_address: "fd00:203::11"}]
    allowed_address_pairs: [{ip_address: 203.0.113.128/25}, {ip_address: 203.0.113.99, mac_address: "fa:16:3e:00:00:99"}]
    "binding:host_id": compute1
  - id: p2
    network_id: net1
    mac_address: "fa:16:3e:00:00:02"
    fixed_ips: [{subnet_id: s1, ip_address: 203.0.113.12}]
    "binding:host_id": compute1
  - id: p3
    network_id: net2
    mac_address: "fa:16:3e:00:00:03"
    fixed_ips: [{subnet_id: s2, ip_address: 198.51.100.13}]
    "binding:host_id": compute1
  - id: p4
    network_id: net1
    mac_address: "fa:16:3e:00:00:04"
    fixed_ips: [{subnet_id: s1, ip_address: 203.0.113.14}]
    port_security_enabled: false
    "binding:host_id": compute1
"#;

pub const VM1: u16 = 0;
pub const VM2: u16 = 1;
pub const VM3: u16 = 2;
pub const UPLINK: u16 = 3;
pub const UPLINK2: u16 = 4;
pub const VM4: u16 = 5;

pub fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}
pub const MAC1: &str = "fa:16:3e:00:00:01";
pub const MAC2: &str = "fa:16:3e:00:00:02";
pub const MAC3: &str = "fa:16:3e:00:00:03";

pub fn tables() -> Tables {
    tables_from(HOST, STATE, &[])
}

/// Tables compiled from a host config and a desired state (both must be valid).
pub fn tables_from(host: &str, state: &str, port_macs: &[MacAddr]) -> Tables {
    let host =
        vswitch_config::parse_host_str(host).unwrap_or_else(|e| panic!("fixture host config: {e}"));
    let mut state = vswitch_config::parse_state_str(state, false)
        .unwrap_or_else(|e| panic!("fixture state: {e}"));
    open_security_group(&mut state);
    let cross = vswitch_config::validate_for_host(&host, &state);
    assert!(cross.is_empty(), "{cross:?}");
    // Every compile is a new generation, as the control plane publishes them: decisions the
    // cores keep per generation (the route cache, the flow cache) never outlive their tables
    // when a test swaps them.
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    compile(&host, &state, generation, port_macs)
}

/// The switching and routing fixtures are about forwarding, not filtering: when a fixture
/// declares no security groups, every port with port security gets one that allows
/// everything in both directions (Neutron would drop all IP on a port with none). Fixtures
/// that test the firewall declare their own groups and are left alone.
pub fn open_security_group(state: &mut vswitch_config::DesiredState) {
    use vswitch_config::{Direction, EtherType, SecurityGroup, SecurityGroupRule};
    if !state.security_groups.is_empty() {
        return;
    }
    state.security_groups.push(SecurityGroup {
        id: "sg-open".into(),
        name: "open".into(),
        description: String::new(),
        stateful: true,
    });
    for (i, (dir, et)) in [
        (Direction::Ingress, EtherType::Ipv4),
        (Direction::Ingress, EtherType::Ipv6),
        (Direction::Egress, EtherType::Ipv4),
        (Direction::Egress, EtherType::Ipv6),
    ]
    .into_iter()
    .enumerate()
    {
        state.security_group_rules.push(SecurityGroupRule {
            id: format!("sg-open-{i}"),
            security_group_id: "sg-open".into(),
            direction: dir,
            ethertype: et,
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote_ip_prefix: None,
            remote_group_id: None,
            description: String::new(),
        });
    }
    let nets = state.networks.clone();
    for p in &mut state.ports {
        let secured = nets
            .iter()
            .find(|n| n.id == p.network_id)
            .is_some_and(|n| p.port_security(n));
        if secured && (p.device_owner.starts_with("compute") || p.device_owner.is_empty()) {
            p.security_groups.push("sg-open".into());
        }
    }
}

/// Records every frame sent, per port.
#[derive(Default)]
pub struct Sink {
    pub sent: Vec<Vec<Vec<u8>>>,
    /// Accept at most this many frames per call (simulates a full tx ring).
    pub limit: Option<usize>,
    /// Packets handed to another core: (core, packet).
    pub handoffs: Vec<(u16, super::Handoff<TestBuf>)>,
}

impl Tx<TestBuf> for Sink {
    fn handoff(
        &mut self,
        core: u16,
        h: super::Handoff<TestBuf>,
    ) -> Result<(), super::Handoff<TestBuf>> {
        self.handoffs.push((core, h));
        Ok(())
    }

    fn tx(&mut self, port: u16, pkts: &mut [Option<TestBuf>; BURST], n: usize) -> usize {
        if self.sent.len() <= port as usize {
            self.sent.resize(port as usize + 1, Vec::new());
        }
        let n = self.limit.map_or(n, |l| n.min(l));
        for slot in &mut pkts[..n] {
            let p = slot.take().expect("tx slots are full");
            self.sent[port as usize].push(p.data().to_vec());
        }
        n
    }
}

impl Sink {
    pub fn on(&self, port: u16) -> &[Vec<u8>] {
        self.sent
            .get(port as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }
    pub fn total(&self) -> usize {
        self.sent.iter().map(Vec::len).sum()
    }
}

/// Runs frames received on `in_port` through every stage (in batches of 32) and output.
pub struct Harness {
    pub t: Tables,
    pub s: CoreState,
    pub c: BatchCounters,
    pub sink: Sink,
    pub txb: TxBuffers<TestBuf>,
    /// Bytes `classify` counted as received, over all batches.
    pub rx_bytes: u64,
    /// Packets the router holds while their next hop resolves.
    pub held: super::router::Pending<TestBuf>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(tables())
    }

    pub fn with(t: Tables) -> Self {
        let n = t.ports.len();
        let mut h = Self {
            t,
            s: CoreState::new(
                1024,
                300_000,
                &super::SharedState {
                    neigh: std::sync::Arc::new(crate::tables::neighbor::NeighborTable::new(64)),
                    l3neigh: std::sync::Arc::new(crate::tables::l3neigh::L3Neighbors::new(64)),
                },
                Default::default(),
                Default::default(),
            ),
            c: BatchCounters::default(),
            sink: Sink::default(),
            txb: TxBuffers::new(n),
            held: Default::default(),
            rx_bytes: 0,
        };
        h.s.fw.per_port = vec![[0; 2]; n];
        h
    }

    pub fn rx_traced<T: Tracer>(&mut self, in_port: u16, frames: &[Vec<u8>], tr: &mut T) {
        for chunk in frames.chunks(BURST) {
            let mut b: Batch<TestBuf> = Batch::default();
            for (i, f) in chunk.iter().enumerate() {
                b.pkts[i] = Some(TestBuf::new(f));
            }
            b.start(in_port, chunk.len());
            process(
                &mut b,
                &self.t,
                &mut self.s,
                &mut self.held,
                &mut self.c,
                tr,
            );
            self.rx_bytes += b.rx_bytes;
            output::run(
                &mut b,
                &self.t,
                &mut self.s,
                &mut self.txb,
                &mut self.sink,
                &mut self.c,
                tr,
            );
            assert!(
                b.pkts.iter().all(Option::is_none),
                "every packet left the batch"
            );
        }
        super::router::release_pending(
            &mut self.held,
            &self.t,
            &mut self.s,
            &mut self.txb,
            &mut self.sink,
            &mut self.c,
        );
        self.txb.flush(&mut self.sink, &mut self.c);
    }

    pub fn rx(&mut self, in_port: u16, frames: &[Vec<u8>]) {
        self.rx_traced(in_port, frames, &mut super::NoTrace);
    }
}

/// An Ethernet/IPv4/UDP frame built by etherparse (18 bytes of payload).
pub fn udp4(src: &str, dst: &str, sip: [u8; 4], dip: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    udp4_tagged((src, dst), None, (sip, dip), (sport, dport), &[0x42; 18])
}

/// `n` UDP flows from `a` (MAC, address; source port `sport + k` for flow `k`) to `b`'s port
/// `dport`: each flow's datagram there, and the reply back.
pub fn udp_flows(
    n: u16,
    a: (&str, [u8; 4]),
    b: (&str, [u8; 4]),
    sport: u16,
    dport: u16,
) -> [Vec<Vec<u8>>; 2] {
    [
        (0..n)
            .map(|k| udp4(a.0, b.0, a.1, b.1, sport + k, dport))
            .collect(),
        (0..n)
            .map(|k| udp4(b.0, a.0, b.1, a.1, dport, sport + k))
            .collect(),
    ]
}

/// An Ethernet/IPv4/UDP frame, tagged `vid` if given, with TTL 64 and `payload`: built by
/// etherparse, checksums computed.
/// `f`, an IPv4 frame (tagged or not), with DF cleared and its header checksum made right.
pub fn without_df(f: Vec<u8>) -> Vec<u8> {
    edit_ipv4(f, |h| h[6] &= !0x40)
}

/// `f`, an IPv4 frame (tagged or not), with identification `id` (etherparse writes 0 into
/// every packet: datagrams that are to be told apart by their fragments need their own).
pub fn with_ident(f: Vec<u8>, id: u16) -> Vec<u8> {
    edit_ipv4(f, |h| h[4..6].copy_from_slice(&id.to_be_bytes()))
}

/// `f` with its IPv4 header changed by `edit`, the header checksum made right again.
fn edit_ipv4(mut f: Vec<u8>, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let at = if f[12..14] == [0x81, 0x00] { 18 } else { 14 };
    edit(&mut f[at..]);
    let mut ip = etherparse::Ipv4Header::from_slice(&f[at..]).unwrap().0;
    ip.header_checksum = ip.calc_header_checksum();
    f[at + 10..at + 12].copy_from_slice(&ip.header_checksum.to_be_bytes());
    f
}

/// The VNI and the inner frame of VXLAN frame `f` (outer IPv4 without options).
pub fn inner_of(f: &[u8]) -> (u32, Vec<u8>) {
    let vni = u32::from_be_bytes([0, f[46], f[47], f[48]]);
    (vni, f[50..].to_vec())
}

/// Tags untagged frame `f` with VLAN `vid`.
pub fn tagged(f: &[u8], vid: u16) -> Vec<u8> {
    let mut g = f[..12].to_vec();
    g.extend_from_slice(&[0x81, 0x00]);
    g.extend_from_slice(&vid.to_be_bytes());
    g.extend_from_slice(&f[12..]);
    g
}

/// Tagged frame `f` without its tag (which must be `vid`).
pub fn untagged(f: &[u8], vid: u16) -> Vec<u8> {
    assert_eq!(
        f[12..16],
        [0x81, 0x00, (vid >> 8) as u8, vid as u8],
        "tagged {vid}"
    );
    let mut g = f[..12].to_vec();
    g.extend_from_slice(&f[16..]);
    g
}

/// Untagged IPv4 frame `f` cut into fragments of at most `mtu` bytes of IP, as a sender's own
/// stack cuts a datagram too big for its link.
pub fn fragments(f: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    crate::packet::frag::fragment_v4(TestBuf::new(f), mtu, |q| out.push(q.data().to_vec()))
        .expect("fragmentable");
    out
}

/// Whether the UDP datagram `d` (header and payload) from `src` to `dst` has a right
/// checksum.
pub fn udp_sum_ok(d: &[u8], src: [u8; 4], dst: [u8; 4]) -> bool {
    use crate::packet::checksum::{fold, pseudo_v4, sum};
    fold(sum(d, pseudo_v4(src, dst, 17, d.len() as u16))) == 0xffff
}

/// The IPv4 datagram that `frags` (untagged frames, in the order sent) carry, put back
/// together as a receiver does: every header has a right checksum, a length that is the
/// frame's and within `mtu`, DF clear, the first one's identification, protocol, TTL and
/// addresses, More Fragments on all but the last, and an offset where the one before ended.
/// Returns the first fragment's header and the payload.
pub fn reassemble<F: AsRef<[u8]>>(frags: &[F], mtu: usize) -> (etherparse::Ipv4Header, Vec<u8>) {
    let first = etherparse::Ipv4Header::from_slice(&frags[0].as_ref()[14..])
        .unwrap()
        .0;
    let mut payload = Vec::new();
    for (k, f) in frags.iter().enumerate() {
        let f = f.as_ref();
        let ip = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap().0;
        let len = ip.total_len as usize;
        assert_eq!(len, f.len() - 14, "fragment {k}: length");
        assert!(len <= mtu, "fragment {k}: {len} bytes, MTU {mtu}");
        assert_eq!(
            ip.header_checksum,
            ip.calc_header_checksum(),
            "fragment {k}"
        );
        assert!(!ip.dont_fragment, "fragment {k}: DF");
        assert_eq!(
            (
                ip.identification,
                ip.protocol,
                ip.time_to_live,
                ip.source,
                ip.destination
            ),
            (
                first.identification,
                first.protocol,
                first.time_to_live,
                first.source,
                first.destination
            ),
            "fragment {k}"
        );
        assert_eq!(
            ip.fragment_offset.value() as usize * 8,
            payload.len(),
            "fragment {k}: offset"
        );
        assert_eq!(ip.more_fragments, k + 1 < frags.len(), "fragment {k}: MF");
        payload.extend_from_slice(&f[14 + ip.header_len()..]);
    }
    (first, payload)
}

pub fn udp4_tagged(
    (src, dst): (&str, &str),
    vid: Option<u16>,
    (sip, dip): ([u8; 4], [u8; 4]),
    (sport, dport): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac(src).0, mac(dst).0);
    let mut out = Vec::new();
    match vid {
        Some(v) => b
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv4(sip, dip, 64)
            .udp(sport, dport)
            .write(&mut out, payload),
        None => b
            .ipv4(sip, dip, 64)
            .udp(sport, dport)
            .write(&mut out, payload),
    }
    .unwrap();
    out
}

/// An IPv4 address and a port.
pub type Endpoint = ([u8; 4], u16);

/// What an Ethernet/IPv4/UDP frame (tagged or not) says: (source, destination, UDP checksum),
/// with the IPv4 header checksum verified and the UDP one too unless it is 0 (none).
pub fn udp4_fields(f: &[u8]) -> (Endpoint, Endpoint, u16) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let s = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(v4)) = &s.net else {
        panic!("not IPv4")
    };
    let h = v4.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let Some(TransportSlice::Udp(u)) = &s.transport else {
        panic!("not UDP")
    };
    if u.checksum() != 0 {
        let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
        assert_eq!(u.checksum(), want, "UDP checksum");
    }
    (
        (h.source, u.source_port()),
        (h.destination, u.destination_port()),
        u.checksum(),
    )
}

/// The same frame (ports 1000 -> 2000) with an 802.1Q tag.
pub fn udp4_vlan(src: &str, dst: &str, vid: u16, sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    udp4_tagged((src, dst), Some(vid), (sip, dip), (1000, 2000), &[0x42; 18])
}

/// An Ethernet/IPv6/UDP frame built by etherparse.
pub fn udp6(src: &str, dst: &str, sip: &str, dip: &str, sport: u16, dport: u16) -> Vec<u8> {
    let s: std::net::Ipv6Addr = sip.parse().unwrap();
    let d: std::net::Ipv6Addr = dip.parse().unwrap();
    let b = etherparse::PacketBuilder::ethernet2(mac(src).0, mac(dst).0)
        .ipv6(s.octets(), d.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, &[1, 2, 3, 4]).unwrap();
    out
}

/// An ICMPv6 message of `icmp_type` (RA = 134) built by etherparse.
pub fn icmp6(src: &str, sip: &str, icmp_type: u8) -> Vec<u8> {
    let s: std::net::Ipv6Addr = sip.parse().unwrap();
    let d: std::net::Ipv6Addr = "ff02::1".parse().unwrap();
    let b = etherparse::PacketBuilder::ethernet2(mac(src).0, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(s.octets(), d.octets(), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: icmp_type,
            code_u8: 0,
            bytes5to8: [0; 4],
        });
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 16]).unwrap();
    out
}

/// An ARP request built by etherparse.
pub fn arp(src: &str, sha: &str, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let a = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation::REQUEST,
        &mac(sha).0,
        &spa,
        &[0; 6],
        &tpa,
    )
    .unwrap();
    let b = etherparse::PacketBuilder::ethernet2(mac(src).0, [0xff; 6]).arp(a);
    let mut out = Vec::new();
    b.write(&mut out).unwrap();
    out
}

/// A TCP/IPv4 segment: `flags` as TCP's flag byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08,
/// ACK 0x10; the acknowledgment number is `ack` when ACK is set), `payload` bytes of data,
/// tagged with `vid` if given.
#[allow(clippy::too_many_arguments)]
pub fn tcp4(
    smac: &str,
    dmac: &str,
    vid: Option<u16>,
    (src, dst): ([u8; 4], [u8; 4]),
    ports: (u16, u16),
    seq_ack: (u32, u32),
    flags: u8,
    payload: usize,
    ttl: u8,
) -> Vec<u8> {
    tcp_over(
        smac,
        dmac,
        vid,
        ipv4_headers(src, dst, ttl),
        ports,
        seq_ack,
        flags,
        payload,
    )
}

/// An IPv4 header for etherparse's builder, as its `ipv4` step makes one (lengths and
/// protocol filled in when written).
fn ipv4_headers(src: [u8; 4], dst: [u8; 4], ttl: u8) -> etherparse::IpHeaders {
    let h = etherparse::Ipv4Header {
        source: src,
        destination: dst,
        time_to_live: ttl,
        ..Default::default()
    };
    etherparse::IpHeaders::Ipv4(h, Default::default())
}

/// [`ipv4_headers`] for IPv6 (`ttl`: the hop limit), as the `ipv6` step makes one.
fn ipv6_headers(src: [u8; 16], dst: [u8; 16], ttl: u8) -> etherparse::IpHeaders {
    let h = etherparse::Ipv6Header {
        source: src,
        destination: dst,
        hop_limit: ttl,
        ..Default::default()
    };
    etherparse::IpHeaders::Ipv6(h, Default::default())
}

/// etherparse's builder up to `ip`: Ethernet from `smac` to `dmac`, tagged with `vid` if
/// given.
fn l3(
    smac: &str,
    dmac: &str,
    vid: Option<u16>,
    ip: etherparse::IpHeaders,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let b = etherparse::PacketBuilder::ethernet2(mac(smac).0, mac(dmac).0);
    match vid {
        Some(v) => b
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ip(ip),
        None => b.ip(ip),
    }
}

/// A TCP segment over `ip` (lengths and protocol filled in when written), tagged with `vid`
/// if given, with `flags` ([`with_flags`]) and `payload` bytes of 0x5a.
#[allow(clippy::too_many_arguments)]
fn tcp_over(
    smac: &str,
    dmac: &str,
    vid: Option<u16>,
    ip: etherparse::IpHeaders,
    (sport, dport): (u16, u16),
    (seq, ack): (u32, u32),
    flags: u8,
    payload: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    with_flags(
        l3(smac, dmac, vid, ip).tcp(sport, dport, seq, 64240),
        flags,
        ack,
    )
    .write(&mut out, &vec![0x5au8; payload])
    .unwrap();
    out
}

/// The TCP flags of `flags` (FIN, SYN, RST, PSH, ACK of `ack`) set on builder `t`.
fn with_flags(
    mut t: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    flags: u8,
    ack: u32,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    if flags & 0x01 != 0 {
        t = t.fin();
    }
    if flags & 0x02 != 0 {
        t = t.syn();
    }
    if flags & 0x04 != 0 {
        t = t.rst();
    }
    if flags & 0x08 != 0 {
        t = t.psh();
    }
    if flags & 0x10 != 0 {
        t = t.ack(ack);
    }
    t
}

/// One side of TCP connections as its own port sees them: where it sends from and to.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub port: u16,
    pub smac: &'a str,
    pub dmac: &'a str,
    pub vid: Option<u16>,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// A fixed workload for counting what the stages and the flow cache cost per packet, without
/// DPDK (perf/README.md, "Instructions per packet"): `cv`'s handshakes, then 40 rounds of 6
/// data bytes from the client and an ACK from the server, every segment through `rx` (which
/// may wrap the frames of a port, e.g. in VXLAN); `after_syns` reads what it needs from the
/// SYNs' output (a SNAT router's ports). `PROBE_NO_CACHE=1`: the stages alone; `PROBE_SYN=1`:
/// every round also replays the SYNs and SYN-ACKs (retransmissions on established
/// connections, as the bench's pcaps do when they wrap).
pub fn probe_established(
    h: &mut Harness,
    cv: &mut Conversation,
    rx: impl Fn(&mut Harness, (u16, Vec<Vec<u8>>)),
    after_syns: impl FnOnce(&Harness, &mut Conversation),
) {
    h.s.flows.enabled = std::env::var_os("PROBE_NO_CACHE").is_none();
    let replay_syn = std::env::var_os("PROBE_SYN").is_some();
    let (syn, ack, psh) = (0x02, 0x10, 0x18);
    let n = cv.n as usize;
    let syns = cv.all(false, syn, 0);
    rx(h, syns.clone());
    after_syns(h, cv);
    let syn_acks = cv.all(true, syn | ack, 0);
    rx(h, syn_acks.clone());
    rx(h, cv.all(false, ack, 0));
    let sent = |h: &Harness| h.sink.sent.iter().map(Vec::len).sum::<usize>();
    assert_eq!(sent(h), 3 * n, "the handshakes forwarded");
    h.sink.sent.iter_mut().for_each(Vec::clear);
    for _ in 0..40 {
        rx(h, cv.all(false, psh, 6));
        rx(h, cv.all(true, ack, 0));
        if replay_syn {
            rx(h, syns.clone());
            rx(h, syn_acks.clone());
        }
        let want = (2 + 2 * replay_syn as usize) * n;
        assert_eq!(sent(h), want, "every segment forwarded");
        h.sink.sent.iter_mut().for_each(Vec::clear);
    }
    if h.s.flows.enabled {
        assert!(
            h.s.flows.stats.hits >= 2 * n as u64 * 38,
            "{:?}",
            h.s.flows.stats
        );
    }
}

/// A fixed workload of UDP flows for counting instructions per datagram, as
/// [`probe_established`]: one datagram of every flow from `a`'s port and one back from `b`'s
/// (none: one way, the flows never replied), 41 rounds (the first opens and replies each
/// flow, the second is learnt: 39 hit, both ways or one), every datagram forwarded out of the
/// other port. `PROBE_NO_CACHE=1`: the stages alone.
pub fn probe_udp(h: &mut Harness, (a, there): (u16, &[Vec<u8>]), (b, back): (u16, &[Vec<u8>])) {
    h.s.flows.enabled = std::env::var_os("PROBE_NO_CACHE").is_none();
    let n = there.len();
    for _ in 0..41 {
        h.rx(a, there);
        h.rx(b, back);
    }
    assert_eq!(h.sink.on(b).len(), 41 * n, "every datagram there forwarded");
    assert_eq!(h.sink.on(a).len(), 41 * back.len(), "and back");
    if h.s.flows.enabled {
        assert!(
            h.s.flows.stats.hits >= 39 * (n + back.len()) as u64,
            "{:?}",
            h.s.flows.stats
        );
    }
}

/// Frames of `n` connections (client ports 40000 + k to server port 5001) for a scripted
/// conversation, tracking both sides' sequence numbers.
pub struct Conversation<'a> {
    pub client: Side<'a>,
    pub server: Side<'a>,
    pub n: u16,
    /// The client port the server sees for each connection (a SNAT router translates it):
    /// 40000 + k unless set.
    pub seen_ports: Vec<u16>,
    /// UDP flows instead of TCP connections: each segment is a datagram (flags ignored).
    pub udp: bool,
    /// Over IPv6 between these addresses (client's, server's) instead of the sides' IPv4
    /// addresses.
    pub v6: Option<[[u8; 16]; 2]>,
    seq: Vec<[u32; 2]>,
}

impl<'a> Conversation<'a> {
    pub fn new(client: Side<'a>, server: Side<'a>, n: u16) -> Self {
        Self {
            client,
            server,
            n,
            seen_ports: (0..n).map(|k| 40000 + k).collect(),
            udp: false,
            v6: None,
            seq: (0..n as u32)
                .map(|k| [1000 + k * 7919, 500_000 + k * 104_729])
                .collect(),
        }
    }

    /// One segment of connection `k` from the client (`from_server` false) or the server,
    /// with `flags`, `payload` bytes and `ttl`; sequence numbers advance by what it takes.
    /// With [`udp`](Self::udp): a datagram of flow `k`, `flags` ignored.
    pub fn seg(
        &mut self,
        k: u16,
        from_server: bool,
        flags: u8,
        payload: usize,
        ttl: u8,
    ) -> Vec<u8> {
        let (me, peer) = (from_server as usize, !from_server as usize);
        let [seq, ack] = [self.seq[k as usize][me], self.seq[k as usize][peer]];
        let ports = if from_server {
            (5001, self.seen_ports[k as usize])
        } else {
            (40000 + k, 5001)
        };
        let f = self.frame(from_server, ports, (seq, ack), flags, payload, ttl);
        if !self.udp {
            let used = payload as u32 + (flags & 0x03 != 0) as u32;
            self.seq[k as usize][me] = seq.wrapping_add(used);
        }
        f
    }

    /// The first packet of a connection (with [`udp`](Self::udp): a flow) outside the
    /// conversation, a SYN (a datagram): from the client's port `port` to the server's 5001,
    /// or (`from_server`) from 5001 to the client's `port` as the server sees it.
    pub fn opening(&self, port: u16, from_server: bool) -> Vec<u8> {
        let ports = if from_server {
            (5001, port)
        } else {
            (port, 5001)
        };
        self.frame(from_server, ports, (u32::from(port) << 12, 0), 0x02, 0, 64)
    }

    /// A segment (with [`udp`](Self::udp): a datagram, `flags` and sequence numbers ignored)
    /// from the server (`from_server`) or the client, between `ports` (its own first).
    fn frame(
        &self,
        from_server: bool,
        ports: (u16, u16),
        seq_ack: (u32, u32),
        flags: u8,
        payload: usize,
        ttl: u8,
    ) -> Vec<u8> {
        let s = if from_server {
            self.server
        } else {
            self.client
        };
        let v6 = self
            .v6
            .map(|[c, sv]| if from_server { [sv, c] } else { [c, sv] });
        let ip = match v6 {
            Some([src, dst]) => ipv6_headers(src, dst, ttl),
            None => ipv4_headers(s.src, s.dst, ttl),
        };
        if self.udp {
            let mut out = Vec::new();
            l3(s.smac, s.dmac, s.vid, ip)
                .udp(ports.0, ports.1)
                .write(&mut out, &vec![0x5au8; payload])
                .unwrap();
            return out;
        }
        tcp_over(s.smac, s.dmac, s.vid, ip, ports, seq_ack, flags, payload)
    }

    /// An ICMP error the server (`from_server`) or the client sends about a segment (or
    /// datagram) of connection `k` from the other side, quoting it as it would arrive there
    /// (the addresses its own side sees, the client port the server sees; TCP: 20 bytes at
    /// the other side's next sequence number, acknowledging this side's): from its own
    /// address, or with `ic.from_router` from a router next to it (the last byte of its
    /// address 254, over IPv6 0xfe). Over IPv6 ([`v6`](Self::v6)) an ICMPv6 error: port or
    /// address unreachable, packet too big, hop limit exceeded; a short quote is 48 bytes.
    pub fn icmp_error(&self, k: u16, from_server: bool, ic: FuzzIcmp, ttl: u8) -> Vec<u8> {
        use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type};
        let s = if from_server {
            self.server
        } else {
            self.client
        };
        let (me, peer) = (from_server as usize, !from_server as usize);
        let [seq, ack] = [self.seq[k as usize][peer], self.seq[k as usize][me]];
        // The quoted packet went from the peer to this side: its source is where this side
        // sends to.
        let ports = if from_server {
            (self.seen_ports[k as usize], 5001)
        } else {
            (5001, 40000 + k)
        };
        // IP headers from this side's address (or a router's next to it) to the peer's,
        // and from the peer's to this side's (the quote's).
        let (outer, quoted_ip, short) = match self.v6 {
            Some(v6) => {
                let (mut src, theirs) = (v6[me], v6[peer]);
                let quoted = ipv6_headers(theirs, src, 60);
                if ic.from_router {
                    src[15] = 0xfe;
                }
                (ipv6_headers(src, theirs, ttl), quoted, 48)
            }
            None => {
                let mut src = s.src;
                if ic.from_router {
                    src[3] = 254;
                }
                (
                    ipv4_headers(src, s.dst, ttl),
                    ipv4_headers(s.dst, s.src, 60),
                    28,
                )
            }
        };
        let quoted = if self.udp {
            let mut out = Vec::new();
            etherparse::PacketBuilder::ip(quoted_ip)
                .udp(ports.0, ports.1)
                .write(&mut out, &[0x5a; 20])
                .unwrap();
            out
        } else {
            let f = tcp_over(s.dmac, s.smac, None, quoted_ip, ports, (seq, ack), 0x18, 20);
            f[14..].to_vec()
        };
        let quote = if ic.short_quote {
            &quoted[..short]
        } else {
            &quoted[..]
        };
        let b = l3(s.smac, s.dmac, s.vid, outer);
        let mut out = Vec::new();
        match self.v6 {
            None => b
                .icmpv4(match ic.kind % 4 {
                    0 => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
                    1 => Icmpv4Type::DestinationUnreachable(
                        icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
                    ),
                    2 => Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
                    _ => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host),
                })
                .write(&mut out, quote),
            Some(_) => b
                .icmpv6(match ic.kind % 4 {
                    0 => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
                    1 => Icmpv6Type::PacketTooBig { mtu: 1280 },
                    2 => Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
                    _ => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Address),
                })
                .write(&mut out, quote),
        }
        .unwrap();
        out
    }

    /// The port the server's (`from_server`) or the client's frames arrive on.
    pub fn port(&self, from_server: bool) -> u16 {
        if from_server {
            self.server.port
        } else {
            self.client.port
        }
    }

    /// The same segment for every connection.
    pub fn all(&mut self, from_server: bool, flags: u8, payload: usize) -> (u16, Vec<Vec<u8>>) {
        (
            self.port(from_server),
            (0..self.n)
                .map(|k| self.seg(k, from_server, flags, payload, 64))
                .collect(),
        )
    }
}

/// One segment of a differential fuzz ([`Twins::play`]): connection `k` (modulo the
/// conversation's count) with TCP `flags`, `payload` bytes and `ttl` (or, with `icmp`, an
/// ICMP error about a segment of the connection from the other side), then the bytes of
/// `damage` overwritten (offsets in the frame as the side sends it, before any wrapping; those
/// past its end ignored) and `cut` bytes cut off its end.
#[derive(Debug, Clone)]
pub struct FuzzSeg {
    pub k: u16,
    pub flags: u8,
    pub payload: usize,
    pub ttl: u8,
    pub damage: Vec<(usize, u8)>,
    pub cut: usize,
    pub icmp: Option<FuzzIcmp>,
}

/// An ICMP error of a differential fuzz ([`Conversation::icmp_error`]): `kind` (modulo 4)
/// port unreachable, fragmentation needed, TTL exceeded, host unreachable; from a router
/// next to the side that sends it; quoting the IP header and 8 bytes only, or the whole packet.
#[derive(Debug, Clone, Copy)]
pub struct FuzzIcmp {
    pub kind: u8,
    pub from_router: bool,
    pub short_quote: bool,
}

impl FuzzSeg {
    /// The frame: `cv`'s segment (`from_server` or from the client), damaged and cut.
    pub fn frame(&self, cv: &mut Conversation, from_server: bool) -> Vec<u8> {
        let k = self.k % cv.n;
        let mut f = match self.icmp {
            Some(ic) => cv.icmp_error(k, from_server, ic, self.ttl),
            None => cv.seg(k, from_server, self.flags, self.payload, self.ttl),
        };
        for &(at, v) in &self.damage {
            if let Some(b) = f.get_mut(at) {
                *b = v;
            }
        }
        f.truncate(f.len().saturating_sub(self.cut));
        f
    }
}

/// What a differential fuzz does next.
#[derive(Debug, Clone)]
pub enum FuzzMove {
    /// A batch of segments (more than [`BURST`]: several batches), all from one side.
    Batch {
        from_server: bool,
        segs: Vec<FuzzSeg>,
    },
    /// Milliseconds pass on every harness.
    Wait(u64),
    /// New tables (the next generation) from the test's desired state `k` (modulo how many
    /// it gave, [`Twins::states`]; none: nothing happens), as a control-plane change swaps them
    /// under the workers.
    Retable(usize),
    /// A sweep of up to this many slots of the connection table, as a worker runs one
    /// between bursts: entries past their deadline removed, those admitted under a port's
    /// earlier policy judged again (kept, or cut).
    Sweep(usize),
    /// The test's announcement `k` (modulo how many it gave, [`Twins::announcements`];
    /// none: nothing happens): a frame from the network that changes what the stages know
    /// (an ARP reply moving a next hop to another MAC, or back), fed to every harness.
    Announce(usize),
    /// The first packets of `n` connections (or flows) outside the conversation, client
    /// ports `first`, `first + 1`, ... ([`Conversation::opening`]), from one side: with the
    /// connection table limited ([`Twins::limit`]), a flood that fills it, new connections
    /// refused or evicting others while the conversation's go on.
    Flood {
        from_server: bool,
        first: u16,
        n: u16,
    },
}

/// The connection table of a differential fuzz's twins ([`Twins::limit`]): the entries of a
/// conversation of 6 connections in one or two zones, and room for 12 to 18 more, which one
/// [`FuzzMove::Flood`] fills.
pub const FUZZ_TABLE: usize = 24;

/// Moves for [`Twins::play`]: mostly what an established connection sends (plain ACKs, data),
/// among them FINs, RSTs, SYNs, SYN-ACKs and any flag byte; ICMP errors about the
/// connections from either end or a router next to it; TTLs that run out at a router;
/// payloads up to and past a 1500-byte MTU; any bytes of the headers overwritten; frames cut
/// short; pauses past the flow cache's [`MAX_AGE_MS`] and past the connection timeouts;
/// new tables; sweeps of the connection table, whole or a few slots; announcements (a next
/// hop's MAC moving); floods of new connections.
///
/// [`MAX_AGE_MS`]: super::flowcache::MAX_AGE_MS
pub fn fuzz_moves() -> impl proptest::strategy::Strategy<Value = Vec<FuzzMove>> {
    use proptest::prelude::*;
    let flags = prop_oneof![
        10 => Just(0x10u8),
        10 => Just(0x18),
        1 => Just(0x11),
        1 => Just(0x04),
        1 => Just(0x14),
        1 => Just(0x02),
        1 => Just(0x12),
        1 => any::<u8>(),
    ];
    let payload = prop_oneof![4 => Just(0usize), 4 => 1usize..200, 1 => 1400usize..1520];
    let ttl = prop_oneof![8 => Just(64u8), 1 => 0u8..3];
    let damage = prop_oneof![
        6 => Just(vec![]),
        1 => proptest::collection::vec((0usize..70, any::<u8>()), 1..4),
    ];
    let cut = prop_oneof![12 => Just(0usize), 1 => 1usize..80];
    let icmp = prop_oneof![
        16 => Just(None),
        1 => (any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(kind, from_router, short_quote)| {
            Some(FuzzIcmp {
                kind,
                from_router,
                short_quote,
            })
        }),
    ];
    let seg = (any::<u16>(), flags, payload, ttl, damage, cut, icmp).prop_map(
        |(k, flags, payload, ttl, damage, cut, icmp)| FuzzSeg {
            k,
            flags,
            payload,
            ttl,
            damage,
            cut,
            icmp,
        },
    );
    let mv = prop_oneof![
        8 => (any::<bool>(), proptest::collection::vec(seg, 1..40))
            .prop_map(|(from_server, segs)| FuzzMove::Batch { from_server, segs }),
        1 => prop_oneof![4 => 0u64..3000, 1 => 100_000u64..700_000].prop_map(FuzzMove::Wait),
        1 => any::<usize>().prop_map(FuzzMove::Retable),
        1 => prop_oneof![Just(usize::MAX), 1usize..64].prop_map(FuzzMove::Sweep),
        1 => any::<usize>().prop_map(FuzzMove::Announce),
        1 => (any::<bool>(), 20000u16..30000, 1u16..48)
            .prop_map(|(from_server, first, n)| FuzzMove::Flood { from_server, first, n }),
    ];
    proptest::collection::vec(mv, 1..16)
}

/// What an ICMP or ICMPv6 error frame says (the frame of an instance or provider port, tagged
/// or not, or VXLAN around one): outer source and destination, ICMP type, and the quoted
/// packet's source and destination addresses and ports.
pub type IcmpSays = (IpAddr, IpAddr, u8, (IpAddr, u16), (IpAddr, u16));

use std::net::IpAddr;

/// Reads [`IcmpSays`] from `f` with etherparse; `None`: not an ICMP(v6) error quoting TCP or
/// UDP. Panics on a wrong checksum: the IPv4 header's, the ICMP(v6) message's, the quoted
/// IPv4 header's and, when the quote holds the whole packet, its TCP or UDP checksum.
pub fn icmp_says(f: &[u8]) -> Option<IcmpSays> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let s = SlicedPacket::from_ethernet(f).ok()?;
    if let Some(TransportSlice::Udp(u)) = &s.transport {
        if u.destination_port() == 4789 {
            return icmp_says(&u.payload()[8..]);
        }
    }
    // The outer addresses; the ICMP type and the quote, with its checksums checked.
    let (src, dst, ty, q): (IpAddr, IpAddr, u8, &[u8]) = match (&s.net, &s.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IP header checksum"
            );
            let q = icmp.payload();
            let want = icmp.header().icmp_type.calc_checksum(q);
            assert_eq!(icmp.checksum(), want, "ICMP checksum");
            (h.source.into(), h.destination.into(), icmp.type_u8(), q)
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
            let (src, dst) = (ip.header().source(), ip.header().destination());
            let q = icmp.payload();
            let want = icmp.header().icmp_type.calc_checksum(src, dst, q).ok();
            assert_eq!(Some(icmp.checksum()), want, "ICMPv6 checksum");
            (src.into(), dst.into(), icmp.type_u8(), q)
        }
        _ => return None,
    };
    // The quoted packet: its addresses, where its transport header starts, and its length.
    let (qs, qd, l4, len): (IpAddr, IpAddr, usize, usize) = if q.first()? >> 4 == 4 {
        let (qh, _) = etherparse::Ipv4Header::from_slice(q).ok()?;
        let sum = qh.calc_header_checksum();
        assert_eq!(qh.header_checksum, sum, "quoted IP header checksum");
        let l4 = qh.header_len();
        (
            qh.source.into(),
            qh.destination.into(),
            l4,
            qh.total_len as usize,
        )
    } else {
        let (qh, _) = etherparse::Ipv6Header::from_slice(q).ok()?;
        let len = 40 + qh.payload_length as usize;
        (qh.source.into(), qh.destination.into(), 40, len)
    };
    if q.len() >= len {
        let whole = SlicedPacket::from_ip(&q[..len]).ok()?;
        let sum = |t: &TransportSlice| -> Option<(u16, u16)> {
            Some(match (t, qs, qd) {
                (TransportSlice::Tcp(t), IpAddr::V4(a), IpAddr::V4(b)) => (
                    t.checksum(),
                    t.calc_checksum_ipv4(a.octets(), b.octets()).ok()?,
                ),
                (TransportSlice::Tcp(t), IpAddr::V6(a), IpAddr::V6(b)) => (
                    t.checksum(),
                    t.calc_checksum_ipv6(a.octets(), b.octets()).ok()?,
                ),
                (TransportSlice::Udp(u), IpAddr::V4(a), IpAddr::V4(b)) if u.checksum() != 0 => {
                    let h = u.to_header();
                    let want = h.calc_checksum_ipv4_raw(a.octets(), b.octets(), u.payload());
                    (u.checksum(), want.ok()?)
                }
                (TransportSlice::Udp(u), IpAddr::V6(a), IpAddr::V6(b)) => {
                    let h = u.to_header();
                    let want = h.calc_checksum_ipv6_raw(a.octets(), b.octets(), u.payload());
                    (u.checksum(), want.ok()?)
                }
                _ => return None,
            })
        };
        if let Some((got, want)) = whole.transport.as_ref().and_then(sum) {
            assert_eq!(got, want, "quoted transport checksum");
        }
    }
    let port = |at: usize| Some(u16::from_be_bytes([*q.get(l4 + at)?, *q.get(l4 + at + 1)?]));
    Some((src, dst, ty, (qs, port(0)?), (qd, port(2)?)))
}

/// Harnesses on the same tables fed the same frames: one with the flow cache, one without,
/// and one traced (as `vswitchctl trace` runs the stages: without the flow cache and without
/// the stages' own short cuts, the router's route cache and the firewall's fast path and
/// mirror). Everything they send and count must be the same, step after step.
pub struct Twins {
    pub cached: Harness,
    pub staged: Harness,
    pub traced: Harness,
    /// The desired states a [`FuzzMove::Retable`] swaps in.
    pub states: Vec<Box<dyn Fn() -> Tables>>,
    /// The frames (and the port each arrives on) a [`FuzzMove::Announce`] plays.
    pub announcements: Vec<(u16, Vec<u8>)>,
}

impl Twins {
    pub fn new(make: impl Fn() -> Harness) -> Self {
        let cached = make();
        let mut staged = make();
        staged.s.flows.enabled = false;
        let traced = make();
        assert!(cached.s.flows.enabled, "the flow cache is on by default");
        Self {
            cached,
            staged,
            traced,
            states: Vec::new(),
            announcements: Vec::new(),
        }
    }

    /// The three harnesses, to change them alike (time, flushes).
    pub fn all(&mut self) -> [&mut Harness; 3] {
        [&mut self.cached, &mut self.staged, &mut self.traced]
    }

    /// Gives every twin a connection table of `capacity` entries (with its timeouts) that,
    /// when full, evicts the oldest connection not yet established (`evict`, as the
    /// `evict_unestablished` setting) or refuses new ones: before any traffic, as the
    /// worker's table is made at start-up.
    pub fn limit(mut self, capacity: usize, evict: bool) -> Self {
        for h in self.all() {
            assert_eq!(h.s.fw.ct.len(), 0, "limited before any traffic");
            let timeouts = h.s.fw.ct.timeouts;
            h.s.fw.ct = super::conntrack::Conntrack::new(capacity, timeouts, evict);
        }
        self
    }

    /// All receive `frames` on `port`; then all must have sent and counted the same.
    #[track_caller]
    pub fn rx(&mut self, port: u16, frames: &[Vec<u8>]) {
        self.cached.rx(port, frames);
        self.staged.rx(port, frames);
        self.traced
            .rx_traced(port, frames, &mut super::TraceLog::default());
        self.assert_same();
    }

    #[track_caller]
    pub fn assert_same(&self) {
        Self::same(
            &self.cached,
            &self.staged,
            "with and without the flow cache",
        );
        Self::same(&self.staged, &self.traced, "untraced and traced");
    }

    #[track_caller]
    fn same(a: &Harness, b: &Harness, which: &str) {
        let msg = |what: &str| format!("{what}, {which}");
        assert_eq!(a.sink.sent, b.sink.sent, "{}", msg("frames sent"));
        assert_eq!(a.c.drops, b.c.drops, "{}", msg("drops"));
        assert_eq!(a.c.events, b.c.events, "{}", msg("events"));
        assert_eq!(a.rx_bytes, b.rx_bytes, "{}", msg("bytes received"));
        assert_eq!(
            a.s.fw.per_port,
            b.s.fw.per_port,
            "{}",
            msg("firewall counters per port")
        );
        assert_eq!(a.s.fw.ct.len(), b.s.fw.ct.len(), "{}", msg("connections"));
        assert_eq!(
            a.s.fw.ct.by_state,
            b.s.fw.ct.by_state,
            "{}",
            msg("connections by state")
        );
        assert_eq!(
            a.s.fw.ct.stats,
            b.s.fw.ct.stats,
            "{}",
            msg("conntrack counters")
        );
        // Every connection in the same state, with the same TCP tracking and deadline.
        let conns = |h: &Harness| {
            let mut v: Vec<_> =
                h.s.fw
                    .ct
                    .iter()
                    .map(|(_, k, e)| (format!("{k}"), e.state, e.flags, e.tcp, e.expires, e.nat))
                    .collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        };
        assert_eq!(conns(a), conns(b), "{}", msg("connections"));
        // What the flow cache relies on: an entry established (replied) is assured.
        use super::conntrack::{flag, state};
        for (_, k, e) in a.s.fw.ct.iter() {
            let steady = e.state == state::ESTABLISHED || e.state == state::REPLIED;
            assert!(
                !steady || e.flags & flag::ASSURED != 0,
                "{k}: state {} but not assured, {which}",
                e.state
            );
        }
        let routers = |h: &Harness| -> Vec<[u64; 4]> {
            h.s.router
                .c
                .iter()
                .map(|r| std::array::from_fn(|i| r[i].load(std::sync::atomic::Ordering::Relaxed)))
                .collect()
        };
        assert_eq!(routers(a), routers(b), "{}", msg("router counters"));
        assert_eq!(
            a.held.len(),
            b.held.len(),
            "{}",
            msg("packets held for a next hop")
        );
    }

    /// All take the three segments of every connection's handshake (SYN, SYN-ACK, ACK).
    #[track_caller]
    pub fn handshakes(&mut self, cv: &mut Conversation) {
        let (syn, ack) = (0x02, 0x10);
        for (from_server, flags) in [(false, syn), (true, syn | ack), (false, ack)] {
            let (port, frames) = cv.all(from_server, flags, 0);
            self.rx(port, &frames);
        }
    }

    /// Brings `cv`'s connections to where the flow cache answers them: their handshakes,
    /// then two rounds of data and ACKs (with [`Conversation::udp`]: three rounds of
    /// datagrams each way, the first opening and replying each flow); every frame wrapped by
    /// `wrap` for its port.
    #[track_caller]
    pub fn warm_up(
        &mut self,
        cv: &mut Conversation,
        wrap: impl Fn(u16, Vec<Vec<u8>>) -> Vec<Vec<u8>>,
    ) {
        let (syn, ack, psh) = (0x02, 0x10, 0x18);
        let steps: &[(bool, u8, usize)] = if cv.udp {
            &[(false, 0, 20), (true, 0, 30)]
        } else {
            for (from_server, flags) in [(false, syn), (true, syn | ack), (false, ack)] {
                let (port, frames) = cv.all(from_server, flags, 0);
                self.rx(port, &wrap(port, frames));
            }
            &[(false, psh, 10), (true, ack, 0)]
        };
        let rounds = if cv.udp { 3 } else { 2 };
        for _ in 0..rounds {
            for &(from_server, flags, len) in steps {
                let (port, frames) = cv.all(from_server, flags, len);
                self.rx(port, &wrap(port, frames));
            }
        }
        assert!(self.hits() >= 2 * cv.n as u64, "hits: {}", self.hits());
    }

    /// Brings `cv`'s UDP flows to where the flow cache answers them one way: three rounds of
    /// datagrams from the client only (the first opens each flow, the second is learnt), the
    /// flows left unreplied; every frame wrapped by `wrap` for its port.
    #[track_caller]
    pub fn warm_up_one_way(
        &mut self,
        cv: &mut Conversation,
        wrap: impl Fn(u16, Vec<Vec<u8>>) -> Vec<Vec<u8>>,
    ) {
        assert!(cv.udp, "one way: UDP flows");
        for _ in 0..3 {
            let (port, frames) = cv.all(false, 0, 20);
            self.rx(port, &wrap(port, frames));
        }
        assert!(self.hits() >= cv.n as u64, "hits: {}", self.hits());
    }

    /// Time passes on all three: `ms` milliseconds, the connection tracker's clock with them (as
    /// the worker sets it).
    pub fn advance(&mut self, ms: u64) {
        for h in self.all() {
            h.s.now_ms += ms;
            h.s.fw.now = h.s.now_ms as u32;
        }
    }

    /// Plays `moves` on the connections of `cv` (established first by the caller): each
    /// batch built by `cv`, damaged as it says, then wrapped by `wrap` for its port (e.g. in
    /// VXLAN) and fed to all three harnesses, which must send and count the same after every step.
    #[track_caller]
    pub fn play(
        &mut self,
        cv: &mut Conversation,
        moves: &[FuzzMove],
        wrap: impl Fn(u16, Vec<Vec<u8>>) -> Vec<Vec<u8>>,
    ) {
        for m in moves {
            match m {
                FuzzMove::Wait(ms) => self.advance(*ms),
                FuzzMove::Retable(k) => {
                    let n = self.states.len().max(1);
                    if let Some(t) = self.states.get(k % n).map(|make| make()) {
                        self.set_tables(|| t.clone());
                    }
                }
                FuzzMove::Announce(k) => {
                    let n = self.announcements.len().max(1);
                    if let Some((port, f)) = self.announcements.get(k % n).cloned() {
                        self.rx(port, &[f]);
                    }
                }
                FuzzMove::Sweep(n) => {
                    for h in self.all() {
                        super::firewall::sweep(&h.t, &mut h.s.fw, *n);
                    }
                    self.assert_same();
                }
                FuzzMove::Batch { from_server, segs } => {
                    let frames = segs.iter().map(|s| s.frame(cv, *from_server)).collect();
                    self.rx(cv.port(*from_server), &wrap(cv.port(*from_server), frames));
                }
                &FuzzMove::Flood {
                    from_server,
                    first,
                    n,
                } => {
                    let port = cv.port(from_server);
                    let frames = (first..first.saturating_add(n))
                        .map(|p| cv.opening(p, from_server))
                        .collect();
                    self.rx(port, &wrap(port, frames));
                }
            }
        }
    }

    /// `cv`'s ICMP error `ic` about connection `k`'s last segment, sent from the server's
    /// side (`from_server`) or the client's: all take it, and must agree; what the other
    /// side's port got from the cached twin, if anything (the last frame it sent there).
    #[track_caller]
    pub fn icmp_error(
        &mut self,
        cv: &Conversation,
        k: u16,
        from_server: bool,
        ic: FuzzIcmp,
        wrap: impl Fn(u16, Vec<Vec<u8>>) -> Vec<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let (from, to) = (cv.port(from_server), cv.port(!from_server));
        let n = self.cached.sink.on(to).len();
        let f = cv.icmp_error(k, from_server, ic, 64);
        self.rx(from, &wrap(from, vec![f]));
        let out = self.cached.sink.on(to);
        (out.len() > n).then(|| out[out.len() - 1].clone())
    }

    /// Every kind of [`FuzzIcmp`] error (quoting the whole packet and 28 bytes) about
    /// connection 1 of `cv`, sent by either end, reaches the other end (on all three
    /// twins alike) as an error about the packet that end sent: from the address it sends to,
    /// to its own, the quoted addresses and ports those of its own packet.
    #[track_caller]
    pub fn icmp_errors_reach_the_other_end(
        &mut self,
        cv: &Conversation,
        wrap: impl Fn(u16, Vec<Vec<u8>>) -> Vec<Vec<u8>>,
    ) {
        let k = 1;
        for from_server in [false, true] {
            for kind in 0..4u8 {
                for short_quote in [false, true] {
                    let ic = FuzzIcmp {
                        kind,
                        from_router: false,
                        short_quote,
                    };
                    let what = format!("udp {}, from_server {from_server}, {ic:?}", cv.udp);
                    let got = self.icmp_error(cv, k, from_server, ic, &wrap);
                    let got =
                        got.unwrap_or_else(|| panic!("{what}: not delivered: {:?}", self.cached.c));
                    let (to, ports) = if from_server {
                        (cv.client, (40000 + k, 5001))
                    } else {
                        (cv.server, (5001, cv.seen_ports[k as usize]))
                    };
                    // The receiving end's own address and the one it sends to.
                    let (own, other): (IpAddr, IpAddr) = match cv.v6 {
                        Some(v6) => {
                            let r = !from_server as usize;
                            (v6[r].into(), v6[1 - r].into())
                        }
                        None => (to.src.into(), to.dst.into()),
                    };
                    let (src, dst, ty, q_src, q_dst) =
                        icmp_says(&got).unwrap_or_else(|| panic!("{what}: {got:02x?}"));
                    assert_eq!((src, dst), (other, own), "{what}: outer addresses");
                    let want = match cv.v6 {
                        Some(_) => [1, 2, 3, 1][kind as usize],
                        None => [3, 3, 11, 3][kind as usize],
                    };
                    assert_eq!(ty, want, "{what}");
                    assert_eq!(
                        (q_src, q_dst),
                        ((own, ports.0), (other, ports.1)),
                        "{what}: the quote is the packet this end sent"
                    );
                }
            }
        }
    }

    /// Packets the cached twin answered from its flow cache so far.
    pub fn hits(&self) -> u64 {
        self.cached.s.flows.stats.hits
    }

    /// Replies to `n` one-way UDP flows the cache answers (from `back`'s port): the first
    /// replies take the stages and leave no flow unreplied; then two rounds each way (rounds
    /// 4 and 5 of `there`): the first datagram there misses (its slot was learnt unreplied)
    /// and is learnt again, as is the second reply, and the rest hit.
    #[track_caller]
    pub fn reply_to_one_way(
        &mut self,
        (there_port, there): (u16, impl Fn(u8) -> Vec<Vec<u8>>),
        (back_port, back): (u16, &[Vec<u8>]),
        n: u16,
    ) {
        let hits = self.hits();
        self.rx(back_port, back);
        assert_eq!(self.hits(), hits, "first replies take the stages");
        let unreplied = super::conntrack::state::UNREPLIED as usize;
        assert_eq!(self.cached.s.fw.ct.by_state[unreplied], 0);
        for round in 4..6 {
            self.rx(there_port, &there(round));
            self.rx(back_port, back);
        }
        let stats = self.cached.s.flows.stats;
        assert_eq!(self.hits(), hits + 2 * n as u64, "{stats:?}");
    }

    /// All get new tables (the next generation).
    pub fn set_tables(&mut self, make: impl Fn() -> Tables) {
        for h in self.all() {
            let generation = h.t.generation + 1;
            h.t = make();
            h.t.generation = generation;
        }
    }
}
