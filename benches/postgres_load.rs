//! PostgreSQL loading, side by side on the same rows (README "Benchmarks"):
//!
//! * **weir**: the Postgres destination loading each committed batch: its Parquet files read back
//!   and streamed with `COPY ... FROM STDIN (FORMAT binary)`, one transaction per batch with the
//!   load ledger;
//! * **seed**: the pipeline Weir replaces: one `INSERT` per record, committing every 500.
//!
//! Both load the same appended tables of the sample job (plus a pass-through `all_events`; not the
//! update output `stock`, which the seed pipeline has no counterpart of) run over
//! generated events, into fresh schemas of the local server.
//!
//! Usage: `cargo bench --bench postgres_load -- [EVENTS]` (default 200000);
//! `WEIR_BENCH_POSTGRES` overrides `postgres://postgres@127.0.0.1:5432/test`.

use std::path::Path;
use std::time::Instant;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_postgres::types::{ToSql, Type};
use weir::commit::{CommitStore, ObjectCommitStore};
use weir::job::Job;
use weir::load::postgres::wire::{self, quote_ident};
use weir::load::types::column_type;
use weir::load::{Destination, LakeFiles, OutputTable, Warehouse};
use weir::pipeline::{Pipeline, RunOptions};

const SEED_COMMIT_EVERY: usize = 500;

fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let url = std::env::var("WEIR_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench(events, &url));
}

async fn bench(events: u64, url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::create_dir_all(root.join("sql/ecommerce")).unwrap();
    // The appended tables only: the seed pipeline has no counterpart of an update output.
    for e in std::fs::read_dir(repo.join("sql/ecommerce")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "stock.sql" {
            std::fs::copy(e.path(), root.join("sql/ecommerce").join(e.file_name())).unwrap();
        }
    }
    std::fs::write(
        root.join("sql/ecommerce/all_events.sql"),
        "SELECT * FROM events",
    )
    .unwrap();
    let job = std::fs::read_to_string(repo.join("jobs/ecommerce.toml")).unwrap();
    let job: Vec<&str> = job
        .split("\n\n")
        .filter(|block| !block.starts_with("[outputs.stock]"))
        .collect();
    std::fs::write(root.join("jobs/ecommerce.toml"), job.join("\n\n")).unwrap();
    let opts = weir::generate::Options {
        events,
        files: 2,
        ..Default::default()
    };
    weir::generate::write(&root.join("data"), &opts).unwrap();

    // The lake, by Weir's own pipeline (no warehouse configured).
    let job = Job::load(root.join("jobs/ecommerce.toml")).unwrap();
    let pipeline = Pipeline::open(job.clone(), &RunOptions::default())
        .await
        .unwrap();
    let summary = pipeline.run(std::future::pending()).await.unwrap();
    let rows: u64 = summary.rows.values().sum();
    let lake_url = root.join("lake").display().to_string();
    let lake = weir::sink::lake::Lake::open(&lake_url, &job).await.unwrap();
    let commits =
        ObjectCommitStore::new(lake.store(), lake.path(&lake.layout().state()), "ecommerce")
            .commits()
            .await
            .unwrap();
    let transforms = weir::transform::Transforms::load(&job).await.unwrap();
    let tables = OutputTable::of(&job, &transforms);
    println!(
        "{events} events -> {rows} rows in {} tables, {} batches",
        tables.len(),
        commits.len()
    );

    // The Postgres destination into `schema`, its tables created.
    let destination = async |schema: &str| {
        let config: weir::job::PostgresConfig =
            toml::from_str(&format!("url = \"{url}\"\nschema = \"{schema}\"")).unwrap();
        let lake = LakeFiles::new(lake.location(), lake.id());
        let dest = weir::load::postgres::Postgres::new(&config, "ecommerce", lake);
        dest.prepare(&tables).await.unwrap();
        dest
    };

    // Weir: binary COPY, one transaction per batch with the ledger.
    let schema = format!("weir_bench_{}", std::process::id());
    let dest = destination(&schema).await;
    let started = Instant::now();
    for c in &commits {
        dest.load(c).await.unwrap();
    }
    let weir_secs = started.elapsed().as_secs_f64();

    // Seed: an INSERT per record, COMMIT every 500, into identical empty tables.
    let seed_schema = format!("{schema}_seed");
    destination(&seed_schema).await;
    let mut client = wire::connect("postgres", url, "PGPASSWORD").await.unwrap();
    let started = Instant::now();
    let mut inserted = 0u64;
    for c in &commits {
        for f in c.files.iter().filter(|f| !f.table.starts_with('_')) {
            let data = lake.store().get(&lake.path(&f.path)).await.unwrap();
            let data = data.bytes().await.unwrap();
            inserted += insert_rows(&mut client, &seed_schema, &f.table, data).await;
        }
    }
    let seed_secs = started.elapsed().as_secs_f64();
    assert_eq!(inserted, rows, "both paths load the same rows");

    for s in [&schema, &seed_schema] {
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {0}.sales) + (SELECT count(*) FROM {0}.funnel) + (SELECT count(*) FROM {0}.revenue) + (SELECT count(*) FROM {0}.all_events)",
                    quote_ident(s)
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n as u64, rows, "rows in {s}");
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(s)))
            .await
            .unwrap();
    }
    println!(
        "weir  binary COPY + ledger : {rows} rows in {weir_secs:.2} s = {:>10.0} rows/s",
        rows as f64 / weir_secs
    );
    println!(
        "seed  INSERT per row, COMMIT every {SEED_COMMIT_EVERY}: {rows} rows in {seed_secs:.2} s = {:>10.0} rows/s",
        rows as f64 / seed_secs
    );
    println!("speed-up {:.1}x", seed_secs / weir_secs);
}

/// The seed's way: each row an INSERT with text parameters cast by the server.
async fn insert_rows(
    client: &mut tokio_postgres::Client,
    schema: &str,
    table: &str,
    data: bytes::Bytes,
) -> u64 {
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
        .unwrap()
        .build()
        .unwrap();
    let mut n = 0u64;
    let mut statement = None;
    client.batch_execute("BEGIN").await.unwrap();
    for batch in reader {
        let batch = batch.unwrap();
        let fields = batch.schema().fields().clone();
        if statement.is_none() {
            let cols: Vec<String> = fields.iter().map(|f| quote_ident(f.name())).collect();
            let values: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let ty = column_type(Warehouse::Postgres, f.data_type()).unwrap();
                    format!("${}::{ty}", i + 1)
                })
                .collect();
            let sql = format!(
                "INSERT INTO {}.{} ({}) VALUES ({})",
                quote_ident(schema),
                quote_ident(table),
                cols.join(", "),
                values.join(", ")
            );
            let types = vec![Type::TEXT; cols.len()];
            statement = Some(client.prepare_typed(&sql, &types).await.unwrap());
        }
        let statement = statement.as_ref().unwrap();
        let options = FormatOptions::default();
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let values: Vec<Option<String>> = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(c, f)| (!c.is_null(row)).then(|| f.value(row).to_string()))
                .collect();
            let params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            client.execute(statement, &params).await.unwrap();
            n += 1;
            if n.is_multiple_of(SEED_COMMIT_EVERY as u64) {
                client.batch_execute("COMMIT; BEGIN").await.unwrap();
            }
        }
    }
    client.batch_execute("COMMIT").await.unwrap();
    n
}
