//! SQL over a lake: every top-level folder (Hive-partitioned Parquet) is a table; `_weir` is not.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use object_store::ObjectStore;
use url::Url;

use crate::sink::lake::STATE;
use crate::storage::{self, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("listing the lake: {0}")]
    Store(#[from] object_store::Error),
    #[error("{0}")]
    Sql(DataFusionError),
    #[error("the lake {0} holds no tables yet; run a job first (weir run jobs/<job>.toml)")]
    Empty(String),
}

/// A session with every table of the lake registered; returns it and the table names.
pub async fn lake_session(lake: &str) -> Result<(SessionContext, Vec<String>), QueryError> {
    let (store, root) = storage::parse(lake)?;
    let listing = store.list_with_delimiter(Some(&root)).await?;
    let ctx = SessionContext::new();
    let base = if lake.contains("://") && !lake.starts_with("file://") {
        let url = Url::parse(lake).map_err(|e| StorageError::Invalid {
            location: lake.into(),
            message: e.to_string(),
        })?;
        let bucket = Url::parse(&format!(
            "{}://{}",
            url.scheme(),
            url.host_str().unwrap_or_default()
        ))
        .expect("bucket url");
        ctx.register_object_store(&bucket, store.clone() as Arc<dyn ObjectStore>);
        lake.trim_end_matches('/').to_string()
    } else {
        std::path::absolute(lake.strip_prefix("file://").unwrap_or(lake))
            .map_err(|e| StorageError::Invalid {
                location: lake.into(),
                message: e.to_string(),
            })?
            .display()
            .to_string()
    };
    let mut tables = Vec::new();
    for prefix in listing.common_prefixes {
        let Some(name) = prefix.filename().map(str::to_string) else {
            continue;
        };
        if name == STATE {
            continue;
        }
        ctx.register_parquet(
            name.as_str(),
            format!("{base}/{name}/"),
            ParquetReadOptions::default(),
        )
        .await
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
