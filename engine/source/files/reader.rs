//! Blocking record reader for one input file: decompression, line numbering, chunking.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::mpsc;

use super::split::{Framing, Records};
use super::{InputFile, Location};
use crate::source::{Buffers, ChunkLimits, Position, RawChunk, SourceError};

/// Counts the bytes read from the underlying (possibly compressed) file.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn open(file: &InputFile, count: Arc<AtomicU64>) -> std::io::Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> = match &file.location {
        Location::Local(path) => Box::new(std::fs::File::open(path)?),
        Location::Remote(store, path) => {
            let store = store.clone();
            let path = path.clone();
            let handle = tokio::runtime::Handle::current();
            let stream = handle
                .block_on(async move { store.get(&path).await })
                .map_err(std::io::Error::other)?
                .into_stream();
            let reader = tokio_util::io::StreamReader::new(futures::TryStreamExt::map_err(
                stream,
                std::io::Error::other,
            ));
            Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
                reader, handle,
            ))
        }
    };
    let counted = Counting { inner: raw, count };
    const BUF: usize = 1 << 20;
    Ok(if file.key.ends_with(".gz") {
        Box::new(BufReader::with_capacity(
            BUF,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(BUF, counted)),
        ))
    } else {
        Box::new(BufReader::with_capacity(BUF, counted))
    })
}

/// What a chunk buffer holds at most: a chunk's bytes, and the record that goes over them.
pub(super) fn chunk_capacity(limits: ChunkLimits, framing: Framing) -> usize {
    limits.bytes + framing.max_record_bytes.min(limits.bytes) + 4096
}

/// Sends the records starting on lines `after+1 ..= until` of `file` in chunks, in buffers of
/// `buffers`. Returns false when the receiver is gone (the run is stopping).
pub(super) fn read_file(
    file: &InputFile,
    after: u64,
    until: Option<u64>,
    limits: ChunkLimits,
    framing: Framing,
    buffers: &Arc<Buffers>,
    tx: &mpsc::Sender<RawChunk>,
) -> Result<bool, SourceError> {
    let io_err = |source| SourceError::Io {
        file: file.key.clone(),
        source,
    };
    let count = Arc::new(AtomicU64::new(0));
    let mut records = Records::new(open(file, count.clone()).map_err(io_err)?, framing);
    let shard: Arc<str> = file.key.as_str().into();
    let mut sent_bytes = 0u64;
    let mut chunk = buffers.take();
    let mut bounds = Vec::new();
    let mut positions = Vec::new();
    let mut rejected = Vec::new();
    // Lines before the record being read.
    let mut lines = 0u64;
    let mut flush = |chunk: &mut Vec<u8>,
                     bounds: &mut Vec<_>,
                     positions: &mut Vec<_>,
                     rejected: &mut Vec<_>| {
        if bounds.is_empty() {
            return true;
        }
        let read = count.load(Ordering::Relaxed);
        let c = RawChunk {
            shard: shard.clone(),
            data: Bytes::from(std::mem::replace(chunk, buffers.take())),
            bounds: std::mem::replace(bounds, Vec::with_capacity(bounds.len())),
            positions: std::mem::replace(positions, Vec::with_capacity(positions.len())),
            rejected: std::mem::take(rejected),
            arrived_ms: None,
            input_bytes: read - sent_bytes,
            buffers: Some(buffers.clone()),
        };
        sent_bytes = read;
        tx.blocking_send(c).is_ok()
    };
    loop {
        if until.is_some_and(|u| lines >= u) {
            break;
        }
        let start = chunk.len();
        let Some(record) = records.next(&mut chunk).map_err(io_err)? else {
            break;
        };
        let line = lines + 1;
        lines += record.lines;
        let mut end = chunk.len();
        while end > start && chunk[end - 1] == b'\r' {
            end -= 1;
        }
        let blank =
            record.problem.is_none() && chunk[start..end].iter().all(u8::is_ascii_whitespace);
        if line <= after || (framing.header && line == 1) || blank {
            chunk.truncate(start);
            continue;
        }
        chunk.truncate(end);
        chunk.push(b'\n');
        if let Some(problem) = record.problem {
            rejected.push((bounds.len() as u32, problem));
        }
        bounds.push((start as u32, end as u32));
        positions.push(Position::Line(line));
        if (bounds.len() >= limits.records || chunk.len() >= limits.bytes)
            && !flush(&mut chunk, &mut bounds, &mut positions, &mut rejected)
        {
            return Ok(false);
        }
    }
    Ok(flush(
        &mut chunk,
        &mut bounds,
        &mut positions,
        &mut rejected,
    ))
}
