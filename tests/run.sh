#!/usr/bin/env bash
# The test command: installs/starts what the tests need (tests/setup.sh), then runs every test
# (unit, integration, golden SQL tests of the sample job). Usage: tests/run.sh [cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold build is most of a fresh machine's time: it runs while setup installs the stand-ins (mostly
# downloads). Only cargo's own arguments (those before `--`) apply to it.
# The build has its own process group, stopped with the script (Ctrl-C, a failed setup).
cargo_args=()
for a in "$@"; do [ "$a" = "--" ] && break; cargo_args+=("$a"); done
if [[ " ${cargo_args[*]-} " == *" --doc "* ]]; then
  tests/setup.sh
else
  setsid cargo test --locked --no-run ${cargo_args[@]+"${cargo_args[@]}"} &
  build=$!
  trap 'kill -- "-$build" 2>/dev/null || true' EXIT INT TERM
  tests/setup.sh
  wait "$build"
  trap - EXIT INT TERM
fi
export WEIR_TEST_PYTHON="$PWD/.venv/bin/python"
export WEIR_TEST_KINESIS="http://127.0.0.1:45670"
export WEIR_TEST_KINESIS_FANOUT="http://127.0.0.1:45674"
export WEIR_TEST_S3="http://127.0.0.1:45671"
export WEIR_TEST_GLUE="http://127.0.0.1:45671"
export WEIR_TEST_DYNAMODB="http://127.0.0.1:45671"
export WEIR_TEST_BIGQUERY="http://127.0.0.1:45672"
export WEIR_TEST_GCS_ROOT="/tmp/weir-test-gcs"
export WEIR_TEST_POSTGRES="postgres://postgres@127.0.0.1:5432/test"
cargo test --locked "$@"
# The golden SQL tests of the sample job, with the binary the integration tests just built
# (`cargo run` would rebuild the dependencies without the dev-dependencies' features).
"${CARGO_TARGET_DIR:-target}/debug/weir" test jobs/ecommerce.toml
