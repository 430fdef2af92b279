//! Background processes and packet captures for system tests.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::*;

/// Runs a command in the current namespace and panics unless it succeeds.
pub fn sh(args: &[&str]) -> String {
    let out = run_quiet(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A background process; killed (SIGKILL) on drop if still running.
pub struct Bg {
    pub label: String,
    pub(super) child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Bg {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process").id()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until stdout or stderr contains `needle`; false on timeout or if it exited first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let seen = |b: &Bg| b.stdout_text().contains(needle) || b.stderr_text().contains(needle);
        loop {
            if seen(self) {
                return true;
            }
            if !self.running() {
                return seen(self);
            }
            if Instant::now() > end {
                return false;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"USR1"`...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let _ = run_quiet(&["kill", &format!("-{sig}"), &pid]);
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        let mut child = self.child.take().expect("process");
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return st,
                Ok(None) if Instant::now() < end => sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} did not exit within {timeout:?}\nstdout: {}\nstderr: {}",
                        self.label,
                        self.stdout_text(),
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Sends `sig`, then waits as [`Bg::wait`].
    pub fn stop(self, sig: &str, timeout: Duration) -> ExitStatus {
        self.signal(sig);
        self.wait(timeout)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running tcpdump writing a pcap file. With `VST_VERBOSE` set in the environment,
/// [`Capture::stop`] also prints every frame.
pub struct Capture {
    pub(super) bg: Bg,
    pub(super) file: PathBuf,
}

impl Capture {
    /// Stops the capture (after letting in-flight frames land) and returns its pcap file
    /// (in the topology's directory: valid until the topology is dropped).
    pub fn stop_file(self) -> PathBuf {
        sleep(Duration::from_millis(300));
        let file = self.file.clone();
        let st = self.bg.stop("TERM", Duration::from_secs(10));
        assert!(st.success() || st.code().is_none(), "tcpdump failed: {st}");
        file
    }

    /// Stops the capture (after letting in-flight frames land) and returns one line per frame
    /// as `tcpdump -e -n -t` prints it, e.g.
    /// `fa:16:3e:00:01:11 > 02:00:00:00:01:50, ethertype 802.1Q (0x8100), length 102: vlan 101, p 0, ethertype IPv4 (0x0800), 203.0.113.11 > 203.0.113.50: ICMP echo reply, ...`.
    pub fn stop(self) -> Vec<String> {
        sleep(Duration::from_millis(300));
        let label = self.bg.label.clone();
        let st = self.bg.stop("TERM", Duration::from_secs(10));
        assert!(st.success() || st.code().is_none(), "tcpdump failed: {st}");
        let f = self.file.to_string_lossy().into_owned();
        let out = run_quiet(&["tcpdump", "-r", &f, "-e", "-n", "-t"]);
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        if std::env::var_os("VST_VERBOSE").is_some() {
            eprintln!("--- capture {label} ({} frames)", lines.len());
            for l in &lines {
                eprintln!("    {l}");
            }
        }
        lines
    }
}

/// Dissects a pcap with tshark: one `Vec` of fields per frame that matches `display_filter`
/// (`""`: every frame), in the order of `fields`. With `first_only`, a field that occurs
/// several times in a frame (outer and inner `ip.src`) gives its first (outer) occurrence;
/// otherwise all occurrences joined by `,`. IPv4 and UDP checksums are verified
/// (`ip.checksum.status`, `udp.checksum.status`: 1 good, 0 bad; UDP: 3 not present).
pub fn tshark_fields(
    pcap: &Path,
    display_filter: &str,
    fields: &[&str],
    first_only: bool,
) -> Vec<Vec<String>> {
    let f = pcap.to_string_lossy().into_owned();
    let mut args: Vec<&str> = vec![
        "tshark",
        "-n",
        "-r",
        &f,
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        if first_only {
            "occurrence=f"
        } else {
            "occurrence=a"
        },
    ];
    if !display_filter.is_empty() {
        args.extend_from_slice(&["-Y", display_filter]);
    }
    for field in fields {
        args.extend_from_slice(&["-e", field]);
    }
    let out = run_quiet(&args);
    assert!(
        out.status.success(),
        "tshark failed on {f}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}
