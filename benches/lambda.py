#!/usr/bin/env python3
"""The Lambda handler's time per batch: `weir lambda` served by a local Lambda Runtime API.

Usage: benches/lambda.py WEIR_BIN EVENTS_JSONL [--batch 100] [--invocations 50] [--shards 2]
       (e.g. WEIR_BIN = target/lambda/weir/bootstrap from `cargo lambda build --release`, or
       target/release/weir; EVENTS_JSONL from `weir generate`)

Builds Lambda Kinesis events of BATCH records each from the lines of EVENTS_JSONL (round robin over
SHARDS shards, sequence numbers increasing per shard), serves them one by one to `weir lambda` on
loopback, running the land-every-event job (benches/land), and reports the time from the event handed out (/next) to the answer (/response): the
first invocation (cold: tables created) apart, then the median, p90 and max of the rest, and the
records per second of the warm invocations. The lake is a temporary folder.
"""

import argparse
import base64
import http.server
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("weir")
parser.add_argument("events")
parser.add_argument("--batch", type=int, default=100)
parser.add_argument("--invocations", type=int, default=50)
parser.add_argument("--shards", type=int, default=2)
args = parser.parse_args()

lines = []
with open(args.events, "rb") as f:
    for line in f:
        lines.append(line.rstrip(b"\n"))
        if len(lines) >= args.batch * args.invocations:
            break

events = []
for i in range(args.invocations):
    shard = f"shardId-{i % args.shards:012d}"
    records = []
    for j, line in enumerate(lines[i * args.batch:(i + 1) * args.batch]):
        seq = str(49600000000000000000000000000000000000000000000000000000 + i * 10000 + j)
        records.append({
            "eventID": f"{shard}:{seq}", "eventSource": "aws:kinesis", "eventName": "aws:kinesis:record",
            "kinesis": {"approximateArrivalTimestamp": round(time.time(), 3), "partitionKey": "pk",
                        "sequenceNumber": seq, "data": base64.b64encode(line).decode()},
        })
    events.append(json.dumps({"Records": records}).encode())

pending = queue.Queue()
for i, e in enumerate(events):
    pending.put((f"req-{i}", e))
handed = {}
answered = {}
done = threading.Event()


class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: without TCP_NODELAY, Nagle and the client's delayed ACK
    # hold the body ~40 ms (a stall of this harness, not of the handler).
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_GET(self):
        rid, body = pending.get()
        handed[rid] = time.perf_counter()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", rid)
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 300000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:0:function:weir")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        parts = self.path.split("/")
        rid, kind = parts[-2], parts[-1]
        answered[rid] = (time.perf_counter(), kind, body)
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if len(answered) == len(events):
            done.set()


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
threading.Thread(target=server.serve_forever, daemon=True).start()
# The function's package: the job file and its SQL beside the bootstrap's working folder.
work = tempfile.mkdtemp(prefix="weir-lambda-bench-")
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.makedirs(os.path.join(work, "jobs"))
shutil.copy(os.path.join(repo, "benches/land/land.toml"), os.path.join(work, "jobs/land.toml"))
shutil.copytree(os.path.join(repo, "benches/land"), os.path.join(work, "sql/land"),
                ignore=shutil.ignore_patterns("*.toml"))
lake = os.path.join(work, "lake")
weir = os.path.abspath(args.weir)
env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_port}",
           AWS_LAMBDA_FUNCTION_NAME="weir", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
           AWS_LAMBDA_FUNCTION_VERSION="$LATEST", RUST_LOG="warn",
           _HANDLER="jobs/land.toml", WEIR_LAKE=lake)
started = time.perf_counter()
# Started as Lambda starts a bootstrap: no arguments (the job from _HANDLER), unless the binary
# is not named `bootstrap`.
argv = [weir] if os.path.basename(weir) == "bootstrap" else [weir, "lambda"]
proc = subprocess.Popen(argv, env=env, cwd=work)
ok = done.wait(600)
proc.kill()
proc.wait()
shutil.rmtree(work, ignore_errors=True)
if not ok:
    sys.exit(f"only {len(answered)} of {len(events)} invocations answered")
bad = [(rid, kind, body[:300]) for rid, (t, kind, body) in answered.items()
       if kind != "response" or json.loads(body).get("batchItemFailures")]
if bad:
    sys.exit(f"failed invocations: {bad[:3]}")
ms = [(answered[f"req-{i}"][0] - handed[f"req-{i}"]) * 1000 for i in range(len(events))]
warm = sorted(ms[1:])
p90 = warm[int(0.9 * (len(warm) - 1))]
print(f"weir lambda, land job, {args.invocations} invocations of {args.batch} records over {args.shards} shards")
print(f"  start-up to first event: {(handed['req-0'] - started) * 1000:.0f} ms")
print(f"  first invocation (tables created): {ms[0]:.0f} ms")
print(f"  warm: median {statistics.median(warm):.0f} ms, p90 {p90:.0f} ms, max {warm[-1]:.0f} ms per batch; "
      f"{args.batch * len(warm) / (sum(warm) / 1000):,.0f} records/s")
