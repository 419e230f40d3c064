//! `weir status`: where a job stands, read from the lake alone (no warehouse is contacted): the last
//! committed batch, and per destination the last loaded batch, how many committed batches wait and
//! how many are parked.

use std::path::PathBuf;
use std::process::ExitCode;

use super::job_path;
use crate::commit::{CommitStore, ObjectCommitStore};
use crate::job::Job;
use crate::load::Cursors;
use crate::load::parked::ParkedStore;
use crate::sink::lake::Layout;
use crate::storage::Location;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>).
    pub job: PathBuf,
    /// Target (default: the job's default_target, else "local").
    #[arg(long, short)]
    pub target: Option<String>,
    /// Read this lake (folder or URL) instead of the target's.
    #[arg(long)]
    pub lake: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let job = Job::load(job_path(&args.job))?;
    let target = job.target(args.target.as_deref())?;
    let lake = args.lake.clone().unwrap_or(target.lake.clone());
    let location = Location::parse(&lake)?;
    let state = location.path(&Layout::new(&job.name).state());
    let store = location.store.clone();
    let commits = ObjectCommitStore::new(store.clone(), state.clone(), &job.name);
    let last = commits.recover().await?.last;
    let committed = last.as_ref().map_or(0, |c| c.batch);
    let cursors = Cursors::new(store.clone(), state.clone());
    let parked_store = ParkedStore::new(store.clone(), state);
    let writers = shard_writers(&location, &job.name).await?;
    let leases = match &target.source {
        crate::job::config::SourceConfig::Kinesis {
            leases: Some(table),
            ..
        } => Some(
            crate::source::kinesis::leases::LeaseTable::connect(table)
                .await
                .scan()
                .await?,
        ),
        _ => None,
    };
    let leased = leases.is_some();
    let mut rows = Vec::new();
    for d in crate::load::warehouses(target) {
        let name = d.key();
        let c = cursors
            .get(name)
            .await
            .map_err(anyhow::Error::msg)?
            .unwrap_or_default();
        // Committed batches after the cursor (ids need not be contiguous).
        let backlog = commits.commits_after(c.batch).await?.len();
        let parked = parked_store
            .parked(name)
            .await
            .map_err(anyhow::Error::msg)?
            .len();
        rows.push((name, c, backlog, parked));
    }
    if args.json {
        let loads: Vec<_> = rows
            .iter()
            .map(|(n, c, b, p)| {
                serde_json::json!({
                    "destination": n, "loaded_batch": c.batch, "loaded_at": c.loaded_at, "backlog": b,
                    "parked": p,
                })
            })
            .collect();
        let out = serde_json::json!({
            "job": job.name, "target": target.name, "lake": lake,
            "committed_batch": committed,
            "committed_at": last.as_ref().map(|c| c.committed_at),
            "loads": loads,
            "windows": last.as_ref().map(|c| &c.windows),
            (if leased { "shards" } else { "lambda_shards" }): writers.iter().map(|(shard, c)| serde_json::json!({
                "shard": shard, "committed_batch": c.batch, "committed_at": c.committed_at,
                "checkpoint": c.checkpoint.get(shard).map(|p| p.to_string()),
            })).collect::<Vec<_>>(),
            "leases": leases.as_ref().map(|ls| ls.iter().map(|l| serde_json::json!({
                "shard": l.shard, "owner": l.owner, "counter": l.counter,
                "checkpoint": l.checkpoint, "checkpoint_sub": l.sub,
                "owner_switches_since_checkpoint": l.owner_switches, "parents": l.parents,
            })).collect::<Vec<_>>()),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("weir status {} (target {})", job.name, target.name);
    println!("  lake       {lake}");
    match &last {
        Some(c) => println!(
            "  committed  batch {} at {}",
            c.batch,
            c.committed_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        None if leased => println!("  committed  by the shard writers below (one per shard)"),
        None => println!("  committed  nothing yet"),
    }
    for (name, w) in last.iter().flat_map(|c| &c.windows) {
        let at = |us: Option<i64>| {
            us.map_or("none yet".to_string(), |us| {
                crate::transform::window::as_timestamp(us)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string()
            })
        };
        if job.output(name).emit == crate::job::Emit::Update {
            println!(
                "  {name:<10} update output: {} keys held (one row each)",
                w.groups
            );
            continue;
        }
        println!(
            "  {name:<10} window output: {} open groups, watermark {}, written through {}, {} late rows",
            w.groups,
            at(w.watermark),
            at(w.closed),
            w.late
        );
    }
    match &leases {
        None => {
            for (shard, c) in &writers {
                println!("  {shard}  Lambda writer: {}", writer_line(shard, c));
            }
        }
        Some(leases) => print_leases(leases, &writers),
    }
    if rows.is_empty() {
        println!("  loads      none configured for this target");
    }
    for (name, c, backlog, parked) in rows {
        let at = c
            .loaded_at
            .map(|t| format!(" at {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default();
        let parked = match parked {
            0 => String::new(),
            n => format!(
                ", {n} parked batch{} (see `weir loads`)",
                if n == 1 { "" } else { "es" }
            ),
        };
        println!(
            "  {name:<10} loaded batch {}{at}, {backlog} batch{} behind{parked}",
            c.batch,
            if backlog == 1 { "" } else { "es" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A shard writer's last commit, its checkpoint and how long ago it was.
fn writer_line(shard: &str, c: &crate::commit::CommitRecord) -> String {
    let ago = (chrono::Utc::now() - c.committed_at).num_seconds().max(0);
    format!(
        "batch {} at {} ({ago} s ago), through {}",
        c.batch,
        c.committed_at.format("%Y-%m-%d %H:%M:%S UTC"),
        c.checkpoint
            .get(shard)
            .map_or("nothing".to_string(), |p| p.to_string())
    )
}

/// Every worker of a leased target with its shards (and their last commit), then the shards
/// nobody holds and those read to their end.
fn print_leases(
    leases: &[crate::source::kinesis::leases::ShardLease],
    writers: &[(String, crate::commit::CommitRecord)],
) {
    let mut workers: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let (mut free, mut ended) = (Vec::new(), Vec::new());
    for l in leases {
        match &l.owner {
            _ if l.ended() => ended.push(l.shard.as_str()),
            Some(o) => workers.entry(o).or_default().push(&l.shard),
            None => free.push(l.shard.as_str()),
        }
    }
    println!(
        "  workers    {} holding {} shard{}",
        workers.len(),
        leases.len() - free.len() - ended.len(),
        if leases.len() - free.len() - ended.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    let last = |shard: &str| {
        writers
            .iter()
            .find(|(s, _)| s == shard)
            .map_or("nothing committed yet".to_string(), |(s, c)| {
                writer_line(s, c)
            })
    };
    for (worker, shards) in &workers {
        println!("  worker {worker}");
        for shard in shards {
            println!("    {shard}  {}", last(shard));
        }
    }
    for shard in &free {
        println!("  unowned    {shard}  {}", last(shard));
    }
    if !ended.is_empty() {
        println!("  ended      {} (read to their end)", ended.join(", "));
    }
}

/// The shard writers of this job (`<job>.<shard>`: `weir lambda`'s, or leased workers'), each with
/// its last commit.
async fn shard_writers(
    location: &Location,
    job: &str,
) -> anyhow::Result<Vec<(String, crate::commit::CommitRecord)>> {
    let root = location.path(crate::sink::lake::STATE);
    let listed = location.store.list_with_delimiter(Some(&root)).await?;
    let mut out = Vec::new();
    for dir in listed.common_prefixes {
        let Some(name) = dir.filename() else { continue };
        let Some(shard) = name
            .strip_prefix(job)
            .and_then(|r| r.strip_prefix('.'))
            .filter(|s| s.starts_with("shardId-"))
        else {
            continue;
        };
        let commits = ObjectCommitStore::new(location.store.clone(), dir.clone(), name);
        if let Some(last) = commits.recover().await?.last {
            out.push((shard.to_string(), last));
        }
    }
    Ok(out)
}
