#!/usr/bin/env bash
# Freshness p50/p99 and sustained events/s through kinesalite at a steady produce rate.
#   benches/freshness.sh [RATE=20000] [SECONDS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo build --release --quiet
exec .venv/bin/python benches/freshness.py "${1:-20000}" "${2:-30}"
