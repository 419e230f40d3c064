//! Google BigQuery: per batch, table and file, a load job of the lake's Parquet file. From `gs://`
//! URIs when the lake is on GCS; otherwise the file is sent with a resumable upload to the BigQuery
//! upload endpoint (`upload.rs`; the client crate lacks it).
//!
//! Exactly once: the job id is derived from (dataset, job, table, batch, file). Before loading, the job is
//! looked up: done without error means loaded; running means wait; failed means try the next
//! attempt's id (a failed load job loads nothing). "Already exists" on insert means another attempt
//! got there first, so the job is looked up again.
//!
//! An update output's batch is its change file loaded into a staging table, then one `MERGE`
//! query job whose id (`..._<batch>_merge_0`) is the batch's proof of being loaded.

mod upload;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::job_configuration::JobConfiguration;
use gcp_bigquery_client::model::job_configuration_load::JobConfigurationLoad;
use gcp_bigquery_client::model::job_configuration_query::JobConfigurationQuery;
use gcp_bigquery_client::model::job_reference::JobReference;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_reference::TableReference;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;
use gcp_bigquery_client::yup_oauth2;
use tokio::sync::OnceCell;

use super::catalog::{Catalog, prepare_tables};
use super::types::Warehouse;
use super::{Destination, LakeFiles, LoadError, OutputTable};
use crate::commit::CommitRecord;
use crate::job::BigQueryConfig;
use crate::sink::{Upsert, WrittenFile};

const NAME: &str = "bigquery";
const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
const POLL: Duration = Duration::from_millis(200);

pub struct BigQuery {
    project: String,
    dataset: String,
    location: String,
    endpoint: String,
    anonymous: bool,
    job: String,
    lake: LakeFiles,
    state: OnceCell<(Client, Arc<dyn Authenticator>)>,
    http: reqwest::Client,
}

impl BigQuery {
    pub fn new(c: &BigQueryConfig, job: &str, lake: LakeFiles) -> Self {
        Self {
            project: c.project.clone(),
            dataset: c.dataset.clone(),
            location: c.location.clone().unwrap_or_else(|| "US".into()),
            endpoint: c
                .endpoint
                .clone()
                .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
                .trim_end_matches('/')
                .to_string(),
            anonymous: c.auth.as_deref() == Some("none"),
            job: job.to_string(),
            lake,
            state: OnceCell::new(),
            http: reqwest::Client::new(),
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> LoadError {
        LoadError::failed(NAME, what)
    }

    async fn client(&self) -> Result<&(Client, Arc<dyn Authenticator>), LoadError> {
        self.state
            .get_or_try_init(|| async {
                let auth: Arc<dyn Authenticator> = if self.anonymous {
                    Arc::new(Anonymous)
                } else {
                    Arc::new(ApplicationDefault::new().await.map_err(|e| {
                        self.fail(format!("Google application-default credentials: {e}; set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"))
                    })?)
                };
                let client = ClientBuilder::new()
                    .with_v2_base_url(format!("{}/bigquery/v2", self.endpoint))
                    .with_client(self.http.clone())
                    .build_from_authenticator(auth.clone())
                    .await
                    .map_err(|e| self.fail(e))?;
                Ok((client, auth))
            })
            .await
    }

    /// The load job id of one file of a batch, per attempt; the dataset is in it because job ids are
    /// unique per project.
    pub fn job_id(&self, table: &str, batch: &str, file: usize, attempt: u32) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        // A lake migrated from before identities has the empty one: its ids are as they were.
        let lake = match self.lake.lake_id.as_str() {
            "" => String::new(),
            id => format!("{}_", clean(id)),
        };
        let base = format!(
            "weir_{}_{}_{lake}{}_{batch}_{file}",
            clean(&self.dataset),
            clean(&self.job),
            clean(table)
        );
        if attempt == 0 {
            base
        } else {
            format!("{base}_r{attempt}")
        }
    }

    fn load_config(&self, table: &str, uris: Option<Vec<String>>) -> JobConfiguration {
        let load = JobConfigurationLoad {
            destination_table: Some(TableReference::new(&self.project, &self.dataset, table)),
            source_format: Some("PARQUET".into()),
            write_disposition: Some("WRITE_APPEND".into()),
            create_disposition: Some("CREATE_NEVER".into()),
            source_uris: uris,
            ..Default::default()
        };
        JobConfiguration {
            load: Some(load),
            ..Default::default()
        }
    }

    /// Runs one job exactly once; returns when it is done. Before submitting, the ids of earlier
    /// attempts (`id_of(0)`, `id_of(1)`, ...) are looked up: done without error means done;
    /// running means wait; failed means try the next id (a failed job changes nothing). Each call
    /// submits at most one new job, so the caller's attempts bound the jobs, and a parked batch
    /// retried later gets a fresh id. "Already exists" on submit means another attempt got there
    /// first: the job is polled like our own.
    async fn run_once<F, Fut>(
        &self,
        what: &str,
        id_of: impl Fn(u32) -> String,
        submit: F,
    ) -> Result<(), LoadError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), (Option<i64>, String)>>,
    {
        let (client, _) = self.client().await?;
        let mut submitted = false;
        for attempt in 0.. {
            let id = id_of(attempt);
            loop {
                match self.job_state(client, &id).await? {
                    JobState::Missing => {}
                    JobState::Running => {
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                    JobState::Done => return Ok(()),
                    JobState::Failed(e) if submitted => {
                        return Err(self.fail(format!("{what}: {e}")));
                    }
                    // An earlier attempt's job: the next id is this attempt's.
                    JobState::Failed(_) => break,
                }
                submitted = true;
                match submit(id.clone()).await {
                    Ok(()) | Err((Some(409), _)) => {}
                    Err((_, e)) => return Err(self.fail(format!("{what}: job {id}: {e}"))),
                }
            }
        }
        unreachable!("job ids are endless")
    }

    /// Appends one file to `into` exactly once (see [`Self::run_once`]).
    async fn load_file(
        &self,
        into: &str,
        id_of: impl Fn(u32) -> String,
        file: &WrittenFile,
    ) -> Result<(), LoadError> {
        let (client, auth) = self.client().await?;
        let what = format!("{into}: loading {}", file.path);
        self.run_once(&what, id_of, |id| async move {
            if self.lake.url.starts_with("gs://") {
                let config = self.load_config(into, Some(vec![self.lake.url_of(&file.path)]));
                self.insert_job(client, &id, config).await
            } else {
                let data = self
                    .lake
                    .read(&file.path)
                    .await
                    .map_err(|e| (None, format!("reading {}: {e}", file.path)))?;
                let token = auth
                    .access_token()
                    .await
                    .map_err(|e| (None, e.to_string()))?;
                let job = serde_json::json!({
                    "jobReference": self.job_reference(&id),
                    "configuration": self.load_config(into, None),
                });
                upload::resumable(
                    &self.http,
                    &self.endpoint,
                    &self.project,
                    &token,
                    &job,
                    data,
                )
                .await
                .map_err(|e| (e.status(), e.to_string()))
            }
        })
        .await
    }

    /// An update output's batch: its change files are loaded into a staging table (the
    /// target's columns and `_weir_deleted`), then one MERGE replaces the rows of their keys. The
    /// MERGE job's id is the batch's proof: once it is done, the batch is loaded.
    async fn merge_changes(
        &self,
        table: &str,
        key: &str,
        files: &[&WrittenFile],
        keys: &[String],
        null_keys: &[String],
    ) -> Result<(), LoadError> {
        let (client, _) = self.client().await?;
        let merge_id = |attempt| self.job_id(table, &format!("{key}_merge"), 0, attempt);
        let stage = format!("_weir_stage_{table}_{key}");
        let drop_stage = async || {
            // Best effort: a staging table left behind holds nothing the target needs.
            if !client
                .table()
                .delete_if_exists(&self.project, &self.dataset, &stage)
                .await
            {
                tracing::debug!("staging table {stage} was already dropped");
            }
        };
        if let Some(JobState::Done) = self.first_done(client, &merge_id).await? {
            // Done by an earlier attempt that stopped before dropping the staging table.
            drop_stage().await;
            return Ok(());
        }
        let target = client
            .table()
            .get(&self.project, &self.dataset, table, None)
            .await
            .map_err(|e| self.fail(format!("table {table}: {e}")))?;
        let columns: Vec<String> = target
            .schema
            .fields
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.name)
            .collect();
        let mut staged = target.schema.fields.clone().unwrap_or_default();
        staged.push(TableFieldSchema::bool(crate::sink::DELETED));
        let created = client
            .table()
            .create(Table::new(
                &self.project,
                &self.dataset,
                &stage,
                TableSchema::new(staged),
            ))
            .await;
        match created {
            Ok(_) => {}
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => return Err(self.fail(format!("creating staging table {stage}: {e}"))),
        }
        for (i, file) in files.iter().enumerate() {
            let id_of = |attempt| self.job_id(table, &format!("{key}_stage"), i, attempt);
            self.load_file(&stage, id_of, file).await?;
        }
        let sql = self.merge_sql(table, &stage, keys, null_keys, &columns);
        self.query_once(&format!("{table}: MERGE"), merge_id, &sql)
            .await?;
        drop_stage().await;
        Ok(())
    }

    /// Runs one SQL statement as a query job exactly once (see [`Self::run_once`]).
    async fn query_once(
        &self,
        what: &str,
        id_of: impl Fn(u32) -> String,
        sql: &str,
    ) -> Result<(), LoadError> {
        let (client, _) = self.client().await?;
        self.run_once(what, id_of, |id| async move {
            let config = JobConfiguration {
                query: Some(JobConfigurationQuery {
                    query: sql.to_string(),
                    use_legacy_sql: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.insert_job(client, &id, config).await
        })
        .await
    }

    /// Submits a job under `id`; the error keeps the HTTP status (409: it exists already).
    async fn insert_job(
        &self,
        client: &Client,
        id: &str,
        config: JobConfiguration,
    ) -> Result<(), (Option<i64>, String)> {
        let job = Job {
            configuration: Some(config),
            job_reference: Some(self.job_reference(id)),
            ..Default::default()
        };
        client
            .job()
            .insert(&self.project, job)
            .await
            .map(|_| ())
            .map_err(|e| (status(&e), e.to_string()))
    }

    /// Whether one of the jobs `id_of(0..)` is done (looked up until one is missing).
    async fn first_done(
        &self,
        client: &Client,
        id_of: &(dyn Fn(u32) -> String + Sync),
    ) -> Result<Option<JobState>, LoadError> {
        for attempt in 0.. {
            match self.job_state(client, &id_of(attempt)).await? {
                JobState::Missing => return Ok(None),
                JobState::Done => return Ok(Some(JobState::Done)),
                JobState::Running | JobState::Failed(_) => {}
            }
        }
        unreachable!("job ids are endless")
    }

    /// The MERGE of a staging table into `table`: a staged key's row is deleted
    /// (`_weir_deleted`), replaced or inserted; keys in `null_keys` match NULL to NULL.
    pub fn merge_sql(
        &self,
        table: &str,
        stage: &str,
        keys: &[String],
        null_keys: &[String],
        columns: &[String],
    ) -> String {
        let name = |t: &str| format!("`{}.{}.{t}`", self.project, self.dataset);
        let q = |c: &str| format!("`{c}`");
        let on: Vec<String> = keys
            .iter()
            .map(|key| {
                let k = q(key);
                match null_keys.contains(key) {
                    true => format!("(T.{k} = S.{k} OR (T.{k} IS NULL AND S.{k} IS NULL))"),
                    false => format!("T.{k} = S.{k}"),
                }
            })
            .collect();
        let on = if on.is_empty() {
            "TRUE".to_string()
        } else {
            on.join(" AND ")
        };
        let deleted = q(crate::sink::DELETED);
        let mut sql = format!(
            "MERGE {} T\nUSING {} S\nON {on}\nWHEN MATCHED AND S.{deleted} THEN DELETE\n",
            name(table),
            name(stage)
        );
        let values: Vec<String> = columns
            .iter()
            .filter(|c| !keys.contains(c))
            .map(|c| format!("{} = S.{}", q(c), q(c)))
            .collect();
        if !values.is_empty() {
            sql.push_str(&format!(
                "WHEN MATCHED THEN UPDATE SET {}\n",
                values.join(", ")
            ));
        }
        let cols: Vec<String> = columns.iter().map(|c| q(c)).collect();
        let vals: Vec<String> = columns.iter().map(|c| format!("S.{}", q(c))).collect();
        sql.push_str(&format!(
            "WHEN NOT MATCHED AND NOT S.{deleted} THEN INSERT ({}) VALUES ({})",
            cols.join(", "),
            vals.join(", ")
        ));
        sql
    }

    fn job_reference(&self, id: &str) -> JobReference {
        JobReference {
            job_id: Some(id.to_string()),
            location: Some(self.location.clone()),
            project_id: Some(self.project.clone()),
        }
    }

    async fn job_state(&self, client: &Client, id: &str) -> Result<JobState, LoadError> {
        match client
            .job()
            .get_job(&self.project, id, Some(&self.location))
            .await
        {
            Err(e) if status(&e) == Some(404) => Ok(JobState::Missing),
            Err(e) => Err(self.fail(format!("job {id}: {e}"))),
            Ok(job) => {
                let st = job.status.unwrap_or_default();
                if st.state.as_deref() != Some("DONE") {
                    return Ok(JobState::Running);
                }
                Ok(match st.error_result {
                    None => JobState::Done,
                    Some(e) => {
                        let detail: Vec<String> = st
                            .errors
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|e| e.message)
                            .collect();
                        JobState::Failed(format!(
                            "job {id}: {}{}",
                            e.message.unwrap_or_default(),
                            if detail.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", detail.join("; "))
                            }
                        ))
                    }
                })
            }
        }
    }
}

enum JobState {
    Missing,
    Running,
    Done,
    Failed(String),
}

/// The HTTP status of an API error.
fn status(e: &BQError) -> Option<i64> {
    match e {
        BQError::ResponseError { error } => Some(error.error.code),
        _ => None,
    }
}

fn field_type(t: &str) -> FieldType {
    match t {
        "BOOL" => FieldType::Bool,
        "INT64" => FieldType::Int64,
        "FLOAT64" => FieldType::Float64,
        "STRING" => FieldType::String,
        "BYTES" => FieldType::Bytes,
        "DATE" => FieldType::Date,
        "TIMESTAMP" => FieldType::Timestamp,
        "DATETIME" => FieldType::Datetime,
        "BIGNUMERIC" => FieldType::Bignumeric,
        _ => FieldType::Numeric,
    }
}

fn type_name(t: &FieldType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn fields(cols: &[(String, String)]) -> Vec<TableFieldSchema> {
    cols.iter()
        .map(|(n, ty)| TableFieldSchema::new(n, field_type(ty)))
        .collect()
}

#[async_trait]
impl Catalog for BigQuery {
    fn destination(&self) -> &'static str {
        NAME
    }

    fn warehouse(&self) -> Warehouse {
        Warehouse::BigQuery
    }

    async fn columns(&self, t: &OutputTable) -> Result<Option<Vec<(String, String)>>, LoadError> {
        let (client, _) = self.client().await?;
        match client
            .table()
            .get(&self.project, &self.dataset, &t.name, None)
            .await
        {
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.fail(format!("table {}: {e}", t.name))),
            Ok(existing) => Ok(Some(
                existing
                    .schema
                    .fields
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|f| (f.name.clone(), type_name(&f.r#type)))
                    .collect(),
            )),
        }
    }

    async fn create(&self, t: &OutputTable, columns: &[(String, String)]) -> Result<(), LoadError> {
        let (client, _) = self.client().await?;
        let mut table = Table::new(
            &self.project,
            &self.dataset,
            &t.name,
            TableSchema::new(fields(columns)),
        );
        if let Some(col) = t.time_partition() {
            let mut tp = TimePartitioning::per_day();
            tp.field = Some(col.to_string());
            table = table.time_partitioning(tp);
        }
        match client.table().create(table).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(self.fail(format!("creating table {}: {e}", t.name))),
        }
    }

    async fn add_columns(
        &self,
        t: &OutputTable,
        added: &[(String, String)],
        _all: &[(String, String)],
    ) -> Result<(), LoadError> {
        let (client, _) = self.client().await?;
        let existing = client
            .table()
            .get(&self.project, &self.dataset, &t.name, None)
            .await
            .map_err(|e| self.fail(format!("table {}: {e}", t.name)))?;
        let mut all = existing.schema.fields.clone().unwrap_or_default();
        all.extend(fields(added));
        let mut patch = existing.clone();
        patch.schema = TableSchema::new(all);
        client
            .table()
            .patch(&self.project, &self.dataset, &t.name, patch)
            .await
            .map_err(|e| self.fail(format!("adding columns to {}: {e}", t.name)))?;
        Ok(())
    }
}

#[async_trait]
impl Destination for BigQuery {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, tables: &[OutputTable]) -> Result<(), LoadError> {
        let (client, _) = self.client().await?;
        match client.dataset().get(&self.project, &self.dataset).await {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {
                let ds = Dataset::new(&self.project, &self.dataset).location(&self.location);
                match client.dataset().create(ds).await {
                    Ok(_) => {}
                    Err(e) if status(&e) == Some(409) => {}
                    Err(e) => {
                        return Err(self.fail(format!("creating dataset {}: {e}", self.dataset)));
                    }
                }
            }
            Err(e) => return Err(self.fail(format!("dataset {}: {e}", self.dataset))),
        }
        prepare_tables(self, tables).await
    }

    async fn ping(&self) -> Result<(), LoadError> {
        let (client, _) = self.client().await?;
        match client.dataset().get(&self.project, &self.dataset).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e).is_some_and(|s| s < 500) => Ok(()),
            Err(e) => Err(self.fail(format!("dataset {}: {e}", self.dataset))),
        }
    }

    async fn load(&self, batch: &CommitRecord) -> Result<(), LoadError> {
        // A backfill's files get their own ids (`s<batch>`): they are not the batch's files.
        let key = match batch.backfill {
            true => format!("s{}", batch.batch),
            false => batch.batch.to_string(),
        };
        for table in batch.rows.keys() {
            let files: Vec<&WrittenFile> =
                batch.files.iter().filter(|f| &f.table == table).collect();
            if let Some(Upsert::Changes { keys, null_keys }) =
                files.first().and_then(|f| f.upsert.as_ref())
            {
                self.merge_changes(table, &key, &files, keys, null_keys)
                    .await?;
                continue;
            }
            // An update output's backfill replaces its rows: a DELETE job first (a truncating
            // load would also replace the table's schema with the file's).
            if files
                .first()
                .is_some_and(|f| f.upsert == Some(Upsert::Contents))
            {
                let id_of = |attempt| self.job_id(table, &format!("{key}_clear"), 0, attempt);
                let sql = format!(
                    "DELETE FROM `{}.{}.{table}` WHERE TRUE",
                    self.project, self.dataset
                );
                self.query_once(&format!("{table}: clearing"), id_of, &sql)
                    .await?;
            }
            for (i, file) in files.iter().enumerate() {
                let id_of = |attempt| self.job_id(table, &key, i, attempt);
                self.load_file(table, id_of, file).await?;
            }
        }
        Ok(())
    }
}

/// No credentials: for emulators only.
#[derive(Clone)]
struct Anonymous;

#[async_trait]
impl Authenticator for Anonymous {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok(String::new())
    }
}

/// Google application-default credentials: `GOOGLE_APPLICATION_CREDENTIALS`, or the metadata server.
#[derive(Clone)]
struct ApplicationDefault(yup_oauth2::authenticator::DefaultAuthenticator);

impl ApplicationDefault {
    async fn new() -> std::io::Result<Self> {
        use yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes as Kind;
        let opts = yup_oauth2::ApplicationDefaultCredentialsFlowOpts::default();
        let auth = match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(opts).await
        {
            Kind::InstanceMetadata(b) => b.build().await?,
            Kind::ServiceAccount(b) => b.build().await?,
        };
        Ok(Self(auth))
    }
}

#[async_trait]
impl Authenticator for ApplicationDefault {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok(self
            .0
            .token(&[SCOPE])
            .await?
            .token()
            .ok_or(BQError::NoToken)?
            .to_string())
    }
}
