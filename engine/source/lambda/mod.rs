//! Lambda mode's source: the Kinesis records one invocation of `weir lambda` brings, grouped by
//! shard. Each shard's records are a [`Source`] of their own, read after that shard's checkpoint
//! (records a retried event repeats are skipped) or over exactly a planned batch's range (a batch
//! an earlier attempt planned but did not commit: from the event when it holds the whole range,
//! else from the stream itself, as `weir run` replays), KPL aggregates unpacked as the Kinesis
//! source does.

use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::event::kinesis::KinesisEvent;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::kinesis::{ChunkBuilder, KinesisSource, StartAt, kpl};
use super::{BatchRange, Checkpoint, ChunkLimits, Position, RawChunk, Source, SourceError};

/// One Kinesis record of an event.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub seq: String,
    pub data: Bytes,
    pub arrived_ms: Option<i64>,
}

/// The records of one shard in an event, in the shard's order.
#[derive(Debug, Clone)]
pub struct ShardRecords {
    pub shard: Arc<str>,
    /// The stream's name, from the records' `eventSourceARN` (`arn:…:stream/NAME`), if given.
    pub stream: Option<String>,
    pub records: Vec<EventRecord>,
}

impl ShardRecords {
    /// The sequence number of the first record holding anything after `checkpoint`: the record
    /// a retry must start from (a KPL aggregate only partly committed counts as not committed).
    pub fn first_after(&self, checkpoint: Option<&Position>) -> Option<&str> {
        let Some(Position::Sequence { seq, sub }) = checkpoint else {
            return self.records.first().map(|r| r.seq.as_str());
        };
        let done = Position::sequence(seq.clone(), *sub);
        self.records
            .iter()
            .find(|r| {
                // A record before the checkpoint's is committed whole: no need to unpack it (on
                // success, that is every record of the event).
                if Position::sequence(r.seq.clone(), u64::MAX) < done {
                    return false;
                }
                // An aggregate of no user records holds nothing to commit.
                let parts = kpl::deaggregate(&r.data).map_or(1, |p| p.len()) as u64;
                parts > 0 && Position::sequence(r.seq.clone(), parts - 1) > done
            })
            .map(|r| r.seq.as_str())
    }
}

/// Groups an event's records by shard (shards in order of first appearance), each shard's
/// records in their order. The shard comes from the record's `eventID` (`shardId-…:sequence`).
pub fn by_shard(event: KinesisEvent) -> Result<Vec<ShardRecords>, String> {
    let mut shards: Vec<ShardRecords> = Vec::new();
    for (i, r) in event.records.into_iter().enumerate() {
        let id = r.event_id.as_deref().unwrap_or_default();
        let Some((shard, _)) = id.split_once(':') else {
            return Err(format!(
                "record {i} of the event has eventID \"{id}\", not \"shardId-…:sequence\": is this a Kinesis event source mapping's event?"
            ));
        };
        let seq = r.kinesis.sequence_number;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "record {i} of the event has sequence number \"{seq}\", not a decimal number"
            ));
        }
        let stream = r
            .event_source_arn
            .as_deref()
            .and_then(|arn| arn.split_once(":stream/"))
            .map(|(_, name)| name.to_string());
        let record = EventRecord {
            seq,
            data: Bytes::from(r.kinesis.data.0),
            arrived_ms: Some(r.kinesis.approximate_arrival_timestamp.0.timestamp_millis()),
        };
        match shards.iter_mut().find(|s| &*s.shard == shard) {
            Some(s) => {
                let last = s.records.last().expect("a record");
                if Position::sequence(record.seq.clone(), 0)
                    <= Position::sequence(last.seq.clone(), 0)
                {
                    return Err(format!(
                        "record {i} of the event ({shard} sequence {}) does not come after {}: a shard's records must arrive in order (is the event source mapping's ParallelizationFactor 1?)",
                        record.seq, last.seq
                    ));
                }
                s.records.push(record);
            }
            None => shards.push(ShardRecords {
                shard: Arc::from(shard),
                stream,
                records: vec![record],
            }),
        }
    }
    Ok(shards)
}

/// One shard's records of one event, as a source.
pub struct EventSource {
    records: ShardRecords,
    limits: ChunkLimits,
}

impl EventSource {
    pub fn new(records: ShardRecords, limits: ChunkLimits) -> Self {
        Self { records, limits }
    }

    /// Sends every (unpacked) record from `from` (after it, unless `inclusive`) up to `until`,
    /// in order; returns the first and last positions sent.
    async fn send(
        &self,
        from: Option<(&Position, bool)>,
        until: Option<&Position>,
        tx: &mpsc::Sender<RawChunk>,
    ) -> Option<(Position, Position)> {
        let mut chunk = ChunkBuilder::new(self.records.shard.clone(), self.limits);
        let mut sent: Option<(Position, Position)> = None;
        'records: for r in &self.records.records {
            let (parts, rejected) = match kpl::deaggregate(&r.data) {
                Ok(parts) => (parts, None),
                Err(reason) => (vec![r.data.clone()], Some(reason)),
            };
            for (sub, part) in parts.into_iter().enumerate() {
                let pos = Position::sequence(r.seq.clone(), sub as u64);
                let before = match from {
                    Some((f, true)) => &pos < f,
                    Some((f, false)) => &pos <= f,
                    None => false,
                };
                if before {
                    continue;
                }
                if until.is_some_and(|u| &pos > u) {
                    break 'records;
                }
                chunk.push(part, pos.clone(), r.arrived_ms, rejected.clone());
                match &mut sent {
                    Some((_, last)) => *last = pos,
                    None => sent = Some((pos.clone(), pos)),
                }
                if chunk.full() && tx.send(chunk.take()).await.is_err() {
                    return sent;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk.take()).await;
        }
        sent
    }

    fn held(&self) -> String {
        match (self.records.records.first(), self.records.records.last()) {
            (Some(f), Some(l)) => format!("{} to {}", f.seq, l.seq),
            _ => "none".to_string(),
        }
    }
}

#[async_trait]
impl Source for EventSource {
    fn describe(&self) -> String {
        format!(
            "Lambda event: {} records of {}",
            self.records.records.len(),
            self.records.shard
        )
    }

    fn size_hint(&self) -> Option<u64> {
        None
    }

    /// An event ends: the run commits what it holds and returns.
    fn bounded(&self) -> bool {
        true
    }

    async fn read(&self, from: &Checkpoint, tx: mpsc::Sender<RawChunk>) -> Result<(), SourceError> {
        let after = from.get(&*self.records.shard).map(|p| (p, false));
        self.send(after, None, &tx).await;
        Ok(())
    }

    /// The range from the event when it holds all of it (a retry holds at least the batch its
    /// first attempt planned, unless the mapping's batch size shrank or it bisects), else from
    /// the stream (`GetRecords` from the range's first sequence number).
    async fn read_range(
        &self,
        range: &BatchRange,
        tx: mpsc::Sender<RawChunk>,
    ) -> Result<(), SourceError> {
        for (shard, r) in range {
            if shard.as_str() != &*self.records.shard {
                return Err(SourceError::MissingShard {
                    shard: shard.clone(),
                });
            }
            if self.holds(&r.first, &r.last) {
                match self.send(Some((&r.first, true)), Some(&r.last), &tx).await {
                    Some((first, last)) if first == r.first && last == r.last => continue,
                    _ => {}
                }
                // Held by sequence number, yet not sub-record for sub-record: a corrupt event.
                return Err(self.not_held(shard, r));
            }
            let Some(stream) = &self.records.stream else {
                return Err(self.not_held(shard, r));
            };
            tracing::info!(
                shard,
                first = %r.first,
                last = %r.last,
                "the event does not hold the planned batch: reading it from the stream"
            );
            let kinesis =
                KinesisSource::open(stream, StartAt::TrimHorizon, None, self.limits).await?;
            let one = BatchRange::from([(shard.clone(), r.clone())]);
            kinesis.read_range(&one, tx.clone()).await?;
        }
        Ok(())
    }
}

impl EventSource {
    /// Whether the event holds the records from `first` through `last` (by sequence number).
    fn holds(&self, first: &Position, last: &Position) -> bool {
        let seq = |p: &Position| match p {
            Position::Sequence { seq, .. } => Some(seq.clone()),
            Position::Line(_) => None,
        };
        let (Some(first), Some(last)) = (seq(first), seq(last)) else {
            return false;
        };
        let has = |s: &str| self.records.records.iter().any(|r| r.seq == s);
        has(&first) && has(&last)
    }

    fn not_held(&self, shard: &str, r: &super::ShardRange) -> SourceError {
        SourceError::NotInEvent {
            shard: shard.to_string(),
            first: r.first.to_string(),
            last: r.last.to_string(),
            held: self.held(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(records: &[(&str, &str, &[u8])]) -> KinesisEvent {
        let records: Vec<serde_json::Value> = records
            .iter()
            .map(|(shard, seq, data)| {
                use base64::Engine;
                serde_json::json!({
                    "eventID": if shard.is_empty() { seq.to_string() } else { format!("{shard}:{seq}") },
                    "eventSource": "aws:kinesis",
                    "kinesis": {
                        "approximateArrivalTimestamp": 1_700_000_000.5,
                        "data": base64::engine::general_purpose::STANDARD.encode(data),
                        "partitionKey": "pk",
                        "sequenceNumber": seq,
                    }
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
    }

    fn limits() -> ChunkLimits {
        ChunkLimits {
            records: 2,
            bytes: 1 << 20,
        }
    }

    async fn read_all(source: &EventSource, from: &Checkpoint) -> Vec<(Position, String)> {
        let (tx, mut rx) = mpsc::channel(16);
        source.read(from, tx).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            for i in 0..c.len() {
                out.push((
                    c.positions[i].clone(),
                    String::from_utf8_lossy(c.record(i)).to_string(),
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn groups_by_shard_and_skips_what_the_checkpoint_covers() {
        let agg = kpl::aggregate("pk", [Bytes::from("b1"), Bytes::from("b2")]);
        let shards = by_shard(event(&[
            ("shardId-1", "10", b"a"),
            ("shardId-2", "5", b"x"),
            ("shardId-1", "11", &agg),
            ("shardId-1", "12", b"c"),
        ]))
        .unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].records.len(), 3);
        let one = EventSource::new(shards[0].clone(), limits());
        let all = read_all(&one, &Checkpoint::new()).await;
        let texts: Vec<_> = all.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["a", "b1", "b2", "c"]);
        assert_eq!(all[2].0, Position::sequence("11", 1));
        // Committed up to the first part of the aggregate: the rest is read, and a retry must
        // start at the aggregate.
        let cp = Checkpoint::from([("shardId-1".to_string(), Position::sequence("11", 0))]);
        let rest = read_all(&one, &cp).await;
        let texts: Vec<_> = rest.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["b2", "c"]);
        assert_eq!(shards[0].first_after(cp.get("shardId-1")), Some("11"));
        let whole = Position::sequence("11", 1);
        assert_eq!(shards[0].first_after(Some(&whole)), Some("12"));
        let end = Position::sequence("12", 0);
        assert_eq!(shards[0].first_after(Some(&end)), None);
        assert_eq!(shards[0].first_after(None), Some("10"));
        // An aggregate of no records holds nothing to retry.
        let empty = kpl::aggregate("pk", Vec::<Bytes>::new());
        let quiet = by_shard(event(&[
            ("shardId-1", "20", b"d"),
            ("shardId-1", "21", &empty),
        ]))
        .unwrap();
        let done = Position::sequence("20", 0);
        assert_eq!(quiet[0].first_after(Some(&done)), None);
    }

    #[tokio::test]
    async fn a_range_is_read_only_when_the_event_holds_all_of_it() {
        let shards = by_shard(event(&[
            ("shardId-1", "10", b"a"),
            ("shardId-1", "11", b"b"),
            ("shardId-1", "12", b"c"),
        ]))
        .unwrap();
        let source = EventSource::new(shards[0].clone(), limits());
        let range = |first: &str, last: &str| {
            BatchRange::from([(
                "shardId-1".to_string(),
                crate::source::ShardRange {
                    first: Position::sequence(first, 0),
                    last: Position::sequence(last, 0),
                },
            )])
        };
        // From the event's first record, and from one inside it.
        for (first, last, want) in [("10", "11", ["a", "b"]), ("11", "12", ["b", "c"])] {
            let (tx, mut rx) = mpsc::channel(16);
            source.read_range(&range(first, last), tx).await.unwrap();
            let mut got = Vec::new();
            while let Some(c) = rx.recv().await {
                for i in 0..c.len() {
                    got.push(String::from_utf8_lossy(c.record(i)).to_string());
                }
            }
            assert_eq!(got, want);
        }
        // Not all held, and no stream to read the rest from.
        for (first, last) in [("9", "11"), ("11", "13")] {
            let (tx, mut rx) = mpsc::channel(16);
            let err = source
                .read_range(&range(first, last), tx)
                .await
                .unwrap_err();
            assert!(matches!(err, SourceError::NotInEvent { .. }), "{err}");
            assert!(rx.recv().await.is_none(), "nothing sent");
        }
    }

    #[test]
    fn out_of_order_or_foreign_events_are_refused() {
        let err = by_shard(event(&[
            ("shardId-1", "11", b"a"),
            ("shardId-1", "10", b"b"),
        ]))
        .unwrap_err();
        assert!(err.contains("ParallelizationFactor"), "{err}");
        let err = by_shard(event(&[("", "11", b"a")])).unwrap_err();
        assert!(err.contains("eventID"), "{err}");
    }
}
