//! Compaction: merges a partition's small files of loaded batches into files of about the target
//! size, as a Delta rewrite (`dataChange = false`): one commit removes the inputs and adds the
//! merged file, so a reader sees every row exactly once whichever snapshot it reads. Merged files
//! get names no other file can have (`<job>-c<last batch>-<uuid>-<n>.parquet`); an interrupted
//! merge leaves only unreferenced files, which vacuum deletes after the retention.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::delta::{LiveFile, NewFile};
use super::{Lake, in_table};
use crate::sink::SinkError;

/// A partition is compacted once it holds at least this many small files.
const MIN_FILES: usize = 4;
/// Vacuum (which lists a table's folder) at most this often.
const VACUUM_EVERY: Duration = Duration::from_secs(3600);

/// What a compaction round did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Compacted {
    pub merged: u64,
    pub written: u64,
    /// Files deleted by vacuum.
    pub vacuumed: u64,
}

impl Lake {
    /// Merges small files of batches up to `loaded` in every partition of `tables`; vacuums the
    /// tables when the last vacuum is older than an hour (`last_vacuum`).
    pub async fn compact(
        &self,
        job: &str,
        loaded: u64,
        tables: &[String],
        last_vacuum: &mut Option<Instant>,
    ) -> Result<Compacted, SinkError> {
        let mut done = Compacted::default();
        for table in tables {
            let target = self.spec(table).target_file_size;
            let mut by_folder: BTreeMap<String, Vec<(u64, LiveFile)>> = BTreeMap::new();
            for f in self.delta.live_files(table).await? {
                let Some(batch) = batch_of(job, super::file_name(&f.path)) else {
                    continue;
                };
                if batch <= loaded && f.bytes < target / 2 {
                    let dir = f
                        .path
                        .rsplit_once('/')
                        .map(|(d, _)| d.to_string())
                        .unwrap_or_default();
                    by_folder.entry(dir).or_default().push((batch, f));
                }
            }
            for (dir, mut small) in by_folder {
                if small.len() < MIN_FILES {
                    continue;
                }
                small.sort_by(|a, b| a.1.path.cmp(&b.1.path));
                // Merge about one target file's worth at a time: memory stays bounded.
                let mut total = 0;
                small.retain(|(_, f)| {
                    total += f.bytes;
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
        if last_vacuum.is_none_or(|t| t.elapsed() >= VACUUM_EVERY) {
            for table in tables {
                done.vacuumed += self.delta.vacuum(table).await? as u64;
            }
            *last_vacuum = Some(Instant::now());
        }
        Ok(done)
    }

    /// Merges `inputs` of one partition folder; false when their schemas differ (left as they are).
    async fn merge(
        &self,
        job: &str,
        table: &str,
        dir: &str,
        inputs: &[(u64, LiveFile)],
        target: u64,
    ) -> Result<bool, SinkError> {
        let mut rows: Vec<RecordBatch> = Vec::new();
        for (_, f) in inputs {
            let relative = format!("{table}/{}", f.path);
            let at = self.path(&relative);
            let store_err = |source| SinkError::Store {
                path: relative.clone(),
                source,
            };
            let bytes = self
                .store()
                .get(&at)
                .await
                .map_err(store_err)?
                .bytes()
                .await
                .map_err(store_err)?;
            let parquet_err = |source| SinkError::Parquet {
                path: relative.clone(),
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
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("{job}-c{last:010}-{}", &unique[..12]);
        let partition_values = inputs[0]
            .1
            .remove
            .partition_values
            .clone()
            .unwrap_or_default();
        let written = self
            .write_files(table, dir, &prefix, &schema, &rows, target)
            .await?;
        let added: Vec<NewFile> = written
            .iter()
            .map(|f| NewFile {
                path: in_table(table, &f.path),
                partition_values: partition_values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                bytes: f.bytes,
                rows: f.rows,
            })
            .collect();
        let removed: Vec<LiveFile> = inputs.iter().map(|(_, f)| f.clone()).collect();
        self.delta.rewrite(table, &removed, &added, target).await?;
        tracing::debug!(table, dir, inputs = inputs.len(), "compacted");
        Ok(true)
    }
}

/// The batch a lake file belongs to: `<job>-<batch>-<attempt>-<n>.parquet` or, once compacted,
/// `<job>-c<last batch>-<id>-<n>.parquet` (the last batch it holds).
pub fn batch_of(job: &str, file: &str) -> Option<u64> {
    let rest = file
        .strip_prefix(job)?
        .strip_prefix('-')?
        .strip_suffix(".parquet")?;
    let batch = rest.split('-').next()?;
    batch.strip_prefix('c').unwrap_or(batch).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_numbers_from_names() {
        assert_eq!(
            batch_of("shop", "shop-0000000042-1a2b3c4d-000.parquet"),
            Some(42)
        );
        assert_eq!(
            batch_of("shop", "shop-c0000000042-0123456789ab-001.parquet"),
            Some(42)
        );
        assert_eq!(batch_of("shop", "other-0000000042-x-000.parquet"), None);
        assert_eq!(batch_of("shop", "shop-0000000042-x-000.json"), None);
    }
}
