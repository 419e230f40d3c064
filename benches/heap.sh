#!/usr/bin/env bash
# What one `weir run` holds on the heap at its peak, and who holds it: heaptrack over the whole
# process, then the peak heap, the peak RSS and the biggest holders at the peak, each named by its
# first frames in Weir and its crates. Run it on the same job at two sizes to tell memory that
# grows with the input (the peak heap grows) from pages the allocator keeps (only RSS grows).
#   benches/heap.sh JOB.toml           (e.g. target/bench-e2e/land-2000000/jobs/job.toml after
#                                       benches/e2e.sh; the job's lake is removed first)
#   WEIR_BIN=path/to/weir              measure another build
#   WEIR_HEAP_TOP=12                   holders listed
# Needs heaptrack (Debian: heaptrack; installed when missing). heaptrack slows the run about 15x
# (2M events of the land job: 36 s).
set -euo pipefail
job=$(realpath "$1")
cd "$(dirname "$0")/.."
weir=$(realpath "${WEIR_BIN:-target/release/weir}")
top=${WEIR_HEAP_TOP:-12}
if ! command -v heaptrack_print >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y heaptrack >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y heaptrack >/dev/null; }
fi
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
rm -rf "$(dirname "$job")/../lake"
heaptrack -o "$data/heap" "$weir" run "$job" --quiet >"$data/log" 2>&1 || { cat "$data/log"; exit 1; }
file=$(ls "$data"/heap.*)
heaptrack_print -f "$file" --print-peaks 0 --print-allocators 0 --print-temporary 0 --print-leaks 0 2>/dev/null |
  grep -E "^(total runtime|peak heap|peak RSS)"
echo "biggest holders at the peak (bytes, allocations, first frames in Weir or its crates):"
heaptrack_print -f "$file" --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
  --peak-limit 40 --merge-backtraces 1 2>/dev/null | python3 -c '
import re, sys
top = int(sys.argv[1])
holders, frames, cur = [], [], None
def done():
    if cur:
        seen = []
        for f in frames:
            if f not in seen:
                seen.append(f)
        holders.append((cur[0], cur[1], cur[2], " < ".join(seen[:4])))
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)([KMG]?) consumed over (\d+) calls from", line)
    if m:
        done()
        unit = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
        cur, frames = (float(m.group(1)) * unit, m.group(1) + m.group(2), m.group(3)), []
        continue
    if "peak memory consumed" in line:
        done()
        cur, frames = None, []
        continue
    s = line.strip()
    if cur and s.startswith("at ") and "/rustc/" not in s and "tokio-" not in s \
            and "futures-" not in s and "src/runtime" not in s and "pthread" not in s \
            and "clone3" not in s and "/std/" not in s:
        frames.append(re.sub(r"^at (/root/)?.*?index\.crates\.io-[^/]+/", "", s).removeprefix("at "))
done()
for _, size, calls, where in sorted(holders, reverse=True)[:top]:
    print(f"{size:>8} {calls:>7}  {where}")
' "$top"
