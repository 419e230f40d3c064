//! `weir test`: each transform run on the fixture input, compared with its golden CSV output.
//! Rows are compared sorted, so transforms need no ORDER BY; `--update` rewrites the golden files.
//! With `[test] batch_records`, the fixture runs in micro-batches, as `weir run` would run it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use arrow::array::RecordBatch;
use tokio::sync::mpsc;

use super::job_path;
use crate::batch::Batch;
use crate::job::{InputFormat, Job};
use crate::pipeline::open_files;
use crate::source::{Checkpoint, ChunkLimits, Source};
use crate::transform::Transforms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>).
    pub job: PathBuf,
    /// Rewrite the golden files with the current outputs.
    #[arg(long)]
    pub update: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let job = Job::load(job_path(&args.job))?;
    let transforms = Transforms::load(&job).await?;
    let ext = match job.input.format {
        InputFormat::Json => "jsonl",
        InputFormat::Csv => "csv",
    };
    let input = job.fixtures.join(format!("events.{ext}"));
    anyhow::ensure!(
        input.is_file(),
        "{}: fixture input missing; write a few sample events there (test.fixtures in {} sets the folder)",
        input.display(),
        job.file.display()
    );
    let batch = read_fixture(&job, &input).await?;
    let mut outputs: Vec<(String, String)> = Vec::new();
    if !batch.dead.is_empty() {
        let mut lines: Vec<String> = batch
            .dead
            .iter()
            .map(|d| csv_line(&[d.position.to_string(), d.reason.clone()]))
            .collect();
        lines.sort();
        outputs.push((
            "_dead_letters".into(),
            format!("position,reason\n{}", lines.join("")),
        ));
    }
    match job.test_batch_records {
        None => {
            for out in transforms.run(batch.events).await? {
                outputs.push((out.name.clone(), render(&out.batches, &out.schema)?));
            }
        }
        Some(n) => outputs.extend(micro_batches(&job, &transforms, batch.events, n).await?),
    }

    let mut failed = 0;
    for (name, actual) in &outputs {
        let golden = job.fixtures.join(format!("{name}.csv"));
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if args.update {
            std::fs::write(&golden, actual).with_context(|| golden.display().to_string())?;
            println!("updated {}", golden.display());
        } else if !golden.exists() {
            failed += 1;
            println!(
                "FAIL {name}: no golden file {}; run `weir test {} --update` to create it",
                golden.display(),
                args.job.display()
            );
        } else if &expected != actual {
            failed += 1;
            println!("FAIL {name}: output differs from {}", golden.display());
            print_diff(&expected, actual);
        } else {
            println!(
                "ok   {name} ({} rows)",
                actual.lines().count().saturating_sub(1)
            );
        }
    }
    if args.update {
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} passed, {failed} failed", outputs.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The fixture run as `weir run` would, in micro-batches of `n` records (the last one ends the
/// input): per-batch and window outputs are what every batch wrote, an update output its rows
/// after the last batch, and `_late` the rows that came after their window was written.
async fn micro_batches(
    job: &Job,
    transforms: &Transforms,
    events: Vec<RecordBatch>,
    n: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let schema = job.input.schema.table_schema();
    let all = arrow::compute::concat_batches(&schema, &events)?;
    let chunks: Vec<RecordBatch> = (0..all.num_rows().max(1))
        .step_by(n)
        .map(|at| all.slice(at, n.min(all.num_rows() - at)))
        .collect();
    let mut written: Vec<(String, arrow::datatypes::SchemaRef, Vec<RecordBatch>)> = Vec::new();
    // Per update output: each key's row (as CSV lines), replaced batch by batch.
    let mut tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        Default::default();
    let mut late = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let step = transforms
            .step(vec![chunk.clone()], i + 1 == chunks.len())
            .await?;
        for out in step.outputs {
            if let Some(update) = &out.update {
                let table = tables.entry(out.name.clone()).or_default();
                if let Some(gone) = &update.deleted {
                    for key in csv_rows(std::slice::from_ref(gone))? {
                        table.remove(&key);
                    }
                }
                let key_columns: Vec<usize> = update
                    .keys
                    .iter()
                    .filter_map(|k| out.schema.index_of(k).ok())
                    .collect();
                let keys: Vec<RecordBatch> = out
                    .batches
                    .iter()
                    .map(|b| b.project(&key_columns))
                    .collect::<Result<_, _>>()?;
                for (key, row) in csv_rows(&keys)?.into_iter().zip(csv_rows(&out.batches)?) {
                    table.insert(key, row);
                }
            }
            match written.iter_mut().find(|(name, _, _)| *name == out.name) {
                Some((_, _, batches)) => batches.extend(out.batches),
                None => written.push((out.name, out.schema, out.batches)),
            }
        }
        late.extend(step.late);
    }
    let mut outputs = Vec::new();
    for (name, schema, batches) in written {
        let text = match tables.remove(&name) {
            Some(rows) => table_text(&schema, rows.into_values().collect()),
            None => render(&batches, &schema)?,
        };
        outputs.push((name, text));
    }
    if !late.is_empty() {
        let rows = crate::sink::lake::late::to_batch(&job.name, 0, &late)?;
        let rows = rows.project(
            &["output", "window_start", "watermark", "event"]
                .iter()
                .map(|c| rows.schema().index_of(c))
                .collect::<Result<Vec<_>, _>>()?,
        )?;
        outputs.push((
            "_late".into(),
            render(std::slice::from_ref(&rows), &rows.schema())?,
        ));
    }
    Ok(outputs)
}

/// Each row of `batches` as a CSV line (without its newline).
fn csv_rows(batches: &[RecordBatch]) -> anyhow::Result<Vec<String>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut buf);
        for b in batches {
            w.write(b)?;
        }
    }
    Ok(String::from_utf8(buf)?
        .lines()
        .map(str::to_string)
        .collect())
}

async fn read_fixture(job: &Job, input: &Path) -> anyhow::Result<Batch> {
    let limits = ChunkLimits {
        records: 8192,
        bytes: 4 << 20,
    };
    let source = open_files(job, &input.display().to_string(), limits).await?;
    let (tx, rx) = mpsc::channel(4);
    let reader = tokio::spawn(async move { source.read(&Checkpoint::new(), tx).await });
    let batch = Batch::collect(&job.input, rx).await;
    reader.await??;
    Ok(batch)
}

/// CSV with a header and rows sorted, so the comparison ignores row order.
fn render(batches: &[RecordBatch], schema: &arrow::datatypes::SchemaRef) -> anyhow::Result<String> {
    Ok(table_text(schema, csv_rows(batches)?))
}

/// A header and `rows` (CSV lines), sorted.
fn table_text(schema: &arrow::datatypes::SchemaRef, mut rows: Vec<String>) -> String {
    rows.sort_unstable();
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut out = csv_line(&header);
    for r in rows {
        out.push_str(&r);
        out.push('\n');
    }
    out
}

fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

fn print_diff(expected: &str, actual: &str) {
    let diff = similar::TextDiff::from_lines(expected, actual);
    print!(
        "{}",
        diff.unified_diff()
            .context_radius(2)
            .header("golden", "actual")
    );
}
