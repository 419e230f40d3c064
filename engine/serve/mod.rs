//! `weir serve` and `weir run --serve`: the lake, live, to people and BI tools.
//!
//! - [`http`]: dashboards in the browser (`/`, `/d/NAME`), their data (`/api/d/NAME`), one-off
//!   read-only queries (`/api/query`), a server-sent event on every commit (`/api/events`), and
//!   `/metrics` inside a run.
//! - [`pg`]: a read-only PostgreSQL-protocol endpoint over the same tables (datafusion-postgres on
//!   pgwire, with its `pg_catalog`), for psql, Grafana, Metabase, Tableau.
//!
//! Both read one [`LiveLake`]: every query first moves the tables to their newest Delta version,
//! so it sees whole batches, as of when it started. Loopback needs no password; any other address
//! needs [`PASSWORD_ENV`].

pub mod dashboards;
mod http;
mod pg;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, TimeZone, Utc};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::commit::CommitRecord;
use crate::job::Job;
use crate::pipeline::Committed;
use crate::query::{LiveLake, QueryError, live_session};
use crate::storage::Location;
use crate::transform::Transforms;
use dashboards::{DashboardError, Dashboards};

/// What the queries of `weir serve` may hold in memory together (beyond it sorts and
/// aggregates spill to disk, other queries fail), so that a big query cannot take down a running
/// job serving its dashboards.
pub const QUERY_MEMORY: usize = 1 << 30;

/// How long an HTTP query (a panel, `/api/query` as JSON) may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable holding the password `weir serve` asks for on a non-loopback address
/// (HTTP basic or bearer, PostgreSQL password).
pub const PASSWORD_ENV: &str = "WEIR_SERVE_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Dashboard(#[from] DashboardError),
    #[error(
        "{what} on {addr} is reachable from other machines, so it needs a password: set {PASSWORD_ENV} (HTTP takes it as basic auth with any user, or as a bearer token; PostgreSQL as the password of any user), or bind 127.0.0.1"
    )]
    NeedsPassword {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot listen on {addr}: {source} (is another server there? choose another port)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Transforms(crate::transform::TransformError),
}

/// What to serve, where.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub lake: String,
    /// The job whose commit log tells freshness and whose saved window state gives the open
    /// windows (`weir serve JOB`); `None` reads Delta versions.
    pub job: Option<Job>,
    pub http: Option<SocketAddr>,
    pub pg: Option<SocketAddr>,
    /// Folder of `<name>.toml` dashboards; `None` serves none (the API and PostgreSQL still work).
    pub dashboards: Option<PathBuf>,
    /// PEM certificate and key: PostgreSQL over TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The last commit as the page shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Freshness {
    /// The job's last committed batch (with a job).
    pub batch: Option<u64>,
    /// When the lake last changed.
    pub committed_at: Option<DateTime<Utc>>,
    /// The newest event time the job has seen (jobs with window outputs).
    pub newest_event: Option<DateTime<Utc>>,
}

impl Freshness {
    pub fn of(record: &CommitRecord) -> Self {
        let newest = record.windows.values().filter_map(|w| w.watermark).max();
        Self {
            batch: Some(record.batch),
            committed_at: Some(record.committed_at),
            newest_event: newest.and_then(|us| Utc.timestamp_micros(us).single()),
        }
    }
}

/// Shared by the HTTP and PostgreSQL servers.
pub struct Served {
    pub lake: Arc<LiveLake>,
    pub ctx: SessionContext,
    pub dashboards: Dashboards,
    pub freshness: watch::Receiver<Freshness>,
    pub password: Option<String>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Served {
    /// Moves the lake's tables to their newest versions (before a query).
    pub async fn refresh(&self) -> Result<(), QueryError> {
        self.lake.refresh(&self.ctx.state()).await
    }
}

/// Where the commits come from: a running pipeline (`weir run --serve`), or polling.
pub enum Commits {
    /// Every commit, with the window outputs' open windows (`windows`: their schemas).
    Pipeline {
        commits: watch::Receiver<Option<Committed>>,
        windows: BTreeMap<String, SchemaRef>,
    },
    Poll,
}

/// The table of a window output's open windows: `revenue_open` for `revenue`.
pub fn open_table(output: &str) -> String {
    format!("{output}_open")
}

/// Puts each window output's `<output>_open` table: its rows in `open`, none if absent.
fn put_open(
    lake: &LiveLake,
    windows: &BTreeMap<String, SchemaRef>,
    open: &BTreeMap<String, Vec<RecordBatch>>,
) {
    for (name, schema) in windows {
        let rows = open.get(name).cloned().unwrap_or_default();
        if let Ok(table) = MemTable::try_new(schema.clone(), vec![rows]) {
            lake.put(&open_table(name), Arc::new(table));
        }
    }
}

/// Checks the options and dashboards, binds both servers and returns their tasks; nothing is
/// served when any check fails.
pub async fn start(
    opts: ServeOptions,
    commits: Commits,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<(JoinSet<std::io::Result<()>>, Vec<String>), ServeError> {
    let password = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
    for (what, addr) in [("HTTP", opts.http), ("PostgreSQL", opts.pg)] {
        if let Some(addr) = addr
            && !addr.ip().is_loopback()
            && password.is_none()
        {
            return Err(ServeError::NeedsPassword { what, addr });
        }
    }
    let lake = Arc::new(LiveLake::new(
        Location::parse(&opts.lake).map_err(QueryError::from)?,
    ));
    let ctx = live_session(lake.clone(), Some(QUERY_MEMORY))?;
    datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
        &ctx,
        "datafusion",
        Arc::new(datafusion_postgres::auth::AuthManager::new()),
    )
    .map_err(|e| QueryError::Sql(*e))?;
    lake.refresh(&ctx.state()).await?;
    let (tx, rx) = watch::channel(Freshness::default());
    let mut tasks = JoinSet::new();
    match commits {
        Commits::Pipeline {
            mut commits,
            windows,
        } => {
            put_open(&lake, &windows, &BTreeMap::new());
            let lake = lake.clone();
            tasks.spawn(async move {
                while commits.changed().await.is_ok() {
                    let Some(c) = commits.borrow_and_update().clone() else {
                        continue;
                    };
                    put_open(&lake, &windows, &c.open);
                    tx.send_replace(Freshness::of(&c.record));
                }
                Ok(())
            });
        }
        Commits::Poll => {
            // No running job: a window output's open windows are those of the job's last
            // commit (its saved state), empty until there is one.
            let transforms = match &opts.job {
                Some(job) if job.outputs.values().any(|o| o.window().is_some()) => {
                    let t = Transforms::load(job)
                        .await
                        .map_err(ServeError::Transforms)?;
                    t.keep_open_rows();
                    Some(t)
                }
                _ => None,
            };
            let windows = transforms
                .as_ref()
                .map(Transforms::window_outputs)
                .unwrap_or_default();
            put_open(&lake, &windows, &BTreeMap::new());
            // Served once the first poll is done: the first page shows the open windows.
            let (ready, first) = tokio::sync::oneshot::channel();
            tasks.spawn(poll_commits(
                opts.clone(),
                lake.clone(),
                ctx.clone(),
                tx,
                transforms,
                ready,
            ));
            let _ = first.await;
        }
    }
    let dashboards = match &opts.dashboards {
        Some(dir) => Dashboards::load(dir, &ctx).await?,
        None => Dashboards::default(),
    };
    let served = Arc::new(Served {
        lake,
        ctx,
        dashboards,
        freshness: rx,
        password: password.clone(),
        metrics,
    });
    let mut listening = Vec::new();
    if let Some(addr) = opts.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        listening.push(format!("dashboards on http://{addr}/"));
        tasks.spawn(http::serve(listener, served.clone()));
    }
    if let Some(addr) = opts.pg {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let tls = match &opts.tls {
            Some((cert, key)) => Some(pg::tls(cert, key).map_err(ServeError::Tls)?),
            None => None,
        };
        listening.push(format!(
            "PostgreSQL on {}: psql -h {} -p {}",
            addr,
            addr.ip(),
            addr.port()
        ));
        tasks.spawn(pg::serve(listener, served.clone(), tls));
    }
    Ok((tasks, listening))
}

/// Without a running pipeline: every 2 s, the job's last commit record (with a job), or the
/// lake's newest Delta commit.
async fn poll_commits(
    opts: ServeOptions,
    lake: Arc<LiveLake>,
    ctx: SessionContext,
    tx: watch::Sender<Freshness>,
    transforms: Option<Transforms>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> std::io::Result<()> {
    let mut ready = Some(ready);
    let commits = match (&opts.job, Location::parse(&opts.lake)) {
        (Some(job), Ok(location)) => {
            let state = location.path(&crate::sink::lake::Layout::new(&job.name).state());
            Some(crate::commit::ObjectCommitStore::new(
                location.store.clone(),
                state,
                &job.name,
            ))
        }
        _ => None,
    };
    let mut shown = None;
    loop {
        let fresh = match &commits {
            Some(c) => {
                use crate::commit::CommitStore;
                match c.recover().await {
                    Ok(r) => {
                        if let (Some(t), Some(last)) = (&transforms, &r.last)
                            && shown != Some(last.batch)
                        {
                            match open_windows(t, c, last).await {
                                Ok(open) => {
                                    put_open(&lake, &t.window_outputs(), &open);
                                    shown = Some(last.batch);
                                }
                                Err(e) => {
                                    tracing::warn!("the open windows of batch {}: {e}", last.batch)
                                }
                            }
                        }
                        r.last.as_ref().map(Freshness::of).unwrap_or_default()
                    }
                    Err(e) => {
                        tracing::warn!("reading the commit log: {e}");
                        tx.borrow().clone()
                    }
                }
            }
            None => {
                if let Err(e) = lake.refresh(&ctx.state()).await {
                    tracing::warn!("refreshing the lake: {e}");
                }
                Freshness {
                    committed_at: lake
                        .newest_commit_ms()
                        .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
                    ..Freshness::default()
                }
            }
        };
        tx.send_if_modified(|old| {
            let changed = *old != fresh;
            *old = fresh;
            changed
        });
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The window outputs' open windows as of a commit: its saved state, finished on a copy.
async fn open_windows(
    transforms: &Transforms,
    commits: &crate::commit::ObjectCommitStore,
    last: &CommitRecord,
) -> Result<BTreeMap<String, Vec<RecordBatch>>, String> {
    let windows = transforms.window_outputs();
    for (name, mark) in &last.windows {
        if !windows.contains_key(name) || mark.update {
            continue;
        }
        let open = match &mark.state {
            Some(file) => {
                let bytes = commits.get_window(file).await.map_err(|e| e.to_string())?;
                Some(crate::transform::window::decode_state(&bytes).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        transforms.restore(
            name,
            crate::transform::window::WindowState {
                watermark: mark.watermark,
                closed: mark.closed,
                open,
            },
        );
    }
    let step = transforms
        .step(Vec::new(), false)
        .await
        .map_err(|e| e.to_string())?;
    Ok(step.open)
}
