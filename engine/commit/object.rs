//! Commit log in the lake itself: `<lake>/_weir/<job>/plans/<batch>.json` and
//! `.../commits/<batch>.json`, written with `PutMode::Create`, and `latest.json`, the newest
//! commit's batch, so that a start reads the log from there instead of listing its history.
//! Entries older than the retention and loaded everywhere are trimmed.

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
    latest: Path,
    manifests: Path,
    windows: Path,
    changes: Path,
}

/// The newest commit's batch (a hint: the log itself is the truth).
#[derive(Debug, Serialize, serde::Deserialize)]
struct Latest {
    batch: u64,
}

impl ObjectCommitStore {
    /// `state` is the job's state folder, e.g. `<lake>/_weir/<job>`.
    pub fn new(store: Arc<dyn ObjectStore>, state: Path, job: &str) -> Self {
        Self {
            store,
            job: job.to_string(),
            plans: state.clone().join("plans"),
            commits: state.clone().join("commits"),
            latest: state.clone().join("latest.json"),
            manifests: state.clone().join("manifests"),
            windows: state.clone().join("windows"),
            changes: state.join("changes"),
        }
    }

    /// Writes a window output's open state after `batch` (Arrow IPC) under a new name; returns
    /// it relative to the job's state folder, for the commit record. Each attempt writes its own
    /// file, so a writer that lost its lease cannot change the state a commit names.
    pub async fn put_window(
        &self,
        batch: u64,
        output: &str,
        bytes: Vec<u8>,
    ) -> Result<String, CommitError> {
        let attempt = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("{batch:020}-{output}-{attempt}.arrow");
        let path = self.windows.clone().join(name.as_str());
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| CommitError::Store {
                path: path.to_string(),
                source,
            })?;
        Ok(format!("windows/{name}"))
    }

    /// Reads a window state written by [`Self::put_window`].
    pub async fn get_window(&self, name: &str) -> Result<bytes::Bytes, CommitError> {
        let file = name.strip_prefix("windows/").unwrap_or(name);
        let path = self.windows.clone().join(file);
        let read = async { self.store.get(&path).await?.bytes().await };
        read.await.map_err(|source| CommitError::Store {
            path: path.to_string(),
            source,
        })
    }

    /// Deletes plans, commits, manifests, window states and update outputs' change files of
    /// batches before `before` that are older than
    /// `retention`. Lists those folders: call it rarely (the pipeline does hourly).
    pub async fn trim(
        &self,
        before: u64,
        retention: std::time::Duration,
    ) -> Result<u64, CommitError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let mut deleted = 0;
        for folder in [
            &self.plans,
            &self.commits,
            &self.manifests,
            &self.windows,
            &self.changes,
        ] {
            let old: Vec<Path> = self
                .store
                .list(Some(folder))
                .try_filter(|m| {
                    let batch = m
                        .location
                        .filename()
                        .and_then(|f| f.get(..20))
                        .and_then(|b| b.parse::<u64>().ok());
                    futures::future::ready(
                        batch.is_some_and(|b| b < before) && m.last_modified < cutoff,
                    )
                })
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(|source| CommitError::Store {
                    path: folder.to_string(),
                    source,
                })?;
            for p in old {
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(source) => {
                        return Err(CommitError::Store {
                            path: p.to_string(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Where to start reading the commit log: just before the newest commit the hint names.
    async fn start(&self) -> Result<u64, CommitError> {
        match self.read::<Latest>(self.latest.clone()).await {
            Ok(l) => Ok(l.batch.saturating_sub(1)),
            Err(CommitError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            })
            | Err(CommitError::Corrupt { .. }) => Ok(0),
            Err(e) => Err(e),
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
        let from = self.start().await?;
        let last = match self.batches(&self.commits, from).await?.last() {
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
        .await?;
        let body = serde_json::to_vec(&Latest {
            batch: record.batch,
        })
        .expect("hint serializes");
        self.store
            .put(&self.latest, PutPayload::from(body))
            .await
            .map_err(|source| CommitError::Store {
                path: self.latest.to_string(),
                source,
            })?;
        Ok(())
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
            dead_letters: Vec::new(),
            flush: false,
            micro_batches: Vec::new(),
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
            backfill: false,
            windows: Default::default(),
            lease: None,
        };
        log.commit(&record).await.unwrap();
        let err = log.commit(&record).await.unwrap_err().to_string();
        assert!(err.contains("another writer"), "{err}");
        let r = log.recover().await.unwrap();
        assert_eq!(r.last, Some(record));
        assert!(r.pending.is_none());
    }
}
