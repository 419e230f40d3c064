#!/usr/bin/env bash
# Where the CPU of one `weir run` goes, by stage: perf samples of the whole process (all threads)
# grouped by the function they fall in (read, decode, transform, partition, encode, write, commit,
# memory, other).
#   benches/profile.sh JOB.toml        (e.g. target/bench-e2e/land-2000000/jobs/job.toml after
#                                       benches/e2e.sh; the job's lake is removed first)
#   WEIR_BIN=path/to/weir              profile another build
# Needs perf (Debian: linux-perf).
set -euo pipefail
job=$(realpath "$1")
cd "$(dirname "$0")/.."
weir=$(realpath "${WEIR_BIN:-target/release/weir}")
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
rm -rf "$(dirname "$job")/../lake"
perf record -q -F 1999 -o "$data/perf.data" "$weir" run "$job" --quiet >/dev/null
perf report -q -i "$data/perf.data" --no-children --sort dso,symbol 2>/dev/null | python3 -c '
import re, sys
stages = [
    ("read: files, line splitting", r"read_file|memchr|_copy_to_iter|ksys_read|filemap_read|copy_user"),
    ("decode: JSON/CSV -> Arrow", r"arrow_json|arrow_csv|from_utf8|parse_decimal|ParseJsonNumber|weir::decode"),
    ("partition: split by dt", r"weir::sink::lake::partition|arrow_row|take_"),
    ("encode: Parquet + zstd", r"parquet::|ZSTD|HUF_|HIST_|FSE_|zstd"),
    ("write: files", r"copy_folio_from_iter|ext4|iomap|filemap_add|generic_perform_write|object_store"),
    ("commit: Delta log, Weir state", r"deltalake|delta_kernel|serde_json|object_store::local"),
    ("transform: DataFusion", r"datafusion|arrow_arith|arrow_cast|arrow_select|arrow_string|chrono|arrow_ord"),
    ("memory: malloc, copies, page faults", r"malloc|free|memmove|memcpy|memset|clear_page|page_fault|_int_|mi_|folio_zero|alloc::"),
]
total = {}
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(3)
    name = next((n for n, rx in stages if re.search(rx, sym)), "other")
    total[name] = total.get(name, 0) + pct
for n, _ in stages + [("other", "")]:
    print(f"{total.get(n, 0):5.1f}%  {n}")
'
