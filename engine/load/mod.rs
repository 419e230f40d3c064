//! Loads behind the commit: once a batch's Parquet files are committed to the lake, each configured
//! destination (Glue, Redshift, PostgreSQL, BigQuery) takes the batch exactly once, in batch order,
//! on its own task, retried with backoff. A warehouse that is down never stops the lake.
//!
//! Exactly once: each destination keeps its own proof of what it loaded, keyed by (job, table,
//! batch): a ledger row written in the same transaction as the rows (PostgreSQL, Redshift), a load
//! job id derived from it (BigQuery), partitions that already exist (Glue). The cursor kept in the
//! lake (`_weir/<job>/loads/<destination>.json`) only says where to resume; a batch loaded but not
//! yet recorded there is skipped by the destination's own check.

pub mod bigquery;
pub mod catalog;
pub mod glue;
pub mod parked;
pub mod postgres;
pub mod redshift;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::commit::{CommitRecord, CommitStore};
use crate::job::{Job, LoadRetry, Target};
use parked::{Parked, ParkedStore};
pub use types::Warehouse;

/// Backoff between failed attempts: doubles from the first to the last, with jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The destination's table cannot take the output as it now is: fatal, before data moves.
    #[error("{destination} table {table}, column {column}: {message}")]
    Schema {
        destination: &'static str,
        table: String,
        column: String,
        message: String,
    },
    /// Anything worth retrying: unreachable, throttled, a failed statement or job.
    #[error("{destination}: {message}")]
    Failed {
        destination: &'static str,
        message: String,
    },
}

impl LoadError {
    /// Throttling, quotas and serialization conflicts: they pass, so a batch that meets them is
    /// never parked for them.
    pub fn is_throttling(&self) -> bool {
        let LoadError::Failed { message, .. } = self else {
            return false;
        };
        let m = message.to_ascii_lowercase();
        [
            "ratelimitexceeded",
            "quotaexceeded",
            "too many requests",
            "throttl",
            "could not serialize",
            "serializable isolation",
            "deadlock detected",
        ]
        .iter()
        .any(|t| m.contains(t))
    }

    pub fn failed(destination: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Failed {
            destination,
            message: message.to_string(),
        }
    }
}

/// One output table as a destination sees it.
#[derive(Debug, Clone)]
pub struct OutputTable {
    pub name: String,
    pub schema: SchemaRef,
    pub partition_by: Vec<String>,
    /// An update output's key columns (`emit = "update"`): one row per key.
    pub keys: Option<Vec<String>>,
}

impl OutputTable {
    /// Each output of a job as loaders see it: name, schema and partition columns.
    pub fn of(job: &Job, transforms: &crate::transform::Transforms) -> Vec<Self> {
        transforms
            .transforms
            .iter()
            .zip(&transforms.schemas)
            .map(|(t, schema)| Self {
                name: t.name.clone(),
                schema: schema.clone(),
                partition_by: job.output(&t.name).partition_by,
                keys: transforms.update_keys(&t.name).map(<[String]>::to_vec),
            })
            .collect()
    }

    /// The first partition column that is a date or timestamp (for BigQuery time partitioning).
    pub fn time_partition(&self) -> Option<&str> {
        use arrow::datatypes::DataType;
        self.partition_by
            .iter()
            .find(|c| {
                self.schema.field_with_name(c).is_ok_and(|f| {
                    matches!(f.data_type(), DataType::Date32 | DataType::Timestamp(_, _))
                })
            })
            .map(String::as_str)
    }
}

/// The lake as loaders read it: the store, its root, its URL (for manifests and catalogs) and its
/// identity (in every ledger key and load job id, so a new lake loads again).
#[derive(Clone)]
pub struct LakeFiles {
    pub store: Arc<dyn ObjectStore>,
    pub root: Path,
    /// Absolute URL of the lake root, without a trailing slash (`s3://b/p`, `file:///abs`).
    pub url: String,
    pub lake_id: String,
}

impl LakeFiles {
    pub fn new(location: &crate::storage::Location, lake_id: &str) -> Self {
        Self {
            store: location.store.clone(),
            root: location.root.clone(),
            url: location.url.to_string(),
            lake_id: lake_id.to_string(),
        }
    }

    pub fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|s| !s.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    pub fn url_of(&self, relative: &str) -> String {
        format!("{}/{}", self.url, relative.trim_start_matches('/'))
    }

    pub async fn read(&self, relative: &str) -> Result<bytes::Bytes, object_store::Error> {
        self.store.get(&self.path(relative)).await?.bytes().await
    }
}

/// A place committed batches are loaded into.
#[async_trait]
pub trait Destination: Send + Sync {
    /// Short name: "glue", "redshift", "postgres", "bigquery".
    fn name(&self) -> &'static str;
    /// Creates what loads need (database, tables, ledger) and evolves tables: a new nullable
    /// column is added; a changed or dropped column is a `LoadError::Schema`.
    async fn prepare(&self, tables: &[OutputTable]) -> Result<(), LoadError>;
    /// Whether the destination answers at all (any answer, even a refusal, counts): a batch
    /// that keeps failing while it does is parked; while it does not, the batch waits.
    async fn ping(&self) -> Result<(), LoadError>;
    /// Loads one committed batch; loading a batch already loaded does nothing.
    async fn load(&self, batch: &CommitRecord) -> Result<(), LoadError>;
}

/// The destinations a target configures, each connected lazily (nothing is contacted here).
pub fn destinations(job: &Job, target: &Target, lake: &LakeFiles) -> Vec<Arc<dyn Destination>> {
    let mut out: Vec<Arc<dyn Destination>> = Vec::new();
    if let Some(c) = &target.glue {
        out.push(Arc::new(glue::Glue::new(c, &job.name, lake.clone())));
    }
    if let Some(c) = &target.redshift {
        out.push(Arc::new(redshift::Redshift::new(
            c,
            &job.name,
            lake.clone(),
        )));
    }
    if let Some(c) = &target.postgres {
        out.push(Arc::new(postgres::Postgres::new(
            c,
            &job.name,
            lake.clone(),
        )));
    }
    if let Some(c) = &target.bigquery {
        out.push(Arc::new(bigquery::BigQuery::new(
            c,
            &job.name,
            lake.clone(),
        )));
    }
    out
}

/// The warehouses a target loads into, for type checks.
pub fn warehouses(target: &Target) -> Vec<Warehouse> {
    let mut w = Vec::new();
    if target.glue.is_some() {
        w.push(Warehouse::Glue);
    }
    if target.redshift.is_some() {
        w.push(Warehouse::Redshift);
    }
    if target.postgres.is_some() {
        w.push(Warehouse::Postgres);
    }
    if target.bigquery.is_some() {
        w.push(Warehouse::BigQuery);
    }
    w
}

/// Where a destination's loads have reached, kept in the lake beside the commit log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last batch loaded (every committed batch up to it is loaded).
    pub batch: u64,
    pub loaded_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The cursors of one job: `<lake>/_weir/<job>/loads/<destination>.json`.
#[derive(Clone)]
pub struct Cursors {
    store: Arc<dyn ObjectStore>,
    dir: Path,
}

impl Cursors {
    pub fn new(store: Arc<dyn ObjectStore>, state: Path) -> Self {
        Self {
            store,
            dir: state.join("loads"),
        }
    }

    /// The cursor of a destination; `None` when it has never loaded into this lake.
    pub async fn get(&self, destination: &str) -> Result<Option<Cursor>, String> {
        let path = self.dir.clone().join(format!("{destination}.json"));
        match self.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| e.to_string())?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    format!(
                        "{path} is corrupt ({e}); write the last loaded batch into it ({{\"batch\": N}}), or delete it to load the tables' current contents again"
                    )
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn set(&self, destination: &str, cursor: &Cursor) -> Result<(), object_store::Error> {
        let body = serde_json::to_vec_pretty(cursor).expect("cursor serializes");
        self.store
            .put(
                &self.dir.clone().join(format!("{destination}.json")),
                PutPayload::from(body),
            )
            .await
            .map(|_| ())
    }
}

/// A destination's parked batches, as its loader knows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parking {
    pub count: usize,
    /// The lowest parked batch: compaction and trimming stay below it.
    pub lowest: Option<u64>,
}

/// One loader as the run sees it.
struct Loader {
    name: &'static str,
    loaded: watch::Receiver<u64>,
    parking: watch::Receiver<Parking>,
}

/// The loader tasks of a run: one per destination, each following the commits in order.
pub struct Loads {
    committed: watch::Sender<u64>,
    loaders: Vec<Loader>,
    tasks: JoinSet<Result<(), LoadError>>,
}

/// What every loader of a run shares.
#[derive(Clone)]
pub struct LoadContext {
    pub tables: Vec<OutputTable>,
    pub commits: Arc<dyn CommitStore>,
    pub cursors: Cursors,
    pub parked: ParkedStore,
    pub retry: LoadRetry,
    pub lake: Backfill,
}

impl Loads {
    /// Starts one task per destination; each first loads the backlog up to `committed`. A
    /// destination new to this lake first loads the tables' current snapshot (`backfill`).
    pub fn start(
        destinations: Vec<(Arc<dyn Destination>, bool)>,
        context: LoadContext,
        committed: u64,
    ) -> Self {
        let (tx, rx) = watch::channel(committed);
        let mut tasks = JoinSet::new();
        let mut loaders = Vec::new();
        for (dest, prepared) in destinations {
            let (ltx, lrx) = watch::channel(0);
            let (ptx, prx) = watch::channel(Parking::default());
            loaders.push(Loader {
                name: dest.name(),
                loaded: lrx,
                parking: prx,
            });
            let follower = Follower {
                dest,
                context: context.clone(),
                committed: rx.clone(),
                loaded: ltx,
                parking: ptx,
                parked: Default::default(),
                prepared,
                start: committed,
            };
            tasks.spawn(async move {
                let r = follower.run().await;
                if let Err(e) = &r {
                    tracing::error!("loads stopped: {e}");
                }
                r
            });
        }
        Self {
            committed: tx,
            loaders,
            tasks,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.loaders.is_empty()
    }

    /// Tells the loaders a new batch is committed.
    pub fn committed(&self, batch: u64) {
        self.committed.send_replace(batch);
        for l in &self.loaders {
            backlog(l.name, batch, *l.loaded.borrow());
        }
    }

    /// The highest batch up to which every destination has loaded or parked everything, below
    /// its lowest parked batch (compaction and trimming must not touch later files or commits).
    pub fn min_loaded(&self) -> Option<u64> {
        self.loaders
            .iter()
            .map(|l| {
                let loaded = *l.loaded.borrow();
                match l.parking.borrow().lowest {
                    Some(p) => loaded.min(p.saturating_sub(1)),
                    None => loaded,
                }
            })
            .min()
    }

    /// Per destination, the batch it has loaded.
    pub fn progress(&self) -> Vec<(&'static str, u64)> {
        self.loaders
            .iter()
            .map(|l| (l.name, *l.loaded.borrow()))
            .collect()
    }

    /// Per destination with parked batches, how many.
    pub fn parked(&self) -> Vec<(&'static str, usize)> {
        self.loaders
            .iter()
            .map(|l| (l.name, l.parking.borrow().count))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Waits until every destination has loaded every committed batch; a fatal error ends it.
    pub async fn finish(
        &mut self,
        mut report: impl FnMut(&[(&'static str, u64)], u64),
    ) -> Result<(), LoadError> {
        let target = *self.committed.borrow();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let progress = self.progress();
            report(&progress, target);
            if progress.iter().all(|(_, b)| *b >= target) {
                return Ok(());
            }
            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = self.tasks.join_next() => {
                    done.expect("loader task panicked")?;
                }
            }
        }
    }

    /// Stops the loaders where they are; what they had not loaded is loaded by the next run.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One destination's loader: prepares, then loads each committed batch after its cursor.
struct Follower {
    dest: Arc<dyn Destination>,
    context: LoadContext,
    committed: watch::Receiver<u64>,
    loaded: watch::Sender<u64>,
    parking: watch::Sender<Parking>,
    /// Its parked batches.
    parked: std::collections::BTreeSet<u64>,
    prepared: bool,
    /// The last batch committed when the run started.
    start: u64,
}

impl Follower {
    async fn run(mut self) -> Result<(), LoadError> {
        let name = self.dest.name();
        let cursors = self.context.cursors.clone();
        let cursor = retry(name, "read cursor", || {
            let c = cursors.clone();
            async move { c.get(name).await.map_err(|e| LoadError::failed(name, e)) }
        })
        .await?;
        let mut at = cursor.as_ref().map_or(0, |c| c.batch);
        // Parked batches first: until they are known, compaction must not pass 0.
        let store = self.context.parked.clone();
        let parked = retry(name, "list parked batches", || {
            let store = store.clone();
            async move {
                store
                    .parked(name)
                    .await
                    .map_err(|e| LoadError::failed(name, e))
            }
        })
        .await?;
        self.parked = parked.iter().map(|p| p.batch).collect();
        self.publish_parking();
        self.loaded.send_replace(at);
        backlog(name, *self.committed.borrow(), at);
        if !self.prepared {
            let (dest, tables) = (self.dest.clone(), self.context.tables.clone());
            retry(name, "prepare", || {
                let (dest, tables) = (dest.clone(), tables.clone());
                async move { dest.prepare(&tables).await }
            })
            .await?;
        }
        if cursor.is_none() {
            // New to this lake: what is committed already comes from the tables' snapshot (the
            // oldest batches' files may be merged or gone), then the commits follow.
            if self.start > 0 {
                let (lake, tables, upto) = (
                    self.context.lake.clone(),
                    self.context.tables.clone(),
                    self.start,
                );
                let snapshot = retry(name, "read the tables' snapshot", || {
                    let (lake, tables) = (lake.clone(), tables.clone());
                    async move {
                        lake.snapshot(&tables, upto)
                            .await
                            .map_err(|e| LoadError::failed(name, e))
                    }
                })
                .await?;
                tracing::info!(
                    destination = name,
                    batch = upto,
                    files = snapshot.files.len(),
                    "new destination: loading the tables' current contents first"
                );
                let (dest, rec) = (self.dest.clone(), Arc::new(snapshot));
                retry(name, "load the tables' snapshot", || {
                    let (dest, rec) = (dest.clone(), rec.clone());
                    async move { dest.load(&rec).await }
                })
                .await?;
            }
            at = self.start;
            self.save(at).await?;
            self.loaded.send_replace(at);
        }
        loop {
            let committed = *self.committed.borrow_and_update();
            backlog(name, committed, at);
            if at >= committed {
                if self.committed.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            let commits = self.context.commits.clone();
            let pending = retry(name, "read the commit log", || {
                let commits = commits.clone();
                async move {
                    commits
                        .commits_after(at)
                        .await
                        .map_err(|e| LoadError::failed(name, e))
                }
            })
            .await?;
            for record in pending.into_iter().filter(|r| r.batch <= committed) {
                let started = std::time::Instant::now();
                let batch = record.batch;
                if self.load_or_park(record).await? {
                    metrics::counter!("weir_load_batches_total", "destination" => name)
                        .increment(1);
                    metrics::histogram!("weir_load_seconds", "destination" => name)
                        .record(started.elapsed().as_secs_f64());
                    tracing::debug!(destination = name, batch, "loaded");
                }
                at = batch;
                self.save(at).await?;
                self.loaded.send_replace(at);
                metrics::gauge!("weir_loaded_batch", "destination" => name).set(at as f64);
            }
            if at < committed {
                // Batch ids are not contiguous (an empty batch commits nothing): all caught up.
                at = committed;
                self.loaded.send_replace(at);
            }
        }
    }
}

impl Follower {
    /// Loads one batch, retried with backoff. After `attempts` failures while the destination
    /// answers, the batch is parked and false returned; while it does not answer (down,
    /// unreachable), the batch waits for it, since the next one would fail the same way.
    async fn load_or_park(&mut self, record: CommitRecord) -> Result<bool, LoadError> {
        let name = self.dest.name();
        let policy = self.context.retry;
        let mut delay = policy.backoff;
        let mut attempts = 0u32;
        loop {
            let error = match self.dest.load(&record).await {
                Ok(()) => {
                    // Parked by a run that stopped before moving its cursor past it.
                    if self.parked.remove(&record.batch) {
                        self.context
                            .parked
                            .forget(name, &record)
                            .await
                            .map_err(|e| LoadError::failed(name, e))?;
                        self.publish_parking();
                    }
                    if attempts > 0 {
                        tracing::info!(
                            destination = name,
                            batch = record.batch,
                            "loaded after {attempts} failed attempts"
                        );
                    }
                    return Ok(true);
                }
                Err(e @ LoadError::Schema { .. }) => return Err(e),
                Err(e) => e,
            };
            attempts += 1;
            metrics::counter!("weir_load_errors_total", "destination" => name).increment(1);
            if attempts >= policy.attempts && error.is_throttling() {
                tracing::warn!(
                    destination = name,
                    batch = record.batch,
                    "{error}; throttled, so the batch waits instead of being parked"
                );
            } else if attempts >= policy.attempts {
                match self.dest.ping().await {
                    Ok(()) => {
                        // An update output's rows are never parked: loading a later batch first
                        // and this one after would put older rows back over newer ones. They
                        // are loaded alone, and only the appended tables are parked; when they
                        // are what fails, the batch waits until the cause is fixed.
                        let (updates, appends) = split_updates(&record);
                        if updates.files.is_empty() {
                            self.park(record, error.to_string(), attempts).await?;
                            return Ok(false);
                        }
                        match self.dest.load(&updates).await {
                            Ok(()) if !appends.files.is_empty() => {
                                self.park(appends, error.to_string(), attempts).await?;
                                return Ok(false);
                            }
                            Ok(()) => return Ok(true),
                            Err(e) => tracing::warn!(
                                destination = name,
                                batch = record.batch,
                                "{e}; an update output's batches load in order, so this batch \
                                 waits instead of being parked: fix the cause and loads go on"
                            ),
                        }
                    }
                    Err(down) => tracing::warn!(
                        destination = name,
                        batch = record.batch,
                        "{error}; the destination does not answer ({down}), so the batch waits \
                         for it instead of being parked"
                    ),
                }
            } else {
                tracing::warn!(
                    destination = name,
                    batch = record.batch,
                    "attempt {attempts} of {} failed, retrying in {delay:?}: {error}",
                    policy.attempts
                );
            }
            back_off(&mut delay, policy.max_backoff).await;
        }
    }

    /// Records a batch as parked; the destination goes on with the next one.
    async fn park(
        &mut self,
        record: CommitRecord,
        error: String,
        attempts: u32,
    ) -> Result<(), LoadError> {
        let name = self.dest.name();
        tracing::error!(
            destination = name,
            batch = record.batch,
            "parked after {attempts} failed attempts: {error}; the next batches go on. \
             See `weir loads`, then `weir loads retry` once the cause is fixed"
        );
        let parked = Parked {
            destination: name.to_string(),
            batch: record.batch,
            error,
            attempts,
            parked_at: chrono::Utc::now(),
            skipped_at: None,
            record,
        };
        let store = self.context.parked.clone();
        retry(name, "park the batch", || {
            let (store, parked) = (store.clone(), parked.clone());
            async move {
                store
                    .park(&parked)
                    .await
                    .map_err(|e| LoadError::failed(name, e))
            }
        })
        .await?;
        self.parked.insert(parked.batch);
        self.publish_parking();
        Ok(())
    }

    fn publish_parking(&self) {
        let parking = Parking {
            count: self.parked.len(),
            lowest: self.parked.first().copied(),
        };
        metrics::gauge!("weir_load_parked_batches", "destination" => self.dest.name())
            .set(parking.count as f64);
        self.parking.send_replace(parking);
    }

    async fn save(&self, at: u64) -> Result<(), LoadError> {
        let name = self.dest.name();
        let cursor = Cursor {
            batch: at,
            loaded_at: Some(chrono::Utc::now()),
        };
        let cursors = self.context.cursors.clone();
        retry(name, "save cursor", || {
            let (c, cur) = (cursors.clone(), cursor.clone());
            async move {
                c.set(name, &cur)
                    .await
                    .map_err(|e| LoadError::failed(name, e))
            }
        })
        .await
    }
}

/// The lake as a backfill reads it: each output's Delta table.
#[derive(Clone)]
pub struct Backfill {
    pub location: crate::storage::Location,
    pub job: String,
}

impl Backfill {
    /// The tables' current contents up to batch `upto`, as one record: every live file of a
    /// batch up to `upto` (merged files only ever hold such batches: compaction waits for every
    /// destination, this one included, while it backfills). An update output's live files are
    /// its current contents, which replace the destination's (the batches after `upto` that
    /// follow replace keys again, so it ends at the table's state).
    pub async fn snapshot(
        &self,
        tables: &[OutputTable],
        upto: u64,
    ) -> Result<CommitRecord, deltalake::DeltaTableError> {
        let mut files = Vec::new();
        let mut rows = std::collections::BTreeMap::new();
        for t in tables {
            let Some(table) = crate::sink::lake::delta::open(&self.location, &t.name).await? else {
                continue;
            };
            let mut live = crate::sink::lake::delta::live_files(&table).await?;
            live.sort_by(|a, b| a.path.cmp(&b.path));
            let mut n = 0;
            let upsert = t.keys.as_ref().map(|_| crate::sink::Upsert::Contents);
            for f in live {
                let name = f.path.rsplit('/').next().unwrap_or(&f.path);
                let batch = crate::sink::lake::batch_of(&self.job, name);
                if upsert.is_none() && batch.is_none_or(|b| b > upto) {
                    continue;
                }
                n += f.rows.unwrap_or(0);
                files.push(crate::sink::WrittenFile {
                    table: t.name.clone(),
                    path: format!("{}/{}", t.name, f.path),
                    rows: f.rows.unwrap_or(0),
                    bytes: f.bytes,
                    upsert: upsert.clone(),
                });
            }
            rows.insert(t.name.clone(), n);
        }
        Ok(CommitRecord {
            job: self.job.clone(),
            batch: upto,
            range: Default::default(),
            checkpoint: Default::default(),
            records: 0,
            dead_letters: 0,
            rows,
            files,
            committed_at: chrono::Utc::now(),
            backfill: true,
            windows: Default::default(),
            lease: None,
        })
    }
}

/// A committed batch split in two: its update outputs' tables, and the other tables.
fn split_updates(record: &CommitRecord) -> (CommitRecord, CommitRecord) {
    let updated: std::collections::BTreeSet<&str> = record
        .files
        .iter()
        .filter(|f| f.upsert.is_some())
        .map(|f| f.table.as_str())
        .collect();
    let part = |keep: bool| {
        let mut r = record.clone();
        r.files
            .retain(|f| updated.contains(f.table.as_str()) == keep);
        r.rows.retain(|t, _| updated.contains(t.as_str()) == keep);
        r
    };
    (part(true), part(false))
}

/// Sets a destination's backlog gauge: committed batch ids not yet loaded.
fn backlog(destination: &'static str, committed: u64, loaded: u64) {
    metrics::gauge!("weir_load_backlog_batches", "destination" => destination)
        .set(committed.saturating_sub(loaded) as f64);
}

/// Sleeps `delay` with jitter (half to all of it), then doubles it up to `max`.
async fn back_off(delay: &mut Duration, max: Duration) {
    let jitter = rand::random_range(0.5..1.0);
    tokio::time::sleep(delay.mul_f64(jitter)).await;
    *delay = (*delay * 2).min(max);
}

/// Runs `f` until it succeeds; schema errors are not retried.
async fn retry<T, F, Fut>(destination: &'static str, what: &str, mut f: F) -> Result<T, LoadError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LoadError>>,
{
    let mut delay = BACKOFF_FIRST;
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!(destination, "{what}: succeeded after {attempt} retries");
                }
                return Ok(v);
            }
            Err(e @ LoadError::Schema { .. }) => return Err(e),
            Err(e) => {
                attempt += 1;
                metrics::counter!("weir_load_errors_total", "destination" => destination)
                    .increment(1);
                tracing::warn!(
                    destination,
                    "{what} failed (attempt {attempt}, retrying in {delay:?}): {e}"
                );
                back_off(&mut delay, BACKOFF_MAX).await;
            }
        }
    }
}
