//! Shard leases in DynamoDB, in the Kinesis Client Library's schema (`leaseKey` = shard id,
//! `leaseOwner`, `leaseCounter`, `checkpoint`, `checkpointSubSequenceNumber`,
//! `ownerSwitchesSinceCheckpoint`, `parentShardId`), so that KCL tools can read the table.
//!
//! Every change is a conditional update on `leaseCounter` (and, for the owner's own changes,
//! `leaseOwner`), and every change increments the counter: whoever changes a lease first wins, and
//! a counter that has not moved for the failover time belongs to a worker that is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};

use super::error_text;
use crate::source::Position;

/// The checkpoint of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";
/// Longest wait for one DynamoDB call attempt, and for a call with its retries, when no failover
/// time says otherwise (`weir status`).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(6);
/// Longest wait for a new lease table to become active.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum LeaseTableError {
    #[error("lease table {table}: {message}")]
    Call { table: String, message: String },
    #[error("lease table {table}, shard {shard}: {message}")]
    Corrupt {
        table: String,
        shard: String,
        message: String,
    },
}

/// One shard's lease as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLease {
    pub shard: String,
    /// None: nobody holds it (new, released, or read to its end).
    pub owner: Option<String>,
    pub counter: u64,
    /// `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP` (not read yet), a sequence number, or `SHARD_END`.
    pub checkpoint: String,
    pub sub: u64,
    pub owner_switches: u64,
    pub parents: Vec<String>,
    /// For a `LATEST` lease, the moment it was added (epoch ms, `weirStartAt`): whoever owns the
    /// shard first starts there, so that no owner skips what came in before it started.
    pub start_at_ms: Option<i64>,
    /// The process and change that last changed it (`weirWriter`, `<token>/<n>`).
    pub writer: Option<String>,
}

impl ShardLease {
    pub fn ended(&self) -> bool {
        self.checkpoint == SHARD_END
    }

    /// Whether the process with `token` made the last change to it.
    pub fn changed_by(&self, token: &str) -> bool {
        self.writer
            .as_deref()
            .and_then(|w| w.split_once('/'))
            .is_some_and(|(t, _)| t == token)
    }
}

/// What a conditional change found instead of what it expected.
#[derive(Debug)]
pub enum Changed {
    /// Someone else changed the lease first (another owner, or the counter moved).
    Lost,
    Failed(LeaseTableError),
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Changed::Lost => write!(f, "the lease was changed by another worker"),
            Changed::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// A DynamoDB table of shard leases.
#[derive(Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
    /// This process's token: every change it makes writes `weirWriter = <token>/<n>`, with a new
    /// `n` each time, to tell its own changes (and leases) from any other process's, even one
    /// with the same worker id.
    token: Arc<str>,
    changes: Arc<AtomicU64>,
}

impl LeaseTable {
    /// Connects with the standard AWS configuration (`AWS_ENDPOINT_URL_DYNAMODB` for a stand-in);
    /// creates the table (on-demand billing) if it is missing and waits until it is active.
    /// A lease change (with its retries) gives up after a third of `failover`, at least 2 s: one
    /// that takes longer is worse than one that fails, as the next round retries it.
    pub async fn open(table: &str, failover: Duration) -> Result<Self, LeaseTableError> {
        let operation = (failover / 3).clamp(Duration::from_secs(2), OPERATION_TIMEOUT);
        let attempt = (operation / 2).min(CALL_TIMEOUT);
        let this = Self::with_timeouts(table, attempt, operation).await;
        this.ensure().await?;
        Ok(this)
    }

    /// The table, as it is (`weir status` reads it; it neither creates nor waits for it).
    pub async fn connect(table: &str) -> Self {
        Self::with_timeouts(table, CALL_TIMEOUT, OPERATION_TIMEOUT).await
    }

    async fn with_timeouts(table: &str, attempt: Duration, operation: Duration) -> Self {
        let config = aws_config::load_from_env().await;
        let client = Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&config)
                .retry_config(RetryConfig::standard().with_max_attempts(3))
                .timeout_config(
                    TimeoutConfig::builder()
                        .operation_attempt_timeout(attempt)
                        .operation_timeout(operation)
                        .build(),
                )
                .build(),
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Self {
            client,
            table: table.to_string(),
            token: format!("{:x}-{:x}", std::process::id(), nanos).into(),
            changes: Arc::default(),
        }
    }

    /// This process's token (see `weirWriter`).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    fn err<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        what: &str,
    ) -> impl Fn(SdkError<E, R>) -> LeaseTableError {
        let table = self.table.clone();
        let what = what.to_string();
        move |e| LeaseTableError::Call {
            table: table.clone(),
            message: format!("{what}: {}", error_text(&e)),
        }
    }

    async fn ensure(&self) -> Result<(), LeaseTableError> {
        let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
        let mut created = false;
        loop {
            let status = match self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
            {
                Ok(out) => out.table().and_then(|t| t.table_status().cloned()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    if !created {
                        self.create().await?;
                        created = true;
                    }
                    None
                }
                Err(e) => return Err(self.err("DescribeTable")(e)),
            };
            match status {
                Some(TableStatus::Active) => return Ok(()),
                Some(TableStatus::Deleting) => {
                    return Err(LeaseTableError::Call {
                        table: self.table.clone(),
                        message: "the table is being deleted; wait until it is gone, or name another lease table".into(),
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LeaseTableError::Call {
                    table: self.table.clone(),
                    message: format!(
                        "not active after {} s; check it in the DynamoDB console",
                        CREATE_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn create(&self) -> Result<(), LeaseTableError> {
        tracing::info!(table = %self.table, "creating the lease table (on-demand billing)");
        let key = "leaseKey";
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("name and type are set"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key)
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("name and type are set"),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Another worker created it first.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.err("CreateTable")(e)),
        }
    }

    /// Every lease (a strongly consistent scan).
    pub async fn scan(&self) -> Result<Vec<ShardLease>, LeaseTableError> {
        let items = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Vec<_>>()
            .await;
        let mut leases = Vec::with_capacity(items.len());
        for item in items {
            let item = item.map_err(self.err("Scan"))?;
            leases.push(self.parse(&item)?);
        }
        leases.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(leases)
    }

    fn parse(&self, item: &HashMap<String, AttributeValue>) -> Result<ShardLease, LeaseTableError> {
        let shard = item
            .get("leaseKey")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default();
        let corrupt = |message: String| LeaseTableError::Corrupt {
            table: self.table.clone(),
            shard: shard.clone(),
            message,
        };
        let number = |key: &str| -> Result<u64, LeaseTableError> {
            match item.get(key) {
                None => Ok(0),
                Some(v) => v
                    .as_n()
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| corrupt(format!("{key} is not a whole number: {v:?}"))),
            }
        };
        Ok(ShardLease {
            owner: item
                .get("leaseOwner")
                .and_then(|v| v.as_s().ok())
                .filter(|o| !o.is_empty())
                .cloned(),
            counter: number("leaseCounter")?,
            checkpoint: item
                .get("checkpoint")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .ok_or_else(|| corrupt("no checkpoint".into()))?,
            sub: number("checkpointSubSequenceNumber")?,
            owner_switches: number("ownerSwitchesSinceCheckpoint")?,
            parents: item
                .get("parentShardId")
                .and_then(|v| v.as_ss().ok())
                .cloned()
                .unwrap_or_default(),
            writer: item.get("weirWriter").and_then(|v| v.as_s().ok()).cloned(),
            start_at_ms: item
                .get("weirStartAt")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok()),
            shard: shard.clone(),
        })
    }

    /// Adds a shard's lease, unowned, unless it exists. Returns whether it was added.
    pub async fn create_lease(
        &self,
        shard: &str,
        parents: &[String],
        checkpoint: &str,
        start_at_ms: Option<i64>,
    ) -> Result<bool, LeaseTableError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("leaseKey", s(shard))
            .item("leaseCounter", n(0))
            .item("checkpoint", s(checkpoint))
            .item("checkpointSubSequenceNumber", n(0))
            .item("ownerSwitchesSinceCheckpoint", n(0))
            .condition_expression("attribute_not_exists(leaseKey)");
        if !parents.is_empty() {
            put = put.item("parentShardId", AttributeValue::Ss(parents.to_vec()));
        }
        if let Some(at) = start_at_ms {
            put = put.item("weirStartAt", AttributeValue::N(at.to_string()));
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err("PutItem")(e)),
        }
    }

    /// One conditional update of `shard`'s lease, expected at `counter` (and held by `owner`,
    /// when given); the counter goes up by one, and the lease is then owned by `after` (`None`:
    /// by nobody). Returns the new counter.
    ///
    /// An attempt that timed out after DynamoDB applied it is retried by the SDK and then fails
    /// its condition: the item as it stands (returned with the failure) names this very change
    /// in `weirWriter` when it was applied.
    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        shard: &str,
        counter: u64,
        owner: Option<&str>,
        after: Option<&str>,
        set: &str,
        values: Vec<(&str, AttributeValue)>,
        remove: &str,
    ) -> Result<u64, Changed> {
        let next = counter + 1;
        let change = format!(
            "{}/{}",
            self.token,
            self.changes.fetch_add(1, Ordering::Relaxed)
        );
        let mut expression = format!("SET leaseCounter = :next, weirWriter = :change{set}");
        if !remove.is_empty() {
            expression.push_str(" REMOVE ");
            expression.push_str(remove);
        }
        let mut condition = "leaseCounter = :counter".to_string();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", s(shard))
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":change", s(&change))
            .expression_attribute_values(":counter", n(counter));
        if let Some(owner) = owner {
            condition.push_str(" AND leaseOwner = :owner");
            update = update.expression_attribute_values(":owner", s(owner));
        }
        for (k, v) in values {
            update = update.expression_attribute_values(k, v);
        }
        match update
            .update_expression(expression)
            .condition_expression(condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await
        {
            Ok(_) => Ok(next),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    let mine = failed
                        .item()
                        .and_then(|item| self.parse(item).ok())
                        .is_some_and(|now| {
                            now.counter == next
                                && now.owner.as_deref() == after
                                && now.writer.as_deref() == Some(change.as_str())
                        });
                    if mine { Ok(next) } else { Err(Changed::Lost) }
                }
                _ => Err(Changed::Failed(self.err("UpdateItem")(e))),
            },
        }
    }

    /// Takes `lease` (as last seen) for `me`.
    pub async fn take(&self, lease: &ShardLease, me: &str) -> Result<u64, Changed> {
        self.update(
            &lease.shard,
            lease.counter,
            None,
            Some(me),
            ", leaseOwner = :me, ownerSwitchesSinceCheckpoint = :switches",
            vec![(":me", s(me)), (":switches", n(lease.owner_switches + 1))],
            "",
        )
        .await
    }

    /// Renews `me`'s lease of `shard`, held at `counter`.
    pub async fn renew(&self, shard: &str, me: &str, counter: u64) -> Result<u64, Changed> {
        self.update(shard, counter, Some(me), Some(me), "", Vec::new(), "")
            .await
    }

    /// Records `me`'s checkpoint of `shard`.
    pub async fn checkpoint(
        &self,
        shard: &str,
        me: &str,
        counter: u64,
        at: &Position,
    ) -> Result<u64, Changed> {
        let (checkpoint, sub) = match at {
            Position::Sequence { seq, sub } => (seq.clone(), *sub),
            Position::Line(_) => unreachable!("a Kinesis shard has sequences"),
        };
        self.update(
            shard,
            counter,
            Some(me),
            Some(me),
            ", checkpoint = :cp, checkpointSubSequenceNumber = :sub, \
             ownerSwitchesSinceCheckpoint = :zero",
            vec![(":cp", s(&checkpoint)), (":sub", n(sub)), (":zero", n(0))],
            "",
        )
        .await
    }

    /// Checkpoints `shard` at `SHARD_END` and gives the lease up, in one change.
    pub async fn end(&self, shard: &str, me: &str, counter: u64) -> Result<u64, Changed> {
        self.update(
            shard,
            counter,
            Some(me),
            None,
            ", checkpoint = :cp, checkpointSubSequenceNumber = :zero, \
             ownerSwitchesSinceCheckpoint = :zero",
            vec![(":cp", s(SHARD_END)), (":zero", n(0))],
            "leaseOwner",
        )
        .await
    }

    /// Gives up `me`'s lease of `shard`, so another worker takes it at once.
    pub async fn release(&self, shard: &str, me: &str, counter: u64) -> Result<u64, Changed> {
        self.update(shard, counter, Some(me), None, "", Vec::new(), "leaseOwner")
            .await
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Checks a lease table name as DynamoDB does: 3 to 255 of `a-zA-Z0-9_.-`.
pub fn check_table_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.len() < 3 || name.len() > 255 || !name.chars().all(valid) {
        return Err(format!(
            "\"{name}\" is not a DynamoDB table name: use 3 to 255 letters, digits, '_', '.' or \
             '-', e.g. \"weir-shop-leases\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_dynamodb() {
        assert!(check_table_name("weir-shop-leases").is_ok());
        assert!(check_table_name("ab").is_err());
        assert!(check_table_name("has space").unwrap_err().contains("e.g."));
    }

    #[test]
    fn a_lease_tells_its_end_and_which_process_changed_it() {
        let mut lease = ShardLease {
            shard: "shardId-000000000000".into(),
            owner: None,
            counter: 0,
            checkpoint: "49590338271490256608559692538361571095921575989136588898".into(),
            sub: 2,
            owner_switches: 0,
            parents: vec![],
            start_at_ms: None,
            writer: Some("1a-2b/7".into()),
        };
        assert!(lease.changed_by("1a-2b") && !lease.changed_by("1a"));
        assert!(!lease.ended());
        lease.checkpoint = SHARD_END.into();
        assert!(lease.ended());
    }
}
