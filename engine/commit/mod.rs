//! The commit protocol (DESIGN.md "Delivery"): a batch's source range is logged before any output
//! is written, and its commit record is a conditional create, so two writers cannot both commit it.
//! A planned but uncommitted batch is replayed over exactly its range on restart.

pub mod lease;
mod object;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use object::ObjectCommitStore;

use crate::sink::WrittenFile;
use crate::sink::lake::dead_letters::DeadLetterKey;
use crate::source::{BatchRange, Checkpoint};

/// Step 1 of a batch: what it will read, recorded before anything is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPlan {
    pub job: String,
    pub batch: u64,
    pub range: BatchRange,
    pub planned_at: DateTime<Utc>,
    /// A replay batch (`weir replay`): exactly the dead letters it runs through the job again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<DeadLetterKey>,
    /// The input ended here: window outputs finish every open window (a replay does too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flush: bool,
    /// A batch of several micro-batches (a file run): each one's range, in order, so that a
    /// replay cuts them exactly where the first attempt did (windows and per-batch aggregates
    /// depend on it), whatever the batch settings are now. Empty: one micro-batch, `range`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub micro_batches: Vec<BatchRange>,
}

/// Step 4 of a batch: what it wrote, and the checkpoint after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub job: String,
    pub batch: u64,
    pub range: BatchRange,
    /// Per shard, the last position consumed by this and every earlier batch.
    pub checkpoint: Checkpoint,
    pub records: u64,
    pub dead_letters: u64,
    /// Rows written per output table.
    pub rows: BTreeMap<String, u64>,
    pub files: Vec<WrittenFile>,
    pub committed_at: DateTime<Utc>,
    /// Not a batch but the tables' contents up to it, loaded once into a destination that is new
    /// to the lake (never written to the commit log).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
    /// Per window output, its watermark and open windows after this batch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub windows: BTreeMap<String, WindowMark>,
    /// The shard lease the batch was committed under (a leased worker's shard writer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseMark>,
}

/// Who held a shard's lease when a batch was committed, and its counter as checked just before
/// the tables' commits: along a shard writer's batches the counter only ever grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseMark {
    pub owner: String,
    pub counter: u64,
}

/// A window or update output's state after a batch, as its commit records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowMark {
    /// The largest event time seen (µs since the epoch).
    pub watermark: Option<i64>,
    /// Windows ending at or before this (µs) are written; rows for them are late.
    pub closed: Option<i64>,
    /// Groups (window and key) held open.
    pub groups: u64,
    /// Their accumulator state, relative to the job's state folder (none when nothing is open).
    pub state: Option<String>,
    /// Late rows so far.
    #[serde(default)]
    pub late: u64,
    /// The state is an update output's (every key), not a window output's (open windows).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub update: bool,
}

/// What a restarting run finds.
#[derive(Debug, Default)]
pub struct Recovered {
    pub last: Option<CommitRecord>,
    /// A batch planned after the last commit: to be replayed over exactly its range.
    pub pending: Option<BatchPlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(
        "batch {batch} of job {job} was {what} by another writer; only one `weir run` of a job may write to a lake at a time"
    )]
    Conflict {
        job: String,
        batch: u64,
        what: &'static str,
    },
    #[error("commit log {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("commit log {path} is corrupt: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

/// Where plans and commits are kept.
#[async_trait]
pub trait CommitStore: Send + Sync {
    /// The last commit and any batch planned after it.
    async fn recover(&self) -> Result<Recovered, CommitError>;
    /// Records a plan; fails if the batch was already planned.
    async fn plan(&self, plan: &BatchPlan) -> Result<(), CommitError>;
    /// Records a commit; fails if the batch was already committed.
    async fn commit(&self, record: &CommitRecord) -> Result<(), CommitError>;
    /// The commits of batches after `after`, oldest first.
    async fn commits_after(&self, after: u64) -> Result<Vec<CommitRecord>, CommitError>;
    /// Every commit, oldest first.
    async fn commits(&self) -> Result<Vec<CommitRecord>, CommitError> {
        self.commits_after(0).await
    }
}
