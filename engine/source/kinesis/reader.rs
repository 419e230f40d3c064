//! One shard's read loop: GetRecords within the per-shard limits, backoff with jitter on
//! throttling and server errors, expired iterators re-created from the last position, KPL
//! aggregates unpacked, `MillisBehindLatest` reported.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::primitives::DateTime as AwsDateTime;
use aws_sdk_kinesis::types::{ChildShard, Record, ShardIteratorType};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::shards::ShardInfo;
use super::{StartAt, error_text, kpl};
use crate::source::{ChunkLimits, Position, RawChunk, SourceError};

/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause between polls of a shard that is caught up.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Records per GetRecords call.
const GET_LIMIT: i32 = 10_000;
/// Empty answers at the tip of a shard before a replay concludes its range is gone.
const EMPTY_AT_TIP_TO_GIVE_UP: u32 = 3;
/// How far before the first LATEST iterator a re-created one starts (clock skew with Kinesis).
const LATEST_CLOCK_MARGIN_MS: i64 = 1_000;
/// Longest backoff after throttling or errors.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How a shard read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ShardEnd {
    /// The shard is closed and read to its end; its children, as the last answer named them
    /// (empty when the service does not say).
    Closed(Vec<ShardInfo>),
    /// The requested range was read, or the receiver went away.
    Stopped,
}

/// `start` with LATEST replaced by the current moment, for a read that must start again at the
/// same place (an expired iterator, a renewed subscription) before it has taken a record.
pub(super) fn pin(start: &StartAt) -> StartAt {
    match start {
        StartAt::Latest => {
            StartAt::Timestamp(chrono::Utc::now().timestamp_millis() - LATEST_CLOCK_MARGIN_MS)
        }
        other => other.clone(),
    }
}

/// The children a closed shard's last answer names (`ChildShards`).
pub(super) fn children(child_shards: &[ChildShard]) -> Vec<ShardInfo> {
    child_shards
        .iter()
        .map(|c| ShardInfo {
            id: c.shard_id().to_string(),
            parents: c.parent_shards().to_vec(),
            closed: false,
        })
        .collect()
}

/// What a shard read has taken so far: the records after `last` (a KPL aggregate may be resumed
/// inside) and, for a replay, up to `until`, cut into chunks. Shared by polling and subscriptions.
pub(super) struct Cursor {
    shard: Arc<str>,
    limits: ChunkLimits,
    /// The last position taken (or the resume point).
    pub last: Option<Position>,
    until: Option<Position>,
}

/// What [`Cursor::take`] ended with.
pub(super) enum Taken {
    /// Every record was taken; read on.
    More,
    /// The replayed range is complete.
    RangeEnd,
    /// The receiver went away: stop.
    ReceiverGone,
}

impl Cursor {
    pub(super) fn new(
        shard: Arc<str>,
        limits: ChunkLimits,
        after: Option<Position>,
        until: Option<Position>,
    ) -> Self {
        Self {
            shard,
            limits,
            last: after,
            until,
        }
    }

    /// Takes the records of one answer (unpacking KPL aggregates; a corrupt one is a dead letter)
    /// and sends them in chunks. Every part of a record is taken before this returns, unless the
    /// receiver goes away.
    pub(super) async fn take(&mut self, records: &[Record], tx: &mpsc::Sender<RawChunk>) -> Taken {
        let mut chunk = ChunkBuilder::new(self.shard.clone(), self.limits);
        let mut reached_end = false;
        'records: for r in records {
            let data = Bytes::copy_from_slice(r.data().as_ref());
            let arrived = r
                .approximate_arrival_timestamp()
                .and_then(|t| t.to_millis().ok());
            let (parts, rejected) = match kpl::deaggregate(&data) {
                Ok(parts) => (parts, None),
                Err(reason) => (vec![data], Some(reason)),
            };
            for (sub, part) in parts.into_iter().enumerate() {
                let pos = Position::sequence(r.sequence_number(), sub as u64);
                if self.last.as_ref().is_some_and(|l| &pos <= l) {
                    continue;
                }
                if self.until.as_ref().is_some_and(|u| &pos > u) {
                    reached_end = true;
                    break 'records;
                }
                chunk.push(part, pos.clone(), arrived, rejected.clone());
                self.last = Some(pos);
                if chunk.full() && tx.send(chunk.take()).await.is_err() {
                    return Taken::ReceiverGone;
                }
            }
        }
        if !chunk.is_empty() && tx.send(chunk.take()).await.is_err() {
            return Taken::ReceiverGone;
        }
        if reached_end || (self.until.is_some() && self.last == self.until) {
            return Taken::RangeEnd;
        }
        Taken::More
    }
}

/// What to read of one shard.
pub struct ShardRead {
    pub client: Client,
    pub stream: String,
    pub shard: Arc<str>,
    pub start: StartAt,
    /// Skip records at or before this position (resume inside a KPL aggregate).
    pub after: Option<Position>,
    /// Stop after this position (replay of a batch range).
    pub until: Option<Position>,
    pub limits: ChunkLimits,
}

impl ShardRead {
    async fn iterator(&self, start: &StartAt) -> Result<String, SourceError> {
        let mut req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(self.shard.as_ref());
        req = match start {
            StartAt::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::Timestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(AwsDateTime::from_millis(*ms)),
            StartAt::Sequence(seq) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
        };
        let mut backoff = Backoff::default();
        loop {
            match req.clone().send().await {
                Ok(r) => {
                    return r
                        .shard_iterator()
                        .map(str::to_string)
                        .ok_or_else(|| self.error("GetShardIterator returned no iterator".into()));
                }
                Err(e) if is_retryable(&e) => backoff.wait(&self.shard, &error_text(&e)).await,
                Err(e) => return Err(self.error(format!("GetShardIterator: {}", error_text(&e)))),
            }
        }
    }

    /// The records of a range being replayed are no longer in the stream.
    fn range_gone(&self, missing: &str) -> SourceError {
        SourceError::RangeGone {
            shard: format!("kinesis {}/{}", self.stream, self.shard),
            missing: missing.to_string(),
        }
    }

    fn error(&self, message: String) -> SourceError {
        SourceError::Invalid {
            input: format!("kinesis {}/{}", self.stream, self.shard),
            message,
        }
    }

    /// Reads the shard, sending chunks, until it ends, the range is read or `tx` closes.
    pub async fn run(self, tx: mpsc::Sender<RawChunk>) -> Result<ShardEnd, SourceError> {
        // LATEST is pinned to the moment of the first iterator: one re-created after it expired,
        // before any record was read, starts there again instead of skipping what arrived since.
        let pinned = pin(&self.start);
        let mut iterator = self.iterator(&self.start).await?;
        let mut cursor = Cursor::new(
            self.shard.clone(),
            self.limits,
            self.after.clone(),
            self.until.clone(),
        );
        // A replay starts at the recorded first sequence number; it must be the first one read.
        let mut empty_at_tip = 0;
        let mut first_of_range = match (&self.until, &self.start) {
            (Some(_), StartAt::Sequence(seq)) => Some(seq.clone()),
            _ => None,
        };
        let mut next_call = Instant::now();
        let mut backoff = Backoff::default();
        let lag =
            metrics::gauge!("weir_kinesis_millis_behind_latest", "shard" => self.shard.to_string());
        loop {
            tokio::time::sleep_until(next_call).await;
            let resp = match self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(GET_LIMIT)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(GetRecordsError::ExpiredIteratorException(_))
                    ) =>
                {
                    let from = match &cursor.last {
                        Some(Position::Sequence { seq, .. }) => StartAt::Sequence(seq.clone()),
                        _ => pinned.clone(),
                    };
                    tracing::info!(shard = %self.shard, "shard iterator expired; re-creating it");
                    iterator = self.iterator(&from).await?;
                    next_call = Instant::now() + MIN_CALL_INTERVAL;
                    continue;
                }
                Err(e) if is_retryable(&e) => {
                    metrics::counter!("weir_kinesis_retries_total").increment(1);
                    backoff.wait(&self.shard, &error_text(&e)).await;
                    continue;
                }
                Err(e) => return Err(self.error(format!("GetRecords: {}", error_text(&e)))),
            };
            backoff = Backoff::default();
            next_call = Instant::now() + MIN_CALL_INTERVAL;
            let at_tip = resp.millis_behind_latest() == Some(0);
            let behind = resp.millis_behind_latest().unwrap_or(0);
            lag.set(behind as f64);

            if let Some(r) = resp.records().first()
                && let Some(first) = first_of_range.take()
                && r.sequence_number() != first
            {
                return Err(self.range_gone(&first));
            }
            match cursor.take(resp.records(), &tx).await {
                Taken::More => {}
                Taken::RangeEnd | Taken::ReceiverGone => return Ok(ShardEnd::Stopped),
            }
            match resp.next_shard_iterator() {
                Some(next) => iterator = next.to_string(),
                None => return Ok(ShardEnd::Closed(children(resp.child_shards()))),
            }
            empty_at_tip = if resp.records().is_empty() && at_tip {
                empty_at_tip + 1
            } else {
                0
            };
            if resp.records().is_empty() && behind == 0 {
                // At the tip of the shard, several times over, before the end of the range: the
                // rest of it is gone.
                if let Some(until) = &self.until
                    && empty_at_tip >= EMPTY_AT_TIP_TO_GIVE_UP
                {
                    return Err(self.range_gone(&until.to_string()));
                }
                next_call = Instant::now() + IDLE_POLL;
            }
            if tx.is_closed() {
                return Ok(ShardEnd::Stopped);
            }
        }
    }
}

/// Accumulates records of one shard into chunks (also Lambda mode's, from its events).
pub(crate) struct ChunkBuilder {
    shard: Arc<str>,
    limits: ChunkLimits,
    data: Vec<u8>,
    bounds: Vec<(u32, u32)>,
    positions: Vec<Position>,
    rejected: Vec<(u32, String)>,
    arrived_ms: Option<i64>,
}

impl ChunkBuilder {
    pub(crate) fn new(shard: Arc<str>, limits: ChunkLimits) -> Self {
        Self {
            shard,
            limits,
            data: Vec::new(),
            bounds: Vec::new(),
            positions: Vec::new(),
            rejected: Vec::new(),
            arrived_ms: None,
        }
    }

    pub(crate) fn push(
        &mut self,
        data: Bytes,
        pos: Position,
        arrived: Option<i64>,
        rejected: Option<String>,
    ) {
        let start = self.data.len() as u32;
        // A newline inside a record would split it for the line-oriented decoders.
        self.data
            .extend(data.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        self.bounds.push((start, self.data.len() as u32));
        self.data.push(b'\n');
        if let Some(reason) = rejected {
            self.rejected.push((self.positions.len() as u32, reason));
        }
        self.positions.push(pos);
        if let Some(a) = arrived {
            self.arrived_ms = Some(self.arrived_ms.map_or(a, |o| o.min(a)));
        }
    }

    pub(crate) fn full(&self) -> bool {
        self.bounds.len() >= self.limits.records || self.data.len() >= self.limits.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    pub(crate) fn take(&mut self) -> RawChunk {
        let input_bytes = self.data.len() as u64;
        RawChunk {
            shard: self.shard.clone(),
            data: Bytes::from(std::mem::take(&mut self.data)),
            bounds: std::mem::take(&mut self.bounds),
            positions: std::mem::take(&mut self.positions),
            rejected: std::mem::take(&mut self.rejected),
            arrived_ms: self.arrived_ms.take(),
            input_bytes,
            buffers: None,
        }
    }
}

/// Exponential backoff with full jitter.
#[derive(Default)]
pub(super) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(super) async fn wait(&mut self, shard: &str, why: &str) {
        self.attempt += 1;
        let cap =
            Duration::from_millis(100 * 2u64.saturating_pow(self.attempt.min(10))).min(MAX_BACKOFF);
        let jitter = rand::random::<f64>();
        let pause = cap.mul_f64(0.5 + jitter / 2.0);
        tracing::warn!(shard, attempt = self.attempt, ?pause, "{why}; backing off");
        tokio::time::sleep(pause).await;
    }
}

/// Throttling, 5xx and transport errors are retried; anything else is fatal.
pub(super) fn is_retryable<E>(
    e: &aws_sdk_kinesis::error::SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
) -> bool
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    use aws_sdk_kinesis::error::SdkError;
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            code.contains("Throughput")
                || code.contains("Throttl")
                || code.contains("LimitExceeded")
                || code.contains("InternalFailure")
                || code.contains("ServiceUnavailable")
                || s.raw().status().is_server_error()
        }
        _ => false,
    }
}
