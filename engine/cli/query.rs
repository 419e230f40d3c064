//! `weir query`: SQL over the lake, printed as a table, CSV or JSON lines.

use std::path::PathBuf;
use std::process::ExitCode;

use arrow::util::pretty::pretty_format_batches;

use super::job_path;
use crate::job::Job;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The query, e.g. "select dt, sum(revenue) from sales group by dt".
    pub sql: String,
    /// Lake folder or URL (default: the lake of --job's target, else ./lake).
    #[arg(long)]
    pub lake: Option<String>,
    /// Take the lake from this job's target.
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// Target of --job whose lake to read.
    #[arg(long, short)]
    pub target: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let lake = match (&args.lake, &args.job) {
        (Some(l), _) => l.clone(),
        (None, Some(j)) => Job::load(job_path(j))?
            .target(args.target.as_deref())?
            .lake
            .clone(),
        (None, None) => "lake".to_string(),
    };
    let batches = crate::query::query(&lake, &args.sql).await?;
    match args.format {
        Format::Table => println!("{}", pretty_format_batches(&batches)?),
        Format::Csv => {
            let mut w = arrow::csv::Writer::new(std::io::stdout());
            for b in &batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(std::io::stdout());
            for b in &batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
