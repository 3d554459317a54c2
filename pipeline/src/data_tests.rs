//! Data tests over a real lake, in dbt's manner: what a table's rows must
//! satisfy, declared beside its SQL file and checked by `sluice test --lake`.
//!
//! `sql/<path>.tests.toml` declares the tests of the table at `<path>`:
//!
//! ```toml
//! not_null = ["user_id", "window_start"]
//! unique = [["user_id", "window_start"]]          # a key of one or more columns
//! accepted_values = { status = ["ok", "failed"] }
//! relationships = [{ column = "user_id", to = "services.directory.users", field = "user_id" }]
//! no_rows = [{ name = "no negative durations", sql = "SELECT * FROM {table} WHERE avg_ms < 0" }]
//! ```
//!
//! Each test is a query for the rows that break it: it passes when that query
//! returns none, and a failure shows them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use crate::catalog::TablePath;
use crate::error::{Error, Result};

/// The suffix of a tests file: `<table>.tests.toml` beside `<table>.sql`.
pub const TESTS_SUFFIX: &str = ".tests.toml";

/// Failing rows a failure shows.
const SHOWN: usize = 10;

/// One tests file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    #[serde(default)]
    not_null: Vec<String>,
    #[serde(default)]
    unique: Vec<Key>,
    #[serde(default)]
    accepted_values: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    relationships: Vec<Relationship>,
    #[serde(default)]
    no_rows: Vec<NoRows>,
}

/// A unique key: one column or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Key {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Relationship {
    column: String,
    /// The table every value must be found in (`catalog.schema.table`).
    to: String,
    /// Its column (by default the same name).
    field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoRows {
    name: String,
    /// SQL that must return no rows; `{table}` is the table under test.
    sql: String,
}

/// One test: its name and the query for the rows that break it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTest {
    pub table: TablePath,
    pub name: String,
    pub failing_rows: String,
}

/// What one test found.
#[derive(Debug)]
pub enum Outcome {
    Passed,
    /// How many rows break it, and the first of them.
    Failed { rows: usize, shown: Vec<RecordBatch> },
    /// The test could not run (a missing table or column): a failure too.
    Error(String),
}

/// Every test declared under `sql_dir`, table by table.
pub fn load(sql_dir: &Path) -> Result<Vec<DataTest>> {
    let mut files = Vec::new();
    collect(sql_dir, &mut files)?;
    files.sort();
    let mut tests = Vec::new();
    for file in files {
        let relative = file.strip_prefix(sql_dir).unwrap_or(&file).to_string_lossy().replace('\\', "/");
        let table_path = relative.strip_suffix(TESTS_SUFFIX).unwrap_or(&relative);
        let table = TablePath::new(table_path).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let declared: Declared = toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {}", file.display(), e.to_string().trim_end())))?;
        tests.extend(declared.tests(&table).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?);
    }
    Ok(tests)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.to_string_lossy().ends_with(TESTS_SUFFIX) {
            files.push(path);
        }
    }
    Ok(())
}

impl Declared {
    fn tests(self, table: &TablePath) -> std::result::Result<Vec<DataTest>, String> {
        let t = table.sql_name();
        let test = |name: String, failing_rows: String| DataTest { table: table.clone(), name, failing_rows };
        let mut tests = Vec::new();
        for column in &self.not_null {
            tests.push(test(format!("not_null({column})"), format!("SELECT * FROM {t} WHERE {} IS NULL", ident(column))));
        }
        for key in &self.unique {
            let columns = match key {
                Key::One(c) => vec![c.clone()],
                Key::Many(cs) if !cs.is_empty() => cs.clone(),
                Key::Many(_) => return Err("unique: a key needs at least one column".into()),
            };
            let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            tests.push(test(
                format!("unique({})", columns.join(", ")),
                format!("SELECT {list}, count(*) AS occurrences FROM {t} GROUP BY {list} HAVING count(*) > 1"),
            ));
        }
        for (column, values) in &self.accepted_values {
            if values.is_empty() {
                return Err(format!("accepted_values.{column}: no values"));
            }
            let listed = values.iter().map(literal).collect::<std::result::Result<Vec<_>, _>>()?.join(", ");
            let c = ident(column);
            tests.push(test(
                format!("accepted_values({column})"),
                format!("SELECT {c}, count(*) AS occurrences FROM {t} WHERE {c} IS NOT NULL AND {c} NOT IN ({listed}) GROUP BY {c}"),
            ));
        }
        for r in &self.relationships {
            let to = TablePath::new(&r.to.replace('.', "/")).map_err(|e| format!("relationships: `to = \"{}\"`: {e}", r.to))?.sql_name();
            let (c, f) = (ident(&r.column), ident(r.field.as_deref().unwrap_or(&r.column)));
            tests.push(test(
                format!("relationships({} -> {to}.{})", r.column, r.field.as_deref().unwrap_or(&r.column)),
                format!("SELECT * FROM {t} WHERE {c} IS NOT NULL AND {c} NOT IN (SELECT {f} FROM {to} WHERE {f} IS NOT NULL)"),
            ));
        }
        for n in self.no_rows {
            tests.push(test(n.name, n.sql.replace("{table}", &t)));
        }
        Ok(tests)
    }
}

/// A column name as a SQL identifier (quoted: names are case-sensitive in the lake).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &toml::Value) -> std::result::Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(format!("'{}'", s.replace('\'', "''"))),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("accepted_values: `{other}` is not a string, number or boolean")),
    }
}

/// Runs one test against the lake's session.
pub async fn run(ctx: &SessionContext, test: &DataTest) -> Outcome {
    let counted = format!("SELECT count(*) AS failing FROM ({}) AS failing_rows", test.failing_rows);
    let count = async {
        let batches = ctx.sql(&counted).await?.collect().await?;
        let count = batches
            .first()
            .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|a| a.value(0)))
            .unwrap_or(0);
        Ok::<_, datafusion::error::DataFusionError>(count as usize)
    };
    match count.await {
        Err(e) => Outcome::Error(e.strip_backtrace()),
        Ok(0) => Outcome::Passed,
        Ok(rows) => {
            let shown = format!("SELECT * FROM ({}) AS failing_rows LIMIT {SHOWN}", test.failing_rows);
            match async { ctx.sql(&shown).await?.collect().await }.await {
                Ok(shown) => Outcome::Failed { rows, shown },
                Err(e) => Outcome::Error(e.strip_backtrace()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_declaration_is_a_query_for_the_rows_that_break_it() {
        let declared: Declared = toml::from_str(
            r#"
            not_null = ["user_id"]
            unique = ["event_id", ["user_id", "window_start"]]
            accepted_values = { status = ["ok", "it's"], code = [200, 404] }
            relationships = [{ column = "user_id", to = "services.directory.users" }]
            no_rows = [{ name = "positive", sql = "SELECT * FROM {table} WHERE n < 0" }]
            "#,
        )
        .unwrap();
        let table = TablePath::new("a/b/c").unwrap();
        let tests = declared.tests(&table).unwrap();
        let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "not_null(user_id)",
                "unique(event_id)",
                "unique(user_id, window_start)",
                "accepted_values(code)",
                "accepted_values(status)",
                "relationships(user_id -> services.directory.users.user_id)",
                "positive"
            ]
        );
        assert_eq!(tests[0].failing_rows, r#"SELECT * FROM a.b.c WHERE "user_id" IS NULL"#);
        assert!(tests[4].failing_rows.contains(r#"NOT IN ('ok', 'it''s')"#), "{}", tests[4].failing_rows);
        assert_eq!(tests[6].failing_rows, "SELECT * FROM a.b.c WHERE n < 0");

        let unknown = toml::from_str::<Declared>("not_nul = [\"x\"]").unwrap_err().to_string();
        assert!(unknown.contains("not_nul"), "{unknown}");
        let bad_table = toml::from_str::<Declared>("relationships = [{ column = \"x\", to = \"nowhere\" }]").unwrap().tests(&table).unwrap_err();
        assert!(bad_table.contains("nowhere"), "{bad_table}");
    }
}
