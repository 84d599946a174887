#!/usr/bin/env bash
# Fuzz the code that reads hostile input with cargo-fuzz (libFuzzer), then minimise each corpus
# so what is committed stays small. `cargo test` replays fuzz/corpus/* (tests/fuzz_corpus.rs).
#
#   bash scripts/fuzz.sh [seconds per target, default 120] [target ...]
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
# No sanitizer (`-s none`): twinroute has no unsafe code, and without ASan the instrumented build
# of Pingora is a few minutes rather than many. A crash leaves its input in fuzz/artifacts/<target>/;
# add it to fuzz/corpus/<target>/ once fixed so the replay test keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
secs="${1:-120}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(body_rewrite header_scan config_load sse_scan job_decode)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -s none "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=8192 \
    -print_final_stats=1 2>&1 | grep -E "^#[0-9]+ +(DONE|INITED)|stat::|SUMMARY|panicked|Done" || true
  cargo fuzz cmin -s none "$t" "fuzz/corpus/$t" 2>&1 | grep -E "MERGE-OUTER: [0-9]+ new files" || true
  echo "== $t corpus: $(ls "fuzz/corpus/$t" | wc -l) inputs"
done
if ls fuzz/artifacts/*/* >/dev/null 2>&1; then
  echo "crashes found:"; ls fuzz/artifacts/*/*
  exit 1
fi
