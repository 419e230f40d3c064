//! `weir serve`: dashboards in the browser and a PostgreSQL endpoint over a lake, until Ctrl-C.
//! The same flags serve inside `weir run --serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{job_path, shutdown_signal};
use crate::job::Job;
use crate::serve::{Commits, ServeOptions, start};

/// Where `weir serve` listens; shared with `weir run --serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Listen {
    /// Dashboards and the HTTP API here; "off" for none.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = addr_or_off)]
    pub http: Addr,
    /// The PostgreSQL endpoint here (psql -h 127.0.0.1 -p 5433); "off" for none.
    #[arg(long, default_value = "127.0.0.1:5433", value_parser = addr_or_off)]
    pub pg: Addr,
    /// Folder of dashboards (<name>.toml); default: dashboards/ beside jobs/, if there is one.
    #[arg(long)]
    pub dashboards: Option<PathBuf>,
    /// PEM certificate for PostgreSQL over TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// An address, or `None` for "off".
#[derive(Debug, Clone, Copy)]
pub struct Addr(pub Option<SocketAddr>);

fn addr_or_off(s: &str) -> Result<Addr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Addr(None));
    }
    s.parse().map(|a| Addr(Some(a))).map_err(|e| {
        format!("{e}: give host:port, e.g. 127.0.0.1:8080 (or 0.0.0.0:8080 with WEIR_SERVE_PASSWORD set), or off")
    })
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Off loopback, both servers ask for the password in WEIR_SERVE_PASSWORD \
    (HTTP: basic auth with any user, or a bearer token; PostgreSQL: the password of any user)."
)]
pub struct Args {
    /// Job file (jobs/<name>.toml, or just <name>): its target's lake, its commit log for
    /// freshness, and the dashboards beside it. Without it, --lake (default ./lake).
    pub job: Option<PathBuf>,
    /// Target of the job whose lake to serve.
    #[arg(long, short)]
    pub target: Option<String>,
    /// Serve this lake (folder or URL) instead of the job target's.
    #[arg(long)]
    pub lake: Option<String>,
    #[command(flatten)]
    pub listen: Listen,
}

impl Listen {
    /// The options for a lake, given the job (if any) whose dashboards folder to default to.
    pub fn options(&self, lake: String, job: Option<&Job>) -> ServeOptions {
        let dashboards = self.dashboards.clone().or_else(|| {
            let root = job.map_or_else(|| Path::new(".").to_path_buf(), |j| j.root.clone());
            Some(root.join("dashboards")).filter(|d| d.is_dir())
        });
        ServeOptions {
            lake,
            job: job.cloned(),
            http: self.http.0,
            pg: self.pg.0,
            dashboards,
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    let job = args
        .job
        .as_ref()
        .map(|j| Job::load(job_path(j)))
        .transpose()?;
    let lake = match (&args.lake, &job) {
        (Some(l), _) => l.clone(),
        (None, Some(j)) => j.target(args.target.as_deref())?.lake.clone(),
        (None, None) => "lake".to_string(),
    };
    let opts = args.listen.options(lake.clone(), job.as_ref());
    if opts.http.is_none() && opts.pg.is_none() {
        anyhow::bail!("both --http and --pg are off: nothing to serve");
    }
    let (mut tasks, listening) = start(opts, Commits::Poll, None).await?;
    eprintln!("weir serve {lake}");
    for l in &listening {
        eprintln!("  {l}");
    }
    eprintln!("  Ctrl-C to stop");
    tokio::select! {
        _ = shutdown => Ok(ExitCode::SUCCESS),
        Some(done) = tasks.join_next() => {
            match done? {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e.into()),
            }
        }
    }
}
