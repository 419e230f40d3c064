//! `CAST(t AS DATE)` of a UTC timestamp, as a division. arrow-cast turns each value into a chrono
//! date-time in the column's zone and back into days (about 500 instructions a value): 5% of the
//! land-every-event job's instructions went to its `CAST(event_time AS DATE) AS dt`, the day every
//! job partitions by. In UTC (and without a zone) the day is the timestamp divided by a day's
//! units, rounded down. [`UtcDate`] is a DataFusion optimizer rule that puts the function
//! `weir_utc_date` in the place of such casts, keeping the expression's name; casts in other zones
//! stay arrow-cast's.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Date32Array};
use arrow::datatypes::{DataType, Date32Type, FieldRef, Int64Type, TimeUnit};
use chrono::NaiveDate;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Replaces `CAST(t AS DATE)` of a UTC or zone-less timestamp by `weir_utc_date(t)`.
#[derive(Debug, Default)]
pub struct UtcDate;

impl OptimizerRule for UtcDate {
    fn name(&self) -> &str {
        "weir_utc_date"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        // Most plans hold no cast to DATE: they are left as they are, names not even computed.
        let casts_to_date = |e: &Expr| {
            Ok(
                matches!(e, Expr::Cast(Cast { field, .. }) if field.data_type() == &DataType::Date32),
            )
        };
        let mut any = false;
        plan.apply_expressions(|e| {
            any = e.exists(casts_to_date)?;
            Ok(if any {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        // Leaves (scans, values) have no input to type their expressions by: left alone.
        if !any || plan.inputs().is_empty() {
            return Ok(Transformed::no(plan));
        }
        let schema = merge_schema(&plan.inputs());
        let names = NamePreserver::new(&plan);
        let mut rewrite = |expr: Expr| {
            let name = names.save(&expr);
            let rewritten = expr.transform_up(|e| match e {
                Expr::Cast(Cast { expr, field })
                    if field.data_type() == &DataType::Date32
                        && expr.get_type(&schema).is_ok_and(|t| is_utc_timestamp(&t)) =>
                {
                    Ok(Transformed::yes(UTC_DATE.call(vec![*expr])))
                }
                e => Ok(Transformed::no(e)),
            })?;
            Ok(if rewritten.transformed {
                rewritten.update_data(|e| name.restore(e))
            } else {
                rewritten
            })
        };
        plan.map_expressions(|expr| {
            // A grouping set (ROLLUP, CUBE, GROUPING SETS) keeps its shape: its members are
            // rewritten and named, never the set itself (as DataFusion's simplifier does).
            if let Expr::GroupingSet(_) = &expr {
                expr.map_children(&mut rewrite)
            } else {
                rewrite(expr)
            }
        })
    }
}

/// A timestamp whose days are its value divided by a day: in UTC, or without a zone.
fn is_utc_timestamp(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(_, tz)
        if tz.as_deref().is_none_or(|z| matches!(z, "UTC" | "+00:00" | "Etc/UTC")))
}

/// The function [`UtcDate`] calls: the day of a UTC timestamp.
static UTC_DATE: LazyLock<ScalarUDF> = LazyLock::new(|| ScalarUDF::from(UtcDateFunction::new()));

#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcDateFunction {
    signature: Signature,
}

impl UtcDateFunction {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for UtcDateFunction {
    fn name(&self) -> &str {
        "weir_utc_date"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [t] if is_utc_timestamp(t) => Ok(DataType::Date32),
            _ => plan_err!("weir_utc_date takes one UTC timestamp, not {args:?}"),
        }
    }

    /// The timestamp's field as a date, as the cast it replaces makes it: NULL only where the
    /// timestamp is (a NOT NULL `event_time` keeps its day NOT NULL), and its metadata kept but
    /// for an extension type's.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let [t] = args.arg_fields else {
            return plan_err!("weir_utc_date takes one argument");
        };
        let day = self.return_type(std::slice::from_ref(t.data_type()))?;
        // arrow_schema::extension's keys, which a cast drops (a date is not the extension type).
        let mut metadata = t.metadata().clone();
        metadata.remove("ARROW:extension:name");
        metadata.remove("ARROW:extension:metadata");
        Ok(Arc::new(
            t.as_ref()
                .clone()
                .with_data_type(day)
                .with_metadata(metadata),
        ))
    }

    /// Days follow the timestamps' order (as the cast does).
    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        Ok(inputs
            .first()
            .map_or(SortProperties::Unordered, |t| t.sort_properties))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("weir_utc_date takes one argument");
        };
        match arg {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(days(a)?)),
            ColumnarValue::Scalar(s) => {
                let day = days(&s.to_array()?)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&day, 0)?))
            }
        }
    }
}

/// Days since 1970-01-01 of each timestamp (NULL stays NULL). A value outside chrono's dates
/// fails as arrow-cast's cast does.
fn days(a: &ArrayRef) -> Result<ArrayRef> {
    let DataType::Timestamp(unit, _) = a.data_type() else {
        return exec_err!("weir_utc_date takes a timestamp, not {}", a.data_type());
    };
    let per_day: i64 = match unit {
        TimeUnit::Second => 86_400,
        TimeUnit::Millisecond => 86_400_000,
        TimeUnit::Microsecond => 86_400_000_000,
        TimeUnit::Nanosecond => 86_400_000_000_000,
    };
    // The values as the i64 they are (arrow's cast from a timestamp to Int64 reinterprets, no copy).
    let values = arrow::compute::cast(a, &DataType::Int64)?;
    let values = values.as_primitive::<Int64Type>();
    let (first, last) = *DATE_RANGE;
    let out: Date32Array = values.try_unary::<_, Date32Type, _>(|v: i64| {
        let day = v.div_euclid(per_day);
        if (first..=last).contains(&day) {
            Ok(day as i32)
        } else {
            Err(arrow::error::ArrowError::CastError(format!(
                "Cannot convert {} {v} to datetime",
                a.data_type()
            )))
        }
    })?;
    Ok(Arc::new(out))
}

/// The days chrono (and so arrow-cast) can represent, since 1970-01-01.
static DATE_RANGE: LazyLock<(i64, i64)> = LazyLock::new(|| {
    (
        i64::from(Date32Type::from_naive_date(NaiveDate::MIN)),
        i64::from(Date32Type::from_naive_date(NaiveDate::MAX)),
    )
});

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::compute::cast;
    use arrow::datatypes::{Field, Schema};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// Timestamps of every unit around day boundaries, before and after 1970, far from it, and
    /// NULL (first), in zone `tz`.
    fn samples(unit: TimeUnit, tz: Option<&str>) -> ArrayRef {
        timestamps(values(unit), unit, tz)
    }

    fn timestamps(v: Vec<Option<i64>>, unit: TimeUnit, tz: Option<&str>) -> ArrayRef {
        let a: ArrayRef = Arc::new(Int64Array::from(v));
        cast(&a, &DataType::Timestamp(unit, tz.map(Into::into))).unwrap()
    }

    fn values(unit: TimeUnit) -> Vec<Option<i64>> {
        let day = match unit {
            TimeUnit::Second => 86_400i64,
            TimeUnit::Millisecond => 86_400_000,
            TimeUnit::Microsecond => 86_400_000_000,
            TimeUnit::Nanosecond => 86_400_000_000_000,
        };
        let mut v: Vec<Option<i64>> = vec![None];
        for d in [-800_000i64, -1, 0, 1, 20_240, 2_900_000] {
            let at = d.checked_mul(day);
            v.extend([
                at,
                at.map(|a| a - 1),
                at.map(|a| a + 1),
                at.map(|a| a + day / 2),
            ]);
        }
        // A spread of values over the unit's whole range chrono takes.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(Some((x as i64) % (day * 100_000)));
        }
        v
    }

    #[test]
    fn days_are_the_dates_arrow_cast_gives() {
        for unit in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ] {
            for tz in [None, Some("UTC"), Some("+00:00"), Some("Etc/UTC")] {
                let a = samples(unit, tz);
                let expected = cast(&a, &DataType::Date32).unwrap();
                assert_eq!(&days(&a).unwrap(), &expected, "{unit:?} {tz:?}");
            }
        }
    }

    #[test]
    fn the_first_and_last_days_chrono_takes_are_the_same_as_arrow_casts() {
        let (first, last) = *DATE_RANGE;
        let day = 86_400_000i64;
        let edges = vec![
            Some(first * day),
            Some(first * day + 1),
            Some(last * day),
            Some(last * day + day - 1),
        ];
        let a = timestamps(edges, TimeUnit::Millisecond, Some("UTC"));
        assert_eq!(&days(&a).unwrap(), &cast(&a, &DataType::Date32).unwrap());
        for outside in [first * day - 1, (last + 1) * day] {
            let a = timestamps(vec![Some(outside)], TimeUnit::Millisecond, Some("UTC"));
            assert!(cast(&a, &DataType::Date32).is_err(), "{outside}");
            assert!(days(&a).is_err(), "{outside}");
        }
    }

    #[test]
    fn a_timestamp_past_chronos_dates_fails_as_arrow_casts_does() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![i64::MAX]));
        let a = cast(
            &a,
            &DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
        )
        .unwrap();
        assert!(cast(&a, &DataType::Date32).is_err());
        let err = days(&a).unwrap_err().to_string();
        assert!(err.contains("Cannot convert"), "{err}");
    }

    /// The optimized plan, the schema of the rows (names, types, nullability) and the rows.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, String, Vec<RecordBatch>) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df
            .clone()
            .into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string();
        let rows = df.collect().await.unwrap();
        (plan, format!("{:?}", rows[0].schema()), rows)
    }

    /// The rule's session and DataFusion's give the same columns, names and rows; the rule's calls
    /// `weir_utc_date` for UTC timestamps, in projections, GROUP BY and filters, and leaves casts in
    /// other zones alone.
    #[tokio::test]
    async fn casts_of_utc_timestamps_become_divisions_with_the_same_names_and_results() {
        let unit = TimeUnit::Microsecond;
        let never_null: Vec<_> = values(unit).into_iter().map(|v| v.or(Some(0))).collect();
        let columns = [
            ("t", samples(unit, Some("UTC"))),
            ("at", timestamps(never_null, unit, Some("UTC"))),
            ("naive", samples(TimeUnit::Millisecond, None)),
            ("berlin", samples(unit, Some("Europe/Berlin"))),
        ];
        // `at` is NOT NULL and carries metadata (as a Parquet table's field id): its day keeps both.
        let fields: Vec<_> = columns
            .iter()
            .map(|(name, a)| {
                let f = Field::new(*name, a.data_type().clone(), *name != "at");
                if *name == "at" {
                    f.with_metadata([("PARQUET:field_id".to_string(), "2".to_string())].into())
                } else {
                    f
                }
            })
            .collect();
        let columns = columns.into_iter().map(|(_, a)| a).collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let table =
            || Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap());
        let plain = SessionContext::new();
        let ruled = SessionContext::new();
        ruled.add_optimizer_rule(Arc::new(UtcDate));
        for ctx in [&plain, &ruled] {
            ctx.register_table("events", table()).unwrap();
        }
        for sql in [
            "SELECT CAST(t AS DATE), CAST(t AS DATE) AS dt, CAST(at AS DATE) AS day, CAST(naive AS DATE) AS d, CAST(berlin AS DATE) AS b FROM events ORDER BY 1, 2, 3, 4, 5",
            "SELECT CAST(t AS DATE) AS dt, count(*) AS n FROM events GROUP BY CAST(t AS DATE) HAVING count(*) > 1 OR CAST(t AS DATE) IS NULL ORDER BY 1",
            "SELECT CAST(date_trunc('minute', t) AS DATE) + 1 AS next, t FROM events WHERE CAST(t AS DATE) > DATE '1970-01-01' ORDER BY 2",
            "SELECT CAST(t AS DATE) AS dt, CAST(berlin AS DATE) AS b, count(*) AS n FROM events GROUP BY ROLLUP(CAST(t AS DATE), CAST(berlin AS DATE)) ORDER BY 1, 2, 3",
            "SELECT count(DISTINCT CAST(t AS DATE)) AS days, max(CAST(at AS DATE)) AS last FROM events",
            "SELECT a.t, rank() OVER (PARTITION BY CAST(a.t AS DATE) ORDER BY a.t) AS r FROM events a JOIN events b ON CAST(a.t AS DATE) = CAST(b.at AS DATE) AND a.t = b.t ORDER BY 1, 2",
        ] {
            let (plain_plan, plain_schema, plain_rows) = run(&plain, sql).await;
            let (ruled_plan, ruled_schema, ruled_rows) = run(&ruled, sql).await;
            assert_eq!(ruled_schema, plain_schema, "{sql}");
            assert_eq!(
                pretty_format_batches(&ruled_rows).unwrap().to_string(),
                pretty_format_batches(&plain_rows).unwrap().to_string(),
                "{sql}"
            );
            assert!(!plain_plan.contains("weir_utc_date"), "{plain_plan}");
            assert!(ruled_plan.contains("weir_utc_date("), "{sql}\n{ruled_plan}");
            assert!(
                !ruled_plan.contains("weir_utc_date(events.berlin"),
                "{ruled_plan}"
            );
        }
    }
}
