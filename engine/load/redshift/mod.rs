//! Amazon Redshift: per batch and table, a manifest in the lake listing exactly the batch's Parquet
//! files, then `COPY ... FORMAT AS PARQUET MANIFEST` in one transaction with the load ledger
//! (shared with PostgreSQL in `postgres::wire`). Redshift reads the files itself, with its IAM role.

use async_trait::async_trait;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;
use tokio_postgres::Transaction;

use super::catalog::mapped_columns;
use super::postgres::wire::{CopyTable, Ledger, WireLoader, quote_ident, quote_literal};
use super::types::Warehouse;
use super::{Destination, LakeFiles, LoadError, OutputTable};
use crate::commit::CommitRecord;
use crate::job::RedshiftConfig;
use crate::sink::WrittenFile;
use crate::sink::lake::Layout;

const NAME: &str = "redshift";

pub struct Redshift {
    wire: WireLoader,
    job: String,
    lake: LakeFiles,
    iam_role: String,
    region: Option<String>,
}

impl Redshift {
    pub fn new(c: &RedshiftConfig, job: &str, lake: LakeFiles) -> Self {
        let env = c.password_env.as_deref().unwrap_or("REDSHIFT_PASSWORD");
        let wire = WireLoader::new(
            NAME,
            Warehouse::Redshift,
            &c.url,
            env,
            c.schema.as_deref(),
            job,
            &lake.lake_id,
        );
        Self {
            wire,
            job: job.to_string(),
            lake,
            iam_role: c.iam_role.clone(),
            region: c.region.clone(),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        self.wire.ledger()
    }

    /// Where the manifest of one batch and table goes, relative to the lake root.
    pub fn manifest_path(&self, batch: u64, table: &str) -> String {
        Layout::new(&self.job).manifest(batch, table)
    }

    /// The manifest listing exactly `files` (Parquet needs each file's length).
    pub fn manifest(&self, files: &[&WrittenFile]) -> String {
        let entries: Vec<_> = files
            .iter()
            .map(|f| {
                json!({
                    "url": self.lake.url_of(&f.path),
                    "mandatory": true,
                    "meta": { "content_length": f.bytes },
                })
            })
            .collect();
        serde_json::to_string_pretty(&json!({ "entries": entries })).expect("json")
    }

    /// The COPY of one batch's files of `table`, through its manifest.
    pub fn copy_statement(&self, table: &str, manifest_url: &str) -> String {
        let into = format!(
            "{}.{}",
            quote_ident(self.ledger().schema()),
            quote_ident(table)
        );
        self.copy_into(&into, manifest_url)
    }

    /// The COPY of a manifest's files into `into` (a table's SQL name).
    pub fn copy_into(&self, into: &str, manifest_url: &str) -> String {
        let mut sql = format!(
            "COPY {into}\nFROM {}\nIAM_ROLE {}\nFORMAT AS PARQUET\nMANIFEST",
            quote_literal(manifest_url),
            quote_literal(&self.iam_role)
        );
        if let Some(r) = &self.region {
            sql.push_str(&format!("\nREGION {}", quote_literal(r)));
        }
        sql
    }

    /// The DDL `prepare` runs on a new cluster, in order.
    pub fn create_statements(&self, tables: &[OutputTable]) -> Result<Vec<String>, LoadError> {
        let mut out = vec![self.ledger().create_schema(), self.ledger().create()];
        for t in tables {
            let cols = mapped_columns(NAME, Warehouse::Redshift, t)?;
            out.push(self.ledger().create_table(&t.name, &cols));
        }
        Ok(out)
    }
}

#[async_trait]
impl Destination for Redshift {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, tables: &[OutputTable]) -> Result<(), LoadError> {
        self.wire.prepare(tables).await
    }

    async fn ping(&self) -> Result<(), LoadError> {
        self.wire.ping().await
    }

    async fn load(&self, batch: &CommitRecord) -> Result<(), LoadError> {
        let copier = ManifestCopy {
            redshift: self,
            batch: batch.batch,
        };
        self.wire.load(batch, &copier).await
    }
}

struct ManifestCopy<'a> {
    redshift: &'a Redshift,
    batch: u64,
}

#[async_trait]
impl CopyTable for ManifestCopy<'_> {
    async fn copy(
        &self,
        tx: &Transaction<'_>,
        into: &str,
        table: &str,
        files: &[&WrittenFile],
    ) -> Result<(), LoadError> {
        let r = self.redshift;
        let path = r.manifest_path(self.batch, table);
        r.lake
            .store
            .put(&r.lake.path(&path), PutPayload::from(r.manifest(files)))
            .await
            .map_err(|e| LoadError::failed(NAME, format!("writing manifest {path}: {e}")))?;
        let sql = r.copy_into(into, &r.lake.url_of(&path));
        tx.batch_execute(&sql).await.map_err(|e| {
            LoadError::failed(
                NAME,
                format!(
                    "{table}: {} (see STL_LOAD_ERRORS)",
                    super::postgres::wire::error_text(&e)
                ),
            )
        })
    }
}
