//! Sinks: where a batch's outputs go. The lake (Parquet through object_store) is written before a
//! batch commits; warehouse loaders plug in behind the same seam.

pub mod lake;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::decode::DeadLetter;
use crate::transform::TableOutput;

/// The outputs of one batch.
pub struct BatchOutput<'a> {
    pub job: &'a str,
    pub batch: u64,
    pub tables: &'a [TableOutput],
    pub dead_letters: &'a [DeadLetter],
}

/// A file written for a batch, as recorded in its commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    pub table: String,
    /// Path relative to the lake root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing {path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("lake {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("table {table}: {source}")]
    Arrow {
        table: String,
        source: arrow::error::ArrowError,
    },
}

/// Writes a batch's outputs. Writing the same batch again must replace, never add.
#[async_trait]
pub trait Sink: Send + Sync {
    async fn write(&self, batch: &BatchOutput<'_>) -> Result<Vec<WrittenFile>, SinkError>;
    /// Removes whatever an interrupted attempt at `batch` left, before it is replayed.
    async fn discard(&self, job: &str, batch: u64, tables: &[String]) -> Result<(), SinkError>;
}
