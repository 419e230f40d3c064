//! SQL over a lake: every top-level folder holding a Delta table is a table, read through its
//! current snapshot (deltalake's DataFusion provider), so a query sees whole batches only.

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

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

/// A session with every table of the lake registered; returns it and the table names.
pub async fn lake_session(lake: &str) -> Result<(SessionContext, Vec<String>), QueryError> {
    let location = Location::parse(lake)?;
    let listing = location
        .store
        .list_with_delimiter(Some(&location.root))
        .await?;
    let ctx = SessionContext::new();
    let mut tables = Vec::new();
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
        let Some(table) = delta::open(&location, &name).await.map_err(delta_err)? else {
            continue;
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(delta_err)?;
        let provider = table.table_provider().await.map_err(QueryError::Sql)?;
        ctx.register_table(name.as_str(), provider)
            .map_err(QueryError::Sql)?;
        tables.push(name);
    }
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
