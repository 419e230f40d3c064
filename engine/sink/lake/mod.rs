//! The lake: Parquet (zstd) files through object_store, one folder per table, Hive partitions,
//! file names derived from (job, batch, file number) so a replayed batch overwrites its own files.

mod compact;
pub mod dead_letters;
pub mod partition;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

pub use compact::Compacted;

use super::{BatchOutput, Sink, SinkError, WrittenFile};
use crate::job::{Job, OutputSpec};
use crate::storage::{self, StorageError};

/// Folder of the dead-letter table.
pub const DEAD_LETTERS: &str = "_dead_letters";
/// Folder of Weir's own state (batch logs and commits), beside the tables.
pub const STATE: &str = "_weir";
/// zstd level of every Parquet file.
const ZSTD_LEVEL: i32 = 3;

/// A lake root and the per-table output settings of one job.
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    outputs: BTreeMap<String, OutputSpec>,
    default_output: OutputSpec,
}

impl Lake {
    pub fn open(url: &str, job: &Job) -> Result<Self, StorageError> {
        let (store, root) = storage::parse(url)?;
        Ok(Self {
            store,
            root,
            url: url.to_string(),
            outputs: job.outputs.clone(),
            default_output: job.output(""),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// A path under the lake root.
    pub fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|s| !s.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    fn relative(&self, path: &Path) -> String {
        let full = path.as_ref();
        full.strip_prefix(self.root.as_ref())
            .unwrap_or(full)
            .trim_start_matches('/')
            .to_string()
    }

    /// Files under `folder` (at any depth) whose name starts with `prefix`.
    async fn files_with_prefix(&self, folder: &Path, prefix: &str) -> Result<Vec<Path>, SinkError> {
        self.store
            .list(Some(folder))
            .try_filter(|m| {
                let hit = m.location.filename().is_some_and(|f| f.starts_with(prefix));
                futures::future::ready(hit)
            })
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|source| SinkError::Store {
                path: self.relative(folder),
                source,
            })
    }

    fn spec(&self, table: &str) -> &OutputSpec {
        self.outputs.get(table).unwrap_or(&self.default_output)
    }

    /// Writes one table's rows of a batch, split by partition and rolled at the target size.
    async fn write_table(
        &self,
        job: &str,
        batch: u64,
        table: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<Vec<WrittenFile>, SinkError> {
        let spec = self.spec(table);
        let mut parts: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            let split =
                partition::split(b, &spec.partition_by).map_err(|source| SinkError::Arrow {
                    table: table.to_string(),
                    source,
                })?;
            for (k, v) in split {
                parts.entry(k).or_default().push(v);
            }
        }
        let mut files = Vec::new();
        for (dir, rows) in parts {
            let folder = if dir.is_empty() {
                table.to_string()
            } else {
                format!("{table}/{dir}")
            };
            files.extend(
                self.write_files(
                    table,
                    &folder,
                    &batch_prefix(job, batch),
                    schema,
                    &rows,
                    spec.target_file_size,
                )
                .await?,
            );
        }
        Ok(files)
    }

    /// Writes `rows` into `folder` as `<prefix>-<n>.parquet`, a new file past `target` bytes.
    async fn write_files(
        &self,
        table: &str,
        folder: &str,
        prefix: &str,
        schema: &SchemaRef,
        rows: &[RecordBatch],
        target: u64,
    ) -> Result<Vec<WrittenFile>, SinkError> {
        let mut files = Vec::new();
        let mut rest = rows.iter().peekable();
        while rest.peek().is_some() {
            let relative = format!("{folder}/{prefix}-{:03}.parquet", files.len());
            let path = self.path(&relative);
            let err = |source| SinkError::Parquet {
                path: relative.clone(),
                source,
            };
            let object = object_store::buffered::BufWriter::new(self.store.clone(), path.clone());
            let mut writer =
                AsyncArrowWriter::try_new(object, schema.clone(), Some(writer_properties()))
                    .map_err(err)?;
            let mut count = 0u64;
            while let Some(b) = rest.next_if(|_| {
                count == 0 || ((writer.bytes_written() + writer.in_progress_size()) as u64) < target
            }) {
                writer.write(b).await.map_err(err)?;
                count += b.num_rows() as u64;
            }
            writer.close().await.map_err(err)?;
            let bytes = self
                .store
                .head(&path)
                .await
                .map_err(|source| SinkError::Store {
                    path: relative.clone(),
                    source,
                })?
                .size;
            files.push(WrittenFile {
                table: table.to_string(),
                path: relative,
                rows: count,
                bytes,
            });
        }
        Ok(files)
    }
}

/// The start of every file name of `batch` (`<job>-<batch>`, then `-<n>.parquet`): the same on
/// every replay.
pub fn batch_prefix(job: &str, batch: u64) -> String {
    format!("{job}-{batch:010}")
}

/// Parquet settings for every file: zstd, statistics on, a recognisable writer name.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
        .build()
}

#[async_trait]
impl Sink for Lake {
    async fn write(&self, out: &BatchOutput<'_>) -> Result<Vec<WrittenFile>, SinkError> {
        let mut files = Vec::new();
        for t in out.tables {
            files.extend(
                self.write_table(out.job, out.batch, &t.name, &t.schema, &t.batches)
                    .await?,
            );
        }
        if !out.dead_letters.is_empty() {
            let batch =
                dead_letters::to_batch(out.job, out.batch, out.dead_letters).map_err(|source| {
                    SinkError::Arrow {
                        table: DEAD_LETTERS.into(),
                        source,
                    }
                })?;
            files.extend(
                self.write_table(out.job, out.batch, DEAD_LETTERS, &batch.schema(), &[batch])
                    .await?,
            );
        }
        Ok(files)
    }

    async fn discard(&self, job: &str, batch: u64, tables: &[String]) -> Result<(), SinkError> {
        let prefix = format!("{}-", batch_prefix(job, batch));
        for table in tables.iter().map(String::as_str).chain([DEAD_LETTERS]) {
            let folder = self.path(table);
            let stale = self.files_with_prefix(&folder, &prefix).await?;
            for path in stale {
                tracing::info!(path = %self.relative(&path), "removing file of an interrupted batch");
                self.store
                    .delete(&path)
                    .await
                    .map_err(|source| SinkError::Store {
                        path: self.relative(&path),
                        source,
                    })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn rolls_over_at_the_target_size_and_replays_to_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let (store, root) = storage::parse(&dir.path().display().to_string()).unwrap();
        let lake = Lake {
            store,
            root,
            url: String::new(),
            outputs: BTreeMap::new(),
            default_output: OutputSpec {
                partition_by: vec![],
                target_file_size: 1,
            },
        };
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batches: Vec<RecordBatch> = (0..3)
            .map(|i| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(vec![i; 10]))],
                )
                .unwrap()
            })
            .collect();
        let files = lake
            .write_table("j", 7, "t", &schema, &batches)
            .await
            .unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "t/j-0000000007-000.parquet",
                "t/j-0000000007-001.parquet",
                "t/j-0000000007-002.parquet"
            ]
        );
        assert!(files.iter().all(|f| f.rows == 10 && f.bytes > 0));
        lake.discard("j", 7, &["t".into()]).await.unwrap();
        assert!(!dir.path().join("t/j-0000000007-000.parquet").exists());
    }
}
