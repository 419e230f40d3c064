//! Decode raw records into Arrow columns with the declared schema (arrow-json / arrow-csv). A
//! record that does not decode becomes a dead letter with its position and reason; the rest of its
//! chunk decodes normally, found by bisecting failed runs.

mod check;
mod csv;
mod json;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use bytes::Bytes;

use crate::job::{Input, InputFormat};
use crate::source::{Position, RawChunk};

/// A record that could not be decoded: kept, never dropped.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub shard: Arc<str>,
    pub position: Position,
    pub reason: String,
    pub raw: Bytes,
}

/// One chunk after decoding.
#[derive(Debug)]
pub struct Decoded {
    pub shard: Arc<str>,
    pub first: Position,
    pub last: Position,
    /// Rows in the `events` table schema, in input order.
    pub batches: Vec<RecordBatch>,
    pub dead: Vec<DeadLetter>,
    pub records: usize,
    pub record_bytes: u64,
    pub input_bytes: u64,
    /// Arrival time of the oldest record (epoch ms), when known.
    pub arrived_ms: Option<i64>,
}

/// Decodes a run of complete records (bytes of `n` records, newline separated) into exactly one
/// batch; any error fails the whole run.
pub(crate) trait RunDecoder: Send {
    fn decode_run(&mut self, bytes: &[u8], n: usize) -> Result<RecordBatch, ArrowError>;
}

/// Decodes chunks of one job's input.
pub struct Decoder {
    inner: Box<dyn RunDecoder>,
    table_schema: SchemaRef,
    max_record_bytes: usize,
}

impl Decoder {
    pub fn new(input: &Input) -> Self {
        let schema = input.schema.decode_schema();
        let inner: Box<dyn RunDecoder> = match input.format {
            InputFormat::Json => Box::new(json::JsonRuns::new(schema)),
            InputFormat::Csv => Box::new(csv::CsvRuns::new(schema, input.csv.delimiter)),
        };
        Self {
            inner,
            table_schema: input.schema.table_schema(),
            max_record_bytes: input.max_record_bytes,
        }
    }

    /// Decodes every record of `chunk`; a chunk must not be empty.
    pub fn decode(&mut self, chunk: &RawChunk) -> Decoded {
        let mut dead = Vec::new();
        let mut batches = Vec::new();
        let mut run_start = None;
        for i in 0..chunk.len() {
            let raw = chunk.record(i);
            let known = chunk.rejected.iter().find(|(at, _)| *at as usize == i);
            let problem = if let Some((_, reason)) = known {
                Some(reason.clone())
            } else if raw.len() > self.max_record_bytes {
                Some(format!(
                    "record is {} bytes, over the limit of {} (input.max_record_bytes)",
                    raw.len(),
                    self.max_record_bytes
                ))
            } else {
                // UTF-8 is checked by the decoders (once, over a whole run); a record that is
                // not fails its run and is named alone below.
                None
            };
            match problem {
                Some(reason) => {
                    if let Some(s) = run_start.take() {
                        self.decode_range(chunk, s, i, &mut batches, &mut dead);
                    }
                    dead.push(dead_letter(chunk, i, reason));
                }
                None => {
                    run_start.get_or_insert(i);
                }
            }
        }
        if let Some(s) = run_start {
            self.decode_range(chunk, s, chunk.len(), &mut batches, &mut dead);
        }
        dead.sort_by(|a, b| a.position.cmp(&b.position));
        Decoded {
            shard: chunk.shard.clone(),
            first: chunk.positions[0].clone(),
            last: chunk.positions[chunk.len() - 1].clone(),
            batches,
            dead,
            records: chunk.len(),
            record_bytes: chunk.record_bytes(),
            input_bytes: chunk.input_bytes,
            arrived_ms: chunk.arrived_ms,
        }
    }

    /// Decodes records `a..b`; on failure splits the run in two until the bad records are alone.
    fn decode_range(
        &mut self,
        chunk: &RawChunk,
        a: usize,
        b: usize,
        batches: &mut Vec<RecordBatch>,
        dead: &mut Vec<DeadLetter>,
    ) {
        let bytes = &chunk.data[chunk.bounds[a].0 as usize..chunk.bounds[b - 1].1 as usize + 1];
        let n = b - a;
        // Rows that decode but hold values no warehouse takes are set aside, then the rest is cast.
        let result = self.inner.decode_run(bytes, n).and_then(|batch| {
            if batch.num_rows() != n {
                return Ok((batch, Default::default()));
            }
            let problems = check::problems(&batch);
            let batch = check::without(batch, &problems)?;
            Ok((self.to_table(batch)?, problems))
        });
        match result {
            Ok((batch, problems)) if batch.num_rows() + problems.len() == n => {
                if batch.num_rows() > 0 {
                    batches.push(batch);
                }
                dead.extend(
                    problems
                        .into_iter()
                        .map(|(row, reason)| dead_letter(chunk, a + row, reason)),
                );
            }
            Ok((batch, _)) if n == 1 => dead.push(dead_letter(
                chunk,
                a,
                format!(
                    "line holds {} records; put one record per line",
                    batch.num_rows()
                ),
            )),
            Err(e) if n == 1 => {
                let raw = chunk.record(a);
                let reason = match std::str::from_utf8(raw) {
                    Err(bad) => format!("record is not valid UTF-8: {bad}"),
                    Ok(_) => reason(&e),
                };
                dead.push(dead_letter(chunk, a, reason))
            }
            _ => {
                let mid = a + n / 2;
                self.decode_range(chunk, a, mid, batches, dead);
                self.decode_range(chunk, mid, b, batches, dead);
            }
        }
    }

    /// Casts decoded columns to the `events` table types (timestamps to microseconds).
    fn to_table(&self, batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
        if batch.schema().fields() == self.table_schema.fields() {
            return Ok(batch);
        }
        let columns = batch
            .columns()
            .iter()
            .zip(self.table_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.table_schema.clone(), columns)
    }
}

fn dead_letter(chunk: &RawChunk, i: usize, reason: String) -> DeadLetter {
    let (s, e) = chunk.bounds[i];
    DeadLetter {
        shard: chunk.shard.clone(),
        position: chunk.positions[i].clone(),
        reason,
        raw: chunk.data.slice(s as usize..e as usize),
    }
}

/// A decoder error as a dead-letter reason, without Arrow's error-kind prefix.
fn reason(e: &ArrowError) -> String {
    let text = e.to_string();
    for prefix in [
        "Json error: ",
        "Parser error: ",
        "Invalid argument error: ",
        "Csv error: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}

/// Feeds a whole run to a push decoder; the caller then flushes it.
fn feed(
    bytes: &[u8],
    mut decode: impl FnMut(&[u8]) -> Result<usize, ArrowError>,
) -> Result<(), ArrowError> {
    let mut offset = 0;
    while offset < bytes.len() {
        let read = decode(&bytes[offset..])?;
        if read == 0 {
            return Err(ArrowError::JsonError(
                "more records than lines; put one record per line".into(),
            ));
        }
        offset += read;
    }
    Ok(())
}

/// A flushed batch, or an empty one when nothing was buffered.
fn or_empty(batch: Option<RecordBatch>, schema: &SchemaRef) -> RecordBatch {
    batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()))
}

#[cfg(test)]
mod tests;
