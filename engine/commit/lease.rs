//! One writer per job and lake: a lease in the lake, taken at start and kept alive by a heartbeat.
//! Each holder writes its own generation `_weir/<job>/lease/<generation>.json`, created with a
//! conditional create, so of two processes taking an expired or released lease only one wins; the
//! holder overwrites only its own generation (the heartbeat), and it has lost the lease as soon as
//! a later generation exists (checked before every commit). Works on every object store, local
//! folders included, with nothing but conditional creates.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// A lease not renewed for this long is expired: another run may take it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "job \"{job}\" on this lake is being written by {owner} (since {since}, last heartbeat {ago}s ago). Only one `weir run` of a job may write to a lake: stop that one first; if it crashed, its lease expires {ttl}s after its last heartbeat, then run again"
    )]
    Held {
        job: String,
        owner: String,
        since: DateTime<Utc>,
        ago: i64,
        ttl: u64,
    },
    #[error(
        "job \"{job}\": this run lost its writer lease to {owner}; it stops without committing (the other run goes on)"
    )]
    Lost { job: String, owner: String },
    #[error("writer lease {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error(
        "shard {shard}: this worker ({worker}) lost its lease to another worker; its writer stops without committing (the new owner resumes at the last committed position)"
    )]
    ShardLost { shard: String, worker: String },
    #[error("shard {shard}'s lease: {message}")]
    ShardLease { shard: String, message: String },
}

/// What entitles a writer to commit: the job's lease in the lake (`weir run`), or a leased
/// worker's shard lease (`source.leases`). Checked in the commit path, before the tables.
#[async_trait::async_trait]
pub trait WriterLease: Send + Sync {
    /// Fails once the lease is lost.
    async fn check(&self) -> Result<(), LeaseError>;
    /// Keeps the lease until it is lost (returned as the error).
    async fn keep(self: Arc<Self>) -> LeaseError;
    /// Told of each batch committed under the lease, with the checkpoint after it.
    async fn committed(&self, _checkpoint: &crate::source::Checkpoint) -> Result<(), LeaseError> {
        Ok(())
    }
    /// Gives the lease up at the end of the run.
    async fn release(&self);
    /// What the commit record names as the lease it was committed under (shard leases).
    fn mark(&self) -> Option<super::LeaseMark> {
        None
    }
}

#[async_trait::async_trait]
impl WriterLease for Lease {
    async fn check(&self) -> Result<(), LeaseError> {
        Lease::check(self).await
    }

    async fn keep(self: Arc<Self>) -> LeaseError {
        Lease::keep(self, DEFAULT_LEASE_TTL).await
    }

    async fn release(&self) {
        Lease::release(self).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    owner: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
    generation: u64,
    acquired_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    released: bool,
}

/// The lease this run holds.
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    job: String,
    record: Record,
}

impl Lease {
    /// Takes the lease of `job`, or says who holds it.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        dir: Path,
        job: &str,
        ttl: Duration,
    ) -> Result<Arc<Self>, LeaseError> {
        let latest = latest(&store, &dir).await?;
        let now = Utc::now();
        if let Some(held) = &latest {
            let age = now - held.heartbeat_at;
            // A holder on this machine whose process is gone (kill -9) needs no waiting.
            let dead = held.host == host() && held.pid != 0 && !process_alive(held.pid);
            if !held.released && !dead && age < chrono::Duration::from_std(ttl).unwrap_or_default()
            {
                return Err(LeaseError::Held {
                    job: job.to_string(),
                    owner: held.owner.clone(),
                    since: held.acquired_at,
                    ago: age.num_seconds(),
                    ttl: ttl.as_secs(),
                });
            }
            if !held.released {
                tracing::warn!(owner = %held.owner, "taking over the expired writer lease of a run that stopped without releasing it");
            }
        }
        let record = Record {
            owner: format!("{} (pid {})", host(), std::process::id()),
            host: host(),
            pid: std::process::id(),
            generation: latest.as_ref().map_or(1, |r| r.generation + 1),
            acquired_at: now,
            heartbeat_at: now,
            released: false,
        };
        let lease = Self {
            store,
            dir,
            job: job.to_string(),
            record,
        };
        let path = lease.path(lease.record.generation);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match lease.store.put_opts(&path, lease.body(), opts).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                let winner = latest_owner(&lease.store, &lease.dir).await;
                return Err(LeaseError::Held {
                    job: job.to_string(),
                    owner: winner,
                    since: now,
                    ago: 0,
                    ttl: ttl.as_secs(),
                });
            }
            Err(source) => return Err(lease.store_err(&path)(source)),
        }
        // Earlier generations are history: remove them (best effort).
        for g in 1..lease.record.generation {
            let _ = lease.store.delete(&lease.path(g)).await;
        }
        Ok(Arc::new(lease))
    }

    fn path(&self, generation: u64) -> Path {
        self.dir.clone().join(format!("{generation:020}.json"))
    }

    fn body(&self) -> PutPayload {
        PutPayload::from(serde_json::to_vec_pretty(&self.record).expect("lease serializes"))
    }

    fn store_err(&self, path: &Path) -> impl Fn(object_store::Error) -> LeaseError {
        let path = path.to_string();
        move |source| LeaseError::Store {
            path: path.clone(),
            source,
        }
    }

    /// Fails once a later generation exists: another run took the lease.
    pub async fn check(&self) -> Result<(), LeaseError> {
        let next = self.path(self.record.generation + 1);
        match self.store.head(&next).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Ok(_) => Err(LeaseError::Lost {
                job: self.job.clone(),
                owner: latest_owner(&self.store, &self.dir).await,
            }),
            Err(source) => Err(self.store_err(&next)(source)),
        }
    }

    /// Renews the lease (after checking it is still ours).
    pub async fn heartbeat(&self) -> Result<(), LeaseError> {
        self.check().await?;
        let mut record = self.record.clone();
        record.heartbeat_at = Utc::now();
        let path = self.path(record.generation);
        let body = PutPayload::from(serde_json::to_vec_pretty(&record).expect("lease serializes"));
        self.store
            .put(&path, body)
            .await
            .map_err(self.store_err(&path))?;
        Ok(())
    }

    /// Renews the lease every third of `ttl` until it is lost (returned as the error).
    pub async fn keep(self: Arc<Self>, ttl: Duration) -> LeaseError {
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0;
        loop {
            tick.tick().await;
            match self.heartbeat().await {
                Ok(()) => failures = 0,
                Err(e @ LeaseError::Lost { .. }) => return e,
                Err(e) => {
                    failures += 1;
                    tracing::warn!("renewing the writer lease failed ({failures}): {e}");
                }
            }
        }
    }

    /// Gives the lease up so the next run need not wait for it to expire.
    pub async fn release(&self) {
        if self.check().await.is_err() {
            return;
        }
        let mut record = self.record.clone();
        record.released = true;
        record.heartbeat_at = Utc::now();
        let body = PutPayload::from(serde_json::to_vec_pretty(&record).expect("lease serializes"));
        if let Err(e) = self.store.put(&self.path(record.generation), body).await {
            tracing::warn!("releasing the writer lease: {e}");
        }
    }
}

/// The newest generation's record, if any.
async fn latest(store: &Arc<dyn ObjectStore>, dir: &Path) -> Result<Option<Record>, LeaseError> {
    let err = |source| LeaseError::Store {
        path: dir.to_string(),
        source,
    };
    let newest = store
        .list(Some(dir))
        .try_collect::<Vec<_>>()
        .await
        .map_err(err)?
        .into_iter()
        .map(|m| m.location)
        .max_by(|a, b| a.as_ref().cmp(b.as_ref()));
    let Some(path) = newest else {
        return Ok(None);
    };
    let bytes = store
        .get(&path)
        .await
        .map_err(err)?
        .bytes()
        .await
        .map_err(err)?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Ok(Some(r)),
        // A record torn by a crash mid-write: treat it as expired, keeping its generation.
        Err(_) => Ok(Some(Record {
            owner: "an unknown run".into(),
            host: String::new(),
            pid: 0,
            generation: path
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            acquired_at: DateTime::<Utc>::MIN_UTC,
            heartbeat_at: DateTime::<Utc>::MIN_UTC,
            released: true,
        })),
    }
}

async fn latest_owner(store: &Arc<dyn ObjectStore>, dir: &Path) -> String {
    match latest(store, dir).await {
        Ok(Some(r)) => r.owner,
        _ => "another run".into(),
    }
}

/// This machine's host name.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether a process of this machine still runs (Linux: `/proc/<pid>`; elsewhere assumed alive).
fn process_alive(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    #[tokio::test]
    async fn one_holder_then_release_then_take_over() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let at = Path::from("_weir/j/lease");
        let ttl = Duration::from_secs(30);
        let first = Lease::acquire(store.clone(), at.clone(), "j", ttl)
            .await
            .unwrap();
        let err = Lease::acquire(store.clone(), at.clone(), "j", ttl)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("being written by") && err.contains("pid"),
            "{err}"
        );
        first.heartbeat().await.unwrap();
        first.release().await;
        let second = Lease::acquire(store.clone(), at.clone(), "j", ttl)
            .await
            .unwrap();
        assert!(matches!(first.check().await, Err(LeaseError::Lost { .. })));
        second.check().await.unwrap();
        // An expired lease (ttl 0) is taken over.
        let third = Lease::acquire(store, at, "j", Duration::ZERO)
            .await
            .unwrap();
        assert!(second.check().await.is_err());
        third.check().await.unwrap();
    }
}
