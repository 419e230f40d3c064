//! The shape of a lake on one screen. Tables are folders at the root (each a Delta table);
//! Weir's own state is under `_weir/`:
//!
//! ```text
//! <table>/_delta_log/…  <table>/dt=…/<job>-<batch>-<n>-<attempt>.parquet
//! _weir/lake.json                         the lake's identity (created once)
//! _weir/<job>/plans/<batch>.json          batch log: source range, written before any output
//! _weir/<job>/commits/<batch>.json        commit record: files, rows, checkpoint
//! _weir/<job>/latest.json                 the newest commit's batch (a hint: start-up reads
//!                                         the log from there instead of listing it)
//! _weir/<job>/lease/<generation>.json     the one writer's lease
//! _weir/<job>/loads/<destination>.json    each destination's cursor
//! _weir/<job>/parked/<destination>/<batch>.json   batches a destination failed for good
//! _weir/<job>/skipped/<destination>/<batch>.json  parked batches given up (`weir loads skip`)
//! _weir/<job>/manifests/<batch>-<table>.manifest   Redshift COPY manifests
//! _weir/<job>/windows/<batch>-<output>-<attempt>.arrow  a window output's open windows after a batch
//! ```

/// Folder of the dead-letter table.
pub const DEAD_LETTERS: &str = "_dead_letters";
/// Folder of the table of dead letters run through the job again (`weir replay`).
pub const REPLAYED: &str = "_replayed";
/// Folder of the table of rows that came after their window was written (`emit = "window"`).
pub const LATE: &str = "_late";
/// Folder of Weir's own state, beside the tables.
pub const STATE: &str = "_weir";

/// Where one job's state lives in a lake; paths relative to the lake root.
#[derive(Debug, Clone)]
pub struct Layout {
    job: String,
}

impl Layout {
    pub fn new(job: &str) -> Self {
        Self {
            job: job.to_string(),
        }
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    /// The lake's identity record (shared by every job on the lake).
    pub fn lake_id() -> String {
        format!("{STATE}/lake.json")
    }

    pub fn state(&self) -> String {
        format!("{STATE}/{}", self.job)
    }

    pub fn plans(&self) -> String {
        format!("{}/plans", self.state())
    }

    pub fn commits(&self) -> String {
        format!("{}/commits", self.state())
    }

    pub fn latest(&self) -> String {
        format!("{}/latest.json", self.state())
    }

    pub fn lease(&self) -> String {
        format!("{}/lease", self.state())
    }

    pub fn loads(&self) -> String {
        format!("{}/loads", self.state())
    }

    pub fn manifests(&self) -> String {
        format!("{}/manifests", self.state())
    }

    pub fn manifest(&self, batch: u64, table: &str) -> String {
        format!("{}/{batch:020}-{table}.manifest", self.manifests())
    }

    /// Update outputs' change files (what each batch replaced, for the warehouses).
    pub fn changes(&self) -> String {
        format!("{}/changes", self.state())
    }

    /// The name of a log entry (plan or commit) of a batch.
    pub fn entry(batch: u64) -> String {
        format!("{batch:020}.json")
    }

    /// Whether a top-level folder is a table (not Weir's state).
    pub fn is_table(folder: &str) -> bool {
        folder != STATE && !folder.starts_with('.')
    }
}
