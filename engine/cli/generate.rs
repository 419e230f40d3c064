//! `weir generate`: deterministic sample data for local runs, tests and benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use super::thousands;
use crate::generate::{Options, write};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of events.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Output folder: events/part-NNNNN.jsonl and products.csv are written there.
    #[arg(long)]
    pub out: PathBuf,
    /// Random seed: the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of products in the catalogue.
    #[arg(long, default_value_t = 200)]
    pub products: u32,
    /// Split the events over this many files.
    #[arg(long, default_value_t = 1)]
    pub files: u32,
    /// Gzip the event files.
    #[arg(long)]
    pub gzip: bool,
    /// Days the events span, from 2025-06-01 (more days at the same number of events: a
    /// quieter shop; models/train.py trains on 60 days).
    #[arg(long, default_value_t = 1)]
    pub days: u32,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = Options {
        events: args.events,
        products: args.products,
        seed: args.seed,
        files: args.files,
        gzip: args.gzip,
        span: chrono::Duration::days(args.days.max(1) as i64),
        ..Default::default()
    };
    let out = args.out.clone();
    let g = tokio::task::spawn_blocking(move || write(&out, &opts)).await??;
    println!(
        "wrote {} events in {} files under {} and {} products to {}",
        thousands(g.events),
        g.event_files.len(),
        args.out.join("events").display(),
        args.products,
        g.products.display()
    );
    Ok(ExitCode::SUCCESS)
}
