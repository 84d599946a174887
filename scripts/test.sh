#!/usr/bin/env bash
# One command: set up the machine and run every test (unit + black-box against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --locked --all-targets
