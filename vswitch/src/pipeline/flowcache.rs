//! Stage `flowcache`: a per-core exact-match cache of what the stages decided for the packets
//! of established TCP connections and UDP flows (OVS-DPDK's EMC in front of its classifier,
//! VPP's established-session fast path).
//!
//! Reads: the frame after `provider`, `tunnel::decap` and `router::dvr_ingress`; the core's
//! connection table.
//! Writes: the frame's headers, `Meta::network` and `Meta::next` of a hit, the connection
//! entries it tracks, the counters the stages it stands for would have counted.
//! Next: `Output(port)` or `Tunnel(vtep)` for a hit; everything else goes on (`Continue`).
//!
//! A plain ACK (no SYN, FIN or RST) of a TCP connection, or a UDP datagram, with an
//! option-less IPv4 header, not a fragment, or right after an IPv6 header (no extension
//! header; in a table of its own, keys of 8 words), is looked up by everything the stages
//! decide on: the ingress port, its network and the VTEP it came from, both MACs, the
//! protocol, both addresses and both ports. A hit stands for port security, the egress
//! firewall, the local responders, switching, routing (floating IPs and centralized SNAT
//! included) and the ingress firewall: it rewrites the header as they did (MACs, TTL
//! (IPv6: the hop limit, in no checksum), addresses, ports, and both
//! checksums by constant incremental deltas, RFC 1624: the changed words are the same for
//! every packet of the flow; a UDP checksum of 0, none, stays 0 and one that comes out 0 is
//! sent as 0xffff, as `nat` does), moves the same connection entries on as they did (a TCP
//! segment: the same window checks; a UDP datagram: the deadline of its flow, replied or, one
//! way, not yet), and counts what they counted. Anything the entry cannot answer exactly (an
//! entry that moved on or went, SYN/FIN/RST, a TTL the router would answer with an ICMP
//! error, a packet bigger than the egress MTU, a bad IP checksum) misses, changes nothing, and
//! takes the stages.
//! So does a packet behind one of its own connection that takes the stages in the same
//! batch (a FIN, then an ACK): the stages move the connection's entries on packet by packet,
//! in the order they came, and a hit answered first would move them on out of turn.
//!
//! Entries are made only from what the stages just did to a packet that missed: it went the
//! whole way to one port or one VTEP as a plain ACK of established connections (or a datagram
//! of replied, assured UDP flows, or one more of flows not replied yet, in their original
//! direction: a one-way stream), each stage noted what it used (the connection entries, the
//! router, the ports the firewall counted), no
//! event the cache cannot repeat (a learned or moved MAC, a new connection, an ICMP error, a
//! held packet...) was counted in its batch, and the rewrite the entry would apply to the
//! header as it came reproduces the stages' result byte for byte. An entry holds while the
//! tables generation, this core's learned MACs, the routers' resolved neighbours and its
//! connection entries (checked by a fingerprint of their key and policy) are those it was
//! made with, and for at most [`MAX_AGE_MS`] (so the stages refresh learned MACs).
use super::conntrack::{expired, flag, flow, state, tcp, TcpPeer, PROTO_TCP, PROTO_UDP};
use super::{Batch, CoreState, Next, BURST};
use crate::counters::{BatchCounters, Event as E, RouterStat};
use crate::packet::checksum::{adjust, fold};
use crate::packet::{be16, be32, put_be16, PacketBuf};
use crate::tables::{NetIdx, Tables};
use vswitch_ffi::hugemem::HugeSlice;

/// Header bytes the cache reads and rewrites: Ethernet, a 20-byte IPv4 header, 20 bytes of
/// TCP header (of a UDP datagram: its 8-byte header and 12 bytes of payload, read and left as
/// they are).
pub const HDR: usize = 54;
/// Header bytes the cache reads and rewrites of an IPv6 candidate: Ethernet, a 40-byte IPv6
/// header (no extension header), 20 bytes of TCP header (UDP: 8 and 12 of payload).
pub const HDR6: usize = 74;
/// Buckets of the IPv6 table (two slots each, keys of 8 words: two lines a bucket).
const BUCKETS6: usize = 4096;
const BUCKET6_BITS: u32 = BUCKETS6.trailing_zeros();
/// Buckets of two slots each (a power of two): many times more slots than the flows one
/// core forwards at line rate, so that three flows seldom need the same bucket (2,048 flows
/// at random: about 5 such buckets of 16,384, against 18 of 8,192). Only the slots in use are
/// ever read.
const BUCKETS: usize = 16384;
const BUCKET_BITS: u32 = BUCKETS.trailing_zeros();
/// The longest an entry is used before the stages see its flow again.
pub const MAX_AGE_MS: u64 = 1000;
/// One in this many learns that find both ways of their bucket holding other live flows
/// replaces one of them.
const CROWDED_REPLACE_ONE_IN: u32 = 16;

/// Which learns into a bucket full of live flows replace one: a xorshift sequence (one in
/// [`CROWDED_REPLACE_ONE_IN`]), so that no order in which the flows sharing a bucket come
/// falls into step with it. Three flows taking turns in a two-way bucket, replaced every
/// time, would each miss on every packet; replaced now and then, two of them hit.
#[derive(Debug)]
struct Crowd(u32);

impl Crowd {
    fn next(&mut self) -> bool {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.is_multiple_of(CROWDED_REPLACE_ONE_IN)
    }
}
/// Connection entries one packet may move on (the sender's zone, the receiver's, a router's
/// translation: two at most on one path).
const REFS: usize = 2;
/// No router.
const NO_ROUTER: u16 = u16::MAX;
/// No slot.
const NOT_FOUND: u32 = u32::MAX;

/// Router events of a routed packet, as bits of [`Rec::routed`].
pub mod ev {
    pub const ROUTED: u8 = 1;
    pub const DVR: u8 = 2;
    pub const TO_SNAT: u8 = 4;
    pub const FIP_IN: u8 = 8;
    pub const FIP_OUT: u8 = 16;
    pub const SNAT_IN: u8 = 32;
    pub const SNAT_OUT: u8 = 64;
    /// Not the router's own: a frame another host's distributed router sent (its DVR MAC
    /// as source) got the gateway's MAC instead (`router::dvr_ingress`).
    pub const DVR_IN: u8 = 128;
}

/// Each value of a slot's `routed` bits spread one bit to a byte (bit k to byte k): a batch's
/// events add up in one word (at most [`BURST`] per byte), not in a loop over the bits for
/// every packet.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut v = 0;
    while v < 256 {
        let mut k = 0;
        while k < 8 {
            t[v] |= ((v as u64 >> k) & 1) << (8 * k);
            k += 1;
        }
        v += 1;
    }
    t
};

/// The router's events, in the order of the [`ev`] bits.
const ROUTER_EVENTS: [E; 8] = [
    E::Routed,
    E::DvrMacOut,
    E::ToSnat,
    E::FipDnat,
    E::FipSnat,
    E::SnatIn,
    E::SnatOut,
    E::DvrMacIn,
];

/// The events a hit repeats (from its entry: these and [`ROUTER_EVENTS`]) or that only
/// concern packets never cached: any other event counted while the stages ran a batch keeps
/// the cache from learning from it.
const REPEATABLE: [E; 2] = [E::Unicast, E::Flooded];

/// How a hit moves a connection entry on: as the firewall's fast path does (window checks
/// unless the entry is liberal), as a router's translation (liberal TCP tracking), or as the
/// firewall's fast path and a translation move a UDP flow on, replied (its deadline) or not
/// yet replied, in its original direction (its unreplied deadline: the flow stays unreplied
/// and unassured, as the stages leave it). The learn makes the firewall's and the router's
/// notes of a datagram one of the last two, from the state of the flow's entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Track {
    #[default]
    Firewall = 0,
    Translation = 1,
    Datagram = 2,
    Unreplied = 3,
}

/// [`Track::steady`] of each track, by its number: a load on a hit, not a branch.
const STEADY: [u8; 4] = [
    state::ESTABLISHED,
    state::ESTABLISHED,
    state::REPLIED,
    state::UNREPLIED,
];

impl Track {
    /// The state an entry tracked this way is in while the cache may answer for it.
    #[inline(always)]
    fn steady(self) -> u8 {
        STEADY[self as usize & 3]
    }

    /// How a datagram moves its flow's entry on, from the entry's state and the datagram's
    /// direction: `None` when the cache may not answer for it (a reply to an unreplied flow
    /// makes it replied and assured, which only the stages do).
    #[inline]
    fn of_datagram(st: u8, dir: u8) -> Option<Track> {
        match st {
            state::REPLIED => Some(Track::Datagram),
            state::UNREPLIED if dir == 0 => Some(Track::Unreplied),
            _ => None,
        }
    }
}

/// The deadlines a hit gives the entries it moves on (those the stages would give them: an
/// established TCP connection's, a replied or unreplied UDP flow's), read from the timeouts
/// once a batch, by [`Track`] number.
#[derive(Clone, Copy)]
struct Deadlines([u32; 4]);

impl Deadlines {
    #[inline(always)]
    fn of(t: &super::conntrack::Timeouts) -> Self {
        Self::new(
            t.of(PROTO_TCP, state::ESTABLISHED),
            t.of(PROTO_UDP, state::REPLIED),
            t.of(PROTO_UDP, state::UNREPLIED),
        )
    }

    const fn new(established: u32, replied_udp: u32, unreplied_udp: u32) -> Self {
        Deadlines([established, established, replied_udp, unreplied_udp])
    }

    /// The time to live of an entry tracked `how`, in its steady state.
    #[inline(always)]
    fn of_track(self, how: Track) -> u32 {
        self.0[how as usize & 3]
    }
}

/// What the stages noted about one packet of the batch in flight.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Something the cache cannot repeat happened to it.
    pub bad: bool,
    refs: [(u32, u8, Track); REFS],
    nrefs: u8,
    /// Ports whose firewall counted it as allowed.
    fw_ports: [u16; 2],
    nfw: u8,
    router: u16,
    routed: u8,
    mtu: u16,
}

impl Default for Rec {
    fn default() -> Self {
        Rec {
            bad: false,
            refs: [(0, 0, Track::Firewall); REFS],
            nrefs: 0,
            fw_ports: [0; 2],
            nfw: 0,
            router: NO_ROUTER,
            routed: 0,
            mtu: u16::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct SlotRef {
    /// Fingerprint of the entry's key and policy version when the flow was cached.
    fp: u64,
    idx: u32,
    dir: u8,
    how: Track,
}

/// The keys of a bucket's two slots: one cache line, the only one a miss reads.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Keys([[u64; 4]; 2]);

/// The keys of an IPv6 bucket's two slots (addresses make a key of 7 words, padded to 8).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Keys6([[u64; 8]; 2]);

/// What one cached flow does (its key is in [`Keys`], or [`Keys6`]).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Slot {
    /// Tables generation (`u64::MAX`: empty).
    generation: u64,
    l3_epoch: u64,
    born: u64,
    learn_epoch: u64,
    refs: [SlotRef; REFS],
    /// Bytes 0..12 (MACs), then 26..38 (addresses and ports) as the stages left them
    /// (IPv6: the MACs only; nothing else is rewritten).
    post: [u8; 24],
    ip_delta: u16,
    l4_delta: u16,
    mtu: u16,
    net: NetIdx,
    router: u16,
    fw_ports: [u16; 2],
    next: Next,
    ttl_dec: u8,
    routed: u8,
    nrefs: u8,
    nfw: u8,
    /// A UDP flow's: the transport checksum is UDP's (at 40, 0 for none), not TCP's (at 50).
    udp: bool,
}

// A slot is two cache lines, both prefetched before use.
const _: () = assert!(std::mem::size_of::<Slot>() == 128);

const EMPTY: Slot = Slot {
    generation: u64::MAX,
    l3_epoch: 0,
    born: 0,
    learn_epoch: 0,
    refs: [SlotRef {
        fp: 0,
        idx: 0,
        dir: 0,
        how: Track::Firewall,
    }; REFS],
    post: [0; 24],
    ip_delta: 0,
    l4_delta: 0,
    mtu: 0,
    net: 0,
    router: NO_ROUTER,
    fw_ports: [0; 2],
    next: Next::Consumed,
    ttl_dec: 0,
    routed: 0,
    nrefs: 0,
    nfw: 0,
    udp: false,
};

/// What a slot must have been made under to answer now: the tables generation, the core's
/// resolved-neighbour and learned-MAC epochs, and a birth less than [`MAX_AGE_MS`] ago.
#[derive(Clone, Copy)]
struct Stamp {
    generation: u64,
    l3_epoch: u64,
    learn_epoch: u64,
    now_ms: u64,
}

impl Stamp {
    #[inline(always)]
    fn new(generation: u64, l3_epoch: u64, learn_epoch: u64, now_ms: u64) -> Self {
        Stamp {
            generation,
            l3_epoch,
            learn_epoch,
            now_ms,
        }
    }

    #[inline(always)]
    fn current(&self, e: &Slot) -> bool {
        e.generation == self.generation
            && e.l3_epoch == self.l3_epoch
            && e.learn_epoch == self.learn_epoch
            && self.now_ms.wrapping_sub(e.born) < MAX_AGE_MS
    }
}

/// Counts of one core's cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowCacheStats {
    pub hits: u64,
    /// Looked up and not found (or found stale): the stages decided.
    pub misses: u64,
    pub inserted: u64,
    /// Learns not made because both ways of the bucket held live flows (see [`Crowd`]).
    pub crowded: u64,
}

/// One core's flow cache and what the stages noted for the batch in flight.
#[derive(Debug)]
pub struct FlowCache {
    pub enabled: bool,
    /// On huge pages: every packet reads a key line and a slot at random.
    keys: HugeSlice<Keys>,
    slots: HugeSlice<Slot>,
    /// The same for IPv6 flows.
    keys6: HugeSlice<Keys6>,
    slots6: HugeSlice<Slot>,
    /// Packets of the batch in flight the cache answered (bit `i`: packet `i`).
    pub hits: u32,
    /// Packets that missed and may be learnt from once the stages are done.
    pub cand: u32,
    /// Whether the lookup left nothing for the stages after it: every packet of the batch
    /// was answered by the cache or had already been settled (dropped, or bound for a
    /// reply or a tunnel) before it.
    pub settled: bool,
    /// Their keys (IPv4, or IPv6: the candidates of `v6`), headers as they came and lengths.
    cand_keys: [[u64; 4]; BURST],
    cand_keys6: [[u64; 8]; BURST],
    /// The candidates of the batch in flight that are IPv6.
    v6: u32,
    /// The bucket of each candidate of the batch in flight, and the slot it found.
    bucket: [u32; BURST],
    found: [u32; BURST],
    /// The TCP segment of each candidate whose slot may answer.
    segs: [tcp::Segment; BURST],
    pre: [[u8; HDR6]; BURST],
    lens: [u32; BURST],
    pub rec: [Rec; BURST],
    pub stats: FlowCacheStats,
    crowd: Crowd,
}

impl Default for FlowCache {
    fn default() -> Self {
        Self::new(true)
    }
}

impl FlowCache {
    pub fn new(enabled: bool) -> Self {
        FlowCache {
            enabled,
            keys: HugeSlice::on_huge_pages(BUCKETS, Keys([[0; 4]; 2])),
            slots: HugeSlice::new(2 * BUCKETS, EMPTY),
            keys6: HugeSlice::on_huge_pages(BUCKETS6, Keys6([[0; 8]; 2])),
            slots6: HugeSlice::new(2 * BUCKETS6, EMPTY),
            hits: 0,
            cand: 0,
            settled: false,
            cand_keys: [[0; 4]; BURST],
            cand_keys6: [[0; 8]; BURST],
            v6: 0,
            bucket: [0; BURST],
            found: [NOT_FOUND; BURST],
            segs: [tcp::Segment::default(); BURST],
            pre: [[0; HDR6]; BURST],
            lens: [0; BURST],
            rec: [Rec::default(); BURST],
            stats: FlowCacheStats::default(),
            crowd: Crowd(0x9e37_79b9),
        }
    }

    /// Candidate `i` (header `d`) was not answered: the stages decide, and are learnt from.
    #[inline(always)]
    fn missed(&mut self, i: usize, d: &[u8]) {
        self.stats.misses += 1;
        self.cand |= 1 << i;
        self.lens[i] = d.len() as u32;
        let n = d.len().min(HDR6);
        if let (Some(pre), Some(h)) = (self.pre.get_mut(i), d.get(..n)) {
            pre[..n].copy_from_slice(h);
        }
        if let Some(r) = self.rec.get_mut(i) {
            *r = Rec::default();
        }
    }

    /// The way of its bucket that holds candidate `i`'s key, if any (`V6`: in the IPv6
    /// table).
    #[inline(always)]
    fn way<const V6: bool>(&self, i: usize) -> Option<usize> {
        let bi = self.bucket[i] as usize;
        if V6 {
            let key = &self.cand_keys6[i];
            self.keys6
                .get(bi)
                .and_then(|k| k.0.iter().position(|x| x == key))
        } else {
            let key = &self.cand_keys[i];
            match self.keys.get(bi) {
                Some(k) if k.0[0] == *key => Some(0),
                Some(k) if k.0[1] == *key => Some(1),
                _ => None,
            }
        }
    }

    /// Packet `i` took a path the cache cannot repeat.
    #[inline(always)]
    pub fn spoil(&mut self, i: usize) {
        if let Some(r) = self.rec.get_mut(i) {
            r.bad = true;
        }
    }

    /// Packet `i` moved connection entry `idx` on (direction `dir`) as a plain ACK of an
    /// established connection, the way `how` says.
    #[inline(always)]
    pub fn note_ct(&mut self, i: usize, idx: u32, dir: u8, how: Track) {
        if let Some(r) = self.rec.get_mut(i) {
            let n = r.nrefs as usize;
            let dup = r.refs.iter().take(n).any(|x| x.0 == idx);
            match r.refs.get_mut(n) {
                Some(slot) if !dup => {
                    *slot = (idx, dir, how);
                    r.nrefs += 1;
                }
                _ => r.bad = true,
            }
        }
    }

    /// Packet `i` was counted as allowed by the firewall of `port`.
    #[inline(always)]
    pub fn note_fw(&mut self, i: usize, port: u16) {
        if let Some(r) = self.rec.get_mut(i) {
            match r.fw_ports.get_mut(r.nfw as usize) {
                Some(slot) => {
                    *slot = port;
                    r.nfw += 1;
                }
                None => r.bad = true,
            }
        }
    }

    /// Packet `i` was forwarded by router `router` to an egress of MTU `mtu`, counted as
    /// `routed` ([`ev`] bits).
    #[inline(always)]
    pub fn note_route(&mut self, i: usize, router: u16, mtu: u16, routed: u8) {
        if let Some(r) = self.rec.get_mut(i) {
            if r.router != NO_ROUTER {
                r.bad = true;
            }
            r.router = router;
            r.routed |= routed;
            r.mtu = mtu;
        }
    }

    /// Packet `i` came from another host's distributed router and got the gateway's MAC as
    /// source ([`ev::DVR_IN`]).
    #[inline(always)]
    pub fn note_dvr_in(&mut self, i: usize) {
        if let Some(r) = self.rec.get_mut(i) {
            r.routed |= ev::DVR_IN;
        }
    }
}

/// The first [`HDR`] bytes of a frame, as an array: every fixed offset read from it needs no
/// bounds check.
type Hdr = [u8; HDR];

/// The 8 bytes of header `d` at `at`, little-endian (a key word).
#[inline(always)]
fn le64<const N: usize>(d: &[u8; N], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The first three words of a key, either family's: ingress port, network, source VTEP and
/// the protocol (at `proto_at`); the MACs; the last 4 bytes of the source MAC and the ports
/// (at `ports_at`).
#[inline(always)]
fn key_head<const N: usize>(
    d: &[u8; N],
    (in_port, net, from_vtep): (u16, NetIdx, u16),
    proto_at: usize,
    ports_at: usize,
) -> [u64; 3] {
    let p = ports_at;
    let w2 = u32::from_le_bytes([d[8], d[9], d[10], d[11]]) as u64
        | (u32::from_le_bytes([d[p], d[p + 1], d[p + 2], d[p + 3]]) as u64) << 32;
    let w0 = in_port as u64 | (net as u64) << 16 | (from_vtep as u64) << 32;
    [w0 | (d[proto_at] as u64) << 48, le64(d, 0), w2]
}

/// A candidate's key: ingress port, network, source VTEP, protocol; MACs; ports; addresses.
#[inline(always)]
fn key_of(d: &Hdr, in_port: u16, net: NetIdx, from_vtep: u16) -> [u64; 4] {
    let [w0, w1, w2] = key_head(d, (in_port, net, from_vtep), 23, 34);
    [w0, w1, w2, le64(d, 26)]
}

#[inline(always)]
fn bucket(k: &[u64; 4]) -> usize {
    // One folded 64 x 64 -> 128-bit multiply of the words folded in pairs (the ports word
    // rotated so the varying bits of both halves meet different bits of the other), then one
    // more multiply whose top bits are the bucket: what varies between the flows of one core
    // (ports, addresses) reaches the bucket bits whatever the constant words (port, network,
    // protocol) are. A poor spread would show as misses (two slots a bucket), never as a wrong
    // answer: the whole key is compared.
    let a = k[0] ^ k[2].rotate_left(29) ^ 0x243f_6a88_85a3_08d3;
    let b = k[1] ^ k[3] ^ 0x1319_8a2e_0370_7344;
    let m = (a as u128).wrapping_mul(b as u128);
    let h = ((m as u64) ^ ((m >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - BUCKET_BITS)) as usize
}

/// The bucket the cache files frame `f` under, received on `in_port` in network `net` (not
/// from a VTEP; tests: to pick flows that share one).
#[cfg(test)]
pub(crate) fn bucket_of(f: &[u8], in_port: u16, net: NetIdx) -> usize {
    let d = f.first_chunk::<HDR>().expect("a whole header");
    bucket(&key_of(d, in_port, net, super::Meta::default().from_vtep))
}

/// A connection entry's fingerprint: its key words and the policy version that admitted it.
#[inline(always)]
fn fingerprint(e: &super::conntrack::Entry) -> u64 {
    let (a, m) = e.ident();
    let x = (a ^ 0x243f_6a88_85a3_08d3) as u128 * (m ^ (e.policy as u64) << 7 | 1) as u128;
    (x as u64) ^ ((x >> 64) as u64) ^ a
}

/// A candidate: an IPv4 TCP plain ACK or UDP datagram whose headers lie at fixed offsets.
#[inline(always)]
fn candidate(d: &Hdr) -> bool {
    d[12] == 0x08
        && d[13] == 0x00
        && d[14] == 0x45
        && be16(d, 20) & 0x3fff == 0
        && match d[23] {
            PROTO_TCP => d[47] & (tcp::FIN | tcp::SYN | tcp::RST | tcp::ACK) == tcp::ACK,
            PROTO_UDP => true,
            _ => false,
        }
}

/// A UDP candidate the connection tracker reads as a datagram of a flow, as
/// `flow::parse_into` does: the IP total length within the frame and room for the UDP header,
/// and not DHCP (client and server ports are the firewall's to let by, untracked); `len` is
/// the frame's.
#[inline(always)]
fn datagram(d: &Hdr, len: usize) -> bool {
    let tl = be16(d, 16) as usize;
    tl >= 28 && tl <= len - 14 && !flow::dhcp_ports(be16(d, 34), be16(d, 36))
}

/// What a UDP candidate keeps in place of a segment (never read: a datagram moves no window).
const DATAGRAM: tcp::Segment = tcp::Segment {
    seq: 0,
    ack: 0,
    win: 0,
    flags: 0,
    len: 0,
    wscale: 255,
};

/// The TCP segment of a candidate, as `flow::parse_into` reads it (straight from the frame:
/// nothing is stored and read back on the way), or [`DATAGRAM`] for a UDP one; `len` is the
/// frame's. `None`: lengths that do not add up.
#[inline(always)]
fn segment(d: &Hdr, len: usize) -> Option<tcp::Segment> {
    if d[23] == PROTO_UDP {
        return datagram(d, len).then_some(DATAGRAM);
    }
    let tl = be16(d, 16) as usize;
    if tl < 40 || tl > len - 14 {
        return None;
    }
    let doff = ((d[46] >> 4) as usize) * 4;
    if doff < 20 || doff > tl - 20 {
        return None;
    }
    Some(tcp::Segment {
        seq: be32(d, 38),
        ack: be32(d, 42),
        win: be16(d, 48),
        flags: d[47],
        len: (tl - 20 - doff) as u32,
        // Never a SYN here: no window scale option is read.
        wscale: 255,
    })
}

/// The first [`HDR6`] bytes of an IPv6 frame.
type Hdr6 = [u8; HDR6];

/// An IPv6 candidate: a TCP plain ACK or a UDP datagram right after the IPv6 header (no
/// extension header).
#[inline(always)]
fn candidate6(d: &Hdr6) -> bool {
    d[12] == 0x86
        && d[13] == 0xdd
        && d[14] >> 4 == 6
        && match d[20] {
            PROTO_TCP => d[67] & (tcp::FIN | tcp::SYN | tcp::RST | tcp::ACK) == tcp::ACK,
            PROTO_UDP => true,
            _ => false,
        }
}

/// An IPv6 candidate's key: ingress port, network, source VTEP, next header; MACs; ports;
/// addresses.
#[inline(always)]
fn key6(d: &Hdr6, in_port: u16, net: NetIdx, from_vtep: u16) -> [u64; 8] {
    let [w0, w1, w2] = key_head(d, (in_port, net, from_vtep), 20, 54);
    [
        w0,
        w1,
        w2,
        le64(d, 22),
        le64(d, 30),
        le64(d, 38),
        le64(d, 46),
        0,
    ]
}

/// The bucket of an IPv6 key: its words folded to the four of [`bucket`]'s, then as there.
#[inline(always)]
fn bucket6(k: &[u64; 8]) -> usize {
    let folded = [
        k[0],
        k[1],
        k[2] ^ k[5].rotate_left(23),
        k[3] ^ k[4].rotate_left(41) ^ k[6],
    ];
    bucket(&folded) >> (BUCKET_BITS - BUCKET6_BITS)
}

/// The TCP segment (or [`DATAGRAM`]) of an IPv6 candidate, as `flow::parse_into` reads it;
/// `len` is the frame's. `None`: lengths that do not add up, or DHCPv6 (the firewall's to let
/// by, untracked).
#[inline(always)]
fn segment6(d: &Hdr6, len: usize) -> Option<tcp::Segment> {
    let plen = be16(d, 18) as usize;
    if 54 + plen > len {
        return None;
    }
    if d[20] == PROTO_UDP {
        let (sp, dp) = (be16(d, 54), be16(d, 56));
        let dhcp = matches!((sp, dp), (546, 547) | (547, 546));
        return (plen >= 8 && !dhcp).then_some(DATAGRAM);
    }
    let doff = ((d[66] >> 4) as usize) * 4;
    if plen < 20 || doff < 20 || doff > plen {
        return None;
    }
    Some(tcp::Segment {
        seq: be32(d, 58),
        ack: be32(d, 62),
        win: be16(d, 68),
        flags: d[67],
        len: (plen - doff) as u32,
        wscale: 255,
    })
}

/// Answers the packets of the batch its entries hold, and marks the other candidates for
/// learning once the stages are done. In passes over the batch, so the loads of one packet
/// overlap those of the others: keys (one line a bucket), then the slots found, then the
/// connection entries they name, then the work. IPv4 candidates first, then, when the batch
/// has any, IPv6 ones ([`settle`] of each family: the same passes on the family's table).
#[inline(never)]
pub fn lookup<B: PacketBuf>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &mut BatchCounters,
) {
    let fc = &mut s.flows;
    fc.hits = 0;
    fc.cand = 0;
    fc.settled = false;
    // Pass 1: which packets may hit, their keys and buckets; which ones the later stages
    // would look at (they act on packets still going, routed or bound for a port).
    let mut cand = 0u32;
    let mut v6 = 0u32;
    let mut busy = 0u32;
    for i in 0..b.len.min(BURST) {
        match b.meta[i].next {
            Next::Continue => busy |= 1 << i,
            Next::Output(_) | Next::Route(_) => {
                busy |= 1 << i;
                continue;
            }
            _ => continue,
        }
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        let data = p.data();
        let Some(d) = data.first_chunk::<HDR>() else {
            continue;
        };
        let m = &b.meta[i];
        if !candidate(d) {
            let ipv6 = d[12] == 0x86 && d[13] == 0xdd;
            if let Some(h) = data.first_chunk::<HDR6>().filter(|h| ipv6 && candidate6(h)) {
                let key = key6(h, b.in_port, m.network, m.from_vtep);
                let bi = bucket6(&key);
                if let Some(k) = fc.keys6.get(bi) {
                    vswitch_ffi::hint::prefetch(k);
                    vswitch_ffi::hint::prefetch((k as *const Keys6).cast::<u8>().wrapping_add(64));
                }
                fc.cand_keys6[i] = key;
                fc.bucket[i] = bi as u32;
                v6 |= 1 << i;
                cand |= 1 << i;
            }
            continue;
        }
        let key = key_of(d, b.in_port, m.network, m.from_vtep);
        let bi = bucket(&key);
        if let Some(k) = fc.keys.get(bi) {
            vswitch_ffi::hint::prefetch(k);
        }
        fc.cand_keys[i] = key;
        fc.bucket[i] = bi as u32;
        cand |= 1 << i;
    }
    fc.v6 = v6;
    if cand == 0 {
        return;
    }
    let mut acc = Tally {
        router: (NO_ROUTER, 0),
        routed: 0,
        unicast: 0,
    };
    // A packet of one family never moves the other's connections on: the other family's
    // candidates are not "staged" for a family's hits.
    settle::<B, false>(b, t, s, cand & !v6, busy & !v6, &mut acc);
    if v6 != 0 {
        settle::<B, true>(b, t, s, v6, busy & !(cand & !v6), &mut acc);
    }
    flush_tally(s.router.as_ref(), acc.router);
    let fc = &mut s.flows;
    fc.settled = busy & !fc.hits == 0;
    c.events[E::Unicast as usize] += acc.unicast;
    if acc.routed != 0 {
        for (k, e) in ROUTER_EVENTS.into_iter().enumerate() {
            c.events[e as usize] += acc.routed >> (8 * k) & 0xff;
        }
    }
}

/// What the hits of a batch counted, added up over both families.
struct Tally {
    /// The router of the last hits and how many (flushed when another router's come).
    router: (u16, u64),
    /// Router events, one byte each ([`SPREAD`]).
    routed: u64,
    unicast: u64,
}

/// Passes 2 to 4 of [`lookup`] for the candidates `cand` of one family (`V6`: IPv6, in the
/// IPv6 table; else IPv4), `busy` being the packets the later stages would look at that may
/// move that family's connections on.
#[inline(always)]
fn settle<B: PacketBuf, const V6: bool>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    cand: u32,
    busy: u32,
    acc: &mut Tally,
) {
    let fc = &mut s.flows;
    // Pass 2: the slot each key is in.
    let mut w = cand;
    while w != 0 {
        let i = w.trailing_zeros() as usize & (BURST - 1);
        w &= w - 1;
        let bi = fc.bucket[i] as usize;
        fc.found[i] = fc.way::<V6>(i).map_or(NOT_FOUND, |w| (2 * bi + w) as u32);
        let slots = if V6 { &fc.slots6 } else { &fc.slots };
        if let Some(e) = slots.get(fc.found[i] as usize) {
            // Both of its lines.
            vswitch_ffi::hint::prefetch(e);
            vswitch_ffi::hint::prefetch((e as *const Slot).cast::<u8>().wrapping_add(64));
        }
    }
    // Pass 3: the slots that may answer (fresh, the router's checks passed, a well-formed
    // segment), whose connection entries start loading; the other candidates missed. The
    // checks sit between the loads of one packet's entries and their use in pass 4.
    let stamp = Stamp::new(t.generation, s.l3neigh.epoch(), s.learn.epoch(), s.now_ms);
    let now = s.fw.now;
    let mut ready = 0u32;
    let mut w = cand;
    while w != 0 {
        let i = w.trailing_zeros() as usize & (BURST - 1);
        w &= w - 1;
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        let (d, len) = (p.data(), p.data().len());
        let slots = if V6 { &fc.slots6 } else { &fc.slots };
        let found = slots.get(fc.found[i] as usize).filter(|e| stamp.current(e));
        // Only a well-formed segment (or datagram) can be learnt from; the router's checks
        // a cached decision cannot skip: the TTL (hop limit) it would answer with an ICMP
        // error, the egress MTU, and an IPv4 header's checksum.
        let fresh = if V6 {
            let Some((h, seg)) = d
                .first_chunk::<HDR6>()
                .and_then(|h| Some((h, segment6(h, len)?)))
            else {
                continue;
            };
            fc.segs[i] = seg;
            found.filter(|e| {
                e.ttl_dec == 0 || (h[21] > e.ttl_dec && 40 + be16(h, 18) as u32 <= e.mtu as u32)
            })
        } else {
            let Some((h, seg)) = d
                .first_chunk::<HDR>()
                .and_then(|h| Some((h, segment(h, len)?)))
            else {
                continue;
            };
            fc.segs[i] = seg;
            found.filter(|e| {
                e.ttl_dec == 0
                    || (h[22] > e.ttl_dec
                        && be16(h, 16) <= e.mtu
                        && super::router::ipv4_sum20_ok(&h[14..34]))
            })
        };
        match fresh {
            Some(e) => {
                for r in &e.refs[..e.nrefs as usize] {
                    s.fw.ct.touch_entry(r.idx);
                }
                ready |= 1 << i;
            }
            None => fc.missed(i, d),
        }
    }
    // Pass 4: hits.
    let ttls = Deadlines::of(&s.fw.ct.timeouts);
    // A packet behind one of its own connection that takes the stages (a FIN before an
    // ACK, a segment too big for the egress) takes them too: the stages move the entries on
    // packet by packet, in the order they came.
    let staged = busy & !ready;
    if staged != 0 {
        ready &= !demote_behind::<B, V6>(b, fc, &s.fw.ct, staged, ready);
    }
    let mut w = ready;
    while w != 0 {
        let i = w.trailing_zeros() as usize & (BURST - 1);
        w &= w - 1;
        let slots = if V6 { &fc.slots6 } else { &fc.slots };
        let (Some(p), Some(e)) = (b.pkts[i].as_mut(), slots.get(fc.found[i] as usize)) else {
            continue;
        };
        if !track_all(e, &fc.segs[i], &mut s.fw.ct, now, ttls) {
            fc.missed(i, p.data());
            w &= !demote_behind::<B, V6>(b, fc, &s.fw.ct, 1 << i, w);
            continue;
        }
        if V6 {
            if let Some(h) = p.data_mut().first_chunk_mut::<HDR6>() {
                if e.ttl_dec != 0 || h[..12] != e.post[..12] {
                    apply6(h, e);
                }
            }
        } else if let Some(h) = p.data_mut().first_chunk_mut::<HDR>() {
            if e.ttl_dec != 0 || e.ip_delta != 0 || e.l4_delta != 0 || h[..12] != e.post[..12] {
                apply(h, e);
            }
        }
        let m = &mut b.meta[i];
        m.network = e.net;
        m.next = e.next;
        fc.hits |= 1 << i;
        fc.stats.hits += 1;
        acc.unicast += 1;
        acc.routed += SPREAD[e.routed as usize];
        if e.router != NO_ROUTER {
            if acc.router.0 != e.router {
                flush_tally(s.router.as_ref(), acc.router);
                acc.router = (e.router, 0);
            }
            acc.router.1 += 1;
        }
        for &port in &e.fw_ports[..e.nfw as usize] {
            s.fw.count(port, true);
        }
    }
}

/// The most connection entries one packet's stages open (the sender's zone, the receiver's,
/// a translation), with room to spare.
const NEW_PER_PACKET: usize = 4;

/// Of the candidates `hits`, those whose slot tracks an unreplied flow, when the connection
/// table is about to evict: a packet that takes the stages ahead of one of them may open a
/// connection that pushes out the unreplied entries it relies on (the stages would then open
/// that flow again), so it takes the stages too, in order.
#[inline(always)]
fn evictable<const V6: bool>(ct: &super::conntrack::Conntrack, fc: &FlowCache, hits: u32) -> u32 {
    if !ct.may_evict_within(NEW_PER_PACKET * BURST) {
        return 0;
    }
    let slots = if V6 { &fc.slots6 } else { &fc.slots };
    let mut out = 0u32;
    let mut w = hits;
    while w != 0 {
        let i = w.trailing_zeros() as usize & (BURST - 1);
        w &= w - 1;
        if let Some(e) = slots.get(fc.found[i] as usize) {
            let n = (e.nrefs as usize).min(REFS);
            if e.refs[..n].iter().any(|r| r.how == Track::Unreplied) {
                out |= 1 << i;
            }
        }
    }
    out
}

/// Of the candidates `hits` the cache would answer, those behind a packet of `staged` (which
/// take the stages) that may move the same connection entries on (or push them out of a
/// connection table about to evict: [`evictable`]), and those behind them: they miss, and the
/// set of them is returned. Rare (a batch whose packets all hit, or all miss, never gets
/// here), so out of line.
#[inline(never)]
#[cold]
fn demote_behind<B: PacketBuf, const V6: bool>(
    b: &Batch<B>,
    fc: &mut FlowCache,
    ct: &super::conntrack::Conntrack,
    mut staged: u32,
    hits: u32,
) -> u32 {
    let evictable = evictable::<V6>(ct, fc, hits);
    let mut demoted = 0u32;
    let mut w = hits;
    while w != 0 {
        let i = w.trailing_zeros() as usize & (BURST - 1);
        w &= w - 1;
        let ahead = staged & ((1u32 << i) - 1);
        if ahead != 0 && (evictable & (1 << i) != 0 || follows_staged(b, ahead, i)) {
            if let Some(p) = b.pkts[i].as_ref() {
                fc.missed(i, p.data());
            }
            staged |= 1 << i;
            demoted |= 1 << i;
        }
    }
    demoted
}

/// Whether one of the packets `ahead` of packet `i` (a candidate, its headers at fixed
/// offsets), which take the stages, may move on the connection entries `i` would: an IPv4
/// packet of the same protocol between the same addresses, with the same ports (or ports
/// not where a plain header puts them: options, a fragment, a frame cut short); of an IPv6
/// candidate, an IPv6 packet between the same addresses with the same ports, or with
/// anything else than the candidate's protocol after its header (an extension header, an
/// ICMPv6 message). Anything else (another connection, ARP, the other family) leaves `i`'s
/// entries as they are.
#[inline(always)]
fn follows_staged<B: PacketBuf>(b: &Batch<B>, mut ahead: u32, i: usize) -> bool {
    let Some(h) = b.pkts[i].as_ref().map(|p| p.data()) else {
        return true;
    };
    let v6 = h.len() >= HDR6 && h[12..14] == [0x86, 0xdd];
    if !v6 && h.len() < HDR {
        return true;
    }
    // Where the protocol, the addresses and the ports are.
    let (proto_at, addrs, ports_at) = if v6 {
        (20, 22..54, 54)
    } else {
        (23, 26..34, 34)
    };
    let (et, proto) = ([h[12], h[13]], h[proto_at]);
    let (a, ports) = (&h[addrs.clone()], &h[ports_at..ports_at + 4]);
    while ahead != 0 {
        let j = ahead.trailing_zeros() as usize & (BURST - 1);
        ahead &= ahead - 1;
        let Some(d) = b.pkts[j].as_ref().map(|p| p.data()) else {
            continue;
        };
        if d.len() < addrs.end || d[12..14] != et || d[addrs.clone()] != *a {
            continue;
        }
        let plain = if v6 {
            d[proto_at] == proto && d.len() >= ports_at + 4
        } else {
            if d[proto_at] != proto {
                continue;
            }
            d[14] == 0x45 && be16(d, 20) & 0x3fff == 0 && d.len() >= 38
        };
        if !plain || d[ports_at..ports_at + 4] == *ports {
            return true;
        }
    }
    false
}

/// Moves every connection entry of slot `e` on by `seg`, as the firewall's fast path (or a
/// translation's tracking) would: the TCP window, the established deadline, the reply seen (a
/// UDP flow's entries, [`Track::Datagram`]: the replied deadline and the reply seen). All of
/// them or none: false, with every entry as it was, when one of them no longer holds the
/// connection it held, is not established (replied) and assured, or the segment is out of its
/// window.
///
/// Each entry's windows are moved on in place (as the firewall's fast path does: no copies
/// in and out of the check) and put back from a saved copy if it or a later one fails
/// (rare), rather than the new windows being gathered first and copied in after: a copy of
/// values just stored, read back at once, stalls the core on store-to-load forwarding.
#[inline(always)]
fn track_all(
    e: &Slot,
    seg: &tcp::Segment,
    ct: &mut super::conntrack::Conntrack,
    now: u32,
    ttls: Deadlines,
) -> bool {
    // track_twins checks the count itself; tested here first, the other slots' way stays as
    // short as before (without it, 6-8 more instructions a floating-IP or SNAT hit).
    if e.nrefs == 2 {
        if let Some(done) = track_twins(e, seg, ct, now, ttls.of_track(Track::Firewall)) {
            return done;
        }
    }
    let n = (e.nrefs as usize).min(REFS);
    let mut saved = [[TcpPeer::default(); 2]; REFS];
    for k in 0..n {
        let r = &e.refs[k];
        // The entries to put back should this one fail: those before it, and itself once
        // its own step has begun.
        let mut changed = k;
        let next = match ct.entry_mut(r.idx) {
            Some(ce) if holds(ce, r, now) => {
                saved[k] = ce.tcp;
                changed = k + 1;
                // A plain ACK of an established connection tracked liberally is accepted
                // and changes nothing, whether the firewall's fast path or a translation's
                // tracking judges it (`tcp::track` checked for it in tests).
                ce.flags & flag::LIBERAL != 0
                    || match r.how {
                        Track::Firewall => tcp::plain_ack_in_window(r.dir, &mut ce.tcp, seg),
                        Track::Translation => matches!(
                            tcp::track(state::ESTABLISHED, r.dir, &mut ce.tcp, seg, false),
                            tcp::Verdict::Ok(state::ESTABLISHED)
                        ),
                        Track::Datagram | Track::Unreplied => true,
                    }
            }
            _ => false,
        };
        if !next {
            for (r, old) in e.refs[..changed].iter().zip(saved) {
                if let Some(ce) = ct.entry_mut(r.idx) {
                    ce.tcp = old;
                }
            }
            return false;
        }
    }
    for r in &e.refs[..n] {
        if let Some(ce) = ct.entry_mut(r.idx) {
            passed(ce, r.dir, now, ttls.of_track(r.how));
        }
    }
    true
}

/// Connection entry `ce` still holds the connection that `r` was made for, in the state the
/// cache answers for it in (established; a UDP flow's: replied, or unreplied), and it has
/// not expired. An entry in the first two is assured (the stages assure it as it gets there,
/// and the twin harnesses check that after every step), one unreplied is not: the state
/// says all the flags would.
#[inline(always)]
fn holds(ce: &super::conntrack::Entry, r: &SlotRef, now: u32) -> bool {
    fingerprint(ce) == r.fp && ce.state == r.how.steady() && !expired(ce.expires, now)
}

/// What a segment (or datagram) that passed in direction `dir` does to its entry besides the
/// windows: the deadline of its steady state (`ttl`), and the reply seen.
#[inline(always)]
fn passed(ce: &mut super::conntrack::Entry, dir: u8, now: u32, ttl: u32) {
    ce.expires = now.wrapping_add(ttl);
    ce.flags |= (dir & 1) * flag::SEEN_REPLY;
}

/// [`track_all`] of the usual slot of a connection between two instances of this host: one
/// entry in the sender's zone and one in the receiver's, both checked as the firewall's fast
/// path does, in the same direction, with the same tracking (every segment of the connection
/// moved both the same way since it was established). The window check runs once for both,
/// as the firewall's own `mirror` spares the receiver's zone the same check. `None`: not such
/// a slot (or the entries are not as it needs), nothing changed; the general way decides.
#[inline(always)]
fn track_twins(
    e: &Slot,
    seg: &tcp::Segment,
    ct: &mut super::conntrack::Conntrack,
    now: u32,
    est_ttl: u32,
) -> Option<bool> {
    let [r0, r1] = &e.refs;
    if e.nrefs != 2 || r0.how != Track::Firewall || r1.how != Track::Firewall || r0.dir != r1.dir {
        return None;
    }
    let [a, b] = ct.entries_pair_mut(r0.idx, r1.idx)?;
    let strict =
        |ce: &super::conntrack::Entry, r| holds(ce, r, now) && ce.flags & flag::LIBERAL == 0;
    if !strict(a, r0) || !strict(b, r1) || a.tcp != b.tcp {
        return None;
    }
    let saved = a.tcp;
    if !tcp::plain_ack_in_window_twice(r0.dir, &mut a.tcp, &mut b.tcp, seg) {
        a.tcp = saved;
        return Some(false);
    }
    for ce in [a, b] {
        passed(ce, r0.dir, now, est_ttl);
    }
    Some(true)
}

fn flush_tally(rc: &crate::counters::RouterCounters, (router, n): (u16, u64)) {
    if router != NO_ROUTER && n != 0 {
        let mut what = [0u64; 4];
        what[RouterStat::Routed as usize] = n;
        rc.add(router, what);
    }
}

/// The events a hit cannot repeat, summed: the stages may only be learnt from when this did
/// not change while they ran.
#[inline]
pub fn unrepeatable(c: &BatchCounters) -> u64 {
    let all: u64 = c.events.iter().sum();
    all - REPEATABLE
        .iter()
        .chain(&ROUTER_EVENTS)
        .map(|&e| c.events[e as usize])
        .sum::<u64>()
}

/// Learns from the candidates of the batch the stages just decided (see the module
/// documentation for when), `before` being [`unrepeatable`] before they ran.
#[inline(never)]
pub fn learn<B: PacketBuf>(
    b: &Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &BatchCounters,
    before: u64,
) {
    let fc = &mut s.flows;
    let mut cand = std::mem::take(&mut fc.cand);
    if unrepeatable(c) != before {
        return;
    }
    let stamp = Stamp::new(t.generation, s.l3neigh.epoch(), s.learn.epoch(), s.now_ms);
    while cand != 0 {
        let i = cand.trailing_zeros() as usize;
        cand &= cand - 1;
        let rec = fc.rec[i];
        if rec.bad {
            continue;
        }
        let next = b.meta[i].next;
        match next {
            Next::Output(p) if p != b.in_port => {}
            Next::Tunnel(_) => {}
            _ => continue,
        }
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        let post = p.data();
        let v6 = fc.v6 & (1 << i) != 0;
        if post.len() != fc.lens[i] as usize || post.len() < if v6 { HDR6 } else { HDR } {
            continue;
        }
        // The way it goes to: its own, a free or stale one, or, when both ways hold other
        // live flows, the older of the two only now and then, so that three flows sharing a
        // bucket keep two of them cached instead of pushing each other out on every packet
        // (OVS's EMC inserts with a probability too).
        let bi = fc.bucket[i] as usize;
        let own = if v6 {
            fc.way::<true>(i)
        } else {
            fc.way::<false>(i)
        };
        let slots = if v6 { &fc.slots6 } else { &fc.slots };
        let Some(ways) = slots.get(2 * bi..2 * bi + 2) else {
            continue;
        };
        let w = match own.or_else(|| ways.iter().position(|e| !stamp.current(e))) {
            Some(w) => w,
            None if fc.crowd.next() => usize::from(ways[1].born < ways[0].born),
            None => {
                fc.stats.crowded += 1;
                continue;
            }
        };
        let pre = &fc.pre[i];
        let made = if v6 {
            action6(pre, post)
        } else {
            pre.first_chunk::<HDR>().and_then(|pre| action(pre, post))
        };
        let Some(mut slot) = made else {
            continue;
        };
        let routed_ok = (slot.ttl_dec != 0) == (rec.router != NO_ROUTER);
        if !routed_ok {
            continue;
        }
        let mut refs = [SlotRef::default(); REFS];
        let mut ok = true;
        for (r, &(idx, dir, how)) in refs.iter_mut().zip(&rec.refs[..rec.nrefs as usize]) {
            // The firewall and the router note a datagram as they note a plain ACK; what a
            // datagram does to its entries is the same whichever of them tracked it, and
            // depends on whether its flow has been replied.
            let e = s.fw.ct.entry(idx);
            let how = match e {
                Some(e) if slot.udp => Track::of_datagram(e.state, dir),
                _ => Some(how),
            };
            // (As in `holds`, the state says whether the entry is assured.)
            match (e, how) {
                (Some(e), Some(how)) if e.state == how.steady() => {
                    *r = SlotRef {
                        fp: fingerprint(e),
                        idx,
                        dir,
                        how,
                    }
                }
                _ => ok = false,
            }
        }
        if !ok {
            continue;
        }
        slot.generation = stamp.generation;
        slot.l3_epoch = stamp.l3_epoch;
        slot.learn_epoch = stamp.learn_epoch;
        slot.born = stamp.now_ms;
        slot.refs = refs;
        slot.nrefs = rec.nrefs;
        slot.fw_ports = rec.fw_ports;
        slot.nfw = rec.nfw;
        slot.router = rec.router;
        slot.routed = rec.routed;
        slot.mtu = rec.mtu;
        slot.net = b.meta[i].network;
        slot.next = next;
        let way = if v6 {
            let keys = fc.keys6.get_mut(bi);
            keys.map(|k| k.0[w] = fc.cand_keys6[i])
                .and(fc.slots6.get_mut(2 * bi + w))
        } else {
            let keys = fc.keys.get_mut(bi);
            keys.map(|k| k.0[w] = fc.cand_keys[i])
                .and(fc.slots.get_mut(2 * bi + w))
        };
        if let Some(way) = way {
            *way = slot;
            fc.stats.inserted += 1;
        }
    }
}

/// The rewrite that turns header `pre` (a TCP segment or a UDP datagram) into `post`: MACs,
/// TTL, addresses and ports, with the checksum deltas, checked to reproduce `post` exactly
/// from `pre`. `None`: the stages changed something else (or the checksums some other way).
fn action(pre: &[u8; HDR], post: &[u8]) -> Option<Slot> {
    let post: &[u8; HDR] = post.first_chunk()?;
    let word = |h: &[u8; HDR], at: usize| be16(h, at) as u32;
    let ttl_dec = pre[22].checked_sub(post[22])?;
    // One's complement sums of `~old + new` over the words that changed.
    let mut ip = 0u32;
    let delta = |at: usize| {
        let (old, new) = (word(pre, at), word(post, at));
        if old == new {
            0
        } else {
            (!old & 0xffff) + new
        }
    };
    for at in [22, 26, 28, 30, 32] {
        ip += delta(at);
    }
    let mut l4 = 0u32;
    for at in [26, 28, 30, 32, 34, 36] {
        l4 += delta(at);
    }
    let mut s = EMPTY;
    s.udp = pre[23] == PROTO_UDP;
    s.ttl_dec = ttl_dec;
    s.ip_delta = fold(ip);
    s.l4_delta = fold(l4);
    s.post[..12].copy_from_slice(&post[..12]);
    s.post[12..].copy_from_slice(&post[26..38]);
    // Replay on the header as it came.
    let mut h = *pre;
    apply(&mut h, &s);
    (h == *post).then_some(s)
}

/// The rewrite of slot `e` on header `d`.
#[inline(always)]
fn apply(d: &mut Hdr, e: &Slot) {
    d[..12].copy_from_slice(&e.post[..12]);
    d[26..38].copy_from_slice(&e.post[12..]);
    d[22] = d[22].wrapping_sub(e.ttl_dec);
    let ip = adjust(be16(d, 24), e.ip_delta);
    put_be16(d, 24, ip);
    if !e.udp {
        let l4 = adjust(be16(d, 50), e.l4_delta);
        put_be16(d, 50, l4);
        return;
    }
    // UDP (RFC 768): no checksum stays none; a computed 0 is sent as its other form, 0xffff.
    // The stages adjust it one field at a time, mapping a 0 between steps the same way; in
    // one's complement both forms of zero add alike, so one constant delta gives what they
    // give (`a_udp_rewrite_gives_what_the_stages_give_for_every_checksum`).
    let c = be16(d, 40);
    if c != 0 {
        let n = adjust(c, e.l4_delta);
        put_be16(d, 40, if n == 0 { 0xffff } else { n });
    }
}

/// The rewrite that turns IPv6 header `pre` into `post`: MACs and the hop limit, checked to
/// reproduce `post` exactly from `pre` (nothing else changes: IPv6 is routed, never
/// translated, and the hop limit is in no checksum). `None`: the stages changed something else.
fn action6(pre: &[u8; HDR6], post: &[u8]) -> Option<Slot> {
    let post: &[u8; HDR6] = post.first_chunk()?;
    let mut s = EMPTY;
    s.udp = pre[20] == PROTO_UDP;
    s.ttl_dec = pre[21].checked_sub(post[21])?;
    s.post[..12].copy_from_slice(&post[..12]);
    let mut h = *pre;
    apply6(&mut h, &s);
    (h == *post).then_some(s)
}

/// The rewrite of slot `e` on IPv6 header `d`.
#[inline(always)]
fn apply6(d: &mut Hdr6, e: &Slot) {
    d[..12].copy_from_slice(&e.post[..12]);
    d[21] = d[21].wrapping_sub(e.ttl_dec);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ipv4::Ipv4Packet;
    use crate::pipeline::conntrack::Conntrack;
    use crate::pipeline::nat::{self, Field};
    use crate::pipeline::testutil::tcp4;
    use proptest::prelude::*;

    /// What the router does to a floating-IP (or SNAT) packet: addresses, a port, TTL, MACs.
    fn stages(f: &mut [u8], new_dst: u32, new_src: u32, new_port: u16) {
        assert!(nat::rewrite(f, 14, Field::Dst, new_dst));
        assert!(nat::rewrite(f, 14, Field::Src, new_src));
        assert!(nat::rewrite_port(f, 14, Field::Src, new_port));
        Ipv4Packet::new_checked(&mut f[14..])
            .unwrap()
            .decrement_ttl();
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 8]);
    }

    proptest! {
        /// The rewrite learnt from one packet of a flow, applied to any other packet of it
        /// (other sequence numbers, payload, TTL, identification), gives exactly what the
        /// stages' own rewrites give: the checksum deltas are the flow's, not the packet's.
        #[test]
        fn the_rewrite_learnt_from_one_packet_fits_every_packet_of_the_flow(
            seq in any::<u32>(), ack in any::<u32>(), len in 0usize..64, ttl in 2u8..=255,
            seq2 in any::<u32>(), ack2 in any::<u32>(), len2 in 0usize..64, ttl2 in 2u8..=255,
            id in any::<u16>(), new_dst in any::<u32>(), new_src in any::<u32>(),
            new_port in any::<u16>(), sport in any::<u16>(),
        ) {
            let frame = |seq, ack, len, ttl, id: u16| {
                let mut f = tcp4(
                    "fa:16:3e:00:00:01", "fa:16:3e:aa:00:01", None,
                    ([198, 51, 100, 4], [100, 64, 0, 9]), (sport, 5001), (seq, ack), 0x18, len, ttl,
                );
                f[18..20].copy_from_slice(&id.to_be_bytes());
                Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
                f
            };
            let first = frame(seq, ack, len, ttl, id);
            let mut post = first.clone();
            stages(&mut post, new_dst, new_src, new_port);
            let pre: [u8; HDR] = *first.first_chunk().unwrap();
            let e = action(&pre, &post).expect("the stages' rewrite is one the cache can repeat");
            prop_assert_eq!(e.ttl_dec, 1);
            let mut other = frame(seq2, ack2, len2, ttl2, id.wrapping_add(1));
            let mut want = other.clone();
            stages(&mut want, new_dst, new_src, new_port);
            apply(other.first_chunk_mut().unwrap(), &e);
            prop_assert_eq!(other, want);
        }
    }

    /// A UDP datagram `sport -> 53` from 198.51.100.4 to 100.64.0.9 with UDP checksum `sum`
    /// (not recomputed: the stages and the cache only adjust it) and `len` bytes of payload
    /// (at least 12: the cache reads [`HDR`] bytes; shorter frames are never candidates).
    fn datagram_with(sport: u16, sum: u16, len: usize, ttl: u8) -> Vec<u8> {
        let mut f = crate::pipeline::testutil::udp4_tagged(
            ("fa:16:3e:00:00:01", "fa:16:3e:aa:00:01"),
            None,
            ([198, 51, 100, 4], [100, 64, 0, 9]),
            (sport, 53),
            &vec![0x5a; len],
        );
        f[22] = ttl;
        f[40..42].copy_from_slice(&sum.to_be_bytes());
        Ipv4Packet::new_checked(&mut f[14..])
            .unwrap()
            .fill_checksum();
        f
    }

    proptest! {
        /// As for TCP: the UDP rewrite learnt from one datagram of a flow fits every other
        /// datagram of it, whatever its checksum (0, none, included) and length.
        #[test]
        fn a_udp_rewrite_learnt_from_one_datagram_fits_any_other(
            sum in any::<u16>(), sum2 in prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
            len in 12usize..64, len2 in 12usize..64, ttl in 2u8..=255, ttl2 in 2u8..=255,
            new_dst in any::<u32>(), new_src in any::<u32>(), new_port in any::<u16>(),
            sport in any::<u16>(),
        ) {
            let first = datagram_with(sport, sum, len, ttl);
            let mut post = first.clone();
            stages(&mut post, new_dst, new_src, new_port);
            let pre: [u8; HDR] = *first.first_chunk().unwrap();
            let e = action(&pre, &post).expect("a UDP rewrite the cache can repeat");
            prop_assert!(e.udp);
            let mut other = datagram_with(sport, sum2, len2, ttl2);
            let mut want = other.clone();
            stages(&mut want, new_dst, new_src, new_port);
            apply(other.first_chunk_mut().unwrap(), &e);
            prop_assert_eq!(other, want);
        }
    }

    /// Every UDP checksum a datagram can carry, through two translations (a floating IP's:
    /// addresses only; centralized SNAT's: an address and the port): the cache's one delta
    /// gives exactly what the stages' field-by-field updates give, the values whose result is
    /// zero (sent as 0xffff) and 0 itself (none, left as it is) included.
    #[test]
    fn a_udp_rewrite_gives_what_the_stages_give_for_every_checksum() {
        for (new_dst, new_src, new_port) in [
            (0xc633_6404, 0xcb00_7111, 53),
            (0x6440_0009, 0xcb00_710b, 1024),
        ] {
            let first = datagram_with(40000, 0x1234, 12, 64);
            let mut post = first.clone();
            stages(&mut post, new_dst, new_src, new_port);
            let e = action(first.first_chunk().unwrap(), &post).unwrap();
            let (mut zeros, mut ffff) = (0, 0);
            for sum in 0..=u16::MAX {
                let mut got = datagram_with(40000, sum, 12, 64);
                let mut want = got.clone();
                stages(&mut want, new_dst, new_src, new_port);
                apply(got.first_chunk_mut().unwrap(), &e);
                assert_eq!(got, want, "checksum {sum:#06x}");
                zeros += (be16(&want, 40) == 0) as u32;
                ffff += (be16(&want, 40) == 0xffff) as u32;
            }
            // Only "none" comes out as 0, and the one checksum whose result is zero as 0xffff.
            assert_eq!(
                (zeros, ffff),
                (1, 1),
                "{new_dst:#x} {new_src:#x} {new_port}"
            );
        }
    }

    /// A header the stages changed beyond what the cache rewrites (here the IP
    /// identification) is not learnt.
    #[test]
    fn a_rewrite_the_cache_cannot_repeat_is_not_learnt() {
        let f = tcp4(
            "fa:16:3e:00:00:01",
            "fa:16:3e:aa:00:01",
            None,
            ([198, 51, 100, 4], [100, 64, 0, 9]),
            (40000, 5001),
            (1, 1),
            0x10,
            0,
            64,
        );
        let pre: [u8; HDR] = *f.first_chunk().unwrap();
        let mut post = f.clone();
        post[19] ^= 1;
        assert!(action(&pre, &post).is_none());
        // Nothing changed at all: the rewrite is empty (deltas zero, nothing to do).
        let e = action(&pre, &f).unwrap();
        assert_eq!((e.ttl_dec, e.ip_delta, e.l4_delta), (0, 0, 0));
    }

    /// A segment of the tests below (window 502, no options).
    fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> tcp::Segment {
        tcp::Segment {
            seq,
            ack,
            win: 502,
            flags,
            len,
            wscale: 255,
        }
    }

    /// Both sides' tracking once a handshake from ISN `a` (the client) and `b` is done.
    fn handshake(a: u32, b: u32) -> [TcpPeer; 2] {
        let mut peers = [TcpPeer::default(); 2];
        tcp::open(&mut peers, &seg(tcp::SYN, a, 0, 0));
        for (dir, s, st) in [
            (1, seg(tcp::SYN | tcp::ACK, b, a + 1, 0), state::SYN_SENT),
            (0, seg(tcp::ACK, a + 1, b + 1, 0), state::SYN_RECV),
        ] {
            assert!(matches!(
                tcp::track(st, dir, &mut peers, &s, false),
                tcp::Verdict::Ok(_)
            ));
        }
        peers
    }

    /// One connection, established and assured in zones 1 and 2 with tracking `tcp[0]` and
    /// `tcp[1]`, and a slot moving both on in direction `dir` as the firewall does.
    fn two_zones(tcp: [[TcpPeer; 2]; 2], dir: u8) -> (Conntrack, Slot) {
        use crate::pipeline::conntrack::{Key, Timeouts};
        let timeouts = Timeouts::from_config(&vswitch_config::ConntrackTimeouts::default());
        let mut ct = Conntrack::new(64, timeouts, false);
        let mut refs = [SlotRef::default(); REFS];
        for (zone, (r, p)) in refs.iter_mut().zip(tcp).enumerate() {
            let k = Key::v4(zone as u16 + 1, 6, 0x0a00_0001, 0x0a00_0002, 40000, 5001);
            let idx = ct.insert(&k, state::ESTABLISHED, 0, 7, 0).unwrap();
            ct.assure(idx);
            let e = ct.entry_mut(idx).unwrap();
            e.tcp = p;
            *r = SlotRef {
                fp: fingerprint(e),
                idx,
                dir,
                how: Track::Firewall,
            };
        }
        let slot = Slot {
            generation: 0,
            refs,
            nrefs: 2,
            ..EMPTY
        };
        (ct, slot)
    }

    /// Each of `tcp` moved on by its own check of `seg` (which each must pass).
    fn checked_each(tcp: [[TcpPeer; 2]; 2], dir: u8, seg: &tcp::Segment) -> [[TcpPeer; 2]; 2] {
        tcp.map(|mut p| {
            assert!(tcp::plain_ack_in_window(dir, &mut p, seg));
            p
        })
    }

    /// What a slot's two entries hold: tracking, deadline, flags.
    fn zones(ct: &Conntrack, slot: &Slot) -> [([TcpPeer; 2], u32, u8); 2] {
        slot.refs.map(|r| {
            let e = ct.entry(r.idx).unwrap();
            (e.tcp, e.expires, e.flags)
        })
    }

    /// Deadlines for the tests of TCP slots: an established connection's 1,000 ms (the UDP
    /// ones far off, so that a TCP entry given one would show).
    const TTLS: Deadlines = Deadlines::new(1000, 999_000, 888_000);

    /// A connection tracked in two zones whose windows differ (the second never saw the
    /// server's data): a segment the first zone accepts and the second refuses is refused
    /// whole, with the first zone's windows, moved on in place, put back; one both accept
    /// moves both on exactly as the firewall's fast path does.
    #[test]
    fn a_segment_the_second_zone_refuses_leaves_both_entries_as_they_were() {
        let (a, b) = (1_000u32, 4_000_000_000u32);
        let peers = handshake(a, b);
        // The first zone also saw 1,000 bytes from the server.
        let mut seen = peers;
        assert!(tcp::plain_ack_in_window(
            1,
            &mut seen,
            &seg(tcp::ACK, b + 1, a + 1, 1000)
        ));
        let (mut ct, slot) = two_zones([seen, peers], 0);
        let before = zones(&ct, &slot);
        // The client acks the server's data: in the first zone's window, beyond the second's.
        let acks_data = seg(tcp::ACK | tcp::PSH, a + 1, b + 1001, 6);
        let mut first = seen;
        assert!(tcp::plain_ack_in_window(0, &mut first, &acks_data));
        assert_ne!(first, seen, "the first zone's windows move on");
        assert!(!track_all(&slot, &acks_data, &mut ct, 10, TTLS));
        assert_eq!(zones(&ct, &slot), before, "both entries as they were");
        // Data that acks only what both saw: both move on, with a new deadline.
        let plain = seg(tcp::ACK | tcp::PSH, a + 1, b + 1, 6);
        let want = checked_each([seen, peers], 0, &plain);
        assert!(track_all(&slot, &plain, &mut ct, 10, TTLS));
        let after = zones(&ct, &slot);
        assert_eq!([after[0].0, after[1].0], want);
        assert_eq!([after[0].1, after[1].1], [1010, 1010]);
    }

    /// The usual slot of a connection between two instances of one host: both zones track
    /// it the same way, and the check runs once for both (`track_twins`). A segment in window
    /// moves both exactly as a check of each would, with a new deadline and the reply seen;
    /// one out of window changes neither; once the zones' windows differ, the general way
    /// judges, still all or nothing.
    #[test]
    fn twin_entries_move_together_as_two_checks_would() {
        let (a, b) = (1_000u32, 4_000_000_000u32);
        let peers = handshake(a, b);
        let (mut ct, slot) = two_zones([peers, peers], 1);
        let reply_seen = |ct: &Conntrack| {
            zones(ct, &slot).map(|(t, exp, f)| (t, exp, f & flag::SEEN_REPLY != 0))
        };
        // The server sends 1,000 bytes: both zones move on alike.
        let data = seg(tcp::ACK | tcp::PSH, b + 1, a + 1, 1000);
        let [want, _] = checked_each([peers; 2], 1, &data);
        assert_ne!(want, peers);
        assert!(track_all(&slot, &data, &mut ct, 10, TTLS));
        assert_eq!(reply_seen(&ct), [(want, 1010, true); 2]);
        // Far beyond the window: refused, neither changed.
        let before = zones(&ct, &slot);
        let far = seg(tcp::ACK, b.wrapping_add(1 << 30), a + 1, 6);
        assert!(!track_all(&slot, &far, &mut ct, 20, TTLS));
        assert_eq!(zones(&ct, &slot), before);
        // The second zone's windows no longer the first's: judged entry by entry.
        let mut other = want;
        other[0].maxwin += 1;
        ct.entry_mut(slot.refs[1].idx).unwrap().tcp = other;
        let more = seg(tcp::ACK | tcp::PSH, b + 101, a + 1, 6);
        let expect = checked_each([want, other], 1, &more);
        assert!(track_all(&slot, &more, &mut ct, 30, TTLS));
        let after = zones(&ct, &slot);
        assert_eq!([after[0].0, after[1].0], expect);
    }

    #[test]
    fn router_events_spread_one_bit_to_a_byte_and_add_up_per_batch() {
        const _: () = assert!(ROUTER_EVENTS.len() == 8 && BURST < 256);
        assert_eq!(SPREAD[0], 0);
        assert_eq!(SPREAD[ev::ROUTED as usize], 1);
        assert_eq!(SPREAD[(ev::ROUTED | ev::SNAT_OUT) as usize], 1 | 1 << 48);
        assert_eq!(SPREAD[ev::DVR_IN as usize], 1 << 56);
        // A full batch of every event: 32 in each of the eight bytes, nothing carried over.
        let all = (0..BURST).map(|_| SPREAD[255]).sum::<u64>();
        for k in 0..8 {
            assert_eq!(all >> (8 * k) & 0xff, BURST as u64);
        }
    }

    /// Flows that differ only in a port, only in an address, or in both, spread over the
    /// buckets as random keys would (4,096 random keys in 16,384 buckets: about 3,620
    /// distinct, rarely more than 5 in one), TCP and UDP, whatever port and network they come
    /// in on. (The hash before the second multiply spread the addresses of TCP on port 0 of
    /// network 2 over 2,897 buckets only.)
    #[test]
    fn flows_of_one_host_pair_spread_over_the_buckets() {
        let spread = |keys: &mut dyn Iterator<Item = [u64; 4]>| {
            let mut load = vec![0u32; BUCKETS];
            for k in keys {
                load[bucket(&k)] += 1;
            }
            let used = load.iter().filter(|&&n| n > 0).count();
            (used, *load.iter().max().unwrap())
        };
        let frame = |proto: u8, sport: u16, src: u32| {
            let mut f = tcp4(
                "02:00:00:00:00:01",
                "02:00:00:00:00:02",
                None,
                (src.to_be_bytes(), [10, 0, 0, 2]),
                (sport, 5001),
                (1, 2),
                0x10,
                6,
                64,
            );
            f.resize(HDR.max(f.len()), 0);
            f[23] = proto;
            *f.first_chunk::<HDR>().unwrap()
        };
        for proto in [PROTO_TCP, PROTO_UDP] {
            for (port, net) in [(0, 2), (1, 3), (5, 40)] {
                let key = |sport, src| key_of(&frame(proto, sport, src), port, net, 0);
                let by_port = &mut (0..4096u16).map(|i| key(49152 + i, 0x0a00_0001));
                let by_addr = &mut (0..4096u32).map(|i| key(40000, 0xcb00_7100 + i));
                let by_both =
                    &mut (0..4096u32).map(|i| key(49152 + (i % 64) as u16, 0x0a00_0100 + i / 64));
                for (what, keys) in [
                    ("ports", by_port as &mut dyn Iterator<Item = _>),
                    ("addresses", by_addr),
                    ("both", by_both),
                ] {
                    let (used, max) = spread(keys);
                    assert!(
                        used >= 3500 && max <= 6,
                        "protocol {proto}, port {port}, network {net}, {what}: {used} buckets, at most {max} in one"
                    );
                }
            }
        }
    }

    /// A translation made again for the same connection (its entry flushed, the connection
    /// picked up again, perhaps with another port) in the same slot of the table is another
    /// entry to the cache: a slot learnt from the old one never answers for it.
    #[test]
    fn a_translation_made_again_in_the_same_entry_has_another_fingerprint() {
        use crate::pipeline::conntrack::{flag, Key, Timeouts};
        let timeouts = Timeouts::from_config(&vswitch_config::ConntrackTimeouts::default());
        let mut ct = Conntrack::new(16, timeouts, false);
        let k = Key::v4(0x8001, 6, 0x0a00_0005, 0x6440_0009, 40000, 443);
        let by_port = |p| Key::v4(0x8001, 6, 0x6440_0009, 0xcb00_710b, 443, p);
        let (est, assured) = (state::ESTABLISHED, flag::ASSURED | flag::LIBERAL);
        let old = ct.insert_nat(&k, &by_port(1024), est, assured, 0).unwrap();
        let fp = fingerprint(ct.entry(old).unwrap());
        assert_eq!(ct.flush(None), 1);
        let new = ct.insert_nat(&k, &by_port(1025), est, assured, 0).unwrap();
        assert_eq!(new, old, "the same entry of the table");
        assert_ne!(fingerprint(ct.entry(new).unwrap()), fp);
    }
}
