#!/usr/bin/env bash
# The test command: installs/starts what the tests need, then runs every test (unit, integration,
# golden SQL tests of the sample job). Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
export WEIR_TEST_PYTHON="$PWD/.venv/bin/python"
cargo test --locked "$@"
cargo run --locked --quiet -- test jobs/ecommerce.toml
