#!/usr/bin/env python3
"""A host with one IPv4 address on an 802.1Q VLAN, in user space (scapy on AF_PACKET).

Why this exists: the system tests and the demo need an independent peer on a VLAN of the
provider network ("a host on physnet provider, VLAN 101"). On a normal Linux host that is one
command in the peer's namespace,

    ip link add link eth0 name eth0.101 type vlan id 101
    ip addr add 203.0.113.50/24 dev eth0.101 && ip link set eth0.101 up

but the kernel of the machines this project is developed and tested on has no 802.1Q support
(no 8021q module: `type vlan` fails with "Unknown device type", and there is no VLAN-filtering
bridge or tc vlan action either). So this script plays that subinterface: on a raw AF_PACKET
socket on --iface it owns --ip/--mac on VLAN --vid, answers ARP requests and ICMP echo
requests for its address (tagged), and can originate pings. Everything it sends is tagged with
--vid; untagged frames and other VLANs are ignored, so the namespace's kernel can keep using
the same interface untagged (the kernel itself ignores tagged frames without 8021q).

The kernel strips the tag of received frames into packet metadata; scapy's L2Socket puts it
back (PACKET_AUXDATA), so tagged frames are seen as Ether/Dot1Q/... here.

Usage (inside the peer's network namespace, as root):

    vlan_host.py --iface eth0 --vid 101 --ip 203.0.113.50 --mac 02:00:00:00:01:50 serve [--duration S]
    vlan_host.py --iface eth0 --vid 101 --ip 203.0.113.50 --mac 02:00:00:00:01:50 ping 203.0.113.11 --count 3

`serve` prints "ready" (flushed) once its socket is open and runs until SIGTERM/SIGINT or
--duration. `ping` resolves DST with ARP, sends --count echo requests (answering ARP and echo
requests for its own address meanwhile), prints one line per reply and exits 0 only if every
request was answered (1 otherwise, 2 if DST never answered ARP).
"""
import argparse
import os
import select
import signal
import sys
import time

from scapy.config import conf

conf.verb = 0
from scapy.layers.inet import ICMP, IP  # noqa: E402
from scapy.layers.l2 import ARP, Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402


def log(msg):
    print(msg, flush=True)


class VlanHost:
    def __init__(self, iface, vid, ip, mac):
        self.iface, self.vid, self.ip, self.mac = iface, vid, ip, mac.lower()
        # One socket for sending and receiving: the kernel never loops a packet socket's own
        # transmissions back to it, and scapy drops PACKET_OUTGOING copies of other senders.
        self.sock = conf.L2socket(iface=iface)
        self.neigh = {}  # ip -> mac, learned from ARP
        self.replies = {}  # (id, seq) -> receive time
        self.answered_arp = 0
        self.answered_echo = 0

    def send(self, dst_mac, payload):
        self.sock.send(Ether(src=self.mac, dst=dst_mac) / Dot1Q(vlan=self.vid) / payload)

    def handle(self, pkt):
        """Handles one received frame: ARP and ICMP for our address on our VLAN."""
        if Dot1Q not in pkt or pkt[Dot1Q].vlan != self.vid:
            return
        if ARP in pkt:
            a = pkt[ARP]
            if a.pdst != self.ip:
                return
            if a.psrc != "0.0.0.0":
                self.neigh[a.psrc] = a.hwsrc
            if a.op == 1:  # who-has
                self.send(a.hwsrc, ARP(op=2, hwsrc=self.mac, psrc=self.ip, hwdst=a.hwsrc, pdst=a.psrc))
                self.answered_arp += 1
            return
        if IP not in pkt or ICMP not in pkt or pkt[IP].dst != self.ip:
            return
        if pkt[Ether].dst.lower() not in (self.mac, "ff:ff:ff:ff:ff:ff"):
            return
        ip, icmp = pkt[IP], pkt[ICMP]
        if icmp.type == 8:  # echo request
            data = bytes(icmp.payload)
            self.send(pkt[Ether].src, IP(src=self.ip, dst=ip.src, ttl=64) / ICMP(type=0, id=icmp.id, seq=icmp.seq) / Raw(data))
            self.answered_echo += 1
        elif icmp.type == 0:  # echo reply
            self.replies.setdefault((icmp.id, icmp.seq), time.monotonic())

    def poll(self, timeout):
        """Receives and handles frames for up to `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return
            try:
                pkt = self.sock.recv()
            except (OSError, ValueError):
                continue
            if pkt is not None:
                self.handle(pkt)

    def resolve(self, dst, timeout):
        end = time.monotonic() + timeout
        while dst not in self.neigh and time.monotonic() < end:
            self.send("ff:ff:ff:ff:ff:ff", ARP(op=1, hwsrc=self.mac, psrc=self.ip, pdst=dst))
            self.poll(min(0.5, max(0.0, end - time.monotonic())))
        return self.neigh.get(dst)

    def ping(self, dst, count, interval, timeout):
        dmac = self.resolve(dst, timeout)
        if dmac is None:
            log(f"ping {dst}: no ARP reply on vlan {self.vid} within {timeout}s")
            return 2
        log(f"ping {dst}: is-at {dmac} (vlan {self.vid})")
        ident = os.getpid() & 0xFFFF
        sent = {}
        for seq in range(1, count + 1):
            sent[seq] = time.monotonic()
            self.send(dmac, IP(src=self.ip, dst=dst, ttl=64) / ICMP(type=8, id=ident, seq=seq) / Raw(b"vlan_host" * 6))
            self.poll(interval)
        end = time.monotonic() + timeout
        while time.monotonic() < end and any((ident, s) not in self.replies for s in sent):
            self.poll(0.1)
        got = 0
        for seq, t0 in sent.items():
            t1 = self.replies.get((ident, seq))
            if t1 is None:
                log(f"no reply from {dst}: icmp_seq={seq}")
            else:
                got += 1
                log(f"reply from {dst}: icmp_seq={seq} vlan={self.vid} time={(t1 - t0) * 1000:.1f} ms")
        log(f"{count} transmitted, {got} received")
        return 0 if got == count else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iface", required=True)
    ap.add_argument("--vid", type=int, required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--mac", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="answer ARP and ping until SIGTERM/SIGINT")
    s.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: never)")
    p = sub.add_parser("ping", help="ping DST; exit 0 only if every request is answered")
    p.add_argument("dst")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for ARP and for the last reply")
    args = ap.parse_args()
    if not 1 <= args.vid <= 4094:
        ap.error("--vid must be 1..4094")

    host = VlanHost(args.iface, args.vid, args.ip, args.mac)
    if args.cmd == "ping":
        return host.ping(args.dst, args.count, args.interval, args.timeout)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    log(f"ready: {args.ip} ({args.mac}) on {args.iface} vlan {args.vid}")
    end = time.monotonic() + args.duration if args.duration > 0 else None
    while not stop and (end is None or time.monotonic() < end):
        try:
            host.poll(0.2)
        except InterruptedError:
            pass
    log(f"stopped: answered {host.answered_arp} arp requests, {host.answered_echo} echo requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
