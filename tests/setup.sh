#!/usr/bin/env bash
# Installs and starts, idempotently and on loopback only, everything the tests need that the
# machine does not already run: a Python venv with the independent readers (DuckDB).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv="$root/.venv"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
if ! cmp -s tests/requirements.txt "$stamp"; then
  echo "setup: installing tests/requirements.txt into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$stamp"
fi
"$venv/bin/python" -c 'import duckdb' || { echo "setup: the test venv is broken; delete $venv and run again" >&2; exit 1; }
