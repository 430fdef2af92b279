//! Drop reasons, stage events and the per-core counters that hold them.
//!
//! Every packet the appliance does not forward is counted under exactly one [`DropReason`].
//! Stages count into a plain per-batch array ([`BatchCounters`]); the worker adds it into its
//! [`CoreCounters`] once per batch. A `CoreCounters` has exactly one writer (its core), so an
//! update is a relaxed load + store of an `AtomicU64` (a plain `mov` on x86), and the control
//! thread sums all cores without ever stopping them.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v,)* }
        impl $name {
            /// Every variant, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            /// How many variants (the length of a counter array).
            pub const COUNT: usize = Self::ALL.len();
            /// The counter name, `stage.reason`.
            pub const fn name(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }
    };
}

named_enum! {
    /// Why a packet was dropped. Names are `stage.reason`, as shown by counters and trace.
    DropReason {
        /// Shorter than an Ethernet header.
        Runt => "classify.runt",
        /// Longer than the ingress port's largest frame.
        Oversize => "classify.oversize",
        /// Received on a port that is administratively down.
        PortDown => "classify.port_down",
        /// A multicast or zero source MAC is never valid.
        BadSrcMac => "classify.bad_src_mac",
        /// Tagged with a VLAN id no network on this physnet uses.
        UnknownVlan => "provider.unknown_vlan",
        /// An outer TPID we do not switch (802.1ad / QinQ 0x88a8, 0x9100, 0x9200).
        BadTpid => "provider.bad_tpid",
        /// Tagged with an unknown VLAN on a physnet whose only network is flat.
        TaggedOnFlat => "provider.tagged_on_flat",
        /// Untagged on a physnet that has no flat network.
        UntaggedNoFlat => "provider.untagged_no_flat",
        /// A tag header cut short.
        TruncatedTag => "provider.truncated_tag",
        /// The ingress port carries no network (instance port without a network here).
        NoNetwork => "classify.no_network",
        /// Source MAC is not the instance port's MAC (or an allowed address pair's).
        SpoofedMac => "port_security.spoofed_mac",
        /// Source IPv4 is not a fixed IP or allowed address pair of the port.
        SpoofedIpv4 => "port_security.spoofed_ipv4",
        /// Source IPv6 is not a fixed IP, allowed pair or the MAC's link-local address.
        SpoofedIpv6 => "port_security.spoofed_ipv6",
        /// ARP sender MAC/IP not the port's own.
        SpoofedArp => "port_security.spoofed_arp",
        /// A DHCP server reply from an instance (Neutron blocks rogue DHCP servers).
        DhcpServer => "port_security.dhcp_server",
        /// An IPv6 router advertisement from an instance (Neutron blocks rogue routers).
        RouterAdvert => "port_security.router_advert",
        /// Not IPv4, IPv6 or ARP from a port with port security.
        EtherTypeDenied => "port_security.ethertype",
        /// A VLAN-tagged frame from an instance port (no trunks).
        TaggedFromInstance => "port_security.tagged",
        /// An IP or ARP header that does not parse.
        MalformedL3 => "port_security.malformed",
        /// The network is administratively down.
        NetworkDown => "integration.network_down",
        /// The destination is the port the frame came in on.
        Hairpin => "integration.hairpin",
        /// Flooding would only reach the ingress port.
        FloodEmpty => "integration.flood_empty",
        /// No mbuf free for a flood copy.
        NoMbuf => "output.no_mbuf",
        /// No headroom to push a VLAN tag.
        NoHeadroom => "output.no_headroom",
        /// The egress port is down.
        EgressDown => "output.egress_port_down",
        /// The transmit queue was full.
        TxFull => "output.tx_full",
        /// Outer IPv4 not addressed to our VTEP (`local_vtep_ip`).
        TunnelNotForUs => "tunnel.not_for_us",
        /// UDP to another port than the VXLAN port.
        TunnelWrongPort => "tunnel.wrong_port",
        /// VXLAN header without the I flag.
        TunnelBadFlags => "tunnel.bad_flags",
        /// A VNI no network of ours uses.
        TunnelUnknownVni => "tunnel.unknown_vni",
        /// From an address that is no known host's VTEP (injected overlay traffic).
        TunnelUnknownVtep => "tunnel.unknown_vtep",
        /// Outer headers or the inner frame cut short.
        TunnelTruncated => "tunnel.truncated",
        /// An inner frame carrying its own 802.1Q tag.
        TunnelInnerVlan => "tunnel.inner_vlan",
        /// To a VTEP whose underlay MAC is not known yet (an ARP request went out instead).
        TunnelUnresolved => "tunnel.unresolved",
        /// Would exceed the underlay MTU once encapsulated.
        TunnelTooBig => "tunnel.too_big",
        /// Not VXLAN (other IP protocols, fragments, other EtherTypes) on the overlay port.
        TunnelNotVxlan => "tunnel.not_vxlan",
        /// An ARP on the underlay asking for someone else.
        TunnelArpNotForUs => "tunnel.arp_not_for_us",
        /// A decapsulated frame whose destination is behind another VTEP (never re-tunnelled).
        TunnelSplitHorizon => "tunnel.split_horizon",
        /// A frame to a gateway MAC from the overlay or a provider port: DVR routes on the
        /// sending host, so such a frame is never routed a second time.
        RouterFromFabric => "router.gateway_from_fabric",
        /// Neither IPv4 nor IPv6 to a gateway MAC.
        RouterNotIp => "router.not_ip",
        /// An IP header that does not parse, or an IPv4 header checksum that is wrong.
        RouterMalformed => "router.malformed",
        /// The router is administratively down.
        RouterDown => "router.down",
        /// Multicast, broadcast, link-local or unspecified addresses are never routed.
        RouterNotRoutable => "router.not_routable",
        /// TTL / hop limit would reach zero (the ICMP error was sent unless rate-limited).
        RouterTtlExceeded => "router.ttl_exceeded",
        /// No route to the destination (ICMP unreachable sent unless rate-limited).
        RouterNoRoute => "router.no_route",
        /// Larger than the egress MTU with DF set, or IPv6 (ICMP sent unless rate-limited).
        RouterTooBig => "router.too_big",
        /// Larger than the egress MTU without DF, and not fragmentable (an egress MTU that
        /// leaves no room for 8 bytes after the header, malformed options, a buffer in
        /// several segments).
        RouterNeedsFragmentation => "router.needs_fragmentation",
        /// The next hop's MAC is not known yet (an ARP request / NS went out instead).
        RouterUnresolved => "router.unresolved",
        /// To a router address, but not something the router answers (echo, ND).
        RouterToRouter => "router.to_router",
        /// Centralized SNAT: no source port (or ICMP identifier) free for a new connection
        /// to this destination (`conntrack.snat_ports`); existing ones carry on.
        RouterSnatExhausted => "router.snat_exhausted",
        /// To a router's gateway address, or an ICMP error from inside about a packet,
        /// matching none of its translations.
        RouterSnatUnknown => "router.snat_unknown",
        /// Centralized SNAT translates TCP, UDP and ICMP echo; not this (other protocols, an
        /// echo reply from inside).
        RouterSnatProtocol => "router.snat_protocol",
        /// A later fragment centralized SNAT cannot place: no first fragment of its datagram
        /// was translated here in the last 5 s (it was refused, lost, or came after).
        RouterSnatFragment => "router.snat_fragment",
        /// To this host's floating IP gateway for an address that is no floating IP of an
        /// instance here (moved away, disassociated, or never ours).
        RouterNoFloatingIp => "router.no_floating_ip",
        /// A new connection from an instance that no egress rule of its groups allows.
        FirewallEgressDenied => "firewall.egress_denied",
        /// A new connection towards an instance that no ingress rule of its groups allows.
        FirewallIngressDenied => "firewall.ingress_denied",
        /// A packet of a connection whose allowing rule was removed (the connection is cut).
        FirewallRevoked => "firewall.revoked",
        /// Not a valid packet of a tracked connection (out of window, no connection to
        /// continue, an ICMP error about nothing tracked, bad transport header).
        ConntrackInvalid => "conntrack.invalid",
        /// A new connection while this core's connection table is full.
        ConntrackFull => "conntrack.full",
        /// A later IP fragment (no transport header; fragments are not reassembled).
        ConntrackFragment => "conntrack.fragment",
        /// The core that owns the connection had no room in its hand-off ring.
        HandoffFull => "conntrack.handoff_full",
        /// Handed over under tables the owner no longer runs (a reload in between): its
        /// network index may mean another network now.
        HandoffStale => "conntrack.handoff_stale",
    }
}

named_enum! {
    /// Things stages count that are not drops.
    Event {
        /// A new MAC learned.
        Learned => "integration.learned",
        /// A connection committed to the connection table.
        ConntrackNew => "conntrack.new",
        /// An ICMP error let through as related to a tracked connection.
        ConntrackRelated => "conntrack.related",
        /// A packet handed to the core that owns its connection.
        ConntrackHandoff => "conntrack.handoff",
        /// A learned MAC moved to another port.
        MacMoved => "integration.mac_moved",
        /// The per-core learning table had no free slot.
        LearnTableFull => "integration.learn_table_full",
        /// A frame from a provider port carried the source MAC of a local instance port
        /// (never learned: a learned MAC never overrides a static one).
        StaticMacConflict => "integration.static_mac_conflict",
        /// A frame flooded to its network.
        Flooded => "integration.flooded",
        /// A frame forwarded to one known port.
        Unicast => "integration.unicast",
        /// Provider frames whose tag was removed on ingress.
        VlanPopped => "provider.vlan_popped",
        /// Provider frames that got a tag on egress.
        VlanPushed => "provider.vlan_pushed",
        /// VXLAN frames decapsulated.
        TunnelDecap => "tunnel.decap",
        /// Frames encapsulated (each head-end replica counts).
        TunnelEncap => "tunnel.encap",
        /// ARP replies sent for our VTEP address.
        ArpReplySent => "tunnel.arp_reply_sent",
        /// ARP requests sent to resolve a VTEP or the underlay gateway.
        ArpRequestSent => "tunnel.arp_request_sent",
        /// Underlay neighbours learned or changed.
        NeighborLearned => "tunnel.neighbor_learned",
        /// ARP requests from instances answered locally (l2population's ARP responder).
        ArpResponder => "tunnel.arp_responder",
        /// Packets routed (forwarded to another subnet or next hop).
        Routed => "router.routed",
        /// Routed frames that left the host with its DVR MAC as source.
        DvrMacOut => "router.dvr_mac_out",
        /// Frames from the fabric with another host's DVR MAC, source rewritten to the gateway.
        DvrMacIn => "router.dvr_mac_in",
        /// Routed to the centralized SNAT port (no route but the router's gateway).
        ToSnat => "router.to_snat",
        /// To a floating IP, translated to its fixed IP (DNAT) and routed to the instance.
        FipDnat => "router.fip_dnat",
        /// From a fixed IP with a floating IP, translated (SNAT) and sent to the external
        /// network.
        FipSnat => "router.fip_snat",
        /// Gratuitous ARPs sent for floating IPs associated with (or moved to) an instance here.
        GarpSent => "router.garp_sent",
        /// Centralized SNAT: packets translated to the router's gateway address on the way
        /// out, and replies translated back.
        SnatOut => "router.snat_out",
        SnatIn => "router.snat_in",
        /// ARP requests for a gateway address answered.
        GatewayArpReply => "router.arp_reply",
        /// Neighbor Solicitations for a gateway address answered.
        GatewayNaSent => "router.nd_advert",
        /// Echo requests to a router address answered.
        EchoReply => "router.echo_reply",
        /// ICMP / ICMPv6 errors sent (time exceeded, unreachable, too big).
        IcmpErrorSent => "router.icmp_error_sent",
        /// ICMP errors not sent because of the per-core rate limit.
        IcmpRateLimited => "router.icmp_rate_limited",
        /// ARP requests / Neighbor Solicitations sent to resolve a next hop.
        ResolveSent => "router.resolve_sent",
        /// Packets held while their next hop resolves.
        NextHopHeld => "router.held",
        /// Held packets routed once their next hop resolved.
        NextHopReleased => "router.released",
        /// Next hops learned from ARP replies / Neighbor Advertisements.
        RouterNeighborLearned => "router.neighbor_learned",
        /// IPv4 packets larger than the egress MTU, DF clear, forwarded in fragments
        /// (Linux's FragOKs).
        RouterFragmented => "router.fragmented",
        /// The fragments they were sent in (Linux's FragCreates).
        RouterFragments => "router.fragments",
    }
}

/// Most remote VTEPs and networks that get their own tunnel counters.
pub const MAX_VTEPS: usize = 1024;
pub const MAX_NETWORKS: usize = 4096;

/// Per-VTEP and per-network (VNI) tunnel counters of one core: single writer, like
/// [`CoreCounters`], bumped per packet with plain stores.
#[derive(Debug)]
pub struct TunnelCounters {
    pub vtep_rx: Box<[AtomicU64]>,
    pub vtep_tx: Box<[AtomicU64]>,
    /// Indexed by network index (the VNI is looked up from the tables when reported).
    pub net_rx: Box<[AtomicU64]>,
    pub net_tx: Box<[AtomicU64]>,
}

impl Default for TunnelCounters {
    fn default() -> Self {
        let z = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Self {
            vtep_rx: z(MAX_VTEPS),
            vtep_tx: z(MAX_VTEPS),
            net_rx: z(MAX_NETWORKS),
            net_tx: z(MAX_NETWORKS),
        }
    }
}

impl TunnelCounters {
    /// Counts `n` packets received from `vtep` on network `net`.
    #[inline(always)]
    pub fn rx_n(&self, vtep: u16, net: u16, n: u64) {
        if let (Some(a), Some(b)) = (
            self.vtep_rx.get(vtep as usize),
            self.net_rx.get(net as usize),
        ) {
            bump(a, n);
            bump(b, n);
        }
    }
    /// Counts `n` packets sent to `vtep` on network `net`.
    #[inline(always)]
    pub fn tx_n(&self, vtep: u16, net: u16, n: u64) {
        if let (Some(a), Some(b)) = (
            self.vtep_tx.get(vtep as usize),
            self.net_tx.get(net as usize),
        ) {
            bump(a, n);
            bump(b, n);
        }
    }
}

/// Most routers that get their own counters.
pub const MAX_ROUTERS: usize = 1024;

/// Per-router counters of one core (single writer), indexed by router index, added once per
/// batch from the router stage's local tallies.
#[derive(Debug)]
pub struct RouterCounters {
    /// [routed, delivered to the router itself, ICMP errors sent, dropped]
    pub c: Box<[[AtomicU64; 4]]>,
}

impl Default for RouterCounters {
    fn default() -> Self {
        Self {
            c: (0..MAX_ROUTERS)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }
}

/// What [`RouterCounters`] counts per router.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum RouterStat {
    Routed = 0,
    Local = 1,
    IcmpSent = 2,
    Dropped = 3,
}

impl RouterCounters {
    #[inline(always)]
    pub fn add(&self, router: u16, what: [u64; 4]) {
        if let Some(c) = self.c.get(router as usize) {
            for (a, v) in c.iter().zip(what) {
                if v != 0 {
                    bump(a, v);
                }
            }
        }
    }
}

/// Counters of one batch, in plain integers (stages add to these; no atomics on the way).
#[derive(Debug, Clone)]
pub struct BatchCounters {
    pub drops: [u64; DropReason::COUNT],
    pub events: [u64; Event::COUNT],
}

impl Default for BatchCounters {
    fn default() -> Self {
        Self {
            drops: [0; DropReason::COUNT],
            events: [0; Event::COUNT],
        }
    }
}

impl BatchCounters {
    #[inline(always)]
    pub fn drop(&mut self, r: DropReason) {
        self.drop_n(r, 1);
    }
    /// Counts `n` drops for `r` at once (a whole batch refused by one egress).
    #[inline(always)]
    pub fn drop_n(&mut self, r: DropReason, n: u64) {
        self.drops[r as usize] += n;
    }
    #[inline(always)]
    pub fn event(&mut self, e: Event) {
        self.events[e as usize] += 1;
    }
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    pub fn count(&self, e: Event) -> u64 {
        self.events[e as usize]
    }
}

/// One port's traffic as seen by one core.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Packets the security groups let through / dropped on this port (both directions).
    pub fw_allowed: AtomicU64,
    pub fw_dropped: AtomicU64,
}

/// A core's connection table, as of its last fold (gauges and running totals).
#[derive(Debug, Default)]
pub struct ConntrackCounters {
    pub capacity: AtomicU64,
    pub entries: AtomicU64,
    /// Live connections per state (`conntrack::state::NAMES`).
    pub by_state: [AtomicU64; crate::pipeline::conntrack::state::COUNT],
    pub new: AtomicU64,
    pub refused_full: AtomicU64,
    pub evicted: AtomicU64,
    pub expired: AtomicU64,
    pub cut: AtomicU64,
    pub related: AtomicU64,
    /// Removed by `vswitchctl conntrack flush`.
    pub flushed: AtomicU64,
}

impl ConntrackCounters {
    /// Copies a core's table figures (the owning core only).
    pub fn store(&self, ct: &crate::pipeline::conntrack::Conntrack) {
        let st = &ct.stats;
        self.capacity.store(ct.capacity() as u64, Relaxed);
        self.entries.store(ct.len() as u64, Relaxed);
        for (a, &v) in self.by_state.iter().zip(ct.by_state.iter()) {
            a.store(v as u64, Relaxed);
        }
        self.new.store(st.new, Relaxed);
        self.refused_full.store(st.refused_full, Relaxed);
        self.evicted.store(st.evicted, Relaxed);
        self.expired.store(st.expired, Relaxed);
        self.cut.store(st.cut, Relaxed);
        self.related.store(st.related, Relaxed);
        self.flushed.store(st.flushed, Relaxed);
    }
}

/// A core's counters. Written only by that core (single writer), read by anyone.
#[derive(Debug)]
pub struct CoreCounters {
    pub lcore: u32,
    pub ports: Vec<PortCounters>,
    pub drops: [AtomicU64; DropReason::COUNT],
    pub events: [AtomicU64; Event::COUNT],
    /// Polls that returned packets / found nothing (the busy ratio).
    pub busy_polls: AtomicU64,
    pub idle_polls: AtomicU64,
    /// Bumped after every poll round: the core's quiescent-state counter for table reclamation.
    pub epoch: AtomicU64,
    /// Per-VTEP and per-VNI counters (shared with the core's `CoreState`).
    pub tunnel: std::sync::Arc<TunnelCounters>,
    /// Per-router counters (shared with the core's `CoreState`).
    pub router: std::sync::Arc<RouterCounters>,
    /// The core's connection table.
    pub conntrack: ConntrackCounters,
    /// The core's flow cache: [hits, misses, entries learnt, learns declined because both
    /// ways of the bucket held other live flows].
    pub flow_cache: [AtomicU64; 4],
}

/// Adds `d` to a single-writer counter without a locked instruction.
#[inline(always)]
pub fn bump(c: &AtomicU64, d: u64) {
    c.store(c.load(Relaxed).wrapping_add(d), Relaxed);
}

impl CoreCounters {
    pub fn new(lcore: u32, n_ports: usize) -> Self {
        Self {
            lcore,
            ports: (0..n_ports).map(|_| PortCounters::default()).collect(),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            busy_polls: AtomicU64::new(0),
            idle_polls: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            tunnel: std::sync::Arc::new(TunnelCounters::default()),
            router: std::sync::Arc::new(RouterCounters::default()),
            conntrack: ConntrackCounters::default(),
            flow_cache: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Folds a batch's counters in (the owning core only).
    #[inline]
    pub fn add_batch(&self, b: &BatchCounters) {
        for (i, &v) in b.drops.iter().enumerate() {
            if v != 0 {
                bump(&self.drops[i], v);
            }
        }
        for (i, &v) in b.events.iter().enumerate() {
            if v != 0 {
                bump(&self.events[i], v);
            }
        }
    }
}

/// A summed, plain snapshot of all cores (control plane side).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Totals {
    pub ports: Vec<PortTotals>,
    pub drops: Vec<(String, u64)>,
    pub events: Vec<(String, u64)>,
    pub busy_polls: u64,
    pub idle_polls: u64,
    /// (rx, tx) per VTEP index and per network index, summed over cores.
    pub vteps: Vec<(u64, u64)>,
    pub nets: Vec<(u64, u64)>,
    /// [routed, local, icmp errors, dropped] per router index, summed over cores.
    pub routers: Vec<[u64; 4]>,
    /// Connection tracking summed over cores: (name, value), gauges then totals.
    pub conntrack: Vec<(String, u64)>,
    /// (allowed, dropped) by the security groups, per port.
    pub firewall: Vec<(u64, u64)>,
    /// The flow caches summed over cores: hits, misses, entries learnt, learns declined
    /// (bucket crowded).
    pub flow_cache: [u64; 4],
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PortTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Sums every core's counters.
pub fn totals(cores: &[std::sync::Arc<CoreCounters>], n_ports: usize) -> Totals {
    let mut t = Totals {
        ports: vec![PortTotals::default(); n_ports],
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), 0))
            .collect(),
        events: Event::ALL
            .iter()
            .map(|e| (e.name().to_owned(), 0))
            .collect(),
        ..Default::default()
    };
    for c in cores {
        for (p, pc) in t.ports.iter_mut().zip(&c.ports) {
            p.rx_packets += pc.rx_packets.load(Relaxed);
            p.rx_bytes += pc.rx_bytes.load(Relaxed);
            p.tx_packets += pc.tx_packets.load(Relaxed);
            p.tx_bytes += pc.tx_bytes.load(Relaxed);
        }
        for (i, d) in c.drops.iter().enumerate() {
            t.drops[i].1 += d.load(Relaxed);
        }
        for (i, e) in c.events.iter().enumerate() {
            t.events[i].1 += e.load(Relaxed);
        }
        t.busy_polls += c.busy_polls.load(Relaxed);
        t.idle_polls += c.idle_polls.load(Relaxed);
        let tc = &c.tunnel;
        t.vteps.resize(MAX_VTEPS, (0, 0));
        t.nets.resize(MAX_NETWORKS, (0, 0));
        for (i, v) in t.vteps.iter_mut().enumerate() {
            v.0 += tc.vtep_rx[i].load(Relaxed);
            v.1 += tc.vtep_tx[i].load(Relaxed);
        }
        for (i, v) in t.nets.iter_mut().enumerate() {
            v.0 += tc.net_rx[i].load(Relaxed);
            v.1 += tc.net_tx[i].load(Relaxed);
        }
        t.firewall.resize(n_ports, (0, 0));
        for (f, pc) in t.firewall.iter_mut().zip(&c.ports) {
            f.0 += pc.fw_allowed.load(Relaxed);
            f.1 += pc.fw_dropped.load(Relaxed);
        }
        for (a, b) in t.flow_cache.iter_mut().zip(&c.flow_cache) {
            *a += b.load(Relaxed);
        }
        let ct = &c.conntrack;
        let mut vals: Vec<(String, u64)> = vec![
            ("capacity".into(), ct.capacity.load(Relaxed)),
            ("entries".into(), ct.entries.load(Relaxed)),
        ];
        let states = &crate::pipeline::conntrack::state::NAMES;
        let mut established = 0;
        for (i, a) in ct.by_state.iter().enumerate().skip(1) {
            let v = a.load(Relaxed);
            if matches!(states[i], "tcp_established" | "replied") {
                established += v;
            }
            vals.push((states[i].to_string(), v));
        }
        vals.push(("established".into(), established));
        for (n, a) in [
            ("new", &ct.new),
            ("refused_full", &ct.refused_full),
            ("evicted", &ct.evicted),
            ("expired", &ct.expired),
            ("cut", &ct.cut),
            ("related", &ct.related),
            ("flushed", &ct.flushed),
        ] {
            vals.push((n.to_string(), a.load(Relaxed)));
        }
        if t.conntrack.is_empty() {
            t.conntrack = vals;
        } else {
            for (a, b) in t.conntrack.iter_mut().zip(vals) {
                a.1 += b.1;
            }
        }
        t.routers.resize(MAX_ROUTERS, [0; 4]);
        for (v, rc) in t.routers.iter_mut().zip(c.router.c.iter()) {
            for (a, b) in v.iter_mut().zip(rc) {
                *a += b.load(Relaxed);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_stage_dotted() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert!(r.name().contains('.'), "{}", r.name());
            assert!(seen.insert(r.name()));
        }
        for e in Event::ALL {
            assert!(seen.insert(e.name()));
        }
    }

    #[test]
    fn batch_folds_into_core_and_totals() {
        let c = std::sync::Arc::new(CoreCounters::new(1, 2));
        let mut b = BatchCounters::default();
        b.drop(DropReason::Hairpin);
        b.drop(DropReason::Hairpin);
        b.event(Event::Learned);
        c.add_batch(&b);
        c.add_batch(&b);
        let t = totals(&[c.clone(), c], 2);
        let get = |n: &str| t.drops.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(get("integration.hairpin"), 8);
        assert_eq!(
            t.events
                .iter()
                .find(|(k, _)| k == "integration.learned")
                .unwrap()
                .1,
            4
        );
    }
}
