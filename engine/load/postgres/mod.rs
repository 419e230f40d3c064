//! PostgreSQL / Aurora: each batch's rows are read back from the lake's Parquet files and sent with
//! `COPY ... FROM STDIN (FORMAT binary)`, in one transaction with the load ledger. Redshift shares
//! the connection, DDL, ledger and transaction logic here (`wire`), and differs only in its COPY.

pub mod binary;
pub mod wire;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::mpsc;
use tokio_postgres::Transaction;

use super::types::Warehouse;
use super::{Destination, LakeFiles, LoadError, OutputTable};
use crate::commit::CommitRecord;
use crate::job::PostgresConfig;
use crate::sink::WrittenFile;
use wire::{CopyTable, WireLoader, quote_ident};

const NAME: &str = "postgres";
/// Encoded COPY data per message sent to the server.
const CHUNK_BYTES: usize = 1 << 20;

pub struct Postgres {
    wire: WireLoader,
    lake: LakeFiles,
}

impl Postgres {
    pub fn new(c: &PostgresConfig, job: &str, lake: LakeFiles) -> Self {
        let env = c.password_env.as_deref().unwrap_or("PGPASSWORD");
        let wire = WireLoader::new(
            NAME,
            Warehouse::Postgres,
            &c.url,
            env,
            c.schema.as_deref(),
            job,
            &lake.lake_id,
        );
        Self { wire, lake }
    }
}

#[async_trait]
impl Destination for Postgres {
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
        let copier = BinaryCopy { lake: &self.lake };
        self.wire.load(batch, &copier).await
    }
}

/// Streams a table's files of one batch with binary COPY.
struct BinaryCopy<'a> {
    lake: &'a LakeFiles,
}

#[async_trait]
impl CopyTable for BinaryCopy<'_> {
    async fn copy(
        &self,
        tx: &Transaction<'_>,
        into: &str,
        table: &str,
        files: &[&WrittenFile],
    ) -> Result<(), LoadError> {
        let fail = |m: String| LoadError::failed(NAME, m);
        for file in files {
            let data = self
                .lake
                .read(&file.path)
                .await
                .map_err(|e| fail(format!("reading {}: {e}", file.path)))?;
            let columns =
                parquet_columns(&data).map_err(|e| fail(format!("{}: {e}", file.path)))?;
            let statement = format!(
                "COPY {into} ({}) FROM STDIN (FORMAT binary)",
                columns
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let sink = tx
                .copy_in::<_, Bytes>(&statement)
                .await
                .map_err(|e| fail(format!("{table}: {}", wire::error_text(&e))))?;
            let (chunks_tx, mut chunks) = mpsc::channel::<Result<Bytes, String>>(4);
            let path = file.path.clone();
            let encoder = tokio::task::spawn_blocking(move || encode_file(data, &path, chunks_tx));
            futures::pin_mut!(sink);
            while let Some(chunk) = chunks.recv().await {
                let chunk = chunk.map_err(fail)?;
                sink.send(chunk)
                    .await
                    .map_err(|e| fail(format!("{table}: {}", wire::error_text(&e))))?;
            }
            encoder.await.expect("encoder panicked");
            sink.as_mut()
                .finish()
                .await
                .map_err(|e| fail(format!("{table} ({}): {}", file.path, wire::error_text(&e))))?;
        }
        Ok(())
    }
}

fn parquet_columns(data: &Bytes) -> Result<Vec<String>, parquet::errors::ParquetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone())?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

/// Decodes a Parquet file and sends its rows as binary COPY data, about `CHUNK_BYTES` at a time.
fn encode_file(data: Bytes, path: &str, tx: mpsc::Sender<Result<Bytes, String>>) {
    let send = |r| tx.blocking_send(r).is_ok();
    let reader = match ParquetRecordBatchReaderBuilder::try_new(data).and_then(|b| b.build()) {
        Ok(r) => r,
        Err(e) => {
            send(Err(format!("{path}: {e}")));
            return;
        }
    };
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
    buf.extend_from_slice(binary::HEADER);
    for batch in reader {
        let encoded = batch
            .map_err(|e| e.to_string())
            .and_then(|b| binary::encode(&b, &mut buf).map_err(|e| e.to_string()));
        if let Err(e) = encoded {
            send(Err(format!("{path}: {e}")));
            return;
        }
        if buf.len() >= CHUNK_BYTES && !send(Ok(buf.split().freeze())) {
            return;
        }
    }
    buf.extend_from_slice(binary::TRAILER);
    send(Ok(buf.freeze()));
}
