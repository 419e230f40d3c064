//! A batch being written. A batch is one or more micro-batches (a file run commits several at
//! once): each table partition's file stays open across them and rolls over at the table's target
//! size, so a backlog is written once, in files of the right size, instead of in one small file per
//! micro-batch that compaction rewrites afterwards. Row groups are encoded as they fill; what is
//! buffered for them stays under a budget whatever the number of partitions. Nothing is visible
//! until [`Lake::commit`]: then each table's files are one Delta commit carrying the batch.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::delta::NewFile;
use super::encode::{ParquetFile, UPLOAD_BUFFER};
use super::{
    DEAD_LETTERS, LATE, Lake, REPLAYED, batch_prefix, dead_letters, file_properties, in_table,
    late, partition, update,
};
use crate::sink::{BatchOutput, SinkError, WrittenFile};

/// Rows per Parquet row group at most.
const ROW_GROUP_ROWS: usize = 1 << 20;
/// A partition's buffered rows are encoded as a row group once they hold this much memory.
const ROW_GROUP_BYTES: usize = 8 << 20;
/// What a batch's open files may hold in memory in all (rows buffered for their row groups, and
/// encoded bytes not uploaded yet, up to [`UPLOAD_BUFFER`] a file): past it the largest buffered
/// rows are encoded early (smaller row groups), then the files holding most are closed early
/// (smaller files, which compaction merges later). Many partitions cost file size, not memory.
const HELD_BYTES: usize = 24 << 20;

/// One batch's files in the making, across its micro-batches.
pub struct BatchWriter {
    job: String,
    batch: u64,
    replay: bool,
    tables: BTreeMap<String, TableFiles>,
    /// Per update output, the batch's changes so far: one row per key touched (the last).
    updates: BTreeMap<String, Changes>,
}

/// An update output's changes in a batch.
struct Changes {
    keys: Vec<String>,
    rows: Option<RecordBatch>,
}

/// One table's files in a batch.
struct TableFiles {
    schema: SchemaRef,
    /// A replay whose table already holds the batch: nothing is written to it.
    holding: bool,
    parts: BTreeMap<String, PartFiles>,
}

/// One partition's files in a batch: those closed, and the one open.
#[derive(Default)]
struct PartFiles {
    open: Option<(String, ParquetFile)>,
    group: RowGroup,
    /// Encoded bytes per in-memory byte, learnt from the row groups written so far.
    ratio: Option<f64>,
    closed: Vec<WrittenFile>,
    /// Delta partition values (from the first rows).
    values: Option<Vec<(String, Option<String>)>>,
}

impl BatchWriter {
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Memory the open files hold (an estimate from above).
    fn held(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.parts.values())
            .map(PartFiles::held)
            .sum()
    }
}

impl Lake {
    /// Starts writing batch `batch`; `replay`: re-writing it after a crash, when tables may
    /// already hold it (they are skipped).
    pub fn begin(&self, job: &str, batch: u64, replay: bool) -> BatchWriter {
        BatchWriter {
            job: job.to_string(),
            batch,
            replay,
            tables: BTreeMap::new(),
            updates: BTreeMap::new(),
        }
    }

    /// Adds one micro-batch's outputs (and dead letters, late and replayed rows) to the batch:
    /// the tables are written concurrently, full row groups encoded and full files closed.
    pub async fn append(
        &self,
        w: &mut BatchWriter,
        out: &BatchOutput<'_>,
    ) -> Result<(), SinkError> {
        let arrow = |table: &str| {
            let table = table.to_string();
            move |source| SinkError::Arrow { table, source }
        };
        let (job, batch) = (w.job.clone(), w.batch);
        let mut extra: Vec<(&str, SchemaRef, RecordBatch)> = Vec::new();
        if !out.dead_letters.is_empty() {
            let b = dead_letters::to_batch(&job, batch, out.dead_letters)
                .map_err(arrow(DEAD_LETTERS))?;
            extra.push((DEAD_LETTERS, b.schema(), b));
        }
        if !out.replayed.is_empty() {
            let b = dead_letters::replayed_batch(&job, batch, out.replayed, out.dead_letters)
                .map_err(arrow(REPLAYED))?;
            extra.push((REPLAYED, b.schema(), b));
        }
        if !out.late.is_empty() {
            let b = late::to_batch(&job, batch, out.late).map_err(arrow(LATE))?;
            extra.push((LATE, b.schema(), b));
        }
        for t in out.tables.iter().filter(|t| t.update.is_some()) {
            let update = t.update.as_ref().expect("an update output");
            let changed = update::changes(&t.schema, &t.batches, update.deleted.as_ref())
                .map_err(arrow(&t.name))?;
            let entry = w.updates.entry(t.name.clone()).or_insert_with(|| Changes {
                keys: update.keys.clone(),
                rows: None,
            });
            entry.rows = match (entry.rows.take(), changed) {
                (Some(before), Some(now)) => Some(
                    update::last_per_key(&[before, now], &entry.keys).map_err(arrow(&t.name))?,
                ),
                (before, now) => now.or(before),
            };
        }
        let rows: Vec<(String, SchemaRef, Vec<RecordBatch>)> = out
            .tables
            .iter()
            .filter(|t| t.update.is_none())
            .map(|t| (t.name.clone(), t.schema.clone(), t.batches.clone()))
            .chain(
                extra
                    .into_iter()
                    .map(|(n, s, b)| (n.to_string(), s, vec![b])),
            )
            .filter(|(_, _, b)| b.iter().any(|b| b.num_rows() > 0))
            .collect();
        // Tables seen first: does a replay find them holding the batch already?
        for (name, schema, _) in &rows {
            if !w.tables.contains_key(name) {
                let holding =
                    w.replay && self.delta.committed_batch(name).await?.unwrap_or(0) >= batch;
                if holding {
                    tracing::info!(
                        table = name.as_str(),
                        batch,
                        "the Delta table already holds this batch; not written again"
                    );
                }
                w.tables.insert(
                    name.clone(),
                    TableFiles {
                        schema: schema.clone(),
                        holding,
                        parts: BTreeMap::new(),
                    },
                );
            }
        }
        let prefix = format!("{}-{}", batch_prefix(&job, batch), self.attempt);
        let mut work = Vec::new();
        let mut by_name: BTreeMap<&str, &[RecordBatch]> = rows
            .iter()
            .map(|(n, _, b)| (n.as_str(), b.as_slice()))
            .collect();
        for (name, files) in w.tables.iter_mut() {
            if let Some(batches) = by_name.remove(name.as_str())
                && !files.holding
            {
                work.push(self.append_table(name, files, &prefix, batches));
            }
        }
        futures::future::try_join_all(work).await?;
        // Past the budget: the part holding most encodes its rows now, or if it has none
        // buffered, completes its file. Each step empties a buffer or closes a file.
        while w.held() > HELD_BYTES {
            let (table, dir) = w
                .tables
                .iter()
                .flat_map(|(t, f)| f.parts.iter().map(move |(d, p)| (t, d, p.held())))
                .max_by_key(|(_, _, held)| *held)
                .map(|(t, d, _)| (t.clone(), d.clone()))
                .expect("something is held");
            let part = w
                .tables
                .get_mut(&table)
                .and_then(|t| t.parts.get_mut(&dir))
                .expect("a part holding memory");
            if part.group.is_empty() {
                part.close_file(&table).await?;
            } else {
                part.flush().await?;
            }
        }
        Ok(())
    }

    /// Adds rows to one table, by partition.
    async fn append_table(
        &self,
        table: &str,
        files: &mut TableFiles,
        prefix: &str,
        batches: &[RecordBatch],
    ) -> Result<(), SinkError> {
        let spec = self.spec(table);
        let arrow_err = |source| SinkError::Arrow {
            table: table.to_string(),
            source,
        };
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            for (dir, rows) in partition::split(b, &spec.partition_by).map_err(arrow_err)? {
                let part = files.parts.entry(dir.clone()).or_default();
                if part.values.is_none() {
                    part.values = Some(
                        partition::delta_values(&rows, &spec.partition_by).map_err(arrow_err)?,
                    );
                }
                let folder = if dir.is_empty() {
                    table.to_string()
                } else {
                    format!("{table}/{dir}")
                };
                part.push(
                    self,
                    table,
                    &folder,
                    prefix,
                    &files.schema,
                    rows,
                    spec.target_file_size,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Closes the batch's files and commits each table (Delta, concurrently): appended tables in
    /// one commit each, update outputs by one MERGE of the batch's changes. Returns every file
    /// the batch has in the lake, also those of tables that held it already.
    pub async fn commit(&self, w: BatchWriter) -> Result<Vec<WrittenFile>, SinkError> {
        let BatchWriter {
            job,
            batch,
            replay,
            tables,
            updates,
        } = w;
        let appended = futures::future::try_join_all(tables.into_iter().map(|(name, files)| {
            let job = job.as_str();
            async move {
                if files.holding {
                    return self.files_of_batch(job, batch, &name).await;
                }
                let started = std::time::Instant::now();
                let mut written = Vec::new();
                let mut added = Vec::new();
                for (_, mut part) in files.parts {
                    part.close_file(&name).await?;
                    let values = part.values.unwrap_or_default();
                    for f in part.closed {
                        added.push(NewFile {
                            path: in_table(&name, &f.path),
                            partition_values: values.clone(),
                            bytes: f.bytes,
                            rows: f.rows,
                        });
                        written.push(f);
                    }
                }
                if added.is_empty() {
                    return Ok(written);
                }
                let closed = std::time::Instant::now();
                self.delta.commit_batch(&name, batch, &added).await?;
                tracing::debug!(
                    table = name.as_str(),
                    batch,
                    files = added.len(),
                    close_ms = (closed - started).as_millis() as u64,
                    delta_commit_ms = closed.elapsed().as_millis() as u64,
                    "table committed"
                );
                Ok::<_, SinkError>(written)
            }
        }));
        let updated =
            futures::future::try_join_all(updates.into_iter().map(|(name, c)| async move {
                self.write_update(batch, &name, &c.keys, c.rows, replay)
                    .await
            }));
        let (appended, updated) = futures::future::try_join(appended, updated).await?;
        Ok(appended.into_iter().chain(updated).flatten().collect())
    }
}

impl PartFiles {
    /// Rows buffered, and encoded bytes the open file's upload still holds: all of them until
    /// they fill its buffer, then what is left over after the parts sent (whole buffers).
    fn held(&self) -> usize {
        let unsent = self.open.as_ref().map_or(0, |(_, f)| {
            let written = usize::try_from(f.bytes_written()).unwrap_or(usize::MAX);
            if written <= UPLOAD_BUFFER {
                written
            } else {
                written % UPLOAD_BUFFER
            }
        });
        self.group.memory + unsent
    }

    /// Adds `rows`, first closing the open file when they would take it past `target` bytes
    /// (estimated from its compression so far).
    #[allow(clippy::too_many_arguments)]
    async fn push(
        &mut self,
        lake: &Lake,
        table: &str,
        folder: &str,
        prefix: &str,
        schema: &SchemaRef,
        rows: RecordBatch,
        target: u64,
    ) -> Result<(), SinkError> {
        let next = super::slice_size(&rows);
        let ratio = self.ratio.unwrap_or(1.0);
        let full = self.open.as_ref().is_some_and(|(_, f)| {
            let ahead = ((self.group.memory + next) as f64 * ratio) as u64;
            !(f.is_empty() && self.group.is_empty()) && f.bytes_written() + ahead >= target
        });
        if full {
            self.close_file(table).await?;
        }
        if self.open.is_none() {
            let relative = format!("{folder}/{prefix}-{:03}.parquet", self.closed.len());
            let file = ParquetFile::create(
                lake.store(),
                lake.path(&relative),
                schema.clone(),
                file_properties(schema, &rows),
            )
            .map_err(|source| SinkError::Parquet {
                path: relative.clone(),
                source,
            })?;
            self.open = Some((relative, file));
        }
        self.group.push(rows, next);
        if self.group.rows >= ROW_GROUP_ROWS || self.group.memory >= ROW_GROUP_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Encodes the buffered rows as a row group of the open file.
    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Some((relative, file)) = &mut self.open {
            let ratio = self.group.flush(file, relative).await?;
            if let Some(r) = ratio {
                self.ratio = Some(r);
            }
        }
        Ok(())
    }

    /// Encodes what is buffered and completes the open file, if any.
    async fn close_file(&mut self, table: &str) -> Result<(), SinkError> {
        self.flush().await?;
        if let Some((relative, file)) = self.open.take() {
            self.closed.push(super::close(table, relative, file).await?);
        }
        Ok(())
    }
}

/// Rows gathered for the next row group.
#[derive(Default)]
struct RowGroup {
    batches: Vec<RecordBatch>,
    rows: usize,
    memory: usize,
}

impl RowGroup {
    fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn push(&mut self, batch: RecordBatch, memory: usize) {
        self.rows += batch.num_rows();
        self.memory += memory;
        self.batches.push(batch);
    }

    /// Writes the rows as one row group of `file`; returns the encoded-to-memory size ratio
    /// (none when there was nothing to write).
    async fn flush(
        &mut self,
        file: &mut ParquetFile,
        relative: &str,
    ) -> Result<Option<f64>, SinkError> {
        if self.is_empty() {
            return Ok(None);
        }
        let before = file.bytes_written();
        file.write_row_group(&self.batches)
            .await
            .map_err(|source| SinkError::Parquet {
                path: relative.to_string(),
                source,
            })?;
        let ratio = (file.bytes_written() - before) as f64 / self.memory.max(1) as f64;
        *self = Self::default();
        Ok(Some(ratio))
    }
}
