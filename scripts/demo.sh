#!/usr/bin/env bash
# demo.sh: vswitchd switching real kernels in network namespaces, in under a minute.
#
# Run by `make demo` after provisioning and `cargo build --release -p vswitch`; as root.
# VSWITCHD overrides the binary (default target/release/vswitchd).
#
#   demo-<pid>-i1  inst1 203.0.113.11  ─┐  provider1: VLAN 101 on physnet "provider"
#   demo-<pid>-i2  inst2 203.0.113.12  ─┤
#   demo-<pid>-i3  inst3 198.51.100.13 ─┤  flat1: flat (untagged) on physnet "provider"
#                                       ├─ vswitchd (namespace demo-<pid>-sw, net_af_packet ports)
#   demo-<pid>-prov provider host ──────┤  uplink: kernel 198.51.100.50 untagged (flat1) and a
#                                       │  scapy peer 203.0.113.50 on VLAN 101 (vlan_host.py:
#                                       │  this kernel has no 802.1Q support for eth0.101)
#   demo-<pid>-i4  inst4 198.18.0.11  ──┤  selfservice2: VXLAN VNI 101
#   demo-<pid>-i5  inst5 198.19.0.15  ──┤  selfservice1: VXLAN VNI 102; router1 (distributed)
#                                       │  joins selfservice1 (.1) and selfservice2 (.1)
#   demo-<pid>-kv  "compute2": a Linux kernel VTEP (10.0.0.12, vx0 VNI 101 + bridge) on the
#                  overlay port; behind it demo-<pid>-r, a remote instance 198.18.0.22
#
# Shows: ping and a TCP transfer (with throughput) inside one network, isolation between the
# two networks, the VLAN 101 host reaching an instance (tcpdump shows the tag), spoofed frames
# dropped and counted, VXLAN to a Linux kernel VTEP (ping, TCP, tcpdump shows VNI 101),
# distributed routing (gateway ping, routed ping/TCP, tracepath's one hop, TTL exceeded, and a
# routed frame reaching compute2 with this host's DVR MAC as source), security groups changed
# live by SIGHUP (ICMP refused and counted, an allowed TCP port works, replies tracked),
# vswitchd's counters, and a clean shutdown (exit 0, no mbuf leaked).
# Everything it creates is removed on exit, also on failure or Ctrl-C. Prints "DEMO OK" or
# "DEMO FAILED: <step>"; exits 0 only if every step worked.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VSWITCHD=${VSWITCHD:-$ROOT/target/release/vswitchd}
VSWITCHCTL=${VSWITCHCTL:-$(dirname "$VSWITCHD")/vswitchctl}
VLAN_HOST=$ROOT/vswitch/tests/peers/vlan_host.py
P=demo-$$
SW=$P-sw I1=$P-i1 I2=$P-i2 I3=$P-i3 PROV=$P-prov I4=$P-i4 KV=$P-kv RI=$P-r I5=$P-i5
NAMESPACES=("$SW" "$I1" "$I2" "$I3" "$PROV" "$I4" "$KV" "$RI" "$I5")
WORK=$(mktemp -d "/tmp/$P.XXXXXX")
STEP="prerequisites"
VS_PID="" PEER_PID="" TCPDUMP_PID="" SERVER_PID=""

heading() { printf '\n\033[1m=== %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
die() { echo "    error: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in $TCPDUMP_PID $PEER_PID $SERVER_PID $VS_PID; do
    kill -KILL "$pid" 2>/dev/null
  done
  for ns in "${NAMESPACES[@]}"; do
    if [ -e "/run/netns/$ns" ]; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
      ip netns del "$ns" 2>/dev/null
    fi
  done
  wait 2>/dev/null
  rm -rf "$WORK" "/var/run/dpdk/$P"
  echo
  if [ "$rc" -eq 0 ]; then
    echo "DEMO OK"
  else
    echo "DEMO FAILED: $STEP"
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'STEP="$STEP (interrupted)"; exit 130' INT TERM

# --- prerequisites ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, af_packet)"
[ -x "$VSWITCHD" ] || die "no vswitchd at $VSWITCHD (cargo build --release -p vswitch)"
[ -x "$VSWITCHCTL" ] || die "no vswitchctl at $VSWITCHCTL (cargo build --release -p vswitch)"
for t in ip ethtool tcpdump ping sysctl; do command -v "$t" >/dev/null || die "$t missing"; done
PY=""
for cand in /usr/bin/python3 python3; do
  if "$cand" -c 'import scapy' 2>/dev/null; then PY=$cand; break; fi
done
[ -n "$PY" ] || die "no python3 with scapy (apt-get install python3-scapy)"
# Namespaces left by an earlier demo that was killed (its pid is gone).
for ns in $(ip netns list | awk '{print $1}' | grep -E '^demo-[0-9]+-' || true); do
  pid=${ns#demo-}; pid=${pid%%-*}
  if [ ! -d "/proc/$pid" ]; then
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  fi
done

# --- topology --------------------------------------------------------------------------------
STEP="topology"
heading "1. Topology: 5 instances, a provider host and a kernel VTEP, each in its own namespace; vswitchd in $SW"
ip netns add "$SW"
ip -n "$SW" link set lo up
# host NS SWITCH_IF MAC CIDR
host() {
  local ns=$1 swif=$2 mac=$3 cidr=$4
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "$swif" netns "$SW" type veth peer name eth0 netns "$ns"
  # The switch ends carry no IP and no IPv6: the kernel must not add frames of its own.
  nsx "$SW" sysctl -q -w "net.ipv6.conf.$swif.disable_ipv6=1"
  ip -n "$SW" link set "$swif" up
  ip -n "$ns" link set eth0 address "$mac"
  ip -n "$ns" addr add "$cidr" dev eth0
  ip -n "$ns" link set eth0 up
  # af_packet forwards what veth hands it: no partial checksums, no 64 KiB super-frames.
  nsx "$ns" ethtool -K eth0 tx off tso off gso off >/dev/null
  info "$(printf '%-16s eth0 %-17s %-17s <-> %s:%s' "$ns" "$mac" "$cidr" "$SW" "$swif")"
}
host "$I1" vm1 fa:16:3e:00:01:11 203.0.113.11/24
host "$I2" vm2 fa:16:3e:00:01:12 203.0.113.12/24
host "$I3" vm3 fa:16:3e:00:01:13 198.51.100.13/24
host "$PROV" uplink 02:00:00:00:00:50 198.51.100.50/24
host "$I4" vm4 fa:16:3e:00:01:14 198.18.0.11/24
ip -n "$I4" link set eth0 mtu 1450
ip -n "$I4" route add default via 198.18.0.1
host "$I5" vm5 fa:16:3e:00:01:15 198.19.0.15/24
ip -n "$I5" link set eth0 mtu 1450
ip -n "$I5" route add default via 198.19.0.1
# "compute2": the underlay end of the overlay port, a kernel VXLAN device and a bridge to a
# remote instance, as a Linux compute node would have them.
host "$KV" overlay 02:00:00:00:00:12 10.0.0.12/24
ip -n "$KV" link add vx0 type vxlan id 101 local 10.0.0.12 remote 10.0.0.11 dstport 4789 dev eth0
ip -n "$KV" link add br0 type bridge
ip netns add "$RI"
ip -n "$RI" link set lo up
ip link add kv-r netns "$KV" type veth peer name eth0 netns "$RI"
for l in vx0 kv-r; do ip -n "$KV" link set "$l" master br0; ip -n "$KV" link set "$l" up; done
ip -n "$KV" link set br0 up
ip -n "$RI" link set eth0 address fa:16:3e:00:02:22 mtu 1450
ip -n "$RI" addr add 198.18.0.22/24 dev eth0
ip -n "$RI" link set eth0 up
nsx "$RI" ethtool -K eth0 tx off tso off gso off >/dev/null
info "$(printf '%-16s eth0 %-17s %-17s <-> %s:br0:vx0 (VNI 101)' "$RI" fa:16:3e:00:02:22 198.18.0.22/24 "$KV")"

cat >"$WORK/host.toml" <<EOF
role = "dvr"
host_id = "compute1"
main_core = 0
cores = [1]
local_vtep_ip = "10.0.0.11"
dvr_mac = "fa:16:3f:00:00:11"
eal_args = ["--no-huge", "-m", "512", "--no-pci", "--no-shconf", "--file-prefix", "$P"]

[idle]
mode = "backoff"

[[ports]]
name = "vm1"
devargs = "net_af_packet0,iface=vm1"
kind = "instance"
iface_id = "port-inst1"

[[ports]]
name = "vm2"
devargs = "net_af_packet1,iface=vm2"
kind = "instance"
iface_id = "port-inst2"

[[ports]]
name = "vm3"
devargs = "net_af_packet2,iface=vm3"
kind = "instance"
iface_id = "port-inst3"

[[ports]]
name = "uplink"
devargs = "net_af_packet3,iface=uplink"
kind = "provider"

[[ports]]
name = "vm4"
devargs = "net_af_packet4,iface=vm4"
kind = "instance"
iface_id = "port-inst4"

[[ports]]
name = "overlay"
devargs = "net_af_packet5,iface=overlay"
kind = "overlay"

[[ports]]
name = "vm5"
devargs = "net_af_packet6,iface=vm5"
kind = "instance"
iface_id = "port-inst5"

[bridge_mappings]
provider = "uplink"

[control]
socket = "$WORK/api.sock"
EOF
cat >"$WORK/state.yaml" <<'EOF'
hosts:
  - {host: compute1, vtep_ip: 10.0.0.11, dvr_mac: "fa:16:3f:00:00:11"}
  - {host: compute2, vtep_ip: 10.0.0.12, dvr_mac: "fa:16:3f:00:00:12"}
networks:
  - {id: net-selfservice2, name: selfservice2, "provider:network_type": vxlan, "provider:segmentation_id": 101}
  - {id: net-selfservice1, name: selfservice1, "provider:network_type": vxlan, "provider:segmentation_id": 102}
  - {id: net-provider1, name: provider1, "provider:network_type": vlan, "provider:physical_network": provider, "provider:segmentation_id": 101}
  - {id: net-flat1, name: flat1, "provider:network_type": flat, "provider:physical_network": provider}
subnets:
  - {id: subnet-provider1, network_id: net-provider1, cidr: 203.0.113.0/24, ip_version: 4, gateway_ip: 203.0.113.1, enable_dhcp: false}
  - {id: subnet-flat1, network_id: net-flat1, cidr: 198.51.100.0/24, ip_version: 4, gateway_ip: 198.51.100.1, enable_dhcp: false}
  - {id: subnet-selfservice2, network_id: net-selfservice2, cidr: 198.18.0.0/24, ip_version: 4, gateway_ip: 198.18.0.1, enable_dhcp: false}
  - {id: subnet-selfservice1, network_id: net-selfservice1, cidr: 198.19.0.0/24, ip_version: 4, gateway_ip: 198.19.0.1, enable_dhcp: false}
routers:
  - {id: router1, name: router1, distributed: true}
ports:
  - {id: port-inst5, network_id: net-selfservice1, mac_address: "fa:16:3e:00:01:15", fixed_ips: [{subnet_id: subnet-selfservice1, ip_address: 198.19.0.15}], "binding:host_id": compute1, security_groups: [sg-open]}
  - {id: router1-ss1, network_id: net-selfservice1, mac_address: "fa:16:3e:aa:00:01", fixed_ips: [{subnet_id: subnet-selfservice1, ip_address: 198.19.0.1}], device_owner: "network:router_interface_distributed", device_id: router1}
  - {id: router1-ss2, network_id: net-selfservice2, mac_address: "fa:16:3e:aa:00:02", fixed_ips: [{subnet_id: subnet-selfservice2, ip_address: 198.18.0.1}], device_owner: "network:router_interface_distributed", device_id: router1}
  - {id: port-inst4, network_id: net-selfservice2, mac_address: "fa:16:3e:00:01:14", fixed_ips: [{subnet_id: subnet-selfservice2, ip_address: 198.18.0.11}], "binding:host_id": compute1, security_groups: [sg-open]}
  - {id: port-remote, network_id: net-selfservice2, mac_address: "fa:16:3e:00:02:22", fixed_ips: [{subnet_id: subnet-selfservice2, ip_address: 198.18.0.22}], "binding:host_id": compute2, security_groups: [sg-open]}
  - id: port-inst1
    network_id: net-provider1
    mac_address: "fa:16:3e:00:01:11"
    fixed_ips: [{subnet_id: subnet-provider1, ip_address: 203.0.113.11}]
    binding:host_id: compute1
    security_groups: [sg-open]
  - id: port-inst2
    network_id: net-provider1
    mac_address: "fa:16:3e:00:01:12"
    fixed_ips: [{subnet_id: subnet-provider1, ip_address: 203.0.113.12}]
    binding:host_id: compute1
    security_groups: [sg-open]
  - id: port-inst3
    network_id: net-flat1
    mac_address: "fa:16:3e:00:01:13"
    fixed_ips: [{subnet_id: subnet-flat1, ip_address: 198.51.100.13}]
    binding:host_id: compute1
    security_groups: [sg-open]
# Security groups are enforced on every instance port with port security on; this demo is
# about switching and routing, so its one group lets everything through (stateful).
security_groups:
  - {id: sg-open, name: open}
security_group_rules:
  - {id: sg-open-in4, security_group_id: sg-open, direction: ingress, ethertype: IPv4}
  - {id: sg-open-in6, security_group_id: sg-open, direction: ingress, ethertype: IPv6}
  - {id: sg-open-out4, security_group_id: sg-open, direction: egress, ethertype: IPv4}
  - {id: sg-open-out6, security_group_id: sg-open, direction: egress, ethertype: IPv6}
EOF

# --- vswitchd --------------------------------------------------------------------------------
STEP="start vswitchd"
heading "2. Start vswitchd in $SW (networks provider1 = VLAN 101, flat1 = flat, on physnet provider)"
# Background processes start as `ip netns exec NS CMD &` (not through a shell function): ip execs
# CMD in place, so $! is CMD's own pid and signals reach it.
ip netns exec "$SW" "$VSWITCHD" --config "$WORK/host.toml" --state "$WORK/state.yaml" \
  >"$WORK/vswitchd.out" 2>"$WORK/vswitchd.err" &
VS_PID=$!
for _ in $(seq 300); do
  grep -q 'vswitchd: running' "$WORK/vswitchd.out" && break
  kill -0 "$VS_PID" 2>/dev/null || { cat "$WORK/vswitchd.err" >&2; die "vswitchd exited"; }
  sleep 0.1
done
grep -q 'vswitchd: running' "$WORK/vswitchd.out" || die "vswitchd did not come up in 30 s"
info "$(grep 'vswitchd: running' "$WORK/vswitchd.out")"

# counters: SIGUSR1, then print what vswitchd wrote (the JSON line goes to $WORK/stats.json).
counters() {
  local before n
  before=$(wc -l <"$WORK/vswitchd.out")
  n=$(grep -c '^stats-json: ' "$WORK/vswitchd.out" || true)
  kill -USR1 "$VS_PID"
  for _ in $(seq 100); do
    [ "$(grep -c '^stats-json: ' "$WORK/vswitchd.out" || true)" -gt "$n" ] && break
    sleep 0.05
  done
  grep '^stats-json: ' "$WORK/vswitchd.out" | tail -n 1 | sed 's/^stats-json: //' >"$WORK/stats.json"
  [ -s "$WORK/stats.json" ] || die "no counters from vswitchd"
  if [ "${1:-}" = print ]; then
    tail -n +"$((before + 1))" "$WORK/vswitchd.out" | grep -v '^stats-json: ' | sed 's/^/    /'
  fi
}
# drop NAME: a drop counter from the last counters call.
drop() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["drops"][sys.argv[2]])' "$WORK/stats.json" "$1"; }

# --- same network ----------------------------------------------------------------------------
STEP="ping inst1 -> inst2"
heading "3. Same network (provider1): inst1 pings inst2"
nsx "$I1" ping -n -c 3 -i 0.2 -W 1 203.0.113.12 | sed 's/^/    /'

STEP="TCP transfer inst2 -> inst1"
heading "4. Same network: TCP transfer of 64 MiB inst2 -> inst1, SHA-256 checked"
cat >"$WORK/server.py" <<'EOF'
import hashlib, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); s.settimeout(30)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(30)
h, n, t0 = hashlib.sha256(), 0, time.monotonic()
while True:
    b = c.recv(1 << 18)
    if not b:
        break
    h.update(b); n += len(b)
dt = time.monotonic() - t0
print(n, h.hexdigest(), "%.3f" % dt, flush=True)
EOF
cat >"$WORK/client.py" <<'EOF'
import hashlib, os, socket, sys
n = int(sys.argv[2]); data = os.urandom(n)
c = socket.create_connection((sys.argv[1], 5001), timeout=30)
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(n, hashlib.sha256(data).hexdigest(), flush=True)
EOF
# transfer SERVER_NS SERVER_IP CLIENT_NS BYTES: a TCP transfer; sets sent_n sent_h got_n got_h secs.
# Background processes start as `ip netns exec` directly (not via nsx) so $! is the server.
transfer() {
  ip netns exec "$1" "$PY" "$WORK/server.py" "$2" >"$WORK/server.out" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do grep -q listening "$WORK/server.out" && break; sleep 0.05; done
  client_out=$(nsx "$3" "$PY" "$WORK/client.py" "$2" "$4")
  wait "$SERVER_PID"; SERVER_PID=""
  read -r sent_n sent_h <<<"$client_out"
  read -r got_n got_h secs < <(tail -n 1 "$WORK/server.out")
}
transfer "$I1" 203.0.113.11 "$I2" $((64 << 20))
info "sent     $sent_n bytes sha256 $sent_h"
info "received $got_n bytes sha256 $got_h"
[ "$sent_n" = $((64 << 20)) ] && [ "$sent_n" = "$got_n" ] && [ "$sent_h" = "$got_h" ] || die "data differs"
info "$(awk -v n="$got_n" -v s="$secs" 'BEGIN { printf "%.1f MB/s = %.0f Mbit/s (%.2f s)", n/s/1e6, n*8/s/1e6, s }')"

# --- isolation -------------------------------------------------------------------------------
STEP="isolation"
heading "5. Isolation: inst1 (provider1) cannot reach inst3 (flat1), even with an on-link route"
ip -n "$I1" route add 198.51.100.0/24 dev eth0
if nsx "$I1" ping -n -c 3 -i 0.2 -W 1 198.51.100.13 >"$WORK/iso.txt" 2>&1; then
  cat "$WORK/iso.txt"; die "inst1 reached inst3 across networks"
fi
info "$(grep -E 'transmitted' "$WORK/iso.txt")  (expected: no reply)"

# --- provider VLAN host ----------------------------------------------------------------------
STEP="provider VLAN host -> inst1"
heading "6. Provider network: the VLAN 101 host 203.0.113.50 (scapy) pings inst1"
ip netns exec "$PROV" tcpdump -i eth0 -n -U --immediate-mode -Z root -w "$WORK/uplink.pcap" 2>"$WORK/tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/tcpdump.err" && break; sleep 0.05; done
nsx "$PROV" "$PY" "$VLAN_HOST" --iface eth0 --vid 101 --ip 203.0.113.50 --mac 02:00:00:00:01:50 \
  ping 203.0.113.11 --count 3 2>/dev/null | sed 's/^/    /'
STEP="provider flat host -> inst3"
info "and the untagged (flat1) kernel host 198.51.100.50 pings inst3:"
nsx "$PROV" ping -n -c 2 -i 0.2 -W 1 198.51.100.13 | grep -E 'bytes from|transmitted' | sed 's/^/    /'
sleep 0.3
kill -TERM "$TCPDUMP_PID"; wait "$TCPDUMP_PID" || true; TCPDUMP_PID=""
STEP="VLAN tag on the uplink"
info "tcpdump -e on the provider host's eth0:"
tcpdump -r "$WORK/uplink.pcap" -e -n -t 2>/dev/null >"$WORK/uplink.txt"
grep -E '203\.0\.113\.11 > |> 203\.0\.113\.11:' "$WORK/uplink.txt" | head -n 2 | cut -c1-190 | sed 's/^/    /'
grep -E '198\.51\.100\.13 > |> 198\.51\.100\.13:' "$WORK/uplink.txt" | grep ICMP | head -n 2 | cut -c1-190 | sed 's/^/    /'
grep -E '203\.0\.113\.11 > 203\.0\.113\.50: ICMP echo reply' "$WORK/uplink.txt" | grep -q 'vlan 101,' \
  || die "no VLAN 101 echo reply from inst1 on the uplink"
if grep -E '198\.51\.100\.13 > |> 198\.51\.100\.13:' "$WORK/uplink.txt" | grep -q '802.1Q'; then
  die "flat traffic was tagged"
fi

# --- port security ---------------------------------------------------------------------------
STEP="spoofing"
heading "7. Port security: inst1 sends 10 frames with a forged MAC and 10 with a forged IPv4 source"
counters
mac0=$(drop port_security.spoofed_mac) ip0=$(drop port_security.spoofed_ipv4)
ip netns exec "$I2" tcpdump -i eth0 -n -U --immediate-mode -Z root -w "$WORK/inst2.pcap" 2>"$WORK/tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/tcpdump.err" && break; sleep 0.05; done
nsx "$I1" "$PY" - 2>/dev/null <<'EOF'
from scapy.config import conf
conf.verb = 0
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.sendrecv import sendp
dst = dict(dst="fa:16:3e:00:01:12")
sendp([Ether(src="fa:16:3e:00:06:66", **dst) / IP(src="203.0.113.11", dst="203.0.113.12") / ICMP(seq=i) for i in range(10)], iface="eth0")
sendp([Ether(src="fa:16:3e:00:01:11", **dst) / IP(src="203.0.113.99", dst="203.0.113.12") / ICMP(seq=i) for i in range(10)], iface="eth0")
EOF
sleep 0.3
kill -TERM "$TCPDUMP_PID"; wait "$TCPDUMP_PID" || true; TCPDUMP_PID=""
counters
dmac=$(( $(drop port_security.spoofed_mac) - mac0 )) dip=$(( $(drop port_security.spoofed_ipv4) - ip0 ))
seen=$(tcpdump -r "$WORK/inst2.pcap" -e -n 2>/dev/null | grep -cE 'fa:16:3e:00:06:66|203\.0\.113\.99' || true)
info "forged MAC  fa:16:3e:00:06:66: port_security.spoofed_mac  +$dmac"
info "forged IPv4 203.0.113.99:      port_security.spoofed_ipv4 +$dip"
info "spoofed frames that reached inst2: $seen"
[ "$dmac" -eq 10 ] && [ "$dip" -eq 10 ] && [ "$seen" -eq 0 ] || die "spoofed frames not dropped as expected"

# --- VXLAN -----------------------------------------------------------------------------------
STEP="VXLAN to a Linux kernel VTEP"
heading "8. VXLAN: inst4 (selfservice2, VNI 101) reaches 198.18.0.22 behind a Linux kernel VTEP"
ip netns exec "$KV" tcpdump -i eth0 -n -U --immediate-mode -Z root -w "$WORK/underlay.pcap" udp port 4789 2>"$WORK/tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/tcpdump.err" && break; sleep 0.05; done
nsx "$I4" ping -n -c 3 -i 0.2 -W 1 198.18.0.22 | grep -E 'bytes from|transmitted' | sed 's/^/    /'
transfer "$RI" 198.18.0.22 "$I4" $((16 << 20))
[ "$sent_n" = "$got_n" ] && [ "$sent_h" = "$got_h" ] || die "data differs over VXLAN"
info "TCP: $got_n bytes over VXLAN, SHA-256 equal, $(awk -v n="$got_n" -v s="$secs" 'BEGIN { printf "%.0f Mbit/s", n*8/s/1e6 }')"
sleep 0.3
kill -TERM "$TCPDUMP_PID"; wait "$TCPDUMP_PID" || true; TCPDUMP_PID=""
info "tcpdump on the kernel VTEP's underlay (one frame each way):"
tcpdump -r "$WORK/underlay.pcap" -n -t 2>/dev/null >"$WORK/underlay.txt"
grep -m1 -E '10\.0\.0\.11\.[0-9]+ > 10\.0\.0\.12\.4789: VXLAN, flags \[I\] \(0x08\), vni 101' "$WORK/underlay.txt" | cut -c1-150 | sed 's/^/    /' \
  || die "no VXLAN VNI 101 frame from vswitchd on the underlay"
grep -m1 -E '10\.0\.0\.12\.[0-9]+ > 10\.0\.0\.11\.4789: VXLAN' "$WORK/underlay.txt" | cut -c1-150 | sed 's/^/    /' \
  || die "no VXLAN frame from the kernel VTEP"

# --- distributed routing ---------------------------------------------------------------------
STEP="DVR: gateway"
heading "9. Distributed routing: router1 on this host joins selfservice1 and selfservice2"
info "inst5 (198.19.0.15) pings its gateway 198.19.0.1 (answered by vswitchd's router):"
nsx "$I5" ping -n -c 2 -i 0.2 -W 1 198.19.0.1 | grep -E 'bytes from|transmitted' | sed 's/^/    /'
STEP="DVR: routed ping and TCP"
info "inst5 -> inst4 (198.18.0.11, the other subnet, same host): routed here"
nsx "$I5" ping -n -c 3 -i 0.2 -W 1 198.18.0.11 | grep -E 'bytes from|transmitted' | sed 's/^/    /'
transfer "$I4" 198.18.0.11 "$I5" $((16 << 20))
[ "$sent_n" = "$got_n" ] && [ "$sent_h" = "$got_h" ] || die "data differs across the router"
info "TCP: $got_n bytes routed, SHA-256 equal, $(awk -v n="$got_n" -v s="$secs" 'BEGIN { printf "%.0f Mbit/s", n*8/s/1e6 }')"
STEP="DVR: tracepath"
info "tracepath -n inst5 -> inst4: one router hop"
nsx "$I5" tracepath -n -m 5 198.18.0.11 >"$WORK/tracepath.txt" 2>&1 || true
sed 's/^/    /' "$WORK/tracepath.txt"
grep -qE '^ 1: +198\.19\.0\.1 ' "$WORK/tracepath.txt" || die "tracepath did not see the gateway as hop 1"
grep -qE '^ 2: +198\.18\.0\.11 ' "$WORK/tracepath.txt" || die "tracepath did not reach inst4 at hop 2"
STEP="DVR: TTL exceeded"
info "ping -t 1: the router answers time exceeded"
nsx "$I5" ping -n -c 1 -t 1 -W 1 198.18.0.11 >"$WORK/ttl.txt" 2>&1 || true
grep -E 'Time to live exceeded' "$WORK/ttl.txt" | sed 's/^/    /'
grep -q 'From 198.19.0.1 .*Time to live exceeded' "$WORK/ttl.txt" || die "no time exceeded from 198.19.0.1"
STEP="DVR: DVR MAC on the wire"
info "inst5 -> 198.18.0.22 (behind compute2's kernel VTEP): routed on this host, sent with its DVR MAC"
ip netns exec "$RI" tcpdump -i eth0 -e -n -U --immediate-mode -Z root -w "$WORK/remote.pcap" udp port 7777 2>"$WORK/tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/tcpdump.err" && break; sleep 0.05; done
nsx "$I5" "$PY" -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b"routed", ("198.18.0.22", 7777)) for _ in range(3)]'
sleep 0.3
kill -TERM "$TCPDUMP_PID"; wait "$TCPDUMP_PID" || true; TCPDUMP_PID=""
tcpdump -r "$WORK/remote.pcap" -e -n -v -t 2>/dev/null | head -n 2 | cut -c1-170 | sed 's/^/    /'
tcpdump -r "$WORK/remote.pcap" -e -n -v -t 2>/dev/null | grep -q '^fa:16:3f:00:00:11 > fa:16:3e:00:02:22.*ttl 63' \
  || die "the routed frame did not arrive with this host's DVR MAC and TTL 63"

# --- security groups -------------------------------------------------------------------------
# reload: vswitchd re-reads $WORK/state.yaml on SIGHUP and says which generation went live.
reload() {
  local n
  n=$(grep -c 'state reloaded' "$WORK/vswitchd.out" || true)
  kill -HUP "$VS_PID"
  for _ in $(seq 100); do
    [ "$(grep -c 'state reloaded' "$WORK/vswitchd.out" || true)" -gt "$n" ] && break
    grep -q 'reload rejected' "$WORK/vswitchd.out" && die "$(grep -A5 'reload rejected' "$WORK/vswitchd.out")"
    sleep 0.05
  done
  info "$(grep 'state reloaded' "$WORK/vswitchd.out" | tail -n 1)"
}
STEP="security groups"
heading "10. Security groups: inst2 moves to group web (egress any; ingress TCP 5001 from 203.0.113.0/24), SIGHUP"
cp "$WORK/state.yaml" "$WORK/state-open.yaml"
"$PY" - "$WORK/state-open.yaml" "$WORK/state.yaml" <<'EOF'
import sys
text = open(sys.argv[1]).read()
head, sep, tail = text.partition("  - id: port-inst2\n")
block, rest = tail.split("security_groups: [sg-open]", 1)
text = head + sep + block + "security_groups: [sg-web]" + rest
text = text.replace("security_groups:\n  - {id: sg-open, name: open}\n",
                    "security_groups:\n  - {id: sg-open, name: open}\n  - {id: sg-web, name: web}\n")
text += """  - {id: web-out4, security_group_id: sg-web, direction: egress, ethertype: IPv4}
  - {id: web-out6, security_group_id: sg-web, direction: egress, ethertype: IPv6}
  - {id: web-5001, security_group_id: sg-web, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 5001, port_range_max: 5001, remote_ip_prefix: 203.0.113.0/24}
"""
open(sys.argv[2], "w").write(text)
EOF
reload
counters; denied0=$(drop firewall.ingress_denied)
info "inst1 pings inst2: no rule allows ICMP into inst2"
if nsx "$I1" ping -n -c 3 -i 0.2 -W 1 203.0.113.12 >"$WORK/sg-ping.txt" 2>&1; then
  cat "$WORK/sg-ping.txt"; die "inst2's group let ICMP in"
fi
info "$(grep -E 'transmitted' "$WORK/sg-ping.txt")  (expected: no reply)"
counters; denied1=$(drop firewall.ingress_denied)
info "firewall.ingress_denied +$((denied1 - denied0))"
[ $((denied1 - denied0)) -ge 3 ] || die "the refused echo requests were not counted"
info "inst1 -> inst2 TCP 5001 (allowed by rule web-5001), 16 MiB, SHA-256 checked"
transfer "$I2" 203.0.113.12 "$I1" $((16 << 20))
[ "$sent_n" = "$got_n" ] && [ "$sent_h" = "$got_h" ] || die "data differs through the security group"
info "TCP: $got_n bytes, SHA-256 equal; the replies passed as part of the tracked connection"
info "inst2 pings inst1: its own egress is open and the echo replies are tracked"
nsx "$I2" ping -n -c 2 -i 0.2 -W 1 203.0.113.11 | grep -E 'transmitted' | sed 's/^/    /'
info "back to the open group (SIGHUP); inst1 pings inst2 again"
cp "$WORK/state-open.yaml" "$WORK/state.yaml"
reload
nsx "$I1" ping -n -c 2 -i 0.2 -W 1 203.0.113.12 | grep -E 'transmitted' | sed 's/^/    /'

# --- the control plane -----------------------------------------------------------------------
ctl() { "$VSWITCHCTL" --socket "$WORK/api.sock" "$@"; }
STEP="vswitchctl"
heading "11. The control plane: vswitchctl over the REST API (unix socket $WORK/api.sock)"
ctl status | sed 's/^/    /'
info "vswitchctl show ports:"
ctl show ports | cut -c1-150 | sed 's/^/    /'
info "vswitchctl trace: inst5 -> inst4 TCP 5001, through every stage, nothing sent:"
ctl trace --in-port vm5 --ip-src 198.19.0.15 --ip-dst 198.18.0.11 --proto tcp --dport 5001 >"$WORK/trace.txt"
sed 's/^/    /' "$WORK/trace.txt"
grep -q '^verdict: output to vm4' "$WORK/trace.txt" || die "trace: expected the verdict output to vm4"
info "a new port through the API (MAC and fixed IP filled in as Neutron does), then deleted:"
ctl create ports '{"id": "port-api", "network_id": "net-selfservice1", "binding:host_id": "compute2"}' >"$WORK/created.json" 2>/dev/null
grep -E '"(mac_address|ip_address)"' "$WORK/created.json" | sed 's/^ */    /'
ctl delete ports port-api 2>/dev/null | sed 's/^/    /'
info "a refused change: every problem with its path, nothing changed (exit 1):"
if ctl create ports '{"network_id": "no-such-net", "mac_address": "fa:16:3e:00:01:15"}' 2>"$WORK/refused.txt"; then
  die "an invalid port was accepted"
fi
sed 's/^/    /' "$WORK/refused.txt"
grep -q 'port.network_id' "$WORK/refused.txt" || die "the refusal did not name port.network_id"
info "vswitchctl capture vm1 while inst1 pings inst2 (tshark reads the pcap):"
ctl capture vm1 --count 4 -w "$WORK/vm1.pcap" --timeout 10 >"$WORK/capture.txt" &
CAP_PID=$!
sleep 0.3
nsx "$I1" ping -n -c 3 -i 0.2 -W 1 203.0.113.12 >/dev/null 2>&1 || true
wait "$CAP_PID" || die "capture failed"
sed 's/^/    /' "$WORK/capture.txt"
tshark -n -r "$WORK/vm1.pcap" 2>/dev/null | head -n 4 | cut -c1-120 | sed 's/^/    /'
[ "$(tshark -n -r "$WORK/vm1.pcap" 2>/dev/null | grep -c ICMP)" -ge 2 ] || die "no ICMP in the capture"
info "Prometheus metrics (GET /metrics), a few lines:"
curl -s --unix-socket "$WORK/api.sock" http://vswitchd/metrics >"$WORK/metrics.txt"
grep -E '^vswitch_(port_rx_packets_total\{port="vm1"|table_generation|apply_latency_seconds_count|core_busy_ratio)' "$WORK/metrics.txt" | sed 's/^/    /'
grep -q '^vswitch_table_generation' "$WORK/metrics.txt" || die "no metrics"

# --- counters and shutdown -------------------------------------------------------------------
STEP="counters"
heading "12. vswitchd counters (kill -USR1)"
counters print

STEP="shutdown"
heading "13. Stop vswitchd (SIGTERM): exit 0 and every mbuf returned"
kill -TERM "$VS_PID"
rc=0; wait "$VS_PID" || rc=$?
VS_PID=""
info "$(grep '^shutdown: ' "$WORK/vswitchd.out" || echo 'no shutdown line')"
info "exit status $rc"
[ "$rc" -eq 0 ] || die "vswitchd exited with $rc"
grep -q '^shutdown: mbufs in use after closing ports: 0 of ' "$WORK/vswitchd.out" || die "mbufs leaked"
STEP="teardown"
