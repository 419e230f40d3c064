//! Window outputs (`emit = "window"`): a `GROUP BY` transform kept across micro-batches with
//! DataFusion's own two-phase aggregation. On each batch the aggregate's input runs and its
//! `Partial` stage turns the rows into accumulator state; `PartialReduce` folds that into the state
//! of the open windows. A window whose end plus the lateness the watermark has passed is finished
//! by the `Final` stage and the plan above the aggregate (HAVING, projections, joins with
//! dimension tables after the aggregate), and written once. Rows for a window already written are
//! late: they are set aside (for the `_late` table), never folded in.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DataFusionError};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::{ExecutionPlan, collect};

type Result<T> = std::result::Result<T, DataFusionError>;

/// `[outputs.<name>] window = { column, size, lateness }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// The output column holding each window's start (a GROUP BY key).
    pub column: String,
    pub size: Duration,
    pub lateness: Duration,
}

/// What is kept of a window output between batches (and written with each batch).
#[derive(Debug, Clone, Default)]
pub struct WindowState {
    /// The largest event time seen so far (µs since the epoch).
    pub watermark: Option<i64>,
    /// Every window ending at or before this (µs) has been written: rows for it are late.
    pub closed: Option<i64>,
    /// The accumulator state of the open windows: the GROUP BY keys, then each aggregate's state.
    pub open: Option<RecordBatch>,
}

impl WindowState {
    /// Groups (window and key) held open.
    pub fn groups(&self) -> usize {
        self.open.as_ref().map_or(0, RecordBatch::num_rows)
    }
}

/// One batch of a window output.
pub struct Stepped {
    /// Rows of the windows finished by this batch.
    pub rows: Vec<RecordBatch>,
    /// Rows (as the aggregate reads them) for windows already written, with each one's window
    /// start (µs).
    pub late: Vec<(RecordBatch, Vec<Option<i64>>)>,
    pub state: WindowState,
}

/// Checks that `plan` (as written, before optimisation) can be kept incrementally as a window
/// output on `column`; returns the position of `column` among the GROUP BY keys, or the reason
/// and the fix. `dims` are the job's dimension tables, the only tables a query may read above
/// its aggregate (that part runs when a window is finished, not on each batch).
pub fn analyze(
    plan: &LogicalPlan,
    column: &str,
    dims: &std::collections::BTreeSet<&str>,
) -> std::result::Result<usize, String> {
    let mut aggregates = 0;
    let mut refused: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::Aggregate(a) => {
                aggregates += 1;
                if a.group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_)))
                {
                    refused.get_or_insert(
                        "GROUPING SETS, ROLLUP and CUBE cannot be kept per window; write one output per grouping".into(),
                    );
                }
            }
            LogicalPlan::Distinct(_) => aggregates += 1,
            LogicalPlan::Window(_) => {
                refused.get_or_insert(
                    "window functions (... OVER (...)) cannot be kept incrementally; compute them when reading the table (a view, or `weir query`), or use emit = \"batch\"".into(),
                );
            }
            LogicalPlan::Limit(_) => {
                refused.get_or_insert(
                    "LIMIT cannot be kept incrementally (the rows it keeps change as windows fill); drop it and limit when reading the table".into(),
                );
            }
            LogicalPlan::Sort(s) if s.fetch.is_some() => {
                refused.get_or_insert(
                    "ORDER BY ... LIMIT cannot be kept incrementally; drop the LIMIT and limit when reading the table".into(),
                );
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.strip_backtrace())?;
    if let Some(r) = refused {
        return Err(r);
    }
    match aggregates {
        0 => {
            return Err(format!(
                "emit = \"window\" needs an aggregate query (GROUP BY {column}, ...) with {column} a window start such as date_trunc('minute', event_time); this query has no aggregate: use emit = \"batch\" to write its rows as they come"
            ));
        }
        1 => {}
        _ => {
            return Err(
                "two aggregates stacked (an aggregate of an aggregate, DISTINCT over GROUP BY, or a UNION of aggregates) cannot be kept incrementally; keep the inner aggregate as its own window output and aggregate it when reading".into(),
            );
        }
    }
    if let Some(table) = read_above_aggregate(plan)
        .into_iter()
        .find(|t| !dims.contains(t.as_str()))
    {
        return Err(format!(
            "it reads {table} after its aggregate: that part runs when a window is finished, so only the job's [tables] (dimension tables) may be joined there; join {table} before the GROUP BY, or make this output emit = \"batch\""
        ));
    }
    let schema = plan.schema();
    let Some(at) = schema.fields().iter().position(|f| f.name() == column) else {
        return Err(format!(
            "the window column \"{column}\" is not a column of the query; it produces: {}",
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let data_type = schema.field(at).data_type();
    if !matches!(data_type, DataType::Timestamp(_, _) | DataType::Date32) {
        return Err(format!(
            "the window column \"{column}\" is {data_type}; it must be a timestamp holding the window start, e.g. date_trunc('minute', event_time) AS {column}"
        ));
    }
    let (qualifier, field) = schema.qualified_field(at);
    group_index(plan, &Column::new(qualifier.cloned(), field.name()), column)
}

/// Tables scanned by `plan` outside its aggregate's input.
fn read_above_aggregate(plan: &LogicalPlan) -> Vec<String> {
    match plan {
        LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => Vec::new(),
        LogicalPlan::TableScan(scan) => vec![scan.table_name.table().to_string()],
        other => other
            .inputs()
            .into_iter()
            .flat_map(read_above_aggregate)
            .collect(),
    }
}

/// The position among the GROUP BY keys of the aggregate below `plan` of the column `col`.
fn group_index(
    plan: &LogicalPlan,
    col: &Column,
    shown: &str,
) -> std::result::Result<usize, String> {
    let not_a_key = || {
        format!(
            "the window column \"{shown}\" must be one of the GROUP BY keys as it is (GROUP BY date_trunc('minute', event_time), ...), not computed after the aggregate"
        )
    };
    let index = plan
        .schema()
        .index_of_column(col)
        .map_err(|_| not_a_key())?;
    match plan {
        LogicalPlan::Aggregate(a) if index < a.group_expr.len() => Ok(index),
        LogicalPlan::Aggregate(_) => Err(format!(
            "the window column \"{shown}\" is an aggregate; it must be one of the GROUP BY keys"
        )),
        LogicalPlan::Projection(p) => match p.expr[index].clone().unalias() {
            Expr::Column(c) => group_index(&p.input, &c, shown),
            _ => Err(not_a_key()),
        },
        LogicalPlan::SubqueryAlias(s) => {
            let (q, f) = s.input.schema().qualified_field(index);
            group_index(&s.input, &Column::new(q.cloned(), f.name()), shown)
        }
        other => other
            .inputs()
            .into_iter()
            .find(|i| i.schema().has_column(col))
            .ok_or_else(not_a_key)
            .and_then(|i| group_index(i, col, shown)),
    }
}

/// The aggregate of a planned window output, taken apart.
struct Parts {
    group_by: PhysicalGroupBy,
    aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
    filter_expr: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// What the aggregate reads (rows of the batch).
    input: Arc<dyn ExecutionPlan>,
    input_schema: SchemaRef,
}

impl Parts {
    /// Finds the aggregate (the topmost one: `analyze` allowed only one) and its raw input.
    fn of(plan: &Arc<dyn ExecutionPlan>) -> Result<Self> {
        let top = find_aggregate(plan)
            .ok_or_else(|| DataFusionError::Plan("window output: no aggregate in plan".into()))?;
        let raw = match top.mode() {
            AggregateMode::Single | AggregateMode::SinglePartitioned => top,
            AggregateMode::Final | AggregateMode::FinalPartitioned => find_aggregate(top.input())
                .filter(|p| *p.mode() == AggregateMode::Partial)
                .ok_or_else(|| {
                    DataFusionError::Plan("window output: no partial aggregate below final".into())
                })?,
            mode => {
                return Err(DataFusionError::Plan(format!(
                    "window output: unexpected aggregate mode {mode:?}"
                )));
            }
        };
        if !raw.group_expr().is_single() {
            return Err(DataFusionError::Plan(
                "window output: grouping sets cannot be kept".into(),
            ));
        }
        Ok(Self {
            group_by: raw.group_expr().clone(),
            aggr_expr: raw.aggr_expr().to_vec(),
            filter_expr: raw.filter_expr().to_vec(),
            input: raw.input().clone(),
            input_schema: raw.input_schema(),
        })
    }

    fn stage(
        &self,
        mode: AggregateMode,
        rows: Vec<RecordBatch>,
        schema: SchemaRef,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let group_by = match mode {
            AggregateMode::Partial => self.group_by.clone(),
            _ => self.group_by.as_final(),
        };
        Ok(Arc::new(AggregateExec::try_new(
            mode,
            group_by,
            self.aggr_expr.clone(),
            self.filter_expr.clone(),
            MemorySourceConfig::try_new_exec(&[rows], schema, None)?,
            self.input_schema.clone(),
        )?))
    }
}

/// The topmost aggregate of `plan`.
fn find_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<&AggregateExec> {
    if let Some(a) = plan.downcast_ref::<AggregateExec>() {
        return Some(a);
    }
    plan.children().into_iter().find_map(find_aggregate)
}

/// `plan` with its topmost aggregate (and everything below it) replaced by `with`.
fn replace_aggregate(
    plan: &Arc<dyn ExecutionPlan>,
    with: &Arc<dyn ExecutionPlan>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if plan.downcast_ref::<AggregateExec>().is_some() {
        return Ok(Some(with.clone()));
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    for (i, child) in children.iter().enumerate() {
        if let Some(new) = replace_aggregate(child, with)? {
            let mut children = children.clone();
            children[i] = new;
            return Ok(Some(replace_children_if_necessary(plan.clone(), children)?));
        }
    }
    Ok(None)
}

/// The values of a window-start column as µs since the epoch.
fn micros(array: &ArrayRef) -> Result<Int64Array> {
    let ts = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let ints = cast(&ts, &DataType::Int64)?;
    Ok(ints
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64")
        .clone())
}

/// The window starts of `rows` (aggregate input) by the window's GROUP BY expression.
fn starts_of(expr: &Arc<dyn PhysicalExpr>, rows: &RecordBatch) -> Result<Int64Array> {
    let values = expr.evaluate(rows)?.into_array(rows.num_rows())?;
    micros(&values)
}

/// Runs one batch of a window output: `plan` is the transform planned on this batch, `group` the
/// window column's position among its GROUP BY keys, `max_time` the largest event time of the
/// batch (µs), `flush` set when the input has ended (every open window is finished).
#[allow(clippy::too_many_arguments)]
pub async fn step(
    plan: &Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    spec: &WindowSpec,
    group: usize,
    state: &WindowState,
    max_time: Option<i64>,
    flush: bool,
) -> Result<Stepped> {
    let parts = Parts::of(plan)?;
    let size = spec.size.as_micros() as i64;
    let lateness = spec.lateness.as_micros() as i64;
    let window_expr = parts
        .group_by
        .expr()
        .get(group)
        .map(|(e, _)| e.clone())
        .ok_or_else(|| {
            DataFusionError::Plan(format!(
                "window output: the planned aggregate has {} GROUP BY keys, the query {}",
                parts.group_by.expr().len(),
                group + 1
            ))
        })?;

    // The batch's rows as the aggregate reads them; those of windows already written are late.
    let input = collect(parts.input.clone(), task.clone()).await?;
    let mut on_time = Vec::with_capacity(input.len());
    let mut late = Vec::new();
    for rows in input {
        let starts = starts_of(&window_expr, &rows)?;
        // A row with no window start (a NULL time) belongs to no window: late at once.
        let is_late: BooleanArray = starts
            .iter()
            .map(|s| {
                Some(match (s, state.closed) {
                    (None, _) => true,
                    (Some(s), Some(c)) => s + size <= c,
                    (Some(_), None) => false,
                })
            })
            .collect();
        if is_late.true_count() > 0 {
            let kept = filter_record_batch(&rows, &arrow::compute::not(&is_late)?)?;
            let gone = filter_record_batch(&rows, &is_late)?;
            let gone_starts = arrow::compute::filter(&starts, &is_late)?;
            let gone_starts = gone_starts
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64")
                .iter()
                .collect();
            late.push((gone, gone_starts));
            on_time.push(kept);
        } else {
            on_time.push(rows);
        }
    }

    // The batch's accumulator state, folded into the open windows' state.
    let partial = if on_time.iter().all(|b| b.num_rows() == 0) {
        Vec::new()
    } else {
        let input_schema = parts.input.schema();
        collect(
            parts.stage(AggregateMode::Partial, on_time, input_schema)?,
            task.clone(),
        )
        .await?
    };
    let state_schema = parts
        .stage(AggregateMode::Partial, Vec::new(), parts.input.schema())?
        .schema();
    let mut held: Vec<RecordBatch> = Vec::new();
    if let Some(open) = &state.open {
        if open.schema().fields() != state_schema.fields() {
            return Err(DataFusionError::Plan(format!(
                "the SQL changed while windows were open: the saved state of the open windows has other columns than this query's aggregate ({} against {}). Put the old SQL back and let its windows close (a file run closes them all at its end), or give the changed query a new output name (a new table, starting with no state)",
                open.schema(),
                state_schema
            )));
        }
        held.push(open.clone());
    }
    let fresh = !partial.iter().all(|b| b.num_rows() == 0);
    held.extend(partial.into_iter().filter(|b| b.num_rows() > 0));
    // Always reduced when the batch brought rows: the partial stage may pass rows through
    // unaggregated (DataFusion skips partial aggregation of nearly unique keys).
    let merged = if fresh {
        collect(
            parts.stage(AggregateMode::PartialReduce, held, state_schema.clone())?,
            task.clone(),
        )
        .await?
    } else {
        held
    };
    let merged = concat_batches(&state_schema, &merged)?;

    // The watermark, and the windows it (or the end of the input) finishes.
    let watermark = match (state.watermark, max_time) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let starts = micros(merged.column(group))?;
    let mut closed = match (state.closed, watermark.map(|w| w - lateness)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if flush {
        let last_end = starts.iter().flatten().max().map(|s| s + size);
        closed = match (closed, last_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let finished: BooleanArray = starts
        .iter()
        .map(|s| {
            Some(match (s, closed) {
                (Some(s), Some(c)) => s + size <= c,
                _ => false,
            })
        })
        .collect();
    let done = filter_record_batch(&merged, &finished)?;
    let open = filter_record_batch(&merged, &arrow::compute::not(&finished)?)?;

    let rows = if done.num_rows() == 0 {
        Vec::new()
    } else {
        let last = parts.stage(AggregateMode::Final, vec![done], state_schema)?;
        let finish = replace_aggregate(plan, &last)?.expect("the plan has an aggregate");
        collect(finish, task).await?
    };
    Ok(Stepped {
        rows,
        late,
        state: WindowState {
            watermark,
            closed,
            open: (open.num_rows() > 0).then_some(open),
        },
    })
}

/// The state of open windows as an Arrow IPC stream (the lake's state folder keeps one per batch).
pub fn encode_state(batch: &RecordBatch) -> std::result::Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// Reads back what [`encode_state`] wrote.
pub fn decode_state(bytes: &[u8]) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    concat_batches(&schema, &batches)
}

/// `ts` µs as an Arrow timestamp value (for the `_late` table and status).
pub fn as_timestamp(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// The largest value of a timestamp column, µs.
pub fn max_time(column: &ArrayRef) -> Result<Option<i64>> {
    Ok(arrow::compute::max(&micros(column)?))
}

#[cfg(test)]
mod tests;
