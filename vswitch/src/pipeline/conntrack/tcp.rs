//! TCP state and window tracking: RFC 793's states as Linux's `nf_conntrack_proto_tcp` tracks
//! them from the middle of the path, and Guido van Rooij's sequence/window check ("Real
//! Stateful TCP Packet Filtering in IP Filter"), which Linux and OVS also use: a segment is in
//! window when its sequence range fits what the receiver advertised and its acknowledgement
//! does not run ahead of what the other side sent.
use super::state::*;
use super::TcpPeer;

/// TCP header flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// What the tracker needs of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    pub flags: u8,
    /// Payload bytes.
    pub len: u32,
    /// Window-scale option (SYN only), else 255.
    pub wscale: u8,
}

impl Segment {
    /// Sequence space the segment occupies, end exclusive: payload + SYN + FIN.
    #[inline(always)]
    fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.len)
            .wrapping_add((self.flags & SYN != 0) as u32)
            .wrapping_add((self.flags & FIN != 0) as u32)
    }
}

/// Flag combinations a TCP never sends (Linux's `tcp_valid_flags`, ECN/PSH/URG ignored).
#[inline]
pub fn valid_flags(flags: u8) -> bool {
    match flags & (FIN | SYN | RST | ACK) {
        x if x == SYN || x == SYN | ACK => true,
        x if x == RST || x == RST | ACK => true,
        x if x == FIN | ACK || x == ACK => true,
        _ => false,
    }
}

/// Whether a segment may open a connection: a SYN without ACK.
#[inline(always)]
pub fn opens(flags: u8) -> bool {
    flags & (SYN | ACK | RST | FIN) == SYN
}

const IV: u8 = 0xfe; // invalid
const IG: u8 = 0xff; // ignore (accept, change nothing)
const S0: u8 = IV; // state 0 ("none") never appears in a live entry

/// Segment classes: the rows of the transition table.
const C_SYN: usize = 0;
const C_SYNACK: usize = 1;
const C_FIN: usize = 2;
const C_ACK: usize = 3;
const C_RST: usize = 4;

#[inline(always)]
fn class(flags: u8) -> usize {
    if flags & RST != 0 {
        C_RST
    } else if flags & SYN != 0 {
        if flags & ACK != 0 {
            C_SYNACK
        } else {
            C_SYN
        }
    } else if flags & FIN != 0 {
        C_FIN
    } else {
        C_ACK
    }
}

/// `NEXT[dir][class][state]`: the state after a segment (columns: none, SYN_SENT, SYN_RECV,
/// ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2).
const NEXT: [[[u8; 10]; 5]; 2] = [
    // Original direction (the side that opened).
    [
        // SYN: retransmission in SYN_SENT, re-open after TIME_WAIT / CLOSE.
        [
            S0, SYN_SENT, IG, IG, IG, IG, IG, SYN_SENT, SYN_SENT, SYN_SENT2,
        ],
        // SYN-ACK from the opener: only in a simultaneous open.
        [S0, IV, SYN_RECV, IV, IV, IV, IV, IV, IV, SYN_RECV],
        // FIN
        [
            S0, IV, FIN_WAIT, FIN_WAIT, LAST_ACK, LAST_ACK, LAST_ACK, TIME_WAIT, CLOSE, IV,
        ],
        // ACK: the third step of the handshake establishes.
        [
            S0,
            IV,
            ESTABLISHED,
            ESTABLISHED,
            CLOSE_WAIT,
            CLOSE_WAIT,
            TIME_WAIT,
            TIME_WAIT,
            CLOSE,
            IV,
        ],
        // RST
        [
            S0, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE,
        ],
    ],
    // Reply direction.
    [
        // SYN from the responder: simultaneous open; after TIME_WAIT the roles may swap.
        [S0, SYN_SENT2, IV, IV, IV, IV, IV, SYN_SENT, IV, SYN_SENT2],
        // SYN-ACK: the second step; retransmissions later are ignored.
        [S0, SYN_RECV, IG, IG, IG, IG, IG, IG, IG, SYN_RECV],
        // FIN
        [
            S0, IV, FIN_WAIT, FIN_WAIT, LAST_ACK, LAST_ACK, LAST_ACK, TIME_WAIT, CLOSE, IV,
        ],
        // ACK
        [
            S0,
            IG,
            SYN_RECV,
            ESTABLISHED,
            CLOSE_WAIT,
            CLOSE_WAIT,
            TIME_WAIT,
            TIME_WAIT,
            CLOSE,
            IG,
        ],
        // RST
        [
            S0, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE, CLOSE,
        ],
    ],
];

/// Outcome of one segment on a tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted; the connection is now in this state.
    Ok(u8),
    /// Accepted without changing anything (a retransmitted SYN-ACK, a SYN on an established
    /// connection).
    Ignored,
    /// Not valid for this connection: dropped and counted.
    Invalid,
}

#[inline(always)]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// Largest window assumed before one was seen (Linux's MAXACKWINCONST).
const MAX_ACK_WIN_CONST: u32 = 66000;

/// Initialises the opener's side from its SYN (a new connection).
pub fn open(peers: &mut [TcpPeer; 2], seg: &Segment) {
    let end = seg.end();
    peers[0] = TcpPeer {
        end,
        maxend: end,
        maxwin: (seg.win as u32).max(1),
        scale: 0,
        wscale_opt: seg.wscale,
    };
    peers[1] = TcpPeer::default();
}

/// Initialises both sides from a segment of an established connection first seen mid-stream
/// (liberal zones only).
pub fn pick_up(peers: &mut [TcpPeer; 2], seg: &Segment) {
    let end = seg.end();
    let win = (seg.win as u32).max(1);
    peers[0] = TcpPeer {
        end,
        maxend: end.wrapping_add(win),
        maxwin: win,
        scale: 0,
        wscale_opt: 255,
    };
    peers[1] = TcpPeer {
        end: seg.ack,
        maxend: seg.ack,
        maxwin: 0,
        scale: 0,
        wscale_opt: 255,
    };
}

/// One segment in direction `dir` (0 original, 1 reply) of a connection in `state`. Updates
/// the window tracking unless `liberal`, and returns the verdict. A SYN on a connection in
/// TIME_WAIT or CLOSE is a new connection: the caller removes the old entry and opens one
/// (judged by the rules again) instead of calling this.
pub fn track(
    state: u8,
    dir: u8,
    peers: &mut [TcpPeer; 2],
    seg: &Segment,
    liberal: bool,
) -> Verdict {
    if !valid_flags(seg.flags) {
        return Verdict::Invalid;
    }
    let d = (dir & 1) as usize;
    let next = NEXT[d][class(seg.flags)]
        .get(state as usize)
        .copied()
        .unwrap_or(IV);
    if next == IV {
        return Verdict::Invalid;
    }
    if next == IG {
        return Verdict::Ignored;
    }
    if !liberal && !in_window::<false>(state, d, peers, seg, None) {
        return Verdict::Invalid;
    }
    Verdict::Ok(next)
}

/// What [`track`] does for a segment the caller has seen is an ACK without SYN, FIN or RST on
/// an ESTABLISHED, non-liberal connection (the state stays ESTABLISHED; the firewall's fast
/// path takes nearly every segment this way): the window check and update, with the
/// handshake and RST branches compiled out. Whether it is in window.
#[inline(always)]
pub fn plain_ack_in_window(dir: u8, peers: &mut [TcpPeer; 2], seg: &Segment) -> bool {
    in_window::<true>(ESTABLISHED, (dir & 1) as usize, peers, seg, None)
}

/// [`plain_ack_in_window`] for two entries of one connection whose tracking is the same
/// (`twin == peers`: the sender's zone and the receiver's on one host, where the same
/// segment is checked twice): the check is a function of the tracking and the segment, so it
/// runs once and what it moved is written to both. If it fails, `peers` may have changed
/// (as with [`plain_ack_in_window`]) and `twin` has not.
#[inline(always)]
pub fn plain_ack_in_window_twice(
    dir: u8,
    peers: &mut [TcpPeer; 2],
    twin: &mut [TcpPeer; 2],
    seg: &Segment,
) -> bool {
    in_window::<true>(ESTABLISHED, (dir & 1) as usize, peers, seg, Some(twin))
}

/// The sequence/window check, updating both sides' tracking when the segment passes.
/// `PLAIN_ACK`: the caller knows the segment is an ACK without SYN, FIN or RST on an
/// established connection, and the branches for the other cases drop out. `twin`: tracking
/// equal to `peers` before the check, given what `peers` ends with when it passes, field by
/// field from the values just computed (a whole copy read back from `peers` would stall on
/// store-to-load forwarding).
#[inline(always)]
fn in_window<const PLAIN_ACK: bool>(
    state: u8,
    d: usize,
    peers: &mut [TcpPeer; 2],
    seg: &Segment,
    twin: Option<&mut [TcpPeer; 2]>,
) -> bool {
    let (a, b) = peers.split_at_mut(1);
    let (sender, receiver) = if d == 0 {
        (&mut a[0], &mut b[0])
    } else {
        (&mut b[0], &mut a[0])
    };
    let flags = if PLAIN_ACK { ACK } else { seg.flags };
    let state = if PLAIN_ACK { ESTABLISHED } else { state };
    let seq = seg.seq;
    let mut ack = seg.ack;
    let mut win = seg.win as u32;
    let end = if PLAIN_ACK {
        seq.wrapping_add(seg.len)
    } else {
        seg.end()
    };
    let syn = flags & SYN != 0;

    if sender.maxwin == 0 {
        // The first segment of this direction.
        if syn {
            sender.end = end;
            sender.maxend = end;
            sender.maxwin = win.max(1);
            sender.wscale_opt = seg.wscale;
            // RFC 7323 2.2: scaling applies only when both SYNs offered it.
            if sender.wscale_opt != 255 && receiver.wscale_opt != 255 {
                sender.scale = sender.wscale_opt.min(14);
                receiver.scale = receiver.wscale_opt.min(14);
            } else {
                sender.scale = 0;
                receiver.scale = 0;
            }
        } else {
            sender.end = end;
            let swin = win << sender.scale;
            sender.maxwin = swin.max(1);
            sender.maxend = end.wrapping_add(sender.maxwin);
            if receiver.maxwin == 0 {
                receiver.end = ack;
                receiver.maxend = ack;
            }
        }
    } else if ((state == SYN_SENT && d == 0) || (state == SYN_RECV && d == 1))
        && after(end, sender.end)
    {
        // A SYN (or SYN-ACK) sent again with a new initial sequence number.
        sender.end = end;
        sender.maxend = end;
        sender.maxwin = win.max(1);
        sender.wscale_opt = seg.wscale;
    }

    if flags & ACK == 0 || (flags & RST != 0 && ack == 0) {
        // No acknowledgement (or a broken stack's RST|ACK with ack 0): pretend it acked all.
        ack = receiver.end;
    }
    let (seq, end) = if flags & RST != 0 && seq == 0 && state == SYN_SENT {
        // A RST answering a SYN carries no sequence number of its own.
        (sender.end, sender.end)
    } else {
        (seq, end)
    };

    let max_ack_win = if sender.maxwin != 0 {
        sender.maxwin
    } else {
        MAX_ACK_WIN_CONST
    };
    let in_recv_win = receiver.maxwin == 0
        || after(
            end,
            sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1),
        );
    let ok = before(seq, sender.maxend.wrapping_add(1))
        && in_recv_win
        && before(ack, receiver.end.wrapping_add(1))
        && after(ack, receiver.end.wrapping_sub(max_ack_win).wrapping_sub(1));
    if !ok {
        return false;
    }
    if !syn {
        win <<= sender.scale;
    }
    if sender.maxwin < win {
        sender.maxwin = win;
    }
    if after(end, sender.end) {
        sender.end = end;
    }
    if receiver.maxwin != 0 && after(end, sender.maxend) {
        receiver.maxwin = receiver
            .maxwin
            .wrapping_add(end.wrapping_sub(sender.maxend));
    }
    let edge = ack.wrapping_add(win);
    if after(edge, receiver.maxend.wrapping_sub(1)) {
        receiver.maxend = edge;
        if win == 0 {
            receiver.maxend = receiver.maxend.wrapping_add(1);
        }
    }
    if let Some(t) = twin {
        let (ts, tr) = if d == 0 { (0, 1) } else { (1, 0) };
        t[ts].end = sender.end;
        t[ts].maxend = sender.maxend;
        t[ts].maxwin = sender.maxwin;
        t[ts].scale = sender.scale;
        t[ts].wscale_opt = sender.wscale_opt;
        t[tr].end = receiver.end;
        t[tr].maxend = receiver.maxend;
        t[tr].maxwin = receiver.maxwin;
        t[tr].scale = receiver.scale;
        t[tr].wscale_opt = receiver.wscale_opt;
    }
    true
}

/// Whether a state means the handshake completed (the connection is established for the
/// purposes of eviction and the `established` gauge).
#[inline(always)]
pub fn is_established(state: u8) -> bool {
    matches!(state, ESTABLISHED | FIN_WAIT | CLOSE_WAIT | LAST_ACK)
}
