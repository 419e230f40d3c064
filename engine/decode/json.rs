//! JSON lines runs, decoded by arrow-json against the declared schema.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::ReaderBuilder;

use super::RunDecoder;

pub(crate) struct JsonRuns {
    schema: SchemaRef,
}

impl JsonRuns {
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema }
    }
}

impl RunDecoder for JsonRuns {
    fn decode_run(&mut self, bytes: &[u8], n: usize) -> Result<RecordBatch, ArrowError> {
        // One more than the number of lines, so that a line holding two values is noticed.
        let mut decoder = ReaderBuilder::new(self.schema.clone())
            .with_batch_size(n + 1)
            .build_decoder()?;
        super::feed(bytes, |b| decoder.decode(b))?;
        Ok(super::or_empty(decoder.flush()?, &self.schema))
    }
}
