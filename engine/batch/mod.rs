//! Micro-batches: decoded chunks accumulate until `max_records`, `max_bytes` or `max_age` is
//! reached; the batch remembers exactly which source range it covers.

use std::time::Instant;

use arrow::array::RecordBatch;

use tokio::sync::mpsc;

use crate::decode::{DeadLetter, Decoded, Decoder};
use crate::job::{BatchPolicy, Input};
use crate::sink::lake::dead_letters::DeadLetterKey;
use crate::source::{BatchRange, RawChunk, ShardRange};

/// Records of one micro-batch, ready for the transforms.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<RecordBatch>,
    pub dead: Vec<DeadLetter>,
    pub range: BatchRange,
    /// A replay batch's dead letters (its records); its range is then empty.
    pub replayed: Vec<DeadLetterKey>,
    pub records: usize,
    pub record_bytes: u64,
    pub input_bytes: u64,
    /// When the first record of the batch arrived.
    pub opened: Option<Instant>,
    /// Source arrival time (epoch ms) of each chunk's oldest record, with the chunk's size.
    pub arrivals: Vec<(i64, usize)>,
    /// The input ends with this batch: window outputs finish every open window.
    pub flush: bool,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Rows that decoded.
    pub fn rows(&self) -> usize {
        self.events.iter().map(RecordBatch::num_rows).sum()
    }

    /// True when adding `next` would break the policy, so the batch must be flushed first.
    pub fn would_overflow(&self, policy: &BatchPolicy, next: &Decoded) -> bool {
        !self.is_empty()
            && (self.records + next.records > policy.max_records
                || self.record_bytes + next.record_bytes > policy.max_bytes)
    }

    /// True when the batch is full or old enough to flush.
    pub fn is_due(&self, policy: &BatchPolicy) -> bool {
        self.records >= policy.max_records
            || self.record_bytes >= policy.max_bytes
            || self.opened.is_some_and(|t| t.elapsed() >= policy.max_age)
    }

    /// Decodes every chunk from `chunks` into one batch, whatever its size (replays, fixtures).
    pub async fn collect(input: &Input, mut chunks: mpsc::Receiver<RawChunk>) -> Self {
        let mut decoder = Decoder::new(input);
        let mut batch = Self::default();
        while let Some(chunk) = chunks.recv().await {
            batch.push(decoder.decode(&chunk));
            chunk.recycle();
        }
        batch
    }

    pub fn push(&mut self, chunk: Decoded) {
        self.opened.get_or_insert_with(Instant::now);
        widen(
            &mut self.range,
            chunk.shard.to_string(),
            ShardRange {
                first: chunk.first,
                last: chunk.last,
            },
        );
        if let Some(a) = chunk.arrived_ms {
            self.arrivals.push((a, chunk.records));
        }
        self.events.extend(chunk.batches);
        self.dead.extend(chunk.dead);
        self.records += chunk.records;
        self.record_bytes += chunk.record_bytes;
        self.input_bytes += chunk.input_bytes;
    }
}

/// Adds what comes next from `shard` (later records, in order) to `range`: the shard's first
/// position stays, its last becomes `next`'s.
pub fn widen(range: &mut BatchRange, shard: String, next: ShardRange) {
    range
        .entry(shard)
        .and_modify(|r| r.last = next.last.clone())
        .or_insert(next);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Position;
    use std::time::Duration;

    fn decoded(shard: &str, first: u64, last: u64) -> Decoded {
        Decoded {
            shard: shard.into(),
            first: Position::Line(first),
            last: Position::Line(last),
            batches: vec![],
            dead: vec![],
            records: (last - first + 1) as usize,
            record_bytes: 100 * (last - first + 1),
            input_bytes: 0,
            arrived_ms: None,
        }
    }

    #[test]
    fn range_and_limits() {
        let policy = BatchPolicy {
            max_records: 10,
            max_bytes: 10_000,
            max_age: Duration::from_secs(60),
            compact_every: 0,
            commit_every: 1,
        };
        let mut b = Batch::default();
        assert!(!b.would_overflow(&policy, &decoded("a", 1, 50)));
        b.push(decoded("a", 1, 4));
        b.push(decoded("a", 5, 8));
        b.push(decoded("b", 1, 1));
        assert_eq!(b.range["a"].first, Position::Line(1));
        assert_eq!(b.range["a"].last, Position::Line(8));
        assert!(b.would_overflow(&policy, &decoded("b", 2, 3)));
        assert!(!b.is_due(&policy));
        b.push(decoded("b", 2, 2));
        assert!(b.is_due(&policy));
    }
}
