//! Loads behind the commit, against real servers: PostgreSQL (this machine's, database `test`),
//! the BigQuery emulator and Glue on moto. Rows in each warehouse are compared with DuckDB's reading
//! of the lake; the load ledgers and job ids are checked for exactly once under retries, SIGKILL and
//! a warehouse that is down. Redshift's DDL, COPY and manifest text are golden files, and its DDL
//! runs on PostgreSQL.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

const BATCHES: &str = "max_records = 1500\nmax_bytes = \"64MiB\"\nmax_age = \"5s\"\ncompact_every = 4\ncommit_every = 1";
const EVENTS: u64 = 12_000;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn pg_url() -> String {
    env_or(
        "WEIR_TEST_POSTGRES",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

fn bq_endpoint() -> String {
    env_or("WEIR_TEST_BIGQUERY", "http://127.0.0.1:45672")
}

fn glue_endpoint() -> String {
    env_or("WEIR_TEST_GLUE", "http://127.0.0.1:45671")
}

/// A name unique to this test process and call.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Where one test's loads go.
struct Warehouses {
    schema: String,
    dataset: String,
    database: String,
}

impl Warehouses {
    fn new() -> Self {
        Self {
            schema: unique("weir_it"),
            dataset: unique("weir_it"),
            database: unique("weir_it"),
        }
    }

    /// The `[targets.local]` body loading into all three, PostgreSQL at `pg`.
    fn target(&self, pg: &str) -> String {
        format!(
            "source = {{ kind = \"files\", path = \"data/events/*.jsonl*\" }}\nlake = \"lake\"\n\
             postgres = {{ url = \"{pg}\", schema = \"{}\" }}\n\
             bigquery = {{ project = \"local\", dataset = \"{}\", endpoint = \"{}\", auth = \"none\" }}\n\
             glue = {{ database = \"{}\" }}",
            self.schema,
            self.dataset,
            bq_endpoint(),
            self.database
        )
    }

    fn project(&self, events: u64, pg: &str) -> Project {
        let p = Project::ecommerce(events, 3, BATCHES);
        let job = std::fs::read_to_string(p.job()).unwrap();
        let job = replace_section(&job, "[targets.local]", &self.target(pg));
        std::fs::write(p.job(), job).unwrap();
        p
    }
}

/// `weir` with the AWS environment pointing Glue at moto.
fn weir_cmd(p: &Project, args: &[&str]) -> Command {
    let mut c = weir();
    c.args(args).arg(p.job());
    c.env("AWS_ENDPOINT_URL_GLUE", glue_endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

fn run_job(p: &Project) -> String {
    stdout(&run(&mut weir_cmd(p, &["run", "--quiet"]), true))
}

/// Rows of a PostgreSQL query, each value as text.
fn pg(sql: &str) -> Vec<Vec<String>> {
    runtime().block_on(async {
        let client = weir::load::postgres::wire::connect("postgres", &pg_url(), "PGPASSWORD")
            .await
            .expect("PostgreSQL at WEIR_TEST_POSTGRES");
        let mut out = Vec::new();
        for m in client.simple_query(sql).await.expect(sql) {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                out.push(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("").to_string())
                        .collect(),
                );
            }
        }
        out
    })
}

/// Rows of a BigQuery query on the emulator, each value as text.
fn bq(sql: &str) -> Vec<Vec<String>> {
    runtime().block_on(async {
        let resp: serde_json::Value = reqwest::Client::new()
            .post(format!(
                "{}/bigquery/v2/projects/local/queries",
                bq_endpoint()
            ))
            .json(&serde_json::json!({"query": sql, "useLegacySql": false}))
            .send()
            .await
            .expect("BigQuery emulator at WEIR_TEST_BIGQUERY")
            .json()
            .await
            .unwrap();
        assert!(resp["error"].is_null(), "{sql}: {resp}");
        resp["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                r["f"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["v"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .collect()
    })
}

fn glue() -> aws_sdk_glue::Client {
    let conf = runtime().block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(glue_endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_glue::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load(),
    );
    aws_sdk_glue::Client::new(&conf)
}

/// Per table, the aggregates compared across the lake and the warehouses.
const CHECKS: &[(&str, &str)] = &[
    (
        "sales",
        "count(*), count(DISTINCT event_id), sum(revenue), sum(quantity)",
    ),
    (
        "funnel",
        "count(*), sum(views), sum(purchases), sum(revenue)",
    ),
    ("revenue", "count(*), sum(orders), sum(units), sum(revenue)"),
    (
        "stock",
        "count(*), count(DISTINCT product_id), sum(units_sold), sum(stock_left)",
    ),
];

/// The update output compared row for row: one row per product, the same in every warehouse.
const STOCK_ROWS: &str =
    "SELECT product_id, units_sold, units_restocked, stock_left FROM {} ORDER BY product_id";

fn numbers(rows: Vec<Vec<String>>) -> Vec<f64> {
    rows.into_iter()
        .flatten()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
        .collect()
}

fn lake_numbers(lake: &Path, table: &str, aggs: &str) -> Vec<f64> {
    let rows = duckdb(&format!("SELECT {aggs} FROM {}", lake_table(lake, table)));
    rows.iter()
        .flat_map(|l| {
            l.split(',')
                .map(|v| v.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() < 1e-6 * w.abs().max(1.0),
            "{what}: {got:?} vs lake {want:?}"
        );
    }
}

/// Every table's rows in PostgreSQL and BigQuery equal the lake's.
fn assert_warehouses_match_lake(p: &Project, w: &Warehouses) {
    for (table, aggs) in CHECKS {
        let want = lake_numbers(&p.lake(), table, aggs);
        assert!(want[0] > 0.0, "{table} is empty in the lake");
        let got = numbers(pg(&format!(
            "SELECT {aggs} FROM \"{}\".\"{table}\"",
            w.schema
        )));
        assert_close(&format!("PostgreSQL {table}"), &got, &want);
        let got = numbers(bq(&format!(
            "SELECT {aggs} FROM `local.{}.{table}`",
            w.dataset
        )));
        assert_close(&format!("BigQuery {table}"), &got, &want);
    }
    let lake_rows = duckdb(&STOCK_ROWS.replace("{}", &lake_table(&p.lake(), "stock")));
    let as_lines =
        |rows: Vec<Vec<String>>| -> Vec<String> { rows.into_iter().map(|r| r.join(",")).collect() };
    let pg_rows = as_lines(pg(
        &STOCK_ROWS.replace("{}", &format!("\"{}\".stock", w.schema))
    ));
    assert_eq!(pg_rows, lake_rows, "PostgreSQL stock rows");
    let bq_rows = as_lines(bq(
        &STOCK_ROWS.replace("{}", &format!("`local.{}.stock`", w.dataset))
    ));
    assert_eq!(bq_rows, lake_rows, "BigQuery stock rows");
}

/// The (table, batch) pairs the commit log says have files.
fn committed_pairs(p: &Project) -> BTreeSet<(String, u64)> {
    let mut out = BTreeSet::new();
    for v in state_entries(&p.state().join("commits")) {
        for f in v["files"].as_array().unwrap() {
            let table = f["table"].as_str().unwrap();
            if !table.starts_with('_') {
                out.insert((table.to_string(), v["batch"].as_u64().unwrap()));
            }
        }
    }
    out
}

/// The ledger holds each committed (table, batch) exactly once.
fn assert_ledger_exact(p: &Project, w: &Warehouses) {
    let rows = pg(&format!(
        "SELECT table_name, batch FROM \"{}\"._weir_loads WHERE job = 'ecommerce'",
        w.schema
    ));
    let pairs: Vec<(String, u64)> = rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    let set: BTreeSet<_> = pairs.iter().cloned().collect();
    assert_eq!(set.len(), pairs.len(), "a batch is twice in the ledger");
    assert_eq!(set, committed_pairs(p), "ledger vs commit log");
}

/// Each committed file was loaded by exactly the load job its (job, table, batch, file) names,
/// done without error on the first attempt.
fn assert_bigquery_jobs(p: &Project, w: &Warehouses) {
    let lake = lake_id(&p.lake());
    let mut checked = 0;
    for v in state_entries(&p.state().join("commits")) {
        let batch = v["batch"].as_u64().unwrap();
        let mut index: std::collections::BTreeMap<String, usize> = Default::default();
        for f in v["files"].as_array().unwrap() {
            let table = f["table"].as_str().unwrap();
            if table.starts_with('_') {
                continue;
            }
            let i = index.entry(table.to_string()).or_default();
            // An update output's batch is done when its MERGE job is.
            let id = match f.get("upsert") {
                Some(_) => format!(
                    "weir_{}_ecommerce_{lake}_{table}_{batch}_merge_0",
                    w.dataset
                ),
                None => format!("weir_{}_ecommerce_{lake}_{table}_{batch}_{i}", w.dataset),
            };
            *i += 1;
            let job: serde_json::Value = runtime().block_on(async {
                reqwest::Client::new()
                    .get(format!(
                        "{}/bigquery/v2/projects/local/jobs/{id}",
                        bq_endpoint()
                    ))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            });
            assert_eq!(job["status"]["state"], "DONE", "{id}: {job}");
            assert!(job["status"]["errorResult"].is_null(), "{id}: {job}");
            checked += 1;
        }
    }
    assert!(checked > 3, "only {checked} load jobs");
}

#[test]
fn ecommerce_loads_match_the_lake_in_postgres_bigquery_and_glue() {
    let w = Warehouses::new();
    let p = w.project(EVENTS, &pg_url());
    let out = run_job(&p);
    assert!(out.contains("loaded   "), "{out}");
    assert_warehouses_match_lake(&p, &w);
    assert_ledger_exact(&p, &w);
    assert_bigquery_jobs(&p, &w);
    let table: serde_json::Value = runtime().block_on(async {
        reqwest::get(format!(
            "{}/bigquery/v2/projects/local/datasets/{}/tables/sales",
            bq_endpoint(),
            w.dataset
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    });
    assert_eq!(table["timePartitioning"]["field"], "dt", "{table}");
    assert_eq!(table["timePartitioning"]["type"], "DAY", "{table}");

    // Glue: tables with mapped types, partition keys and one partition per lake folder.
    let g = glue();
    let rt = runtime();
    let t = rt
        .block_on(
            g.get_table()
                .database_name(&w.database)
                .name("sales")
                .send(),
        )
        .unwrap();
    let t = t.table().unwrap();
    let cols: Vec<(String, String)> = t
        .storage_descriptor()
        .unwrap()
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.r#type().unwrap().to_string()))
        .collect();
    assert!(
        cols.contains(&("revenue".into(), "decimal(12,2)".into())),
        "{cols:?}"
    );
    assert!(
        cols.contains(&("event_time".into(), "timestamp".into())),
        "{cols:?}"
    );
    assert!(
        cols.contains(&("user_id".into(), "bigint".into())),
        "{cols:?}"
    );
    assert_eq!(t.partition_keys()[0].name(), "dt");
    assert_eq!(t.partition_keys()[0].r#type(), Some("date"));
    // A Delta table (Athena, Spark and Trino read the log; no partitions to register).
    let params = t.parameters().unwrap();
    assert_eq!(params.get("table_type").map(String::as_str), Some("DELTA"));
    assert_eq!(
        params.get("spark.sql.sources.provider").map(String::as_str),
        Some("delta")
    );
    let loc = t.storage_descriptor().unwrap().location().unwrap();
    assert!(
        loc.starts_with("file:///") && loc.ends_with("/lake/sales"),
        "{loc}"
    );
    assert!(std::path::Path::new(&format!("{}/_delta_log", &loc["file://".len()..])).is_dir());
    let parts = rt
        .block_on(
            g.get_partitions()
                .database_name(&w.database)
                .table_name("sales")
                .send(),
        )
        .unwrap();
    assert!(parts.partitions().is_empty());

    // Status: everything loaded, nothing behind.
    let status = stdout(&run(&mut weir_cmd(&p, &["status"]), true));
    for d in ["postgres", "bigquery", "glue"] {
        assert!(
            status
                .lines()
                .any(|l| l.trim_start().starts_with(d) && l.contains("0 batches behind")),
            "{status}"
        );
    }

    // Retries never double-load: rewind every loader to the start, run again, same rows.
    for e in std::fs::read_dir(p.state().join("loads")).unwrap() {
        std::fs::write(e.unwrap().path(), r#"{"batch": 0}"#).unwrap();
    }
    run_job(&p);
    assert_warehouses_match_lake(&p, &w);
    assert_ledger_exact(&p, &w);
}

/// Adds a file of `events` new generated events (another seed) to the project's input.
fn add_events(p: &Project, events: u64, seed: u64) {
    let out = p.root().join(format!("data/seed-{seed}"));
    run(
        weir()
            .args(["generate", "--files", "1"])
            .args([
                "--events",
                &events.to_string(),
                "--seed",
                &seed.to_string(),
                "--out",
            ])
            .arg(&out),
        true,
    );
    std::fs::rename(
        out.join("events/part-00000.jsonl"),
        p.root().join(format!("data/events/part-seed-{seed}.jsonl")),
    )
    .unwrap();
}

#[test]
fn schema_evolution_adds_new_columns_and_refuses_changed_ones() {
    let w = Warehouses::new();
    let p = w.project(3_000, &pg_url());
    run_job(&p);

    // A new nullable column: every warehouse gets it, and new rows carry it.
    let sql = std::fs::read_to_string(p.root().join("sql/ecommerce/sales.sql")).unwrap();
    let with_channel = sql.replace(
        "    event_time,\n",
        "    event_time,\n    CAST('web' AS VARCHAR) AS channel,\n",
    );
    assert_ne!(with_channel, sql);
    p.write("sql/ecommerce/sales.sql", &with_channel);
    add_events(&p, 3000, 7);
    run_job(&p);
    let pg_cols = pg(&format!(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'sales' AND column_name = 'channel'",
        w.schema
    ));
    assert_eq!(pg_cols, [["text".to_string()]]);
    let web = pg(&format!(
        "SELECT count(*) FROM \"{}\".sales WHERE channel = 'web'",
        w.schema
    ));
    assert_ne!(web[0][0], "0", "new rows carry the new column");
    let bq_cols = bq(&format!(
        "SELECT data_type FROM `local.{}.INFORMATION_SCHEMA.COLUMNS` WHERE table_name = 'sales' AND column_name = 'channel'",
        w.dataset
    ));
    assert_eq!(bq_cols, [["STRING".to_string()]]);
    let t = runtime()
        .block_on(
            glue()
                .get_table()
                .database_name(&w.database)
                .name("sales")
                .send(),
        )
        .unwrap();
    let glue_cols: Vec<String> = t
        .table()
        .unwrap()
        .storage_descriptor()
        .unwrap()
        .columns()
        .iter()
        .map(|c| format!("{} {}", c.name(), c.r#type().unwrap_or_default()))
        .collect();
    assert!(
        glue_cols.contains(&"channel string".to_string()),
        "{glue_cols:?}"
    );
    assert_warehouses_match_lake(&p, &w);

    // A changed type stops the run before any file is written, naming the column.
    let commits_before = state_entries(&p.state().join("commits")).len();
    p.write(
        "sql/ecommerce/sales.sql",
        &with_channel.replace(
            "    quantity,\n",
            "    CAST(quantity AS DOUBLE) AS quantity,\n",
        ),
    );
    add_events(&p, 500, 8);
    let out = run(&mut weir_cmd(&p, &["run", "--quiet"]), false);
    let err = stderr(&out);
    assert!(err.contains("quantity"), "{err}");
    assert!(err.contains("CAST it back"), "{err}");
    let commits_after = state_entries(&p.state().join("commits")).len();
    assert_eq!(
        commits_before, commits_after,
        "a batch was written after a schema conflict"
    );
    let plans = state_entries(&p.state().join("plans")).len();
    assert_eq!(
        plans, commits_after,
        "a batch was planned after a schema conflict"
    );
}

fn cursor(p: &Project, dest: &str) -> u64 {
    std::fs::read(p.state().join(format!("loads/{dest}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["batch"].as_u64())
        .unwrap_or(0)
}

fn last_commit(p: &Project) -> u64 {
    std::fs::read_dir(p.state().join("commits"))
        .map(|d| {
            d.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_between_commit_and_load_loads_each_batch_exactly_once() {
    let w = Warehouses::new();
    let p = w.project(5 * EVENTS, &pg_url());
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let (mut kills, mut behind, mut attempts) = (0, 0, 0);
    while (kills < 6 || behind < 2) && attempts < 40 {
        attempts += 1;
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(100 + (seed >> 33) % 1200);
        let mut child = weir_cmd(&p, &["run", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            let committed = last_commit(&p);
            if cursor(&p, "postgres") < committed || cursor(&p, "bigquery") < committed {
                behind += 1;
            }
        } else {
            child.wait().unwrap();
        }
    }
    eprintln!("{kills} kills, {behind} between a commit and its load, {attempts} runs");
    assert!(kills >= 3, "only {kills} kills hit a running process");
    assert!(behind >= 1, "no kill landed between a commit and its load");
    run_job(&p);
    assert_warehouses_match_lake(&p, &w);
    assert_ledger_exact(&p, &w);
}

#[test]
fn a_warehouse_down_does_not_stop_the_lake_and_loads_catch_up() {
    let w = Warehouses::new();
    let port = free_port();
    let down = pg_url().replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    let p = w.project(EVENTS, &down);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = weir_cmd(&p, &["run", "--quiet", "--metrics", &metrics])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The lake takes every event while PostgreSQL is unreachable.
    let started = Instant::now();
    loop {
        let records: u64 = state_entries(&p.state().join("commits"))
            .iter()
            .filter_map(|v| v["records"].as_u64())
            .sum();
        if records == EVENTS {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "weir exited while PostgreSQL was down"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the lake stalled at {records} events"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cursor(&p, "postgres"), 0, "nothing can be loaded yet");
    // The backlog is visible in /metrics.
    let text = runtime().block_on(async {
        reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let backlog: f64 = text
        .lines()
        .find(|l| l.starts_with("weir_load_backlog_batches{destination=\"postgres\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no postgres backlog in /metrics:\n{text}"));
    assert!(backlog >= 1.0, "backlog {backlog}");
    let status = stdout(&run(&mut weir_cmd(&p, &["status"]), true));
    assert!(status.contains("postgres   loaded batch 0"), "{status}");
    // Bring it back: a proxy on the port the job uses.
    let mut proxy = Command::new(python_path())
        .arg(repo().join("tests/stand-ins/tcp_proxy.py"))
        .args([&port.to_string(), "127.0.0.1", "5432"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    proxy.kill().unwrap();
    proxy.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("retrying"),
        "the loader did not report its retries: {err}"
    );
    assert_eq!(cursor(&p, "postgres"), last_commit(&p));
    for (table, aggs) in CHECKS {
        let want = lake_numbers(&p.lake(), table, aggs);
        let got = numbers(pg(&format!(
            "SELECT {aggs} FROM \"{}\".\"{table}\"",
            w.schema
        )));
        assert_close(&format!("PostgreSQL {table}"), &got, &want);
    }
    assert_ledger_exact(&p, &w);
}

/// Compares `text` with a golden file (rewritten when WEIR_UPDATE_GOLDEN is set).
fn golden(name: &str, text: &str) {
    let path = repo().join("tests/golden/redshift").join(name);
    if std::env::var_os("WEIR_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with WEIR_UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        text, want,
        "{} differs; run with WEIR_UPDATE_GOLDEN=1 after checking",
        name
    );
}

fn redshift(schema: &str) -> weir::load::redshift::Redshift {
    let config: weir::job::RedshiftConfig = toml::from_str(&format!(
        "url = \"postgres://loader@shop.abc123.eu-west-1.redshift.amazonaws.com:5439/shop?sslmode=require\"\n\
         schema = \"{schema}\"\niam_role = \"arn:aws:iam::123456789012:role/weir-redshift\"\nregion = \"eu-west-1\""
    ))
    .unwrap();
    let lake = weir::load::LakeFiles {
        store: std::sync::Arc::new(object_store::memory::InMemory::new()),
        root: object_store::path::Path::from("events"),
        url: "s3://shop-lake/events".into(),
        lake_id: "0123456789abcdef0123456789abcdef".into(),
    };
    weir::load::redshift::Redshift::new(&config, "ecommerce", lake)
}

fn sample_tables() -> Vec<weir::load::OutputTable> {
    let job = weir::job::Job::load(repo().join("jobs/ecommerce.toml")).unwrap();
    let transforms = runtime()
        .block_on(weir::transform::Transforms::load(&job))
        .unwrap();
    weir::load::OutputTable::of(&job, &transforms)
}

#[test]
fn redshift_ddl_copy_and_manifest_are_golden_and_the_ddl_runs_on_postgres() {
    let tables = sample_tables();
    let r = redshift("analytics");
    golden(
        "create.sql",
        &format!("{};\n", r.create_statements(&tables).unwrap().join(";\n\n")),
    );
    let files = [
        weir::sink::WrittenFile {
            table: "sales".into(),
            path: "sales/dt=2025-06-01/ecommerce-00000000000000000042-0.parquet".into(),
            rows: 1200,
            bytes: 48_213,
            upsert: None,
        },
        weir::sink::WrittenFile {
            table: "sales".into(),
            path: "sales/dt=2025-06-02/ecommerce-00000000000000000042-1.parquet".into(),
            rows: 80,
            bytes: 6_120,
            upsert: None,
        },
    ];
    let refs: Vec<_> = files.iter().collect();
    golden("manifest.json", &format!("{}\n", r.manifest(&refs)));
    let ledger = r.ledger();
    let at = chrono::DateTime::parse_from_rfc3339("2025-06-02T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let manifest = format!("s3://shop-lake/events/{}", r.manifest_path(42, "sales"));
    let transaction = [
        "BEGIN".to_string(),
        ledger.lock(),
        ledger.loaded("ecommerce", "sales", 42),
        r.copy_statement("sales", &manifest),
        ledger.insert("ecommerce", "sales", 42, 1280, 2, at),
        "COMMIT".to_string(),
    ];
    golden("load.sql", &format!("{};\n", transaction.join(";\n\n")));

    // An update output's batch: its change file staged, then the keys' rows replaced.
    let stock = tables.iter().find(|t| t.name == "stock").unwrap();
    let keys = stock.keys.clone().expect("stock is an update output");
    let columns: Vec<String> = stock
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let upsert = weir::load::postgres::wire::Upsert {
        ledger,
        table: "stock",
    };
    let manifest = format!("s3://shop-lake/events/{}", r.manifest_path(42, "stock"));
    let transaction = [
        "BEGIN".to_string(),
        ledger.lock(),
        ledger.loaded("ecommerce", "stock", 42),
        upsert.create_stage(),
        r.copy_into(&upsert.stage(), &manifest),
        upsert.apply(&keys, &[], &columns),
        ledger.insert("ecommerce", "stock", 42, 57, 1, at),
        "COMMIT".to_string(),
    ];
    golden("upsert.sql", &format!("{};\n", transaction.join(";\n\n")));

    // The same DDL (in a fresh schema) is valid PostgreSQL, which Redshift's dialect derives from.
    let schema = unique("weir_redshift");
    let statements = redshift(&schema).create_statements(&tables).unwrap();
    runtime().block_on(async {
        let client = weir::load::postgres::wire::connect("postgres", &pg_url(), "PGPASSWORD")
            .await
            .unwrap();
        for s in &statements {
            client
                .batch_execute(s)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    });
    let cols = pg(&format!(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = 'sales' ORDER BY ordinal_position"
    ));
    assert!(
        cols.contains(&vec!["revenue".to_string(), "numeric".to_string()]),
        "{cols:?}"
    );
    assert!(
        cols.contains(&vec![
            "event_id".to_string(),
            "character varying".to_string()
        ]),
        "{cols:?}"
    );
}

/// The identity of a lake folder (`_weir/lake.json`).
fn lake_id(lake: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake_json(lake)).unwrap()).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// A local lake folder as loaders see it (under `url`), and its commit log.
fn lake_at(dir: &Path, url: String) -> (weir::load::LakeFiles, weir::commit::ObjectCommitStore) {
    let store =
        std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
    let log = weir::commit::ObjectCommitStore::new(
        store.clone(),
        object_store::path::Path::from(Layout::new("ecommerce").state()),
        "ecommerce",
    );
    let lake = weir::load::LakeFiles {
        store,
        root: object_store::path::Path::default(),
        url,
        lake_id: lake_id(dir),
    };
    (lake, log)
}

#[test]
fn bigquery_loads_from_gs_uris_when_the_lake_is_on_gcs() {
    // The emulator reads gs://BUCKET/PATH from <GCS_LOCAL_ROOT>/BUCKET/PATH (tests/setup.sh): a
    // lake written there is, to it, a lake on GCS, and the loads take the gs:// path (no upload).
    let root = std::path::PathBuf::from(env_or("WEIR_TEST_GCS_ROOT", "/tmp/weir-test-gcs"));
    let bucket = unique("lake").replace('_', "-");
    let lake_dir = root.join(&bucket);
    let p = Project::ecommerce(3_000, 1, BATCHES);
    run(
        weir()
            .args(["run", "--quiet"])
            .arg(p.job())
            .arg("--lake")
            .arg(&lake_dir),
        true,
    );
    let dataset = unique("weir_it_gs");
    let config: weir::job::BigQueryConfig = toml::from_str(&format!(
        "project = \"local\"\ndataset = \"{dataset}\"\nendpoint = \"{}\"\nauth = \"none\"",
        bq_endpoint()
    ))
    .unwrap();
    let (lake, log) = lake_at(&lake_dir, format!("gs://{bucket}"));
    let dest = weir::load::bigquery::BigQuery::new(&config, "ecommerce", lake);
    let tables = sample_tables();
    let commits = runtime().block_on(async {
        use weir::commit::CommitStore;
        use weir::load::Destination;
        let commits = log.commits().await.unwrap();
        dest.prepare(&tables).await.unwrap();
        for c in &commits {
            dest.load(c).await.unwrap();
            dest.load(c).await.unwrap(); // a retry loads nothing twice
        }
        commits.len()
    });
    assert!(commits > 1);
    for (table, aggs) in CHECKS {
        let want = lake_numbers(&lake_dir, table, aggs);
        let got = numbers(bq(&format!("SELECT {aggs} FROM `local.{dataset}.{table}`")));
        assert_close(&format!("BigQuery from gs:// {table}"), &got, &want);
    }
}

#[test]
fn bigquery_load_errors_name_the_file_and_retry_under_a_new_job_id() {
    let p = Project::ecommerce(2_000, 1, BATCHES);
    run(weir().args(["run", "--quiet"]).arg(p.job()), true);
    // A `sales` table the files cannot go into (made by hand, so prepare is skipped on purpose).
    let dataset = unique("weir_it_bad");
    let api = format!("{}/bigquery/v2/projects/local", bq_endpoint());
    runtime().block_on(async {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{api}/datasets"))
            .json(&serde_json::json!({"datasetReference": {"projectId": "local", "datasetId": dataset}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let r = http
            .post(format!("{api}/datasets/{dataset}/tables"))
            .json(&serde_json::json!({
                "tableReference": {"projectId": "local", "datasetId": dataset, "tableId": "sales"},
                "schema": {"fields": [{"name": "event_id", "type": "DATE", "mode": "REQUIRED"}]},
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
    let config: weir::job::BigQueryConfig = toml::from_str(&format!(
        "project = \"local\"\ndataset = \"{dataset}\"\nendpoint = \"{}\"\nauth = \"none\"",
        bq_endpoint()
    ))
    .unwrap();
    let lake_dir = p.lake();
    let (lake, log) = lake_at(&lake_dir, format!("file://{}", lake_dir.display()));
    let dest = weir::load::bigquery::BigQuery::new(&config, "ecommerce", lake);
    let (first, second, file) = runtime().block_on(async {
        use weir::commit::CommitStore;
        use weir::load::Destination;
        let mut c = log.commits().await.unwrap().remove(0);
        c.rows.retain(|t, _| t == "sales");
        let file = c
            .files
            .iter()
            .find(|f| f.table == "sales")
            .unwrap()
            .path
            .clone();
        let first = dest.load(&c).await.unwrap_err().to_string();
        let second = dest.load(&c).await.unwrap_err().to_string();
        (first, second, file)
    });
    for err in [&first, &second] {
        assert!(err.contains(&file), "the error names the file: {err}");
    }
    // Each attempt was its own load job: the failed one is kept, the retry has the next id.
    let lake = lake_id(&p.lake());
    for id in ["", "_r1"] {
        let job: serde_json::Value = runtime().block_on(async {
            reqwest::get(format!(
                "{api}/jobs/weir_{dataset}_ecommerce_{lake}_sales_1_0{id}"
            ))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
        });
        assert_eq!(job["status"]["state"], "DONE", "{id}: {job}");
        assert!(!job["status"]["errorResult"].is_null(), "{id}: {job}");
    }
    let rows = bq(&format!("SELECT count(*) FROM `local.{dataset}.sales`"));
    assert_eq!(rows, [["0".to_string()]], "a failed load job loads nothing");
}

#[test]
fn a_failed_postgres_copy_rolls_the_whole_batch_back_and_the_retry_loads_it_once() {
    let p = Project::ecommerce(2_000, 1, BATCHES);
    run(weir().args(["run", "--quiet"]).arg(p.job()), true);
    let schema = unique("weir_it_tx");
    let tables = sample_tables();
    // `funnel` exists with the right columns but a constraint every row breaks.
    let funnel = tables.iter().find(|t| t.name == "funnel").unwrap();
    let cols =
        weir::load::catalog::mapped_columns("postgres", weir::load::Warehouse::Postgres, funnel)
            .unwrap();
    let ledger = weir::load::postgres::wire::Ledger::new(&schema, "unused");
    let create = ledger.create_table("funnel", &cols).replacen(
        " (\n",
        " (\n    CONSTRAINT no_views CHECK (views < 0),\n",
        1,
    );
    pg(&format!("{}; {create}", ledger.create_schema()));

    let config: weir::job::PostgresConfig =
        toml::from_str(&format!("url = \"{}\"\nschema = \"{schema}\"", pg_url())).unwrap();
    let lake_dir = p.lake();
    let (lake, log) = lake_at(&lake_dir, format!("file://{}", lake_dir.display()));
    let dest = weir::load::postgres::Postgres::new(&config, "ecommerce", lake);
    use weir::commit::CommitStore;
    use weir::load::Destination;
    let rt = runtime();
    let commits = rt.block_on(log.commits()).unwrap();
    rt.block_on(dest.prepare(&tables)).unwrap();
    let err = rt.block_on(dest.load(&commits[0])).unwrap_err().to_string();
    assert!(
        err.contains("no_views"),
        "the server's reason is reported: {err}"
    );
    let counts = |t: &str| pg(&format!("SELECT count(*) FROM \"{schema}\".\"{t}\""))[0][0].clone();
    assert_eq!(
        counts("sales"),
        "0",
        "sales was copied in the failed transaction"
    );
    assert_eq!(counts("_weir_loads"), "0");

    pg(&format!(
        "ALTER TABLE \"{schema}\".funnel DROP CONSTRAINT no_views"
    ));
    for c in &commits {
        rt.block_on(dest.load(c)).unwrap();
        rt.block_on(dest.load(c)).unwrap(); // again: the ledger skips it
    }
    for (table, aggs) in CHECKS {
        let want = lake_numbers(&lake_dir, table, aggs);
        let got = numbers(pg(&format!("SELECT {aggs} FROM \"{schema}\".\"{table}\"")));
        assert_close(&format!("PostgreSQL {table}"), &got, &want);
    }
}

#[test]
fn a_destination_added_later_is_backfilled_once_and_a_new_lake_loads_again() {
    let w = Warehouses::new();
    // A lake filled (and compacted) before any warehouse was configured.
    let p = Project::ecommerce(EVENTS, 3, BATCHES);
    let out = run_job(&p);
    assert!(out.contains("small files merged"), "{out}");
    let last = last_commit(&p);
    assert!(last > 4);
    // Now the target loads into PostgreSQL, BigQuery and Glue: they start from the tables'
    // snapshot, recorded in the ledger as one load at the last committed batch.
    let job = std::fs::read_to_string(p.job()).unwrap();
    std::fs::write(
        p.job(),
        replace_section(&job, "[targets.local]", &w.target(&pg_url())),
    )
    .unwrap();
    let out = run_job(&p);
    assert!(out.contains("nothing new to read"), "{out}");
    assert_warehouses_match_lake(&p, &w);
    let ledger = pg(&format!(
        "SELECT DISTINCT batch FROM \"{}\"._weir_loads WHERE job = 'ecommerce'",
        w.schema
    ));
    assert_eq!(ledger, [[last.to_string()]]);
    for d in ["postgres", "bigquery", "glue"] {
        assert_eq!(cursor(&p, d), last, "{d}");
    }
    // Running again loads nothing twice; new events follow as batches.
    run_job(&p);
    assert_warehouses_match_lake(&p, &w);
    add_events(&p, 2_000, 99);
    run_job(&p);
    assert_warehouses_match_lake(&p, &w);

    // A new lake for the same job (the old one moved away): its batches load again, beside the
    // old lake's rows, instead of being taken for loaded.
    let lake_rows = lake_numbers(&p.lake(), "sales", "count(*)");
    std::fs::rename(p.lake(), p.root().join("old-lake")).unwrap();
    run_job(&p);
    let got = numbers(pg(&format!("SELECT count(*) FROM \"{}\".sales", w.schema)));
    assert_close("PostgreSQL after a new lake", &got, &[lake_rows[0] * 2.0]);
    let got = numbers(bq(&format!(
        "SELECT count(*) FROM `local.{}.sales`",
        w.dataset
    )));
    assert_close("BigQuery after a new lake", &got, &[lake_rows[0] * 2.0]);
}

#[test]
fn a_batch_that_fails_for_good_is_parked_and_loads_go_on_then_retry_loads_it_once() {
    let w = Warehouses::new();
    let p = Project::ecommerce(3_000, 1, BATCHES);
    let job = std::fs::read_to_string(p.job()).unwrap();
    let target = format!(
        "source = {{ kind = \"files\", path = \"data/events/*.jsonl*\" }}\nlake = \"lake\"\n\
         postgres = {{ url = \"{}\", schema = \"{}\" }}\n\
         loads = {{ attempts = 2, backoff = \"50ms\", max_backoff = \"100ms\" }}",
        pg_url(),
        w.schema
    );
    std::fs::write(p.job(), replace_section(&job, "[targets.local]", &target)).unwrap();
    run_job(&p);
    let bad_event = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":"2025-06-01T10:00:00Z","event_type":"purchase","user_id":7,"product_id":1,"quantity":999,"price":"1.00","order_id":"o-{id}"}}"#
        ) + "\n"
    };
    let constrain = || {
        pg(&format!(
            "ALTER TABLE \"{}\".sales ADD CONSTRAINT no_999 CHECK (quantity < 999) NOT VALID",
            w.schema
        ))
    };
    constrain();
    p.write("data/events/zz-bad.jsonl", &bad_event("bad-1"));
    let out = run_job(&p);
    assert!(out.contains("parked   postgres 1 batch "), "{out}");
    let bad_batch = last_commit(&p);
    assert!(
        cursor(&p, "postgres") >= bad_batch,
        "the cursor goes past it"
    );

    let status = stdout(&run(&mut weir_cmd(&p, &["status"]), true));
    assert!(
        status.contains("1 parked batch (see `weir loads`)"),
        "{status}"
    );
    let listed = stdout(&run(&mut weir_cmd(&p, &["loads"]), true));
    assert!(listed.contains(&format!("batch {bad_batch}")), "{listed}");
    assert!(listed.contains("no_999"), "the server's reason: {listed}");

    // The next batches load while it is parked.
    add_events(&p, 500, 9);
    run_job(&p);
    assert_eq!(cursor(&p, "postgres"), last_commit(&p));
    let loaded = |batch: u64, table: &str| {
        pg(&format!(
            "SELECT count(*) FROM \"{}\"._weir_loads WHERE batch = {batch} AND table_name = '{table}'",
            w.schema
        ))[0][0]
            != "0"
    };
    assert!(loaded(last_commit(&p), "sales") && !loaded(bad_batch, "sales"));
    // The update output's rows of the parked batch were loaded (in order), not parked.
    assert!(loaded(bad_batch, "stock"), "stock of the parked batch");

    // Fixed: retried once, loaded exactly once.
    pg(&format!(
        "ALTER TABLE \"{}\".sales DROP CONSTRAINT no_999",
        w.schema
    ));
    let unknown = run(
        &mut weir_cmd(&p, &["loads", "retry", "--destination", "redshift"]),
        false,
    );
    assert!(
        stderr(&unknown).contains("it has: postgres"),
        "{}",
        stderr(&unknown)
    );
    let retried = stdout(&run(
        &mut weir_cmd(&p, &["loads", "retry", "--destination", "postgres"]),
        true,
    ));
    assert!(
        retried.contains(&format!("batch {bad_batch} loaded")),
        "{retried}"
    );
    let again = stdout(&run(
        &mut weir_cmd(&p, &["loads", "retry", "--destination", "postgres"]),
        true,
    ));
    assert!(again.contains("nothing parked"), "{again}");
    assert_ledger_exact(&p, &w);
    let sales = |filter: &str| {
        let lake = duckdb(&format!(
            "SELECT count(*), sum(revenue) FROM {} {filter}",
            lake_table(&p.lake(), "sales")
        ));
        let pg = pg(&format!(
            "SELECT count(*), sum(revenue) FROM \"{}\".sales {filter}",
            w.schema
        ));
        (lake[0].clone(), pg[0].join(","))
    };
    let (lake, pg_sales) = sales("");
    assert_eq!(lake, pg_sales, "PostgreSQL vs the lake after the retry");

    // Given up on purpose: recorded, and the destination stays without it.
    constrain();
    p.write("data/events/zz-bad2.jsonl", &bad_event("bad-2"));
    run_job(&p);
    let vague = run(
        &mut weir_cmd(&p, &["loads", "skip", "--destination", "postgres"]),
        false,
    );
    assert!(stderr(&vague).contains("--all"), "{}", stderr(&vague));
    run(
        &mut weir_cmd(&p, &["loads", "skip", "--destination", "postgres", "--all"]),
        true,
    );
    let listed = stdout(&run(&mut weir_cmd(&p, &["loads"]), true));
    assert!(listed.contains("nothing parked"), "{listed}");
    assert!(listed.contains("1 batches given up earlier"), "{listed}");
    let (lake, pg_sales) = sales("WHERE event_id <> 'bad-2'");
    assert_eq!(lake, pg_sales);
    assert_eq!(
        pg(&format!(
            "SELECT count(*) FROM \"{}\".sales WHERE event_id = 'bad-2'",
            w.schema
        )),
        [["0".to_string()]]
    );
}
