//! The connection table and the TCP tracker, driven by scripted segments.
use super::state::*;
use super::tcp::{self, Segment, Verdict, ACK, FIN, RST, SYN};
use super::*;

fn seg(flags: u8, seq: u32, ack: u32, win: u16, len: u32) -> Segment {
    Segment {
        seq,
        ack,
        win,
        flags,
        len,
        wscale: 255,
    }
}

/// A tracked connection driven segment by segment.
struct Conn {
    st: u8,
    peers: [TcpPeer; 2],
    liberal: bool,
}

impl Conn {
    fn open(syn: Segment) -> Conn {
        let mut peers = [TcpPeer::default(); 2];
        tcp::open(&mut peers, &syn);
        Conn {
            st: SYN_SENT,
            peers,
            liberal: false,
        }
    }
    fn go(&mut self, dir: u8, s: Segment) -> Verdict {
        let v = tcp::track(self.st, dir, &mut self.peers, &s, self.liberal);
        if let Verdict::Ok(n) = v {
            self.st = n;
        }
        v
    }
}

const A: u32 = 1_000; // the opener's initial sequence number
const B: u32 = 4_000_000_000; // the responder's, close to the wrap

/// SYN, SYN-ACK, ACK: the three-way handshake.
fn established() -> Conn {
    let mut c = Conn::open(seg(SYN, A, 0, 64240, 0));
    assert_eq!(
        c.go(1, seg(SYN | ACK, B, A + 1, 65160, 0)),
        Verdict::Ok(SYN_RECV)
    );
    assert_eq!(
        c.go(0, seg(ACK, A + 1, B.wrapping_add(1), 502, 0)),
        Verdict::Ok(ESTABLISHED)
    );
    c
}

/// The fast path's window check for ACKs of established connections decides and updates
/// exactly as the general tracker: in window, out of window, across the sequence wrap, with
/// data, both directions.
#[test]
fn plain_ack_window_check_agrees_with_the_tracker() {
    let b1 = B.wrapping_add(1);
    let mut cases = Vec::new();
    for (dir, seq0, ack0) in [(0u8, A + 1, b1), (1, b1, A + 1)] {
        for dseq in [0u32, 1, 500, 70_000, 1 << 30, u32::MAX - 10] {
            for dack in [0u32, 1, 100_000, u32::MAX] {
                for len in [0u32, 6, 1460] {
                    let s = seg(
                        ACK | tcp::PSH,
                        seq0.wrapping_add(dseq),
                        ack0.wrapping_add(dack),
                        502,
                        len,
                    );
                    cases.push((dir, s));
                }
            }
        }
    }
    let (mut accepted, mut refused) = (0, 0);
    for (dir, s) in cases {
        let mut general = established();
        let mut fast = general.peers;
        let v = general.go(dir, s);
        let ok = tcp::plain_ack_in_window(dir, &mut fast, &s);
        assert_eq!(ok, v == Verdict::Ok(ESTABLISHED), "{dir} {s:?}");
        assert_eq!(fast, general.peers, "{dir} {s:?}");
        if ok {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(accepted > 10 && refused > 10, "{accepted} / {refused}");
}

/// The window check run once for two entries with the same tracking (the sender's zone and
/// the receiver's of one connection on one host) leaves both exactly as the check of each
/// would; when it refuses, the twin is as it was.
#[test]
fn the_twin_window_check_moves_both_entries_as_two_checks_would() {
    let b1 = B.wrapping_add(1);
    let (mut accepted, mut refused) = (0, 0);
    for (dir, seq0, ack0) in [(0u8, A + 1, b1), (1, b1, A + 1)] {
        for dseq in [0u32, 1, 500, 70_000, 1 << 30, u32::MAX - 10] {
            for dack in [0u32, 1, 100_000, u32::MAX] {
                for (len, win) in [(0u32, 502u16), (6, 502), (1460, 0), (1460, 65535)] {
                    let s = seg(
                        ACK,
                        seq0.wrapping_add(dseq),
                        ack0.wrapping_add(dack),
                        win,
                        len,
                    );
                    let before = established().peers;
                    let (mut one, mut other) = (before, before);
                    let ok_one = tcp::plain_ack_in_window(dir, &mut one, &s);
                    assert_eq!(tcp::plain_ack_in_window(dir, &mut other, &s), ok_one);
                    let (mut a, mut b) = (before, before);
                    let ok = tcp::plain_ack_in_window_twice(dir, &mut a, &mut b, &s);
                    assert_eq!(ok, ok_one, "{dir} {s:?}");
                    if ok {
                        assert_eq!((a, b), (one, other), "{dir} {s:?}");
                        accepted += 1;
                    } else {
                        assert_eq!(b, before, "{dir} {s:?}");
                        refused += 1;
                    }
                }
            }
        }
    }
    assert!(accepted > 10 && refused > 10, "{accepted} / {refused}");
}

/// What the flow cache assumes of a liberal translation: a plain ACK (any of PSH, URG, ECE,
/// CWR beside it; never SYN, FIN or RST) of an established connection is accepted either way
/// and changes nothing, whatever the windows say.
#[test]
fn a_liberal_plain_ack_of_an_established_connection_is_always_accepted_unchanged() {
    let mut n = 0;
    for flags in 0..=255u8 {
        if flags & (SYN | FIN | RST | ACK) != ACK {
            continue;
        }
        for dir in [0u8, 1] {
            for (seq, ack) in [(A + 1, B.wrapping_add(1)), (7, 9), (u32::MAX, 0)] {
                let mut c = established();
                c.liberal = true;
                let before = c.peers;
                assert_eq!(
                    c.go(dir, seg(flags, seq, ack, 502, 6)),
                    Verdict::Ok(ESTABLISHED)
                );
                assert_eq!(c.peers, before, "{flags:#x} {dir}");
                n += 1;
            }
        }
    }
    assert_eq!(n, 16 * 2 * 3);
}

#[test]
fn handshake_data_and_orderly_close() {
    let mut c = established();
    let b1 = B.wrapping_add(1);
    // Data both ways, across the responder's sequence wrap.
    assert_eq!(
        c.go(0, seg(ACK | tcp::PSH, A + 1, b1, 502, 100)),
        Verdict::Ok(ESTABLISHED)
    );
    assert_eq!(
        c.go(1, seg(ACK, b1, A + 101, 509, 1000)),
        Verdict::Ok(ESTABLISHED)
    );
    let b2 = b1.wrapping_add(1000);
    assert_eq!(
        c.go(0, seg(ACK, A + 101, b2, 502, 0)),
        Verdict::Ok(ESTABLISHED)
    );
    // The opener closes first: FIN, the FIN acked, the responder's FIN, the last ACK.
    assert_eq!(
        c.go(0, seg(FIN | ACK, A + 101, b2, 502, 0)),
        Verdict::Ok(FIN_WAIT)
    );
    assert_eq!(
        c.go(1, seg(ACK, b2, A + 102, 509, 0)),
        Verdict::Ok(CLOSE_WAIT)
    );
    assert_eq!(
        c.go(1, seg(FIN | ACK, b2, A + 102, 509, 0)),
        Verdict::Ok(LAST_ACK)
    );
    assert_eq!(
        c.go(0, seg(ACK, A + 102, b2.wrapping_add(1), 502, 0)),
        Verdict::Ok(TIME_WAIT)
    );
}

#[test]
fn retransmissions_are_accepted_and_ignored_where_linux_ignores_them() {
    let mut c = Conn::open(seg(SYN, A, 0, 64240, 0));
    // The SYN again (lost SYN-ACK): still SYN_SENT.
    assert_eq!(c.go(0, seg(SYN, A, 0, 64240, 0)), Verdict::Ok(SYN_SENT));
    assert_eq!(
        c.go(1, seg(SYN | ACK, B, A + 1, 65160, 0)),
        Verdict::Ok(SYN_RECV)
    );
    assert_eq!(
        c.go(0, seg(ACK, A + 1, B.wrapping_add(1), 502, 0)),
        Verdict::Ok(ESTABLISHED)
    );
    // A late SYN-ACK copy changes nothing.
    assert_eq!(
        c.go(1, seg(SYN | ACK, B, A + 1, 65160, 0)),
        Verdict::Ignored
    );
    // Data, then the same data again (a retransmission is inside the window).
    assert_eq!(
        c.go(0, seg(ACK, A + 1, B.wrapping_add(1), 502, 500)),
        Verdict::Ok(ESTABLISHED)
    );
    assert_eq!(
        c.go(0, seg(ACK, A + 1, B.wrapping_add(1), 502, 500)),
        Verdict::Ok(ESTABLISHED)
    );
    assert_eq!(c.st, ESTABLISHED);
}

#[test]
fn segments_outside_the_window_are_invalid() {
    let mut c = established();
    let b1 = B.wrapping_add(1);
    // Far beyond what the responder advertised (65160 bytes).
    assert_eq!(
        c.go(0, seg(ACK, A + 1 + 10_000_000, b1, 502, 100)),
        Verdict::Invalid
    );
    // Acknowledging data the responder never sent.
    assert_eq!(
        c.go(0, seg(ACK, A + 1, b1.wrapping_add(5_000_000), 502, 0)),
        Verdict::Invalid
    );
    // Far behind (an old duplicate from a previous incarnation).
    assert_eq!(
        c.go(1, seg(ACK, b1.wrapping_sub(3_000_000), A + 1, 509, 10)),
        Verdict::Invalid
    );
    // None of that moved the state; a good segment still passes.
    assert_eq!(c.st, ESTABLISHED);
    assert_eq!(
        c.go(0, seg(ACK, A + 1, b1, 502, 10)),
        Verdict::Ok(ESTABLISHED)
    );
}

#[test]
fn liberal_tracking_skips_window_checks() {
    let mut c = established();
    c.liberal = true;
    assert_eq!(
        c.go(0, seg(ACK, A + 1 + 10_000_000, B.wrapping_add(1), 502, 100)),
        Verdict::Ok(ESTABLISHED)
    );
}

#[test]
fn reset_in_window_closes_and_out_of_window_is_invalid() {
    let mut c = established();
    assert_eq!(
        c.go(1, seg(RST, B.wrapping_add(1) + 10_000_000, 0, 0, 0)),
        Verdict::Invalid
    );
    assert_eq!(c.st, ESTABLISHED);
    assert_eq!(
        c.go(1, seg(RST, B.wrapping_add(1), 0, 0, 0)),
        Verdict::Ok(CLOSE)
    );
    // A SYN answered by RST|ACK (port closed) closes too.
    let mut r = Conn::open(seg(SYN, A, 0, 64240, 0));
    assert_eq!(r.go(1, seg(RST | ACK, 0, A + 1, 0, 0)), Verdict::Ok(CLOSE));
}

#[test]
fn impossible_flags_and_early_segments_are_invalid() {
    let mut c = Conn::open(seg(SYN, A, 0, 64240, 0));
    assert_eq!(c.go(0, seg(SYN | FIN, A, 0, 1, 0)), Verdict::Invalid);
    assert_eq!(c.go(0, seg(0, A, 0, 1, 0)), Verdict::Invalid);
    // Data from the opener before the handshake completed.
    assert_eq!(c.go(0, seg(ACK, A + 1, 77, 502, 10)), Verdict::Invalid);
    // A FIN from the responder in SYN_SENT.
    assert_eq!(c.go(1, seg(FIN | ACK, B, A + 1, 1, 0)), Verdict::Invalid);
    assert!(!tcp::opens(SYN | ACK) && !tcp::opens(ACK) && tcp::opens(SYN | tcp::PSH));
}

#[test]
fn window_scaling_needs_both_sides() {
    // A handshake with these window-scale options (255: none), then the opener advertises
    // 8192: with scaling 7 on both sides that is 1 MiB, so the responder may send 900 KB
    // ahead; without (only one side offered it) the same jump is out of window.
    let jump = |opener_ws: u8, responder_ws: u8| {
        let mut s = seg(SYN, A, 0, 64240, 0);
        s.wscale = opener_ws;
        let mut c = Conn::open(s);
        let mut sa = seg(SYN | ACK, B, A + 1, 65160, 0);
        sa.wscale = responder_ws;
        assert_eq!(c.go(1, sa), Verdict::Ok(SYN_RECV));
        let b1 = B.wrapping_add(1);
        assert_eq!(
            c.go(0, seg(ACK, A + 1, b1, 8192, 0)),
            Verdict::Ok(ESTABLISHED)
        );
        c.go(1, seg(ACK, b1.wrapping_add(900_000), A + 1, 509, 1000))
    };
    assert_eq!(jump(7, 7), Verdict::Ok(ESTABLISHED));
    assert_eq!(jump(7, 255), Verdict::Invalid);
}

#[test]
fn simultaneous_open() {
    let mut c = Conn::open(seg(SYN, A, 0, 64240, 0));
    assert_eq!(c.go(1, seg(SYN, B, 0, 65160, 0)), Verdict::Ok(SYN_SENT2));
    assert_eq!(
        c.go(1, seg(SYN | ACK, B, A + 1, 65160, 0)),
        Verdict::Ok(SYN_RECV)
    );
}

// --- the table --------------------------------------------------------------------------------

fn key(n: u32) -> Key {
    Key::v4(
        3,
        PROTO_TCP,
        0xc633_6400 | (n & 0xff),
        0xcb00_7100 | (n >> 8 & 0xff),
        40000 + (n >> 16) as u16,
        22,
    )
}

/// An IPv6 key whose folded addresses ([`Key::addr_word`]) equal those of `v6_key(n ^ 1)`:
/// the source address in the high word for even `n`, rotated into the low word for odd.
fn v6_key(n: u32) -> Key {
    let x = 0x2001_0db8_0000_0000 | (n >> 1) as u64;
    let src = if n.is_multiple_of(2) {
        (x as u128) << 64
    } else {
        x.rotate_right(16) as u128
    };
    Key::v6(1, PROTO_UDP, src, 0xfd00 << 112 | 1, 9, 9)
}

#[test]
fn one_entry_from_both_directions() {
    let mut ct = Conntrack::new(64, Timeouts::default(), false);
    let k = key(7);
    let idx = ct.insert(&k, SYN_SENT, 0, 1, 0).unwrap();
    assert_eq!(ct.key_of(idx), Some(k));
    assert_eq!(ct.lookup(&k, 1), Some((idx, 0)));
    assert_eq!(ct.lookup(&k.reverse(), 1), Some((idx, 1)));
    // Another zone, or other ports, are other connections.
    assert_eq!(ct.lookup(&k.with_zone(4), 1), None);
    assert_eq!(ct.lookup(&key(8), 1), None);
    // IPv6 keys with the same low bits do not collide with IPv4 ones.
    let k6 = Key::v6(3, PROTO_TCP, k.src128(), k.dst128(), k.sport(), k.dport());
    assert_eq!(ct.lookup(&k6, 1), None);
    assert_eq!(k.reverse().reverse(), k);
    assert_eq!(k.owner_hash(), k.reverse().owner_hash());
    assert_eq!(k.owner_hash(), k.with_zone(9).owner_hash());
    ct.remove(idx);
    assert_eq!(ct.lookup(&k, 1), None);
    assert_eq!(ct.key_of(idx), None);
    assert_eq!(ct.len(), 0);
}

#[test]
fn ipv6_connections_whose_folded_addresses_collide_stay_apart() {
    // The entry holds an IPv6 key's addresses folded into one word; the full ones beside it
    // decide.
    let (a, b) = (v6_key(6), v6_key(7));
    assert_eq!(a.addr_word(), b.addr_word());
    assert_ne!(a, b);
    let mut ct = Conntrack::new(64, Timeouts::default(), false);
    let ia = ct.insert(&a, UNREPLIED, 0, 1, 0).unwrap();
    assert_eq!(ct.lookup(&b, 1), None);
    assert_eq!(ct.lookup(&b.reverse(), 1), None);
    let ib = ct.insert(&b, UNREPLIED, 0, 1, 0).unwrap();
    for (k, idx) in [(a, ia), (b, ib)] {
        assert_eq!(ct.key_of(idx), Some(k));
        assert_eq!(ct.lookup(&k, 1), Some((idx, 0)));
        assert_eq!(ct.lookup(&k.reverse(), 1), Some((idx, 1)));
    }
    // The peer hint is checked the same way.
    ct.link_peers(ia, ib);
    assert_eq!(ct.peer_lookup(ib, &a, 1), Some((ia, 0)));
    assert_eq!(ct.peer_lookup(ib, &b, 1), None);
    ct.remove(ia);
    assert_eq!(ct.lookup(&a, 1), None);
    assert_eq!(ct.lookup(&b.reverse(), 1), Some((ib, 1)));
}

#[test]
fn a_lookup_candidate_is_only_a_hint() {
    let mut ct = Conntrack::new(64, Timeouts::default(), false);
    let (a, b) = (key(1), key(2));
    let ia = ct.insert(&a, ESTABLISHED, 0, 1, 0).unwrap();
    // The candidate of each direction's hash leads to the entry, in that direction.
    let (ha, hr) = (a.hash(), a.reverse().hash());
    let (ca, cr) = (ct.touch_candidate(ha), ct.touch_candidate(hr));
    // A candidate is the index link + 1: entry << 1 | direction.
    let link = |idx: u32, dir: u32| (idx << 1 | dir) + 1;
    assert_eq!((ca, cr), (link(ia, 0), link(ia, 1)));
    assert_eq!(ct.lookup_candidate(&a, ha, ca, 1), Some((ia, 0)));
    assert_eq!(ct.lookup_candidate(&a.reverse(), hr, cr, 1), Some((ia, 1)));
    // A candidate for another key, or none, costs a full lookup, not a wrong answer.
    assert_eq!(ct.lookup_candidate(&a, ha, cr, 1), Some((ia, 0)));
    assert_eq!(ct.lookup_candidate(&a, ha, 0, 1), Some((ia, 0)));
    // The connection goes (its slot keeps the old key): the stale candidate finds nothing.
    ct.remove(ia);
    assert_eq!(ct.lookup_candidate(&a, ha, ca, 1), None);
    // The slot is reused by another connection: still nothing for the old key, and the
    // candidate of the new one works.
    let ib = ct.insert(&b, ESTABLISHED, 0, 1, 0).unwrap();
    assert_eq!(ib, ia, "the freed slot is reused");
    assert_eq!(ct.lookup_candidate(&a, ha, ca, 1), None);
    assert_eq!(
        ct.lookup_candidate(&b, b.hash(), link(ib, 0), 1),
        Some((ib, 0))
    );
    // An expired entry is not returned through its candidate either (the full lookup then
    // removes it).
    let late = ct.timeouts.of(PROTO_TCP, ESTABLISHED) + 1;
    assert_eq!(ct.lookup_candidate(&b, b.hash(), link(ib, 0), late), None);
    assert_eq!(ct.len(), 0);
}

#[test]
fn many_entries_with_colliding_buckets_stay_reachable_after_removals() {
    let mut ct = Conntrack::new(5000, Timeouts::default(), false);
    let mut ids = Vec::new();
    for n in 0..5000 {
        ids.push(
            ct.insert(&key(n * 7919), ESTABLISHED, flag::ASSURED, 1, 0)
                .unwrap(),
        );
    }
    assert!(
        ct.insert(&key(1_000_001), SYN_SENT, 0, 1, 0).is_none(),
        "full"
    );
    assert_eq!(ct.stats.refused_full, 1);
    for n in (0..5000).step_by(2) {
        ct.remove(ids[n as usize]);
    }
    for n in 0..5000u32 {
        let k = key(n * 7919);
        let want = (n % 2 == 1).then_some(ids[n as usize]);
        assert_eq!(ct.lookup(&k, 1).map(|x| x.0), want, "entry {n}");
        assert_eq!(
            ct.lookup(&k.reverse(), 1).map(|x| x.0),
            want,
            "reply of entry {n}"
        );
    }
    assert_eq!(ct.len(), 2500);
    assert_eq!(ct.by_state[ESTABLISHED as usize], 2500);
}

#[test]
fn expiry_by_lookup_and_by_sweep() {
    let t = Timeouts::default();
    let mut ct = Conntrack::new(16, t, false);
    let a = key(1);
    let b = key(2);
    ct.insert(&a, SYN_SENT, 0, 1, 1000).unwrap();
    ct.insert(&b, UNREPLIED, 0, 1, 1000).unwrap();
    // 120 s for SYN_SENT: alive just before, gone at the deadline.
    assert!(ct.lookup(&a, 1000 + 119_999).is_some());
    assert!(ct.lookup(&a, 1000 + 120_000).is_none());
    assert_eq!(ct.stats.expired, 1);
    // The sweep finds the other one without any packet.
    ct.sweep(1000 + 600_000, 16, |_, _| Some(1));
    assert_eq!(ct.len(), 0);
    assert_eq!(ct.stats.expired, 2);
    // Deadlines survive the 32-bit clock wrapping.
    let now = u32::MAX - 5;
    ct.insert(&a, ESTABLISHED, flag::ASSURED, 1, now).unwrap();
    assert!(ct.lookup(&a, now.wrapping_add(10_000)).is_some());
}

#[test]
fn sweep_cuts_what_the_policy_no_longer_allows() {
    let mut ct = Conntrack::new(16, Timeouts::default(), false);
    ct.insert(&key(1), ESTABLISHED, flag::ASSURED, 7, 0)
        .unwrap();
    ct.insert(&key(2), ESTABLISHED, flag::ASSURED, 7, 0)
        .unwrap();
    ct.sweep(1, 16, |k, _| (k.src128() & 0xff == 1).then_some(8));
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.stats.cut, 1);
    let (idx, _) = ct.lookup(&key(1), 2).unwrap();
    assert_eq!(ct.entry(idx).unwrap().policy, 8);
}

#[test]
fn full_table_evicts_the_oldest_unestablished_never_an_established_one() {
    let mut ct = Conntrack::new(4, Timeouts::default(), true);
    let est = ct
        .insert(&key(1), ESTABLISHED, flag::ASSURED, 1, 0)
        .unwrap();
    let old = ct.insert(&key(2), SYN_SENT, 0, 1, 0).unwrap();
    let mid = ct.insert(&key(3), SYN_SENT, 0, 1, 0).unwrap();
    ct.insert(&key(4), SYN_SENT, 0, 1, 0).unwrap();
    // The handshake of key(3) completes: it leaves the eviction list.
    ct.assure(mid);
    assert!(ct.insert(&key(5), SYN_SENT, 0, 1, 0).is_some());
    assert_eq!(ct.stats.evicted, 1);
    assert!(
        ct.lookup(&key(2), 1).is_none(),
        "the oldest unestablished went"
    );
    let _ = old;
    assert!(ct.insert(&key(6), SYN_SENT, 0, 1, 0).is_some());
    assert!(ct.lookup(&key(4), 1).is_none());
    assert!(ct.insert(&key(7), SYN_SENT, 0, 1, 0).is_some());
    assert!(ct.lookup(&key(5), 1).is_none());
    // Established ones were never touched.
    assert_eq!(ct.lookup(&key(1), 1).map(|x| x.0), Some(est));
    assert_eq!(ct.lookup(&key(3), 1).map(|x| x.0), Some(mid));
    assert_eq!(ct.len(), 4);
    // With only established entries left, a new connection is refused.
    let mut full = Conntrack::new(2, Timeouts::default(), true);
    full.insert(&key(1), ESTABLISHED, flag::ASSURED, 1, 0)
        .unwrap();
    full.insert(&key(2), REPLIED, flag::ASSURED, 1, 0).unwrap();
    assert!(full.insert(&key(3), SYN_SENT, 0, 1, 0).is_none());
    assert_eq!(full.stats.refused_full, 1);
}

#[test]
fn memory_per_connection_is_at_most_128_bytes() {
    // What every packet reads is one cache line.
    assert_eq!(std::mem::size_of::<Entry>(), 64);
    assert_eq!(std::mem::align_of::<Entry>(), 64);
    let ct = Conntrack::new(1 << 16, Timeouts::default(), true);
    let per = ct.memory_bytes() / ct.capacity();
    assert!(per <= 128, "{per} bytes per connection");
}

#[test]
fn flush_by_zone() {
    let mut ct = Conntrack::new(16, Timeouts::default(), false);
    ct.insert(&key(1), ESTABLISHED, flag::ASSURED, 1, 0)
        .unwrap();
    ct.insert(&key(2).with_zone(9), ESTABLISHED, flag::ASSURED, 1, 0)
        .unwrap();
    assert_eq!(ct.flush(Some(9)), 1);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.flush(None), 1);
    assert!(ct.is_empty());
}

#[test]
fn both_links_in_one_bucket_unlink_cleanly() {
    // A key that is its own reverse (same address and port both ways) puts both links of the
    // entry in one bucket.
    let mut ct = Conntrack::new(8, Timeouts::default(), false);
    let k = Key::v4(1, PROTO_UDP, 0x0a00_0001, 0x0a00_0001, 7, 7);
    for _ in 0..5 {
        let idx = ct.insert(&k, UNREPLIED, 0, 1, 0).unwrap();
        let other = ct.insert(&key(3), UNREPLIED, 0, 1, 0).unwrap();
        assert_eq!(ct.lookup(&k, 1).map(|x| x.0), Some(idx));
        ct.remove(idx);
        assert_eq!(ct.lookup(&k, 1), None);
        assert_eq!(ct.lookup(&key(3), 1).map(|x| x.0), Some(other));
        ct.remove(other);
        assert!(ct.is_empty());
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random inserts, removals and lookups in a small table (many bucket collisions)
        /// agree with a plain map, and every chain stays finite.
        #[test]
        fn table_agrees_with_a_map(
            ops in proptest::collection::vec((0u8..3, 0u32..60), 1..400),
            crowded in any::<bool>(),
        ) {
            // A crowded index (28 connections = 56 links in 4 x 15 slots) spills over into
            // neighbouring buckets all the time.
            let mut ct = if crowded {
                Conntrack::with_buckets(28, 4)
            } else {
                Conntrack::new(28, Timeouts::default(), false)
            };
            let mut model: std::collections::HashMap<Key, u32> = Default::default();
            for (op, n) in ops {
                // A third of the keys are their own reverse, a third are IPv6 ones in pairs
                // whose folded addresses collide.
                let k = match n % 3 {
                    0 => Key::v4(1, PROTO_UDP, n, n, 9, 9),
                    1 => key(n),
                    _ => v6_key(n / 3),
                };
                match op {
                    0 if !model.contains_key(&k) && !model.contains_key(&k.reverse()) => {
                        if let Some(idx) = ct.insert(&k, UNREPLIED, 0, 1, 0) {
                            model.insert(k, idx);
                        }
                    }
                    1 => {
                        if let Some(idx) = model.remove(&k) {
                            ct.remove(idx);
                        }
                    }
                    _ => {}
                }
                for (mk, &idx) in &model {
                    prop_assert_eq!(ct.lookup(mk, 1).map(|x| x.0), Some(idx));
                    prop_assert_eq!(ct.lookup(&mk.reverse(), 1).map(|x| x.0), Some(idx));
                }
                prop_assert_eq!(ct.len(), model.len());
            }
        }
    }
}

#[test]
fn ipv6_fragments_are_parsed_to_their_transport_header() {
    use super::flow::{parse, Kind};
    // Ethernet + IPv6 (next header 44) + fragment header + UDP 1000 -> 53.
    let frame = |offset: u16, more: bool| {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0, 0, 16, 44, 64];
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ip);
        let om = offset << 3 | more as u16;
        f.extend_from_slice(&[17, 0, (om >> 8) as u8, om as u8, 0, 0, 0x12, 0x34]);
        f.extend_from_slice(&[0x03, 0xe8, 0, 53, 0, 8, 0, 0]);
        f
    };
    let first = parse(&frame(0, true));
    assert_eq!(first.kind, Kind::Ports);
    assert_eq!(
        (first.key.sport(), first.key.dport(), first.frag),
        (1000, 53, Some(0x1234))
    );
    let later = parse(&frame(2, false));
    assert_eq!(
        (later.kind, later.frag, later.key.proto()),
        (Kind::Fragment, Some(0x1234), 17)
    );
    // An atomic fragment is a whole datagram.
    let atomic = parse(&frame(0, false));
    assert_eq!((atomic.kind, atomic.frag), (Kind::Ports, None));
}

mod parse_prop {
    use super::super::flow::{parse, parse_into, quick_v4_key, Kind, MALFORMED};
    use proptest::prelude::*;

    fn tcp_or_udp() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            0usize..40,
            any::<bool>(),
        )
            .prop_map(|(tcp, flags, sp, dp, len, options)| {
                let b =
                    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                        .ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64);
                let mut out = Vec::new();
                let payload = vec![7u8; len];
                if tcp {
                    let mut t = b.tcp(sp, dp, 1000, 512);
                    if flags & 1 != 0 {
                        t = t.fin();
                    }
                    if flags & 2 != 0 {
                        t = t.syn();
                    }
                    if flags & 4 != 0 {
                        t = t.rst();
                    }
                    if flags & 8 != 0 {
                        t = t.ack(55);
                    }
                    if options {
                        use etherparse::TcpOptionElement as O;
                        let scale = O::WindowScale(flags >> 4);
                        t = t
                            .options(&[O::MaximumSegmentSize(1460), O::Noop, scale])
                            .unwrap();
                    }
                    t.write(&mut out, &payload).unwrap();
                } else {
                    b.udp(sp, dp).write(&mut out, &payload).unwrap();
                }
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The in-place parser gives what the general one gives, on well-formed frames and on
        /// mutated or truncated ones.
        #[test]
        fn parse_into_matches_parse(
            f in tcp_or_udp(),
            muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in 0usize..64,
        ) {
            let mut f = f;
            for (at, v) in muts {
                let i = at % f.len();
                f[i] = v;
            }
            f.truncate(f.len().saturating_sub(cut));
            let mut slot = MALFORMED;
            parse_into(&f, &mut slot);
            prop_assert_eq!(slot, parse(&f));
            // The quick key (a prefetch hint) is the parsed key of every well-formed TCP or
            // UDP flow (DHCP's ports aside, which parse keeps apart).
            if let (Some(k), Kind::Tcp(_) | Kind::Ports, None) = (quick_v4_key(&f), slot.kind, slot.frag) {
                prop_assert_eq!(k, slot.key);
            }
        }
    }
}

/// Source NAT of X:x -> D:d to G:g: (original, the key replies arrive with).
fn snat_keys(n: u32) -> (Key, Key) {
    let (x, d, g) = (0xc633_6404 + (n & 0xff), 0x6440_0009, 0xcb00_710b);
    let orig = Key::v4(9, PROTO_TCP, x, d, 40000 + (n >> 8) as u16, 443);
    let reply = Key::v4(9, PROTO_TCP, d, g, 443, 1024 + n as u16);
    (orig, reply)
}

#[test]
fn a_translated_connection_is_one_entry_found_by_both_of_its_keys() {
    let mut ct = Conntrack::new(64, Timeouts::default(), false);
    let (orig, reply) = snat_keys(1);
    // The reply key is free before.
    assert_eq!(ct.lookup(&reply, 1), None);
    let idx = ct.insert_nat(&orig, &reply, SYN_SENT, 0, 0).unwrap();
    assert_eq!(ct.lookup(&orig, 1), Some((idx, 0)));
    assert_eq!(ct.lookup(&reply, 1), Some((idx, 1)));
    // The original reversed (an untranslated "reply") is not this connection.
    assert_eq!(ct.lookup(&orig.reverse(), 1), None);
    assert_eq!(
        (ct.key_of(idx), ct.reply_of(idx)),
        (Some(orig), Some(reply))
    );
    // Through the peer hint too, by either key.
    let other = ct.insert(&key(3), SYN_SENT, 0, 1, 0).unwrap();
    ct.link_peers(other, idx);
    assert_eq!(ct.peer_lookup(other, &reply, 1), Some((idx, 1)));
    assert_eq!(ct.peer_lookup(other, &orig.reverse(), 1), None);
    // Removal takes both keys out of the index.
    ct.remove(idx);
    assert_eq!(ct.lookup(&orig, 1), None);
    assert_eq!(ct.lookup(&reply, 1), None);
    assert_eq!(ct.len(), 1);
    // IPv6 is never translated.
    let v6 = Key::v6(9, PROTO_TCP, 1, 2, 3, 4);
    assert_eq!(ct.insert_nat(&v6, &v6.reverse(), SYN_SENT, 0, 0), None);
}

#[test]
fn translated_and_plain_connections_share_a_crowded_index() {
    // 24 connections (48 links) in 4 x 15 slots: links spill into neighbouring buckets.
    let mut ct = Conntrack::with_buckets(24, 4);
    let mut live = Vec::new();
    for n in 0..24u32 {
        let idx = if n % 2 == 0 {
            let (o, r) = snat_keys(n);
            (
                ct.insert_nat(&o, &r, ESTABLISHED, flag::ASSURED, 0)
                    .unwrap(),
                o,
                r,
            )
        } else {
            let k = key(n);
            (
                ct.insert(&k, ESTABLISHED, flag::ASSURED, 1, 0).unwrap(),
                k,
                k.reverse(),
            )
        };
        live.push(idx);
    }
    // Remove every third, then check every key of what is left, both ways.
    for (i, &(idx, ..)) in live.iter().enumerate() {
        if i % 3 == 0 {
            ct.remove(idx);
        }
    }
    for (i, &(idx, o, r)) in live.iter().enumerate() {
        let want = |d| (i % 3 != 0).then_some((idx, d));
        assert_eq!(ct.lookup(&o, 1), want(0), "{i}");
        assert_eq!(ct.lookup(&r, 1), want(1), "{i}");
    }
    assert_eq!(ct.len(), 16);
}
