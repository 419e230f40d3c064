//! SQL over a lake: every top-level folder holding a Delta table is a table, read through its
//! current snapshot (deltalake's DataFusion provider), so a query sees whole batches only.
//!
//! [`LiveLake`] is the lake as a DataFusion schema whose tables move to their newest Delta version
//! on [`LiveLake::refresh`]: `weir query` refreshes it once, `weir serve` before every query.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::datasource::TableProvider;
use datafusion::error::DataFusionError;
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
    /// When its newest version was committed (ms since the epoch).
    committed_ms: Option<i64>,
}

/// The lake's tables as a DataFusion schema (`public` in `weir serve`), each at the Delta version
/// of the last [`LiveLake::refresh`].
pub struct LiveLake {
    location: Location,
    tables: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
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
            tables: RwLock::default(),
            extra: RwLock::default(),
            state: tokio::sync::Mutex::default(),
            newest_commit_ms: RwLock::default(),
        }
    }

    pub fn url(&self) -> &url::Url {
        &self.location.url
    }

    /// Moves every table to its newest Delta version and picks up new tables. Callers that ask
    /// while another refresh runs share the next one that starts after they asked, so a
    /// dashboard's panels refreshing at once list the lake once.
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
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename().map(str::to_string) else {
                continue;
            };
            if !Layout::is_table(&name) {
                continue;
            }
            let delta_err = |source| QueryError::Delta {
                table: name.clone(),
                source,
            };
            let prev = live.remove(&name);
            let before = prev.as_ref().and_then(|l| l.delta.version());
            let prev_ms = prev.as_ref().and_then(|l| l.committed_ms);
            let delta = match prev {
                Some(l) => {
                    let mut t = l.delta;
                    t.update_incremental(None).await.map_err(delta_err)?;
                    t
                }
                None => match delta::open(&self.location, &name)
                    .await
                    .map_err(delta_err)?
                {
                    Some(t) => {
                        t.update_datafusion_session(session).map_err(delta_err)?;
                        t
                    }
                    None => continue,
                },
            };
            let version = delta.version();
            let cached = self.tables.read().expect("lock").get(&name).cloned();
            let (provider, committed_ms) = match cached {
                Some(p) if before.is_some() && before == version => (p, prev_ms),
                _ => {
                    let provider: Arc<dyn TableProvider> =
                        delta.table_provider().await.map_err(QueryError::Sql)?;
                    let at = version.and_then(|v| delta.snapshot().ok()?.version_timestamp(v));
                    (provider, at)
                }
            };
            self.tables
                .write()
                .expect("lock")
                .insert(name.clone(), provider);
            live.insert(
                name,
                Live {
                    delta,
                    committed_ms,
                },
            );
        }
        *self.newest_commit_ms.write().expect("lock") =
            live.values().filter_map(|l| l.committed_ms).max();
        Ok(())
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
        Ok(self
            .get(name)
            .or_else(|| self.extra.read().expect("lock").get(name).cloned()))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.read().expect("lock").contains_key(name)
            || self.extra.read().expect("lock").contains_key(name)
    }
}

/// A session whose default schema (`datafusion.public`) is the live lake, with the
/// information_schema on for SQL tools.
pub fn live_session(lake: Arc<LiveLake>) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new().with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
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
    let ctx = live_session(live.clone())?;
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
