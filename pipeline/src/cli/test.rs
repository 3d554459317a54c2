//! `sluice test --lake`: the data tests declared beside the SQL files
//! ([`crate::data_tests`]), over a lake; the exit status says whether all passed.

use super::Definitions;
use crate::catalog::{Lake, StorageOptions};
use crate::data_tests::{self, Outcome};
use crate::error::{Error, Result};

pub async fn test(lake: &str, definitions: &Definitions, storage: &StorageOptions) -> Result<()> {
    let sql_dir = definitions.sql_dir()?;
    let tests = data_tests::load(&sql_dir)?;
    if tests.is_empty() {
        eprintln!("no data tests under {}: declare them in <table>{} beside a SQL file", sql_dir.display(), data_tests::TESTS_SUFFIX);
        return Ok(());
    }
    let lake = Lake::connect(lake, false, storage.clone()).await?;
    let ctx = lake.session().await?;
    let mut failed = 0;
    let mut out = String::new();
    for test in &tests {
        let line = match data_tests::run(&ctx, test).await {
            Outcome::Passed => format!("PASS  {}  {}\n", test.table.sql_name(), test.name),
            Outcome::Failed { rows, shown } => {
                failed += 1;
                let table = arrow::util::pretty::pretty_format_batches(&shown).map(|t| t.to_string()).unwrap_or_default();
                let table: String = table.lines().map(|l| format!("      {l}\n")).collect();
                let first = if rows > shown.iter().map(|b| b.num_rows()).sum::<usize>() { " (the first of them)" } else { "" };
                let noun = if rows == 1 { "row" } else { "rows" };
                format!("FAIL  {}  {}: {rows} failing {noun}{first}\n{table}", test.table.sql_name(), test.name)
            }
            Outcome::Error(e) => {
                failed += 1;
                format!("FAIL  {}  {}: could not run: {e}\n", test.table.sql_name(), test.name)
            }
        };
        out.push_str(&line);
    }
    out.push_str(&format!("{} data tests: {} passed, {failed} failed\n", tests.len(), tests.len() - failed));
    super::emit(&out)?;
    match failed {
        0 => Ok(()),
        _ => Err(Error::TestsFailed(format!("{failed} of {} failed", tests.len()))),
    }
}
