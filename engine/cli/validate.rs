//! `weir validate`: check the job and plan every transform; no data is read.

use std::path::PathBuf;
use std::process::ExitCode;

use super::job_path;
use crate::job::Job;
use crate::load::types::check_schema;
use crate::load::warehouses;
use crate::transform::Transforms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>).
    pub job: PathBuf,
    /// Also check that this target exists (default: all targets are parsed anyway).
    #[arg(long, short)]
    pub target: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let job = Job::load(job_path(&args.job))?;
    job.target(args.target.as_deref())?;
    let transforms = Transforms::load(&job).await?;
    // Every output column must have a faithful type in every warehouse a target loads into.
    let targets: Vec<&crate::job::Target> = match &args.target {
        Some(_) => vec![job.target(args.target.as_deref())?],
        None => job.targets.values().collect(),
    };
    for target in &targets {
        let into = warehouses(target);
        for (t, schema) in transforms.transforms.iter().zip(&transforms.schemas) {
            check_schema(&into, &t.file.display().to_string(), &t.name, schema)
                .map_err(|e| anyhow::anyhow!("target {}: {e}", target.name))?;
        }
    }
    println!("{}: ok", job.file.display());
    println!(
        "  input    {:?}, {} columns; micro-batches of at most {} records, {} bytes, {:?}; a file run commits {} at once",
        job.input.format,
        job.input.schema.columns.len(),
        job.batch.max_records,
        job.batch.max_bytes,
        job.batch.max_age,
        job.batch.commit_every
    );
    for m in &transforms.models {
        println!("  model    {}", m.describe());
    }
    for (t, schema) in transforms.transforms.iter().zip(&transforms.schemas) {
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        let spec = job.output(&t.name);
        let parts = if spec.partition_by.is_empty() {
            String::new()
        } else {
            format!(" partitioned by {}", spec.partition_by.join(", "))
        };
        let emit = match (&spec.emit, transforms.update_keys(&t.name)) {
            (crate::job::Emit::Window(w), _) => format!(
                " (window on {}, {:?}, lateness {:?})",
                w.column, w.size, w.lateness
            ),
            (_, Some([])) => " (update, one row)".to_string(),
            (_, Some(keys)) => format!(" (update, one row per {})", keys.join(", ")),
            _ => String::new(),
        };
        println!(
            "  {:<9} {}{}{}: {}",
            t.name,
            t.file.display(),
            parts,
            emit,
            cols.join(", ")
        );
    }
    let dashboards = job.root.join("dashboards");
    if dashboards.is_dir() {
        let checked = check_dashboards(&dashboards, &job, &transforms).await?;
        println!(
            "  dashboards {}: {}",
            dashboards.display(),
            checked.join(", ")
        );
    }
    for target in targets {
        let into: Vec<&str> = warehouses(target).iter().map(|w| w.label()).collect();
        println!(
            "  target   {}: lake {}{}",
            target.name,
            target.lake,
            if into.is_empty() {
                String::new()
            } else {
                format!(", loads into {}", into.join(", "))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Plans every dashboard panel against the tables the job will write (empty), so a bad one is
/// found before the job runs; returns "name (N panels)" for each.
async fn check_dashboards(
    dir: &std::path::Path,
    job: &Job,
    transforms: &Transforms,
) -> anyhow::Result<Vec<String>> {
    use crate::sink::lake::{DEAD_LETTERS, LATE, dead_letters, late};
    use datafusion::datasource::MemTable;
    use std::sync::Arc;
    let ctx = datafusion::prelude::SessionContext::new();
    let mut tables: Vec<(String, arrow::datatypes::SchemaRef)> = transforms
        .transforms
        .iter()
        .zip(&transforms.schemas)
        .map(|(t, s)| (t.name.clone(), s.clone()))
        .collect();
    // A window output's open windows, as `weir run --serve` shows them.
    for (name, schema) in transforms.window_outputs() {
        tables.push((crate::serve::open_table(&name), schema));
    }
    tables.push((DEAD_LETTERS.into(), dead_letters::schema()));
    if job.outputs.values().any(|o| o.window().is_some()) {
        tables.push((LATE.into(), late::schema()));
    }
    for (name, schema) in tables {
        ctx.register_table(
            name.as_str(),
            Arc::new(MemTable::try_new(schema, vec![vec![]])?),
        )?;
    }
    let d = crate::serve::dashboards::Dashboards::load(dir, &ctx).await?;
    Ok(d.by_name
        .values()
        .map(|d| format!("{} ({} panels)", d.name, d.panels.len()))
        .collect())
}
