#!/usr/bin/env bash
# Benchmark: builds release binaries, installs wrk if missing, runs benches/bench.py.
# About 8 minutes after the build; not part of CI (CI runs the smoke: BENCH_SMOKE=1).
# Knobs: BENCH_LITELLM=1 (add the LiteLLM peer), BENCH_DURATION=6s, BENCH_CONNECTIONS=32,
# BENCH_TARGET_DIR (where release binaries are built; default target).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-target}" cargo build --release --locked --bin twinroute --example floor
# 5,000 concurrent streams need ~15,000 descriptors across wrk, twinroute and the mock.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
python3 benches/bench.py "$@"
