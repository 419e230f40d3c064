//! Commit log in the lake itself: `<lake>/_weir/<job>/plans/<batch>.json` and
//! `.../commits/<batch>.json`, written with `PutMode::Create`.

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{BatchPlan, CommitError, CommitRecord, CommitStore, Recovered};

/// The commit log of one job, beside its lake.
pub struct ObjectCommitStore {
    store: Arc<dyn ObjectStore>,
    job: String,
    plans: Path,
    commits: Path,
}

impl ObjectCommitStore {
    /// `state` is the job's state folder, e.g. `<lake>/_weir/<job>`.
    pub fn new(store: Arc<dyn ObjectStore>, state: Path, job: &str) -> Self {
        Self {
            store,
            job: job.to_string(),
            plans: state.clone().join("plans"),
            commits: state.join("commits"),
        }
    }

    fn name(batch: u64) -> String {
        format!("{batch:020}.json")
    }

    /// Batch numbers present in a folder, ascending.
    /// The batch ids in `folder` after `after`, ascending (listed from that offset on).
    async fn batches(&self, folder: &Path, after: u64) -> Result<Vec<u64>, CommitError> {
        let offset = folder.clone().join(Self::name(after));
        let mut ids: Vec<u64> = self
            .store
            .list_with_offset(Some(folder), &offset)
            .map_ok(|m| {
                m.location
                    .filename()
                    .and_then(|f| f.strip_suffix(".json"))
                    .and_then(|n| n.parse().ok())
            })
            .try_collect::<Vec<_>>()
            .await
            .map_err(|source| CommitError::Store {
                path: folder.to_string(),
                source,
            })?
            .into_iter()
            .flatten()
            .filter(|&b| b > after)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn read<T: DeserializeOwned>(&self, path: Path) -> Result<T, CommitError> {
        let store_err = |source| CommitError::Store {
            path: path.to_string(),
            source,
        };
        let bytes = self
            .store
            .get(&path)
            .await
            .map_err(store_err)?
            .bytes()
            .await
            .map_err(store_err)?;
        serde_json::from_slice(&bytes).map_err(|source| CommitError::Corrupt {
            path: path.to_string(),
            source,
        })
    }

    async fn create<T: Serialize>(
        &self,
        path: Path,
        value: &T,
        batch: u64,
        what: &'static str,
    ) -> Result<(), CommitError> {
        let body = serde_json::to_vec_pretty(value).expect("commit records serialize");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(CommitError::Conflict {
                job: self.job.clone(),
                batch,
                what,
            }),
            Err(source) => Err(CommitError::Store {
                path: path.to_string(),
                source,
            }),
        }
    }
}

#[async_trait]
impl CommitStore for ObjectCommitStore {
    async fn recover(&self) -> Result<Recovered, CommitError> {
        let last = match self.batches(&self.commits, 0).await?.last() {
            Some(&b) => Some(
                self.read::<CommitRecord>(self.commits.clone().join(Self::name(b)))
                    .await?,
            ),
            None => None,
        };
        let after = last.as_ref().map_or(0, |c| c.batch);
        let pending = match self.batches(&self.plans, after).await?.first() {
            Some(&b) => Some(
                self.read::<BatchPlan>(self.plans.clone().join(Self::name(b)))
                    .await?,
            ),
            None => None,
        };
        Ok(Recovered { last, pending })
    }

    async fn plan(&self, plan: &BatchPlan) -> Result<(), CommitError> {
        self.create(
            self.plans.clone().join(Self::name(plan.batch)),
            plan,
            plan.batch,
            "planned",
        )
        .await
    }

    async fn commit(&self, record: &CommitRecord) -> Result<(), CommitError> {
        self.create(
            self.commits.clone().join(Self::name(record.batch)),
            record,
            record.batch,
            "committed",
        )
        .await
    }

    async fn commits_after(&self, after: u64) -> Result<Vec<CommitRecord>, CommitError> {
        let ids = self.batches(&self.commits, after).await?;
        let mut out = Vec::new();
        for b in ids {
            out.push(self.read(self.commits.clone().join(Self::name(b))).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Position, ShardRange};
    use object_store::local::LocalFileSystem;

    #[tokio::test]
    async fn plan_commit_recover_and_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let log = ObjectCommitStore::new(store, Path::from("_weir/j"), "j");
        assert!(log.recover().await.unwrap().last.is_none());
        let range = [(
            "f".to_string(),
            ShardRange {
                first: Position::Line(1),
                last: Position::Line(9),
            },
        )]
        .into();
        let plan = BatchPlan {
            job: "j".into(),
            batch: 1,
            range,
            planned_at: chrono::Utc::now(),
        };
        log.plan(&plan).await.unwrap();
        let r = log.recover().await.unwrap();
        assert_eq!(r.pending.as_ref(), Some(&plan));
        assert!(matches!(
            log.plan(&plan).await,
            Err(CommitError::Conflict { .. })
        ));
        let record = CommitRecord {
            job: "j".into(),
            batch: 1,
            range: plan.range.clone(),
            checkpoint: [("f".to_string(), Position::Line(9))].into(),
            records: 9,
            dead_letters: 0,
            rows: Default::default(),
            files: vec![],
            committed_at: chrono::Utc::now(),
        };
        log.commit(&record).await.unwrap();
        let err = log.commit(&record).await.unwrap_err().to_string();
        assert!(err.contains("another writer"), "{err}");
        let r = log.recover().await.unwrap();
        assert_eq!(r.last, Some(record));
        assert!(r.pending.is_none());
    }
}
