//! Connection tracking: one table per worker core, entries keyed by zone + 5-tuple.
//!
//! Design note.
//! - **Entries.** A connection is one [`Entry`] (64 bytes, one cache line: what a packet of
//!   it reads) in a slab allocated at start-up with the hard capacity; nothing is allocated
//!   afterwards. An IPv4 key fits the entry; an IPv6 connection's addresses (32 bytes) and
//!   the eviction list's links (8) live in arrays beside it. It is reachable from both
//!   directions: the index holds each entry twice, once under its original tuple and once
//!   under the reversed one, so a reply finds the same entry in one lookup. A translated
//!   connection (NAT, IPv4) is indexed under its translated reply tuple instead (kept beside
//!   the entry where an IPv6 one keeps its addresses): one entry, both translations.
//! - **Index.** Open addressing over cache-line buckets (as DPDK's `rte_hash` and the
//!   Swiss-table family): a [`Bucket`] is 64 bytes, 15 slots of `tag << 25 | link + 1` and an
//!   overflow count. A lookup reads one line, compares 7-bit tags and touches an entry only on
//!   a tag match, so a miss (every new connection) costs one cache line, not a chain walk. A
//!   full bucket spills into the next one and counts it, so lookups know when to go on; a
//!   removal retraces the same path and undoes the counts. Sized for at most 60 % load: at
//!   1,048,576 connections the index is 16 bytes per connection, 120 with the entry and
//!   the arrays beside it.
//! - **Zones.** The key carries a 16-bit zone. Security groups use one zone per instance port
//!   (OpenStack's iptables firewall does the same), so a connection between two instances of
//!   one host has an entry in each port's zone: egress rules are judged in the sender's zone,
//!   ingress rules in the receiver's.
//! - **Ownership across cores.** Each core owns its table and nobody else touches it: no
//!   lock, no atomic on the fast path. A connection belongs to the core chosen by a
//!   *symmetric* hash of its addresses, ports and protocol ([`Key::owner_hash`]; the zone is
//!   left out so both zones of a same-host connection have the same owner). Both directions
//!   hash alike, so they meet the same entry; a core that receives a packet it does not own
//!   hands it to the owner over a lock-free ring (`pipeline::handoff`), and the owner runs the
//!   rest of the pipeline. With one worker nothing is ever handed off.
//! - **Expiry without a stop-the-world scan.** Every entry has a deadline (per-state
//!   timeouts, Linux's defaults). [`Conntrack::sweep`] examines a bounded number of slab slots
//!   per call from a moving cursor (the worker calls it every few poll rounds, more when idle),
//!   and a lookup that finds an expired entry removes it on the spot.
//! - **Capacity.** When the slab is full a new connection evicts the oldest entry that is not
//!   yet *assured* (TCP handshake completed, or a reply seen), kept in insertion order on an
//!   intrusive list, when `evict_unestablished` is set (Linux's early drop); otherwise, or when
//!   every entry is assured, it is refused and counted. Lookups never allocate, so established
//!   connections keep flowing however full the table is.
pub mod flow;
pub mod tcp;

use vswitch_ffi::hugemem::HugeSlice;

#[cfg(test)]
mod tests;

/// End of a list.
const NIL: u32 = u32::MAX;

/// Slots of one index bucket (the 16th word is the overflow count).
const SLOTS: usize = 15;
/// A slot holds `link + 1` in its low bits (0: empty) and a hash tag above.
const LINK_BITS: u32 = 25;
const LINK_MASK: u32 = (1 << LINK_BITS) - 1;
/// The slot words of a bucket's match mask.
const SLOT_LANES: u32 = (1 << SLOTS) - 1;
/// Most connections one core's table can hold (links `idx << 1 | dir` must fit the slot).
pub const MAX_CAPACITY: usize = 1 << (LINK_BITS - 2);

/// One cache line of the index: words 0..=14 are slots, word 15 ([`OVERFLOW`]) counts the links
/// homed here or earlier that were placed further on (lookups continue while it is non-zero).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Bucket {
    w: [u32; SLOTS + 1],
}

const OVERFLOW: usize = SLOTS;
const TAG_MASK: u32 = !LINK_MASK;

/// The 7-bit tag of hash `h`, never 0 (so an empty slot never matches a tag).
#[inline(always)]
fn tag_of(h: u64) -> u32 {
    let t = (h >> 57) as u32;
    (t + (t == 0) as u32) << LINK_BITS
}

/// Connection states (`Entry::state`). TCP uses 1..=9 (RFC 793's states as Linux tracks them),
/// every other protocol [`UNREPLIED`] then [`REPLIED`].
pub mod state {
    pub const FREE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE_WAIT: u8 = 5;
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    pub const CLOSE: u8 = 8;
    /// Simultaneous open: a SYN seen from both sides.
    pub const SYN_SENT2: u8 = 9;
    /// UDP, ICMP echo, other protocols: only the original direction seen.
    pub const UNREPLIED: u8 = 10;
    /// ... and a reply seen.
    pub const REPLIED: u8 = 11;
    /// How many states (a gauge array's length).
    pub const COUNT: usize = 12;
    /// Counter names, indexed by state.
    pub const NAMES: [&str; COUNT] = [
        "free",
        "tcp_syn_sent",
        "tcp_syn_recv",
        "tcp_established",
        "tcp_fin_wait",
        "tcp_close_wait",
        "tcp_last_ack",
        "tcp_time_wait",
        "tcp_close",
        "tcp_syn_sent2",
        "unreplied",
        "replied",
    ];
}

/// `Entry::flags`.
pub mod flag {
    /// A packet in the reply direction was seen.
    pub const SEEN_REPLY: u8 = 1;
    /// The connection is established (handshake done or reply seen): never evicted.
    pub const ASSURED: u8 = 2;
    /// Opened towards the instance (admitted by ingress rules), else by egress rules.
    pub const INGRESS: u8 = 4;
    /// On the not-yet-assured list.
    pub const LISTED: u8 = 8;
    /// Tracked liberally (no TCP window checks).
    pub const LIBERAL: u8 = 16;
    /// Translated (NAT): replies arrive with their own key
    /// ([`Conntrack::reply_of`](super::Conntrack::reply_of)), not the original reversed.
    pub const NAT: u8 = 32;
}

/// Protocol numbers the tracker treats specially.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// The 128-bit product of `a` and `b`, its halves folded together.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Zone + 5-tuple, IPv4 or IPv6, packed into five words: source address (two words, an IPv4
/// address in the low 32 bits of the first), destination address, then source port (bits
/// 48..64), destination port (32..48), zone (16..32), protocol (8..16) and IPv6 flag (0..8).
/// ICMP echo uses the identifier as both ports.
#[derive(Debug, Clone, Copy, Eq, Default)]
pub struct Key {
    pub w: [u64; 5],
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.w.hash(state)
    }
}

impl PartialEq for Key {
    /// Five word compares folded into one test (the derived one calls `memcmp`).
    #[inline(always)]
    fn eq(&self, o: &Key) -> bool {
        let a = &self.w;
        let b = &o.w;
        ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4])) == 0
    }
}

impl Key {
    #[inline(always)]
    fn meta(sport: u16, dport: u16, zone: u16, proto: u8, v6: bool) -> u64 {
        (sport as u64) << 48
            | (dport as u64) << 32
            | (zone as u64) << 16
            | (proto as u64) << 8
            | v6 as u64
    }

    #[inline(always)]
    pub fn v4(zone: u16, proto: u8, src: u32, dst: u32, sport: u16, dport: u16) -> Key {
        Key {
            w: [
                src as u64,
                0,
                dst as u64,
                0,
                Self::meta(sport, dport, zone, proto, false),
            ],
        }
    }

    #[inline(always)]
    pub fn v6(zone: u16, proto: u8, src: u128, dst: u128, sport: u16, dport: u16) -> Key {
        Key {
            w: [
                (src >> 64) as u64,
                src as u64,
                (dst >> 64) as u64,
                dst as u64,
                Self::meta(sport, dport, zone, proto, true),
            ],
        }
    }

    #[inline(always)]
    pub fn sport(&self) -> u16 {
        (self.w[4] >> 48) as u16
    }
    #[inline(always)]
    pub fn dport(&self) -> u16 {
        (self.w[4] >> 32) as u16
    }
    #[inline(always)]
    pub fn zone(&self) -> u16 {
        (self.w[4] >> 16) as u16
    }
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        (self.w[4] >> 8) as u8
    }
    #[inline(always)]
    pub fn is_v6(&self) -> bool {
        self.w[4] & 1 != 0
    }
    /// The source address as an IPv6-sized integer (an IPv4 address in the low 32 bits).
    #[inline(always)]
    pub fn src128(&self) -> u128 {
        if self.is_v6() {
            (self.w[0] as u128) << 64 | self.w[1] as u128
        } else {
            self.w[0] as u128
        }
    }
    #[inline(always)]
    pub fn dst128(&self) -> u128 {
        if self.is_v6() {
            (self.w[2] as u128) << 64 | self.w[3] as u128
        } else {
            self.w[2] as u128
        }
    }

    /// The same key in another zone.
    #[inline(always)]
    pub fn with_zone(mut self, zone: u16) -> Key {
        self.w[4] = self.w[4] & !(0xffff << 16) | (zone as u64) << 16;
        self
    }

    /// The key of the other direction.
    #[inline(always)]
    pub fn reverse(&self) -> Key {
        Key {
            w: [
                self.w[2],
                self.w[3],
                self.w[0],
                self.w[1],
                self.reverse_meta(),
            ],
        }
    }

    /// Hash of this direction (the index bucket): every input bit reaches every output bit
    /// (folded 64 x 64 -> 128-bit multiplies, as foldhash and aHash use: the high half folded
    /// into the low one carries every input bit both ways), since the bucket is taken from
    /// the low bits, the tag from the high ones, and ports sit in the high bits of the last
    /// word. An IPv4 key is two words (its addresses fit one), so it takes two multiplies in
    /// a row; an IPv6 key three independent ones and one to combine them. Either way a short
    /// dependency chain.
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        let w = &self.w;
        if !self.is_v6() {
            let a = fold(
                self.addr_word() ^ 0x243f_6a88_85a3_08d3,
                w[4] ^ 0x1319_8a2e_0370_7344,
            );
            return fold(a ^ 0xc0ac_29b7_c97c_50dd, 0x9216_d5d9_8979_fb1b);
        }
        let a = fold(w[0] ^ 0x243f_6a88_85a3_08d3, w[1] ^ 0x1319_8a2e_0370_7344);
        let b = fold(w[2] ^ 0xa409_3822_299f_31d0, w[3] ^ 0x082e_fa98_ec4e_6c89);
        let c = fold(w[4] ^ 0x4528_21e6_38d0_1377, 0xbe54_66cf_34e9_0c6c);
        fold(
            a ^ b.rotate_left(23) ^ 0xc0ac_29b7_c97c_50dd,
            c ^ 0x9216_d5d9_8979_fb1b,
        )
    }

    /// The addresses as one word, as an [`Entry`] keeps them: an IPv4 key's exactly (source
    /// in the high half), an IPv6 key's folded (a filter; the table keeps the full addresses
    /// beside the entry).
    #[inline(always)]
    fn addr_word(&self) -> u64 {
        let w = &self.w;
        if self.is_v6() {
            w[0] ^ w[1].rotate_left(16) ^ w[2].rotate_left(32) ^ w[3].rotate_left(48)
        } else {
            w[0] << 32 | w[2]
        }
    }

    /// The last word of the reversed key: ports swapped.
    #[inline(always)]
    fn reverse_meta(&self) -> u64 {
        let m = self.w[4];
        (m >> 48) << 32 | ((m >> 32) & 0xffff) << 48 | (m & 0xffff_ffff)
    }

    /// A hash both directions share and the zone does not change: which core owns the
    /// connection.
    #[inline(always)]
    pub fn owner_hash(&self) -> u64 {
        let m = self.w[4];
        // The two ports ordered, not XORed: equal ports (an ICMP echo's identifier is both)
        // must still move the hash, or centralized SNAT could not pick an identifier whose
        // replies a given core owns.
        let (p, q) = ((m >> 48) as u16, (m >> 32) as u16);
        let ports = ((p.min(q) as u64) << 16 | p.max(q) as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
        let a = self.w[0] ^ self.w[2];
        let b = self.w[1] ^ self.w[3];
        let mut h = (a ^ b.rotate_left(17) ^ ports ^ (m >> 8 & 0xff) << 56)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        h.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 32
    }

    /// Addresses for display.
    pub fn addrs(&self) -> (std::net::IpAddr, std::net::IpAddr) {
        if self.is_v6() {
            (
                std::net::Ipv6Addr::from(self.src128()).into(),
                std::net::Ipv6Addr::from(self.dst128()).into(),
            )
        } else {
            (
                std::net::Ipv4Addr::from(self.w[0] as u32).into(),
                std::net::Ipv4Addr::from(self.w[2] as u32).into(),
            )
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, d) = self.addrs();
        let p = match self.proto() {
            PROTO_TCP => "tcp".to_string(),
            PROTO_UDP => "udp".to_string(),
            PROTO_ICMP | PROTO_ICMPV6 => "icmp".to_string(),
            n => format!("proto {n}"),
        };
        write!(
            f,
            "zone {} {p} {s}:{} -> {d}:{}",
            self.zone(),
            self.sport(),
            self.dport()
        )
    }
}

/// What TCP tracking keeps per direction (Guido van Rooij's window tracking, as Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpPeer {
    /// Highest sequence number sent + 1 (seq + len).
    pub end: u32,
    /// Highest sequence number the peer's window allows (ack + window).
    pub maxend: u32,
    /// Largest window seen (after scaling).
    pub maxwin: u32,
    /// Window scale shift in force.
    pub scale: u8,
    /// Window-scale option offered in this side's SYN (255: none).
    pub wscale_opt: u8,
}

/// One tracked connection: one cache line. Its key (the original direction's, its first
/// packet's) is kept as the addresses in one word and the key's last word; an IPv6
/// connection's full addresses live beside the table (`Conntrack::v6`), and the eviction and
/// free lists' links too (`Conntrack::links`), so what every packet reads is one line.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Entry {
    /// [`Key::addr_word`] and the key's last word (ports, zone, protocol, IPv6 flag).
    addrs: u64,
    meta: u64,
    /// Deadline, milliseconds of the core's clock (wrapping).
    pub expires: u32,
    /// The security policy version that admitted it (see `tables::secgroup`).
    pub policy: u32,
    pub tcp: [TcpPeer; 2],
    /// The same connection's entry in another zone (between two instances of this host), a
    /// hint checked by key before use: the ingress check finds it without a second lookup.
    pub peer: u32,
    pub state: u8,
    pub flags: u8,
    /// The floating-IP epoch of the port ([`crate::tables::secgroup::PortFirewall::nat`])
    /// when a translated packet of this connection crossed this zone (0: none did): when the
    /// port's floating IPs change, such a connection is cut.
    pub nat: u16,
}

impl Entry {
    /// The zone of the connection.
    #[inline(always)]
    pub fn zone(&self) -> u16 {
        (self.meta >> 16) as u16
    }
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        (self.meta >> 8) as u8
    }
    /// The key as the entry keeps it (the folded addresses and the last word): which
    /// connection this entry holds.
    #[inline(always)]
    pub fn ident(&self) -> (u64, u64) {
        (self.addrs, self.meta)
    }
}

/// An entry's links on the not-yet-assured list, or on the free list (`next` only).
#[derive(Debug, Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

/// Timeouts in milliseconds per state, and per protocol family for the non-TCP states.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp: [u32; state::COUNT],
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
    pub generic: u32,
}

impl Timeouts {
    pub fn from_config(t: &vswitch_config::ConntrackTimeouts) -> Self {
        let ms = |s: u32| s.saturating_mul(1000);
        // Slots that are not TCP states get the generic timeout: never zero.
        let mut tcp = [ms(t.generic); state::COUNT];
        tcp[state::SYN_SENT as usize] = ms(t.tcp_syn_sent);
        tcp[state::SYN_SENT2 as usize] = ms(t.tcp_syn_sent);
        tcp[state::SYN_RECV as usize] = ms(t.tcp_syn_recv);
        tcp[state::ESTABLISHED as usize] = ms(t.tcp_established);
        tcp[state::FIN_WAIT as usize] = ms(t.tcp_fin_wait);
        tcp[state::CLOSE_WAIT as usize] = ms(t.tcp_close_wait);
        tcp[state::LAST_ACK as usize] = ms(t.tcp_last_ack);
        tcp[state::TIME_WAIT as usize] = ms(t.tcp_time_wait);
        tcp[state::CLOSE as usize] = ms(t.tcp_close);
        Timeouts {
            tcp,
            udp: ms(t.udp),
            udp_stream: ms(t.udp_stream),
            icmp: ms(t.icmp),
            generic: ms(t.generic),
        }
    }

    /// The idle timeout of a connection of protocol `proto` in state `st`.
    #[inline(always)]
    pub fn of(&self, proto: u8, st: u8) -> u32 {
        match proto {
            PROTO_TCP => self.tcp.get(st as usize).copied().unwrap_or(0),
            PROTO_UDP => {
                if st == state::REPLIED {
                    self.udp_stream
                } else {
                    self.udp
                }
            }
            PROTO_ICMP | PROTO_ICMPV6 => self.icmp,
            _ => self.generic,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::from_config(&vswitch_config::ConntrackTimeouts::default())
    }
}

/// Events a core's tracker counts (summed by the control side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Connections created.
    pub new: u64,
    /// New connections refused because the table was full.
    pub refused_full: u64,
    /// Not-yet-established connections evicted to make room.
    pub evicted: u64,
    /// Connections removed by their timeout.
    pub expired: u64,
    /// Connections removed because the rule that allowed them is gone.
    pub cut: u64,
    /// Packets related to a tracked connection (ICMP errors).
    pub related: u64,
    /// Connections removed by a flush (`vswitchctl conntrack flush`).
    pub flushed: u64,
}

/// A deadline has passed (wrapping milliseconds).
#[inline(always)]
pub fn expired(deadline: u32, now: u32) -> bool {
    (now.wrapping_sub(deadline) as i32) >= 0
}

/// One core's connection table.
pub struct Conntrack {
    /// All on (transparent) huge pages: lookups land anywhere in them.
    entries: HugeSlice<Entry>,
    buckets: HugeSlice<Bucket>,
    /// Per entry: list links, and what does not fit the entry: an IPv6 connection's
    /// addresses (source then destination, as [`Key::w`]), read only when the folded addresses
    /// and the rest of the key match, or a translated IPv4 connection's reply key
    /// ([`Key::addr_word`], last word; NAT does not apply to IPv6, so never both).
    links: HugeSlice<Links>,
    wide: HugeSlice<[u64; 4]>,
    mask: u64,
    free: u32,
    used: u32,
    /// Oldest and newest not-yet-assured entries.
    head: u32,
    tail: u32,
    cursor: u32,
    /// Translations created so far (wrapping): each one's birth serial.
    births: u32,
    pub timeouts: Timeouts,
    pub evict: bool,
    pub stats: CtStats,
    /// Live entries per state.
    pub by_state: [u32; state::COUNT],
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("capacity", &self.entries.len())
            .field("used", &self.used)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Conntrack {
    /// A table for `capacity` connections (at least 1), all memory allocated now.
    pub fn new(capacity: usize, timeouts: Timeouts, evict: bool) -> Self {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let entries = HugeSlice::new(capacity, Entry::default());
        let mut links = HugeSlice::new(
            capacity,
            Links {
                prev: NIL,
                next: NIL,
            },
        );
        for (i, l) in links.iter_mut().enumerate() {
            l.next = if i + 1 < capacity { i as u32 + 1 } else { NIL };
        }
        // Two links per connection at no more than 60 % of the slots.
        let nb = (2 * capacity)
            .div_ceil(SLOTS * 6 / 10)
            .next_power_of_two()
            .max(2);
        Conntrack {
            entries,
            buckets: HugeSlice::new(nb, Bucket::default()),
            links,
            wide: HugeSlice::new(capacity, [0; 4]),
            mask: nb as u64 - 1,
            free: 0,
            used: 0,
            head: NIL,
            tail: NIL,
            cursor: 0,
            births: 0,
            timeouts,
            evict,
            stats: CtStats::default(),
            by_state: [0; state::COUNT],
        }
    }

    /// A table with an index of exactly `buckets` (a power of two) buckets: tests use a
    /// crowded index to exercise overflow into neighbouring buckets.
    #[cfg(test)]
    pub(crate) fn with_buckets(capacity: usize, buckets: usize) -> Self {
        assert!(buckets.is_power_of_two() && 2 * capacity <= buckets * SLOTS);
        let mut t = Self::new(capacity, Timeouts::default(), false);
        t.buckets = HugeSlice::new(buckets, Bucket::default());
        t.mask = buckets as u64 - 1;
        t
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.used as usize
    }

    /// Whether `n` more connections could make this table evict one it holds (it evicts, and
    /// they would not all fit): a connection not yet established may then go while a batch
    /// runs.
    #[inline]
    pub fn may_evict_within(&self, n: usize) -> bool {
        self.evict && self.len() + n > self.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Bytes this table holds (entries, index, links and IPv6 addresses), for the
    /// memory-per-connection benchmark.
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Entry>()
            + self.buckets.len() * std::mem::size_of::<Bucket>()
            + self.links.len() * std::mem::size_of::<Links>()
            + self.wide.len() * std::mem::size_of::<[u64; 4]>()
    }

    /// Bytes on huge pages in the mappings of the entries and of the index (see
    /// [`HugeSlice::huge_bytes`]), for the start-up log.
    pub fn huge_bytes(&self) -> (Option<usize>, Option<usize>) {
        (self.entries.huge_bytes(), self.buckets.huge_bytes())
    }

    #[inline(always)]
    pub fn entry(&self, idx: u32) -> Option<&Entry> {
        self.entries.get(idx as usize)
    }

    #[inline(always)]
    pub fn entry_mut(&mut self, idx: u32) -> Option<&mut Entry> {
        self.entries.get_mut(idx as usize)
    }

    /// Two different entries at once (`None`: the same one, or one out of range).
    #[inline(always)]
    pub fn entries_pair_mut(&mut self, a: u32, b: u32) -> Option<[&mut Entry; 2]> {
        self.entries.get_disjoint_mut([a as usize, b as usize]).ok()
    }

    /// Starts loading what entry `idx` keeps beside the table (a translated connection's
    /// reply key, an IPv6 connection's addresses): a translation reads it on every packet.
    #[inline(always)]
    pub fn touch_wide(&self, idx: u32) {
        if let Some(w) = self.wide.get(idx as usize) {
            vswitch_ffi::hint::prefetch(w);
        }
    }

    /// Finds the connection `k` belongs to: (entry, direction 0 original / 1 reply). An
    /// expired entry found on the way is removed and not returned.
    #[inline]
    pub fn lookup(&mut self, k: &Key, now: u32) -> Option<(u32, u8)> {
        self.lookup_hashed(k, k.hash(), now)
    }

    /// Starts loading the index bucket of hash `h` (a batch computes every hash first, so the
    /// loads overlap instead of each lookup waiting for its own).
    #[inline(always)]
    pub fn touch(&self, h: u64) {
        if let Some(b) = self.buckets.get((h & self.mask) as usize) {
            vswitch_ffi::hint::prefetch(b);
        }
    }

    /// Starts loading the entry that the first tag match in hash `h`'s index bucket points
    /// at (most lookups find their connection there). Called once the bucket itself has had
    /// time to arrive ([`touch`](Self::touch) a pass earlier), so the entry loads of a batch
    /// overlap too instead of each lookup waiting for its own. Returns that candidate (its
    /// link + 1; 0: none) for [`lookup_candidate`](Self::lookup_candidate).
    #[inline(always)]
    pub fn touch_candidate(&self, h: u64) -> u32 {
        let Some(bucket) = self.buckets.get((h & self.mask) as usize) else {
            return 0;
        };
        let m = vswitch_ffi::hint::match_words(&bucket.w, TAG_MASK, tag_of(h)) & SLOT_LANES;
        if m == 0 {
            return 0;
        }
        let sl = bucket.w[m.trailing_zeros() as usize] & LINK_MASK;
        self.touch_entry((sl - 1) >> 1);
        sl
    }

    /// [`lookup_hashed`](Self::lookup_hashed), first trying the candidate that
    /// [`touch_candidate`](Self::touch_candidate) found for the same hash earlier in the batch,
    /// which saves scanning the bucket again when it holds: a live entry whose key is `k`
    /// (or `k` reversed, as the candidate's direction says) is the connection, since a key
    /// is in the table at most once. The batch may have changed the table since (an entry
    /// removed or its slot reused), so the candidate is only a hint, checked like one.
    #[inline(always)]
    pub fn lookup_candidate(&mut self, k: &Key, h: u64, cand: u32, now: u32) -> Option<(u32, u8)> {
        if let Some((idx, dir, e)) = cand.checked_sub(1).and_then(|l| self.linked(l, k)) {
            if e.state != state::FREE && !expired(e.expires, now) {
                return Some((idx, dir));
            }
        }
        self.lookup_hashed(k, h, now)
    }

    /// The entry index link `link` (`idx << 1 | dir`) leads to, if its key is `k` in that
    /// direction.
    #[inline(always)]
    fn linked(&self, link: u32, k: &Key) -> Option<(u32, u8, &Entry)> {
        let (idx, dir) = (link >> 1, (link & 1) as u8);
        let e = self.entries.get(idx as usize)?;
        self.is_key(idx, e, k, dir).then_some((idx, dir, e))
    }

    /// Whether entry `idx` (`e`) is the connection of key `k` in direction `dir` (1: `k` is
    /// its key reversed). An IPv4 key is compared whole in the entry; an IPv6 one there by
    /// its folded addresses first, then by the full ones.
    #[inline(always)]
    fn is_key(&self, idx: u32, e: &Entry, k: &Key, dir: u8) -> bool {
        let w = &k.w;
        let (addrs, meta) = if dir == 0 {
            (k.addr_word(), w[4])
        } else if e.flags & flag::NAT != 0 {
            // Only the translated reply key: the original reversed is not this connection.
            return !k.is_v6()
                && self
                    .wide
                    .get(idx as usize)
                    .is_some_and(|r| (r[0] ^ k.addr_word()) | (r[1] ^ w[4]) == 0);
        } else if k.is_v6() {
            (k.reverse().addr_word(), k.reverse_meta())
        } else {
            (w[2] << 32 | w[0], k.reverse_meta())
        };
        if (e.addrs ^ addrs) | (e.meta ^ meta) != 0 {
            return false;
        }
        if !k.is_v6() {
            return true;
        }
        let full = if dir == 0 {
            [w[0], w[1], w[2], w[3]]
        } else {
            [w[2], w[3], w[0], w[1]]
        };
        self.wide.get(idx as usize) == Some(&full)
    }

    /// The key replies of entry `idx` arrive with: its translated reply key, or its key
    /// reversed.
    pub fn reply_of(&self, idx: u32) -> Option<Key> {
        let k = self.key_of(idx)?;
        let e = self.entries.get(idx as usize)?;
        if e.flags & flag::NAT == 0 {
            return Some(k.reverse());
        }
        let r = self.wide.get(idx as usize)?;
        Some(Key {
            w: [r[0] >> 32, 0, r[0] & 0xffff_ffff, 0, r[1]],
        })
    }

    /// The key of entry `idx` (its original direction), if it is live.
    pub fn key_of(&self, idx: u32) -> Option<Key> {
        let e = self.entries.get(idx as usize)?;
        if e.state == state::FREE {
            return None;
        }
        let w = if e.meta & 1 != 0 && e.flags & flag::NAT == 0 {
            let a = self.wide.get(idx as usize)?;
            [a[0], a[1], a[2], a[3], e.meta]
        } else {
            [e.addrs >> 32, 0, e.addrs & 0xffff_ffff, 0, e.meta]
        };
        Some(Key { w })
    }

    /// Starts loading an entry (the other zone's entry of a connection, needed a few stages
    /// later): one cache line.
    #[inline(always)]
    pub fn touch_entry(&self, idx: u32) {
        if let Some(e) = self.entries.get(idx as usize) {
            vswitch_ffi::hint::prefetch(e);
        }
    }

    /// [`lookup`](Self::lookup) with the key's hash already computed.
    #[inline(always)]
    pub fn lookup_hashed(&mut self, k: &Key, h: u64, now: u32) -> Option<(u32, u8)> {
        let tag = tag_of(h);
        let mut b = (h & self.mask) as usize;
        for _ in 0..self.buckets.len() {
            let bucket = self.buckets.get(b)?;
            // The slots whose tag matches, as a bit mask (vector compares; the overflow word
            // is masked out).
            let mut m = vswitch_ffi::hint::match_words(&bucket.w, TAG_MASK, tag) & SLOT_LANES;
            while m != 0 {
                let j = m.trailing_zeros() as usize;
                m &= m - 1;
                if let Some((idx, dir, e)) = self.linked((bucket.w[j] & LINK_MASK) - 1, k) {
                    if expired(e.expires, now) {
                        self.stats.expired += 1;
                        self.remove(idx);
                        return None;
                    }
                    return Some((idx, dir));
                }
            }
            if bucket.w[OVERFLOW] == 0 {
                return None;
            }
            b = (b + 1) & self.mask as usize;
        }
        None
    }

    /// Puts `link` (hash `h`) into the index: the first free slot from its home bucket on.
    fn link(&mut self, h: u64, link: u32) {
        let v = tag_of(h) | (link + 1);
        let mut b = (h & self.mask) as usize;
        for _ in 0..self.buckets.len() {
            let bucket = &mut self.buckets[b];
            if let Some(sl) = bucket.w[..SLOTS].iter_mut().find(|s| **s == 0) {
                *sl = v;
                return;
            }
            bucket.w[OVERFLOW] += 1;
            b = (b + 1) & self.mask as usize;
        }
    }

    /// Takes `link` (hash `h`) out of the index, undoing the overflow counts on its way.
    fn unlink(&mut self, h: u64, link: u32) {
        let v = tag_of(h) | (link + 1);
        let mut b = (h & self.mask) as usize;
        for _ in 0..self.buckets.len() {
            let bucket = &mut self.buckets[b];
            if let Some(sl) = bucket.w[..SLOTS].iter_mut().find(|s| **s == v) {
                *sl = 0;
                return;
            }
            bucket.w[OVERFLOW] = bucket.w[OVERFLOW].saturating_sub(1);
            b = (b + 1) & self.mask as usize;
        }
    }

    /// The connection `k` through the peer hint of entry `idx` (its entry in another zone),
    /// without hashing: (entry, direction), or `None` when the hint does not hold (then look
    /// it up).
    #[inline(always)]
    pub fn peer_lookup(&self, idx: u32, k: &Key, now: u32) -> Option<(u32, u8)> {
        let p = self.entries.get(idx as usize)?.peer;
        let e = self.entries.get(p as usize)?;
        if e.state == state::FREE || expired(e.expires, now) {
            return None;
        }
        // The direction it can only be (a key that is its own reverse matches as original).
        let dir = ((e.addrs ^ k.addr_word()) | (e.meta ^ k.w[4]) != 0) as u8;
        self.is_key(p, e, k, dir).then_some((p, dir))
    }

    /// Records that `a` and `b` are one connection in two zones.
    #[inline]
    pub fn link_peers(&mut self, a: u32, b: u32) {
        if let Some(e) = self.entries.get_mut(a as usize) {
            e.peer = b;
        }
        if let Some(e) = self.entries.get_mut(b as usize) {
            e.peer = a;
        }
    }

    /// Creates a connection whose first packet had key `k`, in state `st`. When the table is
    /// full, evicts the oldest not-yet-assured entry if allowed, else refuses (`None`).
    pub fn insert(&mut self, k: &Key, st: u8, flags: u8, policy: u32, now: u32) -> Option<u32> {
        self.insert_with(k, None, st, flags, policy, now)
    }

    /// [`insert`](Self::insert) for a translated IPv4 connection: its replies arrive with key
    /// `reply` (e.g. source NAT of `k` = X:x -> D:d to G:g: replies are D:d -> G:g). One entry
    /// holds both translations; a lookup of either key finds it (direction 0 or 1), and the
    /// original reversed does not. Use [`lookup`](Self::lookup) of `reply` first to choose a
    /// free one.
    ///
    /// No security policy admits a translation, so its entry's `policy` holds a serial
    /// number of its birth instead: a new translation of the same connection (the old one
    /// expired, or was flushed, and a later packet picked it up again, possibly with another
    /// port) is another entry to whoever remembers the old one by key and policy (the flow
    /// cache's fingerprints).
    pub fn insert_nat(&mut self, k: &Key, reply: &Key, st: u8, flags: u8, now: u32) -> Option<u32> {
        if k.is_v6() || reply.is_v6() {
            return None;
        }
        self.births = self.births.wrapping_add(1);
        self.insert_with(k, Some(reply), st, flags | flag::NAT, self.births, now)
    }

    fn insert_with(
        &mut self,
        k: &Key,
        reply: Option<&Key>,
        st: u8,
        flags: u8,
        policy: u32,
        now: u32,
    ) -> Option<u32> {
        if self.free == NIL && !(self.evict && self.evict_oldest()) {
            self.stats.refused_full += 1;
            return None;
        }
        let idx = self.free;
        let l = self.links.get_mut(idx as usize)?;
        self.free = l.next;
        l.next = NIL;
        let wide = match reply {
            Some(r) => Some([r.addr_word(), r.w[4], 0, 0]),
            None if k.is_v6() => Some([k.w[0], k.w[1], k.w[2], k.w[3]]),
            None => None,
        };
        if let (Some(v), Some(a)) = (wide, self.wide.get_mut(idx as usize)) {
            *a = v;
        }
        let e = self.entries.get_mut(idx as usize)?;
        *e = Entry {
            addrs: k.addr_word(),
            meta: k.w[4],
            expires: now.wrapping_add(self.timeouts.of(k.proto(), st)),
            policy,
            tcp: [TcpPeer::default(); 2],
            peer: NIL,
            state: st,
            flags: flags & !flag::LISTED,
            nat: 0,
        };
        self.used += 1;
        self.stats.new += 1;
        if let Some(c) = self.by_state.get_mut(st as usize) {
            *c += 1;
        }
        self.link(k.hash(), idx << 1);
        let back = reply.copied().unwrap_or_else(|| k.reverse());
        self.link(back.hash(), idx << 1 | 1);
        if flags & flag::ASSURED == 0 {
            self.list_push(idx);
        }
        Some(idx)
    }

    /// Moves a connection to state `st` and renews its deadline.
    #[inline(always)]
    pub fn set_state(&mut self, idx: u32, st: u8, now: u32) {
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if e.state != st {
            if let Some(c) = self.by_state.get_mut(e.state as usize) {
                *c = c.saturating_sub(1);
            }
            if let Some(c) = self.by_state.get_mut(st as usize) {
                *c += 1;
            }
            e.state = st;
        }
        e.expires = now.wrapping_add(self.timeouts.of(e.proto(), st));
    }

    /// Marks a connection established: it leaves the eviction list.
    #[inline]
    pub fn assure(&mut self, idx: u32) {
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return;
        };
        e.flags |= flag::ASSURED;
        if e.flags & flag::LISTED != 0 {
            self.list_unlink(idx);
        }
    }

    /// Removes a connection.
    pub fn remove(&mut self, idx: u32) {
        let Some(e) = self.entries.get(idx as usize).copied() else {
            return;
        };
        if e.state == state::FREE {
            return;
        }
        let (Some(k), Some(back)) = (self.key_of(idx), self.reply_of(idx)) else {
            return;
        };
        if e.flags & flag::LISTED != 0 {
            self.list_unlink(idx);
        }
        self.unlink(k.hash(), idx << 1);
        self.unlink(back.hash(), idx << 1 | 1);
        if let Some(c) = self.by_state.get_mut(e.state as usize) {
            *c = c.saturating_sub(1);
        }
        if let Some(e) = self.entries.get_mut(idx as usize) {
            e.state = state::FREE;
            e.flags = 0;
        }
        if let Some(l) = self.links.get_mut(idx as usize) {
            l.next = self.free;
        }
        self.free = idx;
        self.used -= 1;
    }

    fn list_push(&mut self, idx: u32) {
        let tail = self.tail;
        let (Some(e), Some(l)) = (
            self.entries.get_mut(idx as usize),
            self.links.get_mut(idx as usize),
        ) else {
            return;
        };
        e.flags |= flag::LISTED;
        *l = Links {
            prev: tail,
            next: NIL,
        };
        match self.links.get_mut(tail as usize) {
            Some(t) => t.next = idx,
            None => self.head = idx,
        }
        self.tail = idx;
    }

    fn list_unlink(&mut self, idx: u32) {
        let (Some(e), Some(l)) = (
            self.entries.get_mut(idx as usize),
            self.links.get_mut(idx as usize),
        ) else {
            return;
        };
        e.flags &= !flag::LISTED;
        let Links { prev: p, next: n } = std::mem::replace(
            l,
            Links {
                prev: NIL,
                next: NIL,
            },
        );
        match self.links.get_mut(p as usize) {
            Some(pl) => pl.next = n,
            None => self.head = n,
        }
        match self.links.get_mut(n as usize) {
            Some(nl) => nl.prev = p,
            None => self.tail = p,
        }
    }

    /// Evicts the oldest not-yet-assured connection. Whether there was one.
    fn evict_oldest(&mut self) -> bool {
        if self.head == NIL {
            return false;
        }
        let idx = self.head;
        self.remove(idx);
        self.stats.evicted += 1;
        true
    }

    /// Examines up to `budget` slots from where the last sweep stopped: expired entries are
    /// removed, and `keep` decides for every live one (by its key and entry): `None` cuts the
    /// connection, `Some(v)` keeps it under policy version `v`.
    pub fn sweep(
        &mut self,
        now: u32,
        budget: usize,
        mut keep: impl FnMut(&Key, &Entry) -> Option<u32>,
    ) {
        let n = self.entries.len() as u32;
        if n == 0 || self.used == 0 {
            return;
        }
        for _ in 0..budget.min(n as usize) {
            let idx = self.cursor;
            self.cursor = if idx + 1 >= n { 0 } else { idx + 1 };
            let Some(e) = self.entries.get(idx as usize) else {
                continue;
            };
            if e.state == state::FREE {
                continue;
            }
            if expired(e.expires, now) {
                self.stats.expired += 1;
                self.remove(idx);
            } else if let Some(k) = self.key_of(idx) {
                match keep(&k, e) {
                    Some(v) => self.entries[idx as usize].policy = v,
                    None => {
                        self.stats.cut += 1;
                        self.remove(idx);
                    }
                }
            }
        }
    }

    /// Removes every connection (of `zone` only, when given), each the way expiry does
    /// (both index links, the not-yet-assured list, the per-state gauges; the peer hint of the
    /// same connection's entry in another zone is checked by key before use, so it needs no
    /// undoing). Counted in [`CtStats::flushed`]. Returns how many. A control request, not for
    /// the fast path: it scans the slab (stopping early once the table is empty).
    pub fn flush(&mut self, zone: Option<u16>) -> usize {
        let mut n = 0;
        for idx in 0..self.entries.len() as u32 {
            if self.used == 0 {
                break;
            }
            let e = &self.entries[idx as usize];
            if e.state != state::FREE && zone.is_none_or(|z| e.zone() == z) {
                self.remove(idx);
                n += 1;
            }
        }
        self.stats.flushed += n as u64;
        n
    }

    /// Every live connection with its key (for listing; not for the fast path).
    pub fn iter(&self) -> impl Iterator<Item = (u32, Key, &Entry)> {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            let k = self.key_of(i as u32)?;
            Some((i as u32, k, e))
        })
    }
}
