//! Blocking line reader for one input file: decompression, line numbering, chunking.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::mpsc;

use super::{InputFile, Location};
use crate::source::{ChunkLimits, Position, RawChunk, SourceError};

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

/// Sends the records of lines `after+1 ..= until` of `file` in chunks. Returns false when the
/// receiver is gone (the run is stopping).
pub(super) fn read_file(
    file: &InputFile,
    after: u64,
    until: Option<u64>,
    limits: ChunkLimits,
    skip_header: bool,
    tx: &mpsc::Sender<RawChunk>,
) -> Result<bool, SourceError> {
    let io_err = |source| SourceError::Io {
        file: file.key.clone(),
        source,
    };
    let count = Arc::new(AtomicU64::new(0));
    let mut reader = open(file, count.clone()).map_err(io_err)?;
    let shard: Arc<str> = file.key.as_str().into();
    let mut sent_bytes = 0u64;
    let mut chunk = Vec::with_capacity(limits.bytes + 4096);
    let mut bounds = Vec::new();
    let mut positions = Vec::new();
    let mut line_no = 0u64;
    let mut flush = |chunk: &mut Vec<u8>, bounds: &mut Vec<_>, positions: &mut Vec<_>| {
        if bounds.is_empty() {
            return true;
        }
        let read = count.load(Ordering::Relaxed);
        let c = RawChunk {
            shard: shard.clone(),
            data: Bytes::from(std::mem::replace(
                chunk,
                Vec::with_capacity(limits.bytes + 4096),
            )),
            bounds: std::mem::take(bounds),
            positions: std::mem::take(positions),
            rejected: Vec::new(),
            arrived_ms: None,
            input_bytes: read - sent_bytes,
        };
        sent_bytes = read;
        tx.blocking_send(c).is_ok()
    };
    loop {
        if until.is_some_and(|u| line_no >= u) {
            break;
        }
        let start = chunk.len();
        let n = reader.read_until(b'\n', &mut chunk).map_err(io_err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let mut end = chunk.len();
        while end > start && matches!(chunk[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let blank = chunk[start..end].iter().all(u8::is_ascii_whitespace);
        if line_no <= after || (skip_header && line_no == 1) || blank {
            chunk.truncate(start);
            continue;
        }
        chunk.truncate(end);
        chunk.push(b'\n');
        bounds.push((start as u32, end as u32));
        positions.push(Position::Line(line_no));
        if (bounds.len() >= limits.records || chunk.len() >= limits.bytes)
            && !flush(&mut chunk, &mut bounds, &mut positions)
        {
            return Ok(false);
        }
    }
    Ok(flush(&mut chunk, &mut bounds, &mut positions))
}
