//! Sinks: where a batch's outputs go. The lake (Delta tables of Parquet files through
//! object_store) is written, and each table committed, before Weir's commit record; warehouse
//! loaders follow behind (`load`).

pub mod lake;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::decode::DeadLetter;
use crate::transform::TableOutput;
use lake::dead_letters::DeadLetterKey;

/// The outputs of one batch.
pub struct BatchOutput<'a> {
    pub job: &'a str,
    pub batch: u64,
    pub tables: &'a [TableOutput],
    pub dead_letters: &'a [DeadLetter],
    /// A replay batch's dead letters, run through the job again (`_replayed` rows).
    pub replayed: &'a [DeadLetterKey],
    /// Rows that came after their window was written (`_late` rows).
    pub late: &'a [crate::transform::LateRows],
    /// A replay after a crash: tables may already hold the batch.
    pub replay: bool,
}

/// A file written for a batch, as recorded in its commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    pub table: String,
    /// Path relative to the lake root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Set for an update output's file: its rows replace those with the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<Upsert>,
}

/// How an update output's file replaces rows in a warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Upsert {
    /// One batch's changes: each row replaces the row with its `keys`, and a row whose
    /// [`DELETED`] column is true deletes it (its other columns are null).
    Changes {
        keys: Vec<String>,
        /// The keys that are NULL in some row of the file: only they need a NULL-safe match
        /// (which rules out a hash join in the warehouses).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        null_keys: Vec<String>,
    },
    /// The table's whole contents (a new destination's backfill): they replace every row.
    Contents,
}

/// The column of a change file marking a key whose row is deleted.
pub const DELETED: &str = "_weir_deleted";

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
    #[error(transparent)]
    Delta(#[from] lake::delta::DeltaError),
    #[error(transparent)]
    Lease(#[from] crate::commit::lease::LeaseError),
    #[error("lake identity {path}: {message}")]
    Identity { path: String, message: String },
}

/// Writes a batch's outputs and makes them visible, each table at once. Writing a batch again
/// (a replay) must never add it twice: tables that already hold it are skipped, and their files
/// of that batch returned as they are.
#[async_trait]
pub trait Sink: Send + Sync {
    async fn write(&self, batch: &BatchOutput<'_>) -> Result<Vec<WrittenFile>, SinkError>;
}
