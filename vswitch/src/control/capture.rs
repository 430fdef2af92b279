//! The control side of a capture: drains the slots the workers fill
//! ([`crate::runtime::capture`]) into a pcap file in memory.
use super::pcap::PcapWriter;
use crate::runtime::capture::Session;
use std::time::{Duration, Instant};

/// A finished capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// A classic pcap file (nanosecond timestamps, Ethernet).
    pub pcap: Vec<u8>,
    /// Frames in it.
    pub packets: usize,
    /// Frames the workers could not copy for want of a free slot (the capture could not keep
    /// up; a smaller snaplen or a shorter burst of traffic helps).
    pub dropped: u64,
}

/// The longest pause between two looks at the filled slots.
const MAX_PAUSE: Duration = Duration::from_millis(1);

/// Writes the frames of capture `s` into a pcap until `count` frames, `deadline` or `stop`
/// (the daemon shutting down), then
/// disarms the workers, calls `quiesce` (which returns once every worker has finished the
/// round it was in, or gives up) and takes the frames copied meanwhile, still up to `count`.
/// `to_ns` turns a frame's TSC stamp into nanoseconds since the Unix epoch. Frames appear in
/// the order the workers finished copying them (two workers' frames may interleave a little
/// out of time order, which pcap readers accept).
pub fn collect(
    s: &Session<'_>,
    count: usize,
    deadline: Instant,
    stop: &std::sync::atomic::AtomicBool,
    to_ns: impl Fn(u64) -> u64,
    quiesce: impl FnOnce(),
) -> Capture {
    let mut w = PcapWriter::new(s.snaplen() as u32);
    let mut packets = 0;
    let take = |w: &mut PcapWriter, packets: &mut usize| -> bool {
        let mut any = false;
        while *packets < count {
            let Some(f) = s.take() else { break };
            w.record(to_ns(f.tsc), f.orig_len, f.bytes());
            *packets += 1;
            s.recycle(f);
            any = true;
        }
        any
    };
    let mut pause = Duration::from_micros(50);
    loop {
        if take(&mut w, &mut packets) {
            pause = Duration::from_micros(50);
        }
        let now = Instant::now();
        if packets >= count || now >= deadline || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
    s.disarm();
    quiesce();
    take(&mut w, &mut packets);
    Capture {
        pcap: w.finish(),
        packets,
        dropped: s.dropped(),
    }
}

#[cfg(test)]
#[path = "capture_tests.rs"]
mod tests;
