#!/usr/bin/env bash
# Set up kernsight on a Debian/Ubuntu host, as root: system packages, a virtual environment
# in .venv, and the BPF programs compiled for the running kernel. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (eBPF needs it): sudo bash scripts/setup.sh" >&2
  exit 1
fi

# clang/bpftool/libbpf-dev build the BPF programs; linux-libc-dev names syscalls;
# bpftrace is the peer the benchmarks compare against; iproute2/tcpdump/iperf3/ping for network
# tests; git for the benign-workload test.
packages=(clang llvm libbpf-dev bpftool linux-libc-dev bpftrace iproute2 tcpdump iperf3 util-linux
          iputils-ping git)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "setup: kernsight needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { apt-get install -y -qq python3-venv >/dev/null && "$PY" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# tracefs is needed for classic tracepoints; kernsight mounts it itself, this just says so early.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || echo "setup: note: could not mount tracefs" >&2
fi
.venv/bin/kernsight build >/dev/null

# The independent MCP client the tests run (the official TypeScript SDK, pinned by its lock file).
if ! command -v npm >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
npm ci --prefix tests/ts_client --no-audit --no-fund --loglevel=error >/dev/null
echo "setup: ready (.venv/bin/kernsight doctor checks this host)"
