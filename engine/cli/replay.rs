//! `weir replay`: after the schema or a transform is fixed, the dead letters that match run
//! through the job again as new batches, exactly once; see `Pipeline::replay`.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};

use super::run::print_summary;
use super::{job_path, shutdown_signal, thousands};
use crate::job::Job;
use crate::pipeline::{Pipeline, RunOptions};
use crate::source::dead_letters::{ReplayFilter, count};
use crate::storage::Location;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>).
    pub job: PathBuf,
    /// Target (default: the job's default_target, else "local"); its source is not read.
    #[arg(long, short)]
    pub target: Option<String>,
    /// Use this lake (folder or URL) instead of the target's.
    #[arg(long)]
    pub lake: Option<String>,
    /// Only dead letters whose reason contains this text (case-sensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters written at or after this time (RFC 3339, or a date: 2025-06-01).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// Count what would be replayed, per reason; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| {
            format!("\"{text}\": write RFC 3339 (2025-06-01T12:00:00Z) or a date (2025-06-01)")
        })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let job = Job::load(job_path(&args.job))?;
    let target = job.target(args.target.as_deref())?.clone();
    let lake = args.lake.clone().unwrap_or(target.lake.clone());
    let filter = ReplayFilter {
        reason: args.reason.clone(),
        since: args.since,
    };
    if args.dry_run {
        let counts = count(&Location::parse(&lake)?, &job.name, &filter).await?;
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        println!(
            "weir replay {} --dry-run: {} dead letters would be replayed",
            job.name,
            thousands(total)
        );
        for (reason, n) in counts {
            println!("  {:>9}  {reason}", thousands(n));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let shutdown = shutdown_signal()?;
    let opts = RunOptions {
        target: args.target.clone(),
        input: None,
        lake: args.lake.clone(),
        replay: true,
    };
    let name = job.name.clone();
    tokio::pin!(shutdown);
    let Some(pipeline) = Pipeline::open_unless(job, &opts, &mut shutdown).await? else {
        eprintln!("weir: stopped during start-up; nothing was replayed");
        return Ok(ExitCode::SUCCESS);
    };
    let summary = pipeline.replay(filter, shutdown).await?;
    let back = summary.records - summary.dead_letters;
    print_summary("replay", &name, &target.name, &summary);
    if summary.stopped_early {
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "  replayed {} dead letters: {} came back as rows, {} failed again (new dead letters)",
        thousands(summary.records),
        thousands(back),
        thousands(summary.dead_letters)
    );
    Ok(ExitCode::SUCCESS)
}
