//! The job file as written by users (`jobs/<name>.toml`): serde structs, every key documented in
//! the README, unknown keys rejected.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Records per micro-batch before it is flushed.
pub const DEFAULT_MAX_RECORDS: usize = 200_000;
/// Raw input bytes per micro-batch before it is flushed.
pub const DEFAULT_MAX_BYTES: &str = "64MiB";
/// Age of the oldest record in a micro-batch before it is flushed.
pub const DEFAULT_MAX_AGE: &str = "5s";
/// Small files are merged every this many batches (0: never).
pub const DEFAULT_COMPACT_EVERY: u64 = 16;
/// A file run commits this many micro-batches at once (a stream commits each).
pub const DEFAULT_COMMIT_EVERY: u64 = 16;
/// Largest accepted record; longer ones become dead letters.
pub const DEFAULT_MAX_RECORD_BYTES: &str = "1MiB";
/// Parquet file size above which an output partition rolls over to a new file.
pub const DEFAULT_TARGET_FILE_SIZE: &str = "128MiB";
/// The target used when `--target` is not given and the job names none.
pub const DEFAULT_TARGET: &str = "local";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Job name: prefixes output file names and keys the commit log.
    pub name: String,
    /// Folder of `.sql` transforms; each file is one output table.
    pub transforms: String,
    /// Target used when `--target` is not given (default "local").
    pub default_target: Option<String>,
    pub input: InputConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Lake housekeeping: how long removed files and old state are kept.
    #[serde(default)]
    pub lake: LakeConfig,
    /// Dimension tables the transforms may join, by table name.
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
    /// Per-output settings, by output (transform) name.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputConfig>,
    /// ONNX models the transforms call as SQL functions, by function name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// Named targets: where data comes from and where the lake is.
    pub targets: BTreeMap<String, TargetConfig>,
    #[serde(default)]
    pub test: TestConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// "json" (JSON lines) or "csv".
    pub format: InputFormat,
    /// Event-time column (a timestamp); its range is recorded per batch.
    pub time_column: Option<String>,
    /// Records longer than this become dead letters.
    pub max_record_bytes: Option<String>,
    /// CSV options (format = "csv" only).
    pub csv: Option<CsvConfig>,
    /// Column name -> type declaration, in order.
    pub schema: toml::Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Json,
    Csv,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// The first line of each file is a header (default true).
    #[serde(default = "yes")]
    pub header: bool,
    /// Field delimiter (default ",").
    #[serde(default = "comma")]
    pub delimiter: char,
}

impl Default for CsvConfig {
    fn default() -> Self {
        Self {
            header: true,
            delimiter: ',',
        }
    }
}

fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_records: Option<usize>,
    pub max_bytes: Option<String>,
    pub max_age: Option<String>,
    pub compact_every: Option<u64>,
    pub commit_every: Option<u64>,
}

/// How long files a compaction removed (and Weir's plans, commits and manifests, and Delta log
/// entries) are kept before they are deleted: readers of an older snapshot and lagging
/// warehouses need them until then.
pub const DEFAULT_RETENTION: &str = "7d";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// Default "7d".
    pub retention: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// CSV, JSON lines or Parquet file (relative to the project root).
    pub path: String,
    /// "csv", "json" or "parquet"; default from the file extension.
    pub format: Option<String>,
}

/// `[models.<name>]`: an ONNX model scored by the SQL function `<name>(...)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The `.onnx` file (relative to the project root).
    pub path: String,
    /// Which model output to return (default: the first).
    pub output: Option<String>,
    /// The column of an `[N, k]` output (default 0).
    pub index: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Hive partition columns, in path order; they are kept inside the files too.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Roll over to a new file past this size (default "128MiB").
    pub target_file_size: Option<String>,
    /// "batch" (default: each batch's rows as they come) or "window" (one final row per group
    /// and window).
    pub emit: Option<String>,
    /// For emit = "window": which column holds the window start, the window's size and how long
    /// to wait for late events.
    pub window: Option<WindowConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub column: String,
    pub size: String,
    /// Default "0s".
    pub lateness: Option<String>,
}

/// Attempts at loading one batch into one destination before it is parked.
pub const DEFAULT_LOAD_ATTEMPTS: u32 = 8;
/// Pause after the first failed attempt; it doubles up to `max_backoff`.
pub const DEFAULT_LOAD_BACKOFF: &str = "500ms";
pub const DEFAULT_LOAD_MAX_BACKOFF: &str = "30s";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadsConfig {
    /// Attempts per batch and destination while the destination answers (default 8); then the
    /// batch is parked and the destination goes on with the next one.
    pub attempts: Option<u32>,
    /// Pause after the first failure (default "500ms"), doubling up to `max_backoff`.
    pub backoff: Option<String>,
    /// Longest pause between attempts (default "30s").
    pub max_backoff: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub source: SourceConfig,
    /// Lake root: a local folder (relative to the project root) or an object store URL.
    pub lake: String,
    /// Serve `/metrics` and `/health` on this address (e.g. "127.0.0.1:9898").
    pub metrics: Option<String>,
    /// How loads into the warehouses are retried before a batch is parked.
    #[serde(default)]
    pub loads: LoadsConfig,
    /// Register tables and partitions in the AWS Glue Data Catalog.
    pub glue: Option<GlueConfig>,
    /// COPY each batch into Amazon Redshift from the lake's Parquet files (lake on S3).
    pub redshift: Option<RedshiftConfig>,
    /// Load each batch into PostgreSQL / Aurora with binary COPY.
    pub postgres: Option<PostgresConfig>,
    /// Load each batch's Parquet files into Google BigQuery.
    pub bigquery: Option<BigQueryConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueConfig {
    /// Glue database (created if missing).
    pub database: String,
    /// Prefix of each table name (default: none, tables are named after the outputs).
    #[serde(default)]
    pub table_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedshiftConfig {
    /// `postgres://user@host:5439/database?sslmode=require`; no password here.
    pub url: String,
    /// Environment variable holding the password (default "REDSHIFT_PASSWORD").
    pub password_env: Option<String>,
    /// Schema of the tables and of the load ledger (default "public").
    pub schema: Option<String>,
    /// IAM role Redshift assumes to read the lake (`arn:aws:iam::...:role/...`).
    pub iam_role: String,
    /// Region of the lake's bucket, when it differs from the cluster's.
    pub region: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:5432/database`; no password here.
    pub url: String,
    /// Environment variable holding the password (default "PGPASSWORD").
    pub password_env: Option<String>,
    /// Schema of the tables and of the load ledger (default "public").
    pub schema: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQueryConfig {
    /// Google Cloud project.
    pub project: String,
    /// Dataset (created if missing).
    pub dataset: String,
    /// Dataset location, e.g. "US" or "EU" (default "US").
    pub location: Option<String>,
    /// API base URL (default "https://bigquery.googleapis.com"); an emulator's for tests.
    pub endpoint: Option<String>,
    /// "default" (Google application-default credentials) or "none" (emulators only).
    pub auth: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Files by path, glob or URL (`file://`, `s3://`); `.gz` files are decompressed.
    Files { path: String },
    /// A Kinesis stream, read continuously until Ctrl-C / SIGTERM.
    Kinesis {
        stream: String,
        /// "trim_horizon" (default), "latest" or "at_timestamp" (for shards without a checkpoint).
        start: Option<String>,
        /// RFC 3339 time for start = "at_timestamp".
        timestamp: Option<String>,
        /// An enhanced fan-out consumer name: registered if missing, then every shard is read
        /// by SubscribeToShard (pushed, dedicated throughput) instead of GetRecords.
        consumer: Option<String>,
        /// A DynamoDB lease table (KCL schema, created if missing): any number of `weir run`s
        /// of the target share the stream's shards through it, each writing the shards it owns.
        leases: Option<String>,
        /// With `leases`: a lease not renewed for this long is taken by another worker
        /// (default "10s").
        failover: Option<String>,
    },
}

/// A lease not renewed for this long is taken over (`source.failover`).
pub const DEFAULT_FAILOVER: &str = "10s";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// Folder with `events.<format>` (fixture input) and `<table>.csv` golden outputs
    /// (default `tests/golden/<job name>`).
    pub fixtures: Option<String>,
    /// Run the fixture through the job in micro-batches of this many records, as `weir run`
    /// would (window outputs see late events, update outputs are updated batch by batch;
    /// late rows go to `_late.csv`); default: the whole fixture as one batch.
    pub batch_records: Option<usize>,
}
