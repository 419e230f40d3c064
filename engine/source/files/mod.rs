//! File source: JSON lines or CSV files by path, glob or object store URL, `.gz` decompressed on the
//! fly. A file is a shard; a record's position is the line it starts on.

mod reader;
mod split;

pub use split::{CUT, Framing};

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use tokio::sync::mpsc;

use super::{
    BatchRange, Buffers, Checkpoint, ChunkLimits, Position, RawChunk, Source, SourceError,
};
use crate::storage;

/// Where one input file lives.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    Local(PathBuf),
    Remote(Arc<dyn ObjectStore>, StorePath),
}

/// One input file: its shard key (path or URL) and where to read it.
#[derive(Debug, Clone)]
pub(crate) struct InputFile {
    pub key: String,
    pub location: Location,
    pub size: u64,
}

/// Reads files in name order; see the module docs.
#[derive(Debug)]
pub struct FileSource {
    input: String,
    files: Vec<InputFile>,
    limits: ChunkLimits,
    framing: Framing,
}

impl FileSource {
    /// Resolves `input` (path, glob or URL) into the list of files to read.
    ///
    /// Local files under `root` are keyed by their path relative to it, so a commit log stays
    /// valid when the project folder moves.
    pub async fn open(
        input: &str,
        root: &std::path::Path,
        limits: ChunkLimits,
        framing: Framing,
    ) -> Result<Self, SourceError> {
        let mut files = if input.contains("://") && !input.starts_with("file://") {
            list_remote(input).await?
        } else {
            list_local(input.strip_prefix("file://").unwrap_or(input), root)?
        };
        files.sort_by(|a, b| a.key.cmp(&b.key));
        if files.is_empty() {
            return Err(SourceError::NoInput {
                input: input.to_string(),
            });
        }
        Ok(Self {
            input: input.to_string(),
            files,
            limits,
            framing,
        })
    }

    async fn read_files(
        &self,
        plan: Vec<(InputFile, u64, Option<u64>)>,
        tx: mpsc::Sender<RawChunk>,
    ) -> Result<(), SourceError> {
        let limits = self.limits;
        let framing = self.framing;
        let buffers = Buffers::new(reader::chunk_capacity(limits, framing));
        tokio::task::spawn_blocking(move || {
            for (file, after, until) in plan {
                let more = reader::read_file(&file, after, until, limits, framing, &buffers, &tx)?;
                if !more {
                    break;
                }
            }
            Ok(())
        })
        .await
        .expect("file reader panicked")
    }
}

#[async_trait]
impl Source for FileSource {
    fn describe(&self) -> String {
        format!("{} ({} files)", self.input, self.files.len())
    }

    fn size_hint(&self) -> Option<u64> {
        Some(self.files.iter().map(|f| f.size).sum())
    }

    fn bounded(&self) -> bool {
        true
    }

    async fn read(&self, from: &Checkpoint, tx: mpsc::Sender<RawChunk>) -> Result<(), SourceError> {
        let plan = self
            .files
            .iter()
            .map(|f| {
                let after = match from.get(&f.key) {
                    Some(Position::Line(n)) => *n,
                    _ => 0,
                };
                (f.clone(), after, None)
            })
            .collect();
        self.read_files(plan, tx).await
    }

    async fn read_range(
        &self,
        range: &BatchRange,
        tx: mpsc::Sender<RawChunk>,
    ) -> Result<(), SourceError> {
        let mut plan = Vec::new();
        for (shard, r) in range {
            let file = self.files.iter().find(|f| &f.key == shard).ok_or_else(|| {
                SourceError::MissingShard {
                    shard: shard.clone(),
                }
            })?;
            let (Position::Line(first), Position::Line(last)) = (&r.first, &r.last) else {
                return Err(SourceError::Invalid {
                    input: shard.clone(),
                    message: "the batch log holds a Kinesis position for a file".into(),
                });
            };
            plan.push((file.clone(), first.saturating_sub(1), Some(*last)));
        }
        self.read_files(plan, tx).await
    }
}

fn list_local(input: &str, root: &std::path::Path) -> Result<Vec<InputFile>, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        input: input.to_string(),
        message,
    };
    let path = std::path::Path::new(input);
    let paths: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| invalid(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    } else {
        glob::glob(input)
            .map_err(|e| invalid(format!("bad glob: {e}")))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect()
    };
    paths
        .into_iter()
        .map(|p| {
            let size = std::fs::metadata(&p)
                .map_err(|source| SourceError::Io {
                    file: p.display().to_string(),
                    source,
                })?
                .len();
            let key = std::path::absolute(&p)
                .ok()
                .and_then(|abs| abs.strip_prefix(root).ok().map(|r| r.display().to_string()))
                .unwrap_or_else(|| p.display().to_string());
            Ok(InputFile {
                key,
                location: Location::Local(p),
                size,
            })
        })
        .collect()
}

async fn list_remote(input: &str) -> Result<Vec<InputFile>, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        input: input.to_string(),
        message,
    };
    // Split the URL at the first glob character: list the prefix, match the rest.
    let glob_at = input.find(['*', '?', '[']).unwrap_or(input.len());
    let base = &input[..input[..glob_at]
        .rfind('/')
        .map(|i| i + 1)
        .unwrap_or(glob_at)];
    let (store, prefix) = storage::parse(base).map_err(|e| invalid(e.to_string()))?;
    let pattern = glob::Pattern::new(input).map_err(|e| invalid(format!("bad glob: {e}")))?;
    let root = base.trim_end_matches('/');
    let listed: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| SourceError::Store {
            input: input.to_string(),
            source,
        })?;
    let rel = |p: &StorePath| -> String {
        let full = p.as_ref();
        let prefix = prefix.as_ref();
        full.strip_prefix(prefix)
            .unwrap_or(full)
            .trim_start_matches('/')
            .to_string()
    };
    Ok(listed
        .into_iter()
        .filter_map(|meta| {
            let url = format!("{root}/{}", rel(&meta.location));
            let matches = glob_at == input.len()
                && (url == input || url.starts_with(&format!("{}/", input.trim_end_matches('/'))))
                || pattern.matches(&url);
            matches.then(|| InputFile {
                key: url,
                location: Location::Remote(store.clone(), meta.location),
                size: meta.size,
            })
        })
        .collect())
}
