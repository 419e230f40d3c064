//! Sources yield raw records with their position (file + line; shard + sequence number), in
//! bounded chunks, either after a checkpoint or over exactly one recorded batch range.

pub mod dead_letters;
pub mod files;
pub mod kinesis;
pub mod lambda;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Where a record sits in its shard: a line number for files; a sequence number and the index of
/// the user record inside a KPL aggregate (0 when not aggregated) for Kinesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Position {
    Line(u64),
    Sequence { seq: String, sub: u64 },
}

impl Position {
    /// A Kinesis position.
    pub fn sequence(seq: impl Into<String>, sub: u64) -> Self {
        Position::Sequence {
            seq: seq.into(),
            sub,
        }
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use Position::*;
        match (self, other) {
            (Line(a), Line(b)) => a.cmp(b),
            // Sequence numbers are decimal strings: compare by length, then digits.
            (Sequence { seq: a, sub: x }, Sequence { seq: b, sub: y }) => {
                (a.len(), a, x).cmp(&(b.len(), b, y))
            }
            (Line(_), Sequence { .. }) => std::cmp::Ordering::Less,
            (Sequence { .. }, Line(_)) => std::cmp::Ordering::Greater,
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// The `Display` form back: "line 7", "sequence 4955...", "sequence 4955... record 3".
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("\"{text}\" is not a record position");
        let words: Vec<&str> = text.split(' ').collect();
        match words.as_slice() {
            ["line", n] => n.parse().map(Position::Line).map_err(|_| bad()),
            ["sequence", seq] => Ok(Position::sequence(*seq, 0)),
            ["sequence", seq, "record", sub] => sub
                .parse()
                .map(|sub| Position::sequence(*seq, sub))
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Sequence { seq, sub: 0 } => write!(f, "sequence {seq}"),
            Position::Sequence { seq, sub } => write!(f, "sequence {seq} record {sub}"),
        }
    }
}

/// First and last record (inclusive) a batch took from one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRange {
    pub first: Position,
    pub last: Position,
}

/// Per shard, the range of one batch.
pub type BatchRange = BTreeMap<String, ShardRange>;
/// Per shard, the last position consumed by committed batches.
pub type Checkpoint = BTreeMap<String, Position>;

/// Records of one shard, stored back to back in one buffer.
#[derive(Debug, Clone)]
pub struct RawChunk {
    pub shard: Arc<str>,
    pub data: Bytes,
    /// Byte range of each record in `data`.
    pub bounds: Vec<(u32, u32)>,
    pub positions: Vec<Position>,
    /// Records the source already knows are bad (index into `bounds`, reason): dead letters.
    pub rejected: Vec<(u32, String)>,
    /// Arrival time of the oldest record (epoch ms), when the source knows it.
    pub arrived_ms: Option<i64>,
    /// Input bytes consumed to produce this chunk (compressed size for `.gz` files).
    pub input_bytes: u64,
    /// The source's chunk buffers, which `data`'s buffer goes back to once the chunk is decoded.
    pub buffers: Option<Arc<Buffers>>,
}

impl RawChunk {
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    pub fn record(&self, i: usize) -> &[u8] {
        let (s, e) = self.bounds[i];
        &self.data[s as usize..e as usize]
    }

    /// Raw size of the records.
    pub fn record_bytes(&self) -> u64 {
        self.bounds.iter().map(|(s, e)| (e - s) as u64).sum()
    }

    /// Hands the chunk's buffer back to its source, once nothing else holds it (a dead letter's
    /// raw record does).
    pub fn recycle(self) {
        if let Some(buffers) = self.buffers {
            buffers.give(self.data);
        }
    }
}

/// Chunk buffers of one size, given back once decoded and filled again by the source.
///
/// A buffer allocated for each chunk and freed after decoding left a hole of its size in the
/// allocator's arenas; other allocations took parts of it, and the next buffer went elsewhere, so
/// RSS grew for the first ~20 s of a run. Kept buffers are the same few allocations all run.
#[derive(Debug)]
pub struct Buffers {
    kept: std::sync::Mutex<Vec<Vec<u8>>>,
    capacity: usize,
}

impl Buffers {
    /// Buffers kept at most: more than the chunks in flight between a source and its decoders.
    const KEPT: usize = 8;

    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            kept: Default::default(),
            capacity,
        })
    }

    /// An empty buffer of at least the capacity, kept or new.
    pub fn take(&self) -> Vec<u8> {
        let kept = self.kept.lock().expect("chunk buffers").pop();
        kept.unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    fn give(&self, data: Bytes) {
        let Ok(mut data) = data.try_into_mut() else {
            return;
        };
        // Emptied first, so that taking the vector back moves no bytes.
        data.clear();
        let data = Vec::from(data);
        // A buffer that grew for an outsized record is not kept.
        if !(self.capacity..=2 * self.capacity).contains(&data.capacity()) {
            return;
        }
        let mut kept = self.kept.lock().expect("chunk buffers");
        if kept.len() < Self::KEPT {
            kept.push(data);
        }
    }
}

/// How many records and bytes a source puts in one chunk at most.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub records: usize,
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("input {input}: no file matches; check the path or glob")]
    NoInput { input: String },
    #[error("input {input}: {message}")]
    Invalid { input: String, message: String },
    #[error("reading {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("listing {input}: {source}")]
    Store {
        input: String,
        source: object_store::Error,
    },
    #[error(
        "replaying batch: {shard} is not part of this source any more; restore it or start a new lake"
    )]
    MissingShard { shard: String },
    #[error(
        "replaying batch: {shard} no longer holds its records up to {missing} (past the stream's \
         retention); the batch cannot be replayed whole"
    )]
    RangeGone { shard: String, missing: String },
    #[error(
        "replaying batch: the Lambda event holds {shard}'s records {held}, not all of the planned \
         batch {first} to {last} an earlier attempt began, and it names no stream to read them \
         from (no eventSourceARN)"
    )]
    NotInEvent {
        shard: String,
        first: String,
        last: String,
        held: String,
    },
}

/// A source of raw records.
#[async_trait]
pub trait Source: Send + Sync {
    /// Human description for logs and the summary.
    fn describe(&self) -> String;
    /// Total input bytes, when known (drives the progress bar).
    fn size_hint(&self) -> Option<u64>;
    /// Whether the input has an end (files), after which window outputs finish every window;
    /// a stream has none, even when its reader stops.
    fn bounded(&self) -> bool {
        false
    }
    /// Reads every record after `from`, in order, until the input is exhausted or the receiver
    /// is dropped.
    async fn read(&self, from: &Checkpoint, tx: mpsc::Sender<RawChunk>) -> Result<(), SourceError>;
    /// Re-reads exactly the records of `range`.
    async fn read_range(
        &self,
        range: &BatchRange,
        tx: mpsc::Sender<RawChunk>,
    ) -> Result<(), SourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(buffers: &Arc<Buffers>) -> RawChunk {
        let mut data = buffers.take();
        data.extend_from_slice(b"{\"a\":1}\n");
        RawChunk {
            shard: "f".into(),
            data: Bytes::from(data),
            bounds: vec![(0, 7)],
            positions: vec![Position::Line(1)],
            rejected: vec![],
            arrived_ms: None,
            input_bytes: 8,
            buffers: Some(buffers.clone()),
        }
    }

    #[test]
    fn a_decoded_chunk_gives_its_buffer_back_unless_a_dead_letter_holds_it() {
        let buffers = Buffers::new(1 << 10);
        let c = chunk(&buffers);
        let at = c.data.as_ptr();
        c.recycle();
        let again = buffers.take();
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        assert!(again.capacity() >= 1 << 10);

        let c = chunk(&buffers);
        let held = c.data.slice(0..7);
        c.recycle();
        assert!(buffers.kept.lock().unwrap().is_empty());
        assert_eq!(&held[..], b"{\"a\":1}");
    }
}
