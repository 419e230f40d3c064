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
use arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
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
    /// With `provisional`: the rows the still open windows would have now (never written).
    pub open_rows: Vec<RecordBatch>,
}

/// Checks that `plan` (as written, before optimisation) can be kept incrementally: one aggregate,
/// nothing above it that needs every row (window functions, LIMIT), and only `dims` (the job's
/// dimension tables) read above it, since that part runs on the aggregate's result rather than on
/// each batch. `mode` names the output's emit mode in messages; returns the reason and the fix.
pub fn check_incremental(
    plan: &LogicalPlan,
    mode: &str,
    dims: &std::collections::BTreeSet<&str>,
) -> std::result::Result<(), String> {
    let (unit, fill) = match mode {
        "window" => ("per window", "as windows fill"),
        _ => ("per key", "as keys are updated"),
    };
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
                    refused.get_or_insert(format!(
                        "GROUPING SETS, ROLLUP and CUBE cannot be kept {unit}; write one output per grouping"
                    ));
                }
            }
            LogicalPlan::Distinct(_) => aggregates += 1,
            LogicalPlan::Window(_) => {
                refused.get_or_insert(
                    "window functions (... OVER (...)) cannot be kept incrementally; compute them when reading the table (a view, or `weir query`), or use emit = \"batch\"".into(),
                );
            }
            LogicalPlan::Limit(_) => {
                refused.get_or_insert(format!(
                    "LIMIT cannot be kept incrementally (the rows it keeps change {fill}); drop it and limit when reading the table"
                ));
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
        0 if mode == "window" => {
            return Err(
                "emit = \"window\" needs an aggregate query (GROUP BY minute, ...) with its window column a window start such as date_trunc('minute', event_time); this query has no aggregate: use emit = \"batch\" to write its rows as they come".into(),
            );
        }
        0 => {
            return Err(
                "emit = \"update\" needs an aggregate query (SELECT key, sum(x) ... GROUP BY key): it keeps one row per GROUP BY key; this query has no aggregate: use emit = \"batch\" to write its rows as they come".into(),
            );
        }
        1 => {}
        _ => {
            return Err(format!(
                "two aggregates stacked (an aggregate of an aggregate, DISTINCT over GROUP BY, or a UNION of aggregates) cannot be kept incrementally; keep the inner aggregate as its own {mode} output and aggregate it when reading"
            ));
        }
    }
    if let Some(table) = read_above_aggregate(plan)
        .into_iter()
        .find(|t| !dims.contains(t.as_str()))
    {
        let when = match mode {
            "window" => "when a window is finished",
            _ => "on the updated keys",
        };
        return Err(format!(
            "it reads {table} after its aggregate: that part runs {when}, not on each batch's events, so only the job's [tables] (dimension tables) may be joined there; join {table} before the GROUP BY, or make this output emit = \"batch\""
        ));
    }
    Ok(())
}

/// Checks that `plan` can be kept as a window output on `column` (see [`check_incremental`]);
/// returns the position of `column` among the GROUP BY keys, or the reason and the fix.
pub fn analyze(
    plan: &LogicalPlan,
    column: &str,
    dims: &std::collections::BTreeSet<&str>,
) -> std::result::Result<usize, String> {
    check_incremental(plan, "window", dims)?;
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

/// Checks that `plan` can be kept as an update output (see [`check_incremental`]) and returns
/// its key: for each GROUP BY key in order, the output column holding it. Every key must be
/// selected as it is, since the output keeps one row per key and replaces it by key.
pub fn update_keys(
    plan: &LogicalPlan,
    dims: &std::collections::BTreeSet<&str>,
) -> std::result::Result<Vec<String>, String> {
    check_incremental(plan, "update", dims)?;
    let mut group_by: Option<Vec<String>> = None;
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(a) = node {
            group_by = Some(a.group_expr.iter().map(|e| e.to_string()).collect());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.strip_backtrace())?;
    let Some(group_by) = group_by else {
        return Err(
            "SELECT DISTINCT has no aggregate to keep per key; write it as SELECT a, b, count(*) AS n ... GROUP BY a, b".into(),
        );
    };
    let schema = plan.schema();
    let mut keys: Vec<Option<String>> = vec![None; group_by.len()];
    for at in 0..schema.fields().len() {
        let (qualifier, field) = schema.qualified_field(at);
        let col = Column::new(qualifier.cloned(), field.name());
        if let Ok(i) = group_index(plan, &col, field.name()) {
            keys[i].get_or_insert_with(|| field.name().clone());
        }
    }
    keys.into_iter()
        .zip(&group_by)
        .map(|(k, expr)| {
            k.ok_or_else(|| {
                format!(
                    "the GROUP BY key {expr} is not one of its columns: an update output keeps one row per GROUP BY key and replaces it by that key, so select every key as it is (SELECT {expr} AS name, ...)"
                )
            })
        })
        .collect()
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

impl Parts {
    /// The accumulator state's schema: the GROUP BY keys, then each aggregate's state.
    fn state_schema(&self) -> Result<SchemaRef> {
        Ok(self
            .stage(AggregateMode::Partial, Vec::new(), self.input.schema())?
            .schema())
    }

    /// `rows` (what the aggregate reads) as accumulator state, empty batches dropped.
    async fn partial(
        &self,
        rows: Vec<RecordBatch>,
        task: Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        if rows.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        let stage = self.stage(AggregateMode::Partial, rows, self.input.schema())?;
        let out = collect(stage, task).await?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// The saved state `old` with a batch's `partial` state folded in (`PartialReduce`, always
    /// when the batch brought rows: the partial stage may pass rows through unaggregated, as
    /// DataFusion skips partial aggregation of nearly unique keys). A saved state of other
    /// columns means the SQL changed: `kept` names what the state is, `advice` what to do.
    async fn fold(
        &self,
        old: Option<&RecordBatch>,
        partial: Vec<RecordBatch>,
        task: Arc<TaskContext>,
        kept: &str,
        advice: &str,
    ) -> Result<RecordBatch> {
        let schema = self.state_schema()?;
        let mut held = Vec::with_capacity(partial.len() + 1);
        if let Some(old) = old {
            if old.schema().fields() != schema.fields() {
                return Err(DataFusionError::Plan(format!(
                    "{kept} has other columns than this query's aggregate ({} against {}). {advice}, or give the changed query a new output name (a new table, starting with no state)",
                    old.schema(),
                    schema
                )));
            }
            held.push(old.clone());
        }
        let merged = if partial.is_empty() {
            held
        } else {
            held.extend(partial);
            let stage = self.stage(AggregateMode::PartialReduce, held, schema.clone())?;
            collect(stage, task).await?
        };
        Ok(concat_batches(&schema, &merged)?)
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
    provisional: bool,
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
    let partial = parts.partial(on_time, task.clone()).await?;
    let merged = parts
        .fold(
            state.open.as_ref(),
            partial,
            task.clone(),
            "the SQL changed while windows were open: the saved state of the open windows",
            "Put the old SQL back and let its windows close (a file run closes them all at its end)",
        )
        .await?;

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

    // Final on a copy of the state: Final consumes nothing, the open windows go on.
    let finish = async |groups: RecordBatch| -> Result<Vec<RecordBatch>> {
        if groups.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let last = parts.stage(AggregateMode::Final, vec![groups], merged.schema())?;
        let finish = replace_aggregate(plan, &last)?.expect("the plan has an aggregate");
        collect(finish, task.clone()).await
    };
    let rows = finish(done).await?;
    let open_rows = if provisional {
        finish(open.clone()).await?
    } else {
        Vec::new()
    };
    Ok(Stepped {
        rows,
        late,
        open_rows,
        state: WindowState {
            watermark,
            closed,
            open: (open.num_rows() > 0).then_some(open),
        },
    })
}

/// One batch of an update output.
pub struct Updated {
    /// The output's rows for the keys this batch touched (after HAVING and the plan above the
    /// aggregate: a touched key may have none).
    pub rows: Vec<RecordBatch>,
    /// The GROUP BY keys this batch touched (their columns, in GROUP BY order).
    pub touched: Option<RecordBatch>,
    /// The accumulator state of every key: the GROUP BY keys, then each aggregate's state.
    pub state: Option<RecordBatch>,
}

/// Runs one batch of an update output: the batch's `Partial` state is folded into every key's
/// state (`PartialReduce`), and the keys the batch touched are finished (`Final` and the plan
/// above the aggregate) from their whole state: their rows replace the earlier ones.
pub async fn step_update(
    plan: &Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    state: Option<&RecordBatch>,
) -> Result<Updated> {
    let parts = Parts::of(plan)?;
    let input = collect(parts.input.clone(), task.clone()).await?;
    let partial = parts.partial(input, task.clone()).await?;
    if partial.is_empty() {
        return Ok(Updated {
            rows: Vec::new(),
            touched: None,
            state: state.cloned(),
        });
    }
    let state_schema = parts.state_schema()?;
    let keys = parts.group_by.expr().len();
    // The keys this batch touched, as rows (any partial batch may hold any key).
    let converter = RowConverter::new(
        state_schema.fields()[..keys]
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    let mut touched_keys = std::collections::HashSet::new();
    for b in &partial {
        let rows = converter.convert_columns(&b.columns()[..keys])?;
        touched_keys.extend(rows.iter().map(|r| r.owned()));
    }
    let merged = parts
        .fold(
            state,
            partial,
            task.clone(),
            "the SQL changed: the saved state of this update output",
            "Put the old SQL back",
        )
        .await?;
    let is_touched: BooleanArray = if keys == 0 {
        BooleanArray::from(vec![true; merged.num_rows()])
    } else {
        let rows = converter.convert_columns(&merged.columns()[..keys])?;
        rows.iter()
            .map(|r| Some(touched_keys.contains(&r.owned())))
            .collect()
    };
    let done = filter_record_batch(&merged, &is_touched)?;
    let touched = done.project(&(0..keys).collect::<Vec<_>>())?;
    let last = parts.stage(AggregateMode::Final, vec![done], state_schema)?;
    let finish = replace_aggregate(plan, &last)?.expect("the plan has an aggregate");
    let rows = collect(finish, task).await?;
    Ok(Updated {
        rows,
        touched: Some(touched),
        state: Some(merged),
    })
}

/// Of the `touched` keys (GROUP BY columns in order), those no row of `rows` holds any more, as
/// a batch of the output's `keys` columns (typed as in `schema`); `None` when every one has a row.
pub fn gone_keys(
    touched: &RecordBatch,
    keys: &[String],
    schema: &SchemaRef,
    rows: &[RecordBatch],
) -> std::result::Result<Option<RecordBatch>, arrow::error::ArrowError> {
    use arrow::datatypes::{Field, Schema};
    let fields: Vec<Field> = keys
        .iter()
        .map(|k| Ok(schema.field_with_name(k)?.clone().with_nullable(true)))
        .collect::<std::result::Result<_, arrow::error::ArrowError>>()?;
    let key_schema = Arc::new(Schema::new(fields));
    let present: usize = rows.iter().map(RecordBatch::num_rows).sum();
    if keys.is_empty() {
        // A global aggregate: its one row is gone when HAVING (or a join) leaves none.
        let gone = touched.num_rows() > 0 && present == 0;
        return Ok(gone.then(|| {
            RecordBatch::try_new_with_options(
                key_schema,
                Vec::new(),
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
            )
            .expect("an empty key")
        }));
    }
    let columns: Vec<ArrayRef> = touched
        .columns()
        .iter()
        .zip(key_schema.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<std::result::Result<_, _>>()?;
    let converter = RowConverter::new(
        key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    let mut held = std::collections::HashSet::new();
    for b in rows {
        let cols: Vec<ArrayRef> = keys
            .iter()
            .zip(key_schema.fields())
            .map(|(k, f)| {
                let c = b.column_by_name(k).expect("an output column");
                cast(c, f.data_type())
            })
            .collect::<std::result::Result<_, _>>()?;
        let converted = converter.convert_columns(&cols)?;
        for (i, row) in converted.iter().enumerate() {
            if !held.insert(row.owned()) {
                let key = RecordBatch::try_new(key_schema.clone(), cols.clone())?.slice(i, 1);
                let shown = arrow::util::pretty::pretty_format_batches(&[key])
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                return Err(arrow::error::ArrowError::InvalidArgumentError(format!(
                    "an update output keeps one row per key ({}), but the query gave two for\n{shown}\na join after the aggregate repeats the key (a dimension table with the key twice, or an outer join keeping the dimension's side): join on the dimension's unique key, or use an inner join",
                    keys.join(", ")
                )));
            }
        }
    }
    let probe = converter.convert_columns(&columns)?;
    let gone: BooleanArray = probe
        .iter()
        .map(|r| Some(!held.contains(&r.owned())))
        .collect();
    if gone.true_count() == 0 {
        return Ok(None);
    }
    let all = RecordBatch::try_new(key_schema, columns)?;
    Ok(Some(filter_record_batch(&all, &gone)?))
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
