//! Shard discovery and read order: every shard of the stream, a child only after its parents have
//! been read to their end (so no record of a split or merge is skipped or read out of order).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_kinesis::Client;

use super::reader::{Backoff, is_retryable};
use crate::source::SourceError;

/// One shard as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    pub parents: Vec<String>,
    /// Closed by a split or merge (it has an ending sequence number): nothing more is written to
    /// it.
    pub closed: bool,
}

/// Every shard of `stream`, following `ListShards` pages; throttling and server errors are retried
/// with backoff, like GetRecords: at most `attempts` times (at start, so that a wrong endpoint or
/// region fails fast), or without end (`None`, while running).
pub async fn list(
    client: &Client,
    stream: &str,
    attempts: Option<u32>,
) -> Result<Vec<ShardInfo>, SourceError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let mut backoff = Backoff::default();
        let mut failed = 0;
        let resp = loop {
            match req.clone().send().await {
                Ok(resp) => break resp,
                Err(e) if is_retryable(&e) && attempts.is_none_or(|a| failed + 1 < a) => {
                    failed += 1;
                    metrics::counter!("weir_kinesis_retries_total").increment(1);
                    backoff
                        .wait(stream, &format!("ListShards: {}", super::error_text(&e)))
                        .await;
                }
                Err(e) => {
                    return Err(SourceError::Invalid {
                        input: format!("kinesis stream {stream}"),
                        message: format!("ListShards failed: {}", super::error_text(&e)),
                    });
                }
            }
        };
        for s in resp.shards() {
            out.push(ShardInfo {
                id: s.shard_id().to_string(),
                parents: s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .map(str::to_string)
                    .collect(),
                closed: s
                    .sequence_number_range()
                    .is_some_and(|r| r.ending_sequence_number().is_some()),
            });
        }
        match resp.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(out),
        }
    }
}

/// Shards that may start now: not started yet, and every parent still listed has been read to its
/// end (a parent no longer listed has expired and holds nothing to read).
pub fn ready(
    shards: &[ShardInfo],
    started: &BTreeSet<String>,
    finished: &BTreeSet<String>,
) -> Vec<ShardInfo> {
    let listed: BTreeMap<&str, &ShardInfo> = shards.iter().map(|s| (s.id.as_str(), s)).collect();
    shards
        .iter()
        .filter(|s| !started.contains(&s.id))
        .filter(|s| {
            s.parents
                .iter()
                .all(|p| finished.contains(p) || !listed.contains_key(p.as_str()))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed: false,
        }
    }

    #[test]
    fn children_wait_for_every_parent() {
        // 0 split into 2 and 3; then 1 and 2 merged into 4.
        let shards = [
            shard("0", &[]),
            shard("1", &[]),
            shard("2", &["0"]),
            shard("3", &["0"]),
            shard("4", &["1", "2"]),
        ];
        let none = BTreeSet::new();
        let ids = |v: Vec<ShardInfo>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(ready(&shards, &none, &none)), ["0", "1"]);
        let started: BTreeSet<String> = ["0", "1"].map(String::from).into();
        let finished: BTreeSet<String> = ["0"].map(String::from).into();
        assert_eq!(ids(ready(&shards, &started, &finished)), ["2", "3"]);
        let started: BTreeSet<String> = ["0", "1", "2", "3"].map(String::from).into();
        let finished: BTreeSet<String> = ["0", "2"].map(String::from).into();
        assert!(
            ready(&shards, &started, &finished).is_empty(),
            "4 waits for 1"
        );
        let finished: BTreeSet<String> = ["0", "1", "2"].map(String::from).into();
        assert_eq!(ids(ready(&shards, &started, &finished)), ["4"]);
        // An expired parent does not block its children.
        assert_eq!(ids(ready(&shards[2..4], &none, &none)), ["2", "3"]);
    }
}
