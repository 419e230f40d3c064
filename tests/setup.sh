#!/usr/bin/env bash
# Installs and starts, idempotently and on loopback only, everything the tests need that the
# machine does not already run:
#   .venv             Python venv: DuckDB (independent reader), boto3 + aws_kinesis_agg
#                     (independent producers), moto (S3/Glue/DynamoDB stand-in), psycopg and
#                     playwright (drives chromium) for weir serve, onnxruntime + scikit-learn +
#                     skl2onnx (the models test's oracle and the pipelines it trains)
#   .stand-ins/       kinesalite (npm) for Kinesis; kinesis-local (npm, kinesis-mock) for enhanced
#                     fan-out (SubscribeToShard)
#   chromium, psql    Debian packages (apt) for the dashboard and PostgreSQL endpoint tests
#   .venv-bigquery    Python 3.13 venv: the local-bigquery emulator (DuckDB 1.5.5 + its extensions)
#   127.0.0.1:45670   kinesalite      127.0.0.1:45671   moto server (S3, Glue, DynamoDB)
#   127.0.0.1:45672   BigQuery emulator (REST; gRPC on 45673)
#   127.0.0.1:45674   kinesis-local (plain HTTP; its TLS port is 45675)
# PostgreSQL (127.0.0.1:5432, database test) is run by the machine, not here.
# Prints the environment the tests use (sourced by tests/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv="$root/.venv"
stand="$root/.stand-ins"
mkdir -p "$stand"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv"
fi
if ! cmp -s tests/requirements.txt "$venv/.requirements"; then
  echo "setup: installing tests/requirements.txt into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt >&2
  cp tests/requirements.txt "$venv/.requirements"
fi
"$venv/bin/python" -c 'import duckdb, boto3, aws_kinesis_agg, moto, deltalake, psycopg, playwright, onnxruntime, skl2onnx, sklearn' \
  || { echo "setup: the test venv is broken; delete $venv and run again" >&2; exit 1; }

# A real browser for the dashboard test, and psql for the PostgreSQL endpoint's: Debian's packages.
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v psql >/dev/null || need_apt+=(postgresql-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q "${need_apt[@]}" >&2 \
    || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q "${need_apt[@]}" >&2; }
fi

if ! cmp -s tests/stand-ins/package.json "$stand/package.json"; then
  command -v npm >/dev/null || { echo "setup: npm is needed for kinesalite (apt-get install nodejs npm)" >&2; exit 1; }
  echo "setup: installing kinesalite and kinesis-local into $stand" >&2
  cp tests/stand-ins/package.json "$stand/package.json"
  (cd "$stand" && npm install --no-audit --no-fund --silent >&2)
fi
cp tests/stand-ins/kinesalite.js tests/stand-ins/kinesis-local.js "$stand/"

open_port() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 300); do open_port "$1" && return 0; sleep 0.1; done
  echo "setup: $2 did not start on 127.0.0.1:$1; see $stand/$2.log" >&2; exit 1
}
if ! open_port 45670; then
  echo "setup: starting kinesalite on 127.0.0.1:45670" >&2
  (cd "$stand" && PORT=45670 setsid nohup node kinesalite.js >"$stand/kinesalite.log" 2>&1 &)
  wait_port 45670 kinesalite
fi
if ! open_port 45674; then
  echo "setup: starting kinesis-local on 127.0.0.1:45674" >&2
  # Its default limit of 50 shards per account is reached after a few test runs: lifted.
  (cd "$stand" && KINESIS_MOCK_PLAIN_PORT=45674 KINESIS_MOCK_TLS_PORT=45675 LOG_LEVEL=WARN SHARD_LIMIT=100000 \
     setsid nohup node kinesis-local.js >"$stand/kinesis-local.log" 2>&1 &)
  wait_port 45674 kinesis-local
fi
if ! open_port 45671; then
  echo "setup: starting moto on 127.0.0.1:45671" >&2
  (setsid nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 45671 >"$stand/moto.log" 2>&1 &)
  wait_port 45671 moto
fi

# The BigQuery emulator needs Python >= 3.13: the machine's pyenv has it.
bqvenv="$root/.venv-bigquery"
if [ ! -x "$bqvenv/bin/python" ]; then
  py313=""
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 "$(command -v python3.13 || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then
      py313=$candidate
      break
    fi
  done
  [ -n "$py313" ] || { echo "setup: Python 3.13 is needed for the BigQuery emulator (pyenv install 3.13)" >&2; exit 1; }
  echo "setup: creating $bqvenv with $py313" >&2
  "$py313" -m venv "$bqvenv"
fi
if ! cmp -s tests/requirements-bigquery.txt "$bqvenv/.requirements"; then
  echo "setup: installing tests/requirements-bigquery.txt into $bqvenv" >&2
  "$bqvenv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements-bigquery.txt >&2
  cp tests/requirements-bigquery.txt "$bqvenv/.requirements"
fi
ext="$HOME/.duckdb/extensions/v1.5.5/linux_amd64"
mkdir -p "$ext"
for f in "$bqvenv"/lib/python3.13/site-packages/duckdb_extension_*/extensions/v1.5.5/*.duckdb_extension \
         "$venv"/lib/python3*/site-packages/duckdb_extension_*/extensions/v1.5.5/*.duckdb_extension; do
  cmp -s "$f" "$ext/$(basename "$f")" || cp "$f" "$ext/"
done
# gs://BUCKET/PATH is read from $gcs_root/BUCKET/PATH: a fixed path, so that whichever checkout
# started the emulator, the tests (WEIR_TEST_GCS_ROOT in tests/run.sh) write where it reads.
gcs_root=/tmp/weir-test-gcs
mkdir -p "$gcs_root"
if ! open_port 45672; then
  echo "setup: starting the BigQuery emulator on 127.0.0.1:45672" >&2
  mkdir -p "$stand/bigquery"
  (GCS_LOCAL_ROOT="$gcs_root" setsid nohup "$bqvenv/bin/local-bigquery" --host 127.0.0.1 \
     --port 45672 --grpc-port 45673 --data-dir "$stand/bigquery" >"$stand/bigquery.log" 2>&1 &)
  wait_port 45672 bigquery
fi
