//! The capture slots, driven from the worker side with heap test buffers.
use super::*;
use crate::packet::TestBuf;

fn frames(lens: &[usize]) -> Vec<Option<TestBuf>> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| Some(TestBuf::new(&vec![i as u8 + 1; n])))
        .collect()
}

#[test]
fn frames_are_copied_whole_or_cut_at_snaplen_with_their_length_direction_and_stamp() {
    let tap = Tap::default();
    let s = tap.start(2, 8, 128).unwrap();
    let a = tap.armed();
    assert_eq!(a.port(), Some(2));
    let mut burst = frames(&[60, 200]);
    burst.insert(1, None);
    tap.burst(a, 2, Dir::Rx, &burst, || 777);
    tap.burst(a, 2, Dir::Tx, &frames(&[90]), || 888);
    let f = s.take().unwrap();
    assert_eq!(
        (f.dir, f.tsc, f.orig_len, f.bytes()),
        (Dir::Rx, 777, 60, &[1u8; 60][..])
    );
    s.recycle(f);
    let f = s.take().unwrap();
    assert_eq!((f.orig_len, f.len, f.bytes()[0]), (200, 128, 2));
    let f = s.take().unwrap();
    assert_eq!((f.dir, f.tsc, f.orig_len), (Dir::Tx, 888, 90));
    assert!(s.take().is_none());
    assert_eq!(s.dropped(), 0);
}

#[test]
fn no_free_slot_is_a_counted_drop_never_a_wait() {
    let tap = Tap::default();
    let s = tap.start(0, 2, 64).unwrap();
    let a = tap.armed();
    tap.burst(a, 0, Dir::Rx, &frames(&[60; 5]), || 1);
    assert_eq!(s.dropped(), 3);
    // One slot given back: the next frame is captured, the one after dropped.
    let f = s.take().unwrap();
    s.recycle(f);
    tap.burst(a, 0, Dir::Tx, &frames(&[60; 2]), || 2);
    assert_eq!(s.dropped(), 4);
    let got: Vec<u64> = std::iter::from_fn(|| s.take()).map(|f| f.tsc).collect();
    assert_eq!(got, [1, 2]);
}

/// The poll loop's whole cost when nothing is captured: [`Tap::armed`] once per round (one
/// relaxed load), and per rx or tx burst [`Tap::burst`]'s compare of the port index. This
/// checks that the compare really stops there: no clock read, no queue touched.
#[test]
fn a_disarmed_tap_or_another_port_touches_nothing() {
    let tap = Tap::default();
    assert_eq!(tap.armed(), Armed::OFF);
    for p in [0, 1, u16::MAX] {
        assert!(!Armed::OFF.on(p));
    }
    let s = tap.start(1, 4, 64).unwrap();
    let a = tap.armed();
    let clock = || -> u64 { panic!("the clock is read only for the armed port") };
    tap.burst(Armed::OFF, 1, Dir::Rx, &frames(&[60]), clock);
    tap.burst(a, 0, Dir::Rx, &frames(&[60]), clock);
    tap.burst(a, 2, Dir::Tx, &frames(&[60]), clock);
    assert_eq!((tap.free.len(), tap.filled.len(), s.dropped()), (4, 0, 0));
    drop(s);
    assert_eq!(tap.armed(), Armed::OFF);
    assert_eq!((tap.free.len(), tap.filled.len()), (0, 0));
}

#[test]
fn one_capture_at_a_time() {
    let tap = Tap::default();
    let s = tap.start(0, 4, 64).unwrap();
    let e = tap.start(1, 4, 64).err().unwrap();
    assert!(e.contains("already running"), "{e}");
    assert_eq!(tap.armed().port(), Some(0));
    drop(s);
    assert!(tap.start(1, 4, 64).is_ok());
}

#[test]
fn frames_of_an_earlier_capture_are_never_reported() {
    let tap = Tap::default();
    let first = tap.start(3, 4, 64).unwrap();
    let stale = tap.armed();
    drop(first);
    let s = tap.start(3, 4, 64).unwrap();
    let a = tap.armed();
    assert_ne!(a, stale);
    // A worker still in the round where it read the first capture's word.
    tap.burst(stale, 3, Dir::Rx, &frames(&[60]), || 1);
    assert!(s.take().is_none());
    // The slot went back to the free queue: all four are there for this capture.
    assert_eq!(tap.free.len(), 4);
    tap.burst(a, 3, Dir::Rx, &frames(&[60]), || 2);
    assert_eq!(s.take().map(|f| f.tsc), Some(2));
}

#[test]
fn slots_are_bounded_and_freed_when_the_capture_ends() {
    let tap = Tap::default();
    let s = tap.start(0, 1_000_000, MAX_SNAPLEN).unwrap();
    assert_eq!(tap.free.len(), MAX_SLOT_BYTES / MAX_SNAPLEN);
    drop(s);
    let s = tap.start(0, 1_000_000, 1).unwrap();
    assert_eq!((tap.free.len(), s.snaplen()), (MAX_SLOTS, 64));
    // A slot a late worker gives back after the end is freed by the next start.
    let late = tap.armed();
    let held = tap.free.pop().unwrap();
    drop(s);
    let _ = tap.filled.push(held);
    let s = tap.start(0, 2, 64).unwrap();
    assert_eq!((tap.free.len(), tap.filled.len()), (2, 0));
    tap.burst(late, 0, Dir::Rx, &frames(&[60]), || 1);
    assert!(s.take().is_none());
}

#[test]
fn tsc_stamps_become_unix_nanoseconds() {
    let hz = 2_500_000_000;
    let wall0 = 1_700_000_000_000_000_000;
    assert_eq!(tsc_to_unix_ns(1000, 1000, wall0, hz), wall0);
    assert_eq!(
        tsc_to_unix_ns(1000 + hz, 1000, wall0, hz),
        wall0 + 1_000_000_000
    );
    // A stamp read on another core a little before the reference.
    assert_eq!(tsc_to_unix_ns(1000 - 25, 1000, wall0, hz), wall0 - 10);
}
