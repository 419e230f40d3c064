//! The `weir` command line: clap definitions and one module per command.

mod generate;
mod lambda;
mod loads;
mod migrate;
mod produce;
mod query;
mod replay;
mod run;
mod serve;
mod status;
mod test;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Micro-batch analytics for e-commerce event streams: events -> SQL -> Delta Lake, exactly once",
    long_about = "Weir reads events (JSON lines or CSV files, or a Kinesis stream), decodes them into \
                  Arrow micro-batches, runs the job's SQL transforms with DataFusion and writes each \
                  output table as a Delta Lake table (Parquet, zstd, Hive folders) to a lake folder \
                  or object store. \
                  Every batch is committed exactly once: kill it at any moment and run it again. \
                  Behind the commit, the same files are registered in Glue and loaded into Redshift, \
                  PostgreSQL and BigQuery, each exactly once.",
    after_help = "Start with:  weir run jobs/ecommerce.toml   then   weir query \"select * from sales limit 5\"\n\
                  Logs: RUST_LOG=weir=debug"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: read the input, transform each micro-batch, write and commit it to the lake.
    ///
    /// With a file source it stops when the input is exhausted and prints a summary. Running it
    /// again resumes after the last committed batch (and replays one left half-done by a crash).
    Run(run::Args),
    /// Check a job file and plan every SQL transform against the declared schema; reads no data.
    Validate(validate::Args),
    /// Run each transform on the fixture input and compare with the golden outputs.
    Test(test::Args),
    /// Run SQL over the lake's tables (every top-level Delta table), read at their current snapshot.
    Query(query::Args),
    /// Serve a lake live: dashboards in the browser (dashboards/<name>.toml), a JSON/CSV/Arrow
    /// query API, and a read-only PostgreSQL endpoint for psql, Grafana, Metabase and Tableau.
    ///
    /// Every query reads each table's newest Delta snapshot; pages update on every commit.
    /// Loopback needs no password; any other address needs WEIR_SERVE_PASSWORD.
    Serve(serve::Args),
    /// Show a job's progress: the last committed batch, and per warehouse the last loaded batch
    /// and the backlog.
    Status(status::Args),
    /// List the batches a warehouse parked after failing for good; `retry` loads them again,
    /// exactly once, `skip` gives them up on purpose.
    ///
    /// A batch that keeps failing for one destination while it answers (a rejected file, a
    /// constraint, a permission) is parked after `[targets.X.loads] attempts`; the destination
    /// goes on with the next batches.
    Loads(loads::Args),
    /// Run dead letters through the job again, after its schema or a transform was fixed.
    ///
    /// The dead letters that match (--reason, --since) and were not replayed before become new
    /// batches, exactly once: those that decode now land in the outputs (and the warehouses),
    /// those that fail again stay dead letters with the new reason. Runs under the job's writer
    /// lease: stop `weir run` first.
    Replay(replay::Args),
    /// The bootstrap of a Kinesis-triggered Lambda function: each invocation's records are
    /// decoded, transformed and committed to the target's lake (and its warehouses), per shard,
    /// exactly once even when Lambda retries the batch.
    ///
    /// The target's source is ignored (Lambda brings the records). A failure answers with
    /// `batchItemFailures` from the first record not committed; a record that does not decode is
    /// a dead letter and never blocks the shard. Window and update outputs are refused. Run as
    /// `bootstrap` with no arguments, it is `weir lambda $_HANDLER` (the function's handler
    /// setting names the job file). See README "Lambda mode".
    Lambda(lambda::Args),
    /// Write deterministic, realistic e-commerce sample data (events and products.csv).
    Generate(generate::Args),
    /// Send generated e-commerce events to a Kinesis stream (load driver, test producer).
    Produce(produce::Args),
    /// Turn a lake of plain Parquet folders (written by Weir before Delta tables) into Delta tables in
    /// place, keeping its commit log; running it again does nothing.
    Migrate(migrate::Args),
}

/// Parses the command line, runs the command and maps errors to exit codes: 1 for a failed run,
/// 2 for bad usage (clap's own).
pub fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A Lambda function's `bootstrap` (as `cargo lambda build` names the binary) is started with
    // no arguments: it is `weir lambda`, the job file in `_HANDLER`.
    if argv.len() == 1
        && std::path::Path::new(&argv[0]).file_name() == Some(std::ffi::OsStr::new("bootstrap"))
    {
        argv.push("lambda".into());
    }
    let cli = Cli::parse_from(argv);
    if matches!(
        cli.command,
        Command::Validate(_)
            | Command::Test(_)
            | Command::Query(_)
            | Command::Status(_)
            | Command::Loads(_)
    ) {
        quiet_broken_pipe();
    }
    init_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(a) => run::run(a).await,
            Command::Validate(a) => validate::run(a).await,
            Command::Test(a) => test::run(a).await,
            Command::Query(a) => query::run(a).await,
            Command::Serve(a) => serve::run(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Loads(a) => loads::run(a).await,
            Command::Replay(a) => replay::run(a).await,
            Command::Lambda(a) => lambda::run(a).await,
            Command::Generate(a) => generate::run(a).await,
            Command::Produce(a) => produce::run(a).await,
            Command::Migrate(a) => migrate::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `weir query ... | head` ends quietly once `head` has its lines, as Unix tools do, instead of
/// panicking on the next print. Only for the commands that print a report and end: a socket
/// write never raises SIGPIPE in Rust (its sockets send with MSG_NOSIGNAL), but the long-running
/// commands keep Rust's default (SIGPIPE ignored) all the same.
fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: sets a signal disposition before the runtime's threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // delta-rs warns on every MERGE that our object store reports no file-pruning metric,
        // and on every commit retried after another writer's (leased workers' shard writers
        // append to the same tables all the time).
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "warn,deltalake_core::operations::merge=error,deltalake_core::kernel::transaction=error",
            )
        });
    // Colours only on a terminal: logs sent to a file or a collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// A job file argument: `jobs/ecommerce.toml`, or just `ecommerce` for `jobs/ecommerce.toml`.
pub(crate) fn job_path(arg: &PathBuf) -> PathBuf {
    if arg.exists() || arg.extension().is_some() {
        return arg.clone();
    }
    let guess = PathBuf::from("jobs").join(arg).with_extension("toml");
    if guess.exists() { guess } else { arg.clone() }
}

/// Installs the Ctrl-C / SIGTERM handlers at once, so that a signal at any stage (start-up, the
/// replay of an interrupted batch, the final loads) asks the run to stop instead of killing it.
/// The returned future resolves at the first signal; a second one exits at once (status 130).
pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    tokio::spawn(async move {
        for n in 0.. {
            #[cfg(unix)]
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            if n > 0 {
                eprintln!("weir: stopped at once; the next run replays the batch in hand");
                std::process::exit(130);
            }
            eprintln!("weir: stopping after the batch in hand (Ctrl-C again to quit at once)");
            let _ = tx.send(true);
        }
    });
    Ok(async move {
        let _ = rx.wait_for(|stop| *stop).await;
    })
}

/// Formats 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
