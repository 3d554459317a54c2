//! `sluice query` and `sluice tables`: the lake through SQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;

use super::{Definitions, Format};
use crate::catalog::{Lake, StorageOptions, TablePath};
use crate::error::{Error, Result};
use crate::plan::load_sql_dir;
use crate::runtime::Definition;
use crate::schema::SchemaRegistry;

pub async fn query(lake: &str, sql: &str, format: Format, storage: &StorageOptions) -> Result<()> {
    let batches = run_query(lake, sql, storage).await?;
    super::emit(&render(&batches, format)?)
}

/// Runs one query over every table of the lake.
pub async fn run_query(lake: &str, sql: &str, storage: &StorageOptions) -> Result<Vec<RecordBatch>> {
    let lake = Lake::connect(lake, false, storage.clone()).await?;
    let ctx = lake.session().await?;
    let df = ctx.sql(sql).await.map_err(|e| Error::Query(e.strip_backtrace().to_string()))?;
    Ok(df.collect().await?)
}

pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    Ok(match format {
        Format::Table => format!("{}\n", arrow::util::pretty::pretty_format_batches(batches)?),
        Format::Csv => {
            let mut out = Vec::new();
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            for b in batches {
                writer.write(b)?;
            }
            drop(writer);
            String::from_utf8_lossy(&out).into_owned()
        }
        Format::Json => {
            let mut out = Vec::new();
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                writer.write(b)?;
            }
            writer.finish()?;
            String::from_utf8_lossy(&out).into_owned()
        }
    })
}

pub async fn tables(lake_location: &str, definitions: &Definitions, storage: &StorageOptions) -> Result<()> {
    let lake = Lake::connect(lake_location, false, storage.clone()).await?;
    let tables = lake.tables().await?;
    if tables.is_empty() {
        eprintln!("no tables in {lake_location}");
        return Ok(());
    }
    let defined = defined_by(definitions)?;
    let mut out = format!("{:<58} {:>10} {:>8} {:>6} {:>10} {:>10}  {}\n", "table", "rows", "version", "files", "bytes", "checkpoint", "defined by");
    for table in tables {
        let name = table.sql_name();
        let delta = lake.load_table(&table).await?;
        let version = delta.version().map(|v| v.to_string()).unwrap_or_default();
        let snapshot = delta.snapshot().map_err(|e| Error::delta(table.as_str(), e))?;
        let files = snapshot.log_data().num_files();
        let bytes: i64 = snapshot.log_data().iter().map(|f| f.size()).sum();
        // Every file's statistics count its rows; a file without them is counted by a scan.
        let counted: Option<usize> = snapshot.log_data().iter().map(|f| f.num_records()).sum();
        let rows = match counted {
            Some(rows) => rows as i64,
            None => scan_count(&delta, &table).await?,
        };
        let checkpoint = crate::sink::maintain::last_checkpoint(&delta).await.map_or_else(|| "-".to_string(), |v| v.to_string());
        let definition = match &defined {
            None => "?".to_string(),
            Some((sql_dir, defined)) => match defined.get(&table) {
                // As the user names the directory (`sql/` unless --sql said otherwise).
                Some(Definition::Sql(path)) => {
                    let shown = definitions.sql.as_deref().unwrap_or(Path::new("sql"));
                    shown.join(path.strip_prefix(sql_dir).unwrap_or(path)).display().to_string()
                }
                Some(other) => other.to_string(),
                None => "none (no SQL file: no longer updated)".to_string(),
            },
        };
        out.push_str(&format!("{name:<58} {rows:>10} {version:>8} {files:>6} {:>10} {checkpoint:>10}  {definition}\n", human_bytes(bytes as u64)));
    }
    super::emit(&out)
}

/// What defines each table by the definitions of the project at hand, with the
/// SQL directory; none when no `schemas/` and `sql/` are found and none were named
/// (a lake can be listed from anywhere).
fn defined_by(definitions: &Definitions) -> Result<Option<(PathBuf, BTreeMap<TablePath, Definition>)>> {
    let named = definitions.schemas.is_some() || definitions.sql.is_some();
    let (schemas, sql) = match (definitions.schemas_dir(), definitions.sql_dir()) {
        (Ok(schemas), Ok(sql)) => (schemas, sql),
        (Err(e), _) | (_, Err(e)) if named => return Err(e),
        _ => return Ok(None),
    };
    let registry = SchemaRegistry::load(&schemas)?;
    let defined = crate::runtime::definitions(&registry, &load_sql_dir(&sql)?)?;
    Ok(Some((sql, defined)))
}

/// A table's rows, counted by reading it.
async fn scan_count(delta: &deltalake::DeltaTable, table: &crate::catalog::TablePath) -> Result<i64> {
    let ctx = datafusion::prelude::SessionContext::new();
    let provider = delta.table_provider().await.map_err(|e| Error::delta(table.as_str(), e.into()))?;
    let rows = ctx.read_table(provider)?.count().await?;
    Ok(rows as i64)
}

/// `1.5 MiB`, `320 B`: sizes for people.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}
