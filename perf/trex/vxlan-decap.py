"""TRex STL profile for benchmark scenario `vxlan-decap` (remote VTEP -> vm1).

The traffic perf/gen_pcap.py writes for the net_pcap benchmark: VXLAN frames (VNI 101) from
bench2's VTEP 10.0.0.12 (MAC 02:00:00:00:00:12) to our 10.0.0.11, UDP 4789, outer UDP
checksum 0, carrying 64-byte Ethernet/IPv4/UDP frames from vm2 to vm1, 1024 inner flows; flow i
has
    inner dst_ip   = 198.51.100.48 + i % 16
    inner dst_port = 5001 + (i // 16) % 64
    inner src_port = 49152 + i % 1024 = outer UDP source port
Differences from the pcap: the inner UDP checksum is 0 here ("none", legal over IPv4; the
pcap carries computed ones, which the switch does not read) and the outer IPv4 id is 0. The
outer destination MAC is net_pcap's (02:70:63:61:70:00): on real hardware pass the switch's
overlay port MAC with `-t --dst-mac XX:XX:XX:XX:XX:XX`.

On a TRex server, port 0 cabled to the switch's overlay (underlay) port, port 1 to vm1's:
    trex-console> start -f perf/trex/vxlan-decap.py -m 100% --port 0
Load offline (no server) to check the profile compiles:
    python3 -c "import lbr_trex_client; from trex.stl.api import STLProfile; \
                print(STLProfile.load_py('perf/trex/vxlan-decap.py').dump_to_code())"
"""
import argparse
import os
import sys

from trex.stl.api import (STLPktBuilder, STLStream, STLTXCont, STLVM,  # noqa: F401
                          Ether, IP, UDP, Raw)
from scapy.layers.vxlan import VXLAN

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gen_pcap  # noqa: E402

SCENARIO = "vxlan-decap"


def int_to_ip(n):
    return ".".join(str((n >> s) & 0xFF) for s in (24, 16, 8, 0))


class STLS1(object):
    """One continuous stream of VXLAN frames from the remote VTEP; send it from the TRex port
    cabled to the switch's overlay port (the direction argument changes nothing)."""

    def __init__(self):
        self.flows = gen_pcap.SCENARIOS[SCENARIO].flows

    def create_stream(self, n_flows=None, dst_mac=gen_pcap.PCAP0_MAC):
        f = self.flows
        n = n_flows or f.n_flows
        ip0, sport0, dport0 = f.tuple_of(0)
        inner = (Ether(src=f.src_mac, dst=f.dst_mac)
                 / IP(src=f.src_ip, dst=int_to_ip(ip0), ttl=64, flags="DF", id=0)
                 / UDP(sport=sport0, dport=dport0, chksum=0))
        inner = inner / Raw(b"\x00" * max(0, f.frame_len - len(inner)))
        pkt = (Ether(src=gen_pcap.REMOTE_VTEP_MAC, dst=dst_mac)
               / IP(src=gen_pcap.REMOTE_VTEP_IP, dst=gen_pcap.LOCAL_VTEP_IP, ttl=64, flags="DF", id=0)
               / UDP(sport=sport0, dport=gen_pcap.VXLAN_PORT, chksum=0)
               / VXLAN(flags=0x08, vni=gen_pcap.VXLAN_VNI)
               / inner)

        vm = STLVM()
        # As perf/trex/l2.py, on the inner headers; the inner source port is also the outer one.
        vm.var(name="dport", min_value=f.dst_port_base,
               max_value=f.dst_port_base + f.dst_port_count - 1, size=2, op="inc")
        vm.var(name="dst_ip", min_value=ip0, max_value=ip0 + f.dst_ip_count - 1, size=4, op="inc",
               next_var="dport")
        vm.var(name="sport", min_value=f.src_port_base, max_value=f.src_port_base + n - 1,
               size=2, op="inc")
        vm.write(fv_name="dst_ip", pkt_offset="IP:1.dst")
        vm.write(fv_name="dport", pkt_offset="UDP:1.dport")
        vm.write(fv_name="sport", pkt_offset="UDP:1.sport")
        vm.write(fv_name="sport", pkt_offset="UDP.sport")
        # The inner IPv4 header checksum (its destination varies); the outer one is constant.
        vm.fix_chksum(offset="IP:1")
        return STLStream(packet=STLPktBuilder(pkt=pkt, vm=vm), mode=STLTXCont())

    def get_streams(self, tunables=None, direction=0, port_id=0, **kwargs):
        parser = argparse.ArgumentParser(prog="perf/trex/vxlan-decap.py", description=__doc__.split("\n")[0])
        parser.add_argument("--flows", type=int, default=self.flows.n_flows,
                            help="distinct inner 5-tuples (default %(default)s)")
        parser.add_argument("--dst-mac", default=gen_pcap.PCAP0_MAC,
                            help="the switch's overlay port MAC (default: net_pcap's, %(default)s)")
        args = parser.parse_args(list(tunables or []))
        return [self.create_stream(args.flows, args.dst_mac)]


def register():
    return STLS1()
