#!/usr/bin/env python3
"""Benchmark runner: Mpps per worker core of vswitchd against dpdk-testpmd on the same traffic.

For every scenario in perf/scenarios/ (or those named with --scenario), first a verification
run: vswitchd replays the pcap once with its output port writing a pcap; every frame must come
out, none be dropped, each of scenario.json's `expect_events` be raised once per frame and every
frame out be the one gen_pcap.py's checker expects (--verify-only: only this; --no-verify: skip
it). Then, for --runs rounds, interleaved so machine noise hits every candidate alike:
  ours     vswitchd (one worker core, idle mode busy) replaying the scenario's pcap on
           net_pcap (infinite_rx) into net_null; two SIGUSR1 snapshots after the warm-up,
           Mpps = delta tx_packets of the scenario's output port / elapsed time;
  io       dpdk-testpmd --forward-mode=io on the same pcap, same cores, same memory mode;
  macswap  dpdk-testpmd --forward-mode=macswap (touches every frame's header: the fairer bound).
testpmd's rate is the mean of its per-second Tx-pps (--stats-period 1) of the output port over
the same window (samples after the warm-up). Each figure is the median over the runs; `ratio`
is the median of the per-run ratios ours/macswap (each taken from one round, so a slow patch of
the machine cancels out).

Writes perf/results/latest.json (one record per scenario; records of scenarios not run this
time are kept) and keeps every run's configs and logs
in perf/out/<scenario>/ (git-ignored). Standard library only.

    python3 perf/bench.py                  # all scenarios, 5 runs, ~2.5 min per scenario
    python3 perf/bench.py --runs 3 --scenario l2 --duration 5 --warmup 3

--changes-per-s N adds a fourth candidate to every round: vswitchd again, while a client applies
N API changes per second over its unix socket (a port created and deleted on a scratch network, a
security group rule added and removed), and reports that rate as a ratio to the same round's rate
without changes (`ratio_under_changes`), with the change rate achieved and its latency.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import datetime
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import tomllib
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gen_pcap  # noqa: E402
import http.client  # noqa: E402
import socket as _socket  # noqa: E402

KINDS = ("ours", "io", "macswap")


class BenchError(Exception):
    pass


# --- process handling: every child in its own process group, all killed on any exit ---------------
_LIVE: "set[Proc]" = set()


def _kill_all() -> None:
    for p in list(_LIVE):
        p.kill()


atexit.register(_kill_all)


def _on_signal(signum, _frame):
    _kill_all()
    raise SystemExit(128 + signum)


for _s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_s, _on_signal)


class Proc:
    """A child process whose output lines are collected by a thread (and written to a log)."""

    def __init__(self, argv: List[str], log_path: str, env: Optional[Dict[str, str]] = None):
        self.argv = argv
        self.log = open(log_path, "w", buffering=1)
        self.log.write("$ " + " ".join(argv) + "\n")
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.tail: "collections.deque[str]" = collections.deque(maxlen=25)
        self.p = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, cwd=ROOT, text=True, errors="replace", bufsize=1,
        )
        _LIVE.add(self)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.log.write(line)
            self.tail.append(line.rstrip("\n"))
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float) -> "re.Match[str]":
        """The next output line matching `pattern` (earlier lines are consumed)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for /{pattern}/ from "
                                 f"{os.path.basename(self.argv[0])}\n{self.tail_text()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.p.wait()
                raise BenchError(f"{os.path.basename(self.argv[0])} exited (rc {self.p.returncode}) "
                                 f"before printing /{pattern}/\n{self.tail_text()}")
            m = rx.search(line)
            if m:
                return m

    def tail_text(self) -> str:
        return "\n".join("    | " + line for line in self.tail)

    def send(self, sig: int) -> None:
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Asks the process to stop, waits, kills the whole group if it does not."""
        self.send(sig)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.kill()  # leftovers of the group, if any
        return self.p.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.reader.join(timeout=5)
        if self.p.stdin:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        self.log.close()
        _LIVE.discard(self)


# --- environment -------------------------------------------------------------------------------------
def hugepages_free_mib() -> int:
    info = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                info[k] = v.split()
    except OSError:
        return 0
    try:
        free = int(info["HugePages_Free"][0])
        size_kib = int(info["Hugepagesize"][0])
    except (KeyError, ValueError, IndexError):
        return 0
    mounted = False
    try:
        with open("/proc/mounts") as fh:
            mounted = any(line.split()[2] == "hugetlbfs" for line in fh if len(line.split()) > 2)
    except OSError:
        pass
    return free * size_kib // 1024 if mounted else 0


def memory_args(mode: str) -> List[str]:
    if mode == "huge":
        return ["--in-memory"]
    return ["--no-huge", "-m", "1024", "--no-shconf"]


def host_info() -> Dict[str, object]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "hostname": platform.node()}


def cmd_out(argv: List[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


# --- scenarios ---------------------------------------------------------------------------------------
class Scenario:
    def __init__(self, name: str, args):
        self.name = name
        self.dir = os.path.join(HERE, "scenarios", name)
        with open(os.path.join(self.dir, "scenario.json")) as fh:
            self.meta = json.load(fh)
        # Input ports replay a pcap each (input_ports[k]: the scenario's stream k); Mpps is the
        # sum of tx over the output ports (output_ports[k] carries input k's traffic).
        self.input_ports: List[str] = list(self.meta.get("input_ports") or [self.meta["input_port"]])
        self.output_ports: List[str] = list(self.meta.get("output_ports") or [self.meta["output_port"]])
        # Events (stage counters) every received frame must raise once, e.g. router.routed.
        self.expect_events: List[str] = list(self.meta.get("expect_events", []))
        # Events raised once per frame received on one input port (a direction of a
        # conversation, e.g. router.fip_dnat inbound only): {input port: [event, ...]}.
        self.expect_events_by_input: Dict[str, List[str]] = {
            k: list(v) for k, v in self.meta.get("expect_events_by_input", {}).items()}
        for n in self.expect_events_by_input:
            if n not in self.input_ports:
                raise BenchError(f"scenario {name}: expect_events_by_input names {n!r}, not an input port")
        # Frames an output port sends that no input frame caused, once per start (e.g. the
        # gratuitous ARP announcing a floating IP): added to what the verification run expects
        # that port to send (a measuring window starts after them).
        self.unsolicited_tx: Dict[str, int] = dict(self.meta.get("unsolicited_tx", {}))
        for n in self.unsolicited_tx:
            if n not in self.output_ports:
                raise BenchError(f"scenario {name}: unsolicited_tx names {n!r}, not an output port")
        # Events raised a given number of times per flow over the whole replay (e.g.
        # conntrack.new: 2 per TCP connection, one per zone): flows x n in the verification
        # run, and none in a measuring window (the steady state opens nothing).
        self.expect_events_per_flow: Dict[str, int] = dict(self.meta.get("expect_events_per_flow", {}))
        # conntrack gauges (stats-json "conntrack") expected at both snapshots of a run, per flow.
        self.expect_conntrack_per_flow: Dict[str, int] = dict(self.meta.get("expect_conntrack_per_flow", {}))
        # Any drop in a measuring window is a warning (not only recorded).
        self.no_drops: bool = bool(self.meta.get("no_drops", False))
        self.out = os.path.join(HERE, "out", name)
        os.makedirs(self.out, exist_ok=True)
        if name not in gen_pcap.SCENARIOS:
            raise BenchError(f"scenario {name}: no traffic generator in perf/gen_pcap.py SCENARIOS")
        sc = gen_pcap.SCENARIOS[name]
        self.pcap = os.path.join(self.out, f"{name}.pcap")
        if sc.streams is not None:
            if len(sc.stream_names) != len(self.input_ports) or len(self.output_ports) != len(self.input_ports):
                raise BenchError(f"scenario {name}: gen_pcap.py has {len(sc.stream_names)} streams, "
                                 f"scenario.json {len(self.input_ports)} input_ports and "
                                 f"{len(self.output_ports)} output_ports")
            written = gen_pcap.generate_streams(name, self.pcap, args.frames, args.flows)
            self.pcaps = [p for p, _ in written]
            self.input_frames = [n for _, n in written]
        else:
            if len(self.input_ports) != 1:
                raise BenchError(f"scenario {name}: {len(self.input_ports)} input_ports but one stream "
                                 "in gen_pcap.py")
            self.pcaps = [self.pcap]
            self.input_frames = [gen_pcap.generate(name, self.pcap, args.frames, args.flows)]
        # All input frames of one pass of the pcaps.
        self.frames = sum(self.input_frames)
        self.flows = args.flows or sc.flows.n_flows
        self.flow_spec = dataclasses.replace(sc.flows, n_flows=self.flows)
        self.streams = sc.streams
        self.verify_streams = sc.verify_streams
        self.state_needs = sc.state_needs
        # Checks one output frame of the verification run (None: counters only).
        self.verify = sc.verify
        # Length of the frames in the pcap (without FCS): the input side (vxlan-decap's carry
        # the 50 bytes of outer headers, vxlan-encap's get them on the way out).
        self.frame_len = len(sc.build(sc.flows, 0))
        self.state = os.path.join(self.dir, "state.yaml")
        with open(os.path.join(self.dir, "host.toml")) as fh:
            self.host_template = fh.read()
        self._check_state(sc)

    def _check_state(self, sc) -> None:
        """The pcap's sender must be the state's port (or port security drops everything)."""
        with open(self.state) as fh:
            text = fh.read().lower()
        for what in (sc.flows.src_mac, sc.flows.src_ip, sc.flows.dst_mac, *sc.state_needs):
            if what.lower() not in text:
                raise BenchError(f"scenario {self.name}: {what} (from gen_pcap.py) is not in {self.state}; "
                                 "keep the two in step")

    def host_toml(self, mem: str, main_core: int, worker_core: int, prefix: str) -> str:
        eal = ", ".join(json.dumps(a) for a in memory_args(mem))
        text = self.host_template
        for k, p in enumerate(self.pcaps):
            text = text.replace(f"@PCAP{k}@", p)
        text = (text.replace("@PCAP@", self.pcaps[0])
                .replace("@MAIN_CORE@", str(main_core))
                .replace("@WORKER_CORE@", str(worker_core))
                .replace("@EAL_ARGS@", eal)
                .replace("@PREFIX@", prefix))
        left = re.findall(r"@[A-Z_]+@", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
        if left:
            raise BenchError(f"scenario {self.name}: unknown placeholders {left} in host.toml")
        return text

    def port_devargs(self, text: str) -> List[tuple]:
        """[(name, devargs), ...] of a filled-in host.toml, in port order (= DPDK port ids,
        the order testpmd gets the same --vdev's in)."""
        try:
            ports = tomllib.loads(text).get("ports", [])
        except tomllib.TOMLDecodeError as e:
            raise BenchError(f"scenario {self.name}: host.toml: {e}")
        out = [(p.get("name"), p.get("devargs")) for p in ports]
        names = [n for n, _ in out]
        for n in self.input_ports + self.output_ports:
            if n not in names:
                raise BenchError(f"scenario {self.name}: port {n!r} (scenario.json) is not in host.toml")
        for n, d in out:
            if n in self.input_ports and not (d or "").startswith("net_pcap") or \
                    n in self.input_ports and "infinite_rx=1" not in d:
                raise BenchError(f"scenario {self.name}: input port {n} must be "
                                 f"'net_pcapN,rx_pcap=@PCAPk@,infinite_rx=1' (is {d!r})")
        return out


def remove_runtime_dir(prefix: str) -> None:
    """The EAL leaves /var/run/dpdk/<file-prefix> behind even with --in-memory."""
    shutil.rmtree(os.path.join("/var/run/dpdk", prefix), ignore_errors=True)


def stats_port(s: Dict, name: str) -> Dict:
    for e in s["ports"]:
        if e["name"] == name:
            return e
    raise BenchError(f"no port {name!r} in vswitchd's stats-json")


def event_deltas(s0: Optional[Dict], s1: Dict, names: List[str]) -> Dict[str, Optional[int]]:
    """Each event's increase from snapshot s0 (None: from start) to s1; None if not reported."""
    out: Dict[str, Optional[int]] = {}
    for n in names:
        if n not in s1.get("events", {}):
            out[n] = None
        else:
            out[n] = s1["events"][n] - (s0 or {}).get("events", {}).get(n, 0)
    return out


def event_mismatches(events: Dict[str, Optional[int]], rx: int, slack: int,
                     totals: Optional[Dict[str, int]] = None) -> List[str]:
    """The expected events that are not raised once per received frame (within `slack`), or,
    those named in `totals`, not exactly that many times (e.g. once per flow)."""
    bad = []
    for n, v in events.items():
        want = (totals or {}).get(n)
        if v is None:
            bad.append(f"event {n} not in vswitchd's stats-json")
        elif want is not None:
            if v != want:
                bad.append(f"event {n} = {v}, expected {want}")
        elif abs(v - rx) > slack:
            bad.append(f"event {n} = {v}, expected one per received frame ({rx})")
    return bad


def events_by_input_mismatches(sc: "Scenario", s0: Optional[Dict], s1: Dict, rx_of: Dict[str, int],
                               slack_of) -> tuple:
    """(events, problems) of the events expected once per frame of one input port: each
    event's increase from s0 to s1 against the frames that port received (`rx_of`), within
    `slack_of(rx)`."""
    events: Dict[str, Optional[int]] = {}
    bad: List[str] = []
    for port, names in sc.expect_events_by_input.items():
        ev = event_deltas(s0, s1, names)
        events.update(ev)
        for m in event_mismatches(ev, rx_of[port], slack=slack_of(rx_of[port])):
            bad.append(m.replace("per received frame", f"per frame received on {port}"))
    return events, bad


def conntrack_mismatches(s: Dict, want: Dict[str, int], when: str) -> List[str]:
    ct = s.get("conntrack") or {}
    bad = []
    for n, v in want.items():
        if ct.get(n) != v:
            bad.append(f"conntrack {n} = {ct.get(n)} {when}, expected {v}")
    return bad


# --- one measurement each ------------------------------------------------------------------------------
class _UnixHTTP(http.client.HTTPConnection):
    """HTTP/1.1 (keep-alive) over vswitchd's API socket."""

    def __init__(self, path: str):
        super().__init__("vswitchd", timeout=10)
        self.path = path

    def connect(self):
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


class ChangeStream:
    """Applies `rate` API changes per second until stopped: a port created and deleted on a
    scratch network, a security group rule added and removed (each change a new generation)."""

    def __init__(self, sock: str, rate: int, cpu: int):
        self.sock, self.rate, self.cpu = sock, rate, cpu
        self.done, self.failed, self.lat = 0, [], []
        self.stop_ev = threading.Event()
        self.t0 = self.t1 = 0.0
        self.conn = _UnixHTTP(sock)
        # The scratch network and group the changes touch (not measured).
        self.call("POST", "/v2.0/networks", {"network": {"id": "bench-scratch",
                  "provider:network_type": "vxlan", "provider:segmentation_id": 16000000}})
        self.call("POST", "/v2.0/subnets", {"subnet": {"id": "bench-scratch-s", "network_id": "bench-scratch",
                  "cidr": "10.250.0.0/16"}})
        self.call("POST", "/v2.0/security-groups", {"security_group": {"id": "bench-scratch-sg"}})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def call(self, method: str, path: str, body=None) -> int:
        data = json.dumps(body) if body is not None else None
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        text = r.read()
        if r.status >= 300:
            raise BenchError(f"API {method} {path}: {r.status} {text[:300]!r}")
        return r.status

    def _ops(self, i: int):
        k = i // 4
        return [
            ("POST", "/v2.0/ports", {"port": {"id": f"bench-p{k}", "network_id": "bench-scratch",
                                               "binding:host_id": "elsewhere"}}),
            ("DELETE", f"/v2.0/ports/bench-p{k}", None),
            ("POST", "/v2.0/security-group-rules", {"security_group_rule": {
                "id": f"bench-r{k}", "security_group_id": "bench-scratch-sg", "direction": "ingress",
                "protocol": "tcp", "port_range_min": 1 + k % 60000, "port_range_max": 1 + k % 60000}}),
            ("DELETE", f"/v2.0/security-group-rules/bench-r{k}", None),
        ][i % 4]

    def _run(self):
        # This client runs on the control core, as an operator's tooling would: never on the
        # worker's core, whose rate is being measured.
        try:
            os.sched_setaffinity(0, {self.cpu})
        except OSError:
            pass
        self.t0 = time.monotonic()
        i = 0
        while not self.stop_ev.is_set():
            due = self.t0 + i / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            method, path, body = self._ops(i)
            t = time.monotonic()
            try:
                self.call(method, path, body)
            except (BenchError, OSError, http.client.HTTPException) as e:
                self.failed.append(str(e))
                if len(self.failed) > 10:
                    break
                self.conn = _UnixHTTP(self.sock)
            self.lat.append(time.monotonic() - t)
            i += 1
            self.done = i
        self.t1 = time.monotonic()

    def start(self):
        self.thread.start()

    def stop(self) -> Dict[str, object]:
        self.stop_ev.set()
        self.thread.join(timeout=30)
        secs = max(1e-9, self.t1 - self.t0)
        lat = sorted(self.lat) or [0.0]
        return {"changes": self.done, "changes_per_s": round(self.done / secs, 1),
                "latency_p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
                "latency_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 2),
                "failed": self.failed[:3]}


def block_irq_cpus() -> Dict[int, int]:
    """Interrupts taken so far per CPU by block devices (virtio-blk request queues, NVMe): the
    CPU that completes every fsync of the state file."""
    per: Dict[int, int] = collections.Counter()
    try:
        with open("/proc/interrupts") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    ncpu = len(lines[0].split()) if lines else 0
    for line in lines[1:]:
        if re.search(r"virtio\d+-req|nvme\d+q|\bblkif\b", line):
            counts = line.split()[1:1 + ncpu]
            for cpu, c in enumerate(counts):
                if c.isdigit():
                    per[cpu] += int(c)
    return dict(per)


def run_ours(sc: Scenario, a, mem: str, run: int, changes: int = 0) -> Dict[str, object]:
    prefix = f"vsbench{os.getpid()}r{run}"
    cfg = os.path.join(sc.out, f"host-{mem}.toml")
    sock = os.path.join(sc.out, "api.sock")
    with open(cfg, "w") as fh:
        fh.write(sc.host_toml(mem, a.main_core, a.worker_core, prefix))
        fh.write(f'\n[control]\nsocket = "{sock}"\n')
    # Changes go to a copy of the state (vswitchd writes every accepted change to its file).
    state = sc.state
    if changes:
        state = os.path.join(sc.out, "state-changes" + os.path.splitext(sc.state)[1])
        shutil.copyfile(sc.state, state)
    stream = None
    env = dict(os.environ, NO_COLOR="1")
    env.setdefault("RUST_LOG", "info")
    p = Proc([a.vswitchd, "--config", cfg, "--state", state],
             os.path.join(sc.out, f"vswitchd-run{run}{'-changes' if changes else ''}.log"), env)
    change_stats = None
    try:
        p.expect(r"^vswitchd: running", timeout=60)
        if changes:
            stream = ChangeStream(sock, changes, a.main_core)
            stream.start()
        time.sleep(a.warmup)
        t0 = time.monotonic()
        p.send(signal.SIGUSR1)
        s0 = json.loads(p.expect(r"^stats-json: (.*)$", timeout=20).group(1))
        time.sleep(max(0.0, t0 + a.duration - time.monotonic()))
        t1 = time.monotonic()
        p.send(signal.SIGUSR1)
        s1 = json.loads(p.expect(r"^stats-json: (.*)$", timeout=20).group(1))
        if stream:
            change_stats = stream.stop()
        rc = p.stop(signal.SIGTERM)
    finally:
        if stream:
            stream.stop_ev.set()
        p.kill()
        remove_runtime_dir(prefix)
    tail = "\n".join(p.tail)

    port = stats_port
    tx = sum(port(s1, n)["tx_packets"] - port(s0, n)["tx_packets"] for n in sc.output_ports)
    rx = sum(port(s1, n)["rx_packets"] - port(s0, n)["rx_packets"] for n in sc.input_ports)
    drops = {k: v - s0["drops"].get(k, 0) for k, v in s1["drops"].items() if v - s0["drops"].get(k, 0)}
    res: Dict[str, object] = {"mpps": tx / (t1 - t0) / 1e6, "rx_mpps": rx / (t1 - t0) / 1e6}
    if change_stats:
        res["changes"] = change_stats
        if change_stats["failed"]:
            raise BenchError(f"API changes failed: {change_stats['failed']}")
    if drops:
        res["drops"] = drops
    # The scenario's path, counted: every frame received in the window raises each expected
    # event once. The snapshots are taken while the worker runs (the counters are not read at
    # one instant), hence the slack. Per-flow events (connections opened) happen in the first
    # pass only: none in the window.
    events = event_deltas(s0, s1, sc.expect_events + list(sc.expect_events_per_flow))
    if events:
        res["events"] = events
    if "conntrack" in s1:
        ct0, ct1 = s0.get("conntrack", {}), s1["conntrack"]
        res["conntrack"] = {k: ct1[k] for k in ("entries", "tcp_established", "established") if k in ct1}
        res["conntrack"].update({f"{k}_delta": ct1[k] - ct0.get(k, 0) for k in ("new", "evicted", "expired", "cut")
                                 if k in ct1})
    # The PMDs' own counters (vswitchd prints them when it has them): misses and buffer shortages.
    d0 = {e["name"]: e for e in s0.get("driver", [])}
    driver = {}
    for e in s1.get("driver", []):
        for k, v in e.items():
            if k != "name" and isinstance(v, int) and v - d0.get(e["name"], {}).get(k, 0):
                driver[f"{e['name']}.{k}"] = v - d0.get(e["name"], {}).get(k, 0)
    if driver:
        res["driver"] = driver
    polls = s1.get("busy_polls", 0) - s0.get("busy_polls", 0)
    if polls > 0:
        res["pkts_per_poll"] = round(rx / polls, 1)
    # The flow cache in the window: hits, misses (the stages decided), entries learnt.
    fc0, fc1 = s0.get("flow_cache", {}), s1.get("flow_cache", {})
    fc = {k: fc1[k] - fc0.get(k, 0) for k in ("hits", "misses", "learnt", "crowded") if k in fc1}
    if fc.get("hits", 0) + fc.get("misses", 0) > 0:
        fc["hit_pct"] = round(100 * fc["hits"] / (fc["hits"] + fc["misses"]), 1)
        res["flow_cache"] = fc
    warnings = event_mismatches(events, rx, slack=1024 + rx // 10000,
                                totals={n: 0 for n in sc.expect_events_per_flow})
    if sc.expect_events_by_input:
        rx_of = {n: port(s1, n)["rx_packets"] - port(s0, n)["rx_packets"] for n in sc.input_ports}
        ev, bad = events_by_input_mismatches(sc, s0, s1, rx_of, lambda r: 1024 + r // 10000)
        res.setdefault("events", {}).update(ev)
        warnings += bad
    want_ct = {n: v * sc.flows for n, v in sc.expect_conntrack_per_flow.items()}
    warnings += conntrack_mismatches(s0, want_ct, "after the warm-up")
    warnings += conntrack_mismatches(s1, want_ct, "at the end of the window")
    if sc.no_drops and drops:
        warnings.append(f"drops in the measuring window: {drops}")
    if tx == 0:
        raise BenchError(f"vswitchd forwarded nothing to {', '.join(sc.output_ports)} (drops: {drops or 'none'}); "
                         f"log: {p.log.name}")
    if rc != 0:
        warnings.append(f"vswitchd exited with {rc}")
    m = re.search(r"mbufs in use after closing ports: (\d+)", tail)
    if m and int(m.group(1)) != 0:
        warnings.append(f"{m.group(1)} mbufs leaked at shutdown")
    if warnings:
        res["warnings"] = warnings
    return res


_PORT_HDR = re.compile(r"NIC statistics for port (\d+)")
_TX_PPS = re.compile(r"Tx-pps:\s+(\d+)")


def run_testpmd(sc: Scenario, a, mem: str, run: int, mode: str) -> Dict[str, object]:
    prefix = f"tpbench{os.getpid()}r{run}{mode}"
    argv = []
    if shutil.which("stdbuf"):
        argv += ["stdbuf", "-oL"]  # testpmd's stdout is a pipe: keep it line-buffered
    # The same devices as vswitchd's host.toml, in the same order (testpmd pairs ports 0<->1 in
    # io and macswap: the l2-style scenarios forward net_pcap0 -> net_null0, two-input ones
    # forward each pcap port's frames out of the other).
    devs = sc.port_devargs(sc.host_toml(mem, a.main_core, a.worker_core, prefix))
    vdevs = []
    for _, d in devs:
        vdevs += ["--vdev", d]
    # Enough buffers for every pcap held in memory (infinite_rx) plus rings and caches.
    mbufs = max(16384, sc.frames + 8192)
    argv += [a.testpmd, "-l", f"{a.main_core},{a.worker_core}", "--main-lcore", str(a.main_core),
             "--no-pci", *memory_args(mem), "--file-prefix", prefix, *vdevs,
             "--", f"--forward-mode={mode}", "--auto-start", "--stats-period", "1",
             f"--total-num-mbufs={mbufs}", "--burst=32"]
    # The output ports' testpmd ids: ports are numbered in --vdev order.
    out_ports = [k for k, (n, _) in enumerate(devs) if n in sc.output_ports]
    need = int(a.warmup) + int(a.duration)
    samples: Dict[int, List[int]] = {k: [] for k in out_ports}
    p = Proc(argv, os.path.join(sc.out, f"testpmd-{mode}-run{run}.log"))
    try:
        deadline = time.monotonic() + need + 60
        cur = None
        while min(len(v) for v in samples.values()) < need + 1:
            m = p.expect(r"NIC statistics for port (\d+)|Tx-pps:\s+(\d+)",
                         timeout=max(1.0, deadline - time.monotonic()))
            if m.group(1) is not None:
                cur = int(m.group(1))
            elif cur in samples:
                samples[cur].append(int(m.group(2)))
        p.stop(signal.SIGINT)
    finally:
        p.kill()
        remove_runtime_dir(prefix)
    # Sample 0 is testpmd's baseline (0); sample k covers about [k, k+1] s after start. The
    # rate is the sum over the output ports of each port's mean.
    per_port = [v[int(a.warmup): int(a.warmup) + int(a.duration)] for v in samples.values()]
    window = [sum(x) for x in zip(*per_port)]
    mpps = sum(window) / len(window) / 1e6
    if mpps == 0:
        raise BenchError(f"testpmd {mode} forwarded nothing; log: {p.log.name}")
    return {"mpps": mpps, "samples_mpps": [round(s / 1e6, 3) for s in window]}


def check_vswitchd(sc: Scenario, a) -> None:
    cfg = os.path.join(sc.out, "host-check.toml")
    with open(cfg, "w") as fh:
        fh.write(sc.host_toml("nohuge", a.main_core, a.worker_core, "check"))
    r = subprocess.run([a.vswitchd, "--config", cfg, "--state", sc.state, "--check"],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    if r.returncode != 0:
        raise BenchError(f"scenario {sc.name}: vswitchd rejects its configuration:\n{r.stdout}{r.stderr}")


def read_pcap(path: str) -> List[bytes]:
    """The frames of a classic pcap file (micro- or nanosecond timestamps, either byte order;
    net_pcap's tx_pcap writes nanosecond ones)."""
    with open(path, "rb") as fh:
        data = fh.read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise BenchError(f"{path}: not a pcap file (magic {magic.hex()})")
    frames = []
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack(end + "I", data[off + 8:off + 12])[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def verify_scenario(sc: Scenario, a, mem: str) -> Dict[str, object]:
    """Before measuring: is the scenario's path the one intended? vswitchd replays the pcap
    once (no infinite_rx) and its output port writes a pcap (net_pcap tx_pcap) instead of
    net_null. Every frame must come out (tx = rx = frames in the pcap), nothing be dropped,
    each of the scenario's `expect_events` (scenario.json) be raised exactly once per frame,
    and, where gen_pcap.py has a checker for the scenario, every frame out be byte for byte the
    one expected. Raises BenchError otherwise; returns the summary kept in the record."""
    prefix = f"vsverify{os.getpid()}"
    text = sc.host_toml(mem, a.main_core, a.worker_core, prefix)
    # Input ports replay their pcap once; output ports write what they send to a pcap (an
    # output-only net_null becomes a tx-only net_pcap; a port that is both keeps its rx_pcap).
    out_pcaps: Dict[str, str] = {}
    n_pcap = len(sc.input_ports)
    for name, dev in sc.port_devargs(text):
        new = dev
        if name in sc.input_ports:
            new = new.replace(",infinite_rx=1", "")
        if name in sc.output_ports:
            out_pcaps[name] = os.path.join(
                sc.out, "verify-out.pcap" if len(sc.output_ports) == 1 else f"verify-out-{name}.pcap")
            if os.path.exists(out_pcaps[name]):
                os.remove(out_pcaps[name])
            if name in sc.input_ports:
                new += f",tx_pcap={out_pcaps[name]}"
            elif dev == "net_null0,no-rx=1" or dev.startswith("net_null"):
                new = f"net_pcap{n_pcap},tx_pcap={out_pcaps[name]}"
                n_pcap += 1
            else:
                raise BenchError(f"scenario {sc.name}: output port {name} must be net_null (or an input port)")
        if new != dev:
            if text.count(json.dumps(dev)) != 1:
                raise BenchError(f"scenario {sc.name}: devargs {dev!r} must appear once in host.toml")
            text = text.replace(json.dumps(dev), json.dumps(new))
    cfg = os.path.join(sc.out, "host-verify.toml")
    with open(cfg, "w") as fh:
        fh.write(text)
    env = dict(os.environ, NO_COLOR="1")
    env.setdefault("RUST_LOG", "info")
    p = Proc([a.vswitchd, "--config", cfg, "--state", sc.state], os.path.join(sc.out, "vswitchd-verify.log"), env)
    try:
        p.expect(r"^vswitchd: running", timeout=60)
        deadline = time.monotonic() + 30
        last = None
        while True:
            time.sleep(0.3)
            p.send(signal.SIGUSR1)
            st = json.loads(p.expect(r"^stats-json: (.*)$", timeout=20).group(1))
            rxs = [stats_port(st, n)["rx_packets"] for n in sc.input_ports]
            rx = sum(rxs)
            now = (rxs, [stats_port(st, n)["tx_packets"] for n in sc.output_ports],
                   sum(st["drops"].values()), sum(st["events"].values()))
            if all(r >= f for r, f in zip(rxs, sc.input_frames)) and now == last:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"scenario {sc.name}: verification run: vswitchd received {rx} of "
                                 f"{sc.frames} frames in 30 s; log: {p.log.name}")
            last = now
        rc = p.stop(signal.SIGTERM)
    finally:
        p.kill()
        remove_runtime_dir(prefix)
    txs = [stats_port(st, n)["tx_packets"] for n in sc.output_ports]
    tx = sum(txs)
    drops = {k: v for k, v in st["drops"].items() if v}
    events = event_deltas(None, st, sc.expect_events + list(sc.expect_events_per_flow))
    problems = []
    for n, r, f in zip(sc.input_ports, rxs, sc.input_frames):
        if r != f:
            problems.append(f"received {r} frames on {n}, its pcap holds {f}")
    for o, i, t, r in zip(sc.output_ports, sc.input_ports, txs, rxs):
        extra = sc.unsolicited_tx.get(o, 0)
        if t != r + extra:
            problems.append(f"{o} sent {t} frames, expected the {r} received on {i}"
                            + (f" + {extra} of its own (unsolicited_tx)" if extra else ""))
    if drops:
        problems.append(f"drops {drops}")
    problems += event_mismatches(events, rx, slack=0,
                                 totals={n: v * sc.flows for n, v in sc.expect_events_per_flow.items()})
    if sc.expect_events_by_input:
        ev, bad = events_by_input_mismatches(sc, None, st, dict(zip(sc.input_ports, rxs)), lambda r: 0)
        events.update(ev)
        problems += bad
    problems += conntrack_mismatches(
        st, {n: v * sc.flows for n, v in sc.expect_conntrack_per_flow.items()}, "after one pass")
    if rc != 0:
        problems.append(f"vswitchd exited with {rc}")
    checked = 0
    if sc.verify_streams is not None and rc == 0:
        sent = [read_pcap(p) for p in sc.pcaps]
        outs = [read_pcap(out_pcaps[n]) for n in sc.output_ports]
        for o, fr, t in zip(sc.output_ports, outs, txs):
            if len(fr) != t:
                problems.append(f"{out_pcaps[o]} holds {len(fr)} frames, vswitchd counted {t} sent")
        wrong = sc.verify_streams(sc.flow_spec, sent, outs)
        checked = sum(len(x) for x in outs) if not wrong else 0
        if wrong:
            problems.append("frames out are not the expected ones: " + "\n    ".join(wrong[:3]))
    elif sc.verify is not None and rc == 0:
        out_pcap = out_pcaps[sc.output_ports[0]]
        out = read_pcap(out_pcap)
        if len(out) != tx:
            problems.append(f"{out_pcap} holds {len(out)} frames, vswitchd counted {tx} sent")
        cycle = min(sc.frames, sc.flows)
        wrong = []
        for k, fr in enumerate(out):
            err = sc.verify(sc.flow_spec, k % cycle, fr)
            if err:
                wrong.append(f"frame {k} (flow {k % cycle}): {err}")
        checked = len(out) - len(wrong)
        if wrong:
            problems.append(f"{len(wrong)} of {len(out)} frames out are not the expected ones; first: "
                            + "\n    ".join(wrong[:3]))
    if problems:
        raise BenchError(f"scenario {sc.name}: verification run failed (counters and log: "
                         f"{p.log.name}):\n  " + "\n  ".join(problems))
    ct = {k: st.get("conntrack", {}).get(k) for k in ("entries", "tcp_established", "new")
          if k in st.get("conntrack", {})} if sc.expect_conntrack_per_flow else {}
    print(f"  [{sc.name} verify] {rx} frames in, {tx} out, no drops"
          + "".join(f", {n} {v}" for n, v in events.items())
          + "".join(f", conntrack {n} {v}" for n, v in ct.items())
          + (f"; {checked} frames out checked byte for byte ("
             + ", ".join(os.path.relpath(p, ROOT) for p in out_pcaps.values()) + ")"
             if sc.verify is not None or sc.verify_streams is not None else ""), flush=True)
    res = {"frames": rx, "tx": tx, "events": events, "frames_checked": checked}
    if ct:
        res["conntrack"] = ct
    return res


def learn_snat_ports(sc: Scenario, a, mem: str) -> None:
    """snat-outbound: the switch picks each connection's port, so the servers' answers can only
    be built once they are known. vswitchd replays the client stream once, with nothing coming
    in on the server side, which writes what it sends to a pcap; the ports of the SYNs there go
    to gen_pcap.SNAT_PORT_MAP and the streams are written again. The choice depends only on the
    connections and their order, so every later run of the same pcap makes the same one."""
    prefix = f"vslearn{os.getpid()}"
    text = sc.host_toml(mem, a.main_core, a.worker_core, prefix)
    devs = dict(sc.port_devargs(text))
    client, server = sc.input_ports[0], sc.input_ports[1]
    out = os.path.join(sc.out, "learn-out.pcap")
    if os.path.exists(out):
        os.remove(out)
    text = text.replace(json.dumps(devs[client]), json.dumps(devs[client].replace(",infinite_rx=1", "")))
    text = text.replace(json.dumps(devs[server]), json.dumps(f"{devs[server].split(',')[0]},tx_pcap={out}"))
    cfg = os.path.join(sc.out, "host-learn.toml")
    with open(cfg, "w") as fh:
        fh.write(text)
    env = dict(os.environ, NO_COLOR="1")
    p = Proc([a.vswitchd, "--config", cfg, "--state", sc.state], os.path.join(sc.out, "vswitchd-learn.log"), env)
    try:
        p.expect(r"^vswitchd: running", timeout=60)
        deadline = time.monotonic() + 30
        last = None
        while True:
            time.sleep(0.3)
            p.send(signal.SIGUSR1)
            st = json.loads(p.expect(r"^stats-json: (.*)$", timeout=20).group(1))
            now = (stats_port(st, client)["rx_packets"], stats_port(st, server)["tx_packets"])
            if now[0] >= sc.input_frames[0] and now == last:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"scenario {sc.name}: learning run: {now[0]} of {sc.input_frames[0]} "
                                 f"frames received in 30 s; log: {p.log.name}")
            last = now
        p.stop(signal.SIGTERM)
    finally:
        p.kill()
        remove_runtime_dir(prefix)
    try:
        ports = gen_pcap.snat_learn_ports(sc.flow_spec, read_pcap(out))
    except ValueError as e:
        raise BenchError(f"scenario {sc.name}: learning run: {e}; log: {p.log.name}")
    gen_pcap.SNAT_PORT_MAP.clear()
    gen_pcap.SNAT_PORT_MAP.update(ports)
    gen_pcap.generate_streams(sc.name, sc.pcap, a.frames, a.flows)
    with open(os.path.join(sc.out, "snat-ports.json"), "w") as fh:
        json.dump(ports, fh)
    print(f"  [{sc.name} learn] {len(ports)} connections, ports {min(ports.values())}..{max(ports.values())} "
          f"chosen by the switch; the servers' stream rebuilt with them", flush=True)


def pick_memory(a) -> str:
    if a.memory != "auto":
        return a.memory
    # Two copies of the pool at most (one process at a time, plus the EAL's own): 256 MiB is ample.
    return "huge" if hugepages_free_mib() >= 256 else "nohuge"


def median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def bench_scenario(sc: Scenario, a, mem: str) -> Dict[str, object]:
    check_vswitchd(sc, a)
    if sc.meta.get("learn_snat_ports"):
        learn_snat_ports(sc, a, mem)
    verified = None
    if "ours" in a.kinds and a.verify:
        try:
            verified = verify_scenario(sc, a, mem)
        except BenchError as e:
            if mem == "huge" and a.memory == "auto" and re.search(
                    r"Cannot allocate memory|Cannot init memory|errno 12\b", str(e)):
                print(f"  hugepage EAL start failed, falling back to --no-huge:\n{e}", file=sys.stderr)
                mem = "nohuge"
                verified = verify_scenario(sc, a, mem)
            else:
                raise
    if a.verify_only:
        return {"scenario": sc.name, "verified": verified}
    runs: List[Dict[str, object]] = []
    for r in range(1, a.runs + 1):
        rec: Dict[str, object] = {"run": r}
        for kind in a.kinds:
            t = time.monotonic()
            if kind == "ours":
                try:
                    res = run_ours(sc, a, mem, r)
                except BenchError as e:
                    # Hugepages may be taken between the check and the run: fall back once.
                    if mem == "huge" and a.memory == "auto" and re.search(
                            r"Cannot allocate memory|Cannot init memory|errno 12\b", str(e)):
                        print(f"  hugepage EAL start failed, falling back to --no-huge:\n{e}", file=sys.stderr)
                        mem = "nohuge"
                        res = run_ours(sc, a, mem, r)
                    else:
                        raise
                rec["mpps"] = round(res["mpps"], 3)
                for k in ("pkts_per_poll", "flow_cache", "events", "conntrack", "drops", "driver", "warnings"):
                    if k in res:
                        rec[k] = res[k]
            else:
                res = run_testpmd(sc, a, mem, r, kind)
                rec[f"testpmd_{kind}_mpps"] = round(res["mpps"], 3)
            print(f"  [{sc.name} run {r}/{a.runs}] {kind:<8} {res['mpps']:8.2f} Mpps  "
                  f"({time.monotonic() - t:.1f}s)"
                  + (f"  flow cache {res['flow_cache']['hit_pct']} % hits" if res.get("flow_cache") else "")
                  + (f"  drops {res['drops']}" if res.get("drops") else "")
                  + (f"  driver {res['driver']}" if res.get("driver") else "")
                  + (f"  WARNING {res['warnings']}" if res.get("warnings") else ""), flush=True)
        if a.changes and "ours" in a.kinds:
            t = time.monotonic()
            res = run_ours(sc, a, mem, r, changes=a.changes)
            rec["mpps_under_changes"] = round(res["mpps"], 3)
            rec["changes"] = res["changes"]
            if rec.get("mpps"):
                rec["ratio_under_changes"] = round(res["mpps"] / rec["mpps"], 3)
            print(f"  [{sc.name} run {r}/{a.runs}] +changes {res['mpps']:8.2f} Mpps  "
                  f"({res['changes']['changes_per_s']} changes/s, p50 {res['changes']['latency_p50_ms']} ms, "
                  f"p99 {res['changes']['latency_p99_ms']} ms; {time.monotonic() - t:.1f}s)", flush=True)
        if "mpps" in rec and rec.get("testpmd_macswap_mpps"):
            rec["ratio"] = round(rec["mpps"] / rec["testpmd_macswap_mpps"], 3)
        runs.append(rec)

    def med(key):
        v = [r[key] for r in runs if key in r]
        return round(median(v), 3) if v else None

    return {
        "scenario": sc.name,
        "mpps": med("mpps"),
        "testpmd_io_mpps": med("testpmd_io_mpps"),
        "testpmd_macswap_mpps": med("testpmd_macswap_mpps"),
        "ratio": med("ratio"),
        **({"mpps_under_changes": med("mpps_under_changes"),
            "ratio_under_changes": med("ratio_under_changes"),
            "changes_per_s": round(median([r["changes"]["changes_per_s"] for r in runs]), 1),
            "change_latency_p50_ms": round(median([r["changes"]["latency_p50_ms"] for r in runs]), 2),
            "change_latency_p99_ms": round(median([r["changes"]["latency_p99_ms"] for r in runs]), 2)}
           if a.changes and "ours" in a.kinds else {}),
        "runs": runs,
        "verified": verified,
        "cores": 1,
        "frames": sc.frames,
        "flows": sc.flows,
        "frame_len": sc.frame_len + 4,
        "warmup_s": a.warmup,
        "duration_s": a.duration,
        "memory": "hugepages" if mem == "huge" else "no-huge",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": dict(host_info(), loadavg_start=round(a.load0, 2), loadavg_end=round(loadavg(), 2)),
        "dpdk": cmd_out(["pkg-config", "--modversion", "libdpdk"]),
        "commit": cmd_out(["git", "describe", "--always", "--dirty"]),
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--scenario", action="append", dest="scenarios",
                    help="scenario to run (repeatable; default: every perf/scenarios/*/ with a generator)")
    ap.add_argument("--runs", type=int, default=5, help="rounds per scenario (default 5)")
    ap.add_argument("--duration", type=int, default=5, help="seconds measured per run (default 5)")
    ap.add_argument("--warmup", type=int, default=3, help="seconds before measuring (default 3, >= 1)")
    ap.add_argument("--vswitchd", default=os.path.join(ROOT, "target", "release", "vswitchd"))
    ap.add_argument("--testpmd", default="dpdk-testpmd")
    ap.add_argument("--main-core", type=int, help="control/main lcore (default 0)")
    ap.add_argument("--worker-core", type=int, help="the one forwarding lcore (default 1)")
    ap.add_argument("--memory", choices=("auto", "huge", "nohuge"), default="auto",
                    help="hugepages (--in-memory) or --no-huge -m 1024; auto: hugepages when >= 256 MiB free")
    ap.add_argument("--frames", type=int, help="frames in the pcap (default: the scenario's; at most 16384)")
    ap.add_argument("--flows", type=int, help="distinct 5-tuples (default: the scenario's)")
    ap.add_argument("--only", choices=KINDS, action="append", dest="kinds",
                    help="measure only this candidate (repeatable; default all three)")
    ap.add_argument("--no-verify", action="store_false", dest="verify",
                    help="skip the verification run (pcap replayed once, every frame checked) before measuring")
    ap.add_argument("--verify-only", action="store_true",
                    help="only the verification run of each scenario; measure nothing, write no results")
    ap.add_argument("--changes-per-s", type=int, default=0, dest="changes",
                    help="also measure vswitchd while this many API changes per second are applied")
    ap.add_argument("--output", default=os.path.join(HERE, "results", "latest.json"))
    a = ap.parse_args(argv)
    if a.verify_only and not a.verify:
        ap.error("--verify-only and --no-verify exclude each other")
    if a.verify_only and "ours" not in (a.kinds or KINDS):
        ap.error("--verify-only checks vswitchd: not with --only io/macswap")
    a.kinds = [k for k in KINDS if k in (a.kinds or KINDS)]
    if a.main_core is None and a.worker_core is None and a.changes:
        # Every accepted change is fsynced; its completion interrupt lands on whichever CPU
        # the block device's interrupt is bound to (fixed on some VMs). Keep that CPU for the
        # control plane, as a DPDK host keeps device interrupts off its worker cores.
        irqs = block_irq_cpus()
        if irqs.get(1, 0) > irqs.get(0, 0):
            a.main_core, a.worker_core = 1, 0
            print("note: block-device interrupts go to CPU 1: control plane on lcore 1, worker on 0",
                  file=sys.stderr)
    a.main_core = 0 if a.main_core is None else a.main_core
    a.worker_core = 1 if a.worker_core is None else a.worker_core
    if a.runs < 1 or a.duration < 1 or a.warmup < 1:
        ap.error("--runs, --duration and --warmup must be >= 1")
    if a.frames is not None and not 1 <= a.frames <= 16384:
        ap.error("--frames must be 1..16384 (net_pcap holds the file in the port's mbuf pool)")
    ncpu = os.cpu_count() or 1
    if a.main_core == a.worker_core or max(a.main_core, a.worker_core) >= ncpu:
        ap.error(f"--main-core and --worker-core must be two different cores below {ncpu}")
    if "ours" in a.kinds and not os.access(a.vswitchd, os.X_OK):
        ap.error(f"{a.vswitchd} not found: build it with `cargo build --release -p vswitch`")
    if {"io", "macswap"} & set(a.kinds) and not shutil.which(a.testpmd):
        ap.error(f"{a.testpmd} not found (apt-get install dpdk)")
    available = sorted(d for d in os.listdir(os.path.join(HERE, "scenarios"))
                       if os.path.isfile(os.path.join(HERE, "scenarios", d, "scenario.json")))
    names = a.scenarios or [n for n in available if n in gen_pcap.SCENARIOS]
    for n in names:
        if n not in available:
            ap.error(f"unknown scenario {n!r}; available: {', '.join(available)}")
    a.load0 = loadavg()
    if a.load0 > 0.5:
        print(f"note: load average {a.load0:.2f} at start; figures will be noisy (the ratios less so)",
              file=sys.stderr)
    mem = pick_memory(a)
    print(f"bench: {', '.join(names)}; {a.runs} runs x ({', '.join(a.kinds)}); warm-up {a.warmup}s, "
          f"measure {a.duration}s; lcores main {a.main_core} worker {a.worker_core}; "
          f"memory {'hugepages' if mem == 'huge' else '--no-huge'}", flush=True)
    records = []
    try:
        for n in names:
            sc = Scenario(n, a)
            print(f"scenario {n}: {sc.frames} frames, {sc.flows} flows, {sc.frame_len + 4}-byte frames "
                  f"({', '.join(os.path.relpath(p, ROOT) for p in sc.pcaps)})", flush=True)
            records.append(bench_scenario(sc, a, mem))
    except BenchError as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        _kill_all()
    if a.verify_only:
        print(f"\nverified: {', '.join(r['scenario'] for r in records)}")
        return 0

    def f(x, w=8, p=2):
        return f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"

    print()
    print(f"{'scenario':<24} {'ours':>8} {'io':>8} {'macswap':>8} {'ours/macswap':>13}   (Mpps, 1 core, median of {a.runs})")
    for r in records:
        print(f"{r['scenario']:<24} {f(r['mpps'])} {f(r['testpmd_io_mpps'])} {f(r['testpmd_macswap_mpps'])} "
              f"{f(r['ratio'], 13, 3)}")
        if "ratio_under_changes" in r:
            print(f"{'':<24} under {r['changes_per_s']} API changes/s: {f(r['mpps_under_changes'])} Mpps, "
                  f"ratio to no changes {f(r['ratio_under_changes'], 5, 3)} (change latency p50 "
                  f"{r['change_latency_p50_ms']} ms, p99 {r['change_latency_p99_ms']} ms)")
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    # Records of scenarios not run this time stay (in their place); those run are replaced.
    kept = []
    try:
        with open(a.output) as fh:
            old = json.load(fh)
        if isinstance(old, list):
            kept = [r for r in old if isinstance(r, dict) and "scenario" in r]
    except (OSError, ValueError):
        pass
    fresh = {r["scenario"]: r for r in records}
    merged = [fresh.pop(r["scenario"], r) for r in kept] + list(fresh.values())
    tmp = a.output + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(merged, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, a.output)
    others = [r["scenario"] for r in merged if r["scenario"] not in {x["scenario"] for x in records}]
    print(f"\nwrote {os.path.relpath(a.output, ROOT)}"
          + (f" (kept the earlier records of {', '.join(others)})" if others else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
