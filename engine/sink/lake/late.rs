//! The `_late` table: rows that came for a window already written (`emit = "window"`), each with
//! its output, window, the watermark when it came, and the row as JSON. They are kept, never
//! folded into a written window: window rows plus late rows account for every event.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::transform::LateRows;

/// Columns of `_late`.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("batch", DataType::Int64, false),
        Field::new("output", DataType::Utf8, false),
        Field::new("window_start", ts.clone(), true),
        Field::new("watermark", ts, true),
        Field::new("event", DataType::Utf8, false),
    ]))
}

pub fn to_batch(job: &str, batch: u64, late: &[LateRows]) -> Result<RecordBatch, ArrowError> {
    let (mut outputs, mut windows, mut watermarks, mut events) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for l in late {
        // Columns the optimizer added (a common subexpression computed once) are not the event's.
        let own: Vec<usize> = (0..l.rows.num_columns())
            .filter(|&i| !l.rows.schema().field(i).name().starts_with("__common_expr"))
            .collect();
        let rows = l.rows.project(&own)?;
        let mut json = Vec::new();
        {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut json);
            w.write(&rows)?;
            w.finish()?;
        }
        let text = String::from_utf8(json).map_err(|e| ArrowError::JsonError(e.to_string()))?;
        for (line, start) in text.lines().zip(&l.starts) {
            outputs.push(l.output.clone());
            windows.push(*start);
            watermarks.push(l.watermark);
            events.push(line.to_string());
        }
    }
    let n = events.len();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![job; n])),
            Arc::new(Int64Array::from(vec![batch as i64; n])),
            Arc::new(StringArray::from(outputs)),
            Arc::new(TimestampMicrosecondArray::from(windows).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(watermarks).with_timezone("UTC")),
            Arc::new(StringArray::from(events)),
        ],
    )
}
