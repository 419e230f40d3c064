//! Hive partitioning: split rows by partition column values into `col=value/` folders.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::error::ArrowError;
use arrow::row::{Row, RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// The folder Hive (and Glue, Athena, Spark) use for NULL partition values.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Splits `batch` by the values of `columns`; keys are relative folders like `dt=2025-06-01`.
pub fn split(
    batch: &RecordBatch,
    columns: &[String],
) -> Result<BTreeMap<String, RecordBatch>, ArrowError> {
    if columns.is_empty() {
        return Ok(BTreeMap::from([(String::new(), batch.clone())]));
    }
    let options = FormatOptions::default().with_null(NULL_PARTITION);
    let arrays = columns
        .iter()
        .map(|c| {
            batch
                .column_by_name(c)
                .ok_or_else(|| ArrowError::SchemaError(format!("no partition column {c}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Group rows by their values in the row format (hashing bytes, not formatting every row);
    // only each group's first row is formatted into its folder name.
    let converter = RowConverter::new(
        arrays
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect(),
    )?;
    let keys =
        converter.convert_columns(&arrays.iter().map(|a| (*a).clone()).collect::<Vec<_>>())?;
    // Rows come in runs of one partition (events in time order): a row like the one before is
    // added without hashing.
    let mut index: HashMap<Row<'_>, usize> = HashMap::new();
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut last: Option<(Row<'_>, usize)> = None;
    for row in 0..batch.num_rows() {
        let key = keys.row(row);
        let group = match last {
            Some((before, group)) if before == key => group,
            _ => {
                let group = *index.entry(key).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                last = Some((key, group));
                group
            }
        };
        groups[group].push(row as u32);
    }
    let formatters = arrays
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let folder = |row: usize| {
        let mut key = String::new();
        for (i, (name, f)) in columns.iter().zip(&formatters).enumerate() {
            if i > 0 {
                key.push('/');
            }
            key.push_str(name);
            key.push('=');
            key.push_str(&escape(&f.value(row).to_string()));
        }
        key
    };
    if groups.len() == 1 {
        return Ok(BTreeMap::from([(folder(0), batch.clone())]));
    }
    // Different values can name the same folder (a NULL and the string Hive uses for it).
    let mut folders: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for rows in groups {
        let into = folders.entry(folder(rows[0] as usize)).or_default();
        into.extend(rows);
    }
    folders
        .into_iter()
        .map(|(key, mut rows)| {
            rows.sort_unstable();
            Ok((key, take_record_batch(batch, &UInt32Array::from(rows))?))
        })
        .collect()
}

/// The Delta partition values of a batch holding one partition (its first row's values), in the
/// Delta protocol's text form: dates `2025-06-01`, timestamps `2025-06-01 10:00:00.000000`.
pub fn delta_values(
    batch: &RecordBatch,
    columns: &[String],
) -> Result<Vec<(String, Option<String>)>, ArrowError> {
    const TS: &str = "%Y-%m-%d %H:%M:%S%.6f";
    let options = FormatOptions::default()
        .with_timestamp_format(Some(TS))
        .with_timestamp_tz_format(Some(TS));
    columns
        .iter()
        .map(|c| {
            let a = batch
                .column_by_name(c)
                .ok_or_else(|| ArrowError::SchemaError(format!("no partition column {c}")))?;
            if batch.num_rows() == 0 || a.is_null(0) {
                return Ok((c.clone(), None));
            }
            let f = ArrayFormatter::try_new(a.as_ref(), &options)?;
            Ok((c.clone(), Some(f.value(0).to_string())))
        })
        .collect()
}

/// Escapes a partition value as Hive does (`%XX` for characters unsafe in paths).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || "\"#%'*/:=?\\{}[]^".contains(c) {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn a_partition_met_again_after_another_keeps_its_rows_in_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("dt", DataType::Date32, false),
            Field::new("v", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from(vec![20240, 20241, 20240, 20240, 20241])),
                Arc::new(Int32Array::from(vec![0, 1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let parts = split(&batch, &["dt".into()]).unwrap();
        let values = |key: &str| {
            let b = &parts[key];
            b.column(1)
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        assert_eq!(values("dt=2025-06-01"), [0, 2, 3]);
        assert_eq!(values("dt=2025-06-02"), [1, 4]);
    }

    #[test]
    fn splits_by_value_with_nulls_and_escapes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("dt", DataType::Date32, true),
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from(vec![
                    Some(20240),
                    Some(20240),
                    None,
                    Some(20241),
                ])),
                Arc::new(StringArray::from(vec!["a/b", "a/b", "x", "y"])),
                Arc::new(Int32Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let parts = split(&batch, &["dt".into(), "k".into()]).unwrap();
        let keys: Vec<_> = parts.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "dt=2025-06-01/k=a%2Fb",
                "dt=2025-06-02/k=y",
                "dt=__HIVE_DEFAULT_PARTITION__/k=x"
            ]
        );
        assert_eq!(parts["dt=2025-06-01/k=a%2Fb"].num_rows(), 2);
        assert_eq!(
            parts["dt=2025-06-01/k=a%2Fb"].num_columns(),
            3,
            "partition columns stay in the file"
        );
    }
}
