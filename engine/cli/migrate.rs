//! `weir migrate`: turn a lake written by an earlier Weir (plain Parquet in Hive folders) into
//! Delta tables in place, keeping its commit log; idempotent.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{job_path, thousands};
use crate::commit::{CommitStore, ObjectCommitStore};
use crate::job::Job;
use crate::sink::lake::{DEAD_LETTERS, Lake, dead_letters};
use crate::transform::Transforms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>).
    pub job: PathBuf,
    /// Target whose lake to migrate (default: the job's default_target, else "local").
    #[arg(long, short)]
    pub target: Option<String>,
    /// Migrate this lake (folder or URL) instead of the target's.
    #[arg(long)]
    pub lake: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let job = Job::load(job_path(&args.job))?;
    let target = job.target(args.target.as_deref())?;
    let url = args.lake.clone().unwrap_or(target.lake.clone());
    let transforms = Transforms::load(&job).await?;
    let lake = Lake::open_legacy(&url, &job).await?;
    let lease = lake.take_lease().await?;
    let commits =
        ObjectCommitStore::new(lake.store(), lake.path(&lake.layout().state()), &job.name);
    let committed = commits.recover().await?.last.map_or(0, |c| c.batch);
    let mut tables: Vec<_> = transforms
        .transforms
        .iter()
        .zip(&transforms.schemas)
        .map(|(t, s)| (t.name.clone(), s.clone(), job.output(&t.name).partition_by))
        .collect();
    tables.push((DEAD_LETTERS.to_string(), dead_letters::schema(), Vec::new()));
    let result = lake.migrate(&job.name, committed, &tables).await;
    lease.release().await;
    println!(
        "weir migrate {} (lake {}, last committed batch {committed})",
        job.name,
        lake.url()
    );
    for m in result? {
        match m.files {
            None => println!("  {:<16} already a Delta table", m.table),
            Some(n) => println!(
                "  {:<16} {n} files, {} rows made a Delta table{}",
                m.table,
                thousands(m.rows),
                if m.left_out > 0 {
                    format!(" ({} files of an uncommitted batch left out)", m.left_out)
                } else {
                    String::new()
                }
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
