//! `weir lambda`: the bootstrap of a Kinesis-triggered Lambda function. Each invocation's records
//! are committed like a `weir run` batch, per shard, exactly once: the shard has its own writer
//! (`<job>.<shard>`: batches, commit log and Delta transaction of its own), a retried event's
//! records up to the shard's checkpoint are acknowledged without being written again, and a batch
//! an earlier attempt planned but did not commit is replayed over exactly its records first. A
//! failure answers with `batchItemFailures` from the first record not committed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::KinesisEventResponse;
use lambda_runtime::{LambdaEvent, service_fn};

use super::job_path;
use crate::commit::{CommitStore, ObjectCommitStore};
use crate::job::{Emit, Job};
use crate::pipeline::{
    Destinations, Pipeline, PipelineError, RunOptions, RunSummary, Warm, chunk_limits,
};
use crate::sink::lake::Layout;
use crate::sink::lake::delta::TableCache;
use crate::source::Position;
use crate::source::lambda::{EventSource, ShardRecords, by_shard};
use crate::storage::Location;
use crate::transform::Transforms;

/// What the Lambda runtime sets; `weir lambda` outside Lambda (or a test harness) says so.
const RUNTIME_VARS: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>). As the function's bootstrap with no
    /// arguments, the function's handler setting (`_HANDLER`).
    #[arg(env = "_HANDLER")]
    pub job: PathBuf,
    /// Target whose lake, outputs and destinations apply (its source is ignored: Lambda brings
    /// the records).
    #[arg(long, short, env = "WEIR_TARGET")]
    pub target: Option<String>,
    /// Write to this lake (folder or URL) instead of the target's.
    #[arg(long, env = "WEIR_LAKE")]
    pub lake: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let job = Job::load(job_path(&args.job))?;
    let opts = RunOptions {
        target: args.target.clone(),
        lake: args.lake.clone(),
        ..RunOptions::default()
    };
    // Everything is checked before the first event is taken: the job, its plans, the target.
    job.target(opts.target.as_deref())?;
    let transforms = Arc::new(Transforms::load(&job).await?);
    refuse_state(&job, &transforms)?;
    let missing: Vec<&str> = RUNTIME_VARS
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "weir lambda is the bootstrap of a Lambda function and needs the Lambda runtime's {} (not set here). To run {} outside Lambda use `weir run {}`; to try the function locally, see README \"Lambda mode\"",
            missing.join(", "),
            job.name,
            job.file.display()
        );
    }
    let function = Arc::new(Function {
        job,
        opts,
        transforms,
        destinations: Default::default(),
        tables: Default::default(),
    });
    tracing::info!(job = %function.job.name, "Lambda function ready");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let function = function.clone();
        async move { function.handle(event).await }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Window and update outputs keep state across batches in one order; a Lambda function runs one
/// writer per shard, concurrently, so they are refused before any event is taken.
fn refuse_state(job: &Job, transforms: &Transforms) -> anyhow::Result<()> {
    for t in &transforms.transforms {
        let mode = match job.output(&t.name).emit {
            Emit::Batch => continue,
            Emit::Window(_) => "window",
            Emit::Update => "update",
        };
        anyhow::bail!(
            "{}: output \"{}\" has emit = \"{mode}\", whose state needs one writer for the whole stream; a Lambda function writes each shard on its own. Use emit = \"batch\" in the Lambda's job (aggregate in SQL over the lake), or run this job with `weir run --target <a kinesis target>`",
            job.file.display(),
            t.name
        );
    }
    Ok(())
}

/// The function, planned once per execution environment.
struct Function {
    job: Job,
    opts: RunOptions,
    transforms: Arc<Transforms>,
    /// Per shard writer, its warehouses as the first invocation prepared them.
    destinations: tokio::sync::Mutex<HashMap<String, Destinations>>,
    /// The tables' snapshots, kept between invocations: one cache for every shard (a snapshot is
    /// the table's, whichever writer read it, and an event's shards are written in turn).
    tables: TableCache,
}

impl Function {
    /// One invocation: each shard's records committed in turn; the records of a shard that
    /// failed, or that the invocation's time did not cover, are reported from the first one not
    /// committed, so Lambda retries from there.
    async fn handle(
        &self,
        event: LambdaEvent<KinesisEvent>,
    ) -> Result<KinesisEventResponse, lambda_runtime::Error> {
        let started = Instant::now();
        let stop_at = stop_before(event.context.deadline);
        let shards = by_shard(event.payload)?;
        let mut response = KinesisEventResponse::default();
        for records in shards {
            let shard = records.shard.clone();
            let count = records.records.len();
            let committed = match self.run_shard(records.clone(), stop_at).await {
                Ok(s) => {
                    tracing::info!(
                        shard = %shard,
                        records = count,
                        new = s.records,
                        dead_letters = s.dead_letters,
                        batches = s.batches,
                        replayed = s.replayed,
                        ms = started.elapsed().as_millis() as u64,
                        "committed"
                    );
                    s.checkpoint.get(&*shard).cloned()
                }
                Err(e) => {
                    tracing::error!(shard = %shard, "{e:#}");
                    self.checkpoint(&shard).await.map_err(|read| {
                        format!("{shard}: {e:#}; and its commit log could not be read: {read:#}")
                    })?
                }
            };
            if let Some(seq) = records.first_after(committed.as_ref()) {
                tracing::warn!(shard = %shard, retry_from = seq, "not every record is committed: Lambda retries from the first that is not");
                response.add_failure(seq);
            }
        }
        Ok(response)
    }

    /// The writer of one shard: the job under the name `<job>.<shard>`.
    fn writer(&self, shard: &str) -> Job {
        Job {
            name: format!("{}.{shard}", self.job.name),
            ..self.job.clone()
        }
    }

    /// Commits one shard's records; at `stop_at` (the invocation's time nearly up) the run ends
    /// after the batch in hand, or the wait for the warehouses (the next invocation loads the
    /// rest).
    async fn run_shard(
        &self,
        records: ShardRecords,
        stop_at: tokio::time::Instant,
    ) -> Result<RunSummary, PipelineError> {
        let shard = records.shard.to_string();
        let writer = self.writer(&shard);
        let source = Arc::new(EventSource::new(records, chunk_limits(&self.job.batch)));
        let warm = Warm {
            destinations: self.destinations.lock().await.get(&shard).cloned(),
            tables: self.tables.clone(),
        };
        let prepared = warm.destinations.is_some();
        // Opening (the lake's tables; the warehouses, on a shard's first invocation here) counts
        // against the invocation's time too: past the stop, the records are left to the retry.
        let open = Pipeline::open_lambda(writer, &self.opts, self.transforms.clone(), source, warm);
        let Ok(opened) = tokio::time::timeout_at(stop_at, open).await else {
            return Err(PipelineError::Source(crate::source::SourceError::Invalid {
                input: shard,
                message: "the invocation's time ran out while opening the lake and its warehouses"
                    .into(),
            }));
        };
        let pipeline = opened?;
        if !prepared {
            let d = pipeline.destinations();
            self.destinations.lock().await.insert(shard, d);
        }
        pipeline.run(tokio::time::sleep_until(stop_at)).await
    }

    /// The shard's last committed position, from its writer's commit log.
    async fn checkpoint(&self, shard: &str) -> anyhow::Result<Option<Position>> {
        let writer = self.writer(shard);
        let target = self.job.target(self.opts.target.as_deref())?;
        let url = self.opts.lake.clone().unwrap_or(target.lake.clone());
        let location = Location::parse(&url)?;
        let state = location.path(&Layout::new(&writer.name).state());
        let commits = ObjectCommitStore::new(location.store.clone(), state, &writer.name);
        let recovered = commits.recover().await.context("reading the commit log")?;
        Ok(recovered
            .last
            .and_then(|c| c.checkpoint.get(shard).cloned()))
    }
}

/// When an invocation stops taking new work: a tenth of its time before the deadline (epoch ms),
/// at least 2 s, so that the batch in hand commits and the answer reaches Lambda in time.
fn stop_before(deadline_ms: u64) -> tokio::time::Instant {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    let margin = (left / 10).max(Duration::from_secs(2)).min(left / 2);
    tokio::time::Instant::now() + (left - margin)
}
