//! `sluice test`: every SQL file's fixtures ([`crate::fixtures`]), and with
//! `--lake` the data tests declared beside the SQL files ([`crate::data_tests`])
//! over that lake. The exit status says whether all passed.

use super::Definitions;
use crate::catalog::{Lake, StorageOptions};
use crate::data_tests::{self, Outcome};
use crate::error::{Error, Result};
use crate::fixtures;
use crate::plan::load_sql_dir;
use crate::schema::SchemaRegistry;

pub async fn test(lake: Option<&str>, definitions: &Definitions, storage: &StorageOptions) -> Result<()> {
    let (mut ran, mut failed) = (0, 0);
    let mut out = String::new();
    run_fixtures(definitions, &mut out, &mut ran, &mut failed).await?;
    if let Some(lake) = lake {
        run_data_tests(lake, definitions, storage, &mut out, &mut ran, &mut failed).await?;
    }
    if ran == 0 {
        eprintln!(
            "nothing to test under {}: fixtures go in <table>{}/<case>/, data tests in <table>{} (run with --lake)",
            definitions.sql_dir()?.display(),
            fixtures::FIXTURES_SUFFIX,
            data_tests::TESTS_SUFFIX
        );
        return Ok(());
    }
    out.push_str(&format!("{ran} tests: {} passed, {failed} failed\n", ran - failed));
    super::emit(&out)?;
    match failed {
        0 => Ok(()),
        _ => Err(Error::TestsFailed(format!("{failed} of {ran} failed"))),
    }
}

/// Each case through the engine; a failure shows the rows that differ.
async fn run_fixtures(definitions: &Definitions, out: &mut String, ran: &mut usize, failed: &mut usize) -> Result<()> {
    let files = load_sql_dir(&definitions.sql_dir()?)?;
    let cases = fixtures::load(&files)?;
    if cases.is_empty() {
        return Ok(());
    }
    let registry = SchemaRegistry::load(&definitions.schemas_dir()?)?;
    let udfs = definitions.udfs()?;
    for case in &cases {
        *ran += 1;
        let what = format!("{}  fixture {}", case.file.table.sql_name(), case.name);
        match fixtures::run(case, &registry, &udfs).await {
            Ok(diff) if diff.is_empty() => out.push_str(&format!("PASS  {what}\n")),
            Ok(diff) => {
                *failed += 1;
                out.push_str(&format!("FAIL  {what}: {} expected rows missing, {} rows not expected\n", diff.missing.len(), diff.unexpected.len()));
                for row in &diff.missing {
                    out.push_str(&format!("      - {row}\n"));
                }
                for row in &diff.unexpected {
                    out.push_str(&format!("      + {row}\n"));
                }
            }
            Err(e) => {
                *failed += 1;
                out.push_str(&format!("FAIL  {what}: could not run: {e}\n"));
            }
        }
    }
    Ok(())
}

async fn run_data_tests(lake: &str, definitions: &Definitions, storage: &StorageOptions, out: &mut String, ran: &mut usize, failed: &mut usize) -> Result<()> {
    let tests = data_tests::load(&definitions.sql_dir()?)?;
    if tests.is_empty() {
        return Ok(());
    }
    let lake = Lake::connect(lake, false, storage.clone()).await?;
    let ctx = lake.session().await?;
    for test in &tests {
        *ran += 1;
        let line = match data_tests::run(&ctx, test).await {
            Outcome::Passed => format!("PASS  {}  {}\n", test.table.sql_name(), test.name),
            Outcome::Failed { rows, shown } => {
                *failed += 1;
                let table = arrow::util::pretty::pretty_format_batches(&shown).map(|t| t.to_string()).unwrap_or_default();
                let table: String = table.lines().map(|l| format!("      {l}\n")).collect();
                let first = if rows > shown.iter().map(|b| b.num_rows()).sum::<usize>() { " (the first of them)" } else { "" };
                let noun = if rows == 1 { "row" } else { "rows" };
                format!("FAIL  {}  {}: {rows} failing {noun}{first}\n{table}", test.table.sql_name(), test.name)
            }
            Outcome::Error(e) => {
                *failed += 1;
                format!("FAIL  {}  {}: could not run: {e}\n", test.table.sql_name(), test.name)
            }
        };
        out.push_str(&line);
    }
    Ok(())
}
