//! Packet capture on one port (`vswitchctl capture`): the workers copy frames into
//! preallocated slots, the control side drains them into a pcap.
//!
//! Design note.
//! - **Shared by every worker.** One [`Tap`] per daemon: an armed word, a queue of free slots
//!   and a queue of filled ones (lock-free bounded MPMC queues, allocated once at start with
//!   room for [`MAX_SLOTS`] slot handles). The slots themselves ([`Frame`], a fixed buffer of
//!   `snaplen` bytes) are allocated by the control side when it arms a capture and freed by it
//!   when the capture ends, so a worker never allocates or frees.
//! - **The worker's cost when nothing is captured.** One relaxed load of the armed word per
//!   poll round ([`Tap::armed`]), then a compare of a port index per rx burst and per tx burst;
//!   the copying is out of line ([`Tap::copy`]).
//! - **What is captured.** On the armed port, every frame received, right after the rx burst
//!   and before any stage edits it, and every frame transmitted, at the tx burst, after every
//!   stage (including the frames the tx queue then refuses, as a kernel tap sees a frame
//!   before the driver does). Up to `snaplen` bytes of the first segment each; the pcap record
//!   keeps the frame's whole length.
//! - **Never waits.** No free slot: the frame is not copied and counts as a capture drop (one
//!   shared add per burst, not per frame). A capture costs two queue operations per captured
//!   frame; it is a debugging tool and meant to be short.
//! - **Ending.** The control side clears the armed word, waits for every worker to end the
//!   round it was in (its epoch), and takes every slot back. A slot a stalled worker still
//!   holds is an owned buffer: it lands in a queue later and is freed by the next capture,
//!   never touched twice. Each capture has a sequence number in the armed word and in every
//!   frame, so a frame copied under an earlier capture is never reported by a later one.
//! - **Time.** Workers stamp the TSC once per burst; the control side turns it into
//!   nanoseconds since the epoch from a (TSC, wall clock) pair it read when arming.
use crate::packet::PacketBuf;
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Slots a capture may hold at once (the queues' size).
pub const MAX_SLOTS: usize = 4096;
/// Bytes the slots of one capture may hold together.
pub const MAX_SLOT_BYTES: usize = 16 << 20;
/// The largest snapshot length (pcap's usual maximum).
pub const MAX_SNAPLEN: usize = 65535;

/// Which way a captured frame went through the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Received on the port.
    Rx,
    /// Transmitted on the port.
    Tx,
}

/// One capture slot: a frame's first bytes and what the pcap record needs.
#[derive(Debug)]
pub struct Frame {
    /// The capture it was copied under (see [`Armed`]).
    pub seq: u64,
    /// TSC when its burst was received or sent.
    pub tsc: u64,
    /// The frame's length on the wire (all segments).
    pub orig_len: u32,
    /// Bytes copied into `data`.
    pub len: u32,
    pub dir: Dir,
    /// `snaplen` bytes, allocated when the capture was armed.
    pub data: Box<[u8]>,
}

impl Frame {
    /// The bytes captured.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }
}

/// The capture in force, as a worker read it for one round: 0 when none, else the capture's
/// sequence number (from 1) above 16 bits of port index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Armed(u64);

impl Armed {
    pub const OFF: Armed = Armed(0);

    /// The port being captured, if any.
    #[inline(always)]
    pub fn port(self) -> Option<u16> {
        (self.0 != 0).then_some(self.0 as u16)
    }

    /// Whether port `port` is being captured.
    #[inline(always)]
    pub fn on(self, port: u16) -> bool {
        self.0 != 0 && self.0 as u16 == port
    }

    fn seq(self) -> u64 {
        self.0 >> 16
    }
}

/// The capture state every worker and the control side share.
pub struct Tap {
    armed: AtomicU64,
    free: ArrayQueue<Frame>,
    filled: ArrayQueue<Frame>,
    /// Frames not captured for want of a free slot, since the capture was armed.
    dropped: AtomicU64,
    /// A capture is running (one at a time).
    busy: AtomicBool,
    /// The last capture's sequence number.
    seq: AtomicU64,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            armed: AtomicU64::new(0),
            free: ArrayQueue::new(MAX_SLOTS),
            filled: ArrayQueue::new(MAX_SLOTS),
            dropped: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            seq: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("armed", &self.armed())
            .field("free", &self.free.len())
            .field("filled", &self.filled.len())
            .finish()
    }
}

impl Tap {
    /// Worker side, once per poll round: the capture in force. One relaxed load.
    #[inline(always)]
    pub fn armed(&self) -> Armed {
        Armed(self.armed.load(Ordering::Relaxed))
    }

    /// Worker side, per rx or tx burst: copies the burst if `a` (this round's
    /// [`armed`](Self::armed)) is on for `port`. When it is not, this is a compare and a
    /// not-taken branch: `clock` is not called and no queue is touched.
    #[inline(always)]
    pub fn burst<B: PacketBuf>(
        &self,
        a: Armed,
        port: u16,
        dir: Dir,
        pkts: &[Option<B>],
        clock: impl FnOnce() -> u64,
    ) {
        if a.on(port) {
            self.copy(a, dir, pkts, clock());
        }
    }

    /// Worker side: copies the frames of one burst (`pkts`, `None` slots skipped) that went
    /// `dir` through the armed port, stamped `tsc`. Call only when `a` is on for that port.
    /// Never allocates or waits: without a free slot a frame is counted as dropped.
    #[inline(never)]
    pub fn copy<B: PacketBuf>(&self, a: Armed, dir: Dir, pkts: &[Option<B>], tsc: u64) {
        let mut dropped = 0u64;
        for p in pkts.iter().flatten() {
            let Some(mut f) = self.free.pop() else {
                dropped += 1;
                continue;
            };
            let d = p.data();
            let n = d.len().min(f.data.len());
            f.data[..n].copy_from_slice(&d[..n]);
            f.len = n as u32;
            f.orig_len = p.pkt_len() as u32;
            f.dir = dir;
            f.tsc = tsc;
            f.seq = a.seq();
            // Both queues hold every slot there is, so this cannot fail; if it did, the slot
            // would go back to the free queue rather than be freed here.
            if let Err(f) = self.filled.push(f) {
                let _ = self.free.push(f);
                dropped += 1;
            }
        }
        if dropped != 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Control side: arms a capture of port `port` with `slots` slots of `snaplen` bytes
    /// (both clamped to the limits above). Fails if a capture is already running.
    pub fn start(&self, port: u16, slots: usize, snaplen: usize) -> Result<Session<'_>, String> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err("a capture is already running; try again when it ends".into());
        }
        // Anything left from an earlier capture (a slot a stalled worker gave back late).
        while self.filled.pop().is_some() {}
        while self.free.pop().is_some() {}
        let snaplen = snaplen.clamp(64, MAX_SNAPLEN);
        let slots = slots.clamp(1, MAX_SLOTS).min(MAX_SLOT_BYTES / snaplen);
        for _ in 0..slots {
            let _ = self.free.push(Frame {
                seq: 0,
                tsc: 0,
                orig_len: 0,
                len: 0,
                dir: Dir::Rx,
                data: vec![0; snaplen].into_boxed_slice(),
            });
        }
        self.dropped.store(0, Ordering::Relaxed);
        let seq = (self.seq.fetch_add(1, Ordering::Relaxed) + 1) & ((1 << 48) - 1);
        let seq = seq.max(1);
        // Release: a worker that sees the word also sees the slots.
        self.armed.store(seq << 16 | port as u64, Ordering::Release);
        Ok(Session {
            tap: self,
            seq,
            snaplen,
        })
    }
}

/// A running capture (control side). Dropping it disarms the workers and frees the slots
/// that came back; call [`disarm`](Session::disarm) and let the workers finish their round
/// first to get every slot back.
pub struct Session<'a> {
    tap: &'a Tap,
    seq: u64,
    snaplen: usize,
}

impl Session<'_> {
    /// The snapshot length in force (after clamping).
    pub fn snaplen(&self) -> usize {
        self.snaplen
    }

    /// The next captured frame, if any. Give it back with [`recycle`](Self::recycle) once
    /// written out. Frames of an earlier capture are recycled here and skipped.
    pub fn take(&self) -> Option<Frame> {
        loop {
            let f = self.tap.filled.pop()?;
            if f.seq == self.seq {
                return Some(f);
            }
            self.recycle(f);
        }
    }

    /// Returns a slot to the workers.
    pub fn recycle(&self, f: Frame) {
        if f.data.len() == self.snaplen {
            let _ = self.tap.free.push(f);
        }
    }

    /// Frames the workers could not copy for want of a free slot so far.
    pub fn dropped(&self) -> u64 {
        self.tap.dropped.load(Ordering::Relaxed)
    }

    /// Stops the workers copying (from their next round on).
    pub fn disarm(&self) {
        self.tap.armed.store(0, Ordering::Release);
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.disarm();
        while self.tap.filled.pop().is_some() {}
        while self.tap.free.pop().is_some() {}
        self.tap.busy.store(false, Ordering::Release);
    }
}

/// Nanoseconds since the Unix epoch of TSC value `tsc`, given that the TSC read `tsc0` at
/// `wall0_ns` and runs at `hz`.
pub fn tsc_to_unix_ns(tsc: u64, tsc0: u64, wall0_ns: u64, hz: u64) -> u64 {
    let d = tsc.wrapping_sub(tsc0) as i64 as i128;
    let ns = d * 1_000_000_000 / hz.max(1) as i128;
    (wall0_ns as i128 + ns).max(0) as u64
}

#[cfg(test)]
#[path = "capture_tests.rs"]
mod tests;
