//! Turns a lake written by Weir before Delta (plain Parquet in Hive folders) into Delta tables in
//! place: no file is copied. Per table, the files of committed batches become the first commit's
//! `add` actions, carrying the last committed batch as the job's transaction; files of a batch
//! that never committed are left out (vacuum removes them later). A compaction the old layout left
//! half-done is finished or rolled back first. Tables that are already Delta tables are skipped,
//! so running it again does nothing.

use arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::file::metadata::ParquetMetaDataReader;
use serde::Deserialize;

use super::delta::{self, NewFile};
use super::{Lake, batch_of, partition};
use crate::sink::SinkError;

/// What migrating one table did.
#[derive(Debug)]
pub struct Migrated {
    pub table: String,
    /// Files added to the new Delta table; `None` when it already was one.
    pub files: Option<usize>,
    pub rows: u64,
    /// Files of uncommitted batches left out.
    pub left_out: usize,
}

/// The old layout's record of a compaction in flight.
#[derive(Deserialize)]
struct OldCompaction {
    folder: String,
    prefix: String,
    inputs: Vec<String>,
    phase: String,
}

impl Lake {
    /// Migrates each of `tables` (name, schema, partition columns), given the last committed batch.
    pub async fn migrate(
        &self,
        job: &str,
        committed: u64,
        tables: &[(String, SchemaRef, Vec<String>)],
    ) -> Result<Vec<Migrated>, SinkError> {
        self.finish_old_compaction().await?;
        let mut out = Vec::new();
        for (name, schema, partition_by) in tables {
            let exists = delta::open(&self.location, name)
                .await
                .map_err(|source| delta::DeltaError::Table {
                    table: name.clone(),
                    source,
                })?
                .is_some();
            if exists {
                out.push(Migrated {
                    table: name.clone(),
                    files: None,
                    rows: 0,
                    left_out: 0,
                });
                continue;
            }
            let folder = self.path(name);
            let listed: Vec<_> = self
                .store()
                .list(Some(&folder))
                .try_collect()
                .await
                .map_err(|source| SinkError::Store {
                    path: name.clone(),
                    source,
                })?;
            let (mut added, mut left_out, mut rows) = (Vec::new(), 0, 0);
            for m in listed {
                let relative = self.relative(&m.location);
                let in_table = super::in_table(name, &relative);
                let file = super::file_name(&in_table);
                let Some(batch) = batch_of(job, file) else {
                    continue;
                };
                if batch > committed {
                    left_out += 1;
                    continue;
                }
                let n = self.row_count(&m.location, m.size, &relative).await?;
                rows += n;
                added.push(NewFile {
                    partition_values: values_of(&in_table, partition_by),
                    path: in_table,
                    bytes: m.size,
                    rows: n,
                });
            }
            self.delta.ensure(name, schema, partition_by).await?;
            if !added.is_empty() {
                self.delta.commit_batch(name, committed, &added).await?;
            }
            out.push(Migrated {
                table: name.clone(),
                files: Some(added.len()),
                rows,
                left_out,
            });
        }
        Ok(out)
    }

    /// A Parquet file's row count, from its footer (two ranged reads).
    async fn row_count(
        &self,
        path: &object_store::path::Path,
        size: u64,
        relative: &str,
    ) -> Result<u64, SinkError> {
        let store_err = |source| SinkError::Store {
            path: relative.to_string(),
            source,
        };
        let corrupt = |message: &str| SinkError::Parquet {
            path: relative.to_string(),
            source: parquet::errors::ParquetError::General(message.to_string()),
        };
        if size < 12 {
            return Err(corrupt("too short for a Parquet file"));
        }
        let tail = self
            .store()
            .get_range(path, size - 8..size)
            .await
            .map_err(store_err)?;
        let len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
        if &tail[4..] != b"PAR1" || len + 8 > size {
            return Err(corrupt("no Parquet footer"));
        }
        let footer = self
            .store()
            .get_range(path, size - 8 - len..size - 8)
            .await
            .map_err(store_err)?;
        let meta = ParquetMetaDataReader::decode_metadata(&footer).map_err(|source| {
            SinkError::Parquet {
                path: relative.to_string(),
                source,
            }
        })?;
        Ok(meta.file_metadata().num_rows() as u64)
    }

    /// Finishes (inputs being deleted) or rolls back (outputs being written) a compaction of the
    /// old layout, as the old version did at start.
    async fn finish_old_compaction(&self) -> Result<(), SinkError> {
        let at = self.path(&format!("{}/compaction.json", self.layout.state()));
        let store_err = |source| SinkError::Store {
            path: self.relative(&at),
            source,
        };
        let bytes = match self.store().get(&at).await {
            Ok(r) => r.bytes().await.map_err(store_err)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(store_err(e)),
        };
        if let Ok(record) = serde_json::from_slice::<OldCompaction>(&bytes) {
            let doomed: Vec<String> = if record.phase == "Writing" {
                let folder = self.path(&record.folder);
                self.store()
                    .list(Some(&folder))
                    .try_filter(|m| {
                        let hit = m
                            .location
                            .filename()
                            .is_some_and(|f| f.starts_with(&record.prefix));
                        futures::future::ready(hit)
                    })
                    .map_ok(|m| self.relative(&m.location))
                    .try_collect()
                    .await
                    .map_err(store_err)?
            } else {
                record.inputs
            };
            for f in doomed {
                match self.store().delete(&self.path(&f)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        match self.store().delete(&at).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Partition values from a file's Hive folders (`dt=2025-06-01/…`), unescaped, in Delta's form.
fn values_of(path_in_table: &str, partition_by: &[String]) -> Vec<(String, Option<String>)> {
    let folders: Vec<(&str, &str)> = path_in_table
        .split('/')
        .filter_map(|seg| seg.split_once('='))
        .collect();
    partition_by
        .iter()
        .map(|c| {
            let v = folders
                .iter()
                .find(|(k, _)| k == c)
                .map(|(_, v)| unescape(v))
                .filter(|v| v != partition::NULL_PARTITION)
                .map(|v| {
                    // Hive folders held RFC 3339 timestamps; Delta wants `YYYY-MM-DD HH:MM:SS`.
                    if v.len() > 10 && v.as_bytes()[10] == b'T' {
                        v.replacen('T', " ", 1).trim_end_matches('Z').to_string()
                    } else {
                        v
                    }
                });
            (c.clone(), v)
        })
        .collect()
}

fn unescape(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len() + 1
            && let Some(b) = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_from_hive_folders() {
        let by = vec!["dt".to_string(), "k".to_string()];
        assert_eq!(
            values_of("dt=2025-06-01/k=a%2Fb/f.parquet", &by),
            [
                ("dt".to_string(), Some("2025-06-01".to_string())),
                ("k".to_string(), Some("a/b".to_string()))
            ]
        );
        assert_eq!(
            values_of("dt=__HIVE_DEFAULT_PARTITION__/k=x/f.parquet", &by)[0],
            ("dt".to_string(), None)
        );
    }
}
