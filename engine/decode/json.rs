//! JSON lines runs, decoded by arrow-json against the declared schema.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;

use super::RunDecoder;

pub(crate) struct JsonRuns {
    schema: SchemaRef,
    /// The decoder of the last run that succeeded, and its batch size: kept so that its tape
    /// buffers are reused (a decoder per run allocated, grew and freed them every chunk).
    kept: Option<(usize, Decoder)>,
}

impl JsonRuns {
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema, kept: None }
    }
}

impl RunDecoder for JsonRuns {
    fn decode_run(&mut self, bytes: &[u8], n: usize) -> Result<RecordBatch, ArrowError> {
        // A batch size above the number of lines, so that a line holding two values is noticed
        // (the run then has more rows than lines). A decoder that failed may hold part of a
        // record, so it is dropped and the next run builds a new one.
        let (size, mut decoder) = match self.kept.take() {
            Some((size, decoder)) if size > n => (size, decoder),
            _ => (
                n + 1,
                ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(n + 1)
                    .build_decoder()?,
            ),
        };
        super::feed(bytes, |b| decoder.decode(b))?;
        let batch = super::or_empty(decoder.flush()?, &self.schema);
        self.kept = Some((size, decoder));
        Ok(batch)
    }
}
