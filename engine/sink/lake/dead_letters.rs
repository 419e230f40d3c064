//! The `_dead_letters` table: every record that did not decode, with where it came from and why.

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
