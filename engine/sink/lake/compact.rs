//! Compaction: merges a partition's small files of loaded batches into files of about the target
//! size, as a Delta rewrite (`dataChange = false`): one commit removes the inputs and adds the
//! merged file, so a reader sees every row exactly once whichever snapshot it reads. Merged files
//! get names no other file can have (`<job>-c<last batch>-<uuid>-<n>.parquet`); an interrupted
//! merge leaves only unreferenced files, which vacuum deletes after the retention.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::{Buf, Bytes};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::delta::{LiveFile, NewFile};
use super::encode::{external, send, upload};
use super::{Lake, in_table};
use crate::sink::SinkError;

/// A partition is compacted once it holds at least this many small files.
const MIN_FILES: usize = 4;
/// Files whose row groups hold at least this many rows on average are spliced into the merged file
/// as they are; a merge holding a file of shorter ones decodes and encodes its inputs again (small
/// files of a quiet stream).
const SPLICE_MIN_ROWS: i64 = 16_384;
/// Merges in progress at once, over all tables and partitions: each holds a row group (spliced) or
/// a file (encoded again) and its upload's buffers, so memory stays bounded however many
/// partitions a compaction round finds (two: one merge reads or encodes while the other waits on
/// its upload).
const MERGES: usize = 2;
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
    /// tables when the last vacuum is older than an hour (`last_vacuum`). Tables are compacted
    /// concurrently, and each table's partitions too (`MERGES` merges at a time in all), with one
    /// Delta commit per table.
    pub async fn compact(
        &self,
        job: &str,
        loaded: u64,
        tables: &[String],
        last_vacuum: &mut Option<Instant>,
    ) -> Result<Compacted, SinkError> {
        let merges = Semaphore::new(MERGES);
        let rounds = futures::future::try_join_all(
            tables
                .iter()
                .map(|t| self.compact_table(job, loaded, t, &merges)),
        )
        .await?;
        let mut done = Compacted::default();
        for r in rounds {
            done.merged += r.merged;
            done.written += r.written;
        }
        if last_vacuum.is_none_or(|t| t.elapsed() >= VACUUM_EVERY) {
            for table in tables {
                done.vacuumed += self.delta.vacuum(table).await? as u64;
            }
            *last_vacuum = Some(Instant::now());
        }
        Ok(done)
    }

    async fn compact_table(
        &self,
        job: &str,
        loaded: u64,
        table: &str,
        merges: &Semaphore,
    ) -> Result<Compacted, SinkError> {
        let target = self.spec(table).target_file_size;
        let mut by_folder: BTreeMap<(String, bool), Vec<(u64, LiveFile)>> = BTreeMap::new();
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
                // Files of few rows (a quiet stream's, or a batch's sliver of a new day) are
                // merged among themselves: a merge that holds one of them encodes everything again,
                // one that does not is spliced.
                let few = f.rows.is_some_and(|r| r < SPLICE_MIN_ROWS as u64);
                by_folder.entry((dir, few)).or_default().push((batch, f));
            }
        }
        let mut groups = Vec::new();
        for ((dir, _), mut small) in by_folder {
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
            if small.len() >= MIN_FILES {
                groups.push((dir, small));
            }
        }
        let merged = futures::future::try_join_all(groups.iter().map(|(dir, small)| async move {
            let _permit = merges
                .acquire()
                .await
                .expect("the semaphore is never closed");
            self.merge(job, table, dir, small).await
        }))
        .await?;
        let mut done = Compacted::default();
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for ((_, small), m) in groups.iter().zip(merged) {
            if let Some(file) = m {
                done.merged += small.len() as u64;
                done.written += 1;
                removed.extend(small.iter().map(|(_, f)| f.clone()));
                added.push(file);
            }
        }
        if !added.is_empty() {
            self.delta.rewrite(table, &removed, &added, target).await?;
            tracing::debug!(
                table,
                merged = done.merged,
                into = done.written,
                "compacted"
            );
        }
        Ok(done)
    }

    /// Merges `inputs` of one partition folder into one new file, not yet committed; None when
    /// their schemas differ (left as they are). Files whose row groups are big enough are spliced
    /// together as they are (their encoded column chunks copied byte for byte, nothing decoded);
    /// smaller ones are decoded and encoded again into full row groups, one file at a time.
    async fn merge(
        &self,
        job: &str,
        table: &str,
        dir: &str,
        inputs: &[(u64, LiveFile)],
    ) -> Result<Option<NewFile>, SinkError> {
        let mut footers = Vec::with_capacity(inputs.len());
        for (_, f) in inputs {
            footers.push(self.footer(table, f).await?);
        }
        let schema = footers[0].file_metadata().schema_descr();
        if footers
            .iter()
            .any(|m| m.file_metadata().schema_descr().root_schema() != schema.root_schema())
        {
            return Ok(None);
        }
        let last = inputs.iter().map(|(b, _)| *b).max().unwrap_or_default();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let relative = format!(
            "{}/{job}-c{last:010}-{}-000.parquet",
            folder(table, dir),
            &unique[..12]
        );
        // A file's last row group may be short (a batch's file ends where its rows do): a file
        // whose row groups average the bound is spliced whole, its short tail with it.
        let splice = footers.iter().all(|m| {
            m.file_metadata().num_rows() >= SPLICE_MIN_ROWS * m.num_row_groups().max(1) as i64
        });
        let rows = if splice {
            self.splice(table, &relative, inputs, &footers).await?
        } else {
            self.reencode(table, &relative, inputs).await?
        };
        let bytes = self.size_of(&relative).await?;
        let partition_values = inputs[0]
            .1
            .remove
            .partition_values
            .clone()
            .unwrap_or_default();
        tracing::debug!(table, dir, inputs = inputs.len(), splice, "merged");
        Ok(Some(NewFile {
            path: in_table(table, &relative),
            partition_values: partition_values.into_iter().collect(),
            bytes,
            rows,
        }))
    }

    /// The Parquet footer of a live file (two ranged reads: its length, then the footer).
    async fn footer(&self, table: &str, f: &LiveFile) -> Result<Arc<ParquetMetaData>, SinkError> {
        let relative = format!("{table}/{}", f.path);
        let at = self.path(&relative);
        let store_err = |source| SinkError::Store {
            path: relative.clone(),
            source,
        };
        let parquet_err = |source| SinkError::Parquet {
            path: relative.clone(),
            source,
        };
        let size = f.bytes;
        let tail = self
            .store()
            .get_range(&at, size.saturating_sub(8)..size)
            .await
            .map_err(store_err)?;
        if tail.len() < 8 || &tail[4..] != b"PAR1" {
            return Err(parquet_err(ParquetError::General(
                "not a Parquet file (no PAR1 footer)".into(),
            )));
        }
        let len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64 + 8;
        let start = size.saturating_sub(len);
        let bytes = self
            .store()
            .get_range(&at, start..size)
            .await
            .map_err(store_err)?;
        ParquetMetaDataReader::new()
            .parse_and_finish(&FileSlice { start, bytes })
            .map(Arc::new)
            .map_err(parquet_err)
    }

    /// Writes the row groups of `inputs` into one new file without decoding them: each row
    /// group's bytes are read (one at a time) and its column chunks appended as they are.
    async fn splice(
        &self,
        table: &str,
        relative: &str,
        inputs: &[(u64, LiveFile)],
        footers: &[Arc<ParquetMetaData>],
    ) -> Result<u64, SinkError> {
        let err = |source| SinkError::Parquet {
            path: relative.to_string(),
            source,
        };
        let first = footers[0].file_metadata();
        let props = super::writer_properties_builder()
            .set_key_value_metadata(first.key_value_metadata().cloned())
            .build();
        let mut writer = SerializedFileWriter::new(
            Vec::new(),
            first.schema_descr().root_schema_ptr(),
            Arc::new(props),
        )
        .map_err(err)?;
        let mut out = upload(self.store(), self.path(relative));
        let mut rows = 0u64;
        for ((_, f), footer) in inputs.iter().zip(footers) {
            let input = format!("{table}/{}", f.path);
            for rg in footer.row_groups() {
                let (start, end) = rg
                    .columns()
                    .iter()
                    .map(|c| c.byte_range())
                    .fold((u64::MAX, 0), |(s, e), (o, l)| (s.min(o), e.max(o + l)));
                let bytes = self
                    .store()
                    .get_range(&self.path(&input), start..end)
                    .await
                    .map_err(|source| SinkError::Store {
                        path: input.clone(),
                        source,
                    })?;
                let chunk = FileSlice { start, bytes };
                let mut group = writer.next_row_group().map_err(err)?;
                for column in rg.columns() {
                    let close = ColumnCloseResult {
                        bytes_written: column.compressed_size() as u64,
                        rows_written: rg.num_rows() as u64,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: None,
                        offset_index: None,
                    };
                    group.append_column(&chunk, close).map_err(err)?;
                }
                group.close().map_err(err)?;
                rows += rg.num_rows() as u64;
                send(&mut writer, &mut out)
                    .await
                    .map_err(|e| err(external(e)))?;
            }
        }
        let tail = writer.into_inner().map_err(err)?;
        out.write_all(&tail).await.map_err(|e| err(external(e)))?;
        out.shutdown().await.map_err(|e| err(external(e)))?;
        Ok(rows)
    }

    /// Decodes `inputs` one file at a time into one new file of full row groups.
    async fn reencode(
        &self,
        table: &str,
        relative: &str,
        inputs: &[(u64, LiveFile)],
    ) -> Result<u64, SinkError> {
        let err = |source| SinkError::Parquet {
            path: relative.to_string(),
            source,
        };
        let mut writer: Option<AsyncArrowWriter<BufWriter>> = None;
        let mut rows = 0u64;
        for (_, f) in inputs {
            let input = format!("{table}/{}", f.path);
            let bytes = self
                .store()
                .get(&self.path(&input))
                .await
                .map_err(|source| SinkError::Store {
                    path: input.clone(),
                    source,
                })?
                .bytes()
                .await
                .map_err(|source| SinkError::Store {
                    path: input.clone(),
                    source,
                })?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(err)?
                .build()
                .map_err(err)?;
            for batch in reader {
                let batch = batch.map_err(|e| err(e.into()))?;
                let w = match &mut writer {
                    Some(w) => w,
                    None => writer.insert(
                        AsyncArrowWriter::try_new(
                            upload(self.store(), self.path(relative)),
                            batch.schema(),
                            Some(super::file_properties(&batch.schema(), &batch)),
                        )
                        .map_err(err)?,
                    ),
                };
                rows += batch.num_rows() as u64;
                w.write(&batch).await.map_err(err)?;
            }
        }
        if let Some(w) = writer {
            w.close().await.map_err(err)?;
        }
        Ok(rows)
    }

    /// The size of a file written under the lake root.
    async fn size_of(&self, relative: &str) -> Result<u64, SinkError> {
        Ok(self
            .store()
            .head(&self.path(relative))
            .await
            .map_err(|source| SinkError::Store {
                path: relative.to_string(),
                source,
            })?
            .size)
    }
}

/// A table's partition folder, relative to the lake root.
fn folder(table: &str, dir: &str) -> String {
    if dir.is_empty() {
        table.to_string()
    } else {
        format!("{table}/{dir}")
    }
}

/// The bytes of one row group of a file, read at the file offsets its footer names.
struct FileSlice {
    start: u64,
    bytes: Bytes,
}

impl Length for FileSlice {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ChunkReader for FileSlice {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self
            .get_bytes(start, (self.len() - start) as usize)?
            .reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let at = start
            .checked_sub(self.start)
            .map(|a| a as usize)
            .filter(|a| a + length <= self.bytes.len())
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "bytes {start}..+{length} are outside the row group read"
                ))
            })?;
        Ok(self.bytes.slice(at..at + length))
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
    use super::super::tests::write_table;
    use super::*;
    use crate::job::Job;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

    /// The lake module's test job, with the default target file size.
    fn job(dir: &std::path::Path) -> Job {
        let mut job = super::super::tests::job(dir);
        job.outputs.get_mut("t").expect("output t").target_file_size = 128 << 20;
        job
    }

    fn rows(schema: &SchemaRef, from: i64, n: i64) -> RecordBatch {
        let v: Vec<i64> = (from..from + n).collect();
        let s: Vec<String> = v.iter().map(|i| format!("row {i}")).collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(v)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    }

    /// Writes `batches` batches of `per_batch` rows, compacts, and returns the one live file's
    /// row groups and rows (in order).
    async fn compacted(per_batch: i64, batches: u64) -> (usize, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path());
        let lake = Lake::open(&dir.path().join("lake").display().to_string(), &job)
            .await
            .unwrap();
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        lake.prepare(&[("t".into(), schema.clone())]).await.unwrap();
        for b in 1..=batches {
            let first = (b as i64 - 1) * per_batch;
            write_table(&lake, b, &schema, &[rows(&schema, first, per_batch)], false)
                .await
                .unwrap();
        }
        let done = lake
            .compact("j", batches, &["t".to_string()], &mut Some(Instant::now()))
            .await
            .unwrap();
        assert_eq!((done.merged, done.written), (batches, 1));
        let live = lake.delta.live_files("t").await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].rows, Some(batches * per_batch as u64));
        let file = std::fs::File::open(dir.path().join("lake/t").join(&live[0].path)).unwrap();
        assert_eq!(file.metadata().unwrap().len(), live[0].bytes);
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let groups = reader.metadata().num_row_groups();
        assert_eq!(
            reader.schema().fields(),
            schema.fields(),
            "the Arrow schema is kept"
        );
        let mut values = Vec::new();
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let s = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                assert_eq!(s.value(i), format!("row {}", v.value(i)));
                values.push(v.value(i));
            }
        }
        (groups, values)
    }

    #[tokio::test]
    async fn big_row_groups_are_spliced_as_they_are() {
        let (groups, values) = compacted(SPLICE_MIN_ROWS, 4).await;
        assert_eq!(groups, 4, "one row group per input file, copied");
        assert_eq!(values, (0..4 * SPLICE_MIN_ROWS).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn small_files_are_encoded_again_into_one_row_group() {
        let (groups, values) = compacted(100, 5).await;
        assert_eq!(groups, 1);
        assert_eq!(values, (0..500).collect::<Vec<_>>());
    }

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
