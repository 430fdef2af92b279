//! Control requests to the worker cores: one mailbox per worker.
//!
//! Design note.
//! - **Why a mailbox.** Each worker owns its connection table with no lock (rule 12), so the
//!   control side cannot read or change it. It posts a [`Request`] instead, and the worker
//!   answers it itself, between two bursts, where it holds no packet and no batch state.
//! - **The worker's cost.** One relaxed load of an `AtomicBool` per poll round
//!   ([`Mailbox::pending`]); the serving code is out of line ([`Mailbox::serve`], `#[cold]`),
//!   so an empty mailbox costs the loop a load and a not-taken branch. Answering may allocate
//!   (a listing is a `Vec`): it is a control request handled between bursts, not work per
//!   packet, and it is bounded (a listing stops at `limit` entries per core).
//! - **Posting.** A bounded lock-free queue ([`crossbeam_queue::ArrayQueue`]) holds the
//!   envelopes; the control side pushes, then sets `pending` (release). The worker clears
//!   `pending` *before* it pops, so a request posted while it serves is found either now or by
//!   the next round's check, never lost.
//! - **Replies and timeouts.** Each envelope carries a deadline and the sending half of a
//!   channel; the asker waits on the receiving half with a timeout, so a stopped worker is an
//!   error, never a hang. A worker that finds a request past its deadline drops it unanswered
//!   (the asker has already reported the timeout, so a late flush must not happen behind its
//!   back), and a reply nobody waits for any more is dropped by the channel.
use crate::pipeline::conntrack::{
    expired, flag, state, Conntrack, Key, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
use crossbeam_queue::ArrayQueue;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Requests one mailbox holds (more waiting means the worker is not answering).
pub const MAILBOX_SLOTS: usize = 16;

/// What the control side asks a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The worker's live connections (of `zone` only, when given), at most `limit`.
    ConntrackList { zone: Option<u16>, limit: usize },
    /// Remove the worker's connections (of `zone` only, when given).
    ConntrackFlush { zone: Option<u16> },
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Conntrack(Vec<CtView>),
    /// How many connections a flush removed.
    Flushed(u64),
}

/// An answer and the worker it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub core: u16,
    pub answer: Answer,
}

/// A request on its way: where to answer, and until when the answer is wanted.
struct Envelope {
    req: Request,
    deadline: Instant,
    reply: mpsc::Sender<Reply>,
}

/// One worker's mailbox, shared (`Arc`) by the control side and that worker.
pub struct Mailbox {
    /// Set after a request is posted; the worker's only per-round check.
    pending: AtomicBool,
    queue: ArrayQueue<Envelope>,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            pending: AtomicBool::new(false),
            queue: ArrayQueue::new(MAILBOX_SLOTS),
        }
    }
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .field("waiting", &self.queue.len())
            .finish()
    }
}

impl Mailbox {
    /// Worker side, once per poll round: whether a request may be waiting. One relaxed load
    /// (a plain `mov` on x86); the queue itself is only read when this says so.
    #[inline(always)]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Worker side: answers every waiting request for core `core` from its connection table
    /// `ct`, whose clock reads `now` (milliseconds, wrapping). Returns how many it answered.
    /// Called between bursts when [`pending`](Self::pending) says so.
    #[cold]
    #[inline(never)]
    pub fn serve(&self, core: u16, ct: &mut Conntrack, now: u32) -> usize {
        // Cleared before popping: a request posted from here on sets it again.
        self.pending.swap(false, Ordering::Acquire);
        let mut n = 0;
        let at = Instant::now();
        while let Some(env) = self.queue.pop() {
            if at > env.deadline {
                continue;
            }
            let answer = match env.req {
                Request::ConntrackList { zone, limit } => {
                    Answer::Conntrack(list(ct, core, zone, limit, now))
                }
                Request::ConntrackFlush { zone } => Answer::Flushed(ct.flush(zone) as u64),
            };
            // The asker may have given up (its receiver gone): nothing to do then.
            let _ = env.reply.send(Reply { core, answer });
            n += 1;
        }
        n
    }

    /// Control side: posts one request.
    fn post(&self, env: Envelope) -> Result<(), Envelope> {
        self.queue.push(env)?;
        self.pending.store(true, Ordering::Release);
        Ok(())
    }
}

/// Some workers did not answer in time: what the others said, and who is missing.
#[derive(Debug)]
pub struct NotAnswered {
    pub answered: Vec<Reply>,
    /// Worker indexes.
    pub missing: Vec<u16>,
    pub timeout: Duration,
}

impl std::fmt::Display for NotAnswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.missing.iter().map(u16::to_string).collect();
        write!(
            f,
            "worker {} did not answer within {:?} (stopped, or its mailbox is full)",
            ids.join(", "),
            self.timeout
        )
    }
}

/// Control side: asks every worker (mailbox `i` is worker `i`) and waits up to `timeout` for
/// all of them. Replies come back in worker order. Callable from any thread.
pub fn ask_all(
    mailboxes: &[Arc<Mailbox>],
    req: Request,
    timeout: Duration,
) -> Result<Vec<Reply>, NotAnswered> {
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    let mut waiting: Vec<u16> = Vec::with_capacity(mailboxes.len());
    let mut missing: Vec<u16> = Vec::new();
    for (i, m) in mailboxes.iter().enumerate() {
        let env = Envelope {
            req,
            deadline,
            reply: tx.clone(),
        };
        match m.post(env) {
            Ok(()) => waiting.push(i as u16),
            Err(_) => missing.push(i as u16),
        }
    }
    drop(tx);
    let mut answered = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => {
                waiting.retain(|&c| c != r.core);
                answered.push(r);
            }
            Err(_) => break,
        }
    }
    answered.sort_by_key(|r| r.core);
    missing.extend(waiting);
    if missing.is_empty() {
        Ok(answered)
    } else {
        missing.sort_unstable();
        Err(NotAnswered {
            answered,
            missing,
            timeout,
        })
    }
}

/// One direction of a connection, for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CtTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP and UDP ports; `None` for other protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// The ICMP echo identifier (the key holds it as both ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
}

impl CtTuple {
    fn of(k: &Key) -> CtTuple {
        let (src, dst) = k.addrs();
        let ports = matches!(k.proto(), PROTO_TCP | PROTO_UDP);
        let icmp = matches!(k.proto(), PROTO_ICMP | PROTO_ICMPV6);
        CtTuple {
            src,
            dst,
            sport: ports.then(|| k.sport()),
            dport: ports.then(|| k.dport()),
            icmp_id: icmp.then(|| k.sport()),
        }
    }
}

/// One connection entry of one worker core, as `vswitchctl conntrack list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CtView {
    /// The worker whose table holds it.
    pub core: u16,
    pub zone: u16,
    /// The instance port whose security groups track it in this zone (filled by the daemon
    /// from the current tables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The router whose centralized SNAT translates it (SNAT zones; filled by the daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// "tcp", "udp", "icmp", "icmpv6" or the protocol number.
    pub proto: String,
    pub proto_number: u8,
    /// The original direction (the first packet's).
    pub original: CtTuple,
    /// The direction replies arrive with, when translation made it differ from the original
    /// reversed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<CtTuple>,
    /// `conntrack::state::NAMES`.
    pub state: &'static str,
    /// Seconds until it expires unless a packet renews it (rounded down).
    pub expires_in_s: u32,
    pub nat: bool,
    /// Established (handshake done or reply seen): never evicted.
    pub assured: bool,
    /// Opened towards the instance (admitted by its ingress rules), else from it.
    pub ingress: bool,
    /// The security-policy version that admitted it (see `tables::secgroup`).
    pub policy_version: u32,
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Up to `limit` live connections of `ct` (of `zone` only, when given), on core `core`, at
/// time `now`. Entries past their deadline that no sweep has removed yet are left out.
pub fn list(ct: &Conntrack, core: u16, zone: Option<u16>, limit: usize, now: u32) -> Vec<CtView> {
    let mut out = Vec::with_capacity(limit.min(ct.len()));
    for (idx, k, e) in ct.iter() {
        if out.len() >= limit {
            break;
        }
        if zone.is_some_and(|z| z != k.zone()) || expired(e.expires, now) {
            continue;
        }
        let nat = e.flags & flag::NAT != 0;
        let reply = if nat {
            ct.reply_of(idx).map(|r| CtTuple::of(&r))
        } else {
            None
        };
        out.push(CtView {
            core,
            zone: k.zone(),
            port: None,
            router: None,
            proto: proto_name(k.proto()),
            proto_number: k.proto(),
            original: CtTuple::of(&k),
            reply,
            state: state::NAMES.get(e.state as usize).copied().unwrap_or("?"),
            expires_in_s: e.expires.wrapping_sub(now) / 1000,
            nat,
            assured: e.flags & flag::ASSURED != 0,
            ingress: e.flags & flag::INGRESS != 0,
            // A translation's is its birth serial (see `Conntrack::insert_nat`), no policy.
            policy_version: if nat { 0 } else { e.policy },
        });
    }
    out
}

#[cfg(test)]
#[path = "requests_tests.rs"]
mod tests;
