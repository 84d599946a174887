#!/usr/bin/env bash
# Benchmark: builds release binaries, installs wrk if missing, runs benches/bench.py.
# Takes about 2 minutes after the build; not part of CI. BENCH_DURATION=8s BENCH_CONNECTIONS=32.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v wrk >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; $SUDO apt-get install -y -qq wrk curl >/dev/null; }
cargo build --release --locked --bin twinroute --example floor
python3 benches/bench.py
