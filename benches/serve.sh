#!/usr/bin/env bash
# Dashboard refresh speed: the sample job over N generated events (default 2,000,000) into a lake,
# then `weir serve` and GET /api/d/shop (every panel of dashboards/shop.toml, the lake refreshed
# first) measured with curl; then what serving costs a running job: `weir run` alone against
# `weir run --serve` with the dashboard refreshed every second, whole process.
#   benches/serve.sh [EVENTS]     WEIR_BENCH_RUNS=5 (refreshes: 10x that)   WEIR_BIN=path/to/weir
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000000}
runs=${WEIR_BENCH_RUNS:-5}
work=${WEIR_BENCH_DIR:-target/bench-serve}
if [ -z "${WEIR_BIN:-}" ]; then cargo build --release --quiet --bin weir; fi
weir=$(realpath "${WEIR_BIN:-target/release/weir}")
port=45781

mkdir -p "$work"
if [ ! -f "$work/data-$n/events/part-00000.jsonl" ]; then
  rm -rf "$work/data-$n"
  "$weir" generate --events "$n" --out "$work/data-$n" >/dev/null
fi
dir="$work/project"
rm -rf "$dir"; mkdir -p "$dir/jobs"
cp jobs/ecommerce.toml "$dir/jobs/"
cp -r sql dashboards "$dir/"
ln -s "$(realpath "$work/data-$n")" "$dir/data"

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

"$weir" run "$dir/jobs/ecommerce.toml" --quiet >/dev/null
files=$(find "$dir/lake" -name '*.parquet' -not -path '*/_weir/*' | wc -l)
"$weir" serve "$dir/jobs/ecommerce.toml" --http "127.0.0.1:$port" --pg off 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
wait_port $port
curl -sf "http://127.0.0.1:$port/api/d/shop" >/dev/null   # first: opens every table
for _ in $(seq 1 $((runs * 10))); do
  curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/api/d/shop"
done | awk '{print $1 * 1000}' >"$work/refresh.ms"
kill $server; wait $server 2>/dev/null || true
echo "dashboard refresh over $n events ($files Parquet files in the lake, $(grep -c . "$work/refresh.ms") refreshes):"
echo "  median $(median <"$work/refresh.ms") ms, max $(sort -n "$work/refresh.ms" | tail -1) ms"

# What serving costs the job: alone, then serving with the dashboard refreshed every second.
timed() { /usr/bin/time -f '%e %U %S %M' "$@" 2>&1 >/dev/null | tail -1; }
for i in $(seq 1 "$runs"); do
  rm -rf "$dir/lake"
  read -r wall user sys rss <<<"$(timed "$weir" run "$dir/jobs/ecommerce.toml" --quiet)"
  echo "alone $wall $(echo "$user + $sys" | bc) $((rss / 1024))" >>"$work/cost.$$"
  rm -rf "$dir/lake"
  ( while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$port/api/d/shop" || true; done ) &
  poller=$!
  read -r wall user sys rss <<<"$(timed "$weir" run "$dir/jobs/ecommerce.toml" --quiet --serve --http "127.0.0.1:$port" --pg off)"
  kill $poller; wait $poller 2>/dev/null || true
  echo "serve $wall $(echo "$user + $sys" | bc) $((rss / 1024))" >>"$work/cost.$$"
done
for mode in alone serve; do
  echo "weir run $mode: wall $(grep "^$mode " "$work/cost.$$" | cut -d' ' -f2 | median) s," \
    "cpu $(grep "^$mode " "$work/cost.$$" | cut -d' ' -f3 | median) s," \
    "peak RSS $(grep "^$mode " "$work/cost.$$" | cut -d' ' -f4 | median) MiB (median of $runs)"
done
rm -f "$work/cost.$$"
