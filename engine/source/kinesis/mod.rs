//! Kinesis source: every shard of a stream (new ones discovered while running), parents read
//! before children, KPL aggregates unpacked, resume and replay by (sequence, sub-sequence).
//! Credentials, region and endpoint come from aws-config's standard chain (`AWS_ENDPOINT_URL*`).

mod fanout;
pub mod kpl;
pub mod leases;
mod reader;
pub mod shards;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{BatchRange, Checkpoint, ChunkLimits, Position, RawChunk, Source, SourceError};
pub(crate) use reader::ChunkBuilder;
pub use reader::ShardEnd;
use reader::ShardRead;
use shards::ShardInfo;

/// ListShards attempts at start (each with the SDK's own retries) before the run gives up.
const START_ATTEMPTS: u32 = 4;
/// Longest wait for one Kinesis call (GetRecords answers within seconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the shard list is refreshed to find shards created by resharding.
const SHARD_DISCOVERY: Duration = Duration::from_secs(5);

/// Where shards without a checkpoint start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    TrimHorizon,
    Latest,
    /// Epoch milliseconds.
    Timestamp(i64),
    /// At this sequence number (resume, replay).
    Sequence(String),
}

impl StartAt {
    /// Parses the job file's `start` ("trim_horizon", "latest", or an RFC 3339 timestamp for
    /// "at_timestamp").
    pub fn parse(start: Option<&str>, timestamp: Option<&str>) -> Result<Self, String> {
        match (start.unwrap_or("trim_horizon"), timestamp) {
            ("trim_horizon", None) => Ok(Self::TrimHorizon),
            ("latest", None) => Ok(Self::Latest),
            ("at_timestamp", Some(t)) => chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| Self::Timestamp(d.timestamp_millis()))
                .map_err(|e| {
                    format!("timestamp \"{t}\": {e}; write RFC 3339, e.g. 2025-06-01T00:00:00Z")
                }),
            ("at_timestamp", None) => {
                Err("start = \"at_timestamp\" needs timestamp = \"<RFC 3339>\"".into())
            }
            (s, Some(_)) if s != "at_timestamp" => {
                Err("timestamp only applies with start = \"at_timestamp\"".into())
            }
            (other, _) => Err(format!(
                "unknown start \"{other}\"; use \"trim_horizon\", \"latest\" or \"at_timestamp\""
            )),
        }
    }
}

/// A Kinesis stream as a source.
pub struct KinesisSource {
    client: Client,
    stream: String,
    start: StartAt,
    limits: ChunkLimits,
    /// The enhanced fan-out consumer's ARN, when one is named: shards are then read by
    /// SubscribeToShard instead of GetRecords.
    consumer_arn: Option<String>,
    /// A leased worker's shard writer reads this one shard only, to its end.
    only: Option<OneShard>,
}

/// The one shard a leased worker's shard writer reads.
#[derive(Clone)]
struct OneShard {
    id: String,
    /// Set once the shard is read to its end (closed by a split or merge).
    ended: Arc<AtomicBool>,
    /// Where to resume when the writer has no checkpoint of its own: the job's checkpoint from
    /// before it was leased.
    seed: Option<Position>,
}

impl KinesisSource {
    /// Connects with the standard AWS configuration and checks that the stream exists; with a
    /// `consumer`, registers it (or finds it) and waits until it is active.
    pub async fn open(
        stream: &str,
        start: StartAt,
        consumer: Option<&str>,
        limits: ChunkLimits,
    ) -> Result<Self, SourceError> {
        let config = aws_config::load_from_env().await;
        // A call that never answers (a half-open connection) is abandoned and retried instead of
        // holding its shard forever.
        let timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(CALL_TIMEOUT)
            .build();
        let client = Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(&config)
                .retry_config(RetryConfig::standard().with_max_attempts(5))
                .timeout_config(timeouts)
                .build(),
        );
        shards::list(&client, stream, Some(START_ATTEMPTS)).await?;
        let consumer_arn = match consumer {
            Some(name) => Some(fanout::register(&client, stream, name).await?),
            None => None,
        };
        Ok(Self {
            client,
            stream: stream.to_string(),
            start,
            limits,
            consumer_arn,
            only: None,
        })
    }

    /// The stream's one shard `id`, read from its checkpoint (else after `seed`, else from
    /// `start`) to its end: the shard writer of a leased worker, which starts a child only after
    /// its parents ended. The flag is set once the shard is read to its end.
    pub fn one_shard(
        &self,
        id: &str,
        start: StartAt,
        seed: Option<Position>,
    ) -> (Self, Arc<AtomicBool>) {
        let ended = Arc::new(AtomicBool::new(false));
        let this = Self {
            client: self.client.clone(),
            stream: self.stream.clone(),
            start,
            limits: self.limits,
            consumer_arn: self.consumer_arn.clone(),
            only: Some(OneShard {
                id: id.to_string(),
                ended: ended.clone(),
                seed,
            }),
        };
        (this, ended)
    }

    /// The stream's shards (for a leased worker's leases).
    pub async fn shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        shards::list(&self.client, &self.stream, None).await
    }

    /// Reads the one shard of a shard writer to its end, or until the receiver is dropped.
    async fn read_one(
        &self,
        one: &OneShard,
        from: &Checkpoint,
        tx: mpsc::Sender<RawChunk>,
    ) -> Result<(), SourceError> {
        let after = from.get(&one.id).or(one.seed.as_ref()).cloned();
        let start = after
            .as_ref()
            .map(resume)
            .unwrap_or_else(|| self.start.clone());
        tracing::info!(shard = %one.id, ?start, "reading shard");
        let closed = fanout::ClosedShards::default();
        let mut tasks = JoinSet::new();
        self.spawn_shard(&mut tasks, &closed, &one.id, start, after, tx.clone());
        // A subscription learns that its shard is closed from ListShards (see fanout.rs).
        let mut discover = tokio::time::interval(SHARD_DISCOVERY);
        loop {
            tokio::select! {
                _ = discover.tick(), if self.consumer_arn.is_some() => {
                    let listed = shards::list(&self.client, &self.stream, None).await?;
                    if listed.iter().any(|s| s.id == one.id && s.closed) {
                        closed.lock().unwrap().insert(one.id.clone());
                    }
                }
                Some(done) = tasks.join_next() => {
                    let (shard, end) = done.expect("shard reader panicked");
                    if let ShardEnd::Closed(children) = end? {
                        tracing::info!(
                            %shard,
                            children = ?children.iter().map(|c| &c.id).collect::<Vec<_>>(),
                            "shard closed and read to its end"
                        );
                        one.ended.store(true, Ordering::SeqCst);
                    }
                    return Ok(());
                }
                _ = tx.closed() => return Ok(()),
            }
        }
    }

    /// Reads one shard from `start` (after `after`) to its end: pushed to a subscription when
    /// there is a consumer, polled otherwise.
    fn spawn_shard(
        &self,
        tasks: &mut JoinSet<(String, Result<ShardEnd, SourceError>)>,
        closed: &fanout::ClosedShards,
        shard: &str,
        start: StartAt,
        after: Option<Position>,
        tx: mpsc::Sender<RawChunk>,
    ) {
        let id = shard.to_string();
        match &self.consumer_arn {
            Some(arn) => {
                let sub = fanout::Subscription {
                    client: self.client.clone(),
                    stream: self.stream.clone(),
                    consumer_arn: arn.clone(),
                    shard: shard.into(),
                    start,
                    after,
                    limits: self.limits,
                    renew_after: fanout::renew_after(),
                    closed: closed.clone(),
                };
                tasks.spawn(async move { (id, sub.run(tx).await) });
            }
            None => {
                let read = self.shard_read(shard, start, after, None);
                tasks.spawn(async move { (id, read.run(tx).await) });
            }
        }
    }

    fn shard_read(
        &self,
        shard: &str,
        start: StartAt,
        after: Option<Position>,
        until: Option<Position>,
    ) -> ShardRead {
        ShardRead {
            client: self.client.clone(),
            stream: self.stream.clone(),
            shard: shard.into(),
            start,
            after,
            until,
            limits: self.limits,
        }
    }
}

/// Checks an enhanced fan-out consumer name as Kinesis does: 1 to 128 of `a-zA-Z0-9_.-`.
pub fn check_consumer_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.len() > 128 || !name.chars().all(valid) {
        return Err(format!(
            "\"{name}\" is not a consumer name: use 1 to 128 letters, digits, '_', '.' or '-', \
             e.g. \"weir-shop\""
        ));
    }
    Ok(())
}

/// The iterator start for a shard resuming after `pos`.
fn resume(pos: &Position) -> StartAt {
    match pos {
        Position::Sequence { seq, .. } => StartAt::Sequence(seq.clone()),
        Position::Line(_) => StartAt::TrimHorizon,
    }
}

#[async_trait]
impl Source for KinesisSource {
    fn describe(&self) -> String {
        match &self.consumer_arn {
            Some(arn) => format!("kinesis stream {} (enhanced fan-out, {arn})", self.stream),
            None => format!("kinesis stream {}", self.stream),
        }
    }

    fn size_hint(&self) -> Option<u64> {
        None
    }

    async fn read(&self, from: &Checkpoint, tx: mpsc::Sender<RawChunk>) -> Result<(), SourceError> {
        if let Some(one) = &self.only {
            return self.read_one(one, from, tx).await;
        }
        let mut started = BTreeSet::new();
        let mut finished = BTreeSet::new();
        // Children named by their parents' last answers, until ListShards lists them too.
        let mut announced: Vec<ShardInfo> = Vec::new();
        let mut tasks: JoinSet<(String, Result<ShardEnd, SourceError>)> = JoinSet::new();
        let closed = fanout::ClosedShards::default();
        let mut discover = tokio::time::interval(SHARD_DISCOVERY);
        loop {
            tokio::select! {
                _ = discover.tick() => {}
                Some(done) = tasks.join_next() => {
                    let (shard, end) = done.expect("shard reader panicked");
                    match end? {
                        ShardEnd::Closed(children) => {
                            tracing::info!(
                                %shard,
                                children = ?children.iter().map(|c| &c.id).collect::<Vec<_>>(),
                                "shard closed and read to its end"
                            );
                            finished.insert(shard);
                            announced.extend(children);
                        }
                        ShardEnd::Stopped => return Ok(()),
                    }
                }
                _ = tx.closed() => return Ok(()),
            }
            let mut listed = shards::list(&self.client, &self.stream, None).await?;
            announced.retain(|c| !listed.iter().any(|l| l.id == c.id));
            listed.extend(announced.iter().cloned());
            closed
                .lock()
                .unwrap()
                .extend(listed.iter().filter(|s| s.closed).map(|s| s.id.clone()));
            for s in shards::ready(&listed, &started, &finished) {
                let after = from.get(&s.id).cloned();
                let start = match (&after, s.parents.is_empty()) {
                    (Some(pos), _) => resume(pos),
                    // A child of a split or merge is read from its beginning.
                    (None, false) => StartAt::TrimHorizon,
                    (None, true) => self.start.clone(),
                };
                tracing::info!(shard = %s.id, ?start, "reading shard");
                self.spawn_shard(&mut tasks, &closed, &s.id, start, after, tx.clone());
                started.insert(s.id);
            }
        }
    }

    async fn read_range(
        &self,
        range: &BatchRange,
        tx: mpsc::Sender<RawChunk>,
    ) -> Result<(), SourceError> {
        for (shard, r) in range {
            let Position::Sequence { seq, sub } = &r.first else {
                return Err(SourceError::Invalid {
                    input: shard.clone(),
                    message: "the batch log holds a file position for a Kinesis shard".into(),
                });
            };
            // Skip the records of the first aggregate that precede the range.
            let after = sub
                .checked_sub(1)
                .map(|s| Position::sequence(seq.clone(), s));
            let read = self.shard_read(
                shard,
                StartAt::Sequence(seq.clone()),
                after,
                Some(r.last.clone()),
            );
            read.run(tx.clone()).await?;
        }
        Ok(())
    }
}

/// The message of an AWS SDK error (Kinesis, DynamoDB: the SDKs share their error types), with
/// its code.
pub(crate) fn error_text<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kinesis::error::DisplayErrorContext;
    match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or_default()
        ),
        None => DisplayErrorContext(e).to_string(),
    }
}
