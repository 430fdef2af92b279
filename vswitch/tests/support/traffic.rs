//! Traffic between namespaces: kernel ping, a SHA-256-checked TCP transfer, scapy snippets.
use std::time::Duration;

use super::*;

/// Kernel ping from `ns` to `dst`, 0.2 s apart, giving up after `deadline_s`; returns ping's
/// exit code (0: all answered, 1: some lost) and its output.
pub fn ping(topo: &Topology, ns: &str, dst: &str, count: u32, deadline_s: u32) -> (i32, String) {
    let (c, w) = (count.to_string(), deadline_s.to_string());
    let out = topo.exec(
        ns,
        &[
            "ping", "-n", "-c", &c, "-i", "0.2", "-W", "1", "-w", &w, dst,
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Pings until one reply comes back within `warmup_s` (the first packets may wait, or be
/// dropped, while the switches resolve next hops, VTEPs or the external gateway), then
/// asserts that `count` more are all answered.
pub fn ping_ok(topo: &Topology, ns: &str, dst: &str, count: u32, warmup_s: u32) {
    let (rc, text) = ping(topo, ns, dst, 1, warmup_s);
    assert_eq!(
        rc, 0,
        "warm-up ping {ns} -> {dst} got no reply within {warmup_s} s:\n{text}"
    );
    let (rc, text) = ping(topo, ns, dst, count, 4);
    assert_eq!(rc, 0, "ping {ns} -> {dst} lost packets:\n{text}");
    assert!(text.contains(&format!("{count} received")), "{text}");
}

/// A UDP server on `argv[1]:argv[2]` for [`big_udp_exchange`] (bound to the address it is
/// asked at, so that it answers from that address): answers one datagram. It
/// prints "got LEN SHA256 FROM", then sends back as many bytes as the datagram's first 8 ASCII
/// digits ask for (DF clear: `IP_PMTUDISC_DONT`), starting with the length and SHA-256 of what
/// it got.
const BIG_UDP_SERVER_PY: &str = r#"
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
print("listening", flush=True)
data, peer = s.recvfrom(65535)
sha = hashlib.sha256(data).hexdigest()
print("got", len(data), sha, peer[0], flush=True)
head = ("%08d%s" % (len(data), sha)).encode()
want = int(data[:8])
s.sendto(head + bytes((k * 7) % 256 for k in range(want - len(head))), peer)
"#;

/// The client of [`BIG_UDP_SERVER_PY`]: sends `argv[3]` random bytes (DF clear) to
/// `argv[1]:argv[2]` asking for `argv[4]` back; checks the answer's length and that it
/// names what was sent; prints "ok SENT GOT".
const BIG_UDP_CLIENT_PY: &str = r#"
import hashlib, os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
s.settimeout(5)
size, want = int(sys.argv[3]), int(sys.argv[4])
data = b"%08d" % want + os.urandom(size - 8)
s.sendto(data, (sys.argv[1], int(sys.argv[2])))
back, peer = s.recvfrom(65535)
head = ("%08d%s" % (len(data), hashlib.sha256(data).hexdigest())).encode()
assert len(back) == want, "got %d bytes back, not %d" % (len(back), want)
assert back.startswith(head), "the answer names another datagram"
print("ok", len(data), len(back), flush=True)
"#;

/// One UDP exchange of datagrams too big for some link on the way, with DF clear so that a
/// router on the way may fragment them: `client` (a namespace) sends `sizes.0` bytes of UDP
/// payload to `dst`:`port`, which reaches [`BIG_UDP_SERVER_PY`] on `bind`:`port` in namespace
/// `server`, and gets `sizes.1` back. Asserts both arrived whole; returns the server's view of
/// the sender's address.
pub fn big_udp_exchange(
    topo: &Topology,
    client: &str,
    (server, bind): (&str, &str),
    (dst, port): (&str, u16),
    sizes: (usize, usize),
) -> String {
    let port = port.to_string();
    let srv = python_server(
        topo,
        server,
        "big-udp-server",
        BIG_UDP_SERVER_PY,
        &[bind, &port],
    );
    let (a, b) = (sizes.0.to_string(), sizes.1.to_string());
    let out = py(topo, client, BIG_UDP_CLIENT_PY, &[dst, &port, &a, &b]);
    assert!(out.contains(&format!("ok {a} {b}")), "{out}");
    let text = server_output(srv, 10);
    let got: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("got "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(got.get(1), Some(&a.as_str()), "the server got: {text}");
    got.get(3).map(|s| s.to_string()).unwrap_or_default()
}

/// A connected UDP socket sends to `argv[1]:argv[2]`, where nothing listens, until the ICMP
/// port unreachable that comes back is matched to it (3 tries); prints "refused". (The
/// kernel matches an ICMP error to a socket by the addresses and ports of the quoted packet.)
const UDP_REFUSED_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.connect((sys.argv[1], int(sys.argv[2])))
for _ in range(3):
    try:
        s.send(b"anyone?")
        s.recv(2048)
    except ConnectionRefusedError:
        print("refused")
        sys.exit(0)
    except socket.timeout:
        continue
sys.exit("no port unreachable reached the socket")
"#;

/// A connected UDP socket in `ns` sends to `dst`:`port`, where nothing listens
/// ([`UDP_REFUSED_PY`]); returns what it printed ("refused" once the port unreachable that
/// came back reached it).
pub fn udp_refused(topo: &Topology, ns: &str, dst: &str, port: u16) -> String {
    py(topo, ns, UDP_REFUSED_PY, &[dst, &port.to_string()])
}

/// A UDP server on `argv[1]:argv[2]` for [`late_udp_answer_refused`]: takes one datagram,
/// waits half a second (its sender has closed its socket by then), answers it on a socket
/// connected to the sender (Linux reports ICMP errors to connected UDP sockets only) and
/// prints "refused", "answered" or "silence" with the sender's address and port.
const LATE_UDP_SERVER_PY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
print("listening", flush=True)
data, peer = s.recvfrom(2048)
time.sleep(0.5)
s.connect(peer)
s.send(b"a late answer")
s.settimeout(5)
try:
    s.recv(2048)
    what = "answered"
except ConnectionRefusedError:
    what = "refused"
except socket.timeout:
    what = "silence"
print(what, peer[0], peer[1], flush=True)
"#;

/// The client of [`LATE_UDP_SERVER_PY`]: one datagram to `argv[1]:argv[2]`, then its socket
/// closed at once.
const LATE_UDP_CLIENT_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"a question", (sys.argv[1], int(sys.argv[2])))
s.close()
print("sent", flush=True)
"#;

/// `client` (a namespace) sends one UDP datagram to `dst`:`port` and closes its socket; the
/// server in namespace `server`, bound to `bind`:`port`, answers it late, and `client`'s
/// kernel answers that with ICMP port unreachable, which must reach the server as an error
/// about its own answer (the kernel checks the quoted addresses and ports against the
/// socket). Returns the server's line: "refused ADDR PORT" when it did, ADDR:PORT being the
/// address and port the server saw the question from.
pub fn late_udp_answer_refused(
    topo: &Topology,
    client: &str,
    (server, bind): (&str, &str),
    (dst, port): (&str, u16),
) -> String {
    let port = port.to_string();
    let srv = python_server(
        topo,
        server,
        "late-udp-server",
        LATE_UDP_SERVER_PY,
        &[bind, &port],
    );
    let out = py(topo, client, LATE_UDP_CLIENT_PY, &[dst, &port]);
    assert!(out.contains("sent"), "{out}");
    server_output(srv, 15)
        .lines()
        .find(|l| {
            l.starts_with("refused ") || l.starts_with("answered ") || l.starts_with("silence ")
        })
        .unwrap_or_default()
        .to_string()
}

/// The words of the first line of `text` that starts with `key`.
pub fn line_words<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no \"{key} ...\" line in:\n{text}"))
        .split_whitespace()
        .collect()
}

/// A python server (`code` with `args`) started in `ns`, once it has printed "listening".
pub fn python_server(topo: &Topology, ns: &str, label: &str, code: &str, args: &[&str]) -> Bg {
    let mut a = vec![python(), "-c", code];
    a.extend_from_slice(args);
    let mut srv = topo.spawn(ns, label, &a);
    assert!(
        srv.wait_for("listening", Duration::from_secs(10)),
        "{label} in {ns} did not start: {}",
        srv.stderr_text()
    );
    srv
}

/// What server `srv` printed, once it has exited successfully within `secs`.
pub fn server_output(srv: Bg, secs: u64) -> String {
    let (out, err, label) = (srv.stdout.clone(), srv.stderr.clone(), srv.label.clone());
    let st = srv.wait(Duration::from_secs(secs));
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let err = std::fs::read_to_string(err).unwrap_or_default();
    assert!(st.success(), "{label} failed ({st}): {text}\n{err}");
    text
}

/// Runs a python snippet (with scapy importable) inside `ns` with `args`; asserts success
/// and returns its stdout.
pub fn py(topo: &Topology, ns: &str, code: &str, args: &[&str]) -> String {
    let mut a = vec![python(), "-c", code];
    a.extend_from_slice(args);
    topo.ok(ns, &a)
}

const TCP_SERVER_PY: &str = r#"
import hashlib, socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
stall = float(sys.argv[3]) if len(sys.argv) > 3 else 0
if stall:
    # A small receive buffer (the accepted socket inherits it), so that the window closes.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(30)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(30)
time.sleep(stall)
h, n, t0 = hashlib.sha256(), 0, time.monotonic()
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
dt = time.monotonic() - t0
print("received", n, h.hexdigest(), "%.3f" % dt, flush=True)
"#;

const TCP_CLIENT_PY: &str = r#"
import hashlib, os, socket, sys
n = int(sys.argv[3])
data = os.urandom(n)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)  # the server closes once it has read everything
c.close()
print("sent", n, hashlib.sha256(data).hexdigest(), flush=True)
"#;

/// Sends `bytes` random bytes over TCP from `client_ns` to a server in `server_ns` listening
/// on `server_ip:port` (IPv4 or IPv6); asserts that every byte arrived with the same SHA-256.
/// Returns the receiver's seconds from accept to EOF.
pub fn tcp_transfer(
    topo: &Topology,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    port: u16,
    bytes: usize,
) -> f64 {
    let at = (server_ip, server_ip, port);
    tcp_transfer_to_a_stalled_reader(topo, client_ns, server_ns, at, bytes, 0.0)
}

/// [`tcp_transfer`] to a server bound to `bind` that, with a 32 KiB receive buffer, reads
/// nothing for `stall_s` seconds after it accepts (none: 0): its window closes, and the
/// sender probes it until it opens again; the client connects to `dst` (`bind` behind a
/// floating IP). Returns the receiver's seconds from the end of the stall to EOF.
pub fn tcp_transfer_to_a_stalled_reader(
    topo: &Topology,
    client_ns: &str,
    server_ns: &str,
    (bind, dst, port): (&str, &str, u16),
    bytes: usize,
    stall_s: f64,
) -> f64 {
    let port_s = port.to_string();
    let label = format!("tcp-server-{port}");
    let stall = stall_s.to_string();
    let server = python_server(
        topo,
        server_ns,
        &label,
        TCP_SERVER_PY,
        &[bind, &port_s, &stall],
    );
    let client = py(
        topo,
        client_ns,
        TCP_CLIENT_PY,
        &[dst, &port_s, &bytes.to_string()],
    );
    let server_out = server_output(server, 30);
    let sent: Vec<&str> = client.split_whitespace().collect();
    let recv = line_words(&server_out, "received");
    assert_eq!(sent[1], bytes.to_string(), "client: {client}");
    assert_eq!(
        recv[1],
        bytes.to_string(),
        "server received {} of {bytes} bytes",
        recv[1]
    );
    assert_eq!(
        recv[2], sent[2],
        "SHA-256 differs between sender and receiver"
    );
    let secs: f64 = recv[3].parse().expect("seconds");
    eprintln!(
        "TCP {bytes} bytes {client_ns} -> {server_ns} in {secs:.3} s ({:.0} Mbit/s)",
        bytes as f64 * 8.0 / secs.max(1e-6) / 1e6
    );
    secs
}

/// `udp_sink.py IP PORT`: counts the datagrams that arrive (never answering), until none came
/// for 2 s after the first; prints `listening`, then `got N distinct M` (M: distinct sequence
/// numbers, the first 4 bytes of each datagram).
const UDP_SINK_PY: &str = r#"
import socket, struct, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
seen, n = set(), 0
s.settimeout(30)
while True:
    try:
        d = s.recv(2048)
    except socket.timeout:
        break
    s.settimeout(2)
    n += 1
    seen.add(struct.unpack("!I", d[:4])[0])
print("got", n, "distinct", len(seen), flush=True)
"#;

/// `udp_stream.py IP PORT COUNT`: COUNT datagrams of 200 bytes (sequence number first) to
/// IP:PORT, one way, paced (2 ms every 20: about 10,000 a second, which a debug build of
/// vswitchd on a busy 2-CPU machine keeps up with); prints `sent COUNT`.
const UDP_STREAM_PY: &str = r#"
import socket, struct, sys, time
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
pad = bytes(196)
for i in range(count):
    s.sendto(struct.pack("!I", i) + pad, (ip, port))
    if i % 20 == 19:
        time.sleep(0.002)
print("sent", count, flush=True)
"#;

/// A one-way UDP stream (a syslog or RTP stream: never answered): `n` datagrams of 200 bytes
/// from `client_ns` to `dst:port`, received by a sink in `server_ns` bound to `bind:port`
/// (`bind` behind a floating IP). Returns how many distinct datagrams arrived. The sender's
/// next hop should be resolved already: a kernel drops most of what it sends while it asks.
pub fn udp_stream_one_way(
    topo: &Topology,
    client_ns: &str,
    server_ns: &str,
    (bind, dst, port): (&str, &str, u16),
    n: u32,
) -> u32 {
    let port = port.to_string();
    let sink = python_server(topo, server_ns, "udp-sink", UDP_SINK_PY, &[bind, &port]);
    let sent = py(
        topo,
        client_ns,
        UDP_STREAM_PY,
        &[dst, &port, &n.to_string()],
    );
    assert!(sent.contains(&format!("sent {n}")), "sender: {sent}");
    let got = server_output(sink, 40);
    let w = line_words(&got, "got");
    eprintln!(
        "UDP one way {client_ns} -> {dst}:{port}: {} of {n} arrived",
        w[3]
    );
    w[3].parse().expect("distinct count")
}
