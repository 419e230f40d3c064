//! `weir run`: run a job to the end of its input (or until Ctrl-C / SIGTERM) and print a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{job_path, shutdown_signal, thousands};
use crate::job::Job;
use crate::job::config::SourceConfig;
use crate::job::units::format_bytes;
use crate::leased::{Worker, WorkerSummary};
use crate::pipeline::{Pipeline, RunOptions, RunSummary};
use crate::serve::Commits;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>).
    pub job: PathBuf,
    /// Target to run (default: the job's default_target, else "local").
    #[arg(long, short)]
    pub target: Option<String>,
    /// Read this path, glob or URL instead of the target's source.
    #[arg(long)]
    pub input: Option<String>,
    /// Write to this lake (folder or URL) instead of the target's.
    #[arg(long)]
    pub lake: Option<String>,
    /// Serve /metrics and /health here (overrides the target's `metrics`), e.g. 127.0.0.1:9898.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve dashboards and the PostgreSQL endpoint while the job runs, pushed on every commit
    /// (as `weir serve` does; --http, --pg, --dashboards, --tls-* as there). Off loopback both
    /// ask for the password in WEIR_SERVE_PASSWORD.
    #[arg(long)]
    pub serve: bool,
    #[command(flatten)]
    pub listen: super::serve::Listen,
    /// This worker's id in the lease table, for a target whose source has `leases` (default:
    /// host name and process id). Must differ between workers.
    #[arg(long, env = "WEIR_WORKER_ID")]
    pub worker_id: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    let job = Job::load(job_path(&args.job))?;
    let name = job.name.clone();
    let opts = RunOptions {
        target: args.target.clone(),
        input: args.input.clone(),
        lake: args.lake.clone(),
        replay: false,
    };
    let target = job.target(opts.target.as_deref())?.clone();
    let leased = matches!(
        target.source,
        SourceConfig::Kinesis {
            leases: Some(_),
            ..
        }
    );
    let mut server = tokio::task::JoinSet::new();
    let metrics_addr = args.metrics.or(target.metrics);
    let recorder = if metrics_addr.is_some() || args.serve {
        Some(crate::metrics::install()?)
    } else {
        None
    };
    let serve_opts = args.serve.then(|| {
        let lake = args.lake.clone().unwrap_or_else(|| target.lake.clone());
        args.listen.options(lake, Some(&job))
    });
    if let (Some(addr), Some(recorder)) = (metrics_addr, &recorder) {
        let serve = crate::metrics::serve(addr, recorder.clone()).await?;
        server.spawn(serve);
        eprintln!("metrics on http://{addr}/metrics, health on http://{addr}/health");
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: /metrics on {addr} is open to the network without authentication; \
                 bind 127.0.0.1 and put a reverse proxy with TLS and a password in front of it"
            );
        }
    }
    let target = target.name;
    tokio::pin!(shutdown);
    if leased {
        if args.serve {
            anyhow::bail!(
                "--serve shows one writer's commits; with leases each worker writes some shards. Run `weir serve {}` beside the workers instead",
                args.job.display()
            );
        }
        let worker = Worker::open(job, opts, args.worker_id.clone()).await?;
        eprintln!("weir: worker {} of {}", worker.id(), worker.describe());
        let summary = worker.run(shutdown).await?;
        print_worker_summary(&name, &target, &summary);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(pipeline) = Pipeline::open_unless(job, &opts, &mut shutdown).await? else {
        eprintln!("weir: stopped during start-up; nothing was read or written");
        return Ok(ExitCode::SUCCESS);
    };
    // The dashboards are checked against the lake's tables, which the pipeline has just created:
    // a bad one stops the run before any data moves.
    let mut _served = None;
    let pipeline = match serve_opts {
        None => pipeline,
        Some(opts) => {
            let (tx, rx) = tokio::sync::watch::channel(None);
            let commits = Commits::Pipeline {
                commits: rx,
                windows: pipeline.window_outputs(),
            };
            match crate::serve::start(opts, commits, recorder.clone()).await {
                Ok((tasks, listening)) => {
                    for l in &listening {
                        eprintln!("{l}");
                    }
                    _served = Some(tasks);
                    pipeline.with_commit_watch(tx)
                }
                Err(e) => {
                    pipeline.close().await;
                    return Err(e.into());
                }
            }
        }
    };
    let bar = match (args.quiet, pipeline.size_hint()) {
        (false, Some(total)) => {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
                )
                .expect("valid template"),
            );
            bar
        }
        (false, None) => {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {msg}  (Ctrl-C to stop)",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(250));
            bar
        }
        _ => ProgressBar::hidden(),
    };
    let summary = pipeline.with_progress(bar).run(shutdown).await?;
    print_summary("run", &name, &target, &summary);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn print_summary(command: &str, job: &str, target: &str, s: &RunSummary) {
    println!("weir {command} {job} (target {target})");
    println!("  source   {}", s.source);
    println!("  lake     {}", s.lake);
    if !s.loaded.is_empty() {
        let loaded: Vec<String> = s
            .loaded
            .iter()
            .map(|(d, b)| format!("{d} batch {b}"))
            .collect();
        println!(
            "  loaded   {} ({:.2} s after the last commit; see `weir status`)",
            loaded.join(", "),
            s.load_wait.as_secs_f64()
        );
    }
    if !s.parked.is_empty() {
        let parked: Vec<String> = s
            .parked
            .iter()
            .map(|(d, n)| format!("{d} {n} batch{}", if *n == 1 { "" } else { "es" }))
            .collect();
        println!(
            "  parked   {} (failed for good; see `weir loads`, then `weir loads retry`)",
            parked.join(", ")
        );
    }
    if s.stopped_early {
        println!(
            "  stopped while replaying an interrupted batch; the next run replays it (last committed batch {})",
            s.last_batch.unwrap_or_default()
        );
        return;
    }
    if s.batches == 0 {
        match s.last_batch {
            Some(b) => println!("  nothing new to read: the lake is up to date (last batch {b})"),
            None => println!("  nothing to read: the input holds no records"),
        }
        return;
    }
    println!(
        "  events   {} read, {} dead letters{}",
        thousands(s.records),
        thousands(s.dead_letters),
        if s.dead_letters > 0 {
            " (see table _dead_letters)"
        } else {
            ""
        }
    );
    println!(
        "  batches  {} committed (last {}){}{}",
        s.batches,
        s.last_batch.unwrap_or_default(),
        if s.micro_batches > s.batches {
            format!(", of {} micro-batches", s.micro_batches)
        } else {
            String::new()
        },
        if s.replayed > 0 {
            format!(", {} replayed after an interrupted run", s.replayed)
        } else {
            String::new()
        }
    );
    println!("  files    {} written, {}", s.files, format_bytes(s.bytes));
    if s.compacted > 0 {
        println!(
            "  compact  {} small files merged into {} (a Delta rewrite; the merged files are deleted after the retention)",
            s.compacted, s.compacted_into
        );
    }
    if s.vacuumed + s.trimmed > 0 {
        println!(
            "  vacuum   {} files past the retention deleted, {} old state entries trimmed",
            s.vacuumed, s.trimmed
        );
    }
    let rows: Vec<String> = s
        .rows
        .iter()
        .map(|(t, n)| format!("{t} {}", thousands(*n)))
        .collect();
    println!("  rows     {}", rows.join(", "));
    if !s.open_windows.is_empty() || s.late > 0 {
        let open: Vec<String> = s
            .open_windows
            .iter()
            .map(|(t, n)| format!("{t} {}", thousands(*n as u64)))
            .collect();
        println!(
            "  windows  open groups: {}; {} late rows{}",
            if open.is_empty() {
                "none".into()
            } else {
                open.join(", ")
            },
            thousands(s.late),
            if s.late > 0 { " (see table _late)" } else { "" }
        );
    }
    if !s.update_keys.is_empty() {
        let keys: Vec<String> = s
            .update_keys
            .iter()
            .map(|(t, n)| format!("{t} {}", thousands(*n as u64)))
            .collect();
        println!("  updates  keys held: {}", keys.join(", "));
    }
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  speed    {} events/s, {}/s ({:.2} s)",
        thousands((s.records as f64 / secs) as u64),
        format_bytes((s.input_bytes as f64 / secs) as u64),
        secs
    );
}

fn print_worker_summary(job: &str, target: &str, s: &WorkerSummary) {
    println!("weir run {job} (target {target}), worker {}", s.worker);
    println!("  source   {}", s.source);
    println!("  lake     {}", s.lake);
    println!(
        "  leases   {} taken, {} stolen, {} lost to other workers, {} shards read to their end",
        s.taken, s.stolen, s.lost, s.ended
    );
    let (mut records, mut dead, mut batches) = (0, 0, 0);
    for (shard, r) in &s.shards {
        records += r.records;
        dead += r.dead_letters;
        batches += r.batches;
        println!(
            "  {shard}  {} events, {} batches{}",
            thousands(r.records),
            r.batches,
            r.checkpoint
                .get(shard)
                .map(|p| format!(", through {p}"))
                .unwrap_or_default()
        );
    }
    println!(
        "  events   {} read, {} dead letters, {} batches committed",
        thousands(records),
        thousands(dead),
        batches
    );
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  speed    {} events/s ({:.2} s)",
        thousands((records as f64 / secs) as u64),
        secs
    );
}
