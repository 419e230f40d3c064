//! Compaction: merges a partition's small files of committed batches into files of about the
//! target size, so that small micro-batches do not become thousands of tiny files. Crash-safe: a
//! record in the job's state folder says which inputs are merged into which outputs, and a restart
//! either rolls the merge back (outputs not all written) or finishes it (inputs being deleted).
//! Readers that list folders may see a merged row twice between the write and the deletes.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use super::{Lake, STATE};
use crate::sink::SinkError;

/// A partition is compacted once it holds at least this many small files.
const MIN_FILES: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
enum Phase {
    /// Outputs are being written; every input still exists.
    Writing,
    /// Outputs are complete; inputs are being deleted.
    Deleting,
}

/// The one compaction in flight for a job.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    table: String,
    folder: String,
    prefix: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    phase: Phase,
}

/// What a compaction round did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Compacted {
    pub merged: u64,
    pub written: u64,
}

impl Lake {
    fn compaction_record(&self, job: &str) -> Path {
        self.path(&format!("{STATE}/{job}/compaction.json"))
    }

    fn store_err(&self, path: &Path) -> impl Fn(object_store::Error) -> SinkError {
        let path = self.relative(path);
        move |source| SinkError::Store {
            path: path.clone(),
            source,
        }
    }

    /// Finishes or rolls back a compaction interrupted by a crash.
    pub async fn recover_compaction(&self, job: &str) -> Result<(), SinkError> {
        let at = self.compaction_record(job);
        let record: Record = match self.store.get(&at).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(self.store_err(&at))?;
                match serde_json::from_slice(&bytes) {
                    Ok(rec) => rec,
                    Err(_) => return self.delete(&at).await,
                }
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(self.store_err(&at)(e)),
        };
        match record.phase {
            Phase::Writing => {
                tracing::info!(folder = %record.folder, "rolling back an interrupted compaction");
                let folder = self.path(&record.folder);
                let written = self.files_with_prefix(&folder, &record.prefix).await?;
                for p in written {
                    self.delete(&p).await?;
                }
            }
            Phase::Deleting => {
                tracing::info!(folder = %record.folder, "finishing an interrupted compaction");
                for input in &record.inputs {
                    self.delete(&self.path(input)).await?;
                }
            }
        }
        self.delete(&at).await
    }

    async fn delete(&self, path: &Path) -> Result<(), SinkError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(path)(e)),
        }
    }

    async fn save(&self, job: &str, record: &Record) -> Result<(), SinkError> {
        let at = self.compaction_record(job);
        let body = serde_json::to_vec_pretty(record).expect("compaction record serializes");
        self.store
            .put(&at, PutPayload::from(body))
            .await
            .map_err(self.store_err(&at))?;
        Ok(())
    }

    /// Merges small files of batches up to `committed` in every partition of `tables`.
    pub async fn compact(
        &self,
        job: &str,
        committed: u64,
        tables: &[String],
    ) -> Result<Compacted, SinkError> {
        let mut done = Compacted::default();
        for table in tables {
            let target = self.spec(table).target_file_size;
            let folder = self.path(table);
            let files: Vec<ObjectMeta> = self
                .store
                .list(Some(&folder))
                .try_collect()
                .await
                .map_err(self.store_err(&folder))?;
            let mut by_folder: BTreeMap<String, Vec<(u64, ObjectMeta)>> = BTreeMap::new();
            for m in files {
                let Some(batch) = m.location.filename().and_then(|f| batch_of(job, f)) else {
                    continue;
                };
                if batch <= committed && m.size < target / 2 {
                    let rel = self.relative(&m.location);
                    let dir = rel
                        .rsplit_once('/')
                        .map(|(d, _)| d.to_string())
                        .unwrap_or_default();
                    by_folder.entry(dir).or_default().push((batch, m));
                }
            }
            for (dir, mut small) in by_folder {
                if small.len() < MIN_FILES {
                    continue;
                }
                small.sort_by(|a, b| a.1.location.cmp(&b.1.location));
                // Merge about one target file's worth at a time: memory stays bounded.
                let mut total = 0;
                small.retain(|(_, m)| {
                    total += m.size;
                    total <= target
                });
                if small.len() < MIN_FILES {
                    continue;
                }
                let n = small.len() as u64;
                if self.merge(job, table, &dir, &small, target).await? {
                    done.merged += n;
                    done.written += 1;
                }
            }
        }
        Ok(done)
    }

    /// Merges `inputs` of one folder; false when their schemas differ (left as they are).
    async fn merge(
        &self,
        job: &str,
        table: &str,
        folder: &str,
        inputs: &[(u64, ObjectMeta)],
        target: u64,
    ) -> Result<bool, SinkError> {
        let mut rows: Vec<RecordBatch> = Vec::new();
        for (_, m) in inputs {
            let bytes = self
                .store
                .get(&m.location)
                .await
                .map_err(self.store_err(&m.location))?
                .bytes()
                .await
                .map_err(self.store_err(&m.location))?;
            let parquet_err = |source| SinkError::Parquet {
                path: self.relative(&m.location),
                source,
            };
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(parquet_err)?
                .build()
                .map_err(parquet_err)?;
            for b in reader {
                rows.push(b.map_err(|source| SinkError::Arrow {
                    table: table.to_string(),
                    source,
                })?);
            }
        }
        let Some(schema) = rows.first().map(|b| b.schema()) else {
            return Ok(false);
        };
        if rows.iter().any(|b| b.schema() != schema) {
            return Ok(false);
        }
        let last = inputs.iter().map(|(b, _)| *b).max().unwrap_or_default();
        let mut record = Record {
            table: table.to_string(),
            folder: folder.to_string(),
            prefix: format!("{job}-c{last:010}"),
            inputs: inputs
                .iter()
                .map(|(_, m)| self.relative(&m.location))
                .collect(),
            outputs: Vec::new(),
            phase: Phase::Writing,
        };
        self.save(job, &record).await?;
        let written = self
            .write_files(table, folder, &record.prefix, &schema, &rows, target)
            .await?;
        record.outputs = written.iter().map(|f| f.path.clone()).collect();
        record.phase = Phase::Deleting;
        self.save(job, &record).await?;
        for input in &record.inputs {
            self.delete(&self.path(input)).await?;
        }
        self.delete(&self.compaction_record(job)).await?;
        tracing::debug!(folder, inputs = record.inputs.len(), "compacted");
        Ok(true)
    }
}

/// The batch a lake file belongs to: `<job>-<batch>-<n>.parquet` or, once compacted,
/// `<job>-c<last batch>-<n>.parquet`.
fn batch_of(job: &str, file: &str) -> Option<u64> {
    let rest = file
        .strip_prefix(job)?
        .strip_prefix('-')?
        .strip_suffix(".parquet")?;
    let (batch, n) = rest.rsplit_once('-')?;
    n.parse::<u32>().ok()?;
    batch.strip_prefix('c').unwrap_or(batch).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_numbers_from_names() {
        assert_eq!(batch_of("shop", "shop-0000000042-000.parquet"), Some(42));
        assert_eq!(batch_of("shop", "shop-c0000000042-001.parquet"), Some(42));
        assert_eq!(batch_of("shop", "other-0000000042-000.parquet"), None);
        assert_eq!(batch_of("shop", "shop-0000000042-000.json"), None);
    }
}
