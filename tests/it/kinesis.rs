//! Kinesis end to end against kinesalite: produce -> continuous `weir run` -> stop, exactly once,
//! with independent producers (boto3, aws_kinesis_agg), resharding while running, SIGKILL and
//! SIGTERM, and an S3 lake on moto.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const BATCH: &str = "max_records = 500\nmax_bytes = \"64MiB\"\nmax_age = \"1s\"";

fn endpoint(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The standard AWS environment pointing at the stand-ins.
pub fn aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env(
        "AWS_ENDPOINT_URL_KINESIS",
        endpoint("WEIR_TEST_KINESIS", "http://127.0.0.1:45670"),
    )
    .env(
        "AWS_ENDPOINT_URL_S3",
        endpoint("WEIR_TEST_S3", "http://127.0.0.1:45671"),
    )
    .env(
        "AWS_ENDPOINT_URL_DYNAMODB",
        endpoint("WEIR_TEST_DYNAMODB", "http://127.0.0.1:45671"),
    )
    .env("AWS_ACCESS_KEY_ID", "test")
    .env("AWS_SECRET_ACCESS_KEY", "test")
    .env("AWS_REGION", "us-east-1")
    .env("AWS_DEFAULT_REGION", "us-east-1")
    .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// A unique stream name per test run.
pub(crate) fn stream(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}", nanos % 1_000_000_000_000)
}

/// The ecommerce job plus a pass-through `all_events` table and a `prod` target on `stream`.
pub(crate) fn project(stream: &str, lake: &str) -> Project {
    let p = Project::with_all_events(10, 1, BATCH);
    let mut job = std::fs::read_to_string(p.job()).unwrap();
    job.push_str(&format!(
        "\n[targets.prod]\nsource = {{ kind = \"kinesis\", stream = \"{stream}\" }}\nlake = \"{lake}\"\n"
    ));
    std::fs::write(p.job(), job).unwrap();
    p
}

pub(crate) fn produce(stream: &str, events: u64, extra: &[&str]) {
    run(
        aws_env(&mut weir())
            .args([
                "produce",
                "--stream",
                stream,
                "--events",
                &events.to_string(),
                "--create-shards",
                "2",
            ])
            .args(extra),
        true,
    );
}

fn start(p: &Project) -> Child {
    aws_env(&mut p.run_cmd())
        .args(["--target", "prod"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir run")
}

/// Records in committed batches, from the commit log.
fn committed(state: &Path) -> u64 {
    state_entries(&state.join("commits"))
        .iter()
        .map(|v| v["records"].as_u64().unwrap())
        .sum()
}

pub(crate) fn wait_committed(state: &Path, n: u64, child: &mut Child) {
    let started = Instant::now();
    loop {
        let c = committed(state);
        if c >= n {
            assert_eq!(c, n, "more records committed than sent");
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.stderr.take().map(|mut e| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                s
            });
            panic!("weir run exited early ({status:?}): {out:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {c} of {n} records committed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then the exit status must be success.
pub(crate) fn stop(child: Child) -> String {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "after SIGTERM: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

fn assert_exactly(p: &Project, n: u64) {
    let counts = duckdb(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        lake_table(&p.lake(), "all_events")
    ));
    assert_eq!(counts, [format!("{n},{n}")], "rows, distinct rows");
}

fn state(p: &Project) -> std::path::PathBuf {
    p.state()
}

#[test]
fn produced_events_are_committed_exactly_once_and_sigterm_stops_cleanly() {
    let s = stream("produce");
    let p = project(&s, "lake");
    produce(&s, 3000, &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = aws_env(&mut p.run_cmd())
        .args(["--target", "prod", "--metrics", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_committed(&state(&p), 3000, &mut child);
    produce(&s, 1000, &["--seed", "7", "--aggregate", "50"]);
    wait_committed(&state(&p), 4000, &mut child);
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains("weir_records_in_total 4000"), "{metrics}");
    assert!(metrics.contains("weir_bytes_in_total "), "{metrics}");
    assert!(
        metrics.contains("weir_freshness_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_kinesis_millis_behind_latest{shard=\"shardId-000000000000\"}"),
        "{metrics}"
    );
    assert!(http_get(&addr, "/health").ends_with("ok\n"));
    // `funnel` is a window output: on a stream, its newest minutes stay open (no end of input).
    assert!(
        metrics.contains("weir_window_open_groups{output=\"funnel\"}"),
        "{metrics}"
    );
    let out = stop(child);
    assert!(out.contains("4,000 read"), "{out}");
    assert!(out.contains("open groups: funnel "), "{out}");
    assert!(
        !out.contains("open groups: funnel 0;"),
        "a stop keeps windows open: {out}"
    );
    let status = stdout(&run(
        weir().arg("status").arg(p.job()).args(["--target", "prod"]),
        true,
    ));
    assert!(status.contains("funnel     window output: "), "{status}");
    assert_exactly(&p, 4000);
    // The positions in the batch log are (sequence, sub-sequence) per shard.
    let plan = std::fs::read_to_string(state(&p).join("plans/00000000000000000001.json")).unwrap();
    assert!(
        plan.contains("shardId-") && plan.contains("\"seq\""),
        "{plan}"
    );
}

#[test]
fn independent_producers_boto3_and_kpl_aggregates() {
    let s = stream("boto");
    let p = project(&s, "lake");
    let script = r#"
import json, sys, time, uuid, boto3, os
from aws_kinesis_agg.aggregator import RecordAggregator
stream = sys.argv[1]
k = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"])
k.create_stream(StreamName=stream, ShardCount=2)
while k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
    time.sleep(0.1)
def event(i):
    return json.dumps({"event_id": f"{stream}-{i}", "event_time": "2025-06-01T10:00:00Z",
                       "event_type": "view", "user_id": i, "product_id": 1 + i % 50, "price": 9.99})
# The seed's producer shape: plain put_records, 100 at a time.
for start in range(0, 200, 100):
    k.put_records(StreamName=stream, Records=[{"Data": event(i).encode(), "PartitionKey": f"pk{i}"} for i in range(start, start + 100)])
# KPL aggregates built by aws_kinesis_agg.
agg = RecordAggregator()
def send(rec):
    pk, ehk, data = rec.get_contents()
    k.put_record(StreamName=stream, Data=data, PartitionKey=pk)
for i in range(200, 500):
    full = agg.add_user_record(f"pk{i}", event(i).encode())
    if full:
        send(full)
rest = agg.clear_and_get()
if rest:
    send(rest)
# A corrupt aggregate: magic bytes, garbage, wrong digest.
k.put_record(StreamName=stream, Data=b"\xf3\x89\x9a\xc2" + b"garbage" * 5, PartitionKey="bad")
"#;
    let out = aws_env(&mut Command::new(python_path()))
        .args(["-c", script, &s])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = start(&p);
    wait_committed(&state(&p), 501, &mut child);
    stop(child);
    assert_exactly(&p, 500);
    let dead = duckdb(&format!(
        "SELECT reason FROM {}",
        lake_table(&p.lake(), "_dead_letters")
    ));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("KPL"), "{dead:?}");
}

#[test]
fn split_and_merge_while_running_reads_every_record_once_parents_first() {
    let s = stream("reshard");
    let p = project(&s, "lake");
    produce(&s, 1000, &[]);
    let mut child = start(&p);
    wait_committed(&state(&p), 1000, &mut child);
    let script = r#"
import sys, time, boto3, os
stream, action = sys.argv[1], sys.argv[2]
k = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"])
def active():
    while k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        time.sleep(0.1)
if action == "split":
    k.split_shard(StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**126))
else:
    # shardId-000000000003 (upper half of shard 0) is adjacent to shardId-000000000001.
    k.merge_shards(StreamName=stream, ShardToMerge="shardId-000000000003", AdjacentShardToMerge="shardId-000000000001")
active()
"#;
    let reshard = |action: &str| {
        let out = aws_env(&mut Command::new(python_path()))
            .args(["-c", script, &s, action])
            .output()
            .unwrap();
        assert!(out.status.success(), "{action}: {}", stderr(&out));
    };
    reshard("split");
    produce(&s, 1000, &["--seed", "2"]);
    wait_committed(&state(&p), 2000, &mut child);
    reshard("merge");
    produce(&s, 1000, &["--seed", "3"]);
    wait_committed(&state(&p), 3000, &mut child);
    stop(child);
    assert_exactly(&p, 3000);

    let first = assert_parents_first(&p, &[(2, &[0]), (3, &[0]), (4, &[1, 3])]);
    assert!(
        first.contains_key(&shard_id(4)),
        "the merged shard was read: {first:?}"
    );
}

fn shard_id(n: u32) -> String {
    format!("shardId-{n:012}")
}

/// Parents before children: a child's first batch comes no earlier than its parents' last.
/// Returns each shard's first batch.
fn assert_parents_first(
    p: &Project,
    children: &[(u32, &[u32])],
) -> std::collections::BTreeMap<String, u64> {
    let mut first = std::collections::BTreeMap::new();
    let mut last = std::collections::BTreeMap::new();
    for v in state_entries(&state(p).join("plans")) {
        let b = v["batch"].as_u64().unwrap();
        for shard in v["range"].as_object().unwrap().keys() {
            first
                .entry(shard.clone())
                .and_modify(|f: &mut u64| *f = (*f).min(b))
                .or_insert(b);
            last.entry(shard.clone())
                .and_modify(|l: &mut u64| *l = (*l).max(b))
                .or_insert(b);
        }
    }
    for (child, parents) in children {
        let Some(f) = first.get(&shard_id(*child)) else {
            continue;
        };
        for parent in *parents {
            if let Some(l) = last.get(&shard_id(*parent)) {
                assert!(
                    f >= l,
                    "{} read (batch {f}) before parent {} ended (batch {l})",
                    shard_id(*child),
                    shard_id(*parent)
                );
            }
        }
    }
    first
}

/// The AWS environment with Kinesis at kinesis-local, the stand-in that serves enhanced fan-out.
fn fanout_env(cmd: &mut Command) -> &mut Command {
    aws_env(cmd).env(
        "AWS_ENDPOINT_URL_KINESIS",
        endpoint("WEIR_TEST_KINESIS_FANOUT", "http://127.0.0.1:45674"),
    )
}

/// Enhanced fan-out against kinesis-local: the consumer is registered, every shard is read by
/// SubscribeToShard, subscriptions are renewed from their continuation (every 2 s here, instead
/// of before Kinesis' 5 minutes), a split's children are read after their parent's end, and a
/// SIGKILL while records are being committed, then a restart, lose and repeat nothing. The lake
/// is checked with DuckDB.
#[test]
fn enhanced_fan_out_reads_every_event_once_through_renewals_a_split_and_a_kill() {
    let s = stream("fanout");
    let p = project(&s, "lake");
    with_source_keys(&p, &s, "consumer = \"weir-test\"");
    let produce = |events: u64, seed: &str| {
        run(
            fanout_env(&mut weir()).args([
                "produce",
                "--stream",
                &s,
                "--events",
                &events.to_string(),
                "--create-shards",
                "2",
                "--seed",
                seed,
            ]),
            true,
        );
    };
    // Logs go to files: a pipe nobody reads while the run goes on would fill and block it.
    let start = |log: &str| {
        let log = std::fs::File::create(p.root().join(log)).unwrap();
        fanout_env(&mut p.run_cmd())
            .args(["--target", "prod"])
            .env("WEIR_KINESIS_RENEW_SUBSCRIPTION_SECS", "2")
            .env("RUST_LOG", "warn,weir::source::kinesis=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weir run")
    };
    produce(1000, "1");
    let mut child = start("run-1.log");
    wait_committed(&state(&p), 1000, &mut child);
    // Renewals while idle: the next records come through renewed subscriptions.
    std::thread::sleep(Duration::from_secs(5));
    let script = r#"
import sys, time, boto3, os
stream = sys.argv[1]
k = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"])
def active():
    while k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        time.sleep(0.1)
k.split_shard(StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**126))
active()
arn = k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
print(k.describe_stream_consumer(StreamARN=arn, ConsumerName="weir-test")["ConsumerDescription"]["ConsumerStatus"])
"#;
    let out = fanout_env(&mut Command::new(python_path()))
        .args(["-c", script, &s])
        .output()
        .unwrap();
    assert!(out.status.success(), "split: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ACTIVE", "the consumer is registered");
    produce(1000, "2");
    wait_committed(&state(&p), 2000, &mut child);
    // SIGKILL at the first commit of the next 2,000, while the rest is still being read and
    // written (a batch planned but not committed is replayed by GetRecords).
    produce(2000, "3");
    let waited = Instant::now();
    while committed(&state(&p)) <= 2000 {
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "nothing more committed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let pending = state_entries(&state(&p).join("plans")).len()
        > state_entries(&state(&p).join("commits")).len();
    eprintln!(
        "killed with {} records committed; a plan pending: {pending}",
        committed(&state(&p))
    );
    let log = std::fs::read_to_string(p.root().join("run-1.log")).unwrap();
    for shard in [0, 1, 2, 3] {
        assert!(
            log.lines()
                .any(|l| l.contains("subscribed") && l.contains(&shard_id(shard))),
            "{} was subscribed to: {log}",
            shard_id(shard)
        );
    }
    assert!(
        log.matches("renewing the subscription").count() >= 4,
        "subscriptions were renewed: {log}"
    );
    assert!(
        log.contains("shard closed and read to its end"),
        "the split parent ended with its children: {log}"
    );
    let mut child = start("run-2.log");
    wait_committed(&state(&p), 4000, &mut child);
    stop(child);
    assert_exactly(&p, 4000);
    assert_parents_first(&p, &[(2, &[0]), (3, &[0])]);
    // The stream and its consumer go: kinesis-local keeps every stream while it runs.
    let delete = r#"
import sys, boto3, os
k = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"])
k.delete_stream(StreamName=sys.argv[1], EnforceConsumerDeletion=True)
"#;
    let out = fanout_env(&mut Command::new(python_path()))
        .args(["-c", delete, &s])
        .output()
        .unwrap();
    assert!(out.status.success(), "delete: {}", stderr(&out));
}

#[test]
fn sigkill_during_a_continuous_run_then_restart_is_exactly_once() {
    let s = stream("kill");
    let p = project(&s, "lake");
    produce(&s, 6000, &[]);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut kills = 0;
    while kills < 5 && committed(&state(&p)) < 6000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut child = start(&p);
        std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 1500));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    produce(&s, 1000, &["--seed", "9"]);
    let mut child = start(&p);
    wait_committed(&state(&p), 7000, &mut child);
    stop(child);
    assert_exactly(&p, 7000);
}

#[test]
fn s3_lake_on_moto() {
    let s = stream("s3");
    let bucket = format!("weir-{}", s.to_lowercase());
    create_bucket(&bucket);
    let lake = format!("s3://{bucket}/lake");
    let p = project(&s, &lake);
    produce(&s, 1500, &[]);
    let child = start(&p);
    // Wait for the commit records to show up in the bucket, through weir query's own listing.
    let started = Instant::now();
    loop {
        let out = aws_env(&mut weir())
            .args([
                "query",
                "--lake",
                &lake,
                "--format",
                "csv",
                "SELECT count(*) AS n FROM all_events",
            ])
            .output()
            .unwrap();
        if stdout(&out) == "n\n1500\n" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "S3 lake never reached 1500 rows: {}{}",
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A second run of the same job on the same S3 lake (a rolling deploy) is refused at start.
    let second = aws_env(&mut p.run_cmd())
        .args(["--target", "prod"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("being written by"),
        "{}",
        stderr(&second)
    );
    stop(child);
    let script = r#"
import sys, os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[1], Prefix="lake/", MaxKeys=10000)["Contents"]]
print(sum(k.startswith("lake/_weir/ecommerce/commits/") for k in keys), sum(k.endswith(".parquet") for k in keys),
      sum(k.startswith("lake/all_events/_delta_log/") for k in keys))
"#;
    let out = aws_env(&mut Command::new(python_path()))
        .args(["-c", script, &bucket])
        .output()
        .unwrap();
    let text = stdout(&out);
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        nums.len() == 3 && nums[0] >= 1 && nums[1] >= 1 && nums[2] >= 2,
        "commits, parquet files, Delta log entries: {text} {}",
        stderr(&out)
    );
}

#[test]
fn throttling_and_server_errors_lose_nothing() {
    let s = stream("throttle");
    let p = project(&s, "lake");
    produce(&s, 2000, &[]);
    let (mut proxy, port, lines) = fault_proxy(&[]);
    let mut child = through_proxy(&p, port);
    wait_committed(&state(&p), 2000, &mut child);
    produce(&s, 1000, &["--seed", "5"]);
    wait_committed(&state(&p), 3000, &mut child);
    stop(child);
    proxy.kill().unwrap();
    proxy.wait().unwrap();
    let injected = lines
        .map_while(Result::ok)
        .filter(|l| l.starts_with("injected"))
        .count();
    assert!(injected >= 3, "only {injected} faults injected");
    assert_exactly(&p, 3000);
}

/// A plain HTTP/1.0 GET; returns the whole response.
pub(crate) fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn two_writers_cannot_commit_the_same_batch_on_s3() {
    use weir::commit::{CommitError, CommitRecord, CommitStore, ObjectCommitStore};
    let bucket = format!("weir-{}", stream("cond").to_lowercase());
    create_bucket(&bucket);
    // SAFETY: set before any thread of this test reads the environment.
    unsafe {
        std::env::set_var(
            "AWS_ENDPOINT_URL_S3",
            endpoint("WEIR_TEST_S3", "http://127.0.0.1:45671"),
        );
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let (store, root) = weir::storage::parse(&format!("s3://{bucket}/lake")).unwrap();
    let log = ObjectCommitStore::new(store, root.join("_weir").join("j"), "j");
    let record = CommitRecord {
        job: "j".into(),
        batch: 1,
        range: Default::default(),
        checkpoint: Default::default(),
        records: 0,
        dead_letters: 0,
        rows: Default::default(),
        files: vec![],
        committed_at: chrono::Utc::now(),
        backfill: false,
        windows: Default::default(),
        lease: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        log.commit(&record).await.unwrap();
        let second = log.commit(&record).await;
        assert!(
            matches!(second, Err(CommitError::Conflict { .. })),
            "{second:?}"
        );
    });
}

/// Creates an S3 bucket on moto with boto3.
fn create_bucket(bucket: &str) {
    let script = r#"
import sys, os, boto3
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket=sys.argv[1])
"#;
    let out = aws_env(&mut Command::new(python_path()))
        .args(["-c", script, bucket])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The project's `prod` source with more keys (`start`, `timestamp`).
fn with_source_keys(p: &Project, stream: &str, keys: &str) {
    let job = std::fs::read_to_string(p.job()).unwrap();
    let job = job.replace(
        &format!("stream = \"{stream}\" }}"),
        &format!("stream = \"{stream}\", {keys} }}"),
    );
    std::fs::write(p.job(), job).unwrap();
}

/// The fault proxy in `mode`, and its output lines (the port first, then one per fault).
fn fault_proxy(
    args: &[&str],
) -> (
    Child,
    u16,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut proxy = Command::new(python_path())
        .arg(repo().join("tests/stand-ins/faulty_proxy.py"))
        .arg(endpoint("WEIR_TEST_KINESIS", "http://127.0.0.1:45670"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(proxy.stdout.take().unwrap()).lines();
    let port = lines.next().unwrap().unwrap().parse().unwrap();
    (proxy, port, lines)
}

#[test]
fn latest_is_pinned_when_an_iterator_expires_before_the_first_record_and_list_shards_is_retried() {
    let s = stream("latest");
    produce(&s, 100, &[]); // before the run: `latest` skips these
    std::thread::sleep(Duration::from_millis(2500));
    let p = project(&s, "lake");
    with_source_keys(&p, &s, "start = \"latest\"");
    let release = p.root().join("release-iterators");
    let (mut proxy, port, lines) = fault_proxy(&["expire", &release.display().to_string()]);
    let faults = fault_lines(lines);
    let mut child = through_proxy(&p, port);
    // Both shards have had their LATEST iterator expire once. (kinesalite then holds the
    // AT_TIMESTAMP call that re-creates it until a record arrives after that time, unlike
    // Kinesis; Weir's call timeout makes it ask again.)
    let mut expired = 0;
    let mut list_faults = 0;
    while expired < 2 {
        let line = next_fault(&faults, &mut child, &p);
        expired += line.contains("ExpiredIterator") as u32;
        list_faults += line.contains("InternalFailure") as u32;
    }
    produce(&s, 300, &["--seed", "7"]);
    std::fs::write(&release, "").unwrap();
    wait_committed(&state(&p), 300, &mut child);
    stop(child);
    proxy.kill().unwrap();
    proxy.wait().unwrap();
    list_faults += faults
        .iter()
        .filter(|l| l.contains("InternalFailure"))
        .count() as u32;
    assert_eq!(
        list_faults, 5,
        "one ListShards call failed with all its retries"
    );
    assert_exactly(&p, 300);
}

#[test]
fn at_timestamp_starts_at_that_moment() {
    let s = stream("attime");
    produce(&s, 200, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let from = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(Duration::from_millis(1500));
    produce(&s, 300, &["--seed", "11"]);
    let p = project(&s, "lake");
    with_source_keys(
        &p,
        &s,
        &format!("start = \"at_timestamp\", timestamp = \"{from}\""),
    );
    let mut child = start(&p);
    wait_committed(&state(&p), 300, &mut child);
    std::thread::sleep(Duration::from_secs(2));
    stop(child);
    assert_exactly(&p, 300);
}

/// Writes a plan for the batch after the last committed one, over the shards of the last commit:
/// from its first record to one far past the end of the stream (records retention removed).
fn plan_past_the_end(p: &Project) -> std::path::PathBuf {
    let last = state_entries(&state(p).join("commits"))
        .into_iter()
        .max_by_key(|c| c["batch"].as_u64().unwrap())
        .unwrap();
    let batch = last["batch"].as_u64().unwrap() + 1;
    let mut range = serde_json::Map::new();
    for (shard, r) in last["range"].as_object().unwrap() {
        let seq = r["first"]["seq"].as_str().unwrap();
        range.insert(
            shard.clone(),
            serde_json::json!({
                "first": r["first"],
                "last": {"seq": format!("{seq}9"), "sub": 0},
            }),
        );
    }
    let plan = serde_json::json!({
        "job": "ecommerce", "batch": batch, "range": range,
        "planned_at": chrono::Utc::now().to_rfc3339(),
    });
    let path = state(p).join(format!("plans/{batch:020}.json"));
    std::fs::write(&path, serde_json::to_vec(&plan).unwrap()).unwrap();
    path
}

#[test]
fn replaying_a_range_whose_records_are_gone_stops_and_says_what_to_do() {
    let s = stream("trimmed");
    let p = project(&s, "lake");
    produce(&s, 200, &[]);
    let mut child = start(&p);
    wait_committed(&state(&p), 200, &mut child);
    stop(child);
    let plan = plan_past_the_end(&p);
    let out = run(aws_env(&mut p.run_cmd()).args(["--target", "prod"]), false);
    let err = stderr(&out);
    assert!(err.contains("no longer holds its records up to"), "{err}");
    let name = plan.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(&format!("delete _weir/ecommerce/plans/{name}")),
        "{err}"
    );
    std::fs::remove_file(&plan).unwrap();
    produce(&s, 100, &["--seed", "3"]);
    let mut child = start(&p);
    wait_committed(&state(&p), 300, &mut child);
    stop(child);
    assert_exactly(&p, 300);
}

#[test]
fn sigterm_during_start_up_or_the_replay_of_a_batch_stops_cleanly() {
    // Start-up waiting on a Kinesis endpoint that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = stream("signals");
    let p = project(&s, "lake");
    let child = aws_env(&mut p.run_cmd())
        .args(["--target", "prod"])
        .env(
            "AWS_ENDPOINT_URL_KINESIS",
            format!("http://{}", silent.local_addr().unwrap()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let out = stop_output(child);
    assert!(out.status.success(), "{:?}\n{}", out.status, stderr(&out));
    assert!(
        stderr(&out).contains("stopped during start-up"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!p.lake().join(STATE).exists(), "nothing written");

    // A replay that cannot read (every iterator expires): SIGTERM leaves the plan for next time.
    produce(&s, 200, &[]);
    let mut child = start(&p);
    wait_committed(&state(&p), 200, &mut child);
    stop(child);
    let plan = plan_past_the_end(&p);
    let release = p.root().join("never");
    let (mut proxy, port, lines) = fault_proxy(&["expire", &release.display().to_string()]);
    let faults = fault_lines(lines);
    let mut child = through_proxy(&p, port);
    while !next_fault(&faults, &mut child, &p).contains("ExpiredIterator") {}
    let out = stop_output(child);
    proxy.kill().unwrap();
    proxy.wait().unwrap();
    assert!(out.status.success(), "{:?}\n{}", out.status, stderr(&out));
    assert!(plan.exists(), "the plan stays for the next run");
    assert_exactly(&p, 200);
}

/// The proxy's fault lines, read on their own thread (so that a wait for one can time out).
fn fault_lines(
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The proxy's next fault line; after 3 minutes without one, `child` (started by
/// `through_proxy` in `p`) is killed and the test fails with the end of its log (instead of
/// waiting forever).
fn next_fault(
    faults: &std::sync::mpsc::Receiver<String>,
    child: &mut Child,
    p: &Project,
) -> String {
    match faults.recv_timeout(Duration::from_secs(180)) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(p.root().join(PROXIED_LOG)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!(
                "no fault injected by the proxy within 3 minutes ({e}): weir stopped calling \
                 Kinesis; the end of its log:\n{tail}"
            );
        }
    }
}

/// `weir run --target prod` with Kinesis behind the fault proxy on `port`.
fn through_proxy(p: &Project, port: u16) -> Child {
    aws_env(&mut p.run_cmd())
        .args(["--target", "prod"])
        .env(
            "AWS_ENDPOINT_URL_KINESIS",
            format!("http://127.0.0.1:{port}"),
        )
        .stdout(Stdio::piped())
        // Into a file, not a pipe: its retry warnings would fill a pipe nobody reads. A test
        // that fails shows its end (see `next_fault`).
        .stderr(std::fs::File::create(p.root().join(PROXIED_LOG)).unwrap())
        .spawn()
        .unwrap()
}

/// Where `through_proxy` puts `weir run`'s log, in the project.
const PROXIED_LOG: &str = "weir-stderr.log";

/// SIGTERM, then the output whatever the exit status.
fn stop_output(child: Child) -> std::process::Output {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}
