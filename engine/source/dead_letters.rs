//! The lake's `_dead_letters` table as a source, for `weir replay`: the dead letters that match a
//! filter and are not in `_replayed` yet, with their raw bytes, as chunks whose records keep their
//! original source and position (so one that fails again is a dead letter where it came from).
//! Which dead letters a replay batch took is in its plan, so a crashed replay batch is replayed
//! over exactly the same ones.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::{Position, RawChunk};
use crate::sink::lake::dead_letters::DeadLetterKey;
use crate::sink::lake::{DEAD_LETTERS, REPLAYED, delta};
use crate::storage::Location;

/// Which dead letters a replay takes.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only those whose reason contains this text.
    pub reason: Option<String>,
    /// Only those written at or after this time.
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading table {table}: {source}")]
    Delta {
        table: String,
        source: deltalake::DeltaTableError,
    },
    #[error("selecting dead letters: {0}")]
    Sql(#[from] datafusion::error::DataFusionError),
    #[error("selecting dead letters: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("dead letter of batch {batch} at {source_name} {position} is gone from _dead_letters")]
    Missing {
        batch: u64,
        source_name: String,
        position: String,
    },
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A session with `_dead_letters` and `_replayed` (empty tables when missing) at their snapshots.
async fn session(location: &Location) -> Result<(SessionContext, bool), ReplayError> {
    let ctx = SessionContext::new();
    let mut has_replayed = false;
    for name in [DEAD_LETTERS, REPLAYED] {
        let err = |source| ReplayError::Delta {
            table: name.to_string(),
            source,
        };
        let Some(table) = delta::open(location, name).await.map_err(err)? else {
            continue;
        };
        table.update_datafusion_session(&ctx.state()).map_err(err)?;
        ctx.register_table(name, table.table_provider().await?)?;
        has_replayed |= name == REPLAYED;
    }
    Ok((ctx, has_replayed))
}

/// The WHERE clause of a selection: the job, batches up to `upto`, the filter, not replayed.
fn conditions(job: &str, upto: u64, filter: &ReplayFilter, has_replayed: bool) -> String {
    let mut c = vec![
        format!("d.job = {}", literal(job)),
        format!("d.batch <= {upto}"),
        // Only the first bytes of a record cut at the limit were kept: it cannot come back.
        format!("strpos(d.reason, {}) = 0", literal(super::files::CUT)),
    ];
    if let Some(r) = &filter.reason {
        c.push(format!("strpos(d.reason, {}) > 0", literal(r)));
    }
    if let Some(t) = filter.since {
        c.push(format!(
            "d.written_at >= to_timestamp_micros({})",
            t.timestamp_micros()
        ));
    }
    if has_replayed {
        c.push(format!(
            "NOT EXISTS (SELECT 1 FROM {REPLAYED} r WHERE r.job = d.job AND r.batch = d.batch \
             AND r.source = d.source AND r.position = d.position)"
        ));
    }
    c.join(" AND ")
}

/// The next dead letters of `job` from batches up to `upto` that match `filter` and were not
/// replayed, oldest first, with their raw bytes: at most `limit` of them and about `max_bytes`
/// (at least one).
pub async fn select(
    location: &Location,
    job: &str,
    upto: u64,
    filter: &ReplayFilter,
    limit: usize,
    max_bytes: u64,
) -> Result<Vec<(DeadLetterKey, Bytes)>, ReplayError> {
    let (ctx, has_replayed) = session(location).await?;
    if !ctx.table_exist(DEAD_LETTERS)? {
        return Ok(Vec::new());
    }
    // Keys and sizes first (of `raw_text`, the lossy UTF-8 of `raw`: about as long), then the raw
    // bytes of the batch's share only.
    let sql = format!(
        "SELECT d.batch, d.source, d.position, CAST(octet_length(d.raw_text) AS BIGINT) \
         FROM {DEAD_LETTERS} d WHERE {} ORDER BY d.batch, d.source, d.position LIMIT {limit}",
        conditions(job, upto, filter, has_replayed)
    );
    let mut keys = Vec::new();
    let mut bytes = 0u64;
    for (key, size) in keyed(ctx.sql(&sql).await?.collect().await?, |b, i| {
        b.column(3).as_primitive::<Int64Type>().value(i) as u64
    })? {
        if !keys.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        keys.push(key);
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    read_in(&ctx, job, &keys).await
}

/// Per reason, how many dead letters a replay with `filter` would take (`--dry-run`).
pub async fn count(
    location: &Location,
    job: &str,
    filter: &ReplayFilter,
) -> Result<Vec<(String, u64)>, ReplayError> {
    let (ctx, has_replayed) = session(location).await?;
    if !ctx.table_exist(DEAD_LETTERS)? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT d.reason, count(*) AS n FROM {DEAD_LETTERS} d WHERE {} \
         GROUP BY d.reason ORDER BY n DESC, d.reason",
        conditions(job, u64::MAX >> 1, filter, has_replayed)
    );
    let mut out = Vec::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let reasons = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let counts = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((
                reasons.as_string::<i32>().value(i).to_string(),
                counts.value(i) as u64,
            ));
        }
    }
    Ok(out)
}

/// Exactly the dead letters `keys` (a replay batch replayed after a crash), in their order.
pub async fn read(
    location: &Location,
    job: &str,
    keys: &[DeadLetterKey],
) -> Result<Vec<(DeadLetterKey, Bytes)>, ReplayError> {
    let (ctx, _) = session(location).await?;
    read_in(&ctx, job, keys).await
}

/// The raw bytes of `keys`, joined with an in-memory table of them.
async fn read_in(
    ctx: &SessionContext,
    job: &str,
    keys: &[DeadLetterKey],
) -> Result<Vec<(DeadLetterKey, Bytes)>, ReplayError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("batch", DataType::Int64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, false),
    ]));
    let wanted = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                keys.iter().map(|k| k.batch as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                keys.iter().map(|k| &k.source),
            )),
            Arc::new(StringArray::from_iter_values(
                keys.iter().map(|k| &k.position),
            )),
        ],
    )?;
    ctx.register_table(
        "wanted",
        Arc::new(MemTable::try_new(schema, vec![vec![wanted]])?),
    )?;
    let sql = format!(
        "SELECT d.batch, d.source, d.position, d.raw FROM {DEAD_LETTERS} d JOIN wanted w \
         ON d.batch = w.batch AND d.source = w.source AND d.position = w.position \
         WHERE d.job = {}",
        literal(job)
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    ctx.deregister_table("wanted")?;
    let mut found = std::collections::BTreeMap::new();
    for b in batches {
        let raw = arrow::compute::cast(b.column(3), &DataType::Binary)?;
        let raw = raw.as_binary::<i32>();
        found.extend(keyed(vec![b], |_, i| Bytes::copy_from_slice(raw.value(i)))?);
    }
    keys.iter()
        .map(|k| {
            found
                .remove(k)
                .map(|raw| (k.clone(), raw))
                .ok_or_else(|| ReplayError::Missing {
                    batch: k.batch,
                    source_name: k.source.clone(),
                    position: k.position.clone(),
                })
        })
        .collect()
}

/// Rows starting (batch, source, position) as keys, each with `value(batch, row)`.
fn keyed<T>(
    batches: Vec<RecordBatch>,
    value: impl Fn(&RecordBatch, usize) -> T,
) -> Result<Vec<(DeadLetterKey, T)>, ReplayError> {
    let mut out = Vec::new();
    for b in batches {
        let batch = b.column(0).as_primitive::<Int64Type>();
        let source = arrow::compute::cast(b.column(1), &DataType::Utf8)?;
        let position = arrow::compute::cast(b.column(2), &DataType::Utf8)?;
        let (source, position) = (source.as_string::<i32>(), position.as_string::<i32>());
        for i in 0..b.num_rows() {
            out.push((
                DeadLetterKey {
                    batch: batch.value(i) as u64,
                    source: source.value(i).to_string(),
                    position: position.value(i).to_string(),
                },
                value(&b, i),
            ));
        }
    }
    Ok(out)
}

/// The dead letters' records as chunks of at most about `CHUNK_BYTES`, each from one source, in
/// order.
pub fn chunks(letters: &[(DeadLetterKey, Bytes)]) -> Vec<RawChunk> {
    const CHUNK_BYTES: usize = 4 << 20;
    let mut out = Vec::new();
    for run in letters.chunk_by(|a, b| a.0.source == b.0.source) {
        let mut rest = run;
        while !rest.is_empty() {
            let mut size = 0;
            let n = rest
                .iter()
                .take_while(|(_, raw)| {
                    let fits = size == 0 || size + raw.len() < CHUNK_BYTES;
                    size += raw.len() + 1;
                    fits
                })
                .count();
            let (part, tail) = rest.split_at(n);
            rest = tail;
            let mut data = Vec::with_capacity(part.iter().map(|(_, r)| r.len() + 1).sum());
            let mut bounds = Vec::with_capacity(part.len());
            for (_, raw) in part {
                let start = data.len() as u32;
                data.extend_from_slice(raw);
                bounds.push((start, data.len() as u32));
                data.push(b'\n');
            }
            out.push(RawChunk {
                shard: Arc::from(part[0].0.source.as_str()),
                input_bytes: data.len() as u64,
                data: Bytes::from(data),
                bounds,
                // A position that does not parse (it always does) cannot fail the replay.
                positions: part
                    .iter()
                    .map(|(k, _)| k.position.parse().unwrap_or(Position::Line(0)))
                    .collect(),
                rejected: Vec::new(),
                arrived_ms: None,
                buffers: None,
            });
        }
    }
    out
}

/// The source of a `weir replay` run: it reads nothing itself (the dead letters are selected per
/// batch), so the job's own source (a Kinesis stream) is not contacted.
pub struct NoSource;

#[async_trait::async_trait]
impl super::Source for NoSource {
    fn describe(&self) -> String {
        "dead letters (_dead_letters)".into()
    }

    fn size_hint(&self) -> Option<u64> {
        None
    }

    async fn read(
        &self,
        _from: &super::Checkpoint,
        _tx: tokio::sync::mpsc::Sender<RawChunk>,
    ) -> Result<(), super::SourceError> {
        Ok(())
    }

    async fn read_range(
        &self,
        _range: &super::BatchRange,
        _tx: tokio::sync::mpsc::Sender<RawChunk>,
    ) -> Result<(), super::SourceError> {
        Err(super::SourceError::Invalid {
            input: "weir replay".into(),
            message: "a batch of `weir run` was interrupted before its commit; run `weir run` \
                      first (it replays that batch), then `weir replay`"
                .into(),
        })
    }
}
