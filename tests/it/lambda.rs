//! `weir lambda` without AWS: this harness serves the Lambda Runtime API on loopback and feeds the
//! function Kinesis events built from records an independent producer (boto3, aws_kinesis_agg) put
//! into kinesalite and read back with GetRecords. Retried batches, a batch an earlier attempt
//! planned over more records than the retry holds, SIGKILLs mid-invocation, a poison record and a
//! corrupt KPL aggregate; the lake must equal DuckDB's computation over what the producer sent.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::kinesis::{aws_env, stream};

const NONE: [&str; 0] = [];

/// Events waiting for the function's `/next`: (request id, body, deadline in ms from now), and a
/// bell.
type Queue = Arc<(Mutex<VecDeque<(String, String, i64)>>, Condvar)>;

/// An invocation's outcome: the function's response, or its error report.
type Outcome = (String, Result<Value, String>);

/// The Lambda Runtime API (`/2018-06-01/runtime/...`), as Lambda serves it to a function.
struct RuntimeApi {
    addr: String,
    queue: Queue,
    outcomes: mpsc::Receiver<Outcome>,
    next_id: std::cell::Cell<u64>,
}

impl RuntimeApi {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let queue = Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
        let (tx, outcomes) = mpsc::channel();
        let q = queue.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (q, tx) = (q.clone(), tx.clone());
                std::thread::spawn(move || serve(conn, q, tx));
            }
        });
        Self {
            addr,
            queue,
            outcomes,
            next_id: std::cell::Cell::new(0),
        }
    }

    /// Queues an event for the function's next `/next`; returns its request id.
    fn send(&self, event: &Value) -> String {
        self.send_with_deadline(event, 300_000)
    }

    /// Queues an event whose invocation must end within `deadline_ms` (Lambda's timeout).
    fn send_with_deadline(&self, event: &Value, deadline_ms: i64) -> String {
        let id = format!("req-{}", self.next_id.get());
        self.next_id.set(self.next_id.get() + 1);
        let (lock, ready) = &*self.queue;
        lock.lock()
            .unwrap()
            .push_back((id.clone(), event.to_string(), deadline_ms));
        ready.notify_all();
        id
    }

    /// The outcome of request `id`, waiting up to `wait`.
    fn outcome(&self, id: &str, wait: Duration) -> Option<Result<Value, String>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.outcomes.recv_timeout(left) {
                Ok((got, outcome)) if got == id => return Some(outcome),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Sends an event and returns the function's response (panics on an error report, or when
    /// the function exits or does not answer within two minutes).
    fn invoke(&self, event: &Value, function: &mut Function) -> Value {
        let id = self.send(event);
        self.answer(&id, function)
    }

    /// The function's response to request `id` (panics as [`Self::invoke`] does).
    fn answer(&self, id: &str, function: &mut Function) -> Value {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            match self.outcome(id, Duration::from_secs(1)) {
                Some(Ok(v)) => return v,
                Some(Err(e)) => panic!("invocation {id} failed: {e}\n{}", function.log()),
                None => {}
            }
            if let Some(status) = function.child.try_wait().unwrap() {
                panic!("weir lambda exited ({status}) on {id}\n{}", function.log());
            }
        }
        panic!("no answer to {id} in 2 minutes\n{}", function.log())
    }

    /// Drops events nobody took (after a kill).
    fn clear(&self) {
        self.queue.0.lock().unwrap().clear();
    }
}

/// One connection of the function's runtime client (HTTP/1.1, keep-alive).
fn serve(conn: TcpStream, queue: Queue, tx: mpsc::Sender<Outcome>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (method, path) = (parts[0].to_string(), parts[1].to_string());
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = String::from_utf8_lossy(&body).to_string();
        let reply = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            // Long poll; a function killed meanwhile closes its connection: give up then.
            let (lock, ready) = &*queue;
            let mut q = lock.lock().unwrap();
            let (id, event, deadline_ms) = loop {
                if let Some(e) = q.pop_front() {
                    break e;
                }
                q = ready.wait_timeout(q, Duration::from_millis(50)).unwrap().0;
                if peer_closed(&conn) {
                    return;
                }
            };
            drop(q);
            let deadline = chrono::Utc::now().timestamp_millis() + deadline_ms;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {id}\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:weir\r\nLambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000\r\nContent-Length: {}\r\n\r\n{event}",
                event.len()
            )
        } else if let Some(rest) = path.strip_prefix("/2018-06-01/runtime/invocation/") {
            let (id, kind) = rest.split_once('/').unwrap();
            let outcome = match kind {
                "response" => Ok(serde_json::from_str(&body).unwrap_or(Value::String(body))),
                _ => Err(body),
            };
            let _ = tx.send((id.to_string(), outcome));
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string()
        } else {
            // /runtime/init/error and anything else.
            let _ = tx.send(("init".to_string(), Err(format!("{path}: {body}"))));
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string()
        };
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn peer_closed(conn: &TcpStream) -> bool {
    conn.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = matches!(conn.peek(&mut b), Ok(0));
    conn.set_nonblocking(false).unwrap();
    closed
}

/// A running `weir lambda` (its log in a file).
struct Function {
    child: Child,
    log: PathBuf,
}

impl Function {
    fn start(root: &Path, api: &RuntimeApi) -> Self {
        let log = root.join(format!("lambda-{}.log", api.next_id.get()));
        let child = lambda_cmd(root, &api.addr)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn weir lambda");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weir lambda` of the project's land job, as Lambda's runtime would start it.
fn lambda_cmd(root: &Path, api: &str) -> Command {
    let mut c = weir();
    aws_env(&mut c)
        .current_dir(root)
        .args(["lambda", "jobs/land.toml", "--lake"])
        .arg(root.join("lake"))
        .env("RUST_LOG", "weir=info")
        .env("AWS_LAMBDA_RUNTIME_API", api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "weir")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST");
    c
}

/// The land-every-event job of the benchmark, in a project of its own.
pub(crate) fn land_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::create_dir_all(root.join("sql/land")).unwrap();
    for f in ["all_events.sql", "product_minute.sql"] {
        std::fs::copy(
            repo().join("benches/land").join(f),
            root.join("sql/land").join(f),
        )
        .unwrap();
    }
    std::fs::copy(
        repo().join("benches/land/land.toml"),
        root.join("jobs/land.toml"),
    )
    .unwrap();
    dir
}

/// Puts events into a new 2-shard stream (put_records, KPL aggregates, a poison record, a corrupt
/// aggregate), writes the events to `sent.jsonl`, and reads every shard back with GetRecords:
/// `{shard: [{seq, data, arrival, pk, parts}]}`.
fn produce_and_read_back(root: &Path, stream: &str) -> serde_json::Map<String, Value> {
    let script = r#"
import base64, json, random, sys, time, os, boto3
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import deaggregate_records
stream, out = sys.argv[1], sys.argv[2]
k = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"])
k.create_stream(StreamName=stream, ShardCount=2)
while k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
    time.sleep(0.1)
rng = random.Random(7)
types = ["view", "view", "add_to_cart", "purchase", "refund"]
def event(i):
    t = rng.choice(types)
    e = {"event_id": f"{stream}-{i}", "event_time": f"2025-06-0{1 + i % 2}T10:{i % 60:02d}:{(i * 7) % 60:02d}Z",
         "event_type": t, "session_id": f"s{i % 37}", "user_id": i % 101, "product_id": 1 + i % 23}
    if t in ("purchase", "refund"):
        e.update(quantity=1 + i % 3, price=round(1 + (i % 50) * 1.25, 2), order_id=f"o{i}")
    return json.dumps(e)
sent = []
for start in range(0, 1400, 100):
    batch = [event(i) for i in range(start, start + 100)]
    sent += batch
    k.put_records(StreamName=stream, Records=[{"Data": e.encode(), "PartitionKey": f"pk{rng.random()}"} for e in batch])
agg = RecordAggregator()
def put(rec):
    pk, ehk, data = rec.get_contents()
    k.put_record(StreamName=stream, Data=data, PartitionKey=pk)
for i in range(1400, 2000):
    e = event(i)
    sent.append(e)
    full = agg.add_user_record(f"pk{rng.random()}", e.encode())
    if full:
        put(full)
    if i % 50 == 49:
        rest = agg.clear_and_get()
        if rest:
            put(rest)
k.put_record(StreamName=stream, Data=b'{"event_id": "poison", "event_time": "not a time"', PartitionKey="poison")
k.put_record(StreamName=stream, Data=b"\xf3\x89\x9a\xc2" + b"garbage" * 5, PartitionKey="bad-aggregate")
with open(out, "w") as f:
    f.write("\n".join(sent) + "\n")
shards = {}
for s in k.list_shards(StreamName=stream)["Shards"]:
    sid = s["ShardId"]
    it = k.get_shard_iterator(StreamName=stream, ShardId=sid, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    recs = []
    while True:
        r = k.get_records(ShardIterator=it, Limit=10000)
        for x in r["Records"]:
            try:
                parts = len(deaggregate_records([{"kinesis": {"data": base64.b64encode(x["Data"]).decode(), "partitionKey": x["PartitionKey"], "sequenceNumber": x["SequenceNumber"]}}]))
            except Exception:
                parts = 1
            recs.append({"seq": x["SequenceNumber"], "data": base64.b64encode(x["Data"]).decode(),
                         "arrival": x["ApproximateArrivalTimestamp"].timestamp(), "pk": x["PartitionKey"],
                         "parts": max(parts, 1)})
        it = r.get("NextShardIterator")
        if not r["Records"] and r.get("MillisBehindLatest", 0) == 0:
            break
    shards[sid] = recs
print(json.dumps(shards))
"#;
    let out = aws_env(&mut Command::new(python_path()))
        .args(["-c", script, stream])
        .arg(root.join("sent.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str::<Value>(&stdout(&out))
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// Lambda's Kinesis event over `records` of `shard`.
fn event(stream: &str, shard: &str, records: &[Value]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "awsRegion": "us-east-1",
                "eventID": format!("{shard}:{}", r["seq"].as_str().unwrap()),
                "eventName": "aws:kinesis:record",
                "eventSource": "aws:kinesis",
                "eventSourceARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{stream}"),
                "eventVersion": "1.0",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/weir",
                "kinesis": {
                    "approximateArrivalTimestamp": r["arrival"],
                    "data": r["data"],
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r["pk"],
                    "sequenceNumber": r["seq"],
                }
            })
        })
        .collect();
    json!({ "Records": records })
}

fn failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

/// A shard writer's committed batches (records), from its commit log.
fn commits(root: &Path, shard: &str) -> Vec<Value> {
    let mut c =
        state_entries(&job_state(&root.join("lake"), &format!("land.{shard}")).join("commits"));
    c.sort_by_key(|v| v["batch"].as_u64());
    c
}

#[test]
fn lambda_mode_is_exactly_once_through_retries_crashes_and_poison() {
    let project = land_project();
    let root = project.path();
    let s = stream("lambda");
    let shards = produce_and_read_back(root, &s);
    assert_eq!(shards.len(), 2);
    let ids: Vec<String> = shards.keys().cloned().collect();
    let (a, b) = (&ids[0], &ids[1]);
    let records = |shard: &str| shards[shard].as_array().unwrap().clone();
    let (ra, rb) = (records(a), records(b));
    assert!(
        ra.len() > 250 && rb.len() > 250,
        "{} {}",
        ra.len(),
        rb.len()
    );

    let api = RuntimeApi::start();
    let mut function = Function::start(root, &api);

    // Shard A in batches of 100 records; the first is sent twice, as Lambda does when the
    // function timed out after committing: the retry is acknowledged, nothing is written again.
    let batches_a: Vec<&[Value]> = ra.chunks(100).collect();
    let first = event(&s, a, batches_a[0]);
    assert_eq!(failures(&api.invoke(&first, &mut function)), NONE);
    assert_eq!(commits(root, a).len(), 1);
    assert_eq!(failures(&api.invoke(&first, &mut function)), NONE);
    assert_eq!(
        commits(root, a).len(),
        1,
        "a retried batch is not written again"
    );

    // The lake fails (a table's log cannot be written): the answer asks Lambda to retry from the
    // first record not committed, inside an event that starts with committed ones.
    let both = event(&s, a, &[batches_a[0], batches_a[1]].concat());
    let log = root.join("lake/all_events/_delta_log");
    std::fs::rename(&log, log.with_extension("away")).unwrap();
    std::fs::write(&log, "not a folder").unwrap();
    let failed = api.invoke(&both, &mut function);
    assert_eq!(
        failures(&failed),
        [batches_a[1][0]["seq"].as_str().unwrap()]
    );
    assert_eq!(commits(root, a).len(), 1);
    std::fs::remove_file(&log).unwrap();
    std::fs::rename(log.with_extension("away"), &log).unwrap();
    assert_eq!(failures(&api.invoke(&both, &mut function)), NONE);
    let c = commits(root, a);
    assert_eq!(c.len(), 2);
    assert_eq!(
        c[1]["range"][a.as_str()]["first"]["seq"],
        batches_a[1][0]["seq"],
        "the retry's committed part is skipped"
    );

    // An invocation whose time is up before it starts commits nothing and answers so.
    let late = api.send_with_deadline(&event(&s, a, batches_a[2]), -1);
    let r = api.answer(&late, &mut function);
    assert_eq!(failures(&r), [batches_a[2][0]["seq"].as_str().unwrap()]);
    assert_eq!(commits(root, a).len(), 2);

    // Another execution environment takes the shard for a batch and commits its tables, but its
    // commit record is lost (as if it died just before writing it). This environment, whose
    // table snapshots predate those commits, gets the same batch: it replays the plan, brings
    // its snapshots up to date first, finds every table holding the batch, writes nothing again
    // and completes the commit record (the lake is checked against DuckDB below).
    let api2 = RuntimeApi::start();
    let mut other = Function::start(root, &api2);
    let third = event(&s, a, batches_a[2]);
    assert_eq!(failures(&api2.invoke(&third, &mut other)), NONE);
    other.kill();
    let dir = job_state(&root.join("lake"), &format!("land.{a}")).join("commits");
    let mut records: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    records.sort();
    assert_eq!(records.len(), 3, "{records:?}");
    std::fs::remove_file(records.last().unwrap()).unwrap();
    // The newest-batch hint, as it was before that commit record.
    std::fs::write(dir.with_file_name("latest.json"), r#"{"batch":2}"#).unwrap();
    let r = api.invoke(&third, &mut function);
    assert_eq!(failures(&r), NONE, "{}", function.log());
    assert!(
        function.log().contains("planned but not committed"),
        "{}",
        function.log()
    );
    assert_eq!(commits(root, a).len(), 3);

    // How long a warm invocation takes: the kills below land within that.
    let mut took = Vec::new();
    for batch in &batches_a[2..] {
        let started = Instant::now();
        let r = api.invoke(&event(&s, a, batch), &mut function);
        took.push(started.elapsed());
        assert_eq!(failures(&r), NONE);
    }
    took.sort();
    let invocation = took[took.len() / 2];

    // Shard B: after its first batch, an earlier attempt planned a batch of the next 150 records
    // in two micro-batches and died. The retry starts before them (50 records were committed) and
    // holds only 100 of them (a smaller batch size meanwhile): the batch is replayed exactly, its
    // first micro-batch from inside the event, the rest read from the stream; then the next
    // event's records up to the plan's end are skipped.
    assert_eq!(
        failures(&api.invoke(&event(&s, b, &rb[..100]), &mut function)),
        NONE
    );
    let at = |i: usize, last: bool| {
        let sub = if last {
            rb[i]["parts"].as_u64().unwrap() - 1
        } else {
            0
        };
        json!({ "seq": rb[i]["seq"], "sub": sub })
    };
    let range = |from: usize, to: usize| json!({ b.as_str(): { "first": at(from, false), "last": at(to, true) } });
    let plan = json!({
        "job": format!("land.{b}"),
        "batch": 2,
        "range": range(100, 249),
        "micro_batches": [range(100, 179), range(180, 249)],
        "planned_at": "2026-11-27T00:00:00Z",
    });
    let plans = job_state(&root.join("lake"), &format!("land.{b}")).join("plans");
    std::fs::write(
        plans.join(format!("{:020}.json", 2)),
        serde_json::to_vec(&plan).unwrap(),
    )
    .unwrap();
    let r = api.invoke(&event(&s, b, &rb[50..200]), &mut function);
    assert_eq!(failures(&r), NONE);
    assert!(
        function.log().contains("reading it from the stream"),
        "{}",
        function.log()
    );
    assert_eq!(
        failures(&api.invoke(&event(&s, b, &rb[200..300]), &mut function)),
        NONE
    );
    let c = commits(root, b);
    assert_eq!(c.len(), 3, "{c:?}");
    assert_eq!(c[1]["range"], plan["range"], "the planned batch, exactly");
    assert_eq!(
        c[1]["records"],
        json!(
            150 + (100..250)
                .map(|i| rb[i]["parts"].as_u64().unwrap() - 1)
                .sum::<u64>()
        )
    );
    assert_eq!(c[2]["range"][b.as_str()]["first"], at(250, false));

    // The rest of shard B, each invocation SIGKILLed at a random moment, then retried by a new
    // execution environment with a few more records, as Lambda does after a timeout or crash.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("lambda kill seed {seed}");
    let (mut unanswered, mut replayed) = (0, 0);
    let mut i = 300;
    while i < rb.len() {
        let e = event(&s, b, &rb[i..(i + 15).min(rb.len())]);
        let id = api.send(&e);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The event is taken once the new function has started; then it is killed at a random
        // moment of the invocation (or just after it).
        let taken = Instant::now();
        while !api.queue.0.lock().unwrap().is_empty() && taken.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let span = invocation.as_micros() as u64 * 3 / 2 + 1;
        std::thread::sleep(Duration::from_micros((seed >> 33) % span));
        function.kill();
        if api.outcome(&id, Duration::ZERO).is_none() {
            unanswered += 1;
        }
        // The killed function's long poll notices its closed connection within 50 ms.
        std::thread::sleep(Duration::from_millis(200));
        api.clear();
        function = Function::start(root, &api);
        let end = (i + 20).min(rb.len());
        let r = api.invoke(&event(&s, b, &rb[i..end]), &mut function);
        assert_eq!(failures(&r), NONE);
        replayed += function.log().matches("planned but not committed").count();
        i = end;
    }
    eprintln!(
        "lambda kills (invocation {invocation:?}): {unanswered} before the answer, {replayed} replays of a planned batch"
    );
    function.kill();

    // The lake against DuckDB over what the producer sent.
    let lake = root.join("lake");
    let sent = format!(
        "read_json('{}/sent.jsonl', format = 'newline_delimited', columns = {{event_id: 'VARCHAR', event_time: 'TIMESTAMPTZ', event_type: 'VARCHAR', session_id: 'VARCHAR', user_id: 'BIGINT', product_id: 'INTEGER', quantity: 'INTEGER', price: 'DECIMAL(10,2)', order_id: 'VARCHAR'}})",
        root.display()
    );
    let expected = format!(
        "SELECT event_id, event_time, event_type, session_id, user_id, product_id, quantity, price, order_id, \
         CAST(CASE WHEN event_type = 'refund' THEN -1 ELSE 1 END * quantity * price AS DECIMAL(12, 2)) AS revenue, \
         CAST(event_time AS DATE) AS dt FROM {sent}"
    );
    let landed = format!(
        "SELECT event_id, event_time, event_type, session_id, user_id, product_id, quantity, price, order_id, revenue, dt FROM {}",
        lake_table(&lake, "all_events")
    );
    let counts = duckdb(&format!(
        "SELECT (SELECT count(*) FROM ({landed})), (SELECT count(*) FROM ({expected})), \
         (SELECT count(*) FROM (({landed}) EXCEPT ALL ({expected}))), \
         (SELECT count(*) FROM (({expected}) EXCEPT ALL ({landed})))"
    ));
    assert_eq!(counts, ["2000,2000,0,0"], "landed, sent, extra, missing");
    // The per-batch aggregate, summed over batches, equals the aggregate over every event.
    let minute = duckdb(&format!(
        "WITH l AS (SELECT product_id, minute, sum(events) e, sum(units) u, sum(revenue) r FROM {} GROUP BY ALL), \
         x AS (SELECT product_id, date_trunc('minute', event_time) AS minute, count(*) e, \
               coalesce(sum(quantity) FILTER (WHERE event_type = 'purchase'), 0) u, \
               coalesce(sum(quantity * price) FILTER (WHERE event_type = 'purchase'), 0) r FROM {sent} GROUP BY ALL) \
         SELECT (SELECT count(*) FROM l), (SELECT count(*) FROM (SELECT * FROM l EXCEPT SELECT * FROM x)), \
                (SELECT count(*) FROM (SELECT * FROM x EXCEPT SELECT * FROM l))",
        lake_table(&lake, "product_minute")
    ));
    let parts: Vec<&str> = minute[0].split(',').collect();
    assert!(parts[0].parse::<u64>().unwrap() > 100, "{minute:?}");
    assert_eq!(&parts[1..], ["0", "0"], "{minute:?}");
    // Both bad records are dead letters, once, with their shard and position.
    let dead = duckdb(&format!(
        "SELECT job, position, reason FROM {} ORDER BY position",
        lake_table(&lake, "_dead_letters")
    ));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|d| d.contains("KPL")), "{dead:?}");
    assert!(
        dead.iter()
            .all(|d| d.starts_with("land.shardId-") && d.contains("sequence ")),
        "{dead:?}"
    );
    // `weir status` lists each shard's writer, through its last record.
    let status = stdout(&run(
        weir()
            .current_dir(root)
            .args(["status", "jobs/land.toml", "--lake"])
            .arg(&lake),
        true,
    ));
    for (shard, records) in [(a, &ra), (b, &rb)] {
        let last = records.last().unwrap();
        let line = status
            .lines()
            .find(|l| l.contains(shard.as_str()))
            .unwrap_or_else(|| panic!("{shard} not in:\n{status}"));
        assert!(
            line.contains("Lambda writer") && line.contains(last["seq"].as_str().unwrap()),
            "{status}"
        );
    }
}

#[test]
fn lambda_refuses_state_and_says_what_is_missing_outside_lambda() {
    let p = Project::ecommerce(10, 1, "max_records = 1000");
    let out = run(
        weir()
            .current_dir(p.root())
            .args(["lambda", "jobs/ecommerce.toml"])
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9"),
        false,
    );
    let err = stderr(&out);
    assert!(
        err.contains("emit = \"window\"") && err.contains("Lambda"),
        "{err}"
    );

    let project = land_project();
    let out = run(
        weir()
            .current_dir(project.path())
            .args(["lambda", "jobs/land.toml"])
            .env_remove("AWS_LAMBDA_RUNTIME_API"),
        false,
    );
    let err = stderr(&out);
    assert!(
        err.contains("AWS_LAMBDA_RUNTIME_API") && err.contains("weir run"),
        "{err}"
    );
}
