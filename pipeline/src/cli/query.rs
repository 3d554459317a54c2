//! `sluice query` and `sluice tables`: the lake through SQL.

use arrow::record_batch::RecordBatch;

use super::Format;
use crate::catalog::Lake;
use crate::error::{Error, Result};

pub async fn query(lake: &str, sql: &str, format: Format) -> Result<()> {
    let batches = run_query(lake, sql).await?;
    super::emit(&render(&batches, format)?)
}

/// Runs one query over every table of the lake.
pub async fn run_query(lake: &str, sql: &str) -> Result<Vec<RecordBatch>> {
    let lake = Lake::open(lake, false)?;
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

pub async fn tables(lake_location: &str) -> Result<()> {
    let lake = Lake::open(lake_location, false)?;
    let tables = lake.tables()?;
    if tables.is_empty() {
        eprintln!("no tables in {lake_location}");
        return Ok(());
    }
    let ctx = lake.session().await?;
    let mut out = format!("{:<58} {:>10} {:>8}\n", "table", "rows", "version");
    for table in tables {
        let name = table.sql_name();
        let rows = ctx.sql(&format!("SELECT count(*) FROM {name}")).await?.collect().await?;
        let count = rows
            .first()
            .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|a| a.value(0)))
            .unwrap_or(0);
        let delta = deltalake::open_table(lake.table_url(&table)?).await.map_err(|e| Error::delta(table.as_str(), e))?;
        let version = delta.version().map(|v| v.to_string()).unwrap_or_default();
        out.push_str(&format!("{name:<58} {count:>10} {version:>8}\n"));
    }
    super::emit(&out)
}
