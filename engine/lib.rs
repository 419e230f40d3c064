//! Weir: a micro-batch analytics engine for e-commerce event streams. Records are read with their
//! positions, decoded into Arrow, batched, transformed with SQL files by DataFusion, written to a
//! Parquet lake and committed exactly once. `pipeline` reads top to bottom.

pub mod batch;
pub mod cli;
pub mod commit;
pub mod decode;
pub mod generate;
pub mod job;
pub mod leased;
pub mod load;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod produce;
pub mod query;
pub mod serve;
pub mod sink;
pub mod source;
pub mod storage;
pub mod transform;
