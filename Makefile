# The two commands a newcomer runs, as root, on a fresh Debian 12 / Ubuntu 23.04+ machine:
#   make demo   - install what is missing, build, run vswitchd on a namespace topology, show it work
#   make test   - install what is missing, then the whole suite (lint, unit, property, DPDK, system)
# and for performance work:
#   make bench  - Mpps per core against dpdk-testpmd on the same traffic (perf/README.md)
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:/usr/local/cargo/bin:$(PATH)
CARGO ?= cargo
VSWITCHD_RELEASE := target/release/vswitchd

.PHONY: all provision build build-release demo test lint unit bench clean

all: build

provision:
	bash vagrant/provision.sh

build: provision
	$(CARGO) build --workspace

build-release: provision
	$(CARGO) build --release -p vswitch

demo: build-release
	VSWITCHD=$(VSWITCHD_RELEASE) bash scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test binary of the workspace: unit, property, DPDK (net_pcap) and system tests
# (namespaces, one vswitchd each). One test at a time, so two DPDK processes never fight over
# the same worker core of a 2-core machine; the whole suite stays within a few minutes.
# The last line sums every test binary's result ("tests: N passed, M failed").
test: provision lint
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace -- --test-threads=1 2>&1 | tee target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' target/test.log

bench: build-release
	python3 perf/bench.py --vswitchd $(VSWITCHD_RELEASE)
	$(CARGO) run --release -q -p vswitch --example lpm_bench
	$(CARGO) run --release -q -p vswitch --example conntrack_bench
	$(CARGO) run --release -q -p vswitch --example ct_established_bench
	# The control plane: apply latency at 10,000 ports, and l2's rate while 1,000 API changes/s
	# are applied, as a ratio to its rate without (issue #7).
	$(CARGO) run --release -q -p vswitch --example apply_bench -- 10000 200 --output perf/results/apply.json
	python3 perf/bench.py --vswitchd $(VSWITCHD_RELEASE) --scenario l2 --only ours --no-verify --changes-per-s 1000 --output perf/results/under-changes.json

clean:
	$(CARGO) clean
