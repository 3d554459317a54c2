//! Fixture tests of one SQL file, in dbt's manner: input events beside the file
//! and the rows its table must hold, run through the same streaming engine
//! (decoding, watermarks, lateness, corrections, mirrors) as `sluice run`.
//!
//! `sql/<path>.fixtures/<case>/` holds:
//! - `input/<topic>.jsonl` (partition 0) or `input/<topic>/<partition>.jsonl`: the
//!   messages, in the order they are read; bad and late ones included;
//! - `expected.jsonl`: one JSON object per row of the table. Only the columns the
//!   objects name are compared (leave out lineage and `_ingested_at`); rows in any
//!   order; numbers within a millionth.
//!
//! The case runs as a bounded run over files, so every window is emitted at its end.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::catalog::{Lake, StorageOptions};
use crate::error::{Error, Result};
use crate::plan::SqlFile;
use crate::runtime::{Pipeline, RunOptions};
use crate::schema::SchemaRegistry;
use crate::sink::ArchiveRetention;
use crate::source::FileSource;
use crate::udf::Udfs;

/// The suffix of a SQL file's fixtures directory: `<table>.fixtures/` beside `<table>.sql`.
pub const FIXTURES_SUFFIX: &str = ".fixtures";

/// One case of one SQL file.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub file: SqlFile,
    pub name: String,
    pub dir: PathBuf,
}

/// What one case found: expected rows it did not find, rows it did not expect.
#[derive(Debug, Default)]
pub struct Diff {
    pub missing: Vec<Value>,
    pub unexpected: Vec<Value>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// The cases of every SQL file that has some.
pub fn load(files: &[SqlFile]) -> Result<Vec<Fixture>> {
    let mut fixtures = Vec::new();
    for file in files {
        let dir = PathBuf::from(format!("{}{FIXTURES_SUFFIX}", file.path.with_extension("").display()));
        if !dir.is_dir() {
            continue;
        }
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        cases.sort();
        for case in cases {
            let name = case.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            fixtures.push(Fixture { file: file.clone(), name, dir: case });
        }
    }
    Ok(fixtures)
}

/// Runs one case: its SQL file alone over its input, into a lake of its own.
pub async fn run(fixture: &Fixture, registry: &SchemaRegistry, udfs: &Udfs) -> Result<Diff> {
    let expected = read_expected(&fixture.dir.join("expected.jsonl"))?;
    let input = fixture.dir.join("input");
    if !input.is_dir() {
        return Err(Error::Config(format!("{}: no input directory (input/<topic>.jsonl)", fixture.dir.display())));
    }
    let scratch = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let location = scratch.path().display().to_string();
    let lake = Lake::connect(&location, true, StorageOptions::default()).await?;
    let options = RunOptions { archive: ArchiveRetention::Off, ..RunOptions::default() };
    let mut pipeline = Pipeline::new(&lake, registry, std::slice::from_ref(&fixture.file), udfs, options).await?;
    let mut source = FileSource::open(&input, 1024, |t| registry.get(t).is_some())?;
    pipeline.run(&mut source).await?;
    let ctx = lake.session().await?;
    let sql = format!("SELECT * FROM {}", fixture.file.table.sql_name());
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut actual = Vec::new();
    for batch in &batches {
        let mut buffer = Vec::new();
        let mut writer = arrow::json::ArrayWriter::new(&mut buffer);
        writer.write(batch)?;
        writer.finish()?;
        if let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(&buffer) {
            actual.extend(rows);
        }
    }
    Ok(compare(&expected, actual))
}

fn read_expected(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(row)) => rows.push(row),
            Ok(_) => return Err(Error::Config(format!("{}:{}: not a JSON object", path.display(), n + 1))),
            Err(e) => return Err(Error::Config(format!("{}:{}: {e}", path.display(), n + 1))),
        }
    }
    Ok(rows)
}

/// Matches each expected row with one actual row that agrees on its columns.
fn compare(expected: &[Map<String, Value>], actual: Vec<Value>) -> Diff {
    let mut left: Vec<Option<Value>> = actual.into_iter().map(Some).collect();
    let mut diff = Diff::default();
    for want in expected {
        let found = left.iter_mut().find(|got| got.as_ref().is_some_and(|g| agrees(want, g)));
        match found {
            Some(slot) => *slot = None,
            None => diff.missing.push(Value::Object(want.clone())),
        }
    }
    // Unexpected rows, shown with the columns the expectation names (all if none).
    let columns: Vec<&String> = expected.iter().flat_map(|r| r.keys()).fold(Vec::new(), |mut seen, k| {
        if !seen.contains(&k) {
            seen.push(k);
        }
        seen
    });
    for got in left.into_iter().flatten() {
        let shown = match (&got, columns.is_empty()) {
            (Value::Object(row), false) => Value::Object(columns.iter().map(|c| ((*c).clone(), row.get(*c).cloned().unwrap_or(Value::Null))).collect()),
            _ => got,
        };
        diff.unexpected.push(shown);
    }
    diff
}

fn agrees(want: &Map<String, Value>, got: &Value) -> bool {
    want.iter().all(|(column, w)| same(w, got.get(column).unwrap_or(&Value::Null)))
}

fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(w), Value::Number(g)) => match (w.as_f64(), g.as_f64()) {
            (Some(w), Some(g)) => (w - g).abs() <= 1e-6 * w.abs().max(g.abs()).max(1.0),
            _ => w == g,
        },
        // Timestamps as written (`2026-03-01T00:01:00Z`) or as Arrow writes them.
        (Value::String(w), Value::String(g)) => w == g || w.trim_end_matches('Z') == g.trim_end_matches('Z'),
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_match_on_the_named_columns_in_any_order_once_each() {
        let expected: Vec<Map<String, Value>> = [json!({"k": "a", "n": 1.0}), json!({"k": "a", "n": 1}), json!({"k": "b", "n": 2})]
            .into_iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect();
        let actual = vec![json!({"k": "b", "n": 2.0000000001, "x": 9}), json!({"k": "a", "n": 1, "x": 8})];
        let diff = compare(&expected, actual.clone());
        assert_eq!(diff.missing, vec![json!({"k": "a", "n": 1})], "each actual row matches once");
        assert!(diff.unexpected.is_empty());
        let diff = compare(&expected[..1], actual);
        assert_eq!(diff.unexpected, vec![json!({"k": "b", "n": 2.0000000001})], "shown with the expectation's columns");
        assert!(same(&json!("2026-03-01T00:01:00Z"), &json!("2026-03-01T00:01:00")));
    }
}
