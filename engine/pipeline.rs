//! The data path of one run, top to bottom: lease -> recover -> (replay) -> read -> decode ->
//! batch -> plan -> transform -> write (each table one Delta commit) -> commit, with the warehouse
//! loads following the commits on their own tasks (`load`). Each step is one call into its module.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::batch::Batch;
use crate::commit::lease::{LeaseError, WriterLease};
use crate::commit::{
    BatchPlan, CommitError, CommitRecord, CommitStore, ObjectCommitStore, WindowMark,
};
use crate::decode::{Decoded, Decoder};
use crate::job::{BatchPolicy, Input, InputFormat, Job, JobError, SourceConfig};
use crate::load::parked::ParkedStore;
use crate::load::types::{TypeError, check_schema};
use crate::load::{
    Backfill, Cursors, Destination, LakeFiles, LoadContext, LoadError, Loads, OutputTable,
};
use crate::sink::lake::dead_letters::DeadLetterKey;
use crate::sink::lake::{BatchWriter, DEAD_LETTERS, LATE, Lake, REPLAYED};
use crate::sink::{BatchOutput, SinkError};
use crate::source::dead_letters::{self, ReplayError, ReplayFilter};
use crate::source::files::{FileSource, Framing};
use crate::source::kinesis::{KinesisSource, StartAt};
use crate::source::{Checkpoint, ChunkLimits, RawChunk, Source, SourceError};
use crate::storage::StorageError;
use crate::transform::window::{WindowState, decode_state, encode_state};
use crate::transform::{Step, TransformError, Transforms};

/// Records per source chunk at most (smaller when `max_records` is smaller).
const CHUNK_RECORDS: usize = 8192;
/// Bytes per source chunk at most.
const CHUNK_BYTES: usize = 4 << 20;

/// What a source puts in one chunk at most, under the job's batch limits.
pub fn chunk_limits(policy: &BatchPolicy) -> ChunkLimits {
    ChunkLimits {
        records: CHUNK_RECORDS.min(policy.max_records),
        bytes: CHUNK_BYTES.min(policy.max_bytes as usize),
    }
}

/// Chunks in flight between reader, decoder and batcher: with the two batches (one gathering,
/// one being written), the memory bound. Each slot of both channels held about 3.5 MiB on the
/// land-every-event job at 20M events: 4 slots instead of 8 took its peak RSS from 295-300 to
/// 276-279 MiB at the same speed; 2 took it to 258-263 MiB but 7% more wall time.
const CHANNEL_CHUNKS: usize = 4;
/// Chunks decoded in parallel.
const DECODERS: usize = 2;
/// How long `open` waits for a warehouse before leaving its preparation to its loader.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Transform(#[from] TransformError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Types(#[from] TypeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("{source}. {}", unreplayable_advice(*batch, plan, holding))]
    Unreplayable {
        batch: u64,
        plan: String,
        /// Tables that committed the batch before the crash.
        holding: Vec<String>,
        source: SourceError,
    },
}

/// What to do about an interrupted batch whose records are gone from the source.
fn unreplayable_advice(batch: u64, plan: &str, holding: &[String]) -> String {
    if holding.is_empty() {
        format!(
            "Batch {batch} was interrupted before any table committed it, so none of it is in the \
             lake. To go on without the records that are gone, delete {plan} in the lake and run \
             again"
        )
    } else {
        format!(
            "Batch {batch} was interrupted after {} committed it but before the others did: \
             deleting {plan} would write those tables' part again. Restore the records to the \
             stream (from an archive), or copy the lake's tables to a new lake",
            holding.join(", ")
        )
    }
}

/// A batch just committed, as `weir run --serve` shows it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub record: CommitRecord,
    /// Per window output, the rows its open windows have so far (provisional, never written).
    pub open: Arc<BTreeMap<String, Vec<RecordBatch>>>,
}

/// Overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub target: Option<String>,
    pub input: Option<String>,
    pub lake: Option<String>,
    /// For `weir replay`: the job's source is not opened (the records are dead letters).
    pub replay: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub source: String,
    pub lake: String,
    pub records: u64,
    pub dead_letters: u64,
    /// Batches committed, and the micro-batches they were made of.
    pub batches: u64,
    pub micro_batches: u64,
    pub replayed: u64,
    /// Rows that came after their window was written (in `_late`).
    pub late: u64,
    /// Per window output, groups (window and key) held open at the end.
    pub open_windows: BTreeMap<String, usize>,
    /// Per update output, the keys it holds (one row each) at the end.
    pub update_keys: BTreeMap<String, usize>,
    pub files: u64,
    pub bytes: u64,
    /// Small files merged by compaction, and the files they became.
    pub compacted: u64,
    pub compacted_into: u64,
    /// Unreferenced files deleted after the retention (vacuum), and old state entries trimmed.
    pub vacuumed: u64,
    pub trimmed: u64,
    pub input_bytes: u64,
    pub rows: BTreeMap<String, u64>,
    pub last_batch: Option<u64>,
    /// Per destination, the last batch loaded when the run ended.
    pub loaded: BTreeMap<String, u64>,
    /// Stopped (Ctrl-C / SIGTERM) while replaying an interrupted batch, before any new one.
    pub stopped_early: bool,
    /// Per destination with any, the batches parked after failing for good.
    pub parked: BTreeMap<String, usize>,
    /// From start to the last commit.
    pub elapsed: Duration,
    /// Then, waiting for the warehouses to load every committed batch.
    pub load_wait: Duration,
    /// Per shard, the last position committed when the run ended.
    pub checkpoint: Checkpoint,
}

/// A job bound to its source, transforms, lake and commit log.
pub struct Pipeline {
    job: Job,
    policy: BatchPolicy,
    source: Arc<dyn Source>,
    /// Shared with the worker, which transforms the next batch while this one is written; only
    /// ever one transform at a time (they share one session).
    transforms: Arc<Transforms>,
    lake: Lake,
    commits: Arc<ObjectCommitStore>,
    /// This run's writer lease (the job's, or a leased worker's shard lease), kept by
    /// `lease_task` (none in Lambda mode).
    lease: Option<Arc<dyn WriterLease>>,
    lease_task: JoinSet<LeaseError>,
    last_vacuum: Option<Instant>,
    /// Warehouses loaded behind the commit, and whether `open` prepared each.
    destinations: Destinations,
    /// How the target's loads are retried before a batch is parked.
    target_loads: crate::job::LoadRetry,
    tables: Vec<OutputTable>,
    cursors: Cursors,
    loads: Option<Loads>,
    progress: ProgressBar,
    /// Told of every commit (`weir run --serve` pushes it to the dashboards).
    committed: Option<tokio::sync::watch::Sender<Option<Committed>>>,
    summary: RunSummary,
    /// The batch being written, until its commit. Its files' uploads are not `Sync`: the mutex
    /// lets `&Pipeline` cross awaits on other tasks; it is only ever reached through `get_mut`.
    open: std::sync::Mutex<Option<OpenBatch>>,
    checkpoint: Checkpoint,
    /// Per window output, late rows up to the last commit.
    late_so_far: BTreeMap<String, u64>,
}

/// Warehouses loaded behind the commit, and whether each is prepared.
pub type Destinations = Vec<(Arc<dyn Destination>, bool)>;

/// What a warm Lambda execution environment keeps of a shard's writer between invocations.
pub struct Warm {
    /// Its warehouses, as the first invocation prepared them (`None` before it).
    pub destinations: Option<Destinations>,
    /// The tables' last snapshots (the environment's, shared by its shards), brought up to date
    /// at each invocation.
    pub tables: crate::sink::lake::delta::TableCache,
}

/// A run's parts once every check passed, before the writer lease is taken.
struct Checked {
    job: Job,
    target: crate::job::Target,
    policy: BatchPolicy,
    source: Arc<dyn Source>,
    transforms: Arc<Transforms>,
    lake: Lake,
    commits: Arc<ObjectCommitStore>,
    cursors: Cursors,
    destinations: Destinations,
    tables: Vec<OutputTable>,
}

impl Pipeline {
    /// Checks everything a run needs (job, SQL plans, source, lake), takes the job's writer lease
    /// and creates or evolves the lake's tables, before any data moves.
    pub async fn open(job: Job, opts: &RunOptions) -> Result<Self, PipelineError> {
        let never = std::future::pending::<()>();
        Ok(Self::open_unless(job, opts, never)
            .await?
            .expect("never stopped"))
    }

    /// [`Pipeline::open`], given up (`None`) when `stop` resolves before the writer lease is
    /// taken: the checks may wait on a slow network, and nothing is held until the lease.
    pub async fn open_unless(
        job: Job,
        opts: &RunOptions,
        stop: impl Future<Output = ()>,
    ) -> Result<Option<Self>, PipelineError> {
        let checked = tokio::select! {
            checked = Self::check(job, opts) => checked?,
            _ = stop => return Ok(None),
        };
        let lease: Arc<dyn WriterLease> = checked.lake.take_lease().await?;
        match Self::start(checked, Some(lease.clone())).await {
            Ok(pipeline) => Ok(Some(pipeline)),
            Err(e) => {
                lease.release().await;
                Err(e)
            }
        }
    }

    /// One Lambda invocation's run of one shard (`weir lambda`): `job` is named for the shard's
    /// writer, so each shard has its own batches, commit log and Delta transaction; its records
    /// come from the event (`source`); the transforms are the function's, planned once. No writer
    /// lease: shards never share a writer, and a second attempt at the same shard's batch is
    /// fenced by the conditional plan and commit and by the tables' Delta transaction. Each
    /// invocation commits once; compaction is left to runs that own the whole job.
    pub async fn open_lambda(
        job: Job,
        opts: &RunOptions,
        transforms: Arc<Transforms>,
        source: Arc<dyn Source>,
        warm: Warm,
    ) -> Result<Self, PipelineError> {
        let target = job.target(opts.target.as_deref())?.clone();
        let lake_url = opts.lake.clone().unwrap_or(target.lake.clone());
        let policy = BatchPolicy {
            commit_every: u64::MAX,
            compact_every: 0,
            ..job.batch
        };
        let checked = Self::assemble(
            job,
            target,
            policy,
            source,
            transforms,
            &lake_url,
            Some(warm),
        )
        .await?;
        Self::start(checked, None).await
    }

    /// The writer of one shard for a leased worker (`source.leases`): `job` is named for the
    /// shard's writer, as in Lambda mode, so each shard has its own batches, commit log and Delta
    /// transaction, and its new owner resumes at its last commit; `source` reads that shard only;
    /// `lease` is the shard's lease, checked before the tables commit and told of each commit.
    /// No compaction: several shard writers would rewrite the same files.
    pub async fn open_shard(
        job: Job,
        opts: &RunOptions,
        source: Arc<dyn Source>,
        lease: Arc<dyn WriterLease>,
    ) -> Result<Self, PipelineError> {
        let target = job.target(opts.target.as_deref())?.clone();
        let lake_url = opts.lake.clone().unwrap_or(target.lake.clone());
        let policy = BatchPolicy {
            compact_every: 0,
            ..job.batch
        };
        let transforms = Arc::new(Transforms::load(&job).await?);
        let checked =
            Self::assemble(job, target, policy, source, transforms, &lake_url, None).await?;
        Self::start(checked, Some(lease)).await
    }

    /// The warehouses this pipeline loads, and whether each was prepared (for the next
    /// invocation of a Lambda function, which need not prepare them again).
    pub fn destinations(&self) -> Destinations {
        self.destinations.clone()
    }

    /// Creates or evolves the lake's tables and sets out the pipeline, under `lease` if any.
    async fn start(
        checked: Checked,
        lease: Option<Arc<dyn WriterLease>>,
    ) -> Result<Self, PipelineError> {
        let Checked {
            job,
            target,
            policy,
            source,
            transforms,
            lake,
            commits,
            cursors,
            destinations,
            tables,
        } = checked;
        let schemas: Vec<_> = tables
            .iter()
            .map(|t| (t.name.clone(), t.schema.clone()))
            .collect();
        lake.prepare(&schemas).await?;
        if transforms.has_windows() {
            lake.prepare_late().await?;
        }
        let mut lease_task = JoinSet::new();
        if let Some(lease) = &lease {
            lease_task.spawn(lease.clone().keep());
        }
        let summary = RunSummary {
            source: source.describe(),
            lake: lake.url().to_string(),
            ..Default::default()
        };
        Ok(Self {
            job,
            policy,
            source,
            transforms,
            lake,
            commits,
            lease,
            lease_task,
            last_vacuum: None,
            destinations,
            target_loads: target.loads,
            tables,
            cursors,
            loads: None,
            progress: ProgressBar::hidden(),
            committed: None,
            summary,
            open: std::sync::Mutex::new(None),
            checkpoint: Checkpoint::new(),
            late_so_far: BTreeMap::new(),
        })
    }

    /// Everything checked before the lease: nothing is held yet.
    async fn check(job: Job, opts: &RunOptions) -> Result<Checked, PipelineError> {
        let target = job.target(opts.target.as_deref())?.clone();
        let transforms = Arc::new(Transforms::load(&job).await?);
        let lake_url = opts.lake.clone().unwrap_or(target.lake.clone());
        let policy = job.batch;
        let limits = chunk_limits(&policy);
        let source: Arc<dyn Source> = match (&target.source, &opts.input) {
            _ if opts.replay => Arc::new(dead_letters::NoSource),
            (_, Some(input)) => Arc::new(open_files(&job, input, limits).await?),
            (SourceConfig::Files { path }, None) => Arc::new(open_files(&job, path, limits).await?),
            (
                SourceConfig::Kinesis {
                    stream,
                    start,
                    timestamp,
                    consumer,
                    leases,
                    ..
                },
                None,
            ) => {
                if let Some(table) = leases {
                    return Err(SourceError::Invalid {
                        input: stream.clone(),
                        message: format!(
                            "the stream is shared through lease table {table}: each worker writes \
                             the shards it owns (run it with `weir run`)"
                        ),
                    }
                    .into());
                }
                let start =
                    StartAt::parse(start.as_deref(), timestamp.as_deref()).map_err(|message| {
                        SourceError::Invalid {
                            input: stream.clone(),
                            message,
                        }
                    })?;
                Arc::new(KinesisSource::open(stream, start, consumer.as_deref(), limits).await?)
            }
        };
        Self::assemble(job, target, policy, source, transforms, &lake_url, None).await
    }

    /// The checks after the source: output types against the warehouses, then the lake (its
    /// identity, on first use) and the destinations (prepared, unless `warm` has them; the
    /// tables start from `warm`'s snapshots).
    async fn assemble(
        job: Job,
        target: crate::job::Target,
        policy: BatchPolicy,
        source: Arc<dyn Source>,
        transforms: Arc<Transforms>,
        lake_url: &str,
        warm: Option<Warm>,
    ) -> Result<Checked, PipelineError> {
        let tables = OutputTable::of(&job, &transforms);
        check_types(&target, &transforms, &tables)?;
        // Everything checked: from here on the lake is touched (its identity, on first use).
        let mut lake = Lake::open(lake_url, &job).await?;
        let destinations = match warm {
            Some(Warm {
                destinations,
                tables,
            }) => {
                lake.adopt_tables(tables).await;
                destinations
            }
            None => None,
        };
        let state = lake.path(&lake.layout().state());
        let commits = Arc::new(ObjectCommitStore::new(
            lake.store(),
            state.clone(),
            &job.name,
        ));
        let cursors = Cursors::new(lake.store(), state);
        let destinations = match destinations {
            Some(d) => d,
            None => open_destinations(&job, &target, &lake, &tables).await?,
        };
        Ok(Checked {
            job,
            target,
            policy,
            source,
            transforms,
            lake,
            commits,
            cursors,
            destinations,
            tables,
        })
    }

    /// Total input bytes when known, for a progress bar.
    pub fn size_hint(&self) -> Option<u64> {
        self.source.size_hint()
    }

    /// Reports progress (input bytes) on this bar.
    pub fn with_progress(mut self, bar: ProgressBar) -> Self {
        self.progress = bar;
        self
    }

    /// Sends every commit to `tx` once the batch is committed, with the window outputs' open
    /// windows as they stand.
    pub fn with_commit_watch(mut self, tx: tokio::sync::watch::Sender<Option<Committed>>) -> Self {
        self.transforms.keep_open_rows();
        self.committed = Some(tx);
        self
    }

    /// Window outputs and their schemas (their open windows come with each [`Committed`]).
    pub fn window_outputs(&self) -> BTreeMap<String, SchemaRef> {
        self.transforms.window_outputs()
    }

    /// Gives up an opened pipeline without reading anything, releasing its writer lease.
    pub async fn close(self) {
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
    }

    /// Runs until the source is exhausted or `shutdown` resolves; the batch in hand is committed.
    /// The writer lease is released at the end, also after an error.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, PipelineError> {
        let lease = self.lease.clone();
        let result = self.run_leased(shutdown).await;
        if let Some(lease) = lease
            && !matches!(result, Err(PipelineError::Lease(_)))
        {
            lease.release().await;
        }
        result
    }

    async fn run_leased(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, PipelineError> {
        let started = Instant::now();
        tokio::pin!(shutdown);
        let Some(mut next) = self.begin(&mut shutdown).await? else {
            return Ok(self.stopped_early(started));
        };

        let (raw_tx, raw_rx) = mpsc::channel::<RawChunk>(CHANNEL_CHUNKS);
        let (dec_tx, mut decoded) = mpsc::channel::<Decoded>(CHANNEL_CHUNKS);
        let mut tasks: JoinSet<Result<(), SourceError>> = JoinSet::new();
        let bounded = self.source.bounded();
        let (source, from) = (self.source.clone(), self.checkpoint.clone());
        tasks.spawn(async move { source.read(&from, raw_tx).await });
        tasks.spawn(decode_loop(
            Arc::new(self.job.input.clone()),
            raw_rx,
            dec_tx,
        ));

        // Batch N is written and committed on its own task while N+1 is read, decoded and
        // gathered here, then transformed while N is still being written: both cores stay busy,
        // and at most two batches are held.
        let policy = self.policy;
        // A file run commits several micro-batches at once (their files written once, at their
        // size); a stream commits each, as soon as it is full or old enough.
        let per_commit = if bounded {
            policy.commit_every.max(1)
        } else {
            1
        };
        let mut lease_task = std::mem::take(&mut self.lease_task);
        let mut worker = Worker::new(self);
        let mut stopping = false;
        let mut batch = Batch::default();
        let mut added = 0u64;
        // Adds the micro-batch in hand to batch `next`, committing it when it has enough.
        macro_rules! submit {
            () => {{
                added += 1;
                let commit = added >= per_commit;
                worker
                    .submit(next, std::mem::take(&mut batch), commit)
                    .await?;
                if commit {
                    next += 1;
                    added = 0;
                }
            }};
        }
        let lost = loop {
            let deadline = batch.opened.map(|t| t + policy.max_age);
            tokio::select! {
                chunk = decoded.recv() => match chunk {
                    Some(chunk) => {
                        if batch.would_overflow(&policy, &chunk) {
                            submit!();
                        }
                        batch.push(chunk);
                        if batch.is_due(&policy) {
                            submit!();
                        }
                    }
                    None => break None,
                },
                _ = sleep_until(deadline) => submit!(),
                done = worker.done(), if worker.is_busy() => done?,
                _ = &mut shutdown => {
                    tracing::info!("stopping: committing the batch in hand");
                    stopping = true;
                    break None;
                }
                Some(lost) = lease_task.join_next() => break Some(lost),
            }
        };
        if let Some(lost) = lost {
            tasks.abort_all();
            worker.abort();
            return Err(match lost {
                Ok(e) => e.into(),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            });
        }
        drop(decoded);
        if stopping {
            // The source may be waiting on a quiet stream: stop it; the decoder then drains.
            tasks.abort_all();
        }
        // The reader and decoder are done (the channel closed): how did they end?
        let mut failed = None;
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Ok(Ok(())) => {}
                Err(e) if e.is_cancelled() => {}
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        // At the end of a file input (not on a stop, not when reading failed), window outputs
        // finish every open window: a failed or stopped run leaves them to the next.
        batch.flush = !stopping && failed.is_none() && worker.transforms.has_windows() && bounded;
        if !batch.is_empty() || (batch.flush && worker.has_open_windows()) {
            worker.submit(next, batch, true).await?;
        } else if added > 0 {
            worker.commit(next).await?;
        }
        let mut this = worker.finish().await?;
        this.lease_task = lease_task;
        if let Some(e) = failed {
            return Err(e.into());
        }
        this.wrap_up(stopping, &mut shutdown, started).await
    }

    /// Recovers (replaying a planned but uncommitted batch) and starts the loaders; returns the
    /// next batch id, or `None` when `shutdown` came first (the plan stays for the next run).
    async fn begin(
        &mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<u64>, PipelineError> {
        let recovered = tokio::select! {
            next = self.recover() => Some(next),
            _ = shutdown => None,
        };
        let Some(next) = recovered else {
            tracing::warn!("stopped while replaying an interrupted batch; the next run replays it");
            return Ok(None);
        };
        let next = next?;
        let state = self.lake.path(&self.lake.layout().state());
        self.loads = Some(Loads::start(
            std::mem::take(&mut self.destinations),
            LoadContext {
                tables: self.tables.clone(),
                commits: self.commits.clone() as Arc<dyn CommitStore>,
                cursors: self.cursors.clone(),
                parked: ParkedStore::new(self.lake.store(), state),
                retry: self.target_loads,
                lake: Backfill {
                    location: self.lake.location().clone(),
                    job: self.job.name.clone(),
                },
            },
            self.summary.last_batch.unwrap_or(0),
        ));
        Ok(Some(next))
    }

    /// The summary of a run stopped before its first batch.
    fn stopped_early(mut self, started: Instant) -> RunSummary {
        self.summary.stopped_early = true;
        self.lease_task.abort_all();
        self.progress.finish_and_clear();
        self.summary.elapsed = started.elapsed();
        std::mem::take(&mut self.summary)
    }

    /// After the last commit: waits for the loads (unless stopping), compacts, and stops the
    /// loaders.
    async fn wrap_up(
        mut self,
        mut stopping: bool,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
        started: Instant,
    ) -> Result<RunSummary, PipelineError> {
        self.summary.elapsed = started.elapsed();
        if !stopping {
            stopping = self.finish_loads(shutdown).await?;
        }
        self.summary.load_wait = started.elapsed() - self.summary.elapsed;
        if let Some(loads) = &self.loads {
            self.summary.loaded = loads
                .progress()
                .into_iter()
                .map(|(n, b)| (n.to_string(), b))
                .collect();
            self.summary.parked = loads
                .parked()
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect();
        }
        // The loaders stay until after compaction: it must stay below their parked batches.
        if !stopping && self.policy.compact_every > 0 {
            self.compact().await?;
        }
        if let Some(loads) = self.loads.take() {
            loads.stop().await;
        }
        self.lease_task.abort_all();
        self.progress.finish_and_clear();
        self.summary.checkpoint = self.checkpoint.clone();
        Ok(std::mem::take(&mut self.summary))
    }

    /// `weir replay`: runs the dead letters that match `filter` through the job as new batches
    /// (at most `max_records` each), oldest first, each exactly once: a replay batch's plan lists
    /// the dead letters it takes, and its `_replayed` rows, committed with it, keep them from being
    /// taken again. Those that fail again are new dead letters with the new reason; dead letters
    /// written by this replay are not taken again by it.
    pub async fn replay(
        self,
        filter: ReplayFilter,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, PipelineError> {
        let lease = self.lease.clone();
        let result = async {
            self.lake.prepare_replayed().await?;
            self.replay_leased(filter, shutdown).await
        }
        .await;
        if let Some(lease) = lease
            && !matches!(result, Err(PipelineError::Lease(_)))
        {
            lease.release().await;
        }
        result
    }

    async fn replay_leased(
        mut self,
        filter: ReplayFilter,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, PipelineError> {
        let started = Instant::now();
        tokio::pin!(shutdown);
        let Some(mut next) = self.begin(&mut shutdown).await? else {
            return Ok(self.stopped_early(started));
        };
        let upto = next - 1;
        let mut stopping = false;
        loop {
            let letters = dead_letters::select(
                self.lake.location(),
                &self.job.name,
                upto,
                &filter,
                self.policy.max_records,
                self.policy.max_bytes,
            )
            .await?;
            if letters.is_empty() {
                break;
            }
            let batch = self.replay_batch(letters);
            self.process(next, batch, false).await?;
            next += 1;
            // Between batches (one in hand is committed first): polled once it has not resolved.
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                tracing::info!(
                    "stopped: the dead letters not replayed yet stay for the next replay"
                );
                stopping = true;
                break;
            }
        }
        self.wrap_up(stopping, &mut shutdown, started).await
    }

    /// A batch of dead letters' records, decoded by the job as it is now.
    fn replay_batch(&self, letters: Vec<(DeadLetterKey, bytes::Bytes)>) -> Batch {
        let mut decoder = Decoder::new(&self.job.input);
        let mut batch = Batch::default();
        for chunk in dead_letters::chunks(&letters) {
            batch.push(decoder.decode(&chunk));
        }
        // Their positions are in other batches' ranges: this one reads no source range.
        batch.range.clear();
        batch.replayed = letters.into_iter().map(|(k, _)| k).collect();
        batch
    }

    /// Loads the checkpoint and replays a planned but uncommitted batch; returns the next batch id.
    async fn recover(&mut self) -> Result<u64, PipelineError> {
        let recovered = self.commits.recover().await?;
        if let Some(last) = &recovered.last {
            self.restore_windows(last).await?;
            self.checkpoint = last.checkpoint.clone();
            self.summary.last_batch = Some(last.batch);
            tracing::info!(
                batch = last.batch,
                "resuming after the last committed batch"
            );
        }
        let mut next = recovered.last.map_or(1, |c| c.batch + 1);
        if let Some(plan) = recovered.pending {
            tracing::info!(
                batch = plan.batch,
                "replaying a batch that was planned but not committed"
            );
            let replayed = if plan.range.is_empty() && plan.dead_letters.is_empty() {
                let batch = Batch {
                    flush: plan.flush,
                    ..Batch::default()
                };
                self.process(plan.batch, batch, true).await
            } else if plan.dead_letters.is_empty() {
                self.replay_range(&plan).await
            } else {
                self.lake.prepare_replayed().await?;
                let letters =
                    dead_letters::read(self.lake.location(), &self.job.name, &plan.dead_letters)
                        .await?;
                let batch = Batch {
                    flush: plan.flush,
                    ..self.replay_batch(letters)
                };
                self.process(plan.batch, batch, true).await
            };
            match replayed {
                Err(PipelineError::Source(source @ SourceError::RangeGone { .. })) => {
                    *self.open_batch() = None;
                    let mut tables: Vec<String> =
                        self.tables.iter().map(|t| t.name.clone()).collect();
                    tables.push(DEAD_LETTERS.to_string());
                    let holding = self.lake.tables_holding(plan.batch, &tables).await?;
                    return Err(PipelineError::Unreplayable {
                        batch: plan.batch,
                        plan: format!("_weir/{}/plans/{:020}.json", self.job.name, plan.batch),
                        holding,
                        source,
                    });
                }
                other => other?,
            }
            self.summary.replayed += 1;
            next = plan.batch + 1;
        }
        Ok(next)
    }

    /// Re-reads exactly the range of a planned batch and writes it again as that batch, cut into
    /// the micro-batches the first attempt had (each re-read over its own recorded range).
    async fn replay_range(&mut self, plan: &BatchPlan) -> Result<(), PipelineError> {
        let ranges = if plan.micro_batches.is_empty() {
            std::slice::from_ref(&plan.range)
        } else {
            plan.micro_batches.as_slice()
        };
        let (last, before) = ranges.split_last().expect("a range to replay");
        for range in before {
            let batch = self.read_range(range).await?;
            let transformed = Transformed::of(&self.transforms, batch).await?;
            self.append(plan.batch, transformed, true).await?;
        }
        let batch = Batch {
            flush: plan.flush,
            ..self.read_range(last).await?
        };
        self.process(plan.batch, batch, true).await
    }

    /// Re-reads and decodes exactly `range` (one micro-batch).
    async fn read_range(&self, range: &crate::source::BatchRange) -> Result<Batch, PipelineError> {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let source = self.source.clone();
        let range = range.clone();
        let reader = tokio::spawn(async move { source.read_range(&range, tx).await });
        let batch = Batch::collect(&self.job.input, rx).await;
        reader
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        Ok(batch)
    }

    /// One batch of one micro-batch: transform -> write -> plan -> commit.
    async fn process(&mut self, id: u64, batch: Batch, replay: bool) -> Result<(), PipelineError> {
        if !batch.is_empty() || batch.flush {
            let transformed = Transformed::of(&self.transforms, batch).await?;
            self.append(id, transformed, replay).await?;
        }
        self.commit(id, replay).await
    }

    /// Adds a transformed micro-batch to batch `id` (opened by its first): its rows go into the
    /// batch's open files, nothing is visible yet.
    async fn append(
        &mut self,
        id: u64,
        transformed: Transformed,
        replay: bool,
    ) -> Result<(), PipelineError> {
        let Transformed {
            batch,
            step,
            flushed,
            transform,
        } = transformed;
        let Step {
            outputs,
            late,
            windows,
            open,
        } = step;
        let started = Instant::now();
        let lake = &self.lake;
        let job = &self.job.name;
        let mut current = self
            .open
            .get_mut()
            .expect("not poisoned")
            .take()
            .unwrap_or_else(|| OpenBatch::new(lake.begin(job, id, replay), flushed));
        debug_assert_eq!(current.writer.batch(), id, "one batch open at a time");
        lake.append(
            &mut current.writer,
            &BatchOutput {
                job,
                batch: id,
                tables: &outputs,
                dead_letters: &batch.dead,
                replayed: &batch.replayed,
                late: &late,
                replay,
            },
        )
        .await?;
        current.add(batch, &outputs, &late, windows, open);
        self.progress.inc(current.last_input_bytes);
        self.progress.set_message(format!(
            "batch {id}: {} events, {} dead letters",
            self.summary.records + current.records,
            self.summary.dead_letters + current.dead
        ));
        tracing::debug!(
            batch = id,
            micro_batch = current.micro_batches,
            transform_ms = transform.as_millis() as u64,
            write_ms = started.elapsed().as_millis() as u64,
            "micro-batch written"
        );
        *self.open_batch() = Some(current);
        Ok(())
    }

    fn open_batch(&mut self) -> &mut Option<OpenBatch> {
        self.open.get_mut().expect("not poisoned")
    }

    /// Commits the open batch `id`, if any: plan -> close files -> each table's Delta commit ->
    /// window state -> commit record.
    async fn commit(&mut self, id: u64, replay: bool) -> Result<(), PipelineError> {
        let Some(batch) = self.open_batch().take() else {
            return Ok(());
        };
        let started = Instant::now();
        // The range is recorded before any table commits: a replay re-reads exactly it. A
        // replayed batch is already planned; tables that hold it are skipped.
        if !replay {
            let plan = BatchPlan {
                job: self.job.name.clone(),
                batch: id,
                range: batch.range.clone(),
                planned_at: chrono::Utc::now(),
                dead_letters: batch.replayed.clone(),
                flush: batch.flush,
                micro_batches: if batch.micro_ranges.len() > 1 {
                    batch.micro_ranges.clone()
                } else {
                    Vec::new()
                },
            };
            self.commits.plan(&plan).await?;
        }
        let planned = Instant::now();

        if let Some(lease) = &self.lease {
            lease.check().await?;
        }
        let files = self.lake.commit(batch.writer).await?;
        let mut rows = batch.rows;
        // An update output's rows: its batch's changes, one per key touched.
        for f in files.iter().filter(|f| f.upsert.is_some()) {
            rows.insert(f.table.clone(), f.rows);
        }
        let windows = self.save_windows(id, batch.windows, &batch.late).await?;
        let written = Instant::now();

        for (shard, r) in &batch.range {
            self.checkpoint.insert(shard.clone(), r.last.clone());
        }
        let record = CommitRecord {
            job: self.job.name.clone(),
            batch: id,
            range: batch.range,
            checkpoint: self.checkpoint.clone(),
            records: batch.records,
            dead_letters: batch.dead,
            rows: rows.clone(),
            files: files.clone(),
            committed_at: chrono::Utc::now(),
            backfill: false,
            windows,
            lease: self.lease.as_ref().and_then(|l| l.mark()),
        };
        self.commits.commit(&record).await?;
        // The batch is committed: a lease that cannot record it (a lost lease stops the writer
        // at its next check anyway) is only worth a warning.
        if let Some(lease) = &self.lease
            && let Err(e) = lease.committed(&record.checkpoint).await
        {
            tracing::warn!(batch = id, "recording the checkpoint in the lease: {e}");
        }
        for (name, w) in &record.windows {
            if self.transforms.update_keys(name).is_some() {
                metrics::gauge!("weir_update_keys", "output" => name.clone()).set(w.groups as f64);
                continue;
            }
            let before = self.late_so_far.insert(name.clone(), w.late).unwrap_or(0);
            metrics::counter!("weir_late_rows_total", "output" => name.clone())
                .increment(w.late.saturating_sub(before));
            metrics::gauge!("weir_window_open_groups", "output" => name.clone())
                .set(w.groups as f64);
            if let Some(wm) = w.watermark {
                metrics::gauge!("weir_window_watermark_seconds", "output" => name.clone())
                    .set(wm as f64 / 1e6);
            }
        }
        if let Some(loads) = &self.loads {
            loads.committed(id);
        }
        record_metrics(&batch.arrivals, batch.record_bytes, batch.flushed, &record);
        if let Some(tx) = &self.committed {
            tx.send_replace(Some(Committed {
                record: record.clone(),
                open: Arc::new(batch.open),
            }));
        }

        let s = &mut self.summary;
        s.records += batch.records;
        s.dead_letters += batch.dead;
        s.late += batch.late.values().sum::<u64>();
        for (n, w) in &record.windows {
            match self.transforms.update_keys(n) {
                Some(_) => s.update_keys.insert(n.clone(), w.groups as usize),
                None => s.open_windows.insert(n.clone(), w.groups as usize),
            };
        }
        s.batches += 1;
        s.micro_batches += batch.micro_batches;
        s.files += files.len() as u64;
        s.bytes += files.iter().map(|f| f.bytes).sum::<u64>();
        s.input_bytes += batch.input_bytes;
        s.last_batch = Some(id);
        for (t, n) in rows {
            *s.rows.entry(t).or_default() += n;
        }
        tracing::debug!(
            batch = id,
            micro_batches = batch.micro_batches,
            records = batch.records,
            files = files.len(),
            plan_ms = (planned - started).as_millis() as u64,
            write_ms = (written - planned).as_millis() as u64,
            commit_ms = written.elapsed().as_millis() as u64,
            "committed"
        );
        if self.policy.compact_every > 0 && id.is_multiple_of(self.policy.compact_every) {
            self.compact().await?;
        }
        Ok(())
    }

    /// Writes each window output's open windows after batch `id` (Arrow IPC in the job's state
    /// folder) and returns what the commit records of them.
    async fn save_windows(
        &self,
        id: u64,
        windows: BTreeMap<String, WindowState>,
        late: &BTreeMap<String, u64>,
    ) -> Result<BTreeMap<String, WindowMark>, PipelineError> {
        let mut marks = BTreeMap::new();
        for (name, w) in windows {
            let state = match &w.open {
                Some(open) => {
                    let bytes = encode_state(open).map_err(|source| SinkError::Arrow {
                        table: name.clone(),
                        source,
                    })?;
                    Some(self.commits.put_window(id, &name, bytes).await?)
                }
                None => None,
            };
            let update = self.transforms.update_keys(&name).is_some();
            let before = self.late_so_far.get(&name).copied().unwrap_or(0);
            let now = late.get(&name).copied().unwrap_or(0);
            marks.insert(
                name,
                WindowMark {
                    watermark: w.watermark,
                    closed: w.closed,
                    groups: w.groups() as u64,
                    state,
                    late: before + now,
                    update,
                },
            );
        }
        Ok(marks)
    }

    /// Loads the window outputs' state recorded by the last commit.
    async fn restore_windows(&mut self, last: &CommitRecord) -> Result<(), PipelineError> {
        for (name, mark) in &last.windows {
            let emit = self.job.output(name).emit;
            let mode_changed = match emit {
                crate::job::Emit::Window(_) => mark.update,
                crate::job::Emit::Update => !mark.update,
                crate::job::Emit::Batch => false,
            };
            if mode_changed {
                return Err(PipelineError::Transform(TransformError::Output {
                    job: self.job.file.display().to_string(),
                    table: name.clone(),
                    message: format!(
                        "its emit mode changed since batch {}, whose state was kept for the old mode: put the old emit back, or give the output a new name (a new table, starting with no state)",
                        last.batch
                    ),
                }));
            }
            let open = match &mark.state {
                Some(file) => {
                    let bytes = self.commits.get_window(file).await?;
                    Some(decode_state(&bytes).map_err(|source| SinkError::Arrow {
                        table: name.clone(),
                        source,
                    })?)
                }
                None => None,
            };
            self.late_so_far.insert(name.clone(), mark.late);
            self.transforms.restore(
                name,
                WindowState {
                    watermark: mark.watermark,
                    closed: mark.closed,
                    open,
                },
            );
        }
        Ok(())
    }

    /// Waits until every committed batch is loaded everywhere (file runs); a shutdown stops the
    /// wait, leaving the rest to the next run. Returns whether it was stopped.
    async fn finish_loads(
        &mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<bool, PipelineError> {
        let Some(loads) = &mut self.loads else {
            return Ok(false);
        };
        if loads.is_empty() {
            return Ok(false);
        }
        let progress = self.progress.clone();
        tokio::select! {
            r = loads.finish(|at, target| {
                let parts: Vec<String> =
                    at.iter().map(|(n, b)| format!("{n} {b}/{target}")).collect();
                progress.set_message(format!("loading: {}", parts.join(", ")));
            }) => {
                r?;
                Ok(false)
            }
            _ = shutdown => {
                tracing::info!("stopping: batches not loaded yet are loaded by the next run");
                Ok(true)
            }
        }
    }

    /// The last batch whose files compaction may merge: committed, and loaded everywhere. While
    /// a restart replays a batch the loaders have not started: nothing is merged then.
    fn compactable(&self) -> Option<u64> {
        let committed = self.summary.last_batch?;
        match &self.loads {
            Some(loads) => Some(loads.min_loaded().map_or(committed, |l| l.min(committed))),
            None if self.destinations.is_empty() => Some(committed),
            None => None,
        }
    }

    /// Merges small files of committed batches that every destination has loaded; hourly, also
    /// vacuums the tables and trims Weir's state past the retention.
    async fn compact(&mut self) -> Result<(), PipelineError> {
        let Some(loaded) = self.compactable() else {
            return Ok(());
        };
        let mut tables: Vec<String> = self
            .transforms
            .transforms
            .iter()
            .map(|t| t.name.clone())
            .collect();
        tables.extend([DEAD_LETTERS.to_string(), REPLAYED.to_string()]);
        if self.transforms.has_windows() {
            tables.push(LATE.to_string());
        }
        let vacuumed_before = self.last_vacuum;
        let done = self
            .lake
            .compact(&self.job.name, loaded, &tables, &mut self.last_vacuum)
            .await?;
        if self.last_vacuum != vacuumed_before {
            self.summary.trimmed += self.commits.trim(loaded, self.job.retention).await?;
        }
        self.summary.compacted += done.merged;
        self.summary.compacted_into += done.written;
        self.summary.vacuumed += done.vacuumed;
        Ok(())
    }
}

/// Type-checks the outputs against the target's warehouses.
fn check_types(
    target: &crate::job::Target,
    transforms: &Transforms,
    tables: &[OutputTable],
) -> Result<(), TypeError> {
    let warehouses = crate::load::warehouses(target);
    for (t, out) in transforms.transforms.iter().zip(tables) {
        check_schema(
            &warehouses,
            &t.file.display().to_string(),
            &out.name,
            &out.schema,
        )?;
    }
    Ok(())
}

/// Prepares each destination (tables, ledger). A schema conflict stops here, before any data
/// moves; an unreachable warehouse is only reported, and its loader prepares it once it is back.
async fn open_destinations(
    job: &Job,
    target: &crate::job::Target,
    lake: &Lake,
    tables: &[OutputTable],
) -> Result<Destinations, PipelineError> {
    let files = LakeFiles::new(lake.location(), lake.id());
    let mut out = Vec::new();
    for d in crate::load::destinations(job, target, &files) {
        let prepared = tokio::time::timeout(PREPARE_TIMEOUT, d.prepare(tables)).await;
        let ok = match prepared {
            Ok(Ok(())) => true,
            Ok(Err(e @ LoadError::Schema { .. })) => return Err(e.into()),
            Ok(Err(e)) => {
                tracing::warn!("{e}; the lake goes on, and loads start when it is reachable");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "{}: no answer in {PREPARE_TIMEOUT:?}; the lake goes on, and loads start when it answers",
                    d.name()
                );
                false
            }
        };
        out.push((d, ok));
    }
    Ok(out)
}

/// A file source for the job's input format (CSV headers skipped).
pub(crate) async fn open_files(
    job: &Job,
    input: &str,
    limits: ChunkLimits,
) -> Result<FileSource, SourceError> {
    let csv = job.input.format == InputFormat::Csv;
    let framing = Framing {
        csv: csv.then_some(job.input.csv.delimiter as u8),
        header: csv && job.input.csv.header,
        max_record_bytes: job.input.max_record_bytes,
    };
    FileSource::open(input, &job.root, limits, framing).await
}

/// Prometheus metrics of one committed batch.
fn record_metrics(
    arrivals: &[(i64, usize)],
    bytes_in: u64,
    flushed: Instant,
    record: &CommitRecord,
) {
    let now_ms = record.committed_at.timestamp_millis();
    metrics::counter!("weir_records_in_total").increment(record.records);
    metrics::counter!("weir_bytes_in_total").increment(bytes_in);
    metrics::counter!("weir_dead_letters_total").increment(record.dead_letters);
    metrics::counter!("weir_batches_committed_total").increment(1);
    metrics::counter!("weir_files_written_total").increment(record.files.len() as u64);
    metrics::counter!("weir_bytes_written_total")
        .increment(record.files.iter().map(|f| f.bytes).sum());
    metrics::histogram!("weir_commit_latency_seconds").record(flushed.elapsed().as_secs_f64());
    metrics::gauge!("weir_last_commit_timestamp_seconds").set(now_ms as f64 / 1e3);
    metrics::gauge!("weir_last_committed_batch").set(record.batch as f64);
    let freshness = metrics::histogram!("weir_freshness_seconds");
    for (arrived, _) in arrivals {
        freshness.record((now_ms - arrived).max(0) as f64 / 1e3);
    }
}

/// The batch being written: one micro-batch, or several when a file run reads its backlog. What
/// its commit record and the run's summary need, gathered as micro-batches are added.
struct OpenBatch {
    writer: BatchWriter,
    range: crate::source::BatchRange,
    /// Each micro-batch's range, in order (a replay cuts the batch the same way).
    micro_ranges: Vec<crate::source::BatchRange>,
    replayed: Vec<DeadLetterKey>,
    flush: bool,
    micro_batches: u64,
    records: u64,
    dead: u64,
    record_bytes: u64,
    input_bytes: u64,
    /// Of the micro-batch added last (for the progress bar).
    last_input_bytes: u64,
    arrivals: Vec<(i64, usize)>,
    rows: BTreeMap<String, u64>,
    /// Late rows per window output.
    late: BTreeMap<String, u64>,
    /// Window and update outputs' state after the last micro-batch, and its open windows.
    windows: BTreeMap<String, WindowState>,
    open: BTreeMap<String, Vec<RecordBatch>>,
    /// When the first micro-batch was closed.
    flushed: Instant,
}

impl OpenBatch {
    fn new(writer: BatchWriter, flushed: Instant) -> Self {
        Self {
            writer,
            range: Default::default(),
            micro_ranges: Vec::new(),
            replayed: Vec::new(),
            flush: false,
            micro_batches: 0,
            records: 0,
            dead: 0,
            record_bytes: 0,
            input_bytes: 0,
            last_input_bytes: 0,
            arrivals: Vec::new(),
            rows: BTreeMap::new(),
            late: BTreeMap::new(),
            windows: BTreeMap::new(),
            open: BTreeMap::new(),
            flushed,
        }
    }

    /// Adds a micro-batch (written already) to the batch's totals.
    fn add(
        &mut self,
        batch: Batch,
        outputs: &[crate::transform::TableOutput],
        late: &[crate::transform::LateRows],
        windows: BTreeMap<String, WindowState>,
        open: BTreeMap<String, Vec<RecordBatch>>,
    ) {
        if !batch.range.is_empty() {
            self.micro_ranges.push(batch.range.clone());
        }
        for (shard, r) in batch.range {
            crate::batch::widen(&mut self.range, shard, r);
        }
        self.replayed.extend(batch.replayed);
        self.flush |= batch.flush;
        self.micro_batches += 1;
        self.records += batch.records as u64;
        self.dead += batch.dead.len() as u64;
        self.record_bytes += batch.record_bytes;
        self.input_bytes += batch.input_bytes;
        self.last_input_bytes = batch.input_bytes;
        self.arrivals.extend(batch.arrivals);
        for o in outputs {
            *self.rows.entry(o.name.clone()).or_default() += o.rows() as u64;
        }
        for l in late {
            *self.late.entry(l.output.clone()).or_default() += l.rows.num_rows() as u64;
        }
        // The state after this micro-batch replaces the one before (it includes it).
        self.windows.extend(windows);
        self.open = open;
    }
}

/// A batch and what the transforms made of it.
struct Transformed {
    /// The batch, its events taken by the transforms.
    batch: Batch,
    step: Step,
    /// When the batch was closed.
    flushed: Instant,
    /// How long the transforms took.
    transform: Duration,
}

impl Transformed {
    async fn of(transforms: &Transforms, mut batch: Batch) -> Result<Self, TransformError> {
        let flushed = Instant::now();
        let events = std::mem::take(&mut batch.events);
        let step = transforms.step(events, batch.flush).await?;
        Ok(Self {
            batch,
            step,
            flushed,
            transform: flushed.elapsed(),
        })
    }
}

/// The pipeline, idle or writing one batch on its own task; and the transforms, which run the
/// next batch meanwhile.
struct Worker {
    state: WorkerState,
    transforms: Arc<Transforms>,
}

enum WorkerState {
    Idle(Box<Pipeline>),
    Busy(tokio::task::JoinHandle<(Box<Pipeline>, Result<(), PipelineError>)>),
    /// Only while a task is being started or joined, or after `abort`.
    Gone,
}

impl Worker {
    fn new(pipeline: Pipeline) -> Self {
        Self {
            transforms: pipeline.transforms.clone(),
            state: WorkerState::Idle(Box::new(pipeline)),
        }
    }

    fn is_busy(&self) -> bool {
        matches!(self.state, WorkerState::Busy(_))
    }

    /// Whether a window output holds open windows (after the last batch transformed).
    fn has_open_windows(&self) -> bool {
        self.transforms.has_open_windows()
    }

    /// Transforms micro-batch `batch` while the one in flight is written, waits for that one,
    /// then starts adding `batch` to batch `id`, and committing it when `commit`. Transforms run
    /// one at a time, in order: the next starts only after this call returns.
    async fn submit(&mut self, id: u64, batch: Batch, commit: bool) -> Result<(), PipelineError> {
        if batch.is_empty() && !batch.flush {
            return if commit {
                self.commit(id).await
            } else {
                Ok(())
            };
        }
        let transforms = self.transforms.clone();
        let transform = tokio::spawn(async move { Transformed::of(&transforms, batch).await });
        let waited = Instant::now();
        let before = if self.is_busy() {
            let done = self.done().await;
            tracing::debug!(
                batch = id,
                waited_ms = waited.elapsed().as_millis() as u64,
                "gathered and transformed while the micro-batch before was still being written"
            );
            done
        } else {
            Ok(())
        };
        let transformed = transform
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        // The micro-batch before failing is the first error.
        before?;
        let transformed = transformed?;
        self.spawn(move |mut pipeline| async move {
            let mut r = pipeline.append(id, transformed, false).await;
            if r.is_ok() && commit {
                r = pipeline.commit(id, false).await;
            }
            (pipeline, r)
        });
        Ok(())
    }

    /// Commits batch `id` (what was added to it), after the micro-batch in flight.
    async fn commit(&mut self, id: u64) -> Result<(), PipelineError> {
        self.done().await?;
        self.spawn(move |mut pipeline| async move {
            let r = pipeline.commit(id, false).await;
            (pipeline, r)
        });
        Ok(())
    }

    /// Runs `work` on the idle pipeline, on its own task.
    fn spawn<F, Fut>(&mut self, work: F)
    where
        F: FnOnce(Box<Pipeline>) -> Fut,
        Fut: Future<Output = (Box<Pipeline>, Result<(), PipelineError>)> + Send + 'static,
    {
        let WorkerState::Idle(pipeline) = std::mem::replace(&mut self.state, WorkerState::Gone)
        else {
            unreachable!("a worker is idle after done()");
        };
        self.state = WorkerState::Busy(tokio::spawn(work(pipeline)));
    }

    /// Waits for the batch in flight (cancel safe: the task keeps running if this is dropped).
    async fn done(&mut self) -> Result<(), PipelineError> {
        let WorkerState::Busy(task) = &mut self.state else {
            return Ok(());
        };
        let (pipeline, result) = task
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.state = WorkerState::Idle(pipeline);
        result
    }

    /// Waits for the batch in flight and hands the pipeline back.
    async fn finish(mut self) -> Result<Pipeline, PipelineError> {
        self.done().await?;
        match self.state {
            WorkerState::Idle(p) => Ok(*p),
            _ => unreachable!("a worker is idle after done()"),
        }
    }

    /// Stops the batch in flight (the lease is lost: it must not commit).
    fn abort(&mut self) {
        if let WorkerState::Busy(task) = &self.state {
            task.abort();
        }
    }
}

/// Decodes chunks on blocking threads, `DECODERS` at a time, in order, overlapping with
/// transforms and writes.
async fn decode_loop(
    input: Arc<Input>,
    mut rx: mpsc::Receiver<RawChunk>,
    tx: mpsc::Sender<Decoded>,
) -> Result<(), SourceError> {
    // Decoders are kept between chunks (their buffers are reused): one per chunk in flight.
    let pool: Arc<std::sync::Mutex<Vec<Decoder>>> = Arc::default();
    let chunks = futures::stream::poll_fn(|cx| rx.poll_recv(cx));
    let mut decoded = chunks
        .map(|chunk| {
            let (input, pool) = (input.clone(), pool.clone());
            tokio::task::spawn_blocking(move || {
                let kept = pool.lock().expect("decoder pool").pop();
                let mut decoder = kept.unwrap_or_else(|| Decoder::new(&input));
                let decoded = decoder.decode(&chunk);
                pool.lock().expect("decoder pool").push(decoder);
                chunk.recycle();
                decoded
            })
        })
        .buffered(DECODERS);
    while let Some(d) = decoded.next().await {
        let d = d.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        if tx.send(d).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
