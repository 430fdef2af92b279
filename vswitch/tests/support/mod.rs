//! Helpers for system tests that run `vswitchd` against Linux network namespaces.
//!
//! * [`Topology`]: uniquely named namespaces (`vst-<tag>-<pid>-<role>`), veth pairs, commands
//!   inside namespaces, background processes ([`Bg`]) and packet captures ([`Capture`]).
//!   Its `Drop` tears everything down — kills every process left in its namespaces, deletes
//!   the namespaces, removes its temporary directory and DPDK runtime directory — also when the
//!   test panics. Namespaces left by an earlier run that was killed (its pid is gone) are
//!   removed when the next topology is created.
//! * [`Vswitchd`]: writes `host.toml`/`state.yaml`, starts `ip netns exec <sw> vswitchd`, waits
//!   for `vswitchd: running`, reads counters ([`Stats`], via SIGUSR1 and the `stats-json:`
//!   line) and stops it with SIGTERM, checking exit 0 and that no mbuf leaked.
//!
//! Tests need root and a working `ip netns`; [`Topology::new`] returns `None` (after printing
//! "skipped: needs root and DPDK ...") where they are missing, and the test returns early.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Prefix of every namespace these helpers create (stale ones with a dead pid are reaped).
const NS_PREFIX: &str = "vst";

/// The scapy VLAN peer script.
pub const VLAN_HOST_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/vlan_host.py");

/// The vswitchd binary built for this test run.
pub const VSWITCHD: &str = env!("CARGO_BIN_EXE_vswitchd");

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether this process can create and delete a network namespace (root and `ip netns`).
fn netns_usable() -> bool {
    let probe = format!("{NS_PREFIX}-probe-{}", std::process::id());
    let ok = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let added = ok(&["netns", "add", &probe]);
    if added {
        ok(&["netns", "del", &probe]);
    }
    added
}

/// A Python 3 interpreter that can `import scapy` (Debian's python3-scapy lives under
/// /usr/bin/python3, which a pyenv or venv `python3` earlier in PATH does not see).
pub fn python() -> &'static str {
    static PY: OnceLock<&'static str> = OnceLock::new();
    PY.get_or_init(|| {
        for cand in ["/usr/bin/python3", "python3"] {
            let ok = Command::new(cand)
                .args(["-c", "import scapy"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return cand;
            }
        }
        panic!("no python3 with scapy found (install python3-scapy)")
    })
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn run_quiet(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn list_netns() -> Vec<String> {
    let out = run_quiet(&["ip", "netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Kills every process inside `ns` (only processes our tests started live there) and deletes it.
fn destroy_netns(ns: &str) {
    for _ in 0..50 {
        let out = run_quiet(&["ip", "netns", "pids", ns]);
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            let _ = run_quiet(&["kill", "-KILL", p]);
        }
        sleep(Duration::from_millis(20));
    }
    let _ = run_quiet(&["ip", "netns", "del", ns]);
}

/// Removes namespaces of earlier runs of these tests whose process is gone (a run killed
/// before its `Drop` could clean up).
fn reap_stale() {
    for ns in list_netns() {
        let parts: Vec<&str> = ns.split('-').collect();
        if parts.len() != 4 || parts[0] != NS_PREFIX {
            continue;
        }
        let Ok(pid) = parts[2].parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            destroy_netns(&ns);
            let name = format!("{NS_PREFIX}-{}-{pid}", parts[1]);
            let _ = fs::remove_dir_all(std::env::temp_dir().join(&name));
            let _ = fs::remove_dir_all(format!("/var/run/dpdk/{name}"));
        }
    }
}

/// A set of namespaces, veths and processes that is torn down on drop.
pub struct Topology {
    /// `vst-<tag>-<pid>`: namespace prefix, also used as the DPDK `--file-prefix`.
    pub name: String,
    dir: PathBuf,
    namespaces: Vec<String>,
}

impl Topology {
    /// Creates an empty topology, or prints why system tests are skipped and returns `None`.
    /// `tag` names the test (letters and digits, at most 6, so names stay short).
    pub fn new(tag: &str) -> Option<Topology> {
        assert!(
            !tag.is_empty() && tag.len() <= 6 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "tag {tag:?}: 1..=6 letters/digits"
        );
        if !is_root() {
            eprintln!("skipped: needs root and DPDK (not running as root)");
            return None;
        }
        if !netns_usable() {
            eprintln!("skipped: needs root and DPDK (`ip netns add` does not work here)");
            return None;
        }
        reap_stale();
        let name = format!("{NS_PREFIX}-{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Some(Topology {
            name,
            dir,
            namespaces: Vec::new(),
        })
    }

    /// The temporary directory (configs, logs, captures).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates namespace `<name>-<role>` with `lo` up and returns its name.
    pub fn add_ns(&mut self, role: &str) -> String {
        let ns = format!("{}-{role}", self.name);
        destroy_netns(&ns);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair created straight inside the two namespaces (names only need to be unique
    /// within each namespace).
    pub fn veth(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) {
        assert!(
            if_a.len() <= 15 && if_b.len() <= 15,
            "interface names are at most 15 bytes"
        );
        sh(&[
            "ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
            "netns", ns_b,
        ]);
    }

    /// Attaches a new namespace `role` to the switch namespace `sw`: a veth whose switch end
    /// `sw_if` (IPv6 off, so the kernel's own ND/MLD never reaches the switch) is left for an
    /// af_packet port, and whose other end is the host's `eth0` with `mac` and `cidr`,
    /// checksum/segmentation offloads off (af_packet forwards what veth hands it verbatim).
    pub fn add_host(
        &mut self,
        role: &str,
        sw: &str,
        sw_if: &str,
        mac: &str,
        cidr: Option<&str>,
    ) -> String {
        let ns = self.add_ns(role);
        self.veth(sw, sw_if, &ns, "eth0");
        self.ok(
            sw,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{sw_if}.disable_ipv6=1"),
            ],
        );
        sh(&["ip", "-n", sw, "link", "set", sw_if, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "address", mac]);
        if let Some(c) = cidr {
            sh(&["ip", "-n", &ns, "addr", "add", c, "dev", "eth0"]);
        }
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        self.ok(
            &ns,
            &[
                "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
            ],
        );
        ns
    }

    /// Runs `args` inside `ns` and returns its output, whatever the exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}"))
    }

    /// Runs `args` inside `ns`, panics unless it succeeds, returns its stdout.
    pub fn ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.exec(ns, args);
        assert!(
            out.status.success(),
            "in {ns}: {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `args` inside `ns` in the background, stdout/stderr to `<label>.out/.err`.
    pub fn spawn(&self, ns: &str, label: &str, args: &[&str]) -> Bg {
        let stdout = self.dir.join(format!("{label}.out"));
        let stderr = self.dir.join(format!("{label}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        Bg {
            label: label.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Starts a packet capture (tcpdump, all frames) on `iface` in `ns`; returns once it is
    /// listening.
    pub fn capture(&self, ns: &str, iface: &str, label: &str) -> Capture {
        let file = self.dir.join(format!("{label}.pcap"));
        let f = file.to_string_lossy().into_owned();
        let mut bg = self.spawn(
            ns,
            label,
            &[
                "tcpdump",
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
                &f,
            ],
        );
        if !bg.wait_for("listening on", Duration::from_secs(10)) {
            panic!(
                "tcpdump on {ns}/{iface} did not start: {}",
                bg.stderr_text()
            );
        }
        Capture { bg, file }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {}: logs (tails) of the failed test ---", self.name);
            if let Ok(rd) = fs::read_dir(&self.dir) {
                let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                for p in files {
                    if p.extension().is_some_and(|e| e == "out" || e == "err") {
                        let t = fs::read_to_string(&p).unwrap_or_default();
                        let tail: Vec<&str> = t.lines().rev().take(30).collect();
                        if !tail.is_empty() {
                            eprintln!("== {}", p.display());
                            for l in tail.iter().rev() {
                                eprintln!("   {l}");
                            }
                        }
                    }
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            destroy_netns(ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/{}", self.name));
    }
}

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
    child: Option<Child>,
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
    bg: Bg,
    file: PathBuf,
}

impl Capture {
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

/// One port of the host config written by [`host_toml`].
pub struct HostPort<'a> {
    pub name: &'a str,
    /// The interface (in the switch namespace) the af_packet port attaches to.
    pub iface: &'a str,
    /// `instance` or `provider`.
    pub kind: &'a str,
    /// The Neutron port id, for instance ports.
    pub iface_id: Option<&'a str>,
}

/// A host config for one vswitchd in a namespace: worker on lcore 1, no hugepages, a unique
/// EAL file prefix, backoff idle, net_af_packet ports.
pub fn host_toml(
    host_id: &str,
    file_prefix: &str,
    ports: &[HostPort],
    bridge_mappings: &[(&str, &str)],
) -> String {
    let mut s = format!(
        "role = \"dvr\"\nhost_id = \"{host_id}\"\nmain_core = 0\ncores = [1]\n\
         eal_args = [\"--no-huge\", \"-m\", \"512\", \"--no-pci\", \"--no-shconf\", \"--file-prefix\", \"{file_prefix}\"]\n\n\
         [idle]\nmode = \"backoff\"\n\n"
    );
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!(
            "[[ports]]\nname = \"{}\"\ndevargs = \"net_af_packet{i},iface={}\"\nkind = \"{}\"\n",
            p.name, p.iface, p.kind
        ));
        if let Some(id) = p.iface_id {
            s.push_str(&format!("iface_id = \"{id}\"\n"));
        }
        s.push('\n');
    }
    s.push_str("[bridge_mappings]\n");
    for (physnet, port) in bridge_mappings {
        s.push_str(&format!("{physnet} = \"{port}\"\n"));
    }
    s
}

/// Counters from one `stats-json:` line.
#[derive(Debug, Clone)]
pub struct Stats(pub serde_json::Value);

/// One port's traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl Stats {
    /// A drop counter (`"port_security.spoofed_mac"`); panics on an unknown name so a renamed
    /// counter fails loudly.
    pub fn drop(&self, name: &str) -> u64 {
        self.0["drops"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop counter {name:?} in {}", self.0["drops"]))
    }

    /// An event counter (`"provider.vlan_pushed"`).
    pub fn event(&self, name: &str) -> u64 {
        self.0["events"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no event counter {name:?} in {}", self.0["events"]))
    }

    /// Sum of all drop counters.
    pub fn total_drops(&self) -> u64 {
        self.0["drops"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0)
    }

    /// Drop counters that are not zero.
    pub fn nonzero_drops(&self) -> Vec<(String, u64)> {
        self.0["drops"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_u64().filter(|&n| n > 0).map(|n| (k.clone(), n)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A port's counters by port name.
    pub fn port(&self, name: &str) -> PortStats {
        let p = self.0["ports"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no port {name:?} in {}", self.0["ports"]));
        let g = |k: &str| {
            p[k].as_u64()
                .unwrap_or_else(|| panic!("port {name}: no {k}"))
        };
        PortStats {
            rx_packets: g("rx_packets"),
            rx_bytes: g("rx_bytes"),
            tx_packets: g("tx_packets"),
            tx_bytes: g("tx_bytes"),
        }
    }
}

/// The complete `stats-json:` lines printed so far.
fn stats_lines(text: &str) -> Vec<&str> {
    // Only lines that ended with a newline: the last one may still be being written.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("stats-json: "))
        .collect()
}

/// A vswitchd running inside a namespace.
pub struct Vswitchd {
    bg: Bg,
}

impl Vswitchd {
    /// Writes the two config files into the topology's directory, starts
    /// `ip netns exec <ns> vswitchd --config host.toml --state state.yaml` and waits for
    /// "vswitchd: running".
    pub fn start(topo: &Topology, ns: &str, host_toml: &str, state_yaml: &str) -> Vswitchd {
        let host = topo.dir().join("host.toml");
        let state = topo.dir().join("state.yaml");
        fs::write(&host, host_toml).expect("write host.toml");
        fs::write(&state, state_yaml).expect("write state.yaml");
        let (h, s) = (
            host.to_string_lossy().into_owned(),
            state.to_string_lossy().into_owned(),
        );
        let mut bg = topo.spawn(ns, "vswitchd", &[VSWITCHD, "--config", &h, "--state", &s]);
        let end = Instant::now() + Duration::from_secs(30);
        while !bg.stdout_text().contains("vswitchd: running") {
            if !bg.running() {
                panic!(
                    "vswitchd exited during start\nstdout: {}\nstderr: {}",
                    bg.stdout_text(),
                    bg.stderr_text()
                );
            }
            if Instant::now() > end {
                panic!(
                    "vswitchd not running after 30 s\nstderr: {}",
                    bg.stderr_text()
                );
            }
            sleep(Duration::from_millis(20));
        }
        Vswitchd { bg }
    }

    pub fn pid(&self) -> u32 {
        self.bg.pid()
    }

    /// Asks for counters (SIGUSR1) and returns the new `stats-json:` line, parsed.
    pub fn stats(&mut self) -> Stats {
        let before = stats_lines(&self.bg.stdout_text()).len();
        self.bg.signal("USR1");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.bg.stdout_text();
            let lines = stats_lines(&text);
            if lines.len() > before {
                let v = serde_json::from_str(lines[lines.len() - 1]).unwrap_or_else(|e| {
                    panic!("bad stats-json line: {e}: {}", lines[lines.len() - 1])
                });
                return Stats(v);
            }
            assert!(
                self.bg.running(),
                "vswitchd died: {}",
                self.bg.stderr_text()
            );
            assert!(
                Instant::now() < end,
                "no stats-json line within 10 s of SIGUSR1"
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Stops vswitchd with SIGTERM; asserts it exits 0 after printing final counters and
    /// "shutdown: mbufs in use after closing ports: 0 of N". Returns the final counters.
    pub fn stop(self) -> Stats {
        let Vswitchd { bg } = self;
        let (stdout, stderr) = (bg.stdout.clone(), bg.stderr.clone());
        let st = bg.stop("TERM", Duration::from_secs(20));
        let out = fs::read_to_string(&stdout).unwrap_or_default();
        let err = fs::read_to_string(&stderr).unwrap_or_default();
        assert!(
            st.success(),
            "vswitchd exited with {st}\nstdout: {out}\nstderr: {err}"
        );
        let leak = out
            .lines()
            .find(|l| l.starts_with("shutdown: mbufs in use after closing ports:"))
            .unwrap_or_else(|| panic!("no mbuf line at shutdown\nstdout: {out}"));
        assert!(
            leak.starts_with("shutdown: mbufs in use after closing ports: 0 of "),
            "mbufs leaked: {leak}"
        );
        let lines = stats_lines(&out);
        let last = lines
            .last()
            .unwrap_or_else(|| panic!("no final stats-json line\nstdout: {out}"));
        Stats(serde_json::from_str(last).expect("final stats-json"))
    }
}
