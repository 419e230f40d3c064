"""Freshness and sustained throughput through kinesalite: `weir produce` at a steady rate while a
continuous `weir run` (max_age = 1s) commits to a local lake; then freshness p50/p99 (Kinesis arrival
-> batch committed) from the run's Prometheus histogram, and events/s committed.
Usage: benches/freshness.sh [RATE] [SECONDS]   (needs tests/setup.sh's kinesalite; release build)"""
import os, re, shutil, subprocess, sys, tempfile, time, urllib.request

rate, seconds = int(sys.argv[1]), int(sys.argv[2])
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
weir = os.path.join(repo, "target/release/weir")
env = dict(os.environ, AWS_ENDPOINT_URL_KINESIS="http://127.0.0.1:45670", AWS_ACCESS_KEY_ID="test",
           AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
stream = f"bench-{int(time.time())}"
work = tempfile.mkdtemp()
os.makedirs(f"{work}/jobs")
shutil.copytree(f"{repo}/sql", f"{work}/sql")
shutil.copytree(f"{repo}/data", f"{work}/data")
job = open(f"{repo}/jobs/ecommerce.toml").read().replace('max_age = "5s"', 'max_age = "1s"')
job += f'\n[targets.bench]\nsource = {{ kind = "kinesis", stream = "{stream}", start = "latest" }}\nlake = "lake"\nmetrics = "127.0.0.1:45699"\n'
open(f"{work}/jobs/ecommerce.toml", "w").write(job)
subprocess.run([weir, "produce", "--stream", stream, "--events", "1", "--create-shards", "4"], env=env, check=True, capture_output=True)
run = subprocess.Popen([weir, "run", f"{work}/jobs/ecommerce.toml", "--target", "bench", "--quiet"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
time.sleep(3)
t0 = time.time()
prod = subprocess.run([weir, "produce", "--stream", stream, "--rate", str(rate), "--duration", f"{seconds}s"],
                      env=env, capture_output=True, text=True)
sent = int(re.search(r"sent ([\d,]+) events", prod.stdout).group(1).replace(",", ""))
# Wait until everything sent is committed (or 60 s).
def metrics():
    return urllib.request.urlopen("http://127.0.0.1:45699/metrics").read().decode()
def value(text, name):
    m = re.search(rf"^{name} ([\d.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
deadline = time.time() + 60
while value(metrics(), "weir_records_in_total") < sent and time.time() < deadline:
    time.sleep(0.5)
elapsed = time.time() - t0
text = metrics()
run.terminate(); run.wait()
buckets = [(float(le), float(c)) for le, c in re.findall(r'weir_freshness_seconds_bucket\{le="([\d.]+)"\} ([\d.]+)', text)]
total = value(text, "weir_freshness_seconds_count")
def quantile(q):
    for le, c in buckets:
        if c >= q * total:
            return le
    return float("inf")
committed = value(text, "weir_records_in_total")
print(f"rate={rate}/s for {seconds}s: sent={sent} committed={int(committed)} "
      f"sustained={int(committed / elapsed)} events/s; freshness p50<={quantile(0.5)}s p99<={quantile(0.99)}s "
      f"(histogram bucket bounds, {int(total)} chunks)")
shutil.rmtree(work)
