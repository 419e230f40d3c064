//! Per-stage benchmarks of the standard job: decode (JSON -> Arrow), transform (the ecommerce SQL),
//! write (Parquet zstd to a local lake), one end-to-end pipeline run, and the sample models'
//! scoring (rows scored per second, chunks of 8,192 rows).
//! Run: cargo bench --bench stages   (events per iteration: WEIR_BENCH_EVENTS, default 100000)

use std::path::PathBuf;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::decode::Decoder;
use weir::generate::{self, Options};
use weir::job::Job;
use weir::pipeline::{Pipeline, RunOptions};
use weir::sink::lake::Lake;
use weir::sink::{BatchOutput, Sink};
use weir::source::{Position, RawChunk};
use weir::transform::Transforms;

fn events() -> u64 {
    std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A project dir with generated data and the repo's job and SQL.
fn setup(n: u64) -> (tempfile::TempDir, Job) {
    let dir = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    generate::write(
        &dir.path().join("data"),
        &Options {
            events: n,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("sql/ecommerce")).unwrap();
    for f in ["sales", "funnel", "revenue", "stock", "carts"] {
        std::fs::copy(
            repo.join(format!("sql/ecommerce/{f}.sql")),
            dir.path().join(format!("sql/ecommerce/{f}.sql")),
        )
        .unwrap();
    }
    let job = std::fs::read_to_string(repo.join("jobs/ecommerce.toml")).unwrap();
    let job = job
        .replace("max_records = 200000", "max_records = 1000000000")
        .replace("64MiB", "4GiB");
    let path = dir.path().join("jobs/ecommerce.toml");
    std::fs::write(&path, job).unwrap();
    for m in ["cart_propensity", "demand_forecast"] {
        std::fs::create_dir_all(dir.path().join("models")).unwrap();
        std::fs::copy(
            repo.join(format!("models/{m}.onnx")),
            dir.path().join(format!("models/{m}.onnx")),
        )
        .unwrap();
    }
    let job = Job::load(&path).unwrap();
    (dir, job)
}

fn chunks(dir: &std::path::Path) -> Vec<RawChunk> {
    let text = std::fs::read(dir.join("data/events/part-00000.jsonl")).unwrap();
    let data = Bytes::from(text);
    let mut out = Vec::new();
    let (mut bounds, mut positions, mut start, mut base) = (Vec::new(), Vec::new(), 0usize, 0usize);
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            bounds.push(((start - base) as u32, (i - base) as u32));
            positions.push(Position::Line(positions.len() as u64 + 1));
            start = i + 1;
            if bounds.len() == 8192 {
                out.push(RawChunk {
                    shard: "f".into(),
                    data: data.slice(base..start),
                    bounds: std::mem::take(&mut bounds),
                    positions: std::mem::take(&mut positions),
                    rejected: vec![],
                    arrived_ms: None,
                    input_bytes: 0,
                    buffers: None,
                });
                base = start;
            }
        }
    }
    if !bounds.is_empty() {
        out.push(RawChunk {
            shard: "f".into(),
            data: data.slice(base..start),
            bounds,
            positions,
            rejected: vec![],
            arrived_ms: None,
            input_bytes: 0,
            buffers: None,
        });
    }
    out
}

fn stages(c: &mut Criterion) {
    let n = events();
    let (dir, job) = setup(n);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = chunks(dir.path());
    let mut g = c.benchmark_group("stages");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));

    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut d = Decoder::new(&job.input);
            raw.iter().map(|c| d.decode(c).records).sum::<usize>()
        })
    });

    let mut d = Decoder::new(&job.input);
    let events: Vec<_> = raw.iter().flat_map(|c| d.decode(c).batches).collect();
    let transforms = rt.block_on(Transforms::load(&job)).unwrap();
    g.bench_function("transform", |b| {
        b.iter(|| rt.block_on(transforms.run(events.clone())).unwrap())
    });

    let outputs = rt.block_on(transforms.run(events.clone())).unwrap();
    let lake_dir = dir.path().join("bench-lake");
    let lake = rt
        .block_on(Lake::open(&lake_dir.display().to_string(), &job))
        .unwrap();
    let schemas: Vec<_> = outputs
        .iter()
        .map(|o| (o.name.clone(), o.schema.clone()))
        .collect();
    rt.block_on(lake.prepare(&schemas)).unwrap();
    // Each iteration is a new batch (a batch already in a table is not written again).
    let mut batch = 0;
    g.bench_function("write", |b| {
        b.iter(|| {
            batch += 1;
            rt.block_on(lake.write(&BatchOutput {
                job: &job.name,
                batch,
                tables: &outputs,
                dead_letters: &[],
                replayed: &[],
                late: &[],
                replay: false,
            }))
            .unwrap()
        })
    });

    g.bench_function("end_to_end", |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(dir.path().join("lake"));
            let p = rt
                .block_on(Pipeline::open(job.clone(), &RunOptions::default()))
                .unwrap();
            let s = rt.block_on(p.run(std::future::pending())).unwrap();
            assert_eq!(s.records, n);
        })
    });
    g.finish();
}

/// Rows scored per second by each sample model, one call per 8,192 rows (a DataFusion batch).
fn models(c: &mut Criterion) {
    use datafusion::arrow::array::{ArrayRef, Float32Array};
    use std::sync::Arc;
    use weir::model::{Model, ModelSpec};
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rows = 8192;
    let mut g = c.benchmark_group("model");
    g.throughput(Throughput::Elements(rows as u64));
    for (name, k) in [("cart_propensity", 4), ("demand_forecast", 3)] {
        let spec = ModelSpec {
            name: name.into(),
            path: repo.join(format!("models/{name}.onnx")),
            output: None,
            index: 0,
        };
        let model = Model::load("bench", &spec).unwrap();
        let args: Vec<ArrayRef> = (0..k)
            .map(|j| {
                Arc::new(Float32Array::from_iter_values(
                    (0..rows).map(|i| ((i * (j + 3)) % 24) as f32 + 1.0),
                )) as ArrayRef
            })
            .collect();
        g.bench_function(name, |b| b.iter(|| model.score(&args).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, stages, models);
criterion_main!(benches);
