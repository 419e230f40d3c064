//! Batches a destination gave up on after `[targets.X.loads] attempts` failures while it answered
//! (a rejected file, a constraint, a permission): `_weir/<job>/parked/<destination>/<batch>.json`,
//! each holding the error and the whole commit record, so that `weir loads retry` can load it
//! again later (exactly once, through the destination's own ledger or job ids) and `weir loads
//! skip` can give it up, recorded under `skipped/`. Their files stay: compaction waits for the
//! lowest parked batch.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::commit::CommitRecord;

/// One parked (or skipped) batch of one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub destination: String,
    pub batch: u64,
    /// The last error.
    pub error: String,
    pub attempts: u32,
    pub parked_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_at: Option<DateTime<Utc>>,
    /// What to load again.
    pub record: CommitRecord,
}

/// The parked and skipped batches of one job.
#[derive(Clone)]
pub struct ParkedStore {
    store: Arc<dyn ObjectStore>,
    state: Path,
}

const PARKED: &str = "parked";
const SKIPPED: &str = "skipped";

impl ParkedStore {
    pub fn new(store: Arc<dyn ObjectStore>, state: Path) -> Self {
        Self { store, state }
    }

    fn path(&self, folder: &str, destination: &str, record: &CommitRecord) -> Path {
        // A backfill is not a batch; its record carries the batch it goes up to.
        let suffix = if record.backfill { "-snapshot" } else { "" };
        self.state
            .clone()
            .join(folder)
            .join(destination)
            .join(format!("{:020}{suffix}.json", record.batch))
    }

    pub async fn park(&self, p: &Parked) -> Result<(), object_store::Error> {
        let body = serde_json::to_vec_pretty(p).expect("parked batch serializes");
        self.store
            .put(
                &self.path(PARKED, &p.destination, &p.record),
                PutPayload::from(body),
            )
            .await
            .map(|_| ())
    }

    /// The parked batches of `destination`, oldest first.
    pub async fn parked(&self, destination: &str) -> Result<Vec<Parked>, String> {
        self.list(PARKED, destination).await
    }

    /// The batches of `destination` given up with `weir loads skip`, oldest first.
    pub async fn skipped(&self, destination: &str) -> Result<Vec<Parked>, String> {
        self.list(SKIPPED, destination).await
    }

    async fn list(&self, folder: &str, destination: &str) -> Result<Vec<Parked>, String> {
        let dir = self.state.clone().join(folder).join(destination);
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| format!("listing {dir}: {e}"))?;
        let mut out = Vec::new();
        for meta in metas {
            let bytes = match self.store.get(&meta.location).await {
                Ok(r) => r.bytes().await.map_err(|e| e.to_string())?,
                // Retried or skipped meanwhile.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(format!("{}: {e}", meta.location)),
            };
            out.push(serde_json::from_slice::<Parked>(&bytes).map_err(|e| {
                format!(
                    "{} is corrupt ({e}); delete it to forget that batch",
                    meta.location
                )
            })?);
        }
        out.sort_by_key(|p| (p.batch, !p.record.backfill));
        Ok(out)
    }

    /// `destination` loaded `record` after all: it is parked no more.
    pub async fn forget(
        &self,
        destination: &str,
        record: &CommitRecord,
    ) -> Result<(), object_store::Error> {
        match self
            .store
            .delete(&self.path(PARKED, destination, record))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives a parked batch up on purpose: recorded under `skipped/`, then no longer parked.
    pub async fn skip(&self, p: &Parked) -> Result<(), object_store::Error> {
        let skipped = Parked {
            skipped_at: Some(Utc::now()),
            ..p.clone()
        };
        let body = serde_json::to_vec_pretty(&skipped).expect("parked batch serializes");
        self.store
            .put(
                &self.path(SKIPPED, &p.destination, &p.record),
                PutPayload::from(body),
            )
            .await?;
        self.forget(&p.destination, &p.record).await
    }
}
