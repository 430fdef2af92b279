//! Starting, reading and stopping a `vswitchd` under test.
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::*;

/// One port of the host config written by [`host_toml`].
pub struct HostPort<'a> {
    pub name: &'a str,
    /// The interface (in the switch namespace) the af_packet port attaches to.
    pub iface: &'a str,
    /// `instance`, `provider` or `overlay`.
    pub kind: &'a str,
    /// The Neutron port id, for instance ports.
    pub iface_id: Option<&'a str>,
}

/// Instance ports (port name = interface in the switch namespace, Neutron port id) and the
/// overlay port on interface `ul`: the ports of a compute host in the overlay tests.
pub fn instance_and_overlay_ports<'a>(instances: &'a [(&'a str, &'a str)]) -> Vec<HostPort<'a>> {
    let mut ports: Vec<HostPort> = instances
        .iter()
        .map(|(name, id)| HostPort {
            name,
            iface: name,
            kind: "instance",
            iface_id: Some(id),
        })
        .collect();
    ports.push(HostPort {
        name: "overlay",
        iface: "ul",
        kind: "overlay",
        iface_id: None,
    });
    ports
}

/// This host's VXLAN settings for [`host_toml_overlay`]: `local_vtep_ip`, `dvr_mac` and the
/// `[overlay]` section (absent fields keep vswitchd's defaults).
#[derive(Default)]
pub struct OverlayHost<'a> {
    pub local_vtep_ip: &'a str,
    pub dvr_mac: Option<&'a str>,
    /// Raw `key = value` lines of `[overlay]`, e.g. `"udp_checksum = true"`.
    pub settings: &'a [&'a str],
    /// Static underlay neighbours (`[overlay.neighbors]`): (IP, MAC).
    pub neighbors: &'a [(&'a str, &'a str)],
}

/// Frames in each af_packet ring (the PMD's default is 512): a worker that backs off to sleep
/// while idle must not lose the start of a TCP burst to a full ring.
pub const AF_PACKET_FRAMES: u32 = 4096;

/// A host config for one vswitchd in a namespace: worker on lcore 1, no hugepages, a unique
/// EAL file prefix, backoff idle, net_af_packet ports.
pub fn host_toml(
    host_id: &str,
    file_prefix: &str,
    ports: &[HostPort],
    bridge_mappings: &[(&str, &str)],
) -> String {
    host_toml_overlay(host_id, file_prefix, ports, bridge_mappings, None)
}

/// [`host_toml`] with VXLAN settings (ports of `kind = "overlay"` need them).
pub fn host_toml_overlay(
    host_id: &str,
    file_prefix: &str,
    ports: &[HostPort],
    bridge_mappings: &[(&str, &str)],
    overlay: Option<&OverlayHost>,
) -> String {
    let mut s = format!(
        "role = \"dvr\"\nhost_id = \"{host_id}\"\nmain_core = 0\ncores = [1]\n\
         eal_args = [\"--no-huge\", \"-m\", \"512\", \"--no-pci\", \"--no-shconf\", \"--file-prefix\", \"{file_prefix}\"]\n"
    );
    if let Some(o) = overlay {
        s.push_str(&format!("local_vtep_ip = \"{}\"\n", o.local_vtep_ip));
        if let Some(mac) = o.dvr_mac {
            s.push_str(&format!("dvr_mac = \"{mac}\"\n"));
        }
    }
    s.push_str("\n[idle]\nmode = \"backoff\"\n\n");
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!(
            "[[ports]]\nname = \"{}\"\ndevargs = \"net_af_packet{i},framecnt={AF_PACKET_FRAMES},iface={}\"\nkind = \"{}\"\n",
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
    if let Some(o) = overlay {
        s.push_str("\n[overlay]\n");
        for line in o.settings {
            s.push_str(line);
            s.push('\n');
        }
        if !o.neighbors.is_empty() {
            s.push_str("\n[overlay.neighbors]\n");
            for (ip, mac) in o.neighbors {
                s.push_str(&format!("\"{ip}\" = \"{mac}\"\n"));
            }
        }
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

/// Packets one remote VTEP or one VNI carried (`"vteps"` / `"vnis"` of `stats-json:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl TunnelStats {
    fn from_json(v: &serde_json::Value, what: &str) -> TunnelStats {
        let g = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("{what}: no {k} in {v}"))
        };
        TunnelStats {
            rx_packets: g("rx_packets"),
            tx_packets: g("tx_packets"),
        }
    }
}

/// One router instance's counters (`"routers"` of `stats-json:`): packets routed, answered by
/// the router itself (echo), ICMP errors sent, dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    pub routed: u64,
    pub local: u64,
    pub icmp_errors: u64,
    pub dropped: u64,
}

impl Stats {
    /// The counters of remote VTEP `ip`; zeros when vswitchd lists no entry for it (it never
    /// exchanged a packet with it). Panics when there is no `"vteps"` list at all.
    pub fn vtep(&self, ip: &str) -> TunnelStats {
        let list = self.0["vteps"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"vteps\" list in stats-json: {}", self.0));
        list.iter()
            .find(|e| e["ip"] == ip)
            .map(|e| TunnelStats::from_json(e, &format!("vtep {ip}")))
            .unwrap_or_default()
    }

    /// The counters of VNI `vni`; zeros when vswitchd lists no entry for it. Panics when
    /// there is no `"vnis"` list at all.
    pub fn vni(&self, vni: u32) -> TunnelStats {
        let list = self.0["vnis"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"vnis\" list in stats-json: {}", self.0));
        list.iter()
            .find(|e| e["vni"].as_u64() == Some(u64::from(vni)))
            .map(|e| TunnelStats::from_json(e, &format!("vni {vni}")))
            .unwrap_or_default()
    }

    /// The counters of the router named `name` (`"routers"` of `stats-json:`); panics when
    /// this host carries no such router.
    pub fn router(&self, name: &str) -> RouterStats {
        let list = self.0["routers"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"routers\" list in stats-json: {}", self.0));
        let r = list
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no router {name:?} in {}", self.0["routers"]));
        let g = |k: &str| {
            r[k].as_u64()
                .unwrap_or_else(|| panic!("router {name}: no {k} in {r}"))
        };
        RouterStats {
            routed: g("routed"),
            local: g("local"),
            icmp_errors: g("icmp_errors"),
            dropped: g("dropped"),
        }
    }

    /// A connection tracking counter (`"conntrack"` of `stats-json:`): `entries`,
    /// `capacity`, `new`, `established`, `refused_full`, `evicted`, `expired`, `cut`,
    /// `related`. Panics when vswitchd printed no such counter.
    /// A flow cache counter (`"hits"`, `"misses"`, `"learnt"`, `"crowded"`), summed over the
    /// workers.
    pub fn flow_cache(&self, name: &str) -> u64 {
        self.0["flow_cache"][name].as_u64().unwrap_or_else(|| {
            panic!(
                "no flow cache counter {name:?} in stats-json (\"flow_cache\": {})",
                self.0["flow_cache"]
            )
        })
    }

    pub fn conntrack(&self, name: &str) -> u64 {
        self.0["conntrack"][name].as_u64().unwrap_or_else(|| {
            panic!(
                "no conntrack counter {name:?} in stats-json (\"conntrack\": {})",
                self.0["conntrack"]
            )
        })
    }

    /// `self.conntrack(name) - before.conntrack(name)` (for the monotonic counters).
    pub fn conntrack_delta(&self, before: &Stats, name: &str) -> u64 {
        self.conntrack(name) - before.conntrack(name)
    }

    /// The security group counters of instance port `port` (`"firewall"` of `stats-json:`):
    /// (packets allowed, packets dropped), both directions. Panics when vswitchd lists no
    /// entry for it (only instance ports with security groups have one).
    pub fn firewall(&self, port: &str) -> (u64, u64) {
        let list = self.0["firewall"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"firewall\" list in stats-json: {}", self.0));
        let e = list.iter().find(|e| e["port"] == port).unwrap_or_else(|| {
            panic!(
                "no firewall entry for port {port:?} in {}",
                self.0["firewall"]
            )
        });
        let g = |k: &str| {
            e[k].as_u64()
                .unwrap_or_else(|| panic!("firewall entry of {port}: no {k} in {e}"))
        };
        (g("allowed"), g("dropped"))
    }

    /// `self.drop(name) - before.drop(name)`.
    pub fn drop_delta(&self, before: &Stats, name: &str) -> u64 {
        self.drop(name) - before.drop(name)
    }

    /// `self.event(name) - before.event(name)`.
    pub fn event_delta(&self, before: &Stats, name: &str) -> u64 {
        self.event(name) - before.event(name)
    }

    /// Drop counters that grew since `before` (name, delta).
    pub fn drops_since(&self, before: &Stats) -> Vec<(String, u64)> {
        self.0["drops"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let old = before.0["drops"][k.as_str()].as_u64().unwrap_or(0);
                        let d = v.as_u64().unwrap_or(0).saturating_sub(old);
                        (d > 0).then(|| (k.clone(), d))
                    })
                    .collect()
            })
            .unwrap_or_default()
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
    /// The `--state` file (rewritten by [`Vswitchd::reload`]).
    state: PathBuf,
    /// The API's unix socket (in the topology's directory unless the host config names one).
    socket: PathBuf,
}

impl Vswitchd {
    /// Writes the two config files into the topology's directory, starts
    /// `ip netns exec <ns> vswitchd --config host.toml --state state.yaml` and waits for
    /// "vswitchd: running".
    pub fn start(topo: &Topology, ns: &str, host_toml: &str, state_yaml: &str) -> Vswitchd {
        Self::start_files(
            topo,
            ns,
            "vswitchd",
            "host.toml",
            "state.yaml",
            host_toml,
            state_yaml,
        )
    }

    /// As [`Vswitchd::start`] for one of several vswitchd processes in one topology: its
    /// files are `<label>-host.toml`, `<label>-state.yaml` and `<label>.out/.err`.
    pub fn start_as(
        topo: &Topology,
        ns: &str,
        label: &str,
        host_toml: &str,
        state_yaml: &str,
    ) -> Vswitchd {
        Self::start_files(
            topo,
            ns,
            label,
            &format!("{label}-host.toml"),
            &format!("{label}-state.yaml"),
            host_toml,
            state_yaml,
        )
    }

    fn start_files(
        topo: &Topology,
        ns: &str,
        label: &str,
        host_file: &str,
        state_file: &str,
        host_toml: &str,
        state_yaml: &str,
    ) -> Vswitchd {
        let host = topo.dir().join(host_file);
        let state = topo.dir().join(state_file);
        // Each switch's API socket lives with the test's files, never in /run.
        let mut host_toml = host_toml.to_string();
        let socket = topo.dir().join(format!("{label}.sock"));
        if !host_toml.contains("[control]") {
            host_toml.push_str(&format!("\n[control]\nsocket = \"{}\"\n", socket.display()));
        }
        let socket = vswitch_config::parse_host_str(&host_toml)
            .map(|h| h.control_socket())
            .unwrap_or(socket);
        fs::write(&host, &host_toml).expect("write host.toml");
        fs::write(&state, state_yaml).expect("write state.yaml");
        let (h, s) = (
            host.to_string_lossy().into_owned(),
            state.to_string_lossy().into_owned(),
        );
        let mut bg = topo.spawn(ns, label, &[VSWITCHD, "--config", &h, "--state", &s]);
        let end = Instant::now() + Duration::from_secs(30);
        while !bg.stdout_text().contains("vswitchd: running") {
            if !bg.running() {
                panic!(
                    "{label} exited during start\nstdout: {}\nstderr: {}",
                    bg.stdout_text(),
                    bg.stderr_text()
                );
            }
            if Instant::now() > end {
                panic!(
                    "{label} not running after 30 s\nstderr: {}",
                    bg.stderr_text()
                );
            }
            sleep(Duration::from_millis(20));
        }
        Vswitchd { bg, state, socket }
    }

    /// The API's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `vswitchctl --socket <this switch's socket> ARGS`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(VSWITCHCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run vswitchctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`Vswitchd::ctl`] that must succeed; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ctl(args);
        assert_eq!(code, 0, "vswitchctl {args:?} failed:\n{out}{err}");
        out
    }

    /// The `--state` file vswitchd keeps up to date.
    pub fn state_file(&self) -> &Path {
        &self.state
    }

    /// Kills it with SIGKILL (no clean-up: a crash) and waits until it is gone.
    pub fn kill9(self) {
        self.bg.stop("KILL", Duration::from_secs(10));
    }

    pub fn pid(&self) -> u32 {
        self.bg.pid()
    }

    /// Everything vswitchd printed on stderr so far (its log).
    pub fn stderr_text(&self) -> String {
        self.bg.stderr_text()
    }

    /// Everything vswitchd printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        self.bg.stdout_text()
    }

    /// vswitchd's resident set size (`VmRSS` of /proc/PID/status), KiB.
    pub fn vm_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("cannot read /proc/{}/status: {e}", self.pid()));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// Counters once `settled` holds for them: workers fold their counts into what the report
    /// shows only every few poll rounds, so a reading taken right after the last reply of an
    /// exchange may miss that reply's events when a worker was preempted in between. Polls
    /// for up to 3 s, then returns the last reading for the caller's assertions to report.
    pub fn stats_when(&mut self, settled: impl Fn(&Stats) -> bool) -> Stats {
        let end = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let s = self.stats();
            if settled(&s) || std::time::Instant::now() > end {
                return s;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the `--state` file with `state_yaml`, sends SIGHUP and waits (10 s at most)
    /// for vswitchd's answer: returns N of `vswitchd: state reloaded, generation N`; panics
    /// with what it printed when it answers `vswitchd: reload rejected` instead.
    pub fn reload(&mut self, state_yaml: &str) -> u64 {
        match self.reload_outcome(state_yaml) {
            Ok(generation) => generation,
            Err(text) => panic!("SIGHUP reload rejected:\n{text}"),
        }
    }

    /// As [`Vswitchd::reload`] for a state that must be refused: returns what vswitchd printed
    /// from `vswitchd: reload rejected` on; panics if it reloaded.
    pub fn reload_rejected(&mut self, state_yaml: &str) -> String {
        match self.reload_outcome(state_yaml) {
            Ok(generation) => {
                panic!("reload was accepted (generation {generation}), expected a rejection")
            }
            Err(text) => text,
        }
    }

    fn reload_outcome(&mut self, state_yaml: &str) -> Result<u64, String> {
        const RELOADED: &str = "vswitchd: state reloaded, generation ";
        const REJECTED: &str = "vswitchd: reload rejected";
        // Only complete lines count: the last one may still be being written.
        fn lines_with(text: &str, prefix: &str) -> Vec<String> {
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            complete
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        }
        // The rejection may be printed on either stream.
        let rejections = |bg: &Bg| {
            lines_with(&bg.stdout_text(), REJECTED).len()
                + lines_with(&bg.stderr_text(), REJECTED).len()
        };
        let (reloads0, rejections0) = (
            lines_with(&self.bg.stdout_text(), RELOADED).len(),
            rejections(&self.bg),
        );
        fs::write(&self.state, state_yaml).expect("rewrite state.yaml");
        self.bg.signal("HUP");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let reloads = lines_with(&self.bg.stdout_text(), RELOADED);
            if let Some(line) = reloads.get(reloads0) {
                let rest = &line[RELOADED.len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return Ok(digits
                    .parse()
                    .unwrap_or_else(|_| panic!("no generation number in {line:?}")));
            }
            if rejections(&self.bg) > rejections0 {
                // The problems follow the rejection line; give them a moment to be printed.
                sleep(Duration::from_millis(200));
                return Err(format!(
                    "stdout: {}\nstderr: {}",
                    self.bg.stdout_text(),
                    self.bg.stderr_text()
                ));
            }
            assert!(
                self.bg.running(),
                "vswitchd died after SIGHUP: {}",
                self.bg.stderr_text()
            );
            assert!(
                Instant::now() < end,
                "no \"{RELOADED}N\" or \"{REJECTED}\" line within 10 s of SIGHUP\nstdout: {}\nstderr: {}",
                self.bg.stdout_text(),
                self.bg.stderr_text()
            );
            sleep(Duration::from_millis(10));
        }
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
        let Vswitchd { bg, .. } = self;
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
