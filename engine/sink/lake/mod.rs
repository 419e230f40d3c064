//! The lake: one Delta table per output (and `_dead_letters`), each a folder of Parquet (zstd)
//! files in Hive partition folders with the partition columns kept inside the files. A batch's
//! files are written under names no other attempt can take, then made visible in one Delta commit
//! per table that carries the batch as the job's transaction (`delta.rs`).

mod compact;
pub mod dead_letters;
pub mod delta;
mod encode;
pub mod late;
pub mod layout;
mod migrate;
pub mod partition;
pub mod update;
mod writer;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

pub use compact::{Compacted, batch_of};
pub use layout::{DEAD_LETTERS, LATE, Layout, REPLAYED, STATE};
pub use migrate::Migrated;
pub use writer::BatchWriter;

use super::{BatchOutput, Sink, SinkError, WrittenFile};
use crate::job::{Job, OutputSpec};
use crate::storage::{Location, StorageError};
use delta::DeltaLake;
use encode::ParquetFile;

/// zstd level of every Parquet file. Level 1 against 3, measured on the land-every-event job: 0.5
/// CPU-s less per 2M events, and files 2% smaller (the columns are mostly dictionary-encoded).
const ZSTD_LEVEL: i32 = 1;

/// A lake's identity, created with the lake: ledgers and load job ids include it, so a new lake
/// loads again and an old one never loads twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    id: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// A lake root and the per-table output settings of one job.
pub struct Lake {
    location: Location,
    layout: Layout,
    id: String,
    delta: DeltaLake,
    /// Distinguishes this process's files from an earlier attempt's at the same batch.
    attempt: String,
    outputs: BTreeMap<String, OutputSpec>,
    default_output: OutputSpec,
}

impl Lake {
    /// Opens the lake (creating its identity if new); nothing else is written. A lake written by
    /// Weir before Delta is refused with the command that migrates it.
    pub async fn open(url: &str, job: &Job) -> Result<Self, SinkError> {
        Self::open_as(url, job, false).await
    }

    /// Opens a lake to migrate it: a lake without an identity that already has a commit log gets
    /// the empty identity, the one its warehouse ledger rows were given, so nothing loads twice.
    pub async fn open_legacy(url: &str, job: &Job) -> Result<Self, SinkError> {
        Self::open_as(url, job, true).await
    }

    async fn open_as(url: &str, job: &Job, legacy: bool) -> Result<Self, SinkError> {
        let location = Location::parse(url).map_err(|e| match e {
            StorageError::Invalid { location, message } => SinkError::Identity {
                path: location,
                message,
            },
            StorageError::Store { location, source } => SinkError::Store {
                path: location,
                source,
            },
        })?;
        let layout = Layout::new(&job.name);
        let id = match identity(&location, None).await? {
            Some(id) => id,
            None => {
                let commits = location.path(&layout.commits());
                let old = location
                    .store
                    .list(Some(&commits))
                    .next()
                    .await
                    .transpose()
                    .map_err(|source| SinkError::Store {
                        path: layout.commits(),
                        source,
                    })?
                    .is_some();
                match (old, legacy) {
                    (true, false) => {
                        return Err(SinkError::Identity {
                            path: location.url.to_string(),
                            message: format!(
                                "this lake was written by a Weir before Delta Lake tables (plain Parquet folders); turn it into Delta tables first: weir migrate {}",
                                job.file.display()
                            ),
                        });
                    }
                    (true, true) => identity(&location, Some(String::new())).await?,
                    (false, _) => {
                        identity(&location, Some(uuid::Uuid::new_v4().simple().to_string()))
                            .await?
                    }
                }
                .expect("identity created")
            }
        };
        let app_id = format!("weir-{}-{id}", job.name);
        Ok(Self {
            delta: DeltaLake::new(location.clone(), app_id, job.retention),
            location,
            layout,
            id,
            attempt: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            outputs: job.outputs.clone(),
            default_output: job.output(""),
        })
    }

    /// Starts from the table snapshots of an earlier run in this process (a warm Lambda
    /// execution environment), brought up to date: see [`delta::DeltaLake::adopt`].
    pub async fn adopt_tables(&mut self, cache: delta::TableCache) {
        self.delta.adopt(cache).await;
    }

    pub fn url(&self) -> &str {
        self.location.url.as_str()
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The lake's identity (a UUID made when the lake was created).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn delta(&self) -> &DeltaLake {
        &self.delta
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.location.store.clone()
    }

    /// A path under the lake root.
    pub fn path(&self, relative: &str) -> Path {
        self.location.path(relative)
    }

    fn relative(&self, path: &Path) -> String {
        self.location.relative(path)
    }

    /// Takes the job's writer lease on this lake (one `weir run` or `weir migrate` at a time).
    pub async fn take_lease(
        &self,
    ) -> Result<Arc<crate::commit::lease::Lease>, crate::commit::lease::LeaseError> {
        crate::commit::lease::Lease::acquire(
            self.store(),
            self.path(&self.layout.lease()),
            self.layout.job(),
            crate::commit::lease::DEFAULT_LEASE_TTL,
        )
        .await
    }

    fn spec(&self, table: &str) -> &OutputSpec {
        self.outputs.get(table).unwrap_or(&self.default_output)
    }

    /// Creates each output's Delta table (and `_dead_letters`) if missing, or evolves it: a new
    /// column is added; a changed or dropped one stops the run before any data moves.
    /// The tables are opened (or created) concurrently: each is a few reads and writes of its log.
    pub async fn prepare(&self, tables: &[(String, SchemaRef)]) -> Result<(), SinkError> {
        let dead = (DEAD_LETTERS.to_string(), dead_letters::schema());
        futures::future::try_join_all(tables.iter().chain([&dead]).map(|(name, schema)| {
            self.delta
                .ensure(name, schema, &self.spec(name).partition_by)
        }))
        .await?;
        Ok(())
    }

    /// Of `tables`, those that already hold batch `batch` (a crash after their commit).
    pub async fn tables_holding(
        &self,
        batch: u64,
        tables: &[String],
    ) -> Result<Vec<String>, SinkError> {
        let mut out = Vec::new();
        for t in tables {
            if self.delta.committed_batch(t).await?.unwrap_or(0) >= batch {
                out.push(t.clone());
            }
        }
        Ok(out)
    }

    /// Creates `_late` if missing: a job with window outputs needs it.
    pub async fn prepare_late(&self) -> Result<(), SinkError> {
        self.delta.ensure(LATE, &late::schema(), &[]).await?;
        Ok(())
    }

    /// Creates `_replayed` if missing: the first `weir replay` of a lake needs it.
    pub async fn prepare_replayed(&self) -> Result<(), SinkError> {
        self.delta
            .ensure(REPLAYED, &dead_letters::replayed_schema(), &[])
            .await?;
        Ok(())
    }

    /// The live files of `batch` in `table` (from an earlier attempt that committed it).
    async fn files_of_batch(
        &self,
        job: &str,
        batch: u64,
        table: &str,
    ) -> Result<Vec<WrittenFile>, SinkError> {
        let prefix = format!("{}-", batch_prefix(job, batch));
        Ok(self
            .delta
            .live_files(table)
            .await?
            .into_iter()
            .filter(|f| file_name(&f.path).starts_with(&prefix))
            .map(|f| WrittenFile {
                table: table.to_string(),
                path: format!("{table}/{}", f.path),
                rows: f.rows.unwrap_or(0),
                bytes: f.bytes,
                upsert: None,
            })
            .collect())
    }
}

/// The bytes of a batch's rows (not of the buffers it may share with other slices, as an
/// aggregate's output slices do).
fn slice_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

/// Completes a file and describes it.
async fn close(table: &str, relative: String, file: ParquetFile) -> Result<WrittenFile, SinkError> {
    let rows = file.rows();
    let bytes = file.close().await.map_err(|source| SinkError::Parquet {
        path: relative.clone(),
        source,
    })?;
    Ok(WrittenFile {
        table: table.to_string(),
        path: relative,
        rows,
        bytes,
        upsert: None,
    })
}

/// Reads the lake's identity; when there is none and `create` is given, creates it with that id
/// (conditionally: one id per lake, whoever creates it first).
async fn identity(
    location: &Location,
    create: Option<String>,
) -> Result<Option<String>, SinkError> {
    let path = location.path(&Layout::lake_id());
    let err = |message: String| SinkError::Identity {
        path: location.url_of(&Layout::lake_id()),
        message,
    };
    for _ in 0..2 {
        match location.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| err(e.to_string()))?;
                let id: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                    err(format!(
                        "{e}; the file is corrupt: restore it from a backup (deleting it makes the warehouses load every batch again)"
                    ))
                })?;
                return Ok(Some(id.id));
            }
            Err(object_store::Error::NotFound { .. }) => {
                let Some(new) = &create else {
                    return Ok(None);
                };
                let id = Identity {
                    id: new.clone(),
                    created_at: chrono::Utc::now(),
                };
                let body = serde_json::to_vec_pretty(&id).expect("identity serializes");
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match location
                    .store
                    .put_opts(&path, PutPayload::from(body), opts)
                    .await
                {
                    Ok(_) => return Ok(Some(id.id)),
                    Err(object_store::Error::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(err(e.to_string())),
                }
            }
            Err(e) => return Err(err(e.to_string())),
        }
    }
    Err(err("created and removed concurrently".into()))
}

/// A path relative to the lake root, made relative to its table's folder.
fn in_table(table: &str, relative: &str) -> String {
    relative
        .strip_prefix(table)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(relative)
        .to_string()
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The start of every file name of `batch` (`<job>-<batch>`, then `-<attempt>-<n>.parquet`).
pub fn batch_prefix(job: &str, batch: u64) -> String {
    format!("{job}-{batch:010}")
}

/// Parquet settings for every file: zstd, statistics on, a recognisable writer name.
pub fn writer_properties() -> WriterProperties {
    writer_properties_builder().build()
}

/// Parquet settings for a file whose first rows are `sample`: [`writer_properties`], without a
/// dictionary for the columns whose values hardly repeat there (ids, timestamps). parquet-rs
/// would intern every such value until the dictionary page passes its 1 MiB limit (in each row
/// group) and then fall back to plain encoding: CPU spent on a dictionary that is thrown away or,
/// under the limit, one as large as the values it replaces.
pub fn file_properties(schema: &SchemaRef, sample: &RecordBatch) -> WriterProperties {
    // Columns are named by the file's schema: the writer takes a batch's columns by position.
    schema
        .fields()
        .iter()
        .zip(sample.columns())
        .filter(|(_, column)| values_unique(column))
        .fold(writer_properties_builder(), |props, (field, _)| {
            props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false)
        })
        .build()
}

/// Values of a column's first rows looked at to decide on its dictionary.
const DICTIONARY_SAMPLE: usize = 4096;

/// Whether at least 90% of the non-null values among the first [`DICTIONARY_SAMPLE`] rows of a
/// flat column (nested ones keep their dictionaries) are distinct, out of at least 64.
fn values_unique(column: &arrow::array::ArrayRef) -> bool {
    use arrow::datatypes::DataType;
    let t = column.data_type();
    if t.is_nested()
        || matches!(
            t,
            DataType::Boolean | DataType::Null | DataType::Dictionary(..)
        )
    {
        return false;
    }
    let head = column.slice(0, column.len().min(DICTIONARY_SAMPLE));
    let present = head.len() - head.null_count();
    if present < 64 {
        return false;
    }
    let Ok(converter) = RowConverter::new(vec![SortField::new(t.clone())]) else {
        return false;
    };
    let Ok(rows) = converter.convert_columns(&[head]) else {
        return false;
    };
    let distinct: HashSet<_> = rows.iter().collect();
    // NULLs share one row value: count them out.
    let distinct = distinct.len() - usize::from(present < rows.num_rows());
    distinct * 10 >= present * 9
}

fn writer_properties_builder() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
}

#[async_trait]
impl Sink for Lake {
    /// One micro-batch as a whole batch: its tables written and committed concurrently.
    async fn write(&self, out: &BatchOutput<'_>) -> Result<Vec<WrittenFile>, SinkError> {
        let mut w = self.begin(out.job, out.batch, out.replay);
        self.append(&mut w, out).await?;
        self.commit(w).await
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::job::Job;
    use crate::transform::TableOutput;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn columns_whose_values_hardly_repeat_are_written_without_a_dictionary() {
        use arrow::array::{ArrayRef, StringArray};
        let n = 5000;
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("e-{i}")),
                )),
            ),
            ("seq", Arc::new(Int64Array::from_iter_values(0..n as i64))),
            (
                "kind",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["view", "cart"][i % 2]),
                )),
            ),
            // Unique where present, but only 40 values: too few to tell.
            (
                "order_id",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 125 == 0).then(|| i.to_string())),
                )),
            ),
            // One value in twenty repeats (95% distinct), or every value twice (50%).
            (
                "user",
                Arc::new(Int64Array::from_iter_values(
                    (0..n as i64).map(|i| if i % 20 == 19 { 0 } else { i }),
                )),
            ),
            (
                "session",
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i / 2))),
            ),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let props = file_properties(&batch.schema(), &batch);
        let dictionary = |c: &str| props.dictionary_enabled(&ColumnPath::from(c));
        assert!(!dictionary("id"));
        assert!(!dictionary("seq"));
        assert!(dictionary("kind"));
        assert!(dictionary("order_id"));
        assert!(!dictionary("user"));
        assert!(dictionary("session"));
        // A file with few rows keeps the defaults.
        assert!(
            file_properties(&batch.schema(), &batch.slice(0, 10))
                .dictionary_enabled(&ColumnPath::from("id"))
        );
    }

    fn output(schema: &SchemaRef, batches: &[RecordBatch]) -> [TableOutput; 1] {
        [TableOutput {
            name: "t".into(),
            schema: schema.clone(),
            batches: batches.to_vec(),
            update: None,
        }]
    }

    fn batch_output<'a>(tables: &'a [TableOutput], batch: u64, replay: bool) -> BatchOutput<'a> {
        BatchOutput {
            job: "j",
            batch,
            tables,
            dead_letters: &[],
            replayed: &[],
            late: &[],
            replay,
        }
    }

    /// Table `t`'s rows as one batch of one micro-batch.
    pub(super) async fn write_table(
        lake: &Lake,
        batch: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        replay: bool,
    ) -> Result<Vec<WrittenFile>, SinkError> {
        lake.write(&batch_output(&output(schema, batches), batch, replay))
            .await
    }

    pub(super) fn job(dir: &std::path::Path) -> Job {
        std::fs::create_dir_all(dir.join("jobs")).unwrap();
        std::fs::create_dir_all(dir.join("sql/j")).unwrap();
        std::fs::write(dir.join("sql/j/t.sql"), "select 1 as v").unwrap();
        let text = "name = \"j\"\ntransforms = \"sql/j\"\n[input]\nformat = \"json\"\n[input.schema]\nv = \"bigint\"\n[outputs.t]\ntarget_file_size = \"1B\"\n[targets.local]\nsource = { kind = \"files\", path = \"data\" }\nlake = \"lake\"\n";
        Job::parse(&dir.join("jobs/j.toml"), text).unwrap()
    }

    #[tokio::test]
    async fn slices_of_one_array_fill_one_file_of_one_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = job(dir.path());
        job.outputs.get_mut("t").unwrap().target_file_size = 1 << 20;
        let lake = Lake::open(&dir.path().join("lake").display().to_string(), &job)
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        lake.prepare(&[("t".into(), schema.clone())]).await.unwrap();
        // An aggregate emits its result as slices of one large array: 100 slices of 8 bytes per
        // row are 80 KB of rows, though each slice shares the whole 8 MB buffer.
        let all = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..1_000_000))],
        )
        .unwrap();
        let slices: Vec<RecordBatch> = (0..100).map(|i| all.slice(i * 100, 100)).collect();
        let files = write_table(&lake, 1, &schema, &slices, false)
            .await
            .unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].rows, 10_000);
        let file = std::fs::File::open(dir.path().join("lake").join(&files[0].path)).unwrap();
        assert_eq!(file.metadata().unwrap().len(), files[0].bytes);
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 1);
        let read: Vec<i64> = reader
            .build()
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                v.values().to_vec()
            })
            .collect();
        assert_eq!(read, (0..10_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn rolls_over_at_the_target_size_and_a_replay_commits_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path());
        let lake = Lake::open(&dir.path().join("lake").display().to_string(), &job)
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        lake.prepare(&[("t".into(), schema.clone())]).await.unwrap();
        let batches: Vec<RecordBatch> = (0..3)
            .map(|i| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(vec![i; 10]))],
                )
                .unwrap()
            })
            .collect();
        let files = write_table(&lake, 7, &schema, &batches, false)
            .await
            .unwrap();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.rows == 10 && f.bytes > 0));
        assert!(
            files
                .iter()
                .all(|f| f.path.starts_with("t/j-0000000007-") && f.path.ends_with(".parquet"))
        );
        assert_eq!(lake.delta.committed_batch("t").await.unwrap(), Some(7));
        // A replay (a new attempt) finds the batch committed and returns the same files.
        let again = Lake::open(&dir.path().join("lake").display().to_string(), &job)
            .await
            .unwrap();
        assert_eq!(again.id(), lake.id(), "the lake keeps its identity");
        let mut replayed = write_table(&again, 7, &schema, &batches, true)
            .await
            .unwrap();
        let mut first = files.clone();
        first.sort_by(|a, b| a.path.cmp(&b.path));
        replayed.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(replayed, first);
        assert_eq!(again.delta.live_files("t").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_batch_of_several_micro_batches_writes_files_of_the_target_size_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = job(dir.path());
        // 8 bytes a row, barely compressible: 40,000 rows are about 320 KB in a file.
        job.outputs.get_mut("t").unwrap().target_file_size = 300_000;
        let lake = Lake::open(&dir.path().join("lake").display().to_string(), &job)
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        lake.prepare(&[("t".into(), schema.clone())]).await.unwrap();
        let mut w = lake.begin("j", 3, false);
        let mut x: u64 = 1;
        for micro in 0..8i64 {
            let values: Vec<i64> = (0..10_000)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 1) as i64
                })
                .collect();
            let rows =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))])
                    .unwrap();
            let tables = output(&schema, &[rows]);
            lake.append(&mut w, &batch_output(&tables, 3, false))
                .await
                .unwrap();
            // Nothing is visible before the commit.
            assert_eq!(
                lake.delta.committed_batch("t").await.unwrap(),
                None,
                "{micro}"
            );
        }
        let files = lake.commit(w).await.unwrap();
        assert_eq!(lake.delta.committed_batch("t").await.unwrap(), Some(3));
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 80_000);
        // 640 KB of rows in files of at most about 300 KB: 3 files, not one per micro-batch.
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(files.iter().all(|f| f.bytes <= 330_000), "{files:?}");
        assert!(files[..2].iter().all(|f| f.bytes >= 200_000), "{files:?}");
        assert_eq!(lake.delta.live_files("t").await.unwrap().len(), 3);
    }
}
