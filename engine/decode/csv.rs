//! CSV runs, decoded by arrow-csv against the declared schema (header lines are skipped by the
//! source).

use arrow::array::RecordBatch;
use arrow::csv::ReaderBuilder;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;

use super::RunDecoder;

pub(crate) struct CsvRuns {
    schema: SchemaRef,
    delimiter: u8,
}

impl CsvRuns {
    pub fn new(schema: SchemaRef, delimiter: char) -> Self {
        Self {
            schema,
            delimiter: delimiter as u8,
        }
    }
}

impl RunDecoder for CsvRuns {
    fn decode_run(&mut self, bytes: &[u8], n: usize) -> Result<RecordBatch, ArrowError> {
        // arrow-csv checks the fields' bytes joined together, so a character split by a delimiter
        // (`a\xE2,\x82\xAC`) would pass: the run is checked whole (delimiters, quotes and line
        // ends are ASCII, so it is valid exactly when every field is).
        std::str::from_utf8(bytes).map_err(|e| ArrowError::CsvError(e.to_string()))?;
        let mut decoder = ReaderBuilder::new(self.schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(n + 1)
            .build_decoder();
        super::feed(bytes, |b| decoder.decode(b))?;
        Ok(super::or_empty(decoder.flush()?, &self.schema))
    }
}
