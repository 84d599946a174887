#!/usr/bin/env bash
# One command: set up the machine, build twinroute, run the demo on built-in mock providers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --locked --quiet -- demo
