//! The mailbox with fake worker threads, and what list and flush do to a connection table.
use super::*;
use crate::pipeline::conntrack::{flag, state::*, Conntrack, Key, Timeouts, PROTO_TCP};
use crate::pipeline::conntrack::{PROTO_ICMP, PROTO_UDP};
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

const LONG: Duration = Duration::from_secs(5);

fn tcp(zone: u16, n: u32) -> Key {
    Key::v4(zone, PROTO_TCP, 0x0a00_0001, 0x0a00_0100 + n, 40000, 443)
}

/// A table with `n` TCP connections in each of zones 3 and 9.
fn table(n: u32) -> Conntrack {
    let mut ct = Conntrack::new(64, Timeouts::default(), true);
    for i in 0..n {
        for z in [3, 9] {
            ct.insert(&tcp(z, i), ESTABLISHED, flag::ASSURED, 7, 0)
                .unwrap();
        }
    }
    ct
}

/// A fake worker: polls its mailbox as the poll loop does, over its own table, until told to
/// stop; gives the table back.
fn worker(
    core: u16,
    m: Arc<Mailbox>,
    mut ct: Conntrack,
) -> (Arc<AtomicBool>, JoinHandle<Conntrack>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if m.pending() {
                m.serve(core, &mut ct, 1);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        ct
    });
    (stop, h)
}

fn stop(w: (Arc<AtomicBool>, JoinHandle<Conntrack>)) -> Conntrack {
    w.0.store(true, Ordering::Relaxed);
    w.1.join().unwrap()
}

fn listed(rs: &[Reply]) -> Vec<(u16, u16)> {
    rs.iter()
        .flat_map(|r| match &r.answer {
            Answer::Conntrack(v) => v.iter().map(|c| (c.core, c.zone)).collect(),
            Answer::Flushed(_) => Vec::new(),
        })
        .collect()
}

#[test]
fn worker_threads_answer_list_and_flush_in_worker_order() {
    let boxes: Vec<Arc<Mailbox>> = (0..2).map(|_| Arc::default()).collect();
    let w0 = worker(0, boxes[0].clone(), table(2));
    let w1 = worker(1, boxes[1].clone(), table(1));
    let all = |zone| Request::ConntrackList { zone, limit: 100 };
    let rs = ask_all(&boxes, all(None), LONG).unwrap();
    assert_eq!(rs.iter().map(|r| r.core).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(listed(&rs).len(), 6);
    let rs = ask_all(&boxes, all(Some(9)), LONG).unwrap();
    assert_eq!(listed(&rs), [(0, 9), (0, 9), (1, 9)]);
    // Flush zone 3 everywhere: 2 + 1.
    let rs = ask_all(&boxes, Request::ConntrackFlush { zone: Some(3) }, LONG).unwrap();
    let n: Vec<_> = rs.iter().map(|r| r.answer.clone()).collect();
    assert_eq!(n, [Answer::Flushed(2), Answer::Flushed(1)]);
    let rs = ask_all(&boxes, all(None), LONG).unwrap();
    assert_eq!(listed(&rs), [(0, 9), (0, 9), (1, 9)]);
    assert_eq!(stop(w0).len(), 2);
    assert_eq!(stop(w1).len(), 1);
}

#[test]
fn nobody_answering_is_a_timeout_naming_the_worker_not_a_hang() {
    let boxes: Vec<Arc<Mailbox>> = (0..3).map(|_| Arc::default()).collect();
    // Worker 1 answers, 0 and 2 are stopped.
    let w1 = worker(1, boxes[1].clone(), table(1));
    let t0 = Instant::now();
    let e = ask_all(
        &boxes,
        Request::ConntrackFlush { zone: None },
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(e.missing, [0, 2]);
    assert_eq!(
        e.answered,
        [Reply {
            core: 1,
            answer: Answer::Flushed(2)
        }]
    );
    assert!(e.to_string().contains("worker 0, 2 did not answer"), "{e}");
    stop(w1);
}

#[test]
fn a_request_past_its_deadline_is_dropped_not_carried_out_late() {
    let m = Arc::new(Mailbox::default());
    let e = ask_all(
        std::slice::from_ref(&m),
        Request::ConntrackFlush { zone: None },
        Duration::from_millis(10),
    )
    .unwrap_err();
    assert_eq!(e.missing, [0]);
    // The worker comes back: the flush the asker gave up on must not happen now.
    let mut ct = table(2);
    assert!(m.pending());
    assert_eq!(m.serve(0, &mut ct, 1), 0);
    assert_eq!(ct.len(), 4);
    assert!(!m.pending());
}

#[test]
fn a_full_mailbox_is_reported_at_once() {
    let m = Arc::new(Mailbox::default());
    for _ in 0..MAILBOX_SLOTS {
        let (tx, _rx) = mpsc::channel();
        m.post(Envelope {
            req: Request::ConntrackFlush { zone: None },
            deadline: Instant::now() + LONG,
            reply: tx,
        })
        .map_err(|_| ())
        .unwrap();
    }
    let t0 = Instant::now();
    let e = ask_all(
        std::slice::from_ref(&m),
        Request::ConntrackFlush { zone: None },
        LONG,
    )
    .unwrap_err();
    assert_eq!(e.missing, [0]);
    assert!(t0.elapsed() < LONG);
}

/// The poll loop's whole cost for an empty mailbox is `pending()`: one relaxed load of an
/// `AtomicBool` (a plain `mov` on x86) and a branch; `serve` is `#[cold]` and out of line.
/// What can break that is the flag: never set by a post (requests never answered), or never
/// cleared by a serve (every later round would pop an empty queue and read the clock).
#[test]
fn an_empty_mailbox_is_one_flag_that_a_post_sets_and_a_serve_clears() {
    let m = Arc::new(Mailbox::default());
    assert!(!m.pending());
    let mut ct = table(1);
    let before = ct.stats;
    let (tx, rx) = mpsc::channel();
    m.post(Envelope {
        req: Request::ConntrackList {
            zone: None,
            limit: 1,
        },
        deadline: Instant::now() + LONG,
        reply: tx,
    })
    .map_err(|_| ())
    .unwrap();
    assert!(m.pending());
    assert_eq!(m.serve(4, &mut ct, 1), 1);
    assert!(!m.pending());
    assert_eq!(rx.recv().unwrap().core, 4);
    // Nothing waiting: serving does nothing, the table is untouched.
    assert_eq!(m.serve(4, &mut ct, 1), 0);
    assert_eq!(ct.stats, before);
}

#[test]
fn list_filters_by_zone_and_stops_at_the_limit() {
    let ct = table(5);
    assert_eq!(list(&ct, 0, None, 100, 1).len(), 10);
    let z9 = list(&ct, 2, Some(9), 100, 1);
    assert_eq!(z9.len(), 5);
    assert!(z9.iter().all(|v| v.zone == 9 && v.core == 2));
    assert_eq!(list(&ct, 0, Some(9), 3, 1).len(), 3);
    assert_eq!(list(&ct, 0, None, 0, 1).len(), 0);
    assert_eq!(list(&ct, 0, Some(4), 100, 1).len(), 0);
}

#[test]
fn a_view_names_the_tuple_state_expiry_and_translation() {
    let mut ct = Conntrack::new(8, Timeouts::default(), true);
    let now = 5_000;
    let k = Key::v4(3, PROTO_UDP, 0x0a00_0005, 0x0808_0808, 5353, 53);
    ct.insert(&k, UNREPLIED, flag::INGRESS, 2, now).unwrap();
    // Centralized SNAT: 10.0.0.5:40000 -> 100.64.0.9:443 leaves as 203.0.113.11:1024.
    let orig = Key::v4(0x8001, PROTO_TCP, 0x0a00_0005, 0x6440_0009, 40000, 443);
    let reply = Key::v4(0x8001, PROTO_TCP, 0x6440_0009, 0xcb00_710b, 443, 1024);
    ct.insert_nat(&orig, &reply, ESTABLISHED, flag::ASSURED, now)
        .unwrap();
    let ping = Key::v4(3, PROTO_ICMP, 0x0a00_0005, 0x0a00_0001, 77, 77);
    ct.insert(&ping, UNREPLIED, 0, 2, now).unwrap();
    let v = list(&ct, 1, None, 10, now + 1_500);
    assert_eq!(v.len(), 3);
    let udp = &v[0];
    assert_eq!((udp.proto.as_str(), udp.proto_number), ("udp", 17));
    assert_eq!(udp.original.src.to_string(), "10.0.0.5");
    assert_eq!(udp.original.dst.to_string(), "8.8.8.8");
    assert_eq!(
        (udp.original.sport, udp.original.dport),
        (Some(5353), Some(53))
    );
    assert_eq!(udp.state, "unreplied");
    // UDP's default unreplied timeout (30 s), 1.5 s later.
    assert_eq!(udp.expires_in_s, 28);
    assert!(udp.ingress && !udp.nat && !udp.assured && udp.reply.is_none());
    assert_eq!(udp.policy_version, 2);
    let nat = &v[1];
    assert!(nat.nat && nat.assured);
    assert_eq!(nat.state, "tcp_established");
    let r = nat.reply.as_ref().unwrap();
    assert_eq!(
        (r.src.to_string(), r.dst.to_string(), r.sport, r.dport),
        (
            "100.64.0.9".into(),
            "203.0.113.11".into(),
            Some(443),
            Some(1024)
        )
    );
    let icmp = &v[2];
    assert_eq!(icmp.proto, "icmp");
    assert_eq!(
        (icmp.original.icmp_id, icmp.original.sport),
        (Some(77), None)
    );
    let json = serde_json::to_value(nat).unwrap();
    assert_eq!(json["reply"]["dst"], "203.0.113.11");
    assert_eq!(json["state"], "tcp_established");
}

#[test]
fn expired_entries_are_not_listed() {
    let mut ct = Conntrack::new(8, Timeouts::default(), true);
    ct.insert(&tcp(3, 1), SYN_SENT, 0, 1, 0).unwrap();
    let syn_sent_ms = Timeouts::default().of(PROTO_TCP, SYN_SENT);
    assert_eq!(list(&ct, 0, None, 10, syn_sent_ms - 1).len(), 1);
    assert_eq!(list(&ct, 0, None, 10, syn_sent_ms).len(), 0);
}

/// Everything created is live or removed for a counted reason, and the per-state gauges add
/// up to the live entries.
fn assert_counters_agree(ct: &Conntrack) {
    let s = &ct.stats;
    assert_eq!(
        s.new,
        ct.len() as u64 + s.expired + s.evicted + s.cut + s.flushed,
        "{s:?}"
    );
    assert_eq!(
        ct.by_state.iter().map(|&n| n as usize).sum::<usize>(),
        ct.len()
    );
}

#[test]
fn flushing_one_zone_leaves_the_other_and_the_counters_agree() {
    let mut ct = table(4);
    // Some not yet established, so they sit on the eviction list too.
    for i in 10..13 {
        ct.insert(&tcp(3, i), SYN_SENT, 0, 7, 0).unwrap();
    }
    assert_eq!(ct.flush(Some(3)), 7);
    assert_eq!(ct.stats.flushed, 7);
    assert_eq!(ct.len(), 4);
    assert_eq!(ct.by_state[SYN_SENT as usize], 0);
    assert_counters_agree(&ct);
    for i in 0..4 {
        assert_eq!(ct.lookup(&tcp(3, i), 1), None);
        assert!(ct.lookup(&tcp(9, i), 1).is_some());
        assert!(ct.lookup(&tcp(9, i).reverse(), 1).is_some());
    }
    // The gauges the control side reads follow.
    let c = crate::counters::CoreCounters::new(0, 0);
    c.conntrack.store(&ct);
    let t = crate::counters::totals(&[Arc::new(c)], 0);
    let get = |n: &str| t.conntrack.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!((get("flushed"), get("entries")), (7, 4));
}

#[test]
fn the_table_works_after_a_flush() {
    let mut ct = Conntrack::new(8, Timeouts::default(), true);
    for round in 0..3 {
        // Fill it whole: every slot freed by the flush is reusable.
        let keys: Vec<Key> = (0..8).map(|i| tcp(3, i + round * 100)).collect();
        let idx: Vec<u32> = keys
            .iter()
            .map(|k| ct.insert(k, SYN_SENT, 0, 1, 0).unwrap())
            .collect();
        for (k, &i) in keys.iter().zip(&idx) {
            assert_eq!(ct.lookup(k, 1), Some((i, 0)));
            assert_eq!(ct.lookup(&k.reverse(), 1), Some((i, 1)));
        }
        assert_eq!(ct.flush(None), 8);
        assert!(ct.is_empty());
        for k in &keys {
            assert_eq!(ct.lookup(k, 1), None);
        }
        assert_counters_agree(&ct);
    }
    // Evicting still works: the unestablished list was emptied, not corrupted.
    for i in 0..9 {
        ct.insert(&tcp(3, 1000 + i), SYN_SENT, 0, 1, 0).unwrap();
    }
    assert_eq!((ct.len(), ct.stats.evicted), (8, 1));
    assert_eq!(ct.lookup(&tcp(3, 1000), 1), None);
    assert_counters_agree(&ct);
}

#[test]
fn translated_entries_are_flushed_under_both_keys_and_their_peers_stay_safe() {
    let mut ct = Conntrack::new(16, Timeouts::default(), true);
    let orig = Key::v4(0x8001, PROTO_TCP, 0x0a00_0005, 0x6440_0009, 40000, 443);
    let reply = Key::v4(0x8001, PROTO_TCP, 0x6440_0009, 0xcb00_710b, 443, 1024);
    let nat = ct
        .insert_nat(&orig, &reply, ESTABLISHED, flag::ASSURED | flag::LIBERAL, 0)
        .unwrap();
    // The same connection in the instance's zone, linked to the translation.
    let inst = ct
        .insert(&orig.with_zone(3), ESTABLISHED, flag::ASSURED, 1, 0)
        .unwrap();
    ct.link_peers(inst, nat);
    assert_eq!(ct.flush(Some(0x8001)), 1);
    assert_eq!(ct.lookup(&orig, 1), None);
    assert_eq!(ct.lookup(&reply, 1), None);
    // The peer hint now leads to a free slot: refused by key, never followed.
    assert_eq!(ct.peer_lookup(inst, &reply, 1), None);
    // The slot is reused by another connection: still not taken for the old one.
    let other = ct
        .insert(&tcp(9, 1), ESTABLISHED, flag::ASSURED, 1, 0)
        .unwrap();
    assert_eq!(other, nat);
    assert_eq!(ct.peer_lookup(inst, &reply, 1), None);
    // The reply port is free for a new translation.
    let again = ct
        .insert_nat(&orig, &reply, SYN_SENT, flag::LIBERAL, 0)
        .unwrap();
    assert_eq!(ct.lookup(&reply, 1), Some((again, 1)));
    assert_eq!(ct.lookup(&orig, 1), Some((again, 0)));
    assert_counters_agree(&ct);
}
