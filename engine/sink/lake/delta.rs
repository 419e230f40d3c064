//! Each lake table is a Delta Lake table (delta-rs): Weir writes the Parquet files itself (partition
//! columns kept inside them, Hive folders) and makes them visible with one Delta commit per table
//! and batch, carrying the batch as the job's idempotent transaction (`txn`), so a replay never
//! commits a table twice. Compaction is a `dataChange = false` rewrite; vacuum removes what a
//! rewrite removed once the retention has passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, Remove, StructField, StructType, Transaction};
use deltalake::logstore::{
    LogStore, LogStoreFactory, LogStoreRef, StorageConfig, default_logstore, logstore_factories,
    logstore_with,
};
use deltalake::operations::create::CreateBuilder;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::{DeltaResult, DeltaTable, DeltaTableError, ObjectStore, TableProperty};
use futures::TryStreamExt;
use url::Url;

use crate::storage::Location;

/// Delta checkpoint every this many commits (Delta's default); older log files are removed at a
/// checkpoint once they are past the log retention.
const CHECKPOINT_INTERVAL: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Delta table {table}: {source}")]
    Table {
        table: String,
        source: DeltaTableError,
    },
    #[error(
        "Delta table {table}: column {column}: {message}; CAST it back in the SQL, or write the output to a new table"
    )]
    Schema {
        table: String,
        column: String,
        message: String,
    },
}

/// A file to add to a table (path relative to the table's folder).
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: String,
    pub partition_values: Vec<(String, Option<String>)>,
    pub bytes: u64,
    pub rows: u64,
}

/// A live file of a table, as its current snapshot lists it.
#[derive(Debug, Clone)]
pub struct LiveFile {
    /// Relative to the table's folder.
    pub path: String,
    pub bytes: u64,
    pub rows: Option<u64>,
    pub remove: Remove,
}

/// The Delta tables of one lake, as one job writes them.
pub struct DeltaLake {
    location: Location,
    /// The job's application id in every table's `txn` (job and lake identity).
    app_id: String,
    retention: Duration,
    /// The last snapshot seen of each table: each commit starts from it and replaces it.
    tables: TableCache,
}

/// Each table's last snapshot: kept across the invocations of a warm Lambda execution environment
/// (see [`DeltaLake::adopt`]). A snapshot is the table's, whichever writer read it: a writer's
/// own batches are found by its `txn` app id.
pub type TableCache = Arc<Mutex<HashMap<String, DeltaTable>>>;

impl DeltaLake {
    pub fn new(location: Location, app_id: String, retention: Duration) -> Self {
        register_schemes();
        Self {
            location,
            app_id,
            retention,
            tables: TableCache::default(),
        }
    }

    /// Starts from the snapshots of `cache` (an earlier run in this process), brought up to date
    /// with the commits made since (by any writer, in any process): only the log entries after
    /// each snapshot are read, instead of each table's log from its last checkpoint. A snapshot
    /// that cannot be brought up to date (a log that went away or was recreated) is dropped, and
    /// its table is loaded afresh when used.
    pub async fn adopt(&mut self, cache: TableCache) {
        let cached: Vec<(String, DeltaTable)> = cache
            .lock()
            .expect("lock")
            .iter()
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let refreshed =
            futures::future::join_all(cached.into_iter().map(|(name, mut table)| async move {
                let updated = table.update_incremental(None).await;
                (name, updated.map(|()| table))
            }))
            .await;
        {
            let mut tables = cache.lock().expect("lock");
            for (name, table) in refreshed {
                match table {
                    Ok(t) => {
                        tables.insert(name, t);
                    }
                    Err(e) => {
                        tracing::info!(table = %name, "reloading the table: {e}");
                        tables.remove(&name);
                    }
                }
            }
        }
        self.tables = cache;
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    fn err(table: &str) -> impl Fn(DeltaTableError) -> DeltaError + '_ {
        move |source| DeltaError::Table {
            table: table.to_string(),
            source,
        }
    }

    /// The log store of a table folder.
    pub fn log_store(location: &Location, table: &str) -> DeltaResult<LogStoreRef> {
        register_schemes();
        let url = table_url(location, table)?;
        logstore_with(location.store.clone(), &url, StorageConfig::default())
    }

    /// The table as last seen, or loaded (`None` when it does not exist yet).
    async fn table(&self, name: &str) -> Result<Option<DeltaTable>, DeltaError> {
        if let Some(t) = self.tables.lock().expect("lock").get(name).cloned() {
            return Ok(Some(t));
        }
        let t = open(&self.location, name).await.map_err(Self::err(name))?;
        if let Some(t) = &t {
            self.remember(name, t.clone());
        }
        Ok(t)
    }

    /// The table, which `ensure` must have created.
    async fn existing(&self, name: &str) -> Result<DeltaTable, DeltaError> {
        self.table(name).await?.ok_or_else(|| {
            Self::err(name)(DeltaTableError::NotATable(format!(
                "{name} was not created"
            )))
        })
    }

    fn remember(&self, name: &str, table: DeltaTable) {
        self.tables
            .lock()
            .expect("lock")
            .insert(name.to_string(), table);
    }

    /// Creates the table if missing; otherwise checks its columns against `schema`: a new column
    /// is added (a metadata commit), a changed or dropped one is an error naming it.
    pub async fn ensure(
        &self,
        name: &str,
        schema: &SchemaRef,
        partition_by: &[String],
    ) -> Result<(), DeltaError> {
        let wanted = kernel_schema(name, schema)?;
        let Some(table) = self.table(name).await? else {
            let log_store = Self::log_store(&self.location, name).map_err(Self::err(name))?;
            let retention = format!("interval {} seconds", self.retention.as_secs());
            let created = CreateBuilder::new()
                .with_log_store(log_store)
                .with_table_name(name)
                .with_columns(wanted.fields().cloned())
                .with_partition_columns(partition_by.iter().cloned())
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(CHECKPOINT_INTERVAL.to_string()),
                )
                .with_configuration_property(
                    TableProperty::DeletedFileRetentionDuration,
                    Some(retention.clone()),
                )
                .with_configuration_property(TableProperty::LogRetentionDuration, Some(retention))
                .await;
            let created = match created {
                Ok(t) => t,
                // Created meanwhile by another process: use theirs.
                Err(_) if open(&self.location, name).await.is_ok_and(|t| t.is_some()) => {
                    return Box::pin(self.ensure(name, schema, partition_by)).await;
                }
                Err(e) => return Err(Self::err(name)(e)),
            };
            self.remember(name, created);
            return Ok(());
        };
        let snapshot = table.snapshot().map_err(Self::err(name))?;
        let existing = snapshot.schema();
        let mut fields: Vec<StructField> = existing.fields().cloned().collect();
        for f in existing.fields() {
            match wanted.field(f.name()) {
                None => {
                    return Err(DeltaError::Schema {
                        table: name.to_string(),
                        column: f.name().clone(),
                        message: "the output no longer has this column".into(),
                    });
                }
                Some(w) if w.data_type() != f.data_type() => {
                    return Err(DeltaError::Schema {
                        table: name.to_string(),
                        column: f.name().clone(),
                        message: format!(
                            "the output's type {} differs from the table's {}",
                            w.data_type(),
                            f.data_type()
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        let added: Vec<StructField> = wanted
            .fields()
            .filter(|w| existing.field(w.name()).is_none())
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        tracing::info!(table = name, columns = ?added.iter().map(|f| f.name()).collect::<Vec<_>>(), "adding columns to the Delta table");
        fields.extend(added);
        let new_schema = StructType::try_new(fields).map_err(|e| Self::err(name)(e.into()))?;
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&new_schema)
            .map_err(|e| Self::err(name)(e.into()))?;
        let table = self
            .commit(
                name,
                &table,
                vec![Action::Metadata(metadata)],
                DeltaOperation::SetTableProperties {
                    properties: HashMap::new(),
                },
                CommitProperties::default(),
            )
            .await?;
        self.remember(name, table);
        Ok(())
    }

    /// The last batch of this job committed to `name` (its `txn` version).
    pub async fn committed_batch(&self, name: &str) -> Result<Option<u64>, DeltaError> {
        let Some(table) = self.table(name).await? else {
            return Ok(None);
        };
        let v = table
            .snapshot()
            .map_err(Self::err(name))?
            .transaction_version(table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(Self::err(name))?;
        Ok(v.map(|v| v as u64))
    }

    /// What a batch's commit carries: the batch as the job's idempotent transaction (`txn`),
    /// and as `weirBatch` in its commit info.
    fn batch_props(&self, batch: u64, now: i64) -> CommitProperties {
        CommitProperties::default()
            .with_application_transaction(Transaction::new_with_last_update(
                &self.app_id,
                batch as i64,
                Some(now),
            ))
            .with_metadata([("weirBatch".to_string(), serde_json::json!(batch))])
    }

    /// Makes a batch's files visible in one commit carrying the batch as the job's transaction.
    /// Delta's conflict check fences a second writer committing the same transaction.
    pub async fn commit_batch(
        &self,
        name: &str,
        batch: u64,
        files: &[NewFile],
    ) -> Result<(), DeltaError> {
        let table = self.existing(name).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let actions = files.iter().map(|f| Action::Add(add(f, now))).collect();
        let props = self.batch_props(batch, now);
        let op = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: self.app_id.clone(),
            epoch_id: batch as i64,
        };
        let table = self.commit(name, &table, actions, op, props).await?;
        self.remember(name, table);
        Ok(())
    }

    /// Merges a batch's `changes` into an update output's table (delta-rs MERGE, on `keys` with
    /// NULL equal to NULL): a row whose `_weir_deleted` is true deletes its key's row, any other
    /// replaces it or is inserted. The commit carries the batch as the job's transaction, like
    /// [`Self::commit_batch`].
    pub async fn merge(
        &self,
        name: &str,
        batch: u64,
        changes: arrow::array::RecordBatch,
        keys: &[String],
    ) -> Result<(), DeltaError> {
        use datafusion::common::Column;
        use datafusion::logical_expr::{Expr, Operator, binary_expr, lit, not};
        let table = self.existing(name).await?;
        let props = self.batch_props(batch, chrono::Utc::now().timestamp_millis());
        let deleted = crate::sink::DELETED;
        let columns: Vec<String> = changes
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != deleted)
            .collect();
        let side = |side: &str, c: &str| Expr::Column(Column::new(Some(side), c));
        let on = keys
            .iter()
            .map(|k| {
                binary_expr(
                    side("target", k.as_str()),
                    Operator::IsNotDistinctFrom,
                    side("source", k.as_str()),
                )
            })
            .reduce(Expr::and)
            .unwrap_or(lit(true));
        let source = datafusion::prelude::SessionContext::new()
            .read_batch(changes)
            .map_err(|e| Self::err(name)(e.into()))?;
        // One partition: the changes and the table of an update output are small, and planning
        // and running a MERGE over more partitions costs more than it saves.
        let mut session = deltalake::delta_datafusion::create_session().state();
        session
            .config_mut()
            .options_mut()
            .execution
            .target_partitions = 1;
        let mut merge = table
            .merge(source, on)
            .with_session_state(Arc::new(session))
            .with_source_alias("source")
            .with_target_alias("target")
            .with_commit_properties(props)
            .with_writer_properties(super::writer_properties())
            .when_matched_delete(|d| d.predicate(side("source", deleted)))
            .map_err(Self::err(name))?;
        let values: Vec<&String> = columns.iter().filter(|c| !keys.contains(c)).collect();
        if !values.is_empty() {
            merge = merge
                .when_matched_update(|u| {
                    values.iter().fold(u, |u, c| {
                        u.update(
                            Column::new_unqualified(c.as_str()),
                            side("source", c.as_str()),
                        )
                    })
                })
                .map_err(Self::err(name))?;
        }
        let merge = merge
            .when_not_matched_insert(|i| {
                columns
                    .iter()
                    .fold(i.predicate(not(side("source", deleted))), |i, c| {
                        i.set(
                            Column::new_unqualified(c.as_str()),
                            side("source", c.as_str()),
                        )
                    })
            })
            .map_err(Self::err(name))?;
        let (table, metrics) = merge.await.map_err(Self::err(name))?;
        tracing::debug!(
            table = name,
            batch,
            inserted = metrics.num_target_rows_inserted,
            updated = metrics.num_target_rows_updated,
            deleted = metrics.num_target_rows_deleted,
            files_removed = metrics.num_target_files_removed,
            "merged"
        );
        self.remember(name, table);
        Ok(())
    }

    /// The table's live files (its current snapshot), refreshed from the log.
    pub async fn live_files(&self, name: &str) -> Result<Vec<LiveFile>, DeltaError> {
        let Some(mut table) = self.table(name).await? else {
            return Ok(Vec::new());
        };
        table.update_state().await.map_err(Self::err(name))?;
        self.remember(name, table.clone());
        live_files(&table).await.map_err(Self::err(name))
    }

    /// Replaces `removed` with `added` without changing the data (`dataChange = false`).
    pub async fn rewrite(
        &self,
        name: &str,
        removed: &[LiveFile],
        added: &[NewFile],
        target_size: u64,
    ) -> Result<(), DeltaError> {
        let table = self.existing(name).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut actions: Vec<Action> = Vec::new();
        for f in removed {
            let mut r = f.remove.clone();
            r.deletion_timestamp = Some(now);
            r.data_change = false;
            actions.push(Action::Remove(r));
        }
        for f in added {
            let mut a = add(f, now);
            a.data_change = false;
            actions.push(Action::Add(a));
        }
        let op = DeltaOperation::Optimize {
            predicate: None,
            target_size: target_size as i64,
        };
        let table = self
            .commit(name, &table, actions, op, CommitProperties::default())
            .await?;
        self.remember(name, table);
        Ok(())
    }

    /// Deletes files the log no longer references once they are older than the retention:
    /// files a rewrite removed, and files of attempts that never committed.
    pub async fn vacuum(&self, name: &str) -> Result<usize, DeltaError> {
        let Some(table) = self.table(name).await? else {
            return Ok(0);
        };
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let (table, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Full)
            .await
            .map_err(Self::err(name))?;
        self.remember(name, table);
        Ok(metrics.files_deleted.len())
    }

    async fn commit(
        &self,
        name: &str,
        table: &DeltaTable,
        actions: Vec<Action>,
        op: DeltaOperation,
        props: CommitProperties,
    ) -> Result<DeltaTable, DeltaError> {
        let snapshot = table.snapshot().map_err(Self::err(name))?;
        let log_store = table.log_store();
        let done = CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(snapshot), log_store.clone(), op)
            .await
            .map_err(Self::err(name))?;
        let mut next = DeltaTable::new(log_store);
        next.state = Some(done.snapshot());
        Ok(next)
    }
}

/// The Delta table at `<location>/<table>`, or `None` when there is none.
pub async fn open(location: &Location, table: &str) -> DeltaResult<Option<DeltaTable>> {
    let log_store = DeltaLake::log_store(location, table)?;
    let mut t = DeltaTable::new(log_store);
    if !t.verify_deltatable_existence().await? {
        return Ok(None);
    }
    t.load().await?;
    Ok(Some(t))
}

/// The live files of a loaded table.
pub async fn live_files(table: &DeltaTable) -> DeltaResult<Vec<LiveFile>> {
    let snapshot = table.snapshot()?;
    let views: Vec<_> = snapshot
        .snapshot()
        .file_views(table.log_store().as_ref(), None)
        .try_collect()
        .await?;
    Ok(views
        .into_iter()
        .map(|v| LiveFile {
            path: v.path().to_string(),
            bytes: v.size().max(0) as u64,
            rows: v.num_records().map(|n| n as u64),
            remove: v.remove_action(false),
        })
        .collect())
}

/// The URL of a table folder of a lake.
pub fn table_url(location: &Location, table: &str) -> DeltaResult<Url> {
    let text = format!("{}/", location.url_of(table));
    Url::parse(&text).map_err(|_| DeltaTableError::InvalidTableLocation(text))
}

fn add(f: &NewFile, now: i64) -> Add {
    Add {
        path: f.path.clone(),
        partition_values: f.partition_values.iter().cloned().collect(),
        size: f.bytes as i64,
        modification_time: now,
        data_change: true,
        stats: Some(format!("{{\"numRecords\":{}}}", f.rows)),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

/// The Delta schema of an output: every column nullable (a later batch may hold nulls).
fn kernel_schema(table: &str, schema: &SchemaRef) -> Result<StructType, DeltaError> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            let ty: deltalake::kernel::DataType =
                f.data_type()
                    .try_into_kernel()
                    .map_err(|e| DeltaError::Schema {
                        table: table.to_string(),
                        column: f.name().clone(),
                        message: format!("{} has no Delta type ({e})", f.data_type()),
                    })?;
            Ok(StructField::new(f.name().clone(), ty, true))
        })
        .collect::<Result<Vec<_>, DeltaError>>()?;
    StructType::try_new(fields).map_err(|e| DeltaError::Schema {
        table: table.to_string(),
        column: String::new(),
        message: e.to_string(),
    })
}

/// The Delta log store for object stores Weir opens itself (`s3://`, `gs://`): the default one,
/// whose commits are conditional creates (`If-None-Match`).
struct WeirLogStores;

impl LogStoreFactory for WeirLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_schemes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://", "gs://"] {
            let url = Url::parse(scheme).expect("scheme url");
            logstore_factories().insert(url, Arc::new(WeirLogStores));
        }
    });
}
