//! The `_dead_letters` table: every record that did not decode, with where it came from and why;
//! and `_replayed`: the dead letters `weir replay` ran through the job again, so that none is
//! brought back twice.

use std::sync::Arc;

use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::decode::DeadLetter;

/// Columns of `_dead_letters`.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("batch", DataType::Int64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
        Field::new("raw_text", DataType::Utf8, false),
        Field::new(
            "written_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

pub fn to_batch(job: &str, batch: u64, dead: &[DeadLetter]) -> Result<RecordBatch, ArrowError> {
    let n = dead.len();
    let now = chrono::Utc::now().timestamp_micros();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![job; n])),
            Arc::new(Int64Array::from(vec![batch as i64; n])),
            Arc::new(StringArray::from_iter_values(
                dead.iter().map(|d| &*d.shard),
            )),
            Arc::new(StringArray::from_iter_values(
                dead.iter().map(|d| d.position.to_string()),
            )),
            Arc::new(StringArray::from_iter_values(
                dead.iter().map(|d| &d.reason),
            )),
            Arc::new(BinaryArray::from_iter_values(
                dead.iter().map(|d| &d.raw[..]),
            )),
            Arc::new(StringArray::from_iter_values(
                dead.iter().map(|d| String::from_utf8_lossy(&d.raw)),
            )),
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        ],
    )
}

/// One dead letter: the batch that wrote it, and where its record came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterKey {
    pub batch: u64,
    pub source: String,
    pub position: String,
}

/// Columns of `_replayed`.
pub fn replayed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        // The dead letter: the batch that wrote it, its source and position.
        Field::new("batch", DataType::Int64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, false),
        Field::new("replay_batch", DataType::Int64, false),
        // "row" when it decoded this time, else "dead letter" (a new one, with the new reason).
        Field::new("outcome", DataType::Utf8, false),
        Field::new(
            "replayed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// The `_replayed` rows of one replay batch: each key, and whether it is a dead letter again.
pub fn replayed_batch(
    job: &str,
    batch: u64,
    keys: &[DeadLetterKey],
    again: &[DeadLetter],
) -> Result<RecordBatch, ArrowError> {
    let n = keys.len();
    let now = chrono::Utc::now().timestamp_micros();
    let failed: std::collections::BTreeSet<(&str, String)> = again
        .iter()
        .map(|d| (&*d.shard, d.position.to_string()))
        .collect();
    RecordBatch::try_new(
        replayed_schema(),
        vec![
            Arc::new(StringArray::from(vec![job; n])),
            Arc::new(Int64Array::from_iter_values(
                keys.iter().map(|k| k.batch as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                keys.iter().map(|k| &k.source),
            )),
            Arc::new(StringArray::from_iter_values(
                keys.iter().map(|k| &k.position),
            )),
            Arc::new(Int64Array::from(vec![batch as i64; n])),
            Arc::new(StringArray::from_iter_values(keys.iter().map(|k| {
                match failed.contains(&(k.source.as_str(), k.position.clone())) {
                    true => "dead letter",
                    false => "row",
                }
            }))),
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        ],
    )
}
