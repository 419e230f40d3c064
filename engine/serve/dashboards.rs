//! Dashboards as code: `dashboards/<name>.toml`, a title and panels of SQL over the lake. Read at
//! start and checked like job files: unknown keys, SQL that does not plan against the lake's
//! tables, a chart without its x column; each error names the file, the panel and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("{file}: cannot read it: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: panel {panel} \"{title}\": {message}")]
    Panel {
        file: String,
        panel: usize,
        title: String,
        message: String,
    },
    #[error("{0}: no dashboards there (dashboards/<name>.toml); see the README's \"Dashboards\"")]
    None(String),
}

/// What a panel draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The first row's first numeric column (the other columns label it).
    Number,
    /// `x` against every other numeric column, one series each.
    Line,
    Bar,
    Table,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    pub title: String,
    pub kind: Kind,
    pub sql: String,
    /// Line and bar: the x column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    pub title: String,
    #[serde(default)]
    pub panels: Vec<Panel>,
    /// The file's stem: `/d/<name>`.
    #[serde(skip_deserializing)]
    pub name: String,
}

/// Every dashboard of a folder, by name.
#[derive(Debug, Default)]
pub struct Dashboards {
    pub by_name: BTreeMap<String, Dashboard>,
}

impl Dashboards {
    /// Reads every `*.toml` of `dir` and checks each panel against `ctx` (the lake's tables).
    pub async fn load(dir: &Path, ctx: &SessionContext) -> Result<Self, DashboardError> {
        let shown = dir.display().to_string();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| DashboardError::Read {
                file: shown.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DashboardError::None(shown));
        }
        let mut by_name = BTreeMap::new();
        for file in files {
            let d = Dashboard::load(&file, ctx).await?;
            by_name.insert(d.name.clone(), d);
        }
        Ok(Self { by_name })
    }
}

impl Dashboard {
    pub async fn load(file: &Path, ctx: &SessionContext) -> Result<Self, DashboardError> {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| DashboardError::Read {
            file: shown.clone(),
            source,
        })?;
        let mut d: Dashboard = toml::from_str(&text).map_err(|e| DashboardError::Syntax {
            file: shown.clone(),
            message: format!(
                "{}\nA dashboard has `title` and [[panels]] with `title`, `kind` (number, line, bar, table), `sql` and, for line and bar, `x`.",
                crate::job::with_suggestion(e.to_string()).trim_end()
            ),
        })?;
        d.name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, panel) in d.panels.iter().enumerate() {
            panel
                .check(ctx)
                .await
                .map_err(|message| DashboardError::Panel {
                    file: shown.clone(),
                    panel: i + 1,
                    title: panel.title.clone(),
                    message,
                })?;
        }
        Ok(d)
    }
}

impl Panel {
    /// Plans the panel's SQL and checks its columns against its kind.
    async fn check(&self, ctx: &SessionContext) -> Result<(), String> {
        read_only(&self.sql)?;
        let plan = ctx
            .state()
            .create_logical_plan(&self.sql)
            .await
            .map_err(|e| {
                let tables = ctx
                    .catalog("datafusion")
                    .and_then(|c| c.schema("public"))
                    .map(|s| s.table_names().join(", "))
                    .unwrap_or_default();
                format!(
                    "the SQL does not plan: {e}\nThe lake's tables: {tables}. Try it with: weir query \"...\""
                )
            })?;
        let schema: Schema = plan.schema().as_arrow().clone();
        let columns = || {
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let numeric = |skip: Option<&str>| {
            schema
                .fields()
                .iter()
                .filter(|f| Some(f.name().as_str()) != skip && f.data_type().is_numeric())
                .count()
        };
        match self.kind {
            Kind::Line | Kind::Bar => {
                let Some(x) = &self.x else {
                    return Err(format!(
                        "a {} panel needs `x`, the column along the x axis (one of: {})",
                        kind_name(self.kind),
                        columns()
                    ));
                };
                if schema.field_with_name(x).is_err() {
                    return Err(format!(
                        "x = \"{x}\" is not a column of the query; its columns: {}",
                        columns()
                    ));
                }
                if numeric(Some(x)) == 0 {
                    return Err(format!(
                        "a {} panel draws every numeric column but `x` as a series, and the query has none besides \"{x}\" (columns: {})",
                        kind_name(self.kind),
                        columns()
                    ));
                }
            }
            Kind::Number => {
                if self.x.is_some() {
                    return Err("`x` is for line and bar panels; remove it".into());
                }
                if numeric(None) == 0 {
                    return Err(format!(
                        "a number panel shows the first numeric column of the first row, and the query has none (columns: {})",
                        columns()
                    ));
                }
            }
            Kind::Table => {
                if self.x.is_some() {
                    return Err("`x` is for line and bar panels; remove it".into());
                }
            }
        }
        Ok(())
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Number => "number",
        Kind::Line => "line",
        Kind::Bar => "bar",
        Kind::Table => "table",
    }
}

/// Refuses anything but one query (SELECT, WITH, VALUES, EXPLAIN): dashboards and `/api/query`
/// only read.
pub fn read_only(sql: &str) -> Result<(), String> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
    match statements.as_slice() {
        [Statement::Query(_)] => Ok(()),
        // EXPLAIN ANALYZE runs what it explains.
        [Statement::Explain { statement, .. }] if matches!(**statement, Statement::Query(_)) => {
            Ok(())
        }
        [] => Err("the SQL is empty".into()),
        [_] => Err(
            "only queries (SELECT, WITH, VALUES) are allowed: the lake is written by weir run"
                .into(),
        ),
        _ => Err("one query only, without `;` between statements".into()),
    }
}
