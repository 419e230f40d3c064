//! Arrow record batches to PostgreSQL's binary COPY format, column by column without per-value
//! dynamic dispatch: `COPY t (cols) FROM STDIN (FORMAT binary)`.

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int16Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, TimeUnit};
use arrow::error::ArrowError;
use bytes::{BufMut, BytesMut};

/// Signature, flags and header extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end-of-data marker: a field count of -1.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * 86_400_000_000;

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;

/// One column, cast to the Arrow type its encoder reads.
enum Column {
    Bool(BooleanArray),
    I16(Int16Array),
    I32(Int32Array),
    I64(Int64Array),
    F32(Float32Array),
    F64(Float64Array),
    Decimal(Decimal128Array, u16),
    Text(StringArray),
    Bytes(BinaryArray),
    Date(Date32Array),
    Timestamp(TimestampMicrosecondArray),
}

impl Column {
    fn new(array: &dyn Array) -> Result<Self, ArrowError> {
        let to = |t: DataType| cast(array, &t);
        Ok(match array.data_type() {
            DataType::Boolean => Self::Bool(array.as_boolean().clone()),
            DataType::Int8 | DataType::Int16 => {
                Self::I16(to(DataType::Int16)?.as_primitive::<Int16Type>().clone())
            }
            DataType::Int32 => Self::I32(array.as_primitive::<Int32Type>().clone()),
            DataType::Int64 => Self::I64(array.as_primitive::<Int64Type>().clone()),
            DataType::Float32 => Self::F32(array.as_primitive().clone()),
            DataType::Float64 => Self::F64(array.as_primitive().clone()),
            DataType::Decimal128(_, s) if *s >= 0 => {
                Self::Decimal(array.as_primitive().clone(), *s as u16)
            }
            DataType::Utf8 => Self::Text(array.as_string::<i32>().clone()),
            DataType::LargeUtf8 | DataType::Utf8View => {
                Self::Text(to(DataType::Utf8)?.as_string::<i32>().clone())
            }
            DataType::Binary => Self::Bytes(array.as_binary::<i32>().clone()),
            DataType::LargeBinary | DataType::BinaryView => {
                Self::Bytes(to(DataType::Binary)?.as_binary::<i32>().clone())
            }
            DataType::Date32 => Self::Date(array.as_primitive().clone()),
            DataType::Timestamp(unit, tz) if *unit != TimeUnit::Nanosecond => {
                let t = to(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
                Self::Timestamp(t.as_primitive().clone())
            }
            other => {
                return Err(ArrowError::NotYetImplemented(format!(
                    "no PostgreSQL binary encoding for {other}"
                )));
            }
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Self::Bool(a) => a.is_null(row),
            Self::I16(a) => a.is_null(row),
            Self::I32(a) => a.is_null(row),
            Self::I64(a) => a.is_null(row),
            Self::F32(a) => a.is_null(row),
            Self::F64(a) => a.is_null(row),
            Self::Decimal(a, _) => a.is_null(row),
            Self::Text(a) => a.is_null(row),
            Self::Bytes(a) => a.is_null(row),
            Self::Date(a) => a.is_null(row),
            Self::Timestamp(a) => a.is_null(row),
        }
    }

    /// Appends the field (length, then value) of `row`.
    fn put(&self, row: usize, out: &mut BytesMut) {
        if self.is_null(row) {
            out.put_i32(-1);
            return;
        }
        match self {
            Self::Bool(a) => {
                out.put_i32(1);
                out.put_u8(a.value(row) as u8);
            }
            Self::I16(a) => {
                out.put_i32(2);
                out.put_i16(a.value(row));
            }
            Self::I32(a) => {
                out.put_i32(4);
                out.put_i32(a.value(row));
            }
            Self::I64(a) => {
                out.put_i32(8);
                out.put_i64(a.value(row));
            }
            Self::F32(a) => {
                out.put_i32(4);
                out.put_f32(a.value(row));
            }
            Self::F64(a) => {
                out.put_i32(8);
                out.put_f64(a.value(row));
            }
            Self::Decimal(a, scale) => put_numeric(a.value(row), *scale, out),
            Self::Text(a) => {
                let v = a.value(row).as_bytes();
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            Self::Bytes(a) => {
                let v = a.value(row);
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            Self::Date(a) => {
                out.put_i32(4);
                out.put_i32(a.value(row) - PG_EPOCH_DAYS);
            }
            Self::Timestamp(a) => {
                out.put_i32(8);
                out.put_i64(a.value(row) - PG_EPOCH_MICROS);
            }
        }
    }
}

/// Appends the rows of `batch` (no header or trailer).
pub fn encode(batch: &RecordBatch, out: &mut BytesMut) -> Result<(), ArrowError> {
    let columns: Vec<Column> = batch
        .columns()
        .iter()
        .map(|c| Column::new(c.as_ref()))
        .collect::<Result<_, _>>()?;
    let fields = columns.len() as i16;
    for row in 0..batch.num_rows() {
        out.put_i16(fields);
        for c in &columns {
            c.put(row, out);
        }
    }
    Ok(())
}

/// PostgreSQL `numeric` binary form of `unscaled * 10^-scale`: base-10000 digits with a weight.
fn put_numeric(unscaled: i128, scale: u16, out: &mut BytesMut) {
    let sign = if unscaled < 0 {
        NUMERIC_NEG
    } else {
        NUMERIC_POS
    };
    let abs = unscaled.unsigned_abs();
    let pow = 10u128.pow(scale as u32);
    let (mut int, frac) = (abs / pow, abs % pow);
    let mut int_groups = Vec::new();
    while int > 0 {
        int_groups.push((int % 10_000) as i16);
        int /= 10_000;
    }
    int_groups.reverse();
    // The fraction, padded on the right to whole groups of 4 digits.
    let frac_groups_n = (scale as u32).div_ceil(4);
    let mut frac = frac * 10u128.pow(frac_groups_n * 4 - scale as u32);
    let mut frac_groups = vec![0i16; frac_groups_n as usize];
    for g in frac_groups.iter_mut().rev() {
        *g = (frac % 10_000) as i16;
        frac /= 10_000;
    }
    let mut weight = int_groups.len() as i16 - 1;
    let mut digits: Vec<i16> = int_groups.into_iter().chain(frac_groups).collect();
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    out.put_i32(8 + 2 * digits.len() as i32);
    out.put_i16(digits.len() as i16);
    out.put_i16(weight);
    out.put_u16(if digits.is_empty() { NUMERIC_POS } else { sign });
    out.put_u16(scale);
    for d in digits {
        out.put_i16(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(v: i128, scale: u16) -> Vec<i16> {
        let mut b = BytesMut::new();
        put_numeric(v, scale, &mut b);
        b[4..]
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numeric_digits() {
        // 12345.67 = 1|2345|6700, weight 1
        assert_eq!(numeric(1_234_567, 2), vec![3, 1, 0, 2, 1, 2345, 6700]);
        // -0.05 = 0500 at weight -1
        assert_eq!(numeric(-5, 2), vec![1, -1, 0x4000, 2, 500]);
        // 0
        assert_eq!(numeric(0, 2), vec![0, 0, 0, 2]);
        // 10000 = 1|0000 -> trailing zero group stripped
        assert_eq!(numeric(1_000_000, 2), vec![1, 1, 0, 2, 1]);
        // 0.00001234 (scale 8) = 0000|1234 -> leading zero group stripped, weight -2
        assert_eq!(numeric(1234, 8), vec![1, -2, 0, 8, 1234]);
    }
}
