//! What PostgreSQL and Redshift share over the PostgreSQL wire protocol: connecting (TLS with
//! rustls when the server offers it, `sslmode` from the URL), the DDL, table evolution and the load
//! ledger, in one transaction per batch:
//!
//! ```sql
//! BEGIN; LOCK TABLE ledger;
//! -- per table: skip if (job, table, batch) is in the ledger, else
//! COPY ...; INSERT INTO ledger ...;
//! COMMIT;
//! ```
//! A retry or a replay of a batch already in the ledger loads nothing. The ledger's primary key is
//! enforced by PostgreSQL and informational in Redshift, so the explicit check under the lock is
//! what keeps Redshift exact.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::{Client, Config, Transaction};

use crate::commit::CommitRecord;
use crate::load::catalog::{Catalog, prepare_tables};
use crate::load::types::Warehouse;
use crate::load::{LoadError, OutputTable};
use crate::sink::WrittenFile;

/// The ledger table, in the configured schema.
pub const LEDGER_TABLE: &str = "_weir_loads";

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The error text a user needs: the server's message and detail, not just "db error".
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// The SQL text of the load ledger in one schema (identical for PostgreSQL and Redshift).
#[derive(Debug, Clone)]
pub struct Ledger {
    schema: String,
    /// The lake's identity: a key column, so a new lake for the same job loads again.
    lake: String,
}

impl Ledger {
    pub fn new(schema: &str, lake: &str) -> Self {
        Self {
            schema: schema.to_string(),
            lake: lake.to_string(),
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn table(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(LEDGER_TABLE)
        )
    }

    pub fn create_schema(&self) -> String {
        format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&self.schema))
    }

    pub fn create(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n    lake_id VARCHAR(64) NOT NULL,\n    job VARCHAR(256) NOT NULL,\n    table_name VARCHAR(256) NOT NULL,\n    batch BIGINT NOT NULL,\n    row_count BIGINT NOT NULL,\n    file_count INTEGER NOT NULL,\n    loaded_at TIMESTAMP NOT NULL,\n    PRIMARY KEY (lake_id, job, table_name, batch)\n)",
            self.table()
        )
    }

    /// Adds the `lake_id` column to a ledger made before lakes had identities.
    pub fn add_lake_column(&self) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN lake_id VARCHAR(64) NOT NULL DEFAULT ''",
            self.table()
        )
    }

    pub fn lock(&self) -> String {
        format!("LOCK TABLE {}", self.table())
    }

    pub fn loaded(&self, job: &str, table: &str, batch: u64) -> String {
        format!(
            "SELECT 1 FROM {} WHERE lake_id = {} AND job = {} AND table_name = {} AND batch = {batch}",
            self.table(),
            quote_literal(&self.lake),
            quote_literal(job),
            quote_literal(table)
        )
    }

    pub fn insert(
        &self,
        job: &str,
        table: &str,
        batch: u64,
        rows: u64,
        files: usize,
        at: chrono::DateTime<chrono::Utc>,
    ) -> String {
        format!(
            "INSERT INTO {} (lake_id, job, table_name, batch, row_count, file_count, loaded_at) VALUES ({}, {}, {}, {batch}, {rows}, {files}, TIMESTAMP '{}')",
            self.table(),
            quote_literal(&self.lake),
            quote_literal(job),
            quote_literal(table),
            at.format("%Y-%m-%d %H:%M:%S%.6f")
        )
    }

    /// `CREATE TABLE IF NOT EXISTS` for an output, with mapped types.
    pub fn create_table(&self, table: &str, columns: &[(String, String)]) -> String {
        let cols: Vec<String> = columns
            .iter()
            .map(|(n, t)| format!("    {} {t}", quote_ident(n)))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {}.{} (\n{}\n)",
            quote_ident(&self.schema),
            quote_ident(table),
            cols.join(",\n")
        )
    }

    pub fn add_column(&self, table: &str, column: &str, ty: &str) -> String {
        format!(
            "ALTER TABLE {}.{} ADD COLUMN {} {ty}",
            quote_ident(&self.schema),
            quote_ident(table),
            quote_ident(column)
        )
    }

    /// Columns of an existing table and their types as `format_type` spells them.
    pub fn columns(&self, table: &str) -> String {
        format!(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)::text FROM pg_attribute a \
             JOIN pg_class c ON a.attrelid = c.oid JOIN pg_namespace n ON c.relnamespace = n.oid \
             WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            quote_literal(&self.schema),
            quote_literal(table)
        )
    }
}

/// Copies one table's files of a batch inside the batch's transaction, into `into` (the SQL name
/// of the output's table, or of the staging table of an update output).
#[async_trait]
pub trait CopyTable: Sync {
    async fn copy(
        &self,
        tx: &Transaction<'_>,
        into: &str,
        table: &str,
        files: &[&WrittenFile],
    ) -> Result<(), LoadError>;
}

/// How an update output's batch replaces rows, in one transaction with the ledger (Redshift's
/// documented upsert; PostgreSQL runs the same SQL): its change file is copied into a staging
/// table, the target's rows of every key in it are deleted, and the new rows inserted.
pub struct Upsert<'a> {
    pub ledger: &'a Ledger,
    pub table: &'a str,
}

impl Upsert<'_> {
    pub fn target(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.ledger.schema),
            quote_ident(self.table)
        )
    }

    /// The staging table (temporary, so private to the session).
    pub fn stage(&self) -> String {
        quote_ident(&format!("_weir_stage_{}", self.table))
    }

    /// Creates the staging table: the target's columns (without their constraints: a deleted
    /// key's row has only its key), then `_weir_deleted`. It is dropped once applied, or with
    /// the transaction.
    pub fn create_stage(&self) -> String {
        format!(
            "CREATE TEMP TABLE {stage} AS SELECT * FROM {target} WHERE 1 = 0;\nALTER TABLE {stage} ADD COLUMN {deleted} BOOLEAN",
            stage = self.stage(),
            target = self.target(),
            deleted = quote_ident(crate::sink::DELETED)
        )
    }

    /// Deletes the target's rows of every staged key, then inserts the staged rows that are not
    /// deletions. Keys in `null_keys` (NULL in some staged row) match NULL to NULL; the others
    /// are plain equalities, so the delete can be a hash join. `columns`: the target's columns.
    pub fn apply(&self, keys: &[String], null_keys: &[String], columns: &[String]) -> String {
        // Redshift's DELETE takes no alias: columns are named by their tables.
        let (t, s) = (quote_ident(self.table), self.stage());
        let on: Vec<String> = keys
            .iter()
            .map(|key| {
                let k = quote_ident(key);
                match null_keys.contains(key) {
                    true => format!("({t}.{k} = {s}.{k} OR ({t}.{k} IS NULL AND {s}.{k} IS NULL))"),
                    false => format!("{t}.{k} = {s}.{k}"),
                }
            })
            .collect();
        let on = if on.is_empty() {
            "TRUE".to_string()
        } else {
            on.join(" AND ")
        };
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "DELETE FROM {target} USING {stage} WHERE {on};\nINSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} WHERE NOT COALESCE({deleted}, FALSE);\nDROP TABLE {stage}",
            target = self.target(),
            stage = self.stage(),
            cols = cols.join(", "),
            deleted = quote_ident(crate::sink::DELETED)
        )
    }

    /// A backfill of an update output: its contents replace every row.
    pub fn clear(&self) -> String {
        format!("DELETE FROM {}", self.target())
    }
}

/// Parses a connection URL. `sslmode` follows libpq: `disable`; `prefer` (the default) and `require`
/// encrypt without checking the server's certificate; `verify-ca` and `verify-full` also check it
/// against the Mozilla roots (and the host name). Returns the config and whether to verify.
pub fn parse_url(url: &str) -> Result<(Config, bool), String> {
    let verify = url.contains("sslmode=verify-full") || url.contains("sslmode=verify-ca");
    let url = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let config: Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| e.to_string())?;
    Ok((config, verify))
}

/// Connects with TLS when the server offers it, or requires it (`sslmode`, see `parse_url`).
pub async fn connect(
    destination: &'static str,
    url: &str,
    password_env: &str,
) -> Result<Client, LoadError> {
    let (mut config, verify) =
        parse_url(url).map_err(|e| LoadError::failed(destination, format!("{url}: {e}")))?;
    if let Ok(password) = std::env::var(password_env) {
        config.password(password);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::failed(destination, e))?;
    let tls = if verify {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        LoadError::failed(
            destination,
            format!("connecting to {url}: {}", error_text(&e)),
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// libpq's `prefer` / `require`: the session is encrypted, the certificate chain is not checked
/// (handshake signatures still are).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A lazily (re)connected client: a failed statement drops it, the next attempt reconnects.
pub struct Connection {
    destination: &'static str,
    url: String,
    password_env: String,
    client: Option<Client>,
}

impl Connection {
    pub fn new(destination: &'static str, url: &str, password_env: &str) -> Self {
        Self {
            destination,
            url: url.to_string(),
            password_env: password_env.to_string(),
            client: None,
        }
    }

    async fn client(&mut self) -> Result<&mut Client, LoadError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(connect(self.destination, &self.url, &self.password_env).await?);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    fn fail(&mut self, what: &str, e: tokio_postgres::Error) -> LoadError {
        self.client = None;
        LoadError::failed(self.destination, format!("{what}: {}", error_text(&e)))
    }

    /// Creates the schema and the ledger (adding `lake_id` to a ledger made before it).
    pub async fn prepare_ledger(&mut self, ledger: &Ledger) -> Result<(), LoadError> {
        let client = self.client().await?;
        let r = async {
            client.batch_execute(&ledger.create_schema()).await?;
            client.batch_execute(&ledger.create()).await?;
            let has_lake = client
                .query(&ledger.columns(LEDGER_TABLE), &[])
                .await?
                .iter()
                .any(|r| r.get::<_, String>(0) == "lake_id");
            if !has_lake {
                client.batch_execute(&ledger.add_lake_column()).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        r.map_err(|e| self.fail("preparing the load ledger", e))
    }

    /// Whether the server answers at all: `SELECT 1`.
    pub async fn ping(&mut self) -> Result<(), LoadError> {
        let client = self.client().await?;
        if let Err(e) = client.simple_query("SELECT 1").await {
            return Err(self.fail("SELECT 1", e));
        }
        Ok(())
    }

    /// Columns of a table (`format_type` spelling); empty when it does not exist.
    async fn columns(
        &mut self,
        ledger: &Ledger,
        table: &str,
    ) -> Result<Vec<(String, String)>, LoadError> {
        let client = self.client().await?;
        match client.query(&ledger.columns(table), &[]).await {
            Ok(rows) => Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
            Err(e) => Err(self.fail(&format!("reading the columns of {table}"), e)),
        }
    }

    async fn execute(&mut self, statement: &str) -> Result<(), LoadError> {
        let client = self.client().await?;
        if let Err(e) = client.batch_execute(statement).await {
            return Err(self.fail(statement, e));
        }
        Ok(())
    }

    /// Loads every output table of a committed batch in one transaction with the ledger.
    pub async fn load_batch(
        &mut self,
        ledger: &Ledger,
        job: &str,
        batch: &CommitRecord,
        copier: &dyn CopyTable,
    ) -> Result<(), LoadError> {
        let destination = self.destination;
        let client = self.client().await?;
        let result: Result<Result<(), LoadError>, tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            tx.batch_execute(&ledger.lock()).await?;
            for (table, rows) in &batch.rows {
                let files: Vec<&WrittenFile> =
                    batch.files.iter().filter(|f| &f.table == table).collect();
                if files.is_empty() {
                    continue;
                }
                if tx
                    .query_opt(&ledger.loaded(job, table, batch.batch), &[])
                    .await?
                    .is_some()
                {
                    tracing::info!(
                        destination,
                        table,
                        batch = batch.batch,
                        "already in the load ledger; skipped"
                    );
                    continue;
                }
                let target = Upsert { ledger, table };
                let copied = match files.first().and_then(|f| f.upsert.as_ref()) {
                    None => copier.copy(&tx, &target.target(), table, &files).await,
                    Some(crate::sink::Upsert::Contents) => {
                        tx.batch_execute(&target.clear()).await?;
                        copier.copy(&tx, &target.target(), table, &files).await
                    }
                    Some(crate::sink::Upsert::Changes { keys, null_keys }) => {
                        tx.batch_execute(&target.create_stage()).await?;
                        match copier.copy(&tx, &target.stage(), table, &files).await {
                            Ok(()) => {
                                let columns: Vec<String> = tx
                                    .query(&ledger.columns(table), &[])
                                    .await?
                                    .iter()
                                    .map(|r| r.get(0))
                                    .collect();
                                tx.batch_execute(&target.apply(keys, null_keys, &columns))
                                    .await?;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                if let Err(e) = copied {
                    return Ok(Err(e));
                }
                tx.batch_execute(&ledger.insert(
                    job,
                    table,
                    batch.batch,
                    *rows,
                    files.len(),
                    chrono::Utc::now(),
                ))
                .await?;
            }
            tx.commit().await?;
            Ok(Ok(()))
        }
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.client = None;
                Err(e)
            }
            Err(e) => Err(self.fail(&format!("loading batch {}", batch.batch), e)),
        }
    }
}

/// What a PostgreSQL-protocol destination (PostgreSQL, Redshift) is apart from its COPY: one
/// connection, the ledger in its schema, the job.
pub struct WireLoader {
    destination: &'static str,
    conn: tokio::sync::Mutex<Connection>,
    ledger: Ledger,
    job: String,
    warehouse: Warehouse,
}

impl WireLoader {
    /// `password_env` and `schema` fall back to the given default variable and `public`.
    pub fn new(
        destination: &'static str,
        warehouse: Warehouse,
        url: &str,
        password_env: &str,
        schema: Option<&str>,
        job: &str,
        lake_id: &str,
    ) -> Self {
        Self {
            destination,
            conn: tokio::sync::Mutex::new(Connection::new(destination, url, password_env)),
            ledger: Ledger::new(schema.unwrap_or("public"), lake_id),
            job: job.to_string(),
            warehouse,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Creates the schema and the ledger, then each output table (or evolves it).
    pub async fn prepare(&self, tables: &[OutputTable]) -> Result<(), LoadError> {
        self.conn.lock().await.prepare_ledger(&self.ledger).await?;
        prepare_tables(self, tables).await
    }

    pub async fn ping(&self) -> Result<(), LoadError> {
        self.conn.lock().await.ping().await
    }

    pub async fn load(
        &self,
        batch: &CommitRecord,
        copier: &dyn CopyTable,
    ) -> Result<(), LoadError> {
        let mut conn = self.conn.lock().await;
        conn.load_batch(&self.ledger, &self.job, batch, copier)
            .await
    }
}

#[async_trait]
impl Catalog for WireLoader {
    fn destination(&self) -> &'static str {
        self.destination
    }

    fn warehouse(&self) -> Warehouse {
        self.warehouse
    }

    async fn columns(&self, t: &OutputTable) -> Result<Option<Vec<(String, String)>>, LoadError> {
        let cols = self
            .conn
            .lock()
            .await
            .columns(&self.ledger, &t.name)
            .await?;
        Ok((!cols.is_empty()).then_some(cols))
    }

    async fn create(&self, t: &OutputTable, columns: &[(String, String)]) -> Result<(), LoadError> {
        let statement = self.ledger.create_table(&t.name, columns);
        self.conn.lock().await.execute(&statement).await
    }

    async fn add_columns(
        &self,
        t: &OutputTable,
        added: &[(String, String)],
        _all: &[(String, String)],
    ) -> Result<(), LoadError> {
        let mut conn = self.conn.lock().await;
        for (c, ty) in added {
            conn.execute(&self.ledger.add_column(&t.name, c, ty))
                .await?;
        }
        Ok(())
    }
}
