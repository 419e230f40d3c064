//! One Parquet file written to object storage, each row group's columns encoded in parallel
//! (parquet's `ArrowColumnWriter`, as DataFusion's parallel Parquet sink does): the encoded row
//! group is appended to the file and its bytes handed to a multipart upload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use tokio::io::AsyncWriteExt;

/// Encoded bytes a file's upload holds before it sends them (as one part of a multipart upload;
/// S3 takes parts of 5 MiB or more).
pub const UPLOAD_BUFFER: usize = 10 << 20;
/// Parts of one file uploaded at once, each holding its bytes until it is sent (object_store's
/// default of 8 held up to 80 MiB per open file while encoding outran the writes).
const UPLOAD_PARTS: usize = 2;

/// The upload of one new file, holding what it has not sent yet in parts of `UPLOAD_BUFFER`, at
/// most `UPLOAD_PARTS` of them on their way at once (every file the lake writes: batch files and
/// compaction's merged files).
pub fn upload(store: Arc<dyn ObjectStore>, path: Path) -> BufWriter {
    BufWriter::with_capacity(store, path, UPLOAD_BUFFER).with_max_concurrency(UPLOAD_PARTS)
}

/// A Parquet file being written: row groups go out as they are encoded.
pub struct ParquetFile {
    writer: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    out: BufWriter,
    row_groups: usize,
    rows: u64,
}

impl ParquetFile {
    pub fn create(
        store: Arc<dyn ObjectStore>,
        path: Path,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<Self> {
        let (writer, factory) = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?
            .into_serialized_writer()?;
        Ok(Self {
            writer,
            factory,
            schema,
            out: upload(store, path),
            row_groups: 0,
            rows: 0,
        })
    }

    /// Bytes of the file so far.
    pub fn bytes_written(&self) -> u64 {
        self.writer.bytes_written() as u64
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Encodes `batches` as one row group, its columns on parallel threads, and sends it out.
    pub async fn write_row_group(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let writers = self.factory.create_column_writers(self.row_groups)?;
        let (schema, owned) = (self.schema.clone(), batches.to_vec());
        let chunks = tokio::task::spawn_blocking(move || encode(writers, &schema, &owned))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let mut group = self.writer.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        self.row_groups += 1;
        self.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        send(&mut self.writer, &mut self.out)
            .await
            .map_err(external)
    }

    /// Writes the footer and completes the upload; returns the file's size.
    pub async fn close(mut self) -> Result<u64> {
        self.writer.finish()?;
        let size = self.writer.bytes_written() as u64;
        let tail = std::mem::take(self.writer.inner_mut());
        self.out.write_all(&tail).await.map_err(external)?;
        self.out.shutdown().await.map_err(external)?;
        Ok(size)
    }
}

/// Hands what `writer` has written since the last call (whole row groups) to the upload `out`.
/// The writer keeps its buffer for the next row group: a new one grew by doubling to the row
/// group's size, leaving freed buffers of every size behind.
pub(super) async fn send(
    writer: &mut SerializedFileWriter<Vec<u8>>,
    out: &mut BufWriter,
) -> std::io::Result<()> {
    writer.flush()?;
    let mut bytes = std::mem::take(writer.inner_mut());
    out.write_all(&bytes).await?;
    bytes.clear();
    *writer.inner_mut() = bytes;
    Ok(())
}

/// An I/O error of the upload, as the Parquet writer's error.
pub(super) fn external(e: std::io::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// A column's writer and the leaves it encodes.
type Job = (ArrowColumnWriter, Vec<ArrowLeafColumn>);

/// Encodes each leaf column of `batches` with its writer, the largest columns first, on as many
/// threads as there are cores; returns the chunks in column order.
fn encode(
    writers: Vec<ArrowColumnWriter>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<ArrowColumnChunk>> {
    let mut leaves: Vec<Vec<ArrowLeafColumn>> = writers.iter().map(|_| Vec::new()).collect();
    let mut cost = vec![0usize; writers.len()];
    for batch in batches {
        let mut at = 0;
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, column)? {
                cost[at] += column.get_array_memory_size();
                leaves[at].push(leaf);
                at += 1;
            }
        }
    }
    let mut order: Vec<usize> = (0..writers.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost[i]));
    let jobs: Vec<Mutex<Option<Job>>> = writers
        .into_iter()
        .zip(leaves)
        .map(|job| Mutex::new(Some(job)))
        .collect();
    let done: Vec<Mutex<Option<Result<ArrowColumnChunk>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = order.get(n) else { break };
            let (mut writer, leaves) = jobs[i].lock().expect("job").take().expect("taken once");
            let chunk = leaves
                .iter()
                .try_for_each(|leaf| writer.write(leaf))
                .and_then(|()| writer.close());
            *done[i].lock().expect("result") = Some(chunk);
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(order.len());
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    done.into_iter()
        .map(|d| {
            d.into_inner()
                .expect("result")
                .expect("every column encoded")
        })
        .collect()
}
