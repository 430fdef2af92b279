//! What the control plane asks of the running data plane: list and flush the workers'
//! connection tables, capture a port's traffic. Every method takes `&self` and may be called
//! from any thread (the REST control plane runs them in `spawn_blocking`); each waits at most
//! its `timeout`, so a stopped worker is an error, never a hang.
use super::capture::{collect, Capture};
use super::Daemon;
use crate::runtime::capture::tsc_to_unix_ns;
use crate::runtime::requests::{ask_all, Answer, CtView, Request};
use crate::tables::Tables;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vswitch_ffi::eal;

/// How long the end of a capture waits for the workers to finish their round.
const QUIESCE_WAIT: Duration = Duration::from_millis(100);

// The control plane shares one `Daemon` between threads.
const _: fn() = || {
    fn sync<T: Sync + Send>() {}
    sync::<Daemon>();
};

impl Daemon {
    /// The live connections of every worker core (of `zone` only, when given): at most
    /// `limit` in all (each worker lists at most `limit`), in worker order, each with the
    /// port or router its zone belongs to under the current tables.
    pub fn conntrack_list(
        &self,
        zone: Option<u16>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<CtView>, String> {
        let replies = ask_all(
            &self.mailboxes,
            Request::ConntrackList { zone, limit },
            timeout,
        )
        .map_err(|e| format!("conntrack list: {e}"))?;
        let t = self.publisher.current();
        let mut out: Vec<CtView> = replies
            .into_iter()
            .flat_map(|r| match r.answer {
                Answer::Conntrack(v) => v,
                Answer::Flushed(_) => Vec::new(),
            })
            .take(limit)
            .collect();
        for v in &mut out {
            name_zone(&t, v);
        }
        Ok(out)
    }

    /// Removes the connections of every worker core (of `zone` only, when given). Returns
    /// how many.
    pub fn conntrack_flush(&self, zone: Option<u16>, timeout: Duration) -> Result<u64, String> {
        let flushed = |rs: &[crate::runtime::requests::Reply]| -> u64 {
            rs.iter()
                .map(|r| match r.answer {
                    Answer::Flushed(n) => n,
                    Answer::Conntrack(_) => 0,
                })
                .sum()
        };
        match ask_all(&self.mailboxes, Request::ConntrackFlush { zone }, timeout) {
            Ok(rs) => Ok(flushed(&rs)),
            Err(e) => Err(format!(
                "conntrack flush: {e}; the workers that answered removed {} connections",
                flushed(&e.answered)
            )),
        }
    }

    /// Captures up to `count` frames of port `port` (received on it and transmitted on it),
    /// cut at `snaplen` bytes, for at most `timeout`, into a pcap file. One capture at a time.
    pub fn capture(
        &self,
        port: &str,
        count: usize,
        snaplen: usize,
        timeout: Duration,
    ) -> Result<Capture, String> {
        let names = self.port_names();
        let Some(pi) = names.iter().position(|n| n == port) else {
            return Err(format!(
                "capture: no port {port:?}; the ports are: {}",
                names.join(", ")
            ));
        };
        if count == 0 {
            return Err("capture: count must be at least 1".into());
        }
        let deadline = Instant::now() + timeout;
        let hz = eal::tsc_hz();
        let tsc0 = eal::tsc();
        let wall0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let session = self
            .tap
            .start(pi as u16, count, snaplen)
            .map_err(|e| format!("capture: {e}"))?;
        Ok(collect(
            &session,
            count,
            deadline,
            &self.stop,
            |tsc| tsc_to_unix_ns(tsc, tsc0, wall0, hz),
            || self.wait_rounds(QUIESCE_WAIT),
        ))
    }

    /// Waits until every worker has ended the round it was in (its epoch moved on twice, as
    /// the table publisher waits), or `max` has passed (a stopped worker never moves on).
    fn wait_rounds(&self, max: Duration) {
        let until = Instant::now() + max;
        let marks: Vec<u64> = self
            .cores
            .iter()
            .map(|c| c.epoch.load(Ordering::Acquire))
            .collect();
        while Instant::now() < until
            && self
                .cores
                .iter()
                .zip(&marks)
                .any(|(c, m)| c.epoch.load(Ordering::Acquire) < m.wrapping_add(2))
        {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Fills in which port (security-group zone) or router (SNAT zone) a connection's zone is.
fn name_zone(t: &Tables, v: &mut CtView) {
    if crate::tables::router::is_snat_zone(v.zone) {
        v.router =
            t.l3.routers
                .iter()
                .find(|r| r.snat.is_some_and(|s| s.zone == v.zone))
                .map(|r| r.name.clone());
    } else {
        v.port = t
            .ports
            .iter()
            .find(|p| p.firewall.as_ref().is_some_and(|f| f.zone == v.zone))
            .map(|p| p.name.clone());
    }
}
