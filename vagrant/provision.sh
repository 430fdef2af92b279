#!/usr/bin/env bash
# The one place that installs what the appliance, its tests, its demo and its benchmarks need.
# Idempotent: safe to run on every `make demo` / `make test`; it only installs what is missing.
# Used by the README's two commands, by CI (.ci/run -> make test) and by the Vagrant lab VMs.
set -euo pipefail

log() { printf 'provision: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "provision: must run as root (apt, hugepages, network namespaces)" >&2
  exit 1
fi

# Debian/Ubuntu packages. DPDK 22.11 LTS comes from the distribution (Debian 12, Ubuntu 23.04+;
# Ubuntu 22.04 ships 21.11, which is refused by ffi/build.rs with a clear message).
PKGS=(dpdk dpdk-dev libdpdk-dev pkg-config clang libclang-dev make gcc
      iproute2 iputils-ping iputils-tracepath traceroute tcpdump tshark ethtool python3 python3-scapy
      python3-prometheus-client curl procps psmisc)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer for it.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "system packages present"
fi

ver=$(pkg-config --modversion libdpdk 2>/dev/null || echo none)
log "DPDK (pkg-config libdpdk): $ver"

# Rust toolchain: present on the dev/CI image; install through rustup only where it is absent.
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  log "installing the Rust toolchain (rustup, stable)"
  apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
fi

# Hugepages: reserve 2 MiB pages and mount hugetlbfs. Where the kernel cannot give them
# (containers, small VMs), everything still runs with EAL's --no-huge (IOVA as VA), which the
# example configs and tests use; say so rather than fail.
want=${VSWITCH_HUGEPAGES:-512}
have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
if [ "$have" -lt "$want" ]; then
  echo "$want" > /proc/sys/vm/nr_hugepages 2>/dev/null || true
  have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
fi
mkdir -p /dev/hugepages
mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true
if [ "$have" -lt "$want" ] || ! mountpoint -q /dev/hugepages; then
  log "hugepages: only $have of $want reserved; use EAL '--no-huge -m 512' (the examples do)"
else
  log "hugepages: $have x 2 MiB reserved, hugetlbfs on /dev/hugepages"
fi
log "done"
