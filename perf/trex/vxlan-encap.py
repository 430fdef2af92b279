"""TRex STL profile for benchmark scenario `vxlan-encap` (vm1 -> vm2 on another host).

The traffic is the `l2` scenario's, byte for byte (perf/trex/l2.py builds it; this profile
only names the other scenario): 64-byte Ethernet/IPv4/UDP frames from vm1 to vm2, 1024 flows.
What differs is the switch's configuration (perf/scenarios/vxlan-encap/): vm2 is bound to
host bench2 (VTEP 10.0.0.12), so the switch sends every frame VXLAN-encapsulated (VNI 101,
114 bytes) out of its overlay port.

On a TRex server, port 0 cabled to the switch port that carries vm1, port 1 to its overlay
(underlay) port, which must resolve 10.0.0.12: give TRex port 1 that address
(`service; l3 -p 1 --src 10.0.0.12 --dst 10.0.0.11`) or configure the switch with a static
`[overlay.neighbors]` entry for TRex port 1's MAC.
    trex-console> start -f perf/trex/vxlan-encap.py -m 100% --port 0
Load offline (no server) to check the profile compiles:
    python3 -c "import lbr_trex_client; from trex.stl.api import STLProfile; \
                print(STLProfile.load_py('perf/trex/vxlan-encap.py').dump_to_code())"
"""
import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("trex_profile_l2", os.path.join(_HERE, "l2.py"))
_l2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_l2)

SCENARIO = "vxlan-encap"


class STLS1(_l2.STLS1):
    """The l2 stream, with the flows of `vxlan-encap` (the same as l2's)."""

    def __init__(self):
        self.flows = _l2.gen_pcap.SCENARIOS[SCENARIO].flows


def register():
    return STLS1()
