//! Job definitions: load `jobs/<name>.toml`, check every key, resolve paths and targets, so that a
//! bad job fails before any data moves with the file, the key and the fix.

pub mod config;
pub mod schema;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::model::ModelSpec;
pub use crate::transform::window::WindowSpec;
pub use config::{
    BigQueryConfig, CsvConfig, GlueConfig, InputFormat, PostgresConfig, RedshiftConfig,
    SourceConfig,
};
pub use schema::{ColumnType, InputSchema};

/// Errors in a job file. Each message names the file and the key, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{file}: cannot read the job file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// The batching policy: a micro-batch is flushed when any limit is reached.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_records: usize,
    pub max_bytes: u64,
    pub max_age: Duration,
    /// Merge small lake files every this many batches (and at the end of a file run); 0: never.
    pub compact_every: u64,
    /// Micro-batches a file run commits at once, as one batch: its files are written once, at
    /// their target size. A stream commits every micro-batch.
    pub commit_every: u64,
}

/// The decoded input description.
#[derive(Debug, Clone)]
pub struct Input {
    pub format: InputFormat,
    pub schema: InputSchema,
    pub time_column: Option<String>,
    pub max_record_bytes: usize,
    pub csv: CsvConfig,
}

/// A dimension table loaded once at start and visible to every transform.
#[derive(Debug, Clone)]
pub struct DimTable {
    pub name: String,
    pub path: PathBuf,
    pub format: String,
}

/// Settings of one output table.
#[derive(Debug, Clone, Default)]
pub struct OutputSpec {
    pub partition_by: Vec<String>,
    pub target_file_size: u64,
    /// How rows are emitted (`emit`).
    pub emit: Emit,
}

/// `[outputs.<name>] emit`: how an output's rows are written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Emit {
    /// Each batch's rows as they come (`"batch"`, the default).
    #[default]
    Batch,
    /// One final row per group and window, once the watermark passes it (`"window"`).
    Window(WindowSpec),
    /// One row per GROUP BY key over every event so far, updated by each batch (`"update"`).
    Update,
}

impl OutputSpec {
    /// The window of an `emit = "window"` output.
    pub fn window(&self) -> Option<&WindowSpec> {
        match &self.emit {
            Emit::Window(w) => Some(w),
            _ => None,
        }
    }

    /// Whether the output keeps state across batches (window or update).
    pub fn stateful(&self) -> bool {
        !matches!(self.emit, Emit::Batch)
    }
}

/// How a target's loads are retried (`[targets.X.loads]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRetry {
    /// Attempts at one batch while its destination answers, before the batch is parked.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for LoadRetry {
    fn default() -> Self {
        Self {
            attempts: config::DEFAULT_LOAD_ATTEMPTS,
            backoff: units::parse_duration(config::DEFAULT_LOAD_BACKOFF).expect("valid default"),
            max_backoff: units::parse_duration(config::DEFAULT_LOAD_MAX_BACKOFF)
                .expect("valid default"),
        }
    }
}

/// Where one run reads from and writes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub source: SourceConfig,
    pub lake: String,
    pub metrics: Option<std::net::SocketAddr>,
    pub loads: LoadRetry,
    pub glue: Option<GlueConfig>,
    pub redshift: Option<RedshiftConfig>,
    pub postgres: Option<PostgresConfig>,
    pub bigquery: Option<BigQueryConfig>,
}

/// A checked job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job file, as given.
    pub file: PathBuf,
    /// Project root: relative paths in the job file are resolved against it.
    pub root: PathBuf,
    pub name: String,
    pub transforms: PathBuf,
    pub input: Input,
    pub batch: BatchPolicy,
    /// How long removed lake files and old state are kept (`[lake] retention`).
    pub retention: Duration,
    pub tables: Vec<DimTable>,
    /// `[models]`: ONNX models the transforms call as SQL functions.
    pub models: Vec<ModelSpec>,
    pub outputs: BTreeMap<String, OutputSpec>,
    pub targets: BTreeMap<String, Target>,
    pub default_target: String,
    pub fixtures: PathBuf,
    /// `[test] batch_records`: `weir test` runs the fixture in micro-batches of this size.
    pub test_batch_records: Option<usize>,
}

impl Job {
    /// Loads and checks a job file.
    pub fn load(file: impl AsRef<Path>) -> Result<Self, JobError> {
        let file = file.as_ref();
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| JobError::Read {
            file: shown.clone(),
            source,
        })?;
        Self::parse(file, &text)
    }

    /// Parses and checks job text as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, JobError> {
        let shown = file.display().to_string();
        let raw: config::JobFile = toml::from_str(text).map_err(|e| JobError::Syntax {
            file: shown.clone(),
            message: with_suggestion(e.to_string()),
        })?;
        let root = project_root(file);
        let bad = |key: &str, message: String| JobError::Invalid {
            file: shown.clone(),
            key: key.to_string(),
            message,
        };
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            }
        };

        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "name",
                format!(
                    "\"{}\" must be non-empty letters, digits, '_' or '-'",
                    raw.name
                ),
            ));
        }

        let transforms = resolve(&raw.transforms);
        if !transforms.is_dir() {
            return Err(bad(
                "transforms",
                format!(
                    "folder {} does not exist; create it and put one .sql file per output table in it",
                    transforms.display()
                ),
            ));
        }

        let input = parse_input(&raw.input, &bad)?;
        let batch = BatchPolicy {
            max_records: raw.batch.max_records.unwrap_or(config::DEFAULT_MAX_RECORDS),
            max_bytes: units::parse_bytes(
                raw.batch
                    .max_bytes
                    .as_deref()
                    .unwrap_or(config::DEFAULT_MAX_BYTES),
            )
            .map_err(|m| bad("batch.max_bytes", m))?,
            max_age: units::parse_duration(
                raw.batch
                    .max_age
                    .as_deref()
                    .unwrap_or(config::DEFAULT_MAX_AGE),
            )
            .map_err(|m| bad("batch.max_age", m))?,
            compact_every: raw
                .batch
                .compact_every
                .unwrap_or(config::DEFAULT_COMPACT_EVERY),
            commit_every: raw
                .batch
                .commit_every
                .unwrap_or(config::DEFAULT_COMMIT_EVERY),
        };
        if batch.max_records == 0 || batch.max_bytes == 0 || batch.max_age.is_zero() {
            return Err(bad("batch", "limits must be greater than zero".into()));
        }
        if batch.commit_every == 0 {
            return Err(bad(
                "batch.commit_every",
                "must be 1 or more (1: commit every micro-batch)".into(),
            ));
        }
        let retention = units::parse_duration(
            raw.lake
                .retention
                .as_deref()
                .unwrap_or(config::DEFAULT_RETENTION),
        )
        .map_err(|m| bad("lake.retention", m))?;

        let mut tables = Vec::new();
        for (name, t) in &raw.tables {
            let key = format!("tables.{name}.path");
            let path = resolve(&t.path);
            if !path.is_file() {
                return Err(bad(
                    &key,
                    format!(
                        "file {} does not exist; fix the path (relative to {})",
                        path.display(),
                        root.display()
                    ),
                ));
            }
            let format = match &t.format {
                Some(f) => f.to_ascii_lowercase(),
                None => path
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(|e| {
                        if e == "jsonl" || e == "ndjson" {
                            "json".to_string()
                        } else {
                            e.to_ascii_lowercase()
                        }
                    })
                    .unwrap_or_default(),
            };
            if !matches!(format.as_str(), "csv" | "json" | "parquet") {
                return Err(bad(
                    &format!("tables.{name}.format"),
                    format!("\"{format}\" is not supported; use \"csv\", \"json\" or \"parquet\""),
                ));
            }
            tables.push(DimTable {
                name: name.clone(),
                path,
                format,
            });
        }

        let mut models = Vec::new();
        for (name, m) in &raw.models {
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(bad(
                    &format!("models.{name}"),
                    "a model's name is the SQL function that calls it: use lower-case letters, digits and '_'".into(),
                ));
            }
            let path = resolve(&m.path);
            if !path.is_file() {
                return Err(bad(
                    &format!("models.{name}.path"),
                    format!(
                        "file {} does not exist; fix the path (relative to {}), or export the model to it (see models/train.py)",
                        path.display(),
                        root.display()
                    ),
                ));
            }
            models.push(ModelSpec {
                name: name.clone(),
                path,
                output: m.output.clone(),
                index: m.index.unwrap_or(0),
            });
        }

        let mut outputs = BTreeMap::new();
        for (name, o) in &raw.outputs {
            let target_file_size = units::parse_bytes(
                o.target_file_size
                    .as_deref()
                    .unwrap_or(config::DEFAULT_TARGET_FILE_SIZE),
            )
            .map_err(|m| bad(&format!("outputs.{name}.target_file_size"), m))?;
            let emit = parse_emit(name, o, &raw.input, &bad)?;
            if emit == Emit::Update && !o.partition_by.is_empty() {
                return Err(bad(
                    &format!("outputs.{name}.partition_by"),
                    "an update output (one row per key, replaced by a Delta MERGE) is not partitioned; remove partition_by".into(),
                ));
            }
            outputs.insert(
                name.clone(),
                OutputSpec {
                    partition_by: o.partition_by.clone(),
                    target_file_size,
                    emit,
                },
            );
        }

        if raw.targets.is_empty() {
            return Err(bad(
                "targets",
                "no target defined; add e.g. [targets.local] with source and lake".into(),
            ));
        }
        let mut targets = BTreeMap::new();
        for (name, t) in raw.targets {
            let metrics = match &t.metrics {
                Some(addr) => Some(addr.parse().map_err(|_| {
                    bad(
                        &format!("targets.{name}.metrics"),
                        format!("\"{addr}\" is not an address; write e.g. \"127.0.0.1:9898\""),
                    )
                })?),
                None => None,
            };
            if let SourceConfig::Kinesis {
                start,
                timestamp,
                consumer,
                leases,
                failover,
                ..
            } = &t.source
            {
                crate::source::kinesis::StartAt::parse(start.as_deref(), timestamp.as_deref())
                    .map_err(|m| bad(&format!("targets.{name}.source"), m))?;
                if let Some(c) = consumer {
                    crate::source::kinesis::check_consumer_name(c)
                        .map_err(|m| bad(&format!("targets.{name}.source.consumer"), m))?;
                }
                match (leases, failover) {
                    (Some(table), failover) => {
                        crate::source::kinesis::leases::check_table_name(table)
                            .map_err(|m| bad(&format!("targets.{name}.source.leases"), m))?;
                        let key = format!("targets.{name}.source.failover");
                        let failover = units::parse_duration(
                            failover.as_deref().unwrap_or(config::DEFAULT_FAILOVER),
                        )
                        .map_err(|m| bad(&key, m))?;
                        if failover < std::time::Duration::from_secs(1) {
                            return Err(bad(
                                &key,
                                "must be at least 1s (leases are renewed every third of it), e.g. \"10s\"".into(),
                            ));
                        }
                        // Window and update outputs keep one state over the whole stream; each
                        // worker writes only its shards.
                        for (output, o) in &outputs {
                            let mode = match o.emit {
                                Emit::Batch => continue,
                                Emit::Window(_) => "window",
                                Emit::Update => "update",
                            };
                            return Err(bad(
                                &format!("targets.{name}.source.leases"),
                                format!(
                                    "output \"{output}\" has emit = \"{mode}\", whose state needs one writer for the whole stream, but with leases each worker writes only the shards it owns. Use emit = \"batch\" (aggregate in SQL over the lake), or run this target without leases"
                                ),
                            ));
                        }
                    }
                    (None, Some(_)) => {
                        return Err(bad(
                            &format!("targets.{name}.source.failover"),
                            "failover applies to leased sources only; add leases = \"<DynamoDB table>\" or remove failover".into(),
                        ));
                    }
                    (None, None) => {}
                }
            }
            let loads = {
                let key = |k: &str| format!("targets.{name}.loads.{k}");
                let duration = |k: &str, v: &Option<String>, default: &str| {
                    units::parse_duration(v.as_deref().unwrap_or(default))
                        .map_err(|m| bad(&key(k), m))
                };
                let retry = LoadRetry {
                    attempts: t.loads.attempts.unwrap_or(config::DEFAULT_LOAD_ATTEMPTS),
                    backoff: duration("backoff", &t.loads.backoff, config::DEFAULT_LOAD_BACKOFF)?,
                    max_backoff: duration(
                        "max_backoff",
                        &t.loads.max_backoff,
                        config::DEFAULT_LOAD_MAX_BACKOFF,
                    )?,
                };
                if retry.attempts == 0 {
                    return Err(bad(&key("attempts"), "must be at least 1".into()));
                }
                if retry.backoff.is_zero() {
                    return Err(bad(
                        &key("backoff"),
                        "must be above 0, e.g. \"500ms\"".into(),
                    ));
                }
                if retry.max_backoff < retry.backoff {
                    return Err(bad(&key("max_backoff"), "must be at least backoff".into()));
                }
                retry
            };
            check_warehouses(&t, &t.lake, &|key, m| {
                bad(&format!("targets.{name}.{key}"), m)
            })?;
            let target = {
                let lake = if t.lake.contains("://") {
                    t.lake
                } else {
                    resolve(&t.lake).display().to_string()
                };
                let source = match t.source {
                    SourceConfig::Files { path } if !path.contains("://") => SourceConfig::Files {
                        path: resolve(&path).display().to_string(),
                    },
                    other => other,
                };
                Target {
                    name: name.clone(),
                    source,
                    lake,
                    metrics,
                    loads,
                    glue: t.glue,
                    redshift: t.redshift,
                    postgres: t.postgres,
                    bigquery: t.bigquery,
                }
            };
            targets.insert(name, target);
        }
        let default_target = raw
            .default_target
            .unwrap_or_else(|| config::DEFAULT_TARGET.to_string());
        if !targets.contains_key(&default_target) {
            return Err(bad(
                "default_target",
                format!(
                    "target \"{default_target}\" is not defined; defined targets: {}",
                    targets.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let fixtures = resolve(
            raw.test
                .fixtures
                .as_deref()
                .unwrap_or(&format!("tests/golden/{}", raw.name)),
        );

        Ok(Self {
            file: file.to_path_buf(),
            root,
            name: raw.name,
            transforms,
            input,
            batch,
            retention,
            tables,
            models,
            outputs,
            targets,
            default_target,
            fixtures,
            test_batch_records: raw.test.batch_records.filter(|&n| n > 0),
        })
    }

    /// The named target, or the default one; an unknown name lists the defined ones.
    pub fn target(&self, name: Option<&str>) -> Result<&Target, JobError> {
        let name = name.unwrap_or(&self.default_target);
        self.targets.get(name).ok_or_else(|| JobError::Invalid {
            file: self.file.display().to_string(),
            key: format!("targets.{name}"),
            message: format!(
                "no such target; defined targets: {}",
                self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// Settings of an output table (defaults when the job file has no `[outputs.<name>]`).
    pub fn output(&self, name: &str) -> OutputSpec {
        self.outputs
            .get(name)
            .cloned()
            .unwrap_or_else(|| OutputSpec {
                partition_by: Vec::new(),
                target_file_size: units::parse_bytes(config::DEFAULT_TARGET_FILE_SIZE)
                    .unwrap_or(u64::MAX),
                emit: Emit::Batch,
            })
    }
}

/// `emit` and `window` of `[outputs.<name>]`.
fn parse_emit(
    name: &str,
    o: &config::OutputConfig,
    input: &config::InputConfig,
    bad: &dyn Fn(&str, String) -> JobError,
) -> Result<Emit, JobError> {
    let key = |k: &str| format!("outputs.{name}.{k}");
    match (o.emit.as_deref().unwrap_or("batch"), &o.window) {
        ("batch", None) => Ok(Emit::Batch),
        ("update", None) => Ok(Emit::Update),
        ("batch" | "update", Some(_)) => Err(bad(
            &key("window"),
            "a window needs emit = \"window\"; add it, or remove window".into(),
        )),
        ("window", None) => Err(bad(
            &key("window"),
            "emit = \"window\" needs window = { column = \"minute\", size = \"1m\", lateness = \"30s\" }".into(),
        )),
        ("window", Some(w)) => {
            if input.time_column.is_none() {
                return Err(bad(
                    "input.time_column",
                    format!("outputs.{name} has emit = \"window\": its watermark is the largest event time seen, so set input.time_column to the events' time column"),
                ));
            }
            let size = units::parse_duration(&w.size).map_err(|m| bad(&key("window.size"), m))?;
            if size.is_zero() {
                return Err(bad(&key("window.size"), "a window must last more than 0s".into()));
            }
            let lateness = units::parse_duration(w.lateness.as_deref().unwrap_or("0s"))
                .map_err(|m| bad(&key("window.lateness"), m))?;
            Ok(Emit::Window(WindowSpec {
                column: w.column.clone(),
                size,
                lateness,
            }))
        }
        (other, _) => Err(bad(
            &key("emit"),
            format!("unknown mode \"{other}\"; use \"batch\" (each batch's rows as they come), \"window\" (one final row per group and window) or \"update\" (one row per GROUP BY key, always current)"),
        )),
    }
}

fn parse_input(
    raw: &config::InputConfig,
    bad: &dyn Fn(&str, String) -> JobError,
) -> Result<Input, JobError> {
    let mut columns = Vec::new();
    for (name, decl) in &raw.schema {
        let key = format!("input.schema.{name}");
        let decl = decl.as_str().ok_or_else(|| {
            bad(
                &key,
                "write the type as a string, e.g. \"bigint not null\"".into(),
            )
        })?;
        columns.push(schema::Column::parse(name, decl).map_err(|m| bad(&key, m))?);
    }
    if columns.is_empty() {
        return Err(bad("input.schema", "declare at least one column".into()));
    }
    if let Some(tc) = &raw.time_column {
        match columns.iter().find(|c| &c.name == tc) {
            None => {
                return Err(bad(
                    "input.time_column",
                    format!("\"{tc}\" is not a column of input.schema"),
                ));
            }
            Some(c)
                if !matches!(
                    c.kind,
                    ColumnType::TimestampMillis | ColumnType::TimestampMicros
                ) =>
            {
                return Err(bad(
                    "input.time_column",
                    format!("\"{tc}\" must be declared as a timestamp"),
                ));
            }
            _ => {}
        }
    }
    if raw.csv.is_some() && raw.format != InputFormat::Csv {
        return Err(bad(
            "input.csv",
            "CSV options only apply with format = \"csv\"".into(),
        ));
    }
    let max_record_bytes = units::parse_bytes(
        raw.max_record_bytes
            .as_deref()
            .unwrap_or(config::DEFAULT_MAX_RECORD_BYTES),
    )
    .map_err(|m| bad("input.max_record_bytes", m))? as usize;
    if !(1..=MAX_RECORD_BYTES_LIMIT).contains(&max_record_bytes) {
        return Err(bad(
            "input.max_record_bytes",
            format!(
                "{max_record_bytes} bytes is outside 1 byte ..= 64MiB; a record is held whole \
                 in memory, so pick the longest record you expect (Kinesis allows 10MiB)"
            ),
        ));
    }
    if let Some(csv) = &raw.csv {
        let d = csv.delimiter;
        if !d.is_ascii() || matches!(d, '"' | '\n' | '\r') {
            return Err(bad(
                "input.csv.delimiter",
                format!(
                    "{d:?} cannot be a delimiter; use one ASCII character such as \",\" or \"\\t\""
                ),
            ));
        }
    }
    Ok(Input {
        format: raw.format,
        schema: InputSchema { columns },
        time_column: raw.time_column.clone(),
        max_record_bytes,
        csv: raw.csv.clone().unwrap_or_default(),
    })
}

/// The largest `input.max_record_bytes`: one record is held whole, and chunk offsets are 32-bit.
const MAX_RECORD_BYTES_LIMIT: usize = 64 << 20;

/// Checks the warehouse blocks of a target: connection URLs parse and carry no password, the
/// Redshift lake is on S3, BigQuery auth is known.
fn check_warehouses(
    t: &config::TargetConfig,
    lake: &str,
    bad: &dyn Fn(&str, String) -> JobError,
) -> Result<(), JobError> {
    let check_url = |key: &str, url: &str, env: &str| -> Result<(), JobError> {
        let (parsed, _) = crate::load::postgres::wire::parse_url(url).map_err(|e| {
            bad(
                key,
                format!("\"{url}\" is not a connection URL ({e}); write e.g. \"postgres://loader@host:5432/shop\""),
            )
        })?;
        if parsed.get_password().is_some() {
            return Err(bad(
                key,
                format!(
                    "remove the password from the URL and set it in the environment variable {env}"
                ),
            ));
        }
        Ok(())
    };
    if let Some(g) = &t.glue
        && g.database.is_empty()
    {
        return Err(bad(
            "glue.database",
            "name the Glue database, e.g. \"shop\"".into(),
        ));
    }
    if let Some(p) = &t.postgres {
        check_url(
            "postgres.url",
            &p.url,
            p.password_env.as_deref().unwrap_or("PGPASSWORD"),
        )?;
    }
    if let Some(r) = &t.redshift {
        check_url(
            "redshift.url",
            &r.url,
            r.password_env.as_deref().unwrap_or("REDSHIFT_PASSWORD"),
        )?;
        if !r.iam_role.starts_with("arn:aws:iam::") {
            return Err(bad(
                "redshift.iam_role",
                format!(
                    "\"{}\" is not an IAM role ARN; write e.g. \"arn:aws:iam::123456789012:role/weir-redshift\"",
                    r.iam_role
                ),
            ));
        }
        if !lake.starts_with("s3://") {
            return Err(bad(
                "redshift",
                format!(
                    "Redshift COPYs from S3, but the lake is \"{lake}\"; set lake = \"s3://bucket/prefix\""
                ),
            ));
        }
    }
    if let Some(b) = &t.bigquery {
        match b.auth.as_deref().unwrap_or("default") {
            "default" | "none" => {}
            other => {
                return Err(bad(
                    "bigquery.auth",
                    format!(
                        "unknown auth \"{other}\"; use \"default\" (application-default credentials) or \"none\" (emulators)"
                    ),
                ));
            }
        }
        if let Some(e) = &b.endpoint
            && url::Url::parse(e).is_err()
        {
            return Err(bad(
                "bigquery.endpoint",
                format!("\"{e}\" is not a URL; write e.g. \"http://127.0.0.1:9050\""),
            ));
        }
    }
    Ok(())
}

/// The project root of a job file: the parent of `jobs/` when the file is in a `jobs` folder,
/// else the file's own folder.
pub fn project_root(file: &Path) -> PathBuf {
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    match (dir.file_name(), dir.parent()) {
        (Some(n), Some(parent)) if n == "jobs" => parent.to_path_buf(),
        _ => dir,
    }
}

/// Adds "did you mean" to serde's unknown-field and unknown-variant messages.
pub(crate) fn with_suggestion(message: String) -> String {
    let Some(at) = message
        .find("unknown field `")
        .or_else(|| message.find("unknown variant `"))
    else {
        return message;
    };
    let names: Vec<&str> = message[at..].split('`').skip(1).step_by(2).collect();
    let Some((given, expected)) = names.split_first() else {
        return message;
    };
    let best = expected
        .iter()
        .map(|c| (strsim::jaro_winkler(given, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, name)) => format!("{}\n(did you mean \"{name}\"?)", message.trim_end()),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::create_dir_all(dir.path().join("sql/shop")).unwrap();
        dir
    }

    const GOOD: &str = r#"
name = "shop"
transforms = "sql/shop"
[input]
format = "json"
[input.schema]
id = "string not null"
[targets.local]
source = { kind = "files", path = "data/*.jsonl" }
lake = "lake"
"#;

    #[test]
    fn loads_and_resolves_against_the_project_root() {
        let dir = project();
        let file = dir.path().join("jobs/shop.toml");
        let job = Job::parse(&file, GOOD).unwrap();
        assert_eq!(job.root, dir.path());
        assert_eq!(
            job.target(None).unwrap().lake,
            dir.path().join("lake").display().to_string()
        );
        assert_eq!(job.batch.max_records, config::DEFAULT_MAX_RECORDS);
    }

    #[test]
    fn unknown_key_names_line_and_suggests() {
        let dir = project();
        let file = dir.path().join("jobs/shop.toml");
        let text = format!("{GOOD}\n[outputs.sales]\npartiton_by = [\"dt\"]\n");
        let err = Job::parse(&file, &text).unwrap_err().to_string();
        assert!(err.contains("shop.toml"), "{err}");
        assert!(err.contains("line 13"), "{err}");
        assert!(err.contains("did you mean \"partition_by\""), "{err}");
    }

    #[test]
    fn bad_type_names_the_key() {
        let dir = project();
        let file = dir.path().join("jobs/shop.toml");
        let text = GOOD.replace("string not null", "strng");
        let err = Job::parse(&file, &text).unwrap_err().to_string();
        assert!(
            err.contains("input.schema.id: unknown type \"strng\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_source_kind_is_rejected() {
        let dir = project();
        let file = dir.path().join("jobs/shop.toml");
        let text = GOOD.replace("kind = \"files\"", "kind = \"filez\"");
        let err = Job::parse(&file, &text).unwrap_err().to_string();
        assert!(err.contains("did you mean \"files\""), "{err}");
    }

    #[test]
    fn leases_are_checked_and_refuse_state_outputs() {
        let dir = project();
        let file = dir.path().join("jobs/shop.toml");
        let leased = |source: &str, outputs: &str| {
            let text = format!(
                "{GOOD}\n[targets.prod]\nsource = {{ kind = \"kinesis\", stream = \"s\", {source} }}\nlake = \"lake\"\n{outputs}"
            );
            Job::parse(&file, &text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        leased("leases = \"shop-leases\", failover = \"5s\"", "").unwrap();
        let err = leased("leases = \"x\"", "").unwrap_err();
        assert!(
            err.contains("targets.prod.source.leases") && err.contains("e.g."),
            "{err}"
        );
        let err = leased("leases = \"shop-leases\", failover = \"100ms\"", "").unwrap_err();
        assert!(err.contains("targets.prod.source.failover"), "{err}");
        let err = leased("failover = \"5s\"", "").unwrap_err();
        assert!(err.contains("leased sources only"), "{err}");
        let update = "[outputs.stock]\nemit = \"update\"\n";
        let err = leased("leases = \"shop-leases\"", update).unwrap_err();
        assert!(
            err.contains("stock")
                && err.contains("emit = \"update\"")
                && err.contains("without leases"),
            "{err}"
        );
    }
}
