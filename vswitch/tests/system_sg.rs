//! System tests of security groups: one `vswitchd` (net_af_packet ports, in its own switch
//! namespace) enforces Neutron security groups, with connection tracking, on instance ports
//! of one self-service network. The host has instance ports only (no overlay port): every
//! packet stays between the test's namespaces.
//!
//! ```text
//!  a  198.51.100.11  fd00:198:51:100::11 ─ vma ┐  group "default" (sg-default): egress
//!  b  198.51.100.12  fd00:198:51:100::12 ─ vmb ┤  anything; ingress only from members
//!  v  198.51.100.14  fd00:198:51:100::14 ─ vmv ┼─ vswitchd (compute1)
//!  x  198.51.100.66  (port security off) ─ vmx ┘  group "server" (sg-server): egress
//!                                                 anything; ingress TCP 5001, UDP 5002 and
//!  network "selfservice": VXLAN VNI 101,          ICMP echo from anywhere
//!  MTU 1500, no overlay port on this host
//! ```
//!
//! a is in sg-default, b and v in sg-server, x has port security off (no groups). Tests that
//! change rules or membership rewrite the `--state` file and send SIGHUP
//! ([`Vswitchd::reload`]). TCP data is checked end to end with a SHA-256. Each test builds
//! its own topology (unique names, torn down on drop, also on panic), checks the drop
//! counters it did not expect to grow, and ends by stopping vswitchd, which must exit 0 with
//! no mbuf leaked. Needs root; without root each test prints "skipped: needs root and DPDK"
//! and passes. Run: `cargo test -p vswitch --test system_sg -- --test-threads=1`.
mod support;

use std::thread::sleep;
use std::time::{Duration, Instant};

use support::{
    host_toml, ping, py, tcp_transfer, tcp_transfer_to_a_stalled_reader, udp_stream_one_way, Bg,
    HostPort, InstanceNet, Stats, Topology, Vswitchd,
};

/// One instance: namespace role, port name (= interface in the switch namespace), Neutron
/// port id, MAC and addresses.
struct Inst {
    role: &'static str,
    port: &'static str,
    id: &'static str,
    mac: &'static str,
    ip: &'static str,
    ip6: &'static str,
}

const A: Inst = Inst {
    role: "a",
    port: "vma",
    id: "port-a",
    mac: "fa:16:3e:5a:00:11",
    ip: "198.51.100.11",
    ip6: "fd00:198:51:100::11",
};
const B: Inst = Inst {
    role: "b",
    port: "vmb",
    id: "port-b",
    mac: "fa:16:3e:5a:00:12",
    ip: "198.51.100.12",
    ip6: "fd00:198:51:100::12",
};
/// The SYN flood's victim.
const V: Inst = Inst {
    role: "v",
    port: "vmv",
    id: "port-v",
    mac: "fa:16:3e:5a:00:14",
    ip: "198.51.100.14",
    ip6: "fd00:198:51:100::14",
};
/// The SYN flood's attacker: port security off, so it may send from any source address.
const X: Inst = Inst {
    role: "x",
    port: "vmx",
    id: "port-x",
    mac: "fa:16:3e:5a:00:66",
    ip: "198.51.100.66",
    ip6: "fd00:198:51:100::66",
};

/// Ports sg-server lets in (from anywhere).
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;

/// The desired state: the network, a's, b's, v's and x's ports, and the two groups.
/// `b_groups` are b's security groups; `extra_rules` (YAML flow mappings) are appended to
/// `security_group_rules`.
fn state_yaml(b_groups: &[&str], extra_rules: &[&str]) -> String {
    let mut s = format!(
        r#"
networks:
  - id: net-sg
    name: selfservice
    provider:network_type: vxlan
    provider:segmentation_id: 101
    mtu: 1500
subnets:
  - {{id: subnet-sg-v4, name: selfservice-v4, network_id: net-sg, cidr: 198.51.100.0/24, ip_version: 4, gateway_ip: 198.51.100.1, enable_dhcp: false}}
  - {{id: subnet-sg-v6, name: selfservice-v6, network_id: net-sg, cidr: "fd00:198:51:100::/64", ip_version: 6, gateway_ip: "fd00:198:51:100::1", enable_dhcp: false}}
ports:
{a}
    security_groups: [sg-default]
{b}
    security_groups: [{b_groups}]
{v}
    security_groups: [sg-server]
{x}
    port_security_enabled: false
security_groups:
  - {{id: sg-default, name: default}}
  - {{id: sg-server, name: server}}
security_group_rules:
  # Neutron's default group: anything out; in only from members of the group.
  - {{id: def-out4, security_group_id: sg-default, direction: egress, ethertype: IPv4}}
  - {{id: def-out6, security_group_id: sg-default, direction: egress, ethertype: IPv6}}
  - {{id: def-in4, security_group_id: sg-default, direction: ingress, ethertype: IPv4, remote_group_id: sg-default}}
  - {{id: def-in6, security_group_id: sg-default, direction: ingress, ethertype: IPv6, remote_group_id: sg-default}}
  # A server: anything out; in TCP {TCP_PORT}, UDP {UDP_PORT} and echo requests from anywhere.
  - {{id: srv-out4, security_group_id: sg-server, direction: egress, ethertype: IPv4}}
  - {{id: srv-out6, security_group_id: sg-server, direction: egress, ethertype: IPv6}}
  - {{id: srv-tcp4, security_group_id: sg-server, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: {TCP_PORT}, port_range_max: {TCP_PORT}, remote_ip_prefix: 0.0.0.0/0}}
  - {{id: srv-tcp6, security_group_id: sg-server, direction: ingress, ethertype: IPv6, protocol: tcp, port_range_min: {TCP_PORT}, port_range_max: {TCP_PORT}, remote_ip_prefix: "::/0"}}
  - {{id: srv-udp4, security_group_id: sg-server, direction: ingress, ethertype: IPv4, protocol: udp, port_range_min: {UDP_PORT}, port_range_max: {UDP_PORT}, remote_ip_prefix: 0.0.0.0/0}}
  - {{id: srv-udp6, security_group_id: sg-server, direction: ingress, ethertype: IPv6, protocol: udp, port_range_min: {UDP_PORT}, port_range_max: {UDP_PORT}, remote_ip_prefix: "::/0"}}
  - {{id: srv-echo4, security_group_id: sg-server, direction: ingress, ethertype: IPv4, protocol: icmp, port_range_min: 8, remote_ip_prefix: 0.0.0.0/0}}
  - {{id: srv-echo6, security_group_id: sg-server, direction: ingress, ethertype: IPv6, protocol: ipv6-icmp, port_range_min: 128, remote_ip_prefix: "::/0"}}
"#,
        a = port_yaml(&A),
        b = port_yaml(&B),
        v = port_yaml(&V),
        x = port_yaml(&X),
        b_groups = b_groups.join(", "),
    );
    for r in extra_rules {
        s.push_str(&format!("  - {r}\n"));
    }
    s
}

/// A Neutron port of `i` on compute1 (without its security fields).
fn port_yaml(i: &Inst) -> String {
    let v6 = if i.id == X.id {
        String::new()
    } else {
        format!(
            "\n      - {{subnet_id: subnet-sg-v6, ip_address: \"{}\"}}",
            i.ip6
        )
    };
    format!(
        "  - id: {}\n    network_id: net-sg\n    mac_address: \"{}\"\n    fixed_ips:\n      - {{subnet_id: subnet-sg-v4, ip_address: {}}}{v6}\n    binding:host_id: compute1\n    device_owner: compute:nova",
        i.id, i.mac, i.ip
    )
}

/// The default state: b in sg-server only, no extra rules.
fn default_state() -> String {
    state_yaml(&["sg-server"], &[])
}

/// The topology with its vswitchd running. Field order matters for drop: vswitchd first,
/// then the namespaces.
struct Lab {
    vs: Option<Vswitchd>,
    topo: Topology,
    /// (role, namespace) of each instance.
    ns: Vec<(&'static str, String)>,
    started: Instant,
}

impl Lab {
    /// Builds the switch namespace and `insts` (x without IPv6), starts vswitchd with
    /// `state` and `extra_toml` appended to the host config; `None` when system tests
    /// cannot run here.
    fn start(tag: &str, insts: &[&Inst], state: &str, extra_toml: &str) -> Option<Lab> {
        Self::start_edit(tag, insts, state, &|h: &mut String| h.push_str(extra_toml))
    }

    /// [`Lab::start`] with the host config edited by `edit`.
    fn start_edit(
        tag: &str,
        insts: &[&Inst],
        state: &str,
        edit: &dyn Fn(&mut String),
    ) -> Option<Lab> {
        let started = Instant::now();
        let mut topo = Topology::new(tag)?;
        let sw = topo.add_switch_ns("sw");
        let mut ns = Vec::new();
        for i in insts {
            let cidr = format!("{}/24", i.ip);
            let cidr6 = format!("{}/64", i.ip6);
            let n = InstanceNet {
                mac: i.mac,
                cidr: &cidr,
                mtu: 1500,
                cidr6: (i.id != X.id).then_some(cidr6.as_str()),
                gw: None,
                gw6: None,
            };
            ns.push((i.role, topo.add_instance(i.role, &sw, i.port, &n)));
        }
        let ports: Vec<HostPort> = insts
            .iter()
            .map(|i| HostPort {
                name: i.port,
                iface: i.port,
                kind: "instance",
                iface_id: Some(i.id),
            })
            .collect();
        let mut host = host_toml("compute1", &topo.name, &ports, &[]);
        edit(&mut host);
        let vs = Vswitchd::start(&topo, &sw, &host, state);
        eprintln!(
            "[{}] topology and vswitchd up in {:?}",
            topo.name,
            started.elapsed()
        );
        Some(Lab {
            vs: Some(vs),
            topo,
            ns,
            started,
        })
    }

    /// The namespace of instance `i`.
    fn ns(&self, i: &Inst) -> String {
        self.ns
            .iter()
            .find(|(r, _)| *r == i.role)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| panic!("instance {} is not in this lab", i.role))
    }

    fn vs(&mut self) -> &mut Vswitchd {
        self.vs.as_mut().expect("vswitchd running")
    }

    fn stats(&mut self) -> Stats {
        self.vs().stats()
    }

    /// Rewrites the desired state, sends SIGHUP and waits for "state reloaded"; returns the
    /// new generation.
    fn reload(&mut self, state: &str) -> u64 {
        let g = self.vs().reload(state);
        eprintln!("[{}] state reloaded, generation {g}", self.topo.name);
        g
    }

    /// Starts a [`SINK_PY`] TCP server in `at`'s namespace on `ip`:`port`.
    fn sink(&self, at: &Inst, ip: &str, port: u16) -> Sink {
        let label = format!("sink-{}-{port}", at.role);
        let mut bg = self.topo.spawn(
            &self.ns(at),
            &label,
            &[support::python(), "-c", SINK_PY, ip, &port.to_string()],
        );
        assert!(
            bg.wait_for("listening", Duration::from_secs(10)),
            "TCP sink in {} did not start: {}",
            at.role,
            bg.stderr_text()
        );
        Sink { bg }
    }

    /// A short TCP connection from `from` to `ip`:`port` that sends 1000 bytes: "sent" when
    /// it connected and the server read everything, "connect-timeout" when no SYN-ACK came
    /// within 2 s, "connect-refused" for a RST.
    fn probe(&self, from: &Inst, ip: &str, port: u16) -> String {
        let out = py(
            &self.topo,
            &self.ns(from),
            SOURCE_PY,
            &[ip, &port.to_string(), "1000", "1000", "0", "2"],
        );
        // "connected" comes first; "sent ..." once the server has read everything.
        let last = out.lines().last().unwrap_or("");
        last.split_whitespace().next().unwrap_or("").to_owned()
    }

    /// Starts a slow TCP stream (4 KiB every 20 ms, for minutes) from `from` to `ip`:`port`
    /// and waits until it is connected.
    fn slow_stream(&self, from: &Inst, ip: &str, port: u16) -> Bg {
        let mut bg = self.topo.spawn(
            &self.ns(from),
            &format!("stream-{}-{port}", from.role),
            &[
                support::python(),
                "-c",
                SOURCE_PY,
                ip,
                &port.to_string(),
                "100000000",
                "4096",
                "0.02",
                "3",
            ],
        );
        assert!(
            bg.wait_for("connected", Duration::from_secs(10)),
            "slow stream {} -> {ip}:{port} did not connect: {}{}",
            from.role,
            bg.stdout_text(),
            bg.stderr_text()
        );
        bg
    }

    /// UDP request/response with [`UDP_CLIENT_PY`] from `from` to `ip`:`port`: (answered,
    /// refused, timed out) of `count` requests.
    fn udp_exchange(&self, from: &Inst, ip: &str, port: u16, count: u32) -> (u32, u32, u32) {
        let out = py(
            &self.topo,
            &self.ns(from),
            UDP_CLIENT_PY,
            &[ip, &port.to_string(), &count.to_string(), "2"],
        );
        let line = out
            .lines()
            .find(|l| l.starts_with("answered"))
            .unwrap_or_else(|| panic!("UDP client output: {out}"));
        let n: Vec<u32> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (n[0], n[1], n[2])
    }

    /// Starts a UDP echo server in `at`'s namespace on `ip`:`port`.
    fn udp_echo(&self, at: &Inst, ip: &str, port: u16) -> Bg {
        let mut bg = self.topo.spawn(
            &self.ns(at),
            &format!("udp-echo-{}-{port}", at.role),
            &[support::python(), "-c", UDP_ECHO_PY, ip, &port.to_string()],
        );
        assert!(
            bg.wait_for("ready", Duration::from_secs(10)),
            "UDP echo server did not start: {}",
            bg.stderr_text()
        );
        bg
    }

    /// Stops vswitchd (exit 0, no mbuf leaked) and reports the test's duration.
    fn finish(mut self) -> Stats {
        let st = self.vs.take().expect("vswitchd running").stop();
        eprintln!(
            "[{}] done in {:?}; drops: {:?}; conntrack: {}; firewall: {}",
            self.topo.name,
            self.started.elapsed(),
            st.nonzero_drops(),
            st.0["conntrack"],
            st.0["firewall"]
        );
        st
    }
}

/// `sink.py IP PORT`: a TCP server that accepts any number of connections, numbered from
/// one, and reads each to EOF, printing `accepted K PEER`, `progress K BYTES` (at most every
/// 100 ms, and whenever the count changed and nothing came for 100 ms) and `done K BYTES
/// SHA256`, after which it closes the connection.
const SINK_PY: &str = r#"
import hashlib, socket, sys, threading, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
lock = threading.Lock()
def say(*a):
    with lock:
        print(*a, flush=True)
def serve(c, k):
    c.settimeout(0.1)
    h, n, shown, last = hashlib.sha256(), 0, 0, time.monotonic()
    while True:
        try:
            b = c.recv(1 << 16)
        except socket.timeout:
            b = None
        except OSError as e:
            say("error", k, n, e)
            return
        if b == b"":
            break
        if b:
            h.update(b)
            n += len(b)
        now = time.monotonic()
        if n != shown and (b is None or now - last >= 0.1):
            say("progress", k, n)
            shown, last = n, now
    say("done", k, n, h.hexdigest())
    c.close()
say("listening")
k = 0
while True:
    c, peer = s.accept()
    k += 1
    say("accepted", k, peer[0])
    threading.Thread(target=serve, args=(c, k), daemon=True).start()
"#;

/// `source.py IP PORT BYTES CHUNK PAUSE CONNECT_TIMEOUT`: connects (printing
/// `connect-timeout`, `connect-refused` or `connected`), sends BYTES random bytes in CHUNK
/// pieces PAUSE seconds apart, half-closes, waits for the server to close and prints `sent
/// BYTES SHA256`.
const SOURCE_PY: &str = r#"
import hashlib, os, socket, sys, time
ip, port, total, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pause, ctimeout = float(sys.argv[5]), float(sys.argv[6])
try:
    c = socket.create_connection((ip, port), timeout=ctimeout)
except socket.timeout:
    print("connect-timeout", flush=True)
    sys.exit(0)
except ConnectionRefusedError:
    print("connect-refused", flush=True)
    sys.exit(0)
print("connected", flush=True)
c.settimeout(60)
h, sent = hashlib.sha256(), 0
while sent < total:
    b = os.urandom(min(chunk, total - sent))
    c.sendall(b)
    h.update(b)
    sent += len(b)
    if pause:
        time.sleep(pause)
c.shutdown(socket.SHUT_WR)
c.recv(1)
c.close()
print("sent", sent, h.hexdigest(), flush=True)
"#;

/// `udp_echo.py IP PORT`: answers every datagram with `re:` + the datagram.
const UDP_ECHO_PY: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    d, peer = s.recvfrom(2048)
    s.sendto(b"re:" + d, peer)
"#;

/// `udp_client.py IP PORT COUNT TIMEOUT`: COUNT requests on a connected UDP socket, each
/// waiting TIMEOUT s for its answer; prints `answered N refused N timeout N` (refused: the
/// socket reported ECONNREFUSED, i.e. an ICMP port unreachable arrived).
const UDP_CLIENT_PY: &str = r#"
import socket, sys, time
ip, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.connect((ip, port))
s.settimeout(timeout)
answered = refused = timedout = 0
for i in range(count):
    msg = b"request-%d" % i
    try:
        s.send(msg)
        d = s.recv(2048)
        if d == b"re:" + msg:
            answered += 1
        else:
            print("unexpected answer", d, flush=True)
    except ConnectionRefusedError:
        refused += 1
        time.sleep(0.2)
    except socket.timeout:
        timedout += 1
print("answered", answered, "refused", refused, "timeout", timedout, flush=True)
"#;

/// `syn_flood.py IFACE SRC_MAC DST_MAC DST_IP DST_PORT COUNT`: COUNT TCP SYNs on a packet
/// socket, from 100.64.0.0 + i, source port 1024 + i % 64000 (every 5-tuple distinct), with
/// valid checksums (computed incrementally: only the source address, port and sequence
/// number change). Prints `sent COUNT SECONDS`.
const SYN_FLOOD_PY: &str = r#"
import socket, struct, sys, time
iface, smac, dmac, dip = sys.argv[1:5]
dport, count = int(sys.argv[5]), int(sys.argv[6])
mac = lambda m: bytes.fromhex(m.replace(":", ""))
dst = struct.unpack("!I", socket.inet_aton(dip))[0]
base = struct.unpack("!I", socket.inet_aton("100.64.0.0"))[0]
def fold(x):
    x = (x & 0xffff) + (x >> 16)
    return (x & 0xffff) + (x >> 16)
frame = bytearray(mac(dmac) + mac(smac) + b"\x08\x00" + bytes(40))
# IPv4 words that never change: version/IHL/TOS, total length 40, TTL 64/proto TCP, dst.
ip_fixed = 0x4500 + 40 + (64 << 8 | 6) + (dst >> 16) + (dst & 0xffff)
# TCP: pseudo-header dst, protocol, length 20; dport, offset 5/flags SYN, window 1024.
tcp_fixed = (dst >> 16) + (dst & 0xffff) + 6 + 20 + dport + 0x5002 + 1024
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
pack = struct.pack_into
t0 = time.monotonic()
for i in range(count):
    src = base + i
    sh, sl = src >> 16, src & 0xffff
    sport = 1024 + i % 64000
    ip_sum = 0xffff - fold(ip_fixed + sh + sl)
    tcp_sum = 0xffff - fold(tcp_fixed + sh + sl + sport + (i >> 16) + (i & 0xffff))
    pack("!BBHHHBBHIIHHIIBBHHH", frame, 14, 0x45, 0, 40, 0, 0, 64, 6, ip_sum, src, dst,
         sport, dport, i, 0, 0x50, 0x02, 1024, tcp_sum, 0)
    s.send(frame)
print("sent", count, "%.2f" % (time.monotonic() - t0), flush=True)
"#;

/// A running [`SINK_PY`].
struct Sink {
    bg: Bg,
}

impl Sink {
    /// Bytes received so far on connection `k` (1 = the first accepted).
    fn received(&self, k: u32) -> u64 {
        let mut n = 0;
        for l in self.bg.stdout_text().lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() >= 3 && (w[0] == "progress" || w[0] == "done") && w[1] == k.to_string() {
                n = n.max(w[2].parse().unwrap_or(0));
            }
        }
        n
    }

    /// Connections accepted so far.
    fn accepted(&self) -> u32 {
        self.bg
            .stdout_text()
            .lines()
            .filter(|l| l.starts_with("accepted "))
            .count() as u32
    }

    /// (bytes, SHA-256) of connection `k` once it ended, waiting up to `timeout`.
    fn done(&self, k: u32, timeout: Duration) -> (u64, String) {
        let end = Instant::now() + timeout;
        loop {
            let text = self.bg.stdout_text();
            for l in text.lines() {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.len() == 4 && w[0] == "done" && w[1] == k.to_string() {
                    return (w[2].parse().expect("bytes"), w[3].to_owned());
                }
            }
            assert!(
                Instant::now() < end,
                "connection {k} of the sink did not end within {timeout:?}: {text}"
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits until connection `k` has received at least `bytes`.
    fn wait_received(&self, k: u32, bytes: u64, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.received(k) < bytes {
            assert!(
                Instant::now() < end,
                "connection {k} received only {} bytes in {timeout:?} (wanted {bytes}): {}",
                self.received(k),
                self.bg.stdout_text()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

/// Drop counters that grew since `before`, except the ones named in `allowed`.
fn unexpected_drops(after: &Stats, before: &Stats, allowed: &[&str]) -> Vec<(String, u64)> {
    after
        .drops_since(before)
        .into_iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .collect()
}

/// The drops a cut connection may cause: the packet that finds its connection revoked, then
/// its retransmissions and new SYNs (denied, or invalid: mid-stream packets of a connection
/// conntrack no longer knows).
const CUT_DROPS: &[&str] = &[
    "firewall.revoked",
    "firewall.ingress_denied",
    "conntrack.invalid",
];

/// (allowed, dropped) of `port` in `after` minus `before`.
fn firewall_delta(after: &Stats, before: &Stats, port: &str) -> (u64, u64) {
    let (a1, d1) = after.firewall(port);
    let (a0, d0) = before.firewall(port);
    (a1 - a0, d1 - d0)
}

/// Neither a's nor b's security groups dropped anything since `before`, nor did any other
/// stage.
#[track_caller]
fn assert_nothing_dropped(after: &Stats, before: &Stats) {
    assert_eq!(firewall_delta(after, before, A.port).1, 0, "dropped at vma");
    assert_eq!(firewall_delta(after, before, B.port).1, 0, "dropped at vmb");
    let bad = unexpected_drops(after, before, &[]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
}

/// After a rule change, a running stream must stop: bytes received by `sink`'s connection
/// `k` do not grow between 1 s and 2.5 s after the reload. Returns the bytes it got.
fn assert_stream_stopped(sink: &Sink, k: u32, what: &str) -> u64 {
    sleep(Duration::from_millis(1000));
    let c1 = sink.received(k);
    sleep(Duration::from_millis(1500));
    let c2 = sink.received(k);
    assert_eq!(
        c1, c2,
        "{what}: the stream kept making progress after the reload ({c1} -> {c2} bytes)"
    );
    c2
}

// --- tests --------------------------------------------------------------------------------

/// a (default group: anything out, in only from its own group) opens TCP and UDP to b (whose
/// group lets TCP 5001 and UDP 5002 in) and gets the replies: the connections a opened are
/// tracked, so b's answers pass a's ingress although no ingress rule of a matches b.
#[test]
fn default_security_group_allows_egress_and_replies() {
    let Some(mut lab) = Lab::start("sgdef", &[&A, &B], &default_state(), "") else {
        return;
    };
    let (a, b) = (lab.ns(&A), lab.ns(&B));
    let s0 = lab.stats();
    let ct0 = s0.conntrack("new");

    // TCP a -> b: 4 MiB, SHA-256 checked.
    tcp_transfer(&lab.topo, &a, &b, B.ip, TCP_PORT, 4 << 20);
    // UDP request/response a -> b.
    let _echo = lab.udp_echo(&B, B.ip, UDP_PORT);
    let (answered, refused, timedout) = lab.udp_exchange(&A, B.ip, UDP_PORT, 5);
    assert_eq!(
        (answered, refused, timedout),
        (5, 0, 0),
        "UDP a -> b:{UDP_PORT}: (answered, refused, timed out) of 5"
    );
    // Echo: b's group lets echo requests in, a's replies come back as tracked.
    let (rc, text) = ping(&lab.topo, &a, B.ip, 3, 4);
    assert_eq!(rc, 0, "ping a -> b:\n{text}");

    let s1 = lab.stats();
    let (a_allowed, a_dropped) = firewall_delta(&s1, &s0, A.port);
    let (b_allowed, b_dropped) = firewall_delta(&s1, &s0, B.port);
    eprintln!(
        "firewall vma +{a_allowed}/-{a_dropped}, vmb +{b_allowed}/-{b_dropped}; conntrack {}",
        s1.0["conntrack"]
    );
    // 4 MiB is at least 2800 full-size segments a -> b (a's egress, b's ingress), and their
    // ACKs come back.
    assert!(
        a_allowed > 2800 && b_allowed > 2800,
        "firewall allowed on vma {a_allowed}, on vmb {b_allowed}"
    );
    assert_eq!(
        (a_dropped, b_dropped),
        (0, 0),
        "firewall dropped (vma, vmb)"
    );
    // One TCP, one UDP and one ICMP connection (at least) were tracked.
    assert!(
        s1.conntrack("new") - ct0 >= 3,
        "conntrack new grew by {}",
        s1.conntrack("new") - ct0
    );
    assert!(
        s1.conntrack("established") >= 1,
        "the UDP exchange (answered) must leave an established entry: {}",
        s1.0["conntrack"]
    );
    let bad = unexpected_drops(&s1, &s0, &[]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    lab.finish();
}

/// A one-way UDP stream a -> b (a syslog or RTP stream: b never answers): every datagram
/// crosses a's egress and b's ingress, the flow stays unreplied in both zones, and from its
/// second datagram on the flow cache answers it. All 3,000 arrive, nothing is dropped.
#[test]
fn a_one_way_udp_stream_crosses_the_security_groups_from_the_flow_cache() {
    let Some(mut lab) = Lab::start("sgudp1", &[&A, &B], &default_state(), "") else {
        return;
    };
    let (a, b) = (lab.ns(&A), lab.ns(&B));
    // b's MAC resolved first: the datagrams a's kernel would queue while it asks (a few)
    // and drop (the rest) are not what this test is about.
    let (rc, text) = ping(&lab.topo, &a, B.ip, 1, 4);
    assert_eq!(rc, 0, "ping a -> b:\n{text}");
    let s0 = lab.stats();
    let n = 3000;
    let at = (B.ip, B.ip, UDP_PORT);
    let got = udp_stream_one_way(&lab.topo, &a, &b, at, n);
    let s1 = lab.stats();
    assert_eq!(got, n, "datagrams b received of {n}: vswitchd {}", s1.0);
    eprintln!(
        "conntrack {}; flow cache {}",
        s1.0["conntrack"], s1.0["flow_cache"]
    );
    assert_eq!(
        s1.conntrack_delta(&s0, "unreplied"),
        2,
        "one unreplied flow in a's zone and one in b's"
    );
    let hits = s1.flow_cache("hits") - s0.flow_cache("hits");
    assert!(
        hits > n as u64 / 2,
        "the flow cache answered {hits} of {n} datagrams ({})",
        s1.0["flow_cache"]
    );
    assert_nothing_dropped(&s1, &s0);
    lab.finish();
}

/// b's server reads nothing for 2 s after it accepts a's connection (with a 32 KiB receive
/// buffer): b's kernel advertises a zero window, and a's probes it (the persist timer) until
/// b reads again and opens it. Both zones track the connection with full window checks; the
/// zero-window advertisements, the probes and the update that reopens the window are all
/// within what the tracker accepts (as Linux's accepts them): the 4 MiB arrive whole and
/// nothing is dropped.
#[test]
fn a_zero_window_and_its_probes_pass_the_security_groups() {
    let Some(mut lab) = Lab::start("sgzwin", &[&A, &B], &default_state(), "") else {
        return;
    };
    let (a, b) = (lab.ns(&A), lab.ns(&B));
    let s0 = lab.stats();
    let cap = lab.topo.capture_with(
        &b,
        "eth0",
        "zero-window-b",
        &[
            "tcp",
            "and",
            "src",
            "host",
            B.ip,
            "and",
            "tcp[14:2]",
            "==",
            "0",
        ],
    );
    let at = (B.ip, B.ip, TCP_PORT);
    tcp_transfer_to_a_stalled_reader(&lab.topo, &a, &b, at, 4 << 20, 2.0);
    let zero = cap.stop();
    let s1 = lab.stats();
    assert!(!zero.is_empty(), "b never advertised a zero window");
    eprintln!("zero-window advertisements from b: {}", zero.len());
    assert_nothing_dropped(&s1, &s0);
    lab.finish();
}

/// b is not in a's group: its TCP connection attempt to a times out and its pings go
/// unanswered, counted as firewall.ingress_denied on a's port; a can still reach b.
#[test]
fn security_group_blocks_unsolicited_ingress() {
    let Some(mut lab) = Lab::start("sgblk", &[&A, &B], &default_state(), "") else {
        return;
    };
    let (a, b) = (lab.ns(&A), lab.ns(&B));
    // A listener on a, so that a refused connection would show up as "connect-refused".
    let sink = lab.sink(&A, A.ip, TCP_PORT);
    let s0 = lab.stats();

    let r = lab.probe(&B, A.ip, TCP_PORT);
    assert_eq!(r, "connect-timeout", "TCP b -> a:{TCP_PORT} must time out");
    let (rc, text) = ping(&lab.topo, &b, A.ip, 2, 3);
    assert_ne!(rc, 0, "ping b -> a must get no reply:\n{text}");
    assert!(text.contains(" 0 received"), "{text}");
    assert_eq!(sink.accepted(), 0, "a accepted a connection from b");

    let s1 = lab.stats();
    let denied = s1.drop_delta(&s0, "firewall.ingress_denied");
    // The SYN (and its retransmission within 2 s) and 2 echo requests at least.
    assert!(
        denied >= 3,
        "firewall.ingress_denied grew by {denied}; drops {:?}",
        s1.drops_since(&s0)
    );
    let (_, a_dropped) = firewall_delta(&s1, &s0, A.port);
    assert_eq!(
        a_dropped, denied,
        "vma's firewall dropped vs firewall.ingress_denied (a is the only port denying)"
    );
    let bad = unexpected_drops(&s1, &s0, &["firewall.ingress_denied"]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");

    // a -> b still works (a's egress, b's TCP 5001 rule), and nothing is denied doing it.
    tcp_transfer(&lab.topo, &a, &b, B.ip, TCP_PORT, 1 << 20);
    let s2 = lab.stats();
    let bad = unexpected_drops(&s2, &s1, &[]);
    assert!(bad.is_empty(), "drops while a -> b: {bad:?}");
    lab.finish();
}

/// Shared by the tests of rule changes: b cannot connect to a:`port`; after `allow` (SIGHUP)
/// it can, and keeps a slow stream open; after the default state comes back (SIGHUP) the
/// stream stops within the time [`assert_stream_stopped`] allows, conntrack counts the cut,
/// and a new connection times out again. `what` names the change in messages. Returns the
/// counters just before the revocation and just after the stream stopped.
fn allowed_then_revoked(lab: &mut Lab, port: u16, allow: &str, what: &str) -> (Stats, Stats) {
    let sink = lab.sink(&A, A.ip, port);
    assert_eq!(
        lab.probe(&B, A.ip, port),
        "connect-timeout",
        "before {what}, b -> a:{port} must time out"
    );
    let g1 = lab.reload(allow);
    assert_eq!(
        lab.probe(&B, A.ip, port),
        "sent",
        "with {what}, b -> a:{port} must connect"
    );
    assert_eq!(sink.done(1, Duration::from_secs(5)).0, 1000, "probe bytes");
    // A slow stream b -> a (connection 2 of the sink), then the change is undone.
    let _stream = lab.slow_stream(&B, A.ip, port);
    sink.wait_received(2, 20_000, Duration::from_secs(10));
    let s0 = lab.stats();
    let g2 = lab.reload(&default_state());
    assert!(g2 > g1, "generations {g1} then {g2}");
    let got = assert_stream_stopped(&sink, 2, what);
    eprintln!("stream b -> a stopped at {got} bytes after {what} was undone");
    let s1 = lab.stats();
    assert!(
        s1.conntrack_delta(&s0, "cut") >= 1,
        "conntrack cut did not count: {}",
        s1.0["conntrack"]
    );
    assert_eq!(
        lab.probe(&B, A.ip, port),
        "connect-timeout",
        "after {what} was undone, a new b -> a:{port} must time out"
    );
    (s0, s1)
}

/// An ingress rule for TCP 2222 from b's /32 is added to a's group (SIGHUP): b connects;
/// removed (SIGHUP): b's open stream stops, a's firewall drops its segments, conntrack counts
/// a cut, and a new connection fails.
#[test]
fn rule_added_then_removed_cuts_connection() {
    const PORT: u16 = 2222;
    let Some(mut lab) = Lab::start("sgcut", &[&A, &B], &default_state(), "") else {
        return;
    };
    let rule = format!(
        "{{id: def-in-b-{PORT}, security_group_id: sg-default, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: {PORT}, port_range_max: {PORT}, remote_ip_prefix: {}/32}}",
        B.ip
    );
    let allow = state_yaml(&["sg-server"], &[&rule]);
    let (s0, s1) = allowed_then_revoked(&mut lab, PORT, &allow, "the rule");
    let (_, a_dropped) = firewall_delta(&s1, &s0, A.port);
    assert!(
        a_dropped >= 1,
        "vma's firewall dropped nothing after the cut"
    );
    let s2 = lab.stats();
    let bad = unexpected_drops(&s2, &s0, CUT_DROPS);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    lab.finish();
}

/// a's group lets in members of the group. b joins it (SIGHUP): b can open TCP to a; b
/// leaves (SIGHUP): b's open stream is cut and new connections fail.
#[test]
fn remote_group_rule_follows_membership() {
    const PORT: u16 = 5005;
    let Some(mut lab) = Lab::start("sgrg", &[&A, &B], &default_state(), "") else {
        return;
    };
    let member = state_yaml(&["sg-server", "sg-default"], &[]);
    let (s0, _) = allowed_then_revoked(&mut lab, PORT, &member, "b's membership");
    let s2 = lab.stats();
    let bad = unexpected_drops(&s2, &s0, CUT_DROPS);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    lab.finish();
}

/// The first test over IPv6: neighbour discovery works although no rule allows ICMPv6
/// (b's group allows echo requests only; a's group nothing from b), ping6, TCP and UDP a -> b
/// work (the TCP transfers' segments mostly answered by the flow cache, one of them to a
/// reader that stalls: a zero window and its probes), and b -> a is denied.
#[test]
fn ipv6_security_groups_with_neighbor_discovery() {
    let Some(mut lab) = Lab::start("sgv6", &[&A, &B], &default_state(), "") else {
        return;
    };
    let (a, b) = (lab.ns(&A), lab.ns(&B));
    let s0 = lab.stats();

    // The first ping6 needs neighbour solicitation/advertisement both ways (a resolves b, b
    // resolves a for its reply); neither group has a rule for them.
    let (rc, text) = ping(&lab.topo, &a, B.ip6, 3, 5);
    assert_eq!(rc, 0, "ping6 a -> b:\n{text}");
    let neigh = lab.topo.ok(&a, &["ip", "-6", "neigh", "show", B.ip6]);
    assert!(
        neigh.contains(B.mac),
        "a resolved b's IPv6 address by ND: {neigh:?}"
    );
    tcp_transfer(&lab.topo, &a, &b, B.ip6, TCP_PORT, 2 << 20);
    // And to a reader that stops reading for 2 s: a zero window over IPv6, probed by a's
    // kernel, through the flow cache's IPv6 table.
    let at = (B.ip6, B.ip6, TCP_PORT);
    tcp_transfer_to_a_stalled_reader(&lab.topo, &a, &b, at, 2 << 20, 2.0);
    let _echo = lab.udp_echo(&B, B.ip6, UDP_PORT);
    let (answered, refused, timedout) = lab.udp_exchange(&A, B.ip6, UDP_PORT, 5);
    assert_eq!(
        (answered, refused, timedout),
        (5, 0, 0),
        "UDP a -> [b]:{UDP_PORT}: (answered, refused, timed out) of 5"
    );
    let s1 = lab.stats();
    let (a_allowed, a_dropped) = firewall_delta(&s1, &s0, A.port);
    let (b_allowed, b_dropped) = firewall_delta(&s1, &s0, B.port);
    eprintln!(
        "firewall vma +{a_allowed}/-{a_dropped}, vmb +{b_allowed}/-{b_dropped}; conntrack {}",
        s1.0["conntrack"]
    );
    assert!(
        a_allowed > 1400 && b_allowed > 1400,
        "firewall allowed on vma {a_allowed}, on vmb {b_allowed}"
    );
    assert_eq!(
        (a_dropped, b_dropped),
        (0, 0),
        "firewall dropped (vma, vmb): ND or MLD must never be"
    );
    let bad = unexpected_drops(&s1, &s0, &[]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    // Most of the transfer's segments (and their ACKs) were answered by the flow cache.
    let hits = s1.flow_cache("hits") - s0.flow_cache("hits");
    assert!(
        hits > 1000,
        "flow cache hits over IPv6: {hits} ({})",
        s1.0["flow_cache"]
    );

    // b -> a over IPv6: not allowed by a's group.
    let _sink = lab.sink(&A, A.ip6, TCP_PORT);
    assert_eq!(
        lab.probe(&B, A.ip6, TCP_PORT),
        "connect-timeout",
        "TCP b -> [a]:{TCP_PORT} must time out"
    );
    let (rc, text) = ping(&lab.topo, &b, A.ip6, 2, 3);
    assert_ne!(rc, 0, "ping6 b -> a must get no reply:\n{text}");
    let s2 = lab.stats();
    assert!(
        s2.drop_delta(&s1, "firewall.ingress_denied") >= 3,
        "firewall.ingress_denied for b -> a over IPv6: {:?}",
        s2.drops_since(&s1)
    );
    let bad = unexpected_drops(&s2, &s1, &["firewall.ingress_denied"]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    lab.finish();
}

/// a sends UDP to a port of b that its group allows but where nothing listens; b's kernel
/// answers ICMP port unreachable (v4) / ICMPv6 port unreachable (v6). No ingress rule of a
/// allows ICMP from b, yet the error reaches a's socket (ECONNREFUSED), because it is
/// related to the UDP connection a opened.
#[test]
fn icmp_error_for_allowed_connection_reaches_instance() {
    let Some(mut lab) = Lab::start("sgicmp", &[&A, &B], &default_state(), "") else {
        return;
    };
    let s0 = lab.stats();
    let (answered, refused, _) = lab.udp_exchange(&A, B.ip, UDP_PORT, 3);
    assert_eq!(answered, 0, "nothing listens on b:{UDP_PORT}");
    assert!(
        refused >= 1,
        "a's connected UDP socket never saw ECONNREFUSED (the ICMP port unreachable from b \
         did not reach a)"
    );
    let s1 = lab.stats();
    assert!(
        s1.conntrack_delta(&s0, "related") >= 1,
        "conntrack related: {}",
        s1.0["conntrack"]
    );
    let (answered, refused, _) = lab.udp_exchange(&A, B.ip6, UDP_PORT, 3);
    assert_eq!(answered, 0, "nothing listens on [b]:{UDP_PORT}");
    assert!(
        refused >= 1,
        "a's connected UDP socket never saw ECONNREFUSED over IPv6 (the ICMPv6 port \
         unreachable from b did not reach a)"
    );
    let s2 = lab.stats();
    assert!(
        s2.conntrack_delta(&s1, "related") >= 1,
        "conntrack related (IPv6): {}",
        s2.0["conntrack"]
    );
    // The errors were allowed as related, not dropped.
    let bad = unexpected_drops(&s2, &s0, &[]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    let (_, a_dropped) = firewall_delta(&s2, &s0, A.port);
    assert_eq!(a_dropped, 0, "vma's firewall dropped packets");
    lab.finish();
}

/// Robustness: with `[conntrack] capacity = 16384` (one worker), an attacker (port security
/// off) floods the victim's allowed TCP port with 1,000,000 SYNs, each a new 5-tuple. The
/// table fills to its capacity and no further (new connections evict the oldest
/// not-established ones or are refused), vswitchd's memory does not grow with the flood,
/// and a TCP transfer a -> b that was established before the flood completes intact.
#[test]
fn syn_flood_fills_conntrack_to_capacity_only() {
    const CAPACITY: u64 = 16384;
    const SYNS: u32 = 1_000_000;
    const BYTES: u64 = 4 << 20;
    let Some(mut lab) = Lab::start(
        "sgsyn",
        &[&A, &B, &V, &X],
        &default_state(),
        &format!("\n[conntrack]\ncapacity = {CAPACITY}\n"),
    ) else {
        return;
    };
    let x = lab.ns(&X);
    let sink = lab.sink(&B, B.ip, TCP_PORT);
    // a -> b: 4 MiB in 16 KiB pieces 50 ms apart (about 13 s), connected before the flood.
    let mut transfer = lab.topo.spawn(
        &lab.ns(&A),
        "transfer-a-b",
        &[
            support::python(),
            "-c",
            SOURCE_PY,
            B.ip,
            &TCP_PORT.to_string(),
            &BYTES.to_string(),
            "16384",
            "0.05",
            "5",
        ],
    );
    assert!(
        transfer.wait_for("connected", Duration::from_secs(10)),
        "transfer a -> b did not connect: {}",
        transfer.stdout_text()
    );
    sink.wait_received(1, 64 << 10, Duration::from_secs(10));
    let s0 = lab.stats();
    assert_eq!(s0.conntrack("capacity"), CAPACITY, "conntrack capacity");
    let rss0 = lab.vs().vm_rss_kib();

    let out = py(
        &lab.topo,
        &x,
        SYN_FLOOD_PY,
        &[
            "eth0",
            X.mac,
            V.mac,
            V.ip,
            &TCP_PORT.to_string(),
            &SYNS.to_string(),
        ],
    );
    eprintln!("SYN flood x -> v:{TCP_PORT}: {}", out.trim());
    assert!(out.starts_with(&format!("sent {SYNS} ")), "{out}");
    let flood_ended = Instant::now();
    let s1 = lab.stats();
    let rss1 = lab.vs().vm_rss_kib();
    let still_sending = transfer.running();

    let reached = s1.port(X.port).rx_packets - s0.port(X.port).rx_packets;
    eprintln!(
        "vswitchd received {reached} of the {SYNS} SYNs; conntrack {}; VmRSS {rss0} -> {rss1} KiB; drops {:?}",
        s1.0["conntrack"],
        s1.drops_since(&s0)
    );
    assert!(
        reached > 4 * CAPACITY,
        "only {reached} SYNs reached vswitchd: not enough to fill the table"
    );
    let entries = s1.conntrack("entries");
    assert!(
        entries <= CAPACITY,
        "conntrack entries {entries} > capacity {CAPACITY}"
    );
    assert!(
        entries >= CAPACITY * 9 / 10,
        "the flood should have filled the table: {entries} of {CAPACITY} entries"
    );
    let pressure = s1.conntrack_delta(&s0, "refused_full") + s1.conntrack_delta(&s0, "evicted");
    assert!(
        pressure > 0,
        "a full table must refuse or evict: {}",
        s1.0["conntrack"]
    );
    assert!(
        rss1 < rss0 + 64 * 1024,
        "vswitchd's VmRSS grew from {rss0} KiB to {rss1} KiB during the flood"
    );
    assert!(
        still_sending,
        "the transfer a -> b ended before the flood did; it must run through the flood \
         (slow it down)"
    );

    // The established transfer completes, intact.
    let st = transfer.wait(Duration::from_secs(40));
    assert!(st.success(), "transfer a -> b failed: {st}");
    let sent_text =
        std::fs::read_to_string(lab.topo.dir().join("transfer-a-b.out")).unwrap_or_default();
    let sent: Vec<&str> = sent_text
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| panic!("transfer output: {sent_text}"))
        .split_whitespace()
        .collect();
    let (got, sha) = sink.done(1, Duration::from_secs(5));
    assert_eq!(
        (got.to_string(), sha.as_str()),
        (sent[1].to_owned(), sent[2]),
        "a -> b (bytes, SHA-256) at b vs what a sent"
    );
    assert_eq!(got, BYTES, "bytes received by b");
    eprintln!(
        "transfer a -> b completed {:?} after the flood ended",
        flood_ended.elapsed()
    );
    let s2 = lab.stats();
    assert!(
        s2.conntrack("entries") <= CAPACITY,
        "conntrack entries after the transfer: {}",
        s2.0["conntrack"]
    );
    // Refused SYNs are the only drops a full table may cause.
    let bad = unexpected_drops(&s2, &s0, &["conntrack.full"]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    lab.finish();
}

/// SIGHUP with an invalid desired state (a rule naming a group that does not exist) is
/// rejected with the problem's path, and the running rules stay: b still cannot reach a, a
/// still reaches b; a valid state afterwards is taken.
#[test]
fn invalid_state_on_sighup_is_rejected_and_old_rules_stay() {
    let Some(mut lab) = Lab::start("sgrej", &[&A, &B], &default_state(), "") else {
        return;
    };
    let _sink = lab.sink(&A, A.ip, TCP_PORT);
    let bad_rule = "{id: def-in-missing, security_group_id: sg-default, direction: ingress, \
                    ethertype: IPv4, remote_group_id: sg-missing}";
    // The bad state would also have let b in (b joins sg-default): nothing of it may apply.
    let text = lab
        .vs()
        .reload_rejected(&state_yaml(&["sg-server", "sg-default"], &[bad_rule]));
    assert!(
        text.contains("sg-missing") && text.contains("security_group_rules["),
        "the rejection should name the rule and the missing group:\n{text}"
    );
    assert_eq!(
        lab.probe(&B, A.ip, TCP_PORT),
        "connect-timeout",
        "after a rejected reload, b -> a:{TCP_PORT} must still time out"
    );
    tcp_transfer(
        &lab.topo,
        &lab.ns(&A),
        &lab.ns(&B),
        B.ip,
        TCP_PORT,
        256 << 10,
    );
    // A valid state is still taken after a rejected one.
    lab.reload(&state_yaml(&["sg-server", "sg-default"], &[]));
    assert_eq!(
        lab.probe(&B, A.ip, TCP_PORT),
        "sent",
        "b (now a member) -> a:{TCP_PORT} must connect"
    );
    lab.finish();
}

/// Pings of 3,000 bytes over IPv6 from a to v are fragmented by the kernels both ways; the
/// first fragment of each is judged by the rules and conntrack, the later ones follow it, so
/// every echo is answered and no fragment is dropped. (IPv4 fragments cannot be shown through
/// net_af_packet: DPDK 22.11's PMD joins its socket to a fanout group with
/// PACKET_FANOUT_FLAG_DEFRAG, so the kernel reassembles IPv4 datagrams before vswitchd sees
/// them; the unit tests cover IPv4 fragments.)
#[test]
fn fragmented_datagrams_cross_security_groups() {
    let Some(mut lab) = Lab::start("sgfrag", &[&A, &V], &default_state(), "") else {
        return;
    };
    let a = lab.ns(&A);
    let s0 = lab.stats();
    let cap = lab.topo.capture_with(
        &lab.ns(&V),
        "eth0",
        "frag-v",
        &["ip6", "and", "ip6[6] == 44"],
    );
    let out = lab.topo.exec(
        &a,
        &[
            "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-s", "3000", V.ip6,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let frags = cap.stop();
    let s1 = lab.stats();
    assert!(
        out.status.success() && text.contains("3 received"),
        "ping -6 -s 3000 {}:\n{text}{}\ndrops {:?}",
        V.ip6,
        String::from_utf8_lossy(&out.stderr),
        s1.drops_since(&s0)
    );
    // v saw the fragments themselves (3 per echo request, 3 per reply), not whole datagrams.
    assert!(
        frags.len() >= 18,
        "fragments seen at v: {}\n{}",
        frags.len(),
        frags.join("\n")
    );
    assert_eq!(s1.drop_delta(&s0, "conntrack.fragment"), 0);
    let bad = unexpected_drops(&s1, &s0, &[]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    lab.finish();
}

/// Two workers (sharing CPU 1 through `lcore_cpus` on this 2-CPU machine) each poll one rx
/// queue of a's port and one of v's (the kernel spreads flows over the queues by hash, as
/// RSS would): packets of a connection that arrive on the worker that does not own it are
/// handed over its ring. TCP (4 MiB, SHA-256) and ping complete,
/// the hand-off counter shows the rings in use, and nothing is dropped.
#[test]
fn connections_meet_their_owner_core_across_two_workers() {
    let Some(mut lab) = Lab::start_edit("sgcore", &[&A, &V], &default_state(), &|h| {
        assert!(
            h.contains("cores = [1]\n"),
            "host config layout changed: {h}"
        );
        *h = h.replace("cores = [1]\n", "cores = [1, 2]\n");
        // Each af_packet port gets two queue pairs (a fanout group spreads flows over them by
        // hash, as RSS would), one rx queue per worker, and a tx queue for each worker.
        *h = h.replace(",iface=", ",qpairs=2,iface=");
        *h = h.replace(
            "kind = \"instance\"\n",
            "kind = \"instance\"\nrx_queues = 2\n",
        );
        h.push_str("\n[lcore_cpus]\n\"2\" = 1\n");
    }) else {
        return;
    };
    let (a, v) = (lab.ns(&A), lab.ns(&V));
    let s0 = lab.stats();
    tcp_transfer(&lab.topo, &a, &v, V.ip, TCP_PORT, 4 << 20);
    let (rc, text) = ping(&lab.topo, &a, V.ip, 3, 4);
    assert_eq!(rc, 0, "ping a -> v:\n{text}");
    let s1 = lab.stats();
    let handed = s1.event_delta(&s0, "conntrack.handoff");
    assert!(handed > 100, "hand-offs between the workers: {handed}");
    let bad = unexpected_drops(&s1, &s0, &[]);
    assert!(bad.is_empty(), "unexpected drops {bad:?}");
    lab.finish();
}
