#!/usr/bin/env bash
# One command: set up the machine and run every test (unit + black-box against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Unit tests, then the black-box suites (examples and benches are built by clippy in CI).
cargo test --locked --lib --bins --tests
