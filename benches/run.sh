#!/usr/bin/env bash
# Benchmark: builds release binaries, installs wrk if missing, runs benches/bench.py.
#   bash benches/run.sh             full run, ~8 minutes after the build (prints its total time)
#   bash benches/run.sh --litellm   plus the LiteLLM peer (pip-installs it once into .cache/)
#   bash benches/run.sh --smoke     ~15 s: every target answers 2xx with zero errors, else exit 1
# Knobs: BENCH_TARGET_DIR (where release binaries are built and read; default target),
# BENCH_NO_BUILD=1 (use the binaries already in BENCH_TARGET_DIR), BENCH_LITELLM=1,
# BENCH_SMOKE=1, BENCH_DURATION=5s, BENCH_CONNECTIONS=32, BENCH_SSE_CHUNKS=200,
# BENCH_SSE_INTERVAL_MS=10, BENCH_SSE_SLOW=50x200 (0 skips it). Not part of CI; CI runs --smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_TARGET_DIR="${BENCH_TARGET_DIR:-target}"
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  bash scripts/setup.sh
  CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build --release --locked --bin twinroute --example floor
fi
# 5,000 concurrent streams need ~10,000 descriptors in the proxy and 5,000 each in wrk and the mock.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
  echo "bench: open-files limit $(ulimit -n) is too low for 5,000 streams (need ~12000)" >&2
fi
exec python3 benches/bench.py "$@"
