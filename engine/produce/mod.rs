//! `weir produce`: generated e-commerce events sent to a Kinesis stream with `PutRecords` (batches
//! of up to 500, partition key per session, failed records retried), at a target rate, optionally
//! KPL-aggregated. The load driver for tests and benchmarks.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use bytes::Bytes;

use crate::generate::{EventStream, Options, products};
use crate::source::kinesis::{error_text, kpl};

/// PutRecords accepts at most 500 records and 5 MiB per call.
const MAX_ENTRIES: usize = 500;
const MAX_CALL_BYTES: usize = 5 << 20;
/// A KPL aggregate stays under the 1 MiB record limit.
const MAX_AGGREGATE_BYTES: usize = 900 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("kinesis stream {stream}: {message}")]
    Kinesis { stream: String, message: String },
}

/// What to send.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub stream: String,
    /// Stop after this many events.
    pub events: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Target events per second (None: as fast as the stream takes them).
    pub rate: Option<u64>,
    /// Pack up to this many events per Kinesis record (KPL aggregation).
    pub aggregate: Option<usize>,
    pub seed: u64,
    /// Create the stream with this many shards if it does not exist.
    pub create_shards: Option<i32>,
}

/// What was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Produced {
    pub events: u64,
    pub records: u64,
    pub retried: u64,
    pub elapsed: Duration,
}

pub async fn client() -> Client {
    let config = aws_config::load_from_env().await;
    Client::new(&config)
}

/// Creates the stream when missing and waits until it is active.
pub async fn ensure_stream(client: &Client, stream: &str, shards: i32) -> Result<(), ProduceError> {
    let err = |message: String| ProduceError::Kinesis {
        stream: stream.to_string(),
        message,
    };
    if client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .is_err()
    {
        client
            .create_stream()
            .stream_name(stream)
            .shard_count(shards)
            .send()
            .await
            .map_err(|e| err(format!("CreateStream: {}", error_text(&e))))?;
    }
    for _ in 0..600 {
        let s = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| err(format!("DescribeStreamSummary: {}", error_text(&e))))?;
        if s.stream_description_summary().map(|d| d.stream_status()) == Some(&StreamStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(err("did not become ACTIVE within 60 s".into()))
}

/// Sends events until the count or duration is reached; `on_progress` sees the running totals.
pub async fn produce(
    client: &Client,
    opts: &ProduceOptions,
    mut on_progress: impl FnMut(&Produced),
) -> Result<Produced, ProduceError> {
    if let Some(shards) = opts.create_shards {
        ensure_stream(client, &opts.stream, shards).await?;
    }
    let gen_opts = Options {
        seed: opts.seed,
        ..Default::default()
    };
    let mut events = EventStream::new(&gen_opts, products(&gen_opts));
    let started = Instant::now();
    let mut done = Produced::default();
    let mut line = String::with_capacity(256);
    loop {
        let remaining = opts.events.map(|n| n - done.events);
        if remaining == Some(0) || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // One PutRecords call worth of entries.
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut in_call = 0u64;
        while entries.len() < MAX_ENTRIES && bytes < MAX_CALL_BYTES - MAX_AGGREGATE_BYTES {
            if remaining.is_some_and(|r| in_call >= r) {
                break;
            }
            let per_record = opts.aggregate.unwrap_or(1).max(1);
            let mut parts = Vec::new();
            let mut part_bytes = 0;
            let mut key = String::new();
            while parts.len() < per_record && part_bytes < MAX_AGGREGATE_BYTES - 4096 {
                if remaining.is_some_and(|r| in_call >= r) {
                    break;
                }
                line.clear();
                events.next_line_at(&mut line, Some(chrono::Utc::now()));
                if key.is_empty() {
                    key = events.session().to_string();
                }
                part_bytes += line.len();
                parts.push(Bytes::copy_from_slice(line.trim_end().as_bytes()));
                in_call += 1;
            }
            if parts.is_empty() {
                break;
            }
            let data = if opts.aggregate.is_some() {
                kpl::aggregate(&key, parts)
            } else {
                parts.pop().expect("one part")
            };
            bytes += data.len();
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(data.to_vec()))
                    .build()
                    .expect("partition key and data are set"),
            );
        }
        done.retried += put_all(client, &opts.stream, entries.clone()).await?;
        done.events += in_call;
        done.records += entries.len() as u64;
        on_progress(&done);
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(done.events as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    done.elapsed = started.elapsed();
    Ok(done)
}

/// Puts entries, retrying the failed ones with backoff; returns how many were retried.
async fn put_all(
    client: &Client,
    stream: &str,
    mut entries: Vec<PutRecordsRequestEntry>,
) -> Result<u64, ProduceError> {
    let mut retried = 0;
    let mut attempt = 0u32;
    while !entries.is_empty() {
        let resp = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries.clone()))
            .send()
            .await;
        let failed: Vec<PutRecordsRequestEntry> = match resp {
            Ok(r) => r
                .records()
                .iter()
                .zip(entries)
                .filter(|(res, _)| res.error_code().is_some())
                .map(|(_, e)| e)
                .collect(),
            Err(e) if attempt < 20 => {
                tracing::warn!("PutRecords failed: {}; retrying", error_text(&e));
                entries
            }
            Err(e) => {
                return Err(ProduceError::Kinesis {
                    stream: stream.to_string(),
                    message: format!("PutRecords: {}", error_text(&e)),
                });
            }
        };
        if !failed.is_empty() {
            attempt += 1;
            retried += failed.len() as u64;
            let pause = Duration::from_millis(50 * 2u64.pow(attempt.min(6)));
            tokio::time::sleep(pause.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
        }
        entries = failed;
    }
    Ok(retried)
}
