//! AWS Glue Data Catalog: one database, one external Parquet table per output (location under the
//! lake, partition keys from `partition_by`), and each batch's new partitions registered with
//! `BatchCreatePartition` ("already exists" is success, so a retry or replay is harmless).
//! Endpoint, region and credentials come from aws-config's standard chain (`AWS_ENDPOINT_URL_GLUE`).

use std::collections::BTreeSet;

use async_trait::async_trait;
use aws_sdk_glue::Client;
use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{
    Column, DatabaseInput, PartitionInput, SerDeInfo, StorageDescriptor, TableInput,
};
use tokio::sync::OnceCell;

use super::types::{Warehouse, column_type};
use super::{Destination, LakeFiles, LoadError, OutputTable};
use crate::commit::CommitRecord;
use crate::job::GlueConfig;

const NAME: &str = "glue";
const INPUT_FORMAT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const OUTPUT_FORMAT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";
const SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";
/// Partitions per BatchCreatePartition call, the API's limit.
const PARTITIONS_PER_CALL: usize = 100;

pub struct Glue {
    database: String,
    prefix: String,
    lake: LakeFiles,
    client: OnceCell<Client>,
}

fn fail(e: impl std::fmt::Display) -> LoadError {
    LoadError::failed(NAME, e)
}

fn column(name: &str, ty: &str) -> Result<Column, LoadError> {
    Column::builder()
        .name(name)
        .r#type(ty)
        .build()
        .map_err(fail)
}

impl Glue {
    pub fn new(c: &GlueConfig, _job: &str, lake: LakeFiles) -> Self {
        Self {
            database: c.database.clone(),
            prefix: c.table_prefix.clone(),
            lake,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async { Client::new(&aws_config::load_from_env().await) })
            .await
    }

    fn table_name(&self, output: &str) -> String {
        format!("{}{}", self.prefix, output).to_ascii_lowercase()
    }

    /// The storage descriptor of a table or partition at `location`.
    fn storage(&self, columns: Vec<Column>, location: String) -> StorageDescriptor {
        StorageDescriptor::builder()
            .set_columns(Some(columns))
            .location(location)
            .input_format(INPUT_FORMAT)
            .output_format(OUTPUT_FORMAT)
            .serde_info(SerDeInfo::builder().serialization_library(SERDE).build())
            .build()
    }

    /// The table definition of an output: data columns, then partition keys.
    fn table_input(&self, t: &OutputTable) -> Result<TableInput, LoadError> {
        let mut data = Vec::new();
        let mut keys = Vec::new();
        for f in t.schema.fields() {
            let ty = column_type(Warehouse::Glue, f.data_type()).map_err(|message| {
                LoadError::Schema {
                    destination: NAME,
                    table: t.name.clone(),
                    column: f.name().clone(),
                    message,
                }
            })?;
            if !t.partition_by.contains(f.name()) {
                data.push(column(f.name(), &ty)?);
            }
        }
        for k in &t.partition_by {
            let f = t.schema.field_with_name(k).map_err(fail)?;
            let ty = column_type(Warehouse::Glue, f.data_type()).map_err(fail)?;
            keys.push(column(k, &ty)?);
        }
        TableInput::builder()
            .name(self.table_name(&t.name))
            .table_type("EXTERNAL_TABLE")
            .parameters("classification", "parquet")
            .parameters("EXTERNAL", "TRUE")
            .storage_descriptor(self.storage(data, self.lake.url_of(&t.name)))
            .set_partition_keys(Some(keys))
            .build()
            .map_err(fail)
    }
}

fn columns_of(sd: &[Column]) -> Vec<(String, String)> {
    sd.iter()
        .map(|c| {
            (
                c.name().to_string(),
                c.r#type().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[async_trait]
impl Destination for Glue {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, tables: &[OutputTable]) -> Result<(), LoadError> {
        let client = self.client().await;
        let db = DatabaseInput::builder()
            .name(&self.database)
            .description("Written by Weir")
            .build()
            .map_err(fail)?;
        if let Err(e) = client.create_database().database_input(db).send().await
            && !e
                .as_service_error()
                .is_some_and(|s| s.is_already_exists_exception())
        {
            return Err(fail(format!(
                "creating database {}: {}",
                self.database,
                DisplayErrorContext(&e)
            )));
        }
        for t in tables {
            let input = self.table_input(t)?;
            let name = self.table_name(&t.name);
            let existing = client
                .get_table()
                .database_name(&self.database)
                .name(&name)
                .send()
                .await;
            match existing {
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_entity_not_found_exception()) =>
                {
                    let created = client
                        .create_table()
                        .database_name(&self.database)
                        .table_input(input)
                        .send()
                        .await;
                    if let Err(e) = created
                        && !e
                            .as_service_error()
                            .is_some_and(|s| s.is_already_exists_exception())
                    {
                        return Err(fail(format!(
                            "creating table {name}: {}",
                            DisplayErrorContext(&e)
                        )));
                    }
                }
                Err(e) => return Err(fail(format!("table {name}: {}", DisplayErrorContext(&e)))),
                Ok(out) => {
                    let Some(table) = out.table() else { continue };
                    let mut have = columns_of(
                        table
                            .storage_descriptor()
                            .map(|s| s.columns())
                            .unwrap_or_default(),
                    );
                    have.extend(columns_of(table.partition_keys()));
                    let mut want = columns_of(
                        input
                            .storage_descriptor()
                            .map(|s| s.columns())
                            .unwrap_or_default(),
                    );
                    want.extend(columns_of(input.partition_keys()));
                    if super::evolve(NAME, &t.name, &have, &want)?.is_empty() {
                        continue;
                    }
                    client
                        .update_table()
                        .database_name(&self.database)
                        .table_input(input)
                        .send()
                        .await
                        .map_err(|e| {
                            fail(format!(
                                "updating table {name}: {}",
                                DisplayErrorContext(&e)
                            ))
                        })?;
                }
            }
        }
        Ok(())
    }

    async fn load(&self, batch: &CommitRecord) -> Result<(), LoadError> {
        let client = self.client().await;
        let table_ok = |t: &str| batch.rows.contains_key(t);
        // Each file's partition folder, e.g. "sales/dt=2025-06-01".
        let mut folders: BTreeSet<(String, String)> = BTreeSet::new();
        for f in batch.files.iter().filter(|f| table_ok(&f.table)) {
            if let Some((folder, _)) = f.path.rsplit_once('/')
                && folder.contains('=')
            {
                folders.insert((f.table.clone(), folder.to_string()));
            }
        }
        let mut by_table: std::collections::BTreeMap<String, Vec<PartitionInput>> =
            Default::default();
        for (table, folder) in folders {
            let values: Vec<String> = folder
                .split('/')
                .filter_map(|seg| seg.split_once('=').map(|(_, v)| v.to_string()))
                .collect();
            let sd = self.storage(Vec::new(), self.lake.url_of(&folder));
            by_table.entry(table).or_default().push(
                PartitionInput::builder()
                    .set_values(Some(values))
                    .storage_descriptor(sd)
                    .build(),
            );
        }
        for (table, parts) in by_table {
            let name = self.table_name(&table);
            for chunk in parts.chunks(PARTITIONS_PER_CALL) {
                let out = client
                    .batch_create_partition()
                    .database_name(&self.database)
                    .table_name(&name)
                    .set_partition_input_list(Some(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| {
                        fail(format!(
                            "registering partitions of {name}: {}",
                            DisplayErrorContext(&e)
                        ))
                    })?;
                for err in out.errors() {
                    let detail = err.error_detail();
                    let code = detail.and_then(|d| d.error_code()).unwrap_or_default();
                    if code != "AlreadyExistsException" {
                        return Err(fail(format!(
                            "partition {:?} of {name}: {code}: {}",
                            err.partition_values(),
                            detail.and_then(|d| d.error_message()).unwrap_or_default()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}
