//! `weir loads`: the batches a destination parked after failing for good, and what to do with
//! them: `retry` loads them again (exactly once, through the destination's ledger or job ids),
//! `skip` gives them up on purpose (recorded under `_weir/<job>/skipped/`).

use std::path::PathBuf;
use std::process::ExitCode;

use super::job_path;
use crate::job::Job;
use crate::load::parked::{Parked, ParkedStore};
use crate::load::{LakeFiles, destinations, warehouses};
use crate::sink::lake::{Lake, Layout};
use crate::storage::Location;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub at: At,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which job, target and lake.
#[derive(Debug, clap::Args)]
pub struct At {
    /// Job file (jobs/<name>.toml, or just <name>).
    #[arg(required = true)]
    pub job: Option<PathBuf>,
    /// Target (default: the job's default_target, else "local").
    #[arg(long, short)]
    pub target: Option<String>,
    /// Use this lake (folder or URL) instead of the target's.
    #[arg(long)]
    pub lake: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Load parked batches again, oldest first, each exactly once; those that fail stay parked
    /// with the new error.
    Retry(Pick),
    /// Give parked batches up on purpose: they are recorded under `_weir/<job>/skipped/` and no
    /// longer hold back compaction.
    Skip(Pick),
}

#[derive(Debug, clap::Args)]
pub struct Pick {
    #[command(flatten)]
    pub at: At,
    /// The destination, as `weir status` names it: glue, redshift, postgres, bigquery.
    #[arg(long, short)]
    pub destination: String,
    /// Only this batch (default: every parked batch of the destination for retry).
    #[arg(long, short)]
    pub batch: Option<u64>,
    /// Skip: every parked batch of the destination (without --batch, skip asks for this).
    #[arg(long)]
    pub all: bool,
}

struct Opened {
    job: Job,
    target: String,
    lake: String,
    store: ParkedStore,
    names: Vec<&'static str>,
}

async fn open(at: &At) -> anyhow::Result<Opened> {
    let job = Job::load(job_path(at.job.as_ref().expect("clap requires the job")))?;
    let target = job.target(at.target.as_deref())?;
    let lake = at.lake.clone().unwrap_or(target.lake.clone());
    let location = Location::parse(&lake)?;
    let state = location.path(&Layout::new(&job.name).state());
    let store = ParkedStore::new(location.store.clone(), state);
    let names = warehouses(target).into_iter().map(|w| w.key()).collect();
    Ok(Opened {
        target: target.name.clone(),
        job,
        lake,
        store,
        names,
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        None => list(&args.at, args.json).await,
        Some(Action::Retry(pick)) => retry(&pick).await,
        Some(Action::Skip(pick)) => skip(&pick).await,
    }
}

async fn list(at: &At, json: bool) -> anyhow::Result<ExitCode> {
    let o = open(at).await?;
    let mut parked = Vec::new();
    let mut skipped = 0;
    for name in &o.names {
        parked.extend(o.store.parked(name).await.map_err(anyhow::Error::msg)?);
        skipped += o
            .store
            .skipped(name)
            .await
            .map_err(anyhow::Error::msg)?
            .len();
    }
    if json {
        let rows: Vec<_> = parked
            .iter()
            .map(|p| {
                serde_json::json!({
                    "destination": p.destination, "batch": p.batch, "error": p.error,
                    "attempts": p.attempts, "parked_at": p.parked_at,
                    "snapshot": p.record.backfill,
                })
            })
            .collect();
        let out = serde_json::json!({
            "job": o.job.name, "target": o.target, "lake": o.lake,
            "parked": rows, "skipped": skipped,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("weir loads {} (target {})", o.job.name, o.target);
    if o.names.is_empty() {
        println!("  no destination configured for this target");
    }
    if parked.is_empty() && !o.names.is_empty() {
        println!("  nothing parked: every committed batch is loaded or on its way");
    }
    for p in &parked {
        println!(
            "  {:<10} batch {}{}  parked {} after {} attempts",
            p.destination,
            p.batch,
            if p.record.backfill { " (snapshot)" } else { "" },
            p.parked_at.format("%Y-%m-%d %H:%M:%S UTC"),
            p.attempts
        );
        println!("             {}", p.error);
    }
    if !parked.is_empty() {
        println!(
            "  fix the cause, then: weir loads retry {} --destination D [--batch N]; or give them up: weir loads skip ... --batch N",
            o.job.file.display()
        );
    }
    if skipped > 0 {
        println!(
            "  {skipped} batches given up earlier (_weir/{}/skipped/)",
            o.job.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The parked batches `pick` names; an error names the valid destinations or batches.
async fn picked(o: &Opened, pick: &Pick) -> anyhow::Result<Vec<Parked>> {
    if !o.names.contains(&pick.destination.as_str()) {
        anyhow::bail!(
            "no destination \"{}\" in target {}; it has: {}",
            pick.destination,
            o.target,
            if o.names.is_empty() {
                "none".to_string()
            } else {
                o.names.join(", ")
            }
        );
    }
    let parked = o
        .store
        .parked(&pick.destination)
        .await
        .map_err(anyhow::Error::msg)?;
    let chosen: Vec<Parked> = parked
        .iter()
        .filter(|p| pick.batch.is_none_or(|b| p.batch == b))
        .cloned()
        .collect();
    if let (Some(b), true) = (pick.batch, chosen.is_empty()) {
        let all: Vec<String> = parked.iter().map(|p| p.batch.to_string()).collect();
        anyhow::bail!(
            "batch {b} is not parked for {}; parked: {}",
            pick.destination,
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join(", ")
            }
        );
    }
    Ok(chosen)
}

async fn retry(pick: &Pick) -> anyhow::Result<ExitCode> {
    let o = open(&pick.at).await?;
    let chosen = picked(&o, pick).await?;
    if chosen.is_empty() {
        println!("nothing parked for {}", pick.destination);
        return Ok(ExitCode::SUCCESS);
    }
    let target = o.job.target(Some(&o.target))?;
    let lake = Lake::open(&o.lake, &o.job).await?;
    let files = LakeFiles::new(lake.location(), lake.id());
    let dest = destinations(&o.job, target, &files)
        .into_iter()
        .find(|d| d.name() == pick.destination)
        .expect("a configured destination");
    let mut failed = 0;
    for p in chosen {
        match dest.load(&p.record).await {
            Ok(()) => {
                o.store.forget(&p.destination, &p.record).await?;
                println!("{}: batch {} loaded", p.destination, p.batch);
            }
            Err(e) => {
                failed += 1;
                println!("{}: batch {} failed again: {e}", p.destination, p.batch);
                let again = Parked {
                    error: e.to_string(),
                    attempts: p.attempts + 1,
                    ..p
                };
                o.store.park(&again).await?;
            }
        }
    }
    Ok(if failed > 0 {
        eprintln!("{failed} batches are still parked; see `weir loads`");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn skip(pick: &Pick) -> anyhow::Result<ExitCode> {
    if pick.batch.is_none() && !pick.all {
        anyhow::bail!(
            "say which batches to give up: --batch N, or --all for every parked batch of {}",
            pick.destination
        );
    }
    let o = open(&pick.at).await?;
    for p in picked(&o, pick).await? {
        o.store.skip(&p).await?;
        println!(
            "{}: batch {} given up (recorded in _weir/{}/skipped/{}/)",
            p.destination, p.batch, o.job.name, p.destination
        );
    }
    Ok(ExitCode::SUCCESS)
}
