"""TRex STL profile for benchmark scenario `l2` (vm1 -> vm2, one network, one host).

The same traffic perf/gen_pcap.py writes for the net_pcap benchmark, for a TRex traffic
generator on real hardware: 64-byte Ethernet/IPv4/UDP frames from vm1's MAC and address to
vm2's MAC, 1024 flows; flow i has
    dst_ip   = 198.51.100.32 + i % 16
    dst_port = 5001 + (i // 16) % 64
    src_port = 49152 + i % 1024
(TRex may start one step into the cycle; the set and the order of the 5-tuples are the same).
Addresses and ranges come from perf/gen_pcap.py, so the two cannot drift apart.

Run on a TRex server, port 0 cabled to the switch port that carries vm1 and port 1 to vm2's:
    ./t-rex-64 -i                                   # the server
    trex-console> start -f perf/trex/l2.py -m 100% --port 0
Tunable: --flows N (distinct 5-tuples, default 1024); `start -f perf/trex/l2.py -t --help` lists it.
Load offline (no server) to check the profile compiles:
    python3 -c "import lbr_trex_client; from trex.stl.api import STLProfile; \
                print(STLProfile.load_py('perf/trex/l2.py').dump_to_code())"
"""
import argparse
import os
import sys

from trex.stl.api import (CTRexVmInsFixHwCs, STLPktBuilder, STLStream, STLTXCont, STLVM,  # noqa: F401
                          Ether, IP, UDP, Raw)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gen_pcap  # noqa: E402

SCENARIO = "l2"


def int_to_ip(n):
    return ".".join(str((n >> s) & 0xFF) for s in (24, 16, 8, 0))


class STLS1(object):
    """One continuous stream, vm1 -> vm2. The scenario is one-way: send it from the TRex port
    cabled to vm1's switch port (the direction argument changes nothing)."""

    def __init__(self):
        self.flows = gen_pcap.SCENARIOS[SCENARIO].flows

    def create_stream(self, n_flows=None):
        f = self.flows
        n = n_flows or f.n_flows
        ip0, sport0, dport0 = f.tuple_of(0)
        base = (Ether(src=f.src_mac, dst=f.dst_mac)
                / IP(src=f.src_ip, dst=int_to_ip(ip0), ttl=64, flags="DF", id=0)
                / UDP(sport=sport0, dport=dport0))
        pad = max(0, f.frame_len - len(base))
        pkt = base / Raw(b"\x00" * pad)

        vm = STLVM()
        # dst_ip steps through dst_ip_count addresses; each wrap steps dst_port (next_var).
        vm.var(name="dport", min_value=f.dst_port_base,
               max_value=f.dst_port_base + f.dst_port_count - 1, size=2, op="inc")
        vm.var(name="dst_ip", min_value=ip0, max_value=ip0 + f.dst_ip_count - 1, size=4, op="inc",
               next_var="dport")
        vm.var(name="sport", min_value=f.src_port_base, max_value=f.src_port_base + n - 1,
               size=2, op="inc")
        vm.write(fv_name="dst_ip", pkt_offset="IP.dst")
        vm.write(fv_name="dport", pkt_offset="UDP.dport")
        vm.write(fv_name="sport", pkt_offset="UDP.sport")
        # IPv4 header checksum and UDP checksum, by the NIC (as every TRex UDP profile does).
        vm.fix_chksum_hw(l3_offset="IP", l4_offset="UDP", l4_type=CTRexVmInsFixHwCs.L4_TYPE_UDP)
        return STLStream(packet=STLPktBuilder(pkt=pkt, vm=vm), mode=STLTXCont())

    def get_streams(self, tunables=None, direction=0, port_id=0, **kwargs):
        parser = argparse.ArgumentParser(prog="perf/trex/l2.py", description=__doc__.split("\n")[0])
        parser.add_argument("--flows", type=int, default=self.flows.n_flows,
                            help="distinct 5-tuples (default %(default)s)")
        args = parser.parse_args(list(tunables or []))
        return [self.create_stream(args.flows)]


def register():
    return STLS1()
