#!/usr/bin/env bash
# End-to-end benchmark, whole process against whole process: `weir run` and DuckDB (Python,
# read_json -> the same SQL -> Parquet zstd partitioned by dt) on the same generated file, runs
# alternating, medians reported.
#   benches/e2e.sh [EVENTS...]       (default: 2000000 20000000)
#   WEIR_BENCH_JOB="sample land ..." the sample job (sales; funnel and revenue, window outputs;
#                                    stock, an update output), "perbatch" (the same SQL, every
#                                    output emit = "batch"), or "land", the job people run first:
#                                    every event landed (benches/land), next to a
#                                    per-product-per-minute aggregate; "landparts": the land job
#                                    with every event partitioned by day and event type (more files
#                                    open at once); "nomodels": the sample job
#                                    with every model call replaced by NULL (what scoring costs);
#                                    "both" (default): land sample
#   WEIR_BENCH_RUNS=5                alternating runs of each per size
#   WEIR_BIN=path/to/weir            measure another build instead of target/release/weir
# Per run it prints wall, CPU seconds, CPU-s per million events and peak RSS of both processes;
# then the medians and the ratio of events/s (weir / duckdb).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || set -- 2000000 20000000
work=${WEIR_BENCH_DIR:-target/bench-e2e}
runs=${WEIR_BENCH_RUNS:-5}
jobs=${WEIR_BENCH_JOB:-both}
[ "$jobs" = both ] && jobs="land sample"
tests/setup.sh >/dev/null
if [ -z "${WEIR_BIN:-}" ]; then cargo build --release --quiet --bin weir; fi
weir=$(realpath "${WEIR_BIN:-target/release/weir}")
py=$PWD/.venv/bin/python

project() { # project JOB N: a folder with N generated events and the job's files
  local job=$1 n=$2 dir="$work/$1-$2"
  mkdir -p "$work"
  if [ ! -f "$work/data-$n/events/part-00000.jsonl" ]; then
    rm -rf "$work/data-$n"
    "$weir" generate --events "$n" --out "$work/data-$n" >/dev/null
  fi
  rm -rf "$dir"; mkdir -p "$dir/jobs" "$dir/sql"
  ln -s "$(realpath "$work/data-$n")" "$dir/data"
  if [ "$job" = land ] || [ "$job" = landparts ]; then
    cp benches/land/land.toml "$dir/jobs/job.toml"
    [ "$job" = landparts ] && sed -i '/^\[outputs.all_events\]/,/^partition_by/ s/^partition_by = .*/partition_by = ["dt", "event_type"]/' "$dir/jobs/job.toml"
    mkdir -p "$dir/sql/land"; cp benches/land/*.sql "$dir/sql/land/"
    echo "$dir/sql/land"
  else
    cp jobs/ecommerce.toml "$dir/jobs/job.toml"
    # perbatch: the same transforms, each batch's rows as they come (no state kept).
    [ "$job" = perbatch ] && sed -i -e '/^emit = /d' -e '/^window = /d' "$dir/jobs/job.toml"
    cp -r sql/ecommerce "$dir/sql/"
    cp -r models "$dir/"
    # nomodels: every call of a job's model replaced by a NULL score, the models dropped.
    [ "$job" = nomodels ] && "$py" benches/strip_models.py "$dir/jobs/job.toml" "$dir/sql/ecommerce"
    echo "$dir/sql/ecommerce"
  fi
}

timed() { # timed CMD...: prints "wall cpu rss_mib" of the whole process
  local out
  out=$( { /usr/bin/time -f 'TIME %e %U %S %M' "$@" >/dev/null; } 2>&1 | grep '^TIME')
  read -r _ wall user sys rss <<<"$out"
  echo "$wall $(echo "$user + $sys" | bc) $((rss / 1024))"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for n in "$@"; do
  for job in $jobs; do
    sqldir=$(project "$job" "$n")
    dir="$work/$job-$n"
    : >"$dir/weir.txt"; : >"$dir/duck.txt"
    for i in $(seq "$runs"); do
      rm -rf "$dir/lake"
      read -r wall cpu rss <<<"$(timed "$weir" run "$dir/jobs/job.toml" --quiet)"
      echo "$wall $cpu $rss" >>"$dir/weir.txt"
      echo "run $i  weir    job=$job events=$n wall=${wall}s cpu=${cpu}s cpu/M=$(echo "scale=2; $cpu * 1000000 / $n" | bc) peak_rss=${rss}MiB"
      # Window and update outputs: groups held and the state file's size after the last batch.
      "$py" - "$dir/lake" <<'PY'
import json, os, sys
lake = sys.argv[1]
for job in os.listdir(os.path.join(lake, "_weir")):
    commits = os.path.join(lake, "_weir", job, "commits")
    if not os.path.isdir(commits):
        continue
    last = sorted(f for f in os.listdir(commits) if f.endswith(".json"))[-1]
    rec = json.load(open(os.path.join(commits, last)))
    for out, w in rec.get("windows", {}).items():
        size = os.path.getsize(os.path.join(lake, "_weir", job, w["state"])) if w.get("state") else 0
        print(f"        state   {out}: {w['groups']} groups, {size / 1024:.0f} KiB after batch {rec['batch']}")
PY
      rm -rf "$dir/duck"
      read -r wall cpu rss <<<"$(timed "$py" benches/duckdb_job.py "$dir" "$sqldir")"
      echo "$wall $cpu $rss" >>"$dir/duck.txt"
      echo "run $i  duckdb  job=$job events=$n wall=${wall}s cpu=${cpu}s cpu/M=$(echo "scale=2; $cpu * 1000000 / $n" | bc) peak_rss=${rss}MiB"
    done
    for who in weir duck; do
      wall=$(cut -d' ' -f1 "$dir/$who.txt" | median)
      cpu=$(cut -d' ' -f2 "$dir/$who.txt" | median)
      rss=$(cut -d' ' -f3 "$dir/$who.txt" | median)
      eval "${who}_eps=$(echo "$n / $wall" | bc)"
      printf 'median %-6s job=%s events=%s wall=%ss events/s=%s cpu=%ss cpu-s/M=%s peak_rss=%sMiB\n' \
        "$who" "$job" "$n" "$wall" "$(echo "$n / $wall" | bc)" "$cpu" "$(echo "scale=2; $cpu * 1000000 / $n" | bc)" "$rss"
    done
    echo "ratio  job=$job events=$n weir/duckdb events/s = $(echo "scale=2; $weir_eps / $duck_eps" | bc)"
  done
done
