//! SQL over a lake: every top-level folder holding a Delta table is a table, read through its
//! current snapshot (deltalake's DataFusion provider), so a query sees whole batches only.
//!
//! [`LiveLake`] is the lake as a DataFusion schema whose tables move to their newest Delta version
//! on [`LiveLake::refresh`]: `weir query` refreshes it once, `weir serve` before every query.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{ScanArgs, ScanResult, SchemaProvider, Session};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;

use crate::sink::lake::Layout;
use crate::sink::lake::delta;
use crate::storage::{Location, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("listing the lake: {0}")]
    Store(#[from] object_store::Error),
    #[error("reading Delta table {table}: {source}")]
    Delta {
        table: String,
        source: deltalake::DeltaTableError,
    },
    #[error("{0}")]
    Sql(DataFusionError),
    #[error("the lake {0} holds no tables yet; run a job first (weir run jobs/<job>.toml)")]
    Empty(String),
}

/// One table as last refreshed.
struct Live {
    delta: DeltaTable,
    provider: Arc<dyn TableProvider>,
    /// When its newest version was committed (ms since the epoch).
    committed_ms: Option<i64>,
}

/// The providers of the lake's tables at their last refreshed versions, by name.
type Providers = Arc<RwLock<BTreeMap<String, Arc<dyn TableProvider>>>>;

/// The lake's tables as a DataFusion schema (`public` in `weir serve`), each at the Delta version
/// of the last [`LiveLake::refresh`]. A plan holds [`LiveTable`]s, which resolve to the version
/// current when it runs: a prepared statement run again reads the newest snapshot.
pub struct LiveLake {
    location: Location,
    tables: Providers,
    /// Tables that are not in the lake (a running job's open windows), by name.
    extra: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
    /// Serialises refreshes; holds the Delta tables and when the last refresh started.
    state: tokio::sync::Mutex<(BTreeMap<String, Live>, Option<Instant>)>,
    newest_commit_ms: RwLock<Option<i64>>,
}

impl std::fmt::Debug for LiveLake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveLake({})", self.location.url)
    }
}

impl LiveLake {
    pub fn new(location: Location) -> Self {
        Self {
            location,
            tables: Providers::default(),
            extra: RwLock::default(),
            state: tokio::sync::Mutex::default(),
            newest_commit_ms: RwLock::default(),
        }
    }

    pub fn url(&self) -> &url::Url {
        &self.location.url
    }

    /// Moves every table to its newest Delta version and picks up new tables; every table moves
    /// at once, when all are read. Callers that ask while another refresh runs share the next one
    /// that starts after they asked, so a dashboard's panels refreshing at once list the lake
    /// once. A table that cannot be read now stays as it was (a warning); only a lake that
    /// cannot be listed is an error.
    pub async fn refresh(&self, session: &dyn Session) -> Result<(), QueryError> {
        let asked = Instant::now();
        let mut guard = self.state.lock().await;
        let (live, last) = &mut *guard;
        if last.is_some_and(|t| t >= asked) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let listing = self
            .location
            .store
            .list_with_delimiter(Some(&self.location.root))
            .await?;
        let mut next = self.tables.read().expect("lock").clone();
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename().map(str::to_string) else {
                continue;
            };
            if !Layout::is_table(&name) {
                continue;
            }
            match self.refresh_one(live, &name, session).await {
                Ok(Some(provider)) => {
                    next.insert(name, provider);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}; queries read {name} as it was"),
            }
        }
        *self.tables.write().expect("lock") = next;
        *self.newest_commit_ms.write().expect("lock") =
            live.values().filter_map(|l| l.committed_ms).max();
        Ok(())
    }

    /// One table at its newest version (`None`: not a Delta table yet).
    async fn refresh_one(
        &self,
        live: &mut BTreeMap<String, Live>,
        name: &str,
        session: &dyn Session,
    ) -> Result<Option<Arc<dyn TableProvider>>, QueryError> {
        let delta_err = |source| QueryError::Delta {
            table: name.to_string(),
            source,
        };
        let committed = |t: &DeltaTable| {
            t.version()
                .and_then(|v| t.snapshot().ok()?.version_timestamp(v))
        };
        if let Some(l) = live.get_mut(name) {
            let before = l.delta.version();
            l.delta.update_incremental(None).await.map_err(delta_err)?;
            if l.delta.version() != before {
                l.provider = l.delta.table_provider().await.map_err(QueryError::Sql)?;
                l.committed_ms = committed(&l.delta);
            }
            return Ok(Some(l.provider.clone()));
        }
        let Some(delta) = delta::open(&self.location, name).await.map_err(delta_err)? else {
            return Ok(None);
        };
        delta
            .update_datafusion_session(session)
            .map_err(delta_err)?;
        let provider: Arc<dyn TableProvider> =
            delta.table_provider().await.map_err(QueryError::Sql)?;
        let committed_ms = committed(&delta);
        live.insert(
            name.to_string(),
            Live {
                delta,
                provider: provider.clone(),
                committed_ms,
            },
        );
        Ok(Some(provider))
    }

    /// When the newest commit of any table was made (ms since the epoch), as of the last refresh.
    pub fn newest_commit_ms(&self) -> Option<i64> {
        *self.newest_commit_ms.read().expect("lock")
    }

    /// The tables' names as of the last refresh, and the extra tables'.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables.read().expect("lock").keys().cloned().collect();
        names.extend(self.extra.read().expect("lock").keys().cloned());
        names
    }

    /// Adds or replaces a table that is not in the lake.
    pub fn put(&self, name: &str, table: Arc<dyn TableProvider>) {
        self.extra
            .write()
            .expect("lock")
            .insert(name.to_string(), table);
    }

    /// A lake table's provider as of the last refresh.
    pub fn get(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.tables.read().expect("lock").get(name).cloned()
    }
}

#[async_trait]
impl SchemaProvider for LiveLake {
    fn table_names(&self) -> Vec<String> {
        self.names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if let Some(current) = self.get(name) {
            return Ok(Some(Arc::new(LiveTable {
                name: name.to_string(),
                schema: current.schema(),
                table_type: current.table_type(),
                tables: self.tables.clone(),
            })));
        }
        Ok(self.extra.read().expect("lock").get(name).cloned())
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.read().expect("lock").contains_key(name)
            || self.extra.read().expect("lock").contains_key(name)
    }
}

/// A lake table in a plan: its provider is looked up when the plan runs, so a plan made before a
/// refresh (a prepared statement) reads the version current when it runs. Read-only: it takes no
/// inserts.
#[derive(Debug)]
pub struct LiveTable {
    name: String,
    schema: SchemaRef,
    table_type: TableType,
    tables: Providers,
}

impl LiveTable {
    fn current(&self) -> Result<Arc<dyn TableProvider>, DataFusionError> {
        let current = self
            .tables
            .read()
            .expect("lock")
            .get(&self.name)
            .cloned()
            .ok_or_else(|| DataFusionError::Plan(format!("table {} is gone", self.name)))?;
        if current.schema() != self.schema {
            return Err(DataFusionError::Plan(format!(
                "table {} has new columns since this statement was planned: prepare it again",
                self.name
            )));
        }
        Ok(current)
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.table_type
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        self.current()?.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        self.current()?
            .scan(state, projection, filters, limit)
            .await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult, DataFusionError> {
        self.current()?.scan_with_args(state, args).await
    }
}

/// A session whose default schema (`datafusion.public`) is the live lake, with the
/// information_schema on for SQL tools.
/// With `memory`, its queries together are held to that many bytes (sorts and aggregates spill
/// to disk, the rest fail with "Resources exhausted").
pub fn live_session(
    lake: Arc<LiveLake>,
    memory: Option<usize>,
) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new().with_information_schema(true);
    let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    if let Some(bytes) = memory {
        runtime = runtime.with_memory_pool(Arc::new(
            datafusion::execution::memory_pool::FairSpillPool::new(bytes),
        ));
    }
    let runtime = runtime.build_arc().map_err(QueryError::Sql)?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let catalog = ctx
        .catalog("datafusion")
        .expect("DataFusion's default catalog");
    catalog
        .register_schema("public", lake)
        .map_err(QueryError::Sql)?;
    Ok(ctx)
}

/// A session with every table of the lake registered; returns it and the table names.
pub async fn lake_session(lake: &str) -> Result<(SessionContext, Vec<String>), QueryError> {
    let live = Arc::new(LiveLake::new(Location::parse(lake)?));
    let ctx = live_session(live.clone(), None)?;
    live.refresh(&ctx.state()).await?;
    let tables = live.names();
    if tables.is_empty() {
        return Err(QueryError::Empty(lake.to_string()));
    }
    Ok((ctx, tables))
}

/// Runs one query over the lake.
pub async fn query(lake: &str, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let (ctx, _) = lake_session(lake).await?;
    let df = ctx.sql(sql).await.map_err(QueryError::Sql)?;
    df.collect().await.map_err(QueryError::Sql)
}
