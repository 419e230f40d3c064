//! A leased worker: `weir run` of a target whose Kinesis source names a lease table
//! (`source.leases`). Any number of workers share the stream through DynamoDB shard leases in the
//! KCL schema (`source::kinesis::leases`); each runs one shard writer per shard it owns.
//!
//! - **Shard writers.** A shard's writer is the job under the name `<job>.<shard>` (as in Lambda
//!   mode): its own batches, commit log and Delta transaction, over tables all writers share
//!   (Delta's concurrent appends). Whoever owns the shard next resumes at its last commit.
//! - **Leases.** Every third of the failover time a worker renews its leases, and reads the table:
//!   a lease whose counter has not moved for the failover time, or that nobody holds, is free.
//!   Each worker aims at ceil(shards / workers) leases: it takes free ones, and when there are
//!   none, steals one at a time from the busiest worker if it holds more than that.
//! - **Fencing.** A shard writer renews its lease (a conditional update of the counter) just
//!   before its tables commit, so a worker that lost the lease stops without committing; a lost
//!   renewal stops the writer's batch in flight. A writer paused between that check and its Delta
//!   commits is fenced by the batch's Delta transaction and its commit record's conditional
//!   create (both keyed by the shard writer and batch), which the new owner's replay of the same
//!   planned batch also takes.
//! - **Splits and merges.** A shard read to its end is checkpointed `SHARD_END` and released; a
//!   child's lease is taken only once every parent's is at `SHARD_END`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::commit::LeaseMark;
use crate::commit::lease::{LeaseError, WriterLease};
use crate::job::{Job, config::SourceConfig};
use crate::pipeline::{Pipeline, PipelineError, RunOptions, RunSummary, chunk_limits};
use crate::source::kinesis::leases::{Changed, LeaseTable, LeaseTableError, ShardLease};
use crate::source::kinesis::{KinesisSource, StartAt};
use crate::source::{Checkpoint, Source, SourceError};

/// How often a worker lists the stream's shards to add leases for new ones.
const SHARD_SYNC: Duration = Duration::from_secs(10);
/// A shard writer that fails while its lease is held is started again this many times in a row
/// (after 1, 2, 3 s), then the worker stops with the error.
const RESTARTS: u32 = 3;
/// A writer that ran this long before failing starts its count of failures anew.
const RESTART_RESET: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Table(#[from] LeaseTableError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("shard {shard}: {source}")]
    Writer {
        shard: String,
        source: PipelineError,
    },
}

impl From<SourceError> for WorkerError {
    fn from(e: SourceError) -> Self {
        WorkerError::Pipeline(e.into())
    }
}

impl From<crate::job::JobError> for WorkerError {
    fn from(e: crate::job::JobError) -> Self {
        WorkerError::Pipeline(e.into())
    }
}

/// What one worker did.
#[derive(Debug, Default)]
pub struct WorkerSummary {
    pub worker: String,
    pub source: String,
    pub lake: String,
    /// Per shard it wrote, what its writer did (summed over the times it owned the shard).
    pub shards: BTreeMap<String, RunSummary>,
    pub taken: u64,
    pub stolen: u64,
    pub lost: u64,
    pub ended: u64,
    pub elapsed: Duration,
}

/// One worker of a leased target.
pub struct Worker {
    job: Job,
    opts: RunOptions,
    stream: KinesisSource,
    table: LeaseTable,
    me: String,
    failover: Duration,
    /// The checkpoint of a new root shard's lease: where it starts.
    initial: String,
    start: StartAt,
    /// The job's checkpoint from before its target was leased (its one writer's last commit):
    /// a shard writer without commits of its own resumes there instead of starting over.
    seed: Checkpoint,
}

/// The default worker id: host name and process id.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "host".into());
    format!("{host}:{}", std::process::id())
}

/// The job's checkpoint from its one writer's commit log (`weir run` without leases), if any.
/// That writer must not be running: its lease in the lake is taken and given back.
async fn job_checkpoint(
    job: &Job,
    opts: &RunOptions,
    target_lake: &str,
) -> Result<Checkpoint, WorkerError> {
    use crate::commit::{CommitStore, ObjectCommitStore};
    let url = opts.lake.clone().unwrap_or(target_lake.to_string());
    let lake = crate::sink::lake::Lake::open(&url, job)
        .await
        .map_err(PipelineError::from)?;
    // Workers starting together take it in turn, each for a moment.
    let mut attempts = 0;
    loop {
        match lake.take_lease().await {
            Ok(lease) => {
                lease.release().await;
                break;
            }
            Err(LeaseError::Held { .. }) if attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100 + 50 * attempts)).await;
            }
            Err(e) => return Err(PipelineError::from(e).into()),
        }
    }
    let location = crate::storage::Location::parse(&url).map_err(PipelineError::from)?;
    let state = location.path(&crate::sink::lake::Layout::new(&job.name).state());
    let commits = ObjectCommitStore::new(location.store.clone(), state, &job.name);
    let recovered = commits.recover().await.map_err(PipelineError::from)?;
    if recovered.pending.is_some() {
        return Err(SourceError::Invalid {
            input: job.name.clone(),
            message: "the lake holds a batch that a run without leases planned but did not \
                      commit: finish it with that target first (`weir run` replays it), then \
                      start the leased workers"
                .into(),
        }
        .into());
    }
    Ok(recovered.last.map(|c| c.checkpoint).unwrap_or_default())
}

impl Worker {
    /// Checks the job and its target (whose source must name a lease table), connects to the
    /// stream and opens (or creates) the lease table, before any lease is taken.
    pub async fn open(
        job: Job,
        opts: RunOptions,
        worker_id: Option<String>,
    ) -> Result<Self, WorkerError> {
        let target = job.target(opts.target.as_deref())?.clone();
        let SourceConfig::Kinesis {
            stream,
            start,
            timestamp,
            consumer,
            leases: Some(table),
            failover,
        } = &target.source
        else {
            return Err(SourceError::Invalid {
                input: target.name.clone(),
                message:
                    "a leased worker needs a Kinesis source with leases = \"<DynamoDB table>\""
                        .into(),
            }
            .into());
        };
        if opts.input.is_some() {
            return Err(SourceError::Invalid {
                input: stream.clone(),
                message: "--input reads files with the job's one writer; leased workers read \
                          the stream (use another target for files)"
                    .into(),
            }
            .into());
        }
        let invalid = |message: String| SourceError::Invalid {
            input: stream.clone(),
            message,
        };
        let start = StartAt::parse(start.as_deref(), timestamp.as_deref()).map_err(invalid)?;
        let failover = crate::job::units::parse_duration(
            failover
                .as_deref()
                .unwrap_or(crate::job::config::DEFAULT_FAILOVER),
        )
        .map_err(invalid)?;
        // Plans checked before anything is touched (each shard writer plans its own too).
        crate::transform::Transforms::load(&job)
            .await
            .map_err(PipelineError::from)?;
        let source = KinesisSource::open(
            stream,
            start.clone(),
            consumer.as_deref(),
            chunk_limits(&job.batch),
        )
        .await?;
        let table = LeaseTable::open(table, failover).await?;
        let seed = job_checkpoint(&job, &opts, &target.lake).await?;
        let initial = match start {
            StartAt::TrimHorizon | StartAt::Sequence(_) => "TRIM_HORIZON",
            StartAt::Latest => "LATEST",
            StartAt::Timestamp(_) => "AT_TIMESTAMP",
        }
        .to_string();
        Ok(Self {
            job,
            opts,
            stream: source,
            table,
            me: worker_id.unwrap_or_else(default_worker_id),
            failover,
            initial,
            start,
            seed,
        })
    }

    pub fn id(&self) -> &str {
        &self.me
    }

    pub fn describe(&self) -> String {
        format!(
            "{}, shards leased in DynamoDB table {} as worker {} (failover {:?})",
            self.stream.describe(),
            self.table.name(),
            self.me,
            self.failover
        )
    }

    /// Adds an unowned lease for every listed shard that has none, parents first.
    async fn sync_shards(&self, known: &BTreeSet<String>) -> Result<BTreeSet<String>, WorkerError> {
        let listed = self.stream.shards().await?;
        let ids: BTreeSet<String> = listed.iter().map(|s| s.id.clone()).collect();
        let mut added: BTreeSet<&str> = BTreeSet::new();
        let mut pending: Vec<_> = listed.iter().filter(|s| !known.contains(&s.id)).collect();
        // Parents before children: a child's lease must never exist without its parents'.
        while !pending.is_empty() {
            let (ready, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|s| {
                s.parents
                    .iter()
                    .all(|p| known.contains(p) || added.contains(p.as_str()) || !ids.contains(p))
            });
            if ready.is_empty() {
                break;
            }
            for s in ready {
                let checkpoint = if s.parents.is_empty() {
                    self.initial.as_str()
                } else {
                    "TRIM_HORIZON"
                };
                // LATEST is the moment the shard's lease is added (1 s earlier for clock skew):
                // whichever worker reads it first, and any after it, start there.
                let pin =
                    (checkpoint == "LATEST").then(|| chrono::Utc::now().timestamp_millis() - 1000);
                if self
                    .table
                    .create_lease(&s.id, &s.parents, checkpoint, pin)
                    .await?
                {
                    tracing::info!(shard = %s.id, parents = ?s.parents, "lease added");
                }
                added.insert(&s.id);
            }
            pending = later;
        }
        Ok(ids)
    }

    /// Runs until `shutdown`: the shards it owns are committed up to the batch in hand, then its
    /// leases are released so that other workers take them at once.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<WorkerSummary, WorkerError> {
        let started = Instant::now();
        tokio::pin!(shutdown);
        let this = Arc::new(self);
        let mut summary = WorkerSummary {
            worker: this.me.clone(),
            source: this.describe(),
            lake: this
                .opts
                .lake
                .clone()
                .unwrap_or(this.job.target(this.opts.target.as_deref())?.lake.clone()),
            ..Default::default()
        };
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        let mut writers: JoinSet<(String, Result<RunSummary, PipelineError>)> = JoinSet::new();
        let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut listed = this.sync_shards(&BTreeSet::new()).await?;
        let mut synced = Instant::now();
        let round = (this.failover / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(round);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result: Result<(), WorkerError> = async {
            loop {
                // Leases lost to another worker stay in `held` until their writer ends.
                let holding = held.values().filter(|h| !h.lease.is_lost()).count();
                metrics::gauge!("weir_leases_held").set(holding as f64);
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tick.tick() => {}
                    Some(done) = writers.join_next() => {
                        let (shard, result) = done.expect("shard writer panicked");
                        if let Some(h) = this.writer_done(&mut held, &mut summary, &shard, result).await? {
                            this.spawn_writer(&mut writers, &shard, &h);
                            held.insert(shard, h);
                        }
                        continue;
                    }
                }
                // A failed read of the table or the stream is tried again at the next round;
                // meanwhile each lease held is renewed by a task of its own.
                let leases = match this.table.scan().await {
                    Ok(leases) => leases,
                    Err(e) => {
                        tracing::warn!("reading the lease table: {e}");
                        continue;
                    }
                };
                if synced.elapsed() >= SHARD_SYNC {
                    let known = leases.iter().map(|l| l.shard.clone()).collect();
                    match this.sync_shards(&known).await {
                        Ok(ids) => listed = ids,
                        Err(e) => tracing::warn!("adding leases for new shards: {e}"),
                    }
                    synced = Instant::now();
                }
                let now = Instant::now();
                for l in &leases {
                    let e = seen.entry(l.shard.clone()).or_insert((l.counter, now));
                    if e.0 != l.counter {
                        *e = (l.counter, now);
                    }
                }
                let mine: BTreeSet<&str> = held
                    .iter()
                    .filter(|(_, h)| !h.lease.is_lost())
                    .map(|(shard, _)| shard.as_str())
                    .collect();
                let me = Me {
                    id: &this.me,
                    token: this.table.token(),
                };
                let chosen = choose(me, this.failover, &leases, &mine, &seen, &listed);
                for (lease, stolen) in chosen {
                    // Not while the writer of a lease lost on that shard is still ending.
                    if held.contains_key(&lease.shard) {
                        continue;
                    }
                    this.take(&mut held, &mut writers, &mut summary, lease, stolen)
                        .await;
                }
            }
        }
        .await;
        // Stop every writer after its batch in hand (its lease still renewed meanwhile); each
        // lease is given up as its writer ends.
        for h in held.values() {
            h.stop.send_replace(true);
        }
        let mut result = result;
        while let Some(done) = writers.join_next().await {
            let (shard, ended) = done.expect("shard writer panicked");
            match this
                .writer_done(&mut held, &mut summary, &shard, ended)
                .await
            {
                Ok(_) => {}
                Err(e) => match &result {
                    Ok(()) => result = Err(e),
                    Err(_) => tracing::error!("{e}"),
                },
            }
        }
        metrics::gauge!("weir_leases_held").set(0.0);
        summary.elapsed = started.elapsed();
        result.map(|()| summary)
    }

    /// Takes `lease` and starts its shard writer.
    async fn take(
        self: &Arc<Self>,
        held: &mut BTreeMap<String, Held>,
        writers: &mut JoinSet<(String, Result<RunSummary, PipelineError>)>,
        summary: &mut WorkerSummary,
        lease: ShardLease,
        stolen: bool,
    ) {
        let counter = match self.table.take(&lease, &self.me).await {
            Ok(c) => c,
            Err(Changed::Lost) => return, // another worker was faster
            Err(Changed::Failed(e)) => {
                tracing::warn!(shard = %lease.shard, "taking the lease failed: {e}");
                return;
            }
        };
        tracing::info!(
            shard = %lease.shard,
            from = lease.owner.as_deref().unwrap_or("nobody"),
            stolen,
            "lease taken"
        );
        if stolen {
            summary.stolen += 1;
        } else {
            summary.taken += 1;
        }
        metrics::counter!("weir_lease_takes_total", "kind" => if stolen { "stolen" } else { "free" })
            .increment(1);
        let hold = Arc::new(ShardHold {
            table: self.table.clone(),
            shard: lease.shard.clone(),
            me: self.me.clone(),
            counter: AtomicU64::new(counter),
            checked: AtomicU64::new(counter),
            renewed: std::sync::Mutex::new(Instant::now()),
            serial: tokio::sync::Mutex::new(()),
            lost: watch::Sender::new(false),
            released: AtomicBool::new(false),
        });
        tokio::spawn(keep_renewed(hold.clone(), self.failover));
        let start = match (lease.checkpoint.as_str(), lease.start_at_ms) {
            ("LATEST", Some(at)) => StartAt::Timestamp(at),
            ("LATEST", None) => StartAt::Latest,
            ("AT_TIMESTAMP", _) => self.start.clone(),
            _ => StartAt::TrimHorizon,
        };
        let h = Held {
            lease: hold,
            stop: watch::Sender::new(false),
            ended: Arc::new(AtomicBool::new(false)),
            start,
            failures: 0,
            started: Instant::now(),
        };
        self.spawn_writer(writers, &lease.shard, &h);
        held.insert(lease.shard, h);
    }

    /// Starts (or starts again) the writer of a shard this worker holds.
    fn spawn_writer(
        self: &Arc<Self>,
        writers: &mut JoinSet<(String, Result<RunSummary, PipelineError>)>,
        shard: &str,
        h: &Held,
    ) {
        let seed = self.seed.get(shard).cloned();
        let (source, ended) = self.stream.one_shard(shard, h.start.clone(), seed);
        let this = self.clone();
        let lease: Arc<dyn WriterLease> = h.lease.clone();
        let stop = h.stop.subscribe();
        let flag = h.ended.clone();
        let delay = Duration::from_secs(u64::from(h.failures));
        let shard = shard.to_string();
        writers.spawn(async move {
            tokio::time::sleep(delay).await;
            let result = this.write_shard(&shard, source, lease, stop).await;
            flag.store(ended.load(Ordering::SeqCst), Ordering::SeqCst);
            (shard, result)
        });
    }

    async fn write_shard(
        &self,
        shard: &str,
        source: KinesisSource,
        lease: Arc<dyn WriterLease>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<RunSummary, PipelineError> {
        let writer = Job {
            name: format!("{}.{shard}", self.job.name),
            ..self.job.clone()
        };
        let pipeline = Pipeline::open_shard(writer, &self.opts, Arc::new(source), lease).await?;
        pipeline
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    }

    /// A shard writer ended: read to the shard's end (checkpointed `SHARD_END` and released),
    /// stopped (released), lost its lease, or failed. A failure while the lease is still held
    /// (the old owner of a stolen lease, not yet aware of it, planned or committed first; a
    /// storage error) starts the writer again, which recovers from the commit log, up to
    /// `RESTARTS` times in a row; then the worker stops with the error. Returns the lease to
    /// start again.
    async fn writer_done(
        &self,
        held: &mut BTreeMap<String, Held>,
        summary: &mut WorkerSummary,
        shard: &str,
        result: Result<RunSummary, PipelineError>,
    ) -> Result<Option<Held>, WorkerError> {
        let Some(mut h) = held.remove(shard) else {
            return Ok(None);
        };
        let stopping = *h.stop.borrow();
        // Whatever failed, a writer that lost its lease just stops.
        let lost = result.is_err()
            && (h.lease.is_lost() || matches!(h.lease.renew().await, Err(Changed::Lost)));
        match result {
            Ok(s) => {
                add(summary.shards.entry(shard.to_string()).or_default(), &s);
                // The shard's end counts only when the run drained its source: a stop may have
                // dropped records read but not yet in a batch.
                h.lease.released.store(true, Ordering::SeqCst);
                if h.ended.load(Ordering::SeqCst) && !stopping {
                    match h.lease.end().await {
                        Ok(()) => {
                            summary.ended += 1;
                            tracing::info!(%shard, "shard read to its end: checkpointed SHARD_END and released");
                        }
                        Err(e) => tracing::warn!(%shard, "checkpointing SHARD_END: {e}"),
                    }
                } else {
                    match h.lease.give_up().await {
                        Ok(()) => tracing::info!(%shard, "lease released"),
                        Err(e) => tracing::warn!(%shard, "releasing the lease: {e}"),
                    }
                }
                Ok(None)
            }
            Err(e) if lost => {
                tracing::warn!(%shard, "shard writer stopped after losing its lease: {e}");
                summary.lost += 1;
                metrics::counter!("weir_leases_lost_total").increment(1);
                Ok(None)
            }
            Err(e) => {
                if h.started.elapsed() > RESTART_RESET {
                    h.failures = 0;
                }
                // A lease change that failed (DynamoDB slow or away) is retried by starting
                // again, without counting: whether the lease is still held is the renewals' call.
                let lease_call = matches!(e, PipelineError::Lease(LeaseError::ShardLease { .. }));
                if !lease_call || h.failures == 0 {
                    h.failures += 1;
                }
                if stopping || h.failures > RESTARTS {
                    h.lease.released.store(true, Ordering::SeqCst);
                    let _ = h.lease.give_up().await;
                    Err(WorkerError::Writer {
                        shard: shard.to_string(),
                        source: e,
                    })
                } else {
                    tracing::warn!(%shard, attempt = h.failures, "shard writer failed, starting it again: {e}");
                    h.started = Instant::now();
                    Ok(Some(h))
                }
            }
        }
    }
}

/// Renews one lease every third of the failover time, on a task of its own (nothing else the
/// worker does can delay it), until it is released or lost. A lease found lost stops its writer;
/// one not renewed for the failover time is given up as lost (another worker may have it).
async fn keep_renewed(hold: Arc<ShardHold>, failover: Duration) {
    let mut tick = tokio::time::interval((failover / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let shard = &hold.shard;
        match hold.renew_unless_released().await {
            None => return,
            Some(Ok(())) => {}
            Some(Err(Changed::Lost)) => {
                tracing::warn!(%shard, "lease lost to another worker: its writer stops without committing");
                return;
            }
            Some(Err(Changed::Failed(e))) if hold.renewed.lock().unwrap().elapsed() >= failover => {
                tracing::warn!(%shard, "lease not renewed for the failover time ({e}): its writer stops");
                hold.lose();
                return;
            }
            Some(Err(Changed::Failed(e))) => {
                tracing::warn!(%shard, "renewing the lease failed: {e}");
            }
        }
    }
}

/// The worker choosing leases: its id, and its process's token (which tells its own leases from
/// those of an earlier process with the same id).
#[derive(Clone, Copy)]
struct Me<'a> {
    id: &'a str,
    token: &'a str,
}

/// The leases to take now: free ones up to this worker's share, else one stolen from the
/// busiest worker when it holds more than its share.
fn choose(
    me: Me<'_>,
    failover: Duration,
    leases: &[ShardLease],
    held: &BTreeSet<&str>,
    seen: &HashMap<String, (u64, Instant)>,
    listed: &BTreeSet<String>,
) -> Vec<(ShardLease, bool)> {
    let by_id: HashMap<&str, &ShardLease> = leases.iter().map(|l| (l.shard.as_str(), l)).collect();
    // A child waits until every parent is read to its end. A parent the stream no longer lists
    // (past its retention) has nothing left to read; one listed but without a lease has not been
    // added yet.
    let parents_done = |l: &ShardLease| {
        l.parents.iter().all(|p| match by_id.get(p.as_str()) {
            _ if !listed.contains(p) => true,
            Some(parent) => parent.ended(),
            None => false,
        })
    };
    let me_id = me.id;
    let expired = |l: &ShardLease| match &l.owner {
        None => true,
        // Still in this worker's name but not held, last changed by this very process (a lease
        // given up as lost, a release whose answer was lost): free for it at once. One left by
        // an earlier process with the same id waits for the failover time like any other.
        Some(o) if o == me_id && l.changed_by(me.token) => !held.contains(l.shard.as_str()),
        Some(o) if o == me_id && held.contains(l.shard.as_str()) => false,
        Some(_) => seen
            .get(&l.shard)
            .is_some_and(|(_, since)| since.elapsed() >= failover),
    };
    // Leases of shards the stream no longer lists are left alone: nothing can be read from them.
    let active: Vec<&ShardLease> = leases
        .iter()
        .filter(|l| !l.ended() && listed.contains(&l.shard) && parents_done(l))
        .collect();
    let mut per_owner: BTreeMap<&str, Vec<&ShardLease>> = BTreeMap::new();
    per_owner.insert(me_id, Vec::new());
    for l in &active {
        if let Some(o) = &l.owner
            && !expired(l)
            && o != me_id
        {
            per_owner.entry(o.as_str()).or_default().push(l);
        }
    }
    let target = active.len().div_ceil(per_owner.len());
    let mine = held.len();
    if mine >= target {
        return Vec::new();
    }
    // Each worker goes through the free leases in an order of its own, so that workers starting
    // together mostly take different ones instead of racing for the same.
    let mut free: Vec<&ShardLease> = active
        .iter()
        .copied()
        .filter(|l| !held.contains(l.shard.as_str()) && expired(l))
        .collect();
    free.sort_by_key(|l| {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (me_id, &l.shard).hash(&mut h);
        h.finish()
    });
    let free: Vec<(ShardLease, bool)> = free
        .into_iter()
        .take(target - mine)
        .map(|l| (l.clone(), false))
        .collect();
    if !free.is_empty() {
        return free;
    }
    let busiest = per_owner
        .iter()
        .filter(|(o, _)| **o != me_id)
        .max_by_key(|(_, ls)| ls.len());
    match busiest {
        Some((_, ls)) if ls.len() > target => vec![((*ls[ls.len() - 1]).clone(), true)],
        _ => Vec::new(),
    }
}

/// Sums a shard writer's runs.
fn add(total: &mut RunSummary, s: &RunSummary) {
    total.source = s.source.clone();
    total.lake = s.lake.clone();
    total.records += s.records;
    total.dead_letters += s.dead_letters;
    total.batches += s.batches;
    total.micro_batches += s.micro_batches;
    total.replayed += s.replayed;
    total.files += s.files;
    total.bytes += s.bytes;
    total.input_bytes += s.input_bytes;
    for (t, n) in &s.rows {
        *total.rows.entry(t.clone()).or_default() += n;
    }
    total.last_batch = s.last_batch.or(total.last_batch);
    total.checkpoint.extend(s.checkpoint.clone());
    total.elapsed += s.elapsed;
}

/// A lease this worker holds, and its shard writer.
struct Held {
    lease: Arc<ShardHold>,
    /// Asks the writer to stop after its batch in hand.
    stop: watch::Sender<bool>,
    /// Set once the writer read the shard to its end.
    ended: Arc<AtomicBool>,
    /// Where the shard starts when its writer has no commit yet.
    start: StartAt,
    /// Failures in a row, and when the writer last started.
    failures: u32,
    started: Instant,
}

/// A shard lease as its writer holds it: every change (renewal, checkpoint, release) is a
/// conditional update at the counter last written, one at a time.
struct ShardHold {
    table: LeaseTable,
    shard: String,
    me: String,
    /// The counter last written by this worker.
    counter: AtomicU64,
    /// The counter at the last check before a commit (what the commit record names).
    checked: AtomicU64,
    /// When a change last succeeded.
    renewed: std::sync::Mutex<Instant>,
    serial: tokio::sync::Mutex<()>,
    lost: watch::Sender<bool>,
    /// Set before the worker ends or releases the lease: renewals stop.
    released: AtomicBool,
}

impl ShardHold {
    fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    fn lose(&self) {
        self.lost.send_replace(true);
    }

    async fn change<F, Fut>(&self, update: F) -> Result<(), Changed>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<u64, Changed>>,
    {
        let _one = self.serial.lock().await;
        if self.is_lost() {
            return Err(Changed::Lost);
        }
        match update(self.counter.load(Ordering::SeqCst)).await {
            Ok(next) => {
                self.counter.store(next, Ordering::SeqCst);
                *self.renewed.lock().unwrap() = Instant::now();
                Ok(())
            }
            Err(Changed::Lost) => {
                self.lose();
                Err(Changed::Lost)
            }
            Err(e) => Err(e),
        }
    }

    async fn renew(&self) -> Result<(), Changed> {
        self.change(|c| self.table.renew(&self.shard, &self.me, c))
            .await
    }

    /// A background renewal: none once the lease is being released (a renewal in flight ends
    /// before the release starts: both take `serial`).
    async fn renew_unless_released(&self) -> Option<Result<(), Changed>> {
        if self.released.load(Ordering::SeqCst) || self.is_lost() {
            return None;
        }
        let result = self
            .change(|c| async move {
                if self.released.load(Ordering::SeqCst) {
                    // Released while this renewal waited its turn: change nothing.
                    return Ok(c);
                }
                self.table.renew(&self.shard, &self.me, c).await
            })
            .await;
        Some(result)
    }

    /// Checkpoints `SHARD_END` and releases the lease, in one change.
    async fn end(&self) -> Result<(), Changed> {
        let result = self
            .change(|c| self.table.end(&self.shard, &self.me, c))
            .await;
        self.lose();
        result
    }

    async fn give_up(&self) -> Result<(), Changed> {
        let result = self
            .change(|c| self.table.release(&self.shard, &self.me, c))
            .await;
        self.lose();
        result
    }

    fn lost_error(&self) -> LeaseError {
        LeaseError::ShardLost {
            shard: self.shard.clone(),
            worker: self.me.clone(),
        }
    }

    fn failed(&self, e: Changed) -> LeaseError {
        match e {
            Changed::Lost => self.lost_error(),
            Changed::Failed(e) => LeaseError::ShardLease {
                shard: self.shard.clone(),
                message: e.to_string(),
            },
        }
    }
}

#[async_trait::async_trait]
impl WriterLease for ShardHold {
    /// Renews the lease: it is still this worker's, at the counter it last wrote.
    async fn check(&self) -> Result<(), LeaseError> {
        self.renew().await.map_err(|e| self.failed(e))?;
        self.checked
            .store(self.counter.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }

    async fn keep(self: Arc<Self>) -> LeaseError {
        let mut lost = self.lost.subscribe();
        let _ = lost.wait_for(|l| *l).await;
        self.lost_error()
    }

    /// Records the shard's checkpoint in the lease, as KCL workers do.
    async fn committed(&self, checkpoint: &Checkpoint) -> Result<(), LeaseError> {
        let Some(at) = checkpoint.get(&self.shard) else {
            return Ok(());
        };
        self.change(|c| self.table.checkpoint(&self.shard, &self.me, c, at))
            .await
            .map_err(|e| self.failed(e))
    }

    /// The worker releases its leases itself (after a shard's end is checkpointed).
    async fn release(&self) {}

    fn mark(&self) -> Option<LeaseMark> {
        Some(LeaseMark {
            owner: self.me.clone(),
            counter: self.checked.load(Ordering::SeqCst),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: u32, owner: Option<&str>, parents: &[u32], checkpoint: &str) -> ShardLease {
        ShardLease {
            shard: format!("s{shard}"),
            owner: owner.map(str::to_string),
            counter: 1,
            checkpoint: checkpoint.into(),
            sub: 0,
            owner_switches: 0,
            parents: parents.iter().map(|p| format!("s{p}")).collect(),
            start_at_ms: None,
            writer: None,
        }
    }

    /// Every lease last seen changing `ago`.
    fn seen(leases: &[ShardLease], ago: Duration) -> HashMap<String, (u64, Instant)> {
        let at = Instant::now() - ago;
        leases
            .iter()
            .map(|l| (l.shard.clone(), (l.counter, at)))
            .collect()
    }

    fn shards(chosen: &[(ShardLease, bool)]) -> Vec<(String, bool)> {
        chosen.iter().map(|(l, s)| (l.shard.clone(), *s)).collect()
    }

    const FAILOVER: Duration = Duration::from_secs(10);

    fn me(id: &str) -> Me<'_> {
        Me { id, token: "t1" }
    }

    /// Every shard `0..n` (and `extra`) listed by the stream.
    fn listed(n: u32, extra: &[u32]) -> BTreeSet<String> {
        (0..n)
            .chain(extra.iter().copied())
            .map(|i| format!("s{i}"))
            .collect()
    }

    #[test]
    fn takes_free_leases_up_to_its_share() {
        let leases: Vec<_> = (0..8)
            .map(|i| lease(i, None, &[], "TRIM_HORIZON"))
            .collect();
        let live = seen(&leases, Duration::ZERO);
        let none = BTreeSet::new();
        // Alone, a worker takes every free lease.
        let chosen = choose(me("a"), FAILOVER, &leases, &none, &live, &listed(8, &[]));
        assert_eq!(chosen.len(), 8);
        // Workers starting together go through them in different orders.
        let other = choose(me("b"), FAILOVER, &leases, &none, &live, &listed(8, &[]));
        assert_ne!(shards(&chosen), shards(&other));
        // With b holding three live leases, a's share of 8 is 4.
        let mut leases = leases;
        for l in leases.iter_mut().take(3) {
            l.owner = Some("b".into());
        }
        let chosen = choose(me("a"), FAILOVER, &leases, &none, &live, &listed(8, &[]));
        assert_eq!(chosen.len(), 4, "{:?}", shards(&chosen));
        assert!(
            chosen
                .iter()
                .all(|(l, stolen)| l.owner.is_none() && !stolen)
        );
        // A shard the stream no longer lists is never taken.
        let chosen = choose(me("a"), FAILOVER, &leases, &none, &live, &listed(4, &[]));
        assert_eq!(shards(&chosen), [("s3".to_string(), false)]);
    }

    #[test]
    fn steals_one_at_a_time_from_the_busiest_and_takes_expired_leases() {
        let leases: Vec<_> = (0..8)
            .map(|i| lease(i, Some(if i < 4 { "a" } else { "b" }), &[], "TRIM_HORIZON"))
            .collect();
        let live = seen(&leases, Duration::ZERO);
        let all = listed(8, &[]);
        let chosen = choose(me("c"), FAILOVER, &leases, &BTreeSet::new(), &live, &all);
        assert_eq!(chosen.len(), 1, "one at a time");
        assert!(chosen[0].1, "stolen");
        // At its share (3 of 8 among 3), nothing more; with 3/3/2 nobody steals.
        let held: BTreeSet<&str> = ["x", "y", "z"].into();
        assert!(choose(me("c"), FAILOVER, &leases, &held, &live, &all).is_empty());
        // b stopped renewing: its leases are free after the failover time.
        let mut stale = live.clone();
        for i in 4..8 {
            stale.get_mut(&format!("s{i}")).unwrap().1 = Instant::now() - FAILOVER;
        }
        let chosen = choose(me("c"), FAILOVER, &leases, &BTreeSet::new(), &stale, &all);
        assert_eq!(chosen.len(), 4, "{:?}", shards(&chosen));
        assert!(
            chosen
                .iter()
                .all(|(l, stolen)| !stolen && l.owner.as_deref() == Some("b"))
        );
    }

    #[test]
    fn a_child_waits_for_every_parent_to_end() {
        let mut leases = vec![
            lease(0, Some("a"), &[], "49000"),
            lease(1, None, &[], SHARD_END_CHECKPOINT),
            lease(2, None, &[0, 1], "TRIM_HORIZON"),
        ];
        let live = seen(&leases, Duration::ZERO);
        let none = BTreeSet::new();
        let all = listed(3, &[]);
        assert!(choose(me("b"), FAILOVER, &leases, &none, &live, &all).is_empty());
        leases[0].checkpoint = SHARD_END_CHECKPOINT.into();
        leases[0].owner = None;
        let chosen = choose(me("b"), FAILOVER, &leases, &none, &live, &all);
        assert_eq!(shards(&chosen), [("s2".to_string(), false)]);
        // A parent without a lease that is still listed has not been added yet: wait.
        let orphan = vec![lease(3, None, &[9], "TRIM_HORIZON")];
        let live = seen(&orphan, Duration::ZERO);
        assert!(
            choose(
                me("b"),
                FAILOVER,
                &orphan,
                &none,
                &live,
                &listed(0, &[3, 9])
            )
            .is_empty()
        );
        // One past the stream's retention (not listed) does not hold its child back, even with
        // a lease short of SHARD_END.
        assert_eq!(
            choose(me("b"), FAILOVER, &orphan, &none, &live, &listed(0, &[3])).len(),
            1
        );
        let mut stuck = orphan.clone();
        stuck.push(lease(9, None, &[], "49000"));
        let chosen = choose(me("b"), FAILOVER, &stuck, &none, &live, &listed(0, &[3]));
        assert_eq!(shards(&chosen), [("s3".to_string(), false)]);
    }

    #[test]
    fn a_lease_in_its_own_name_is_free_at_once_only_for_the_process_that_left_it() {
        let mut leases = vec![lease(0, Some("a"), &[], "49000")];
        leases[0].writer = Some("t1/5".into());
        let live = seen(&leases, Duration::ZERO);
        let none = BTreeSet::new();
        // Given up as lost by this very process: taken again at once.
        assert_eq!(
            choose(me("a"), FAILOVER, &leases, &none, &live, &listed(1, &[])).len(),
            1
        );
        let held: BTreeSet<&str> = ["s0"].into();
        assert!(choose(me("a"), FAILOVER, &leases, &held, &live, &listed(1, &[])).is_empty());
        // Left by another process with the same id (maybe still running): after the failover
        // time only.
        let later = Me {
            id: "a",
            token: "t2",
        };
        assert!(choose(later, FAILOVER, &leases, &none, &live, &listed(1, &[])).is_empty());
        let stale = seen(&leases, FAILOVER);
        assert_eq!(
            choose(later, FAILOVER, &leases, &none, &stale, &listed(1, &[])).len(),
            1
        );
    }

    const SHARD_END_CHECKPOINT: &str = crate::source::kinesis::leases::SHARD_END;
}
