//! The one type mapping from the Arrow types the transforms produce to each warehouse's column
//! types (README "Type mapping"). A type with no faithful mapping is refused at `weir validate`,
//! naming the output, the column and the CAST that fixes it.

use arrow::datatypes::{DataType, TimeUnit};

/// A place outputs are loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Warehouse {
    Glue,
    Redshift,
    Postgres,
    BigQuery,
}

impl Warehouse {
    /// The destination's name in logs, metrics, cursors and `weir status`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Glue => "glue",
            Self::Redshift => "redshift",
            Self::Postgres => "postgres",
            Self::BigQuery => "bigquery",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Glue => "Glue",
            Self::Redshift => "Redshift",
            Self::Postgres => "PostgreSQL",
            Self::BigQuery => "BigQuery",
        }
    }
}

/// BigQuery NUMERIC holds up to 29 integer and 9 fractional digits; wider decimals are BIGNUMERIC.
fn bigquery_decimal(p: u8, s: i8) -> String {
    if s <= 9 && (p as i16 - s as i16) <= 29 {
        "NUMERIC".into()
    } else {
        "BIGNUMERIC".into()
    }
}

/// The column type of `dt` in warehouse `w`, or why there is none and the CAST that fixes it.
pub fn column_type(w: Warehouse, dt: &DataType) -> Result<String, String> {
    use DataType::*;
    use Warehouse::*;
    let t = match (dt, w) {
        (Boolean, Glue) => "boolean",
        (Boolean, Redshift | Postgres) => "boolean",
        (Boolean, BigQuery) => "BOOL",
        (Int8, Glue) => "tinyint",
        (Int8 | Int16, Redshift | Postgres) => "smallint",
        (Int16, Glue) => "smallint",
        (Int32, Glue) => "int",
        (Int32, Redshift | Postgres) => "integer",
        (Int64, Glue | Redshift | Postgres) => "bigint",
        (Int8 | Int16 | Int32 | Int64, BigQuery) => "INT64",
        (Float32, Glue) => "float",
        (Float32, Redshift | Postgres) => "real",
        (Float64, Glue) => "double",
        (Float64, Redshift | Postgres) => "double precision",
        (Float32 | Float64, BigQuery) => "FLOAT64",
        (Decimal128(p, s), _) if *s < 0 => {
            return Err(format!(
                "decimal({p},{s}) has a negative scale; CAST it to DECIMAL({p},0)"
            ));
        }
        (Decimal128(p, s), Glue) => return Ok(format!("decimal({p},{s})")),
        (Decimal128(p, s), Redshift | Postgres) => return Ok(format!("numeric({p},{s})")),
        (Decimal128(p, s), BigQuery) => return Ok(bigquery_decimal(*p, *s)),
        (Utf8 | LargeUtf8 | Utf8View, Glue) => "string",
        (Utf8 | LargeUtf8 | Utf8View, Redshift) => "varchar(65535)",
        (Utf8 | LargeUtf8 | Utf8View, Postgres) => "text",
        (Utf8 | LargeUtf8 | Utf8View, BigQuery) => "STRING",
        (Binary | LargeBinary | BinaryView, Glue) => "binary",
        (Binary | LargeBinary | BinaryView, Redshift) => "varbyte(1024000)",
        (Binary | LargeBinary | BinaryView, Postgres) => "bytea",
        (Binary | LargeBinary | BinaryView, BigQuery) => "BYTES",
        (Date32, Glue | Redshift | Postgres) => "date",
        (Date32, BigQuery) => "DATE",
        (Timestamp(TimeUnit::Nanosecond, _), _) => {
            return Err(
                "nanosecond timestamps lose precision in every warehouse; CAST it to TIMESTAMP (microseconds), e.g. CAST(x AS TIMESTAMP)"
                    .into(),
            );
        }
        (Timestamp(_, Some(_)), Glue) => "timestamp",
        (Timestamp(_, Some(_)), Redshift | Postgres) => "timestamp with time zone",
        (Timestamp(_, Some(_)), BigQuery) => "TIMESTAMP",
        (Timestamp(_, None), Glue) => "timestamp",
        (Timestamp(_, None), Redshift | Postgres) => "timestamp without time zone",
        (Timestamp(_, None), BigQuery) => "DATETIME",
        (UInt8 | UInt16 | UInt32 | UInt64, _) => {
            return Err(format!(
                "unsigned {dt} has no faithful {} type; CAST it to BIGINT",
                w.label()
            ));
        }
        (Null, _) => {
            return Err("the column is always NULL and has no type; CAST(NULL AS <type>)".into());
        }
        _ => {
            return Err(format!(
                "{dt} has no {} type Weir maps; CAST it to a string, number, decimal, date or timestamp",
                w.label()
            ));
        }
    };
    Ok(t.to_string())
}

/// A column with no mapping in a warehouse.
#[derive(Debug, thiserror::Error)]
#[error("{file}: output {table}, column {column}: {message}")]
pub struct TypeError {
    pub file: String,
    pub table: String,
    pub column: String,
    pub message: String,
}

/// Checks every column of an output for every warehouse in `into`.
pub fn check_schema(
    into: &[Warehouse],
    file: &str,
    table: &str,
    schema: &arrow::datatypes::Schema,
) -> Result<(), TypeError> {
    for w in into {
        for f in schema.fields() {
            column_type(*w, f.data_type()).map_err(|message| TypeError {
                file: file.to_string(),
                table: table.to_string(),
                column: f.name().clone(),
                message: format!("not loadable into {}: {message}", w.label()),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_table() {
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let cases = [
            (
                DataType::Decimal128(12, 2),
                ["decimal(12,2)", "numeric(12,2)", "numeric(12,2)", "NUMERIC"],
            ),
            (
                utc.clone(),
                [
                    "timestamp",
                    "timestamp with time zone",
                    "timestamp with time zone",
                    "TIMESTAMP",
                ],
            ),
            (DataType::Date32, ["date", "date", "date", "DATE"]),
            (
                DataType::Utf8,
                ["string", "varchar(65535)", "text", "STRING"],
            ),
            (DataType::Int64, ["bigint", "bigint", "bigint", "INT64"]),
            (DataType::Boolean, ["boolean", "boolean", "boolean", "BOOL"]),
        ];
        let ws = [
            Warehouse::Glue,
            Warehouse::Redshift,
            Warehouse::Postgres,
            Warehouse::BigQuery,
        ];
        for (dt, want) in cases {
            for (w, t) in ws.iter().zip(want) {
                assert_eq!(column_type(*w, &dt).unwrap(), t, "{dt} in {w:?}");
            }
        }
        assert_eq!(
            column_type(Warehouse::BigQuery, &DataType::Decimal128(38, 10)).unwrap(),
            "BIGNUMERIC"
        );
        let err = column_type(Warehouse::Postgres, &DataType::UInt64).unwrap_err();
        assert!(err.contains("CAST it to BIGINT"), "{err}");
        let ns = DataType::Timestamp(TimeUnit::Nanosecond, None);
        assert!(column_type(Warehouse::Glue, &ns).is_err());
    }
}
