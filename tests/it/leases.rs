//! Leased workers (`source.leases`): several `weir run`s share a kinesalite stream through a
//! DynamoDB lease table on moto, while a producer writes. Workers join late, are SIGKILLed and
//! SIGSTOPped, a shard is split; the lake must hold every event exactly once (DuckDB), parents
//! must be read to their end before their children, and along every shard writer's batches the
//! lease counter they were committed under must only grow (no commit under a lost lease).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::kinesis::{aws_env, http_get, stream};
use crate::lambda::land_project;

/// A land-every-event project whose `prod` target reads `stream` with leases in `table`.
fn project(stream: &str, table: &str, failover: &str) -> tempfile::TempDir {
    let dir = land_project();
    let job = dir.path().join("jobs/land.toml");
    let mut text = std::fs::read_to_string(&job).unwrap();
    text.push_str(&format!(
        "\n[batch]\nmax_records = 500\nmax_age = \"1s\"\n\n[targets.prod]\nsource = {{ kind = \"kinesis\", stream = \"{stream}\", leases = \"{table}\", failover = \"{failover}\" }}\nlake = \"lake\"\n"
    ));
    std::fs::write(&job, text).unwrap();
    dir
}

fn lease_table(name: &str) -> String {
    stream(&format!("weir-test-{name}"))
}

/// A worker `id`, logging to `<id>.log`.
fn worker(root: &Path, id: &str) -> Child {
    worker_with(root, id, &[])
}

fn worker_with(root: &Path, id: &str, extra: &[&str]) -> Child {
    let log = std::fs::File::create(root.join(format!("{id}.log"))).unwrap();
    aws_env(&mut weir())
        .current_dir(root)
        .args(["run", "jobs/land.toml", "--quiet", "--target", "prod"])
        .args(["--worker-id", id])
        .args(extra)
        .env("RUST_LOG", "warn,weir::leased=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn weir run")
}

fn log(root: &Path, id: &str) -> String {
    std::fs::read_to_string(root.join(format!("{id}.log"))).unwrap_or_default()
}

/// Every shard writer's state folder.
fn writers(root: &Path) -> Vec<(String, PathBuf)> {
    let Ok(dirs) = std::fs::read_dir(root.join("lake").join(STATE)) else {
        return Vec::new();
    };
    let mut out: Vec<_> = dirs
        .filter_map(|d| {
            let d = d.ok()?;
            let name = d.file_name().to_string_lossy().to_string();
            let shard = name.strip_prefix("land.")?.to_string();
            Some((shard, d.path()))
        })
        .collect();
    out.sort();
    out
}

/// Per shard writer, its commit records in batch order.
fn commits(root: &Path) -> BTreeMap<String, Vec<Value>> {
    writers(root)
        .into_iter()
        .map(|(shard, dir)| {
            let mut c = state_entries(&dir.join("commits"));
            c.sort_by_key(|v| v["batch"].as_u64().unwrap());
            (shard, c)
        })
        .collect()
}

fn committed(root: &Path) -> u64 {
    commits(root)
        .values()
        .flatten()
        .map(|v| v["records"].as_u64().unwrap())
        .sum()
}

/// Waits until `n` records are committed over all shard writers (never more).
fn wait_committed(root: &Path, n: u64, workers: &mut [&mut Child]) {
    let started = Instant::now();
    loop {
        let c = committed(root);
        assert!(c <= n, "{c} records committed, more than the {n} sent");
        if c == n {
            return;
        }
        for w in workers.iter_mut() {
            if let Some(status) = w.try_wait().unwrap() {
                panic!("a worker exited early ({status:?})");
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "only {c} of {n} records committed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The lease table, read by boto3: shard -> (owner, checkpoint).
fn leases(table: &str) -> BTreeMap<String, (String, String)> {
    let script = r#"
import sys, os, boto3
d = boto3.client("dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL_DYNAMODB"])
for item in d.scan(TableName=sys.argv[1], ConsistentRead=True)["Items"]:
    print(item["leaseKey"]["S"], item.get("leaseOwner", {"S": "-"})["S"], item["checkpoint"]["S"])
"#;
    let out = aws_env(&mut Command::new(python_path()))
        .args(["-c", script, table])
        .output()
        .unwrap();
    assert!(out.status.success(), "scan: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

fn held_by(table: &str, id: &str) -> usize {
    leases(table).values().filter(|(o, _)| o == id).count()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// SIGTERM; the worker commits its batches in hand, releases its leases and exits 0.
fn stop(root: &Path, id: &str, mut child: Child) {
    signal(&child, "-TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{id} did not stop within 60 s: {}", log(root, id));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{id} exit {status:?}: {}", log(root, id));
}

fn produce(stream: &str, events: u64, seed: u64, extra: &[&str]) -> Command {
    let mut c = weir();
    aws_env(&mut c)
        .args([
            "produce",
            "--stream",
            stream,
            "--events",
            &events.to_string(),
        ])
        .args(["--seed", &seed.to_string()])
        .args(extra);
    c
}

fn split(stream: &str, shard: &str) {
    let script = r#"
import sys, time, os, boto3
k = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"])
s = k.describe_stream(StreamName=sys.argv[1])["StreamDescription"]
shard = next(x for x in s["Shards"] if x["ShardId"] == sys.argv[2])
lo, hi = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
k.split_shard(StreamName=sys.argv[1], ShardToSplit=sys.argv[2], NewStartingHashKey=str((lo + hi) // 2))
while k.describe_stream_summary(StreamName=sys.argv[1])["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
    time.sleep(0.1)
"#;
    let out = aws_env(&mut Command::new(python_path()))
        .args(["-c", script, stream, shard])
        .output()
        .unwrap();
    assert!(out.status.success(), "split: {}", stderr(&out));
}

/// Every event once: the lake's `all_events` against the number sent.
fn assert_exactly(root: &Path, n: u64) {
    let counts = duckdb(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        lake_table(&root.join("lake"), "all_events")
    ));
    assert_eq!(counts, [format!("{n},{n}")], "rows, distinct rows");
}

/// Along each shard writer's batches, the lease counter it committed under only grows: no
/// worker committed after another had taken the shard from it. Returns the owners per shard.
fn assert_fenced(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut owners = BTreeMap::new();
    for (shard, cs) in commits(root) {
        let mut last = 0;
        let mut seq: Vec<String> = Vec::new();
        for c in &cs {
            let owner = c["lease"]["owner"].as_str().unwrap().to_string();
            let counter = c["lease"]["counter"].as_u64().unwrap();
            assert!(
                counter > last,
                "{shard}: batch {} committed by {owner} under lease counter {counter}, after a \
                 batch under {last}: {cs:#?}",
                c["batch"]
            );
            last = counter;
            if seq.last() != Some(&owner) {
                seq.push(owner);
            }
        }
        owners.insert(shard, seq);
    }
    owners
}

/// Three workers on an 8-shard stream while a producer writes: two start, a third joins late and
/// takes its share, one is SIGKILLed (its shards are taken after the failover time), a shard is
/// split (its children are read after it ended); every event lands once.
#[test]
fn three_workers_share_a_stream_through_a_kill_a_late_join_and_a_split() {
    let s = stream("leases");
    let table = lease_table("leases");
    let dir = project(&s, &table, "3s");
    let root = dir.path();
    run(&mut produce(&s, 2000, 1, &["--create-shards", "8"]), true);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut w1 = worker(root, "w1");
    let mut w2 = worker_with(root, "w2", &["--metrics", &metrics]);
    wait_committed(root, 2000, &mut [&mut w1, &mut w2]);
    // The two split the free leases as they start; whoever has more than half gives one a round
    // to the other (stolen).
    wait_until("four leases each", Duration::from_secs(30), || {
        held_by(&table, "w1") == 4 && held_by(&table, "w2") == 4
    });

    // Each worker serves its own /metrics: its leases, its shards' lag.
    wait_until(
        "w2's /metrics shows its 4 leases",
        Duration::from_secs(10),
        || http_get(&metrics, "/metrics").contains("weir_leases_held 4"),
    );
    let text = http_get(&metrics, "/metrics");
    assert!(
        text.contains("weir_kinesis_millis_behind_latest{shard="),
        "{text}"
    );
    // A producer keeps writing from here on.
    let mut producer = produce(&s, 6000, 2, &["--rate", "400"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut w3 = worker(root, "w3");
    wait_until("w3 takes its share", Duration::from_secs(30), || {
        held_by(&table, "w3") >= 2
    });
    let w1_shards: Vec<String> = leases(&table)
        .into_iter()
        .filter(|(_, (o, _))| o == "w1")
        .map(|(s, _)| s)
        .collect();
    assert!(!w1_shards.is_empty());
    w1.kill().unwrap();
    w1.wait().unwrap();
    let failover = wait_until(
        "w1's shards taken by the others",
        Duration::from_secs(15),
        || {
            let l = leases(&table);
            w1_shards.iter().all(|s| l[s].0 == "w2" || l[s].0 == "w3")
        },
    );
    eprintln!("failover: w1's {w1_shards:?} taken {failover:?} after SIGKILL (failover 3 s)");
    // Seen unrenewed for the failover time (counted from the first round that saw the counter
    // stand still), then taken at the next round; two workers may race for the same lease and
    // one of them try again a round later.
    assert!(
        failover < Duration::from_secs(8),
        "taken after {failover:?}"
    );
    split(&s, "shardId-000000000000");
    assert!(producer.wait().unwrap().success());
    run(&mut produce(&s, 1000, 3, &[]), true);
    wait_committed(root, 9000, &mut [&mut w2, &mut w3]);
    stop(root, "w2", w2);
    stop(root, "w3", w3);

    assert_exactly(root, 9000);
    let owners = assert_fenced(root);
    let l = leases(&table);
    assert!(
        l.values().all(|(o, _)| o == "-"),
        "every lease released: {l:?}"
    );
    assert_eq!(l["shardId-000000000000"].1, "SHARD_END");
    // The split's children were read only after the parent's last commit.
    let all = commits(root);
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let parent_last = time(&all["shardId-000000000000"].last().unwrap()["committed_at"]);
    let mut children = 0;
    for (shard, (_, _)) in &l {
        if shard.as_str() <= "shardId-000000000007" {
            continue;
        }
        children += 1;
        let plans = {
            let mut p = state_entries(
                &job_state(&root.join("lake"), &format!("land.{shard}")).join("plans"),
            );
            p.sort_by_key(|v| v["batch"].as_u64().unwrap());
            p
        };
        let first = time(&plans.first().expect("the child was read")["planned_at"]);
        assert!(
            first >= parent_last,
            "{shard} planned at {first}, before its parent's last commit at {parent_last}"
        );
    }
    assert_eq!(children, 2, "{l:?}");
    for shard in &w1_shards {
        assert!(
            owners[shard].len() >= 2 && owners[shard][0] != "w3",
            "{shard}: written by {:?}",
            owners[shard]
        );
    }
    let w3_log = log(root, "w3");
    assert!(
        w3_log.contains("lease taken") && w3_log.contains("stolen=true"),
        "w3 stole leases to reach its share: {w3_log}"
    );

    // `weir status` reads the lease table and the shard writers.
    let out = run(
        aws_env(&mut weir()).current_dir(root).args([
            "status",
            "jobs/land.toml",
            "--target",
            "prod",
        ]),
        true,
    );
    let status = stdout(&out);
    assert!(
        status.contains("workers    0 holding 0 shards")
            && status.contains("ended      shardId-000000000000"),
        "{status}"
    );
}

/// A worker paused (SIGSTOP) past the failover time loses its leases to the other; resumed, it
/// commits nothing under them, and takes its share back.
#[test]
fn a_paused_worker_commits_nothing_after_losing_its_leases() {
    let s = stream("pause");
    let table = lease_table("pause");
    let dir = project(&s, &table, "2s");
    let root = dir.path();
    run(&mut produce(&s, 1000, 1, &["--create-shards", "4"]), true);
    let mut w1 = worker(root, "w1");
    let mut w2 = worker(root, "w2");
    wait_committed(root, 1000, &mut [&mut w1, &mut w2]);
    wait_until("two leases each", Duration::from_secs(20), || {
        held_by(&table, "w1") == 2 && held_by(&table, "w2") == 2
    });
    let mut producer = produce(&s, 5000, 2, &["--rate", "500"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&w1, "-STOP");
    wait_until("w2 takes every lease", Duration::from_secs(15), || {
        held_by(&table, "w2") == 4
    });
    // w2 commits on w1's shards meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    signal(&w1, "-CONT");
    wait_until("w1 notices", Duration::from_secs(15), || {
        log(root, "w1").contains("lease lost") || log(root, "w1").contains("after losing its lease")
    });
    wait_until("w1 takes its share back", Duration::from_secs(30), || {
        held_by(&table, "w1") == 2
    });
    assert!(producer.wait().unwrap().success());
    // Records for the shards w1 took back.
    run(&mut produce(&s, 1000, 3, &[]), true);
    wait_committed(root, 7000, &mut [&mut w1, &mut w2]);
    stop(root, "w1", w1);
    stop(root, "w2", w2);
    assert_exactly(root, 7000);
    let owners = assert_fenced(root);
    let w1_log = log(root, "w1");
    eprintln!(
        "owners per shard, in batch order: {owners:?}\nw1 after resuming:\n{}",
        w1_log
            .lines()
            .filter(|l| l.contains("lost") || l.contains("losing"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        owners
            .values()
            .any(|o| o.windows(2).any(|w| w == ["w1", "w2"])),
        "w2 committed on shards w1 had: {owners:?}"
    );
    assert!(
        owners
            .values()
            .any(|o| o.len() >= 2 && o.last().unwrap() == "w1"),
        "w1 committed again on shards it took back: {owners:?}"
    );
}

/// A target switched from one writer to leases goes on from the job's checkpoint: the shard
/// writers read only what came after it.
#[test]
fn switching_a_target_to_leases_goes_on_from_its_checkpoint() {
    let s = stream("switch");
    let table = lease_table("switch");
    let dir = project(&s, &table, "2s");
    let root = dir.path();
    let job = root.join("jobs/land.toml");
    let mut text = std::fs::read_to_string(&job).unwrap();
    text.push_str(&format!(
        "\n[targets.single]\nsource = {{ kind = \"kinesis\", stream = \"{s}\" }}\nlake = \"lake\"\n"
    ));
    std::fs::write(&job, text).unwrap();
    run(&mut produce(&s, 1000, 1, &["--create-shards", "2"]), true);
    let single = aws_env(&mut weir())
        .current_dir(root)
        .args(["run", "jobs/land.toml", "--quiet", "--target", "single"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let job_commits = job_state(&root.join("lake"), "land").join("commits");
    wait_until(
        "the one writer commits 1,000",
        Duration::from_secs(60),
        || {
            state_entries(&job_commits)
                .iter()
                .map(|v| v["records"].as_u64().unwrap())
                .sum::<u64>()
                == 1000
        },
    );
    stop(root, "single", single);
    let mut w1 = worker(root, "w1");
    run(&mut produce(&s, 1000, 2, &[]), true);
    // Only the 1,000 new events: the shard writers start after the job's checkpoint.
    wait_committed(root, 1000, &mut [&mut w1]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(committed(root), 1000);
    stop(root, "w1", w1);
    assert_exactly(root, 2000);
}
