"""TRex STL profile for benchmark scenario `routed-east-west` (DVR between two self-service
networks: vm1 on selfservice1 -> instances of selfservice2 on another host).

The l2 stream's construction (perf/trex/l2.py builds it) with this scenario's flows from
perf/gen_pcap.py: 64-byte Ethernet/IPv4/UDP frames from vm1 (fa:16:3e:00:00:01, 198.51.100.11)
to router1's selfservice1 gateway MAC fa:16:3e:aa:00:01, 1024 flows; flow i has
    dst_ip   = 198.18.0.32 + i % 8       (eight instances bound to compute2)
    dst_port = 5001 + (i // 8) % 128
    src_port = 49152 + i % 1024
The switch (perf/scenarios/routed-east-west/) routes them on this host (TTL 63, source MAC =
compute1's DVR MAC fa:16:3f:00:00:11, destination = the instance's MAC) and sends them
VXLAN-encapsulated (VNI 102, 114 bytes) to compute2's VTEP 10.0.0.12 out of its overlay port.

On a TRex server, port 0 cabled to the switch port that carries vm1, port 1 to its overlay
(underlay) port, which must resolve 10.0.0.12: give TRex port 1 that address
(`service; l3 -p 1 --src 10.0.0.12 --dst 10.0.0.11`) or configure the switch with a static
`[overlay.neighbors]` entry for TRex port 1's MAC.
    trex-console> start -f perf/trex/routed-east-west.py -m 100% --port 0
Load offline (no server) to check the profile compiles:
    python3 -c "import lbr_trex_client; from trex.stl.api import STLProfile; \
                print(STLProfile.load_py('perf/trex/routed-east-west.py').dump_to_code())"
"""
import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("trex_profile_l2", os.path.join(_HERE, "l2.py"))
_l2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_l2)

SCENARIO = "routed-east-west"


class STLS1(_l2.STLS1):
    """The l2 stream, with the flows of `routed-east-west`."""

    def __init__(self):
        self.flows = _l2.gen_pcap.SCENARIOS[SCENARIO].flows


def register():
    return STLS1()
