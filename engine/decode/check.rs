//! Values that decode but that no warehouse would take, found per row after decoding so that the
//! record becomes a dead letter at once instead of a load that fails forever:
//!
//! - timestamps and dates outside the years 1900–2199 (epoch microseconds in a millisecond column
//!   land in the year 57,000; Redshift and BigQuery reject such rows, and a millisecond value too
//!   large for microseconds would otherwise turn NULL);
//! - `NaN` and infinities in float columns (written as `"NaN"`, `"Infinity"` or a number too large
//!   for a double): a sum over them is meaningless, and warehouses disagree about them;
//! - strings holding the NUL character (`\u0000`): valid JSON, but PostgreSQL and Redshift cannot
//!   store it in a text column.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType,
};
use arrow::error::ArrowError;

/// 1900-01-01T00:00:00Z and 2200-01-01T00:00:00Z, in seconds since the epoch.
const FIRST_SECOND: i64 = -2_208_988_800;
const END_SECOND: i64 = 7_258_118_400;

/// Per row (index into `batch`), the first reason it cannot be loaded, in row order.
pub(super) fn problems(batch: &RecordBatch) -> BTreeMap<usize, String> {
    let mut out = BTreeMap::new();
    let schema = batch.schema();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let name = field.name();
        let mut flag = |row: usize, reason: String| {
            out.entry(row).or_insert(reason);
        };
        match column.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                let a = column.as_primitive::<TimestampMillisecondType>();
                out_of_range(a, FIRST_SECOND * 1000, END_SECOND * 1000, |row, v| {
                    flag(row, timestamp_reason(name, v, "milliseconds", 1_000))
                });
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let a = column.as_primitive::<TimestampMicrosecondType>();
                out_of_range(
                    a,
                    FIRST_SECOND * 1_000_000,
                    END_SECOND * 1_000_000,
                    |row, v| flag(row, timestamp_reason(name, v, "microseconds", 1_000_000)),
                );
            }
            DataType::Date32 => {
                let a = column.as_primitive::<Date32Type>();
                let day = 86_400;
                out_of_range(a, FIRST_SECOND / day, END_SECOND / day, |row, v| {
                    let date = chrono::DateTime::from_timestamp(v * day, 0).map_or_else(
                        || format!("day {v} since 1970"),
                        |t| t.date_naive().to_string(),
                    );
                    flag(
                        row,
                        format!("column {name}: {date} is outside the years 1900–2199"),
                    )
                });
            }
            DataType::Float64 => {
                let a = column.as_primitive::<Float64Type>();
                not_finite(a.values().iter().copied(), a.nulls(), |row, v| {
                    flag(row, float_reason(name, v))
                });
            }
            DataType::Float32 => {
                let a = column.as_primitive::<Float32Type>();
                not_finite(a.values().iter().map(|&v| v as f64), a.nulls(), |row, v| {
                    flag(row, float_reason(name, v))
                });
            }
            DataType::Utf8 => {
                let a = column.as_string::<i32>();
                if memchr::memchr(0, a.values()).is_some() {
                    for (row, v) in a.iter().enumerate() {
                        if v.is_some_and(|s| s.contains('\0')) {
                            flag(
                                row,
                                format!(
                                    "column {name}: the string holds a NUL character (\\u0000), \
                                     which PostgreSQL and Redshift cannot store; remove it at \
                                     the producer"
                                ),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Calls `bad` for each non-null value outside `lo..hi`; a min/max pass first.
fn out_of_range<T>(
    a: &arrow::array::PrimitiveArray<T>,
    lo: i64,
    hi: i64,
    mut bad: impl FnMut(usize, i64),
) where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    let inside = |v: i64| (lo..hi).contains(&v);
    let (Some(min), Some(max)) = (arrow::compute::min(a), arrow::compute::max(a)) else {
        return;
    };
    if inside(min.into()) && inside(max.into()) {
        return;
    }
    for (row, v) in a.iter().enumerate() {
        if let Some(v) = v.map(Into::into)
            && !inside(v)
        {
            bad(row, v);
        }
    }
}

fn not_finite(
    values: impl Iterator<Item = f64> + Clone,
    nulls: Option<&arrow::buffer::NullBuffer>,
    mut bad: impl FnMut(usize, f64),
) {
    if values.clone().all(f64::is_finite) {
        return;
    }
    for (row, v) in values.enumerate() {
        if !v.is_finite() && nulls.is_none_or(|n| n.is_valid(row)) {
            bad(row, v);
        }
    }
}

fn timestamp_reason(name: &str, v: i64, unit: &str, per_second: i64) -> String {
    let when = chrono::DateTime::from_timestamp(v.div_euclid(per_second), 0).map_or_else(
        || format!("{v} {unit} since 1970"),
        |t| format!("{} ({v} {unit} since 1970)", t.format("%Y-%m-%dT%H:%M:%SZ")),
    );
    format!(
        "column {name}: {when} is outside the years 1900–2199; epoch numbers in a \
         \"timestamp\" column are milliseconds, in a \"timestamp(us)\" column microseconds"
    )
}

fn float_reason(name: &str, v: f64) -> String {
    format!(
        "column {name}: {v} is not a finite number; send a number or null (NaN and infinities \
         are refused: warehouses disagree on them and they spoil every sum)"
    )
}

/// `batch` without the rows in `problems`.
pub(super) fn without(
    batch: RecordBatch,
    problems: &BTreeMap<usize, String>,
) -> Result<RecordBatch, ArrowError> {
    if problems.is_empty() {
        return Ok(batch);
    }
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|r| Some(!problems.contains_key(&r)))
        .collect();
    filter_record_batch(&batch, &keep)
}
