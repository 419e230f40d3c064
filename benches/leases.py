#!/usr/bin/env python3
"""Leased workers against kinesalite and moto (DynamoDB), whole processes.

    benches/leases.py [--bin target/release/weir] [--events 40000] [--shards 8] [--workers 1,2,3]
                      [--failover 3s]

For each worker count: a new stream of SHARDS shards holding EVENTS events (put by `weir produce`
beforehand), a new lease table and a new lake; the workers start together and the clock runs
until every event is committed (the shard writers' commit logs). Reports events/s in all and per
worker, the workers' CPU seconds, and kinesalite's CPU seconds over the same time (it answers
every GetRecords of every worker: the bottleneck on one machine). Then the failover time: with two
workers caught up and a producer writing, one is SIGKILLed; the clock runs until the other holds
every lease (the lease table, read with boto3).

Needs tests/setup.sh's stand-ins (kinesalite on 45670, moto on 45671) and its venv.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(
    os.environ,
    AWS_ENDPOINT_URL_KINESIS="http://127.0.0.1:45670",
    AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:45671",
    AWS_ENDPOINT_URL_S3="http://127.0.0.1:45671",
    AWS_ACCESS_KEY_ID="test",
    AWS_SECRET_ACCESS_KEY="test",
    AWS_REGION="us-east-1",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    RUST_LOG="warn",
)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def kinesalite_pid():
    out = subprocess.run(["pgrep", "-f", "kinesalite.js"], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out.strip() else None


def project(work, stream, table, failover):
    d = Path(tempfile.mkdtemp(dir=work))
    (d / "jobs").mkdir()
    (d / "sql/land").mkdir(parents=True)
    for f in ["all_events.sql", "product_minute.sql"]:
        shutil.copy(ROOT / "benches/land" / f, d / "sql/land" / f)
    job = (ROOT / "benches/land/land.toml").read_text()
    job += (
        f'\n[targets.prod]\nsource = {{ kind = "kinesis", stream = "{stream}", '
        f'leases = "{table}", failover = "{failover}" }}\nlake = "lake"\n'
    )
    (d / "jobs/land.toml").write_text(job)
    return d


def committed(d):
    import json

    total = 0
    state = d / "lake/_weir"
    if not state.exists():
        return 0
    for w in state.iterdir():
        if not w.name.startswith("land.shardId-"):
            continue
        for c in (w / "commits").glob("*.json"):
            try:
                total += json.loads(c.read_text())["records"]
            except (OSError, ValueError):
                pass
    return total


def start(weir, d, wid):
    return subprocess.Popen(
        [weir, "run", "jobs/land.toml", "--quiet", "--target", "prod", "--worker-id", wid],
        cwd=d,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=open(d / f"{wid}.log", "w"),
    )


def produce(weir, stream, events, shards, extra=()):
    args = [weir, "produce", "--stream", stream, "--events", str(events)]
    args += ["--create-shards", str(shards), *extra]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL)


def stop(workers):
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=120)


def throughput(weir, work, events, shards, n, failover):
    tag = f"{time.time_ns() % 10**12}"
    stream, table = f"bench-leases-{n}-{tag}", f"bench-leases-{n}-{tag}"
    assert produce(weir, stream, events, shards).wait() == 0
    d = project(work, stream, table, failover)
    k = kinesalite_pid()
    k0 = cpu_seconds(k) if k else 0.0
    t0 = time.monotonic()
    workers = [start(weir, d, f"w{i + 1}") for i in range(n)]
    while committed(d) < events:
        if any(w.poll() is not None for w in workers):
            sys.exit(f"a worker exited early: see {d}/w*.log")
        time.sleep(0.05)
    wall = time.monotonic() - t0
    cpu = sum(cpu_seconds(w.pid) for w in workers)
    kcpu = (cpu_seconds(k) - k0) if k else float("nan")
    stop(workers)
    rate = events / wall
    print(
        f"{n} worker(s): {events} events over {shards} shards in {wall:.2f} s = {rate:,.0f} events/s "
        f"({rate / n:,.0f} per worker); workers' CPU {cpu:.2f} s, kinesalite's CPU {kcpu:.2f} s "
        f"of {wall:.2f} s wall",
        flush=True,
    )


def owners(table):
    d = boto3.client("dynamodb", endpoint_url=ENV["AWS_ENDPOINT_URL_DYNAMODB"], region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test")
    items = d.scan(TableName=table, ConsistentRead=True)["Items"]
    return {i["leaseKey"]["S"]: i.get("leaseOwner", {"S": None})["S"] for i in items}


def failover_time(weir, work, shards, failover):
    tag = f"{time.time_ns() % 10**12}"
    stream, table = f"bench-failover-{tag}", f"bench-failover-{tag}"
    assert produce(weir, stream, 2000, shards).wait() == 0
    d = project(work, stream, table, failover)
    w1, w2 = start(weir, d, "w1"), start(weir, d, "w2")
    while committed(d) < 2000:
        time.sleep(0.1)
    while sorted(set(owners(table).values())) != ["w1", "w2"]:
        time.sleep(0.1)
    producer = produce(weir, stream, 4000, shards, ["--rate", "500"])
    time.sleep(1)
    w1.kill()
    w1.wait()
    killed = time.monotonic()
    while any(o != "w2" for o in owners(table).values()):
        time.sleep(0.05)
    taken = time.monotonic() - killed
    producer.wait()
    while committed(d) < 6000:
        time.sleep(0.1)
    stop([w2])
    print(f"failover: w1 SIGKILLed, w2 held all {shards} leases {taken:.2f} s later (failover = {failover})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target/release/weir"))
    ap.add_argument("--events", type=int, default=40000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", default="1,2,3")
    ap.add_argument("--failover", default="3s")
    a = ap.parse_args()
    weir = str(Path(a.bin).resolve())
    work = Path(tempfile.mkdtemp(prefix="weir-bench-leases-"))
    for n in [int(x) for x in a.workers.split(",")]:
        throughput(weir, work, a.events, a.shards, n, a.failover)
    failover_time(weir, work, a.shards, a.failover)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
