#!/usr/bin/env bash
# End-to-end benchmark of the standard job, side by side with DuckDB on the same file and SQL.
#   benches/e2e.sh [EVENTS]        (default 2,000,000; also runs 10x EVENTS for the memory check
#                                    when WEIR_BENCH_SCALE=1)
#   WEIR_BENCH_JOB=land            the job people run first: the sample job plus `all_events`, every
#                                  event landed (all fields, revenue, dt), partitioned by day
#   WEIR_BIN=path/to/weir          measure another build (e.g. an older commit's) instead
# Reports events/s, CPU seconds and peak RSS of `weir run`, and DuckDB's events/s for the same work
# (read JSON -> the three transforms -> Parquet zstd files), with the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-2000000}
work=${WEIR_BENCH_DIR:-target/bench-e2e}
tests/setup.sh >/dev/null
if [ -z "${WEIR_BIN:-}" ]; then cargo build --release --quiet; fi
weir=${WEIR_BIN:-target/release/weir}
job=${WEIR_BENCH_JOB:-sample}
py=.venv/bin/python

measure() { # measure N: generate N events, run weir and duckdb, print one line each
  local n=$1 dir="$work/$1"
  if [ ! -f "$dir/data/events/part-00000.jsonl" ]; then
    rm -rf "$dir"; mkdir -p "$dir/jobs" "$dir/sql"
    "$weir" generate --events "$n" --out "$dir/data" >/dev/null
  fi
  rm -rf "$dir/lake" "$dir/duck"; mkdir -p "$dir/jobs" "$dir/sql"
  cp -r sql/ecommerce "$dir/sql/"
  cp jobs/ecommerce.toml "$dir/jobs/"
  if [ "$job" = land ]; then
    cp benches/all_events.sql "$dir/sql/ecommerce/"
    printf '\n[outputs.all_events]\npartition_by = ["dt"]\n' >>"$dir/jobs/ecommerce.toml"
  fi
  local out
  out=$( { /usr/bin/time -f 'TIME %e %U %S %M' "$weir" run "$dir/jobs/ecommerce.toml" --quiet >/dev/null; } 2>&1 | grep '^TIME')
  read -r _ wall user sys rss <<<"$out"
  local cpu; cpu=$(echo "$user + $sys" | bc)
  local eps; eps=$(echo "$n / $wall" | bc)
  echo "weir    job=$job events=$n wall=${wall}s cpu=${cpu}s peak_rss=$((rss / 1024))MiB events/s=$eps"
  local duck
  duck=$("$py" benches/duckdb_job.py "$dir" 2>&1)
  echo "duckdb  events=$n $duck"
  local deps; deps=$(echo "$duck" | sed -n 's/.*events\/s=\([0-9]*\).*/\1/p')
  [ -n "$deps" ] && echo "ratio   weir/duckdb events/s = $(echo "scale=2; $eps / $deps" | bc)"
}

measure "$events"
if [ "${WEIR_BENCH_SCALE:-0}" = 1 ]; then
  measure "$((events * 10))"
fi
