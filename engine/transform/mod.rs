//! Transforms: every `.sql` file of the job's folder is one output table. Each micro-batch is the
//! table `events`; transforms run in dependency order and may read dimension tables and earlier
//! outputs. Only queries are allowed, and every plan is checked at start-up.

mod order;
mod utc_date;
pub mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::config::Dialect;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext, SessionState};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::job::{DimTable, Emit, Job, WindowSpec};
use window::WindowState;

/// The table each micro-batch is registered as.
pub const EVENTS: &str = "events";

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("{folder}: no .sql files; add one file per output table (e.g. sales.sql)")]
    NoTransforms { folder: String },
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "{file}: \"{name}\" is not a valid table name; name the file with letters, digits and '_'"
    )]
    BadName { file: String, name: String },
    #[error("{file}{at}: {message}")]
    Sql {
        file: String,
        at: String,
        message: String,
    },
    #[error("transforms read each other in a cycle: {cycle}; break the cycle")]
    Cycle { cycle: String },
    #[error("{job}: outputs.{table}: {message}")]
    Output {
        job: String,
        table: String,
        message: String,
    },
    #[error("dimension table {name} ({file}): {source}")]
    Dimension {
        name: String,
        file: String,
        source: DataFusionError,
    },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("{file}: running on batch: {source}")]
    Execute {
        file: String,
        source: DataFusionError,
    },
}

/// One transform file.
#[derive(Debug, Clone)]
pub struct Transform {
    /// Output table name (the file stem).
    pub name: String,
    pub file: PathBuf,
    pub sql: String,
    statement: Statement,
    /// Other transforms this one reads.
    pub deps: BTreeSet<String>,
}

/// The output of one transform for one batch.
#[derive(Debug, Clone)]
pub struct TableOutput {
    pub name: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Set for an update output run by [`Transforms::step`]: `batches` replace the rows of the
    /// keys the batch touched.
    pub update: Option<Update>,
}

/// What a batch of an update output replaces.
#[derive(Debug, Clone)]
pub struct Update {
    /// The output's key columns (one per GROUP BY key).
    pub keys: Vec<String>,
    /// Keys the batch touched that now have no row (HAVING, a join after the aggregate): their
    /// rows are deleted. Columns: `keys`.
    pub deleted: Option<RecordBatch>,
}

impl TableOutput {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A job's transforms, ordered and checked, with their session.
pub struct Transforms {
    ctx: SessionContext,
    events_schema: SchemaRef,
    /// In execution order.
    pub transforms: Vec<Transform>,
    /// Output schemas, in execution order.
    pub schemas: Vec<SchemaRef>,
    /// The job's models, callable as SQL functions.
    pub models: Vec<Arc<crate::model::Model>>,
    /// Window outputs: their window, and its column's position among the GROUP BY keys.
    windows: BTreeMap<String, (WindowSpec, usize)>,
    /// Update outputs: their key columns (one per GROUP BY key, in order).
    updates: BTreeMap<String, Vec<String>>,
    /// The events' time column (the watermark).
    time_column: Option<String>,
    /// Window and update outputs' state after the last batch [`Transforms::step`] ran (for an
    /// update output, `open` holds every key's state).
    state: Mutex<BTreeMap<String, WindowState>>,
    /// How window and update outputs are planned (the same tables; see [`incremental_session`]).
    incremental: Option<SessionState>,
    /// Whether [`Step::open`] is computed.
    open_rows: std::sync::atomic::AtomicBool,
}

/// One batch through the transforms, window outputs kept across batches.
pub struct Step {
    pub outputs: Vec<TableOutput>,
    /// Rows that came too late for their window, per window output.
    pub late: Vec<LateRows>,
    /// Every window and update output's state after this batch.
    pub windows: BTreeMap<String, WindowState>,
    /// With [`Transforms::keep_open_rows`], per window output, the rows its open windows would
    /// have now: provisional, for `weir run --serve` (never written).
    pub open: BTreeMap<String, Vec<RecordBatch>>,
}

/// Rows (as a window output's aggregate reads them) for windows already written.
pub struct LateRows {
    pub output: String,
    pub rows: RecordBatch,
    /// Each row's window start, µs.
    pub starts: Vec<Option<i64>>,
    /// The watermark before the batch, µs.
    pub watermark: Option<i64>,
}

impl Transforms {
    /// Loads the SQL files, dimension tables and plans everything against the declared schema.
    pub async fn load(job: &Job) -> Result<Self, TransformError> {
        let ctx = session();
        let shown = job.file.display().to_string();
        let models = crate::model::load_all(&shown, &job.models)?;
        crate::model::register(&ctx, &shown, &models)?;
        for dim in &job.tables {
            register_dimension(&ctx, dim).await?;
        }
        let events_schema = job.input.schema.table_schema();
        let loaded = read_folder(&job.transforms, &ctx)?;
        let dims: BTreeSet<String> = job.tables.iter().map(|t| t.name.clone()).collect();
        for t in &loaded {
            if t.name == EVENTS || dims.contains(&t.name) {
                return Err(TransformError::BadName {
                    file: t.file.display().to_string(),
                    name: format!("{} (already the name of an input table)", t.name),
                });
            }
        }
        let transforms = order::sort(loaded)?;
        let stateful = job.outputs.values().any(|o| o.stateful());
        let incremental = stateful.then(|| incremental_session(&ctx));
        let mut this = Self {
            ctx,
            incremental,
            open_rows: Default::default(),
            events_schema,
            transforms,
            schemas: Vec::new(),
            models,
            windows: BTreeMap::new(),
            updates: BTreeMap::new(),
            time_column: job.input.time_column.clone(),
            state: Mutex::default(),
        };
        this.schemas = this.check(job).await?;
        this.check_incremental(job).await?;
        Ok(this)
    }

    /// Checks that each window and update output's query can be kept incrementally (see
    /// `window::analyze` and `window::update_keys`).
    async fn check_incremental(&mut self, job: &Job) -> Result<(), TransformError> {
        let dims: BTreeSet<&str> = job.tables.iter().map(|d| d.name.as_str()).collect();
        for t in &self.transforms {
            let emit = job.output(&t.name).emit;
            let (mode, session) = match (&emit, &self.incremental) {
                (Emit::Window(_), Some(s)) => ("window", s),
                (Emit::Update, Some(s)) => ("update", s),
                _ => continue,
            };
            let plan = plan(session, t).await?;
            let refused = |message: String| TransformError::Sql {
                file: t.file.display().to_string(),
                at: String::new(),
                message: format!(
                    "outputs.{} has emit = \"{mode}\" in {}, but {message}",
                    t.name,
                    job.file.display()
                ),
            };
            // A transform reading an update output sees the rows its batch changed (a change
            // feed): an aggregate kept over it would count each key's total again every batch.
            if let Some(read) = t.deps.iter().find(|d| self.updates.contains_key(*d)) {
                return Err(refused(format!(
                    "it reads {read}, an update output: a transform reading it gets the rows each batch changed, so keeping an aggregate over them would count every change again; aggregate the events {read} is made of instead"
                )));
            }
            match emit {
                Emit::Window(spec) => {
                    let group = window::analyze(&plan, &spec.column, &dims).map_err(refused)?;
                    self.windows.insert(t.name.clone(), (spec, group));
                }
                Emit::Update => {
                    let keys = window::update_keys(&plan, &dims).map_err(refused)?;
                    self.updates.insert(t.name.clone(), keys);
                }
                Emit::Batch => {}
            }
        }
        Ok(())
    }

    /// Whether any output is a window output.
    pub fn has_windows(&self) -> bool {
        !self.windows.is_empty()
    }

    /// Whether any output keeps state across batches (window or update outputs).
    pub fn stateful(&self) -> bool {
        !self.windows.is_empty() || !self.updates.is_empty()
    }

    /// The key columns of an update output.
    pub fn update_keys(&self, output: &str) -> Option<&[String]> {
        self.updates.get(output).map(Vec::as_slice)
    }

    /// Whether a window output holds open windows (after the last batch transformed).
    pub fn has_open_windows(&self) -> bool {
        let state = self.state.lock().expect("window state");
        self.windows
            .keys()
            .any(|n| state.get(n).is_some_and(|s| s.groups() > 0))
    }

    /// Sets a window or update output's state (from the last commit, when a run starts).
    pub fn restore(&self, output: &str, state: WindowState) {
        // An output that no longer keeps state (or is gone) starts afresh if it comes back.
        if !self.windows.contains_key(output) && !self.updates.contains_key(output) {
            return;
        }
        self.state
            .lock()
            .expect("window state")
            .insert(output.to_string(), state);
    }

    /// Runs every transform on one batch, window outputs folding it into their state (one
    /// `step` at a time, in batch order). `flush`: the input has ended, finish every window.
    pub async fn step(
        &self,
        events: Vec<RecordBatch>,
        flush: bool,
    ) -> Result<Step, TransformError> {
        self.execute(events, Some(flush)).await
    }

    /// Plans every transform on an empty batch and checks each output's settings.
    async fn check(&self, job: &Job) -> Result<Vec<SchemaRef>, TransformError> {
        let outputs = self.run(Vec::new()).await?;
        let names: BTreeSet<&str> = self.transforms.iter().map(|t| t.name.as_str()).collect();
        for name in job.outputs.keys() {
            if !names.contains(name.as_str()) {
                return Err(TransformError::Output {
                    job: job.file.display().to_string(),
                    table: name.clone(),
                    message: format!(
                        "no transform {}/{name}.sql produces this table; transforms: {}",
                        job.transforms.display(),
                        names.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
        for out in &outputs {
            for col in job.output(&out.name).partition_by {
                if out.schema.field_with_name(&col).is_err() {
                    return Err(TransformError::Output {
                        job: job.file.display().to_string(),
                        table: out.name.clone(),
                        message: format!(
                            "partition column \"{col}\" is not a column of {name}.sql; it produces: {}",
                            out.schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            name = out.name
                        ),
                    });
                }
            }
        }
        Ok(outputs.into_iter().map(|o| o.schema).collect())
    }

    /// From now on, each step also gives every window output's open windows as they stand
    /// ([`Step::open`]).
    pub fn keep_open_rows(&self) {
        self.open_rows
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Window outputs and their schemas.
    pub fn window_outputs(&self) -> BTreeMap<String, SchemaRef> {
        self.transforms
            .iter()
            .zip(&self.schemas)
            .filter(|(t, _)| self.windows.contains_key(&t.name))
            .map(|(t, s)| (t.name.clone(), s.clone()))
            .collect()
    }

    /// Runs every transform on one batch alone, in dependency order: window outputs give every
    /// window of the batch as if the input ended with it (fixtures, checks).
    pub async fn run(&self, events: Vec<RecordBatch>) -> Result<Vec<TableOutput>, TransformError> {
        Ok(self.execute(events, None).await?.outputs)
    }

    /// Runs every transform on one batch; `windows`: keep window outputs' state (`Some(flush)`).
    async fn execute(
        &self,
        events: Vec<RecordBatch>,
        windows: Option<bool>,
    ) -> Result<Step, TransformError> {
        let max_time = match (&self.time_column, windows) {
            (Some(column), Some(_)) => self.max_time(&events, column)?,
            _ => None,
        };
        let no_events = events.iter().all(|b| b.num_rows() == 0);
        let mut states = self.state.lock().expect("window state").clone();
        let mut late = Vec::new();
        let mut open = BTreeMap::new();
        self.replace_table(EVENTS, self.events_schema.clone(), events)
            .map_err(|source| TransformError::Execute {
                file: EVENTS.into(),
                source,
            })?;
        let mut outputs: Vec<TableOutput> = Vec::with_capacity(self.transforms.len());
        for (i, t) in self.transforms.iter().enumerate() {
            // Planned at start-up (`check`, which keeps no window state, runs before they are).
            let planned = || self.schemas[i].clone();
            let window = windows.and_then(|flush| Some((flush, self.windows.get(&t.name)?)));
            let update = windows.and_then(|_| self.updates.get(&t.name));
            // A batch that only finishes windows (the end of the input) has no events: the
            // per-batch outputs run only on what window outputs wrote (a global aggregate of
            // `events` would write an extra row of zeros).
            let idle = no_events
                && windows.is_some()
                && window.is_none()
                && !outputs
                    .iter()
                    .any(|o| t.deps.contains(&o.name) && o.rows() > 0);
            // An update output's batch that touched nothing (idle) changes nothing.
            let mut changed = update.map(|keys| Update {
                keys: keys.clone(),
                deleted: None,
            });
            let (schema, batches) = if idle {
                (planned(), Vec::new())
            } else if let Some((flush, (spec, group))) = window {
                let (batches, open_rows) = self
                    .step_window(t, spec, *group, &mut states, &mut late, max_time, flush)
                    .await?;
                if self.open_rows.load(std::sync::atomic::Ordering::Relaxed) {
                    open.insert(t.name.clone(), open_rows);
                }
                (planned(), batches)
            } else if let (Some(keys), Some(changed)) = (update, changed.as_mut()) {
                let (batches, deleted) = self.step_update(t, keys, &planned(), &mut states).await?;
                changed.deleted = deleted;
                (planned(), batches)
            } else {
                self.query(t).await?
            };
            self.replace_table(&t.name, schema.clone(), batches.clone())
                .map_err(|source| TransformError::Execute {
                    file: t.file.display().to_string(),
                    source,
                })?;
            outputs.push(TableOutput {
                name: t.name.clone(),
                schema,
                batches,
                update: changed,
            });
        }
        // The batch and its outputs are only read within this run: free them now, not when the
        // next batch replaces them (the session would otherwise hold a second batch).
        let tables = std::iter::once((EVENTS, &self.events_schema))
            .chain(outputs.iter().map(|o| (o.name.as_str(), &o.schema)));
        for (name, schema) in tables {
            self.replace_table(name, schema.clone(), Vec::new())
                .map_err(|source| TransformError::Execute {
                    file: name.into(),
                    source,
                })?;
        }
        if windows.is_some() {
            *self.state.lock().expect("window state") = states.clone();
        }
        Ok(Step {
            outputs,
            late,
            windows: states,
            open,
        })
    }

    /// The largest value of the time column in `events`, µs.
    fn max_time(
        &self,
        events: &[RecordBatch],
        column: &str,
    ) -> Result<Option<i64>, TransformError> {
        let mut max = None;
        for b in events {
            let Some(c) = b.column_by_name(column) else {
                continue;
            };
            let m = window::max_time(c).map_err(|source| TransformError::Execute {
                file: EVENTS.into(),
                source,
            })?;
            max = max.max(m);
        }
        Ok(max)
    }

    /// Runs one transform as a plain query on the tables registered now.
    async fn query(&self, t: &Transform) -> Result<(SchemaRef, Vec<RecordBatch>), TransformError> {
        let plan = plan(&self.ctx.state(), t).await?;
        let df = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| sql_error(&t.file, &t.sql, e))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df
            .collect()
            .await
            .map_err(|source| TransformError::Execute {
                file: t.file.display().to_string(),
                source,
            })?;
        Ok((schema, batches))
    }

    /// One batch of a window output, planned in the window session.
    #[allow(clippy::too_many_arguments)]
    async fn step_window(
        &self,
        t: &Transform,
        spec: &WindowSpec,
        group: usize,
        states: &mut BTreeMap<String, WindowState>,
        late: &mut Vec<LateRows>,
        max_time: Option<i64>,
        flush: bool,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), TransformError> {
        let failed = |source| TransformError::Execute {
            file: t.file.display().to_string(),
            source,
        };
        let (plan, session) = self.incremental_plan(t).await?;
        let before = states.remove(&t.name).unwrap_or_default();
        let stepped = window::step(
            &plan,
            session.task_ctx(),
            spec,
            group,
            &before,
            max_time,
            flush,
            self.open_rows.load(std::sync::atomic::Ordering::Relaxed),
        )
        .await
        .map_err(failed)?;
        for (rows, starts) in stepped.late {
            late.push(LateRows {
                output: t.name.clone(),
                rows,
                starts,
                watermark: before.watermark,
            });
        }
        states.insert(t.name.clone(), stepped.state);
        Ok((stepped.rows, stepped.open_rows))
    }

    /// A window or update output's physical plan on the tables registered now, in the
    /// incremental session (see [`incremental_session`]).
    async fn incremental_plan(
        &self,
        t: &Transform,
    ) -> Result<
        (
            Arc<dyn datafusion::physical_plan::ExecutionPlan>,
            &SessionState,
        ),
        TransformError,
    > {
        let session = self.incremental.as_ref().expect("an incremental session");
        let logical = plan(session, t).await?;
        let physical = session
            .create_physical_plan(&logical)
            .await
            .map_err(|source| TransformError::Execute {
                file: t.file.display().to_string(),
                source,
            })?;
        Ok((physical, session))
    }

    /// One batch of an update output, planned in the incremental session: the rows of the keys
    /// it touched, and those of its touched keys that have no row any more.
    async fn step_update(
        &self,
        t: &Transform,
        keys: &[String],
        schema: &SchemaRef,
        states: &mut BTreeMap<String, WindowState>,
    ) -> Result<(Vec<RecordBatch>, Option<RecordBatch>), TransformError> {
        let failed = |source| TransformError::Execute {
            file: t.file.display().to_string(),
            source,
        };
        let (plan, session) = self.incremental_plan(t).await?;
        let before = states.remove(&t.name).unwrap_or_default();
        let updated = window::step_update(&plan, session.task_ctx(), before.open.as_ref())
            .await
            .map_err(failed)?;
        states.insert(
            t.name.clone(),
            WindowState {
                open: updated.state,
                ..WindowState::default()
            },
        );
        let deleted = match updated.touched {
            Some(touched) => window::gone_keys(&touched, keys, schema, &updated.rows)
                .map_err(|e| failed(e.into()))?,
            None => None,
        };
        Ok((updated.rows, deleted))
    }

    fn replace_table(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<(), DataFusionError> {
        let table = MemTable::try_new(schema, vec![batches])?;
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }
}

/// A transform's logical plan in `state`, checked read-only.
async fn plan(state: &SessionState, t: &Transform) -> Result<LogicalPlan, TransformError> {
    state
        .statement_to_plan(t.statement.clone())
        .await
        .and_then(|plan| read_only().verify_plan(&plan).map(|_| plan))
        .map_err(|e| sql_error(&t.file, &t.sql, e))
}

/// The session window and update outputs are planned in: the same tables, one partition (so the
/// aggregate is one stage whose GROUP BY keys keep the order of the query, and nothing above it
/// expects hash partitions), and two rewrites off: count(DISTINCT x) stays one aggregate (its
/// state is the set of values) instead of two stacked ones, and constant GROUP BY keys stay keys.
fn incremental_session(ctx: &SessionContext) -> SessionState {
    let base = ctx.state();
    let rules: Vec<_> = base
        .optimizers()
        .iter()
        .filter(|r| {
            !matches!(
                r.name(),
                "single_distinct_aggregation_to_group_by" | "eliminate_group_by_constant"
            )
        })
        .cloned()
        .collect();
    let mut state = SessionStateBuilder::new_from_existing(base)
        .with_optimizer_rules(rules)
        .build();
    state.config_mut().options_mut().execution.target_partitions = 1;
    state
}

/// A session for transforms: SQL spans on (for error positions), no URL tables, and half the
/// cores for a query's partitions: a micro-batch is transformed while the one before is encoded
/// (on every core) and the next is decoded, so more partitions only add repartitioning (on 2
/// cores, one partition took 2% fewer instructions off the land-every-event job); and the day of
/// a UTC timestamp computed by division ([`utc_date`]).
fn session() -> SessionContext {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions((cores / 2).max(1));
    config.options_mut().sql_parser.collect_spans = true;
    let ctx = SessionContext::new_with_config(config);
    ctx.add_optimizer_rule(Arc::new(utc_date::UtcDate));
    ctx
}

/// Transforms may only query: no DDL, DML (COPY, INSERT) or SET.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

async fn register_dimension(ctx: &SessionContext, dim: &DimTable) -> Result<(), TransformError> {
    let err = |source| TransformError::Dimension {
        name: dim.name.clone(),
        file: dim.path.display().to_string(),
        source,
    };
    let path = dim.path.display().to_string();
    let df = match dim.format.as_str() {
        "csv" => ctx.read_csv(&path, CsvReadOptions::new()).await,
        "json" => {
            let ext = dim
                .path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("json")
                .to_string();
            ctx.read_json(
                &path,
                JsonReadOptions::default().file_extension(&format!(".{ext}")),
            )
            .await
        }
        _ => ctx.read_parquet(&path, ParquetReadOptions::default()).await,
    }
    .map_err(err)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(err)?;
    let table = MemTable::try_new(schema, vec![batches]).map_err(err)?;
    ctx.register_table(dim.name.as_str(), Arc::new(table))
        .map_err(err)?;
    Ok(())
}

/// Reads and parses every `.sql` file of `folder`, refusing anything but a single query.
fn read_folder(folder: &Path, ctx: &SessionContext) -> Result<Vec<Transform>, TransformError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|source| TransformError::Read {
            file: folder.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TransformError::NoTransforms {
            folder: folder.display().to_string(),
        });
    }
    let state = ctx.state();
    let dialect = Dialect::default();
    let mut out = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let sql = std::fs::read_to_string(&file).map_err(|source| TransformError::Read {
            file: shown.clone(),
            source,
        })?;
        let name = file
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(TransformError::BadName { file: shown, name });
        }
        let statement = state
            .sql_to_statement(&sql, &dialect)
            .map_err(|e| sql_error(&file, &sql, e))?;
        let is_query =
            matches!(&statement, Statement::Statement(s) if matches!(**s, SqlStatement::Query(_)));
        if !is_query {
            return Err(TransformError::Sql {
                file: shown,
                at: String::new(),
                message: "a transform must be a single SELECT (or WITH ... SELECT) query; DDL, DML, COPY and SET are not allowed".into(),
            });
        }
        let deps = state
            .resolve_table_references(&statement)
            .map_err(|e| sql_error(&file, &sql, e))?
            .into_iter()
            .map(|r| r.table().to_string())
            .collect();
        out.push(Transform {
            name,
            file,
            sql,
            statement,
            deps,
        });
    }
    Ok(out)
}

/// A DataFusion error as a user message with file, line and column when known.
fn sql_error(file: &Path, sql: &str, e: DataFusionError) -> TransformError {
    let mut at = String::new();
    let mut message = e.strip_backtrace();
    if let Some(d) = e.diagnostic() {
        if let Some(span) = d.span {
            at = format!(":{}:{}", span.start.line, span.start.column);
            if let Some(line) = sql.lines().nth(span.start.line.saturating_sub(1) as usize) {
                let caret = " ".repeat(span.start.column.saturating_sub(1) as usize);
                message = format!("{message}\n  | {line}\n  | {caret}^");
            }
        }
        for help in &d.helps {
            message.push_str(&format!("\n  help: {}", help.message));
        }
    } else if let Some(i) = message.find("at Line: ") {
        // sqlparser errors carry "at Line: L, Column: C".
        let rest = &message[i + "at Line: ".len()..];
        let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let col: String = rest
            .split("Column: ")
            .nth(1)
            .map(|c| c.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_default();
        at = format!(":{line}:{col}");
    }
    if at.is_empty()
        && let Some((line, col)) = function_call(&message, sql)
    {
        // Argument errors of a function (a model's, say) carry no position: point at the call.
        at = format!(":{line}:{col}");
        if let Some(text) = sql.lines().nth(line - 1) {
            message = format!("{message}\n  | {text}\n  | {}^", " ".repeat(col - 1));
        }
    }
    if message.contains("table") && message.contains("not found") {
        message.push_str(
            "\n  hint: transforms can read `events`, the job's [tables], and other transforms by file name",
        );
    }
    TransformError::Sql {
        file: file.display().to_string(),
        at,
        message,
    }
}

/// Where the function a message names ("Function 'f' ...") is first called in `sql` outside a
/// `--` comment, as 1-based line and column (in characters).
fn function_call(message: &str, sql: &str) -> Option<(usize, usize)> {
    let name = message.split("Function '").nth(1)?.split('\'').next()?;
    if name.is_empty() {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    sql.lines().enumerate().find_map(|(i, line)| {
        let code = line.split("--").next().unwrap_or_default();
        let text = code.to_ascii_lowercase();
        let mut from = 0;
        while let Some(at) = text[from..].find(&lower) {
            let start = from + at;
            let before = text[..start].chars().next_back();
            let after = text[start + lower.len()..].trim_start();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"' || c == '\'')
                && after.starts_with('(')
            {
                return Some((i + 1, code[..start].chars().count() + 1));
            }
            from = start + lower.len();
        }
        None
    })
}

#[cfg(test)]
mod tests;
