//! A capture end to end without EAL: a fake worker thread copies bursts of real frames, the
//! control side drains them into a pcap, which an independent parser (and tshark, where
//! installed) reads back.
use super::*;
use crate::control::pcap;
use crate::packet::TestBuf;
use crate::runtime::capture::{Dir, Tap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const PORT: u16 = 1;
/// The destination port of the transmitted frames (received ones count up from 0).
const TX_PORT: u16 = 9999;
const T0: u64 = 1_700_000_000_000_000_000;

/// A UDP frame to port `dport`, `payload` bytes of payload.
fn udp(dport: u16, payload: usize) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1000, dport);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0x5a; payload]).unwrap();
    out
}

/// A fake worker: every 100 µs, one rx burst of two frames on `PORT` (to UDP ports 2r and
/// 2r + 1 in round r), the same on port 0 (not captured), and one tx burst of one frame on
/// `PORT`; the TSC stamp counts bursts. It reads the armed word once per round, as the poll
/// loop does, so a capture starts at a round's first burst.
fn worker(tap: Arc<Tap>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let a = tap.armed();
            let rx = [
                Some(TestBuf::new(&udp(2 * round as u16, 18))),
                Some(TestBuf::new(&udp(2 * round as u16 + 1, 1400))),
            ];
            tap.burst(a, PORT, Dir::Rx, &rx, || round * 2);
            tap.burst(a, 0, Dir::Rx, &rx, || round * 2);
            let tx = [Some(TestBuf::new(&udp(TX_PORT, 18)))];
            tap.burst(a, PORT, Dir::Tx, &tx, || round * 2 + 1);
            round += 1;
            std::thread::sleep(Duration::from_micros(100));
        }
        round
    })
}

/// Runs a capture of `count` frames against the fake worker: one TSC tick is 1 µs.
fn capture(count: usize, snaplen: usize) -> Capture {
    let tap = Arc::new(Tap::default());
    let stop = Arc::new(AtomicBool::new(false));
    let w = worker(tap.clone(), stop.clone());
    let s = tap.start(PORT, count, snaplen).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut w = Some(w);
    let c = collect(
        &s,
        count,
        deadline,
        &std::sync::atomic::AtomicBool::new(false),
        |tsc| T0 + tsc * 1000,
        || {
            stop.store(true, Ordering::Relaxed);
            w.take().unwrap().join().unwrap();
        },
    );
    assert!(w.is_none(), "quiesce was called");
    c
}

#[test]
fn a_capture_stops_at_its_count_and_reads_back_frame_by_frame() {
    let c = capture(30, 256);
    assert_eq!(c.packets, 30);
    let (snaplen, linktype, recs) = pcap::read(&c.pcap).unwrap();
    assert_eq!(
        (snaplen, linktype, recs.len()),
        (256, pcap::LINKTYPE_ETHERNET, 30)
    );
    let mut dports = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        // Every frame parses (leniently: the big ones were cut at the snapshot length, so
        // their IPv4 length runs past the end).
        let p = etherparse::LaxSlicedPacket::from_ethernet(r.data).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("frame {i} has no UDP header: {:?}", p.stop_err);
        };
        let cut = r.data.len() == 256;
        assert_eq!(
            r.orig_len as usize,
            14 + 20 + 8 + if cut { 1400 } else { 18 }
        );
        dports.push(u.destination_port());
    }
    // Whole rounds: two received frames (from the first round the capture saw, with ports
    // r0 and r0 + 1, on) and the transmitted one; port 0's frames never. Each stamped with
    // its burst's TSC (round * 2 received, + 1 sent), one tick a microsecond.
    let r0 = dports[0];
    for (i, (&d, r)) in dports.iter().zip(&recs).enumerate() {
        let (round, k) = (r0 / 2 + i as u16 / 3, i % 3);
        let (want, tsc) = if k == 2 {
            (TX_PORT, round as u64 * 2 + 1)
        } else {
            (2 * round + k as u16, round as u64 * 2)
        };
        assert_eq!(d, want, "frame {i}: {dports:?}");
        assert_eq!(r.ts_ns, T0 + tsc * 1000, "frame {i}");
    }
    // (Drops are possible after the first `count` frames, when this thread is descheduled
    // and the slots run out, never before: there is a slot for each of the first `count`.)
}

#[test]
fn a_capture_without_traffic_ends_at_its_deadline_with_an_empty_file() {
    let tap = Tap::default();
    let s = tap.start(PORT, 10, 128).unwrap();
    let t0 = Instant::now();
    let mut quiesced = false;
    let c = collect(
        &s,
        10,
        t0 + Duration::from_millis(30),
        &std::sync::atomic::AtomicBool::new(false),
        |t| t,
        || quiesced = true,
    );
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert!(quiesced);
    assert_eq!(
        (c.packets, c.dropped, c.pcap.len()),
        (0, 0, pcap::FILE_HEADER_LEN)
    );
    assert_eq!(pcap::read(&c.pcap).unwrap().2.len(), 0);
}

#[test]
fn a_capture_ends_when_the_daemon_stops() {
    let tap = Tap::default();
    let s = tap.start(PORT, 10, 128).unwrap();
    let t0 = Instant::now();
    let mut quiesced = false;
    let c = collect(
        &s,
        10,
        t0 + Duration::from_secs(600),
        &std::sync::atomic::AtomicBool::new(true),
        |t| t,
        || quiesced = true,
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "waited for the deadline"
    );
    assert!(quiesced, "the workers were disarmed");
    assert_eq!(c.packets, 0);
}

#[test]
fn tshark_reads_the_capture() {
    let Ok(out) = std::process::Command::new("tshark").arg("-v").output() else {
        println!("note: tshark is not installed; skipping the tshark check");
        return;
    };
    assert!(out.status.success());
    let c = capture(12, 128);
    let path = std::env::temp_dir().join(format!("vswitch-capture-{}.pcap", std::process::id()));
    std::fs::write(&path, &c.pcap).unwrap();
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(&path)
        .args(["-T", "fields", "-e", "udp.dstport", "-e", "frame.len"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}");
    let fields: Vec<(u16, u32)> = lines
        .iter()
        .map(|l| {
            let (d, n) = l.split_once('\t').unwrap();
            (d.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    let r0 = fields[0].0;
    assert_eq!(
        &fields[..3],
        &[(r0, 60), (r0 + 1, 1442), (TX_PORT, 60)],
        "{text}"
    );
}
