#!/usr/bin/env python3
"""Benchmark traffic: writes one pcap per scenario (stdlib only, no scapy).

Each scenario is a `Scenario`: the frames one instance (or the fabric) sends into the switch,
built from a flow description (`Flows`) that `perf/trex/*.py` reuses, so the pcap replayed by
`net_pcap` here and the stream TRex sends on real hardware carry the same headers and the same
flow pattern.

Flow pattern (all scenarios, unless a scenario says otherwise): flow i of `n_flows` is
    dst_ip   = dst_ip_base   + i % dst_ip_count
    dst_port = dst_port_base + (i // dst_ip_count) % dst_port_count
    src_port = src_port_base + i % n_flows
so with the defaults (16 addresses x 64 ports, 1024 flows) every frame of a 1024-frame cycle is
a distinct UDP 5-tuple. The pcap repeats the cycle up to `frames` frames (keep it under ~16 K:
net_pcap's infinite_rx holds the whole file in mbufs of the port's pool).

Usage:
    python3 perf/gen_pcap.py l2 -o perf/out/l2.pcap [--frames 4096] [--flows 1024]
    python3 perf/gen_pcap.py --list

Adding a scenario: write a `build_<name>(flows, i) -> bytes` (compose `eth`, `ipv4`, `udp`,
`vxlan`, ... below), register a `Scenario` in `SCENARIOS`, and add `perf/scenarios/<name>/`
(host.toml, state.yaml whose ports/MACs/IPs match the constants here, scenario.json).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import struct
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

# --- addresses shared with perf/scenarios/*/state.yaml (keep them in step) ---------------------
VM1_MAC = "fa:16:3e:00:00:01"
VM1_IP = "198.51.100.11"
VM2_MAC = "fa:16:3e:00:00:02"
VM2_IP = "198.51.100.12"
# vm2 carries this prefix as an allowed address pair (addresses behind it), so the varying
# destination addresses are all legitimately vm2's.
VM2_BEHIND = "198.51.100.32/28"
# vxlan-decap: vm1 (the local receiver) carries this prefix, the inner destinations.
VM1_BEHIND = "198.51.100.48/28"

# VXLAN scenarios: this host (bench1) and the remote one (bench2) on the underlay.
LOCAL_VTEP_IP = "10.0.0.11"
REMOTE_VTEP_IP = "10.0.0.12"
REMOTE_VTEP_MAC = "02:00:00:00:00:12"   # [overlay.neighbors] in vxlan-encap's host.toml
# DPDK's net_pcap PMD names its ports 02:70:63:61:70:NN ("\x02pcap" + index): the overlay
# port of vxlan-decap is the process's first (only) pcap port.
PCAP0_MAC = "02:70:63:61:70:00"
VXLAN_VNI = 101

# routed-east-west: DVR router1 between selfservice1 (VNI 101, vm1's, 198.51.100.0/24) and
# selfservice2 (VNI 102, 198.18.0.0/24) on host compute1; the destinations are instances of
# selfservice2 bound to compute2 (VTEP 10.0.0.12). vm1 sends to its gateway's MAC; the router
# rewrites the source to compute1's DVR MAC and the destination to the instance's MAC.
GW1_MAC = "fa:16:3e:aa:00:01"      # router1's interface on selfservice1, 198.51.100.1
GW2_MAC = "fa:16:3e:aa:00:02"      # router1's interface on selfservice2, 198.18.0.1
DVR_MAC_LOCAL = "fa:16:3f:00:00:11"   # compute1's (this host's) dvr_mac
ROUTED_VNI = 102                   # selfservice2
# The destination instances: ROUTED_DST_COUNT ports on selfservice2 bound to compute2, fixed
# IPs from ROUTED_DST_BASE on; instance k has MAC fa:16:3e:02:00:<last octet of its IP>.
ROUTED_DST_BASE = "198.18.0.32"
ROUTED_DST_COUNT = 8

# conntrack-established: vm1 (client, group sg-client) opens CT_FLOWS TCP connections to vm2
# (server, group sg-server) port CT_SERVER_PORT, one per client source port.
CT_SERVER_PORT = 5001

# fip-inbound: floating IP 203.0.113.17 of vm1 (198.51.100.4, VM1_MAC, selfservice1) on the
# DVR compute host bench1. The Internet side (FIP_INET_COUNT hosts from FIP_INET_BASE, behind
# the external network's gateway) comes in on the uplink, VLAN 101 (provider1), to bench1's
# floating IP gateway MAC; the instance answers to its default gateway (router1's interface
# MAC on selfservice1, GW1_MAC). Translated: inbound DNAT to the fixed IP, routed (TTL - 1,
# from GW1_MAC to VM1_MAC), untagged; outbound SNAT to the floating IP, TTL - 1, tagged 101,
# from the gateway port's MAC to the external gateway's (a static neighbour: state.yaml).
FIP_VM_IP = "198.51.100.4"
FIP_ADDR = "203.0.113.17"
FIP_FG_MAC = "fa:16:3e:fe:00:01"       # bench1's floating IP gateway port (fg-), 203.0.113.5
FIP_FG_IP = "203.0.113.5"
FIP_EXT_GW_MAC = "02:00:00:00:01:01"   # provider1's gateway 203.0.113.1 (the upstream router)
FIP_EXT_GW_IP = "203.0.113.1"
FIP_EXT_VLAN = 101
FIP_INET_BASE = "100.64.0.1"
FIP_INET_COUNT = 16
# The Internet side's TTL on arrival (some hops away); the instance's own is 64.
FIP_INET_TTL = 57
FIP_VM_TTL = 64

ETH_IPV4 = 0x0800
ETH_VLAN = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17
VXLAN_PORT = 4789


# --- header builders ------------------------------------------------------------------------------
def mac_bytes(mac: str) -> bytes:
    b = bytes(int(x, 16) for x in mac.split(":"))
    if len(b) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return b


def ip_bytes(ip: str | int) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def csum16(data: bytes) -> int:
    """RFC 1071 Internet checksum (ones' complement of the ones' complement sum)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(dst: str, src: str, ethertype: int, vlan: Optional[int] = None) -> bytes:
    h = mac_bytes(dst) + mac_bytes(src)
    if vlan is not None:
        h += struct.pack("!HH", ETH_VLAN, vlan & 0x0FFF)
    return h + struct.pack("!H", ethertype)


def ipv4(src: str | int, dst: str | int, proto: int, payload_len: int, ident: int = 0, ttl: int = 64,
         dont_fragment: bool = True) -> bytes:
    """A 20-byte IPv4 header with a correct header checksum."""
    total = 20 + payload_len
    flags_frag = 0x4000 if dont_fragment else 0
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, flags_frag, ttl, proto, 0,
                    ip_bytes(src), ip_bytes(dst))
    c = csum16(h)
    return h[:10] + struct.pack("!H", c) + h[12:]


def udp(src_ip: str | int, dst_ip: str | int, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header + payload with a correct checksum (pseudo-header included)."""
    length = 8 + len(payload)
    h = struct.pack("!HHHH", sport, dport, length, 0)
    pseudo = ip_bytes(src_ip) + ip_bytes(dst_ip) + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    c = csum16(pseudo + h + payload)
    if c == 0:
        c = 0xFFFF  # 0 means "no checksum" in UDP over IPv4
    return h[:6] + struct.pack("!H", c) + payload


TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp(src_ip: str | int, dst_ip: str | int, sport: int, dport: int, seq: int, ack: int,
        flags: int, win: int, options: bytes = b"", payload: bytes = b"") -> bytes:
    """A TCP header (+ options, padded to 32 bits) + payload with a correct checksum."""
    options += bytes(-len(options) % 4)
    doff = (20 + len(options)) // 4
    h = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, doff << 4, flags,
                    win, 0, 0) + options
    pseudo = ip_bytes(src_ip) + ip_bytes(dst_ip) + struct.pack("!BBH", 0, IPPROTO_TCP, len(h) + len(payload))
    c = csum16(pseudo + h + payload)
    return h[:16] + struct.pack("!H", c) + h[18:] + payload


def vxlan(vni: int) -> bytes:
    """VXLAN header with the I flag (0x08) only, as Linux expects."""
    return struct.pack("!II", 0x08 << 24, (vni & 0xFFFFFF) << 8)


# --- flows ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flows:
    """One sender's traffic: addresses and the varying fields (see the module docstring)."""
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip_base: str
    dst_ip_count: int = 16
    dst_port_base: int = 5001
    dst_port_count: int = 64
    src_port_base: int = 49152
    n_flows: int = 1024
    # Ethernet frame length without FCS: 60 here is a 64-byte frame on the wire.
    frame_len: int = 60
    vlan: Optional[int] = None

    def tuple_of(self, i: int):
        """(dst_ip, src_port, dst_port) of flow i (i taken modulo n_flows)."""
        i %= self.n_flows
        dst_ip = int(ipaddress.IPv4Address(self.dst_ip_base)) + i % self.dst_ip_count
        dport = self.dst_port_base + (i // self.dst_ip_count) % self.dst_port_count
        sport = self.src_port_base + i
        return dst_ip, sport, dport


def udp_frame(f: Flows, i: int, ident: Optional[int] = None) -> bytes:
    """Ethernet/[VLAN]/IPv4/UDP frame of flow i, padded to `f.frame_len`."""
    dst_ip, sport, dport = f.tuple_of(i)
    hdr = 14 + (4 if f.vlan is not None else 0) + 20 + 8
    payload = bytes(max(0, f.frame_len - hdr))
    l4 = udp(f.src_ip, dst_ip, sport, dport, payload)
    l3 = ipv4(f.src_ip, dst_ip, IPPROTO_UDP, len(l4), ident=i if ident is None else ident)
    return eth(f.dst_mac, f.src_mac, ETH_IPV4, f.vlan) + l3 + l4


# --- scenarios -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    flows: Flows
    build: Callable[[Flows, int], bytes]
    # Frames in the pcap: a whole number of flow cycles, under ~16 K.
    frames: int = 4096
    # Further strings the scenario's state.yaml must contain (MACs/IPs the traffic relies on
    # besides the sender's and the first hop's), checked by bench.py.
    state_needs: tuple = ()
    # Checks frame k of what the switch sent out of the output port when the pcap was replayed
    # once (flow k % n_flows, in order): None if right, else what is wrong. bench.py runs it
    # on a verification run before measuring.
    verify: Optional[Callable[[Flows, int, bytes], Optional[str]]] = None
    # Scenarios with several input ports (one pcap each, replayed side by side): `streams(flows,
    # frames)` returns one frame list per input port (`frames` each, in the order of
    # scenario.json's `input_ports`; `build` is then only the typical frame, for `frame_len`),
    # `stream_names` name the pcaps, and `verify_streams(flows, sent, out)` checks what left the output
    # ports in a verification run (out[k]: the frames of output_ports[k], which carries input
    # k's traffic) and returns what is wrong (an empty list if right).
    streams: Optional[Callable[[Flows, int], List[List[bytes]]]] = None
    stream_names: tuple = ()
    verify_streams: Optional[Callable[[Flows, List[List[bytes]], List[List[bytes]]], List[str]]] = None


def build_l2(f: Flows, i: int) -> bytes:
    return udp_frame(f, i)


def vxlan_outer(inner: bytes, i: int, vni: int = VXLAN_VNI) -> bytes:
    """`inner` as the remote VTEP (bench2, 10.0.0.12) sends it to us (10.0.0.11): outer
    Ethernet to the overlay port / IPv4 (DF, TTL 64) / UDP 4789 with checksum 0 (as Linux and
    RFC 7348 allow) and a source port that differs per flow, in 49152-65535 / VXLAN."""
    sport = 49152 + i % 16384
    l4_payload = vxlan(vni) + inner
    udp_hdr = struct.pack("!HHHH", sport, VXLAN_PORT, 8 + len(l4_payload), 0)
    l3 = ipv4(REMOTE_VTEP_IP, LOCAL_VTEP_IP, IPPROTO_UDP, 8 + len(l4_payload), ident=i)
    return eth(PCAP0_MAC, REMOTE_VTEP_MAC, ETH_IPV4) + l3 + udp_hdr + l4_payload


def build_vxlan_decap(f: Flows, i: int) -> bytes:
    return vxlan_outer(udp_frame(f, i), i % f.n_flows)


def routed_dst_mac(ip: str | int) -> str:
    """The MAC of the routed-east-west destination instance with address `ip`."""
    return "fa:16:3e:02:00:%02x" % (int(ipaddress.IPv4Address(ip)) & 0xFF)


def routed_dst_ips() -> List[str]:
    base = int(ipaddress.IPv4Address(ROUTED_DST_BASE))
    return [str(ipaddress.IPv4Address(base + k)) for k in range(ROUTED_DST_COUNT)]


def routed_inner(f: Flows, i: int) -> bytes:
    """The frame of flow i as router1 forwards it: to the destination instance's MAC from
    compute1's DVR MAC, TTL 63, IPv4 checksum updated; UDP untouched."""
    fr = bytearray(udp_frame(f, i))
    dst_ip = struct.unpack("!I", fr[30:34])[0]
    fr[0:6] = mac_bytes(routed_dst_mac(dst_ip))
    fr[6:12] = mac_bytes(DVR_MAC_LOCAL)
    fr[22] -= 1
    fr[24:26] = b"\0\0"
    fr[24:26] = struct.pack("!H", csum16(bytes(fr[14:34])))
    return bytes(fr)


def verify_vxlan_out(out: bytes, inner: bytes, vni: int) -> Optional[str]:
    """`out` must be `inner` in VXLAN (`vni`) from LOCAL_VTEP_IP to REMOTE_VTEP_IP, outer
    destination MAC REMOTE_VTEP_MAC, valid outer IPv4 checksum, UDP to 4789."""
    if len(out) != 50 + len(inner):
        return f"{len(out)} bytes, expected {50 + len(inner)}"
    if out[0:6] != mac_bytes(REMOTE_VTEP_MAC) or out[12:14] != struct.pack("!H", ETH_IPV4):
        return f"outer Ethernet {out[0:6].hex(':')} type {out[12:14].hex()}"
    ip = out[14:34]
    if ip[0] != 0x45 or ip[9] != IPPROTO_UDP or csum16(ip) != 0:
        return f"outer IPv4 header {ip.hex()} (version/IHL, protocol or checksum wrong)"
    if ip[12:16] != ip_bytes(LOCAL_VTEP_IP) or ip[16:20] != ip_bytes(REMOTE_VTEP_IP):
        return f"outer {ipaddress.IPv4Address(ip[12:16])} -> {ipaddress.IPv4Address(ip[16:20])}"
    if struct.unpack("!H", ip[2:4])[0] != len(out) - 14:
        return f"outer IPv4 total length {struct.unpack('!H', ip[2:4])[0]}"
    dport, ulen = struct.unpack("!HH", out[36:40])
    if dport != VXLAN_PORT or ulen != len(out) - 34:
        return f"outer UDP dport {dport} length {ulen}"
    if out[42:50] != vxlan(vni):
        return f"VXLAN header {out[42:50].hex()}, expected {vxlan(vni).hex()}"
    if out[50:] != inner:
        return f"inner frame\n      got      {out[50:].hex()}\n      expected {inner.hex()}"
    return None


def verify_unchanged(f: Flows, i: int, out: bytes) -> Optional[str]:
    """Switched frames leave as they came (l2, vxlan-decap's inner frames)."""
    want = udp_frame(f, i)
    return None if out == want else f"got {out.hex()}\n      expected {want.hex()}"


def verify_vxlan_encap(f: Flows, i: int, out: bytes) -> Optional[str]:
    return verify_vxlan_out(out, udp_frame(f, i), VXLAN_VNI)


def verify_routed_east_west(f: Flows, i: int, out: bytes) -> Optional[str]:
    return verify_vxlan_out(out, routed_inner(f, i), ROUTED_VNI)


# --- conntrack-established: TCP connections vm1 (client) <-> vm2 (server) ---------------------
# Each of the n_flows connections (client source port 49152 + i -> vm2:5001) is, in the pcaps,
# a handshake and then a short exchange; the client's pcap (vm1) and the server's (vm2) hold
# `sections` blocks of n_flows frames each, flow i at position i of every block:
#   block 0: client SYN (MSS, window scale 7, SACK permitted)   | server SYN-ACK (same options)
#   block 1: client ACK (the handshake's third segment)         | server data (6 bytes)
#   block k: client data (6 bytes), acking the server's data of  | server data (6 bytes), acking
#            blocks 1..k-1                                       | the client's of blocks 2..k
# Replayed side by side (vm1's burst j, then vm2's burst j, in each poll round), every segment
# follows the one it answers, so the first pass opens and establishes every connection with
# full sequence/window tracking in both zones. From the second pass on, the SYN and SYN-ACK
# are retransmissions of an established connection's handshake (accepted, ignored) and every
# other segment a retransmission inside the window: established traffic both ways.
CT_PAYLOAD = 6          # bytes per data segment: 54 + 6 = 60-byte frames (64 on the wire)
CT_WIN = 502            # window field after the handshake (<< 7 = 64256 bytes)
CT_SYN_WIN = 64240
CT_SYNACK_WIN = 65160
CT_WSCALE = 7
# MSS 1460, NOP, window scale, NOP, NOP, SACK permitted (12 bytes: a 66-byte SYN).
CT_SYN_OPTS = struct.pack("!BBH", 2, 4, 1460) + bytes([1, 3, 3, CT_WSCALE, 1, 1, 4, 2])


def ct_isn(i: int, server: bool) -> int:
    """Initial sequence numbers: spread over the space (some connections wrap 2^32)."""
    return ((0xC0FFEE00 if server else 0x5EED0000) + i * (0x85EBCA6B if server else 0x9E3779B1)) & 0xFFFFFFFF


def ct_segment(f: Flows, i: int, server: bool, seq: int, ack: int, flags: int, win: int,
               options: bytes = b"", payload: bytes = b"", ident: int = 0) -> bytes:
    """One TCP segment of connection i (client vm1 -> server vm2:5001), Ethernet-padded to 60."""
    dst_ip, sport, dport = f.tuple_of(i)
    cli, srv = f.src_ip, int(dst_ip)
    if server:
        src_mac, dst_mac, src_ip, d_ip, sp, dp = f.dst_mac, f.src_mac, srv, cli, dport, sport
    else:
        src_mac, dst_mac, src_ip, d_ip, sp, dp = f.src_mac, f.dst_mac, cli, srv, sport, dport
    l4 = tcp(src_ip, d_ip, sp, dp, seq, ack, flags, win, options, payload)
    fr = eth(dst_mac, src_mac, ETH_IPV4) + ipv4(src_ip, d_ip, IPPROTO_TCP, len(l4), ident=ident) + l4
    return fr + bytes(max(0, f.frame_len - len(fr)))


def ct_tcp_fields(f: Flows, i: int, server: bool, block: int) -> dict:
    """Block `block`'s TCP segment of connection i from the client or the server, as keyword
    arguments of `tcp` past the addresses and ports (seq, ack, flags, win, options, payload),
    plus the IPv4 `ident`. Shared by conntrack-established and fip-inbound."""
    c0, s0 = ct_isn(i, False), ct_isn(i, True)
    ident = (block * f.n_flows + i) & 0xFFFF
    data = bytes([0x40 + block % 64]) * CT_PAYLOAD
    if block == 0:
        if server:
            return dict(seq=s0, ack=c0 + 1, flags=TCP_SYN | TCP_ACK, win=CT_SYNACK_WIN,
                        options=CT_SYN_OPTS, payload=b"", ident=ident)
        return dict(seq=c0, ack=0, flags=TCP_SYN, win=CT_SYN_WIN, options=CT_SYN_OPTS, payload=b"",
                    ident=ident)
    if server:
        # Its data of blocks 1..block-1 went before; the client's of blocks 2..block are in.
        seq = s0 + 1 + CT_PAYLOAD * (block - 1)
        ack = c0 + 1 + CT_PAYLOAD * max(0, block - 1)
        return dict(seq=seq, ack=ack, flags=TCP_PSH | TCP_ACK, win=CT_WIN, options=b"", payload=data,
                    ident=ident)
    ack = s0 + 1 + CT_PAYLOAD * (block - 1)
    if block == 1:
        return dict(seq=c0 + 1, ack=ack, flags=TCP_ACK, win=CT_WIN, options=b"", payload=b"", ident=ident)
    seq = c0 + 1 + CT_PAYLOAD * (block - 2)
    return dict(seq=seq, ack=ack, flags=TCP_PSH | TCP_ACK, win=CT_WIN, options=b"", payload=data,
                ident=ident)


def ct_frame(f: Flows, i: int, server: bool, block: int) -> bytes:
    """Block `block`'s segment of connection i from the client (vm1) or the server (vm2)."""
    return ct_segment(f, i, server, **ct_tcp_fields(f, i, server, block))


def tcp_streams(name: str, frame: Callable[[Flows, int, bool, int], bytes], f: Flows,
                frames: int) -> List[List[bytes]]:
    """[the clients' frames, the servers' frames] of `name`'s connections, `frames` each (a
    multiple of n_flows, at least 2 blocks: handshake and third ACK); `frame(f, i, server,
    block)` builds one. At least 32 flows (one burst), so the handshake's third ACK comes a
    poll round after the SYN-ACK."""
    if frames % f.n_flows or frames // f.n_flows < 2:
        raise ValueError(f"{name}: frames ({frames}) must be a multiple (>= 2) of flows ({f.n_flows})")
    if f.n_flows < 32:
        raise ValueError(f"{name}: at least 32 flows (one burst) so the handshake's third ACK "
                         "comes a poll round after the SYN-ACK")
    blocks = frames // f.n_flows
    return [[frame(f, i, server, b) for b in range(blocks) for i in range(f.n_flows)]
            for server in (False, True)]


def ct_streams(f: Flows, frames: int) -> List[List[bytes]]:
    """[vm1's (client) frames, vm2's (server) frames]."""
    return tcp_streams("conntrack-established", ct_frame, f, frames)


def build_ct_established(f: Flows, i: int) -> bytes:
    """The typical frame (frame_len): a client data segment."""
    return ct_frame(f, i, False, 2)


def verify_streams_unchanged(f: Flows, sent: List[List[bytes]], out: List[List[bytes]]) -> List[str]:
    """Every stream's frames leave by its output port as they came, in order."""
    problems = []
    for k, (want, got) in enumerate(zip(sent, out)):
        if len(got) != len(want):
            problems.append(f"stream {k}: {len(got)} frames out, {len(want)} sent")
        wrong = [n for n, (a, b) in enumerate(zip(want, got)) if a != b]
        if wrong:
            n = wrong[0]
            problems.append(f"stream {k}: {len(wrong)} frames differ; first, frame {n}:\n      got      "
                            f"{got[n].hex()}\n      expected {want[n].hex()}")
    return problems


# --- fip-inbound: Internet clients <-> vm1:5001 through its floating IP -------------------------
# The same connections, blocks and segments as conntrack-established (`ct_tcp_fields`), with
# the Internet host as the client (uplink, port 0: it opens every connection, so it is polled
# first) and vm1 as the server (port 1). `FIP_FLOWS` describes them from the instance's side:
# src = vm1, dst_ip = the Internet host of connection i (FIP_INET_BASE + i % 16), src_port
# (49152 + i) = the client's port, dst_port = the server's (5001).
def fip_frame(f: Flows, i: int, server: bool, block: int, translated: bool = False) -> bytes:
    """Block `block`'s segment of connection i: from the Internet client as it arrives on the
    uplink (tagged, to the gateway port's MAC, to the floating IP), or from vm1 (the server)
    as it sends it (untagged, to its gateway's MAC, from its fixed IP); with `translated`, as
    the switch must send it on (built from scratch here, checksums computed over the whole
    headers: never derived from the frame received)."""
    inet, cport, sport = f.tuple_of(i)
    fields = ct_tcp_fields(f, i, server, block)
    ident = fields.pop("ident")
    if server:
        src_ip, dst_ip, sp, dp = (FIP_ADDR if translated else f.src_ip), inet, sport, cport
        ttl = FIP_VM_TTL - (1 if translated else 0)
        l2 = eth(FIP_EXT_GW_MAC, FIP_FG_MAC, ETH_IPV4, FIP_EXT_VLAN) if translated else \
            eth(f.dst_mac, f.src_mac, ETH_IPV4)
    else:
        src_ip, dst_ip, sp, dp = inet, (f.src_ip if translated else FIP_ADDR), cport, sport
        ttl = FIP_INET_TTL - (1 if translated else 0)
        l2 = eth(f.src_mac, f.dst_mac, ETH_IPV4) if translated else \
            eth(FIP_FG_MAC, FIP_EXT_GW_MAC, ETH_IPV4, FIP_EXT_VLAN)
    l4 = tcp(src_ip, dst_ip, sp, dp, **fields)
    fr = l2 + ipv4(src_ip, dst_ip, IPPROTO_TCP, len(l4), ident=ident, ttl=ttl) + l4
    # Padded to the minimum Ethernet frame (60 bytes without FCS) before any tag: the only
    # short segment, the client's third ACK (54 bytes), is 60 untagged and 64 tagged, so the
    # switch's tag pop and push change the length by the tag only.
    tagged = len(l2) == 18
    return fr + bytes(max(0, f.frame_len + (4 if tagged else 0) - len(fr)))


def fip_streams(f: Flows, frames: int) -> List[List[bytes]]:
    """[the uplink's (Internet clients) frames, vm1's (server) frames]."""
    return tcp_streams("fip-inbound", fip_frame, f, frames)


def build_fip_inbound(f: Flows, i: int) -> bytes:
    """The typical frame (frame_len): an Internet client's data segment, tagged, on the uplink."""
    return fip_frame(f, i, False, 2)


def fip_garp() -> bytes:
    """The gratuitous ARP the switch sends out of the uplink at start for the floating IP (an
    ARP request for it from itself, by the gateway port's MAC, broadcast, tagged 101, 60 bytes
    + the tag)."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, 1, mac_bytes(FIP_FG_MAC), ip_bytes(FIP_ADDR),
                      bytes(6), ip_bytes(FIP_ADDR))
    fr = eth("ff:ff:ff:ff:ff:ff", FIP_FG_MAC, 0x0806, FIP_EXT_VLAN) + arp
    return fr + bytes(64 - len(fr))


def verify_fip_streams(f: Flows, sent: List[List[bytes]], out: List[List[bytes]]) -> List[str]:
    """out[0] (vm1) must be the uplink's frames DNATed and routed, out[1] (uplink) vm1's frames
    SNATed and routed, each in the order sent, and the uplink's also exactly one gratuitous ARP
    for the floating IP (sent at start, before any traffic; found wherever it is)."""
    problems = []
    garp = fip_garp()
    ups = [fr for fr in out[1] if fr != garp]
    if len(out[1]) - len(ups) != 1:
        problems.append(f"uplink: {len(out[1]) - len(ups)} gratuitous ARPs for {FIP_ADDR} "
                        f"({garp.hex()}), expected 1")
    got = [out[0], ups]
    for k, name in enumerate(("uplink -> vm1 (DNAT)", "vm1 -> uplink (SNAT)")):
        n = len(sent[k])
        want = [fip_frame(f, j % f.n_flows, k == 1, j // f.n_flows, translated=True) for j in range(n)]
        if len(got[k]) != n:
            problems.append(f"{name}: {len(got[k])} frames out, {n} sent")
        wrong = [j for j, (a, b) in enumerate(zip(want, got[k])) if a != b]
        if wrong:
            j = wrong[0]
            problems.append(f"{name}: {len(wrong)} frames differ; first, frame {j}:\n      got      "
                            f"{got[k][j].hex()}\n      expected {want[j].hex()}")
    return problems


# --- snat-outbound: an instance without a floating IP -> Internet servers, through the network
# node's centralized SNAT. The network node (bench-net1, VTEP 10.0.0.13) receives compute1's
# routed frames for router1's SNAT port over VXLAN (stream "compute1", on the overlay port) and
# the servers' answers to router1's gateway address on the provider VLAN (stream "internet").
# The same connections, blocks and segments as conntrack-established (`ct_tcp_fields`), the
# instance the client. The translated source ports are the switch's choice: bench.py learns
# them in a first replay of the client stream and sets `SNAT_PORT_MAP` (connection i -> port)
# before the server stream is built; without it the answers go to 1024 + i.
SNAT_VM_IP = "198.51.100.4"
SNAT_VM_MAC = "fa:16:3e:00:00:01"
SNAT_PORT_MAC = "fa:16:3e:bb:00:01"     # router1's SNAT port on selfservice1 (198.51.100.10)
SNAT_QG_MAC = "fa:16:3e:bb:00:03"       # router1's gateway port
SNAT_GW_IP = "203.0.113.11"             # router1's gateway address: what the servers see
SNAT_COMPUTE_VTEP = "10.0.0.11"
SNAT_COMPUTE_VTEP_MAC = "02:00:00:00:00:11"   # [overlay.neighbors] in snat-outbound's host.toml
SNAT_NODE_VTEP = "10.0.0.13"
SNAT_COMPUTE_DVR_MAC = "fa:16:3f:00:00:11"
SNAT_VNI = 101
SNAT_INET_TTL = 57
SNAT_PORT_MAP: Dict[int, int] = {}


def snat_port(i: int) -> int:
    return SNAT_PORT_MAP.get(i, 1024 + i)


def snat_vxlan(inner: bytes, i: int, to_compute: bool, sport: Optional[int] = None) -> bytes:
    """`inner` in VXLAN between compute1 and the network node (VNI 101), either way."""
    sport = 49152 + i % 16384 if sport is None else sport
    l4_payload = vxlan(SNAT_VNI) + inner
    udp_hdr = struct.pack("!HHHH", sport, VXLAN_PORT, 8 + len(l4_payload), 0)
    if to_compute:
        l3 = ipv4(SNAT_NODE_VTEP, SNAT_COMPUTE_VTEP, IPPROTO_UDP, 8 + len(l4_payload), ident=i)
        return eth(SNAT_COMPUTE_VTEP_MAC, PCAP0_MAC, ETH_IPV4) + l3 + udp_hdr + l4_payload
    l3 = ipv4(SNAT_COMPUTE_VTEP, SNAT_NODE_VTEP, IPPROTO_UDP, 8 + len(l4_payload), ident=i)
    return eth(PCAP0_MAC, SNAT_COMPUTE_VTEP_MAC, ETH_IPV4) + l3 + udp_hdr + l4_payload


def snat_frame(f: Flows, i: int, server: bool, block: int, translated: bool = False) -> bytes:
    """Block `block`'s segment of connection i. Client (the instance): as compute1 routed it
    (inner frame from its DVR MAC to the SNAT port, TTL 63) in VXLAN; translated: from the
    gateway address and port `snat_port(i)`, out of the gateway port tagged 101 (TTL 62).
    Server: its answer to the gateway address and port, tagged 101; translated: to the instance
    from the SNAT port (TTL 56), the inner frame only (the VXLAN outer headers are checked
    apart)."""
    inet, cport, sport = f.tuple_of(i)
    fields = ct_tcp_fields(f, i, server, block)
    ident = fields.pop("ident")
    gp = snat_port(i)
    if server:
        src_ip, sp = inet, sport
        dst_ip, dp = (f.src_ip, cport) if translated else (SNAT_GW_IP, gp)
        ttl = SNAT_INET_TTL - (1 if translated else 0)
        l2 = eth(SNAT_VM_MAC, SNAT_PORT_MAC, ETH_IPV4) if translated else \
            eth(SNAT_QG_MAC, FIP_EXT_GW_MAC, ETH_IPV4, FIP_EXT_VLAN)
    else:
        dst_ip, dp = inet, sport
        src_ip, sp = (SNAT_GW_IP, gp) if translated else (f.src_ip, cport)
        ttl = 63 - (1 if translated else 0)
        l2 = eth(FIP_EXT_GW_MAC, SNAT_QG_MAC, ETH_IPV4, FIP_EXT_VLAN) if translated else \
            eth(SNAT_PORT_MAC, SNAT_COMPUTE_DVR_MAC, ETH_IPV4)
    l4 = tcp(src_ip, dst_ip, sp, dp, **fields)
    fr = l2 + ipv4(src_ip, dst_ip, IPPROTO_TCP, len(l4), ident=ident, ttl=ttl) + l4
    tagged = len(l2) == 18
    fr = fr + bytes(max(0, f.frame_len + (4 if tagged else 0) - len(fr)))
    if not server and not translated:
        return snat_vxlan(fr, i, to_compute=False)
    return fr


def snat_streams(f: Flows, frames: int) -> List[List[bytes]]:
    """[compute1's frames (overlay), the servers' frames (uplink)]."""
    return tcp_streams("snat-outbound", snat_frame, f, frames)


def build_snat_outbound(f: Flows, i: int) -> bytes:
    """The typical frame (frame_len): the instance's data segment as compute1 sends it (VXLAN)."""
    return snat_frame(f, i, False, 2)


def snat_learn_ports(f: Flows, out: List[bytes]) -> Dict[int, int]:
    """The ports the switch chose, from what it sent out of the uplink when the client stream
    was replayed once: its first n_flows frames are the SYNs of connections 0, 1, ... in order
    (what follows them, unanswered, may be refused by connection tracking)."""
    if len(out) < f.n_flows:
        raise ValueError(f"snat-outbound: {len(out)} frames out, expected at least {f.n_flows} SYNs")
    ports: Dict[int, int] = {}
    for i, fr in enumerate(out[:f.n_flows]):
        inet = f.tuple_of(i)[0]
        if len(fr) < 18 + 20 + 14 or fr[12:14] != b"\x81\x00" or fr[18 + 9] != IPPROTO_TCP:
            raise ValueError(f"snat-outbound: frame {i} out is not tagged TCP: {fr[:40].hex()}")
        ihl = (fr[18] & 0x0F) * 4
        t = 18 + ihl
        if fr[18 + 16:18 + 20] != ip_bytes(inet) or not fr[t + 13] & TCP_SYN:
            raise ValueError(f"snat-outbound: frame {i} out is not connection {i}'s SYN: {fr[:60].hex()}")
        ports[i] = struct.unpack("!H", fr[t:t + 2])[0]
    # A port is unique per server (the reply key), as with Linux's masquerade: connections to
    # different servers may share one.
    pairs = {(f.tuple_of(i)[0], p) for i, p in ports.items()}
    if len(pairs) != len(ports):
        raise ValueError("snat-outbound: two connections to one server got the same port")
    return ports


def verify_snat_streams(f: Flows, sent: List[List[bytes]], out: List[List[bytes]]) -> List[str]:
    """out[0] (uplink): the instance's frames from the gateway address, each connection its own
    port, in order; out[1] (overlay): the answers back to compute1's VTEP in VXLAN VNI 101, the
    inner frame translated to the instance, in order."""
    problems = []
    pairs = {(f.tuple_of(i)[0], snat_port(i)) for i in range(f.n_flows)}
    if len(pairs) != f.n_flows:
        problems.append("two connections to one server share a translated port")
    for k, name in enumerate(("compute1 -> uplink (SNAT)", "uplink -> compute1 (un-SNAT)")):
        n = len(sent[k])
        want = [snat_frame(f, j % f.n_flows, k == 1, j // f.n_flows, translated=True) for j in range(n)]
        got = out[k]
        if k == 1:
            inner = []
            for fr in got:
                outer_ok = (fr[:12] == mac_bytes(SNAT_COMPUTE_VTEP_MAC) + mac_bytes(PCAP0_MAC)
                            and fr[26:34] == ip_bytes(SNAT_NODE_VTEP) + ip_bytes(SNAT_COMPUTE_VTEP)
                            and fr[36:38] == struct.pack("!H", VXLAN_PORT)
                            and fr[42:50] == vxlan(SNAT_VNI))
                if not outer_ok:
                    problems.append(f"{name}: outer headers wrong: {fr[:50].hex()}")
                    break
                inner.append(fr[50:])
            got = inner
        if len(got) != n:
            problems.append(f"{name}: {len(got)} frames out, {n} sent")
        wrong = [j for j, (a, b) in enumerate(zip(want, got)) if a != b]
        if wrong:
            j = wrong[0]
            problems.append(f"{name}: {len(wrong)} frames differ; first, frame {j}:\n      got      "
                            f"{got[j].hex()}\n      expected {want[j].hex()}")
    return problems


L2_FLOWS = Flows(src_mac=VM1_MAC, dst_mac=VM2_MAC, src_ip=VM1_IP,
                 dst_ip_base=str(ipaddress.IPv4Network(VM2_BEHIND)[0]))

# vxlan-decap: vm2 (on bench2, behind VTEP 10.0.0.12) -> vm1 (local); these are the inner
# frames, wrapped by `vxlan_outer`.
VXLAN_DECAP_FLOWS = Flows(src_mac=VM2_MAC, dst_mac=VM1_MAC, src_ip=VM2_IP,
                          dst_ip_base=str(ipaddress.IPv4Network(VM1_BEHIND)[0]))

# routed-east-west: vm1 (selfservice1, compute1) -> ROUTED_DST_COUNT instances of selfservice2
# on compute2, addressed to the selfservice1 gateway's MAC; 8 destinations x 128 dst ports.
ROUTED_FLOWS = Flows(src_mac=VM1_MAC, dst_mac=GW1_MAC, src_ip=VM1_IP, dst_ip_base=ROUTED_DST_BASE,
                     dst_ip_count=ROUTED_DST_COUNT, dst_port_count=1024 // ROUTED_DST_COUNT)

# conntrack-established: 1024 connections from vm1:49152+i to vm2:5001 (one destination).
CT_FLOWS = Flows(src_mac=VM1_MAC, dst_mac=VM2_MAC, src_ip=VM1_IP, dst_ip_base=VM2_IP, dst_ip_count=1,
                 dst_port_base=CT_SERVER_PORT, dst_port_count=1)

# fip-inbound: vm1 (198.51.100.4) serves 5001 to 1024 connections from 16 Internet hosts
# (100.64.0.1-16), client ports 49152+i; from the instance's side (see fip_frame).
FIP_FLOWS = Flows(src_mac=VM1_MAC, dst_mac=GW1_MAC, src_ip=FIP_VM_IP, dst_ip_base=FIP_INET_BASE,
                  dst_ip_count=FIP_INET_COUNT, dst_port_base=CT_SERVER_PORT, dst_port_count=1)

# snat-outbound: the instance 198.51.100.4 opens 1024 connections, ports 49152+i, to 16 servers
# (100.64.0.1-16):5001; compute1 routed them to router1's SNAT port (see snat_frame).
SNAT_FLOWS = Flows(src_mac=SNAT_COMPUTE_DVR_MAC, dst_mac=SNAT_PORT_MAC, src_ip=SNAT_VM_IP,
                   dst_ip_base=FIP_INET_BASE, dst_ip_count=FIP_INET_COUNT, dst_port_base=CT_SERVER_PORT,
                   dst_port_count=1)

SCENARIOS: Dict[str, Scenario] = {
    "l2": Scenario(
        name="l2",
        description="vm1 -> vm2 on one network, same host: port security + static FDB unicast",
        flows=L2_FLOWS,
        build=build_l2,
        verify=verify_unchanged,
    ),
    # The same frames as l2, but vm2 lives on bench2: l2population maps its MAC to VTEP
    # 10.0.0.12 and vm1's frames leave encapsulated (VNI 101) by the overlay port.
    "vxlan-encap": Scenario(
        name="vxlan-encap",
        description="vm1 -> vm2 on another host: port security, l2pop FDB, VXLAN encapsulation",
        flows=L2_FLOWS,
        build=build_l2,
        verify=verify_vxlan_encap,
    ),
    "vxlan-decap": Scenario(
        name="vxlan-decap",
        description="remote VTEP -> vm1: VXLAN checks and decapsulation, static FDB unicast",
        flows=VXLAN_DECAP_FLOWS,
        build=build_vxlan_decap,
        verify=verify_unchanged,
    ),
    # DVR east-west: vm1 sends to its gateway MAC; router1 on compute1 routes to selfservice2
    # (FIB, TTL - 1, DVR MAC as source, the destination instance's MAC from the pre-populated
    # neighbours) and the frames leave VXLAN-encapsulated (VNI 102) towards compute2.
    "routed-east-west": Scenario(
        name="routed-east-west",
        description="vm1 (selfservice1) -> 8 instances of selfservice2 on compute2: port security, "
                    "DVR routing (FIB, TTL, DVR MAC), l2pop FDB, VXLAN encapsulation",
        flows=ROUTED_FLOWS,
        build=build_l2,
        state_needs=tuple(routed_dst_ips()) + tuple(routed_dst_mac(a) for a in routed_dst_ips())
        + (DVR_MAC_LOCAL, GW2_MAC),
        verify=verify_routed_east_west,
    ),
    # Security groups with connection tracking, established TCP both ways: vm1 and vm2 each
    # replay their side of 1024 connections (two input ports, each the other's output).
    "conntrack-established": Scenario(
        name="conntrack-established",
        description="1024 established TCP connections vm1 (client) <-> vm2:5001 (server), both "
                    "directions: security groups + conntrack with window tracking in both zones",
        flows=CT_FLOWS,
        build=build_ct_established,
        # 8 blocks: handshake, third ACK + first data, 6 data each way. The handshake is
        # replayed on established connections each time the pcap wraps: 1 frame in 8 (with
        # fewer blocks, 1 in 4) is a SYN or SYN-ACK, which the flow cache never answers (every
        # one goes through the stages), where a real established flow sends thousands of
        # segments per handshake. 8 K frames per pcap is as far as net_pcap's mbuf pool goes.
        frames=8192,
        state_needs=(VM2_IP,),
        streams=ct_streams,
        stream_names=("client", "server"),
        verify_streams=verify_streams_unchanged,
    ),
    # Floating IP on a DVR compute host, established TCP both ways: Internet clients replay
    # their side on the uplink (VLAN 101, DNAT to vm1, routed, security group ingress), vm1
    # replays its answers (security group egress, routed, SNAT to the floating IP, tagged).
    "fip-inbound": Scenario(
        name="fip-inbound",
        description="1024 established TCP connections Internet (uplink, VLAN 101) <-> floating IP "
                    "203.0.113.17 = vm1:5001, both directions: DNAT/SNAT, DVR routing, security "
                    "group + conntrack with window checks in vm1's zone",
        flows=FIP_FLOWS,
        build=build_fip_inbound,
        # 8 blocks, as conntrack-established.
        frames=8192,
        state_needs=(FIP_ADDR, FIP_FG_MAC, FIP_FG_IP, FIP_EXT_GW_MAC, FIP_EXT_GW_IP),
        streams=fip_streams,
        stream_names=("internet", "vm1"),
        verify_streams=verify_fip_streams,
    ),
    "snat-outbound": Scenario(
        name="snat-outbound",
        description="1024 established TCP connections instance (selfservice1, on compute1, no floating "
                    "IP) <-> 16 Internet servers:5001 through the network node's centralized SNAT, both "
                    "directions: VXLAN decap, SNAT router (port per connection), VLAN 101 out; back: "
                    "un-SNAT, VXLAN encap to compute1",
        flows=SNAT_FLOWS,
        build=build_snat_outbound,
        # 8 blocks, as conntrack-established.
        frames=8192,
        state_needs=(SNAT_GW_IP, SNAT_QG_MAC, SNAT_PORT_MAC, FIP_EXT_GW_MAC, SNAT_COMPUTE_DVR_MAC),
        streams=snat_streams,
        stream_names=("compute1", "internet"),
        verify_streams=verify_snat_streams,
    ),
}


# --- pcap writer ---------------------------------------------------------------------------------
PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1


def write_pcap(path: str, frames: List[bytes]) -> None:
    """Classic little-endian pcap, microsecond timestamps 1 us apart."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for n, fr in enumerate(frames):
            fh.write(struct.pack("<IIII", n // 1_000_000, n % 1_000_000, len(fr), len(fr)))
            fh.write(fr)
    os.replace(tmp, path)


def frames_for(sc: Scenario, frames: Optional[int] = None, flows: Optional[int] = None) -> List[bytes]:
    f = sc.flows if flows is None else replace(sc.flows, n_flows=flows)
    n = sc.frames if frames is None else frames
    # Build each distinct flow once, then repeat the cycle.
    cycle = [sc.build(f, i) for i in range(min(n, f.n_flows))]
    return [cycle[k % len(cycle)] for k in range(n)]


def generate(name: str, path: str, frames: Optional[int] = None, flows: Optional[int] = None) -> int:
    """Writes scenario `name`'s pcap to `path`; returns the frame count. (Scenarios with
    several streams: `generate_streams`.)"""
    sc = SCENARIOS[name]
    if sc.streams is not None:
        raise ValueError(f"scenario {name} has {len(sc.stream_names)} streams: use generate_streams")
    fr = frames_for(sc, frames, flows)
    write_pcap(path, fr)
    return len(fr)


def stream_paths(path: str, sc: Scenario) -> List[str]:
    """`x/name.pcap` -> [`x/name-<stream>.pcap`, ...]."""
    stem = path[:-5] if path.endswith(".pcap") else path
    return [f"{stem}-{s}.pcap" for s in sc.stream_names]


def generate_streams(name: str, path: str, frames: Optional[int] = None,
                     flows: Optional[int] = None) -> List[tuple]:
    """Writes each stream of scenario `name` to its pcap (`stream_paths(path)`); returns
    [(path, frames), ...] in stream order."""
    sc = SCENARIOS[name]
    f = sc.flows if flows is None else replace(sc.flows, n_flows=flows)
    out = []
    for p, fr in zip(stream_paths(path, sc), sc.streams(f, sc.frames if frames is None else frames)):
        write_pcap(p, fr)
        out.append((p, len(fr)))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    ap.add_argument("-o", "--output", help="pcap path (default perf/out/<scenario>.pcap; a scenario with "
                    "several streams writes <path without .pcap>-<stream>.pcap each)")
    ap.add_argument("--frames", type=int, help="frames in the file (default: the scenario's)")
    ap.add_argument("--flows", type=int, help="distinct 5-tuples (default: the scenario's)")
    ap.add_argument("--list", action="store_true", help="list scenarios")
    a = ap.parse_args(argv)
    if a.list or not a.scenario:
        for s in SCENARIOS.values():
            print(f"{s.name:<24} {s.description}")
        return 0 if a.list else 2
    if a.scenario not in SCENARIOS:
        print(f"unknown scenario {a.scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    if a.frames is not None and not 1 <= a.frames <= 16384:
        print("--frames must be 1..16384 (net_pcap holds the file in the port's mbuf pool)", file=sys.stderr)
        return 2
    out = a.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", f"{a.scenario}.pcap")
    if SCENARIOS[a.scenario].streams is not None:
        for p, n in generate_streams(a.scenario, out, a.frames, a.flows):
            print(f"{p}: {n} frames")
        return 0
    n = generate(a.scenario, out, a.frames, a.flows)
    print(f"{out}: {n} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
