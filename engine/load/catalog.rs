//! Tables in a warehouse's catalog, prepared the same way everywhere (as delta-rs's `DataCatalog`
//! puts one interface over Glue and Unity): a table that is missing is created with the output's
//! mapped columns; one that exists is evolved, a new column added and a changed or dropped one
//! refused before any data moves. Each warehouse implements the three catalog calls;
//! `prepare_tables` is the one algorithm.

use async_trait::async_trait;

use super::types::{Warehouse, column_type};
use super::{LoadError, OutputTable};

/// A warehouse's catalog of tables, as `prepare_tables` needs it.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Short name of the destination, for errors.
    fn destination(&self) -> &'static str;
    /// The type system columns are mapped to.
    fn warehouse(&self) -> Warehouse;
    /// The columns of the output's table (name, type as the catalog spells it); `None` when the
    /// table does not exist.
    async fn columns(
        &self,
        table: &OutputTable,
    ) -> Result<Option<Vec<(String, String)>>, LoadError>;
    /// Creates the table with `columns` (every column of the output, mapped).
    async fn create(
        &self,
        table: &OutputTable,
        columns: &[(String, String)],
    ) -> Result<(), LoadError>;
    /// Adds `added` to the table; `all` is every column the table then has.
    async fn add_columns(
        &self,
        table: &OutputTable,
        added: &[(String, String)],
        all: &[(String, String)],
    ) -> Result<(), LoadError>;
}

/// Creates each missing table and evolves each existing one.
pub async fn prepare_tables(
    catalog: &dyn Catalog,
    tables: &[OutputTable],
) -> Result<(), LoadError> {
    for t in tables {
        let desired = mapped_columns(catalog.destination(), catalog.warehouse(), t)?;
        match catalog.columns(t).await? {
            None => catalog.create(t, &desired).await?,
            Some(existing) => {
                let added = evolve(catalog.destination(), &t.name, &existing, &desired)?;
                if !added.is_empty() {
                    catalog.add_columns(t, &added, &desired).await?;
                }
            }
        }
    }
    Ok(())
}

/// An output's columns with their types in `warehouse`; a column without a faithful type is a
/// schema error naming it.
pub fn mapped_columns(
    destination: &'static str,
    warehouse: Warehouse,
    t: &OutputTable,
) -> Result<Vec<(String, String)>, LoadError> {
    t.schema
        .fields()
        .iter()
        .map(|f| {
            column_type(warehouse, f.data_type())
                .map(|ty| (f.name().clone(), ty))
                .map_err(|message| LoadError::Schema {
                    destination,
                    table: t.name.clone(),
                    column: f.name().clone(),
                    message,
                })
        })
        .collect()
}

/// Compares an existing table's columns with an output's: returns the columns to add; a column
/// whose type changed or that the output dropped stops the run, naming the column and the fix.
/// Names compare case-insensitively (Glue and BigQuery fold case); types after alias folding.
pub fn evolve(
    destination: &'static str,
    table: &str,
    existing: &[(String, String)],
    desired: &[(String, String)],
) -> Result<Vec<(String, String)>, LoadError> {
    fn norm(t: &str) -> String {
        let t = t.trim().to_ascii_lowercase().replace(", ", ",");
        let t = t.replace("varchar(", "character varying(");
        match t.as_str() {
            "integer" | "int64" => "int64".into(),
            "float" | "float64" => "float64".into(),
            "boolean" | "bool" => "bool".into(),
            _ => t,
        }
    }
    let find = |cols: &[(String, String)], name: &str| {
        cols.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, t)| t.clone())
    };
    let conflict = |column: &str, message: String| LoadError::Schema {
        destination,
        table: table.to_string(),
        column: column.to_string(),
        message,
    };
    for (name, ty) in existing {
        match find(desired, name) {
            None => {
                return Err(conflict(
                    name,
                    format!(
                        "the output no longer has this column ({ty}); add it back to the SQL (e.g. CAST(NULL AS ...) AS {name}), or migrate the table by hand"
                    ),
                ));
            }
            Some(want) if norm(&want) != norm(ty) => {
                return Err(conflict(
                    name,
                    format!(
                        "the output's type {want} differs from the table's {ty}; CAST it back to {ty} in the SQL, or migrate the table by hand"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(desired
        .iter()
        .filter(|(n, _)| find(existing, n).is_none())
        .cloned()
        .collect())
}
