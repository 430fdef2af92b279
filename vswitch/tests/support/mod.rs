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
//!   line; conntrack and firewall counters too), reloads a rewritten desired state with
//!   SIGHUP ([`Vswitchd::reload`]) and stops it with SIGTERM, checking exit 0 and that no
//!   mbuf leaked. Several may run in one topology ([`Vswitchd::start_as`], each with its own
//!   EAL file prefix); [`host_toml_overlay`] adds the VXLAN settings of a host with an
//!   overlay port.
//! * Traffic and analysis: [`ping`], [`tcp_transfer`] (SHA-256 checked), [`py`] (scapy
//!   snippets), [`tshark_fields`] (dissects a [`Capture`]'s pcap).
//!
//! Tests need root and a working `ip netns`; [`Topology::new`] returns `None` (after printing
//! "skipped: needs root and DPDK ...") where they are missing, and the test returns early.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::Duration;

mod api;
mod internet;
mod process;
mod traffic;
mod vswitchd;
#[allow(unused_imports)] // only the API tests use the HTTP client
pub use api::*;
#[allow(unused_imports)] // only the north-south tests use the Internet side
pub use internet::*;
pub use process::*;
#[allow(unused_imports)] // not every test binary uses the traffic helpers
pub use traffic::*;
pub use vswitchd::*;

/// Prefix of every namespace these helpers create (stale ones with a dead pid are reaped).
const NS_PREFIX: &str = "vst";

/// The scapy VLAN peer script.
pub const VLAN_HOST_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/vlan_host.py");

/// The vswitchd binary built for this test run.
pub const VSWITCHD: &str = env!("CARGO_BIN_EXE_vswitchd");

/// The vswitchctl binary built for this test run.
pub const VSWITCHCTL: &str = env!("CARGO_BIN_EXE_vswitchctl");

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
            remove_dpdk_runtime_dirs(&name);
        }
    }
}

/// A set of namespaces, veths and processes that is torn down on drop.
/// How [`Topology::add_instance`] sets up an instance's `eth0`.
pub struct InstanceNet<'a> {
    pub mac: &'a str,
    /// IPv4 address with its prefix length ("198.51.100.11/24").
    pub cidr: &'a str,
    pub mtu: u32,
    /// IPv6 address with its prefix length; `None` switches IPv6 off in the namespace.
    pub cidr6: Option<&'a str>,
    /// Default routes.
    pub gw: Option<&'a str>,
    pub gw6: Option<&'a str>,
}

impl<'a> InstanceNet<'a> {
    /// IPv4 only (IPv6 switched off): `cidr`, MTU `mtu`, default route via `gw` if any.
    pub fn v4(mac: &'a str, cidr: &'a str, mtu: u32, gw: Option<&'a str>) -> Self {
        InstanceNet {
            mac,
            cidr,
            mtu,
            cidr6: None,
            gw,
            gw6: None,
        }
    }
}

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

    /// A new instance namespace `role` whose `eth0` is joined to `sw_if` in the switch
    /// namespace `sw` and set up as `n` says (offloads off: af_packet forwards what veth hands
    /// it, so no partial checksums). Returns the namespace.
    pub fn add_instance(
        &mut self,
        role: &str,
        sw: &str,
        sw_if: &str,
        n: &InstanceNet<'_>,
    ) -> String {
        let ns = self.add_ns(role);
        if n.cidr6.is_some() {
            // A quiet IPv6 stack: no DAD, router solicitations or RAs. Set before the veth
            // exists, so that its eth0 inherits them ("default").
            for conf in ["all", "default"] {
                for kv in [
                    "accept_dad=0",
                    "dad_transmits=0",
                    "router_solicitations=0",
                    "accept_ra=0",
                ] {
                    let arg = format!("net.ipv6.conf.{conf}.{kv}");
                    self.ok(&ns, &["sysctl", "-q", "-w", &arg]);
                }
            }
        } else {
            self.disable_ipv6(&ns);
        }
        self.veth(sw, sw_if, &ns, "eth0");
        self.ok(sw, &["ip", "link", "set", sw_if, "up"]);
        let mtu = n.mtu.to_string();
        self.ok(&ns, &["ip", "link", "set", "eth0", "address", n.mac]);
        self.ok(&ns, &["ip", "link", "set", "eth0", "mtu", &mtu]);
        self.ok(
            &ns,
            &[
                "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
            ],
        );
        self.ok(&ns, &["ip", "addr", "add", n.cidr, "dev", "eth0"]);
        if let Some(c6) = n.cidr6 {
            self.ok(
                &ns,
                &["ip", "-6", "addr", "add", c6, "dev", "eth0", "nodad"],
            );
        }
        self.ok(&ns, &["ip", "link", "set", "eth0", "up"]);
        if let Some(gw) = n.gw {
            self.ok(
                &ns,
                &["ip", "route", "add", "default", "via", gw, "dev", "eth0"],
            );
        }
        if let Some(gw6) = n.gw6 {
            self.ok(
                &ns,
                &[
                    "ip", "-6", "route", "add", "default", "via", gw6, "dev", "eth0",
                ],
            );
        }
        ns
    }

    /// A namespace for a `vswitchd`, with IPv6 off: the kernel must not put frames of its own
    /// (ND, MLD) on the switch's ports.
    pub fn add_switch_ns(&mut self, role: &str) -> String {
        let ns = self.add_ns(role);
        self.disable_ipv6(&ns);
        ns
    }

    /// Sets MAC `mac` on `iface` in `ns` and brings it up (e.g. the switch end of an underlay:
    /// the af_packet PMD takes the interface's MAC as the port's).
    pub fn set_mac_up(&self, ns: &str, iface: &str, mac: &str) {
        self.ok(ns, &["ip", "link", "set", iface, "address", mac]);
        self.ok(ns, &["ip", "link", "set", iface, "up"]);
    }

    /// Switches IPv6 off for every interface of `ns`, present and future, so that the
    /// kernel's own ND/MLD/router solicitations never reach a switch port.
    pub fn disable_ipv6(&self, ns: &str) {
        self.ok(
            ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
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
        self.capture_with(ns, iface, label, &[])
    }

    /// [`Topology::capture`] with extra tcpdump arguments before the output file: options
    /// such as `-Q in` (only received frames) or `-s 160` (snap length), and a trailing
    /// filter expression.
    pub fn capture_with(&self, ns: &str, iface: &str, label: &str, extra: &[&str]) -> Capture {
        let file = self.dir.join(format!("{label}.pcap"));
        let f = file.to_string_lossy().into_owned();
        let mut args = vec![
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
        ];
        args.extend_from_slice(extra);
        let mut bg = self.spawn(ns, label, &args);
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
        remove_dpdk_runtime_dirs(&self.name);
    }
}

/// Removes `/var/run/dpdk/<name>` and every `/var/run/dpdk/<name>*` (the EAL runtime
/// directories of file prefixes derived from a topology's name, one per vswitchd).
fn remove_dpdk_runtime_dirs(name: &str) {
    if let Ok(rd) = fs::read_dir("/var/run/dpdk") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(name) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}
