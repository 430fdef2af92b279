//! `vswitchctl trace`: what the data plane would do with one packet, stage by stage, like
//! `ovs-appctl ofproto/trace`, without sending anything and without touching the workers.
//!
//! Design note. A trace runs the production stages themselves ([`pipeline::process`],
//! [`pipeline::resume`] and [`output::run`]), monomorphised with a [`TraceLog`] instead of
//! `NoTrace`, over the live, immutable [`Tables`] the daemon published. Everything the stages
//! write is private to the trace:
//!
//! - a fresh [`CoreState`] per worker the packet visits: its own MAC learning table, route
//!   cache, ICMP token bucket, request rate limits, per-router and per-VTEP counters, and a
//!   small connection table ([`CT_CAPACITY`] entries, default timeouts);
//! - copies of the shared neighbour caches ([`NeighborTable::snapshot`],
//!   [`L3Neighbors::snapshot`]), taken when the trace starts. The pipeline does write to these
//!   tables (an ARP reply on the overlay port teaches a VTEP's MAC; an ARP request, gratuitous
//!   ARP or Neighbor Advertisement to a router teaches a next hop), so a trace that ran against
//!   the live ones could change what the workers do; the copies take those writes instead;
//! - heap buffers ([`TestBuf`]) and a transmit sink that records what every port would send.
//!
//! A packet handed to the worker that owns its connection (`Next::Handoff`, when
//! [`TraceOptions::workers`] is above one) is resumed at once on that worker's private state,
//! as the runtime's `drain_inbox` does, with a `handoff:` line; a packet the router holds
//! while its next hop resolves is reported as held, with the ARP request / Neighbor
//! Solicitation it caused among the outputs.
//!
//! What a trace does not see:
//!
//! - **The workers' connection tables.** The packet is judged as the first packet of its
//!   connection, in an empty table: a TCP segment that cannot open a connection (an ACK, a
//!   SYN-ACK, a RST) is dropped `conntrack.invalid` unless the port's groups are liberal (then
//!   it is picked up mid-stream), an ICMP error is dropped as related to nothing, an echo reply
//!   cannot open a connection, and a UDP reply is judged by the rules of its own direction as
//!   a new connection. Centralized SNAT picks its port from an empty table, so the live router
//!   may choose another.
//! - **MACs the workers learned.** Only the static FDB (every port the desired state knows)
//!   decides; a destination a worker has learned (behind a provider port, or an instance
//!   without port security) is flooded here.
//! - **Rate limits and queues.** Its ICMP token bucket is full and its request rate limits are
//!   clear, so it always sends the ICMP error or ARP request it may; a live core sends at most
//!   one request per next hop every 100 ms, holds at most 8 packets per next hop, and may find
//!   its transmit ring full.
//! - **Time.** Its clock stands at 0 and nothing ages during a trace; the held packet is
//!   never released (the answer is not coming).
//! - **Neighbours learned after the copies were taken**, and the NICs' link state (a port is
//!   down only when its tables say so).
use crate::counters::{BatchCounters, DropReason, Event};
use crate::packet::{MacAddr, PacketBuf, TestBuf};
use crate::pipeline::firewall::{self, FwCore};
use crate::pipeline::output::{self, Tx, TxBuffers};
use crate::pipeline::router::Pending;
use crate::pipeline::{self, conntrack, Batch, CoreState, Next, SharedState, TraceLog, Tracer};
use crate::tables::l3neigh::{v4_key, L3Neighbors};
use crate::tables::neighbor::NeighborTable;
use crate::tables::{NetIdx, PortKind, Tables, NO_NET};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

mod decode;
mod frame;
#[cfg(test)]
mod tests;

pub use decode::{first_pcap_packet, parse_hex, summary, to_hex};
pub use frame::{build_frame, ArpSpec, PacketSpec};

/// Connections a trace's private table holds (one packet opens at most two entries).
pub const CT_CAPACITY: usize = 1024;
/// MACs a trace's private learning table holds.
const LEARN_CAPACITY: usize = 1024;
/// Hand-offs followed before a trace gives up (a packet crosses at most two zones).
const MAX_HANDOFFS: usize = 4;

/// What one packet would go through.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceReport {
    pub in_port: String,
    pub frame_len: usize,
    /// The traced frame in one line, and as hex (what a spec was built into).
    pub frame: String,
    pub frame_hex: String,
    /// `stage: text`, in order: exactly what the stages recorded for the packet (plus a
    /// `handoff:` line where another worker resumes it).
    pub lines: Vec<String>,
    /// `output to vm2`, `tunnel to 10.0.0.12 (compute2) vni 1001`, `dropped:
    /// firewall.ingress_denied`, `flood: vm2, vm3`, `held: waiting for ARP of ...`, `reply out of
    /// vm1`, `consumed: ...`.
    pub verdict: String,
    /// What each port would transmit (the frames the output stage produced, the requests the
    /// switch would send for the packet included), in the order they would leave.
    pub outputs: Vec<TraceOutput>,
    /// The counters the packet moved (drops and events, `stage.reason`).
    pub counters: BTreeMap<String, u64>,
    /// What the trace could not know that bears on this packet (see the module docs).
    pub notes: Vec<String>,
}

/// One frame a port would send.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceOutput {
    pub port: String,
    pub len: usize,
    pub summary: String,
    pub hex: String,
}

/// How a trace models the daemon's workers.
#[derive(Debug, Clone, Copy)]
pub struct TraceOptions {
    /// Workers that share the connections (the host's `cores`): with more than one, a packet
    /// whose connection another worker owns is handed to it, as live.
    pub workers: u16,
    /// The worker that receives the packet.
    pub rx_core: u16,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            rx_core: 0,
        }
    }
}

/// Runs one frame received on port `in_port` through a private copy of the pipeline against
/// `tables` (the live, immutable tables the daemon published) and `shared` (the live
/// neighbour caches, only read, to copy them), with one worker.
pub fn trace(tables: &Tables, shared: &SharedState, in_port: u16, frame: &[u8]) -> TraceReport {
    trace_with(tables, shared, in_port, frame, &TraceOptions::default())
}

/// Resolves `spec.in_port` by name in `tables`, builds (or hex-decodes) the frame, filling in
/// the MACs the tables know, and traces it with one worker. `Err`: every problem, each naming
/// its field.
pub fn trace_spec(
    tables: &Tables,
    shared: &SharedState,
    spec: &PacketSpec,
) -> Result<TraceReport, Vec<String>> {
    trace_spec_with(tables, shared, spec, &TraceOptions::default())
}

/// [`trace_spec`] with a model of the workers.
pub fn trace_spec_with(
    tables: &Tables,
    shared: &SharedState,
    spec: &PacketSpec,
    opts: &TraceOptions,
) -> Result<TraceReport, Vec<String>> {
    let mut e = Vec::new();
    let in_port = tables.port_index(&spec.in_port);
    let filled = match in_port {
        Some(p) => with_defaults(tables, shared, p, spec),
        None => {
            let names: Vec<&str> = tables.ports.iter().map(|p| p.name.as_str()).collect();
            e.push(format!(
                "in_port: no port named {:?} (ports: {})",
                spec.in_port,
                names.join(", ")
            ));
            spec.clone()
        }
    };
    if opts.rx_core >= opts.workers.max(1) {
        e.push(format!(
            "rx_core: {} is not one of the {} workers",
            opts.rx_core,
            opts.workers.max(1)
        ));
    }
    match (build_frame(&filled), in_port) {
        (Ok(f), Some(p)) if e.is_empty() => Ok(trace_with(tables, shared, p, &f, opts)),
        (Ok(_), _) => Err(e),
        (Err(mut fe), Some(_)) => {
            e.append(&mut fe);
            Err(e)
        }
        (Err(fe), None) => {
            // Without the port there are no defaults: only the fields' own problems count.
            e.extend(fe.into_iter().filter(|m| !m.contains(": required: ")));
            Err(e)
        }
    }
}

/// `spec` with the MACs it leaves out filled in from the tables, where they say: the ingress
/// instance port's own MAC as source; as destination, what `ip_dst` is on the ingress network
/// (broadcast and multicast by their mapping, a router interface address or floating IP by
/// the interface's MAC, a known port by its MAC, anything else off-link from an instance by
/// its subnet's gateway).
pub fn with_defaults(
    t: &Tables,
    shared: &SharedState,
    in_port: u16,
    spec: &PacketSpec,
) -> PacketSpec {
    let mut s = spec.clone();
    if s.hex.is_some() {
        return s;
    }
    let pe = t.ports.get(in_port as usize);
    let arp_sender = s.arp.as_ref().is_some_and(|a| a.sender_mac.is_some());
    if s.eth_src.is_none() && !arp_sender {
        s.eth_src = pe.and_then(|p| p.mac).map(|m| m.to_string());
    }
    if s.eth_dst.is_none() && s.arp.is_none() {
        s.eth_dst = default_dst(t, shared, in_port, spec).map(|m| m.to_string());
    }
    s
}

fn default_dst(
    t: &Tables,
    shared: &SharedState,
    in_port: u16,
    spec: &PacketSpec,
) -> Option<MacAddr> {
    let dip = spec.ip_dst?;
    match dip {
        IpAddr::V4(a) if a.is_broadcast() => return Some(MacAddr([0xff; 6])),
        // RFC 1112 6.4 and RFC 2464 7: group addresses map onto group MACs.
        IpAddr::V4(a) if a.is_multicast() => {
            let o = a.octets();
            return Some(MacAddr([0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]));
        }
        IpAddr::V6(a) if a.is_multicast() => {
            let o = a.octets();
            return Some(MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]]));
        }
        _ => {}
    }
    let pe = t.ports.get(in_port as usize)?;
    let net = match pe.kind {
        PortKind::Instance => pe.network,
        PortKind::Provider => {
            let pn = t.physnets.get(pe.physnet? as usize)?;
            match spec.vlan {
                Some(v) => *pn.vlans.get(v as usize)?,
                None => pn.flat,
            }
        }
        _ => NO_NET,
    };
    if net == NO_NET {
        return None;
    }
    let key = match dip {
        IpAddr::V4(a) => v4_key(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let rif = match dip {
        IpAddr::V4(a) => t.l3.gw4.get(&((net as u64) << 32 | u32::from(a) as u64)),
        IpAddr::V6(_) => t.l3.gw6.get(&(net, key)),
    };
    if let Some(&r) = rif {
        return t.l3.rifs.get(r as usize).map(|r| r.mac);
    }
    let known =
        t.l3.neighbor(net, key)
            .or_else(|| shared.l3neigh.lookup(net, key));
    if let Some(m) = known {
        return Some(mac_of(m));
    }
    if let IpAddr::V4(a) = dip {
        if let Some(m) = t.arp_lookup(net, u32::from(a)) {
            return Some(m);
        }
    }
    // Off-link from an instance: its gateway. On-link but unknown: nothing to say.
    let on = |r: &crate::tables::router::RifEntry, a: IpAddr| match a {
        IpAddr::V4(a) => r.v4.iter().any(|n| n.contains(&a)),
        IpAddr::V6(a) => r.v6.iter().any(|n| n.contains(&a)),
    };
    let rifs = || t.l3.rifs.iter().filter(|r| r.net == net);
    if pe.kind != PortKind::Instance || rifs().any(|r| on(r, dip)) {
        return None;
    }
    let sip = spec.ip_src?;
    rifs().find(|r| on(r, sip)).map(|r| r.mac)
}

/// A MAC from its 48-bit integer form.
fn mac_of(m: u64) -> MacAddr {
    let b = m.to_be_bytes();
    MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Records what each port would send, and what would be handed to another worker.
#[derive(Default)]
struct Recorder {
    sent: Vec<(u16, Vec<u8>)>,
    handoffs: VecDeque<(u16, pipeline::Handoff<TestBuf>)>,
}

impl Tx<TestBuf> for Recorder {
    fn tx(&mut self, port: u16, pkts: &mut [Option<TestBuf>; pipeline::BURST], n: usize) -> usize {
        for p in pkts[..n].iter_mut().filter_map(Option::take) {
            self.sent.push((port, p.data().to_vec()));
        }
        n
    }

    fn handoff(
        &mut self,
        core: u16,
        h: pipeline::Handoff<TestBuf>,
    ) -> Result<(), pipeline::Handoff<TestBuf>> {
        self.handoffs.push_back((core, h));
        Ok(())
    }
}

/// The private state of every worker a trace visits, made when first visited.
struct Workers<'a> {
    t: &'a Tables,
    shared: SharedState,
    workers: u16,
    cores: BTreeMap<u16, (CoreState, Pending<TestBuf>)>,
}

impl Workers<'_> {
    fn get(&mut self, core: u16) -> &mut (CoreState, Pending<TestBuf>) {
        let (t, shared, workers) = (self.t, &self.shared, self.workers);
        self.cores.entry(core).or_insert_with(|| {
            let mut s = CoreState::new(
                LEARN_CAPACITY,
                crate::tables::fdb::DEFAULT_AGING_MS,
                shared,
                Default::default(),
                Default::default(),
            );
            s.fw = FwCore::new(
                conntrack::Conntrack::new(CT_CAPACITY, conntrack::Timeouts::default(), true),
                core,
                workers,
            );
            s.fw.per_port = vec![[0; 2]; t.ports.len()];
            (s, Pending::default())
        })
    }
}

/// [`trace`] with a model of the workers.
pub fn trace_with(
    t: &Tables,
    shared: &SharedState,
    in_port: u16,
    frame: &[u8],
    opts: &TraceOptions,
) -> TraceReport {
    let private = SharedState {
        neigh: Arc::new(NeighborTable::snapshot(&shared.neigh)),
        l3neigh: Arc::new(L3Neighbors::snapshot(&shared.l3neigh)),
    };
    let workers = opts.workers.max(1);
    let mut w = Workers {
        t,
        shared: private,
        workers,
        cores: BTreeMap::new(),
    };
    let mut c = BatchCounters::default();
    let mut tr = TraceLog::default();
    let mut rec = Recorder::default();
    let mut txb: TxBuffers<TestBuf> = TxBuffers::new(t.ports.len());

    let mut b: Batch<TestBuf> = Batch::default();
    b.pkts[0] = Some(TestBuf::new(frame));
    b.start(in_port, 1);
    let (s, held) = w.get(opts.rx_core.min(workers - 1));
    pipeline::process(&mut b, t, s, held, &mut c, &mut tr);
    let mut last = b.meta[0];
    output::run(&mut b, t, s, &mut txb, &mut rec, &mut c, &mut tr);
    txb.flush(&mut rec, &mut c);
    let mut handoffs = 0;
    while let Some((core, h)) = rec.handoffs.pop_front() {
        handoffs += 1;
        if handoffs > MAX_HANDOFFS {
            tr.note(
                0,
                "handoff",
                format_args!("handed off {MAX_HANDOFFS} times: the trace stops here"),
            );
            break;
        }
        let at = match h.stage {
            firewall::STAGE_EGRESS => "the firewall egress check",
            firewall::STAGE_ROUTE => "the router (centralized SNAT)",
            _ => "the firewall ingress check",
        };
        tr.note(
            0,
            "handoff",
            format_args!("core {core}, which owns the connection, resumes at {at}"),
        );
        // As the runtime's `drain_inbox`.
        let mut m = h.meta;
        m.next = pipeline::resumed_next(m.next);
        b.pkts[0] = Some(h.p);
        b.start(h.in_port, 1);
        b.meta[0] = m;
        let (s, held) = w.get(core);
        pipeline::resume(&mut b, h.stage, t, s, held, &mut c, &mut tr);
        last = b.meta[0];
        output::run(&mut b, t, s, &mut txb, &mut rec, &mut c, &mut tr);
        txb.flush(&mut rec, &mut c);
    }
    let waiting: Vec<(NetIdx, u128)> = w
        .cores
        .values()
        .flat_map(|(_, held)| held.waiting_for())
        .collect();

    let port_name = |p: u16| {
        t.ports
            .get(p as usize)
            .map_or_else(|| format!("port {p}"), |e| e.name.clone())
    };
    let vxlan_port = t.overlay.as_ref().map_or(4789, |o| o.udp_port);
    let verdict = verdict(t, in_port, &last, &waiting, &rec.sent, &c);
    let mut notes = Vec::new();
    if t.firewall {
        notes.push("security groups: judged as the first packet of its connection, in a connection table of the trace's own (the workers' tables are not read)".into());
    }
    if verdict.starts_with("flood") {
        notes.push("MAC learning: only the static FDB is known here; a destination a worker has learned would not be flooded".into());
    }
    if !waiting.is_empty() {
        notes.push("next-hop resolution: a live worker asks at most once per 100 ms per next hop and holds a packet at most 1 s".into());
    }
    let counters = DropReason::ALL
        .iter()
        .map(|r| (r.name(), c.dropped(*r)))
        .chain(Event::ALL.iter().map(|e| (e.name(), c.count(*e))))
        .filter(|x| x.1 > 0)
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
    TraceReport {
        in_port: port_name(in_port),
        frame_len: frame.len(),
        frame: summary(frame, vxlan_port),
        frame_hex: to_hex(frame),
        lines: tr.for_packet(0),
        verdict,
        outputs: rec
            .sent
            .iter()
            .map(|(p, f)| TraceOutput {
                port: port_name(*p),
                len: f.len(),
                summary: summary(f, vxlan_port),
                hex: to_hex(f),
            })
            .collect(),
        counters,
        notes,
    }
}

/// The VLAN tag of a frame, if it has one.
fn vlan_of(f: &[u8]) -> Option<u16> {
    (f.get(12..14) == Some(&[0x81, 0x00])).then(|| {
        f.get(14..16)
            .map_or(0, |v| u16::from_be_bytes([v[0], v[1]]) & 0x0fff)
    })
}

/// Where one frame that left went, in words: `vm2`, `uplink vlan 101`, `tunnel to 10.0.0.12
/// (compute2) vni 1001`.
fn destination(t: &Tables, port: u16, f: &[u8]) -> String {
    let overlay = t.overlay.as_ref().filter(|o| o.port == port);
    let outer = overlay.and_then(|o| {
        // Outer Ethernet 14, IPv4 20 (destination at 16..20), UDP 8 (port at 2..4), VXLAN 8.
        let dst = Ipv4Addr::from(<[u8; 4]>::try_from(f.get(30..34)?).ok()?);
        let udp = u16::from_be_bytes(f.get(36..38)?.try_into().ok()?);
        let vni = u32::from_be_bytes([0, *f.get(46)?, *f.get(47)?, *f.get(48)?]);
        (udp == o.udp_port).then_some((dst, vni))
    });
    if let Some((ip, vni)) = outer {
        let host = t
            .vtep_by_ip
            .get(&u32::from(ip))
            .and_then(|&v| t.vteps.get(v as usize))
            .map_or("unknown host", |v| v.host.as_str());
        return format!("tunnel to {ip} ({host}) vni {vni}");
    }
    let name = t.ports.get(port as usize).map_or("?", |p| p.name.as_str());
    match vlan_of(f) {
        Some(v) => format!("{name} vlan {v}"),
        None => name.to_owned(),
    }
}

/// The one-line verdict from the packet's last decision, what left, what is held and the
/// drops counted.
fn verdict(
    t: &Tables,
    in_port: u16,
    last: &pipeline::Meta,
    waiting: &[(NetIdx, u128)],
    sent: &[(u16, Vec<u8>)],
    c: &BatchCounters,
) -> String {
    let drops: Vec<&str> = DropReason::ALL
        .iter()
        .filter(|r| c.dropped(**r) > 0)
        .map(|r| r.name())
        .collect();
    let to: Vec<String> = sent.iter().map(|(p, f)| destination(t, *p, f)).collect();
    if let Some(&(net, addr)) = waiting.first() {
        let (kind, addr) = match Ipv6Addr::from(addr).to_ipv4_mapped() {
            Some(a) => ("ARP", a.to_string()),
            None => ("ND", Ipv6Addr::from(addr).to_string()),
        };
        let net = t
            .networks
            .get(net as usize)
            .map_or("?", |n| n.name.as_str());
        let asked = if to.is_empty() {
            "no request sent".to_owned()
        } else {
            format!("request sent to {}", to.join(", "))
        };
        return format!("held: waiting for {kind} of {addr} on network {net}; {asked}");
    }
    let main = match last.next {
        Next::Drop(r) => return format!("dropped: {}", r.name()),
        Next::Consumed => {
            return "consumed: taken by the switch itself (an answer to its own request)".into()
        }
        Next::Continue | Next::Route(_) => return "unclaimed: no stage decided (a bug)".into(),
        Next::Handoff(core, ..) => return format!("handed to core {core}, not followed further"),
        _ if sent.is_empty() => {
            return drops
                .first()
                .map_or("dropped at output".into(), |r| format!("dropped: {r}"))
        }
        Next::Tunnel(v) if c.dropped(DropReason::TunnelUnresolved) > 0 => {
            let ip = t.vteps.get(v as usize).map(|e| e.ip.to_string());
            return format!(
                "dropped: tunnel.unresolved (VTEP {} not resolved; ARP request sent)",
                ip.unwrap_or_default()
            );
        }
        Next::Output(_) | Next::Tunnel(_) => to.first().map_or(String::new(), |d| match d {
            d if d.starts_with("tunnel") => d.clone(),
            d => format!("output to {d}"),
        }),
        Next::Reply => {
            let name = t
                .ports
                .get(in_port as usize)
                .map_or("?", |p| p.name.as_str());
            match sent.first().and_then(|(_, f)| vlan_of(f)) {
                Some(v) => format!("reply out of {name} vlan {v}"),
                None => format!("reply out of {name}"),
            }
        }
        Next::Flood | Next::FloodLocal => format!("flood: {}", to.join(", ")),
    };
    if drops.is_empty() {
        main
    } else {
        format!("{main} (also dropped: {})", drops.join(", "))
    }
}
