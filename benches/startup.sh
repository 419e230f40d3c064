#!/usr/bin/env bash
# Start-up as the lake's history grows: the time a new `weir run` takes to commit its first batch,
# after 10 and after 2,000 committed batches (small batches of the sample job; compaction on).
# A start must not list history: both times should be about equal.
#   benches/startup.sh [BATCHES...]      (default: 10 2000; WEIR_BIN=path measures another build)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${WEIR_BIN:-}" ]; then cargo build --release --quiet; fi
weir=$(realpath "${WEIR_BIN:-target/release/weir}")
work=${WEIR_BENCH_DIR:-target/bench-startup}
per_batch=50
[ "$#" -gt 0 ] || set -- 10 2000
for batches in "${@}"; do
  dir=$work/$batches
  rm -rf "$dir"; mkdir -p "$dir/jobs" "$dir/sql"
  cp -r sql/ecommerce "$dir/sql/"
  cp data/products.csv "$dir/products.csv"
  sed -e "s/^max_records = .*/max_records = $per_batch/" \
      -e 's#^path = "data/products.csv"#path = "products.csv"#' jobs/ecommerce.toml >"$dir/jobs/ecommerce.toml"
  "$weir" generate --events $((batches * per_batch)) --files 1 --out "$dir/data" >/dev/null
  cp "$dir/products.csv" "$dir/data/products.csv"
  start=$(date +%s.%N)
  "$weir" run "$dir/jobs/ecommerce.toml" --quiet >"$dir/history.txt"
  fill=$(echo "$(date +%s.%N) - $start" | bc)
  committed=$(sed -n 's/.*batches *\([0-9]*\) committed.*/\1/p' "$dir/history.txt")
  # One more batch's worth of new events: the time of the whole process until it is committed.
  "$weir" generate --events $per_batch --files 1 --seed 7 --out "$dir/more" >/dev/null
  mv "$dir/more/events/part-00000.jsonl" "$dir/data/events/part-new.jsonl"
  out=$( { /usr/bin/time -f 'TIME %e %M' "$weir" run "$dir/jobs/ecommerce.toml" --quiet >"$dir/next.txt"; } 2>&1 | grep '^TIME')
  read -r _ wall rss <<<"$out"
  log=$(find "$dir/lake/sales/_delta_log" -type f | wc -l)
  state=$(find "$dir/lake/_weir" -type f | wc -l)
  echo "history=$committed batches (filled in ${fill}s)  next run to its first commit: ${wall}s, peak RSS $((rss / 1024)) MiB  (sales/_delta_log: $log files, _weir: $state files)"
done
