//! The declared input schema: column types written as text in the job file ("decimal(10,2) not null")
//! and their Arrow types, for decoding and for the `events` table the transforms read.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The time zone every decoded timestamp is normalised to.
pub const UTC: &str = "UTC";

/// The types a job file may declare, as listed in error messages.
pub const TYPE_NAMES: &str =
    "string, int, bigint, double, float, decimal(p,s), bool, date, timestamp, timestamp(us)";

/// One declared column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
    pub nullable: bool,
}

/// A declared column type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColumnType {
    String,
    Int,
    BigInt,
    Double,
    Float,
    Decimal(u8, i8),
    Bool,
    Date,
    /// Millisecond input precision (epoch numbers are milliseconds), stored as microseconds UTC.
    TimestampMillis,
    /// Microsecond input precision (epoch numbers are microseconds).
    TimestampMicros,
}

impl ColumnType {
    /// Parses one type declaration such as `decimal(10,2)`, without the nullability suffix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        let t = t.replace(' ', "");
        Ok(match t.as_str() {
            "string" | "text" | "varchar" | "utf8" => Self::String,
            "int" | "integer" | "int32" => Self::Int,
            "bigint" | "long" | "int64" => Self::BigInt,
            "double" | "float64" => Self::Double,
            "float" | "real" | "float32" => Self::Float,
            "bool" | "boolean" => Self::Bool,
            "date" => Self::Date,
            "timestamp" | "timestamp(ms)" => Self::TimestampMillis,
            "timestamp(us)" => Self::TimestampMicros,
            other if other.starts_with("decimal(") && other.ends_with(')') => {
                let inner = &other["decimal(".len()..other.len() - 1];
                let (p, s) = inner.split_once(',').ok_or_else(|| {
                    format!("\"{text}\": write decimal(precision,scale), e.g. decimal(10,2)")
                })?;
                let p: u8 = p
                    .parse()
                    .map_err(|_| format!("\"{text}\": bad precision"))?;
                let s: i8 = s.parse().map_err(|_| format!("\"{text}\": bad scale"))?;
                if p == 0 || p > 38 || s < 0 || s as u8 > p {
                    return Err(format!(
                        "\"{text}\": precision must be 1..=38 and scale 0..=precision"
                    ));
                }
                Self::Decimal(p, s)
            }
            _ => {
                return Err(format!(
                    "unknown type \"{text}\"; known types: {TYPE_NAMES}"
                ));
            }
        })
    }

    /// The Arrow type of the column in the `events` table.
    pub fn table_type(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Int => DataType::Int32,
            Self::BigInt => DataType::Int64,
            Self::Double => DataType::Float64,
            Self::Float => DataType::Float32,
            Self::Decimal(p, s) => DataType::Decimal128(p, s),
            Self::Bool => DataType::Boolean,
            Self::Date => DataType::Date32,
            Self::TimestampMillis | Self::TimestampMicros => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
            }
        }
    }

    /// The Arrow type the decoders parse into (differs from the table type only in timestamp units).
    pub fn decode_type(self) -> DataType {
        match self {
            Self::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            other => other.table_type(),
        }
    }
}

impl Column {
    /// Parses `name = "type [not null]"`.
    pub fn parse(name: &str, decl: &str) -> Result<Self, String> {
        let lower = decl.trim().to_ascii_lowercase();
        let (ty, nullable) = match lower.strip_suffix("not null") {
            Some(rest) => (rest.trim_end().to_string(), false),
            None => (
                lower.strip_suffix(" null").unwrap_or(&lower).to_string(),
                true,
            ),
        };
        Ok(Self {
            name: name.to_string(),
            kind: ColumnType::parse(&ty)?,
            nullable,
        })
    }
}

/// The declared input schema, in declaration order.
#[derive(Debug, Clone)]
pub struct InputSchema {
    pub columns: Vec<Column>,
}

impl InputSchema {
    fn build(&self, ty: impl Fn(ColumnType) -> DataType) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, ty(c.kind), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// Schema of the `events` table.
    pub fn table_schema(&self) -> SchemaRef {
        self.build(ColumnType::table_type)
    }

    /// Schema the decoders produce before the final cast to [`Self::table_schema`].
    pub fn decode_schema(&self) -> SchemaRef {
        self.build(ColumnType::decode_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_declarations() {
        let c = Column::parse("price", "decimal(10, 2) not null").unwrap();
        assert_eq!(c.kind, ColumnType::Decimal(10, 2));
        assert!(!c.nullable);
        let c = Column::parse("t", "TIMESTAMP").unwrap();
        assert_eq!(c.kind, ColumnType::TimestampMillis);
        assert!(c.nullable);
        assert_eq!(
            c.kind.table_type(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }

    #[test]
    fn rejects_unknown_types_with_the_list() {
        let err = Column::parse("x", "strnig").unwrap_err();
        assert!(err.contains("unknown type \"strnig\""), "{err}");
        assert!(err.contains("decimal(p,s)"), "{err}");
        assert!(Column::parse("x", "decimal(5,9)").is_err());
    }
}
