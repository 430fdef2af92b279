//! Stages `firewall::egress` and `firewall::ingress`: security groups with connection tracking.
//!
//! Reads: `PortEntry::firewall` (the port's compiled groups, absent when port security is off),
//! the core's [`Conntrack`] table.
//! Writes: connection entries (created, advanced, cut).
//! Next: `Continue` (egress) / unchanged output (ingress), `Handoff` to the core that owns the
//! connection, or a drop.
//! Drops: `firewall.egress_denied`, `firewall.ingress_denied` (no rule allows a new
//! connection), `firewall.revoked` (a rule that allowed the connection is gone),
//! `conntrack.invalid` (not a valid packet of a tracked connection, e.g. a TCP segment out of
//! window, an ACK with no connection, an ICMP error about nothing we track), `conntrack.full`,
//! `conntrack.fragment` (a later fragment: nothing to track it by).
//!
//! As Neutron's OVS firewall: egress rules are judged where the frame enters from the instance,
//! ingress rules where it is about to leave towards an instance (after switching and routing),
//! each in the conntrack zone of that instance port. ARP, IPv6 Neighbor Discovery and MLD,
//! DHCP client requests and DHCP replies always pass. A port whose groups are stateless is
//! matched packet by packet against its rules, with no tracking. Frames the switch answers
//! itself (`Reply`: gateway ARP/echo, ICMP errors the router builds) go back to the instance
//! without an ingress check: they answer what the instance sent.
use super::conntrack::flow::{self, Flow, Kind};
use super::conntrack::{flag, state, tcp, Conntrack, Key, TcpPeer};
use super::{flowcache, Batch, CoreState, Next, Tracer, BURST};
use crate::counters::{BatchCounters, DropReason};
use crate::packet::PacketBuf;
use crate::tables::secgroup::PortFirewall;
use crate::tables::Tables;
use crate::trace;

/// Where a handed-off packet resumes on its owner core.
pub const STAGE_EGRESS: u8 = 0;
pub const STAGE_INGRESS: u8 = 1;
/// Hand-off stage of centralized SNAT: the router stage again, on the core that owns the
/// translation (the `u16` of `Next::Handoff` is then the router interface it arrived on).
pub const STAGE_ROUTE: u8 = 2;

/// Fragments of datagrams whose first fragment was judged, per core: later fragments carry no
/// transport header, so they follow the first one's verdict (as OVS and VPP treat them),
/// looked up by zone, addresses, protocol and IP identification. Direct-mapped; an entry lives
/// [`FRAG_MS`]. A first fragment handed to another core leaves a note here, so the later ones
/// follow it there, behind it in the same ring. Centralized SNAT keeps its own notes here too,
/// in its own zone, with the address the first fragment was translated to.
#[derive(Debug)]
pub struct FragCache {
    slots: Vec<FragEntry>,
}

#[derive(Debug, Clone, Copy, Default)]
struct FragEntry {
    key: Key,
    id: u32,
    expires: u32,
    /// [`FRAG_HERE`], or the core the first fragment went to.
    to: u16,
    used: bool,
    /// Centralized SNAT: the address the first fragment was translated to (else 0).
    addr: u32,
}

const FRAG_SLOTS: usize = 1024;
/// How long the fragments of one datagram may trail its first fragment.
pub const FRAG_MS: u32 = 5000;
pub(crate) const FRAG_HERE: u16 = u16::MAX;

impl Default for FragCache {
    fn default() -> Self {
        FragCache {
            slots: vec![FragEntry::default(); FRAG_SLOTS],
        }
    }
}

impl FragCache {
    #[inline]
    fn slot(k: &Key, id: u32) -> usize {
        ((k.hash() ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize) & (FRAG_SLOTS - 1)
    }

    /// The fragment key: ports dropped (later fragments have none).
    #[inline]
    fn key(k: &Key) -> Key {
        let mut k = *k;
        k.w[4] &= 0xffff_ffff;
        k
    }

    /// Notes that the first fragment of datagram `id` of `k` (its ports are dropped) was
    /// let through here ([`FRAG_HERE`]) or went to core `to`; `addr`: what SNAT translated it
    /// to.
    pub(crate) fn insert(&mut self, k: &Key, id: u32, to: u16, addr: u32, now: u32) {
        let k = Self::key(k);
        if let Some(e) = self.slots.get_mut(Self::slot(&k, id)) {
            *e = FragEntry {
                key: k,
                id,
                expires: now.wrapping_add(FRAG_MS),
                to,
                used: true,
                addr,
            };
        }
    }

    /// What [`FragCache::insert`] noted for datagram `id` of `k`, if it is still fresh.
    pub(crate) fn lookup(&self, k: &Key, id: u32, now: u32) -> Option<(u16, u32)> {
        let k = Self::key(k);
        let e = self.slots.get(Self::slot(&k, id))?;
        (e.used && e.id == id && e.key == k && !super::conntrack::expired(e.expires, now))
            .then_some((e.to, e.addr))
    }
}

/// Per-core firewall state beside the conntrack table.
#[derive(Debug)]
pub struct FwCore {
    pub ct: Conntrack,
    /// This worker's index and how many workers share connections.
    pub core: u16,
    pub cores: u16,
    /// Per port: packets the firewall let through and dropped.
    pub per_port: Vec<[u64; 2]>,
    /// `now_ms` as conntrack's wrapping 32-bit clock.
    pub now: u32,
    /// Packets the ingress stage dropped after switching had already counted them as
    /// forwarded (so every packet can still be accounted for exactly once).
    pub ingress_drops: u64,
    /// Verdicts of first fragments, for the fragments that follow.
    pub frags: FragCache,
    /// What the egress check learnt about each packet of the batch, for the ingress check of
    /// the same packet (same batch index): its connection entry (its parsed flow is in
    /// [`Flows`]). Bit `i` of `seen` says slot `i` holds this batch's packet `i`; cleared by
    /// the ingress stage.
    entries: [u32; BURST],
    /// The connection key hash of each packet, computed before the judgements (0: none),
    /// and the candidate its index bucket pointed at (see `Conntrack::lookup_candidate`).
    hashes: [u64; BURST],
    cands: [u32; BURST],
    seen: u32,
    /// What the egress check of packet `i` found its entry in before the packet moved it on
    /// (bit `i` of `mirrored` says `before[i]` holds this batch's packet `i`): when the same
    /// connection's entry in the receiver's zone is in exactly that state, the ingress check
    /// of the same packet can only come to the same result, and copies it.
    before: [Before; BURST],
    mirrored: u32,
    /// Set around one judgement that leaves the fast path: the entry of the same packet in
    /// another zone (a hint), and the entry the judgement found or created.
    hint: u32,
    last_entry: u32,
    /// The direction of the last judgement's connection when it passed through the fast path
    /// as a plain ACK of an established connection or a datagram of a replied UDP flow
    /// ([`NO_PLAIN`]: it did not): what the flow cache may repeat.
    plain_dir: u8,
}

/// [`FwCore::plain_dir`] of a judgement the flow cache may not repeat.
const NO_PLAIN: u8 = u8::MAX;

/// Where one judgement's lookup starts: the entry of the same packet in another zone (a hint;
/// [`NO_ENTRY`]: none), the key's hash computed ahead (0: none) and the candidate its index
/// bucket pointed at (see `Conntrack::lookup_candidate`).
#[derive(Debug, Clone, Copy)]
struct Lookup {
    hint: u32,
    hash: u64,
    cand: u32,
}

/// No connection entry.
const NO_ENTRY: u32 = u32::MAX;

/// A connection entry's TCP tracking, state and flags before a packet moved it on, the
/// packet's direction in it, and what the packet left (see `FwCore::before`).
#[derive(Debug, Clone, Copy, Default)]
struct Before {
    tcp: [TcpPeer; 2],
    state: u8,
    flags: u8,
    dir: u8,
    after: After,
}

/// What one packet left in a connection entry: its TCP tracking, deadline and flags. Read
/// when the packet moved the entry on, not later: another packet of the same connection
/// further on in the batch may move the entry on again before the receiver's zone is judged.
/// `moved` false: the packet changed nothing (a retransmission TCP ignores), and the
/// receiver's entry keeps what it has, its deadline included.
#[derive(Debug, Clone, Copy, Default)]
struct After {
    tcp: [TcpPeer; 2],
    expires: u32,
    flags: u8,
    moved: bool,
}

impl After {
    #[inline(always)]
    fn of(e: &super::conntrack::Entry) -> After {
        After {
            tcp: e.tcp,
            expires: e.expires,
            flags: e.flags,
            moved: true,
        }
    }
}

impl Before {
    #[inline(always)]
    fn of(e: &super::conntrack::Entry, dir: u8) -> Before {
        Before {
            tcp: e.tcp,
            state: e.state,
            flags: e.flags,
            dir,
            after: After::default(),
        }
    }
}

impl FwCore {
    pub fn new(ct: Conntrack, core: u16, cores: u16) -> Self {
        FwCore {
            ct,
            core,
            cores: cores.max(1),
            per_port: Vec::new(),
            now: 0,
            ingress_drops: 0,
            frags: FragCache::default(),
            entries: [NO_ENTRY; BURST],
            hashes: [0; BURST],
            cands: [0; BURST],
            seen: 0,
            before: [Before::default(); BURST],
            mirrored: 0,
            hint: NO_ENTRY,
            last_entry: NO_ENTRY,
            plain_dir: NO_PLAIN,
        }
    }

    /// Packet `i` is no longer the frame its egress check judged (the router answered it
    /// with an ICMP error or an echo reply, back to the same port): the ingress check parses
    /// and judges it afresh instead of going on from that judgement.
    #[inline]
    pub fn forget(&mut self, i: usize) {
        self.seen &= !(1 << i);
        self.mirrored &= !(1 << i);
    }

    /// Records packet `i`'s entry state before its egress check moved it on and what the
    /// check left, for the ingress check of the same packet (see [`mirror`]).
    #[inline(always)]
    fn record_before(&mut self, i: usize, before: Before, after: After) {
        if let Some(b) = self.before.get_mut(i) {
            *b = Before { after, ..before };
            self.mirrored |= 1 << i;
        }
    }

    #[inline(always)]
    pub(crate) fn count(&mut self, port: u16, allowed: bool) {
        // Sized for every port when the worker starts (never grown here).
        if let Some(c) = self.per_port.get_mut(port as usize) {
            c[!allowed as usize] += 1;
        }
    }
}

/// The parsed flow of each packet of a batch, written in place by the firewall stages (kept
/// beside [`FwCore`], not in it, so a stage can read one while updating the other).
#[derive(Debug)]
pub struct Flows(pub [Flow; BURST]);

impl Default for Flows {
    fn default() -> Self {
        Flows([flow::MALFORMED; BURST])
    }
}

/// The security groups of port `port`, if it has any.
#[inline(always)]
fn port_fw(t: &Tables, port: u16) -> Option<&PortFirewall> {
    t.ports
        .get(port as usize)
        .and_then(|p| p.firewall.as_deref())
}

/// The hash a tracked frame's lookup will need, computed ahead with its index bucket
/// prefetched (0: the frame takes no lookup on the fast path).
#[inline(always)]
fn prefetch_lookup(ct: &Conntrack, fl: &Flow, fw: &PortFirewall) -> u64 {
    match fl.kind {
        Kind::Tcp(_) | Kind::Ports if fw.stateful && fl.frag.is_none() => {
            let h = fl.key.with_zone(fw.zone).hash();
            ct.touch(h);
            h
        }
        _ => 0,
    }
}

/// Once the index buckets of the batch's frames `which` (a bit each) have had time to
/// arrive, starts loading the entries they point at, and keeps each one as the frame's
/// candidate for its lookup.
#[inline(always)]
fn touch_candidates(f: &mut FwCore, mut which: u32) {
    while which != 0 {
        let i = which.trailing_zeros() as usize;
        which &= which - 1;
        if let (Some(&h), Some(c)) = (f.hashes.get(i), f.cands.get_mut(i)) {
            *c = if h != 0 { f.ct.touch_candidate(h) } else { 0 };
        }
    }
}

/// A decision about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Drop(DropReason),
    /// Another core owns the connection.
    Handoff(u16),
}

/// Egress rules for frames entering from an instance port.
#[inline(never)]
pub fn egress<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    let in_port = b.in_port;
    let Some(fw) = port_fw(t, in_port) else {
        return;
    };
    // Parse every frame and start loading its index bucket first, so the lookups of the
    // batch overlap.
    let mut parsed = 0u32;
    s.fw.mirrored = 0;
    for i in 0..b.len {
        if b.meta[i].next != Next::Continue {
            continue;
        }
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        let (Some(slot), f) = (s.fw_flows.0.get_mut(i), &mut s.fw) else {
            continue;
        };
        flow::parse_into(p.data(), slot);
        f.hashes[i] = prefetch_lookup(&f.ct, slot, fw);
        parsed |= 1 << i;
    }
    touch_candidates(&mut s.fw, parsed);

    for i in 0..b.len {
        if parsed & (1 << i) == 0 {
            continue;
        }
        let f = &mut s.fw;
        let lk = Lookup {
            hint: NO_ENTRY,
            hash: f.hashes[i],
            cand: f.cands[i],
        };
        let (o, entry) = judge::<T>(&s.fw_flows.0[i], fw, false, f, c, tr, i, t, lk);
        note(&mut s.flows, i, o, entry, f.plain_dir, in_port);
        if o == Outcome::Pass {
            f.entries[i] = entry;
            f.seen |= 1 << i;
            // The same connection's entry in the receiver's zone is needed a few stages on.
            if let Some(e) = f.ct.entry(entry) {
                f.ct.touch_entry(e.peer);
            }
        }
        apply(b, i, o, in_port, STAGE_EGRESS, &mut s.fw, c);
    }
}

/// Ingress rules for frames about to be sent to an instance port.
#[inline(never)]
pub fn ingress<B: PacketBuf, T: Tracer>(
    b: &mut Batch<B>,
    t: &Tables,
    s: &mut CoreState,
    c: &mut BatchCounters,
    tr: &mut T,
) {
    // First pass: parse what the egress check did not, and start loading each frame's index
    // bucket (frames with a peer hint had their entry prefetched by the egress check).
    let mut todo = 0u32;
    let hits = s.flows.hits;
    for i in 0..b.len {
        let Next::Output(port) = b.meta[i].next else {
            continue;
        };
        // The flow cache did this check already.
        if hits & (1 << i) != 0 {
            continue;
        }
        let Some(fw) = port_fw(t, port) else {
            continue;
        };
        let Some(p) = b.pkts[i].as_ref() else {
            continue;
        };
        let (Some(slot), f) = (s.fw_flows.0.get_mut(i), &mut s.fw) else {
            continue;
        };
        f.hashes[i] = 0;
        if b.meta[i].translated {
            // Translated by the router since its egress check (hairpin between two floating
            // IPs of this host): the receiver sees other addresses than the sender's zone
            // judged, so here it is another flow, parsed and judged from its own headers.
            f.seen &= !(1 << i);
        }
        if f.seen & (1 << i) != 0 {
            // Passed the egress check in this batch with its state recorded: most such frames
            // are settled here, through the peer link and the mirror, without the full judgement.
            if !T::ON && f.mirrored & (1 << i) != 0 && fw.stateful {
                let (hint, key) = (f.entries[i], slot.key.with_zone(fw.zone));
                if let Some((idx, dir)) = f.ct.peer_lookup(hint, &key, f.now) {
                    if mirror(f, i, idx, dir, fw.version) {
                        f.count(port, true);
                        s.flows.note_ct(i, idx, dir, flowcache::Track::Firewall);
                        s.flows.note_fw(i, port);
                        continue;
                    }
                }
            }
            todo |= 1 << i;
            continue;
        }
        todo |= 1 << i;
        flow::parse_into(p.data(), slot);
        f.hashes[i] = prefetch_lookup(&f.ct, slot, fw);
    }
    let fresh = todo & !s.fw.seen;
    touch_candidates(&mut s.fw, fresh);
    for i in 0..b.len {
        if todo & (1 << i) == 0 {
            continue;
        }
        let Next::Output(port) = b.meta[i].next else {
            continue;
        };
        let Some(fw) = port_fw(t, port) else {
            continue;
        };
        let f = &mut s.fw;
        // Judged on its way out of an instance in this batch: parsed already, and its entry
        // there is a hint to this zone's.
        let hint = if f.seen & (1 << i) != 0 {
            f.entries[i]
        } else {
            NO_ENTRY
        };
        let lk = Lookup {
            hint,
            hash: f.hashes[i],
            cand: f.cands[i],
        };
        let (o, entry) = judge::<T>(&s.fw_flows.0[i], fw, true, f, c, tr, i, t, lk);
        note(&mut s.flows, i, o, entry, f.plain_dir, port);
        if o == Outcome::Pass && b.meta[i].translated {
            // It came through a floating IP: the connection lives as long as that does.
            if let Some(e) = f.ct.entry_mut(entry) {
                e.nat = fw.nat;
            }
        }
        if o == Outcome::Pass {
            s.fw.count(port, true);
            continue;
        }
        if let Outcome::Drop(_) = o {
            s.fw.ingress_drops += 1;
        }
        apply(b, i, o, port, STAGE_INGRESS, &mut s.fw, c);
    }
    s.fw.seen = 0;
    s.fw.mirrored = 0;
}

/// Tells the flow cache what one judgement did for packet `i` at `port`: a pass through
/// the fast path as a plain ACK of established connection `entry` (direction `plain_dir`), or
/// as a datagram of its replied UDP flow (or of its unreplied one, one way), is repeatable,
/// any other pass is not.
#[inline(always)]
fn note(fc: &mut flowcache::FlowCache, i: usize, o: Outcome, entry: u32, plain_dir: u8, port: u16) {
    if o != Outcome::Pass {
        return;
    }
    if plain_dir == NO_PLAIN {
        fc.spoil(i);
    } else {
        fc.note_ct(i, entry, plain_dir, flowcache::Track::Firewall);
        fc.note_fw(i, port);
    }
}

#[inline(always)]
fn apply<B: PacketBuf>(
    b: &mut Batch<B>,
    i: usize,
    o: Outcome,
    port: u16,
    stage: u8,
    f: &mut FwCore,
    c: &mut BatchCounters,
) {
    match o {
        Outcome::Pass => {
            if stage == STAGE_EGRESS {
                f.count(port, true);
            }
        }
        Outcome::Drop(r) => {
            f.count(port, false);
            b.drop_pkt(i, r, c);
        }
        Outcome::Handoff(core) => {
            b.meta[i].next = Next::Handoff(core, stage, port);
        }
    }
}

/// Whether a flooded copy (broadcast, multicast, unknown unicast) may go to an instance port:
/// such traffic opens no connection, so it is matched against the port's ingress rules alone.
pub fn flood_allowed(t: &Tables, port: u16, f: &Flow) -> bool {
    let Some(fw) = port_fw(t, port) else {
        return true;
    };
    match f.kind {
        Kind::Bypass(_) => true,
        Kind::Nd(t) if nd_allowed(true, t) => true,
        Kind::Malformed | Kind::Fragment => false,
        _ => {
            let (k, v6) = (f.key, f.key.is_v6());
            fw.allows(true, v6, k.proto(), f.port_key, k.src128())
                .is_some()
        }
    }
}

/// The ICMPv6 types security groups always allow, as Neutron's OVS firewall does: from the
/// instance MLD reports, router and neighbor solicitations and advertisements; towards it MLD
/// queries, router advertisements and neighbor solicitations and advertisements.
#[inline]
fn nd_allowed(ingress: bool, t: u8) -> bool {
    match t {
        130 | 131 | 132 | 143 | 135 | 136 => true,
        133 => !ingress,
        134 => ingress,
        _ => false,
    }
}

/// The port key rules match a connection by, from its original key (revalidation).
#[inline]
fn rule_port_key(k: &Key) -> u16 {
    match k.proto() {
        super::conntrack::PROTO_ICMP => 8 << 8,
        super::conntrack::PROTO_ICMPV6 => 128 << 8,
        _ => k.dport(),
    }
}

/// Whether the current rules still allow a tracked connection, of key `k` (the version it
/// was admitted under differs from the port's).
#[inline]
pub fn still_allowed(fw: &PortFirewall, k: &Key, e: &super::conntrack::Entry) -> bool {
    // Through a floating IP the port no longer has (or has changed).
    if e.nat != 0 && e.nat != fw.nat {
        return false;
    }
    let ingress = e.flags & flag::INGRESS != 0;
    let remote = if ingress { k.src128() } else { k.dst128() };
    fw.allows(ingress, k.is_v6(), k.proto(), rule_port_key(k), remote)
        .is_some()
}

/// Sweeps part of the table: expiry, and connections whose rules changed are re-checked (cut
/// when no rule allows them any more).
pub fn sweep(t: &Tables, f: &mut FwCore, budget: usize) {
    let now = f.now;
    f.ct.sweep(now, budget, |k, e| {
        let zone = e.zone();
        // A router's translations (centralized SNAT): only their timeouts end them.
        if crate::tables::router::is_snat_zone(zone) {
            return Some(e.policy);
        }
        // A zone is its port's index + 1.
        let fw = zone.checked_sub(1).and_then(|p| port_fw(t, p));
        match fw {
            Some(fw) if fw.version == e.policy => Some(e.policy),
            Some(fw) if still_allowed(fw, k, e) => Some(fw.version),
            _ => None,
        }
    });
}

/// Judges one frame for `fw`'s port in one direction: the common case inline, the rest out
/// of line. Returns the decision and the connection entry it came from ([`NO_ENTRY`]: none).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn judge<T: Tracer>(
    fl: &Flow,
    fw: &PortFirewall,
    ingress: bool,
    f: &mut FwCore,
    c: &mut BatchCounters,
    tr: &mut T,
    i: usize,
    t: &Tables,
    lk: Lookup,
) -> (Outcome, u32) {
    f.plain_dir = NO_PLAIN;
    if !T::ON && fl.frag.is_none() {
        if let Some(done) = fast_path(fl, fw, f, i, lk) {
            return done;
        }
    }
    f.hint = lk.hint;
    f.last_entry = NO_ENTRY;
    let o = judge_general(fl, fw, ingress, f, c, tr, i, t);
    f.hint = NO_ENTRY;
    (o, f.last_entry)
}

/// Judges one frame, any frame; fragments follow their first fragment.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn judge_general<T: Tracer>(
    fl: &Flow,
    fw: &PortFirewall,
    ingress: bool,
    f: &mut FwCore,
    c: &mut BatchCounters,
    tr: &mut T,
    i: usize,
    t: &Tables,
) -> Outcome {
    let Some(id) = fl.frag else {
        return judge_flow(fl, fw, ingress, f, c, tr, i, t);
    };
    let key = fl.key.with_zone(fw.zone);
    if fl.kind == Kind::Fragment {
        let o = match f.frags.lookup(&key, id, f.now).map(|(to, _)| to) {
            Some(FRAG_HERE) => Outcome::Pass,
            Some(core) if core != f.core => Outcome::Handoff(core),
            Some(_) => Outcome::Pass,
            None => Outcome::Drop(DropReason::ConntrackFragment),
        };
        trace!(
            tr,
            i,
            "firewall",
            "fragment id {id} of {key}: {}",
            match o {
                Outcome::Pass => "its first fragment passed: allowed".to_string(),
                Outcome::Handoff(core) =>
                    format!("its first fragment went to core {core}: hand off"),
                Outcome::Drop(_) => "no first fragment was judged: drop".to_string(),
            }
        );
        return o;
    }
    let o = judge_flow(fl, fw, ingress, f, c, tr, i, t);
    match o {
        Outcome::Pass => f.frags.insert(&key, id, FRAG_HERE, 0, f.now),
        Outcome::Handoff(core) => f.frags.insert(&key, id, core, 0, f.now),
        Outcome::Drop(_) => {}
    }
    o
}

/// The connection `key` belongs to: through the peer hint of the same packet's entry in
/// another zone when it holds, else by lookup (with the hash computed ahead, if any).
#[inline(always)]
fn find(
    ct: &mut Conntrack,
    key: &Key,
    hint: u32,
    hash: u64,
    cand: u32,
    now: u32,
) -> Option<(u32, u8)> {
    if hint != NO_ENTRY {
        if let Some(h) = ct.peer_lookup(hint, key, now) {
            return Some(h);
        }
    }
    if hash != 0 {
        ct.lookup_candidate(key, hash, cand, now)
    } else {
        ct.lookup(key, now)
    }
}

/// Opens a router's translation (centralized SNAT) for the packet of `kind` whose key is `k`,
/// answered with key `reply`: tracked liberally (no window checks: the router is no
/// firewall), in the state its first packet puts it in, for the deadline.
pub(crate) fn open_translation(
    ct: &mut Conntrack,
    k: &Key,
    reply: &Key,
    kind: &Kind,
    now: u32,
) -> Option<u32> {
    let (first, pickup) = match kind {
        Kind::Tcp(seg) if tcp::opens(seg.flags) => (state::SYN_SENT, false),
        Kind::Tcp(_) => (state::ESTABLISHED, true),
        _ => (state::UNREPLIED, false),
    };
    let idx = ct.insert_nat(k, reply, first, flag::LIBERAL, now)?;
    if let (Kind::Tcp(seg), Some(e)) = (kind, ct.entry_mut(idx)) {
        if pickup {
            tcp::pick_up(&mut e.tcp, seg);
        } else {
            tcp::open(&mut e.tcp, seg);
        }
    }
    if pickup {
        ct.assure(idx);
    }
    Some(idx)
}

/// Moves a router's translation on by one packet in direction `dir` (state and deadline).
pub(crate) fn track_translation(ct: &mut Conntrack, idx: u32, dir: u8, kind: &Kind, now: u32) {
    let _ = advance(ct, idx, dir, kind, NO_ENTRY, now);
}

/// What one packet did to its tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advanced {
    /// Moved to this state (possibly the same).
    To(u8),
    /// A retransmission TCP ignores, in this state: nothing changed.
    Ignored(u8),
    /// Not valid for the connection in this state.
    Invalid(u8),
}

/// Moves connection `idx` on by one packet of `kind` in direction `dir`: TCP tracking (or
/// replied for the other protocols), the reply flag, assurance, the deadline, and the peer
/// link to the same packet's entry in another zone (`hint`).
#[inline(always)]
fn advance(ct: &mut Conntrack, idx: u32, dir: u8, kind: &Kind, hint: u32, now: u32) -> Advanced {
    let Some(e) = ct.entry_mut(idx) else {
        return Advanced::Invalid(state::FREE);
    };
    let st = e.state;
    let next = match kind {
        Kind::Tcp(seg) => {
            match tcp::track(st, dir, &mut e.tcp, seg, e.flags & flag::LIBERAL != 0) {
                tcp::Verdict::Ok(n) => n,
                tcp::Verdict::Ignored => return Advanced::Ignored(st),
                tcp::Verdict::Invalid => return Advanced::Invalid(st),
            }
        }
        _ if dir == 1 => state::REPLIED,
        _ => st,
    };
    if dir == 1 {
        e.flags |= flag::SEEN_REPLY;
    }
    let assure =
        e.flags & flag::ASSURED == 0 && (next == state::ESTABLISHED || next == state::REPLIED);
    let peer = e.peer;
    ct.set_state(idx, next, now);
    if assure {
        ct.assure(idx);
    }
    if hint != NO_ENTRY && peer != hint {
        ct.link_peers(hint, idx);
    }
    Advanced::To(next)
}

/// The common case, small enough to stay in registers: a TCP or UDP packet of a tracked
/// connection admitted under the port's current rules, on the core that owns it. Anything
/// else (new connections, ICMP, rule changes, hand-offs, tracing) returns `None` having
/// changed nothing, and goes the general way ([`judge_flow`]).
#[inline(always)]
fn fast_path(
    fl: &Flow,
    fw: &PortFirewall,
    f: &mut FwCore,
    i: usize,
    lk: Lookup,
) -> Option<(Outcome, u32)> {
    let (opens, plain_ack) = match fl.kind {
        Kind::Tcp(seg) => (
            tcp::opens(seg.flags),
            seg.flags & (tcp::FIN | tcp::SYN | tcp::RST | tcp::ACK) == tcp::ACK,
        ),
        Kind::Ports => (false, false),
        _ => return None,
    };
    if !fw.stateful {
        return None;
    }
    let key = fl.key.with_zone(fw.zone);
    if f.cores > 1 && (key.owner_hash() % f.cores as u64) as u16 != f.core {
        return None;
    }
    let (hint, now) = (lk.hint, f.now);
    let (idx, dir) = find(&mut f.ct, &key, hint, lk.hash, lk.cand, now)?;
    if plain_ack {
        // Nearly all traffic: an ACK of an established connection. One borrow of the entry,
        // no state change (so no gauge, list or assurance to update).
        if let Kind::Tcp(seg) = fl.kind {
            let ttl = f.ct.timeouts.tcp[state::ESTABLISHED as usize];
            let e = f.ct.entry_mut(idx)?;
            const KEEP: u8 = flag::ASSURED;
            if e.policy == fw.version && e.state == state::ESTABLISHED && e.flags & KEEP != 0 {
                let before = Before::of(e, dir);
                if e.flags & flag::LIBERAL == 0 && !tcp::plain_ack_in_window(dir, &mut e.tcp, &seg)
                {
                    return Some((Outcome::Drop(DropReason::ConntrackInvalid), NO_ENTRY));
                }
                e.expires = now.wrapping_add(ttl);
                e.flags |= (dir & 1) * flag::SEEN_REPLY;
                let (peer, after) = (e.peer, After::of(e));
                if hint == NO_ENTRY {
                    f.record_before(i, before, after);
                } else if peer != hint {
                    f.ct.link_peers(hint, idx);
                }
                f.plain_dir = dir;
                return Some((Outcome::Pass, idx));
            }
        }
    }
    let e = f.ct.entry(idx)?;
    if e.policy != fw.version || (opens && matches!(e.state, state::TIME_WAIT | state::CLOSE)) {
        return None;
    }
    let before = Before::of(e, dir);
    let moved = advance(&mut f.ct, idx, dir, &fl.kind, hint, now);
    match moved {
        Advanced::Invalid(_) => {
            return Some((Outcome::Drop(DropReason::ConntrackInvalid), NO_ENTRY))
        }
        // Moved on without a change of state by a connection already assured (a
        // retransmitted handshake, a UDP reply): the receiver's zone may mirror it.
        Advanced::To(st) | Advanced::Ignored(st)
            if hint == NO_ENTRY && st == before.state && before.flags & flag::ASSURED != 0 =>
        {
            if let Some(e) = f.ct.entry(idx) {
                let after = match moved {
                    Advanced::To(_) => After::of(e),
                    _ => After::default(),
                };
                f.record_before(i, before, after)
            }
        }
        _ => {}
    }
    // A datagram of an assured UDP flow that was and stays replied changed nothing but the
    // deadline (and the reply flag, already set), nor did one more datagram of a flow not
    // replied yet, in its original direction (a one-way stream): the flow cache may repeat
    // either, as it repeats a plain ACK.
    if fl.key.proto() == super::conntrack::PROTO_UDP
        && moved == Advanced::To(before.state)
        && ((before.state == state::REPLIED && before.flags & flag::ASSURED != 0)
            || (before.state == state::UNREPLIED && dir == 0))
    {
        f.plain_dir = dir;
    }
    Some((Outcome::Pass, idx))
}

/// The ingress check of packet `i` through entry `idx` (direction `dir`), whose peer in the
/// sender's zone the egress check just passed, without a change of state, from the state
/// [`FwCore::before`] recorded: when this entry is in exactly that state (same connection
/// state and TCP tracking, same liberal setting, assured) and admitted under the port's
/// current rules, the tracking of the same packet here can only end where it ended there, so
/// what the egress check left is copied instead of computed again (`true`: passed). `false`:
/// not so, judge it in full. What it left, not the sender's entry as it is now: a later
/// packet of the batch (one that went elsewhere, or was dropped on the way) may have moved
/// that on since.
#[inline(always)]
fn mirror(f: &mut FwCore, i: usize, idx: u32, dir: u8, version: u32) -> bool {
    let Some(&b) = f.before.get(i) else {
        return false;
    };
    let After {
        tcp,
        expires,
        flags,
        moved,
    } = b.after;
    let Some(e) = f.ct.entry_mut(idx) else {
        return false;
    };
    const SAME: u8 = flag::LIBERAL | flag::ASSURED;
    if dir != b.dir
        || e.policy != version
        || e.state != b.state
        || e.flags & flag::ASSURED == 0
        || (e.flags ^ b.flags) & SAME != 0
        || e.tcp[0] != b.tcp[0]
        || e.tcp[1] != b.tcp[1]
    {
        return false;
    }
    if moved {
        e.tcp = tcp;
        e.expires = expires;
        e.flags |= flags & flag::SEEN_REPLY;
    }
    true
}

/// Judges a parsed frame (not a later fragment).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn judge_flow<T: Tracer>(
    fl: &Flow,
    fw: &PortFirewall,
    ingress: bool,
    f: &mut FwCore,
    c: &mut BatchCounters,
    tr: &mut T,
    i: usize,
    t: &Tables,
) -> Outcome {
    let dir_name = if ingress { "ingress" } else { "egress" };
    let port_name = if T::ON {
        (fw.zone as usize)
            .checked_sub(1)
            .and_then(|p| t.ports.get(p))
            .map_or("?", |p| p.name.as_str())
    } else {
        ""
    };
    let denied = if ingress {
        DropReason::FirewallIngressDenied
    } else {
        DropReason::FirewallEgressDenied
    };
    let stateless = |fl: &Flow, tr: &mut T| -> Outcome {
        let k = fl.key;
        let remote = if ingress { k.src128() } else { k.dst128() };
        match fw.allows(ingress, k.is_v6(), k.proto(), fl.port_key, remote) {
            Some(rules) => {
                trace!(
                    tr,
                    i,
                    "firewall",
                    "port {port_name} {dir_name}: {} allowed by rule {} (stateless)",
                    k,
                    rules.join(", ")
                );
                Outcome::Pass
            }
            None => {
                trace!(
                    tr,
                    i,
                    "firewall",
                    "port {port_name} {dir_name}: {} matches no rule: drop",
                    k
                );
                Outcome::Drop(denied)
            }
        }
    };
    match fl.kind {
        Kind::Bypass(why) => {
            trace!(
                tr,
                i,
                "firewall",
                "port {port_name} {dir_name}: {why}, always allowed"
            );
            return Outcome::Pass;
        }
        Kind::Nd(t) if nd_allowed(ingress, t) => {
            trace!(
                tr,
                i,
                "firewall",
                "port {port_name} {dir_name}: ICMPv6 type {t} (neighbor discovery / MLD), always allowed this way"
            );
            return Outcome::Pass;
        }
        // Router advertisements from an instance, solicitations towards one, redirects: only
        // if a rule says so.
        Kind::Nd(_) => return stateless(fl, tr),
        Kind::Malformed => {
            trace!(
                tr,
                i,
                "firewall",
                "port {port_name} {dir_name}: malformed transport header: drop"
            );
            return Outcome::Drop(DropReason::ConntrackInvalid);
        }
        Kind::Fragment => {
            trace!(
                tr,
                i,
                "firewall",
                "port {port_name} {dir_name}: later fragment, not reassembled: drop"
            );
            return Outcome::Drop(DropReason::ConntrackFragment);
        }
        Kind::IcmpOther => return stateless(fl, tr),
        _ if !fw.stateful => return stateless(fl, tr),
        _ => {}
    }
    // The connection this frame belongs to (an ICMP error: the one whose packet it quotes).
    let key = match fl.kind {
        Kind::Error(inner) => inner.with_zone(fw.zone),
        _ => fl.key.with_zone(fw.zone),
    };
    if f.cores > 1 {
        let owner = (key.owner_hash() % f.cores as u64) as u16;
        if owner != f.core {
            trace!(
                tr,
                i,
                "firewall",
                "port {port_name} {dir_name}: {key} belongs to core {owner}: hand off"
            );
            return Outcome::Handoff(owner);
        }
    }
    let now = f.now;
    let ct = &mut f.ct;
    if let Kind::Error(_) = fl.kind {
        return match ct.lookup(&key, now) {
            Some(_) => {
                ct.stats.related += 1;
                c.event(crate::counters::Event::ConntrackRelated);
                trace!(
                    tr,
                    i,
                    "firewall",
                    "port {port_name} {dir_name}: ICMP error related to {key}: allowed"
                );
                Outcome::Pass
            }
            None => {
                trace!(tr, i, "firewall", "port {port_name} {dir_name}: ICMP error about {key}, which is not tracked: drop");
                Outcome::Drop(DropReason::ConntrackInvalid)
            }
        };
    }
    // The same connection in the sender's zone, found by the egress check of this very
    // packet: its peer link leads here without hashing.
    let hint = f.hint;
    let mut hit = find(ct, &key, hint, 0, 0, now);
    // A SYN on a closed connection opens a new one (judged by the rules again).
    if let (Some((idx, _)), Kind::Tcp(seg)) = (hit, fl.kind) {
        if tcp::opens(seg.flags)
            && ct
                .entry(idx)
                .is_some_and(|e| matches!(e.state, state::TIME_WAIT | state::CLOSE))
        {
            ct.remove(idx);
            hit = None;
        }
    }
    if let Some((idx, dir)) = hit {
        let Some(e) = ct.entry(idx) else {
            return Outcome::Drop(DropReason::ConntrackInvalid);
        };
        if e.policy != fw.version {
            // Judged by the connection's original key (this packet may be a reply).
            if ct
                .key_of(idx)
                .is_some_and(|orig| still_allowed(fw, &orig, e))
            {
                if let Some(e) = ct.entry_mut(idx) {
                    e.policy = fw.version;
                }
            } else {
                ct.remove(idx);
                ct.stats.cut += 1;
                trace!(tr, i, "firewall", "port {port_name} {dir_name}: {key}: the rule that allowed it is gone: cut, drop");
                return Outcome::Drop(DropReason::FirewallRevoked);
            }
        }
        let next = match advance(ct, idx, dir, &fl.kind, hint, now) {
            Advanced::To(n) => n,
            Advanced::Ignored(st) => {
                f.last_entry = idx;
                trace!(
                    tr,
                    i,
                    "firewall",
                    "port {port_name} {dir_name}: {key}: {} (ignored retransmission)",
                    state::NAMES[st as usize]
                );
                return Outcome::Pass;
            }
            Advanced::Invalid(st) => {
                if let Kind::Tcp(seg) = fl.kind {
                    trace!(tr, i, "firewall", "port {port_name} {dir_name}: {key}: flags {:#04x} seq {} ack {} not valid in {}: drop", seg.flags, seg.seq, seg.ack, state::NAMES[st as usize]);
                }
                return Outcome::Drop(DropReason::ConntrackInvalid);
            }
        };
        f.last_entry = idx;
        trace!(
            tr,
            i,
            "firewall",
            "port {port_name} {dir_name}: {key}: tracked, {} ({}), allowed",
            state::NAMES[next as usize],
            if dir == 0 { "original" } else { "reply" }
        );
        return Outcome::Pass;
    }
    // A new connection: only some packets may open one, and only if a rule allows it.
    let liberal = fw.liberal;
    let (opens, pickup) = match fl.kind {
        Kind::Tcp(seg) => {
            let o = tcp::opens(seg.flags);
            (
                o || (liberal && tcp::valid_flags(seg.flags) && seg.flags & tcp::RST == 0),
                !o,
            )
        }
        Kind::Echo(request) => (request, false),
        _ => (true, false),
    };
    if !opens {
        trace!(tr, i, "firewall", "port {port_name} {dir_name}: {key}: no connection, and this packet cannot open one: drop");
        return Outcome::Drop(DropReason::ConntrackInvalid);
    }
    let remote = if ingress { key.src128() } else { key.dst128() };
    let Some(rules) = fw.allows(ingress, key.is_v6(), key.proto(), fl.port_key, remote) else {
        trace!(
            tr,
            i,
            "firewall",
            "port {port_name} {dir_name}: new {key}: no rule of groups [{}] allows it: drop",
            fw.group_ids.join(", ")
        );
        return Outcome::Drop(denied);
    };
    let mut flags = if ingress { flag::INGRESS } else { 0 };
    if liberal {
        flags |= flag::LIBERAL;
    }
    let first = match fl.kind {
        Kind::Tcp(_) if pickup => state::ESTABLISHED,
        Kind::Tcp(_) => state::SYN_SENT,
        _ => state::UNREPLIED,
    };
    let Some(idx) = ct.insert(&key, first, flags, fw.version, now) else {
        trace!(
            tr,
            i,
            "firewall",
            "port {port_name} {dir_name}: new {key}: connection table full: drop"
        );
        return Outcome::Drop(DropReason::ConntrackFull);
    };
    if let (Kind::Tcp(seg), Some(e)) = (fl.kind, ct.entry_mut(idx)) {
        if pickup {
            tcp::pick_up(&mut e.tcp, &seg);
        } else {
            tcp::open(&mut e.tcp, &seg);
        }
    }
    if pickup {
        ct.assure(idx);
    }
    if hint != NO_ENTRY {
        ct.link_peers(hint, idx);
    }
    f.last_entry = idx;
    c.event(crate::counters::Event::ConntrackNew);
    trace!(
        tr,
        i,
        "firewall",
        "port {port_name} {dir_name}: new {key} ({}): allowed by rule {}, committed",
        state::NAMES[first as usize],
        rules.join(", ")
    );
    Outcome::Pass
}
