//! Update outputs (`emit = "update"`): each batch replaces the rows of the keys it touched. The
//! batch's changes (the new rows, and the keys whose row is gone, marked in `_weir_deleted`) are
//! written as a change file in the job's state folder (`changes/<batch>-<output>.parquet`, for the
//! warehouses; an attempt that crashed before its MERGE is overwritten by the next), and merged into
//! the Delta table with delta-rs's MERGE, whose commit carries the batch as the job's transaction
//! (a replay of a batch the table holds merges nothing).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{cast, concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use object_store::ObjectStoreExt;

use super::encode::ParquetFile;
use super::{Lake, file_properties};
use crate::sink::{DELETED, SinkError, Upsert, WrittenFile};

impl Lake {
    /// Writes one update output's batch: its change file, then the MERGE. A table that already
    /// holds the batch (a replay after a crash) is not merged again; the change file an earlier
    /// attempt wrote is returned.
    pub(super) async fn write_update(
        &self,
        batch: u64,
        table: &str,
        keys: &[String],
        changes: Option<RecordBatch>,
        replay: bool,
    ) -> Result<Vec<WrittenFile>, SinkError> {
        if replay && self.delta.committed_batch(table).await?.unwrap_or(0) >= batch {
            tracing::info!(
                table,
                batch,
                "the Delta table already holds this batch; not merged again"
            );
            return self.changes_of_batch(batch, table, keys).await;
        }
        let Some(changes) = changes else {
            return Ok(Vec::new());
        };
        let started = std::time::Instant::now();
        let null_keys = null_keys(&changes, keys);
        let relative = change_file(&self.layout, batch, table);
        let parquet_err = |source| SinkError::Parquet {
            path: relative.clone(),
            source,
        };
        let mut file = ParquetFile::create(
            self.store(),
            self.path(&relative),
            changes.schema(),
            file_properties(&changes.schema(), &changes),
        )
        .map_err(parquet_err)?;
        file.write_row_group(std::slice::from_ref(&changes))
            .await
            .map_err(parquet_err)?;
        let rows = file.rows();
        let bytes = file.close().await.map_err(parquet_err)?;
        let written = std::time::Instant::now();
        self.delta.merge(table, batch, changes, keys).await?;
        tracing::debug!(
            table,
            batch,
            rows,
            change_file_ms = (written - started).as_millis() as u64,
            merge_ms = written.elapsed().as_millis() as u64,
            "update output merged"
        );
        Ok(vec![WrittenFile {
            table: table.to_string(),
            path: relative,
            rows,
            bytes,
            upsert: Some(Upsert::Changes {
                keys: keys.to_vec(),
                null_keys,
            }),
        }])
    }

    /// The change file of `batch` in `table`, written by the attempt whose MERGE committed: each
    /// attempt writes it (under the lease) before its MERGE, and none after a MERGE committed.
    async fn changes_of_batch(
        &self,
        batch: u64,
        table: &str,
        keys: &[String],
    ) -> Result<Vec<WrittenFile>, SinkError> {
        let path = change_file(&self.layout, batch, table);
        let store_err = |source| SinkError::Store {
            path: path.clone(),
            source,
        };
        let data = self
            .store()
            .get(&self.path(&path))
            .await
            .map_err(store_err)?
            .bytes()
            .await
            .map_err(store_err)?;
        let bytes = data.len() as u64;
        let changes = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.build())
            .and_then(|reader| {
                let batches = reader.collect::<Result<Vec<_>, _>>()?;
                let schema = batches.first().map(|b| b.schema());
                Ok(match schema {
                    Some(schema) => Some(concat_batches(&schema, &batches)?),
                    None => None,
                })
            })
            .map_err(|source| SinkError::Parquet {
                path: path.clone(),
                source,
            })?;
        let rows = changes.as_ref().map_or(0, |c| c.num_rows() as u64);
        let null_keys = changes.map(|c| null_keys(&c, keys)).unwrap_or_default();
        Ok(vec![WrittenFile {
            table: table.to_string(),
            path,
            rows,
            bytes,
            upsert: Some(Upsert::Changes {
                keys: keys.to_vec(),
                null_keys,
            }),
        }])
    }
}

/// The keys that are NULL in some row of `changes`.
fn null_keys(changes: &RecordBatch, keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|k| {
            changes
                .column_by_name(k)
                .is_some_and(|c| c.null_count() > 0)
        })
        .cloned()
        .collect()
}

/// Where a batch's changes to an update output are kept, relative to the lake root.
fn change_file(layout: &super::Layout, batch: u64, table: &str) -> String {
    format!("{}/{batch:020}-{table}.parquet", layout.changes())
}

/// A batch's changes to an update output: its rows (`_weir_deleted` false), then the keys whose
/// row is gone (`_weir_deleted` true, every other column null). Every column is nullable.
/// `None` when the batch changed nothing.
pub fn changes(
    schema: &SchemaRef,
    rows: &[RecordBatch],
    deleted: Option<&RecordBatch>,
) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(DELETED, DataType::Boolean, false));
    let changed = Arc::new(Schema::new(fields));
    let mut parts = Vec::new();
    for b in rows.iter().filter(|b| b.num_rows() > 0) {
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(vec![false; b.num_rows()])));
        parts.push(RecordBatch::try_new(changed.clone(), columns)?);
    }
    if let Some(gone) = deleted.filter(|d| d.num_rows() > 0) {
        let n = gone.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(changed.fields().len());
        for f in schema.fields() {
            columns.push(match gone.column_by_name(f.name()) {
                Some(c) => cast(c, f.data_type())?,
                None => new_null_array(f.data_type(), n),
            });
        }
        columns.push(Arc::new(BooleanArray::from(vec![true; n])));
        parts.push(RecordBatch::try_new(changed.clone(), columns)?);
    }
    if parts.is_empty() {
        return Ok(None);
    }
    concat_batches(&changed, &parts).map(Some)
}

/// Several micro-batches' changes as one batch's: for each key, its last row (a later change of a
/// key replaces an earlier one, a delete included), in the order the keys were last changed.
pub fn last_per_key(
    parts: &[RecordBatch],
    keys: &[String],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = parts[0].schema();
    let all = concat_batches(&schema, parts)?;
    let columns = keys
        .iter()
        .map(|k| {
            all.column_by_name(k)
                .cloned()
                .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no key column {k}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&columns)?;
    let mut seen = std::collections::HashSet::with_capacity(all.num_rows());
    let mut keep: Vec<u32> = (0..all.num_rows())
        .rev()
        .filter(|&i| seen.insert(rows.row(i)))
        .map(|i| i as u32)
        .collect();
    if keep.len() == all.num_rows() {
        return Ok(all);
    }
    keep.reverse();
    take_record_batch(&all, &UInt32Array::from(keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};

    #[test]
    fn the_last_change_of_each_key_wins() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new(DELETED, DataType::Boolean, false),
        ]));
        let part = |k: Vec<Option<&str>>, v: Vec<Option<i64>>, d: Vec<bool>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(k)),
                    Arc::new(Int64Array::from(v)),
                    Arc::new(BooleanArray::from(d)),
                ],
            )
            .unwrap()
        };
        let first = part(
            vec![Some("a"), Some("b"), None, Some("c")],
            vec![Some(1), Some(2), Some(3), Some(4)],
            vec![false; 4],
        );
        // Then: b deleted, the NULL key updated, a updated, d inserted.
        let second = part(
            vec![Some("b"), None, Some("a"), Some("d")],
            vec![None, Some(30), Some(10), Some(5)],
            vec![true, false, false, false],
        );
        let out = last_per_key(&[first, second], &["k".to_string()]).unwrap();
        let k = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let v = out.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let d = out
            .column(2)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        let rows: Vec<(Option<&str>, Option<i64>, bool)> = (0..out.num_rows())
            .map(|i| {
                (
                    k.is_valid(i).then(|| k.value(i)),
                    v.is_valid(i).then(|| v.value(i)),
                    d.value(i),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (Some("c"), Some(4), false),
                (Some("b"), None, true),
                (None, Some(30), false),
                (Some("a"), Some(10), false),
                (Some("d"), Some(5), false),
            ]
        );
    }
}
