//! AWS Glue Data Catalog: one database, one Delta Lake table per output (`table_type = DELTA`,
//! location the table's folder, columns and partition keys from the output), which Athena, Spark
//! and Trino read natively through the Delta log: no partitions to register, no batch to load.
//! Endpoint, region and credentials come from aws-config's standard chain (`AWS_ENDPOINT_URL_GLUE`).

use async_trait::async_trait;
use aws_sdk_glue::Client;
use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{Column, DatabaseInput, SerDeInfo, StorageDescriptor, TableInput};
use tokio::sync::OnceCell;

use super::catalog::{Catalog, prepare_tables};
use super::types::{Warehouse, column_type};
use super::{Destination, LakeFiles, LoadError, OutputTable};
use crate::commit::CommitRecord;
use crate::job::GlueConfig;

const NAME: &str = "glue";
const INPUT_FORMAT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const OUTPUT_FORMAT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";
const SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";

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
            .parameters("table_type", "DELTA")
            .parameters("spark.sql.sources.provider", "delta")
            .parameters("classification", "delta")
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
impl Catalog for Glue {
    fn destination(&self) -> &'static str {
        NAME
    }

    fn warehouse(&self) -> Warehouse {
        Warehouse::Glue
    }

    async fn columns(&self, t: &OutputTable) -> Result<Option<Vec<(String, String)>>, LoadError> {
        let name = self.table_name(&t.name);
        let existing = self
            .client()
            .await
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
                Ok(None)
            }
            Err(e) => Err(fail(format!("table {name}: {}", DisplayErrorContext(&e)))),
            Ok(out) => {
                let Some(table) = out.table() else {
                    return Ok(None);
                };
                let mut have = columns_of(
                    table
                        .storage_descriptor()
                        .map(|s| s.columns())
                        .unwrap_or_default(),
                );
                have.extend(columns_of(table.partition_keys()));
                Ok(Some(have))
            }
        }
    }

    async fn create(
        &self,
        t: &OutputTable,
        _columns: &[(String, String)],
    ) -> Result<(), LoadError> {
        let name = self.table_name(&t.name);
        let created = self
            .client()
            .await
            .create_table()
            .database_name(&self.database)
            .table_input(self.table_input(t)?)
            .send()
            .await;
        match created {
            Err(e)
                if !e
                    .as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                Err(fail(format!(
                    "creating table {name}: {}",
                    DisplayErrorContext(&e)
                )))
            }
            _ => Ok(()),
        }
    }

    async fn add_columns(
        &self,
        t: &OutputTable,
        _added: &[(String, String)],
        _all: &[(String, String)],
    ) -> Result<(), LoadError> {
        let name = self.table_name(&t.name);
        self.client()
            .await
            .update_table()
            .database_name(&self.database)
            .table_input(self.table_input(t)?)
            .send()
            .await
            .map_err(|e| {
                fail(format!(
                    "updating table {name}: {}",
                    DisplayErrorContext(&e)
                ))
            })?;
        Ok(())
    }
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
        prepare_tables(self, tables).await
    }

    async fn ping(&self) -> Result<(), LoadError> {
        let client = self.client().await;
        match client.get_database().name(&self.database).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some() => Ok(()),
            Err(e) => Err(fail(format!("GetDatabase: {}", DisplayErrorContext(&e)))),
        }
    }

    /// Nothing per batch: the table points at the Delta log, which readers (Athena, Spark,
    /// Trino) follow, so every commit is visible there as soon as it is made.
    async fn load(&self, _batch: &CommitRecord) -> Result<(), LoadError> {
        Ok(())
    }
}
