//! Enhanced fan-out: a registered stream consumer, and per shard one `SubscribeToShard`
//! subscription after another, each started from the previous one's continuation sequence number
//! and renewed before Kinesis ends it (after 5 minutes). Records are pushed, with dedicated
//! throughput per consumer, instead of polled.
//!
//! A replay of a planned batch still reads its exact range with GetRecords (`ShardRead`): a stream
//! with consumers serves both.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::operation::describe_stream_consumer::DescribeStreamConsumerError;
use aws_sdk_kinesis::operation::register_stream_consumer::RegisterStreamConsumerError;
use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardError;
use aws_sdk_kinesis::primitives::DateTime as AwsDateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::reader::{Backoff, Cursor, ShardEnd, Taken, children, is_retryable, pin};
use super::shards::ShardInfo;
use super::{StartAt, error_text};
use crate::source::{ChunkLimits, Position, RawChunk, SourceError};

/// A subscription is renewed this long after it started: Kinesis ends each after 5 minutes.
pub const RENEW_AFTER: Duration = Duration::from_secs(290);
/// The environment variable that sets another renewal time (in seconds; tests use a few).
pub const RENEW_AFTER_ENV: &str = "WEIR_KINESIS_RENEW_SUBSCRIPTION_SECS";
/// A subscription silent this long (Kinesis sends an event at least every few seconds, records
/// or not) is taken for a dead connection and replaced.
const SILENT_LIMIT: Duration = Duration::from_secs(30);
/// Pause before subscribing again while the previous subscription is still open.
const IN_USE_PAUSE: Duration = Duration::from_millis(500);
/// Least time between two GetRecords checks that a closed, caught-up shard has ended.
const END_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for a new consumer to become ACTIVE.
const ACTIVE_WAIT: Duration = Duration::from_secs(120);

/// The renewal time: [`RENEW_AFTER`] unless the environment sets another.
pub fn renew_after() -> Duration {
    std::env::var(RENEW_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(RENEW_AFTER, Duration::from_secs_f64)
}

/// Registers the consumer `name` on `stream` (or finds it, when it exists) and waits until it is
/// ACTIVE. Returns its ARN.
pub async fn register(client: &Client, stream: &str, name: &str) -> Result<String, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        input: format!("kinesis stream {stream}, consumer {name}"),
        message,
    };
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| invalid(format!("DescribeStreamSummary: {}", error_text(&e))))?;
    let stream_arn = summary
        .stream_description_summary()
        .map(|s| s.stream_arn().to_string())
        .ok_or_else(|| invalid("DescribeStreamSummary returned no stream ARN".into()))?;
    // One deadline for registering and for the consumer to become ACTIVE: a quota refusal or a
    // stream being resharded is retried within it, not forever.
    let deadline = Instant::now() + ACTIVE_WAIT;
    let mut backoff = Backoff::default();
    let mut registered = false;
    let mut last_error = String::from("none");
    loop {
        if Instant::now() > deadline {
            return Err(invalid(format!(
                "the consumer was not ACTIVE after {}s (last error: {last_error}); a stream has at \
                 most 20 consumers, and 5 may be created at a time",
                ACTIVE_WAIT.as_secs()
            )));
        }
        if !registered {
            match client
                .register_stream_consumer()
                .stream_arn(&stream_arn)
                .consumer_name(name)
                .send()
                .await
            {
                Ok(_) => {
                    tracing::info!(consumer = name, stream, "registered the stream consumer");
                    registered = true;
                }
                // It exists already (an earlier run, another instance), or the stream is being
                // updated: DescribeStreamConsumer tells which.
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(RegisterStreamConsumerError::ResourceInUseException(_))
                    ) =>
                {
                    registered = true;
                }
                // Throttling, quotas (`LimitExceededException`), server and transport errors.
                Err(e) if is_retryable(&e) => {
                    last_error = format!("RegisterStreamConsumer: {}", error_text(&e));
                    backoff.wait(name, &last_error).await;
                    continue;
                }
                Err(e) => {
                    return Err(invalid(format!(
                        "RegisterStreamConsumer: {}; the role needs kinesis:RegisterStreamConsumer \
                         on the stream and kinesis:DescribeStreamConsumer on its consumers",
                        error_text(&e)
                    )));
                }
            }
        }
        match client
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await
        {
            Ok(d) => {
                let Some(c) = d.consumer_description() else {
                    return Err(invalid("DescribeStreamConsumer returned nothing".into()));
                };
                match c.consumer_status() {
                    ConsumerStatus::Active => return Ok(c.consumer_arn().to_string()),
                    ConsumerStatus::Deleting => {
                        return Err(invalid(
                            "the consumer is being deleted; wait until it is gone and start again \
                             (it is then registered anew), or name another consumer"
                                .into(),
                        ));
                    }
                    _ => {}
                }
            }
            // Not visible yet, or not registered (the stream was being updated): register again.
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DescribeStreamConsumerError::ResourceNotFoundException(_))
                ) =>
            {
                last_error = format!("DescribeStreamConsumer: {}", error_text(&e));
                registered = false;
            }
            Err(e) if is_retryable(&e) => {
                last_error = format!("DescribeStreamConsumer: {}", error_text(&e));
                backoff.wait(name, &last_error).await;
                continue;
            }
            Err(e) => {
                return Err(invalid(format!(
                    "DescribeStreamConsumer: {}",
                    error_text(&e)
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Begin {
    At(StartAt),
    /// After the previous subscription's continuation sequence number.
    After(String),
}

impl Begin {
    fn position(&self) -> StartingPosition {
        let b = StartingPosition::builder();
        let b = match self {
            Self::At(StartAt::TrimHorizon) => b.r#type(ShardIteratorType::TrimHorizon),
            Self::At(StartAt::Latest) => b.r#type(ShardIteratorType::Latest),
            Self::At(StartAt::Timestamp(ms)) => b
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(AwsDateTime::from_millis(*ms)),
            Self::At(StartAt::Sequence(seq)) => b
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(seq),
            Self::After(seq) => b
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
        };
        b.build().expect("the type is always set")
    }
}

/// Where the next subscription starts: after the last continuation; without one, at the resume
/// point (its aggregate again, the records already taken skipped), or else at `start`.
fn begin(cursor: &Cursor, continuation: &Option<String>, start: &StartAt) -> Begin {
    match (continuation, &cursor.last) {
        (Some(c), _) => Begin::After(c.clone()),
        (None, Some(Position::Sequence { seq, .. })) => Begin::At(StartAt::Sequence(seq.clone())),
        _ => Begin::At(start.clone()),
    }
}

/// Shards the last `ListShards` showed closed, shared by the shard list and the subscriptions.
pub type ClosedShards = Arc<std::sync::Mutex<BTreeSet<String>>>;

/// One shard read through enhanced fan-out, until it ends or the receiver goes away.
pub struct Subscription {
    pub client: Client,
    pub stream: String,
    pub consumer_arn: String,
    pub shard: Arc<str>,
    pub start: StartAt,
    /// Skip records at or before this position (resume inside a KPL aggregate).
    pub after: Option<Position>,
    pub limits: ChunkLimits,
    pub renew_after: Duration,
    pub closed: ClosedShards,
}

impl Subscription {
    fn error(&self, message: String) -> SourceError {
        SourceError::Invalid {
            input: format!("kinesis consumer {}, {}", self.consumer_arn, self.shard),
            message,
        }
    }

    /// Whether the shard is closed with nothing after `continuation`, asked with GetRecords: the
    /// end a subscription's last event should announce (no continuation, `ChildShards`), for a
    /// service that keeps sending empty events instead (kinesis-mock does). Asked only of a
    /// subscription caught up on a shard `ListShards` shows closed; an error only defers it.
    async fn ended_after(&self, continuation: &str) -> Option<Vec<ShardInfo>> {
        let iterator = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(self.shard.as_ref())
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(continuation)
            .send()
            .await
            .inspect_err(
                |e| tracing::debug!(shard = %self.shard, "GetShardIterator: {}", error_text(e)),
            )
            .ok()?;
        let records = self
            .client
            .get_records()
            .shard_iterator(iterator.shard_iterator()?)
            .limit(1)
            .send()
            .await
            .inspect_err(|e| tracing::debug!(shard = %self.shard, "GetRecords: {}", error_text(e)))
            .ok()?;
        (records.records().is_empty() && records.next_shard_iterator().is_none())
            .then(|| children(records.child_shards()))
    }

    pub async fn run(self, tx: mpsc::Sender<RawChunk>) -> Result<ShardEnd, SourceError> {
        let mut cursor = Cursor::new(self.shard.clone(), self.limits, self.after.clone(), None);
        let mut continuation: Option<String> = None;
        let mut from = begin(&cursor, &continuation, &self.start);
        // LATEST is pinned at the first subscription: a later one before any event starts there.
        let pinned = pin(&self.start);
        let mut backoff = Backoff::default();
        let lag =
            metrics::gauge!("weir_kinesis_millis_behind_latest", "shard" => self.shard.to_string());
        let subscriptions = metrics::counter!("weir_kinesis_subscriptions_total");
        let retries = metrics::counter!("weir_kinesis_retries_total");
        let mut next_end_check = Instant::now();
        // Subscriptions refused in a row because the previous one is still open.
        let mut in_use = 0u32;
        loop {
            // `send` also waits for the stream's first message, which no attempt timeout covers.
            let subscribe = self
                .client
                .subscribe_to_shard()
                .consumer_arn(&self.consumer_arn)
                .shard_id(self.shard.as_ref())
                .starting_position(from.position())
                .send();
            let subscribed = tokio::select! {
                s = tokio::time::timeout(SILENT_LIMIT, subscribe) => s,
                _ = tx.closed() => return Ok(ShardEnd::Stopped),
            };
            let mut events = match subscribed {
                Ok(Ok(out)) => out.event_stream,
                // The previous subscription is still open (for a few seconds after it ends), or
                // subscriptions came too fast (`LimitExceededException`, which `is_retryable`
                // takes with throttling and server errors): wait and try again.
                Ok(Err(e))
                    if is_retryable(&e)
                        || matches!(
                            e.as_service_error(),
                            Some(SubscribeToShardError::ResourceInUseException(_))
                        ) =>
                {
                    retries.increment(1);
                    let why = format!("SubscribeToShard: {}", error_text(&e));
                    backoff.wait(&self.shard, &why).await;
                    from = begin(&cursor, &continuation, &pinned);
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(self.error(format!("SubscribeToShard: {}", error_text(&e))));
                }
                Err(_) => {
                    retries.increment(1);
                    let why = format!("SubscribeToShard: no answer in {}s", SILENT_LIMIT.as_secs());
                    backoff.wait(&self.shard, &why).await;
                    from = begin(&cursor, &continuation, &pinned);
                    continue;
                }
            };
            let renew_at = Instant::now() + self.renew_after;
            let mut events_seen = 0u64;
            loop {
                let next = tokio::select! {
                    next = tokio::time::timeout(SILENT_LIMIT, events.recv()) => next,
                    _ = tokio::time::sleep_until(renew_at) => {
                        tracing::debug!(shard = %self.shard, "renewing the subscription");
                        break;
                    }
                    _ = tx.closed() => return Ok(ShardEnd::Stopped),
                };
                let e = match next {
                    Ok(Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)))) => {
                        if events_seen == 0 {
                            subscriptions.increment(1);
                            tracing::debug!(shard = %self.shard, ?from, "subscribed");
                        }
                        backoff = Backoff::default();
                        in_use = 0;
                        events_seen += 1;
                        lag.set(event.millis_behind_latest() as f64);
                        if let Taken::ReceiverGone = cursor.take(event.records(), &tx).await {
                            return Ok(ShardEnd::Stopped);
                        }
                        // No continuation: the shard is closed and this was its last event.
                        let c = event.continuation_sequence_number();
                        if c.is_empty() {
                            return Ok(ShardEnd::Closed(children(event.child_shards())));
                        }
                        continuation = Some(c.to_string());
                        let caught_up =
                            event.records().is_empty() && event.millis_behind_latest() == 0;
                        if caught_up
                            && next_end_check <= Instant::now()
                            && self.closed.lock().unwrap().contains(self.shard.as_ref())
                        {
                            next_end_check = Instant::now() + END_CHECK_INTERVAL;
                            tokio::select! {
                                ended = self.ended_after(c) => if let Some(children) = ended {
                                    return Ok(ShardEnd::Closed(children));
                                },
                                _ = tx.closed() => return Ok(ShardEnd::Stopped),
                            }
                        }
                        continue;
                    }
                    Ok(Ok(Some(_))) => continue,
                    // Kinesis ended the subscription (its 5 minutes are up): the next one
                    // continues from the continuation. One that ends at once is retried later.
                    Ok(Ok(None)) => {
                        if events_seen == 0 {
                            let why = "the subscription ended before its first event";
                            backoff.wait(&self.shard, why).await;
                        }
                        break;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => {
                        retries.increment(1);
                        let why = format!(
                            "no event for {}s; subscribing again",
                            SILENT_LIMIT.as_secs()
                        );
                        backoff.wait(&self.shard, &why).await;
                        break;
                    }
                };
                // An error event ends the subscription.
                use SubscribeToShardEventStreamError as E;
                match e.as_service_error() {
                    // The previous subscription is not closed yet (Kinesis allows one per shard
                    // and consumer, and a few seconds to end one): expected once after a renewal
                    // (a short pause); more in a row may be another reader with this consumer.
                    Some(E::ResourceInUseException(_)) if in_use == 0 => {
                        in_use += 1;
                        tracing::debug!(shard = %self.shard, "the previous subscription is still open");
                        tokio::time::sleep(IN_USE_PAUSE).await;
                    }
                    Some(E::ResourceInUseException(_)) => {
                        in_use += 1;
                        retries.increment(1);
                        let why = format!(
                            "{}; is another reader using this consumer on this shard?",
                            error_text(&e)
                        );
                        backoff.wait(&self.shard, &why).await;
                    }
                    Some(E::ResourceNotFoundException(_)) => {
                        return Err(self.error(format!(
                            "the subscription ended: {}; was the consumer deregistered?",
                            error_text(&e)
                        )));
                    }
                    // KMS refusals: no retry makes them pass.
                    Some(
                        E::KmsAccessDeniedException(_)
                        | E::KmsDisabledException(_)
                        | E::KmsInvalidStateException(_)
                        | E::KmsNotFoundException(_)
                        | E::KmsOptInRequired(_),
                    ) => {
                        return Err(self.error(format!(
                            "the subscription ended: {}; the role needs kms:Decrypt on the \
                             stream's key",
                            error_text(&e)
                        )));
                    }
                    // Internal failures, KMS throttling, anything else; a dropped connection.
                    _ => {
                        retries.increment(1);
                        let why = format!("subscription: {}", error_text(&e));
                        backoff.wait(&self.shard, &why).await;
                    }
                }
                break;
            }
            from = begin(&cursor, &continuation, &pinned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(last: Option<Position>) -> Cursor {
        let limits = ChunkLimits {
            records: 10,
            bytes: 1 << 20,
        };
        Cursor::new("shardId-0".into(), limits, last, None)
    }

    #[test]
    fn a_subscription_continues_after_the_continuation_else_at_the_resume_point() {
        let start = StartAt::TrimHorizon;
        assert_eq!(
            begin(&cursor(None), &None, &start),
            Begin::At(start.clone())
        );
        // A checkpoint inside an aggregate: the aggregate again (its taken records are skipped).
        let resume = Some(Position::sequence("49", 3));
        assert_eq!(
            begin(&cursor(resume.clone()), &None, &start),
            Begin::At(StartAt::Sequence("49".into()))
        );
        assert_eq!(
            begin(&cursor(resume), &Some("51".into()), &start),
            Begin::After("51".into())
        );
        let p = Begin::After("51".into()).position();
        assert_eq!(p.r#type(), &ShardIteratorType::AfterSequenceNumber);
        assert_eq!(p.sequence_number(), Some("51"));
        let p = Begin::At(StartAt::Timestamp(1_700_000_000_000)).position();
        assert_eq!(p.r#type(), &ShardIteratorType::AtTimestamp);
    }

    #[test]
    fn consumer_names_are_checked_as_kinesis_does() {
        use crate::source::kinesis::check_consumer_name;
        assert!(check_consumer_name("weir-shop_1.a").is_ok());
        for bad in ["", "weir shop", "weir/shop", &"x".repeat(129)] {
            let e = check_consumer_name(bad).unwrap_err();
            assert!(e.contains("letters, digits"), "{e}");
        }
    }
}
